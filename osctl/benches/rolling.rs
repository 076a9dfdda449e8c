//! A rolling upgrade of a Kubernetes cluster under load (issue 22): `osctl cluster create
//! --install --kubernetes` (QEMU, TCG: 1 control plane, 2 workers, each installed to its disk
//! from the ISO), a Deployment of 2 replicas (one per worker, preferred) behind a NodePort
//! Service with a PodDisruptionBudget of minAvailable 1, and a client that connects to the
//! Service every 250 ms through the cluster's published port (`--publish`: a forwarder that takes the
//! first node that accepts, as a load balancer would). Then `osctl upgrade` of every node to a
//! bundle of another version, one node at a time (each drained, rebooted on trial, Ready and
//! uncordoned, etcd healthy after the control plane). Prints the create (install included),
//! each node's upgrade, the whole rolling upgrade, the client's requests, failures and longest
//! gap between two answers. Needs root; the stack is built first if it is not cached.
//!
//! `cargo bench -p osctl --bench rolling` (about 25 minutes under TCG on 2 cores)

#![allow(clippy::unwrap_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;
use common::{Destroy, kubectl, ok as osctl};

use std::io::Read as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the polling client saw: (when, answered with a pod's greeting).
type Seen = Arc<Mutex<Vec<(Instant, bool)>>>;

fn ask(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    ) else {
        return false;
    };
    // Room for the forwarder to try a node that does not answer (3 s) before another.
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    // The test image's server answers each connection with one line.
    let mut line = [0u8; 64];
    let n = s.read(&mut line).unwrap_or(0);
    line[..n].starts_with(b"hello from ")
}

fn main() {
    let root = common::clusters_root();
    let clusters = root.as_path();
    let name = format!("ru{}", std::process::id() % 10_000);
    let _guard = Destroy(clusters, &name, "qemu");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let t = Instant::now();
    osctl(
        clusters,
        &[
            "cluster",
            "create",
            "--name",
            &name,
            "--install",
            "--kubernetes",
            "--controlplanes",
            "1",
            "--workers",
            "2",
            "--cidr",
            "10.238.0.0/24",
            "--publish",
            &format!("{port}:30080"),
        ],
    );
    let created = t.elapsed();
    let dir = clusters.join(&name);
    let oc = dir.join("osconfig");
    let oc = oc.to_str().unwrap();
    let ns = format!("basalt-{name}");
    let kc = dir.join("kubeconfig");
    common::kubeconfig(clusters, oc, "10.238.0.2", &kc);
    let web = serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {
                            "containers": [{
                                "name": "web",
                                "image": "basalt.local/hello:v1",
                                "imagePullPolicy": "Never",
                                "args": ["--serve", "8080"],
                                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 2},
                            }],
                            "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                                {"weight": 100, "podAffinityTerm": {
                                    "labelSelector": {"matchLabels": {"app": "web"}},
                                    "topologyKey": "kubernetes.io/hostname"}}]}},
                        },
                    },
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web"},
                "spec": {"type": "NodePort", "selector": {"app": "web"},
                         "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}]},
            },
            {
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": {"name": "web"},
                "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}},
            },
        ],
    });
    let f = dir.join("web.json");
    std::fs::write(&f, web.to_string()).unwrap();
    kubectl(&ns, &kc, &["apply", "-f", f.to_str().unwrap()]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(900);
    while !(kubectl(
        &ns,
        &kc,
        &[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ],
    )
    .is_ok_and(|r| r.trim() == "2")
        && ask(port))
    {
        assert!(Instant::now() < deadline, "web is not ready");
        std::thread::sleep(Duration::from_secs(3));
    }

    let bundle_dir = dir.join("bundle");
    osctl(
        clusters,
        &[
            "image",
            "bundle",
            "--kubernetes",
            "--out",
            bundle_dir.to_str().unwrap(),
            "--image-version",
            "0.2.0",
        ],
    );
    let seen: Seen = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let ok = ask(port);
                seen.lock().unwrap().push((Instant::now(), ok));
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let nodes = ["10.238.0.2", "10.238.0.3", "10.238.0.4"];
    let mut per_node = Vec::new();
    let rolling = Instant::now();
    for node in nodes {
        let t = Instant::now();
        let out = osctl(
            clusters,
            &[
                "--osconfig",
                oc,
                "-n",
                node,
                "upgrade",
                "--image",
                bundle_dir.join("upgrade.bundle").to_str().unwrap(),
            ],
        );
        assert!(out.contains("running 0.2.0, confirmed"), "{out}");
        per_node.push((node, t.elapsed()));
    }
    let rolling = rolling.elapsed();
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    let seen = seen.lock().unwrap();
    let failed = seen.iter().filter(|(_, ok)| !ok).count();
    let mut longest = Duration::ZERO;
    let mut last_ok = seen.first().map(|(t, _)| *t);
    for (t, ok) in seen.iter() {
        if *ok {
            if let Some(l) = last_ok {
                longest = longest.max(t.duration_since(l));
            }
            last_ok = Some(*t);
        }
    }
    println!(
        "rolling upgrade of a 3-node Kubernetes cluster under QEMU/TCG (installed, 2 vCPUs, 2 GiB each)"
    );
    println!("{:<60} {:>10}", "step", "seconds");
    println!(
        "{:<60} {:>10.1}",
        "create --install --kubernetes → healthy",
        created.as_secs_f64()
    );
    for (node, d) in &per_node {
        println!(
            "{:<60} {:>10.1}",
            format!("upgrade {node} (drain, reboot, Ready, confirmed)"),
            d.as_secs_f64()
        );
    }
    println!(
        "{:<60} {:>10.1}",
        "rolling upgrade, all 3 nodes",
        rolling.as_secs_f64()
    );
    println!(
        "client: {} requests, {failed} failed, longest gap between answers {:.1} s",
        seen.len(),
        longest.as_secs_f64()
    );
}
