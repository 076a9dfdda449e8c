//! Names and files: the hostname (`sethostname`), `resolv.conf`, `hosts` and `hostname` (written
//! atomically into a directory the root filesystem links `/etc/resolv.conf` and `/etc/hosts`
//! to, since the root is read-only), and the time servers handed on as `TimeServerStatus`.

use std::fmt::Write as _;
use std::path::PathBuf;

use basalt_resources::Kind;
use basalt_resources::controller::{Context, Controller, Output, ReconcileError};
use futures::future::BoxFuture;

use crate::spec::*;

/// Where and whether the files controller writes.
#[derive(Debug, Clone, Default)]
pub struct FilesOptions {
    /// The directory for `resolv.conf`, `hosts` and `hostname`; `None` writes no files.
    pub etc_dir: Option<PathBuf>,
    /// Call `sethostname` (off in tests that share the host's UTS namespace).
    pub set_hostname: bool,
}

#[derive(Debug)]
pub struct FilesController {
    opts: FilesOptions,
}

impl FilesController {
    pub fn new(opts: FilesOptions) -> Self {
        FilesController { opts }
    }
}

/// The name a node takes when no layer gives one: stable, from the first hardware link's MAC.
pub fn auto_hostname(links: &[LinkStatus]) -> Option<String> {
    links
        .iter()
        .filter(|l| l.kind.is_empty() && l.hardware_addr != "00:00:00:00:00:00")
        .min_by_key(|l| l.index)
        .map(|l| {
            let hex: String = l.hardware_addr.split(':').skip(3).collect();
            format!("basalt-{hex}")
        })
}

/// The node's hostname: the merged spec's (the highest layer that gives one), else — unless
/// `HostnameConfig.auto` is off — the stable one from the first hardware link's MAC, else none
/// (the kernel's stays).
pub fn choose_hostname(
    spec: Option<HostnameSpec>,
    auto: bool,
    links: &[LinkStatus],
) -> Option<HostnameStatus> {
    match spec {
        Some(h) => Some(HostnameStatus {
            hostname: h.hostname,
            domain: h.domain,
        }),
        None if auto => auto_hostname(links).map(|hostname| HostnameStatus {
            hostname,
            domain: None,
        }),
        None => None,
    }
}

pub fn resolv_conf(r: &ResolverSpec) -> String {
    let mut s = String::from("# written by Basalt networkd from ResolverSpec; edits are lost\n");
    for n in &r.nameservers {
        let _ = writeln!(s, "nameserver {n}");
    }
    if !r.search_domains.is_empty() {
        let _ = writeln!(s, "search {}", r.search_domains.join(" "));
    }
    s
}

pub fn hosts(h: Option<&HostnameStatus>, address: Option<std::net::IpAddr>) -> String {
    let mut s = String::from(
        "# written by Basalt networkd; edits are lost\n127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
    );
    if let (Some(h), Some(a)) = (h, address) {
        match &h.domain {
            Some(d) => {
                let _ = writeln!(s, "{a} {}.{d} {}", h.hostname, h.hostname);
            }
            None => {
                let _ = writeln!(s, "{a} {}", h.hostname);
            }
        }
    }
    s
}

impl Controller for FilesController {
    fn name(&self) -> &str {
        "network.Files"
    }
    fn inputs(&self) -> Vec<Kind> {
        vec![
            Kind::of::<HostnameSpec>(),
            Kind::of::<HostnameAutoSpec>(),
            Kind::of::<ResolverSpec>(),
            Kind::of::<TimeServerSpec>(),
            Kind::of::<AddressSpec>(),
            Kind::of::<LinkStatus>(),
        ]
    }
    fn outputs(&self) -> Vec<Output> {
        vec![
            Output::exclusive::<HostnameStatus>(),
            Output::exclusive::<ResolverStatus>(),
            Output::exclusive::<TimeServerStatus>(),
        ]
    }
    fn reconcile<'a>(
        &'a mut self,
        cx: &'a mut Context,
    ) -> BoxFuture<'a, Result<(), ReconcileError>> {
        Box::pin(async move {
            let host = choose_hostname(
                cx.get::<HostnameSpec>("hostname").map(|(_, h)| h),
                cx.get::<HostnameAutoSpec>("hostname-auto")
                    .is_none_or(|(_, a)| a.enabled),
                &cx.list::<LinkStatus>()
                    .into_iter()
                    .map(|(_, l)| l)
                    .collect::<Vec<_>>(),
            );
            if let Some(h) = &host {
                if self.opts.set_hostname {
                    let current = nix::unistd::gethostname()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    if current != h.hostname {
                        nix::unistd::sethostname(&h.hostname).map_err(|e| {
                            format!("cannot set the hostname to {:?}: {e}", h.hostname)
                        })?;
                    }
                }
                cx.apply("hostname", h.clone())?;
            } else {
                cx.sync::<HostnameStatus>(Default::default())?;
            }
            let resolvers = cx.get::<ResolverSpec>("resolvers").map(|(_, r)| r);
            let first_address = cx
                .list::<AddressSpec>()
                .into_iter()
                .map(|(_, a)| a)
                .find(|a| a.link != "lo")
                .map(|a| a.address.addr());
            if let Some(dir) = &self.opts.etc_dir {
                let r = resolvers.clone().unwrap_or(ResolverSpec {
                    nameservers: Vec::new(),
                    search_domains: Vec::new(),
                });
                write(dir, "resolv.conf", &resolv_conf(&r))?;
                write(dir, "hosts", &hosts(host.as_ref(), first_address))?;
                if let Some(h) = &host {
                    let name = match &h.domain {
                        Some(d) => format!("{}.{d}\n", h.hostname),
                        None => format!("{}\n", h.hostname),
                    };
                    write(dir, "hostname", &name)?;
                }
            }
            match resolvers {
                Some(r) => cx.apply(
                    "resolvers",
                    ResolverStatus {
                        nameservers: r.nameservers,
                        search_domains: r.search_domains,
                    },
                )?,
                None => cx.sync::<ResolverStatus>(Default::default())?,
            }
            match cx.get::<TimeServerSpec>("timeservers") {
                Some((_, t)) => cx.apply("timeservers", TimeServerStatus { servers: t.servers })?,
                None => cx.sync::<TimeServerStatus>(Default::default())?,
            }
            Ok(())
        })
    }
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> Result<(), ReconcileError> {
    let path = dir.join(name);
    if std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    basalt_sys::fs::atomic_write(&path, text.as_bytes(), 0o644)
        .map_err(|e| format!("cannot write {}: {e}", path.display()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, kind: &str, mac: &str) -> LinkStatus {
        LinkStatus {
            index,
            kind: kind.into(),
            hardware_addr: mac.into(),
            mtu: 1500,
            up: true,
            oper_state: "up".into(),
            master_index: None,
            driver: None,
        }
    }

    #[test]
    fn the_hostname_is_the_specs_else_the_macs_unless_auto_is_off() {
        let links = [
            link(1, "", "00:00:00:00:00:00"),
            link(3, "", "52:54:00:b5:00:01"),
            link(2, "veth", "aa:aa:aa:aa:aa:aa"),
            link(4, "", "52:54:00:b5:00:02"),
        ];
        let given = HostnameSpec {
            hostname: "n1".into(),
            domain: Some("lan".into()),
        };
        for auto in [true, false] {
            assert_eq!(
                choose_hostname(Some(given.clone()), auto, &links),
                Some(HostnameStatus {
                    hostname: "n1".into(),
                    domain: Some("lan".into())
                })
            );
        }
        assert_eq!(
            choose_hostname(None, true, &links).map(|h| h.hostname),
            Some("basalt-b50001".into()),
            "the first hardware link's MAC (not loopback's, not a veth's)"
        );
        assert_eq!(choose_hostname(None, false, &links), None);
    }
}
