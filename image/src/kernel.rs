//! The kernel and its modules: which `.ko` files the node needs, in load order.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{ImageError, io_err, tools};

/// Modules early init loads from the initramfs: only what mounting the root needs (with
/// dm-verity's own dependencies: dm-mod, dm-bufio, reed_solomon). Each module costs 20–40 ms
/// under TCG (signature check), so everything else waits for PID 1.
pub const BOOT_MODULES: &[&str] = &["loop", "squashfs", "dm-verity"];

/// Modules PID 1 loads from the root filesystem (the ones built into the kernel are skipped).
pub const NODE_MODULES: &[&str] = &[
    // Devices QEMU and most clouds present.
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_scsi",
    "virtio_console",
    "virtio_rng",
    // The root and data filesystems.
    "loop",
    "squashfs",
    "overlay",
    "ext4",
    "xfs",
    // Networking the node configures.
    "bridge",
    "veth",
    "tun",
    "8021q",
    "bonding",
    "dummy",
    "wireguard",
    "nf_tables",
    "nft_chain_nat",
    "nft_masq",
    "nft_ct",
    "nft_fib_inet",
    // kube-proxy's nftables rules: DNAT, random endpoint choice, reject of endpoint-less
    // Services.
    "nft_nat",
    "nft_numgen",
    "nft_reject_inet",
    "nft_reject_ipv4",
    "nft_reject_ipv6",
    "nft_fib_ipv4",
    "nft_fib_ipv6",
    "br_netfilter",
];

/// An unpacked kernel package.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub version: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<version>`.
    pub modules_dir: PathBuf,
}

impl Kernel {
    /// Finds the kernel in an extracted `linux-image-*` package and makes sure `modules.dep`
    /// exists (Debian generates it at install time, so the package lacks it).
    pub fn from_package_root(root: &Path) -> Result<Kernel, ImageError> {
        let boot = root.join("boot");
        let vmlinuz = std::fs::read_dir(&boot)
            .map_err(io_err("read", &boot))?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
            .ok_or_else(|| ImageError::Io {
                action: "find vmlinuz in",
                path: boot.display().to_string(),
                source: std::io::ErrorKind::NotFound.into(),
            })?;
        let version = vmlinuz
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_start_matches("vmlinuz-")
                    .to_string()
            })
            .unwrap_or_default();
        let modules_dir = root.join("lib/modules").join(&version);
        if !modules_dir.join("modules.dep").exists() {
            tools::need("depmod", "kmod")?;
            tools::run(Command::new("depmod").arg("-b").arg(root).arg(&version))?;
        }
        Ok(Kernel {
            version,
            vmlinuz,
            modules_dir,
        })
    }

    /// Module files (relative to `modules_dir`) to load for `wanted`, dependencies first.
    pub fn load_order(&self, wanted: &[&str]) -> Result<Vec<String>, ImageError> {
        let dep_path = self.modules_dir.join("modules.dep");
        let dep = std::fs::read_to_string(&dep_path).map_err(io_err("read", &dep_path))?;
        let builtin_path = self.modules_dir.join("modules.builtin");
        let builtin = std::fs::read_to_string(&builtin_path).unwrap_or_default();
        resolve(&dep, &builtin, wanted)
    }
}

/// The module name of a path: `kernel/net/802/8021q.ko` → `8021q`; `-` and `_` are the same.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// Resolves `wanted` against modules.dep text: each module after all it depends on, each once.
pub fn resolve(
    modules_dep: &str,
    builtin: &str,
    wanted: &[&str],
) -> Result<Vec<String>, ImageError> {
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in modules_dep.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let d = rest.split_whitespace().map(str::to_string).collect();
        deps.insert(module_name(path), (path.to_string(), d));
    }
    let builtins: BTreeSet<String> = builtin.lines().map(module_name).collect();
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        path: &str,
        deps: &BTreeMap<String, (String, Vec<String>)>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(path.to_string()) {
            return;
        }
        if let Some((_, d)) = deps.get(&module_name(path)) {
            for p in d {
                visit(p, deps, seen, order);
            }
        }
        order.push(path.to_string());
    }
    for w in wanted {
        let name = w.replace('-', "_");
        match deps.get(&name) {
            Some((path, _)) => visit(&path.clone(), &deps, &mut seen, &mut order),
            None if builtins.contains(&name) => {}
            None => return Err(ImageError::UnknownModule(w.to_string())),
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/a/virtio_net.ko: kernel/a/net_failover.ko kernel/a/failover.ko kernel/a/virtio.ko\n\
                       kernel/a/net_failover.ko: kernel/a/failover.ko\n\
                       kernel/a/failover.ko:\n\
                       kernel/a/virtio.ko:\n\
                       kernel/a/virtio_blk.ko: kernel/a/virtio.ko\n";

    #[test]
    fn dependencies_come_first_and_once() {
        let order = resolve(
            DEP,
            "kernel/fs/ext4/ext4.ko\n",
            &["virtio_blk", "virtio-net", "ext4"],
        )
        .unwrap();
        assert_eq!(
            order,
            vec![
                "kernel/a/virtio.ko",
                "kernel/a/virtio_blk.ko",
                "kernel/a/failover.ko",
                "kernel/a/net_failover.ko",
                "kernel/a/virtio_net.ko",
            ]
        );
        let err = resolve(DEP, "", &["nope"]).unwrap_err().to_string();
        assert_eq!(
            err,
            "kernel module \"nope\" is neither built in nor in modules.dep"
        );
    }
}
