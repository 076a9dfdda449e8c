//! `init`, the node's binary on the root, chosen by `argv[0]` (the initramfs's `/init` is the
//! small `basalt-early`, a crate of its own):
//!
//! - `/sbin/init`: PID 1.
//! - `apid`: the network gateway of the machine API, run by PID 1's supervisor.
//! - `basalt-discovery`: KubeSpan's discovery server, run by the supervisor with
//!   `DiscoveryConfig.serve`.
//! - `basalt-registry`: the registry on loopback that serves the images the rootfs ships for
//!   pods (`basalt_containerd::shipped`), run by the supervisor beside containerd.
//!
//! It must never exit while it is PID 1: a fatal error is logged and the machine reboots.
//! It must not grow a shell or anything that interprets user input beyond the machine API.

use basalt_init::pid1;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args.first().cloned().unwrap_or_default();
    let base = argv0.rsplit('/').next().unwrap_or_default();
    match base {
        "apid" => basalt_apid::run(&args[1..]),
        "basalt-discovery" => std::process::exit(basalt_discovery::cli::run(&args)),
        basalt_containerd::shipped::ARG0 => basalt_containerd::shipped::run(&args[1..]),
        _ => pid1::run(),
    }
}
