//! JSON Schema for every document kind, generated from the same declarations the decoder uses,
//! so editors can check configs as they are typed.

use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Value, json};

use crate::document::Document;
use crate::v1alpha1::API_VERSION;

/// The schema of one document kind, with `apiVersion` and `kind` added.
pub fn document_schema<T: JsonSchema>(kind: &str, _named: bool) -> Value {
    let mut generator = SchemaGenerator::default();
    let mut schema = generator.root_schema_for::<T>().to_value();
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        let mut all = serde_json::Map::new();
        all.insert("apiVersion".into(), json!({"const": API_VERSION}));
        all.insert("kind".into(), json!({"const": kind}));
        all.extend(std::mem::take(props));
        *props = all;
    }
    let required = schema
        .get("required")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut req = vec![json!("apiVersion"), json!("kind")];
    req.extend(required);
    schema["required"] = json!(req);
    schema["title"] = json!(kind);
    schema
}

/// One schema for a whole config document: any of the kinds, chosen by `kind`.
pub fn config_schema() -> Value {
    let mut defs = serde_json::Map::new();
    let mut one_of = Vec::new();
    for (kind, mut schema) in Document::schemas() {
        if let Some(Value::Object(sub)) = schema.as_object_mut().and_then(|o| o.remove("$defs")) {
            defs.extend(sub);
        }
        if let Some(o) = schema.as_object_mut() {
            o.remove("$schema");
        }
        one_of.push(json!({
            "if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
            "then": {"$ref": format!("#/$defs/{kind}Document")},
        }));
        defs.insert(format!("{kind}Document"), schema);
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://basalt.invalid/schemas/v1alpha1/config.json",
        "title": "Basalt machine config document (v1alpha1)",
        "description": "One document of a multi-document Basalt machine config; kind selects the schema.",
        "type": "object",
        "required": ["apiVersion", "kind"],
        "properties": {
            "apiVersion": {"const": API_VERSION},
            "kind": {"enum": crate::document::KINDS},
        },
        "allOf": one_of,
        "$defs": defs,
    })
}
