//! KubeSpan: the automatic WireGuard mesh between a cluster's nodes, on each node: its
//! identity (a persisted WireGuard key pair and a mesh address in a ULA prefix derived from the
//! cluster id), affiliate records sealed with a key derived from the cluster secret, the
//! discovery client, the agent that turns affiliates into peers and watches their health, the
//! data plane (the kernel's WireGuard, or the userspace one behind the `userspace` feature),
//! MSS clamping. The discovery server the nodes meet through is the `basalt-discovery` crate;
//! the WireGuard link and the mesh's routes themselves are networkd's (see docs/kubespan.md).

#![forbid(unsafe_code)]

pub mod affiliate;
pub mod agent;
pub mod client;
pub mod device;
pub mod identity;
pub mod kernel;
pub mod mss;
pub mod node;
pub mod peer;
