//! Kubernetes on the node: its PKI, etcd and the control plane on control-plane nodes, the
//! kubelet everywhere.

pub mod pki;
