//! `osctl image`: build boot images; import and remove container images on nodes
//! ([`crate::image_import`]).

use std::path::PathBuf;

use basalt_image::{BuildOptions, Target};
use clap::{Args, Subcommand};

use crate::{error_chain, print_line};

/// `osctl image`: build boot images, or put container images on nodes.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Print inputs.lock lines for the archive's current versions (does not build).
    #[command(after_help = "Example:\n  osctl image pin")]
    Pin,
    /// Build the Go-built stack (containerd, runc, CNI plugins, etcd, Kubernetes, CoreDNS)
    /// into the cache if it is not there, and print each program's version and path.
    #[command(after_help = "Example:\n  osctl image stack | awk '$1 == \"kubectl\" {print $2}'")]
    Stack,
    /// Build rootfs.sqsh: the SquashFS root and its dm-verity tree.
    #[command(after_help = "Example:\n  osctl image rootfs --out _out/image --kubernetes")]
    Rootfs(BuildArgs),
    /// Build the initramfs.
    #[command(after_help = "Example:\n  osctl image initramfs --out _out/image")]
    Initramfs(BuildArgs),
    /// Build the hybrid ISO (BIOS and UEFI).
    #[command(
        after_help = "Example:\n  osctl image iso --out _out/image --extra-cmdline basalt.debug"
    )]
    Iso(BuildArgs),
    /// Build the PXE assets: kernel, initramfs, rootfs and an iPXE script.
    #[command(after_help = "Example:\n  osctl image pxe --out _out/image --kubernetes")]
    Pxe(BuildArgs),
    /// Build an upgrade bundle for `osctl upgrade`: the kernel, the initramfs and the root
    /// with their sha256s and the version.
    #[command(
        after_help = "Example:\n  osctl image bundle --out _out/image --kubernetes --image-version 0.2.0"
    )]
    Bundle(BuildArgs),
    /// Build every boot artifact.
    #[command(after_help = "Example:\n  osctl image all --out _out/image")]
    All(BuildArgs),
    /// Import a container image archive (`docker save`, or an OCI layout in a tar) into the
    /// nodes' containerd, streamed to every node at once; nodes that hold its images already
    /// are skipped.
    #[command(
        after_help = "Examples:\n  docker save hello:v1 -o hello.tar && osctl image import hello.tar\n  docker save hello:v1 | osctl -n 10.5.0.3 image import -"
    )]
    Import(ImportArgs),
    /// Pull an image on the nodes as the kubelet would: through their registry settings
    /// (mirrors, credentials, TLS), into the kubelet's namespace.
    #[command(after_help = "Example:\n  osctl image pull localhost:5000/web:v1")]
    Pull {
        /// An image reference.
        image: String,
    },
    /// Remove container images from the nodes.
    #[command(after_help = "Example:\n  osctl image rm docker.io/library/hello:v1")]
    Rm {
        /// Image names as `osctl images` shows them.
        #[arg(required = true)]
        names: Vec<String>,
        /// The containerd namespace (the kubelet's is k8s.io).
        #[arg(long, default_value = "k8s.io")]
        namespace: String,
    },
}

#[derive(Debug, Args)]
pub struct BuildArgs {
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
    /// The version the image reports (`osctl version`) and upgrades compare; letters, digits
    /// and . _ + - ~ (default: osctl's own version).
    #[arg(long = "image-version")]
    image_version: Option<String>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The archive: a file, or - for standard input.
    archive: String,
    /// The containerd namespace (the kubelet's is k8s.io).
    #[arg(long, default_value = "k8s.io")]
    namespace: String,
    /// Send the archive even to nodes that hold its images already.
    #[arg(long)]
    force: bool,
}

pub fn run(cmd: ImageCommand, g: &crate::client::Global) -> anyhow::Result<()> {
    let (target, args) = match cmd {
        ImageCommand::Import(a) => {
            return crate::image_import::run(g, &a.archive, &a.namespace, a.force);
        }
        ImageCommand::Rm { names, namespace } => {
            return crate::image_import::remove(g, names, namespace);
        }
        ImageCommand::Pull { image } => return crate::image_import::pull(g, image),
        ImageCommand::Pin => {
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
        ImageCommand::Stack => {
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
        ImageCommand::Rootfs(a) => (Target::Rootfs, a),
        ImageCommand::Initramfs(a) => (Target::Initramfs, a),
        ImageCommand::Iso(a) => (Target::Iso, a),
        ImageCommand::Pxe(a) => (Target::Pxe, a),
        ImageCommand::Bundle(a) => (Target::Bundle, a),
        ImageCommand::All(a) => (Target::All, a),
    };
    let opts = BuildOptions {
        out: args.out,
        init: args.init,
        extra_cmdline: args.extra_cmdline,
        verbose: true,
        with_containerd: !args.without_containerd,
        kubernetes: args.kubernetes,
        version: args.image_version,
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
