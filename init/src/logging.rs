//! PID 1's one logging pipeline: every `tracing` event of init and of the libraries it runs
//! (networkd, KubeSpan, the controller runtime, the supervisor, Kubernetes) becomes one line,
//! `message key=value ...`, on the console (through `/dev/kmsg`, which the kernel echoes, or
//! stdout in a container) and in the `init` log ring that `osctl logs init` reads.
//!
//! Lines of a library name it first (`networkd: applied ...`), so the ring tells whose event it
//! was; init's and the supervisor's lines read as before (`basalt: PID 1 running`,
//! `basalt: service containerd: healthy`).

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use basalt_supervisor::logring::LogRing;
use basalt_sys::kmsg;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

/// Where lines go besides the console, once the ring exists (the first lines of boot are
/// before it).
static RING: OnceLock<Arc<LogRing>> = OnceLock::new();

/// Installs the pipeline as the process's subscriber; `kmsg` says whether the kernel log is
/// the console (metal) or stdout is (a container). Idempotent: a second call changes nothing.
pub fn init(use_kmsg: bool) {
    if use_kmsg {
        kmsg::open();
    }
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(Level::INFO)
        // rustls and hyper speak at debug for every connection; their warnings still come.
        .with_target("rustls", Level::WARN)
        .with_target("h2", Level::WARN)
        .with_target("hyper", Level::WARN)
        .with_target("tower", Level::WARN)
        .with_target("netlink_proto", Level::WARN);
    let _ = tracing_subscriber::registry()
        .with(Pipeline.with_filter(filter))
        .try_init();
}

/// Lines logged before the ring exists (the first second of PID 1: mounts, the state disk),
/// handed to the ring when it comes, so `osctl logs init` starts at the beginning.
static EARLY: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
/// At most this many early lines are kept.
const EARLY_MAX: usize = 500;

/// From now on every line is also kept in `ring`, the ones before it first.
pub fn keep_in(ring: Arc<LogRing>) {
    let mut early = EARLY.lock().unwrap_or_else(|p| p.into_inner());
    for l in early.drain(..) {
        ring.push(&l);
    }
    let _ = RING.set(ring);
}

#[derive(Debug)]
struct Pipeline;

impl<S: Subscriber> Layer<S> for Pipeline {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let text = format_event(event);
        match RING.get() {
            Some(r) => r.push(&text),
            None => {
                let mut early = EARLY.lock().unwrap_or_else(|p| p.into_inner());
                // keep_in may have set the ring while this waited for the lock.
                match RING.get() {
                    Some(r) => r.push(&text),
                    None if early.len() < EARLY_MAX => early.push(text.clone()),
                    None => {}
                }
            }
        }
        let level = match *event.metadata().level() {
            Level::ERROR => kmsg::Level::Error,
            Level::WARN => kmsg::Level::Warning,
            Level::INFO => kmsg::Level::Info,
            _ => kmsg::Level::Debug,
        };
        kmsg::write(level, &text);
    }
}

/// `crate: message key=value ...`, the crate left out for init's and the supervisor's events.
pub fn format_event(event: &Event<'_>) -> String {
    let mut v = Fields::default();
    event.record(&mut v);
    let mut out = String::new();
    if let Some(who) = source(event.metadata().target()) {
        out.push_str(who);
        out.push_str(": ");
    }
    out.push_str(&v.message);
    for (k, val) in v.fields {
        let _ = write!(out, " {k}={val}");
    }
    out
}

/// The short name of the library an event comes from (`basalt_networkd::apply` →
/// `networkd`), or `None` for init's own.
fn source(target: &str) -> Option<&str> {
    let krate = target.split("::").next().unwrap_or(target);
    match krate.strip_prefix("basalt_") {
        // The supervisor's lines name their service (`service containerd: healthy`): they
        // read as the node's own.
        Some("init" | "supervisor") => None,
        Some(short) => Some(short),
        None => Some(krate),
    }
}

/// A value as it stands, or quoted when it has spaces (so `key=value` pairs stay readable).
fn quoted(v: &str) -> String {
    if v.is_empty() || v.contains(char::is_whitespace) {
        format!("{v:?}")
    } else {
        v.to_string()
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields.push((field.name(), quoted(value)));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.fields.push((field.name(), quoted(&text)));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // The whole chain, once.
        self.fields.push((
            field.name(),
            format!("{:?}", basalt_sys::error_chain(value)),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A layer that keeps the formatted lines, to test the formatting without the console.
    struct Keep(Arc<Mutex<Vec<String>>>);
    impl<S: Subscriber> Layer<S> for Keep {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            self.0.lock().unwrap().push(format_event(event));
        }
    }

    #[test]
    fn events_are_one_line_with_their_source_and_fields() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sub = tracing_subscriber::registry().with(Keep(lines.clone()));
        tracing::subscriber::with_default(sub, || {
            tracing::info!("PID 1 running");
            tracing::info!(target: "basalt_networkd::apply", ops = 3, link = "eth0", "applied");
            let op = "address add 10.0.2.15/24 dev eth0";
            tracing::info!(target: "basalt_networkd::apply", op = %op, "applied");
            let e = std::io::Error::other("disk on fire");
            tracing::warn!(target: "basalt_resources::controller", controller = "merge", error = &e as &dyn std::error::Error, "reconcile failed");
            tracing::info!(target: "basalt_kubespan::agent", peer = "node 2", "peer up");
            tracing::info!(target: "basalt_supervisor", "service containerd: healthy");
        });
        let lines = lines.lock().unwrap().clone();
        assert_eq!(
            lines,
            vec![
                "PID 1 running".to_string(),
                "networkd: applied ops=3 link=eth0".into(),
                "networkd: applied op=\"address add 10.0.2.15/24 dev eth0\"".into(),
                "resources: reconcile failed controller=merge error=\"disk on fire\"".into(),
                "kubespan: peer up peer=\"node 2\"".into(),
                "service containerd: healthy".into(),
            ]
        );
    }
}
