//! PID 1's tasks run under one guard, the only way a task is kept alive: a task that panics is
//! logged and started again with back-off, so no single bug takes the node down. A task that
//! should run for the node's life ([`supervise`]: the API server, the config followers, time
//! sync) is also started again when it returns; a task that has a job to finish
//! ([`until_done`]: the first config from a URL, the images imported at boot, a trial boot's
//! watch) ends when it returns.

use std::future::Future;
use std::time::Duration;

use basalt_resources::backoff::Backoff;

/// What a panic said: its `&str` or `String` payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-string payload".into())
}

/// A panic caught, with what it said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Panicked(pub String);

/// Runs `f`, turning a panic into its message (for PID 1, which must never unwind).
pub fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, Panicked> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|p| Panicked(panic_message(&*p)))
}

/// Runs `make()` forever: restarted after a panic or an early return, with back-off (reset
/// after a run of a minute or more).
pub fn supervise<F, Fut>(name: &'static str, make: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    supervise_with(
        name,
        Backoff::new(Duration::from_millis(200), Duration::from_secs(30), 2),
        make,
    )
}

/// Runs `make()` until one run returns: started again only after a panic, with back-off.
pub fn until_done<F, Fut>(name: &'static str, make: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    guard(
        name,
        Backoff::new(Duration::from_millis(200), Duration::from_secs(30), 2),
        Lifetime::UntilDone,
        make,
    )
}

/// [`supervise`] with a back-off of its own.
pub fn supervise_with<F, Fut>(
    name: &'static str,
    backoff: Backoff,
    make: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    guard(name, backoff, Lifetime::Forever, make)
}

/// How long a guarded task lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifetime {
    /// The node's life: a return is a failure like a panic.
    Forever,
    /// Until a run returns.
    UntilDone,
}

/// A run's handle that aborts the run when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn guard<F, Fut>(
    name: &'static str,
    mut backoff: Backoff,
    lifetime: Lifetime,
    mut make: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let started = tokio::time::Instant::now();
            // Aborting this task (a controller stopping what it runs) aborts the run too.
            let mut run = AbortOnDrop(tokio::spawn(make()));
            let why = match (&mut run.0).await {
                Ok(()) if lifetime == Lifetime::UntilDone => return,
                Ok(()) => "ended".to_string(),
                Err(e) if e.is_panic() => {
                    format!("panicked: {}", panic_message(&*e.into_panic()))
                }
                Err(_) => return,
            };
            if started.elapsed() >= Duration::from_secs(60) {
                backoff.reset();
            }
            let d = backoff.fail();
            tracing::warn!(
                task = name,
                why = %why,
                restart_in = %crate::fmt_duration(d),
                "task stopped; restarting it"
            );
            tokio::time::sleep(d).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn a_guarded_panic_is_its_message_not_an_unwind() {
        assert_eq!(guarded(|| 7), Ok(7));
        let r = guarded(|| -> () { panic!("wiring broke at step {}", 3) });
        assert_eq!(r, Err(Panicked("wiring broke at step 3".into())));
        let r = guarded(|| -> () { std::panic::panic_any(42u8) });
        assert_eq!(r, Err(Panicked("a panic with a non-string payload".into())));
    }

    #[tokio::test(start_paused = true)]
    async fn aborting_a_supervised_task_stops_its_run() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let h = supervise("runs-until-aborted", move || {
            let tx = tx.clone();
            async move {
                // The run holds the sender: the channel closes only when the run is gone.
                let _held = tx;
                std::future::pending::<()>().await;
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        h.abort();
        let closed = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await;
        assert_eq!(closed, Ok(None), "the run outlived its aborted task");
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_with_backoff() {
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let h = supervise_with(
            "flaky",
            Backoff::new(Duration::from_secs(1), Duration::from_secs(10), 2),
            move || {
                let n = r.fetch_add(1, Ordering::SeqCst);
                let tx = tx.clone();
                async move {
                    let _ = tx.send(tokio::time::Instant::now());
                    if n < 3 {
                        panic!("injected panic {n}");
                    }
                    std::future::pending::<()>().await;
                }
            },
        );
        let mut starts = Vec::new();
        for _ in 0..4 {
            starts.push(rx.recv().await.unwrap());
        }
        let gaps: Vec<u64> = starts.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
        assert_eq!(gaps, [1, 2, 4], "restarted with doubling back-off");
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            4,
            "a healthy task is left alone"
        );
        h.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_with_a_job_ends_when_done_and_is_restarted_only_after_a_panic() {
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let h = until_done("once", move || {
            let n = r.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    panic!("the first run fails");
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(60), h)
            .await
            .expect("the guard ends once a run returns")
            .unwrap();
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "one panic, one run that returned"
        );

        // A task for the node's life is started again when it returns.
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let h = supervise("forever", move || {
            r.fetch_add(1, Ordering::SeqCst);
            async {}
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(runs.load(Ordering::SeqCst) >= 3, "{runs:?}");
        h.abort();
    }
}
