//! Network chaos for a local QEMU cluster: `create --network-loss 1% --network-delay 15ms`.
//!
//! Every frame the cluster's bridge forwards (node to node, host to node) is handed to this
//! daemon through netfilter's queue (`iptables -j NFQUEUE` on the bridge's FORWARD path, with
//! `bridge-nf-call-iptables` on in the cluster's namespace), which drops the given share and
//! lets the rest go after the given delay. The kernel's own `tc netem` would do the same on a
//! host that has it; this one works on any kernel with NFQUEUE and br_netfilter — the machines
//! this project is built on have no `sch_netem` — and is one way on every host. The rules
//! live in the cluster's namespace, so `destroy` removes them with it; if the daemon dies,
//! `--queue-bypass` lets traffic through unimpaired rather than cutting the cluster off.

use std::collections::VecDeque;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// The queue's number inside the cluster's namespace (queues are per namespace).
const QUEUE: u16 = 0;

/// What the network does to each frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Chaos {
    /// The share of frames dropped, in percent (0–100).
    pub loss_percent: f64,
    /// How long every other frame is held.
    pub delay: Duration,
}

/// `1%`, `0.5` (percent either way).
pub fn parse_loss(s: &str) -> Result<f64, String> {
    let n = s.strip_suffix('%').unwrap_or(s);
    match n.trim().parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a share in percent like 1% or 0.5")),
    }
}

/// `15ms`, `1s`, `0.2s`, `250us`.
pub fn parse_delay(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a delay like 15ms or 0.2s");
    let (num, unit) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        return Err(bad());
    };
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    if !(0.0..=10.0 / unit).contains(&v) || v * unit > 10.0 {
        return Err(format!("{s:?}: a delay of at most 10s"));
    }
    Ok(Duration::from_secs_f64(v * unit))
}

impl std::fmt::Display for Chaos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}% loss, {} ms delay",
            self.loss_percent,
            self.delay.as_secs_f64() * 1000.0
        )
    }
}

/// A small deterministic generator: the same run drops the same frames.
struct XorShift(u64);

impl XorShift {
    /// A number in [0, 100).
    fn percent(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        // 53 bits into [0, 1), scaled.
        let unit = (self.0 >> 11) as f64 / (1u64 << 53) as f64;
        unit * 100.0
    }
}

/// Whether each of a run of frames goes: `false` = dropped. Counted by the unit test.
fn fates(loss_percent: f64, seed: u64) -> impl FnMut() -> bool {
    let mut rng = XorShift(seed.max(1));
    move || rng.percent() >= loss_percent
}

/// The daemon (`osctl cluster chaos`): enters `netns`, binds the queue, installs the rules,
/// writes `ready`, then holds and drops frames until it is killed.
pub fn run(netns: &str, chaos: Chaos, ready: &Path) -> anyhow::Result<()> {
    let ns = std::fs::File::open(Path::new("/run/netns").join(netns))
        .with_context(|| format!("no network namespace {netns}"))?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("cannot enter the network namespace {netns}"))?;
    let mut q = nfq::Queue::open().context("cannot open a netfilter queue socket")?;
    q.bind(QUEUE).context("cannot bind netfilter queue 0")?;
    // Only the packet's id comes up: nothing is read or changed.
    q.set_copy_range(QUEUE, 0)
        .context("cannot set the queue's copy range")?;
    q.set_queue_max_len(QUEUE, 8192)
        .context("cannot set the queue's length")?;
    q.set_nonblocking(true);
    install_rules(netns)?;
    std::fs::write(ready, b"ready\n")
        .with_context(|| format!("cannot write {}", ready.display()))?;
    eprintln!("chaos in {netns}: {chaos}");
    let mut goes = fates(chaos.loss_percent, 0x5eed_0000_b45a_1701);
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    let (mut passed, mut dropped) = (0u64, 0u64);
    let mut report = Instant::now();
    loop {
        loop {
            match q.recv() {
                Ok(mut msg) => {
                    if goes() {
                        msg.set_verdict(nfq::Verdict::Accept);
                        held.push_back((Instant::now() + chaos.delay, msg));
                    } else {
                        msg.set_verdict(nfq::Verdict::Drop);
                        q.verdict(msg).context("a verdict failed")?;
                        dropped += 1;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("reading the netfilter queue"),
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, msg)) = held.pop_front() {
                q.verdict(msg).context("a verdict failed")?;
                passed += 1;
            }
        }
        if report.elapsed() > Duration::from_secs(60) {
            eprintln!("chaos: {passed} frames passed, {dropped} dropped");
            report = Instant::now();
        }
        let next = held.front().map_or(Duration::from_millis(1), |(due, _)| {
            due.saturating_duration_since(now)
        });
        std::thread::sleep(next.min(Duration::from_millis(1)));
    }
}

/// Frames the bridge forwards go to the queue (IPv4 and IPv6); with nobody on the queue they
/// pass.
fn install_rules(netns: &str) -> anyhow::Result<()> {
    for sysctl in [
        "net.bridge.bridge-nf-call-iptables=1",
        "net.bridge.bridge-nf-call-ip6tables=1",
    ] {
        in_netns(netns, &["sysctl", "-q", "-w", sysctl])?;
    }
    for tables in ["iptables", "ip6tables"] {
        in_netns(
            netns,
            &[
                tables,
                "-w",
                "-A",
                "FORWARD",
                "-j",
                "NFQUEUE",
                "--queue-num",
                "0",
                "--queue-bypass",
            ],
        )?;
    }
    Ok(())
}

fn in_netns(netns: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns])
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "{} in {netns}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_and_delay_read_as_users_write_them() {
        assert_eq!(parse_loss("1%"), Ok(1.0));
        assert_eq!(parse_loss("0.5"), Ok(0.5));
        assert!(parse_loss("101%").is_err());
        assert!(parse_loss("-1").is_err());
        assert!(parse_loss("lots").is_err());
        assert_eq!(parse_delay("15ms"), Ok(Duration::from_millis(15)));
        assert_eq!(parse_delay("0.2s"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_delay("250us"), Ok(Duration::from_micros(250)));
        assert!(parse_delay("15").is_err());
        assert!(parse_delay("11s").is_err());
        assert!(parse_delay("-1ms").is_err());
    }

    #[test]
    fn the_share_dropped_is_the_share_asked_for() {
        for loss in [0.0, 1.0, 10.0, 100.0] {
            let mut goes = fates(loss, 42);
            let n = 100_000;
            let dropped = (0..n).filter(|_| !goes()).count();
            let share = dropped as f64 * 100.0 / f64::from(n);
            assert!(
                (share - loss).abs() < 0.3,
                "asked {loss}%, dropped {share}%"
            );
        }
    }
}
