//! Kubernetes from a control plane: bootstrap, etcd, the kubeconfig, the cluster's health.

use super::*;

pub(super) async fn bootstrap(targets: &[Target]) -> anyhow::Result<()> {
    if targets.len() != 1 {
        anyhow::bail!(
            "bootstrap runs on exactly one control plane: name one node with -n (got {})",
            targets.len()
        );
    }
    let r = unary(targets, pb::BootstrapRequest {}, |mut c, r| async move {
        c.bootstrap(r).await
    })
    .await;
    output::results(Format::Table, r, |b| {
        let mut t = Table::new(&["RESULT"]);
        t.row(vec![b.message.clone()]);
        t
    })
}

pub(super) async fn etcd_members(targets: &[Target], out: Out) -> anyhow::Result<()> {
    let r = unary(targets, pb::EtcdMembersRequest {}, |mut c, r| async move {
        c.etcd_members(r).await
    })
    .await;
    output::results(out.output, r, |m| {
        let mut t = Table::new(&[
            "ID",
            "NAME",
            "PEER URLS",
            "CLIENT URLS",
            "LEARNER",
            "LEADER",
            "VERSION",
        ]);
        for e in &m.members {
            t.row(vec![
                format!("{:016x}", e.id),
                if e.name.is_empty() {
                    "(not started)".into()
                } else {
                    e.name.clone()
                },
                e.peer_urls.join(","),
                e.client_urls.join(","),
                e.learner.to_string(),
                (e.id == m.leader_id).to_string(),
                // The member that answered says its version.
                if e.id == m.self_id {
                    m.version.clone()
                } else {
                    String::new()
                },
            ]);
        }
        t
    })
}

pub(super) async fn kubeconfig(
    targets: &[Target],
    path: Option<PathBuf>,
    force: bool,
) -> anyhow::Result<()> {
    let [t] = targets else {
        anyhow::bail!(
            "a kubeconfig comes from one control plane: name one node with -n (got {})",
            targets.len()
        );
    };
    let r = t
        .client
        .clone()
        .kubeconfig(t.req(pb::KubeconfigRequest {}))
        .await
        .map_err(|s| anyhow::anyhow!("{}: {}", t.label, crate::output::explain(&s)))?
        .into_inner();
    let mut path = path.unwrap_or_else(crate::kubeconfig::default_path);
    if path.is_dir() {
        path = path.join("kubeconfig");
    }
    let text = String::from_utf8(r.data).context("the kubeconfig is not UTF-8")?;
    let new = basalt_config::yaml::parse_documents(&text)
        .map_err(|e| anyhow::anyhow!("the node's kubeconfig: {e}"))?
        .first()
        .map(basalt_config::yaml::Node::to_json)
        .context("the node sent an empty kubeconfig")?;
    let existing = match std::fs::read_to_string(&path) {
        Ok(old) if !force => Some(
            basalt_config::yaml::parse_documents(&old)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                .first()
                .map(basalt_config::yaml::Node::to_json)
                .unwrap_or(serde_json::Value::Null),
        )
        .filter(|v| v.is_object()),
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let merged = existing.is_some();
    let out = crate::kubeconfig::merge(existing, &new);
    basalt_sys::fs::atomic_write(
        &path,
        basalt_config::yaml::to_yaml_text(&out).as_bytes(),
        0o600,
    )
    .with_context(|| format!("cannot write {}", path.display()))?;
    stdout(&format!(
        "kubeconfig for cluster {} {} {} (context {})\n",
        r.cluster,
        if merged { "merged into" } else { "written to" },
        path.display(),
        out["current-context"].as_str().unwrap_or_default()
    ));
    Ok(())
}

pub(super) async fn health(
    targets: &[Target],
    wait_timeout: u32,
    expect_nodes: Option<usize>,
) -> anyhow::Result<()> {
    let [t] = targets else {
        anyhow::bail!(
            "health is checked from one control plane: name one node with -n (got {})",
            targets.len()
        );
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait_timeout.into());
    loop {
        let got = t
            .client
            .clone()
            .cluster_health(t.req(pb::ClusterHealthRequest {}))
            .await
            .map(|r| r.into_inner().checks)
            .map_err(|s| format!("{}: {}", t.label, crate::output::explain(&s)));
        let mut checks: Vec<(String, bool, String)> = match got {
            Ok(c) => c.into_iter().map(|c| (c.name, c.ok, c.message)).collect(),
            Err(e) => vec![("api".into(), false, e)],
        };
        if let Some(want) = expect_nodes {
            let have = checks.iter().filter(|c| c.0.starts_with("node/")).count();
            checks.push((
                "expected nodes".into(),
                have == want,
                format!("{have} registered, {want} expected"),
            ));
        }
        let failed = checks.iter().filter(|c| !c.1).count();
        if failed == 0 || std::time::Instant::now() >= deadline {
            let mut table = Table::new(&["CHECK", "STATUS", "MESSAGE"]);
            for (name, ok, msg) in &checks {
                table.row(vec![
                    name.clone(),
                    if *ok { "OK" } else { "FAIL" }.into(),
                    msg.clone(),
                ]);
            }
            stdout(&table.render());
            if failed > 0 {
                anyhow::bail!("{failed} of {} checks failed", checks.len());
            }
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

pub(super) async fn etcd_leave(targets: &[Target]) -> anyhow::Result<()> {
    let r = unary(targets, pb::EtcdLeaveRequest {}, |mut c, r| async move {
        c.etcd_leave(r).await
    })
    .await;
    output::results(Format::Table, r, |b| {
        let mut t = Table::new(&["RESULT"]);
        t.row(vec![b.message.clone()]);
        t
    })
}

pub(super) async fn etcd_snapshot(targets: &[Target], path: PathBuf) -> anyhow::Result<()> {
    let [t] = targets else {
        anyhow::bail!(
            "a snapshot comes from one control plane: name one node with -n (got {})",
            targets.len()
        );
    };
    let mut stream = t
        .client
        .clone()
        .etcd_snapshot(t.req(pb::EtcdSnapshotRequest {}))
        .await
        .map_err(|s| anyhow::anyhow!("{}: {}", t.label, crate::output::explain(&s)))?
        .into_inner();
    let mut data = Vec::new();
    while let Some(c) = stream
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("{}: {}", t.label, crate::output::explain(&s)))?
    {
        data.extend_from_slice(&c.data);
    }
    basalt_sys::fs::atomic_write(&path, &data, 0o600)
        .with_context(|| format!("cannot write {}", path.display()))?;
    stdout(&format!(
        "etcd snapshot from {} saved to {} ({})\n",
        t.label,
        path.display(),
        output::bytes(data.len() as u64)
    ));
    Ok(())
}
