//! The `basalt-discovery` command: its own binary, and the `basalt-discovery` personality of a
//! node's `/sbin/init` when `DiscoveryConfig.serve` runs it as a service.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "basalt-discovery",
    version,
    about = "The open discovery server KubeSpan's nodes meet through"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:3000")]
    listen: String,
    /// Keep the registry in this file (saved atomically every --snapshot-every and at exit),
    /// so a restart does not drop the mesh.
    #[arg(long)]
    snapshot: Option<PathBuf>,
    /// How often to save the snapshot, in seconds.
    #[arg(long, default_value_t = 10)]
    snapshot_every: u64,
    /// Serve TLS 1.3 with this certificate (PEM, the chain) ...
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// ... and this key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mark every connection's packets with this fwmark (e.g. 0x51820, KubeSpan's: a node
    /// serving discovery answers over the underlay, never through the mesh that depends on
    /// it). Needs CAP_NET_ADMIN.
    #[arg(long, value_parser = parse_mark)]
    fwmark: Option<u32>,
}

/// A `--fwmark` that is not a number.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a mark (a number, decimal or 0x-hex)")]
struct BadMark(String);

fn parse_mark(s: &str) -> Result<u32, BadMark> {
    match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|_| BadMark(s.to_string()))
}

async fn serve(a: Args) -> Result<(), crate::ServeError> {
    use crate::ServeError;
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: a.listen.to_string(),
            source,
        })?;
    if let Some(mark) = a.fwmark {
        // Accepted connections take the listener's mark (their SYN-ACK already does).
        nix::sys::socket::setsockopt(&listener, nix::sys::socket::sockopt::Mark, &mark)
            .map_err(|source| ServeError::Mark { mark, source })?;
    }
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
    };
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).map_err(|source| ServeError::Read {
                    path: p.clone(),
                    source,
                })
            };
            let id = basalt_api::tls::Identity {
                crt: read(c)?,
                key: read(k)?,
            };
            Some(basalt_api::tls::server_config(&id, None).map_err(ServeError::Tls)?)
        }
        _ => None,
    };
    let snapshot = a
        .snapshot
        .map(|p| (p, Duration::from_secs(a.snapshot_every.max(1))));
    crate::serve_with(listener, tls, crate::Limits::default(), snapshot, shutdown).await
}

/// Runs the server with `args` (the program name first); returns the exit code.
pub fn run(args: &[String]) -> i32 {
    let a = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("basalt-discovery: cannot start the runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(serve(a)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("basalt-discovery: {}", basalt_resources::error_chain(&e));
            1
        }
    }
}
