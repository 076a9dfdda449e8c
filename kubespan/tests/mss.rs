//! MSS clamping for real (privileged tier): a router namespace whose link toward the other
//! host is named `kubespan`; with KubeSpan's nftables table installed, a TCP connection
//! forwarded through it carries the clamped MSS, as the receiving socket reports.

#![allow(clippy::unwrap_used)]

mod harness;

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};

use harness::{Namespaces, enter, ip, run};

/// The MSS the server side ends up with for a connection from `a` through the router.
fn mss_seen(a: &str, b: &str) -> u32 {
    let b = b.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        enter(&b);
        let l = TcpListener::bind("10.95.2.2:0").unwrap();
        tx.send(l.local_addr().unwrap().port()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mss = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::TcpMaxSeg).unwrap();
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).unwrap();
        mss
    });
    let port = rx.recv().unwrap();
    let a = a.to_string();
    std::thread::spawn(move || {
        enter(&a);
        let mut c = TcpStream::connect(("10.95.2.2", port)).unwrap();
        c.write_all(b"x").unwrap();
    })
    .join()
    .unwrap();
    server.join().unwrap()
}

#[test]
fn forwarded_syns_through_the_mesh_link_are_clamped() {
    if !basalt_testkit::tier(
        basalt_testkit::Tier::Privileged,
        "forwarded_syns_through_the_mesh_link_are_clamped",
    ) {
        return;
    }
    let tag = format!("km{}", std::process::id() % 100_000);
    let (a, r, b) = (format!("{tag}-a"), format!("{tag}-r"), format!("{tag}-b"));
    let mut nss = Namespaces(Vec::new());
    for n in [&a, &r, &b] {
        nss.add(n);
    }
    ip(&format!(
        "-n {r} link add up0 type veth peer name eth0 netns {a}"
    ));
    ip(&format!(
        "-n {r} link add kubespan type veth peer name eth0 netns {b}"
    ));
    for (ns, link, addr) in [
        (&r, "up0", "10.95.1.1/24"),
        (&r, "kubespan", "10.95.2.1/24"),
        (&a, "eth0", "10.95.1.2/24"),
        (&b, "eth0", "10.95.2.2/24"),
    ] {
        ip(&format!("-n {ns} addr add {addr} dev {link}"));
        ip(&format!("-n {ns} link set {link} up"));
    }
    ip(&format!("-n {a} route add default via 10.95.1.1"));
    ip(&format!("-n {b} route add default via 10.95.2.1"));
    run(
        "ip",
        &[
            "netns",
            "exec",
            &r,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
        ],
    );

    let before = mss_seen(&a, &b);
    assert!(before > 1400, "1500-byte links, no clamp: {before}");
    let in_router = |f: fn() -> String| {
        let r = r.clone();
        std::thread::spawn(move || {
            enter(&r);
            f()
        })
        .join()
        .unwrap()
    };
    let listed = in_router(|| {
        basalt_kubespan::mss::install(1420).unwrap();
        // Installing again replaces the table rather than adding to it.
        basalt_kubespan::mss::install(1300).unwrap();
        run("nft", &["list", "table", "inet", "basalt_kubespan"])
    });
    assert_eq!(listed.matches("maxseg size set").count(), 4, "{listed}");
    assert!(
        listed.contains("oifname \"kubespan\"") && listed.contains("iifname \"kubespan\""),
        "{listed}"
    );
    assert!(listed.contains("maxseg size set 1260"), "{listed}");
    assert!(!listed.contains("1380"), "the old table is gone: {listed}");
    let after = mss_seen(&a, &b);
    assert!(after <= 1260, "clamped to 1300 - 40: {after}");
    let gone = in_router(|| {
        basalt_kubespan::mss::remove().unwrap();
        basalt_kubespan::mss::remove().unwrap();
        run("nft", &["list", "tables"])
    });
    assert!(!gone.contains("basalt_kubespan"), "{gone}");
    assert!(mss_seen(&a, &b) > 1400);
}
