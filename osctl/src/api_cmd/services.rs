//! Services: the list, one service and its actions, their logs and the kernel's.

use super::*;

pub(super) async fn services(targets: &[Target], out: Out) -> anyhow::Result<()> {
    let r = unary(targets, pb::ServiceListRequest {}, |mut c, r| async move {
        c.service_list(r).await
    })
    .await;
    output::results(out.output, r, |l| {
        let mut t = Table::new(&["SERVICE", "STATE", "HEALTH", "PID", "RESTARTS", "MESSAGE"]);
        for s in &l.services {
            t.row(service_row(s));
        }
        t
    })
}

pub(super) async fn service(
    targets: &[Target],
    name: String,
    action: Option<ServiceAction>,
    out: Out,
) -> anyhow::Result<()> {
    let Some(action) = action else {
        let r = client::each(targets, |t| {
            let name = name.clone();
            async move {
                let l = t
                    .client
                    .clone()
                    .service_list(t.req(pb::ServiceListRequest {}))
                    .await?
                    .into_inner();
                let ids: Vec<_> = l.services.iter().map(|s| s.id.clone()).collect();
                l.services
                    .into_iter()
                    .find(|s| s.id == name)
                    .ok_or_else(|| {
                        tonic::Status::not_found(format!(
                            "no service {name:?} (services: {})",
                            ids.join(", ")
                        ))
                    })
            }
        })
        .await;
        if out.output != Format::Table {
            return output::results(out.output, r, |_| Table::default());
        }
        let many = r.len() > 1;
        let mut failed = 0;
        for (node, res) in &r {
            match res {
                Ok(s) => {
                    if many {
                        stdout(&format!("NODE: {node}\n"));
                    }
                    let mut t =
                        Table::new(&["SERVICE", "STATE", "HEALTH", "PID", "RESTARTS", "MESSAGE"]);
                    t.row(service_row(s));
                    stdout(&t.render());
                    stdout("EVENTS\n");
                    for e in &s.events {
                        stdout(&format!(
                            "  {}  {}  {}\n",
                            clock(e.time_ms),
                            e.state,
                            e.message
                        ));
                    }
                }
                Err(e) => {
                    failed += 1;
                    output::stderr(&format!("{node}: error: {}", crate::output::explain(e)));
                }
            }
        }
        if failed > 0 {
            anyhow::bail!("{failed} of {} nodes failed", r.len());
        }
        return Ok(());
    };
    let r = client::each(targets, |t| {
        let req = pb::ServiceRequest { id: name.clone() };
        async move {
            let mut c = t.client.clone();
            match action {
                ServiceAction::Start => c.service_start(t.req(req)).await,
                ServiceAction::Stop => c.service_stop(t.req(req)).await,
                ServiceAction::Restart => c.service_restart(t.req(req)).await,
                ServiceAction::Kill => {
                    c.service_kill(t.req(pb::ServiceKillRequest {
                        id: req.id,
                        signal: "SIGKILL".into(),
                    }))
                    .await
                }
            }
            .map(tonic::Response::into_inner)
        }
    })
    .await;
    output::results(out.output, r, |s| {
        let mut t = Table::new(&["RESULT"]);
        t.row(vec![s.summary.clone()]);
        t
    })
}

pub(super) async fn logs(
    targets: &[Target],
    name: String,
    follow: bool,
    tail: u32,
) -> anyhow::Result<()> {
    let req = pb::LogsRequest {
        id: name,
        follow,
        tail_lines: tail,
    };
    lines(targets, move |t| {
        let req = req.clone();
        async move { Ok(t.client.clone().logs(t.req(req)).await?.into_inner()) }
    })
    .await
}

pub(super) async fn dmesg(targets: &[Target], follow: bool, tail: u32) -> anyhow::Result<()> {
    let req = pb::DmesgRequest {
        follow,
        tail_lines: tail,
    };
    lines(targets, move |t| async move {
        Ok(t.client.clone().dmesg(t.req(req)).await?.into_inner())
    })
    .await
}

fn service_row(s: &pb::ServiceInfo) -> Vec<String> {
    vec![
        s.id.clone(),
        s.state.clone(),
        if s.health.is_empty() {
            "-".into()
        } else {
            s.health.clone()
        },
        pid(s.pid),
        s.restarts.to_string(),
        s.message.clone(),
    ]
}

/// A wall-clock time (UTC) from milliseconds since the epoch.
pub(super) fn clock(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Prints log lines from every target as they come, prefixed with the node when there are
/// several.
async fn lines<F, Fut>(targets: &[Target], open: F) -> anyhow::Result<()>
where
    F: Fn(Target) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Streaming<pb::LogLine>, tonic::Status>>,
{
    let many = targets.len() > 1;
    let streams = targets.iter().map(|t| {
        let label = t.label.clone();
        let fut = open(t.clone());
        async move {
            let p = if many {
                format!("{label}: ")
            } else {
                String::new()
            };
            let mut s = match fut.await {
                Ok(s) => s,
                Err(e) => return Err(format!("{label}: error: {}", crate::output::explain(&e))),
            };
            loop {
                match s.next().await {
                    Some(Ok(l)) => stdout(&format!("{p}{}\n", l.line)),
                    Some(Err(e)) => {
                        return Err(format!("{label}: error: {}", crate::output::explain(&e)));
                    }
                    None => return Ok(()),
                }
            }
        }
    });
    let results = futures::future::join_all(streams).await;
    let failed: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    for f in &failed {
        output::stderr(f);
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "{} of {} nodes failed",
            failed.len(),
            targets.len()
        ))
    }
}
