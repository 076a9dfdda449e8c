//! The multi-document config: reading documents by kind, and writing them back.

use serde_json::json;

use crate::decode::{Cx, Decode, DocRef, Problem, Spans, suggest};
use crate::v1alpha1::*;
use crate::yaml::{Node, Value};

/// Declares the document kinds: one table drives decoding, naming, writing and the schema.
macro_rules! documents {
    ($( $variant:ident($ty:ty) = $kind:literal, named: $named:literal; )*) => {
        /// One document of a machine config.
        // A config holds a handful of documents; boxing the large ones would buy nothing.
        #[allow(clippy::large_enum_variant)]
        #[derive(Debug, Clone, PartialEq)]
        pub enum Document {
            $( $variant($ty), )*
        }

        /// Every kind, in the order the schema and docs list them.
        pub const KINDS: &[&str] = &[$($kind),*];

        impl Document {
            pub fn kind(&self) -> &'static str {
                match self { $( Document::$variant(_) => $kind, )* }
            }

            /// Whether documents of `kind` carry a `name` (and may appear more than once).
            pub fn kind_is_named(kind: &str) -> bool {
                match kind { $( $kind => $named, )* _ => false }
            }

            fn decode_kind(kind: &str, node: &Node, cx: &mut Cx) -> Option<Option<Self>> {
                match kind {
                    $( $kind => Some(<$ty as Decode>::decode(node, cx).map(Document::$variant)), )*
                    _ => None,
                }
            }

            fn body_json(&self) -> serde_json::Value {
                match self {
                    $( Document::$variant(d) => serde_json::to_value(d), )*
                }
                .unwrap_or(serde_json::Value::Null)
            }

            /// The JSON Schema of every kind, by kind.
            pub fn schemas() -> Vec<(&'static str, serde_json::Value)> {
                vec![$( ($kind, document_schema::<$ty>($kind, $named)), )*]
            }
        }
    };
}

documents! {
    Machine(MachineConfig) = "MachineConfig", named: false;
    Cluster(ClusterConfig) = "ClusterConfig", named: false;
    Secrets(SecretsConfig) = "Secrets", named: false;
    Link(LinkConfig) = "LinkConfig", named: true;
    Bond(BondConfig) = "BondConfig", named: true;
    Vlan(VlanConfig) = "VLANConfig", named: true;
    Bridge(BridgeConfig) = "BridgeConfig", named: true;
    Hostname(HostnameConfig) = "HostnameConfig", named: false;
    Resolver(ResolverConfig) = "ResolverConfig", named: false;
    Time(TimeConfig) = "TimeConfig", named: false;
    KubeSpan(KubeSpanConfig) = "KubeSpanConfig", named: false;
    Discovery(DiscoveryConfig) = "DiscoveryConfig", named: false;
    RegistryMirror(RegistryMirrorConfig) = "RegistryMirrorConfig", named: true;
    RegistryAuth(RegistryAuthConfig) = "RegistryAuthConfig", named: true;
    RegistryTls(RegistryTlsConfig) = "RegistryTLSConfig", named: true;
}

/// The schema of one document kind, with `apiVersion` and `kind` added.
pub fn document_schema<T: schemars::JsonSchema>(kind: &str, _named: bool) -> serde_json::Value {
    let mut generator = schemars::SchemaGenerator::default();
    let mut schema = generator.root_schema_for::<T>().to_value();
    if let Some(props) = schema
        .get_mut("properties")
        .and_then(serde_json::Value::as_object_mut)
    {
        let mut all = serde_json::Map::new();
        all.insert("apiVersion".into(), json!({"const": API_VERSION}));
        all.insert("kind".into(), json!({"const": kind}));
        all.extend(std::mem::take(props));
        *props = all;
    }
    let required = schema
        .get("required")
        .and_then(serde_json::Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut req = vec![json!("apiVersion"), json!("kind")];
    req.extend(required);
    schema["required"] = json!(req);
    schema["title"] = json!(kind);
    schema
}

impl Document {
    /// Whether this document configures a link (its name is a link name, unique across the
    /// link kinds).
    pub fn is_link(&self) -> bool {
        matches!(
            self,
            Document::Link(_) | Document::Bond(_) | Document::Vlan(_) | Document::Bridge(_)
        )
    }

    /// The document's name, for kinds that have one.
    pub fn name(&self) -> Option<&str> {
        match self {
            Document::Link(l) => Some(l.name.as_str()),
            Document::Bond(b) => Some(b.name.as_str()),
            Document::Vlan(v) => Some(v.name.as_str()),
            Document::Bridge(b) => Some(b.name.as_str()),
            Document::RegistryMirror(m) => Some(m.name.as_str()),
            Document::RegistryAuth(a) => Some(a.name.as_str()),
            Document::RegistryTls(t) => Some(t.name.as_str()),
            _ => None,
        }
    }

    /// The document as JSON, with `apiVersion` and `kind` first.
    pub fn to_json(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        out.insert("apiVersion".into(), json!(API_VERSION));
        out.insert("kind".into(), json!(self.kind()));
        if let serde_json::Value::Object(body) = self.body_json() {
            out.extend(body);
        }
        serde_json::Value::Object(out)
    }
}

/// A decoded document with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    pub doc: Document,
    /// 1-based index in the file.
    pub index: usize,
    pub spans: Spans,
}

impl Located {
    pub fn doc_ref(&self) -> DocRef {
        DocRef {
            index: self.index,
            kind: Some(self.doc.kind().to_string()),
            name: self.doc.name().map(str::to_string),
        }
    }

    /// A problem at `path` of this document, with the line taken from the source.
    pub fn problem(&self, path: &str, message: impl std::fmt::Display) -> Problem {
        Problem {
            doc: Some(self.doc_ref()),
            path: path.to_string(),
            message: crate::decode::bounded(message.to_string()),
            line: self.spans.line(path),
        }
    }
}

/// Decodes every document, collecting every problem; documents that decode are returned even
/// when others fail so that cross-document checks can still run on them.
pub fn decode_documents(nodes: &[Node]) -> (Vec<Located>, Vec<Problem>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let index = i + 1;
        let name = node.get("name").and_then(Node::as_str).map(str::to_string);
        let kind_str = node.get("kind").and_then(Node::as_str).map(str::to_string);
        let mut cx = Cx::for_document(DocRef {
            index,
            kind: kind_str.clone(),
            name: kind_str
                .as_deref()
                .filter(|k| Document::kind_is_named(k))
                .and(name),
        });
        cx.spans.doc_line = node.line;
        if let Some(doc) = decode_one(node, &mut cx) {
            out.push(Located {
                doc,
                index,
                spans: cx.spans,
            });
        }
        problems.extend(cx.problems);
    }
    (out, problems)
}

fn decode_one(node: &Node, cx: &mut Cx) -> Option<Document> {
    let Value::Map(entries) = &node.value else {
        cx.error(
            node,
            format!(
                "a document must be a mapping with apiVersion and kind, found {}",
                node.value.describe()
            ),
        );
        return None;
    };
    let mut ok = true;
    match node.get("apiVersion") {
        None => {
            cx.error(node, "missing apiVersion (expected v1alpha1)");
            ok = false;
        }
        Some(v) => {
            if v.as_str() != Some(API_VERSION) {
                cx.field("apiVersion", |cx| {
                    cx.error(
                        v,
                        format!(
                            "unsupported apiVersion {}: this Basalt reads {API_VERSION}",
                            v.value.describe()
                        ),
                    )
                });
                ok = false;
            }
        }
    }
    let kind_node = match node.get("kind") {
        Some(k) => k,
        None => {
            cx.error(node, format!("missing kind (one of {})", KINDS.join(", ")));
            return None;
        }
    };
    let Some(kind) = kind_node.as_str() else {
        cx.field("kind", |cx| {
            cx.error(
                kind_node,
                format!("expected a string, found {}", kind_node.value.describe()),
            )
        });
        return None;
    };
    let body = Node {
        value: Value::Map(
            entries
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), Some("apiVersion" | "kind")))
                .cloned()
                .collect(),
        ),
        line: node.line,
        col: node.col,
    };
    match Document::decode_kind(kind, &body, cx) {
        None => {
            let hint = suggest(kind, KINDS)
                .map(|s| format!(" (did you mean {s:?}?)"))
                .unwrap_or_else(|| format!(" (known kinds: {})", KINDS.join(", ")));
            cx.field("kind", |cx| {
                cx.error(kind_node, format!("unknown kind {kind:?}{hint}"))
            });
            None
        }
        Some(doc) => doc.filter(|_| ok),
    }
}
