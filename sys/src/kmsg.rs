//! The kernel log, `/dev/kmsg`: where early boot and PID 1 write their lines (the kernel
//! echoes them to the console) and where the kernel's own records are read back.
//!
//! The kernel echoes a `/dev/kmsg` line to the console when its console log level lets the
//! line's level through (no `quiet`); otherwise the line goes to stdout too, so it is on the
//! console exactly once.

use std::io::Write as _;
use std::sync::Mutex;

static KMSG: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Syslog levels, as `/dev/kmsg` takes them in a `<N>` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error = 3,
    Warning = 4,
    Info = 6,
    Debug = 7,
}

/// Opens `/dev/kmsg` for writing; call once `/dev` is mounted. Before that (or where it cannot
/// be opened, in a container), lines go to stdout only.
pub fn open() {
    // The kernel rate-limits what userspace writes to /dev/kmsg (a burst of 10 lines, then
    // silently dropped): a node's boot writes more, and the line dropped can be the FATAL one.
    // PID 1 owns this node's kernel log.
    let _ = std::fs::write("/proc/sys/kernel/printk_devkmsg", "on\n");
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        *KMSG.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }
}

fn console_level() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/printk")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
}

/// Writes one line, `basalt: <text>`, at `level`.
pub fn write(level: Level, text: &str) {
    let text = format!("basalt: {text}");
    let mut kmsg = KMSG.lock().unwrap_or_else(|p| p.into_inner());
    let echoed = match kmsg.as_mut() {
        Some(f) => {
            // One record per write: a line with a newline inside would be two records.
            let one = text.replace('\n', " ");
            f.write_all(format!("<{}>{one}\n", level as u32).as_bytes())
                .is_ok()
                && console_level().is_some_and(|c| c > level as u32)
        }
        None => false,
    };
    if !echoed {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }
}

/// Writes one line at the info level.
pub fn line(text: &str) {
    write(Level::Info, text)
}

/// The kernel log's records in `/dev/kmsg` now (non-blocking, nothing waited for): each as its
/// boot-relative milliseconds and its text's first line.
pub fn records() -> std::io::Result<Vec<(i64, String)>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open("/dev/kmsg")?;
    let mut out = Vec::new();
    // Each read is one record.
    let mut buf = vec![0u8; 8192];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend(parse(&String::from_utf8_lossy(&buf[..n]))),
            // EPIPE: a record was overwritten before we read it; go on.
            Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// `"6,123,4567890,-;text"` → the text, with the boot-relative microseconds as milliseconds.
fn parse(rec: &str) -> Option<(i64, String)> {
    let (head, text) = rec.split_once(';')?;
    let usec: i64 = head.split(',').nth(2)?.parse().ok()?;
    Some((
        usec / 1000,
        text.lines().next().unwrap_or_default().to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_its_time_and_first_line() {
        assert_eq!(
            parse(
                "6,123,4567890,-;device-mapper: verity: 7:0: data block 42 is corrupted\n SUBSYSTEM=block"
            ),
            Some((
                4567,
                "device-mapper: verity: 7:0: data block 42 is corrupted".into()
            ))
        );
        assert_eq!(parse("no separator"), None);
        assert_eq!(parse("6,1,notanumber,-;x"), None);
    }
}
