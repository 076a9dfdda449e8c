//! Looking at a node: its version, containers, images, memory, processes, mounts, disks, and
//! its own ping.

use super::*;

pub(super) async fn version(targets: &[Target], out: Out) -> anyhow::Result<()> {
    if out.output == Format::Table {
        stdout(&format!("Client: osctl {}\n", env!("CARGO_PKG_VERSION")));
    }
    let r = unary(targets, pb::VersionRequest {}, |mut c, r| async move {
        c.version(r).await
    })
    .await;
    output::results(out.output, r, |v| {
        let mut t = Table::new(&[
            "TAG", "ARCH", "KERNEL", "MODE", "HOSTNAME", "UPTIME", "SLOTS",
        ]);
        // An installed node's slots: `A:0.1.0(booted) B:0.2.0(next)`; `-` from ISO/PXE.
        let slots: Vec<String> = v
            .slots
            .iter()
            .map(|s| {
                let version = if s.version.is_empty() {
                    "empty"
                } else {
                    &s.version
                };
                match s.state.as_str() {
                    "" => format!("{}:{version}", s.name),
                    st => format!("{}:{version}({st})", s.name),
                }
            })
            .collect();
        t.row(vec![
            v.tag.clone(),
            v.arch.clone(),
            v.kernel.clone(),
            v.mode.clone(),
            v.hostname.clone(),
            output::age(v.uptime_seconds),
            if slots.is_empty() {
                "-".into()
            } else {
                slots.join(" ")
            },
        ]);
        t
    })
}

pub(super) async fn containers(
    targets: &[Target],
    namespace: String,
    out: Out,
) -> anyhow::Result<()> {
    let r = unary(
        targets,
        pb::ContainersRequest { namespace },
        |mut c, r| async move { c.containers(r).await },
    )
    .await;
    output::results(out.output, r, |l| {
        let mut t = Table::new(&["NAMESPACE", "ID", "IMAGE", "STATUS", "PID"]);
        for c in &l.containers {
            t.row(vec![
                c.namespace.clone(),
                c.id.clone(),
                c.image.clone(),
                c.status.clone(),
                pid(c.pid as i32),
            ]);
        }
        t
    })
}

pub(super) async fn images(targets: &[Target], namespace: String, out: Out) -> anyhow::Result<()> {
    let r = unary(
        targets,
        pb::ImagesRequest { namespace },
        |mut c, r| async move { c.images(r).await },
    )
    .await;
    output::results(out.output, r, |l| {
        let mut t = Table::new(&["NAMESPACE", "IMAGE", "ID", "DIGEST", "SIZE"]);
        for i in &l.images {
            t.row(vec![
                i.namespace.clone(),
                i.name.clone(),
                crate::image_import::short_id(&i.id),
                i.digest.chars().take(19).collect(),
                output::bytes(i.size.max(0) as u64),
            ]);
        }
        t
    })
}

pub(super) async fn memory(targets: &[Target], out: Out) -> anyhow::Result<()> {
    let r = unary(targets, pb::MemoryRequest {}, |mut c, r| async move {
        c.memory(r).await
    })
    .await;
    output::results(out.output, r, |m| {
        let f = |k: &str| m.meminfo_kib.get(k).copied().unwrap_or(0) * 1024;
        let mut t = Table::new(&[
            "TOTAL",
            "USED",
            "FREE",
            "AVAILABLE",
            "BUFFERS",
            "CACHED",
            "SHARED",
        ]);
        let used = f("MemTotal").saturating_sub(f("MemAvailable"));
        t.row(
            [
                f("MemTotal"),
                used,
                f("MemFree"),
                f("MemAvailable"),
                f("Buffers"),
                f("Cached"),
                f("Shmem"),
            ]
            .map(output::bytes)
            .to_vec(),
        );
        t
    })
}

pub(super) async fn processes(targets: &[Target], out: Out) -> anyhow::Result<()> {
    let r = unary(targets, pb::ProcessesRequest {}, |mut c, r| async move {
        c.processes(r).await
    })
    .await;
    output::results(out.output, r, |l| {
        let mut ps = l.processes.clone();
        ps.sort_by(|a, b| b.rss_bytes.cmp(&a.rss_bytes).then(a.pid.cmp(&b.pid)));
        let mut t = Table::new(&[
            "PID",
            "PPID",
            "STATE",
            "THREADS",
            "RSS",
            "CPU-TICKS",
            "COMMAND",
        ]);
        for p in ps {
            let cmd = if p.args.is_empty() {
                format!("[{}]", p.command)
            } else {
                p.args.chars().take(80).collect()
            };
            t.row(vec![
                p.pid.to_string(),
                p.ppid.to_string(),
                p.state,
                p.threads.to_string(),
                output::bytes(p.rss_bytes),
                p.cpu_ticks.to_string(),
                cmd,
            ]);
        }
        t
    })
}

pub(super) async fn mounts(targets: &[Target], out: Out) -> anyhow::Result<()> {
    let r = unary(targets, pb::MountsRequest {}, |mut c, r| async move {
        c.mounts(r).await
    })
    .await;
    output::results(out.output, r, |l| {
        let mut t = Table::new(&["SOURCE", "MOUNTPOINT", "TYPE", "MODE", "SIZE", "AVAILABLE"]);
        for m in &l.mounts {
            t.row(vec![
                m.source.clone(),
                m.point.clone(),
                m.fstype.clone(),
                if m.read_only { "ro" } else { "rw" }.into(),
                size_or_dash(m.size_bytes),
                size_or_dash(m.available_bytes),
            ]);
        }
        t
    })
}

pub(super) async fn ping(
    targets: &[Target],
    address: String,
    count: u32,
    timeout: u32,
    out: Out,
) -> anyhow::Result<()> {
    let req = pb::PingRequest {
        address: address.clone(),
        count,
        timeout_ms: timeout.saturating_mul(1000),
        interval_ms: 0,
    };
    let r = unary(targets, req, |mut c, r| async move { c.ping(r).await }).await;
    let silent: Vec<String> = r
        .iter()
        .filter(|(_, r)| {
            r.as_ref()
                .is_ok_and(|p| p.replies.iter().all(|x| !x.received))
        })
        .map(|(n, _)| n.clone())
        .collect();
    output::results(out.output, r, |p| {
        let mut t = Table::new(&["ADDRESS", "SENT", "RECEIVED", "LOSS", "MIN", "AVG", "MAX"]);
        let rtts: Vec<u64> = p
            .replies
            .iter()
            .filter(|x| x.received)
            .map(|x| x.rtt_us)
            .collect();
        let ms = |us: u64| format!("{:.3}ms", us as f64 / 1000.0);
        let (min, avg, max) = match (rtts.iter().min(), rtts.iter().max()) {
            (Some(&lo), Some(&hi)) => (
                ms(lo),
                ms(rtts.iter().sum::<u64>() / rtts.len() as u64),
                ms(hi),
            ),
            _ => ("-".into(), "-".into(), "-".into()),
        };
        let loss = if p.sent == 0 {
            0
        } else {
            100 * (p.sent as usize - rtts.len()) / p.sent as usize
        };
        t.row(vec![
            p.address.clone(),
            p.sent.to_string(),
            rtts.len().to_string(),
            format!("{loss}%"),
            min,
            avg,
            max,
        ]);
        t
    })?;
    if !silent.is_empty() {
        anyhow::bail!("no reply from {address} to {}", silent.join(", "));
    }
    Ok(())
}

pub(super) async fn disks(targets: &[Target], out: Out) -> anyhow::Result<()> {
    let r = unary(targets, pb::DisksRequest {}, |mut c, r| async move {
        c.disks(r).await
    })
    .await;
    output::results(out.output, r, |l| {
        let mut t = Table::new(&[
            "DEVICE",
            "SIZE",
            "MODEL",
            "SERIAL",
            "LABEL",
            "RO",
            "ROTATIONAL",
        ]);
        for d in &l.disks {
            t.row(vec![
                format!("/dev/{}", d.name),
                output::bytes(d.size_bytes),
                d.model.clone(),
                d.serial.clone(),
                d.label.clone(),
                d.read_only.to_string(),
                d.rotational.to_string(),
            ]);
        }
        t
    })
}

fn size_or_dash(n: u64) -> String {
    if n == 0 { "-".into() } else { output::bytes(n) }
}
