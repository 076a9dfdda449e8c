//! Compiles the protos with protox (pure Rust), so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/basalt/machine/v1/machine.proto",
        "proto/basalt/discovery/v1/discovery.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // osctl prints replies as JSON and YAML.
        .message_attribute(".", "#[derive(serde::Serialize)]")
        .compile_fds(fds)?;
    Ok(())
}
