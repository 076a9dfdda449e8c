//! `apid`: the network side of the machine API, a mode of the node's one binary, run by init's
//! supervisor. gRPC on TCP :50000 over TLS 1.3 with client certificates from the OS CA; the
//! caller's role is its certificate's Organization and the method path is the unit of policy
//! ([`basalt_api::auth::METHODS`]). An allowed call is forwarded, unchanged but for the role
//! header, to init's unix socket — or, when its `node` metadata names another node, one hop to
//! that node's apid, authenticated as this node (`os:impersonator`) and carrying the caller's
//! role, which the target enforces again.
//!
//! In maintenance mode (no config yet) apid serves a self-signed certificate, asks for no
//! client certificate and lets only `Version`, `ApplyConfiguration` and `Disks` through.

pub mod door;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use basalt_api::auth::{self, Role};
use basalt_api::tls::{self, Identity};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::body::Body;
use tower::Service as _;

/// Methods allowed before the node has a config.
pub const MAINTENANCE_METHODS: &[&str] = &[
    "/basalt.machine.v1.Machine/Version",
    "/basalt.machine.v1.Machine/ApplyConfiguration",
    "/basalt.machine.v1.Machine/Disks",
];

/// Where init leaves apid's certificates: `ca.crt` (the OS CA), `node.crt` and `node.key`
/// (this node's certificate: serving, and client for proxying as `os:impersonator`).
pub const PKI_DIR: &str = "/system/run/apid";

/// Why apid could not start, or could not (re)load its certificate.
#[derive(Debug, thiserror::Error)]
pub enum ApidError {
    #[error("{flag} needs {what}")]
    MissingValue {
        flag: &'static str,
        what: &'static str,
    },
    #[error("--listen {0:?}: not HOST:PORT")]
    BadListen(String),
    #[error("unknown argument {0:?}")]
    UnknownArgument(String),
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the config's Secrets.certs.os has no key: this node cannot issue its API certificate")]
    NoCaKey,
    #[error("cannot issue the {0} certificate")]
    Issue(&'static str, #[source] basalt_config::pki::PkiError),
    #[error("the TLS settings")]
    Tls(#[source] tls::TlsError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot handle {0}")]
    Signal(&'static str, #[source] std::io::Error),
    #[error("cannot start the runtime")]
    Runtime(#[source] std::io::Error),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub listen: SocketAddr,
    pub init_socket: PathBuf,
    pub maintenance: bool,
    pub pki: PathBuf,
    /// The front door's limits ([`door`]).
    pub limits: door::Limits,
}

impl Options {
    /// `apid [--maintenance] [--listen ADDR] [--init-socket PATH] [--pki DIR]`.
    pub fn from_args(args: &[String]) -> Result<Self, ApidError> {
        let mut o = Options {
            listen: SocketAddr::from(([0, 0, 0, 0], basalt_api::APID_PORT)),
            init_socket: basalt_api::INIT_SOCKET.into(),
            maintenance: false,
            pki: PKI_DIR.into(),
            limits: door::Limits::default(),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |flag: &'static str, what: &'static str| {
                it.next()
                    .cloned()
                    .ok_or(ApidError::MissingValue { flag, what })
            };
            match a.as_str() {
                "--maintenance" => o.maintenance = true,
                "--listen" => {
                    let v = value("--listen", "an address")?;
                    o.listen = v.parse().map_err(|_| ApidError::BadListen(v))?;
                }
                "--init-socket" => o.init_socket = value("--init-socket", "a path")?.into(),
                "--pki" => o.pki = value("--pki", "a directory")?.into(),
                other => return Err(ApidError::UnknownArgument(other.to_string())),
            }
        }
        Ok(o)
    }
}

/// This node's certificates, as apid reads them.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca: String,
    pub node: Identity,
}

impl Pki {
    pub fn read(dir: &Path) -> Result<Pki, ApidError> {
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f)).map_err(|source| ApidError::Read {
                path: dir.join(f),
                source,
            })
        };
        Ok(Pki {
            ca: read("ca.crt")?,
            node: Identity {
                crt: read("node.crt")?,
                key: read("node.key")?,
            },
        })
    }

    /// Issues this node's certificate from the config's OS CA: the node's addresses, its host
    /// name, loopback (for port-forwarded access) and the config's `certSANs`.
    pub fn issue(config: &basalt_config::Config, addresses: &[String]) -> Result<Pki, ApidError> {
        let os = &config.secrets().certs.os;
        let key = os.key.clone().ok_or(ApidError::NoCaKey)?;
        let ca = basalt_config::pki::CertAndKey {
            crt: os.crt.clone(),
            key,
        };
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        let sans = node_sans(addresses, &host, &config.machine().cert_sans);
        let cn = if host.is_empty() {
            "basalt-node"
        } else {
            &host
        };
        let node = basalt_config::pki::issue(
            &ca,
            cn,
            &[auth::IMPERSONATOR],
            &sans,
            basalt_config::pki::Usage::ServerAndClient,
            365,
        )
        .map_err(|e| ApidError::Issue("node", e))?;
        Ok(Pki {
            ca: os.crt.0.as_str().to_string(),
            node: Identity {
                crt: node.crt.0.as_str().to_string(),
                key: node.key.0.as_str().to_string(),
            },
        })
    }

    /// Writes the three files atomically (the key 0600).
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        use basalt_sys::fs::atomic_write;
        atomic_write(&dir.join("ca.crt"), self.ca.as_bytes(), 0o644)?;
        atomic_write(&dir.join("node.key"), self.node.key.as_bytes(), 0o600)?;
        atomic_write(&dir.join("node.crt"), self.node.crt.as_bytes(), 0o644)
    }
}

/// Subject alternative names for a node certificate: addresses (link-local ones need a zone
/// and are left out), the host name, loopback and the configured extras, each once.
fn node_sans(addresses: &[String], host: &str, extra: &[String]) -> Vec<String> {
    let mut sans: Vec<String> = Vec::new();
    let candidates = addresses
        .iter()
        .filter(|a| !a.starts_with("fe80:"))
        .cloned()
        .chain((!host.is_empty()).then(|| host.to_string()))
        .chain(["localhost", "127.0.0.1", "::1"].map(String::from))
        .chain(extra.iter().cloned());
    for s in candidates {
        if !sans.contains(&s) {
            sans.push(s);
        }
    }
    sans
}

/// A self-signed serving certificate for maintenance mode (nothing to trust it with yet).
fn maintenance_identity(addresses: &[String]) -> Result<Identity, ApidError> {
    let ca = basalt_config::pki::new_ca("basalt maintenance", None, 1)
        .map_err(|e| ApidError::Issue("maintenance CA", e))?;
    let sans = node_sans(addresses, "", &[]);
    let leaf = basalt_config::pki::issue(
        &ca,
        "basalt maintenance",
        &[],
        &sans,
        basalt_config::pki::Usage::Server,
        30,
    )
    .map_err(|e| ApidError::Issue("maintenance", e))?;
    Ok(Identity {
        crt: format!("{}\n{}", leaf.crt.0.as_str(), ca.crt.0.as_str()),
        key: leaf.key.0.as_str().to_string(),
    })
}

/// Who is calling, from the TLS session.
#[derive(Debug, Clone)]
enum Caller {
    /// Maintenance mode: anyone, for three methods.
    Anonymous,
    /// A client certificate with a role.
    Role(Role),
    /// Another node proxying a call; the role comes from the role header.
    Node,
    /// A certificate from the CA that grants nothing.
    NoRole(Vec<String>),
}

impl Caller {
    fn of(certs: Option<&[rustls::pki_types::CertificateDer<'static>]>) -> Caller {
        let Some(leaf) = certs.and_then(|c| c.first()) else {
            return Caller::Anonymous;
        };
        let orgs = tls::organizations(leaf);
        if let Some(r) = Role::from_organizations(orgs.iter().map(String::as_str)) {
            Caller::Role(r)
        } else if orgs.iter().any(|o| o == auth::IMPERSONATOR) {
            Caller::Node
        } else {
            Caller::NoRole(orgs)
        }
    }
}

/// Where a call goes once allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Local,
    Node(String),
}

/// The decision for one call: where it goes with which role, or the status to answer.
fn authorize(
    maintenance: bool,
    caller: &Caller,
    path: &str,
    headers: &http::HeaderMap,
    is_local: impl Fn(&str) -> bool,
) -> Result<(Option<Role>, Route), tonic::Status> {
    let method = auth::method_name(path);
    if maintenance {
        if !MAINTENANCE_METHODS.contains(&path) {
            return Err(tonic::Status::permission_denied(format!(
                "{method} is not available in maintenance mode: apply a config first (only Version, ApplyConfiguration and Disks answer)"
            )));
        }
        return Ok((None, Route::Local));
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let role = match caller {
        Caller::Role(r) => *r,
        Caller::Node => match header(auth::ROLE_HEADER).and_then(Role::from_organization) {
            Some(r) => r,
            None => {
                return Err(tonic::Status::permission_denied(
                    "a call proxied by another node must carry the caller's role",
                ));
            }
        },
        Caller::NoRole(orgs) => {
            return Err(tonic::Status::permission_denied(format!(
                "the client certificate grants no role: its Organization is {:?}, and must be one of os:admin, os:operator, os:reader",
                orgs.join(", ")
            )));
        }
        Caller::Anonymous => {
            return Err(tonic::Status::unauthenticated(
                "no client certificate: this node has a config, so calls need a certificate from its OS CA",
            ));
        }
    };
    let need = auth::required_role(path);
    if role < need {
        return Err(tonic::Status::permission_denied(format!(
            "{method} needs role {need} or higher; this caller has {role}"
        )));
    }
    let route = match header(auth::NODE_HEADER) {
        Some(n) if !n.is_empty() && !is_local(n) => {
            if matches!(caller, Caller::Node) {
                return Err(tonic::Status::permission_denied(format!(
                    "proxying is one hop: this call was already proxied and names another node ({n})"
                )));
            }
            Route::Node(n.to_string())
        }
        _ => Route::Local,
    };
    Ok((Some(role), route))
}

/// Whether `name` is this node: one of its addresses, its host name, or loopback.
fn is_this_node(name: &str, local: SocketAddr) -> bool {
    let Ok((host, port)) = tls::split_endpoint(name, local.port()) else {
        return false;
    };
    // Another port is another apid, even on this address (tests, port forwarding).
    if port != local.port() {
        return false;
    }
    if host == local.ip().to_string() || host == "localhost" {
        return true;
    }
    if host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
    {
        return true;
    }
    if nix::unistd::gethostname().is_ok_and(|h| h.to_str() == Some(host.as_str())) {
        return true;
    }
    basalt_sys::netif::addresses_text().contains(&host)
}

struct Shared {
    maintenance: bool,
    upstream: tonic::transport::Channel,
    /// For proxying: a client config presenting this node's certificate.
    node_client: Option<Arc<rustls::ClientConfig>>,
    peers: Mutex<HashMap<String, tonic::transport::Channel>>,
    /// Lines an outside party triggers (failed handshakes, denied calls): a flood of them
    /// must not flood the log.
    noisy: basalt_resources::ratelimit::SharedRateLimit,
    door: Arc<door::Door>,
}

impl Shared {
    fn peer(&self, node: &str) -> Result<tonic::transport::Channel, tonic::Status> {
        let cfg = self
            .node_client
            .clone()
            .ok_or_else(|| tonic::Status::internal("this node cannot proxy: no certificate"))?;
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = peers.get(node) {
            return Ok(c.clone());
        }
        let c = tls::channel(node, cfg).map_err(|e| {
            tonic::Status::invalid_argument(format!(
                "node {node:?}: {}",
                basalt_sys::error_chain(&e)
            ))
        })?;
        peers.insert(node.to_string(), c.clone());
        Ok(c)
    }
}

/// Serves until SIGTERM (the supervisor stopping apid: a reboot, a new config), then lets the
/// calls under way finish: the reply to the Reboot that started the sequence is still on its way
/// back through here when the sequence stops apid.
pub async fn serve(o: Options) -> Result<(), ApidError> {
    // SIGHUP's default action ends the process: take it over before anything can be sent
    // (init signals apid once it answers; this comes before apid listens).
    let _hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| ApidError::Signal("SIGHUP", e))?;
    let listener = tokio::net::TcpListener::bind(o.listen)
        .await
        .map_err(|source| ApidError::Listen {
            addr: o.listen,
            source,
        })?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| ApidError::Signal("SIGTERM", e))?;
    serve_on(listener, o, async move {
        term.recv().await;
    })
    .await
}

/// Serves on a bound listener until `stop`; then takes no new connection and gives the calls
/// under way [`STOP_GRACE`] to finish.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    o: Options,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ApidError> {
    // Before the PKI is read: a certificate written after the read comes with a SIGHUP that
    // this stream then holds.
    let mut hup = match o.maintenance {
        true => None,
        false => Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| ApidError::Signal("SIGHUP", e))?,
        ),
    };
    let addresses = basalt_sys::netif::addresses_text();
    let (server, node_client) = if o.maintenance {
        let id = maintenance_identity(&addresses)?;
        (tls::server_config(&id, None), None)
    } else {
        let pki = Pki::read(&o.pki)?;
        let client = tls::client_config(&pki.ca, &pki.node).map_err(ApidError::Tls)?;
        (tls::server_config(&pki.node, Some(&pki.ca)), Some(client))
    };
    let server = server.map_err(ApidError::Tls)?;
    // Swapped whole when the certificate is reloaded (SIGHUP: init reissued it for new node
    // addresses); a connection takes the acceptor of the moment it arrives.
    let acceptor = Arc::new(std::sync::RwLock::new(tokio_rustls::TlsAcceptor::from(
        server,
    )));
    let local = listener.local_addr().map_err(|source| ApidError::Listen {
        addr: o.listen,
        source,
    })?;
    tracing::info!(
        "apid listening on {local} (TLS 1.3{})",
        if o.maintenance {
            ", maintenance mode: self-signed, no client certificates"
        } else {
            ", client certificates from the OS CA"
        }
    );
    let shared = Arc::new(Shared {
        maintenance: o.maintenance,
        upstream: basalt_api::unix_channel(&o.init_socket),
        node_client,
        peers: Mutex::default(),
        noisy: Default::default(),
        door: door::Door::new(o.limits.clone()),
    });
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut stop => break,
            Some(()) = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                match reload(&o.pki) {
                    Ok(a) => {
                        *acceptor.write().unwrap_or_else(|p| p.into_inner()) = a;
                        tracing::info!(dir = %o.pki.display(), "apid: certificate reloaded");
                    }
                    Err(e) => tracing::warn!(
                        error = %basalt_sys::error_chain(&e),
                        "apid: certificate not reloaded, the old one serves"
                    ),
                }
                continue;
            }
        };
        let Ok((tcp, peer)) = accepted else {
            continue;
        };
        let Some(conn_guard) = shared.door.connection(peer.ip()) else {
            shared.noisy.warn(format_args!(
                "apid: closed a connection from {peer}: {} open from that address already",
                shared.door.limits.conns_per_ip
            ));
            continue;
        };
        let Some(handshake) = shared.door.handshake() else {
            shared.noisy.warn(format_args!(
                "apid: closed a connection from {peer}: {} TLS handshakes under way already",
                shared.door.limits.handshakes
            ));
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.read().unwrap_or_else(|p| p.into_inner()).clone();
        let shared = shared.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _conn_guard = conn_guard;
            let tls =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp))
                    .await;
            drop(handshake);
            let Ok(tls) = tls else {
                return;
            };
            let tls = match tls {
                Ok(t) => t,
                Err(e) => {
                    shared
                        .noisy
                        .warn(format_args!("apid: TLS handshake with {peer} failed: {e}"));
                    return;
                }
            };
            let local = tls.get_ref().0.local_addr().unwrap_or(local);
            let caller = Caller::of(tls.get_ref().1.peer_certificates());
            let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let (shared, caller) = (shared.clone(), caller.clone());
                async move { Ok::<_, Infallible>(handle(&shared, &caller, peer, local, req).await) }
            });
            let mut conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            conn.http2()
                .initial_stream_window_size(basalt_api::STREAM_WINDOW)
                .initial_connection_window_size(basalt_api::CONNECTION_WINDOW)
                .max_frame_size(basalt_api::MAX_FRAME);
            let conn = conn
                .http2_only()
                .serve_connection(TokioIo::new(tls), svc)
                .into_owned();
            let _ = watcher.watch(conn).await;
        });
    }
    drop(listener);
    // A stream that does not end by itself (logs followed) is cut after this.
    if tokio::time::timeout(STOP_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("apid: calls still under way after SIGTERM were cut");
    }
    Ok(())
}

/// A TLS acceptor from the PKI files as they are now (same CA, a reissued node certificate).
fn reload(dir: &Path) -> Result<tokio_rustls::TlsAcceptor, ApidError> {
    let pki = Pki::read(dir)?;
    let server = tls::server_config(&pki.node, Some(&pki.ca)).map_err(ApidError::Tls)?;
    Ok(tokio_rustls::TlsAcceptor::from(server))
}

/// How long calls under way may take to finish once apid is told to stop (the supervisor's
/// stop timeout for apid, after which it kills, is longer).
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

async fn handle(
    shared: &Shared,
    caller: &Caller,
    peer: SocketAddr,
    local: SocketAddr,
    req: http::Request<Incoming>,
) -> http::Response<Body> {
    let path = req.uri().path().to_string();
    let decision = authorize(shared.maintenance, caller, &path, req.headers(), |n| {
        is_this_node(n, local)
    });
    let (role, route) = match decision {
        Ok(d) => d,
        Err(s) => {
            shared.noisy.warn(format_args!(
                "apid: denied {path} from {peer}: {}",
                s.message()
            ));
            return s.into_http::<Body>();
        }
    };
    // A call without a certificate: within the door's rate and in-flight limits, and read
    // whole (up to its size limit) before init sees any of it.
    let mut _in_flight = None;
    let (mut parts, body) = req.into_parts();
    let mut body = Body::new(body);
    if matches!(caller, Caller::Anonymous) {
        match shared
            .door
            .anonymous_call(peer.ip(), std::time::Instant::now())
        {
            Ok(p) => _in_flight = Some(p),
            Err(r) => {
                shared
                    .noisy
                    .warn(format_args!("apid: refused {path} from {peer}: {r}"));
                return tonic::Status::from(r).into_http::<Body>();
            }
        }
        let max = shared.door.limits.max_request;
        let read = tokio::time::timeout(
            shared.door.limits.request_read,
            http_body_util::BodyExt::collect(http_body_util::Limited::new(body, max)),
        )
        .await;
        let Ok(read) = read else {
            let r = door::Refused::Slow(shared.door.limits.request_read);
            shared
                .noisy
                .warn(format_args!("apid: refused {path} from {peer}: {r}"));
            return tonic::Status::from(r).into_http::<Body>();
        };
        match read {
            Ok(all) => body = Body::new(http_body_util::Full::new(all.to_bytes())),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                let r = door::Refused::TooLarge(max);
                shared
                    .noisy
                    .warn(format_args!("apid: refused {path} from {peer}: {r}"));
                return tonic::Status::from(r).into_http::<Body>();
            }
            Err(e) => {
                return tonic::Status::invalid_argument(format!("reading the request: {e}"))
                    .into_http::<Body>();
            }
        }
    }
    parts.headers.remove(auth::ROLE_HEADER);
    parts.headers.remove(auth::NODE_HEADER);
    if let Some(r) = role {
        parts.headers.insert(
            auth::ROLE_HEADER,
            http::HeaderValue::from_static(r.organization()),
        );
    }
    let req = http::Request::from_parts(parts, body);
    let (mut channel, what) = match &route {
        Route::Local => (shared.upstream.clone(), "init".to_string()),
        Route::Node(n) => match shared.peer(n) {
            Ok(c) => (c, format!("node {n}")),
            Err(s) => return s.into_http::<Body>(),
        },
    };
    // A Channel must be polled ready before each call.
    let result = match tower::ServiceExt::ready(&mut channel).await {
        Ok(ch) => ch.call(req).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(resp) => resp.map(Body::new),
        Err(e) => tonic::Status::unavailable(format!(
            "{what} does not answer: {}",
            basalt_sys::error_chain(&e)
        ))
        .into_http::<Body>(),
    }
}

/// `apid` entry point (by `argv[0]`).
pub fn run(args: &[String]) -> ! {
    // apid's stdout is its service log (the supervisor keeps it for `osctl logs apid`).
    let _ = tracing_subscriber::fmt()
        .with_target(false)
        .with_level(false)
        .without_time()
        .with_ansi(false)
        .with_writer(std::io::stdout)
        .try_init();
    let run = || -> Result<(), (ApidError, i32)> {
        let o = Options::from_args(args).map_err(|e| (e, 2))?;
        // One thread: a call is a few microseconds of work between two sockets, and staying on
        // one thread saves the cross-thread wake-ups (measured by the apid bench).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| (ApidError::Runtime(e), 1))?;
        rt.block_on(serve(o)).map_err(|e| (e, 1))
    };
    let code = match run() {
        Ok(()) => 0,
        Err((e, code)) => {
            tracing::error!(error = %basalt_sys::error_chain(&e), "apid stopped");
            code
        }
    };
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    #[test]
    fn arguments_are_read_and_mistakes_named() {
        let args = |a: &[&str]| {
            super::Options::from_args(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        let o = args(&["--maintenance", "--listen", "127.0.0.1:5", "--pki", "/p"]).unwrap();
        assert!(o.maintenance);
        assert_eq!(o.listen.to_string(), "127.0.0.1:5");
        assert_eq!(o.pki, std::path::PathBuf::from("/p"));
        let e = |a: &[&str]| args(a).unwrap_err().to_string();
        assert_eq!(e(&["--pki"]), "--pki needs a directory");
        assert_eq!(
            e(&["--listen", "nowhere"]),
            "--listen \"nowhere\": not HOST:PORT"
        );
        assert_eq!(e(&["--bogus"]), "unknown argument \"--bogus\"");
    }

    use super::*;

    const P: &str = "/basalt.machine.v1.Machine/";

    fn decide(
        maintenance: bool,
        caller: &Caller,
        method: &str,
        hdrs: &[(&'static str, &'static str)],
    ) -> Result<(Option<Role>, Route), tonic::Status> {
        let mut h = http::HeaderMap::new();
        for (k, v) in hdrs {
            h.insert(*k, http::HeaderValue::from_static(v));
        }
        authorize(maintenance, caller, &format!("{P}{method}"), &h, |n| {
            n == "10.0.0.1"
        })
    }

    #[test]
    fn maintenance_lets_only_three_methods_through() {
        let a = Caller::Anonymous;
        assert!(decide(true, &a, "Version", &[]).is_ok());
        assert!(decide(true, &a, "ApplyConfiguration", &[]).is_ok());
        let e = decide(true, &a, "Reboot", &[]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("maintenance mode"), "{}", e.message());
        let o = Options::from_args(&[
            "--maintenance".into(),
            "--listen".into(),
            "127.0.0.1:1".into(),
        ])
        .unwrap();
        assert!(o.maintenance);
        assert_eq!(o.listen.port(), 1);
        assert!(Options::from_args(&["--bogus".into()]).is_err());
    }

    #[test]
    fn roles_are_enforced_and_denials_name_both_roles() {
        let reader = Caller::Role(Role::Reader);
        assert_eq!(
            decide(false, &reader, "Version", &[]).unwrap(),
            (Some(Role::Reader), Route::Local)
        );
        let e = decide(false, &reader, "Reboot", &[]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            e.message(),
            "Reboot needs role os:operator or higher; this caller has os:reader"
        );
        assert!(decide(false, &Caller::Role(Role::Operator), "Reboot", &[]).is_ok());
        assert!(decide(false, &Caller::Role(Role::Operator), "Reset", &[]).is_err());
        assert!(decide(false, &Caller::Role(Role::Admin), "Reset", &[]).is_ok());
        // A forged role header from a user is not believed: the certificate decides.
        let e = decide(false, &reader, "Reset", &[(auth::ROLE_HEADER, "os:admin")]).unwrap_err();
        assert!(e.message().contains("this caller has os:reader"));
        let e = decide(false, &Caller::Anonymous, "Version", &[]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let e = decide(false, &Caller::NoRole(vec!["acme".into()]), "Version", &[]).unwrap_err();
        assert!(e.message().contains("\"acme\""), "{}", e.message());
    }

    #[test]
    fn node_metadata_routes_one_hop_with_the_callers_role() {
        let admin = Caller::Role(Role::Admin);
        assert_eq!(
            decide(false, &admin, "Version", &[(auth::NODE_HEADER, "10.0.0.2")]).unwrap(),
            (Some(Role::Admin), Route::Node("10.0.0.2".into()))
        );
        assert_eq!(
            decide(false, &admin, "Version", &[(auth::NODE_HEADER, "10.0.0.1")])
                .unwrap()
                .1,
            Route::Local
        );
        // A proxied call: the role is the header's, and it is enforced here too.
        let node = Caller::Node;
        assert_eq!(
            decide(
                false,
                &node,
                "Reboot",
                &[(auth::ROLE_HEADER, "os:operator")]
            )
            .unwrap(),
            (Some(Role::Operator), Route::Local)
        );
        let e = decide(false, &node, "Reset", &[(auth::ROLE_HEADER, "os:operator")]).unwrap_err();
        assert!(e.message().contains("needs role os:admin"));
        assert!(decide(false, &node, "Version", &[]).is_err());
        let e = decide(
            false,
            &node,
            "Version",
            &[
                (auth::ROLE_HEADER, "os:admin"),
                (auth::NODE_HEADER, "10.0.0.3"),
            ],
        )
        .unwrap_err();
        assert!(e.message().contains("one hop"), "{}", e.message());
    }

    #[test]
    fn node_certificates_name_addresses_host_loopback_and_extras_once() {
        let s = node_sans(
            &["10.0.2.15".into(), "fe80::1".into(), "fd00::5".into()],
            "node1",
            &["api.example.org".into(), "10.0.2.15".into()],
        );
        assert_eq!(
            s,
            [
                "10.0.2.15",
                "fd00::5",
                "node1",
                "localhost",
                "127.0.0.1",
                "::1",
                "api.example.org"
            ]
        );
    }
}
