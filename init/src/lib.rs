//! `init`, PID 1 on the node's root: the composition root. It wires the crates that own each
//! job (the supervisor, networkd, KubeSpan, containerd, Kubernetes, apid) into one node, owns
//! the config lifecycle and the sequences (boot, apply, install, reboot, shutdown, reset), and serves
//! the machine API on its unix socket.
//!
//! What it must not do: hold the logic of a subsystem that has a crate of its own. `main.rs`
//! dispatches by `argv[0]` into [`pid1`], apid and the discovery server; benches and tests
//! build a node's API from the same parts.

#![forbid(unsafe_code)]

pub mod api;
pub mod apidcert;
pub mod configstate;
pub mod configurl;
pub mod install;
pub mod kubespan;
pub mod logging;
pub mod net;
pub mod node;
pub mod pid1;
pub mod ping;
pub mod scrub;
pub mod sequence;
pub mod space;
pub mod sysinfo;
pub mod trial;
pub mod upgrade;

pub use basalt_sys::error_chain;
