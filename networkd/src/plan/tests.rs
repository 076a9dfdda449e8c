use super::*;

fn p(s: &str) -> Prefix {
    s.parse().unwrap()
}

fn link(name: &str, kind: LinkKind) -> LinkSpec {
    LinkSpec {
        name: name.into(),
        kind,
        selector: None,
        up: true,
        mtu: None,
        master: None,
    }
}

fn hw(index: u32, name: &str, up: bool) -> ObservedLink {
    ObservedLink {
        index,
        name: name.into(),
        up,
        mtu: 1500,
        hardware_addr: format!("52:54:00:00:00:{index:02x}"),
        ..ObservedLink::default()
    }
}

fn desired(links: Vec<LinkSpec>, addrs: &[(&str, &str)], routes: Vec<RouteSpec>) -> Desired {
    Desired {
        links: links.into_iter().map(|l| (l.name.clone(), l)).collect(),
        addresses: addrs
            .iter()
            .map(|(l, a)| AddressSpec {
                link: l.to_string(),
                address: p(a),
            })
            .collect(),
        routes,
        rules: Vec::new(),
    }
}

fn lines(plan: &Plan) -> Vec<String> {
    plan.ops.iter().map(ToString::to_string).collect()
}

fn default_route(link: &str, gw: &str) -> RouteSpec {
    RouteSpec {
        link: link.into(),
        destination: p("0.0.0.0/0"),
        gateway: Some(gw.parse().unwrap()),
        source: None,
        metric: 1024,
        table: MAIN_TABLE,
    }
}

#[test]
fn static_address_and_default_route_in_order() {
    let d = desired(
        vec![link("eth0", LinkKind::Physical)],
        &[("eth0", "10.0.0.5/24")],
        vec![default_route("eth0", "10.0.0.1")],
    );
    let obs = Observed {
        links: vec![hw(2, "eth0", false)],
        ..Observed::default()
    };
    let plan = plan(&d, &obs).unwrap();
    assert_eq!(
        lines(&plan),
        [
            "link set eth0 up",
            "address add 10.0.0.5/24 dev eth0",
            "route add 0.0.0.0/0 via 10.0.0.1 dev eth0 metric 1024 proto static",
        ]
    );
    assert!(plan.waiting.is_empty());
}

#[test]
fn in_sync_means_no_operations() {
    let d = desired(
        vec![link("eth0", LinkKind::Physical)],
        &[("eth0", "10.0.0.5/24")],
        vec![default_route("eth0", "10.0.0.1")],
    );
    let obs = Observed {
        links: vec![hw(2, "eth0", true)],
        addresses: vec![
            ObservedAddress {
                index: 2,
                address: p("10.0.0.5/24"),
                permanent: true,
            },
            // The kernel's and autoconfiguration's own are left alone.
            ObservedAddress {
                index: 2,
                address: p("fe80::5054:ff:fe00:2/64"),
                permanent: true,
            },
            ObservedAddress {
                index: 2,
                address: p("2001:db8::5054:ff:fe00:2/64"),
                permanent: false,
            },
        ],
        routes: vec![
            ObservedRoute {
                index: Some(2),
                destination: p("0.0.0.0/0"),
                gateway: Some("10.0.0.1".parse().unwrap()),
                source: None,
                metric: 1024,
                table: MAIN_TABLE,
                protocol: PROTO_STATIC,
            },
            ObservedRoute {
                index: Some(2),
                destination: p("10.0.0.0/24"),
                gateway: None,
                source: Some("10.0.0.5".parse().unwrap()),
                metric: 0,
                table: MAIN_TABLE,
                protocol: 2,
            },
        ],
        rules: Vec::new(),
    };
    assert_eq!(plan(&d, &obs).unwrap(), Plan::default());
}

#[test]
fn moving_an_address_deletes_before_it_adds_and_leaves_links_alone() {
    let d = desired(
        vec![
            link("eth0", LinkKind::Physical),
            link("eth1", LinkKind::Physical),
        ],
        &[("eth1", "10.0.0.5/24")],
        vec![],
    );
    let obs = Observed {
        links: vec![hw(2, "eth0", true), hw(3, "eth1", true)],
        addresses: vec![ObservedAddress {
            index: 2,
            address: p("10.0.0.5/24"),
            permanent: true,
        }],
        ..Observed::default()
    };
    assert_eq!(
        lines(&plan(&d, &obs).unwrap()),
        [
            "address del 10.0.0.5/24 dev eth0",
            "address add 10.0.0.5/24 dev eth1"
        ]
    );
}

#[test]
fn bond_members_are_enslaved_down_before_the_bond_comes_up_and_vlan_follows_its_parent() {
    let mut eth0 = link("eth0", LinkKind::Physical);
    eth0.master = Some("bond0".into());
    let mut eth1 = link("eth1", LinkKind::Physical);
    eth1.master = Some("bond0".into());
    let mut bond = link(
        "bond0",
        LinkKind::Bond {
            mode: "active-backup".into(),
            miimon: 100,
        },
    );
    bond.mtu = Some(9000);
    let vlan = link(
        "bond0.10",
        LinkKind::Vlan {
            parent: "bond0".into(),
            id: 10,
        },
    );
    let d = desired(
        vec![vlan, eth1, bond, eth0],
        &[("bond0.10", "192.168.10.2/24")],
        vec![],
    );
    let obs = Observed {
        links: vec![hw(2, "eth0", true), hw(3, "eth1", false)],
        ..Observed::default()
    };
    assert_eq!(
        lines(&plan(&d, &obs).unwrap()),
        [
            "link add bond0 type bond mode active-backup miimon 100",
            "link set bond0 mtu 9000",
            "link add link bond0 name bond0.10 type vlan id 10",
            "link set eth0 down",
            "link set eth0 master bond0",
            "link set eth1 master bond0",
            "link set bond0 up",
            "link set bond0.10 up",
            "link set eth0 up",
            "link set eth1 up",
            "address add 192.168.10.2/24 dev bond0.10",
        ]
    );
}

#[test]
fn links_networkd_made_are_removed_when_unwanted_and_others_never() {
    let d = desired(vec![link("eth0", LinkKind::Physical)], &[], vec![]);
    let obs = Observed {
        links: vec![
            hw(2, "eth0", true),
            ObservedLink {
                kind: Some("bridge".into()),
                alias: Some(ALIAS.into()),
                ..hw(5, "br0", true)
            },
            ObservedLink {
                kind: Some("bridge".into()),
                ..hw(6, "cni0", true)
            },
        ],
        ..Observed::default()
    };
    assert_eq!(lines(&plan(&d, &obs).unwrap()), ["link del br0"]);
    // A link of the same name but another kind that networkd did not make is an error.
    let d = desired(vec![link("cni0", LinkKind::Dummy)], &[], vec![]);
    let err = plan(&d, &obs).unwrap_err().to_string();
    assert!(
        err.contains("a link named cni0 exists and is a bridge"),
        "{err}"
    );
}

#[test]
fn a_vlan_id_change_recreates_the_link() {
    let d = desired(
        vec![
            link("eth0", LinkKind::Physical),
            link(
                "v",
                LinkKind::Vlan {
                    parent: "eth0".into(),
                    id: 20,
                },
            ),
        ],
        &[("v", "10.9.0.1/24")],
        vec![],
    );
    let obs = Observed {
        links: vec![
            hw(2, "eth0", true),
            ObservedLink {
                kind: Some("vlan".into()),
                alias: Some(ALIAS.into()),
                vlan: Some((2, 10)),
                ..hw(7, "v", true)
            },
        ],
        addresses: vec![ObservedAddress {
            index: 7,
            address: p("10.9.0.1/24"),
            permanent: true,
        }],
        ..Observed::default()
    };
    assert_eq!(
        lines(&plan(&d, &obs).unwrap()),
        [
            "link del v",
            "link add link eth0 name v type vlan id 20",
            "link set v up",
            "address add 10.9.0.1/24 dev v",
        ]
    );
}

#[test]
fn what_cannot_happen_yet_waits_and_says_why() {
    let mut r = default_route("eth0", "192.168.1.1");
    r.metric = 100;
    let d = desired(
        vec![
            link("eth0", LinkKind::Physical),
            LinkSpec {
                selector: Some(Selector {
                    hardware_addr: Some("aa:bb:cc:dd:ee:ff".into()),
                    driver: None,
                }),
                ..link("uplink", LinkKind::Physical)
            },
        ],
        &[("uplink", "10.1.0.2/24")],
        vec![r],
    );
    let obs = Observed {
        links: vec![hw(2, "eth0", true)],
        ..Observed::default()
    };
    let plan = plan(&d, &obs).unwrap();
    assert!(plan.ops.is_empty(), "{:?}", plan.ops);
    assert_eq!(
        plan.waiting,
        [
            "no link matches the selector of uplink",
            "route 0.0.0.0/0 via 192.168.1.1 waits for an address of eth0 that reaches the gateway",
        ]
    );
}

#[test]
fn a_selector_picks_the_kernels_link() {
    let d = desired(
        vec![LinkSpec {
            selector: Some(Selector {
                hardware_addr: Some("52:54:00:00:00:03".into()),
                driver: None,
            }),
            mtu: Some(1400),
            ..link("uplink", LinkKind::Physical)
        }],
        &[("uplink", "10.1.0.2/24")],
        vec![],
    );
    let obs = Observed {
        links: vec![hw(2, "eth0", true), hw(3, "eth1", true)],
        ..Observed::default()
    };
    assert_eq!(
        lines(&plan(&d, &obs).unwrap()),
        ["link set eth1 mtu 1400", "address add 10.1.0.2/24 dev eth1"]
    );
}

#[test]
fn routes_networkd_did_not_install_are_left_alone() {
    let d = desired(vec![link("eth0", LinkKind::Physical)], &[], vec![]);
    let route = |protocol| ObservedRoute {
        index: Some(2),
        destination: p("10.50.0.0/16"),
        gateway: None,
        source: None,
        metric: 0,
        table: MAIN_TABLE,
        protocol,
    };
    let obs = Observed {
        links: vec![hw(2, "eth0", true)],
        routes: vec![route(3), route(PROTO_STATIC)],
        ..Observed::default()
    };
    assert_eq!(
        lines(&plan(&d, &obs).unwrap()),
        ["route del 10.50.0.0/16 dev eth0 metric 0 proto static"]
    );
}

#[test]
fn a_dependency_cycle_is_an_error_not_a_hang() {
    let mut a = link(
        "a",
        LinkKind::Vlan {
            parent: "b".into(),
            id: 1,
        },
    );
    a.master = None;
    let b = link(
        "b",
        LinkKind::Vlan {
            parent: "a".into(),
            id: 2,
        },
    );
    let err = plan(&desired(vec![a, b], &[], vec![]), &Observed::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("cycle: a → b → a"), "{err}");
}

#[test]
fn rules_come_after_the_routes_of_their_table_and_only_static_ones_are_removed() {
    let mut d = desired(
        vec![link("eth0", LinkKind::Physical)],
        &[("eth0", "10.0.0.5/24")],
        vec![],
    );
    d.routes.push(RouteSpec {
        table: 180,
        ..default_route("eth0", "10.0.0.1")
    });
    let rule = RuleSpec {
        priority: 32500,
        ipv6: false,
        fwmark: Some(0x20),
        fwmask: Some(0x20),
        invert: true,
        table: 180,
    };
    d.rules.push(rule.clone());
    let main = |priority, table| ObservedRule {
        rule: RuleSpec {
            priority,
            ipv6: false,
            fwmark: None,
            fwmask: None,
            invert: false,
            table,
        },
        protocol: 2,
    };
    let obs = Observed {
        links: vec![hw(2, "eth0", true)],
        rules: vec![
            main(0, 255),
            main(32766, MAIN_TABLE),
            ObservedRule {
                rule: RuleSpec {
                    fwmark: Some(7),
                    fwmask: None,
                    ..main(100, 9).rule
                },
                protocol: PROTO_STATIC,
            },
        ],
        ..Observed::default()
    };
    assert_eq!(
        lines(&plan(&d, &obs).unwrap()),
        [
            "address add 10.0.0.5/24 dev eth0",
            "route add 0.0.0.0/0 via 10.0.0.1 dev eth0 metric 1024 table 180 proto static",
            "rule del from all fwmark 0x7 lookup 9 priority 100 proto static",
            "rule add not from all fwmark 0x20/0x20 lookup 180 priority 32500 proto static",
        ]
    );
    // In place (the kernel reports the mask it stores): nothing to do for rules.
    let obs = Observed {
        rules: vec![ObservedRule {
            rule: rule.clone(),
            protocol: PROTO_STATIC,
        }],
        ..obs
    };
    assert!(
        !lines(&plan(&d, &obs).unwrap())
            .iter()
            .any(|l| l.contains("rule")),
        "{:?}",
        plan(&d, &obs).unwrap()
    );
}

#[test]
fn kubespans_userspace_tun_device_stands_for_the_wireguard_link() {
    let d = desired(
        vec![link("kubespan", LinkKind::Wireguard)],
        &[("kubespan", "fd00::1/64")],
        vec![],
    );
    let tun = |kind: &str| Observed {
        links: vec![ObservedLink {
            kind: Some(kind.into()),
            ..hw(7, "kubespan", true)
        }],
        ..Observed::default()
    };
    // A tun device of that name: configured, never replaced.
    assert_eq!(
        lines(&plan(&d, &tun("tun")).unwrap()),
        ["address add fd00::1/64 dev kubespan"]
    );
    // Missing: the kernel link is made.
    assert_eq!(
        lines(&plan(&d, &Observed::default()).unwrap())[0],
        "link add kubespan type wireguard"
    );
    // Any other kind is not KubeSpan's.
    assert!(plan(&d, &tun("veth")).is_err());
}

/// An IPv6 route asked for with metric 0 is one the kernel keeps with metric 1024: it matches,
/// and nothing is done (KubeSpan's mesh routes were deleted and added again on every pass).
#[test]
fn an_ipv6_route_with_metric_0_is_the_kernels_1024() {
    let route = RouteSpec {
        link: "kubespan".into(),
        destination: p("fd02::5/128"),
        gateway: None,
        source: None,
        metric: 0,
        table: 180,
    };
    let d = desired(
        vec![link("kubespan", LinkKind::Physical)],
        &[],
        vec![route.clone()],
    );
    let obs = Observed {
        links: vec![hw(7, "kubespan", true)],
        routes: vec![ObservedRoute {
            index: Some(7),
            destination: p("fd02::5/128"),
            gateway: None,
            source: None,
            metric: 1024,
            table: 180,
            protocol: PROTO_STATIC,
        }],
        ..Observed::default()
    };
    assert_eq!(lines(&plan(&d, &obs).unwrap()), Vec::<String>::new());
    // An IPv4 route keeps its 0.
    let v4 = RouteSpec {
        destination: p("10.5.0.3/32"),
        ..route
    };
    let d = desired(vec![link("kubespan", LinkKind::Physical)], &[], vec![v4]);
    let obs = Observed {
        links: vec![hw(7, "kubespan", true)],
        ..Observed::default()
    };
    assert_eq!(
        lines(&plan(&d, &obs).unwrap()),
        ["route add 10.5.0.3/32 dev kubespan metric 0 table 180 proto static"]
    );
}
