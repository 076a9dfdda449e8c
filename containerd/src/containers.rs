//! Images and containers through containerd's API: importing the OCI image layouts shipped in
//! the rootfs (no registry is reachable), and running a container to completion.
//!
//! Import is what containerd's own clients do: write each blob to the content store (labelled
//! so containerd's garbage collector keeps the graph image → manifest → config/layers →
//! snapshot), unpack the layers into committed snapshots named by chain ID, then create the
//! image record. Everything is written under a lease, so nothing is collected half-way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::archive::digest;

use crate::{Client, archive, proto};

pub const SNAPSHOTTER: &str = "overlayfs";
/// Where OCI image layouts ship in the rootfs.
pub const IMAGES_DIR: &str = "/usr/share/basalt/images";

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Layout { path: PathBuf, message: String },
    /// containerd refused: its message, once (a `tonic::Status` prints its code and message
    /// both, in Go's words).
    #[error("containerd: {what}: {}", .status.message())]
    Api { what: String, status: tonic::Status },
    #[error("image {0:?}: {1}")]
    Image(String, String),
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
}

fn api(what: impl Into<String>) -> impl FnOnce(tonic::Status) -> ContainerError {
    let what = what.into();
    move |status| ContainerError::Api { what, status }
}

pub(crate) fn json(path: &Path, data: &[u8]) -> Result<serde_json::Value, ContainerError> {
    serde_json::from_slice(data).map_err(|e| ContainerError::Layout {
        path: path.to_path_buf(),
        message: format!("not JSON: {e}"),
    })
}

/// The image references an OCI layout directory names (its index's `ref.name` annotations).
pub fn layout_references(dir: &Path) -> Result<Vec<String>, ContainerError> {
    let p = dir.join("index.json");
    let data = std::fs::read(&p).map_err(|source| ContainerError::Read {
        path: p.clone(),
        source,
    })?;
    let index = json(&p, &data)?;
    Ok(index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .map(str::to_string)
        .collect())
}

/// The index annotation naming the containerd namespaces a layout is imported into,
/// comma-separated (default: [`crate::NAMESPACE`]).
pub const NAMESPACE_ANNOTATION: &str = "io.basalt.containerd.namespace";

/// Chain IDs of a layer stack, from its diff IDs (OCI image spec).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => digest(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

fn desc(v: &serde_json::Value) -> proto::Descriptor {
    proto::Descriptor {
        media_type: v["mediaType"].as_str().unwrap_or_default().to_string(),
        digest: v["digest"].as_str().unwrap_or_default().to_string(),
        size: v["size"].as_i64().unwrap_or(0),
    }
}

impl Client {
    pub(crate) async fn exists(&self, digest: &str) -> Result<bool, ContainerError> {
        match self
            .call::<_, proto::InfoResponse>(
                "/containerd.services.content.v1.Content/Info",
                Some(self.namespace()),
                proto::InfoRequest {
                    digest: digest.into(),
                },
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(api(format!("content info {digest}"))(s)),
        }
    }

    /// Writes one blob held in memory (a manifest, a config), with GC labels.
    async fn write_blob(
        &self,
        data: &[u8],
        labels: HashMap<String, String>,
    ) -> Result<String, ContainerError> {
        let d = digest(data);
        let chunks: Vec<Vec<u8>> = data.chunks(1 << 20).map(<[u8]>::to_vec).collect();
        self.write_content(&d, data.len() as u64, futures::stream::iter(chunks), labels)
            .await?;
        Ok(d)
    }

    /// Writes one blob from a file of the layout, 1 MiB at a time: a layer is never held in
    /// memory whole, and its digest is checked by containerd (the `expected` of the write),
    /// not computed here too.
    async fn write_file_blob(
        &self,
        path: &Path,
        d: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), ContainerError> {
        let read_err = |source| ContainerError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let total = file.metadata().map_err(read_err)?.len();
        let chunks = futures::stream::unfold(Some(file), |file| async move {
            use std::io::Read as _;
            let mut file = file?;
            let mut buf = vec![0u8; 1 << 20];
            // A read that fails ends the stream short: containerd then refuses the commit
            // (fewer bytes than `total`), and the import fails with its reason.
            let n = file.read(&mut buf).ok().filter(|n| *n > 0)?;
            buf.truncate(n);
            Some((buf, Some(file)))
        });
        self.write_content(d, total, chunks, labels).await
    }

    /// Streams content into the store as `d` (skipped when the store has it), with GC labels
    /// on the commit.
    async fn write_content<S>(
        &self,
        d: &str,
        total: u64,
        chunks: S,
        labels: HashMap<String, String>,
    ) -> Result<(), ContainerError>
    where
        S: futures::Stream<Item = Vec<u8>> + Send + 'static,
    {
        if self.exists(d).await? {
            return Ok(());
        }
        self.write_stream(&format!("basalt-import-{d}"), d, total, chunks, labels)
            .await
            .map(|_| ())
    }

    /// Streams content into the store under the ingest `ref`, and commits it: as `expected`
    /// when that is given (containerd checks it), else as whatever it hashes to. Returns the
    /// digest committed (empty when no `expected` was given and the store had the content
    /// already: that is not an error). A write that fails is
    /// aborted, so no half-written ingest stays behind.
    async fn write_stream<S>(
        &self,
        r#ref: &str,
        expected: &str,
        total: u64,
        chunks: S,
        labels: HashMap<String, String>,
    ) -> Result<String, ContainerError>
    where
        S: futures::Stream<Item = Vec<u8>> + Send + 'static,
    {
        let result = self
            .write_stream_once(r#ref, expected, total, chunks, labels)
            .await;
        if result.is_err() {
            let _ = self
                .call::<_, proto::Empty>(
                    "/containerd.services.content.v1.Content/Abort",
                    Some(self.namespace()),
                    proto::IdRequest { id: r#ref.into() },
                )
                .await;
        }
        result
    }

    async fn write_stream_once<S>(
        &self,
        r#ref: &str,
        expected: &str,
        total: u64,
        chunks: S,
        labels: HashMap<String, String>,
    ) -> Result<String, ContainerError>
    where
        S: futures::Stream<Item = Vec<u8>> + Send + 'static,
    {
        use futures::StreamExt as _;
        let what = if expected.is_empty() {
            format!("content write {ref}")
        } else {
            format!("content write {expected}")
        };
        let total = i64::try_from(total).unwrap_or(i64::MAX);
        let (r1, e1) = (r#ref.to_string(), expected.to_string());
        let writes = chunks.scan(0i64, move |off, data| {
            let req = proto::WriteContentRequest {
                action: 1,
                r#ref: r1.clone(),
                total,
                expected: e1.clone(),
                offset: *off,
                labels: HashMap::new(),
                data,
            };
            *off += req.data.len() as i64;
            futures::future::ready(Some(req))
        });
        let commit = proto::WriteContentRequest {
            action: 2,
            r#ref: r#ref.to_string(),
            total,
            expected: expected.to_string(),
            offset: total,
            data: Vec::new(),
            labels,
        };
        let reqs = writes.chain(futures::stream::iter([commit]));
        let mut grpc = tonic::client::Grpc::new(self.channel());
        grpc.ready()
            .await
            .map_err(|e| api("content write")(tonic::Status::unavailable(e.to_string())))?;
        let mut r = tonic::Request::new(reqs);
        // A large layer on a slow machine: the same allowance as its unpacking.
        r.set_timeout(Duration::from_secs(
            60 + 2 * (total.max(0) as u64) / (1 << 20),
        ));
        if let Ok(ns) = self.namespace().parse() {
            r.metadata_mut().insert("containerd-namespace", ns);
        }
        if let Some(l) = self.lease()
            && let Ok(v) = l.parse()
        {
            r.metadata_mut().insert("containerd-lease", v);
        }
        let codec = tonic_prost::ProstCodec::<
            proto::WriteContentRequest,
            proto::WriteContentResponse,
        >::default();
        let already = |s: &tonic::Status| s.code() == tonic::Code::AlreadyExists;
        let mut stream = match grpc
            .streaming(
                r,
                http::uri::PathAndQuery::from_static(
                    "/containerd.services.content.v1.Content/Write",
                ),
                codec,
            )
            .await
        {
            Ok(s) => s.into_inner(),
            Err(s) if already(&s) && !expected.is_empty() => return Ok(expected.to_string()),
            Err(s) => return Err(api(what)(s)),
        };
        let mut committed = expected.to_string();
        loop {
            match stream.message().await {
                Ok(Some(resp)) => {
                    if resp.action == 2 && !resp.digest.is_empty() {
                        if !expected.is_empty() && resp.digest != expected {
                            return Err(ContainerError::Image(
                                expected.to_string(),
                                format!("containerd committed {} instead", resp.digest),
                            ));
                        }
                        committed = resp.digest;
                    }
                }
                Ok(None) => break,
                // The store has this content already: committed as what it hashes to, which
                // a caller that gave no `expected` computed itself.
                Err(s) if already(&s) => break,
                Err(s) => return Err(api(what)(s)),
            }
        }
        Ok(committed)
    }

    async fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ContainerError> {
        let mut grpc = tonic::client::Grpc::new(self.channel());
        grpc.ready()
            .await
            .map_err(|e| api("content read")(tonic::Status::unavailable(e.to_string())))?;
        let mut r = tonic::Request::new(proto::ReadContentRequest {
            digest: digest.into(),
        });
        if let Ok(ns) = self.namespace().parse() {
            r.metadata_mut().insert("containerd-namespace", ns);
        }
        let codec =
            tonic_prost::ProstCodec::<proto::ReadContentRequest, proto::ReadContentResponse>::default();
        let mut stream = grpc
            .server_streaming(
                r,
                http::uri::PathAndQuery::from_static(
                    "/containerd.services.content.v1.Content/Read",
                ),
                codec,
            )
            .await
            .map_err(api(format!("content read {digest}")))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(m) = stream
            .message()
            .await
            .map_err(api(format!("content read {digest}")))?
        {
            out.extend_from_slice(&m.data);
        }
        Ok(out)
    }

    pub(crate) async fn snapshot_exists(&self, key: &str) -> Result<bool, ContainerError> {
        match self
            .call::<_, proto::InfoResponse>(
                "/containerd.services.snapshots.v1.Snapshots/Stat",
                Some(self.namespace()),
                proto::SnapshotKey {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.into(),
                },
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(api(format!("snapshot stat {key}"))(s)),
        }
    }

    pub(crate) async fn prepare(
        &self,
        key: &str,
        parent: &str,
    ) -> Result<Vec<proto::Mount>, ContainerError> {
        let r: proto::PrepareSnapshotResponse = self
            .call(
                "/containerd.services.snapshots.v1.Snapshots/Prepare",
                Some(self.namespace()),
                proto::PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.into(),
                    parent: parent.into(),
                },
            )
            .await
            .map_err(api(format!("snapshot prepare {key}")))?;
        Ok(r.mounts)
    }

    async fn empty_call<Req: prost::Message + Send + Sync + 'static>(
        &self,
        path: &'static str,
        what: String,
        req: Req,
    ) -> Result<(), ContainerError> {
        self.call::<_, proto::Empty>(path, Some(self.namespace()), req)
            .await
            .map(|_| ())
            .map_err(api(what))
    }

    /// Imports one OCI image layout directory; returns the references it created or moved
    /// (a name that already points at the layout's manifest is left as it is; one that points
    /// at another — the image changed under the same tag — is imported and moved).
    pub async fn import_layout(&self, dir: &Path) -> Result<Vec<String>, ContainerError> {
        let read = |rel: &str| {
            let p = dir.join(rel);
            std::fs::read(&p).map_err(|source| ContainerError::Read { path: p, source })
        };
        let blob = |d: &str| read(&format!("blobs/sha256/{}", d.trim_start_matches("sha256:")));
        let index_path = dir.join("index.json");
        let index = json(&index_path, &read("index.json")?)?;
        let mut created = Vec::new();
        for m in index["manifests"].as_array().into_iter().flatten() {
            let Some(name) = m["annotations"]["org.opencontainers.image.ref.name"].as_str() else {
                continue;
            };
            let mdesc = desc(m);
            let exists = self
                .call::<_, proto::ImageMessage>(
                    "/containerd.services.images.v1.Images/Get",
                    Some(self.namespace()),
                    proto::NameRequest { name: name.into() },
                )
                .await;
            match exists {
                Ok(have)
                    if have
                        .image
                        .as_ref()
                        .and_then(|i| i.target.as_ref())
                        .is_some_and(|t| t.digest == mdesc.digest) =>
                {
                    continue;
                }
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(api(format!("image get {name}"))(s)),
            }
            let manifest_bytes = blob(&mdesc.digest)?;
            let manifest = json(&index_path, &manifest_bytes)?;
            let cdesc = desc(&manifest["config"]);
            let config_bytes = blob(&cdesc.digest)?;
            let config = json(&index_path, &config_bytes)?;
            let layers: Vec<proto::Descriptor> = manifest["layers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(desc)
                .collect();
            let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            for l in &layers {
                let path = dir.join(format!(
                    "blobs/sha256/{}",
                    l.digest.trim_start_matches("sha256:")
                ));
                self.write_file_blob(&path, &l.digest, HashMap::new())
                    .await?;
            }
            self.unpack(name, &manifest_bytes, &config_bytes, &layers, &diff_ids)
                .await?;
            self.tag(&[name.to_string()], &mdesc).await?;
            created.push(name.to_string());
        }
        Ok(created)
    }
}

/// What an import did to one image name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    /// The name pointed at another image before.
    Updated,
    /// The name already pointed at this image.
    Unchanged,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
        }
    }
}

/// Media types of layers containerd's differ unpacks.
fn unpackable(media_type: &str) -> bool {
    [".tar", ".tar+gzip", ".tar.gzip", ".tar+zstd", ".tar.zstd"]
        .iter()
        .any(|s| media_type.ends_with(s))
}

impl Client {
    /// Makes an image of content already in the store (its layers) and the manifest and
    /// config given: writes those with the labels that keep the graph from containerd's
    /// garbage collector and unpacks every layer into a snapshot named by its chain ID,
    /// checking what it unpacks to against the config's diff IDs. [`Client::tag`] names it.
    async fn unpack(
        &self,
        label: &str,
        manifest: &[u8],
        config: &[u8],
        layers: &[proto::Descriptor],
        diff_ids: &[String],
    ) -> Result<(), ContainerError> {
        let label = label.to_string();
        if diff_ids.len() != layers.len() {
            return Err(ContainerError::Image(
                label,
                format!(
                    "the config lists {} diff_ids for {} layers",
                    diff_ids.len(),
                    layers.len()
                ),
            ));
        }
        if let Some(l) = layers.iter().find(|l| !unpackable(&l.media_type)) {
            return Err(ContainerError::Image(
                label,
                format!(
                    "layer {} has media type {:?}, which containerd cannot unpack",
                    l.digest, l.media_type
                ),
            ));
        }
        let chains = chain_ids(diff_ids);
        let top = chains.last().cloned().unwrap_or_default();
        let mut cl = HashMap::new();
        cl.insert(
            format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"),
            top.clone(),
        );
        let config_digest = self.write_blob(config, cl).await?;
        let mut ml = HashMap::new();
        ml.insert(
            "containerd.io/gc.ref.content.config".to_string(),
            config_digest,
        );
        for (i, l) in layers.iter().enumerate() {
            ml.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                l.digest.clone(),
            );
        }
        self.write_blob(manifest, ml).await?;

        // Unpack: one committed snapshot per layer, named by chain ID.
        let mut parent = String::new();
        for ((l, chain), diff_id) in layers.iter().zip(&chains).zip(diff_ids) {
            if !self.snapshot_exists(chain).await? {
                let key = format!("basalt-extract-{chain}");
                let mounts = self.prepare(&key, &parent).await?;
                // Unpacking takes time in proportion to the layer: a minute, and two
                // seconds a MiB more (an emulated CPU unpacks CoreDNS's 75 MiB in about
                // a minute).
                let within =
                    Duration::from_secs(60 + 2 * u64::try_from(l.size).unwrap_or(0) / (1 << 20));
                let applied: Result<proto::ApplyResponse, ContainerError> = self
                    .call_within(
                        "/containerd.services.diff.v1.Diff/Apply",
                        Some(self.namespace()),
                        proto::ApplyRequest {
                            diff: Some(l.clone()),
                            mounts,
                        },
                        within,
                    )
                    .await
                    .map_err(api(format!("apply layer {}", l.digest)));
                let unpacked = applied
                    .map(|a| a.applied.map(|d| d.digest).unwrap_or_default())
                    .and_then(|d| {
                        if d.is_empty() || &d == diff_id {
                            Ok(())
                        } else {
                            Err(ContainerError::Image(
                                label.clone(),
                                format!("layer {} unpacks to {d}, but the config's diff_id is {diff_id}", l.digest),
                            ))
                        }
                    });
                if let Err(e) = unpacked {
                    let _ = self
                        .empty_call(
                            "/containerd.services.snapshots.v1.Snapshots/Remove",
                            format!("snapshot remove {key}"),
                            proto::SnapshotKey {
                                snapshotter: SNAPSHOTTER.into(),
                                key: key.clone(),
                            },
                        )
                        .await;
                    return Err(e);
                }
                self.empty_call(
                    "/containerd.services.snapshots.v1.Snapshots/Commit",
                    format!("snapshot commit {chain}"),
                    proto::CommitSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        name: chain.clone(),
                        key,
                    },
                )
                .await?;
            }
            parent = chain.clone();
        }
        Ok(())
    }

    /// Points each name at the image whose manifest is `mdesc` (in the store, unpacked).
    async fn tag(
        &self,
        names: &[String],
        mdesc: &proto::Descriptor,
    ) -> Result<Vec<(String, Outcome)>, ContainerError> {
        let mut out = Vec::new();
        for name in names {
            let record = proto::ImageMessage {
                image: Some(proto::ImageRecord {
                    name: name.clone(),
                    labels: HashMap::new(),
                    target: Some(mdesc.clone()),
                }),
            };
            let existing = self
                .call::<_, proto::ImageMessage>(
                    "/containerd.services.images.v1.Images/Get",
                    Some(self.namespace()),
                    proto::NameRequest { name: name.clone() },
                )
                .await;
            let outcome = match existing {
                Ok(m) => {
                    let target = m.image.and_then(|i| i.target).unwrap_or_default();
                    if target.digest == mdesc.digest {
                        Outcome::Unchanged
                    } else {
                        let _: proto::ImageMessage = self
                            .call(
                                "/containerd.services.images.v1.Images/Update",
                                Some(self.namespace()),
                                record,
                            )
                            .await
                            .map_err(api(format!("image update {name}")))?;
                        Outcome::Updated
                    }
                }
                Err(s) if s.code() == tonic::Code::NotFound => {
                    let _: proto::ImageMessage = self
                        .call(
                            "/containerd.services.images.v1.Images/Create",
                            Some(self.namespace()),
                            record,
                        )
                        .await
                        .map_err(api(format!("image create {name}")))?;
                    Outcome::Created
                }
                Err(s) => return Err(api(format!("image get {name}"))(s)),
            };
            out.push((name.clone(), outcome));
        }
        Ok(out)
    }
}

/// Imports every layout under `dir` into containerd, under one lease.
pub async fn import_all(client: &Client, dir: &Path) -> Result<Vec<String>, ContainerError> {
    let mut dirs: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(d) => d
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ContainerError::Read {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    // The pod sandbox first: the kubelet can run no pod without it, whatever else is slow.
    dirs.sort_by_key(|d| (!d.ends_with("pause"), d.clone()));
    let mut out = Vec::new();
    let mut failed = None;
    for d in dirs {
        // A layout may name the namespaces it belongs in, comma-separated (the pause image:
        // the CRI's `k8s.io`).
        let index = d.join("index.json");
        let list = std::fs::read(&index)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| {
                v["annotations"][NAMESPACE_ANNOTATION]
                    .as_str()
                    .map(str::to_string)
            })
            .unwrap_or_else(|| crate::NAMESPACE.to_string());
        for ns in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            // One image that cannot be imported does not keep the others out; the first
            // error is returned once all were tried.
            match client.in_namespace(ns).import_leased(&d).await {
                Ok(names) => {
                    for name in names {
                        if !out.contains(&name) {
                            out.push(name);
                        }
                    }
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

impl Client {
    /// Runs `f` with this client under a new lease (leases are per namespace), then deletes
    /// the lease. containerd's garbage collector takes what nothing refers to — a snapshot just
    /// prepared, a blob just written — and runs whenever something is deleted: what `f` writes
    /// must be held by the lease until a record that lasts (an image, a container) refers to it.
    pub(crate) async fn leased<T, F, Fut>(&self, f: F) -> Result<T, ContainerError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, ContainerError>>,
    {
        let lease: proto::CreateLeaseResponse = self
            .call(
                "/containerd.services.leases.v1.Leases/Create",
                Some(self.namespace()),
                proto::IdRequest { id: String::new() },
            )
            .await
            .map_err(api("lease create"))?;
        let lease = lease.lease.map(|l| l.id).unwrap_or_default();
        let result = f(self.with_lease(&lease)).await;
        let _ = self
            .empty_call(
                "/containerd.services.leases.v1.Leases/Delete",
                "lease delete".into(),
                proto::DeleteLeaseRequest {
                    id: lease,
                    sync: false,
                },
            )
            .await;
        result
    }

    /// [`Client::import_layout`] under a lease: nothing written is collected before the image
    /// record holds it.
    async fn import_leased(&self, dir: &Path) -> Result<Vec<String>, ContainerError> {
        self.leased(|c| async move { c.import_layout(dir).await })
            .await
    }
}

/// One name an archive import touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub name: String,
    /// The manifest's digest (what the name points at).
    pub digest: String,
    /// The config's digest: the image ID `docker images` shows.
    pub id: String,
    pub outcome: Outcome,
}

/// The archive store of a node: large files stream into containerd's content store as they
/// arrive, hashed on the way (docker save names its layers by path, not digest).
struct ContentStore {
    client: Client,
    /// Ingest refs are unique to one import.
    id: String,
    n: u32,
}

impl archive::Store for ContentStore {
    type Error = ContainerError;

    async fn store<R: tokio::io::AsyncRead + Unpin + Send>(
        &mut self,
        entry: &archive::Entry,
        tar: &mut archive::TarReader<R>,
    ) -> Result<archive::Stored, ContainerError> {
        use sha2::Digest as _;
        self.n += 1;
        let r#ref = format!("basalt-archive-{}-{}", self.id, self.n);
        // An OCI layout names its blobs by digest: one the store has is not sent again.
        let named = entry
            .path
            .strip_prefix("blobs/sha256/")
            .map(|h| format!("sha256:{h}"));
        let have = match &named {
            Some(d) => self.client.exists(d).await?,
            None => false,
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
        let expected = named.clone().unwrap_or_default();
        let write = async {
            if have {
                drop(rx);
                return Ok(String::new());
            }
            self.client
                .write_stream(
                    &r#ref,
                    &expected,
                    entry.size,
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                    HashMap::new(),
                )
                .await
        };
        let feed = async move {
            let mut h = archive::hasher();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = tar.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                if !have && tx.send(buf[..n].to_vec()).await.is_err() {
                    // The write failed; its error is the one reported. The rest of the entry
                    // is still read (and hashed) so the reader stays in step.
                    continue;
                }
            }
            Ok::<_, ContainerError>(archive::hex_digest(h))
        };
        let (written, hashed) = tokio::join!(write, feed);
        // A read that failed (a truncated archive) is the cause; the write it cut short is not.
        let hashed = hashed?;
        if named.is_some_and(|n| n != hashed) {
            return Err(archive::ArchiveError::DigestMismatch {
                path: entry.path.clone(),
                actual: hashed,
            }
            .into());
        }
        let written = written?;
        if !written.is_empty() && written != hashed {
            return Err(ContainerError::Image(
                entry.path.clone(),
                format!("containerd committed {written}, but the content hashes to {hashed}"),
            ));
        }
        Ok(archive::Stored {
            digest: Some(hashed),
            size: entry.size,
        })
    }
}

/// A node's platform, which an imported image must be for.
const PLATFORM: (&str, &str) = ("linux", "amd64");

impl Client {
    /// Imports an image archive (docker save or an OCI layout in a tar) read from `r` into
    /// this client's namespace, under one lease: an archive that is bad anywhere — or a
    /// reader that fails half-way (a client gone) — leaves no image, and what was written is
    /// collected. Every image of the archive is unpacked before any name points at one.
    pub async fn import_archive<R: tokio::io::AsyncRead + Unpin + Send>(
        &self,
        r: R,
    ) -> Result<Vec<Imported>, ContainerError> {
        self.leased(|c| async move { c.import_archive_leased(r).await })
            .await
    }

    async fn import_archive_leased<R: tokio::io::AsyncRead + Unpin + Send>(
        &self,
        r: R,
    ) -> Result<Vec<Imported>, ContainerError> {
        let mut store = ContentStore {
            client: self.clone(),
            id: format!(
                "{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            ),
            n: 0,
        };
        let contents = archive::read(r, &mut store).await?;
        let images = archive::images(&contents)?;
        let mut ready = Vec::new();
        for img in &images {
            let label = img
                .names
                .first()
                .cloned()
                .unwrap_or_else(|| img.config_digest.clone());
            let bad = |m: String| ContainerError::Image(label.clone(), m);
            let config: serde_json::Value = serde_json::from_slice(&img.config)
                .map_err(|e| bad(format!("its config is not JSON: {e}")))?;
            let os = config["os"].as_str().unwrap_or(PLATFORM.0);
            let arch = config["architecture"].as_str().unwrap_or(PLATFORM.1);
            if (os, arch) != PLATFORM {
                return Err(bad(format!(
                    "it is for {os}/{arch}; this node runs {}/{}",
                    PLATFORM.0, PLATFORM.1
                )));
            }
            let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            let mut layers = Vec::new();
            for l in &img.layers {
                let d = match (&l.digest, contents.get(&l.path)) {
                    (_, Some(archive::Content::Small(b))) => {
                        // Small layers were kept in memory: into the store now.
                        let d = self.write_blob(b, HashMap::new()).await?;
                        if l.digest.as_ref().is_some_and(|x| *x != d) {
                            return Err(bad(format!("layer {} has digest {d}", l.path)));
                        }
                        d
                    }
                    (Some(d), _) => d.clone(),
                    (None, _) => contents
                        .digest(&l.path)
                        .ok_or_else(|| bad(format!("layer {} was not stored", l.path)))?,
                };
                layers.push(proto::Descriptor {
                    media_type: l.media_type.clone(),
                    digest: d,
                    size: i64::try_from(l.size).unwrap_or(i64::MAX),
                });
            }
            let (media_type, manifest) = match &img.manifest {
                Some((m, b)) => (m.clone(), b.clone()),
                None => {
                    let ls: Vec<(String, String, u64)> = layers
                        .iter()
                        .map(|l| (l.media_type.clone(), l.digest.clone(), l.size as u64))
                        .collect();
                    (
                        "application/vnd.docker.distribution.manifest.v2+json".to_string(),
                        archive::docker_manifest(&img.config_digest, img.config.len(), &ls),
                    )
                }
            };
            let mdesc = proto::Descriptor {
                media_type,
                digest: digest(&manifest),
                size: manifest.len() as i64,
            };
            self.unpack(&label, &manifest, &img.config, &layers, &diff_ids)
                .await?;
            ready.push((img, mdesc));
        }
        let mut out = Vec::new();
        for (img, mdesc) in ready {
            for (name, outcome) in self.tag(&img.names, &mdesc).await? {
                out.push(Imported {
                    name,
                    digest: mdesc.digest.clone(),
                    id: img.config_digest.clone(),
                    outcome,
                });
            }
        }
        Ok(out)
    }

    /// Removes image names; an unknown name is an error that names it (nothing is removed).
    pub async fn remove_images(&self, names: &[String]) -> Result<(), ContainerError> {
        for name in names {
            self.call::<_, proto::ImageMessage>(
                "/containerd.services.images.v1.Images/Get",
                Some(self.namespace()),
                proto::NameRequest { name: name.clone() },
            )
            .await
            .map_err(api(format!("image {name}")))?;
        }
        for name in names {
            self.empty_call(
                "/containerd.services.images.v1.Images/Delete",
                format!("image delete {name}"),
                proto::NameRequest { name: name.clone() },
            )
            .await?;
        }
        Ok(())
    }

    /// The config digest (image ID) of the image whose manifest is `manifest`.
    pub async fn image_id(&self, manifest: &str) -> Result<String, ContainerError> {
        let m = self.read_blob(manifest).await?;
        let v: serde_json::Value = serde_json::from_slice(&m).map_err(|e| {
            ContainerError::Image(manifest.to_string(), format!("manifest is not JSON: {e}"))
        })?;
        Ok(v["config"]["digest"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// The OCI runtime spec for a run: its own PID, IPC, UTS, mount and network namespaces, no
/// capabilities, no new privileges, a read-only root.
pub fn runtime_spec(id: &str, args: &[String], env: &[String]) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": args,
            "env": env,
            "cwd": "/",
            "capabilities": { "bounding": [], "effective": [], "permitted": [] },
            "noNewPrivileges": true,
        },
        "root": { "path": "rootfs", "readonly": true },
        "hostname": id,
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc",
              "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
        ],
        "linux": {
            "namespaces": [
                { "type": "pid" }, { "type": "ipc" }, { "type": "uts" },
                { "type": "mount" }, { "type": "network" },
            ],
            "cgroupsPath": format!("/containers/{id}"),
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
        },
    })
}

/// Runs `image` to completion as container `id` and collects its output from files the shim
/// writes (`file://` stdio). With `remove`, the container and its snapshot go afterwards.
pub async fn run(
    client: &Client,
    image: &str,
    args: &[String],
    id: &str,
    io_dir: &Path,
    remove: bool,
) -> Result<RunOutput, ContainerError> {
    // The client's namespace: `system` for the API's runs, unless a caller chose another.
    let ns = Some(client.namespace());
    let img: proto::ImageMessage = client
        .call(
            "/containerd.services.images.v1.Images/Get",
            ns,
            proto::NameRequest { name: image.into() },
        )
        .await
        .map_err(api(format!("image {image}")))?;
    let target = img.image.and_then(|i| i.target).unwrap_or_default();
    let manifest = json(Path::new(image), &client.read_blob(&target.digest).await?)?;
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let config = json(Path::new(image), &client.read_blob(&config_digest).await?)?;
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let chain = chain_ids(&diff_ids).pop().unwrap_or_default();
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    let mut argv = strings(&config["config"]["Entrypoint"]);
    if args.is_empty() {
        argv.extend(strings(&config["config"]["Cmd"]));
    } else {
        argv.extend(args.iter().cloned());
    }
    if argv.is_empty() {
        return Err(ContainerError::Image(
            image.into(),
            "no entrypoint, no command and no arguments".into(),
        ));
    }
    let mut env = strings(&config["config"]["Env"]);
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }

    // The snapshot is held by a lease until the container record refers to it: unheld, the
    // garbage collector (run after the image import's lease went, say) could remove it between
    // the two, and the task's overlay mount then fails on a missing directory.
    let spec = serde_json::to_vec(&runtime_spec(id, &argv, &env)).unwrap_or_default();
    let mounts = client
        .leased(|c| async move {
            let mounts = c.prepare(id, &chain).await?;
            let _: proto::ContainerMessage = c
                .call(
                    "/containerd.services.containers.v1.Containers/Create",
                    ns,
                    proto::ContainerMessage {
                        container: Some(proto::ContainerRecord {
                            id: id.into(),
                            image: image.into(),
                            runtime: Some(proto::Runtime {
                                name: "io.containerd.runc.v2".into(),
                            }),
                            spec: Some(prost_types::Any {
                                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec"
                                    .into(),
                                value: spec,
                            }),
                            snapshotter: SNAPSHOTTER.into(),
                            snapshot_key: id.into(),
                        }),
                    },
                )
                .await
                .map_err(api(format!("container create {id}")))?;
            Ok(mounts)
        })
        .await?;

    std::fs::create_dir_all(io_dir).map_err(|source| ContainerError::Read {
        path: io_dir.to_path_buf(),
        source,
    })?;
    let out_path = io_dir.join(format!("{id}.stdout"));
    let err_path = io_dir.join(format!("{id}.stderr"));
    let _: proto::Empty = client
        .call(
            "/containerd.services.tasks.v1.Tasks/Create",
            ns,
            proto::CreateTaskRequest {
                container_id: id.into(),
                rootfs: mounts,
                stdin: String::new(),
                stdout: format!("file://{}", out_path.display()),
                stderr: format!("file://{}", err_path.display()),
            },
        )
        .await
        .map_err(api(format!("task create {id}")))?;
    client
        .empty_call(
            "/containerd.services.tasks.v1.Tasks/Start",
            format!("task start {id}"),
            proto::IdRequest { id: id.into() },
        )
        .await?;
    let wait = client.call::<_, proto::WaitResponse>(
        "/containerd.services.tasks.v1.Tasks/Wait",
        ns,
        proto::IdRequest { id: id.into() },
    );
    let exit = tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .map_err(|_| api(format!("task wait {id}"))(tonic::Status::deadline_exceeded("60 s")))?
        .map_err(api(format!("task wait {id}")))?;
    // The shim copies output asynchronously; deleting the task flushes and closes it.
    let _ = client
        .empty_call(
            "/containerd.services.tasks.v1.Tasks/Delete",
            format!("task delete {id}"),
            proto::IdRequest { id: id.into() },
        )
        .await;
    let read = |p: &Path| std::fs::read(p).unwrap_or_default();
    let out = RunOutput {
        exit_code: exit.exit_status as i32,
        stdout: read(&out_path),
        stderr: read(&err_path),
    };
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    if remove {
        client
            .empty_call(
                "/containerd.services.containers.v1.Containers/Delete",
                format!("container delete {id}"),
                proto::IdRequest { id: id.into() },
            )
            .await?;
        let removed = client
            .empty_call(
                "/containerd.services.snapshots.v1.Snapshots/Remove",
                format!("snapshot remove {id}"),
                proto::SnapshotKey {
                    snapshotter: SNAPSHOTTER.into(),
                    key: id.into(),
                },
            )
            .await;
        match removed {
            // containerd's garbage collector may have taken the snapshot with the container:
            // gone is what we wanted.
            Err(ContainerError::Api { status, .. }) if status.code() == tonic::Code::NotFound => {}
            other => other?,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let a = "sha256:aaaa".to_string();
        let b = "sha256:bbbb".to_string();
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        assert_eq!(c[1], digest(b"sha256:aaaa sha256:bbbb"));
    }

    #[test]
    fn spec_confines_the_process() {
        let s = runtime_spec("t1", &["/hello".into()], &["PATH=/bin".into()]);
        assert_eq!(s["process"]["args"][0], "/hello");
        assert_eq!(s["root"]["readonly"], true);
        assert_eq!(s["process"]["noNewPrivileges"], true);
        assert_eq!(s["linux"]["namespaces"].as_array().unwrap().len(), 5);
    }
}
