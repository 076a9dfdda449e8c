//! Reaching nodes: the client config (`osconfig`), its contexts, the endpoints osctl dials and
//! the nodes a request is for, and the fan-out of one request to many nodes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};
use basalt_api::machine::machine_client::MachineClient;
use basalt_api::tls;
use basalt_config::client::{ClientConfig, Context};
use clap::Args;
use tonic::transport::Channel;

/// Flags every command that talks to nodes takes.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// The client config (default: $OSCONFIG, then ~/.osctl/config).
    #[arg(long, global = true, value_name = "FILE")]
    pub osconfig: Option<PathBuf>,
    /// The context to use instead of the config's current one.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Addresses osctl dials (comma-separated or repeated); default: the context's.
    #[arg(short = 'e', long, global = true, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Nodes the request is for, reached through the endpoint; default: the context's, else
    /// the endpoint itself.
    #[arg(short = 'n', long, global = true, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Talk to nodes in maintenance mode: TLS without checking the node, no client
    /// certificate. Each node is dialed directly.
    #[arg(short = 'i', long, global = true)]
    pub insecure: bool,
    /// Dial from inside this network namespace (default: the context's `netns`, which a local
    /// QEMU cluster's osconfig sets). Needs root.
    #[arg(long, global = true, value_name = "NAME")]
    pub netns: Option<String>,
}

/// Where the client config is: `--osconfig`, `$OSCONFIG`, `~/.osctl/config`.
pub fn config_path(g: &Global) -> PathBuf {
    match &g.osconfig {
        Some(p) => p.clone(),
        None => default_config_path(),
    }
}

/// The client config when no `--osconfig` is given: `$OSCONFIG`, `~/.osctl/config`.
pub fn default_config_path() -> PathBuf {
    if let Some(p) = std::env::var_os("OSCONFIG").filter(|p| !p.is_empty()) {
        return p.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".osctl/config")
}

/// Reads the client config; `Ok(None)` when the file does not exist.
pub fn read_config(path: &Path) -> anyhow::Result<Option<ClientConfig>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    ClientConfig::parse(&text)
        .map(Some)
        .map_err(|e| anyhow!("{}: {}", path.display(), crate::error_chain(&e)))
}

/// Writes the client config atomically, readable only by its owner (it holds a key).
pub fn write_config(path: &Path, cfg: &ClientConfig) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    crate::gen_cmd::write_file(path, &cfg.to_yaml(), true, 0o600)
}

/// The context a command uses: `--context`, else the config's current one.
pub fn context<'a>(
    g: &Global,
    path: &Path,
    cfg: Option<&'a ClientConfig>,
) -> anyhow::Result<(String, &'a Context)> {
    let fix = "run `osctl gen config NAME https://ENDPOINT:6443` and `osctl config merge osconfig`, or pass --osconfig FILE";
    let cfg = cfg.ok_or_else(|| anyhow!("no client config at {}: {fix}", path.display()))?;
    let name = match (&g.context, &cfg.context) {
        (Some(n), _) | (None, Some(n)) => n.clone(),
        (None, None) => bail!(
            "{} has {} contexts and none is current: run `osctl config context NAME` (contexts: {})",
            path.display(),
            cfg.contexts.len(),
            cfg.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    };
    let ctx = cfg.contexts.get(&name).ok_or_else(|| {
        anyhow!(
            "no context {name:?} in {} (contexts: {}): {fix}",
            path.display(),
            cfg.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })?;
    Ok((name, ctx))
}

/// One node a request goes to.
#[derive(Debug, Clone)]
pub struct Target {
    /// How results are labelled: the node, or the endpoint when no node is named.
    pub label: String,
    pub client: MachineClient<Channel>,
    /// The `node` metadata (proxying through the endpoint), if any.
    pub node: Option<String>,
}

impl Target {
    /// A request for this target.
    pub fn req<T>(&self, msg: T) -> tonic::Request<T> {
        request(self.node.as_deref(), msg)
    }
}

/// A request for `node` (the `node` metadata: proxied through the endpoint), or for the
/// endpoint itself.
pub fn request<T>(node: Option<&str>, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(v) = node.and_then(|n| n.parse().ok()) {
        r.metadata_mut().insert(basalt_api::auth::NODE_HEADER, v);
    }
    r
}

/// Whether a named network namespace exists (`ip netns` keeps them under /run/netns).
fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// The targets of a command, from the flags and the client config.
pub fn targets(g: &Global) -> anyhow::Result<Vec<Target>> {
    let path = config_path(g);
    let cfg = read_config(&path)?;
    if g.insecure {
        // Maintenance mode: no certificates to proxy with, so each node is dialed itself.
        let ctx = cfg
            .as_ref()
            .and_then(|c| context(g, &path, Some(c)).ok())
            .map(|(_, c)| c);
        let from_ctx = ctx.map(|c| c.endpoints.clone()).unwrap_or_default();
        // A context's namespace that is gone (its cluster destroyed) does not stand in the way
        // of dialing a node by address: only one named with --netns must exist.
        let netns = g.netns.clone().or_else(|| {
            ctx.and_then(|c| c.netns.clone())
                .filter(|n| netns_exists(n))
        });
        let addrs = [g.nodes.clone(), g.endpoints.clone(), from_ctx]
            .into_iter()
            .find(|v| !v.is_empty())
            .ok_or_else(|| anyhow!("--insecure needs the node's address: pass -n ADDRESS"))?;
        return addrs
            .into_iter()
            .map(|a| {
                Ok(Target {
                    client: MachineClient::new(channel(
                        &a,
                        tls::insecure_client_config(),
                        netns.as_deref(),
                    )?),
                    label: a,
                    node: None,
                })
            })
            .collect();
    }
    let (name, ctx) = context(g, &path, cfg.as_ref())?;
    let endpoints = if g.endpoints.is_empty() {
        ctx.endpoints.clone()
    } else {
        g.endpoints.clone()
    };
    let endpoint = endpoints.first().ok_or_else(|| {
        anyhow!("context {name:?} has no endpoints: run `osctl config endpoint ADDRESS` or pass -e ADDRESS")
    })?;
    let identity = tls::Identity {
        crt: ctx.crt.0.as_str().to_string(),
        key: ctx.key.0.as_str().to_string(),
    };
    let tls_cfg = tls::client_config(ctx.ca.0.as_str(), &identity).map_err(|e| {
        anyhow!(
            "context {name:?} in {}: {}: generate a new one with `osctl gen config` or `osctl gen osconfig`",
            path.display(),
            crate::error_chain(&e)
        )
    })?;
    let netns = g.netns.as_deref().or(ctx.netns.as_deref());
    if let Some(n) = netns.filter(|n| g.netns.is_none() && !netns_exists(n)) {
        bail!(
            "context {name:?} in {} dials from network namespace {n:?}, which does not exist (was its cluster destroyed?): `osctl config context OTHER`, or remove the context",
            path.display()
        );
    }
    let client = MachineClient::new(channel(endpoint, tls_cfg, netns)?);
    let nodes = if g.nodes.is_empty() {
        ctx.nodes.clone()
    } else {
        g.nodes.clone()
    };
    if let Some(bad) = nodes.iter().find(|n| {
        n.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>()
            .is_err()
    }) {
        bail!("node {bad:?} is not a host name or an address");
    }
    if nodes.is_empty() {
        return Ok(vec![Target {
            label: endpoint.clone(),
            client,
            node: None,
        }]);
    }
    Ok(nodes
        .into_iter()
        .map(|n| Target {
            label: n.clone(),
            client: client.clone(),
            node: Some(n),
        })
        .collect())
}

fn channel(
    endpoint: &str,
    cfg: Arc<rustls::ClientConfig>,
    netns: Option<&str>,
) -> anyhow::Result<Channel> {
    tls::channel_in(endpoint, cfg, netns).map_err(|e| anyhow!("endpoint {endpoint:?}: {e}"))
}

/// Runs `f` against every target at once; results in target order.
pub async fn each<R, F, Fut>(targets: &[Target], f: F) -> Vec<(String, Result<R, tonic::Status>)>
where
    F: Fn(Target) -> Fut,
    Fut: std::future::Future<Output = Result<R, tonic::Status>>,
{
    let futs = targets.iter().map(|t| {
        let label = t.label.clone();
        let fut = f(t.clone());
        async move { (label, fut.await) }
    });
    futures::future::join_all(futs).await
}

/// The runtime a synchronous command drives its calls on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start a runtime")
}

/// Runs `call` on every target at once: a line per node that answered (`said`), one on
/// standard error per node that failed; an error when any failed.
pub fn on_every_node<R, F, Fut>(
    g: &Global,
    call: F,
    said: impl Fn(&R) -> String,
) -> anyhow::Result<()>
where
    F: Fn(Target) -> Fut,
    Fut: std::future::Future<Output = Result<R, tonic::Status>>,
{
    let rt = runtime()?;
    rt.block_on(async {
        let targets = targets(g)?;
        let results = each(&targets, call).await;
        let mut failed = 0;
        for (node, r) in &results {
            match r {
                Ok(r) => crate::output::stdout(&format!("{node}: {}\n", said(r))),
                Err(e) => {
                    failed += 1;
                    crate::output::stderr(&format!("{node}: error: {}", crate::output::explain(e)));
                }
            }
        }
        if failed > 0 {
            return Err(anyhow!("{failed} of {} nodes failed", results.len()));
        }
        Ok(())
    })
}
