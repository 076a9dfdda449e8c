//! The kernel command line's `ip=` argument, in the kernel's and dracut's syntax: the
//! `cmdline` layer of the network config, so a PXE-booted node is reachable before any
//! config exists.

use std::net::Ipv4Addr;

/// What the kernel's `ip=` argument asks for, in the kernel's syntax
/// (`Documentation/admin-guide/nfs/nfsroot.rst`):
/// `ip=<client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>:<dns0>:<dns1>:<ntp0>`,
/// or the autoconf value alone (`ip=dhcp`, `ip=off`), or dracut's `ip=<device>:dhcp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpConfig {
    /// `off` / `none` alone: no boot network.
    Off,
    /// `dhcp`, `on`, `any`, `bootp`, `both`, `rarp`: autoconfiguration, on one device or all.
    /// The DHCP client is networkd's; until then the boot network is not configured.
    Dhcp { device: Option<String> },
    /// A client address with autoconf empty, `off` or `none`.
    Static(IpArg),
}

/// A static boot address (IPv4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpArg {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub hostname: Option<String>,
    /// The kernel takes the first device; the first NIC of a VM or PXE machine is `eth0`
    /// here (no predictable names in the initramfs), so that is the default.
    pub device: String,
    pub dns: Vec<Ipv4Addr>,
    pub ntp: Vec<Ipv4Addr>,
}

/// An `ip=` value the kernel's syntax does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ip={arg:?}: {why}")]
pub struct IpArgError {
    pub arg: String,
    pub why: String,
}

const AUTOCONF: &[&str] = &["off", "none", "on", "any", "dhcp", "bootp", "rarp", "both"];

impl IpConfig {
    pub fn parse(v: &str) -> Result<Self, IpArgError> {
        let bad = |why: String| IpArgError {
            arg: v.to_string(),
            why,
        };
        let auto = |a: &str| -> Result<Option<bool>, IpArgError> {
            // Some(true): autoconfiguration; Some(false): static; None: not given.
            match a {
                "" => Ok(None),
                "off" | "none" => Ok(Some(false)),
                a if AUTOCONF.contains(&a) => Ok(Some(true)),
                a => Err(bad(format!(
                    "autoconf {a:?} is not one of {}",
                    AUTOCONF.join(", ")
                ))),
            }
        };
        let f: Vec<&str> = v.split(':').collect();
        match f.as_slice() {
            // The autoconf value alone; anything else alone is a client address.
            [a] if a.is_empty() || AUTOCONF.contains(a) => {
                return match auto(a)? {
                    Some(false) => Ok(IpConfig::Off),
                    Some(true) => Ok(IpConfig::Dhcp { device: None }),
                    None => Err(bad("empty".into())),
                };
            }
            // dracut: <device>:<autoconf>.
            [dev, a] if !dev.is_empty() && dev.parse::<Ipv4Addr>().is_err() => {
                return match auto(a)? {
                    Some(true) => Ok(IpConfig::Dhcp {
                        device: Some(dev.to_string()),
                    }),
                    _ => Err(bad(format!(
                        "{dev}:{a}: only autoconfiguration (dhcp) names a device this way"
                    ))),
                };
            }
            _ => {}
        }
        if f.len() > 10 {
            return Err(bad(format!(
                "{} fields; the kernel reads at most 10",
                f.len()
            )));
        }
        let field = |i: usize| f.get(i).copied().unwrap_or("");
        let addr = |i: usize, what: &str| -> Result<Option<Ipv4Addr>, IpArgError> {
            match field(i) {
                "" => Ok(None),
                x => x
                    .parse()
                    .map(Some)
                    .map_err(|_| bad(format!("the {what} {x:?} is not an IPv4 address"))),
            }
        };
        let device = Some(field(5)).filter(|d| !d.is_empty()).map(str::to_string);
        let client = addr(0, "client address")?;
        match (auto(field(6))?, client) {
            (Some(true), _) => return Ok(IpConfig::Dhcp { device }),
            (_, None) => {
                return Err(bad(
                    "a static configuration needs the client address (first field)".into(),
                ));
            }
            _ => {}
        }
        let address = client.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let prefix = match field(3) {
            // The kernel's default: the address's class.
            "" => match address.octets()[0] {
                0..=127 => 8,
                128..=191 => 16,
                _ => 24,
            },
            m => {
                let mask: Ipv4Addr = m
                    .parse()
                    .map_err(|_| bad(format!("the netmask {m:?} is not an IPv4 mask")))?;
                let bits = u32::from(mask);
                if bits.leading_ones() + bits.trailing_zeros() != 32 {
                    return Err(bad("the netmask is not contiguous".into()));
                }
                u8::try_from(bits.leading_ones()).unwrap_or(32)
            }
        };
        Ok(IpConfig::Static(IpArg {
            address,
            prefix,
            gateway: addr(2, "gateway")?,
            hostname: Some(field(4)).filter(|h| !h.is_empty()).map(str::to_string),
            device: device.unwrap_or_else(|| "eth0".into()),
            dns: [addr(7, "first DNS server")?, addr(8, "second DNS server")?]
                .into_iter()
                .flatten()
                .collect(),
            ntp: addr(9, "NTP server")?.into_iter().collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn static_of(v: &str) -> IpArg {
        match IpConfig::parse(v).unwrap() {
            IpConfig::Static(a) => a,
            other => panic!("{v}: {other:?}"),
        }
    }

    #[test]
    fn static_ip_argument() {
        let a = static_of("10.0.2.15::10.0.2.2:255.255.255.0:node1:eth0:off");
        assert_eq!(a.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(a.prefix, 24);
        assert_eq!(a.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(a.hostname.as_deref(), Some("node1"));
        assert_eq!(a.device, "eth0");
        let b = static_of("192.168.1.5:::255.255.0.0");
        assert_eq!((b.prefix, b.gateway, b.device.as_str()), (16, None, "eth0"));
        let e = IpConfig::parse("10.0.0.1::10.0.0.254:255.0.255.0::eth0:off").unwrap_err();
        assert_eq!(
            e.to_string(),
            "ip=\"10.0.0.1::10.0.0.254:255.0.255.0::eth0:off\": the netmask is not contiguous"
        );
    }

    /// The forms nfsroot.rst documents, and dracut's device:dhcp.
    #[test]
    fn the_kernels_documented_forms() {
        assert_eq!(
            IpConfig::parse("dhcp").unwrap(),
            IpConfig::Dhcp { device: None }
        );
        for a in ["on", "any", "bootp", "rarp", "both"] {
            assert_eq!(IpConfig::parse(a).unwrap(), IpConfig::Dhcp { device: None });
        }
        assert_eq!(IpConfig::parse("off").unwrap(), IpConfig::Off);
        assert_eq!(IpConfig::parse("none").unwrap(), IpConfig::Off);
        assert_eq!(
            IpConfig::parse("::::::dhcp").unwrap(),
            IpConfig::Dhcp { device: None }
        );
        assert_eq!(
            IpConfig::parse(":::::eth1:dhcp").unwrap(),
            IpConfig::Dhcp {
                device: Some("eth1".into())
            }
        );
        assert_eq!(
            IpConfig::parse("eth2:dhcp").unwrap(),
            IpConfig::Dhcp {
                device: Some("eth2".into())
            }
        );
        // Autoconf empty with a client address: static, the netmask from the address class.
        assert_eq!(static_of("10.1.2.3").prefix, 8);
        assert_eq!(static_of("172.16.0.9").prefix, 16);
        assert_eq!(static_of("192.168.7.7").prefix, 24);
        // All ten fields.
        let a = static_of(
            "192.168.1.10:192.168.1.2:192.168.1.1:255.255.255.0:myhost:eth0:none:192.168.1.53:192.168.1.54:192.168.1.123",
        );
        assert_eq!(
            a.dns,
            [
                Ipv4Addr::new(192, 168, 1, 53),
                Ipv4Addr::new(192, 168, 1, 54)
            ]
        );
        assert_eq!(a.ntp, [Ipv4Addr::new(192, 168, 1, 123)]);
        assert_eq!(a.hostname.as_deref(), Some("myhost"));
    }

    #[test]
    fn bad_ip_arguments_say_what_is_wrong() {
        let err = |v: &str| IpConfig::parse(v).unwrap_err().to_string();
        assert_eq!(
            err("1.2.3.4::::::sometimes"),
            "ip=\"1.2.3.4::::::sometimes\": autoconf \"sometimes\" is not one of off, none, on, any, dhcp, bootp, rarp, both"
        );
        assert!(err("::::::off").contains("needs the client address"));
        assert!(err("10.0.0.x").contains("\"10.0.0.x\" is not an IPv4 address"));
        assert!(err("10.0.0.1::10.0.0.1:255.0.0.0::eth0:off:bogus").contains("first DNS server"));
        assert!(err("eth0:off").contains("only autoconfiguration"));
        assert!(err("1:2:3:4:5:6:7:8:9:10:11").contains("at most 10"));
    }
}
