//! The images the rootfs ships for pods that not every node runs — CoreDNS, the local-path
//! provisioner and its helper (under [`REGISTRY_DIR`]) — served to containerd by a read-only
//! registry on the node's loopback, so a node pulls one when a pod there needs it instead of
//! importing them all at boot (under emulation the import was two thirds of a worker's start).
//!
//! The registry answers the distribution API's reads: `GET`/`HEAD` of
//! `/v2/<repository>/manifests/<tag or digest>` and `/v2/<repository>/blobs/<digest>`, with
//! containerd's `ns=<registry>` query naming the registry a mirror is asked for. The
//! registry's `hosts.toml` lists it first ([`crate::registry`]): what it does not ship it
//! answers 404, and containerd goes on to the next host. It runs as the `local-registry`
//! service, the `basalt-registry` personality of the node's binary, on [`LISTEN`] only.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use basalt_supervisor::process::ProcessSpec;
use basalt_supervisor::{Health, ServiceDef};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};

use crate::containers::ContainerError;

/// Where the served layouts are in the rootfs (one OCI image layout per directory).
pub const REGISTRY_DIR: &str = "/usr/share/basalt/registry";
/// Where the registry listens: the node's loopback only.
pub const LISTEN: &str = "127.0.0.1:3172";
/// The URL containerd's `hosts.toml` names it by.
pub const URL: &str = "http://127.0.0.1:3172";
/// The supervisor's id of the service.
pub const SERVICE: &str = "local-registry";
/// `argv[0]` of the node's binary that runs the registry.
pub const ARG0: &str = "basalt-registry";

/// Connections served at once; one more is closed as it comes (containerd opens a few per
/// pull).
const MAX_CONNECTIONS: usize = 64;

/// What a name points at: a manifest in one layout.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Manifest {
    layout: PathBuf,
    digest: String,
    media_type: String,
    size: u64,
}

/// The served images: registry host → repository → tag → manifest.
#[derive(Debug, Default)]
pub struct Catalog {
    repos: BTreeMap<String, BTreeMap<String, BTreeMap<String, Manifest>>>,
}

/// A reference's registry host, repository and tag, as containerd normalizes it
/// (`busybox:1` is `docker.io/library/busybox:1`); `None` for one with no tag.
fn split_reference(r: &str) -> Option<(String, String, String)> {
    let (first, rest) = r.split_once('/').unwrap_or(("", r));
    let (host, path) = if first.contains('.') || first.contains(':') || first == "localhost" {
        (first.to_string(), rest.to_string())
    } else if r.contains('/') {
        ("docker.io".to_string(), r.to_string())
    } else {
        ("docker.io".to_string(), format!("library/{r}"))
    };
    let (repo, tag) = path.rsplit_once(':')?;
    if repo.is_empty() || tag.is_empty() || tag.contains('/') {
        return None;
    }
    Some((host, repo.to_string(), tag.to_string()))
}

impl Catalog {
    /// Reads every layout's `index.json` under `dir`; a directory that is missing is an empty
    /// catalog.
    pub fn load(dir: &Path) -> Result<Catalog, ContainerError> {
        let mut out = Catalog::default();
        let entries = match std::fs::read_dir(dir) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(source) => {
                return Err(ContainerError::Read {
                    path: dir.to_path_buf(),
                    source,
                });
            }
        };
        let mut layouts: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        layouts.sort();
        for layout in layouts {
            let path = layout.join("index.json");
            let text = std::fs::read(&path).map_err(|source| ContainerError::Read {
                path: path.clone(),
                source,
            })?;
            let index = crate::containers::json(&path, &text)?;
            for m in index["manifests"].as_array().into_iter().flatten() {
                let Some(name) = m["annotations"]["org.opencontainers.image.ref.name"].as_str()
                else {
                    continue;
                };
                let bad = |why: &str| ContainerError::Layout {
                    path: path.clone(),
                    message: format!("{name}: {why}"),
                };
                let (host, repo, tag) =
                    split_reference(name).ok_or_else(|| bad("not a name with a tag"))?;
                let digest = m["digest"].as_str().unwrap_or_default();
                if blob_name(digest).is_none() {
                    return Err(bad("its digest is not sha256:<64 hex digits>"));
                }
                let manifest = Manifest {
                    layout: layout.clone(),
                    digest: digest.to_string(),
                    media_type: m["mediaType"].as_str().unwrap_or_default().to_string(),
                    size: m["size"].as_u64().ok_or_else(|| bad("no size"))?,
                };
                out.repos
                    .entry(host)
                    .or_default()
                    .entry(repo)
                    .or_default()
                    .insert(tag, manifest);
            }
        }
        Ok(out)
    }

    /// The registry hosts it serves images of.
    pub fn registries(&self) -> BTreeSet<String> {
        self.repos.keys().cloned().collect()
    }

    /// The registry and tags of `repo` in registry `ns` (any registry when containerd names
    /// none).
    fn repo(&self, ns: Option<&str>, repo: &str) -> Option<(&str, &BTreeMap<String, Manifest>)> {
        match ns {
            Some(ns) => self
                .repos
                .get_key_value(ns)
                .and_then(|(host, r)| Some((host.as_str(), r.get(repo)?))),
            None => self
                .repos
                .iter()
                .find_map(|(host, r)| Some((host.as_str(), r.get(repo)?))),
        }
    }

    /// What one request asks for.
    fn lookup(&self, ns: Option<&str>, path: &str) -> Result<Found, Missing> {
        let rest = path.strip_prefix("/v2/").ok_or(Missing::Route)?;
        if rest.is_empty() {
            return Ok(Found::Root);
        }
        if let Some((repo, reference)) = rest.rsplit_once("/manifests/") {
            let (host, tags) = self.repo(ns, repo).ok_or(Missing::Name)?;
            let m = match tags.get(reference) {
                Some(m) => m,
                None => tags
                    .values()
                    .find(|m| m.digest == reference)
                    .ok_or(Missing::Manifest)?,
            };
            return Ok(Found::Blob {
                file: m
                    .layout
                    .join(blob_name(&m.digest).ok_or(Missing::Manifest)?),
                digest: m.digest.clone(),
                media_type: m.media_type.clone(),
                name: tags
                    .contains_key(reference)
                    .then(|| format!("{host}/{repo}:{reference}")),
            });
        }
        if let Some((repo, digest)) = rest.rsplit_once("/blobs/") {
            let (_, tags) = self.repo(ns, repo).ok_or(Missing::Name)?;
            let name = blob_name(digest).ok_or(Missing::Blob)?;
            // A blob of one of the repository's layouts (a digest names nothing else: it is
            // checked to be hex before it becomes a path).
            let mut layouts: Vec<&Path> = tags.values().map(|m| m.layout.as_path()).collect();
            layouts.dedup();
            let file = layouts
                .iter()
                .map(|l| l.join(&name))
                .find(|f| f.is_file())
                .ok_or(Missing::Blob)?;
            return Ok(Found::Blob {
                file,
                digest: digest.to_string(),
                media_type: "application/octet-stream".into(),
                name: None,
            });
        }
        Err(Missing::Route)
    }
}

/// `blobs/sha256/<hex>` for a well-formed sha256 digest.
fn blob_name(digest: &str) -> Option<String> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then(|| format!("blobs/sha256/{hex}"))
}

#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// `/v2/`: the API is here.
    Root,
    Blob {
        file: PathBuf,
        digest: String,
        media_type: String,
        /// The name a manifest was asked for by, when it was by tag (logged).
        name: Option<String>,
    },
}

/// Why a request finds nothing: the distribution API's error codes.
#[derive(Debug, PartialEq, Eq)]
enum Missing {
    Route,
    Name,
    Manifest,
    Blob,
}

impl Missing {
    fn code(&self) -> (&'static str, &'static str) {
        match self {
            Missing::Route => ("UNSUPPORTED", "this registry serves only /v2/ reads"),
            Missing::Name => ("NAME_UNKNOWN", "no such repository on this node"),
            Missing::Manifest => ("MANIFEST_UNKNOWN", "no such tag or manifest on this node"),
            Missing::Blob => ("BLOB_UNKNOWN", "no such blob in this repository"),
        }
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

fn full(status: http::StatusCode, content_type: &str, body: Vec<u8>) -> http::Response<Body> {
    let mut r = http::Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

/// containerd's `ns` query parameter: the registry a mirror is asked on behalf of.
fn ns_of(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("ns="))
        .map(|v| v.replace("%3A", ":").replace("%3a", ":"))
}

/// The answer to one request.
async fn answer<B>(catalog: &Catalog, req: &http::Request<B>) -> http::Response<Body> {
    use http::{Method, StatusCode, header};
    let head = req.method() == Method::HEAD;
    if !head && req.method() != Method::GET {
        let mut r = full(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            b"this registry is read-only\n".to_vec(),
        );
        r.headers_mut()
            .insert(header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let ns = ns_of(req.uri().query());
    let found = match catalog.lookup(ns.as_deref(), req.uri().path()) {
        Ok(f) => f,
        Err(m) => {
            let (code, message) = m.code();
            let body = serde_json::json!({ "errors": [ { "code": code, "message": message } ] });
            return full(
                StatusCode::NOT_FOUND,
                "application/json",
                serde_json::to_vec(&body).unwrap_or_default(),
            );
        }
    };
    let (file, digest, media_type, name) = match found {
        Found::Root => return full(StatusCode::OK, "application/json", b"{}".to_vec()),
        Found::Blob {
            file,
            digest,
            media_type,
            name,
        } => (file, digest, media_type, name),
    };
    let open = async {
        let f = tokio::fs::File::open(&file).await?;
        let size = f.metadata().await?.len();
        Ok::<_, std::io::Error>((f, size))
    };
    let (opened, size) = match open.await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "cannot read a served blob");
            return full(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("cannot read {}\n", file.display()).into_bytes(),
            );
        }
    };
    // A pull starts by resolving its name (containerd: HEAD by tag, then GETs by digest).
    if let Some(name) = name {
        tracing::info!("{name} resolved to {digest}");
    }
    let body: Body = if head {
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed()
    } else {
        use futures::StreamExt as _;
        let stream = tokio_util::io::ReaderStream::with_capacity(opened, 256 * 1024)
            .map(|chunk| chunk.map(hyper::body::Frame::data));
        BodyExt::boxed(StreamBody::new(stream))
    };
    let mut r = http::Response::new(body);
    let h = r.headers_mut();
    if let Ok(v) = http::HeaderValue::from_str(&media_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = http::HeaderValue::from_str(&digest) {
        h.insert("docker-content-digest", v);
    }
    h.insert(header::CONTENT_LENGTH, http::HeaderValue::from(size));
    r
}

/// Serves `catalog` on `listener` until the listener fails for good.
pub async fn serve(listener: tokio::net::TcpListener, catalog: Arc<Catalog>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of descriptors, most likely: wait for some to close.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!("closed a connection: {MAX_CONNECTIONS} open already");
            continue;
        };
        let catalog = catalog.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let catalog = catalog.clone();
                    async move { Ok::<_, Infallible>(answer(&catalog, &req).await) }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .max_buf_size(16 * 1024)
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// The `local-registry` service: the node's binary as [`ARG0`], with no capability.
pub fn service() -> ServiceDef {
    let process = ProcessSpec {
        program: "/sbin/init".into(),
        arg0: Some(ARG0.into()),
        args: vec![
            "--listen".into(),
            LISTEN.into(),
            "--dir".into(),
            REGISTRY_DIR.into(),
        ],
        keep_caps: Some(Vec::new()),
        ..ProcessSpec::default()
    };
    let mut def = ServiceDef::new(SERVICE, process);
    def.stop_timeout = Duration::from_secs(5);
    def.health = Some(Health {
        check: Arc::new(|| {
            Box::pin(async {
                tokio::net::TcpStream::connect(LISTEN)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("{LISTEN}: {e}").into())
            })
        }),
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(2),
    });
    def
}

/// The registry process (`basalt-registry --listen ADDR --dir DIR`): exits only when it
/// cannot start.
pub fn run(args: &[String]) -> ! {
    // Its stdout is its service log.
    let _ = tracing_subscriber::fmt()
        .with_target(false)
        .with_level(false)
        .without_time()
        .with_ansi(false)
        .with_writer(std::io::stdout)
        .try_init();
    let mut listen = LISTEN.to_string();
    let mut dir = REGISTRY_DIR.to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let slot = match a.as_str() {
            "--listen" => &mut listen,
            "--dir" => &mut dir,
            other => {
                tracing::error!("unknown argument {other:?} (known: --listen ADDR, --dir DIR)");
                std::process::exit(2);
            }
        };
        match it.next() {
            Some(v) => *slot = v.clone(),
            None => {
                tracing::error!("{a} needs a value");
                std::process::exit(2);
            }
        }
    }
    let catalog = match Catalog::load(Path::new(&dir)) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %basalt_sys::error_chain(&e), "registry not started");
            std::process::exit(1);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "registry not started: no runtime");
            std::process::exit(1);
        }
    };
    rt.block_on(async {
        let listener = match tokio::net::TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "registry not started: cannot listen on {listen}");
                std::process::exit(1);
            }
        };
        let names: Vec<String> = catalog
            .repos
            .iter()
            .flat_map(|(host, repos)| {
                repos.iter().flat_map(move |(repo, tags)| {
                    tags.keys().map(move |t| format!("{host}/{repo}:{t}"))
                })
            })
            .collect();
        tracing::info!("serving {} on {listen}", names.join(", "));
        serve(listener, Arc::new(catalog)).await;
    });
    std::process::exit(1)
}

#[cfg(test)]
mod tests;
