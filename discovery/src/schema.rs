//! JSON Schema inferred from observed payloads.
//!
//! The schema itself is the state: a new payload's schema is merged into the current one, so
//! nothing but the schema needs to be kept (in an EventType's status) to go on refining it
//! after a restart. Merging widens: types become unions, a property missing from some object
//! becomes optional (`required` is the intersection), array item schemas merge, and a string
//! format stays only while every observed value had it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value, json};

/// The JSON Schema dialect of inferred schemas.
pub const DIALECT: &str = "http://json-schema.org/draft-07/schema#";
/// The xRegistry `format` / `dataschemaformat` of inferred schemas.
pub const FORMAT: &str = "JSONSchema/draft-07";

/// Nesting deeper than this is described as "any value", so hostile payloads stay cheap.
const MAX_DEPTH: usize = 16;
/// Properties beyond this many per object are not described.
const MAX_PROPERTIES: usize = 256;

/// JSON type names in the order a union lists them.
const TYPE_ORDER: [&str; 7] = [
    "object", "array", "string", "number", "integer", "boolean", "null",
];

/// The schema of a JSON payload, or `None` when the bytes are not JSON.
pub fn infer_payload(data: &[u8]) -> Option<Value> {
    let value: Value = serde_json::from_slice(data).ok()?;
    Some(with_dialect(infer(&value)))
}

/// Marks a schema document as JSON Schema draft-07.
pub fn with_dialect(mut schema: Value) -> Value {
    if let Some(map) = schema.as_object_mut() {
        map.insert("$schema".into(), json!(DIALECT));
    }
    schema
}

/// The schema of one value.
pub fn infer(value: &Value) -> Value {
    infer_at(value, 0)
}

fn infer_at(value: &Value, depth: usize) -> Value {
    if depth >= MAX_DEPTH {
        return json!({});
    }
    match value {
        Value::Null => json!({"type": "null"}),
        Value::Bool(_) => json!({"type": "boolean"}),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({"type": "integer"}),
        Value::Number(_) => json!({"type": "number"}),
        Value::String(s) => match string_format(s) {
            Some(format) => json!({"type": "string", "format": format}),
            None => json!({"type": "string"}),
        },
        Value::Array(items) => {
            let mut schema = json!({"type": "array"});
            let merged = items
                .iter()
                .map(|item| infer_at(item, depth + 1))
                .reduce(|a, b| merge_at(&a, &b, depth + 1));
            if let Some(items) = merged {
                schema["items"] = items;
            }
            schema
        }
        Value::Object(map) => {
            let mut properties = Map::new();
            for (name, value) in map.iter().take(MAX_PROPERTIES) {
                properties.insert(name.clone(), infer_at(value, depth + 1));
            }
            object_schema(
                properties,
                map.keys().take(MAX_PROPERTIES).cloned().collect(),
            )
        }
    }
}

fn object_schema(properties: Map<String, Value>, required: BTreeSet<String>) -> Value {
    let mut schema = Map::new();
    schema.insert("type".into(), json!("object"));
    if !properties.is_empty() {
        schema.insert("properties".into(), Value::Object(properties));
    }
    if !required.is_empty() {
        schema.insert("required".into(), json!(required));
    }
    Value::Object(schema)
}

/// The schema that describes every value either schema describes.
pub fn merge(a: &Value, b: &Value) -> Value {
    let dialect = a.get("$schema").or_else(|| b.get("$schema")).cloned();
    let mut merged = merge_at(&strip_dialect(a), &strip_dialect(b), 0);
    if let (Some(dialect), Some(map)) = (dialect, merged.as_object_mut()) {
        map.insert("$schema".into(), dialect);
    }
    merged
}

fn strip_dialect(schema: &Value) -> Value {
    let mut schema = schema.clone();
    if let Some(map) = schema.as_object_mut() {
        map.remove("$schema");
    }
    schema
}

/// The JSON types a schema allows; empty means any.
pub fn types(schema: &Value) -> BTreeSet<String> {
    match schema.get("type") {
        Some(Value::String(t)) => [t.clone()].into(),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => BTreeSet::new(),
    }
}

fn type_value(types: &BTreeSet<String>) -> Value {
    let ordered: Vec<&str> = TYPE_ORDER
        .iter()
        .copied()
        .filter(|t| types.contains(*t))
        .collect();
    match ordered.as_slice() {
        [one] => json!(one),
        many => json!(many),
    }
}

fn required_of(schema: &Value) -> BTreeSet<String> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn properties_of(schema: &Value) -> BTreeMap<String, Value> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

fn merge_at(a: &Value, b: &Value, depth: usize) -> Value {
    if a == b {
        return a.clone();
    }
    let (types_a, types_b) = (types(a), types(b));
    // A schema without a type already allows anything.
    if types_a.is_empty() || types_b.is_empty() || depth >= MAX_DEPTH {
        return json!({});
    }
    let mut all: BTreeSet<String> = types_a.union(&types_b).cloned().collect();
    if all.contains("number") {
        all.remove("integer");
    }
    let mut out = Map::new();
    out.insert("type".into(), type_value(&all));

    let has = |types: &BTreeSet<String>, t: &str| types.contains(t);
    // Objects: properties union, required intersection.
    match (has(&types_a, "object"), has(&types_b, "object")) {
        (true, true) => {
            let (props_a, props_b) = (properties_of(a), properties_of(b));
            let mut properties = Map::new();
            let names: BTreeSet<&String> = props_a.keys().chain(props_b.keys()).collect();
            for name in names.into_iter().take(MAX_PROPERTIES) {
                let schema = match (props_a.get(name), props_b.get(name)) {
                    (Some(x), Some(y)) => merge_at(x, y, depth + 1),
                    (Some(x), None) | (None, Some(x)) => x.clone(),
                    (None, None) => continue,
                };
                properties.insert(name.clone(), schema);
            }
            let required: BTreeSet<String> = required_of(a)
                .intersection(&required_of(b))
                .cloned()
                .collect();
            copy_object_parts(&mut out, object_schema(properties, required));
        }
        (true, false) => copy_object_parts(&mut out, a.clone()),
        (false, true) => copy_object_parts(&mut out, b.clone()),
        (false, false) => {}
    }
    // Arrays: item schemas merge; an empty array says nothing about items.
    match (has(&types_a, "array"), has(&types_b, "array")) {
        (true, true) => {
            let items = match (a.get("items"), b.get("items")) {
                (Some(x), Some(y)) => Some(merge_at(x, y, depth + 1)),
                (Some(x), None) | (None, Some(x)) => Some(x.clone()),
                (None, None) => None,
            };
            if let Some(items) = items {
                out.insert("items".into(), items);
            }
        }
        (true, false) => copy_key(&mut out, a, "items"),
        (false, true) => copy_key(&mut out, b, "items"),
        (false, false) => {}
    }
    // Strings: a format stays only while every string had it.
    match (has(&types_a, "string"), has(&types_b, "string")) {
        (true, true) => {
            if let (Some(x), Some(y)) = (a.get("format"), b.get("format"))
                && x == y
            {
                out.insert("format".into(), x.clone());
            }
        }
        (true, false) => copy_key(&mut out, a, "format"),
        (false, true) => copy_key(&mut out, b, "format"),
        (false, false) => {}
    }
    Value::Object(out)
}

fn copy_object_parts(out: &mut Map<String, Value>, from: Value) {
    for key in ["properties", "required"] {
        copy_key(out, &from, key);
    }
}

fn copy_key(out: &mut Map<String, Value>, from: &Value, key: &str) {
    if let Some(value) = from.get(key) {
        out.insert(key.into(), value.clone());
    }
}

static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$").expect("valid regex"));
static DATE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\d{4}-\d{2}-\d{2}$").expect("valid regex"));

/// The JSON Schema `format` a string value has, if any of the detected ones.
pub fn string_format(value: &str) -> Option<&'static str> {
    if value.len() == 36 && uuid::Uuid::try_parse(value).is_ok() {
        return Some("uuid");
    }
    if chrono::DateTime::parse_from_rfc3339(value).is_ok() {
        return Some("date-time");
    }
    if DATE.is_match(value) && chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d").is_ok() {
        return Some("date");
    }
    if EMAIL.is_match(value) {
        return Some("email");
    }
    if value.contains("://") && url::Url::parse(value).is_ok() {
        return Some("uri");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn infer_all(values: &[Value]) -> Value {
        values
            .iter()
            .map(infer)
            .reduce(|a, b| merge(&a, &b))
            .expect("at least one value")
    }

    #[test]
    fn scalars_and_formats() {
        assert_eq!(infer(&json!(1)), json!({"type": "integer"}));
        assert_eq!(infer(&json!(1.5)), json!({"type": "number"}));
        assert_eq!(infer(&json!(true)), json!({"type": "boolean"}));
        assert_eq!(infer(&json!(null)), json!({"type": "null"}));
        for (text, format) in [
            ("2026-11-26T12:00:00Z", Some("date-time")),
            ("2026-11-26", Some("date")),
            ("ada@example.com", Some("email")),
            ("https://example.com/x", Some("uri")),
            ("9b2f3c1e-8d4a-4b6e-9f00-0123456789ab", Some("uuid")),
            ("hello", None),
            ("2026-13-45", None),
        ] {
            assert_eq!(string_format(text), format, "{text}");
        }
    }

    #[test]
    fn nested_objects_and_arrays() {
        let schema = infer(&json!({
            "order": {"id": 7, "lines": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2.5}]},
            "at": "2026-11-26T12:00:00Z"
        }));
        assert_eq!(schema["required"], json!(["at", "order"]));
        assert_eq!(schema["properties"]["at"]["format"], "date-time");
        let lines = &schema["properties"]["order"]["properties"]["lines"];
        assert_eq!(lines["type"], "array");
        assert_eq!(lines["items"]["properties"]["qty"]["type"], "number");
        assert_eq!(lines["items"]["required"], json!(["qty", "sku"]));
    }

    #[test]
    fn missing_fields_become_optional_and_new_fields_join() {
        let schema = infer_all(&[
            json!({"id": 1, "name": "a", "meta": {"x": 1}}),
            json!({"id": 2, "meta": {"x": 2, "y": "z"}, "extra": true}),
        ]);
        assert_eq!(schema["required"], json!(["id", "meta"]));
        assert!(schema["properties"]["name"].is_object());
        assert!(schema["properties"]["extra"].is_object());
        assert_eq!(schema["properties"]["meta"]["required"], json!(["x"]));
    }

    #[test]
    fn type_changes_become_unions() {
        let schema = infer_all(&[json!({"v": 1}), json!({"v": "one"}), json!({"v": null})]);
        assert_eq!(
            schema["properties"]["v"]["type"],
            json!(["string", "integer", "null"])
        );
        let widened = infer_all(&[json!({"v": 1}), json!({"v": 1.5})]);
        assert_eq!(widened["properties"]["v"]["type"], "number");
    }

    #[test]
    fn formats_stay_only_while_every_value_matches() {
        let both = infer_all(&[json!("a@example.com"), json!("b@example.org")]);
        assert_eq!(both["format"], "email");
        let mixed = infer_all(&[json!("a@example.com"), json!("not an email")]);
        assert!(mixed.get("format").is_none(), "{mixed}");
    }

    #[test]
    fn array_items_merge_and_empty_arrays_say_nothing() {
        let schema = infer_all(&[json!([]), json!([1, 2]), json!(["x"])]);
        assert_eq!(schema["items"]["type"], json!(["string", "integer"]));
        assert_eq!(infer(&json!([])), json!({"type": "array"}));
    }

    #[test]
    fn object_parts_survive_a_union_with_another_type() {
        let schema = infer_all(&[json!({"a": 1}), json!("text")]);
        assert_eq!(schema["type"], json!(["object", "string"]));
        assert_eq!(schema["required"], json!(["a"]));
    }

    #[test]
    fn merging_is_stable_once_everything_was_seen() {
        let a = infer(&json!({"id": 1, "tags": ["x"]}));
        let b = infer(&json!({"id": 2, "tags": []}));
        let merged = merge(&a, &b);
        assert_eq!(merge(&merged, &b), merged);
        assert_eq!(merge(&merged, &a), merged);
    }

    #[test]
    fn deep_payloads_are_bounded() {
        let mut value = json!(1);
        for _ in 0..100 {
            value = json!({"n": value});
        }
        let schema = infer(&value);
        let text = schema.to_string();
        assert!(text.matches("properties").count() <= MAX_DEPTH, "{text}");
    }

    #[test]
    fn payload_inference_needs_json() {
        assert!(infer_payload(b"not json").is_none());
        let schema = infer_payload(br#"{"a": 1}"#).unwrap();
        assert_eq!(schema["$schema"], DIALECT);
    }
}
