//! A read-only view of the EventTypes as a CloudEvents xRegistry, rooted at `/xregistry`:
//! one `messagegroups` entry per broker (`{namespace}.{broker}`) whose `messages` are its
//! EventTypes (envelope `CloudEvents/1.0`), and one `schemagroups` entry per broker whose
//! `schemas` are the inferred schemas with their `versions`.
//!
//! Nested collections appear as `<name>url` and `<name>count` unless `?inline=` asks for
//! them (`*`, or dotted paths such as `messagegroups.messages`; `schema` inlines a schema
//! document). `?filter=path=value` (also `!=`, a bare `path` for "present", `*` as a
//! wildcard in values) keeps the entities that match; comma-separated expressions must all
//! hold, repeated `filter` parameters are alternatives.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};

use super::schema::FORMAT;
use rivulet_control::runtime::Context;
use rivulet_core::resources::eventtype::{attribute_of, broker_of};
use rivulet_core::resources::find_kind_by_name;
use rivulet_store::ResourceStore;

const ROOT: &str = "/xregistry";
const SPEC_VERSION: &str = "1.0-rc2";
const ENVELOPE: &str = "CloudEvents/1.0";

inventory::submit! {
    rivulet_control::runtime::routes::HttpRoutes { listener: rivulet_control::runtime::routes::Listener::Api, build: routes }
}

fn routes(ctx: Arc<Context>) -> Router {
    let state = View {
        store: ctx.store.clone(),
        base: ctx.settings.api_url.trim_end_matches('/').to_string(),
    };
    Router::new()
        .route(ROOT, get(root))
        .route(&format!("{ROOT}/"), get(root))
        .route(&format!("{ROOT}/model"), get(model))
        .route(&format!("{ROOT}/capabilities"), get(capabilities))
        .route(&format!("{ROOT}/{{*path}}"), get(nested))
        .with_state(state)
}

#[derive(Clone)]
struct View {
    store: Arc<dyn ResourceStore>,
    base: String,
}

/// The level of an entity in the tree, and the collections it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Registry,
    MessageGroup,
    Message,
    SchemaGroup,
    Schema,
    Version,
}

impl Level {
    fn collections(self) -> &'static [(&'static str, Level)] {
        match self {
            Level::Registry => &[
                ("messagegroups", Level::MessageGroup),
                ("schemagroups", Level::SchemaGroup),
            ],
            Level::MessageGroup => &[("messages", Level::Message)],
            Level::SchemaGroup => &[("schemas", Level::Schema)],
            Level::Schema => &[("versions", Level::Version)],
            Level::Message | Level::Version => &[],
        }
    }

    fn child(self, collection: &str) -> Option<Level> {
        self.collections()
            .iter()
            .find(|(name, _)| *name == collection)
            .map(|(_, level)| *level)
    }

    /// Whether entities of this level carry a schema document.
    fn has_document(self) -> bool {
        matches!(self, Level::Schema | Level::Version)
    }
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (
        code,
        axum::Json(json!({
            "type": "https://github.com/xregistry/spec/blob/main/core/spec.md#errors",
            "title": message.into(),
            "status": code.as_u16(),
        })),
    )
        .into_response()
}

/// Query options of a request.
#[derive(Default)]
struct Options {
    /// Alternatives, each a list of expressions that must all hold.
    filters: Vec<Vec<Expression>>,
    inline_all: bool,
    inline: Vec<Vec<String>>,
}

#[derive(Debug, Clone)]
struct Expression {
    path: Vec<String>,
    test: Test,
}

#[derive(Debug, Clone)]
enum Test {
    Present,
    Absent,
    Equals(String),
    NotEquals(String),
}

fn parse_options(query: Option<&str>) -> Result<Options, String> {
    let mut options = Options::default();
    let pairs = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes());
    for (name, value) in pairs {
        match name.as_ref() {
            "inline" => {
                for path in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    if path == "*" {
                        options.inline_all = true;
                    } else {
                        options
                            .inline
                            .push(path.split('.').map(str::to_string).collect());
                    }
                }
            }
            "filter" => {
                let mut group = Vec::new();
                for text in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    group.push(parse_expression(text)?);
                }
                if !group.is_empty() {
                    options.filters.push(group);
                }
            }
            // Other flags of the spec (doc, epoch, ...) are not needed for a read-only view.
            _ => {}
        }
    }
    Ok(options)
}

fn parse_expression(text: &str) -> Result<Expression, String> {
    let (path, test) = if let Some((path, value)) = text.split_once("!=") {
        (path, Test::NotEquals(value.to_string()))
    } else if let Some((path, value)) = text.split_once('=') {
        if value == "null" {
            (path, Test::Absent)
        } else {
            (path, Test::Equals(value.to_string()))
        }
    } else {
        (text, Test::Present)
    };
    let path: Vec<String> = path.split('.').map(str::to_string).collect();
    if path.iter().any(String::is_empty) {
        return Err(format!(
            "filter expression {text:?} has an empty path segment"
        ));
    }
    Ok(Expression { path, test })
}

/// `*` matches any run of characters.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(after) = rest.strip_prefix(part) else {
                return false;
            };
            rest = after;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Whether an entity (with all its collections still inlined) passes the expressions;
/// expressions that descend into a collection prune it to the matching children.
fn keep(entity: &mut Value, level: Level, expressions: &[Expression]) -> bool {
    let mut deeper: BTreeMap<&'static str, (Level, Vec<Expression>)> = BTreeMap::new();
    for expression in expressions {
        let first = expression.path[0].as_str();
        if let Some((name, child)) = level.collections().iter().find(|(n, _)| *n == first)
            && expression.path.len() > 1
        {
            deeper
                .entry(name)
                .or_insert((*child, Vec::new()))
                .1
                .push(Expression {
                    path: expression.path[1..].to_vec(),
                    test: expression.test.clone(),
                });
            continue;
        }
        let found = expression
            .path
            .iter()
            .try_fold(&*entity, |value, segment| value.get(segment));
        let holds = match (&expression.test, found) {
            (Test::Present, found) => found.is_some_and(|v| !v.is_null()),
            (Test::Absent, found) => found.is_none_or(Value::is_null),
            (Test::Equals(wanted), Some(value)) => {
                scalar_text(value).is_some_and(|t| wildcard_match(wanted, &t))
            }
            (Test::Equals(_), None) => false,
            (Test::NotEquals(wanted), Some(value)) => {
                !scalar_text(value).is_some_and(|t| wildcard_match(wanted, &t))
            }
            (Test::NotEquals(_), None) => true,
        };
        if !holds {
            return false;
        }
    }
    for (name, (child, expressions)) in deeper {
        let Some(children) = entity.get_mut(name).and_then(Value::as_object_mut) else {
            return false;
        };
        children.retain(|_, c| keep(c, child, &expressions));
        if children.is_empty() {
            return false;
        }
    }
    true
}

/// Deep union of two pruned copies of the same tree.
fn union(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in b {
                match a.get_mut(&key) {
                    Some(existing) => union(existing, value),
                    None => {
                        a.insert(key, value);
                    }
                }
            }
        }
        (a, b) => *a = b,
    }
}

/// Applies the filters to a set of entities (a collection map) of one level.
fn filter_collection(collection: Value, level: Level, options: &Options) -> Value {
    if options.filters.is_empty() {
        return collection;
    }
    let mut result = json!({});
    for group in &options.filters {
        let mut copy = collection.clone();
        if let Some(map) = copy.as_object_mut() {
            map.retain(|_, entity| keep(entity, level, group));
        }
        union(&mut result, copy);
    }
    result
}

/// Sets `<collection>count` from what is left, and drops collections and documents that were
/// not asked to be inlined (`paths` relative to this entity).
fn shape(entity: &mut Value, level: Level, options: &Options, paths: &[Vec<String>]) {
    let Some(map) = entity.as_object_mut() else {
        return;
    };
    for (name, child) in level.collections() {
        let Some(children) = map.get_mut(*name) else {
            continue;
        };
        let count = children.as_object().map_or(0, Map::len);
        let sub: Vec<Vec<String>> = paths
            .iter()
            .filter(|p| p.first().map(String::as_str) == Some(*name))
            .map(|p| p[1..].to_vec())
            .collect();
        let inlined = options.inline_all || !sub.is_empty();
        if inlined {
            if let Some(children) = children.as_object_mut() {
                for child_entity in children.values_mut() {
                    shape(child_entity, *child, options, &sub);
                }
            }
        } else {
            map.remove(*name);
        }
        map.insert(format!("{name}count"), json!(count));
    }
    if level.has_document() {
        let wanted = options.inline_all || paths.iter().any(|p| p.len() == 1 && p[0] == "schema");
        if !wanted {
            map.remove("schema");
        }
    }
}

/// The whole registry as one document with everything inlined.
async fn tree(view: &View) -> Result<Value, Response> {
    let kind = find_kind_by_name(None, "EventType").expect("EventType is registered");
    let eventtypes = view
        .store
        .list(kind, None)
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let root_url = format!("{}{ROOT}", view.base);
    let mut message_groups: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut schema_groups: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut group_names: BTreeMap<String, (String, String)> = BTreeMap::new();
    for object in &eventtypes {
        let namespace = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let broker = broker_of(object).unwrap_or("_unbound");
        let group = format!("{namespace}.{broker}");
        group_names.insert(group.clone(), (namespace.into(), broker.into()));
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let schema_xid = format!("/schemagroups/{group}/schemas/{name}");
        let has_schema = object.pointer("/status/schema").is_some();
        message_groups.entry(group.clone()).or_default().insert(
            name.into(),
            message(
                object,
                &group,
                name,
                &root_url,
                has_schema.then_some(&schema_xid),
            ),
        );
        if has_schema {
            schema_groups.entry(group.clone()).or_default().insert(
                name.into(),
                schema_resource(object, &group, name, &root_url),
            );
        }
    }
    let group_doc = |plural: &str,
                     singular: &str,
                     resources: &str,
                     group: &str,
                     children: Map<String, Value>| {
        let (namespace, broker) = group_names.get(group).cloned().unwrap_or_default();
        let xid = format!("/{plural}/{group}");
        let mut doc = json!({
            format!("{singular}id"): group,
            "xid": xid,
            "self": format!("{root_url}{xid}"),
            "epoch": 1,
            "name": format!("{namespace}/{broker}"),
            "description": format!("Events on broker {namespace}/{broker}"),
            format!("{resources}url"): format!("{root_url}{xid}/{resources}"),
            resources: children,
        });
        if plural == "messagegroups" {
            doc["envelope"] = json!(ENVELOPE);
        }
        doc
    };
    let messagegroups: Map<String, Value> = message_groups
        .into_iter()
        .map(|(g, children)| {
            let doc = group_doc("messagegroups", "messagegroup", "messages", &g, children);
            (g, doc)
        })
        .collect();
    let schemagroups: Map<String, Value> = schema_groups
        .into_iter()
        .map(|(g, children)| {
            let doc = group_doc("schemagroups", "schemagroup", "schemas", &g, children);
            (g, doc)
        })
        .collect();
    Ok(json!({
        "specversion": SPEC_VERSION,
        "registryid": "rivulet",
        "xid": "/",
        "self": root_url,
        "epoch": 1,
        "name": "Rivulet event types",
        "description": "Event types discovered on Rivulet brokers, with inferred payload schemas",
        "messagegroupsurl": format!("{root_url}/messagegroups"),
        "messagegroups": messagegroups,
        "schemagroupsurl": format!("{root_url}/schemagroups"),
        "schemagroups": schemagroups,
    }))
}

fn timestamps(object: &Value) -> (Value, Value) {
    let created = object
        .pointer("/metadata/creationTimestamp")
        .cloned()
        .unwrap_or(Value::Null);
    let modified = object
        .pointer("/status/schemaVersions")
        .and_then(Value::as_array)
        .and_then(|v| v.last())
        .and_then(|v| v.get("createdAt"))
        .cloned()
        .unwrap_or_else(|| created.clone());
    (created, modified)
}

fn message(
    object: &Value,
    group: &str,
    name: &str,
    root_url: &str,
    schema_xid: Option<&String>,
) -> Value {
    let xid = format!("/messagegroups/{group}/messages/{name}");
    let (created, modified) = timestamps(object);
    let mut metadata = Map::new();
    for attribute in object
        .pointer("/spec/attributes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(attribute_name) = attribute.get("name").and_then(Value::as_str) else {
            continue;
        };
        let mut entry =
            json!({"required": attribute.get("required").cloned().unwrap_or(json!(false))});
        if let Some(value) = attribute.get("value") {
            entry["value"] = value.clone();
        }
        metadata.insert(attribute_name.to_string(), entry);
    }
    let mut doc = json!({
        "messageid": name,
        "versionid": "1",
        "xid": xid,
        "self": format!("{root_url}{xid}"),
        "epoch": object.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
        "name": attribute_of(object, "type").unwrap_or(name),
        "createdat": created,
        "modifiedat": modified,
        "envelope": ENVELOPE,
        "envelopemetadata": metadata,
    });
    if let Some(description) = object.pointer("/spec/description") {
        doc["description"] = description.clone();
    }
    if let Some(content_type) = object.pointer("/status/dataContentType") {
        doc["datacontenttype"] = content_type.clone();
    }
    match (
        schema_xid,
        object.pointer("/status/dataSchema").and_then(Value::as_str),
    ) {
        (Some(schema_xid), _) => {
            doc["dataschemaformat"] = json!(FORMAT);
            doc["dataschemaxid"] = json!(schema_xid);
            doc["dataschemauri"] = json!(format!("{root_url}{schema_xid}"));
        }
        (None, Some(declared)) => doc["dataschemauri"] = json!(declared),
        (None, None) => {}
    }
    doc
}

fn schema_resource(object: &Value, group: &str, name: &str, root_url: &str) -> Value {
    let xid = format!("/schemagroups/{group}/schemas/{name}");
    let (created, modified) = timestamps(object);
    let latest = object
        .pointer("/status/schemaVersion")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    let mut versions = Map::new();
    let history = object
        .pointer("/status/schemaVersions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for entry in &history {
        let Some(version) = entry.get("version").and_then(Value::as_u64) else {
            continue;
        };
        let version_xid = format!("{xid}/versions/{version}");
        versions.insert(
            version.to_string(),
            json!({
                "schemaid": name,
                "versionid": version.to_string(),
                "xid": version_xid,
                "self": format!("{root_url}{version_xid}"),
                "epoch": 1,
                "isdefault": version == latest,
                "format": FORMAT,
                "createdat": entry.get("createdAt").cloned().unwrap_or(Value::Null),
                "modifiedat": entry.get("createdAt").cloned().unwrap_or(Value::Null),
                "schema": entry.get("schema").cloned().unwrap_or(Value::Null),
            }),
        );
    }
    json!({
        "schemaid": name,
        "versionid": latest.to_string(),
        "xid": xid,
        "self": format!("{root_url}{xid}"),
        "epoch": latest,
        "name": attribute_of(object, "type").unwrap_or(name),
        "description": format!("Inferred from the payloads of {}", attribute_of(object, "type").unwrap_or(name)),
        "format": FORMAT,
        "createdat": created,
        "modifiedat": modified,
        "schema": object.pointer("/status/schema").cloned().unwrap_or(Value::Null),
        "versionsurl": format!("{root_url}{xid}/versions"),
        "versions": versions,
    })
}

fn json_response(value: Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        axum::Json(value),
    )
        .into_response()
}

async fn root(State(view): State<View>, RawQuery(query): RawQuery) -> Response {
    let options = match parse_options(query.as_deref()) {
        Ok(options) => options,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let mut registry = match tree(&view).await {
        Ok(tree) => tree,
        Err(response) => return response,
    };
    if !options.filters.is_empty() {
        let wrapped = json!({"r": registry});
        let filtered = filter_collection(wrapped, Level::Registry, &options);
        registry = match filtered.get("r") {
            Some(kept) => kept.clone(),
            None => {
                // Nothing matched: the registry with empty collections.
                let mut empty = registry.clone();
                empty["messagegroups"] = json!({});
                empty["schemagroups"] = json!({});
                empty
            }
        };
    }
    let paths = options.inline.clone();
    shape(&mut registry, Level::Registry, &options, &paths);
    json_response(registry)
}

async fn nested(
    State(view): State<View>,
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let options = match parse_options(query.as_deref()) {
        Ok(options) => options,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let registry = match tree(&view).await {
        Ok(tree) => tree,
        Err(response) => return response,
    };
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    // Walk collection / id pairs; `$details` on a schema asks for its metadata rather than
    // the document.
    let mut node = &registry;
    let mut level = Level::Registry;
    let mut index = 0;
    while let Some(collection) = segments.get(index) {
        let Some(child) = level.child(collection) else {
            return error(
                StatusCode::NOT_FOUND,
                format!("no collection {collection:?} at this level"),
            );
        };
        let Some(children) = node.get(*collection) else {
            return error(StatusCode::NOT_FOUND, format!("{path} not found"));
        };
        match segments.get(index + 1) {
            None => {
                // A collection: a map of its entities.
                let filtered = filter_collection(children.clone(), child, &options);
                let mut filtered = filtered;
                if let Some(map) = filtered.as_object_mut() {
                    for entity in map.values_mut() {
                        shape(entity, child, &options, &options.inline);
                    }
                }
                return json_response(filtered);
            }
            Some(id) => {
                let (id, details) = match id.strip_suffix("$details") {
                    Some(id) => (id, true),
                    None => (*id, false),
                };
                let Some(entity) = children.get(id) else {
                    return error(StatusCode::NOT_FOUND, format!("{path} not found"));
                };
                let last = index + 2 >= segments.len();
                if last {
                    if child.has_document() && !details {
                        // The schema document itself.
                        return json_response(entity.get("schema").cloned().unwrap_or(Value::Null));
                    }
                    let mut entity = entity.clone();
                    if !options.filters.is_empty()
                        && !options
                            .filters
                            .iter()
                            .any(|group| keep(&mut entity.clone(), child, group))
                    {
                        return error(
                            StatusCode::NOT_FOUND,
                            format!("{path} does not match the filter"),
                        );
                    }
                    shape(&mut entity, child, &options, &options.inline);
                    return json_response(entity);
                }
                if details {
                    return error(
                        StatusCode::NOT_FOUND,
                        "$details applies to the last segment only",
                    );
                }
                node = entity;
                level = child;
                index += 2;
            }
        }
    }
    error(StatusCode::NOT_FOUND, format!("{path} not found"))
}

async fn model() -> Response {
    json_response(json!({
        "groups": {
            "messagegroups": {
                "plural": "messagegroups",
                "singular": "messagegroup",
                "resources": {
                    "messages": {"plural": "messages", "singular": "message", "maxversions": 1, "hasdocument": false}
                }
            },
            "schemagroups": {
                "plural": "schemagroups",
                "singular": "schemagroup",
                "resources": {
                    "schemas": {"plural": "schemas", "singular": "schema", "maxversions": 0, "hasdocument": true}
                }
            }
        }
    }))
}

async fn capabilities() -> Response {
    json_response(json!({
        "apis": ["/capabilities", "/model"],
        "flags": ["filter", "inline"],
        "mutable": [],
        "pagination": false,
        "specversions": [SPEC_VERSION],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Value {
        json!({"a": {"messages": {
            "m1": {"messageid": "m1", "envelopemetadata": {"type": {"value": "com.example.order"}}},
            "m2": {"messageid": "m2", "envelopemetadata": {"type": {"value": "com.example.cart"}}}
        }}, "b": {"messages": {
            "m3": {"messageid": "m3", "envelopemetadata": {"type": {"value": "com.other"}}}
        }}})
    }

    fn options(query: &str) -> Options {
        parse_options(Some(query)).unwrap()
    }

    #[test]
    fn filters_prune_to_matching_descendants() {
        let result = filter_collection(
            sample(),
            Level::MessageGroup,
            &options("filter=messages.envelopemetadata.type.value=com.example.o*"),
        );
        assert_eq!(result.as_object().unwrap().len(), 1);
        assert_eq!(result["a"]["messages"].as_object().unwrap().len(), 1);
        assert!(result["a"]["messages"]["m1"].is_object());
    }

    #[test]
    fn repeated_filters_are_alternatives_and_commas_conjunctions() {
        let either = filter_collection(
            sample(),
            Level::MessageGroup,
            &options("filter=messages.messageid=m1&filter=messages.messageid=m3"),
        );
        assert_eq!(either.as_object().unwrap().len(), 2);
        let both = filter_collection(
            sample(),
            Level::MessageGroup,
            &options("filter=messages.messageid=m1,messages.messageid=m2"),
        );
        assert!(both.as_object().unwrap().is_empty(), "{both}");
        let not = filter_collection(
            sample(),
            Level::MessageGroup,
            &options("filter=messages.messageid!=m3"),
        );
        assert!(not.get("b").is_none());
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("com.*", "com.example"));
        assert!(wildcard_match("*order*", "com.order.created"));
        assert!(!wildcard_match("com.*.x", "com.a.y"));
        assert!(wildcard_match("exact", "exact"));
    }
}
