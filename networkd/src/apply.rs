//! The apply controller (merged specs → kernel, through a plan) and the status task (kernel →
//! `LinkStatus`, `AddressStatus`, `RouteStatus`). The apply controller reads the statuses as
//! inputs, so any change the kernel reports — an address deleted from outside — starts a pass
//! that puts it back.

use std::collections::BTreeMap;
use std::time::Duration;

use basalt_resources::controller::{Context, Controller, Output, ReconcileError};
use basalt_resources::{Kind, Store};
use futures::StreamExt as _;
use futures::future::BoxFuture;
use rtnetlink::Handle;
use tracing::{debug, info};

use crate::netlink::{self, Executor, NetlinkError};
use crate::plan::{Desired, Plan, plan};
use crate::spec::*;

/// The merged specs as the planner takes them.
pub fn desired(store: &Store) -> Desired {
    Desired {
        links: store
            .list::<LinkSpec>()
            .into_iter()
            .map(|(_, s)| (s.name.clone(), s))
            .collect(),
        addresses: store
            .list::<AddressSpec>()
            .into_iter()
            .map(|(_, s)| s)
            .collect(),
        routes: store
            .list::<RouteSpec>()
            .into_iter()
            .map(|(_, s)| s)
            .collect(),
        rules: store
            .list::<RuleSpec>()
            .into_iter()
            .map(|(_, s)| s)
            .collect(),
    }
}

/// The plan for `desired` against the kernel of the calling thread's namespace.
pub async fn plan_now(desired: &Desired) -> Result<Plan, ApplyError> {
    let h = netlink::connect()?;
    let obs = netlink::observe(&h).await?;
    plan(desired, &obs).map_err(ApplyError::Plan)
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    #[error("{} of {total} operations failed: {}", .failed.len(), .failed.join("; "))]
    Ops { total: usize, failed: Vec<String> },
}

/// Applies a plan; every operation is tried, and the failures are reported together.
pub async fn execute(h: &Handle, obs: &crate::plan::Observed, p: &Plan) -> Result<(), ApplyError> {
    let mut ex = Executor::new(h.clone(), obs);
    let mut failed = Vec::new();
    for op in &p.ops {
        match ex.run(op).await {
            Ok(()) => info!(op = %op, "applied"),
            Err(e) => failed.push(basalt_resources::error_chain(&e)),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(ApplyError::Ops {
            total: p.ops.len(),
            failed,
        })
    }
}

/// Makes the kernel match the merged link, address and route specs.
#[derive(Debug, Default)]
pub struct ApplyController {
    handle: Option<Handle>,
    waiting: Vec<String>,
}

impl Controller for ApplyController {
    fn name(&self) -> &str {
        "network.Apply"
    }
    fn inputs(&self) -> Vec<Kind> {
        vec![
            Kind::of::<LinkSpec>(),
            Kind::of::<AddressSpec>(),
            Kind::of::<RouteSpec>(),
            Kind::of::<LinkStatus>(),
            Kind::of::<AddressStatus>(),
            Kind::of::<RouteStatus>(),
            Kind::of::<RuleSpec>(),
            Kind::of::<RuleStatus>(),
        ]
    }
    fn outputs(&self) -> Vec<Output> {
        Vec::new()
    }
    fn reconcile<'a>(
        &'a mut self,
        cx: &'a mut Context,
    ) -> BoxFuture<'a, Result<(), ReconcileError>> {
        Box::pin(async move {
            let h = match &self.handle {
                Some(h) => h.clone(),
                None => {
                    let h = netlink::connect()?;
                    self.handle = Some(h.clone());
                    h
                }
            };
            let d = desired(cx.store());
            let obs = netlink::observe(&h).await?;
            let p = plan(&d, &obs).map_err(ApplyError::Plan)?;
            if p.waiting != self.waiting {
                for w in &p.waiting {
                    info!(waiting = %w, "not applied yet");
                }
                self.waiting = p.waiting.clone();
            }
            if p.ops.is_empty() {
                debug!("in sync");
                return Ok(());
            }
            execute(&h, &obs, &p).await?;
            Ok(())
        })
    }
}

/// Owner of the status resources.
pub const STATUS_OWNER: &str = "network.Status";

fn sync_kind<T: basalt_resources::Spec>(store: &Store, desired: BTreeMap<String, T>) {
    if let Err(e) = store.sync_owned(STATUS_OWNER, &desired) {
        debug!(error = %e, "status not written");
    }
}

/// Lists links, addresses and routes and makes the status resources match.
pub async fn refresh_status(h: &Handle, store: &Store) -> Result<(), NetlinkError> {
    use futures::TryStreamExt as _;
    let links: Vec<_> = h
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|source| NetlinkError::List {
            what: "links",
            source,
        })?;
    let mut names = BTreeMap::new();
    let mut ls = BTreeMap::new();
    for m in &links {
        if let Some((name, s)) = netlink::link_status(m) {
            names.insert(s.index, name.clone());
            ls.insert(name, s);
        }
    }
    let addrs: Vec<_> = h
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|source| NetlinkError::List {
            what: "addresses",
            source,
        })?;
    let mut as_ = BTreeMap::new();
    for m in &addrs {
        if let Some(a) = netlink::address(m) {
            let link = names.get(&a.index).cloned().unwrap_or_default();
            as_.insert(
                format!("{link}/{}", a.address),
                AddressStatus {
                    link,
                    index: a.index,
                    address: a.address,
                    scope: netlink::scope_name(m),
                    permanent: a.permanent,
                },
            );
        }
    }
    let obs = netlink::observe_routes(h).await?;
    let mut rs = BTreeMap::new();
    for r in obs {
        let link = r
            .index
            .and_then(|i| names.get(&i).cloned())
            .unwrap_or_default();
        let gw = r.gateway.map(|g| g.to_string()).unwrap_or_default();
        let table = if r.table == MAIN_TABLE {
            String::new()
        } else {
            format!("table{}/", r.table)
        };
        rs.insert(
            format!("{table}{link}/{}/{gw}/{}", r.destination, r.metric),
            RouteStatus {
                link,
                destination: r.destination,
                gateway: r.gateway,
                source: r.source,
                metric: r.metric,
                table: r.table,
                protocol: netlink::protocol_name(r.protocol),
            },
        );
    }
    let rules: BTreeMap<String, RuleStatus> = netlink::observe_rules(h)
        .await?
        .into_iter()
        .map(|r| {
            (
                format!(
                    "{}/{}",
                    if r.rule.ipv6 { "inet6" } else { "inet" },
                    r.rule.priority
                ),
                RuleStatus {
                    rule: r.rule,
                    protocol: netlink::protocol_name(r.protocol),
                },
            )
        })
        .collect();
    sync_kind(store, ls);
    sync_kind(store, as_);
    sync_kind(store, rs);
    sync_kind(store, rules);
    Ok(())
}

/// Keeps the status resources current from netlink's multicast groups until the socket
/// fails. A burst of events is one listing (20 ms to settle).
pub async fn run_status(store: Store) -> Result<(), NetlinkError> {
    use rtnetlink::MulticastGroup as G;
    let (conn, handle, mut events) = rtnetlink::new_multicast_connection(&[
        G::Link,
        G::Ipv4Ifaddr,
        G::Ipv6Ifaddr,
        G::Ipv4Route,
        G::Ipv6Route,
        G::Ipv4Rule,
        G::Ipv6Rule,
    ])
    .map_err(NetlinkError::Socket)?;
    tokio::spawn(conn);
    refresh_status(&handle, &store).await?;
    while events.next().await.is_some() {
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(20), events.next()).await
        {
        }
        refresh_status(&handle, &store).await?;
    }
    Err(NetlinkError::Socket(std::io::Error::other(
        "the netlink event stream ended",
    )))
}
