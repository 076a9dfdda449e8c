//! networkd against `ip -batch`, in a fresh network namespace (needs root).
//!
//! 1000 addresses and 1000 routes on one link: networkd reads the kernel, plans and runs the
//! operations; then the same operations (the plan printed as `ip -batch` lines) through `ip`.
//! Also: config change → kernel converged, through the whole controller runtime; and how long
//! an address deleted from outside takes to come back.
//!
//! `cargo bench -p basalt-networkd --bench apply`

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::process::Command;
use std::time::{Duration, Instant};

use basalt_config::types::Prefix;
use basalt_networkd::plan::{Desired, plan};
use basalt_networkd::spec::*;
use basalt_networkd::{Layer, LayerSpecs, apply, netlink, publish};
use basalt_resources::controller::Runtime;
use basalt_resources::{Backoff, Store};

const N: usize = 1000;
const RUNS: usize = 5;

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn link(name: &str) -> LinkSpec {
    LinkSpec {
        name: name.into(),
        kind: LinkKind::Physical,
        selector: None,
        up: true,
        mtu: None,
        master: None,
    }
}

fn addresses(l: &str, n: usize, base: u8) -> Vec<AddressSpec> {
    (0..n)
        .map(|i| AddressSpec {
            link: l.into(),
            address: format!("10.{base}.{}.{}/32", i / 250, i % 250 + 1)
                .parse()
                .unwrap(),
        })
        .collect()
}

fn routes(l: &str, n: usize) -> Vec<RouteSpec> {
    (0..n)
        .map(|i| RouteSpec {
            link: l.into(),
            destination: format!("172.16.{}.{}/32", i / 250, i % 250 + 1)
                .parse::<Prefix>()
                .unwrap(),
            gateway: None,
            source: None,
            metric: 1024,
            table: MAIN_TABLE,
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A fresh link for each run: delete and make it again (veth: this host has no dummy driver).
fn fresh_link() {
    let _ = Command::new("ip").args(["link", "del", "bench0"]).output();
    ip(&[
        "link", "add", "bench0", "type", "veth", "peer", "name", "bench1",
    ]);
    ip(&["link", "set", "bench0", "up"]);
}

async fn bench() {
    let desired = Desired {
        links: [("bench0".to_string(), link("bench0"))].into(),
        addresses: addresses("bench0", N, 100),
        routes: routes("bench0", N),
        rules: Vec::new(),
    };
    let h = netlink::connect().unwrap();
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut ops = 0;
    let batch = std::env::temp_dir().join(format!("basalt-bench-{}.batch", std::process::id()));
    for _ in 0..RUNS {
        fresh_link();
        let t = Instant::now();
        let obs = netlink::observe(&h).await.unwrap();
        let p = plan(&desired, &obs).unwrap();
        apply::execute(&h, &obs, &p).await.unwrap();
        ours.push(t.elapsed());
        ops = p.ops.len();
        let after = netlink::observe(&h).await.unwrap();
        assert!(
            plan(&desired, &after).unwrap().ops.is_empty(),
            "not converged"
        );

        fresh_link();
        let text: String = p.ops.iter().map(|o| format!("{o}\n")).collect();
        std::fs::write(&batch, text).unwrap();
        let t = Instant::now();
        ip(&["-batch", batch.to_str().unwrap()]);
        theirs.push(t.elapsed());
        let after = netlink::observe(&h).await.unwrap();
        assert!(
            plan(&desired, &after).unwrap().ops.is_empty(),
            "ip -batch did not converge"
        );
    }
    let _ = std::fs::remove_file(&batch);
    let (o, t) = (median(ours), median(theirs));
    println!("{N} addresses + {N} routes on one link ({ops} operations), median of {RUNS}:");
    println!("| path | time | per operation |");
    println!("|---|---|---|");
    println!(
        "| networkd (observe + plan + apply) | {:.1} ms | {:.1} µs |",
        o.as_secs_f64() * 1e3,
        o.as_secs_f64() * 1e6 / ops as f64
    );
    println!(
        "| ip -batch (the same operations) | {:.1} ms | {:.1} µs |",
        t.as_secs_f64() * 1e3,
        t.as_secs_f64() * 1e6 / ops as f64
    );
    println!(
        "| ratio networkd / ip | {:.2}× (goal ≤ 2×) | |",
        o.as_secs_f64() / t.as_secs_f64()
    );

    // The controllers, end to end.
    fresh_link();
    let store = Store::default();
    basalt_networkd::publish_defaults(&store).unwrap();
    let mut rt = Runtime::new(store.clone()).with_backoff(Backoff::new(
        Duration::from_millis(50),
        Duration::from_millis(500),
        2,
    ));
    basalt_networkd::register(&mut rt, basalt_networkd::Options::default()).unwrap();
    let _rt = rt.start();
    let s = store.clone();
    tokio::spawn(async move { apply::run_status(s).await });
    let converged = |store: &Store, addrs: &[AddressSpec]| {
        addrs.iter().all(|a| {
            store
                .get::<AddressStatus>(&format!("{}/{}", a.link, a.address))
                .is_some()
        })
    };
    let mut change = Vec::new();
    for (run, n) in [(0u8, 10usize), (1, 100), (2, 1000)] {
        let specs = LayerSpecs {
            links: vec![link("bench0")],
            addresses: addresses("bench0", n, 150 + run),
            ..LayerSpecs::default()
        };
        let t = Instant::now();
        publish(&store, "config", Layer::Config, &specs).unwrap();
        while !converged(&store, &specs.addresses) {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        change.push((n, t.elapsed()));
    }
    let mut repair = Vec::new();
    for i in 0..10 {
        let a = format!("10.152.0.{}/32", i + 1);
        let id = format!("bench0/{a}");
        let t = Instant::now();
        ip(&["addr", "del", &a, "dev", "bench0"]);
        // Measured from the deletion until the kernel has the address again (asked directly:
        // the repair can be quicker than the status resources show the gap).
        let want: Prefix = a.parse().unwrap();
        loop {
            let obs = netlink::observe(&h).await.unwrap();
            if obs.addresses.iter().any(|x| x.address == want) {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(5), "{id} not repaired");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        repair.push(t.elapsed());
    }
    println!();
    println!("| controllers, end to end | time |");
    println!("|---|---|");
    for (n, d) in change {
        println!(
            "| config change → converged, {n} addresses (replacing the previous set) | {:.1} ms |",
            d.as_secs_f64() * 1e3
        );
    }
    let m = median(repair.clone());
    let max = repair.iter().max().copied().unwrap_or_default();
    println!(
        "| drift repair: `ip addr del` → address back (median / max of 10) | {:.1} ms / {:.1} ms |",
        m.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("the networkd bench needs root (network namespaces); skipped");
        return;
    }
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        ip(&["link", "set", "lo", "up"]);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(bench());
    })
    .join()
    .unwrap();
}
