use super::*;

const BASE: &str = include_str!("../../../config/testdata/valid/worker.yaml");

fn cfg(extra: &str) -> Config {
    Config::parse(
        &format!("{}\n{extra}", BASE.trim_end()),
        basalt_config::Mode::Metal,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The settings of a config on a node that serves no image itself.
fn settings(c: &Config) -> Settings {
    super::settings(c, &Local::default())
}

fn file(s: &Settings, path: &str) -> String {
    String::from_utf8(
        s.files
            .get(path)
            .unwrap_or_else(|| panic!("no {path} in {:?}", s.files.keys()))
            .0
            .clone(),
    )
    .unwrap()
}

#[test]
fn a_mirror_is_tried_before_the_registry() {
    let s = settings(&cfg("---
apiVersion: v1alpha1
kind: RegistryMirrorConfig
name: docker.io
endpoints:
  - url: http://10.5.0.1:5000
  - url: https://mirror.example/v2
"));
    let t = file(&s, "docker.io/hosts.toml");
    let server = t.find("server = \"https://registry-1.docker.io\"").unwrap();
    let first = t.find("[host.\"http://10.5.0.1:5000\"]").unwrap();
    let second = t.find("[host.\"https://mirror.example/v2\"]").unwrap();
    assert!(server < first && first < second, "{t}");
    assert_eq!(
        t.matches("capabilities = [\"pull\", \"resolve\"]").count(),
        2,
        "{t}"
    );
    assert!(s.auth.is_empty());
}

#[test]
fn without_fallback_the_last_mirror_is_the_server() {
    let s = settings(&cfg("---
apiVersion: v1alpha1
kind: RegistryMirrorConfig
name: localhost:5000
skipFallback: true
endpoints:
  - url: http://10.5.0.1:5000
"));
    let t = file(&s, "localhost:5000/hosts.toml");
    assert!(t.contains("server = \"http://10.5.0.1:5000\""), "{t}");
    assert!(!t.contains("[host."), "{t}");
    assert!(!t.contains("https://localhost:5000"), "{t}");
}

#[test]
fn the_wildcard_is_containerds_default_and_serves_registries_with_only_tls() {
    let s = settings(&cfg("---
apiVersion: v1alpha1
kind: RegistryMirrorConfig
name: \"*\"
endpoints:
  - url: https://10.5.0.1:5443
---
apiVersion: v1alpha1
kind: RegistryTLSConfig
name: 10.5.0.1:5443
insecureSkipVerify: true
---
apiVersion: v1alpha1
kind: RegistryTLSConfig
name: registry.local
insecureSkipVerify: true
"));
    let d = file(&s, "_default/hosts.toml");
    assert!(
        !d.contains("server ="),
        "the requested registry stays the fallback: {d}"
    );
    assert!(
        d.contains("[host.\"https://10.5.0.1:5443\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n"),
        "{d}"
    );
    // A registry with a TLS document of its own gets a directory: its own TLS at the root,
    // and the `*` mirror still in front of it.
    let r = file(&s, "registry.local/hosts.toml");
    assert!(
        r.contains("server = \"https://registry.local\"\nskip_verify = true\n"),
        "{r}"
    );
    assert!(r.contains("[host.\"https://10.5.0.1:5443\"]"), "{r}");
}

#[test]
fn credentials_go_to_the_cri_config_and_tls_files_beside_the_hosts() {
    // Any certificate will do: the OS CA's from the base config.
    let base = cfg("");
    let crt = base.secrets().certs.os.crt.0.as_str().to_string();
    let key = base
        .secrets()
        .certs
        .os
        .key
        .as_ref()
        .unwrap()
        .0
        .as_str()
        .to_string();
    let indent = |p: &str| p.lines().map(|l| format!("  {l}\n")).collect::<String>();
    let indent4 = |p: &str| p.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let s = settings(&cfg(&format!(
        "---
apiVersion: v1alpha1
kind: RegistryAuthConfig
name: 10.5.0.1:5000
username: basalt
password: \"p\\\"w\"
---
apiVersion: v1alpha1
kind: RegistryTLSConfig
name: 10.5.0.1:5000
ca: |
{}clientIdentity:
  crt: |
{}  key: |
{}",
        indent(&crt),
        indent4(&crt),
        indent4(&key)
    )));
    assert_eq!(
        s.auth,
        [Auth {
            host: "10.5.0.1:5000".into(),
            username: "basalt".into(),
            password: "p\"w".into(),
            identity_token: String::new(),
        }]
    );
    let toml = cri_toml(&s.auth);
    assert!(
        toml.contains("config_path = \"/system/etc/containerd/certs.d\"")
            && toml.contains(
                "[plugins.'io.containerd.cri.v1.images'.registry.configs.\"10.5.0.1:5000\".auth]"
            )
            && toml.contains("password = \"p\\\"w\"")
            && !toml.contains("identitytoken"),
        "{toml}"
    );
    let t = file(&s, "10.5.0.1:5000/hosts.toml");
    assert!(
        t.contains("ca = \"/system/etc/containerd/certs.d/10.5.0.1:5000/10.5.0.1_5000-ca.crt\""),
        "{t}"
    );
    assert_eq!(file(&s, "10.5.0.1:5000/10.5.0.1_5000-ca.crt"), crt);
    // The client certificate containerd presents, its key readable by root only.
    assert!(
        t.contains("client = [[\"/system/etc/containerd/certs.d/10.5.0.1:5000/10.5.0.1_5000-client.crt\", \"/system/etc/containerd/certs.d/10.5.0.1:5000/10.5.0.1_5000-client.key\"]]"),
        "{t}"
    );
    assert_eq!(file(&s, "10.5.0.1:5000/10.5.0.1_5000-client.crt"), crt);
    assert_eq!(file(&s, "10.5.0.1:5000/10.5.0.1_5000-client.key"), key);
    assert_eq!(s.files["10.5.0.1:5000/10.5.0.1_5000-client.key"].1, 0o600);
}

#[test]
fn hosts_are_replaced_whole() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("certs.d");
    let mut files = BTreeMap::new();
    files.insert("a/hosts.toml".to_string(), (b"one".to_vec(), 0o644));
    files.insert("a/key".to_string(), (b"secret".to_vec(), 0o600));
    write_hosts(&root, &files).unwrap();
    assert_eq!(std::fs::read(root.join("a/hosts.toml")).unwrap(), b"one");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(root.join("a/key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mut next = BTreeMap::new();
    next.insert("b/hosts.toml".to_string(), (b"two".to_vec(), 0o644));
    write_hosts(&root, &next).unwrap();
    assert!(
        !root.join("a").exists(),
        "a registry dropped from the config stays"
    );
    assert_eq!(std::fs::read(root.join("b/hosts.toml")).unwrap(), b"two");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, ["certs.d"], "temporary trees left behind");
    write_hosts(&root, &BTreeMap::new()).unwrap();
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
}

#[test]
fn the_nodes_own_registry_comes_first_for_what_it_ships() {
    let local = Local {
        url: "http://127.0.0.1:3172".into(),
        registries: ["docker.io", "registry.k8s.io"].map(String::from).into(),
    };
    // With no registry document: a hosts file for each registry it ships, it before the
    // registry itself.
    let s = super::settings(&cfg(""), &local);
    assert_eq!(
        s.files.keys().collect::<Vec<_>>(),
        ["docker.io/hosts.toml", "registry.k8s.io/hosts.toml"]
    );
    let t = file(&s, "registry.k8s.io/hosts.toml");
    assert!(
        t.contains("server = \"https://registry.k8s.io\"\n")
            && t.contains(
                "[host.\"http://127.0.0.1:3172\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        "{t}"
    );
    // A user's mirrors of a registry it ships come after it; a registry it does not ship
    // does not have it; `*` (the other registries) does not either.
    let s = super::settings(
        &cfg("---
apiVersion: v1alpha1
kind: RegistryMirrorConfig
name: docker.io
endpoints:
  - url: http://10.5.0.1:5000
---
apiVersion: v1alpha1
kind: RegistryMirrorConfig
name: '*'
endpoints:
  - url: http://10.5.0.1:5001
---
apiVersion: v1alpha1
kind: RegistryMirrorConfig
name: quay.io
endpoints:
  - url: http://10.5.0.1:5002
"),
        &local,
    );
    let d = file(&s, "docker.io/hosts.toml");
    let (own, mirror) = (
        d.find("[host.\"http://127.0.0.1:3172\"]").unwrap(),
        d.find("[host.\"http://10.5.0.1:5000\"]").unwrap(),
    );
    assert!(own < mirror, "{d}");
    // registry.k8s.io has no document of its own: `*`'s mirrors, after the node's.
    let k = file(&s, "registry.k8s.io/hosts.toml");
    let (own, mirror) = (
        k.find("[host.\"http://127.0.0.1:3172\"]").unwrap(),
        k.find("[host.\"http://10.5.0.1:5001\"]").unwrap(),
    );
    assert!(own < mirror, "{k}");
    for other in ["quay.io/hosts.toml", "_default/hosts.toml"] {
        assert!(!file(&s, other).contains("127.0.0.1:3172"), "{other}");
    }
    // Without fallback, the user's last mirror still stands where the registry would, and
    // the node's registry is still asked first.
    let s = super::settings(
        &cfg("---
apiVersion: v1alpha1
kind: RegistryMirrorConfig
name: docker.io
skipFallback: true
endpoints:
  - url: http://10.5.0.1:5000
"),
        &local,
    );
    let d = file(&s, "docker.io/hosts.toml");
    assert!(
        d.contains("server = \"http://10.5.0.1:5000\"")
            && d.contains("[host.\"http://127.0.0.1:3172\"]")
            && !d.contains("registry-1.docker.io"),
        "{d}"
    );
}
