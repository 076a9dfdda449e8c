//! The node's ICMP echo (privileged): in a network namespace of the test's own (its thread
//! unshares one), loopback answers over IPv4 and IPv6, an address behind a link where nobody
//! answers times out, and an address with no route is an error that names it.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use basalt_init::ping::{Options, ping};
use basalt_testkit::{Tier, tier};

fn ip(args: &[&str]) {
    assert!(
        Command::new("ip").args(args).status().unwrap().success(),
        "ip {args:?}"
    );
}

#[test]
fn echo_requests_are_answered_timed_out_or_refused() {
    if !tier(
        Tier::Privileged,
        "echo_requests_are_answered_timed_out_or_refused",
    ) {
        return;
    }
    std::thread::spawn(|| {
        // Commands started from this thread inherit its namespace.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        ip(&["link", "set", "lo", "up"]);
        // A generous timeout: a guard on a loaded machine, not a measure of the round trip.
        let o = Options {
            count: 3,
            timeout: Duration::from_secs(10),
            interval: Duration::from_millis(10),
        };
        for to in ["127.0.0.1", "::1"] {
            let rtts = ping(to.parse().unwrap(), &o).unwrap();
            assert_eq!(rtts.len(), 3, "{to}");
            for rtt in &rtts {
                let rtt = rtt.unwrap_or_else(|| panic!("{to}: an echo request got no reply"));
                assert!(rtt > Duration::ZERO, "{to}: {rtt:?}");
            }
        }

        // A link whose other end has no address: the neighbour never answers, nor the echo.
        ip(&["link", "add", "bp0", "type", "veth", "peer", "name", "bp1"]);
        ip(&["addr", "add", "10.77.0.1/24", "dev", "bp0"]);
        ip(&["link", "set", "bp0", "up"]);
        ip(&["link", "set", "bp1", "up"]);
        let o = Options {
            count: 2,
            timeout: Duration::from_millis(300),
            interval: Duration::from_millis(10),
        };
        let silent: IpAddr = "10.77.0.2".parse().unwrap();
        assert_eq!(ping(silent, &o).unwrap(), vec![None, None]);

        // No route at all: refused at once, and the address is in the message.
        let e = ping("10.88.0.1".parse().unwrap(), &o).unwrap_err();
        assert!(
            e.to_string().contains("10.88.0.1") && e.to_string().contains("unreachable"),
            "{e}"
        );
    })
    .join()
    .unwrap();
}
