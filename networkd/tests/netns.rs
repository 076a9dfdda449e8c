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
    F: FnOnce(Store) -> Fut + Send + 'static,
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
            basalt_networkd::register(&mut runtime, FilesOptions::default()).unwrap();
            let handle = runtime.start();
            let s = store.clone();
            tokio::spawn(async move { basalt_networkd::apply::run_status(s).await });
            body(store).await;
            handle.shutdown();
        });
    })
    .join();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
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
    in_netns("static_addresses_and_routes", |store| async move {
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
    in_netns("a_bridge_with_its_ports", |store| async move {
        ip("link add p0 type veth peer name p0peer");
        ip("link add p1 type veth peer name p1peer");
        let c = config(
            "apiVersion: v1alpha1
kind: BridgeConfig
name: br0
links: [p0, p1]
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
        assert!(ip("-d link show br0").contains("bridge"));
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
        |store| async move {
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
    in_netns("drift_is_repaired", |store| async move {
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
