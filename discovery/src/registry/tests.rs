use super::*;

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

#[test]
fn records_expire_unless_refreshed_and_watchers_hear_of_it() {
    let mut r = Registry::new(Limits::default());
    let (initial, mut rx) = r.watch(s(0), "c1").unwrap();
    assert!(initial.is_empty());
    r.update(
        s(0),
        "c1",
        "a",
        b"sealed-a".to_vec(),
        s(10),
        ip("192.0.2.1"),
    )
    .unwrap();
    r.update(
        s(0),
        "c1",
        "b",
        b"sealed-b".to_vec(),
        s(10),
        ip("192.0.2.2"),
    )
    .unwrap();
    assert!(
        matches!(rx.try_recv(), Ok(Change::Updated(v)) if v.id == "a" && v.observed == [ip("192.0.2.1").unwrap()])
    );
    assert!(matches!(rx.try_recv(), Ok(Change::Updated(v)) if v.id == "b"));
    // a refreshes at 8 s; b does not.
    r.update(
        s(8),
        "c1",
        "a",
        b"sealed-a".to_vec(),
        s(10),
        ip("192.0.2.1"),
    )
    .unwrap();
    assert!(
        rx.try_recv().is_err(),
        "a refresh that changes nothing is not news"
    );
    assert_eq!(r.expire(s(9)), 0);
    assert_eq!(r.expire(s(10)), 1);
    assert_eq!(rx.try_recv(), Ok(Change::Deleted("b".into())));
    let ids: Vec<String> = r
        .list(s(10), "c1")
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids, ["a"]);
    assert_eq!(r.expire(s(18)), 1);
    assert!(r.list(s(18), "c1").unwrap().is_empty());
}

#[test]
fn observed_addresses_are_newest_first_and_bounded() {
    let mut r = Registry::new(Limits::default());
    for (t, a) in [
        "192.0.2.1",
        "198.51.100.1",
        "192.0.2.1",
        "203.0.113.1",
        "203.0.113.2",
        "203.0.113.3",
    ]
    .iter()
    .enumerate()
    {
        r.update(s(t as u64), "c", "n", b"x".to_vec(), s(60), ip(a))
            .unwrap();
    }
    let v = &r.list(s(6), "c").unwrap()[0];
    let got: Vec<String> = v.observed.iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        ["203.0.113.3", "203.0.113.2", "203.0.113.1", "192.0.2.1"]
    );
}

#[test]
fn bad_input_is_refused_and_touches_no_other_cluster() {
    let limits = Limits {
        max_affiliates: 2,
        max_clusters: 2,
        ..Limits::default()
    };
    let mut r = Registry::new(limits);
    r.update(s(0), "good", "a", b"x".to_vec(), s(60), None)
        .unwrap();
    let e = |res: Result<(), RegistryError>| res.unwrap_err().to_string();
    assert!(
        e(r.update(s(0), "bad cluster!", "a", b"x".to_vec(), s(60), None)).contains("cluster id")
    );
    assert!(
        e(r.update(s(0), "c", &"x".repeat(65), b"x".to_vec(), s(60), None))
            .contains("affiliate id")
    );
    assert!(
        e(r.update(s(0), "c", "a", vec![0; 16 * 1024 + 1], s(60), None))
            .contains("16385 bytes; at most 16384")
    );
    assert!(e(r.update(s(0), "c", "a", Vec::new(), s(60), None)).contains("empty"));
    assert!(e(r.update(s(0), "c", "a", b"x".to_vec(), s(0), None)).contains("TTL of 0 s"));
    assert!(e(r.update(s(0), "c", "a", b"x".to_vec(), s(3600), None)).contains("TTL of 3600 s"));
    r.update(s(0), "good", "b", b"x".to_vec(), s(60), None)
        .unwrap();
    assert_eq!(
        r.update(s(0), "good", "c", b"x".to_vec(), s(60), None),
        Err(RegistryError::TooManyAffiliates { max: 2 })
    );
    r.update(s(0), "second", "a", b"x".to_vec(), s(60), None)
        .unwrap();
    assert_eq!(
        r.update(s(0), "third", "a", b"x".to_vec(), s(60), None),
        Err(RegistryError::TooManyClusters { max: 2 })
    );
    // None of that changed the good cluster.
    let ids: Vec<String> = r
        .list(s(1), "good")
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids, ["a", "b"]);
    assert!(r.delete("good", "a").unwrap());
    assert!(!r.delete("good", "a").unwrap());
}

#[test]
fn a_snapshot_survives_a_restart_with_its_expiries() {
    let mut r = Registry::new(Limits::default());
    r.update(s(100), "c", "short", b"s".to_vec(), s(5), ip("192.0.2.9"))
        .unwrap();
    r.update(s(100), "c", "long", b"l".to_vec(), s(600), ip("192.0.2.8"))
        .unwrap();
    let wall = UNIX_EPOCH + s(1_700_000_000);
    let snap = r.snapshot(s(100), wall);
    let text = serde_json::to_string(&snap).unwrap();
    let back: Snapshot = serde_json::from_str(&text).unwrap();
    // Restarted 60 s later: the short record is gone, the long one keeps its remaining time.
    let (r2, dropped) = Registry::restore(Limits::default(), &back, s(0), wall + s(60));
    assert_eq!(dropped, 1);
    let l = r2.list(s(0), "c").unwrap();
    assert_eq!(l.len(), 1);
    assert_eq!(
        (l[0].id.as_str(), l[0].data.as_slice()),
        ("long", &b"l"[..])
    );
    assert_eq!(l[0].observed, [ip("192.0.2.8").unwrap()]);
    let mut r2 = r2;
    assert_eq!(r2.expire(s(539)), 0);
    assert_eq!(r2.expire(s(540)), 1);
    // A tampered snapshot record is dropped, not trusted.
    let mut bad = back.clone();
    bad.clusters
        .get_mut("c")
        .unwrap()
        .get_mut("long")
        .unwrap()
        .data = "%%%".into();
    assert_eq!(Registry::restore(Limits::default(), &bad, s(0), wall).1, 1);
}

#[test]
fn the_rate_limiter_allows_bursts_then_the_rate() {
    let mut l = RateLimiter::new(2.0, 5.0);
    let a = ip("192.0.2.1").unwrap();
    let b = ip("192.0.2.2").unwrap();
    for _ in 0..5 {
        l.check(s(0), a).unwrap();
    }
    assert_eq!(l.check(s(0), a), Err(RegistryError::RateLimited(a)));
    l.check(s(0), b).unwrap();
    // Two a second come back.
    l.check(s(1), a).unwrap();
    l.check(s(1), a).unwrap();
    assert!(l.check(s(1), a).is_err());
}
