use super::*;
use basalt_testkit::archive::{docker_save, hex, oci, sha, tar};

async fn read_all(data: &[u8]) -> Result<Contents, ArchiveError> {
    read(data, &mut Skip).await
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
    let e = read_all(&a).await.unwrap_err();
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
        let e = read_all(&a).await.unwrap_err();
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
    let e = read_all(&a[..512 * 4 + 100]).await.unwrap_err();
    assert!(
        e.to_string().contains("truncated") && e.to_string().contains("abc/layer.tar"),
        "{e}"
    );
    // Between entries: no end marker.
    let e = read_all(&a[..512 * 3]).await.unwrap_err();
    assert!(
        e.to_string().contains("before the end-of-archive marker"),
        "{e}"
    );
    // Inside a header.
    let e = read_all(&a[..700]).await.unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[tokio::test]
async fn what_is_not_a_tar_is_refused() {
    let e = read_all(b"").await.unwrap_err();
    assert!(matches!(e, ArchiveError::Empty), "{e}");
    let text = b"this is a text file, not an archive\n".repeat(40);
    let e = read_all(&text).await.unwrap_err();
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
    // A GNU long name, then a PAX header (its size: the entry's) before the same entry: both
    // apply to the entry, neither to the other header.
    let third = long.replace("layer", "third");
    let pax_size = "10 size=5\n";
    let a = tar(&[
        ("././@LongLink", b'L', third.as_bytes(), ""),
        ("././@PaxHeader", b'x', pax_size.as_bytes(), ""),
        ("short3", b'0', b"three", ""),
    ]);
    let c = read_all(&a).await.unwrap();
    assert_eq!(c.small[&third], b"three");
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
    let e = read_all(&tar(&entries)).await.unwrap_err();
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
