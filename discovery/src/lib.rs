//! The open discovery server: a registry of sealed affiliate records per cluster, with TTLs,
//! limits and an optional snapshot file, served over gRPC (`basalt.discovery.v1`). The registry
//! and the rate limiter are pure (time is passed in) and tested on fake time; the server is a
//! thin tonic layer over them.

pub mod cli;
mod registry;
mod server;

pub use registry::{AffiliateView, Change, Limits, RateLimiter, Registry, RegistryError, Snapshot};
pub use server::{DiscoveryService, ServeError, serve, serve_with};
