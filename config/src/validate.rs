//! Checks that span fields and documents: what the types alone cannot say.
//!
//! Every check pushes to one list, so a user sees all problems in one run.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use crate::decode::Problem;
use crate::document::{Document, Located};
use crate::error::ValueError;
use crate::types::{LinkName, Prefix};
use crate::v1alpha1::{MachineType, RouteConfig};

/// Where the machine runs; some settings make no sense in a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Metal,
    Container,
}

impl std::str::FromStr for Mode {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        match s {
            "metal" => Ok(Mode::Metal),
            "container" => Ok(Mode::Container),
            _ => Err(ValueError::NotOneOf {
                value: s.to_string(),
                expected: "a mode (metal or container)".into(),
            }),
        }
    }
}

/// What every link kind has in common, for the network checks.
struct LinkView<'a> {
    doc: &'a Located,
    name: &'a LinkName,
    mtu: Option<u32>,
    addresses: &'a [Prefix],
    routes: &'a [RouteConfig],
    dhcp: bool,
}

fn link_view(doc: &Located) -> Option<LinkView<'_>> {
    let (name, mtu, addresses, routes, dhcp) = match &doc.doc {
        Document::Link(l) => (&l.name, l.mtu, &l.addresses, &l.routes, l.dhcp),
        Document::Bond(b) => (&b.name, b.mtu, &b.addresses, &b.routes, b.dhcp),
        Document::Vlan(v) => (&v.name, v.mtu, &v.addresses, &v.routes, v.dhcp),
        Document::Bridge(b) => (&b.name, b.mtu, &b.addresses, &b.routes, b.dhcp),
        _ => return None,
    };
    Some(LinkView {
        doc,
        name,
        mtu,
        addresses,
        routes,
        dhcp,
    })
}

/// Checks decoded documents. `kinds_present` are the kinds of every document in the file,
/// including those that failed to decode, so a broken document is not also reported missing.
pub fn validate(docs: &[Located], kinds_present: &[String], mode: Mode, out: &mut Vec<Problem>) {
    singletons(docs, kinds_present, out);
    let machine = docs.iter().find_map(|d| match &d.doc {
        Document::Machine(m) => Some((d, m)),
        _ => None,
    });
    let cluster = docs.iter().find_map(|d| match &d.doc {
        Document::Cluster(c) => Some((d, c)),
        _ => None,
    });
    let secrets = docs.iter().find_map(|d| match &d.doc {
        Document::Secrets(s) => Some((d, s)),
        _ => None,
    });

    if let Some((doc, m)) = machine {
        for (i, san) in m.cert_sans.iter().enumerate() {
            if san.parse::<IpAddr>().is_err() && san.parse::<crate::types::Hostname>().is_err() {
                out.push(doc.problem(
                    &format!(".certSANs[{i}]"),
                    format!("{san:?} is neither a hostname nor an IP address"),
                ));
            }
        }
        for (k, v) in &m.node_labels {
            if let Err(why) = label_key(k) {
                out.push(doc.problem(&format!(".nodeLabels.{k}"), why));
            } else if let Err(why) = label_value(v) {
                out.push(doc.problem(&format!(".nodeLabels.{k}"), why));
            }
        }
        if let Some(k) = &m.kubelet {
            for key in k.extra_args.keys() {
                if let Err(why) = kubelet_arg(key) {
                    out.push(doc.problem(&format!(".kubelet.extraArgs.{key}"), why));
                }
            }
        }
        if let Some(i) = &m.install {
            match (&i.disk, &i.disk_selector) {
                (Some(d), None) => {
                    if let Err(why) = install_disk(d) {
                        out.push(doc.problem(".install.disk", why));
                    }
                }
                (None, Some(sel)) => {
                    for (field, why) in disk_selector(sel) {
                        out.push(doc.problem(&format!(".install.diskSelector.{field}"), why));
                    }
                }
                (Some(_), Some(_)) => out.push(doc.problem(
                    ".install",
                    "give disk or diskSelector, not both",
                )),
                (None, None) => out.push(doc.problem(
                    ".install",
                    "give the disk to install to: disk (/dev/vda) or diskSelector (size, model, serial, bus)",
                )),
            }
        }
        if mode == Mode::Container && m.install.is_some() {
            out.push(doc.problem(
                ".install",
                "a container node does not install to disk; remove install (or validate with --mode metal)",
            ));
        }
        if let (Some((sdoc, s)), MachineType::ControlPlane) = (secrets, m.machine_type) {
            let need = [
                (s.certs.kubernetes.key.is_none(), ".certs.kubernetes.key"),
                (
                    s.certs.etcd.as_ref().is_none_or(|e| e.key.is_none()),
                    ".certs.etcd.key",
                ),
                (s.service_account_key.is_none(), ".serviceAccountKey"),
                (s.secretbox_key.is_none(), ".secretboxEncryptionSecret"),
            ];
            for (missing, path) in need {
                if missing {
                    out.push(sdoc.problem(path, "a control-plane node needs this secret"));
                }
            }
        }
    }
    if let Some((sdoc, s)) = secrets {
        let cas = [
            (".certs.os", Some(&s.certs.os)),
            (".certs.kubernetes", Some(&s.certs.kubernetes)),
            (".certs.etcd", s.certs.etcd.as_ref()),
            (".certs.frontProxy", s.certs.front_proxy.as_ref()),
        ];
        // A config that names time servers is for a node whose clock may be wrong until it
        // syncs with them (a dead RTC battery): its CAs' validity is not judged by that clock.
        let by_clock = !docs
            .iter()
            .any(|d| matches!(&d.doc, Document::Time(t) if !t.disabled && !t.servers.is_empty()));
        for (path, ca) in cas {
            if let Some(ca) = ca
                && let Err(e) = ca.crt.check_ca_key(ca.key.as_ref(), by_clock)
            {
                out.push(sdoc.problem(&format!("{path}.crt"), e));
            }
        }
        if let Some(k) = &s.service_account_key
            && k.is_ed25519()
        {
            out.push(sdoc.problem(
                ".serviceAccountKey",
                "an Ed25519 key: Kubernetes signs service-account tokens with RSA or ECDSA keys only",
            ));
        }
        if s.certs.os.key.is_none() {
            out.push(sdoc.problem(
                ".certs.os.key",
                "every node needs the OS CA key to issue its API serving certificate",
            ));
        }
    }

    if let Some((doc, c)) = cluster {
        let mut names = std::collections::BTreeSet::new();
        for (i, m) in c.inline_manifests.iter().enumerate() {
            let at = format!(".inlineManifests[{i}]");
            if m.name.trim().is_empty() {
                out.push(doc.problem(&format!("{at}.name"), "a manifest needs a name"));
            } else if !names.insert(m.name.as_str()) {
                out.push(doc.problem(
                    &format!("{at}.name"),
                    format!("{:?} names two manifests", m.name),
                ));
            }
            if let Err(errs) = crate::manifests::parse(&m.contents) {
                for e in errs {
                    let mut p = doc.problem(
                        &format!("{at}.contents"),
                        format!(
                            "manifest {:?}, document {} (line {} of its contents): {}",
                            m.name, e.document, e.line, e.message
                        ),
                    );
                    // A block scalar (`contents: |`) starts on the line the span gives: the
                    // problem's line is then the file's own.
                    p.line = p.line.map(|l| l + e.line.saturating_sub(1));
                    out.push(p);
                }
            }
        }
        if c.control_plane.endpoint.scheme != "https" {
            out.push(doc.problem(
                ".controlPlane.endpoint",
                format!("{} must use https", c.control_plane.endpoint),
            ));
        }
        if let Some(net) = &c.network {
            let all: Vec<(String, &Prefix)> = net
                .pod_subnets
                .iter()
                .enumerate()
                .map(|(i, p)| (format!(".network.podSubnets[{i}]"), p))
                .chain(
                    net.service_subnets
                        .iter()
                        .enumerate()
                        .map(|(i, p)| (format!(".network.serviceSubnets[{i}]"), p)),
                )
                .collect();
            for (a, b) in overlapping(all.iter().map(|(_, p)| **p)) {
                let ((pa, pa_prefix), (pb, pb_prefix)) = (&all[a], &all[b]);
                out.push(doc.problem(pb, format!("{pb_prefix} overlaps {pa_prefix} ({pa})")));
            }
        }
    }

    let links: Vec<LinkView<'_>> = docs.iter().filter_map(link_view).collect();
    if mode == Mode::Container {
        // The runtime makes a container node's links and gives them their first address;
        // the config may add static addresses and routes to them, nothing else.
        let fix = "(or validate with --mode metal)";
        for d in docs {
            match &d.doc {
                Document::Bond(_) | Document::Vlan(_) | Document::Bridge(_) => out.push(d.problem(
                    "",
                    format!("a container node cannot make links: the container runtime owns them; remove this document {fix}"),
                )),
                Document::Link(l) => {
                    let owned = "the container runtime owns a container node's links: only static addresses and routes can be added";
                    for (bad, path) in [
                        (l.selector.is_some(), ".selector"),
                        (l.dummy, ".dummy"),
                        (!l.up, ".up"),
                        (l.mtu.is_some(), ".mtu"),
                        (l.dhcp, ".dhcp"),
                    ] {
                        if bad {
                            out.push(d.problem(path, format!("{owned}; remove {path} {fix}")));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    network(docs, &links, out);

    // KubeSpan meets its peers only through discovery: on without it, a node waits for peers
    // that can never come.
    let discovery_on = docs
        .iter()
        .any(|d| matches!(&d.doc, Document::Discovery(disc) if disc.enabled));
    for d in docs {
        if let Document::KubeSpan(k) = &d.doc
            && k.enabled
            && !discovery_on
        {
            out.push(d.problem(
                ".enabled",
                "KubeSpan finds its peers through discovery, which is off: add a DiscoveryConfig with enabled: true and an endpoint, or turn KubeSpan off",
            ));
        }
    }

    for d in docs {
        if let Document::KubeSpan(k) = &d.doc
            && !(1280..=9000).contains(&k.mtu)
        {
            out.push(d.problem(
                ".mtu",
                format!("{} is outside 1280..=9000 (the mesh carries IPv6)", k.mtu),
            ));
        }
        if let Document::Discovery(disc) = &d.doc
            && disc.enabled
            && disc.endpoint.is_none()
        {
            out.push(d.problem(".endpoint", "discovery is enabled but no endpoint is set"));
        }
        if let Document::Time(t) = &d.doc
            && !t.disabled
            && t.servers.iter().any(|s| s.trim().is_empty())
        {
            out.push(d.problem(".servers", "a time server is empty"));
        }
        registry(d, out);
    }
}

/// A Kubernetes label key: an optional DNS-subdomain prefix and `/`, then a name of at most
/// 63 characters, alphanumeric at both ends, `-`, `_` and `.` between.
pub fn label_key(k: &str) -> Result<(), ValueError> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix
        && (p.is_empty() || p.len() > 253 || p.parse::<crate::types::Hostname>().is_err())
    {
        return Err(ValueError::LabelPrefix(k.to_string()));
    }
    label_name(name).map_err(|why| why.of(k))
}

/// A Kubernetes label value: empty, or a name as in [`label_key`]. A `,` or `=` would let one
/// label smuggle another into the kubelet's `--node-labels`.
pub fn label_value(v: &str) -> Result<(), ValueError> {
    if v.is_empty() {
        return Ok(());
    }
    label_name(v).map_err(|why| ValueError::LabelValue {
        value: v.to_string(),
        source: Box::new(why),
    })
}

fn label_name(n: &str) -> Result<(), ValueError> {
    let ok_inner = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if n.is_empty() || n.len() > 63 {
        return Err(ValueError::LabelNameLength);
    }
    let first = n.chars().next().unwrap_or('-');
    let last = n.chars().last().unwrap_or('-');
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() || !n.chars().all(ok_inner) {
        return Err(ValueError::LabelNameCharacters);
    }
    Ok(())
}

/// The kubelet flags Basalt sets itself: a config may not replace them.
pub const KUBELET_OWNED_FLAGS: &[&str] = &[
    "config",
    "bootstrap-kubeconfig",
    "kubeconfig",
    "cert-dir",
    "root-dir",
    "node-ip",
    "hostname-override",
    "node-labels",
    "register-with-taints",
    "container-runtime-endpoint",
];

/// A key of `kubelet.extraArgs`: a flag name without dashes, not one Basalt sets.
pub fn kubelet_arg(key: &str) -> Result<(), ValueError> {
    if key.is_empty() || key.starts_with('-') || key.contains(['=', ' ', '\0']) {
        return Err(ValueError::NotFlagName(key.to_string()));
    }
    if KUBELET_OWNED_FLAGS.contains(&key) {
        return Err(ValueError::FlagOwned(key.to_string()));
    }
    Ok(())
}

/// A disk selector's problems: (field, why). An empty selector matches every disk, which
/// is never what was meant.
pub fn disk_selector(sel: &crate::v1alpha1::DiskSelector) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if sel.size.is_none() && sel.model.is_none() && sel.serial.is_none() && sel.bus.is_none() {
        out.push((
            "size",
            "give at least one of size, model, serial, bus".to_string(),
        ));
    }
    if let Some(s) = &sel.size
        && let Err(why) = crate::v1alpha1::SizeBound::parse(s)
    {
        out.push(("size", why.to_string()));
    }
    for (field, v) in [("model", &sel.model), ("serial", &sel.serial)] {
        if let Some(v) = v
            && (v.is_empty() || v.len() > 256 || v.chars().any(char::is_control))
        {
            out.push((
                field,
                format!("{v:?}: 1 to 256 characters, no control characters"),
            ));
        }
    }
    if let Some(b) = &sel.bus
        && !crate::v1alpha1::DISK_BUSES.iter().any(|(n, _)| n == b)
    {
        out.push((
            "bus",
            format!(
                "{b:?} is not one of {}",
                crate::v1alpha1::DISK_BUSES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    out
}

/// An install disk: a device path under `/dev`, with no `.` or `..` in it.
pub fn install_disk(disk: &str) -> Result<(), ValueError> {
    let rest = disk.strip_prefix("/dev/").unwrap_or_default();
    if rest.is_empty()
        || rest
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return Err(ValueError::NotDevice(disk.to_string()));
    }
    Ok(())
}

/// Pairs (earlier, later) by position of prefixes that share an address: each prefix that
/// overlaps one before it in address order, with the one it overlaps. Sorted, then swept:
/// n·log n, so a config with many subnets is checked in time linear in its size.
pub fn overlapping(prefixes: impl Iterator<Item = Prefix>) -> Vec<(usize, usize)> {
    let mut ranges: Vec<(bool, u128, u128, usize)> = prefixes
        .enumerate()
        .map(|(i, p)| {
            let (v6, first, last) = p.range();
            (v6, first, last, i)
        })
        .collect();
    // By family, then start; the widest first among equal starts.
    ranges.sort_by(|a, b| {
        (a.0, a.1, std::cmp::Reverse(a.2)).cmp(&(b.0, b.1, std::cmp::Reverse(b.2)))
    });
    let mut out = Vec::new();
    // The range reaching furthest so far in this family, and its position.
    let mut reach: Option<(bool, u128, usize)> = None;
    for (v6, first, last, i) in ranges {
        match reach {
            Some((fam, end, j)) if fam == v6 && first <= end => {
                out.push((i.min(j), i.max(j)));
                if last > end {
                    reach = Some((v6, last, i));
                }
            }
            _ => reach = Some((v6, last, i)),
        }
    }
    out.sort_unstable();
    out
}

/// A registry host as image references name it: `host` or `host:port` (IPv6 in brackets).
pub fn is_registry_host(s: &str) -> bool {
    let (host, port) = match s.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => return false,
        },
        None => match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        },
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    let host_ok = host.parse::<IpAddr>().is_ok()
        || (!host.is_empty() && host.parse::<crate::types::Hostname>().is_ok());
    port_ok && host_ok
}

/// The host of a registry endpoint URL (`http://host:port[/path]`), or why it is not one.
pub fn endpoint_host(url: &str) -> Result<&str, ValueError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| ValueError::NotHttp(url.to_string()))?;
    if rest.contains(['?', '#', '@']) {
        return Err(ValueError::EndpointExtras(url.to_string()));
    }
    let host = rest.split('/').next().unwrap_or_default();
    if is_registry_host(host) {
        Ok(host)
    } else {
        Err(ValueError::EndpointHost {
            url: url.to_string(),
            host: host.to_string(),
        })
    }
}

fn registry(d: &Located, out: &mut Vec<Problem>) {
    let host_problem = |name: &str, wild: bool| {
        let also = if wild {
            ", or * for every registry"
        } else {
            ""
        };
        format!(
            "{name:?} is not a registry host: host or host:port (docker.io, 10.5.0.1:5000){also}"
        )
    };
    match &d.doc {
        Document::RegistryMirror(m) => {
            if m.name != "*" && !is_registry_host(&m.name) {
                out.push(d.problem(".name", host_problem(&m.name, true)));
            }
            if m.endpoints.is_empty() {
                out.push(d.problem(".endpoints", "a mirror needs at least one endpoint"));
            }
            for (i, e) in m.endpoints.iter().enumerate() {
                if let Err(why) = endpoint_host(&e.url) {
                    out.push(d.problem(&format!(".endpoints[{i}].url"), why));
                }
            }
        }
        Document::RegistryAuth(a) => {
            if !is_registry_host(&a.name) {
                out.push(d.problem(".name", host_problem(&a.name, false)));
            }
            match (&a.username, &a.password, &a.identity_token) {
                (Some(_), Some(_), None) | (None, None, Some(_)) => {}
                (Some(_), None, None) => {
                    out.push(d.problem(".username", "a username needs a password"))
                }
                (None, Some(_), None) => {
                    out.push(d.problem(".password", "a password needs a username"))
                }
                (None, None, None) => out.push(d.problem(
                    "",
                    "no credentials: set username and password, or identityToken",
                )),
                _ => out.push(d.problem(
                    ".identityToken",
                    "an identity token or a username and password, not both",
                )),
            }
        }
        Document::RegistryTls(t) => {
            if !is_registry_host(&t.name) {
                out.push(d.problem(".name", host_problem(&t.name, false)));
            }
            if t.insecure_skip_verify && t.ca.is_some() {
                out.push(d.problem(
                    ".insecureSkipVerify",
                    "with insecureSkipVerify the ca is never checked: remove one of them",
                ));
            }
            if !t.insecure_skip_verify && t.ca.is_none() && t.client_identity.is_none() {
                out.push(d.problem(
                    "",
                    "sets nothing: give a ca, a clientIdentity or insecureSkipVerify",
                ));
            }
        }
        _ => {}
    }
}

fn singletons(docs: &[Located], kinds_present: &[String], out: &mut Vec<Problem>) {
    let mut first: HashMap<(&str, Option<&str>), &Located> = HashMap::new();
    let mut names: HashMap<&str, &Located> = HashMap::new();
    for d in docs {
        let key = (d.doc.kind(), d.doc.name());
        if let Some(prev) = first.get(&key) {
            let what = match d.doc.name() {
                Some(n) => format!("{} {n:?}", d.doc.kind()),
                None => d.doc.kind().to_string(),
            };
            out.push(d.problem(
                "",
                format!(
                    "duplicate {what}: already defined in document {}",
                    prev.index
                ),
            ));
            continue;
        }
        first.insert(key, d);
        if let Some(name) = d.doc.name().filter(|_| d.doc.is_link()) {
            if let Some(prev) = names.get(name) {
                out.push(d.problem(
                    ".name",
                    format!(
                        "link {name:?} is already defined as a {} in document {}",
                        prev.doc.kind(),
                        prev.index
                    ),
                ));
            } else {
                names.insert(name, d);
            }
        }
    }
    for kind in ["MachineConfig", "ClusterConfig", "Secrets"] {
        if !kinds_present.iter().any(|k| k == kind) {
            out.push(Problem {
                doc: None,
                path: String::new(),
                message: format!("no {kind} document (osctl gen config writes one)"),
                line: None,
            });
        }
    }
}

fn network(docs: &[Located], links: &[LinkView<'_>], out: &mut Vec<Problem>) {
    // Which master owns each member link.
    let mut master_of: BTreeMap<&str, (&str, &Located)> = BTreeMap::new();
    for d in docs {
        let (master, members, field) = match &d.doc {
            Document::Bond(b) => (&b.name, &b.links, "bond"),
            Document::Bridge(b) => (&b.name, &b.links, "bridge"),
            _ => continue,
        };
        if members.is_empty() {
            out.push(d.problem(
                ".links",
                format!("a {field} needs at least one member link"),
            ));
        }
        for (i, m) in members.iter().enumerate() {
            if m == master {
                out.push(d.problem(
                    &format!(".links[{i}]"),
                    format!("{field} {master} cannot contain itself"),
                ));
            } else if let Some((other, _)) = master_of.get(m.as_str()) {
                out.push(d.problem(
                    &format!(".links[{i}]"),
                    format!("{m} is already a member of {other}; a link has at most one master"),
                ));
            } else {
                master_of.insert(m.as_str(), (master.as_str(), d));
            }
        }
    }
    for d in docs {
        if let Document::Vlan(v) = &d.doc {
            if !(1..=4094).contains(&v.vlan_id) {
                out.push(d.problem(".vlanID", format!("{} is outside 1..=4094", v.vlan_id)));
            }
            if v.parent == v.name {
                out.push(d.problem(".parent", "a VLAN cannot be its own parent"));
            }
            if let Some((master, _)) = master_of.get(v.parent.as_str()) {
                out.push(d.problem(
                    ".parent",
                    format!(
                        "{} is a member of {master}; put the VLAN on {master} instead",
                        v.parent
                    ),
                ));
            }
        }
    }

    // A link sits on another (a VLAN on its parent, a member under its master): those edges
    // must not loop, or no order creates the links.
    let mut on: BTreeMap<&str, Vec<(&str, &Located, &'static str)>> = BTreeMap::new();
    for (member, (master, d)) in &master_of {
        on.entry(member).or_default().push((master, d, ".links"));
    }
    for d in docs {
        if let Document::Vlan(v) = &d.doc
            && v.parent != v.name
        {
            on.entry(v.name.as_str())
                .or_default()
                .push((v.parent.as_str(), d, ".parent"));
        }
    }
    // Depth-first, each link once: a link met again while it is still on the walk closes a
    // cycle.
    let mut state: HashMap<&str, bool> = HashMap::new(); // false: on the walk, true: done
    for &start in on.keys() {
        if state.contains_key(start) {
            continue;
        }
        state.insert(start, false);
        let mut walk: Vec<(&str, usize)> = vec![(start, 0)];
        while let Some((node, next_edge)) = walk.last_mut() {
            let node = *node;
            let edges = on.get(node).map(Vec::as_slice).unwrap_or_default();
            let Some(&(next, d, field)) = edges.get(*next_edge) else {
                state.insert(node, true);
                walk.pop();
                continue;
            };
            *next_edge += 1;
            match state.get(next) {
                Some(false) => {
                    let from = walk.iter().position(|(n, _)| *n == next).unwrap_or(0);
                    let mut names: Vec<&str> = walk[from..].iter().map(|(n, _)| *n).collect();
                    names.push(next);
                    out.push(d.problem(
                        field,
                        format!(
                            "links {} form a cycle: none can be made first",
                            names.join(" → ")
                        ),
                    ));
                }
                Some(true) => {}
                None => {
                    state.insert(next, false);
                    walk.push((next, 0));
                }
            }
        }
    }

    let mut claimed: HashMap<IpAddr, (&str, String)> = HashMap::new();
    for l in links {
        if let Some((master, _)) = master_of.get(l.name.as_str())
            && (!l.addresses.is_empty() || l.dhcp)
        {
            out.push(l.doc.problem(
                if l.dhcp { ".dhcp" } else { ".addresses" },
                format!(
                    "{} is a member of {master} and cannot have its own addresses",
                    l.name
                ),
            ));
        }
        if let Some(mtu) = l.mtu {
            if !(68..=65535).contains(&mtu) {
                out.push(
                    l.doc
                        .problem(".mtu", format!("{mtu} is outside 68..=65535")),
                );
            } else if mtu < 1280 && l.addresses.iter().any(Prefix::is_ipv6) {
                out.push(l.doc.problem(
                    ".mtu",
                    format!("{mtu} is below 1280, the minimum for a link with IPv6 addresses"),
                ));
            }
        }
        // For the route checks below: the link's addresses, and its networks by start with
        // the furthest end so far, so each route is checked in log time (not against every
        // address: addresses × routes grew quadratically).
        let own: std::collections::HashSet<IpAddr> = l.addresses.iter().map(|a| a.addr()).collect();
        let mut nets: Vec<(bool, u128, u128)> = l.addresses.iter().map(Prefix::range).collect();
        nets.sort_unstable();
        let reach: Vec<u128> = nets
            .iter()
            .scan((None, 0u128), |(fam, max), (v6, _, end)| {
                if *fam != Some(*v6) {
                    *fam = Some(*v6);
                    *max = 0;
                }
                *max = (*max).max(*end);
                Some(*max)
            })
            .collect();
        let reachable = |ip: IpAddr| {
            let (v6, at, _) = Prefix::new(ip, if ip.is_ipv4() { 32 } else { 128 })
                .map(|p| p.range())
                .unwrap_or((ip.is_ipv6(), 0, 0));
            // The last network of this family starting at or before `ip`.
            let n = nets.partition_point(|(f, start, _)| (*f, *start) <= (v6, at));
            n > 0 && nets[n - 1].0 == v6 && reach[n - 1] >= at
        };
        for (i, a) in l.addresses.iter().enumerate() {
            let path = format!(".addresses[{i}]");
            if a.prefix_len() == 0 {
                out.push(l.doc.problem(
                    &path,
                    format!(
                        "{a}: a /0 address claims every address; give the link's own prefix length"
                    ),
                ));
            }
            if let Some((other, other_path)) = claimed.get(&a.addr()) {
                out.push(l.doc.problem(
                    &path,
                    format!(
                        "{} is already claimed by link {other} ({other_path})",
                        a.addr()
                    ),
                ));
            } else {
                claimed.insert(a.addr(), (l.name.as_str(), path));
            }
        }
        for (i, r) in l.routes.iter().enumerate() {
            let path = format!(".routes[{i}]");
            if r.destination != r.destination.network() {
                out.push(l.doc.problem(
                    &format!("{path}.destination"),
                    format!(
                        "{} has host bits set: the network is {}",
                        r.destination,
                        r.destination.network()
                    ),
                ));
            }
            if let Some(gw) = r.gateway {
                if gw.is_ipv4() != r.destination.addr().is_ipv4() {
                    out.push(l.doc.problem(
                        &format!("{path}.gateway"),
                        format!(
                            "gateway {gw} and destination {} are of different IP families",
                            r.destination
                        ),
                    ));
                } else if !l.dhcp && !reachable(gw) {
                    let ours: Vec<String> = l.addresses.iter().map(|a| a.to_string()).collect();
                    out.push(l.doc.problem(
                        &format!("{path}.gateway"),
                        format!(
                            "gateway {gw} is not reachable from any address of {} ({})",
                            l.name,
                            if ours.is_empty() {
                                "it has none".to_string()
                            } else {
                                ours.join(", ")
                            }
                        ),
                    ));
                }
            }
            if let Some(src) = r.source
                && !own.contains(&src)
                && !l.dhcp
            {
                out.push(l.doc.problem(
                    &format!("{path}.source"),
                    format!("source {src} is not an address of {}", l.name),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sweep finds what comparing every pair finds: every reported pair overlaps, and every
    /// prefix that overlaps another is in a reported pair.
    #[test]
    fn overlaps_are_found_as_every_pair_would_find_them() {
        let mut prefixes: Vec<Prefix> = Vec::new();
        let mut seed = 7u64;
        for _ in 0..400 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let a = u32::try_from(seed >> 40).unwrap() << 8;
            let len = 8 + u8::try_from((seed >> 20) % 25).unwrap();
            prefixes.push(Prefix::new(IpAddr::V4(a.into()), len).unwrap());
        }
        prefixes.push("fd00::/8".parse().unwrap());
        prefixes.push("fd00:1::/64".parse().unwrap());
        prefixes.push("10.0.0.0/8".parse().unwrap());
        let found = overlapping(prefixes.iter().copied());
        for (a, b) in &found {
            assert!(a < b && prefixes[*a].overlaps(&prefixes[*b]), "{a} {b}");
        }
        let involved: std::collections::BTreeSet<usize> =
            found.iter().flat_map(|(a, b)| [*a, *b]).collect();
        for i in 0..prefixes.len() {
            let overlaps_any =
                (0..prefixes.len()).any(|j| j != i && prefixes[i].overlaps(&prefixes[j]));
            assert_eq!(overlaps_any, involved.contains(&i), "{}", prefixes[i]);
        }
        assert!(found.len() > 10, "the sample has overlaps: {}", found.len());
        // An IPv4 network never overlaps an IPv6 one.
        let mixed = overlapping(["10.0.0.0/8", "::/0"].iter().map(|p| p.parse().unwrap()));
        assert!(mixed.is_empty());
    }
}
