//! `basalt-discovery`: the open discovery server KubeSpan's nodes meet through. It stores only
//! sealed records; see docs/kubespan.md for what it can and cannot see.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "basalt-discovery", version, about)]
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
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    let listener = match tokio::net::TcpListener::bind(&a.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("basalt-discovery: cannot listen on {}: {e}", a.listen);
            std::process::exit(1);
        }
    };
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
    };
    let snapshot = a
        .snapshot
        .map(|p| (p, Duration::from_secs(a.snapshot_every.max(1))));
    if let Err(e) = basalt_kubespan::discovery::serve(
        listener,
        basalt_kubespan::discovery::Limits::default(),
        snapshot,
        shutdown,
    )
    .await
    {
        eprintln!("basalt-discovery: {e}");
        std::process::exit(1);
    }
}
