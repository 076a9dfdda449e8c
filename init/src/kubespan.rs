//! KubeSpan on the node, as far as it is built: with `KubeSpanConfig.enabled`, the node's key
//! pair (created once, kept in the state directory), its `KubeSpanIdentity`, and the mesh
//! address on networkd's `kubespan` link (a layer of its own, owner `kubespan`). Peers and the
//! data plane come with the rest of KubeSpan (docs/kubespan.md).

use std::path::PathBuf;
use std::sync::Arc;

use basalt_config::Config;
use basalt_kubespan::identity::{KeyPair, KubeSpanIdentity};
use basalt_networkd::spec::AddressSpec;
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
            loop {
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
                        }
                        Err(e) => {
                            log::line(&format!("kubespan: {}", basalt_resources::error_chain(&e)))
                        }
                    },
                    None => {
                        let _ = store.destroy(&Kind::of::<KubeSpanIdentity>(), "local", OWNER);
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
