//! Time sync: an SNTP client for the servers the node has (`TimeServerStatus`: the config's
//! `TimeConfig.servers`, those DHCP hands out, `ip=`'s), the system clock stepped when it is
//! far off (a machine whose RTC is wrong: certificates issued by it would not be valid yet, or
//! no longer) and slewed otherwise, and the node's `time-synced` condition — set when the clock
//! is synced, or when `TimeConfig.bootTimeout` passes without it, or at once when there is
//! nothing to sync with (sync disabled, no server, a container node, whose clock is the
//! host's). What it did is the `TimeStatus` resource (`osctl time`).
//!
//! The protocol is [`ntp`] (no I/O); [`Clock`] is the system clock, or a fake in tests. Must
//! not: know about the API or init.

#![forbid(unsafe_code)]

pub mod ntp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use basalt_config::Config;
use basalt_config::resource::{ACTIVE_ID, ActiveConfig};
use basalt_networkd::spec::TimeServerStatus;
use basalt_resources::{Kind, Spec, Store};
use basalt_supervisor::Supervisor;
use basalt_sys::clock::ClockError;
use serde::Serialize;

/// Once synced, each server is asked this often.
pub const POLL: Duration = Duration::from_secs(64);
/// Before the first answer, tries back off from 1 s to this.
const RETRY_MAX: Duration = Duration::from_secs(32);
/// How long one server has to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
/// A clock further off than this is stepped; a closer one slewed.
pub const STEP_THRESHOLD: f64 = 1.0;
/// `TimeConfig.bootTimeout` when no config says.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// The resource's owner and id.
const OWNER: &str = "time.Sync";
pub const STATUS_ID: &str = "time";

/// What time sync did (id `time`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TimeStatus {
    pub synced: bool,
    /// In words: synced with whom, or why not.
    pub state: String,
    /// The server whose answer set the clock last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The last change made to the clock: `stepped by +31536000.020 s`, `slewing by -0.003 s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adjustment: Option<String>,
    /// Each server's last answer (or why there was none).
    pub servers: Vec<ServerStatus>,
}

impl Spec for TimeStatus {
    const TYPE: &'static str = "TimeStatus";
    const NAMESPACE: &'static str = "time";
}

/// One server's last answer: the clock's offset from it (positive: the node is behind), the
/// round trip, its stratum; or the error.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerStatus {
    pub server: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stratum: Option<u8>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// The clock time sync reads and sets.
pub trait Clock: Send + Sync + 'static {
    /// Seconds since the Unix epoch.
    fn now(&self) -> f64;
    fn step(&self, by: f64) -> Result<(), ClockError>;
    fn slew(&self, by: f64) -> Result<(), ClockError>;
}

/// The system clock (`CLOCK_REALTIME`).
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> f64 {
        basalt_sys::clock::now().unwrap_or(0.0)
    }
    fn step(&self, by: f64) -> Result<(), ClockError> {
        basalt_sys::clock::step(by)
    }
    fn slew(&self, by: f64) -> Result<(), ClockError> {
        basalt_sys::clock::slew(by)
    }
}

/// Why a server gave no sample.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("cannot resolve {0}")]
    Resolve(String, #[source] std::io::Error),
    #[error("{0} resolves to no address")]
    NoAddress(String),
    #[error("cannot send to {0}")]
    Send(SocketAddr, #[source] std::io::Error),
    #[error("no answer from {0} within {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("cannot receive from {0}")]
    Receive(SocketAddr, #[source] std::io::Error),
    #[error("{0}")]
    Packet(SocketAddr, #[source] ntp::PacketError),
}

/// `server` as addresses to ask: an address, `address:port`, `[v6]:port`, a name or
/// `name:port` (port 123 unless given).
async fn resolve(server: &str) -> Result<SocketAddr, QueryError> {
    if let Ok(sa) = server.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if let Ok(ip) = server.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, 123));
    }
    let target = match server.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => format!("{host}:{port}"),
        _ => format!("{server}:123"),
    };
    tokio::net::lookup_host(target)
        .await
        .map_err(|e| QueryError::Resolve(server.into(), e))?
        .next()
        .ok_or_else(|| QueryError::NoAddress(server.into()))
}

/// Asks one server once.
pub async fn query(
    server: &str,
    clock: &dyn Clock,
    timeout: Duration,
) -> Result<(SocketAddr, ntp::Sample), QueryError> {
    let to = resolve(server).await?;
    let local: SocketAddr = match to {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = tokio::net::UdpSocket::bind(local)
        .await
        .map_err(|e| QueryError::Send(to, e))?;
    sock.connect(to)
        .await
        .map_err(|e| QueryError::Send(to, e))?;
    let cookie = rand::random::<u64>() | 1;
    let t1 = clock.now();
    sock.send(&ntp::request(cookie))
        .await
        .map_err(|e| QueryError::Send(to, e))?;
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            Err(_) => return Err(QueryError::Timeout(to, timeout)),
            Ok(Err(e)) => return Err(QueryError::Receive(to, e)),
            Ok(Ok(n)) => n,
        };
        let t4 = clock.now();
        match ntp::parse(&buf[..n], cookie) {
            Ok(a) => return Ok((to, ntp::sample(t1, &a, t4))),
            // A late answer to an earlier request: wait for this one's.
            Err(ntp::PacketError::Origin) => continue,
            Err(e) => return Err(QueryError::Packet(to, e)),
        }
    }
}

/// What to do with the clock for an offset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Adjust {
    Step(f64),
    Slew(f64),
}

pub fn adjust(offset: f64) -> Adjust {
    if offset.abs() > STEP_THRESHOLD {
        Adjust::Step(offset)
    } else {
        Adjust::Slew(offset)
    }
}

/// The best of a round's answers: the shortest round trip (the least room for asymmetry),
/// then the lowest stratum, then the order given.
pub fn best(samples: &[(usize, ntp::Sample)]) -> Option<(usize, ntp::Sample)> {
    samples.iter().copied().min_by(|a, b| {
        a.1.delay
            .total_cmp(&b.1.delay)
            .then(a.1.stratum.cmp(&b.1.stratum))
            .then(a.0.cmp(&b.0))
    })
}

/// What the config says about time.
#[derive(Debug, Clone, PartialEq)]
struct Settings {
    disabled: bool,
    boot_timeout: Duration,
    servers: Vec<String>,
}

fn settings(c: Option<&Config>) -> Settings {
    let t = c.and_then(|c| {
        c.documents().find_map(|d| match d {
            basalt_config::Document::Time(t) => Some(t),
            _ => None,
        })
    });
    Settings {
        disabled: t.is_some_and(|t| t.disabled),
        boot_timeout: t.map_or(DEFAULT_BOOT_TIMEOUT, |t| t.boot_timeout.get()),
        servers: t.map(|t| t.servers.clone()).unwrap_or_default(),
    }
}

/// Sets `time-synced` once, saying why.
#[derive(Debug, Clone)]
struct Release {
    sup: Arc<Supervisor>,
    done: Arc<AtomicBool>,
}

impl Release {
    fn now(&self, why: &str) {
        if !self.done.swap(true, Ordering::SeqCst) {
            tracing::info!("time-synced: {why}");
            self.sup.set_condition(basalt_supervisor::TIME, true);
        }
    }
}

fn signed(x: f64, digits: usize) -> String {
    format!("{x:+.digits$}")
}

/// Runs time sync for the node until the runtime stops — on a container node it says the host
/// keeps the clock, releases `time-synced` and returns; never fails (errors are in the status
/// and the log).
pub async fn run(store: Store, sup: Arc<Supervisor>, clock: Arc<dyn Clock>, container: bool) {
    let release = Release {
        sup: sup.clone(),
        done: Arc::new(AtomicBool::new(false)),
    };
    let publish = |s: TimeStatus| {
        if let Err(e) = store.apply(OWNER, STATUS_ID, s) {
            tracing::warn!(error = %e, "cannot write TimeStatus");
        }
    };
    if container {
        publish(TimeStatus {
            synced: false,
            state: "the host keeps the clock (a container node)".into(),
            server: None,
            adjustment: None,
            servers: Vec::new(),
        });
        release.now("a container node's clock is the host's");
        return;
    }
    // The servers DHCP hands out come with the lease.
    sup.wait_condition(basalt_supervisor::NETWORK, Duration::from_secs(60))
        .await;
    let mut server_changes = store.watch_id(Kind::of::<TimeServerStatus>(), "timeservers", None);
    let config_kind = Kind::of::<ActiveConfig>();
    let mut config = store.watch_id(config_kind.clone(), ACTIVE_ID, None);
    let mut retry = Duration::from_secs(1);
    let mut last: Option<TimeStatus> = None;
    let mut last_error = String::new();
    let mut timer_started = false;
    loop {
        let cfg = basalt_config::resource::active(&store);
        let s = settings(cfg.as_deref());
        // What waits for the condition (certificates from the cluster's CAs) needs a config:
        // boot waits from the first one on, and with none nothing is released for want of a
        // server (the config may name some).
        if cfg.is_some() && !timer_started {
            timer_started = true;
            let (release, boot_timeout) = (release.clone(), s.boot_timeout);
            tokio::spawn(async move {
                tokio::time::sleep(boot_timeout).await;
                if !release.done.load(Ordering::SeqCst) {
                    tracing::warn!(
                        boot_timeout_s = boot_timeout.as_secs(),
                        "not synced within bootTimeout; going on with the clock as it is"
                    );
                    release.now("bootTimeout passed");
                }
            });
        }
        // The config's servers at once (networkd's TimeServerStatus follows it a moment
        // later), then those of every layer: DHCP's, ip='s.
        let mut servers = if s.disabled {
            Vec::new()
        } else {
            s.servers.clone()
        };
        for srv in store
            .get::<TimeServerStatus>("timeservers")
            .map(|(_, t)| t.servers)
            .unwrap_or_default()
        {
            if !servers.contains(&srv) {
                servers.push(srv);
            }
        }
        let mut status = TimeStatus {
            synced: last.as_ref().is_some_and(|l| l.synced),
            state: String::new(),
            server: last.as_ref().and_then(|l| l.server.clone()),
            adjustment: last.as_ref().and_then(|l| l.adjustment.clone()),
            servers: Vec::new(),
        };
        let next = if s.disabled {
            status.state = "disabled (TimeConfig.disabled)".into();
            if cfg.is_some() {
                release.now("time sync is disabled");
            }
            None
        } else if servers.is_empty() {
            status.state =
                "no time servers (TimeConfig.servers, DHCP or ip= give them): the clock is not synced"
                    .into();
            if cfg.is_some() {
                release.now("there is no time server to wait for");
            }
            None
        } else {
            let answers = futures::future::join_all(
                servers
                    .iter()
                    .map(|srv| query(srv, clock.as_ref(), ANSWER_TIMEOUT)),
            )
            .await;
            let mut samples = Vec::new();
            for (i, (srv, a)) in servers.iter().zip(answers).enumerate() {
                status.servers.push(match a {
                    Ok((addr, sample)) => {
                        samples.push((i, sample));
                        ServerStatus {
                            server: srv.clone(),
                            address: addr.to_string(),
                            offset_seconds: Some(sample.offset),
                            delay_seconds: Some(sample.delay),
                            stratum: Some(sample.stratum),
                            error: String::new(),
                        }
                    }
                    Err(e) => ServerStatus {
                        server: srv.clone(),
                        address: String::new(),
                        offset_seconds: None,
                        delay_seconds: None,
                        stratum: None,
                        error: basalt_sys::error_chain(&e),
                    },
                });
            }
            match best(&samples) {
                Some((i, sample)) => {
                    let (done, what) = match adjust(sample.offset) {
                        Adjust::Step(by) => {
                            (clock.step(by), format!("stepped by {} s", signed(by, 3)))
                        }
                        Adjust::Slew(by) => {
                            (clock.slew(by), format!("slewing by {} s", signed(by, 6)))
                        }
                    };
                    match done {
                        Ok(()) => {
                            let first = !status.synced;
                            if first || matches!(adjust(sample.offset), Adjust::Step(_)) {
                                tracing::info!("synced with {}: {what}", servers[i]);
                            }
                            status.synced = true;
                            status.server = Some(servers[i].clone());
                            status.adjustment = Some(what);
                            status.state = format!("synced with {}", servers[i]);
                            release.now(&format!("synced with {}", servers[i]));
                            retry = Duration::from_secs(1);
                            last_error.clear();
                            Some(POLL)
                        }
                        Err(e) => {
                            let e = basalt_sys::error_chain(&e);
                            status.state = format!("cannot set the clock: {e}");
                            if e != last_error {
                                tracing::warn!("{e}");
                                last_error = e;
                            }
                            Some(POLL)
                        }
                    }
                }
                None => {
                    let errors: Vec<String> = status
                        .servers
                        .iter()
                        .map(|s| format!("{}: {}", s.server, s.error))
                        .collect();
                    let e = errors.join("; ");
                    status.state = format!("no answer: {e}");
                    if e != last_error {
                        tracing::warn!(
                            error = %e,
                            next_try_s = retry.as_secs(),
                            "no time server answered"
                        );
                        last_error = e;
                    }
                    let wait = retry;
                    retry = (retry * 2).min(RETRY_MAX);
                    Some(if status.synced { POLL } else { wait })
                }
            }
        };
        publish(status.clone());
        last = Some(status);
        let sleep = async {
            match next {
                Some(d) => tokio::time::sleep(d).await,
                None => futures::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {}
            r = server_changes.next() => {
                retry = Duration::from_secs(1);
                if r.is_err() {
                    // No more changes come: poll on the schedule alone.
                    tokio::time::sleep(next.unwrap_or(POLL)).await;
                }
            }
            r = config.next() => {
                if r.is_err() {
                    // Fell behind the store's history: watch again from now (the pass above
                    // reads the config as it is).
                    config = store.watch_id(config_kind.clone(), ACTIVE_ID, None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
