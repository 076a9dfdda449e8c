use super::*;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A layout of one image `name` holding one file `f` with `content`, as the image build
/// writes it.
fn layout(root: &Path, dir: &str, name: &str, content: &[u8]) {
    basalt_image::oci::write_layout(
        &root.join(dir),
        None,
        name,
        &[("f", 0o644, content)],
        &["/f"],
    )
    .unwrap();
}

/// A registry serving `root`, on a free loopback port.
async fn registry(root: &Path) -> std::net::SocketAddr {
    let catalog = Catalog::load(root).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, Arc::new(catalog)));
    addr
}

/// One answer: its status, headers (names lowercased) and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

async fn call(addr: std::net::SocketAddr, method: &str, target: &str) -> Answer {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(data);
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

#[test]
fn the_node_serves_where_the_image_build_puts_the_layouts() {
    assert_eq!(
        REGISTRY_DIR.trim_start_matches('/'),
        basalt_image::oci::REGISTRY_DIR
    );
    assert_eq!(
        crate::containers::IMAGES_DIR.trim_start_matches('/'),
        basalt_image::oci::IMAGES_DIR
    );
    assert_eq!(URL, format!("http://{LISTEN}"));
}

#[test]
fn a_reference_is_split_as_containerd_names_it() {
    let s = |r: &str| split_reference(r);
    let t = |h: &str, r: &str, tag: &str| Some((h.to_string(), r.to_string(), tag.to_string()));
    assert_eq!(
        s("registry.k8s.io/coredns/coredns:v1.15.0"),
        t("registry.k8s.io", "coredns/coredns", "v1.15.0")
    );
    assert_eq!(
        s("docker.io/rancher/local-path-provisioner:v0.0.30"),
        t("docker.io", "rancher/local-path-provisioner", "v0.0.30")
    );
    assert_eq!(s("localhost:5000/a:1"), t("localhost:5000", "a", "1"));
    assert_eq!(s("rancher/x:2"), t("docker.io", "rancher/x", "2"));
    assert_eq!(s("busybox:1"), t("docker.io", "library/busybox", "1"));
    assert_eq!(s("registry.k8s.io/pause"), None);
    assert_eq!(s("localhost:5000/a"), None);
}

#[tokio::test]
async fn manifests_and_blobs_are_served_by_tag_and_digest() {
    let dir = tempfile::tempdir().unwrap();
    layout(
        dir.path(),
        "dns",
        "registry.k8s.io/coredns/coredns:v1",
        b"dns",
    );
    let addr = registry(dir.path()).await;
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("dns/index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = |d: &str| {
        std::fs::read(
            dir.path()
                .join("dns/blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
        )
        .unwrap()
    };
    let manifest = blob(&digest);

    // The API is there.
    let a = call(addr, "GET", "/v2/").await;
    assert_eq!(a.status, 200, "{a:?}");

    // containerd resolves a tag with HEAD: the digest, type and length, no body.
    let target = "/v2/coredns/coredns/manifests/v1?ns=registry.k8s.io";
    let h = call(addr, "HEAD", target).await;
    assert_eq!(h.status, 200, "{h:?}");
    assert_eq!(h.headers["docker-content-digest"], digest);
    assert_eq!(
        h.headers["content-type"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(h.headers["content-length"], manifest.len().to_string());
    assert!(h.body.is_empty(), "{h:?}");
    // GET by tag and by digest: the manifest's bytes, whose sha256 is the digest.
    for target in [
        target.to_string(),
        format!("/v2/coredns/coredns/manifests/{digest}?ns=registry.k8s.io"),
        // containerd names the registry; a client that does not is answered too.
        "/v2/coredns/coredns/manifests/v1".to_string(),
    ] {
        let g = call(addr, "GET", &target).await;
        assert_eq!(g.status, 200, "{target}: {g:?}");
        assert_eq!(g.body, manifest, "{target}");
        assert_eq!(sha256(&g.body), digest);
    }
    // Then the config and the layer, streamed whole.
    let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    for d in [
        m["config"]["digest"].as_str().unwrap(),
        m["layers"][0]["digest"].as_str().unwrap(),
    ] {
        let g = call(
            addr,
            "GET",
            &format!("/v2/coredns/coredns/blobs/{d}?ns=registry.k8s.io"),
        )
        .await;
        assert_eq!(g.status, 200, "{g:?}");
        assert_eq!(g.body, blob(d));
        assert_eq!(sha256(&g.body), d);
        assert_eq!(g.headers["content-length"], g.body.len().to_string());
    }
}

#[tokio::test]
async fn what_the_node_does_not_ship_is_a_404_and_writes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path(), "a", "registry.k8s.io/x/a:v1", b"a");
    layout(dir.path(), "b", "docker.io/x/b:v1", b"b");
    let addr = registry(dir.path()).await;
    let read = |d: &str, f: &str| std::fs::read_to_string(dir.path().join(d).join(f)).unwrap();
    let b_index: serde_json::Value = serde_json::from_str(&read("b", "index.json")).unwrap();
    let b_manifest = b_index["manifests"][0]["digest"].as_str().unwrap();

    let code = |a: &Answer| {
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        v["errors"][0]["code"].as_str().unwrap().to_string()
    };
    for (target, want) in [
        // A registry it serves nothing of, a repository it does not have, a tag it does not
        // have, a repository of another registry.
        ("/v2/x/a/manifests/v1?ns=quay.io", "NAME_UNKNOWN"),
        ("/v2/x/c/manifests/v1?ns=registry.k8s.io", "NAME_UNKNOWN"),
        (
            "/v2/x/a/manifests/v2?ns=registry.k8s.io",
            "MANIFEST_UNKNOWN",
        ),
        ("/v2/x/b/manifests/v1?ns=registry.k8s.io", "NAME_UNKNOWN"),
        // Another repository's manifest and blob, asked through this one.
        (
            &format!("/v2/x/a/manifests/{b_manifest}?ns=registry.k8s.io"),
            "MANIFEST_UNKNOWN",
        ),
        (
            &format!("/v2/x/a/blobs/{b_manifest}?ns=registry.k8s.io"),
            "BLOB_UNKNOWN",
        ),
        // A digest that is not one, or that would climb out of the layout.
        (
            "/v2/x/a/blobs/sha256:abc?ns=registry.k8s.io",
            "BLOB_UNKNOWN",
        ),
        (
            "/v2/x/a/blobs/sha256:../../../../etc/passwd?ns=registry.k8s.io",
            "BLOB_UNKNOWN",
        ),
        ("/v2/x/a/blobs/..%2F..%2Findex.json", "BLOB_UNKNOWN"),
        // Not the distribution API.
        ("/etc/passwd", "UNSUPPORTED"),
        ("/v2/x/a/tags/list", "UNSUPPORTED"),
    ] {
        let a = call(addr, "GET", target).await;
        assert_eq!((a.status, code(&a)), (404, want.to_string()), "{target}");
    }
    // Read-only: a push is refused, and nothing was written.
    for method in ["PUT", "POST", "DELETE", "PATCH"] {
        let a = call(addr, method, "/v2/x/a/manifests/v1?ns=registry.k8s.io").await;
        assert_eq!(a.status, 405, "{method}");
        assert_eq!(a.headers["allow"], "GET, HEAD");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    // Still serving.
    let a = call(addr, "GET", "/v2/x/b/manifests/v1?ns=docker.io").await;
    assert_eq!(a.status, 200);
}

#[test]
fn a_layout_it_cannot_serve_is_named() {
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path(), "a", "registry.k8s.io/x/a:v1", b"a");
    assert!(
        Catalog::load(&dir.path().join("none"))
            .unwrap()
            .repos
            .is_empty()
    );
    assert_eq!(
        Catalog::load(dir.path()).unwrap().registries(),
        BTreeSet::from(["registry.k8s.io".to_string()])
    );
    let index = dir.path().join("a/index.json");
    let text = std::fs::read_to_string(&index).unwrap();
    std::fs::write(&index, text.replace("x/a:v1", "x/a")).unwrap();
    let e = basalt_sys::error_chain(&Catalog::load(dir.path()).unwrap_err());
    assert!(
        e.contains("a/index.json") && e.contains("registry.k8s.io/x/a: not a name with a tag"),
        "{e}"
    );
    std::fs::write(&index, "{").unwrap();
    let e = basalt_sys::error_chain(&Catalog::load(dir.path()).unwrap_err());
    assert!(e.contains("a/index.json") && e.contains("not JSON"), "{e}");
}

/// containerd itself (the stack's, and its `ctr`) pulls through the hosts files the node
/// writes: what the node ships from the node's registry, the rest from the next host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_what_the_node_ships_and_asks_the_next_host_for_the_rest() {
    if !basalt_testkit::tier(
        basalt_testkit::Tier::Privileged,
        "containerd pulls from the node's registry",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (shipped, other) = (dir.path().join("shipped"), dir.path().join("other"));
    layout(&shipped, "one", "basalt.local/one:v1", b"one");
    layout(&other, "two", "basalt.local/two:v1", b"two");
    let (a, b) = (registry(&shipped).await, registry(&other).await);
    // The hosts files as the node writes them: its own registry first, then the config's
    // mirror (the last one, without fallback: nothing leaves this host).
    let cfg = basalt_config::Config::parse(
        &format!(
            "{}\n---
apiVersion: v1alpha1
kind: RegistryMirrorConfig
name: basalt.local
skipFallback: true
endpoints:
  - url: http://{b}
",
            include_str!("../../../config/testdata/valid/worker.yaml").trim_end()
        ),
        basalt_config::Mode::Metal,
    )
    .unwrap();
    let local = crate::registry::Local {
        url: format!("http://{a}"),
        registries: Catalog::load(&shipped).unwrap().registries(),
    };
    let hosts = dir.path().join("certs.d");
    crate::registry::write_hosts(&hosts, &crate::registry::settings(&cfg, &local).files).unwrap();

    let (sup, c) = crate::tests::real_containerd(dir.path()).await;
    let stack = basalt_image::stack::ensure(
        basalt_image::stack::NODE,
        &basalt_image::inputs::cache_dir(),
        &|m| eprintln!("{m}"),
    )
    .unwrap();
    let ctr = stack.path("ctr").unwrap().to_path_buf();
    let sock = dir.path().join("c.sock");
    let run = |args: &[&str]| {
        std::process::Command::new(&ctr)
            .arg("--address")
            .arg(&sock)
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
            .unwrap()
    };
    let hosts_dir = hosts.to_str().unwrap();
    for name in ["basalt.local/one:v1", "basalt.local/two:v1"] {
        let o = run(&["images", "pull", "--hosts-dir", hosts_dir, name]);
        assert!(
            o.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert_eq!(
        crate::tests::image_names(&c, "k8s.io").await,
        ["basalt.local/one:v1", "basalt.local/two:v1"]
    );
    // Pulled and unpacked: the image's file is in its snapshot.
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let o = run(&[
        "images",
        "mount",
        "basalt.local/one:v1",
        mnt.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let content = std::fs::read(mnt.join("f"));
    let _ = run(&["images", "unmount", "--rm", mnt.to_str().unwrap()]);
    assert_eq!(content.unwrap(), b"one");
    // What no host has: both answer 404, and the pull fails naming it.
    let o = run(&[
        "images",
        "pull",
        "--hosts-dir",
        hosts_dir,
        "basalt.local/three:v1",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("basalt.local/three:v1") && err.contains("not found"),
        "{err}"
    );
    let _ = sup.stop("containerd").await;
}
