//! `init`, the one binary on a Basalt node, chosen by `argv[0]`:
//!
//! - `/init` (in the initramfs): early boot — mount the pseudo-filesystems, load modules, verify
//!   and mount the read-only root, `switch_root`, exec `/sbin/init`.
//! - `/sbin/init` (on the root): PID 1.
//!
//! It must never exit while it is PID 1: a fatal error is logged and the machine reboots.
//! It must not grow a shell or anything that interprets user input beyond the machine API.

mod cgroup;
mod cmdline;
mod early;
mod log;
mod logring;
mod loopdev;
mod mounts;
mod pid1;
mod process;
mod reaper;
mod supervisor;

pub use basalt_resources::error_chain;

fn main() {
    let argv0 = std::env::args().next().unwrap_or_default();
    match argv0.as_str() {
        "/init" => early::run(),
        _ => pid1::run(),
    }
}
