//! The one way a task follows a watched value (a node's config): a pass for the current
//! value, retried until it succeeds, and run again for each new value.

/// Drives a level-triggered pass over a watched value (a node's config): `pass` runs for the current config, again
/// every `retry` until it returns `Ok`, and again whenever a new config arrives (a retry in
/// progress gives way to it). Each new error (by its text) is logged once, as `what` "not
/// done yet"; returns when the config's sender goes away.
pub async fn each<T, F, Fut, E>(
    mut config: tokio::sync::watch::Receiver<Option<std::sync::Arc<T>>>,
    what: &str,
    retry: std::time::Duration,
    mut pass: F,
) where
    F: FnMut(std::sync::Arc<T>) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::error::Error,
{
    let mut last_error = String::new();
    loop {
        let current = config.borrow_and_update().clone();
        if let Some(cfg) = current {
            loop {
                match pass(cfg.clone()).await {
                    Ok(()) => {
                        last_error.clear();
                        break;
                    }
                    Err(e) => {
                        let e = crate::error_chain(&e);
                        if e != last_error {
                            tracing::warn!("{what} not done yet: {e}");
                            last_error = e;
                        }
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    changed = config.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        break;
                    }
                }
            }
            if config.has_changed().unwrap_or(false) {
                continue;
            }
        }
        if config.changed().await.is_err() {
            return;
        }
    }
}
