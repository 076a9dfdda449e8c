use super::*;

use crate::test_configs as configs;

fn node() -> NodeInfo {
    NodeInfo {
        hostname: "cp-1".into(),
        addresses: vec!["10.5.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
    }
}

fn get<'a>(files: &'a [File], path: &str) -> &'a File {
    files.iter().find(|f| f.path == path).unwrap_or_else(|| {
        panic!(
            "no {path} in {:?}",
            files.iter().map(|f| &f.path).collect::<Vec<_>>()
        )
    })
}

/// `openssl` on a certificate written to `dir` (another implementation checks ours).
fn openssl(dir: &Path, args: &[&str]) -> String {
    let o = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed (hack/test installs it)");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_control_plane_gets_every_certificate_chained_to_its_ca() {
    let g = configs();
    let files = issue_all(&g.controlplane, &node()).unwrap();
    let d = tempfile::tempdir().unwrap();
    write(d.path(), &files).unwrap();
    for (leaf, ca) in [
        ("apiserver.crt", "ca.crt"),
        ("apiserver-kubelet-client.crt", "ca.crt"),
        ("etcd/server.crt", "etcd/ca.crt"),
        ("etcd/peer.crt", "etcd/ca.crt"),
        ("etcd/client.crt", "etcd/ca.crt"),
        ("apiserver-etcd-client.crt", "etcd/ca.crt"),
        ("front-proxy-client.crt", "front-proxy-ca.crt"),
    ] {
        let out = openssl(d.path(), &["verify", "-CAfile", ca, leaf]);
        assert!(out.contains(": OK"), "{leaf}: {out}");
    }
    // The serving certificate names every way the API server is reached.
    let sans = openssl(
        d.path(),
        &[
            "x509",
            "-in",
            "apiserver.crt",
            "-noout",
            "-ext",
            "subjectAltName",
        ],
    );
    for want in [
        "DNS:kubernetes.default.svc.cluster.local",
        "DNS:cp-1",
        "IP Address:10.96.0.1",
        "IP Address:127.0.0.1",
        "IP Address:10.5.0.2",
        "IP Address:FD00:0:0:0:0:0:0:2",
    ] {
        assert!(sans.contains(want), "{want} not in {sans}");
    }
    // The API server's client for kubelets is a cluster admin; keys are private.
    let subj = openssl(
        d.path(),
        &[
            "x509",
            "-in",
            "apiserver-kubelet-client.crt",
            "-noout",
            "-subject",
        ],
    );
    assert!(subj.contains("O = system:masters"), "{subj}");
    assert_eq!(get(&files, "sa.key").mode, 0o600);
    assert_eq!(get(&files, "etcd/peer.key").mode, 0o600);
    // sa.pub is the public half of sa.key.
    let derived = openssl(d.path(), &["pkey", "-in", "sa.key", "-pubout"]);
    assert_eq!(derived.trim(), get(&files, "sa.pub").data.trim());
    // The local kubeconfigs reach the API server on loopback with their own identity.
    let cm = &get(&files, "controller-manager.kubeconfig").data;
    assert!(cm.contains("server: https://127.0.0.1:6443"), "{cm}");
    assert!(cm.contains("client-certificate-data: "), "{cm}");
}

#[test]
fn a_worker_gets_the_ca_and_a_bootstrap_kubeconfig_only() {
    let g = configs();
    let files = issue_all(&g.worker, &node()).unwrap();
    let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["ca.crt", "bootstrap.kubeconfig"]);
    let b = &get(&files, "bootstrap.kubeconfig").data;
    let token = g.secrets.bootstrap_token.as_str();
    assert!(b.contains(&format!("token: {token}")), "{b}");
    assert!(b.contains("server: https://10.5.0.2:6443"), "{b}");
    // The kubeconfig's cluster is the config's cluster.
    let cluster = g.worker.cluster().name.to_string();
    assert!(b.contains(&format!("- name: {cluster}\n")), "{b}");
}

#[test]
fn files_no_longer_issued_are_removed() {
    let g = configs();
    let d = tempfile::tempdir().unwrap();
    write(d.path(), &issue_all(&g.controlplane, &node()).unwrap()).unwrap();
    assert!(d.path().join("etcd/peer.key").exists());
    write(d.path(), &issue_all(&g.worker, &node()).unwrap()).unwrap();
    assert!(!d.path().join("etcd/peer.key").exists());
    assert!(!d.path().join("ca.key").exists());
    assert!(d.path().join("bootstrap.kubeconfig").exists());
}

#[test]
fn the_service_ip_is_the_first_of_the_service_subnet() {
    assert_eq!(
        nth_address("10.96.0.0".parse().unwrap(), 1),
        "10.96.0.1".parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        nth_address("fd00::".parse().unwrap(), 10),
        "fd00::a".parse::<IpAddr>().unwrap()
    );
}

#[test]
fn the_encryption_config_holds_the_key_in_base64() {
    let y = encryption_config(&[7u8; 32]);
    assert!(y.contains("- secretbox:"), "{y}");
    assert!(
        y.contains(&base64::engine::general_purpose::STANDARD.encode([7u8; 32])),
        "{y}"
    );
    assert!(y.contains("- identity: {}"), "{y}");
}
