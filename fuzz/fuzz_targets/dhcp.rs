//! The DHCP client's packet handling: an answer from anyone on the link, in every state the
//! client waits for one (selecting after DISCOVER; bound, renewing). The transaction id is set
//! to the client's so the fuzzer reaches past that check.
#![no_main]

use std::time::Duration;

use basalt_networkd::dhcp::{Action, Client, Timing};

fn xid_of(actions: &[Action]) -> Option<[u8; 4]> {
    actions.iter().find_map(|a| match a {
        Action::Send { packet, .. } if packet.len() >= 8 => packet[4..8].try_into().ok(),
        _ => None,
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut c = Client::new(
        [0x52, 0x54, 0, 0x12, 0x34, 0x56],
        Some("n1".into()),
        7,
        Timing::default(),
    );
    let sent = c.start(Duration::ZERO);
    let Some(xid) = xid_of(&sent) else { return };
    // The input is one or more packets, each preceded by a 2-byte length.
    let mut rest = data;
    let mut t = Duration::from_secs(1);
    while rest.len() >= 2 {
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let mut p = rest[2..2 + n].to_vec();
        rest = &rest[2 + n..];
        if p.len() >= 8 {
            p[4..8].copy_from_slice(&xid);
        }
        let _ = c.handle(t, &p);
        let _ = c.poll(t);
        t += Duration::from_secs(30);
    }
});
