//! Basalt's resource runtime: typed resources in an in-memory store with watch, and the
//! controller runtime that turns inputs into outputs.
//!
//! Everything a node knows is a resource here (specs say what should be, statuses what is).
//! This crate holds no node logic and does no I/O beyond the tokio tasks that run controllers.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod controller;
pub mod resource;
pub mod store;

pub use backoff::Backoff;
pub use controller::{
    Context, Controller, ControllerStatus, Output, ReconcileError, Runtime, RuntimeError,
};
pub use resource::{Kind, Metadata, Phase, Resource, Spec};
pub use store::{Event, EventKind, Store, StoreError, Watch, WatchError};

/// An error and its sources as one line, `"outer: cause: root cause"`: the one way every Basalt
/// program prints an error chain.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut src = err.source();
    while let Some(e) = src {
        s.push_str(": ");
        s.push_str(&e.to_string());
        src = e.source();
    }
    s
}
