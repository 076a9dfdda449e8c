//! Config patches: RFC 6902 JSON patches and strategic merge patches.
//!
//! A patch is YAML or JSON. A *list* is a JSON patch; its paths start with the document they
//! address, `/Kind` for single documents or `/Kind=name` for named ones, e.g.
//! `/MachineConfig/nodeLabels/zone` or `/LinkConfig=eth0/mtu`. Adding `/Kind=name` creates a
//! document and removing it deletes one.
//!
//! *Documents* (mappings with `apiVersion` and `kind`) are a strategic merge patch: each one is
//! merged into the document of the same kind (and name): mappings merge key by key, lists and
//! scalars replace, `null` deletes a key; a patch document with `$patch: delete` deletes the
//! document, and one that matches nothing is added.

use serde_json::{Map, Value};

use crate::document::Document;
use crate::yaml;
use crate::{Config, ConfigError, Mode};

/// Why a patch could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("patch is not valid YAML or JSON: {0}")]
    Syntax(#[from] yaml::SyntaxError),
    #[error("patch is empty")]
    Empty,
    #[error("patch document {index}: {message}")]
    BadDocument { index: usize, message: String },
    #[error("JSON patch operation is malformed")]
    BadJsonPatch(#[source] serde_json::Error),
    #[error("JSON patch failed")]
    JsonPatch(#[source] json_patch::PatchError),
    #[error("patched config is invalid")]
    Invalid(#[source] ConfigError),
}

/// A parsed patch.
#[derive(Debug, Clone)]
pub enum Patch {
    Json(json_patch::Patch),
    StrategicMerge(Vec<Value>),
}

impl Patch {
    pub fn parse(text: &str) -> Result<Self, PatchError> {
        let docs = yaml::parse_documents(text)?;
        let first = docs.first().ok_or(PatchError::Empty)?;
        if let yaml::Value::Seq(_) = first.value {
            let ops: json_patch::Patch =
                serde_json::from_value(first.to_json()).map_err(PatchError::BadJsonPatch)?;
            return Ok(Patch::Json(ops));
        }
        let mut out = Vec::new();
        for (i, d) in docs.iter().enumerate() {
            let v = d.to_json();
            if v.get("kind").and_then(Value::as_str).is_none() {
                return Err(PatchError::BadDocument {
                    index: i + 1,
                    message: format!(
                        "line {}: a strategic merge patch document needs a kind",
                        d.line
                    ),
                });
            }
            if let Some(message) = directive_problem(d, true) {
                return Err(PatchError::BadDocument {
                    index: i + 1,
                    message,
                });
            }
            out.push(v);
        }
        Ok(Patch::StrategicMerge(out))
    }

    /// Applies the patch to `config`, returning the validated result; `config` is unchanged.
    pub fn apply(&self, config: &Config, mode: Mode) -> Result<Config, PatchError> {
        let docs = self.apply_json(config.to_json_documents())?;
        let nodes: Vec<yaml::Node> = docs.iter().map(yaml::Node::from_json).collect();
        Config::from_nodes(&nodes, mode).map_err(PatchError::Invalid)
    }

    /// Applies the patch to JSON documents.
    pub fn apply_json(&self, docs: Vec<Value>) -> Result<Vec<Value>, PatchError> {
        match self {
            Patch::Json(ops) => {
                let (order, mut tree) = keyed(&docs);
                json_patch::patch(&mut tree, ops).map_err(PatchError::JsonPatch)?;
                Ok(unkeyed(order, tree))
            }
            Patch::StrategicMerge(patches) => {
                let mut docs = docs;
                for (i, p) in patches.iter().enumerate() {
                    let key = doc_key(p);
                    let pos = docs.iter().position(|d| doc_key(d) == key);
                    let delete = p.get("$patch").and_then(Value::as_str) == Some("delete");
                    match (pos, delete) {
                        (Some(pos), true) => {
                            docs.remove(pos);
                        }
                        (None, true) => {
                            return Err(PatchError::BadDocument {
                                index: i + 1,
                                message: format!(
                                    "$patch: delete names {key}, which the config does not have"
                                ),
                            });
                        }
                        (Some(pos), false) => merge(&mut docs[pos], p),
                        (None, false) => {
                            let mut new = Value::Object(Map::new());
                            merge(&mut new, p);
                            docs.push(new);
                        }
                    }
                }
                Ok(docs)
            }
        }
    }
}

/// A `$patch` this reader does not carry out, with its line: only `$patch: delete` at a
/// document's top level is understood; one anywhere else would be silently ignored.
fn directive_problem(node: &yaml::Node, top: bool) -> Option<String> {
    match &node.value {
        yaml::Value::Map(entries) => entries.iter().find_map(|(k, v)| {
            if k.as_str() == Some("$patch") {
                if !top {
                    return Some(format!(
                        "line {}: $patch is understood only at a document's top level ($patch: delete)",
                        k.line
                    ));
                }
                if v.as_str() != Some("delete") {
                    return Some(format!(
                        "line {}: $patch: {} is not understood: only $patch: delete is",
                        k.line,
                        v.value.describe()
                    ));
                }
                return None;
            }
            directive_problem(v, false)
        }),
        yaml::Value::Seq(items) => items.iter().find_map(|i| directive_problem(i, false)),
        _ => None,
    }
}

/// `Kind` or `Kind=name`: how patches address a document.
fn doc_key(doc: &Value) -> String {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    match doc.get("name").and_then(Value::as_str) {
        Some(name) if Document::kind_is_named(kind) => format!("{kind}={name}"),
        _ => kind.to_string(),
    }
}

/// Documents as one object keyed by [`doc_key`], bodies without apiVersion and kind.
fn keyed(docs: &[Value]) -> (Vec<String>, Value) {
    let mut order = Vec::new();
    let mut tree = Map::new();
    for d in docs {
        let key = doc_key(d);
        let mut body = d.as_object().cloned().unwrap_or_default();
        body.remove("apiVersion");
        body.remove("kind");
        order.push(key.clone());
        tree.insert(key, Value::Object(body));
    }
    (order, Value::Object(tree))
}

fn unkeyed(order: Vec<String>, tree: Value) -> Vec<Value> {
    let Value::Object(mut tree) = tree else {
        return Vec::new();
    };
    let mut keys: Vec<String> = order.into_iter().filter(|k| tree.contains_key(k)).collect();
    keys.extend(
        tree.keys()
            .filter(|k| !keys.contains(k))
            .cloned()
            .collect::<Vec<_>>(),
    );
    keys.into_iter()
        .filter_map(|key| {
            let body = tree.remove(&key)?;
            let (kind, name) = match key.split_once('=') {
                Some((k, n)) => (k.to_string(), Some(n.to_string())),
                None => (key.clone(), None),
            };
            let mut doc = Map::new();
            doc.insert(
                "apiVersion".into(),
                Value::String(crate::v1alpha1::API_VERSION.into()),
            );
            doc.insert("kind".into(), Value::String(kind));
            if let Some(n) = name {
                doc.insert("name".into(), Value::String(n));
            }
            if let Value::Object(b) = body {
                for (k, v) in b {
                    doc.insert(k, v);
                }
            } else {
                doc.insert("$body".into(), body);
            }
            Some(Value::Object(doc))
        })
        .collect()
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if k == "$patch" {
                    continue;
                }
                if v.is_null() {
                    t.remove(k);
                } else if let Some(existing) = t.get_mut(k) {
                    merge(existing, v);
                } else {
                    let mut new = if v.is_object() {
                        Value::Object(Map::new())
                    } else {
                        Value::Null
                    };
                    merge(&mut new, v);
                    t.insert(k.clone(), new);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}
