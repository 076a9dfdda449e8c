//! KubeSpan: the automatic WireGuard mesh between a cluster's nodes.
//!
//! Built so far: each node's identity (a persisted WireGuard key pair and a mesh address in a
//! ULA prefix derived from the cluster id), affiliate records sealed with a key derived from the
//! cluster secret, and the open discovery server nodes meet through. Peers and the data plane
//! come next (see docs/kubespan.md). Nothing here touches the network configuration: the
//! WireGuard link itself is networkd's.

#![forbid(unsafe_code)]

pub mod affiliate;
pub mod agent;
pub mod client;
pub mod device;
pub mod discovery;
pub mod identity;
pub mod kernel;
pub mod mss;
pub mod node;
pub mod peer;
