//! Routes to the other nodes' pods: each node's pod CIDR (allocated by the controller manager,
//! on the bridge `cni0` there) is reached through that node's address. init lists the nodes
//! with the kubelet's own credentials and hands the routes to networkd as a layer of their own
//! (owner `kubernetes`), so drift is repaired like any route's. With KubeSpan on and
//! `advertisePodNetworks`, the node's own pod CIDRs go to KubeSpan (the `PodNetworks`
//! resource), which advertises them to the peers: there each is an allowed IP of this node's
//! peer, routed into the mesh by KubeSpan's table, whose rule comes before the main table's
//! routes here.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use basalt_config::types::Prefix;
use basalt_kubespan::peer::{LOCAL_POD_NETWORKS, PodNetworksSpec};
use basalt_networkd::sources::{LayerSpecs, publish};
use basalt_networkd::spec::{Layer, RouteSpec};
use basalt_resources::Store;

use super::https::Https;
use super::tlsboot::KUBELET_CLIENT;

const OWNER: &str = "kubernetes";

/// (pod CIDR, node address) of every node but `me`, from a `NodeList`.
pub fn routes_from(nodes: &serde_json::Value, me: &str) -> Vec<(Prefix, IpAddr)> {
    let mut out = Vec::new();
    for n in nodes["items"].as_array().into_iter().flatten() {
        if n["metadata"]["name"].as_str() == Some(me) {
            continue;
        }
        let ip = n["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["type"] == "InternalIP")
            .and_then(|a| a["address"].as_str())
            .and_then(|a| a.parse::<IpAddr>().ok());
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

/// Whether every node listed has its pod CIDR (then the list is checked less often).
fn all_allocated(nodes: &serde_json::Value) -> bool {
    nodes["items"]
        .as_array()
        .is_some_and(|v| !v.is_empty() && v.iter().all(|n| !pod_cidrs(n).is_empty()))
}

/// Keeps the routes to the other nodes' pods, and this node's own pod CIDRs as the
/// `PodNetworks` resource KubeSpan advertises: every 2 s while some node has no pod CIDR yet,
/// then every 10 s, for as long as the node runs.
pub async fn run(store: Store, endpoint: (String, u16), pki: Arc<Path>, me: String, link: String) {
    let mut last: Option<Vec<(Prefix, IpAddr)>> = None;
    let mut last_error = String::new();
    let mut last_own: Option<Vec<Prefix>> = None;
    loop {
        let mut settled = false;
        let listed = match Https::from_files(
            &endpoint.0,
            endpoint.1,
            &pki.join("ca.crt"),
            Path::new(KUBELET_CLIENT),
            Path::new(KUBELET_CLIENT),
        ) {
            Ok(api) => api.get("/api/v1/nodes").await.and_then(|r| r.json()),
            Err(e) => Err(e),
        };
        match listed {
            Ok(nodes) => {
                settled = all_allocated(&nodes);
                let own = own_pod_cidrs(&nodes, &me);
                if last_own.as_ref() != Some(&own) {
                    let spec = PodNetworksSpec { cidrs: own.clone() };
                    match store.apply(OWNER, LOCAL_POD_NETWORKS, spec) {
                        Ok(()) => last_own = Some(own),
                        Err(e) => tracing::warn!("pod networks not kept: {e}"),
                    }
                }
                let want = routes_from(&nodes, &me);
                if last.as_ref() != Some(&want) {
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
                    match publish(&store, OWNER, Layer::Config, &specs) {
                        Ok(()) => {
                            let shown: Vec<String> =
                                want.iter().map(|(p, ip)| format!("{p} via {ip}")).collect();
                            tracing::info!(
                                "pod routes: {}",
                                if shown.is_empty() {
                                    "none (no other node has a pod CIDR yet)".to_string()
                                } else {
                                    shown.join(", ")
                                }
                            );
                            last = Some(want);
                        }
                        Err(e) => tracing::warn!("pod routes not set: {e}"),
                    }
                }
            }
            Err(e) => {
                let e = basalt_sys::error_chain(&e);
                if e != last_error {
                    // Before the kubelet's bootstrap there is no certificate yet: say it once.
                    tracing::warn!("cannot list nodes yet: {e}");
                    last_error = e;
                }
            }
        }
        let every = if settled { 10 } else { 2 };
        tokio::time::sleep(Duration::from_secs(every)).await;
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
        assert!(!all_allocated(&nodes));
    }
}
