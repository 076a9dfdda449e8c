//! Kubernetes on the node as controllers on the resource runtime. Each reads the active config
//! (`config/ActiveConfig`) and the node's status resources, and reconciles to them:
//!
//! - `Setup` (input: the config): once per boot, from the first config — the PKI, the
//!   kubelet's host files, its TLS bootstrap and the pod routes, and on a control plane etcd
//!   and the control plane's services — then publishes [`KubernetesNode`] (who this node is to
//!   Kubernetes). What it sets up reads the config only at boot; `needs_reboot` names those
//!   fields.
//! - `Kubelet`, `Proxy`, `NodeObject` (inputs: the config, [`KubernetesNode`]): the
//!   kubelet (restarted when its arguments or file change), kube-proxy (started, rewritten,
//!   or stopped with its rules removed), and the node's labels and taint on its `Node` object.
//! - `Addons` (inputs: the config, [`KubernetesNode`], the services' status): on a control
//!   plane, the cluster's add-ons once the API server runs, and again for every config.
//!
//! A pass that fails (the API server not answering yet, a file that cannot be written) is
//! retried by the runtime with back-off; its reason is logged once while it lasts.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use basalt_config::Config;
use basalt_config::resource::{ActiveConfig, active};
use basalt_config::v1alpha1::MachineType;
use basalt_resources::{Context, Controller, Kind, Output, ReconcileError, Spec, Store};
use basalt_supervisor::{self as supervisor, ServiceStatus, Supervisor, tasks};
use futures::future::BoxFuture;
use serde::Serialize;

use crate::{
    FileError, Kube, addons, controlplane, etcd, kubelet, node, pki, podroutes, proxy, tlsboot,
};

/// Who this node is to Kubernetes (`kubernetes/KubernetesNode`, id [`LOCAL`]): published by
/// `Setup` once the PKI is issued, read by the other controllers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KubernetesNode {
    /// The node's name (its host name).
    pub name: String,
    /// The address Kubernetes and etcd use for it.
    pub ip: IpAddr,
    pub controlplane: bool,
}

impl Spec for KubernetesNode {
    const TYPE: &'static str = "KubernetesNode";
    const NAMESPACE: &'static str = "kubernetes";
}

/// The id of the one [`KubernetesNode`].
pub const LOCAL: &str = "local";

/// The node's controllers (none on an image without Kubernetes).
pub fn controllers(sup: Arc<Supervisor>, kube: Kube, container: bool) -> Vec<Box<dyn Controller>> {
    if !crate::available() {
        return Vec::new();
    }
    let pki = kube.paths.pki.clone();
    vec![
        Box::new(Setup {
            sup: sup.clone(),
            kube,
            container,
            done: false,
        }),
        Box::new(Kubelet {
            sup: sup.clone(),
            pki: pki.clone(),
            host: kubelet::Host::detect(container),
            running: None,
        }),
        Box::new(Proxy {
            sup: sup.clone(),
            container,
            running: None,
        }),
        Box::new(NodeObject { pki: pki.clone() }),
        Box::new(Addons {
            pki,
            node: None,
            applied: None,
        }),
    ]
}

/// The config and the node, once both are there.
fn inputs(store: &Store) -> Option<(Arc<Config>, KubernetesNode)> {
    let cfg = active(store)?;
    let (_, node) = store.get::<KubernetesNode>(LOCAL)?;
    Some((cfg, node))
}

/// Why a pass of a Kubernetes controller did not finish.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("no node address found (within 30 s of the network being up)")]
    NoNodeAddress,
    #[error("PKI not issued")]
    Pki(#[from] pki::KubePkiError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("add-ons not applied")]
    Addons(#[from] addons::AddonError),
    #[error("node object not updated")]
    Node(#[from] node::NodeError),
    #[error(transparent)]
    Runtime(#[from] basalt_resources::RuntimeError),
}

/// Sets Kubernetes up once per boot from the first config.
struct Setup {
    sup: Arc<Supervisor>,
    kube: Kube,
    container: bool,
    done: bool,
}

impl Setup {
    async fn pass(&mut self, cx: &mut Context) -> Result<(), PassError> {
        if self.done {
            return Ok(());
        }
        let store = cx.store().clone();
        let Some(cfg) = active(&store) else {
            return Ok(());
        };
        let (sup, kube) = (&self.sup, &self.kube);
        sup.wait_condition(supervisor::NETWORK, Duration::from_secs(60))
            .await;
        // The PKI is issued below: by a synced clock (time sync's bootTimeout bounds this).
        sup.wait_condition(supervisor::TIME, Duration::from_secs(900))
            .await;
        let subnets = cfg
            .machine()
            .kubelet
            .as_ref()
            .map(|k| k.node_ip_subnets.clone())
            .unwrap_or_default();
        // The address may come a little after network-ready (DHCP, a container's runtime):
        // the node's addresses are watched for up to 30 s.
        let ip = crate::wait_node_ip(&store, &subnets, Duration::from_secs(30))
            .await
            .ok_or(PassError::NoNodeAddress)?;
        let me = etcd::Me {
            name: crate::hostname(&store),
            ip,
        };
        let info = pki::NodeInfo {
            hostname: me.name.clone(),
            addresses: vec![ip],
        };
        let files = pki::issue_all(&cfg, &info)?;
        pki::write(&kube.paths.pki, &files).map_err(FileError::write(&kube.paths.pki))?;
        tracing::info!(node = %me.name, %ip, dir = %kube.paths.pki.display(), "PKI issued");
        // The kubelet's host, on every node (the `Kubelet` controller starts it).
        if self.container {
            for note in kubelet::prepare_container() {
                tracing::info!("kubelet: {note}");
            }
        }
        if kubelet::cgroup_v1() {
            tracing::info!(
                "kubelet: this node's cgroups are v1 (its host's are: /sys/fs/cgroup is not cgroup2); \
                 the kubelet runs with failCgroupV1: false"
            );
        }
        match kubelet::write_pod_resolv_conf() {
            Ok(0) => tracing::info!(
                "kubelet: the node has no name server pods can use (loopback ones are left out): \
                 pods of dnsPolicy Default get none, and CoreDNS answers only the cluster's names"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                path = kubelet::POD_RESOLV_CONF,
                error = %e,
                "kubelet: cannot write the pods' resolv.conf"
            ),
        }
        let controlplane = cfg.machine().machine_type == MachineType::ControlPlane;
        cx.apply(
            LOCAL,
            KubernetesNode {
                name: me.name.clone(),
                ip,
                controlplane,
            },
        )?;
        self.done = true;

        tasks::until_done("kubelet-bootstrap", {
            let (sup, cfg) = (sup.clone(), cfg.clone());
            let (pki, name) = (kube.paths.pki.clone(), me.name.clone());
            move || tlsboot::run(sup.clone(), cfg.clone(), pki.clone(), name.clone())
        });
        // Routes to the other nodes' pods, through the link of the node's address; and the
        // node's registration, which kube-proxy waits for.
        let link = crate::node_addresses(&store)
            .into_iter()
            .find(|(_, a)| *a == ip)
            .map(|(link, _)| link);
        if link.is_none() {
            tracing::info!(%ip, "no link holds the node's address: no pod routes");
        }
        {
            let e = &cfg.cluster().control_plane.endpoint;
            let (sup, store, endpoint) = (sup.clone(), store.clone(), (e.host.clone(), e.port));
            let pki: Arc<Path> = Arc::from(kube.paths.pki.as_path());
            let name = me.name.clone();
            tasks::supervise("node-watch", move || {
                podroutes::run(
                    sup.clone(),
                    store.clone(),
                    endpoint.clone(),
                    pki.clone(),
                    name.clone(),
                    link.clone(),
                )
            });
        }

        {
            let mut s = kube.state();
            s.controlplane = controlplane;
            s.me = Some(me.clone());
            s.endpoint_host = cfg.cluster().control_plane.endpoint.host.clone();
            s.node_access = Some(crate::node_access(&cfg, &kube.paths.pki));
        }
        if !controlplane {
            return Ok(());
        }
        if etcd::has_data(&kube.paths.etcd_data) {
            if let Err(e) = kube.initialize(sup, &me, &etcd::Start::Existing) {
                tracing::warn!(error = %basalt_sys::error_chain(&e), "etcd not initialized");
            }
        } else {
            tracing::info!(
                "etcd: no data here: waiting for `osctl bootstrap`, or to join the cluster"
            );
            let (sup, kube, me) = (sup.clone(), kube.clone(), me.clone());
            tasks::until_done("etcd-join", move || {
                crate::join_loop(sup.clone(), kube.clone(), me.clone())
            });
        }
        sup.add(etcd::service(kube.paths.pki.clone())).await;
        let settings = controlplane::Settings::from_config(&cfg, ip, &kube.paths.pki);
        for def in controlplane::services(&settings) {
            sup.add(def).await;
        }
        Ok(())
    }
}

impl Controller for Setup {
    fn name(&self) -> &str {
        "kubernetes-setup"
    }

    fn inputs(&self) -> Vec<Kind> {
        vec![Kind::of::<ActiveConfig>()]
    }

    fn outputs(&self) -> Vec<Output> {
        vec![Output::exclusive::<KubernetesNode>()]
    }

    fn reconcile<'a>(
        &'a mut self,
        cx: &'a mut Context,
    ) -> BoxFuture<'a, Result<(), ReconcileError>> {
        Box::pin(async move { self.pass(cx).await.map_err(Into::into) })
    }
}

/// The kubelet as the config says: started once the node is set up, restarted when a config
/// changes what it runs with (`kubelet.extraArgs`, `kubelet.clusterDNS`, ...: it reads its
/// arguments and file once, at start).
struct Kubelet {
    sup: Arc<Supervisor>,
    pki: PathBuf,
    host: kubelet::Host,
    /// What the running kubelet was started with ([`kubelet_key`]).
    running: Option<(Vec<String>, String)>,
}

/// What a kubelet runs with, for telling whether a new config changes it: its arguments (but
/// `--node-labels`, which the kubelet reads only when it registers; `NodeObject` keeps the
/// labels) and its config file.
fn kubelet_key(args: &[String], file: String) -> (Vec<String>, String) {
    let args = args
        .iter()
        .filter(|a| !a.starts_with("--node-labels="))
        .cloned()
        .collect();
    (args, file)
}

impl Kubelet {
    async fn pass(&mut self, store: &Store) -> Result<(), PassError> {
        let Some((cfg, node)) = inputs(store) else {
            return Ok(());
        };
        let args = kubelet::args(&cfg, node.ip, &node.name, &self.pki);
        let key = kubelet_key(&args, kubelet::config_yaml(&cfg, &self.pki, self.host));
        if self.running.as_ref() == Some(&key) {
            return Ok(());
        }
        let path = Path::new(kubelet::CONFIG);
        basalt_sys::fs::atomic_write(path, key.1.as_bytes(), 0o644)
            .map_err(FileError::write(path))?;
        self.sup.add(kubelet::service(args)).await;
        if self.running.is_some() {
            tracing::info!("kubelet: restarted for the new config");
        }
        self.running = Some(key);
        Ok(())
    }
}

impl Controller for Kubelet {
    fn name(&self) -> &str {
        "kubelet"
    }

    fn inputs(&self) -> Vec<Kind> {
        vec![Kind::of::<ActiveConfig>(), Kind::of::<KubernetesNode>()]
    }

    fn outputs(&self) -> Vec<Output> {
        Vec::new()
    }

    fn reconcile<'a>(
        &'a mut self,
        cx: &'a mut Context,
    ) -> BoxFuture<'a, Result<(), ReconcileError>> {
        Box::pin(async move { self.pass(cx.store()).await.map_err(Into::into) })
    }
}

/// kube-proxy on this node, as the config says: started (or restarted with a new config file)
/// when `proxy` is on and its file changes, stopped with its rules removed when it is turned
/// off.
struct Proxy {
    sup: Arc<Supervisor>,
    container: bool,
    /// The file the running kube-proxy reads.
    running: Option<String>,
}

impl Proxy {
    async fn pass(&mut self, store: &Store) -> Result<(), PassError> {
        let Some((cfg, node)) = inputs(store) else {
            return Ok(());
        };
        let want = cfg
            .cluster()
            .proxy_enabled()
            .then(|| proxy::config_yaml(&cfg, &node.name, self.container));
        if want == self.running {
            return Ok(());
        }
        match &want {
            Some(text) => {
                let path = Path::new(proxy::CONFIG);
                basalt_sys::fs::atomic_write(path, text.as_bytes(), 0o644)
                    .map_err(FileError::write(path))?;
                self.sup.add(proxy::service()).await;
                tracing::info!(
                    "kube-proxy: added (nftables mode; it starts once the node is registered)"
                );
            }
            None => {
                // Stopped, and its rules removed (the cleanup run takes its place).
                self.sup.add(proxy::cleanup_service()).await;
                tracing::info!("kube-proxy: stopped and its rules removed (proxy.disabled)");
            }
        }
        self.running = want;
        Ok(())
    }
}

impl Controller for Proxy {
    fn name(&self) -> &str {
        "kube-proxy"
    }

    fn inputs(&self) -> Vec<Kind> {
        vec![Kind::of::<ActiveConfig>(), Kind::of::<KubernetesNode>()]
    }

    fn outputs(&self) -> Vec<Output> {
        Vec::new()
    }

    fn reconcile<'a>(
        &'a mut self,
        cx: &'a mut Context,
    ) -> BoxFuture<'a, Result<(), ReconcileError>> {
        Box::pin(async move { self.pass(cx.store()).await.map_err(Into::into) })
    }
}

/// The node's `Node` object as the config says (labels, the control-plane taint), for as long
/// as the node runs: a pass once the node is set up and for every config, retried until it
/// succeeds (the kubelet may not have registered the node yet).
struct NodeObject {
    pki: PathBuf,
}

impl Controller for NodeObject {
    fn name(&self) -> &str {
        "node-object"
    }

    fn inputs(&self) -> Vec<Kind> {
        vec![Kind::of::<ActiveConfig>(), Kind::of::<KubernetesNode>()]
    }

    fn outputs(&self) -> Vec<Output> {
        Vec::new()
    }

    fn reconcile<'a>(
        &'a mut self,
        cx: &'a mut Context,
    ) -> BoxFuture<'a, Result<(), ReconcileError>> {
        Box::pin(async move {
            let Some((cfg, node)) = inputs(cx.store()) else {
                return Ok(());
            };
            let access = crate::node_access(&cfg, &self.pki);
            node::apply(&access, &node.name, &cfg)
                .await
                .map_err(|e| PassError::from(e).into())
        })
    }
}

/// The cluster's add-ons, on a control plane: a pass once its API server runs, and again for
/// every config (what kubelets need to join comes first).
struct Addons {
    pki: PathBuf,
    /// What this node's image ships (read at the first pass).
    node: Option<addons::Node>,
    /// The config the last successful pass applied.
    applied: Option<Arc<Config>>,
}

impl Addons {
    async fn pass(&mut self, store: &Store) -> Result<(), PassError> {
        let Some((cfg, me)) = inputs(store) else {
            return Ok(());
        };
        if !me.controlplane || self.applied.as_ref() == Some(&cfg) {
            return Ok(());
        }
        let apiserver = store.get::<ServiceStatus>("kube-apiserver");
        if !apiserver.is_some_and(|(_, s)| s.state == supervisor::State::Running) {
            return Ok(());
        }
        let node = self.node.get_or_insert_with(addons::Node::detect);
        addons::reconcile(&cfg, node, &self.pki, &me.name, pki::APISERVER_PORT).await?;
        self.applied = Some(cfg);
        Ok(())
    }
}

impl Controller for Addons {
    fn name(&self) -> &str {
        "addons"
    }

    fn inputs(&self) -> Vec<Kind> {
        vec![
            Kind::of::<ActiveConfig>(),
            Kind::of::<KubernetesNode>(),
            Kind::of::<ServiceStatus>(),
        ]
    }

    fn outputs(&self) -> Vec<Output> {
        Vec::new()
    }

    fn reconcile<'a>(
        &'a mut self,
        cx: &'a mut Context,
    ) -> BoxFuture<'a, Result<(), ReconcileError>> {
        Box::pin(async move { self.pass(cx.store()).await.map_err(Into::into) })
    }
}
