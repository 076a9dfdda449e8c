//! networkd: the node's network, reconciled from declarative config over netlink.
//!
//! Sources (defaults, the kernel's `ip=`, DHCP leases, the machine config) each write *layered*
//! specs; the merge controller keeps the highest layer of each object; the apply controller
//! turns the merged specs into a plan of netlink operations against what the kernel has and
//! runs it; the status task mirrors the kernel into `LinkStatus`, `AddressStatus` and
//! `RouteStatus`, which also brings drift back to the apply controller. The files controller
//! owns the hostname, `resolv.conf` and `hosts`.
//!
//! Everything here works in the network namespace of the thread that runs it, which is how the
//! privileged tests run it standalone, without a VM. It must not assume it is PID 1.

#![forbid(unsafe_code)]

pub mod apply;
pub mod cmdline;
pub mod dhcp;
pub mod files;
pub mod merge;
pub mod netlink;
pub mod plan;
pub mod sources;
pub mod spec;

use basalt_resources::Store;
use basalt_resources::controller::{Runtime, RuntimeError};

pub use files::FilesOptions;
pub use sources::{LayerSpecs, publish};
pub use spec::Layer;

/// How networkd runs on this node (or in this test).
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub files: FilesOptions,
    pub dhcp: dhcp::Timing,
    /// The DHCP clients, for releasing their leases at shutdown.
    pub leases: dhcp::Leases,
}

/// Registers networkd's controllers with a runtime.
pub fn register(rt: &mut Runtime, opts: Options) -> Result<(), RuntimeError> {
    rt.register(Box::new(merge::MergeController))?;
    rt.register(Box::new(apply::ApplyController::default()))?;
    rt.register(Box::new(files::FilesController::new(opts.files)))?;
    rt.register(Box::new(dhcp::DhcpController::new(opts.dhcp, opts.leases)))?;
    Ok(())
}

/// The default layer, written once at start.
pub fn publish_defaults(store: &Store) -> Result<(), basalt_resources::StoreError> {
    publish(store, "default", Layer::Default, &sources::defaults())
}
