//! PID 1 proper, on the read-only root.
//!
//! For now it reports the mounts and then reaps children and waits for a shutdown signal; the
//! supervisor, the controllers and the machine API arrive with the init issue (4).

use std::error::Error as _;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

use crate::cmdline::Cmdline;
use crate::log;
use crate::mounts;

pub fn run() -> ! {
    log::open_kmsg();
    let pid = std::process::id();
    if pid != 1 {
        log::line(&format!("init runs as pid {pid}, not 1: nothing to do"));
        std::process::exit(1);
    }
    log::line("PID 1 running");
    let (cmdline, _) =
        Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    report_mounts();
    // The node's other modules are on the root; loading them (~40 ms each under TCG) does not
    // hold up PID 1.
    std::thread::spawn(|| {
        let t = std::time::Instant::now();
        match crate::early::load_modules(crate::early::LOAD_ORDER) {
            Ok(n) => log::line(&format!(
                "node modules loaded ({n} modules in {} ms)",
                t.elapsed().as_millis()
            )),
            Err(e) => log::line(&format!(
                "cannot load node modules: {e}: {}",
                e.source().map(ToString::to_string).unwrap_or_default()
            )),
        }
    });

    // Prove the container runtime in the rootfs runs (its library closure is complete). The
    // supervisor that starts it for real comes with issue 4.
    std::thread::spawn(|| {
        for (prog, arg) in [
            ("/usr/bin/containerd", "--version"),
            ("/usr/sbin/runc", "--version"),
        ] {
            if !std::path::Path::new(prog).exists() {
                continue;
            }
            match std::process::Command::new(prog).arg(arg).output() {
                Ok(o) if o.status.success() => {
                    let out = String::from_utf8_lossy(&o.stdout);
                    log::line(&format!(
                        "{prog}: {}",
                        out.lines().next().unwrap_or_default()
                    ));
                }
                Ok(o) => log::line(&format!(
                    "{prog} {arg} failed ({}): {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => log::line(&format!("cannot run {prog}: {e}")),
            }
        }
    });

    if cmdline.poweroff_when_up {
        log::line("basalt.test=poweroff: powering off");
        power_off();
    }
    serve_signals()
}

/// Reports how `/`, `/var` and friends are mounted, and proves it by writing.
fn report_mounts() {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let all = mounts::parse(&info);
    let shown: Vec<String> = [
        "/", "/system", "/tmp", "/var", "/run", "/dev", "/proc", "/sys",
    ]
    .iter()
    .filter_map(|p| all.iter().find(|m| m.point == *p))
    .map(|m| {
        format!(
            "{} {} {}",
            m.point,
            m.fstype,
            if m.read_only { "ro" } else { "rw" }
        )
    })
    .collect();
    log::line(&format!("mounts: {}", shown.join(", ")));
    let root_ro = matches!(
        std::fs::write("/.basalt-probe", b"x"),
        Err(e) if e.raw_os_error() == Some(nix::libc::EROFS)
    );
    let var_rw = std::fs::write("/var/.basalt-probe", b"x").is_ok();
    let _ = std::fs::remove_file("/var/.basalt-probe");
    log::line(&format!(
        "root is {}; /var is {}",
        if root_ro { "read-only" } else { "WRITABLE" },
        if var_rw { "writable" } else { "NOT writable" }
    ));
}

fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    crate::early::fatal_reboot(5)
}

/// Reaps every child and turns SIGTERM/SIGINT/SIGPWR into a power-off.
fn serve_signals() -> ! {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGPWR,
    ] {
        set.add(s);
    }
    if set.thread_block().is_err() {
        log::line("cannot block signals; rebooting");
        crate::early::fatal_reboot(5);
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => reap(),
            Ok(s) => {
                log::line(&format!("{s} received: shutting down"));
                power_off();
            }
            Err(_) => {}
        }
    }
}

fn reap() {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
