//! `osctl cluster create` to all-healthy, wall time, for 1 and 3 nodes on the QEMU and Docker
//! provisioners (root; Docker needs a running engine). One create first builds the images,
//! reported apart; then each size is created and destroyed `BASALT_BENCH_RUNS` times (default
//! 3) and min / median / max are printed. Goals on this machine (2 cores, TCG): 3 QEMU nodes in
//! 90 s or less, 3 Docker nodes in 20 s or less.
//!
//! `cargo bench -p osctl --bench cluster`

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn osctl(root: &Path, args: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_osctl"))
        .env("BASALT_CLUSTERS", root)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "osctl {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn create(root: &Path, provisioner: &str, nodes: u8) -> Duration {
    let name = format!("bench{}", std::process::id() % 10_000);
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
            "10.232.0.0/24",
        ],
    );
    let t = start.elapsed();
    osctl(root, &["cluster", "destroy", "--name", &name]);
    t
}

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this benchmark needs root (a network namespace, a bridge, taps)"
    );
    let runs: usize = std::env::var("BASALT_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("clusters");
    std::fs::create_dir_all(&root).unwrap();
    let first = create(&root, "qemu", 1);
    let mut rows = Vec::new();
    for p in ["qemu", "docker"] {
        for n in [1u8, 3] {
            let mut t: Vec<f64> = (0..runs)
                .map(|_| create(&root, p, n).as_secs_f64())
                .collect();
            t.sort_by(|a, b| a.total_cmp(b));
            rows.push((p, n, t[0], t[t.len() / 2], t[t.len() - 1]));
        }
    }
    println!();
    println!("osctl cluster create to all-healthy (QEMU under TCG), {runs} runs each");
    println!(
        "first create, images built or found: {:.1} s",
        first.as_secs_f64()
    );
    println!(
        "{:<12} {:<8} {:>10} {:>10} {:>10}",
        "provisioner", "nodes", "min s", "median s", "max s"
    );
    for (p, n, min, med, max) in rows {
        println!("{p:<12} {n:<8} {min:>10.1} {med:>10.1} {max:>10.1}");
    }
}
