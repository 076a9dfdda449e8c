//! The URL's grammar, and real fetches over loopback (http, and https with a CA the test
//! makes) from a small server that records what it was asked.

use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;
use crate::sequence::FakePower;

const WORKER: &str = include_str!("../../../config/testdata/valid/worker.yaml");

fn vars() -> Vars {
    Vars {
        mac: Some("52:54:00:12:34:56".into()),
        uuid: Some("0f8fad5b-d9cb-469f-a165-70867728950e".into()),
        serial: Some("SN 42/7".into()),
        hostname: Some("node-1".into()),
    }
}

#[test]
fn urls_split_and_their_variables_expand() {
    let p = split("http://10.5.0.1:8080/configs/${mac}.yaml?u=${uuid}").unwrap();
    assert_eq!(
        (p.https, p.host.as_str(), p.port, p.path.as_str()),
        (false, "10.5.0.1", 8080, "/configs/${mac}.yaml?u=${uuid}")
    );
    let p = split("https://cfg.example").unwrap();
    assert_eq!((p.https, p.port, p.path.as_str()), (true, 443, "/"));
    let p = split("http://[fd00::1]?x").unwrap();
    assert_eq!(
        (p.host.as_str(), p.port, p.path.as_str()),
        ("fd00::1", 80, "/?x")
    );
    assert_eq!(
        expand("/c/${mac}/${uuid}/${serial}/${hostname}", &vars()).unwrap(),
        "/c/52:54:00:12:34:56/0f8fad5b-d9cb-469f-a165-70867728950e/SN%2042%2F7/node-1"
    );
    assert_eq!(
        expand("/a${b", &vars()).unwrap(),
        "/a${b",
        "unterminated: text"
    );
    let e = expand(
        "/${serial}",
        &Vars {
            serial: None,
            ..vars()
        },
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "${serial}: this node does not have one");
    assert!(!e.permanent(), "the node may learn it (a DHCP host name)");

    for (url, want) in [
        ("ftp://h/c", "ftp://h/c: not an http:// or https:// URL"),
        (
            "http://h/${ip}.yaml",
            "http://h/${ip}.yaml: unknown variable ${ip} (the node substitutes ${mac}, ${uuid}, ${serial} and ${hostname})",
        ),
        (
            "http://${hostname}.lan/c",
            "http://${hostname}.lan/c: variables are substituted in the path and query, not the host",
        ),
        ("http:///c", "http:///c: no host"),
        (
            "https://h/c",
            "https://h/c: https needs the CA to check the server against: basalt.config.ca=BASE64 (the CA's PEM or DER, base64) on the kernel command line",
        ),
    ] {
        let src = Source {
            url: url.into(),
            sha256: None,
            ca: None,
        };
        let e = Fetcher::new(&src, Box::new(|_| vars())).unwrap_err();
        assert_eq!(e.to_string(), want);
        assert!(e.permanent(), "{url}");
    }
    let e = Fetcher::new(
        &Source {
            url: "https://h/c".into(),
            sha256: None,
            ca: Some("!!".into()),
        },
        Box::new(|_| vars()),
    )
    .unwrap_err();
    assert!(
        e.to_string().starts_with("basalt.config.ca: not base64"),
        "{e}"
    );
}

/// What the test server answers, and the request lines it saw.
#[derive(Clone, Default)]
struct Server {
    answer: Arc<Mutex<(u16, Vec<u8>)>>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn set(&self, status: u16, body: &[u8]) {
        *self.answer.lock().unwrap() = (status, body.to_vec());
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// Serves on loopback; with `tls`, over TLS. Returns the port.
    async fn start(&self, tls: Option<Arc<rustls::ServerConfig>>) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = l.accept().await.unwrap();
                let me = me.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => me.answer_one(tcp).await,
                        Some(cfg) => {
                            if let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await {
                                me.answer_one(s).await
                            }
                        }
                    }
                });
            }
        });
        port
    }

    async fn answer_one<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(&self, mut s: S) {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        self.seen
            .lock()
            .unwrap()
            .push(head.lines().next().unwrap_or("").to_string());
        assert!(
            head.contains("user-agent: basalt/") || head.contains("User-Agent: basalt/"),
            "{head}"
        );
        let (status, body) = self.answer.lock().unwrap().clone();
        let reply = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(reply.as_bytes()).await;
        let _ = s.write_all(&body).await;
        let _ = s.shutdown().await;
    }
}

fn http_source(port: u16, path: &str) -> Source {
    Source {
        url: format!("http://127.0.0.1:{port}{path}"),
        sha256: None,
        ca: None,
    }
}

#[tokio::test]
async fn a_get_asks_for_the_expanded_path_and_reads_the_body() {
    let server = Server::default();
    let port = server.start(None).await;
    server.set(200, b"kind: x\n");
    let src = http_source(port, "/configs/${mac}.yaml");
    // The local address of the connection is what picks the link (and so the MAC).
    let f = Fetcher::new(
        &src,
        Box::new(|local| {
            assert_eq!(local.ip(), std::net::Ipv4Addr::LOCALHOST);
            vars()
        }),
    )
    .unwrap();
    let (path, body) = f.get().await.unwrap();
    assert_eq!(path, "/configs/52:54:00:12:34:56.yaml");
    assert_eq!(&body[..], b"kind: x\n");
    assert_eq!(
        server.seen(),
        ["GET /configs/52:54:00:12:34:56.yaml HTTP/1.1"]
    );

    server.set(404, b"no such file");
    let e = f.get().await.unwrap_err();
    assert_eq!(e.to_string(), "the server answered 404 Not Found");
    assert!(!e.permanent());

    server.set(200, &vec![b'#'; MAX_CONFIG + 1]);
    let e = f.get().await.unwrap_err();
    assert_eq!(e.to_string(), "the answer is larger than 4 MiB");

    // Nothing listens: a connection error, tried again.
    let closed = basalt_testkit::free_port();
    let f = Fetcher::new(&http_source(closed, "/c"), Box::new(|_| vars())).unwrap();
    let e = f.get().await.unwrap_err();
    assert!(
        basalt_sys::error_chain(&e).starts_with(&format!("cannot connect to 127.0.0.1:{closed}: ")),
        "{}",
        basalt_sys::error_chain(&e)
    );
    assert!(!e.permanent());
}

#[tokio::test]
async fn a_download_streams_to_a_file_within_its_limit() {
    let server = Server::default();
    let port = server.start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("bundle");
    let f = Fetcher::with_tls(
        &format!("http://127.0.0.1:{port}/upgrade.bundle"),
        None,
        Box::new(|_| vars()),
    )
    .unwrap();
    let body = vec![7u8; 300_000];
    server.set(200, &body);
    let (size, digest) = f.download(&to, 1 << 20).await.unwrap();
    assert_eq!(size, 300_000);
    assert_eq!(digest, <[u8; 32]>::from(sha2::Sha256::digest(&body)));
    assert_eq!(std::fs::read(&to).unwrap(), body);
    // Over the limit (its Content-Length says so): refused, and no file left.
    let e = f.download(&to, 100_000).await.unwrap_err();
    assert!(matches!(e, FetchError::TooLarge { limit: 100_000 }), "{e}");
    assert!(!to.exists());
    server.set(404, b"gone");
    let e = f.download(&to, 1 << 20).await.unwrap_err();
    assert_eq!(e.to_string(), "the server answered 404 Not Found");
    assert!(!to.exists());
}

#[tokio::test]
async fn https_checks_the_server_against_the_given_ca() {
    use basalt_config::pki;
    use base64::Engine as _;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = pki::new_ca("config server CA", None, 1).unwrap();
    let leaf = pki::issue(
        &ca,
        "cfg",
        &[],
        &["127.0.0.1".into()],
        pki::Usage::Server,
        1,
    )
    .unwrap();
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(leaf.crt.0.as_str().as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key =
        rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key.0.as_str().as_bytes()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let server = Server::default();
    let port = server.start(Some(Arc::new(cfg))).await;
    server.set(200, b"over tls\n");
    let url = format!("https://127.0.0.1:{port}/c/${{hostname}}");
    let b64 = base64::engine::general_purpose::STANDARD;

    // The CA as PEM (base64), then as DER (base64): both are taken; TLS 1.2 servers too.
    for given in [b64.encode(ca.crt.0.as_str()), b64.encode(ca.crt.der())] {
        let f = Fetcher::new(
            &Source {
                url: url.clone(),
                sha256: None,
                ca: Some(given),
            },
            Box::new(|_| vars()),
        )
        .unwrap();
        let (path, body) = f.get().await.unwrap();
        assert_eq!(
            (path.as_str(), &body[..]),
            ("/c/node-1", &b"over tls\n"[..])
        );
    }

    // Another CA: the server is not trusted, and nothing is asked of it.
    let other = pki::new_ca("someone else", None, 1).unwrap();
    let f = Fetcher::new(
        &Source {
            url,
            sha256: None,
            ca: Some(b64.encode(other.crt.0.as_str())),
        },
        Box::new(|_| vars()),
    )
    .unwrap();
    let e = f.get().await.unwrap_err();
    let chain = basalt_sys::error_chain(&e);
    assert!(
        chain.starts_with("TLS with 127.0.0.1: ") && chain.contains("UnknownIssuer"),
        "{chain}"
    );
    assert_eq!(server.seen().len(), 2, "{:?}", server.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetched_config_is_pinned_validated_and_applied() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::for_tests(dir.path(), Arc::new(FakePower::default()));
    let pin: [u8; 32] = sha2::Sha256::digest(WORKER.as_bytes()).into();

    // A digest that differs: refused before it is read.
    let e = take(&node, b"kind: other\n", Some(&pin)).unwrap_err();
    assert!(
        e.to_string().starts_with("its sha256 is ") && e.to_string().contains(&hex(&pin)),
        "{e}"
    );
    // A config that does not validate: refused whole, with its reason and line.
    let bad = WORKER.replacen("type: worker", "type: wroker", 1);
    let e = take(&node, bad.as_bytes(), None).unwrap_err();
    let chain = basalt_sys::error_chain(&e);
    assert!(
        chain.starts_with("the config was rejected and nothing changed: ")
            && chain.contains("wroker"),
        "{chain}"
    );
    assert!(!e.permanent(), "the file on the server may be fixed");
    assert!(node.config.active().is_none());

    // The pinned config is applied, as apply-config would.
    let summary = take(&node, WORKER.as_bytes(), Some(&pin)).unwrap();
    assert!(node.config.active().is_some(), "{summary}");

    // A node with a config does not fetch: run returns at once, without a server.
    let src = http_source(basalt_testkit::free_port(), "/c");
    tokio::time::timeout(Duration::from_secs(30), run(node.clone(), src))
        .await
        .expect("run returns when the node has a config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_takes_the_config_from_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::for_tests(dir.path(), Arc::new(FakePower::default()));
    let server = Server::default();
    let port = server.start(None).await;
    server.set(200, WORKER.as_bytes());
    let src = http_source(port, "/c.yaml");
    tokio::time::timeout(Duration::from_secs(60), run(node.clone(), src))
        .await
        .expect("run returns once the config is taken");
    assert!(node.config.active().is_some());
    assert_eq!(server.seen(), ["GET /c.yaml HTTP/1.1"]);
}
