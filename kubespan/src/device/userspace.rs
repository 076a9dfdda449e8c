//! The userspace data plane: WireGuard (boringtun's protocol state machine) between a tun
//! device and a UDP socket. boringtun's `Tunn` is the protocol with no I/O; this module is the
//! device layer that owns the tun device, the socket and the timers.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use basalt_config::types::Prefix;
use boringtun::noise::{Packet, Tunn, TunnResult, handshake::parse_handshake_anon};
use boringtun::x25519::{PublicKey, StaticSecret};
use futures::future::BoxFuture;
use tracing::{debug, warn};

use super::{DataPlane, DeviceError, DeviceOptions, DevicePeer, PeerStats};
use crate::identity::KeyPair;

struct Peer {
    tunn: Tunn,
    /// The tunnel's index: the high 24 bits of every receiver index sent to it.
    index: u32,
    public_key: [u8; 32],
    endpoint: Option<SocketAddr>,
    /// The endpoint last asked for: only a new choice replaces one learned from the peer's
    /// own packets (it roamed, or is behind a NAT).
    wanted: Option<SocketAddr>,
    allowed_ips: Vec<Prefix>,
    /// The endpoint changed: start a handshake there now rather than at the next retry.
    kick: bool,
    last_received: Option<Instant>,
}

/// A running userspace WireGuard device; cheap to clone.
#[derive(Clone)]
pub struct Device {
    inner: Arc<Mutex<Vec<Peer>>>,
    secret: StaticSecret,
    opts: DeviceOptions,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").finish_non_exhaustive()
    }
}

fn dst_of(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let b: [u8; 4] = packet[16..20].try_into().ok()?;
            Some(IpAddr::from(b))
        }
        6 if packet.len() >= 40 => {
            let b: [u8; 16] = packet[24..40].try_into().ok()?;
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

impl Device {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Peer>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the peer set exactly `peers`, keeping the sessions of peers that stay.
    pub fn set_peers(&self, peers: &[DevicePeer]) {
        let mut have = self.lock();
        have.retain(|p| peers.iter().any(|n| n.public_key == p.public_key));
        for (i, n) in peers.iter().enumerate() {
            match have.iter_mut().find(|p| p.public_key == n.public_key) {
                Some(p) => {
                    if n.endpoint.is_some() && p.wanted != n.endpoint {
                        p.wanted = n.endpoint;
                        p.endpoint = n.endpoint;
                        p.kick = true;
                    }
                    p.allowed_ips = n.allowed_ips.clone();
                }
                None => {
                    let index = ((rand::random::<u32>() >> 8)
                        ^ u32::try_from(i & 0x00ff_ffff).unwrap_or(0))
                        & 0x00ff_ffff;
                    match Tunn::new(
                        self.secret.clone(),
                        PublicKey::from(n.public_key),
                        self.opts.preshared_key,
                        Some(self.opts.keepalive),
                        index,
                        None,
                    ) {
                        Ok(tunn) => have.push(Peer {
                            tunn,
                            index,
                            public_key: n.public_key,
                            endpoint: n.endpoint,
                            wanted: n.endpoint,
                            allowed_ips: n.allowed_ips.clone(),
                            kick: n.endpoint.is_some(),
                            last_received: None,
                        }),
                        Err(e) => warn!(error = e, "peer not added"),
                    }
                }
            }
        }
    }

    pub fn stats(&self) -> Vec<PeerStats> {
        self.lock()
            .iter()
            .map(|p| {
                let (since, tx, rx, _, _) = p.tunn.stats();
                PeerStats {
                    public_key: p.public_key,
                    endpoint: p.endpoint,
                    since_handshake: since,
                    since_received: p.last_received.map(|t| t.elapsed()),
                    tx_bytes: tx as u64,
                    rx_bytes: rx as u64,
                }
            })
            .collect()
    }
}

impl DataPlane for Device {
    fn set_peers<'a>(&'a self, peers: &'a [DevicePeer]) -> BoxFuture<'a, Result<(), DeviceError>> {
        Device::set_peers(self, peers);
        Box::pin(std::future::ready(Ok(())))
    }

    fn stats(&self) -> BoxFuture<'_, Result<Vec<PeerStats>, DeviceError>> {
        Box::pin(std::future::ready(Ok(Device::stats(self))))
    }
}

fn src_of(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let b: [u8; 4] = packet[12..16].try_into().ok()?;
            Some(IpAddr::from(b))
        }
        6 if packet.len() >= 40 => {
            let b: [u8; 16] = packet[8..24].try_into().ok()?;
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

/// Creates the tun device `name` (in the calling thread's network namespace) and a UDP socket
/// on the port, and runs WireGuard between them until an I/O error. Addresses and routes on the
/// tun device are networkd's (or the caller's).
pub async fn run(
    keys: &KeyPair,
    name: &str,
    opts: DeviceOptions,
) -> Result<(Device, tokio::task::JoinHandle<Result<(), DeviceError>>), DeviceError> {
    let port = opts.port;
    let mut cfg = tun::Configuration::default();
    cfg.tun_name(name).mtu(opts.mtu).up();
    let tun = tun::create_as_async(&cfg).map_err(|source| DeviceError::Tun {
        name: name.to_string(),
        source,
    })?;
    let udp = tokio::net::UdpSocket::bind(("::", port))
        .await
        .map_err(|source| DeviceError::Bind { port, source })?;
    if let Some(mark) = opts.fwmark {
        nix::sys::socket::setsockopt(&udp, nix::sys::socket::sockopt::Mark, &mark)
            .map_err(DeviceError::Mark)?;
    }
    let secret = StaticSecret::from(keys.private());
    let dev = Device {
        inner: Arc::new(Mutex::new(Vec::new())),
        secret,
        opts,
    };
    let d = dev.clone();
    let task = tokio::spawn(async move { pump(d, tun, udp).await });
    Ok((dev, task))
}

async fn pump(
    dev: Device,
    tun: tun::AsyncDevice,
    udp: tokio::net::UdpSocket,
) -> Result<(), DeviceError> {
    let public = PublicKey::from(&dev.secret);
    let mut from_tun = vec![0u8; 65536];
    let mut from_udp = vec![0u8; 65536];
    let mut out = vec![0u8; 65536 + 32];
    let mut timers = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            n = tun.recv(&mut from_tun) => {
                let n = n?;
                let packet = &from_tun[..n];
                let Some(dst) = dst_of(packet) else { continue };
                let send = {
                    let mut peers = dev.lock();
                    let Some(p) = peers.iter_mut().find(|p| p.allowed_ips.iter().any(|a| a.contains(dst))) else {
                        continue;
                    };
                    match (p.tunn.encapsulate(packet, &mut out), p.endpoint) {
                        (TunnResult::WriteToNetwork(b), Some(e)) => Some((b.to_vec(), e)),
                        (TunnResult::Err(e), _) => {
                            debug!(error = ?e, "encapsulate");
                            None
                        }
                        _ => None,
                    }
                };
                if let Some((b, e)) = send {
                    let _ = udp.send_to(&b, e).await;
                }
            }
            r = udp.recv_from(&mut from_udp) => {
                let (n, src) = r?;
                // The socket is dual-stack: show IPv4 peers as IPv4.
                let src = match src.ip() {
                    IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                        Some(v4) => SocketAddr::new(IpAddr::V4(v4), src.port()),
                        None => src,
                    },
                    IpAddr::V4(_) => src,
                };
                let datagram = &from_udp[..n];
                let mut to_net: Vec<Vec<u8>> = Vec::new();
                let mut to_tun: Vec<Vec<u8>> = Vec::new();
                {
                    let mut peers = dev.lock();
                    // Which peer: by the receiver index for responses and data, by the
                    // initiator's static key for a handshake initiation.
                    let idx = match Tunn::parse_incoming_packet(datagram) {
                        Ok(Packet::HandshakeInit(h)) => parse_handshake_anon(&dev.secret, &public, &h)
                            .ok()
                            .and_then(|half| peers.iter().position(|p| p.public_key == half.peer_static_public)),
                        Ok(Packet::HandshakeResponse(h)) => peers.iter().position(|p| p.index == h.receiver_idx >> 8),
                        Ok(Packet::PacketCookieReply(c)) => peers.iter().position(|p| p.index == c.receiver_idx >> 8),
                        Ok(Packet::PacketData(d)) => peers.iter().position(|p| p.index == d.receiver_idx >> 8),
                        Err(_) => None,
                    };
                    let Some(i) = idx else { continue };
                    let p = &mut peers[i];
                    let mut first = true;
                    let mut heard = false;
                    loop {
                        let input: &[u8] = if first { datagram } else { &[] };
                        first = false;
                        match p.tunn.decapsulate(Some(src.ip()), input, &mut out) {
                            TunnResult::WriteToNetwork(b) => {
                                to_net.push(b.to_vec());
                                // Queued packets follow a completed handshake.
                                continue;
                            }
                            TunnResult::WriteToTunnelV4(b, _) | TunnResult::WriteToTunnelV6(b, _) => {
                                // Cryptokey routing: a peer may only send from its allowed IPs.
                                if src_of(b).is_some_and(|s| p.allowed_ips.iter().any(|a| a.contains(s))) {
                                    to_tun.push(b.to_vec());
                                } else {
                                    debug!("a packet from outside the peer's allowed IPs dropped");
                                    heard = true;
                                }
                            }
                            // A keepalive: the peer is there.
                            TunnResult::Done => heard = true,
                            TunnResult::Err(e) => debug!(error = ?e, "decapsulate"),
                        }
                        break;
                    }
                    // The peer roamed (or was only known by what it sent): answer where it is.
                    if heard || !to_net.is_empty() || !to_tun.is_empty() {
                        p.endpoint = Some(src);
                        p.last_received = Some(Instant::now());
                    }
                }
                for b in to_net {
                    let _ = udp.send_to(&b, src).await;
                }
                for b in to_tun {
                    let _ = tun.send(&b).await;
                }
            }
            _ = timers.tick() => {
                let mut sends = Vec::new();
                {
                    let mut peers = dev.lock();
                    for p in peers.iter_mut() {
                        if std::mem::take(&mut p.kick)
                            && let Some(e) = p.endpoint
                            && let TunnResult::WriteToNetwork(b) =
                                p.tunn.format_handshake_initiation(&mut out, false)
                        {
                            sends.push((b.to_vec(), e));
                        }
                        if let TunnResult::WriteToNetwork(b) = p.tunn.update_timers(&mut out)
                            && let Some(e) = p.endpoint
                        {
                            sends.push((b.to_vec(), e));
                        }
                    }
                }
                for (b, e) in sends {
                    let _ = udp.send_to(&b, e).await;
                }
            }
        }
    }
}
