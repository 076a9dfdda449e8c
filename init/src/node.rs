//! The node as PID 1 sees it: the resource store, the logs, the supervisor, the config and the
//! sequencer in one place, and the sequences built from them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use basalt_resources::Store;

use crate::configstate::ConfigState;
use crate::sequence::{Power, SequenceError, Sequencer, Step, StepError};
use basalt_supervisor::Supervisor;
use basalt_supervisor::logring::Logs;

/// Where things are on this node (tests point them into a temporary directory).
#[derive(Debug, Clone)]
pub struct Paths {
    /// What a reset wipes besides the config (`/var/lib`: containerd's images and containers).
    pub wipe_on_reset: Vec<PathBuf>,
    /// How this node installs to a disk (`None` for a container node).
    pub install: Option<crate::install::Installer>,
    /// The installed disk's slots (upgrades, rollbacks).
    pub upgrade: crate::upgrade::Upgrader,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub store: Store,
    pub logs: Logs,
    pub sup: Arc<Supervisor>,
    pub config: ConfigState,
    pub seq: Sequencer,
    pub power: Arc<dyn Power>,
    pub paths: Paths,
    pub booted: Instant,
    /// networkd's DHCP clients: their leases are released at shutdown.
    pub leases: basalt_networkd::dhcp::Leases,
    /// The node's Kubernetes side (etcd bootstrap and membership).
    pub kube: basalt_kubernetes::Kube,
}

/// What a shutdown-like sequence ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Reboot,
    PowerOff,
}

impl Node {
    fn stop_services_step(&self) -> Step {
        let sup = self.sup.clone();
        Step::new("stop services", move || async move {
            let order = sup.stop_order();
            sup.stop_all().await;
            Ok(format!("stopped {}", order.join(", ")))
        })
    }

    fn end_steps(&self, end: End) -> Vec<Step> {
        let power = self.power.clone();
        vec![
            Step::new("sync", || async {
                nix::unistd::sync();
                Ok(String::new())
            }),
            Step::new("unmount", || async { unmount_writable() }).may_fail(),
            Step::new(
                match end {
                    End::Reboot => "reboot",
                    End::PowerOff => "power off",
                },
                move || async move {
                    match end {
                        End::Reboot => power.reboot(),
                        End::PowerOff => power.power_off(),
                    }
                    Ok(String::new())
                },
            ),
        ]
    }

    /// Reboot or shutdown: stop services (dependents first), sync, unmount, then `reboot(2)`.
    /// A `try` config still waiting for confirmation is not saved, and the step says so.
    pub fn shutdown_steps(&self, end: End) -> Vec<Step> {
        let config = self.config.clone();
        let mut steps = vec![
            Step::new("check config", move || async move {
                Ok(match config.active() {
                    Some(_) if !config.persisted() => {
                        "the tried config was not confirmed: the node boots with the previous one"
                    }
                    Some(_) => "the config is saved",
                    None => "no config",
                }
                .to_string())
            }),
            self.stop_services_step(),
            self.release_leases_step(),
        ];
        steps.extend(self.end_steps(end));
        steps
    }

    fn release_leases_step(&self) -> Step {
        let leases = self.leases.clone();
        Step::new("release DHCP leases", move || async move {
            let links = leases.release_all().await;
            Ok(if links.is_empty() {
                "none".to_string()
            } else {
                format!("released on {}", links.join(", "))
            })
        })
        .may_fail()
    }

    /// Reset: forget the config and the node's data, then reboot into maintenance mode.
    pub fn reset_steps(&self, graceful: bool) -> Vec<Step> {
        let mut steps = Vec::new();
        if graceful {
            steps.push(self.stop_services_step());
        } else {
            let sup = self.sup.clone();
            steps.push(Step::new("kill services", move || async move {
                sup.stop_all().await;
                Ok(String::new())
            }));
        }
        let config = self.config.clone();
        steps.push(Step::new("wipe config", move || async move {
            config.wipe().map(|()| String::new()).map_err(Into::into)
        }));
        let wipe = self.paths.wipe_on_reset.clone();
        steps.push(Step::new("wipe data", move || async move {
            let mut n = 0;
            for p in &wipe {
                match std::fs::remove_dir_all(p) {
                    Ok(()) => n += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(format!("{}: {e}", p.display()).into()),
                }
            }
            Ok(format!("{n} directories removed"))
        }));
        steps.extend(self.end_steps(End::Reboot));
        steps
    }

    /// Starts a sequence in the background (the API answers before the machine goes down).
    pub fn spawn_sequence(&self, name: &str, steps: Vec<Step>) -> Result<(), SequenceError> {
        let claim = self.seq.claim(name)?;
        tokio::spawn(async move {
            if let Err(e) = claim.run(steps).await {
                tracing::info!("{}", &basalt_sys::error_chain(&e));
            }
        });
        Ok(())
    }
}

/// Unmounts what may hold unwritten data (deepest first); a busy mount is detached lazily.
fn unmount_writable() -> Result<String, StepError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut points: Vec<String> = basalt_sys::mountinfo::parse(&info)
        .into_iter()
        .filter(|m| {
            !m.read_only && (m.point.starts_with("/var") || m.point.starts_with("/system/state"))
        })
        .map(|m| m.point)
        .collect();
    if std::process::id() != 1 {
        return Ok("not PID 1: nothing unmounted".into());
    }
    // Deepest first, and /var (which may be bound from the state disk) before the disk.
    points.sort_by_key(|p| (p.starts_with("/system/state"), std::cmp::Reverse(p.len())));
    let mut failed = Vec::new();
    for p in &points {
        if nix::mount::umount2(p.as_str(), nix::mount::MntFlags::empty()).is_err()
            && nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH).is_err()
        {
            failed.push(p.clone());
        }
    }
    if failed.is_empty() {
        Ok(format!("{} unmounted", points.len()))
    } else {
        Err(format!("cannot unmount {}", failed.join(", ")).into())
    }
}
