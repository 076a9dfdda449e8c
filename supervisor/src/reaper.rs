//! The one place that waits for children.
//!
//! As PID 1, init inherits every orphan on the machine and must reap them all, but the
//! supervisor needs the exit status of its own children. So nothing else calls `wait`: a child
//! is started through [`spawn`], which registers its pid under the same lock the reaper takes,
//! and the reaper (woken by SIGCHLD) hands each registered child's status to its waiter and
//! discards the rest. When init is not PID 1 (tests, development) it waits only for the pids it
//! registered, so it never steals another part of the process's children.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => match nix::sys::signal::Signal::try_from(*s) {
                Ok(sig) => write!(f, "killed by {sig}"),
                Err(_) => write!(f, "killed by signal {s}"),
            },
        }
    }
}

#[derive(Debug, Default)]
struct Reaper {
    waiters: Mutex<HashMap<i32, oneshot::Sender<Exit>>>,
    reap_all: std::sync::atomic::AtomicBool,
}

fn reaper() -> &'static Reaper {
    static R: OnceLock<Reaper> = OnceLock::new();
    R.get_or_init(Reaper::default)
}

/// Makes the reaper take every child (PID 1 and subreapers), not only registered ones.
pub fn reap_every_child() {
    reaper()
        .reap_all
        .store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Starts `cmd` and registers its pid; the receiver gets its exit. The caller must run
/// [`run`] (once per process) so exits are collected.
pub fn spawn(cmd: &mut Command) -> std::io::Result<(std::process::Child, oneshot::Receiver<Exit>)> {
    let r = reaper();
    let mut waiters = r.waiters.lock().unwrap_or_else(|p| p.into_inner());
    let child = cmd.spawn()?;
    let (tx, rx) = oneshot::channel();
    waiters.insert(child.id() as i32, tx);
    Ok((child, rx))
}

/// Runs `cmd` to completion and collects its output, as [`Command::output`] does — but
/// through [`spawn`], so PID 1's reaper hands the exit here instead of taking it (a plain
/// `output()` in PID 1 races the reaper and fails with ECHILD). Blocking: call it off the
/// async runtime. [`run`] must be running.
pub fn output(cmd: &mut Command) -> std::io::Result<std::process::Output> {
    use std::io::Read as _;
    use std::os::unix::process::ExitStatusExt as _;
    use std::process::Stdio;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (mut child, exit) = spawn(cmd)?;
    let mut err = child.stderr.take();
    let errs = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_end(&mut buf);
        }
        buf
    });
    let mut stdout = Vec::new();
    if let Some(o) = child.stdout.as_mut() {
        o.read_to_end(&mut stdout)?;
    }
    let stderr = errs.join().unwrap_or_default();
    let status = match exit.blocking_recv() {
        Ok(Exit::Code(c)) => std::process::ExitStatus::from_raw(c << 8),
        Ok(Exit::Signal(s)) => std::process::ExitStatus::from_raw(s),
        Err(_) => {
            return Err(std::io::Error::other(
                "the reaper dropped the child without its exit",
            ));
        }
    };
    Ok(std::process::Output {
        status,
        stdout,
        stderr,
    })
}

fn status_exit(s: WaitStatus) -> Option<(i32, Exit)> {
    match s {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), Exit::Code(code))),
        WaitStatus::Signaled(pid, sig, _) => Some((pid.as_raw(), Exit::Signal(sig as i32))),
        _ => None,
    }
}

/// Collects every exited child now. Returns how many were reaped.
pub fn reap() -> usize {
    let r = reaper();
    let mut waiters = r.waiters.lock().unwrap_or_else(|p| p.into_inner());
    let mut n = 0;
    if r.reap_all.load(std::sync::atomic::Ordering::SeqCst) {
        while let Ok(s) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            let Some((pid, exit)) = status_exit(s) else {
                break;
            };
            n += 1;
            if let Some(tx) = waiters.remove(&pid) {
                let _ = tx.send(exit);
            }
        }
    } else {
        let pids: Vec<i32> = waiters.keys().copied().collect();
        for pid in pids {
            match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(s) => {
                    if let Some((_, exit)) = status_exit(s) {
                        n += 1;
                        if let Some(tx) = waiters.remove(&pid) {
                            let _ = tx.send(exit);
                        }
                    }
                }
                Err(_) => {
                    // Not our child any more (or never was): nobody will ever report it.
                    waiters.remove(&pid);
                }
            }
        }
    }
    n
}

/// Reaps on every SIGCHLD, forever (and every second, in case a signal was missed while the
/// handler was being installed). `ready` is told once the handler is in place.
pub async fn run(ready: std::sync::mpsc::Sender<()>) -> std::io::Result<()> {
    let mut sig = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
    let _ = ready.send(());
    loop {
        reap();
        tokio::select! {
            _ = sig.recv() => {}
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

/// Starts the reaper on its own thread, once per process (tests share one), and returns when
/// its SIGCHLD handler is installed.
pub fn ensure_running() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(rt) = rt {
                    let _ = rt.block_on(run(tx));
                }
            });
        if spawned.is_ok() {
            let _ = rx.recv_timeout(std::time::Duration::from_secs(5));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child run through the reaper gives its output and exit code back.
    #[test]
    fn output_collects_what_the_child_wrote_and_its_exit() {
        ensure_running();
        let o = output(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"])).unwrap();
        assert_eq!(o.stdout, b"out\n");
        assert_eq!(o.stderr, b"err\n");
        assert_eq!(o.status.code(), Some(3));
        let o = output(&mut Command::new("true")).unwrap();
        assert!(o.status.success());
    }
}
