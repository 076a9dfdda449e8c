//! The device side of the DHCP client: the socket, the clock, and the lease turned into the
//! `dhcp` layer of the network config (owner `dhcp-<link>`).

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::time::Duration;

use basalt_config::types::Prefix;
use basalt_resources::Store;
use futures::TryStreamExt as _;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn, sockopt};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{Action, Client, Lease, Timing, To};
use crate::sources::{DEFAULT_METRIC, LayerSpecs, default_destination, publish};
use crate::spec::*;

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("DHCP on {link}: cannot open its socket")]
    Socket {
        link: String,
        #[source]
        source: std::io::Error,
    },
    #[error("DHCP on {link}: cannot publish the lease")]
    Publish {
        link: String,
        #[source]
        source: Box<basalt_resources::StoreError>,
    },
}

fn socket_for(link: &str) -> Result<tokio::net::UdpSocket, std::io::Error> {
    let fd: OwnedFd = socket::socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // One client per link, all on port 68: each socket sees only its own link's packets.
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::setsockopt(&fd, sockopt::Broadcast, &true)?;
    socket::setsockopt(&fd, sockopt::BindToDevice, &std::ffi::OsString::from(link))?;
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)),
    )?;
    tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

/// The link's MAC, once the link exists and is up (sending before would only fail and wait
/// for a retry).
async fn mac_of(link: &str) -> Option<[u8; 6]> {
    let h = crate::netlink::connect().ok()?;
    let m = h
        .link()
        .get()
        .match_name(link.to_string())
        .execute()
        .try_next()
        .await
        .ok()
        .flatten()?;
    let l = crate::netlink::link(&m).filter(|l| l.up)?;
    let bytes: Vec<u8> = l
        .hardware_addr
        .split(':')
        .filter_map(|b| u8::from_str_radix(b, 16).ok())
        .collect();
    bytes.try_into().ok()
}

/// The `dhcp` layer's specs for a lease on `link`.
pub fn lease_specs(link: &str, l: &Lease) -> LayerSpecs {
    let mut out = LayerSpecs::default();
    let p = |a: Ipv4Addr, len: u8| Prefix::new(IpAddr::V4(a), len).ok();
    if let Some(addr) = p(l.address, l.prefix) {
        out.addresses.push(AddressSpec {
            link: link.to_string(),
            address: addr,
        });
    }
    let route = |dst: Prefix, gw: Ipv4Addr| RouteSpec {
        link: link.to_string(),
        destination: dst.network(),
        gateway: (!gw.is_unspecified()).then_some(IpAddr::V4(gw)),
        source: Some(IpAddr::V4(l.address)),
        metric: DEFAULT_METRIC,
        table: MAIN_TABLE,
    };
    if l.routes.is_empty() {
        // RFC 3442: with classless routes given, the router option is ignored.
        if let Some(gw) = l.routers.first() {
            out.routes
                .push(route(default_destination(IpAddr::V4(*gw)), *gw));
        }
    } else {
        for (dst, len, gw) in &l.routes {
            if let Some(d) = p(*dst, *len) {
                out.routes.push(route(d, *gw));
            }
        }
    }
    if let Some(h) = &l.hostname {
        let mut spec = crate::sources::hostname(h);
        if spec.domain.is_none() {
            spec.domain = l.domain.clone();
        }
        out.hostname = Some(spec);
    }
    if !l.dns.is_empty() {
        out.resolvers = Some(ResolverSpec {
            nameservers: l.dns.iter().map(|d| IpAddr::V4(*d)).collect(),
            search_domains: l.domain.iter().cloned().collect(),
        });
    }
    if !l.ntp.is_empty() {
        out.time_servers = Some(TimeServerSpec {
            servers: l.ntp.iter().map(ToString::to_string).collect(),
        });
    }
    out
}

/// Runs the DHCP client on `link` until `stop` fires (then it releases the lease) or fails.
pub async fn run(
    store: Store,
    link: String,
    timing: Timing,
    stop: oneshot::Receiver<()>,
) -> Result<(), DhcpError> {
    let owner = format!("dhcp-{link}");
    let publish_layer = |specs: &LayerSpecs| {
        publish(&store, &owner, Layer::Dhcp, specs).map_err(|source| DhcpError::Publish {
            link: link.clone(),
            source: Box::new(source),
        })
    };
    let mac = loop {
        if let Some(m) = mac_of(&link).await {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let sock = socket_for(&link).map_err(|source| DhcpError::Socket {
        link: link.clone(),
        source,
    })?;
    let hostname = nix::unistd::gethostname()
        .ok()
        .map(|h| h.to_string_lossy().into_owned())
        .filter(|h| !h.is_empty() && h != "(none)" && h != "localhost");
    let origin = tokio::time::Instant::now();
    let now = || origin.elapsed();
    let mut c = Client::new(mac, hostname, rand::random(), timing);
    let mut actions = c.start(now());
    let mut stop = stop;
    let mut buf = vec![0u8; 1500];
    loop {
        for a in actions.drain(..) {
            match a {
                Action::Send { to, packet } => {
                    let dst = match to {
                        To::Broadcast => SocketAddrV4::new(Ipv4Addr::BROADCAST, 67),
                        To::Server(s) => SocketAddrV4::new(s, 67),
                    };
                    if let Err(e) = sock.send_to(&packet, dst).await {
                        // A link without carrier or route: the retry timer tries again.
                        warn!(link = %link, error = %e, "DHCP send failed");
                    }
                }
                Action::Bound(l) => {
                    info!(link = %link, address = %l.address, prefix = l.prefix, server = %l.server,
                          lease_s = l.lease_time.as_secs(), "DHCP lease");
                    publish_layer(&lease_specs(&link, &l))?;
                }
                Action::Unbound => {
                    info!(link = %link, "DHCP lease gone");
                    publish_layer(&LayerSpecs::default())?;
                }
            }
        }
        let deadline = origin + c.deadline().min(Duration::from_secs(86400 * 365));
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                if let Ok((n, _)) = r {
                    actions = c.handle(now(), &buf[..n]);
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                actions = c.poll(now());
            }
            _ = &mut stop => {
                for a in c.release() {
                    if let Action::Send { to: To::Server(s), packet } = a {
                        let _ = sock.send_to(&packet, SocketAddrV4::new(s, 67)).await;
                    }
                }
                publish_layer(&LayerSpecs::default())?;
                return Ok(());
            }
        }
    }
}

type Running =
    std::collections::BTreeMap<String, (oneshot::Sender<()>, tokio::task::JoinHandle<()>)>;

/// The running DHCP clients, shared by the controller and whoever must release the leases at
/// shutdown.
#[derive(Debug, Clone, Default)]
pub struct Leases(std::sync::Arc<tokio::sync::Mutex<Running>>);

impl Leases {
    /// Stops every client; each sends its server a RELEASE. Returns the links.
    pub async fn release_all(&self) -> Vec<String> {
        let running = std::mem::take(&mut *self.0.lock().await);
        let mut links = Vec::new();
        for (link, (stop, task)) in running {
            let _ = stop.send(());
            let _ = task.await;
            links.push(link);
        }
        links
    }
}

/// Runs a DHCP client on every link a merged `DhcpSpec` names; a link dropped from the specs
/// has its lease released.
#[derive(Debug, Default)]
pub struct DhcpController {
    timing: Timing,
    running: Leases,
}

impl DhcpController {
    pub fn new(timing: Timing, leases: Leases) -> Self {
        DhcpController {
            timing,
            running: leases,
        }
    }
}

impl basalt_resources::controller::Controller for DhcpController {
    fn name(&self) -> &str {
        "network.Dhcp"
    }
    fn inputs(&self) -> Vec<basalt_resources::Kind> {
        vec![basalt_resources::Kind::of::<DhcpSpec>()]
    }
    fn outputs(&self) -> Vec<basalt_resources::controller::Output> {
        Vec::new()
    }
    fn reconcile<'a>(
        &'a mut self,
        cx: &'a mut basalt_resources::controller::Context,
    ) -> futures::future::BoxFuture<'a, Result<(), basalt_resources::controller::ReconcileError>>
    {
        Box::pin(async move {
            let want: std::collections::BTreeSet<String> = cx
                .list::<DhcpSpec>()
                .into_iter()
                .map(|(_, d)| d.link)
                .collect();
            let mut running = self.running.0.lock().await;
            let gone: Vec<String> = running
                .keys()
                .filter(|l| !want.contains(*l))
                .cloned()
                .collect();
            for l in gone {
                if let Some((stop, task)) = running.remove(&l) {
                    let _ = stop.send(());
                    let _ = task.await;
                }
            }
            for l in want {
                if running.get(&l).is_some_and(|(_, t)| !t.is_finished()) {
                    continue;
                }
                let (tx, rx) = oneshot::channel();
                let store = cx.store().clone();
                let timing = self.timing;
                let link = l.clone();
                let task = tokio::spawn(async move {
                    if let Err(e) = run(store, link, timing, rx).await {
                        warn!(error = %basalt_resources::error_chain(&e), "DHCP client stopped");
                    }
                });
                running.insert(l, (tx, task));
            }
            Ok(())
        })
    }
}
