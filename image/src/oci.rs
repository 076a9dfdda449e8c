//! OCI image layouts built locally (no registry is reachable): the node imports every layout
//! under `/usr/share/basalt/images` into containerd at boot, and serves those under
//! `/usr/share/basalt/registry` from its own registry on loopback, pulled when a pod needs one
//! (`basalt-containerd`'s `shipped`).
//!
//! The test image `basalt.local/hello:v1` is one uncompressed layer holding `hello`, a small
//! static binary of `testkit/`, as `/hello` (it prints a greeting, its arguments and what it
//! sees of its namespaces). Everything is deterministic: fixed tar headers, sorted JSON keys.

use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::{ImageError, hex, io_err};

/// Where layouts imported at boot go in the rootfs.
pub const IMAGES_DIR: &str = "usr/share/basalt/images";
/// Where layouts served by the node's registry go in the rootfs.
pub const REGISTRY_DIR: &str = "usr/share/basalt/registry";
pub const HELLO_REF: &str = "basalt.local/hello:v1";

const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// A ustar archive of regular files (name, mode, contents), owned by root, mtime 0.
pub fn tar(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, mode, data) in files {
        let mut h = [0u8; 512];
        let put = |h: &mut [u8; 512], at: usize, len: usize, v: &[u8]| {
            h[at..at + v.len().min(len)].copy_from_slice(&v[..v.len().min(len)]);
        };
        put(&mut h, 0, 100, name.as_bytes());
        put(&mut h, 100, 8, format!("{mode:07o}\0").as_bytes());
        put(&mut h, 108, 8, b"0000000\0");
        put(&mut h, 116, 8, b"0000000\0");
        put(&mut h, 124, 12, format!("{:011o}\0", data.len()).as_bytes());
        put(&mut h, 136, 12, b"00000000000\0");
        h[156] = b'0';
        put(&mut h, 257, 6, b"ustar\0");
        put(&mut h, 263, 2, b"00");
        // The checksum is computed with its own field as spaces.
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        put(&mut h, 148, 8, format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// JSON bytes of a value (serializing a `Value` cannot fail).
fn json(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

fn put_blob(dir: &Path, data: &[u8]) -> Result<String, ImageError> {
    let d = digest(data);
    let p = dir
        .join("blobs/sha256")
        .join(d.trim_start_matches("sha256:"));
    std::fs::create_dir_all(p.parent().unwrap_or(dir)).map_err(io_err("create", dir))?;
    std::fs::write(&p, data).map_err(io_err("write", &p))?;
    Ok(d)
}

/// Writes an OCI image layout for `reference` with one layer of `files` and `entrypoint`.
pub fn write_layout(
    dir: &Path,
    namespace: Option<&str>,
    reference: &str,
    files: &[(&str, u32, &[u8])],
    entrypoint: &[&str],
) -> Result<(), ImageError> {
    std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let layer = tar(files);
    let layer_digest = put_blob(dir, &layer)?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Entrypoint": entrypoint, "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    });
    let config = json(&config);
    let config_digest = put_blob(dir, &config)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": { "mediaType": MT_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": [ { "mediaType": MT_LAYER, "digest": layer_digest, "size": layer.len() } ],
    });
    let manifest = json(&manifest);
    let manifest_digest = put_blob(dir, &manifest)?;
    let mut index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [ {
            "mediaType": MT_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": reference },
        } ],
    });
    if let Some(ns) = namespace {
        // Read by containerd's import (containerd/src/containers.rs, NAMESPACE_ANNOTATION).
        index["annotations"] = serde_json::json!({ "io.basalt.containerd.namespace": ns });
    }
    let write = |name: &str, v: &serde_json::Value| -> Result<(), ImageError> {
        let p = dir.join(name);
        std::fs::write(&p, json(v)).map_err(io_err("write", &p))
    };
    write("index.json", &index)?;
    write(
        "oci-layout",
        &serde_json::json!({ "imageLayoutVersion": "1.0.0" }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_is_readable_by_gnu_tar() {
        let d = tempfile::tempdir().unwrap();
        let t = tar(&[("hello", 0o755, b"#!x\n"), ("dir-less.txt", 0o644, b"abc")]);
        assert_eq!(t.len() % 512, 0);
        std::fs::write(d.path().join("a.tar"), &t).unwrap();
        let out = std::process::Command::new("tar")
            .args(["-tvf", "a.tar"])
            .current_dir(d.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list = String::from_utf8_lossy(&out.stdout);
        assert!(
            list.contains("-rwxr-xr-x root/root") || list.contains("-rwxr-xr-x 0/0"),
            "{list}"
        );
        assert!(
            list.contains("hello") && list.contains("dir-less.txt"),
            "{list}"
        );
    }

    #[test]
    fn layout_has_index_manifest_config_and_layer() {
        let d = tempfile::tempdir().unwrap();
        write_layout(
            d.path(),
            Some("k8s.io"),
            HELLO_REF,
            &[("hello", 0o755, b"bin")],
            &["/hello"],
        )
        .unwrap();
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.path().join("index.json")).unwrap()).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(
            m["annotations"]["org.opencontainers.image.ref.name"],
            HELLO_REF
        );
        assert_eq!(
            index["annotations"]["io.basalt.containerd.namespace"],
            "k8s.io"
        );
        let md = m["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_string();
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.path().join("blobs/sha256").join(md)).unwrap())
                .unwrap();
        assert_eq!(manifest["layers"][0]["mediaType"], MT_LAYER);
        let n = std::fs::read_dir(d.path().join("blobs/sha256"))
            .unwrap()
            .count();
        assert_eq!(n, 3);
    }
}
