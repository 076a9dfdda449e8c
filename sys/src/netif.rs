//! The addresses on the node's links as the kernel has them now (`getifaddrs(3)`).
//!
//! For the few places that must know before networkd's status resources exist (the runtime
//! layer of a container node, maintenance mode's banner, apid's first certificate); anything
//! that follows the node reads `AddressStatus` instead, which follows every change.

use std::net::IpAddr;

/// Every address on every link: its link, address and prefix length.
pub fn addresses() -> Vec<(String, IpAddr, u8)> {
    let Ok(all) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    all.filter_map(|i| {
        let (a, m) = (i.address?, i.netmask?);
        let (ip, len): (IpAddr, u32) =
            if let (Some(a), Some(m)) = (a.as_sockaddr_in(), m.as_sockaddr_in()) {
                (a.ip().into(), m.ip().to_bits().count_ones())
            } else {
                let (a, m) = (a.as_sockaddr_in6()?, m.as_sockaddr_in6()?);
                (a.ip().into(), m.ip().to_bits().count_ones())
            };
        Some((i.interface_name, ip, u8::try_from(len).ok()?))
    })
    .collect()
}

/// Every address on a link other than `lo`, as text.
pub fn addresses_text() -> Vec<String> {
    addresses()
        .into_iter()
        .filter(|(link, _, _)| link != "lo")
        .map(|(_, ip, _)| ip.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_left_out_of_the_text() {
        // Every network namespace has lo with 127.0.0.1 (up or not, getifaddrs lists it
        // when up; the test runner's namespace has it up).
        let all = addresses();
        if all
            .iter()
            .any(|(l, ip, len)| l == "lo" && ip.is_loopback() && *len == 8)
        {
            assert!(!addresses_text().contains(&"127.0.0.1".to_string()));
        }
    }
}
