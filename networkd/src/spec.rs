//! The network resources: specs (what should be) and statuses (what the kernel says).
//!
//! Every source of network config writes *layered* specs (namespace `network-config`, id
//! `<layer>/<id>`); the merge controller keeps the highest layer of each id and writes the
//! merged specs (namespace `network`), which the apply controller makes real.

use std::net::IpAddr;

use basalt_config::types::Prefix;
use basalt_resources::Spec;
use serde::Serialize;

/// Where a spec came from, lowest first: a higher layer wins for the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// Built in: `lo` up with its addresses.
    Default,
    /// What the platform gave the node before networkd ran: on a container node, the
    /// addresses the container runtime put on its links. Like a lease, they are kept whichever
    /// layer wins the link.
    Platform,
    /// The kernel command line's `ip=` argument.
    Cmdline,
    /// A DHCP lease.
    Dhcp,
    /// The machine config.
    Config,
}

impl Layer {
    pub fn name(self) -> &'static str {
        match self {
            Layer::Default => "default",
            Layer::Platform => "platform",
            Layer::Cmdline => "cmdline",
            Layer::Dhcp => "dhcp",
            Layer::Config => "config",
        }
    }
}

/// A merged network spec: it has an id that layers agree on, and a layered form.
pub trait NetSpec: Spec {
    /// The id shared by every layer's version of this object.
    fn id(&self) -> String;
}

/// A spec as one layer says it (namespace `network-config`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Layered<T> {
    pub layer: Layer,
    #[serde(flatten)]
    pub spec: T,
}

impl<T: NetSpec> Spec for Layered<T> {
    const TYPE: &'static str = T::TYPE;
    const NAMESPACE: &'static str = "network-config";
}

/// What kind of link, with what only that kind has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum LinkKind {
    /// A link the hardware (or the test's veth) provides: configured, never created.
    Physical,
    Dummy,
    Bond {
        /// The bonding driver's name for the mode (`active-backup`, `802.3ad`, ...).
        mode: String,
        miimon: u32,
    },
    Vlan {
        parent: String,
        id: u16,
    },
    Bridge {
        stp: bool,
    },
    Wireguard,
}

impl LinkKind {
    /// The kernel's `IFLA_INFO_KIND` for links networkd creates; `None` for physical ones.
    pub fn kernel_kind(&self) -> Option<&'static str> {
        match self {
            LinkKind::Physical => None,
            LinkKind::Dummy => Some("dummy"),
            LinkKind::Bond { .. } => Some("bond"),
            LinkKind::Vlan { .. } => Some("vlan"),
            LinkKind::Bridge { .. } => Some("bridge"),
            LinkKind::Wireguard => Some("wireguard"),
        }
    }
}

/// Picks a physical link by hardware rather than by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Selector {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hardware_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}

/// A link as it should be (id = its name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkSpec {
    pub name: String,
    pub kind: LinkKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    pub up: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The bond or bridge this link is a member of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
}

impl Spec for LinkSpec {
    const TYPE: &'static str = "LinkSpec";
    const NAMESPACE: &'static str = "network";
}
impl NetSpec for LinkSpec {
    fn id(&self) -> String {
        self.name.clone()
    }
}

/// An address on a link (id = `link/address/prefix`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AddressSpec {
    pub link: String,
    pub address: Prefix,
}

impl Spec for AddressSpec {
    const TYPE: &'static str = "AddressSpec";
    const NAMESPACE: &'static str = "network";
}
impl NetSpec for AddressSpec {
    fn id(&self) -> String {
        format!("{}/{}", self.link, self.address)
    }
}

/// The main routing table.
pub const MAIN_TABLE: u32 = 254;

/// A route (id = `link/destination/metric`; the gateway is not part of it, so a higher layer
/// can move a route to another gateway).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    pub link: String,
    /// `0.0.0.0/0` or `::/0` for a default route.
    pub destination: Prefix,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<IpAddr>,
    pub metric: u32,
    pub table: u32,
}

impl Spec for RouteSpec {
    const TYPE: &'static str = "RouteSpec";
    const NAMESPACE: &'static str = "network";
}
impl NetSpec for RouteSpec {
    fn id(&self) -> String {
        let table = if self.table == MAIN_TABLE {
            String::new()
        } else {
            format!("table{}/", self.table)
        };
        format!(
            "{table}{}/{}/{}",
            self.link,
            self.destination.network(),
            self.metric
        )
    }
}

/// A policy routing rule (id = its priority): KubeSpan's fwmark rule is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleSpec {
    pub priority: u32,
    pub ipv6: bool,
    /// Match packets with this firewall mark (under `fwmask`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fwmark: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fwmask: Option<u32>,
    /// Match packets *without* the mark instead.
    pub invert: bool,
    pub table: u32,
}

impl Spec for RuleSpec {
    const TYPE: &'static str = "RuleSpec";
    const NAMESPACE: &'static str = "network";
}
impl NetSpec for RuleSpec {
    fn id(&self) -> String {
        format!(
            "{}/{}",
            if self.ipv6 { "inet6" } else { "inet" },
            self.priority
        )
    }
}

/// The node's hostname (id `hostname`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostnameSpec {
    pub hostname: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

impl Spec for HostnameSpec {
    const TYPE: &'static str = "HostnameSpec";
    const NAMESPACE: &'static str = "network";
}
impl NetSpec for HostnameSpec {
    fn id(&self) -> String {
        "hostname".into()
    }
}

/// Whether the node derives a hostname from its MAC when no layer gives one (id
/// `hostname-auto`; absent: it does). `HostnameConfig.auto`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostnameAutoSpec {
    pub enabled: bool,
}

impl Spec for HostnameAutoSpec {
    const TYPE: &'static str = "HostnameAutoSpec";
    const NAMESPACE: &'static str = "network";
}
impl NetSpec for HostnameAutoSpec {
    fn id(&self) -> String {
        "hostname-auto".into()
    }
}

/// DNS resolvers (id `resolvers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolverSpec {
    pub nameservers: Vec<IpAddr>,
    pub search_domains: Vec<String>,
}

impl Spec for ResolverSpec {
    const TYPE: &'static str = "ResolverSpec";
    const NAMESPACE: &'static str = "network";
}
impl NetSpec for ResolverSpec {
    fn id(&self) -> String {
        "resolvers".into()
    }
}

/// NTP servers handed to the time service (id `timeservers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimeServerSpec {
    pub servers: Vec<String>,
}

impl Spec for TimeServerSpec {
    const TYPE: &'static str = "TimeServerSpec";
    const NAMESPACE: &'static str = "network";
}
impl NetSpec for TimeServerSpec {
    fn id(&self) -> String {
        "timeservers".into()
    }
}

/// Run the DHCPv4 client on a link (id = the link).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DhcpSpec {
    pub link: String,
}

impl Spec for DhcpSpec {
    const TYPE: &'static str = "DhcpSpec";
    const NAMESPACE: &'static str = "network";
}
impl NetSpec for DhcpSpec {
    fn id(&self) -> String {
        self.link.clone()
    }
}

/// What the kernel says of a network link (id = its name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkStatus {
    pub index: u32,
    /// The driver kind for virtual links (`bridge`, `veth`, `wireguard`, ...); empty for
    /// hardware.
    pub kind: String,
    pub hardware_addr: String,
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// The kernel's operational state: `up`, `down`, `lowerlayerdown`, `unknown`, ...
    pub oper_state: String,
    /// The master link's index (a bond or bridge member), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_index: Option<u32>,
    /// The kernel driver of a hardware link (`virtio_net`, `e1000`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}

impl Spec for LinkStatus {
    const TYPE: &'static str = "LinkStatus";
    const NAMESPACE: &'static str = "network";
}

/// An address the kernel has (id = `link/address/prefix`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AddressStatus {
    pub link: String,
    pub index: u32,
    pub address: Prefix,
    /// `global`, `link`, `host`.
    pub scope: String,
    /// Set by hand or by networkd (not by the kernel's autoconfiguration).
    pub permanent: bool,
}

impl Spec for AddressStatus {
    const TYPE: &'static str = "AddressStatus";
    const NAMESPACE: &'static str = "network";
}

/// A route the kernel has (id = `table/destination/gateway/link/metric`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    pub link: String,
    pub destination: Prefix,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<IpAddr>,
    pub metric: u32,
    pub table: u32,
    /// Who installed it: `kernel`, `boot`, `static` (networkd), `dhcp`, a number otherwise.
    pub protocol: String,
}

impl Spec for RouteStatus {
    const TYPE: &'static str = "RouteStatus";
    const NAMESPACE: &'static str = "network";
}

/// A policy routing rule the kernel has (id = `inet/<priority>` or `inet6/<priority>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleStatus {
    #[serde(flatten)]
    pub rule: RuleSpec,
    pub protocol: String,
}

impl Spec for RuleStatus {
    const TYPE: &'static str = "RuleStatus";
    const NAMESPACE: &'static str = "network";
}

/// The hostname in effect (id `hostname`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostnameStatus {
    pub hostname: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

impl Spec for HostnameStatus {
    const TYPE: &'static str = "HostnameStatus";
    const NAMESPACE: &'static str = "network";
}

/// The node's host name: networkd's `HostnameStatus`, else the kernel's (a container's runtime
/// names a container node, and networkd leaves it alone).
pub fn hostname(store: &basalt_resources::Store) -> Option<String> {
    store
        .get::<HostnameStatus>("hostname")
        .map(|(_, h)| h.hostname)
        .or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
        })
        .filter(|h| !h.is_empty())
}

/// The resolvers written to resolv.conf (id `resolvers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolverStatus {
    pub nameservers: Vec<IpAddr>,
    pub search_domains: Vec<String>,
}

impl Spec for ResolverStatus {
    const TYPE: &'static str = "ResolverStatus";
    const NAMESPACE: &'static str = "network";
}

/// The time servers the time service uses (id `timeservers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimeServerStatus {
    pub servers: Vec<String>,
}

impl Spec for TimeServerStatus {
    const TYPE: &'static str = "TimeServerStatus";
    const NAMESPACE: &'static str = "network";
}
