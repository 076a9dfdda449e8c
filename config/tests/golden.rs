//! Golden config files: every file in `testdata/valid` must parse, and every file in
//! `testdata/invalid` must fail with exactly the messages in its `.expected` file.
//!
//! A file whose first lines hold `# +secrets` gets `testdata/common/secrets.yaml` appended (so
//! line numbers of its own documents stay true), and `# mode: container` selects the mode.
//! `BASALT_BLESS=1 cargo test -p basalt-config --test golden` rewrites the expected files;
//! review the diff before committing it.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use basalt_config::{Config, Mode};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn load(path: &Path) -> (String, Mode) {
    let mut text = std::fs::read_to_string(path).unwrap();
    let header: Vec<&str> = text.lines().take_while(|l| l.starts_with('#')).collect();
    let mode = if header.contains(&"# mode: container") {
        Mode::Container
    } else {
        Mode::Metal
    };
    if header.contains(&"# +secrets") {
        let secrets = std::fs::read_to_string(testdata().join("common/secrets.yaml")).unwrap();
        text = format!("{text}\n{secrets}");
    }
    (text, mode)
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(testdata().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no golden files in {dir}");
    files
}

#[test]
fn valid_files_parse_and_round_trip() {
    for path in yaml_files("valid") {
        let (text, mode) = load(&path);
        let cfg = Config::parse(&text, mode).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let again = Config::parse(&cfg.to_yaml(), mode)
            .unwrap_or_else(|e| panic!("{} after round trip: {e}", path.display()));
        assert_eq!(
            cfg.to_json_documents(),
            again.to_json_documents(),
            "{} changes when written and read back",
            path.display()
        );
    }
}

#[test]
fn invalid_files_report_every_problem() {
    let bless = std::env::var_os("BASALT_BLESS").is_some();
    let mut failures = Vec::new();
    for path in yaml_files("invalid") {
        let (text, mode) = load(&path);
        let got = match Config::parse(&text, mode) {
            Ok(_) => "<accepted>\n".to_string(),
            Err(e) => format!("{e}\n"),
        };
        let expected_path = path.with_extension("expected");
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} is missing", expected_path.display()));
        if got != expected {
            failures.push(format!(
                "{}:\n--- expected\n{expected}--- got\n{got}",
                path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A value pasted whole into a config (a megabyte) does not come back whole in the error:
/// the message keeps its start and end, and says how much it left out.
#[test]
fn a_huge_bad_value_is_not_repeated_whole() {
    let base = std::fs::read_to_string(testdata().join("valid/worker.yaml")).unwrap();
    let huge = "x".repeat(1 << 20);
    let text = base.replacen(
        "type: worker\n",
        &format!("type: worker\ncertSANs:\n  - \"{huge}!\"\n"),
        1,
    );
    assert_ne!(text, base, "worker.yaml has `type: worker`");
    let err = basalt_config::Config::parse(&text, Mode::Metal)
        .unwrap_err()
        .to_string();
    assert!(err.len() < 2_000, "{} bytes of error", err.len());
    assert!(err.contains("bytes left out"), "{err}");
    assert!(err.contains(".certSANs[0]"), "{err}");
}

/// The OS CA of `text` (a valid config) swapped for a new one valid from `from` to `to`.
fn with_os_ca(text: &str, from: time::OffsetDateTime, to: time::OffsetDateTime) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.not_before = from;
    p.not_after = to;
    let crt = p.self_signed(&key).unwrap().pem();
    let key_pem = key.serialize_pem();
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("      {l}\n"))
            .collect::<String>()
    };
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    let mut in_os = false;
    while let Some(l) = lines.next() {
        out.push_str(l);
        out.push('\n');
        if l == "  os:" {
            in_os = true;
            continue;
        }
        if in_os && (l == "    crt: |" || l == "    key: |") {
            while lines.peek().is_some_and(|n| n.starts_with("      ")) {
                lines.next();
            }
            out.push_str(&indent(if l == "    crt: |" { &crt } else { &key_pem }));
            if l == "    key: |" {
                in_os = false;
            }
        }
    }
    out
}

#[test]
fn a_ca_out_of_its_validity_by_this_clock_is_refused_unless_time_servers_are_named() {
    let worker = std::fs::read_to_string(testdata().join("valid/worker.yaml")).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let future = with_os_ca(
        &worker,
        now + time::Duration::days(300),
        now + time::Duration::days(900),
    );
    let e = Config::parse(&future, Mode::Metal).unwrap_err().to_string();
    assert!(
        e.contains(".certs.os.crt: the CA is not valid before")
            && e.contains("is this machine's clock right?"),
        "{e}"
    );
    // A node whose clock is wrong until it syncs with the config's servers takes it.
    let timed =
        format!("{future}---\napiVersion: v1alpha1\nkind: TimeConfig\nservers: [10.0.2.2]\n");
    Config::parse(&timed, Mode::Metal).unwrap();
    // Disabled sync, or no server: the clock is all there is, and it is trusted.
    let disabled = timed.replace("servers: [10.0.2.2]", "disabled: true\nservers: [10.0.2.2]");
    assert!(Config::parse(&disabled, Mode::Metal).is_err());
    let expired = with_os_ca(
        &worker,
        now - time::Duration::days(900),
        now - time::Duration::days(300),
    );
    let e = Config::parse(&expired, Mode::Metal)
        .unwrap_err()
        .to_string();
    assert!(e.contains(".certs.os.crt: the CA expired on"), "{e}");
}
