use super::*;

/// A ustar header, written here so tests can make the entries real tools refuse to write.
pub(crate) fn header(name: &str, size: u64, typeflag: u8, link: &str) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A tar of (path, typeflag, content, link target) entries, with its end marker.
pub(crate) fn tar(entries: &[(&str, u8, &[u8], &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, t, data, link) in entries {
        out.extend_from_slice(&header(name, data.len() as u64, *t, link));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

pub(crate) fn sha(data: &[u8]) -> String {
    crate::containers::digest(data)
}

fn hex(data: &[u8]) -> String {
    sha(data).trim_start_matches("sha256:").to_string()
}

async fn read_all(data: &[u8]) -> Result<Contents, crate::containers::ContainerError> {
    read(data, &mut Skip).await
}

fn archive_err(e: crate::containers::ContainerError) -> ArchiveError {
    match e {
        crate::containers::ContainerError::Archive(a) => a,
        other => panic!("not an archive error: {other}"),
    }
}

/// What `docker save hello:v1` writes (the legacy layout Debian's docker.io 20.10 makes): a
/// directory per layer, the config as `HEX.json`, `manifest.json` and `repositories` last.
pub(crate) fn docker_save(layer: &[u8]) -> (Vec<u8>, String) {
    docker_save_with(layer, &sha(layer), "abc/layer.tar")
}

/// [`docker_save`] with the config's diff_id and the manifest's layer path given.
pub(crate) fn docker_save_with(layer: &[u8], diff_id: &str, layer_path: &str) -> (Vec<u8>, String) {
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["/serve"]}},"rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#,
    );
    let cfg_name = format!("{}.json", hex(config.as_bytes()));
    let manifest = format!(
        r#"[{{"Config":"{cfg_name}","RepoTags":["hello:v1","registry.local:5000/team/hello:v1"],"Layers":["{layer_path}"]}}]"#
    );
    (
        tar(&[
            ("abc/", b'5', b"", ""),
            ("abc/VERSION", b'0', b"1.0", ""),
            ("abc/layer.tar", b'0', layer, ""),
            (&cfg_name, b'0', config.as_bytes(), ""),
            ("manifest.json", b'0', manifest.as_bytes(), ""),
            ("repositories", b'0', b"{}", ""),
        ]),
        sha(config.as_bytes()),
    )
}

#[tokio::test]
async fn a_docker_save_archive_names_its_images_as_containerd_does() {
    let layer = tar(&[("serve", b'0', b"#!binary", "")]);
    let (a, config_digest) = docker_save(&layer);
    let c = read_all(&a).await.unwrap();
    let imgs = images(&c).unwrap();
    assert_eq!(imgs.len(), 1);
    assert_eq!(
        imgs[0].names,
        [
            "docker.io/library/hello:v1",
            "registry.local:5000/team/hello:v1"
        ]
    );
    assert_eq!(imgs[0].config_digest, config_digest);
    assert!(imgs[0].manifest.is_none());
    assert_eq!(
        imgs[0].layers[0].digest.as_deref(),
        Some(sha(&layer).as_str())
    );
    assert_eq!(imgs[0].layers[0].media_type, DOCKER_LAYER);
}

#[tokio::test]
async fn large_files_go_to_the_store_and_are_not_kept() {
    let big = vec![7u8; usize::try_from(SMALL_FILE + 1).unwrap()];
    let (a, _) = docker_save(&big);
    let c = read_all(&a).await.unwrap();
    assert!(!c.small.contains_key("abc/layer.tar"));
    assert_eq!(c.large["abc/layer.tar"].size, big.len() as u64);
    // A store that skipped the content knows no digest; the image is still named.
    let imgs = images(&c).unwrap();
    assert_eq!(imgs[0].layers[0].digest, None);
    assert_eq!(imgs[0].layers[0].size, big.len() as u64);
}

pub(crate) fn oci(layer: &[u8], name: &str) -> Vec<u8> {
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
        sha(layer)
    );
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}]}}"#,
        sha(config.as_bytes()),
        config.len(),
        sha(layer),
        layer.len()
    );
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"annotations":{{"io.containerd.image.name":"{name}","org.opencontainers.image.ref.name":"v1"}}}}]}}"#,
        sha(manifest.as_bytes()),
        manifest.len()
    );
    let blob = |d: &[u8]| format!("blobs/sha256/{}", hex(d));
    let (bl, bc, bm) = (
        blob(layer),
        blob(config.as_bytes()),
        blob(manifest.as_bytes()),
    );
    tar(&[
        ("oci-layout", b'0', br#"{"imageLayoutVersion":"1.0.0"}"#, ""),
        (&bl, b'0', layer, ""),
        (&bc, b'0', config.as_bytes(), ""),
        (&bm, b'0', manifest.as_bytes(), ""),
        ("index.json", b'0', index.as_bytes(), ""),
    ])
}

#[tokio::test]
async fn an_oci_archive_keeps_its_manifest() {
    let layer = tar(&[("x", b'0', b"x", "")]);
    let c = read_all(&oci(&layer, "basalt.local/x:v1")).await.unwrap();
    let imgs = images(&c).unwrap();
    assert_eq!(imgs[0].names, ["basalt.local/x:v1"]);
    let (media, m) = imgs[0].manifest.as_ref().unwrap();
    assert_eq!(media, "application/vnd.oci.image.manifest.v1+json");
    assert!(String::from_utf8_lossy(m).contains(&sha(&layer)));
}

#[tokio::test]
async fn a_blob_that_is_not_what_its_name_says_is_refused() {
    let layer = tar(&[("x", b'0', b"x", "")]);
    let mut a = oci(&layer, "basalt.local/x:v1");
    // Flip a byte of the layer's content (the second entry's data, after two headers and the
    // first entry's one block).
    let at = 512 * 4 + 10;
    a[at] ^= 0xff;
    let e = archive_err(read_all(&a).await.unwrap_err());
    assert!(
        matches!(&e, ArchiveError::DigestMismatch { path, .. } if *path == format!("blobs/sha256/{}", hex(&layer))),
        "{e}"
    );
    assert!(e.to_string().contains("not the one its name says"), "{e}");
}

#[tokio::test]
async fn entries_that_leave_the_archive_are_refused() {
    for (entries, why) in [
        (vec![("../evil", b'0', &b"x"[..], "")], "climbs out"),
        (vec![("a/../../evil", b'0', &b"x"[..], "")], "climbs out"),
        (vec![("/etc/passwd", b'0', &b"x"[..], "")], "absolute"),
        (
            vec![("a/link", b'2', &b""[..], "../../etc")],
            "outside the archive",
        ),
        (
            vec![("link", b'2', &b""[..], "/etc/passwd")],
            "outside the archive",
        ),
        (
            vec![("hard", b'1', &b""[..], "../x")],
            "outside the archive",
        ),
    ] {
        let a = tar(&entries);
        let e = archive_err(read_all(&a).await.unwrap_err());
        assert!(
            matches!(e, ArchiveError::BadEntry { .. }) && e.to_string().contains(why),
            "{entries:?}: {e}"
        );
    }
}

#[tokio::test]
async fn a_truncated_archive_says_where_it_ends() {
    let layer = vec![1u8; 4000];
    let (a, _) = docker_save(&layer);
    // Inside the layer's content.
    let e = archive_err(read_all(&a[..512 * 4 + 100]).await.unwrap_err());
    assert!(
        e.to_string().contains("truncated") && e.to_string().contains("abc/layer.tar"),
        "{e}"
    );
    // Between entries: no end marker.
    let e = archive_err(read_all(&a[..512 * 3]).await.unwrap_err());
    assert!(
        e.to_string().contains("before the end-of-archive marker"),
        "{e}"
    );
    // Inside a header.
    let e = archive_err(read_all(&a[..700]).await.unwrap_err());
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[tokio::test]
async fn what_is_not_a_tar_is_refused() {
    let e = archive_err(read_all(b"").await.unwrap_err());
    assert!(matches!(e, ArchiveError::Empty), "{e}");
    let text = b"this is a text file, not an archive\n".repeat(40);
    let e = archive_err(read_all(&text).await.unwrap_err());
    assert!(matches!(e, ArchiveError::NotTar { offset: 0 }), "{e}");
    // A tar of other things.
    let c = read_all(&tar(&[("notes.txt", b'0', b"hi", "")]))
        .await
        .unwrap();
    assert!(matches!(images(&c), Err(ArchiveError::NotImage)));
}

#[tokio::test]
async fn a_manifest_naming_a_missing_layer_is_refused() {
    let layer = tar(&[("x", b'0', b"x", "")]);
    let (a, _) = docker_save(&layer);
    // The same archive without the layer entry: rebuild it from its parts.
    let c = read_all(&a).await.unwrap();
    let mut c2 = Contents::default();
    for (k, v) in &c.small {
        if k != "abc/layer.tar" {
            c2.small.insert(k.clone(), v.clone());
        }
    }
    let e = images(&c2).unwrap_err();
    assert!(
        e.to_string()
            .contains("manifest.json names \"abc/layer.tar\", which the archive does not hold"),
        "{e}"
    );
}

#[tokio::test]
async fn long_names_from_pax_and_gnu_headers() {
    let long = format!("{}/layer.tar", "d".repeat(150));
    let pax = format!("{} path={long}\n", long.len() + 7 + 4);
    let a = tar(&[
        ("././@PaxHeader", b'x', pax.as_bytes(), ""),
        ("short", b'0', b"one", ""),
        (
            "././@LongLink",
            b'L',
            long.replace("layer", "other").as_bytes(),
            "",
        ),
        ("short2", b'0', b"two", ""),
    ]);
    let c = read_all(&a).await.unwrap();
    assert_eq!(c.small[&long], b"one");
    assert_eq!(c.small[&long.replace("layer", "other")], b"two");
}

#[tokio::test]
async fn symlinks_inside_the_archive_are_followed() {
    let layer = tar(&[("x", b'0', b"x", "")]);
    let (mut a, _) = docker_save(&layer);
    // docker save links a layer that two images share.
    a.truncate(a.len() - 1024);
    a.extend_from_slice(&tar(&[("def/layer.tar", b'2', b"", "../abc/layer.tar")]));
    let c = read_all(&a).await.unwrap();
    assert_eq!(c.digest("def/layer.tar"), Some(sha(&layer)));
}

#[tokio::test]
async fn metadata_is_bounded() {
    let chunk = vec![0u8; usize::try_from(SMALL_FILE).unwrap()];
    let names: Vec<String> = (0..=(SMALL_TOTAL / SMALL_FILE))
        .map(|i| format!("f{i}"))
        .collect();
    let entries: Vec<(&str, u8, &[u8], &str)> = names
        .iter()
        .map(|n| (n.as_str(), b'0', chunk.as_slice(), ""))
        .collect();
    let e = archive_err(read_all(&tar(&entries)).await.unwrap_err());
    assert!(matches!(e, ArchiveError::TooMuchMetadata), "{e}");
}

#[test]
fn references_are_normalized_as_docker_does() {
    for (r, want) in [
        ("hello", "docker.io/library/hello:latest"),
        ("hello:v1", "docker.io/library/hello:v1"),
        ("team/hello:v1", "docker.io/team/hello:v1"),
        ("localhost/hello:v1", "localhost/hello:v1"),
        ("localhost:5000/hello", "localhost:5000/hello:latest"),
        ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
        ("basalt.local/x@sha256:abcd", "basalt.local/x@sha256:abcd"),
    ] {
        assert_eq!(normalize_reference(r), want, "{r}");
    }
}
