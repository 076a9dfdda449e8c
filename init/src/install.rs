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
use basalt_config::v1alpha1::DiskSelector;
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
    #[error("install.diskSelector: no disk is {wanted}; the node's disks: {have}")]
    NoMatch { wanted: String, have: String },
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
            tracing::debug!(%slot, "booted from an installed disk: nothing to install");
            return Ok(Plan::Nothing);
        }
        let path = match (&install.disk, &install.disk_selector) {
            (Some(disk), _) => {
                let path = PathBuf::from(disk);
                if !path.exists() {
                    return Err(InstallFailed::NoDisk {
                        disk: disk.clone(),
                        have: disks_line(),
                    });
                }
                path
            }
            (None, Some(sel)) => {
                let disks = crate::sysinfo::disks(Path::new("/sys/class/block"));
                let name = select(sel, &disks).ok_or_else(|| InstallFailed::NoMatch {
                    wanted: describe(sel),
                    have: disks_line(),
                })?;
                tracing::info!(disk = %name, "install: a disk matches the selector");
                Path::new("/dev").join(name)
            }
            // Validation refuses a config with neither.
            (None, None) => return Ok(Plan::Nothing),
        };
        match disk::check(&path, install.wipe) {
            Ok(_) => Ok(Plan::Install { disk: path }),
            Err(InstallError::NotBlank { what, .. }) if what == "a Basalt installation" => {
                Ok(Plan::Skip(format!(
                    "{} already holds a Basalt installation: not installing (install.wipe: true installs it again)",
                    path.display()
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
            .join(crate::configstate::STATE_CONFIG_DIR)
            .join(crate::configstate::ACTIVE);
        let written = basalt_sys::fs::atomic_write(&path, yaml.as_bytes(), 0o600);
        let unmounted = nix::mount::umount(&self.scratch);
        written.map_err(|e| fail(format!("write {}: {e}", path.display())))?;
        unmounted.map_err(|e| fail(format!("unmount: {e}")))
    }
}

/// The first disk (by name) that matches every field of `sel`.
pub fn select(sel: &DiskSelector, disks: &[basalt_api::machine::DiskInfo]) -> Option<String> {
    let size = sel
        .size
        .as_deref()
        .and_then(|s| basalt_config::v1alpha1::SizeBound::parse(s).ok());
    let prefix = sel.bus.as_deref().and_then(|b| {
        basalt_config::v1alpha1::DISK_BUSES
            .iter()
            .find(|(n, _)| *n == b)
            .map(|(_, p)| *p)
    });
    disks
        .iter()
        .filter(|d| !d.read_only)
        .find(|d| {
            size.is_none_or(|b| b.matches(d.size_bytes))
                && sel.model.as_deref().is_none_or(|m| glob(m, &d.model))
                && sel.serial.as_deref().is_none_or(|s| s == d.serial)
                && prefix.is_none_or(|p| d.name.starts_with(p))
        })
        .map(|d| d.name.clone())
}

/// `*` matches any run of characters; everything else itself.
fn glob(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || s.len() < first.len() + last.len() || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

/// A selector in words, for the error when nothing matches.
fn describe(sel: &DiskSelector) -> String {
    let mut w = Vec::new();
    if let Some(s) = &sel.size {
        w.push(format!("size {s}"));
    }
    if let Some(m) = &sel.model {
        w.push(format!("model {m:?}"));
    }
    if let Some(s) = &sel.serial {
        w.push(format!("serial {s:?}"));
    }
    if let Some(b) = &sel.bus {
        w.push(format!("on bus {b}"));
    }
    w.join(", ")
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
            if !d.serial.is_empty() {
                s.push_str(&format!(", serial {}", d.serial));
            }
            s.push(')');
            s
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_api::machine::DiskInfo;

    fn disk(name: &str, gib: u64, model: &str, serial: &str) -> DiskInfo {
        DiskInfo {
            name: name.into(),
            size_bytes: gib << 30,
            model: model.into(),
            serial: serial.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_selector_picks_the_first_disk_that_matches_every_field() {
        let disks = [
            disk("nvme0n1", 512, "Samsung SSD 980", "S1"),
            disk("sda", 2000, "WDC WD20EZRZ", "W1"),
            disk("vda", 3, "", ""),
        ];
        let sel = |size: Option<&str>,
                   model: Option<&str>,
                   serial: Option<&str>,
                   bus: Option<&str>| DiskSelector {
            size: size.map(Into::into),
            model: model.map(Into::into),
            serial: serial.map(Into::into),
            bus: bus.map(Into::into),
        };
        let pick = |s: DiskSelector| select(&s, &disks);
        assert_eq!(
            pick(sel(Some(">= 1TB"), None, None, None)).as_deref(),
            Some("sda")
        );
        assert_eq!(
            pick(sel(Some("<= 4GiB"), None, None, None)).as_deref(),
            Some("vda")
        );
        assert_eq!(
            pick(sel(None, Some("*SSD*"), None, None)).as_deref(),
            Some("nvme0n1")
        );
        assert_eq!(
            pick(sel(None, None, Some("W1"), None)).as_deref(),
            Some("sda")
        );
        assert_eq!(
            pick(sel(None, None, None, Some("virtio"))).as_deref(),
            Some("vda")
        );
        assert_eq!(pick(sel(Some(">= 1TB"), None, None, Some("nvme"))), None);
        let s = sel(Some(">= 1TB"), None, None, Some("nvme"));
        assert_eq!(describe(&s), "size >= 1TB, on bus nvme");
    }

    #[test]
    fn globs() {
        assert!(glob("QEMU*", "QEMU HARDDISK"));
        assert!(glob("*SSD*", "Samsung SSD 980"));
        assert!(glob("a*b*c", "a-x-b-y-c"));
        assert!(!glob("a*b*c", "a-x-c"));
        assert!(glob("exact", "exact") && !glob("exact", "exactly"));
    }
}
