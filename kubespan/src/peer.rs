//! Peers: every other affiliate of the cluster, as WireGuard needs it (allowed IPs, endpoints),
//! and each peer's health as a state machine with no I/O: it is told the time and the last
//! handshake, and answers which endpoint to use. A peer with no handshake for too long is down,
//! and its endpoints are tried in turn until one handshakes.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use basalt_config::types::Prefix;
use basalt_resources::Spec;
use serde::Serialize;

use crate::affiliate::Affiliate;

/// The default WireGuard port KubeSpan listens on.
pub const PORT: u16 = 51820;

/// What WireGuard needs for one peer (namespace `kubespan`, id = the peer's public key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeSpanPeerSpec {
    pub hostname: String,
    pub public_key: String,
    pub mesh_address: IpAddr,
    /// Traffic to these goes to this peer.
    pub allowed_ips: Vec<Prefix>,
    /// Where to reach it, in the order to try: what it advertised, then what the discovery
    /// server saw its updates come from.
    pub endpoints: Vec<SocketAddr>,
    /// It relays for peers that cannot reach each other directly (`KubeSpanConfig.allowRelay`).
    pub relay: bool,
}

impl Spec for KubeSpanPeerSpec {
    const TYPE: &'static str = "KubeSpanPeerSpec";
    const NAMESPACE: &'static str = "kubespan";
}

fn host(ip: IpAddr) -> Prefix {
    Prefix::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("a host prefix is valid")
}

/// The pod networks behind this node (namespace `kubespan`, id [`LOCAL_POD_NETWORKS`]), written
/// by whoever learns them — init's Kubernetes side, from the node's `spec.podCIDRs` — and
/// published in the node's affiliate when `advertisePodNetworks` is on, so the peers route them
/// through the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodNetworksSpec {
    pub cidrs: Vec<Prefix>,
}

impl Spec for PodNetworksSpec {
    const TYPE: &'static str = "PodNetworks";
    const NAMESPACE: &'static str = "kubespan";
}

/// The id of this node's [`PodNetworksSpec`].
pub const LOCAL_POD_NETWORKS: &str = "local";

/// This node's pod networks, as text, from the store (none until they are known).
pub fn local_pod_networks(store: &basalt_resources::Store) -> Vec<String> {
    store
        .get::<PodNetworksSpec>(LOCAL_POD_NETWORKS)
        .map(|(_, s)| s.cidrs.iter().map(ToString::to_string).collect())
        .unwrap_or_default()
}

/// A peer from an affiliate and the addresses the discovery server observed for it.
pub fn peer_spec(a: &Affiliate, observed: &[IpAddr], with_pod_networks: bool) -> KubeSpanPeerSpec {
    let mut allowed = vec![host(a.mesh_address)];
    allowed.extend(a.node_addresses.iter().map(|ip| host(*ip)));
    if with_pod_networks {
        allowed.extend(a.pod_cidrs.iter().filter_map(|c| c.parse::<Prefix>().ok()));
    }
    let port = a.endpoints.first().map(|e| e.port()).unwrap_or(PORT);
    let mut endpoints = a.endpoints.clone();
    for ip in observed {
        let e = SocketAddr::new(*ip, port);
        if !endpoints.contains(&e) {
            endpoints.push(e);
        }
    }
    KubeSpanPeerSpec {
        hostname: a.hostname.clone(),
        public_key: a.public_key.clone(),
        mesh_address: a.mesh_address,
        allowed_ips: allowed,
        endpoints,
        relay: a.relay,
    }
}

/// Up, down, or not known yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    Unknown,
    Up,
    Down,
}

/// How long things take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthTiming {
    /// Nothing heard (no handshake, no packet) for this long: down (`KubeSpanConfig.peerDownAfter`).
    pub down_after: Duration,
    /// How long one endpoint gets to handshake before the next is tried. WireGuard retries a
    /// handshake every 5 s, so this covers a few attempts.
    pub try_endpoint_for: Duration,
}

impl Default for HealthTiming {
    fn default() -> Self {
        HealthTiming {
            down_after: Duration::from_secs(275),
            try_endpoint_for: Duration::from_secs(20),
        }
    }
}

/// One peer's health. Times are durations since any fixed origin.
#[derive(Debug, Clone)]
pub struct PeerHealth {
    timing: HealthTiming,
    endpoints: Vec<SocketAddr>,
    current: usize,
    /// When the current endpoint was chosen.
    chosen_at: Duration,
    /// When the peer was first known: a peer never heard from is down this long after.
    since: Duration,
    state: PeerState,
    last_seen: Option<Duration>,
}

impl PeerHealth {
    pub fn new(timing: HealthTiming, endpoints: Vec<SocketAddr>, now: Duration) -> Self {
        PeerHealth {
            timing,
            endpoints,
            current: 0,
            chosen_at: now,
            since: now,
            state: PeerState::Unknown,
            last_seen: None,
        }
    }

    pub fn state(&self) -> PeerState {
        self.state
    }

    /// The endpoint WireGuard should use now.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoints.get(self.current).copied()
    }

    /// New endpoints from discovery: keep the current one if it is still listed.
    pub fn set_endpoints(
        &mut self,
        endpoints: Vec<SocketAddr>,
        now: Duration,
    ) -> Option<SocketAddr> {
        let cur = self.endpoint();
        self.endpoints = endpoints;
        match cur.and_then(|c| self.endpoints.iter().position(|e| *e == c)) {
            Some(i) => {
                self.current = i;
                None
            }
            None => {
                self.current = 0;
                self.chosen_at = now;
                self.endpoint()
            }
        }
    }

    /// Updates the state from when the peer was last heard from (its last handshake, or the
    /// last packet from it; `None`: never); returns the endpoint to switch to, if it is time to
    /// try another.
    pub fn tick(&mut self, now: Duration, last_seen: Option<Duration>) -> Option<SocketAddr> {
        if let Some(t) = last_seen {
            self.last_seen = Some(self.last_seen.map_or(t, |l| l.max(t)));
        }
        let heard = self.last_seen.unwrap_or(self.since);
        if now.saturating_sub(heard) < self.timing.down_after {
            if self.last_seen.is_some() {
                self.state = PeerState::Up;
                return None;
            }
        } else {
            // Heard from once but not for too long, or never in all this time: down.
            self.state = PeerState::Down;
        }
        // Not up: the next endpoint gets its turn.
        if self.endpoints.len() > 1
            && now.saturating_sub(self.chosen_at) >= self.timing.try_endpoint_for
        {
            self.current = (self.current + 1) % self.endpoints.len();
            self.chosen_at = now;
            return self.endpoint();
        }
        None
    }
}

/// What a peer looks like now (namespace `kubespan`, id = the peer's public key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeSpanPeerStatus {
    pub hostname: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<SocketAddr>,
    pub state: PeerState,
    /// Seconds since the last handshake, if there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_handshake_seconds_ago: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// The peer it is reached through when it cannot be reached directly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
}

impl Spec for KubeSpanPeerStatus {
    const TYPE: &'static str = "KubeSpanPeerStatus";
    const NAMESPACE: &'static str = "kubespan";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn ep(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn timing() -> HealthTiming {
        HealthTiming {
            down_after: s(60),
            try_endpoint_for: s(20),
        }
    }

    #[test]
    fn a_peer_from_its_affiliate() {
        let a = Affiliate {
            hostname: "n2".into(),
            public_key: "k".into(),
            mesh_address: "fd00::2".parse().unwrap(),
            node_addresses: vec!["10.5.0.3".parse().unwrap()],
            endpoints: vec![ep("10.5.0.3:51820")],
            pod_cidrs: vec!["10.244.2.0/24".into()],
            relay: true,
        };
        let p = peer_spec(
            &a,
            &["203.0.113.9".parse().unwrap(), "10.5.0.3".parse().unwrap()],
            true,
        );
        let allowed: Vec<String> = p.allowed_ips.iter().map(ToString::to_string).collect();
        assert_eq!(allowed, ["fd00::2/128", "10.5.0.3/32", "10.244.2.0/24"]);
        assert_eq!(p.endpoints, [ep("10.5.0.3:51820"), ep("203.0.113.9:51820")]);
        assert!(p.relay);
        let p = peer_spec(&a, &[], false);
        assert_eq!(p.allowed_ips.len(), 2, "pod networks only when configured");
    }

    #[test]
    fn up_on_handshake_down_without_and_endpoints_tried_in_turn() {
        let mut h = PeerHealth::new(
            timing(),
            vec![ep("10.0.0.1:51820"), ep("203.0.113.1:51820")],
            s(0),
        );
        assert_eq!(h.state(), PeerState::Unknown);
        assert_eq!(h.endpoint(), Some(ep("10.0.0.1:51820")));
        // No handshake on the first endpoint: after 20 s the next is tried.
        assert_eq!(h.tick(s(10), None), None);
        assert_eq!(h.tick(s(20), None), Some(ep("203.0.113.1:51820")));
        assert_eq!(h.state(), PeerState::Unknown);
        // It handshakes there: up, and it stays.
        assert_eq!(h.tick(s(25), Some(s(24))), None);
        assert_eq!(h.state(), PeerState::Up);
        for t in [30, 60, 80] {
            assert_eq!(h.tick(s(t), Some(s(t - 1))), None);
        }
        assert_eq!(h.endpoint(), Some(ep("203.0.113.1:51820")));
        // Handshakes stop (the peer went away): down after 60 s, then endpoints rotate again.
        assert_eq!(h.tick(s(100), None), None);
        assert_eq!(h.state(), PeerState::Up);
        assert_eq!(h.tick(s(140), None), Some(ep("10.0.0.1:51820")));
        assert_eq!(h.state(), PeerState::Down);
        assert_eq!(h.tick(s(150), None), None);
        assert_eq!(h.tick(s(160), None), Some(ep("203.0.113.1:51820")));
        // It comes back.
        assert_eq!(h.tick(s(165), Some(s(164))), None);
        assert_eq!(h.state(), PeerState::Up);
    }

    #[test]
    fn never_reached_goes_down_even_while_endpoints_rotate() {
        let mut h = PeerHealth::new(
            timing(),
            vec![ep("10.0.0.1:51820"), ep("203.0.113.1:51820")],
            s(0),
        );
        for t in (0..60).step_by(5) {
            h.tick(s(t), None);
            assert_eq!(h.state(), PeerState::Unknown, "at {t} s");
        }
        h.tick(s(60), None);
        assert_eq!(h.state(), PeerState::Down);
        // A packet from it (no new handshake): up again.
        h.tick(s(70), Some(s(69)));
        assert_eq!(h.state(), PeerState::Up);
        // An older report never moves the last-seen time back.
        h.tick(s(71), Some(s(1)));
        assert_eq!(h.state(), PeerState::Up);
    }

    #[test]
    fn never_reached_is_down_after_the_limit_and_new_endpoints_reset_the_choice() {
        let mut h = PeerHealth::new(timing(), vec![ep("10.0.0.1:51820")], s(0));
        assert_eq!(h.tick(s(59), None), None);
        assert_eq!(h.state(), PeerState::Unknown);
        assert_eq!(
            h.tick(s(60), None),
            None,
            "one endpoint: nothing to rotate to"
        );
        assert_eq!(h.state(), PeerState::Down);
        // Discovery learns a new address (the peer roamed): tried at once.
        assert_eq!(
            h.set_endpoints(vec![ep("198.51.100.7:51820")], s(61)),
            Some(ep("198.51.100.7:51820"))
        );
        // The same list again changes nothing.
        assert_eq!(h.set_endpoints(vec![ep("198.51.100.7:51820")], s(62)), None);
        assert_eq!(h.tick(s(63), Some(s(63))), None);
        assert_eq!(h.state(), PeerState::Up);
    }
}
