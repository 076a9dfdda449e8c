//! Captured logs: a bounded ring of lines per source (init itself, each service), optionally
//! also appended to a file with size-based rotation, and a broadcast for `logs -f`.
//!
//! Memory is bounded by line count and line length; a file write that fails is counted and
//! reported once, never retried in a loop, because logging must not take the node down.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

/// Lines longer than this are cut (a runaway line must not eat the ring's memory).
pub const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Unix milliseconds.
    pub time_ms: i64,
    pub line: String,
}

#[derive(Debug)]
struct FileSink {
    path: PathBuf,
    rotate_bytes: u64,
    written: u64,
    file: Option<std::fs::File>,
    failed: bool,
}

impl FileSink {
    fn write(&mut self, e: &Entry) {
        if self.failed {
            return;
        }
        if self.file.is_none() || self.written >= self.rotate_bytes {
            if self.file.is_some() {
                // Keep one rotated file: <name>.1.
                let mut old = self.path.clone().into_os_string();
                old.push(".1");
                let _ = std::fs::rename(&self.path, old);
            }
            let opened = self
                .path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&self.path)
                });
            match opened {
                Ok(f) => {
                    self.written = f.metadata().map(|m| m.len()).unwrap_or(0);
                    self.file = Some(f);
                }
                Err(_) => {
                    self.failed = true;
                    return;
                }
            }
        }
        if let Some(f) = self.file.as_mut() {
            let text = format!("{} {}\n", format_time(e.time_ms), e.line);
            if f.write_all(text.as_bytes()).is_err() {
                self.failed = true;
            }
            self.written += text.len() as u64;
        }
    }
}

/// RFC 3339 UTC with milliseconds, computed without a time zone database.
pub fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{milli:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => ms.to_string(),
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[derive(Debug)]
struct Inner {
    lines: VecDeque<Entry>,
    cap: usize,
    file: Option<FileSink>,
}

/// One source's log.
#[derive(Debug)]
pub struct LogRing {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Entry>,
}

impl LogRing {
    /// A ring of `cap` lines, also written to `file` (rotated past `rotate_bytes`) if given.
    pub fn new(cap: usize, file: Option<PathBuf>, rotate_bytes: u64) -> Self {
        let (tx, _) = broadcast::channel(1024);
        LogRing {
            inner: Mutex::new(Inner {
                lines: VecDeque::with_capacity(cap.min(1024)),
                cap: cap.max(1),
                file: file.map(|path| FileSink {
                    path,
                    rotate_bytes,
                    written: 0,
                    file: None,
                    failed: false,
                }),
            }),
            tx,
        }
    }

    pub fn push(&self, line: &str) {
        self.push_at(now_ms(), line);
    }

    pub fn push_at(&self, time_ms: i64, line: &str) {
        let mut line = line.trim_end_matches(['\n', '\r']).to_string();
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push_str(" [cut]");
        }
        let e = Entry { time_ms, line };
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.lines.len() == inner.cap {
            inner.lines.pop_front();
        }
        if let Some(f) = inner.file.as_mut() {
            f.write(&e);
        }
        inner.lines.push_back(e.clone());
        // Sent under the lock, so a subscriber's snapshot and its stream never overlap or gap.
        let _ = self.tx.send(e);
    }

    /// Opens the file again at its path on the next line (the filesystem under it changed).
    pub fn reopen(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = inner.file.as_mut() {
            f.file = None;
            f.failed = false;
        }
    }

    /// The last `n` lines (all kept lines when `n` is 0).
    pub fn tail(&self, n: usize) -> Vec<Entry> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let skip = if n == 0 {
            0
        } else {
            inner.lines.len().saturating_sub(n)
        };
        inner.lines.iter().skip(skip).cloned().collect()
    }

    /// The last `n` lines and a receiver for every line after them.
    pub fn follow(&self, n: usize) -> (Vec<Entry>, broadcast::Receiver<Entry>) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.tx.subscribe();
        let skip = if n == 0 {
            0
        } else {
            inner.lines.len().saturating_sub(n)
        };
        (inner.lines.iter().skip(skip).cloned().collect(), rx)
    }
}

/// Every log source on the node, by id.
#[derive(Debug, Clone)]
pub struct Logs {
    dir: Option<PathBuf>,
    cap: usize,
    rotate_bytes: u64,
    rings: Arc<Mutex<BTreeMap<String, Arc<LogRing>>>>,
}

impl Logs {
    /// Rings of `cap` lines; files under `dir` (`<dir>/<id>.log`) when given.
    pub fn new(dir: Option<PathBuf>, cap: usize, rotate_bytes: u64) -> Self {
        Logs {
            dir,
            cap,
            rotate_bytes,
            rings: Arc::default(),
        }
    }

    /// The ring for `id`, made on first use.
    pub fn ring(&self, id: &str) -> Arc<LogRing> {
        let mut rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        rings
            .entry(id.to_string())
            .or_insert_with(|| {
                Arc::new(LogRing::new(
                    self.cap,
                    self.dir.as_ref().map(|d| d.join(format!("{id}.log"))),
                    self.rotate_bytes,
                ))
            })
            .clone()
    }

    /// Every ring opens its file again on its next line: `/var` was mounted anew.
    pub fn reopen(&self) {
        for r in self
            .rings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            r.reopen();
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<LogRing>> {
        self.rings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    pub fn ids(&self) -> Vec<String> {
        self.rings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_last_lines_and_cuts_long_ones() {
        let r = LogRing::new(3, None, 0);
        for i in 0..5 {
            r.push(&format!("line {i}\n"));
        }
        let t: Vec<String> = r.tail(0).into_iter().map(|e| e.line).collect();
        assert_eq!(t, ["line 2", "line 3", "line 4"]);
        assert_eq!(r.tail(1)[0].line, "line 4");
        r.push(&"é".repeat(MAX_LINE));
        let last = r.tail(1).remove(0).line;
        assert!(last.ends_with(" [cut]") && last.len() <= MAX_LINE + 6);
    }

    #[tokio::test]
    async fn follow_sees_the_snapshot_then_new_lines() {
        let r = LogRing::new(10, None, 0);
        r.push("a");
        r.push("b");
        let (snap, mut rx) = r.follow(1);
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].line, "b");
        r.push("c");
        assert_eq!(rx.recv().await.unwrap().line, "c");
    }

    #[test]
    fn file_sink_rotates_and_keeps_one_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.log");
        let r = LogRing::new(100, Some(path.clone()), 200);
        for i in 0..20 {
            r.push(&format!("a line of some length, number {i}"));
        }
        let cur = std::fs::read_to_string(&path).unwrap();
        let old = std::fs::read_to_string(dir.path().join("svc.log.1")).unwrap();
        assert!(cur.contains("number 19"), "{cur}");
        assert!(!cur.contains("number 0 "), "{cur}");
        assert!(old.lines().count() >= 2, "{old}");
        assert!(std::fs::metadata(&path).unwrap().len() < 400);
        assert!(cur.starts_with("20") && cur.contains("Z a line"), "{cur}");
    }

    #[test]
    fn time_format_is_rfc3339() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
