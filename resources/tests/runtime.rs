//! The controller runtime, on tokio's paused (fake) clock: level-triggered passes, back-off,
//! panics, and the owner rules.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use basalt_resources::{
    Backoff, Context, Controller, ControllerStatus, Kind, Output, ReconcileError, Runtime,
    RuntimeError, Spec, Store,
};
use futures::future::BoxFuture;
use serde::Serialize;
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Serialize)]
struct Wanted(Vec<String>);
impl Spec for Wanted {
    const TYPE: &'static str = "Wanted";
    const NAMESPACE: &'static str = "test";
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct Made(String);
impl Spec for Made {
    const TYPE: &'static str = "Made";
    const NAMESPACE: &'static str = "test";
}

/// Makes one `Made` per name in `Wanted "w"`; fails or panics on the passes it is told to.
struct Maker {
    name: &'static str,
    /// Per pass (0-based): "ok", "err" or "panic"; past the end, "ok".
    script: Vec<&'static str>,
    passes: Arc<Mutex<Vec<Instant>>>,
    exclusive: bool,
}

impl Controller for Maker {
    fn name(&self) -> &str {
        self.name
    }
    fn inputs(&self) -> Vec<Kind> {
        vec![Kind::of::<Wanted>()]
    }
    fn outputs(&self) -> Vec<Output> {
        if self.exclusive {
            vec![Output::exclusive::<Made>()]
        } else {
            vec![Output::shared::<Made>()]
        }
    }
    fn reconcile<'a>(
        &'a mut self,
        cx: &'a mut Context,
    ) -> BoxFuture<'a, Result<(), ReconcileError>> {
        Box::pin(async move {
            let n = {
                let mut p = self.passes.lock().unwrap();
                p.push(Instant::now());
                p.len() - 1
            };
            match self.script.get(n).copied().unwrap_or("ok") {
                "err" => return Err(format!("injected failure {n}").into()),
                "panic" => panic!("injected panic {n}"),
                _ => {}
            }
            let wanted = cx.get::<Wanted>("w").map(|(_, w)| w.0).unwrap_or_default();
            let desired: BTreeMap<String, Made> = wanted
                .into_iter()
                .map(|n| (n.clone(), Made(format!("made by {}", self.name))))
                .collect();
            cx.sync(desired)?;
            Ok(())
        })
    }
}

fn maker(name: &'static str, script: Vec<&'static str>) -> (Box<Maker>, Arc<Mutex<Vec<Instant>>>) {
    let passes = Arc::new(Mutex::new(Vec::new()));
    (
        Box::new(Maker {
            name,
            script,
            passes: passes.clone(),
            exclusive: true,
        }),
        passes,
    )
}

async fn settle() {
    // Paused time: sleeping lets every runnable task (and timer) run.
    tokio::time::sleep(Duration::from_secs(60)).await;
}

fn made(s: &Store) -> Vec<String> {
    s.list::<Made>().into_iter().map(|(md, _)| md.id).collect()
}

#[tokio::test(start_paused = true)]
async fn outputs_follow_inputs_level_triggered() {
    let store = Store::default();
    let mut rt = Runtime::new(store.clone());
    let (m, passes) = maker("maker", vec![]);
    rt.register(m).unwrap();
    let h = rt.start();
    store
        .apply("user", "w", Wanted(vec!["a".into(), "b".into()]))
        .unwrap();
    settle().await;
    assert_eq!(made(&store), vec!["a", "b"]);
    store
        .apply("user", "w", Wanted(vec!["b".into(), "c".into()]))
        .unwrap();
    settle().await;
    assert_eq!(made(&store), vec!["b", "c"], "a is torn down, c created");
    let before = passes.lock().unwrap().len();
    // Three changes at once fold into one pass.
    for i in 0..3 {
        store
            .apply("user", "w", Wanted(vec![format!("x{i}")]))
            .unwrap();
    }
    settle().await;
    assert_eq!(made(&store), vec!["x2"]);
    assert_eq!(passes.lock().unwrap().len(), before + 1);
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_exponentially_then_reset() {
    let store = Store::default();
    let mut rt = Runtime::new(store.clone()).with_backoff(Backoff::new(
        Duration::from_millis(100),
        Duration::from_millis(500),
        2,
    ));
    let (m, passes) = maker("flaky", vec!["err", "err", "err", "err", "err", "ok"]);
    rt.register(m).unwrap();
    store.apply("user", "w", Wanted(vec!["a".into()])).unwrap();
    let h = rt.start();
    settle().await;
    let times = passes.lock().unwrap().clone();
    let gaps: Vec<u128> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    assert_eq!(
        gaps,
        vec![100, 200, 400, 500, 500],
        "doubling from 100 ms, capped at 500 ms"
    );
    assert_eq!(made(&store), vec!["a"]);
    let (_, st) = store.get::<ControllerStatus>("flaky").unwrap();
    assert_eq!((st.reconciles, st.failures, st.last_error), (1, 0, None));
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn a_panicking_controller_is_retried_and_others_keep_running() {
    let store = Store::default();
    let mut rt = Runtime::new(store.clone());
    let (bad, bad_passes) = maker("panicky", vec!["panic", "panic", "ok"]);
    rt.register(bad).unwrap();
    rt.register(Box::new(Echo)).unwrap();
    let h = rt.start();
    store.apply("user", "w", Wanted(vec!["a".into()])).unwrap();
    // The healthy controller works while the other one panics.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(store.get::<Echoed>("w").map(|(_, e)| e.0), Some(1));
    // While it panics, its status says so.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, st) = store.get::<ControllerStatus>("panicky").unwrap();
    assert_eq!(st.panics, 1);
    assert!(st.last_error.unwrap().contains("injected panic 0"));
    settle().await;
    assert!(bad_passes.lock().unwrap().len() >= 3);
    assert_eq!(made(&store), vec!["a"]);
    let (_, st) = store.get::<ControllerStatus>("panicky").unwrap();
    assert_eq!((st.panics, st.failures), (2, 0));
    h.shutdown();
}

#[test]
fn exclusive_outputs_have_one_controller() {
    let mut rt = Runtime::new(Store::default());
    rt.register(maker("one", vec![]).0).unwrap();
    let err = rt.register(maker("two", vec![]).0).unwrap_err();
    assert_eq!(
        err,
        RuntimeError::OutputConflict {
            kind: Kind::of::<Made>(),
            first: "one".into(),
            second: "two".into()
        }
    );
    assert!(matches!(
        rt.register(maker("one", vec![]).0),
        Err(RuntimeError::DuplicateController { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn shared_outputs_still_refuse_writes_to_another_owners_resource() {
    let store = Store::default();
    let mut rt = Runtime::new(store.clone());
    let (mut a, _) = maker("a", vec![]);
    a.exclusive = false;
    let (mut b, _) = maker("b", vec![]);
    b.exclusive = false;
    rt.register(a).unwrap();
    rt.register(b).unwrap();
    let h = rt.start();
    store
        .apply("user", "w", Wanted(vec!["same".into()]))
        .unwrap();
    settle().await;
    let (md, spec) = store.get::<Made>("same").unwrap();
    let (_, sa) = store.get::<ControllerStatus>("a").unwrap();
    let (_, sb) = store.get::<ControllerStatus>("b").unwrap();
    // Exactly one of them owns it, and the other is told who does.
    assert_eq!(spec.0, format!("made by {}", md.owner));
    let loser = if md.owner == "a" { sb } else { sa };
    assert!(
        loser.last_error.unwrap().contains("is owned by"),
        "the second writer gets an owner error"
    );
    h.shutdown();
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct Echoed(usize);
impl Spec for Echoed {
    const TYPE: &'static str = "Echoed";
    const NAMESPACE: &'static str = "test";
}

/// Echoes how many names `Wanted "w"` has.
struct Echo;
impl Controller for Echo {
    fn name(&self) -> &str {
        "echo"
    }
    fn inputs(&self) -> Vec<Kind> {
        vec![Kind::of::<Wanted>()]
    }
    fn outputs(&self) -> Vec<Output> {
        vec![Output::exclusive::<Echoed>()]
    }
    fn reconcile<'a>(
        &'a mut self,
        cx: &'a mut Context,
    ) -> BoxFuture<'a, Result<(), ReconcileError>> {
        Box::pin(async move {
            if let Some((_, w)) = cx.get::<Wanted>("w") {
                cx.apply("w", Echoed(w.0.len()))?;
            }
            Ok(())
        })
    }
}

struct Rogue;
impl Controller for Rogue {
    fn name(&self) -> &str {
        "rogue"
    }
    fn inputs(&self) -> Vec<Kind> {
        vec![]
    }
    fn outputs(&self) -> Vec<Output> {
        vec![]
    }
    fn reconcile<'a>(
        &'a mut self,
        cx: &'a mut Context,
    ) -> BoxFuture<'a, Result<(), ReconcileError>> {
        Box::pin(async move { Ok(cx.apply("x", Made("sneaky".into()))?) })
    }
}

#[tokio::test(start_paused = true)]
async fn undeclared_outputs_are_refused() {
    let store = Store::default();
    let mut rt = Runtime::new(store.clone());
    rt.register(Box::new(Rogue)).unwrap();
    let h = rt.start();
    settle().await;
    assert!(store.get::<Made>("x").is_none());
    let (_, st) = store.get::<ControllerStatus>("rogue").unwrap();
    assert_eq!(
        st.last_error.as_deref(),
        Some("controller \"rogue\" wrote test/Made, which it did not declare as an output")
    );
    h.shutdown();
}
