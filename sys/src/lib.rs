//! The node's interfaces to the kernel, and the only crate of Basalt with `unsafe` code:
//! loop devices, device-mapper (dm-verity), block devices, module loading, mount tables, the kernel command
//! line, `/dev/kmsg`, process confinement before `exec`, rebooting and atomic writes.
//!
//! Every `unsafe` block carries a `// SAFETY:` comment; kernel structures are `#[repr(C)]`
//! with a test of their layout. What must not be here: anything that knows about the machine
//! config, resources or an async runtime — this crate is used by the initramfs's small
//! `basalt-early` as well as by PID 1 and the tools.

pub mod blockdev;
pub mod clock;
pub mod cmdline;
pub mod fs;
pub mod kmsg;
pub mod loopdev;
pub mod modules;
pub mod mountinfo;
pub mod netif;
pub mod power;
pub mod process;
pub mod verity;

/// An error and its sources as one line, `"outer: cause: root cause"`: the one way every Basalt
/// program prints an error chain (each error's message never repeats its source).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut src = err.source();
    while let Some(e) = src {
        s.push_str(": ");
        s.push_str(&e.to_string());
        src = e.source();
    }
    s
}
