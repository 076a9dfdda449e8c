//! The merge: of every id, the highest layer's spec wins. One more rule keeps layers from
//! mixing on a link: the addresses and routes of a link come only from the layer that won the
//! link itself (and from DHCP, which runs because some layer asked for it). So a machine
//! config that configures `eth0` replaces what `ip=` said about `eth0` instead of adding to it.
//! The platform's addresses (a container runtime's) are kept the same way as a lease's.

use std::collections::BTreeMap;

use basalt_resources::Kind;
use basalt_resources::controller::{Context, Controller, Output, ReconcileError};
use futures::future::BoxFuture;

use crate::sources::layered_kinds;
use crate::spec::*;

/// Of each id, the spec of the highest layer (the first in id order among equals).
pub fn merge<T: NetSpec>(
    layered: impl IntoIterator<Item = Layered<T>>,
) -> BTreeMap<String, (Layer, T)> {
    let mut out: BTreeMap<String, (Layer, T)> = BTreeMap::new();
    for l in layered {
        let id = l.spec.id();
        match out.get(&id) {
            Some((have, _)) if *have >= l.layer => {}
            _ => {
                out.insert(id, (l.layer, l.spec));
            }
        }
    }
    out
}

/// Drops addresses and routes from layers below the one that won their link.
pub fn on_winning_layer<T: NetSpec>(
    merged: BTreeMap<String, (Layer, T)>,
    links: &BTreeMap<String, (Layer, LinkSpec)>,
    link_of: impl Fn(&T) -> &str,
) -> BTreeMap<String, T> {
    merged
        .into_iter()
        .filter(|(_, (layer, spec))| match links.get(link_of(spec)) {
            Some((won, _)) => matches!(layer, Layer::Dhcp | Layer::Platform) || layer >= won,
            None => true,
        })
        .map(|(id, (_, spec))| (id, spec))
        .collect()
}

/// The links, addresses and routes the plan is made from, merged from layered specs.
pub fn desired(
    links: Vec<Layered<LinkSpec>>,
    addresses: Vec<Layered<AddressSpec>>,
    routes: Vec<Layered<RouteSpec>>,
    rules: Vec<Layered<RuleSpec>>,
) -> crate::plan::Desired {
    let links = merge(links);
    let addresses = on_winning_layer(merge(addresses), &links, |a| a.link.as_str());
    let routes = on_winning_layer(merge(routes), &links, |r| r.link.as_str());
    crate::plan::Desired {
        links: links.into_iter().map(|(id, (_, s))| (id, s)).collect(),
        addresses: addresses.into_values().collect(),
        routes: routes.into_values().collect(),
        rules: merge(rules).into_values().map(|(_, r)| r).collect(),
    }
}

/// What the plan would be if `owner`'s layer said `specs` instead: the dry run of a config.
pub fn desired_if(
    store: &basalt_resources::Store,
    owner: &str,
    layer: Layer,
    specs: &crate::LayerSpecs,
) -> crate::plan::Desired {
    fn others<T: NetSpec>(store: &basalt_resources::Store, owner: &str) -> Vec<Layered<T>> {
        store
            .list::<Layered<T>>()
            .into_iter()
            .filter(|(m, _)| m.owner != owner)
            .map(|(_, s)| s)
            .collect()
    }
    fn with<T: NetSpec>(mut v: Vec<Layered<T>>, layer: Layer, new: &[T]) -> Vec<Layered<T>> {
        v.extend(new.iter().cloned().map(|spec| Layered { layer, spec }));
        v
    }
    desired(
        with(others(store, owner), layer, &specs.links),
        with(others(store, owner), layer, &specs.addresses),
        with(others(store, owner), layer, &specs.routes),
        with(others(store, owner), layer, &specs.rules),
    )
}

fn layered<T: NetSpec>(cx: &Context) -> Vec<Layered<T>> {
    // List order is id order, so equal layers resolve the same way every pass.
    cx.list::<Layered<T>>()
        .into_iter()
        .map(|(_, s)| s)
        .collect()
}

fn plain<T: NetSpec>(cx: &Context) -> Result<(), ReconcileError> {
    let merged = merge(layered::<T>(cx));
    cx.sync(merged.into_iter().map(|(id, (_, s))| (id, s)).collect())?;
    Ok(())
}

/// Writes the merged specs (namespace `network`) from the layered ones.
#[derive(Debug, Default)]
pub struct MergeController;

impl Controller for MergeController {
    fn name(&self) -> &str {
        "network.Merge"
    }
    fn inputs(&self) -> Vec<Kind> {
        layered_kinds()
    }
    fn outputs(&self) -> Vec<Output> {
        vec![
            Output::exclusive::<LinkSpec>(),
            Output::exclusive::<AddressSpec>(),
            Output::exclusive::<RouteSpec>(),
            Output::exclusive::<RuleSpec>(),
            Output::exclusive::<DhcpSpec>(),
            Output::exclusive::<HostnameSpec>(),
            Output::exclusive::<HostnameAutoSpec>(),
            Output::exclusive::<ResolverSpec>(),
            Output::exclusive::<TimeServerSpec>(),
        ]
    }
    fn reconcile<'a>(
        &'a mut self,
        cx: &'a mut Context,
    ) -> BoxFuture<'a, Result<(), ReconcileError>> {
        Box::pin(async move {
            let links = merge(layered::<LinkSpec>(cx));
            let addresses = on_winning_layer(merge(layered::<AddressSpec>(cx)), &links, |a| {
                a.link.as_str()
            });
            let routes =
                on_winning_layer(merge(layered::<RouteSpec>(cx)), &links, |r| r.link.as_str());
            let dhcp =
                on_winning_layer(merge(layered::<DhcpSpec>(cx)), &links, |d| d.link.as_str());
            cx.sync(links.into_iter().map(|(id, (_, s))| (id, s)).collect())?;
            cx.sync(addresses)?;
            cx.sync(routes)?;
            cx.sync(dhcp)?;
            plain::<RuleSpec>(cx)?;
            plain::<HostnameSpec>(cx)?;
            plain::<HostnameAutoSpec>(cx)?;
            plain::<ResolverSpec>(cx)?;
            plain::<TimeServerSpec>(cx)?;
            Ok(())
        })
    }
}
