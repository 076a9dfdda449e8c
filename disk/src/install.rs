//! Installing a node to a disk, and writing a boot slot.
//!
//! The node installs the image it is running: the kernel, the base initramfs and GRUB's
//! images ride in its root (the boot kit, [`Kit`]), and the root itself is the loop device
//! early init attached (the SquashFS with its dm-verity tree), with its verity parameters.
//! A slot's `rootfs.img` is a cpio archive of `rootfs.sqsh` and `etc/basalt/rootfs.verity`
//! that GRUB loads after the base initramfs — the kernel unpacks both, and early init boots
//! exactly as from the ISO.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::fat::{self, Window};
use crate::gpt::{self, Table};
use crate::grub::{self, Env};
use crate::layout::{self, Slot};

/// Where the boot kit lives in the root.
pub const KIT_DIR: &str = "/usr/lib/basalt/boot";

/// The boot kit: what an image carries to install itself.
#[derive(Debug, Clone)]
pub struct Kit {
    pub dir: PathBuf,
}

impl Kit {
    pub fn new(dir: impl Into<PathBuf>) -> Kit {
        Kit { dir: dir.into() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, InstallError> {
        let p = self.path(name);
        std::fs::read(&p).map_err(|source| InstallError::Kit { path: p, source })
    }

    fn open(&self, name: &str) -> Result<File, InstallError> {
        let p = self.path(name);
        File::open(&p).map_err(|source| InstallError::Kit { path: p, source })
    }
}

/// The kit's files: (name in the kit, what it is).
pub const KIT_FILES: &[(&str, &str)] = &[
    ("vmlinuz", "the kernel"),
    (
        "initramfs.img",
        "the base initramfs: early init and the boot modules",
    ),
    ("grub/boot.img", "GRUB's MBR boot code (i386-pc)"),
    (
        "grub/core.img",
        "GRUB's BIOS core image, prefix (,gpt2)/grub",
    ),
    (
        "efi.img",
        "the EFI partition (FAT, made by mtools): GRUB for UEFI, prefix (,gpt2)/grub, and grub.cfg",
    ),
];

/// What goes into a boot slot.
#[derive(Debug, Clone)]
pub struct SlotImage {
    pub kit: Kit,
    /// The SquashFS with its dm-verity tree: the running root's loop device, or a file.
    pub rootfs: PathBuf,
    /// The text of `rootfs.verity` (root hash, salt, sizes) for `rootfs`.
    pub verity: String,
    /// The kernel command line the slot boots with (GRUB adds `basalt.slot=`).
    pub cmdline: String,
    /// The version the slot holds, shown by `osctl version`.
    pub version: String,
}

/// What a disk holds, as far as installing cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contents {
    /// No partition table or filesystem signature.
    Blank,
    /// Basalt's layout.
    Basalt(Table),
    /// Something else, described.
    Other(String),
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot open {disk}")]
    Open {
        disk: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{disk} is not a whole disk (a partition, or not a block device)")]
    NotADisk { disk: PathBuf },
    #[error("{disk} holds {what}; set install.wipe: true to install over it")]
    NotBlank { disk: PathBuf, what: String },
    #[error("{disk}")]
    TooSmall {
        disk: PathBuf,
        #[source]
        source: layout::TooSmall,
    },
    #[error("the boot kit's {path} is missing or unreadable (an image built without it?)")]
    Kit {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {step} on {disk}")]
    Write {
        step: String,
        disk: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the partition table of {disk}")]
    Gpt {
        disk: PathBuf,
        #[source]
        source: gpt::GptError,
    },
    #[error("GRUB")]
    Grub(#[from] grub::GrubError),
    #[error("{disk} does not hold Basalt's layout")]
    NotInstalled { disk: PathBuf },
    #[error("more than one disk holds Basalt's layout: {}", .0.join(", "))]
    Ambiguous(Vec<String>),
    #[error("partition {n} of {disk} did not appear under /sys/class/block within {secs} s")]
    NoPartition { disk: PathBuf, n: u32, secs: u64 },
    #[error("mke2fs {label} on {dev} failed: {why}")]
    Mkfs {
        label: &'static str,
        dev: PathBuf,
        why: String,
    },
}

fn write_err(step: impl Into<String>, disk: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let (step, disk) = (step.into(), disk.to_path_buf());
    move |source| InstallError::Write { step, disk, source }
}

/// What `disk` holds: Basalt's layout, nothing, or what else (partition table or
/// filesystem signatures, named).
pub fn contents(disk: &mut File) -> std::io::Result<Contents> {
    if let Ok(t) = gpt::read(disk) {
        if layout::is_basalt(&t) {
            return Ok(Contents::Basalt(t));
        }
        let names: Vec<String> = t
            .partitions
            .iter()
            .map(|p| match p.name.is_empty() {
                true => "(unnamed)".to_string(),
                false => p.name.clone(),
            })
            .collect();
        return Ok(Contents::Other(format!(
            "a GPT partition table with {} partitions ({})",
            names.len(),
            names.join(", ")
        )));
    }
    let mut head = vec![0u8; 64 * 1024];
    let n = read_up_to(disk, &mut head, 0)?;
    head.truncate(n);
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    let what = if at(0x438, &[0x53, 0xef]) {
        Some("an ext2/3/4 filesystem")
    } else if at(0, b"XFSB") {
        Some("an XFS filesystem")
    } else if at(0x8001, b"CD001") {
        Some("an ISO 9660 filesystem")
    } else if at(0, b"LUKS\xba\xbe") {
        Some("a LUKS volume")
    } else if at(0x218, b"LABELONE") || at(0x18, b"LABELONE") {
        Some("an LVM physical volume")
    } else if at(0xff6, b"SWAPSPACE2") {
        Some("swap space")
    } else if at(0x52, b"FAT32") || at(0x36, b"FAT1") {
        Some("a FAT filesystem")
    } else if at(0x1fe, &[0x55, 0xaa])
        && head
            .get(0x1be..0x1fe)
            .is_some_and(|p| p.iter().any(|&b| b != 0))
    {
        Some("an MBR partition table")
    } else if at(0x200, b"EFI PART") {
        Some("a damaged GPT partition table")
    } else {
        None
    };
    Ok(match what {
        Some(w) => Contents::Other(w.to_string()),
        None => Contents::Blank,
    })
}

fn read_up_to(f: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], at + n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Opens `disk` for installing: a whole disk (or, in tests, a regular file), exclusively —
/// a disk with a mounted filesystem fails here (EBUSY).
pub fn open_disk(disk: &Path) -> Result<File, InstallError> {
    use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
    let open_err = |source| InstallError::Open {
        disk: disk.to_path_buf(),
        source,
    };
    let md = std::fs::metadata(disk).map_err(open_err)?;
    if md.file_type().is_block_device() {
        let name = disk.file_name().unwrap_or_default();
        let sys = Path::new("/sys/class/block").join(name);
        if sys.join("partition").exists() {
            return Err(InstallError::NotADisk {
                disk: disk.to_path_buf(),
            });
        }
    } else if !md.is_file() {
        return Err(InstallError::NotADisk {
            disk: disk.to_path_buf(),
        });
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(if md.is_file() { 0 } else { nix::libc::O_EXCL })
        .open(disk)
        .map_err(open_err)
}

/// Checks `disk` can be installed to: big enough, and blank or `wipe`. Returns its size.
pub fn check(disk: &Path, wipe: bool) -> Result<u64, InstallError> {
    let mut f = open_disk(disk)?;
    let size = basalt_sys::blockdev::size(&f).map_err(write_err("read the size", disk))?;
    layout::table(size).map_err(|source| InstallError::TooSmall {
        disk: disk.to_path_buf(),
        source,
    })?;
    match contents(&mut f).map_err(write_err("read", disk))? {
        Contents::Blank => Ok(size),
        _ if wipe => Ok(size),
        Contents::Basalt(_) => Err(InstallError::NotBlank {
            disk: disk.to_path_buf(),
            what: "a Basalt installation".into(),
        }),
        Contents::Other(what) => Err(InstallError::NotBlank {
            disk: disk.to_path_buf(),
            what,
        }),
    }
}

/// Zeroes `len` bytes at `at`.
fn zero(f: &File, at: u64, len: u64, disk: &Path) -> Result<(), InstallError> {
    let buf = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < len {
        let n = usize::try_from(len - done).map_or(buf.len(), |left| left.min(buf.len()));
        f.write_all_at(&buf[..n], at + done)
            .map_err(write_err("clear old signatures", disk))?;
        done += n as u64;
    }
    Ok(())
}

/// Cluster sizes: the slots hold a few large files (32 KiB clusters keep the FAT small and
/// GRUB's reads long); the EFI partition and META hold small ones.
const SLOT_CLUSTER: u32 = 32 * 1024;
const SMALL_CLUSTER: u32 = 4096;

/// How a program is run to completion: `Command::output` on a host; through PID 1's reaper
/// on a node (which would otherwise take the child's exit first).
pub type Runner<'a> =
    &'a dyn Fn(&mut std::process::Command) -> std::io::Result<std::process::Output>;

/// Lays the layout onto `disk` and installs `image` into slot A, which boots next; formats
/// STATE and EPHEMERAL (with `mke2fs`, at `mke2fs`, run by `run`). Returns the STATE
/// partition's device, for the caller to keep the config on. `disk` must have passed
/// [`check`].
pub fn install(
    disk: &Path,
    image: &SlotImage,
    mke2fs: &Path,
    run: Runner<'_>,
    progress: &dyn Fn(&str),
) -> Result<PathBuf, InstallError> {
    let f = open_disk(disk)?;
    let size = basalt_sys::blockdev::size(&f).map_err(write_err("read the size", disk))?;
    let table = layout::table(size).map_err(|source| InstallError::TooSmall {
        disk: disk.to_path_buf(),
        source,
    })?;
    // Old signatures go: the ends of the disk (tables) and the start of every partition (a
    // filesystem that would be found by its label after the install).
    zero(&f, 0, layout::MIB, disk)?;
    zero(&f, size - layout::MIB, layout::MIB, disk)?;
    for p in &table.partitions {
        zero(&f, p.start_bytes(), p.len_bytes().min(layout::MIB), disk)?;
    }
    let bios = &table.partitions[layout::BIOS.number as usize - 1];
    let code = grub::bios_boot_code(&image.kit.read("grub/boot.img")?, bios.first_lba)?;
    let core = grub::bios_core(
        &image.kit.read("grub/core.img")?,
        bios.first_lba,
        bios.last_lba + 1 - bios.first_lba,
    )?;
    f.write_all_at(&core, bios.start_bytes())
        .map_err(write_err("write GRUB's core image", disk))?;

    // EFI: GRUB for UEFI and the one grub.cfg, a FAT image made with the image.
    let efi = image.kit.read("efi.img")?;
    let efi_part = &table.partitions[layout::EFI.number as usize - 1];
    if efi.len() as u64 > efi_part.len_bytes() {
        return Err(InstallError::Kit {
            path: image.kit.path("efi.img"),
            source: std::io::Error::other("larger than the EFI partition"),
        });
    }
    f.write_all_at(&efi, efi_part.start_bytes())
        .map_err(write_err("write the EFI partition", disk))?;
    progress("GRUB written (the BIOS core image and the EFI partition)");

    image.write(&f, disk, &table, Slot::A)?;
    progress("slot A written");

    fat::format(
        window(&f, &table, layout::META),
        *b"BASALT-META",
        SMALL_CLUSTER,
    )
    .map_err(write_err("format META", disk))?;
    let mut env = Env::default();
    env.set("slot", "A");
    {
        let fs =
            fat::open(window(&f, &table, layout::META)).map_err(write_err("open META", disk))?;
        fat::write_file(&fs, "grubenv", &mut &env.to_block()?[..])
            .and_then(|_| fs.unmount())
            .map_err(write_err("write META", disk))?;
    }
    // The table last: until it is written the disk has no partitions, and a power cut leaves
    // a disk that boots nothing (the ISO or PXE again), never half an install.
    gpt::write(&mut &f, size, &table, &code).map_err(|source| InstallError::Gpt {
        disk: disk.to_path_buf(),
        source,
    })?;
    f.sync_all().map_err(write_err("sync", disk))?;
    progress("partition table written (GPT: BIOS, EFI, BOOT-A, BOOT-B, META, STATE, EPHEMERAL)");
    let is_file = f.metadata().map_err(write_err("stat", disk))?.is_file();
    if !is_file {
        basalt_sys::blockdev::reread_partitions(&f)
            .map_err(write_err("re-read the partition table", disk))?;
    }
    // mke2fs opens its partition exclusively, which our exclusive hold of the disk forbids.
    drop(f);
    let mkfs = |p, label| mkfs(disk, p, label, mke2fs, run, is_file, &table);
    let state = mkfs(layout::STATE, layout::STATE_LABEL)?;
    mkfs(layout::EPHEMERAL, layout::EPHEMERAL_LABEL)?;
    progress("STATE and EPHEMERAL formatted (ext4)");
    Ok(state)
}

fn window<'a>(f: &'a File, table: &Table, p: layout::Part) -> Window<'a> {
    let part = &table.partitions[p.number as usize - 1];
    Window::new(f, part.start_bytes(), part.len_bytes())
}

/// Formats partition `p` ext4 with `label`: on its device node for a disk, or inside the
/// file at its offset for a test image.
fn mkfs(
    disk: &Path,
    p: layout::Part,
    label: &'static str,
    mke2fs: &Path,
    run: Runner<'_>,
    is_file: bool,
    table: &Table,
) -> Result<PathBuf, InstallError> {
    let part = &table.partitions[p.number as usize - 1];
    let mut c = std::process::Command::new(mke2fs);
    c.args(["-q", "-F", "-t", "ext4", "-L", label]);
    let dev = if is_file {
        c.arg("-E")
            .arg(format!("offset={}", part.start_bytes()))
            .arg(disk)
            .arg(format!("{}k", part.len_bytes() / 1024));
        disk.to_path_buf()
    } else {
        let dev = partition_device(disk, p.number, Duration::from_secs(10))?;
        c.arg(&dev);
        dev
    };
    let out = run(&mut c).map_err(|e| InstallError::Mkfs {
        label,
        dev: dev.clone(),
        why: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(InstallError::Mkfs {
            label,
            dev,
            why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(dev)
}

/// The device node of partition `n` of `disk`, waiting for the kernel to make it.
pub fn partition_device(disk: &Path, n: u32, wait: Duration) -> Result<PathBuf, InstallError> {
    let name = disk
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let deadline = Instant::now() + wait;
    loop {
        let sys = Path::new("/sys/class/block").join(&name);
        let found = std::fs::read_dir(&sys)
            .into_iter()
            .flatten()
            .flatten()
            .find(|e| {
                std::fs::read_to_string(e.path().join("partition"))
                    .is_ok_and(|s| s.trim() == n.to_string())
            });
        if let Some(e) = found {
            let dev = Path::new("/dev").join(e.file_name());
            if dev.exists() {
                return Ok(dev);
            }
        }
        if Instant::now() >= deadline {
            return Err(InstallError::NoPartition {
                disk: disk.to_path_buf(),
                n,
                secs: wait.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A slot's contents, as readers: from the running image (an install) or an upgrade bundle.
pub struct SlotFiles<'a> {
    pub vmlinuz: &'a mut dyn Read,
    pub initramfs: &'a mut dyn Read,
    /// `rootfs.img`: [`rootfs_cpio`]'s archive.
    pub rootfs: &'a mut dyn Read,
    pub cmdline: String,
    pub version: String,
}

impl std::fmt::Debug for SlotFiles<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotFiles")
            .field("version", &self.version)
            .field("cmdline", &self.cmdline)
            .finish_non_exhaustive()
    }
}

impl SlotImage {
    /// Writes this image into `slot`.
    fn write(&self, f: &File, disk: &Path, table: &Table, slot: Slot) -> Result<(), InstallError> {
        let open = |p: &Path| {
            File::open(p).map_err(|source| InstallError::Open {
                disk: p.to_path_buf(),
                source,
            })
        };
        let rootfs = open(&self.rootfs)?;
        let len = basalt_sys::blockdev::size(&rootfs).map_err(|source| InstallError::Open {
            disk: self.rootfs.clone(),
            source,
        })?;
        let mut cpio = rootfs_cpio(self.verity.as_bytes(), rootfs, len)
            .map_err(write_err("archive the root for a slot", disk))?;
        let (mut kernel, mut initramfs) =
            (self.kit.open("vmlinuz")?, self.kit.open("initramfs.img")?);
        write_slot(
            f,
            disk,
            table,
            slot,
            SlotFiles {
                vmlinuz: &mut kernel,
                initramfs: &mut initramfs,
                rootfs: &mut cpio,
                cmdline: self.cmdline.clone(),
                version: self.version.clone(),
            },
        )
    }
}

/// Writes `files` into `slot` of an installed disk: the slot's FAT is made afresh and filled;
/// nothing else on the disk is touched, so the other slot keeps booting whatever happens.
pub fn write_slot(
    f: &File,
    disk: &Path,
    table: &Table,
    slot: Slot,
    files: SlotFiles<'_>,
) -> Result<(), InstallError> {
    let part = slot.part();
    let boot_cfg = grub::slot_config(&files.cmdline, &files.version)?;
    let step = |what: &str| format!("{what} slot {slot}");
    fat::format(window(f, table, part), slot.label(), SLOT_CLUSTER)
        .map_err(write_err(step("format"), disk))?;
    let fs = fat::open(window(f, table, part)).map_err(write_err(step("open"), disk))?;
    fat::write_file(&fs, "vmlinuz", files.vmlinuz)
        .and_then(|_| fat::write_file(&fs, "initramfs.img", files.initramfs))
        .and_then(|_| fat::write_file(&fs, "rootfs.img", files.rootfs))
        // boot.cfg last: a slot without it does not boot (GRUB's `source` fails first).
        .and_then(|_| fat::write_file(&fs, "boot.cfg", &mut boot_cfg.as_bytes()))
        .and_then(|_| fs.unmount())
        .map_err(write_err(step("write"), disk))?;
    f.sync_all().map_err(write_err("sync", disk))
}

/// A reader of the cpio archive GRUB loads as the second initramfs: `etc/basalt/rootfs.verity`
/// and `rootfs.sqsh`, streamed from `rootfs`.
pub fn rootfs_cpio(verity: &[u8], rootfs: File, len: u64) -> std::io::Result<impl Read + use<>> {
    let mut head = Vec::new();
    crate::cpio::stream_file(
        &mut head,
        1,
        "etc/basalt/rootfs.verity",
        verity.len() as u64,
    )?;
    head.extend_from_slice(verity);
    let n = head.len() as u64;
    crate::cpio::pad_to(&mut head, n)?;
    crate::cpio::stream_file(&mut head, 2, "rootfs.sqsh", len)?;
    let start = head.len() as u64;
    let mut tail = Vec::new();
    crate::cpio::pad_to(&mut tail, start + len)?;
    let n = start + len + tail.len() as u64;
    crate::cpio::trailer(&mut tail, n)?;
    Ok(std::io::Cursor::new(head)
        .chain(rootfs.take(len))
        .chain(std::io::Cursor::new(tail)))
}

/// Reads META's environment block from an installed disk.
pub fn read_env(f: &File, table: &Table) -> Result<Env, InstallError> {
    let fs = fat::open(window(f, table, layout::META))
        .map_err(write_err("open META", Path::new("META")))?;
    let block =
        fat::read_file(&fs, "grubenv").map_err(write_err("read grubenv", Path::new("META")))?;
    Ok(Env::parse(&block)?)
}

/// Rewrites META's environment block in place.
pub fn write_env(f: &File, table: &Table, env: &Env) -> Result<(), InstallError> {
    let fs = fat::open(window(f, table, layout::META))
        .map_err(write_err("open META", Path::new("META")))?;
    fat::overwrite_in_place(&fs, "grubenv", &env.to_block()?)
        .map_err(write_err("write grubenv", Path::new("META")))?;
    f.sync_all().map_err(write_err("sync", Path::new("META")))
}

/// A slot's `boot.cfg`: (version, kernel command line); `None` for an empty slot.
pub fn slot_info(f: &File, table: &Table, slot: Slot) -> Option<(String, String)> {
    let fs = fat::open(window(f, table, slot.part())).ok()?;
    let cfg = fat::read_file(&fs, "boot.cfg").ok()?;
    let cfg = String::from_utf8_lossy(&cfg);
    Some((grub::slot_version(&cfg)?, grub::slot_cmdline(&cfg)?))
}

/// An installed disk, open for writing its slots and META (not exclusively: STATE and
/// EPHEMERAL stay mounted; nothing else touches the slots).
#[derive(Debug)]
pub struct Installed {
    pub disk: PathBuf,
    pub file: File,
    pub table: Table,
}

/// The disk holding Basalt's layout among the whole disks under `class_block`
/// (`/sys/class/block`); an error when there is none or more than one.
pub fn find_installed(class_block: &Path) -> Result<Installed, InstallError> {
    let mut names: Vec<String> = std::fs::read_dir(class_block)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.path().join("partition").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram") && !n.starts_with("dm-"))
        .collect();
    names.sort();
    let mut found = Vec::new();
    for n in names {
        let disk = Path::new("/dev").join(&n);
        let Ok(mut file) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk)
        else {
            continue;
        };
        if let Ok(table) = gpt::read(&mut file)
            && layout::is_basalt(&table)
        {
            found.push(Installed { disk, file, table });
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(InstallError::NotInstalled {
            disk: PathBuf::from("(no disk)"),
        }),
        _ => Err(InstallError::Ambiguous(
            found.iter().map(|i| i.disk.display().to_string()).collect(),
        )),
    }
}
