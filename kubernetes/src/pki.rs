//! The node's Kubernetes PKI, issued at boot from the CAs in the config (like apid's
//! certificate, nothing of it is kept: a new boot issues it again, so a CA rotated in the config
//! takes effect at the next boot).
//!
//! Control planes: etcd's server, peer and client certificates (etcd CA); the API server's
//! serving certificate, its kubelet and etcd client certificates, the controller manager's and
//! scheduler's kubeconfigs, an admin kubeconfig for init itself (Kubernetes CA); the
//! front-proxy client (front-proxy CA, when the config has one); the service-account key pair.
//! Every node: the Kubernetes CA certificate and the kubelet's bootstrap kubeconfig (the
//! bootstrap token: the kubelet gets its client certificate through a CSR the control plane
//! approves, so workers never hold a CA key).

use std::net::IpAddr;
use std::path::Path;

use basalt_config::Config;
use basalt_config::pki::{CertAndKey, Usage, issue};
use basalt_config::v1alpha1::MachineType;
use base64::Engine as _;

/// Where the files go (tmpfs: issued again at every boot).
pub const DIR: &str = "/system/secrets/kubernetes";

/// The API server's port on every control plane.
pub const APISERVER_PORT: u16 = 6443;

/// Days a leaf certificate is valid (issued again at every boot).
const DAYS: i64 = 365;

/// One file of the PKI: path relative to [`DIR`], contents, mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub path: String,
    pub data: String,
    pub mode: u32,
}

/// What the certificates are issued for.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub hostname: String,
    pub addresses: Vec<IpAddr>,
}

/// Why the node's Kubernetes PKI (or an admin kubeconfig) could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum KubePkiError {
    #[error("a control plane needs {0} in the config's Secrets")]
    Missing(&'static str),
    #[error("this node holds no Kubernetes CA key (a worker): ask a control plane")]
    NoCaKey,
    #[error("cannot issue {what}")]
    Issue {
        what: String,
        #[source]
        source: basalt_config::pki::PkiError,
    },
}

/// Every file this node needs, issued from the config's CAs.
pub fn issue_all(config: &Config, node: &NodeInfo) -> Result<Vec<File>, KubePkiError> {
    let s = config.secrets();
    let c = config.cluster();
    let k8s_ca_pem = s.certs.kubernetes.crt.0.as_str().to_string();
    let mut out = vec![file("ca.crt", &k8s_ca_pem, 0o644)];
    out.push(file(
        "bootstrap.kubeconfig",
        &kubeconfig(
            &c.name.to_string(),
            &endpoint_url(config),
            &k8s_ca_pem,
            "kubelet-bootstrap",
            &Credential::Token(s.bootstrap_token.as_str().to_string()),
        ),
        0o600,
    ));
    if config.machine().machine_type != MachineType::ControlPlane {
        return Ok(out);
    }

    let need = KubePkiError::Missing;
    let k8s = CertAndKey {
        crt: s.certs.kubernetes.crt.clone(),
        key: s
            .certs
            .kubernetes
            .key
            .clone()
            .ok_or_else(|| need("certs.kubernetes.key"))?,
    };
    let etcd_ca = s.certs.etcd.as_ref().ok_or_else(|| need("certs.etcd"))?;
    let etcd = CertAndKey {
        crt: etcd_ca.crt.clone(),
        key: etcd_ca.key.clone().ok_or_else(|| need("certs.etcd.key"))?,
    };
    let sa = s
        .service_account_key
        .as_ref()
        .ok_or_else(|| need("serviceAccountKey"))?;
    let err = |what: &str| {
        let what = what.to_string();
        move |source| KubePkiError::Issue { what, source }
    };
    let leaf = |ca: &CertAndKey,
                name: &str,
                cn: &str,
                orgs: &[&str],
                sans: &[String],
                usage: Usage,
                out: &mut Vec<File>|
     -> Result<CertAndKey, KubePkiError> {
        let c = issue(ca, cn, orgs, sans, usage, DAYS).map_err(err(name))?;
        out.push(file(&format!("{name}.crt"), c.crt.0.as_str(), 0o644));
        out.push(file(&format!("{name}.key"), c.key.0.as_str(), 0o600));
        Ok(c)
    };

    // etcd: its peers and clients reach it at the node's addresses and on loopback.
    let mut etcd_sans = vec![
        node.hostname.clone(),
        "localhost".into(),
        "127.0.0.1".into(),
        "::1".into(),
    ];
    etcd_sans.extend(node.addresses.iter().map(IpAddr::to_string));
    out.push(file("etcd/ca.crt", etcd.crt.0.as_str(), 0o644));
    let h = node.hostname.as_str();
    leaf(
        &etcd,
        "etcd/server",
        h,
        &[],
        &etcd_sans,
        Usage::ServerAndClient,
        &mut out,
    )?;
    leaf(
        &etcd,
        "etcd/peer",
        h,
        &[],
        &etcd_sans,
        Usage::ServerAndClient,
        &mut out,
    )?;
    // init's own client (bootstrap, members, snapshots) and the API server's.
    leaf(
        &etcd,
        "etcd/client",
        "basalt-init",
        &[],
        &[],
        Usage::Client,
        &mut out,
    )?;
    leaf(
        &etcd,
        "apiserver-etcd-client",
        "kube-apiserver-etcd-client",
        &[],
        &[],
        Usage::Client,
        &mut out,
    )?;

    // The API server.
    out.push(file("ca.key", k8s.key.0.as_str(), 0o600));
    leaf(
        &k8s,
        "apiserver",
        "kube-apiserver",
        &[],
        &apiserver_sans(config, node),
        Usage::Server,
        &mut out,
    )?;
    leaf(
        &k8s,
        "apiserver-kubelet-client",
        "kube-apiserver-kubelet-client",
        &["system:masters"],
        &[],
        Usage::Client,
        &mut out,
    )?;
    if let Some(fp) = &s.certs.front_proxy {
        let fp = CertAndKey {
            crt: fp.crt.clone(),
            key: fp.key.clone().ok_or_else(|| need("certs.frontProxy.key"))?,
        };
        out.push(file("front-proxy-ca.crt", fp.crt.0.as_str(), 0o644));
        leaf(
            &fp,
            "front-proxy-client",
            "front-proxy-client",
            &[],
            &[],
            Usage::Client,
            &mut out,
        )?;
    }
    out.push(file("sa.key", sa.0.as_str(), 0o600));
    if let Some(k) = &s.secretbox_key {
        out.push(file(
            "encryption.yaml",
            &encryption_config(k.bytes()),
            0o600,
        ));
    }
    let public =
        basalt_config::pki::public_key_pem(sa).map_err(err("the service-account public key"))?;
    out.push(file("sa.pub", &public, 0o644));

    // Local clients of the API server: through loopback, which the serving certificate names.
    let local = format!("https://127.0.0.1:{APISERVER_PORT}");
    for (name, cn, orgs) in [
        (
            "controller-manager",
            "system:kube-controller-manager",
            &[][..],
        ),
        ("scheduler", "system:kube-scheduler", &[][..]),
        ("admin", "basalt:admin", &["system:masters"][..]),
    ] {
        let c = issue(&k8s, cn, orgs, &[], Usage::Client, DAYS).map_err(err(cn))?;
        if name == "admin" {
            // init's own client of the API server (health, the cluster's first objects).
            out.push(file("admin.crt", c.crt.0.as_str(), 0o644));
            out.push(file("admin.key", c.key.0.as_str(), 0o600));
        }
        out.push(file(
            &format!("{name}.kubeconfig"),
            &kubeconfig(
                &c_name(config),
                &local,
                &k8s_ca_pem,
                cn,
                &Credential::Certificate {
                    crt: c.crt.0.as_str().to_string(),
                    key: c.key.0.as_str().to_string(),
                },
            ),
            0o600,
        ));
    }
    Ok(out)
}

fn c_name(config: &Config) -> String {
    config.cluster().name.to_string()
}

fn file(path: &str, data: &str, mode: u32) -> File {
    File {
        path: path.to_string(),
        data: data.to_string(),
        mode,
    }
}

/// A new admin kubeconfig (`osctl kubeconfig`): a client certificate in `system:masters`,
/// valid a year, for the cluster endpoint; the context is `admin@<cluster>`.
pub fn admin_kubeconfig(config: &Config) -> Result<String, KubePkiError> {
    let s = config.secrets();
    let key = s
        .certs
        .kubernetes
        .key
        .clone()
        .ok_or(KubePkiError::NoCaKey)?;
    let ca = CertAndKey {
        crt: s.certs.kubernetes.crt.clone(),
        key,
    };
    let c =
        issue(&ca, "admin", &["system:masters"], &[], Usage::Client, DAYS).map_err(|source| {
            KubePkiError::Issue {
                what: "the admin certificate".into(),
                source,
            }
        })?;
    Ok(kubeconfig(
        &c_name(config),
        &endpoint_url(config),
        s.certs.kubernetes.crt.0.as_str(),
        "admin",
        &Credential::Certificate {
            crt: c.crt.0.as_str().to_string(),
            key: c.key.0.as_str().to_string(),
        },
    ))
}

/// The cluster's API endpoint as a URL (`https://host:port`).
pub fn endpoint_url(config: &Config) -> String {
    let e = &config.cluster().control_plane.endpoint;
    format!("{}://{}:{}", e.scheme, e.host, e.port)
}

/// The first address of the first service subnet: the `kubernetes` service's cluster IP.
/// (10.96.0.0/12, Kubernetes' default, when the config names none).
pub fn service_ip(config: &Config) -> IpAddr {
    let base = config
        .cluster()
        .network
        .as_ref()
        .and_then(|n| n.service_subnets.first().copied())
        .map_or(IpAddr::V4(std::net::Ipv4Addr::new(10, 96, 0, 0)), |p| {
            p.addr()
        });
    nth_address(base, 1)
}

/// `base + n` (within the address family).
pub fn nth_address(base: IpAddr, n: u32) -> IpAddr {
    match base {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a).wrapping_add(n)).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a).wrapping_add(u128::from(n))).into()),
    }
}

/// Names and addresses the API server is reached at: the in-cluster service names, the
/// service IP, loopback, the node's name and addresses, the endpoint's host and `certSANs`.
pub fn apiserver_sans(config: &Config, node: &NodeInfo) -> Vec<String> {
    let domain = config
        .cluster()
        .network
        .as_ref()
        .map_or_else(|| "cluster.local".to_string(), |n| n.dns_domain.to_string());
    let mut sans: Vec<String> = vec![
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        format!("kubernetes.default.svc.{domain}"),
        "localhost".into(),
        "127.0.0.1".into(),
        service_ip(config).to_string(),
        node.hostname.clone(),
        config.cluster().control_plane.endpoint.host.clone(),
    ];
    sans.extend(node.addresses.iter().map(IpAddr::to_string));
    sans.extend(config.machine().cert_sans.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    sans.retain(|s| !s.is_empty() && seen.insert(s.clone()));
    sans
}

/// How a kubeconfig's user authenticates.
#[derive(Debug, Clone)]
pub enum Credential {
    Certificate {
        crt: String,
        key: String,
    },
    Token(String),
    /// Certificate and key by path (read again when they change: the kubelet's rotated ones).
    Files {
        crt: String,
        key: String,
    },
}

/// A kubeconfig with one cluster, one user and one context, all data inline (base64).
pub fn kubeconfig(
    cluster: &str,
    server: &str,
    ca_pem: &str,
    user: &str,
    cred: &Credential,
) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let user_fields = match cred {
        Credential::Certificate { crt, key } => format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(crt),
            b64(key)
        ),
        Credential::Token(t) => format!("    token: {t}\n"),
        Credential::Files { crt, key } => {
            format!("    client-certificate: {crt}\n    client-key: {key}\n")
        }
    };
    // The user entry is named like the context: `admin` of two clusters are two users.
    let context = format!("{user}@{cluster}");
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {cluster}\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {context}\n  user:\n{user_fields}contexts:\n- name: {context}\n  context:\n    cluster: {cluster}\n    user: {context}\ncurrent-context: {context}\n",
        ca = b64(ca_pem),
    )
}

/// Writes every file under `dir` atomically, with its mode; files no longer issued (a node
/// that stopped being a control plane) are removed.
pub fn write(dir: &Path, files: &[File]) -> std::io::Result<()> {
    use basalt_sys::fs::atomic_write;
    for f in files {
        atomic_write(&dir.join(&f.path), f.data.as_bytes(), f.mode)?;
    }
    let keep: std::collections::HashSet<std::path::PathBuf> =
        files.iter().map(|f| dir.join(&f.path)).collect();
    for sub in [dir.to_path_buf(), dir.join("etcd")] {
        if let Ok(rd) = std::fs::read_dir(&sub) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_file() && !keep.contains(&p) {
                    std::fs::remove_file(&p)?;
                }
            }
        }
    }
    Ok(())
}

/// The API server's encryption-at-rest config: secrets sealed with the config's secretbox key
/// (XSalsa20-Poly1305), reading unencrypted ones written before.
pub fn encryption_config(key: &[u8; 32]) -> String {
    format!(
        "apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources: [secrets]
  providers:
  - secretbox:
      keys:
      - name: basalt
        secret: {}
  - identity: {{}}
",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

#[cfg(test)]
#[path = "pki_tests.rs"]
mod tests;
