//! apid's certificate follows the node's addresses: init reissues it and sends SIGHUP; apid
//! serves the new one to the next connection without a restart. (A test binary of its own:
//! it raises SIGHUP in its own process.)

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use basalt_api::tls::{self, Identity};
use basalt_config::pki::{self, CertAndKey, Usage};

fn identity(ca: &CertAndKey, orgs: &[&str], sans: &[&str], usage: Usage) -> Identity {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let c = pki::issue(ca, "test", orgs, &sans, usage, 30).unwrap();
    Identity {
        crt: c.crt.0.as_str().to_string(),
        key: c.key.0.as_str().to_string(),
    }
}

/// A TLS handshake with apid at `addr`, checking its certificate names `name`.
async fn handshake(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    name: IpAddr,
) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(cfg)
        .connect(rustls::pki_types::ServerName::IpAddress(name.into()), tcp)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reissued_certificate_is_served_after_sighup_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::new_ca("basalt-os", Some("basalt"), 1).unwrap();
    let write = |sans: &[&str]| {
        basalt_apid::Pki {
            ca: ca.crt.0.as_str().to_string(),
            node: identity(
                &ca,
                &[basalt_api::auth::IMPERSONATOR],
                sans,
                Usage::ServerAndClient,
            ),
        }
        .write(dir.path())
        .unwrap();
    };
    write(&["127.0.0.1"]);
    let client = tls::client_config(
        ca.crt.0.as_str(),
        &identity(&ca, &["os:reader"], &[], Usage::Client),
    )
    .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let o = basalt_apid::Options {
        listen: addr,
        init_socket: dir.path().join("no-init.sock"),
        maintenance: false,
        pki: dir.path().into(),
        limits: Default::default(),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(basalt_apid::serve_on(listener, o, async move {
        let _ = stop_rx.await;
    }));
    let (old, new): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
    // Serving (so its SIGHUP handler is in place): the certificate names the old address only.
    let mut tries = 0;
    while let Err(e) = handshake(addr, client.clone(), old).await {
        tries += 1;
        assert!(tries < 300, "apid never answered: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = handshake(addr, client.clone(), new).await.unwrap_err();
    assert!(e.contains("certificate"), "{e}");

    // The node gains an address: init writes a certificate naming it and sends SIGHUP.
    write(&["127.0.0.1", "127.0.0.2"]);
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
    let mut tries = 0;
    while let Err(e) = handshake(addr, client.clone(), new).await {
        tries += 1;
        assert!(tries < 300, "the new certificate was never served: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    handshake(addr, client.clone(), old).await.unwrap();
    assert!(
        !served.is_finished(),
        "apid was not restarted: the same task serves"
    );

    // A broken file on the next reload leaves the served certificate alone.
    std::fs::write(dir.path().join("node.crt"), "not a certificate").unwrap();
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    handshake(addr, client.clone(), new).await.unwrap();

    stop_tx.send(()).unwrap();
    served.await.unwrap().unwrap();
}
