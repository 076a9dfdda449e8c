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

/// Written by the image build: the tree's root hash and where it is.
pub const PARAMS: &str = "/etc/basalt/rootfs.verity";
/// Written by early init for PID 1: the mapped device to scrub.
pub const MAPPED: &str = "/run/basalt/rootfs.verity";
const NAME: &str = "basalt-root";
const BLOCK_SIZE: usize = 4096;
const BLOCK: u64 = BLOCK_SIZE as u64;

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

const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;
const DM_MAX_TYPE_NAME: usize = 16;
const DM_READONLY_FLAG: u32 = 1;
const DM_DEV_CREATE: u8 = 3;
const DM_DEV_SUSPEND: u8 = 6;
const DM_TABLE_LOAD: u8 = 9;
/// Room for the kernel's answer, which it writes into the same buffer.
const ANSWER_ROOM: usize = 16 * 1024;

/// `struct dm_ioctl` of `<linux/dm-ioctl.h>`: the header of every device-mapper ioctl.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmIoctl {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; DM_NAME_LEN],
    uuid: [u8; DM_UUID_LEN],
    data: [u8; 7],
}

/// `struct dm_target_spec`: one target of a table, its parameters following it.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmTargetSpec {
    sector_start: u64,
    length: u64,
    status: i32,
    next: u32,
    target_type: [u8; DM_MAX_TYPE_NAME],
}

/// A request with no table: the header, then room for the answer.
#[repr(C)]
struct Plain {
    header: DmIoctl,
    room: [u8; ANSWER_ROOM],
}

/// A table load of one target: the header, the target and its NUL-terminated parameters.
#[repr(C)]
struct Load {
    header: DmIoctl,
    spec: DmTargetSpec,
    params: [u8; ANSWER_ROOM],
}

nix::ioctl_readwrite!(dm_create, 0xfd, DM_DEV_CREATE, DmIoctl);
nix::ioctl_readwrite!(dm_suspend, 0xfd, DM_DEV_SUSPEND, DmIoctl);
nix::ioctl_readwrite!(dm_load, 0xfd, DM_TABLE_LOAD, DmIoctl);

/// The header for the device [`NAME`], `size` bytes in all with its data at `data_start`.
fn header(flags: u32, targets: u32, size: usize, data_start: usize) -> DmIoctl {
    let mut name = [0u8; DM_NAME_LEN];
    name[..NAME.len()].copy_from_slice(NAME.as_bytes());
    DmIoctl {
        // 4.0.0: any kernel since 2.6.
        version: [4, 0, 0],
        data_size: u32::try_from(size).unwrap_or(u32::MAX),
        data_start: u32::try_from(data_start).unwrap_or(u32::MAX),
        target_count: targets,
        open_count: 0,
        flags,
        event_nr: 0,
        padding: 0,
        dev: 0,
        name,
        uuid: [0; DM_UUID_LEN],
        data: [0; 7],
    }
}

fn plain() -> Box<Plain> {
    Box::new(Plain {
        header: header(
            0,
            0,
            std::mem::size_of::<Plain>(),
            std::mem::size_of::<DmIoctl>(),
        ),
        room: [0; ANSWER_ROOM],
    })
}

/// The table load of the `verity` target over `p.data_blocks`, with `params` as its line.
fn load(p: &Params, params: &str) -> Box<Load> {
    let mut target_type = [0u8; DM_MAX_TYPE_NAME];
    target_type[..6].copy_from_slice(b"verity");
    let mut l = Box::new(Load {
        header: header(
            DM_READONLY_FLAG,
            1,
            std::mem::size_of::<Load>(),
            std::mem::offset_of!(Load, spec),
        ),
        spec: DmTargetSpec {
            sector_start: 0,
            length: p.data_blocks * (BLOCK / 512),
            status: 0,
            // The offset of the next spec from this one's start: past the parameters and
            // their NUL, aligned to 8. There is no next; the kernel checks it stays in bounds.
            next: u32::try_from(
                (std::mem::size_of::<DmTargetSpec>() + params.len() + 1).div_ceil(8) * 8,
            )
            .unwrap_or(u32::MAX),
            target_type,
        },
        params: [0; ANSWER_ROOM],
    });
    let n = params.len().min(ANSWER_ROOM - 1);
    l.params[..n].copy_from_slice(&params.as_bytes()[..n]);
    l
}

/// The verity lines the kernel logged since boot (what it found wrong), for error messages.
pub fn kernel_says() -> String {
    let mut lines: Vec<String> = Vec::new();
    for (_, text) in crate::kmsg::records().unwrap_or_default() {
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
    let mut req = plain();
    // SAFETY: `req` is a dm_ioctl header followed by room for the answer, `data_size` bytes in
    // all, as the ioctl expects; the kernel writes its answer within those bytes.
    unsafe { dm_create(fd, &mut req.header) }.map_err(fail("create"))?;
    let devno = req.header.dev;
    // The kernel's huge_encode_dev: minor's low byte, major, then minor's high bits.
    let minor = (devno & 0xff) | ((devno >> 12) & 0xfff00);

    let params = p.table(&majmin);
    if params.len() >= ANSWER_ROOM {
        return Err(VerityError::Params {
            line: 0,
            why: format!("the table line is {} bytes, too long", params.len()),
        });
    }
    let mut req = load(p, &params);
    // SAFETY: as above; the data is one dm_target_spec and its NUL-terminated parameters,
    // all inside the `data_size` bytes of `req`.
    unsafe { dm_load(fd, &mut req.header) }.map_err(fail("table load (verity)"))?;
    let mut req = plain();
    // SAFETY: as above. DM_DEV_SUSPEND without DM_SUSPEND_FLAG resumes: the table goes live.
    unsafe { dm_suspend(fd, &mut req.header) }.map_err(fail("resume"))?;
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
    crate::process::idle_priority();
    let t = Instant::now();
    let f = match File::open(device) {
        Ok(f) => f,
        Err(e) => return Scrub::Failed(e),
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < bytes {
        let want = usize::try_from(bytes - off).map_or(buf.len(), |left| buf.len().min(left));
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
                    if f.read_at(&mut buf[..BLOCK_SIZE], at).is_err() {
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

/// Written by early init for an install: the loop device holding the rootfs with its tree.
pub const SOURCE: &str = "/run/basalt/rootfs.source";
/// Written by early init for an install: a copy of [`PARAMS`] (the initramfs is gone after
/// the switch).
pub const RECORDED_PARAMS: &str = "/run/basalt/rootfs.params";

/// Records the mapped device for PID 1's scrub, and the loop device and parameters for an
/// install (which copies the running root to a disk).
pub fn record(device: &Path, backing: &Path, p: &Params) -> std::io::Result<()> {
    std::fs::create_dir_all("/run/basalt")?;
    std::fs::write(
        MAPPED,
        format!("{} {} {}\n", device.display(), p.data_bytes(), p.root_hash),
    )?;
    std::fs::write(SOURCE, format!("{}\n", backing.display()))?;
    std::fs::copy(PARAMS, RECORDED_PARAMS).map(|_| ())
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
    fn the_ioctl_structures_are_the_kernels_layout() {
        use std::mem::{offset_of, size_of};
        // <linux/dm-ioctl.h>, x86_64.
        assert_eq!(size_of::<DmIoctl>(), 312);
        assert_eq!(offset_of!(DmIoctl, data_size), 12);
        assert_eq!(offset_of!(DmIoctl, data_start), 16);
        assert_eq!(offset_of!(DmIoctl, target_count), 20);
        assert_eq!(offset_of!(DmIoctl, flags), 28);
        assert_eq!(offset_of!(DmIoctl, dev), 40);
        assert_eq!(offset_of!(DmIoctl, name), 48);
        assert_eq!(offset_of!(DmIoctl, uuid), 176);
        assert_eq!(size_of::<DmTargetSpec>(), 40);
        assert_eq!(offset_of!(DmTargetSpec, length), 8);
        assert_eq!(offset_of!(DmTargetSpec, next), 20);
        assert_eq!(offset_of!(DmTargetSpec, target_type), 24);
        // The data follows the header directly, and the parameters the target.
        assert_eq!(offset_of!(Load, spec), 312);
        assert_eq!(offset_of!(Load, params), 352);
        assert_eq!(offset_of!(Plain, room), 312);
    }

    #[test]
    fn a_table_load_names_the_device_and_its_target() {
        let p = Params::parse(&format!(
            "data_blocks 8\nhash_start 8\nroot_hash {ROOT}\nsalt {ROOT}\n"
        ))
        .unwrap();
        let line = p.table("7:0");
        let l = load(&p, &line);
        assert_eq!(l.header.version, [4, 0, 0]);
        assert_eq!(l.header.data_size as usize, std::mem::size_of::<Load>());
        assert_eq!(l.header.data_start, 312);
        assert_eq!(l.header.target_count, 1);
        assert_eq!(l.header.flags, DM_READONLY_FLAG);
        assert_eq!(&l.header.name[..11], b"basalt-root");
        assert_eq!(l.header.name[11], 0);
        assert_eq!(&l.spec.target_type[..7], b"verity\0");
        assert_eq!(l.spec.length, 8 * 8);
        assert_eq!(&l.params[..line.len()], line.as_bytes());
        assert_eq!(l.params[line.len()], 0);
        assert_eq!(l.spec.next as usize % 8, 0);
        assert!(l.spec.next as usize > 40 + line.len());
    }
}
