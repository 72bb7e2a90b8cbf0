//! Knative `EventType` (`eventing.knative.dev/v1beta3`), also read and applied as `v1beta2`.
//!
//! In v1beta3 the CloudEvents attributes an event type has (`type`, `source`, `specversion`,
//! `dataschema`, ...) are a list in `spec.attributes`. Rivulet keeps what it learns from the
//! events it sees (the inferred payload schema and its versions, a sample event) in `status`:
//! it is observed state, not desired state, and writing it never bumps `generation`.

use super::skip_serializing_none;
use std::collections::BTreeMap;

use super::apply;
use crate::knative_kind;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::common::{Condition, KReference};
use super::condition_set::ConditionSet;
use super::validation::{ValidationError, typed, validate_metadata};

/// The API group and versions.
pub const GROUP: &str = "eventing.knative.dev";
pub const VERSION: &str = "v1beta3";
pub const LEGACY_VERSION: &str = "v1beta2";

/// Label on EventTypes Rivulet created from traffic.
pub const AUTOCREATED_LABEL: &str = "rivulet.dev/autocreated";
/// Label naming the broker of an auto-created EventType.
pub const BROKER_LABEL: &str = "rivulet.dev/broker";
/// Where a v1beta2 `spec.schemaData` is kept on a stored (v1beta3) EventType.
pub const SCHEMA_DATA_ANNOTATION: &str = "rivulet.dev/schema-data";

/// Knative `EventType`: a kind of event a broker carries.
#[apply(knative_kind!)]
#[kube(
    group = "eventing.knative.dev",
    version = "v1beta3",
    kind = "EventType"
)]
#[kube(status = "EventTypeStatus", category = "eventing")]
#[kube(
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.attributes[?(@.name==\"type\")].value"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventTypeSpec {
    /// What produces or carries these events, usually a Broker.
    pub reference: Option<KReference>,
    pub description: Option<String>,
    /// The CloudEvents attributes of these events; a value, when given, is what they carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<EventAttributeDefinition>,
}

/// One CloudEvents attribute of an EventType.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventAttributeDefinition {
    pub name: String,
    #[serde(default)]
    pub required: bool,
    pub value: Option<String>,
}

/// An EventType's `Ready`: its broker's readiness when it names one (`BrokerReady`, reported
/// only then), else True.
pub const EVENT_TYPE_CONDITIONS: ConditionSet = ConditionSet::new(&[]);

#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct EventTypeStatus {
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The JSON Schema inferred from the payloads seen so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::common::free_form_object")]
    pub schema: Option<Value>,
    /// Bumped each time the inferred schema changes.
    pub schema_version: Option<u32>,
    /// The latest schema versions, oldest first (bounded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schema_versions: Vec<SchemaVersion>,
    /// An event of this type as it arrived (structured JSON), taken when the schema changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::common::free_form_object")]
    pub sample: Option<Value>,
    /// The `dataschema` attribute the events carried, when they did.
    pub data_schema: Option<String>,
    pub data_content_type: Option<String>,
}

/// One version of an inferred schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchemaVersion {
    pub version: u32,
    pub created_at: String,
    #[schemars(schema_with = "super::common::free_form_object")]
    pub schema: Value,
}

inventory::submit! {
    super::KindInfo {
        group: GROUP,
        version: VERSION,
        kind: "EventType",
        plural: "eventtypes",
        validate: validate_eventtype_value,
    }
}

inventory::submit! {
    super::CrdVersion {
        crd: <EventType as kube::CustomResourceExt>::crd,
    }
}

/// The v1beta2 shape, for its version of the CRD only: v1beta2 objects are converted to
/// v1beta3 when applied ([`upgrade_v1beta2`]).
#[apply(knative_kind!)]
#[kube(
    group = "eventing.knative.dev",
    version = "v1beta2",
    kind = "EventType"
)]
#[kube(
    root = "EventTypeV1beta2",
    status = "EventTypeStatus",
    storage = false,
    category = "eventing"
)]
#[kube(
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".spec.source"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventTypeV1beta2Spec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<String>,
    pub source: Option<String>,
    /// URI of the payload schema.
    pub schema: Option<String>,
    /// The schema itself, as text.
    pub schema_data: Option<String>,
    /// The broker's name (deprecated in Knative in favour of `reference`).
    pub broker: Option<String>,
    pub reference: Option<KReference>,
    pub description: Option<String>,
}

inventory::submit! {
    super::CrdVersion {
        crd: <EventTypeV1beta2 as kube::CustomResourceExt>::crd,
    }
}

inventory::submit! {
    super::ServedVersion {
        group: GROUP,
        version: LEGACY_VERSION,
        kind: "EventType",
        plural: "eventtypes",
        stored_version: VERSION,
        upgrade: upgrade_v1beta2,
        downgrade: downgrade_to_v1beta2,
    }
}

static ATTRIBUTE_NAME: std::sync::LazyLock<regex::Regex> =
    std::sync::LazyLock::new(|| regex::Regex::new("^[a-z0-9]{1,20}$").expect("valid regex"));

pub fn validate_eventtype_value(new: &Value, _old: Option<&Value>) -> Result<(), ValidationError> {
    validate_metadata(new)?;
    let event_type: EventType = typed(new)?;
    let mut seen = std::collections::BTreeSet::new();
    for (index, attribute) in event_type.spec.attributes.iter().enumerate() {
        let field = format!("spec.attributes[{index}].name");
        if !ATTRIBUTE_NAME.is_match(&attribute.name) {
            return Err(ValidationError::new(
                field,
                format!(
                    "{:?} is not a CloudEvents attribute name (a-z, 0-9, at most 20)",
                    attribute.name
                ),
            ));
        }
        if !seen.insert(attribute.name.as_str()) {
            return Err(ValidationError::new(
                field,
                format!("attribute {:?} is listed twice", attribute.name),
            ));
        }
    }
    let has_type = event_type
        .spec
        .attributes
        .iter()
        .any(|a| a.name == "type" && a.value.as_deref().is_some_and(|v| !v.is_empty()));
    if !has_type {
        return Err(ValidationError::new(
            "spec.attributes",
            "must give the attribute \"type\" a value",
        ));
    }
    if let Some(reference) = &event_type.spec.reference {
        if reference.kind.is_empty() {
            return Err(ValidationError::new("spec.reference.kind", "is required"));
        }
        if reference.name.is_empty() {
            return Err(ValidationError::new("spec.reference.name", "is required"));
        }
    }
    Ok(())
}

/// The value of attribute `name` of a stored EventType object.
pub fn attribute_of<'a>(object: &'a Value, name: &str) -> Option<&'a str> {
    object
        .pointer("/spec/attributes")?
        .as_array()?
        .iter()
        .find(|a| a.get("name").and_then(Value::as_str) == Some(name))?
        .get("value")?
        .as_str()
}

/// The broker an EventType object refers to.
pub fn broker_of(object: &Value) -> Option<&str> {
    let reference = object.pointer("/spec/reference")?;
    (reference.get("kind").and_then(Value::as_str) == Some("Broker"))
        .then(|| reference.get("name").and_then(Value::as_str))
        .flatten()
}

/// A v1beta3 attribute list entry.
pub fn attribute(name: &str, value: Option<&str>, required: bool) -> Value {
    let mut entry = json!({"name": name, "required": required});
    if let Some(value) = value {
        entry["value"] = json!(value);
    }
    entry
}

/// A reference to a broker.
pub fn broker_reference(namespace: &str, broker: &str) -> Value {
    json!({
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "name": broker,
        "namespace": namespace,
    })
}

/// v1beta2 (`spec.type`, `spec.source`, `spec.schema`, `spec.schemaData`, `spec.broker`,
/// `spec.reference`, `spec.description`) into v1beta3.
pub fn upgrade_v1beta2(mut object: Value) -> Result<Value, ValidationError> {
    let Some(map) = object.as_object_mut() else {
        return Err(ValidationError::new("object", "must be a mapping"));
    };
    let spec = map.remove("spec").unwrap_or_else(|| json!({}));
    let Some(spec) = spec.as_object() else {
        return Err(ValidationError::new("spec", "must be a mapping"));
    };
    let known = [
        "type",
        "source",
        "schema",
        "schemaData",
        "broker",
        "reference",
        "description",
    ];
    if let Some(unknown) = spec.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ValidationError::new(
            format!("spec.{unknown}"),
            "is not a field of an EventType v1beta2",
        ));
    }
    let text = |key: &str| -> Result<Option<String>, ValidationError> {
        match spec.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ValidationError::new(
                format!("spec.{key}"),
                "must be a string",
            )),
        }
    };
    let mut attributes = vec![
        attribute("type", text("type")?.as_deref(), true),
        attribute("specversion", None, true),
        attribute("id", None, true),
    ];
    if let Some(source) = text("source")? {
        attributes.push(attribute("source", Some(&source), true));
    }
    if let Some(schema) = text("schema")? {
        attributes.push(attribute("dataschema", Some(&schema), false));
    }
    let mut new_spec = json!({"attributes": attributes});
    let namespace = map
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    if let Some(reference) = spec.get("reference") {
        new_spec["reference"] = reference.clone();
    } else if let Some(broker) = text("broker")? {
        new_spec["reference"] = broker_reference(&namespace, &broker);
    }
    if let Some(description) = text("description")? {
        new_spec["description"] = json!(description);
    }
    if let Some(schema_data) = text("schemaData")? {
        let metadata = map.entry("metadata").or_insert_with(|| json!({}));
        if !metadata["annotations"].is_object() {
            metadata["annotations"] = json!({});
        }
        metadata["annotations"][SCHEMA_DATA_ANNOTATION] = json!(schema_data);
    }
    map.insert("apiVersion".into(), json!(format!("{GROUP}/{VERSION}")));
    map.insert("spec".into(), new_spec);
    Ok(object)
}

/// A stored (v1beta3) EventType as v1beta2 would show it; the inferred schema becomes
/// `spec.schemaData` unless one was given.
pub fn downgrade_to_v1beta2(mut object: Value) -> Value {
    let mut spec = BTreeMap::new();
    for (attribute, field) in [
        ("type", "type"),
        ("source", "source"),
        ("dataschema", "schema"),
    ] {
        if let Some(value) = attribute_of(&object, attribute) {
            spec.insert(field.to_string(), json!(value));
        }
    }
    if let Some(broker) = broker_of(&object) {
        spec.insert("broker".into(), json!(broker));
    }
    if let Some(reference) = object.pointer("/spec/reference") {
        spec.insert("reference".into(), reference.clone());
    }
    if let Some(description) = object.pointer("/spec/description") {
        spec.insert("description".into(), description.clone());
    }
    let schema_data = object
        .pointer(&format!(
            "/metadata/annotations/{}",
            SCHEMA_DATA_ANNOTATION.replace('/', "~1")
        ))
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| object.pointer("/status/schema").map(Value::to_string));
    if let Some(schema_data) = schema_data {
        spec.insert("schemaData".into(), json!(schema_data));
    }
    object["apiVersion"] = json!(format!("{GROUP}/{LEGACY_VERSION}"));
    object["spec"] = json!(spec);
    object
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1beta3(attributes: Value) -> Value {
        json!({"apiVersion": "eventing.knative.dev/v1beta3", "kind": "EventType",
               "metadata": {"name": "et", "namespace": "default"},
               "spec": {"reference": {"kind": "Broker", "name": "default"}, "attributes": attributes}})
    }

    #[test]
    fn validation_names_the_field() {
        let ok = v1beta3(json!([{"name": "type", "value": "a.b", "required": true}]));
        validate_eventtype_value(&ok, None).unwrap();
        let no_type = v1beta3(json!([{"name": "source", "value": "/x"}]));
        let error = validate_eventtype_value(&no_type, None).unwrap_err();
        assert_eq!(error.field, "spec.attributes");
        let bad_name = v1beta3(json!([{"name": "Type!", "value": "a"}]));
        let error = validate_eventtype_value(&bad_name, None).unwrap_err();
        assert_eq!(error.field, "spec.attributes[0].name");
        let twice =
            v1beta3(json!([{"name": "type", "value": "a"}, {"name": "type", "value": "b"}]));
        assert!(validate_eventtype_value(&twice, None).is_err());
    }

    #[test]
    fn v1beta2_round_trips_through_v1beta3() {
        let old = json!({"apiVersion": "eventing.knative.dev/v1beta2", "kind": "EventType",
            "metadata": {"name": "et", "namespace": "shop"},
            "spec": {"type": "com.example.order", "source": "/orders", "schema": "https://example.com/s.json",
                     "broker": "main", "description": "orders"}});
        let new = upgrade_v1beta2(old).unwrap();
        validate_eventtype_value(&new, None).unwrap();
        assert_eq!(attribute_of(&new, "type"), Some("com.example.order"));
        assert_eq!(
            attribute_of(&new, "dataschema"),
            Some("https://example.com/s.json")
        );
        assert_eq!(broker_of(&new), Some("main"));
        assert_eq!(new["spec"]["reference"]["namespace"], "shop");
        let back = downgrade_to_v1beta2(new);
        assert_eq!(back["apiVersion"], "eventing.knative.dev/v1beta2");
        assert_eq!(back["spec"]["type"], "com.example.order");
        assert_eq!(back["spec"]["source"], "/orders");
        assert_eq!(back["spec"]["broker"], "main");
        assert_eq!(back["spec"]["schema"], "https://example.com/s.json");
        let unknown = json!({"metadata": {"name": "x"}, "spec": {"type": "a", "colour": "red"}});
        assert_eq!(upgrade_v1beta2(unknown).unwrap_err().field, "spec.colour");
    }
}
