//! Kubernetes on the node (an image built with Kubernetes has `/usr/bin/kubelet`): its PKI
//! from the config's CAs, and on control planes etcd — bootstrapped once by `osctl bootstrap`,
//! joined by every other control plane by itself — then the API server, controller manager and
//! scheduler, and on every node the kubelet after its TLS bootstrap.
//!
//! What it must not do: own the node's lifecycle (init decides when this starts) or run a
//! process itself (every program is a service of `basalt-supervisor`).

pub mod addons;
pub mod controllers;
pub mod controlplane;
pub mod drain;
pub mod etcd;
pub mod https;
pub mod kubelet;
pub mod layout;
pub mod node;
pub mod pki;
pub mod podroutes;
pub mod proxy;
pub mod tlsboot;

pub use kubelet::prepare_cri;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use basalt_config::Config;
use basalt_config::v1alpha1::MachineType;

use basalt_supervisor::Supervisor;

pub use layout::{KUBELET, available};

/// Why a Kubernetes request was refused.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    // What does not apply to this node ([`KubeError::is_not_here`]).
    #[error("this node's image has no Kubernetes (build it with --kubernetes)")]
    NoKubernetes,
    #[error("this node runs no etcd: only control planes do")]
    NoEtcd,
    #[error("this node's kubelet is not set up (no config yet, or no node address)")]
    NoKubelet,
    #[error("this node is not a control plane: bootstrap one of the control planes")]
    NotControlPlane,
    #[error("this is etcd's only member: leaving would lose the cluster's data")]
    OnlyMember,
    #[error("cannot make an admin kubeconfig")]
    Kubeconfig(#[source] pki::KubePkiError),

    // What may work a little later.
    #[error("the node has no config yet")]
    NoConfig,
    #[error(
        "the node is not ready to bootstrap yet (no config applied, or no network): try again shortly"
    )]
    NotReadyToBootstrap,
    #[error("cannot set up etcd")]
    EtcdSetup(#[source] FileError),
    #[error("node {0} is not Ready")]
    NodeNotReady(String),
    #[error("node {0} is still cordoned for its reboot")]
    StillCordoned(String),

    // A second bootstrap.
    #[error(
        "etcd is already bootstrapped on this node ({} holds its data): bootstrap runs once per cluster; other control planes join by themselves",
        .0.display()
    )]
    EtcdHasData(PathBuf),
    #[error(
        "etcd at {endpoint} already runs this cluster (members: {}): this node joins it by itself",
        members.join(", ")
    )]
    ClusterExists {
        endpoint: String,
        members: Vec<String>,
    },

    #[error("etcd")]
    Etcd(#[from] etcd::EtcdError),
    #[error("cannot drain the node")]
    Drain(#[from] drain::DrainError),
    #[error("the Kubernetes API")]
    Api(#[from] https::HttpsError),
}

impl KubeError {
    /// Whether the request does not apply to this node (it runs no Kubernetes, no etcd, no
    /// kubelet, …), as against failing or not being possible yet.
    pub fn is_not_here(&self) -> bool {
        matches!(
            self,
            KubeError::NoKubernetes
                | KubeError::NoEtcd
                | KubeError::NoKubelet
                | KubeError::NotControlPlane
                | KubeError::OnlyMember
                | KubeError::Kubeconfig(_)
        )
    }
}

/// A file of Kubernetes' on the node could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {}", path.display())]
pub struct FileError {
    what: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

impl FileError {
    fn write(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
        move |source| FileError {
            what: "write",
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What the node knows of its Kubernetes side, shared by the controller and the API.
#[derive(Debug, Clone, Default)]
pub struct Kube {
    inner: Arc<Mutex<State>>,
    paths: Arc<Paths>,
}

/// Where things go (tests point them elsewhere).
#[derive(Debug, Clone)]
pub struct Paths {
    pub pki: PathBuf,
    pub etcd_data: PathBuf,
    pub etcd_config: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            pki: pki::DIR.into(),
            etcd_data: etcd::DATA_DIR.into(),
            etcd_config: etcd::CONFIG.into(),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Set once the PKI is issued on a control plane.
    me: Option<etcd::Me>,
    controlplane: bool,
    /// The cluster endpoint's host (where a joining control plane finds etcd).
    endpoint_host: String,
    /// etcd's config file is written: it starts (or started) as a member.
    initialized: bool,
    /// This node left etcd (`osctl etcd leave`): it does not join again until it reboots.
    left: bool,
    /// How this node reaches its own `Node` object (set once the kubelet is set up).
    node_access: Option<https::Access>,
}

impl Kube {
    pub fn new(paths: Paths) -> Kube {
        Kube {
            inner: Arc::default(),
            paths: Arc::new(paths),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// init's client of the etcd on this node.
    pub fn local_etcd(&self) -> Result<etcd::Client, KubeError> {
        let s = self.state();
        if !s.controlplane || s.me.is_none() {
            return Err(KubeError::NoEtcd);
        }
        drop(s);
        Ok(etcd::Client::local(&self.paths.pki)?)
    }

    /// How this node reaches its own `Node`, and its name; `NotHere` when it runs no kubelet.
    fn node_object(&self) -> Result<(https::Access, String), KubeError> {
        let s = self.state();
        match (&s.node_access, &s.me) {
            (Some(a), Some(me)) => Ok((a.clone(), me.name.clone())),
            _ if !available() => Err(KubeError::NoKubernetes),
            _ => Err(KubeError::NoKubelet),
        }
    }

    /// Cordons this node and evicts its pods, within `timeout` (before an upgrade's reboot, a
    /// graceful reset). `NotHere` when the node runs no kubelet: nothing to drain.
    pub async fn drain(&self, timeout: Duration) -> Result<String, KubeError> {
        let (access, name) = self.node_object()?;
        Ok(drain::cordon_and_drain(&access, &name, timeout).await?)
    }

    /// For a trial boot's health: `Ok` when the node runs no Kubernetes, or when its `Node` is
    /// Ready and no longer cordoned for the reboot; else why not (`NotReady`).
    pub async fn node_settled(&self) -> Result<(), KubeError> {
        if !available() {
            return Ok(());
        }
        let (access, name) = self.node_object()?;
        let node = access
            .client()?
            .get(&format!("/api/v1/nodes/{name}"))
            .await?
            .json()?;
        if !drain::ready(&node) {
            return Err(KubeError::NodeNotReady(name));
        }
        if drain::cordoned_by(&node).is_some() {
            return Err(KubeError::StillCordoned(name));
        }
        Ok(())
    }

    /// Writes etcd's config for `start` and lets the service start.
    fn initialize(
        &self,
        sup: &Supervisor,
        me: &etcd::Me,
        start: &etcd::Start,
    ) -> Result<(), FileError> {
        let text = etcd::config_yaml(me, start, &self.paths.pki, &self.paths.etcd_data);
        basalt_sys::fs::atomic_write(&self.paths.etcd_config, text.as_bytes(), 0o600)
            .map_err(FileError::write(&self.paths.etcd_config))?;
        std::fs::create_dir_all(&self.paths.etcd_data).map_err(|source| FileError {
            what: "create",
            path: self.paths.etcd_data.clone(),
            source,
        })?;
        self.state().initialized = true;
        sup.set_condition(etcd::INITIALIZED, true);
        Ok(())
    }

    /// `osctl bootstrap`: this control plane becomes the first member of a new etcd cluster.
    /// Refused on a worker, before the node is ready, when etcd has data here, and when the
    /// cluster endpoint's etcd already answers (a second cluster would split the control
    /// plane).
    pub async fn bootstrap(&self, sup: &Supervisor) -> Result<String, KubeError> {
        if !available() {
            return Err(KubeError::NoKubernetes);
        }
        let (me, endpoint_host) = {
            let s = self.state();
            if !s.controlplane {
                return Err(KubeError::NotControlPlane);
            }
            let Some(me) = s.me.clone() else {
                return Err(KubeError::NotReadyToBootstrap);
            };
            if s.initialized || etcd::has_data(&self.paths.etcd_data) {
                return Err(KubeError::EtcdHasData(self.paths.etcd_data.clone()));
            }
            (me, s.endpoint_host.clone())
        };
        if !is_me(&endpoint_host, &me)
            && let Ok(c) = etcd::Client::new(&endpoint_host, &self.paths.pki)
            && let Ok(Ok(members)) = tokio::time::timeout(Duration::from_secs(3), c.members()).await
        {
            return Err(KubeError::ClusterExists {
                endpoint: endpoint_host,
                members: members.iter().map(|m| m.name.clone()).collect(),
            });
        }
        self.initialize(sup, &me, &etcd::Start::New)
            .map_err(KubeError::EtcdSetup)?;
        tracing::info!(
            member = %me.name,
            peer_url = %me.peer_url(),
            "etcd: bootstrapping a new cluster"
        );
        Ok(format!(
            "etcd bootstrapped: {} is the first member ({})",
            me.name,
            me.peer_url()
        ))
    }

    /// `osctl health`: etcd, the API server, every node, and the add-ons the config turns on
    /// (kube-proxy answering on every node, CoreDNS's replicas ready), as this control plane
    /// sees them: (check, passed, what was found).
    pub async fn health(
        &self,
        config: Option<&Config>,
    ) -> Result<Vec<(String, bool, String)>, KubeError> {
        let c = self.local_etcd()?;
        let mut out = Vec::new();
        let etcd = match (c.health().await, c.members().await, c.status().await) {
            (Ok(()), Ok(m), Ok((_, _, leader, _))) => {
                let unstarted = m.iter().filter(|m| m.name.is_empty()).count();
                let leader = m
                    .iter()
                    .find(|x| x.id == leader)
                    .map_or("none".to_string(), |x| x.name.clone());
                (
                    unstarted == 0 && leader != "none",
                    format!(
                        "{} members, leader {leader}{}",
                        m.len(),
                        if unstarted > 0 {
                            format!(", {unstarted} not started")
                        } else {
                            String::new()
                        }
                    ),
                )
            }
            (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => (false, basalt_sys::error_chain(&e)),
        };
        out.push(("etcd".to_string(), etcd.0, etcd.1));
        let pki = &self.paths.pki;
        let api = match https::Https::from_files(
            "127.0.0.1",
            pki::APISERVER_PORT,
            &pki.join("ca.crt"),
            &pki.join("admin.crt"),
            &pki.join("admin.key"),
        ) {
            Ok(a) => a,
            Err(e) => {
                out.push(("kube-apiserver".into(), false, basalt_sys::error_chain(&e)));
                return Ok(out);
            }
        };
        match api.get("/readyz").await {
            Ok(r) if r.status.is_success() => {
                out.push(("kube-apiserver".into(), true, "ready".into()));
            }
            Ok(r) => out.push((
                "kube-apiserver".into(),
                false,
                format!("{}: {}", r.status, String::from_utf8_lossy(&r.body).trim()),
            )),
            Err(e) => {
                out.push(("kube-apiserver".into(), false, basalt_sys::error_chain(&e)));
                return Ok(out);
            }
        }
        let mut node_ips = Vec::new();
        match api.get("/api/v1/nodes").await.and_then(|r| r.json()) {
            Ok(nodes) => {
                let items = nodes["items"].as_array().cloned().unwrap_or_default();
                node_ips = items.iter().filter_map(internal_ip).collect();
                let mut ready = 0;
                let mut each = Vec::new();
                for n in &items {
                    let name = n["metadata"]["name"].as_str().unwrap_or_default();
                    let cond = n["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|c| c["type"] == "Ready");
                    let ok = cond.is_some_and(|c| c["status"] == "True");
                    ready += usize::from(ok);
                    let msg = cond
                        .and_then(|c| c["message"].as_str())
                        .unwrap_or("no Ready condition yet")
                        .to_string();
                    each.push((format!("node/{name}"), ok, msg));
                }
                out.push((
                    "nodes".into(),
                    !items.is_empty() && ready == items.len(),
                    format!("{ready} of {} Ready", items.len()),
                ));
                out.extend(each);
            }
            Err(e) => out.push(("nodes".into(), false, basalt_sys::error_chain(&e))),
        }
        let cluster = config.map(Config::cluster);
        if cluster.is_some_and(|c| c.proxy_enabled()) {
            out.push(proxy_health(&node_ips).await);
        }
        if cluster.is_some_and(|c| c.core_dns_enabled()) {
            out.push(coredns_health(&api).await);
        }
        Ok(out)
    }

    /// `osctl etcd leave`: this member leaves the cluster; etcd stops and its data goes.
    pub async fn leave(&self, sup: &Supervisor) -> Result<String, KubeError> {
        let c = self.local_etcd()?;
        let (_, _, _, my_id) = c.status().await?;
        let members = c.members().await?;
        if members.len() == 1 {
            return Err(KubeError::OnlyMember);
        }
        // Removed through another member: a member that removes itself stops its server, and
        // the reply can lose the race ("etcdserver: server stopped") though the removal is
        // done. Through the first other member that answers, this one only as a last resort.
        let others: Vec<String> = members
            .iter()
            .filter(|m| m.id != my_id)
            .filter_map(|m| m.client_urls.first())
            .filter_map(|u| url_host(u))
            .collect();
        let mut removed = false;
        for host in &others {
            match etcd::Client::new(host, &self.paths.pki) {
                Ok(other) => match other.remove(my_id).await {
                    Ok(()) => {
                        removed = true;
                        break;
                    }
                    Err(e) => tracing::warn!(
                        %host,
                        error = %basalt_sys::error_chain(&e),
                        "etcd: cannot remove this member"
                    ),
                },
                Err(e) => {
                    tracing::warn!(error = %basalt_sys::error_chain(&e), "etcd not initialized")
                }
            }
        }
        if !removed {
            c.remove(my_id).await?;
        }
        {
            let mut s = self.state();
            s.left = true;
            s.initialized = false;
        }
        sup.set_condition(etcd::INITIALIZED, false);
        let _ = sup.stop("etcd").await;
        let _ = std::fs::remove_dir_all(&self.paths.etcd_data);
        tracing::info!("etcd: this node left the cluster; it joins again after a reboot");
        Ok(format!(
            "left etcd (member {my_id:x}); etcd stopped and its data removed"
        ))
    }
}

/// A Node object's `(name, InternalIP)`.
fn internal_ip(node: &serde_json::Value) -> Option<(String, IpAddr)> {
    let name = node["metadata"]["name"].as_str()?.to_string();
    let ip = node["status"]["addresses"]
        .as_array()?
        .iter()
        .find(|a| a["type"] == "InternalIP")?["address"]
        .as_str()?
        .parse()
        .ok()?;
    Some((name, ip))
}

/// kube-proxy's health endpoint on every node (what a load balancer asks too).
async fn proxy_health(nodes: &[(String, IpAddr)]) -> (String, bool, String) {
    let mut bad = Vec::new();
    for (name, ip) in nodes {
        let r = tokio::time::timeout(
            Duration::from_secs(3),
            layout::healthz_at(*ip, proxy::HEALTHZ_PORT),
        )
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bad.push(format!("{name}: {e}")),
            Err(_) => bad.push(format!("{name}: no answer in 3s")),
        }
    }
    let healthy = nodes.len() - bad.len();
    let mut msg = format!("{healthy} of {} nodes healthy", nodes.len());
    if !bad.is_empty() {
        msg.push_str(&format!(" ({})", bad.join("; ")));
    }
    (
        "kube-proxy".into(),
        !nodes.is_empty() && bad.is_empty(),
        msg,
    )
}

/// CoreDNS's Deployment: every replica it asks for ready.
async fn coredns_health(api: &https::Https) -> (String, bool, String) {
    let name = "coredns".to_string();
    match api
        .get("/apis/apps/v1/namespaces/kube-system/deployments/coredns")
        .await
    {
        Ok(r) if r.status == http::StatusCode::NOT_FOUND => (name, false, "not applied yet".into()),
        Ok(r) => match r.json() {
            Ok(d) => {
                let want = d["spec"]["replicas"].as_u64().unwrap_or(1);
                let ready = d["status"]["readyReplicas"].as_u64().unwrap_or(0);
                (
                    name,
                    want > 0 && ready >= want,
                    format!("{ready} of {want} replicas ready"),
                )
            }
            Err(e) => (name, false, basalt_sys::error_chain(&e)),
        },
        Err(e) => (name, false, basalt_sys::error_chain(&e)),
    }
}

/// The host of a URL like `https://10.5.0.2:2379` (`[fd00::2]` for IPv6).
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// Whether `host` (the cluster endpoint's) is this node.
fn is_me(host: &str, me: &etcd::Me) -> bool {
    host == me.name
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| {
                ip == me.ip || basalt_sys::netif::addresses_text().contains(&ip.to_string())
            })
}

/// The configs of a generated cluster `demo` with its endpoint at 10.5.0.2, for tests.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod node_ip_tests {
    use super::node_ip;

    fn addrs(a: &[(&str, &str)]) -> Vec<(String, std::net::IpAddr)> {
        a.iter()
            .map(|(l, ip)| (l.to_string(), ip.parse().unwrap()))
            .collect()
    }

    #[test]
    fn a_member_url_gives_its_host() {
        use super::url_host;
        assert_eq!(
            url_host("https://10.5.0.2:2379").as_deref(),
            Some("10.5.0.2")
        );
        assert_eq!(
            url_host("https://[fd00::2]:2379").as_deref(),
            Some("[fd00::2]")
        );
        assert_eq!(url_host("https://cp-1").as_deref(), Some("cp-1"));
        assert_eq!(url_host("https://:2379"), None);
    }

    #[test]
    fn the_node_address_is_the_first_global_ipv4_off_the_mesh_and_pod_links() {
        let all = addrs(&[
            ("lo", "127.0.0.1"),
            ("kubespan", "fd7f::1"),
            ("eth0", "fe80::1"),
            ("cni0", "10.244.1.1"),
            ("eth0", "fd00::5"),
            ("eth0", "10.5.0.5"),
            ("eth1", "192.168.9.5"),
        ]);
        assert_eq!(node_ip(all.clone(), &[]), Some("10.5.0.5".parse().unwrap()));
        // nodeIPSubnets pick, whatever the link.
        let subnet = ["192.168.9.0/24".parse().unwrap()];
        assert_eq!(
            node_ip(all.clone(), &subnet),
            Some("192.168.9.5".parse().unwrap())
        );
        // IPv6 only: the global one, not link-local.
        let v6 = addrs(&[("eth0", "fe80::1"), ("eth0", "fd00::5")]);
        assert_eq!(node_ip(v6, &[]), Some("fd00::5".parse().unwrap()));
        assert_eq!(node_ip(addrs(&[("lo", "127.0.0.1")]), &[]), None);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
fn test_configs() -> basalt_config::generate::Generated {
    basalt_config::generate::generate(&basalt_config::generate::GenOptions {
        cluster_name: "demo".parse().unwrap(),
        endpoint: "https://10.5.0.2:6443".parse().unwrap(),
        with_kubespan: false,
        secrets: None,
        install_disk: None,
    })
    .unwrap()
}

/// The node's addresses as networkd reports them (`AddressStatus`), in the order of their
/// links: (link, address).
fn node_addresses(store: &basalt_resources::Store) -> Vec<(String, IpAddr)> {
    let mut all: Vec<(u32, String, IpAddr)> = store
        .list::<basalt_networkd::spec::AddressStatus>()
        .into_iter()
        .map(|(_, a)| (a.index, a.link, a.address.addr()))
        .collect();
    all.sort_by_key(|(index, ..)| *index);
    all.into_iter().map(|(_, link, ip)| (link, ip)).collect()
}

/// This node's address for Kubernetes ([`node_ip`]) once the node has one, waiting for
/// changes to its addresses up to `within`.
async fn wait_node_ip(
    store: &basalt_resources::Store,
    subnets: &[basalt_config::types::Prefix],
    within: Duration,
) -> Option<IpAddr> {
    let kind = basalt_resources::Kind::of::<basalt_networkd::spec::AddressStatus>();
    let mut changes = store.watch_kind(kind.clone(), None);
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(ip) = node_ip(node_addresses(store), subnets) {
            return Some(ip);
        }
        match tokio::time::timeout_at(deadline, changes.next()).await {
            Err(_) => return None,
            Ok(Ok(_)) => {}
            // Fell behind the store's history: watch again from now.
            Ok(Err(_)) => changes = store.watch_kind(kind.clone(), None),
        }
    }
}

/// The address Kubernetes and etcd use for this node, of `all` (link, address): the first in
/// the config's `nodeIPSubnets`, else the first global IPv4 address on a link that is not
/// KubeSpan's or a pod bridge, else the first global IPv6 one.
pub fn node_ip(
    mut all: Vec<(String, IpAddr)>,
    subnets: &[basalt_config::types::Prefix],
) -> Option<IpAddr> {
    all.retain(|(_, ip)| {
        !ip.is_loopback()
            && !ip.is_unspecified()
            && match ip {
                IpAddr::V4(a) => !a.is_link_local(),
                IpAddr::V6(a) => !a.is_unicast_link_local(),
            }
    });
    if let Some(ip) = subnets.iter().find_map(|s| {
        all.iter()
            .find(|(_, ip)| s.contains(*ip))
            .map(|(_, ip)| *ip)
    }) {
        return Some(ip);
    }
    all.retain(|(name, _)| name != "kubespan" && name != "cni0" && !name.starts_with("veth"));
    all.iter()
        .find(|(_, ip)| ip.is_ipv4())
        .or_else(|| all.first())
        .map(|(_, ip)| *ip)
}

fn hostname(store: &basalt_resources::Store) -> String {
    basalt_networkd::spec::hostname(store).unwrap_or_else(|| "basalt".into())
}

/// How the [`node`] reconciler calls the API: as the admin on a control plane (through its
/// own API server; the taint needs it), as the kubelet on a worker (it may change its own
/// node's labels, and nothing else).
fn node_access(cfg: &Config, pki: &Path) -> https::Access {
    let e = &cfg.cluster().control_plane.endpoint;
    if cfg.machine().machine_type == MachineType::ControlPlane {
        https::Access {
            host: "127.0.0.1".into(),
            port: pki::APISERVER_PORT,
            ca: pki.join("ca.crt"),
            crt: pki.join("admin.crt"),
            key: pki.join("admin.key"),
        }
    } else {
        https::Access {
            host: e.host.clone(),
            port: e.port,
            ca: pki.join("ca.crt"),
            crt: tlsboot::KUBELET_CLIENT.into(),
            key: tlsboot::KUBELET_CLIENT.into(),
        }
    }
}

/// Until etcd is initialized here: ask the etcd at the cluster endpoint's host to add this
/// node, then start etcd as the newest member.
async fn join_loop(sup: Arc<Supervisor>, kube: Kube, me: etcd::Me) {
    let mut last_error = String::new();
    loop {
        let (host, done) = {
            let s = kube.state();
            (s.endpoint_host.clone(), s.initialized || s.left)
        };
        if done {
            return;
        }
        if !is_me(&host, &me) {
            match try_join(&kube, &host, &me).await {
                Ok(members) => {
                    let start = etcd::Start::Join(members);
                    if kube.state().initialized {
                        return;
                    }
                    match kube.initialize(&sup, &me, &start) {
                        Ok(()) => {
                            tracing::info!(%host, "etcd: joining the cluster");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %basalt_sys::error_chain(&e), "etcd not initialized")
                        }
                    }
                }
                Err(e) if basalt_sys::error_chain(&e) != last_error => {
                    let e = basalt_sys::error_chain(&e);
                    tracing::warn!(%host, error = %e, "etcd: cannot join yet");
                    last_error = e;
                }
                Err(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Why this node cannot join etcd yet.
#[derive(Debug, thiserror::Error)]
enum JoinError {
    #[error(transparent)]
    Etcd(#[from] etcd::EtcdError),
    #[error("member {0} was added but has not started yet: one join at a time")]
    Unstarted(String),
}

/// Adds this node as a member through the etcd at `host`: every member as (name, peer URL).
async fn try_join(
    kube: &Kube,
    host: &str,
    me: &etcd::Me,
) -> Result<Vec<(String, String)>, JoinError> {
    let c = etcd::Client::new(host, &kube.paths.pki)?;
    let mut members = c.members().await?;
    let mine = me.peer_url();
    if let Some(m) = members.iter().find(|m| m.peer_urls.contains(&mine)) {
        if !m.name.is_empty() {
            // A member by this address that has run before, and no data here: it lost its
            // data. It goes, and comes back as a new member.
            c.remove(m.id).await?;
            members = c.add(&mine).await?;
        }
        // Else: added before (a restart between the add and the first start): start now.
    } else {
        members = c.add(&mine).await?;
    }
    members
        .iter()
        .map(|m| {
            let peer = m.peer_urls.first().cloned().unwrap_or_default();
            let name = if peer == mine {
                me.name.clone()
            } else if m.name.is_empty() {
                return Err(JoinError::Unstarted(peer));
            } else {
                m.name.clone()
            };
            Ok((name, peer))
        })
        .collect()
}
