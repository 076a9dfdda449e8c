//! `osctl cluster`: local clusters of Basalt nodes for development.
//!
//! One flow for every provisioner — images, configs, the network, the nodes, publishing,
//! waiting until every node is configured and healthy, `show`, `load`, `destroy` — and a
//! [`Nodes`] implementation for what differs: [`qemu`] (VMs in a network namespace of the
//! cluster's own) and [`docker`] (containers on a Docker network). Each cluster's state and
//! files live in `$BASALT_CLUSTERS/<name>` (default `~/.basalt/clusters/<name>`). See
//! docs/local-clusters.md.

mod docker;
mod qemu;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::client::request;
use crate::host::{ip, sh};
use anyhow::{Context as _, anyhow, bail};
use basalt_api::machine as pb;
use clap::{Args, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::{error_chain, print_line};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provisioner {
    Qemu,
    Docker,
}

/// What differs between the ways a local cluster's nodes run: everything else — configs, the
/// state, the registry, publishing, waiting, `show`, `load`, `destroy` — is one for both.
trait Nodes {
    /// Refuses the options this provisioner cannot honour; checks the host has what it needs.
    fn check(&self, a: &CreateArgs) -> anyhow::Result<()>;
    /// What the image step makes, for its progress line.
    fn images_step(&self) -> &'static str;
    /// Brings up the cluster's network and starts every node of the state from the image
    /// build's artifacts, recording what `destroy` needs as it goes.
    fn start(&self, c: Start<'_>, arts: basalt_image::build::Artifacts) -> anyhow::Result<()>;
    /// How long, in seconds, create waits for etcd's bootstrap and for each node when
    /// `--wait-timeout` does not say.
    fn default_wait(&self, kubernetes: bool) -> u32;
    /// Whether the node's VM or container runs.
    fn running(&self, n: &NodeState) -> bool;
    /// Where the node's console is, and its last `lines` lines.
    fn console_tail(&self, n: &NodeState, lines: usize) -> (String, String);
    /// While `on`, the workers yield the host's CPU to the control planes: create turns it on
    /// while the control planes start their services (nothing a worker does then is waited
    /// for) and off once they are healthy.
    fn control_planes_first(&self, st: &State, on: bool) -> anyhow::Result<()>;
}

/// What a provisioner starts a cluster's nodes with.
struct Start<'a> {
    a: &'a CreateArgs,
    dir: &'a Path,
    st: &'a mut State,
    /// The host's address on the segment and the segment's prefix length.
    host: Ipv4Addr,
    len: u8,
    /// `basalt.config=URL` for nodes that fetch their configs (`--config-server`).
    config_url: Option<&'a str>,
}

fn nodes_of(p: Provisioner) -> &'static dyn Nodes {
    match p {
        Provisioner::Qemu => &qemu::Qemu,
        Provisioner::Docker => &docker::Docker,
    }
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Create a local cluster, boot its nodes, apply their configs and wait until every node
    /// answers over the API with its config.
    #[command(
        after_help = "Example:\n  osctl cluster create --name demo --controlplanes 1 --workers 2"
    )]
    Create(CreateArgs),
    /// Forward a host port to a port of the cluster's nodes (what `create --publish` runs,
    /// detached; `destroy` stops it).
    #[command(hide = true)]
    Forward {
        #[arg(long)]
        netns: String,
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// The nodes' addresses, tried in order (not `--nodes`: osctl's global flag).
        #[arg(long, value_delimiter = ',')]
        to: Vec<std::net::IpAddr>,
        #[arg(long)]
        node_port: u16,
    },
    /// Serve a directory's files over HTTP (what `create --config-server` runs, detached;
    /// `destroy` stops it).
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Drop and delay the frames a cluster's bridge forwards (what `create --network-loss`
    /// and `--network-delay` run, detached, in the cluster's namespace; `destroy` stops it).
    #[command(hide = true)]
    Chaos {
        #[arg(long)]
        netns: String,
        #[arg(long, value_parser = crate::chaos::parse_loss)]
        loss: f64,
        #[arg(long, value_parser = crate::chaos::parse_delay)]
        delay: Duration,
        /// Written once the rules are in place.
        #[arg(long)]
        ready: PathBuf,
    },
    /// Show a local cluster's nodes and whether each answers.
    #[command(after_help = "Example:\n  osctl cluster show --name demo")]
    Show {
        #[arg(long, default_value = "basalt")]
        name: String,
    },
    /// Put images from the host's Docker engine on every node of a local cluster (`docker
    /// save`, then `osctl image import` to each node at once); nodes that hold them already
    /// are skipped. Pods then run them with no registry: give them a tag other than `latest`
    /// (or `imagePullPolicy: IfNotPresent`), or the kubelet tries to pull.
    #[command(
        after_help = "Example:\n  docker build -t hello:v1 . && osctl cluster load --name demo hello:v1"
    )]
    Load {
        #[arg(long, default_value = "basalt")]
        name: String,
        /// Images the host's Docker engine has (what `docker images` lists).
        #[arg(required = true)]
        images: Vec<String>,
        /// Send the images even to nodes that hold them already.
        #[arg(long)]
        force: bool,
    },
    /// Stop a local cluster's nodes and remove everything it made.
    #[command(after_help = "Example:\n  osctl cluster destroy --name demo")]
    Destroy {
        #[arg(long, default_value = "basalt")]
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The cluster's name (1-10 of a-z, 0-9, -).
    #[arg(long, default_value = "basalt")]
    name: String,
    #[arg(long, value_enum, default_value = "qemu")]
    provisioner: Provisioner,
    /// How long to wait for etcd's bootstrap and for each node to be healthy with its config
    /// (90s, 5m, ...). Default: 5m, or 15m for Kubernetes on QEMU (emulated CPUs: the control
    /// plane alone takes minutes).
    #[arg(long, value_parser = crate::api_cmd::parse_duration)]
    wait_timeout: Option<u32>,
    #[arg(long, default_value_t = 1)]
    controlplanes: u8,
    #[arg(long, default_value_t = 1)]
    workers: u8,
    /// Turn on KubeSpan (and discovery, served by the first control-plane node).
    #[arg(long)]
    with_kubespan: bool,
    /// The nodes' network: the host gets the first address, nodes the ones after it.
    #[arg(long, default_value = "10.5.0.0/24")]
    cidr: String,
    /// Memory per node, MiB. Default: 2048 with --kubernetes (what a control plane needs,
    /// with room for workloads), else 768.
    #[arg(long)]
    memory: Option<u32>,
    /// Virtual CPUs per node. Default: 2 with --kubernetes (an emulated API server on one
    /// CPU takes minutes to set up its RBAC roles), else 1.
    #[arg(long)]
    cpus: Option<u32>,
    /// State disk per node, MiB (QEMU; thin, so only what is written takes space). Default:
    /// 8192 with --kubernetes (etcd, the images imported at boot and pulled, pod volumes),
    /// else 256.
    #[arg(long)]
    disk_size: Option<u64>,
    /// Make a port of the nodes (a NodePort) reachable on the host: HOST_PORT:NODE_PORT, or
    /// HOST_IP:HOST_PORT:NODE_PORT (the host side is 127.0.0.1 unless given); may repeat.
    #[arg(long = "publish", value_name = "[HOST_IP:]HOST_PORT:NODE_PORT")]
    publish: Vec<crate::publish::Publish>,
    /// Patches applied to every node's config (inline YAML or @file); may repeat.
    #[arg(long = "config-patch")]
    config_patch: Vec<String>,
    /// Run an image registry for the cluster (Debian's docker-registry) on the host, port PORT
    /// (default 5001: Debian's own docker-registry service takes 5000) of every address; `docker
    /// push localhost:PORT/IMAGE` from the host, and
    /// pods run `localhost:PORT/IMAGE`: every node's config mirrors `localhost:PORT` to it.
    /// `destroy` stops it and removes what was pushed.
    #[arg(long, value_name = "PORT", num_args = 0..=1, default_missing_value = "5001")]
    registry: Option<u16>,
    /// QEMU: boot every node from the ISO (SeaBIOS); addresses come from dnsmasq's DHCP on the
    /// segment, reserved per MAC.
    #[arg(long, conflicts_with = "pxe")]
    iso: bool,
    /// QEMU: install every node to its disk and run it from there, as a machine a user
    /// installs: the node boots the ISO (or over the network with --pxe) once, installs itself
    /// to /dev/vda (`install.disk` in its config: the A/B layout, SeaBIOS) and reboots from
    /// the disk, which boots first from then on. What `osctl upgrade` and `rollback` need.
    #[arg(long)]
    install: bool,
    /// QEMU: boot every node over the network: dnsmasq on the segment answers DHCP and serves
    /// the kernel, initramfs and iPXE script over TFTP to the NIC's iPXE ROM.
    #[arg(long)]
    pxe: bool,
    /// QEMU: the nodes fetch their configs at boot instead of osctl applying them: osctl serves
    /// `configs/MAC.yaml` (each node's own) over HTTP on the host's address of the cluster
    /// network, port PORT (default 8089), and every node boots with
    /// `basalt.config=http://HOST:PORT/configs/${mac}.yaml`. Kernel and PXE boots (not --iso).
    #[arg(long, value_name = "PORT", num_args = 0..=1, default_missing_value = "8089")]
    config_server: Option<u16>,
    /// QEMU: drop this share of the frames the cluster's network carries between nodes (and
    /// between the host and the nodes), from the moment the network is up: 1% or 0.5. For
    /// trying what a lossy network does to a cluster (etcd, KubeSpan, the API).
    #[arg(long, value_name = "PERCENT", value_parser = crate::chaos::parse_loss)]
    network_loss: Option<f64>,
    /// QEMU: hold every frame the cluster's network carries this long: 15ms, 0.2s.
    #[arg(long, value_name = "DELAY", value_parser = crate::chaos::parse_delay)]
    network_delay: Option<Duration>,
    /// Run Kubernetes: the node image gets etcd, the kubelet, the control plane and pause from
    /// the Go-built stack (built once into the cache: `osctl image stack`).
    #[arg(long)]
    kubernetes: bool,
}

/// What `destroy` and `show` need to know, written as the cluster is made.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    name: String,
    provisioner: Provisioner,
    netns: String,
    host_link: String,
    host_address: String,
    /// The bridge's address inside the namespace, where osctl dials from.
    #[serde(default)]
    bridge_address: String,
    nodes: Vec<NodeState>,
    /// The Docker image the nodes run (Docker provisioner).
    #[serde(default)]
    image: Option<String>,
    /// The forwarders of `--publish`: (pid, host address, node port).
    #[serde(default)]
    published: Vec<(i32, String, u16)>,
    /// The registry of `--registry`: (pid, port).
    #[serde(default)]
    registry: Option<(i32, u16)>,
    /// The config server of `--config-server`: (pid, port).
    #[serde(default)]
    config_server: Option<(i32, u16)>,
    /// The daemon of `--network-loss`/`--network-delay`.
    #[serde(default)]
    chaos: Option<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NodeState {
    name: String,
    role: String,
    address: String,
    dir: PathBuf,
    pid: Option<i32>,
}

fn clusters_root() -> PathBuf {
    if let Some(d) = std::env::var_os("BASALT_CLUSTERS") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".basalt/clusters")
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

fn save(dir: &Path, st: &State) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec_pretty(st)?;
    basalt_sys::fs::atomic_write(&state_path(dir), &bytes, 0o600)
        .with_context(|| format!("cannot write {}", state_path(dir).display()))
}

fn load(name: &str) -> anyhow::Result<(PathBuf, State)> {
    let dir = clusters_root().join(name);
    let p = state_path(&dir);
    let bytes = std::fs::read(&p).with_context(|| {
        format!(
            "no cluster {name}: {} cannot be read (osctl cluster create --name {name})",
            p.display()
        )
    })?;
    let st = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a cluster's state", p.display()))?;
    Ok((dir, st))
}

pub fn run(cmd: ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Create(a) => create(a),
        ClusterCommand::Show { name } => show(&name),
        ClusterCommand::Destroy { name } => destroy(&name),
        ClusterCommand::Load {
            name,
            images,
            force,
        } => load_images(&name, &images, force),
        ClusterCommand::Forward {
            netns,
            listen,
            to,
            node_port,
        } => crate::publish::forward(&netns, listen, &to, node_port),
        ClusterCommand::Serve { listen, dir } => crate::serve::serve(listen, &dir),
        ClusterCommand::Chaos {
            netns,
            loss,
            delay,
            ready,
        } => crate::chaos::run(
            &netns,
            crate::chaos::Chaos {
                loss_percent: loss,
                delay,
            },
            &ready,
        ),
    }
}

impl CreateArgs {
    /// What `--network-loss`/`--network-delay` ask of the network, if anything.
    fn chaos(&self) -> Option<crate::chaos::Chaos> {
        (self.network_loss.is_some() || self.network_delay.is_some()).then(|| crate::chaos::Chaos {
            loss_percent: self.network_loss.unwrap_or(0.0),
            delay: self.network_delay.unwrap_or_default(),
        })
    }

    fn memory_mib(&self) -> u32 {
        self.memory
            .unwrap_or(if self.kubernetes { 2048 } else { 768 })
    }

    fn disk_mib(&self) -> u64 {
        self.disk_size
            .unwrap_or(match (self.kubernetes, self.install) {
                (true, _) => 8192,
                // The installed layout's slots and STATE, and an EPHEMERAL with room.
                (false, true) => 3072,
                (false, false) => 256,
            })
    }

    /// Whether the nodes boot the ISO: asked for, or to install from (unless over PXE).
    fn iso_boot(&self) -> bool {
        self.iso || (self.install && !self.pxe)
    }

    fn cpus(&self) -> u32 {
        self.cpus.unwrap_or(if self.kubernetes { 2 } else { 1 })
    }
}

/// The disk a QEMU node installs to with `--install` (its only disk, virtio).
const INSTALL_DISK: &str = "/dev/vda";

fn step(what: &str) {
    print_line(&format!("==> {what}"));
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > 10
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        bail!(
            "--name {name:?}: 1 to 10 of a-z, 0-9 and - (it names the cluster's network namespace and host link)"
        );
    }
    Ok(())
}

/// A client for one node of the cluster: with the cluster's osconfig, or (maintenance
/// mode, `oc` None) without a client certificate; dialed from the cluster's namespace when it
/// has one. The calls are made in this process: nothing is run and scraped.
fn node_client(st: &State, n: &NodeState, oc: Option<&Path>) -> anyhow::Result<NodeClient> {
    let g = crate::client::Global {
        osconfig: oc.map(Path::to_path_buf),
        context: None,
        endpoints: Vec::new(),
        nodes: vec![n.address.clone()],
        insecure: oc.is_none(),
        netns: Some(st.netns.clone()).filter(|ns| Path::new("/run/netns").join(ns).exists()),
    };
    // The channel's connection runs on the runtime it is made in: the client keeps it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    let target = {
        let _in = rt.enter();
        crate::client::targets(&g)?
            .into_iter()
            .next()
            .context("no target")?
    };
    Ok(NodeClient { rt, target })
}

/// One node's machine API, called synchronously (cluster commands are plain sequential steps).
struct NodeClient {
    rt: tokio::runtime::Runtime,
    target: crate::client::Target,
}

impl NodeClient {
    /// Calls `f` with the node's client and its `node` metadata (for
    /// [`crate::client::request`]): the node's answer, or its refusal as a status.
    fn call_status<T, Fut>(
        &self,
        f: impl FnOnce(
            basalt_api::machine::machine_client::MachineClient<tonic::transport::Channel>,
            Option<String>,
        ) -> Fut,
    ) -> anyhow::Result<Result<T, tonic::Status>>
    where
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.target.client.clone();
        self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), f(client, self.target.node.clone()))
                .await
                .map_err(|_| anyhow!("{}: no answer in 30 s", self.target.label))
                .map(|r| r.map(tonic::Response::into_inner))
        })
    }

    /// [`NodeClient::call_status`], a refusal being an error that explains it.
    fn call<T, Fut>(
        &self,
        f: impl FnOnce(
            basalt_api::machine::machine_client::MachineClient<tonic::transport::Channel>,
            Option<String>,
        ) -> Fut,
    ) -> anyhow::Result<T>
    where
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_status(f)?
            .map_err(|s| anyhow!("{}: {}", self.target.label, crate::output::explain(&s)))
    }

    fn version(&self) -> anyhow::Result<pb::VersionResponse> {
        self.call(|mut c, node| async move {
            c.version(request(node.as_deref(), pb::VersionRequest {}))
                .await
        })
    }
}

fn segment(cidr: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
    let p: basalt_config::types::Prefix =
        cidr.parse().map_err(|e| anyhow!("--cidr {cidr}: {e}"))?;
    match p.addr() {
        std::net::IpAddr::V4(a) if p.prefix_len() <= 29 => Ok((a, p.prefix_len())),
        _ => bail!("--cidr {cidr}: an IPv4 network of at least 8 addresses (/29 or wider)"),
    }
}

fn nth(base: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + n)
}

fn mask(len: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0))
}

fn create(a: CreateArgs) -> anyhow::Result<()> {
    check_name(&a.name)?;
    let provisioner = nodes_of(a.provisioner);
    provisioner.check(&a)?;
    if a.controlplanes == 0 {
        bail!("--controlplanes: at least 1");
    }
    let (base, len) = segment(&a.cidr)?;
    // Where the nodes fetch their configs (`${mac}` is the node's, substituted by the node, or
    // by iPXE on a PXE boot: the same form).
    let config_url = a.config_server.map(|port| {
        format!(
            "basalt.config=http://{}:{port}/configs/${{mac}}.yaml",
            nth(base, 1)
        )
    });
    let total = u32::from(a.controlplanes) + u32::from(a.workers);
    let size = 1u32 << (32 - u32::from(len));
    // The network and broadcast addresses, the host's, the bridge's, then one per node.
    if total + 4 > size {
        bail!("--cidr {}: too small for {total} nodes", a.cidr);
    }
    let dir = clusters_root().join(&a.name);
    if state_path(&dir).exists() {
        bail!(
            "cluster {} exists ({}): osctl cluster destroy --name {}",
            a.name,
            dir.display(),
            a.name
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let started = Instant::now();

    step(provisioner.images_step());
    // One build for both provisioners: the initramfs build keeps the rootfs it packs. The
    // ISO is its own build (its command line asks for DHCP).
    let arts = basalt_image::build::build_cached(
        if a.iso_boot() {
            basalt_image::Target::Iso
        } else {
            basalt_image::Target::Initramfs
        },
        &basalt_image::BuildOptions {
            out: PathBuf::new(),
            init: None,
            extra_cmdline: if a.iso_boot() {
                qemu::DHCP_CMDLINE.iter().map(|s| s.to_string()).collect()
            } else {
                Vec::new()
            },
            verbose: false,
            with_containerd: true,
            kubernetes: a.kubernetes,
            version: None,
        },
        &clusters_root().join(".images"),
    )
    .map_err(|e| anyhow!("building the images: {}", error_chain(&e)))?;
    let host = nth(base, 1);
    let nodes: Vec<NodeState> = (0..total)
        .map(|i| {
            let cp = i < u32::from(a.controlplanes);
            let n = if cp {
                i + 1
            } else {
                i + 1 - u32::from(a.controlplanes)
            };
            let name = format!(
                "{}-{}-{n}",
                a.name,
                if cp { "controlplane" } else { "worker" }
            );
            NodeState {
                dir: dir.join(&name),
                name,
                role: if cp { "controlplane" } else { "worker" }.into(),
                address: nth(base, 2 + i).to_string(),
                pid: None,
            }
        })
        .collect();

    step("configs");
    let endpoint = format!("https://{}:6443", nodes[0].address);
    let mut patches = a.config_patch.clone();
    if let Some(port) = a.registry {
        patches.push(registry_mirror(port, &host.to_string()));
    }
    crate::gen_cmd::run(
        crate::gen_cmd::GenCommand::Config {
            name: a
                .name
                .parse()
                .map_err(|e| anyhow!("--name {}: {e}", a.name))?,
            endpoint: endpoint
                .parse()
                .map_err(|e| anyhow!("the cluster endpoint {endpoint}: {e}"))?,
            with_secrets: None,
            config_patch: patches,
            config_patch_control_plane: Vec::new(),
            config_patch_worker: Vec::new(),
            output_dir: dir.to_path_buf(),
            with_kubespan: a.with_kubespan,
            install_disk: a.install.then(|| INSTALL_DISK.to_string()),
            force: true,
        },
        &[],
    )?;
    // osctl dials this cluster's nodes from inside its namespace.
    let oc_path = dir.join("osconfig");
    let mut oc_cfg = crate::client::read_config(&oc_path)?
        .with_context(|| format!("gen config wrote no {}", oc_path.display()))?;
    for ctx in oc_cfg.contexts.values_mut() {
        ctx.netns = Some(format!("basalt-{}", a.name));
    }
    crate::client::write_config(&oc_path, &oc_cfg)?;

    step(&format!(
        "network: namespace basalt-{}, bridge, host at {host}/{len}",
        a.name
    ));
    let mut st = State {
        name: a.name.clone(),
        provisioner: a.provisioner,
        netns: format!("basalt-{}", a.name),
        host_link: format!("bst-{}", a.name),
        host_address: format!("{host}/{len}"),
        bridge_address: format!("{}/{len}", nth(base, size - 2)),
        nodes: nodes.clone(),
        image: None,
        published: Vec::new(),
        registry: None,
        config_server: None,
        chaos: None,
    };
    save(&dir, &st)?;
    if let Some(port) = a.registry {
        start_registry(&dir, &mut st, port)?;
    }
    provisioner.start(
        Start {
            a: &a,
            dir: &dir,
            st: &mut st,
            host,
            len,
            config_url: config_url.as_deref(),
        },
        arts,
    )?;
    publish(&a, &dir, &mut st)?;
    wait_ready(&a, &dir, &st, started)
}

/// The config patch that mirrors `localhost:PORT` — the name the host pushes to — to the
/// registry on the host's address of the cluster network, for every node.
fn registry_mirror(port: u16, host: &str) -> String {
    format!(
        "apiVersion: v1alpha1\nkind: RegistryMirrorConfig\nname: localhost:{port}\nskipFallback: true\nendpoints:\n  - url: http://{host}:{port}\n"
    )
}

/// Starts the cluster's registry, detached (its log beside the state, what is pushed under
/// `registry/`), and waits until it answers.
fn start_registry(dir: &Path, st: &mut State, port: u16) -> anyhow::Result<()> {
    step(&format!(
        "registry on port {port} (docker push localhost:{port}/IMAGE)"
    ));
    let exe = which("docker-registry")
        .context("--registry needs Debian's docker-registry (apt-get install docker-registry)")?;
    let store = dir.join("registry");
    std::fs::create_dir_all(&store)?;
    let cfg = dir.join("registry.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 0.0.0.0:{port}\n",
            store.display()
        ),
    )?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve").arg(&cfg);
    start_daemon(
        cmd,
        &dir.join("registry.log"),
        &format!("--registry {port}: docker-registry"),
        &Ready::Listening(std::net::SocketAddr::from(([127, 0, 0, 1], port))),
        |pid| {
            st.registry = Some((pid, port));
            save(dir, st)
        },
    )
}

/// When a daemon of the cluster is ready.
enum Ready<'a> {
    /// It accepts connections here.
    Listening(std::net::SocketAddr),
    /// It wrote this file.
    File(&'a Path),
}

impl Ready<'_> {
    fn is_ready(&self) -> bool {
        match self {
            Ready::Listening(addr) => std::net::TcpStream::connect(addr).is_ok(),
            Ready::File(path) => path.exists(),
        }
    }
}

impl std::fmt::Display for Ready<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ready::Listening(addr) => write!(f, "no answer on {addr}"),
            Ready::File(path) => write!(f, "no {}", path.display()),
        }
    }
}

/// Starts `cmd` detached — its own process group (a Ctrl-C of the create does not stop it),
/// its output in `log_path` — hands its pid to `record` (the cluster's state, for `destroy`),
/// and waits until it is `ready`; a process that exits first fails with its log.
fn start_daemon(
    mut cmd: Command,
    log_path: &Path,
    what: &str,
    ready: &Ready<'_>,
    record: impl FnOnce(i32) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let log = std::fs::File::create(log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("{what}: cannot start it"))?;
    record(i32::try_from(child.id()).context("a pid out of range")?)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "{what} exited ({status}): {}",
                std::fs::read_to_string(log_path).unwrap_or_default().trim()
            );
        }
        if ready.is_ready() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{what} is not ready ({ready}) after 30 s: {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A program on the PATH.
fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// One detached forwarder per `--publish` (workers tried first, then control planes), its pid
/// in the state for `destroy`. A forwarder that cannot listen (the port is taken) fails the
/// create with its reason.
fn publish(a: &CreateArgs, dir: &Path, st: &mut State) -> anyhow::Result<()> {
    if a.publish.is_empty() {
        return Ok(());
    }
    step("publishing node ports on the host");
    let mut nodes: Vec<&NodeState> = st.nodes.iter().filter(|n| n.role == "worker").collect();
    nodes.extend(st.nodes.iter().filter(|n| n.role != "worker"));
    let nodes: Vec<String> = nodes.iter().map(|n| n.address.clone()).collect();
    let exe = std::env::current_exe().context("cannot find osctl's own path")?;
    for p in &a.publish {
        let log_path = dir.join(format!("publish-{}.log", p.listen.port()));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut child = {
            use std::os::unix::process::CommandExt as _;
            Command::new(&exe)
                .args(["cluster", "forward", "--netns", &st.netns, "--listen"])
                .arg(p.listen.to_string())
                .arg("--to")
                .arg(nodes.join(","))
                .arg("--node-port")
                .arg(p.node_port.to_string())
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                // Its own process group: a Ctrl-C of the create does not stop it.
                .process_group(0)
                .spawn()
                .context("cannot start the port forwarder")?
        };
        std::thread::sleep(Duration::from_millis(300));
        if let Some(status) = child.try_wait()? {
            bail!(
                "--publish {}:{}: the forwarder exited ({status}): {}",
                p.listen,
                p.node_port,
                std::fs::read_to_string(&log_path)
                    .unwrap_or_default()
                    .trim()
            );
        }
        let pid = i32::try_from(child.id()).context("a pid out of range")?;
        st.published.push((pid, p.listen.to_string(), p.node_port));
        save(dir, st)?;
        print_line(&format!(
            "    {} -> port {} of the nodes",
            p.listen, p.node_port
        ));
    }
    Ok(())
}

/// Each of `nodes` in maintenance mode, then its config applied through the API; returns how
/// long each took to answer in maintenance mode. Stops early, with an error, once `abort` is set.
fn apply_configs(
    dir: &Path,
    st: &State,
    nodes: &[&NodeState],
    abort: &AtomicBool,
) -> anyhow::Result<Vec<Duration>> {
    let mut answered = Vec::new();
    for n in nodes {
        answered.push(wait_quiet(
            st,
            n,
            "the maintenance API",
            Duration::from_secs(300),
            abort,
            || node_client(st, n, None)?.version().map(drop),
        )?);
        let file = dir.join(format!("{}.yaml", n.role));
        let data =
            std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
        node_client(st, n, None)
            .and_then(|c| {
                c.call(|mut c, node| async move {
                    c.apply_configuration(request(
                        node.as_deref(),
                        pb::ApplyConfigurationRequest {
                            data,
                            mode: pb::ApplyMode::NoReboot as i32,
                            dry_run: false,
                            try_timeout_seconds: 0,
                        },
                    ))
                    .await
                })
            })
            .with_context(|| format!("{}: apply-config", n.name))?;
    }
    Ok(answered)
}

/// Every node configured (by osctl, or from the config server), then answering with it and
/// healthy.
fn wait_ready(a: &CreateArgs, dir: &Path, st: &State, started: Instant) -> anyhow::Result<()> {
    let (control_planes, workers): (Vec<&NodeState>, Vec<&NodeState>) =
        st.nodes.iter().partition(|n| n.role == "controlplane");
    let configure = st.config_server.is_none();
    let never = AtomicBool::new(false);
    if configure {
        // The control planes first, and on their way as soon as they answer: the workers boot
        // meanwhile, and are configured while the control planes start their services (under
        // TCG a worker answers in maintenance mode 20 s and more after the first control
        // plane, which would otherwise wait for it idle).
        step("waiting for the control planes' API (maintenance mode), then applying their configs");
        for (n, after) in
            control_planes
                .iter()
                .zip(apply_configs(dir, st, &control_planes, &never)?)
        {
            print_after(n, after);
        }
    }
    let oc_file = dir.join("osconfig");
    let oc = oc_file.to_str().unwrap_or_default();
    // Guards, not budgets: a loaded 2-core host runs TCG guests slowly (a PXE node also loads
    // its kernel and initramfs over TFTP first).
    let healthy_within = Duration::from_secs(u64::from(
        a.wait_timeout
            .unwrap_or(nodes_of(st.provisioner).default_wait(a.kubernetes)),
    ));
    if a.kubernetes
        && let Some(first) = st.nodes.iter().find(|n| n.role == "controlplane")
    {
        // As talosctl does: the first control plane bootstraps etcd; the others join it.
        step(&format!("bootstrapping etcd on {}", first.name));
        wait(st, first, "etcd bootstrap", healthy_within, || {
            let r =
                node_client(st, first, Some(&oc_file))?.call_status(|mut c, node| async move {
                    c.bootstrap(request(node.as_deref(), pb::BootstrapRequest {}))
                        .await
                })?;
            match r {
                Ok(_) => Ok(()),
                // Asked again after an answer that got lost: it is done.
                Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
                Err(s) => bail!("{}", crate::output::explain(&s)),
            }
        })?;
    }
    step("waiting until every node answers with its config and its services are healthy");
    let provisioner = nodes_of(st.provisioner);
    if a.kubernetes
        && let Err(e) = provisioner.control_planes_first(st, true)
    {
        print_line(&format!("    (the workers keep their priority: {e:#})"));
    }
    // The workers are configured (in the background) while the control planes start.
    let failed = AtomicBool::new(false);
    let (services, configured) = std::thread::scope(|scope| {
        let configuring = configure.then(|| {
            let (workers, failed) = (&workers, &failed);
            scope.spawn(move || apply_configs(dir, st, workers, failed))
        });
        let services =
            services_healthy(st, control_planes.iter().copied(), &oc_file, healthy_within);
        if a.kubernetes
            && let Err(e) = provisioner.control_planes_first(st, false)
        {
            print_line(&format!("    (the workers keep the lower priority: {e:#})"));
        }
        // A control plane that did not come up ends the create: the workers' wait stops too.
        failed.store(services.is_err(), Ordering::Relaxed);
        let configured = configuring.map(|t| {
            t.join()
                .unwrap_or_else(|_| Err(anyhow!("configuring the workers panicked")))
        });
        (services, configured)
    });
    services?;
    if let Some(answered) = configured {
        for (n, after) in workers.iter().zip(answered?) {
            print_line(&format!(
                "    {} ({}) configured: its maintenance API answered {:.1} s into this step",
                n.name,
                n.address,
                after.as_secs_f64()
            ));
        }
    }
    services_healthy(st, workers, &oc_file, healthy_within)?;
    if a.kubernetes
        && let Some(first) = st.nodes.iter().find(|n| n.role == "controlplane")
    {
        // As the reference system's create does: the cluster is up when Kubernetes is — etcd,
        // the API, every node Ready, kube-proxy on every node and CoreDNS ready.
        step("waiting until Kubernetes is healthy (every node Ready, kube-proxy, CoreDNS)");
        wait(st, first, "healthy cluster", healthy_within, || {
            let checks = node_client(st, first, Some(&oc_file))?
                .call(|mut c, node| async move {
                    c.cluster_health(request(node.as_deref(), pb::ClusterHealthRequest {}))
                        .await
                })?
                .checks;
            let nodes = checks
                .iter()
                .filter(|c| c.name.starts_with("node/"))
                .count();
            let failing: Vec<String> = checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{}: {}", c.name, c.message))
                .collect();
            if !failing.is_empty() {
                bail!("{}", failing.join("; "));
            }
            if nodes != st.nodes.len() {
                bail!("{nodes} of {} nodes registered", st.nodes.len());
            }
            Ok(())
        })?;
    }
    print_line(&format!(
        "\ncluster {} is up in {:.0} s:",
        a.name,
        started.elapsed().as_secs_f64()
    ));
    table(st, &oc_file);
    print_line(&format!(
        "\nTalk to it:  osctl --osconfig {oc} -n {} version\n(or: osctl config merge {oc})\nRemove it:   osctl cluster destroy --name {}",
        st.nodes[0].address, a.name
    ));
    Ok(())
}

/// Every node answers with its config and runs every service it has.
fn services_healthy<'a>(
    st: &State,
    nodes: impl IntoIterator<Item = &'a NodeState>,
    oc_file: &Path,
    within: Duration,
) -> anyhow::Result<()> {
    for n in nodes {
        wait(st, n, "a healthy configured node", within, || {
            let list = node_client(st, n, Some(oc_file))?.call(|mut c, node| async move {
                c.service_list(request(node.as_deref(), pb::ServiceListRequest {}))
                    .await
            })?;
            let not = not_running(&list.services);
            if list.services.is_empty() || !not.is_empty() {
                bail!("not every service running: {}", not.join(", "));
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// What a service waiting only for its node's registration says: kube-proxy, until the
/// kubelet has registered the node (the condition is `NODE_REGISTERED` in
/// kubernetes/src/layout.rs). Registration is the cluster's doing — the Kubernetes phase waits
/// for it, and for kube-proxy on every node —, not the node's own services'.
const WAITS_FOR_REGISTRATION: &str = "waiting for node-registered";

/// The services that are not running (`id state`), leaving out those waiting only for the
/// node's registration.
fn not_running(services: &[pb::ServiceInfo]) -> Vec<String> {
    services
        .iter()
        .filter(|s| s.state != "running")
        .filter(|s| !(s.state == "waiting" && s.message == WAITS_FOR_REGISTRATION))
        .map(|s| format!("{} {}", s.id, s.state))
        .collect()
}

/// Asks `check` every second until it passes; past `timeout`, the error names the node, its
/// last answer, whether it answers ping on the segment, and the tail of its console log.
fn wait(
    st: &State,
    n: &NodeState,
    what: &str,
    timeout: Duration,
    check: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let after = wait_quiet(st, n, what, timeout, &AtomicBool::new(false), check)?;
    print_after(n, after);
    Ok(())
}

fn print_after(n: &NodeState, after: Duration) {
    print_line(&format!(
        "    {} ({}) after {:.1} s",
        n.name,
        n.address,
        after.as_secs_f64()
    ));
}

/// [`wait`], printing nothing: returns how long it took. Gives up once `abort` is set.
fn wait_quiet(
    st: &State,
    n: &NodeState,
    what: &str,
    timeout: Duration,
    abort: &AtomicBool,
    mut check: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while let Err(last) = check() {
        if abort.load(Ordering::Relaxed) {
            bail!("{} ({}): no {what}: given up", n.name, n.address);
        }
        if start.elapsed() > timeout {
            let ping = |args: &[&str]| match sh(Command::new(args[0]).args(&args[1..])) {
                Ok(_) => "answers".to_string(),
                Err(e) => format!("no answer ({e:#})"),
            };
            let from_ns = ping(&[
                "ip", "netns", "exec", &st.netns, "ping", "-c", "1", "-W", "2", &n.address,
            ]);
            let from_host = ping(&["ping", "-c", "1", "-W", "2", &n.address]);
            let (where_, tail) = console_tail(st, n, 15);
            bail!(
                "{} ({}): no {what} within {timeout:?}\n  last answer: {}\n  ping from the cluster's namespace {}: {from_ns}\n  ping from the host: {from_host}\n  console ({where_}):\n{tail}",
                n.name,
                n.address,
                format!("{last:#}").trim(),
                st.netns,
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(start.elapsed())
}

/// Where a node's console is, and its last `lines` lines.
fn console_tail(st: &State, n: &NodeState, lines: usize) -> (String, String) {
    nodes_of(st.provisioner).console_tail(n, lines)
}

/// Whether the node's VM or container runs.
fn node_running(st: &State, n: &NodeState) -> bool {
    nodes_of(st.provisioner).running(n)
}

fn alive(pid: Option<i32>) -> bool {
    pid.is_some_and(|p| nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok())
}

fn table(st: &State, oc: &Path) {
    print_line(&format!(
        "{:<28} {:<13} {:<15} {:<8} {}",
        "NODE", "ROLE", "ADDRESS", "STATE", "API"
    ));
    for n in &st.nodes {
        let api = match node_client(st, n, Some(oc)).and_then(|c| c.version()) {
            Ok(v) => format!(
                "{} {} {} {} {}",
                v.tag,
                v.mode,
                v.hostname,
                v.kernel,
                crate::output::age(v.uptime_seconds)
            ),
            Err(_) => "no answer".into(),
        };
        print_line(&format!(
            "{:<28} {:<13} {:<15} {:<8} {}",
            n.name,
            n.role,
            n.address,
            if node_running(st, n) {
                "running"
            } else {
                "stopped"
            },
            api
        ));
    }
}

/// `cluster load`: `docker save` into the cluster's directory, then the import to every node.
fn load_images(name: &str, images: &[String], force: bool) -> anyhow::Result<()> {
    let (dir, st) = load(name)?;
    let archive = tempfile::Builder::new()
        .prefix("load-")
        .suffix(".tar")
        .tempfile_in(&dir)
        .with_context(|| format!("cannot make a file in {}", dir.display()))?;
    let out = std::process::Command::new("docker")
        .arg("save")
        .arg("--output")
        .arg(archive.path())
        .args(images)
        .output()
        .context("cannot run docker (is the docker.io package installed?)")?;
    if !out.status.success() {
        bail!(
            "docker save {}: {}",
            images.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let g = crate::client::Global {
        osconfig: Some(dir.join("osconfig")),
        context: None,
        endpoints: Vec::new(),
        nodes: st.nodes.iter().map(|n| n.address.clone()).collect(),
        insecure: false,
        netns: Some(st.netns.clone()).filter(|ns| Path::new("/run/netns").join(ns).exists()),
    };
    crate::image_import::run(&g, &archive.path().display().to_string(), "k8s.io", force)
}

fn show(name: &str) -> anyhow::Result<()> {
    let (dir, st) = load(name)?;
    table(&st, &dir.join("osconfig"));
    Ok(())
}

/// SIGTERM, then SIGKILL after 5 s; waits up to 10 s in all for the process to end.
fn stop(pid: i32) {
    let p = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM);
    let start = Instant::now();
    while alive(Some(pid)) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
    while alive(Some(pid)) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Removes the cluster's contexts from the client config they were merged into (`osctl config
/// merge` of the cluster's osconfig): a context left behind would dial a network namespace
/// that is gone.
fn forget_contexts(dir: &Path) -> anyhow::Result<()> {
    let Ok(text) = std::fs::read_to_string(dir.join("osconfig")) else {
        return Ok(());
    };
    let Ok(theirs) = basalt_config::client::ClientConfig::parse(&text) else {
        return Ok(());
    };
    let path = crate::client::default_config_path();
    let Some(mut cfg) = crate::client::read_config(&path)? else {
        return Ok(());
    };
    let gone = cfg.forget(&theirs);
    if !gone.is_empty() {
        crate::client::write_config(&path, &cfg)?;
        for n in gone {
            print_line(&format!("removed context {n:?} from {}", path.display()));
        }
    }
    Ok(())
}

fn destroy(name: &str) -> anyhow::Result<()> {
    check_name(name)?;
    let dir = clusters_root().join(name);
    let st = load(name).map(|(_, st)| st).ok();
    let netns = format!("basalt-{name}");
    let host_link = format!("bst-{name}");
    // Docker's part (containers, volumes, network, image) by label, whatever the state says.
    docker::destroy(name)?;
    for (pid, listen, _) in st.iter().flat_map(|s| &s.published) {
        if alive(Some(*pid)) {
            stop(*pid);
            print_line(&format!("stopped the forwarder of {listen}"));
        }
    }
    for (pid, port) in st.iter().filter_map(|s| s.config_server) {
        if alive(Some(pid)) {
            stop(pid);
            print_line(&format!("stopped the config server on port {port}"));
        }
    }
    for pid in st.iter().filter_map(|s| s.chaos) {
        if alive(Some(pid)) {
            stop(pid);
            print_line("stopped the network chaos");
        }
    }
    for (pid, port) in st.iter().filter_map(|s| s.registry) {
        if alive(Some(pid)) {
            stop(pid);
            print_line(&format!("stopped the registry on port {port}"));
        }
    }
    for n in st.iter().flat_map(|s| &s.nodes) {
        if let Some(pid) = n.pid.filter(|_| alive(n.pid)) {
            stop(pid);
            print_line(&format!("stopped {}", n.name));
        }
    }
    if Path::new("/run/netns").join(&netns).exists() {
        // Whatever still runs in the namespace is the cluster's too (a VM whose state was
        // lost, a half-made create).
        let pids = ip(&["netns", "pids", &netns]).unwrap_or_default();
        for pid in pids.split_whitespace().filter_map(|p| p.parse().ok()) {
            stop(pid);
            print_line(&format!("stopped process {pid} in {netns}"));
        }
        ip(&["netns", "del", &netns])?;
        print_line(&format!("removed network namespace {netns}"));
    }
    // Its peer went with the namespace, and the host end with it; only a half-made network
    // leaves this behind.
    if ip(&["link", "show", &host_link]).is_ok() {
        ip(&["link", "del", &host_link])?;
    }
    forget_contexts(&dir)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove {}", dir.display()))?;
        print_line(&format!("removed {}", dir.display()));
    }
    if st.is_none() {
        print_line(&format!(
            "no state for cluster {name}; removed what was left by name"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_segment_gives_the_host_the_first_address_and_nodes_the_next() {
        let (base, len) = segment("10.5.0.0/24").unwrap();
        assert_eq!((nth(base, 1).to_string(), len), ("10.5.0.1".into(), 24));
        assert_eq!(nth(base, 2).to_string(), "10.5.0.2");
        assert_eq!(mask(24).to_string(), "255.255.255.0");
        assert_eq!(mask(29).to_string(), "255.255.255.248");
        let e = segment("10.5.0.0/30").unwrap_err().to_string();
        assert!(e.contains("--cidr 10.5.0.0/30") && e.contains("/29"), "{e}");
        assert!(segment("fd00::/64").is_err());
        assert!(segment("10.5.0.0").is_err());
    }

    fn state() -> (State, NodeState) {
        let n = NodeState {
            name: "t-worker-1".into(),
            role: "worker".into(),
            address: "10.5.0.3".into(),
            dir: "/nonexistent".into(),
            pid: None,
        };
        let st = State {
            name: "t".into(),
            provisioner: Provisioner::Qemu,
            netns: "basalt-t".into(),
            host_link: "bst-t".into(),
            host_address: "10.5.0.1/24".into(),
            bridge_address: "10.5.0.254/24".into(),
            nodes: vec![n.clone()],
            image: None,
            published: Vec::new(),
            registry: None,
            config_server: None,
            chaos: None,
        };
        (st, n)
    }

    #[test]
    fn a_wait_ends_when_the_check_passes_and_says_how_long_it_took() {
        let (st, n) = state();
        let mut tries = 0;
        let took = wait_quiet(
            &st,
            &n,
            "an answer",
            Duration::from_secs(600),
            &AtomicBool::new(false),
            || {
                tries += 1;
                if tries < 3 { bail!("not yet") } else { Ok(()) }
            },
        )
        .unwrap();
        assert_eq!(tries, 3);
        // Two failed tries, a second apart.
        assert!(took >= Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn a_background_wait_gives_up_when_told_to_not_at_its_timeout() {
        // The workers are configured in the background while the control planes start: when
        // a control plane fails, their wait must end with the create, not minutes later.
        let (st, n) = state();
        let abort = AtomicBool::new(false);
        let started = Instant::now();
        let r = std::thread::scope(|s| {
            let waiting = s.spawn(|| {
                wait_quiet(
                    &st,
                    &n,
                    "the maintenance API",
                    Duration::from_secs(600),
                    &abort,
                    || bail!("connection refused"),
                )
            });
            std::thread::sleep(Duration::from_millis(1500));
            abort.store(true, Ordering::Relaxed);
            waiting.join().unwrap()
        });
        let e = format!("{:#}", r.unwrap_err());
        assert!(
            e.contains("t-worker-1 (10.5.0.3)") && e.contains("given up"),
            "{e}"
        );
        // Within a try or two of being told, far from the 600 s timeout (a generous guard
        // for a loaded machine).
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_node_s_services_are_up_with_kube_proxy_waiting_only_for_the_registration() {
        let svc = |id: &str, state: &str, message: &str| pb::ServiceInfo {
            id: id.into(),
            state: state.into(),
            message: message.into(),
            ..Default::default()
        };
        let up = [
            svc("kubelet", "running", "pid 7"),
            svc("kube-proxy", "waiting", "waiting for node-registered"),
        ];
        assert!(not_running(&up).is_empty());
        let down = [
            svc("kubelet", "waiting", "waiting for kubelet-client-ready"),
            svc(
                "kube-proxy",
                "waiting",
                "waiting for kubelet-client-ready, node-registered",
            ),
            svc("etcd", "backing-off", "exit code 1"),
        ];
        assert_eq!(
            not_running(&down),
            ["kubelet waiting", "kube-proxy waiting", "etcd backing-off"]
        );
    }

    #[test]
    fn names_must_fit_a_namespace_and_a_link_name() {
        for ok in ["demo", "e2e-1", "a"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Demo", "eleven-char", "a_b", "a/b"] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.contains("--name"), "{e}");
        }
        // The host link `bst-<name>` fits the kernel's 15 characters.
        assert!(format!("bst-{}", "abcdefghij").len() <= 15);
    }
}
