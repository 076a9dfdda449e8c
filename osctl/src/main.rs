//! `osctl`, the Basalt CLI: generates and checks configs, builds images, and drives nodes over
//! the machine API (mutual TLS to apid). It holds no node logic: anything a node does belongs
//! in the node's crates.

#![forbid(unsafe_code)]
// Argument enums are parsed once per run; their size does not matter.
#![allow(clippy::large_enum_variant)]

mod api_cmd;
mod chaos;
mod client;
mod cluster;
mod config_cmd;
mod docs;
mod gen_cmd;
mod host;
mod image_cmd;
mod image_import;
mod kubeconfig;
mod output;
mod publish;
mod serve;
mod upgrade_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "osctl", version, about = "Drive Basalt nodes and clusters")]
struct Cli {
    #[command(flatten)]
    global: client::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate configs, secrets and schemas.
    #[command(subcommand)]
    Gen(gen_cmd::GenCommand),
    /// Check a machine config and print every problem in it.
    #[command(after_help = "Example:\n  osctl validate -c controlplane.yaml --mode metal")]
    Validate {
        /// The machine config file.
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        /// Where the machine runs: metal (VM or bare metal) or container.
        #[arg(long, default_value = "metal")]
        mode: basalt_config::Mode,
        /// Apply these patches (files with @ or inline YAML) before checking.
        #[arg(long = "config-patch")]
        patches: Vec<String>,
    },
    /// Build boot images (rootfs.sqsh, initramfs, ISO, PXE assets); import container images
    /// into nodes.
    #[command(subcommand)]
    Image(image_cmd::ImageCommand),
    /// Local clusters of Basalt nodes: create, show, destroy.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Manage the client config: contexts, endpoints, nodes.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Upgrade installed nodes, one at a time: the bundle goes into each node's inactive
    /// slot, which boots on trial; the node goes back to the running slot by itself unless
    /// the new boot comes up healthy. Waits for each node before the next.
    #[command(
        after_help = "Examples:\n  osctl image bundle --out _out/image --image-version 0.2.0\n  osctl upgrade --image _out/image/upgrade.bundle -n 10.5.0.2,10.5.0.3\n  osctl upgrade --image old.bundle --allow-downgrade --stage"
    )]
    Upgrade(upgrade_cmd::UpgradeArgs),
    /// Boot the other slot of installed nodes from now on (back to the version before the
    /// last upgrade), and reboot.
    #[command(after_help = "Example:\n  osctl rollback -n 10.5.0.2")]
    Rollback,
    #[command(flatten)]
    Api(api_cmd::ApiCommand),
    /// Print this command reference as Markdown (docs/osctl.md is made with it).
    #[command(hide = true)]
    Docs,
    /// Print a shell completion script.
    #[command(after_help = "Example:\n  osctl completion bash > /etc/bash_completion.d/osctl")]
    Completion { shell: clap_complete::Shell },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Gen(cmd) => gen_cmd::run(cmd, &cli.global.endpoints),
        Command::Config(cmd) => config_cmd::run(&cli.global, cmd),
        Command::Api(cmd) => api_cmd::run(&cli.global, cmd),
        Command::Docs => {
            use clap::CommandFactory;
            output::stdout(&docs::markdown(&Cli::command()));
            Ok(())
        }
        Command::Image(cmd) => image_cmd::run(cmd, &cli.global),
        Command::Cluster(cmd) => cluster::run(cmd),
        Command::Upgrade(a) => upgrade_cmd::upgrade(&cli.global, a),
        Command::Rollback => upgrade_cmd::rollback(&cli.global),
        Command::Validate {
            config,
            mode,
            patches,
        } => {
            let text = std::fs::read_to_string(&config)
                .with_context(|| format!("cannot read {}", config.display()))?;
            let mut cfg = basalt_config::Config::parse(&text, mode)
                .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
            for p in &patches {
                let patch = gen_cmd::load_patch(p)?;
                cfg = patch
                    .apply(&cfg, mode)
                    .map_err(|e| anyhow::anyhow!("{}: {}", config.display(), error_chain(&e)))?;
            }
            let mode = match mode {
                basalt_config::Mode::Metal => "metal",
                basalt_config::Mode::Container => "container",
            };
            print_line(&format!("{} is valid for {mode} mode", config.display()));
            Ok(())
        }
        Command::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "osctl", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// An error and its sources, each once, joined by ": ".
pub use basalt_resources::error_chain;

#[allow(clippy::print_stdout)]
pub fn print_line(s: &str) {
    println!("{s}");
}
