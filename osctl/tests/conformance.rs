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

/// The test images under the names e2e.test of this release asks for
/// (test/utils/image/manifest.go).
const E2E_IMAGES: &str = "registry.k8s.io/e2e-test-images";
const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.66.1";
/// The DNS tests' second prober image.
const GLIBC_DNS: &str = "registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1";

/// The pinned packages (image/inputs.lock) the test images' programs take their libraries
/// from: `dig`, `getent`, OpenBSD's `nc`, `curl` and `nginx`.
const LIBRARIES: &[&str] = &[
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
    "libcurl4",
    "libbrotli1",
    "libldap-2.5-0",
    "libsasl2-2",
    "libpsl5",
    "librtmp1",
    "libgnutls30",
    "libhogweed6",
    "libnettle8",
    "libgmp10",
    "libtasn1-6",
    "libp11-kit0",
    "libffi8",
    "libssh2-1",
    "libgcrypt20",
    "libgpg-error0",
    "libzstd1",
    "libcrypt1",
    "libpcre2-8-0",
];

/// Writes a file into an image context.
fn put(ctx: &Path, rel: &str, data: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    let path = ctx.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, data).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// An extracted pinned package (image/inputs.lock), from the cache.
fn package(name: &str) -> std::path::PathBuf {
    let pins = basalt_image::inputs::lock().unwrap();
    let pin = basalt_image::inputs::find(&pins, name).unwrap();
    basalt_image::inputs::extract(pin, &basalt_image::inputs::cache_dir()).unwrap()
}

/// Programs from pinned packages, `(package, path in it)`, with their library closure
/// (`DT_NEEDED`, as the node image's programs), into an image context.
fn programs(ctx: &Path, programs: &[(&str, &str)]) {
    let pins = basalt_image::inputs::lock().unwrap();
    let cache = basalt_image::inputs::cache_dir();
    for (rel, data) in
        basalt_image::build::program_closure(programs, LIBRARIES, &pins, &cache).unwrap()
    {
        put(ctx, &rel, &data, 0o755);
    }
}

/// Debian's static busybox as `/bin/busybox`, with a link in `/bin` for each of its applets
/// but those in `except`.
fn busybox(ctx: &Path, except: &[&str]) {
    let binary = package("busybox-static").join("bin/busybox");
    put(ctx, "bin/busybox", &std::fs::read(&binary).unwrap(), 0o755);
    let list = Command::new(&binary).arg("--list").output().unwrap();
    assert!(list.status.success(), "busybox --list");
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" && !except.contains(&applet) {
            std::os::unix::fs::symlink("busybox", ctx.join("bin").join(applet)).unwrap();
        }
    }
}

/// Debian's static busybox with its applets but `except`, Debian's static bash, and the
/// directories every image has (`/tmp` writable by all, as the suite's non-root probes need).
/// `/bin/sh` is bash when `bash_sh`, else busybox's shell; bash is `/usr/bin/sh` either way,
/// which a `sh` looked up on the PATH finds first. Why two: the suite asks of its busybox
/// image what busybox 1.37's shell does, and Debian 12's busybox (1.35) does only part of it —
/// its error text for `/bin/sh -c "echo > /file"` on a read-only root is what the kubelet test
/// expects word for word, but it drops environment variables whose names are not a shell's
/// (`data-1`, which the ConfigMap tests pass to `sh -c env`), which bash passes on. And
/// busybox's shell runs its own applets before anything on the PATH (its `nc`, not OpenBSD's).
fn shell(ctx: &Path, except: &[&str], bash_sh: bool) {
    let mut except = except.to_vec();
    if bash_sh {
        except.push("sh");
    }
    busybox(ctx, &except);
    let bash = std::fs::read(package("bash-static").join("bin/bash-static")).unwrap();
    put(ctx, "bin/bash", &bash, 0o755);
    if bash_sh {
        std::os::unix::fs::symlink("bash", ctx.join("bin/sh")).unwrap();
    }
    std::fs::create_dir_all(ctx.join("usr/bin")).unwrap();
    std::os::unix::fs::symlink("/bin/bash", ctx.join("usr/bin/sh")).unwrap();
    for (dir, mode) in [
        ("tmp", 0o1777),
        ("root", 0o700),
        ("home", 0o755),
        ("var", 0o755),
    ] {
        use std::os::unix::fs::PermissionsExt as _;
        let path = ctx.join(dir);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// The shell and tools the suite's scripts and execs run, as upstream's Alpine-based agnhost
/// has them: Debian's static bash as `/bin/sh` and static busybox for the usual tools, and
/// from pinned Debian packages with their libraries `dig` (bind9-dnsutils), `getent`
/// (libc-bin), OpenBSD's `nc` and `curl`.
fn tools(ctx: &Path) {
    shell(ctx, &["nc"], true);
    programs(
        ctx,
        &[
            ("bind9-dnsutils", "usr/bin/dig"),
            ("libc-bin", "usr/bin/getent"),
            ("netcat-openbsd", "bin/nc.openbsd"),
            ("curl", "usr/bin/curl"),
        ],
    );
    std::os::unix::fs::symlink("nc.openbsd", ctx.join("bin/nc")).unwrap();
    put(ctx, "etc/nsswitch.conf", b"hosts: files dns\n", 0o644);
    // The users and groups upstream's agnhost defines (the suite's security-context tests).
    put(
        ctx,
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nuser-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n",
        0o644,
    );
    put(
        ctx,
        "etc/group",
        b"root:x:0:\nuser-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n",
        0o644,
    );
}

const PATH: &str = "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n";

/// The agnhost image's files: `/agnhost`, the tools above, and the certificate and key its
/// `porter` serves TLS with (from the module's test/images/agnhost, as upstream adds them).
fn agnhost_context(ctx: &Path) {
    tools(ctx);
    put(
        ctx,
        "agnhost",
        &std::fs::read(e2e_path("agnhost")).unwrap(),
        0o755,
    );
    std::fs::create_dir_all(ctx.join("uploads")).unwrap();
    // The name the suite's entrypoint tests give as the command.
    std::os::unix::fs::symlink("agnhost", ctx.join("agnhost-2")).unwrap();
    let porter = e2e_module().join("test/images/agnhost/porter");
    for f in ["localhost.crt", "localhost.key"] {
        put(ctx, f, &std::fs::read(porter.join(f)).unwrap(), 0o644);
    }
}

/// Where the Go module cache holds the e2e suite's module (the stack's build put it there).
fn e2e_module() -> std::path::PathBuf {
    basalt_image::stack::module_dir(&basalt_image::stack::KUBERNETES_E2E)
        .expect("the e2e suite's module is in the Go module cache")
}

/// The images the chosen tests run, built here since no registry is reachable. `everything`:
/// all the conformance set uses, not only what the DNS and smoke tests need — agnhost (its
/// entrypoint `/agnhost`, as upstream's; with `everything` also as the previous agnhost, 2.55)
/// and glibc-dns-testing (upstream: Debian with dnsutils),
/// both with the tools above; with `everything` also busybox (Debian's static busybox, every
/// applet, and bash as `/usr/bin/sh`, see [`shell`]), nonroot (that, as user 1234), nginx (Debian's nginx serving
/// `/usr/share/nginx/html` on port 80, with the tools above, as upstream's is Debian's with a
/// shell) and kitten and nautilus (agnhost's `test-webserver` serving their pictures, from the
/// module's test/images). Images the set names and none of this makes (sample-apiserver and
/// etcd for the aggregator test, nonewprivs) are not built: their tests fail, and the counts
/// say so.
fn test_images(dir: &Path, everything: bool) -> Vec<common::DockerImage> {
    let mut images = Vec::new();
    let ctx = dir.join("agnhost-image");
    agnhost_context(&ctx);
    let agnhost =
        format!("FROM scratch\nCOPY . /\n{PATH}ENTRYPOINT [\"/agnhost\"]\nCMD [\"pause\"]\n");
    // The suite's previous agnhost (StatefulSet and Deployment updates move from it to the
    // current one) is the same image under its name.
    let prev = format!("{E2E_IMAGES}/agnhost:2.55");
    let tags = if everything {
        vec![AGNHOST, prev.as_str()]
    } else {
        vec![AGNHOST]
    };
    images.extend(common::docker_build(&ctx, &tags, &agnhost));
    let ctx = dir.join("glibc-dns-image");
    tools(&ctx);
    images.extend(common::docker_build(
        &ctx,
        &[GLIBC_DNS],
        &format!("FROM scratch\nCOPY . /\n{PATH}"),
    ));
    if !everything {
        return images;
    }
    let ctx = dir.join("busybox-image");
    shell(&ctx, &[], false);
    let tags = [
        format!("{E2E_IMAGES}/busybox:1.37.0-2"),
        format!("{E2E_IMAGES}/busybox:1.36.1-1"),
    ];
    let plain = format!("FROM scratch\nCOPY . /\n{PATH}CMD [\"sh\"]\n");
    images.extend(common::docker_build(&ctx, &[&tags[0], &tags[1]], &plain));
    let nonroot = format!("{E2E_IMAGES}/nonroot:1.5");
    images.extend(common::docker_build(
        &ctx,
        &[&nonroot],
        &format!("{plain}USER 1234\n"),
    ));
    let ctx = dir.join("nginx-image");
    tools(&ctx);
    programs(&ctx, &[("nginx", "usr/sbin/nginx")]);
    put(&ctx, "etc/nginx/nginx.conf", NGINX_CONF.as_bytes(), 0o644);
    put(
        &ctx,
        "usr/share/nginx/html/index.html",
        b"<html><body>nginx</body></html>\n",
        0o644,
    );
    for d in ["var/log/nginx", "var/lib/nginx/body", "run"] {
        std::fs::create_dir_all(ctx.join(d)).unwrap();
    }
    let tags = [
        format!("{E2E_IMAGES}/nginx:1.27.0-2"),
        format!("{E2E_IMAGES}/nginx:1.28.0-2"),
    ];
    images.extend(common::docker_build(
        &ctx,
        &[&tags[0], &tags[1]],
        &format!("FROM scratch\nCOPY . /\n{PATH}EXPOSE 80\nCMD [\"nginx\"]\n"),
    ));
    let module = e2e_module();
    for picture in ["kitten", "nautilus"] {
        let ctx = dir.join(format!("{picture}-image"));
        agnhost_context(&ctx);
        let html = module.join("test/images").join(picture).join("html");
        for f in [format!("{picture}.jpg"), "data.json".to_string()] {
            put(&ctx, &f, &std::fs::read(html.join(&f)).unwrap(), 0o644);
        }
        let tag = format!("{E2E_IMAGES}/{picture}:1.8");
        images.extend(common::docker_build(
            &ctx,
            &[&tag],
            &format!(
                "FROM scratch\nCOPY . /\n{PATH}ENTRYPOINT [\"/agnhost\"]\nCMD [\"test-webserver\"]\n"
            ),
        ));
    }
    images
}

/// nginx as upstream's image runs it: in the foreground, port 80, its page directory.
const NGINX_CONF: &str = "daemon off;
user root;
worker_processes 1;
error_log stderr;
pid /run/nginx.pid;
events {}
http {
    access_log off;
    server {
        listen 80;
        listen [::]:80;
        root /usr/share/nginx/html;
        index index.html;
    }
}
";

/// The `[sig-…]` groups of the suite, largest first: `BASALT_E2E_SHARDS=N` deals them out to
/// N e2e.test processes that run at once (e2e.test alone runs its tests one at a time; ginkgo's
/// own parallel mode needs its CLI, which the stack does not build).
const SIGS: &[&str] = &[
    "sig-node",
    "sig-api-machinery",
    "sig-storage",
    "sig-apps",
    "sig-network",
    "sig-auth",
    "sig-cli",
    "sig-scheduling",
    "sig-instrumentation",
    "sig-architecture",
    "sig-windows",
    "sig-testing",
];

/// Each shard's ginkgo label filter: shard 0 takes every test the others do not (including
/// any without a group), so each test runs once.
fn shard_filters(shards: usize) -> Vec<Option<String>> {
    if shards <= 1 {
        return vec![None];
    }
    let mut groups = vec![Vec::new(); shards];
    for (i, sig) in SIGS.iter().enumerate() {
        groups[i % shards].push(*sig);
    }
    let others: Vec<&str> = groups[1..].iter().flatten().copied().collect();
    let mut filters = vec![Some(format!("!({})", others.join(" || ")))];
    filters.extend(groups[1..].iter().map(|g| Some(g.join(" || "))));
    filters
}

/// The port of the cluster's registry when the tests need one.
const REGISTRY_PORT: u16 = 5011;

/// Pushes `registry.k8s.io/PATH` to the cluster's registry as `PATH`.
fn push(image: &str) {
    let path = image.strip_prefix("registry.k8s.io/").unwrap();
    let local = format!("localhost:{REGISTRY_PORT}/{path}");
    for args in [vec!["tag", image, &local], vec!["push", "--quiet", &local]] {
        let o = Command::new("docker").args(&args).output().unwrap();
        assert!(
            o.status.success(),
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let _ = Command::new("docker").args(["rmi", &local]).output();
}

/// What one e2e.test process printed at its end.
#[derive(Debug, Default)]
struct Outcome {
    ran: usize,
    passed: usize,
    failed: usize,
    /// The `[FAIL]` lines of its summary: the failed tests' names.
    failures: Vec<String>,
}

/// Reads `Ran 11 of 3206 Specs …` and `SUCCESS! -- 11 Passed | 0 Failed | …` (or `FAIL! --`).
fn outcome(out: &str) -> Outcome {
    let mut o = Outcome::default();
    for l in out.lines() {
        if let Some(n) = l
            .strip_prefix("Ran ")
            .and_then(|r| r.split_whitespace().next())
        {
            o.ran = n.parse().unwrap_or(0);
        }
        if let Some(counts) = l
            .strip_prefix("SUCCESS! --")
            .or_else(|| l.strip_prefix("FAIL! --"))
        {
            for field in counts.split('|') {
                let mut words = field.split_whitespace();
                let n: usize = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                match words.next() {
                    Some("Passed") => o.passed = n,
                    Some("Failed") => o.failed = n,
                    _ => {}
                }
            }
        }
        if l.trim_start().starts_with("[FAIL]") {
            o.failures.push(l.trim().to_string());
        }
    }
    o
}

#[test]
fn outcome_reads_ginkgos_summary() {
    let o = outcome(
        "Ran 3 of 3206 Specs in 20.1 seconds\nFAIL! -- 2 Passed | 1 Failed | 0 Pending | 3203 Skipped\n  [FAIL] [sig-network] DNS should x [Conformance]\n",
    );
    assert_eq!((o.ran, o.passed, o.failed), (3, 2, 1));
    assert_eq!(
        o.failures,
        ["[FAIL] [sig-network] DNS should x [Conformance]"]
    );
    let o = outcome(
        "Ran 11 of 3206 Specs\nSUCCESS! -- 11 Passed | 0 Failed | 0 Pending | 3195 Skipped\n",
    );
    assert_eq!((o.ran, o.passed, o.failed), (11, 11, 0));
    assert!(o.failures.is_empty());
}

#[test]
fn shards_run_each_group_once() {
    assert_eq!(shard_filters(1), vec![None]);
    let f = shard_filters(3);
    assert_eq!(f.len(), 3);
    assert_eq!(
        f[1].as_deref(),
        Some("sig-api-machinery || sig-network || sig-scheduling || sig-windows")
    );
    assert!(
        f[0].as_deref()
            .unwrap()
            .starts_with("!(sig-api-machinery || ")
    );
    assert!(!f[0].as_deref().unwrap().contains("sig-node"));
}

#[test]
fn kubernetes_own_e2e_tests_pass() {
    if !tier(Tier::Cluster, "kubernetes_own_e2e_tests_pass") {
        return;
    }
    let focus = std::env::var("BASALT_E2E_FOCUS").unwrap_or_else(|_| SMOKE.to_string());
    let skip = std::env::var("BASALT_E2E_SKIP").unwrap_or_default();
    let shards: usize = std::env::var("BASALT_E2E_SHARDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1);
    // The suite first: built once into the cache (minutes from cold), then reused.
    let e2e = e2e_path("e2e.test");
    let kubectl = e2e_path("kubectl");
    let root = common::clusters_root();
    let clusters = root.as_path();
    let name = format!("c{}", std::process::id() % 100_000);
    let dir = clusters.join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let everything = focus != SMOKE;
    let images = test_images(&dir, everything);
    let _guard = Destroy(clusters, &name, "docker");
    let net = "10.241.0";
    let cidr = format!("{net}.0/24");
    let mut create: Vec<String> = [
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
        &cidr,
        "--kubernetes",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    if everything {
        // Some tests pull with `imagePullPolicy: Always`: the cluster's own registry serves
        // the images under their names, every node mirroring registry.k8s.io to it.
        create.extend([
            format!("--registry={REGISTRY_PORT}"),
            format!(
                "--config-patch=apiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: registry.k8s.io\nskipFallback: true\nendpoints:\n  - url: http://{net}.1:{REGISTRY_PORT}\n"
            ),
        ]);
    }
    let create: Vec<&str> = create.iter().map(String::as_str).collect();
    ok(clusters, &create);
    if everything {
        for image in &images {
            push(&image.0);
        }
    }
    let oc = dir.join("osconfig");
    let kc = dir.join("kubeconfig");
    common::kubeconfig(clusters, oc.to_str().unwrap(), &format!("{net}.2"), &kc);
    let mut load = vec!["cluster", "load", "--name", &name];
    load.extend(images.iter().map(|i| i.0.as_str()));
    ok(clusters, &load);

    // Beside the cluster's directory, not in it: what e2e.test wrote outlives the cluster when
    // a test fails (and goes when all passed).
    let reports = clusters.join(format!("e2e-{name}"));
    eprintln!("e2e.test's output: {}/shard-N/stdout", reports.display());
    let started = std::time::Instant::now();
    let runs: Vec<_> = shard_filters(shards)
        .into_iter()
        .enumerate()
        .map(|(i, labels)| {
            let report = reports.join(format!("shard-{i}"));
            std::fs::create_dir_all(&report).unwrap();
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &format!("basalt-{name}")])
                .arg(&e2e)
                .arg(format!("--kubeconfig={}", kc.display()))
                .arg(format!("--kubectl-path={}", kubectl.display()))
                .arg(format!("--ginkgo.focus={focus}"))
                .args((!skip.is_empty()).then(|| format!("--ginkgo.skip={skip}")))
                .args(labels.map(|l| format!("--ginkgo.label-filter={l}")))
                .arg("--ginkgo.no-color")
                .arg("--ginkgo.timeout=6h")
                .arg(format!("--report-dir={}", report.display()))
                .current_dir(&dir)
                .env("KUBECONFIG", &kc);
            // Written as it runs (a test per line with its outcome), so a long run can be
            // followed: `tail -f <clusters>/e2e-<cluster>/shard-N/stdout`.
            let (stdout, stderr) = (report.join("stdout"), report.join("stderr"));
            cmd.stdout(std::fs::File::create(&stdout).unwrap())
                .stderr(std::fs::File::create(&stderr).unwrap());
            std::thread::spawn(move || {
                let status = cmd.status().unwrap();
                let out = std::fs::read_to_string(&stdout).unwrap_or_default();
                let err = std::fs::read_to_string(&stderr).unwrap_or_default();
                (status.success() && out.contains("SUCCESS!"), out, err)
            })
        })
        .collect();
    let results: Vec<_> = runs.into_iter().map(|r| r.join().unwrap()).collect();
    eprintln!(
        "e2e.test ran {:?} in {shards} process(es)",
        started.elapsed()
    );
    let mut total = Outcome::default();
    for (i, (_, out, _)) in results.iter().enumerate() {
        let o = outcome(out);
        eprintln!(
            "shard {i}: ran {}, passed {}, failed {}",
            o.ran, o.passed, o.failed
        );
        total.ran += o.ran;
        total.passed += o.passed;
        total.failed += o.failed;
        total.failures.extend(o.failures);
    }
    eprintln!(
        "all: ran {}, passed {}, failed {}\n{}",
        total.ran,
        total.passed,
        total.failed,
        total.failures.join("\n")
    );
    let tail = |text: &str, n: usize| {
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    };
    for (good, out, err) in &results {
        assert!(
            good,
            "e2e.test failed:\n{}\n{}",
            tail(out, 200),
            tail(err, 50)
        );
    }
    let _ = std::fs::remove_dir_all(&reports);
    if focus == SMOKE {
        assert_eq!(
            total.ran, SMOKE_TESTS,
            "not the {SMOKE_TESTS} tests asked for: ran {}",
            total.ran
        );
    }
}
