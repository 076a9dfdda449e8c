//! The Docker provisioner of `osctl cluster`: the node image is the root filesystem made into a
//! Docker image with `docker import` (no registry), nodes are containers running `/sbin/init`
//! as PID 1 in container mode (`BASALT_PLATFORM=container`), on a user-defined bridge network
//! of the cluster's own. Everything the cluster makes carries the label
//! `basalt.cluster=<name>`, and `destroy` removes what carries it. See docs/local-clusters.md.
//!
//! The host reaches the nodes as with QEMU: osctl dials from inside the cluster's access
//! namespace `basalt-<name>`, whose `eth0` is a veth port on the Docker network's bridge.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, anyhow, bail};

use super::{CreateArgs, NodeState, Nodes, Start, save, step};
use crate::print_line;

/// Docker containers on a Docker network of the cluster's own.
pub(super) struct Docker;

impl Nodes for Docker {
    fn check(&self, a: &CreateArgs) -> anyhow::Result<()> {
        if a.iso || a.pxe || a.install {
            bail!(
                "--iso, --pxe and --install are QEMU boot modes: containers start from the Docker image"
            );
        }
        if a.config_server.is_some() {
            bail!(
                "--config-server: QEMU nodes only (a Docker node's kernel command line is the host's)"
            );
        }
        if a.chaos().is_some() {
            bail!(
                "--network-loss and --network-delay: QEMU clusters only (a Docker cluster's network is the engine's bridge on the host)"
            );
        }
        check_engine()
    }

    fn images_step(&self) -> &'static str {
        "images (the root filesystem, imported into Docker)"
    }

    fn start(&self, c: Start<'_>, arts: basalt_image::build::Artifacts) -> anyhow::Result<()> {
        let Start {
            a, dir, st, host, ..
        } = c;
        let rootfs = arts
            .rootfs
            .context("the image build gave no root filesystem")?;
        let image = import_image(&rootfs, &a.name, dir)?;
        st.image = Some(image.clone());
        save(dir, st)?;
        network_up(
            &a.name,
            &a.cidr,
            &host.to_string(),
            &st.netns,
            &st.bridge_address,
        )?;
        step(&format!("starting {} node containers", st.nodes.len()));
        for n in &st.nodes {
            std::fs::create_dir_all(&n.dir)?;
            run_node(&NodeSpec {
                cluster: &a.name,
                name: &n.name,
                address: &n.address,
                image: &image,
                memory_mib: a.memory_mib(),
                cpus: a.cpus(),
            })?;
        }
        Ok(())
    }

    fn default_wait(&self, _kubernetes: bool) -> u32 {
        300
    }

    fn running(&self, n: &NodeState) -> bool {
        running(&n.name)
    }

    fn control_planes_first(&self, _st: &super::State, _on: bool) -> anyhow::Result<()> {
        // Containers run on the host's CPUs at native speed: a control plane's start is not
        // held up by its workers enough to matter.
        Ok(())
    }

    fn console_tail(&self, n: &NodeState, lines: usize) -> (String, String) {
        (format!("docker logs {}", n.name), logs_tail(&n.name, lines))
    }
}

/// The label on everything a cluster makes.
pub const LABEL: &str = "basalt.cluster";

fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run docker (install docker.io)")?;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Fails with what to do when no Docker engine answers.
pub fn check_engine() -> anyhow::Result<()> {
    docker(&["version", "--format", "{{.Server.Version}}"])
        .map(drop)
        .map_err(|e| {
            anyhow!(
                "no Docker engine answers ({e:#}): start one (`dockerd &`, or hack/test does it)"
            )
        })
}

/// The node image of a cluster.
pub fn image_tag(cluster: &str) -> String {
    format!("basalt-{cluster}:node")
}

/// Makes `rootfs.sqsh` the cluster's node image: unpacked, then `docker import`ed as one layer
/// with `/sbin/init` as its entry point and the container platform in its environment.
pub fn import_image(rootfs: &Path, cluster: &str, workdir: &Path) -> anyhow::Result<String> {
    let tag = image_tag(cluster);
    let tree = workdir.join("rootfs.unpacked");
    let _ = std::fs::remove_dir_all(&tree);
    let r = import_tree(rootfs, &tree, cluster, &tag);
    let _ = std::fs::remove_dir_all(&tree);
    r.map(|()| tag)
}

fn import_tree(rootfs: &Path, tree: &Path, cluster: &str, tag: &str) -> anyhow::Result<()> {
    let out = Command::new("unsquashfs")
        .args(["-q", "-n", "-d"])
        .arg(tree)
        .arg(rootfs)
        .output()
        .context("cannot run unsquashfs (install squashfs-tools)")?;
    if !out.status.success() {
        bail!(
            "unsquashfs {}: {}",
            rootfs.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(tree)
        .args(["--numeric-owner", "-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run tar")?;
    let tar_out = tar.stdout.take().context("tar has no stdout")?;
    let import = Command::new("docker")
        .args([
            "import",
            "--change",
            "ENTRYPOINT [\"/sbin/init\"]",
            "--change",
            "ENV BASALT_PLATFORM=container",
            "--change",
            &format!("LABEL {LABEL}={cluster}"),
            "-",
            tag,
        ])
        .stdin(tar_out)
        .output()
        .context("cannot run docker import")?;
    let tar_status = tar.wait()?;
    if !tar_status.success() || !import.status.success() {
        bail!(
            "docker import of {} as {tag}: tar {tar_status}; {}",
            rootfs.display(),
            String::from_utf8_lossy(&import.stderr).trim()
        );
    }
    Ok(())
}

/// The cluster's Docker network (its bridge is `bst-<cluster>` on the host, holding the
/// gateway address) and the access namespace on it.
pub fn network_up(
    cluster: &str,
    cidr: &str,
    gateway: &str,
    netns: &str,
    access_address: &str,
) -> anyhow::Result<()> {
    let bridge = format!("bst-{cluster}");
    docker(&[
        "network",
        "create",
        "--driver",
        "bridge",
        "--subnet",
        cidr,
        "--gateway",
        gateway,
        "-o",
        &format!("com.docker.network.bridge.name={bridge}"),
        "--label",
        &format!("{LABEL}={cluster}"),
        &network_name(cluster),
    ])?;
    let access = format!("bsa-{cluster}");
    crate::host::ip(&["netns", "add", netns])?;
    crate::host::ip(&["-n", netns, "link", "set", "lo", "up"])?;
    crate::host::ip(&[
        "link", "add", &access, "type", "veth", "peer", "name", "eth0", "netns", netns,
    ])?;
    crate::host::ip(&["link", "set", &access, "master", &bridge, "up"])?;
    crate::host::ip(&["-n", netns, "addr", "add", access_address, "dev", "eth0"])?;
    crate::host::ip(&["-n", netns, "link", "set", "eth0", "up"])?;
    Ok(())
}

fn network_name(cluster: &str) -> String {
    format!("basalt-{cluster}")
}

/// What a node container is started with.
pub struct NodeSpec<'a> {
    pub cluster: &'a str,
    pub name: &'a str,
    pub address: &'a str,
    pub image: &'a str,
    pub memory_mib: u32,
    pub cpus: u32,
}

/// Starts a node: its state and `/var` (etcd's data, containerd's images) on volumes of its
/// own, `/run`, `/tmp` and `/system` on tmpfs over a read-only root, restarted by Docker when
/// it reboots (init exits with 1).
pub fn run_node(n: &NodeSpec<'_>) -> anyhow::Result<()> {
    let label = format!("{LABEL}={}", n.cluster);
    let volume = format!("{}-state", n.name);
    docker(&["volume", "create", "--label", &label, &volume])?;
    let var = format!("{}-var", n.name);
    docker(&["volume", "create", "--label", &label, &var])?;
    let mut args: Vec<String> = [
        "run",
        "--detach",
        "--name",
        n.name,
        "--hostname",
        n.name,
        "--label",
        &label,
        "--network",
        &network_name(n.cluster),
        "--ip",
        n.address,
        "--restart",
        "on-failure",
        "--stop-timeout",
        "30",
        "--read-only",
        // Its own cgroup namespace: the cgroups init makes for its services are the
        // container's, not the host's (on a shared hierarchy, stopping a service in one node
        // would kill the same service in every other).
        "--cgroupns",
        "private",
        "--tmpfs",
        "/run:rw,exec,dev,suid,mode=755",
        "--tmpfs",
        "/tmp:rw,mode=1777",
        "--tmpfs",
        "/system:rw,exec,mode=755",
        "--volume",
        &format!("{volume}:/system/state"),
        "--volume",
        &format!("{var}:/var"),
        "--memory",
        &format!("{}m", n.memory_mib),
        "--cpus",
        &n.cpus.to_string(),
        "--device",
        "/dev/net/tun",
        // The kubelet's OOM watcher reads the kernel's log (the host's: it is the node's
        // kernel), read-only.
        "--device",
        "/dev/kmsg:/dev/kmsg:r",
        // Docker turns IPv6 off in containers on an IPv4 network; KubeSpan's mesh is IPv6.
        "--sysctl",
        "net.ipv6.conf.all.disable_ipv6=0",
        "--sysctl",
        "net.ipv6.conf.default.disable_ipv6=0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(privileges());
    args.push(n.image.to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    docker(&args).with_context(|| format!("{}: the container did not start", n.name))?;
    Ok(())
}

/// What `--privileged` gives, as far as this host allows: every capability the host's
/// bounding set has (Docker refuses `--privileged` when one is missing, as in some sandboxes),
/// no seccomp or AppArmor profile, and writable `/proc/sys` (per-namespace network settings).
fn privileges() -> Vec<String> {
    let mut out: Vec<String> = [
        "--cap-add",
        "ALL",
        "--security-opt",
        "seccomp=unconfined",
        "--security-opt",
        "apparmor=unconfined",
        "--security-opt",
        "systempaths=unconfined",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(u64::MAX);
    for (bit, name) in CAPABILITIES.iter().enumerate() {
        if bounding & (1 << bit) == 0 {
            out.push("--cap-drop".into());
            out.push((*name).to_string());
        }
    }
    out
}

/// Capability names by bit number, as Docker spells them.
const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Whether the node's container is running.
pub fn running(name: &str) -> bool {
    docker(&["inspect", "--format", "{{.State.Running}}", name]).is_ok_and(|s| s == "true")
}

/// The last `lines` lines the node logged (its console).
pub fn logs_tail(name: &str, lines: usize) -> String {
    let out = Command::new("docker")
        .args(["logs", "--tail", &lines.to_string(), name])
        .output();
    match out {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("(docker logs: {e})"),
    }
}

/// Removes every container, volume, network and image labelled with the cluster; `Ok(false)`
/// when there is no Docker engine to ask (nothing of it can then be left).
pub fn destroy(cluster: &str) -> anyhow::Result<bool> {
    if docker(&["version", "--format", "{{.Server.Version}}"]).is_err() {
        return Ok(false);
    }
    let filter = format!("label={LABEL}={cluster}");
    let ids = |args: &[&str]| -> anyhow::Result<Vec<String>> {
        Ok(docker(args)?.lines().map(str::to_string).collect())
    };
    for c in ids(&["ps", "--all", "--quiet", "--filter", &filter])? {
        docker(&["rm", "--force", "--volumes", &c])?;
        print_line(&format!("removed container {c}"));
    }
    for v in ids(&["volume", "ls", "--quiet", "--filter", &filter])? {
        docker(&["volume", "rm", "--force", &v])?;
        print_line(&format!("removed volume {v}"));
    }
    for n in ids(&["network", "ls", "--quiet", "--filter", &filter])? {
        docker(&["network", "rm", &n])?;
        print_line(&format!("removed network {}", network_name(cluster)));
    }
    for i in ids(&["image", "ls", "--quiet", "--filter", &filter])? {
        docker(&["image", "rm", "--force", &i])?;
        print_line(&format!("removed image {}", image_tag(cluster)));
    }
    Ok(true)
}
