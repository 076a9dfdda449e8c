//! A small HTTPS client for the node's own calls to the Kubernetes API: TLS 1.3 with a
//! certificate from the node's PKI (or a bearer token), HTTP/2, one connection per
//! request (these calls are few: bootstrap, joins, health, a handful of manifests), and
//! watches: a streamed reply read one JSON event per line ([`Https::watch`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Why a call to the Kubernetes API (or etcd's HTTP side) failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    #[error("cannot read {path}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the client's TLS settings")]
    Tls(#[source] basalt_api::tls::TlsError),
    #[error("{what}: no answer within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    #[error("{what}")]
    Call {
        what: String,
        #[source]
        source: CallError,
    },
    #[error("{status}: {body}")]
    Status {
        status: http::StatusCode,
        body: String,
    },
    #[error("the reply is not JSON")]
    Json(#[source] serde_json::Error),
    #[error("{what}: an event longer than {MAX_EVENT} bytes")]
    EventTooLarge { what: String },
}

/// What went wrong on the way to an answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot resolve the host")]
    Resolve(#[source] std::io::Error),
    #[error("the host resolves to nothing")]
    NoAddress,
    #[error("cannot connect")]
    Connect(#[source] std::io::Error),
    #[error("{0:?} is not a server name")]
    ServerName(String),
    #[error("TLS")]
    Tls(#[source] std::io::Error),
    #[error("HTTP/2")]
    Http2(#[source] hyper::Error),
    #[error("the request")]
    Build(#[source] http::Error),
    #[error("reading the reply")]
    Body(#[source] hyper::Error),
}

/// How a client reaches the API: the host and port, the CA, and the client certificate and key
/// it calls with (for the node's own object: the kubelet's on a worker, which may change its
/// own node's labels; the admin's on a control plane, which the taint needs too).
#[derive(Debug, Clone)]
pub struct Access {
    pub host: String,
    pub port: u16,
    pub ca: PathBuf,
    pub crt: PathBuf,
    pub key: PathBuf,
}

impl Access {
    /// A client of the API as this access says.
    pub fn client(&self) -> Result<Https, HttpsError> {
        Https::from_files(&self.host, self.port, &self.ca, &self.crt, &self.key)
    }
}

/// Where and as whom to call.
#[derive(Clone)]
pub struct Https {
    tls: Arc<rustls::ClientConfig>,
    host: String,
    port: u16,
    timeout: Duration,
    /// Sent as `Authorization: Bearer …` (a kubelet's bootstrap token).
    bearer: Option<String>,
}

impl std::fmt::Debug for Https {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "https://{}:{}", self.host, self.port)
    }
}

/// The most one watch event may take (a `Node` is a few KiB).
const MAX_EVENT: usize = 4 << 20;

/// A watch's stream of events: `{"type": "ADDED"|"MODIFIED"|"DELETED"|"BOOKMARK"|"ERROR",
/// "object": …}`, one per line.
pub struct Watch {
    what: String,
    body: hyper::body::Incoming,
    buffer: Vec<u8>,
    conn: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl Watch {
    /// The next event; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<serde_json::Value>, HttpsError> {
        use hyper::body::Body as _;
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(&line)
                    .map(Some)
                    .map_err(HttpsError::Json);
            }
            if self.buffer.len() > MAX_EVENT {
                return Err(HttpsError::EventTooLarge {
                    what: self.what.clone(),
                });
            }
            let frame =
                std::future::poll_fn(|cx| std::pin::Pin::new(&mut self.body).poll_frame(cx));
            match frame.await {
                None => return Ok(None),
                Some(Err(source)) => {
                    return Err(HttpsError::Call {
                        what: self.what.clone(),
                        source: CallError::Body(source),
                    });
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// A response: status and body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: http::StatusCode,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON, for a 2xx status; otherwise an error with the status and the body.
    pub fn json(&self) -> Result<serde_json::Value, HttpsError> {
        if !self.status.is_success() {
            return Err(HttpsError::Status {
                status: self.status,
                body: String::from_utf8_lossy(&self.body).trim().to_string(),
            });
        }
        serde_json::from_slice(&self.body).map_err(HttpsError::Json)
    }
}

impl Https {
    /// The one way an `Https` is made: `host` may be a bracketed IPv6 address.
    fn build(tls: Arc<rustls::ClientConfig>, host: &str, port: u16, bearer: Option<&str>) -> Https {
        Https {
            tls,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            timeout: Duration::from_secs(10),
            bearer: bearer.map(str::to_string),
        }
    }

    /// `ca`, `crt`, `key`: PEM. The server must present a certificate from `ca` for `host`.
    pub fn new(host: &str, port: u16, ca: &str, crt: &str, key: &str) -> Result<Https, HttpsError> {
        let id = basalt_api::tls::Identity {
            crt: crt.to_string(),
            key: key.to_string(),
        };
        let tls = basalt_api::tls::client_config(ca, &id).map_err(HttpsError::Tls)?;
        Ok(Https::build(tls, host, port, None))
    }

    /// Checks the server against `ca`; authenticates with a bearer token instead of a client
    /// certificate.
    pub fn with_token(host: &str, port: u16, ca: &str, token: &str) -> Result<Https, HttpsError> {
        let tls = basalt_api::tls::server_checking_client_config(ca).map_err(HttpsError::Tls)?;
        Ok(Https::build(tls, host, port, Some(token)))
    }

    /// A server whose certificate is not checked (the controller manager's and scheduler's
    /// self-signed health endpoints on loopback), no client certificate.
    pub fn unverified(host: &str, port: u16) -> Https {
        Https::build(basalt_api::tls::insecure_client_config(), host, port, None)
    }

    /// From files of the node's PKI: `dir/ca`, `dir/crt`, `dir/key`.
    pub fn from_files(
        host: &str,
        port: u16,
        ca: &std::path::Path,
        crt: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<Https, HttpsError> {
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).map_err(|source| HttpsError::Read {
                path: p.into(),
                source,
            })
        };
        Https::new(host, port, &read(ca)?, &read(crt)?, &read(key)?)
    }

    pub fn with_timeout(mut self, t: Duration) -> Https {
        self.timeout = t;
        self
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// One request; `body` is sent as `content_type` when given.
    pub async fn request(
        &self,
        method: http::Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Reply, HttpsError> {
        let what = format!("{method} https://{}:{}{path}", self.host, self.port);
        match tokio::time::timeout(self.timeout, self.request_inner(method, path, body)).await {
            Err(_) => Err(HttpsError::Timeout {
                what,
                timeout: self.timeout,
            }),
            Ok(r) => r.map_err(|source| HttpsError::Call { what, source }),
        }
    }

    async fn request_inner(
        &self,
        method: http::Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Reply, CallError> {
        let (resp, conn) = self.send(method, path, body).await?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(CallError::Body)?
            .to_bytes();
        conn.abort();
        Ok(Reply { status, body })
    }

    /// Connects and sends one request; the response's head, and the connection's task (abort
    /// it when done with the body).
    async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<
        (
            http::Response<hyper::body::Incoming>,
            tokio::task::JoinHandle<Result<(), hyper::Error>>,
        ),
        CallError,
    > {
        let addr = match self.host.parse::<std::net::IpAddr>() {
            Ok(ip) => std::net::SocketAddr::new(ip, self.port),
            Err(_) => tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .map_err(CallError::Resolve)?
                .next()
                .ok_or(CallError::NoAddress)?,
        };
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(CallError::Connect)?;
        let name = rustls::pki_types::ServerName::try_from(self.host.clone())
            .map_err(|_| CallError::ServerName(self.host.clone()))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(CallError::Tls)?;
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(CallError::Http2)?;
        let conn = tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("https://{}:{}{path}", self.host, self.port))
            .header("accept", "application/json");
        if let Some(t) = &self.bearer {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let data = match body {
            Some((ct, data)) => {
                req = req.header("content-type", ct);
                data
            }
            None => Vec::new(),
        };
        let req = req
            .body(Full::new(Bytes::from(data)))
            .map_err(CallError::Build)?;
        match send.send_request(req).await {
            Ok(resp) => Ok((resp, conn)),
            Err(e) => {
                conn.abort();
                Err(CallError::Http2(e))
            }
        }
    }

    /// Starts a watch (`path` with `watch=1`): the reply's head within the client's timeout,
    /// then its events as they come, for as long as the server keeps the stream open (a
    /// `timeoutSeconds` in `path` bounds it).
    pub async fn watch(&self, path: &str) -> Result<Watch, HttpsError> {
        let what = format!("watch https://{}:{}{path}", self.host, self.port);
        let sent = tokio::time::timeout(self.timeout, self.send(http::Method::GET, path, None));
        let (resp, conn) = match sent.await {
            Err(_) => {
                return Err(HttpsError::Timeout {
                    what,
                    timeout: self.timeout,
                });
            }
            Ok(r) => r.map_err(|source| HttpsError::Call {
                what: what.clone(),
                source,
            })?,
        };
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.into_body().collect().await.map(|b| b.to_bytes());
            conn.abort();
            return Err(HttpsError::Status {
                status,
                body: String::from_utf8_lossy(&body.unwrap_or_default())
                    .trim()
                    .to_string(),
            });
        }
        Ok(Watch {
            what,
            body: resp.into_body(),
            buffer: Vec::new(),
            conn,
        })
    }

    /// POST a JSON value; the reply's JSON (a non-2xx status is an error).
    pub async fn post_json(
        &self,
        path: &str,
        v: &serde_json::Value,
    ) -> Result<serde_json::Value, HttpsError> {
        let body = serde_json::to_vec(v).map_err(HttpsError::Json)?;
        self.request(http::Method::POST, path, Some(("application/json", body)))
            .await?
            .json()
    }

    pub async fn get(&self, path: &str) -> Result<Reply, HttpsError> {
        self.request(http::Method::GET, path, None).await
    }
}
