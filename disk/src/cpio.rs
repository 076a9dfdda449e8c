//! A `newc` cpio writer for initramfs archives (the image build's, and the slots' `rootfs.img`
//! an install streams): entries sorted by path, fixed mtime, owner
//! root, inode numbers by position — the same inputs always give the same bytes.

use std::collections::BTreeMap;
use std::io::Write;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir,
    File {
        data: Vec<u8>,
        executable: bool,
    },
    Symlink(String),
    /// A character device (major, minor), e.g. `/dev/console` (5, 1).
    CharDev(u32, u32),
}

/// An archive being assembled; parents of every entry are added as directories.
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `entry` at `path` (absolute or relative; stored relative, without leading `/`).
    pub fn add(&mut self, path: &str, entry: Entry) {
        let path = path
            .trim_start_matches('/')
            .trim_end_matches('/')
            .to_string();
        let mut parent = path.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            self.entries.entry(p.to_string()).or_insert(Entry::Dir);
            parent = p;
        }
        self.entries.insert(path, entry);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the archive with every mtime set to `mtime`.
    pub fn write(&self, out: &mut (impl Write + ?Sized), mtime: u32) -> std::io::Result<()> {
        let mut written = 0usize;
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
                Entry::Dir => (0o040_755, &[], (0, 0)),
                Entry::File { data, executable } => (
                    if *executable { 0o100_755 } else { 0o100_644 },
                    data,
                    (0, 0),
                ),
                Entry::Symlink(target) => (0o120_777, target.as_bytes(), (0, 0)),
                Entry::CharDev(maj, min) => (0o020_600, &[], (*maj, *min)),
            };
            let nlink = if matches!(entry, Entry::Dir) { 2 } else { 1 };
            written += header(
                out,
                u32::try_from(ino).unwrap_or(u32::MAX - 1) + 1,
                mode,
                nlink,
                mtime,
                data.len(),
                rdev,
                path,
            )?;
            out.write_all(data)?;
            written += data.len();
            written += pad(out, written)?;
        }
        written += header(out, 0, 0, 1, 0, 0, (0, 0), "TRAILER!!!")?;
        pad(out, written)?;
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn header(
    out: &mut (impl Write + ?Sized),
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: usize,
    rdev: (u32, u32),
    name: &str,
) -> std::io::Result<usize> {
    let namesize = name.len() + 1;
    let h = format!(
        "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}{dmaj:08x}{dmin:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{check:08x}",
        uid = 0,
        gid = 0,
        dmaj = 0,
        dmin = 0,
        rmaj = rdev.0,
        rmin = rdev.1,
        check = 0,
    );
    out.write_all(h.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    let n = h.len() + namesize;
    Ok(n + pad(out, n)?)
}

/// The header of a regular file (mode 0644) of `size` bytes whose data the caller streams
/// after it: for archives too large to hold (a root filesystem).
pub fn stream_file(
    out: &mut (impl Write + ?Sized),
    ino: u32,
    name: &str,
    size: u64,
) -> std::io::Result<usize> {
    let size = usize::try_from(size)
        .ok()
        .filter(|&s| u32::try_from(s).is_ok())
        .ok_or_else(|| std::io::Error::other("newc cpio entries hold at most 4 GiB"))?;
    header(out, ino, 0o100_644, 1, 0, size, (0, 0), name)
}

/// Pads to a 4-byte boundary after `written` bytes of a streamed archive.
pub fn pad_to(out: &mut (impl Write + ?Sized), written: u64) -> std::io::Result<usize> {
    pad(out, (written % 4) as usize)
}

/// The end-of-archive entry of a streamed archive `written` bytes long so far.
pub fn trailer(out: &mut (impl Write + ?Sized), written: u64) -> std::io::Result<()> {
    let n = header(out, 0, 0, 1, 0, 0, (0, 0), "TRAILER!!!")?;
    pad_to(out, written + n as u64).map(|_| ())
}

/// Pads to a 4-byte boundary given `written` bytes so far; returns the padding written.
fn pad(out: &mut (impl Write + ?Sized), written: usize) -> std::io::Result<usize> {
    let p = (4 - written % 4) % 4;
    out.write_all(&[0u8; 3][..p])?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_reads_back_what_we_write() {
        let mut a = Archive::new();
        a.add(
            "/init",
            Entry::File {
                data: b"#!fake\n".to_vec(),
                executable: true,
            },
        );
        a.add(
            "/lib/modules/x/kernel/a.ko",
            Entry::File {
                data: vec![1, 2, 3],
                executable: false,
            },
        );
        a.add("/dev/console", Entry::CharDev(5, 1));
        a.add("/sbin", Entry::Symlink("bin".into()));
        let mut buf = Vec::new();
        a.write(&mut buf, 0).unwrap();
        assert_eq!(buf.len() % 4, 0);
        // Parse it back by hand: names in sorted order, parents present.
        let mut names = Vec::new();
        let mut off = 0;
        loop {
            let h = std::str::from_utf8(&buf[off..off + 110]).unwrap();
            assert_eq!(&h[..6], "070701");
            let field = |i: usize| usize::from_str_radix(&h[6 + i * 8..14 + i * 8], 16).unwrap();
            let (size, namesize) = (field(6), field(11));
            let name = std::str::from_utf8(&buf[off + 110..off + 110 + namesize - 1])
                .unwrap()
                .to_string();
            off += (110 + namesize).div_ceil(4) * 4;
            off += size.div_ceil(4) * 4;
            if name == "TRAILER!!!" {
                break;
            }
            names.push(name);
        }
        assert_eq!(
            names,
            vec![
                "dev",
                "dev/console",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/x",
                "lib/modules/x/kernel",
                "lib/modules/x/kernel/a.ko",
                "sbin"
            ]
        );
        let mut again = Vec::new();
        a.write(&mut again, 0).unwrap();
        assert_eq!(buf, again);
    }
}
