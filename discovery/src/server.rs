//! The gRPC face of the registry.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use basalt_api::discovery as pb;
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::registry::{
    AffiliateView, Change, Limits, RateLimiter, Registry, RegistryError, Snapshot,
};

fn status(e: RegistryError) -> Status {
    match e {
        RegistryError::TooManyAffiliates { .. }
        | RegistryError::TooManyClusters { .. }
        | RegistryError::RateLimited(_) => Status::resource_exhausted(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

fn affiliate(v: AffiliateView) -> pb::Affiliate {
    pb::Affiliate {
        id: v.id,
        data: v.data,
        observed_addresses: v.observed.iter().map(ToString::to_string).collect(),
    }
}

/// The service: one registry, one rate limiter, one clock.
#[derive(Debug, Clone)]
pub struct DiscoveryService {
    reg: Arc<Mutex<Registry>>,
    limiter: Arc<Mutex<RateLimiter>>,
    origin: Instant,
}

impl DiscoveryService {
    pub fn new(reg: Registry) -> Self {
        DiscoveryService {
            reg: Arc::new(Mutex::new(reg)),
            // 20 requests a second per address, bursts of 100: a node updates every few seconds.
            limiter: Arc::new(Mutex::new(RateLimiter::new(20.0, 100.0))),
            origin: Instant::now(),
        }
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn reg(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.reg.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admit<T>(&self, r: &Request<T>) -> Result<Option<IpAddr>, Status> {
        let from = r.remote_addr().map(|a| a.ip());
        if let Some(ip) = from {
            self.limiter
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .check(self.now(), ip)
                .map_err(status)?;
        }
        Ok(from)
    }

    /// Drops expired records; run every second.
    pub fn expire(&self) -> usize {
        let now = self.now();
        self.reg().expire(now)
    }

    pub fn snapshot(&self) -> Snapshot {
        let now = self.now();
        self.reg().snapshot(now, SystemTime::now())
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::discovery_server::Discovery for DiscoveryService {
    async fn update(
        &self,
        r: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::UpdateResponse>, Status> {
        let from = self.admit(&r)?;
        let m = r.into_inner();
        let now = self.now();
        self.reg()
            .update(
                now,
                &m.cluster_id,
                &m.affiliate_id,
                m.data,
                Duration::from_secs(u64::from(m.ttl_seconds)),
                from,
            )
            .map_err(status)?;
        Ok(Response::new(pb::UpdateResponse {
            observed_address: from.map(|f| f.to_string()).unwrap_or_default(),
        }))
    }

    async fn delete(
        &self,
        r: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        self.admit(&r)?;
        let m = r.into_inner();
        self.reg()
            .delete(&m.cluster_id, &m.affiliate_id)
            .map_err(status)?;
        Ok(Response::new(pb::DeleteResponse {}))
    }

    async fn list(
        &self,
        r: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        self.admit(&r)?;
        let m = r.into_inner();
        let now = self.now();
        let list = self.reg().list(now, &m.cluster_id).map_err(status)?;
        Ok(Response::new(pb::ListResponse {
            affiliates: list.into_iter().map(affiliate).collect(),
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        r: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.admit(&r)?;
        let cluster = r.into_inner().cluster_id;
        let now = self.now();
        let (list, mut rx) = self.reg().watch(now, &cluster).map_err(status)?;
        let me = self.clone();
        let (tx, out) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let send_all = |list: Vec<AffiliateView>| {
                let mut v: Vec<pb::WatchResponse> = list
                    .into_iter()
                    .map(|a| pb::WatchResponse {
                        kind: pb::watch_response::Kind::Updated as i32,
                        affiliate: Some(affiliate(a)),
                    })
                    .collect();
                v.push(pb::WatchResponse {
                    kind: pb::watch_response::Kind::SnapshotDone as i32,
                    affiliate: None,
                });
                v
            };
            for m in send_all(list) {
                if tx.send(Ok(m)).await.is_err() {
                    return;
                }
            }
            loop {
                let msg = match rx.recv().await {
                    Ok(Change::Updated(a)) => vec![pb::WatchResponse {
                        kind: pb::watch_response::Kind::Updated as i32,
                        affiliate: Some(affiliate(a)),
                    }],
                    Ok(Change::Deleted(id)) => vec![pb::WatchResponse {
                        kind: pb::watch_response::Kind::Deleted as i32,
                        affiliate: Some(pb::Affiliate {
                            id,
                            ..Default::default()
                        }),
                    }],
                    // Fell behind: everything again (updates are idempotent for a watcher).
                    Err(RecvError::Lagged(_)) => {
                        let now = me.now();
                        match me.reg().list(now, &cluster) {
                            Ok(l) => send_all(l),
                            Err(_) => return,
                        }
                    }
                    Err(RecvError::Closed) => return,
                };
                for m in msg {
                    if tx.send(Ok(m)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }
}

/// Why the discovery server stopped or did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a discovery snapshot")]
    Snapshot {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot listen on {addr}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--fwmark {mark:#x} (it needs CAP_NET_ADMIN)")]
    Mark {
        mark: u32,
        #[source]
        source: nix::Error,
    },
    #[error("the TLS settings")]
    Tls(#[source] basalt_api::tls::TlsError),
    #[error("the discovery server")]
    Server(#[source] tonic::transport::Error),
}

/// How long in-flight calls get at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Serves discovery on `listener` until `shutdown` resolves; expires records every second and,
/// with a snapshot path, saves the registry every `every` and at shutdown (and loads it first).
pub async fn serve(
    listener: tokio::net::TcpListener,
    limits: Limits,
    snapshot: Option<(PathBuf, Duration)>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_with(listener, None, limits, snapshot, shutdown).await
}

/// [`serve`] over TLS 1.3 when `tls` is given (no client certificates: the server is open and
/// the records are sealed; TLS keeps who talks to whom, and the observed addresses, private).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    snapshot: Option<(PathBuf, Duration)>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let reg = match &snapshot {
        Some((path, _)) => match std::fs::read(path) {
            Ok(bytes) => {
                let s: Snapshot =
                    serde_json::from_slice(&bytes).map_err(|source| ServeError::Snapshot {
                        path: path.clone(),
                        source,
                    })?;
                let (reg, dropped) =
                    Registry::restore(limits, &s, Duration::ZERO, SystemTime::now());
                info!(path = %path.display(), records = reg.len(), dropped, "snapshot loaded");
                reg
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Registry::new(limits),
            Err(source) => {
                return Err(ServeError::Read {
                    path: path.clone(),
                    source,
                });
            }
        },
        None => Registry::new(limits),
    };
    let svc = DiscoveryService::new(reg);
    let bg = svc.clone();
    let snap = snapshot.clone();
    let ticker = tokio::spawn(async move {
        let mut last_save = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            bg.expire();
            if let Some((path, every)) = &snap
                && last_save.elapsed() >= *every
            {
                save(&bg, path);
                last_save = tokio::time::Instant::now();
            }
        }
    });
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    info!(?addr, "discovery serving");
    // Watches never finish by themselves (every node holds one open), so a graceful shutdown
    // would wait forever: in-flight calls get a grace period, then the watches are cut.
    let (fired, mut fired_rx) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown.await;
        let _ = fired.send(true);
    };
    let router = tonic::transport::Server::builder()
        .add_service(pb::discovery_server::DiscoveryServer::new(svc.clone()));
    let server: Pin<
        Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>,
    > = match tls {
        None => Box::pin(router.serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            signal,
        )),
        Some(cfg) => {
            Box::pin(router.serve_with_incoming_shutdown(tls_incoming(listener, cfg), signal))
        }
    };
    let result = tokio::select! {
        r = server => r.map_err(ServeError::Server),
        _ = async {
            let _ = fired_rx.wait_for(|f| *f).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => Ok(()),
    };
    ticker.abort();
    if let Some((path, _)) = &snapshot {
        save(&svc, path);
    }
    result
}

fn save(svc: &DiscoveryService, path: &std::path::Path) {
    let s = svc.snapshot();
    match serde_json::to_vec(&s) {
        Ok(bytes) => {
            if let Err(e) = basalt_sys::fs::atomic_write(path, &bytes, 0o600) {
                warn!(path = %path.display(), error = %e, "snapshot not saved");
            }
        }
        Err(e) => warn!(error = %e, "snapshot not encoded"),
    }
}

/// A TLS connection that tells tonic the peer's address (the rate limit is per address).
struct TlsConn {
    inner: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    local: Option<SocketAddr>,
    remote: SocketAddr,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo {
            local_addr: self.local,
            remote_addr: Some(self.remote),
        }
    }
}

impl tokio::io::AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accepted connections after their TLS handshake (each given 10 s, off the accept loop).
fn tls_incoming(
    listener: tokio::net::TcpListener,
    cfg: Arc<rustls::ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    // Anyone can connect and fail a handshake: those lines are rate-limited.
    let noisy = Arc::new(basalt_resources::ratelimit::SharedRateLimit::default());
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let local = tcp.local_addr().ok();
            let (acceptor, conn_tx, noisy) = (acceptor.clone(), tx.clone(), noisy.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(inner)) => {
                        let _ = conn_tx
                            .send(Ok(TlsConn {
                                inner,
                                local,
                                remote,
                            }))
                            .await;
                    }
                    Ok(Err(e)) => {
                        noisy.warn(format_args!("TLS handshake with {remote} failed: {e}"))
                    }
                    Err(_) => noisy.warn(format_args!("TLS handshake with {remote} timed out")),
                }
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
