//! The system clock (`CLOCK_REALTIME`): read it, step it, slew it. The time service decides
//! which and by how much; this only does it.

#![allow(unsafe_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::time::TimeSpec;
use nix::time::{ClockId, clock_gettime, clock_settime};

/// Why the clock could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    #[error("cannot read the clock")]
    Read(#[source] nix::Error),
    #[error("cannot step the clock by {0:+.3} s")]
    Step(f64, #[source] nix::Error),
    #[error("cannot slew the clock by {0:+.6} s")]
    Slew(f64, #[source] std::io::Error),
    #[error("{0} s is not an offset the clock can take")]
    Range(f64),
}

/// Seconds since the Unix epoch, as the system clock has it.
pub fn now() -> Result<f64, ClockError> {
    let t = clock_gettime(ClockId::CLOCK_REALTIME).map_err(ClockError::Read)?;
    Ok(t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9)
}

/// Splits `secs` into whole seconds (rounded down) and nanoseconds in `0..1e9`.
// The casts cannot truncate: `secs` is checked to be finite and within ±1e11 first.
#[allow(clippy::cast_possible_truncation)]
fn split(secs: f64) -> Result<(i64, i64), ClockError> {
    if !secs.is_finite() || secs.abs() > 1e11 {
        return Err(ClockError::Range(secs));
    }
    let whole = secs.floor();
    let mut nanos = ((secs - whole) * 1e9).round() as i64;
    let mut whole = whole as i64;
    if nanos >= 1_000_000_000 {
        whole += 1;
        nanos -= 1_000_000_000;
    }
    Ok((whole, nanos))
}

/// Sets the clock `offset` seconds ahead (behind, negative) of where it is: a jump, for a clock
/// far off. Needs `CAP_SYS_TIME`.
pub fn step(offset: f64) -> Result<(), ClockError> {
    let now = clock_gettime(ClockId::CLOCK_REALTIME).map_err(ClockError::Read)?;
    let (s, ns) = split(offset)?;
    let mut sec = now.tv_sec() + s;
    let mut nsec = now.tv_nsec() + ns;
    if nsec >= 1_000_000_000 {
        sec += 1;
        nsec -= 1_000_000_000;
    }
    clock_settime(ClockId::CLOCK_REALTIME, TimeSpec::new(sec, nsec))
        .map_err(|e| ClockError::Step(offset, e))
}

/// Has the kernel run the clock a little faster or slower until it has gained `offset`
/// seconds (`adjtime(3)`: at most 0.5 ms a second, so no jump and never backwards); replaces
/// a slew still in progress. Needs `CAP_SYS_TIME`.
pub fn slew(offset: f64) -> Result<(), ClockError> {
    let (s, ns) = split(offset)?;
    let tv = nix::libc::timeval {
        tv_sec: s,
        tv_usec: ns / 1000,
    };
    // SAFETY: `tv` is a valid, initialised timeval that outlives the call; a null `olddelta`
    // asks for no output.
    let r = unsafe { nix::libc::adjtime(&tv, std::ptr::null_mut()) };
    if r != 0 {
        return Err(ClockError::Slew(offset, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// `t` as seconds since the Unix epoch (negative before it).
pub fn unix_secs(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Seconds since the Unix epoch as a `SystemTime`.
pub fn from_unix_secs(secs: f64) -> SystemTime {
    if secs >= 0.0 {
        UNIX_EPOCH + Duration::from_secs_f64(secs)
    } else {
        UNIX_EPOCH - Duration::from_secs_f64(-secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_split_into_seconds_and_nanoseconds_rounded_down() {
        assert_eq!(split(1.25).unwrap(), (1, 250_000_000));
        assert_eq!(split(-1.25).unwrap(), (-2, 750_000_000));
        assert_eq!(split(-0.000_001).unwrap(), (-1, 999_999_000));
        assert_eq!(split(0.0).unwrap(), (0, 0));
        assert!(split(f64::NAN).is_err());
        assert!(split(1e12).is_err());
        let t = from_unix_secs(1_700_000_000.5);
        assert!((unix_secs(t) - 1_700_000_000.5).abs() < 1e-6);
        assert!(now().unwrap() > 1_600_000_000.0);
    }
}
