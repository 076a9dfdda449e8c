//! Where Kubernetes lives on the node and how its programs run: what every module of this
//! crate shares, so none of them imports another for it.

use std::path::Path;

use basalt_config::Config;
use basalt_supervisor::process::ProcessSpec;

pub const KUBELET: &str = "/usr/bin/kubelet";
/// The kubelet's root directory (its pods, its client certificate, its kubeconfig).
pub const KUBELET_ROOT: &str = "/var/lib/kubelet";
/// The condition the TLS bootstrap sets once the kubelet's client certificate is written.
pub const KUBELET_CLIENT_READY: &str = "kubelet-client-ready";
/// The condition the node watcher keeps: this node's Node object exists and has an address
/// (the kubelet registered it). kube-proxy waits for it: it waits only 30 s for its Node itself,
/// then runs without the node's address and exits once the address appears.
pub const NODE_REGISTERED: &str = "node-registered";

/// Whether this image runs Kubernetes.
pub fn available() -> bool {
    Path::new(KUBELET).exists()
}

/// How etcd and the control plane run: a static program from the root, a plain `PATH`, many
/// files.
/// The `cpu.weight` of a control plane's own services (etcd, the API server, the controller
/// manager, the scheduler): four times everything else's (100), so that when the CPU is short
/// — a boot's image import, an image pull, pods on a control plane that allows them — the
/// control plane is served first. Idle, a weight costs nothing.
pub const CONTROL_PLANE_CPU_WEIGHT: u32 = 400;

/// [`process`] for a control plane's own service ([`CONTROL_PLANE_CPU_WEIGHT`]).
pub fn control_plane_process(program: &str, args: Vec<String>) -> ProcessSpec {
    ProcessSpec {
        cpu_weight: Some(CONTROL_PLANE_CPU_WEIGHT),
        ..process(program, args)
    }
}

pub fn process(program: &str, args: Vec<String>) -> ProcessSpec {
    ProcessSpec {
        program: program.into(),
        args,
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        rlimits: vec![(
            nix::sys::resource::Resource::RLIMIT_NOFILE,
            1 << 16,
            1 << 16,
        )],
        ..ProcessSpec::default()
    }
}

/// A plain-HTTP health endpoint on the loopback answers `GET /healthz` with 200 (the kubelet's,
/// kube-proxy's).
pub async fn healthz(port: u16) -> Result<(), basalt_supervisor::HealthError> {
    healthz_at(std::net::Ipv4Addr::LOCALHOST.into(), port).await
}

/// [`healthz`] at another address (kube-proxy's on another node).
pub async fn healthz_at(
    ip: std::net::IpAddr,
    port: u16,
) -> Result<(), basalt_supervisor::HealthError> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect((ip, port)).await?;
    s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out);
    if text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!("healthz: {}", text.lines().next().unwrap_or("no answer")).into())
    }
}

/// The cluster's (pod, service) CIDRs, defaults filled in (10.244.0.0/16, 10.96.0.0/12).
pub fn cluster_cidrs(config: &Config) -> (Vec<String>, Vec<String>) {
    let net = config.cluster().network.as_ref();
    let or = |v: Vec<String>, d: &str| if v.is_empty() { vec![d.to_string()] } else { v };
    (
        or(
            net.map(|n| n.pod_subnets.iter().map(|p| p.to_string()).collect())
                .unwrap_or_default(),
            "10.244.0.0/16",
        ),
        or(
            net.map(|n| n.service_subnets.iter().map(|p| p.to_string()).collect())
                .unwrap_or_default(),
            "10.96.0.0/12",
        ),
    )
}

/// Where cluster DNS answers: the tenth address of the service subnet (CoreDNS's Service, the
/// kubelets' default `clusterDNS`).
pub fn dns_service_ip(config: &Config) -> std::net::IpAddr {
    crate::pki::nth_address(crate::pki::service_ip(config), 9)
}

/// The cluster's DNS domain (`cluster.local` unless configured).
pub fn dns_domain(config: &Config) -> String {
    config
        .cluster()
        .network
        .as_ref()
        .map_or_else(|| "cluster.local".into(), |n| n.dns_domain.to_string())
}
