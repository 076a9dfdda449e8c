//! PID 1 proper, on the read-only root: the composition root of the node.
//!
//! It reaps every process, turns SIGTERM/SIGINT/SIGPWR into the shutdown sequence, and never
//! exits: a failure it cannot recover from is logged and the machine reboots. It runs the boot
//! sequence (cgroups, state disk, config, modules, boot network), the supervisor with
//! containerd and apid, and the machine API on its unix socket.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt_resources::Store;

use crate::api::Api;
use crate::configstate::ConfigState;
use crate::node::{End, Node, Paths};
use crate::sequence::{ContainerPower, RealPower, Sequencer};
use crate::{logging, net};
use basalt_containerd as containerd;
use basalt_supervisor::logring::Logs;
use basalt_supervisor::{self as supervisor, Supervisor};
use basalt_supervisor::{cgroup, reaper, tasks};
use basalt_sys::cmdline::{Cmdline, Platform};

/// Filesystem labels of the installed disk's STATE (also a bare state disk's, before any
/// install) and EPHEMERAL partitions.
pub use basalt_disk::layout::{EPHEMERAL_LABEL, STATE_LABEL};
const STATE_MOUNT: &str = "/system/state";

pub fn run() -> ! {
    let (cmdline, bad) = Cmdline::read();
    // A container's /dev/kmsg, if it has one, is the host's kernel log: logs go to stdout.
    logging::init(cmdline.platform == Platform::Metal);
    let pid = std::process::id();
    if pid != 1 {
        tracing::info!(pid, "init does not run as PID 1: nothing to do");
        std::process::exit(1);
    }
    tracing::info!("PID 1 running");
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(panic = %info, "panicked");
    }));
    reaper::reap_every_child();
    if cmdline.platform == Platform::Metal {
        crate::scrub::start_scrub(cmdline.scrub_after(), cmdline.reboot_delay);
    }
    let container = cmdline.platform == Platform::Container;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("init")
        .enable_all()
        .build();
    match rt {
        Ok(rt) => match tasks::guarded(|| rt.block_on(main(cmdline, bad))) {
            Ok(()) => tracing::error!("PID 1's main task ended; rebooting"),
            // The hook logged where; this says what it means. Unwinding out of PID 1 would
            // be a kernel panic with nothing on the console but the kernel's own lines.
            Err(msg) => tracing::error!("FATAL: PID 1 panicked: {msg}; rebooting"),
        },
        Err(e) => tracing::warn!(error = %e, "cannot start the runtime; rebooting"),
    }
    if container {
        std::process::exit(crate::sequence::CONTAINER_REBOOT_STATUS);
    }
    basalt_sys::power::fatal_reboot(10)
}

async fn main(cmdline: Cmdline, bad: Vec<basalt_sys::cmdline::BadArg>) {
    let booted = Instant::now();
    let container = cmdline.platform == Platform::Container;
    if container {
        tracing::info!(
            "platform: container (arguments from BASALT_CMDLINE; links, /etc/hosts and resolv.conf are the runtime's)"
        );
    }
    for b in bad {
        tracing::info!(argument = %b, "kernel argument ignored");
    }
    if let Some(slot) = &cmdline.slot {
        tracing::info!(
            "booted from slot {slot} of the installed disk{}",
            if cmdline.trial { ", on trial" } else { "" }
        );
    }
    report_mounts();
    reaper::ensure_running();

    let cgroups = match cgroup::setup() {
        Ok(dir) => Some(dir),
        Err(e) => {
            tracing::info!(error = %e, "services run without cgroups");
            None
        }
    };
    let logs = Logs::new(Some("/var/log".into()), 2000, 1 << 20);
    logging::keep_in(logs.ring("init"));
    let store = Store::default();
    let sup = Supervisor::new(store.clone(), logs.clone(), cgroups);

    // Modules first: the state disk and the network card need their drivers. A container
    // node has the host's kernel and its modules: it loads none.
    let t = Instant::now();
    match tokio::task::spawn_blocking(move || match container {
        true => Ok(0),
        false => basalt_sys::modules::load(basalt_sys::modules::LOAD_ORDER),
    })
    .await
    {
        Ok(Ok(_)) if container => tracing::info!("node modules: none loaded (the host's kernel)"),
        Ok(Ok(n)) => tracing::info!(
            modules = n,
            ms = t.elapsed().as_millis(),
            "node modules loaded"
        ),
        Ok(Err(e)) => {
            tracing::warn!(error = %basalt_sys::error_chain(&e), "cannot load node modules")
        }
        Err(e) => tracing::warn!(panic = %e, "module loading panicked"),
    }

    // Finding, checking and mounting the state disk is blocking work: off the runtime's
    // threads, which the API and the controllers need.
    let mounted = tokio::task::spawn_blocking(move || {
        let state_dir = match container {
            true => container_state_dir(),
            false => state_dir(),
        };
        let ephemeral = (!container)
            .then(|| find_by_label(Path::new("/sys/class/block"), EPHEMERAL_LABEL))
            .flatten();
        let var = match ephemeral {
            Some(dev) => {
                Some(mount_ephemeral(&dev).map(|()| format!("{} (EPHEMERAL)", dev.display())))
            }
            None => (state_dir.starts_with(STATE_MOUNT) && !container)
                .then(|| var_on_state_disk().map(|()| format!("{STATE_MOUNT}/var"))),
        };
        (state_dir, var)
    })
    .await;
    let state_dir = match mounted {
        Ok((state_dir, var)) => {
            match var {
                Some(Ok(on)) => {
                    logs.reopen();
                    tracing::info!("/var: {on} (kept across reboots)");
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %basalt_sys::error_chain(&e), "/var stays tmpfs")
                }
                None => {}
            }
            state_dir
        }
        Err(e) => {
            tracing::error!(panic = %e, "the state disk's setup panicked; state is not kept");
            PathBuf::from("/var/lib/basalt")
        }
    };
    let mode = match cmdline.platform {
        Platform::Metal => basalt_config::Mode::Metal,
        Platform::Container => basalt_config::Mode::Container,
    };
    let config = ConfigState::new(state_dir.clone(), mode, store.clone());
    for note in config.load_at_boot() {
        tracing::info!("{}", &note);
    }
    let leases = basalt_networkd::dhcp::Leases::default();
    let node = Node {
        store: store.clone(),
        logs: logs.clone(),
        sup: sup.clone(),
        config: config.clone(),
        seq: Sequencer::new(store.clone()),
        power: match container {
            true => Arc::new(ContainerPower),
            false => Arc::new(RealPower),
        },
        leases: leases.clone(),
        paths: Paths {
            state: state_dir.clone(),
            ephemeral: "/var".into(),
            upgrade: crate::upgrade::Upgrader::new(cmdline.slot.as_deref()),
            install: (!container).then(|| {
                crate::install::Installer::from_boot(
                    std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
                    cmdline.slot.as_deref(),
                )
            }),
        },
        booted,
        kube: basalt_kubernetes::Kube::new(basalt_kubernetes::Paths::default()),
    };

    if cmdline.slot.is_some() {
        let (n, trial) = (node.clone(), cmdline.trial);
        tasks::until_done("trial-boot", move || {
            crate::trial::watch_boot(n.clone(), n.paths.upgrade.clone(), trial)
        });
    }

    let api = Api::new(node.clone(), Path::new(containerd::SOCKET));
    tasks::supervise("machine-api", move || {
        let api = api.clone();
        async move {
            if let Err(e) = crate::api::serve(api, Path::new(basalt_api::INIT_SOCKET)).await {
                tracing::info!(error = %e, "machine API stopped");
            }
        }
    });

    // The network: networkd's controllers, from the defaults, ip= and the config.
    net::start(
        store.clone(),
        sup.clone(),
        leases,
        cmdline.ip.as_deref(),
        container,
    );

    // A config from the kernel command line's URL, on a boot that has none.
    if let Some(url) = cmdline.config_url.clone()
        && config.active().is_none()
    {
        let (n, src) = (
            node.clone(),
            crate::configurl::Source {
                url,
                sha256: cmdline.config_sha256,
                ca: cmdline.config_ca.clone(),
            },
        );
        tasks::until_done("config-url", move || {
            crate::configurl::run(n.clone(), src.clone())
        });
    }

    // How full /var and the state partition are (VolumeStatus).
    tasks::supervise("space", {
        let store = store.clone();
        let points: Vec<std::path::PathBuf> = ["/var", STATE_MOUNT]
            .iter()
            .map(std::path::PathBuf::from)
            .collect();
        move || crate::space::watch(store.clone(), points.clone(), crate::space::INTERVAL)
    });

    // Time sync, and the time-synced condition that certificates wait for.
    // (A container node's clock is the host's: there, time sync says so and is done.)
    let time_sync = {
        let (store, sup) = (store.clone(), sup.clone());
        let clock = Arc::new(basalt_timesync::SystemClock);
        move || basalt_timesync::run(store.clone(), sup.clone(), clock.clone(), container)
    };
    if container {
        tasks::until_done("time-sync", time_sync);
    } else {
        tasks::supervise("time-sync", time_sync);
    }

    // containerd's registry settings follow the config (a controller, started below).
    let mut registry = None;
    if Path::new("/usr/bin/containerd").exists() {
        // Registry credentials are read when containerd starts: those of the config the node
        // has now, if any (the registry settings follow later configs, restarting it).
        let cri = basalt_kubernetes::prepare_cri().map(|mut c| {
            if let Some(cfg) = config.active() {
                c.registry_auth =
                    containerd::registry::settings(&cfg, &containerd::registry::Local::default())
                        .auth;
            }
            c
        });
        match containerd::prepare(cri.as_ref()) {
            Ok(_) => {
                sup.add(containerd::service(containerd::SOCKET.into()))
                    .await;
                let (s, st) = (sup.clone(), store.clone());
                tasks::until_done("import-images", move || {
                    import_images(s.clone(), st.clone())
                });
                let served = Path::new(containerd::shipped::REGISTRY_DIR);
                if served.is_dir() {
                    sup.add(containerd::shipped::service()).await;
                }
                if let Some(base) = cri {
                    registry = Some(containerd::registry::RegistrySettings::new(
                        sup.clone(),
                        Box::new(move |auth| {
                            let mut c = base.clone();
                            c.registry_auth = auth.to_vec();
                            containerd::prepare(Some(&c))
                        }),
                        containerd::registry::Local::shipped(served),
                    ));
                }
            }
            Err(e) => tracing::warn!(error = %e, "containerd not started: cannot prepare it"),
        }
    }

    // The node's controllers: each reconciles what it runs to the active config and the
    // node's status resources (docs/ARCHITECTURE.md).
    start_controllers(&store, &sup, &node, &state_dir, container, registry);

    if cmdline.poweroff_when_up {
        let up = node.clone();
        tasks::until_done("poweroff-when-up", move || {
            let n = up.clone();
            async move {
                n.sup
                    .wait_for("containerd", Duration::from_secs(120), |s, h| {
                        s == supervisor::State::Running && h == supervisor::HealthState::Healthy
                    })
                    .await;
                tracing::info!("basalt.test=poweroff: powering off");
                let _ = n.spawn_sequence("shutdown", n.shutdown_steps(End::PowerOff));
            }
        });
    }

    serve_signals(node).await;
}

/// The node's controllers on one resource runtime: apid's certificate, KubeSpan and the
/// discovery server, containerd's registry settings, Kubernetes. A pass that fails is retried from 200 ms up to every 5 s
/// (what they wait on — an API server, a file — comes back within seconds).
fn start_controllers(
    store: &Store,
    sup: &Arc<Supervisor>,
    node: &Node,
    state_dir: &Path,
    container: bool,
    registry: Option<containerd::registry::RegistrySettings>,
) {
    let mut controllers: Vec<Box<dyn basalt_resources::Controller>> = vec![
        Box::new(crate::apidcert::ApidCertificate::new(sup.clone())),
        Box::new(crate::kubespan::KubeSpan::new(state_dir)),
        Box::new(crate::kubespan::DiscoveryServer::new(
            sup.clone(),
            state_dir,
        )),
    ];
    if let Some(r) = registry {
        controllers.push(Box::new(r));
    }
    controllers.extend(basalt_kubernetes::controllers::controllers(
        sup.clone(),
        node.kube.clone(),
        container,
    ));
    let mut rt = basalt_resources::Runtime::new(store.clone()).with_backoff(
        basalt_resources::Backoff::new(Duration::from_millis(200), Duration::from_secs(5), 2),
    );
    for c in controllers {
        if let Err(e) = rt.register(c) {
            // A wiring mistake (two controllers writing one kind): said, and the rest run.
            tracing::error!(error = %e, "controller not registered");
        }
    }
    // Runs for the node's life: the handle is not kept.
    let _ = rt.start();
}

/// Imports the OCI image layouts shipped in the rootfs once containerd is healthy: those every
/// node needs from the start (the pod sandbox, the test image); and on a control plane, once
/// the config says it is one, those the node's registry serves — the add-ons run there first
/// (they tolerate its taint and its kubelet is Ready before the workers'), and a pull of them
/// at that point would hold up CoreDNS. A worker pulls them from its registry if a pod needs
/// them.
async fn import_images(sup: Arc<Supervisor>, store: basalt_resources::Store) {
    let up = sup
        .wait_for("containerd", Duration::from_secs(300), |s, h| {
            s == supervisor::State::Running && h == supervisor::HealthState::Healthy
        })
        .await;
    if !up {
        tracing::info!("images not imported: containerd did not become healthy");
        return;
    }
    import_dir(Path::new(containerd::containers::IMAGES_DIR)).await;
    let served = Path::new(containerd::shipped::REGISTRY_DIR);
    if !served.is_dir() {
        return;
    }
    let mut changes = store.changes();
    let cfg = loop {
        if let Some(cfg) = basalt_config::resource::active(&store) {
            break cfg;
        }
        if changes.changed().await.is_err() {
            return;
        }
    };
    if cfg.machine().machine_type == basalt_config::v1alpha1::MachineType::ControlPlane {
        import_dir(served).await;
    }
}

/// Imports the layouts under `dir`, tried again after a failure (containerd restarting, a
/// slow machine): an import picks up where the last one stopped (blobs and unpacked layers
/// already there are kept).
async fn import_dir(dir: &Path) {
    let t = Instant::now();
    let client = containerd::Client::new(Path::new(containerd::SOCKET));
    for attempt in 1..=5 {
        match containerd::containers::import_all(&client, dir).await {
            Ok(names) if names.is_empty() => return,
            Ok(names) => {
                tracing::info!(
                    images = %names.join(", "),
                    ms = t.elapsed().as_millis(),
                    "images imported into containerd"
                );
                return;
            }
            Err(e) => tracing::warn!(
                attempt,
                of = 5,
                dir = %dir.display(),
                error = %basalt_sys::error_chain(&e),
                "cannot import images"
            ),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Mounts the state disk (an ext4 filesystem labelled BASALT-STATE) if one is attached, so the
/// config survives reboots; else state lives on `/var` (tmpfs: gone at reboot).
fn state_dir() -> PathBuf {
    let fallback = PathBuf::from("/var/lib/basalt");
    let Some(dev) = find_by_label(Path::new("/sys/class/block"), STATE_LABEL) else {
        return fallback;
    };
    let _ = std::fs::create_dir_all(STATE_MOUNT);
    match nix::mount::mount(
        Some(dev.as_path()),
        STATE_MOUNT,
        Some("ext4"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    ) {
        Ok(()) => {
            tracing::info!("state: {} on {STATE_MOUNT}", dev.display());
            PathBuf::from(STATE_MOUNT).join(crate::configstate::STATE_CONFIG_DIR)
        }
        Err(e) => {
            tracing::warn!(
                disk = %dev.display(),
                error = %e,
                "cannot mount the state disk: state is not kept across reboots"
            );
            fallback
        }
    }
}

/// `/var` on the state disk (its `var/` directory, bind-mounted), so containerd's content and
/// the logs survive reboots — as an EPHEMERAL partition will once installs exist. What was
/// written to the tmpfs `/var` before (the first log lines) stays in memory only.
fn var_on_state_disk() -> Result<(), MountError> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = Path::new(STATE_MOUNT).join("var");
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)))
        .map_err(|source| MountError::MakeDir {
            dir: dir.clone(),
            source,
        })?;
    let bind = |flags, from: Option<&Path>| {
        nix::mount::mount(from, "/var", None::<&str>, flags, None::<&str>)
    };
    bind(nix::mount::MsFlags::MS_BIND, Some(dir.as_path())).map_err(|source| {
        MountError::Mount {
            what: format!("bind {} on /var", dir.display()),
            source,
        }
    })?;
    // The state mount is noexec; /var is not (containerd's snapshots are under it).
    bind(
        nix::mount::MsFlags::MS_REMOUNT
            | nix::mount::MsFlags::MS_BIND
            | nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV,
        None,
    )
    .map_err(|source| MountError::Mount {
        what: "remount /var".into(),
        source,
    })
}

/// `/var` on the installed disk's EPHEMERAL partition.
fn mount_ephemeral(dev: &Path) -> Result<(), MountError> {
    nix::mount::mount(
        Some(dev),
        "/var",
        Some("ext4"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|source| MountError::Mount {
        what: format!("mount {} on /var", dev.display()),
        source,
    })
}

/// Why `/var` could not go on the state disk.
#[derive(Debug, thiserror::Error)]
enum MountError {
    #[error("cannot make {dir}")]
    MakeDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {what}")]
    Mount {
        what: String,
        #[source]
        source: nix::Error,
    },
}

/// A container node keeps its state on the volume mounted at `/system/state` (never on a
/// block device: a privileged container sees the host's disks); without one, on `/var`.
fn container_state_dir() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if basalt_sys::mountinfo::parse(&info)
        .iter()
        .any(|m| m.point == STATE_MOUNT)
    {
        tracing::info!("state: the volume on {STATE_MOUNT}");
        PathBuf::from(STATE_MOUNT).join("config")
    } else {
        tracing::warn!(
            mount = STATE_MOUNT,
            "no state volume: state is not kept across restarts"
        );
        PathBuf::from("/var/lib/basalt")
    }
}

/// The first block device whose ext2/3/4 superblock carries `label`.
pub fn find_by_label(class_block: &Path, label: &str) -> Option<PathBuf> {
    use std::io::{Read as _, Seek as _};
    let mut names: Vec<String> = std::fs::read_dir(class_block)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram"))
        .collect();
    names.sort();
    names.into_iter().find_map(|n| {
        let dev = Path::new("/dev").join(&n);
        let mut f = std::fs::File::open(&dev).ok()?;
        let mut sb = [0u8; 136];
        f.seek(std::io::SeekFrom::Start(1024)).ok()?;
        f.read_exact(&mut sb).ok()?;
        (ext_label(&sb)? == label).then_some(dev)
    })
}

/// The volume label of an ext2/3/4 superblock (the 1024 bytes at offset 1024).
fn ext_label(sb: &[u8]) -> Option<String> {
    if sb.get(0x38..0x3a)? != [0x53, 0xef] {
        return None;
    }
    let raw = sb.get(0x78..0x88)?;
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    Some(String::from_utf8_lossy(&raw[..end]).into_owned())
}

/// Reports how `/`, `/var` and friends are mounted, and proves it by writing.
fn report_mounts() {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let all = basalt_sys::mountinfo::parse(&info);
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
    tracing::info!(mounts = %shown.join(", "), "mounted");
    let root_ro = matches!(
        std::fs::write("/.basalt-probe", b"x"),
        Err(e) if e.raw_os_error() == Some(nix::libc::EROFS)
    );
    let var_rw = std::fs::write("/var/.basalt-probe", b"x").is_ok();
    let _ = std::fs::remove_file("/var/.basalt-probe");
    tracing::info!(
        "root is {}; /var is {}",
        if root_ro { "read-only" } else { "WRITABLE" },
        if var_rw { "writable" } else { "NOT writable" }
    );
}

/// SIGTERM, SIGINT and SIGPWR start the shutdown sequence.
async fn serve_signals(node: Node) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut pwr)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::from_raw(nix::libc::SIGPWR)),
    ) else {
        tracing::warn!("cannot listen for signals");
        std::future::pending::<()>().await;
        return;
    };
    loop {
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = pwr.recv() => "SIGPWR",
        };
        tracing::info!(signal = which, "shutting down");
        if let Err(e) = node.spawn_sequence("shutdown", node.shutdown_steps(End::PowerOff)) {
            tracing::info!("{}", &e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext4_label_from_a_superblock() {
        let mut sb = [0u8; 136];
        sb[0x38] = 0x53;
        sb[0x39] = 0xef;
        sb[0x78..0x78 + STATE_LABEL.len()].copy_from_slice(STATE_LABEL.as_bytes());
        assert_eq!(ext_label(&sb).as_deref(), Some(STATE_LABEL));
        sb[0x38] = 0;
        assert_eq!(ext_label(&sb), None);
    }
}
