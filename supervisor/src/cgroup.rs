//! cgroup v2 for services: init mounts the unified hierarchy, turns on the controllers it has
//! and keeps every service in its own group under `system/`.

use std::path::{Path, PathBuf};

pub const MOUNT: &str = "/sys/fs/cgroup";

/// Mounts cgroup2 at `/sys/fs/cgroup` (if it is not there yet) and prepares `system/`,
/// returning the directory services' cgroups go in. Where `/sys/fs/cgroup` already holds
/// cgroup v1 controllers (a container on a v1 or hybrid host), cgroup2 goes beside them at
/// `/sys/fs/cgroup/unified`, as systemd's hybrid layout has it, and the v1 hierarchies stay
/// for the kubelet and runc.
pub fn setup() -> Result<PathBuf, std::io::Error> {
    let base = Path::new(MOUNT);
    let root_buf = if !base.join("cgroup.controllers").exists()
        && ["memory", "cpu", "pids"]
            .iter()
            .any(|c| base.join(c).is_dir())
    {
        base.join("unified")
    } else {
        base.to_path_buf()
    };
    let root = root_buf.as_path();
    if !root.join("cgroup.controllers").exists() {
        std::fs::create_dir_all(root)?;
        nix::mount::mount(
            Some("cgroup2"),
            root,
            Some("cgroup2"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            Some("nsdelegate"),
        )
        .map_err(std::io::Error::from)?;
    }
    let system = root.join("system");
    std::fs::create_dir_all(&system)?;
    enable_controllers(root);
    enable_controllers(&system);
    Ok(system)
}

/// Hands every controller a group has on to its children (best effort: one the kernel refuses
/// leaves the others on).
fn enable_controllers(dir: &Path) {
    let Ok(list) = std::fs::read_to_string(dir.join("cgroup.controllers")) else {
        return;
    };
    for c in list.split_whitespace() {
        let _ = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"));
    }
}

/// A fresh, writable cgroup v2 directory for a privileged test, if the host has one.
#[cfg(test)]
pub fn test_root() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mounts = basalt_sys::mountinfo::parse(&info);
    let base = mounts.iter().find(|m| m.fstype == "cgroup2")?.point.clone();
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = Path::new(&base).join(format!(
        "basalt-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    std::fs::create_dir(&dir).ok()?;
    Some(dir)
}
