//! The node's one program as a library: `main.rs` dispatches by `argv[0]` into [`early`],
//! [`pid1`], [`apid`] and [`hello`]; benches and tests build a node's API from the same parts.

pub mod api;
pub mod apid;
pub mod cgroup;
pub mod cmdline;
pub mod configstate;
pub mod containerd;
pub mod containers;
pub mod early;
pub mod hello;
pub mod kubernetes;
pub mod kubespan;
pub mod log;
pub mod logring;
pub mod loopdev;
pub mod mounts;
pub mod net;
pub mod node;
pub mod pid1;
pub mod ping;
pub mod process;
pub mod reaper;
pub mod sequence;
pub mod supervisor;
pub mod sysinfo;
pub mod tasks;
pub mod verity;

pub use basalt_resources::error_chain;
