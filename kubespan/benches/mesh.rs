//! KubeSpan's data plane and convergence (needs root, iperf3, wireguard-go and wg).
//!
//! One namespace pair joined by a veth: iperf3 throughput (3 s, one TCP stream) and ping
//! latency (200 pings, 10 ms apart) over the raw veth, over Basalt's userspace WireGuard
//! (boringtun over tun) and over wireguard-go configured by `wg`, with the ratios. Then the
//! convergence of 5 and 20 simulated nodes: namespaces on a bridge, each running a whole
//! KubeSpan node (networkd, discovery client, agent, device) against the discovery server,
//! timed from the first start until every node has every other up.
//!
//! `cargo bench -p basalt-kubespan --bench mesh`

#![allow(clippy::unwrap_used, clippy::print_stdout)]

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use basalt_kubespan::device::{self, DeviceOptions, DevicePeer};
use basalt_kubespan::identity::KeyPair;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use harness::*;

fn need(tool: &str, package: &str) {
    let found = Command::new("which")
        .arg(tool)
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "this benchmark needs {tool}: apt-get install {package}"
    );
}

/// Throughput (Mbit/s) and ping (average ms) from `client` to `target` in `server`.
fn measure(client: &str, server: &str, target: &str) -> (f64, f64) {
    let _srv = Kill(
        Command::new("ip")
            .args(["netns", "exec", server, "iperf3", "-s", "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let out = run(
        "ip",
        &[
            "netns", "exec", client, "iperf3", "-c", target, "-p", "5201", "-t", "3", "-J",
        ],
    );
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let bps = j["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no throughput in {out}"));
    let ping = run(
        "ip",
        &[
            "netns", "exec", client, "ping", "-c", "200", "-i", "0.01", "-q", target,
        ],
    );
    // rtt min/avg/max/mdev = 0.030/0.045/0.100/0.010 ms
    let avg: f64 = ping
        .lines()
        .find_map(|l| l.split(" = ").nth(1))
        .and_then(|v| v.split('/').nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no rtt in {ping}"));
    (bps / 1e6, avg)
}

/// Basalt's userspace device in each namespace, meshed with the other; runs until dropped.
struct BasaltPair {
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for BasaltPair {
    fn drop(&mut self) {
        for s in self.stop.drain(..) {
            let _ = s.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn basalt_pair(a: &str, b: &str) -> BasaltPair {
    let keys = [KeyPair::generate(), KeyPair::generate()];
    let mut pair = BasaltPair {
        stop: Vec::new(),
        threads: Vec::new(),
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    for (i, (ns, other)) in [(a, "10.96.0.2"), (b, "10.96.0.1")].into_iter().enumerate() {
        let (k, peer) = (keys[i].clone(), keys[1 - i].public());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (ns, other, ready) = (ns.to_string(), other.to_string(), ready_tx.clone());
        pair.stop.push(tx);
        pair.threads.push(std::thread::spawn(move || {
            enter(&ns);
            let rt = runtime();
            rt.block_on(async move {
                let opts = DeviceOptions {
                    fwmark: None,
                    preshared_key: Some([7; 32]),
                    ..DeviceOptions::default()
                };
                let (dev, task) = device::run(&k, "ks0", opts).await.unwrap();
                ip(&format!("addr add fd00:96::{}/64 dev ks0", i + 1));
                dev.set_peers(&[DevicePeer {
                    public_key: peer,
                    endpoint: Some(format!("{other}:51820").parse().unwrap()),
                    allowed_ips: vec![format!("fd00:96::{}/128", 2 - i).parse().unwrap()],
                }]);
                ready.send(()).unwrap();
                let _ = rx.await;
                task.abort();
            });
        }));
    }
    for _ in 0..2 {
        ready_rx.recv().unwrap();
    }
    pair
}

/// wireguard-go in each namespace, configured by `wg`; stopped when dropped.
fn wireguard_go_pair(a: &str, b: &str, dir: &std::path::Path) -> Vec<Kill> {
    let keys = [KeyPair::generate(), KeyPair::generate()];
    let pid = std::process::id() % 100_000;
    let mut procs = Vec::new();
    for (i, (ns, other)) in [(a, "10.96.0.2"), (b, "10.96.0.1")].into_iter().enumerate() {
        let wgif = format!("wgb{pid}{i}");
        procs.push(wireguard_go(ns, &wgif));
        let key = dir.join(format!("key{i}"));
        std::fs::write(&key, B64.encode(keys[i].private())).unwrap();
        run(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "wg",
                "set",
                &wgif,
                "private-key",
                key.to_str().unwrap(),
                "listen-port",
                "51821",
                "peer",
                &B64.encode(keys[1 - i].public()),
                "endpoint",
                &format!("{other}:51821"),
                "allowed-ips",
                &format!("fd00:97::{}/128", 2 - i),
            ],
        );
        ip(&format!(
            "-n {ns} addr add fd00:97::{}/64 dev {wgif}",
            i + 1
        ));
        ip(&format!("-n {ns} link set {wgif} up"));
    }
    procs
}

fn convergence(n: u8) -> Duration {
    let tag = format!("kb{}", std::process::id() % 100_000);
    let mut nss = Namespaces(Vec::new());
    let hub = Hub::start(&mut nss, &tag);
    let cluster = hub.cluster();
    let names: Vec<String> = (1..=n).map(|i| hub.add_host(&mut nss, i)).collect();
    let start = Instant::now();
    let hosts: Vec<Host> = names
        .iter()
        .map(|ns| cluster.start(ns, KeyPair::generate()))
        .collect();
    let refs: Vec<&Host> = hosts.iter().collect();
    let t = until("convergence", Duration::from_secs(120), || all_up(&refs));
    let _ = start;
    drop(hosts);
    drop(hub);
    t
}

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this benchmark needs root (namespaces, tun devices)"
    );
    need("iperf3", "iperf3");
    need("wireguard-go", "wireguard-go");
    need("wg", "wireguard-tools");
    let pid = std::process::id() % 100_000;
    let (a, b) = (format!("kb{pid}-a"), format!("kb{pid}-b"));
    let mut nss = Namespaces(Vec::new());
    nss.add(&a);
    nss.add(&b);
    ip(&format!(
        "-n {a} link add v0 type veth peer name v0 netns {b}"
    ));
    for (ns, addr) in [(&a, "10.96.0.1/24"), (&b, "10.96.0.2/24")] {
        ip(&format!("-n {ns} addr add {addr} dev v0"));
        ip(&format!("-n {ns} link set v0 up"));
    }
    let raw = measure(&a, &b, "10.96.0.2");
    let basalt = {
        let _pair = basalt_pair(&a, &b);
        // The first packets start the handshake.
        run(
            "ip",
            &["netns", "exec", &a, "ping", "-6", "-c", "3", "fd00:96::2"],
        );
        measure(&a, &b, "fd00:96::2")
    };
    let dir = tempfile::tempdir().unwrap();
    let wggo = {
        let _procs = wireguard_go_pair(&a, &b, dir.path());
        run(
            "ip",
            &["netns", "exec", &a, "ping", "-6", "-c", "3", "fd00:97::2"],
        );
        measure(&a, &b, "fd00:97::2")
    };
    println!();
    println!("KubeSpan data plane, one namespace pair, one TCP stream (iperf3 -t 3), 200 pings");
    println!(
        "{:<34} {:>12} {:>10} {:>12} {:>14}",
        "path", "Mbit/s", "of raw", "ping avg ms", "added ms"
    );
    for (name, (mbps, ms)) in [
        ("raw veth", raw),
        ("Basalt (boringtun over tun)", basalt),
        ("wireguard-go", wggo),
    ] {
        println!(
            "{:<34} {:>12.0} {:>9.0}% {:>12.3} {:>14.3}",
            name,
            mbps,
            100.0 * mbps / raw.0,
            ms,
            ms - raw.1
        );
    }
    println!(
        "Basalt / wireguard-go: throughput {:.2}x, latency {:.2}x",
        basalt.0 / wggo.0,
        basalt.1 / wggo.1
    );
    drop(nss);
    println!();
    println!("KubeSpan convergence: every node has every other up (discovery + handshakes)");
    println!("{:<8} {:>12}", "nodes", "seconds");
    for n in [5u8, 20] {
        let t = convergence(n);
        println!("{:<8} {:>12.2}", n, t.as_secs_f64());
    }
}
