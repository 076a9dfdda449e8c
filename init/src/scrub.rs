//! PID 1's part of the dm-verity root: early init mapped it and recorded the mapped device;
//! PID 1 reads all of it once in the background, so a corrupted block that boot never read is
//! found too (`basalt_sys::verity::scrub`).

use std::path::PathBuf;

use basalt_sys::verity::{MAPPED, Scrub, scrub};

/// PID 1: if early init mapped the root through dm-verity, scrub it on a thread of its own;
/// a mismatch stops the node (it logs which block and reboots after `reboot_delay`).
pub fn start_scrub(reboot_delay: u64) {
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
        .spawn(move || match scrub(&dev, bytes) {
            Scrub::Clean { bytes, took } => tracing::info!("rootfs scrubbed: all {} KiB match root hash {} ({} ms)",
                bytes / 1024,
                &root[..16],
                took.as_millis()),
            Scrub::Mismatch { offset, kernel } => {
                tracing::error!("FATAL: rootfs.sqsh checksum mismatch: the block at byte {offset} does not match dm-verity root hash {root}{kernel}");
                basalt_sys::power::fatal_reboot(reboot_delay)
            }
            Scrub::Failed(e) => tracing::warn!(device = %dev.display(), error = %e,
                "rootfs scrub stopped: cannot read the device"),
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "rootfs scrub not started");
    }
}
