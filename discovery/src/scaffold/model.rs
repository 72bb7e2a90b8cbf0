//! A language-neutral description of a payload type, built from an inferred JSON Schema.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::schema::types;

/// A type a field (or the payload) has.
#[derive(Debug, Clone, PartialEq)]
pub enum TypeRef {
    String,
    Integer,
    Number,
    Boolean,
    /// Anything: no schema, or a union of types.
    Any,
    Array(Box<TypeRef>),
    /// One of the [`Model::structs`], by name.
    Struct(String),
}

/// One property of an object.
#[derive(Debug, Clone)]
pub struct Field {
    /// The property name in JSON.
    pub json_name: String,
    pub ty: TypeRef,
    /// Missing from some payloads, or null in some.
    pub optional: bool,
}

/// An object type.
#[derive(Debug, Clone)]
pub struct Struct {
    pub name: String,
    pub fields: Vec<Field>,
}

/// The payload type and every object type it uses (nested ones first).
#[derive(Debug, Clone)]
pub struct Model {
    pub root: TypeRef,
    pub structs: Vec<Struct>,
}

/// Builds the model of `schema` (no schema: the payload is `Any`), naming the root object
/// `root_name` and nested ones after their parent and property.
pub fn build(schema: Option<&Value>, root_name: &str) -> Model {
    // Names the generated servers use themselves are never given to payload types.
    let reserved = [
        "Attributes",
        "Value",
        "Router",
        "Bytes",
        "HeaderMap",
        "StatusCode",
    ];
    let mut builder = Builder {
        structs: Vec::new(),
        names: reserved.iter().map(|n| n.to_string()).collect(),
    };
    let root = match schema {
        Some(schema) => builder.type_of(schema, root_name),
        None => TypeRef::Any,
    };
    Model {
        root,
        structs: builder.structs,
    }
}

struct Builder {
    structs: Vec<Struct>,
    names: BTreeSet<String>,
}

impl Builder {
    fn unique(&mut self, wanted: &str) -> String {
        let mut name = wanted.to_string();
        let mut n = 2;
        while !self.names.insert(name.clone()) {
            name = format!("{wanted}{n}");
            n += 1;
        }
        name
    }

    /// The type of a schema; `nullable` is folded into the field's optionality by the caller.
    fn type_of(&mut self, schema: &Value, name_hint: &str) -> TypeRef {
        let mut all = types(schema);
        all.remove("null");
        if all.len() != 1 {
            return TypeRef::Any;
        }
        match all.iter().next().map(String::as_str) {
            Some("string") => TypeRef::String,
            Some("integer") => TypeRef::Integer,
            Some("number") => TypeRef::Number,
            Some("boolean") => TypeRef::Boolean,
            Some("array") => {
                let item = match schema.get("items") {
                    Some(items) => self.type_of(items, &format!("{name_hint}Item")),
                    None => TypeRef::Any,
                };
                TypeRef::Array(Box::new(item))
            }
            Some("object") => {
                let name = self.unique(name_hint);
                let required: BTreeSet<&str> = schema
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let mut fields = Vec::new();
                if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                    for (json_name, property) in properties {
                        let hint = format!("{name}{}", pascal_case(json_name));
                        let ty = self.type_of(property, &hint);
                        let nullable = types(property).contains("null");
                        fields.push(Field {
                            json_name: json_name.clone(),
                            ty,
                            optional: nullable || !required.contains(json_name.as_str()),
                        });
                    }
                }
                self.structs.push(Struct {
                    name: name.clone(),
                    fields,
                });
                TypeRef::Struct(name)
            }
            _ => TypeRef::Any,
        }
    }
}

/// `order_id`, `order-id`, `orderId` → `OrderId`.
pub fn pascal_case(text: &str) -> String {
    let mut out = String::new();
    for word in words(text) {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.push_str(&chars.as_str().to_lowercase());
        }
    }
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, 'T');
    }
    out
}

/// `orderId`, `Order-ID` → `order_id`.
/// A snake_case identifier for a JSON field name that is none of the language's `keywords`
/// (one gets a trailing `_`) and none of the identifiers already `taken` (a numbered suffix).
pub fn field_ident(json_name: &str, keywords: &[&str], taken: &mut BTreeSet<String>) -> String {
    let mut ident = snake_case(json_name);
    if keywords.contains(&ident.as_str()) {
        ident.push('_');
    }
    let base = ident.clone();
    let mut n = 2;
    while !taken.insert(ident.clone()) {
        ident = format!("{base}_{n}");
        n += 1;
    }
    ident
}

pub fn snake_case(text: &str) -> String {
    let out = words(text)
        .iter()
        .map(|w| w.to_lowercase())
        .collect::<Vec<_>>()
        .join("_");
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        format!("f_{out}")
    } else {
        out
    }
}

/// Splits on non-alphanumerics and lower-to-upper case changes.
fn words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut previous_lower = false;
    for c in text.chars() {
        if !c.is_ascii_alphanumeric() {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            previous_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && previous_lower && !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
        previous_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        current.push(c);
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// The root type name for an event type: its last two dot-separated parts in PascalCase
/// (`com.example.order.created` → `OrderCreated`).
pub fn root_name(event_type: &str) -> String {
    let parts: Vec<&str> = event_type
        .split(['.', '/', ':'])
        .filter(|p| !p.is_empty())
        .collect();
    let tail = &parts[parts.len().saturating_sub(2)..];
    let name = pascal_case(&tail.join("_"));
    if name == "T" { "Payload".into() } else { name }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names() {
        assert_eq!(pascal_case("order_id"), "OrderId");
        assert_eq!(pascal_case("orderId"), "OrderId");
        assert_eq!(snake_case("orderId"), "order_id");
        assert_eq!(snake_case("Order-ID"), "order_id");
        assert_eq!(snake_case("2fa"), "f_2fa");
        assert_eq!(root_name("com.example.order.created"), "OrderCreated");
        assert_eq!(root_name(""), "Payload");
    }

    #[test]
    fn nested_objects_become_structs_and_optionality_follows_required() {
        let schema = json!({"type": "object", "required": ["id", "customer"],
        "properties": {
            "id": {"type": "integer"},
            "note": {"type": ["string", "null"]},
            "customer": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
            "lines": {"type": "array", "items": {"type": "object", "properties": {"sku": {"type": "string"}}}},
            "mixed": {"type": ["integer", "string"]}
        }});
        let model = build(Some(&schema), "Order");
        assert_eq!(model.root, TypeRef::Struct("Order".into()));
        let names: Vec<&str> = model.structs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["OrderCustomer", "OrderLinesItem", "Order"]);
        let order = model.structs.last().unwrap();
        let field = |n: &str| order.fields.iter().find(|f| f.json_name == n).unwrap();
        assert!(!field("id").optional);
        assert!(field("note").optional);
        assert_eq!(field("note").ty, TypeRef::String);
        assert!(field("lines").optional);
        assert_eq!(field("mixed").ty, TypeRef::Any);
    }
}
