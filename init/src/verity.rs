//! The read-only root through dm-verity: every block of `rootfs.sqsh` is checked against a
//! sha256 hash tree as it is read, the tree's root hash coming from the initramfs.
//!
//! Early init maps the loop device through the kernel's `verity` target ([`map`]) and
//! mounts the mapped device; PID 1 then reads the whole device once in the background at
//! idle priority ([`scrub`]), so a corrupted block nothing reads at boot is found too. The
//! tree is built with the image (`basalt_image::verity`, which documents the layout).
//! Device-mapper is driven with its ioctls on `/dev/mapper/control`, like `dmsetup` does.

#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::log;

/// Written by the image build: the tree's root hash and where it is.
pub const PARAMS: &str = "/etc/basalt/rootfs.verity";
/// Written by early init for PID 1: the mapped device to scrub.
pub const MAPPED: &str = "/run/basalt/rootfs.verity";
const NAME: &str = "basalt-root";
const BLOCK: u64 = 4096;

/// `/etc/basalt/rootfs.verity`: `key value` lines, `#` comments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub data_blocks: u64,
    pub hash_start: u64,
    pub root_hash: String,
    pub salt: String,
}

#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error("{PARAMS} line {line}: {why}")]
    Params { line: usize, why: String },
    #[error("cannot open {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("device-mapper {step} of {NAME} failed{kernel}")]
    Ioctl {
        step: &'static str,
        kernel: String,
        #[source]
        source: nix::Error,
    },
}

impl Params {
    pub fn parse(text: &str) -> Result<Params, VerityError> {
        let (mut blocks, mut start, mut root, mut salt) = (None, None, None, None);
        for (i, l) in text.lines().enumerate() {
            let bad = |why: String| VerityError::Params { line: i + 1, why };
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (k, v) = l
                .split_once(' ')
                .ok_or_else(|| bad(format!("{l:?} is not `key value`")))?;
            let v = v.trim();
            let num = || {
                v.parse::<u64>()
                    .map_err(|_| bad(format!("{k}: {v:?} is not a number")))
            };
            let hex = || match v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
                true => Ok(v.to_ascii_lowercase()),
                false => Err(bad(format!("{k}: {v:?} is not 64 hex digits (a sha256)"))),
            };
            match k {
                "data_blocks" => blocks = Some(num()?),
                "hash_start" => start = Some(num()?),
                "root_hash" => root = Some(hex()?),
                "salt" => salt = Some(hex()?),
                _ => return Err(bad(format!("unknown key {k:?}"))),
            }
        }
        let missing = |k: &str| VerityError::Params {
            line: text.lines().count(),
            why: format!("{k} is missing"),
        };
        let p = Params {
            data_blocks: blocks.ok_or_else(|| missing("data_blocks"))?,
            hash_start: start.ok_or_else(|| missing("hash_start"))?,
            root_hash: root.ok_or_else(|| missing("root_hash"))?,
            salt: salt.ok_or_else(|| missing("salt"))?,
        };
        if p.data_blocks == 0 || p.hash_start < p.data_blocks {
            return Err(missing("a tree after at least one data block"));
        }
        Ok(p)
    }

    /// The `verity` target's table line for `dev` as both data and hash device.
    fn table(&self, dev: &str) -> String {
        format!(
            "1 {dev} {dev} {BLOCK} {BLOCK} {} {} sha256 {} {}",
            self.data_blocks, self.hash_start, self.root_hash, self.salt
        )
    }

    pub fn data_bytes(&self) -> u64 {
        self.data_blocks * BLOCK
    }
}

// <linux/dm-ioctl.h>: struct dm_ioctl is 312 bytes; struct dm_target_spec 40.
const IOCTL_SIZE: usize = 312;
const SPEC_SIZE: usize = 40;
const DM_READONLY_FLAG: u32 = 1;
const DM_DEV_CREATE: u8 = 3;
const DM_DEV_SUSPEND: u8 = 6;
const DM_TABLE_LOAD: u8 = 9;

nix::ioctl_readwrite_bad!(
    dm_create,
    nix::request_code_readwrite!(0xfd, DM_DEV_CREATE, IOCTL_SIZE),
    u8
);
nix::ioctl_readwrite_bad!(
    dm_suspend,
    nix::request_code_readwrite!(0xfd, DM_DEV_SUSPEND, IOCTL_SIZE),
    u8
);
nix::ioctl_readwrite_bad!(
    dm_load,
    nix::request_code_readwrite!(0xfd, DM_TABLE_LOAD, IOCTL_SIZE),
    u8
);

/// A `struct dm_ioctl` for the device [`NAME`] with `extra` bytes of data after it.
fn header(flags: u32, targets: u32, extra: &[u8]) -> Vec<u8> {
    // Room for the kernel's answer, which it writes into the same buffer.
    let size = (IOCTL_SIZE + extra.len()).max(16 * 1024);
    let mut b = vec![0u8; size];
    let put = |b: &mut [u8], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    put(&mut b, 0, 4); // version 4.0.0: any kernel since 2.6
    put(&mut b, 12, size as u32); // data_size
    put(&mut b, 16, IOCTL_SIZE as u32); // data_start
    put(&mut b, 20, targets);
    put(&mut b, 28, flags);
    b[48..48 + NAME.len()].copy_from_slice(NAME.as_bytes());
    b[IOCTL_SIZE..IOCTL_SIZE + extra.len()].copy_from_slice(extra);
    b
}

/// The verity lines the kernel logged since boot (what it found wrong), for error messages.
pub fn kernel_says() -> String {
    let mut lines: Vec<String> = Vec::new();
    for (_, text) in crate::log::kernel_log().unwrap_or_default() {
        // The kernel's own lines ("device-mapper: verity: 7:0: data block 42 is corrupted"),
        // each once, not ours that mention verity.
        if text.starts_with("device-mapper:")
            && text.contains("verity")
            && !text.contains("using implementation")
            && !lines.contains(&text)
        {
            lines.push(text);
        }
    }
    match lines.is_empty() {
        true => String::new(),
        false => format!(" (kernel: {})", lines.join("; ")),
    }
}

/// Maps `dev` (the loop device of rootfs.sqsh: data, then its tree) through dm-verity and
/// returns the mapped device's path. Nothing is read yet: the root hash is checked with the
/// first block read (the mount's superblock).
pub fn map(p: &Params, dev: &Path) -> Result<PathBuf, VerityError> {
    let rdev = std::fs::metadata(dev)
        .map_err(|source| VerityError::Open {
            path: dev.display().to_string(),
            source,
        })?
        .rdev();
    let majmin = format!(
        "{}:{}",
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev)
    );
    let ctl_path = "/dev/mapper/control";
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open(ctl_path)
        .map_err(|source| VerityError::Open {
            path: ctl_path.into(),
            source,
        })?;
    let fd = ctl.as_raw_fd();
    let fail = |step| {
        move |source| VerityError::Ioctl {
            step,
            kernel: kernel_says(),
            source,
        }
    };
    let mut b = header(0, 0, &[]);
    // SAFETY: `b` is a dm_ioctl header followed by its data, `data_size` bytes in all, as the
    // ioctl expects; the kernel writes its answer within those bytes.
    unsafe { dm_create(fd, b.as_mut_ptr()) }.map_err(fail("create"))?;
    let devno = u64::from_ne_bytes(b[40..48].try_into().unwrap_or_default());
    // The kernel's huge_encode_dev: minor's low byte, major, then minor's high bits.
    let minor = (devno & 0xff) | ((devno >> 12) & 0xfff00);

    let params = p.table(&majmin);
    let mut spec = vec![0u8; SPEC_SIZE];
    spec[8..16].copy_from_slice(&(p.data_blocks * (BLOCK / 512)).to_ne_bytes()); // sectors
    let next = (SPEC_SIZE + params.len() + 1).div_ceil(8) * 8;
    spec[20..24].copy_from_slice(&(next as u32).to_ne_bytes());
    spec[24..30].copy_from_slice(b"verity");
    spec.extend_from_slice(params.as_bytes());
    spec.resize(next, 0);
    let mut b = header(DM_READONLY_FLAG, 1, &spec);
    // SAFETY: as above; the data is one dm_target_spec and its NUL-terminated parameters.
    unsafe { dm_load(fd, b.as_mut_ptr()) }.map_err(fail("table load (verity)"))?;
    let mut b = header(0, 0, &[]);
    // SAFETY: as above. DM_DEV_SUSPEND without DM_SUSPEND_FLAG resumes: the table goes live.
    unsafe { dm_suspend(fd, b.as_mut_ptr()) }.map_err(fail("resume"))?;
    Ok(PathBuf::from(format!("/dev/dm-{minor}")))
}

/// What [`scrub`] found.
#[derive(Debug)]
pub enum Scrub {
    /// Every block read and matched the tree.
    Clean { bytes: u64, took: Duration },
    /// The block at `offset` failed its read: dm-verity found it does not match the tree
    /// (the kernel's line says which block).
    Mismatch { offset: u64, kernel: String },
    /// The device could not be read for another reason.
    Failed(std::io::Error),
}

/// Reads all of `device` (`bytes` long) once, at idle priority, dropping what it read from
/// the page cache as it goes; the kernel checks each block against the tree.
pub fn scrub(device: &Path, bytes: u64) -> Scrub {
    // SAFETY: sched_setscheduler on this thread (pid 0) with a valid param struct; SCHED_IDLE
    // takes priority 0. It fails harmlessly if the kernel refuses.
    unsafe {
        let param = nix::libc::sched_param { sched_priority: 0 };
        nix::libc::sched_setscheduler(0, nix::libc::SCHED_IDLE, &param);
    }
    let t = Instant::now();
    let f = match File::open(device) {
        Ok(f) => f,
        Err(e) => return Scrub::Failed(e),
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < bytes {
        let want = buf.len().min((bytes - off) as usize);
        match f.read_at(&mut buf[..want], off) {
            Ok(0) => break,
            Ok(n) => {
                let _ = nix::fcntl::posix_fadvise(
                    &f,
                    off as i64,
                    n as i64,
                    nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                );
                off += n as u64;
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => {
                // Find the block: read this chunk block by block.
                let mut at = off;
                while at < off + want as u64 {
                    if f.read_at(&mut buf[..BLOCK as usize], at).is_err() {
                        break;
                    }
                    at += BLOCK;
                }
                return Scrub::Mismatch {
                    offset: at,
                    kernel: kernel_says(),
                };
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Scrub::Failed(e),
        }
    }
    Scrub::Clean {
        bytes: off,
        took: t.elapsed(),
    }
}

/// Records the mapped device for PID 1's scrub.
pub fn record(device: &Path, p: &Params) -> std::io::Result<()> {
    std::fs::create_dir_all("/run/basalt")?;
    std::fs::write(
        MAPPED,
        format!("{} {} {}\n", device.display(), p.data_bytes(), p.root_hash),
    )
}

/// PID 1: if early init mapped the root through dm-verity, scrub it on a thread of its own;
/// a mismatch stops the node (it logs which block and reboots after `reboot_delay`).
pub fn start_scrub(reboot_delay: u64) {
    let Ok(text) = std::fs::read_to_string(MAPPED) else {
        return;
    };
    let mut it = text.split_whitespace();
    let (Some(dev), Some(Ok(bytes)), Some(root)) =
        (it.next(), it.next().map(str::parse::<u64>), it.next())
    else {
        log::line(&format!(
            "{MAPPED} is not `device bytes root-hash`: no scrub"
        ));
        return;
    };
    let (dev, root) = (PathBuf::from(dev), root.to_string());
    let spawned = std::thread::Builder::new()
        .name("rootfs-scrub".into())
        .spawn(move || match scrub(&dev, bytes) {
            Scrub::Clean { bytes, took } => log::line(&format!(
                "rootfs scrubbed: all {} KiB match root hash {} ({} ms)",
                bytes / 1024,
                &root[..16],
                took.as_millis()
            )),
            Scrub::Mismatch { offset, kernel } => {
                log::line(&format!(
                    "FATAL: rootfs.sqsh checksum mismatch: the block at byte {offset} does not match dm-verity root hash {root}{kernel}"
                ));
                crate::early::fatal_reboot(reboot_delay)
            }
            Scrub::Failed(e) => log::line(&format!(
                "rootfs scrub stopped: cannot read {}: {e}",
                dev.display()
            )),
        });
    if let Err(e) = spawned {
        log::line(&format!("rootfs scrub not started: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "5f4c0deac3777b71a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3";

    #[test]
    fn params_parse_and_make_the_table() {
        let text = format!(
            "# comment\ndata_blocks 8551\nhash_start 8551\nroot_hash {ROOT}\nsalt {}\n",
            ROOT.to_uppercase()
        );
        let p = Params::parse(&text).unwrap();
        assert_eq!(p.data_bytes(), 8551 * 4096);
        assert_eq!(
            p.table("7:0"),
            format!("1 7:0 7:0 4096 4096 8551 8551 sha256 {ROOT} {ROOT}")
        );
    }

    #[test]
    fn bad_params_name_the_line() {
        let e = Params::parse("data_blocks 10\nroot_hash abc\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("64 hex digits"), "{e}");
        let e = Params::parse(&format!("data_blocks 10\nroot_hash {ROOT}\nsalt {ROOT}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hash_start is missing"), "{e}");
        let e = Params::parse("size 3\n").unwrap_err().to_string();
        assert!(e.contains("line 1: unknown key \"size\""), "{e}");
    }

    #[test]
    fn the_ioctl_header_is_the_kernels_layout() {
        let b = header(DM_READONLY_FLAG, 1, b"xyz");
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), 4);
        assert_eq!(
            u32::from_ne_bytes(b[12..16].try_into().unwrap()) as usize,
            b.len()
        );
        assert_eq!(u32::from_ne_bytes(b[16..20].try_into().unwrap()), 312);
        assert_eq!(u32::from_ne_bytes(b[20..24].try_into().unwrap()), 1);
        assert_eq!(u32::from_ne_bytes(b[28..32].try_into().unwrap()), 1);
        assert_eq!(&b[48..59], b"basalt-root");
        assert_eq!(&b[312..315], b"xyz");
    }
}
