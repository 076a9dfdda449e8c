//! Booting an artifact under QEMU and watching its serial console.
//!
//! TCG (software emulation) by default: KVM is used only when `BASALT_KVM=1` says it works. The
//! console goes to a file that the runner polls for milestones. Dropping a [`Vm`] kills QEMU.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{ImageError, io_err, tools};

/// How to boot.
#[derive(Debug, Clone)]
pub enum Boot {
    /// A CD-ROM with SeaBIOS (`uefi: false`) or OVMF (`uefi: true`).
    Iso { iso: PathBuf, uefi: bool },
    /// Network boot through QEMU's built-in DHCP/TFTP and the NIC's iPXE ROM; `dir` is served
    /// over TFTP and `boot.ipxe` in it is the boot file.
    Pxe { dir: PathBuf },
    /// Network boot from the first NIC, which must be a tap (`VmOptions::tap`): DHCP and TFTP
    /// come from a server on the tap's segment (a local cluster's dnsmasq).
    Network,
    /// From the disk in [`VmOptions::disk`] (an installed node), with SeaBIOS or OVMF.
    Disk { uefi: bool },
    /// Direct kernel boot (fastest; no firmware menu).
    Kernel {
        vmlinuz: PathBuf,
        initramfs: PathBuf,
        cmdline: String,
    },
}

impl Boot {
    /// A node as the tests and benches boot one: direct kernel boot with the static address
    /// QEMU's user network expects (`10.0.2.15`, gateway `10.0.2.2`) on `eth0`, host name
    /// `hostname`, and a 1 s delay before a reboot after a fatal error.
    pub fn node(artifacts: &crate::Artifacts, hostname: &str) -> Option<Boot> {
        Some(Boot::Kernel {
            vmlinuz: artifacts.vmlinuz.clone()?,
            initramfs: artifacts.initramfs.clone()?,
            cmdline: format!(
                "{} basalt.reboot_delay=1 ip=10.0.2.15::10.0.2.2:255.255.255.0:{hostname}:eth0:off",
                crate::build::BASE_CMDLINE
            ),
        })
    }
}

/// Makes `path` a new empty state disk: `mib` MiB of ext4 labelled `BASALT-STATE`, the label
/// PID 1 mounts at `/system/state`.
///
/// A path ending in `.qcow2` gets a qcow2 image (made raw, then converted with `qemu-img`): it
/// takes only the space written, and QEMU is told its format by the same extension.
pub fn state_disk(path: &Path, mib: u64) -> Result<(), ImageError> {
    let qcow2 = path.extension().is_some_and(|e| e == "qcow2");
    let raw = if qcow2 {
        path.with_extension("raw.tmp")
    } else {
        path.to_path_buf()
    };
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(&raw);
    std::fs::File::create(&raw)
        .and_then(|f| f.set_len(mib << 20))
        .map_err(io_err("create", &raw))?;
    tools::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "BASALT-STATE"])
            .arg(&raw),
    )?;
    if qcow2 {
        let r = tools::run(
            Command::new("qemu-img")
                .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
                .arg(&raw)
                .arg(path),
        );
        let _ = std::fs::remove_file(&raw);
        r?;
    }
    Ok(())
}

/// A blank disk of `mib` MiB at `path` (thin: qcow2 for `*.qcow2`, else a sparse raw file),
/// for a node that installs itself to it.
pub fn blank_disk(path: &Path, mib: u64) -> Result<(), ImageError> {
    let _ = std::fs::remove_file(path);
    if path.extension().is_some_and(|e| e == "qcow2") {
        tools::run(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(path)
                .arg(format!("{mib}M")),
        )
        .map(drop)
    } else {
        std::fs::File::create(path)
            .and_then(|f| f.set_len(mib << 20))
            .map_err(io_err("create", path))
    }
}

/// QEMU's name for a disk image's format: `qcow2` for `*.qcow2`, else `raw`.
fn disk_format(path: &Path) -> &'static str {
    match path.extension().is_some_and(|e| e == "qcow2") {
        true => "qcow2",
        false => "raw",
    }
}

/// A network card on a tap device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapNic {
    pub ifname: String,
    pub mac: String,
}

/// The QEMU command line for `boot` with `opts` (the console log goes to
/// `workdir/console.log`), for callers that run QEMU their own way — a local cluster runs it
/// detached in its network namespace. The path is a scratch file to keep while QEMU runs.
pub fn command(
    boot: &Boot,
    workdir: &Path,
    opts: &VmOptions,
) -> Result<(Command, Option<PathBuf>), VmError> {
    Vm::build_command(boot, workdir, opts)
}

/// What the VM has besides its boot media.
#[derive(Debug, Clone)]
pub struct VmOptions {
    pub memory_mib: u32,
    /// Virtual CPUs (0 counts as 1).
    pub cpus: u32,
    /// TCP ports forwarded from the host's loopback to the guest (host, guest), through QEMU's
    /// user-mode network (the guest is 10.0.2.15, its gateway 10.0.2.2).
    pub forward: Vec<(u16, u16)>,
    /// UDP ports forwarded the same way (a WireGuard peer on the host reaching the guest).
    pub forward_udp: Vec<(u16, u16)>,
    /// A raw disk image attached as a virtio disk.
    pub disk: Option<PathBuf>,
    /// The disk comes first in the firmware's boot order, before the CD-ROM or the network
    /// (a blank disk is passed by): a machine that boots its installer once and its installed
    /// disk from then on.
    pub disk_boots_first: bool,
    /// Let a guest reboot restart it in place (else QEMU exits on reboot).
    pub allow_reboot: bool,
    /// The first network card on this tap device (which must exist, in QEMU's network
    /// namespace) with this MAC address, instead of QEMU's user network: a local cluster's
    /// nodes on one bridge.
    pub tap: Option<TapNic>,
    /// More network cards (eth1, eth2, ...) after the first, each on a QEMU user network of its
    /// own that reaches nothing (`restrict=on`): links to bond, bridge or VLAN in tests.
    pub extra_nics: u32,
    /// Where the guest's real-time clock starts (QEMU's `-rtc base=`: `utc`, or a date such as
    /// `2025-12-05T00:00:00`, to boot a machine whose clock is wrong); `None`: the host's time.
    pub rtc_base: Option<String>,
}

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions {
            memory_mib: 512,
            cpus: 1,
            forward: Vec::new(),
            forward_udp: Vec::new(),
            tap: None,
            disk: None,
            disk_boots_first: false,
            allow_reboot: false,
            extra_nics: 0,
            rtc_base: None,
        }
    }
}

/// A running VM.
#[derive(Debug)]
pub struct Vm {
    child: Child,
    console: PathBuf,
    started: Instant,
    _scratch: Option<PathBuf>,
}

/// Why a VM did not reach a milestone.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot start qemu")]
    Start(#[source] ImageError),
    #[error("no {milestone:?} on the console within {timeout:?}; last console lines:\n{tail}")]
    Timeout {
        milestone: String,
        timeout: Duration,
        tail: String,
    },
    #[error("qemu exited ({status}) before {milestone:?}; last console lines:\n{tail}")]
    Exited {
        milestone: String,
        status: String,
        tail: String,
    },
}

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// UEFI firmware for a VM: OVMF's code read-only, a copy of its variables in `workdir`
/// (returned: a scratch file to keep while QEMU runs).
fn ovmf(cmd: &mut Command, workdir: &Path) -> Result<PathBuf, VmError> {
    for f in [OVMF_CODE, OVMF_VARS] {
        if !Path::new(f).exists() {
            return Err(VmError::Start(ImageError::MissingTool {
                tool: f.into(),
                package: "ovmf".into(),
            }));
        }
    }
    let vars = workdir.join("OVMF_VARS.fd");
    std::fs::copy(OVMF_VARS, &vars).map_err(|e| VmError::Start(io_err("copy", &vars)(e)))?;
    cmd.arg("-drive")
        .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"));
    cmd.arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars.display()));
    Ok(vars)
}

impl Vm {
    /// Starts QEMU; `workdir` receives the console log (and UEFI variables).
    pub fn start(boot: &Boot, workdir: &Path, memory_mib: u32) -> Result<Vm, VmError> {
        Vm::start_with(
            boot,
            workdir,
            &VmOptions {
                memory_mib,
                ..VmOptions::default()
            },
        )
    }

    /// Starts QEMU with a network, a disk or reboots as `opts` says.
    pub fn start_with(boot: &Boot, workdir: &Path, opts: &VmOptions) -> Result<Vm, VmError> {
        let (mut cmd, scratch) = Vm::build_command(boot, workdir, opts)?;
        let child = cmd.stderr(Stdio::piped()).spawn().map_err(|e| {
            VmError::Start(ImageError::Tool {
                tool: "qemu-system-x86_64".into(),
                status: "not started".into(),
                stderr: e.to_string(),
            })
        })?;
        Ok(Vm {
            child,
            console: workdir.join("console.log"),
            started: Instant::now(),
            _scratch: scratch,
        })
    }

    fn build_command(
        boot: &Boot,
        workdir: &Path,
        opts: &VmOptions,
    ) -> Result<(Command, Option<PathBuf>), VmError> {
        let memory_mib = opts.memory_mib;
        let hostfwd: String = opts
            .forward
            .iter()
            .map(|(h, g)| format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"))
            .chain(
                opts.forward_udp
                    .iter()
                    .map(|(h, g)| format!(",hostfwd=udp:127.0.0.1:{h}-:{g}")),
            )
            .collect();
        tools::need("qemu-system-x86_64", "qemu-system-x86").map_err(VmError::Start)?;
        std::fs::create_dir_all(workdir)
            .map_err(|e| VmError::Start(io_err("create", workdir)(e)))?;
        let console = workdir.join("console.log");
        let _ = std::fs::remove_file(&console);
        let mut cmd = Command::new("qemu-system-x86_64");
        let accel = if std::env::var("BASALT_KVM").as_deref() == Ok("1") {
            "kvm"
        } else {
            "tcg"
        };
        cmd.args([
            "-machine",
            &format!("q35,accel={accel}"),
            "-cpu",
            "max",
            "-smp",
            &opts.cpus.max(1).to_string(),
        ])
        .args(["-m", &memory_mib.to_string()])
        .args(["-display", "none", "-monitor", "none", "-nodefaults"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .args(["-device", "virtio-rng-pci"])
        .args(
            opts.rtc_base
                .iter()
                .flat_map(|b| ["-rtc".to_string(), format!("base={b}")]),
        )
        .args(if opts.allow_reboot {
            &[][..]
        } else {
            &["-no-reboot"][..]
        })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let mut scratch = None;
        match boot {
            Boot::Iso { iso, uefi } => {
                if *uefi {
                    scratch = Some(ovmf(&mut cmd, workdir)?);
                }
                if opts.disk_boots_first {
                    cmd.arg("-drive").arg(format!(
                        "file={},media=cdrom,readonly=on,if=none,id=cd0",
                        iso.display()
                    ));
                    cmd.args(["-device", "ide-cd,drive=cd0,bootindex=1"]);
                } else {
                    cmd.arg("-drive").arg(format!(
                        "file={},media=cdrom,readonly=on,if=ide",
                        iso.display()
                    ));
                    cmd.args(["-boot", "d"]);
                }
            }
            Boot::Disk { uefi } => {
                if opts.disk.is_none() {
                    return Err(VmError::Start(ImageError::Init(
                        "a disk boot needs a disk (VmOptions::disk)".into(),
                    )));
                }
                if *uefi {
                    scratch = Some(ovmf(&mut cmd, workdir)?);
                }
            }
            Boot::Pxe { dir } => {
                cmd.arg("-netdev").arg(format!(
                    "user,id=n0,tftp={},bootfile=boot.ipxe{hostfwd}",
                    dir.display()
                ));
                cmd.args(["-device", "virtio-net-pci,netdev=n0,bootindex=1"]);
            }
            Boot::Network => {
                if opts.tap.is_none() {
                    return Err(VmError::Start(ImageError::Init(
                        "network boot needs a tap NIC (VmOptions::tap)".into(),
                    )));
                }
            }
            Boot::Kernel {
                vmlinuz,
                initramfs,
                cmdline,
            } => {
                cmd.arg("-kernel")
                    .arg(vmlinuz)
                    .arg("-initrd")
                    .arg(initramfs)
                    .arg("-append")
                    .arg(cmdline);
            }
        }
        if let Some(tap) = &opts.tap {
            cmd.arg("-netdev").arg(format!(
                "tap,id=n0,ifname={},script=no,downscript=no",
                tap.ifname
            ));
            cmd.arg("-device").arg(format!(
                "virtio-net-pci,netdev=n0,mac={}{}",
                tap.mac,
                if matches!(boot, Boot::Network) {
                    ",bootindex=1"
                } else {
                    ""
                }
            ));
        } else if !matches!(boot, Boot::Pxe { .. }) && !opts.forward.is_empty() {
            cmd.arg("-netdev").arg(format!("user,id=n0{hostfwd}"));
            cmd.args(["-device", "virtio-net-pci,netdev=n0"]);
        }
        for i in 1..=opts.extra_nics {
            cmd.arg("-netdev").arg(format!("user,id=x{i},restrict=on"));
            cmd.arg("-device")
                .arg(format!("virtio-net-pci,netdev=x{i}"));
        }
        if let Some(disk) = &opts.disk {
            if opts.disk_boots_first {
                cmd.arg("-drive").arg(format!(
                    "file={},format={},if=none,id=disk0",
                    disk.display(),
                    disk_format(disk)
                ));
                cmd.args(["-device", "virtio-blk-pci,drive=disk0,bootindex=0"]);
            } else {
                cmd.arg("-drive").arg(format!(
                    "file={},format={},if=virtio",
                    disk.display(),
                    disk_format(disk)
                ));
            }
        }
        Ok((cmd, scratch))
    }

    pub fn console_path(&self) -> &Path {
        &self.console
    }

    /// The console so far (lossy UTF-8; firmware writes escape codes).
    pub fn console(&self) -> String {
        std::fs::read(&self.console)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn tail(&self, n: usize) -> String {
        let c = self.console();
        let lines: Vec<&str> = c.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits until a console line contains `milestone`; returns the time since QEMU started.
    pub fn wait_for(&mut self, milestone: &str, timeout: Duration) -> Result<Duration, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.console().contains(milestone) {
                return Ok(self.started.elapsed());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // The last lines may have landed between the read and the exit.
                if self.console().contains(milestone) {
                    return Ok(self.started.elapsed());
                }
                return Err(VmError::Exited {
                    milestone: milestone.into(),
                    status: status.to_string(),
                    tail: self.tail(40),
                });
            }
            if Instant::now() >= deadline {
                return Err(VmError::Timeout {
                    milestone: milestone.into(),
                    timeout,
                    tail: self.tail(40),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for QEMU to exit by itself (a power-off, or a reboot with `-no-reboot`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
