//! `basalt-early`, the small binary beside `init`, chosen by `argv[0]`:
//!
//! - `/init` (in the initramfs): early boot — mount the pseudo-filesystems, load modules, verify
//!   and mount the read-only root, `switch_root`, exec `/sbin/init`.
//! - `hello`: the program of the test container image (not used on the node itself).
//!
//! Why apart from `init`: the kernel unpacks the initramfs and GRUB reads it on every boot,
//! and both steps are paid per byte — this binary carries none of PID 1's API, controllers,
//! TLS or Kubernetes code (about 1 MB instead of 15). The code is the same modules of
//! `basalt-init`; only the entry points differ.

use basalt_init::{early, hello};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args.first().cloned().unwrap_or_default();
    let base = argv0.rsplit('/').next().unwrap_or_default();
    match (argv0.as_str(), base) {
        (_, "hello") => hello::run(&args[1..]),
        _ => early::run(),
    }
}
