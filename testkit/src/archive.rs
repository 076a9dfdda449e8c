//! Image archives for tests: a tar writer that makes the entries real tools refuse to write
//! (`..`, absolute paths, links out), and archives laid out as `docker save` and OCI tools
//! lay them out.

/// A ustar header, written here so tests can make the entries real tools refuse to write.
pub fn header(name: &str, size: u64, typeflag: u8, link: &str) -> [u8; 512] {
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
pub fn tar(entries: &[(&str, u8, &[u8], &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, t, data, link) in entries {
        out.extend_from_slice(&header(name, data.len() as u64, *t, link));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

pub fn sha(data: &[u8]) -> String {
    use sha2::Digest as _;
    let hex: String = sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

pub fn hex(data: &[u8]) -> String {
    sha(data).trim_start_matches("sha256:").to_string()
}

/// What `docker save hello:v1` writes (the legacy layout Debian's docker.io 20.10 makes): a
/// directory per layer, the config as `HEX.json`, `manifest.json` and `repositories` last.
pub fn docker_save(layer: &[u8]) -> (Vec<u8>, String) {
    docker_save_with(layer, &sha(layer), "abc/layer.tar")
}

/// [`docker_save`] with the config's diff_id and the manifest's layer path given.
pub fn docker_save_with(layer: &[u8], diff_id: &str, layer_path: &str) -> (Vec<u8>, String) {
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

pub fn oci(layer: &[u8], name: &str) -> Vec<u8> {
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
