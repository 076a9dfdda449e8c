//! Resources: `get` (and `-w`), and `time`, which shows the TimeStatus resource.

use super::*;

pub(super) async fn time(targets: &[Target], out: Out) -> anyhow::Result<()> {
    let r = unary(
        targets,
        pb::GetRequest {
            r#type: "TimeStatus".into(),
            id: "time".into(),
            namespace: String::new(),
        },
        |mut c, r| async move { c.get(r).await },
    )
    .await
    .into_iter()
    .map(|(n, r)| (n, r.map(|r| ResourceView::from(r).spec)))
    .collect();
    output::results(out.output, r, time_table)
}

/// `osctl time`: one row per server, then the node's state.
fn time_table(spec: &serde_json::Value) -> Table {
    let mut t = Table::new(&[
        "SERVER", "ADDRESS", "STRATUM", "OFFSET", "DELAY", "USED", "STATE",
    ]);
    let used = spec["server"].as_str().unwrap_or_default();
    let state = spec["state"].as_str().unwrap_or_default().to_string();
    let secs = |v: &serde_json::Value, digits: usize| {
        v.as_f64()
            .map(|x| format!("{x:+.digits$}s"))
            .unwrap_or_else(|| "-".into())
    };
    let servers = spec["servers"].as_array().cloned().unwrap_or_default();
    for srv in &servers {
        let name = srv["server"].as_str().unwrap_or_default();
        let error = srv["error"].as_str().unwrap_or_default();
        t.row(vec![
            name.to_string(),
            srv["address"].as_str().unwrap_or("-").to_string(),
            srv["stratum"]
                .as_u64()
                .map_or_else(|| "-".into(), |s| s.to_string()),
            secs(&srv["offsetSeconds"], 6),
            secs(&srv["delaySeconds"], 6)
                .trim_start_matches('+')
                .to_string(),
            if name == used { "*" } else { "" }.to_string(),
            if error.is_empty() {
                state.clone()
            } else {
                error.to_string()
            },
        ]);
    }
    if servers.is_empty() {
        t.row(vec![
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "".into(),
            state,
        ]);
    }
    t
}

/// A resource as people and programs read it: metadata and the spec as structured data.
#[derive(Debug, serde::Serialize)]
struct ResourceView {
    namespace: String,
    #[serde(rename = "type")]
    type_: String,
    id: String,
    version: u64,
    owner: String,
    phase: String,
    #[serde(skip_serializing_if = "std::collections::HashMap::is_empty")]
    labels: std::collections::HashMap<String, String>,
    spec: serde_json::Value,
}

impl From<pb::Resource> for ResourceView {
    fn from(r: pb::Resource) -> Self {
        ResourceView {
            spec: serde_json::from_str(&r.spec_json)
                .unwrap_or(serde_json::Value::String(r.spec_json)),
            namespace: r.namespace,
            type_: r.r#type,
            id: r.id,
            version: r.version,
            owner: r.owner,
            phase: r.phase,
            labels: r.labels,
        }
    }
}

#[derive(Debug, serde::Serialize)]
struct ResourceList {
    resources: Vec<ResourceView>,
}

fn resource_row(r: &ResourceView) -> Vec<String> {
    vec![
        r.namespace.clone(),
        r.type_.clone(),
        r.id.clone(),
        r.version.to_string(),
        r.phase.clone(),
    ]
}

const RESOURCE_HEADERS: [&str; 5] = ["NAMESPACE", "TYPE", "ID", "VERSION", "PHASE"];

pub(super) async fn get(
    targets: &[Target],
    resource: String,
    id: Option<String>,
    namespace: String,
    watch: bool,
    format: Format,
) -> anyhow::Result<()> {
    if watch {
        let req = pb::WatchRequest {
            r#type: resource,
            namespace,
            id: id.unwrap_or_default(),
            bootstrap: true,
        };
        let many = targets.len() > 1;
        if format == Format::Table {
            let mut h = if many { vec!["NODE"] } else { Vec::new() };
            h.push("EVENT");
            h.extend(RESOURCE_HEADERS);
            stdout(Table::new(&h).render().as_str());
        }
        let streams = targets.iter().map(|t| {
            let (t, req) = (t.clone(), req.clone());
            async move {
                let mut s = t
                    .client
                    .clone()
                    .watch(t.req(req))
                    .await
                    .map_err(|e| format!("{}: error: {}", t.label, crate::output::explain(&e)))?
                    .into_inner();
                while let Some(ev) = s.next().await {
                    let ev = ev.map_err(|e| {
                        format!("{}: error: {}", t.label, crate::output::explain(&e))
                    })?;
                    let Some(r) = ev.resource else {
                        continue;
                    };
                    let view = ResourceView::from(r);
                    match format {
                        Format::Table => {
                            let mut row = if many {
                                vec![t.label.clone()]
                            } else {
                                Vec::new()
                            };
                            row.push(ev.kind.clone());
                            row.extend(resource_row(&view));
                            // One line per event; columns are not aligned across events.
                            stdout(&format!("{}\n", row.join("   ")));
                        }
                        f => {
                            let mut doc = output::labelled(&t.label, &view);
                            doc["event"] = ev.kind.clone().into();
                            output::documents(f, &[doc]);
                        }
                    }
                }
                Ok::<(), String>(())
            }
        });
        let failed: Vec<String> = futures::future::join_all(streams)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        for f in &failed {
            output::stderr(f);
        }
        if !failed.is_empty() {
            anyhow::bail!("{} of {} nodes failed", failed.len(), targets.len());
        }
        return Ok(());
    }
    let r = client::each(targets, |t| {
        let (resource, id, namespace) = (resource.clone(), id.clone(), namespace.clone());
        async move {
            let mut c = t.client.clone();
            let resources = match id {
                Some(id) => vec![
                    c.get(t.req(pb::GetRequest {
                        r#type: resource,
                        id,
                        namespace,
                    }))
                    .await?
                    .into_inner(),
                ],
                None => {
                    c.list(t.req(pb::ListRequest {
                        r#type: resource,
                        namespace,
                    }))
                    .await?
                    .into_inner()
                    .resources
                }
            };
            Ok(ResourceList {
                resources: resources.into_iter().map(ResourceView::from).collect(),
            })
        }
    })
    .await;
    if format == Format::Table {
        return output::results(format, r, |l| {
            let mut t = Table::new(&RESOURCE_HEADERS);
            for v in &l.resources {
                t.row(resource_row(v));
            }
            t
        });
    }
    // YAML/JSON: one document per resource, as `kubectl get -o yaml` gives them.
    let mut failed = 0;
    let total = r.len();
    for (node, res) in r {
        match res {
            Ok(l) => {
                let docs: Vec<_> = l
                    .resources
                    .iter()
                    .map(|v| output::labelled(&node, v))
                    .collect();
                output::documents(format, &docs);
            }
            Err(s) => {
                failed += 1;
                output::stderr(&format!("{node}: error: {}", crate::output::explain(&s)));
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {total} nodes failed");
    }
    Ok(())
}
