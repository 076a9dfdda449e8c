//! One supervised process: started in its own process group and cgroup, with its own
//! environment, working directory, capability bounding set and rlimits; its stdout and stderr
//! go line by line to a [`LogRing`]; stopping it is SIGTERM to the group, then SIGKILL to the
//! whole cgroup after a timeout.
//! The confinement itself (the `pre_exec` hook) is `basalt_sys::process`.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::resource::Resource;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::oneshot;

use crate::logring::LogRing;
use crate::reaper::{self, Exit};

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot create cgroup {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make the log pipe")]
    Pipe(#[source] std::io::Error),
    #[error("cannot start {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What to run and how to confine it.
#[derive(Debug, Clone, Default)]
pub struct ProcessSpec {
    pub program: PathBuf,
    /// `argv[0]`, when it is not the program's path (the multicall binary's modes).
    pub arg0: Option<String>,
    pub args: Vec<String>,
    /// The whole environment (nothing is inherited from init).
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    /// Capabilities kept in the bounding set (by number, see capabilities(7)); `None` keeps all.
    pub keep_caps: Option<Vec<u32>>,
    pub rlimits: Vec<(Resource, u64, u64)>,
    /// The cgroup (v2) directory to run in, made if missing; `None` runs in init's cgroup.
    pub cgroup: Option<PathBuf>,
    /// The cgroup's `cpu.weight` (1–10000; the kernel's default is 100): its share of the CPU
    /// when the CPU is contended. Left as the kernel has it where the group has no `cpu`
    /// controller.
    pub cpu_weight: Option<u32>,
}

/// A started process.
#[derive(Debug)]
pub struct Running {
    pub pid: i32,
    cgroup: Option<PathBuf>,
    exit: oneshot::Receiver<Exit>,
    done: Option<Exit>,
}

/// Starts `spec`, logging its output to `log`.
pub fn start(spec: &ProcessSpec, log: Arc<LogRing>) -> Result<Running, ProcessError> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .process_group(0);
    if let Some(a) = &spec.arg0 {
        cmd.arg0(a);
    }
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    let (reader, writer) = std::io::pipe().map_err(ProcessError::Pipe)?;
    cmd.stdout(writer.try_clone().map_err(ProcessError::Pipe)?)
        .stderr(writer);

    let procs = match &spec.cgroup {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|source| ProcessError::Cgroup {
                path: dir.clone(),
                source,
            })?;
            if let Some(w) = spec.cpu_weight
                && dir.join("cpu.weight").exists()
            {
                std::fs::write(dir.join("cpu.weight"), w.to_string()).map_err(|source| {
                    ProcessError::Cgroup {
                        path: dir.join("cpu.weight"),
                        source,
                    }
                })?;
            }
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))
                .map_err(|source| ProcessError::Cgroup {
                    path: dir.clone(),
                    source,
                })?;
            Some(f)
        }
        None => None,
    };
    let drop_caps: Vec<u32> = match &spec.keep_caps {
        Some(keep) => (0..=basalt_sys::process::last_cap())
            .filter(|c| !keep.contains(c))
            .collect(),
        None => Vec::new(),
    };
    basalt_sys::process::confine(
        &mut cmd,
        basalt_sys::process::Confinement {
            cgroup_procs: procs,
            drop_caps,
            rlimits: spec.rlimits.clone(),
        },
    );
    let (child, exit) = reaper::spawn(&mut cmd).map_err(|source| ProcessError::Spawn {
        program: spec.program.clone(),
        source,
    })?;
    let pid = child.id() as i32;
    // The parent's copies of the pipe's write end went with `cmd`; drop it so EOF comes when
    // the last process of the group closes its end.
    drop(cmd);
    drop(child);
    pump_lines(reader, log);
    Ok(Running {
        pid,
        cgroup: spec.cgroup.clone(),
        exit,
        done: None,
    })
}

fn pump_lines(reader: std::io::PipeReader, log: Arc<LogRing>) {
    let fd: std::os::fd::OwnedFd = reader.into();
    let Ok(rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(rx).split(b'\n');
        while let Ok(Some(line)) = lines.next_segment().await {
            log.push(&String::from_utf8_lossy(&line));
        }
    });
}

impl Running {
    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> Exit {
        if let Some(e) = self.done {
            return e;
        }
        // The reaper never drops a registered sender without sending; if it did, the process
        // is gone and nobody can say how it ended.
        let e = (&mut self.exit).await.unwrap_or(Exit::Signal(0));
        self.done = Some(e);
        e
    }

    /// SIGTERM to the process group; SIGKILL to the cgroup (or the group) after `timeout`.
    pub async fn stop(&mut self, timeout: Duration) -> Exit {
        if let Some(e) = self.done {
            return e;
        }
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGTERM);
        match tokio::time::timeout(timeout, self.wait()).await {
            Ok(e) => {
                self.kill_rest();
                e
            }
            Err(_) => {
                self.kill_rest();
                self.wait().await
            }
        }
    }

    /// SIGKILL for everything still in the process group and the cgroup.
    fn kill_rest(&self) {
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        if let Some(cg) = &self.cgroup {
            kill_cgroup(cg);
        }
    }
}

/// Kills every process in a cgroup (v2), through `cgroup.kill` where the kernel has it.
pub fn kill_cgroup(dir: &Path) {
    if std::fs::write(dir.join("cgroup.kill"), b"1").is_ok() {
        return;
    }
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}
