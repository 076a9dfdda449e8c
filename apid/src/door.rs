//! The front door's limits: what the network may ask of apid before — and without — a client
//! certificate saying who is asking. In maintenance mode every call is such a call, and its
//! `ApplyConfiguration` ends in init's config parser; these limits keep a flood of them from
//! taking the node's memory or its API:
//!
//! - **connections**: at most [`Limits::conns_per_ip`] open from one address, and at most
//!   [`Limits::handshakes`] TLS handshakes under way at once (a connection over either is
//!   closed at once);
//! - **calls without a certificate**: at most [`Limits::rate`] a second from one address (a
//!   token bucket holding [`Limits::burst`]), at most [`Limits::in_flight`] under way at once,
//!   and a request of at most [`Limits::max_request`] bytes, read whole (within
//!   [`Limits::request_read`]) by apid before init sees a byte of it. Beyond any of them the call gets `RESOURCE_EXHAUSTED` with the limit.
//!
//! Calls with a certificate from the OS CA pass the connection limits only: they come from the
//! cluster's own operators and nodes. The bucket arithmetic is pure (the caller owns the
//! clock), like [`basalt_resources::ratelimit`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The front door's numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub conns_per_ip: usize,
    pub handshakes: usize,
    /// Calls without a certificate, per address: tokens a second, and the bucket's size.
    pub rate: f64,
    pub burst: f64,
    pub in_flight: usize,
    pub max_request: usize,
    /// How long such a call has to send its whole request (a sender that trickles it holds
    /// one of the few places under way).
    pub request_read: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            conns_per_ip: 32,
            handshakes: 64,
            rate: 5.0,
            burst: 20.0,
            in_flight: 4,
            // A config may be 4 MiB (the reader's limit); the gRPC frame adds a few bytes.
            max_request: basalt_config::yaml::MAX_BYTES + 64 * 1024,
            request_read: Duration::from_secs(30),
        }
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` held.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    /// Takes a token if there is one at `now`.
    pub fn take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        let since = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + since * rate).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why the door said no.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("too many calls without a client certificate from {ip}: at most {rate} a second")]
    Rate { ip: IpAddr, rate: String },
    #[error("{0} calls without a client certificate are under way: try again when they are done")]
    Busy(usize),
    #[error("a call without a client certificate may send at most {0} bytes")]
    TooLarge(usize),
    #[error("a call without a client certificate must send its request within {0:?}")]
    Slow(Duration),
}

impl From<Refused> for tonic::Status {
    fn from(r: Refused) -> tonic::Status {
        tonic::Status::resource_exhausted(r.to_string())
    }
}

/// The door's state, shared by every connection.
#[derive(Debug)]
pub struct Door {
    pub limits: Limits,
    conns: Mutex<HashMap<IpAddr, usize>>,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
    handshakes: Arc<Semaphore>,
    in_flight: Arc<Semaphore>,
}

/// An open connection, counted against its address until dropped.
#[derive(Debug)]
pub struct ConnGuard {
    door: Arc<Door>,
    ip: IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut conns = self.door.conns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = conns.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                conns.remove(&self.ip);
            }
        }
    }
}

/// How long an address's bucket is kept once full again (and so no different from a new one).
const FORGET_AFTER: Duration = Duration::from_secs(60);

impl Door {
    pub fn new(limits: Limits) -> Arc<Door> {
        Arc::new(Door {
            handshakes: Arc::new(Semaphore::new(limits.handshakes)),
            in_flight: Arc::new(Semaphore::new(limits.in_flight)),
            limits,
            conns: Mutex::default(),
            buckets: Mutex::default(),
        })
    }

    /// A new connection from `ip`, or `None` when that address has too many open.
    pub fn connection(self: &Arc<Door>, ip: IpAddr) -> Option<ConnGuard> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let n = conns.entry(ip).or_default();
        if *n >= self.limits.conns_per_ip {
            return None;
        }
        *n += 1;
        Some(ConnGuard {
            door: self.clone(),
            ip,
        })
    }

    /// A slot for a TLS handshake, or `None` when too many are under way.
    pub fn handshake(&self) -> Option<OwnedSemaphorePermit> {
        self.handshakes.clone().try_acquire_owned().ok()
    }

    /// Lets a call without a certificate from `ip` in at `now`: the permit is held until it
    /// is answered.
    pub fn anonymous_call(
        &self,
        ip: IpAddr,
        now: Instant,
    ) -> Result<OwnedSemaphorePermit, Refused> {
        {
            let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            // Addresses idle long enough to be full again are forgotten: the map stays as
            // small as the set of recent callers.
            if buckets.len() > 1024 {
                buckets.retain(|_, b| now.saturating_duration_since(b.at) < FORGET_AFTER);
            }
            let b = buckets
                .entry(ip)
                .or_insert_with(|| Bucket::full(self.limits.burst, now));
            if !b.take(self.limits.rate, self.limits.burst, now) {
                return Err(Refused::Rate {
                    ip,
                    rate: format!("{}", self.limits.rate),
                });
            }
        }
        self.in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Busy(self.limits.in_flight))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_lets_a_burst_through_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::full(3.0, t0);
        assert!((0..3).all(|_| b.take(2.0, 3.0, t0)));
        assert!(!b.take(2.0, 3.0, t0));
        // Half a second at 2 a second: one more.
        let t1 = t0 + Duration::from_millis(500);
        assert!(b.take(2.0, 3.0, t1));
        assert!(!b.take(2.0, 3.0, t1));
        // A long pause refills to the burst, no further.
        let t2 = t1 + Duration::from_secs(60);
        assert!((0..3).all(|_| b.take(2.0, 3.0, t2)));
        assert!(!b.take(2.0, 3.0, t2));
    }

    #[test]
    fn the_door_counts_per_address_and_in_flight() {
        let door = Door::new(Limits {
            conns_per_ip: 2,
            handshakes: 1,
            rate: 1.0,
            burst: 3.0,
            in_flight: 2,
            max_request: 10,
            request_read: Duration::from_secs(1),
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c1 = door.connection(a).unwrap();
        let _c2 = door.connection(a).unwrap();
        assert!(door.connection(a).is_none(), "a third from one address");
        assert!(
            door.connection(b).is_some(),
            "another address has its own count"
        );
        drop(c1);
        assert!(
            door.connection(a).is_some(),
            "a closed connection frees its place"
        );

        let h = door.handshake().unwrap();
        assert!(door.handshake().is_none());
        drop(h);
        assert!(door.handshake().is_some());

        let now = Instant::now();
        let p1 = door.anonymous_call(a, now).unwrap();
        let _p2 = door.anonymous_call(a, now).unwrap();
        assert_eq!(door.anonymous_call(b, now).unwrap_err(), Refused::Busy(2));
        drop(p1);
        // The third token of a's bucket; the fourth is refused by the rate.
        let _p3 = door.anonymous_call(a, now).unwrap();
        let e = door.anonymous_call(a, now).unwrap_err();
        assert_eq!(
            e.to_string(),
            "too many calls without a client certificate from 10.0.0.1: at most 1 a second"
        );
    }
}
