//! The config from the kernel command line: `basalt.config=URL` on a node that boots without
//! one (a PXE fleet, an ISO on a machine nobody types at). Once the network can reach the
//! server, the node fetches the URL — `${mac}`, `${uuid}`, `${serial}` and `${hostname}`
//! substituted — over http or https (the server checked against `basalt.config.ca`), checks
//! `basalt.config.sha256` when given, and takes the config the way `apply-config` does: an
//! install config installs, any other applies. A failure of any kind — no route yet, a server
//! that does not answer, a 404, a digest that differs, a config that does not validate — leaves
//! the node in maintenance mode with the reason on the console and in `osctl logs init`, and
//! is tried again with back-off (the file on the server may be fixed); a URL that can never
//! work (an unknown variable, no CA for https) is said once and not tried again.
//!
//! A config the node already has (from STATE, kept from an earlier boot or an install) wins:
//! the URL is for the first boot. A config applied through the API while this waits stops it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use sha2::Digest as _;

use crate::configstate::{ApplyError, ApplyMode};
use crate::node::{AcceptError, Accepted, Node};

/// The most a config may be (the machine API takes no more either).
pub const MAX_CONFIG: usize = 4 << 20;
/// One attempt's limit: connect, TLS, the answer and its body.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Back-off between attempts: doubling from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What the kernel command line asked for.
#[derive(Debug, Clone)]
pub struct Source {
    pub url: String,
    pub sha256: Option<[u8; 32]>,
    /// base64 of the CA's PEM or DER.
    pub ca: Option<String>,
}

/// Why the config could not be fetched or taken.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: not an http:// or https:// URL")]
    Scheme { url: String },
    #[error("{url}: no host")]
    NoHost { url: String },
    #[error(
        "{url}: unknown variable ${{{name}}} (the node substitutes ${{mac}}, ${{uuid}}, ${{serial}} and ${{hostname}})"
    )]
    UnknownVariable { url: String, name: String },
    #[error("{url}: variables are substituted in the path and query, not the host")]
    VariableInHost { url: String },
    #[error("{url}: not a URL after substitution")]
    Url {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error(
        "{url}: https needs the CA to check the server against: basalt.config.ca=BASE64 (the CA's PEM or DER, base64) on the kernel command line"
    )]
    NoCa { url: String },
    #[error("basalt.config.ca: {why}")]
    Ca { why: String },
    #[error("basalt.config.ca")]
    CaTls(#[source] basalt_api::tls::TlsError),
    #[error("${{{name}}}: {why}")]
    Variable { name: &'static str, why: String },
    #[error("cannot connect to {host}:{port}")]
    Connect {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with {host}")]
    Tls {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP with {host}")]
    Http {
        host: String,
        #[source]
        source: hyper::Error,
    },
    #[error("the server answered {status}")]
    Status { status: http::StatusCode },
    #[error("the answer is larger than {} MiB", limit >> 20)]
    TooLarge { limit: u64 },
    #[error("cannot write {path}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the answer")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("its sha256 is {got}; basalt.config.sha256 wants {want}")]
    Digest { got: String, want: String },
    #[error("the config is not UTF-8 text")]
    NotText,
    #[error(transparent)]
    Refused(AcceptError),
}

impl FetchError {
    /// Trying again cannot help: the command line itself is wrong.
    fn permanent(&self) -> bool {
        matches!(
            self,
            FetchError::Scheme { .. }
                | FetchError::NoHost { .. }
                | FetchError::UnknownVariable { .. }
                | FetchError::VariableInHost { .. }
                | FetchError::Url { .. }
                | FetchError::NoCa { .. }
                | FetchError::Ca { .. }
                | FetchError::CaTls(_)
        )
    }
}

/// What `${...}` stands for on this node; `None` where the node cannot tell (a failure
/// naming the variable, tried again).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vars {
    /// The MAC of the link the request leaves by, `52:54:00:12:34:56`.
    pub mac: Option<String>,
    /// SMBIOS system UUID, lower case.
    pub uuid: Option<String>,
    /// SMBIOS system serial number.
    pub serial: Option<String>,
    pub hostname: Option<String>,
}

/// The URL split where the node needs it: the scheme and authority (connected to as given),
/// the rest (where variables are substituted).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parts {
    https: bool,
    host: String,
    port: u16,
    /// Starts with `/` (an empty path is `/`).
    path: String,
}

fn split(url: &str) -> Result<Parts, FetchError> {
    let (https, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(FetchError::Scheme { url: url.into() });
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.contains("${") {
        return Err(FetchError::VariableInHost { url: url.into() });
    }
    let default = if https { 443 } else { 80 };
    // `[v6]` without a port is the one form split_endpoint does not take.
    let authority = match authority
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
    {
        Some(v6) => v6,
        None => authority,
    };
    let (host, port) = basalt_api::tls::split_endpoint(authority, default)
        .map_err(|_| FetchError::NoHost { url: url.into() })?;
    if host.is_empty() {
        return Err(FetchError::NoHost { url: url.into() });
    }
    Ok(Parts {
        https,
        host,
        port,
        path,
    })
}

/// The variable names of `text`, in order; an unterminated `${` is kept as text.
fn variables(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        let Some(j) = rest[i + 2..].find('}') else {
            break;
        };
        out.push(&rest[i + 2..i + 2 + j]);
        rest = &rest[i + 2 + j + 1..];
    }
    out
}

/// Checks that every variable of the URL is one the node knows (before any network).
fn check_variables(url: &str) -> Result<(), FetchError> {
    for name in variables(url) {
        if !matches!(name, "mac" | "uuid" | "serial" | "hostname") {
            return Err(FetchError::UnknownVariable {
                url: url.into(),
                name: name.into(),
            });
        }
    }
    Ok(())
}

/// `path` with its variables replaced (percent-encoded where a URL needs it).
fn expand(path: &str, vars: &Vars) -> Result<String, FetchError> {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(i) = rest.find("${") {
        let Some(j) = rest[i + 2..].find('}') else {
            break;
        };
        out.push_str(&rest[..i]);
        let name = &rest[i + 2..i + 2 + j];
        let (key, value): (&'static str, &Option<String>) = match name {
            "mac" => ("mac", &vars.mac),
            "uuid" => ("uuid", &vars.uuid),
            "serial" => ("serial", &vars.serial),
            "hostname" => ("hostname", &vars.hostname),
            _ => unreachable!("checked by check_variables"),
        };
        let value = value.as_deref().ok_or(FetchError::Variable {
            name: key,
            why: "this node does not have one".into(),
        })?;
        out.push_str(&encode(value));
        rest = &rest[i + 2 + j + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Percent-encodes what may not stand in a URL path as is (RFC 3986's unreserved characters
/// and `:` stay).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The CA from `basalt.config.ca`: base64 of a PEM file or of DER, as PEM.
fn ca_pem(b64: &str) -> Result<String, FetchError> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b64.trim()))
        .map_err(|e| FetchError::Ca {
            why: format!("not base64: {e}"),
        })?;
    if bytes.starts_with(b"-----BEGIN") {
        return String::from_utf8(bytes).map_err(|_| FetchError::Ca {
            why: "the PEM is not text".into(),
        });
    }
    let body = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    Ok(pem)
}

/// How one fetch connects and reads the node's facts.
pub struct Fetcher {
    parts: Parts,
    url: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The node's facts for the variables; the local address of the connection is given.
    facts: Box<dyn Fn(SocketAddr) -> Vars + Send + Sync>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("url", &self.url)
            .field("https", &self.parts.https)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// Checks the URL and the CA (the errors here are the permanent ones).
    pub fn new(
        src: &Source,
        facts: Box<dyn Fn(SocketAddr) -> Vars + Send + Sync>,
    ) -> Result<Fetcher, FetchError> {
        // The URL's own errors first, then the CA's (`with_tls` says when https has none).
        let https = split(&src.url)?.https;
        check_variables(&src.url)?;
        let tls = match &src.ca {
            Some(ca) if https => {
                Some(basalt_api::tls::web_client_config(&ca_pem(ca)?).map_err(FetchError::CaTls)?)
            }
            _ => None,
        };
        Fetcher::with_tls(&src.url, tls, facts)
    }

    /// A fetcher of `url` whose https server is checked with `tls` (`None`: plain http only).
    pub fn with_tls(
        url: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
        facts: Box<dyn Fn(SocketAddr) -> Vars + Send + Sync>,
    ) -> Result<Fetcher, FetchError> {
        let parts = split(url)?;
        check_variables(url)?;
        if parts.https && tls.is_none() {
            return Err(FetchError::NoCa { url: url.into() });
        }
        let tls = if parts.https { tls } else { None };
        Ok(Fetcher {
            parts,
            url: url.to_string(),
            tls,
            facts,
        })
    }

    /// One GET of the URL: the path the variables made, and the body.
    pub async fn get(&self) -> Result<(String, Bytes), FetchError> {
        tokio::time::timeout(ATTEMPT_TIMEOUT, self.get_once())
            .await
            .map_err(|_| FetchError::Timeout(ATTEMPT_TIMEOUT))?
    }

    async fn get_once(&self) -> Result<(String, Bytes), FetchError> {
        let (path, resp) = self.respond(MAX_CONFIG as u64).await?;
        let body = Limited::new(resp.into_body(), MAX_CONFIG)
            .collect()
            .await
            .map_err(|e| match e.downcast::<http_body_util::LengthLimitError>() {
                Ok(_) => FetchError::TooLarge {
                    limit: MAX_CONFIG as u64,
                },
                Err(e) => FetchError::Body(e),
            })?
            .to_bytes();
        Ok((path, body))
    }

    /// GETs the URL into the file `to` (created, or emptied), at most `limit` bytes (a
    /// Content-Length over it is refused before the body is read), each part of the answer
    /// within [`ATTEMPT_TIMEOUT`] of the last: its size and sha256. On an error the file is
    /// removed.
    pub async fn download(
        &self,
        to: &std::path::Path,
        limit: u64,
    ) -> Result<(u64, [u8; 32]), FetchError> {
        let r = self.download_once(to, limit).await;
        if r.is_err() {
            let _ = tokio::fs::remove_file(to).await;
        }
        r
    }

    async fn download_once(
        &self,
        to: &std::path::Path,
        limit: u64,
    ) -> Result<(u64, [u8; 32]), FetchError> {
        use tokio::io::AsyncWriteExt as _;
        let (_, resp) = tokio::time::timeout(ATTEMPT_TIMEOUT, self.respond(limit))
            .await
            .map_err(|_| FetchError::Timeout(ATTEMPT_TIMEOUT))??;
        let write = |source| FetchError::Write {
            path: to.to_path_buf(),
            source,
        };
        let mut file = tokio::fs::File::create(to).await.map_err(write)?;
        let mut body = resp.into_body();
        let mut hash = sha2::Sha256::new();
        let mut size = 0u64;
        loop {
            let frame = tokio::time::timeout(ATTEMPT_TIMEOUT, body.frame())
                .await
                .map_err(|_| FetchError::Timeout(ATTEMPT_TIMEOUT))?;
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| FetchError::Body(Box::new(e)))?;
            if let Ok(data) = frame.into_data() {
                size += data.len() as u64;
                if size > limit {
                    return Err(FetchError::TooLarge { limit });
                }
                hash.update(&data);
                file.write_all(&data).await.map_err(write)?;
            }
        }
        file.sync_all().await.map_err(write)?;
        Ok((size, hash.finalize().into()))
    }

    /// Connects, sends the GET and reads the answer's head: the path the variables made and
    /// the response, refused unless 200 and (by its Content-Length) at most `limit` bytes.
    async fn respond(
        &self,
        limit: u64,
    ) -> Result<(String, http::Response<hyper::body::Incoming>), FetchError> {
        let p = &self.parts;
        let tcp = tokio::net::TcpStream::connect((p.host.as_str(), p.port))
            .await
            .map_err(|source| FetchError::Connect {
                host: p.host.clone(),
                port: p.port,
                source,
            })?;
        let local = tcp.local_addr().map_err(|source| FetchError::Connect {
            host: p.host.clone(),
            port: p.port,
            source,
        })?;
        let path = expand(&p.path, &(self.facts)(local))?;
        let uri: http::Uri = path.parse().map_err(|source| FetchError::Url {
            url: self.url.clone(),
            source,
        })?;
        let host_header = match (p.https, p.port) {
            (false, 80) | (true, 443) => p.host.clone(),
            _ => format!("{}:{}", p.host, p.port),
        };
        let host_header = match host_header.parse::<std::net::Ipv6Addr>() {
            Ok(_) => format!("[{host_header}]"),
            Err(_) => host_header,
        };
        let req = http::Request::get(uri)
            .header(http::header::HOST, host_header)
            .header(
                http::header::USER_AGENT,
                concat!("basalt/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Body(Box::new(e)))?;
        let http_err = |source| FetchError::Http {
            host: p.host.clone(),
            source,
        };
        let resp = match &self.tls {
            None => {
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(http_err)?;
                tokio::spawn(conn);
                send.send_request(req).await.map_err(http_err)?
            }
            Some(tls) => {
                let name =
                    rustls::pki_types::ServerName::try_from(p.host.clone()).map_err(|e| {
                        FetchError::Tls {
                            host: p.host.clone(),
                            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
                        }
                    })?;
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|source| FetchError::Tls {
                        host: p.host.clone(),
                        source,
                    })?;
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(http_err)?;
                tokio::spawn(conn);
                send.send_request(req).await.map_err(http_err)?
            }
        };
        if resp.status() != http::StatusCode::OK {
            return Err(FetchError::Status {
                status: resp.status(),
            });
        }
        if resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > limit)
        {
            return Err(FetchError::TooLarge { limit });
        }
        Ok((path, resp))
    }
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks the pin, then hands the config to the node.
fn take(node: &Node, body: &[u8], pin: Option<&[u8; 32]>) -> Result<String, FetchError> {
    if let Some(want) = pin {
        let got = sha2::Sha256::digest(body);
        if got.as_slice() != want {
            return Err(FetchError::Digest {
                got: hex(&got),
                want: hex(want),
            });
        }
    }
    let text = std::str::from_utf8(body).map_err(|_| FetchError::NotText)?;
    match node.accept_config(text, ApplyMode::NoReboot, false) {
        Ok(Accepted::Installing(summary)) => Ok(summary),
        Ok(Accepted::Applied(out)) => Ok(out.summary),
        Err(e) => Err(FetchError::Refused(e)),
    }
}

/// The node's facts for the variables: the MAC of the link holding `local`'s address (from
/// the network status resources), the SMBIOS UUID and serial, the host name.
pub fn node_facts(store: basalt_resources::Store) -> Box<dyn Fn(SocketAddr) -> Vars + Send + Sync> {
    use basalt_networkd::spec::{AddressStatus, LinkStatus};
    Box::new(move |local: SocketAddr| {
        let link = store
            .list::<AddressStatus>()
            .into_iter()
            .find(|(_, a)| a.address.addr() == local.ip())
            .map(|(_, a)| a.link);
        let mac = link
            .and_then(|l| store.get::<LinkStatus>(&l))
            .map(|(_, s)| s.hardware_addr.to_lowercase())
            .filter(|m| !m.is_empty());
        let dmi = |f: &str| {
            std::fs::read_to_string(format!("/sys/class/dmi/id/{f}"))
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        Vars {
            mac,
            uuid: dmi("product_uuid").map(|u| u.to_lowercase()),
            serial: dmi("product_serial"),
            hostname: basalt_networkd::spec::hostname(&store),
        }
    })
}

/// Fetches until a config is taken, or the node has one by other means, or the URL can
/// never work. Every failure is logged with its reason and the next try.
pub async fn run(node: Node, src: Source) {
    let fetcher = match Fetcher::new(&src, node_facts(node.store.clone())) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(
                error = %basalt_sys::error_chain(&e),
                "config from basalt.config: none; the node stays in maintenance mode"
            );
            return;
        }
    };
    tracing::info!(url = %src.url, "config: fetching");
    let mut wait = BACKOFF_FIRST;
    for attempt in 1u64.. {
        if node.config.active().is_some() {
            tracing::info!(
                url = %src.url,
                "config: the node has one; basalt.config is not fetched"
            );
            return;
        }
        let result = match fetcher.get().await {
            Ok((path, body)) => take(&node, &body, src.sha256.as_ref()).map(|s| (path, s)),
            Err(e) => Err(e),
        };
        match result {
            Ok((path, summary)) => {
                tracing::info!(
                    "config: taken from {} ({path}): {summary}",
                    fetcher.parts.host
                );
                return;
            }
            Err(e) if e.permanent() => {
                tracing::error!(
                    url = %src.url,
                    error = %basalt_sys::error_chain(&e),
                    "config: not taken; the node stays in maintenance mode"
                );
                return;
            }
            Err(e) => {
                // A refused config is worth a look by a human: wait the longest.
                if matches!(
                    e,
                    FetchError::Refused(_) | FetchError::Digest { .. } | FetchError::NotText
                ) {
                    wait = BACKOFF_MAX;
                }
                let reason = basalt_sys::error_chain(&e);
                let msg = format!(
                    "config from {} (attempt {attempt}): {reason}; the node stays in maintenance mode, next try in {} s",
                    src.url,
                    wait.as_secs()
                );
                if matches!(
                    e,
                    FetchError::Refused(AcceptError::Apply(ApplyError::Invalid(_)))
                ) {
                    tracing::error!("{msg}");
                } else {
                    tracing::warn!("{msg}");
                }
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests;
