//! The userspace data plane for real (privileged tier): two hosts as network namespaces joined
//! by a veth pair, each running Basalt's WireGuard device (boringtun over a tun device) with the
//! other as its peer; a ping over the mesh addresses proves the handshake and the tunnel.

#![allow(clippy::unwrap_used)]

mod harness;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt_kubespan::device::{self, DeviceOptions, DevicePeer};
use basalt_kubespan::identity::KeyPair;
use harness::{Namespaces, enter, ip, runtime, wireguard_go};

#[test]
fn two_hosts_talk_over_the_userspace_mesh() {
    if !basalt_testkit::tier(
        basalt_testkit::Tier::Privileged,
        "two_hosts_talk_over_the_userspace_mesh",
    ) {
        return;
    }
    let pid = std::process::id();
    let (a, b) = (format!("basalt-ks-{pid}-a"), format!("basalt-ks-{pid}-b"));
    let _hosts = Namespaces(vec![a.clone(), b.clone()]);
    ip(&format!("netns add {a}"));
    ip(&format!("netns add {b}"));
    ip(&format!(
        "-n {a} link add u0 type veth peer name u0 netns {b}"
    ));
    for (ns, addr) in [(&a, "10.99.0.1/24"), (&b, "10.99.0.2/24")] {
        ip(&format!("-n {ns} addr add {addr} dev u0"));
        ip(&format!("-n {ns} link set u0 up"));
        ip(&format!("-n {ns} link set lo up"));
    }
    let keys = [KeyPair::generate(), KeyPair::generate()];
    let pubs = [keys[0].public(), keys[1].public()];
    let hosts = [
        (a.clone(), "fd00:99::1", "10.99.0.2"),
        (b.clone(), "fd00:99::2", "10.99.0.1"),
    ];
    let ready = Arc::new(tokio::sync::Barrier::new(2));
    let done = Arc::new(tokio::sync::Barrier::new(2));
    let mut threads = Vec::new();
    for (i, (ns, mesh, other_underlay)) in hosts.into_iter().enumerate() {
        let k = keys[i].clone();
        let other_pub = pubs[1 - i];
        let other_mesh = if i == 0 { "fd00:99::2" } else { "fd00:99::1" };
        let (ready, done) = (ready.clone(), done.clone());
        threads.push(std::thread::spawn(move || {
            enter(&ns);
            let rt = runtime();
            rt.block_on(async move {
                let (dev, task) = device::run(&k, "ks0", DeviceOptions::default())
                    .await
                    .unwrap();
                ip(&format!("addr add {mesh}/64 dev ks0"));
                dev.set_peers(&[DevicePeer {
                    public_key: other_pub,
                    endpoint: Some(format!("{other_underlay}:51820").parse().unwrap()),
                    allowed_ips: vec![format!("{other_mesh}/128").parse().unwrap()],
                }]);
                // Both devices up before anyone pings.
                ready.wait().await;
                if i == 0 {
                    let start = Instant::now();
                    let mut ok = false;
                    while start.elapsed() < Duration::from_secs(15) {
                        let out = tokio::process::Command::new("ping")
                            .args(["-6", "-c", "1", "-W", "1", other_mesh])
                            .output()
                            .await
                            .unwrap();
                        if out.status.success() {
                            ok = true;
                            break;
                        }
                    }
                    assert!(ok, "no ping over the mesh within 15 s");
                    let s = &dev.stats()[0];
                    assert!(s.since_handshake.is_some(), "{s:?}");
                    assert!(s.tx_bytes > 0 && s.rx_bytes > 0, "{s:?}");
                    eprintln!("mesh ping after {:?}: {s:?}", start.elapsed());
                }
                done.wait().await;
                task.abort();
            });
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
}

/// Interop: Basalt's device and a plain `wireguard-go` configured with `wg` (Debian's packages)
/// handshake and carry pings both ways — the wire format is real WireGuard.
#[test]
fn interop_with_wireguard_go_and_wg() {
    if !basalt_testkit::tier(
        basalt_testkit::Tier::Privileged,
        "interop_with_wireguard_go_and_wg",
    ) {
        return;
    }
    let pid = std::process::id();
    let (a, c) = (format!("basalt-wg-{pid}-a"), format!("basalt-wg-{pid}-c"));
    let _hosts = Namespaces(vec![a.clone(), c.clone()]);
    ip(&format!("netns add {a}"));
    ip(&format!("netns add {c}"));
    ip(&format!(
        "-n {a} link add u1 type veth peer name u1 netns {c}"
    ));
    for (ns, addr) in [(&a, "10.98.0.1/24"), (&c, "10.98.0.3/24")] {
        ip(&format!("-n {ns} addr add {addr} dev u1"));
        ip(&format!("-n {ns} link set u1 up"));
        ip(&format!("-n {ns} link set lo up"));
    }
    let ours = KeyPair::generate();
    let theirs = KeyPair::generate();
    // What `osctl get kubespanidentity` shows a user: the base64 public key.
    let cluster = basalt_config::types::Key32::from_bytes([5; 32]);
    let our_pub = basalt_kubespan::identity::KubeSpanIdentity::new(&ours, &cluster).public_key;

    // wireguard-go in the other namespace, in the foreground so the test can stop it.
    let wgif = format!("wgb{}", pid % 100_000);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    // The cluster's pre-shared key, as a user would give it to `wg`.
    let psk =
        basalt_kubespan::identity::preshared_key(&basalt_config::types::Key32::from_bytes([6; 32]));
    let psk_file = dir.path().join("psk");
    {
        use base64::Engine as _;
        std::fs::write(
            &psk_file,
            base64::engine::general_purpose::STANDARD.encode(psk),
        )
        .unwrap();
        std::fs::write(
            &key,
            base64::engine::general_purpose::STANDARD.encode(theirs.private()),
        )
        .unwrap();
    }
    let _wg_go = wireguard_go(&c, &wgif);
    let wg = |args: &[&str]| {
        let o = Command::new("ip")
            .args(["netns", "exec", &c, "wg"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "wg {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    wg(&[
        "set",
        &wgif,
        "private-key",
        key.to_str().unwrap(),
        "listen-port",
        "51820",
        "peer",
        &our_pub,
        "preshared-key",
        psk_file.to_str().unwrap(),
        "endpoint",
        "10.98.0.1:51820",
        "allowed-ips",
        "fd00:98::1/128",
    ]);
    ip(&format!("-n {c} addr add fd00:98::3/64 dev {wgif}"));
    ip(&format!("-n {c} link set {wgif} up"));

    let their_pub = theirs.public();
    let c2 = c.clone();
    std::thread::spawn(move || {
        enter(&a);
        let rt = runtime();
        rt.block_on(async move {
            let (dev, task) = device::run(
                &ours,
                "ks0",
                DeviceOptions {
                    preshared_key: Some(psk),
                    ..DeviceOptions::default()
                },
            )
            .await
            .unwrap();
            ip("addr add fd00:98::1/64 dev ks0");
            dev.set_peers(&[DevicePeer {
                public_key: their_pub,
                endpoint: Some("10.98.0.3:51820".parse().unwrap()),
                allowed_ips: vec!["fd00:98::3/128".parse().unwrap()],
            }]);
            let ping = |from_other: bool| {
                let c2 = c2.clone();
                async move {
                    let start = Instant::now();
                    while start.elapsed() < Duration::from_secs(15) {
                        let mut cmd = if from_other {
                            let mut c = tokio::process::Command::new("ip");
                            c.args(["netns", "exec", &c2, "ping"]);
                            c
                        } else {
                            tokio::process::Command::new("ping")
                        };
                        let target = if from_other {
                            "fd00:98::1"
                        } else {
                            "fd00:98::3"
                        };
                        let out = cmd
                            .args(["-6", "-c", "1", "-W", "1", target])
                            .output()
                            .await
                            .unwrap();
                        if out.status.success() {
                            return true;
                        }
                    }
                    false
                }
            };
            assert!(ping(false).await, "Basalt → wireguard-go: no ping");
            assert!(ping(true).await, "wireguard-go → Basalt: no ping");
            let s = &dev.stats()[0];
            assert!(s.since_handshake.is_some() && s.rx_bytes > 0, "{s:?}");
            task.abort();
        });
    })
    .join()
    .unwrap();
    let hs = wg(&["show", &wgif, "latest-handshakes"]);
    let t: u64 = hs
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    assert!(t > 0, "wg shows no handshake: {hs}");
}
