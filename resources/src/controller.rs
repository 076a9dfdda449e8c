//! The controller runtime.
//!
//! A controller declares its inputs (kinds it reads) and outputs (kinds it writes). The runtime
//! runs `reconcile` once at start and again whenever any input changes (changes that arrive
//! while a pass runs are folded into one next pass: level-triggered, not edge-triggered). A
//! pass that fails or panics is retried with exponential back-off; neither takes the runtime
//! down, and a failure is logged when its reason changes, not on every retry. Only a controller that declares an output may write it, and an exclusive output has
//! exactly one controller.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use serde::Serialize;
use tokio::task::JoinHandle;
use tracing::{Instrument as _, debug, info_span, warn};

use crate::backoff::Backoff;
use crate::error_chain;
use crate::resource::{Kind, Metadata, Spec};
use crate::store::{Store, StoreError, Watch};

/// What a reconcile pass may fail with; the runtime logs it and retries with back-off.
pub type ReconcileError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An output a controller declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub kind: Kind,
    /// Exclusive: no other controller may declare this kind. Shared: several controllers may,
    /// each writing only the resources it owns.
    pub exclusive: bool,
}

impl Output {
    pub fn exclusive<T: Spec>() -> Self {
        Output {
            kind: Kind::of::<T>(),
            exclusive: true,
        }
    }
    pub fn shared<T: Spec>() -> Self {
        Output {
            kind: Kind::of::<T>(),
            exclusive: false,
        }
    }
}

/// A controller: pure reconciliation from inputs to outputs.
pub trait Controller: Send + 'static {
    fn name(&self) -> &str;
    fn inputs(&self) -> Vec<Kind>;
    fn outputs(&self) -> Vec<Output>;
    /// Recomputes every output from the current inputs.
    fn reconcile<'a>(
        &'a mut self,
        cx: &'a mut Context,
    ) -> BoxFuture<'a, Result<(), ReconcileError>>;
}

/// Why the runtime refused a controller or a write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    #[error("controller {name:?} is registered twice")]
    DuplicateController { name: String },
    #[error("{kind} is an exclusive output of {first:?}; {second:?} cannot also write it")]
    OutputConflict {
        kind: Kind,
        first: String,
        second: String,
    },
    #[error("controller {controller:?} wrote {kind}, which it did not declare as an output")]
    UndeclaredOutput { controller: String, kind: Kind },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The status of one controller, kept as a resource (`runtime/ControllerStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControllerStatus {
    /// Passes that succeeded.
    pub reconciles: u64,
    /// Consecutive failures (errors or panics) since the last success.
    pub failures: u32,
    /// Panics so far.
    pub panics: u64,
    pub last_error: Option<String>,
}

impl Spec for ControllerStatus {
    const TYPE: &'static str = "ControllerStatus";
    const NAMESPACE: &'static str = "runtime";
}

/// What a reconcile pass sees: the store, through the controller's declared outputs.
#[derive(Debug)]
pub struct Context {
    store: Store,
    name: String,
    outputs: Vec<Kind>,
}

impl Context {
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn check(&self, kind: &Kind) -> Result<(), RuntimeError> {
        if self.outputs.contains(kind) {
            Ok(())
        } else {
            Err(RuntimeError::UndeclaredOutput {
                controller: self.name.clone(),
                kind: kind.clone(),
            })
        }
    }

    pub fn get<T: Spec>(&self, id: &str) -> Option<(Metadata, T)> {
        self.store.get(id)
    }

    pub fn list<T: Spec>(&self) -> Vec<(Metadata, T)> {
        self.store.list()
    }

    /// Creates or updates an output resource owned by this controller.
    pub fn apply<T: Spec>(&self, id: &str, spec: T) -> Result<(), RuntimeError> {
        self.check(&Kind::of::<T>())?;
        Ok(self.store.apply(&self.name, id, spec)?)
    }

    /// Makes the outputs of type `T` owned by this controller exactly `desired`: applies each
    /// and tears down (then destroys, once finalizers allow) every other one it owns.
    pub fn sync<T: Spec>(&self, desired: BTreeMap<String, T>) -> Result<(), RuntimeError> {
        self.check(&Kind::of::<T>())?;
        Ok(self.store.sync_owned(&self.name, &desired)?)
    }

    /// Tears down and destroys one output.
    pub fn destroy<T: Spec>(&self, id: &str) -> Result<(), RuntimeError> {
        let kind = Kind::of::<T>();
        self.check(&kind)?;
        self.store.teardown(&kind, id, &self.name)?;
        Ok(self.store.destroy(&kind, id, &self.name)?)
    }
}

/// Registers controllers and runs them.
pub struct Runtime {
    store: Store,
    controllers: Vec<Box<dyn Controller>>,
    exclusive: BTreeMap<Kind, String>,
    backoff: Backoff,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.controllers.iter().map(|c| c.name()).collect();
        f.debug_struct("Runtime")
            .field("controllers", &names)
            .finish()
    }
}

/// Running controllers; dropping it does not stop them, [`RuntimeHandle::shutdown`] does.
#[derive(Debug)]
pub struct RuntimeHandle {
    tasks: Vec<JoinHandle<()>>,
}

impl RuntimeHandle {
    pub fn shutdown(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

const RUNTIME_OWNER: &str = "runtime";

impl Runtime {
    pub fn new(store: Store) -> Self {
        Runtime {
            store,
            controllers: Vec::new(),
            exclusive: BTreeMap::new(),
            backoff: Backoff::default(),
        }
    }

    /// Sets the retry back-off for failing controllers (default 100 ms doubling to 30 s).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn register(&mut self, c: Box<dyn Controller>) -> Result<(), RuntimeError> {
        let name = c.name().to_string();
        if self.controllers.iter().any(|o| o.name() == name) {
            return Err(RuntimeError::DuplicateController { name });
        }
        for out in c.outputs() {
            let conflict = self.exclusive.get(&out.kind).cloned().or_else(|| {
                // A new exclusive output conflicts with any earlier declaration, shared or not.
                out.exclusive
                    .then(|| {
                        self.controllers
                            .iter()
                            .find(|o| o.outputs().iter().any(|x| x.kind == out.kind))
                            .map(|o| o.name().to_string())
                    })
                    .flatten()
            });
            if let Some(first) = conflict {
                return Err(RuntimeError::OutputConflict {
                    kind: out.kind,
                    first,
                    second: name,
                });
            }
        }
        for out in c.outputs() {
            if out.exclusive {
                self.exclusive.insert(out.kind, name.clone());
            }
        }
        self.controllers.push(c);
        Ok(())
    }

    /// Starts every controller on the current tokio runtime.
    pub fn start(self) -> RuntimeHandle {
        let tasks = self
            .controllers
            .into_iter()
            .map(|c| {
                let store = self.store.clone();
                let backoff = self.backoff.clone();
                let span = info_span!("controller", name = c.name());
                tokio::spawn(run_controller(c, store, backoff).instrument(span))
            })
            .collect();
        RuntimeHandle { tasks }
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

async fn run_controller(mut c: Box<dyn Controller>, store: Store, mut backoff: Backoff) {
    let name = c.name().to_string();
    let mut cx = Context {
        store: store.clone(),
        name: name.clone(),
        outputs: c.outputs().into_iter().map(|o| o.kind).collect(),
    };
    let inputs: BTreeSet<Kind> = c.inputs().into_iter().collect();
    // Watches start at the current revision: the first pass sees everything before it.
    let rev = store.revision();
    let mut watches: Vec<Watch> = inputs
        .iter()
        .map(|k| store.watch_kind(k.clone(), Some(rev)))
        .collect();
    let mut status = ControllerStatus {
        reconciles: 0,
        failures: 0,
        panics: 0,
        last_error: None,
    };
    loop {
        let result = AssertUnwindSafe(c.reconcile(&mut cx)).catch_unwind().await;
        let failed = match result {
            Ok(Ok(())) => {
                backoff.reset();
                status.reconciles += 1;
                status.failures = 0;
                status.last_error = None;
                None
            }
            Ok(Err(e)) => Some(error_chain(e.as_ref())),
            Err(p) => {
                status.panics += 1;
                Some(format!("panicked: {}", panic_message(p.as_ref())))
            }
        };
        let retry_in = failed.map(|msg| {
            let delay = backoff.fail();
            // A reason is logged once while it lasts: a pass waiting on another machine fails
            // the same way every retry.
            if status.last_error.as_ref() != Some(&msg) {
                warn!(error = %msg, retry_in = ?delay, "reconcile failed");
            } else {
                debug!(error = %msg, retry_in = ?delay, "reconcile failed again");
            }
            status.failures = backoff.failures();
            status.last_error = Some(msg);
            delay
        });
        if let Err(e) = store.apply(RUNTIME_OWNER, &name, status.clone()) {
            warn!(error = %e, "cannot record controller status");
        }
        match retry_in {
            Some(delay) => {
                tokio::time::sleep(delay).await;
                drain(&mut watches);
            }
            None => {
                wait_for_input(&mut watches).await;
                // Fold everything else already queued into the same pass.
                drain(&mut watches);
            }
        }
        debug!("reconcile");
    }
}

async fn wait_for_input(watches: &mut [Watch]) {
    if watches.is_empty() {
        std::future::pending::<()>().await;
    }
    let futs = watches.iter_mut().map(|w| Box::pin(w.next()));
    let (res, _, _) = futures::future::select_all(futs).await;
    if let Err(e) = res {
        // A watcher that fell behind the history just triggers a pass: passes read the
        // current state, so nothing is lost.
        debug!(error = %e, "input watch expired; resyncing");
    }
}

fn drain(watches: &mut [Watch]) {
    for w in watches.iter_mut() {
        loop {
            match w.try_next() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    // Resume from now: the next pass reads the current state anyway.
                    *w = Watch::resumed_now(w);
                    break;
                }
            }
        }
    }
}
