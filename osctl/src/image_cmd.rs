//! `osctl image`: build boot images.

use std::path::PathBuf;

use basalt_image::{BuildOptions, Target};
use clap::{Args, ValueEnum};

use crate::{error_chain, print_line};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum What {
    /// Print inputs.lock lines for the archive's current versions (does not build).
    Pin,
    /// Build the Go-built stack (containerd, runc, CNI plugins, etcd, Kubernetes, CoreDNS)
    /// into the cache if it is not there, and print each program's version and path.
    Stack,
    Rootfs,
    Initramfs,
    Iso,
    Pxe,
    All,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  osctl image all --out _out/image\n  osctl image iso --out _out/image --extra-cmdline basalt.debug"
)]
pub struct ImageArgs {
    /// What to build: rootfs, initramfs, iso, pxe or all (or pin: print current pins).
    what: What,
    /// Output directory.
    #[arg(long, default_value = "_out/image")]
    out: PathBuf,
    /// Use this init binary instead of building one (`basalt-early` and `hello`, built with
    /// it, must be beside it).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Extra kernel arguments for the ISO and PXE entries; may repeat.
    #[arg(long = "extra-cmdline")]
    extra_cmdline: Vec<String>,
    /// Leave containerd, runc and the CNI plugins out of the rootfs.
    #[arg(long)]
    without_containerd: bool,
    /// Make a Kubernetes node image: etcd, the kubelet, the control plane and pause from the
    /// Go-built stack (built once into the cache), mount from pinned packages.
    #[arg(long)]
    kubernetes: bool,
}

pub fn run(args: ImageArgs) -> anyhow::Result<()> {
    let target = match args.what {
        What::Pin => {
            let pins =
                basalt_image::inputs::lock().map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
            let now = basalt_image::inputs::current_candidates(&pins)
                .map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
            for (old, new) in pins.iter().zip(&now) {
                let mark = if old == new { "" } else { "   # changed" };
                print_line(&format!(
                    "{} {} {}{mark}",
                    new.package, new.version, new.sha256
                ));
            }
            return Ok(());
        }
        What::Stack => {
            let stack = basalt_image::stack::ensure(
                basalt_image::stack::ALL,
                &basalt_image::inputs::cache_dir(),
                &|m| eprintln!("==> {m}"),
            )
            .map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
            for (component, version) in stack.versions() {
                print_line(&format!("{component:<12} {version}"));
            }
            for (name, path) in stack.programs() {
                print_line(&format!("{name:<24} {}", path.display()));
            }
            return Ok(());
        }
        What::Rootfs => Target::Rootfs,
        What::Initramfs => Target::Initramfs,
        What::Iso => Target::Iso,
        What::Pxe => Target::Pxe,
        What::All => Target::All,
    };
    let opts = BuildOptions {
        out: args.out,
        init: args.init,
        extra_cmdline: args.extra_cmdline,
        verbose: true,
        with_containerd: !args.without_containerd,
        kubernetes: args.kubernetes,
    };
    let arts = basalt_image::build(target, &opts).map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    print_line(&format!("{:<16} {:>12}  sha256", "artifact", "bytes"));
    for (name, size, sha) in arts.table().map_err(|e| anyhow::anyhow!(error_chain(&e)))? {
        print_line(&format!("{name:<16} {size:>12}  {sha}"));
    }
    if let Some(dir) = arts.pxe_dir {
        print_line(&format!("PXE assets in {}", dir.display()));
    }
    Ok(())
}
