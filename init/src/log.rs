//! Boot logging: one line per step to the console and to the kernel log.
//!
//! The kernel echoes `/dev/kmsg` lines to the console when its console log level lets info
//! through (no `quiet`); then the line goes to kmsg only, so it is never printed twice.

use std::io::Write as _;
use std::sync::Mutex;
use std::time::Instant;

static KMSG: Mutex<Option<std::fs::File>> = Mutex::new(None);
/// PID 1's own log ring, kept for the API (`osctl logs init`).
static RING: std::sync::OnceLock<std::sync::Arc<crate::logring::LogRing>> =
    std::sync::OnceLock::new();

/// From now on every line is also kept in `ring`.
pub fn keep_in(ring: std::sync::Arc<crate::logring::LogRing>) {
    let _ = RING.set(ring);
}
static START: Mutex<Option<Instant>> = Mutex::new(None);

/// Opens `/dev/kmsg`; call once `/dev` is mounted. Before that, lines go to the console only.
pub fn open_kmsg() {
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        *KMSG.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }
}

fn kernel_echoes_info() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/printk")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .is_some_and(|console_level| console_level > 6)
}

/// Milliseconds since this process started logging.
pub fn elapsed_ms() -> u128 {
    let mut start = START.lock().unwrap_or_else(|p| p.into_inner());
    start.get_or_insert_with(Instant::now).elapsed().as_millis()
}

/// Logs one line: `basalt: <msg>`.
pub fn line(msg: &str) {
    if let Some(r) = RING.get() {
        r.push(msg);
    }
    let text = format!("basalt: {msg}");
    let mut kmsg = KMSG.lock().unwrap_or_else(|p| p.into_inner());
    let echoed = match kmsg.as_mut() {
        Some(f) => f.write_all(format!("<6>{text}\n").as_bytes()).is_ok() && kernel_echoes_info(),
        None => false,
    };
    if !echoed {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }
}

/// The kernel log's records in `/dev/kmsg` now (non-blocking, nothing waited for): each as its
/// boot-relative milliseconds and its text's first line.
pub fn kernel_log() -> std::io::Result<Vec<(i64, String)>> {
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
            Ok(n) => out.extend(parse_kmsg(&String::from_utf8_lossy(&buf[..n]))),
            // EPIPE: a record was overwritten before we read it; go on.
            Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// `"6,123,4567890,-;text"` → the text, with the boot-relative microseconds as milliseconds.
fn parse_kmsg(rec: &str) -> Option<(i64, String)> {
    let (head, text) = rec.split_once(';')?;
    let usec: i64 = head.split(',').nth(2)?.parse().ok()?;
    Some((
        usec / 1000,
        text.lines().next().unwrap_or_default().to_string(),
    ))
}
