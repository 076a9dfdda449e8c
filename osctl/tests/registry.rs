//! Registries (cluster tier, root, Docker, Kubernetes): `cluster create --registry` runs
//! Debian's docker-registry for the cluster; an image pushed to it from the host with `docker
//! push localhost:PORT/...` runs as a pod (the registry's log shows the node's pull), and
//! `osctl image pull` pulls it too. Then registries the test runs itself on the same storage:
//! one that wants a password (htpasswd) is pulled from with a `RegistryAuthConfig` — and a
//! wrong password fails the pod's pull with the registry's reason in `kubectl describe` — and
//! one with a certificate from a private CA is pulled from with a `RegistryTLSConfig`. Each
//! config change is applied live.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use basalt_testkit::{Tier, free_port, tier};

mod common;
use common::{Destroy, eventually, kubectl, ok};

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A docker-registry the test runs (killed when dropped), serving `storage`.
struct Registry {
    child: Child,
    log: PathBuf,
}

impl Registry {
    fn start(dir: &Path, name: &str, storage: &Path, port: u16, extra: &str) -> Registry {
        let cfg = dir.join(format!("{name}.yml"));
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 0.0.0.0:{port}\n{extra}",
                storage.display()
            ),
        )
        .unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).unwrap())
            .spawn()
            .expect("docker-registry (apt-get install docker-registry)");
        eventually(Duration::from_secs(30), Duration::from_millis(200), || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .map(|_| ())
                .map_err(|e| format!("{name} on {port}: {e}"))
        });
        Registry { child, log }
    }

    fn log(&self) -> String {
        let mut s = std::fs::read_to_string(&self.log).unwrap_or_default();
        s.push_str(&std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default());
        s
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn pods_pull_through_the_clusters_registry_with_auth_and_tls() {
    if !tier(
        Tier::Cluster,
        "pods_pull_through_the_clusters_registry_with_auth_and_tls",
    ) {
        return;
    }
    let root = common::clusters_root();
    let clusters = root.as_path();
    let name = format!("r{}", std::process::id() % 100_000);
    let _guard = Destroy(clusters, &name, "docker");
    let net = "10.240.0";
    let host = format!("{net}.1");
    let port = free_port();
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
            "1",
            "--workers",
            "1",
            "--cidr",
            &format!("{net}.0/24"),
            "--kubernetes",
            "--registry",
            &port.to_string(),
        ],
    );
    assert!(out.contains(&format!("registry on port {port}")), "{out}");
    let dir = clusters.join(&name);
    let oc_path = dir.join("osconfig");
    let oc = oc_path.to_str().unwrap();
    let worker = format!("{net}.3");
    let kc = dir.join("kubeconfig");
    common::kubeconfig(clusters, oc, &format!("{net}.2"), &kc);
    let ns = format!("basalt-{name}");
    let k = |args: &[&str]| kubectl(&ns, &kc, args);

    // An image built on the host and pushed to the cluster's registry.
    let ctx = tempfile::tempdir().unwrap();
    let image = |tag: &str| format!("localhost:{port}/web:{tag}");
    for tag in ["v1", "v2"] {
        let _built = common::scratch_image(&image(tag));
        run(Command::new("docker").args(["push", &image(tag)]));
    }
    let pod_runs = |pod: &str, img: &str| {
        k(&[
            "run",
            pod,
            &format!("--image={img}"),
            "--restart=Never",
            "--",
            "--serve",
            "8080",
        ])
        .unwrap();
        eventually(Duration::from_secs(120), Duration::from_secs(2), || {
            let phase = k(&["get", "pod", pod, "-o", "jsonpath={.status.phase}"])?;
            if phase == "Running" {
                Ok(())
            } else {
                Err(format!(
                    "{pod} is {phase:?}:\n{}",
                    k(&["describe", "pod", pod]).unwrap_or_default()
                ))
            }
        });
    };
    pod_runs("pushed", &image("v1"));
    let log = std::fs::read_to_string(dir.join("registry.log")).unwrap();
    assert!(
        log.lines().any(|l| l.contains("/v2/web/manifests/v1")
            && l.contains(&worker)
            && l.contains("containerd/")),
        "the registry saw no pull:\n{log}"
    );
    let pulled = ok(
        clusters,
        &[
            "--osconfig",
            oc,
            "-n",
            &worker,
            "image",
            "pull",
            &image("v2"),
        ],
    );
    assert!(pulled.contains("pulled"), "{pulled}");

    // The same images from a registry that wants a password, and from one with a certificate
    // from a private CA: registries of the test's own on the cluster registry's storage.
    let storage = dir.join("registry");
    let auth_port = free_port();
    let htpasswd = ctx.path().join("htpasswd");
    let line = run(Command::new("htpasswd").args(["-Bbn", "basalt", "s3cret"]));
    std::fs::write(&htpasswd, line).unwrap();
    let authed = Registry::start(
        ctx.path(),
        "authed",
        &storage,
        auth_port,
        &format!(
            "auth:\n  htpasswd:\n    realm: basalt\n    path: {}\n",
            htpasswd.display()
        ),
    );
    let tls_port = free_port();
    let pki = ctx.path();
    let openssl = |args: &[&str]| run(Command::new("openssl").current_dir(pki).args(args));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=basalt test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
        "-subj",
        "/CN=registry",
    ]);
    std::fs::write(pki.join("san.ext"), format!("subjectAltName=IP:{host}\n")).unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "tls.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    let _tls = Registry::start(
        ctx.path(),
        "tls",
        &storage,
        tls_port,
        &format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            pki.join("tls.crt").display(),
            pki.join("tls.key").display()
        ),
    );
    let ca: String = std::fs::read_to_string(pki.join("ca.crt"))
        .unwrap()
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect();
    let worker_yaml = std::fs::read_to_string(dir.join("worker.yaml")).unwrap();
    let apply = |password: &str| {
        let docs = format!(
            "{}\n---\napiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: {host}:{auth_port}\nskipFallback: true\nendpoints:\n  - url: http://{host}:{auth_port}\n---\napiVersion: v1alpha1\nkind: RegistryAuthConfig\nname: {host}:{auth_port}\nusername: basalt\npassword: {password}\n---\napiVersion: v1alpha1\nkind: RegistryTLSConfig\nname: {host}:{tls_port}\nca: |\n{ca}",
            worker_yaml.trim_end()
        );
        let file = ctx.path().join("worker-registries.yaml");
        std::fs::write(&file, docs).unwrap();
        let said = ok(
            clusters,
            &[
                "--osconfig",
                oc,
                "-n",
                &worker,
                "apply-config",
                "-f",
                file.to_str().unwrap(),
            ],
        );
        assert!(said.contains("applied live"), "{said}");
    };
    apply("s3cret");
    pod_runs("authed", &format!("{host}:{auth_port}/web:v1"));
    assert!(
        authed.log().contains("basalt"),
        "the registry saw no authenticated pull:\n{}",
        authed.log()
    );
    pod_runs("tls", &format!("{host}:{tls_port}/web:v1"));

    // A wrong password: containerd restarts with it, and the pull fails with the registry's
    // answer where the user looks.
    apply("wrong");
    k(&[
        "run",
        "denied",
        &format!("--image={host}:{auth_port}/web:v2"),
        "--restart=Never",
    ])
    .unwrap();
    eventually(Duration::from_secs(120), Duration::from_secs(2), || {
        let d = k(&["describe", "pod", "denied"])?;
        if d.contains("401 Unauthorized") || d.contains("authorization failed") {
            Ok(())
        } else {
            Err(format!("no refusal in:\n{d}"))
        }
    });
}
