//! The state machine against a fake server (packets built with dhcproto), on fake time.

use std::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
use dhcproto::{Decodable as _, Encodable as _};

use super::*;

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn timing() -> Timing {
    Timing {
        first_retry: s(1),
        max_retry: s(8),
    }
}

/// The one packet sent, decoded.
fn sent(actions: &[Action]) -> (To, Message) {
    let sends: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { to, packet } => Some((*to, Message::from_bytes(packet).unwrap())),
            _ => None,
        })
        .collect();
    assert_eq!(sends.len(), 1, "{actions:?}");
    sends.into_iter().next().unwrap()
}

fn reply(to: &Message, kind: MessageType, lease: u32, t1: u32, t2: u32) -> Vec<u8> {
    let mut m = Message::new_with_id(
        to.xid(),
        Ipv4Addr::UNSPECIFIED,
        ADDR,
        SERVER,
        Ipv4Addr::UNSPECIFIED,
        &MAC,
    );
    m.set_opcode(Opcode::BootReply);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ServerIdentifier(SERVER));
    o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
    o.insert(DhcpOption::Router(vec![SERVER]));
    o.insert(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
        10, 0, 2, 3,
    )]));
    o.insert(DhcpOption::DomainName("example.internal".into()));
    o.insert(DhcpOption::AddressLeaseTime(lease));
    o.insert(DhcpOption::Renewal(t1));
    o.insert(DhcpOption::Rebinding(t2));
    m.to_vec().unwrap()
}

fn bound(c: &mut Client, now: Duration) -> Lease {
    let (to, discover) = sent(&c.start(now));
    assert_eq!(to, To::Broadcast);
    assert_eq!(discover.opts().msg_type(), Some(MessageType::Discover));
    assert!(
        discover.flags().broadcast(),
        "replies must be broadcast before we have an address"
    );
    let (_, request) = sent(&c.handle(now, &reply(&discover, MessageType::Offer, 100, 50, 80)));
    assert_eq!(request.opts().msg_type(), Some(MessageType::Request));
    assert_eq!(
        request
            .opts()
            .get(dhcproto::v4::OptionCode::RequestedIpAddress),
        Some(&DhcpOption::RequestedIpAddress(ADDR))
    );
    let out = c.handle(now, &reply(&request, MessageType::Ack, 100, 50, 80));
    match &out[..] {
        [Action::Bound(l)] => (**l).clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_reply_with_a_hardware_address_length_past_its_field_is_ignored() {
    let mut c = Client::new(MAC, None, 7, timing());
    let (_, discover) = sent(&c.start(s(0)));
    let mut offer = reply(&discover, MessageType::Offer, 100, 50, 80);
    // hlen (byte 2) says 58 bytes; chaddr holds 16.
    offer[2] = 58;
    assert!(c.handle(s(1), &offer).is_empty());
    assert_eq!(c.state(), &State::Selecting);
}

#[test]
fn discover_offer_request_ack() {
    let mut c = Client::new(MAC, Some("node1".into()), 7, timing());
    let l = bound(&mut c, s(0));
    assert_eq!(c.state(), &State::Bound);
    assert_eq!((l.address, l.prefix, l.server), (ADDR, 24, SERVER));
    assert_eq!(l.routers, [SERVER]);
    assert_eq!(l.dns, [Ipv4Addr::new(10, 0, 2, 3)]);
    assert_eq!(l.domain.as_deref(), Some("example.internal"));
    assert_eq!((l.lease_time, l.t1, l.t2), (s(100), s(50), s(80)));
    // Nothing to do until T1.
    assert_eq!(c.deadline(), s(50));
    assert!(c.poll(s(49)).is_empty());
}

#[test]
fn retransmits_with_back_off_and_ignores_strangers() {
    let mut c = Client::new(MAC, None, 7, timing());
    let (_, d) = sent(&c.start(s(0)));
    let mut times = Vec::new();
    let mut now = s(0);
    for _ in 0..5 {
        now = c.deadline();
        sent(&c.poll(now));
        times.push(now.as_secs());
    }
    assert_eq!(times, [1, 3, 7, 15, 23], "1 s doubling, capped at 8 s");
    // A reply for another transaction or another machine is ignored.
    let mut other = d.clone();
    other.set_xid(d.xid() + 100);
    assert!(
        c.handle(now, &reply(&other, MessageType::Offer, 100, 50, 80))
            .is_empty()
    );
    assert!(c.handle(now, b"not a dhcp packet").is_empty());
}

#[test]
fn renews_at_t1_by_unicast_then_rebinds_at_t2_by_broadcast_then_expires() {
    let mut c = Client::new(MAC, None, 7, timing());
    bound(&mut c, s(0));
    let (to, renew) = sent(&c.poll(s(50)));
    assert_eq!(to, To::Server(SERVER));
    assert_eq!(renew.ciaddr(), ADDR);
    assert_eq!(c.state(), &State::Renewing);
    // No answer: retries within T2, then rebinds by broadcast at T2.
    let now = loop {
        let now = c.deadline();
        let (to, _) = sent(&c.poll(now));
        if to == To::Broadcast {
            break now;
        }
        assert!(now < s(80));
    };
    assert_eq!(now, s(80));
    assert_eq!(c.state(), &State::Rebinding);
    // Still no answer: the address is kept until the lease ends, then dropped.
    while c.deadline() < s(100) {
        let now = c.deadline();
        assert!(!c.poll(now).contains(&Action::Unbound));
    }
    let out = c.poll(s(100));
    assert_eq!(out[0], Action::Unbound);
    assert_eq!(sent(&out).1.opts().msg_type(), Some(MessageType::Discover));
    assert_eq!(c.state(), &State::Selecting);
}

#[test]
fn a_renewal_ack_extends_the_lease() {
    let mut c = Client::new(MAC, None, 7, timing());
    bound(&mut c, s(0));
    let (_, renew) = sent(&c.poll(s(50)));
    let out = c.handle(s(51), &reply(&renew, MessageType::Ack, 100, 50, 80));
    assert!(matches!(&out[..], [Action::Bound(_)]));
    assert_eq!(c.state(), &State::Bound);
    assert_eq!(c.deadline(), s(101), "the next T1 counts from the renewal");
}

#[test]
fn a_nak_drops_the_lease_and_starts_over() {
    let mut c = Client::new(MAC, None, 7, timing());
    bound(&mut c, s(0));
    let (_, renew) = sent(&c.poll(s(50)));
    let out = c.handle(s(50), &reply(&renew, MessageType::Nak, 0, 0, 0));
    assert_eq!(out[0], Action::Unbound);
    assert_eq!(sent(&out).1.opts().msg_type(), Some(MessageType::Discover));
}

#[test]
fn release_sends_release_to_the_server() {
    let mut c = Client::new(MAC, None, 7, timing());
    bound(&mut c, s(0));
    let out = c.release();
    let (to, m) = sent(&out);
    assert_eq!(to, To::Server(SERVER));
    assert_eq!(m.opts().msg_type(), Some(MessageType::Release));
    assert_eq!(m.ciaddr(), ADDR);
    assert!(out.contains(&Action::Unbound));
    assert_eq!(c.state(), &State::Released);
    assert!(c.poll(s(1000)).is_empty());
}

#[test]
fn a_lease_becomes_the_dhcp_layer() {
    let mut c = Client::new(MAC, None, 7, timing());
    let l = bound(&mut c, s(0));
    let specs = lease_specs("eth0", &l);
    assert_eq!(specs.addresses[0].address.to_string(), "10.0.2.15/24");
    assert_eq!(specs.routes[0].destination.to_string(), "0.0.0.0/0");
    assert_eq!(specs.routes[0].gateway, Some(SERVER.into()));
    let r = specs.resolvers.unwrap();
    assert_eq!(r.search_domains, ["example.internal"]);
}
