//! The discovery server's protocol: requests from anyone (decoded, then applied to the
//! registry with its limits), and the sealed records a node opens from what the server sends.
#![no_main]

use std::time::Duration;

use basalt_api::discovery as pb;
use basalt_discovery::{Limits, Registry};
use prost::Message as _;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut reg = Registry::new(Limits::default());
    let mut now = Duration::from_secs(1);
    // The input is requests, each a 1-byte kind and a 2-byte length before its bytes.
    let mut rest = data;
    while rest.len() >= 3 {
        let kind = rest[0];
        let n = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let msg = &rest[3..3 + n];
        rest = &rest[3 + n..];
        match kind % 4 {
            0 => {
                if let Ok(u) = pb::UpdateRequest::decode(msg) {
                    let _ = reg.update(
                        now,
                        &u.cluster_id,
                        &u.affiliate_id,
                        u.data,
                        Duration::from_secs(u.ttl_seconds.into()),
                        Some(std::net::Ipv4Addr::LOCALHOST.into()),
                    );
                }
            }
            1 => {
                if let Ok(d) = pb::DeleteRequest::decode(msg) {
                    let _ = reg.delete(&d.cluster_id, &d.affiliate_id);
                }
            }
            2 => {
                if let Ok(l) = pb::ListRequest::decode(msg) {
                    let _ = reg.list(now, &l.cluster_id);
                }
            }
            _ => {
                now += Duration::from_secs(u64::from(kind));
                reg.expire(now);
            }
        }
    }
    let sealer =
        basalt_kubespan::affiliate::Sealer::new(&basalt_config::types::Key32::from_bytes([7; 32]));
    let _ = sealer.open(data);
});
