//! What the VM tests and the lifecycle benchmark share: osctl run against a node from a work
//! directory, and a node installed to disk from the ISO as a user installs one.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use basalt_image::qemu::{Boot, Vm, VmOptions};
use basalt_image::{BuildOptions, Target};
use basalt_testkit::free_port;

pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// The lifecycle tests run one at a time: each boots a VM several times over, and the tests
/// of this binary run in parallel on a 2-core machine.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn run(dir: &Path, args: &[&str]) -> Output {
    basalt_testkit::hermetic(&mut Command::new(env!("CARGO_BIN_EXE_osctl")))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn ok(dir: &Path, args: &[&str]) -> String {
    let o = run(dir, args);
    assert!(o.status.success(), "osctl {}: {}", args.join(" "), text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs osctl until its stdout satisfies `pred` (nodes take a moment after a config).
pub fn until(dir: &Path, args: &[&str], timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let o = run(dir, args);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        if o.status.success() && pred(&out) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "osctl {} never got there: {}",
            args.join(" "),
            text(&o)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The ISO the install and upgrade tests boot: it asks for DHCP (QEMU's user network
/// answers), as an ISO for real machines would. Built once, cached by its inputs.
pub fn install_images() -> basalt_image::Artifacts {
    static IMAGES: std::sync::Mutex<Option<basalt_image::Artifacts>> = std::sync::Mutex::new(None);
    let mut built = IMAGES.lock().unwrap_or_else(|p| p.into_inner());
    built
        .get_or_insert_with(|| {
            let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
            basalt_image::build::build_cached(
                Target::Iso,
                &BuildOptions {
                    out: PathBuf::new(),
                    init: None,
                    extra_cmdline: vec!["ip=dhcp".into(), "basalt.reboot_delay=1".into()],
                    verbose: false,
                    with_containerd: true,
                    kubernetes: false,
                    version: None,
                },
                &tmp.join("vm-images/cached"),
            )
            .unwrap()
        })
        .clone()
}

/// Waits until `vm` says it is in maintenance mode and its API at `endpoint` answers so.
pub fn in_maintenance(vm: &mut Vm, dir: &Path, endpoint: &str) {
    vm.wait_for("no config; apply one with", BOOT_TIMEOUT)
        .unwrap();
    until(
        dir,
        &["--insecure", "-n", endpoint, "version"],
        BOOT_TIMEOUT,
        |o| o.contains("maintenance"),
    );
}

/// A node installed the way a user installs one: booted from the ISO with an empty 3 GiB
/// disk, given a worker config with `install.disk: /dev/vda` (BIOS) or a disk selector
/// (UEFI) in maintenance mode (after a config naming a disk that is not there, or a selector
/// no disk matches, is refused, listing the node's disks); it installs
/// and reboots, and is started again from the disk alone. Returns once it answers over
/// mutual TLS.
pub fn installed_node(name: &str, uefi: bool, allow_reboot: bool) -> Installed {
    let a = install_images();
    let (dir, disk, port) = blank_machine(name);
    let e = format!("127.0.0.1:{port}");
    let mut opts = VmOptions {
        memory_mib: 768,
        forward: vec![(port, 50000)],
        disk: Some(disk.clone()),
        // A reboot ends QEMU: the next start is without the ISO.
        allow_reboot: false,
        ..VmOptions::default()
    };
    let mut vm = Vm::start_with(
        &Boot::Iso {
            iso: a.iso.clone().unwrap(),
            uefi,
        },
        &dir.join("iso"),
        &opts,
    )
    .unwrap();
    in_maintenance(&mut vm, &dir, &e);
    let disks = ok(&dir, &["--insecure", "-n", &e, "disks"]);
    assert!(disks.contains("vda"), "{disks}");

    ok(&dir, &["gen", "config", name, "https://10.0.2.15:6443"]);
    // The BIOS run names the disk; the UEFI run picks it by what it is.
    let (missing, install, why) = if uefi {
        (
            "diskSelector:\n    size: \">= 1TB\"\n",
            "diskSelector:\n    size: \">= 3GiB\"\n    bus: virtio\n",
            "install.diskSelector: no disk is size >= 1TB",
        )
    } else {
        (
            "disk: /dev/vdz\n",
            "disk: /dev/vda\n",
            "install.disk /dev/vdz: no such disk",
        )
    };
    for (file, section) in [("missing.yaml", missing), ("install.yaml", install)] {
        let cfg = std::fs::read_to_string(dir.join("worker.yaml")).unwrap();
        let cfg = cfg.replacen(
            "type: worker\n",
            &format!("type: worker\ninstall:\n  {section}"),
            1,
        );
        std::fs::write(dir.join(file), cfg).unwrap();
    }
    let o = run(
        &dir,
        &["apply-config", "--insecure", "-n", &e, "-f", "missing.yaml"],
    );
    assert!(
        !o.status.success() && text(&o).contains(why) && text(&o).contains("/dev/vda (3072 MiB"),
        "{}",
        text(&o)
    );
    let t = Instant::now();
    let out = ok(
        &dir,
        &["apply-config", "--insecure", "-n", &e, "-f", "install.yaml"],
    );
    assert!(out.contains("installing to /dev/vda"), "{out}");
    vm.wait_for("install: done", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let install = t.elapsed();
    assert!(
        vm.wait_exit(BOOT_TIMEOUT).is_some(),
        "{name}: the node did not reboot after installing:\n{}",
        vm.console()
    );
    drop(vm);

    opts.allow_reboot = allow_reboot;
    let t = Instant::now();
    let mut vm = Vm::start_with(&Boot::Disk { uefi }, &dir.join("disk"), &opts).unwrap();
    for m in [
        "basalt: booting slot A",
        "basalt: state: /dev/vda6 on /system/state",
        "basalt: /var: /dev/vda7 (EPHEMERAL) (kept across reboots)",
        "config loaded from /system/state/config/config.yaml",
    ] {
        vm.wait_for(m, BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let osconfig = dir.join("client.yaml");
    let oc = osconfig.to_str().unwrap();
    ok(&dir, &["--osconfig", oc, "config", "merge", "osconfig"]);
    ok(&dir, &["--osconfig", oc, "config", "endpoint", &e]);
    let v = until(&dir, &["--osconfig", oc, "version"], BOOT_TIMEOUT, |o| {
        o.contains("running")
    });
    assert!(
        v.contains("running") && v.contains("A:0.1.0(booted) B:empty"),
        "{name}: {v}"
    );
    Installed {
        vm,
        endpoint: e,
        osconfig,
        dir,
        install,
        boot: t.elapsed(),
        opts,
        uefi,
    }
}

/// A machine to install: a fresh directory `vm-runs/NAME`, an empty 3 GiB disk in it, and a
/// free host port to forward to the node's API: (directory, disk, port).
pub fn blank_machine(name: &str) -> (PathBuf, PathBuf, u16) {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.join("vm-runs").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(3 << 30)
        .unwrap();
    (dir, disk, free_port())
}

/// A node [`installed_node`] made.
pub struct Installed {
    pub vm: Vm,
    pub endpoint: String,
    pub osconfig: PathBuf,
    /// Where osctl runs for it.
    pub dir: PathBuf,
    /// `apply-config` with the install disk → `install: done` on the console.
    pub install: Duration,
    /// QEMU started from the disk → the node answers over mutual TLS, configured.
    pub boot: Duration,
    pub opts: VmOptions,
    pub uefi: bool,
}

/// Pulls the plug on `vm` (QEMU killed) and starts the machine of `dir` again from its disk;
/// the console starts afresh.
pub fn power_cycle(vm: Vm, dir: &Path, opts: &VmOptions, uefi: bool) -> Vm {
    // The old QEMU goes first: it holds the disk image's lock.
    drop(vm);
    Vm::start_with(&Boot::Disk { uefi }, &dir.join("disk"), opts).unwrap()
}

/// Builds an upgrade bundle of the install images' kind at `version`; `init` replaces PID 1
/// (a deliberately broken image).
pub fn bundle(version: &str, init: Option<PathBuf>) -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    basalt_image::build(
        Target::Bundle,
        &BuildOptions {
            out: tmp.join("vm-images/bundle").join(version),
            init,
            extra_cmdline: Vec::new(),
            verbose: false,
            with_containerd: true,
            kubernetes: false,
            version: Some(version.into()),
        },
    )
    .unwrap()
    .bundle
    .unwrap()
}
