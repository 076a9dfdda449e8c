//! Idle memory of a node: boots the image under QEMU (direct kernel, TCG, 1 GiB), applies a
//! config through the API, waits for containerd and apid to be healthy and the node to settle,
//! then reads the processes' RSS through the `Processes` RPC. Prints a table; asserts nothing.
//!
//!   cargo bench -p basalt-image --bench node      (BASALT_BENCH_SETTLE=20 seconds by default)

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::path::Path;
use std::time::Duration;

use basalt_api::machine as pb;
use basalt_api::machine::machine_client::MachineClient;
use basalt_image::qemu::{Boot, Vm, VmOptions};
use basalt_image::{BuildOptions, Target};

const CP: &str = include_str!("../../config/testdata/valid/controlplane.yaml");

fn main() {
    let settle: u64 = std::env::var("BASALT_BENCH_SETTLE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-node");
    let opts = BuildOptions {
        out: out.clone(),
        init: None,
        extra_cmdline: Vec::new(),
        verbose: false,
        with_containerd: true,
        kubernetes: false,
        version: None,
    };
    let arts = basalt_image::build(Target::Initramfs, &opts).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut vm = Vm::start_with(
        &Boot::node(&arts, "node1").unwrap(),
        &out.join("run"),
        &VmOptions {
            memory_mib: 1024,
            forward: vec![(port, basalt_api::APID_PORT)],
            ..VmOptions::default()
        },
    )
    .unwrap();
    vm.wait_for("basalt: maintenance mode", Duration::from_secs(300))
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (procs, mem) = rt.block_on(async {
        let endpoint = format!("127.0.0.1:{port}");
        let insecure = basalt_api::tls::insecure_client_config();
        let mut c = MachineClient::new(basalt_api::tls::channel(&endpoint, insecure).unwrap());
        let mut tries = 0;
        loop {
            let r = c
                .apply_configuration(pb::ApplyConfigurationRequest {
                    data: CP.as_bytes().to_vec(),
                    mode: pb::ApplyMode::NoReboot as i32,
                    dry_run: false,
                    try_timeout_seconds: 0,
                })
                .await;
            match r {
                Ok(_) => {
                    c = MachineClient::new(
                        basalt_api::tls::channel(&endpoint, admin_tls()).unwrap(),
                    );
                    break;
                }
                Err(e) if tries < 60 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
        loop {
            let ok = match c.service_list(pb::ServiceListRequest {}).await {
                Ok(r) => {
                    let s = r.into_inner().services;
                    ["containerd", "apid"].iter().all(|id| {
                        s.iter()
                            .any(|x| x.id == *id && x.state == "running" && x.health == "healthy")
                    })
                }
                Err(_) => false,
            };
            if ok {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tokio::time::sleep(Duration::from_secs(settle)).await;
        let p = c
            .processes(pb::ProcessesRequest {})
            .await
            .unwrap()
            .into_inner()
            .processes;
        let m = c.memory(pb::MemoryRequest {}).await.unwrap().into_inner();
        (p, m)
    });
    drop(vm);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "idle node memory: direct kernel boot, QEMU TCG, 1 vCPU, 1 GiB, config applied, {settle} s settled, no Kubernetes"
    );
    println!();
    println!("| process                 |  pid | RSS (MiB) | threads | goal     |");
    println!("|-------------------------|-----:|----------:|--------:|---------:|");
    let mut rows: Vec<&pb::ProcessInfo> = procs.iter().filter(|p| p.rss_bytes > 0).collect();
    rows.sort_by_key(|p| std::cmp::Reverse(p.rss_bytes));
    for p in rows {
        let name = if p.pid == 1 {
            "init (PID 1)".to_string()
        } else {
            // argv[0], so the init binary running as apid reads as apid.
            p.args
                .split_whitespace()
                .next()
                .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
                .unwrap_or_else(|| p.command.clone())
        };
        println!(
            "| {:<23} | {:>4} | {:>9.1} | {:>7} | {:>8} |",
            name,
            p.pid,
            mib(p.rss_bytes),
            p.threads,
            if p.pid == 1 { "<= 20 MB" } else { "" }
        );
    }
    let kib = |k: &str| mem.meminfo_kib.get(k).copied().unwrap_or(0) * 1024;
    println!();
    println!(
        "MemTotal {:.0} MiB, MemAvailable {:.0} MiB, used {:.0} MiB",
        mib(kib("MemTotal")),
        mib(kib("MemAvailable")),
        mib(kib("MemTotal") - kib("MemAvailable"))
    );
}

/// A TLS client config with an admin certificate from the OS CA of the config applied.
fn admin_tls() -> std::sync::Arc<rustls::ClientConfig> {
    let cfg = basalt_config::Config::parse(CP, basalt_config::Mode::Metal).unwrap();
    let cc =
        basalt_config::generate::client_config(cfg.secrets(), "bench", Vec::new(), "os:admin", 1)
            .unwrap();
    let ctx = &cc.contexts["bench"];
    let id = basalt_api::tls::Identity {
        crt: ctx.crt.0.as_str().to_string(),
        key: ctx.key.0.as_str().to_string(),
    };
    basalt_api::tls::client_config(ctx.ca.0.as_str(), &id).unwrap()
}
