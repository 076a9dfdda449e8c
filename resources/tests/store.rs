//! The store: versions, owners, finalizers, and watches that never miss an event.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use basalt_resources::{EventKind, Kind, Phase, Spec, Store, StoreError, WatchError};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
struct Addr {
    cidr: String,
}
impl Spec for Addr {
    const TYPE: &'static str = "AddressSpec";
    const NAMESPACE: &'static str = "network";
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct Other(u32);
impl Spec for Other {
    const TYPE: &'static str = "Other";
    const NAMESPACE: &'static str = "network";
}

fn addr(s: &str) -> Addr {
    Addr { cidr: s.into() }
}

#[test]
fn versions_go_up_only_on_change() {
    let s = Store::default();
    s.apply("ctl", "eth0", addr("10.0.0.1/24")).unwrap();
    assert_eq!(s.get::<Addr>("eth0").unwrap().0.version, 1);
    s.apply("ctl", "eth0", addr("10.0.0.1/24")).unwrap();
    assert_eq!(
        s.get::<Addr>("eth0").unwrap().0.version,
        1,
        "same spec is no change"
    );
    assert_eq!(s.revision(), 1);
    s.apply("ctl", "eth0", addr("10.0.0.2/24")).unwrap();
    let (md, spec) = s.get::<Addr>("eth0").unwrap();
    assert_eq!((md.version, md.revision, spec), (2, 2, addr("10.0.0.2/24")));
    let labels = BTreeMap::from([("k".to_string(), "v".to_string())]);
    s.apply_labeled("ctl", "eth0", addr("10.0.0.2/24"), &labels)
        .unwrap();
    assert_eq!(
        s.get::<Addr>("eth0").unwrap().0.version,
        3,
        "labels are a change"
    );
    assert_eq!(
        s.create("ctl", "eth0", addr("x")),
        Err(StoreError::Exists {
            kind: Kind::of::<Addr>(),
            id: "eth0".into()
        })
    );
    let json = s.get_dyn(&Kind::of::<Addr>(), "eth0").unwrap().to_json();
    assert_eq!(json["metadata"]["owner"], "ctl");
    assert_eq!(json["spec"]["cidr"], "10.0.0.2/24");
}

#[test]
fn only_the_owner_writes() {
    let s = Store::default();
    s.apply("a", "x", addr("1")).unwrap();
    let err = s.apply("b", "x", addr("2")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "network/AddressSpec \"x\" is owned by \"a\"; \"b\" may not write it"
    );
    assert!(s.teardown(&Kind::of::<Addr>(), "x", "b").is_err());
    assert!(s.destroy(&Kind::of::<Addr>(), "x", "b").is_err());
    assert_eq!(
        s.get::<Addr>("x").unwrap().1,
        addr("1"),
        "refused writes change nothing"
    );
}

#[test]
fn finalizers_hold_destruction() {
    let s = Store::default();
    let k = Kind::of::<Addr>();
    s.apply("a", "x", addr("1")).unwrap();
    s.add_finalizer(&k, "x", "networkd").unwrap();
    s.teardown(&k, "x", "a").unwrap();
    assert_eq!(s.get::<Addr>("x").unwrap().0.phase, Phase::TearingDown);
    assert!(matches!(
        s.destroy(&k, "x", "a"),
        Err(StoreError::HasFinalizers { .. })
    ));
    assert!(matches!(
        s.apply("a", "x", addr("2")),
        Err(StoreError::TearingDown { .. })
    ));
    assert!(matches!(
        s.add_finalizer(&k, "x", "late"),
        Err(StoreError::TearingDown { .. })
    ));
    s.remove_finalizer(&k, "x", "networkd").unwrap();
    s.destroy(&k, "x", "a").unwrap();
    assert!(s.get::<Addr>("x").is_none());
    assert!(s.kinds().is_empty());
}

#[tokio::test]
async fn watch_lists_then_bookmarks_then_streams() {
    let s = Store::default();
    s.apply("a", "eth0", addr("1")).unwrap();
    s.apply("a", "eth1", addr("2")).unwrap();
    s.apply("a", "o", Other(1)).unwrap();
    let mut w = s.watch_kind(Kind::of::<Addr>(), None);
    let ids: Vec<(EventKind, String)> = (0..2)
        .map(|_| {
            let e = w.try_next().unwrap().unwrap();
            (e.kind, e.resource.as_ref().unwrap().metadata.id.clone())
        })
        .collect();
    assert_eq!(
        ids,
        vec![
            (EventKind::Created, "eth0".into()),
            (EventKind::Created, "eth1".into())
        ]
    );
    let bm = w.next().await.unwrap();
    assert_eq!((bm.kind, bm.revision), (EventKind::Bookmark, 3));
    s.apply("a", "o", Other(2)).unwrap();
    s.apply("a", "eth0", addr("9")).unwrap();
    s.destroy(&Kind::of::<Addr>(), "eth1", "a").unwrap();
    let e = w.next().await.unwrap();
    assert_eq!(
        (e.kind, e.revision),
        (EventKind::Updated, 5),
        "the Other change is filtered out"
    );
    assert_eq!(
        e.resource.as_ref().unwrap().spec::<Addr>(),
        Some(&addr("9"))
    );
    let e = w.next().await.unwrap();
    assert_eq!(
        (e.kind, e.resource.as_ref().unwrap().metadata.id.as_str()),
        (EventKind::Destroyed, "eth1")
    );
    assert!(w.try_next().unwrap().is_none());

    let mut one = s.watch_id(Kind::of::<Addr>(), "eth0", Some(0));
    let revs: Vec<u64> = std::iter::from_fn(|| one.try_next().unwrap())
        .map(|e| e.revision)
        .collect();
    assert_eq!(revs, vec![1, 5]);
}

#[tokio::test]
async fn resuming_from_a_bookmark_misses_nothing() {
    let s = Store::default();
    let mut w = s.watch_kind(Kind::of::<Addr>(), None);
    assert_eq!(w.next().await.unwrap().kind, EventKind::Bookmark);
    s.apply("a", "x", addr("0")).unwrap();
    w.next().await.unwrap();
    let bookmark = w.bookmark();
    drop(w);
    for i in 1..=5 {
        s.apply("a", "x", addr(&i.to_string())).unwrap();
    }
    let mut w = s.watch_kind(Kind::of::<Addr>(), Some(bookmark));
    let got: Vec<String> = std::iter::from_fn(|| w.try_next().unwrap())
        .map(|e| {
            e.resource
                .as_ref()
                .unwrap()
                .spec::<Addr>()
                .unwrap()
                .cidr
                .clone()
        })
        .collect();
    assert_eq!(got, vec!["1", "2", "3", "4", "5"]);
}

#[tokio::test]
async fn a_bookmark_older_than_the_history_is_an_error_not_a_gap() {
    let s = Store::with_history(4);
    for i in 0..10 {
        s.apply("a", "x", addr(&i.to_string())).unwrap();
    }
    let mut w = s.watch_kind(Kind::of::<Addr>(), Some(2));
    assert_eq!(
        w.try_next().unwrap_err(),
        WatchError::Expired {
            bookmark: 2,
            oldest: 7
        }
    );
    let mut ok = s.watch_kind(Kind::of::<Addr>(), Some(6));
    assert_eq!(ok.try_next().unwrap().unwrap().revision, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_watcher_sees_every_version_in_order() {
    let s = Store::default();
    let mut w = s.watch_kind(Kind::of::<Other>(), None);
    assert_eq!(w.next().await.unwrap().kind, EventKind::Bookmark);
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 1..=2000u32 {
                s.apply("a", "n", Other(i)).unwrap();
                if i % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    for want in 1..=2000u32 {
        let e = w.next().await.unwrap();
        assert_eq!(
            e.resource.as_ref().unwrap().spec::<Other>(),
            Some(&Other(want))
        );
        assert_eq!(
            e.resource.as_ref().unwrap().metadata.version,
            u64::from(want)
        );
    }
    writer.await.unwrap();
}
