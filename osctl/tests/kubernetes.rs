//! Kubernetes end to end (cluster tier, root, Docker): a cluster of two control planes and two
//! workers from a Kubernetes image (`--kubernetes`: the Go-built stack's Kubernetes, etcd and
//! containerd; the versions a user sees are checked). `cluster create` bootstraps etcd on the first control
//! plane and the second joins by itself; bootstrap is refused a second time and on a worker;
//! the API server answers kubectl with the admin kubeconfig `osctl kubeconfig` writes; every
//! node's kubelet joins and is Ready; a pod from the locally imported image runs on a worker
//! and a pod on the other worker reaches it over KubeSpan (the pod CIDRs advertised as the
//! peers' allowed IPs); an image the host's Docker engine built is loaded onto every node
//! and a Deployment runs it with no pull; an etcd snapshot is one `etcdutl` accepts; a control
//! plane leaves etcd.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use basalt_testkit::{Tier, tier};

mod common;
use common::{Destroy, eventually, kubectl, ok, osctl, stack_path, uptime};

#[test]
fn a_docker_cluster_runs_etcd_and_the_control_plane() {
    if !tier(
        Tier::Cluster,
        "a_docker_cluster_runs_etcd_and_the_control_plane",
    ) {
        return;
    }
    let root = common::clusters_root();
    let clusters = root.as_path();
    let name = format!("k{}", std::process::id() % 100_000);
    let guard = Destroy(clusters, &name, "docker");
    let net = "10.234.0";
    // A host port for the NodePort below (`--publish`).
    let published = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = ok(
        clusters,
        &[
            "cluster",
            "create",
            "--name",
            &name,
            "--provisioner",
            "docker",
            "--controlplanes",
            "2",
            "--workers",
            "2",
            "--cidr",
            &format!("{net}.0/24"),
            "--with-kubespan",
            "--kubernetes",
            "--publish",
            &format!("{published}:30080"),
        ],
    );
    assert!(out.contains("bootstrapping etcd"), "{out}");
    let dir = clusters.join(&name);
    let oc = dir.join("osconfig");
    let oc = oc.to_str().unwrap();
    let (cp1, cp2, worker) = (format!("{net}.2"), format!("{net}.3"), format!("{net}.4"));
    let (w1, w2) = (format!("{name}-worker-1"), format!("{name}-worker-2"));

    // Both control planes run etcd, the API server, the controller manager and the scheduler.
    for cp in [&cp1, &cp2] {
        eventually(Duration::from_secs(120), Duration::from_secs(2), || {
            let s = ok(clusters, &["--osconfig", oc, "-n", cp, "services"]);
            let healthy = |svc: &str| {
                s.lines()
                    .any(|l| l.starts_with(svc) && l.contains("running") && l.contains("healthy"))
            };
            for svc in [
                "etcd ",
                "kube-apiserver ",
                "kube-controller-manager ",
                "kube-scheduler ",
            ] {
                if !healthy(svc) {
                    return Err(format!("{cp}: {svc} is not running and healthy:\n{s}"));
                }
            }
            Ok(())
        });
    }
    // The second control plane joined etcd by itself: two started members, seen from both.
    for cp in [&cp1, &cp2] {
        let m = ok(clusters, &["--osconfig", oc, "-n", cp, "etcd", "members"]);
        assert!(
            m.contains(&format!("{name}-controlplane-1"))
                && m.contains(&format!("{name}-controlplane-2"))
                && !m.contains("not started"),
            "{cp}:\n{m}"
        );
        assert_eq!(m.matches("true").count(), 1, "one leader:\n{m}");
    }

    // Bootstrap is once per cluster, and a worker runs no etcd.
    let again = osctl(clusters, &["--osconfig", oc, "-n", &cp1, "bootstrap"]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success()
            && err.contains("AlreadyExists")
            && err.contains("already bootstrapped"),
        "{err}"
    );
    let on_cp2 = osctl(clusters, &["--osconfig", oc, "-n", &cp2, "bootstrap"]);
    assert!(!on_cp2.status.success());
    let on_worker = osctl(clusters, &["--osconfig", oc, "-n", &worker, "bootstrap"]);
    let err = String::from_utf8_lossy(&on_worker.stderr);
    assert!(
        !on_worker.status.success() && err.contains("not a control plane"),
        "{err}"
    );
    let members = osctl(
        clusters,
        &["--osconfig", oc, "-n", &worker, "etcd", "members"],
    );
    assert!(!members.status.success());

    // The admin kubeconfig: kubectl reaches the API server at the cluster endpoint.
    let kc = dir.join("kubeconfig");
    let ns = format!("basalt-{name}");
    let said = common::kubeconfig(clusters, oc, &cp1, &kc);
    assert!(said.contains(&format!("admin@{name}")), "{said}");
    eventually(Duration::from_secs(60), Duration::from_secs(2), || {
        let ready = kubectl(&ns, &kc, &["get", "--raw", "/readyz"])?;
        if ready.trim() != "ok" {
            return Err(format!("/readyz: {ready}"));
        }
        let ns = kubectl(&ns, &kc, &["get", "namespaces", "-o", "name"])?;
        if !ns.contains("namespace/kube-system") {
            return Err(format!("no kube-system yet: {ns}"));
        }
        Ok(())
    });
    // Every node's kubelet joined (TLS bootstrap with the token, its CSR approved) and is
    // Ready: the CRI and the pod network are up on each. `osctl health` waits for it.
    let health = ok(
        clusters,
        &[
            "--osconfig",
            oc,
            "-n",
            &cp1,
            "health",
            "--wait-timeout",
            "3m",
            "--expect-nodes",
            "4",
        ],
    );
    for want in [
        "etcd",
        "kube-apiserver",
        "nodes",
        "4 of 4 Ready",
        &format!("node/{w2}"),
    ] {
        assert!(health.contains(want), "{want} not in\n{health}");
    }
    assert!(!health.contains("FAIL"), "{health}");
    let from_worker = osctl(clusters, &["--osconfig", oc, "-n", &worker, "health"]);
    assert!(!from_worker.status.success());
    eventually(Duration::from_secs(30), Duration::from_secs(3), || {
        let nodes = kubectl(&ns, &kc, &["get", "nodes", "--no-headers"])?;
        let ready = nodes
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("Ready"))
            .count();
        if ready == 4 {
            Ok(())
        } else {
            Err(format!("not 4 nodes Ready:\n{nodes}"))
        }
    });
    // The versions a user sees: the API server's (the stack's Kubernetes, 1.36 or newer), the
    // container runtime on every node (containerd 2), etcd's (3.6), and control planes
    // carrying their role.
    let v: serde_json::Value =
        serde_json::from_str(&kubectl(&ns, &kc, &["version", "-o", "json"]).unwrap()).unwrap();
    let server = v["serverVersion"]["gitVersion"]
        .as_str()
        .unwrap_or_default();
    let minor: u32 = v["serverVersion"]["minor"]
        .as_str()
        .and_then(|m| m.trim_end_matches('+').parse().ok())
        .unwrap_or(0);
    assert!(server.starts_with("v1.") && minor >= 36, "{v}");
    assert_eq!(
        v["clientVersion"]["gitVersion"],
        v["serverVersion"]["gitVersion"]
    );
    let wide = kubectl(&ns, &kc, &["get", "nodes", "-o", "wide", "--no-headers"]).unwrap();
    for line in wide.lines() {
        assert!(line.contains("containerd://2."), "{wide}");
        assert!(line.contains(server), "{wide}");
    }
    eventually(Duration::from_secs(60), Duration::from_secs(2), || {
        let roles = kubectl(
            &ns,
            &kc,
            &[
                "get",
                "nodes",
                "-l",
                "node-role.kubernetes.io/control-plane",
                "-o",
                "name",
            ],
        )?;
        if roles.lines().count() == 2 {
            Ok(())
        } else {
            Err(format!("not 2 control planes by role: {roles}\n{wide}"))
        }
    });
    let members = ok(clusters, &["--osconfig", oc, "-n", &cp1, "etcd", "members"]);
    assert!(members.contains("3.6."), "{members}");

    // A pod from the image imported at boot (no registry) on one worker, serving; a pod on the
    // other worker reaches it across nodes.
    let run = |pod: &str, node: &str, args: &[&str]| {
        let overrides = format!(r#"{{"apiVersion":"v1","spec":{{"nodeName":"{node}"}}}}"#);
        let mut a = vec![
            "run",
            pod,
            "--image=basalt.local/hello:v1",
            "--image-pull-policy=Never",
            "--restart=Never",
        ];
        let o = format!("--overrides={overrides}");
        a.push(&o);
        a.push("--");
        a.extend_from_slice(args);
        kubectl(&ns, &kc, &a).unwrap();
    };
    run("srv", &w1, &["--serve", "8080"]);
    let mut srv_ip = String::new();
    eventually(Duration::from_secs(120), Duration::from_secs(2), || {
        let phase = kubectl(
            &ns,
            &kc,
            &[
                "get",
                "pod",
                "srv",
                "-o",
                "jsonpath={.status.phase} {.status.podIP}",
            ],
        )?;
        match phase.split_whitespace().collect::<Vec<_>>()[..] {
            ["Running", ip] => {
                srv_ip = ip.to_string();
                Ok(())
            }
            _ => Err(format!(
                "srv is not running: {phase}\n{}",
                kubectl(&ns, &kc, &["describe", "pod", "srv"]).unwrap_or_default()
            )),
        }
    });
    let logs = kubectl(&ns, &kc, &["logs", "srv"]).unwrap();
    assert!(
        logs.contains("hello from a Basalt container") && logs.contains("serving on 8080"),
        "{logs}"
    );
    // KubeSpan is on with `advertisePodNetworks`: each worker advertises the pod CIDR the
    // controller manager gave it, and the other has it among its allowed IPs, so the fetch
    // below crosses WireGuard both ways (KubeSpan's routing table comes before the main one;
    // a reply that took the plain path would not come back).
    let cidr_of = |node: &str| {
        let c = kubectl(
            &ns,
            &kc,
            &["get", "node", node, "-o", "jsonpath={.spec.podCIDR}"],
        )
        .unwrap();
        assert!(c.starts_with("10.244."), "{node}: {c}");
        c.trim().to_string()
    };
    let (w1_cidr, w2_cidr) = (cidr_of(&w1), cidr_of(&w2));
    let (w1_addr, w2_addr) = (format!("{net}.4"), format!("{net}.5"));
    for (on, on_name, peer, cidr) in [
        (&w2_addr, &w2, &w1, &w1_cidr),
        (&w1_addr, &w1, &w2, &w2_cidr),
    ] {
        eventually(Duration::from_secs(60), Duration::from_secs(2), || {
            let specs = ok(
                clusters,
                &[
                    "--osconfig",
                    oc,
                    "-n",
                    on,
                    "get",
                    "kubespanpeerspecs",
                    "-o",
                    "yaml",
                ],
            );
            let peer_spec = specs
                .split("\n---")
                .find(|d| d.contains(&format!("hostname: {peer}")))
                .unwrap_or_default();
            if peer_spec.contains(cidr.as_str()) {
                Ok(())
            } else {
                Err(format!(
                    "{peer}'s pod CIDR {cidr} is not among its allowed IPs on {on_name}:\n{specs}"
                ))
            }
        });
    }
    run("cli", &w2, &["--fetch", &format!("{srv_ip}:8080")]);
    eventually(Duration::from_secs(120), Duration::from_secs(2), || {
        let phase = kubectl(
            &ns,
            &kc,
            &["get", "pod", "cli", "-o", "jsonpath={.status.phase}"],
        )?;
        if phase == "Succeeded" {
            Ok(())
        } else {
            Err(format!(
                "cli: {phase}\n{}",
                kubectl(&ns, &kc, &["logs", "cli"]).unwrap_or_default()
            ))
        }
    });
    let got = kubectl(&ns, &kc, &["logs", "cli"]).unwrap();
    assert!(got.contains("says: hello from srv"), "{got}");

    // Services and cluster DNS: kube-proxy runs on every node, CoreDNS (applied by the control
    // planes from the image every node imported) has its two replicas ready, and a pod on the
    // other worker reaches srv through a ClusterIP Service by its DNS name.
    for node in [&cp1, &cp2, &w1_addr, &w2_addr] {
        eventually(Duration::from_secs(120), Duration::from_secs(2), || {
            let s = ok(clusters, &["--osconfig", oc, "-n", node, "services"]);
            if s.lines().any(|l| {
                l.starts_with("kube-proxy ") && l.contains("running") && l.contains("healthy")
            }) {
                Ok(())
            } else {
                Err(format!(
                    "{node}: kube-proxy is not running and healthy:\n{s}"
                ))
            }
        });
    }
    eventually(Duration::from_secs(240), Duration::from_secs(3), || {
        let ready = kubectl(
            &ns,
            &kc,
            &[
                "-n",
                "kube-system",
                "get",
                "deployment",
                "coredns",
                "-o",
                "jsonpath={.status.readyReplicas}",
            ],
        )?;
        if ready.trim() == "2" {
            Ok(())
        } else {
            Err(format!(
                "CoreDNS has {ready:?} ready replicas:\n{}",
                kubectl(
                    &ns,
                    &kc,
                    &["-n", "kube-system", "get", "pods", "-o", "wide"]
                )
                .unwrap_or_default()
            ))
        }
    });
    kubectl(
        &ns,
        &kc,
        &[
            "expose",
            "pod",
            "srv",
            "--name",
            "web",
            "--port",
            "80",
            "--target-port",
            "8080",
        ],
    )
    .unwrap();
    let cluster_ip = kubectl(
        &ns,
        &kc,
        &["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"],
    )
    .unwrap();
    // In the service subnet, 10.96.0.0/12.
    let ip: std::net::Ipv4Addr = cluster_ip.trim().parse().unwrap();
    assert!(
        ip.octets()[0] == 10 && (96..=111).contains(&ip.octets()[1]),
        "{cluster_ip}"
    );
    let done = |pod: &str| {
        eventually(Duration::from_secs(150), Duration::from_secs(2), || {
            let phase = kubectl(
                &ns,
                &kc,
                &["get", "pod", pod, "-o", "jsonpath={.status.phase}"],
            )?;
            let logs = kubectl(&ns, &kc, &["logs", pod]).unwrap_or_default();
            match phase.as_str() {
                "Succeeded" => Ok(()),
                "Failed" => panic!("{pod} failed:\n{logs}"),
                _ => Err(format!("{pod}: {phase}\n{logs}")),
            }
        });
        kubectl(&ns, &kc, &["logs", pod]).unwrap()
    };
    run("dns", &w2, &["--fetch", "web.default.svc.cluster.local:80"]);
    let got = done("dns");
    assert!(
        got.contains(&format!("is {}", cluster_ip.trim())) && got.contains("says: hello from srv"),
        "{got}"
    );

    // A headless Service's name is the pod's own address.
    kubectl(
        &ns,
        &kc,
        &[
            "expose",
            "pod",
            "srv",
            "--name",
            "direct",
            "--cluster-ip",
            "None",
            "--port",
            "8080",
        ],
    )
    .unwrap();
    run(
        "headless",
        &w2,
        &["--fetch", "direct.default.svc.cluster.local:8080"],
    );
    let got = done("headless");
    assert!(
        got.contains(&format!("is {srv_ip}")) && got.contains("says: hello from srv"),
        "{got}"
    );

    // Storage: a claim on the default StorageClass (local-path) is bound when a pod uses it;
    // what the pod wrote is still there for the next pod after the first is deleted.
    let claim_pod = |pod: &str, args: &[&str]| {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": pod,
                    "image": "basalt.local/hello:v1",
                    "imagePullPolicy": "Never",
                    "args": args,
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
            },
        })
    };
    let claim = serde_json::json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}},
    });
    let apply = |name: &str, v: &serde_json::Value| {
        let f = dir.join(format!("{name}.json"));
        std::fs::write(&f, v.to_string()).unwrap();
        kubectl(&ns, &kc, &["apply", "-f", f.to_str().unwrap()]).unwrap();
    };
    apply("claim", &claim);
    apply(
        "writer",
        &claim_pod("writer", &["--write", "/data/note", "kept across pods"]),
    );
    let got = done("writer");
    assert!(got.contains("wrote /data/note"), "{got}");
    let bound = kubectl(
        &ns,
        &kc,
        &[
            "get",
            "pvc",
            "data",
            "-o",
            "jsonpath={.status.phase} {.spec.storageClassName}",
        ],
    )
    .unwrap();
    assert_eq!(bound.trim(), "Bound local-path", "{bound}");
    kubectl(&ns, &kc, &["delete", "pod", "writer", "--wait=true"]).unwrap();
    apply("reader", &claim_pod("reader", &["--cat", "/data/note"]));
    let got = done("reader");
    assert!(got.contains("/data/note holds: kept across pods"), "{got}");

    // The add-ons' images are not imported at boot: every node serves them from its rootfs
    // (its `local-registry` on loopback) and pulls one where a pod needs it. A pod of
    // CoreDNS's image on a worker, pulled again (`Always`; no registry is reachable from
    // here), prints the version: the worker resolved the name from itself.
    let dns_image = kubectl(
        &ns,
        &kc,
        &[
            "-n",
            "kube-system",
            "get",
            "deployment",
            "coredns",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ],
    )
    .unwrap();
    let dns_image = dns_image.trim();
    apply(
        "dns-version",
        &serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "dns-version"},
            "spec": {
                "nodeName": w2,
                "restartPolicy": "Never",
                "containers": [{
                    "name": "coredns",
                    "image": dns_image,
                    "imagePullPolicy": "Always",
                    "args": ["-version"],
                }],
            },
        }),
    );
    let got = done("dns-version");
    assert!(got.contains("CoreDNS-"), "{got}");
    let served = ok(
        clusters,
        &["--osconfig", oc, "-n", &w2_addr, "logs", "local-registry"],
    );
    assert!(
        served.contains(&format!("{dns_image} resolved to sha256:")),
        "{served}"
    );
    // What each node imported into containerd itself: the pod sandbox everywhere, the
    // add-ons' images on the control planes only (they run there first).
    for (node, control_plane) in [
        (&cp1, true),
        (&cp2, true),
        (&w1_addr, false),
        (&w2_addr, false),
    ] {
        let log = ok(clusters, &["--osconfig", oc, "-n", node, "logs", "init"]);
        let imported: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("images imported into containerd"))
            .collect();
        assert!(
            imported
                .iter()
                .any(|l| l.contains("registry.k8s.io/pause:")),
            "{node}: {imported:#?}"
        );
        assert_eq!(
            imported.iter().any(|l| l.contains(dns_image)),
            control_plane,
            "{node}: {imported:#?}"
        );
    }

    // A NodePort, reached from the host through `--publish` (the forwarder osctl started).
    kubectl(
        &ns,
        &kc,
        &[
            "expose",
            "pod",
            "srv",
            "--name",
            "web-np",
            "--type",
            "NodePort",
            "--port",
            "80",
            "--target-port",
            "8080",
            r#"--overrides={"apiVersion":"v1","spec":{"ports":[{"port":80,"targetPort":8080,"nodePort":30080}]}}"#,
        ],
    )
    .unwrap();
    eventually(Duration::from_secs(60), Duration::from_secs(2), || {
        use std::io::Read as _;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", published))
            .map_err(|e| format!("127.0.0.1:{published}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        if text.contains("hello from srv") {
            Ok(())
        } else {
            Err(format!("127.0.0.1:{published} answered {text:?}"))
        }
    });

    // A pod's hostPort (the CNI chain's portmap, with nftables rules): a pod on worker 1
    // serving on 8080 with hostPort 30555, fetched by a pod on worker 2 at worker 1's address.
    apply(
        "hostport",
        &serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": "hostport" },
            "spec": {
                "nodeName": w1,
                "containers": [{
                    "name": "srv",
                    "image": "basalt.local/hello:v1",
                    "imagePullPolicy": "Never",
                    "args": ["--serve", "8080"],
                    "ports": [{ "containerPort": 8080, "hostPort": 30555 }],
                }],
            },
        }),
    );
    eventually(Duration::from_secs(120), Duration::from_secs(2), || {
        let phase = kubectl(
            &ns,
            &kc,
            &["get", "pod", "hostport", "-o", "jsonpath={.status.phase}"],
        )?;
        if phase == "Running" {
            Ok(())
        } else {
            Err(format!("hostport: {phase}"))
        }
    });
    run("hp-cli", &w2, &["--fetch", &format!("{w1_addr}:30555")]);
    let got = done("hp-cli");
    assert!(got.contains("says: hello from hostport"), "{got}");

    // A user's image — a static server on scratch, built by the host's Docker engine — put on
    // every node by `osctl cluster load`: a Deployment runs it on both workers with no pull (no
    // registry is reachable), and a second load skips every node.
    common::load_and_run_everywhere(clusters, &name, &dir, &ns, &kc, 4, &[&w1, &w2]);

    // A config change the kubelet reads takes effect live, with no reboot: a label on the Node
    // object (patched: the kubelet reads --node-labels only when it registers) and a kubelet
    // argument (it restarts with it). Then the label goes again when the config drops it.
    let worker_yaml = std::fs::read_to_string(dir.join("worker.yaml")).unwrap();
    let up_before = uptime(clusters, oc, &w2_addr);
    let asked = std::time::Instant::now();
    let changed = worker_yaml.replacen(
        "type: worker\n",
        "type: worker\nnodeLabels:\n  zone: live\nkubelet:\n  extraArgs:\n    max-pods: \"50\"\n",
        1,
    );
    assert_ne!(
        changed, worker_yaml,
        "worker.yaml has a MachineConfig of type worker"
    );
    let changed_file = dir.join("worker-changed.yaml");
    std::fs::write(&changed_file, &changed).unwrap();
    let apply_on_w2 = |file: &std::path::Path| {
        let said = ok(
            clusters,
            &[
                "--osconfig",
                oc,
                "-n",
                &w2_addr,
                "apply-config",
                "-f",
                file.to_str().unwrap(),
            ],
        );
        assert!(said.contains("applied live"), "{said}");
    };
    apply_on_w2(&changed_file);
    eventually(Duration::from_secs(180), Duration::from_secs(3), || {
        let got = kubectl(
            &ns,
            &kc,
            &[
                "get",
                "node",
                &w2,
                "-o",
                "jsonpath={.metadata.labels.zone} {.status.capacity.pods}",
            ],
        )?;
        if got.trim() == "live 50" {
            Ok(())
        } else {
            Err(format!(
                "{w2}: zone label and pod capacity are {got:?}, not \"live 50\""
            ))
        }
    });
    apply_on_w2(&dir.join("worker.yaml"));
    eventually(Duration::from_secs(180), Duration::from_secs(3), || {
        let labels = kubectl(
            &ns,
            &kc,
            &["get", "node", &w2, "-o", "jsonpath={.metadata.labels}"],
        )?;
        if labels.contains("\"zone\"") {
            Err(format!("{w2} still has the dropped label: {labels}"))
        } else {
            Ok(())
        }
    });
    // proxy.disabled, live: kube-proxy stops and its rules (its nftables tables) go at once,
    // not at the next reboot; enabled again, they come back.
    let no_proxy = worker_yaml.replacen(
        "kind: ClusterConfig\n",
        "kind: ClusterConfig\nproxy:\n  disabled: true\n",
        1,
    );
    assert_ne!(no_proxy, worker_yaml, "worker.yaml has a ClusterConfig");
    let no_proxy_file = dir.join("worker-no-proxy.yaml");
    std::fs::write(&no_proxy_file, &no_proxy).unwrap();
    let w2_pid = common::docker_out(&["inspect", "--format", "{{.State.Pid}}", &w2]);
    let kube_proxy_tables = || {
        let o = Command::new("nsenter")
            .args(["-t", w2_pid.trim(), "-n", "nft", "list", "tables"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .matches("kube-proxy")
            .count()
    };
    assert!(kube_proxy_tables() > 0, "no kube-proxy table on {w2}");
    apply_on_w2(&no_proxy_file);
    eventually(Duration::from_secs(120), Duration::from_secs(2), || {
        let n = kube_proxy_tables();
        let svc = ok(clusters, &["--osconfig", oc, "-n", &w2_addr, "services"]);
        let proxy = svc
            .lines()
            .find(|l| l.starts_with("kube-proxy"))
            .unwrap_or("");
        if n == 0 && !proxy.contains("running") {
            Ok(())
        } else {
            Err(format!("{w2}: {n} kube-proxy tables left; {proxy}"))
        }
    });
    apply_on_w2(&dir.join("worker.yaml"));
    eventually(Duration::from_secs(120), Duration::from_secs(2), || {
        if kube_proxy_tables() > 0 {
            Ok(())
        } else {
            Err(format!("{w2}: kube-proxy's tables did not come back"))
        }
    });

    // No reboot on the way: worker 2's PID 1 kept running all along (the uptime is read
    // with a precision of seconds, hence the slack).
    let up_after = uptime(clusters, oc, &w2_addr);
    assert!(
        up_after + 2 >= up_before + asked.elapsed().as_secs(),
        "worker 2 rebooted: uptime {up_before} s, then {up_after} s"
    );

    // Merging a second time replaces the entries instead of adding more.
    common::kubeconfig(clusters, oc, &cp2, &kc);
    let contexts = kubectl(&ns, &kc, &["config", "get-contexts", "-o", "name"]).unwrap();
    assert_eq!(contexts.trim(), format!("admin@{name}"));

    // A snapshot of etcd is a bbolt database (its meta page's magic, 0xED0CDAED).
    let snap = dir.join("etcd.snapshot");
    ok(
        clusters,
        &[
            "--osconfig",
            oc,
            "-n",
            &cp2,
            "etcd",
            "snapshot",
            snap.to_str().unwrap(),
        ],
    );
    let db = std::fs::read(&snap).unwrap();
    assert!(db.len() > 16 * 1024, "{} bytes", db.len());
    assert_eq!(
        &db[16..20],
        &0xED0C_DAEDu32.to_le_bytes(),
        "not a bbolt file"
    );
    // etcd's own tool accepts it: a hash, a revision and keys.
    let st = Command::new(stack_path("etcdutl"))
        .args(["snapshot", "status", "-w", "json"])
        .arg(&snap)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "etcdutl snapshot status: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(st["revision"].as_u64().unwrap_or(0) > 1, "{st}");
    assert!(st["totalKey"].as_u64().unwrap_or(0) > 10, "{st}");

    // Faults: each service of a control plane killed (SIGKILL, as a crash would) is restarted
    // by the supervisor, nothing is lost, and the cluster is healthy again.
    let service = |svc: &str| -> Result<(String, u64), String> {
        let out = osctl(
            clusters,
            &["--osconfig", oc, "-n", &cp1, "services", "-o", "json"],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        for v in serde_json::Deserializer::from_str(&text).into_iter::<serde_json::Value>() {
            let v = v.map_err(|e| format!("{e}: {text}"))?;
            for s in v["services"].as_array().into_iter().flatten() {
                if s["id"] == svc {
                    return Ok((
                        s["state"].as_str().unwrap_or_default().to_string(),
                        s["restarts"].as_u64().unwrap_or(0),
                    ));
                }
            }
        }
        Err(format!("no service {svc} in {text}"))
    };
    for svc in ["containerd", "etcd", "kube-apiserver", "kubelet", "apid"] {
        let (_, before) = service(svc).unwrap();
        let killed = std::time::Instant::now();
        // apid's own answer may be cut short by its death.
        let _ = osctl(
            clusters,
            &["--osconfig", oc, "-n", &cp1, "service", svc, "kill"],
        );
        eventually(
            Duration::from_secs(180),
            Duration::from_secs(2),
            || match service(svc)? {
                (state, n) if state == "running" && n > before => Ok(()),
                (state, n) => Err(format!("{svc}: {state}, {n} restarts (was {before})")),
            },
        );
        eventually(Duration::from_secs(300), Duration::from_secs(3), || {
            let h = osctl(clusters, &["--osconfig", oc, "-n", &cp1, "health"]);
            let text = String::from_utf8_lossy(&h.stdout).into_owned();
            if h.status.success() && text.contains("4 of 4 Ready") && !text.contains("FAIL") {
                Ok(())
            } else {
                Err(format!(
                    "after killing {svc}: {text}{}",
                    String::from_utf8_lossy(&h.stderr)
                ))
            }
        });
        eprintln!(
            "fault: {svc} killed: running again and the cluster healthy after {:.0} s",
            killed.elapsed().as_secs_f64()
        );
    }
    // Nothing lost: what the cluster held before is there (CoreDNS's Deployment, the kubelet's
    // Node objects, etcd's keys).
    let nodes = kubectl(&ns, &kc, &["get", "nodes", "-o", "name"]).unwrap();
    assert_eq!(nodes.lines().count(), 4, "{nodes}");
    kubectl(
        &ns,
        &kc,
        &["-n", "kube-system", "get", "deployment", "coredns"],
    )
    .unwrap();

    // A graceful reset drains the node first (issue 22): worker 1 is cordoned and its pods are
    // evicted through the Eviction API — a 2-replica Deployment, one replica per worker, with a
    // PodDisruptionBudget of minAvailable 1, and the bare pod `srv` — so their objects are gone
    // before it goes down (a reset without a drain leaves them bound to the node). With
    // EPHEMERAL alone wiped it comes back configured; once its Node is Ready it uncordons
    // itself, and only then can the evicted replica (it may not share a node) run there again.
    let spread = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "spread"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "spread"}},
            "template": {
                "metadata": {"labels": {"app": "spread"}},
                "spec": {
                    "containers": [{
                        "name": "web",
                        "image": "basalt.local/hello:v1",
                        "imagePullPolicy": "Never",
                        "args": ["--serve", "8080"],
                    }],
                    "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                        {"labelSelector": {"matchLabels": {"app": "spread"}},
                         "topologyKey": "kubernetes.io/hostname"}]}},
                },
            },
        },
    });
    let budget = serde_json::json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "spread"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "spread"}}},
    });
    for (file, v) in [("spread", &spread), ("budget", &budget)] {
        let f = dir.join(format!("{file}.json"));
        std::fs::write(&f, v.to_string()).unwrap();
        kubectl(&ns, &kc, &["apply", "-f", f.to_str().unwrap()]).unwrap();
    }
    let placed = || -> Result<Vec<(String, String)>, String> {
        let out = kubectl(
            &ns,
            &kc,
            &[
                "get",
                "pods",
                "-l",
                "app=spread",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.phase}{\"\\n\"}{end}",
            ],
        )?;
        let running: Vec<(String, String)> = out
            .lines()
            .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
                [pod, node, "Running"] => Some((pod.to_string(), node.to_string())),
                _ => None,
            })
            .collect();
        let on = |n: &str| running.iter().any(|(_, node)| node == n);
        if running.len() == 2 && on(&w1) && on(&w2) {
            Ok(running)
        } else {
            Err(format!(
                "spread: not one running replica per worker:\n{out}"
            ))
        }
    };
    let mut before = Vec::new();
    eventually(Duration::from_secs(180), Duration::from_secs(2), || {
        before = placed()?;
        Ok::<_, String>(())
    });
    let on_w1 = before.iter().find(|(_, n)| *n == w1).unwrap().0.clone();
    let out = ok(
        clusters,
        &[
            "--osconfig",
            oc,
            "-n",
            &w1_addr,
            "reset",
            "--graceful",
            "--wipe",
            "EPHEMERAL",
        ],
    );
    assert!(out.contains("reset sequence started"), "{out}");
    eventually(Duration::from_secs(300), Duration::from_secs(2), || {
        let pods = kubectl(&ns, &kc, &["get", "pods", "-o", "name"])?;
        if pods
            .lines()
            .any(|l| l == format!("pod/{on_w1}") || l == "pod/srv")
        {
            Err(format!("not evicted yet:\n{pods}"))
        } else {
            Ok(())
        }
    });
    eventually(Duration::from_secs(300), Duration::from_secs(3), || {
        let node = kubectl(&ns, &kc, &["get", "node", &w1, "-o", "json"])?;
        let node: serde_json::Value = serde_json::from_str(&node).map_err(|e| e.to_string())?;
        let ready = node["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let cordoned = node["spec"]["unschedulable"] == true;
        let marked =
            node["metadata"]["annotations"]["node.basalt.dev/cordoned-by-boot"].is_string();
        if ready && !cordoned && !marked {
            Ok(())
        } else {
            Err(format!(
                "{w1}: Ready {ready}, cordoned {cordoned}, marked {marked}"
            ))
        }
    });
    eventually(Duration::from_secs(180), Duration::from_secs(2), || {
        let after = placed()?;
        if after.iter().any(|(pod, _)| *pod == on_w1) {
            return Err(format!("{on_w1} is back: it was not evicted"));
        }
        Ok(())
    });
    eventually(Duration::from_secs(300), Duration::from_secs(3), || {
        let h = osctl(clusters, &["--osconfig", oc, "-n", &cp1, "health"]);
        let text = String::from_utf8_lossy(&h.stdout).into_owned();
        if h.status.success() && text.contains("4 of 4 Ready") {
            Ok(())
        } else {
            Err(format!("after the reset of {w1}: {text}"))
        }
    });

    // The second control plane leaves etcd: one member remains and the API still answers.
    let left = ok(clusters, &["--osconfig", oc, "-n", &cp2, "etcd", "leave"]);
    assert!(left.contains("left etcd"), "{left}");
    let m = ok(clusters, &["--osconfig", oc, "-n", &cp1, "etcd", "members"]);
    assert!(!m.contains(&format!("{name}-controlplane-2")), "{m}");
    eventually(Duration::from_secs(60), Duration::from_secs(2), || {
        kubectl(&ns, &kc, &["get", "--raw", "/readyz"]).map(drop)
    });
    // The only member may not leave.
    let last = osctl(clusters, &["--osconfig", oc, "-n", &cp1, "etcd", "leave"]);
    assert!(
        String::from_utf8_lossy(&last.stderr).contains("only member"),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );

    drop(guard);
    assert!(!dir.exists(), "the cluster's directory is left");
}
