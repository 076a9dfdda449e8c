//! A trial boot's watch: on a boot of a slot on trial (after an upgrade), the boot is confirmed
//! once the node has been healthy — and, where it runs Kubernetes, its `Node` Ready and
//! uncordoned — for three checks in a row, or the node reboots into the old
//! slot at the timeout. Above both the node and the upgrader: it reads the node's health and
//! tells the upgrader.

use std::time::{Duration, Instant};

use crate::node::{End, Node};
use crate::upgrade::Upgrader;

/// Whether the node is healthy enough to confirm a trial boot: configured, no volume full, and
/// every service running (or, a one-shot, finished) with no failed health check.
pub fn healthy(node: &Node) -> bool {
    if node.config.active().is_none() || crate::space::any_full(&node.store).is_some() {
        return false;
    }
    let services = node.store.list::<basalt_supervisor::ServiceStatus>();
    !services.is_empty()
        && services.iter().all(|(_, s)| {
            // A one-shot that ended well (kube-proxy's cleanup) counts as healthy.
            matches!(
                s.state,
                basalt_supervisor::State::Running | basalt_supervisor::State::Finished
            ) && matches!(
                s.health,
                basalt_supervisor::HealthState::None | basalt_supervisor::HealthState::Healthy
            )
        })
}

/// On a trial boot: confirms it once the node has been healthy for three checks in a row,
/// or reboots at the timeout (GRUB then boots the old slot). On any boot of an installed disk:
/// reports a trial GRUB gave up on.
pub async fn watch_boot(node: Node, up: Upgrader, trial: bool) {
    let Some((env, timeout)) = tokio::task::spawn_blocking({
        let up = up.clone();
        move || up.at_boot()
    })
    .await
    .ok()
    .flatten() else {
        return;
    };
    if let Some(failed) = env.get("failed") {
        tracing::error!(
            "upgrade: slot {failed} did not confirm its boot; GRUB booted slot {} again",
            up.booted.map(|s| s.name()).unwrap_or("?")
        );
        let u = up.clone();
        let _ = tokio::task::spawn_blocking(move || u.clear_failed()).await;
    }
    if !trial {
        return;
    }
    tracing::info!(
        slot = up.booted.map(|s| s.name()).unwrap_or("?"),
        within_s = timeout.as_secs(),
        "upgrade: trial boot; the slot confirms itself when healthy"
    );
    let start = Instant::now();
    let mut good = 0;
    let mut why = String::from("no check yet");
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        if start.elapsed() >= timeout {
            break;
        }
        // Where it runs Kubernetes, the node's `Node` must be Ready and uncordoned too.
        let settled = if healthy(&node) {
            node.kube
                .node_settled()
                .await
                .map_err(|e| basalt_sys::error_chain(&e))
        } else {
            Err("a service is not running and healthy, or a volume is full".to_string())
        };
        good = match settled {
            Ok(()) => good + 1,
            Err(e) => {
                why = e;
                0
            }
        };
        if good >= 3 {
            let u = up.clone();
            match tokio::task::spawn_blocking(move || u.confirm()).await {
                Ok(Ok(slot)) => tracing::info!(
                    "upgrade: slot {slot} is healthy and confirmed ({} s): it boots from now on",
                    start.elapsed().as_secs()
                ),
                Ok(Err(e)) => tracing::error!(
                    error = %basalt_sys::error_chain(&e),
                    "upgrade: cannot confirm the trial boot"
                ),
                Err(e) => tracing::error!(panic = %e, "upgrade: confirming panicked"),
            }
            return;
        }
    }
    if good > 0 {
        why = format!("healthy for {good} check(s) in a row of the 3 needed");
    }
    tracing::error!(
        "upgrade: not healthy within {} s ({why}); rebooting into the previous slot",
        timeout.as_secs()
    );
    let steps = node.shutdown_steps(End::Reboot);
    if let Err(e) = node.spawn_sequence("reboot", steps) {
        tracing::error!(error = %basalt_sys::error_chain(&e), "upgrade: cannot reboot");
    }
}
