//! Upgrades, rollbacks and the trial boot of an installed node.
//!
//! An upgrade bundle arrives over the API into `/var` (EPHEMERAL), is checked whole
//! (`basalt_disk::bundle::verify`: manifest, sizes, sha256s), then against this node (its
//! architecture, no downgrade unless asked, at most one Kubernetes minor), and only then written
//! into the slot the node is not running. META makes that slot the next boot *on trial*; the
//! running slot stays the default. The trial boot confirms itself once the node is healthy
//! (configured, every service running and none unhealthy, for a few checks in a row) within
//! its timeout; if it does not — an init that exits, a kernel that panics, a node that never
//! gets healthy and reboots itself at the timeout — GRUB boots the old slot again. (The watch
//! that confirms a trial boot is `trial.rs`, which reads the node's health.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use basalt_disk::bundle::{self, BundleError};
use basalt_disk::grub::Env;
use basalt_disk::install::{self as disk, InstallError, Installed, SlotFiles};
use basalt_disk::layout::Slot;

/// How long a trial boot has to become healthy when the upgrade does not say.
pub const DEFAULT_TRIAL_TIMEOUT: Duration = Duration::from_secs(600);
/// The largest bundle accepted (a Kubernetes image's is about 160 MiB).
pub const MAX_BUNDLE: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(
        "this node runs from its boot media (ISO, PXE) or in a container, not from an installed disk: install it first (install.disk)"
    )]
    NotInstalled,
    #[error("the installed disk")]
    Disk(#[source] InstallError),
    #[error("the bundle was refused and nothing was written")]
    Bundle(#[source] BundleError),
    #[error("the bundle is for {got}; this node is {want}")]
    Arch { got: String, want: String },
    #[error(
        "the bundle's version {to} is older than the running {from}; allow a downgrade to install it"
    )]
    Downgrade { from: String, to: String },
    #[error(
        "the bundle runs Kubernetes {to} and this node {from}: Kubernetes moves one minor release at a time"
    )]
    KubernetesSkip { from: String, to: String },
    #[error("slot {0} holds nothing to go back to")]
    NothingToRollBack(Slot),
    #[error("cannot {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// The installed disk's slots as this boot sees them.
#[derive(Debug, Clone)]
pub struct Upgrader {
    /// The slot this boot came from (`None`: not booted from an installed disk).
    pub booted: Option<Slot>,
    pub class_block: PathBuf,
    /// Where a bundle is received (on EPHEMERAL: it survives nothing, it only must fit).
    pub bundle_dir: PathBuf,
    pub os_release: PathBuf,
}

/// What an upgrade did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgraded {
    pub slot: Slot,
    pub from: String,
    pub to: String,
}

/// One slot, for `osctl version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    pub slot: Slot,
    pub version: String,
    /// "booted", "trial" (booted, not confirmed yet), "next", "fallback" or "".
    pub state: &'static str,
}

impl Upgrader {
    pub fn new(booted: Option<&str>) -> Upgrader {
        Upgrader {
            booted: booted.and_then(Slot::parse),
            class_block: PathBuf::from("/sys/class/block"),
            bundle_dir: PathBuf::from("/var/lib/basalt/upgrade"),
            os_release: PathBuf::from("/etc/os-release"),
        }
    }

    fn installed(&self) -> Result<(Slot, Installed), UpgradeError> {
        let booted = self.booted.ok_or(UpgradeError::NotInstalled)?;
        let d = disk::find_installed(&self.class_block).map_err(UpgradeError::Disk)?;
        Ok((booted, d))
    }

    /// Where the bundle being received is written.
    pub fn bundle_path(&self) -> PathBuf {
        self.bundle_dir.join("bundle")
    }

    /// Fails early, before a byte is received, when this node cannot be upgraded.
    pub fn check_installed(&self) -> Result<(), UpgradeError> {
        self.installed().map(|_| ())
    }

    /// Checks the bundle at `path` and writes it into the slot not booted, which becomes the
    /// next boot on trial for `trial_timeout`. Blocking.
    pub fn apply(
        &self,
        path: &Path,
        allow_downgrade: bool,
        trial_timeout: Duration,
    ) -> Result<Upgraded, UpgradeError> {
        let (booted, d) = self.installed()?;
        let v = bundle::verify(path).map_err(UpgradeError::Bundle)?;
        let m = &v.manifest;
        let arch = std::env::consts::ARCH;
        if m.arch != arch {
            return Err(UpgradeError::Arch {
                got: m.arch.clone(),
                want: arch.into(),
            });
        }
        let from = crate::sysinfo::os_version(&self.os_release);
        if !allow_downgrade && bundle::compare_versions(&m.version, &from).is_lt() {
            return Err(UpgradeError::Downgrade {
                from,
                to: m.version.clone(),
            });
        }
        if let (Some(old), Some(new)) = (self.kubernetes(), m.kubernetes.as_deref())
            && minor_skip(&old, new)
        {
            return Err(UpgradeError::KubernetesSkip {
                from: old,
                to: new.to_string(),
            });
        }
        let target = booted.other();
        // The kernel arguments stay the ones this node boots with.
        let cmdline = disk::slot_info(&d.file, &d.table, booted)
            .map(|(_, c)| c)
            .unwrap_or_default();
        let open = |i: usize| {
            v.open(i).map_err(|source| UpgradeError::Io {
                what: format!("read {} from the bundle", bundle::FILES[i]),
                source,
            })
        };
        let (mut k, mut i, mut r) = (open(0)?, open(1)?, open(2)?);
        // The trial is cancelled first: a power cut while the slot is half written must not
        // leave META pointing at it.
        let mut env = disk::read_env(&d.file, &d.table).map_err(UpgradeError::Disk)?;
        env.set("slot", booted.name());
        env.set("next", "");
        env.set("next_tried", "");
        disk::write_env(&d.file, &d.table, &env).map_err(UpgradeError::Disk)?;
        tracing::info!("upgrade: writing {} into slot {target}", m.version);
        disk::write_slot(
            &d.file,
            &d.disk,
            &d.table,
            target,
            SlotFiles {
                vmlinuz: &mut k,
                initramfs: &mut i,
                rootfs: &mut r,
                cmdline,
                version: m.version.clone(),
            },
        )
        .map_err(UpgradeError::Disk)?;
        env.set("next", target.name());
        env.set("trial_timeout", &trial_timeout.as_secs().to_string());
        disk::write_env(&d.file, &d.table, &env).map_err(UpgradeError::Disk)?;
        Ok(Upgraded {
            slot: target,
            from,
            to: m.version.clone(),
        })
    }

    /// Makes the other slot the default boot (no trial: the user asked for it).
    pub fn rollback(&self) -> Result<(Slot, String), UpgradeError> {
        let (booted, d) = self.installed()?;
        let other = booted.other();
        let Some((version, _)) = disk::slot_info(&d.file, &d.table, other) else {
            return Err(UpgradeError::NothingToRollBack(other));
        };
        let mut env = disk::read_env(&d.file, &d.table).map_err(UpgradeError::Disk)?;
        env.set("slot", other.name());
        env.set("next", "");
        env.set("next_tried", "");
        disk::write_env(&d.file, &d.table, &env).map_err(UpgradeError::Disk)?;
        Ok((other, version))
    }

    /// The slots and what each holds; empty when not booted from an installed disk.
    pub fn slots(&self) -> Vec<SlotState> {
        let Ok((booted, d)) = self.installed() else {
            return Vec::new();
        };
        let env = disk::read_env(&d.file, &d.table).unwrap_or_default();
        [Slot::A, Slot::B]
            .into_iter()
            .map(|slot| {
                let version = disk::slot_info(&d.file, &d.table, slot)
                    .map(|(v, _)| v)
                    .unwrap_or_default();
                let state = if slot == booted && env.get("next") == Some(slot.name()) {
                    // Booted on trial, not confirmed yet.
                    "trial"
                } else if slot == booted {
                    "booted"
                } else if env.get("next") == Some(slot.name()) {
                    "next"
                } else if !version.is_empty() {
                    // What `osctl rollback` would boot.
                    "fallback"
                } else {
                    ""
                };
                SlotState {
                    slot,
                    version,
                    state,
                }
            })
            .collect()
    }

    /// At boot: what META says of the last trial, and this trial's timeout.
    pub fn at_boot(&self) -> Option<(Env, Duration)> {
        let (_, d) = self.installed().ok()?;
        let env = disk::read_env(&d.file, &d.table).ok()?;
        let timeout = env
            .get("trial_timeout")
            .and_then(|t| t.parse().ok())
            .map_or(DEFAULT_TRIAL_TIMEOUT, Duration::from_secs);
        Some((env, timeout))
    }

    /// Confirms this trial boot: its slot becomes the default.
    pub fn confirm(&self) -> Result<Slot, UpgradeError> {
        let (booted, d) = self.installed()?;
        let mut env = disk::read_env(&d.file, &d.table).map_err(UpgradeError::Disk)?;
        env.set("slot", booted.name());
        for k in ["next", "next_tried", "failed", "trial_timeout"] {
            env.set(k, "");
        }
        disk::write_env(&d.file, &d.table, &env).map_err(UpgradeError::Disk)?;
        Ok(booted)
    }

    /// Forgets a failed trial GRUB recorded (once reported).
    pub fn clear_failed(&self) {
        if let Ok((_, d)) = self.installed()
            && let Ok(mut env) = disk::read_env(&d.file, &d.table)
        {
            env.set("failed", "");
            let _ = disk::write_env(&d.file, &d.table, &env);
        }
    }

    /// The Kubernetes release this image runs (`KUBERNETES_VERSION` in its os-release).
    fn kubernetes(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.os_release).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("KUBERNETES_VERSION="))
            .map(|v| v.trim_matches('"').to_string())
    }
}

/// Whether going from Kubernetes `old` to `new` skips a minor release (either way).
fn minor_skip(old: &str, new: &str) -> bool {
    let minor = |v: &str| -> Option<(u64, u64)> {
        let mut p = v.trim_start_matches('v').split('.');
        Some((p.next()?.parse().ok()?, p.next()?.parse().ok()?))
    };
    match (minor(old), minor(new)) {
        (Some((a, x)), Some((b, y))) => a != b || x.abs_diff(y) > 1,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_moves_one_minor_at_a_time() {
        assert!(!minor_skip("v1.36.3", "v1.37.2"));
        assert!(!minor_skip("v1.37.2", "v1.37.9"));
        assert!(!minor_skip("v1.37.0", "v1.36.1"));
        assert!(minor_skip("v1.35.0", "v1.37.2"));
        assert!(minor_skip("v1.37.0", "v2.37.0"));
    }

    #[test]
    fn a_node_not_booted_from_a_disk_cannot_upgrade() {
        let up = Upgrader::new(None);
        let e = up.check_installed().unwrap_err().to_string();
        assert!(e.contains("install it first"), "{e}");
        assert!(up.slots().is_empty());
    }
}
