//! The node's network: networkd's controllers, composed. The default layer and the kernel's
//! `ip=` (the `cmdline` layer) are published at boot, the machine config's layer follows the
//! active config, and the `network-ready` condition is set once an address is up (or nothing
//! asks for one).

use std::sync::Arc;
use std::time::Duration;

use basalt_config::resource::ActiveConfig;
use basalt_networkd::cmdline::IpConfig;
use basalt_networkd::spec::{
    AddressSpec, AddressStatus, DhcpSpec, Layered, RouteSpec, RouteStatus,
};
use basalt_networkd::{FilesOptions, Layer, LayerSpecs, publish, sources};
use basalt_resources::controller::Runtime;
use basalt_resources::{Context, Controller, Kind, Output, ReconcileError, Store};
use futures::future::BoxFuture;

use basalt_supervisor::tasks;
use basalt_supervisor::{self as supervisor, Supervisor};

/// Where `resolv.conf`, `hosts` and `hostname` go; the rootfs links `/etc/...` here.
pub const ETC_DIR: &str = "/system/etc";

/// How long, once an address is up, boot waits for the routes to be in the kernel too.
const ROUTES_SETTLE: Duration = Duration::from_secs(5);

/// How long boot waits for a first address before going on without one.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Publishes the active config's network settings as networkd's `config` layer (an empty
/// layer without a config).
fn publish_config(store: &Store) -> Result<(), basalt_resources::StoreError> {
    let specs = basalt_config::resource::active(store)
        .as_deref()
        .map(sources::from_config)
        .unwrap_or_default();
    publish(store, "config", Layer::Config, &specs)
}

/// The controller that keeps networkd's `config` layer as the active config says.
struct ConfigLayer;

impl Controller for ConfigLayer {
    fn name(&self) -> &str {
        "network-config"
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
        Box::pin(async move { publish_config(cx.store()).map_err(Into::into) })
    }
}

/// Starts networkd for the node.
pub fn start(
    store: Store,
    sup: Arc<Supervisor>,
    leases: basalt_networkd::dhcp::Leases,
    ip: Option<&str>,
    container: bool,
) {
    if let Err(e) = basalt_networkd::publish_defaults(&store) {
        tracing::info!(error = %e, "network: the default layer not published");
    }
    if container {
        // The runtime's addresses, read before networkd touches anything, stay whatever the
        // config adds.
        let runtime = sources::from_runtime(&basalt_sys::netif::addresses());
        tracing::info!(
            addresses = %runtime
                .addresses
                .iter()
                .map(|a| format!("{} {}", a.link, a.address))
                .collect::<Vec<_>>()
                .join(", "),
            "network: the container runtime's addresses"
        );
        if let Err(e) = publish(&store, "platform", Layer::Platform, &runtime) {
            tracing::info!(error = %e, "network: the platform layer not published");
        }
    }
    let cmdline = match ip.map(IpConfig::parse) {
        None => LayerSpecs::default(),
        Some(Err(e)) => {
            tracing::info!(error = %e, "network: ip= ignored");
            LayerSpecs::default()
        }
        Some(Ok(c)) => {
            if c == IpConfig::Off {
                tracing::info!("network: ip=off: no boot network");
            }
            sources::from_cmdline(&c)
        }
    };
    if let Err(e) = publish(&store, "cmdline", Layer::Cmdline, &cmdline) {
        tracing::info!(error = %e, "network: the cmdline layer not published");
    }

    // The config's layer as it is now, before the readiness check below looks at the layers;
    // then again at each change (the `ConfigLayer` controller below).
    if let Err(e) = publish_config(&store) {
        tracing::info!(error = %e, "network: the config layer");
    }
    let mut rt = Runtime::new(store.clone());
    let opts = basalt_networkd::Options {
        files: FilesOptions {
            etc_dir: Some(ETC_DIR.into()),
            set_hostname: true,
        },
        dhcp: Default::default(),
        leases,
    };
    let registered =
        basalt_networkd::register(&mut rt, opts).and_then(|()| rt.register(Box::new(ConfigLayer)));
    match registered {
        Ok(()) => {
            // Dropping the handle leaves the controllers running: they live as long as PID 1.
            drop(rt.start());
        }
        Err(e) => tracing::warn!(error = %e, "network: controllers not started"),
    }

    let s = store.clone();
    tasks::supervise("network-status", move || {
        let store = s.clone();
        async move {
            if let Err(e) = basalt_networkd::apply::run_status(store).await {
                tracing::info!(error = %basalt_sys::error_chain(&e), "network status stopped");
            }
        }
    });

    // network-ready: once an address is there (and the routes it brings, or a moment for them),
    // or at once when no address is wanted, or after READY_TIMEOUT. Checked again on every
    // change to the store, not on a timer.
    tasks::until_done("network-ready", move || {
        let (store, sup) = (store.clone(), sup.clone());
        async move {
            let mut changes = store.changes();
            let start = tokio::time::Instant::now();
            let mut settle: Option<tokio::time::Instant> = None;
            loop {
                let wanted = wants_address(&store);
                let have = store
                    .list::<AddressStatus>()
                    .iter()
                    .any(|(_, a)| a.link != "lo" && a.scope == "global");
                let now = tokio::time::Instant::now();
                // With an address, the routes it makes reachable follow within moments: wait
                // for them too (a little), so what is reported and used next is the whole
                // picture.
                if have {
                    let since = *settle.get_or_insert(now);
                    if routes_in(&store) || now >= since + ROUTES_SETTLE {
                        break;
                    }
                }
                if !wanted || now >= start + READY_TIMEOUT {
                    if wanted && !have {
                        tracing::info!("network: no address within 30 s; going on without one");
                    }
                    break;
                }
                let deadline = settle
                    .map_or(start + READY_TIMEOUT, |since| since + ROUTES_SETTLE)
                    .min(start + READY_TIMEOUT);
                if let Ok(Err(_)) = tokio::time::timeout_at(deadline, changes.changed()).await {
                    // The store is gone: only the deadline is left to wait for.
                    tokio::time::sleep_until(deadline).await;
                }
            }
            for line in summary(&store) {
                tracing::info!("network: {line}");
            }
            sup.set_condition(supervisor::NETWORK, true);
        }
    });
}

/// Whether any layer asks for an address on a link other than `lo`, or for DHCP. Read from
/// the layers as published, not from what the merge controller made of them: at boot the merge
/// may not have run yet, and an empty merge read as "nothing wanted" set `network-ready` (and
/// issued apid's certificate) before the node had its address.
fn wants_address(store: &Store) -> bool {
    store
        .list::<Layered<AddressSpec>>()
        .iter()
        .any(|(_, a)| a.spec.link != "lo")
        || !store.list::<Layered<DhcpSpec>>().is_empty()
}

/// Whether every merged route is in the kernel (as `RouteStatus` says).
fn routes_in(store: &Store) -> bool {
    let have = store.list::<RouteStatus>();
    store.list::<RouteSpec>().iter().all(|(_, r)| {
        have.iter().any(|(_, h)| {
            h.link == r.link
                && h.destination == r.destination.network()
                && h.gateway == r.gateway
                && h.metric == r.metric
                && h.table == r.table
        })
    })
}

/// One line per link with addresses: `eth0 10.0.2.15/24 via 10.0.2.2`.
pub fn summary(store: &Store) -> Vec<String> {
    let addrs = store.list::<AddressStatus>();
    let routes = store.list::<RouteStatus>();
    let mut links: Vec<&str> = addrs
        .iter()
        .filter(|(_, a)| a.link != "lo" && a.scope == "global")
        .map(|(_, a)| a.link.as_str())
        .collect();
    links.dedup();
    links
        .into_iter()
        .map(|l| {
            let a: Vec<String> = addrs
                .iter()
                .filter(|(_, a)| a.link == l && a.scope == "global")
                .map(|(_, a)| a.address.to_string())
                .collect();
            let gw: Vec<String> = routes
                .iter()
                .filter(|(_, r)| r.link == l && r.destination.prefix_len() == 0)
                .filter_map(|(_, r)| r.gateway.map(|g| format!(" via {g}")))
                .collect();
            format!("{l} {}{}", a.join(", "), gw.concat())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(store: &Store, owner: &str, layer: Layer, ip: &str) {
        let c = IpConfig::parse(ip).unwrap();
        publish(store, owner, layer, &sources::from_cmdline(&c)).unwrap();
    }

    #[test]
    fn an_address_is_wanted_as_soon_as_a_layer_says_so() {
        let store = Store::default();
        basalt_networkd::publish_defaults(&store).unwrap();
        assert!(!wants_address(&store), "the default layer asks for lo only");

        // What boot sees before networkd's merge controller has run: the layer is there, the
        // merged specs are not yet.
        layer(
            &store,
            "cmdline",
            Layer::Cmdline,
            "10.231.0.3::10.231.0.1:255.255.255.0:w1:eth0:off",
        );
        assert!(store.list::<AddressSpec>().is_empty());
        assert!(wants_address(&store));

        let store = Store::default();
        layer(&store, "cmdline", Layer::Cmdline, "dhcp");
        assert!(wants_address(&store), "DHCP on a link");

        let store = Store::default();
        layer(&store, "cmdline", Layer::Cmdline, "off");
        assert!(!wants_address(&store), "ip=off asks for nothing");
    }
}
