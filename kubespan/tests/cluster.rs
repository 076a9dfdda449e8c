//! KubeSpan end to end (privileged tier). Hosts are network namespaces on one bridge, each
//! running what a node runs — a resource store, networkd, and `basalt_kubespan::node::run`
//! (discovery client, agent, the userspace WireGuard device: this kernel has no WireGuard) —
//! with the open discovery server in a namespace of its own. Everything is created and removed
//! by the test.
//!
//! One test, in stages that build on each other: five hosts mesh fully within 10 s and every
//! pair pings over mesh addresses; a host that stops is marked down and comes back up when it
//! restarts; a host whose address changes is reached again; a host behind a masquerading NAT
//! reaches and is reached; two hosts behind NATs that allow no direct path reach each other
//! through a relay.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use basalt_config::types::Key32;
use basalt_kubespan::device::DeviceOptions;
use basalt_kubespan::identity::{KeyPair, KubeSpanIdentity};
use basalt_kubespan::node::NodeOptions;
use basalt_kubespan::peer::{HealthTiming, KubeSpanPeerStatus, PeerState};
use basalt_networkd::sources::KUBESPAN_LINK;
use basalt_networkd::spec::{LinkKind, LinkSpec};
use basalt_networkd::{Layer, LayerSpecs};
use basalt_resources::Store;
use basalt_resources::backoff::Backoff;
use basalt_resources::controller::Runtime;

fn run(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ip(args: &str) -> String {
    run("ip", &args.split_whitespace().collect::<Vec<_>>())
}

/// The test's namespaces; removed on drop, also when the test fails.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn add(&mut self, name: &str) {
        ip(&format!("netns add {name}"));
        ip(&format!("-n {name} link set lo up"));
        self.0.push(name.to_string());
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

/// Fast timing so the stages take seconds: keepalive 1 s, down after 4 s.
const DOWN_AFTER: Duration = Duration::from_secs(4);

/// A host: its namespace and a thread running a node until stopped.
struct Host {
    ns: String,
    keys: KeyPair,
    mesh: String,
    store: Store,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Cluster {
    id: Key32,
    secret: Key32,
    discovery: String,
}

impl Cluster {
    fn start(&self, ns: &str, keys: KeyPair) -> Host {
        let store = Store::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let opts = NodeOptions {
            cluster_id: self.id.clone(),
            cluster_secret: self.secret.clone(),
            keys: keys.clone(),
            hostname: ns.to_string(),
            discovery: Some(self.discovery.clone()),
            discovery_ttl: Duration::from_secs(30),
            device: DeviceOptions {
                keepalive: 1,
                ..DeviceOptions::default()
            },
            relay: true,
            with_pod_networks: false,
            pod_cidrs: Vec::new(),
            timing: HealthTiming {
                down_after: DOWN_AFTER,
                try_endpoint_for: Duration::from_secs(2),
            },
        };
        let (s, name) = (store.clone(), ns.to_string());
        let thread = std::thread::spawn(move || {
            enter(&name);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                basalt_networkd::publish_defaults(&s).unwrap();
                let mut runtime = Runtime::new(s.clone()).with_backoff(Backoff::new(
                    Duration::from_millis(50),
                    Duration::from_millis(500),
                    2,
                ));
                basalt_networkd::register(&mut runtime, basalt_networkd::Options::default())
                    .unwrap();
                let handle = runtime.start();
                let st = s.clone();
                let status =
                    tokio::spawn(async move { basalt_networkd::apply::run_status(st).await });
                let node = tokio::spawn(basalt_kubespan::node::run(s.clone(), opts));
                // What the config source writes for `KubeSpanConfig.enabled`: the link.
                basalt_networkd::publish(
                    &s,
                    "config",
                    Layer::Config,
                    &LayerSpecs {
                        links: vec![LinkSpec {
                            name: KUBESPAN_LINK.into(),
                            kind: LinkKind::Wireguard,
                            selector: None,
                            up: true,
                            mtu: Some(1420),
                            master: None,
                        }],
                        ..Default::default()
                    },
                )
                .unwrap();
                let _ = rx.await;
                node.abort();
                status.abort();
                handle.shutdown();
            });
        });
        let mesh = KubeSpanIdentity::new(&keys, &self.id).address;
        Host {
            ns: ns.to_string(),
            keys,
            mesh,
            store,
            stop: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Host {
    fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    fn peer_state(&self, other: &Host) -> Option<(PeerState, Option<String>)> {
        self.store
            .get::<KubeSpanPeerStatus>(&other.keys.public_base64())
            .map(|(_, s)| (s.state, s.relay))
    }

    fn ping(&self, other: &Host, within: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < within {
            let ok = Command::new("ip")
                .args([
                    "netns", "exec", &self.ns, "ping", "-6", "-c", "1", "-W", "1",
                ])
                .arg(&other.mesh)
                .output()
                .unwrap()
                .status
                .success();
            if ok {
                return true;
            }
        }
        false
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop();
    }
}

fn until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

fn all_up(hosts: &[&Host]) -> bool {
    hosts.iter().all(|a| {
        hosts
            .iter()
            .filter(|b| b.ns != a.ns)
            .all(|b| a.peer_state(b).is_some_and(|(s, _)| s == PeerState::Up))
    })
}

/// A host behind a NAT namespace: `host` → `nat` (masquerade) → the bridge.
fn behind_nat(nss: &mut Namespaces, tag: &str, public: &str, inner: u8, random: bool) -> String {
    let (nat, host) = (format!("{tag}-nat"), format!("{tag}-h"));
    nss.add(&nat);
    nss.add(&host);
    let br = &nss.0[0];
    ip(&format!(
        "-n {nat} link add out0 type veth peer name {tag}-o netns {br}"
    ));
    ip(&format!("-n {br} link set {tag}-o master br0 up"));
    ip(&format!("-n {nat} addr add {public}/24 dev out0"));
    ip(&format!("-n {nat} link set out0 up"));
    ip(&format!(
        "-n {nat} link add in0 type veth peer name eth0 netns {host}"
    ));
    ip(&format!("-n {nat} addr add 192.168.{inner}.1/24 dev in0"));
    ip(&format!("-n {nat} link set in0 up"));
    ip(&format!("-n {host} addr add 192.168.{inner}.2/24 dev eth0"));
    ip(&format!("-n {host} link set eth0 up"));
    ip(&format!(
        "-n {host} route add default via 192.168.{inner}.1"
    ));
    run(
        "ip",
        &[
            "netns",
            "exec",
            &nat,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
        ],
    );
    // `random-fully`: a new, random outside port per destination — a NAT no hole punching
    // gets through; plain masquerade keeps the port where it can.
    let rule = format!(
        "table ip nat {{\n chain post {{\n  type nat hook postrouting priority 100;\n  oifname \"out0\" masquerade{}\n }}\n}}\n",
        if random { " fully-random" } else { "" }
    );
    let f = std::env::temp_dir().join(format!("basalt-ks-{tag}-{}.nft", std::process::id()));
    std::fs::write(&f, rule).unwrap();
    run(
        "ip",
        &["netns", "exec", &nat, "nft", "-f", f.to_str().unwrap()],
    );
    let _ = std::fs::remove_file(&f);
    host
}

#[test]
fn a_cluster_meshes_heals_and_reaches_through_nat_and_relay() {
    if !basalt_testkit::tier(
        basalt_testkit::Tier::Privileged,
        "a_cluster_meshes_heals_and_reaches_through_nat_and_relay",
    ) {
        return;
    }
    let tag = format!("ks{}", std::process::id() % 100_000);
    let mut nss = Namespaces(Vec::new());
    // The "internet": a bridge in its own namespace, with the discovery server on it.
    let hub = format!("{tag}-hub");
    nss.add(&hub);
    ip(&format!("-n {hub} link add br0 type bridge"));
    ip(&format!("-n {hub} addr add 10.77.0.1/24 dev br0"));
    ip(&format!("-n {hub} link set br0 up"));
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let h = hub.clone();
    let server = std::thread::spawn(move || {
        enter(&h);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("10.77.0.1:3000")
                .await
                .unwrap();
            basalt_kubespan::discovery::serve(
                l,
                basalt_kubespan::discovery::Limits::default(),
                None,
                async {
                    let _ = server_stopped.await;
                },
            )
            .await
            .unwrap();
        });
    });
    let cluster = Cluster {
        id: Key32::generate(),
        secret: Key32::generate(),
        discovery: "http://10.77.0.1:3000".into(),
    };

    // Five hosts on the bridge.
    let mut hosts = Vec::new();
    let started = Instant::now();
    for i in 1..=5u8 {
        let ns = format!("{tag}-n{i}");
        nss.add(&ns);
        ip(&format!(
            "-n {ns} link add eth0 type veth peer name {tag}-{i} netns {hub}"
        ));
        ip(&format!("-n {hub} link set {tag}-{i} master br0 up"));
        ip(&format!("-n {ns} addr add 10.77.0.{}/24 dev eth0", 10 + i));
        ip(&format!("-n {ns} link set eth0 up"));
        hosts.push(cluster.start(&ns, KeyPair::generate()));
    }
    let refs: Vec<&Host> = hosts.iter().collect();
    until("a full mesh of five", Duration::from_secs(10), || {
        all_up(&refs)
    });
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
    let _ = stop_server.send(());
    server.join().unwrap();
}
