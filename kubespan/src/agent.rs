//! The mesh, kept: from the `KubeSpanPeerSpec`s discovery writes to the WireGuard device's
//! peers, each peer's health, the relay for peers that cannot be reached directly, a
//! `KubeSpanPeerStatus` per peer, and the routes that send mesh traffic into the device.
//!
//! [`Agent::step`] is the whole decision and does no I/O: it is told the time, the specs and
//! what the device reports, and answers what the device, the statuses and networkd should be.
//! [`run`] is the loop around it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use basalt_config::types::Prefix;
use basalt_networkd::LayerSpecs;
use basalt_networkd::sources::KUBESPAN_LINK;
use basalt_networkd::spec::{AddressSpec, MAIN_TABLE, RouteSpec, RuleSpec};
use basalt_resources::{Kind, Store};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use tracing::warn;

use crate::device::{DataPlane, DevicePeer, FWMARK, PeerStats};
use crate::peer::{HealthTiming, KubeSpanPeerSpec, KubeSpanPeerStatus, PeerHealth, PeerState};

/// The routing table mesh routes live in.
pub const TABLE: u32 = 180;
/// The rule sending unmarked traffic to [`TABLE`]; before the main table's (32766), so a
/// peer's node address goes through the mesh although the underlay route also matches.
pub const RULE_PRIORITY: u32 = 32500;
/// Owner of the statuses and of KubeSpan's networkd layer.
pub const OWNER: &str = "kubespan";

/// What the agent is told once.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub timing: HealthTiming,
    /// Reach down peers through a relay (`KubeSpanConfig.allowRelay`).
    pub use_relays: bool,
    /// This node's mesh address and the cluster's mesh prefix length (64).
    pub mesh_address: Prefix,
}

/// What one step decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub device: Vec<DevicePeer>,
    pub statuses: BTreeMap<String, KubeSpanPeerStatus>,
    pub network: LayerSpecs,
}

/// The agent's memory between steps: each peer's health.
#[derive(Debug)]
pub struct Agent {
    opts: AgentOptions,
    health: BTreeMap<String, PeerHealth>,
}

fn key(b64: &str) -> Option<[u8; 32]> {
    B64.decode(b64).ok()?.try_into().ok()
}

impl Agent {
    pub fn new(opts: AgentOptions) -> Self {
        Agent {
            opts,
            health: BTreeMap::new(),
        }
    }

    /// One decision at `now` (time since any fixed origin) from the peer specs (by public key)
    /// and the device's stats.
    pub fn step(
        &mut self,
        now: Duration,
        specs: &BTreeMap<String, KubeSpanPeerSpec>,
        stats: &[PeerStats],
    ) -> Step {
        self.health.retain(|k, _| specs.contains_key(k));
        let stats_of = |k: &[u8; 32]| stats.iter().find(|s| s.public_key == *k);
        for (k, spec) in specs {
            let timing = self.opts.timing;
            let h = self
                .health
                .entry(k.clone())
                .or_insert_with(|| PeerHealth::new(timing, spec.endpoints.clone(), now));
            h.set_endpoints(spec.endpoints.clone(), now);
            let st = key(k).and_then(|k| stats_of(&k));
            // Last heard from: the newer of the last handshake and the last packet.
            let seen = st.and_then(|s| {
                [s.since_handshake, s.since_received]
                    .into_iter()
                    .flatten()
                    .min()
                    .map(|ago| now.saturating_sub(ago))
            });
            h.tick(now, seen);
        }
        let relay = self.relay(specs);
        let mut device: Vec<DevicePeer> = Vec::new();
        let mut via: BTreeMap<&str, &str> = BTreeMap::new();
        for (k, spec) in specs {
            let Some(public_key) = key(k) else {
                warn!(peer = %spec.hostname, "a peer whose key is not a WireGuard key");
                continue;
            };
            let h = &self.health[k];
            let relayed = relay.filter(|r| *r != k.as_str() && h.state() == PeerState::Down);
            if let Some(r) = relayed {
                via.insert(k, r);
            }
            device.push(DevicePeer {
                public_key,
                endpoint: h.endpoint(),
                // A relayed peer keeps its entry (and its endpoint, so a direct handshake can
                // still succeed and bring it back) but its addresses go to the relay's.
                allowed_ips: if relayed.is_some() {
                    Vec::new()
                } else {
                    spec.allowed_ips.clone()
                },
            });
        }
        for (peer, r) in &via {
            let moved = specs[*peer].allowed_ips.clone();
            if let Some(d) = key(r).and_then(|rk| device.iter_mut().find(|d| d.public_key == rk)) {
                d.allowed_ips.extend(moved);
            }
        }
        let statuses = specs
            .iter()
            .map(|(k, spec)| {
                let h = &self.health[k];
                let st = key(k).and_then(|k| stats_of(&k));
                (
                    k.clone(),
                    KubeSpanPeerStatus {
                        hostname: spec.hostname.clone(),
                        endpoint: st.and_then(|s| s.endpoint).or(h.endpoint()),
                        state: h.state(),
                        last_handshake_seconds_ago: st
                            .and_then(|s| s.since_handshake)
                            .map(|d| d.as_secs()),
                        rx_bytes: st.map_or(0, |s| s.rx_bytes),
                        tx_bytes: st.map_or(0, |s| s.tx_bytes),
                        relay: via.get(k.as_str()).map(|r| specs[*r].hostname.clone()),
                    },
                )
            })
            .collect();
        Step {
            device,
            statuses,
            network: self.network(specs),
        }
    }

    /// The relay: of the peers that relay and are up from here, the one with the lowest key —
    /// the same choice on both sides of a pair that cannot reach each other, as long as both
    /// reach it.
    fn relay<'a>(&self, specs: &'a BTreeMap<String, KubeSpanPeerSpec>) -> Option<&'a str> {
        if !self.opts.use_relays {
            return None;
        }
        specs
            .iter()
            .filter(|(k, s)| s.relay && self.health[*k].state() == PeerState::Up)
            .map(|(k, _)| k.as_str())
            .next()
    }

    /// KubeSpan's part of the network: the mesh address on the link, a route per peer address
    /// into [`TABLE`], and the rules that send everything but WireGuard's own (marked) packets
    /// through that table first.
    fn network(&self, specs: &BTreeMap<String, KubeSpanPeerSpec>) -> LayerSpecs {
        let mut routes: BTreeMap<String, RouteSpec> = BTreeMap::new();
        for p in specs.values().flat_map(|s| s.allowed_ips.iter()) {
            routes.insert(
                p.to_string(),
                RouteSpec {
                    link: KUBESPAN_LINK.into(),
                    destination: *p,
                    gateway: None,
                    source: None,
                    metric: 0,
                    table: TABLE,
                },
            );
        }
        let rule = |ipv6| RuleSpec {
            priority: RULE_PRIORITY,
            ipv6,
            fwmark: Some(FWMARK),
            fwmask: Some(FWMARK),
            invert: true,
            table: TABLE,
        };
        debug_assert_ne!(TABLE, MAIN_TABLE);
        LayerSpecs {
            addresses: vec![AddressSpec {
                link: KUBESPAN_LINK.into(),
                address: self.opts.mesh_address,
            }],
            routes: routes.into_values().collect(),
            rules: vec![rule(false), rule(true)],
            ..Default::default()
        }
    }
}

/// Runs the agent until the data plane fails: a step whenever the peer specs change and every
/// half second (health is about time passing).
pub async fn run(
    store: Store,
    opts: AgentOptions,
    plane: &dyn DataPlane,
) -> Result<(), crate::device::DeviceError> {
    let start = tokio::time::Instant::now();
    let kind = Kind::of::<KubeSpanPeerSpec>();
    let mut watch = store.watch_kind(kind.clone(), None);
    let mut agent = Agent::new(opts);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_network: Option<LayerSpecs> = None;
    loop {
        tokio::select! {
            e = watch.next() => {
                if e.is_err() {
                    watch = store.watch_kind(kind.clone(), None);
                }
            }
            _ = tick.tick() => {}
        }
        let specs: BTreeMap<String, KubeSpanPeerSpec> = store
            .list::<KubeSpanPeerSpec>()
            .into_iter()
            .map(|(md, s)| (md.id, s))
            .collect();
        let stats = plane.stats().await?;
        let step = agent.step(start.elapsed(), &specs, &stats);
        plane.set_peers(&step.device).await?;
        if let Err(e) = store.sync_owned(OWNER, &step.statuses) {
            warn!(error = %e, "peer statuses not written");
        }
        if last_network.as_ref() != Some(&step.network) {
            match basalt_networkd::publish(
                &store,
                OWNER,
                basalt_networkd::Layer::Config,
                &step.network,
            ) {
                Ok(()) => last_network = Some(step.network),
                Err(e) => warn!(error = %e, "the mesh routes not published"),
            }
        }
    }
}

/// The node's own addresses as networkd sees them: global, not loopback, not the mesh's.
pub fn node_addresses(store: &Store) -> Vec<IpAddr> {
    store
        .list::<basalt_networkd::spec::AddressStatus>()
        .into_iter()
        .map(|(_, a)| a)
        .filter(|a| a.scope == "global" && a.link != "lo" && a.link != KUBESPAN_LINK)
        .map(|a| a.address.addr())
        .collect()
}

#[cfg(test)]
mod tests;
