//! `cluster create --publish HOST_PORT:NODE_PORT`: a port on the host that reaches a port of
//! the cluster's nodes (a NodePort), on either provisioner.
//!
//! The nodes live on a segment in the cluster's own network namespace, which the host may not
//! route to (and in CI its traffic to it is filtered), so publishing is a small TCP forwarder:
//! it listens in the host's namespace and opens each upstream connection from inside the
//! cluster's (the connecting thread enters it), trying the nodes in order until one answers —
//! a NodePort answers on every node. A node that did not answer is tried last for 30 s, as a
//! load balancer's health check would set it aside: a node that reboots does not cost every
//! connection a timeout. `cluster create` starts one detached forwarder per
//! published port (`osctl cluster forward`, recorded in the cluster's state) and `cluster
//! destroy` stops them.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// One `--publish`: `[HOST_IP:]HOST_PORT:NODE_PORT` (the host side defaults to 127.0.0.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish {
    pub listen: SocketAddr,
    pub node_port: u16,
}

impl std::str::FromStr for Publish {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "--publish {s:?}: {why} (expected [HOST_IP:]HOST_PORT:NODE_PORT, e.g. 8080:30080)"
            )
        };
        let (host, node) = s.rsplit_once(':').ok_or_else(|| bad("no NODE_PORT"))?;
        let node_port: u16 = node
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("NODE_PORT is not a port"))?;
        let (ip, port) = match host.rsplit_once(':') {
            Some((ip, port)) => (
                ip.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .map_err(|_| bad("HOST_IP is not an address"))?,
                port,
            ),
            None => (IpAddr::V4(Ipv4Addr::LOCALHOST), host),
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("HOST_PORT is not a port"))?;
        Ok(Publish {
            listen: SocketAddr::new(ip, port),
            node_port,
        })
    }
}

/// Runs a forwarder until killed: accepts on `listen`, connects from inside `netns` to the
/// first of `nodes` that answers on `node_port`, and copies both ways.
pub fn forward(
    netns: &str,
    listen: SocketAddr,
    nodes: &[IpAddr],
    node_port: u16,
) -> anyhow::Result<()> {
    let ns_path = format!("/run/netns/{netns}");
    let ns = std::fs::File::open(&ns_path).with_context(|| format!("cannot open {ns_path}"))?;
    let listener =
        TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    if nodes.is_empty() {
        bail!("no nodes to forward to");
    }
    let upstreams: Vec<SocketAddr> = nodes
        .iter()
        .map(|ip| SocketAddr::new(*ip, node_port))
        .collect();
    let failed: Failed = Arc::default();
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let (Ok(ns), upstreams, failed) = (ns.try_clone(), upstreams.clone(), failed.clone())
        else {
            continue;
        };
        std::thread::spawn(move || {
            // This thread alone enters the cluster's namespace: the socket it opens is there.
            if nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                return;
            }
            let now = Instant::now();
            let tries = {
                let f = failed.lock().unwrap_or_else(|p| p.into_inner());
                order(&upstreams, &f, now)
            };
            let up = tries.iter().find_map(|a| {
                let r = TcpStream::connect_timeout(a, Duration::from_secs(3));
                let mut f = failed.lock().unwrap_or_else(|p| p.into_inner());
                match r {
                    Ok(s) => {
                        f.remove(a);
                        Some(s)
                    }
                    Err(_) => {
                        f.insert(*a, Instant::now());
                        None
                    }
                }
            });
            let Some(up) = up else {
                let _ = conn.shutdown(Shutdown::Both);
                return;
            };
            pipe(conn, up);
        });
    }
    Ok(())
}

/// When each node last failed to answer.
type Failed = Arc<Mutex<HashMap<SocketAddr, Instant>>>;

/// How long a node that did not answer is tried after the others (a rebooting node would
/// otherwise cost every connection a connect timeout).
const SET_ASIDE: Duration = Duration::from_secs(30);

/// The order to try the nodes in: those that have not failed within [`SET_ASIDE`], in their
/// order, then the others, the longest-failed first (the set is never empty of choices).
fn order(
    upstreams: &[SocketAddr],
    failed: &HashMap<SocketAddr, Instant>,
    now: Instant,
) -> Vec<SocketAddr> {
    let recent = |a: &SocketAddr| {
        failed
            .get(a)
            .is_some_and(|t| now.saturating_duration_since(*t) < SET_ASIDE)
    };
    let mut out: Vec<SocketAddr> = upstreams.iter().filter(|a| !recent(a)).copied().collect();
    let mut aside: Vec<SocketAddr> = upstreams.iter().filter(|a| recent(a)).copied().collect();
    aside.sort_by_key(|a| failed.get(a).copied());
    out.extend(aside);
    out
}

/// Copies both ways until each side has closed its half.
fn pipe(a: TcpStream, b: TcpStream) {
    let (Ok(mut a2), Ok(mut b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let there = std::thread::spawn(move || {
        let _ = std::io::copy(&mut a2, &mut b2);
        let _ = b2.shutdown(Shutdown::Write);
    });
    let (mut a, mut b) = (a, b);
    let _ = std::io::copy(&mut b, &mut a);
    let _ = a.shutdown(Shutdown::Write);
    let _ = there.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_that_did_not_answer_is_tried_last_for_a_while() {
        let a: Vec<SocketAddr> = ["10.5.0.3:30080", "10.5.0.4:30080", "10.5.0.2:30080"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let now = Instant::now();
        let mut failed = HashMap::new();
        assert_eq!(order(&a, &failed, now), a);
        failed.insert(a[0], now - Duration::from_secs(1));
        assert_eq!(order(&a, &failed, now), vec![a[1], a[2], a[0]]);
        // Two set aside: the one that failed longest ago first.
        failed.insert(a[1], now - Duration::from_secs(5));
        assert_eq!(order(&a, &failed, now), vec![a[2], a[1], a[0]]);
        // Past the time set aside, back in its place.
        assert_eq!(order(&a, &failed, now + SET_ASIDE * 2), a);
    }

    #[test]
    fn publish_reads_host_and_node_ports() {
        let p: Publish = "8080:30080".parse().unwrap();
        assert_eq!(p.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(p.node_port, 30080);
        let p: Publish = "0.0.0.0:80:30080".parse().unwrap();
        assert_eq!(p.listen, "0.0.0.0:80".parse().unwrap());
        for bad in ["8080", "x:30080", "8080:0", "1.2.3:80:30080", ""] {
            let e = bad.parse::<Publish>().unwrap_err();
            assert!(
                e.contains("--publish") && e.contains("HOST_PORT:NODE_PORT"),
                "{e}"
            );
        }
    }
}
