//! Every field of the config reference does something a test shows: each field in
//! `docs/config-reference.md` (generated from the types, so a new field lands there) has a line
//! in `testdata/field-tests.txt` naming a test (`file::function`) that exercises it, and that
//! test exists and mentions the field — by its YAML key, its Rust name, or the word given as
//! the line's third column — in its body or in a YAML file its file includes. A field with no
//! such test fails here: write the test, or refuse the field in `validate` ("not supported
//! yet") and take it out of the reference.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `Section.field` for every row of the reference's tables (not `apiVersion` and `kind`).
fn reference_fields() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join("docs/config-reference.md")).unwrap();
    let mut section = String::new();
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(h) = line
            .strip_prefix("## ")
            .or_else(|| line.strip_prefix("### "))
        {
            section = h.split_whitespace().next().unwrap_or_default().to_string();
        } else if let Some(rest) = line.strip_prefix("| `") {
            let field = rest.split('`').next().unwrap_or_default();
            if !matches!(field, "apiVersion" | "kind") && !section.is_empty() {
                out.insert(format!("{section}.{field}"));
            }
        }
    }
    out
}

fn snake(key: &str) -> String {
    let mut s = String::new();
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            s.push('_');
            s.push(c.to_ascii_lowercase());
        } else {
            s.push(c);
        }
    }
    s
}

/// Whether `word` stands in `text` as a word (a `\n` escape in a Rust string is a line break).
fn mentions(text: &str, word: &str) -> bool {
    let text = text.replace("\\n", "\n");
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(is_word) && !after.is_some_and(is_word)
    })
}

/// The body of `fn name` in `source` (to the brace that closes it), if there is one.
fn body<'a>(source: &'a str, name: &str) -> Option<&'a str> {
    let start = source
        .match_indices(&format!("fn {name}("))
        .map(|(i, _)| i)
        .next()?;
    let open = start + source[start..].find('{')?;
    let mut depth = 0usize;
    for (i, c) in source[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&source[start..open + i + 1]);
                }
            }
            _ => {}
        }
    }
    None
}

/// The YAML files a source file includes (`include_str!("...yaml")`).
fn included_yaml(file: &Path, source: &str) -> String {
    let mut out = String::new();
    for (i, _) in source.match_indices("include_str!(\"") {
        let rest = &source[i + "include_str!(\"".len()..];
        let Some(end) = rest.find('"') else { continue };
        let rel = &rest[..end];
        if rel.ends_with(".yaml")
            && let Ok(t) = std::fs::read_to_string(file.parent().unwrap().join(rel))
        {
            out.push_str(&t);
        }
    }
    out
}

#[test]
fn every_field_of_the_reference_has_a_test_that_exercises_it() {
    let fields = reference_fields();
    assert!(fields.len() > 100, "the reference was not read: {fields:?}");
    let map = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/field-tests.txt"),
    )
    .unwrap();
    let mut tested: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for (n, line) in map.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (Some(field), Some(test)) = (cols.first(), cols.get(1)) else {
            problems.push(format!(
                "line {}: expected FIELD FILE::FUNCTION [WORD]",
                n + 1
            ));
            continue;
        };
        if !fields.contains(*field) {
            problems.push(format!(
                "line {}: {field} is not a field of the reference",
                n + 1
            ));
            continue;
        }
        let Some((file, func)) = test.split_once("::") else {
            problems.push(format!("line {}: {test} is not FILE::FUNCTION", n + 1));
            continue;
        };
        let path = repo().join(file);
        let Ok(source) = std::fs::read_to_string(&path) else {
            problems.push(format!("line {}: {field}: no file {file}", n + 1));
            continue;
        };
        let Some(b) = body(&source, func) else {
            problems.push(format!("line {}: {field}: no fn {func} in {file}", n + 1));
            continue;
        };
        let key = field.split_once('.').unwrap().1;
        let words: Vec<String> = match cols.get(2) {
            Some(w) => vec![(*w).to_string()],
            None => vec![key.to_string(), snake(key)],
        };
        let yaml = included_yaml(&path, &source);
        if !words.iter().any(|w| mentions(b, w) || mentions(&yaml, w)) {
            problems.push(format!(
                "line {}: {field}: {file}::{func} never mentions {}",
                n + 1,
                words.join(" or ")
            ));
            continue;
        }
        tested
            .entry((*field).to_string())
            .or_default()
            .push(test.to_string());
    }
    for f in &fields {
        if !tested.contains_key(f) {
            problems.push(format!(
                "{f}: no test exercises it (testdata/field-tests.txt)"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checks_own_parts() {
    assert!(mentions("kind: X\\ncoreDNS:\\n", "coreDNS"));
    assert!(!mentions("disk_selector", "disk"));
    assert!(mentions("a.disk_selector", "disk_selector"));
    assert_eq!(snake("peerDownAfter"), "peer_down_after");
    let src = "fn a() { if x { y } }\nfn b() {}";
    assert_eq!(body(src, "a"), Some("fn a() { if x { y } }"));
    assert_eq!(body(src, "c"), None);
}
