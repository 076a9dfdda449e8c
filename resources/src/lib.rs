//! Basalt's resource runtime: typed resources in an in-memory store with watch, and the
//! controller runtime that turns inputs into outputs.
//!
//! Everything a node knows is a resource here (specs say what should be, statuses what is).
//! This crate holds no node logic and does no I/O beyond the tokio tasks that run controllers.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod controller;
pub mod ratelimit;
pub mod resource;
pub mod store;

pub use backoff::Backoff;
pub use controller::{
    Context, Controller, ControllerStatus, Output, ReconcileError, Runtime, RuntimeError,
};
pub use resource::{Kind, Metadata, Phase, Resource, Spec};
pub use store::{Event, EventKind, Store, StoreError, Watch, WatchError};

/// An error and its sources as one line (defined in `basalt-sys`, below every crate).
pub use basalt_sys::error_chain;
