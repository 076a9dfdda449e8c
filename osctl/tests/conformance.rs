//! Kubernetes' own e2e tests (cluster tier, root, Docker): `e2e.test`, built from the same
//! `k8s.io/kubernetes` release as the cluster (the stack's `kubernetes-e2e` component, cached
//! like the rest of the stack), run against a local cluster of one control plane and two
//! workers. No registry is reachable, so the test image the chosen tests need — agnhost, under
//! the name e2e.test asks for — is built here (agnhost from the same module, Debian's static
//! bash and busybox for the shell and tools the tests exec) and put on every node with `osctl
//! cluster load`; the pod sandbox image is the one every node imports at boot.
//!
//! The tests: the three the reference system runs on every change. `BASALT_E2E_FOCUS` and
//! `BASALT_E2E_SKIP` (regexes of test names) choose others; docs/kubernetes.md has the command
//! for the whole non-serial conformance set.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use basalt_testkit::{Tier, tier};

mod common;
use common::{Destroy, ok};

/// A program of the e2e stack (e2e.test, agnhost, kubectl), built into the cache if needed.
fn e2e_path(name: &str) -> std::path::PathBuf {
    let stack = basalt_image::stack::ensure(
        basalt_image::stack::E2E,
        &basalt_image::inputs::cache_dir(),
        &|m| eprintln!("{m}"),
    )
    .expect("the e2e suite builds (stack component kubernetes-e2e)");
    stack.path(name).unwrap().to_path_buf()
}

/// The tests the reference system runs on every change.
const SMOKE: &str = r"\[sig-node\] Pods should be submitted and removed|\[sig-network\] Services should serve a basic endpoint from pods|\[sig-network\] Services should be able to change the type from ExternalName to ClusterIP";

/// agnhost under the name e2e.test of this release asks for (test/utils/image/manifest.go).
const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.66.1";

/// `nc` as the e2e suite calls it (`nc -v -t -w 2 HOST PORT`, OpenBSD's flags), on busybox's
/// nc, which has no `-v` (verbose) or `-t` (telnet negotiation): both only change what goes to
/// standard error or to a telnet peer, so they are dropped. UDP (`-u`) it cannot do, and says so.
const NC: &str = r#"#!/bin/sh
args=()
for a in "$@"; do
  case "$a" in
    -v|-t) ;;
    -u) echo "nc: no UDP in this image (busybox nc)" >&2; exit 2 ;;
    *) args+=("$a") ;;
  esac
done
exec /bin/busybox nc "${args[@]}"
"#;

/// Builds the agnhost image with the host's Docker engine: `/agnhost` (its entrypoint, as
/// upstream's), bash as the shell the tests exec into (Debian's static build), the usual
/// tools from Debian's static busybox, and the `nc` above. Upstream's is Alpine with these
/// tools installed; none of this comes from a registry.
fn agnhost_image(dir: &Path) -> common::DockerImage {
    let pins = basalt_image::inputs::lock().unwrap();
    let cache = basalt_image::inputs::cache_dir();
    let root = |package: &str| {
        let pin = basalt_image::inputs::find(&pins, package).unwrap();
        basalt_image::inputs::extract(pin, &cache).unwrap()
    };
    let (busybox, bash) = (root("busybox-static"), root("bash-static"));
    let ctx = dir.join("agnhost-image");
    let bin = ctx.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(ctx.join("usr/bin")).unwrap();
    std::fs::copy(e2e_path("agnhost"), ctx.join("agnhost")).unwrap();
    std::fs::copy(busybox.join("bin/busybox"), bin.join("busybox")).unwrap();
    std::fs::copy(bash.join("bin/bash-static"), bin.join("bash")).unwrap();
    std::os::unix::fs::symlink("bash", bin.join("sh")).unwrap();
    for applet in [
        "cat", "echo", "ls", "sleep", "test", "true", "false", "hostname", "ip", "wget", "grep",
        "sed", "awk", "head", "tail", "wc", "mkdir", "rm", "touch", "date", "env", "ps",
    ] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    let nc = ctx.join("usr/bin/nc");
    std::fs::write(&nc, NC).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&nc, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY . /\nENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nENTRYPOINT [\"/agnhost\"]\nCMD [\"pause\"]\n",
    )
    .unwrap();
    let o = Command::new("docker")
        .args(["build", "--quiet", "-t", AGNHOST])
        .arg(&ctx)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "docker build agnhost: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    common::DockerImage(AGNHOST.into())
}

#[test]
fn kubernetes_own_e2e_tests_pass() {
    if !tier(Tier::Cluster, "kubernetes_own_e2e_tests_pass") {
        return;
    }
    // The suite first: built once into the cache (minutes from cold), then reused.
    let e2e = e2e_path("e2e.test");
    let kubectl = e2e_path("kubectl");
    let root = common::clusters_root();
    let clusters = root.as_path();
    let name = format!("c{}", std::process::id() % 100_000);
    let _guard = Destroy(clusters, &name, "docker");
    let net = "10.241.0";
    ok(
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
            "2",
            "--cidr",
            &format!("{net}.0/24"),
            "--kubernetes",
        ],
    );
    let dir = clusters.join(&name);
    let oc = dir.join("osconfig");
    let kc = dir.join("kubeconfig");
    common::kubeconfig(clusters, oc.to_str().unwrap(), &format!("{net}.2"), &kc);
    let _agnhost = agnhost_image(&dir);
    ok(clusters, &["cluster", "load", "--name", &name, AGNHOST]);

    let focus = std::env::var("BASALT_E2E_FOCUS").unwrap_or_else(|_| SMOKE.to_string());
    let skip = std::env::var("BASALT_E2E_SKIP").unwrap_or_default();
    let report = dir.join("e2e");
    std::fs::create_dir_all(&report).unwrap();
    let started = std::time::Instant::now();
    let o = Command::new("ip")
        .args(["netns", "exec", &format!("basalt-{name}")])
        .arg(&e2e)
        .arg(format!("--kubeconfig={}", kc.display()))
        .arg(format!("--kubectl-path={}", kubectl.display()))
        .arg(format!("--ginkgo.focus={focus}"))
        .args((!skip.is_empty()).then(|| format!("--ginkgo.skip={skip}")))
        .arg("--ginkgo.no-color")
        .arg("--ginkgo.timeout=40m")
        .arg(format!("--report-dir={}", report.display()))
        .current_dir(&dir)
        .env("KUBECONFIG", &kc)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("e2e.test ran {:?}", started.elapsed());
    let summary: Vec<&str> = out
        .lines()
        .filter(|l| {
            l.starts_with("Ran ")
                || l.contains("Passed")
                || l.starts_with("SUCCESS")
                || l.starts_with("FAIL")
        })
        .collect();
    eprintln!("{}", summary.join("\n"));
    assert!(
        o.status.success() && out.contains("SUCCESS!"),
        "e2e.test failed ({}):\n{}\n{}",
        o.status,
        out.lines()
            .rev()
            .take(200)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n"),
        err.lines()
            .rev()
            .take(50)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n"),
    );
    if focus == SMOKE {
        assert!(
            out.contains("Ran 3 of "),
            "not the three tests asked for:\n{}",
            summary.join("\n")
        );
    }
}
