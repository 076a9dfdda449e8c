//! `osctl upgrade` and `osctl rollback`: an installed node's A/B slots.
//!
//! The bundle is checked here first (`basalt_disk::bundle::verify`), so a bad file fails
//! before any node is dialed; each node checks it again itself. Nodes are upgraded one at a
//! time: each node drains itself (cordon, evictions that honour PodDisruptionBudgets) before
//! its reboot, and the next starts only when the last came back healthy on the new version
//! (its trial boot confirmed, which on a Kubernetes node means its `Node` Ready and uncordoned)
//! and, after a control plane, etcd healthy with every member started and a leader. The first
//! failure stops the run, naming the node and what happened.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use basalt_api::machine as pb;
use clap::Args;

use crate::client::{self, Global, Target, on_every_node, runtime};
use crate::output;

/// The size of one message of the upgrade stream (the node takes up to 4 MiB).
const CHUNK: usize = 1 << 20;

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// The upgrade bundle (`osctl image bundle` makes it): a file, streamed to each node, or
    /// an http:// or https:// URL each node fetches itself.
    #[arg(long)]
    image: String,
    /// With an https URL: the CA (a PEM file) the server's certificate is checked against.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// With a URL: the sha256 (hex) the bundle must have; a node refuses any other.
    #[arg(long)]
    sha256: Option<String>,
    /// Write the inactive slot and make it the next boot, but do not reboot.
    #[arg(long)]
    stage: bool,
    /// Install a bundle older than the running version.
    #[arg(long)]
    allow_downgrade: bool,
    /// How long the new boot has to become healthy before the node goes back by itself
    /// (`90s`, `10m`).
    #[arg(long, default_value = "10m", value_parser = crate::api_cmd::parse_duration)]
    trial_timeout: u32,
}

/// Where the bundle comes from.
enum Bundle {
    /// A file here, checked first, then streamed to each node.
    File { path: PathBuf, size: u64 },
    /// A URL each node fetches.
    Url {
        url: String,
        ca_pem: String,
        sha256: String,
    },
}

impl Bundle {
    fn from_args(a: &UpgradeArgs) -> anyhow::Result<Bundle> {
        let is_url = a.image.starts_with("http://") || a.image.starts_with("https://");
        if !is_url {
            if a.ca.is_some() || a.sha256.is_some() {
                anyhow::bail!(
                    "--ca and --sha256 are for a bundle a node fetches from a URL; {} is a file (checked here)",
                    a.image
                );
            }
            let path = PathBuf::from(&a.image);
            basalt_disk::bundle::verify(&path)
                .map_err(|e| anyhow!("{}: {}", path.display(), crate::error_chain(&e)))?;
            let size = std::fs::metadata(&path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .len();
            return Ok(Bundle::File { path, size });
        }
        let ca_pem = match &a.ca {
            Some(p) => std::fs::read_to_string(p)
                .with_context(|| format!("--ca: cannot read {}", p.display()))?,
            None if a.image.starts_with("https://") => anyhow::bail!(
                "{}: an https URL needs --ca (the CA, PEM, the server's certificate is checked against: a node has no public CA bundle)",
                a.image
            ),
            None => String::new(),
        };
        let sha256 = a.sha256.clone().unwrap_or_default().to_ascii_lowercase();
        if !sha256.is_empty()
            && (sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            anyhow::bail!("--sha256 {sha256:?}: 64 hex digits");
        }
        Ok(Bundle::Url {
            url: a.image.clone(),
            ca_pem,
            sha256,
        })
    }
}

/// `osctl upgrade --image BUNDLE`.
pub fn upgrade(g: &Global, a: UpgradeArgs) -> anyhow::Result<()> {
    let bundle = Bundle::from_args(&a)?;
    let rt = runtime()?;
    rt.block_on(async {
        let targets = client::targets(g)?;
        for t in &targets {
            let r = match &bundle {
                Bundle::File { path, size } => send(t, &a, path, *size).await,
                Bundle::Url {
                    url,
                    ca_pem,
                    sha256,
                } => {
                    let first = pb::UpgradeRequest {
                        stage: a.stage,
                        allow_downgrade: a.allow_downgrade,
                        trial_timeout_seconds: a.trial_timeout,
                        url: url.clone(),
                        url_ca_pem: ca_pem.clone(),
                        sha256: sha256.clone(),
                        ..Default::default()
                    };
                    t.client
                        .clone()
                        .upgrade(t.req(futures::stream::iter([first])))
                        .await
                        .map(tonic::Response::into_inner)
                }
            }
            .map_err(|e| anyhow!("{}: {}", t.label, crate::output::explain(&e)))?;
            let to = r.to_version.clone();
            output::stdout(&format!("{}: {}\n", t.label, r.summary));
            if a.stage {
                continue;
            }
            // The drain (up to 5 min), the reboot, the trial.
            let wait = Duration::from_secs(u64::from(a.trial_timeout)) + Duration::from_secs(600);
            settle(t, &r.from_version, &to, wait).await?;
            output::stdout(&format!("{}: running {to}, confirmed\n", t.label));
            if let Some(etcd) = etcd_settled(t, Duration::from_secs(600)).await? {
                output::stdout(&format!("{}: etcd healthy: {etcd}\n", t.label));
            }
        }
        Ok(())
    })
}

async fn send(
    t: &Target,
    a: &UpgradeArgs,
    path: &std::path::Path,
    size: u64,
) -> Result<pb::UpgradeResponse, tonic::Status> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| tonic::Status::invalid_argument(format!("{}: {e}", path.display())))?;
    let first = pb::UpgradeRequest {
        size,
        stage: a.stage,
        allow_downgrade: a.allow_downgrade,
        trial_timeout_seconds: a.trial_timeout,
        ..Default::default()
    };
    let chunks = futures::stream::unfold(Some(file), |file| async move {
        use tokio::io::AsyncReadExt as _;
        let mut file = file?;
        let mut buf = vec![0u8; CHUNK];
        // A read that fails ends the stream short: the node then refuses it as truncated.
        let n = file.read(&mut buf).await.ok().filter(|n| *n > 0)?;
        buf.truncate(n);
        Some((
            pb::UpgradeRequest {
                data: buf,
                ..Default::default()
            },
            Some(file),
        ))
    });
    use futures::StreamExt as _;
    let stream = futures::stream::iter([first]).chain(chunks);
    Ok(t.client.clone().upgrade(t.req(stream)).await?.into_inner())
}

/// Waits for the node to answer again after its reboot: on `to` with the trial confirmed
/// (done), or on `from` with no trial pending (it went back: an error).
async fn settle(t: &Target, from: &str, to: &str, wait: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    // The node is rebooting: give it time to go down before asking.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut last = String::from("no answer yet");
    while start.elapsed() < wait {
        if let Some(why) = drain_failed(t).await {
            return Err(anyhow!(
                "{}: the node did not drain, so it did not reboot: {why} (it runs {from}, uncordoned; {to} is staged for its next reboot)",
                t.label
            ));
        }
        match t.client.clone().version(t.req(pb::VersionRequest {})).await {
            Ok(v) => {
                let v = v.into_inner();
                let pending = v
                    .slots
                    .iter()
                    .any(|s| s.state == "next" || s.state == "trial");
                if v.tag == to && v.mode == "running" && !pending {
                    return Ok(());
                }
                if v.tag == from && !pending && start.elapsed() > Duration::from_secs(20) {
                    return Err(anyhow!(
                        "{}: the node is back on {from}: {to} did not come up healthy (osctl logs init on the node says why)",
                        t.label
                    ));
                }
                last = format!("running {} (slot {}), mode {}", v.tag, v.slot, v.mode);
            }
            Err(e) => last = crate::output::explain(&e),
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    Err(anyhow!(
        "{}: not back on {to} within {} s (last: {last})",
        t.label,
        wait.as_secs()
    ))
}

/// The failed step of the node's upgrade sequence (its drain), if that is how it ended.
async fn drain_failed(t: &Target) -> Option<String> {
    let r = t
        .client
        .clone()
        .get(t.req(pb::GetRequest {
            r#type: "Sequence".into(),
            id: "upgrade".into(),
            namespace: "runtime".into(),
        }))
        .await
        .ok()?
        .into_inner();
    let seq: serde_json::Value = serde_json::from_str(&r.spec_json).ok()?;
    if seq["state"] != "failed" {
        return None;
    }
    seq["steps"]
        .as_array()?
        .iter()
        .find(|s| s["state"] == "failed")
        .map(|s| {
            format!(
                "{}: {}",
                s["name"].as_str().unwrap_or("?"),
                s["message"].as_str().unwrap_or("")
            )
        })
}

/// After a node is back: on a control plane, waits until its etcd check passes (every member
/// started, a leader) and says what it found; `None` for a node that runs no etcd.
async fn etcd_settled(t: &Target, wait: Duration) -> anyhow::Result<Option<String>> {
    let start = Instant::now();
    let mut last = String::from("no answer yet");
    while start.elapsed() < wait {
        match t
            .client
            .clone()
            .cluster_health(t.req(pb::ClusterHealthRequest {}))
            .await
        {
            Ok(r) => {
                if let Some(c) = r.get_ref().checks.iter().find(|c| c.name == "etcd") {
                    if c.ok {
                        return Ok(Some(c.message.clone()));
                    }
                    last = c.message.clone();
                }
            }
            // A worker, or a node without Kubernetes: no etcd to wait for.
            Err(e) if e.code() == tonic::Code::FailedPrecondition => return Ok(None),
            Err(e) => last = crate::output::explain(&e),
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    Err(anyhow!(
        "{}: etcd not healthy within {} s after the upgrade (last: {last}); the other nodes were not upgraded",
        t.label,
        wait.as_secs()
    ))
}

/// `osctl rollback`: every target boots its other slot.
pub fn rollback(g: &Global) -> anyhow::Result<()> {
    on_every_node(
        g,
        |t| {
            let req = t.req(pb::RollbackRequest {});
            async move { t.client.clone().rollback(req).await }
        },
        |r| r.get_ref().summary.clone(),
    )
}
