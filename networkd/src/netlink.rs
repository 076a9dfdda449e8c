//! The kernel side: reading links, addresses and routes over rtnetlink into [`Observed`], and
//! running a plan's operations. The only module that speaks netlink.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use basalt_config::types::Prefix;
use futures::TryStreamExt as _;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressMessage, AddressScope,
};
use rtnetlink::packet_route::link::{
    BondMode, InfoBond, InfoData, InfoVlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, State,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::{Handle, LinkBond, LinkBridge, LinkDummy, LinkUnspec, LinkVlan, LinkWireguard};

use crate::plan::{
    ALIAS, Observed, ObservedAddress, ObservedLink, ObservedRoute, ObservedRule, Op, RouteOp,
};
use crate::spec::{LinkKind, RuleSpec};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("cannot list {what}")]
    List {
        what: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{op}")]
    Op {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{op}: {why}")]
    Invalid { op: String, why: String },
}

/// A netlink connection in the calling thread's network namespace.
pub fn connect() -> Result<Handle, NetlinkError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
    tokio::spawn(conn);
    Ok(handle)
}

fn bond_mode_name(m: BondMode) -> String {
    match m {
        BondMode::BalanceRr => "balance-rr".into(),
        BondMode::ActiveBackup => "active-backup".into(),
        BondMode::BalanceXor => "balance-xor".into(),
        BondMode::Broadcast => "broadcast".into(),
        BondMode::Ieee8023Ad => "802.3ad".into(),
        BondMode::BalanceTlb => "balance-tlb".into(),
        BondMode::BalanceAlb => "balance-alb".into(),
        BondMode::Other(n) => n.to_string(),
        _ => "unknown".into(),
    }
}

fn bond_mode(name: &str) -> Option<BondMode> {
    Some(match name {
        "balance-rr" => BondMode::BalanceRr,
        "active-backup" => BondMode::ActiveBackup,
        "balance-xor" => BondMode::BalanceXor,
        "broadcast" => BondMode::Broadcast,
        "802.3ad" => BondMode::Ieee8023Ad,
        "balance-tlb" => BondMode::BalanceTlb,
        "balance-alb" => BondMode::BalanceAlb,
        _ => return None,
    })
}

/// The driver of a hardware link, from sysfs (absent for virtual links, or when /sys shows
/// another namespace).
fn driver(name: &str) -> Option<String> {
    std::fs::read_link(format!("/sys/class/net/{name}/device/driver"))
        .ok()
        .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
}

pub fn mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn link(m: &LinkMessage) -> Option<ObservedLink> {
    let mut l = ObservedLink {
        index: m.header.index,
        up: m.header.flags.contains(LinkFlags::Up),
        ..ObservedLink::default()
    };
    let mut vlan_id = None;
    let mut parent = None;
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Address(b) => l.hardware_addr = mac(b),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Controller(i) => l.master = Some(*i),
            LinkAttribute::IfAlias(s) => l.alias = Some(s.clone()),
            LinkAttribute::Link(i) => parent = Some(*i),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => l.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Vlan(v)) => {
                            for x in v {
                                if let InfoVlan::Id(id) = x {
                                    vlan_id = Some(*id);
                                }
                            }
                        }
                        LinkInfo::Data(InfoData::Bond(b)) => {
                            for x in b {
                                if let InfoBond::Mode(m) = x {
                                    l.bond_mode = Some(bond_mode_name(*m));
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if l.name.is_empty() {
        return None;
    }
    if let (Some(p), Some(id)) = (parent, vlan_id) {
        l.vlan = Some((p, id));
    }
    if l.kind.is_none() {
        l.driver = driver(&l.name);
    }
    Some(l)
}

pub fn address(m: &AddressMessage) -> Option<ObservedAddress> {
    let mut addr = None;
    let mut local = None;
    let mut permanent = m
        .header
        .flags
        .contains(rtnetlink::packet_route::address::AddressHeaderFlags::Permanent);
    for a in &m.attributes {
        match a {
            AddressAttribute::Address(x) => addr = Some(*x),
            AddressAttribute::Local(x) => local = Some(*x),
            AddressAttribute::Flags(f) => permanent = f.contains(AddressFlags::Permanent),
            _ => {}
        }
    }
    // For IPv4 IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on
    // point-to-point links); IPv6 has only IFA_ADDRESS.
    let ip = local.or(addr)?;
    Some(ObservedAddress {
        index: m.header.index,
        address: Prefix::new(ip, m.header.prefix_len).ok()?,
        permanent,
    })
}

/// The scope an address is added with, as `ip address add` gives it: host for IPv4 loopback
/// addresses, universe otherwise (the kernel derives IPv6 scopes from the address itself).
/// A `127.0.0.1` of universe scope is a source the kernel may pick for a route through a link
/// with no IPv4 address of its own (KubeSpan's), and it refuses to send from a loopback address
/// off loopback: every connection along that route failed with `EINVAL`.
fn address_scope(addr: IpAddr) -> AddressScope {
    match addr {
        IpAddr::V4(a) if a.is_loopback() => AddressScope::Host,
        _ => AddressScope::Universe,
    }
}

pub fn scope_name(m: &AddressMessage) -> String {
    match m.header.scope {
        AddressScope::Universe => "global".into(),
        AddressScope::Link => "link".into(),
        AddressScope::Host => "host".into(),
        AddressScope::Site => "site".into(),
        AddressScope::Nowhere => "nowhere".into(),
        other => format!("{other:?}").to_ascii_lowercase(),
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(x) => Some(IpAddr::V4(*x)),
        RouteAddress::Inet6(x) => Some(IpAddr::V6(*x)),
        _ => None,
    }
}

pub fn route(m: &RouteMessage) -> Option<ObservedRoute> {
    let zero = match m.header.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let mut r = ObservedRoute {
        index: None,
        destination: Prefix::new(zero, 0).ok()?,
        gateway: None,
        source: None,
        metric: 0,
        table: u32::from(m.header.table),
        protocol: m.header.protocol.into(),
    };
    let mut dst = zero;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = ip_of(d)?,
            RouteAttribute::Gateway(g) => r.gateway = ip_of(g),
            RouteAttribute::PrefSource(s) => r.source = ip_of(s),
            RouteAttribute::Oif(i) => r.index = Some(*i),
            RouteAttribute::Priority(p) => r.metric = *p,
            RouteAttribute::Table(t) => r.table = *t,
            _ => {}
        }
    }
    r.destination = Prefix::new(dst, m.header.destination_prefix_length)
        .ok()?
        .network();
    Some(r)
}

pub fn protocol_name(p: u8) -> String {
    match p {
        2 => "kernel".into(),
        3 => "boot".into(),
        4 => "static".into(),
        16 => "dhcp".into(),
        n => n.to_string(),
    }
}

/// Everything the kernel has, in one consistent-enough read (three dumps).
pub async fn observe(h: &Handle) -> Result<Observed, NetlinkError> {
    let list = |what| move |source| NetlinkError::List { what, source };
    let links: Vec<LinkMessage> = h
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(list("links"))?;
    let addrs: Vec<AddressMessage> = h
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(list("addresses"))?;
    Ok(Observed {
        links: links.iter().filter_map(link).collect(),
        addresses: addrs.iter().filter_map(address).collect(),
        routes: observe_routes(h).await?,
        rules: observe_rules(h).await?,
    })
}

/// Every policy routing rule, both families.
pub async fn observe_rules(h: &Handle) -> Result<Vec<ObservedRule>, NetlinkError> {
    use rtnetlink::packet_route::rule::{RuleAttribute, RuleFlags, RuleMessage};
    let mut out = Vec::new();
    for v in [rtnetlink::IpVersion::V4, rtnetlink::IpVersion::V6] {
        let msgs: Vec<RuleMessage> = h
            .rule()
            .get(v.clone())
            .execute()
            .try_collect()
            .await
            .map_err(|source| NetlinkError::List {
                what: "rules",
                source,
            })?;
        for m in msgs {
            let mut r = RuleSpec {
                priority: 0,
                ipv6: matches!(v, rtnetlink::IpVersion::V6),
                fwmark: None,
                fwmask: None,
                invert: m.header.flags.contains(RuleFlags::Invert),
                table: u32::from(m.header.table),
            };
            let mut protocol = 0u8;
            for a in &m.attributes {
                match a {
                    RuleAttribute::Priority(p) => r.priority = *p,
                    RuleAttribute::FwMark(x) => r.fwmark = Some(*x),
                    RuleAttribute::FwMask(x) => r.fwmask = Some(*x),
                    RuleAttribute::Table(t) => r.table = *t,
                    RuleAttribute::Protocol(p) => protocol = (*p).into(),
                    _ => {}
                }
            }
            if r.fwmark == Some(0) && r.fwmask.is_none_or(|k| k == 0) {
                r.fwmark = None;
                r.fwmask = None;
            }
            out.push(ObservedRule { rule: r, protocol });
        }
    }
    Ok(out)
}

/// Every route of every table, both families.
pub async fn observe_routes(h: &Handle) -> Result<Vec<ObservedRoute>, NetlinkError> {
    let mut routes: Vec<RouteMessage> = Vec::new();
    for family in [
        rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .table_id(0)
            .build(),
        rtnetlink::RouteMessageBuilder::<Ipv6Addr>::new()
            .table_id(0)
            .build(),
    ] {
        let mut got: Vec<RouteMessage> = h
            .route()
            .get(family)
            .execute()
            .try_collect()
            .await
            .map_err(|source| NetlinkError::List {
                what: "routes",
                source,
            })?;
        routes.append(&mut got);
    }
    Ok(routes.iter().filter_map(route).collect())
}

/// A link message as (name, `LinkStatus`).
pub fn link_status(m: &LinkMessage) -> Option<(String, crate::spec::LinkStatus)> {
    let l = link(m)?;
    let oper_state = m
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::OperState(st) => Some(match st {
                State::Up => "up".to_string(),
                State::Down => "down".into(),
                State::Unknown => "unknown".into(),
                State::LowerLayerDown => "lowerlayerdown".into(),
                State::Dormant => "dormant".into(),
                State::NotPresent => "notpresent".into(),
                State::Testing => "testing".into(),
                other => format!("{other:?}").to_ascii_lowercase(),
            }),
            _ => None,
        })
        .unwrap_or_default();
    Some((
        l.name,
        crate::spec::LinkStatus {
            index: l.index,
            kind: l.kind.unwrap_or_default(),
            hardware_addr: l.hardware_addr,
            mtu: l.mtu,
            up: l.up,
            oper_state,
            master_index: l.master,
            driver: l.driver,
        },
    ))
}

/// One `RTM_SETLINK` with what `b` says.
async fn set(
    h: &Handle,
    b: rtnetlink::LinkMessageBuilder<LinkUnspec>,
) -> Result<(), rtnetlink::Error> {
    h.link().set(b.build()).execute().await
}

fn rule_message(r: &RuleSpec) -> rtnetlink::packet_route::rule::RuleMessage {
    use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
    let mut m = RuleMessage::default();
    m.header.family = if r.ipv6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    m.header.action = RuleAction::ToTable;
    if r.invert {
        m.header.flags |= RuleFlags::Invert;
    }
    if let Ok(t) = u8::try_from(r.table) {
        m.header.table = t;
    }
    m.attributes.push(RuleAttribute::Table(r.table));
    m.attributes.push(RuleAttribute::Priority(r.priority));
    if let Some(x) = r.fwmark {
        m.attributes.push(RuleAttribute::FwMark(x));
        m.attributes
            .push(RuleAttribute::FwMask(r.fwmask.unwrap_or(u32::MAX)));
    }
    m.attributes
        .push(RuleAttribute::Protocol(RouteProtocol::Static));
    m
}

fn invalid<E: std::fmt::Display>(op: &Op) -> impl Fn(E) -> NetlinkError + Copy + '_ {
    move |e| NetlinkError::Invalid {
        op: op.to_string(),
        why: e.to_string(),
    }
}

/// Runs operations in order against the kernel.
#[derive(Debug)]
pub struct Executor {
    handle: Handle,
    index: BTreeMap<String, u32>,
}

impl Executor {
    pub fn new(handle: Handle, obs: &Observed) -> Self {
        Executor {
            handle,
            index: obs
                .links
                .iter()
                .map(|l| (l.name.clone(), l.index))
                .collect(),
        }
    }

    async fn index(&mut self, name: &str, op: &Op) -> Result<u32, NetlinkError> {
        if let Some(i) = self.index.get(name) {
            return Ok(*i);
        }
        let found = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await
            .ok()
            .flatten()
            .map(|l| l.header.index);
        match found {
            Some(i) => {
                self.index.insert(name.to_string(), i);
                Ok(i)
            }
            None => Err(NetlinkError::Invalid {
                op: op.to_string(),
                why: format!("there is no link {name}"),
            }),
        }
    }

    /// Runs one operation.
    pub async fn run(&mut self, op: &Op) -> Result<(), NetlinkError> {
        let h = self.handle.clone();
        let failed = |source| NetlinkError::Op {
            op: op.to_string(),
            source,
        };
        match op {
            Op::LinkAdd { name, kind } => {
                let msg = match kind {
                    LinkKind::Dummy => LinkDummy::new(name).alias(ALIAS).build(),
                    LinkKind::Wireguard => LinkWireguard::new(name).alias(ALIAS).build(),
                    LinkKind::Bridge { stp } => LinkBridge::new(name)
                        .stp_state(if *stp {
                            rtnetlink::packet_route::link::BridgeStpState::KernelStp
                        } else {
                            rtnetlink::packet_route::link::BridgeStpState::Disabled
                        })
                        .alias(ALIAS)
                        .build(),
                    LinkKind::Bond { mode, miimon } => {
                        let m = bond_mode(mode).ok_or_else(|| NetlinkError::Invalid {
                            op: op.to_string(),
                            why: format!("unknown bond mode {mode:?}"),
                        })?;
                        LinkBond::new(name)
                            .mode(m)
                            .miimon(*miimon)
                            .alias(ALIAS)
                            .build()
                    }
                    LinkKind::Vlan { parent, id } => {
                        let p = self.index(parent, op).await?;
                        LinkVlan::new(name, p, *id).alias(ALIAS).build()
                    }
                    LinkKind::Physical => {
                        return Err(NetlinkError::Invalid {
                            op: op.to_string(),
                            why: "a physical link cannot be created".into(),
                        });
                    }
                };
                self.index.remove(name);
                h.link().add(msg).execute().await.map_err(failed)?;
                // The alias does not always stick on creation (bond, bridge): set it again.
                let i = self.index(name, op).await?;
                h.link()
                    .set(LinkUnspec::new_with_index(i).alias(ALIAS).build())
                    .execute()
                    .await
                    .map_err(failed)
            }
            Op::LinkDel { name } => {
                let i = self.index(name, op).await?;
                self.index.remove(name);
                h.link().del(i).execute().await.map_err(failed)
            }
            Op::LinkDown { name } => {
                let i = self.index(name, op).await?;
                set(&h, LinkUnspec::new_with_index(i).down())
                    .await
                    .map_err(failed)
            }
            Op::LinkUp { name } => {
                let i = self.index(name, op).await?;
                set(&h, LinkUnspec::new_with_index(i).up())
                    .await
                    .map_err(failed)
            }
            Op::LinkMtu { name, mtu } => {
                let i = self.index(name, op).await?;
                set(&h, LinkUnspec::new_with_index(i).mtu(*mtu))
                    .await
                    .map_err(failed)
            }
            Op::LinkAddress { name, mac } => {
                let i = self.index(name, op).await?;
                let bytes = mac
                    .split(':')
                    .map(|b| u8::from_str_radix(b, 16))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|_| NetlinkError::Invalid {
                        op: op.to_string(),
                        why: format!("{mac:?} is not a MAC address"),
                    })?;
                set(&h, LinkUnspec::new_with_index(i).address(bytes))
                    .await
                    .map_err(failed)
            }
            Op::LinkMaster { name, master } => {
                let i = self.index(name, op).await?;
                let m = self.index(master, op).await?;
                set(&h, LinkUnspec::new_with_index(i).controller(m))
                    .await
                    .map_err(failed)
            }
            Op::LinkNoMaster { name } => {
                let i = self.index(name, op).await?;
                set(&h, LinkUnspec::new_with_index(i).nocontroller())
                    .await
                    .map_err(failed)
            }
            Op::AddressAdd { link, address } => {
                let i = self.index(link, op).await?;
                let mut req = h.address().add(i, address.addr(), address.prefix_len());
                req.message_mut().header.scope = address_scope(address.addr());
                match req.execute().await {
                    // The kernel put it there between the status read and this (loopback's
                    // addresses come with `lo` up): what was wanted is what there is.
                    Err(rtnetlink::Error::NetlinkError(m))
                        if m.raw_code() == -nix::libc::EEXIST =>
                    {
                        Ok(())
                    }
                    r => r.map_err(failed),
                }
            }
            Op::AddressDel { link, address } => {
                let i = self.index(link, op).await?;
                let msg = match address.addr() {
                    IpAddr::V4(a) => rtnetlink::AddressMessageBuilder::<Ipv4Addr>::new()
                        .index(i)
                        .address(a, address.prefix_len())
                        .build(),
                    IpAddr::V6(a) => rtnetlink::AddressMessageBuilder::<Ipv6Addr>::new()
                        .index(i)
                        .address(a, address.prefix_len())
                        .build(),
                };
                h.address().del(msg).execute().await.map_err(failed)
            }
            Op::RouteAdd(r) => {
                let msg = self.route_message(r, op).await?;
                h.route().add(msg).execute().await.map_err(failed)
            }
            Op::RouteDel(r) => {
                let msg = self.route_message(r, op).await?;
                h.route().del(msg).execute().await.map_err(failed)
            }
            Op::RuleAdd(r) => {
                let msg = rule_message(r);
                let mut req = h.rule().add();
                *req.message_mut() = msg;
                req.execute().await.map_err(failed)
            }
            Op::RuleDel(r) => h
                .rule()
                .del(rule_message(r))
                .execute()
                .await
                .map_err(failed),
        }
    }

    async fn route_message(&mut self, r: &RouteOp, op: &Op) -> Result<RouteMessage, NetlinkError> {
        let i = self.index(&r.link, op).await?;
        let invalid = invalid(op);
        let mut b = rtnetlink::RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(r.destination.addr(), r.destination.prefix_len())
            .map_err(invalid)?
            .output_interface(i)
            .priority(r.metric)
            .table_id(r.table)
            .protocol(RouteProtocol::Static);
        if let Some(g) = r.gateway {
            b = b.gateway(g).map_err(invalid)?;
        } else if r.destination.addr().is_ipv4() {
            b = b.scope(RouteScope::Link);
        }
        if let Some(s) = r.source {
            b = b.pref_source(s).map_err(invalid)?;
        }
        Ok(b.build())
    }
}
