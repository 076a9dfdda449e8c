//! Routes to the other nodes' pods: each node's pod CIDR (allocated by the controller manager,
//! on the bridge `cni0` there) is reached through that node's address. init lists the nodes
//! with the kubelet's own credentials and hands the routes to networkd as a layer of their own
//! (owner `kubernetes`), so drift is repaired like any route's. With KubeSpan on and
//! `advertisePodNetworks`, the node's own pod CIDRs go to KubeSpan (the `PodNetworks`
//! resource), which advertises them to the peers: there each is an allowed IP of this node's
//! peer, routed into the mesh by KubeSpan's table, whose rule comes before the main table's
//! routes here. The same watch keeps the supervisor's `node-registered` condition: whether
//! this node's own Node object exists with an address (kube-proxy waits for it).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use basalt_config::types::Prefix;
use basalt_kubespan::peer::{LOCAL_POD_NETWORKS, PodNetworksSpec};
use basalt_networkd::sources::{LayerSpecs, publish};
use basalt_networkd::spec::{Layer, RouteSpec};
use basalt_resources::Store;
use basalt_supervisor::Supervisor;

use super::https::{Https, HttpsError};
use super::layout::NODE_REGISTERED;
use super::tlsboot::KUBELET_CLIENT;

const OWNER: &str = "kubernetes";

/// (pod CIDR, node address) of every node but `me`, from a `NodeList`.
pub fn routes_from(nodes: &serde_json::Value, me: &str) -> Vec<(Prefix, IpAddr)> {
    let mut out = Vec::new();
    for n in nodes["items"].as_array().into_iter().flatten() {
        if n["metadata"]["name"].as_str() == Some(me) {
            continue;
        }
        let ip = internal_ip(n);
        for p in pod_cidrs(n) {
            if let Some(ip) = ip
                && p.is_ipv6() == ip.is_ipv6()
            {
                out.push((p, ip));
            }
        }
    }
    out.sort_by_key(|(p, ip)| (p.to_string(), *ip));
    out
}

fn pod_cidrs(node: &serde_json::Value) -> Vec<Prefix> {
    let cidrs = node["spec"]["podCIDRs"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| vec![node["spec"]["podCIDR"].clone()]);
    cidrs
        .iter()
        .filter_map(|c| c.as_str().and_then(|c| c.parse::<Prefix>().ok()))
        .collect()
}

/// Whether `me` is in a `NodeList` with an InternalIP: the kubelet registered it, and
/// kube-proxy can find the node's address.
pub fn registered(nodes: &serde_json::Value, me: &str) -> bool {
    nodes["items"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|n| n["metadata"]["name"].as_str() == Some(me) && internal_ip(n).is_some())
}

/// A Node's first InternalIP.
fn internal_ip(node: &serde_json::Value) -> Option<IpAddr> {
    node["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .and_then(|a| a.parse::<IpAddr>().ok())
}

/// `me`'s own pod CIDRs in a `NodeList` (none until the controller manager allocates them).
pub fn own_pod_cidrs(nodes: &serde_json::Value, me: &str) -> Vec<Prefix> {
    nodes["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["metadata"]["name"].as_str() == Some(me))
        .map(pod_cidrs)
        .unwrap_or_default()
}

/// Keeps the routes to the other nodes' pods, and this node's own pod CIDRs as the
/// `PodNetworks` resource KubeSpan advertises, for as long as the node runs: lists the nodes,
/// then watches them from that list's version; when the watch ends (the server closes it
/// after a few minutes, or its version is too old), lists again. Until the API answers (no
/// kubelet certificate yet), it tries every 2 s and says why once. With no `link` (no link
/// holds the node's address) it keeps no routes, only the condition.
pub async fn run(
    sup: Arc<Supervisor>,
    store: Store,
    endpoint: (String, u16),
    pki: Arc<Path>,
    me: String,
    link: Option<String>,
) {
    let mut keeper = Keeper {
        sup,
        store,
        me,
        link,
        last: None,
        last_own: None,
        registered: None,
    };
    let mut last_error = String::new();
    loop {
        if let Err(e) = follow(&endpoint, &pki, &mut keeper).await {
            let e = basalt_sys::error_chain(&e);
            if e != last_error {
                // Before the kubelet's bootstrap there is no certificate yet: say it once.
                tracing::warn!(error = %e, "cannot watch nodes yet");
                last_error = e;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

/// How long the server keeps one watch open, and how long without an event or its end this
/// side waits before it lists again (a connection that died silently).
const WATCH_SECONDS: u64 = 300;
const WATCH_GUARD: Duration = Duration::from_secs(WATCH_SECONDS + 30);

/// One list and the watch that follows it; `Ok` when the watch ended and a new list is due.
async fn follow(
    endpoint: &(String, u16),
    pki: &Path,
    keeper: &mut Keeper,
) -> Result<(), HttpsError> {
    let api = Https::from_files(
        &endpoint.0,
        endpoint.1,
        &pki.join("ca.crt"),
        Path::new(KUBELET_CLIENT),
        Path::new(KUBELET_CLIENT),
    )?;
    let list = api.get("/api/v1/nodes").await?.json()?;
    let version = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut nodes: BTreeMap<String, serde_json::Value> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| Some((n["metadata"]["name"].as_str()?.to_string(), n.clone())))
        .collect();
    keeper.update(&nodes);
    let mut watch = api
        .watch(&format!(
            "/api/v1/nodes?watch=1&resourceVersion={version}&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}"
        ))
        .await?;
    loop {
        let Ok(event) = tokio::time::timeout(WATCH_GUARD, watch.next()).await else {
            return Ok(());
        };
        let Some(event) = event? else {
            return Ok(());
        };
        let object = &event["object"];
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        match event["type"].as_str() {
            Some("ADDED" | "MODIFIED") => {
                nodes.insert(name.to_string(), object.clone());
            }
            Some("DELETED") => {
                nodes.remove(name);
            }
            // A bookmark only moves the version; an error (410: the version is gone) ends
            // this watch: list again.
            Some("BOOKMARK") => continue,
            _ => return Ok(()),
        }
        keeper.update(&nodes);
    }
}

/// What was last handed on, so only changes are published.
struct Keeper {
    sup: Arc<Supervisor>,
    store: Store,
    me: String,
    link: Option<String>,
    last: Option<Vec<(Prefix, IpAddr)>>,
    last_own: Option<Vec<Prefix>>,
    registered: Option<bool>,
}

impl Keeper {
    fn update(&mut self, nodes: &BTreeMap<String, serde_json::Value>) {
        let list = serde_json::json!({ "items": nodes.values().collect::<Vec<_>>() });
        let registered = registered(&list, &self.me);
        if self.registered != Some(registered) {
            tracing::info!(node = %self.me, registered, "node object");
            self.sup.set_condition(NODE_REGISTERED, registered);
            self.registered = Some(registered);
        }
        let Some(link) = self.link.clone() else {
            return;
        };
        let own = own_pod_cidrs(&list, &self.me);
        if self.last_own.as_ref() != Some(&own) {
            let spec = PodNetworksSpec { cidrs: own.clone() };
            match self.store.apply(OWNER, LOCAL_POD_NETWORKS, spec) {
                Ok(()) => self.last_own = Some(own),
                Err(e) => tracing::warn!(error = %e, "pod networks not kept"),
            }
        }
        let want = routes_from(&list, &self.me);
        if self.last.as_ref() == Some(&want) {
            return;
        }
        let specs = LayerSpecs {
            routes: want
                .iter()
                .map(|(p, ip)| RouteSpec {
                    link: link.clone(),
                    destination: *p,
                    gateway: Some(*ip),
                    source: None,
                    metric: 1024,
                    table: basalt_networkd::spec::MAIN_TABLE,
                })
                .collect(),
            ..LayerSpecs::default()
        };
        match publish(&self.store, OWNER, Layer::Config, &specs) {
            Ok(()) => {
                let shown: Vec<String> =
                    want.iter().map(|(p, ip)| format!("{p} via {ip}")).collect();
                tracing::info!(
                    routes = %if shown.is_empty() {
                        "none (no other node has a pod CIDR yet)".to_string()
                    } else {
                        shown.join(", ")
                    },
                    "pod routes"
                );
                self.last = Some(want);
            }
            Err(e) => tracing::warn!(error = %e, "pod routes not set"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_other_nodes_pod_cidr_goes_through_its_address() {
        let nodes = serde_json::json!({"items": [
            {"metadata": {"name": "cp"}, "spec": {"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24"]},
             "status": {"addresses": [{"type": "InternalIP", "address": "10.5.0.2"}, {"type": "Hostname", "address": "cp"}]}},
            {"metadata": {"name": "w1"}, "spec": {"podCIDR": "10.244.0.0/24"},
             "status": {"addresses": [{"type": "InternalIP", "address": "10.5.0.3"}]}},
            {"metadata": {"name": "w2"}, "spec": {},
             "status": {"addresses": [{"type": "InternalIP", "address": "10.5.0.4"}]}},
        ]});
        let r = routes_from(&nodes, "w1");
        assert_eq!(
            r,
            vec![(
                "10.244.2.0/24".parse().unwrap(),
                "10.5.0.2".parse::<IpAddr>().unwrap()
            )]
        );
        assert_eq!(routes_from(&nodes, "cp").len(), 1);
        // Each node's own, for KubeSpan to advertise: none yet for w2, so not all allocated.
        assert_eq!(
            own_pod_cidrs(&nodes, "cp"),
            vec!["10.244.2.0/24".parse::<Prefix>().unwrap()]
        );
        assert!(own_pod_cidrs(&nodes, "w2").is_empty());
    }

    #[test]
    fn a_node_is_registered_once_its_object_has_an_address() {
        let nodes = serde_json::json!({"items": [
            {"metadata": {"name": "cp"},
             "status": {"addresses": [{"type": "Hostname", "address": "cp"}, {"type": "InternalIP", "address": "10.5.0.2"}]}},
            // Created, its status not written yet.
            {"metadata": {"name": "w1"}, "status": {}},
            {"metadata": {"name": "w2"}, "status": {"addresses": [{"type": "Hostname", "address": "w2"}]}},
        ]});
        assert!(registered(&nodes, "cp"));
        assert!(!registered(&nodes, "w1"));
        assert!(
            !registered(&nodes, "w2"),
            "a hostname is not an address kube-proxy uses"
        );
        assert!(!registered(&nodes, "w3"), "not there at all");
        assert!(!registered(&serde_json::json!({}), "cp"));
    }
}
