//! Confining a child process between `fork` and `exec`: its cgroup, its capability bounding
//! set and its rlimits. This is the one `pre_exec` hook of Basalt, so its `unsafe` stays here.

#![allow(unsafe_code)]

use std::fs::File;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::process::Command;

use nix::sys::resource::{Resource, setrlimit};

/// What the child is confined to. Everything is prepared in the parent: after `fork` only
/// async-signal-safe calls (write, prctl, setrlimit) may run.
#[derive(Debug, Default)]
pub struct Confinement {
    /// The cgroup's `cgroup.procs`, opened for writing: the child moves itself in.
    pub cgroup_procs: Option<File>,
    /// Capabilities dropped from the bounding set (by number, see capabilities(7)).
    pub drop_caps: Vec<u32>,
    /// `(resource, soft, hard)`; a hard limit the child may not raise is capped at the current.
    pub rlimits: Vec<(Resource, u64, u64)>,
}

/// The highest capability number this kernel knows.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Installs `c` on `cmd`: it takes effect in the child, before `exec`.
pub fn confine(cmd: &mut Command, c: Confinement) {
    let Confinement {
        cgroup_procs,
        drop_caps,
        rlimits,
    } = c;
    let hook = move || -> std::io::Result<()> {
        if let Some(f) = &cgroup_procs {
            // "0" moves the writing process, the child itself, into the cgroup.
            (&*f).write_all(b"0")?;
        }
        for &cap in &drop_caps {
            // SAFETY: PR_CAPBSET_DROP takes a capability number and no pointers.
            let r = unsafe {
                nix::libc::prctl(
                    nix::libc::PR_CAPBSET_DROP,
                    nix::libc::c_ulong::from(cap),
                    0,
                    0,
                    0,
                )
            };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        for &(res, soft, hard) in &rlimits {
            if setrlimit(res, soft, hard).is_err() {
                // Not allowed to raise the hard limit here (a container, a lower nr_open):
                // go as high as the current hard limit.
                let (_, cur_hard) = nix::sys::resource::getrlimit(res)?;
                setrlimit(res, soft.min(cur_hard), hard.min(cur_hard))?;
            }
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec. It makes only raw system calls
    // (write(2) on an fd opened before the fork, prctl(2), setrlimit(2)) on data prepared
    // before the fork, and allocates nothing.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Puts the calling thread in the `SCHED_IDLE` class: it runs only when nothing else wants the
/// CPU. Fails harmlessly (the thread keeps its class) where the kernel refuses.
pub fn idle_priority() {
    // SAFETY: sched_setscheduler on this thread (pid 0) with a valid param struct that lives
    // across the call; SCHED_IDLE takes priority 0.
    unsafe {
        let param = nix::libc::sched_param { sched_priority: 0 };
        nix::libc::sched_setscheduler(0, nix::libc::SCHED_IDLE, &param);
    }
}
