//! KubeSpan end to end (privileged tier). Hosts are network namespaces on one bridge, each
//! running what a node runs — a resource store, networkd, and `basalt_kubespan::node::run`
//! (discovery client, agent, the userspace WireGuard device: this kernel has no WireGuard) —
//! with the open discovery server in a namespace of its own. Everything is created and removed
//! by the test.
//!
//! Two tests. Five hosts that start before the discovery server listens mesh once it does.
//! And one in stages that build on each other: five hosts mesh fully and every pair pings
//! over mesh addresses; a host that stops is marked down and comes back up when it
//! restarts; a host whose address changes is reached again; a host behind a masquerading NAT
//! reaches and is reached; two hosts behind NATs that allow no direct path reach each other
//! through a relay.

#![allow(clippy::unwrap_used)]

mod harness;

use std::time::{Duration, Instant};

use basalt_kubespan::identity::KeyPair;
use basalt_kubespan::peer::PeerState;
use harness::*;

/// One mesh at a time: two at once would share the machine's two cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Issue 24's mesh flake, made to happen: five hosts start while the discovery server is not
/// listening yet (a whole cluster booting at once, its server last). Run this way, 5 of 12
/// runs took 34–50 s to mesh, and the logs and tcpdump told why: a host that resolved the
/// hub's address early sent its SYNs to the bridge's old MAC — a bridge without an address of
/// its own takes its ports' lowest MAC and changes it as ports join — and the bridge no longer
/// took them, until the host's ARP entry went stale. The hub's bridge now has a MAC of its own
/// (and so has `osctl cluster`'s); with it, 10 of 10 runs meshed within 1.1–2.6 s. The
/// discovery client also retries from 250 ms, doubling (it waited a fixed 5 s), so a node
/// meets a late server soon after it listens. The time is printed; the guard is generous.
#[test]
fn hosts_that_start_before_the_discovery_server_mesh_once_it_listens() {
    if !basalt_testkit::tier(
        basalt_testkit::Tier::Privileged,
        "hosts_that_start_before_the_discovery_server_mesh_once_it_listens",
    ) {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let tag = format!("kl{}", std::process::id() % 100_000);
    let mut nss = Namespaces(Vec::new());
    let late = Duration::from_secs(1);
    let hub = Hub::start_late(&mut nss, &tag, Some(late));
    let cluster = hub.cluster();
    let started = Instant::now();
    let hosts: Vec<Host> = (1..=5u8)
        .map(|i| {
            let ns = hub.add_host(&mut nss, i);
            cluster.start(&ns, KeyPair::generate())
        })
        .collect();
    let refs: Vec<&Host> = hosts.iter().collect();
    until_meshed("a full mesh of five", &refs, Duration::from_secs(60));
    let meshed = started.elapsed();
    assert!(hosts[0].ping(&hosts[4], Duration::from_secs(5)));
    eprintln!(
        "five hosts, the discovery server {late:?} late: a full mesh {meshed:?} after the first started"
    );
    drop(hosts);
    drop(hub);
}

#[test]
fn a_cluster_meshes_heals_and_reaches_through_nat_and_relay() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if !basalt_testkit::tier(
        basalt_testkit::Tier::Privileged,
        "a_cluster_meshes_heals_and_reaches_through_nat_and_relay",
    ) {
        return;
    }
    let tag = format!("ks{}", std::process::id() % 100_000);
    let mut nss = Namespaces(Vec::new());
    // The "internet": a bridge in its own namespace, with the discovery server on it.
    let hub = Hub::start(&mut nss, &tag);
    let cluster = hub.cluster();

    // Five hosts on the bridge.
    let mut hosts = Vec::new();
    let started = Instant::now();
    for i in 1..=5u8 {
        let ns = hub.add_host(&mut nss, i);
        hosts.push(cluster.start(&ns, KeyPair::generate()));
    }
    let refs: Vec<&Host> = hosts.iter().collect();
    // A guard, not the measure (the mesh benchmark measures: 0.6 s). 10 s was missed in some
    // full runs while the hub's bridge changed its MAC as hosts joined (see the test above);
    // the time it took is printed below.
    until_meshed("a full mesh of five", &refs, Duration::from_secs(60));
    let meshed = started.elapsed();
    for a in &hosts {
        for b in &hosts {
            if a.ns != b.ns {
                assert!(
                    a.ping(b, Duration::from_secs(3)),
                    "{} cannot ping {} over the mesh",
                    a.ns,
                    b.ns
                );
            }
        }
    }
    eprintln!("five hosts: a full mesh {meshed:?} after the first started; 20 pairs ping");
    // The routes are networkd's, in the mesh's table, and the device's own packets bypass it.
    let table = ip(&format!("-n {} -6 route show table 180", hosts[0].ns));
    assert!(
        table.contains(&format!("{} dev kubespan", hosts[1].mesh)),
        "{table}"
    );
    let nft = run(
        "ip",
        &[
            "netns",
            "exec",
            &hosts[0].ns,
            "nft",
            "list",
            "table",
            "inet",
            "basalt_kubespan",
        ],
    );
    assert!(nft.contains("tcp option maxseg size set 1380"), "{nft}");
    let rules = ip(&format!("-n {} rule show", hosts[0].ns));
    assert!(
        rules.contains("not from all fwmark 0x51820/0x51820 lookup 180"),
        "{rules}"
    );

    // A host stops: its peers mark it down. It restarts (same key): up again.
    let keys5 = hosts[4].keys.clone();
    hosts[4].stop();
    let t = until("host 5 down at host 1", DOWN_AFTER * 3, || {
        hosts[0]
            .peer_state(&hosts[4])
            .is_some_and(|(s, _)| s == PeerState::Down)
    });
    eprintln!("host 5 stopped: down at host 1 after {t:?}");
    let ns5 = hosts[4].ns.clone();
    hosts[4] = cluster.start(&ns5, keys5);
    let t = until("host 5 up again", Duration::from_secs(15), || {
        hosts[0]
            .peer_state(&hosts[4])
            .is_some_and(|(s, _)| s == PeerState::Up)
    });
    assert!(hosts[0].ping(&hosts[4], Duration::from_secs(5)));
    eprintln!("host 5 restarted: up at host 1 after {t:?}");

    // Roaming: host 3's underlay address changes; the others reach it again.
    let ns3 = hosts[2].ns.clone();
    // (Deleting a primary address takes its secondaries with it: remove, then add.)
    ip(&format!("-n {ns3} addr del 10.77.0.13/24 dev eth0"));
    ip(&format!("-n {ns3} addr add 10.77.0.33/24 dev eth0"));
    let start = Instant::now();
    assert!(
        hosts[0].ping(&hosts[2], Duration::from_secs(15)),
        "host 1 does not reach host 3 after it moved"
    );
    assert!(hosts[3].ping(&hosts[2], Duration::from_secs(10)));
    eprintln!("host 3 moved: reached again after {:?}", start.elapsed());

    // Behind a masquerading NAT: reaches the others and is reached.
    let nat_host = behind_nat(&mut nss, &format!("{tag}a"), "10.77.0.51", 61, false);
    let behind = cluster.start(&nat_host, KeyPair::generate());
    assert!(
        behind.ping(&hosts[0], Duration::from_secs(15)),
        "the host behind NAT does not reach host 1"
    );
    assert!(
        hosts[1].ping(&behind, Duration::from_secs(10)),
        "host 2 does not reach the host behind NAT"
    );

    // Two hosts behind NATs that let nothing in: they reach each other through a relay.
    let x = behind_nat(&mut nss, &format!("{tag}b"), "10.77.0.52", 62, true);
    let y = behind_nat(&mut nss, &format!("{tag}c"), "10.77.0.53", 63, true);
    let (x, y) = (
        cluster.start(&x, KeyPair::generate()),
        cluster.start(&y, KeyPair::generate()),
    );
    let t = until("x relays to y", Duration::from_secs(30), || {
        x.peer_state(&y).is_some_and(|(_, r)| r.is_some())
            && y.peer_state(&x).is_some_and(|(_, r)| r.is_some())
    });
    let via = x.peer_state(&y).unwrap().1.unwrap();
    assert_eq!(
        Some(via.clone()),
        y.peer_state(&x).unwrap().1,
        "both sides pick the same relay"
    );
    assert!(
        x.ping(&y, Duration::from_secs(10)),
        "x does not reach y through the relay {via}"
    );
    assert!(y.ping(&x, Duration::from_secs(5)));
    eprintln!("two hosts behind NATs: relayed through {via} after {t:?}");

    drop((x, y, behind));
    drop(hosts);
    drop(hub);
}
