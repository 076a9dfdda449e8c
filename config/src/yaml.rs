//! A YAML tree that remembers where every node came from.
//!
//! serde stops at the first error and forgets positions, so the config is first read into this
//! tree (line and column on every node) and decoded from it with every problem collected.
//! Scalars are resolved by the YAML 1.2 core schema: `yes`/`on` are strings, not booleans.

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
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text).keep_tags(true);
    parser.load(&mut builder, true).map_err(|e| SyntaxError {
        line: e.marker().line(),
        col: e.marker().col() + 1,
        message: e.info().to_string(),
    })?;
    if let Some(err) = builder.error {
        return Err(err);
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
    /// Open collections: the node being built and, for mappings, a pending key.
    stack: Vec<(Node, Option<Node>, usize)>,
    anchors: HashMap<usize, Node>,
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

    fn insert(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some((parent, pending_key, _)) => match &mut parent.value {
                Value::Seq(items) => items.push(node),
                Value::Map(entries) => match pending_key.take() {
                    None => *pending_key = Some(node),
                    Some(key) => entries.push((key, node)),
                },
                _ => unreachable!("only collections are pushed on the stack"),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let (line, col) = (mark.line(), mark.col() + 1);
        match ev {
            Event::Scalar(text, style, anchor, tag) => match resolve_scalar(text, style, tag) {
                Ok(value) => self.insert(Node { value, line, col }, anchor),
                Err(message) => self.fail(mark, message),
            },
            Event::SequenceStart(anchor, _) => {
                self.stack.push((
                    Node {
                        value: Value::Seq(vec![]),
                        line,
                        col,
                    },
                    None,
                    anchor,
                ));
            }
            Event::MappingStart(anchor, _) => {
                self.stack.push((
                    Node {
                        value: Value::Map(vec![]),
                        line,
                        col,
                    },
                    None,
                    anchor,
                ));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, _, anchor)) = self.stack.pop() {
                    self.insert(node, anchor);
                }
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(mut node) => {
                    node.line = line;
                    node.col = col;
                    self.insert(node, 0);
                }
                None => self.fail(mark, "alias to an unknown anchor".into()),
            },
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

/// YAML 1.2 core schema resolution for plain scalars; quoted scalars are always strings.
fn resolve_scalar(text: String, style: TScalarStyle, tag: Option<Tag>) -> Result<Value, String> {
    if let Some(tag) = tag {
        return match (tag.handle.as_str(), tag.suffix.as_str()) {
            ("!!", "str") | ("tag:yaml.org,2002:", "str") => Ok(Value::Str(text)),
            _ => Err(format!(
                "unsupported tag {}{}: only !!str is accepted",
                tag.handle, tag.suffix
            )),
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
    fn yaml_round_trip_keeps_strings_strings() {
        let json =
            serde_json::json!({"a": "123", "b": "yes", "c": "x\ny\n", "d": [1, {"e": true}]});
        let text = to_yaml_text(&json);
        let back = parse_documents(&text).unwrap();
        assert_eq!(back[0].to_json(), json, "{text}");
    }
}
