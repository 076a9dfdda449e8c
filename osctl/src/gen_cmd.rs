//! `osctl gen ...`: configs, secrets bundles and JSON Schemas.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use basalt_config::generate::{self, GenOptions};
use basalt_config::patch::Patch;
use basalt_config::types::{Endpoint, Hostname};
use basalt_config::{Config, Mode};
use clap::Subcommand;

use crate::{error_chain, print_line};

#[derive(Debug, Subcommand)]
pub enum GenCommand {
    /// Generate controlplane.yaml, worker.yaml and the client config osconfig for a new cluster.
    #[command(
        after_help = "Example:\n  osctl gen config demo https://10.5.0.2:6443 --output-dir _out"
    )]
    Config {
        /// The cluster name.
        name: Hostname,
        /// The Kubernetes API endpoint, e.g. https://10.5.0.2:6443.
        endpoint: Endpoint,
        /// Reuse the secrets in this bundle (from osctl gen secrets) instead of new ones.
        #[arg(long)]
        with_secrets: Option<PathBuf>,
        /// Patch both configs: a file with @FILE or inline YAML/JSON; may repeat.
        #[arg(long = "config-patch")]
        config_patch: Vec<String>,
        /// Patch only controlplane.yaml.
        #[arg(long = "config-patch-control-plane")]
        config_patch_control_plane: Vec<String>,
        /// Patch only worker.yaml.
        #[arg(long = "config-patch-worker")]
        config_patch_worker: Vec<String>,
        /// Where to write the files.
        #[arg(short = 'o', long, default_value = ".")]
        output_dir: PathBuf,
        /// Turn on KubeSpan and discovery.
        #[arg(long)]
        with_kubespan: bool,
        /// The disk nodes install to.
        #[arg(long)]
        install_disk: Option<String>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Generate a secrets bundle to share between gen config runs.
    #[command(
        after_help = "Example:\n  osctl gen secrets -o secrets.yaml\n  osctl gen config demo https://10.5.0.2:6443 --with-secrets secrets.yaml"
    )]
    Secrets {
        /// The file to write.
        #[arg(short = 'o', long, default_value = "secrets.yaml")]
        output: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Generate a client config with a certificate for a role, from a secrets bundle or a
    /// machine config that holds the OS CA key.
    #[command(
        after_help = "Examples:\n  osctl gen osconfig --secrets _out/controlplane.yaml --role os:reader -e 10.5.0.2 -o reader.osconfig\n  osctl --osconfig reader.osconfig services"
    )]
    Osconfig {
        /// A secrets bundle (gen secrets) or a machine config with its Secrets document.
        #[arg(long)]
        secrets: PathBuf,
        /// os:admin, os:operator or os:reader.
        #[arg(long, default_value = "os:admin", value_parser = ["os:admin", "os:operator", "os:reader"])]
        role: String,
        /// The context's name.
        #[arg(long, default_value = "basalt")]
        name: String,
        /// How long the certificate is valid, in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// The file to write.
        #[arg(short = 'o', long, default_value = "osconfig")]
        output: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Print the JSON Schema of machine config documents.
    #[command(after_help = "Example:\n  osctl gen schema > basalt-config.schema.json")]
    Schema,
}

/// Reads `@FILE` or inline patch text.
pub fn load_patch(arg: &str) -> anyhow::Result<Patch> {
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read patch file {path}"))?,
        None => arg.to_string(),
    };
    Patch::parse(&text).map_err(|e| anyhow::anyhow!("patch {arg:?}: {}", error_chain(&e)))
}

/// Writes a file atomically (write, fsync, rename), refusing to overwrite unless `force`.
pub fn write_file(path: &Path, contents: &str, force: bool, mode: u32) -> anyhow::Result<()> {
    if path.exists() && !force {
        bail!(
            "{} already exists (use --force to overwrite)",
            path.display()
        );
    }
    basalt_sys::fs::atomic_write(path, contents.as_bytes(), mode)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn apply_patches(cfg: Config, patches: &[String], which: &str) -> anyhow::Result<Config> {
    let mut cfg = cfg;
    for p in patches {
        let patch = load_patch(p)?;
        cfg = patch
            .apply(&cfg, Mode::Metal)
            .map_err(|e| anyhow::anyhow!("{which}: {}", error_chain(&e)))?;
    }
    Ok(cfg)
}

/// `endpoints`: the global `-e` flag, for the contexts written.
pub fn run(cmd: GenCommand, endpoints: &[String]) -> anyhow::Result<()> {
    match cmd {
        GenCommand::Config {
            name,
            endpoint,
            with_secrets,
            config_patch,
            config_patch_control_plane,
            config_patch_worker,
            output_dir,
            with_kubespan,
            install_disk,
            force,
        } => {
            let secrets = match &with_secrets {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    Some(
                        generate::parse_secrets(&text)
                            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
                    )
                }
                None => None,
            };
            let generated = generate::generate(&GenOptions {
                cluster_name: name,
                endpoint,
                with_kubespan,
                secrets,
                install_disk,
            })
            .map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
            let mut cp_patches = config_patch.clone();
            cp_patches.extend(config_patch_control_plane);
            let mut w_patches = config_patch;
            w_patches.extend(config_patch_worker);
            let cp = apply_patches(generated.controlplane, &cp_patches, "controlplane.yaml")?;
            let worker = apply_patches(generated.worker, &w_patches, "worker.yaml")?;
            let files = [
                ("controlplane.yaml", cp.to_yaml()),
                ("worker.yaml", worker.to_yaml()),
                ("osconfig", generated.client.to_yaml()),
            ];
            for (file, _) in &files {
                let p = output_dir.join(file);
                if p.exists() && !force {
                    bail!("{} already exists (use --force to overwrite)", p.display());
                }
            }
            for (file, text) in &files {
                let p = output_dir.join(file);
                write_file(&p, text, true, 0o600)?;
                print_line(&format!("created {}", p.display()));
            }
            Ok(())
        }
        GenCommand::Secrets { output, force } => {
            let secrets = generate::new_secrets().map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
            write_file(&output, &generate::secrets_to_yaml(&secrets), force, 0o600)?;
            print_line(&format!("created {}", output.display()));
            Ok(())
        }
        GenCommand::Osconfig {
            secrets,
            role,
            name,
            days,
            output,
            force,
        } => {
            let text = std::fs::read_to_string(&secrets)
                .with_context(|| format!("cannot read {}", secrets.display()))?;
            let bundle = generate::parse_secrets(&text)
                .map_err(|e| anyhow::anyhow!("{}: {}", secrets.display(), error_chain(&e)))?;
            let cfg = generate::client_config(&bundle, &name, endpoints.to_vec(), &role, days)
                .map_err(|e| anyhow::anyhow!("{}: {}", secrets.display(), error_chain(&e)))?;
            write_file(&output, &cfg.to_yaml(), force, 0o600)?;
            print_line(&format!(
                "created {} (context {name:?}, role {role})",
                output.display()
            ));
            Ok(())
        }
        GenCommand::Schema => {
            let schema = basalt_config::schema::config_schema();
            print_line(&serde_json::to_string_pretty(&schema)?);
            Ok(())
        }
    }
}
