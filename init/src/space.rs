//! How full the node's writable filesystems are: the `VolumeStatus` resource (namespace
//! `runtime`, id = the mount point), checked every few seconds (free space has no event to
//! watch). A volume that fills up is logged once as a warning — what fails while it is full
//! (containerd's writes, etcd's, the kubelet's) says "no space left on device" in its own
//! log and the API — and once more when the space returns; a node whose `/var` is full is not
//! healthy enough to confirm an upgrade's trial boot.

use std::path::{Path, PathBuf};
use std::time::Duration;

use basalt_resources::{Spec, Store};
use serde::Serialize;

/// How often the volumes are checked.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// One volume: its size and what is left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStatus {
    pub size_bytes: u64,
    pub available_bytes: u64,
    pub state: Fill,
}

impl Spec for VolumeStatus {
    const TYPE: &'static str = "VolumeStatus";
    const NAMESPACE: &'static str = "runtime";
}

/// How full a volume is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fill {
    Ok,
    /// Under 5% left.
    Low,
    /// Under 1% (at most 64 MiB) left, or under 1 MiB: writes are failing or about to.
    Full,
}

/// What `available` of `size` bytes amounts to.
pub fn fill(size: u64, available: u64) -> Fill {
    let full_below = (size / 100).clamp(1 << 20, 64 << 20);
    if available < full_below {
        Fill::Full
    } else if available < size / 20 {
        Fill::Low
    } else {
        Fill::Ok
    }
}

fn measure(point: &Path) -> Option<VolumeStatus> {
    let s = nix::sys::statvfs::statvfs(point).ok()?;
    let f = s.fragment_size();
    let (size, available) = (s.blocks() * f, s.blocks_available() * f);
    Some(VolumeStatus {
        size_bytes: size,
        available_bytes: available,
        state: fill(size, available),
    })
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

/// Checks `points` every `interval`, forever: the resources, and a log line at each change of
/// state. A mount point that does not answer (not mounted yet) is skipped.
pub async fn watch(store: Store, points: Vec<PathBuf>, interval: Duration) {
    loop {
        let measured = tokio::task::spawn_blocking({
            let points = points.clone();
            move || {
                points
                    .iter()
                    .map(|p| (p.display().to_string(), measure(p)))
                    .collect::<Vec<_>>()
            }
        })
        .await
        .unwrap_or_default();
        for (id, now) in measured {
            let Some(now) = now else { continue };
            let before = store.get::<VolumeStatus>(&id).map(|(_, s)| s.state);
            if before != Some(now.state) {
                let (free, size) = (mib(now.available_bytes), mib(now.size_bytes));
                match now.state {
                    Fill::Full => tracing::warn!(
                        volume = %id, free, size,
                        "space: the volume is full: what writes there fails until space returns"
                    ),
                    Fill::Low => {
                        tracing::warn!(volume = %id, free, size, "space: the volume is nearly full")
                    }
                    Fill::Ok if before.is_some() => {
                        tracing::info!(volume = %id, free, size, "space: the volume has room again");
                    }
                    Fill::Ok => {}
                }
            }
            if let Err(e) = store.apply("space", &id, now) {
                tracing::warn!(volume = %id, error = %e, "space: cannot record the volume's status");
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// Whether a volume is full.
pub fn any_full(store: &Store) -> Option<String> {
    store
        .list::<VolumeStatus>()
        .into_iter()
        .find(|(_, s)| s.state == Fill::Full)
        .map(|(m, _)| m.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_low_and_ok_scale_with_the_volume() {
        let gib = 1u64 << 30;
        assert_eq!(fill(gib, gib / 2), Fill::Ok);
        assert_eq!(fill(gib, gib / 25), Fill::Low);
        assert_eq!(fill(gib, gib / 200), Fill::Full);
        // A small disk: 1 MiB is the floor.
        assert_eq!(fill(64 << 20, 900 << 10), Fill::Full);
        assert_eq!(fill(64 << 20, 2 << 20), Fill::Low);
        // A large one: 64 MiB is the ceiling of "full".
        assert_eq!(fill(100 * gib, 100 << 20), Fill::Low);
        assert_eq!(fill(100 * gib, 60 << 20), Fill::Full);
    }

    /// A real filesystem filled and emptied (privileged: mounts a tmpfs of 16 MiB).
    #[tokio::test]
    async fn a_volume_filling_up_and_emptying_shows_in_its_status() {
        if !basalt_testkit::tier(basalt_testkit::Tier::Privileged, "volume status") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=16m"),
        )
        .unwrap();
        let store = Store::default();
        let id = dir.path().display().to_string();
        let task = tokio::spawn(watch(
            store.clone(),
            vec![dir.path().to_path_buf()],
            Duration::from_millis(50),
        ));
        let state = |store: &Store| store.get::<VolumeStatus>(&id).map(|(_, s)| s.state);
        let wait_for = |want: Fill| {
            let store = store.clone();
            let state = &state;
            async move {
                for _ in 0..600 {
                    if state(&store) == Some(want) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                panic!("never {want:?}: {:?}", state(&store));
            }
        };
        wait_for(Fill::Ok).await;
        std::fs::write(dir.path().join("fill"), vec![0u8; 15 << 20 | 600 << 10]).unwrap();
        wait_for(Fill::Full).await;
        assert_eq!(any_full(&store), Some(id.clone()));
        std::fs::remove_file(dir.path().join("fill")).unwrap();
        wait_for(Fill::Ok).await;
        assert_eq!(any_full(&store), None);
        task.abort();
        nix::mount::umount2(dir.path(), nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
}
