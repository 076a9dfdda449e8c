//! Registry settings: the machine config's `RegistryMirrorConfig`, `RegistryAuthConfig` and
//! `RegistryTLSConfig` documents as containerd reads them.
//!
//! Mirrors and TLS become a `hosts.toml` per registry under [`HOSTS_DIR`] (with the CA and
//! client certificates beside it), which containerd's CRI reads on every pull: a change is live.
//! A registry the rootfs ships images of ([`crate::shipped`]) has the node's own registry as
//! its first host, before the config's mirrors: it answers what the node ships and 404s the
//! rest, which containerd then asks the next host for.
//! Credentials go in config.toml's CRI section, which containerd reads when it starts: a change
//! rewrites it and restarts containerd (its containers keep running: their shims are apart).
//! [`RegistrySettings`] keeps both in step with the active config.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use basalt_config::Config;
use basalt_config::document::Document;
use basalt_config::v1alpha1::{RegistryMirrorConfig, RegistryTlsConfig};

/// Where the per-registry host files live (containerd's `config_path`).
pub const HOSTS_DIR: &str = "/system/etc/containerd/certs.d";

/// One registry host's credentials, as the CRI's `registry.configs` takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub host: String,
    pub username: String,
    pub password: String,
    pub identity_token: String,
}

/// The registry settings of one config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Files under [`HOSTS_DIR`]: relative path → content and mode.
    pub files: BTreeMap<String, (Vec<u8>, u32)>,
    pub auth: Vec<Auth>,
}

/// The node's own registry: its URL and the registries it serves images of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Local {
    pub url: String,
    pub registries: BTreeSet<String>,
}

impl Local {
    /// The node's registry ([`crate::shipped`]) for the layouts under `dir`; none when the
    /// rootfs ships none (or they cannot be read: the registry service says why).
    pub fn shipped(dir: &Path) -> Local {
        let registries = crate::shipped::Catalog::load(dir)
            .map(|c| c.registries())
            .unwrap_or_default();
        Local {
            url: crate::shipped::URL.into(),
            registries,
        }
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The host of an endpoint URL (validated by the config: `http[s]://host[:port][/path]`).
fn url_host(url: &str) -> &str {
    url.split("://")
        .nth(1)
        .unwrap_or(url)
        .split('/')
        .next()
        .unwrap_or_default()
}

/// The URL a registry's own images come from when no mirror has them.
fn upstream(registry: &str) -> Option<String> {
    match registry {
        "*" => None,
        "docker.io" => Some("https://registry-1.docker.io".into()),
        r => Some(format!("https://{r}")),
    }
}

/// The TLS lines for a host: its CA and client certificate (written beside the hosts.toml
/// of `dir`), or no check at all.
fn tls_lines(
    dir: &str,
    tls: Option<&RegistryTlsConfig>,
    files: &mut BTreeMap<String, (Vec<u8>, u32)>,
) -> String {
    let Some(t) = tls else {
        return String::new();
    };
    let mut out = String::new();
    let host = t.name.replace(':', "_");
    if let Some(ca) = &t.ca {
        let f = format!("{dir}/{host}-ca.crt");
        out.push_str(&format!("  ca = {}\n", quote(&format!("{HOSTS_DIR}/{f}"))));
        files.insert(f, (ca.0.as_str().as_bytes().to_vec(), 0o644));
    }
    if let Some(id) = &t.client_identity {
        let (crt, key) = (
            format!("{dir}/{host}-client.crt"),
            format!("{dir}/{host}-client.key"),
        );
        out.push_str(&format!(
            "  client = [[{}, {}]]\n",
            quote(&format!("{HOSTS_DIR}/{crt}")),
            quote(&format!("{HOSTS_DIR}/{key}"))
        ));
        files.insert(crt, (id.crt.0.as_str().as_bytes().to_vec(), 0o644));
        files.insert(key, (id.key.0.as_str().as_bytes().to_vec(), 0o600));
    }
    if t.insecure_skip_verify {
        out.push_str("  skip_verify = true\n");
    }
    out
}

/// The settings a config asks for, with the node's own registry `local` first for the
/// registries it serves.
pub fn settings(cfg: &Config, local: &Local) -> Settings {
    let mut mirrors: BTreeMap<&str, &RegistryMirrorConfig> = BTreeMap::new();
    let mut tls: BTreeMap<&str, &RegistryTlsConfig> = BTreeMap::new();
    let mut out = Settings::default();
    for d in cfg.documents() {
        match d {
            Document::RegistryMirror(m) => {
                mirrors.insert(m.name.as_str(), m);
            }
            Document::RegistryTls(t) => {
                tls.insert(t.name.as_str(), t);
            }
            Document::RegistryAuth(a) => out.auth.push(Auth {
                host: a.name.clone(),
                username: a.username.clone().unwrap_or_default(),
                password: a.password.clone().unwrap_or_default(),
                identity_token: a.identity_token.clone().unwrap_or_default(),
            }),
            _ => {}
        }
    }
    // A directory for every registry a document names: a mirror's, and a TLS document's (a
    // registry pulled from directly needs its CA too), and every registry the node serves
    // images of. A registry without a mirror document of its own takes `*`'s.
    let registries: BTreeSet<&str> = mirrors
        .keys()
        .chain(tls.keys())
        .copied()
        .chain(local.registries.iter().map(String::as_str))
        .collect();
    for r in registries {
        let dir = if r == "*" { "_default" } else { r };
        let mirror = mirrors.get(r).or_else(|| mirrors.get("*")).copied();
        let mut endpoints: Vec<&str> = mirror
            .map(|m| m.endpoints.iter().map(|e| e.url.as_str()).collect())
            .unwrap_or_default();
        // Without fallback, the last mirror stands where the registry would.
        let server = match mirror {
            Some(m) if m.skip_fallback => endpoints.pop().map(str::to_string),
            _ => upstream(r),
        };
        let mut text =
            String::from("# Generated by Basalt from the machine config's registry documents.\n");
        let mut files = BTreeMap::new();
        if let Some(s) = &server {
            text.push_str(&format!("server = {}\n", quote(s)));
            let root_tls = tls_lines(dir, tls.get(url_host(s)).copied(), &mut files);
            text.push_str(&root_tls.replace("\n  ", "\n").replacen("  ", "", 1));
        }
        if r != "*" && local.registries.contains(r) {
            endpoints.insert(0, &local.url);
        }
        for e in endpoints {
            text.push_str(&format!(
                "\n[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n",
                quote(e)
            ));
            text.push_str(&tls_lines(dir, tls.get(url_host(e)).copied(), &mut files));
        }
        files.insert(format!("{dir}/hosts.toml"), (text.into_bytes(), 0o644));
        out.files.extend(files);
    }
    out
}

/// The CRI's registry section of config.toml: where the host files are, and the credentials.
pub fn cri_toml(auth: &[Auth]) -> String {
    let mut out = format!(
        "  [plugins.'io.containerd.cri.v1.images'.registry]\n    config_path = {}\n",
        quote(HOSTS_DIR)
    );
    for a in auth {
        out.push_str(&format!(
            "    [plugins.'io.containerd.cri.v1.images'.registry.configs.{}.auth]\n",
            quote(&a.host)
        ));
        for (k, v) in [
            ("username", &a.username),
            ("password", &a.password),
            ("identitytoken", &a.identity_token),
        ] {
            if !v.is_empty() {
                out.push_str(&format!("      {k} = {}\n", quote(v)));
            }
        }
    }
    out
}

/// Why the host files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot restart containerd for new registry credentials")]
    Restart(#[source] basalt_supervisor::SupervisorError),
}

/// Replaces everything under `root` with `files`, whole: the new tree is written beside it
/// and renamed over, so a pull never reads half of one and half of the other.
pub fn write_hosts(
    root: &Path,
    files: &BTreeMap<String, (Vec<u8>, u32)>,
) -> Result<(), RegistryError> {
    use std::os::unix::fs::PermissionsExt as _;
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RegistryError::Write { path, source }
    };
    let parent = root.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent).map_err(err(parent))?;
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let next = parent.join(format!(".{name}.next"));
    let old = parent.join(format!(".{name}.old"));
    let _ = std::fs::remove_dir_all(&next);
    std::fs::create_dir_all(&next).map_err(err(&next))?;
    for (rel, (data, mode)) in files {
        let p = next.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(err(d))?;
        }
        std::fs::write(&p, data).map_err(err(&p))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).map_err(err(&p))?;
    }
    let _ = std::fs::remove_dir_all(&old);
    match std::fs::rename(root, &old) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(root)(e)),
    }
    std::fs::rename(&next, root).map_err(err(root))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// How containerd's config is written with a set of credentials: `Ok(true)` when the file
/// changed (containerd reads it at start only).
pub type Rewrite = Box<dyn Fn(&[Auth]) -> std::io::Result<bool> + Send + Sync>;

/// The controller that keeps containerd's registry settings in step with the active config:
/// the host files rewritten for every config whose settings differ, and — when `rewrite`
/// says containerd's config file changed — containerd restarted. Its input is `ActiveConfig`.
pub struct RegistrySettings {
    sup: Arc<basalt_supervisor::Supervisor>,
    rewrite: Rewrite,
    local: Local,
    /// The settings in place.
    last: Option<Settings>,
}

impl std::fmt::Debug for RegistrySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrySettings")
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl RegistrySettings {
    pub fn new(sup: Arc<basalt_supervisor::Supervisor>, rewrite: Rewrite, local: Local) -> Self {
        RegistrySettings {
            sup,
            rewrite,
            local,
            last: None,
        }
    }

    async fn pass(&mut self, store: &basalt_resources::Store) -> Result<(), RegistryError> {
        let Some(cfg) = basalt_config::resource::active(store) else {
            return Ok(());
        };
        let want = settings(&cfg, &self.local);
        if self.last.as_ref() == Some(&want) {
            return Ok(());
        }
        write_hosts(Path::new(HOSTS_DIR), &want.files)?;
        let changed = (self.rewrite)(&want.auth).map_err(|source| RegistryError::Write {
            path: PathBuf::from(crate::CONFIG),
            source,
        })?;
        if changed {
            self.sup
                .restart("containerd")
                .await
                .map_err(RegistryError::Restart)?;
            tracing::info!("registry credentials changed: containerd restarted");
        }
        self.last = Some(want);
        Ok(())
    }
}

impl basalt_resources::Controller for RegistrySettings {
    fn name(&self) -> &str {
        "registry-settings"
    }

    fn inputs(&self) -> Vec<basalt_resources::Kind> {
        vec![basalt_resources::Kind::of::<
            basalt_config::resource::ActiveConfig,
        >()]
    }

    fn outputs(&self) -> Vec<basalt_resources::Output> {
        Vec::new()
    }

    fn reconcile<'a>(
        &'a mut self,
        cx: &'a mut basalt_resources::Context,
    ) -> futures::future::BoxFuture<'a, Result<(), basalt_resources::ReconcileError>> {
        Box::pin(async move { self.pass(cx.store()).await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests;
