//! The node's side of discovery: publish this node's sealed affiliate record (refreshed well
//! within its TTL), watch the cluster, and keep one `KubeSpanPeerSpec` per other node.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use basalt_api::discovery as pb;
use basalt_api::discovery::discovery_client::DiscoveryClient;
use basalt_config::types::Key32;
use basalt_resources::Store;
use tracing::{info, warn};

use crate::affiliate::{Affiliate, Sealer};
use crate::identity::{KeyPair, KubeSpanIdentity, affiliate_id, discovery_cluster_id};
use crate::peer::{KubeSpanPeerSpec, peer_spec};

/// Owner of the peer specs.
pub const OWNER: &str = "kubespan.discovery";

/// What the client needs to know.
#[derive(Clone)]
pub struct ClientConfig {
    /// `http://host:port` or `https://host:port` of the discovery server.
    pub endpoint: String,
    /// For `https`: the CA the server's certificate must come from (PEM; the cluster's OS CA
    /// when a control-plane node serves discovery).
    pub ca: Option<String>,
    pub cluster_id: Key32,
    pub cluster_secret: Key32,
    pub keys: KeyPair,
    pub hostname: String,
    /// The node's own addresses now (asked at every refresh).
    pub addresses: Arc<dyn Fn() -> Vec<IpAddr> + Send + Sync>,
    /// The pod networks behind the node now (asked at every refresh; a change is published
    /// within a second).
    pub pod_cidrs: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    /// Publish the pod networks, and route the peers' through the mesh
    /// (`KubeSpanConfig.advertisePodNetworks`).
    pub with_pod_networks: bool,
    /// This node relays for peers that cannot reach each other (`KubeSpanConfig.allowRelay`).
    pub relay: bool,
    /// The WireGuard port this node listens on.
    pub port: u16,
    /// How long the server keeps the record; it is refreshed every third of it.
    pub ttl: Duration,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("endpoint", &self.endpoint)
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the discovery server at {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("TLS to the discovery server at {endpoint}: {message}")]
    Tls { endpoint: String, message: String },
    #[error("the discovery server refused {what}: {status}")]
    Rpc {
        what: &'static str,
        status: tonic::Status,
    },
}

fn affiliate(cfg: &ClientConfig) -> Affiliate {
    let id = KubeSpanIdentity::new(&cfg.keys, &cfg.cluster_id);
    let addresses = (cfg.addresses)();
    Affiliate {
        hostname: cfg.hostname.clone(),
        public_key: id.public_key,
        mesh_address: id
            .address
            .parse()
            .unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)),
        endpoints: addresses
            .iter()
            .map(|a| SocketAddr::new(*a, cfg.port))
            .collect(),
        node_addresses: addresses,
        pod_cidrs: if cfg.with_pod_networks {
            (cfg.pod_cidrs)()
        } else {
            Vec::new()
        },
        relay: cfg.relay,
    }
}

fn publish_peers(
    store: &Store,
    peers: &BTreeMap<String, (Affiliate, Vec<IpAddr>)>,
    cfg: &ClientConfig,
) {
    let desired: BTreeMap<String, KubeSpanPeerSpec> = peers
        .values()
        .map(|(a, observed)| {
            let p = peer_spec(a, observed, cfg.with_pod_networks);
            (p.public_key.clone(), p)
        })
        .collect();
    if let Err(e) = store.sync_owned(OWNER, &desired) {
        warn!(error = %e, "peer specs not written");
    }
}

/// A channel to the server whose TCP connections carry KubeSpan's fwmark: the mesh depends on
/// discovery, so discovery must not depend on the mesh — when the server sits on a peer's node
/// address (a control-plane node serving it), its traffic takes the underlay, like
/// WireGuard's own packets, instead of a tunnel that may not be up yet.
async fn connect(
    endpoint: &str,
    ca: Option<&str>,
) -> Result<tonic::transport::Channel, ClientError> {
    let err = |message: String| ClientError::Tls {
        endpoint: endpoint.to_string(),
        message,
    };
    let tls = match endpoint.strip_prefix("https://") {
        Some(_) => {
            let ca =
                ca.ok_or_else(|| err("https needs the CA to check the server against".into()))?;
            Some(tokio_rustls::TlsConnector::from(
                basalt_api::tls::server_checking_client_config(ca)
                    .map_err(|e| err(basalt_resources::error_chain(&e)))?,
            ))
        }
        None => None,
    };
    // tonic speaks h2 over whatever the connector returns; TLS is the connector's.
    let plain = match endpoint.strip_prefix("https://") {
        Some(rest) => format!("http://{rest}"),
        None => endpoint.to_string(),
    };
    let transport = |source| ClientError::Connect {
        endpoint: endpoint.to_string(),
        source,
    };
    tonic::transport::Endpoint::from_shared(plain)
        .map_err(transport)?
        .connect_timeout(Duration::from_secs(10))
        .connect_with_connector(tower::service_fn(move |uri: http::Uri| {
            let tls = tls.clone();
            async move { dial(&uri, tls).await }
        }))
        .await
        .map_err(transport)
}

/// A connection, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// One connection to the server: marked TCP, then TLS when asked for.
async fn dial(
    uri: &http::Uri,
    tls: Option<tokio_rustls::TlsConnector>,
) -> std::io::Result<hyper_util::rt::TokioIo<Box<dyn Io>>> {
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    let port = uri
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let mut last = std::io::Error::other(format!("{host} has no address"));
    for addr in tokio::net::lookup_host((host.as_str(), port)).await? {
        let sock = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // Best effort: without CAP_NET_ADMIN (a test's client) there is no mark, and no mesh
        // either.
        let _ = nix::sys::socket::setsockopt(
            &sock,
            nix::sys::socket::sockopt::Mark,
            &crate::device::FWMARK,
        );
        match sock.connect(addr).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                let io: Box<dyn Io> = match &tls {
                    Some(c) => {
                        let name = rustls::pki_types::ServerName::try_from(host.clone())
                            .map_err(|e| std::io::Error::other(e.to_string()))?;
                        Box::new(c.connect(name, s).await?)
                    }
                    None => Box::new(s),
                };
                return Ok(hyper_util::rt::TokioIo::new(io));
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Publishes and watches until an error; the caller retries with back-off.
pub async fn run(store: Store, cfg: ClientConfig) -> Result<(), ClientError> {
    let channel = connect(&cfg.endpoint, cfg.ca.as_deref()).await?;
    let mut c = DiscoveryClient::new(channel);
    let cluster = discovery_cluster_id(&cfg.cluster_id);
    let me = affiliate_id(&cfg.keys.public());
    let sealer = Sealer::new(&cfg.cluster_secret);
    let update = |c: &mut DiscoveryClient<tonic::transport::Channel>, a: &Affiliate| {
        let mut c = c.clone();
        let req = pb::UpdateRequest {
            cluster_id: cluster.clone(),
            affiliate_id: me.clone(),
            data: sealer.seal(a),
            ttl_seconds: cfg.ttl.as_secs().clamp(1, 1800) as u32,
        };
        async move {
            c.update(req)
                .await
                .map(|r| r.into_inner().observed_address)
                .map_err(|status| ClientError::Rpc {
                    what: "an update",
                    status,
                })
        }
    };
    let mut published = affiliate(&cfg);
    let observed = update(&mut c, &published).await?;
    let mut published_at = tokio::time::Instant::now();
    info!(server = %cfg.endpoint, observed = %observed, "published to discovery");
    let mut watch = c
        .watch(pb::WatchRequest {
            cluster_id: cluster.clone(),
        })
        .await
        .map_err(|status| ClientError::Rpc {
            what: "a watch",
            status,
        })?
        .into_inner();
    let mut peers: BTreeMap<String, (Affiliate, Vec<IpAddr>)> = BTreeMap::new();
    // The record is refreshed every third of its TTL, and at once when the node's addresses
    // change (it roamed) or its pod networks do, which a check every second notices.
    let mut check = tokio::time::interval(Duration::from_secs(1));
    check.tick().await;
    loop {
        tokio::select! {
            _ = check.tick() => {
                let now = affiliate(&cfg);
                if now != published || published_at.elapsed() >= cfg.ttl / 3 {
                    update(&mut c, &now).await?;
                    published = now;
                    published_at = tokio::time::Instant::now();
                }
            }
            m = watch.message() => {
                let m = m.map_err(|status| ClientError::Rpc { what: "the watch", status })?;
                let Some(m) = m else {
                    return Err(ClientError::Rpc { what: "the watch", status: tonic::Status::unavailable("the watch ended") });
                };
                let Some(a) = m.affiliate else { continue };
                if a.id == me {
                    continue;
                }
                if m.kind == pb::watch_response::Kind::Deleted as i32 {
                    peers.remove(&a.id);
                } else {
                    match sealer.open(&a.data) {
                        Ok(aff) => {
                            let observed = a
                                .observed_addresses
                                .iter()
                                .filter_map(|o| o.parse().ok())
                                .collect();
                            peers.insert(a.id, (aff, observed));
                        }
                        // Not of this cluster's secret: someone else's garbage, never a peer.
                        Err(e) => warn!(affiliate = %a.id, error = %e, "record ignored"),
                    }
                }
                publish_peers(&store, &peers, &cfg);
            }
        }
    }
}
