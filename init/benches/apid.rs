//! apid under load: `Version` over mutual TLS on loopback through the real apid process (the
//! `init` binary as `apid`) to a real init API server on a unix socket, with 1, 16 and 64
//! concurrent streams on one HTTP/2 connection; then full handshakes (a new TLS 1.3 connection
//! with client certificate per call). Prints latency percentiles, RPS, handshakes/s and apid's
//! RSS against the goals: p50 ≤ 300 µs, ≥ 10k RPS, RSS ≤ 15 MB.
//!
//! `cargo bench -p basalt-init --bench apid`; BASALT_BENCH_SECS sets each run's length (5).

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt_api::machine as pb;
use basalt_api::machine::machine_client::MachineClient;
use basalt_api::tls::{self, Identity};
use basalt_config::pki::{self, Usage};
use basalt_init::api::Api;
use basalt_init::configstate::ConfigState;
use basalt_init::node::{Node, Paths};
use basalt_init::sequence::{FakePower, Sequencer};
use basalt_supervisor::Supervisor;
use basalt_supervisor::logring::Logs;

fn identity(c: &pki::CertAndKey) -> Identity {
    Identity {
        crt: c.crt.0.as_str().to_string(),
        key: c.key.0.as_str().to_string(),
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[allow(clippy::cast_possible_truncation)] // a rounded index within the slice
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

struct Run {
    what: String,
    calls: usize,
    secs: f64,
    p50: Duration,
    p99: Duration,
    rss_kib: u64,
}

/// Runs `call` in a loop on `workers` tasks for `secs` seconds, sampling apid's RSS; returns
/// the sorted latencies, the elapsed seconds and the highest RSS seen (KiB).
async fn load<F, Fut>(workers: usize, secs: u64, pid: u32, call: F) -> (Vec<Duration>, f64, u64)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let end = Instant::now() + Duration::from_secs(secs);
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < end {
                    let t = Instant::now();
                    call().await;
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut rss = 0;
    while Instant::now() < end {
        rss = rss.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    lat.sort();
    (lat, t0.elapsed().as_secs_f64(), rss.max(rss_kib(pid)))
}

fn main() {
    let secs: u64 = std::env::var("BASALT_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");

    // The real API server, as PID 1 runs it (no services, no containerd: Version only needs
    // the node's state).
    let _guard = rt.enter();
    let store = basalt_resources::Store::default();
    let logs = Logs::new(None, 100, 0);
    let node = Node {
        leases: Default::default(),
        store: store.clone(),
        logs: logs.clone(),
        sup: Supervisor::new(store.clone(), logs, None),
        config: ConfigState::new(
            dir.path().join("state"),
            basalt_config::Mode::Metal,
            store.clone(),
        ),
        seq: Sequencer::new(store),
        power: Arc::new(FakePower::default()),
        paths: Paths {
            state: dir.path().join("state"),
            ephemeral: dir.path().join("var"),
            install: None,
            upgrade: basalt_init::upgrade::Upgrader::new(None),
        },
        booted: Instant::now(),
        kube: basalt_kubernetes::Kube::default(),
    };
    let api = Api::new(node, Path::new("/nonexistent/containerd.sock"));
    let s = sock.clone();
    rt.spawn(async move { basalt_init::api::serve(api, &s).await });

    // The PKI: an OS CA, the node's certificate, an admin client.
    let ca = pki::new_ca("basalt-os", Some("basalt"), 1).unwrap();
    let node_cert = pki::issue(
        &ca,
        "bench",
        &[basalt_api::auth::IMPERSONATOR],
        &["127.0.0.1".into()],
        Usage::ServerAndClient,
        1,
    )
    .unwrap();
    let admin = pki::issue(&ca, "admin", &["os:admin"], &[], Usage::Client, 1).unwrap();
    let pki_dir = dir.path().join("pki");
    basalt_apid::Pki {
        ca: ca.crt.0.as_str().to_string(),
        node: identity(&node_cert),
    }
    .write(&pki_dir)
    .unwrap();

    // apid as on a node: its own process.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let apid_path = dir.path().join("apid");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_init"), &apid_path).unwrap();
    let mut apid = std::process::Command::new(&apid_path)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--init-socket"])
        .arg(&sock)
        .arg("--pki")
        .arg(&pki_dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = apid.id();
    let endpoint = format!("127.0.0.1:{port}");
    let client_cfg = tls::client_config(ca.crt.0.as_str(), &identity(&admin)).unwrap();

    let runs = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        let c = MachineClient::new(tls::channel(&endpoint, client_cfg.clone()).unwrap());
        while c.clone().version(pb::VersionRequest {}).await.is_err() {
            assert!(Instant::now() < deadline, "apid did not answer");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut runs = Vec::new();
        for conc in [1usize, 16, 64] {
            let c = MachineClient::new(tls::channel(&endpoint, client_cfg.clone()).unwrap());
            c.clone().version(pb::VersionRequest {}).await.unwrap();
            let (lat, elapsed, rss) = load(conc, secs, pid, move || {
                let mut c = c.clone();
                async move {
                    c.version(pb::VersionRequest {}).await.unwrap();
                }
            })
            .await;
            runs.push(Run {
                what: format!(
                    "Version, {conc} concurrent stream{}",
                    if conc == 1 { "" } else { "s" }
                ),
                calls: lat.len(),
                secs: elapsed,
                p50: pct(&lat, 0.5),
                p99: pct(&lat, 0.99),
                rss_kib: rss,
            });
        }
        // Full handshakes: a new connection (TCP + TLS 1.3 + client certificate) per call,
        // 4 at a time.
        let (ep, cfg) = (endpoint.clone(), client_cfg.clone());
        let (lat, elapsed, rss) = load(4, secs, pid, move || {
            let mut c = MachineClient::new(tls::channel(&ep, cfg.clone()).unwrap());
            async move {
                c.version(pb::VersionRequest {}).await.unwrap();
            }
        })
        .await;
        runs.push(Run {
            what: "new connection + Version, 4 at a time".into(),
            calls: lat.len(),
            secs: elapsed,
            p50: pct(&lat, 0.5),
            p99: pct(&lat, 0.99),
            rss_kib: rss,
        });
        runs
    });
    let _ = apid.kill();
    let _ = apid.wait();

    println!();
    println!(
        "apid: Version over mTLS on loopback ({secs} s per row, 2 cores; client and apid share them)"
    );
    println!();
    println!(
        "| {:<40} | {:>8} | {:>9} | {:>9} | {:>10} | {:>9} |",
        "run", "calls", "p50", "p99", "per second", "apid RSS"
    );
    println!(
        "|{:-<42}|{:->10}|{:->11}|{:->11}|{:->12}|{:->11}|",
        "", "", "", "", "", ""
    );
    for r in &runs {
        println!(
            "| {:<40} | {:>8} | {:>9} | {:>9} | {:>10.0} | {:>6.1} MB |",
            r.what,
            r.calls,
            us(r.p50),
            us(r.p99),
            r.calls as f64 / r.secs,
            r.rss_kib as f64 / 1024.0
        );
    }
    let best_rps = runs[..3]
        .iter()
        .map(|r| r.calls as f64 / r.secs)
        .fold(0.0, f64::max);
    let max_rss = runs.iter().map(|r| r.rss_kib).max().unwrap_or(0) as f64 / 1024.0;
    println!();
    println!(
        "goals: p50 ≤ 300 µs (1 stream: {}) | ≥ 10k RPS (best: {:.0}) | apid RSS ≤ 15 MB (max: {:.1} MB)",
        us(runs[0].p50),
        best_rps,
        max_rss
    );
}
