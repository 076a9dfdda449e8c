//! The NTP packet, client side (RFC 5905's client mode, as SNTP uses it): a request, and what
//! an answer says once checked. No I/O: the caller sends, receives and reads the clock.

/// Seconds from the NTP epoch (1900-01-01) to the Unix epoch.
const NTP_UNIX: f64 = 2_208_988_800.0;

pub const PACKET_LEN: usize = 48;

/// Why an answer is not used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PacketError {
    #[error("a {0}-byte answer (NTP needs 48)")]
    Short(usize),
    #[error("not a server's answer (mode {0})")]
    Mode(u8),
    #[error("the server is not synchronised (leap indicator 3)")]
    Unsynchronised,
    #[error("the server says stratum {stratum}{}", if *.stratum == 0 { " (kiss-o'-death)" } else { " (unsynchronised)" })]
    Stratum { stratum: u8 },
    #[error("the answer is not to this request (its origin timestamp differs)")]
    Origin,
    #[error("the answer has no transmit time")]
    NoTransmit,
}

/// A 64-bit NTP timestamp (32.32 fixed point, seconds since 1900).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// From seconds since the Unix epoch (era 0: until 2036-02-07).
    // Within era 0 the whole seconds fit 32 bits and the fraction is below 2^32: no truncation
    // but the intended one (and a clock before 1900 is not a clock).
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    pub fn from_unix(secs: f64) -> Timestamp {
        let t = secs + NTP_UNIX;
        let whole = t.floor();
        let frac = ((t - whole) * 4_294_967_296.0) as u64;
        Timestamp(((whole as u64) << 32) | (frac & 0xffff_ffff))
    }

    /// Seconds since the Unix epoch.
    pub fn to_unix(self) -> f64 {
        (self.0 >> 32) as f64 + (self.0 & 0xffff_ffff) as f64 / 4_294_967_296.0 - NTP_UNIX
    }
}

/// A client request: version 4, mode 3. Its transmit field carries `cookie` rather than the
/// client's clock (which NTP does not need and which says how wrong the clock is to anyone
/// listening); the answer must echo it as its origin.
pub fn request(cookie: u64) -> [u8; PACKET_LEN] {
    let mut p = [0u8; PACKET_LEN];
    p[0] = 4 << 3 | 3;
    p[40..48].copy_from_slice(&cookie.to_be_bytes());
    p
}

/// What a checked answer says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Answer {
    pub stratum: u8,
    /// When the server received the request and sent the answer (its clock, Unix seconds).
    pub receive: f64,
    pub transmit: f64,
}

fn ts(p: &[u8], at: usize) -> Timestamp {
    let mut b = [0u8; 8];
    b.copy_from_slice(&p[at..at + 8]);
    Timestamp(u64::from_be_bytes(b))
}

/// Checks an answer to the request made with `cookie`.
pub fn parse(p: &[u8], cookie: u64) -> Result<Answer, PacketError> {
    if p.len() < PACKET_LEN {
        return Err(PacketError::Short(p.len()));
    }
    let mode = p[0] & 7;
    if mode != 4 {
        return Err(PacketError::Mode(mode));
    }
    if p[0] >> 6 == 3 {
        return Err(PacketError::Unsynchronised);
    }
    let stratum = p[1];
    if stratum == 0 || stratum >= 16 {
        return Err(PacketError::Stratum { stratum });
    }
    if ts(p, 24).0 != cookie {
        return Err(PacketError::Origin);
    }
    let transmit = ts(p, 40);
    if transmit.0 == 0 {
        return Err(PacketError::NoTransmit);
    }
    Ok(Answer {
        stratum,
        receive: ts(p, 32).to_unix(),
        transmit: transmit.to_unix(),
    })
}

/// A measurement: how far the local clock is behind the server (positive: add it) and the
/// round trip, from the local send and receive times `t1`, `t4` and the answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub offset: f64,
    pub delay: f64,
    pub stratum: u8,
}

pub fn sample(t1: f64, a: &Answer, t4: f64) -> Sample {
    Sample {
        offset: ((a.receive - t1) + (a.transmit - t4)) / 2.0,
        delay: ((t4 - t1) - (a.transmit - a.receive)).max(0.0),
        stratum: a.stratum,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(cookie: u64, receive: f64, transmit: f64, first: u8, stratum: u8) -> Vec<u8> {
        let mut p = vec![0u8; 48];
        p[0] = first;
        p[1] = stratum;
        p[24..32].copy_from_slice(&cookie.to_be_bytes());
        p[32..40].copy_from_slice(&Timestamp::from_unix(receive).0.to_be_bytes());
        p[40..48].copy_from_slice(&Timestamp::from_unix(transmit).0.to_be_bytes());
        p
    }

    #[test]
    fn timestamps_round_trip() {
        for t in [0.0, 1_764_900_000.25, 2_000_000_000.999] {
            assert!((Timestamp::from_unix(t).to_unix() - t).abs() < 1e-6, "{t}");
        }
        // 2026-12-05T00:00:00Z is 3_973_881_600 seconds after 1900.
        assert_eq!(Timestamp::from_unix(1_764_892_800.0).0 >> 32, 3_973_881_600);
    }

    #[test]
    fn a_request_is_version_4_client_mode_with_the_cookie() {
        let r = request(0x0123_4567_89ab_cdef);
        assert_eq!(r[0], 0x23);
        assert_eq!(&r[40..], &0x0123_4567_89ab_cdefu64.to_be_bytes());
        assert!(r[1..40].iter().all(|b| *b == 0));
    }

    #[test]
    fn answers_are_checked() {
        let ok = answer(7, 100.0, 100.5, 0x24, 2);
        assert_eq!(parse(&ok, 7).unwrap().stratum, 2);
        assert_eq!(parse(&ok, 8), Err(PacketError::Origin));
        assert_eq!(parse(&ok[..40], 7), Err(PacketError::Short(40)));
        assert_eq!(
            parse(&answer(7, 1.0, 2.0, 0x23, 2), 7),
            Err(PacketError::Mode(3))
        );
        assert_eq!(
            parse(&answer(7, 1.0, 2.0, 0xe4, 2), 7),
            Err(PacketError::Unsynchronised)
        );
        let kod = parse(&answer(7, 1.0, 2.0, 0x24, 0), 7).unwrap_err();
        assert_eq!(kod.to_string(), "the server says stratum 0 (kiss-o'-death)");
        assert_eq!(
            parse(&answer(7, 1.0, 2.0, 0x24, 16), 7),
            Err(PacketError::Stratum { stratum: 16 })
        );
    }

    #[test]
    fn offset_and_delay() {
        // The client is a year (365 days) behind; 20 ms each way, 1 ms in the server.
        let year = 365.0 * 86400.0;
        let t1 = 1_700_000_000.0;
        let a = Answer {
            stratum: 3,
            receive: t1 + year + 0.020,
            transmit: t1 + year + 0.021,
        };
        let s = sample(t1, &a, t1 + 0.041);
        assert!((s.offset - year).abs() < 1e-6, "{s:?}");
        assert!((s.delay - 0.040).abs() < 1e-6, "{s:?}");
    }
}
