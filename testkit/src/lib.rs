//! Test tiers. Tests that need root, VMs or clusters call [`tier`] first: when the tier is not
//! enabled in `BASALT_TEST_TIERS` the test says so loudly and returns, so a plain `cargo test`
//! passes anywhere; when it is enabled, the test is recorded in `BASALT_TIER_LOG`, which
//! `hack/test` reads to fail any enabled tier that ran nothing.
//!
//! Test support only: no production crate depends on this.

#![forbid(unsafe_code)]

pub mod archive;

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

/// Calls `check` every `every` until it passes and returns what it gave; fails with its last
/// complaint after `within`. The timeout is a guard for a loaded machine, not a measure.
pub fn eventually<T, E: std::fmt::Display>(
    within: std::time::Duration,
    every: std::time::Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        match check() {
            Ok(v) => return v,
            Err(e) if std::time::Instant::now() >= deadline => panic!("after {within:?}: {e}"),
            Err(_) => std::thread::sleep(every),
        }
    }
}

/// A TCP port free on loopback now (the OS picked it; nothing holds it after this returns).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on loopback: {e}"))
}

/// A UDP port on loopback that nothing uses right now.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free UDP port on loopback: {e}"))
}

/// Runs `ip` with `args`; fails the test if it fails.
pub fn ip(args: &[&str]) {
    let ok = std::process::Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ip {}", args.join(" "));
}

/// A network namespace of the test's own (privileged tier), named uniquely from `prefix` and
/// the process, with `lo` up; removed when dropped.
#[derive(Debug)]
pub struct Netns(pub String);

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("{prefix}{}-{n}", std::process::id() % 100_000);
        ip(&["netns", "add", &name]);
        let ns = Netns(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.0
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// A home directory of this test process's own (made once, empty), so that what a test runs
/// reads none of the user's client configs (`~/.osctl/config`, `~/.kube/config`) and writes
/// none.
pub fn home() -> &'static std::path::Path {
    static HOME: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    HOME.get_or_init(|| {
        // Those of test processes that are gone (a home can hold a non-root user's image
        // cache, a GiB): nothing removes them at exit, so the next one does.
        if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
            for e in entries.flatten() {
                let name = e.file_name();
                let pid = name
                    .to_str()
                    .and_then(|n| n.strip_prefix("basalt-test-home-"))
                    .and_then(|p| p.parse::<u32>().ok());
                if let Some(pid) = pid
                    && !std::path::Path::new(&format!("/proc/{pid}")).exists()
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
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
    fn eventually_returns_what_passed_and_fails_with_the_last_complaint() {
        let mut n = 0;
        let got = eventually(
            std::time::Duration::from_secs(60),
            std::time::Duration::ZERO,
            || {
                n += 1;
                if n == 3 {
                    Ok(n)
                } else {
                    Err(format!("try {n}"))
                }
            },
        );
        assert_eq!(got, 3);
        let r = std::panic::catch_unwind(|| {
            eventually::<(), &str>(std::time::Duration::ZERO, std::time::Duration::ZERO, || {
                Err("never")
            })
        });
        let msg = r.unwrap_err();
        let msg = msg.downcast_ref::<String>().unwrap();
        assert!(msg.ends_with(": never"), "{msg}");
    }

    #[test]
    fn a_free_port_can_be_bound() {
        let p = free_port();
        assert!(std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
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
