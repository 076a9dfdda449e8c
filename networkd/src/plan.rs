//! The plan: from the merged specs and what the kernel has, the exact netlink operations that
//! make the kernel match, in the order they must run. Pure, so it is what `--dry-run` shows,
//! what the tests check without root, and what the apply controller executes.
//!
//! Ownership: networkd changes only what the specs name. It deletes only links it created
//! (marked with the alias `basalt`), only permanent addresses on links it configures (never
//! IPv6 link-local ones), and only routes of protocol `static` on those links — so what the
//! kernel, the CNI or kube-proxy add is left alone.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use basalt_config::types::Prefix;

use crate::spec::*;

/// The alias networkd gives the links it creates.
pub const ALIAS: &str = "basalt";
/// `RTPROT_STATIC`: the protocol of the routes networkd installs.
pub const PROTO_STATIC: u8 = 4;

/// A link as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedLink {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` (`bond`, `vlan`, `veth`, ...); `None` for hardware.
    pub kind: Option<String>,
    pub up: bool,
    pub mtu: u32,
    pub master: Option<u32>,
    pub hardware_addr: String,
    pub driver: Option<String>,
    pub alias: Option<String>,
    /// For a VLAN: the parent's index and the VLAN id.
    pub vlan: Option<(u32, u16)>,
    /// For a bond: its mode, as the bonding driver names it.
    pub bond_mode: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedAddress {
    pub index: u32,
    pub address: Prefix,
    pub permanent: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedRoute {
    pub index: Option<u32>,
    /// With the host bits cleared.
    pub destination: Prefix,
    pub gateway: Option<IpAddr>,
    pub source: Option<IpAddr>,
    pub metric: u32,
    pub table: u32,
    pub protocol: u8,
}

/// A policy routing rule as the kernel has it, in the same form as a [`RuleSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedRule {
    pub rule: RuleSpec,
    pub protocol: u8,
}

/// What the kernel has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub links: Vec<ObservedLink>,
    pub addresses: Vec<ObservedAddress>,
    pub routes: Vec<ObservedRoute>,
    pub rules: Vec<ObservedRule>,
}

/// A rule with the kernel's defaults filled in, so specs and dumps compare equal: a mark
/// without a mask is matched in full.
pub fn normalized(r: &RuleSpec) -> RuleSpec {
    let mut r = r.clone();
    if r.fwmark.is_some() && r.fwmask.is_none() {
        r.fwmask = Some(u32::MAX);
    }
    if r.fwmark.is_none() && r.fwmask == Some(u32::MAX) {
        r.fwmask = None;
    }
    r
}

impl Observed {
    fn link(&self, name: &str) -> Option<&ObservedLink> {
        self.links.iter().find(|l| l.name == name)
    }
    fn name_of(&self, index: u32) -> Option<&str> {
        self.links
            .iter()
            .find(|l| l.index == index)
            .map(|l| l.name.as_str())
    }
}

/// A route in an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteOp {
    pub link: String,
    pub destination: Prefix,
    pub gateway: Option<IpAddr>,
    pub source: Option<IpAddr>,
    pub metric: u32,
    pub table: u32,
}

/// One netlink operation. Its `Display` is the `ip -batch` line that does the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    LinkAdd {
        name: String,
        kind: LinkKind,
    },
    LinkDel {
        name: String,
    },
    LinkDown {
        name: String,
    },
    LinkUp {
        name: String,
    },
    LinkMtu {
        name: String,
        mtu: u32,
    },
    /// A MAC of the link's own (`aa:bb:...`), set once at creation (a bridge's).
    LinkAddress {
        name: String,
        mac: String,
    },
    LinkMaster {
        name: String,
        master: String,
    },
    LinkNoMaster {
        name: String,
    },
    AddressAdd {
        link: String,
        address: Prefix,
    },
    AddressDel {
        link: String,
        address: Prefix,
    },
    RouteAdd(RouteOp),
    RouteDel(RouteOp),
    RuleAdd(RuleSpec),
    RuleDel(RuleSpec),
}

/// `ip rule` syntax (an IPv6 rule is shown with `-6` first, as `ip -6 rule` takes it).
fn rule_text(r: &RuleSpec) -> String {
    let mut s = String::new();
    if r.invert {
        s.push_str("not ");
    }
    s.push_str("from all");
    if let Some(m) = r.fwmark {
        s.push_str(&format!(" fwmark {m:#x}"));
        if let Some(k) = r.fwmask.filter(|k| *k != u32::MAX) {
            s.push_str(&format!("/{k:#x}"));
        }
    }
    s.push_str(&format!(
        " lookup {} priority {} proto static",
        r.table, r.priority
    ));
    s
}

impl fmt::Display for RouteOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.destination)?;
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        write!(f, " dev {} metric {}", self.link, self.metric)?;
        if let Some(s) = self.source {
            write!(f, " src {s}")?;
        }
        if self.table != MAIN_TABLE {
            write!(f, " table {}", self.table)?;
        }
        write!(f, " proto static")
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::LinkAdd { name, kind } => match kind {
                LinkKind::Vlan { parent, id } => {
                    write!(f, "link add link {parent} name {name} type vlan id {id}")
                }
                LinkKind::Bond { mode, miimon } => {
                    write!(f, "link add {name} type bond mode {mode} miimon {miimon}")
                }
                LinkKind::Bridge { stp } => {
                    write!(
                        f,
                        "link add {name} type bridge stp_state {}",
                        u8::from(*stp)
                    )
                }
                other => write!(
                    f,
                    "link add {name} type {}",
                    other.kernel_kind().unwrap_or("?")
                ),
            },
            Op::LinkDel { name } => write!(f, "link del {name}"),
            Op::LinkDown { name } => write!(f, "link set {name} down"),
            Op::LinkUp { name } => write!(f, "link set {name} up"),
            Op::LinkMtu { name, mtu } => write!(f, "link set {name} mtu {mtu}"),
            Op::LinkAddress { name, mac } => write!(f, "link set {name} address {mac}"),
            Op::LinkMaster { name, master } => write!(f, "link set {name} master {master}"),
            Op::LinkNoMaster { name } => write!(f, "link set {name} nomaster"),
            Op::AddressAdd { link, address } => write!(f, "address add {address} dev {link}"),
            Op::AddressDel { link, address } => write!(f, "address del {address} dev {link}"),
            Op::RouteAdd(r) => write!(f, "route add {r}"),
            Op::RouteDel(r) => write!(f, "route del {r}"),
            Op::RuleAdd(r) => write!(
                f,
                "{}rule add {}",
                if r.ipv6 { "-6 " } else { "" },
                rule_text(r)
            ),
            Op::RuleDel(r) => write!(
                f,
                "{}rule del {}",
                if r.ipv6 { "-6 " } else { "" },
                rule_text(r)
            ),
        }
    }
}

/// The operations, and what has to wait (a link not present yet, a gateway not reachable
/// until DHCP gives an address).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub ops: Vec<Op>,
    pub waiting: Vec<String>,
}

/// The merged specs the plan is made from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    pub links: BTreeMap<String, LinkSpec>,
    pub addresses: Vec<AddressSpec>,
    pub routes: Vec<RouteSpec>,
    pub rules: Vec<RuleSpec>,
}

fn selected<'o>(sel: &Selector, obs: &'o Observed) -> Option<&'o ObservedLink> {
    obs.links.iter().find(|l| {
        l.kind.is_none()
            && sel
                .hardware_addr
                .as_ref()
                .is_none_or(|m| m.eq_ignore_ascii_case(&l.hardware_addr))
            && sel
                .driver
                .as_ref()
                .is_none_or(|d| l.driver.as_deref() == Some(d.as_str()))
    })
}

fn is_link_local_v6(p: &Prefix) -> bool {
    matches!(p.addr(), IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80)
}

/// Why there is no plan: what is asked cannot be made from what is there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("links depend on each other in a cycle: {}", .0.join(" → "))]
    Cycle(Vec<String>),
    #[error(
        "a link named {name} exists and is {have}, not the {want} the config asks for; networkd deletes only links it created"
    )]
    NotOurs {
        name: String,
        have: String,
        want: String,
    },
}

/// Links in dependency order: a VLAN after its parent, a member after its master.
fn order(desired: &Desired) -> Result<Vec<String>, PlanError> {
    fn visit(
        name: &str,
        desired: &Desired,
        state: &mut BTreeMap<String, bool>,
        out: &mut Vec<String>,
        path: &mut Vec<String>,
    ) -> Result<(), PlanError> {
        match state.get(name) {
            Some(true) => return Ok(()),
            Some(false) => {
                path.push(name.to_string());
                return Err(PlanError::Cycle(path.clone()));
            }
            None => {}
        }
        let Some(spec) = desired.links.get(name) else {
            return Ok(());
        };
        state.insert(name.to_string(), false);
        path.push(name.to_string());
        let mut deps = Vec::new();
        if let LinkKind::Vlan { parent, .. } = &spec.kind {
            deps.push(parent.clone());
        }
        deps.extend(spec.master.clone());
        for d in deps {
            visit(&d, desired, state, out, path)?;
        }
        path.pop();
        state.insert(name.to_string(), true);
        out.push(name.to_string());
        Ok(())
    }
    let mut state = BTreeMap::new();
    let mut out = Vec::new();
    for name in desired.links.keys() {
        visit(name, desired, &mut state, &mut out, &mut Vec::new())?;
    }
    Ok(out)
}

/// The metric the kernel gives a route: an IPv6 route asked for with metric 0 gets 1024
/// (`IP6_RT_PRIO_USER`). Compared as asked, such a route never matched what the kernel had, and
/// every pass deleted and added it again.
fn kernel_metric(r: &RouteSpec) -> u32 {
    match (r.destination.addr(), r.metric) {
        (IpAddr::V6(_), 0) => 1024,
        (_, m) => m,
    }
}

/// What it takes to make the kernel match `desired`.
pub fn plan(desired: &Desired, obs: &Observed) -> Result<Plan, PlanError> {
    let mut p = Plan::default();
    // Config names → kernel names (a selector picks the kernel's link).
    let mut kname: BTreeMap<String, String> = BTreeMap::new();
    for (name, spec) in &desired.links {
        let k = match &spec.selector {
            Some(sel) => match selected(sel, obs) {
                Some(l) => l.name.clone(),
                None => {
                    p.waiting
                        .push(format!("no link matches the selector of {name}"));
                    continue;
                }
            },
            None => name.clone(),
        };
        kname.insert(name.clone(), k);
    }
    let k = |n: &str| kname.get(n).cloned().unwrap_or_else(|| n.to_string());
    let managed: BTreeSet<String> = kname.values().cloned().collect();

    // Links networkd made that nothing wants any more go first, freeing their names and members.
    let mut deleted: BTreeSet<String> = BTreeSet::new();
    for l in &obs.links {
        if l.alias.as_deref() == Some(ALIAS) && !managed.contains(&l.name) {
            p.ops.push(Op::LinkDel {
                name: l.name.clone(),
            });
            deleted.insert(l.name.clone());
        }
    }

    // Pass 1, dependencies first: create, enslave, MTU.
    let order = order(desired)?;
    // Links that exist (or will) once pass 1 is done, and whether they are up now.
    let mut present: BTreeMap<String, bool> = BTreeMap::new();
    for l in &obs.links {
        if !deleted.contains(&l.name) {
            present.insert(l.name.clone(), l.up);
        }
    }
    let mut missing: BTreeSet<String> = BTreeSet::new();
    let mut recreated: BTreeSet<String> = BTreeSet::new();
    for name in &order {
        let spec = &desired.links[name];
        let Some(kn) = kname.get(name).cloned() else {
            missing.insert(name.clone());
            continue;
        };
        let have = obs.link(&kn).filter(|l| !deleted.contains(&l.name));
        let want_kind = spec.kind.kernel_kind();
        let parent_missing = |p: &str| !present.contains_key(&k(p));
        match (want_kind, have) {
            (None, None) => {
                p.waiting.push(format!("link {name} is not present"));
                missing.insert(name.clone());
                continue;
            }
            (None, Some(_)) => {}
            (Some(_), have) => {
                let kind = match &spec.kind {
                    LinkKind::Vlan { parent, id } => {
                        if parent_missing(parent) {
                            p.waiting
                                .push(format!("VLAN {name} waits for its parent {parent}"));
                            missing.insert(name.clone());
                            continue;
                        }
                        LinkKind::Vlan {
                            parent: k(parent),
                            id: *id,
                        }
                    }
                    other => other.clone(),
                };
                // Where the kernel has no WireGuard, KubeSpan's userspace device is a tun
                // device of the same name; it stands for the WireGuard link.
                let userspace_wg = |h: &ObservedLink| {
                    matches!(kind, LinkKind::Wireguard) && h.kind.as_deref() == Some("tun")
                };
                let same = have.is_some_and(|h| {
                    userspace_wg(h)
                        || h.kind.as_deref() == want_kind
                            && match &kind {
                                LinkKind::Vlan { parent, id } => h.vlan.is_some_and(|(pi, vid)| {
                                    vid == *id && obs.name_of(pi) == Some(parent.as_str())
                                }),
                                LinkKind::Bond { mode, .. } => {
                                    h.bond_mode.as_deref().is_none_or(|m| m == mode)
                                }
                                _ => true,
                            }
                });
                if let Some(h) = have
                    && !same
                {
                    if h.alias.as_deref() != Some(ALIAS) {
                        return Err(PlanError::NotOurs {
                            name: kn.clone(),
                            have: h
                                .kind
                                .as_deref()
                                .map(|k| format!("a {k}"))
                                .unwrap_or("hardware".into()),
                            want: want_kind.unwrap_or("?").to_string(),
                        });
                    }
                    p.ops.push(Op::LinkDel { name: kn.clone() });
                    recreated.insert(kn.clone());
                }
                if have.is_none() || !same {
                    let bridge = matches!(kind, LinkKind::Bridge { .. });
                    p.ops.push(Op::LinkAdd {
                        name: kn.clone(),
                        kind,
                    });
                    present.insert(kn.clone(), false);
                    // A bridge keeps one MAC: its first port's (by name) that is there now.
                    // Left to the kernel it takes its ports' lowest and changes it as ports
                    // join — and a neighbour that learned the old one (an ARP entry, a DHCP
                    // server's lease) keeps sending to a MAC the bridge no longer takes.
                    if bridge
                        && let Some(mac) = desired
                            .links
                            .values()
                            .filter(|l| l.master.as_deref() == Some(name.as_str()))
                            .filter_map(|l| obs.link(&k(&l.name)))
                            .map(|o| o.hardware_addr.clone())
                            .find(|m| !m.is_empty())
                    {
                        p.ops.push(Op::LinkAddress {
                            name: kn.clone(),
                            mac,
                        });
                    }
                }
            }
        }
        let have = if recreated.contains(&kn) { None } else { have };
        let have_master = have
            .and_then(|h| h.master)
            .and_then(|i| obs.name_of(i))
            .filter(|m| !deleted.contains(*m))
            .map(str::to_string);
        let want_master = spec.master.as_deref().map(&k);
        if have_master != want_master {
            match &want_master {
                Some(m) if !present.contains_key(m) => {
                    p.waiting.push(format!("{name} waits for its master {m}"));
                }
                Some(m) => {
                    // The bonding driver takes only members that are down; they come up with
                    // the bond in pass 2.
                    let bond = desired
                        .links
                        .values()
                        .any(|l| k(&l.name) == *m && matches!(l.kind, LinkKind::Bond { .. }));
                    if bond && present.get(&kn).copied().unwrap_or(false) {
                        p.ops.push(Op::LinkDown { name: kn.clone() });
                        present.insert(kn.clone(), false);
                    }
                    p.ops.push(Op::LinkMaster {
                        name: kn.clone(),
                        master: m.clone(),
                    });
                }
                None => p.ops.push(Op::LinkNoMaster { name: kn.clone() }),
            }
        }
        if let Some(mtu) = spec.mtu
            && have.is_none_or(|h| h.mtu != mtu)
        {
            p.ops.push(Op::LinkMtu {
                name: kn.clone(),
                mtu,
            });
        }
    }

    // Pass 2, in the same order (members are enslaved by now): up and down.
    for name in &order {
        if missing.contains(name) {
            continue;
        }
        let kn = k(name);
        let spec = &desired.links[name];
        let up = present.get(&kn).copied().unwrap_or(false);
        if spec.up && !up {
            p.ops.push(Op::LinkUp { name: kn.clone() });
        } else if !spec.up && up {
            p.ops.push(Op::LinkDown { name: kn.clone() });
        }
    }

    // Addresses: on the links networkd configures, every unwanted one goes before any new one
    // comes (an address may be moving from one link to another).
    let configured = |link: &str| desired.links.contains_key(link) && !missing.contains(link);
    let index_of = |kn: &str| {
        obs.link(kn)
            .filter(|l| !deleted.contains(&l.name))
            .map(|l| l.index)
    };
    let mut adds = Vec::new();
    for name in desired.links.keys().filter(|n| configured(n)) {
        let kn = k(name);
        let want: BTreeSet<Prefix> = desired
            .addresses
            .iter()
            .filter(|a| a.link == *name)
            .map(|a| a.address)
            .collect();
        let idx = if recreated.contains(&kn) {
            None
        } else {
            index_of(&kn)
        };
        let on_link: Vec<&ObservedAddress> = idx
            .map(|i| obs.addresses.iter().filter(|a| a.index == i).collect())
            .unwrap_or_default();
        // Everything present counts as present; only permanent, non-link-local ones are ours
        // to remove.
        let have: BTreeSet<Prefix> = on_link.iter().map(|a| a.address).collect();
        let ours: BTreeSet<Prefix> = on_link
            .iter()
            .filter(|a| a.permanent && !is_link_local_v6(&a.address))
            .map(|a| a.address)
            .collect();
        for a in ours.difference(&want) {
            p.ops.push(Op::AddressDel {
                link: kn.clone(),
                address: *a,
            });
        }
        for a in want.difference(&have) {
            adds.push(Op::AddressAdd {
                link: kn.clone(),
                address: *a,
            });
        }
    }
    p.ops.extend(adds);

    // Routes: static ones on configured links; unwanted ones first, then on-link routes
    // before the routes through a gateway that they make reachable.
    let route_op = |r: &RouteSpec| RouteOp {
        link: k(&r.link),
        destination: r.destination.network(),
        gateway: r.gateway,
        source: r.source,
        metric: kernel_metric(r),
        table: r.table,
    };
    let want: Vec<RouteOp> = desired
        .routes
        .iter()
        .filter(|r| {
            if !configured(&r.link) {
                p.waiting
                    .push(format!("route {} waits for link {}", r.destination, r.link));
                return false;
            }
            if !desired.links[&r.link].up {
                return false;
            }
            if let Some(gw) = r.gateway {
                let onlink = desired
                    .addresses
                    .iter()
                    .any(|a| a.link == r.link && a.address.contains(gw))
                    || desired.routes.iter().any(|o| {
                        o.link == r.link && o.gateway.is_none() && o.destination.contains(gw)
                    })
                    || matches!(gw, IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80);
                if !onlink {
                    p.waiting.push(format!(
                        "route {} via {gw} waits for an address of {} that reaches the gateway",
                        r.destination, r.link
                    ));
                    return false;
                }
            }
            true
        })
        .map(route_op)
        .collect();
    let have: Vec<RouteOp> = obs
        .routes
        .iter()
        .filter(|r| r.protocol == PROTO_STATIC)
        .filter_map(|r| {
            let link = obs.name_of(r.index?)?.to_string();
            if deleted.contains(&link) {
                return None;
            }
            Some(RouteOp {
                link,
                destination: r.destination,
                gateway: r.gateway,
                source: r.source,
                metric: r.metric,
                table: r.table,
            })
        })
        .collect();
    for r in &have {
        if managed.contains(&r.link) && !want.contains(r) {
            p.ops.push(Op::RouteDel(r.clone()));
        }
    }
    let mut new: Vec<&RouteOp> = want.iter().filter(|r| !have.contains(r)).collect();
    new.sort_by_key(|r| r.gateway.is_some());
    p.ops.extend(new.into_iter().cloned().map(Op::RouteAdd));

    // Rules last: they send traffic to tables whose routes are in place by now. Only rules of
    // protocol static are networkd's to remove.
    let want: Vec<RuleSpec> = desired.rules.iter().map(normalized).collect();
    let have: Vec<RuleSpec> = obs.rules.iter().map(|r| normalized(&r.rule)).collect();
    for r in &obs.rules {
        let n = normalized(&r.rule);
        if r.protocol == PROTO_STATIC && !want.contains(&n) {
            p.ops.push(Op::RuleDel(n));
        }
    }
    for r in want.iter().filter(|r| !have.contains(r)) {
        p.ops.push(Op::RuleAdd(r.clone()));
    }
    Ok(p)
}

#[cfg(test)]
mod tests;
