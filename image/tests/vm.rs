//! The boot chain, for real: the images are built from the pinned kernel and this tree's init,
//! and booted under QEMU (TCG). VM tier: `hack/test` enables it; a plain `cargo test` skips.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use basalt_image::qemu::{Boot, Vm, VmOptions};
use basalt_image::{Artifacts, BuildOptions, Target};
use basalt_testkit::{Tier, tier};

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// The rootfs scrub waits 5 minutes after boot by default; these boots check it at once.
const SCRUB_AT_ONCE: &str = "basalt.scrub_delay=0";

/// One build for every test in this file.
fn artifacts() -> &'static Artifacts {
    static ARTS: OnceLock<Artifacts> = OnceLock::new();
    ARTS.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-images/a");
        let opts = BuildOptions {
            out,
            init: None,
            extra_cmdline: vec!["basalt.reboot_delay=1".into(), SCRUB_AT_ONCE.into()],
            verbose: false,
            with_containerd: true,
            kubernetes: false,
            version: None,
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
/// Boots and checks the milestones and mounts; returns the console.
fn assert_boots(boot: Boot, name: &str) -> String {
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
    // The whole line: the console file is read while QEMU is still writing it.
    vm.wait_for("basalt: root is read-only; /var is writable", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{name}: {e}\n{}", vm.console()));
    let console = vm.console();
    let mounts = console
        .lines()
        .find(|l| l.contains("basalt: mounted mounts="))
        .unwrap_or_else(|| panic!("{name}: no mounts line:\n{console}"));
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
    // containerd from the rootfs runs under the supervisor and answers its API (its
    // shared-library closure is complete, its generated config is good).
    vm.wait_for("basalt: service containerd: healthy", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    vm.wait_for("basalt: maintenance mode: no config", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    // PID 1 read the whole rootfs once through dm-verity: every block matched the tree.
    vm.wait_for("basalt: rootfs scrubbed: all", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{name}: {e}\n{}", vm.console()));
    eprintln!(
        "{name}: PID 1 running {:.1} s after QEMU started",
        last.as_secs_f64()
    );
    vm.console()
}

#[test]
fn iso_boots_with_seabios() {
    if !tier(Tier::Vm, "iso_boots_with_seabios") {
        return;
    }
    let a = artifacts();
    let console = assert_boots(
        Boot::Iso {
            iso: a.iso.clone().unwrap(),
            uefi: false,
        },
        "iso-bios",
    );
    // The CD is on q35's AHCI controller: GRUB's probe finds it there and reads the kernel
    // and initramfs with its own driver instead of the BIOS's.
    assert!(
        console.contains("basalt: reading the CD with GRUB's AHCI driver"),
        "{console}"
    );
}

#[test]
fn iso_boots_with_ovmf_uefi() {
    if !tier(Tier::Vm, "iso_boots_with_ovmf_uefi") {
        return;
    }
    let a = artifacts();
    let console = assert_boots(
        Boot::Iso {
            iso: a.iso.clone().unwrap(),
            uefi: true,
        },
        "iso-uefi",
    );
    // UEFI reads through the firmware: the BIOS-only probe never runs there.
    assert!(!console.contains("GRUB's AHCI driver"), "{console}");
}

/// A disk the installer wrote (run here on a disk image file, as a node runs it on its own
/// disk) boots by itself, through SeaBIOS and through OVMF: GRUB from the disk, slot A, the
/// same early boot, and PID 1 finds the installed STATE partition.
#[test]
fn an_installed_disk_boots_with_seabios_and_ovmf() {
    if !tier(Tier::Vm, "an_installed_disk_boots_with_seabios_and_ovmf") {
        return;
    }
    let a = artifacts();
    let rootfs = a.rootfs.clone().unwrap();
    let image = basalt_disk::install::SlotImage {
        kit: basalt_disk::install::Kit::new(a.kit.clone().unwrap()),
        verity: basalt_image::verity::read(&rootfs).unwrap().to_file(),
        rootfs,
        cmdline: format!(
            "{} basalt.reboot_delay=1 {SCRUB_AT_ONCE}",
            basalt_image::build::BASE_CMDLINE
        ),
        version: "test-1".into(),
    };
    for uefi in [false, true] {
        let name = if uefi { "disk-uefi" } else { "disk-bios" };
        let dir = workdir(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let disk = dir.join("disk.img");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(3 << 30)
            .unwrap();
        basalt_disk::install::check(&disk, false).unwrap();
        basalt_disk::install::install(&disk, &image, Path::new("mke2fs"), &|c| c.output(), &|_| {})
            .unwrap();
        // A second install over it is refused without wipe, naming what is there.
        let e = basalt_disk::install::check(&disk, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a Basalt installation") && e.contains("install.wipe"),
            "{e}"
        );

        let _g = vm_lock();
        let mut vm = Vm::start_with(
            &Boot::Disk { uefi },
            &dir,
            &VmOptions {
                memory_mib: 512,
                disk: Some(disk.clone()),
                ..VmOptions::default()
            },
        )
        .unwrap();
        for m in [
            "basalt: booting slot A",
            "basalt: rootfs verified",
            "basalt: PID 1 running",
            "basalt: state: /dev/vda6 on /system/state",
            "basalt: root is read-only; /var is writable",
        ] {
            vm.wait_for(m, BOOT_TIMEOUT)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let console = vm.console();
        assert!(
            console.contains("booted from slot A of the installed disk"),
            "{name}: {console}"
        );
    }
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

/// Boots the initramfs with one byte of the rootfs's data block `block` flipped; returns the
/// FATAL line, after checking init rebooted (no kernel panic) before PID 1 ran on bad data.
fn boot_with_corrupted_block(a: &Artifacts, block: u64, name: &str) -> String {
    let rootfs = std::fs::read(a.rootfs.as_ref().unwrap()).unwrap();
    // The rootfs is the initramfs's trailing, uncompressed archive.
    let mut img = std::fs::read(a.initramfs.as_ref().unwrap()).unwrap();
    let start = img
        .windows(4096)
        .position(|w| w == &rootfs[..4096])
        .unwrap();
    img[start + usize::try_from(block * 4096).unwrap() + 123] ^= 0xff;
    let dir = workdir(name);
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("initramfs-corrupt.img");
    std::fs::write(&bad, &img).unwrap();
    let _g = vm_lock();
    let mut vm = Vm::start(
        &Boot::Kernel {
            vmlinuz: a.vmlinuz.clone().unwrap(),
            initramfs: bad,
            cmdline: format!(
                "{} basalt.reboot_delay=1 {SCRUB_AT_ONCE}",
                basalt_image::build::BASE_CMDLINE
            ),
        },
        &dir,
        512,
    )
    .unwrap();
    vm.wait_for("rebooting in 1s", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{name}: {e}\n{}", vm.console()));
    // -no-reboot turns the reboot into QEMU exiting: init rebooted instead of panicking.
    assert!(
        vm.wait_exit(Duration::from_secs(60)).is_some(),
        "{name}: init did not reboot"
    );
    let console = vm.console();
    assert!(!console.contains("Kernel panic"), "{name}:\n{console}");
    assert!(!console.contains("rootfs scrubbed"), "{name}:\n{console}");
    // The line as Basalt wrote it: an error-level line is echoed by the kernel itself, after
    // its timestamp (`[    2.91] basalt: FATAL: ...`).
    let line = console
        .lines()
        .find(|l| l.contains("basalt: FATAL"))
        .unwrap_or_else(|| panic!("{name}:\n{console}"));
    line[line.find("basalt: FATAL").unwrap_or(0)..].to_string()
}

/// The rootfs is checked block by block as it is read (dm-verity), and read whole once in the
/// background after PID 1 starts: a flipped byte stops the node wherever it is, with a message
/// that names the mismatch, the root hash and the block, then a reboot.
#[test]
fn a_corrupted_rootfs_stops_boot_names_the_checksum_and_reboots() {
    if !tier(
        Tier::Vm,
        "a_corrupted_rootfs_stops_boot_names_the_checksum_and_reboots",
    ) {
        return;
    }
    let a = artifacts();
    let v = basalt_image::verity::read(a.rootfs.as_ref().unwrap()).unwrap();
    let prefix = "basalt: FATAL: rootfs.sqsh checksum mismatch: ";
    // The last data block holds the SquashFS tables the mount reads: early init stops.
    let last = v.data_blocks - 1;
    let fatal = boot_with_corrupted_block(a, last, "corrupt-mount");
    assert!(
        fatal.starts_with(&format!(
            "{prefix}a block the mount read does not match dm-verity root hash {}",
            v.root_hex()
        )),
        "{fatal}"
    );
    assert!(
        fatal.contains(&format!("data block {last} is corrupted")),
        "{fatal}"
    );
    // A block in the middle: whoever reads it first (early init reading /sbin/init, or the
    // background scrub) stops the node, naming the block.
    let mid = v.data_blocks / 2;
    let fatal = boot_with_corrupted_block(a, mid, "corrupt-middle");
    assert!(fatal.starts_with(prefix), "{fatal}");
    assert!(
        fatal.contains(&format!("root hash {}", v.root_hex())),
        "{fatal}"
    );
    assert!(
        fatal.contains(&format!(
            "(kernel: device-mapper: verity: 7:0: data block {mid} is corrupted"
        )),
        "{fatal}"
    );
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
        extra_cmdline: vec!["basalt.reboot_delay=1".into(), SCRUB_AT_ONCE.into()],
        verbose: false,
        with_containerd: true,
        kubernetes: false,
        version: None,
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
        "/etc/passwd",
    ] {
        assert!(files.contains(&f.to_string()), "{f} missing from {files:?}");
    }
    // The stack's programs are static: an image without Kubernetes carries shared libraries
    // only for mke2fs (an install runs it), and exactly its closure.
    let mut libs: Vec<&str> = files
        .iter()
        .filter(|f| f.contains("/ld-linux") || f.contains(".so"))
        .filter_map(|f| f.rsplit('/').next())
        .collect();
    libs.sort_unstable();
    libs.dedup();
    assert_eq!(
        libs,
        [
            "ld-linux-x86-64.so.2",
            "libblkid.so.1",
            "libc.so.6",
            "libcom_err.so.2",
            "libe2p.so.2",
            "libext2fs.so.2",
            "libuuid.so.1"
        ],
        "{files:?}"
    );
    assert!(files.contains(&"/sbin/mke2fs".to_string()));
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

mod node {
    //! The node through its API: maintenance mode, apply-config, services, restart on kill,
    //! reboot with the config kept, a tried config reverted, an invalid config refused.

    use super::*;
    use basalt_api::machine as pb;
    use basalt_api::machine::machine_client::MachineClient;
    use tonic::Code;
    use tonic::transport::Channel;

    const CP: &str = include_str!("../../config/testdata/valid/controlplane.yaml");

    /// A client for a node in maintenance mode (TLS, the node not checked).
    fn insecure_client(port: u16) -> MachineClient<Channel> {
        let cfg = basalt_api::tls::insecure_client_config();
        MachineClient::new(basalt_api::tls::channel(&format!("127.0.0.1:{port}"), cfg).unwrap())
    }

    /// A client with a certificate for `role` from the OS CA of the test config, as
    /// `osctl gen config` makes them.
    fn client(port: u16, role: &str) -> MachineClient<Channel> {
        let cfg = basalt_config::Config::parse(CP, basalt_config::Mode::Metal).unwrap();
        let cc = basalt_config::generate::client_config(cfg.secrets(), "vm", Vec::new(), role, 1)
            .unwrap();
        let ctx = &cc.contexts["vm"];
        let id = basalt_api::tls::Identity {
            crt: ctx.crt.0.as_str().to_string(),
            key: ctx.key.0.as_str().to_string(),
        };
        let tls = basalt_api::tls::client_config(ctx.ca.0.as_str(), &id).unwrap();
        MachineClient::new(basalt_api::tls::channel(&format!("127.0.0.1:{port}"), tls).unwrap())
    }

    use basalt_testkit::free_port;

    fn apply(data: &str, mode: pb::ApplyMode, try_secs: u32) -> pb::ApplyConfigurationRequest {
        pb::ApplyConfigurationRequest {
            data: data.as_bytes().to_vec(),
            mode: mode as i32,
            dry_run: false,
            try_timeout_seconds: try_secs,
        }
    }

    /// Retries `f` until it succeeds (apid restarts when the config changes; QEMU's port
    /// forward accepts before the guest listens).
    async fn until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match f().await {
                Ok(v) => return v,
                Err(e) if std::time::Instant::now() > deadline => panic!("{what}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// The last `tail` lines of a log (a service's, or `init`'s), through the Logs API.
    async fn log_lines(c: &mut MachineClient<Channel>, id: &str, tail: u32) -> Vec<String> {
        let mut logs = c
            .logs(pb::LogsRequest {
                id: id.into(),
                follow: false,
                tail_lines: tail,
            })
            .await
            .unwrap()
            .into_inner();
        let mut lines = Vec::new();
        while let Some(l) = logs.message().await.unwrap() {
            lines.push(l.line);
        }
        lines
    }

    async fn services(c: &mut MachineClient<Channel>) -> Result<Vec<pb::ServiceInfo>, String> {
        c.service_list(pb::ServiceListRequest {})
            .await
            .map(|r| r.into_inner().services)
            .map_err(|e| e.to_string())
    }

    async fn healthy(c: &mut MachineClient<Channel>, id: &str) -> Result<pb::ServiceInfo, String> {
        let s = services(c).await?;
        s.into_iter()
            .find(|s| s.id == id && s.state == "running" && s.health == "healthy")
            .ok_or_else(|| format!("{id} not running and healthy yet"))
    }

    async fn labels(c: &mut MachineClient<Channel>) -> Result<String, String> {
        c.get(pb::GetRequest {
            r#type: "machineconfig".into(),
            id: "MachineConfig".into(),
            namespace: String::new(),
        })
        .await
        .map(|r| r.into_inner().spec_json)
        .map_err(|e| e.to_string())
    }

    #[test]
    fn node_lifecycle_through_the_api() {
        if !tier(Tier::Vm, "node_lifecycle_through_the_api") {
            return;
        }
        let a = artifacts();
        let dir = workdir("node");
        std::fs::create_dir_all(&dir).unwrap();
        let disk = dir.join("state.img");
        basalt_image::qemu::state_disk(&disk, 64).unwrap();
        let port = free_port();
        let _g = vm_lock();
        let mut vm = Vm::start_with(
            &Boot::node(a, "node1").unwrap(),
            &dir,
            &VmOptions {
                memory_mib: 1024,
                forward: vec![(port, basalt_api::APID_PORT)],
                disk: Some(disk),
                allow_reboot: true,
                extra_nics: 0,
                forward_udp: Vec::new(),
                tap: None,
                cpus: 1,
                rtc_base: None,
                disk_boots_first: false,
            },
        )
        .unwrap();
        // The whole banner line, with the address (the console file is read as it grows).
        vm.wait_for("no config; apply one with", BOOT_TIMEOUT)
            .unwrap();
        vm.wait_for("on 10.0.2.15:50000", BOOT_TIMEOUT).unwrap();
        let console = vm.console();
        assert!(
            console.contains("basalt: state: /dev/vda on /system/state"),
            "{console}"
        );
        assert!(
            console.contains("basalt: network: eth0 10.0.2.15/24 via 10.0.2.2"),
            "{console}"
        );

        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut c = insecure_client(port);
            let v = until("version in maintenance", BOOT_TIMEOUT, || {
                let mut c = c.clone();
                async move {
                    c.version(pb::VersionRequest {})
                        .await
                        .map(|r| r.into_inner())
                        .map_err(|e| e.to_string())
                }
            })
            .await;
            assert_eq!(v.mode, "maintenance");
            assert!(v.kernel.starts_with("6.1."), "{v:?}");
            let e = c.service_list(pb::ServiceListRequest {}).await.unwrap_err();
            assert_eq!(e.code(), Code::PermissionDenied, "{e}");

            // An invalid config: every problem returned, nothing changed.
            let bad = CP
                .replace("type: controlplane", "type: boss")
                .replace("name: demo", "name: -x-");
            let e = c
                .apply_configuration(apply(&bad, pb::ApplyMode::NoReboot, 0))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
            assert!(
                e.message().contains("config has 2 problems"),
                "{}",
                e.message()
            );
            let v = c.version(pb::VersionRequest {}).await.unwrap().into_inner();
            assert_eq!(v.mode, "maintenance");

            let r = c
                .apply_configuration(apply(CP, pb::ApplyMode::NoReboot, 0))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.summary, "applied live and saved");

            // From now on: mutual TLS with certificates from the config's OS CA.
            let mut c = client(port, "os:admin");

            // apid comes back out of maintenance mode; containerd and apid run and are healthy.
            let t0 = std::time::Instant::now();
            let ctd = until("containerd healthy", BOOT_TIMEOUT, || {
                let mut c = c.clone();
                async move { healthy(&mut c, "containerd").await }
            })
            .await;
            until("apid healthy", BOOT_TIMEOUT, || {
                let mut c = c.clone();
                async move { healthy(&mut c, "apid").await }
            })
            .await;
            eprintln!(
                "services healthy {:.1} s after the config",
                t0.elapsed().as_secs_f64()
            );
            // A reader may look but not reboot, and is told which role it needs.
            let mut reader = client(port, "os:reader");
            assert!(reader.service_list(pb::ServiceListRequest {}).await.is_ok());
            let e = reader.reboot(pb::RebootRequest {}).await.unwrap_err();
            assert_eq!(e.code(), Code::PermissionDenied);
            assert_eq!(
                e.message(),
                "Reboot needs role os:operator or higher; this caller has os:reader"
            );
            // The test image in the rootfs was imported at boot; run it and read its output.
            let images = until("hello image imported", Duration::from_secs(120), || {
                let mut c = c.clone();
                async move {
                    let i = c.images(pb::ImagesRequest { namespace: String::new() }).await.map_err(|e| e.to_string())?.into_inner();
                    if i.images.iter().any(|i| i.name == "basalt.local/hello:v1") { Ok(i) } else { Err(format!("{i:?}")) }
                }
            })
            .await;
            assert!(images.images[0].digest.starts_with("sha256:"), "{images:?}");
            let run = c
                .run_container(pb::RunContainerRequest {
                    image: "basalt.local/hello:v1".into(),
                    args: vec!["from".into(), "the".into(), "test".into()],
                    id: "hello-1".into(),
                    remove: false,
                })
                .await
                .unwrap()
                .into_inner();
            let out = String::from_utf8_lossy(&run.stdout).to_string();
            assert_eq!(run.exit_code, 0, "{out}{}", String::from_utf8_lossy(&run.stderr));
            assert!(out.starts_with("hello from a Basalt container\nargs: from the test\npid: 1\nhostname: hello-1\n"), "{out}");
            let cs = c.containers(pb::ContainersRequest { namespace: String::new() }).await.unwrap().into_inner();
            assert!(cs.containers.iter().any(|x| x.id == "hello-1" && x.image == "basalt.local/hello:v1"), "{cs:?}");
            let run = c
                .run_container(pb::RunContainerRequest {
                    image: "basalt.local/hello:v1".into(),
                    args: vec!["--exit".into(), "7".into()],
                    id: String::new(),
                    remove: true,
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(run.exit_code, 7);
            let cs = c.containers(pb::ContainersRequest { namespace: String::new() }).await.unwrap().into_inner();
            assert_eq!(cs.containers.len(), 1, "the removed run is gone: {cs:?}");

            // kill -9 of containerd: restarted within its back-off.
            let r = c
                .service_kill(pb::ServiceKillRequest {
                    id: "containerd".into(),
                    signal: "KILL".into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                r.summary,
                format!("SIGKILL sent to service containerd (pid {})", ctd.pid)
            );
            let t = std::time::Instant::now();
            let again = until("containerd back", Duration::from_secs(60), || {
                let mut c = c.clone();
                let old = ctd.pid;
                async move {
                    let s = healthy(&mut c, "containerd").await?;
                    if s.pid != old {
                        Ok(s)
                    } else {
                        Err("same pid".into())
                    }
                }
            })
            .await;
            eprintln!(
                "containerd restarted and healthy {:.1} s after kill -9",
                t.elapsed().as_secs_f64()
            );
            assert_eq!(again.restarts, 1);
            let backoff = again
                .events
                .iter()
                .find(|e| e.state == "backing-off")
                .unwrap();
            assert!(
                backoff
                    .message
                    .starts_with("killed by SIGKILL; restarting in 250 ms"),
                "{backoff:?}"
            );

            // Logs of a service, through apid.
            let lines = log_lines(&mut c, "containerd", 500).await;
            assert!(
                lines.iter().any(|l| l == "exited (killed by SIGKILL)"),
                "{lines:?}"
            );

            // init's log holds the events of the libraries PID 1 runs, with their fields:
            // networkd's netlink operations (its `tracing` events, through PID 1's one
            // pipeline), not only init's own lines.
            let lines = log_lines(&mut c, "init", 2000).await;
            assert!(
                lines
                    .iter()
                    .any(|l| l.starts_with("networkd: applied op=") && l.contains("eth0")),
                "no networkd event in init's log: {lines:?}"
            );
            // init's own lines are there too, from the first (logged before the ring existed).
            // (The certificate's line carries the addresses it names as a field.)
            for own in ["PID 1 running", "apid certificate issued from the OS CA"] {
                assert!(
                    lines
                        .iter()
                        .any(|l| l == own || l.starts_with(&format!("{own} "))),
                    "no {own:?}: {lines:?}"
                );
            }

            // A tried config comes back out after its timeout.
            let tried = CP.replacen(
                "type: controlplane\n",
                "type: controlplane\nnodeLabels:\n  zone: tried\n",
                1,
            );
            let r = c
                .apply_configuration(apply(&tried, pb::ApplyMode::Try, 5))
                .await
                .unwrap()
                .into_inner();
            assert!(
                r.summary.starts_with("applied live for 5.0 s"),
                "{}",
                r.summary
            );
            assert!(labels(&mut c).await.unwrap().contains("tried"));
            until("try reverted", Duration::from_secs(60), || {
                let mut c = c.clone();
                async move {
                    let l = labels(&mut c).await?;
                    if l.contains("tried") {
                        Err("not yet".into())
                    } else {
                        Ok(())
                    }
                }
            })
            .await;

            // Reboot through the API: the node comes back with the same config.
            let r = c.reboot(pb::RebootRequest {}).await.unwrap().into_inner();
            assert_eq!(r.summary, "reboot sequence started");
        });
        vm.wait_for("basalt: sequence reboot: step 6/6: reboot", BOOT_TIMEOUT)
            .unwrap();
        assert!(
            vm.console()
                .contains("sequence reboot: check config: the config is saved"),
            "the try was reverted, so the saved config is the one in use"
        );
        let boots = || vm_console_count(&dir, "basalt: PID 1 running");
        let deadline = std::time::Instant::now() + BOOT_TIMEOUT;
        while boots() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "no second boot:\n{}",
                vm.console()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        rt.block_on(async {
            let c = client(port, "os:admin");
            let v = until("version after reboot", BOOT_TIMEOUT, || {
                let mut c = c.clone();
                async move {
                    c.version(pb::VersionRequest {})
                        .await
                        .map(|r| r.into_inner())
                        .map_err(|e| e.to_string())
                }
            })
            .await;
            assert_eq!(v.mode, "running", "the config survived the reboot");
            assert!(v.uptime_seconds < 120);
            until("containerd healthy after reboot", BOOT_TIMEOUT, || {
                let mut c = c.clone();
                async move { healthy(&mut c, "containerd").await }
            })
            .await;
        });
        let console = vm.console();
        assert!(
            console.contains("basalt: config loaded from /system/state/config/config.yaml"),
            "{console}"
        );
        assert!(!console.contains("FATAL"), "{console}");
    }

    fn vm_console_count(dir: &Path, needle: &str) -> usize {
        std::fs::read_to_string(dir.join("console.log"))
            .unwrap_or_default()
            .matches(needle)
            .count()
    }
}
