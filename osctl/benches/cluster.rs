//! `osctl cluster create` to all-healthy, wall time, for 1 and 3 nodes on the QEMU provisioner
//! (root). One create first builds the images, reported apart; then each size is created and
//! destroyed `BASALT_BENCH_RUNS` times (default 3) and min / median / max are printed. Goal on
//! this machine (2 cores, TCG): 3 QEMU nodes in 90 s or less.
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

fn create(root: &Path, nodes: u8) -> Duration {
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
    let first = create(&root, 1);
    println!();
    println!("osctl cluster create to all-healthy, QEMU provisioner (TCG), {runs} runs each");
    println!(
        "first create, images built or found: {:.1} s",
        first.as_secs_f64()
    );
    println!(
        "{:<8} {:>10} {:>10} {:>10}",
        "nodes", "min s", "median s", "max s"
    );
    for n in [1u8, 3] {
        let mut t: Vec<f64> = (0..runs).map(|_| create(&root, n).as_secs_f64()).collect();
        t.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{:<8} {:>10.1} {:>10.1} {:>10.1}",
            n,
            t[0],
            t[t.len() / 2],
            t[t.len() - 1]
        );
    }
}
