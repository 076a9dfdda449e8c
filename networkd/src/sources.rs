//! The sources of network config, each turned into one layer's specs: built-in defaults, the
//! kernel command line, the machine config (DHCP leases are the DHCP client's, in `dhcp`).
//! Everything here is pure: a source in, specs out; [`publish`] writes them to the store.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use basalt_config::types::Prefix;
use basalt_config::{Config, Document, v1alpha1};
use basalt_resources::{Kind, Store, StoreError};

use crate::cmdline::IpConfig;
use crate::spec::*;

/// The WireGuard link KubeSpan's mesh runs over.
pub const KUBESPAN_LINK: &str = "kubespan";

/// The metric of a route nobody gave one: the kernel's default for IPv6, used for both.
pub const DEFAULT_METRIC: u32 = 1024;

/// Everything one source says, before it becomes layered resources.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LayerSpecs {
    pub links: Vec<LinkSpec>,
    pub addresses: Vec<AddressSpec>,
    pub routes: Vec<RouteSpec>,
    pub rules: Vec<RuleSpec>,
    pub dhcp: Vec<DhcpSpec>,
    pub hostname: Option<HostnameSpec>,
    pub hostname_auto: Option<HostnameAutoSpec>,
    pub resolvers: Option<ResolverSpec>,
    pub time_servers: Option<TimeServerSpec>,
}

fn prefix(addr: IpAddr, len: u8) -> Prefix {
    Prefix::new(addr, len).expect("callers pass a length within the family's width")
}

/// The default route's destination for a gateway's family.
pub fn default_destination(gw: IpAddr) -> Prefix {
    match gw {
        IpAddr::V4(_) => prefix(Ipv4Addr::UNSPECIFIED.into(), 0),
        IpAddr::V6(_) => prefix(Ipv6Addr::UNSPECIFIED.into(), 0),
    }
}

/// Built in: the loopback link up, with its addresses.
pub fn defaults() -> LayerSpecs {
    LayerSpecs {
        links: vec![LinkSpec {
            name: "lo".into(),
            kind: LinkKind::Physical,
            selector: None,
            up: true,
            mtu: None,
            master: None,
        }],
        addresses: vec![
            AddressSpec {
                link: "lo".into(),
                address: prefix(Ipv4Addr::LOCALHOST.into(), 8),
            },
            AddressSpec {
                link: "lo".into(),
                address: prefix(Ipv6Addr::LOCALHOST.into(), 128),
            },
        ],
        ..LayerSpecs::default()
    }
}

fn physical(name: &str) -> LinkSpec {
    LinkSpec {
        name: name.to_string(),
        kind: LinkKind::Physical,
        selector: None,
        up: true,
        mtu: None,
        master: None,
    }
}

/// The platform layer of a container node: each link the runtime made, up, with the
/// addresses it has now (`(link, address, prefix length)`; loopback and IPv6 link-local ones
/// are left out: the kernel makes those).
pub fn from_runtime(addresses: &[(String, IpAddr, u8)]) -> LayerSpecs {
    let mut out = LayerSpecs::default();
    for (link, addr, len) in addresses {
        if link == "lo" || matches!(addr, IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80) {
            continue;
        }
        if !out.links.iter().any(|l| l.name == *link) {
            out.links.push(physical(link));
        }
        out.addresses.push(AddressSpec {
            link: link.clone(),
            address: prefix(*addr, *len),
        });
    }
    out
}

/// The kernel command line's `ip=`.
pub fn from_cmdline(ip: &IpConfig) -> LayerSpecs {
    let mut out = LayerSpecs::default();
    match ip {
        IpConfig::Off => {}
        IpConfig::Dhcp { device } => {
            // Without a device the kernel tries every one; the first NIC of a VM or PXE machine
            // is eth0 here, and DHCP on a NIC with no cable would only wait.
            let link = device.clone().unwrap_or_else(|| "eth0".into());
            out.links.push(physical(&link));
            out.dhcp.push(DhcpSpec { link });
        }
        IpConfig::Static(a) => {
            out.links.push(physical(&a.device));
            out.addresses.push(AddressSpec {
                link: a.device.clone(),
                address: prefix(a.address.into(), a.prefix),
            });
            if let Some(gw) = a.gateway {
                out.routes.push(RouteSpec {
                    link: a.device.clone(),
                    destination: default_destination(gw.into()),
                    gateway: Some(gw.into()),
                    source: None,
                    metric: DEFAULT_METRIC,
                    table: MAIN_TABLE,
                });
            }
            out.hostname = a.hostname.as_deref().map(hostname);
            if !a.dns.is_empty() {
                out.resolvers = Some(ResolverSpec {
                    nameservers: a.dns.iter().map(|d| IpAddr::V4(*d)).collect(),
                    search_domains: Vec::new(),
                });
            }
            if !a.ntp.is_empty() {
                out.time_servers = Some(TimeServerSpec {
                    servers: a.ntp.iter().map(ToString::to_string).collect(),
                });
            }
        }
    }
    out
}

/// A fully qualified name split into the host and its domain.
pub fn hostname(fqdn: &str) -> HostnameSpec {
    match fqdn.split_once('.') {
        Some((h, d)) if !d.is_empty() => HostnameSpec {
            hostname: h.to_string(),
            domain: Some(d.to_string()),
        },
        _ => HostnameSpec {
            hostname: fqdn.trim_end_matches('.').to_string(),
            domain: None,
        },
    }
}

fn routes(link: &str, rs: &[v1alpha1::RouteConfig]) -> impl Iterator<Item = RouteSpec> {
    rs.iter().map(move |r| RouteSpec {
        link: link.to_string(),
        destination: r.destination.network(),
        gateway: r.gateway,
        source: r.source,
        metric: r.metric,
        table: MAIN_TABLE,
    })
}

/// The machine config's network documents. The config has been validated, so members,
/// parents and gateways are consistent; a member link without its own `LinkConfig` is
/// configured as a plain physical link.
pub fn from_config(c: &Config) -> LayerSpecs {
    let mut out = LayerSpecs::default();
    let mut links: BTreeMap<String, LinkSpec> = BTreeMap::new();
    let mut masters: BTreeMap<String, String> = BTreeMap::new();
    let l3 = |out: &mut LayerSpecs,
              name: &str,
              addrs: &[Prefix],
              rs: &[v1alpha1::RouteConfig],
              dhcp: bool| {
        out.addresses.extend(addrs.iter().map(|a| AddressSpec {
            link: name.to_string(),
            address: *a,
        }));
        out.routes.extend(routes(name, rs));
        if dhcp {
            out.dhcp.push(DhcpSpec {
                link: name.to_string(),
            });
        }
    };
    for d in c.documents() {
        let spec = match d {
            Document::Link(l) => {
                l3(&mut out, l.name.as_str(), &l.addresses, &l.routes, l.dhcp);
                LinkSpec {
                    name: l.name.to_string(),
                    kind: if l.dummy {
                        LinkKind::Dummy
                    } else {
                        LinkKind::Physical
                    },
                    selector: l.selector.as_ref().map(|s| Selector {
                        hardware_addr: s.hardware_addr.as_ref().map(ToString::to_string),
                        driver: s.driver.clone(),
                    }),
                    up: l.up,
                    mtu: l.mtu,
                    master: None,
                }
            }
            Document::Bond(b) => {
                l3(&mut out, b.name.as_str(), &b.addresses, &b.routes, b.dhcp);
                for m in &b.links {
                    masters.insert(m.to_string(), b.name.to_string());
                }
                LinkSpec {
                    name: b.name.to_string(),
                    kind: LinkKind::Bond {
                        mode: serde_json::to_value(b.mode)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                        miimon: b.miimon,
                    },
                    selector: None,
                    up: b.up,
                    mtu: b.mtu,
                    master: None,
                }
            }
            Document::Vlan(v) => {
                l3(&mut out, v.name.as_str(), &v.addresses, &v.routes, v.dhcp);
                LinkSpec {
                    name: v.name.to_string(),
                    kind: LinkKind::Vlan {
                        parent: v.parent.to_string(),
                        id: v.vlan_id,
                    },
                    selector: None,
                    up: v.up,
                    mtu: v.mtu,
                    master: None,
                }
            }
            Document::Bridge(b) => {
                l3(&mut out, b.name.as_str(), &b.addresses, &b.routes, b.dhcp);
                for m in &b.links {
                    masters.insert(m.to_string(), b.name.to_string());
                }
                LinkSpec {
                    name: b.name.to_string(),
                    kind: LinkKind::Bridge { stp: b.stp },
                    selector: None,
                    up: b.up,
                    mtu: b.mtu,
                    master: None,
                }
            }
            Document::Hostname(h) => {
                out.hostname = h.hostname.as_ref().map(|n| hostname(n.as_str()));
                out.hostname_auto = Some(HostnameAutoSpec { enabled: h.auto });
                continue;
            }
            Document::Resolver(r) => {
                out.resolvers = Some(ResolverSpec {
                    nameservers: r.nameservers.clone(),
                    search_domains: r.search_domains.iter().map(|d| d.to_string()).collect(),
                });
                continue;
            }
            // The mesh's link; KubeSpan configures its keys, peers, address and routes.
            Document::KubeSpan(k) if k.enabled => LinkSpec {
                name: KUBESPAN_LINK.into(),
                kind: LinkKind::Wireguard,
                selector: None,
                up: true,
                mtu: Some(k.mtu),
                master: None,
            },
            Document::Time(t) => {
                if !t.disabled {
                    out.time_servers = Some(TimeServerSpec {
                        servers: t.servers.clone(),
                    });
                }
                continue;
            }
            _ => continue,
        };
        links.insert(spec.name.clone(), spec);
    }
    for (member, master) in masters {
        links
            .entry(member.clone())
            .or_insert_with(|| physical(&member))
            .master = Some(master);
    }
    out.links = links.into_values().collect();
    out
}

fn sync<T: NetSpec>(
    store: &Store,
    owner: &str,
    layer: Layer,
    specs: impl IntoIterator<Item = T>,
) -> Result<(), StoreError> {
    let desired: BTreeMap<String, Layered<T>> = specs
        .into_iter()
        .map(|spec| (format!("{owner}/{}", spec.id()), Layered { layer, spec }))
        .collect();
    store.sync_owned(owner, &desired)
}

/// Makes the layered specs that `owner` wrote exactly `specs` (ids `<owner>/<id>`). Each source
/// has its own owner (`default`, `cmdline`, `config`, `dhcp-<link>`).
pub fn publish(
    store: &Store,
    owner: &str,
    layer: Layer,
    specs: &LayerSpecs,
) -> Result<(), StoreError> {
    sync(store, owner, layer, specs.links.clone())?;
    sync(store, owner, layer, specs.addresses.clone())?;
    sync(store, owner, layer, specs.routes.clone())?;
    sync(store, owner, layer, specs.rules.clone())?;
    sync(store, owner, layer, specs.dhcp.clone())?;
    sync(store, owner, layer, specs.hostname.clone())?;
    sync(store, owner, layer, specs.hostname_auto.clone())?;
    sync(store, owner, layer, specs.resolvers.clone())?;
    sync(store, owner, layer, specs.time_servers.clone())?;
    Ok(())
}

/// Every layered kind, for watching.
pub fn layered_kinds() -> Vec<Kind> {
    vec![
        Kind::of::<Layered<LinkSpec>>(),
        Kind::of::<Layered<AddressSpec>>(),
        Kind::of::<Layered<RouteSpec>>(),
        Kind::of::<Layered<RuleSpec>>(),
        Kind::of::<Layered<DhcpSpec>>(),
        Kind::of::<Layered<HostnameSpec>>(),
        Kind::of::<Layered<HostnameAutoSpec>>(),
        Kind::of::<Layered<ResolverSpec>>(),
        Kind::of::<Layered<TimeServerSpec>>(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_runtimes_addresses_stay_beside_the_configs() {
        let runtime = from_runtime(&[
            ("lo".into(), Ipv4Addr::LOCALHOST.into(), 8),
            ("eth0".into(), "10.5.0.4".parse().unwrap(), 24),
            ("eth0".into(), "fe80::42:aff:fe05:4".parse().unwrap(), 64),
            ("eth0".into(), "fd00:5::4".parse().unwrap(), 64),
        ]);
        assert_eq!(runtime.links.len(), 1);
        assert_eq!(
            runtime
                .addresses
                .iter()
                .map(|a| a.address.to_string())
                .collect::<Vec<_>>(),
            ["10.5.0.4/24", "fd00:5::4/64"]
        );
        // A config that names eth0 wins the link, and adds to the runtime's address rather
        // than replacing it (as it replaces what ip= says).
        let config = LayerSpecs {
            links: vec![physical("eth0")],
            addresses: vec![AddressSpec {
                link: "eth0".into(),
                address: "10.5.0.104/24".parse().unwrap(),
            }],
            ..LayerSpecs::default()
        };
        let layered = |layer: Layer, v: &[AddressSpec]| {
            v.iter()
                .map(|spec| Layered {
                    layer,
                    spec: spec.clone(),
                })
                .collect::<Vec<_>>()
        };
        let links = [(Layer::Platform, &runtime), (Layer::Config, &config)]
            .iter()
            .flat_map(|(layer, s)| {
                s.links.iter().map(|spec| Layered {
                    layer: *layer,
                    spec: spec.clone(),
                })
            })
            .collect();
        let mut addresses = layered(Layer::Platform, &runtime.addresses);
        addresses.extend(layered(Layer::Config, &config.addresses));
        let d = crate::merge::desired(links, addresses, Vec::new(), Vec::new());
        let mut got: Vec<String> = d.addresses.iter().map(|a| a.address.to_string()).collect();
        got.sort();
        assert_eq!(got, ["10.5.0.104/24", "10.5.0.4/24", "fd00:5::4/64"]);
    }

    #[test]
    fn the_example_network_config_as_specs() {
        // network.yaml leaves its secrets out; take controlplane.yaml's.
        let cp = include_str!("../../config/testdata/valid/controlplane.yaml");
        let secrets = cp
            .split("\n---\n")
            .find(|d| d.contains("kind: Secrets"))
            .unwrap();
        let text = format!(
            "{}\n---\n{secrets}",
            include_str!("../../config/testdata/valid/network.yaml")
        );
        let c = Config::parse(&text, basalt_config::Mode::Metal)
            .unwrap_or_else(|e| panic!("{}", basalt_resources::error_chain(&e)));
        let s = from_config(&c);
        let link = |n: &str| s.links.iter().find(|l| l.name == n).unwrap();
        assert_eq!(
            link("bond0").kind,
            LinkKind::Bond {
                mode: "active-backup".into(),
                miimon: 100
            }
        );
        assert_eq!(link("bond0").mtu, Some(9000));
        assert_eq!(link("eth0").master.as_deref(), Some("bond0"));
        assert_eq!(
            link("eth0")
                .selector
                .as_ref()
                .unwrap()
                .hardware_addr
                .as_deref(),
            Some("52:54:00:12:34:56")
        );
        assert_eq!(link("dummy0").kind, LinkKind::Dummy);
        assert_eq!(link("dummy0").master.as_deref(), Some("br0"));
        assert_eq!(
            link("bond0.100").kind,
            LinkKind::Vlan {
                parent: "bond0".into(),
                id: 100
            }
        );
        assert_eq!(link(KUBESPAN_LINK).kind, LinkKind::Wireguard);
        assert_eq!(link(KUBESPAN_LINK).mtu, Some(1420));
        assert_eq!(
            s.dhcp,
            [DhcpSpec {
                link: "bond0.100".into()
            }]
        );
        let v6 = s.routes.iter().find(|r| r.destination.is_ipv6()).unwrap();
        assert_eq!(
            (v6.metric, v6.gateway),
            (2048, Some("fd00:5::1".parse().unwrap()))
        );
        assert_eq!(
            s.hostname,
            Some(HostnameSpec {
                hostname: "node1".into(),
                domain: None
            })
        );
        assert_eq!(s.hostname_auto, Some(HostnameAutoSpec { enabled: true }));
        let off = Config::parse(
            &text.replacen(
                "kind: HostnameConfig\n",
                "kind: HostnameConfig\nauto: false\n",
                1,
            ),
            basalt_config::Mode::Metal,
        )
        .unwrap();
        assert_eq!(
            from_config(&off).hostname_auto,
            Some(HostnameAutoSpec { enabled: false })
        );
        assert_eq!(s.resolvers.unwrap().search_domains, ["example.com"]);
        assert_eq!(s.time_servers.unwrap().servers, ["10.5.0.1"]);
    }

    #[test]
    fn the_cmdline_layer() {
        let ip = IpConfig::parse(
            "10.0.2.15::10.0.2.2:255.255.255.0:node1.example.com:eth0:off:10.0.2.3",
        )
        .unwrap();
        let s = from_cmdline(&ip);
        assert_eq!(s.addresses[0].address.to_string(), "10.0.2.15/24");
        assert_eq!(s.routes[0].gateway, Some("10.0.2.2".parse().unwrap()));
        assert_eq!(
            s.hostname,
            Some(HostnameSpec {
                hostname: "node1".into(),
                domain: Some("example.com".into())
            })
        );
        assert_eq!(
            s.resolvers.unwrap().nameservers,
            ["10.0.2.3".parse::<IpAddr>().unwrap()]
        );
        let d = from_cmdline(&IpConfig::parse("eth1:dhcp").unwrap());
        assert_eq!(
            d.dhcp,
            [DhcpSpec {
                link: "eth1".into()
            }]
        );
        assert!(from_cmdline(&IpConfig::Off).links.is_empty());
    }
}
