//! `LinkStatus` resources (namespace `network`, id = the link's name): what the kernel says of
//! every network link, kept current from netlink's link multicast group. The first of
//! networkd's status controllers; the spec side (links, addresses, routes from the config)
//! comes with networkd.

use basalt_resources::{Kind, Spec, Store};
use futures::StreamExt as _;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage, State};
use serde::Serialize;

/// Owner of the `LinkStatus` resources.
pub const OWNER: &str = "network.LinkStatus";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkStatus {
    pub index: u32,
    /// The driver kind for virtual links (`bridge`, `veth`, `wireguard`, ...); empty for
    /// physical ones.
    pub kind: String,
    pub hardware_addr: String,
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// The kernel's operational state: `up`, `down`, `lowerlayerdown`, `unknown`, ...
    pub oper_state: String,
    /// The master link's index (a bond or bridge member), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_index: Option<u32>,
}

impl Spec for LinkStatus {
    const TYPE: &'static str = "LinkStatus";
    const NAMESPACE: &'static str = "network";
}

/// A link message as (name, status).
pub fn status(m: &LinkMessage) -> Option<(String, LinkStatus)> {
    let mut name = None;
    let mut s = LinkStatus {
        index: m.header.index,
        kind: String::new(),
        hardware_addr: String::new(),
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        oper_state: String::new(),
        master_index: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(mac) => {
                s.hardware_addr = mac
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
            }
            LinkAttribute::Mtu(mtu) => s.mtu = *mtu,
            LinkAttribute::OperState(st) => {
                s.oper_state = match st {
                    State::Up => "up".into(),
                    State::Down => "down".into(),
                    State::Unknown => "unknown".into(),
                    State::LowerLayerDown => "lowerlayerdown".into(),
                    State::Dormant => "dormant".into(),
                    State::NotPresent => "notpresent".into(),
                    State::Testing => "testing".into(),
                    other => format!("{other:?}").to_ascii_lowercase(),
                };
            }
            LinkAttribute::Controller(i) => s.master_index = Some(*i),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        s.kind = k.to_string();
                    }
                }
            }
            _ => {}
        }
    }
    Some((name?, s))
}

/// Lists every link and makes the `LinkStatus` resources match, removing the ones whose link
/// is gone.
async fn sync(handle: &rtnetlink::Handle, store: &Store) -> Result<usize, rtnetlink::Error> {
    let mut links = handle.link().get().execute();
    let mut seen = Vec::new();
    while let Some(m) = links.next().await {
        if let Some((name, s)) = status(&m?) {
            if let Err(e) = store.apply(OWNER, &name, s) {
                crate::log::line(&format!("LinkStatus {name}: {e}"));
            }
            seen.push(name);
        }
    }
    let kind = Kind::of::<LinkStatus>();
    for r in store.list_dyn(&kind) {
        if !seen.contains(&r.metadata.id) {
            let _ = store.destroy(&kind, &r.metadata.id, OWNER);
        }
    }
    Ok(seen.len())
}

/// Keeps the `LinkStatus` resources current until the netlink socket fails.
pub async fn run(store: Store) -> Result<(), String> {
    let (conn, handle, mut events) =
        rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Link])
            .map_err(|e| format!("netlink: {e}"))?;
    tokio::spawn(conn);
    sync(&handle, &store)
        .await
        .map_err(|e| format!("listing links: {e}"))?;
    // Level-triggered: any link event means "list again"; a burst of events is one listing.
    while events.next().await.is_some() {
        while let Ok(Some(_)) =
            tokio::time::timeout(std::time::Duration::from_millis(20), events.next()).await
        {
        }
        sync(&handle, &store)
            .await
            .map_err(|e| format!("listing links: {e}"))?;
    }
    Err("the netlink event stream ended".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a network namespace of its own when run as root (privileged tier): a veth link
    /// appears, goes up, changes MTU and disappears, and the resources follow. (veth, not
    /// dummy: this host's kernel has no dummy module.)
    #[tokio::test(flavor = "current_thread")]
    async fn link_status_follows_the_kernel() {
        if !basalt_testkit::tier(
            basalt_testkit::Tier::Privileged,
            "link_status_follows_the_kernel",
        ) {
            return;
        }
        // A thread of its own, moved into a new network namespace, so the host is untouched.
        let result = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let store = Store::default();
                let s = store.clone();
                tokio::spawn(async move { run(s).await });
                let wait = |pred: Box<dyn Fn(Option<LinkStatus>) -> bool>| {
                    let store = store.clone();
                    async move {
                        for _ in 0..200 {
                            if pred(store.get::<LinkStatus>("bench0").map(|(_, s)| s)) {
                                return true;
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        }
                        false
                    }
                };
                let (conn, handle, _) = rtnetlink::new_connection().unwrap();
                tokio::spawn(conn);
                // lo is there from the start.
                for _ in 0..200 {
                    if store.get::<LinkStatus>("lo").is_some() {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                let lo = store.get::<LinkStatus>("lo").expect("lo is listed").1;
                assert_eq!((lo.kind.as_str(), lo.mtu), ("", 65536));
                handle
                    .link()
                    .add(rtnetlink::LinkVeth::new("bench0", "bench1").build())
                    .execute()
                    .await
                    .unwrap();
                assert!(wait(Box::new(|s| s.is_some_and(|s| s.kind == "veth" && !s.up))).await);
                let idx = store.get::<LinkStatus>("bench0").unwrap().1.index;
                handle
                    .link()
                    .set(
                        rtnetlink::LinkUnspec::new_with_index(idx)
                            .up()
                            .mtu(1400)
                            .build(),
                    )
                    .execute()
                    .await
                    .unwrap();
                assert!(wait(Box::new(|s| s.is_some_and(|s| s.up && s.mtu == 1400))).await);
                handle.link().del(idx).execute().await.unwrap();
                assert!(wait(Box::new(|s| s.is_none())).await);
            });
        })
        .join();
        assert!(result.is_ok(), "the namespace test panicked");
    }
}
