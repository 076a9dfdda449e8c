//! The node's own `Node` object, kept as the config says while the node runs: its labels
//! (`MachineConfig.nodeLabels`) and, on a control plane, its `NoSchedule` taint
//! (`ClusterConfig.allowSchedulingOnControlPlanes`).
//!
//! The kubelet applies `--node-labels` and `--register-with-taints` only when it registers the
//! node, so a later config change would say "applied" and change nothing. This reconciler
//! patches the object itself instead, on every config change and once at start. It removes
//! only labels it set: the keys it owns are kept in an annotation on the node.
//!
//! It also ends a cordon an earlier boot made for its reboot ([`crate::drain`]: an upgrade, a
//! graceful reset) once the node is Ready again; until then a pass is not done, and retried.

use std::collections::{BTreeMap, BTreeSet};

use basalt_config::Config;
use basalt_config::v1alpha1::MachineType;
use serde_json::{Value, json};

use crate::https::{Access, HttpsError};

/// The annotation listing the label keys Basalt set (comma-separated).
pub const OWNED_LABELS: &str = "node.basalt.dev/owned-labels";
/// The taint a control plane carries unless workloads may run there, and its role label.
pub const CONTROL_PLANE_TAINT: &str = "node-role.kubernetes.io/control-plane";

/// Whether the config's node is a control plane that carries the `NoSchedule` taint: it runs
/// no pods but those that tolerate it (none of the cluster's add-ons do).
pub fn tainted(c: &Config) -> bool {
    c.machine().machine_type == MachineType::ControlPlane
        && !c.cluster().allow_scheduling_on_control_planes
}

/// What the config asks of the Node object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub labels: BTreeMap<String, String>,
    /// `Some(true)`: the control-plane taint must be there; `Some(false)`: it must not;
    /// `None`: not this reconciler's business (a worker).
    pub taint: Option<bool>,
}

impl Wanted {
    pub fn from_config(c: &Config) -> Wanted {
        let control_plane = c.machine().machine_type == MachineType::ControlPlane;
        let mut labels = c.machine().node_labels.clone();
        if control_plane {
            // The role label kubectl shows (a kubelet may not set it on itself: the control
            // plane's reconciler runs as admin).
            labels.insert(CONTROL_PLANE_TAINT.to_string(), String::new());
        }
        Wanted {
            labels,
            taint: control_plane.then_some(!c.cluster().allow_scheduling_on_control_planes),
        }
    }
}

/// The merge patch that brings `node` (a `Node` object) to `want`, or `None` when it is
/// already there. Labels Basalt set earlier and no longer wants are removed; labels set by
/// anyone else are left alone.
pub fn patch(node: &Value, want: &Wanted) -> Option<Value> {
    let meta = &node["metadata"];
    let have: BTreeMap<String, String> = meta["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let owned: BTreeSet<String> = meta["annotations"][OWNED_LABELS]
        .as_str()
        .unwrap_or_default()
        .split(',')
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect();
    let mut labels = serde_json::Map::new();
    for (k, v) in &want.labels {
        if have.get(k) != Some(v) {
            labels.insert(k.clone(), json!(v));
        }
    }
    for k in owned.iter().filter(|k| !want.labels.contains_key(*k)) {
        if have.contains_key(k) {
            labels.insert(k.clone(), Value::Null);
        }
    }
    let now_owned: Vec<&str> = want.labels.keys().map(String::as_str).collect();
    let now_owned = now_owned.join(",");
    let mut metadata = serde_json::Map::new();
    if !labels.is_empty() {
        metadata.insert("labels".into(), Value::Object(labels));
    }
    if meta["annotations"][OWNED_LABELS]
        .as_str()
        .unwrap_or_default()
        != now_owned
    {
        metadata.insert("annotations".into(), json!({ OWNED_LABELS: now_owned }));
    }
    let mut out = serde_json::Map::new();
    if !metadata.is_empty() {
        out.insert("metadata".into(), Value::Object(metadata));
    }
    if let Some(tainted) = want.taint {
        let taints: Vec<Value> = node["spec"]["taints"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let is = |t: &Value| {
            t["key"].as_str() == Some(CONTROL_PLANE_TAINT)
                && t["effect"].as_str() == Some("NoSchedule")
        };
        let has = taints.iter().any(is);
        if has != tainted {
            // A merge patch replaces the whole list: the others are kept as they are.
            let mut list: Vec<Value> = taints.into_iter().filter(|t| !is(t)).collect();
            if tainted {
                list.push(json!({"key": CONTROL_PLANE_TAINT, "effect": "NoSchedule"}));
            }
            out.insert("spec".into(), json!({ "taints": list }));
        }
    }
    (!out.is_empty()).then_some(Value::Object(out))
}

/// Why a pass is not done yet.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Api(#[from] HttpsError),
    #[error(
        "the node is cordoned for the reboot of an earlier boot: it is uncordoned once Ready (not Ready yet)"
    )]
    CordonedUntilReady,
}

/// What to do about Basalt's cordon on `node`, seen by the boot `boot`: `None` nothing (no
/// such cordon, or this boot's own: its drain is under way); `Some(true)` undo it now (an
/// earlier boot's, and the node is Ready); `Some(false)` undo it once Ready.
pub fn uncordon(node: &Value, boot: &str) -> Option<bool> {
    let by = crate::drain::cordoned_by(node)?;
    (by != boot).then(|| crate::drain::ready(node))
}

/// One pass: reads the node, patches it if it differs.
pub async fn reconcile(access: &Access, name: &str, want: &Wanted) -> Result<bool, NodeError> {
    let api = access.client()?;
    let path = format!("/api/v1/nodes/{name}");
    let node = api.get(&path).await?.json()?;
    let undo = uncordon(&node, &crate::drain::BOOT);
    let mut p = patch(&node, want);
    if undo == Some(true) {
        let mut merged = p.take().unwrap_or_else(|| json!({}));
        merge(&mut merged, &crate::drain::uncordon_patch());
        p = Some(merged);
    }
    if let Some(p) = &p {
        let body = serde_json::to_vec(p).map_err(HttpsError::Json)?;
        api.request(
            http::Method::PATCH,
            &path,
            Some(("application/merge-patch+json", body)),
        )
        .await?
        .json()?;
        if undo == Some(true) {
            tracing::info!(node = %name, "node Ready again: uncordoned");
        }
    }
    if undo == Some(false) {
        return Err(NodeError::CordonedUntilReady);
    }
    Ok(p.is_some())
}

/// Merges the objects of `add` into `into` (both JSON objects; `add`'s leaves win).
fn merge(into: &mut Value, add: &Value) {
    match (into, add) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

/// One pass for `cfg`: labels and taint as it says (the `NodeObject` controller of
/// [`crate::controllers`] runs it for every config).
pub async fn apply(access: &Access, name: &str, cfg: &Config) -> Result<(), NodeError> {
    let want = Wanted::from_config(cfg);
    if reconcile(access, name, &want).await? {
        tracing::info!(
            node = name,
            labels = ?want.labels,
            taint = match want.taint {
                Some(true) => "control-plane taint on",
                Some(false) => "control-plane taint off",
                None => "",
            },
            "node object updated"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(labels: &[(&str, &str)], taint: Option<bool>) -> Wanted {
        Wanted {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            taint,
        }
    }

    #[test]
    fn new_labels_are_set_and_owned() {
        let node = json!({"metadata": {"labels": {"kubernetes.io/hostname": "w1"}}});
        let p = patch(&node, &want(&[("zone", "a")], None)).unwrap();
        assert_eq!(
            p,
            json!({"metadata": {"labels": {"zone": "a"}, "annotations": {OWNED_LABELS: "zone"}}})
        );
    }

    #[test]
    fn only_owned_labels_are_removed() {
        let node = json!({"metadata": {
            "labels": {"zone": "a", "team": "x", "kubernetes.io/hostname": "w1"},
            "annotations": {OWNED_LABELS: "zone"},
        }});
        // `team` was set by someone else: it stays; `zone` was ours: it goes.
        let p = patch(&node, &want(&[], None)).unwrap();
        assert_eq!(
            p,
            json!({"metadata": {"labels": {"zone": null}, "annotations": {OWNED_LABELS: ""}}})
        );
    }

    #[test]
    fn a_node_as_wanted_needs_no_patch() {
        let node = json!({
            "metadata": {"labels": {"zone": "a"}, "annotations": {OWNED_LABELS: "zone"}},
            "spec": {"taints": [{"key": CONTROL_PLANE_TAINT, "effect": "NoSchedule"}]},
        });
        assert_eq!(patch(&node, &want(&[("zone", "a")], Some(true))), None);
        assert_eq!(patch(&node, &want(&[("zone", "a")], None)), None);
    }

    #[test]
    fn only_an_earlier_boots_cordon_is_undone_and_only_when_ready() {
        let node = |by: Option<&str>, unschedulable: bool, ready: &str| {
            let mut n = json!({
                "metadata": {"annotations": {}},
                "spec": {"unschedulable": unschedulable},
                "status": {"conditions": [{"type": "Ready", "status": ready}]},
            });
            if let Some(b) = by {
                n["metadata"]["annotations"][crate::drain::CORDONED] = json!(b);
            }
            n
        };
        assert_eq!(
            uncordon(&node(Some("old"), true, "True"), "now"),
            Some(true)
        );
        assert_eq!(
            uncordon(&node(Some("old"), true, "False"), "now"),
            Some(false)
        );
        // This boot's own cordon: its drain is under way.
        assert_eq!(uncordon(&node(Some("now"), true, "True"), "now"), None);
        // Cordoned by hand (no mark), or uncordoned by hand since.
        assert_eq!(uncordon(&node(None, true, "True"), "now"), None);
        assert_eq!(uncordon(&node(Some("old"), false, "True"), "now"), None);
    }

    #[test]
    fn merging_keeps_both_patches() {
        let mut a = json!({"metadata": {"labels": {"zone": "a"}}});
        merge(&mut a, &crate::drain::uncordon_patch());
        assert_eq!(
            a,
            json!({
                "metadata": {"labels": {"zone": "a"}, "annotations": {crate::drain::CORDONED: null}},
                "spec": {"unschedulable": null},
            })
        );
    }

    #[test]
    fn the_control_plane_taint_follows_the_config_and_others_stay() {
        let other = json!({"key": "dedicated", "value": "db", "effect": "NoExecute"});
        let node = json!({
            "metadata": {},
            "spec": {"taints": [other.clone(), {"key": CONTROL_PLANE_TAINT, "effect": "NoSchedule"}]},
        });
        let p = patch(&node, &want(&[], Some(false))).unwrap();
        assert_eq!(p["spec"]["taints"], json!([other.clone()]));
        let node = json!({"metadata": {}, "spec": {"taints": [other.clone()]}});
        let p = patch(&node, &want(&[], Some(true))).unwrap();
        assert_eq!(
            p["spec"]["taints"],
            json!([other, {"key": CONTROL_PLANE_TAINT, "effect": "NoSchedule"}])
        );
    }
}
