//! `cluster create --config-server`: the HTTP server a fleet's nodes fetch their configs from
//! at boot (`basalt.config=http://HOST:PORT/configs/${mac}.yaml`). It serves the files of one
//! directory, read-only, GET and HEAD, and logs every request with its answer; `cluster create`
//! starts it detached (`osctl cluster serve`, its pid in the cluster's state) and `cluster
//! destroy` stops it. It is a development server for a local cluster, not a web server: one
//! thread per connection, one request per connection.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

/// The longest request head read.
const MAX_HEAD: usize = 16 << 10;

/// Serves `dir` on `listen` until killed.
pub fn serve(listen: SocketAddr, dir: &Path) -> anyhow::Result<()> {
    let listener =
        TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot serve {}", dir.display()))?;
    crate::print_line(&format!("serving {} on http://{listen}/", dir.display()));
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let dir = dir.clone();
        std::thread::spawn(move || {
            let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let line = answer(conn, &dir);
            crate::print_line(&format!("{peer} {line}"));
        });
    }
    Ok(())
}

/// Reads one request and answers it; returns the log line.
fn answer(conn: TcpStream, dir: &Path) -> String {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(&conn).take(MAX_HEAD as u64);
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return "(no request)".into();
    }
    // The rest of the head: read and ignored.
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line.trim_end() != "" {
        line.clear();
    }
    let first = first.trim_end().to_string();
    if first.is_empty() {
        return "(closed without a request)".into();
    }
    let mut parts = first.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body) = match (method, file(dir, target)) {
        ("GET" | "HEAD", Some(path)) => match std::fs::read(&path) {
            Ok(b) => ("200 OK", b),
            Err(_) => ("404 Not Found", b"not found\n".to_vec()),
        },
        ("GET" | "HEAD", None) => ("404 Not Found", b"not found\n".to_vec()),
        _ => ("405 Method Not Allowed", b"GET or HEAD\n".to_vec()),
    };
    let mut w = &conn;
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\ncontent-type: application/yaml\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = w.write_all(head.as_bytes());
    if method != "HEAD" {
        let _ = w.write_all(&body);
    }
    let _ = w.flush();
    format!("{first:?} {status}")
}

/// The file under `dir` a request target names: its path with the query dropped and percent
/// escapes decoded; `None` for anything that would leave `dir` or is not a plain file name.
fn file(dir: &Path, target: &str) -> Option<PathBuf> {
    let path = target.split(['?', '#']).next()?;
    let path = decode(path.strip_prefix('/')?)?;
    let rel = Path::new(&path);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let full = dir.join(rel);
    full.is_file().then_some(full)
}

fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_map_to_files_inside_the_directory_only() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("configs")).unwrap();
        let f = d.path().join("configs/52:54:00:b5:00:00.yaml");
        std::fs::write(&f, "x").unwrap();
        assert_eq!(
            file(d.path(), "/configs/52:54:00:b5:00:00.yaml?x=1"),
            Some(f.clone())
        );
        assert_eq!(
            file(d.path(), "/configs/52%3A54%3A00%3Ab5%3A00%3A00.yaml"),
            Some(f)
        );
        for bad in [
            "/configs/../configs/52:54:00:b5:00:00.yaml",
            "/configs",
            "/%2e%2e/etc/passwd",
            "configs/x",
            "/configs/%zz",
            "//etc/passwd",
        ] {
            assert_eq!(file(d.path(), bad), None, "{bad}");
        }
    }

    #[test]
    fn it_answers_over_tcp() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.yaml"), "kind: A\n").unwrap();
        let port = basalt_testkit::free_port();
        let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let dir = d.path().to_path_buf();
        std::thread::spawn(move || serve(listen, &dir));
        let get = |target: &str| {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let mut s = loop {
                match TcpStream::connect(listen) {
                    Ok(s) => break s,
                    Err(e) if std::time::Instant::now() > deadline => panic!("{e}"),
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            };
            write!(s, "GET {target} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
            let mut out = String::new();
            std::io::Read::read_to_string(&mut s, &mut out).unwrap();
            out
        };
        let ok = get("/a.yaml");
        assert!(
            ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("\r\n\r\nkind: A\n"),
            "{ok}"
        );
        assert!(get("/b.yaml").starts_with("HTTP/1.1 404 "));
    }
}
