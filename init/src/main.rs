//! `init`, the one binary on a Basalt node, chosen by `argv[0]`:
//!
//! - `/init` (in the initramfs): early boot — mount the pseudo-filesystems, load modules, verify
//!   and mount the read-only root, `switch_root`, exec `/sbin/init`.
//! - `/sbin/init` (on the root): PID 1.
//! - `hello`: the program of the test container image (not used on the node itself).
//! - `apid`: the network gateway of the machine API, run by PID 1's supervisor.
//! - `basalt-discovery`: KubeSpan's discovery server, run by the supervisor with
//!   `DiscoveryConfig.serve`.
//!
//! It must never exit while it is PID 1: a fatal error is logged and the machine reboots.
//! It must not grow a shell or anything that interprets user input beyond the machine API.

use basalt_init::{apid, early, hello, pid1};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args.first().cloned().unwrap_or_default();
    let base = argv0.rsplit('/').next().unwrap_or_default();
    match (argv0.as_str(), base) {
        ("/init", _) => early::run(),
        (_, "apid") => apid::run(&args[1..]),
        (_, "hello") => hello::run(&args[1..]),
        (_, "basalt-discovery") => std::process::exit(basalt_kubespan::discovery::cli::run(&args)),
        _ => pid1::run(),
    }
}
