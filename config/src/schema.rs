//! JSON Schema for every document kind, generated from the same declarations the decoder uses,
//! so editors can check configs as they are typed.

use serde_json::{Value, json};

use crate::document::Document;
use crate::v1alpha1::API_VERSION;

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

/// The field reference of every kind as Markdown, generated from the schema so it cannot
/// drift from the code (`docs/config-reference.md`).
pub fn markdown_reference() -> String {
    let mut out = String::from(
        "# Config reference (v1alpha1)\n\n\
         Generated from the config types by `cargo test -p basalt-config` \
         (`BASALT_BLESS=1` rewrites it); do not edit by hand. \
         The guide is [config.md](config.md).\n",
    );
    let mut nested: Vec<(String, Value)> = Vec::new();
    for (kind, schema) in Document::schemas() {
        let named = if Document::kind_is_named(kind) {
            " (named: may appear once per `name`)"
        } else {
            " (at most once)"
        };
        out.push_str(&format!("\n## {kind}{named}\n\n"));
        if let Some(d) = schema.get("description").and_then(Value::as_str) {
            out.push_str(d);
            out.push_str("\n\n");
        }
        fields_table(&mut out, &schema);
        if let Some(Value::Object(defs)) = schema.get("$defs") {
            for (name, def) in defs {
                if !nested.iter().any(|(n, _)| n == name) {
                    nested.push((name.clone(), def.clone()));
                }
            }
        }
    }
    nested.sort_by(|a, b| a.0.cmp(&b.0));
    out.push_str("\n## Nested types\n");
    for (name, def) in nested {
        out.push_str(&format!("\n### {name}\n\n"));
        if let Some(d) = def.get("description").and_then(Value::as_str) {
            out.push_str(d);
            out.push_str("\n\n");
        }
        if def.get("properties").is_some() {
            fields_table(&mut out, &def);
        } else if let Some(e) = def.get("enum").and_then(Value::as_array) {
            let vals: Vec<String> = e
                .iter()
                .map(|v| format!("`{}`", v.as_str().unwrap_or_default()))
                .collect();
            out.push_str(&format!("One of {}.\n", vals.join(", ")));
        } else {
            let format = def.get("format").and_then(Value::as_str).unwrap_or("text");
            out.push_str(&format!("A string in the `{format}` format.\n"));
        }
    }
    out
}

fn fields_table(out: &mut String, schema: &Value) {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    out.push_str("| field | type | required / default | description |\n|---|---|---|---|\n");
    if let Some(Value::Object(props)) = schema.get("properties") {
        for (name, prop) in props {
            let req = if required.contains(&name.as_str()) {
                "required".to_string()
            } else {
                match prop.get("default") {
                    Some(d) => format!("default `{}`", d),
                    None => "optional".to_string(),
                }
            };
            let desc = prop
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default();
            out.push_str(&format!(
                "| `{name}` | {} | {req} | {desc} |\n",
                type_name(prop)
            ));
        }
    }
}

fn type_name(s: &Value) -> String {
    if let Some(c) = s.get("const") {
        return format!("`{}`", c.as_str().unwrap_or_default());
    }
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or(r);
        return format!("[{name}](#{})", name.to_lowercase());
    }
    if let Some(first) = s
        .get("allOf")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
    {
        return type_name(first);
    }
    if let Some(any) = s.get("anyOf").and_then(Value::as_array) {
        let parts: Vec<String> = any
            .iter()
            .filter(|x| x.get("type").and_then(Value::as_str) != Some("null"))
            .map(type_name)
            .collect();
        return parts.join(" or ");
    }
    let ty = match s.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null")
            .to_string(),
        _ => String::new(),
    };
    match ty.as_str() {
        "array" => format!(
            "list of {}",
            s.get("items").map(type_name).unwrap_or_default()
        ),
        "object" => match s.get("additionalProperties") {
            Some(v) if v.is_object() => format!("map of string to {}", type_name(v)),
            _ => "object".into(),
        },
        "string" => match s.get("format").and_then(Value::as_str) {
            Some(f) => format!("string ({f})"),
            None => "string".into(),
        },
        "" => "any".into(),
        t => t.to_string(),
    }
}
