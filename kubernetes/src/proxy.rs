//! kube-proxy on every node: Services routed by nftables rules, as a service of init's
//! supervisor (like the kubelet, not a DaemonSet).
//!
//! Why a supervised process: it depends on nothing but the network, the node's credentials
//! and the node's registration, so Services route as soon as the node has joined — before any pod can be
//! scheduled, with no image to import and no DaemonSet to roll out — and its logs are
//! `osctl logs kube-proxy`. It runs as the node (the kubelet's client certificate, kept fresh
//! by the kubelet's rotation; the add-ons bind `system:nodes` to `system:node-proxier`).
//!
//! Why nftables mode: it is kube-proxy's current mode (iptables is in maintenance), its rule
//! updates are incremental and atomic per transaction, and it needs one program (`nft`, from
//! Debian, on the root) rather than the iptables family and its legacy/nft split.

use std::time::Duration;

use basalt_config::Config;
use basalt_supervisor::{Dependency, Health, ServiceDef};

use crate::layout::{KUBELET_CLIENT_READY, KUBELET_ROOT, NODE_REGISTERED, healthz, process};

pub const PROGRAM: &str = "/usr/bin/kube-proxy";
/// Where its configuration is written.
pub const CONFIG: &str = "/system/etc/kubernetes/kube-proxy.yaml";
pub const HEALTHZ_PORT: u16 = 10256;

/// The `KubeProxyConfiguration`. `container`: the node is a container sharing its host's
/// kernel, so kube-proxy leaves the host-wide conntrack settings alone.
pub fn config_yaml(config: &Config, node_name: &str, container: bool) -> String {
    let (pods, _) = crate::layout::cluster_cidrs(config);
    let mut y = format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection:
  kubeconfig: {KUBELET_ROOT}/kubeconfig
hostnameOverride: {node_name}
clusterCIDR: {}
healthzBindAddress: 0.0.0.0:{HEALTHZ_PORT}
metricsBindAddress: 127.0.0.1:10249
",
        pods.join(",")
    );
    if container {
        // Zero: leave the limits as they are (nf_conntrack_max is the host's).
        y.push_str(
            "conntrack:\n  maxPerCore: 0\n  min: 0\n  tcpEstablishedTimeout: 0s\n  tcpCloseWaitTimeout: 0s\n",
        );
    }
    y
}

/// The `kube-proxy` service: once the node has its client certificate.
pub fn service() -> ServiceDef {
    let mut def = ServiceDef::new(
        "kube-proxy",
        process(PROGRAM, vec![format!("--config={CONFIG}")]),
    );
    // `nft` is in /usr/sbin.
    def.process.env = vec![("PATH".into(), "/usr/bin:/bin:/usr/sbin:/sbin".into())];
    def.depends = vec![
        Dependency::Condition(basalt_supervisor::NETWORK),
        Dependency::Condition(KUBELET_CLIENT_READY),
        Dependency::Condition(NODE_REGISTERED),
    ];
    def.stop_timeout = Duration::from_secs(10);
    def.health = Some(Health {
        check: std::sync::Arc::new(|| Box::pin(healthz(HEALTHZ_PORT))),
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(5),
    });
    def
}

/// In the `kube-proxy` service's place once `proxy.disabled`: `kube-proxy --cleanup` once,
/// which removes the rules it left (its nftables tables), so Services stop being routed at
/// once rather than at the next reboot.
pub fn cleanup_service() -> ServiceDef {
    let mut def = service();
    def.process.args = vec!["--cleanup".into(), "--v=1".into()];
    // It needs nothing the proxy needs, runs once, and answers no health check.
    def.depends.clear();
    def.health = None;
    def.restart = basalt_supervisor::policy::Restart::Once;
    def
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_configs as configs;

    #[test]
    fn kube_proxy_runs_nftables_as_the_node_with_the_pod_cidr() {
        let g = configs();
        let y = config_yaml(&g.worker, "w-1", false);
        for want in [
            "mode: nftables\n",
            "kubeconfig: /var/lib/kubelet/kubeconfig\n",
            "hostnameOverride: w-1\n",
            "clusterCIDR: 10.244.0.0/16\n",
        ] {
            assert!(y.contains(want), "{want} not in {y}");
        }
        assert!(!y.contains("conntrack"), "{y}");
        // A container node leaves the host's conntrack limits alone.
        let c = config_yaml(&g.worker, "w-1", true);
        assert!(c.contains("maxPerCore: 0\n"), "{c}");
    }
}
