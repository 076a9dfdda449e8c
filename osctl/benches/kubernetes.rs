//! Kubernetes on a local cluster: `osctl cluster create --kubernetes` — which bootstraps etcd
//! and waits until Kubernetes is healthy: every node Ready, kube-proxy answering on every node,
//! CoreDNS's replicas ready — and then `osctl health --expect-nodes` once more, wall time, on
//! Docker with 3 nodes (1 control plane, 2 workers) and, with `BASALT_BENCH_QEMU=1`, QEMU with
//! 3 nodes (TCG: slow, measured and reported). One create first builds the images, reported
//! apart; then `BASALT_BENCH_RUNS` (default 3) runs each, min / median / max. Goals: Docker, 3
//! nodes, healthy in 40 s or less (Talos takes about 2 minutes); QEMU 3 nodes 150 s. Needs root
//! and a Docker engine; the Go-built stack is built into the cache first if it is not there
//! (`osctl image stack`).
//!
//! `cargo bench -p osctl --bench kubernetes`

#![allow(clippy::unwrap_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;
use common::ok as osctl;

use std::path::Path;
use std::time::{Duration, Instant};

/// (create with bootstrap, create to every node Ready). With `memory`, the processes of the
/// control plane and of a worker (RSS, largest first) after every node is Ready and 30 s more.
fn run(root: &Path, provisioner: &str, nodes: u8, memory: bool) -> (Duration, Duration, String) {
    let name = format!("kb{}", std::process::id() % 10_000);
    let workers = (nodes - 1).to_string();
    let start = Instant::now();
    osctl(
        root,
        &[
            "cluster",
            "create",
            "--name",
            &name,
            "--provisioner",
            provisioner,
            "--controlplanes",
            "1",
            "--workers",
            &workers,
            "--cidr",
            "10.236.0.0/24",
            "--kubernetes",
        ],
    );
    let created = start.elapsed();
    let oc = root.join(&name).join("osconfig");
    osctl(
        root,
        &[
            "--osconfig",
            oc.to_str().unwrap(),
            "-n",
            "10.236.0.2",
            "health",
            "--wait-timeout",
            "10m",
            "--expect-nodes",
            &nodes.to_string(),
        ],
    );
    let ready = start.elapsed();
    let mut procs = String::new();
    if memory {
        std::thread::sleep(Duration::from_secs(30));
        for (role, ip) in [("control plane", "10.236.0.2"), ("worker", "10.236.0.3")] {
            let p = osctl(
                root,
                &["--osconfig", oc.to_str().unwrap(), "-n", ip, "processes"],
            );
            procs.push_str(&format!("\n{role} ({ip}):\n"));
            // Nodes' own processes with resident memory (kernel threads have none).
            for line in p.lines().filter(|l| !l.contains(" 0 B ")) {
                procs.push_str(line);
                procs.push('\n');
            }
        }
    }
    osctl(root, &["cluster", "destroy", "--name", &name]);
    (created, ready, procs)
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this benchmark needs root"
    );
    let runs: usize = std::env::var("BASALT_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("clusters");
    std::fs::create_dir_all(&root).unwrap();
    let (first, _, _) = run(&root, "docker", 1, false);
    let mut cases = vec![("docker", 3u8)];
    if std::env::var("BASALT_BENCH_QEMU").is_ok_and(|v| v == "1") {
        cases.push(("qemu", 3));
    }
    let mut rows = Vec::new();
    let mut memory = String::new();
    for (p, n) in cases {
        let t: Vec<(Duration, Duration, String)> = (0..runs)
            .map(|i| run(&root, p, n, p == "docker" && i + 1 == runs))
            .collect();
        if let Some(last) = t.last().filter(|l| !l.2.is_empty()) {
            memory = last.2.clone();
        }
        let created = stats(t.iter().map(|x| x.0.as_secs_f64()).collect());
        let ready = stats(t.iter().map(|x| x.1.as_secs_f64()).collect());
        rows.push((p, n, created, ready));
    }
    println!();
    println!(
        "Kubernetes: cluster create (etcd bootstrap, every node Ready, kube-proxy, CoreDNS) and the health check after it, {runs} runs each"
    );
    println!(
        "first create, images built or found: {:.1} s",
        first.as_secs_f64()
    );
    println!(
        "{:<12} {:<6} {:>22} {:>26}",
        "provisioner", "nodes", "create min/med/max s", "healthy min/med/max s"
    );
    for (p, n, c, r) in rows {
        println!(
            "{p:<12} {n:<6} {:>22} {:>26}",
            format!("{:.1}/{:.1}/{:.1}", c.0, c.1, c.2),
            format!("{:.1}/{:.1}/{:.1}", r.0, r.1, r.2)
        );
    }
    println!();
    println!("node memory, Docker, 30 s after every node is Ready (osctl processes: RSS){memory}");
}
