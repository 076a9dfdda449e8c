//! Kubernetes' own e2e tests (cluster tier, root, Docker): `e2e.test`, built from the same
//! `k8s.io/kubernetes` release as the cluster (the stack's `kubernetes-e2e` component, cached
//! like the rest of the stack), run against a local cluster of one control plane and two
//! workers. No registry is reachable, so the test images the chosen tests need — agnhost and
//! glibc-dns-testing, under the names e2e.test asks for — are built here (agnhost from the same
//! module; Debian's static bash and busybox for the shell and tools the tests exec; Debian's
//! `dig` and `getent` from pinned packages for the DNS probes) and put on every node with
//! `osctl cluster load`; the pod sandbox image is the one every node imports at boot.
//!
//! The tests: the three the reference system runs on every change and the `[sig-network] DNS`
//! `[Conformance]` tests. `BASALT_E2E_FOCUS` and `BASALT_E2E_SKIP` (regexes of test names)
//! choose others; docs/kubernetes.md has the command for the whole non-serial conformance set.

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

/// The tests the reference system runs on every change, and the `[sig-network] DNS`
/// `[Conformance]` tests (8 in this release).
const SMOKE: &str = r"\[sig-node\] Pods should be submitted and removed|\[sig-network\] Services should serve a basic endpoint from pods|\[sig-network\] Services should be able to change the type from ExternalName to ClusterIP|\[sig-network\] DNS should .*\[Conformance\]";

/// How many tests [`SMOKE`] selects in this release.
const SMOKE_TESTS: usize = 11;

/// agnhost under the name e2e.test of this release asks for (test/utils/image/manifest.go).
const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.66.1";

/// The DNS tests' second prober image, under the name e2e.test asks for.
const GLIBC_DNS: &str = "registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1";

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

/// The pinned packages (image/inputs.lock) `dig` and `getent` take their libraries from.
const DNS_LIBRARIES: &[&str] = &[
    "libc6",
    "bind9-libs",
    "libjemalloc2",
    "libidn2-0",
    "libunistring2",
    "libssl3",
    "libfstrm0",
    "libgssapi-krb5-2",
    "libkrb5-3",
    "libk5crypto3",
    "libkrb5support0",
    "libkeyutils1",
    "libcom-err2",
    "libjson-c5",
    "liblmdb0",
    "libmaxminddb0",
    "libnghttp2-14",
    "libprotobuf-c1",
    "libuv1",
    "libxml2",
    "libicu72",
    "libstdc++6",
    "libgcc-s1",
    "liblzma5",
    "zlib1g",
    "libedit2",
    "libtinfo6",
    "libbsd0",
    "libmd0",
];

/// Writes an executable file into an image context.
fn put(ctx: &Path, rel: &str, data: &[u8]) {
    use std::os::unix::fs::PermissionsExt as _;
    let path = ctx.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, data).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The shell and tools the suite's probe scripts run: Debian's static bash as `/bin/sh`
/// (busybox's own shell runs its applets before anything on the PATH), the usual tools from
/// Debian's static busybox, the `nc` above, and `dig` (Debian's bind9-dnsutils) and `getent`
/// (libc-bin) with their library closure from pinned packages (`DT_NEEDED`, as the node
/// image's programs).
fn tools(ctx: &Path) {
    let pins = basalt_image::inputs::lock().unwrap();
    let cache = basalt_image::inputs::cache_dir();
    let root = |package: &str| {
        let pin = basalt_image::inputs::find(&pins, package).unwrap();
        basalt_image::inputs::extract(pin, &cache).unwrap()
    };
    let (busybox, bash) = (root("busybox-static"), root("bash-static"));
    put(
        ctx,
        "bin/busybox",
        &std::fs::read(busybox.join("bin/busybox")).unwrap(),
    );
    put(
        ctx,
        "bin/bash",
        &std::fs::read(bash.join("bin/bash-static")).unwrap(),
    );
    let bin = ctx.join("bin");
    std::os::unix::fs::symlink("bash", bin.join("sh")).unwrap();
    for applet in [
        "cat", "echo", "ls", "sleep", "seq", "test", "true", "false", "hostname", "ip", "wget",
        "grep", "sed", "awk", "head", "tail", "wc", "mkdir", "rm", "touch", "date", "env", "ps",
    ] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    put(ctx, "usr/bin/nc", NC.as_bytes());
    let programs = [
        ("bind9-dnsutils", "usr/bin/dig"),
        ("libc-bin", "usr/bin/getent"),
    ];
    for (rel, data) in
        basalt_image::build::program_closure(&programs, DNS_LIBRARIES, &pins, &cache).unwrap()
    {
        put(ctx, &rel, &data);
    }
    std::fs::create_dir_all(ctx.join("etc")).unwrap();
    std::fs::write(ctx.join("etc/nsswitch.conf"), "hosts: files dns\n").unwrap();
}

/// Builds `tag` from `ctx` with the host's Docker engine.
fn docker_build(ctx: &Path, tag: &str, dockerfile: &str) -> common::DockerImage {
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    let o = Command::new("docker")
        .args(["build", "--quiet", "-t", tag])
        .arg(ctx)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "docker build {tag}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    common::DockerImage(tag.into())
}

/// The agnhost image: `/agnhost` (its entrypoint, as upstream's) and the tools above.
/// Upstream's is Alpine with these tools installed; none of this comes from a registry.
fn agnhost_image(dir: &Path) -> common::DockerImage {
    let ctx = dir.join("agnhost-image");
    tools(&ctx);
    put(
        &ctx,
        "agnhost",
        &std::fs::read(e2e_path("agnhost")).unwrap(),
    );
    docker_build(
        &ctx,
        AGNHOST,
        "FROM scratch\nCOPY . /\nENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nENTRYPOINT [\"/agnhost\"]\nCMD [\"pause\"]\n",
    )
}

/// The glibc-dns-testing image (upstream: Debian with dnsutils installed): the tools above,
/// run by the DNS tests' glibc prober with `sh -c`.
fn glibc_dns_image(dir: &Path) -> common::DockerImage {
    let ctx = dir.join("glibc-dns-image");
    tools(&ctx);
    docker_build(
        &ctx,
        GLIBC_DNS,
        "FROM scratch\nCOPY . /\nENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n",
    )
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
    let _glibc_dns = glibc_dns_image(&dir);
    ok(
        clusters,
        &["cluster", "load", "--name", &name, AGNHOST, GLIBC_DNS],
    );

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
            out.contains(&format!("Ran {SMOKE_TESTS} of ")),
            "not the {SMOKE_TESTS} tests asked for:\n{}",
            summary.join("\n")
        );
    }
}
