//! Compiles the node's subset of containerd's messages with protox (pure Rust), so building
//! needs no system `protoc`, as `api/` does.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/containerd.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
