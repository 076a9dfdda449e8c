//! The `v1alpha1` document kinds.
//!
//! Each kind is one YAML document with `apiVersion: v1alpha1` and `kind: <Kind>`. Kinds that
//! can appear many times (links) carry a `name`; the others appear once. Secrets and PKI live
//! in their own `Secrets` document so the rest of a config can be shared without them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::types::{
    BootstrapToken, Certificate, Duration, Endpoint, Hostname, Key32, LinkName, MacAddr, Prefix,
    PrivateKey,
};
use crate::{config_enum, config_struct};

pub const API_VERSION: &str = "v1alpha1";

config_enum! {
    /// The role of the machine in the cluster.
    pub enum MachineType {
        ControlPlane = "controlplane",
        Worker = "worker",
    }
}

config_struct! {
    /// Where the node installs itself: applied in maintenance mode to a node booted from its
    /// ISO or PXE, the config lays Basalt's layout (docs/operations.md) onto this disk, copies
    /// the running image into slot A, keeps the config on the disk's STATE partition and
    /// reboots. A node booted from an installed disk leaves it as it is. Give `disk` or
    /// `diskSelector`, not both.
    pub struct InstallConfig {
        /// The block device to install to: a whole disk under /dev with no `.` or `..` parts,
        /// e.g. /dev/vda. It must exist (the apply is refused naming the node's disks) and hold
        /// at least 2184 MiB.
        pub disk: Option<String> = "disk";
        /// Pick the disk by what it is instead of its name (names change with the order
        /// the kernel finds disks): the first disk, by name, that matches every field given.
        /// None matching refuses the apply, naming what was looked for and the node's disks.
        pub disk_selector: Option<DiskSelector> = "diskSelector";
        /// Install over a disk that holds a partition table, a filesystem or an earlier Basalt
        /// installation (without it, such a disk refuses the apply and says what it holds).
        pub wipe: bool = "wipe", default = false;
    }
}

config_struct! {
    /// What the install disk must be; every field given must match.
    pub struct DiskSelector {
        /// Its size: `>= 100GB`, `<= 2TB`, `> 10GiB`, `< 1TiB`, or `= 3GiB` (units B, KB, MB,
        /// GB, TB in powers of 1000; KiB, MiB, GiB, TiB in powers of 1024).
        pub size: Option<String> = "size";
        /// Its model as `osctl disks` shows it; `*` matches any run of characters
        /// (`QEMU*`, `*SSD*`).
        pub model: Option<String> = "model";
        /// Its serial number, exactly.
        pub serial: Option<String> = "serial";
        /// How it is attached: `virtio` (vd*), `nvme` (nvme*), `scsi` (sd*: SATA, SAS, USB)
        /// or `mmc` (mmcblk*).
        pub bus: Option<String> = "bus";
    }
}

/// The buses a [`DiskSelector`] names, with the kernel's device name prefix of each.
pub const DISK_BUSES: &[(&str, &str)] = &[
    ("virtio", "vd"),
    ("nvme", "nvme"),
    ("scsi", "sd"),
    ("mmc", "mmcblk"),
];

/// A size bound of a [`DiskSelector`]: how to compare, and the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeBound {
    pub op: std::cmp::Ordering,
    /// `>=` / `<=`: equal counts too.
    pub or_equal: bool,
    pub bytes: u64,
}

impl SizeBound {
    /// Parses `>= 100GB`, `<10GiB`, `= 3GiB`, `3GiB`.
    pub fn parse(s: &str) -> Result<SizeBound, crate::error::ValueError> {
        use std::cmp::Ordering::*;
        let t = s.trim();
        let (op, or_equal, rest) = if let Some(r) = t.strip_prefix(">=") {
            (Greater, true, r)
        } else if let Some(r) = t.strip_prefix("<=") {
            (Less, true, r)
        } else if let Some(r) = t.strip_prefix('>') {
            (Greater, false, r)
        } else if let Some(r) = t.strip_prefix('<') {
            (Less, false, r)
        } else if let Some(r) = t.strip_prefix('=') {
            (Equal, true, r)
        } else {
            (Equal, true, t)
        };
        let rest = rest.trim();
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let bad = || crate::error::ValueError::NotSizeBound(s.to_string());
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        let mult: u64 = match rest[digits..].trim() {
            "B" => 1,
            "KB" => 1000,
            "MB" => 1000_u64.pow(2),
            "GB" => 1000_u64.pow(3),
            "TB" => 1000_u64.pow(4),
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            _ => return Err(bad()),
        };
        Ok(SizeBound {
            op,
            or_equal,
            bytes: n.checked_mul(mult).ok_or_else(bad)?,
        })
    }

    /// Whether a disk of `bytes` satisfies the bound.
    pub fn matches(&self, bytes: u64) -> bool {
        let o = bytes.cmp(&self.bytes);
        o == self.op || (self.or_equal && o == std::cmp::Ordering::Equal)
    }
}

config_struct! {
    /// Settings for the kubelet on this node.
    pub struct KubeletConfig {
        /// Extra command-line flags, without the leading dashes (`max-pods: "50"`). Keys with
        /// `=`, spaces or leading dashes are refused, and so are the flags Basalt sets itself:
        /// config, bootstrap-kubeconfig, kubeconfig, cert-dir, root-dir, node-ip,
        /// hostname-override, node-labels, register-with-taints, container-runtime-endpoint.
        pub extra_args: BTreeMap<String, String> = "extraArgs";
        /// Subnets the kubelet picks the node IP from (first match wins).
        pub node_ip_subnets: Vec<Prefix> = "nodeIPSubnets";
        /// Cluster DNS servers handed to pods; default is the tenth address of the service subnet.
        pub cluster_dns: Vec<IpAddr> = "clusterDNS";
    }
}

config_struct! {
    /// The machine: its role, install target, certificates and kubelet.
    pub struct MachineConfig {
        /// controlplane or worker.
        pub machine_type: MachineType = "type";
        /// Install target; absent when the node runs from its boot media (ISO, PXE, container).
        pub install: Option<InstallConfig> = "install";
        /// Extra names and addresses for the node's API serving certificate.
        pub cert_sans: Vec<String> = "certSANs";
        /// Kubelet settings.
        pub kubelet: Option<KubeletConfig> = "kubelet";
        /// Labels applied to the Kubernetes node, by Kubernetes' rules: a key is an optional
        /// DNS-subdomain prefix and `/`, then a name of 1–63 letters, digits, `-`, `_` and `.`
        /// that starts and ends with a letter or digit; a value is empty or such a name.
        pub node_labels: BTreeMap<String, String> = "nodeLabels";
    }
}

config_struct! {
    /// Where the Kubernetes API is reached.
    pub struct ControlPlaneConfig {
        /// The Kubernetes API endpoint, e.g. https://10.5.0.2:6443.
        pub endpoint: Endpoint = "endpoint";
    }
}

config_struct! {
    /// Cluster networking.
    pub struct ClusterNetworkConfig {
        /// Pod network CIDRs (default 10.244.0.0/16).
        pub pod_subnets: Vec<Prefix> = "podSubnets";
        /// Service network CIDRs (default 10.96.0.0/12).
        pub service_subnets: Vec<Prefix> = "serviceSubnets";
        /// The cluster DNS domain.
        pub dns_domain: Hostname = "dnsDomain", default = "cluster.local".parse().expect("a valid default");
    }
}

config_struct! {
    /// The cluster this machine belongs to (no secrets: those are in the Secrets document).
    pub struct ClusterConfig {
        /// The cluster's name.
        pub name: Hostname = "name";
        /// A random identifier of the cluster, shared by all its nodes (base64, 32 bytes).
        pub id: Key32 = "id";
        /// The Kubernetes control plane.
        pub control_plane: ControlPlaneConfig = "controlPlane";
        /// Pod and service networks.
        pub network: Option<ClusterNetworkConfig> = "network";
        /// Let workloads run on control-plane nodes.
        pub allow_scheduling_on_control_planes: bool = "allowSchedulingOnControlPlanes", default = false;
        /// Cluster DNS (CoreDNS, a Deployment in kube-system the control planes apply).
        pub core_dns: Option<AddonSwitch> = "coreDNS";
        /// Service routing (kube-proxy, nftables mode, on every node).
        pub proxy: Option<AddonSwitch> = "proxy";
        /// The default StorageClass `local-path` (Rancher's local-path provisioner: volumes
        /// are directories under /var/local-path-provisioner on the pod's node).
        pub storage: Option<AddonSwitch> = "storage";
        /// The user's own Kubernetes manifests, applied by the control planes like the
        /// cluster's add-ons: created when missing, left alone when they exist.
        pub inline_manifests: Vec<InlineManifest> = "inlineManifests";
    }
}

config_struct! {
    /// Turns one of the cluster's add-ons off.
    pub struct AddonSwitch {
        /// Leave this add-on out.
        pub disabled: bool = "disabled", default = false;
    }
}

config_struct! {
    /// A user's manifest: Kubernetes objects as YAML (one or more documents).
    pub struct InlineManifest {
        /// A name for the manifest (unique in the cluster config; used in messages).
        pub name: String = "name";
        /// The objects, as multi-document YAML.
        pub contents: String = "contents";
    }
}

impl ClusterConfig {
    /// Whether CoreDNS is part of the cluster (on unless `coreDNS.disabled`).
    pub fn core_dns_enabled(&self) -> bool {
        self.core_dns.as_ref().is_none_or(|s| !s.disabled)
    }

    /// Whether kube-proxy runs on the nodes (on unless `proxy.disabled`).
    pub fn proxy_enabled(&self) -> bool {
        self.proxy.as_ref().is_none_or(|s| !s.disabled)
    }

    /// Whether the local-path StorageClass is part of the cluster (on unless
    /// `storage.disabled`).
    pub fn storage_enabled(&self) -> bool {
        self.storage.as_ref().is_none_or(|s| !s.disabled)
    }
}

config_struct! {
    /// A certificate authority: its certificate and, where this node signs with it, its key.
    pub struct CertificateAuthority {
        /// The CA certificate (PEM).
        pub crt: Certificate = "crt";
        /// The CA private key (PEM); absent on nodes that only verify.
        pub key: Option<PrivateKey> = "key";
    }
}

config_struct! {
    /// The certificate authorities of the cluster.
    pub struct ClusterCAs {
        /// The OS CA: issues apid serving certificates and osctl client certificates.
        pub os: CertificateAuthority = "os";
        /// The Kubernetes CA.
        pub kubernetes: CertificateAuthority = "kubernetes";
        /// The etcd CA; control planes only.
        pub etcd: Option<CertificateAuthority> = "etcd";
        /// The front-proxy CA: signs the client certificate the API server presents to
        /// aggregated APIs; control planes only (without it the aggregation layer is off).
        pub front_proxy: Option<CertificateAuthority> = "frontProxy";
    }
}

config_struct! {
    /// Secrets and PKI. Leave this document out to share the rest of a config safely.
    pub struct SecretsConfig {
        /// The cluster secret: KubeSpan pre-shared keys and discovery encryption derive from it.
        pub cluster_secret: Key32 = "clusterSecret";
        /// The Kubernetes bootstrap token nodes join with.
        pub bootstrap_token: BootstrapToken = "bootstrapToken";
        /// Key for encrypting Kubernetes secrets at rest; control planes only.
        pub secretbox_key: Option<Key32> = "secretboxEncryptionSecret";
        /// The service-account signing key (PEM); control planes only. RSA (at least 2048
        /// bits) or ECDSA: Kubernetes cannot sign tokens with Ed25519.
        pub service_account_key: Option<PrivateKey> = "serviceAccountKey";
        /// The certificate authorities: each a CA certificate valid now, with its own key;
        /// RSA keys of at least 2048 bits. (With time servers in a TimeConfig, "now" is not
        /// this machine's clock, which may be wrong until it syncs with them.)
        pub certs: ClusterCAs = "certs";
    }
}

config_struct! {
    /// A static route.
    pub struct RouteConfig {
        /// The destination network; 0.0.0.0/0 or ::/0 for a default route.
        pub destination: Prefix = "destination";
        /// The next hop; absent for an on-link route.
        pub gateway: Option<IpAddr> = "gateway";
        /// Route metric (lower wins).
        pub metric: u32 = "metric", default = 1024;
        /// The source address to prefer.
        pub source: Option<IpAddr> = "source";
    }
}

config_struct! {
    /// Picks a physical link by hardware properties instead of by name.
    pub struct LinkSelector {
        /// The link's MAC address.
        pub hardware_addr: Option<MacAddr> = "hardwareAddr";
        /// The kernel driver name, e.g. virtio_net.
        pub driver: Option<String> = "driver";
    }
}

config_struct! {
    /// A physical link, or a dummy link with `dummy: true`.
    pub struct LinkConfig {
        /// The interface name; with a selector, the name it is known by in this config.
        pub name: LinkName = "name";
        /// Match the link by MAC address or driver rather than by name.
        pub selector: Option<LinkSelector> = "selector";
        /// Create a dummy link instead of configuring a physical one.
        pub dummy: bool = "dummy", default = false;
        /// Whether the link is up.
        pub up: bool = "up", default = true;
        /// The MTU.
        pub mtu: Option<u32> = "mtu";
        /// Static addresses with prefix length.
        pub addresses: Vec<Prefix> = "addresses";
        /// Static routes through this link.
        pub routes: Vec<RouteConfig> = "routes";
        /// Run the DHCPv4 client on this link.
        pub dhcp: bool = "dhcp", default = false;
    }
}

config_enum! {
    /// The bonding mode, as the kernel's bonding driver names it.
    pub enum BondMode {
        BalanceRr = "balance-rr",
        ActiveBackup = "active-backup",
        BalanceXor = "balance-xor",
        Broadcast = "broadcast",
        Lacp = "802.3ad",
        BalanceTlb = "balance-tlb",
        BalanceAlb = "balance-alb",
    }
}

config_struct! {
    /// A bond of links.
    pub struct BondConfig {
        /// The bond's interface name.
        pub name: LinkName = "name";
        /// The bonding mode.
        pub mode: BondMode = "mode";
        /// Link monitoring interval in milliseconds.
        pub miimon: u32 = "miimon", default = 100;
        /// The member links; they are enslaved before the bond comes up.
        pub links: Vec<LinkName> = "links";
        /// Whether the bond is up.
        pub up: bool = "up", default = true;
        /// The MTU.
        pub mtu: Option<u32> = "mtu";
        /// Static addresses.
        pub addresses: Vec<Prefix> = "addresses";
        /// Static routes.
        pub routes: Vec<RouteConfig> = "routes";
        /// Run the DHCPv4 client on the bond.
        pub dhcp: bool = "dhcp", default = false;
    }
}

config_struct! {
    /// An 802.1Q VLAN on a parent link.
    pub struct VlanConfig {
        /// The VLAN interface name, e.g. eth0.100.
        pub name: LinkName = "name";
        /// The parent link.
        pub parent: LinkName = "parent";
        /// The VLAN ID, 1 to 4094.
        pub vlan_id: u16 = "vlanID";
        /// Whether the VLAN link is up.
        pub up: bool = "up", default = true;
        /// The MTU; at most the parent's.
        pub mtu: Option<u32> = "mtu";
        /// Static addresses.
        pub addresses: Vec<Prefix> = "addresses";
        /// Static routes.
        pub routes: Vec<RouteConfig> = "routes";
        /// Run the DHCPv4 client on the VLAN link.
        pub dhcp: bool = "dhcp", default = false;
    }
}

config_struct! {
    /// A bridge joining links.
    pub struct BridgeConfig {
        /// The bridge's interface name.
        pub name: LinkName = "name";
        /// The ports of the bridge.
        pub links: Vec<LinkName> = "links";
        /// Run the spanning tree protocol.
        pub stp: bool = "stp", default = false;
        /// Whether the bridge is up.
        pub up: bool = "up", default = true;
        /// The MTU.
        pub mtu: Option<u32> = "mtu";
        /// Static addresses.
        pub addresses: Vec<Prefix> = "addresses";
        /// Static routes.
        pub routes: Vec<RouteConfig> = "routes";
        /// Run the DHCPv4 client on the bridge.
        pub dhcp: bool = "dhcp", default = false;
    }
}

config_struct! {
    /// The node's hostname.
    pub struct HostnameConfig {
        /// A fixed hostname.
        pub hostname: Option<Hostname> = "hostname";
        /// Derive a stable hostname from the machine when none is set or given by DHCP.
        pub auto: bool = "auto", default = true;
    }
}

config_struct! {
    /// DNS resolvers.
    pub struct ResolverConfig {
        /// Name servers, in order.
        pub nameservers: Vec<IpAddr> = "nameservers";
        /// Search domains.
        pub search_domains: Vec<Hostname> = "searchDomains";
    }
}

config_struct! {
    /// Time synchronization.
    pub struct TimeConfig {
        /// Turn time synchronization off: the clock stays as the machine has it.
        pub disabled: bool = "disabled", default = false;
        /// NTP servers: names or addresses, each with `:port` if not 123; asked with those DHCP
        /// and `ip=` give. The clock is stepped when more than a second off, slewed otherwise.
        pub servers: Vec<String> = "servers";
        /// How long the node waits for time to sync before it issues certificates and starts
        /// etcd and the kubelet anyway (the clock as it is).
        pub boot_timeout: Duration = "bootTimeout", default = Duration::from_std(std::time::Duration::from_secs(120));
    }
}

config_struct! {
    /// KubeSpan: the automatic WireGuard mesh between the cluster's nodes.
    pub struct KubeSpanConfig {
        /// Turn KubeSpan on. It meets its peers through discovery, so a DiscoveryConfig with
        /// `enabled: true` must be in the config too (else the config is refused).
        pub enabled: bool = "enabled", default = false;
        /// The MTU of the WireGuard link (at least 1280).
        pub mtu: u32 = "mtu", default = 1420;
        /// Route pod networks through the mesh too, not only node addresses.
        pub advertise_pod_networks: bool = "advertisePodNetworks", default = true;
        /// Reach peers that cannot be reached directly (behind NAT) through a relay peer.
        pub allow_relay: bool = "allowRelay", default = true;
        /// How long a peer may go without a handshake before it is marked down.
        pub peer_down_after: Duration = "peerDownAfter", default = Duration::from_std(std::time::Duration::from_secs(275));
    }
}

config_struct! {
    /// Cluster member discovery.
    pub struct DiscoveryConfig {
        /// Publish and read affiliates through the discovery server.
        pub enabled: bool = "enabled", default = false;
        /// The discovery server's URL.
        pub endpoint: Option<Endpoint> = "endpoint";
        /// Run the discovery server on this node too (port 3000; its records kept in the state
        /// directory across restarts): a cluster can meet at one of its control-plane nodes.
        pub serve: bool = "serve", default = false;
    }
}

config_struct! {
    /// One mirror of a registry.
    pub struct RegistryEndpoint {
        /// The mirror's URL: `http://` or `https://`, a host and an optional port, e.g.
        /// `http://10.5.0.1:5000`. Pulls ask it for `/v2/...` as they would the registry.
        pub url: String = "url";
    }
}

config_struct! {
    /// Where the node pulls a registry's images from: the endpoints in order, then the
    /// registry itself unless `skipFallback`. Read by containerd on every pull: a change is
    /// applied live.
    pub struct RegistryMirrorConfig {
        /// The registry as image references name it (`docker.io`, `registry.k8s.io`,
        /// `10.5.0.1:5000`), or `*` for every registry without a document of its own.
        pub name: String = "name";
        /// The mirrors, tried in order.
        pub endpoints: Vec<RegistryEndpoint> = "endpoints";
        /// Never pull from the registry itself: only from the endpoints.
        pub skip_fallback: bool = "skipFallback", default = false;
    }
}

config_struct! {
    /// Credentials for a registry host — a mirror's or a registry's: a username and password,
    /// or an identity token. Redacted in `osctl get` for every role but admin. containerd reads
    /// them when it starts: a change restarts it (running containers keep running).
    pub struct RegistryAuthConfig {
        /// The host as pulls reach it: `host` or `host:port` (a mirror's, when pulls go
        /// through one).
        pub name: String = "name";
        pub username: Option<String> = "username";
        pub password: Option<String> = "password";
        /// A token for the registry's token service (instead of a username and password).
        pub identity_token: Option<String> = "identityToken";
    }
}

config_struct! {
    /// A client certificate and its key.
    pub struct ClientIdentity {
        pub crt: Certificate = "crt";
        pub key: PrivateKey = "key";
    }
}

config_struct! {
    /// TLS to a registry host: the CA its certificate is checked against, a client
    /// certificate, or no check at all. Read by containerd on every pull: applied live.
    pub struct RegistryTlsConfig {
        /// The host as pulls reach it: `host` or `host:port`.
        pub name: String = "name";
        /// The CA (PEM) the host's certificate must chain to, instead of the system's.
        pub ca: Option<Certificate> = "ca";
        /// A client certificate to present.
        pub client_identity: Option<ClientIdentity> = "clientIdentity";
        /// Do not check the host's certificate at all.
        pub insecure_skip_verify: bool = "insecureSkipVerify", default = false;
    }
}
