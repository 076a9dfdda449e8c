//! The install sequence: a node in maintenance mode, booted from its ISO or PXE, given a
//! config with `install.disk`, lays Basalt's layout onto that disk, copies the image it runs
//! into slot A (`basalt_disk::install`), keeps the config on the new STATE partition and
//! reboots — from the disk, when the firmware boots it (the ISO removed, or the disk first).
//!
//! The disk is checked before the config is accepted: a missing disk, a partition, a disk
//! too small or one that holds anything without `install.wipe` refuses the apply with the
//! reason, and the node stays as it was.

use std::path::{Path, PathBuf};

use basalt_config::Config;
use basalt_disk::install::{self as disk, InstallError, Kit, SlotImage};
use basalt_disk::layout;

/// How this node installs: what it was booted from and where its image's parts are.
#[derive(Debug, Clone)]
pub struct Installer {
    /// The boot kit in the running root.
    pub kit: PathBuf,
    /// Early init's record of the loop device holding the root, and of its verity parameters.
    pub source: PathBuf,
    pub params: PathBuf,
    /// The running kernel's command line (`/proc/cmdline`).
    pub cmdline: String,
    pub mke2fs: PathBuf,
    /// The slot this boot came from, on an installed disk.
    pub booted_slot: Option<layout::Slot>,
    /// Where the new STATE is mounted for a moment to keep the config.
    pub scratch: PathBuf,
}

/// What an applied config asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing to install (no `install`, or booted from the installed disk already).
    Nothing,
    /// Not installing, and why (logged).
    Skip(String),
    Install {
        disk: PathBuf,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum InstallFailed {
    #[error("install.disk {disk}: no such disk; the node's disks: {have}")]
    NoDisk { disk: String, have: String },
    #[error("install.disk")]
    Disk(#[source] InstallError),
    #[error(
        "cannot read {path} (this boot did not record its root: not booted by Basalt's early init?)"
    )]
    Source {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot keep the config on {dev}: {what}")]
    State { dev: PathBuf, what: String },
}

impl Installer {
    /// The installer of a node booted with `cmdline`, the image's parts where the image and
    /// early init put them.
    pub fn from_boot(cmdline: String, booted_slot: Option<&str>) -> Installer {
        Installer {
            kit: PathBuf::from(disk::KIT_DIR),
            source: PathBuf::from(basalt_sys::verity::SOURCE),
            params: PathBuf::from(basalt_sys::verity::RECORDED_PARAMS),
            cmdline,
            mke2fs: PathBuf::from("/sbin/mke2fs"),
            booted_slot: booted_slot.and_then(layout::Slot::parse),
            scratch: PathBuf::from("/run/basalt/install-state"),
        }
    }

    /// What applying `config` in maintenance mode does about installing; an error refuses
    /// the apply.
    pub fn plan(&self, config: &Config) -> Result<Plan, InstallFailed> {
        let Some(install) = &config.machine().install else {
            return Ok(Plan::Nothing);
        };
        if let Some(slot) = self.booted_slot {
            tracing::debug!("booted from slot {slot} of an installed disk: nothing to install");
            return Ok(Plan::Nothing);
        }
        let path = PathBuf::from(&install.disk);
        if !path.exists() {
            return Err(InstallFailed::NoDisk {
                disk: install.disk.clone(),
                have: disks_line(),
            });
        }
        match disk::check(&path, install.wipe) {
            Ok(_) => Ok(Plan::Install { disk: path }),
            Err(InstallError::NotBlank { what, .. }) if what == "a Basalt installation" => {
                Ok(Plan::Skip(format!(
                    "{} already holds a Basalt installation: not installing (install.wipe: true installs it again)",
                    install.disk
                )))
            }
            Err(e) => Err(InstallFailed::Disk(e)),
        }
    }

    /// Installs to `disk` and keeps `config_yaml` on its STATE. Blocking.
    pub fn run(&self, disk_path: &Path, config_yaml: &str) -> Result<(), InstallFailed> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| InstallFailed::Source {
                path: p.to_path_buf(),
                source,
            })
        };
        let rootfs = PathBuf::from(read(&self.source)?.trim());
        let image = SlotImage {
            kit: Kit::new(&self.kit),
            rootfs,
            verity: read(&self.params)?,
            cmdline: basalt_sys::cmdline::for_install(&self.cmdline),
            version: crate::sysinfo::os_version(Path::new("/etc/os-release")),
        };
        let state = disk::install(
            disk_path,
            &image,
            &self.mke2fs,
            &basalt_supervisor::reaper::output,
            &|step| tracing::info!("install: {step}"),
        )
        .map_err(InstallFailed::Disk)?;
        self.keep_config(&state, config_yaml)?;
        tracing::info!(
            "install: config kept on {}; {} is installed",
            state.display(),
            disk_path.display()
        );
        Ok(())
    }

    /// Writes the config where PID 1 looks for it on STATE at the next boot.
    fn keep_config(&self, dev: &Path, yaml: &str) -> Result<(), InstallFailed> {
        let fail = |what: String| InstallFailed::State {
            dev: dev.to_path_buf(),
            what,
        };
        std::fs::create_dir_all(&self.scratch).map_err(|e| fail(e.to_string()))?;
        nix::mount::mount(
            Some(dev),
            &self.scratch,
            Some("ext4"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|e| fail(format!("mount: {e}")))?;
        let path = self
            .scratch
            .join(crate::pid1::STATE_CONFIG_DIR)
            .join(crate::configstate::ACTIVE);
        let written = basalt_sys::fs::atomic_write(&path, yaml.as_bytes(), 0o600);
        let unmounted = nix::mount::umount(&self.scratch);
        written.map_err(|e| fail(format!("write {}: {e}", path.display())))?;
        unmounted.map_err(|e| fail(format!("unmount: {e}")))
    }
}

/// The node's disks, one phrase each: what an install could use.
fn disks_line() -> String {
    let disks = crate::sysinfo::disks(Path::new("/sys/class/block"));
    if disks.is_empty() {
        return "none".into();
    }
    disks
        .iter()
        .map(|d| {
            let mut s = format!("/dev/{} ({} MiB", d.name, d.size_bytes >> 20);
            if !d.model.is_empty() {
                s.push_str(&format!(", {}", d.model));
            }
            s.push(')');
            s
        })
        .collect::<Vec<_>>()
        .join(", ")
}
