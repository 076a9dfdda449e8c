//! The boot network: the kernel's `ip=` argument (static form) applied over netlink, so the
//! machine API is reachable before any config exists. This is the lowest layer of the network
//! config; networkd (its own issue) takes over and merges the machine config on top.

use std::net::Ipv4Addr;
use std::time::Duration;

use futures::TryStreamExt as _;

/// `ip=<client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>` (static only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpArg {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub hostname: Option<String>,
    pub device: String,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("ip={0:?}: {1}")]
    Arg(String, &'static str),
    #[error("netlink")]
    Netlink(#[source] std::io::Error),
    #[error("link {0} did not appear within {1} s")]
    NoLink(String, u64),
    #[error("{what} on {link}")]
    Request {
        what: &'static str,
        link: String,
        #[source]
        source: rtnetlink::Error,
    },
}

impl IpArg {
    pub fn parse(v: &str) -> Result<Self, NetError> {
        let bad = |why| NetError::Arg(v.to_string(), why);
        let f: Vec<&str> = v.split(':').collect();
        if f.len() < 4 {
            return Err(bad(
                "only the static form client::gw:netmask:host:dev:off is read",
            ));
        }
        let address: Ipv4Addr = f[0]
            .parse()
            .map_err(|_| bad("the client address is not IPv4"))?;
        let gateway = match f[2] {
            "" => None,
            g => Some(g.parse().map_err(|_| bad("the gateway is not IPv4"))?),
        };
        let mask: Ipv4Addr = f[3].parse().map_err(|_| bad("the netmask is not IPv4"))?;
        let bits = u32::from(mask);
        if bits.leading_ones() + bits.trailing_zeros() != 32 {
            return Err(bad("the netmask is not contiguous"));
        }
        Ok(IpArg {
            address,
            prefix: bits.leading_ones() as u8,
            gateway,
            hostname: f.get(4).filter(|h| !h.is_empty()).map(|h| h.to_string()),
            device: f
                .get(5)
                .filter(|d| !d.is_empty())
                .unwrap_or(&"eth0")
                .to_string(),
        })
    }
}

/// Brings `lo` and the argument's device up with its address and default route. Waits up to
/// `wait` for the device (its driver may still be loading).
pub async fn apply(arg: &IpArg, wait: Duration) -> Result<(), NetError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Netlink)?;
    tokio::spawn(conn);
    let index = |name: String| {
        let handle = handle.clone();
        async move {
            handle
                .link()
                .get()
                .match_name(name)
                .execute()
                .try_next()
                .await
                .ok()
                .flatten()
                .map(|l| l.header.index)
        }
    };
    let req = |what, link: &str| {
        let link = link.to_string();
        move |source| NetError::Request { what, link, source }
    };
    if let Some(lo) = index("lo".into()).await {
        handle
            .link()
            .set(rtnetlink::LinkUnspec::new_with_index(lo).up().build())
            .execute()
            .await
            .map_err(req("set up", "lo"))?;
    }
    let start = tokio::time::Instant::now();
    let idx = loop {
        if let Some(i) = index(arg.device.clone()).await {
            break i;
        }
        if start.elapsed() > wait {
            return Err(NetError::NoLink(arg.device.clone(), wait.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    handle
        .link()
        .set(rtnetlink::LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .map_err(req("set up", &arg.device))?;
    match handle
        .address()
        .add(idx, arg.address.into(), arg.prefix)
        .execute()
        .await
    {
        Ok(()) => {}
        // Already there (a second boot sequence, or the kernel did it).
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -nix::libc::EEXIST => {}
        Err(e) => return Err(req("add address", &arg.device)(e)),
    }
    if let Some(gw) = arg.gateway {
        let route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gw)
            .output_interface(idx)
            .build();
        match handle.route().add(route).execute().await {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -nix::libc::EEXIST => {}
            Err(e) => return Err(req("add default route", &arg.device)(e)),
        }
    }
    Ok(())
}

/// Every non-loopback IPv4/IPv6 address, as text, for the maintenance banner.
pub fn addresses() -> Vec<String> {
    nix::ifaddrs::getifaddrs()
        .map(|it| {
            it.filter(|i| i.interface_name != "lo")
                .filter_map(|i| {
                    let a = i.address?;
                    if let Some(v4) = a.as_sockaddr_in() {
                        Some(v4.ip().to_string())
                    } else {
                        a.as_sockaddr_in6().map(|v6| v6.ip().to_string())
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_ip_argument() {
        let a = IpArg::parse("10.0.2.15::10.0.2.2:255.255.255.0:node1:eth0:off").unwrap();
        assert_eq!(a.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(a.prefix, 24);
        assert_eq!(a.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(a.hostname.as_deref(), Some("node1"));
        assert_eq!(a.device, "eth0");
        let b = IpArg::parse("192.168.1.5:::255.255.0.0").unwrap();
        assert_eq!((b.prefix, b.gateway, b.device.as_str()), (16, None, "eth0"));
        let e = IpArg::parse("10.0.0.1::10.0.0.254:255.0.255.0::eth0:off").unwrap_err();
        assert_eq!(
            e.to_string(),
            "ip=\"10.0.0.1::10.0.0.254:255.0.255.0::eth0:off\": the netmask is not contiguous"
        );
        assert!(IpArg::parse("dhcp").is_err());
    }
}
