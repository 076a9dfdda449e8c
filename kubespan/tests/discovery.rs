//! The discovery server over real gRPC on loopback: two nodes of a cluster publish sealed
//! records and see each other (with the address the server observed), a watcher gets the
//! changes, a node of another cluster sees nothing and cannot read them, bad requests are
//! refused, and a restart from the snapshot keeps the records.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use basalt_api::discovery as pb;
use basalt_api::discovery::discovery_client::DiscoveryClient;
use basalt_config::types::Key32;
use basalt_discovery::{Limits, serve};
use basalt_kubespan::affiliate::{Affiliate, Sealer};

async fn start(
    snapshot: Option<std::path::PathBuf>,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), basalt_discovery::ServeError>>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        l,
        Limits::default(),
        snapshot.map(|p| (p, Duration::from_secs(3600))),
        async {
            let _ = rx.await;
        },
    ));
    (url, tx, task)
}

fn node(name: &str) -> Affiliate {
    Affiliate {
        hostname: name.into(),
        public_key: format!("{name}-key"),
        mesh_address: "fd00::1".parse().unwrap(),
        node_addresses: vec!["10.5.0.2".parse().unwrap()],
        endpoints: vec!["10.5.0.2:51820".parse().unwrap()],
        pod_cidrs: Vec::new(),
        relay: false,
    }
}

#[tokio::test]
async fn nodes_meet_through_the_server_which_sees_only_ciphertext() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("discovery.json");
    let (url, stop, task) = start(Some(snap.clone())).await;
    let mut c = DiscoveryClient::connect(url.clone()).await.unwrap();
    let sealer = Sealer::new(&Key32::from_bytes([3; 32]));

    let mut watch = c
        .watch(pb::WatchRequest {
            cluster_id: "cluster-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.kind, pb::watch_response::Kind::SnapshotDone as i32);

    for n in ["node1", "node2"] {
        let r = c
            .update(pb::UpdateRequest {
                cluster_id: "cluster-1".into(),
                affiliate_id: n.into(),
                data: sealer.seal(&node(n)),
                ttl_seconds: 60,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.observed_address, "127.0.0.1");
    }
    for n in ["node1", "node2"] {
        let m = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let a = m.affiliate.unwrap();
        assert_eq!(a.id, n);
        assert_eq!(sealer.open(&a.data).unwrap(), node(n));
        assert_eq!(a.observed_addresses, ["127.0.0.1"]);
    }
    // Another cluster sees none of it; and another cluster's key opens nothing.
    let other = c
        .list(pb::ListRequest {
            cluster_id: "cluster-2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(other.affiliates.is_empty());
    let list = c
        .list(pb::ListRequest {
            cluster_id: "cluster-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.affiliates.len(), 2);
    let stranger = Sealer::new(&Key32::from_bytes([4; 32]));
    assert!(stranger.open(&list.affiliates[0].data).is_err());
    let raw = String::from_utf8_lossy(&list.affiliates[0].data);
    assert!(!raw.contains("node1") && !raw.contains("10.5.0.2"));

    // Bad requests are refused with what is wrong, and change nothing.
    let e = c
        .update(pb::UpdateRequest {
            cluster_id: "cluster-1".into(),
            affiliate_id: "node3".into(),
            data: vec![0; 100_000],
            ttl_seconds: 60,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("at most 16384"), "{}", e.message());
    let e = c
        .update(pb::UpdateRequest {
            cluster_id: "../../etc".into(),
            affiliate_id: "x".into(),
            data: b"x".to_vec(),
            ttl_seconds: 60,
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("cluster id"), "{}", e.message());

    // A node leaves: the watcher hears it.
    c.delete(pb::DeleteRequest {
        cluster_id: "cluster-1".into(),
        affiliate_id: "node2".into(),
    })
    .await
    .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m.kind, pb::watch_response::Kind::Deleted as i32);
    assert_eq!(m.affiliate.unwrap().id, "node2");

    // Stop (the snapshot is saved), start again from it: node1 is still there.
    drop(watch);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert!(snap.exists());
    let (url, stop, task) = start(Some(snap)).await;
    let mut c = DiscoveryClient::connect(url).await.unwrap();
    let list = c
        .list(pb::ListRequest {
            cluster_id: "cluster-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = list.affiliates.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["node1"]);
    assert_eq!(
        sealer.open(&list.affiliates[0].data).unwrap(),
        node("node1")
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn records_expire_without_refresh() {
    let (url, stop, task) = start(None).await;
    let mut c = DiscoveryClient::connect(url).await.unwrap();
    c.update(pb::UpdateRequest {
        cluster_id: "c".into(),
        affiliate_id: "n".into(),
        data: b"sealed".to_vec(),
        ttl_seconds: 1,
    })
    .await
    .unwrap();
    let n = |c: &mut DiscoveryClient<tonic::transport::Channel>| {
        let mut c = c.clone();
        async move {
            c.list(pb::ListRequest {
                cluster_id: "c".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .affiliates
            .len()
        }
    };
    assert_eq!(n(&mut c).await, 1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(n(&mut c).await, 0);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

fn client_config(
    url: &str,
    secret: u8,
    name: &str,
    addr: &str,
) -> basalt_kubespan::client::ClientConfig {
    let addr: std::net::IpAddr = addr.parse().unwrap();
    basalt_kubespan::client::ClientConfig {
        endpoint: url.to_string(),
        ca: None,
        cluster_id: Key32::from_bytes([9; 32]),
        cluster_secret: Key32::from_bytes([secret; 32]),
        keys: basalt_kubespan::identity::KeyPair::generate(),
        hostname: name.into(),
        addresses: std::sync::Arc::new(move || vec![addr]),
        pod_cidrs: std::sync::Arc::new(|| vec!["10.244.0.0/24".into()]),
        with_pod_networks: false,
        relay: false,
        port: 51820,
        ttl: Duration::from_secs(3),
    }
}

/// Nodes publish through the client, each gets the others as peers (with the observed
/// address), a node with the wrong secret is never a peer, and a node that stops is dropped
/// when its record expires.
#[tokio::test]
async fn nodes_become_each_others_peers_through_the_client() {
    use basalt_kubespan::peer::KubeSpanPeerSpec;
    use basalt_resources::Store;
    let (url, stop, task) = start(None).await;
    let (s1, s2, s3) = (Store::default(), Store::default(), Store::default());
    let c1 = client_config(&url, 1, "node1", "10.5.0.2");
    let c2 = client_config(&url, 1, "node2", "10.5.0.3");
    let intruder = client_config(&url, 2, "intruder", "10.5.0.66");
    let k2 = c2.keys.public_base64();
    let t1 = tokio::spawn(basalt_kubespan::client::run(s1.clone(), c1));
    let t2 = tokio::spawn(basalt_kubespan::client::run(s2.clone(), c2));
    let t3 = tokio::spawn(basalt_kubespan::client::run(s3.clone(), intruder));
    let peers = |s: &Store| {
        let mut v: Vec<String> = s
            .list::<KubeSpanPeerSpec>()
            .into_iter()
            .map(|(_, p)| p.hostname)
            .collect();
        v.sort();
        v
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(peers(&s1) == ["node2"] && peers(&s2) == ["node1"]) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?} {:?}",
            peers(&s1),
            peers(&s2)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let p = s1.get::<KubeSpanPeerSpec>(&k2).unwrap().1;
    let allowed: Vec<String> = p.allowed_ips.iter().map(ToString::to_string).collect();
    assert_eq!(allowed[1..], ["10.5.0.3/32"]);
    assert!(allowed[0].starts_with("fd") && allowed[0].ends_with("/128"));
    assert_eq!(
        p.endpoints,
        [
            "10.5.0.3:51820".parse().unwrap(),
            "127.0.0.1:51820".parse().unwrap()
        ]
    );
    // The intruder (another secret) sees no one it can read, and no one sees it.
    assert!(peers(&s3).is_empty());
    // node2 stops: gone from node1's peers once its record expires (3 s TTL).
    t2.abort();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !peers(&s1).is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", peers(&s1));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t1.abort();
    t3.abort();
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// With `advertisePodNetworks`: a node's pod network, learned after it joined the mesh (the
/// controller manager allocates it once the node registers), reaches its peers within a few
/// seconds and becomes one of its allowed IPs there; when it goes away, so does the route.
#[tokio::test]
async fn pod_networks_learned_later_are_published_and_become_allowed_ips() {
    use basalt_kubespan::peer::KubeSpanPeerSpec;
    use basalt_resources::Store;
    let (url, stop, task) = start(None).await;
    let (s1, s2) = (Store::default(), Store::default());
    let mut c1 = client_config(&url, 1, "node1", "10.5.0.2");
    let mut c2 = client_config(&url, 1, "node2", "10.5.0.3");
    let pods2 = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let p2 = pods2.clone();
    c2.pod_cidrs = std::sync::Arc::new(move || p2.lock().unwrap().clone());
    c1.with_pod_networks = true;
    c2.with_pod_networks = true;
    let k2 = c2.keys.public_base64();
    let t1 = tokio::spawn(basalt_kubespan::client::run(s1.clone(), c1));
    let t2 = tokio::spawn(basalt_kubespan::client::run(s2.clone(), c2));
    let allowed = |s: &Store| -> Vec<String> {
        s.get::<KubeSpanPeerSpec>(&k2)
            .map(|(_, p)| p.allowed_ips.iter().map(ToString::to_string).collect())
            .unwrap_or_default()
    };
    until("node2 a peer of node1", || allowed(&s1).len() == 2).await;
    assert!(!allowed(&s1).iter().any(|a| a.starts_with("10.244.")));
    pods2.lock().unwrap().push("10.244.3.0/24".into());
    until("node2's pod network allowed on node1", || {
        allowed(&s1).contains(&"10.244.3.0/24".to_string())
    })
    .await;
    pods2.lock().unwrap().clear();
    until("node2's pod network gone on node1", || {
        allowed(&s1).len() == 2 && !allowed(&s1).contains(&"10.244.3.0/24".to_string())
    })
    .await;
    t1.abort();
    t2.abort();
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Over TLS: a server with a certificate from a cluster's CA; a client that checks against
/// that CA publishes and meets a peer, one that checks against another CA cannot connect,
/// and https without a CA is refused before any connection.
#[tokio::test]
async fn discovery_over_tls_checks_the_server() {
    use basalt_kubespan::peer::KubeSpanPeerSpec;
    use basalt_resources::Store;
    let ca = basalt_config::pki::new_ca("os", None, 1).unwrap();
    let other = basalt_config::pki::new_ca("another", None, 1).unwrap();
    let leaf = basalt_config::pki::issue(
        &ca,
        "cp",
        &[],
        &["127.0.0.1".to_string()],
        basalt_config::pki::Usage::Server,
        1,
    )
    .unwrap();
    let tls = basalt_api::tls::server_config(
        &basalt_api::tls::Identity {
            crt: leaf.crt.0.as_str().to_string(),
            key: leaf.key.0.as_str().to_string(),
        },
        None,
    )
    .unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", l.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(basalt_discovery::serve_with(
        l,
        Some(tls),
        basalt_discovery::Limits::default(),
        None,
        async {
            let _ = stopped.await;
        },
    ));
    let ca_pem = ca.crt.0.as_str().to_string();
    let with_ca = |name: &str, addr: &str, pem: Option<String>| {
        let mut c = client_config(&url, 1, name, addr);
        c.ca = pem;
        c
    };
    let (s1, s2) = (Store::default(), Store::default());
    let t1 = tokio::spawn(basalt_kubespan::client::run(
        s1.clone(),
        with_ca("node1", "10.5.0.2", Some(ca_pem.clone())),
    ));
    let t2 = tokio::spawn(basalt_kubespan::client::run(
        s2.clone(),
        with_ca("node2", "10.5.0.3", Some(ca_pem)),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(s1.list::<KubeSpanPeerSpec>().len() == 1 && s2.list::<KubeSpanPeerSpec>().len() == 1) {
        assert!(tokio::time::Instant::now() < deadline, "no peers over TLS");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The wrong CA: the handshake fails, nothing is published.
    let e = basalt_kubespan::client::run(
        Store::default(),
        with_ca("spy", "10.5.0.9", Some(other.crt.0.as_str().to_string())),
    )
    .await
    .unwrap_err();
    let msg = basalt_resources::error_chain(&e);
    assert!(msg.contains("cannot reach the discovery server"), "{msg}");
    // https with no CA to check against: refused up front, saying why.
    let e = basalt_kubespan::client::run(Store::default(), with_ca("x", "10.5.0.8", None))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("needs the CA"), "{e}");
    t1.abort();
    t2.abort();
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
