//! osctl against real nodes: two QEMU VMs (TCG) booted from this tree's images, driven only
//! through the osctl binary, a Python grpcio client and `openssl s_client`, as a user would.
//! VM tier: `hack/test` enables it; a plain `cargo test` skips.

#![allow(clippy::unwrap_used)]

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use basalt_image::qemu::{Boot, Vm, VmOptions};
use basalt_image::{BuildOptions, Target};
use basalt_testkit::{Tier, tier};

use basalt_testkit::free_port;

mod lifecycle;
use lifecycle::{
    BOOT_TIMEOUT, bundle, in_maintenance, install_images, installed_node, ok, run, text, until,
};

fn boot(
    name: &str,
    a: &basalt_image::Artifacts,
    port: u16,
    disk: Option<PathBuf>,
    dir: &Path,
) -> Vm {
    let wd = dir.join(name);
    std::fs::create_dir_all(&wd).unwrap();
    Vm::start_with(
        &Boot::node(a, name).unwrap(),
        &wd,
        &VmOptions {
            memory_mib: 768,
            forward: vec![(port, 50000)],
            disk,
            allow_reboot: true,
            extra_nics: 0,
            forward_udp: Vec::new(),
            tap: None,
            cpus: 1,
            rtc_base: None,
            ..VmOptions::default()
        },
    )
    .unwrap()
}

/// The images, built once for every test here (tests run in parallel threads).
fn images() -> basalt_image::Artifacts {
    static IMAGES: std::sync::Mutex<Option<basalt_image::Artifacts>> = std::sync::Mutex::new(None);
    let mut built = IMAGES.lock().unwrap_or_else(|p| p.into_inner());
    built
        .get_or_insert_with(|| {
            let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
            basalt_image::build(
                Target::All,
                &BuildOptions {
                    out: tmp.join("vm-images/osctl"),
                    init: None,
                    extra_cmdline: Vec::new(),
                    verbose: false,
                    with_containerd: true,
                    kubernetes: false,
                    version: None,
                },
            )
            .unwrap()
        })
        .clone()
}

#[test]
fn osctl_drives_two_nodes_through_one_endpoint() {
    if !tier(Tier::Vm, "osctl_drives_two_nodes_through_one_endpoint") {
        return;
    }
    let python = std::env::var("BASALT_PYTHON")
        .expect("BASALT_PYTHON (a venv with grpcio, grpcio-tools, pyyaml; hack/test makes it)");
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let a = images();
    let dir = tmp.join("vm-runs/osctl");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("state.img");
    basalt_image::qemu::state_disk(&disk, 64).unwrap();

    let (p1, p2) = (free_port(), free_port());
    let (e1, e2) = (format!("127.0.0.1:{p1}"), format!("127.0.0.1:{p2}"));
    // node1 reaches node2 through QEMU's user network: 10.0.2.2 is the host, where node2's
    // API port is forwarded. node2's certificate must name that address: certSANs.
    let n2 = format!("10.0.2.2:{p2}");
    let mut vm1 = boot("node1", &a, p1, Some(disk), &dir);
    let mut vm2 = boot("node2", &a, p2, None, &dir);

    ok(&dir, &["gen", "config", "demo", "https://10.0.2.15:6443"]);
    let cp = std::fs::read_to_string(dir.join("controlplane.yaml")).unwrap();
    let cp = cp.replacen(
        "type: controlplane\n",
        "type: controlplane\ncertSANs:\n  - 10.0.2.2\n",
        1,
    );
    std::fs::write(dir.join("cp.yaml"), cp).unwrap();
    let osconfig = dir.join("client.yaml");
    let oc = osconfig.to_str().unwrap();
    ok(&dir, &["--osconfig", oc, "config", "merge", "osconfig"]);
    ok(&dir, &["--osconfig", oc, "config", "endpoint", &e1]);

    // Maintenance mode: only --insecure, only three methods.
    for (vm, e) in [(&mut vm1, &e1), (&mut vm2, &e2)] {
        vm.wait_for("no config; apply one with", BOOT_TIMEOUT)
            .unwrap();
        let v = until(
            &dir,
            &["--insecure", "-n", e, "version"],
            BOOT_TIMEOUT,
            |o| o.contains("maintenance"),
        );
        assert!(v.contains("Client: osctl"), "{v}");
        let o = run(&dir, &["--insecure", "-n", e, "services"]);
        assert!(!o.status.success());
        assert!(
            text(&o).contains("not available in maintenance mode"),
            "{}",
            text(&o)
        );
        let disks = ok(&dir, &["--insecure", "-n", e, "disks"]);
        assert!(disks.contains("DEVICE"), "{disks}");
        // Hostile configs, sent without a certificate: a 400-byte billion laughs and block
        // nesting 20 000 deep (each used to take PID 1 down: out of memory, out of stack).
        // Each is refused with its reason, and the node keeps answering.
        let mut laughs = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            laughs.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        std::fs::write(dir.join("laughs.yaml"), laughs).unwrap();
        std::fs::write(dir.join("deep.yaml"), "- ".repeat(20_000) + "x\n").unwrap();
        for (file, why) in [
            ("laughs.yaml", "more than 100000 nodes"),
            ("deep.yaml", "nested more than 64 levels"),
        ] {
            let o = run(&dir, &["apply-config", "--insecure", "-n", e, "-f", file]);
            assert!(
                !o.status.success() && text(&o).contains(why),
                "{file}: {}",
                text(&o)
            );
            let v = ok(&dir, &["--insecure", "-n", e, "version"]);
            assert!(v.contains("maintenance"), "after {file}: {v}");
        }
        let out = ok(
            &dir,
            &["apply-config", "--insecure", "-n", e, "-f", "cp.yaml"],
        );
        assert!(out.contains("applied live and saved"), "{out}");
    }

    // With the generated client config: mutual TLS.
    let v = until(&dir, &["--osconfig", oc, "version"], BOOT_TIMEOUT, |o| {
        o.contains("running")
    });
    assert!(v.contains("node1"), "{v}");
    let s = until(&dir, &["--osconfig", oc, "services"], BOOT_TIMEOUT, |o| {
        o.lines()
            .any(|l| l.starts_with("containerd") && l.contains("running") && l.contains("healthy"))
    });
    assert!(
        s.lines()
            .any(|l| l.starts_with("apid") && l.contains("running")),
        "{s}"
    );
    let links = ok(&dir, &["--osconfig", oc, "get", "links"]);
    assert!(
        links
            .lines()
            .any(|l| l.contains("LinkStatus") && l.contains("eth0"))
            && links.contains(" lo "),
        "{links}"
    );
    let eth0 = ok(
        &dir,
        &["--osconfig", oc, "get", "links", "eth0", "-o", "yaml"],
    );
    assert!(
        eth0.contains("operState: up") && eth0.contains("mtu: 1500"),
        "{eth0}"
    );
    let mc = ok(&dir, &["--osconfig", oc, "get", "machineconfig"]);
    assert!(
        mc.contains("MachineConfig") && mc.contains("Secrets"),
        "{mc}"
    );
    let y = ok(
        &dir,
        &[
            "--osconfig",
            oc,
            "get",
            "services",
            "containerd",
            "-o",
            "yaml",
        ],
    );
    assert!(y.contains("id: containerd") && y.contains("node: "), "{y}");

    // logs -f streams: the first line arrives, then we stop it.
    let mut child = basalt_testkit::hermetic(&mut Command::new(env!("CARGO_BIN_EXE_osctl")))
        .args(["--osconfig", oc, "logs", "containerd", "-f", "--tail", "5"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(!first.is_empty());
    assert!(
        child.try_wait().unwrap().is_none(),
        "logs -f ended by itself"
    );
    child.kill().unwrap();
    let _ = child.wait();

    // A reader may look, not reboot, and is told which role it needs.
    ok(
        &dir,
        &[
            "-e",
            &e1,
            "gen",
            "osconfig",
            "--secrets",
            "cp.yaml",
            "--role",
            "os:reader",
            "-o",
            "reader.yaml",
        ],
    );
    ok(&dir, &["--osconfig", "reader.yaml", "services"]);
    let o = run(&dir, &["--osconfig", "reader.yaml", "reboot"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("Reboot needs role os:operator or higher; this caller has os:reader"),
        "{}",
        text(&o)
    );

    // Through node1's endpoint to node2, and to both at once.
    let v = until(
        &dir,
        &["--osconfig", oc, "-n", &n2, "version"],
        BOOT_TIMEOUT,
        |o| o.contains("node2") && o.contains("running"),
    );
    assert!(!v.contains("node1"), "{v}");
    let both = ok(
        &dir,
        &[
            "--osconfig",
            oc,
            "-n",
            &format!("10.0.2.15,{n2}"),
            "version",
        ],
    );
    assert!(
        both.contains("NODE") && both.contains("node1") && both.contains("node2"),
        "{both}"
    );

    // A second client, in Python (grpcio), and openssl's view of the TLS.
    let py = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/grpc-client.py"))
        .args(["--endpoint", &e1, "--admin", oc, "--reader"])
        .arg(dir.join("reader.yaml"))
        .output()
        .unwrap();
    assert!(py.status.success(), "python grpcio client: {}", text(&py));
    let s_client = |extra: &[&str]| {
        // -ign_eof: keep reading after stdin ends, until the server closes, so its alert
        // (which in TLS 1.3 comes after the handshake) is read.
        let o = Command::new("timeout")
            .args(["60", "openssl", "s_client", "-ign_eof", "-connect", &e1])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let tls12 = s_client(&["-tls1_2"]);
    assert!(tls12.contains("alert protocol version"), "{tls12}");
    let no_cert = s_client(&["-tls1_3"]);
    assert!(no_cert.contains("certificate required"), "{no_cert}");

    // Reboot: node1 comes back with its config (saved on the state disk).
    let out = ok(&dir, &["--osconfig", oc, "reboot"]);
    assert!(out.contains("reboot sequence started"), "{out}");
    vm1.wait_for("sequence reboot: step 6/6: reboot", BOOT_TIMEOUT)
        .unwrap();
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while vm1.console().matches("basalt: PID 1 running").count() < 2 {
        assert!(Instant::now() < deadline, "node1 did not boot again");
        std::thread::sleep(Duration::from_millis(500));
    }
    let v = until(&dir, &["--osconfig", oc, "version"], BOOT_TIMEOUT, |o| {
        o.contains("running")
    });
    assert!(v.contains("node1"), "{v}");
    drop(vm2);
}

/// networkd on a real node: eth0 by DHCP from QEMU's user network (`ip=dhcp`), then a config
/// that keeps DHCP on eth0 and adds static links the host's kernel cannot make (a bond of two
/// more NICs, a VLAN on it, a dummy link). The dry run shows the plan; `osctl get` shows both
/// paths, DHCP's and the config's, as the kernel has them and as layers.
#[test]
fn networkd_dhcp_and_static_on_a_node() {
    if !tier(Tier::Vm, "networkd_dhcp_and_static_on_a_node") {
        return;
    }
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let a = images();
    let dir = tmp.join("vm-runs/networkd");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    // The node's discovery server, reached from this process.
    let dport = free_port();
    // The node's WireGuard port, reachable from the host for the mesh check below.
    let wg_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = format!("127.0.0.1:{port}");
    let boot = Boot::Kernel {
        vmlinuz: a.vmlinuz.clone().unwrap(),
        initramfs: a.initramfs.clone().unwrap(),
        cmdline: format!(
            "{} basalt.reboot_delay=1 ip=dhcp",
            basalt_image::build::BASE_CMDLINE
        ),
    };
    let mut vm = Vm::start_with(
        &boot,
        &dir,
        &VmOptions {
            memory_mib: 768,
            forward: vec![(port, 50000), (dport, 3000)],
            disk: None,
            allow_reboot: false,
            extra_nics: 2,
            forward_udp: vec![(wg_port, 51820)],
            tap: None,
            cpus: 1,
            rtc_base: None,
            ..VmOptions::default()
        },
    )
    .unwrap();
    // QEMU's DHCP server gives 10.0.2.15; the banner names it.
    vm.wait_for("on 10.0.2.15:50000", BOOT_TIMEOUT).unwrap();
    assert!(
        vm.console()
            .contains("basalt: network: eth0 10.0.2.15/24 via 10.0.2.2"),
        "{}",
        vm.console()
    );

    until(
        &dir,
        &["--insecure", "-n", &e, "version"],
        BOOT_TIMEOUT,
        |o| o.contains("maintenance"),
    );
    // The node runs the discovery server as a service (`serve: true`) and meets there; a
    // second "node" in this process reaches the server through a forwarded port.
    let rt = tokio::runtime::Runtime::new().unwrap();

    ok(&dir, &["gen", "config", "net", "https://10.0.2.15:6443"]);
    let cp = std::fs::read_to_string(dir.join("controlplane.yaml")).unwrap();
    let net = "---
apiVersion: v1alpha1
kind: LinkConfig
name: eth0
dhcp: true
---
apiVersion: v1alpha1
kind: LinkConfig
name: dummy0
dummy: true
addresses: [192.168.77.1/24]
---
apiVersion: v1alpha1
kind: BondConfig
name: bond0
mode: active-backup
links: [eth1, eth2]
addresses: [192.168.88.1/24]
---
apiVersion: v1alpha1
kind: VLANConfig
name: bond0.10
parent: bond0
vlanID: 10
addresses: [192.168.10.1/24]
---
apiVersion: v1alpha1
kind: KubeSpanConfig
enabled: true
mtu: 1380
---
apiVersion: v1alpha1
kind: DiscoveryConfig
enabled: true
endpoint: http://10.0.2.15:3000
serve: true
";
    std::fs::write(dir.join("net.yaml"), format!("{cp}{net}")).unwrap();
    let parsed = basalt_config::Config::parse(
        &std::fs::read_to_string(dir.join("net.yaml")).unwrap(),
        basalt_config::Mode::Metal,
    )
    .unwrap();
    let peer_store = basalt_resources::Store::default();
    let peer_keys = basalt_kubespan::identity::KeyPair::generate();
    let peer_key = peer_keys.public_base64();
    let peer_mesh =
        basalt_kubespan::identity::KubeSpanIdentity::new(&peer_keys, &parsed.cluster().id).address;
    let peer_cfg = basalt_kubespan::client::ClientConfig {
        endpoint: format!("http://127.0.0.1:{dport}"),
        ca: None,
        cluster_id: parsed.cluster().id.clone(),
        cluster_secret: parsed.secrets().cluster_secret.clone(),
        keys: peer_keys.clone(),
        hostname: "test-peer".into(),
        // No addresses: the node cannot reach this process except back along the
        // handshake it starts below (and must send nothing anywhere else).
        addresses: std::sync::Arc::new(Vec::new),
        pod_cidrs: std::sync::Arc::new(Vec::new),
        with_pod_networks: false,
        relay: false,
        port: 51820,
        ttl: Duration::from_secs(60),
    };
    // The server comes up with the config: retry until it does.
    let ps = peer_store.clone();
    rt.spawn(async move {
        loop {
            let _ = basalt_kubespan::client::run(ps.clone(), peer_cfg.clone()).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });

    // The dry run: the plan, in order, and nothing applied.
    let dry = ok(
        &dir,
        &[
            "apply-config",
            "--insecure",
            "-n",
            &e,
            "-f",
            "net.yaml",
            "--dry-run",
        ],
    );
    let pos = |what: &str| {
        dry.find(what)
            .unwrap_or_else(|| panic!("{what:?} not in the plan:\n{dry}"))
    };
    assert!(
        pos("ip link add bond0 type bond mode active-backup miimon 100")
            < pos("ip link set eth1 master bond0")
    );
    assert!(pos("ip link set eth2 master bond0") < pos("ip link set bond0 up"));
    assert!(
        pos("ip link add link bond0 name bond0.10 type vlan id 10")
            < pos("ip address add 192.168.10.1/24 dev bond0.10")
    );
    pos("ip link add dummy0 type dummy");
    assert!(pos("ip link add kubespan type wireguard") < pos("ip link set kubespan mtu 1380"));

    let out = ok(
        &dir,
        &["apply-config", "--insecure", "-n", &e, "-f", "net.yaml"],
    );
    assert!(out.contains("applied live and saved"), "{out}");
    let osconfig = dir.join("client.yaml");
    let oc = osconfig.to_str().unwrap();
    ok(&dir, &["--osconfig", oc, "config", "merge", "osconfig"]);
    ok(&dir, &["--osconfig", oc, "config", "endpoint", &e]);

    let addrs = until(
        &dir,
        &["--osconfig", oc, "get", "addresses"],
        BOOT_TIMEOUT,
        |o| {
            [
                "eth0/10.0.2.15/24",
                "dummy0/192.168.77.1/24",
                "bond0/192.168.88.1/24",
                "bond0.10/192.168.10.1/24",
            ]
            .iter()
            .all(|a| o.contains(a))
        },
    );
    assert!(addrs.contains("AddressStatus"), "{addrs}");
    // Which path each came by: DHCP's layer and the config's.
    let layers = ok(
        &dir,
        &[
            "--osconfig",
            oc,
            "get",
            "addressspecs",
            "--namespace",
            "network-config",
        ],
    );
    assert!(layers.contains("dhcp-eth0/eth0/10.0.2.15/24"), "{layers}");
    assert!(layers.contains("config/dummy0/192.168.77.1/24"), "{layers}");
    let y = ok(
        &dir,
        &[
            "--osconfig",
            oc,
            "get",
            "addressspecs",
            "dhcp-eth0/eth0/10.0.2.15/24",
            "--namespace",
            "network-config",
            "-o",
            "yaml",
        ],
    );
    assert!(y.contains("layer: dhcp"), "{y}");
    // The bond's members, as the kernel has them.
    let bond = ok(
        &dir,
        &["--osconfig", oc, "get", "links", "bond0", "-o", "yaml"],
    );
    let index = bond
        .lines()
        .find_map(|l| l.trim().strip_prefix("index: "))
        .unwrap_or_else(|| panic!("{bond}"))
        .to_string();
    for m in ["eth1", "eth2"] {
        let l = ok(&dir, &["--osconfig", oc, "get", "links", m, "-o", "yaml"]);
        assert!(l.contains(&format!("masterIndex: {index}")), "{l}");
    }
    // KubeSpan's WireGuard link, made by networkd with the mesh's MTU (the VM kernel has the
    // wireguard driver; this host's does not).
    let wg = ok(
        &dir,
        &["--osconfig", oc, "get", "links", "kubespan", "-o", "yaml"],
    );
    assert!(
        wg.contains("kind: wireguard") && wg.contains("mtu: 1380"),
        "{wg}"
    );
    // The node's KubeSpan identity, and its mesh address on that link.
    let id = ok(
        &dir,
        &["--osconfig", oc, "get", "kubespanidentity", "-o", "yaml"],
    );
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .trim_matches(|c| c == '\'' || c == '"')
            .to_string()
    };
    let address = field(&id, "address: ");
    let node_key = field(&id, "publicKey: ");
    assert!(address.starts_with("fd"), "{id}");
    until(
        &dir,
        &["--osconfig", oc, "get", "addresses"],
        BOOT_TIMEOUT,
        |o| o.contains(&format!("kubespan/{address}/64")),
    );
    // Discovery: the node has the test's peer, and the test's peer has the node (its mesh
    // address as the node says it), through the server that saw only ciphertext.
    let peers = until(
        &dir,
        &[
            "--osconfig",
            oc,
            "get",
            "kubespanpeerspecs",
            &peer_key,
            "-o",
            "yaml",
        ],
        BOOT_TIMEOUT,
        |o| o.contains("hostname: test-peer"),
    );
    assert!(peers.contains(&format!("{peer_mesh}/128")), "{peers}");
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        let seen = peer_store
            .get::<basalt_kubespan::peer::KubeSpanPeerSpec>(&node_key)
            .map(|(_, p)| p);
        if let Some(p) = seen {
            assert_eq!(p.mesh_address.to_string(), address);
            assert!(
                p.endpoints
                    .iter()
                    .any(|e| e.ip().to_string() == "10.0.2.15"),
                "{p:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the test's peer never saw the node"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The node's kernel WireGuard, for real: a Basalt userspace device in this process (as
    // root) handshakes with it through QEMU's forwarded UDP port (with the cluster's
    // pre-shared key), and pings the node's mesh address; the node reports the peer up.
    if nix::unistd::geteuid().is_root() {
        kernel_mesh_check(
            &dir, oc, &rt, &peer_keys, &parsed, &node_key, &address, &peer_key, wg_port,
        );
    } else {
        eprintln!("the kernel WireGuard handshake check needs root (a tun device): skipped");
    }
    // The discovery server is a service of the node (its snapshot in the state directory).
    until(&dir, &["--osconfig", oc, "services"], BOOT_TIMEOUT, |o| {
        o.lines()
            .any(|l| l.starts_with("discovery") && l.contains("running") && l.contains("healthy"))
    });
    let routes = ok(&dir, &["--osconfig", oc, "get", "routes"]);
    assert!(routes.contains("eth0/0.0.0.0/0/10.0.2.2/1024"), "{routes}");
}

/// A userspace WireGuard peer in this process against the node's kernel WireGuard.
#[allow(clippy::too_many_arguments)]
fn kernel_mesh_check(
    dir: &Path,
    oc: &str,
    rt: &tokio::runtime::Runtime,
    keys: &basalt_kubespan::identity::KeyPair,
    config: &basalt_config::Config,
    node_key: &str,
    node_mesh: &str,
    peer_key: &str,
    wg_port: u16,
) {
    use base64::Engine as _;
    let name = format!("bks{}", std::process::id() % 100_000);
    let our_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let opts = basalt_kubespan::device::DeviceOptions {
        port: our_port,
        fwmark: None,
        preshared_key: Some(basalt_kubespan::identity::preshared_key(
            &config.secrets().cluster_secret,
        )),
        ..Default::default()
    };
    let (dev, task) = rt
        .block_on(basalt_kubespan::device::run(keys, &name, opts))
        .unwrap();
    struct Stop(tokio::task::JoinHandle<Result<(), basalt_kubespan::device::DeviceError>>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _stop = Stop(task);
    let our_mesh =
        basalt_kubespan::identity::KubeSpanIdentity::new(keys, &config.cluster().id).address;
    let ip = |args: &[&str]| {
        let o = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    ip(&["addr", "add", &format!("{our_mesh}/128"), "dev", &name]);
    ip(&["route", "add", &format!("{node_mesh}/128"), "dev", &name]);
    let node_pub: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(node_key)
        .unwrap()
        .try_into()
        .unwrap();
    dev.set_peers(&[basalt_kubespan::device::DevicePeer {
        public_key: node_pub,
        endpoint: Some(format!("127.0.0.1:{wg_port}").parse().unwrap()),
        allowed_ips: vec![format!("{node_mesh}/128").parse().unwrap()],
    }]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ping = std::process::Command::new("ping")
            .args(["-6", "-c", "1", "-W", "2", node_mesh])
            .output()
            .unwrap();
        if ping.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no ping over the mesh to the node: {:?}\n{}",
            dev.stats(),
            std::fs::read_to_string(dir.join("console.log")).unwrap_or_default()
        );
    }
    let st = dev.stats();
    assert!(st[0].since_handshake.is_some(), "{st:?}");
    let status = until(
        dir,
        &[
            "--osconfig",
            oc,
            "get",
            "kubespanpeerstatuses",
            peer_key,
            "-o",
            "yaml",
        ],
        Duration::from_secs(60),
        |o| o.contains("state: up"),
    );
    assert!(status.contains("hostname: test-peer"), "{status}");
    assert!(status.contains("rxBytes"), "{status}");
}

/// The node lifecycle's first step (issue 22): a node booted from the ISO in maintenance
/// mode, given a config with `install.disk`, installs itself to that disk and reboots; the
/// VM started again *without* the ISO boots from the disk — through SeaBIOS and through
/// OVMF — as the same node with its config, `/var` on EPHEMERAL.
#[test]
fn an_iso_node_installs_to_disk_and_boots_from_it() {
    if !tier(Tier::Vm, "an_iso_node_installs_to_disk_and_boots_from_it") {
        return;
    }
    let _one = lifecycle::one_at_a_time();
    for uefi in [false, true] {
        let name = if uefi { "install-uefi" } else { "install-bios" };
        let node = installed_node(name, uefi, uefi);
        if uefi {
            upgrades(node);
        } else {
            resets(node);
        }
    }
}

/// An installed node under OVMF upgraded and rolled back (the upgrade test runs SeaBIOS): the
/// EFI GRUB boots slot B on trial, the boot confirms itself, and `rollback` boots slot A. The
/// node fetches this bundle itself, from a URL (a static server on the host, which the node
/// reaches as 10.0.2.2): with a sha256 it does not have, it is refused and nothing written.
fn upgrades(node: lifecycle::Installed) {
    let lifecycle::Installed {
        mut vm,
        osconfig,
        dir,
        ..
    } = node;
    let oc = osconfig.to_str().unwrap();
    let v2 = bundle("0.2.0", None);
    let served = dir.join("served");
    std::fs::create_dir_all(&served).unwrap();
    std::fs::copy(&v2, served.join("upgrade.bundle")).unwrap();
    let port = free_port();
    let _server = ConfigServer::start(&dir, &served, port);
    let url = format!("http://10.0.2.2:{port}/upgrade.bundle");
    let zeros = "0".repeat(64);
    let o = run(
        &dir,
        &[
            "--osconfig",
            oc,
            "upgrade",
            "--image",
            &url,
            "--sha256",
            &zeros,
        ],
    );
    assert!(
        !o.status.success() && text(&o).contains(&format!("not the {zeros} asked for")),
        "{}",
        text(&o)
    );
    let ver = ok(&dir, &["--osconfig", oc, "version"]);
    assert!(ver.contains("A:0.1.0(booted) B:empty"), "{ver}");
    let up = ok(
        &dir,
        &[
            "--osconfig",
            oc,
            "upgrade",
            "--image",
            &url,
            "--sha256",
            &sha256_hex(&v2),
        ],
    );
    assert!(up.contains("running 0.2.0, confirmed"), "{up}");
    vm.wait_for("upgrade: fetched", BOOT_TIMEOUT).unwrap();
    vm.wait_for("upgrade: slot B is healthy and confirmed", BOOT_TIMEOUT)
        .unwrap();
    let ver = ok(&dir, &["--osconfig", oc, "version"]);
    assert!(ver.contains("A:0.1.0(fallback) B:0.2.0(booted)"), "{ver}");
    let rb = ok(&dir, &["--osconfig", oc, "rollback"]);
    assert!(rb.contains("slot A (0.1.0) boots from now on"), "{rb}");
    let ver = until(&dir, &["--osconfig", oc, "version"], BOOT_TIMEOUT, |o| {
        o.contains("A:0.1.0(booted)") && o.contains("running")
    });
    assert!(ver.contains("B:0.2.0"), "{ver}");
}

/// Power lost in the middle of an install (issue 22): the machine — its blank disk first in the
/// boot order, the ISO after it, as a machine being installed is set up — is cut off while
/// slot A is being written. The disk then boots nothing (its partition table is written last),
/// so the ISO boots again into maintenance mode, never a half-installed disk; the install asked
/// again then runs to the end, and the machine boots its disk.
#[test]
fn a_power_cut_during_an_install_boots_the_installer_again() {
    if !tier(
        Tier::Vm,
        "a_power_cut_during_an_install_boots_the_installer_again",
    ) {
        return;
    }
    let _one = lifecycle::one_at_a_time();
    let a = install_images();
    let (dir, disk, port) = lifecycle::blank_machine("install-power-cut");
    let e = format!("127.0.0.1:{port}");
    let opts = VmOptions {
        memory_mib: 768,
        forward: vec![(port, 50000)],
        disk: Some(disk.clone()),
        disk_boots_first: true,
        allow_reboot: true,
        ..VmOptions::default()
    };
    let iso = Boot::Iso {
        iso: a.iso.clone().unwrap(),
        uefi: false,
    };
    let mut vm = Vm::start_with(&iso, &dir.join("first"), &opts).unwrap();
    in_maintenance(&mut vm, &dir, &e);
    ok(&dir, &["gen", "config", "cut", "https://10.0.2.15:6443"]);
    let cfg = std::fs::read_to_string(dir.join("worker.yaml")).unwrap();
    let cfg = cfg.replacen(
        "type: worker\n",
        "type: worker\ninstall:\n  disk: /dev/vda\n",
        1,
    );
    std::fs::write(dir.join("install.yaml"), cfg).unwrap();
    let apply = ["apply-config", "--insecure", "-n", &e, "-f", "install.yaml"];
    let out = ok(&dir, &apply);
    assert!(out.contains("installing to /dev/vda"), "{out}");
    // Slot A (the 45 MiB image) is written after this line, the table after that.
    vm.wait_for("install: GRUB written", BOOT_TIMEOUT).unwrap();
    drop(vm);
    let mut vm = Vm::start_with(&iso, &dir.join("after-cut"), &opts).unwrap();
    in_maintenance(&mut vm, &dir, &e);
    let console = vm.console();
    assert!(
        !console.contains("basalt: booting slot"),
        "the half-installed disk booted:\n{console}"
    );
    let out = ok(&dir, &apply);
    assert!(out.contains("installing to /dev/vda"), "{out}");
    vm.wait_for("install: done", BOOT_TIMEOUT).unwrap();
    // The reboot after the install: the disk comes first now.
    vm.wait_for("basalt: booting slot A", BOOT_TIMEOUT).unwrap();
    vm.wait_for(
        "config loaded from /system/state/config/config.yaml",
        BOOT_TIMEOUT,
    )
    .unwrap();
}

/// An installed node reset: `--wipe EPHEMERAL` empties /var and keeps the config (it comes back
/// configured); a full reset forgets the config, and the disk boots its image in maintenance
/// mode.
fn resets(node: lifecycle::Installed) {
    let lifecycle::Installed {
        mut vm,
        endpoint: e,
        osconfig,
        dir,
        opts,
        uefi,
        ..
    } = node;
    let oc = osconfig.to_str().unwrap();
    let out = ok(&dir, &["--osconfig", oc, "reset", "--wipe", "EPHEMERAL"]);
    assert!(
        out.contains("reset sequence started (wiping EPHEMERAL)"),
        "{out}"
    );
    vm.wait_for("sequence reset: wipe EPHEMERAL:", BOOT_TIMEOUT)
        .unwrap();
    assert!(
        vm.wait_exit(BOOT_TIMEOUT).is_some(),
        "no reboot after the reset:\n{}",
        vm.console()
    );
    let console = vm.console();
    assert!(
        console.contains("entries removed from /var")
            && console.contains("reboot: Restarting system"),
        "{console}"
    );
    drop(vm);
    let mut vm = Vm::start_with(&Boot::Disk { uefi }, &dir.join("after-ephemeral"), &opts).unwrap();
    vm.wait_for(
        "config loaded from /system/state/config/config.yaml",
        BOOT_TIMEOUT,
    )
    .unwrap();
    let v = until(&dir, &["--osconfig", oc, "version"], BOOT_TIMEOUT, |o| {
        o.contains("running")
    });
    assert!(v.contains("A:0.1.0(booted)"), "{v}");

    ok(&dir, &["--osconfig", oc, "reset"]);
    assert!(
        vm.wait_exit(BOOT_TIMEOUT).is_some(),
        "no reboot after the full reset:\n{}",
        vm.console()
    );
    drop(vm);
    let mut vm = Vm::start_with(&Boot::Disk { uefi }, &dir.join("after-reset"), &opts).unwrap();
    vm.wait_for("basalt: booting slot A", BOOT_TIMEOUT).unwrap();
    in_maintenance(&mut vm, &dir, &e);
}

/// The node lifecycle after the install (issue 22): bundles that are older or for another
/// architecture are refused with the slot left empty; `osctl upgrade` writes slot B, the node
/// reboots into it on trial, confirms itself healthy and runs the new version with its config;
/// `osctl rollback` goes back; an upgrade to an image whose init exits (a kernel panic) ends,
/// by itself, on the old version again.
#[test]
fn an_installed_node_upgrades_rolls_back_and_survives_a_broken_image() {
    if !tier(
        Tier::Vm,
        "an_installed_node_upgrades_rolls_back_and_survives_a_broken_image",
    ) {
        return;
    }
    let _one = lifecycle::one_at_a_time();
    let a = install_images();
    let v2 = bundle("0.2.0", None);
    // An init that exits at once: hello, the test container's program, as PID 1.
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let broken = tmp.join("vm-images/broken-init");
    std::fs::create_dir_all(&broken).unwrap();
    for (from, to) in [
        (a.hello.clone().unwrap(), "init"),
        (a.early.clone().unwrap(), "basalt-early"),
        (a.hello.clone().unwrap(), "hello"),
    ] {
        std::fs::copy(from, broken.join(to)).unwrap();
    }
    let v3 = bundle("0.3.0", Some(broken.join("init")));

    let node = installed_node("upgrade", false, true);
    let mut vm = node.vm;
    let dir = node.dir;
    let oc = node.osconfig.to_str().unwrap();

    // Refused on the node, before slot B is touched: older, and another architecture (the
    // same files, another manifest).
    let v = basalt_disk::bundle::verify(&v2).unwrap();
    for (name, version, arch, why) in [
        (
            "old.bundle",
            "0.0.1",
            "x86_64",
            "older than the running 0.1.0",
        ),
        (
            "arm.bundle",
            "0.2.0",
            "aarch64",
            "the bundle is for aarch64",
        ),
    ] {
        let parts: Vec<(String, PathBuf)> = (0..3)
            .map(|i| {
                let p = dir.join(basalt_disk::bundle::FILES[i]);
                let mut f = std::fs::File::create(&p).unwrap();
                std::io::copy(&mut v.open(i).unwrap(), &mut f).unwrap();
                (basalt_disk::bundle::FILES[i].to_string(), p)
            })
            .collect();
        let refs: Vec<(&str, &Path)> = parts
            .iter()
            .map(|(n, p)| (n.as_str(), p.as_path()))
            .collect();
        let mut f = std::fs::File::create(dir.join(name)).unwrap();
        basalt_disk::bundle::write(&mut f, version, arch, None, &refs).unwrap();
        let o = run(&dir, &["--osconfig", oc, "upgrade", "--image", name]);
        assert!(
            !o.status.success() && text(&o).contains(why),
            "{name}: {}",
            text(&o)
        );
    }
    let ver = ok(&dir, &["--osconfig", oc, "version"]);
    assert!(ver.contains("A:0.1.0(booted) B:empty"), "{ver}");

    // Power lost while slot B is being written: the machine boots slot A, as before.
    let mut up = basalt_testkit::hermetic(&mut Command::new(env!("CARGO_BIN_EXE_osctl")))
        .args(["--osconfig", oc, "upgrade", "--image", v2.to_str().unwrap()])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    vm.wait_for("upgrade: writing 0.2.0 into slot B", BOOT_TIMEOUT)
        .unwrap();
    vm = lifecycle::power_cycle(vm, &dir, &node.opts, node.uefi);
    let _ = up.kill();
    let _ = up.wait();
    vm.wait_for("basalt: booting slot A", BOOT_TIMEOUT).unwrap();
    let ver = until(&dir, &["--osconfig", oc, "version"], BOOT_TIMEOUT, |o| {
        o.contains("running")
    });
    assert!(
        ver.contains("A:0.1.0(booted)") && !ver.contains("(next)"),
        "{ver}"
    );

    // The upgrade: osctl waits until the node runs 0.2.0 with its trial confirmed.
    let up = ok(
        &dir,
        &["--osconfig", oc, "upgrade", "--image", v2.to_str().unwrap()],
    );
    assert!(up.contains("running 0.2.0, confirmed"), "{up}");
    vm.wait_for("upgrade: slot B is healthy and confirmed", BOOT_TIMEOUT)
        .unwrap();
    let ver = ok(&dir, &["--osconfig", oc, "version"]);
    assert!(
        ver.contains("0.2.0")
            && ver.contains("running")
            && ver.contains("A:0.1.0(fallback) B:0.2.0(booted)"),
        "{ver}"
    );

    // Back by hand.
    let rb = ok(&dir, &["--osconfig", oc, "rollback"]);
    assert!(rb.contains("slot A (0.1.0) boots from now on"), "{rb}");
    let ver = until(&dir, &["--osconfig", oc, "version"], BOOT_TIMEOUT, |o| {
        o.contains("A:0.1.0(booted)")
    });
    assert!(ver.contains("B:0.2.0") && ver.contains("running"), "{ver}");

    // An upgrade that does not come up healthy: osctl says the node went back, the console
    // says why, and the node runs slot A with `slots` in `osctl version`.
    let mut goes_back = |image: &Path, trial: &str, why: &str, slots: &str| {
        let o = run(
            &dir,
            &[
                "--osconfig",
                oc,
                "upgrade",
                "--image",
                image.to_str().unwrap(),
                "--trial-timeout",
                trial,
            ],
        );
        assert!(
            !o.status.success() && text(&o).contains("back on 0.1.0"),
            "{}",
            text(&o)
        );
        vm.wait_for(why, BOOT_TIMEOUT).unwrap();
        let ver = ok(&dir, &["--osconfig", oc, "version"]);
        assert!(ver.contains(slots) && ver.contains("running"), "{ver}");
    };

    // A broken image: its init exits, the kernel panics and reboots, GRUB boots slot A.
    goes_back(
        &v3,
        "5m",
        "slot B did not confirm its boot; booting slot A again",
        "A:0.1.0(booted) B:0.3.0",
    );
    let logs = ok(&dir, &["--osconfig", oc, "logs", "init"]);
    assert!(
        logs.contains("upgrade: slot B did not confirm its boot"),
        "{logs}"
    );

    // A boot that does not get healthy within its timeout: 5 s is less than the three checks
    // in a row (2 s apart) a confirmation takes, so the trial of a good image runs out, the
    // node reboots itself, and GRUB boots slot A.
    goes_back(
        &v2,
        "5s",
        // (Why it was not: how many checks in a row passed, which load can change.)
        "upgrade: not healthy within 5 s (",
        "A:0.1.0(booted) B:0.2.0",
    );
}

/// `osctl cluster serve` (the config server of `cluster create --config-server`) on loopback:
/// QEMU's user network shows the host's loopback to the guest as 10.0.2.2. Killed on drop.
struct ConfigServer(std::process::Child);

impl ConfigServer {
    fn start(dir: &Path, served: &Path, port: u16) -> ConfigServer {
        let log = std::fs::File::create(dir.join("config-server.log")).unwrap();
        let child = basalt_testkit::hermetic(&mut Command::new(env!("CARGO_BIN_EXE_osctl")))
            .args(["cluster", "serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--dir")
            .arg(served)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the config server does not answer"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        ConfigServer(child)
    }
}

impl Drop for ConfigServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sha256_hex(path: &Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A node booted with `basalt.config=URL` and no config: it fetches its own file (`${mac}`
/// substituted by the node), says why on its console while the server has none or an invalid
/// one — staying in maintenance mode —, takes the valid one with no `apply-config`, and a
/// config whose digest is not `basalt.config.sha256` is refused.
#[test]
fn a_node_takes_its_config_from_a_url() {
    if !tier(Tier::Vm, "a_node_takes_its_config_from_a_url") {
        return;
    }
    let a = images();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-runs/config-url");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    ok(
        &dir,
        &["gen", "config", "urlnode", "https://10.0.2.15:6443"],
    );
    let served = dir.join("served");
    std::fs::create_dir_all(&served).unwrap();
    let http = free_port();
    let _server = ConfigServer::start(&dir, &served, http);
    // QEMU's user-network NIC has this MAC unless told otherwise.
    let mine = served.join("52:54:00:12:34:56.yaml");
    let boot = |extra: &str| match Boot::node(&a, "urlnode").unwrap() {
        Boot::Kernel {
            vmlinuz,
            initramfs,
            cmdline,
        } => Boot::Kernel {
            vmlinuz,
            initramfs,
            cmdline: format!(
                "{cmdline} basalt.config=http://10.0.2.2:{http}/${{mac}}.yaml {extra}"
            ),
        },
        other => other,
    };
    let port = free_port();
    let e = format!("127.0.0.1:{port}");
    let opts = VmOptions {
        memory_mib: 768,
        forward: vec![(port, 50000)],
        ..VmOptions::default()
    };
    let timeout = Duration::from_secs(180);
    let mut vm = Vm::start_with(&boot(""), &dir.join("vm1"), &opts).unwrap();
    vm.wait_for(
        "the server answered 404 Not Found; the node stays in maintenance mode",
        timeout,
    )
    .unwrap();

    let bad = std::fs::read_to_string(dir.join("worker.yaml"))
        .unwrap()
        .replacen("type: worker", "type: wroker", 1);
    std::fs::write(&mine, bad).unwrap();
    vm.wait_for("the config was rejected and nothing changed", timeout)
        .unwrap();
    vm.wait_for("wroker", timeout).unwrap();
    let v = ok(&dir, &["--insecure", "-n", &e, "version"]);
    assert!(v.contains("maintenance"), "{v}");

    std::fs::copy(dir.join("worker.yaml"), &mine).unwrap();
    vm.wait_for(
        "config: taken from 10.0.2.2 (/52:54:00:12:34:56.yaml): applied live and saved",
        timeout,
    )
    .unwrap();
    let osconfig = dir.join("osconfig");
    let oc = osconfig.to_str().unwrap();
    ok(&dir, &["--osconfig", oc, "config", "endpoint", &e]);
    let v = until(&dir, &["--osconfig", oc, "version"], timeout, |o| {
        o.contains("running")
    });
    assert!(v.contains("urlnode"), "{v}");
    // The reasons are in the node's log too, not only on its console.
    let logs = ok(&dir, &["--osconfig", oc, "logs", "init"]);
    assert!(
        logs.contains("the server answered 404 Not Found")
            && logs.contains("the config was rejected and nothing changed"),
        "{logs}"
    );
    let served_log = std::fs::read_to_string(dir.join("config-server.log")).unwrap();
    assert!(
        served_log.contains("\"GET /52:54:00:12:34:56.yaml HTTP/1.1\" 200 OK"),
        "{served_log}"
    );
    drop(vm);

    // Pinned to another file's digest: the served config is refused before it is read.
    let want = sha256_hex(&dir.join("controlplane.yaml"));
    let got = sha256_hex(&mine);
    let mut vm = Vm::start_with(
        &boot(&format!("basalt.config.sha256={want}")),
        &dir.join("vm2"),
        &opts,
    )
    .unwrap();
    vm.wait_for(
        &format!("its sha256 is {got}; basalt.config.sha256 wants {want}"),
        timeout,
    )
    .unwrap();
    let v = until(&dir, &["--insecure", "-n", &e, "version"], timeout, |o| {
        o.contains("maintenance")
    });
    assert!(v.contains("maintenance"), "{v}");
}

/// chronyd on the host's loopback (`-x`: it never touches the host's clock), which QEMU's user
/// network shows the guest as 10.0.2.2. Killed on drop.
struct Chronyd(std::process::Child);

impl Chronyd {
    fn start(dir: &Path, port: u16) -> Chronyd {
        let conf = dir.join("chrony.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbindaddress 127.0.0.1\ncmdport 0\nlocal stratum 8\nallow all\npidfile {}\n",
                dir.join("chronyd.pid").display()
            ),
        )
        .unwrap();
        let child = Command::new("chronyd")
            .args(["-x", "-d", "-f"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("chronyd.log")).unwrap())
            .spawn()
            .expect("chronyd (apt-get install chrony)");
        Chronyd(child)
    }
}

impl Drop for Chronyd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Seconds since the Unix epoch of an openssl date (`Dec  5 09:00:00 2026 GMT`).
fn openssl_date(d: &str) -> i64 {
    let o = Command::new("date")
        .args(["-u", "-d", d, "+%s"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

/// A machine whose clock starts a year behind: given a config naming an NTP server (Debian's
/// chronyd), the node steps its clock before apid's certificate is issued, so the certificate
/// is valid from now (not from a year ago); `osctl time` shows the server, its offset, and that
/// it set the clock.
#[test]
fn a_node_a_year_behind_syncs_its_clock_before_its_certificate() {
    if !tier(
        Tier::Vm,
        "a_node_a_year_behind_syncs_its_clock_before_its_certificate",
    ) {
        return;
    }
    let a = images();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-runs/time");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ntp = basalt_testkit::free_udp_port();
    let _chronyd = Chronyd::start(&dir, ntp);
    let year_ago = Command::new("date")
        .args(["-u", "-d", "-365 days", "+%Y-%m-%dT%H:%M:%S"])
        .output()
        .unwrap();
    let port = free_port();
    let e = format!("127.0.0.1:{port}");
    let mut vm = Vm::start_with(
        &Boot::node(&a, "timenode").unwrap(),
        &dir.join("vm"),
        &VmOptions {
            memory_mib: 768,
            forward: vec![(port, 50000)],
            rtc_base: Some(String::from_utf8_lossy(&year_ago.stdout).trim().to_string()),
            ..VmOptions::default()
        },
    )
    .unwrap();
    in_maintenance(&mut vm, &dir, &e);

    ok(
        &dir,
        &["gen", "config", "timenode", "https://10.0.2.15:6443"],
    );
    let cfg = std::fs::read_to_string(dir.join("worker.yaml")).unwrap()
        + &format!("---\napiVersion: v1alpha1\nkind: TimeConfig\nservers: [\"10.0.2.2:{ntp}\"]\n");
    std::fs::write(dir.join("timed.yaml"), cfg).unwrap();
    ok(
        &dir,
        &["apply-config", "--insecure", "-n", &e, "-f", "timed.yaml"],
    );
    let stepped = vm
        .wait_for("timesync: synced with 10.0.2.2", BOOT_TIMEOUT)
        .map(|_| vm.console())
        .unwrap();
    assert!(stepped.contains("stepped by +31"), "{stepped}");
    vm.wait_for("apid certificate issued from the OS CA", BOOT_TIMEOUT)
        .unwrap();
    let console = vm.console();
    assert!(
        console.find("time-synced: synced with 10.0.2.2").unwrap()
            < console
                .find("apid certificate issued from the OS CA")
                .unwrap(),
        "the certificate came before the clock was set:\n{console}"
    );

    let oc = dir.join("osconfig");
    let oc = oc.to_str().unwrap();
    ok(&dir, &["--osconfig", oc, "config", "endpoint", &e]);
    let t = until(&dir, &["--osconfig", oc, "time"], BOOT_TIMEOUT, |o| {
        o.contains("synced with")
    });
    assert!(
        t.contains(&format!("10.0.2.2:{ntp}")) && t.contains("*") && t.contains(" 8 "),
        "{t}"
    );

    // The certificate apid serves starts now, by the host's clock (the PKI backdates an hour).
    let s = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {e} </dev/null 2>/dev/null | openssl x509 -noout -startdate"
        ))
        .output()
        .unwrap();
    let start = String::from_utf8_lossy(&s.stdout);
    let not_before = openssl_date(start.trim().trim_start_matches("notBefore="));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now - not_before).abs() < 3 * 3600,
        "notBefore {start} is not about now ({now})"
    );
}

/// The power cut while a config is being saved: QEMU killed at several moments of an
/// `apply-config` (before the answer, at it, after it) — each boot after it comes up configured
/// with the old config or the new one, never a torn one (the file is written and renamed into
/// place with fsyncs).
#[test]
fn a_power_cut_while_a_config_is_saved_leaves_the_old_or_the_new() {
    if !tier(
        Tier::Vm,
        "a_power_cut_while_a_config_is_saved_leaves_the_old_or_the_new",
    ) {
        return;
    }
    let a = images();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-runs/power-cut");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("state.img");
    basalt_image::qemu::state_disk(&disk, 64).unwrap();
    let port = free_port();
    let e = format!("127.0.0.1:{port}");
    let start = |run: &str| {
        let mut vm = boot("cutnode", &a, port, Some(disk.clone()), &dir.join(run));
        vm.wait_for("basalt: PID 1 running", BOOT_TIMEOUT).unwrap();
        vm
    };
    let mut vm = start("first");
    in_maintenance(&mut vm, &dir, &e);
    ok(
        &dir,
        &["gen", "config", "cutnode", "https://10.0.2.15:6443"],
    );
    let worker = std::fs::read_to_string(dir.join("worker.yaml")).unwrap();
    let labelled = |round: u32| {
        worker.replacen(
            "type: worker\n",
            &format!("type: worker\nnodeLabels:\n  round: \"{round}\"\n"),
            1,
        )
    };
    std::fs::write(dir.join("round-0.yaml"), labelled(0)).unwrap();
    ok(
        &dir,
        &["apply-config", "--insecure", "-n", &e, "-f", "round-0.yaml"],
    );
    let oc = dir.join("osconfig");
    let oc = oc.to_str().unwrap();
    ok(&dir, &["--osconfig", oc, "config", "endpoint", &e]);
    let round_of = |dir: &Path| -> String {
        let out = until(
            dir,
            &[
                "--osconfig",
                oc,
                "get",
                "machineconfig",
                "MachineConfig",
                "-o",
                "yaml",
            ],
            BOOT_TIMEOUT,
            |o| o.contains("round:"),
        );
        out.lines()
            .find_map(|l| l.trim().strip_prefix("round: "))
            .unwrap()
            .trim_matches(|c| c == '"' || c == '\'')
            .to_string()
    };
    assert_eq!(round_of(&dir), "0");
    let mut have = 0u32;
    // The cut: before the answer can come, about when it comes, and well after it.
    for (round, after_ms) in [(1u32, 0u64), (2, 300), (3, 3000)] {
        let file = format!("round-{round}.yaml");
        std::fs::write(dir.join(&file), labelled(round)).unwrap();
        let (d, f) = (dir.clone(), file.clone());
        let oc2 = oc.to_string();
        let apply =
            std::thread::spawn(move || run(&d, &["--osconfig", &oc2, "apply-config", "-f", &f]));
        std::thread::sleep(Duration::from_millis(after_ms));
        drop(vm);
        let answered = apply.join().unwrap().status.success();
        vm = start(&format!("after-cut-{round}"));
        vm.wait_for("config loaded from", BOOT_TIMEOUT)
            .unwrap_or_else(|e| {
                panic!("round {round}: the node did not load a config after the cut: {e}")
            });
        let got = round_of(&dir);
        assert!(
            got == have.to_string() || got == round.to_string(),
            "round {round}: the node has round {got:?} (before the cut: {have})"
        );
        // An apply that was answered is kept.
        if answered {
            assert_eq!(got, round.to_string(), "round {round}: answered, then lost");
        }
        eprintln!(
            "power cut {after_ms} ms into round {round}: answered {answered}, the node has round {got}"
        );
        have = got.parse().unwrap();
    }
}
