use super::*;
use std::net::SocketAddr;

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn k(n: u8) -> String {
    B64.encode([n; 32])
}

fn spec(n: u8, relay: bool) -> KubeSpanPeerSpec {
    KubeSpanPeerSpec {
        hostname: format!("node-{n}"),
        public_key: k(n),
        mesh_address: format!("fd00::{n}").parse().unwrap(),
        allowed_ips: vec![
            format!("fd00::{n}/128").parse().unwrap(),
            format!("10.0.0.{n}/32").parse().unwrap(),
        ],
        endpoints: vec![format!("10.0.0.{n}:51820").parse().unwrap()],
        relay,
    }
}

fn specs(list: &[(u8, bool)]) -> BTreeMap<String, KubeSpanPeerSpec> {
    list.iter().map(|(n, r)| (k(*n), spec(*n, *r))).collect()
}

/// The device saw a handshake from these peers `ago` before now.
fn heard(peers: &[u8], ago: Duration) -> Vec<PeerStats> {
    peers
        .iter()
        .map(|n| PeerStats {
            public_key: [*n; 32],
            endpoint: Some(format!("10.0.0.{n}:51820").parse::<SocketAddr>().unwrap()),
            since_handshake: Some(ago),
            since_received: Some(ago),
            tx_bytes: 100,
            rx_bytes: 200,
        })
        .collect()
}

fn agent(use_relays: bool) -> Agent {
    Agent::new(AgentOptions {
        timing: HealthTiming {
            down_after: s(30),
            try_endpoint_for: s(10),
        },
        use_relays,
        mesh_address: "fd00::9/64".parse().unwrap(),
    })
}

fn allowed(step: &Step, n: u8) -> Vec<String> {
    step.device
        .iter()
        .find(|d| d.public_key == [n; 32])
        .unwrap()
        .allowed_ips
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn every_peer_is_a_device_peer_with_its_routes_and_status() {
    let mut a = agent(true);
    let sp = specs(&[(1, false), (2, false)]);
    let st = a.step(s(5), &sp, &heard(&[1, 2], s(1)));
    assert_eq!(st.device.len(), 2);
    assert_eq!(allowed(&st, 1), ["fd00::1/128", "10.0.0.1/32"]);
    let p1 = &st.statuses[&k(1)];
    assert_eq!(p1.state, PeerState::Up);
    assert_eq!(p1.hostname, "node-1");
    assert_eq!(p1.last_handshake_seconds_ago, Some(1));
    assert_eq!((p1.rx_bytes, p1.tx_bytes), (200, 100));
    assert_eq!(p1.relay, None);
    // Routes: every allowed IP into the mesh table, through the mesh link.
    let routes: Vec<String> = st
        .network
        .routes
        .iter()
        .map(|r| format!("{} {} {}", r.destination, r.link, r.table))
        .collect();
    assert_eq!(
        routes,
        [
            "10.0.0.1/32 kubespan 180",
            "10.0.0.2/32 kubespan 180",
            "fd00::1/128 kubespan 180",
            "fd00::2/128 kubespan 180"
        ]
    );
    // Everything not marked as WireGuard's own looks in the mesh table first, both families.
    assert_eq!(st.network.rules.len(), 2);
    assert!(
        st.network.rules.iter().all(|r| r.invert
            && r.fwmark == Some(FWMARK)
            && r.table == TABLE
            && r.priority < 32766)
    );
    assert_eq!(st.network.addresses[0].address.to_string(), "fd00::9/64");
    // A peer gone from discovery is gone from the device and the statuses.
    let st = a.step(s(6), &specs(&[(1, false)]), &heard(&[1, 2], s(1)));
    assert_eq!(st.device.len(), 1);
    assert!(!st.statuses.contains_key(&k(2)));
    assert_eq!(st.network.routes.len(), 2);
}

#[test]
fn a_peer_never_reached_goes_through_the_relay_and_comes_back_direct() {
    let mut a = agent(true);
    // Peer 5 relays and is up; peer 3 relays but is never reached; peer 7 is never reached.
    let sp = specs(&[(3, true), (5, true), (7, false)]);
    let st = a.step(s(1), &sp, &heard(&[5], s(0)));
    assert_eq!(st.statuses[&k(7)].state, PeerState::Unknown);
    assert_eq!(allowed(&st, 7).len(), 2, "not down yet: direct");
    let st = a.step(s(31), &sp, &heard(&[5], s(0)));
    assert_eq!(st.statuses[&k(7)].state, PeerState::Down);
    // 7's addresses now go to 5 (up, relays); 3 relays too but is down itself.
    assert_eq!(st.statuses[&k(7)].relay.as_deref(), Some("node-5"));
    assert_eq!(st.statuses[&k(3)].relay.as_deref(), Some("node-5"));
    assert!(allowed(&st, 7).is_empty());
    assert_eq!(
        allowed(&st, 5),
        [
            "fd00::5/128",
            "10.0.0.5/32",
            "fd00::3/128",
            "10.0.0.3/32",
            "fd00::7/128",
            "10.0.0.7/32"
        ]
    );
    // The relayed peer keeps its endpoint, so a direct handshake can still happen.
    let d7 = st.device.iter().find(|d| d.public_key == [7; 32]).unwrap();
    assert!(d7.endpoint.is_some());
    // It does: direct again.
    let st = a.step(s(40), &sp, &heard(&[5, 7], s(0)));
    assert_eq!(st.statuses[&k(7)].state, PeerState::Up);
    assert_eq!(st.statuses[&k(7)].relay, None);
    assert_eq!(allowed(&st, 7), ["fd00::7/128", "10.0.0.7/32"]);
    // Routes never change with relaying: everything goes into the one device.
    assert_eq!(st.network.routes.len(), 6);
}

#[test]
fn no_relay_when_relays_are_off_or_none_is_up() {
    let sp = specs(&[(5, true), (7, false)]);
    let mut a = agent(false);
    a.step(s(0), &sp, &[]);
    let st = a.step(s(31), &sp, &heard(&[5], s(0)));
    assert_eq!(st.statuses[&k(7)].state, PeerState::Down);
    assert_eq!(st.statuses[&k(7)].relay, None);
    assert_eq!(allowed(&st, 7).len(), 2);
    // Relays on, but the only one that would relay is down too.
    let mut a = agent(true);
    a.step(s(0), &sp, &[]);
    let st = a.step(s(31), &sp, &[]);
    assert_eq!(st.statuses[&k(7)].relay, None);
    assert_eq!(allowed(&st, 7).len(), 2);
    // A peer that does not relay is never chosen.
    let sp = specs(&[(5, false), (7, false)]);
    let st = a.step(s(62), &sp, &heard(&[5], s(0)));
    assert_eq!(st.statuses[&k(7)].relay, None);
}
