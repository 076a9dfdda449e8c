//! The Kubernetes control plane on control-plane nodes: kube-apiserver, kube-controller-manager
//! and kube-scheduler as services of init's supervisor (not static pods under the kubelet).
//!
//! Why supervised processes: the control plane then depends on nothing but etcd — not on the
//! kubelet, the CRI or an image store — so it comes up in boot order with one restart policy,
//! its logs are `osctl logs kube-apiserver` like every other service's, and a broken kubelet
//! cannot take the API down with it. The binaries are on the read-only root, verified with
//! it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use basalt_config::Config;

use super::https::Https;
use super::pki;
use crate::layout::control_plane_process;
use basalt_supervisor::{Dependency, Health, ServiceDef};

const CONTROLLER_MANAGER_PORT: u16 = 10257;
const SCHEDULER_PORT: u16 = 10259;

/// What the services are made from.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ip: IpAddr,
    pub pki: PathBuf,
    pub service_cidrs: Vec<String>,
    pub pod_cidrs: Vec<String>,
    pub dns_domain: String,
    pub front_proxy: bool,
    pub encryption: bool,
}

impl Settings {
    pub fn from_config(config: &Config, ip: IpAddr, pki: &Path) -> Settings {
        let (pod_cidrs, service_cidrs) = crate::layout::cluster_cidrs(config);
        Settings {
            ip,
            pki: pki.to_path_buf(),
            service_cidrs,
            pod_cidrs,
            dns_domain: crate::layout::dns_domain(config),
            front_proxy: config.secrets().certs.front_proxy.is_some(),
            encryption: config.secrets().secretbox_key.is_some(),
        }
    }

    fn p(&self, f: &str) -> String {
        self.pki.join(f).display().to_string()
    }
}

pub fn apiserver_args(s: &Settings) -> Vec<String> {
    let mut a = vec![
        format!("--advertise-address={}", s.ip),
        format!("--secure-port={}", pki::APISERVER_PORT),
        "--etcd-servers=https://127.0.0.1:2379".into(),
        format!("--etcd-cafile={}", s.p("etcd/ca.crt")),
        format!("--etcd-certfile={}", s.p("apiserver-etcd-client.crt")),
        format!("--etcd-keyfile={}", s.p("apiserver-etcd-client.key")),
        format!("--tls-cert-file={}", s.p("apiserver.crt")),
        format!("--tls-private-key-file={}", s.p("apiserver.key")),
        format!("--client-ca-file={}", s.p("ca.crt")),
        format!(
            "--kubelet-client-certificate={}",
            s.p("apiserver-kubelet-client.crt")
        ),
        format!(
            "--kubelet-client-key={}",
            s.p("apiserver-kubelet-client.key")
        ),
        "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname".into(),
        format!("--service-account-key-file={}", s.p("sa.pub")),
        format!("--service-account-signing-key-file={}", s.p("sa.key")),
        format!(
            "--service-account-issuer=https://kubernetes.default.svc.{}",
            s.dns_domain
        ),
        format!("--service-cluster-ip-range={}", s.service_cidrs.join(",")),
        "--authorization-mode=Node,RBAC".into(),
        "--enable-admission-plugins=NodeRestriction".into(),
        "--enable-bootstrap-token-auth=true".into(),
        "--allow-privileged=true".into(),
        "--profiling=false".into(),
    ];
    if s.front_proxy {
        a.extend([
            format!(
                "--requestheader-client-ca-file={}",
                s.p("front-proxy-ca.crt")
            ),
            format!("--proxy-client-cert-file={}", s.p("front-proxy-client.crt")),
            format!("--proxy-client-key-file={}", s.p("front-proxy-client.key")),
            "--requestheader-allowed-names=front-proxy-client".into(),
            "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
            "--requestheader-group-headers=X-Remote-Group".into(),
            "--requestheader-username-headers=X-Remote-User".into(),
        ]);
    }
    if s.encryption {
        // Written beside the PKI (it holds the secretbox key).
        a.push(format!(
            "--encryption-provider-config={}",
            s.p("encryption.yaml")
        ));
    }
    a
}

pub fn controller_manager_args(s: &Settings) -> Vec<String> {
    let kc = s.p("controller-manager.kubeconfig");
    let mut a = vec![
        format!("--kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={CONTROLLER_MANAGER_PORT}"),
        format!("--client-ca-file={}", s.p("ca.crt")),
        format!("--root-ca-file={}", s.p("ca.crt")),
        format!("--cluster-signing-cert-file={}", s.p("ca.crt")),
        format!("--cluster-signing-key-file={}", s.p("ca.key")),
        format!("--service-account-private-key-file={}", s.p("sa.key")),
        "--use-service-account-credentials=true".into(),
        // The bootstrap token's signer and cleaner are off by default.
        "--controllers=*,bootstrapsigner,tokencleaner".into(),
        "--leader-elect=true".into(),
        // Each node gets a pod CIDR of its own from the cluster's.
        "--allocate-node-cidrs=true".into(),
        format!("--cluster-cidr={}", s.pod_cidrs.join(",")),
        format!("--service-cluster-ip-range={}", s.service_cidrs.join(",")),
        "--profiling=false".into(),
    ];
    if s.front_proxy {
        a.push(format!(
            "--requestheader-client-ca-file={}",
            s.p("front-proxy-ca.crt")
        ));
    }
    a
}

pub fn scheduler_args(s: &Settings) -> Vec<String> {
    let kc = s.p("scheduler.kubeconfig");
    vec![
        format!("--kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={SCHEDULER_PORT}"),
        "--leader-elect=true".into(),
        "--profiling=false".into(),
    ]
}

/// A check of `path`, every 5 s, that may take up to `timeout` (an API server busy starting
/// on an emulated CPU answers `/readyz` in 5 s and more: a short timeout would keep it
/// unhealthy, and what depends on it waiting, for minutes).
fn health(
    check: impl Fn() -> Https + Send + Sync + 'static,
    path: &'static str,
    timeout: Duration,
) -> Health {
    let check = std::sync::Arc::new(check);
    Health {
        check: std::sync::Arc::new(move || {
            let c = check();
            Box::pin(async move {
                let r = c.get(path).await?;
                if r.status.is_success() {
                    Ok(())
                } else {
                    Err(format!(
                        "{path}: {}: {}",
                        r.status,
                        String::from_utf8_lossy(&r.body).trim()
                    )
                    .into())
                }
            })
        }),
        interval: Duration::from_secs(5),
        timeout,
    }
}

/// The three services, in the order they start.
pub fn services(s: &Settings) -> Vec<ServiceDef> {
    let mut api = ServiceDef::new(
        "kube-apiserver",
        control_plane_process("/usr/bin/kube-apiserver", apiserver_args(s)),
    );
    api.depends = vec![Dependency::Service("etcd".into())];
    let pki_dir = s.pki.clone();
    api.health = Some(health(
        move || {
            Https::from_files(
                "127.0.0.1",
                pki::APISERVER_PORT,
                &pki_dir.join("ca.crt"),
                &pki_dir.join("admin.crt"),
                &pki_dir.join("admin.key"),
            )
            .unwrap_or_else(|_| Https::unverified("127.0.0.1", pki::APISERVER_PORT))
            .with_timeout(Duration::from_secs(30))
        },
        "/readyz",
        Duration::from_secs(30),
    ));
    api.stop_timeout = Duration::from_secs(30);

    let mut cm = ServiceDef::new(
        "kube-controller-manager",
        control_plane_process(
            "/usr/bin/kube-controller-manager",
            controller_manager_args(s),
        ),
    );
    cm.depends = vec![Dependency::Service("kube-apiserver".into())];
    cm.health = Some(health(
        || Https::unverified("127.0.0.1", CONTROLLER_MANAGER_PORT),
        "/healthz",
        Duration::from_secs(10),
    ));

    let mut sched = ServiceDef::new(
        "kube-scheduler",
        control_plane_process("/usr/bin/kube-scheduler", scheduler_args(s)),
    );
    sched.depends = vec![Dependency::Service("kube-apiserver".into())];
    sched.health = Some(health(
        || Https::unverified("127.0.0.1", SCHEDULER_PORT),
        "/healthz",
        Duration::from_secs(10),
    ));
    vec![api, cm, sched]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            ip: "10.5.0.2".parse().unwrap(),
            pki: "/pki".into(),
            service_cidrs: vec!["10.96.0.0/12".into()],
            pod_cidrs: vec!["10.244.0.0/16".into()],
            dns_domain: "cluster.local".into(),
            front_proxy: true,
            encryption: true,
        }
    }

    #[test]
    fn the_api_server_uses_the_nodes_pki_and_the_clusters_networks() {
        let a = apiserver_args(&settings());
        for want in [
            "--advertise-address=10.5.0.2",
            "--etcd-servers=https://127.0.0.1:2379",
            "--etcd-certfile=/pki/apiserver-etcd-client.crt",
            "--client-ca-file=/pki/ca.crt",
            "--service-cluster-ip-range=10.96.0.0/12",
            "--authorization-mode=Node,RBAC",
            "--enable-bootstrap-token-auth=true",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--requestheader-client-ca-file=/pki/front-proxy-ca.crt",
            "--encryption-provider-config=/pki/encryption.yaml",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} not in {a:#?}");
        }
        let mut s = settings();
        s.front_proxy = false;
        s.encryption = false;
        let a = apiserver_args(&s);
        assert!(
            !a.iter()
                .any(|x| x.contains("requestheader") || x.contains("encryption"))
        );
        let cm = controller_manager_args(&settings());
        assert!(
            cm.iter().any(|x| x == "--cluster-cidr=10.244.0.0/16"),
            "{cm:#?}"
        );
        assert!(cm.iter().any(|x| x == "--allocate-node-cidrs=true"));
        assert!(
            cm.iter()
                .any(|x| x == "--cluster-signing-key-file=/pki/ca.key")
        );
    }

    #[test]
    fn services_start_in_order() {
        let s = services(&settings());
        let ids: Vec<&str> = s.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler"
            ]
        );
        assert!(matches!(&s[0].depends[..], [Dependency::Service(e)] if e == "etcd"));
        assert!(matches!(&s[2].depends[..], [Dependency::Service(a)] if a == "kube-apiserver"));
        // The control plane comes first when the CPU is short; the kubelet does not.
        let etcd = crate::etcd::service(PathBuf::from("/pki"));
        for def in s.iter().chain([&etcd]) {
            assert_eq!(def.process.cpu_weight, Some(400), "{}", def.id);
        }
        let kubelet = crate::kubelet::service(Vec::new());
        assert_eq!(kubelet.process.cpu_weight, None);
    }
}
