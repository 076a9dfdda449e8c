//! Sequences: boot, apply-config, reboot, shutdown and reset as ordered lists of named steps.
//! Each step is logged as it runs and the progress is a `Sequence` resource; one sequence runs
//! at a time (a reboot asked for during a shutdown is refused, not interleaved).
//!
//! Powering off and rebooting go through [`Power`], whose real implementation calls
//! `reboot(2)` and whose fake (tests) records the call.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use basalt_resources::Store;
use futures::future::BoxFuture;
use serde::Serialize;

use basalt_supervisor::logring::now_ms;

pub const OWNER: &str = "sequencer";

/// The end of a reboot or shutdown sequence.
pub trait Power: Send + Sync + std::fmt::Debug {
    fn reboot(&self);
    fn power_off(&self);
}

/// The machine's own power: sync, then `reboot(2)`.
#[derive(Debug)]
pub struct RealPower;

impl Power for RealPower {
    fn reboot(&self) {
        nix::unistd::sync();
        let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    }
    fn power_off(&self) {
        nix::unistd::sync();
        let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    }
}

/// A container node's power: PID 1 exits, which ends every process in the container. The
/// container runtime restarts it after a reboot (exit status 1, `--restart on-failure`) and
/// leaves it stopped after a power-off (status 0).
#[derive(Debug)]
pub struct ContainerPower;

/// The exit status a container node reboots with.
pub const CONTAINER_REBOOT_STATUS: i32 = 1;

impl Power for ContainerPower {
    fn reboot(&self) {
        nix::unistd::sync();
        std::process::exit(CONTAINER_REBOOT_STATUS);
    }
    fn power_off(&self) {
        nix::unistd::sync();
        std::process::exit(0);
    }
}

/// Power for tests and benches: records what was asked, powers nothing.
#[derive(Debug, Default)]
pub struct FakePower {
    pub calls: Mutex<Vec<&'static str>>,
}

impl Power for FakePower {
    fn reboot(&self) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push("reboot");
    }
    fn power_off(&self) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push("power off");
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepState {
    Pending,
    Running,
    Done,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepStatus {
    pub name: String,
    pub state: StepState,
    pub message: String,
    pub millis: u64,
}

/// The `Sequence` resource (namespace `runtime`, id = the sequence's name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SequenceStatus {
    pub state: StepState,
    pub started_ms: i64,
    pub steps: Vec<StepStatus>,
}

impl basalt_resources::Spec for SequenceStatus {
    const TYPE: &'static str = "Sequence";
    const NAMESPACE: &'static str = "runtime";
}

/// Why a step failed: whatever error it met (its chain is the step's message).
pub type StepError = Box<dyn std::error::Error + Send + Sync + 'static>;

pub type StepFn = Box<dyn FnOnce() -> BoxFuture<'static, Result<String, StepError>> + Send>;

/// One step: a name and what it does (returning a short note, or why it failed).
pub struct Step {
    pub name: String,
    pub run: StepFn,
    /// A failure here is logged and the sequence goes on (shutdown must reach the end).
    pub may_fail: bool,
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Step {
    pub fn new<F, Fut>(name: &str, f: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<String, StepError>> + Send + 'static,
    {
        Step {
            name: name.to_string(),
            run: Box::new(move || Box::pin(f())),
            may_fail: false,
        }
    }

    pub fn may_fail(mut self) -> Self {
        self.may_fail = true;
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SequenceError {
    #[error("sequence {running} is running; {asked} must wait for it")]
    Busy { running: String, asked: String },
    #[error("sequence {sequence} failed at step {step:?}: {message}")]
    Failed {
        sequence: String,
        step: String,
        message: String,
    },
}

/// Runs sequences one at a time.
#[derive(Debug, Clone)]
pub struct Sequencer {
    store: Store,
    running: Arc<Mutex<Option<String>>>,
}

impl Sequencer {
    pub fn new(store: Store) -> Self {
        Sequencer {
            store,
            running: Arc::default(),
        }
    }

    /// Claims the sequencer for `name`; the claim is released when the guard drops.
    pub fn claim(&self, name: &str) -> Result<Claim, SequenceError> {
        let mut r = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(running) = r.as_ref() {
            return Err(SequenceError::Busy {
                running: running.clone(),
                asked: name.to_string(),
            });
        }
        *r = Some(name.to_string());
        Ok(Claim {
            seq: self.clone(),
            name: name.to_string(),
        })
    }
}

/// The right to run one sequence.
#[derive(Debug)]
pub struct Claim {
    seq: Sequencer,
    name: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        *self.seq.running.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Claim {
    /// Runs the steps in order, logging and publishing each.
    pub async fn run(self, steps: Vec<Step>) -> Result<(), SequenceError> {
        let name = self.name.clone();
        let mut status = SequenceStatus {
            state: StepState::Running,
            started_ms: now_ms(),
            steps: steps
                .iter()
                .map(|s| StepStatus {
                    name: s.name.clone(),
                    state: StepState::Pending,
                    message: String::new(),
                    millis: 0,
                })
                .collect(),
        };
        let publish = |s: &SequenceStatus| {
            let _ = self.seq.store.apply(OWNER, &name, s.clone());
        };
        publish(&status);
        let n = steps.len();
        tracing::info!(sequence = name, steps = n, "sequence started");
        for (i, step) in steps.into_iter().enumerate() {
            tracing::info!("sequence {name}: step {}/{n}: {}", i + 1, step.name);
            status.steps[i].state = StepState::Running;
            publish(&status);
            let t = Instant::now();
            let r = (step.run)().await;
            status.steps[i].millis = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
            match r {
                Ok(note) => {
                    status.steps[i].state = StepState::Done;
                    if !note.is_empty() {
                        tracing::info!("sequence {name}: {}: {note}", step.name);
                    }
                    status.steps[i].message = note;
                }
                Err(e) => {
                    let e = basalt_sys::error_chain(&*e);
                    status.steps[i].state = StepState::Failed;
                    status.steps[i].message = e.clone();
                    tracing::warn!(sequence = name, step = step.name, error = %e, "sequence step failed");
                    if !step.may_fail {
                        status.state = StepState::Failed;
                        publish(&status);
                        return Err(SequenceError::Failed {
                            sequence: name,
                            step: step.name,
                            message: e,
                        });
                    }
                }
            }
            publish(&status);
        }
        status.state = StepState::Done;
        publish(&status);
        tracing::info!("sequence {name}: done");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn steps_run_in_order_and_are_published() {
        let store = Store::default();
        let seq = Sequencer::new(store.clone());
        let log = Arc::new(Mutex::new(Vec::new()));
        let (a, b) = (log.clone(), log.clone());
        let steps = vec![
            Step::new("one", move || async move {
                a.lock().unwrap().push("one");
                Ok(String::new())
            }),
            Step::new("two", || async { Err("flaky".into()) }).may_fail(),
            Step::new("three", move || async move {
                b.lock().unwrap().push("three");
                Ok("all good".to_string())
            }),
        ];
        seq.claim("demo").unwrap().run(steps).await.unwrap();
        assert_eq!(*log.lock().unwrap(), ["one", "three"]);
        let (_, st) = store.get::<SequenceStatus>("demo").unwrap();
        assert_eq!(st.state, StepState::Done);
        let states: Vec<StepState> = st.steps.iter().map(|s| s.state).collect();
        assert_eq!(
            states,
            [StepState::Done, StepState::Failed, StepState::Done]
        );
        assert_eq!(st.steps[2].message, "all good");
        // The claim was released: the sequencer takes another.
        assert!(seq.claim("next").is_ok());
    }

    #[tokio::test]
    async fn a_failing_step_stops_the_sequence() {
        let store = Store::default();
        let seq = Sequencer::new(store.clone());
        let ran = Arc::new(Mutex::new(false));
        let r = ran.clone();
        let err = seq
            .claim("apply")
            .unwrap()
            .run(vec![
                Step::new("validate", || async { Err("bad config".into()) }),
                Step::new("after", move || async move {
                    *r.lock().unwrap() = true;
                    Ok(String::new())
                }),
            ])
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "sequence apply failed at step \"validate\": bad config"
        );
        assert!(!*ran.lock().unwrap());
        let (_, st) = store.get::<SequenceStatus>("apply").unwrap();
        assert_eq!(st.state, StepState::Failed);
        assert_eq!(st.steps[1].state, StepState::Pending);
    }

    #[test]
    fn one_sequence_at_a_time() {
        let seq = Sequencer::new(Store::default());
        let c = seq.claim("shutdown").unwrap();
        let e = seq.claim("reboot").unwrap_err();
        assert_eq!(
            e.to_string(),
            "sequence shutdown is running; reboot must wait for it"
        );
        drop(c);
        assert!(seq.claim("reboot").is_ok());
    }
}
