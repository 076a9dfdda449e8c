//! KubeSpan's WireGuard data plane, as the agent drives it ([`DataPlane`]): the kernel's link
//! ([`crate::kernel`]) or, with the `userspace` feature (on by default), [`userspace`]: boringtun
//! between a tun device and a UDP socket, for hosts whose kernel has no `wireguard` module (this
//! build host, Docker-mode nodes). A build without it runs only where the kernel has WireGuard.

use std::net::SocketAddr;
use std::time::Duration;

use basalt_config::types::Prefix;
use futures::future::BoxFuture;

#[cfg(feature = "userspace")]
pub mod userspace;
#[cfg(feature = "userspace")]
pub use userspace::{Device, run};

/// WireGuard's keepalive for peers behind NAT.
pub const KEEPALIVE: u16 = 25;

/// The mark on WireGuard's own UDP packets, so the mesh's routing rule lets them bypass the
/// mesh (they go to the peers' node addresses, which are routed into the mesh otherwise).
pub const FWMARK: u32 = 0x51820;

/// A WireGuard device as KubeSpan drives it: the kernel's link, or the userspace one here.
pub trait DataPlane: Send + Sync {
    /// Makes the peer set exactly `peers`, keeping the sessions of peers that stay.
    fn set_peers<'a>(&'a self, peers: &'a [DevicePeer]) -> BoxFuture<'a, Result<(), DeviceError>>;
    /// Each peer's handshake, traffic and endpoint now.
    fn stats(&self) -> BoxFuture<'_, Result<Vec<PeerStats>, DeviceError>>;
}

/// How the device runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceOptions {
    pub port: u16,
    pub mtu: u16,
    /// Seconds between keepalives (WireGuard's persistent keepalive).
    pub keepalive: u16,
    /// Marks the device's own UDP packets ([`FWMARK`]).
    pub fwmark: Option<u32>,
    /// The cluster's pre-shared key, mixed into every handshake.
    pub preshared_key: Option<[u8; 32]>,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        DeviceOptions {
            port: crate::peer::PORT,
            mtu: 1420,
            keepalive: KEEPALIVE,
            fwmark: Some(FWMARK),
            preshared_key: None,
        }
    }
}

/// One peer of the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePeer {
    pub public_key: [u8; 32],
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<Prefix>,
}

/// What a peer's tunnel says now: for `KubeSpanPeerStatus` and the health state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    pub public_key: [u8; 32],
    pub endpoint: Option<SocketAddr>,
    pub since_handshake: Option<Duration>,
    /// Since the last authenticated packet from the peer (handshake, data or keepalive).
    pub since_received: Option<Duration>,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[cfg(feature = "userspace")]
    #[error("cannot create the tun device {name}")]
    Tun {
        name: String,
        #[source]
        source: tun::Error,
    },
    #[error("cannot bind UDP port {port}")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot mark the device's packets")]
    Mark(#[source] nix::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the kernel's WireGuard link {link}: {message}")]
    Kernel { link: String, message: String },
    /// No `wireguard` module, and this build has no userspace data plane.
    #[error(
        "the kernel has no WireGuard and this build has no userspace data plane (feature `userspace`)"
    )]
    NoWireGuard,
}
