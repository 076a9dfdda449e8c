//! Merging a kubeconfig into another, as `osctl kubeconfig` does.

use serde_json::Value;

/// `new`'s clusters, users and contexts added to `existing` (entries of the same name are
/// replaced: a fresh credential for the same cluster), and its current context made current.
pub fn merge(existing: Option<Value>, new: &Value) -> Value {
    let mut out = existing.unwrap_or_else(|| {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [],
            "users": [],
            "contexts": [],
        })
    });
    for key in ["clusters", "users", "contexts"] {
        let mut list: Vec<Value> = out[key].as_array().cloned().unwrap_or_default();
        for item in new[key].as_array().into_iter().flatten() {
            let name = &item["name"];
            match list.iter_mut().find(|e| &e["name"] == name) {
                Some(e) => *e = item.clone(),
                None => list.push(item.clone()),
            }
        }
        out[key] = Value::Array(list);
    }
    if let Some(c) = new.get("current-context") {
        out["current-context"] = c.clone();
    }
    out
}

/// Where `osctl kubeconfig` writes without a path: the first file of `$KUBECONFIG`, else
/// `~/.kube/config` (kubectl's order).
pub fn default_path() -> std::path::PathBuf {
    if let Some(first) = std::env::var_os("KUBECONFIG")
        .and_then(|v| std::env::split_paths(&v).find(|p| !p.as_os_str().is_empty()))
    {
        return first;
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    std::path::Path::new(&home).join(".kube/config")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(cluster: &str, server: &str) -> Value {
        let ctx = format!("admin@{cluster}");
        serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": cluster, "cluster": {"server": server}}],
            "users": [{"name": ctx, "user": {"token": server}}],
            "contexts": [{"name": ctx, "context": {"cluster": cluster, "user": ctx}}],
            "current-context": ctx,
        })
    }

    #[test]
    fn another_cluster_is_added_and_made_current() {
        let m = merge(Some(cfg("a", "https://a")), &cfg("b", "https://b"));
        assert_eq!(m["clusters"].as_array().unwrap().len(), 2);
        assert_eq!(m["contexts"].as_array().unwrap().len(), 2);
        assert_eq!(m["current-context"], "admin@b");
    }

    #[test]
    fn the_same_cluster_again_replaces_its_entries() {
        let m = merge(Some(cfg("a", "https://old")), &cfg("a", "https://new"));
        assert_eq!(m["clusters"].as_array().unwrap().len(), 1);
        assert_eq!(m["clusters"][0]["cluster"]["server"], "https://new");
        assert_eq!(m["users"][0]["user"]["token"], "https://new");
    }

    #[test]
    fn no_existing_file_gives_the_new_one() {
        let m = merge(None, &cfg("a", "https://a"));
        assert_eq!(m["kind"], "Config");
        assert_eq!(m["current-context"], "admin@a");
        assert_eq!(m["users"].as_array().unwrap().len(), 1);
    }
}
