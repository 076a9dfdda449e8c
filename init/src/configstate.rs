//! The node's config lifecycle: none (maintenance mode) → applied through the API (validated
//! whole, persisted atomically, or staged, or tried with a timed revert) → reloaded at boot.
//!
//! The active config is published as the `ActiveConfig` resource, which the node's controllers
//! reconcile to, and as `MachineConfig` resources, one per document, which `osctl get
//! machineconfig` shows (redacted by role).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use basalt_config::resource::{ACTIVE_ID, ActiveConfig};
use basalt_config::v1alpha1::MachineType;
use basalt_config::{Config, ConfigError, Document, Mode};
use basalt_resources::{Kind, Store};
use serde::Serialize;

/// The config's directory on STATE.
pub const STATE_CONFIG_DIR: &str = "config";

/// Owner of the `MachineConfig` resources.
pub const OWNER: &str = "config";
/// The active config's file name in the config directory.
pub const ACTIVE: &str = "config.yaml";
const STAGED: &str = "config.staged.yaml";

/// One document of the active config (namespace `config`, id `Kind` or `Kind=name`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct ConfigDocument(pub serde_json::Value);

impl basalt_resources::Spec for ConfigDocument {
    const TYPE: &'static str = "MachineConfig";
    const NAMESPACE: &'static str = "config";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    NoReboot,
    Staged,
    Try(Duration),
    Reboot,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("the config was rejected and nothing changed")]
    Invalid(#[source] ConfigError),
    #[error(
        "these changes cannot apply while the node runs: {}; apply with --mode staged or --mode reboot",
        .0.join("; ")
    )]
    NeedsReboot(Vec<String>),
    #[error("cannot write {path}")]
    Persist {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What an apply did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub summary: String,
    pub config_diff: String,
    pub resource_changes: Vec<String>,
    pub needs_reboot: Vec<String>,
    /// The caller must run the reboot sequence.
    pub reboot: bool,
}

#[derive(Debug, Clone)]
struct Active {
    config: Arc<Config>,
    persisted: bool,
}

#[derive(Debug, Default)]
struct Inner {
    active: Option<Active>,
    /// A `try` apply waiting for confirmation: the timer and what to go back to.
    pending_try: Option<(tokio::task::JoinHandle<()>, Option<Active>)>,
    /// Configs activated since boot (the `ActiveConfig` resource's generation).
    generation: u64,
}

/// The config of this node.
#[derive(Debug, Clone)]
pub struct ConfigState {
    dir: PathBuf,
    mode: Mode,
    store: Store,
    inner: Arc<Mutex<Inner>>,
}

pub use basalt_sys::fs::atomic_write;

fn doc_id(d: &Document) -> String {
    let json = d.to_json();
    match json.get("name").and_then(|n| n.as_str()) {
        Some(name) if Document::kind_is_named(d.kind()) => format!("{}={name}", d.kind()),
        _ => d.kind().to_string(),
    }
}

fn documents(c: Option<&Config>) -> BTreeMap<String, serde_json::Value> {
    c.map(|c| c.documents().map(|d| (doc_id(d), d.to_json())).collect())
        .unwrap_or_default()
}

/// Fields that cannot change while the node runs, each with why.
pub fn needs_reboot(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if old.machine().machine_type != new.machine().machine_type {
        out.push("MachineConfig.type: a node changes role only through a reboot".to_string());
    }
    if old.machine().install != new.machine().install {
        out.push("MachineConfig.install: the install target is used at boot".to_string());
    }
    let secrets = |c: &Config| {
        c.documents()
            .find(|d| d.kind() == "Secrets")
            .map(Document::to_json)
    };
    if secrets(old) != secrets(new) {
        out.push("Secrets: certificates issued from the old authorities are in use".to_string());
    }
    let net = |c: &Config| serde_json::to_value(&c.cluster().network).ok();
    if net(old) != net(new) {
        out.push("ClusterConfig.network: pod and service subnets are fixed at boot".to_string());
    }
    // What Kubernetes on the node reads once: its PKI, etcd membership and kubeconfigs are
    // issued at boot for this name, endpoint and address. (The kubelet's other settings, the
    // node's labels and the control-plane taint follow a change live.)
    let (oc, nc) = (old.cluster(), new.cluster());
    if oc.name != nc.name {
        out.push("ClusterConfig.name: the Kubernetes PKI and kubeconfigs name the cluster".into());
    }
    if oc.control_plane.endpoint != nc.control_plane.endpoint {
        out.push(
            "ClusterConfig.controlPlane.endpoint: certificates, kubeconfigs and etcd joins use it"
                .into(),
        );
    }
    let subnets = |c: &Config| {
        c.machine()
            .kubelet
            .as_ref()
            .map(|k| k.node_ip_subnets.clone())
            .unwrap_or_default()
    };
    if subnets(old) != subnets(new) {
        out.push(
            "MachineConfig.kubelet.nodeIPSubnets: the node's Kubernetes address is chosen at boot"
                .into(),
        );
    }
    if old.machine().cert_sans != new.machine().cert_sans
        && old.machine().machine_type == MachineType::ControlPlane
    {
        out.push(
            "MachineConfig.certSANs: the Kubernetes API server's certificate is issued at boot (apid's follows at once)"
                .into(),
        );
    }
    out
}

/// A unified diff of two configs, with the Secrets document left out (it is compared, never
/// shown).
fn config_diff(old: Option<&Config>, new: &Config) -> String {
    let a = old.map(Config::without_secrets_yaml).unwrap_or_default();
    let b = new.without_secrets_yaml();
    let mut diff = similar::TextDiff::from_lines(&a, &b)
        .unified_diff()
        .context_radius(3)
        .header("active", "new")
        .to_string();
    let s = |c: Option<&Config>| {
        c.and_then(|c| {
            c.documents()
                .find(|d| d.kind() == "Secrets")
                .map(Document::to_json)
        })
    };
    if s(old) != s(Some(new)) {
        diff.push_str("# the Secrets document changes (not shown)\n");
    }
    diff
}

fn resource_changes(old: Option<&Config>, new: Option<&Config>) -> Vec<String> {
    let a = documents(old);
    let b = documents(new);
    let mut out = Vec::new();
    for (id, v) in &b {
        match a.get(id) {
            None => out.push(format!("+ MachineConfig {id}")),
            Some(o) if o != v => out.push(format!("~ MachineConfig {id}")),
            Some(_) => {}
        }
    }
    for id in a.keys().filter(|id| !b.contains_key(*id)) {
        out.push(format!("- MachineConfig {id}"));
    }
    out
}

impl ConfigState {
    /// State kept under `dir` (`/var/lib/basalt` on a node), checked in `mode`.
    pub fn new(dir: PathBuf, mode: Mode, store: Store) -> Self {
        ConfigState {
            dir,
            mode,
            store,
            inner: Arc::default(),
        }
    }

    /// The mode configs are checked in (metal or container).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn active(&self) -> Option<Arc<Config>> {
        self.lock().active.as_ref().map(|a| a.config.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// At boot: promotes a staged config, then loads the persisted one. A file that no longer
    /// validates is moved aside (`.rejected`) and reported; the node stays in maintenance mode.
    pub fn load_at_boot(&self) -> Vec<String> {
        let mut notes = Vec::new();
        let staged = self.dir.join(STAGED);
        let active = self.dir.join(ACTIVE);
        if staged.exists() {
            match std::fs::read_to_string(&staged)
                .map_err(|e| e.to_string())
                .and_then(|t| Config::parse(&t, self.mode).map_err(|e| e.to_string()))
            {
                Ok(_) => match std::fs::rename(&staged, &active) {
                    Ok(()) => notes.push("staged config promoted".to_string()),
                    Err(e) => notes.push(format!("cannot promote the staged config: {e}")),
                },
                Err(e) => {
                    let _ = std::fs::rename(&staged, self.dir.join("config.staged.rejected"));
                    notes.push(format!("staged config rejected: {e}"));
                }
            }
        }
        match std::fs::read_to_string(&active) {
            Ok(text) => match Config::parse(&text, self.mode) {
                Ok(c) => {
                    self.set_active(Some(Active {
                        config: Arc::new(c),
                        persisted: true,
                    }));
                    notes.push(format!("config loaded from {}", active.display()));
                }
                Err(e) => {
                    let _ = std::fs::rename(&active, self.dir.join("config.rejected"));
                    notes.push(format!(
                        "{} no longer validates, moved aside: {}",
                        active.display(),
                        basalt_sys::error_chain(&e)
                    ));
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => notes.push(format!("cannot read {}: {e}", active.display())),
        }
        notes
    }

    fn set_active(&self, a: Option<Active>) {
        let config = a.as_ref().map(|a| a.config.clone());
        let generation = {
            let mut inner = self.lock();
            inner.active = a;
            inner.generation += 1;
            inner.generation
        };
        self.publish(config.as_deref());
        // What the controllers reconcile to: the documents above first, then this.
        let kind = Kind::of::<ActiveConfig>();
        let published = match config {
            Some(config) => self
                .store
                .apply(OWNER, ACTIVE_ID, ActiveConfig { generation, config }),
            None => self
                .store
                .destroy(&kind, ACTIVE_ID, OWNER)
                .or_else(|e| match e {
                    basalt_resources::StoreError::NotFound { .. } => Ok(()),
                    e => Err(e),
                }),
        };
        if let Err(e) = published {
            tracing::warn!(error = %e, "cannot publish the active config");
        }
    }

    fn publish(&self, c: Option<&Config>) {
        let desired = documents(c);
        let kind = Kind::of::<ConfigDocument>();
        for r in self.store.list_dyn(&kind) {
            if !desired.contains_key(&r.metadata.id) {
                let _ = self.store.destroy(&kind, &r.metadata.id, OWNER);
            }
        }
        for (id, v) in desired {
            if let Err(e) = self.store.apply(OWNER, &id, ConfigDocument(v)) {
                tracing::warn!(document = %id, error = %e, "cannot publish a config document");
            }
        }
    }

    /// Validates `text` and applies it in `mode`; with `dry_run` only says what would change.
    pub fn apply(&self, text: &str, mode: ApplyMode, dry_run: bool) -> Result<Outcome, ApplyError> {
        let new = Config::parse(text, self.mode).map_err(ApplyError::Invalid)?;
        let old = self.active();
        let needs = old
            .as_deref()
            .map(|o| needs_reboot(o, &new))
            .unwrap_or_default();
        let mut out = Outcome {
            config_diff: config_diff(old.as_deref(), &new),
            resource_changes: resource_changes(old.as_deref(), Some(&new)),
            needs_reboot: needs.clone(),
            ..Outcome::default()
        };
        let live = matches!(mode, ApplyMode::NoReboot | ApplyMode::Try(_));
        if live && !needs.is_empty() {
            if dry_run {
                out.summary = "dry run: this config cannot apply live (see needs_reboot)".into();
                return Ok(out);
            }
            return Err(ApplyError::NeedsReboot(needs));
        }
        if dry_run {
            out.summary = format!(
                "dry run: {} resource change{}; nothing was changed",
                out.resource_changes.len(),
                if out.resource_changes.len() == 1 {
                    ""
                } else {
                    "s"
                }
            );
            return Ok(out);
        }
        let text = new.to_yaml();
        let new = Arc::new(new);
        match mode {
            ApplyMode::NoReboot | ApplyMode::Reboot => {
                self.persist(ACTIVE, &text)?;
                let _ = std::fs::remove_file(self.dir.join(STAGED));
                let confirmed = self.cancel_try();
                if mode == ApplyMode::Reboot {
                    out.summary = "config saved; rebooting to apply it".into();
                    out.reboot = true;
                } else {
                    self.set_active(Some(Active {
                        config: new,
                        persisted: true,
                    }));
                    out.summary = if confirmed {
                        "applied live and saved; the tried config is confirmed".into()
                    } else {
                        "applied live and saved".into()
                    };
                }
            }
            ApplyMode::Staged => {
                self.persist(STAGED, &text)?;
                out.summary = "config staged: it applies at the next boot".into();
            }
            ApplyMode::Try(timeout) => {
                let previous = {
                    let inner = self.lock();
                    match &inner.pending_try {
                        // Trying again keeps the original fallback.
                        Some((_, prev)) => prev.clone(),
                        None => inner.active.clone(),
                    }
                };
                self.cancel_try();
                self.set_active(Some(Active {
                    config: new,
                    persisted: false,
                }));
                let me = self.clone();
                let prev = previous.clone();
                let timer = tokio::spawn(async move {
                    tokio::time::sleep(timeout).await;
                    me.lock().pending_try = None;
                    tracing::info!(
                        "tried config not confirmed within {}: reverting to {}",
                        basalt_supervisor::fmt_duration(timeout),
                        if prev.is_some() {
                            "the previous config"
                        } else {
                            "maintenance mode"
                        }
                    );
                    me.set_active(prev);
                });
                self.lock().pending_try = Some((timer, previous));
                out.summary = format!(
                    "applied live for {}; it reverts unless confirmed (apply it again with --mode no-reboot)",
                    basalt_supervisor::fmt_duration(timeout)
                );
            }
        }
        Ok(out)
    }

    /// Cancels a pending `try` revert; true if there was one.
    fn cancel_try(&self) -> bool {
        match self.lock().pending_try.take() {
            Some((timer, _)) => {
                timer.abort();
                true
            }
            None => false,
        }
    }

    fn persist(&self, name: &str, text: &str) -> Result<(), ApplyError> {
        let path = self.dir.join(name);
        atomic_write(&path, text.as_bytes(), 0o600)
            .map_err(|source| ApplyError::Persist { path, source })
    }

    /// Forgets the config (reset): the files go, the node is back in maintenance mode.
    pub fn wipe(&self) -> std::io::Result<()> {
        self.cancel_try();
        for name in [ACTIVE, STAGED] {
            match std::fs::remove_file(self.dir.join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        self.set_active(None);
        Ok(())
    }

    /// Whether the active config is saved (false while a `try` is pending).
    pub fn persisted(&self) -> bool {
        self.lock().active.as_ref().is_some_and(|a| a.persisted)
    }
}

#[cfg(test)]
mod tests;
