//! The Go-built stack: containerd, runc, the CNI plugins, etcd, Kubernetes and CoreDNS, built
//! from their published Go modules with the `go` command.
//!
//! Each component is a Go module of its own under `stack/` (its `go.mod` requires the upstream
//! module at one release; its `go.sum` holds the sums of everything it builds from: the sums
//! are the pins). A component is built once into the cache (`$BASALT_CACHE/stack/`), in a
//! directory named by its version and a key over its `go.mod`, `go.sum`, the Go toolchain and
//! the build recipe: change any of them and it is built again; otherwise it is taken as it is.
//! A build writes into a temporary directory and renames it into place, so a failed build
//! (a module that cannot be downloaded, a sum that does not match) leaves the cache as it was.
//!
//! Builds are reproducible: `-trimpath`, no build id, no VCS stamping, `SOURCE_DATE_EPOCH`-free
//! version strings stamped the way upstream stamps them (`kubelet --version` says
//! `Kubernetes v1.37.2`), stripped, and static (cgo only for runc, which links libseccomp
//! statically as upstream's release does).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sha2::Digest as _;

use crate::{ImageError, hex, io_err};

/// The Go toolchain every component is built with. The `go` command on the machine fetches it
/// from the module proxy (`GOTOOLCHAIN`) when it is another version, so the cache key holds it.
pub const GO_TOOLCHAIN: &str = "go1.26.8";

/// Bumped when the recipe below changes in a way the key must see (flags, tags, stamping).
const RECIPE: &str = "4";

/// One Go program of a component.
#[derive(Debug, Clone, Copy)]
pub struct Program {
    /// Its import path.
    pub package: &'static str,
    /// The file name it is installed as.
    pub name: &'static str,
    /// A package's test binary (`go test -c`), not a command.
    pub test: bool,
    /// The names it also runs as: a multi-call program picks its command by the name it is
    /// run as, and each of these is a symbolic link to it (in the cache and in an image).
    pub links: &'static [&'static str],
}

/// One component: a module under `stack/`, the programs built from it.
#[derive(Debug, Clone, Copy)]
pub struct Component {
    /// Its folder under `stack/` and its cache name.
    pub name: &'static str,
    /// The upstream module whose version the component is.
    pub module: &'static str,
    go_mod: &'static str,
    go_sum: &'static str,
    pub programs: &'static [Program],
    /// cgo on (runc, for libseccomp), else off: every program is static.
    cgo: bool,
    tags: &'static str,
    /// Go files of the component's own module (path in it, text): a main package of ours.
    sources: &'static [(&'static str, &'static str)],
}

macro_rules! component_files {
    ($dir:literal) => {
        (
            include_str!(concat!("../../stack/", $dir, "/go.mod")),
            include_str!(concat!("../../stack/", $dir, "/go.sum")),
        )
    };
}

const fn program(package: &'static str, name: &'static str) -> Program {
    Program {
        package,
        name,
        test: false,
        links: &[],
    }
}

pub static KUBERNETES: Component = {
    let (go_mod, go_sum) = component_files!("kubernetes");
    Component {
        name: "kubernetes",
        module: "k8s.io/kubernetes",
        go_mod,
        go_sum,
        programs: &[
            // The node's five programs linked as one (stack/kubernetes/kube/main.go: each
            // runs through its own command constructor): they share most of their code, and
            // one copy of it is 116 MiB where five were 318 MiB.
            Program {
                package: "basalt.dev/stack/kubernetes/kube",
                name: "kube",
                test: false,
                links: &[
                    "kubelet",
                    "kube-apiserver",
                    "kube-controller-manager",
                    "kube-scheduler",
                    "kube-proxy",
                ],
            },
            program("k8s.io/kubernetes/cmd/kubectl", "kubectl"),
        ],
        cgo: false,
        // What Kubernetes' own release build passes (hack/lib/golang.sh).
        tags: "selinux,notest,grpcnotrace",
        sources: &[(
            "kube/main.go",
            include_str!("../../stack/kubernetes/kube/main.go"),
        )],
    }
};

pub static ETCD: Component = {
    let (go_mod, go_sum) = component_files!("etcd");
    Component {
        name: "etcd",
        module: "go.etcd.io/etcd/server/v3",
        go_mod,
        go_sum,
        programs: &[
            program("go.etcd.io/etcd/server/v3", "etcd"),
            program("go.etcd.io/etcd/etcdutl/v3", "etcdutl"),
        ],
        cgo: false,
        tags: "",
        sources: &[],
    }
};

pub static CONTAINERD: Component = {
    let (go_mod, go_sum) = component_files!("containerd");
    Component {
        name: "containerd",
        module: "github.com/containerd/containerd/v2",
        go_mod,
        go_sum,
        programs: &[
            program(
                "github.com/containerd/containerd/v2/cmd/containerd",
                "containerd",
            ),
            program(
                "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
                "containerd-shim-runc-v2",
            ),
            // Not shipped: the host's, for the image import benchmark's baseline.
            program("github.com/containerd/containerd/v2/cmd/ctr", "ctr"),
        ],
        cgo: false,
        // No btrfs snapshotter (it needs cgo); overlayfs is the one a node uses.
        tags: "no_btrfs,osusergo,netgo,static_build",
        sources: &[],
    }
};

pub static RUNC: Component = {
    let (go_mod, go_sum) = component_files!("runc");
    Component {
        name: "runc",
        module: "github.com/opencontainers/runc",
        go_mod,
        go_sum,
        programs: &[program("github.com/opencontainers/runc", "runc")],
        cgo: true,
        // Upstream's static build, less `libpathrs` (a Rust library Debian 12 does not ship;
        // runc falls back to its Go implementation of the same checks).
        tags: "seccomp,urfave_cli_no_docs,netgo,osusergo",
        sources: &[],
    }
};

pub static CNI: Component = {
    let (go_mod, go_sum) = component_files!("cni");
    Component {
        name: "cni",
        module: "github.com/containernetworking/plugins",
        go_mod,
        go_sum,
        programs: &[
            program(
                "github.com/containernetworking/plugins/plugins/main/bridge",
                "bridge",
            ),
            program(
                "github.com/containernetworking/plugins/plugins/ipam/host-local",
                "host-local",
            ),
            program(
                "github.com/containernetworking/plugins/plugins/main/loopback",
                "loopback",
            ),
            program(
                "github.com/containernetworking/plugins/plugins/meta/portmap",
                "portmap",
            ),
        ],
        cgo: false,
        tags: "",
        sources: &[],
    }
};

pub static COREDNS: Component = {
    let (go_mod, go_sum) = component_files!("coredns");
    Component {
        name: "coredns",
        module: "github.com/coredns/coredns",
        go_mod,
        go_sum,
        programs: &[program("basalt.dev/stack/coredns/coredns", "coredns")],
        cgo: false,
        tags: "",
        sources: &[(
            "coredns/main.go",
            include_str!("../../stack/coredns/coredns/main.go"),
        )],
    }
};

pub static LOCAL_PATH: Component = {
    let (go_mod, go_sum) = component_files!("local-path-provisioner");
    Component {
        name: "local-path-provisioner",
        module: "github.com/rancher/local-path-provisioner",
        go_mod,
        go_sum,
        programs: &[program(
            "github.com/rancher/local-path-provisioner",
            "local-path-provisioner",
        )],
        cgo: false,
        tags: "",
        sources: &[],
    }
};

/// Kubernetes' own e2e suite and its test images' program, for the test command only (never
/// shipped): the same release as [`KUBERNETES`].
pub static KUBERNETES_E2E: Component = {
    let (go_mod, go_sum) = component_files!("kubernetes-e2e");
    Component {
        name: "kubernetes-e2e",
        module: "k8s.io/kubernetes",
        go_mod,
        go_sum,
        programs: &[
            program("k8s.io/kubernetes/test/images/agnhost", "agnhost"),
            Program {
                package: "k8s.io/kubernetes/test/e2e",
                name: "e2e.test",
                test: true,
                links: &[],
            },
        ],
        cgo: false,
        // The Kubernetes component's tags, though upstream's test build passes `selinux` alone:
        // with the same tags, every package the two share is compiled once into Go's build
        // cache (`grpcnotrace` changes gRPC's files, so everything above gRPC would be compiled
        // twice) — a cold build of the suite after the stack's takes 2 minutes, not 14.
        tags: "selinux,notest,grpcnotrace",
        sources: &[],
    }
};

/// The e2e suite (and kubectl, which it drives).
pub static E2E: &[&Component] = &[&KUBERNETES, &KUBERNETES_E2E];

/// What every image with containerd needs.
pub static NODE: &[&Component] = &[&CONTAINERD, &RUNC, &CNI];
/// All of it: what a Kubernetes image needs.
pub static ALL: &[&Component] = &[
    &CONTAINERD,
    &RUNC,
    &CNI,
    &ETCD,
    &KUBERNETES,
    &COREDNS,
    &LOCAL_PATH,
];

impl Component {
    /// The version of the upstream module its `go.mod` requires.
    pub fn version(&self) -> Result<&'static str, ImageError> {
        required_version(self.go_mod, self.module).ok_or_else(|| ImageError::Stack {
            component: self.name,
            message: format!(
                "stack/{}/go.mod does not require {}",
                self.name, self.module
            ),
        })
    }

    /// The cache key: the module files, the toolchain and the recipe.
    fn key(&self) -> String {
        let mut h = sha2::Sha256::new();
        for part in [
            self.go_mod,
            self.go_sum,
            GO_TOOLCHAIN,
            RECIPE,
            self.tags,
            if self.cgo { "cgo" } else { "nocgo" },
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        for (path, text) in self.sources {
            h.update(path.as_bytes());
            h.update([0]);
            h.update(text.as_bytes());
            h.update([0]);
        }
        hex(&h.finalize())[..12].to_string()
    }

    /// `-ldflags`: stripped, no build id, the version stamped where upstream stamps it.
    fn ldflags(&self, version: &str, built: &str) -> String {
        let mut f = vec!["-s".to_string(), "-w".into(), "-buildid=".into()];
        let mut x = |k: &str, v: &str| f.push(format!("-X '{k}={v}'"));
        match self.name {
            "kubernetes" | "kubernetes-e2e" => {
                let minor = version.split('.').nth(1).unwrap_or_default();
                for pkg in [
                    "k8s.io/component-base/version",
                    "k8s.io/client-go/pkg/version",
                ] {
                    x(&format!("{pkg}.gitVersion"), version);
                    x(&format!("{pkg}.gitMajor"), "1");
                    x(&format!("{pkg}.gitMinor"), minor);
                    x(&format!("{pkg}.gitTreeState"), "clean");
                    // A module has no VCS data: no commit, rather than the `$Format:%H$`
                    // placeholder of its source.
                    x(&format!("{pkg}.gitCommit"), "");
                    x(&format!("{pkg}.buildDate"), built);
                }
            }
            "containerd" => {
                let pkg = "github.com/containerd/containerd/v2/version";
                x(&format!("{pkg}.Version"), version);
                x(
                    &format!("{pkg}.Package"),
                    "github.com/containerd/containerd/v2",
                );
            }
            "runc" => x("main.version", version.trim_start_matches('v')),
            "cni" => x(
                "github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion",
                version,
            ),
            // etcd's and CoreDNS's versions are constants in their source.
            _ => {}
        }
        if self.cgo {
            f.push("-linkmode external".into());
            f.push("-extldflags '-static'".into());
        }
        f.join(" ")
    }
}

/// `module vX.Y.Z` from a go.mod's require lines.
fn required_version<'a>(go_mod: &'a str, module: &str) -> Option<&'a str> {
    go_mod.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let first = f.next()?;
        let name = if first == "require" { f.next()? } else { first };
        (name == module).then(|| f.next()).flatten()
    })
}

/// The built programs: name → path.
#[derive(Debug, Clone, Default)]
pub struct Stack {
    programs: BTreeMap<&'static str, PathBuf>,
    /// A multi-call program's other names → its name.
    links: BTreeMap<&'static str, &'static str>,
    versions: BTreeMap<&'static str, &'static str>,
}

impl Stack {
    /// The path of a built program.
    pub fn path(&self, name: &str) -> Result<&Path, ImageError> {
        self.programs
            .get(name)
            .map(PathBuf::as_path)
            .ok_or_else(|| ImageError::Stack {
                component: "stack",
                message: format!("{name} was not built (not one of the components asked for)"),
            })
    }

    /// The program `name` is a link to, when it is one of a multi-call program's names.
    pub fn link_target(&self, name: &str) -> Option<&'static str> {
        self.links.get(name).copied()
    }

    /// Every program, by name (a link's path is the link in the cache).
    pub fn programs(&self) -> impl Iterator<Item = (&'static str, &Path)> {
        self.programs.iter().map(|(k, v)| (*k, v.as_path()))
    }

    /// Component name → upstream version.
    pub fn versions(&self) -> &BTreeMap<&'static str, &'static str> {
        &self.versions
    }
}

/// The stack's programs, built into the cache if they are not there yet. `progress` gets a
/// line for each build (a cold build of everything takes tens of minutes on 2 cores).
pub fn ensure(
    components: &[&Component],
    cache: &Path,
    progress: &dyn Fn(&str),
) -> Result<Stack, ImageError> {
    let root = cache.join("stack");
    std::fs::create_dir_all(&root).map_err(io_err("create", &root))?;
    // One build at a time per cache (tests build images in parallel).
    let lock_path = root.join(".lock");
    let lock = std::fs::File::create(&lock_path).map_err(io_err("create", &lock_path))?;
    lock.lock().map_err(io_err("lock", &lock_path))?;
    let mut stack = Stack::default();
    for c in components {
        let version = c.version()?;
        let dir = root.join(format!("{}-{}-{}", c.name, version, c.key()));
        let complete = c
            .programs
            .iter()
            .all(|p| dir.join(p.name).is_file() && p.links.iter().all(|l| dir.join(l).is_file()));
        if !complete {
            let names: Vec<&str> = c.programs.iter().map(|p| p.name).collect();
            progress(&format!(
                "building {} {version} from Go modules ({}) into {}",
                c.name,
                names.join(", "),
                dir.display()
            ));
            let started = Instant::now();
            build(c, version, &root, &dir)?;
            progress(&format!(
                "built {} {version} in {:.0} s",
                c.name,
                started.elapsed().as_secs_f64()
            ));
        }
        for p in c.programs {
            stack.programs.insert(p.name, dir.join(p.name));
            for l in p.links {
                stack.programs.insert(l, dir.join(l));
                stack.links.insert(l, p.name);
            }
        }
        stack.versions.insert(c.name, version);
    }
    if components.iter().any(|c| c.name == KUBERNETES.name) {
        let version = KUBERNETES.version()?;
        let dir = root.join(format!("pause-{}-{}", version, KUBERNETES.key()));
        if !dir.join("pause").is_file() {
            progress("building pause (static, from Kubernetes' build/pause)");
            build_pause(&root, &dir)?;
        }
        stack.programs.insert("pause", dir.join("pause"));
    }
    drop(lock);
    Ok(stack)
}

/// The `go` command to run: `$BASALT_GO`, else `go` on the `PATH`, else Go's usual place.
fn go_command() -> PathBuf {
    if let Some(p) = std::env::var_os("BASALT_GO") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("go").is_file()))
        .unwrap_or(false);
    if on_path || !Path::new("/usr/local/go/bin/go").is_file() {
        PathBuf::from("go")
    } else {
        PathBuf::from("/usr/local/go/bin/go")
    }
}

fn go(dir: &Path) -> Command {
    let mut cmd = Command::new(go_command());
    cmd.current_dir(dir)
        .env("GOTOOLCHAIN", GO_TOOLCHAIN)
        // go.sum holds every sum: nothing is resolved anew, nothing is stamped from a VCS.
        .env("GOFLAGS", "-mod=readonly -buildvcs=false");
    cmd
}

fn run_go(component: &'static str, cmd: &mut Command) -> Result<String, ImageError> {
    let out = cmd.output().map_err(|e| ImageError::Stack {
        component,
        message: format!(
            "cannot run {}: {e} (install Go: hack/lib.sh's need_go does)",
            go_command().display()
        ),
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The lines that name the module and the cause; go prints a download line per module.
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.starts_with("go: downloading"))
            .collect();
        let tail = lines[lines.len().saturating_sub(12)..].join("\n");
        return Err(ImageError::Stack {
            component,
            message: format!("go {}: {tail}", out.status),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn build(c: &Component, version: &str, root: &Path, dir: &Path) -> Result<(), ImageError> {
    if c.cgo && !Path::new("/usr/include/seccomp.h").is_file() {
        return Err(ImageError::MissingTool {
            tool: "libseccomp's headers".into(),
            package: "libseccomp-dev".into(),
        });
    }
    let tmp = root.join(format!(".build-{}-{}", c.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let src = tmp.join("src");
    let bin = tmp.join("bin");
    std::fs::create_dir_all(&src).map_err(io_err("create", &src))?;
    std::fs::create_dir_all(&bin).map_err(io_err("create", &bin))?;
    let result = (|| {
        for (name, text) in [("go.mod", c.go_mod), ("go.sum", c.go_sum)]
            .into_iter()
            .chain(c.sources.iter().copied())
        {
            let p = src.join(name);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(io_err("create", parent))?;
            }
            std::fs::write(&p, text).map_err(io_err("write", &p))?;
        }
        // The release's time (from the module proxy), for the build date upstream stamps.
        let time = run_go(
            c.name,
            go(&src).args(["list", "-m", "-f", "{{.Time}}", c.module]),
        )?;
        let built = time
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join("T")
            + "Z";
        let mut cmd = go(&src);
        cmd.env("CGO_ENABLED", if c.cgo { "1" } else { "0" })
            .args(["build", "-trimpath", "-o"])
            .arg(&bin)
            .arg(format!("-ldflags={}", c.ldflags(version, &built)));
        if !c.tags.is_empty() {
            cmd.arg(format!("-tags={}", c.tags));
        }
        let commands: Vec<&str> = c
            .programs
            .iter()
            .filter(|p| !p.test)
            .map(|p| p.package)
            .collect();
        if !commands.is_empty() {
            cmd.args(commands);
            run_go(c.name, &mut cmd)?;
        }
        for p in c.programs.iter().filter(|p| p.test) {
            let mut cmd = go(&src);
            cmd.env("CGO_ENABLED", if c.cgo { "1" } else { "0" })
                .args(["test", "-c", "-trimpath", "-o"])
                .arg(bin.join(p.name))
                .arg(format!("-ldflags={}", c.ldflags(version, &built)));
            if !c.tags.is_empty() {
                cmd.arg(format!("-tags={}", c.tags));
            }
            run_go(c.name, cmd.arg(p.package))?;
        }
        // `go build -o DIR` names a program after its package's last element.
        for p in c.programs.iter().filter(|p| !p.test) {
            let built_as = bin.join(p.package.rsplit('/').next().unwrap_or(p.name));
            let built_as = if built_as.is_file() {
                built_as
            } else {
                // A module root whose path ends in a major version (…/server/v3) is named
                // after the element before it.
                let mut parts = p.package.rsplit('/');
                let last = parts.next().unwrap_or_default();
                let before = parts.next().unwrap_or_default();
                if last.starts_with('v') && last[1..].bytes().all(|b| b.is_ascii_digit()) {
                    bin.join(before)
                } else {
                    built_as
                }
            };
            let want = bin.join(p.name);
            if built_as != want {
                std::fs::rename(&built_as, &want).map_err(io_err("rename", &built_as))?;
            }
            for l in p.links {
                let link = bin.join(l);
                std::os::unix::fs::symlink(p.name, &link).map_err(io_err("link", &link))?;
            }
        }
        let _ = std::fs::remove_dir_all(dir);
        std::fs::rename(&bin, dir).map_err(io_err("rename", &bin))?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// Where the Go module cache holds the source of a component's upstream module (downloaded
/// first if it is not there), at the version its `go.mod` pins.
pub fn module_dir(c: &Component) -> Result<PathBuf, ImageError> {
    let work =
        std::env::temp_dir().join(format!("basalt-module-{}-{}", c.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io_err("create", &work))?;
    let result = (|| {
        for (name, text) in [("go.mod", c.go_mod), ("go.sum", c.go_sum)] {
            let p = work.join(name);
            std::fs::write(&p, text).map_err(io_err("write", &p))?;
        }
        let dir = run_go(
            c.name,
            go(&work).args(["list", "-m", "-f", "{{.Dir}}", c.module]),
        )?;
        Ok(PathBuf::from(dir.trim()))
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// Kubernetes' pod sandbox program, from the `build/pause` of the Kubernetes module, static,
/// with the version its Makefile gives it.
fn build_pause(root: &Path, dir: &Path) -> Result<(), ImageError> {
    let src_dir = root.join(format!(".pause-src-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&src_dir);
    std::fs::create_dir_all(&src_dir).map_err(io_err("create", &src_dir))?;
    let result = (|| {
        let pause_dir = module_dir(&KUBERNETES)?.join("build/pause");
        let makefile = pause_dir.join("Makefile");
        let text = std::fs::read_to_string(&makefile).map_err(io_err("read", &makefile))?;
        let tag = pause_tag(&text).ok_or_else(|| ImageError::Stack {
            component: "pause",
            message: format!("no `TAG ?=` line in {}", makefile.display()),
        })?;
        crate::tools::need("gcc", "gcc")?;
        let tmp = src_dir.join("pause");
        crate::tools::run(
            Command::new("gcc")
                .args(["-Os", "-Wall", "-Werror", "-static", "-s"])
                .arg(format!("-DVERSION=v{tag}"))
                .arg("-o")
                .arg(&tmp)
                .arg(pause_dir.join("linux/pause.c")),
        )?;
        // The version first: `pause` itself is what marks the directory complete.
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let version = dir.join("version");
        std::fs::write(&version, format!("{tag}\n")).map_err(io_err("write", &version))?;
        let dest = dir.join("pause");
        std::fs::rename(&tmp, &dest).map_err(io_err("rename", &tmp))?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&src_dir);
    result
}

/// `TAG ?= 3.10.2` → `3.10.2`.
fn pause_tag(makefile: &str) -> Option<&str> {
    makefile.lines().find_map(|l| {
        let rest = l.strip_prefix("TAG")?.trim_start().strip_prefix("?=")?;
        Some(rest.trim())
    })
}

/// The pause image's tag (what the kubelet and containerd ask for), from a built stack.
pub fn pause_version(stack: &Stack) -> Result<String, ImageError> {
    let pause = stack.path("pause")?;
    let file = pause.with_file_name("version");
    let text = std::fs::read_to_string(&file).map_err(io_err("read", &file))?;
    Ok(text.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_component_names_its_upstream_version() {
        for c in ALL {
            let v = c.version().unwrap();
            assert!(v.starts_with('v'), "{}: {v}", c.name);
        }
        assert!(KUBERNETES.version().unwrap().starts_with("v1.3"));
    }

    #[test]
    fn require_lines_in_both_forms() {
        let m = "module x\n\nrequire a/b v1.2.3\nrequire (\n\tc/d v0.1.0 // indirect\n)\n";
        assert_eq!(required_version(m, "a/b"), Some("v1.2.3"));
        assert_eq!(required_version(m, "c/d"), Some("v0.1.0"));
        assert_eq!(required_version(m, "e/f"), None);
    }

    #[test]
    fn the_key_follows_the_pins() {
        let mut c = Component {
            name: "x",
            module: "m",
            go_mod: "module x\nrequire m v1.0.0\n",
            go_sum: "m v1.0.0 h1:aaa\n",
            programs: &[],
            cgo: false,
            tags: "",
            sources: &[],
        };
        let k1 = c.key();
        c.go_sum = "m v1.0.0 h1:bbb\n";
        assert_ne!(k1, c.key());
        // And a source of our own.
        let k2 = c.key();
        c.sources = &[("cmd/main.go", "package main\n")];
        assert_ne!(k2, c.key());
    }

    #[test]
    fn kubernetes_is_stamped_as_upstream_stamps_it() {
        let f = KUBERNETES.ldflags("v1.37.2", "2026-10-27T12:01:04Z");
        assert!(f.contains("-X 'k8s.io/component-base/version.gitVersion=v1.37.2'"));
        assert!(f.contains("-X 'k8s.io/component-base/version.gitMinor=37'"));
        assert!(f.contains("buildDate=2026-10-27T12:01:04Z"));
        assert!(f.contains("-buildid="));
        assert!(RUNC.ldflags("v1.5.3", "").contains("main.version=1.5.3"));
    }

    /// A sum that does not match stops the build with the module's name and go's reason, and
    /// the cache holds nothing of it afterwards (VM tier: it needs Go and the module proxy, as
    /// the VM tier's image builds do).
    #[test]
    fn a_sum_mismatch_stops_the_build_and_leaves_the_cache() {
        if !basalt_testkit::tier(basalt_testkit::Tier::Vm, "stack sum mismatch") {
            return;
        }
        // CNI's go.sum with the plugins module's own hash altered.
        let bad_sum: String = CNI
            .go_sum
            .lines()
            .map(|l| {
                if l.starts_with("github.com/containernetworking/plugins v1.10.0 h1:") {
                    "github.com/containernetworking/plugins v1.10.0 h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
                        .to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let bad = Component {
            go_sum: Box::leak(bad_sum.into_boxed_str()),
            ..CNI
        };
        let cache = tempfile::tempdir().unwrap();
        let e = ensure(&[&bad], cache.path(), &|_| {})
            .unwrap_err()
            .to_string();
        eprintln!("{e}");
        assert!(
            e.contains("github.com/containernetworking/plugins") && e.contains("checksum mismatch"),
            "{e}"
        );
        let left: Vec<_> = std::fs::read_dir(cache.path().join("stack"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".lock")
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn pause_tag_from_the_makefile() {
        assert_eq!(pause_tag("X := 1\nTAG ?= 3.10.2\n"), Some("3.10.2"));
        assert_eq!(pause_tag("TAGS = x\n"), None);
    }
}
