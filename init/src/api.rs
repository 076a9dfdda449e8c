//! The machine API server: init answers `basalt.machine.v1.Machine` on a unix socket (apid
//! carries it over the network). Every error becomes a gRPC status in [`ApiError`]'s one
//! `From` impl.

use std::path::Path;
use std::pin::Pin;

use basalt_api::machine as pb;
use basalt_api::machine::machine_server::{Machine, MachineServer};
use basalt_resources::{EventKind, Kind, Resource};
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::configstate::{ApplyError, ApplyMode};
use crate::node::{AcceptError, Accepted, End, Node};
use crate::sequence::SequenceError;
use basalt_containerd as containerd;
use basalt_supervisor::SupervisorError;
use basalt_supervisor::logring::Entry;

/// Everything the API can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Service(#[from] SupervisorError),
    #[error(transparent)]
    Sequence(#[from] SequenceError),
    #[error("unknown resource type {0:?}; known types: {1}")]
    UnknownType(String, String),
    #[error("no {kind} {id:?}")]
    NoResource { kind: String, id: String },
    #[error("no log {0:?}: known logs are {1}")]
    NoLog(String, String),
    #[error("containerd")]
    Containerd(#[source] tonic::Status),
    #[error(transparent)]
    Container(basalt_containerd::containers::ContainerError),
    #[error("{0}")]
    BadRequest(String),
    #[error("the config was rejected and nothing changed")]
    Install(#[source] crate::install::InstallFailed),
    #[error(transparent)]
    Upgrade(crate::upgrade::UpgradeError),
    #[error("fetching the bundle")]
    Fetch(#[source] crate::configurl::FetchError),
    #[error("ping: {0}")]
    Ping(std::io::Error),
    #[error(transparent)]
    Kube(#[from] basalt_kubernetes::KubeError),
    #[error("cannot read {what}")]
    Read {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("import")]
    Import(#[source] basalt_containerd::containers::ContainerError),
    #[error(
        "the archive is {} MiB and {path} has {} MiB free: an import needs twice the archive's size (its blobs, and the layers unpacked)",
        size >> 20,
        free >> 20
    )]
    NoSpace { size: u64, free: u64, path: String },
}

impl From<AcceptError> for ApiError {
    fn from(e: AcceptError) -> ApiError {
        match e {
            AcceptError::Apply(e) => ApiError::Apply(e),
            AcceptError::Install(e) => ApiError::Install(e),
            AcceptError::Sequence(e) => ApiError::Sequence(e),
            e @ AcceptError::Installing => ApiError::BadRequest(e.to_string()),
        }
    }
}

/// containerd says a full disk with `Unknown` and the OS's words: a client is told
/// `RESOURCE_EXHAUSTED` (what a full `/var` is), any other code passes as it came.
fn full_disk_or(code: tonic::Code, message: &str) -> tonic::Code {
    if message.contains("no space left on device") {
        tonic::Code::ResourceExhausted
    } else {
        code
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let msg = basalt_sys::error_chain(&e);
        match &e {
            ApiError::Apply(ApplyError::Invalid(_)) | ApiError::BadRequest(_) => {
                Status::invalid_argument(msg)
            }
            ApiError::Apply(ApplyError::NeedsReboot(_)) => Status::failed_precondition(msg),
            ApiError::Apply(ApplyError::Persist { .. }) | ApiError::Read { .. } => {
                Status::internal(msg)
            }
            ApiError::Service(SupervisorError::Unknown(_))
            | ApiError::UnknownType(..)
            | ApiError::NoResource { .. }
            | ApiError::NoLog(..) => Status::not_found(msg),
            ApiError::Service(SupervisorError::NotRunning(_)) => Status::failed_precondition(msg),
            ApiError::Service(SupervisorError::Gone(_)) | ApiError::Containerd(_) => {
                Status::unavailable(msg)
            }
            ApiError::Container(basalt_containerd::containers::ContainerError::Api {
                status,
                ..
            }) => Status::new(full_disk_or(status.code(), status.message()), msg),
            ApiError::Container(_) => Status::failed_precondition(msg),
            ApiError::Import(e) => {
                use basalt_containerd::containers::ContainerError as C;
                match e {
                    C::Api { status, .. } => {
                        Status::new(full_disk_or(status.code(), status.message()), msg)
                    }
                    C::Read { .. } => Status::internal(msg),
                    C::Archive(_) | C::Image(..) | C::Layout { .. } => {
                        Status::invalid_argument(msg)
                    }
                }
            }
            ApiError::NoSpace { .. } => Status::resource_exhausted(msg),
            ApiError::Install(_) => Status::failed_precondition(msg),
            ApiError::Upgrade(e) => {
                use crate::upgrade::UpgradeError as U;
                match e {
                    U::Bundle(_) | U::Arch { .. } => Status::invalid_argument(msg),
                    U::Io { .. } => Status::internal(msg),
                    _ => Status::failed_precondition(msg),
                }
            }
            ApiError::Ping(_) => Status::unavailable(msg),
            ApiError::Fetch(e) => {
                use crate::configurl::FetchError as F;
                match e {
                    F::TooLarge { .. } => Status::resource_exhausted(msg),
                    F::Write { .. } => Status::internal(msg),
                    F::Scheme { .. }
                    | F::NoHost { .. }
                    | F::UnknownVariable { .. }
                    | F::VariableInHost { .. }
                    | F::Url { .. }
                    | F::NoCa { .. } => Status::invalid_argument(msg),
                    _ => Status::unavailable(msg),
                }
            }
            ApiError::Kube(k) => {
                use basalt_kubernetes::KubeError as K;
                match k {
                    k if k.is_not_here() => Status::failed_precondition(msg),
                    K::Drain(_) => Status::failed_precondition(msg),
                    K::EtcdHasData(_) | K::ClusterExists { .. } => Status::already_exists(msg),
                    _ => Status::unavailable(msg),
                }
            }
            ApiError::Sequence(SequenceError::Busy { .. }) => Status::aborted(msg),
            ApiError::Sequence(SequenceError::Failed { .. }) => Status::internal(msg),
        }
    }
}

/// The sequence an upgrade reboots with (drain, then reboot): `Sequence/upgrade` tells a
/// client whether its drain failed.
pub const UPGRADE_SEQUENCE: &str = "upgrade";

type Result<T> = std::result::Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send>>;

/// The most one message of an image import may carry.
const IMPORT_CHUNK: usize = 4 << 20;
/// The namespace images are imported into unless a request names one: the kubelet's.
const IMPORT_NAMESPACE: &str = "k8s.io";

/// Where the shim writes a run's output before the API returns it.
const RUN_IO_DIR: &str = "/var/run/basalt/containers";

/// Resource kinds that exist from boot, so `get`/`watch` work before the first one is written.
const KNOWN: &[(&str, &str)] = &[
    ("runtime", "Service"),
    ("runtime", "Sequence"),
    ("runtime", "VolumeStatus"),
    ("config", "MachineConfig"),
    ("network", "LinkStatus"),
    ("network", "AddressStatus"),
    ("network", "RouteStatus"),
    ("network", "RuleStatus"),
    ("kubespan", "KubeSpanIdentity"),
    ("kubespan", "KubeSpanPeerSpec"),
    ("kubespan", "KubeSpanPeerStatus"),
    ("network", "LinkSpec"),
    ("network", "AddressSpec"),
    ("network", "RouteSpec"),
    ("network", "HostnameStatus"),
    ("network", "ResolverStatus"),
    ("network", "TimeServerStatus"),
    ("time", "TimeStatus"),
];

/// The API over a [`Node`].
#[derive(Debug, Clone)]
pub struct Api {
    node: Node,
    containerd_socket: std::path::PathBuf,
}

impl Api {
    pub fn new(node: Node, containerd_socket: &Path) -> Self {
        Api {
            node,
            containerd_socket: containerd_socket.to_path_buf(),
        }
    }

    pub fn into_server(self) -> MachineServer<Api> {
        MachineServer::new(self)
    }

    /// The netlink operations networkd would run for the config `text` (already validated),
    /// against the kernel as it is now.
    async fn network_plan(&self, text: &str) -> (Vec<String>, Vec<String>) {
        let Ok(c) = basalt_config::Config::parse(text, self.node.config.mode()) else {
            return (Vec::new(), Vec::new());
        };
        let specs = basalt_networkd::sources::from_config(&c);
        let desired = basalt_networkd::merge::desired_if(
            &self.node.store,
            "config",
            basalt_networkd::Layer::Config,
            &specs,
        );
        match basalt_networkd::apply::plan_now(&desired).await {
            Ok(p) => (p.ops.iter().map(ToString::to_string).collect(), p.waiting),
            Err(e) => (
                Vec::new(),
                vec![format!("no plan: {}", basalt_sys::error_chain(&e))],
            ),
        }
    }

    /// Finds a kind by a user's word for it: type name, plural, or short form, any case.
    fn kind(&self, word: &str, namespace: &str) -> std::result::Result<Kind, ApiError> {
        let w = word.to_ascii_lowercase();
        let w = match w.as_str() {
            "svc" | "services" => "service".to_string(),
            "mc" | "machineconfigs" | "config" => "machineconfig".to_string(),
            "seq" | "sequences" => "sequence".to_string(),
            "link" | "links" | "linkstatuses" => "linkstatus".to_string(),
            "address" | "addresses" | "addr" => "addressstatus".to_string(),
            "route" | "routes" => "routestatus".to_string(),
            "rule" | "rules" => "rulestatus".to_string(),
            _ => w,
        };
        let mut kinds: Vec<Kind> = KNOWN
            .iter()
            .map(|(ns, t)| Kind {
                namespace: ns.to_string(),
                type_: t.to_string(),
            })
            .collect();
        kinds.extend(self.node.store.kinds());
        let known = kinds
            .iter()
            .map(|k| k.type_.to_ascii_lowercase())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
            .join(", ");
        kinds
            .into_iter()
            .filter(|k| namespace.is_empty() || k.namespace == namespace)
            .find(|k| names_type(&k.type_, &w))
            .ok_or_else(|| ApiError::UnknownType(word.to_string(), known))
    }

    fn resource(r: &Resource, redact: bool) -> pb::Resource {
        let mut spec = r.spec.to_json();
        if redact {
            redact_secrets(&r.metadata.type_, &r.metadata.id, &mut spec);
        }
        pb::Resource {
            namespace: r.metadata.namespace.clone(),
            r#type: r.metadata.type_.clone(),
            id: r.metadata.id.clone(),
            version: r.metadata.version,
            owner: r.metadata.owner.clone(),
            phase: serde_json::to_value(r.metadata.phase)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            spec_json: spec.to_string(),
            labels: r.metadata.labels.clone().into_iter().collect(),
        }
    }

    fn containerd(&self) -> containerd::Client {
        containerd::Client::new(&self.containerd_socket)
    }

    /// Fetches the bundle the upgrade's first message names by URL into `path` (at most
    /// `limit` bytes), checking its sha256 when one is given.
    async fn fetch_bundle(
        &self,
        first: &pb::UpgradeRequest,
        path: &std::path::Path,
        limit: u64,
    ) -> std::result::Result<(), ApiError> {
        let tls = if first.url.starts_with("https://") {
            if first.url_ca_pem.trim().is_empty() {
                return Err(ApiError::BadRequest(format!(
                    "{}: an https URL needs url_ca_pem, the CA its server is checked against (the node has no public CA bundle)",
                    first.url
                )));
            }
            Some(
                basalt_api::tls::web_client_config(&first.url_ca_pem).map_err(|e| {
                    ApiError::BadRequest(format!("url_ca_pem: {}", basalt_sys::error_chain(&e)))
                })?,
            )
        } else {
            None
        };
        let fetcher = crate::configurl::Fetcher::with_tls(
            &first.url,
            tls,
            crate::configurl::node_facts(self.node.store.clone()),
        )
        .map_err(ApiError::Fetch)?;
        tracing::info!(url = %first.url, "upgrade: fetching the bundle");
        let (size, digest) = fetcher
            .download(path, limit)
            .await
            .map_err(ApiError::Fetch)?;
        let got: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let want = first.sha256.trim().to_ascii_lowercase();
        if !want.is_empty() && got != want {
            let _ = tokio::fs::remove_file(path).await;
            return Err(ApiError::BadRequest(format!(
                "{}: the bundle's sha256 is {got}, not the {want} asked for; nothing was written",
                first.url
            )));
        }
        tracing::info!(
            bytes = size,
            url = %first.url,
            sha256 = %got,
            "upgrade: fetched the bundle"
        );
        Ok(())
    }

    fn sequence(&self, name: &str, end: End) -> Result<pb::SequenceResponse> {
        self.node
            .spawn_sequence(name, self.node.shutdown_steps(end))
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::SequenceResponse {
            sequence: name.to_string(),
            summary: format!("{name} sequence started"),
        }))
    }
}

/// An upgrade's I/O error on `what`.
fn upgrade_io(what: String) -> impl FnOnce(std::io::Error) -> ApiError {
    move |source| ApiError::Upgrade(crate::upgrade::UpgradeError::Io { what, source })
}

/// Receives a streamed bundle of `size` bytes (its first message is `first`) whole into
/// `path`, before anything is checked or written.
async fn receive_bundle(
    s: &mut tonic::Streaming<pb::UpgradeRequest>,
    first: pb::UpgradeRequest,
    path: &std::path::Path,
    size: u64,
) -> std::result::Result<(), Status> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(upgrade_io(format!("create {}", path.display())))?;
    let mut seen = 0u64;
    let mut msg = Some(first);
    while let Some(m) = msg {
        if m.data.len() > IMPORT_CHUNK {
            return Err(ApiError::BadRequest(format!(
                "a chunk of {} bytes: at most {IMPORT_CHUNK} a message",
                m.data.len()
            ))
            .into());
        }
        seen += m.data.len() as u64;
        if seen > size {
            return Err(ApiError::BadRequest(format!(
                "more than the {size} bytes the first message gave as the bundle's size"
            ))
            .into());
        }
        tokio::io::AsyncWriteExt::write_all(&mut file, &m.data)
            .await
            .map_err(upgrade_io(format!("write {}", path.display())))?;
        msg = s.message().await?;
    }
    if seen != size {
        return Err(ApiError::Upgrade(crate::upgrade::UpgradeError::Bundle(
            basalt_disk::bundle::BundleError::Truncated(format!(
                "the stream: {seen} of {size} bytes arrived"
            )),
        ))
        .into());
    }
    file.sync_all()
        .await
        .map_err(upgrade_io(format!("sync {}", path.display())))?;
    Ok(())
}

fn line(e: Entry) -> pb::LogLine {
    pb::LogLine {
        time_ms: e.time_ms,
        line: e.line,
    }
}

/// The kernel log as lines, from `/dev/kmsg` (non-blocking: what is there now).
fn read_kmsg() -> std::io::Result<Vec<pb::LogLine>> {
    Ok(basalt_sys::kmsg::records()?
        .into_iter()
        .map(|(time_ms, line)| pb::LogLine { time_ms, line })
        .collect())
}

#[tonic::async_trait]
impl Machine for Api {
    async fn version(&self, _: Request<pb::VersionRequest>) -> Result<pb::VersionResponse> {
        let uname = nix::sys::utsname::uname().ok();
        Ok(Response::new(pb::VersionResponse {
            tag: crate::sysinfo::os_version(Path::new("/etc/os-release")),
            arch: std::env::consts::ARCH.to_string(),
            kernel: uname
                .as_ref()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            mode: if self.node.config.active().is_some() {
                "running".into()
            } else {
                "maintenance".into()
            },
            hostname: uname
                .as_ref()
                .map(|u| u.nodename().to_string_lossy().into_owned())
                .unwrap_or_default(),
            uptime_seconds: self.node.booted.elapsed().as_secs(),
            slot: self
                .node
                .paths
                .upgrade
                .booted
                .map(|s| s.name().to_string())
                .unwrap_or_default(),
            slots: {
                let up = self.node.paths.upgrade.clone();
                tokio::task::spawn_blocking(move || up.slots())
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .map(|s| pb::SlotInfo {
                        name: s.slot.name().to_string(),
                        version: s.version,
                        state: s.state.to_string(),
                    })
                    .collect()
            },
        }))
    }

    async fn apply_configuration(
        &self,
        req: Request<pb::ApplyConfigurationRequest>,
    ) -> Result<pb::ApplyConfigurationResponse> {
        let r = req.into_inner();
        let text = String::from_utf8(r.data)
            .map_err(|_| ApiError::BadRequest("the config is not UTF-8 text".into()))?;
        let mode = match pb::ApplyMode::try_from(r.mode) {
            Ok(pb::ApplyMode::NoReboot) => ApplyMode::NoReboot,
            Ok(pb::ApplyMode::Staged) => ApplyMode::Staged,
            Ok(pb::ApplyMode::Reboot) => ApplyMode::Reboot,
            Ok(pb::ApplyMode::Try) => ApplyMode::Try(std::time::Duration::from_secs(
                if r.try_timeout_seconds == 0 {
                    60
                } else {
                    u64::from(r.try_timeout_seconds)
                },
            )),
            Err(_) => {
                return Err(ApiError::BadRequest(format!("unknown apply mode {}", r.mode)).into());
            }
        };
        // Off the runtime's threads: parsing is bounded by the reader's limits (size, nodes,
        // depth, documents), but a config of the limit's size still takes a moment, and the
        // API and the controllers must not wait behind it.
        let (node, t, dry) = (self.node.clone(), text.clone(), r.dry_run);
        let out = match tokio::task::spawn_blocking(move || node.accept_config(&t, mode, dry))
            .await
            .map_err(|e| ApiError::BadRequest(format!("the config's parse stopped: {e}")))?
            .map_err(ApiError::from)?
        {
            Accepted::Installing(summary) => {
                return Ok(Response::new(pb::ApplyConfigurationResponse {
                    summary,
                    ..Default::default()
                }));
            }
            Accepted::Applied(out) => out,
        };
        let (network_plan, network_waiting) = if r.dry_run {
            self.network_plan(&text).await
        } else {
            (Vec::new(), Vec::new())
        };
        Ok(Response::new(pb::ApplyConfigurationResponse {
            summary: out.summary,
            config_diff: out.config_diff,
            resource_changes: out.resource_changes,
            needs_reboot: out.needs_reboot,
            network_plan,
            network_waiting,
        }))
    }

    async fn service_list(
        &self,
        _: Request<pb::ServiceListRequest>,
    ) -> Result<pb::ServiceListResponse> {
        let services = self
            .node
            .store
            .list::<basalt_supervisor::ServiceStatus>()
            .into_iter()
            .map(|(m, s)| pb::ServiceInfo {
                id: m.id,
                state: s.state.to_string(),
                health: match s.health {
                    basalt_supervisor::HealthState::None => String::new(),
                    h => serde_json::to_value(h)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                },
                message: s.message,
                pid: s.pid,
                restarts: s.restarts,
                events: s
                    .events
                    .into_iter()
                    .map(|e| pb::ServiceEvent {
                        state: e.state.to_string(),
                        message: e.message,
                        time_ms: e.time_ms,
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::ServiceListResponse { services }))
    }

    async fn service_start(&self, req: Request<pb::ServiceRequest>) -> Result<pb::ServiceResponse> {
        let id = req.into_inner().id;
        self.node.sup.start(&id).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::ServiceResponse {
            summary: format!("service {id} started"),
        }))
    }

    async fn service_stop(&self, req: Request<pb::ServiceRequest>) -> Result<pb::ServiceResponse> {
        let id = req.into_inner().id;
        self.node.sup.stop(&id).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::ServiceResponse {
            summary: format!("service {id} stopped"),
        }))
    }

    async fn service_restart(
        &self,
        req: Request<pb::ServiceRequest>,
    ) -> Result<pb::ServiceResponse> {
        let id = req.into_inner().id;
        self.node.sup.restart(&id).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::ServiceResponse {
            summary: format!("service {id} restarted"),
        }))
    }

    async fn service_kill(
        &self,
        req: Request<pb::ServiceKillRequest>,
    ) -> Result<pb::ServiceResponse> {
        let r = req.into_inner();
        let name = if r.signal.is_empty() {
            "SIGKILL".to_string()
        } else {
            r.signal.to_ascii_uppercase()
        };
        let name = if name.starts_with("SIG") {
            name
        } else {
            format!("SIG{name}")
        };
        let sig: nix::sys::signal::Signal = name
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("unknown signal {:?}", r.signal)))?;
        let pid = self.node.sup.signal(&r.id, sig).map_err(ApiError::from)?;
        Ok(Response::new(pb::ServiceResponse {
            summary: format!("{sig} sent to service {} (pid {pid})", r.id),
        }))
    }

    type LogsStream = BoxStream<pb::LogLine>;

    async fn logs(&self, req: Request<pb::LogsRequest>) -> Result<Self::LogsStream> {
        let r = req.into_inner();
        let ring = self
            .node
            .logs
            .get(&r.id)
            .ok_or_else(|| ApiError::NoLog(r.id.clone(), self.node.logs.ids().join(", ")))?;
        let n = r.tail_lines as usize;
        if !r.follow {
            let lines: Vec<_> = ring.tail(n).into_iter().map(|e| Ok(line(e))).collect();
            return Ok(Response::new(Box::pin(futures::stream::iter(lines))));
        }
        let (snapshot, rx) = ring.follow(n);
        let head = futures::stream::iter(snapshot.into_iter().map(|e| Ok(line(e))));
        let tail = futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(e) => Some((Ok(line(e)), rx)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let note = pb::LogLine {
                        time_ms: basalt_supervisor::logring::now_ms(),
                        line: format!("[{n} lines dropped: the reader fell behind]"),
                    };
                    Some((Ok(note), rx))
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
            }
        });
        Ok(Response::new(Box::pin(futures::StreamExt::chain(
            head, tail,
        ))))
    }

    type DmesgStream = BoxStream<pb::LogLine>;

    async fn dmesg(&self, req: Request<pb::DmesgRequest>) -> Result<Self::DmesgStream> {
        let r = req.into_inner();
        let mut lines = read_kmsg().map_err(|source| ApiError::Read {
            what: "/dev/kmsg".into(),
            source,
        })?;
        if r.tail_lines > 0 {
            let skip = lines.len().saturating_sub(r.tail_lines as usize);
            lines.drain(..skip);
        }
        let seen = lines.len();
        let head = futures::stream::iter(lines.into_iter().map(Ok));
        if !r.follow {
            return Ok(Response::new(Box::pin(head)));
        }
        // Follow by polling: new records are those past the count already sent.
        let tail = futures::stream::unfold(
            (seen, std::collections::VecDeque::new()),
            |(mut seen, mut queue)| async move {
                loop {
                    if let Some(l) = queue.pop_front() {
                        return Some((Ok(l), (seen, queue)));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    let all = read_kmsg().unwrap_or_default();
                    if all.len() > seen {
                        queue.extend(all.into_iter().skip(seen));
                        seen += queue.len();
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(futures::StreamExt::chain(
            head, tail,
        ))))
    }

    async fn reboot(&self, _: Request<pb::RebootRequest>) -> Result<pb::SequenceResponse> {
        self.sequence("reboot", End::Reboot)
    }

    async fn shutdown(&self, _: Request<pb::ShutdownRequest>) -> Result<pb::SequenceResponse> {
        self.sequence("shutdown", End::PowerOff)
    }

    async fn upgrade(
        &self,
        req: Request<tonic::Streaming<pb::UpgradeRequest>>,
    ) -> Result<pb::UpgradeResponse> {
        let up = self.node.paths.upgrade.clone();
        up.check_installed().map_err(ApiError::Upgrade)?;
        let mut s = req.into_inner();
        let first = s.message().await?.ok_or_else(|| {
            ApiError::BadRequest(
                "the upgrade stream is empty: its first message gives the bundle's size".into(),
            )
        })?;
        let size = first.size;
        let (stage, allow_downgrade, trial) = (
            first.stage,
            first.allow_downgrade,
            first.trial_timeout_seconds,
        );
        let path = up.bundle_path();
        let dir = path.parent().unwrap_or(std::path::Path::new("/"));
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(upgrade_io(format!("make {}", dir.display())))?;
        let free = nix::sys::statvfs::statvfs(dir)
            .map(|v| v.blocks_available().saturating_mul(v.fragment_size()))
            .unwrap_or(u64::MAX);
        if first.url.is_empty() {
            if size == 0 || size > crate::upgrade::MAX_BUNDLE {
                return Err(ApiError::BadRequest(format!(
                    "the first message gives the bundle's size as {size} bytes: it must be between 1 and {} MiB",
                    crate::upgrade::MAX_BUNDLE >> 20
                ))
                .into());
            }
            if size > free {
                return Err(ApiError::NoSpace {
                    size,
                    free,
                    path: dir.display().to_string(),
                }
                .into());
            }
            receive_bundle(&mut s, first, &path, size).await?;
        } else {
            if !first.data.is_empty() || s.message().await?.is_some() {
                return Err(ApiError::BadRequest(
                    "an upgrade from a url carries no data: the node fetches the bundle itself"
                        .into(),
                )
                .into());
            }
            self.fetch_bundle(&first, &path, free.min(crate::upgrade::MAX_BUNDLE))
                .await?;
        }
        let timeout = match trial {
            0 => crate::upgrade::DEFAULT_TRIAL_TIMEOUT,
            t => std::time::Duration::from_secs(u64::from(t)),
        };
        let bundle = path.clone();
        let done = tokio::task::spawn_blocking(move || up.apply(&bundle, allow_downgrade, timeout))
            .await
            .map_err(|e| ApiError::BadRequest(format!("the upgrade panicked: {e}")))?;
        let _ = tokio::fs::remove_file(&path).await;
        let u = done.map_err(ApiError::Upgrade)?;
        tracing::info!(
            "upgrade: slot {} holds {} (from {}); it boots next, on trial",
            u.slot,
            u.to,
            u.from
        );
        let summary = if stage {
            format!(
                "slot {} holds {}: it boots next, on trial, at the next reboot",
                u.slot, u.to
            )
        } else {
            self.node
                .spawn_sequence(UPGRADE_SEQUENCE, self.node.upgrade_steps())
                .map_err(ApiError::from)?;
            format!(
                "slot {} holds {}: draining the node, then rebooting into it, on trial (the node goes back to {} unless it comes up healthy)",
                u.slot, u.to, u.from
            )
        };
        Ok(Response::new(pb::UpgradeResponse {
            slot: u.slot.name().to_string(),
            from_version: u.from,
            to_version: u.to,
            summary,
        }))
    }

    async fn rollback(&self, _: Request<pb::RollbackRequest>) -> Result<pb::SequenceResponse> {
        let up = self.node.paths.upgrade.clone();
        let (slot, version) = tokio::task::spawn_blocking(move || up.rollback())
            .await
            .map_err(|e| ApiError::BadRequest(format!("the rollback panicked: {e}")))?
            .map_err(ApiError::Upgrade)?;
        tracing::info!("rollback: slot {slot} ({version}) boots from now on; rebooting");
        let mut r = self.sequence("reboot", End::Reboot)?;
        r.get_mut().summary = format!("slot {slot} ({version}) boots from now on; rebooting");
        Ok(r)
    }

    async fn reset(&self, req: Request<pb::ResetRequest>) -> Result<pb::SequenceResponse> {
        let r = req.into_inner();
        let wipe = crate::node::Wipe::from_names(&r.wipe)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let name = "reset";
        self.node
            .spawn_sequence(name, self.node.reset_steps(r.graceful, wipe))
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::SequenceResponse {
            sequence: name.to_string(),
            summary: format!(
                "{name} sequence started (wiping {})",
                match (wipe.state, wipe.ephemeral) {
                    (true, true) => "STATE and EPHEMERAL",
                    (true, false) => "STATE",
                    _ => "EPHEMERAL",
                }
            ),
        }))
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<pb::Resource> {
        let redact = !is_admin(&req);
        let r = req.into_inner();
        let kind = self.kind(&r.r#type, &r.namespace)?;
        let res = self
            .node
            .store
            .get_dyn(&kind, &r.id)
            .ok_or_else(|| ApiError::NoResource {
                kind: kind.type_.clone(),
                id: r.id.clone(),
            })?;
        Ok(Response::new(Self::resource(&res, redact)))
    }

    async fn list(&self, req: Request<pb::ListRequest>) -> Result<pb::ListResponse> {
        let redact = !is_admin(&req);
        let r = req.into_inner();
        let kind = self.kind(&r.r#type, &r.namespace)?;
        let resources = self
            .node
            .store
            .list_dyn(&kind)
            .iter()
            .map(|r| Self::resource(r, redact))
            .collect();
        Ok(Response::new(pb::ListResponse { resources }))
    }

    type WatchStream = BoxStream<pb::WatchEvent>;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Self::WatchStream> {
        let redact = !is_admin(&req);
        let r = req.into_inner();
        let kind = self.kind(&r.r#type, &r.namespace)?;
        let since = if r.bootstrap {
            None
        } else {
            Some(self.node.store.revision())
        };
        let w = if r.id.is_empty() {
            self.node.store.watch_kind(kind, since)
        } else {
            self.node.store.watch_id(kind, &r.id, since)
        };
        let s = futures::stream::unfold(w, move |mut w| async move {
            match w.next().await {
                Ok(ev) => {
                    let kind = match ev.kind {
                        EventKind::Created => "created",
                        EventKind::Updated => "updated",
                        EventKind::Destroyed => "destroyed",
                        EventKind::Bookmark => "bootstrapped",
                    };
                    let item = pb::WatchEvent {
                        kind: kind.into(),
                        resource: ev.resource.as_deref().map(|r| Api::resource(r, redact)),
                    };
                    Some((Ok(item), w))
                }
                Err(e) => Some((Err(Status::data_loss(e.to_string())), w)),
            }
        });
        Ok(Response::new(Box::pin(s)))
    }

    async fn containers(
        &self,
        req: Request<pb::ContainersRequest>,
    ) -> Result<pb::ContainersResponse> {
        let ns = req.into_inner().namespace;
        let c = self.containerd();
        let namespaces = if ns.is_empty() {
            c.namespaces().await.map_err(ApiError::Containerd)?
        } else {
            vec![ns]
        };
        let mut out = Vec::new();
        for ns in namespaces {
            let tasks = c.tasks(&ns).await.map_err(ApiError::Containerd)?;
            for ct in c.containers(&ns).await.map_err(ApiError::Containerd)? {
                let task = tasks.iter().find(|t| t.container_id == ct.id);
                out.push(pb::ContainerInfo {
                    namespace: ns.clone(),
                    id: ct.id.clone(),
                    image: ct.image,
                    status: task
                        .map(|t| containerd::task_status(t.status).to_string())
                        .unwrap_or_else(|| "no task".into()),
                    pid: task.map(|t| t.pid).unwrap_or(0),
                });
            }
        }
        Ok(Response::new(pb::ContainersResponse { containers: out }))
    }

    async fn images(&self, req: Request<pb::ImagesRequest>) -> Result<pb::ImagesResponse> {
        let ns = req.into_inner().namespace;
        let c = self.containerd();
        let namespaces = if ns.is_empty() {
            c.namespaces().await.map_err(ApiError::Containerd)?
        } else {
            vec![ns]
        };
        let mut images = Vec::new();
        for ns in namespaces {
            let cn = c.in_namespace(&ns);
            for i in c.images(&ns).await.map_err(ApiError::Containerd)? {
                let t = i.target.unwrap_or_default();
                // An image whose manifest is unreadable is still listed, without an ID.
                let id = cn.image_id(&t.digest).await.unwrap_or_default();
                images.push(pb::ImageInfo {
                    namespace: ns.clone(),
                    name: i.name,
                    digest: t.digest,
                    size: t.size,
                    id,
                });
            }
        }
        Ok(Response::new(pb::ImagesResponse { images }))
    }

    async fn image_import(
        &self,
        req: Request<tonic::Streaming<pb::ImageImportRequest>>,
    ) -> Result<pb::ImageImportResponse> {
        use futures::StreamExt as _;
        let mut s = req.into_inner();
        let first = s.message().await?.ok_or_else(|| {
            ApiError::BadRequest(
                "the import stream is empty: its first message gives the archive's size".into(),
            )
        })?;
        let size = u64::try_from(first.size)
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "the first message gives the archive's size as {}: it must be the size in bytes",
                    first.size
                ))
            })?;
        // Refused before anything is written: the blobs, then the layers unpacked.
        let root = basalt_containerd::ROOT;
        let free = nix::sys::statvfs::statvfs(root)
            .map(|v| v.blocks_available().saturating_mul(v.fragment_size()))
            .map_err(|e| ApiError::Read {
                what: format!("the free space of {root}"),
                source: e.into(),
            })?;
        if size.saturating_mul(2) > free {
            return Err(ApiError::NoSpace {
                size,
                free,
                path: root.into(),
            }
            .into());
        }
        let ns = if first.namespace.is_empty() {
            IMPORT_NAMESPACE.to_string()
        } else {
            first.namespace
        };
        let chunks = futures::stream::once(async move { Ok(first.data) })
            .chain(s.map(|m| m.map(|m| m.data)))
            .scan(0u64, move |seen, m| {
                let item = m
                    .map_err(|st| std::io::Error::other(format!("the client's stream: {}", st.message())))
                    .and_then(|data| {
                        *seen += data.len() as u64;
                        if data.len() > IMPORT_CHUNK {
                            Err(std::io::Error::other(format!(
                                "a chunk of {} bytes: at most {IMPORT_CHUNK} a message",
                                data.len()
                            )))
                        } else if *seen > size {
                            Err(std::io::Error::other(format!(
                                "more than the {size} bytes the first message gave as the archive's size"
                            )))
                        } else {
                            Ok(bytes::Bytes::from(data))
                        }
                    });
                futures::future::ready(Some(item))
            });
        let reader = tokio_util::io::StreamReader::new(Box::pin(chunks));
        let out = self
            .containerd()
            .in_namespace(&ns)
            .import_archive(reader)
            .await
            .map_err(ApiError::Import)?;
        Ok(Response::new(pb::ImageImportResponse {
            images: out
                .into_iter()
                .map(|i| pb::ImportedImage {
                    name: i.name,
                    digest: i.digest,
                    id: i.id,
                    outcome: i.outcome.as_str().into(),
                })
                .collect(),
        }))
    }

    async fn image_remove(
        &self,
        req: Request<pb::ImageRemoveRequest>,
    ) -> Result<pb::ImageRemoveResponse> {
        let r = req.into_inner();
        if r.names.is_empty() {
            return Err(ApiError::BadRequest("no image names given".into()).into());
        }
        let ns = if r.namespace.is_empty() {
            IMPORT_NAMESPACE
        } else {
            &r.namespace
        };
        self.containerd()
            .in_namespace(ns)
            .remove_images(&r.names)
            .await
            .map_err(ApiError::Container)?;
        Ok(Response::new(pb::ImageRemoveResponse {}))
    }

    async fn image_pull(
        &self,
        req: Request<pb::ImagePullRequest>,
    ) -> Result<pb::ImagePullResponse> {
        let image = req.into_inner().image;
        if image.trim().is_empty() {
            return Err(ApiError::BadRequest("no image given".into()).into());
        }
        let id = self
            .containerd()
            .pull(&image)
            .await
            .map_err(|s| match s.code() {
                // The CRI's answer names the registry's reason; a node without the CRI (no
                // Kubernetes) has no such service.
                tonic::Code::Unimplemented => Status::failed_precondition(format!(
                    "this node pulls no images: its containerd runs no CRI (not a Kubernetes node): {}",
                    s.message()
                )),
                _ => s,
            })?;
        Ok(Response::new(pb::ImagePullResponse { id }))
    }

    async fn run_container(
        &self,
        req: Request<pb::RunContainerRequest>,
    ) -> Result<pb::RunContainerResponse> {
        let r = req.into_inner();
        if r.image.is_empty() {
            return Err(ApiError::BadRequest("no image given".into()).into());
        }
        let id = if r.id.is_empty() {
            format!("run-{}", basalt_supervisor::logring::now_ms())
        } else {
            r.id
        };
        let out = basalt_containerd::containers::run(
            &self.containerd(),
            &r.image,
            &r.args,
            &id,
            Path::new(RUN_IO_DIR),
            r.remove,
        )
        .await
        .map_err(ApiError::Container)?;
        Ok(Response::new(pb::RunContainerResponse {
            id,
            exit_code: out.exit_code,
            stdout: out.stdout,
            stderr: out.stderr,
        }))
    }

    async fn memory(&self, _: Request<pb::MemoryRequest>) -> Result<pb::MemoryResponse> {
        let text = std::fs::read_to_string("/proc/meminfo").map_err(|source| ApiError::Read {
            what: "/proc/meminfo".into(),
            source,
        })?;
        Ok(Response::new(pb::MemoryResponse {
            meminfo_kib: crate::sysinfo::meminfo(&text).into_iter().collect(),
        }))
    }

    async fn processes(&self, _: Request<pb::ProcessesRequest>) -> Result<pb::ProcessesResponse> {
        Ok(Response::new(pb::ProcessesResponse {
            processes: crate::sysinfo::processes(Path::new("/proc")),
        }))
    }

    async fn mounts(&self, _: Request<pb::MountsRequest>) -> Result<pb::MountsResponse> {
        let text =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| ApiError::Read {
                what: "/proc/self/mountinfo".into(),
                source,
            })?;
        Ok(Response::new(pb::MountsResponse {
            mounts: crate::sysinfo::mounts(&text),
        }))
    }

    async fn disks(&self, _: Request<pb::DisksRequest>) -> Result<pb::DisksResponse> {
        Ok(Response::new(pb::DisksResponse {
            disks: crate::sysinfo::disks(Path::new("/sys/class/block")),
        }))
    }

    async fn bootstrap(&self, _: Request<pb::BootstrapRequest>) -> Result<pb::BootstrapResponse> {
        let message = self
            .node
            .kube
            .bootstrap(&self.node.sup)
            .await
            .map_err(ApiError::Kube)?;
        Ok(Response::new(pb::BootstrapResponse { message }))
    }

    async fn etcd_members(
        &self,
        _: Request<pb::EtcdMembersRequest>,
    ) -> Result<pb::EtcdMembersResponse> {
        let c = self.node.kube.local_etcd().map_err(ApiError::Kube)?;
        let etcd = |e: basalt_kubernetes::etcd::EtcdError| ApiError::Kube(e.into());
        let members = c.members().await.map_err(etcd)?;
        let (version, db, leader, me) = c.status().await.map_err(etcd)?;
        Ok(Response::new(pb::EtcdMembersResponse {
            members: members
                .into_iter()
                .map(|m| pb::EtcdMember {
                    id: m.id,
                    name: m.name,
                    peer_urls: m.peer_urls,
                    client_urls: m.client_urls,
                    learner: m.learner,
                })
                .collect(),
            self_id: me,
            leader_id: leader,
            version,
            db_size_bytes: db,
        }))
    }

    async fn etcd_leave(&self, _: Request<pb::EtcdLeaveRequest>) -> Result<pb::EtcdLeaveResponse> {
        let message = self
            .node
            .kube
            .leave(&self.node.sup)
            .await
            .map_err(ApiError::Kube)?;
        Ok(Response::new(pb::EtcdLeaveResponse { message }))
    }

    type EtcdSnapshotStream = BoxStream<pb::DataChunk>;

    async fn etcd_snapshot(
        &self,
        _: Request<pb::EtcdSnapshotRequest>,
    ) -> Result<Self::EtcdSnapshotStream> {
        let c = self.node.kube.local_etcd().map_err(ApiError::Kube)?;
        let data = c.snapshot().await.map_err(|e| ApiError::Kube(e.into()))?;
        let chunks: Vec<std::result::Result<pb::DataChunk, Status>> = data
            .chunks(1 << 20)
            .map(|c| Ok(pb::DataChunk { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn kubeconfig(
        &self,
        _: Request<pb::KubeconfigRequest>,
    ) -> Result<pb::KubeconfigResponse> {
        use basalt_kubernetes::KubeError;
        let cfg = (self.node.config.active()).ok_or(ApiError::Kube(KubeError::NoConfig))?;
        let text = basalt_kubernetes::pki::admin_kubeconfig(&cfg)
            .map_err(|e| ApiError::Kube(KubeError::Kubeconfig(e)))?;
        Ok(Response::new(pb::KubeconfigResponse {
            data: text.into_bytes(),
            cluster: cfg.cluster().name.to_string(),
        }))
    }

    async fn cluster_health(
        &self,
        _: Request<pb::ClusterHealthRequest>,
    ) -> Result<pb::ClusterHealthResponse> {
        let cfg = self.node.config.active();
        let checks = self
            .node
            .kube
            .health(cfg.as_deref())
            .await
            .map_err(ApiError::Kube)?;
        Ok(Response::new(pb::ClusterHealthResponse {
            checks: checks
                .into_iter()
                .map(|(name, ok, message)| pb::HealthCheck { name, ok, message })
                .collect(),
        }))
    }

    async fn ping(&self, req: Request<pb::PingRequest>) -> Result<pb::PingResponse> {
        let r = req.into_inner();
        let to: std::net::IpAddr = r.address.trim().parse().map_err(|_| {
            ApiError::BadRequest(format!(
                "address {:?} is not an IPv4 or IPv6 address",
                r.address
            ))
        })?;
        let bounded = |v: u32, default: u32, max: u32, what: &str| match v {
            0 => Ok(default),
            v if v <= max => Ok(v),
            v => Err(ApiError::BadRequest(format!(
                "{what} {v} is above the limit of {max}"
            ))),
        };
        let o = crate::ping::Options {
            count: bounded(r.count, 3, 100, "count")?,
            timeout: std::time::Duration::from_millis(
                bounded(r.timeout_ms, 1000, 10_000, "timeout_ms")?.into(),
            ),
            interval: std::time::Duration::from_millis(
                bounded(r.interval_ms, 200, 10_000, "interval_ms")?.into(),
            ),
        };
        let rtts = tokio::task::spawn_blocking(move || crate::ping::ping(to, &o))
            .await
            .map_err(|e| Status::internal(format!("ping task: {e}")))?
            .map_err(ApiError::Ping)?;
        Ok(Response::new(pb::PingResponse {
            address: to.to_string(),
            sent: u32::try_from(rtts.len()).unwrap_or(u32::MAX),
            replies: rtts
                .iter()
                .enumerate()
                .map(|(i, rtt)| pb::PingReply {
                    seq: u32::try_from(i + 1).unwrap_or(u32::MAX),
                    received: rtt.is_some(),
                    rtt_us: rtt.map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
                })
                .collect(),
        }))
    }
}

/// Serves the API on a unix socket until the task is dropped.
pub async fn serve(api: Api, socket: &Path) -> std::io::Result<()> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    }
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tonic::transport::Server::builder()
        .initial_stream_window_size(basalt_api::STREAM_WINDOW)
        .initial_connection_window_size(basalt_api::CONNECTION_WINDOW)
        .max_frame_size(basalt_api::MAX_FRAME)
        .add_service(api.into_server())
        .serve_with_incoming(incoming)
        .await
        .map_err(std::io::Error::other)
}

/// Whether `word` (lowercase) names the resource type `type_`: the type itself or its plural
/// (`linkstatuses`, `kubespanidentities`, `services`).
fn names_type(type_: &str, word: &str) -> bool {
    let t = type_.to_ascii_lowercase();
    let plural = match t.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None if t.ends_with('s') => format!("{t}es"),
        None => format!("{t}s"),
    };
    word == t || word == plural
}

#[cfg(test)]
mod tests;

/// Whether the caller is an admin. apid sets the role header on every call it passes on; a
/// call without one came straight to init's socket, which only root on the node can open.
fn is_admin<T>(req: &Request<T>) -> bool {
    req.metadata()
        .get(basalt_api::auth::ROLE_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|r| {
            basalt_api::auth::Role::from_organization(r) == Some(basalt_api::auth::Role::Admin)
        })
}

/// What non-admins see of secrets: the whole `Secrets` config document, and elsewhere every
/// field whose name says it holds a private key, secret or token.
pub(crate) fn redact_secrets(type_: &str, id: &str, spec: &mut serde_json::Value) {
    const REDACTED: &str = "(redacted)";
    fn all(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) => *s = REDACTED.into(),
            serde_json::Value::Array(a) => a.iter_mut().for_each(all),
            serde_json::Value::Object(o) => o.values_mut().for_each(all),
            _ => {}
        }
    }
    fn secret_name(k: &str) -> bool {
        let k = k.to_ascii_lowercase();
        !k.contains("public")
            && (k == "key"
                || k.ends_with("key")
                || k.contains("secret")
                || k.contains("token")
                || k.contains("password"))
    }
    fn fields(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Array(a) => a.iter_mut().for_each(fields),
            serde_json::Value::Object(o) => {
                for (k, v) in o.iter_mut() {
                    if secret_name(k) {
                        all(v);
                    } else {
                        fields(v);
                    }
                }
            }
            _ => {}
        }
    }
    use basalt_resources::Spec as _;
    if type_ == crate::configstate::ConfigDocument::TYPE && id == "Secrets" {
        all(spec);
    } else {
        fields(spec);
    }
}
