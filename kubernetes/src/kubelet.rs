//! The kubelet on every node: its configuration, containerd's CRI plugin and the pod network
//! it uses, what a container node has to give it, and the control plane's side of its TLS
//! bootstrap (the bootstrap token's Secret and the RBAC that lets a kubelet ask for, and get,
//! its client certificate).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use basalt_config::Config;

use crate::layout::{KUBELET_CLIENT_READY, KUBELET_ROOT as ROOT_DIR, healthz, process};
use basalt_supervisor::{self as supervisor, Dependency, Health, ServiceDef};

pub const CONFIG: &str = "/system/etc/kubernetes/kubelet.yaml";
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
pub const CNI_CONF_DIR: &str = "/system/etc/cni/net.d";
pub const CNI_TEMPLATE: &str = "/system/etc/cni/template.conflist";
const HEALTHZ_PORT: u16 = 10248;

/// The pod network: a bridge on each node with the node's pod CIDR (containerd renders the
/// template when the kubelet hands it the CIDR the controller manager allocated), and a pod's
/// `hostPort`s forwarded to it by `portmap` with nftables rules (its table `cni_hostport`;
/// the node has `nft`, which kube-proxy's nftables mode needs too, and no iptables).
pub const CNI_TEMPLATE_TEXT: &str = r#"{
  "cniVersion": "0.4.0",
  "name": "basalt",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "{{.PodCIDR}}" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    {
      "type": "portmap",
      "backend": "nftables",
      "capabilities": { "portMappings": true }
    }
  ]
}
"#;

/// Writes the CNI template and returns containerd's CRI settings, on a Kubernetes image.
pub fn prepare_cri() -> Option<basalt_containerd::Cri> {
    if !crate::layout::available() {
        return None;
    }
    let written = std::fs::create_dir_all(CNI_CONF_DIR).and_then(|()| {
        basalt_sys::fs::atomic_write(Path::new(CNI_TEMPLATE), CNI_TEMPLATE_TEXT.as_bytes(), 0o644)
    });
    if let Err(e) = written {
        tracing::warn!(path = CNI_TEMPLATE, error = %e, "kubelet: cannot write the CNI config");
    }
    // The pause image the image build put beside the others, by the name its release gives it.
    let pause_dir = Path::new(basalt_containerd::containers::IMAGES_DIR).join("pause");
    let sandbox_image = match basalt_containerd::containers::layout_references(&pause_dir) {
        Ok(refs) if !refs.is_empty() => refs[0].clone(),
        Ok(_) => {
            tracing::warn!(layout = %pause_dir.display(), "the pause image's layout names no image: no pod can start");
            String::new()
        }
        Err(e) => {
            tracing::warn!(
                error = %basalt_sys::error_chain(&e),
                "no pause image: no pod can start"
            );
            String::new()
        }
    };
    Some(basalt_containerd::Cri {
        sandbox_image,
        cni_bin_dir: CNI_BIN_DIR.into(),
        cni_conf_dir: CNI_CONF_DIR.into(),
        cni_template: CNI_TEMPLATE.into(),
        restrict_oom_score_adj: !has_capability(CAP_SYS_RESOURCE),
        registry_auth: Vec::new(),
    })
}

const CAP_SYS_RESOURCE: u32 = 24;

/// Whether init's effective capabilities hold `cap`.
fn has_capability(cap: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << cap) != 0)
}

/// The cluster DNS address: the config's, else the tenth address of the service subnet.
fn cluster_dns(config: &Config) -> Vec<IpAddr> {
    if let Some(d) = config
        .machine()
        .kubelet
        .as_ref()
        .map(|k| k.cluster_dns.clone())
        .filter(|d| !d.is_empty())
    {
        return d;
    }
    vec![crate::layout::dns_service_ip(config)]
}

/// The resolv.conf the kubelet hands pods of `dnsPolicy: Default` (CoreDNS among them): the
/// node's, without its loopback name servers — inside a pod those are the pod itself (a Docker
/// node's is Docker's 127.0.0.11), and CoreDNS forwarding there would ask itself.
pub const POD_RESOLV_CONF: &str = "/system/run/kubernetes/resolv.conf";

/// [`POD_RESOLV_CONF`]'s text from the node's resolv.conf, and how many name servers it keeps.
pub fn pod_resolv_conf(node: &str) -> (String, usize) {
    let mut out =
        String::from("# the node's resolv.conf without loopback name servers (for pods)\n");
    let mut kept = 0;
    for line in node.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("nameserver"), Some(ip))
                if ip.parse::<IpAddr>().is_ok_and(|ip| !ip.is_loopback()) =>
            {
                out.push_str(line.trim());
                out.push('\n');
                kept += 1;
            }
            (Some("nameserver"), _) => {}
            (Some(w), _) if !w.starts_with('#') && !w.starts_with(';') => {
                out.push_str(line.trim());
                out.push('\n');
            }
            _ => {}
        }
    }
    (out, kept)
}

/// Writes [`POD_RESOLV_CONF`] from the node's `/etc/resolv.conf` (missing: none); how many
/// name servers pods get.
pub fn write_pod_resolv_conf() -> std::io::Result<usize> {
    let node = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let (text, kept) = pod_resolv_conf(&node);
    basalt_sys::fs::atomic_write(Path::new(POD_RESOLV_CONF), text.as_bytes(), 0o644)?;
    Ok(kept)
}

/// Whether the node's cgroups are v1 (a container on a host whose cgroups are v1 or hybrid, as
/// Docker's on a cgroup v1 host are): `/sys/fs/cgroup` is then not the cgroup2 root. QEMU
/// nodes mount cgroup2 there.
pub fn cgroup_v1() -> bool {
    !Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// What the kubelet must know of the machine it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    /// The node's cgroups are v1 ([`cgroup_v1`]): the kubelet refuses to start on them unless
    /// told `failCgroupV1: false`.
    pub cgroup_v1: bool,
    /// The node's filesystem is its host's (a container node): evicting pods frees nothing
    /// of a disk the host fills, so the kubelet evicts for memory only.
    pub shared_disk: bool,
}

impl Host {
    /// This machine; `container`: the node runs in a container.
    pub fn detect(container: bool) -> Host {
        Host {
            cgroup_v1: cgroup_v1(),
            shared_disk: container,
        }
    }
}

/// The `KubeletConfiguration`.
pub fn config_yaml(config: &Config, pki_dir: &Path, host: Host) -> String {
    let domain = crate::layout::dns_domain(config);
    let dns: Vec<String> = cluster_dns(config)
        .iter()
        .map(|ip| format!("\"{ip}\""))
        .collect();
    format!(
        "# Generated by Basalt's init; rewritten at every boot.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://{socket}
{cgroups}clusterDomain: {domain}
clusterDNS: [{dns}]
failSwapOn: false
rotateCertificates: true
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {HEALTHZ_PORT}
resolvConf: {POD_RESOLV_CONF}
# The node's status is computed every 2 s (default 10 s) and posted only when it changes, or
# every 5 min: a node turns Ready within seconds of its pod network being set up.
nodeStatusUpdateFrequency: 2s
nodeStatusReportFrequency: 5m
evictionHard:
  memory.available: 100Mi
  nodefs.available: {disk}
  imagefs.available: {disk}
{image_gc}",
        ca = pki_dir.join("ca.crt").display(),
        dns = dns.join(", "),
        socket = basalt_containerd::SOCKET,
        disk = if host.shared_disk { "\"0%\"" } else { "5%" },
        // A container node's disk is its host's, filled by others: images loaded onto the
        // node would be collected whenever the host's disk passed 85%.
        image_gc = if host.shared_disk {
            "imageGCHighThresholdPercent: 100\n"
        } else {
            ""
        },
        cgroups = if host.cgroup_v1 {
            "# The node's cgroups are v1 (its host's are): the kubelet must be told to run on them.\nfailCgroupV1: false\n"
        } else {
            ""
        },
    )
}

/// The kubelet's flags (what its config file cannot say).
pub fn args(config: &Config, ip: IpAddr, hostname: &str, pki_dir: &Path) -> Vec<String> {
    let mut a = vec![
        format!("--config={CONFIG}"),
        format!(
            "--bootstrap-kubeconfig={}",
            pki_dir.join("bootstrap.kubeconfig").display()
        ),
        format!("--kubeconfig={ROOT_DIR}/kubeconfig"),
        format!("--cert-dir={ROOT_DIR}/pki"),
        format!("--root-dir={ROOT_DIR}"),
        format!("--node-ip={ip}"),
        format!("--hostname-override={hostname}"),
    ];
    let labels = &config.machine().node_labels;
    if !labels.is_empty() {
        let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        a.push(format!("--node-labels={}", l.join(",")));
    }
    if crate::node::tainted(config) {
        a.push(format!(
            "--register-with-taints={}=:NoSchedule",
            crate::node::CONTROL_PLANE_TAINT
        ));
    }
    for (k, v) in config
        .machine()
        .kubelet
        .as_ref()
        .map(|k| k.extra_args.clone())
        .unwrap_or_default()
    {
        a.push(format!("--{k}={v}"));
    }
    a
}

/// `GET /healthz` on the kubelet's plain-HTTP loopback port.
/// The `kubelet` service (after containerd).
pub fn service(args: Vec<String>) -> ServiceDef {
    let mut def = ServiceDef::new("kubelet", process("/usr/bin/kubelet", args));
    // mount and umount are in /bin.
    def.process.env = vec![("PATH".into(), "/usr/bin:/bin:/usr/sbin:/sbin".into())];
    def.depends = vec![
        Dependency::Service("containerd".into()),
        Dependency::Condition(supervisor::NETWORK),
        Dependency::Condition(supervisor::TIME),
        Dependency::Condition(KUBELET_CLIENT_READY),
    ];
    def.stop_timeout = Duration::from_secs(30);
    def.health = Some(Health {
        check: std::sync::Arc::new(|| Box::pin(healthz(HEALTHZ_PORT))),
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(5),
    });
    def
}

/// What a container node gives the kubelet (the host's kernel is shared): the cgroup v1
/// hierarchies writable (in the node's own cgroup namespace), a check that `/dev/kmsg` is
/// there (its OOM watcher reads it; the Docker provisioner passes the host's, read-only), and,
/// over the host-wide sysctls the kubelet sets, files
/// of this node's own holding the values it wants — so it finds them set and the host's
/// kernel settings are never changed.
pub fn prepare_container() -> Vec<String> {
    let mut notes = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == "unified") {
                continue;
            }
            let r = nix::mount::mount(
                None::<&str>,
                &p,
                None::<&str>,
                nix::mount::MsFlags::MS_REMOUNT
                    | nix::mount::MsFlags::MS_BIND
                    | nix::mount::MsFlags::MS_NOSUID
                    | nix::mount::MsFlags::MS_NODEV
                    | nix::mount::MsFlags::MS_NOEXEC,
                None::<&str>,
            );
            if let Err(e) = r {
                notes.push(format!("cannot make {} writable: {e}", p.display()));
            }
        }
    }
    if !Path::new("/dev/kmsg").exists() {
        notes.push("no /dev/kmsg: the kubelet will not start (the provisioner passes it)".into());
    }
    let stand_ins: &[(&str, &str)] = &[
        ("vm/overcommit_memory", "1"),
        ("vm/panic_on_oom", "0"),
        ("kernel/panic", "10"),
        ("kernel/panic_on_oops", "1"),
        ("kernel/keys/root_maxkeys", "1000000"),
        ("kernel/keys/root_maxbytes", "25000000"),
    ];
    let dir = PathBuf::from("/system/run/sysctl");
    for (name, value) in stand_ins {
        let file = dir.join(name.replace('/', "."));
        let target = Path::new("/proc/sys").join(name);
        let r = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&file, format!("{value}\n")))
            .map_err(|e| e.to_string())
            .and_then(|()| {
                nix::mount::mount(
                    Some(&file),
                    &target,
                    None::<&str>,
                    nix::mount::MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| e.to_string())
            });
        if let Err(e) = r {
            notes.push(format!("cannot stand in for {}: {e}", target.display()));
        }
    }
    notes
}

/// The role that lets nodes read every Node object (for the routes to their pod CIDRs).
pub const POD_ROUTES_ROLE: &str = "basalt:node-pod-routes";

/// A `ClusterRoleBinding` of `role` to the group `group`.
pub fn group_binding(name: &str, role: &str, group: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": { "name": name },
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": role,
        },
        "subjects": [{
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Group",
            "name": group,
        }],
    })
}

/// The objects a kubelet's TLS bootstrap needs (the first of the cluster's add-ons): the
/// bootstrap token's Secret, and the bindings that let the token's group ask for node client
/// certificates and have them approved, and nodes renew theirs; and the role that lets nodes
/// read the other nodes' pod CIDRs.
pub fn bootstrap_objects(config: &Config) -> Vec<serde_json::Value> {
    let token = &config.secrets().bootstrap_token;
    let secret_part = token.as_str().split_once('.').map_or("", |(_, s)| s);
    let secret = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": format!("bootstrap-token-{}", token.id()),
            "namespace": "kube-system",
        },
        "type": "bootstrap.kubernetes.io/token",
        "stringData": {
            "description": "Basalt's bootstrap token: kubelets join with it",
            "token-id": token.id(),
            "token-secret": secret_part,
            "usage-bootstrap-authentication": "true",
            "usage-bootstrap-signing": "true",
            "auth-extra-groups": "system:bootstrappers:basalt",
        },
    });
    vec![
        secret,
        group_binding(
            "basalt:kubelet-bootstrap",
            "system:node-bootstrapper",
            "system:bootstrappers",
        ),
        group_binding(
            "basalt:node-autoapprove-bootstrap",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            "system:bootstrappers",
        ),
        group_binding(
            "basalt:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            "system:nodes",
        ),
        // Every node's init reads the other nodes' pod CIDRs with its kubelet's credentials
        // (`podroutes`); the node authorizer of current releases lets a kubelet read only its
        // own Node object ("cannot read all nodes"), so the nodes are granted reading them all.
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": { "name": POD_ROUTES_ROLE },
            "rules": [{
                "apiGroups": [""],
                "resources": ["nodes"],
                "verbs": ["get", "list", "watch"],
            }],
        }),
        group_binding(POD_ROUTES_ROLE, POD_ROUTES_ROLE, "system:nodes"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_configs as configs;

    #[test]
    fn the_kubelet_joins_with_the_bootstrap_kubeconfig_through_containerd() {
        let g = configs();
        let a = args(
            &g.worker,
            "10.5.0.3".parse().unwrap(),
            "w-1",
            Path::new("/pki"),
        );
        for want in [
            "--bootstrap-kubeconfig=/pki/bootstrap.kubeconfig",
            "--node-ip=10.5.0.3",
            "--hostname-override=w-1",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} not in {a:#?}");
        }
        assert!(!a.iter().any(|x| x.contains("taints")), "{a:#?}");
        // A control plane keeps workloads off unless the cluster allows them.
        let cp = args(
            &g.controlplane,
            "10.5.0.2".parse().unwrap(),
            "cp",
            Path::new("/pki"),
        );
        assert!(
            cp.iter()
                .any(|x| x.contains("node-role.kubernetes.io/control-plane=:NoSchedule"))
        );
    }

    #[test]
    fn the_cluster_domain_and_scheduling_on_control_planes_follow_the_config() {
        let g = configs();
        let yaml = g.controlplane.to_yaml();
        assert!(yaml.contains("dnsDomain: cluster.local"), "{yaml}");
        let yaml = yaml.replacen("dnsDomain: cluster.local", "dnsDomain: corp.internal", 1);
        let yaml = match yaml.contains("allowSchedulingOnControlPlanes: false") {
            true => yaml.replacen(
                "allowSchedulingOnControlPlanes: false",
                "allowSchedulingOnControlPlanes: true",
                1,
            ),
            false => yaml.replacen(
                "kind: ClusterConfig\n",
                "kind: ClusterConfig\nallowSchedulingOnControlPlanes: true\n",
                1,
            ),
        };
        let c = Config::parse(&yaml, basalt_config::Mode::Metal).unwrap();
        // Pods are told the domain; CoreDNS serves it.
        let host = Host {
            cgroup_v1: false,
            shared_disk: false,
        };
        let k = config_yaml(&c, Path::new("/pki"), host);
        assert!(k.contains("clusterDomain: corp.internal"), "{k}");
        let node = crate::addons::Node {
            coredns_image: Some("coredns:v1".into()),
            local_path_images: Some(("lpp:v1".into(), "busybox:v1".into())),
            upstream: true,
        };
        let ms = crate::addons::manifests(&c, &node).unwrap();
        let corefile = ms
            .iter()
            .flat_map(|m| m.objects.iter())
            .find_map(|o| o["data"]["Corefile"].as_str())
            .unwrap()
            .to_string();
        assert!(corefile.contains("kubernetes corp.internal"), "{corefile}");
        // Workloads may run on this control plane: no taint at registration, and the Node's
        // reconciler takes it off.
        let a = args(&c, "10.5.0.2".parse().unwrap(), "cp", Path::new("/pki"));
        assert!(!a.iter().any(|x| x.contains("taints")), "{a:#?}");
        assert_eq!(crate::node::Wanted::from_config(&c).taint, Some(false));
        assert_eq!(
            crate::node::Wanted::from_config(&g.controlplane).taint,
            Some(true)
        );
    }

    #[test]
    fn cluster_dns_is_the_tenth_service_address() {
        let g = configs();
        let metal = Host {
            cgroup_v1: false,
            shared_disk: false,
        };
        let y = config_yaml(&g.worker, Path::new("/pki"), metal);
        assert!(y.contains("clusterDNS: [\"10.96.0.10\"]"), "{y}");
        assert!(y.contains("  nodefs.available: 5%\n"), "{y}");
        assert!(y.contains("clientCAFile: /pki/ca.crt"), "{y}");
        assert!(
            y.contains("containerRuntimeEndpoint: unix:///system/run/containerd/containerd.sock"),
            "{y}"
        );
        assert!(!y.contains("failCgroupV1"), "{y}");
        assert!(!y.contains("imageGCHighThresholdPercent"), "{y}");
        // On cgroup v1 (a Docker node on a v1 host) the kubelet is told it may run.
        let docker_on_v1 = Host {
            cgroup_v1: true,
            shared_disk: true,
        };
        let y = config_yaml(&g.worker, Path::new("/pki"), docker_on_v1);
        assert!(y.contains("\nfailCgroupV1: false\n"), "{y}");
        // A container node's disk is its host's: no pod is evicted for it.
        assert!(
            y.contains("  nodefs.available: \"0%\"\n  imagefs.available: \"0%\"\n"),
            "{y}"
        );
        // Nor an image collected.
        assert!(y.contains("\nimageGCHighThresholdPercent: 100\n"), "{y}");
    }

    #[test]
    fn pods_get_the_node_resolvers_but_loopback_ones() {
        let (text, kept) = pod_resolv_conf(
            "# docker\nnameserver 127.0.0.11\nnameserver 10.0.2.3\nnameserver ::1\nsearch example.org\noptions ndots:0\n",
        );
        assert_eq!(kept, 1);
        assert!(text.contains("nameserver 10.0.2.3\n"), "{text}");
        assert!(
            !text.contains("127.0.0.11") && !text.contains("::1"),
            "{text}"
        );
        assert!(text.contains("search example.org\n") && text.contains("options ndots:0\n"));
    }

    #[test]
    fn the_cni_template_is_json_with_the_pod_cidr_placeholder() {
        let v: serde_json::Value = serde_json::from_str(CNI_TEMPLATE_TEXT).unwrap();
        assert_eq!(v["plugins"][0]["type"], "bridge");
        assert_eq!(v["plugins"][1]["type"], "portmap");
        assert_eq!(v["plugins"][1]["backend"], "nftables");
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "{{.PodCIDR}}"
        );
    }
}
