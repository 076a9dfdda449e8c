//! The commands that talk to nodes over the machine API.

use std::path::PathBuf;

use anyhow::{Context as _, anyhow};
use basalt_api::machine as pb;
use basalt_api::machine::machine_client::MachineClient;
use clap::{ArgAction, Subcommand, ValueEnum};
use futures::StreamExt as _;
use tonic::transport::Channel;

use crate::client::{self, Global, Target, runtime};
use crate::output::{self, Format, Out, Table, stdout};

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
        /// Leave etcd (a control plane) and stop services in order first (false: kill them at
        /// once).
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
        ApiCommand::Version { out } => {
            if out.output == Format::Table {
                stdout(&format!("Client: osctl {}\n", env!("CARGO_PKG_VERSION")));
            }
            let r = unary(targets, pb::VersionRequest {}, |mut c, r| async move {
                c.version(r).await
            })
            .await;
            output::results(out.output, r, |v| {
                let mut t = Table::new(&[
                    "TAG", "ARCH", "KERNEL", "MODE", "HOSTNAME", "UPTIME", "SLOTS",
                ]);
                // An installed node's slots: `A:0.1.0(booted) B:0.2.0(next)`; `-` from ISO/PXE.
                let slots: Vec<String> = v
                    .slots
                    .iter()
                    .map(|s| {
                        let version = if s.version.is_empty() {
                            "empty"
                        } else {
                            &s.version
                        };
                        match s.state.as_str() {
                            "" => format!("{}:{version}", s.name),
                            st => format!("{}:{version}({st})", s.name),
                        }
                    })
                    .collect();
                t.row(vec![
                    v.tag.clone(),
                    v.arch.clone(),
                    v.kernel.clone(),
                    v.mode.clone(),
                    v.hostname.clone(),
                    output::age(v.uptime_seconds),
                    if slots.is_empty() {
                        "-".into()
                    } else {
                        slots.join(" ")
                    },
                ]);
                t
            })
        }
        ApiCommand::ApplyConfig {
            file,
            mode,
            dry_run,
            timeout,
        } => {
            let data =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let mode = match mode {
                ApplyMode::NoReboot => pb::ApplyMode::NoReboot,
                ApplyMode::Staged => pb::ApplyMode::Staged,
                ApplyMode::Try => pb::ApplyMode::Try,
                ApplyMode::Reboot => pb::ApplyMode::Reboot,
            };
            let req = pb::ApplyConfigurationRequest {
                data,
                mode: mode as i32,
                dry_run,
                try_timeout_seconds: timeout.unwrap_or(0),
            };
            let r = unary(targets, req, |mut c, r| async move {
                c.apply_configuration(r).await
            })
            .await;
            let many = r.len() > 1;
            let mut failed = 0;
            for (node, res) in &r {
                let p = if many {
                    format!("{node}: ")
                } else {
                    String::new()
                };
                match res {
                    Ok(a) => {
                        stdout(&format!("{p}{}\n", a.summary));
                        for c in &a.resource_changes {
                            stdout(&format!("{p}  {c}\n"));
                        }
                        for f in &a.needs_reboot {
                            stdout(&format!("{p}  needs a reboot: {f}\n"));
                        }
                        if dry_run && (!a.network_plan.is_empty() || !a.network_waiting.is_empty())
                        {
                            stdout(&format!(
                                "{p}network plan ({} operations):\n",
                                a.network_plan.len()
                            ));
                            for op in &a.network_plan {
                                stdout(&format!("{p}  ip {op}\n"));
                            }
                            for w in &a.network_waiting {
                                stdout(&format!("{p}  waiting: {w}\n"));
                            }
                        }
                        if dry_run && !a.config_diff.is_empty() {
                            stdout(&a.config_diff);
                            if !a.config_diff.ends_with('\n') {
                                stdout("\n");
                            }
                        }
                    }
                    Err(s) => {
                        failed += 1;
                        output::stderr(&format!("{node}: error: {}", crate::output::explain(s)));
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!(
                    "{file}: {failed} of {} nodes refused the config",
                    r.len(),
                    file = file.display()
                );
            }
            Ok(())
        }
        ApiCommand::Get {
            resource,
            id,
            namespace,
            watch,
            out,
        } => get(targets, resource, id, namespace, watch, out.output).await,
        ApiCommand::Time { out } => {
            let r = unary(
                targets,
                pb::GetRequest {
                    r#type: "TimeStatus".into(),
                    id: "time".into(),
                    namespace: String::new(),
                },
                |mut c, r| async move { c.get(r).await },
            )
            .await
            .into_iter()
            .map(|(n, r)| (n, r.map(|r| ResourceView::from(r).spec)))
            .collect();
            output::results(out.output, r, time_table)
        }
        ApiCommand::Services { out } => {
            let r = unary(targets, pb::ServiceListRequest {}, |mut c, r| async move {
                c.service_list(r).await
            })
            .await;
            output::results(out.output, r, |l| {
                let mut t =
                    Table::new(&["SERVICE", "STATE", "HEALTH", "PID", "RESTARTS", "MESSAGE"]);
                for s in &l.services {
                    t.row(service_row(s));
                }
                t
            })
        }
        ApiCommand::Service { name, action, out } => {
            let Some(action) = action else {
                let r = client::each(targets, |t| {
                    let name = name.clone();
                    async move {
                        let l = t
                            .client
                            .clone()
                            .service_list(t.req(pb::ServiceListRequest {}))
                            .await?
                            .into_inner();
                        let ids: Vec<_> = l.services.iter().map(|s| s.id.clone()).collect();
                        l.services
                            .into_iter()
                            .find(|s| s.id == name)
                            .ok_or_else(|| {
                                tonic::Status::not_found(format!(
                                    "no service {name:?} (services: {})",
                                    ids.join(", ")
                                ))
                            })
                    }
                })
                .await;
                if out.output != Format::Table {
                    return output::results(out.output, r, |_| Table::default());
                }
                let many = r.len() > 1;
                let mut failed = 0;
                for (node, res) in &r {
                    match res {
                        Ok(s) => {
                            if many {
                                stdout(&format!("NODE: {node}\n"));
                            }
                            let mut t = Table::new(&[
                                "SERVICE", "STATE", "HEALTH", "PID", "RESTARTS", "MESSAGE",
                            ]);
                            t.row(service_row(s));
                            stdout(&t.render());
                            stdout("EVENTS\n");
                            for e in &s.events {
                                stdout(&format!(
                                    "  {}  {}  {}\n",
                                    clock(e.time_ms),
                                    e.state,
                                    e.message
                                ));
                            }
                        }
                        Err(e) => {
                            failed += 1;
                            output::stderr(&format!(
                                "{node}: error: {}",
                                crate::output::explain(e)
                            ));
                        }
                    }
                }
                if failed > 0 {
                    anyhow::bail!("{failed} of {} nodes failed", r.len());
                }
                return Ok(());
            };
            let r = client::each(targets, |t| {
                let req = pb::ServiceRequest { id: name.clone() };
                async move {
                    let mut c = t.client.clone();
                    match action {
                        ServiceAction::Start => c.service_start(t.req(req)).await,
                        ServiceAction::Stop => c.service_stop(t.req(req)).await,
                        ServiceAction::Restart => c.service_restart(t.req(req)).await,
                        ServiceAction::Kill => {
                            c.service_kill(t.req(pb::ServiceKillRequest {
                                id: req.id,
                                signal: "SIGKILL".into(),
                            }))
                            .await
                        }
                    }
                    .map(tonic::Response::into_inner)
                }
            })
            .await;
            output::results(out.output, r, |s| {
                let mut t = Table::new(&["RESULT"]);
                t.row(vec![s.summary.clone()]);
                t
            })
        }
        ApiCommand::Logs { name, follow, tail } => {
            let req = pb::LogsRequest {
                id: name,
                follow,
                tail_lines: tail,
            };
            lines(targets, move |t| {
                let req = req.clone();
                async move { Ok(t.client.clone().logs(t.req(req)).await?.into_inner()) }
            })
            .await
        }
        ApiCommand::Dmesg { follow, tail } => {
            let req = pb::DmesgRequest {
                follow,
                tail_lines: tail,
            };
            lines(targets, move |t| async move {
                Ok(t.client.clone().dmesg(t.req(req)).await?.into_inner())
            })
            .await
        }
        ApiCommand::Containers { namespace, out } => {
            let r = unary(
                targets,
                pb::ContainersRequest { namespace },
                |mut c, r| async move { c.containers(r).await },
            )
            .await;
            output::results(out.output, r, |l| {
                let mut t = Table::new(&["NAMESPACE", "ID", "IMAGE", "STATUS", "PID"]);
                for c in &l.containers {
                    t.row(vec![
                        c.namespace.clone(),
                        c.id.clone(),
                        c.image.clone(),
                        c.status.clone(),
                        pid(c.pid as i32),
                    ]);
                }
                t
            })
        }
        ApiCommand::Images { namespace, out } => {
            let r = unary(
                targets,
                pb::ImagesRequest { namespace },
                |mut c, r| async move { c.images(r).await },
            )
            .await;
            output::results(out.output, r, |l| {
                let mut t = Table::new(&["NAMESPACE", "IMAGE", "ID", "DIGEST", "SIZE"]);
                for i in &l.images {
                    t.row(vec![
                        i.namespace.clone(),
                        i.name.clone(),
                        crate::image_import::short_id(&i.id),
                        i.digest.chars().take(19).collect(),
                        output::bytes(i.size.max(0) as u64),
                    ]);
                }
                t
            })
        }
        ApiCommand::Memory { out } => {
            let r = unary(targets, pb::MemoryRequest {}, |mut c, r| async move {
                c.memory(r).await
            })
            .await;
            output::results(out.output, r, |m| {
                let f = |k: &str| m.meminfo_kib.get(k).copied().unwrap_or(0) * 1024;
                let mut t = Table::new(&[
                    "TOTAL",
                    "USED",
                    "FREE",
                    "AVAILABLE",
                    "BUFFERS",
                    "CACHED",
                    "SHARED",
                ]);
                let used = f("MemTotal").saturating_sub(f("MemAvailable"));
                t.row(
                    [
                        f("MemTotal"),
                        used,
                        f("MemFree"),
                        f("MemAvailable"),
                        f("Buffers"),
                        f("Cached"),
                        f("Shmem"),
                    ]
                    .map(output::bytes)
                    .to_vec(),
                );
                t
            })
        }
        ApiCommand::Processes { out } => {
            let r = unary(targets, pb::ProcessesRequest {}, |mut c, r| async move {
                c.processes(r).await
            })
            .await;
            output::results(out.output, r, |l| {
                let mut ps = l.processes.clone();
                ps.sort_by(|a, b| b.rss_bytes.cmp(&a.rss_bytes).then(a.pid.cmp(&b.pid)));
                let mut t = Table::new(&[
                    "PID",
                    "PPID",
                    "STATE",
                    "THREADS",
                    "RSS",
                    "CPU-TICKS",
                    "COMMAND",
                ]);
                for p in ps {
                    let cmd = if p.args.is_empty() {
                        format!("[{}]", p.command)
                    } else {
                        p.args.chars().take(80).collect()
                    };
                    t.row(vec![
                        p.pid.to_string(),
                        p.ppid.to_string(),
                        p.state,
                        p.threads.to_string(),
                        output::bytes(p.rss_bytes),
                        p.cpu_ticks.to_string(),
                        cmd,
                    ]);
                }
                t
            })
        }
        ApiCommand::Mounts { out } => {
            let r = unary(targets, pb::MountsRequest {}, |mut c, r| async move {
                c.mounts(r).await
            })
            .await;
            output::results(out.output, r, |l| {
                let mut t =
                    Table::new(&["SOURCE", "MOUNTPOINT", "TYPE", "MODE", "SIZE", "AVAILABLE"]);
                for m in &l.mounts {
                    t.row(vec![
                        m.source.clone(),
                        m.point.clone(),
                        m.fstype.clone(),
                        if m.read_only { "ro" } else { "rw" }.into(),
                        size_or_dash(m.size_bytes),
                        size_or_dash(m.available_bytes),
                    ]);
                }
                t
            })
        }
        ApiCommand::Ping {
            address,
            count,
            timeout,
            out,
        } => {
            let req = pb::PingRequest {
                address: address.clone(),
                count,
                timeout_ms: timeout.saturating_mul(1000),
                interval_ms: 0,
            };
            let r = unary(targets, req, |mut c, r| async move { c.ping(r).await }).await;
            let silent: Vec<String> = r
                .iter()
                .filter(|(_, r)| {
                    r.as_ref()
                        .is_ok_and(|p| p.replies.iter().all(|x| !x.received))
                })
                .map(|(n, _)| n.clone())
                .collect();
            output::results(out.output, r, |p| {
                let mut t =
                    Table::new(&["ADDRESS", "SENT", "RECEIVED", "LOSS", "MIN", "AVG", "MAX"]);
                let rtts: Vec<u64> = p
                    .replies
                    .iter()
                    .filter(|x| x.received)
                    .map(|x| x.rtt_us)
                    .collect();
                let ms = |us: u64| format!("{:.3}ms", us as f64 / 1000.0);
                let (min, avg, max) = match (rtts.iter().min(), rtts.iter().max()) {
                    (Some(&lo), Some(&hi)) => (
                        ms(lo),
                        ms(rtts.iter().sum::<u64>() / rtts.len() as u64),
                        ms(hi),
                    ),
                    _ => ("-".into(), "-".into(), "-".into()),
                };
                let loss = if p.sent == 0 {
                    0
                } else {
                    100 * (p.sent as usize - rtts.len()) / p.sent as usize
                };
                t.row(vec![
                    p.address.clone(),
                    p.sent.to_string(),
                    rtts.len().to_string(),
                    format!("{loss}%"),
                    min,
                    avg,
                    max,
                ]);
                t
            })?;
            if !silent.is_empty() {
                anyhow::bail!("no reply from {address} to {}", silent.join(", "));
            }
            Ok(())
        }
        ApiCommand::Disks { out } => {
            let r = unary(targets, pb::DisksRequest {}, |mut c, r| async move {
                c.disks(r).await
            })
            .await;
            output::results(out.output, r, |l| {
                let mut t = Table::new(&[
                    "DEVICE",
                    "SIZE",
                    "MODEL",
                    "SERIAL",
                    "LABEL",
                    "RO",
                    "ROTATIONAL",
                ]);
                for d in &l.disks {
                    t.row(vec![
                        format!("/dev/{}", d.name),
                        output::bytes(d.size_bytes),
                        d.model.clone(),
                        d.serial.clone(),
                        d.label.clone(),
                        d.read_only.to_string(),
                        d.rotational.to_string(),
                    ]);
                }
                t
            })
        }
        ApiCommand::Reboot => {
            let r = unary(targets, pb::RebootRequest {}, |mut c, r| async move {
                c.reboot(r).await
            })
            .await;
            output::results(Format::Table, r, sequence_table)
        }
        ApiCommand::Shutdown => {
            let r = unary(targets, pb::ShutdownRequest {}, |mut c, r| async move {
                c.shutdown(r).await
            })
            .await;
            output::results(Format::Table, r, sequence_table)
        }
        ApiCommand::Bootstrap => {
            if targets.len() != 1 {
                anyhow::bail!(
                    "bootstrap runs on exactly one control plane: name one node with -n (got {})",
                    targets.len()
                );
            }
            let r = unary(targets, pb::BootstrapRequest {}, |mut c, r| async move {
                c.bootstrap(r).await
            })
            .await;
            output::results(Format::Table, r, |b| {
                let mut t = Table::new(&["RESULT"]);
                t.row(vec![b.message.clone()]);
                t
            })
        }
        ApiCommand::Etcd(EtcdCommand::Members { out }) => {
            let r = unary(targets, pb::EtcdMembersRequest {}, |mut c, r| async move {
                c.etcd_members(r).await
            })
            .await;
            output::results(out.output, r, |m| {
                let mut t = Table::new(&[
                    "ID",
                    "NAME",
                    "PEER URLS",
                    "CLIENT URLS",
                    "LEARNER",
                    "LEADER",
                    "VERSION",
                ]);
                for e in &m.members {
                    t.row(vec![
                        format!("{:016x}", e.id),
                        if e.name.is_empty() {
                            "(not started)".into()
                        } else {
                            e.name.clone()
                        },
                        e.peer_urls.join(","),
                        e.client_urls.join(","),
                        e.learner.to_string(),
                        (e.id == m.leader_id).to_string(),
                        // The member that answered says its version.
                        if e.id == m.self_id {
                            m.version.clone()
                        } else {
                            String::new()
                        },
                    ]);
                }
                t
            })
        }
        ApiCommand::Kubeconfig { path, force } => {
            let [t] = targets else {
                anyhow::bail!(
                    "a kubeconfig comes from one control plane: name one node with -n (got {})",
                    targets.len()
                );
            };
            let r = t
                .client
                .clone()
                .kubeconfig(t.req(pb::KubeconfigRequest {}))
                .await
                .map_err(|s| anyhow::anyhow!("{}: {}", t.label, crate::output::explain(&s)))?
                .into_inner();
            let mut path = path.unwrap_or_else(crate::kubeconfig::default_path);
            if path.is_dir() {
                path = path.join("kubeconfig");
            }
            let text = String::from_utf8(r.data).context("the kubeconfig is not UTF-8")?;
            let new = basalt_config::yaml::parse_documents(&text)
                .map_err(|e| anyhow::anyhow!("the node's kubeconfig: {e}"))?
                .first()
                .map(basalt_config::yaml::Node::to_json)
                .context("the node sent an empty kubeconfig")?;
            let existing = match std::fs::read_to_string(&path) {
                Ok(old) if !force => Some(
                    basalt_config::yaml::parse_documents(&old)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                        .first()
                        .map(basalt_config::yaml::Node::to_json)
                        .unwrap_or(serde_json::Value::Null),
                )
                .filter(|v| v.is_object()),
                Ok(_) => None,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
            };
            let merged = existing.is_some();
            let out = crate::kubeconfig::merge(existing, &new);
            basalt_sys::fs::atomic_write(
                &path,
                basalt_config::yaml::to_yaml_text(&out).as_bytes(),
                0o600,
            )
            .with_context(|| format!("cannot write {}", path.display()))?;
            stdout(&format!(
                "kubeconfig for cluster {} {} {} (context {})\n",
                r.cluster,
                if merged { "merged into" } else { "written to" },
                path.display(),
                out["current-context"].as_str().unwrap_or_default()
            ));
            Ok(())
        }
        ApiCommand::Health {
            wait_timeout,
            expect_nodes,
        } => {
            let [t] = targets else {
                anyhow::bail!(
                    "health is checked from one control plane: name one node with -n (got {})",
                    targets.len()
                );
            };
            let deadline =
                std::time::Instant::now() + std::time::Duration::from_secs(wait_timeout.into());
            loop {
                let got = t
                    .client
                    .clone()
                    .cluster_health(t.req(pb::ClusterHealthRequest {}))
                    .await
                    .map(|r| r.into_inner().checks)
                    .map_err(|s| format!("{}: {}", t.label, crate::output::explain(&s)));
                let mut checks: Vec<(String, bool, String)> = match got {
                    Ok(c) => c.into_iter().map(|c| (c.name, c.ok, c.message)).collect(),
                    Err(e) => vec![("api".into(), false, e)],
                };
                if let Some(want) = expect_nodes {
                    let have = checks.iter().filter(|c| c.0.starts_with("node/")).count();
                    checks.push((
                        "expected nodes".into(),
                        have == want,
                        format!("{have} registered, {want} expected"),
                    ));
                }
                let failed = checks.iter().filter(|c| !c.1).count();
                if failed == 0 || std::time::Instant::now() >= deadline {
                    let mut table = Table::new(&["CHECK", "STATUS", "MESSAGE"]);
                    for (name, ok, msg) in &checks {
                        table.row(vec![
                            name.clone(),
                            if *ok { "OK" } else { "FAIL" }.into(),
                            msg.clone(),
                        ]);
                    }
                    stdout(&table.render());
                    if failed > 0 {
                        anyhow::bail!("{failed} of {} checks failed", checks.len());
                    }
                    return Ok(());
                }
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
        }
        ApiCommand::Etcd(EtcdCommand::Leave) => {
            let r = unary(targets, pb::EtcdLeaveRequest {}, |mut c, r| async move {
                c.etcd_leave(r).await
            })
            .await;
            output::results(Format::Table, r, |b| {
                let mut t = Table::new(&["RESULT"]);
                t.row(vec![b.message.clone()]);
                t
            })
        }
        ApiCommand::Etcd(EtcdCommand::Snapshot { path }) => {
            let [t] = targets else {
                anyhow::bail!(
                    "a snapshot comes from one control plane: name one node with -n (got {})",
                    targets.len()
                );
            };
            let mut stream = t
                .client
                .clone()
                .etcd_snapshot(t.req(pb::EtcdSnapshotRequest {}))
                .await
                .map_err(|s| anyhow::anyhow!("{}: {}", t.label, crate::output::explain(&s)))?
                .into_inner();
            let mut data = Vec::new();
            while let Some(c) = stream
                .message()
                .await
                .map_err(|s| anyhow::anyhow!("{}: {}", t.label, crate::output::explain(&s)))?
            {
                data.extend_from_slice(&c.data);
            }
            basalt_sys::fs::atomic_write(&path, &data, 0o600)
                .with_context(|| format!("cannot write {}", path.display()))?;
            stdout(&format!(
                "etcd snapshot from {} saved to {} ({})\n",
                t.label,
                path.display(),
                output::bytes(data.len() as u64)
            ));
            Ok(())
        }
        ApiCommand::Reset { graceful, wipe } => {
            let r = unary(
                targets,
                pb::ResetRequest { graceful, wipe },
                |mut c, r| async move { c.reset(r).await },
            )
            .await;
            output::results(Format::Table, r, sequence_table)
        }
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

/// `osctl time`: one row per server, then the node's state.
fn time_table(spec: &serde_json::Value) -> Table {
    let mut t = Table::new(&[
        "SERVER", "ADDRESS", "STRATUM", "OFFSET", "DELAY", "USED", "STATE",
    ]);
    let used = spec["server"].as_str().unwrap_or_default();
    let state = spec["state"].as_str().unwrap_or_default().to_string();
    let secs = |v: &serde_json::Value, digits: usize| {
        v.as_f64()
            .map(|x| format!("{x:+.digits$}s"))
            .unwrap_or_else(|| "-".into())
    };
    let servers = spec["servers"].as_array().cloned().unwrap_or_default();
    for srv in &servers {
        let name = srv["server"].as_str().unwrap_or_default();
        let error = srv["error"].as_str().unwrap_or_default();
        t.row(vec![
            name.to_string(),
            srv["address"].as_str().unwrap_or("-").to_string(),
            srv["stratum"]
                .as_u64()
                .map_or_else(|| "-".into(), |s| s.to_string()),
            secs(&srv["offsetSeconds"], 6),
            secs(&srv["delaySeconds"], 6)
                .trim_start_matches('+')
                .to_string(),
            if name == used { "*" } else { "" }.to_string(),
            if error.is_empty() {
                state.clone()
            } else {
                error.to_string()
            },
        ]);
    }
    if servers.is_empty() {
        t.row(vec![
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "".into(),
            state,
        ]);
    }
    t
}

fn sequence_table(s: &pb::SequenceResponse) -> Table {
    let mut t = Table::new(&["SEQUENCE", "RESULT"]);
    t.row(vec![s.sequence.clone(), s.summary.clone()]);
    t
}

fn service_row(s: &pb::ServiceInfo) -> Vec<String> {
    vec![
        s.id.clone(),
        s.state.clone(),
        if s.health.is_empty() {
            "-".into()
        } else {
            s.health.clone()
        },
        pid(s.pid),
        s.restarts.to_string(),
        s.message.clone(),
    ]
}

fn pid(p: i32) -> String {
    if p > 0 { p.to_string() } else { "-".into() }
}

fn size_or_dash(n: u64) -> String {
    if n == 0 { "-".into() } else { output::bytes(n) }
}

/// A wall-clock time (UTC) from milliseconds since the epoch.
fn clock(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Prints log lines from every target as they come, prefixed with the node when there are
/// several.
async fn lines<F, Fut>(targets: &[Target], open: F) -> anyhow::Result<()>
where
    F: Fn(Target) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Streaming<pb::LogLine>, tonic::Status>>,
{
    let many = targets.len() > 1;
    let streams = targets.iter().map(|t| {
        let label = t.label.clone();
        let fut = open(t.clone());
        async move {
            let p = if many {
                format!("{label}: ")
            } else {
                String::new()
            };
            let mut s = match fut.await {
                Ok(s) => s,
                Err(e) => return Err(format!("{label}: error: {}", crate::output::explain(&e))),
            };
            loop {
                match s.next().await {
                    Some(Ok(l)) => stdout(&format!("{p}{}\n", l.line)),
                    Some(Err(e)) => {
                        return Err(format!("{label}: error: {}", crate::output::explain(&e)));
                    }
                    None => return Ok(()),
                }
            }
        }
    });
    let results = futures::future::join_all(streams).await;
    let failed: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    for f in &failed {
        output::stderr(f);
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "{} of {} nodes failed",
            failed.len(),
            targets.len()
        ))
    }
}

/// A resource as people and programs read it: metadata and the spec as structured data.
#[derive(Debug, serde::Serialize)]
struct ResourceView {
    namespace: String,
    #[serde(rename = "type")]
    type_: String,
    id: String,
    version: u64,
    owner: String,
    phase: String,
    #[serde(skip_serializing_if = "std::collections::HashMap::is_empty")]
    labels: std::collections::HashMap<String, String>,
    spec: serde_json::Value,
}

impl From<pb::Resource> for ResourceView {
    fn from(r: pb::Resource) -> Self {
        ResourceView {
            spec: serde_json::from_str(&r.spec_json)
                .unwrap_or(serde_json::Value::String(r.spec_json)),
            namespace: r.namespace,
            type_: r.r#type,
            id: r.id,
            version: r.version,
            owner: r.owner,
            phase: r.phase,
            labels: r.labels,
        }
    }
}

#[derive(Debug, serde::Serialize)]
struct ResourceList {
    resources: Vec<ResourceView>,
}

fn resource_row(r: &ResourceView) -> Vec<String> {
    vec![
        r.namespace.clone(),
        r.type_.clone(),
        r.id.clone(),
        r.version.to_string(),
        r.phase.clone(),
    ]
}

const RESOURCE_HEADERS: [&str; 5] = ["NAMESPACE", "TYPE", "ID", "VERSION", "PHASE"];

async fn get(
    targets: &[Target],
    resource: String,
    id: Option<String>,
    namespace: String,
    watch: bool,
    format: Format,
) -> anyhow::Result<()> {
    if watch {
        let req = pb::WatchRequest {
            r#type: resource,
            namespace,
            id: id.unwrap_or_default(),
            bootstrap: true,
        };
        let many = targets.len() > 1;
        if format == Format::Table {
            let mut h = if many { vec!["NODE"] } else { Vec::new() };
            h.push("EVENT");
            h.extend(RESOURCE_HEADERS);
            stdout(Table::new(&h).render().as_str());
        }
        let streams = targets.iter().map(|t| {
            let (t, req) = (t.clone(), req.clone());
            async move {
                let mut s = t
                    .client
                    .clone()
                    .watch(t.req(req))
                    .await
                    .map_err(|e| format!("{}: error: {}", t.label, crate::output::explain(&e)))?
                    .into_inner();
                while let Some(ev) = s.next().await {
                    let ev = ev.map_err(|e| {
                        format!("{}: error: {}", t.label, crate::output::explain(&e))
                    })?;
                    let Some(r) = ev.resource else {
                        continue;
                    };
                    let view = ResourceView::from(r);
                    match format {
                        Format::Table => {
                            let mut row = if many {
                                vec![t.label.clone()]
                            } else {
                                Vec::new()
                            };
                            row.push(ev.kind.clone());
                            row.extend(resource_row(&view));
                            // One line per event; columns are not aligned across events.
                            stdout(&format!("{}\n", row.join("   ")));
                        }
                        f => {
                            let mut doc = output::labelled(&t.label, &view);
                            doc["event"] = ev.kind.clone().into();
                            output::documents(f, &[doc]);
                        }
                    }
                }
                Ok::<(), String>(())
            }
        });
        let failed: Vec<String> = futures::future::join_all(streams)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        for f in &failed {
            output::stderr(f);
        }
        if !failed.is_empty() {
            anyhow::bail!("{} of {} nodes failed", failed.len(), targets.len());
        }
        return Ok(());
    }
    let r = client::each(targets, |t| {
        let (resource, id, namespace) = (resource.clone(), id.clone(), namespace.clone());
        async move {
            let mut c = t.client.clone();
            let resources = match id {
                Some(id) => vec![
                    c.get(t.req(pb::GetRequest {
                        r#type: resource,
                        id,
                        namespace,
                    }))
                    .await?
                    .into_inner(),
                ],
                None => {
                    c.list(t.req(pb::ListRequest {
                        r#type: resource,
                        namespace,
                    }))
                    .await?
                    .into_inner()
                    .resources
                }
            };
            Ok(ResourceList {
                resources: resources.into_iter().map(ResourceView::from).collect(),
            })
        }
    })
    .await;
    if format == Format::Table {
        return output::results(format, r, |l| {
            let mut t = Table::new(&RESOURCE_HEADERS);
            for v in &l.resources {
                t.row(resource_row(v));
            }
            t
        });
    }
    // YAML/JSON: one document per resource, as `kubectl get -o yaml` gives them.
    let mut failed = 0;
    let total = r.len();
    for (node, res) in r {
        match res {
            Ok(l) => {
                let docs: Vec<_> = l
                    .resources
                    .iter()
                    .map(|v| output::labelled(&node, v))
                    .collect();
                output::documents(format, &docs);
            }
            Err(s) => {
                failed += 1;
                output::stderr(&format!("{node}: error: {}", crate::output::explain(&s)));
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {total} nodes failed");
    }
    Ok(())
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
        assert_eq!(clock(0), "1970-01-01 00:00:00.000");
    }
}
