//! Cordon and drain: before an upgrade's reboot and a graceful reset the node makes its own
//! `Node` unschedulable and evicts its pods through the Eviction API — which honours
//! PodDisruptionBudgets: an eviction a budget forbids is answered 429 and tried again —, as
//! `kubectl drain` does, from the node itself (a client's connection does not hold it). Pods of
//! DaemonSets and static (mirror) pods stay, as with `kubectl drain --ignore-daemonsets`.
//!
//! The cordon is marked with an annotation naming the boot that made it. A later boot of the
//! node (after the reboot it was made for) uncordons the node once its `Node` is Ready again
//! ([`crate::node`]); a cordon made by someone else (`kubectl cordon`) is never undone, and a
//! drain that fails undoes its own cordon at once.

use std::collections::BTreeSet;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::https::Access;
use crate::https::{Https, HttpsError};

/// The annotation on a `Node` that Basalt cordoned: the value is the cordoning boot's token.
pub const CORDONED: &str = "node.basalt.dev/cordoned-by-boot";

/// This boot's token (init's start time): a cordon made by this boot is not undone by it.
pub static BOOT: LazyLock<String> = LazyLock::new(|| {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:x}-{:x}", t.as_nanos(), std::process::id())
});

/// How often an eviction a budget refused is tried again, and the pods' departure checked.
const RETRY: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("the Kubernetes API")]
    Api(#[from] HttpsError),
    #[error(
        "{} pod(s) still on the node after {} s: {}{}",
        left.len(), waited.as_secs(), left.join(", "),
        if last_refusal.is_empty() { String::new() } else { format!(" (the last eviction refused: {last_refusal})") }
    )]
    Timeout {
        left: Vec<String>,
        waited: Duration,
        last_refusal: String,
    },
}

/// A pod the drain evicts: namespace, name, uid.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl std::fmt::Display for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The pods of a pod list (`GET /api/v1/pods?fieldSelector=spec.nodeName=…`) a drain evicts:
/// all but mirror pods (the kubelet's static pods), DaemonSet pods (their controller would put
/// them back at once) and pods that have already finished.
pub fn evictable(list: &Value) -> Vec<Pod> {
    let mut out: Vec<Pod> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            let meta = &p["metadata"];
            let mirror = meta["annotations"]["kubernetes.io/config.mirror"].is_string();
            let daemon = meta["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|o| o["kind"] == "DaemonSet" && o["controller"] == true);
            let done = matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
            !mirror && !daemon && !done
        })
        .filter_map(|p| {
            let meta = &p["metadata"];
            Some(Pod {
                namespace: meta["namespace"].as_str()?.to_string(),
                name: meta["name"].as_str()?.to_string(),
                uid: meta["uid"].as_str().unwrap_or_default().to_string(),
            })
        })
        .collect();
    out.sort();
    out
}

/// The merge patch that cordons `node` for `boot`, or `None` when it is already unschedulable
/// (cordoned by someone else, or by this boot: left as it is, and not marked as Basalt's).
pub fn cordon_patch(node: &Value, boot: &str) -> Option<Value> {
    if node["spec"]["unschedulable"] == true {
        return None;
    }
    Some(json!({
        "metadata": {"annotations": {CORDONED: boot}},
        "spec": {"unschedulable": true},
    }))
}

/// Whether a `Node`'s Ready condition is True.
pub fn ready(node: &Value) -> bool {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// The boot that cordoned `node`, when Basalt did and the cordon still stands.
pub fn cordoned_by(node: &Value) -> Option<&str> {
    let boot = node["metadata"]["annotations"][CORDONED].as_str()?;
    (node["spec"]["unschedulable"] == true).then_some(boot)
}

/// The merge patch that undoes Basalt's cordon (whoever made it).
pub fn uncordon_patch() -> Value {
    json!({
        "metadata": {"annotations": {CORDONED: null}},
        "spec": {"unschedulable": null},
    })
}

async fn merge_patch(api: &Https, path: &str, patch: &Value) -> Result<Value, HttpsError> {
    let body = serde_json::to_vec(patch).map_err(HttpsError::Json)?;
    api.request(
        http::Method::PATCH,
        path,
        Some(("application/merge-patch+json", body)),
    )
    .await?
    .json()
}

/// Cordons the node `name` and evicts its pods, waiting up to `timeout` for them to be gone.
/// On failure the cordon this made is undone (the node keeps running its pods).
pub async fn cordon_and_drain(
    access: &Access,
    name: &str,
    timeout: Duration,
) -> Result<String, DrainError> {
    let api = access.client()?;
    let path = format!("/api/v1/nodes/{name}");
    let node = api.get(&path).await?.json()?;
    let cordoned = match cordon_patch(&node, &BOOT) {
        Some(p) => {
            merge_patch(&api, &path, &p).await?;
            tracing::info!(node = %name, "drain: node cordoned");
            true
        }
        None => false,
    };
    match evict_all(&api, name, timeout).await {
        Ok(n) => Ok(format!(
            "node {name} {}, {n} pod(s) evicted",
            if cordoned {
                "cordoned"
            } else {
                "was already cordoned"
            }
        )),
        Err(e) => {
            if cordoned && let Err(u) = merge_patch(&api, &path, &uncordon_patch()).await {
                tracing::warn!(
                    node = %name,
                    error = %basalt_sys::error_chain(&u),
                    "drain: cannot undo the cordon"
                );
            }
            Err(e)
        }
    }
}

/// Evicts every evictable pod of node `name` and waits until none is left (a pod replaced by a
/// new one of the same name has another uid and counts as gone).
async fn evict_all(api: &Https, name: &str, timeout: Duration) -> Result<usize, DrainError> {
    let list_path = format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{name}");
    let start = Instant::now();
    let mut evicted = BTreeSet::new();
    let mut last_refusal = String::new();
    loop {
        let pods = evictable(&api.get(&list_path).await?.json()?);
        if pods.is_empty() {
            return Ok(evicted.len());
        }
        if start.elapsed() >= timeout {
            return Err(DrainError::Timeout {
                left: pods.iter().map(Pod::to_string).collect(),
                waited: start.elapsed(),
                last_refusal,
            });
        }
        let asked: Vec<Pod> = pods.into_iter().filter(|p| !evicted.contains(p)).collect();
        for p in &asked {
            let path = format!(
                "/api/v1/namespaces/{}/pods/{}/eviction",
                p.namespace, p.name
            );
            let body = json!({
                "apiVersion": "policy/v1",
                "kind": "Eviction",
                "metadata": {"name": p.name, "namespace": p.namespace},
            });
            let body = serde_json::to_vec(&body).map_err(HttpsError::Json)?;
            let r = api
                .request(http::Method::POST, &path, Some(("application/json", body)))
                .await?;
            match r.status.as_u16() {
                200..=299 | 404 => {
                    tracing::info!(pod = %p, "drain: evicting");
                    evicted.insert(p.clone());
                }
                // A PodDisruptionBudget forbids it now: tried again after the others.
                429 => {
                    last_refusal = format!("{p}: {}", status_message(&r.body));
                }
                _ => {
                    return Err(DrainError::Api(HttpsError::Status {
                        status: r.status,
                        body: status_message(&r.body),
                    }));
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// The `message` of a Kubernetes `Status` body, else the body.
fn status_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, extra: Value) -> Value {
        let mut p = json!({
            "metadata": {"namespace": "default", "name": name, "uid": format!("u-{name}")},
            "status": {"phase": "Running"},
        });
        json_patch::merge(&mut p, &extra);
        p
    }

    #[test]
    fn a_drain_leaves_daemonset_mirror_and_finished_pods() {
        let list = json!({"items": [
            pod("web-1", json!({"metadata": {"ownerReferences": [
                {"kind": "ReplicaSet", "name": "web-x", "controller": true}]}})),
            pod("proxy-1", json!({"metadata": {"ownerReferences": [
                {"kind": "DaemonSet", "name": "proxy", "controller": true}]}})),
            pod("static-1", json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "abc"}}})),
            pod("job-1", json!({"status": {"phase": "Succeeded"}})),
            pod("bare", json!({})),
        ]});
        let names: Vec<String> = evictable(&list).iter().map(Pod::to_string).collect();
        assert_eq!(names, ["default/bare", "default/web-1"]);
    }

    #[test]
    fn a_cordon_is_marked_and_someone_elses_is_left_alone() {
        let node = json!({"metadata": {"name": "w1"}, "spec": {}});
        let p = cordon_patch(&node, "b1").unwrap();
        assert_eq!(p["spec"]["unschedulable"], true);
        assert_eq!(p["metadata"]["annotations"][CORDONED], "b1");
        // Cordoned by hand: no patch, and so no mark that would make a later boot undo it.
        let by_hand = json!({"metadata": {"name": "w1"}, "spec": {"unschedulable": true}});
        assert_eq!(cordon_patch(&by_hand, "b1"), None);
        assert_eq!(cordoned_by(&by_hand), None);
        let mut ours = node.clone();
        json_patch::merge(&mut ours, &p);
        assert_eq!(cordoned_by(&ours), Some("b1"));
        // Uncordoned by hand (the mark left behind): not Basalt's cordon any more.
        json_patch::merge(&mut ours, &json!({"spec": {"unschedulable": null}}));
        assert_eq!(cordoned_by(&ours), None);
    }

    #[test]
    fn ready_reads_the_ready_condition() {
        let n = |s: &str| {
            json!({"status": {"conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": s}]}})
        };
        assert!(ready(&n("True")));
        assert!(!ready(&n("False")));
        assert!(!ready(&json!({})));
    }

    #[test]
    fn a_refusal_reads_as_its_message() {
        let body = br#"{"kind":"Status","message":"Cannot evict pod as it would violate the pod's disruption budget.","code":429}"#;
        assert_eq!(
            status_message(body),
            "Cannot evict pod as it would violate the pod's disruption budget."
        );
        assert_eq!(status_message(b"plain"), "plain");
    }
}
