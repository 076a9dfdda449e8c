//! What the cluster-tier tests share: running osctl against a clusters directory, destroying
//! a cluster when a test ends, polling, Docker.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// Where the tests' clusters live: under the target directory, so the images are built once
/// and reused by later runs.
pub fn clusters_root() -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("clusters");
    std::fs::create_dir_all(&root).unwrap();
    root
}

pub fn osctl(clusters: &Path, args: &[&str]) -> Output {
    osctl_with(clusters, &[], args)
}

/// [`osctl`] with more environment (after [`basalt_testkit::hermetic`]'s).
pub fn osctl_with(clusters: &Path, env: &[(&str, &Path)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_osctl"));
    basalt_testkit::hermetic(&mut cmd)
        .env("BASALT_CLUSTERS", clusters)
        .envs(env.iter().copied())
        .args(args);
    cmd.output().unwrap()
}

pub fn ok(clusters: &Path, args: &[&str]) -> String {
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

/// Destroys the cluster when the test ends, passed or not: (clusters, name, provisioner).
pub struct Destroy<'a>(pub &'a Path, pub &'a str, pub &'a str);

impl Drop for Destroy<'_> {
    fn drop(&mut self) {
        // A failed run keeps the nodes' console logs (destroy removes the cluster's directory).
        if std::thread::panicking() {
            let keep = self.0.join(format!("failed-{}", self.1));
            let _ = std::fs::create_dir_all(&keep);
            if let Ok(nodes) = std::fs::read_dir(self.0.join(self.1)) {
                for n in nodes.flatten() {
                    let log = n.path().join("console.log");
                    if self.2 == "docker" && n.path().is_dir() {
                        let o = Command::new("docker")
                            .args(["logs", &n.file_name().to_string_lossy()])
                            .output();
                        if let Ok(o) = o {
                            let to = keep.join(format!("{}.log", n.file_name().to_string_lossy()));
                            let _ = std::fs::write(&to, [o.stdout, o.stderr].concat());
                            eprintln!("console log kept: {}", to.display());
                        }
                    } else if log.exists() {
                        let to = keep.join(format!("{}.log", n.file_name().to_string_lossy()));
                        let _ = std::fs::copy(&log, &to);
                        eprintln!("console log kept: {}", to.display());
                    }
                }
            }
            keep_service_logs(self.0, self.1, &keep);
        }
        let _ = osctl(self.0, &["cluster", "destroy", "--name", self.1]);
    }
}

/// The logs of the services that a failed cluster test most often needs (etcd and the control
/// plane on control planes, the kubelet and containerd everywhere), asked of each node through
/// the API while it still runs: `<node>.<service>.log` next to the consoles.
fn keep_service_logs(clusters: &Path, name: &str, keep: &Path) {
    let dir = clusters.join(name);
    let oc = dir.join("osconfig");
    let Ok(state) = std::fs::read(dir.join("state.json")) else {
        return;
    };
    let Ok(state) = serde_json::from_slice::<serde_json::Value>(&state) else {
        return;
    };
    let nodes = state["nodes"].as_array().cloned().unwrap_or_default();
    for n in nodes {
        let (Some(node), Some(addr), Some(role)) = (
            n["name"].as_str(),
            n["address"].as_str(),
            n["role"].as_str(),
        ) else {
            continue;
        };
        let mut services = vec!["kubelet", "containerd"];
        if role.contains("control") {
            services.extend(["etcd", "kube-apiserver", "kube-controller-manager"]);
        }
        for svc in services {
            let o = osctl(
                clusters,
                &[
                    "--osconfig",
                    oc.to_str().unwrap_or_default(),
                    "-n",
                    addr,
                    "logs",
                    svc,
                    "--tail",
                    "400",
                ],
            );
            if o.status.success() && !o.stdout.is_empty() {
                let to = keep.join(format!("{node}.{svc}.log"));
                let _ = std::fs::write(&to, &o.stdout);
                eprintln!("service log kept: {}", to.display());
            }
        }
    }
}

pub fn docker_out(args: &[&str]) -> String {
    let o = Command::new("docker").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[allow(unused_imports)] // not every test binary that includes this module polls
pub use basalt_testkit::eventually;

/// Seconds in an uptime as `osctl version` prints it (`5s`, `1m17s`, `2h3m`).
pub fn uptime_secs(s: &str) -> Option<u64> {
    let mut total = 0;
    let mut n = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            n.push(c);
            continue;
        }
        let v: u64 = n.parse().ok()?;
        n.clear();
        total += v * match c {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
    }
    n.is_empty().then_some(total)
}

/// A node's uptime, from `osctl version` (one node).
pub fn uptime(clusters: &Path, oc: &str, node: &str) -> u64 {
    let text = ok(clusters, &["--osconfig", oc, "-n", node, "version"]);
    version_uptime(&text, |_| true).unwrap_or_else(|| panic!("no uptime in {text}"))
}

/// The UPTIME column of the first row of `osctl version`'s table that `row` accepts.
pub fn version_uptime(text: &str, row: impl Fn(&str) -> bool) -> Option<u64> {
    let column = text
        .lines()
        .find(|l| l.starts_with("TAG"))
        .and_then(|h| h.split_whitespace().position(|c| c == "UPTIME"))?;
    text.lines()
        .skip_while(|l| !l.starts_with("TAG"))
        .skip(1)
        .find(|l| row(l))
        .and_then(|l| l.split_whitespace().nth(column))
        .and_then(uptime_secs)
}

/// A program of the stack (kubectl and etcdutl of the cluster's own versions), built with it.
pub fn stack_path(name: &str) -> PathBuf {
    let stack = basalt_image::stack::ensure(
        basalt_image::stack::ALL,
        &basalt_image::inputs::cache_dir(),
        &|m| eprintln!("{m}"),
    )
    .expect("the stack builds (osctl image stack)");
    stack.path(name).unwrap().to_path_buf()
}

pub fn kubectl_path() -> PathBuf {
    stack_path("kubectl")
}

/// `osctl kubeconfig PATH` on `node` of the cluster whose osconfig is `oc`: the admin
/// kubeconfig written (or merged into) `path`; what osctl said.
pub fn kubeconfig(clusters: &Path, oc: &str, node: &str, path: &Path) -> String {
    ok(
        clusters,
        &[
            "--osconfig",
            oc,
            "-n",
            node,
            "kubeconfig",
            path.to_str().unwrap(),
        ],
    )
}

/// kubectl from inside the cluster's access namespace, as osctl dials (the host's own traffic
/// to the segment may be filtered, as it is in CI).
pub fn kubectl(netns: &str, kubeconfig: &std::path::Path, args: &[&str]) -> Result<String, String> {
    let o = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(kubectl_path())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .map_err(|e| format!("kubectl: {e}"))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!(
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

/// Builds `tag` with the host's Docker engine: the static `hello` the image build compiles
/// (cluster create built it) on `scratch` — a user's image, made with no base image and no
/// registry. The image is removed from the engine when the guard drops.
pub fn scratch_image(tag: &str) -> DockerImage {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/basalt-init/x86_64-unknown-linux-gnu/release/hello"),
        ctx.path().join("hello"),
    )
    .unwrap();
    let mut built = docker_build(
        ctx.path(),
        &[tag],
        "FROM scratch\nCOPY hello /hello\nENTRYPOINT [\"/hello\"]\n",
    );
    built.pop().unwrap()
}

/// Builds `tags[0]` from the context `ctx` with `dockerfile` on the host's Docker engine, and
/// tags the rest the same; each is removed from the engine when its guard drops.
pub fn docker_build(ctx: &Path, tags: &[&str], dockerfile: &str) -> Vec<DockerImage> {
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    let o = Command::new("docker")
        .args(["build", "--quiet", "-t", tags[0]])
        .arg(ctx)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "docker build {}: {}",
        tags[0],
        String::from_utf8_lossy(&o.stderr)
    );
    for tag in &tags[1..] {
        let o = Command::new("docker")
            .args(["tag", tags[0], tag])
            .output()
            .unwrap();
        assert!(o.status.success(), "docker tag {tag}");
    }
    tags.iter().map(|t| DockerImage(t.to_string())).collect()
}

/// Removes an image from the host's Docker engine when dropped.
pub struct DockerImage(pub String);

impl Drop for DockerImage {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rmi", "--force", &self.0])
            .output();
    }
}

/// A user's image — the static `hello` server on scratch, built by the host's Docker engine —
/// put on every one of the cluster's `nodes` by `osctl cluster load` (a second load skips every
/// node), then run by a Deployment with one replica on each of `workers` (spread by hostname)
/// with no pull: every pod's events say the image was already present, none says Pulling.
pub fn load_and_run_everywhere(
    clusters: &Path,
    name: &str,
    dir: &Path,
    ns: &str,
    kc: &Path,
    nodes: usize,
    workers: &[&str],
) {
    let tag = format!("basalt-e2e/served:{name}");
    let image = scratch_image(&tag);
    let loaded = ok(clusters, &["cluster", "load", "--name", name, &tag]);
    assert_eq!(loaded.matches(" created").count(), nodes, "{loaded}");
    let again = ok(clusters, &["cluster", "load", "--name", name, &tag]);
    drop(image);
    assert_eq!(
        again.matches("skipped: the node has it").count(),
        nodes,
        "{again}"
    );
    let manifest = dir.join("served.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: served
spec:
  replicas: {}
  selector:
    matchLabels: {{app: served}}
  template:
    metadata:
      labels: {{app: served}}
    spec:
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: DoNotSchedule
          labelSelector:
            matchLabels: {{app: served}}
      containers:
        - name: served
          image: {tag}
          args: ["--serve", "8080"]
"#,
            workers.len()
        ),
    )
    .unwrap();
    kubectl(ns, kc, &["apply", "-f", manifest.to_str().unwrap()]).unwrap();
    let mut want: Vec<&str> = workers.to_vec();
    want.sort_unstable();
    eventually(Duration::from_secs(300), Duration::from_secs(2), || {
        let pods = kubectl(
            ns,
            kc,
            &[
                "get",
                "pods",
                "-l",
                "app=served",
                "-o",
                r#"jsonpath={range .items[*]}{.spec.nodeName} {.status.phase}{"\n"}{end}"#,
            ],
        )?;
        let mut running: Vec<&str> = pods
            .lines()
            .filter(|l| l.ends_with(" Running"))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        running.sort_unstable();
        if running == want {
            Ok(())
        } else {
            Err(format!(
                "served is not running on every worker ({want:?}):\n{pods}\n{}",
                kubectl(ns, kc, &["describe", "pods", "-l", "app=served"]).unwrap_or_default()
            ))
        }
    });
    let events = kubectl(
        ns,
        kc,
        &[
            "get",
            "events",
            "-o",
            r#"jsonpath={range .items[*]}{.involvedObject.name} {.reason} {.message}{"\n"}{end}"#,
        ],
    )
    .unwrap();
    let served: Vec<&str> = events
        .lines()
        .filter(|l| l.starts_with("served-"))
        .collect();
    assert!(
        served
            .iter()
            .filter(|l| l.contains("already present on machine"))
            .count()
            >= workers.len()
            && !served.iter().any(|l| l.contains(" Pulling ")),
        "{events}"
    );
}
