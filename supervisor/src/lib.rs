//! The service supervisor: every long-running program on the node is a declared
//! [`ServiceDef`], run by one task that waits for its dependencies, starts its process, checks
//! its health, restarts it by its [`policy`] and stops it on request. Each service's state is a
//! `Service` resource (`osctl get services`), written only here.
//!
//! Below the service layer: the [`reaper`] (the one place that waits for children), a
//! [`process`] in its own group and [`cgroup`], the [`logring`] every service's output goes to,
//! and [`tasks`], the guard PID 1's own long-lived tasks run under. What it must not do: know
//! what a service is for — containerd, etcd or apid are declared by the crates that own them.

pub mod cgroup;
pub mod logring;
pub mod policy;
pub mod process;
pub mod reaper;
pub mod tasks;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use basalt_resources::Store;
use basalt_resources::backoff::Backoff;
use futures::future::BoxFuture;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::logring::{LogRing, Logs, now_ms};
use crate::process::ProcessSpec;
use policy::{Decision, Restart, RestartPolicy};

/// The owner of `Service` resources.
pub const OWNER: &str = "supervisor";

/// What a service waits for before it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dependency {
    /// Another service running (and healthy, if it has a check) or finished.
    Service(String),
    /// A node condition: [`NETWORK`], [`CONFIG`], [`TIME`], [`NODE_CERT`].
    Condition(&'static str),
}

pub const NETWORK: &str = "network-ready";
pub const CONFIG: &str = "config-present";
pub const TIME: &str = "time-synced";
/// The node's certificate from the OS CA is written (apid's, in `apid::PKI_DIR`): set after
/// the write, so a service that reads the files never starts before them.
pub const NODE_CERT: &str = "node-certificate";

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dependency::Service(s) => write!(f, "service {s}"),
            Dependency::Condition(c) => f.write_str(c),
        }
    }
}

/// Why a health check failed: whatever error the check met (its chain is the service's
/// health message).
pub type HealthError = Box<dyn std::error::Error + Send + Sync + 'static>;

pub type HealthFn = Arc<dyn Fn() -> BoxFuture<'static, Result<(), HealthError>> + Send + Sync>;

/// How often a starting service's health is checked until its first good check.
pub const STARTUP_CHECK: Duration = Duration::from_millis(500);

/// A health check: run every `interval` (every [`STARTUP_CHECK`] at most until the first
/// good one), failing after `timeout`.
#[derive(Clone)]
pub struct Health {
    pub check: HealthFn,
    pub interval: Duration,
    pub timeout: Duration,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// A service, declared.
#[derive(Debug, Clone)]
pub struct ServiceDef {
    pub id: String,
    pub depends: Vec<Dependency>,
    pub process: ProcessSpec,
    pub restart: Restart,
    pub health: Option<Health>,
    /// How long SIGTERM gets before SIGKILL.
    pub stop_timeout: Duration,
    /// Overrides the restart back-off (tests use short ones).
    pub backoff: Option<Backoff>,
}

impl ServiceDef {
    pub fn new(id: &str, process: ProcessSpec) -> Self {
        ServiceDef {
            id: id.to_string(),
            depends: Vec::new(),
            process,
            restart: Restart::Always,
            health: None,
            stop_timeout: Duration::from_secs(10),
            backoff: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Waiting,
    Starting,
    Running,
    BackingOff,
    Stopping,
    Stopped,
    Finished,
    Failed,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthState {
    /// The service has no check.
    None,
    Unknown,
    Healthy,
    Unhealthy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceEvent {
    pub state: State,
    pub message: String,
    pub time_ms: i64,
}

/// The `Service` resource (namespace `runtime`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceStatus {
    pub state: State,
    pub health: HealthState,
    pub message: String,
    pub pid: i32,
    pub restarts: u32,
    /// The last few state changes, oldest first.
    pub events: Vec<ServiceEvent>,
}

impl basalt_resources::Spec for ServiceStatus {
    const TYPE: &'static str = "Service";
    const NAMESPACE: &'static str = "runtime";
}

const EVENTS_KEPT: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("no service {0:?}")]
    Unknown(String),
    #[error("service {0:?} is shutting down")]
    Gone(String),
    #[error("service {0:?} has no running process")]
    NotRunning(String),
}

enum Command {
    Start,
    Stop(oneshot::Sender<()>),
    Restart(oneshot::Sender<()>),
}

struct Handle {
    tx: mpsc::Sender<Command>,
    depends: Vec<Dependency>,
    task: tokio::task::JoinHandle<()>,
}

/// Every service on the node.
pub struct Supervisor {
    store: Store,
    logs: Logs,
    cgroup_root: Option<PathBuf>,
    conditions: watch::Sender<BTreeSet<String>>,
    /// (state, health) of every service, for dependency checks.
    states: watch::Sender<BTreeMap<String, (State, HealthState)>>,
    services: Mutex<BTreeMap<String, Handle>>,
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("cgroup_root", &self.cgroup_root)
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// Services' cgroups go under `cgroup_root` (a cgroup v2 directory) when given.
    pub fn new(store: Store, logs: Logs, cgroup_root: Option<PathBuf>) -> Arc<Self> {
        crate::reaper::ensure_running();
        Arc::new(Supervisor {
            store,
            logs,
            cgroup_root,
            conditions: watch::Sender::new(BTreeSet::new()),
            states: watch::Sender::new(BTreeMap::new()),
            services: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn logs(&self) -> &Logs {
        &self.logs
    }

    pub fn set_condition(&self, name: &str, on: bool) {
        self.conditions.send_if_modified(|c| {
            if on {
                c.insert(name.to_string())
            } else {
                c.remove(name)
            }
        });
    }

    /// Adds a service and starts it (once its dependencies are met). A service with the same id
    /// is stopped and replaced.
    pub async fn add(self: &Arc<Self>, def: ServiceDef) {
        let old = self
            .services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&def.id);
        if let Some(old) = old {
            let (tx, rx) = oneshot::channel();
            if old.tx.send(Command::Stop(tx)).await.is_ok() {
                let _ = rx.await;
            }
            old.task.abort();
        }
        let (tx, rx) = mpsc::channel(8);
        let id = def.id.clone();
        let depends = def.depends.clone();
        let log = self.logs.ring(&def.id);
        let task = tokio::spawn(run_service(self.clone(), def, rx, log));
        self.services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Handle { tx, depends, task });
    }

    fn sender(&self, id: &str) -> Result<mpsc::Sender<Command>, SupervisorError> {
        self.services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|h| h.tx.clone())
            .ok_or_else(|| SupervisorError::Unknown(id.to_string()))
    }

    /// Sends `sig` to a running service's main process; what follows is up to its restart
    /// policy, as if the process had died on its own.
    pub fn signal(&self, id: &str, sig: nix::sys::signal::Signal) -> Result<i32, SupervisorError> {
        self.sender(id)?;
        let pid = self
            .store
            .get::<ServiceStatus>(id)
            .map(|(_, s)| s)
            .filter(|s| s.state == State::Running && s.pid > 0)
            .map(|s| s.pid)
            .ok_or_else(|| SupervisorError::NotRunning(id.to_string()))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
            .map_err(|_| SupervisorError::NotRunning(id.to_string()))?;
        Ok(pid)
    }

    pub async fn start(&self, id: &str) -> Result<(), SupervisorError> {
        self.sender(id)?
            .send(Command::Start)
            .await
            .map_err(|_| SupervisorError::Gone(id.to_string()))
    }

    /// Stops a service and returns once its process is gone.
    pub async fn stop(&self, id: &str) -> Result<(), SupervisorError> {
        let (tx, rx) = oneshot::channel();
        self.sender(id)?
            .send(Command::Stop(tx))
            .await
            .map_err(|_| SupervisorError::Gone(id.to_string()))?;
        rx.await.map_err(|_| SupervisorError::Gone(id.to_string()))
    }

    /// Stops a service and starts it again; returns once it is stopped (the start follows).
    pub async fn restart(&self, id: &str) -> Result<(), SupervisorError> {
        let (tx, rx) = oneshot::channel();
        self.sender(id)?
            .send(Command::Restart(tx))
            .await
            .map_err(|_| SupervisorError::Gone(id.to_string()))?;
        rx.await.map_err(|_| SupervisorError::Gone(id.to_string()))
    }

    /// The order to stop services in: dependents before what they depend on.
    pub fn stop_order(&self) -> Vec<String> {
        let services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let deps: BTreeMap<String, Vec<String>> = services
            .iter()
            .map(|(id, h)| {
                let d = h
                    .depends
                    .iter()
                    .filter_map(|d| match d {
                        Dependency::Service(s) => Some(s.clone()),
                        Dependency::Condition(_) => None,
                    })
                    .collect();
                (id.clone(), d)
            })
            .collect();
        stop_order(&deps)
    }

    /// Stops every service, dependents first.
    pub async fn stop_all(&self) {
        for id in self.stop_order() {
            tracing::info!(service = %id, "stopping service");
            let _ = self.stop(&id).await;
        }
    }

    /// Waits until a condition is on, or `timeout` passes; true if it is on.
    pub async fn wait_condition(&self, name: &str, timeout: Duration) -> bool {
        let mut rx = self.conditions.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|c| c.contains(name)))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The state and health of one service.
    pub fn state(&self, id: &str) -> Option<(State, HealthState)> {
        self.states.borrow().get(id).copied()
    }

    /// Waits until `f` holds for a service's state, or `timeout` passes.
    pub async fn wait_for(
        &self,
        id: &str,
        timeout: Duration,
        f: impl Fn(State, HealthState) -> bool,
    ) -> bool {
        let mut rx = self.states.subscribe();
        tokio::time::timeout(timeout, async {
            loop {
                if let Some(&(s, h)) = rx.borrow_and_update().get(id)
                    && f(s, h)
                {
                    return;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await
        .is_ok()
    }

    fn unmet(&self, depends: &[Dependency]) -> Vec<String> {
        let states = self.states.borrow();
        let conditions = self.conditions.borrow();
        depends
            .iter()
            .filter(|d| match d {
                Dependency::Service(s) => !matches!(
                    states.get(s),
                    Some((State::Running, HealthState::None | HealthState::Healthy))
                        | Some((State::Finished, _))
                ),
                Dependency::Condition(c) => !conditions.contains(*c),
            })
            .map(ToString::to_string)
            .collect()
    }
}

/// Dependents first; ties by id. A dependency cycle (refused nowhere else) still yields every
/// service once.
pub fn stop_order(deps: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    // Start order by depth-first post-order, then reversed.
    fn visit(
        id: &str,
        deps: &BTreeMap<String, Vec<String>>,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) {
        if !seen.insert(id.to_string()) {
            return;
        }
        for d in deps.get(id).into_iter().flatten() {
            if deps.contains_key(d) {
                visit(d, deps, seen, out);
            }
        }
        out.push(id.to_string());
    }
    let mut seen = BTreeSet::new();
    let mut start = Vec::new();
    for id in deps.keys() {
        visit(id, deps, &mut seen, &mut start);
    }
    start.reverse();
    start
}

/// Publishes one service's state to the watch, the store and init's log.
struct Reporter {
    sup: Arc<Supervisor>,
    id: String,
    status: ServiceStatus,
    /// What was last published: an unchanged status is not published again. (A waiting
    /// service re-reports itself each time any service's state changes; publishing that
    /// wakes every other waiting service, which re-reports in turn — two waiting services
    /// kept init busy without end, a whole CPU of an emulated node.)
    published: Option<ServiceStatus>,
}

impl Reporter {
    fn set(&mut self, state: State, message: impl Into<String>) {
        let message = message.into();
        let changed = state != self.status.state || message != self.status.message;
        self.status.state = state;
        self.status.message = message.clone();
        if changed {
            tracing::info!(
                "service {}: {state}{}",
                self.id,
                if message.is_empty() {
                    String::new()
                } else {
                    format!(" ({message})")
                }
            );
            self.status.events.push(ServiceEvent {
                state,
                message,
                time_ms: now_ms(),
            });
            if self.status.events.len() > EVENTS_KEPT {
                self.status.events.remove(0);
            }
        }
        self.publish();
    }

    fn set_health(&mut self, h: HealthState, message: Option<String>) {
        if h != self.status.health {
            tracing::info!(
                "service {}: {}{}",
                self.id,
                match h {
                    HealthState::Healthy => "healthy",
                    HealthState::Unhealthy => "unhealthy",
                    HealthState::Unknown => "health unknown",
                    HealthState::None => "no health check",
                },
                message
                    .as_deref()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            );
        }
        self.status.health = h;
        self.publish();
    }

    fn publish(&mut self) {
        if self.published.as_ref() == Some(&self.status) {
            return;
        }
        // The resource first: whoever wakes on the state change reads a current resource.
        if let Err(e) = self.sup.store.apply(OWNER, &self.id, self.status.clone()) {
            tracing::warn!(service = %self.id, error = %e, "cannot record a service's status");
        }
        let (s, h) = (self.status.state, self.status.health);
        // Waiters wake only when the (state, health) they wait on changes.
        self.sup
            .states
            .send_if_modified(|m| m.insert(self.id.clone(), (s, h)) != Some((s, h)));
        self.published = Some(self.status.clone());
    }
}

/// What to do after waiting for something.
enum Next {
    Go,
    Stopped(Option<oneshot::Sender<()>>),
}

async fn run_service(
    sup: Arc<Supervisor>,
    def: ServiceDef,
    mut rx: mpsc::Receiver<Command>,
    log: Arc<LogRing>,
) {
    let mut policy = RestartPolicy::new(def.restart);
    if let Some(b) = def.backoff.clone() {
        policy = policy.with_backoff(b);
    }
    let mut rep = Reporter {
        published: None,
        sup: sup.clone(),
        id: def.id.clone(),
        status: ServiceStatus {
            state: State::Waiting,
            health: if def.health.is_some() {
                HealthState::Unknown
            } else {
                HealthState::None
            },
            message: String::new(),
            pid: 0,
            restarts: 0,
            events: Vec::new(),
        },
    };
    let process = ProcessSpec {
        cgroup: sup.cgroup_root.as_ref().map(|r| r.join(&def.id)),
        ..def.process.clone()
    };
    let mut want = true;
    loop {
        if !want {
            match rx.recv().await {
                None => return,
                Some(Command::Start) => {}
                Some(Command::Stop(done)) => {
                    let _ = done.send(());
                    continue;
                }
                Some(Command::Restart(done)) => {
                    let _ = done.send(());
                }
            }
            want = true;
            policy.reset();
        }

        // Waiting for dependencies, still answering commands.
        let mut states = sup.states.subscribe();
        let mut conds = sup.conditions.subscribe();
        let next = loop {
            let unmet = sup.unmet(&def.depends);
            if unmet.is_empty() {
                break Next::Go;
            }
            rep.set(State::Waiting, format!("waiting for {}", unmet.join(", ")));
            tokio::select! {
                _ = states.changed() => {}
                _ = conds.changed() => {}
                c = rx.recv() => match c {
                    None => return,
                    Some(Command::Start) => {}
                    Some(Command::Stop(done)) => break Next::Stopped(Some(done)),
                    Some(Command::Restart(done)) => { let _ = done.send(()); }
                }
            }
        };
        if let Next::Stopped(done) = next {
            rep.set(State::Stopped, "by request");
            if let Some(d) = done {
                let _ = d.send(());
            }
            want = false;
            continue;
        }

        rep.set(State::Starting, "");
        let mut running = match process::start(&process, log.clone()) {
            Ok(r) => r,
            Err(e) => {
                let msg = basalt_sys::error_chain(&e);
                log.push(&format!("cannot start: {msg}"));
                match policy.on_exit(crate::reaper::Exit::Code(-1), Duration::ZERO) {
                    Decision::RestartAfter(d) => {
                        rep.status.restarts += 1;
                        rep.set(
                            State::BackingOff,
                            format!("{msg}; retrying in {}", fmt_duration(d)),
                        );
                        match back_off(d, &mut rep, &mut rx).await {
                            None => return,
                            Some(go) => want = go,
                        }
                    }
                    _ => {
                        rep.set(State::Failed, msg);
                        want = false;
                    }
                }
                continue;
            }
        };
        let started = Instant::now();
        rep.status.pid = running.pid;
        if def.health.is_some() {
            rep.status.health = HealthState::Unknown;
        }
        rep.set(State::Running, format!("pid {}", running.pid));
        // The first check at once; until the first good one (starting up) every
        // STARTUP_CHECK at most, so a dependent starts soon after; then every `interval`.
        let mut next_check = tokio::time::Instant::now();

        // Running: until the process exits or a command comes.
        let outcome = loop {
            tokio::select! {
                exit = running.wait() => break Ok(exit),
                c = rx.recv() => match c {
                    None => {
                        running.stop(def.stop_timeout).await;
                        return;
                    }
                    Some(Command::Start) => {}
                    Some(Command::Stop(done)) => break Err((done, false)),
                    Some(Command::Restart(done)) => break Err((done, true)),
                },
                () = async {
                    match def.health {
                        Some(_) => tokio::time::sleep_until(next_check).await,
                        None => std::future::pending::<()>().await,
                    }
                } => {
                    if let Some(h) = &def.health {
                        let r = tokio::time::timeout(h.timeout, (h.check)()).await;
                        let failure = match r {
                            Ok(Ok(())) => None,
                            Ok(Err(e)) => Some(basalt_sys::error_chain(&*e)),
                            Err(_) => Some(format!("no answer in {}", fmt_duration(h.timeout))),
                        };
                        match failure {
                            None => rep.set_health(HealthState::Healthy, None),
                            // Until its first good check a service is starting up, not sick.
                            Some(_) if rep.status.health == HealthState::Unknown => {}
                            Some(e) => rep.set_health(HealthState::Unhealthy, Some(e)),
                        }
                        let every = if rep.status.health == HealthState::Unknown {
                            h.interval.min(STARTUP_CHECK)
                        } else {
                            h.interval
                        };
                        next_check = tokio::time::Instant::now() + every;
                    }
                }
            }
        };
        rep.status.pid = 0;
        if def.health.is_some() {
            rep.status.health = HealthState::Unknown;
        }
        match outcome {
            Err((done, again)) => {
                rep.set(State::Stopping, "");
                let exit = running.stop(def.stop_timeout).await;
                log.push(&format!("stopped ({exit})"));
                if again {
                    policy.reset();
                    rep.set(State::Stopped, format!("{exit}; restarting by request"));
                } else {
                    rep.set(State::Stopped, format!("by request ({exit})"));
                    want = false;
                }
                let _ = done.send(());
            }
            Ok(exit) => {
                log.push(&format!("exited ({exit})"));
                match policy.on_exit(exit, started.elapsed()) {
                    Decision::RestartAfter(d) => {
                        rep.status.restarts += 1;
                        rep.set(
                            State::BackingOff,
                            format!("{exit}; restarting in {}", fmt_duration(d)),
                        );
                        match back_off(d, &mut rep, &mut rx).await {
                            None => return,
                            Some(go) => want = go,
                        }
                    }
                    Decision::Finished => {
                        rep.set(State::Finished, exit.to_string());
                        want = false;
                    }
                    Decision::Failed => {
                        rep.set(State::Failed, exit.to_string());
                        want = false;
                    }
                }
            }
        }
    }
}

/// Waits out a back-off delay: `Some(true)` to start again, `Some(false)` when stopped by
/// request meanwhile, `None` when the supervisor is gone.
async fn back_off(
    d: Duration,
    rep: &mut Reporter,
    rx: &mut mpsc::Receiver<Command>,
) -> Option<bool> {
    match sleep_or_command(d, rx).await? {
        Next::Go => Some(true),
        Next::Stopped(done) => {
            rep.set(State::Stopped, "by request");
            if let Some(d) = done {
                let _ = d.send(());
            }
            Some(false)
        }
    }
}

/// Sleeps `d`, cut short by Start/Restart; `None` when the supervisor is gone.
async fn sleep_or_command(d: Duration, rx: &mut mpsc::Receiver<Command>) -> Option<Next> {
    let sleep = tokio::time::sleep(d);
    tokio::pin!(sleep);
    tokio::select! {
        () = &mut sleep => Some(Next::Go),
        c = rx.recv() => match c? {
            Command::Start => Some(Next::Go),
            Command::Restart(done) => { let _ = done.send(()); Some(Next::Go) }
            Command::Stop(done) => Some(Next::Stopped(Some(done))),
        }
    }
}

pub fn fmt_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests;
