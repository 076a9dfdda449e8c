//! Privileged tests: networkd's controllers run standalone in a fresh network namespace per
//! test (a thread of its own unshares it, so the host is untouched and tests run in parallel),
//! against veth pairs the test makes with `ip`, and checked with `ip` as well as through the
//! status resources.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::process::Command;
use std::time::{Duration, Instant};

use basalt_config::{Config, Mode};
use basalt_networkd::spec::{AddressStatus, LinkStatus, RouteStatus};
use basalt_networkd::{FilesOptions, Layer, publish, sources};
use basalt_resources::controller::Runtime;
use basalt_resources::{Backoff, Store};

const BASE: &str = include_str!("../../config/testdata/valid/controlplane.yaml");

fn config(network: &str) -> Config {
    Config::parse(&format!("{BASE}\n---\n{network}"), Mode::Metal)
        .unwrap_or_else(|e| panic!("{}", basalt_resources::error_chain(&e)))
}

/// Runs `body` in a new network namespace with networkd started on a fresh store.
fn in_netns<F, Fut>(test: &str, body: F)
where
    F: FnOnce(Store, basalt_networkd::dhcp::Leases) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    if !basalt_testkit::tier(basalt_testkit::Tier::Privileged, test) {
        return;
    }
    let result = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare the netns");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async move {
            let store = Store::default();
            basalt_networkd::publish_defaults(&store).unwrap();
            let mut runtime = Runtime::new(store.clone()).with_backoff(Backoff::new(
                Duration::from_millis(50),
                Duration::from_millis(500),
                2,
            ));
            let opts = options();
            let leases = opts.leases.clone();
            basalt_networkd::register(&mut runtime, opts).unwrap();
            let handle = runtime.start();
            let s = store.clone();
            tokio::spawn(async move { basalt_networkd::apply::run_status(s).await });
            body(store, leases).await;
            handle.shutdown();
        });
    })
    .join();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

fn options() -> basalt_networkd::Options {
    basalt_networkd::Options {
        files: FilesOptions::default(),
        dhcp: basalt_networkd::dhcp::Timing {
            first_retry: Duration::from_millis(500),
            max_retry: Duration::from_secs(2),
        },
        leases: Default::default(),
    }
}

/// Runs `ip` in the calling thread's namespace; fails the test if it fails.
fn ip(args: &str) -> String {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

const LONG: Duration = Duration::from_secs(10);

fn has_address(store: &Store, link: &str, addr: &str) -> bool {
    store
        .get::<AddressStatus>(&format!("{link}/{addr}"))
        .is_some()
}

#[tokio::test]
async fn static_addresses_and_routes() {
    in_netns("static_addresses_and_routes", |store, _| async move {
        ip("link add v0 type veth peer name v1");
        let c = config(
            "apiVersion: v1alpha1
kind: LinkConfig
name: v0
mtu: 1400
addresses: [10.10.0.2/24, 'fd00:10::2/64']
routes:
  - destination: 10.20.0.0/16
    gateway: 10.10.0.1
  - destination: 0.0.0.0/0
    gateway: 10.10.0.254
    metric: 50
",
        );
        publish(&store, "config", Layer::Config, &sources::from_config(&c)).unwrap();
        until("the default route", LONG, || {
            store
                .get::<RouteStatus>("v0/0.0.0.0/0/10.10.0.254/50")
                .is_some()
        })
        .await;
        // What `ip` says, independently of networkd's own status resources.
        let addrs = ip("-br addr show dev v0");
        assert!(
            addrs.contains("UP") || addrs.contains("LOWERLAYERDOWN"),
            "{addrs}"
        );
        assert!(
            addrs.contains("10.10.0.2/24") && addrs.contains("fd00:10::2/64"),
            "{addrs}"
        );
        assert!(ip("link show v0").contains("mtu 1400"));
        let routes = ip("route show");
        assert!(
            routes.contains("10.20.0.0/16 via 10.10.0.1 dev v0 proto static metric 1024"),
            "{routes}"
        );
        assert!(
            routes.contains("default via 10.10.0.254 dev v0 proto static metric 50"),
            "{routes}"
        );
        assert!(has_address(&store, "lo", "127.0.0.1/8"));
        assert!(
            store
                .get::<LinkStatus>("v0")
                .is_some_and(|(_, l)| l.up && l.mtu == 1400)
        );
    });
}

#[tokio::test]
async fn a_bridge_with_its_ports() {
    in_netns("a_bridge_with_its_ports", |store, _| async move {
        // p1's MAC is the lower: the kernel's own choice for a bridge, once p1 joins.
        ip("link add p0 address 02:00:00:00:00:f0 type veth peer name p0peer");
        ip("link add p1 address 02:00:00:00:00:01 type veth peer name p1peer");
        let c = config(
            "apiVersion: v1alpha1
kind: BridgeConfig
name: br0
links: [p0, p1]
stp: true
addresses: [192.168.50.1/24]
",
        );
        publish(&store, "config", Layer::Config, &sources::from_config(&c)).unwrap();
        until("the bridge's address", LONG, || {
            has_address(&store, "br0", "192.168.50.1/24")
        })
        .await;
        until("both ports enslaved and up", LONG, || {
            let br = store.get::<LinkStatus>("br0").map(|(_, l)| l.index);
            ["p0", "p1"].iter().all(|p| {
                store
                    .get::<LinkStatus>(p)
                    .is_some_and(|(_, l)| l.up && l.master_index == br)
            })
        })
        .await;
        let br = ip("-d link show br0");
        assert!(br.contains("bridge") && br.contains("stp_state 1"), "{br}");
        // The bridge keeps its first port's MAC (by name) as ports join, not the lowest.
        assert!(br.contains("link/ether 02:00:00:00:00:f0"), "{br}");
        assert!(ip("link show p0").contains("master br0"));
        // Dropping the bridge from the config deletes it (networkd made it) and frees the ports.
        let c = config(
            "apiVersion: v1alpha1
kind: LinkConfig
name: p0
",
        );
        publish(&store, "config", Layer::Config, &sources::from_config(&c)).unwrap();
        until("the bridge gone", LONG, || {
            store.get::<LinkStatus>("br0").is_none()
        })
        .await;
        assert!(!ip("link show").contains("br0"));
    });
}

#[tokio::test]
async fn changing_the_config_moves_addresses_without_flapping_other_links() {
    in_netns(
        "changing_the_config_moves_addresses_without_flapping_other_links",
        |store, _| async move {
            ip("link add a0 type veth peer name a1");
            ip("link add b0 type veth peer name b1");
            let before = config(
                "apiVersion: v1alpha1
kind: LinkConfig
name: a0
addresses: [10.1.0.2/24]
---
apiVersion: v1alpha1
kind: LinkConfig
name: b0
addresses: [10.2.0.2/24]
",
            );
            publish(
                &store,
                "config",
                Layer::Config,
                &sources::from_config(&before),
            )
            .unwrap();
            until("both addresses", LONG, || {
                has_address(&store, "a0", "10.1.0.2/24") && has_address(&store, "b0", "10.2.0.2/24")
            })
            .await;
            let b0 = store.get::<LinkStatus>("b0").unwrap().1;
            let mut watch = store.watch_kind(basalt_resources::Kind::of::<LinkStatus>(), None);
            let mut addr_watch =
                store.watch_kind(basalt_resources::Kind::of::<AddressStatus>(), None);
            while let Ok(Some(_)) = watch.try_next() {}
            while let Ok(Some(_)) = addr_watch.try_next() {}
            let after = config(
                "apiVersion: v1alpha1
kind: LinkConfig
name: a0
addresses: [10.1.0.3/24]
---
apiVersion: v1alpha1
kind: LinkConfig
name: b0
addresses: [10.2.0.2/24, 10.1.0.2/24]
",
            );
            publish(
                &store,
                "config",
                Layer::Config,
                &sources::from_config(&after),
            )
            .unwrap();
            until("the moved address", LONG, || {
                has_address(&store, "b0", "10.1.0.2/24")
                    && has_address(&store, "a0", "10.1.0.3/24")
                    && !has_address(&store, "a0", "10.1.0.2/24")
            })
            .await;
            // b0 never went down, kept its index and its first address throughout.
            while let Ok(Some(e)) = watch.try_next() {
                if let Some(r) = &e.resource
                    && r.metadata.id == "b0"
                {
                    let l = r.spec::<LinkStatus>().unwrap();
                    assert!(l.up, "b0 went down: {l:?}");
                    assert_eq!(l.index, b0.index);
                }
            }
            while let Ok(Some(e)) = addr_watch.try_next() {
                let id = e
                    .resource
                    .as_ref()
                    .map(|r| r.metadata.id.clone())
                    .unwrap_or_default();
                assert!(
                    !(id == "b0/10.2.0.2/24" && e.kind == basalt_resources::EventKind::Destroyed),
                    "b0's unchanged address was removed"
                );
            }
        },
    );
}

#[tokio::test]
async fn drift_is_repaired() {
    in_netns("drift_is_repaired", |store, _| async move {
        ip("link add d0 type veth peer name d1");
        let c = config(
            "apiVersion: v1alpha1
kind: LinkConfig
name: d0
addresses: [10.3.0.2/24]
routes:
  - destination: 10.30.0.0/16
    gateway: 10.3.0.1
",
        );
        publish(&store, "config", Layer::Config, &sources::from_config(&c)).unwrap();
        let route = "d0/10.30.0.0/16/10.3.0.1/1024";
        until("address and route", LONG, || {
            has_address(&store, "d0", "10.3.0.2/24") && store.get::<RouteStatus>(route).is_some()
        })
        .await;
        // The bound: back within one second.
        ip("addr del 10.3.0.2/24 dev d0");
        let took = until("the address back", Duration::from_secs(1), || {
            ip("-br addr show dev d0").contains("10.3.0.2/24")
        })
        .await;
        eprintln!("address repaired in {took:?}");
        // Deleting the address took the route with it; it comes back too. And a route deleted
        // alone.
        until("the route back", Duration::from_secs(1), || {
            ip("route show").contains("10.30.0.0/16 via 10.3.0.1")
        })
        .await;
        ip("route del 10.30.0.0/16");
        until("the route back again", Duration::from_secs(1), || {
            ip("route show").contains("10.30.0.0/16 via 10.3.0.1")
        })
        .await;
        ip("link set d0 down");
        until("the link up again", Duration::from_secs(1), || {
            ip("-br link show dev d0").contains("UP") || ip("link show d0").contains(",UP")
        })
        .await;
    });
}

/// Loopback's address, put back by networkd, keeps host scope: with a universe-scope
/// `127.0.0.1` the kernel picked it as the source for a route through a link with no IPv4
/// address (KubeSpan's `dev kubespan scope link` routes) and refused the route — every
/// connection to a peer failed with `EINVAL` (seen in CI on a Docker node).
#[tokio::test]
async fn loopback_keeps_host_scope_and_routes_through_an_unaddressed_link_work() {
    in_netns(
        "loopback_keeps_host_scope_and_routes_through_an_unaddressed_link_work",
        |store, _| async move {
            until("lo's address", LONG, || {
                has_address(&store, "lo", "127.0.0.1/8")
            })
            .await;
            ip("link add d0 type veth peer name d1");
            ip("link add m0 type veth peer name m1");
            for l in ["d0", "d1", "m0", "m1"] {
                ip(&format!("link set {l} up"));
            }
            ip("addr add 10.3.0.2/24 dev d0");
            ip("route add 10.9.9.9/32 dev m0 scope link");
            ip("addr del 127.0.0.1/8 dev lo");
            until("lo's address back", LONG, || {
                ip("-4 -o addr show dev lo").contains("127.0.0.1/8")
            })
            .await;
            let lo = ip("-4 -o addr show dev lo");
            assert!(lo.contains("scope host"), "{lo}");
            // The kernel's own answer for a connection along that route: `ip` fails the test
            // with the kernel's error if there is none.
            let route = ip("route get 10.9.9.9");
            assert!(route.contains("dev m0 src 10.3.0.2"), "{route}");
        },
    );
}

/// A DHCP server: dnsmasq in a named namespace of its own, on the far end of a veth pair.
/// Dropping it stops dnsmasq and removes the namespace.
struct Dnsmasq {
    ns: String,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl Dnsmasq {
    /// Makes `client_link` here and its peer `s0` (10.77.0.1/24) in the server's namespace.
    fn new(client_link: &str) -> Self {
        let ns = format!("basalt-dhcp-{}", std::process::id());
        ip(&format!("netns add {ns}"));
        ip(&format!(
            "link add {client_link} type veth peer name s0 netns {ns}"
        ));
        ip(&format!("-n {ns} addr add 10.77.0.1/24 dev s0"));
        ip(&format!("-n {ns} link set s0 up"));
        ip(&format!("-n {ns} link set lo up"));
        let mut d = Dnsmasq {
            ns,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        d.start();
        d
    }

    fn start(&mut self) {
        let dir = self.dir.path();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "dnsmasq",
                "--no-daemon",
                "--conf-file=/dev/null",
            ])
            .args([
                "--port=0",
                "--interface=s0",
                "--bind-interfaces",
                "--user=root",
            ])
            .arg("--dhcp-range=10.77.0.50,10.77.0.60,255.255.255.0,2m")
            // The only server on its segment: it answers a rebinding client even when its lease
            // file lost the lease (without this a restarted dnsmasq stays silent, RFC 2131's
            // non-authoritative behaviour — seen once in CI).
            .arg("--dhcp-authoritative")
            .arg("--dhcp-option=option:router,10.77.0.1")
            .arg("--dhcp-option=option:dns-server,10.77.0.53")
            .arg("--dhcp-option=option:domain-name,test.internal")
            .arg("--dhcp-option=option:ntp-server,10.77.0.123")
            // Short renewal times so the test sees a renewal and a rebind.
            .arg("--dhcp-option=option:T1,3")
            .arg("--dhcp-option=option:T2,5")
            .arg("--log-dhcp")
            .arg(format!("--log-facility={}", dir.join("log").display()))
            .arg(format!("--dhcp-leasefile={}", dir.join("leases").display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            // It logs to stderr as well as to the file the test reads.
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start dnsmasq (Debian's dnsmasq-base)");
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // `ip netns exec` execs dnsmasq, so killing the child killed dnsmasq.
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn count(&self, what: &str) -> usize {
        self.log().lines().filter(|l| l.contains(what)).count()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

fn dhcp_address(store: &Store, link: &str) -> Option<String> {
    store
        .list::<AddressStatus>()
        .into_iter()
        .map(|(_, a)| a)
        .find(|a| a.link == link && a.address.to_string().starts_with("10.77.0."))
        .map(|a| a.address.to_string())
}

#[tokio::test]
async fn dhcp_against_dnsmasq_lease_renewal_server_gone_and_release() {
    in_netns(
        "dhcp_against_dnsmasq_lease_renewal_server_gone_and_release",
        |store, leases| async move {
            let mut server = Dnsmasq::new("h0");
            let c = config(
                "apiVersion: v1alpha1
kind: LinkConfig
name: h0
dhcp: true
",
            );
            publish(&store, "config", Layer::Config, &sources::from_config(&c)).unwrap();
            until("a lease", LONG, || dhcp_address(&store, "h0").is_some()).await;
            let addr = dhcp_address(&store, "h0").unwrap();
            assert!(addr.ends_with("/24"), "{addr}");
            until("the default route from the lease", LONG, || {
                store.list::<RouteStatus>().iter().any(|(_, r)| {
                    r.link == "h0"
                        && r.destination.prefix_len() == 0
                        && r.gateway == Some("10.77.0.1".parse().unwrap())
                })
            })
            .await;
            assert!(ip("route show default").contains("via 10.77.0.1 dev h0"));
            let r = store
                .get::<basalt_networkd::spec::ResolverSpec>("resolvers")
                .expect("resolvers from the lease")
                .1;
            assert_eq!(
                r.nameservers,
                ["10.77.0.53".parse::<std::net::IpAddr>().unwrap()]
            );
            assert_eq!(r.search_domains, ["test.internal"]);
            let t = store
                .get::<basalt_networkd::spec::TimeServerSpec>("timeservers")
                .unwrap()
                .1;
            assert_eq!(t.servers, ["10.77.0.123"]);

            // Renewal at T1 (3 s): the server acknowledges the same address again.
            let acks = server.count("DHCPACK(s0)");
            assert_eq!(acks, 1, "{}", server.log());
            until("a renewal", LONG, || server.count("DHCPACK(s0)") > acks).await;
            assert_eq!(dhcp_address(&store, "h0").as_deref(), Some(addr.as_str()));

            // The server goes away: past T1 and T2 the address stays (the lease runs 2 min).
            server.stop();
            tokio::time::sleep(Duration::from_secs(7)).await;
            assert_eq!(dhcp_address(&store, "h0").as_deref(), Some(addr.as_str()));
            assert!(ip("-br addr show dev h0").contains(addr.as_str()));
            // It comes back: the rebinding client (broadcasting now) gets its lease again.
            let before = server.count("DHCPACK(s0)");
            server.start();
            let waited = tokio::time::timeout(
                LONG,
                until("a rebind", LONG, || server.count("DHCPACK(s0)") > before),
            )
            .await;
            assert!(waited.is_ok(), "no rebind; dnsmasq says:\n{}", server.log());
            assert_eq!(dhcp_address(&store, "h0").as_deref(), Some(addr.as_str()));

            // Shutdown's step: every lease released, the address gone with it.
            assert_eq!(leases.release_all().await, ["h0"]);
            until("the release", LONG, || server.count("DHCPRELEASE(s0)") == 1).await;
            until("the address gone", LONG, || {
                dhcp_address(&store, "h0").is_none()
            })
            .await;

            // The controller starts a client again when the specs change: DHCP off, then on.
            let c = config(
                "apiVersion: v1alpha1
kind: LinkConfig
name: h0
",
            );
            publish(&store, "config", Layer::Config, &sources::from_config(&c)).unwrap();
            until("DHCP off", LONG, || {
                store.get::<basalt_networkd::spec::DhcpSpec>("h0").is_none()
            })
            .await;
            let c = config(
                "apiVersion: v1alpha1
kind: LinkConfig
name: h0
dhcp: true
",
            );
            publish(&store, "config", Layer::Config, &sources::from_config(&c)).unwrap();
            until("a lease again", LONG, || {
                dhcp_address(&store, "h0").is_some()
            })
            .await;

            // DHCP off: the lease is released and its address removed.
            let c = config(
                "apiVersion: v1alpha1
kind: LinkConfig
name: h0
",
            );
            publish(&store, "config", Layer::Config, &sources::from_config(&c)).unwrap();
            until("the second release", LONG, || {
                server.count("DHCPRELEASE(s0)") == 2
            })
            .await;
            until("the address gone", LONG, || {
                dhcp_address(&store, "h0").is_none()
            })
            .await;
            assert!(!ip("-br addr show dev h0").contains("10.77.0."));
        },
    );
}

#[tokio::test]
async fn policy_rules_route_into_their_table_and_come_back() {
    in_netns(
        "policy_rules_route_into_their_table_and_come_back",
        |store, _| async move {
            ip("link add r0 type veth peer name r1");
            let specs = basalt_networkd::LayerSpecs {
                links: vec![basalt_networkd::spec::LinkSpec {
                    name: "r0".into(),
                    kind: basalt_networkd::spec::LinkKind::Physical,
                    selector: None,
                    up: true,
                    mtu: None,
                    master: None,
                }],
                addresses: vec![basalt_networkd::spec::AddressSpec {
                    link: "r0".into(),
                    address: "10.60.0.2/24".parse().unwrap(),
                }],
                routes: vec![basalt_networkd::spec::RouteSpec {
                    link: "r0".into(),
                    destination: "0.0.0.0/0".parse().unwrap(),
                    gateway: Some("10.60.0.1".parse().unwrap()),
                    source: None,
                    metric: 1024,
                    table: 180,
                }],
                // KubeSpan's kind of rule: what is not marked goes to the mesh's table.
                rules: vec![basalt_networkd::spec::RuleSpec {
                    priority: 32500,
                    ipv6: false,
                    fwmark: Some(0x20),
                    fwmask: Some(0x20),
                    invert: true,
                    table: 180,
                }],
                ..Default::default()
            };
            publish(&store, "test", Layer::Config, &specs).unwrap();
            let want = "32500:\tnot from all fwmark 0x20/0x20 lookup 180 proto static";
            until("the rule", LONG, || ip("rule show").contains(want)).await;
            assert!(
                ip("route show table 180").contains("default via 10.60.0.1 dev r0 proto static")
            );
            until("the rule's status", LONG, || {
                store
                    .get::<basalt_networkd::spec::RuleStatus>("inet/32500")
                    .is_some_and(|(_, r)| r.protocol == "static" && r.rule.invert)
            })
            .await;
            ip("rule del priority 32500");
            until("the rule back", Duration::from_secs(1), || {
                ip("rule show").contains(want)
            })
            .await;
            // Gone from the specs: removed (it is networkd's: protocol static).
            publish(
                &store,
                "test",
                Layer::Config,
                &basalt_networkd::LayerSpecs::default(),
            )
            .unwrap();
            until("the rule gone", LONG, || !ip("rule show").contains("32500")).await;
        },
    );
}

/// An address the kernel already has when its `add` arrives (loopback's come with `lo` up,
/// between networkd's status read and its plan) is what was wanted: not a failed operation.
#[test]
fn adding_an_address_the_link_already_has_succeeds() {
    if !basalt_testkit::tier(
        basalt_testkit::Tier::Privileged,
        "adding_an_address_the_link_already_has_succeeds",
    ) {
        return;
    }
    let result = std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare the netns");
        ip("link set lo up");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let h = basalt_networkd::netlink::connect().unwrap();
            // Observed before lo had its address... as the plan saw it.
            let obs = basalt_networkd::netlink::observe(&h).await.unwrap();
            let mut ex = basalt_networkd::netlink::Executor::new(h, &obs);
            let op = basalt_networkd::plan::Op::AddressAdd {
                link: "lo".into(),
                address: "127.0.0.1/8".parse().unwrap(),
            };
            ex.run(&op).await.unwrap();
            // A real conflict still fails: the link does not exist.
            let bad = basalt_networkd::plan::Op::AddressAdd {
                link: "nosuch0".into(),
                address: "10.9.9.9/24".parse().unwrap(),
            };
            assert!(ex.run(&bad).await.is_err());
        });
        assert!(ip("addr show dev lo").contains("127.0.0.1/8"));
    })
    .join();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}
