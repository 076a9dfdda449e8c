#![allow(clippy::unwrap_used)]
//! Store + watch throughput with 10k resources: `cargo bench -p basalt-resources`.
//! Prints a table; asserts nothing (benchmarks measure, tests assert).

use std::time::Instant;

use basalt_resources::{EventKind, Kind, Spec, Store};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
struct Link {
    mtu: u32,
    up: bool,
    name: String,
}
impl Spec for Link {
    const TYPE: &'static str = "LinkSpec";
    const NAMESPACE: &'static str = "network";
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct Noise(u64);
impl Spec for Noise {
    const TYPE: &'static str = "Noise";
    const NAMESPACE: &'static str = "network";
}

const RESOURCES: usize = 10_000;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn link(i: usize, mtu: u32) -> Link {
    Link {
        mtu,
        up: true,
        name: format!("eth{i}"),
    }
}

/// Updates every resource `rounds` times while `watchers` watch the kind; returns events/s
/// delivered to each watcher.
fn run(watchers: usize, rounds: u32, noise: bool) -> (f64, f64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Store::with_history(1 << 20);
        for i in 0..RESOURCES {
            store
                .apply("bench", &format!("eth{i}"), link(i, 1500))
                .unwrap();
        }
        let total = RESOURCES * rounds as usize;
        let mut handles = Vec::new();
        for _ in 0..watchers {
            let mut w = store.watch_kind(Kind::of::<Link>(), None);
            handles.push(tokio::spawn(async move {
                let mut seen = 0usize;
                loop {
                    let e = w.next().await.unwrap();
                    if e.kind == EventKind::Updated {
                        seen += 1;
                        if seen == total {
                            return seen;
                        }
                    }
                }
            }));
        }
        let start = Instant::now();
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for r in 1..=rounds {
                    for i in 0..RESOURCES {
                        store
                            .apply("bench", &format!("eth{i}"), link(i, 1500 + r))
                            .unwrap();
                        if noise {
                            store
                                .apply("bench", "noise", Noise(u64::from(r) * 100_000 + i as u64))
                                .unwrap();
                        }
                        if i % 1000 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                }
            })
        };
        writer.await.unwrap();
        let write_secs = start.elapsed().as_secs_f64();
        for h in handles {
            assert_eq!(h.await.unwrap(), total);
        }
        let secs = start.elapsed().as_secs_f64();
        (total as f64 / write_secs, total as f64 / secs)
    })
}

#[allow(clippy::print_stdout)]
fn main() {
    let rss0 = rss_kib();
    let store = Store::default();
    let t = Instant::now();
    for i in 0..RESOURCES {
        store
            .apply("bench", &format!("eth{i}"), link(i, 1500))
            .unwrap();
    }
    let create = RESOURCES as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut w = store.watch_kind(Kind::of::<Link>(), None);
    let mut listed = 0;
    while let Some(e) = w.try_next().unwrap() {
        if e.kind == EventKind::Created {
            listed += 1;
        }
    }
    assert_eq!(listed, RESOURCES);
    let list_ms = t.elapsed().as_secs_f64() * 1e3;
    let rss = rss_kib().saturating_sub(rss0);

    println!("resource store benchmark: {RESOURCES} resources, 2 worker threads");
    println!();
    println!("| case                                   | writes/s   | events/s per watcher |");
    println!("|----------------------------------------|-----------:|---------------------:|");
    println!("| create 10k (no watchers)               | {create:>10.0} |                    - |");
    for (name, watchers, noise) in [
        ("update 10k x3, 1 watcher", 1, false),
        ("update 10k x3, 8 watchers", 8, false),
        ("update 10k x3 + other-kind noise, 1 w.", 1, true),
    ] {
        let (writes, events) = run(watchers, 3, noise);
        println!("| {name:<38} | {writes:>10.0} | {events:>20.0} |");
    }
    println!();
    println!(
        "initial list of 10k through a watch: {list_ms:.1} ms; RSS growth for 10k resources: {rss} KiB"
    );
}
