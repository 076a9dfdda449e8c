//! `osctl config ...`: the client config's contexts, endpoints and nodes.

use std::path::PathBuf;

use anyhow::{Context as _, anyhow};
use basalt_config::client::ClientConfig;
use clap::Subcommand;

use crate::client::{self, Global};
use crate::output::{Table, stdout};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Make a context the current one.
    #[command(after_help = "Example:\n  osctl config context demo")]
    Context { name: String },
    /// List the contexts; * marks the current one.
    #[command(after_help = "Example:\n  osctl config contexts")]
    Contexts,
    /// Set the current context's endpoints (the addresses osctl dials).
    #[command(after_help = "Example:\n  osctl config endpoint 10.5.0.2 10.5.0.3")]
    Endpoint {
        #[arg(required = true)]
        endpoints: Vec<String>,
    },
    /// Set the current context's default nodes (the nodes requests are for).
    #[command(after_help = "Example:\n  osctl config node 10.5.0.2")]
    Node { nodes: Vec<String> },
    /// Add the contexts of another client config (e.g. the osconfig gen config wrote); a
    /// name already taken gets a -1, -2 ... suffix. The merged context becomes current.
    #[command(after_help = "Example:\n  osctl config merge _out/osconfig")]
    Merge { file: PathBuf },
    /// Show the current context: endpoints, nodes, role and certificate validity.
    #[command(after_help = "Example:\n  osctl config info")]
    Info,
}

pub fn run(g: &Global, cmd: ConfigCommand) -> anyhow::Result<()> {
    let path = client::config_path(g);
    let cfg = client::read_config(&path)?;
    let require = |cfg: Option<ClientConfig>| {
        cfg.ok_or_else(|| {
            anyhow!(
                "no client config at {}: run `osctl gen config NAME https://ENDPOINT:6443` and `osctl config merge osconfig`, or pass --osconfig FILE",
                path.display()
            )
        })
    };
    match cmd {
        ConfigCommand::Merge { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let other = ClientConfig::parse(&text)
                .map_err(|e| anyhow!("{}: {}", file.display(), crate::error_chain(&e)))?;
            let mut cfg = cfg.unwrap_or(ClientConfig {
                context: None,
                contexts: Default::default(),
            });
            let names = cfg.merge(other);
            client::write_config(&path, &cfg)?;
            for n in names {
                stdout(&format!("merged context {n:?} into {}\n", path.display()));
            }
        }
        ConfigCommand::Context { name } => {
            let mut cfg = require(cfg)?;
            if !cfg.contexts.contains_key(&name) {
                anyhow::bail!(
                    "no context {name:?} in {} (contexts: {})",
                    path.display(),
                    cfg.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
            cfg.context = Some(name.clone());
            client::write_config(&path, &cfg)?;
            stdout(&format!("current context is now {name:?}\n"));
        }
        ConfigCommand::Contexts => {
            let cfg = require(cfg)?;
            let mut t = Table::new(&["CURRENT", "NAME", "ENDPOINTS", "NODES"]);
            for (name, c) in &cfg.contexts {
                t.row(vec![
                    if cfg.context.as_deref() == Some(name) {
                        "*"
                    } else {
                        ""
                    }
                    .into(),
                    name.clone(),
                    c.endpoints.join(","),
                    c.nodes.join(","),
                ]);
            }
            stdout(&t.render());
        }
        ConfigCommand::Endpoint { endpoints } => {
            let mut cfg = require(cfg)?;
            let (name, _) = client::context(g, &path, Some(&cfg))?;
            if let Some(c) = cfg.contexts.get_mut(&name) {
                c.endpoints = endpoints;
            }
            client::write_config(&path, &cfg)?;
        }
        ConfigCommand::Node { nodes } => {
            let mut cfg = require(cfg)?;
            let (name, _) = client::context(g, &path, Some(&cfg))?;
            if let Some(c) = cfg.contexts.get_mut(&name) {
                c.nodes = nodes;
            }
            client::write_config(&path, &cfg)?;
        }
        ConfigCommand::Info => {
            let cfg = require(cfg)?;
            let (name, c) = client::context(g, &path, Some(&cfg))?;
            let der = c.crt.der();
            let (roles, validity) = match x509_parser::parse_x509_certificate(&der) {
                Ok((_, x)) => (
                    x.subject()
                        .iter_organization()
                        .filter_map(|o| o.as_str().ok().map(str::to_string))
                        .collect::<Vec<_>>()
                        .join(", "),
                    format!("{} to {}", x.validity().not_before, x.validity().not_after),
                ),
                Err(e) => (String::new(), format!("unreadable certificate: {e}")),
            };
            stdout(&format!(
                "Current context: {name}\nEndpoints:       {}\nNodes:           {}\nRoles:           {roles}\nCertificate:     valid {validity}\nConfig file:     {}\n",
                c.endpoints.join(", "),
                c.nodes.join(", "),
                path.display()
            ));
        }
    }
    Ok(())
}
