//! Who may call what: the roles a client certificate carries and the one table that maps each
//! RPC to the least role allowed to call it. apid enforces it; init redacts secrets by it.

use std::fmt;

/// A caller's role, from its client certificate's Organization. Ordered: each role may do
/// everything the ones below it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Reader,
    Operator,
    Admin,
}

/// The Organization of a node's own certificate: another node's apid proxying a call. It
/// carries the caller's role in [`ROLE_HEADER`]; it has no rights of its own.
pub const IMPERSONATOR: &str = "os:impersonator";

/// Metadata apid sets to the caller's role on every call it passes on (to init, or to the
/// next node when proxying). apid drops it from callers that are not nodes.
pub const ROLE_HEADER: &str = "x-basalt-role";

/// Metadata naming the node a call is for; absent means the node apid runs on.
pub const NODE_HEADER: &str = "node";

impl Role {
    pub const ALL: [Role; 3] = [Role::Reader, Role::Operator, Role::Admin];

    /// The certificate Organization that grants this role.
    pub fn organization(self) -> &'static str {
        match self {
            Role::Reader => "os:reader",
            Role::Operator => "os:operator",
            Role::Admin => "os:admin",
        }
    }

    pub fn from_organization(o: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.organization() == o)
    }

    /// The highest role among a certificate's Organizations.
    pub fn from_organizations<'a>(orgs: impl IntoIterator<Item = &'a str>) -> Option<Role> {
        orgs.into_iter().filter_map(Role::from_organization).max()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.organization())
    }
}

const SERVICE: &str = "/basalt.machine.v1.Machine/";

/// Every RPC and the least role that may call it. A method missing here needs admin.
pub const METHODS: &[(&str, Role)] = &[
    ("Version", Role::Reader),
    ("ServiceList", Role::Reader),
    ("Logs", Role::Reader),
    ("Dmesg", Role::Reader),
    ("Get", Role::Reader),
    ("List", Role::Reader),
    ("Watch", Role::Reader),
    ("Containers", Role::Reader),
    ("Images", Role::Reader),
    ("Memory", Role::Reader),
    ("Processes", Role::Reader),
    ("Mounts", Role::Reader),
    ("Disks", Role::Reader),
    ("EtcdMembers", Role::Reader),
    ("ClusterHealth", Role::Reader),
    ("ServiceStart", Role::Operator),
    ("ServiceStop", Role::Operator),
    ("ServiceRestart", Role::Operator),
    ("ServiceKill", Role::Operator),
    ("Reboot", Role::Operator),
    // Sends traffic from the node.
    ("Ping", Role::Operator),
    // What the kubelet does for any pod: a pull through the node's registry settings.
    ("ImagePull", Role::Operator),
    ("Shutdown", Role::Operator),
    ("ApplyConfiguration", Role::Admin),
    ("Reset", Role::Admin),
    // Replaces what the node runs.
    ("Upgrade", Role::Admin),
    ("Rollback", Role::Admin),
    ("Bootstrap", Role::Admin),
    // A cluster-admin credential.
    ("Kubeconfig", Role::Admin),
    ("EtcdLeave", Role::Admin),
    // The database holds the cluster's secrets.
    ("EtcdSnapshot", Role::Admin),
    // Runs code on the node.
    ("RunContainer", Role::Admin),
    // Changes what the node's pods run.
    ("ImageImport", Role::Admin),
    ("ImageRemove", Role::Admin),
];

/// The least role that may call the method at `path` (`/basalt.machine.v1.Machine/Version`).
pub fn required_role(path: &str) -> Role {
    path.strip_prefix(SERVICE)
        .and_then(|m| METHODS.iter().find(|(name, _)| *name == m))
        .map_or(Role::Admin, |(_, r)| *r)
}

/// The method name of a path, for messages.
pub fn method_name(path: &str) -> &str {
    path.strip_prefix(SERVICE).unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_covers_every_rpc_of_the_proto() {
        let proto = include_str!("../proto/basalt/machine/v1/machine.proto");
        let rpcs: Vec<&str> = proto
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .map(|l| l.split('(').next().unwrap_or_default().trim())
            .collect();
        assert!(rpcs.len() >= 20, "{rpcs:?}");
        for rpc in &rpcs {
            assert!(
                METHODS.iter().any(|(m, _)| m == rpc),
                "{rpc} has no role in METHODS"
            );
        }
        for (m, _) in METHODS {
            assert!(rpcs.contains(m), "METHODS names {m}, which the proto lacks");
        }
    }

    #[test]
    fn roles_come_from_organizations_and_are_ordered() {
        assert_eq!(
            Role::from_organizations(["basalt", "os:reader", "os:operator"]),
            Some(Role::Operator)
        );
        assert_eq!(Role::from_organizations([IMPERSONATOR]), None);
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Reader);
        assert_eq!(
            required_role("/basalt.machine.v1.Machine/Version"),
            Role::Reader
        );
        assert_eq!(
            required_role("/basalt.machine.v1.Machine/Reboot"),
            Role::Operator
        );
        assert_eq!(
            required_role("/basalt.machine.v1.Machine/Reset"),
            Role::Admin
        );
        assert_eq!(required_role("/other.Service/Version"), Role::Admin);
    }
}
