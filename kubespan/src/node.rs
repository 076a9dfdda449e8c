//! KubeSpan on one node, put together: the identity, the data plane (the kernel's WireGuard
//! link when the kernel has WireGuard, the userspace device otherwise), the discovery client
//! and the agent. PID 1 runs this while the config enables KubeSpan; the privileged tests run
//! it in network namespaces as hosts. Everything happens in the network namespace of the
//! thread that runs it.

use std::sync::Arc;
use std::time::Duration;

use basalt_config::types::{Key32, Prefix};
use basalt_networkd::sources::KUBESPAN_LINK;
use basalt_resources::Store;
use tracing::{info, warn};

use crate::agent::{self, AgentOptions};
use crate::client::{self, ClientConfig};
use crate::device::{self, DataPlane, DeviceError, DeviceOptions};
use crate::identity::{KeyPair, KubeSpanIdentity, preshared_key};
use crate::kernel;
use crate::peer::HealthTiming;

/// What the node runs with (from `KubeSpanConfig`, `DiscoveryConfig` and the cluster secrets).
#[derive(Clone)]
pub struct NodeOptions {
    pub cluster_id: Key32,
    pub cluster_secret: Key32,
    pub keys: KeyPair,
    pub hostname: String,
    /// The discovery server (`http://host:port` or `https://host:port`); without one, no peers
    /// are found.
    pub discovery: Option<String>,
    /// For an `https` server: the CA its certificate must come from (PEM).
    pub discovery_ca: Option<String>,
    /// How long the server keeps this node's record; refreshed every third of it.
    pub discovery_ttl: Duration,
    /// Port, MTU and keepalive; the mark and the pre-shared key are set here.
    pub device: DeviceOptions,
    /// Relay for others and use relays (`KubeSpanConfig.allowRelay`).
    pub relay: bool,
    /// Publish this node's pod networks (the [`crate::peer::PodNetworksSpec`] in the store)
    /// and route the peers' through the mesh.
    pub with_pod_networks: bool,
    pub timing: HealthTiming,
}

impl std::fmt::Debug for NodeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeOptions")
            .field("hostname", &self.hostname)
            .field("discovery", &self.discovery)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("the WireGuard device")]
    Device(#[from] DeviceError),
    #[error("cannot turn on forwarding for relaying ({path})")]
    Forwarding {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("TCP MSS clamping")]
    Mss(#[from] crate::mss::MssError),
    #[error("the identity: {0}")]
    Store(#[from] basalt_resources::StoreError),
}

/// Relaying is routing between peers through this node's mesh link.
fn enable_forwarding() -> Result<(), NodeError> {
    for path in [
        "/proc/sys/net/ipv6/conf/all/forwarding",
        "/proc/sys/net/ipv4/ip_forward",
    ] {
        std::fs::write(path, "1").map_err(|source| NodeError::Forwarding { path, source })?;
    }
    Ok(())
}

/// Runs KubeSpan until the data plane fails (the caller restarts it).
pub async fn run(store: Store, opts: NodeOptions) -> Result<(), NodeError> {
    let id = KubeSpanIdentity::new(&opts.keys, &opts.cluster_id);
    store.apply(agent::OWNER, "local", id.clone())?;
    if opts.relay {
        enable_forwarding()?;
    }
    let dev_opts = DeviceOptions {
        preshared_key: Some(preshared_key(&opts.cluster_secret)),
        fwmark: Some(device::FWMARK),
        ..opts.device
    };
    let (plane, task): (Box<dyn DataPlane>, Option<DeviceTask>) =
        match kernel::Kernel::open(KUBESPAN_LINK).await {
            Some(k) => {
                info!("the kernel's WireGuard");
                k.configure(&opts.keys, dev_opts).await?;
                (Box::new(k), None)
            }
            #[cfg(feature = "userspace")]
            None => {
                info!("no WireGuard in the kernel; the userspace device");
                let (d, task) = device::run(&opts.keys, KUBESPAN_LINK, dev_opts).await?;
                (Box::new(d), Some(task))
            }
            #[cfg(not(feature = "userspace"))]
            None => return Err(DeviceError::NoWireGuard.into()),
        };
    crate::mss::install(dev_opts.mtu)?;
    let _client = opts.discovery.clone().map(|endpoint| {
        let cfg = ClientConfig {
            endpoint,
            ca: opts.discovery_ca.clone(),
            cluster_id: opts.cluster_id.clone(),
            cluster_secret: opts.cluster_secret.clone(),
            keys: opts.keys.clone(),
            hostname: opts.hostname.clone(),
            addresses: {
                let s = store.clone();
                Arc::new(move || agent::node_addresses(&s))
            },
            pod_cidrs: {
                let s = store.clone();
                Arc::new(move || crate::peer::local_pod_networks(&s))
            },
            with_pod_networks: opts.with_pod_networks,
            relay: opts.relay,
            port: dev_opts.port,
            ttl: opts.discovery_ttl,
        };
        AbortOnDrop(tokio::spawn(discover(store.clone(), cfg)))
    });
    let mesh_address = Prefix::new(id.address.parse().expect("a mesh address"), 64)
        .expect("64 is a valid IPv6 prefix length");
    let agent_opts = AgentOptions {
        timing: opts.timing,
        use_relays: opts.relay,
        mesh_address,
    };
    let agent = agent::run(store.clone(), agent_opts, plane.as_ref());
    match task {
        Some(task) => tokio::select! {
            r = agent => r?,
            r = task => match r {
                Ok(r) => r?,
                Err(e) => warn!(error = %e, "the userspace device stopped"),
            },
        },
        None => agent.await?,
    }
    Ok(())
}

/// The discovery client, retried after a failure: quickly at first — the discovery server may
/// come up after this node (it runs on a control plane; a whole cluster boots at once) —, then
/// every 5 s; a connection that lasted starts the count again.
async fn discover(store: Store, cfg: ClientConfig) {
    let mut backoff =
        basalt_resources::Backoff::new(Duration::from_millis(250), Duration::from_secs(5), 2);
    loop {
        let started = std::time::Instant::now();
        let result = client::run(store.clone(), cfg.clone()).await;
        if started.elapsed() >= Duration::from_secs(30) {
            backoff.reset();
        }
        let wait = backoff.fail();
        match result {
            Err(e) => warn!(
                error = %basalt_resources::error_chain(&e),
                retry_in_ms = wait.as_millis(),
                "discovery failed"
            ),
            Ok(()) => warn!(retry_in_ms = wait.as_millis(), "discovery ended"),
        }
        tokio::time::sleep(wait).await;
    }
}

/// The userspace device's packet pump, when that is the data plane.
type DeviceTask = tokio::task::JoinHandle<Result<(), DeviceError>>;

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
