//! Writing files that matter.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Writes a file so that a crash leaves either the old or the new content: write a temporary
/// file beside it, fsync, rename over, fsync the directory.
pub fn atomic_write(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_names_and_replacement() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/f");
        atomic_write(&p, b"one", 0o600).unwrap();
        atomic_write(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!d.path().join("sub/f.tmp").exists());
        // (A bare file name, whose parent is "", is osctl's `gen secrets -o s.yaml`: tested
        // there, since changing the directory here would race the other tests.)
    }
}
