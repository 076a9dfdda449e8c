//! PID 1's part of the dm-verity root: early init mapped it and recorded the mapped device;
//! PID 1 reads all of it once in the background, so a corrupted block that boot never read is
//! found too (`basalt_sys::verity::scrub`) — `basalt.scrub_delay` seconds after it starts (5
//! minutes unless the kernel arguments say otherwise; at once on a trial boot, which must not
//! be confirmed healthy with a corrupted root). Not at once on every boot: the kernel hashes
//! what the scrub reads on its own workers at normal priority, so a scrub during boot took a
//! share of the CPU the boot needed (three QEMU nodes booting on two host cores: 9–10 s of a
//! CPU each, and PID 1's module loading took 11.6–13.7 s beside it, 4.6–5.3 s without).

use std::path::{Path, PathBuf};

use basalt_sys::verity::{MAPPED, Scrub, scrub};

/// PID 1: if early init mapped the root through dm-verity, scrub it on a thread of its own,
/// `delay` from now; a mismatch stops the node (it logs which block and reboots after
/// `reboot_delay`).
pub fn start_scrub(delay: std::time::Duration, reboot_delay: u64) {
    let Ok(text) = std::fs::read_to_string(MAPPED) else {
        return;
    };
    let mut it = text.split_whitespace();
    let (Some(dev), Some(Ok(bytes)), Some(root)) =
        (it.next(), it.next().map(str::parse::<u64>), it.next())
    else {
        tracing::warn!("{MAPPED} is not `device bytes root-hash`: no scrub");
        return;
    };
    let (dev, root) = (PathBuf::from(dev), root.to_string());
    let spawned = std::thread::Builder::new()
        .name("rootfs-scrub".into())
        .spawn(move || {
            std::thread::sleep(delay);
            scrub_now(&dev, bytes, &root, reboot_delay)
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "rootfs scrub not started");
    }
}

fn scrub_now(dev: &Path, bytes: u64, root: &str, reboot_delay: u64) {
    match scrub(dev, bytes) {
        Scrub::Clean { bytes, took } => tracing::info!(
            "rootfs scrubbed: all {} KiB match root hash {} ({} ms)",
            bytes / 1024,
            &root[..16],
            took.as_millis()
        ),
        Scrub::Mismatch { offset, kernel } => {
            tracing::error!(
                "FATAL: rootfs.sqsh checksum mismatch: the block at byte {offset} does not match dm-verity root hash {root}{kernel}"
            );
            basalt_sys::power::fatal_reboot(reboot_delay)
        }
        Scrub::Failed(e) => tracing::warn!(device = %dev.display(), error = %e,
                "rootfs scrub stopped: cannot read the device"),
    }
}
