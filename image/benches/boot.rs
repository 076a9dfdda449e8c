//! Boot benchmark: builds the ISO (with `basalt.test=poweroff`) and boots it N times under QEMU
//! (SeaBIOS, TCG), timing QEMU start → "PID 1 running". Prints a table of times and artifact
//! sizes (with the rootfs of an image without containerd and of a Kubernetes image); asserts
//! nothing.
//!
//!   cargo bench -p basalt-image            (BASALT_BENCH_RUNS=5 by default)

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::path::Path;
use std::time::Duration;

use basalt_image::qemu::{Boot, Vm};
use basalt_image::{BuildOptions, Target};

fn main() {
    let runs: usize = std::env::var("BASALT_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-images");
    let opts = BuildOptions {
        out: out.clone(),
        init: None,
        extra_cmdline: vec!["basalt.test=poweroff".into()],
        verbose: false,
        with_containerd: true,
        kubernetes: false,
        version: None,
    };
    let arts = basalt_image::build(Target::Iso, &opts).unwrap();
    let bare = BuildOptions {
        out: out.join("without-containerd"),
        init: arts.init.clone(),
        with_containerd: false,
        kubernetes: false,
        ..opts.clone()
    };
    let bare_rootfs = basalt_image::build(Target::Rootfs, &bare)
        .unwrap()
        .rootfs
        .unwrap();
    let bare_size = std::fs::metadata(&bare_rootfs).unwrap().len();
    // A Kubernetes node's rootfs: the stack's etcd, kubelet, control plane and pause besides
    // containerd.
    let k8s = BuildOptions {
        out: out.join("kubernetes"),
        init: arts.init.clone(),
        kubernetes: true,
        ..opts.clone()
    };
    let k8s_rootfs = basalt_image::build(Target::Rootfs, &k8s)
        .unwrap()
        .rootfs
        .unwrap();
    let k8s_size = std::fs::metadata(&k8s_rootfs).unwrap().len();
    let mut times = Vec::new();
    for i in 0..runs {
        let mut vm = Vm::start(
            &Boot::Iso {
                iso: arts.iso.clone().unwrap(),
                uefi: false,
            },
            &out.join(format!("run{i}")),
            512,
        )
        .unwrap();
        let t = vm
            .wait_for("basalt: PID 1 running", Duration::from_secs(300))
            .unwrap();
        vm.wait_exit(Duration::from_secs(60));
        times.push(t);
    }
    times.sort();
    let secs = |d: Duration| d.as_secs_f64();
    println!("boot benchmark: ISO, SeaBIOS, QEMU TCG, 1 vCPU, 512 MiB, {runs} runs");
    println!();
    println!("| measure                          | min    | median | max    | goal   |");
    println!("|----------------------------------|-------:|-------:|-------:|-------:|");
    println!(
        "| QEMU start -> PID 1 running (s)  | {:>6.2} | {:>6.2} | {:>6.2} | <= 5.0 |",
        secs(times[0]),
        secs(times[times.len() / 2]),
        secs(times[times.len() - 1])
    );
    println!();
    println!("| artifact              |      bytes |   MiB | goal      |");
    println!("|-----------------------|-----------:|------:|----------:|");
    let mut rows: Vec<(String, u64, &str)> = arts
        .table()
        .unwrap()
        .into_iter()
        .map(|(name, size, _)| {
            let goal = if name == "init" { "<= 15 MiB" } else { "" };
            (name, size, goal)
        })
        .collect();
    rows.insert(3, ("rootfs, no containerd".into(), bare_size, "<= 15 MiB"));
    rows.insert(4, ("rootfs, Kubernetes".into(), k8s_size, "<= 130 MiB"));
    for (name, size, goal) in rows {
        println!(
            "| {name:<21} | {size:>10} | {:>5.1} | {goal} |",
            size as f64 / 1048576.0
        );
    }
}
