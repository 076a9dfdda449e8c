//! Upgrade bundles: what the image build makes for `osctl upgrade` and a node writes into its
//! inactive slot. A `newc` cpio archive of four files, in this order:
//!
//! - `manifest`: `key value` lines — `basalt-upgrade 1`, `version`, `arch`, optionally
//!   `kubernetes` (the Kubernetes release the image runs), and one `file NAME SIZE SHA256` line
//!   for each of the three files below;
//! - `vmlinuz`, `initramfs.img` (the base initramfs) and `rootfs.img` (the root with its
//!   dm-verity tree and parameters): a slot's files, as an install writes them.
//!
//! [`verify`] reads a whole bundle before anything is written: the manifest, every size and
//! sha256, nothing missing, nothing more, and no trailing bytes — a truncated or altered bundle
//! is refused with what is wrong, and the inactive slot is never touched for it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::Digest as _;

/// The slot's files a bundle carries, in order.
pub const FILES: [&str; 3] = ["vmlinuz", "initramfs.img", "rootfs.img"];
const MAGIC: &str = "basalt-upgrade 1";
/// A bundle's manifest is small; a larger one is not a manifest.
const MAX_MANIFEST: u64 = 64 * 1024;

/// What a bundle says it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub version: String,
    pub arch: String,
    pub kubernetes: Option<String>,
    /// (name, size, sha256 in hex), in [`FILES`] order.
    pub files: Vec<(String, u64, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not an upgrade bundle: {0}")]
    Format(String),
    #[error("the bundle's manifest line {line}: {why}")]
    Manifest { line: usize, why: String },
    #[error("{name} in the bundle has sha256 {got}, its manifest says {want}")]
    Checksum {
        name: String,
        got: String,
        want: String,
    },
    #[error("the bundle ends early (truncated?) in {0}")]
    Truncated(String),
    #[error("cannot read the bundle")]
    Io(#[from] std::io::Error),
}

impl Manifest {
    pub fn to_text(&self) -> String {
        let mut s = format!("{MAGIC}\nversion {}\narch {}\n", self.version, self.arch);
        if let Some(k) = &self.kubernetes {
            s.push_str(&format!("kubernetes {k}\n"));
        }
        for (n, size, sha) in &self.files {
            s.push_str(&format!("file {n} {size} {sha}\n"));
        }
        s
    }

    pub fn parse(text: &str) -> Result<Manifest, BundleError> {
        let mut lines = text.lines().enumerate();
        if lines.next().map(|(_, l)| l) != Some(MAGIC) {
            return Err(BundleError::Format(format!(
                "the manifest does not start with {MAGIC:?}"
            )));
        }
        let (mut version, mut arch, mut kubernetes, mut files) = (None, None, None, Vec::new());
        for (i, l) in lines {
            let bad = |why: String| BundleError::Manifest { line: i + 1, why };
            let word = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._+-~".contains(c))
            };
            match l.split(' ').collect::<Vec<_>>()[..] {
                ["version", v] if word(v) => version = Some(v.to_string()),
                ["arch", a] if word(a) => arch = Some(a.to_string()),
                ["kubernetes", k] if word(k) => kubernetes = Some(k.to_string()),
                ["file", name, size, sha] => {
                    let size: u64 = size
                        .parse()
                        .map_err(|_| bad(format!("size {size:?} is not a number")))?;
                    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(bad(format!("{sha:?} is not a sha256")));
                    }
                    files.push((name.to_string(), size, sha.to_ascii_lowercase()));
                }
                [""] => {}
                _ => return Err(bad(format!("{l:?} is not a manifest line"))),
            }
        }
        let names: Vec<&str> = files.iter().map(|(n, _, _)| n.as_str()).collect();
        if names != FILES {
            return Err(BundleError::Format(format!(
                "the manifest lists {names:?}, not {FILES:?}"
            )));
        }
        Ok(Manifest {
            version: version.ok_or_else(|| BundleError::Format("no version".into()))?,
            arch: arch.ok_or_else(|| BundleError::Format("no arch".into()))?,
            kubernetes,
            files,
        })
    }
}

/// Writes a bundle of `files` (name, path) for `manifest`'s version, arch and Kubernetes
/// release; the sizes and sha256s are computed here.
pub fn write(
    out: &mut impl Write,
    version: &str,
    arch: &str,
    kubernetes: Option<&str>,
    files: &[(&str, &Path)],
) -> std::io::Result<Manifest> {
    let mut m = Manifest {
        version: version.to_string(),
        arch: arch.to_string(),
        kubernetes: kubernetes.map(str::to_string),
        files: Vec::new(),
    };
    for (name, path) in files {
        let mut f = std::fs::File::open(path)?;
        let mut h = sha2::Sha256::new();
        let size = std::io::copy(&mut f, &mut h)?;
        m.files.push((name.to_string(), size, hex(&h.finalize())));
    }
    let text = m.to_text();
    let mut written = 0u64;
    let mut entry = |out: &mut dyn Write, ino: u32, name: &str, data: &mut dyn Read, size: u64| {
        written += crate::cpio::stream_file(out, ino, name, size)? as u64;
        let n = std::io::copy(data, out)?;
        if n != size {
            return Err(std::io::Error::other(format!(
                "{name} changed while bundled"
            )));
        }
        written += n;
        written += crate::cpio::pad_to(out, written)? as u64;
        Ok::<(), std::io::Error>(())
    };
    entry(out, 1, "manifest", &mut text.as_bytes(), text.len() as u64)?;
    for (i, (name, path)) in files.iter().enumerate() {
        let size = m.files[i].1;
        entry(
            out,
            u32::try_from(i + 2).unwrap_or(u32::MAX),
            name,
            &mut std::fs::File::open(path)?,
            size,
        )?;
    }
    crate::cpio::trailer(out, written)?;
    Ok(m)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A bundle checked whole: its manifest and where each file's bytes are.
#[derive(Debug, Clone)]
pub struct Verified {
    pub path: PathBuf,
    pub manifest: Manifest,
    /// (offset, size) of each of [`FILES`] in the bundle file.
    pub ranges: Vec<(u64, u64)>,
}

impl Verified {
    /// A reader of file `i` ([`FILES`] order).
    pub fn open(&self, i: usize) -> std::io::Result<impl Read + use<>> {
        use std::io::Seek as _;
        let (off, len) = self.ranges[i];
        let mut f = std::fs::File::open(&self.path)?;
        f.seek(std::io::SeekFrom::Start(off))?;
        Ok(f.take(len))
    }
}

/// Reads the bundle at `path` whole and checks it (see the module's text).
pub fn verify(path: &Path) -> Result<Verified, BundleError> {
    let f = std::fs::File::open(path)?;
    let mut r = Counting {
        inner: std::io::BufReader::with_capacity(1 << 20, f),
        at: 0,
    };
    let (name, size) = header(&mut r, "the manifest")?;
    if name != "manifest" || size > MAX_MANIFEST {
        return Err(BundleError::Format(format!(
            "the first entry is {name:?} ({size} bytes), not the manifest"
        )));
    }
    let mut text = vec![0u8; usize::try_from(size).unwrap_or(0)];
    r.read_exact(&mut text)
        .map_err(|_| BundleError::Truncated("the manifest".into()))?;
    skip_pad(&mut r, "the manifest")?;
    let manifest = Manifest::parse(
        std::str::from_utf8(&text)
            .map_err(|_| BundleError::Format("the manifest is not text".into()))?,
    )?;
    let mut ranges = Vec::new();
    for (want, want_size, want_sha) in &manifest.files {
        let (name, size) = header(&mut r, want)?;
        if &name != want || size != *want_size {
            return Err(BundleError::Format(format!(
                "found {name:?} of {size} bytes where the manifest says {want:?} of {want_size}"
            )));
        }
        let start = r.at;
        let mut h = sha2::Sha256::new();
        let n = std::io::copy(&mut (&mut r).take(size), &mut h)?;
        if n != size {
            return Err(BundleError::Truncated(want.clone()));
        }
        let got = hex(&h.finalize());
        if &got != want_sha {
            return Err(BundleError::Checksum {
                name: want.clone(),
                got,
                want: want_sha.clone(),
            });
        }
        skip_pad(&mut r, want)?;
        ranges.push((start, size));
    }
    let (name, _) = header(&mut r, "the end of the archive")?;
    if name != "TRAILER!!!" {
        return Err(BundleError::Format(format!("an extra entry {name:?}")));
    }
    Ok(Verified {
        path: path.to_path_buf(),
        manifest,
        ranges,
    })
}

struct Counting<R> {
    inner: R,
    at: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// A newc header: the entry's name and data size (the name's padding consumed).
fn header<R: Read>(r: &mut Counting<R>, what: &str) -> Result<(String, u64), BundleError> {
    let mut h = [0u8; 110];
    r.read_exact(&mut h)
        .map_err(|_| BundleError::Truncated(what.to_string()))?;
    if &h[..6] != b"070701" {
        return Err(BundleError::Format(format!("no cpio header before {what}")));
    }
    let field = |i: usize| -> Result<u64, BundleError> {
        std::str::from_utf8(&h[6 + i * 8..14 + i * 8])
            .ok()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .ok_or_else(|| BundleError::Format("a bad cpio header".into()))
    };
    let (size, namesize) = (field(6)?, field(11)?);
    if namesize == 0 || namesize > 256 {
        return Err(BundleError::Format("a bad cpio name".into()));
    }
    let mut name = vec![0u8; usize::try_from(namesize).unwrap_or(0)];
    r.read_exact(&mut name)
        .map_err(|_| BundleError::Truncated(what.to_string()))?;
    name.pop();
    skip_pad(r, what)?;
    Ok((String::from_utf8_lossy(&name).into_owned(), size))
}

fn skip_pad<R: Read>(r: &mut Counting<R>, what: &str) -> Result<(), BundleError> {
    let pad = (4 - r.at % 4) % 4;
    let mut b = [0u8; 3];
    r.read_exact(&mut b[..usize::try_from(pad).unwrap_or(0)])
        .map_err(|_| BundleError::Truncated(what.to_string()))?;
    Ok(())
}

/// Orders two versions by their dot-separated numeric parts (`0.2.0` < `0.10.0`); a part
/// that is not a number compares as text. `None` when neither reads as a version.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |s: &str| -> Vec<(u64, String)> {
        s.split(['.', '-', '+', '~'])
            .map(|p| (p.parse().unwrap_or(u64::MAX), p.to_string()))
            .collect()
    };
    parts(a).cmp(&parts(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(dir: &Path) -> PathBuf {
        let mut files = Vec::new();
        for (name, data) in [
            ("vmlinuz", &b"kernel"[..]),
            ("initramfs.img", b"i"),
            ("rootfs.img", b"root fs!"),
        ] {
            let p = dir.join(name);
            std::fs::write(&p, data).unwrap();
            files.push((name, p));
        }
        let refs: Vec<(&str, &Path)> = files.iter().map(|(n, p)| (*n, p.as_path())).collect();
        let out = dir.join("b.bundle");
        let mut f = std::fs::File::create(&out).unwrap();
        write(&mut f, "0.2.0", "x86_64", Some("v1.37.2"), &refs).unwrap();
        out
    }

    #[test]
    fn a_bundle_verifies_and_each_fault_is_named() {
        let d = tempfile::tempdir().unwrap();
        let p = bundle(d.path());
        let v = verify(&p).unwrap();
        assert_eq!(v.manifest.version, "0.2.0");
        assert_eq!(v.manifest.kubernetes.as_deref(), Some("v1.37.2"));
        let mut root = String::new();
        v.open(2).unwrap().read_to_string(&mut root).unwrap();
        assert_eq!(root, "root fs!");

        let good = std::fs::read(&p).unwrap();
        // A flipped byte in rootfs.img's data.
        let at = good.windows(8).position(|w| w == b"root fs!").unwrap();
        let mut bad = good.clone();
        bad[at] ^= 1;
        std::fs::write(&p, &bad).unwrap();
        let e = verify(&p).unwrap_err().to_string();
        assert!(e.contains("rootfs.img in the bundle has sha256"), "{e}");
        // Truncated.
        std::fs::write(&p, &good[..good.len() - 200]).unwrap();
        let e = verify(&p).unwrap_err().to_string();
        assert!(e.contains("ends early"), "{e}");
        // Not a bundle at all.
        std::fs::write(&p, b"hello").unwrap();
        assert!(verify(&p).is_err());
    }

    #[test]
    fn versions_order_by_number() {
        use std::cmp::Ordering::*;
        assert_eq!(compare_versions("0.2.0", "0.10.0"), Less);
        assert_eq!(compare_versions("1.0.0", "1.0.0"), Equal);
        assert_eq!(compare_versions("1.1", "1.0.9"), Greater);
    }
}
