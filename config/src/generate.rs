//! `gen config`: a new cluster's secrets, PKI, machine configs and client config.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::client::{ClientConfig, Context};
use crate::document::Document;
use crate::pki::{self, CertAndKey, PkiError, Usage};
use crate::types::{BootstrapToken, Endpoint, Hostname, Key32};
use crate::v1alpha1::*;
use crate::{Config, ConfigError, Mode, ValueError};

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("cannot create the cluster PKI")]
    Pki(#[from] PkiError),
    /// The bundle has no OS CA key, which signs what is being made (`what`).
    #[error(
        "the secrets bundle is not usable: certs.os.key is missing: only the OS CA key can sign {0}"
    )]
    NoOsCaKey(&'static str),
    #[error(
        "the secrets bundle is not usable: it must hold the Kubernetes and etcd CA keys (use the bundle gen secrets wrote)"
    )]
    NoClusterCaKeys,
    #[error("a built-in default is invalid (a bug in gen config): {0}")]
    Default(ValueError),
    #[error("generated config is invalid (a bug in gen config)")]
    Invalid(#[source] ConfigError),
}

/// What `gen config` takes.
#[derive(Debug, Clone)]
pub struct GenOptions {
    pub cluster_name: Hostname,
    pub endpoint: Endpoint,
    pub with_kubespan: bool,
    /// Reuse these secrets instead of making new ones (`--with-secrets`).
    pub secrets: Option<SecretsConfig>,
    pub install_disk: Option<String>,
}

/// What `gen config` makes.
#[derive(Debug, Clone)]
pub struct Generated {
    pub controlplane: Config,
    pub worker: Config,
    pub client: ClientConfig,
    /// The full secrets, to save with `gen secrets` and reuse with `--with-secrets`.
    pub secrets: SecretsConfig,
}

/// The cluster ID is derived from the cluster secret, so one secrets bundle always gives one
/// cluster ID; the hash reveals nothing of the secret.
pub fn cluster_id(secret: &Key32) -> Key32 {
    let mut h = Sha256::new();
    h.update(b"basalt cluster id v1\0");
    h.update(secret.bytes());
    Key32::from_bytes(h.finalize().into())
}

/// New secrets: cluster secret, bootstrap token, secretbox key, service-account key and the
/// OS, Kubernetes, etcd and front-proxy CAs.
pub fn new_secrets() -> Result<SecretsConfig, GenerateError> {
    let ca = |cn: &str, org: Option<&str>| -> Result<CertificateAuthority, GenerateError> {
        let CertAndKey { crt, key } = pki::new_ca(cn, org, 10)?;
        Ok(CertificateAuthority {
            crt,
            key: Some(key),
        })
    };
    Ok(SecretsConfig {
        cluster_secret: Key32::generate(),
        bootstrap_token: BootstrapToken::generate(),
        secretbox_key: Some(Key32::generate()),
        service_account_key: Some(pki::new_key("service-account key")?),
        certs: ClusterCAs {
            os: ca("basalt-os", Some("basalt"))?,
            kubernetes: ca("kubernetes", None)?,
            etcd: Some(ca("etcd", None)?),
            front_proxy: Some(ca("front-proxy-ca", None)?),
        },
    })
}

/// The subset of the secrets a worker holds: no etcd, no signing keys but the OS CA's.
pub fn worker_secrets(full: &SecretsConfig) -> SecretsConfig {
    SecretsConfig {
        cluster_secret: full.cluster_secret.clone(),
        bootstrap_token: full.bootstrap_token.clone(),
        secretbox_key: None,
        service_account_key: None,
        certs: ClusterCAs {
            os: full.certs.os.clone(),
            kubernetes: CertificateAuthority {
                crt: full.certs.kubernetes.crt.clone(),
                key: None,
            },
            etcd: None,
            front_proxy: None,
        },
    }
}

pub fn generate(opts: &GenOptions) -> Result<Generated, GenerateError> {
    let secrets = match &opts.secrets {
        Some(s) => s.clone(),
        None => new_secrets()?,
    };
    if secrets.certs.os.key.is_none() {
        return Err(GenerateError::NoOsCaKey("the admin certificate"));
    }
    if secrets.certs.kubernetes.key.is_none() || secrets.certs.etcd.is_none() {
        return Err(GenerateError::NoClusterCaKeys);
    }
    let cluster = ClusterConfig {
        name: opts.cluster_name.clone(),
        id: cluster_id(&secrets.cluster_secret),
        control_plane: ControlPlaneConfig {
            endpoint: opts.endpoint.clone(),
        },
        network: Some(ClusterNetworkConfig {
            pod_subnets: vec!["10.244.0.0/16".parse().map_err(GenerateError::Default)?],
            service_subnets: vec!["10.96.0.0/12".parse().map_err(GenerateError::Default)?],
            dns_domain: "cluster.local".parse().map_err(GenerateError::Default)?,
        }),
        allow_scheduling_on_control_planes: false,
        core_dns: None,
        proxy: None,
        storage: None,
        inline_manifests: Vec::new(),
    };
    let machine = |machine_type| MachineConfig {
        machine_type,
        install: opts.install_disk.clone().map(|disk| InstallConfig {
            disk: Some(disk),
            disk_selector: None,
            wipe: false,
        }),
        cert_sans: Vec::new(),
        kubelet: None,
        node_labels: BTreeMap::new(),
    };
    // KubeSpan's nodes meet at a discovery server the control plane runs, over TLS with the
    // control plane's certificate from the OS CA.
    let extras = |serve: bool| -> Vec<Document> {
        if !opts.with_kubespan {
            return Vec::new();
        }
        vec![
            Document::KubeSpan(KubeSpanConfig {
                enabled: true,
                mtu: 1420,
                advertise_pod_networks: true,
                allow_relay: true,
                peer_down_after: crate::types::Duration::from_std(std::time::Duration::from_secs(
                    275,
                )),
            }),
            Document::Discovery(DiscoveryConfig {
                enabled: true,
                endpoint: Some(Endpoint {
                    scheme: "https".into(),
                    host: opts.endpoint.host.clone(),
                    port: 3000,
                    path: String::new(),
                }),
                serve,
            }),
        ]
    };
    let mut cp_docs = vec![
        Document::Machine(machine(MachineType::ControlPlane)),
        Document::Cluster(cluster.clone()),
        Document::Secrets(secrets.clone()),
    ];
    cp_docs.extend(extras(true));
    let mut worker_docs = vec![
        Document::Machine(machine(MachineType::Worker)),
        Document::Cluster(cluster),
        Document::Secrets(worker_secrets(&secrets)),
    ];
    worker_docs.extend(extras(false));
    let controlplane =
        Config::from_documents(cp_docs, Mode::Metal).map_err(GenerateError::Invalid)?;
    let worker =
        Config::from_documents(worker_docs, Mode::Metal).map_err(GenerateError::Invalid)?;

    let client = client_config(
        &secrets,
        &opts.cluster_name.to_string(),
        vec![opts.endpoint.host.clone()],
        "os:admin",
        365,
    )?;
    Ok(Generated {
        controlplane,
        worker,
        client,
        secrets,
    })
}

/// A client config with one context, `name`, holding a certificate for `role` (`os:admin`,
/// `os:operator`, `os:reader`) issued from the OS CA in `secrets`, valid for `days` days.
pub fn client_config(
    secrets: &SecretsConfig,
    name: &str,
    endpoints: Vec<String>,
    role: &str,
    days: i64,
) -> Result<ClientConfig, GenerateError> {
    let key = secrets
        .certs
        .os
        .key
        .clone()
        .ok_or(GenerateError::NoOsCaKey("client certificates"))?;
    let os_ca = CertAndKey {
        crt: secrets.certs.os.crt.clone(),
        key,
    };
    let cn = role.strip_prefix("os:").unwrap_or(role);
    let cert = pki::issue(&os_ca, cn, &[role], &[], Usage::Client, days)?;
    Ok(ClientConfig {
        context: Some(name.to_string()),
        contexts: BTreeMap::from([(
            name.to_string(),
            Context {
                endpoints,
                nodes: Vec::new(),
                ca: secrets.certs.os.crt.clone(),
                crt: cert.crt,
                key: cert.key,
                netns: None,
            },
        )]),
    })
}

/// Reads a secrets bundle written by `gen secrets`: one `Secrets` document.
pub fn parse_secrets(text: &str) -> Result<SecretsConfig, ConfigError> {
    let nodes = crate::yaml::parse_documents(text)?;
    let (docs, problems) = crate::document::decode_documents(&nodes);
    let mut problems = problems;
    let found: Vec<_> = docs
        .into_iter()
        .filter_map(|d| match d.doc {
            Document::Secrets(s) => Some(s),
            _ => None,
        })
        .collect();
    if problems.is_empty() && found.len() != 1 {
        problems.push(crate::Problem {
            doc: None,
            path: String::new(),
            message: format!(
                "a secrets bundle holds exactly one Secrets document, found {}",
                found.len()
            ),
            line: None,
        });
    }
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(crate::Problems(problems)));
    }
    Ok(found.into_iter().next().expect("checked above"))
}

/// Renders a secrets bundle.
pub fn secrets_to_yaml(s: &SecretsConfig) -> String {
    crate::yaml::to_yaml_text(&Document::Secrets(s.clone()).to_json())
}
