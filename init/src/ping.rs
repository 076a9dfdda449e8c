//! ICMP echo from the node (the `Ping` RPC): a raw socket per call, IPv4 or IPv6. A node has no
//! shell, so this is how an operator checks what it can reach — a gateway, another node over
//! KubeSpan — from the node itself.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrStorage, sockopt,
};
use nix::sys::time::TimeVal;

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;
/// Bytes after the 8-byte ICMP header, as `ping` sends by default.
const PAYLOAD: usize = 56;

/// Calls in flight at once get different identifiers (a raw socket sees every echo reply).
static NEXT_ID: AtomicU16 = AtomicU16::new(0);

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub count: u32,
    /// How long to wait for each reply.
    pub timeout: Duration,
    /// Pause between one request's end (reply or timeout) and the next request.
    pub interval: Duration,
}

/// Sends `count` echo requests to `to`, one at a time; the round-trip time of each, in order,
/// or `None` where no reply came within the timeout. Fails when a request cannot be sent at all
/// (no route, say), naming the address.
pub fn ping(to: IpAddr, o: &Options) -> io::Result<Vec<Option<Duration>>> {
    let v6 = to.is_ipv6();
    let (family, proto) = if v6 {
        (AddressFamily::Inet6, SockProtocol::IcmpV6)
    } else {
        (AddressFamily::Inet, SockProtocol::Icmp)
    };
    let fd = socket::socket(family, SockType::Raw, SockFlag::SOCK_CLOEXEC, proto)
        .map_err(|e| err(e, "opening a raw ICMP socket".into()))?;
    let dest = SockaddrStorage::from(SocketAddr::new(to, 0));
    let id = u16::try_from(std::process::id() & 0xffff)
        .unwrap_or(0)
        .wrapping_add(NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let mut out = Vec::with_capacity(o.count as usize);
    let mut buf = [0u8; 1500];
    for n in 0..o.count {
        let seq = u16::try_from(n + 1).unwrap_or(u16::MAX);
        let packet = echo_request(v6, id, seq);
        let sent = Instant::now();
        socket::sendto(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &packet,
            &dest,
            MsgFlags::empty(),
        )
        .map_err(|e| err(e, format!("sending an echo request to {to}")))?;
        let deadline = sent + o.timeout;
        let rtt = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break None;
            }
            // A zero timeval means "block forever"; never ask for less than a microsecond.
            let tv = TimeVal::new(left.as_secs() as _, (left.subsec_micros().max(1)) as _);
            socket::setsockopt(&fd, sockopt::ReceiveTimeout, &tv).map_err(io::Error::from)?;
            match socket::recvfrom::<SockaddrStorage>(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &mut buf,
            ) {
                Ok((len, from)) => {
                    let from_ok = from.is_some_and(|f| same_ip(&f, to));
                    if from_ok && echo_reply(v6, &buf[..len]) == Some((id, seq)) {
                        break Some(sent.elapsed());
                    }
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(e) => return Err(err(e, format!("receiving from {to}"))),
            }
        };
        out.push(rtt);
        if n + 1 < o.count {
            std::thread::sleep(o.interval);
        }
    }
    Ok(out)
}

/// An errno with what was being done: "sending an echo request to 10.0.0.1: ENETUNREACH: ...".
fn err(e: Errno, what: String) -> io::Error {
    io::Error::new(io::Error::from(e).kind(), format!("{what}: {}", e.desc()))
}

fn same_ip(a: &SockaddrStorage, to: IpAddr) -> bool {
    match to {
        IpAddr::V4(v4) => a.as_sockaddr_in().is_some_and(|s| s.ip() == v4),
        IpAddr::V6(v6) => a.as_sockaddr_in6().is_some_and(|s| s.ip() == v6),
    }
}

/// An echo request: type, code, checksum, identifier, sequence number, payload. The kernel fills
/// in an ICMPv6 checksum itself (it covers a pseudo-header only it knows); ICMPv4's is ours.
pub fn echo_request(v6: bool, id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![0u8; 8 + PAYLOAD];
    p[0] = if v6 { ECHO_REQUEST_V6 } else { ECHO_REQUEST_V4 };
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in p[8..].iter_mut().enumerate() {
        *b = u8::try_from(i % 256).unwrap_or(0);
    }
    if !v6 {
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
    }
    p
}

/// The identifier and sequence number of an echo reply as a raw socket delivers it (IPv4 with
/// its IP header in front, IPv6 without), or `None` for anything else.
pub fn echo_reply(v6: bool, packet: &[u8]) -> Option<(u16, u16)> {
    let icmp = if v6 {
        packet
    } else {
        let ihl = usize::from(packet.first()? & 0x0f) * 4;
        packet.get(ihl..)?
    };
    let want = if v6 { ECHO_REPLY_V6 } else { ECHO_REPLY_V4 };
    if icmp.len() < 8 || icmp[0] != want || icmp[1] != 0 {
        return None;
    }
    Some((
        u16::from_be_bytes([icmp[4], icmp[5]]),
        u16::from_be_bytes([icmp[6], icmp[7]]),
    ))
}

/// The Internet checksum (RFC 1071): one's complement of the one's-complement sum of 16-bit
/// words.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // Folded: it fits in 16 bits.
    !u16::try_from(sum & 0xffff).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_of_a_packet_with_its_checksum_in_place_is_zero() {
        let p = echo_request(false, 0x1234, 7);
        assert_eq!(checksum(&p), 0);
        // RFC 1071's worked example: 0001 f203 f4f5 f6f7 sums to ddf2, complemented 220d.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
        // An odd byte is padded with a zero on the right.
        assert_eq!(checksum(&[0x01]), !0x0100);
    }

    #[test]
    fn a_reply_is_recognised_by_type_identifier_and_sequence() {
        // IPv4: a 20-byte IP header in front.
        let mut reply = vec![0x45u8];
        reply.extend([0u8; 19]);
        let mut icmp = echo_request(false, 0xbeef, 3);
        icmp[0] = ECHO_REPLY_V4;
        reply.extend(&icmp);
        assert_eq!(echo_reply(false, &reply), Some((0xbeef, 3)));
        // Our own request looped back is not a reply.
        let mut req = vec![0x45u8];
        req.extend([0u8; 19]);
        req.extend(echo_request(false, 0xbeef, 3));
        assert_eq!(echo_reply(false, &req), None);
        // IPv6: no header in front; type 129.
        let mut v6 = echo_request(true, 9, 1);
        assert_eq!(echo_reply(true, &v6), None);
        v6[0] = ECHO_REPLY_V6;
        assert_eq!(echo_reply(true, &v6), Some((9, 1)));
        // Short or empty input is not a reply.
        assert_eq!(echo_reply(true, &v6[..7]), None);
        assert_eq!(echo_reply(false, &[]), None);
        assert_eq!(echo_reply(false, &[0x4f, 0, 0]), None);
    }
}
