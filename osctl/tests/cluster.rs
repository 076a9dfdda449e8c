//! The end-to-end suite (cluster tier, root): `osctl cluster create` on QEMU makes a 3-node
//! cluster (1 control plane, 2 workers) on its own network segment; every node answers with
//! its config; a config change on one node shows in `osctl get addresses`; `destroy` leaves
//! no process, namespace, link or directory behind.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use basalt_testkit::{Tier, tier};

fn osctl(clusters: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_osctl"))
        .env("BASALT_CLUSTERS", clusters)
        .args(args)
        .output()
        .unwrap()
}

fn ok(clusters: &Path, args: &[&str]) -> String {
    let o = osctl(clusters, args);
    assert!(
        o.status.success(),
        "osctl {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Destroys the cluster when the test ends, passed or not.
struct Destroy<'a>(&'a Path, &'a str);

impl Drop for Destroy<'_> {
    fn drop(&mut self) {
        // A failed run keeps the nodes' console logs (destroy removes the cluster's directory).
        if std::thread::panicking() {
            let keep = self.0.join(format!("failed-{}", self.1));
            let _ = std::fs::create_dir_all(&keep);
            if let Ok(nodes) = std::fs::read_dir(self.0.join(self.1)) {
                for n in nodes.flatten() {
                    let log = n.path().join("console.log");
                    if log.exists() {
                        let to = keep.join(format!("{}.log", n.file_name().to_string_lossy()));
                        let _ = std::fs::copy(&log, &to);
                        eprintln!("console log kept: {}", to.display());
                    }
                }
            }
        }
        let _ = osctl(self.0, &["cluster", "destroy", "--name", self.1]);
    }
}

fn qemu_processes_of(dir: &Path) -> usize {
    let out = Command::new("pgrep")
        .args(["-f", &dir.display().to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn a_qemu_cluster_is_created_changed_and_destroyed_without_a_trace() {
    if !tier(
        Tier::Cluster,
        "a_qemu_cluster_is_created_changed_and_destroyed_without_a_trace",
    ) {
        return;
    }
    // Under the target directory, so the images are built once and reused by later runs.
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("clusters");
    std::fs::create_dir_all(&root).unwrap();
    let clusters = root.as_path();
    let name = format!("e2e{}", std::process::id() % 10_000);
    let guard = Destroy(clusters, &name);
    let start = Instant::now();
    let out = ok(
        clusters,
        &[
            "cluster",
            "create",
            "--name",
            &name,
            "--controlplanes",
            "1",
            "--workers",
            "2",
            "--cidr",
            "10.231.0.0/24",
            "--with-kubespan",
        ],
    );
    eprintln!("{out}\ncreated in {:?}", start.elapsed());
    for (node, addr) in [
        ("controlplane-1", "10.231.0.2"),
        ("worker-1", "10.231.0.3"),
        ("worker-2", "10.231.0.4"),
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{name}-{node}")))
            .unwrap_or_else(|| panic!("no {node} in\n{out}"));
        assert!(line.contains(addr) && line.contains("running"), "{line}");
    }
    let dir = clusters.join(&name);
    let oc = dir.join("osconfig");
    let oc = oc.to_str().unwrap();
    // Every node has its config: the API answers over mutual TLS from the cluster's CA.
    let v = ok(clusters, &["--osconfig", oc, "-n", "10.231.0.4", "version"]);
    assert!(v.contains(&format!("{name}-worker-2")), "{v}");

    // A config change on one node: a second address on eth0, applied without a reboot.
    let worker = std::fs::read_to_string(dir.join("worker.yaml")).unwrap();
    let patched = dir.join("worker-2.yaml");
    std::fs::write(
        &patched,
        format!(
            "{worker}---\napiVersion: v1alpha1\nkind: LinkConfig\nname: eth0\naddresses: [10.231.0.4/24, 10.231.0.104/24]\nroutes:\n  - destination: 0.0.0.0/0\n    gateway: 10.231.0.1\n"
        ),
    )
    .unwrap();
    ok(
        clusters,
        &[
            "--osconfig",
            oc,
            "-n",
            "10.231.0.4",
            "apply-config",
            "-f",
            patched.to_str().unwrap(),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = ok(
            clusters,
            &["--osconfig", oc, "-n", "10.231.0.4", "get", "addresses"],
        );
        if a.contains("eth0/10.231.0.104/24") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new address never showed:\n{a}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    // The other nodes are untouched.
    let a = ok(
        clusters,
        &["--osconfig", oc, "-n", "10.231.0.3", "get", "addresses"],
    );
    assert!(!a.contains("10.231.0.104"), "{a}");
    let shown = ok(clusters, &["cluster", "show", "--name", &name]);
    assert_eq!(shown.matches("running").count(), 6, "{shown}");

    // KubeSpan: every node has the two others as peers, up (WireGuard handshakes through the
    // kernel's WireGuard, meeting at the discovery server the control plane runs).
    for addr in ["10.231.0.2", "10.231.0.3", "10.231.0.4"] {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let st = ok(
                clusters,
                &[
                    "--osconfig",
                    oc,
                    "-n",
                    addr,
                    "get",
                    "kubespanpeerstatuses",
                    "-o",
                    "yaml",
                ],
            );
            if st.matches("state: up").count() == 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{addr}: not every peer up over KubeSpan:\n{st}"
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    // A node rebooted comes back with its config (kept on its state disk).
    ok(clusters, &["--osconfig", oc, "-n", "10.231.0.3", "reboot"]);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut went_away = false;
    loop {
        let o = osctl(clusters, &["--osconfig", oc, "-n", "10.231.0.3", "version"]);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        if !o.status.success() {
            went_away = true;
        } else if went_away && text.contains(&format!("{name}-worker-1")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "worker 1 did not come back with its config after a reboot: {text}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    // Destroy leaves nothing.
    drop(guard);
    assert!(!dir.exists(), "the cluster's directory is left");
    assert!(
        !Path::new(&format!("/run/netns/basalt-{name}")).exists(),
        "the namespace is left"
    );
    let links = Command::new("ip").args(["link", "show"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains(&format!("bst-{name}")),
        "the host link is left"
    );
    assert_eq!(qemu_processes_of(&dir), 0, "QEMU processes are left");
    let again = osctl(clusters, &["cluster", "show", "--name", &name]);
    assert!(!again.status.success());
}
