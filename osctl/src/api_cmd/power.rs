//! Reboot, shutdown and reset: the node's sequences.

use super::*;

pub(super) async fn reboot(targets: &[Target]) -> anyhow::Result<()> {
    let r = unary(targets, pb::RebootRequest {}, |mut c, r| async move {
        c.reboot(r).await
    })
    .await;
    output::results(Format::Table, r, sequence_table)
}

pub(super) async fn shutdown(targets: &[Target]) -> anyhow::Result<()> {
    let r = unary(targets, pb::ShutdownRequest {}, |mut c, r| async move {
        c.shutdown(r).await
    })
    .await;
    output::results(Format::Table, r, sequence_table)
}

pub(super) async fn reset(
    targets: &[Target],
    graceful: bool,
    wipe: Vec<String>,
) -> anyhow::Result<()> {
    let r = unary(
        targets,
        pb::ResetRequest { graceful, wipe },
        |mut c, r| async move { c.reset(r).await },
    )
    .await;
    output::results(Format::Table, r, sequence_table)
}

fn sequence_table(s: &pb::SequenceResponse) -> Table {
    let mut t = Table::new(&["SEQUENCE", "RESULT"]);
    t.row(vec![s.sequence.clone(), s.summary.clone()]);
    t
}
