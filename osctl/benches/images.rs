//! Image import: a 200 MB image (`docker build` of random data on scratch, `docker save`d to
//! a file) into a fresh Docker cluster of 3 nodes with `osctl image import` (every node at
//! once), against containerd's own `ctr images import` of the same archive into one node, run
//! on the host against that node's containerd socket — the baseline a user would script. Also
//! the peak resident memory of each node's init (which serves the import) and apid (which
//! carries it) during the import: their high-water marks are reset first. Goals: three nodes
//! in no more than 1.5× the time of one `ctr` import; each process's peak at most 64 MB
//! (streamed, never held whole). `BASALT_BENCH_RUNS` (default 3) fresh clusters, min / median
//! / max. Needs root and a Docker engine; `ctr` comes from the Go-built stack.
//!
//! `cargo bench -p osctl --bench images`

#![allow(clippy::unwrap_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;
use common::ok as osctl;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const NET: &str = "10.239.0";

fn sh(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Host PIDs of a node container's init (its PID 1) and apid.
fn node_pids(container: &str) -> (u32, u32) {
    let init: u32 =
        sh(Command::new("docker").args(["inspect", "--format", "{{.State.Pid}}", container]))
            .trim()
            .parse()
            .unwrap();
    let top = sh(Command::new("docker").args(["top", container, "-eo", "pid,args"]));
    let apid = top
        .lines()
        .find(|l| l.contains("apid"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no apid in\n{top}"));
    (init, apid)
}

/// Resets a process's peak resident memory (VmHWM) to its current.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

fn peak_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}

/// One run on a fresh cluster: (ctr into one node, osctl into three, peak MiB of init and of
/// apid, the largest over the nodes).
/// One run's figures: ctr into one node, osctl into three, init's and apid's peaks (MiB).
type Run = (Duration, Duration, f64, f64);

fn run(root: &Path, archive: &Path, ctr: &Path) -> Run {
    let name = format!("ib{}", std::process::id() % 10_000);
    osctl(
        root,
        &[
            "cluster",
            "create",
            "--name",
            &name,
            "--provisioner",
            "docker",
            "--controlplanes",
            "1",
            "--workers",
            "2",
            "--cidr",
            &format!("{NET}.0/24"),
        ],
    );
    let oc = root.join(&name).join("osconfig");
    let nodes = [
        format!("{name}-controlplane-1"),
        format!("{name}-worker-1"),
        format!("{name}-worker-2"),
    ];
    // The baseline: ctr on the host, through the first node's socket, into a namespace of its
    // own (what it writes does not help the import after it).
    let (init0, _) = node_pids(&nodes[0]);
    let sock = format!("/proc/{init0}/root/system/run/containerd/containerd.sock");
    let start = Instant::now();
    sh(Command::new(ctr)
        .args([
            "--address",
            &sock,
            "--namespace",
            "bench-ctr",
            "images",
            "import",
        ])
        .arg(archive));
    let ctr_took = start.elapsed();

    let pids: Vec<(u32, u32)> = nodes.iter().map(|n| node_pids(n)).collect();
    for (i, a) in &pids {
        reset_peak(*i);
        reset_peak(*a);
    }
    let all: Vec<String> = (2..=4).map(|i| format!("{NET}.{i}")).collect();
    let start = Instant::now();
    let out = osctl(
        root,
        &[
            "--osconfig",
            oc.to_str().unwrap(),
            "-n",
            &all.join(","),
            "image",
            "import",
            archive.to_str().unwrap(),
        ],
    );
    let ours = start.elapsed();
    assert_eq!(out.matches("created").count(), 3, "{out}");
    let init_peak = pids.iter().map(|(i, _)| peak_mib(*i)).fold(0.0, f64::max);
    let apid_peak = pids.iter().map(|(_, a)| peak_mib(*a)).fold(0.0, f64::max);
    osctl(root, &["cluster", "destroy", "--name", &name]);
    (ctr_took, ours, init_peak, apid_peak)
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("images bench: needs root (Docker, the nodes' /proc); skipped");
        return;
    }
    let runs: usize = std::env::var("BASALT_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let stack = basalt_image::stack::ensure(
        basalt_image::stack::NODE,
        &basalt_image::inputs::cache_dir(),
        &|m| eprintln!("{m}"),
    )
    .expect("the stack builds (osctl image stack)");
    let ctr = stack.path("ctr").unwrap().to_path_buf();
    let root = common::clusters_root();

    // 200 MB of random data (nothing compresses or deduplicates it) on scratch.
    let dir = tempfile::tempdir().unwrap();
    sh(Command::new("head")
        .args(["-c", "200000000", "/dev/urandom"])
        .stdout(std::fs::File::create(dir.path().join("data")).unwrap()));
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY data /data\n",
    )
    .unwrap();
    let tag = format!("basalt-bench/big:{}", std::process::id());
    sh(Command::new("docker")
        .args(["build", "--quiet", "-t", &tag])
        .arg(dir.path()));
    let archive = dir.path().join("big.tar");
    sh(Command::new("docker").args(["save", "--output", archive.to_str().unwrap(), &tag]));
    let _ = Command::new("docker")
        .args(["rmi", "--force", &tag])
        .output();
    let size = std::fs::metadata(&archive).unwrap().len();
    // The first create builds the node image: not measured.
    osctl(
        &root,
        &[
            "cluster",
            "create",
            "--name",
            "ibwarm",
            "--provisioner",
            "docker",
            "--controlplanes",
            "1",
            "--workers",
            "0",
            "--cidr",
            &format!("{NET}.0/24"),
        ],
    );
    osctl(&root, &["cluster", "destroy", "--name", "ibwarm"]);

    let results: Vec<_> = (0..runs).map(|_| run(&root, &archive, &ctr)).collect();
    let col = |f: &dyn Fn(&Run) -> f64| stats(results.iter().map(f).collect());
    let ctr_s = col(&|r| r.0.as_secs_f64());
    let ours_s = col(&|r| r.1.as_secs_f64());
    let ratio = col(&|r| r.1.as_secs_f64() / r.0.as_secs_f64());
    let init = col(&|r| r.2);
    let apid = col(&|r| r.3);
    println!(
        "\nimage import, {:.0} MB archive, {runs} runs (fresh Docker cluster each)\n",
        size as f64 / 1e6
    );
    println!("{:<44} {:>8} {:>8} {:>8}  goal", "", "min", "median", "max");
    let row = |what: &str, s: (f64, f64, f64), unit: &str, goal: &str| {
        println!(
            "{what:<44} {:>7.2}{unit} {:>7.2}{unit} {:>7.2}{unit}  {goal}",
            s.0, s.1, s.2
        );
    };
    row("ctr images import, 1 node (s)", ctr_s, " ", "");
    row("osctl image import, 3 nodes at once (s)", ours_s, " ", "");
    row("  3 nodes / ctr 1 node", ratio, "x", "<= 1.5x");
    row("init peak RSS during import (MiB)", init, " ", "<= 64");
    row("apid peak RSS during import (MiB)", apid, " ", "<= 64");
}
