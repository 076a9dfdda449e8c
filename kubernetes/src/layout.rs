//! Where Kubernetes lives on the node and how its programs run: what every module of this
//! crate shares, so none of them imports another for it.

use std::path::Path;

use basalt_supervisor::process::ProcessSpec;

pub const KUBELET: &str = "/usr/bin/kubelet";
/// The kubelet's root directory (its pods, its client certificate, its kubeconfig).
pub const KUBELET_ROOT: &str = "/var/lib/kubelet";
/// The condition the TLS bootstrap sets once the kubelet's client certificate is written.
pub const KUBELET_CLIENT_READY: &str = "kubelet-client-ready";

/// Whether this image runs Kubernetes.
pub fn available() -> bool {
    Path::new(KUBELET).exists()
}

/// How etcd and the control plane run: a static program from the root, a plain `PATH`, many
/// files.
pub fn process(program: &str, args: Vec<String>) -> ProcessSpec {
    ProcessSpec {
        program: program.into(),
        args,
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        rlimits: vec![(
            nix::sys::resource::Resource::RLIMIT_NOFILE,
            1 << 16,
            1 << 16,
        )],
        ..ProcessSpec::default()
    }
}
