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

/// HTTP/2 flow control on every hop of the machine API (osctl → apid → apid → init), both
/// ends: how much a stream, and a connection, may have in flight before the receiver says it
/// took it. h2's and hyper's defaults (64 KiB, or 1 MiB a connection on a server) hold a bulk
/// upload — an image import's 1 MiB messages, three nodes' streams sharing one connection to
/// the endpoint — to one message at a time per hop, each waiting for a window update. A
/// forwarding apid holds at most a connection's window of what it has not sent on yet.
pub const STREAM_WINDOW: u32 = 4 << 20;
/// See [`STREAM_WINDOW`].
pub const CONNECTION_WINDOW: u32 = 8 << 20;
/// The largest HTTP/2 frame the servers (apid, init) take: a 1 MiB upload message goes in 4
/// frames, not 64.
pub const MAX_FRAME: u32 = 256 << 10;

/// A client endpoint with the machine API's flow control ([`STREAM_WINDOW`]).
pub fn endpoint(e: tonic::transport::Endpoint) -> tonic::transport::Endpoint {
    e.initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
}

/// A gRPC channel to a unix socket (the URI is a placeholder: every connection dials `path`).
pub fn unix_channel(path: impl Into<std::path::PathBuf>) -> tonic::transport::Channel {
    let path: std::path::PathBuf = path.into();
    endpoint(tonic::transport::Endpoint::from_static(
        "http://unix.invalid",
    ))
    .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
        let path = path.clone();
        async move {
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                tokio::net::UnixStream::connect(path).await?,
            ))
        }
    }))
}
