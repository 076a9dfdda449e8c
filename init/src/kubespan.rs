//! KubeSpan on the node, as far as it is built: with `KubeSpanConfig.enabled`, the node's key
//! pair (created once, kept in the state directory), its `KubeSpanIdentity`, the mesh address on
//! networkd's `kubespan` link (a layer of its own, owner `kubespan`), and — with discovery
//! enabled — the node published to the discovery server and every other node as a
//! `KubeSpanPeerSpec`. The data plane comes with the rest of KubeSpan (docs/kubespan.md).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use basalt_config::Config;
use basalt_kubespan::client::ClientConfig;
use basalt_kubespan::identity::{KeyPair, KubeSpanIdentity};
use basalt_networkd::spec::{AddressSpec, AddressStatus};
use basalt_networkd::{Layer, LayerSpecs, publish, sources::KUBESPAN_LINK};
use basalt_resources::{Kind, Store};
use tokio::sync::watch;

use crate::{log, tasks};

const OWNER: &str = "kubespan";

/// Follows the config: identity and mesh address while KubeSpan is enabled, nothing otherwise.
pub fn start(store: Store, state_dir: PathBuf, config: watch::Receiver<Option<Arc<Config>>>) {
    tasks::supervise("kubespan", move || {
        let store = store.clone();
        let key_path = state_dir.join("kubespan.key");
        let mut config = config.clone();
        async move {
            let mut client: Option<tokio::task::JoinHandle<()>> = None;
            loop {
                if let Some(c) = client.take() {
                    c.abort();
                }
                let cfg = config.borrow_and_update().clone();
                let enabled = cfg
                    .as_deref()
                    .and_then(Config::kubespan)
                    .is_some_and(|k| k.enabled);
                let mut layer = LayerSpecs::default();
                match cfg.filter(|_| enabled) {
                    Some(c) => match KeyPair::load_or_create(&key_path) {
                        Ok(keys) => {
                            let id = KubeSpanIdentity::new(&keys, &c.cluster().id);
                            match format!("{}/64", id.address).parse() {
                                Ok(address) => layer.addresses.push(AddressSpec {
                                    link: KUBESPAN_LINK.into(),
                                    address,
                                }),
                                Err(e) => log::line(&format!("kubespan: mesh address: {e}")),
                            }
                            if let Err(e) = store.apply(OWNER, "local", id) {
                                log::line(&format!("kubespan: identity not published: {e}"));
                            }
                            client = discovery(&store, &c, keys);
                        }
                        Err(e) => {
                            log::line(&format!("kubespan: {}", basalt_resources::error_chain(&e)))
                        }
                    },
                    None => {
                        let _ = store.destroy(&Kind::of::<KubeSpanIdentity>(), "local", OWNER);
                        let kind = Kind::of::<basalt_kubespan::peer::KubeSpanPeerSpec>();
                        for r in store.list_dyn(&kind) {
                            let _ = store.destroy(&kind, &r.metadata.id, &r.metadata.owner);
                        }
                    }
                }
                if let Err(e) = publish(&store, OWNER, Layer::Config, &layer) {
                    log::line(&format!("kubespan: the mesh address layer: {e}"));
                }
                if config.changed().await.is_err() {
                    return;
                }
            }
        }
    });
}

/// How long the discovery server keeps this node's record; refreshed every third of it.
const DISCOVERY_TTL: Duration = Duration::from_secs(60);

/// Runs the discovery client when the config enables discovery, retrying after failures.
fn discovery(store: &Store, c: &Config, keys: KeyPair) -> Option<tokio::task::JoinHandle<()>> {
    let d = c.documents().find_map(|d| match d {
        basalt_config::Document::Discovery(d) if d.enabled => d.endpoint.clone(),
        _ => None,
    })?;
    let ks = c.kubespan()?;
    let s = store.clone();
    let cfg = ClientConfig {
        endpoint: format!("{}://{}:{}", d.scheme, d.host, d.port),
        cluster_id: c.cluster().id.clone(),
        cluster_secret: c.secrets().cluster_secret.clone(),
        keys,
        hostname: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        addresses: Arc::new(move || {
            s.list::<AddressStatus>()
                .into_iter()
                .map(|(_, a)| a)
                .filter(|a| a.scope == "global" && a.link != "lo" && a.link != KUBESPAN_LINK)
                .map(|a| a.address.addr())
                .collect()
        }),
        pod_cidrs: Vec::new(),
        with_pod_networks: ks.advertise_pod_networks,
        ttl: DISCOVERY_TTL,
    };
    let store = store.clone();
    Some(tokio::spawn(async move {
        loop {
            match basalt_kubespan::client::run(store.clone(), cfg.clone()).await {
                Ok(()) => return,
                Err(e) => log::line(&format!(
                    "kubespan: discovery: {}; retrying in 5 s",
                    basalt_resources::error_chain(&e)
                )),
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }))
}
