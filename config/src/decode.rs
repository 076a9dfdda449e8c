//! Decoding typed config from the positioned YAML tree, collecting every problem.
//!
//! Each config type is declared once with [`config_struct!`] or [`config_enum!`], which derive
//! the decoder, `Serialize` and the JSON Schema from the same field list, so the three cannot
//! disagree.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::error::ValueError;
use crate::yaml::{Node, Value};

/// Which document a problem belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocRef {
    /// 1-based position of the document in the file.
    pub index: usize,
    pub kind: Option<String>,
    pub name: Option<String>,
}

/// One thing wrong with a config, located as precisely as the input allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub doc: Option<DocRef>,
    /// `.addresses[1]`; empty for the document (or file) as a whole.
    pub path: String,
    pub message: String,
    /// 1-based; `None` when the input has no positions (a config built in code or patched).
    pub line: Option<usize>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.doc {
            Some(doc) => {
                write!(f, "document {}", doc.index)?;
                match (&doc.kind, &doc.name) {
                    (Some(kind), Some(name)) => write!(f, " ({kind} {name})")?,
                    (Some(kind), None) => write!(f, " ({kind})")?,
                    _ => {}
                }
                f.write_str(": ")?;
            }
            None => f.write_str("config: ")?,
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(line) = self.line.filter(|l| *l > 0) {
            write!(f, " (line {line})")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
enum Seg {
    Field(String),
    Index(usize),
}

/// Where each path of one document sits in the file, so validation after decoding can still
/// name a line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spans {
    lines: HashMap<String, usize>,
    pub doc_line: usize,
}

impl Spans {
    /// The line of `path`, or of its nearest recorded ancestor, or of the document.
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l).filter(|l| *l > 0);
            }
            match p.rfind(['.', '[']) {
                Some(i) if i > 0 => p = &p[..i],
                _ => return Some(self.doc_line).filter(|l| *l > 0),
            }
        }
    }
}

/// The decoding context: the current path, the document, and the problems found so far.
#[derive(Debug, Default)]
pub struct Cx {
    path: Vec<Seg>,
    pub doc: Option<DocRef>,
    pub problems: Vec<Problem>,
    pub spans: Spans,
}

impl Cx {
    pub fn for_document(doc: DocRef) -> Self {
        Cx {
            doc: Some(doc),
            ..Cx::default()
        }
    }

    pub fn path(&self) -> String {
        let mut s = String::new();
        for seg in &self.path {
            match seg {
                Seg::Field(name) => {
                    s.push('.');
                    s.push_str(name);
                }
                Seg::Index(i) => {
                    s.push('[');
                    s.push_str(&i.to_string());
                    s.push(']');
                }
            }
        }
        s
    }

    pub fn error(&mut self, node: &Node, message: impl fmt::Display) {
        self.error_line(Some(node.line), message);
    }

    pub fn error_line(&mut self, line: Option<usize>, message: impl fmt::Display) {
        self.problems.push(Problem {
            doc: self.doc.clone(),
            path: self.path(),
            message: bounded(message.to_string()),
            line,
        });
    }

    fn record(&mut self, node: &Node) {
        let path = self.path();
        self.spans.lines.insert(path, node.line);
    }

    pub fn field<T>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> T) -> T {
        self.path.push(Seg::Field(name.to_string()));
        let out = f(self);
        self.path.pop();
        out
    }

    pub fn index<T>(&mut self, i: usize, f: impl FnOnce(&mut Self) -> T) -> T {
        self.path.push(Seg::Index(i));
        let out = f(self);
        self.path.pop();
        out
    }

    /// Decodes `node` as `T` at the current path, recording its position.
    pub fn decode<T: Decode>(&mut self, node: &Node) -> Option<T> {
        self.record(node);
        T::decode(node, self)
    }
}

/// A type that can be read from the positioned YAML tree.
pub trait Decode: Sized {
    /// Reads the value, reporting every problem to `cx`; `None` when any was found.
    fn decode(node: &Node, cx: &mut Cx) -> Option<Self>;

    /// The value of a field that is absent; `None` makes the field required.
    fn missing() -> Option<Self> {
        None
    }

    /// Whether serialization may leave the field out (the reverse of [`Decode::missing`]).
    fn is_absent(&self) -> bool {
        false
    }
}

/// Decodes a string node and parses it with `parse`, reporting its error at the node.
pub fn decode_parsed<T>(
    node: &Node,
    cx: &mut Cx,
    parse: impl FnOnce(&str) -> Result<T, ValueError>,
) -> Option<T> {
    let s = String::decode(node, cx)?;
    match parse(&s) {
        Ok(v) => Some(v),
        Err(why) => {
            cx.error(node, why);
            None
        }
    }
}

impl Decode for String {
    fn decode(node: &Node, cx: &mut Cx) -> Option<Self> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                cx.error(
                    node,
                    format!(
                        "expected a string, found {} (quote it to make it a string)",
                        node.value.describe()
                    ),
                );
                None
            }
            other => {
                cx.error(
                    node,
                    format!("expected a string, found {}", other.describe()),
                );
                None
            }
        }
    }
}

impl Decode for bool {
    fn decode(node: &Node, cx: &mut Cx) -> Option<Self> {
        match &node.value {
            Value::Bool(b) => Some(*b),
            Value::Str(s)
                if matches!(
                    s.to_ascii_lowercase().as_str(),
                    "yes" | "no" | "on" | "off" | "y" | "n"
                ) =>
            {
                cx.error(
                    node,
                    format!(
                        "expected true or false, found string {s:?} (YAML 1.2 reads it as a string)"
                    ),
                );
                None
            }
            other => {
                cx.error(
                    node,
                    format!("expected true or false, found {}", other.describe()),
                );
                None
            }
        }
    }
}

macro_rules! decode_int {
    ($($t:ty),*) => {$(
        impl Decode for $t {
            fn decode(node: &Node, cx: &mut Cx) -> Option<Self> {
                match &node.value {
                    Value::Int(i) => match <$t>::try_from(*i) {
                        Ok(v) => Some(v),
                        Err(_) => {
                            cx.error(node, format!(
                                "{i} is out of range ({}..={})", <$t>::MIN, <$t>::MAX));
                            None
                        }
                    },
                    other => {
                        cx.error(node, format!("expected an integer, found {}", other.describe()));
                        None
                    }
                }
            }
        }
    )*};
}
decode_int!(u8, u16, u32, u64, i64);

impl<T: Decode> Decode for Option<T> {
    fn decode(node: &Node, cx: &mut Cx) -> Option<Self> {
        if node.value == Value::Null {
            return Some(None);
        }
        T::decode(node, cx).map(Some)
    }
    fn missing() -> Option<Self> {
        Some(None)
    }
    fn is_absent(&self) -> bool {
        self.is_none()
    }
}

impl<T: Decode> Decode for Vec<T> {
    fn decode(node: &Node, cx: &mut Cx) -> Option<Self> {
        let Value::Seq(items) = &node.value else {
            if node.value == Value::Null {
                return Some(Vec::new());
            }
            cx.error(
                node,
                format!("expected a list, found {}", node.value.describe()),
            );
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match cx.index(i, |cx| cx.decode::<T>(item)) {
                Some(v) => out.push(v),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
    fn missing() -> Option<Self> {
        Some(Vec::new())
    }
    fn is_absent(&self) -> bool {
        self.is_empty()
    }
}

impl<T: Decode> Decode for BTreeMap<String, T> {
    fn decode(node: &Node, cx: &mut Cx) -> Option<Self> {
        let Value::Map(entries) = &node.value else {
            if node.value == Value::Null {
                return Some(BTreeMap::new());
            }
            cx.error(
                node,
                format!("expected a mapping, found {}", node.value.describe()),
            );
            return None;
        };
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (k, v) in entries {
            let Some(key) = k.as_str() else {
                cx.error(
                    k,
                    format!("keys must be strings, found {}", k.value.describe()),
                );
                ok = false;
                continue;
            };
            if out.contains_key(key) {
                cx.error(k, format!("duplicate key {key:?}"));
                ok = false;
                continue;
            }
            match cx.field(key, |cx| cx.decode::<T>(v)) {
                Some(val) => {
                    out.insert(key.to_string(), val);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
    fn missing() -> Option<Self> {
        Some(BTreeMap::new())
    }
    fn is_absent(&self) -> bool {
        self.is_empty()
    }
}

/// The closest known name to a misspelt one, for "did you mean" hints.
pub fn suggest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(&name.to_lowercase(), &k.to_lowercase()), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Reads a mapping field by field; used by [`config_struct!`].
pub fn decode_fields(
    node: &Node,
    cx: &mut Cx,
    known: &[&str],
    mut on_field: impl FnMut(&str, &Node, &mut Cx) -> bool,
) -> bool {
    let Value::Map(entries) = &node.value else {
        cx.error(
            node,
            format!("expected a mapping, found {}", node.value.describe()),
        );
        return false;
    };
    let mut ok = true;
    let mut seen: Vec<&str> = Vec::new();
    for (k, v) in entries {
        let Some(key) = k.as_str() else {
            cx.error(
                k,
                format!("keys must be strings, found {}", k.value.describe()),
            );
            ok = false;
            continue;
        };
        if !known.contains(&key) {
            let hint = suggest(key, known)
                .map(|s| format!(" (did you mean {s:?}?)"))
                .unwrap_or_default();
            cx.error(k, format!("unknown field {key:?}{hint}"));
            ok = false;
            continue;
        }
        if seen.contains(&key) {
            cx.error(k, format!("field {key:?} is given twice"));
            ok = false;
            continue;
        }
        seen.push(key);
        ok &= cx.field(key, |cx| on_field(key, v, cx));
    }
    ok
}

/// Declares a config struct: its decoder, `Serialize` and JSON Schema from one field list.
///
/// A field is required unless its type has a [`Decode::missing`] value (`Option`, `Vec`, maps)
/// or it names a `default`.
#[macro_export]
macro_rules! config_struct {
    (
        $(#[doc = $sdoc:literal])*
        pub struct $name:ident {
            $(
                $(#[doc = $fdoc:literal])*
                pub $field:ident : $ty:ty = $key:literal $(, default = $default:expr)? ;
            )*
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize)]
        pub struct $name {
            $(
                $(#[doc = $fdoc])*
                #[serde(rename = $key, skip_serializing_if = "crate::decode::Decode::is_absent")]
                pub $field: $ty,
            )*
        }

        impl $name {
            /// The YAML names of this struct's fields.
            pub const FIELDS: &'static [&'static str] = &[$($key),*];
        }

        impl $crate::decode::Decode for $name {
            #[allow(unused_mut, unused_variables)]
            fn decode(node: &$crate::yaml::Node, cx: &mut $crate::decode::Cx) -> Option<Self> {
                $( let mut $field: Option<$ty> = None; )*
                let mut ok = $crate::decode::decode_fields(node, cx, Self::FIELDS, |key, v, cx| {
                    match key {
                        $( $key => {
                            $field = cx.decode::<$ty>(v);
                            $field.is_some()
                        } )*
                        _ => false,
                    }
                });
                let present: Vec<&str> = match &node.value {
                    $crate::yaml::Value::Map(entries) =>
                        entries.iter().filter_map(|(k, _)| k.as_str()).collect(),
                    _ => return None,
                };
                $(
                    let $field: Option<$ty> = match $field {
                        Some(v) => Some(v),
                        None if present.contains(&$key) => None,
                        None => {
                            let d = $crate::config_struct!(@missing $ty $(, $default)?);
                            if d.is_none() {
                                cx.error(node, format!("missing required field {:?}", $key));
                                ok = false;
                            }
                            d
                        }
                    };
                )*
                if !ok {
                    return None;
                }
                Some($name { $( $field: $field? ),* })
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
                let mut props = serde_json::Map::new();
                let mut required: Vec<&str> = Vec::new();
                $(
                    let mut sub = generator.subschema_for::<$ty>().to_value();
                    let doc: &[&str] = &[$($fdoc),*];
                    let doc = $crate::decode::join_doc(doc);
                    if !doc.is_empty() {
                        sub = $crate::decode::with_description(sub, &doc);
                    }
                    let has_default = $crate::config_struct!(@hasdefault $(, $default)?);
                    let default_json: Option<serde_json::Value> =
                        $crate::config_struct!(@defaultjson $ty $(, $default)?);
                    if let (Some(d), Some(obj)) = (default_json, sub.as_object_mut()) {
                        obj.insert("default".into(), d);
                    }
                    if !has_default && <$ty as $crate::decode::Decode>::missing().is_none() {
                        required.push($key);
                    }
                    props.insert($key.to_string(), sub);
                )*
                let doc: &[&str] = &[$($sdoc),*];
                let mut schema = serde_json::json!({
                    "type": "object",
                    "properties": props,
                    "additionalProperties": false,
                });
                if !required.is_empty() {
                    schema["required"] = serde_json::json!(required);
                }
                let doc = $crate::decode::join_doc(doc);
                if !doc.is_empty() {
                    schema["description"] = serde_json::json!(doc);
                }
                schemars::Schema::try_from(schema).expect("an object schema")
            }
        }
    };
    (@missing $ty:ty, $default:expr) => { Some($default) };
    (@missing $ty:ty) => { <$ty as $crate::decode::Decode>::missing() };
    (@hasdefault , $default:expr) => { true };
    (@hasdefault) => { false };
    (@defaultjson $ty:ty, $default:expr) => {{
        let d: $ty = $default;
        serde_json::to_value(&d).ok()
    }};
    (@defaultjson $ty:ty) => { None };
}

/// Declares a string enum with its decoder, `Serialize`, `Display`, `FromStr` and schema.
#[macro_export]
macro_rules! config_enum {
    (
        $(#[doc = $sdoc:literal])*
        pub enum $name:ident { $( $(#[doc = $vdoc:literal])* $variant:ident = $text:literal ),* $(,)? }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
        pub enum $name { $( $(#[doc = $vdoc])* #[serde(rename = $text)] $variant ),* }

        impl $name {
            pub const ALL: &'static [&'static str] = &[$($text),*];
            pub fn as_str(&self) -> &'static str {
                match self { $( $name::$variant => $text ),* }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::error::ValueError;
            fn from_str(s: &str) -> Result<Self, $crate::error::ValueError> {
                match s {
                    $( $text => Ok($name::$variant), )*
                    other => Err($crate::error::ValueError::NotOneOf {
                        value: other.to_string(),
                        expected: format!("one of {}", Self::ALL.join(", ")),
                    }),
                }
            }
        }

        impl $crate::decode::Decode for $name {
            fn decode(node: &$crate::yaml::Node, cx: &mut $crate::decode::Cx) -> Option<Self> {
                $crate::decode::decode_parsed(node, cx, |s| s.parse())
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                let doc: &[&str] = &[$($sdoc),*];
                schemars::Schema::try_from(serde_json::json!({
                    "type": "string",
                    "enum": Self::ALL,
                    "description": $crate::decode::join_doc(doc),
                }))
                .expect("an object schema")
            }
        }
    };
}

/// Joins `///` lines into one description.
pub fn join_doc(lines: &[&str]) -> String {
    lines
        .iter()
        .map(|l| l.trim())
        .collect::<Vec<_>>()
        .join(" ")
        .trim()
        .to_string()
}

/// Adds a description to a subschema; a `$ref` is wrapped so the description is kept.
pub fn with_description(mut schema: serde_json::Value, doc: &str) -> serde_json::Value {
    if schema.get("$ref").is_some() {
        return serde_json::json!({ "allOf": [schema], "description": doc });
    }
    if let Some(obj) = schema.as_object_mut() {
        obj.insert("description".into(), serde_json::json!(doc));
        return schema;
    }
    serde_json::json!({ "allOf": [schema], "description": doc })
}

/// A message no longer than a person reads: one that quotes a value pasted whole (megabytes)
/// keeps its start and its end, and says how much was left out between.
pub fn bounded(message: String) -> String {
    const MAX: usize = 1000;
    if message.len() <= MAX {
        return message;
    }
    let mut head = 600;
    while !message.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = message.len() - 300;
    while !message.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{} … ({} bytes left out) … {}",
        &message[..head],
        tail - head,
        &message[tail..]
    )
}
