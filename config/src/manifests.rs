//! Kubernetes manifests as a cluster config carries them (`ClusterConfig.inlineManifests`):
//! multi-document YAML whose every document is one Kubernetes object. Read here, with the
//! line each object starts on, so `validate` can name the document and line of a bad one and
//! the control planes apply exactly what was validated.

use crate::yaml::{self, Node, Value};

/// One object of a manifest, as JSON (what the Kubernetes API takes).
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// 1-based, among the manifest's documents.
    pub document: usize,
    /// 1-based line of the manifest's text the object starts on.
    pub line: usize,
    pub json: serde_json::Value,
}

impl Object {
    pub fn kind(&self) -> &str {
        self.json["kind"].as_str().unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.json["metadata"]["name"].as_str().unwrap_or_default()
    }
}

/// What is wrong with one document of a manifest (or with its YAML as a whole).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("document {document} (line {line}): {message}")]
pub struct ManifestError {
    pub document: usize,
    pub line: usize,
    pub message: String,
}

/// Every object of `text`, or every problem: YAML that does not parse, a document that is not
/// a mapping, and one without `apiVersion`, `kind` or `metadata.name` (strings).
pub fn parse(text: &str) -> Result<Vec<Object>, Vec<ManifestError>> {
    let docs = yaml::parse_documents(text).map_err(|e| {
        vec![ManifestError {
            document: 1 + text[..byte_of_line(text, e.line)].matches("\n---").count(),
            line: e.line,
            message: format!("not YAML: {} (column {})", e.message, e.col),
        }]
    })?;
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let document = i + 1;
        let problem = |message: String| ManifestError {
            document,
            line: doc.line,
            message,
        };
        if !matches!(doc.value, Value::Map(_)) {
            problems.push(problem(format!(
                "a Kubernetes object is a mapping, not {}",
                doc.value.describe()
            )));
            continue;
        }
        let mut missing = Vec::new();
        if field(doc.get("apiVersion")).is_none() {
            missing.push("apiVersion");
        }
        if field(doc.get("kind")).is_none() {
            missing.push("kind");
        }
        if field(doc.get("metadata").and_then(|m| m.get("name"))).is_none() {
            missing.push("metadata.name");
        }
        if !missing.is_empty() {
            problems.push(problem(format!(
                "not a Kubernetes object: no {}",
                missing.join(", no ")
            )));
            continue;
        }
        objects.push(Object {
            document,
            line: doc.line,
            json: doc.to_json(),
        });
    }
    if problems.is_empty() {
        Ok(objects)
    } else {
        Err(problems)
    }
}

/// A string field that is there and not empty.
fn field(node: Option<&Node>) -> Option<&str> {
    node.and_then(Node::as_str).filter(|s| !s.is_empty())
}

/// The byte offset where 1-based `line` starts (the end of the text past its last line).
fn byte_of_line(text: &str, line: usize) -> usize {
    if line <= 1 {
        return 0;
    }
    text.match_indices('\n')
        .nth(line - 2)
        .map_or(text.len(), |(i, _)| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_come_with_their_document_and_line() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n  namespace: a\ndata:\n  k: v\n";
        let objs = parse(text).unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!((objs[1].document, objs[1].line), (2, 6));
        assert_eq!(objs[1].kind(), "ConfigMap");
        assert_eq!(objs[1].name(), "b");
        assert_eq!(objs[1].json["data"]["k"], "v");
    }

    #[test]
    fn a_document_that_is_not_an_object_is_named_with_its_line() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\napiVersion: v1\nmetadata:\n  name: b\n---\n- just\n- a list\n";
        let errs = parse(text).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!((errs[0].document, errs[0].line), (2, 6));
        assert!(errs[0].message.contains("no kind"), "{}", errs[0]);
        assert_eq!(errs[1].document, 3);
        assert!(errs[1].message.contains("mapping"), "{}", errs[1]);
        let no_name = parse("apiVersion: v1\nkind: Namespace\n").unwrap_err();
        assert!(
            no_name[0].message.contains("no metadata.name"),
            "{:?}",
            no_name
        );
    }

    #[test]
    fn broken_yaml_is_reported_at_its_line() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\nkind: [unclosed\n";
        let errs = parse(text).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].document, 2, "{errs:?}");
        assert!(errs[0].message.starts_with("not YAML"), "{}", errs[0]);
    }
}
