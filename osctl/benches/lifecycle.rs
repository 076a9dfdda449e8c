//! A node's lifecycle under QEMU (TCG, 1 vCPU, SeaBIOS): install from the ISO to a 3 GiB
//! disk, the first boot from the disk, an upgrade (`osctl upgrade` → the new version running
//! with its trial confirmed) and a rollback (`osctl rollback` → the old version answering
//! again), one node, `BASALT_BENCH_RUNS` (default 1) runs, min / median / max. Needs root
//! (QEMU, the image build).
//!
//! `cargo bench -p osctl --bench lifecycle`

#![allow(clippy::unwrap_used, clippy::print_stdout)]

#[path = "../tests/lifecycle/mod.rs"]
mod lifecycle;

use std::time::{Duration, Instant};

use lifecycle::{BOOT_TIMEOUT, bundle, install_images, installed_node, ok, until};

fn main() {
    let runs: usize = std::env::var("BASALT_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    install_images();
    let v2 = bundle("0.2.0", None);
    let v2 = v2.to_str().unwrap();
    let mut rows: Vec<[Duration; 4]> = Vec::new();
    for _ in 0..runs {
        let node = installed_node("bench-lifecycle", false, true);
        let (dir, oc) = (&node.dir, node.osconfig.to_str().unwrap());
        let t = Instant::now();
        ok(dir, &["--osconfig", oc, "upgrade", "--image", v2]);
        let upgrade = t.elapsed();
        let t = Instant::now();
        ok(dir, &["--osconfig", oc, "rollback"]);
        // The rollback answers before the reboot: wait for the old slot to answer.
        std::thread::sleep(Duration::from_secs(3));
        until(dir, &["--osconfig", oc, "version"], BOOT_TIMEOUT, |o| {
            o.contains("A:0.1.0(booted)") && o.contains("running")
        });
        let rollback = t.elapsed();
        rows.push([node.install, node.boot, upgrade, rollback]);
    }
    println!("node lifecycle under TCG, {runs} run(s): seconds (min / median / max)");
    println!("{:<58} {:>8} {:>8} {:>8}", "step", "min", "median", "max");
    let names = [
        "install: apply-config → installed (ISO boot, 3 GiB disk)",
        "first boot from the disk → configured, answering mTLS",
        "upgrade: osctl upgrade → new version confirmed",
        "rollback: osctl rollback → old version answering",
    ];
    for (i, name) in names.iter().enumerate() {
        let mut v: Vec<f64> = rows.iter().map(|r| r[i].as_secs_f64()).collect();
        v.sort_by(f64::total_cmp);
        println!(
            "{name:<58} {:>8.1} {:>8.1} {:>8.1}",
            v[0],
            v[v.len() / 2],
            v[v.len() - 1]
        );
    }
}
