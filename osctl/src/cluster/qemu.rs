//! The QEMU provisioner of `osctl cluster`: every cluster gets a network namespace of its own
//! (`basalt-<name>`) holding a bridge, one tap device per node, and the inner end of a veth pair
//! whose outer end is on the host with the segment's first address — so the host reaches every
//! node directly and nothing else on the host changes. The bridge itself holds the segment's
//! last usable address, and osctl dials the nodes from inside the namespace (the osconfig
//! context's `netns`): that path does not depend on the host's own firewall or routes. Nodes
//! are QEMU VMs (TCG unless `BASALT_KVM=1`) run detached inside that namespace, booted straight
//! from the kernel and initramfs with a static address on the kernel command line (or from the
//! ISO, or over PXE with dnsmasq's DHCP and TFTP), each with a state disk and a console log in
//! the node's directory. The config server and the network chaos are QEMU's too.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, anyhow, bail};
use basalt_image::qemu::{Boot, TapNic, VmOptions};

use super::{CreateArgs, NodeState, Nodes, Ready, Start, State, mask, save, start_daemon, step};
use crate::error_chain;
use crate::host::ip;

/// QEMU VMs on the cluster's own bridge.
pub(super) struct Qemu;

impl Nodes for Qemu {
    fn check(&self, a: &CreateArgs) -> anyhow::Result<()> {
        if a.config_server.is_some() && a.iso_boot() {
            bail!(
                "--config-server: with kernel or PXE boots (an ISO's command line is fixed when it is built; with --install, add --pxe)"
            );
        }
        let least = basalt_disk::layout::min_disk() >> 20;
        if a.install && a.disk_mib() < least {
            bail!(
                "--disk-size {}: an installed node needs at least {least} MiB (its A/B slots, STATE and EPHEMERAL)",
                a.disk_mib(),
            );
        }
        Ok(())
    }

    fn images_step(&self) -> &'static str {
        "images (kernel, initramfs with the root filesystem)"
    }

    fn start(&self, c: Start<'_>, arts: basalt_image::build::Artifacts) -> anyhow::Result<()> {
        let Start {
            a,
            dir,
            st,
            host,
            len,
            config_url,
        } = c;
        let media = match (arts.iso, arts.vmlinuz, arts.initramfs) {
            (Some(iso), ..) if a.iso_boot() => Media::Iso(iso),
            (_, Some(vmlinuz), Some(initramfs)) if a.pxe => {
                write_pxe(&dir.join("pxe"), &vmlinuz, &initramfs, config_url)?;
                Media::Pxe
            }
            (_, Some(vmlinuz), Some(initramfs)) => Media::Kernel { vmlinuz, initramfs },
            _ => bail!("the image build gave no ISO, kernel or initramfs"),
        };
        network_up(st)?;
        if let Some(chaos) = a.chaos() {
            start_chaos(dir, st, chaos)?;
        }
        if !matches!(media, Media::Kernel { .. }) {
            dhcp_up(st, dir, host, len, matches!(media, Media::Pxe))?;
        }
        if let Some(port) = a.config_server {
            start_config_server(dir, st, host, port)?;
        }
        boot_vms(a, dir, st, &media, host, len, config_url)
    }

    fn default_wait(&self, kubernetes: bool) -> u32 {
        // Emulated CPUs: a control plane alone takes minutes.
        if kubernetes { 900 } else { 300 }
    }

    fn running(&self, n: &NodeState) -> bool {
        super::alive(n.pid)
    }

    fn control_planes_first(&self, st: &State, on: bool) -> anyhow::Result<()> {
        let nice = if on {
            WORKER_NICE_YIELDING
        } else {
            WORKER_NICE
        };
        for n in st.nodes.iter().filter(|n| n.role == "worker") {
            if let Some(pid) = n.pid.filter(|p| super::alive(Some(*p))) {
                set_nice(pid, nice).with_context(|| format!("{}: QEMU's priority", n.name))?;
            }
        }
        Ok(())
    }

    fn console_tail(&self, n: &NodeState, lines: usize) -> (String, String) {
        let console = n.dir.join("console.log");
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        (
            console.display().to_string(),
            all[all.len().saturating_sub(lines)..].join("\n"),
        )
    }
}

/// What QEMU nodes boot from.
enum Media {
    /// The kernel and initramfs directly, the address on the kernel command line.
    Kernel {
        vmlinuz: PathBuf,
        initramfs: PathBuf,
    },
    /// The ISO, whose command line asks for DHCP.
    Iso(PathBuf),
    /// The network: dnsmasq's TFTP serves the cluster's `pxe/` directory.
    Pxe,
}

/// The arguments ISO and PXE boots add to the base command line: the address from DHCP.
pub(super) const DHCP_CMDLINE: [&str; 2] = ["basalt.reboot_delay=1", "ip=dhcp"];

/// Writes each node's config as `configs/MAC.yaml` and starts the config server on the host's
/// address, detached (its log beside the state), waiting until it answers.
fn start_config_server(
    dir: &Path,
    st: &mut State,
    host: Ipv4Addr,
    port: u16,
) -> anyhow::Result<()> {
    let listen = std::net::SocketAddr::from((host, port));
    step(&format!(
        "config server on http://{listen}/configs/ (one config per node's MAC)"
    ));
    let served = dir.join("served");
    let configs = served.join("configs");
    std::fs::create_dir_all(&configs)
        .with_context(|| format!("cannot create {}", configs.display()))?;
    for (i, n) in st.nodes.iter().enumerate() {
        let from = dir.join(format!("{}.yaml", n.role));
        let to = configs.join(format!("{}.yaml", mac(i)));
        std::fs::copy(&from, &to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    }
    let exe = std::env::current_exe().context("cannot find osctl's own path")?;
    let mut cmd = Command::new(exe);
    cmd.args(["cluster", "serve", "--listen"])
        .arg(listen.to_string())
        .arg("--dir")
        .arg(&served);
    start_daemon(
        cmd,
        &dir.join("config-server.log"),
        &format!("--config-server {port}: the config server"),
        &Ready::Listening(listen),
        |pid| {
            st.config_server = Some((pid, port));
            save(dir, st)
        },
    )
}

/// Starts the chaos daemon in the cluster's namespace, detached, and waits until its rules are
/// in place — before any node boots, so the whole create runs on the impaired network.
fn start_chaos(dir: &Path, st: &mut State, chaos: crate::chaos::Chaos) -> anyhow::Result<()> {
    step(&format!("network chaos: {chaos}"));
    let ready = dir.join("chaos.ready");
    let exe = std::env::current_exe().context("cannot find osctl's own path")?;
    let mut cmd = Command::new(exe);
    cmd.args(["cluster", "chaos", "--netns", &st.netns])
        .arg(format!("--loss={}", chaos.loss_percent))
        .arg(format!("--delay={}us", chaos.delay.as_micros()))
        .arg("--ready")
        .arg(&ready);
    start_daemon(
        cmd,
        &dir.join("chaos.log"),
        "--network-loss/--network-delay: the chaos daemon",
        &Ready::File(&ready),
        |pid| {
            st.chaos = Some(pid);
            save(dir, st)
        },
    )
}

/// Boots a QEMU VM per node on a tap device of the cluster's bridge.
fn boot_vms(
    a: &CreateArgs,
    dir: &Path,
    st: &mut State,
    media: &Media,
    host: Ipv4Addr,
    len: u8,
    config_url: Option<&str>,
) -> anyhow::Result<()> {
    step(&format!("booting {} nodes", st.nodes.len()));
    for i in 0..st.nodes.len() {
        let n = st.nodes[i].clone();
        std::fs::create_dir_all(&n.dir)?;
        let disk = n.dir.join("state.qcow2");
        if a.install {
            // Blank: the node installs itself to it.
            basalt_image::qemu::blank_disk(&disk, a.disk_mib())
        } else {
            basalt_image::qemu::state_disk(&disk, a.disk_mib())
        }
        .map_err(|e| anyhow!("{}: the disk: {}", n.name, error_chain(&e)))?;
        let tap = format!("tap{i}");
        ip(&["-n", &st.netns, "tuntap", "add", "dev", &tap, "mode", "tap"])?;
        ip(&["-n", &st.netns, "link", "set", &tap, "master", "br0", "up"])?;
        let boot = match media {
            Media::Kernel { vmlinuz, initramfs } => Boot::Kernel {
                vmlinuz: vmlinuz.clone(),
                initramfs: initramfs.clone(),
                cmdline: format!(
                    "{} basalt.reboot_delay=1 ip={}::{host}:{}:{}:eth0:off{}",
                    basalt_image::build::BASE_CMDLINE,
                    n.address,
                    mask(len),
                    n.name,
                    config_url.map(|u| format!(" {u}")).unwrap_or_default()
                ),
            },
            Media::Iso(iso) => Boot::Iso {
                iso: iso.clone(),
                uefi: false,
            },
            Media::Pxe => Boot::Network,
        };
        let opts = VmOptions {
            memory_mib: a.memory_mib(),
            cpus: a.cpus(),
            disk: Some(disk),
            // Once installed, the disk boots; while it is blank the firmware passes it by.
            disk_boots_first: a.install,
            allow_reboot: true,
            tap: Some(TapNic {
                ifname: tap,
                mac: mac(i),
            }),
            ..VmOptions::default()
        };
        let nice = if n.role == "worker" { WORKER_NICE } else { 0 };
        let pid = start_detached(&st.netns, &boot, &n.dir, &opts, nice)
            .with_context(|| format!("{}: QEMU did not start (see {})", n.name, n.dir.display()))?;
        st.nodes[i].pid = Some(pid);
        save(dir, st)?;
    }
    Ok(())
}

/// The MAC of the `i`th node's NIC (locally administered, QEMU's prefix).
fn mac(i: usize) -> String {
    format!("52:54:00:b5:{:02x}:{:02x}", i / 256, i % 256)
}

/// The TFTP root of a PXE cluster: the kernel, the initramfs, and an iPXE script whose command
/// line asks for DHCP.
fn write_pxe(
    pxe: &Path,
    vmlinuz: &Path,
    initramfs: &Path,
    config_url: Option<&str>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(pxe).with_context(|| format!("cannot create {}", pxe.display()))?;
    for (from, name) in [(vmlinuz, "vmlinuz"), (initramfs, "initramfs.img")] {
        let to = pxe.join(name);
        let _ = std::fs::remove_file(&to);
        // A hard link when the cache is on the same filesystem, else a copy.
        if std::fs::hard_link(from, &to).is_err() {
            std::fs::copy(from, &to)
                .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
        }
    }
    let script = format!(
        "#!ipxe\necho Basalt: loading kernel and initramfs\nkernel vmlinuz initrd=initramfs.img {} {}\ninitrd initramfs.img\nboot\n",
        basalt_image::build::BASE_CMDLINE,
        DHCP_CMDLINE
            .iter()
            .copied()
            .chain(config_url)
            .collect::<Vec<_>>()
            .join(" ")
    );
    basalt_sys::fs::atomic_write(&pxe.join("boot.ipxe"), script.as_bytes(), 0o644)
        .with_context(|| format!("cannot write {}", pxe.join("boot.ipxe").display()))
}

/// dnsmasq on the cluster's bridge, detached in its namespace: DHCP with one reserved address
/// and host name per node's MAC, the host as router, no DNS; with `tftp`, the cluster's `pxe/`
/// directory over TFTP and `boot.ipxe` as the boot file. `destroy` stops it with everything
/// else in the namespace.
fn dhcp_up(st: &State, dir: &Path, host: Ipv4Addr, len: u8, tftp: bool) -> anyhow::Result<()> {
    step("DHCP on the segment (dnsmasq)");
    let first = st
        .nodes
        .first()
        .map(|n| n.address.clone())
        .unwrap_or_default();
    let last = st
        .nodes
        .last()
        .map(|n| n.address.clone())
        .unwrap_or_default();
    let mut args = vec![
        "netns".to_string(),
        "exec".into(),
        st.netns.clone(),
        "dnsmasq".into(),
        "--conf-file=/dev/null".into(),
        "--port=0".into(),
        "--interface=br0".into(),
        "--bind-interfaces".into(),
        "--user=root".into(),
        format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
        format!("--log-facility={}", dir.join("dnsmasq.log").display()),
        "--log-dhcp".into(),
        format!("--dhcp-range={first},{last},{},1h", mask(len)),
        format!("--dhcp-option=option:router,{host}"),
        format!("--dhcp-leasefile={}", dir.join("dnsmasq.leases").display()),
    ];
    for (i, n) in st.nodes.iter().enumerate() {
        args.push(format!("--dhcp-host={},{},{}", mac(i), n.address, n.name));
    }
    if tftp {
        args.push("--enable-tftp".into());
        args.push(format!("--tftp-root={}", dir.join("pxe").display()));
        args.push("--dhcp-boot=boot.ipxe".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ip(&args).context("dnsmasq did not start (install dnsmasq-base)")?;
    Ok(())
}

/// The cluster bridge's MAC (locally administered; each cluster's bridge is on a segment of
/// its own).
const BRIDGE_MAC: &str = "02:b5:00:00:00:01";

fn network_up(st: &State) -> anyhow::Result<()> {
    let ns = &st.netns;
    ip(&["netns", "add", ns])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    // A MAC of its own: a bridge without one takes its ports' lowest, changing it as taps are
    // added, and a node that resolved the bridge's address before that keeps sending to a
    // MAC the bridge no longer takes, until its ARP entry goes stale (tens of seconds).
    ip(&[
        "-n", ns, "link", "add", "br0", "address", BRIDGE_MAC, "type", "bridge",
    ])?;
    ip(&["-n", ns, "link", "set", "br0", "up"])?;
    ip(&["-n", ns, "addr", "add", &st.bridge_address, "dev", "br0"])?;
    ip(&[
        "link",
        "add",
        &st.host_link,
        "type",
        "veth",
        "peer",
        "name",
        "uplink",
        "netns",
        ns,
    ])?;
    ip(&["-n", ns, "link", "set", "uplink", "master", "br0", "up"])?;
    ip(&["addr", "add", &st.host_address, "dev", &st.host_link])?;
    ip(&["link", "set", &st.host_link, "up"])?;
    Ok(())
}

/// The host scheduling priority (`nice`) of a worker's QEMU. On a host with fewer cores than
/// the cluster's virtual CPUs — every host, under emulation — the control planes get the CPU
/// first: nothing a worker does goes ahead of them (its kubelet waits for the API server, its
/// pods for the scheduler), and while they idle a worker has the host to itself.
const WORKER_NICE: u8 = 10;

/// A worker's nice while the control planes start their services ([`Nodes::control_planes_first`]):
/// at 10 the two workers of a 3-node cluster still took about a fifth of the host (a nice-10
/// group weighs 110 against the control plane's 1024) for their boot-time image imports, and
/// the control plane's API server started 30–40 s later than with the workers idle.
const WORKER_NICE_YIELDING: u8 = 19;

/// Starts QEMU daemonized in the namespace; returns its pid.
fn start_detached(
    netns: &str,
    boot: &Boot,
    dir: &Path,
    opts: &VmOptions,
    nice: u8,
) -> anyhow::Result<i32> {
    let (qemu, _scratch) =
        basalt_image::qemu::command(boot, dir, opts).map_err(|e| anyhow!(error_chain(&e)))?;
    let pidfile = dir.join("qemu.pid");
    let _ = std::fs::remove_file(&pidfile);
    let log = std::fs::File::create(dir.join("qemu.log"))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns]);
    if nice > 0 {
        cmd.args(["nice", "-n", &nice.to_string()]);
    }
    cmd.arg(qemu.get_program())
        .args(qemu.get_args())
        .arg("-daemonize")
        .arg("-pidfile")
        .arg(&pidfile)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let status = cmd.status()?;
    if !status.success() {
        bail!(
            "qemu exited with {status}: {}",
            std::fs::read_to_string(dir.join("qemu.log")).unwrap_or_default()
        );
    }
    let pid = std::fs::read_to_string(&pidfile)
        .with_context(|| format!("no {}", pidfile.display()))?
        .trim()
        .parse()
        .with_context(|| format!("{}: not a pid", pidfile.display()))?;
    if nice > 0 {
        set_session_nice(pid, nice)?;
    }
    Ok(pid)
}

/// Sets a running QEMU's nice: its session's ([`set_session_nice`]) and every thread's (what
/// counts where autogroups are off; threads started later inherit it).
fn set_nice(pid: i32, nice: u8) -> anyhow::Result<()> {
    set_session_nice(pid, nice)?;
    let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("no process {pid}"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let out = Command::new("renice")
        .args(["--priority", &nice.to_string(), "-p"])
        .args(&tasks)
        .stdout(Stdio::null())
        .output()
        .context("renice")?;
    // A thread that ended since the list was read is no error.
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && !err.lines().all(|l| l.contains("No such process")) {
        bail!("renice: {}", err.trim());
    }
    Ok(())
}

/// `-daemonize` makes QEMU a session leader, and where the kernel groups sessions for
/// scheduling (`CONFIG_SCHED_AUTOGROUP`, on in Debian's and most distributions' kernels) a
/// process's nice only ranks it within its own session: the CPU is shared between sessions by
/// each session's nice, 0 unless set. So the session's is set too (`nice` in the command line
/// is what counts where autogroups are off).
fn set_session_nice(pid: i32, nice: u8) -> anyhow::Result<()> {
    let path = format!("/proc/{pid}/autogroup");
    let mut tries = 0;
    loop {
        match std::fs::write(&path, nice.to_string()) {
            Ok(()) => return Ok(()),
            // A kernel without autogroups.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            // Without CAP_SYS_ADMIN the kernel takes one such change per 100 ms, host-wide.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(110));
            }
            Err(e) => return Err(e).with_context(|| format!("set {path} to {nice}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker's QEMU is a session of its own: its nice must reach the session's scheduling
    /// group, or the workers take as much of the host as the control plane.
    #[test]
    fn a_session_leader_gets_the_nice_of_its_session() {
        let mut child = Command::new("setsid")
            .args(["sleep", "60"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // As QEMU's pid file is written only once it daemonized: the session must exist.
        let own = std::fs::read_to_string("/proc/self/autogroup").ok();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while own.is_some()
            && std::fs::read_to_string(format!("/proc/{pid}/autogroup")).ok() == own
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let before = std::fs::read_to_string(format!("/proc/{pid}/autogroup")).ok();
        // Never the test's own group: that would renice the test run.
        let r = if before.is_some() && before == own {
            Err(anyhow!("the child has no session of its own: {before:?}"))
        } else {
            set_session_nice(pid, 10)
        };
        let group = std::fs::read_to_string(format!("/proc/{pid}/autogroup"));
        let _ = child.kill();
        let _ = child.wait();
        r.unwrap();
        match group {
            // "/autogroup-N nice 10": its own group, at nice 10.
            Ok(g) => assert!(g.trim_end().ends_with("nice 10"), "{g}"),
            // A kernel without autogroups: only the process's nice counts, nothing to set.
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
        }
    }

    /// The nice of every thread of `pid` (the 19th field of each task's `stat`).
    fn thread_nices(pid: i32) -> Vec<i64> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .map(|t| {
                let stat = std::fs::read_to_string(t.path().join("stat")).unwrap();
                // After the command's closing parenthesis: state is field 3, nice field 19.
                let rest = &stat[stat.rfind(')').unwrap() + 2..];
                rest.split(' ').nth(16).unwrap().parse().unwrap()
            })
            .collect()
    }

    /// While the control planes start, a worker's QEMU yields (every thread, and its session)
    /// and gets its priority back after; a QEMU started at nice 10 is the worker's case.
    #[test]
    fn a_running_qemu_is_reniced_whole_thread_and_session() {
        // A process of several threads, in a session of its own, as a daemonized QEMU.
        let mut child = Command::new("setsid")
            .args(["nice", "-n", "10", "python3", "-c"])
            .arg("import threading,time\nfor _ in range(3): threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\ntime.sleep(60)")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while thread_nices(pid).len() < 4 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let started = thread_nices(pid);
        let yielding = set_nice(pid, WORKER_NICE_YIELDING).map(|()| thread_nices(pid));
        let group = std::fs::read_to_string(format!("/proc/{pid}/autogroup"));
        // Back to the worker's nice: a lower nice takes privilege (the test also runs as
        // `nobody`), as creating a cluster does anyway.
        let back = nix::unistd::geteuid()
            .is_root()
            .then(|| set_nice(pid, WORKER_NICE).map(|()| thread_nices(pid)));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            started,
            vec![10; 4],
            "the test's process did not start as meant"
        );
        assert_eq!(yielding.unwrap(), vec![19; 4]);
        if let Ok(g) = group {
            assert!(g.trim_end().ends_with("nice 19"), "{g}");
        }
        if let Some(back) = back {
            assert_eq!(back.unwrap(), vec![10; 4]);
        }
    }
}
