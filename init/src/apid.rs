//! `apid`: the network side of the machine API, a mode of the node's one binary, run by init's
//! supervisor. It accepts gRPC on TCP :50000 and forwards each call, unchanged, to init's unix
//! socket; the method path is the unit of policy. In maintenance mode only `Version`,
//! `ApplyConfiguration` and `Disks` pass.
//!
//! Not yet here (the apid/osctl issue): TLS, client certificates and the role table, and
//! proxying to other nodes. Until then apid is plain HTTP/2 and must only be used on
//! networks the operator controls.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;

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

#[derive(Debug, Clone)]
pub struct Options {
    pub listen: SocketAddr,
    pub init_socket: PathBuf,
    pub maintenance: bool,
}

impl Options {
    /// `apid [--maintenance] [--listen ADDR] [--init-socket PATH]`.
    pub fn from_args(args: &[String]) -> Result<Self, String> {
        let mut o = Options {
            listen: SocketAddr::from(([0, 0, 0, 0], basalt_api::APID_PORT)),
            init_socket: basalt_api::INIT_SOCKET.into(),
            maintenance: false,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--maintenance" => o.maintenance = true,
                "--listen" => {
                    let v = it.next().ok_or("--listen needs an address")?;
                    o.listen = v
                        .parse()
                        .map_err(|_| format!("--listen {v:?}: not HOST:PORT"))?;
                }
                "--init-socket" => {
                    o.init_socket = it.next().ok_or("--init-socket needs a path")?.into();
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(o)
    }
}

fn allowed(maintenance: bool, path: &str) -> bool {
    !maintenance || MAINTENANCE_METHODS.contains(&path)
}

/// Serves until the process is killed.
pub async fn serve(o: Options) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(o.listen).await?;
    serve_on(listener, o).await
}

/// Serves on a bound listener.
pub async fn serve_on(listener: tokio::net::TcpListener, o: Options) -> std::io::Result<()> {
    crate::log::line(&format!(
        "apid listening on {}{}",
        listener.local_addr()?,
        if o.maintenance {
            " (maintenance mode)"
        } else {
            ""
        }
    ));
    let upstream = basalt_api::unix_channel(&o.init_socket);
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(_) => continue,
        };
        let _ = tcp.set_nodelay(true);
        let upstream = upstream.clone();
        let maintenance = o.maintenance;
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let mut upstream = upstream.clone();
                async move {
                    let path = req.uri().path().to_string();
                    if !allowed(maintenance, &path) {
                        let s = tonic::Status::permission_denied(format!(
                            "{path} is not available in maintenance mode: apply a config first (only Version, ApplyConfiguration and Disks answer)"
                        ));
                        return Ok::<_, Infallible>(s.into_http::<Body>());
                    }
                    let (parts, body) = req.into_parts();
                    let req = http::Request::from_parts(parts, Body::new(body));
                    // A Channel must be polled ready before each call.
                    let ready = tower::ServiceExt::ready(&mut upstream).await;
                    match ready.map(|u| u.call(req)) {
                        Ok(fut) => match fut.await {
                            Ok(resp) => Ok(resp),
                            Err(e) => Ok(tonic::Status::unavailable(format!(
                                "init does not answer: {}",
                                basalt_resources::error_chain(&e)
                            ))
                            .into_http::<Body>()),
                        },
                        Err(e) => Ok(tonic::Status::unavailable(format!(
                            "init does not answer: {}",
                            basalt_resources::error_chain(&e)
                        ))
                        .into_http::<Body>()),
                    }
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .http2_only()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// `apid` entry point (by `argv[0]`).
pub fn run(args: &[String]) -> ! {
    let code = match Options::from_args(args) {
        Err(e) => {
            crate::log::line(&format!("apid: {e}"));
            2
        }
        Ok(o) => match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => match rt.block_on(serve(o)) {
                Ok(()) => 0,
                Err(e) => {
                    crate::log::line(&format!("apid: {e}"));
                    1
                }
            },
            Err(e) => {
                crate::log::line(&format!("apid: cannot start the runtime: {e}"));
                1
            }
        },
    };
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maintenance_lets_only_three_methods_through() {
        assert!(allowed(true, "/basalt.machine.v1.Machine/Version"));
        assert!(allowed(
            true,
            "/basalt.machine.v1.Machine/ApplyConfiguration"
        ));
        assert!(!allowed(true, "/basalt.machine.v1.Machine/Reboot"));
        assert!(allowed(false, "/basalt.machine.v1.Machine/Reboot"));
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
}
