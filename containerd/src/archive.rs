//! Image archives — what `docker save` writes (docker-archive: `manifest.json`, a config and a
//! `layer.tar` per layer) and what OCI tools write (an OCI image layout in a tar: `index.json`,
//! `blobs/sha256/…`) — read as a stream, once, front to back: the archive arrives over the
//! network in chunks and is never held whole, in memory or on disk.
//!
//! Small files (manifests, configs, index files; up to [`SMALL_FILE`] each, [`SMALL_TOTAL`] in
//! all) are kept in memory; every larger file is handed to the caller's store as it streams past
//! (containerd's content store on a node; nothing on a client that only wants the names). The
//! tar is read by this module, not a library, so every path is checked as it arrives: an
//! absolute path, a `..`, a link that leaves the archive, a header that is not a tar header or
//! an archive that ends early each stop the read with an error naming the entry.
//!
//! This module reads; it never writes to containerd itself (the store it is given does: the
//! containers module's).

use std::collections::HashMap;

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt as _};

/// Files up to this size are kept in memory (an image's manifest and config are far smaller).
pub const SMALL_FILE: u64 = 1 << 20;
/// All small files of one archive together.
pub const SMALL_TOTAL: u64 = 32 << 20;
/// The longest GNU long name or PAX header this reader accepts.
const MAX_HEADER_EXTENSION: u64 = 64 << 10;
/// How many links a path may go through before the archive is refused.
const MAX_LINKS: usize = 8;

/// What is wrong with an archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("not a tar archive: the header at byte {offset} is not a tar header")]
    NotTar { offset: u64 },
    #[error("not a tar archive: it is empty")]
    Empty,
    #[error("the archive is truncated: it ends {0}")]
    Truncated(String),
    #[error("cannot read the archive")]
    Io(#[source] std::io::Error),
    #[error("entry {path:?}: {why}")]
    BadEntry { path: String, why: String },
    #[error("the archive's manifests and configs exceed {} MiB", SMALL_TOTAL >> 20)]
    TooMuchMetadata,
    #[error(
        "not an image archive: it has neither index.json (an OCI layout) nor manifest.json (docker save)"
    )]
    NotImage,
    #[error("{file}: {message}")]
    Metadata { file: String, message: String },
    #[error("{what} names {path:?}, which the archive does not hold")]
    Missing { what: String, path: String },
    #[error("{path}: its content has digest {actual}, not the one its name says")]
    DigestMismatch { path: String, actual: String },
    #[error("{what} is {size} bytes: larger than the {} MiB a manifest or config may be", SMALL_FILE >> 20)]
    TooLarge { what: String, size: u64 },
    #[error("the archive holds no image with a name (docker save IMAGE:TAG names them)")]
    NoNames,
}

/// What one entry of the tar is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Directory,
    /// A symbolic or hard link, with its target as a path inside the archive.
    Link(String),
    /// Devices, FIFOs and the like: skipped.
    Other,
}

/// One entry's header, its path checked and normalized (no `./`, no trailing `/`).
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
    pub size: u64,
}

/// A streaming tar reader: [`TarReader::next`] gives each entry's header, [`TarReader::read`]
/// its content (unread content is skipped by the next `next`).
#[derive(Debug)]
pub struct TarReader<R> {
    r: R,
    offset: u64,
    /// Content of the current entry not read yet, and the padding after it.
    remaining: u64,
    padding: u64,
    current: String,
    entries: u64,
}

impl<R: AsyncRead + Unpin> TarReader<R> {
    pub fn new(r: R) -> Self {
        TarReader {
            r,
            offset: 0,
            remaining: 0,
            padding: 0,
            current: String::new(),
            entries: 0,
        }
    }

    /// Bytes read so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    async fn fill(&mut self, buf: &mut [u8], inside: &str) -> Result<(), ArchiveError> {
        let mut got = 0;
        while got < buf.len() {
            let n = self
                .r
                .read(&mut buf[got..])
                .await
                .map_err(ArchiveError::Io)?;
            if n == 0 {
                return Err(ArchiveError::Truncated(inside.to_string()));
            }
            got += n;
            self.offset += n as u64;
        }
        Ok(())
    }

    async fn skip(&mut self, mut n: u64, inside: &str) -> Result<(), ArchiveError> {
        let mut buf = vec![0u8; 64 << 10];
        while n > 0 {
            let want = usize::try_from(n.min(buf.len() as u64)).unwrap_or(buf.len());
            self.fill(&mut buf[..want], inside).await?;
            n -= want as u64;
        }
        Ok(())
    }

    /// Reads up to `buf.len()` bytes of the current entry's content; 0 at its end.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, ArchiveError> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = usize::try_from(self.remaining.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = self
            .r
            .read(&mut buf[..want])
            .await
            .map_err(ArchiveError::Io)?;
        if n == 0 {
            return Err(ArchiveError::Truncated(format!(
                "inside {:?}, {} bytes short",
                self.current, self.remaining
            )));
        }
        self.offset += n as u64;
        self.remaining -= n as u64;
        Ok(n)
    }

    /// The whole content of the current entry (callers bound its size first).
    async fn read_all(&mut self) -> Result<Vec<u8>, ArchiveError> {
        let mut out = vec![0u8; usize::try_from(self.remaining).unwrap_or(0)];
        let mut got = 0;
        while got < out.len() {
            got += self.read(&mut out[got..]).await?;
        }
        Ok(out)
    }

    /// The next entry, or `None` at the archive's end marker.
    pub async fn next(&mut self) -> Result<Option<Entry>, ArchiveError> {
        let inside = format!("inside {:?}", self.current);
        self.skip(self.remaining + self.padding, &inside).await?;
        self.remaining = 0;
        self.padding = 0;
        let mut long_name: Option<String> = None;
        let mut long_link: Option<String> = None;
        let mut pax: HashMap<String, String> = HashMap::new();
        loop {
            let at = self.offset;
            let mut h = [0u8; 512];
            // The first read tells an empty input from one that ends mid-header.
            let n = self.r.read(&mut h).await.map_err(ArchiveError::Io)?;
            if n == 0 {
                return Err(if self.entries == 0 && at == 0 {
                    ArchiveError::Empty
                } else {
                    ArchiveError::Truncated("before the end-of-archive marker".into())
                });
            }
            self.offset += n as u64;
            if n < h.len() {
                self.fill(&mut h[n..], "inside a header").await?;
            }
            if h.iter().all(|b| *b == 0) {
                return Ok(None);
            }
            let header = parse_header(&h).ok_or(ArchiveError::NotTar { offset: at })?;
            self.entries += 1;
            let extension = matches!(header.typeflag, b'L' | b'K' | b'x' | b'g');
            // A PAX size is the next real entry's, not an extended header's.
            let size = match pax.get("size").and_then(|s| s.parse().ok()) {
                Some(s) if !extension => s,
                _ => header.size,
            };
            if extension {
                if size > MAX_HEADER_EXTENSION {
                    return Err(ArchiveError::BadEntry {
                        path: header.name,
                        why: format!("an extended header of {size} bytes"),
                    });
                }
                self.current = "an extended header".into();
                self.remaining = size;
                let data = self.read_all().await?;
                self.skip(padding(size), "inside an extended header")
                    .await?;
                let text = String::from_utf8_lossy(&data)
                    .trim_end_matches('\0')
                    .to_string();
                match header.typeflag {
                    b'L' => long_name = Some(text),
                    b'K' => long_link = Some(text),
                    // PAX records add to those of an earlier PAX header of the same entry.
                    b'x' => pax.extend(pax_records(&text)),
                    _ => {}
                }
                continue;
            }
            let raw_path = pax
                .remove("path")
                .or(long_name.take())
                .unwrap_or(header.name.clone());
            let raw_link = pax
                .remove("linkpath")
                .or(long_link.take())
                .unwrap_or(header.link.clone());
            let path = normalize(&raw_path)?;
            let kind = match header.typeflag {
                b'0' | 0 | b'7' => EntryKind::File,
                b'5' => EntryKind::Directory,
                b'1' => {
                    EntryKind::Link(normalize(&raw_link).map_err(|_| ArchiveError::BadEntry {
                        path: path.clone(),
                        why: format!("a hard link to {raw_link:?}, outside the archive"),
                    })?)
                }
                b'2' => EntryKind::Link(resolve_symlink(&path, &raw_link)?),
                _ => EntryKind::Other,
            };
            // Only files have content; a size on anything else is skipped as content.
            self.remaining = size;
            self.padding = padding(size);
            self.current = path.clone();
            return Ok(Some(Entry { path, kind, size }));
        }
    }
}

fn padding(size: u64) -> u64 {
    (512 - size % 512) % 512
}

struct Header {
    name: String,
    link: String,
    size: u64,
    typeflag: u8,
}

fn field(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn octal(b: &[u8]) -> Option<u64> {
    // GNU's base-256 form for sizes that do not fit 11 octal digits.
    if b.first().is_some_and(|c| c & 0x80 != 0) {
        let mut v: u64 = u64::from(b[0] & 0x7f);
        for c in &b[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(*c))?;
        }
        return Some(v);
    }
    let s = field(b);
    let s = s.trim_matches(|c: char| c == ' ' || c == '\0');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

/// A ustar/GNU/v7 header, or `None` when its checksum or fields say it is not one.
fn parse_header(h: &[u8; 512]) -> Option<Header> {
    let stored = octal(&h[148..156])?;
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(*b)
            }
        })
        .sum();
    if sum != stored {
        return None;
    }
    let mut name = field(&h[0..100]);
    if &h[257..262] == b"ustar" {
        let prefix = field(&h[345..500]);
        if !prefix.is_empty() && h[263] != b' ' {
            name = format!("{prefix}/{name}");
        }
    }
    Some(Header {
        name,
        link: field(&h[157..257]),
        size: octal(&h[124..136])?,
        typeflag: h[156],
    })
}

/// PAX records: `LEN key=value\n` each.
fn pax_records(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(' ').map(|(_, kv)| kv))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A path inside the archive as this module keys it: relative, no `.` or empty parts, no
/// `..`. Anything else is an entry that would write outside where it is unpacked.
fn normalize(raw: &str) -> Result<String, ArchiveError> {
    let bad = |why: &str| ArchiveError::BadEntry {
        path: raw.to_string(),
        why: why.to_string(),
    };
    if raw.starts_with('/') {
        return Err(bad("an absolute path"));
    }
    if raw.contains('\0') {
        return Err(bad("a NUL in its path"));
    }
    let mut parts = Vec::new();
    for p in raw.split('/') {
        match p {
            "" | "." => {}
            ".." => return Err(bad("a path that climbs out with \"..\"")),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// A symlink's target as a path inside the archive (relative to the link's directory).
fn resolve_symlink(path: &str, target: &str) -> Result<String, ArchiveError> {
    let bad = || ArchiveError::BadEntry {
        path: path.to_string(),
        why: format!("a link to {target:?}, outside the archive"),
    };
    if target.starts_with('/') {
        return Err(bad());
    }
    let mut parts: Vec<&str> = path.split('/').collect();
    parts.pop();
    for p in target.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop().ok_or_else(bad)?;
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// `sha256:…` of `data`.
pub(crate) fn digest(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex_digest(Sha256::new_with_prefix(data))
}

/// `sha256:…` of a hasher's input.
pub(crate) fn hex_digest(h: Sha256) -> String {
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A file of the archive too large to keep in memory, as the store took it.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its digest, when the store computed one (a node's store always does).
    pub digest: Option<String>,
    pub size: u64,
}

/// What an archive holds, once read: small files by path, large files as the store took them,
/// and links.
#[derive(Debug, Default)]
pub struct Contents {
    pub small: HashMap<String, Vec<u8>>,
    pub large: HashMap<String, Stored>,
    pub links: HashMap<String, String>,
}

/// A file's content as the archive holds it.
#[derive(Debug)]
pub enum Content<'a> {
    Small(&'a [u8]),
    Large(&'a Stored),
}

impl Contents {
    /// The content at `path`, following links.
    pub fn get(&self, path: &str) -> Option<Content<'_>> {
        let mut p = path.to_string();
        for _ in 0..MAX_LINKS {
            if let Some(b) = self.small.get(&p) {
                return Some(Content::Small(b));
            }
            if let Some(s) = self.large.get(&p) {
                return Some(Content::Large(s));
            }
            p = self.links.get(&p)?.clone();
        }
        None
    }

    /// A small file's bytes: a manifest, a config, an index.
    pub fn metadata(&self, path: &str, what: &str) -> Result<&[u8], ArchiveError> {
        match self.get(path) {
            Some(Content::Small(b)) => Ok(b),
            Some(Content::Large(s)) => Err(ArchiveError::TooLarge {
                what: format!("{what} {path}"),
                size: s.size,
            }),
            None => Err(ArchiveError::Missing {
                what: what.to_string(),
                path: path.to_string(),
            }),
        }
    }

    /// The digest of the content at `path`, if it is known.
    pub fn digest(&self, path: &str) -> Option<String> {
        match self.get(path)? {
            Content::Small(b) => Some(digest(b)),
            Content::Large(s) => s.digest.clone(),
        }
    }
}

/// Where large files go as they stream past.
pub trait Store {
    /// What storing can fail with; the archive's own faults convert into it.
    type Error: From<ArchiveError> + Send;
    /// Takes the content of `entry` (read it from `tar`, up to `entry.size` bytes).
    fn store<R: AsyncRead + Unpin + Send>(
        &mut self,
        entry: &Entry,
        tar: &mut TarReader<R>,
    ) -> impl std::future::Future<Output = Result<Stored, Self::Error>> + Send;
}

/// A store that skips large files (a client that wants only the archive's names and configs).
#[derive(Debug, Default)]
pub struct Skip;

impl Store for Skip {
    type Error = ArchiveError;

    async fn store<R: AsyncRead + Unpin + Send>(
        &mut self,
        entry: &Entry,
        _tar: &mut TarReader<R>,
    ) -> Result<Stored, ArchiveError> {
        Ok(Stored {
            digest: None,
            size: entry.size,
        })
    }
}

/// Reads a whole archive from `r`, giving large files to `store`. Content named
/// `blobs/sha256/HEX` (an OCI layout's) must hash to its name.
pub async fn read<R: AsyncRead + Unpin + Send, S: Store + Send>(
    r: R,
    store: &mut S,
) -> Result<Contents, S::Error> {
    let mut tar = TarReader::new(r);
    let mut out = Contents::default();
    let mut small_total = 0u64;
    while let Some(e) = tar.next().await? {
        match &e.kind {
            EntryKind::File if e.size <= SMALL_FILE => {
                small_total += e.size;
                if small_total > SMALL_TOTAL {
                    return Err(ArchiveError::TooMuchMetadata.into());
                }
                let data = tar.read_all().await?;
                check_name(&e.path, &digest(&data))?;
                out.small.insert(e.path, data);
            }
            EntryKind::File => {
                let s = store.store(&e, &mut tar).await?;
                if let Some(d) = &s.digest {
                    check_name(&e.path, d)?;
                }
                out.large.insert(e.path, s);
            }
            EntryKind::Link(t) => {
                out.links.insert(e.path, t.clone());
            }
            EntryKind::Directory | EntryKind::Other => {}
        }
    }
    Ok(out)
}

/// A blob named by its digest must have that digest.
fn check_name(path: &str, actual: &str) -> Result<(), ArchiveError> {
    if let Some(hex) = path.strip_prefix("blobs/sha256/")
        && actual.strip_prefix("sha256:") != Some(hex)
    {
        return Err(ArchiveError::DigestMismatch {
            path: path.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

/// One layer of an archived image.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Where the archive holds it.
    pub path: String,
    pub media_type: String,
    /// Its digest, when known (named by the OCI manifest, or computed as it streamed).
    pub digest: Option<String>,
    pub size: u64,
}

/// One image of an archive.
#[derive(Debug, Clone)]
pub struct ArchivedImage {
    /// The references it is tagged with, normalized as containerd names them
    /// (`hello:v1` → `docker.io/library/hello:v1`).
    pub names: Vec<String>,
    /// The config's digest (the image ID) and bytes.
    pub config_digest: String,
    pub config: Vec<u8>,
    /// The manifest as the archive holds it (OCI), with its media type; `None` for docker save,
    /// whose manifest is made from the config and layers.
    pub manifest: Option<(String, Vec<u8>)>,
    pub layers: Vec<Layer>,
}

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The layer media type of docker save's `layer.tar` files.
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

fn json(file: &str, data: &[u8]) -> Result<serde_json::Value, ArchiveError> {
    serde_json::from_slice(data).map_err(|e| ArchiveError::Metadata {
        file: file.to_string(),
        message: format!("not JSON: {e}"),
    })
}

fn blob_path(digest: &str) -> String {
    format!(
        "blobs/{}",
        digest.replacen(':', "/", 1).trim_start_matches('/')
    )
}

/// The images an archive holds: an OCI layout's index (with containerd's or the OCI name
/// annotation), else docker save's `manifest.json`.
pub fn images(c: &Contents) -> Result<Vec<ArchivedImage>, ArchiveError> {
    let out = if c.get("index.json").is_some() {
        oci_images(c)?
    } else if c.get("manifest.json").is_some() {
        docker_images(c)?
    } else {
        return Err(ArchiveError::NotImage);
    };
    if out.iter().all(|i| i.names.is_empty()) {
        return Err(ArchiveError::NoNames);
    }
    Ok(out)
}

fn oci_images(c: &Contents) -> Result<Vec<ArchivedImage>, ArchiveError> {
    let index = json("index.json", c.metadata("index.json", "the archive")?)?;
    let mut out = Vec::new();
    for m in index["manifests"].as_array().into_iter().flatten() {
        let a = &m["annotations"];
        let name = a["io.containerd.image.name"]
            .as_str()
            .or(a["org.opencontainers.image.ref.name"].as_str())
            // A bare tag (`v1`) names no image.
            .filter(|n| n.contains(':') || n.contains('/'))
            .map(normalize_reference);
        let mut digest = m["digest"].as_str().unwrap_or_default().to_string();
        let mut media = m["mediaType"].as_str().unwrap_or_default().to_string();
        // An index (several platforms): the node's platform.
        for _ in 0..MAX_LINKS {
            if media != OCI_INDEX && media != DOCKER_LIST {
                break;
            }
            let p = blob_path(&digest);
            let inner = json(&p, c.metadata(&p, "index.json")?)?;
            let pick = inner["manifests"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| {
                    m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64"
                })
                .ok_or_else(|| ArchiveError::Metadata {
                    file: p.clone(),
                    message: "no manifest for linux/amd64".into(),
                })?;
            digest = pick["digest"].as_str().unwrap_or_default().to_string();
            media = pick["mediaType"].as_str().unwrap_or_default().to_string();
        }
        let mpath = blob_path(&digest);
        let mbytes = c.metadata(&mpath, "index.json")?.to_vec();
        let manifest = json(&mpath, &mbytes)?;
        let cdigest = manifest["config"]["digest"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let cpath = blob_path(&cdigest);
        let config = c.metadata(&cpath, &format!("manifest {mpath}"))?.to_vec();
        let mut layers = Vec::new();
        for l in manifest["layers"].as_array().into_iter().flatten() {
            let d = l["digest"].as_str().unwrap_or_default().to_string();
            let path = blob_path(&d);
            if c.get(&path).is_none() {
                return Err(ArchiveError::Missing {
                    what: format!("manifest {mpath}"),
                    path,
                });
            }
            layers.push(Layer {
                path,
                media_type: l["mediaType"].as_str().unwrap_or_default().to_string(),
                digest: Some(d),
                size: l["size"].as_u64().unwrap_or(0),
            });
        }
        let media = if media.is_empty() {
            manifest["mediaType"]
                .as_str()
                .unwrap_or("application/vnd.oci.image.manifest.v1+json")
                .to_string()
        } else {
            media
        };
        out.push(ArchivedImage {
            names: name.into_iter().collect(),
            config_digest: cdigest,
            config,
            manifest: Some((media, mbytes)),
            layers,
        });
    }
    // docker save (25 and later) writes both: the OCI index names only the tag, manifest.json
    // the repository too.
    if out.iter().all(|i| i.names.is_empty()) && c.get("manifest.json").is_some() {
        let named = docker_images(c)?;
        for i in &mut out {
            if let Some(n) = named.iter().find(|n| n.config_digest == i.config_digest) {
                i.names = n.names.clone();
            }
        }
    }
    Ok(out)
}

fn docker_images(c: &Contents) -> Result<Vec<ArchivedImage>, ArchiveError> {
    let file = "manifest.json";
    let list = json(file, c.metadata(file, "the archive")?)?;
    let entries = list.as_array().ok_or_else(|| ArchiveError::Metadata {
        file: file.into(),
        message: "not a list of images".into(),
    })?;
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let cpath = e["Config"].as_str().ok_or_else(|| ArchiveError::Metadata {
            file: file.into(),
            message: format!("image {i} has no Config"),
        })?;
        let cpath = normalize(cpath)?;
        let config = c.metadata(&cpath, file)?.to_vec();
        let mut layers = Vec::new();
        for l in e["Layers"].as_array().into_iter().flatten() {
            let path = normalize(l.as_str().unwrap_or_default())?;
            let (size, digest) = match c.get(&path) {
                Some(Content::Small(b)) => (b.len() as u64, Some(digest(b))),
                Some(Content::Large(s)) => (s.size, s.digest.clone()),
                None => {
                    return Err(ArchiveError::Missing {
                        what: file.into(),
                        path,
                    });
                }
            };
            let gz = match c.get(&path) {
                Some(Content::Small(b)) => b.starts_with(&[0x1f, 0x8b]),
                _ => false,
            };
            layers.push(Layer {
                path,
                media_type: if gz { DOCKER_LAYER_GZIP } else { DOCKER_LAYER }.into(),
                digest,
                size,
            });
        }
        out.push(ArchivedImage {
            names: e["RepoTags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str())
                .map(normalize_reference)
                .collect(),
            config_digest: digest(&config),
            config,
            manifest: None,
            layers,
        });
    }
    Ok(out)
}

/// An image reference as containerd and the kubelet name it: a registry host first
/// (`docker.io` when none is given) and `library/` for Docker Hub's official images.
pub fn normalize_reference(r: &str) -> String {
    let (first, rest) = match r.split_once('/') {
        Some((f, rest)) => (f, Some(rest)),
        None => (r, None),
    };
    let is_host = |f: &str| f.contains('.') || f.contains(':') || f == "localhost";
    let named = match rest {
        Some(_) if is_host(first) => r.to_string(),
        Some(_) => format!("docker.io/{r}"),
        None => format!("docker.io/library/{r}"),
    };
    // No tag and no digest: `latest`, as docker means it.
    let last = named.rsplit('/').next().unwrap_or_default();
    if last.contains(':') || last.contains('@') {
        named
    } else {
        format!("{named}:latest")
    }
}

/// The manifest docker save leaves out, made from the config and layers (schema 2).
pub fn docker_manifest(
    config_digest: &str,
    config_size: usize,
    layers: &[(String, String, u64)],
) -> Vec<u8> {
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|(media, d, size)| serde_json::json!({"mediaType": media, "size": size, "digest": d}))
        .collect();
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": config_size,
            "digest": config_digest,
        },
        "layers": layers,
    })
    .to_string()
    .into_bytes()
}

/// The hasher a store feeds as content streams past.
pub(crate) fn hasher() -> Sha256 {
    Sha256::new()
}

#[cfg(test)]
mod tests;
