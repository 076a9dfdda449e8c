//! `osctl image import`, `osctl image pull`, `osctl image rm` and `osctl cluster load`: an image archive streamed
//! to many nodes at once. The archive is read here first (names and image IDs only, the layers
//! skipped), so a bad archive fails before any node is dialed and a node that holds every
//! image already is skipped without a byte sent. Each node reads the archive again itself and
//! trusts nothing this side checked.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, anyhow};
use basalt_api::machine as pb;
use basalt_containerd::archive;

use crate::client::{self, Global, Target, on_every_node, runtime};
use crate::error_chain;
use crate::output::{self, Table};

/// The size of one message of the import stream (the node takes up to 4 MiB).
const CHUNK: usize = 1 << 20;

/// `osctl image import ARCHIVE`: to the targets of the global flags.
pub fn run(g: &Global, archive: &str, namespace: &str, force: bool) -> anyhow::Result<()> {
    let rt = runtime()?;
    // Standard input is read once into a file: every node is sent the archive at once.
    let (path, _spool) = source(archive)?;
    rt.block_on(async {
        let targets = client::targets(g)?;
        import(&targets, &path, namespace, force).await
    })
}

/// The archive's file: the one named, or standard input spooled to a temporary file.
fn source(archive: &str) -> anyhow::Result<(PathBuf, Option<tempfile::NamedTempFile>)> {
    if archive != "-" {
        return Ok((PathBuf::from(archive), None));
    }
    let mut tmp = tempfile::NamedTempFile::new().context("cannot make a temporary file")?;
    std::io::copy(&mut std::io::stdin().lock(), &mut tmp)
        .context("cannot read the archive from standard input")?;
    Ok((tmp.path().to_path_buf(), Some(tmp)))
}

/// (name, image ID) of every image in the archive at `path`.
async fn scan(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let contents = archive::read(tokio::io::BufReader::new(file), &mut archive::Skip)
        .await
        .map_err(|e| anyhow!("{}: {}", path.display(), error_chain(&e)))?;
    let images = archive::images(&contents)
        .map_err(|e| anyhow!("{}: {}", path.display(), error_chain(&e)))?;
    Ok(images
        .iter()
        .flat_map(|i| i.names.iter().map(|n| (n.clone(), i.config_digest.clone())))
        .collect())
}

/// One node's result: (name, image ID, what happened).
type Rows = Vec<(String, String, String)>;

/// Imports the archive at `path` into every target at once, printing a table of what each
/// node did; fails when any node failed (each node's error on a line of its own).
pub async fn import(
    targets: &[Target],
    path: &Path,
    namespace: &str,
    force: bool,
) -> anyhow::Result<()> {
    let wanted = scan(path).await?;
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    let sent: Vec<Arc<AtomicU64>> = targets.iter().map(|_| Arc::default()).collect();
    let ticker = progress(targets, &sent, size);
    let jobs = targets.iter().zip(&sent).map(|(t, sent)| {
        let (wanted, sent) = (&wanted, sent.clone());
        async move {
            let r = one(t, path, size, namespace, force, wanted, sent).await;
            (t.label.clone(), r)
        }
    });
    let results = futures::future::join_all(jobs).await;
    if let Some(t) = ticker {
        t.abort();
        eprint!("\r\x1b[K");
    }
    let many = targets.len() > 1;
    let mut table = Table::new(if many {
        &["NODE", "IMAGE", "ID", "RESULT"]
    } else {
        &["IMAGE", "ID", "RESULT"]
    });
    let mut failed = Vec::new();
    for (node, r) in results {
        match r {
            Ok(rows) => {
                for (name, id, what) in rows {
                    let id = short_id(&id);
                    let mut row = vec![name, id, what];
                    if many {
                        row.insert(0, node.clone());
                    }
                    table.row(row);
                }
            }
            Err(e) => failed.push(format!("{node}: error: {e}")),
        }
    }
    if !table.rows.is_empty() {
        output::stdout(&table.render());
    }
    for f in &failed {
        output::stderr(f);
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "{} of {} nodes failed",
            failed.len(),
            targets.len()
        ))
    }
}

/// A line on standard error, redrawn, with each node's share of the archive sent — when it is
/// a terminal.
fn progress(
    targets: &[Target],
    sent: &[Arc<AtomicU64>],
    size: u64,
) -> Option<tokio::task::JoinHandle<()>> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let labels: Vec<String> = targets.iter().map(|t| t.label.clone()).collect();
    let sent = sent.to_vec();
    Some(tokio::spawn(async move {
        loop {
            let line: Vec<String> = labels
                .iter()
                .zip(&sent)
                .map(|(l, s)| {
                    let pct = s.load(Ordering::Relaxed) * 100 / size.max(1);
                    format!("{l} {pct:>3}%")
                })
                .collect();
            eprint!(
                "\r\x1b[Kimporting {} ({}): {}",
                output::bytes(size),
                labels.len(),
                line.join("  ")
            );
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }))
}

async fn one(
    t: &Target,
    path: &Path,
    size: u64,
    namespace: &str,
    force: bool,
    wanted: &[(String, String)],
    sent: Arc<AtomicU64>,
) -> Result<Rows, String> {
    let explain = |s: tonic::Status| crate::output::explain(&s);
    if !force {
        let have = t
            .client
            .clone()
            .images(t.req(pb::ImagesRequest {
                namespace: namespace.to_string(),
            }))
            .await
            .map_err(explain)?
            .into_inner()
            .images;
        if wanted
            .iter()
            .all(|(n, id)| have.iter().any(|h| h.name == *n && h.id == *id))
        {
            sent.store(size, Ordering::Relaxed);
            return Ok(wanted
                .iter()
                .map(|(n, id)| (n.clone(), id.clone(), "skipped: the node has it".into()))
                .collect());
        }
    }
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let first = pb::ImageImportRequest {
        namespace: namespace.to_string(),
        size: i64::try_from(size).unwrap_or(i64::MAX),
        data: Vec::new(),
    };
    let chunks = futures::stream::unfold(Some(file), move |file| {
        let sent = sent.clone();
        async move {
            use tokio::io::AsyncReadExt as _;
            let mut file = file?;
            let mut buf = vec![0u8; CHUNK];
            // A read that fails ends the stream short: the node then finds the archive
            // truncated and imports nothing.
            let n = file.read(&mut buf).await.ok().filter(|n| *n > 0)?;
            buf.truncate(n);
            sent.fetch_add(n as u64, Ordering::Relaxed);
            Some((
                pb::ImageImportRequest {
                    namespace: String::new(),
                    size: 0,
                    data: buf,
                },
                Some(file),
            ))
        }
    });
    use futures::StreamExt as _;
    let stream = futures::stream::iter([first]).chain(chunks);
    let r = t
        .client
        .clone()
        .image_import(t.req(stream))
        .await
        .map_err(explain)?
        .into_inner();
    Ok(r.images
        .into_iter()
        .map(|i| (i.name, i.id, i.outcome))
        .collect())
}

/// An image ID as `docker images` shows it: the first 12 hex digits.
pub fn short_id(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

/// `osctl image rm NAME...`: on every target.
pub fn remove(g: &Global, names: Vec<String>, namespace: String) -> anyhow::Result<()> {
    let list = names.join(", ");
    on_every_node(
        g,
        |t| {
            let req = t.req(pb::ImageRemoveRequest {
                namespace: namespace.clone(),
                names: names.clone(),
            });
            async move { t.client.clone().image_remove(req).await }
        },
        |_| format!("removed {list}"),
    )
}

/// `osctl image pull REF`: on every target at once.
pub fn pull(g: &Global, image: String) -> anyhow::Result<()> {
    on_every_node(
        g,
        |t| {
            let req = t.req(pb::ImagePullRequest {
                image: image.clone(),
            });
            async move { t.client.clone().image_pull(req).await }
        },
        |r| format!("pulled {image} (ID {})", short_id(&r.get_ref().id)),
    )
}
