//! Building the artifacts: rootfs.sqsh, initramfs, ISO, PXE.
//!
//! Every step is reproducible: files get the mtime `SOURCE_DATE_EPOCH` (default: 0), archives
//! are sorted, owners are root, and the tools are told the same.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cpio::{Archive, Entry};
use crate::kernel::{BOOT_MODULES, Kernel, NODE_MODULES};
use crate::{ImageError, inputs, io_err, sha256_file, tools};

/// What to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Rootfs,
    Initramfs,
    Iso,
    Pxe,
    /// The upgrade bundle `osctl upgrade` sends ([`basalt_disk::bundle`]).
    Bundle,
    All,
}

/// Build inputs and options.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub out: PathBuf,
    /// The init binary; built from this source tree with static glibc when `None`. Its
    /// siblings, built with it: `basalt-early` (the initramfs's `/init`) and `hello` (the test
    /// image's program).
    pub init: Option<PathBuf>,
    /// Extra kernel arguments for the ISO and PXE boot entries.
    pub extra_cmdline: Vec<String>,
    /// Prints progress lines when true.
    pub verbose: bool,
    /// Put containerd, runc and the CNI plugins in the rootfs (from the Go-built stack,
    /// [`crate::stack`], built into the cache the first time).
    pub with_containerd: bool,
    /// Make a Kubernetes node: the stack's etcd, kubelet and control plane in the rootfs with
    /// mount/umount from pinned packages, and pause as an OCI image for containerd. Needs
    /// `with_containerd`.
    pub kubernetes: bool,
    /// The version the image reports (`osctl version`, `/etc/os-release`, an upgrade
    /// bundle's manifest); this tree's package version when `None`.
    pub version: Option<String>,
}

impl BuildOptions {
    /// The version the image reports.
    pub fn version(&self) -> String {
        self.version
            .clone()
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string())
    }
}

/// The stack's programs in the rootfs of every image with containerd: (name, path in it).
const STACK_PAYLOAD: &[(&str, &str)] = &[
    ("containerd", "usr/bin/containerd"),
    ("containerd-shim-runc-v2", "usr/bin/containerd-shim-runc-v2"),
    ("runc", "usr/sbin/runc"),
    ("bridge", "usr/lib/cni/bridge"),
    ("host-local", "usr/lib/cni/host-local"),
    ("loopback", "usr/lib/cni/loopback"),
    ("portmap", "usr/lib/cni/portmap"),
];

/// The stack's programs a Kubernetes node adds, under `usr/bin`: what it runs. (CoreDNS
/// goes in as an image: it runs as a Deployment.)
pub const KUBERNETES_BINARIES: &[&str] = &[
    "etcd",
    "kubelet",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
];

/// What was built, with sizes and sha256s.
#[derive(Debug, Clone, Default)]
pub struct Artifacts {
    pub rootfs: Option<PathBuf>,
    pub initramfs: Option<PathBuf>,
    /// The boot kit an install copies to a disk (`kit/` beside the other artifacts; it rides
    /// in the rootfs too).
    pub kit: Option<PathBuf>,
    pub vmlinuz: Option<PathBuf>,
    pub iso: Option<PathBuf>,
    pub pxe_dir: Option<PathBuf>,
    /// `upgrade.bundle`.
    pub bundle: Option<PathBuf>,
    pub init: Option<PathBuf>,
    /// `basalt-early`, beside `init`.
    pub early: Option<PathBuf>,
    /// `hello`, beside `init`.
    pub hello: Option<PathBuf>,
}

impl Artifacts {
    /// `name size sha256` for each file built.
    pub fn table(&self) -> Result<Vec<(String, u64, String)>, ImageError> {
        let mut out = Vec::new();
        let files = [
            &self.init,
            &self.early,
            &self.hello,
            &self.rootfs,
            &self.vmlinuz,
            &self.initramfs,
            &self.iso,
            &self.bundle,
        ];
        for p in files.into_iter().flatten() {
            let size = std::fs::metadata(p).map_err(io_err("stat", p))?.len();
            out.push((
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                size,
                sha256_file(p)?,
            ));
        }
        Ok(out)
    }
}

/// The default kernel arguments: serial console, quiet (the serial line is slow under TCG),
/// reboot 10 s after a kernel panic, and no crypto self-tests at algorithm registration
/// (`cryptomgr.notests`: about 1 s of a TCG boot; they catch broken crypto drivers, which a
/// pinned, tested kernel does not ship — CPU mitigations stay on).
pub const BASE_CMDLINE: &str = "console=ttyS0,115200 quiet panic=10 cryptomgr.notests";

/// The timestamp every file gets: `SOURCE_DATE_EPOCH`, else 1980-01-01 (the earliest date FAT,
/// inside the ISO's EFI image, can hold).
fn epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(315_532_800)
}

fn progress(opts: &BuildOptions, msg: &str) {
    if opts.verbose {
        eprintln!("==> {msg}");
    }
}

/// Builds `target` into `opts.out`.
pub fn build(target: Target, opts: &BuildOptions) -> Result<Artifacts, ImageError> {
    if opts.kubernetes && !opts.with_containerd {
        return Err(ImageError::Init(
            "a Kubernetes image needs containerd in the rootfs".into(),
        ));
    }
    std::fs::create_dir_all(&opts.out).map_err(io_err("create", &opts.out))?;
    let cache = inputs::cache_dir();
    let pins = inputs::lock()?;
    let mut arts = Artifacts::default();

    progress(opts, "init binary");
    let init = match &opts.init {
        Some(p) => p.clone(),
        None => build_init(opts)?,
    };
    let early = beside(&init, "basalt-early")?;
    let hello = beside(&init, "hello")?;
    arts.init = Some(init.clone());
    arts.early = Some(early.clone());
    arts.hello = Some(hello.clone());

    progress(opts, "kernel package (downloaded once into the cache)");
    let kpin = inputs::find(&pins, "linux-image-")?;
    let kroot = inputs::extract(kpin, &cache)?;
    let kernel = Kernel::from_package_root(&kroot)?;

    progress(
        opts,
        "initramfs (early init and the boot modules) and GRUB for installs",
    );
    let kit = build_kit(&early, &kernel, &opts.out)?;
    arts.kit = Some(kit.clone());
    let mut programs: Vec<(&str, &str)> = BASE_PROGRAMS.to_vec();
    if opts.kubernetes {
        programs.extend_from_slice(KUBERNETES_PAYLOAD);
    }
    let mut payload = Payload {
        files: container_payload(&programs, &pins, &cache)?,
        links: Vec::new(),
    };
    for (name, _) in basalt_disk::install::KIT_FILES {
        let p = kit.join(name);
        let data = std::fs::read(&p).map_err(io_err("read", &p))?;
        payload
            .files
            .push((format!("{}/{name}", KIT_IN_ROOTFS), data));
    }
    let mut images = Vec::new();
    if opts.with_containerd {
        progress(opts, "the Go-built stack (containerd, runc, CNI plugins)");
        let stack = crate::stack::ensure(stack_components(opts), &cache, &|m| progress(opts, m))?;
        for (name, rel) in STACK_PAYLOAD {
            payload
                .files
                .push((rel.to_string(), read_static(stack.path(name)?)?));
        }
        if opts.kubernetes {
            progress(opts, "Kubernetes from the stack");
            images.push(kubernetes_binaries(&stack, &mut payload)?);
            images.push(coredns_image(&stack)?);
            images.extend(local_path_images(&stack, &pins, &cache)?);
        }
    }

    progress(opts, "rootfs.sqsh (mksquashfs)");
    let version = opts.version();
    if version.is_empty()
        || !version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+-~".contains(c))
    {
        return Err(ImageError::Init(format!(
            "version {version:?}: use letters, digits and . _ + - ~"
        )));
    }
    let rootfs = build_rootfs(
        &init, &hello, &kernel, &payload, &images, &version, &opts.out,
    )?;
    arts.rootfs = Some(rootfs.clone());
    if target == Target::Rootfs {
        return Ok(arts);
    }
    let vmlinuz = opts.out.join("vmlinuz");
    copy(&kernel.vmlinuz, &vmlinuz)?;
    arts.vmlinuz = Some(vmlinuz.clone());

    progress(opts, "initramfs");
    let initramfs = build_initramfs(&kit.join("initramfs.img"), &rootfs, &opts.out)?;
    arts.initramfs = Some(initramfs.clone());

    let cmdline = {
        let mut c = vec![BASE_CMDLINE.to_string()];
        c.extend(opts.extra_cmdline.iter().cloned());
        c.join(" ")
    };
    if matches!(target, Target::Pxe | Target::All) {
        progress(opts, "PXE assets");
        arts.pxe_dir = Some(build_pxe(&vmlinuz, &initramfs, &cmdline, &opts.out)?);
    }
    if target == Target::Bundle {
        progress(opts, "upgrade bundle");
        let path = opts.out.join("upgrade.bundle");
        let tmp = opts.out.join(".upgrade.bundle.tmp");
        let rootfs_img = opts.out.join(".rootfs.img.tmp");
        {
            let sqsh = std::fs::File::open(&rootfs).map_err(io_err("read", &rootfs))?;
            let size = sqsh.metadata().map_err(io_err("stat", &rootfs))?.len();
            let verity = crate::verity::read(&rootfs)?;
            let mut archive =
                basalt_disk::install::rootfs_cpio(verity.to_file().as_bytes(), sqsh, size)
                    .map_err(io_err("read", &rootfs))?;
            let mut out =
                std::fs::File::create(&rootfs_img).map_err(io_err("create", &rootfs_img))?;
            std::io::copy(&mut archive, &mut out).map_err(io_err("write", &rootfs_img))?;
        }
        let kubernetes = match opts.kubernetes {
            true => Some(crate::stack::KUBERNETES.version()?),
            false => None,
        };
        let mut out = std::fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
        basalt_disk::bundle::write(
            &mut out,
            &version,
            std::env::consts::ARCH,
            kubernetes,
            &[
                ("vmlinuz", &kit.join("vmlinuz")),
                ("initramfs.img", &kit.join("initramfs.img")),
                ("rootfs.img", &rootfs_img),
            ],
        )
        .map_err(io_err("write", &tmp))?;
        out.sync_all().map_err(io_err("sync", &tmp))?;
        let _ = std::fs::remove_file(&rootfs_img);
        finish(&tmp, &path)?;
        arts.bundle = Some(path);
        return Ok(arts);
    }
    if matches!(target, Target::Iso | Target::All) {
        progress(opts, "ISO (grub-mkrescue, xorriso)");
        arts.iso = Some(build_iso(&vmlinuz, &initramfs, &cmdline, &opts.out)?);
    }
    Ok(arts)
}

/// Changed whenever the build lays out its artifacts differently, so [`build_cached`] does
/// not reuse ones made the old way (its key otherwise covers only the inputs).
const LAYOUT: &str = "7: the boot kit and mke2fs in the rootfs, the initramfs is the kit's plus rootfs.img; 6: the rootfs carries its dm-verity tree; 1 MiB blocks, zstd 19, modules first; /etc/passwd; kube-proxy, nft, the CoreDNS, local-path and busybox images";

/// Like [`build`] for the rootfs or the initramfs (with the kernel), but into `root/<key>`,
/// where the key is a hash of everything they are made from (the init binary, the pinned
/// inputs, the target and the options): an unchanged build is found there and reused instead
/// of made again. `opts.out` is ignored.
pub fn build_cached(
    target: Target,
    opts: &BuildOptions,
    root: &Path,
) -> Result<Artifacts, ImageError> {
    if !matches!(target, Target::Rootfs | Target::Initramfs | Target::Iso) {
        return Err(ImageError::Init(format!(
            "a cached build is for the rootfs, the initramfs or the ISO, not {target:?}"
        )));
    }
    use sha2::Digest as _;
    let init = match &opts.init {
        Some(p) => p.clone(),
        None => build_init(opts)?,
    };
    let early = beside(&init, "basalt-early")?;
    let hello = beside(&init, "hello")?;
    let mut h = sha2::Sha256::new();
    for p in [&init, &early, &hello] {
        h.update(std::fs::read(p).map_err(io_err("read", p))?);
    }
    h.update(include_str!("../inputs.lock"));
    h.update(LAYOUT);
    // The installed disk's GRUB script and modules ride in the boot kit, not in init.
    h.update(basalt_disk::grub::config());
    h.update(GRUB_DISK_MODULES);
    h.update(format!(
        "{target:?} {} {} {:?} {BASE_CMDLINE} {:?}",
        opts.with_containerd, opts.kubernetes, opts.extra_cmdline, opts.version
    ));
    // What goes in, by the lists that choose it: a module or program added to one is a new
    // image without a LAYOUT bump (a module list change once reused an image without it).
    h.update(format!(
        "{BOOT_MODULES:?} {NODE_MODULES:?} {STACK_PAYLOAD:?} {KUBERNETES_BINARIES:?} \
         {KUBERNETES_PAYLOAD:?} {LIBRARY_PACKAGES:?}"
    ));
    if opts.with_containerd {
        // The stack's directories are named by their pins' key.
        let stack = crate::stack::ensure(stack_components(opts), &inputs::cache_dir(), &|m| {
            progress(opts, m)
        })?;
        for (name, path) in stack.programs() {
            h.update(format!("{name}={}\n", path.display()));
        }
    }
    let key: String = h.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let out = root.join(&key);
    let done = out.join(".done");
    if done.exists() {
        progress(opts, &format!("images unchanged: {}", out.display()));
        let have = |name: &str| Some(out.join(name)).filter(|p| p.exists());
        return Ok(Artifacts {
            rootfs: have("rootfs.sqsh"),
            initramfs: have("initramfs.img"),
            kit: have("kit"),
            vmlinuz: have("vmlinuz"),
            iso: have("basalt.iso"),
            pxe_dir: None,
            bundle: have("upgrade.bundle"),
            init: Some(init),
            early: Some(early),
            hello: Some(hello),
        });
    }
    let arts = build(
        target,
        &BuildOptions {
            out: out.clone(),
            init: Some(init),
            ..opts.clone()
        },
    )?;
    write_file(&done, b"", 0o644)?;
    Ok(arts)
}

/// The workspace this crate was built from.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A binary built with init (`basalt-early`, `hello`), found beside it.
pub fn beside(init: &Path, name: &str) -> Result<PathBuf, ImageError> {
    let p = init.with_file_name(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(ImageError::Init(format!(
            "no {name} beside {} (cargo builds them together: -p basalt-init -p basalt-early -p basalt-testkit --bins)",
            init.display()
        )))
    }
}

/// Builds `init`, `basalt-early` and `hello` with static glibc (`crt-static`): self-contained files, so
/// neither the initramfs nor the rootfs needs a dynamic loader or a library closure for them.
/// A separate target directory keeps the static flags from rebuilding the main one.
fn build_init(opts: &BuildOptions) -> Result<PathBuf, ImageError> {
    let ws = workspace();
    let target_dir = ws.join("target/basalt-init");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&ws)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "basalt-init",
            "-p",
            "basalt-early",
            "-p",
            "basalt-testkit",
            "--bins",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static",
        )
        .env_remove("RUSTFLAGS");
    if !opts.verbose {
        cmd.arg("-q");
    }
    let status = cmd.status().map_err(|e| ImageError::Init(e.to_string()))?;
    if !status.success() {
        return Err(ImageError::Init(format!(
            "cargo build exited with {status}"
        )));
    }
    Ok(target_dir.join("x86_64-unknown-linux-gnu/release/init"))
}

fn copy(from: &Path, to: &Path) -> Result<(), ImageError> {
    std::fs::copy(from, to).map_err(io_err("copy", from))?;
    Ok(())
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), ImageError> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(io_err("create", p))?;
    }
    std::fs::write(path, data).map_err(io_err("write", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod", path))
}

/// Writes `tmp` then renames it to `path`, so a failed build never leaves a half artifact.
fn finish(tmp: &Path, path: &Path) -> Result<(), ImageError> {
    std::fs::rename(tmp, path).map_err(io_err("rename", tmp))
}

/// Names in a rootfs that would give someone a shell or a way to install software.
const FORBIDDEN: &[&str] = &[
    "sh", "bash", "dash", "ash", "zsh", "ksh", "csh", "tcsh", "fish", "busybox", "toybox", "sshd",
    "ssh", "dropbear", "apt", "apt-get", "dpkg", "rpm", "yum", "dnf", "pacman", "apk", "pip",
];

/// Lists `rootfs.sqsh` and fails if a shell or package manager is in it.
pub fn check_rootfs(sqsh: &Path) -> Result<Vec<String>, ImageError> {
    tools::need("unsquashfs", "squashfs-tools")?;
    let list = tools::run(Command::new("unsquashfs").arg("-lc").arg(sqsh))?;
    let files: Vec<String> = list
        .lines()
        .filter_map(|l| l.strip_prefix("squashfs-root"))
        .map(|p| {
            if p.is_empty() {
                "/".to_string()
            } else {
                p.to_string()
            }
        })
        .collect();
    for f in &files {
        let base = f.rsplit('/').next().unwrap_or(f);
        if FORBIDDEN.contains(&base) {
            return Err(ImageError::Forbidden(f.clone()));
        }
    }
    Ok(files)
}

/// A file for the rootfs: its path relative to the root, its contents.
type RootfsFile = (String, Vec<u8>);

/// What the rootfs carries beside init and the kernel's modules.
struct Payload {
    /// Programs and libraries: path in the rootfs, contents.
    files: Vec<RootfsFile>,
    /// Symbolic links: path in the rootfs, target.
    links: Vec<(String, String)>,
}

impl Payload {
    /// Whether the rootfs has `rel`, as a file or a link.
    fn has(&self, rel: &str) -> bool {
        self.files.iter().any(|(r, _)| r == rel) || self.links.iter().any(|(r, _)| r == rel)
    }
}

/// Receives one file (path relative to the image root, contents).
type AddFile<'a> = dyn FnMut(&str, Vec<u8>) -> Result<(), ImageError> + 'a;

/// Copies the modules for `wanted` under `root/lib/modules/<version>` and writes
/// `load.order` (paths relative to `lib/modules`, dependencies first) for init to follow.
fn add_modules(kernel: &Kernel, wanted: &[&str], add: &mut AddFile<'_>) -> Result<(), ImageError> {
    let order = kernel.load_order(wanted)?;
    let mut listing = String::new();
    for rel in &order {
        let src = kernel.modules_dir.join(rel);
        let data = std::fs::read(&src).map_err(io_err("read", &src))?;
        add(&format!("lib/modules/{}/{rel}", kernel.version), data)?;
        listing.push_str(&format!("{}/{rel}\n", kernel.version));
    }
    add("lib/modules/load.order", listing.into_bytes())
}

/// The stack's components an image needs.
fn stack_components(opts: &BuildOptions) -> &'static [&'static crate::stack::Component] {
    if opts.kubernetes {
        crate::stack::ALL
    } else {
        crate::stack::NODE
    }
}

/// Programs from pinned Debian packages on every node: (package, path in the rootfs).
/// `mke2fs` makes STATE and EPHEMERAL when the node installs itself.
const BASE_PROGRAMS: &[(&str, &str)] = &[("e2fsprogs", "sbin/mke2fs")];

/// Programs from pinned Debian packages for a Kubernetes node: (package, path in the rootfs).
/// The mount/umount the kubelet runs for tmpfs-backed volumes (secrets, service-account
/// tokens).
/// And `nft`, which kube-proxy's nftables mode runs to load its rules.
const KUBERNETES_PAYLOAD: &[(&str, &str)] = &[
    ("mount", "bin/mount"),
    ("mount", "bin/umount"),
    ("nftables", "usr/sbin/nft"),
];

/// Pinned packages the programs' libraries are taken from, and where libraries live in them.
const LIBRARY_PACKAGES: &[&str] = &[
    "libc6",
    "libext2fs2",
    "libcom-err2",
    "libuuid1",
    "libmount1",
    "libblkid1",
    "libselinux1",
    "libpcre2-8-0",
    "libnftables1",
    "libedit2",
    "libmnl0",
    "libnftnl11",
    "libxtables12",
    "libjansson4",
    "libgmp10",
    "libtinfo6",
    "libbsd0",
    "libmd0",
];
const LIBRARY_DIRS: &[&str] = &["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"];

/// `rel` inside an extracted package, following symlinks (absolute ones stay in `root`).
fn resolve_in(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut p = root.join(rel.trim_start_matches('/'));
    for _ in 0..16 {
        let md = std::fs::symlink_metadata(&p).ok()?;
        if !md.file_type().is_symlink() {
            return Some(p);
        }
        let target = std::fs::read_link(&p).ok()?;
        p = if target.is_absolute() {
            root.join(target.strip_prefix("/").ok()?)
        } else {
            p.parent()?.join(target)
        };
    }
    None
}

/// The node's programs from pinned packages and their libraries, from [`LIBRARY_PACKAGES`].
fn container_payload(
    programs: &[(&str, &str)],
    pins: &[inputs::Pin],
    cache: &Path,
) -> Result<Vec<(String, Vec<u8>)>, ImageError> {
    program_closure(programs, LIBRARY_PACKAGES, pins, cache)
}

/// Programs from pinned packages, `(package, path in it)`, plus their shared-library closure,
/// read from their `DT_NEEDED` entries and `PT_INTERP` and found in the pinned `libraries`
/// packages: (path in the rootfs, contents). Debian builds these programs dynamically, so the
/// closure is resolved here from pinned library packages rather than from whatever the build
/// host has installed. A library none of them holds is an error naming it and who needs it.
pub fn program_closure(
    programs: &[(&str, &str)],
    libraries: &[&str],
    pins: &[inputs::Pin],
    cache: &Path,
) -> Result<Vec<(String, Vec<u8>)>, ImageError> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut queue: Vec<(String, Vec<u8>)> = Vec::new();
    for (pkg, rel) in programs {
        let root = inputs::extract(inputs::find(pins, pkg)?, cache)?;
        let path = resolve_in(&root, rel).ok_or_else(|| ImageError::Io {
            action: "find",
            path: format!("{rel} in package {pkg}"),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        let data = std::fs::read(&path).map_err(io_err("read", &path))?;
        queue.push((rel.to_string(), data));
    }
    let lib_roots: Vec<PathBuf> = libraries
        .iter()
        .map(|p| inputs::extract(inputs::find(pins, p)?, cache))
        .collect::<Result<_, _>>()?;
    let find_lib = |wanted: &str, by: &str| -> Result<(String, Vec<u8>), ImageError> {
        let candidates: Vec<String> = if wanted.starts_with('/') {
            vec![wanted.trim_start_matches('/').to_string()]
        } else {
            LIBRARY_DIRS
                .iter()
                .map(|d| format!("{d}/{wanted}"))
                .collect()
        };
        for root in &lib_roots {
            for c in &candidates {
                if let Some(p) = resolve_in(root, c) {
                    let data = std::fs::read(&p).map_err(io_err("read", &p))?;
                    return Ok((c.clone(), data));
                }
            }
        }
        Err(ImageError::MissingLibrary {
            binary: by.to_string(),
            library: wanted.to_string(),
        })
    };
    while let Some((rel, data)) = queue.pop() {
        let dynamic = crate::elf::dynamic(&data).map_err(|e| ImageError::Io {
            action: "read ELF of",
            path: format!("{rel}: {e}"),
            source: std::io::ErrorKind::InvalidData.into(),
        })?;
        for lib in dynamic.interpreter.iter().chain(dynamic.needed.iter()) {
            let (lib_rel, lib_data) = find_lib(lib, &rel)?;
            if files.iter().chain(queue.iter()).all(|(r, _)| *r != lib_rel) && lib_rel != rel {
                queue.push((lib_rel, lib_data));
            }
        }
        files.push((rel, data));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files.dedup_by(|a, b| a.0 == b.0);
    Ok(files)
}

/// An OCI image the rootfs ships: imported into containerd at boot, or served to it by the
/// node's registry when a pod there needs it.
#[derive(Debug)]
pub struct OciImage {
    /// Its directory under [`crate::oci::IMAGES_DIR`] or [`crate::oci::REGISTRY_DIR`].
    pub dir: &'static str,
    /// Served by the node's registry ([`crate::oci::REGISTRY_DIR`]) rather than imported at
    /// boot: an image only some nodes' pods run.
    pub served: bool,
    pub reference: String,
    /// The containerd namespace it is imported into.
    pub namespace: &'static str,
    /// (path in the image, mode, contents).
    pub files: Vec<(String, u32, Vec<u8>)>,
    pub entrypoint: Vec<String>,
}

/// The pod sandbox image's name (the one the kubelet's release expects), for a pause version.
pub fn pause_ref(version: &str) -> String {
    format!("registry.k8s.io/pause:{version}")
}

/// A program of the stack, checked to be static: the rootfs carries no library closure for
/// them.
fn read_static(p: &Path) -> Result<Vec<u8>, ImageError> {
    let data = std::fs::read(p).map_err(io_err("read", p))?;
    let d = crate::elf::dynamic(&data).map_err(|e| ImageError::Io {
        action: "read ELF of",
        path: format!("{}: {e}", p.display()),
        source: std::io::ErrorKind::InvalidData.into(),
    })?;
    if d.interpreter.is_some() || !d.needed.is_empty() {
        return Err(ImageError::Init(format!(
            "{} is dynamically linked (it needs {:?}); the stack builds every program static",
            p.display(),
            d.needed
        )));
    }
    Ok(data)
}

/// Adds the Kubernetes programs of the stack to the payload (`usr/bin/<name>`; a name of a
/// multi-call program is a link to it, and the program goes in once); returns the pause image.
fn kubernetes_binaries(
    stack: &crate::stack::Stack,
    payload: &mut Payload,
) -> Result<OciImage, ImageError> {
    for name in KUBERNETES_BINARIES {
        let file = match stack.link_target(name) {
            Some(target) => {
                payload
                    .links
                    .push((format!("usr/bin/{name}"), target.to_string()));
                target
            }
            None => name,
        };
        let rel = format!("usr/bin/{file}");
        if !payload.has(&rel) {
            payload.files.push((rel, read_static(stack.path(file)?)?));
        }
    }
    let pause = OciImage {
        dir: "pause",
        // Every pod's sandbox: on every node, from the start.
        served: false,
        reference: pause_ref(&crate::stack::pause_version(stack)?),
        namespace: "k8s.io",
        files: vec![("pause".into(), 0o755, read_static(stack.path("pause")?)?)],
        entrypoint: vec!["/pause".into()],
    };
    Ok(pause)
}

/// The CoreDNS image (the cluster DNS Deployment runs it): its static program as `/coredns`,
/// named as upstream names its release image.
fn coredns_image(stack: &crate::stack::Stack) -> Result<OciImage, ImageError> {
    let version = crate::stack::COREDNS.version()?;
    Ok(OciImage {
        dir: "coredns",
        served: true,
        reference: format!("registry.k8s.io/coredns/coredns:{version}"),
        namespace: "k8s.io",
        files: vec![(
            "coredns".into(),
            0o755,
            read_static(stack.path("coredns")?)?,
        )],
        entrypoint: vec!["/coredns".into()],
    })
}

/// The local-path provisioner's image (the default StorageClass's provisioner, from the
/// stack) and its helper pods' busybox (Debian's static one, as `sh`, `mkdir` and `rm` in
/// `/bin`: what its setup and teardown scripts run).
fn local_path_images(
    stack: &crate::stack::Stack,
    pins: &[inputs::Pin],
    cache: &Path,
) -> Result<Vec<OciImage>, ImageError> {
    let version = crate::stack::LOCAL_PATH.version()?;
    let provisioner = OciImage {
        dir: "local-path-provisioner",
        served: true,
        reference: format!("docker.io/rancher/local-path-provisioner:{version}"),
        namespace: "k8s.io",
        files: vec![(
            "local-path-provisioner".into(),
            0o755,
            read_static(stack.path("local-path-provisioner")?)?,
        )],
        entrypoint: vec!["/local-path-provisioner".into()],
    };
    let pin = inputs::find(pins, "busybox-static")?;
    let root = inputs::extract(pin, cache)?;
    let path = root.join("bin/busybox");
    let busybox = read_static(&path)?;
    // The upstream version without Debian's epoch and revision: 1:1.35.0-4+deb12u1 → 1.35.0.
    let upstream = pin
        .version
        .split_once(':')
        .map_or(pin.version.as_str(), |(_, v)| v)
        .split('-')
        .next()
        .unwrap_or_default();
    let helper = OciImage {
        dir: "busybox",
        served: true,
        reference: format!("basalt.local/busybox:{upstream}"),
        namespace: "k8s.io",
        files: ["bin/sh", "bin/mkdir", "bin/rm"]
            .iter()
            .map(|f| (f.to_string(), 0o755, busybox.clone()))
            .collect(),
        entrypoint: vec!["/bin/sh".into()],
    };
    Ok(vec![provisioner, helper])
}

fn build_rootfs(
    init: &Path,
    hello: &Path,
    kernel: &Kernel,
    payload: &Payload,
    images: &[OciImage],
    version: &str,
    out: &Path,
) -> Result<PathBuf, ImageError> {
    tools::need("mksquashfs", "squashfs-tools")?;
    let staging = out.join(".rootfs-staging");
    let _ = std::fs::remove_dir_all(&staging);
    for d in [
        "dev",
        "proc",
        "sys",
        "run",
        "system",
        "tmp",
        "var",
        "etc/basalt",
        "sbin",
        "usr/bin",
        "usr/lib",
        "lib/modules",
    ] {
        let p = staging.join(d);
        std::fs::create_dir_all(&p).map_err(io_err("create", &p))?;
    }
    let init_bytes = std::fs::read(init).map_err(io_err("read", init))?;
    write_file(&staging.join("sbin/init"), &init_bytes, 0o755)?;
    let mut os_release = format!(
        "NAME=Basalt\nID=basalt\nVERSION_ID={v}\nPRETTY_NAME=\"Basalt {v}\"\nHOME_URL=\"https://example.invalid/basalt\"\n",
        v = version
    );
    // The Kubernetes release a node image runs: an upgrade refuses to skip a minor.
    if payload.has("usr/bin/kubelet") {
        os_release.push_str(&format!(
            "KUBERNETES_VERSION={}\n",
            crate::stack::KUBERNETES.version()?
        ));
    }
    write_file(
        &staging.join("etc/os-release"),
        os_release.as_bytes(),
        0o644,
    )?;
    // The user and group databases, with root alone: programs look names up in them (the
    // kubelet reads /etc/passwd for a `kubelet` user's ID ranges and fails when the file is
    // missing, rather than absent from it). No login shell: there is none.
    write_file(
        &staging.join("etc/passwd"),
        b"root:x:0:0:root:/:/sbin/nologin\n",
        0o644,
    )?;
    write_file(&staging.join("etc/group"), b"root:x:0:\n", 0o644)?;
    add_modules(kernel, NODE_MODULES, &mut |rel, data| {
        write_file(&staging.join(rel), &data, 0o644)
    })?;
    // Programs, libraries and the loader all need exec permission (the kernel maps the
    // loader with open_exec).
    for (rel, data) in &payload.files {
        write_file(&staging.join(rel), data, 0o755)?;
    }
    for (rel, target) in &payload.links {
        let link = staging.join(rel);
        std::os::unix::fs::symlink(target, &link).map_err(io_err("link", &link))?;
    }
    if payload.has("usr/bin/containerd") {
        // The test image containerd imports at boot (for pods too, on a Kubernetes image):
        // `hello`, small, and not a second copy of init.
        let k8s = images.iter().any(|i| i.namespace == "k8s.io");
        let hello_bytes = std::fs::read(hello).map_err(io_err("read", hello))?;
        crate::oci::write_layout(
            &staging.join(crate::oci::IMAGES_DIR).join("hello"),
            k8s.then_some("system,k8s.io"),
            crate::oci::HELLO_REF,
            &[("hello", 0o755, &hello_bytes)],
            &["/hello"],
        )?;
    }
    for i in images {
        let files: Vec<(&str, u32, &[u8])> = i
            .files
            .iter()
            .map(|(n, m, d)| (n.as_str(), *m, d.as_slice()))
            .collect();
        let entry: Vec<&str> = i.entrypoint.iter().map(String::as_str).collect();
        let under = if i.served {
            crate::oci::REGISTRY_DIR
        } else {
            crate::oci::IMAGES_DIR
        };
        crate::oci::write_layout(
            &staging.join(under).join(i.dir),
            Some(i.namespace),
            &i.reference,
            &files,
            &entry,
        )?;
    }
    // The root is read-only: files that change at run time live on /system and are linked.
    for name in ["resolv.conf", "hosts", "hostname", "machine-id"] {
        let link = staging.join("etc").join(name);
        std::os::unix::fs::symlink(format!("/system/etc/{name}"), &link)
            .map_err(io_err("link", &link))?;
    }
    let sqsh = out.join("rootfs.sqsh");
    let tmp = out.join(".rootfs.sqsh.tmp");
    let _ = std::fs::remove_file(&tmp);
    // The modules go first, in the order PID 1 loads them: small files share compressed
    // fragment blocks, and in load order each block is decompressed once, not once per module.
    let sort = out.join(".rootfs.sort");
    let order_file = staging.join("lib/modules/load.order");
    let order = std::fs::read_to_string(&order_file).map_err(io_err("read", &order_file))?;
    let sort_list: String = order
        .lines()
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, rel)| format!("lib/modules/{rel} {}\n", 32000 - i as i64))
        .collect();
    std::fs::write(&sort, sort_list).map_err(io_err("write", &sort))?;
    let e = epoch().to_string();
    tools::run(
        Command::new("mksquashfs")
            .arg(&staging)
            .arg(&tmp)
            .arg("-sort")
            .arg(&sort)
            .args([
                "-noappend",
                "-comp",
                "zstd",
                // 1 MiB blocks at zstd's level 19: 6.5 % smaller than the defaults (128 KiB,
                // level 15), and every byte of the rootfs is read by GRUB and copied by the
                // kernel at boot. It costs the build about 10 s more.
                "-b",
                "1M",
                "-Xcompression-level",
                "19",
                "-all-root",
                "-no-xattrs",
                "-quiet",
                "-no-progress",
            ])
            .args(["-mkfs-time", &e, "-all-time", &e, "-processors", "2"]),
    )?;
    let _ = std::fs::remove_file(&sort);
    check_rootfs(&tmp)?;
    crate::verity::append_tree(&tmp)?;
    finish(&tmp, &sqsh)?;
    let _ = std::fs::remove_dir_all(&staging);
    Ok(sqsh)
}

/// `early` (`basalt-early`) is the initramfs's `/init`.
fn build_base_initramfs(early: &Path, kernel: &Kernel, path: &Path) -> Result<(), ImageError> {
    let mut a = Archive::new();
    let init_bytes = std::fs::read(early).map_err(io_err("read", early))?;
    a.add(
        "init",
        Entry::File {
            data: init_bytes,
            executable: true,
        },
    );
    for d in ["dev", "proc", "sys", "run", "tmp", "newroot", "etc/basalt"] {
        a.add(d, Entry::Dir);
    }
    // Without /dev/console the kernel starts init with no stdout.
    a.add("dev/console", Entry::CharDev(5, 1));
    add_modules(kernel, BOOT_MODULES, &mut |rel, data| {
        a.add(
            rel,
            Entry::File {
                data,
                executable: false,
            },
        );
        Ok(())
    })?;
    let tmp = path.with_extension("img.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
    let mtime = u32::try_from(epoch()).unwrap_or(0);
    {
        // gzip with mtime 0 and no file name: deterministic.
        let mut gz = flate2::GzBuilder::new()
            .mtime(0)
            .write(&mut f, flate2::Compression::new(6));
        a.write(&mut gz, mtime).map_err(io_err("write", &tmp))?;
        gz.finish().map_err(io_err("write", &tmp))?;
    }
    f.sync_all().map_err(io_err("sync", &tmp))?;
    finish(&tmp, path)
}

/// The initramfs of the ISO and PXE: the base initramfs, then — as a second, uncompressed
/// cpio archive (the rootfs is compressed already; it starts on a 4-byte boundary) — the
/// rootfs with its dm-verity parameters. The same archive an install writes into a slot as
/// `rootfs.img`, made by the same code.
fn build_initramfs(base: &Path, rootfs: &Path, out: &Path) -> Result<PathBuf, ImageError> {
    let path = out.join("initramfs.img");
    let tmp = out.join(".initramfs.img.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
    let mut head = std::fs::File::open(base).map_err(io_err("read", base))?;
    let len = std::io::copy(&mut head, &mut f).map_err(io_err("write", &tmp))?;
    let pad = (4 - len % 4) % 4;
    f.write_all(&[0u8; 3][..pad as usize])
        .map_err(io_err("write", &tmp))?;
    let verity = crate::verity::read(rootfs)?;
    let sqsh = std::fs::File::open(rootfs).map_err(io_err("read", rootfs))?;
    let size = sqsh.metadata().map_err(io_err("stat", rootfs))?.len();
    let mut archive = basalt_disk::install::rootfs_cpio(verity.to_file().as_bytes(), sqsh, size)
        .map_err(io_err("read", rootfs))?;
    std::io::copy(&mut archive, &mut f).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("sync", &tmp))?;
    finish(&tmp, &path)?;
    Ok(path)
}

/// Where the boot kit sits in the rootfs (an install copies it to the disk).
const KIT_IN_ROOTFS: &str = "usr/lib/basalt/boot";

/// The boot kit in `out/kit` ([`basalt_disk::install::KIT_FILES`]): the kernel, the base
/// initramfs, and GRUB's images for the installed disk — the MBR boot code, the BIOS core
/// image and the UEFI one, both with the prefix `(,gpt2)/grub` (the EFI partition of the
/// disk they were loaded from) and the modules `grub.cfg` uses built in.
fn build_kit(early: &Path, kernel: &Kernel, out: &Path) -> Result<PathBuf, ImageError> {
    need_grub()?;
    let kit = out.join("kit");
    let grub = kit.join("grub");
    std::fs::create_dir_all(&grub).map_err(io_err("create", &grub))?;
    copy(&kernel.vmlinuz, &kit.join("vmlinuz"))?;
    build_base_initramfs(early, kernel, &kit.join("initramfs.img"))?;
    copy(
        Path::new("/usr/lib/grub/i386-pc/boot.img"),
        &grub.join("boot.img"),
    )?;
    let prefix = basalt_disk::grub::prefix();
    let mkimage = |format: &str, output: &Path, extra: &[&str]| {
        let mut c = Command::new("grub-mkimage");
        c.args(["-O", format, "-p", &prefix, "-o"])
            .arg(output)
            .args(GRUB_DISK_MODULES.split(' '))
            .args(extra);
        tools::run(&mut c).map(|_| ())
    };
    mkimage("i386-pc", &grub.join("core.img"), &["biosdisk"])?;
    // The EFI partition's filesystem: GRUB for UEFI and grub.cfg, which BIOS GRUB reads too.
    let staging = out.join(".efi-part-staging");
    let _ = std::fs::remove_dir_all(&staging);
    let boot_efi = staging.join("EFI/BOOT/BOOTX64.EFI");
    std::fs::create_dir_all(staging.join("EFI/BOOT")).map_err(io_err("create", &staging))?;
    std::fs::create_dir_all(staging.join("grub")).map_err(io_err("create", &staging))?;
    mkimage("x86_64-efi", &boot_efi, &[])?;
    write_file(
        &staging.join("grub/grub.cfg"),
        basalt_disk::grub::config().as_bytes(),
        0o644,
    )?;
    let efi_mib = basalt_disk::layout::EFI_MIB;
    fat_image(
        &kit.join("efi.img"),
        efi_mib * 2048,
        "BASALT-EFI",
        &[staging.join("EFI"), staging.join("grub")],
    )?;
    let _ = std::fs::remove_dir_all(&staging);
    Ok(kit)
}

/// A FAT image of `sectors` sectors labelled `label` holding `entries` (directories, copied
/// whole), made by mtools with a fixed serial and `SOURCE_DATE_EPOCH` dates: reproducible.
fn fat_image(
    path: &Path,
    sectors: u64,
    label: &str,
    entries: &[PathBuf],
) -> Result<(), ImageError> {
    tools::need("mformat", "mtools")?;
    let e = epoch();
    for d in entries {
        set_mtimes(d, e)?;
    }
    let _ = std::fs::remove_file(path);
    let epoch_env = e.to_string();
    tools::run(
        Command::new("mformat")
            .arg("-i")
            .arg(path)
            .args([
                "-C",
                "-T",
                &sectors.to_string(),
                "-N",
                "0BA5A171",
                "-v",
                label,
                "::",
            ])
            .env("SOURCE_DATE_EPOCH", &epoch_env),
    )?;
    tools::run(
        Command::new("mcopy")
            .args(["-m", "-s", "-i"])
            .arg(path)
            .args(entries)
            .arg("::/")
            .env("SOURCE_DATE_EPOCH", &epoch_env),
    )?;
    Ok(())
}

/// GRUB modules of the installed disk's images: what `grub.cfg` runs.
const GRUB_DISK_MODULES: &str =
    "normal linux part_gpt fat serial terminal configfile echo test regexp loadenv all_video";

fn need_grub() -> Result<(), ImageError> {
    tools::need("grub-mkimage", "grub-common")?;
    for (dir, pkg) in [
        ("/usr/lib/grub/i386-pc", "grub-pc-bin"),
        ("/usr/lib/grub/x86_64-efi", "grub-efi-amd64-bin"),
    ] {
        if !Path::new(dir).is_dir() {
            return Err(ImageError::MissingTool {
                tool: dir.into(),
                package: pkg.into(),
            });
        }
    }
    Ok(())
}

fn build_pxe(
    vmlinuz: &Path,
    initramfs: &Path,
    cmdline: &str,
    out: &Path,
) -> Result<PathBuf, ImageError> {
    let dir = out.join("pxe");
    std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    copy(vmlinuz, &dir.join("vmlinuz"))?;
    copy(initramfs, &dir.join("initramfs.img"))?;
    // Relative names resolve against the script's own URL, so this works from any TFTP or
    // HTTP server that serves the directory.
    let script = format!(
        "#!ipxe\necho Basalt: loading kernel and initramfs\nkernel vmlinuz initrd=initramfs.img {cmdline}\ninitrd initramfs.img\nboot\n"
    );
    write_file(&dir.join("boot.ipxe"), script.as_bytes(), 0o644)?;
    Ok(dir)
}

/// GRUB modules in the boot images (the BIOS one adds [`GRUB_BIOS_MODULES`]).
const GRUB_MODULES: &str = "normal linux iso9660 part_msdos part_gpt fat search search_fs_file serial terminal configfile echo test all_video regexp";

/// BIOS only: firmware disk I/O, and what the probe in `grub.cfg` needs to switch to GRUB's own
/// AHCI driver (PCI config reads, memory reads, `nativedisk`).
const GRUB_BIOS_MODULES: &[&str] = &["biosdisk", "nativedisk", "setpci", "memrw"];

/// Loaded by `nativedisk ahci` from the medium, not embedded: an embedded disk driver takes
/// over from the firmware at once, on every machine.
const GRUB_NATIVE_AHCI: &[&str] = &["ahci", "ata", "scsi", "boot", "pci"];

/// `grub.cfg`'s first part, on BIOS: when booted from a CD that sits on the AHCI controller at
/// PCI 00:1f.2 (QEMU's q35 and most Intel chipsets; found by an ATAPI signature, 0xeb140101,
/// in a port's PxSIG register), read the rest with GRUB's own AHCI driver. Through the BIOS,
/// GRUB reads at most 36 KiB per call and each call leaves protected mode: under QEMU's
/// emulation that took about 4 s for the kernel and initramfs, natively about 1 s. Any other
/// CD (IDE, virtio-scsi), a USB stick or disk (the hybrid image), or UEFI keeps the
/// firmware's I/O, which always works: switching is one-way (the firmware drivers stop).
const GRUB_AHCI_PROBE: &str = r#"if [ "$grub_platform" = "pc" ]; then
  if regexp '^cd[0-9]*$' "$root"; then
    setpci -s 00:1f.2 -v basalt_class CLASS_DEVICE
    setpci -s 00:1f.2 -v basalt_abar BASE_ADDRESS_5
    if [ "$basalt_class" = "106" ]; then
      if regexp --set=1:basalt_base '^([0-9a-f]+)000$' "$basalt_abar"; then
        for port in 124 1a4 224 2a4 324 3a4; do
          read_dword -v basalt_sig 0x${basalt_base}${port}
          if [ "$basalt_sig" = "eb140101" ]; then set basalt_ahci=1; fi
        done
      fi
    fi
    if [ -n "$basalt_ahci" ]; then
      nativedisk ahci
      echo "basalt: reading the CD with GRUB's AHCI driver"
    fi
  fi
fi
"#;

/// A hybrid BIOS + UEFI ISO, assembled step by step rather than with grub-mkrescue, whose
/// temporary files, random FAT serial and generated UUID search made every build differ:
/// GRUB images from `grub-mkimage` with an embedded config that finds the ISO by a marker
/// file, an EFI system partition image made by mtools with a fixed serial, and xorriso with
/// `SOURCE_DATE_EPOCH` fixing every date and the volume UUID.
fn build_iso(
    vmlinuz: &Path,
    initramfs: &Path,
    cmdline: &str,
    out: &Path,
) -> Result<PathBuf, ImageError> {
    need_grub()?;
    tools::need("xorriso", "xorriso")?;
    tools::need("mformat", "mtools")?;
    let e = epoch();
    let staging = out.join(".iso-staging");
    let _ = std::fs::remove_dir_all(&staging);
    let grub = staging.join("boot/grub");
    std::fs::create_dir_all(&grub).map_err(io_err("create", &grub))?;
    copy(vmlinuz, &staging.join("boot/vmlinuz"))?;
    copy(initramfs, &staging.join("boot/initramfs.img"))?;
    write_file(
        &staging.join("boot/basalt.marker"),
        b"basalt boot media\n",
        0o644,
    )?;
    let cfg = format!(
        "serial --unit=0 --speed=115200\nterminal_input serial console\nterminal_output serial console\n\
         {GRUB_AHCI_PROBE}\
         set timeout=0\nset default=0\n\
         menuentry \"Basalt\" {{\n  linux /boot/vmlinuz {cmdline}\n  initrd /boot/initramfs.img\n}}\n"
    );
    write_file(&grub.join("grub.cfg"), cfg.as_bytes(), 0o644)?;
    let mods = grub.join("i386-pc");
    std::fs::create_dir_all(&mods).map_err(io_err("create", &mods))?;
    for m in GRUB_NATIVE_AHCI {
        copy(
            &Path::new("/usr/lib/grub/i386-pc").join(format!("{m}.mod")),
            &mods.join(format!("{m}.mod")),
        )?;
    }
    let early = out.join(".grub-early.cfg");
    write_file(
        &early,
        b"search --no-floppy --set=root --file /boot/basalt.marker\nset prefix=($root)/boot/grub\nconfigfile $prefix/grub.cfg\n",
        0o644,
    )?;
    let mkimage = |format: &str, output: &Path, extra: &[&str]| -> Result<(), ImageError> {
        let mut c = Command::new("grub-mkimage");
        c.args(["-O", format, "-p", "/boot/grub", "-c"])
            .arg(&early)
            .arg("-o")
            .arg(output);
        c.args(GRUB_MODULES.split(' ')).args(extra);
        tools::run(&mut c).map(|_| ())
    };
    // BIOS: an El Torito image (cdboot.img + core) booted with -boot-info-table.
    let core = out.join(".grub-core.img");
    mkimage("i386-pc", &core, GRUB_BIOS_MODULES)?;
    let mut eltorito = std::fs::read("/usr/lib/grub/i386-pc/cdboot.img").map_err(io_err(
        "read",
        Path::new("/usr/lib/grub/i386-pc/cdboot.img"),
    ))?;
    eltorito.extend(std::fs::read(&core).map_err(io_err("read", &core))?);
    write_file(&grub.join("bios.img"), &eltorito, 0o644)?;
    // UEFI: BOOTX64.EFI in a small FAT image that El Torito points at.
    let efi_dir = out.join(".efi-staging");
    let _ = std::fs::remove_dir_all(&efi_dir);
    let boot_efi = efi_dir.join("EFI/BOOT/BOOTX64.EFI");
    std::fs::create_dir_all(boot_efi.parent().unwrap_or(&efi_dir))
        .map_err(io_err("create", &efi_dir))?;
    mkimage("x86_64-efi", &boot_efi, &[])?;
    let efi_img = grub.join("efi.img");
    fat_image(&efi_img, 8192, "BASALTEFI", &[efi_dir.join("EFI")])?;
    set_mtimes(&staging, e)?;
    let epoch_env = e.to_string();
    let iso = out.join("basalt.iso");
    let tmp = out.join(".basalt.iso.tmp");
    let _ = std::fs::remove_file(&tmp);
    tools::run(
        Command::new("xorriso")
            .args([
                "-as",
                "mkisofs",
                "-quiet",
                "-iso-level",
                "3",
                "-R",
                "-V",
                "BASALT",
            ])
            .args([
                "-b",
                "boot/grub/bios.img",
                "-no-emul-boot",
                "-boot-load-size",
                "4",
                "-boot-info-table",
                "--grub2-boot-info",
            ])
            .args(["--grub2-mbr", "/usr/lib/grub/i386-pc/boot_hybrid.img"])
            .args([
                "-eltorito-alt-boot",
                "-e",
                "boot/grub/efi.img",
                "-no-emul-boot",
                "-isohybrid-gpt-basdat",
            ])
            .arg("-o")
            .arg(&tmp)
            .arg(&staging)
            .env("SOURCE_DATE_EPOCH", &epoch_env),
    )?;
    finish(&tmp, &iso)?;
    for p in [&staging, &efi_dir] {
        let _ = std::fs::remove_dir_all(p);
    }
    let _ = std::fs::remove_file(&core);
    let _ = std::fs::remove_file(&early);
    Ok(iso)
}

/// Sets the mtime of everything under `dir` (tools copy it into the image).
fn set_mtimes(dir: &Path, epoch: u64) -> Result<(), ImageError> {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    for e in std::fs::read_dir(dir)
        .map_err(io_err("read", dir))?
        .flatten()
    {
        let p = e.path();
        if p.is_dir() {
            set_mtimes(&p, epoch)?;
        }
        let f = std::fs::File::open(&p).map_err(io_err("open", &p))?;
        f.set_modified(t).map_err(io_err("set mtime of", &p))?;
    }
    let f = std::fs::File::open(dir).map_err(io_err("open", dir))?;
    f.set_modified(t).map_err(io_err("set mtime of", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_programs_must_be_static() {
        let d = tempfile::tempdir().unwrap();
        let e = read_static(&d.path().join("kubelet"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("kubelet"), "{e}");
        // A dynamically linked program is refused: the rootfs carries no libraries for it.
        std::fs::copy("/bin/true", d.path().join("kubelet")).unwrap();
        let e = read_static(&d.path().join("kubelet"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kubelet is dynamically linked") && e.contains("static"),
            "{e}"
        );
    }

    #[test]
    fn a_kubernetes_image_needs_containerd() {
        let opts = BuildOptions {
            out: tempfile::tempdir().unwrap().path().join("out"),
            init: Some("/nonexistent/init".into()),
            extra_cmdline: Vec::new(),
            verbose: false,
            with_containerd: false,
            kubernetes: true,
            version: None,
        };
        let e = build(Target::Rootfs, &opts).unwrap_err().to_string();
        assert!(e.contains("needs containerd"), "{e}");
    }
}
