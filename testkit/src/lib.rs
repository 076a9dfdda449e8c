//! Test tiers. Tests that need root, VMs or clusters call [`tier`] first: when the tier is not
//! enabled in `BASALT_TEST_TIERS` the test says so loudly and returns, so a plain `cargo test`
//! passes anywhere; when it is enabled, the test is recorded in `BASALT_TIER_LOG`, which
//! `hack/test` reads to fail any enabled tier that ran nothing.
//!
//! Test support only: no production crate depends on this.

#![forbid(unsafe_code)]

use std::io::Write as _;

/// A tier above `unit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Root: network namespaces, tun devices, mounts.
    Privileged,
    /// QEMU virtual machines.
    Vm,
    /// Multi-node clusters (QEMU or Docker).
    Cluster,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Privileged => "privileged",
            Tier::Vm => "vm",
            Tier::Cluster => "cluster",
        }
    }
}

/// Whether `tier` is listed in a `BASALT_TEST_TIERS` value.
pub fn listed(tiers: &str, tier: Tier) -> bool {
    tiers.split(',').map(str::trim).any(|t| t == tier.name())
}

/// Returns true when `test` may run in `tier`; otherwise prints why it skips.
#[must_use]
#[allow(clippy::print_stderr)]
pub fn tier(tier: Tier, test: &str) -> bool {
    let tiers = std::env::var("BASALT_TEST_TIERS").unwrap_or_default();
    if !listed(&tiers, tier) {
        eprintln!(
            "SKIPPED {test}: the {} tier is not enabled (BASALT_TEST_TIERS={tiers:?}; hack/test enables it)",
            tier.name()
        );
        return false;
    }
    if let Some(log) = std::env::var_os("BASALT_TIER_LOG")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
    {
        // One write per line: tests run in parallel threads and share the file.
        let _ = f.write_all(format!("{} {test}\n", tier.name()).as_bytes());
    }
    true
}

/// A home directory of this test process's own (made once, empty), so that what a test runs
/// reads none of the user's client configs (`~/.osctl/config`, `~/.kube/config`) and writes
/// none.
pub fn home() -> &'static std::path::Path {
    static HOME: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    HOME.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("basalt-test-home-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot make {}: {e}", dir.display()));
        dir
    })
}

/// Makes `cmd` hermetic: its `HOME` is [`home`], and the variables that name client configs
/// (`OSCONFIG`, `KUBECONFIG`) are unset. A test that wants one sets it after this.
pub fn hermetic(cmd: &mut std::process::Command) -> &mut std::process::Command {
    cmd.env("HOME", home())
        .env_remove("OSCONFIG")
        .env_remove("KUBECONFIG")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_are_matched_by_name() {
        assert!(listed("unit,vm", Tier::Vm));
        assert!(listed("unit, privileged", Tier::Privileged));
        assert!(!listed("unit", Tier::Vm));
        assert!(!listed("", Tier::Cluster));
        assert!(!listed("vmx", Tier::Vm));
    }

    #[test]
    fn a_hermetic_command_sees_its_own_home_and_no_client_config() {
        let mut cmd = std::process::Command::new("env");
        hermetic(&mut cmd);
        let envs: Vec<_> = cmd.get_envs().collect();
        assert!(envs.contains(&(std::ffi::OsStr::new("HOME"), Some(home().as_os_str()))));
        assert!(envs.contains(&(std::ffi::OsStr::new("OSCONFIG"), None)));
        assert!(envs.contains(&(std::ffi::OsStr::new("KUBECONFIG"), None)));
        assert!(home().is_dir() && home().read_dir().unwrap().next().is_none());
    }
}
