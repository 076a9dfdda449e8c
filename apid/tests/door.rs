//! The front door in maintenance mode, over real TLS on loopback: calls without a certificate
//! beyond the rate get `RESOURCE_EXHAUSTED` naming the limit, as do calls beyond the number
//! under way and requests over the size limit — and apid goes on answering.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use basalt_api::machine as pb;
use basalt_api::machine::machine_client::MachineClient;
use basalt_apid::door::Limits;
use tonic::Code;

async fn maintenance_apid(init_socket: std::path::PathBuf, limits: Limits) -> SocketAddr {
    let dir = tempfile::tempdir().unwrap().keep();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let o = basalt_apid::Options {
        listen: addr,
        init_socket,
        maintenance: true,
        pki: dir,
        limits,
    };
    tokio::spawn(basalt_apid::serve_on(listener, o, std::future::pending()));
    addr
}

fn client(addr: SocketAddr) -> MachineClient<tonic::transport::Channel> {
    let ch = basalt_api::tls::channel(&addr.to_string(), basalt_api::tls::insecure_client_config())
        .unwrap();
    MachineClient::new(ch)
}

fn limits() -> Limits {
    Limits {
        conns_per_ip: 32,
        handshakes: 64,
        rate: 1000.0,
        burst: 1000.0,
        in_flight: 100,
        max_request: 1 << 20,
        request_read: Duration::from_secs(2),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_certificate_are_limited_by_rate_and_size() {
    // No init behind it: an admitted call fails as unavailable, quickly.
    let addr = maintenance_apid(
        "/nonexistent/init.sock".into(),
        Limits {
            // No token comes back while the test runs.
            rate: 0.001,
            burst: 4.0,
            ..limits()
        },
    )
    .await;
    let mut c = client(addr);
    // Too large: refused before init is asked (it took a token).
    let big = pb::ApplyConfigurationRequest {
        data: vec![b'#'; 2 << 20],
        ..Default::default()
    };
    let e = c.apply_configuration(big).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message()
            .contains("a call without a client certificate may send at most 1048576 bytes"),
        "{e:?}"
    );
    for i in 0..3 {
        let e = c.version(pb::VersionRequest {}).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "call {i}: {e:?}");
    }
    let e = c.version(pb::VersionRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message()
            .starts_with("too many calls without a client certificate from 127.0.0.1"),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_those_under_way_are_refused_and_apid_keeps_answering() {
    // An init that accepts and never answers: the calls it is given stay under way.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("init.sock");
    let silent = tokio::net::UnixListener::bind(&sock).unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let addr = maintenance_apid(
        sock,
        Limits {
            in_flight: 2,
            ..limits()
        },
    )
    .await;
    let hung: Vec<_> = (0..2)
        .map(|_| {
            let mut c = client(addr);
            tokio::spawn(async move { c.version(pb::VersionRequest {}).await })
        })
        .collect();
    // Until both hang in apid, a third may still get in (and hang too); the door refuses one
    // soon after.
    let mut c = client(addr);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let refused = loop {
        match tokio::time::timeout(Duration::from_secs(2), c.version(pb::VersionRequest {})).await {
            Ok(Err(e)) if e.code() == Code::ResourceExhausted => break e,
            _ => {}
        }
        assert!(tokio::time::Instant::now() < deadline, "never refused");
    };
    assert_eq!(
        refused.message(),
        "2 calls without a client certificate are under way: try again when they are done"
    );
    // Those under way end (their callers give up): the door lets calls in again.
    for h in hung {
        h.abort();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout(Duration::from_secs(2), c.version(pb::VersionRequest {})).await {
            Ok(Err(e)) if e.code() == Code::ResourceExhausted => {}
            // Let in: it hangs on the silent init, or fails otherwise — not the door.
            _ => break,
        }
        assert!(tokio::time::Instant::now() < deadline, "never let in again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_trickles_is_cut_and_frees_its_place() {
    use http_body_util::BodyExt as _;
    let addr = maintenance_apid(
        "/nonexistent/init.sock".into(),
        Limits {
            in_flight: 1,
            ..limits()
        },
    )
    .await;
    // Raw HTTP/2 over TLS: an ApplyConfiguration whose request body starts and never ends.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(basalt_api::tls::insecure_client_config())
        .connect(
            rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
            tcp,
        )
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<
        Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>,
    >(1);
    tx.send(Ok(hyper::body::Frame::data(bytes::Bytes::from_static(&[
        0, 0, 0, 0, 9,
    ]))))
    .await
    .unwrap();
    let req = http::Request::post(format!(
        "https://{addr}/basalt.machine.v1.Machine/ApplyConfiguration"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(http_body_util::StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ))
    .unwrap();
    let resp = send.send_request(req).await.unwrap();
    // gRPC puts the status in the headers of a body-less answer (or in its trailers).
    let status = match resp.headers().get("grpc-status") {
        Some(s) => (s.clone(), resp.headers().get("grpc-message").cloned()),
        None => {
            let t = resp
                .into_body()
                .collect()
                .await
                .unwrap()
                .trailers()
                .cloned()
                .unwrap();
            (t["grpc-status"].clone(), t.get("grpc-message").cloned())
        }
    };
    assert_eq!(
        status.0,
        (Code::ResourceExhausted as i32).to_string().as_str()
    );
    let msg = status.1.unwrap();
    let msg = percent_decode(msg.to_str().unwrap());
    assert_eq!(
        msg,
        "a call without a client certificate must send its request within 2s"
    );
    drop(tx);
    // Its place is free again: the next call gets past the door (to a missing init).
    let e = client(addr)
        .version(pb::VersionRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
}

/// gRPC's percent-encoding of `grpc-message`.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}
