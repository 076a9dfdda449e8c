//! KubeSpan on the node: while `KubeSpanConfig.enabled`, the node's key pair (created once,
//! kept in the state directory) and [`basalt_kubespan::node::run`] — identity, the kernel's
//! WireGuard on networkd's `kubespan` link, discovery, peers, relay and the mesh routes
//! (docs/kubespan.md). Disabled: its resources and its networkd layer are removed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use basalt_config::Config;
use basalt_kubespan::agent::OWNER;
use basalt_kubespan::device::DeviceOptions;
use basalt_kubespan::identity::{KeyPair, KubeSpanIdentity};
use basalt_kubespan::node::NodeOptions;
use basalt_kubespan::peer::{HealthTiming, KubeSpanPeerSpec, KubeSpanPeerStatus};
use basalt_networkd::{Layer, LayerSpecs, publish};
use basalt_resources::{Kind, Store};
use tokio::sync::watch;

use basalt_supervisor::process::ProcessSpec;
use basalt_supervisor::tasks;
use basalt_supervisor::{self as supervisor, Dependency, Health, ServiceDef, Supervisor};

/// How long the discovery server keeps this node's record; refreshed every third of it.
const DISCOVERY_TTL: Duration = Duration::from_secs(60);

/// Follows the config: KubeSpan runs while it is enabled, and is cleared away otherwise.
pub fn start(store: Store, state_dir: PathBuf, config: watch::Receiver<Option<Arc<Config>>>) {
    tasks::supervise("kubespan", move || {
        let store = store.clone();
        let key_path = state_dir.join("kubespan.key");
        let mut config = config.clone();
        async move {
            loop {
                let cfg = config.borrow_and_update().clone();
                let opts = cfg.as_deref().and_then(|c| match options(c, &key_path) {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::warn!("kubespan: {}", basalt_sys::error_chain(&e));
                        None
                    }
                });
                match opts {
                    Some(opts) => {
                        let s = store.clone();
                        let mine = cfg.as_deref().map(relevant);
                        let node = basalt_kubespan::node::run(s, opts);
                        tokio::pin!(node);
                        // Runs until it fails or a config change touches what it runs with.
                        loop {
                            tokio::select! {
                                r = &mut node => {
                                    if let Err(e) = r {
                                        tracing::info!("kubespan: {}; restarting in 5 s", basalt_sys::error_chain(&e));
                                    }
                                    tokio::time::sleep(Duration::from_secs(5)).await;
                                    break;
                                }
                                c = config.changed() => {
                                    if c.is_err() {
                                        return;
                                    }
                                    let now = config.borrow().as_deref().map(relevant);
                                    if now != mine {
                                        break;
                                    }
                                }
                            }
                        }
                        continue;
                    }
                    None => {
                        clear(&store);
                        if config.changed().await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
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
        tracing::info!("kubespan: the mesh layer not removed: {e}");
    }
    if let Err(e) = basalt_kubespan::mss::remove() {
        tracing::info!(
            "kubespan: the MSS clamping table not removed: {}",
            basalt_sys::error_chain(&e)
        );
    }
}

/// What KubeSpan runs with, from a config: a change elsewhere does not restart it.
fn relevant(
    c: &Config,
) -> (
    Option<basalt_config::v1alpha1::KubeSpanConfig>,
    Option<basalt_config::v1alpha1::DiscoveryConfig>,
    [u8; 32],
    [u8; 32],
) {
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
        hostname: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
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

/// Runs the discovery server as a service while `DiscoveryConfig.serve` is on: the
/// `basalt-discovery` personality of this binary, on port 3000, its registry snapshotted in the
/// state directory so a restart (or a reboot with a state disk) does not drop the mesh.
pub fn serve_discovery(
    sup: Arc<Supervisor>,
    state_dir: PathBuf,
    config: watch::Receiver<Option<Arc<Config>>>,
) {
    tasks::supervise("discovery-server", move || {
        let sup = sup.clone();
        let dir = state_dir.join("discovery");
        let mut config = config.clone();
        async move {
            // What runs: None = nothing, Some(tls).
            let mut running: Option<bool> = None;
            loop {
                // Serving, and over TLS when the cluster's endpoint says https.
                let want = config.borrow_and_update().as_deref().and_then(|c| {
                    c.documents().find_map(|d| match d {
                        basalt_config::Document::Discovery(d) if d.serve => {
                            Some(d.endpoint.as_ref().is_some_and(|e| e.scheme == "https"))
                        }
                        _ => None,
                    })
                });
                if let Some(tls) = want
                    && running != Some(tls)
                {
                    match std::fs::create_dir_all(&dir) {
                        Ok(()) => {
                            sup.add(discovery_service(&dir, tls)).await;
                            running = Some(tls);
                        }
                        Err(e) => tracing::warn!(
                            "discovery server not started: cannot create {}: {e}",
                            dir.display()
                        ),
                    }
                } else if want.is_none() && running.is_some() {
                    let _ = sup.stop(DISCOVERY_SERVICE).await;
                    running = None;
                }
                if config.changed().await.is_err() {
                    return;
                }
            }
        }
    });
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
