//! KubeSpan on the node, as controllers on the resource runtime that follow `ActiveConfig`:
//! while `KubeSpanConfig.enabled`, the node's key pair (created once,
//! kept in the state directory) and [`basalt_kubespan::node::run`] — identity, the kernel's
//! WireGuard on networkd's `kubespan` link, discovery, peers, relay and the mesh routes
//! (docs/kubespan.md). Disabled: its resources and its networkd layer are removed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use basalt_config::Config;
use basalt_config::resource::ActiveConfig;
use basalt_kubespan::agent::OWNER;
use basalt_kubespan::device::DeviceOptions;
use basalt_kubespan::identity::{KeyPair, KubeSpanIdentity};
use basalt_kubespan::node::NodeOptions;
use basalt_kubespan::peer::{HealthTiming, KubeSpanPeerSpec, KubeSpanPeerStatus};
use basalt_networkd::{Layer, LayerSpecs, publish};
use basalt_resources::{Context, Controller, Kind, Output, ReconcileError, Store};
use futures::future::BoxFuture;

use basalt_supervisor::process::ProcessSpec;
use basalt_supervisor::tasks;
use basalt_supervisor::{self as supervisor, Dependency, Health, ServiceDef, Supervisor};

/// How long the discovery server keeps this node's record; refreshed every third of it.
const DISCOVERY_TTL: Duration = Duration::from_secs(60);

/// What KubeSpan runs with, from a config: a change elsewhere does not restart it.
type Relevant = (
    Option<basalt_config::v1alpha1::KubeSpanConfig>,
    Option<basalt_config::v1alpha1::DiscoveryConfig>,
    [u8; 32],
    [u8; 32],
);

/// The controller that runs KubeSpan while the active config enables it and clears it away
/// otherwise. Its input is `ActiveConfig`; its outputs are what the mesh publishes (the node's
/// identity, the peers and their statuses), written by the running agent under the same name.
pub(crate) struct KubeSpan {
    key_path: PathBuf,
    /// The agent running, and what it runs with.
    running: Option<(Relevant, tokio::task::JoinHandle<()>)>,
}

impl KubeSpan {
    pub fn new(state_dir: &std::path::Path) -> Self {
        KubeSpan {
            key_path: state_dir.join("kubespan.key"),
            running: None,
        }
    }

    fn pass(&mut self, store: &Store) -> Result<(), basalt_kubespan::identity::IdentityError> {
        let cfg = basalt_config::resource::active(store);
        let enabled = cfg
            .as_deref()
            .and_then(|c| c.kubespan())
            .is_some_and(|k| k.enabled);
        let Some(cfg) = cfg.filter(|_| enabled) else {
            if let Some((_, task)) = self.running.take() {
                task.abort();
            }
            clear(store);
            return Ok(());
        };
        let mine = relevant(&cfg);
        if let Some((key, task)) = &self.running
            && *key == mine
            && !task.is_finished()
        {
            return Ok(());
        }
        if let Some((_, task)) = self.running.take() {
            task.abort();
        }
        // The key pair first: a node that cannot keep one says so and is retried.
        KeyPair::load_or_create(&self.key_path)?;
        let (store, key_path) = (store.clone(), self.key_path.clone());
        let task = tasks::supervise("kubespan", move || {
            let (store, key_path, cfg) = (store.clone(), key_path.clone(), cfg.clone());
            async move {
                let result = match options(&cfg, &key_path, &store) {
                    Ok(Some(opts)) => basalt_kubespan::node::run(store.clone(), opts)
                        .await
                        .map_err(|e| basalt_sys::error_chain(&e)),
                    Ok(None) => return,
                    Err(e) => Err(basalt_sys::error_chain(&e)),
                };
                if let Err(e) = result {
                    tracing::info!(error = %e, "kubespan stopped; restarting in 5 s");
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
        self.running = Some((mine, task));
        Ok(())
    }
}

impl Controller for KubeSpan {
    fn name(&self) -> &str {
        OWNER
    }

    fn inputs(&self) -> Vec<Kind> {
        vec![Kind::of::<ActiveConfig>()]
    }

    fn outputs(&self) -> Vec<Output> {
        vec![
            Output::exclusive::<KubeSpanIdentity>(),
            Output::exclusive::<KubeSpanPeerSpec>(),
            Output::exclusive::<KubeSpanPeerStatus>(),
        ]
    }

    fn reconcile<'a>(
        &'a mut self,
        cx: &'a mut Context,
    ) -> BoxFuture<'a, Result<(), ReconcileError>> {
        Box::pin(async move { self.pass(cx.store()).map_err(Into::into) })
    }
}

/// Removes what KubeSpan published: identity, peers, statuses, its networkd layer.
fn clear(store: &Store) {
    let _ = store.destroy(&Kind::of::<KubeSpanIdentity>(), "local", OWNER);
    for kind in [
        Kind::of::<KubeSpanPeerSpec>(),
        Kind::of::<KubeSpanPeerStatus>(),
    ] {
        for r in store.list_dyn(&kind) {
            let _ = store.destroy(&kind, &r.metadata.id, &r.metadata.owner);
        }
    }
    if let Err(e) = publish(store, OWNER, Layer::Config, &LayerSpecs::default()) {
        tracing::info!(error = %e, "kubespan: the mesh layer not removed");
    }
    if let Err(e) = basalt_kubespan::mss::remove() {
        tracing::info!(
            error = %basalt_sys::error_chain(&e),
            "kubespan: the MSS clamping table not removed"
        );
    }
}

fn relevant(c: &Config) -> Relevant {
    let discovery = c.documents().find_map(|d| match d {
        basalt_config::Document::Discovery(d) => Some(d.clone()),
        _ => None,
    });
    (
        c.kubespan().cloned(),
        discovery,
        *c.cluster().id.bytes(),
        *c.secrets().cluster_secret.bytes(),
    )
}

/// The node's KubeSpan options from the config; `None` when KubeSpan is off.
fn options(
    c: &Config,
    key_path: &std::path::Path,
    store: &Store,
) -> Result<Option<NodeOptions>, basalt_kubespan::identity::IdentityError> {
    let Some(ks) = c.kubespan().filter(|k| k.enabled) else {
        return Ok(None);
    };
    let keys = KeyPair::load_or_create(key_path)?;
    let discovery = c.documents().find_map(|d| match d {
        basalt_config::Document::Discovery(d) if d.enabled => d
            .endpoint
            .as_ref()
            .map(|e| format!("{}://{}:{}", e.scheme, e.host, e.port)),
        _ => None,
    });
    Ok(Some(NodeOptions {
        cluster_id: c.cluster().id.clone(),
        cluster_secret: c.secrets().cluster_secret.clone(),
        keys,
        hostname: basalt_networkd::spec::hostname(store).unwrap_or_default(),
        discovery_ca: discovery
            .as_deref()
            .filter(|e| e.starts_with("https://"))
            .map(|_| c.secrets().certs.os.crt.0.as_str().to_string()),
        discovery,
        discovery_ttl: DISCOVERY_TTL,
        device: DeviceOptions {
            mtu: u16::try_from(ks.mtu).unwrap_or(u16::MAX),
            ..DeviceOptions::default()
        },
        relay: ks.allow_relay,
        with_pod_networks: ks.advertise_pod_networks,
        timing: HealthTiming {
            down_after: ks.peer_down_after.get(),
            ..HealthTiming::default()
        },
    }))
}

/// The supervisor's id of the discovery server.
pub const DISCOVERY_SERVICE: &str = "discovery";

/// The controller that runs the discovery server as a service while the active config's
/// `DiscoveryConfig.serve` is on: the `basalt-discovery` personality of this binary, on port
/// 3000, its registry snapshotted in the state directory so a restart (or a reboot with a state
/// disk) does not drop the mesh. Its input is `ActiveConfig`; its output the service.
pub(crate) struct DiscoveryServer {
    sup: Arc<Supervisor>,
    dir: PathBuf,
    /// What runs: None = nothing, Some(tls).
    running: Option<bool>,
}

/// Why the discovery server is not running as the config says.
#[derive(Debug, thiserror::Error)]
#[error("discovery server not started: cannot create {}", .dir.display())]
struct DiscoveryError {
    dir: PathBuf,
    #[source]
    source: std::io::Error,
}

impl DiscoveryServer {
    pub fn new(sup: Arc<Supervisor>, state_dir: &std::path::Path) -> Self {
        DiscoveryServer {
            sup,
            dir: state_dir.join("discovery"),
            running: None,
        }
    }

    async fn pass(&mut self, store: &Store) -> Result<(), DiscoveryError> {
        // Serving, and over TLS when the cluster's endpoint says https.
        let want = basalt_config::resource::active(store).and_then(|c| {
            c.documents().find_map(|d| match d {
                basalt_config::Document::Discovery(d) if d.serve => {
                    Some(d.endpoint.as_ref().is_some_and(|e| e.scheme == "https"))
                }
                _ => None,
            })
        });
        match want {
            Some(tls) if self.running != Some(tls) => {
                std::fs::create_dir_all(&self.dir).map_err(|source| DiscoveryError {
                    dir: self.dir.clone(),
                    source,
                })?;
                self.sup.add(discovery_service(&self.dir, tls)).await;
                self.running = Some(tls);
            }
            None if self.running.is_some() => {
                let _ = self.sup.stop(DISCOVERY_SERVICE).await;
                self.running = None;
            }
            _ => {}
        }
        Ok(())
    }
}

impl Controller for DiscoveryServer {
    fn name(&self) -> &str {
        "discovery-server"
    }

    fn inputs(&self) -> Vec<Kind> {
        vec![Kind::of::<ActiveConfig>()]
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

fn discovery_service(dir: &std::path::Path, tls: bool) -> ServiceDef {
    let mut args = vec![
        "--listen".into(),
        format!("[::]:{}", basalt_api::DISCOVERY_PORT),
        "--snapshot".into(),
        dir.join("snapshot.json").display().to_string(),
        // Its answers take the underlay: a node that lost its peers (it rebooted) must still
        // hear from discovery while the others' tunnels to it are stale.
        "--fwmark".into(),
        format!("{:#x}", basalt_kubespan::device::FWMARK),
    ];
    if tls {
        // The node's own certificate from the OS CA (the one apid serves), which every node
        // of the cluster can check.
        let pki = std::path::Path::new(basalt_apid::PKI_DIR);
        args.extend([
            "--tls-cert".into(),
            pki.join("node.crt").display().to_string(),
            "--tls-key".into(),
            pki.join("node.key").display().to_string(),
        ]);
    }
    let process = ProcessSpec {
        program: "/sbin/init".into(),
        arg0: Some("basalt-discovery".into()),
        args,
        env: vec![("PATH".into(), "/usr/bin:/usr/sbin".into())],
        // An unprivileged port and a file its uid owns; CAP_NET_ADMIN only to mark its socket.
        // CAP_NET_ADMIN is capability 12 (capabilities(7)).
        keep_caps: Some(vec![12]),
        ..ProcessSpec::default()
    };
    let mut def = ServiceDef::new(DISCOVERY_SERVICE, process);
    def.depends = vec![Dependency::Condition(supervisor::NETWORK)];
    if tls {
        // It reads the node's certificate at start: not before init has written it (it
        // exited, and was restarted, when the config had just been applied).
        def.depends
            .push(Dependency::Condition(supervisor::NODE_CERT));
    }
    def.stop_timeout = Duration::from_secs(5);
    def.health = Some(Health {
        check: Arc::new(|| {
            Box::pin(async {
                let port = basalt_api::DISCOVERY_PORT;
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("port {port}: {e}").into())
            })
        }),
        interval: Duration::from_secs(2),
        timeout: Duration::from_secs(2),
    });
    def
}
