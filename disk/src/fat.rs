//! FAT filesystems inside a partition of an open disk: the EFI partition, the boot slots and
//! META are made and written here in Rust (`fatfs`), with no tool on the node.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt as _;

/// A byte range of a file (a partition of a disk) as a stream of its own.
#[derive(Debug)]
pub struct Window<'a> {
    file: &'a File,
    start: u64,
    len: u64,
    pos: u64,
}

impl<'a> Window<'a> {
    pub fn new(file: &'a File, start: u64, len: u64) -> Window<'a> {
        Window {
            file,
            start,
            len,
            pos: 0,
        }
    }

    fn room(&self, want: usize) -> usize {
        let left = self.len.saturating_sub(self.pos);
        usize::try_from(left).unwrap_or(usize::MAX).min(want)
    }
}

impl Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.room(buf.len());
        let n = self.file.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Window<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.room(buf.len());
        if n == 0 && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "past the end of the partition",
            ));
        }
        let n = self.file.write_at(&buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match pos {
            Some(p) if p <= self.len => {
                self.pos = p;
                Ok(p)
            }
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek outside the partition",
            )),
        }
    }
}

/// Formats the window as FAT (the type follows from its size and `cluster` bytes) with a
/// fixed volume id, so the same inputs make the same bytes.
pub fn format(w: Window<'_>, label: [u8; 11], cluster: u32) -> std::io::Result<()> {
    fatfs::format_volume(
        w,
        fatfs::FormatVolumeOptions::new()
            .volume_label(label)
            .volume_id(0x0ba5_a171)
            .bytes_per_cluster(cluster),
    )
}

/// A mounted FAT filesystem in a window.
pub type Fs<'a> = fatfs::FileSystem<Window<'a>>;

pub fn open(w: Window<'_>) -> std::io::Result<Fs<'_>> {
    fatfs::FileSystem::new(w, fatfs::FsOptions::new())
}

/// Writes `name` in the root directory from `data`, copied in 1 MiB pieces. (Files in the
/// root only: `fatfs` 0.3 gives a new directory's `.` and `..` long-name entries, which
/// `fsck.vfat` rejects — the EFI partition, which needs directories, is made by mtools at
/// build time instead.)
pub fn write_file(fs: &Fs<'_>, name: &str, data: &mut dyn Read) -> std::io::Result<u64> {
    if name.contains('/') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "files in the root directory only",
        ));
    }
    let mut f = fs.root_dir().create_file(name)?;
    f.truncate()?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = data.read(&mut buf)?;
        if n == 0 {
            break;
        }
        f.write_all(&buf[..n])?;
        total += n as u64;
    }
    f.flush()?;
    Ok(total)
}

/// Reads `path` whole (small files: configs, the environment block).
pub fn read_file(fs: &Fs<'_>, path: &str) -> std::io::Result<Vec<u8>> {
    let mut f = fs.root_dir().open_file(path)?;
    let mut out = Vec::new();
    f.read_to_end(&mut out)?;
    Ok(out)
}

/// Overwrites the first bytes of an existing file in place (no allocation, no size change):
/// how GRUB itself rewrites `grubenv`.
pub fn overwrite_in_place(fs: &Fs<'_>, path: &str, data: &[u8]) -> std::io::Result<()> {
    let mut f = fs.root_dir().open_file(path)?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(data)?;
    f.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What we format and write, Linux's own FAT checker and mtools read back.
    #[test]
    fn a_formatted_window_holds_files_fsck_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(40 << 20).unwrap();
        // A 32 MiB partition at 4 MiB.
        format(Window::new(&f, 4 << 20, 32 << 20), *b"BASALT-A   ", 4096).unwrap();
        {
            let fs = open(Window::new(&f, 4 << 20, 32 << 20)).unwrap();
            let data = vec![7u8; 3 << 20];
            assert_eq!(write_file(&fs, "vmlinuz", &mut &data[..]).unwrap(), 3 << 20);
            assert!(write_file(&fs, "a/b", &mut &data[..]).is_err());
            write_file(&fs, "grubenv", &mut &[b'#'; 1024][..]).unwrap();
            overwrite_in_place(&fs, "grubenv", b"# GRUB").unwrap();
            let back = read_file(&fs, "grubenv").unwrap();
            assert_eq!(back.len(), 1024);
            assert!(back.starts_with(b"# GRUB#"));
            fs.unmount().unwrap();
        }
        // Nothing outside the window was touched.
        let mut head = vec![0u8; 4 << 20];
        f.read_exact_at(&mut head, 0).unwrap();
        assert!(head.iter().all(|&b| b == 0));
        // The partition alone, as dosfsck sees it.
        let part = dir.path().join("part.img");
        let mut bytes = vec![0u8; 32 << 20];
        f.read_exact_at(&mut bytes, 4 << 20).unwrap();
        std::fs::write(&part, &bytes).unwrap();
        // By path: the unprivileged rerun of the tests has only /usr/bin and /bin on its PATH.
        let out = std::process::Command::new("/usr/sbin/fsck.vfat")
            .args(["-n", "-v"])
            .arg(&part)
            .output()
            .expect("fsck.vfat (dosfstools): hack/test installs it");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = std::process::Command::new("mdir")
            .args(["-i"])
            .arg(&part)
            .arg("::/")
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("vmlinuz")
                && String::from_utf8_lossy(&out.stdout).contains("BASALT-A"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
