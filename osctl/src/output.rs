//! How osctl prints replies: aligned tables for people, YAML and JSON for programs. Results
//! from many nodes are labelled with the node; errors go to stderr, one line per node.

use std::io::Write as _;

use clap::{Args, ValueEnum};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Yaml,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct Out {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// Rows under headers, columns padded to their widest cell.
#[derive(Debug, Default)]
pub struct Table {
    pub headers: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(c.chars().count());
                }
            }
        }
        let line = |cells: Vec<&str>| {
            let n = cells.len();
            let mut s = String::new();
            for (i, c) in cells.into_iter().enumerate() {
                s.push_str(c);
                if i + 1 < n {
                    let pad = widths[i].saturating_sub(c.chars().count()) + 3;
                    s.push_str(&" ".repeat(pad));
                }
            }
            s.trim_end().to_string()
        };
        let mut out = line(self.headers.clone());
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r.iter().map(String::as_str).collect()));
            out.push('\n');
        }
        out
    }
}

pub fn stdout(s: &str) {
    let mut o = std::io::stdout().lock();
    // A closed pipe (`osctl ... | head`) is not an error worth reporting.
    let _ = o.write_all(s.as_bytes());
    let _ = o.flush();
}

pub fn stderr(s: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{s}");
}

/// A reply as JSON, with the node it came from first.
pub fn labelled<R: Serialize>(node: &str, r: &R) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("node".into(), node.into());
    match serde_json::to_value(r).unwrap_or_default() {
        serde_json::Value::Object(o) => m.extend(o),
        other => {
            m.insert("value".into(), other);
        }
    }
    serde_json::Value::Object(m)
}

/// Prints one value per node in `format` (tables are built by the caller).
pub fn documents(format: Format, docs: &[serde_json::Value]) {
    for d in docs {
        match format {
            Format::Json => stdout(&format!(
                "{}\n",
                serde_json::to_string_pretty(d).unwrap_or_default()
            )),
            // The emitter starts every document with its own `---`.
            _ => stdout(&basalt_config::yaml::to_yaml_text(d)),
        }
    }
}

/// Prints the replies of a fan-out: a table (with a NODE column when there are several
/// targets) or one YAML/JSON document per node. Errors are printed per node; the result is
/// an error if any node failed.
pub fn results<R: Serialize>(
    format: Format,
    results: Vec<(String, Result<R, tonic::Status>)>,
    table: impl Fn(&R) -> Table,
) -> anyhow::Result<()> {
    let many = results.len() > 1;
    let mut failed = 0;
    let total = results.len();
    let mut merged: Option<Table> = None;
    let mut docs = Vec::new();
    for (node, r) in results {
        match r {
            Err(s) => {
                failed += 1;
                stderr(&format!("{node}: error: {}", explain(&s)));
            }
            Ok(r) if format == Format::Table => {
                let t = table(&r);
                let m = merged.get_or_insert_with(|| {
                    let mut h = if many { vec!["NODE"] } else { Vec::new() };
                    h.extend(t.headers.iter().copied());
                    Table::new(&h)
                });
                for mut row in t.rows {
                    if many {
                        row.insert(0, node.clone());
                    }
                    m.row(row);
                }
            }
            Ok(r) => docs.push(labelled(&node, &r)),
        }
    }
    if let Some(t) = merged {
        stdout(&t.render());
    }
    documents(format, &docs);
    if failed > 0 {
        anyhow::bail!("{failed} of {total} nodes failed");
    }
    Ok(())
}

/// Bytes as people read them: 1.5 GiB, 12 MiB, 512 B.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else if v < 10.0 {
        format!("{v:.1} {}", UNITS[u])
    } else {
        format!("{v:.0} {}", UNITS[u])
    }
}

/// A duration in seconds as `3d4h`, `2h5m`, `4m10s`, `12s`.
pub fn age(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// A status as one line, with the fix when the cause is a known one.
pub fn explain(s: &tonic::Status) -> String {
    use std::error::Error as _;
    let mut msg = s.message().to_string();
    let mut src = s.source();
    while let Some(e) = src {
        let t = e.to_string();
        if !msg.contains(&t) {
            msg = format!("{msg}: {t}");
        }
        src = e.source();
    }
    let hint = if msg.contains("UnknownIssuer") || msg.contains("BadSignature") {
        Some(
            "the node's certificate is not from this context's CA: a node of another cluster, or one in maintenance mode (use --insecure)",
        )
    } else if msg.contains("NotValidForName") {
        Some(
            "the node's certificate does not name this address: add it to the machine config's certSANs, or use the node's own address",
        )
    } else if msg.contains("CertificateRequired") || msg.contains("certificate required") {
        Some("the node wants a client certificate: leave out --insecure once the node has a config")
    } else if msg.contains("Connection refused") || msg.contains("tcp connect error") {
        Some(
            "nothing answers there: check the endpoint address and that the node is up (apid listens on :50000)",
        )
    } else if msg.contains("InvalidContentType") || msg.contains("CorruptMessage") {
        Some("the other side does not speak TLS: is this a Basalt node's API port?")
    } else {
        None
    };
    let code = match s.code() {
        tonic::Code::Unknown => String::new(),
        c => format!("{c:?}: "),
    };
    match hint {
        Some(h) => format!("{code}{msg} ({h})"),
        None => format!("{code}{msg}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_sizes_read_well() {
        let mut t = Table::new(&["ID", "STATE"]);
        t.row(vec!["containerd".into(), "running".into()]);
        t.row(vec!["apid".into(), "waiting".into()]);
        assert_eq!(
            t.render(),
            "ID           STATE\ncontainerd   running\napid         waiting\n"
        );
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(20 * 1024 * 1024), "20 MiB");
        assert_eq!(age(59), "59s");
        assert_eq!(age(3725), "1h2m");
        assert_eq!(age(90000), "1d1h");
    }
}
