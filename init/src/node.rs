//! The node as PID 1 sees it: the resource store, the logs, the supervisor, the config and the
//! sequencer in one place, and the sequences built from them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use basalt_resources::Store;

use crate::configstate::{ApplyError, ApplyMode, ConfigState, Outcome};
use crate::sequence::{Power, SequenceError, Sequencer, Step, StepError};
use basalt_supervisor::Supervisor;
use basalt_supervisor::logring::Logs;

/// Where things are on this node (tests point them into a temporary directory).
#[derive(Debug, Clone)]
pub struct Paths {
    /// STATE: where the config and the node's identity are kept (a reset of STATE empties it).
    pub state: PathBuf,
    /// EPHEMERAL: `/var` (a reset of EPHEMERAL empties it).
    pub ephemeral: PathBuf,
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

/// How long a drain may take before the sequence that asked for it fails (PodDisruptionBudgets
/// can hold an eviction back until other replicas are ready elsewhere).
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

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

    /// Cordons the node and evicts its pods (a node without a kubelet has nothing to drain).
    /// A drain that does not finish within [`DRAIN_TIMEOUT`] fails the step, and with it the
    /// sequence: the node keeps running, uncordoned.
    fn drain_step(&self) -> Step {
        let kube = self.kube.clone();
        Step::new("cordon and drain", move || async move {
            match kube.drain(DRAIN_TIMEOUT).await {
                Ok(s) => Ok(s),
                Err(e) if e.is_not_here() => Ok(format!("nothing to drain: {e}")),
                Err(e) => Err(basalt_sys::error_chain(&e).into()),
            }
        })
    }

    /// An upgrade's reboot into the new slot: the node is cordoned and drained first, then it
    /// shuts down as a reboot does. The next boot uncordons it once its `Node` is Ready.
    pub fn upgrade_steps(&self) -> Vec<Step> {
        let mut steps = vec![self.drain_step()];
        steps.extend(self.shutdown_steps(End::Reboot));
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

    /// Reset: forget what `wipe` names — STATE (the config and the node's identity: it comes
    /// back in maintenance mode) and EPHEMERAL (`/var`: etcd's data, images, pods, logs) —,
    /// then reboot. Graceful: the node is cordoned and drained and a control plane leaves etcd
    /// first (while etcd runs), and the services stop in order; else they are killed at once.
    pub fn reset_steps(&self, graceful: bool, wipe: Wipe) -> Vec<Step> {
        let mut steps = Vec::new();
        if graceful {
            steps.push(self.drain_step());
            let (kube, sup) = (self.kube.clone(), self.sup.clone());
            steps.push(
                Step::new("leave etcd", move || async move {
                    match kube.leave(&sup).await {
                        Ok(s) => Ok(s),
                        Err(e) if e.is_not_here() => Ok(format!("not leaving: {e}")),
                        Err(e) => Err(basalt_sys::error_chain(&e).into()),
                    }
                })
                .may_fail(),
            );
            steps.push(self.stop_services_step());
        } else {
            let sup = self.sup.clone();
            steps.push(Step::new("kill services", move || async move {
                sup.stop_all().await;
                Ok(String::new())
            }));
        }
        let (state, ephemeral) = (self.paths.state.clone(), self.paths.ephemeral.clone());
        if wipe.state {
            let config = self.config.clone();
            let (state, ephemeral) = (state.clone(), ephemeral.clone());
            steps.push(Step::new("wipe STATE", move || async move {
                config.wipe()?;
                // /var's own directory on a state disk is EPHEMERAL's, not STATE's.
                let n = remove_children(&state, &[ephemeral, state.join("var")])?;
                Ok(format!("{n} entries removed from {}", state.display()))
            }));
        }
        if wipe.ephemeral {
            steps.push(Step::new("wipe EPHEMERAL", move || async move {
                let unmounted = unmount_below(&ephemeral)?;
                // The config's directory, when it lives under /var (no state disk), is STATE's.
                let keep = if wipe.state { Vec::new() } else { vec![state] };
                let n = remove_children(&ephemeral, &keep)?;
                Ok(format!(
                    "{unmounted} mounts undone, {n} entries removed from {}",
                    ephemeral.display()
                ))
            }));
        }
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

#[cfg(test)]
impl Node {
    /// A node whose state lives under `dir`, with a fake power switch and no services.
    pub(crate) fn for_tests(dir: &std::path::Path, power: Arc<crate::sequence::FakePower>) -> Node {
        let store = Store::default();
        let logs = Logs::new(None, 100, 0);
        Node {
            leases: Default::default(),
            store: store.clone(),
            logs: logs.clone(),
            sup: Supervisor::new(store.clone(), logs, None),
            config: ConfigState::new(dir.join("state"), basalt_config::Mode::Metal, store.clone()),
            seq: Sequencer::new(store),
            power,
            paths: Paths {
                state: dir.join("state"),
                ephemeral: dir.join("var"),
                install: None,
                upgrade: crate::upgrade::Upgrader::new(None),
            },
            booted: Instant::now(),
            kube: basalt_kubernetes::Kube::default(),
        }
    }
}

/// What a reset wipes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wipe {
    pub state: bool,
    pub ephemeral: bool,
}

impl Wipe {
    pub const ALL: Wipe = Wipe {
        state: true,
        ephemeral: true,
    };

    /// From the names a reset request gives (`STATE`, `EPHEMERAL`, any case); none: both.
    pub fn from_names(names: &[String]) -> Result<Wipe, UnknownPartition> {
        if names.is_empty() {
            return Ok(Wipe::ALL);
        }
        let mut w = Wipe {
            state: false,
            ephemeral: false,
        };
        for n in names {
            match n.to_ascii_uppercase().as_str() {
                "STATE" => w.state = true,
                "EPHEMERAL" => w.ephemeral = true,
                _ => return Err(UnknownPartition(n.clone())),
            }
        }
        Ok(w)
    }
}

/// A reset request named a partition that is not STATE or EPHEMERAL.
#[derive(Debug, thiserror::Error)]
#[error("wipe {0:?}: expected STATE or EPHEMERAL")]
pub struct UnknownPartition(pub String);

/// Removes what `dir` holds but the paths of `keep` (and the directories on the way to them);
/// returns how many entries went. A missing `dir` holds nothing.
fn remove_children(dir: &std::path::Path, keep: &[PathBuf]) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut n = 0;
    for e in entries {
        let p = e?.path();
        if keep.iter().any(|k| k == &p) {
            continue;
        }
        if keep.iter().any(|k| k.starts_with(&p)) {
            n += remove_children(&p, keep)?;
            continue;
        }
        let r = match std::fs::symlink_metadata(&p)?.is_dir() {
            true => std::fs::remove_dir_all(&p),
            false => std::fs::remove_file(&p),
        };
        match r {
            Ok(()) => n += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e}", p.display()),
                ));
            }
        }
    }
    Ok(n)
}

/// Undoes every mount below `dir` (not `dir` itself), deepest first, lazily when busy, so
/// emptying `dir` stays on its own filesystem; returns how many.
fn unmount_below(dir: &std::path::Path) -> std::io::Result<usize> {
    if std::process::id() != 1 {
        return Ok(0);
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut points: Vec<String> = basalt_sys::mountinfo::parse(&info)
        .into_iter()
        .map(|m| m.point)
        .filter(|p| std::path::Path::new(p).starts_with(dir) && std::path::Path::new(p) != dir)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    let mut n = 0;
    for p in &points {
        if nix::mount::umount2(p.as_str(), nix::mount::MntFlags::empty()).is_ok()
            || nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH).is_ok()
        {
            n += 1;
        }
    }
    Ok(n)
}

/// What taking a config did.
#[derive(Debug)]
pub enum Accepted {
    /// Installing to a disk in the background; the node reboots from it (the summary says
    /// where).
    Installing(String),
    Applied(Outcome),
}

/// Why a config was not taken; in every case nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("the config was rejected and nothing changed")]
    Install(#[source] crate::install::InstallFailed),
    #[error("an install is in progress; the node reboots when it is done")]
    Installing,
    #[error(transparent)]
    Sequence(#[from] SequenceError),
}

/// One install at a time: a second config while one runs is refused.
static INSTALLING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Node {
    /// Takes a config, from the API or from the kernel command line's URL: in maintenance mode a
    /// config with `install.disk` installs the node to that disk and reboots from it; otherwise
    /// it is applied (and the node reboots when the mode asks).
    pub fn accept_config(
        &self,
        text: &str,
        mode: ApplyMode,
        dry_run: bool,
    ) -> Result<Accepted, AcceptError> {
        if let Some(summary) = self.maybe_install(text, dry_run)? {
            return Ok(Accepted::Installing(summary));
        }
        let out = self.config.apply(text, mode, dry_run)?;
        if out.reboot {
            self.spawn_sequence("reboot", self.shutdown_steps(End::Reboot))?;
        }
        Ok(Accepted::Applied(out))
    }

    /// In maintenance mode, a config with `install.disk` installs the node to that disk (the
    /// config kept on it) and reboots instead of applying here: the summary says so. `None`:
    /// apply as usual. The disk is checked first; a problem refuses the config.
    fn maybe_install(&self, text: &str, dry_run: bool) -> Result<Option<String>, AcceptError> {
        let Some(installer) = self.paths.install.clone() else {
            return Ok(None);
        };
        if self.config.active().is_some() {
            return Ok(None);
        }
        let config = basalt_config::Config::parse(text, self.config.mode())
            .map_err(|e| AcceptError::Apply(ApplyError::Invalid(e)))?;
        let disk = match installer.plan(&config).map_err(AcceptError::Install)? {
            crate::install::Plan::Nothing => return Ok(None),
            crate::install::Plan::Skip(why) => {
                tracing::info!("install: {why}");
                return Ok(None);
            }
            crate::install::Plan::Install { disk } => disk,
        };
        if dry_run {
            return Ok(Some(format!(
                "dry run: would install to {} and reboot from it; nothing was changed",
                disk.display()
            )));
        }
        if INSTALLING.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(AcceptError::Installing);
        }
        let yaml = config.to_yaml();
        let node = self.clone();
        let target = disk.clone();
        tokio::spawn(async move {
            tracing::info!(target = %target.display(), "install: started");
            let t = Instant::now();
            let done = tokio::task::spawn_blocking(move || installer.run(&target, &yaml)).await;
            match done {
                Ok(Ok(())) => {
                    tracing::info!("install: done in {} s; rebooting", t.elapsed().as_secs());
                    if let Err(e) = node.spawn_sequence("reboot", node.shutdown_steps(End::Reboot))
                    {
                        tracing::error!(error = %basalt_sys::error_chain(&e), "install: cannot reboot");
                    }
                }
                Ok(Err(e)) => {
                    INSTALLING.store(false, std::sync::atomic::Ordering::SeqCst);
                    tracing::error!(
                        error = %basalt_sys::error_chain(&e),
                        "install: failed; the node stays in maintenance mode"
                    )
                }
                Err(e) => {
                    INSTALLING.store(false, std::sync::atomic::Ordering::SeqCst);
                    tracing::error!(panic = %e, "install: panicked")
                }
            }
        });
        Ok(Some(format!(
            "config accepted: installing to {}, then rebooting from it (osctl logs init shows the steps)",
            disk.display()
        )))
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
