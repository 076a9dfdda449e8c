//! Pinned Debian inputs: `inputs.lock` names each package, version and sha256; they are
//! downloaded once into the cache (outside the repository) and extracted there.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{ImageError, io_err, tools};

/// One pinned package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub package: String,
    pub version: String,
    pub sha256: String,
}

/// The pins, in file order.
pub fn parse_lock(text: &str) -> Result<Vec<Pin>, ImageError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let bad = |message: String| ImageError::Manifest {
            line: i + 1,
            message,
        };
        if f.len() != 3 {
            return Err(bad(format!(
                "expected PACKAGE VERSION SHA256, found {} fields",
                f.len()
            )));
        }
        if f[2].len() != 64 || !f[2].bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("{:?} is not a sha256 (64 hex digits)", f[2])));
        }
        out.push(Pin {
            package: f[0].into(),
            version: f[1].into(),
            sha256: f[2].to_lowercase(),
        });
    }
    Ok(out)
}

/// The pins of this source tree.
pub fn lock() -> Result<Vec<Pin>, ImageError> {
    parse_lock(include_str!("../inputs.lock"))
}

/// Where downloads and extracted packages are kept: `$BASALT_CACHE`, else
/// `/var/cache/basalt` for root, else `~/.cache/basalt`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BASALT_CACHE") {
        return PathBuf::from(d);
    }
    if nix_is_root() {
        return PathBuf::from("/var/cache/basalt");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache/basalt")
}

fn nix_is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Downloads (once) and checks the package's .deb; returns its path.
pub fn fetch(pin: &Pin, cache: &Path) -> Result<PathBuf, ImageError> {
    let dir = cache.join("debs");
    let path = dir.join(format!(
        "{}_{}.deb",
        pin.package,
        pin.version.replace(':', "%3a")
    ));
    if !path.exists() {
        tools::need("apt-get", "apt")?;
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let tmp = dir.join(format!(".download-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
        let download = || {
            Command::new("apt-get")
                .args([
                    "download",
                    "-q",
                    &format!("{}={}", pin.package, pin.version),
                ])
                .current_dir(&tmp)
                .output()
                .map_err(io_err("run apt-get in", &tmp))
        };
        let mut out = download()?;
        if !out.status.success() && nix_is_root() {
            // The package lists may be missing or stale on a fresh machine: refresh once.
            let _ = Command::new("apt-get").args(["update", "-qq"]).output();
            out = download()?;
        }
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(ImageError::Download {
                package: pin.package.clone(),
                version: pin.version.clone(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        let deb = std::fs::read_dir(&tmp)
            .map_err(io_err("read", &tmp))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .ok_or_else(|| ImageError::Download {
                package: pin.package.clone(),
                version: pin.version.clone(),
                stderr: "apt-get download wrote no .deb".into(),
            })?;
        std::fs::rename(&deb, &path).map_err(io_err("move", &deb))?;
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let actual = crate::sha256_file(&path)?;
    if actual != pin.sha256 {
        return Err(ImageError::Checksum {
            package: pin.package.clone(),
            version: pin.version.clone(),
            expected: pin.sha256.clone(),
            actual,
        });
    }
    Ok(path)
}

/// Extracts the package (once) and returns the directory holding its files.
pub fn extract(pin: &Pin, cache: &Path) -> Result<PathBuf, ImageError> {
    let deb = fetch(pin, cache)?;
    let root = cache.join("root").join(format!(
        "{}_{}",
        pin.package,
        pin.version.replace(':', "%3a")
    ));
    let done = root.join(".basalt-extracted");
    if done.exists() {
        return Ok(root);
    }
    tools::need("dpkg-deb", "dpkg")?;
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).map_err(io_err("create", &root))?;
    tools::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    std::fs::write(&done, &pin.sha256).map_err(io_err("write", &done))?;
    Ok(root)
}

/// The package a pin is for, by name prefix (`linux-image-`).
pub fn find<'a>(pins: &'a [Pin], prefix: &str) -> Result<&'a Pin, ImageError> {
    pins.iter()
        .find(|p| p.package.starts_with(prefix))
        .ok_or_else(|| ImageError::Manifest {
            line: 0,
            message: format!("no package starting with {prefix:?} is pinned"),
        })
}

/// The archive's current candidate for each pinned package, as `inputs.lock` lines
/// (`osctl image pin`): the way to move the pins when Debian drops a version.
pub fn current_candidates(pins: &[Pin]) -> Result<Vec<Pin>, ImageError> {
    tools::need("apt-cache", "apt")?;
    let mut out = Vec::new();
    for pin in pins {
        let policy = tools::run(Command::new("apt-cache").args(["policy", &pin.package]))?;
        let version = policy
            .lines()
            .find_map(|l| l.trim().strip_prefix("Candidate: "))
            .filter(|v| *v != "(none)")
            .ok_or_else(|| ImageError::Download {
                package: pin.package.clone(),
                version: "candidate".into(),
                stderr: "apt-cache has no candidate (run apt-get update)".into(),
            })?
            .to_string();
        let show = tools::run(
            Command::new("apt-cache").args(["show", &format!("{}={version}", pin.package)]),
        )?;
        let sha256 = show
            .lines()
            .find_map(|l| l.strip_prefix("SHA256: "))
            .unwrap_or_default()
            .to_string();
        out.push(Pin {
            package: pin.package.clone(),
            version,
            sha256,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checked_in_lock_parses() {
        let pins = lock().unwrap();
        assert!(pins.iter().any(|p| p.package.starts_with("linux-image-")));
    }

    #[test]
    fn bad_lines_are_named() {
        let err = parse_lock("# c\n\nfoo 1.0 abc\n").unwrap_err().to_string();
        assert_eq!(
            err,
            "inputs.lock line 3: \"abc\" is not a sha256 (64 hex digits)"
        );
        let err = parse_lock("foo 1.0\n").unwrap_err().to_string();
        assert_eq!(
            err,
            "inputs.lock line 1: expected PACKAGE VERSION SHA256, found 2 fields"
        );
    }
}
