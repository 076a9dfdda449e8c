//! Dialing from inside a network namespace (privileged): a listener that exists only on a
//! namespace's loopback is reached through `connect_in`, and not from the host's own stack.

#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::path::Path;

use basalt_testkit::{Tier, tier};

use basalt_testkit::Netns;

#[test]
fn connections_are_made_inside_the_named_namespace() {
    if !tier(
        Tier::Privileged,
        "connections_are_made_inside_the_named_namespace",
    ) {
        return;
    }
    let ns = Netns::new("bst-api");
    // A listener on the namespace's loopback, on a port the host's loopback does not serve.
    let path = format!("/run/netns/{}", ns.0);
    let listener = std::thread::spawn({
        let path = path.clone();
        move || {
            let f = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            std::net::TcpListener::bind("127.0.0.1:0").unwrap()
        }
    })
    .join()
    .unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).unwrap();
        s.write_all(b"pong!").unwrap();
        b
    });
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the host's loopback answers on port {port}: the test cannot tell the namespaces apart"
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let reply = rt.block_on(async {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = basalt_api::tls::connect_in(Path::new(&path), "127.0.0.1", port)
            .await
            .unwrap();
        s.write_all(b"ping!").await.unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).await.unwrap();
        b
    });
    assert_eq!(&reply, b"pong!");
    assert_eq!(&server.join().unwrap(), b"ping!");

    // A namespace that does not exist is named in the error.
    let err = rt
        .block_on(basalt_api::tls::connect_in(
            Path::new("/run/netns/no-such-basalt-ns"),
            "127.0.0.1",
            port,
        ))
        .unwrap_err();
    assert!(err.to_string().contains("no-such-basalt-ns"), "{err}");
}
