//! `apply-config`.

use super::*;

pub(super) async fn apply_config(
    targets: &[Target],
    file: PathBuf,
    mode: ApplyMode,
    dry_run: bool,
    timeout: Option<u32>,
) -> anyhow::Result<()> {
    let data = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let mode = match mode {
        ApplyMode::NoReboot => pb::ApplyMode::NoReboot,
        ApplyMode::Staged => pb::ApplyMode::Staged,
        ApplyMode::Try => pb::ApplyMode::Try,
        ApplyMode::Reboot => pb::ApplyMode::Reboot,
    };
    let req = pb::ApplyConfigurationRequest {
        data,
        mode: mode as i32,
        dry_run,
        try_timeout_seconds: timeout.unwrap_or(0),
    };
    let r = unary(targets, req, |mut c, r| async move {
        c.apply_configuration(r).await
    })
    .await;
    let many = r.len() > 1;
    let mut failed = 0;
    for (node, res) in &r {
        let p = if many {
            format!("{node}: ")
        } else {
            String::new()
        };
        match res {
            Ok(a) => {
                stdout(&format!("{p}{}\n", a.summary));
                for c in &a.resource_changes {
                    stdout(&format!("{p}  {c}\n"));
                }
                for f in &a.needs_reboot {
                    stdout(&format!("{p}  needs a reboot: {f}\n"));
                }
                if dry_run && (!a.network_plan.is_empty() || !a.network_waiting.is_empty()) {
                    stdout(&format!(
                        "{p}network plan ({} operations):\n",
                        a.network_plan.len()
                    ));
                    for op in &a.network_plan {
                        stdout(&format!("{p}  ip {op}\n"));
                    }
                    for w in &a.network_waiting {
                        stdout(&format!("{p}  waiting: {w}\n"));
                    }
                }
                if dry_run && !a.config_diff.is_empty() {
                    stdout(&a.config_diff);
                    if !a.config_diff.ends_with('\n') {
                        stdout("\n");
                    }
                }
            }
            Err(s) => {
                failed += 1;
                output::stderr(&format!("{node}: error: {}", crate::output::explain(s)));
            }
        }
    }
    if failed > 0 {
        anyhow::bail!(
            "{file}: {failed} of {} nodes refused the config",
            r.len(),
            file = file.display()
        );
    }
    Ok(())
}
