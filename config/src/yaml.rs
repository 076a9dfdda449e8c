//! A YAML tree that remembers where every node came from.
//!
//! serde stops at the first error and forgets positions, so the config is first read into this
//! tree (line and column on every node) and decoded from it with every problem collected.
//! Scalars are resolved by the YAML 1.2 core schema: `yes`/`on` are strings, not booleans.
//!
//! A config can come from the network before any certificate is checked (maintenance mode), so
//! what a text may make is bounded ([`MAX_BYTES`], [`MAX_NODES`] — counting every node an alias
//! repeats —, [`MAX_DEPTH`], [`MAX_DOCUMENTS`]): past a limit, reading stops with an error at the
//! line that went over, before the tree costs memory or stack.

use std::collections::HashMap;
use std::fmt::Write as _;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// One YAML node and its position (1-based line and column).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub line: usize,
    pub col: usize,
}

/// The value of a node.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in file order; duplicate keys are kept so the decoder can report them.
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// What the value is, for error messages ("expected a string, found a mapping").
    pub fn describe(&self) -> String {
        match self {
            Value::Null => "null".into(),
            Value::Bool(b) => format!("boolean {b}"),
            Value::Int(i) => format!("integer {i}"),
            Value::Float(f) => format!("number {f}"),
            Value::Str(s) => format!("string {s:?}"),
            Value::Seq(_) => "a list".into(),
            Value::Map(_) => "a mapping".into(),
        }
    }
}

impl Node {
    pub fn new(value: Value) -> Self {
        Node {
            value,
            line: 0,
            col: 0,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value under `key` when this node is a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Converts to JSON (used by patches and by the API). Mapping keys become strings.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (scalar_key(k), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// Converts from JSON; positions are zero (unknown).
    pub fn from_json(json: &serde_json::Value) -> Node {
        use serde_json::Value as J;
        Node::new(match json {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            J::String(s) => Value::Str(s.clone()),
            J::Array(items) => Value::Seq(items.iter().map(Node::from_json).collect()),
            J::Object(map) => Value::Map(
                map.iter()
                    .map(|(k, v)| (Node::new(Value::Str(k.clone())), Node::from_json(v)))
                    .collect(),
            ),
        })
    }
}

fn scalar_key(node: &Node) -> String {
    match &node.value {
        Value::Str(s) => s.clone(),
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Seq(_) | Value::Map(_) => "<complex key>".into(),
    }
}

/// The largest config text read, in bytes (a config is kilobytes; inline manifests make it more).
pub const MAX_BYTES: usize = 4 << 20;
/// The most nodes a text may make, counting each node every alias repeats: a few hundred
/// bytes of aliases to aliases would otherwise expand to billions.
pub const MAX_NODES: usize = 100_000;
/// The deepest nesting of sequences and mappings, in any style.
pub const MAX_DEPTH: usize = 64;
/// The most documents in one text.
pub const MAX_DOCUMENTS: usize = 1_000;

/// A YAML syntax error, with its position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} column {col}: {message}")]
pub struct SyntaxError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// Parses a multi-document YAML stream. Empty documents (a stray `---`) are dropped.
pub fn parse_documents(text: &str) -> Result<Vec<Node>, SyntaxError> {
    if text.len() > MAX_BYTES {
        return Err(SyntaxError {
            line: 1,
            col: 1,
            message: format!(
                "the text is {} bytes: more than the {MAX_BYTES} a config may be",
                text.len()
            ),
        });
    }
    // A byte-order mark (editors on some systems write one) is not part of the config.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // `key:<TAB>value` is YAML 1.2 (a tab separates as a space does), but the scanner refuses
    // a tab after `:` before a plain scalar. Where it does, that tab is separation and nothing
    // else — never in a quoted or block scalar, where the scanner does not look for `:` — so
    // it is read as a space (same length: positions in later errors stay right) and the text
    // parsed again, a bounded number of times.
    let mut owned: Option<String> = None;
    for _ in 0..=TAB_FIXES {
        let t = owned.as_deref().unwrap_or(text);
        match parse_once(t) {
            Err((e, Some(at))) if e.message == TAB_AFTER_COLON => match tab_as_space(t, at) {
                Some(fixed) => owned = Some(fixed),
                None => return Err(e),
            },
            Err((e, _)) => return Err(e),
            Ok(docs) => return Ok(docs),
        }
    }
    Err(SyntaxError {
        line: 1,
        col: 1,
        message: format!("more than {TAB_FIXES} tabs after ':' before a value: use spaces"),
    })
}

/// The scanner's message for a tab after `:`.
const TAB_AFTER_COLON: &str = "':' must be followed by a valid YAML whitespace";
/// How many such tabs are read as spaces before the text is refused (each costs a parse).
const TAB_FIXES: usize = 16;

/// `text` with the tabs just before char index `at` (back to the `:`) made spaces; `None`
/// when they are not tabs after a `:`.
fn tab_as_space(text: &str, at: usize) -> Option<String> {
    let mut chars: Vec<char> = text.chars().collect();
    let mut i = at.min(chars.len());
    let end = i;
    while i > 0 && chars[i - 1] == '\t' {
        i -= 1;
    }
    if i == end || i == 0 || chars[i - 1] != ':' {
        return None;
    }
    for c in &mut chars[i..end] {
        *c = ' ';
    }
    Some(chars.into_iter().collect())
}

/// One parse: the documents, or the error and (for a scanner error) its char index.
fn parse_once(text: &str) -> Result<Vec<Node>, (SyntaxError, Option<usize>)> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text).keep_tags(true);
    // Events one at a time, not the parser's own `load`: that recurses once per level of
    // nesting (a 40 KB `- - - …` overflowed the stack), and it would read a hostile text to
    // its end after the first error.
    loop {
        let (ev, mark) = parser.next_token().map_err(|e| {
            (
                SyntaxError {
                    line: e.marker().line(),
                    col: e.marker().col() + 1,
                    message: e.info().to_string(),
                },
                Some(e.marker().index()),
            )
        })?;
        let end = ev == Event::StreamEnd;
        builder.on_event(ev, mark);
        if let Some(err) = builder.error {
            return Err((err, None));
        }
        if end {
            break;
        }
    }
    Ok(builder
        .docs
        .into_iter()
        .filter(|d| d.value != Value::Null)
        .collect())
}

#[derive(Default)]
struct Builder {
    docs: Vec<Node>,
    /// Open collections: the node being built, for mappings a pending key, its anchor, and how
    /// many nodes it holds so far (itself included).
    stack: Vec<(Node, Option<Node>, usize, usize)>,
    /// Anchored nodes and how many nodes each holds.
    anchors: HashMap<usize, (Node, usize)>,
    /// Every node made so far, counting what aliases repeat.
    nodes: usize,
    documents: usize,
    error: Option<SyntaxError>,
}

impl Builder {
    fn fail(&mut self, mark: Marker, message: String) {
        if self.error.is_none() {
            self.error = Some(SyntaxError {
                line: mark.line(),
                col: mark.col() + 1,
                message,
            });
        }
    }

    /// Counts `n` more nodes; false (and the error) past [`MAX_NODES`].
    fn count(&mut self, n: usize, mark: Marker) -> bool {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            self.fail(
                mark,
                format!("the text makes more than {MAX_NODES} nodes (aliases count each time they repeat one)"),
            );
            return false;
        }
        true
    }

    /// Adds a finished node of `weight` nodes to its parent (or as a document).
    fn insert(&mut self, node: Node, anchor: usize, weight: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, (node.clone(), weight));
        }
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some((parent, pending_key, _, held)) => {
                *held = held.saturating_add(weight);
                match &mut parent.value {
                    Value::Seq(items) => items.push(node),
                    Value::Map(entries) => match pending_key.take() {
                        None => *pending_key = Some(node),
                        Some(key) => entries.push((key, node)),
                    },
                    _ => unreachable!("only collections are pushed on the stack"),
                }
            }
        }
    }

    fn open(&mut self, value: Value, anchor: usize, mark: Marker) {
        if self.stack.len() >= MAX_DEPTH {
            self.fail(mark, format!("nested more than {MAX_DEPTH} levels deep"));
            return;
        }
        if self.count(1, mark) {
            let node = Node {
                value,
                line: mark.line(),
                col: mark.col() + 1,
            };
            self.stack.push((node, None, anchor, 1));
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        // Past the first error nothing more is built: the parser still reads to the end, but
        // a hostile text costs no memory after it.
        if self.error.is_some() {
            return;
        }
        let (line, col) = (mark.line(), mark.col() + 1);
        match ev {
            Event::Scalar(text, style, anchor, tag) => match resolve_scalar(text, style, tag) {
                Ok(value) => {
                    if self.count(1, mark) {
                        self.insert(Node { value, line, col }, anchor, 1);
                    }
                }
                Err(why) => self.fail(mark, why.to_string()),
            },
            Event::SequenceStart(anchor, _) => self.open(Value::Seq(vec![]), anchor, mark),
            Event::MappingStart(anchor, _) => self.open(Value::Map(vec![]), anchor, mark),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, _, anchor, weight)) = self.stack.pop() {
                    self.insert(node, anchor, weight);
                }
            }
            Event::Alias(id) => match self.anchors.get(&id) {
                Some((_, weight)) => {
                    let weight = *weight;
                    if self.count(weight, mark) {
                        let mut node = self.anchors[&id].0.clone();
                        node.line = line;
                        node.col = col;
                        self.insert(node, 0, weight);
                    }
                }
                None => self.fail(mark, "alias to an unknown anchor".into()),
            },
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > MAX_DOCUMENTS {
                    self.fail(mark, format!("more than {MAX_DOCUMENTS} documents"));
                }
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

/// Why a scalar is refused before any field looks at it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum ScalarError {
    /// No value of a config carries a NUL: it would cut a path or an argument short where the
    /// value goes.
    #[error("a NUL character in a value")]
    Nul,
    #[error("unsupported tag {0}: only !!str is accepted")]
    Tag(String),
}

/// YAML 1.2 core schema resolution for plain scalars; quoted scalars are always strings.
fn resolve_scalar(
    text: String,
    style: TScalarStyle,
    tag: Option<Tag>,
) -> Result<Value, ScalarError> {
    if text.contains('\0') {
        return Err(ScalarError::Nul);
    }
    if let Some(tag) = tag {
        return match (tag.handle.as_str(), tag.suffix.as_str()) {
            ("!!", "str") | ("tag:yaml.org,2002:", "str") => Ok(Value::Str(text)),
            _ => Err(ScalarError::Tag(format!("{}{}", tag.handle, tag.suffix))),
        };
    }
    if style != TScalarStyle::Plain {
        return Ok(Value::Str(text));
    }
    Ok(match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => Value::Null,
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => Value::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => Value::Float(f64::NAN),
        s => {
            if let Some(i) = parse_int(s) {
                Value::Int(i)
            } else if looks_like_float(s) {
                match s.parse::<f64>() {
                    Ok(f) => Value::Float(f),
                    Err(_) => Value::Str(text),
                }
            } else {
                Value::Str(text)
            }
        }
    })
}

fn parse_int(s: &str) -> Option<i64> {
    if let Some(hex) = s.strip_prefix("0x") {
        return i64::from_str_radix(hex, 16).ok();
    }
    if let Some(oct) = s.strip_prefix("0o") {
        return i64::from_str_radix(oct, 8).ok();
    }
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn looks_like_float(s: &str) -> bool {
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    let mut seen_digit = false;
    for (i, c) in body.char_indices() {
        match c {
            '0'..='9' => seen_digit = true,
            '.' => {}
            'e' | 'E' => {
                let rest = &body[i + 1..];
                let rest = rest.strip_prefix(['-', '+']).unwrap_or(rest);
                return seen_digit && !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit());
            }
            _ => return false,
        }
    }
    seen_digit && body.contains('.')
}

/// Renders JSON as block YAML; multi-line strings (PEM) become literal blocks.
pub fn to_yaml_text(json: &serde_json::Value) -> String {
    use yaml_rust2::{Yaml, YamlEmitter, yaml::Hash};
    fn convert(v: &serde_json::Value) -> Yaml {
        use serde_json::Value as J;
        match v {
            J::Null => Yaml::Null,
            J::Bool(b) => Yaml::Boolean(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Yaml::Integer(i),
                None => Yaml::Real(n.to_string()),
            },
            J::String(s) => Yaml::String(s.clone()),
            J::Array(items) => Yaml::Array(items.iter().map(convert).collect()),
            J::Object(map) => {
                let mut hash = Hash::new();
                for (k, v) in map {
                    hash.insert(Yaml::String(k.clone()), convert(v));
                }
                Yaml::Hash(hash)
            }
        }
    }
    let mut out = String::new();
    let mut emitter = YamlEmitter::new(&mut out);
    emitter.multiline_strings(true);
    // Writing to a String cannot fail.
    let _ = emitter.dump(&convert(json));
    let _ = writeln!(out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_core_schema() {
        let docs =
            parse_documents("a: 1\nb:\n  - yes\n  - \"2\"\n  - 3.5\n---\nc: ~\n---\n").unwrap();
        assert_eq!(docs.len(), 2);
        let b = docs[0].get("b").unwrap();
        let Value::Seq(items) = &b.value else {
            panic!()
        };
        assert_eq!(items[0].value, Value::Str("yes".into()));
        assert_eq!(items[0].line, 3);
        assert_eq!(items[1].value, Value::Str("2".into()));
        assert_eq!(items[2].value, Value::Float(3.5));
        assert_eq!(docs[0].get("a").unwrap().value, Value::Int(1));
        assert_eq!(docs[1].get("c").unwrap().value, Value::Null);
        assert_eq!(docs[1].line, 7);
    }

    #[test]
    fn syntax_error_has_position() {
        let err = parse_documents("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.line >= 1, "{err}");
        assert!(err.to_string().starts_with("line "), "{err}");
    }

    #[test]
    fn anchors_resolve_and_unknown_tags_fail() {
        let docs = parse_documents("a: &x [1]\nb: *x\n").unwrap();
        assert_eq!(docs[0].get("b").unwrap().to_json(), serde_json::json!([1]));
        let err = parse_documents("a: !!binary abc\n").unwrap_err();
        assert!(err.message.contains("unsupported tag"), "{err}");
    }

    #[test]
    fn aliases_of_aliases_are_refused_before_they_expand() {
        // Nine levels of ten aliases each: a billion nodes from 400 bytes.
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = parse_documents(&text).unwrap_err();
        assert!(err.message.contains("more than 100000 nodes"), "{err}");
        assert!(
            err.line >= 4 && err.line <= 6,
            "the line that went over: {err}"
        );
        // A few aliases are fine.
        assert!(parse_documents("a: &x [1, 2]\nb: [*x, *x]\n").is_ok());
    }

    #[test]
    fn deep_nesting_is_refused_in_every_style() {
        // `- - - - … x`: block sequences tens of thousands deep in 40 KB.
        let block = "- ".repeat(20_000) + "x\n";
        let err = parse_documents(&block).unwrap_err();
        assert!(err.message.contains("nested more than 64 levels"), "{err}");
        let indented: String = (0..100)
            .map(|i| format!("{}- \n", "  ".repeat(i)))
            .collect();
        let err = parse_documents(&indented).unwrap_err();
        assert_eq!(err.line, 65, "{err}");
        let flow = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(parse_documents(&flow).is_err());
        let ok = format!("{}{}", "[".repeat(60), "]".repeat(60));
        assert!(parse_documents(&ok).is_ok());
    }

    #[test]
    fn a_byte_order_mark_is_skipped_and_nul_refused() {
        let docs = parse_documents("a:\tb\nc:\t\td\n\"e:\tf\": g\n").unwrap();
        let Value::Map(m) = &docs[0].value else {
            panic!("{docs:?}")
        };
        let keys: Vec<String> = m
            .iter()
            .map(|(k, v)| format!("{}={:?}", k.as_str().unwrap_or(""), v.value))
            .collect();
        assert_eq!(keys.len(), 3, "{keys:?}");
        assert!(
            keys[0].starts_with("a=") && keys[0].contains("\"b\""),
            "{keys:?}"
        );
        // A tab inside a quoted key is content, untouched.
        assert!(keys[2].starts_with("e:\tf="), "{keys:?}");
        let many =
            "k: v\n".to_string() + &(0..20).map(|i| format!("k{i}:\tv\n")).collect::<String>();
        let e = parse_documents(&many).unwrap_err();
        assert!(e.message.contains("tabs after ':'"), "{e}");
        let docs = parse_documents("\u{feff}apiVersion: v1alpha1\n").unwrap();
        assert_eq!(
            docs[0].get("apiVersion").unwrap().as_str(),
            Some("v1alpha1")
        );
        let err = parse_documents("a: \"x\\0y\"\n").unwrap_err();
        assert!(err.message.contains("NUL"), "{err}");
    }

    #[test]
    fn size_and_document_count_are_bounded() {
        let big = "a: ".to_string() + &"x".repeat(MAX_BYTES) + "\n";
        let err = parse_documents(&big).unwrap_err();
        assert!(err.message.contains("a config may be"), "{err}");
        let many = "---\na: 1\n".repeat(MAX_DOCUMENTS + 1);
        let err = parse_documents(&many).unwrap_err();
        assert!(err.message.contains("more than 1000 documents"), "{err}");
    }

    #[test]
    fn yaml_round_trip_keeps_strings_strings() {
        let json =
            serde_json::json!({"a": "123", "b": "yes", "c": "x\ny\n", "d": [1, {"e": true}]});
        let text = to_yaml_text(&json);
        let back = parse_documents(&text).unwrap();
        assert_eq!(back[0].to_json(), json, "{text}");
    }
}
