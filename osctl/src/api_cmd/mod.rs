//! The commands that talk to nodes over the machine API: their arguments, the dispatch, and
//! what they share; each group of commands is a module of its own.

use std::path::PathBuf;

use anyhow::{Context as _, anyhow};
use basalt_api::machine as pb;
use basalt_api::machine::machine_client::MachineClient;
use clap::{ArgAction, Subcommand, ValueEnum};
use futures::StreamExt as _;
use tonic::transport::Channel;

use crate::client::{self, Global, Target, runtime};
use crate::output::{self, Format, Out, Table, stdout};

mod apply;
mod inspect;
mod kube;
mod power;
mod resources;
mod services;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ApplyMode {
    /// Apply live and save; fails if a changed field needs a reboot.
    NoReboot,
    /// Save; the node takes it at its next boot.
    Staged,
    /// Apply live without saving; the node goes back to its config after --timeout unless
    /// a no-reboot apply confirms it.
    Try,
    /// Save, then reboot.
    Reboot,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ServiceAction {
    Start,
    Stop,
    Restart,
    /// SIGKILL to its process: the supervisor restarts it as after any crash.
    Kill,
}

#[derive(Debug, Subcommand)]
pub enum ApiCommand {
    /// Print the client's version and each node's.
    #[command(
        after_help = "Examples:\n  osctl version -n 10.5.0.2\n  osctl version --insecure -n 10.5.0.2   # a node in maintenance mode"
    )]
    Version {
        #[command(flatten)]
        out: Out,
    },
    /// Send a machine config to nodes.
    #[command(
        name = "apply-config",
        after_help = "Examples:\n  osctl apply-config --insecure -n 10.5.0.2 -f controlplane.yaml   # first config, maintenance mode\n  osctl apply-config -n 10.5.0.2 -f controlplane.yaml --dry-run\n  osctl apply-config -n 10.5.0.2 -f controlplane.yaml -m try --timeout 2m"
    )]
    ApplyConfig {
        /// The config file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// How the node takes it.
        #[arg(short = 'm', long, value_enum, default_value_t = ApplyMode::NoReboot)]
        mode: ApplyMode,
        /// Show what would change (the config diff, the resources) and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// With -m try: how long until the node goes back (e.g. 90s, 2m; default 1m).
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<u32>,
    },
    /// List resources of a type, or show one; -w to follow changes.
    #[command(
        after_help = "Examples:\n  osctl get services\n  osctl get machineconfig Secrets -o yaml\n  osctl get svc -w"
    )]
    Get {
        /// The resource type: its name, plural or short form (svc, mc, sequence, ...).
        resource: String,
        /// One resource by id.
        id: Option<String>,
        /// Only this namespace.
        #[arg(long, default_value = "")]
        namespace: String,
        /// Print the resources, then every change as it happens.
        #[arg(short = 'w', long)]
        watch: bool,
        #[command(flatten)]
        out: Out,
    },
    /// Show the node's time sync: each time server's offset, round trip and stratum, which one
    /// set the clock, and whether it is synced (the TimeStatus resource).
    #[command(after_help = "Example:\n  osctl time -n 10.5.0.2,10.5.0.3")]
    Time {
        #[command(flatten)]
        out: Out,
    },
    /// List the node's services with their state and health.
    #[command(after_help = "Example:\n  osctl services -n 10.5.0.2,10.5.0.3")]
    Services {
        #[command(flatten)]
        out: Out,
    },
    /// Show one service, or start, stop, restart or kill it.
    #[command(
        after_help = "Examples:\n  osctl service containerd\n  osctl service containerd restart\n  osctl service etcd kill   # SIGKILL: as a crash would"
    )]
    Service {
        /// The service id.
        name: String,
        /// What to do; without one, show the service and its recent events.
        action: Option<ServiceAction>,
        #[command(flatten)]
        out: Out,
    },
    /// Print a service's log (or init's: `osctl logs init`).
    #[command(after_help = "Examples:\n  osctl logs containerd --tail 20\n  osctl logs apid -f")]
    Logs {
        /// The service id, or init.
        name: String,
        /// Keep printing new lines.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines kept (0: all of them).
        #[arg(long, default_value_t = 0)]
        tail: u32,
    },
    /// Print the kernel log.
    #[command(after_help = "Examples:\n  osctl dmesg --tail 50\n  osctl dmesg -f")]
    Dmesg {
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines (0: all).
        #[arg(long, default_value_t = 0)]
        tail: u32,
    },
    /// List containers (containerd, every namespace unless one is named).
    #[command(after_help = "Example:\n  osctl containers --namespace system")]
    Containers {
        #[arg(long, default_value = "")]
        namespace: String,
        #[command(flatten)]
        out: Out,
    },
    /// List container images.
    #[command(after_help = "Example:\n  osctl images")]
    Images {
        #[arg(long, default_value = "")]
        namespace: String,
        #[command(flatten)]
        out: Out,
    },
    /// Show memory use (from /proc/meminfo).
    #[command(after_help = "Example:\n  osctl memory -n 10.5.0.2")]
    Memory {
        #[command(flatten)]
        out: Out,
    },
    /// List processes, largest resident memory first.
    #[command(after_help = "Example:\n  osctl processes")]
    Processes {
        #[command(flatten)]
        out: Out,
    },
    /// List mounts with their size and free space.
    #[command(after_help = "Example:\n  osctl mounts")]
    Mounts {
        #[command(flatten)]
        out: Out,
    },
    /// Bootstrap etcd on one control plane: it becomes the first member of a new cluster.
    /// Once per cluster; the other control planes join by themselves.
    #[command(after_help = "Example:\n  osctl bootstrap -n 10.5.0.2")]
    Bootstrap,
    /// Write an admin kubeconfig for the cluster, issued by a control plane, merged into PATH
    /// (default: the first file of $KUBECONFIG, else ~/.kube/config). Entries of the same
    /// names are replaced and its context made current.
    #[command(
        after_help = "Examples:\n  osctl kubeconfig -n 10.5.0.2\n  osctl kubeconfig -n 10.5.0.2 ./kubeconfig --force   # a file of its own"
    )]
    Kubeconfig {
        /// The file (or a directory: `kubeconfig` in it).
        path: Option<PathBuf>,
        /// Overwrite the file instead of merging into it.
        #[arg(long)]
        force: bool,
    },
    /// Check the cluster's health from a control plane: etcd (healthy, every member started, a
    /// leader), the API server (ready) and every node (registered and Ready).
    #[command(
        after_help = "Examples:\n  osctl health -n 10.5.0.2\n  osctl health -n 10.5.0.2 --wait-timeout 5m --expect-nodes 3"
    )]
    Health {
        /// Check again every 2 s until every check passes, for up to this long (e.g. 90s, 5m;
        /// 0: once).
        #[arg(long, value_parser = parse_duration, default_value = "0")]
        wait_timeout: u32,
        /// Also fail unless this many nodes are registered (the cluster's size).
        #[arg(long)]
        expect_nodes: Option<usize>,
    },
    /// etcd on control planes: its members, leaving it, snapshots.
    #[command(subcommand)]
    Etcd(EtcdCommand),
    /// Send ICMP echo requests from the nodes to an address, and show what came back: the node
    /// has no shell, and this is its ping. Fails when a node got no reply at all.
    #[command(
        after_help = "Examples:\n  osctl -n 10.5.0.3 ping 10.5.0.1\n  osctl -n 10.5.0.2,10.5.0.3 ping fd83:b1f3:4a5c:1102::1 -c 10"
    )]
    Ping {
        /// An IPv4 or IPv6 address (e.g. another node's KubeSpan address).
        address: String,
        /// Echo requests to send (at most 100).
        #[arg(short = 'c', long, default_value_t = 3)]
        count: u32,
        /// How long to wait for each reply (e.g. 1s, 5s; at most 10s).
        #[arg(long, value_parser = parse_duration, default_value = "1s")]
        timeout: u32,
        #[command(flatten)]
        out: Out,
    },
    /// List disks (works in maintenance mode with --insecure).
    #[command(after_help = "Example:\n  osctl disks --insecure -n 10.5.0.2")]
    Disks {
        #[command(flatten)]
        out: Out,
    },
    /// Reboot nodes: stop services, sync, unmount, reboot.
    #[command(after_help = "Example:\n  osctl reboot -n 10.5.0.3")]
    Reboot,
    /// Power nodes off.
    #[command(after_help = "Example:\n  osctl shutdown -n 10.5.0.3")]
    Shutdown,
    /// Wipe nodes' config and data and reboot them into maintenance mode.
    #[command(
        after_help = "Examples:\n  osctl reset -n 10.5.0.3\n  osctl reset -n 10.5.0.3 --graceful=false   # do not wait for services to stop"
    )]
    Reset {
        /// Cordon and drain the node (its pods evicted, PodDisruptionBudgets honoured), leave
        /// etcd (a control plane) and stop services in order first (false: kill them at once).
        #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
        graceful: bool,
        /// What to wipe: STATE (the config and the node's identity: the node comes back in
        /// maintenance mode), EPHEMERAL (/var: etcd's data, images, pods, logs); default both.
        #[arg(long, value_delimiter = ',', value_parser = ["STATE", "EPHEMERAL", "state", "ephemeral"])]
        wipe: Vec<String>,
    },
}

/// `90`, `90s`, `2m`, `1h` → seconds.
pub(crate) fn parse_duration(s: &str) -> Result<u32, String> {
    let (num, mult) = match s.strip_suffix('h') {
        Some(n) => (n, 3600),
        None => match s.strip_suffix('m') {
            Some(n) => (n, 60),
            None => (s.strip_suffix('s').unwrap_or(s), 1),
        },
    };
    num.parse::<u32>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a duration like 90s, 2m or 1h"))
}

#[derive(Debug, Subcommand)]
pub enum EtcdCommand {
    /// List etcd's members, as each control plane's etcd sees them.
    #[command(after_help = "Example:\n  osctl etcd members -n 10.5.0.2")]
    Members {
        #[command(flatten)]
        out: Out,
    },
    /// This control plane leaves etcd: removed from the members, etcd stopped, its data
    /// deleted (it joins again after a reboot).
    #[command(after_help = "Example:\n  osctl etcd leave -n 10.5.0.3")]
    Leave,
    /// Save a snapshot of etcd's database from one control plane.
    #[command(after_help = "Example:\n  osctl etcd snapshot db.snapshot -n 10.5.0.2")]
    Snapshot {
        /// Where to write it (atomically).
        path: PathBuf,
    },
}

pub fn run(g: &Global, cmd: ApiCommand) -> anyhow::Result<()> {
    // Channels are made inside the runtime: they need its reactor.
    runtime()?.block_on(async {
        let targets = client::targets(g)?;
        run_async(&targets, cmd).await
    })
}

async fn run_async(targets: &[Target], cmd: ApiCommand) -> anyhow::Result<()> {
    match cmd {
        ApiCommand::Version { out } => inspect::version(targets, out).await,
        ApiCommand::ApplyConfig {
            file,
            mode,
            dry_run,
            timeout,
        } => apply::apply_config(targets, file, mode, dry_run, timeout).await,
        ApiCommand::Get {
            resource,
            id,
            namespace,
            watch,
            out,
        } => resources::get(targets, resource, id, namespace, watch, out.output).await,
        ApiCommand::Time { out } => resources::time(targets, out).await,
        ApiCommand::Services { out } => services::services(targets, out).await,
        ApiCommand::Service { name, action, out } => {
            services::service(targets, name, action, out).await
        }
        ApiCommand::Logs { name, follow, tail } => {
            services::logs(targets, name, follow, tail).await
        }
        ApiCommand::Dmesg { follow, tail } => services::dmesg(targets, follow, tail).await,
        ApiCommand::Containers { namespace, out } => {
            inspect::containers(targets, namespace, out).await
        }
        ApiCommand::Images { namespace, out } => inspect::images(targets, namespace, out).await,
        ApiCommand::Memory { out } => inspect::memory(targets, out).await,
        ApiCommand::Processes { out } => inspect::processes(targets, out).await,
        ApiCommand::Mounts { out } => inspect::mounts(targets, out).await,
        ApiCommand::Ping {
            address,
            count,
            timeout,
            out,
        } => inspect::ping(targets, address, count, timeout, out).await,
        ApiCommand::Disks { out } => inspect::disks(targets, out).await,
        ApiCommand::Reboot => power::reboot(targets).await,
        ApiCommand::Shutdown => power::shutdown(targets).await,
        ApiCommand::Bootstrap => kube::bootstrap(targets).await,
        ApiCommand::Etcd(EtcdCommand::Members { out }) => kube::etcd_members(targets, out).await,
        ApiCommand::Kubeconfig { path, force } => kube::kubeconfig(targets, path, force).await,
        ApiCommand::Health {
            wait_timeout,
            expect_nodes,
        } => kube::health(targets, wait_timeout, expect_nodes).await,
        ApiCommand::Etcd(EtcdCommand::Leave) => kube::etcd_leave(targets).await,
        ApiCommand::Etcd(EtcdCommand::Snapshot { path }) => {
            kube::etcd_snapshot(targets, path).await
        }
        ApiCommand::Reset { graceful, wipe } => power::reset(targets, graceful, wipe).await,
    }
}

/// One unary call to every target at once (with each target's `node` metadata).
async fn unary<Req, Resp, F, Fut>(
    targets: &[Target],
    req: Req,
    call: F,
) -> Vec<(String, Result<Resp, tonic::Status>)>
where
    Req: Clone,
    F: Fn(MachineClient<Channel>, tonic::Request<Req>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    client::each(targets, |t| {
        let fut = call(t.client.clone(), t.req(req.clone()));
        async move { fut.await.map(tonic::Response::into_inner) }
    })
    .await
}

fn pid(p: i32) -> String {
    if p > 0 { p.to_string() } else { "-".into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("2m"), Ok(120));
        assert_eq!(parse_duration("1h"), Ok(3600));
        assert!(parse_duration("soon").is_err());
        assert_eq!(services::clock(0), "1970-01-01 00:00:00.000");
    }
}
