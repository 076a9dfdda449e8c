//! The boot chain, for real: the images are built from the pinned kernel and this tree's init,
//! and booted under QEMU (TCG). VM tier: `hack/test` enables it; a plain `cargo test` skips.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use basalt_image::qemu::{Boot, Vm};
use basalt_image::{Artifacts, BuildOptions, Target};
use basalt_testkit::{Tier, tier};

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// One build for every test in this file.
fn artifacts() -> &'static Artifacts {
    static ARTS: OnceLock<Artifacts> = OnceLock::new();
    ARTS.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-images/a");
        let opts = BuildOptions {
            out,
            init: None,
            extra_cmdline: vec!["basalt.reboot_delay=1".into()],
            verbose: false,
            with_containerd: true,
        };
        basalt_image::build(Target::All, &opts).unwrap()
    })
}

/// QEMU runs one at a time: two cores, and TCG is CPU-bound.
fn vm_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn workdir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("vm-runs")
        .join(name)
}

/// The milestones every boot must pass, in order, and what PID 1 reports of its mounts.
fn assert_boots(boot: Boot, name: &str) {
    let _g = vm_lock();
    let mut vm = Vm::start(&boot, &workdir(name), 512).unwrap();
    let mut last = Duration::ZERO;
    for m in [
        "basalt: modules loaded",
        "basalt: rootfs verified",
        "basalt: switched root",
        "basalt: PID 1 running",
    ] {
        let t = vm
            .wait_for(m, BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(t >= last, "{name}: {m} came out of order");
        last = t;
    }
    vm.wait_for("basalt: root is", BOOT_TIMEOUT).unwrap();
    let console = vm.console();
    let mounts = console
        .lines()
        .find(|l| l.contains("basalt: mounts:"))
        .unwrap();
    assert!(mounts.contains("/ squashfs ro"), "{name}: {mounts}");
    assert!(mounts.contains("/var tmpfs rw"), "{name}: {mounts}");
    assert!(
        mounts.contains("/system tmpfs rw") && mounts.contains("/tmp tmpfs rw"),
        "{name}: {mounts}"
    );
    assert!(
        console.contains("basalt: root is read-only; /var is writable"),
        "{name}:\n{console}"
    );
    assert!(!console.contains("FATAL"), "{name}:\n{console}");
    // containerd and runc from the rootfs run: their shared-library closure is complete.
    vm.wait_for("basalt: /usr/sbin/runc: runc version 1.1.5", BOOT_TIMEOUT)
        .unwrap();
    assert!(
        vm.console().contains(
            "basalt: /usr/bin/containerd: containerd github.com/containerd/containerd 1.6.20"
        ),
        "{name}:\n{}",
        vm.console()
    );
    eprintln!(
        "{name}: PID 1 running {:.1} s after QEMU started",
        last.as_secs_f64()
    );
}

#[test]
fn iso_boots_with_seabios() {
    if !tier(Tier::Vm, "iso_boots_with_seabios") {
        return;
    }
    let a = artifacts();
    assert_boots(
        Boot::Iso {
            iso: a.iso.clone().unwrap(),
            uefi: false,
        },
        "iso-bios",
    );
}

#[test]
fn iso_boots_with_ovmf_uefi() {
    if !tier(Tier::Vm, "iso_boots_with_ovmf_uefi") {
        return;
    }
    let a = artifacts();
    assert_boots(
        Boot::Iso {
            iso: a.iso.clone().unwrap(),
            uefi: true,
        },
        "iso-uefi",
    );
}

#[test]
fn pxe_boots_through_qemu_tftp_and_ipxe() {
    if !tier(Tier::Vm, "pxe_boots_through_qemu_tftp_and_ipxe") {
        return;
    }
    let a = artifacts();
    let dir = a.pxe_dir.clone().unwrap();
    assert!(
        std::fs::read_to_string(dir.join("boot.ipxe"))
            .unwrap()
            .starts_with("#!ipxe")
    );
    assert_boots(Boot::Pxe { dir }, "pxe");
}

#[test]
fn a_corrupted_rootfs_stops_boot_names_the_checksum_and_reboots() {
    if !tier(
        Tier::Vm,
        "a_corrupted_rootfs_stops_boot_names_the_checksum_and_reboots",
    ) {
        return;
    }
    let a = artifacts();
    let good = basalt_image::sha256_file(a.rootfs.as_ref().unwrap()).unwrap();
    // The rootfs is the initramfs's trailing, uncompressed archive: flip one of its bytes.
    let mut img = std::fs::read(a.initramfs.as_ref().unwrap()).unwrap();
    let at = img.len() - 4096;
    img[at] ^= 0xff;
    let dir = workdir("corrupt");
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("initramfs-corrupt.img");
    std::fs::write(&bad, &img).unwrap();
    let _g = vm_lock();
    let mut vm = Vm::start(
        &Boot::Kernel {
            vmlinuz: a.vmlinuz.clone().unwrap(),
            initramfs: bad,
            cmdline: format!(
                "{} basalt.reboot_delay=1",
                basalt_image::build::BASE_CMDLINE
            ),
        },
        &dir,
        512,
    )
    .unwrap();
    vm.wait_for("rebooting in 1s", BOOT_TIMEOUT).unwrap();
    // -no-reboot turns the reboot into QEMU exiting: init rebooted instead of panicking.
    assert!(
        vm.wait_exit(Duration::from_secs(60)).is_some(),
        "init did not reboot"
    );
    let console = vm.console();
    let fatal = console.lines().find(|l| l.contains("FATAL")).unwrap();
    assert!(
        fatal.starts_with(&format!(
            "basalt: FATAL: rootfs.sqsh checksum mismatch: expected sha256 {good}, got "
        )),
        "{fatal}"
    );
    assert!(!console.contains("PID 1 running"));
    assert!(!console.contains("Kernel panic"), "{console}");
}

#[test]
fn builds_are_reproducible_and_the_rootfs_has_no_shell() {
    if !tier(
        Tier::Vm,
        "builds_are_reproducible_and_the_rootfs_has_no_shell",
    ) {
        return;
    }
    let a = artifacts();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-images/b");
    let opts = BuildOptions {
        out,
        init: a.init.clone(),
        extra_cmdline: vec!["basalt.reboot_delay=1".into()],
        verbose: false,
        with_containerd: true,
    };
    let b = basalt_image::build(Target::All, &opts).unwrap();
    for (x, y) in [
        (&a.rootfs, &b.rootfs),
        (&a.initramfs, &b.initramfs),
        (&a.iso, &b.iso),
    ] {
        let (x, y) = (x.as_ref().unwrap(), y.as_ref().unwrap());
        assert_eq!(
            basalt_image::sha256_file(x).unwrap(),
            basalt_image::sha256_file(y).unwrap(),
            "{} differs",
            x.display()
        );
    }
    let files = basalt_image::build::check_rootfs(a.rootfs.as_ref().unwrap()).unwrap();
    for f in [
        "/sbin/init",
        "/usr/bin/containerd",
        "/usr/bin/containerd-shim-runc-v2",
        "/usr/sbin/runc",
        "/usr/lib/cni/bridge",
        "/lib64/ld-linux-x86-64.so.2",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libseccomp.so.2",
    ] {
        assert!(files.contains(&f.to_string()), "{f} missing from {files:?}");
    }
    assert!(files.iter().any(|f| f.ends_with("/load.order")));
    // And the check does catch a shell.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("root/bin")).unwrap();
    std::fs::write(dir.path().join("root/bin/sh"), b"").unwrap();
    let sqsh = dir.path().join("bad.sqsh");
    let st = std::process::Command::new("mksquashfs")
        .arg(dir.path().join("root"))
        .arg(&sqsh)
        .args(["-quiet", "-no-progress"])
        .status()
        .unwrap();
    assert!(st.success());
    let err = basalt_image::build::check_rootfs(&sqsh)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "the rootfs holds a shell or package manager: /bin/sh; Basalt has none"
    );
}
