//! The DHCPv4 client as a state machine with no I/O (RFC 2131): it is told the time and the
//! packets that arrive, and answers with what to send and what changed. The device side
//! ([`run`]) owns the socket and the clock and turns leases into the `dhcp` layer.
//!
//! INIT → (DISCOVER) SELECTING → (REQUEST) REQUESTING → BOUND → at T1 RENEWING (unicast
//! REQUEST to the server) → at T2 REBINDING (broadcast REQUEST) → at the lease's end the
//! address is dropped and it starts over. A NAK anywhere starts over at once.

mod client;

use std::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable as _, Encodable as _};

pub use client::{DhcpController, DhcpError, Leases, lease_specs, run};

/// What a lease gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub server: Ipv4Addr,
    pub routers: Vec<Ipv4Addr>,
    /// Classless static routes (option 121): destination, prefix, gateway.
    pub routes: Vec<(Ipv4Addr, u8, Ipv4Addr)>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub hostname: Option<String>,
    pub ntp: Vec<Ipv4Addr>,
    pub lease_time: Duration,
    pub t1: Duration,
    pub t2: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Init,
    Selecting,
    Requesting { offer: Box<Lease> },
    Bound,
    Renewing,
    Rebinding,
    Released,
}

/// Where a packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    Broadcast,
    Server(Ipv4Addr),
}

/// What the device side must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send {
        to: To,
        packet: Vec<u8>,
    },
    /// A new lease, or the same lease renewed (addresses, routes, names as given).
    Bound(Box<Lease>),
    /// The lease is gone (expired, NAKed or released): drop what it gave.
    Unbound,
}

/// Retransmission timing (RFC 2131 §4.1: 4 s doubling to 64 s; tests shorten it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub first_retry: Duration,
    pub max_retry: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            first_retry: Duration::from_secs(4),
            max_retry: Duration::from_secs(64),
        }
    }
}

/// One link's DHCP client. Times are durations since any fixed origin the caller chooses.
#[derive(Debug)]
pub struct Client {
    mac: [u8; 6],
    hostname: Option<String>,
    timing: Timing,
    state: State,
    xid: u32,
    lease: Option<(Lease, Duration)>,
    /// When to act next, and the retry interval in use.
    deadline: Duration,
    retry: Duration,
    started: Duration,
}

const PARAMS: &[OptionCode] = &[
    OptionCode::SubnetMask,
    OptionCode::Router,
    OptionCode::DomainNameServer,
    OptionCode::Hostname,
    OptionCode::DomainName,
    OptionCode::NtpServers,
    OptionCode::ClasslessStaticRoute,
    OptionCode::AddressLeaseTime,
    OptionCode::Renewal,
    OptionCode::Rebinding,
];

impl Client {
    /// `xid` seeds the transaction ids (random in the device, fixed in tests).
    pub fn new(mac: [u8; 6], hostname: Option<String>, xid: u32, timing: Timing) -> Self {
        Client {
            mac,
            hostname,
            timing,
            state: State::Init,
            xid,
            lease: None,
            deadline: Duration::ZERO,
            retry: timing.first_retry,
            started: Duration::ZERO,
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref().map(|(l, _)| l)
    }

    /// When [`Client::poll`] next has something to do.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    fn message(&self, kind: MessageType, ciaddr: Ipv4Addr) -> Message {
        let mut m = Message::new_with_id(
            self.xid,
            ciaddr,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &self.mac,
        );
        m.set_opcode(Opcode::BootRequest);
        if ciaddr.is_unspecified() {
            // No address to receive a unicast reply on yet: ask for broadcast replies.
            m.set_flags(Flags::default().set_broadcast());
        }
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        let mut id = vec![1u8];
        id.extend_from_slice(&self.mac);
        o.insert(DhcpOption::ClientIdentifier(id));
        if kind != MessageType::Release {
            o.insert(DhcpOption::ParameterRequestList(PARAMS.to_vec()));
            if let Some(h) = &self.hostname {
                o.insert(DhcpOption::Hostname(h.clone()));
            }
        }
        m
    }

    fn send(&self, to: To, m: &Message) -> Action {
        Action::Send {
            to,
            // Encoding a message we built cannot fail; an empty packet would only be dropped.
            packet: m.to_vec().unwrap_or_default(),
        }
    }

    fn discover(&mut self, now: Duration) -> Vec<Action> {
        self.xid = self.xid.wrapping_add(1);
        self.state = State::Selecting;
        self.retry = self.timing.first_retry;
        self.deadline = now + self.retry;
        self.started = now;
        let m = self.message(MessageType::Discover, Ipv4Addr::UNSPECIFIED);
        vec![self.send(To::Broadcast, &m)]
    }

    fn request(&self, offer: &Lease) -> Action {
        let mut m = self.message(MessageType::Request, Ipv4Addr::UNSPECIFIED);
        m.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offer.address));
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier(offer.server));
        self.send(To::Broadcast, &m)
    }

    /// Starts (or restarts) from INIT.
    pub fn start(&mut self, now: Duration) -> Vec<Action> {
        self.discover(now)
    }

    /// Timers: retransmissions, T1, T2 and the lease's end.
    pub fn poll(&mut self, now: Duration) -> Vec<Action> {
        if now < self.deadline {
            return Vec::new();
        }
        match self.state.clone() {
            State::Init => self.discover(now),
            State::Selecting => {
                self.retry = (self.retry * 2).min(self.timing.max_retry);
                self.deadline = now + self.retry;
                let m = self.message(MessageType::Discover, Ipv4Addr::UNSPECIFIED);
                vec![self.send(To::Broadcast, &m)]
            }
            State::Requesting { offer } => {
                if self.retry >= self.timing.max_retry {
                    // No ACK after every retry: start over.
                    return self.discover(now);
                }
                self.retry = (self.retry * 2).min(self.timing.max_retry);
                self.deadline = now + self.retry;
                vec![self.request(&offer)]
            }
            State::Bound | State::Renewing | State::Rebinding => {
                let Some((lease, at)) = self.lease.clone() else {
                    return self.discover(now);
                };
                let (t1, t2, end) = (at + lease.t1, at + lease.t2, at + lease.lease_time);
                if now >= end {
                    self.lease = None;
                    let mut out = vec![Action::Unbound];
                    out.extend(self.discover(now));
                    return out;
                }
                if now < t1 {
                    self.deadline = t1;
                    return Vec::new();
                }
                let (state, to, until) = if now >= t2 {
                    (State::Rebinding, To::Broadcast, end)
                } else {
                    (State::Renewing, To::Server(lease.server), t2)
                };
                self.state = state;
                // RFC 2131 §4.4.5: retry after half the time left (at least the first retry
                // interval). Capped at the longest retry interval, so a server that comes back
                // is found within a minute rather than hours into a long lease.
                let half = (until.saturating_sub(now)) / 2;
                let wait = half.clamp(self.timing.first_retry, self.timing.max_retry);
                self.deadline = (now + wait).min(until);
                let m = self.message(MessageType::Request, lease.address);
                vec![self.send(to, &m)]
            }
            State::Released => {
                self.deadline = Duration::MAX;
                Vec::new()
            }
        }
    }

    /// A packet arrived on the client's port.
    pub fn handle(&mut self, now: Duration, packet: &[u8]) -> Vec<Action> {
        let Ok(m) = Message::from_bytes(packet) else {
            return Vec::new();
        };
        // dhcproto's chaddr() slices by the packet's hlen, which anyone on the link sets: more
        // than the field's 16 bytes would panic (found by fuzz/fuzz_targets/dhcp.rs).
        if m.opcode() != Opcode::BootReply
            || m.xid() != self.xid
            || usize::from(m.hlen()) > 16
            || m.chaddr().get(..6) != Some(&self.mac[..])
        {
            return Vec::new();
        }
        let Some(kind) = m.opts().msg_type() else {
            return Vec::new();
        };
        match (&self.state, kind) {
            (State::Selecting, MessageType::Offer) => {
                let Some(offer) = lease_of(&m) else {
                    return Vec::new();
                };
                let a = self.request(&offer);
                self.state = State::Requesting {
                    offer: Box::new(offer),
                };
                self.retry = self.timing.first_retry;
                self.deadline = now + self.retry;
                vec![a]
            }
            (State::Requesting { .. } | State::Renewing | State::Rebinding, MessageType::Ack) => {
                let Some(mut lease) = lease_of(&m) else {
                    return Vec::new();
                };
                if let (State::Renewing | State::Rebinding, Some((old, _))) =
                    (&self.state, &self.lease)
                {
                    // A renewal ACK may leave out options the first one had.
                    if lease.routers.is_empty() {
                        lease.routers = old.routers.clone();
                    }
                }
                self.state = State::Bound;
                self.deadline = now + lease.t1;
                self.lease = Some((lease.clone(), now));
                vec![Action::Bound(Box::new(lease))]
            }
            (State::Requesting { .. } | State::Renewing | State::Rebinding, MessageType::Nak) => {
                let had = self.lease.take().is_some();
                let mut out = if had {
                    vec![Action::Unbound]
                } else {
                    Vec::new()
                };
                out.extend(self.discover(now));
                out
            }
            _ => Vec::new(),
        }
    }

    /// Gives the lease back (shutdown): a RELEASE to the server, and the address goes.
    pub fn release(&mut self) -> Vec<Action> {
        let Some((lease, _)) = self.lease.take() else {
            self.state = State::Released;
            return Vec::new();
        };
        self.xid = self.xid.wrapping_add(1);
        let mut m = self.message(MessageType::Release, lease.address);
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier(lease.server));
        self.state = State::Released;
        self.deadline = Duration::MAX;
        vec![self.send(To::Server(lease.server), &m), Action::Unbound]
    }
}

/// The lease a server's OFFER or ACK describes; `None` without the fields a lease needs.
fn lease_of(m: &Message) -> Option<Lease> {
    let o = m.opts();
    let server = match o.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => m.siaddr(),
    };
    let address = m.yiaddr();
    if address.is_unspecified() || server.is_unspecified() {
        return None;
    }
    let prefix = match o.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(mask)) => {
            u8::try_from(u32::from(*mask).leading_ones()).unwrap_or(32)
        }
        _ => 24,
    };
    let lease_time = match o.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(s)) => Duration::from_secs(u64::from(*s)),
        _ => Duration::from_secs(3600),
    };
    let t1 = match o.get(OptionCode::Renewal) {
        Some(DhcpOption::Renewal(s)) => Duration::from_secs(u64::from(*s)),
        _ => lease_time / 2,
    };
    let t2 = match o.get(OptionCode::Rebinding) {
        Some(DhcpOption::Rebinding(s)) => Duration::from_secs(u64::from(*s)),
        _ => lease_time * 7 / 8,
    };
    Some(Lease {
        address,
        prefix,
        server,
        routers: match o.get(OptionCode::Router) {
            Some(DhcpOption::Router(r)) => r.clone(),
            _ => Vec::new(),
        },
        routes: match o.get(OptionCode::ClasslessStaticRoute) {
            Some(DhcpOption::ClasslessStaticRoute(r)) => r
                .iter()
                .map(|(net, gw)| (net.network(), net.prefix_len(), *gw))
                .collect(),
            _ => Vec::new(),
        },
        dns: match o.get(OptionCode::DomainNameServer) {
            Some(DhcpOption::DomainNameServer(d)) => d.clone(),
            _ => Vec::new(),
        },
        domain: match o.get(OptionCode::DomainName) {
            Some(DhcpOption::DomainName(d)) => Some(d.clone()),
            _ => None,
        },
        hostname: match o.get(OptionCode::Hostname) {
            Some(DhcpOption::Hostname(h)) => Some(h.clone()),
            _ => None,
        },
        ntp: match o.get(OptionCode::NtpServers) {
            Some(DhcpOption::NtpServers(n)) => n.clone(),
            _ => Vec::new(),
        },
        lease_time,
        t1: t1.min(lease_time),
        t2: t2.clamp(t1.min(lease_time), lease_time),
    })
}

#[cfg(test)]
mod tests;
