//! The machine API (what init serves on its unix socket and apid carries over the network)
//! and the discovery API (what KubeSpan's nodes and the discovery server speak).
//!
//! The `.proto` files under `proto/` are the contract; this crate holds the code tonic
//! generates from them, the role table ([`auth`]) and how both ends speak TLS ([`tls`]) —
//! what a client and a server must agree on. It must not grow other logic: servers live in
//! `init` and `apid`, clients in `osctl`.

#![forbid(unsafe_code)]

pub mod auth;
pub mod tls;

#[allow(missing_debug_implementations, clippy::all)]
pub mod machine {
    //! `basalt.machine.v1`.
    tonic::include_proto!("basalt.machine.v1");
}

#[allow(missing_debug_implementations, clippy::all)]
pub mod discovery {
    //! `basalt.discovery.v1`: the open discovery service KubeSpan's nodes meet through.
    tonic::include_proto!("basalt.discovery.v1");
}

/// The discovery service's default port.
pub const DISCOVERY_PORT: u16 = 3000;

/// Where init serves the machine API on a node.
pub const INIT_SOCKET: &str = "/system/run/init/machine.sock";

/// The TCP port apid listens on.
pub const APID_PORT: u16 = 50000;

/// A gRPC channel to a unix socket (the URI is a placeholder: every connection dials `path`).
pub fn unix_channel(path: impl Into<std::path::PathBuf>) -> tonic::transport::Channel {
    let path: std::path::PathBuf = path.into();
    tonic::transport::Endpoint::from_static("http://unix.invalid").connect_with_connector_lazy(
        tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }),
    )
}
