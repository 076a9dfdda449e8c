//! `basalt-early`: the initramfs's `/init`, early boot as PID 1 in the initramfs — mount the
//! pseudo-filesystems, load the boot modules, verify and mount the read-only root,
//! `switch_root`, exec `/sbin/init`.
//!
//! Why a binary of its own: the kernel unpacks the initramfs and GRUB reads it on every boot,
//! and both steps are paid per byte, so this carries none of PID 1's API, controllers, TLS,
//! async runtime or Kubernetes code. It must stay that way: no tokio, a few MB at most. Its
//! kernel work (loop devices, dm-verity, modules, kmsg, reboot) is `basalt-sys`.
//!
//! The image build puts here: `/init` (this binary), `/lib/modules/load.order` (module files
//! in dependency order, resolved from `modules.dep` at build time), `/etc/basalt/rootfs.verity`
//! (the root hash of the rootfs's dm-verity tree) and, for ISO and PXE boots, `/rootfs.sqsh`.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use basalt_sys::cmdline::Cmdline;
use basalt_sys::modules::{LOAD_ORDER, ModuleError};
use basalt_sys::power::fatal_reboot;
use basalt_sys::{kmsg, loopdev, verity};
use nix::mount::{MsFlags, mount};

const ROOTFS: &str = "/rootfs.sqsh";
const NEWROOT: &str = "/newroot";

/// A step of early boot that failed.
#[derive(Debug, thiserror::Error)]
pub enum EarlyError {
    #[error("cannot mount {what} on {target}")]
    Mount {
        what: &'static str,
        target: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load the boot modules")]
    Modules(#[source] ModuleError),
    #[error(
        "rootfs.sqsh checksum mismatch: {what} does not match dm-verity root hash {root}{kernel}"
    )]
    Checksum {
        what: String,
        root: String,
        kernel: String,
    },
    #[error("cannot map {ROOTFS} through dm-verity")]
    Verity(#[source] verity::VerityError),
    #[error("cannot attach {ROOTFS} to a loop device")]
    Loop(#[source] std::io::Error),
    #[error("cannot switch root to {NEWROOT}: {step}")]
    SwitchRoot {
        step: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("cannot exec /sbin/init")]
    Exec(#[source] std::io::Error),
}

fn main() {
    elapsed_ms();
    let delay = match boot() {
        Ok(never) => match never {},
        Err((e, delay)) => {
            kmsg::write(
                kmsg::Level::Error,
                &format!("FATAL: {}", basalt_sys::error_chain(&e)),
            );
            delay
        }
    };
    fatal_reboot(delay)
}

/// Milliseconds since early init started.
fn elapsed_ms() -> u128 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis()
}

fn mount_fs(
    what: &'static str,
    fstype: &str,
    target: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), EarlyError> {
    let _ = std::fs::create_dir_all(target);
    mount(Some(what), target, Some(fstype), flags, data).map_err(|source| EarlyError::Mount {
        what,
        target: target.to_string(),
        source,
    })
}

enum Never {}

/// Pairs a step's error with the reboot delay in force.
fn step<T>(r: Result<T, EarlyError>, delay: u64) -> Result<T, (EarlyError, u64)> {
    r.map_err(|e| (e, delay))
}

fn boot() -> Result<Never, (EarlyError, u64)> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    // Until the command line is read, a failure reboots after the default delay.
    let mut delay = 10;
    step(mount_fs("proc", "proc", "/proc", nosuid, None), delay)?;
    step(mount_fs("sysfs", "sysfs", "/sys", nosuid, None), delay)?;
    step(
        mount_fs(
            "devtmpfs",
            "devtmpfs",
            "/dev",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        delay,
    )?;
    step(
        mount_fs(
            "tmpfs",
            "tmpfs",
            "/run",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        delay,
    )?;
    kmsg::open();
    kmsg::line("early init started");

    let text = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (cmdline, bad) = Cmdline::parse(&text);
    delay = cmdline.reboot_delay;
    for b in bad {
        kmsg::line(&format!("ignoring {b}"));
    }

    let t = Instant::now();
    let n = step(
        basalt_sys::modules::load(LOAD_ORDER).map_err(EarlyError::Modules),
        delay,
    )?;
    kmsg::line(&format!(
        "modules loaded ({n} modules in {} ms)",
        t.elapsed().as_millis()
    ));

    let t = Instant::now();
    let (params, dev, backing) = step(map_root(), delay)?;
    step(mount_root(&params, &dev), delay)?;
    let init_kib = step(check_init(&params), delay)?;
    if let Err(e) = verity::record(&dev, &backing, &params) {
        kmsg::line(&format!(
            "cannot record the rootfs device for its scrub: {e}"
        ));
    }
    kmsg::line(&format!(
        "rootfs verified (dm-verity root hash {}, {} KiB, each block checked as it is read: /sbin/init's {init_kib} KiB in {} ms)",
        &params.root_hash[..16],
        params.data_bytes() / 1024,
        t.elapsed().as_millis()
    ));

    step(switch_root(), delay)?;
    kmsg::line(&format!(
        "switched root ({} ms since early init)",
        elapsed_ms()
    ));

    let err = std::process::Command::new("/sbin/init")
        .arg0("/sbin/init")
        .exec();
    Err((EarlyError::Exec(err), delay))
}

/// Attaches rootfs.sqsh to a loop device and maps it through dm-verity: the parameters, the
/// mapped device and the loop device.
fn map_root() -> Result<(verity::Params, PathBuf, PathBuf), EarlyError> {
    let params = std::fs::read_to_string(verity::PARAMS).map_err(|source| EarlyError::Read {
        path: verity::PARAMS.into(),
        source,
    })?;
    let params = verity::Params::parse(&params).map_err(EarlyError::Verity)?;
    let dev = loopdev::attach_read_only(Path::new(ROOTFS)).map_err(EarlyError::Loop)?;
    let mapped = verity::map(&params, &dev).map_err(EarlyError::Verity)?;
    Ok((params, mapped, dev))
}

/// A read that failed because dm-verity found a block that does not match: EIO, and the
/// kernel said "corrupted".
fn mismatch(p: &verity::Params, what: String) -> Option<EarlyError> {
    let kernel = verity::kernel_says();
    kernel.contains("corrupted").then(|| EarlyError::Checksum {
        what,
        root: p.root_hash.clone(),
        kernel,
    })
}

fn mount_root(p: &verity::Params, dev: &Path) -> Result<(), EarlyError> {
    std::fs::create_dir_all(NEWROOT).map_err(|source| EarlyError::Read {
        path: NEWROOT.into(),
        source,
    })?;
    mount(
        Some(dev),
        NEWROOT,
        Some("squashfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|source| {
        mismatch(p, "a block the mount read".into()).unwrap_or(EarlyError::Mount {
            what: "rootfs.sqsh",
            target: NEWROOT.into(),
            source,
        })
    })?;
    let tmp = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount_fs("tmpfs", "tmpfs", "/newroot/system", tmp, Some("mode=0755"))?;
    mount_fs("tmpfs", "tmpfs", "/newroot/tmp", tmp, Some("mode=1777"))?;
    // /var is tmpfs until installs exist (then it is the EPHEMERAL partition).
    mount_fs("tmpfs", "tmpfs", "/newroot/var", tmp, Some("mode=0755"))?;
    Ok(())
}

/// Reads /sbin/init whole before it is exec'd, so each of its blocks has been checked: a
/// corrupted one found later, when a page of PID 1 faults in, would kill PID 1 (a kernel
/// panic) instead of stopping here with a message. Returns its size in KiB.
fn check_init(p: &verity::Params) -> Result<u64, EarlyError> {
    let path = format!("{NEWROOT}/sbin/init");
    let read = |source| EarlyError::Read {
        path: path.clone(),
        source,
    };
    let mut f = std::fs::File::open(&path).map_err(read)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        match std::io::Read::read(&mut f, &mut buf) {
            Ok(0) => return Ok(size / 1024),
            Ok(n) => size += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(mismatch(p, "/sbin/init".into()).unwrap_or(read(e)));
            }
        }
    }
}

/// Moves the pseudo-filesystems into the new root, frees the initramfs, and makes the new
/// root `/` — what util-linux's switch_root does.
fn switch_root() -> Result<(), EarlyError> {
    let sr = |step: &'static str| move |source| EarlyError::SwitchRoot { step, source };
    for m in ["/dev", "/proc", "/sys", "/run"] {
        let target = format!("{NEWROOT}{m}");
        mount(
            Some(m),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(sr("move mounts"))?;
    }
    free_initramfs(Path::new("/"));
    nix::unistd::chdir(NEWROOT).map_err(sr("chdir"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(sr("move root"))?;
    nix::unistd::chroot(".").map_err(sr("chroot"))?;
    nix::unistd::chdir("/").map_err(sr("chdir /"))?;
    Ok(())
}

/// Deletes the initramfs's files (it is RAM) without crossing into other mounts. The loop
/// device keeps its own reference to rootfs.sqsh, so deleting its name is safe.
fn free_initramfs(dir: &Path) {
    let Ok(root_dev) = nix::sys::stat::stat(dir).map(|s| s.st_dev) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p == Path::new(NEWROOT) {
            continue;
        }
        let Ok(st) = nix::sys::stat::lstat(&p) else {
            continue;
        };
        if st.st_dev != root_dev {
            continue;
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            free_initramfs(&p);
            let _ = std::fs::remove_dir(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
}
