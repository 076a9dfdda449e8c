//! The kernel command line: what Basalt reads from it.

use std::fmt;

/// Where the node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Metal,
    Container,
}

/// The kernel arguments Basalt understands; others are the kernel's business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    pub consoles: Vec<String>,
    /// `ip=` in the kernel's syntax, kept verbatim for networkd.
    pub ip: Option<String>,
    /// `basalt.config=URL`: where to fetch the machine config.
    pub config_url: Option<String>,
    /// `basalt.config.sha256=HEX`: the fetched config must have this digest.
    pub config_sha256: Option<[u8; 32]>,
    /// `basalt.config.ca=BASE64`: the CA (PEM or DER, base64) an https config server's
    /// certificate must chain to.
    pub config_ca: Option<String>,
    pub platform: Platform,
    pub debug: bool,
    /// Seconds to wait before rebooting after a fatal error (`basalt.reboot_delay`).
    pub reboot_delay: u64,
    /// Seconds after PID 1 starts that it reads the whole rootfs through dm-verity
    /// (`basalt.scrub_delay`; a trial boot scrubs at once).
    pub scrub_delay: u64,
    /// `basalt.test=poweroff`: power off once PID 1 has reported (benchmarks, tests).
    pub poweroff_when_up: bool,
    /// `basalt.slot=A|B`: booted from this slot of an installed disk (GRUB sets it).
    pub slot: Option<String>,
    /// `basalt.trial=1`: this boot is a slot's one try after an upgrade; it must confirm
    /// itself when healthy or the next boot is the old slot.
    pub trial: bool,
}

/// How long after PID 1 starts the rootfs scrub waits by default: past a node's boot (why:
/// init's `scrub` module).
pub const DEFAULT_SCRUB_DELAY: u64 = 300;

impl Cmdline {
    /// How long after PID 1 starts the rootfs scrub begins: at once on a trial boot (a slot
    /// must not be confirmed healthy with a corrupted root), else `basalt.scrub_delay`.
    pub fn scrub_after(&self) -> std::time::Duration {
        std::time::Duration::from_secs(if self.trial { 0 } else { self.scrub_delay })
    }
}

/// A kernel argument Basalt cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadArg {
    pub arg: String,
    pub why: String,
}

impl fmt::Display for BadArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kernel argument {:?}: {}", self.arg, self.why)
    }
}

/// The environment variable that makes PID 1 a container node (`container`): in a container
/// `/proc/cmdline` is the host's, so the arguments come from `BASALT_CMDLINE` instead.
pub const PLATFORM_ENV: &str = "BASALT_PLATFORM";
/// A container node's kernel arguments (`ip=`, `basalt.*`), in the kernel's syntax.
pub const CMDLINE_ENV: &str = "BASALT_CMDLINE";

impl Cmdline {
    /// PID 1's arguments: `/proc/cmdline` on a machine; `BASALT_CMDLINE` (and the platform
    /// `container`) when `BASALT_PLATFORM=container` is in the environment.
    pub fn read() -> (Cmdline, Vec<BadArg>) {
        Self::from_sources(
            std::env::var(PLATFORM_ENV).ok().as_deref(),
            std::env::var(CMDLINE_ENV).ok().as_deref(),
            || std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
        )
    }

    fn from_sources(
        platform: Option<&str>,
        container_args: Option<&str>,
        proc_cmdline: impl FnOnce() -> String,
    ) -> (Cmdline, Vec<BadArg>) {
        match platform {
            Some("container") => {
                let args = container_args.unwrap_or_default();
                let (mut c, mut bad) = Cmdline::parse(args);
                if split(args).iter().any(|a| a == "basalt.platform=metal") {
                    bad.push(BadArg {
                        arg: "basalt.platform=metal".into(),
                        why: format!("{PLATFORM_ENV}=container says otherwise"),
                    });
                }
                c.platform = Platform::Container;
                (c, bad)
            }
            other => {
                let (c, mut bad) = Cmdline::parse(&proc_cmdline());
                if let Some(p) = other {
                    bad.push(BadArg {
                        arg: format!("{PLATFORM_ENV}={p}"),
                        why: "expected container (or no such variable)".into(),
                    });
                }
                (c, bad)
            }
        }
    }

    /// Parses `/proc/cmdline`. Bad Basalt arguments are returned beside the result (and
    /// logged); the default is used for them, since refusing to boot over one would be worse.
    pub fn parse(text: &str) -> (Cmdline, Vec<BadArg>) {
        let mut c = Cmdline {
            consoles: Vec::new(),
            ip: None,
            config_url: None,
            config_sha256: None,
            config_ca: None,
            platform: Platform::Metal,
            debug: false,
            reboot_delay: 10,
            scrub_delay: DEFAULT_SCRUB_DELAY,
            poweroff_when_up: false,
            slot: None,
            trial: false,
        };
        let mut bad = Vec::new();
        for arg in split(text) {
            let (key, value) = match arg.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (arg.as_str(), None),
            };
            let mut fail = |why: &str| {
                bad.push(BadArg {
                    arg: arg.clone(),
                    why: why.to_string(),
                })
            };
            match (key, value) {
                ("console", Some(v)) => c.consoles.push(v.to_string()),
                ("ip", Some(v)) => c.ip = Some(v.to_string()),
                ("basalt.config", Some(v)) => c.config_url = Some(v.to_string()),
                ("basalt.config.sha256", Some(v)) => match hex32(v) {
                    Some(d) => c.config_sha256 = Some(d),
                    None => fail("expected 64 hexadecimal digits"),
                },
                ("basalt.config.ca", Some(v)) if !v.is_empty() => c.config_ca = Some(v.to_string()),
                ("basalt.config.ca", _) => fail("expected a base64 CA certificate"),
                ("basalt.platform", Some("metal")) => c.platform = Platform::Metal,
                ("basalt.platform", Some("container")) => c.platform = Platform::Container,
                ("basalt.platform", _) => fail("expected metal or container"),
                ("basalt.debug", None | Some("1" | "true")) => c.debug = true,
                ("basalt.debug", _) => fail("expected no value, 1 or true"),
                ("basalt.reboot_delay", Some(v)) => match v.parse() {
                    Ok(n) => c.reboot_delay = n,
                    Err(_) => fail("expected a number of seconds"),
                },
                ("basalt.scrub_delay", Some(v)) => match v.parse() {
                    Ok(n) => c.scrub_delay = n,
                    Err(_) => fail("expected a number of seconds"),
                },
                ("basalt.test", Some("poweroff")) => c.poweroff_when_up = true,
                ("basalt.test", _) => fail("expected poweroff"),
                ("basalt.slot", Some(v @ ("A" | "B"))) => c.slot = Some(v.to_string()),
                ("basalt.slot", _) => fail("expected A or B"),
                ("basalt.trial", Some("1")) => c.trial = true,
                ("basalt.trial", _) => fail("expected 1"),
                (k, _) if k.starts_with("basalt.") => fail("unknown Basalt argument"),
                _ => {}
            }
        }
        (c, bad)
    }
}

/// 32 bytes from 64 hexadecimal digits (either case).
fn hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The arguments an installed node boots with, from those it was installed from: all but
/// the boot loader's (`BOOT_IMAGE`, `initrd`), the slot GRUB sets, and `basalt.config`
/// (an installed node keeps its config on STATE).
pub fn for_install(text: &str) -> String {
    split(text)
        .into_iter()
        .filter(|a| {
            let key = a.split_once('=').map_or(a.as_str(), |(k, _)| k);
            !matches!(
                key,
                "BOOT_IMAGE"
                    | "initrd"
                    | "basalt.slot"
                    | "basalt.trial"
                    | "basalt.config"
                    | "basalt.config.sha256"
                    | "basalt.config.ca"
            )
        })
        .map(|a| match a.contains(char::is_whitespace) {
            true => match a.split_once('=') {
                Some((k, v)) => format!("{k}=\"{v}\""),
                None => format!("\"{a}\""),
            },
            false => a,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Splits on whitespace, keeping double-quoted spans together (as the kernel does).
fn split(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in text.chars() {
        match ch {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_and_the_install_command_line() {
        let (c, bad) = Cmdline::parse("console=ttyS0 basalt.slot=B basalt.trial=1");
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!((c.slot.as_deref(), c.trial), (Some("B"), true));
        let (_, bad) = Cmdline::parse("basalt.slot=C");
        assert_eq!(bad.len(), 1);
        assert_eq!(
            for_install(
                "BOOT_IMAGE=/boot/vmlinuz initrd=initramfs.img console=ttyS0,115200 quiet basalt.slot=A basalt.config=http://x/ basalt.debug\n"
            ),
            "console=ttyS0,115200 quiet basalt.debug"
        );
    }

    #[test]
    fn a_container_node_never_reads_the_hosts_command_line() {
        let host =
            || "ip=192.0.2.9::192.0.2.1:255.255.255.0:host:eth0:off basalt.debug".to_string();
        let (c, bad) = Cmdline::from_sources(Some("container"), None, host);
        assert_eq!(
            (c.platform, c.ip, c.debug),
            (Platform::Container, None, false)
        );
        assert!(bad.is_empty(), "{bad:?}");
        let (c, _) =
            Cmdline::from_sources(Some("container"), Some("basalt.reboot_delay=1"), || {
                panic!("read /proc/cmdline")
            });
        assert_eq!((c.platform, c.reboot_delay), (Platform::Container, 1));
        let (c, _) = Cmdline::from_sources(None, Some("basalt.debug"), host);
        assert_eq!(c.platform, Platform::Metal);
        assert!(
            c.ip.is_some() && c.debug,
            "metal reads /proc/cmdline, not the environment"
        );
        let (c, bad) =
            Cmdline::from_sources(Some("container"), Some("basalt.platform=metal"), host);
        assert_eq!(c.platform, Platform::Container);
        assert_eq!(bad.len(), 1, "{bad:?}");
        let (c, bad) = Cmdline::from_sources(Some("vm"), None, host);
        assert_eq!(c.platform, Platform::Metal);
        assert_eq!(
            bad[0].to_string(),
            "kernel argument \"BASALT_PLATFORM=vm\": expected container (or no such variable)"
        );
    }

    #[test]
    fn the_rootfs_scrub_waits_past_boot_unless_told_or_on_trial() {
        let secs = |text: &str| {
            let (c, bad) = Cmdline::parse(text);
            assert!(bad.is_empty(), "{bad:?}");
            c.scrub_after().as_secs()
        };
        assert_eq!(secs("quiet"), DEFAULT_SCRUB_DELAY);
        assert_eq!(secs("basalt.scrub_delay=0"), 0);
        assert_eq!(secs("basalt.scrub_delay=42"), 42);
        // A trial boot is confirmed only when healthy: its root is checked whole at once.
        assert_eq!(
            secs("basalt.slot=B basalt.trial=1 basalt.scrub_delay=42"),
            0
        );
        let (c, bad) = Cmdline::parse("basalt.scrub_delay=later");
        assert_eq!(c.scrub_delay, DEFAULT_SCRUB_DELAY);
        assert_eq!(
            bad[0].to_string(),
            "kernel argument \"basalt.scrub_delay=later\": expected a number of seconds"
        );
    }

    #[test]
    fn reads_basalt_arguments() {
        let (c, bad) = Cmdline::parse(
            "BOOT_IMAGE=/boot/vmlinuz console=tty0 console=ttyS0,115200 quiet ip=10.5.0.3::10.5.0.1:255.255.255.0:n1:eth0:off basalt.config=\"http://10.5.0.1/c.yaml\" basalt.platform=container basalt.debug basalt.reboot_delay=2\n",
        );
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(c.consoles, vec!["tty0", "ttyS0,115200"]);
        assert_eq!(
            c.ip.as_deref(),
            Some("10.5.0.3::10.5.0.1:255.255.255.0:n1:eth0:off")
        );
        assert_eq!(c.config_url.as_deref(), Some("http://10.5.0.1/c.yaml"));
        assert_eq!(c.platform, Platform::Container);
        assert!(c.debug);
        assert_eq!(c.reboot_delay, 2);
        assert!(!c.poweroff_when_up);
    }

    #[test]
    fn the_config_urls_pin_and_ca() {
        let d = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08";
        let (c, bad) = Cmdline::parse(&format!(
            "basalt.config=http://h/${{mac}}.yaml basalt.config.sha256={d} basalt.config.ca=TUlJ"
        ));
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(c.config_url.as_deref(), Some("http://h/${mac}.yaml"));
        assert_eq!(c.config_sha256.unwrap()[..2], [0x9f, 0x86]);
        assert_eq!(c.config_sha256.unwrap()[31], 0x08);
        assert_eq!(c.config_ca.as_deref(), Some("TUlJ"));
        let (c, bad) = Cmdline::parse("basalt.config.sha256=9f86 basalt.config.ca=");
        assert_eq!(c.config_sha256, None);
        let msgs: Vec<String> = bad.iter().map(ToString::to_string).collect();
        assert_eq!(
            msgs,
            [
                "kernel argument \"basalt.config.sha256=9f86\": expected 64 hexadecimal digits",
                "kernel argument \"basalt.config.ca=\": expected a base64 CA certificate"
            ]
        );
        // An installed node keeps its config on STATE: none of the three is carried over.
        assert_eq!(
            for_install(&format!(
                "console=ttyS0 basalt.config=http://h/ basalt.config.sha256={d} basalt.config.ca=TUlJ"
            )),
            "console=ttyS0"
        );
    }

    #[test]
    fn bad_arguments_are_reported_and_defaulted() {
        let (c, bad) =
            Cmdline::parse("basalt.platform=cloud basalt.reboot_delay=soon basalt.frob=1");
        assert_eq!(c.platform, Platform::Metal);
        assert_eq!(c.reboot_delay, 10);
        let msgs: Vec<String> = bad.iter().map(ToString::to_string).collect();
        assert_eq!(
            msgs,
            vec![
                "kernel argument \"basalt.platform=cloud\": expected metal or container",
                "kernel argument \"basalt.reboot_delay=soon\": expected a number of seconds",
                "kernel argument \"basalt.frob=1\": unknown Basalt argument",
            ]
        );
    }
}
