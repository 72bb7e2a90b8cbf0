//! The resource API (`/apis/{group}/{version}/namespaces/{ns}/{plural}[/{name}]`, and
//! `/api/v1/...` for ConfigMaps and Secrets), health endpoints and metrics.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

mod apply;
pub mod auth;
mod cesql;
mod discovery;
pub mod journal;

use crate::runtime::storage::StorageHealth;
use rivulet_core::metrics::Metrics;
use rivulet_core::resources::{KindInfo, ServedVersion, find_kind, find_served_version};
use rivulet_store::{Applied, ResourceStore, StoreError};

/// State of the API handlers.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn ResourceStore>,
    pub metrics: Arc<Metrics>,
    /// False until start-up is done, and again while shutting down.
    pub ready: Arc<AtomicBool>,
    /// The runtime, where this process carries events: deleting a broker or trigger asks it
    /// what would be left undelivered and waits for its drain.
    pub runtime: Option<Arc<crate::runtime::Context>>,
    /// Storage faults (a full disk) that make the server not ready.
    pub storage: Arc<StorageHealth>,
}

/// Query parameters a kind's list understands (`?broker=...`), registered with
/// `inventory::submit!` next to the kind. Kinds without one ignore query parameters.
pub struct ListFilter {
    pub group: &'static str,
    pub plural: &'static str,
    /// The parameters it takes; others are refused with `400`.
    pub params: &'static [&'static str],
    /// Whether a stored object passes the given parameters.
    pub matches: fn(&Value, &BTreeMap<String, String>) -> bool,
}

inventory::collect!(ListFilter);

fn list_filter(group: &str, plural: &str) -> Option<&'static ListFilter> {
    inventory::iter::<ListFilter>().find(|f| f.group == group && f.plural == plural)
}

/// Query parameters of a list request.
type Params = BTreeMap<String, String>;

/// The largest manifest the API takes.
const MANIFEST_LIMIT: usize = 4 * 1024 * 1024;

/// Health and readiness, served unauthenticated on every listener.
pub fn health_router(ready: Arc<AtomicBool>, storage: Arc<StorageHealth>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state((ready, storage))
}

/// Health and metrics without authentication: what the controller and the Kubernetes data
/// plane serve (on Kubernetes a NetworkPolicy guards the port; resources are the Kubernetes
/// API's business).
pub fn metrics_only_router(state: ApiState) -> Router {
    health_router(state.ready.clone(), state.storage.clone()).merge(
        Router::new()
            .route("/metrics", get(metrics))
            .with_state(state),
    )
}

/// The resource API listener: health and `public` (files that hold no data) open, then
/// metrics, resources, tokens and `extra` routes behind `gate`.
pub fn router(state: ApiState, gate: auth::Gate, extra: Router, public: Router) -> Router {
    let guarded = resource_router(state.clone())
        .route("/metrics", get(metrics).with_state(state.clone()))
        .merge(auth::routes(gate.clone()))
        .merge(extra)
        .layer(axum::middleware::from_fn_with_state(
            gate,
            auth::require_token,
        ));
    health_router(state.ready.clone(), state.storage.clone())
        .merge(public)
        .merge(guarded)
}

fn resource_router(state: ApiState) -> Router {
    Router::new()
        .route("/apis", get(discovery::groups))
        .route("/apis/{group}/{version}", get(discovery::group_resources))
        .route("/api/{version}", get(discovery::core_resources))
        .route("/apply", axum::routing::post(apply::apply))
        .route("/cesql/check", get(cesql::check))
        .route(
            "/apis/{group}/{version}/namespaces/{namespace}/{plural}",
            get(list_grouped),
        )
        .route(
            "/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}",
            get(get_grouped).put(put_grouped).delete(delete_grouped),
        )
        .route("/apis/{group}/{version}/{plural}", get(list_grouped_all))
        .route(
            "/api/{version}/namespaces/{namespace}/{plural}",
            get(list_core),
        )
        .route("/api/{version}/{plural}", get(list_core_all))
        .route(
            "/api/{version}/namespaces/{namespace}/{plural}/{name}",
            get(get_core).put(put_core).delete(delete_core),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MANIFEST_LIMIT))
        .with_state(state)
}

async fn readyz(State((ready, storage)): State<(Arc<AtomicBool>, Arc<StorageHealth>)>) -> Response {
    if !ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response();
    }
    match storage.problem() {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(problem) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {problem}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// A Kubernetes-style `Status` body of a failure.
pub fn status_body(code: StatusCode, reason: &str, message: impl Into<String>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "reason": reason,
        "message": message.into(),
        "code": code.as_u16(),
    })
}

/// A failure answered with a Kubernetes-style `Status` body.
pub fn status_error(code: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    (code, axum::Json(status_body(code, reason, message))).into_response()
}

fn unknown_kind(group: &str, version: &str, plural: &str) -> Response {
    let api = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    status_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("the server does not serve {plural} in {api}"),
    )
}

fn store_error(error: StoreError) -> Response {
    match error {
        StoreError::Invalid(e) => {
            status_error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e.to_string())
        }
        StoreError::NotFound { .. } => {
            status_error(StatusCode::NOT_FOUND, "NotFound", error.to_string())
        }
        // A full disk passes; the resource was not stored.
        StoreError::Io(ref io) if rivulet_channels::embedded::io_error_means_full(io) => {
            status_error(
                StatusCode::INSUFFICIENT_STORAGE,
                "InsufficientStorage",
                error.to_string(),
            )
        }
        StoreError::Io(_) => status_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            error.to_string(),
        ),
        // The API server's own answer (a conflict, a refusal), passed on as it came.
        StoreError::Api {
            code,
            ref reason,
            ref message,
        } => status_error(
            StatusCode::from_u16(code)
                .ok()
                .filter(|code| code.is_client_error() || code.is_server_error())
                .unwrap_or(StatusCode::BAD_GATEWAY),
            if reason.is_empty() {
                "InternalError"
            } else {
                reason
            },
            message.clone(),
        ),
        StoreError::Unavailable(_) => status_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            error.to_string(),
        ),
    }
}

/// How a kind is served at a path: as stored, or converted from the stored version.
/// Stands in for each Secret value in responses; not base64, so applying it back fails
/// loudly instead of storing a placeholder.
const REDACTED: &str = "<redacted>";

/// A Secret with its keys kept and its values replaced: values are write-only through the API.
fn redact_secret(mut object: Value) -> Value {
    if let Some(map) = object.as_object_mut() {
        map.remove("stringData");
        if let Some(Value::Object(data)) = map.get_mut("data") {
            for value in data.values_mut() {
                *value = Value::String(REDACTED.into());
            }
        }
    }
    object
}

#[derive(Clone, Copy)]
enum Served {
    Stored(&'static KindInfo),
    Converted(&'static ServedVersion, &'static KindInfo),
}

impl Served {
    fn find(group: &str, version: &str, plural: &str) -> Option<Served> {
        if let Some(kind) = find_kind(group, version, plural) {
            return Some(Served::Stored(kind));
        }
        let converted = find_served_version(group, version, plural)?;
        Some(Served::Converted(converted, converted.stored_kind()?))
    }

    fn stored(self) -> &'static KindInfo {
        match self {
            Served::Stored(kind) | Served::Converted(_, kind) => kind,
        }
    }

    fn api_version(self) -> String {
        match self {
            Served::Stored(kind) => kind.api_version(),
            Served::Converted(version, _) => version.api_version(),
        }
    }

    /// A stored object as this version shows it.
    /// What a client sees of a stored object: the served version, and never a Secret's
    /// values.
    fn view(self, object: Value) -> Value {
        match self {
            Served::Stored(kind) if kind.kind == "Secret" => redact_secret(object),
            Served::Stored(_) => object,
            Served::Converted(version, _) => (version.downgrade)(object),
        }
    }
}

async fn list(
    state: ApiState,
    served: Served,
    namespace: Option<&str>,
    params: &Params,
) -> Response {
    let kind = served.stored();
    let filter = list_filter(kind.group, kind.plural);
    if let Some(filter) = filter
        && let Some(unknown) = params.keys().find(|p| !filter.params.contains(&p.as_str()))
    {
        return status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "unknown query parameter {unknown:?} for {}; known: {}",
                kind.plural,
                filter.params.join(", ")
            ),
        );
    }
    match state.store.list(kind, namespace).await {
        Ok(items) => {
            let items: Vec<Value> = items
                .into_iter()
                .filter(|item| {
                    filter.is_none_or(|f| params.is_empty() || (f.matches)(item, params))
                })
                .map(|item| served.view(item))
                .collect();
            axum::Json(json!({
                "apiVersion": served.api_version(),
                "kind": format!("{}List", kind.kind),
                "items": items,
            }))
            .into_response()
        }
        Err(e) => store_error(e),
    }
}

async fn get_one(
    state: ApiState,
    served: Served,
    namespace: &str,
    name: &str,
    headers: &HeaderMap,
) -> Response {
    let kind = served.stored();
    match state.store.get(kind, namespace, name).await {
        Ok(Some(object)) if wants_yaml(headers) => {
            match serde_saphyr::to_string(&served.view(object)) {
                Ok(text) => ([(header::CONTENT_TYPE, "application/yaml")], text).into_response(),
                Err(e) => status_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    format!("cannot write the object as YAML: {e}"),
                ),
            }
        }
        Ok(Some(object)) => axum::Json(served.view(object)).into_response(),
        Ok(None) => status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} {namespace}/{name} not found", kind.kind),
        ),
        Err(e) => store_error(e),
    }
}

/// Whether the client asked for YAML (`Accept: application/yaml`) rather than JSON.
fn wants_yaml(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("yaml") && !accept.contains("json"))
}

/// Parses a manifest body: JSON, or YAML when the content type says so (or JSON fails).
fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, String> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.contains("yaml") {
        return serde_saphyr::from_slice(body).map_err(|e| format!("body is not valid YAML: {e}"));
    }
    // YAML is bounded by its parser's own depth budget (64); JSON is checked here, without
    // recursion, before it is parsed.
    if body.trim_ascii_start().starts_with(b"{") || body.trim_ascii_start().starts_with(b"[") {
        rivulet_core::event::limits::check_json_depth(
            "body",
            body,
            rivulet_core::event::limits::MAX_JSON_DEPTH,
        )
        .map_err(|e| e.0)?;
    }
    serde_json::from_slice(body).or_else(|json_error| {
        serde_saphyr::from_slice(body)
            .map_err(|_| format!("body is neither valid JSON ({json_error}) nor YAML"))
    })
}

async fn put_one(
    state: ApiState,
    served: Served,
    namespace: &str,
    name: &str,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut object = match parse_body(&headers, &body) {
        Ok(Value::Object(map)) => Value::Object(map),
        Ok(_) => {
            return status_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "body must be an object",
            );
        }
        Err(message) => return status_error(StatusCode::BAD_REQUEST, "BadRequest", message),
    };
    let kind = served.stored();
    if kind.kind == "Secret"
        && ["data", "stringData"].iter().any(|field| {
            object
                .get(field)
                .and_then(Value::as_object)
                .is_some_and(|values| values.values().any(|v| v == REDACTED))
        })
    {
        return status_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!(
                "a Secret value is {REDACTED:?}: the API never returns Secret values, so send the real ones"
            ),
        );
    }
    if let Some(declared) = object.get("kind").and_then(Value::as_str)
        && declared != kind.kind
    {
        return status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("body is a {declared}, the path is for {}", kind.plural),
        );
    }
    let meta = object
        .as_object_mut()
        .expect("checked above")
        .entry("metadata")
        .or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else {
        return status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "metadata must be an object",
        );
    };
    for (field, expected) in [("name", name), ("namespace", namespace)] {
        match meta.get(field).and_then(Value::as_str) {
            Some(given) if given != expected => {
                return status_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("metadata.{field} {given:?} does not match the path's {expected:?}"),
                );
            }
            _ => {
                meta.insert(field.into(), json!(expected));
            }
        }
    }
    if let Served::Converted(version, _) = served {
        object = match (version.upgrade)(object) {
            Ok(upgraded) => upgraded,
            Err(e) => {
                return status_error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e.to_string());
            }
        };
    }
    match state.store.apply(kind, object).await {
        Ok((stored, Applied::Created)) => {
            (StatusCode::CREATED, axum::Json(served.view(stored))).into_response()
        }
        Ok((stored, _)) => (StatusCode::OK, axum::Json(served.view(stored))).into_response(),
        Err(e) => store_error(e),
    }
}

async fn delete_one(
    state: ApiState,
    served: Served,
    namespace: &str,
    name: &str,
    params: &Params,
) -> Response {
    let kind = served.stored();
    let holds_events =
        kind.group == "eventing.knative.dev" && matches!(kind.kind, "Broker" | "Trigger");
    let Some(runtime) = state.runtime.clone().filter(|_| holds_events) else {
        return match state.store.delete(kind, namespace, name).await {
            Ok(object) => axum::Json(served.view(object)).into_response(),
            Err(e) => store_error(e),
        };
    };
    let force = match params.get("force").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return status_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("query parameter force must be true or false, not {other:?}"),
            );
        }
    };
    // Kubernetes clients may send their standard delete options; they change nothing here
    // (a dry run would, so it is refused like any unknown parameter).
    const KUBERNETES_DELETE_OPTIONS: [&str; 3] = [
        "gracePeriodSeconds",
        "propagationPolicy",
        "orphanDependents",
    ];
    if let Some(other) = params
        .keys()
        .find(|key| key.as_str() != "force" && !KUBERNETES_DELETE_OPTIONS.contains(&key.as_str()))
    {
        return status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "DELETE takes the query parameter force (and Kubernetes' delete options), not {other:?}"
            ),
        );
    }
    let what = format!("{} {namespace}/{name}", kind.kind.to_ascii_lowercase());
    if !force {
        match runtime.undelivered(kind.kind, namespace, name).await {
            Ok(counts) => {
                let total: u64 = counts.iter().filter_map(|(_, count)| *count).sum();
                if total > 0 {
                    return undelivered_conflict(kind, &what, name, total, &counts);
                }
            }
            Err(error) => {
                return status_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    format!(
                        "cannot tell how many undelivered events {what} holds ({error}); delete with ?force=true to go ahead anyway"
                    ),
                );
            }
        }
    }
    let outcome = runtime.watch_deletion(kind.kind, namespace, name);
    if let Err(e) = state.store.delete(kind, namespace, name).await {
        return store_error(e);
    }
    // The drain takes the grace period at most, then the leftovers' dead-lettering.
    let limit = runtime.settings.delete_grace + DRAIN_MARGIN;
    let (message, report) = match tokio::time::timeout(limit, outcome).await {
        Ok(Ok(report)) => (
            format!(
                "{what} deleted: {} in flight finished delivery, {} dead-lettered, {} dropped",
                report.drained, report.dead_lettered, report.dropped
            ),
            Some(report),
        ),
        _ => (
            format!(
                "{what} deleted; its undelivered events are still being drained (the log and the rivulet_deletion_events metric will say what became of them)"
            ),
            None,
        ),
    };
    axum::Json(json!({
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Success",
        "code": 200,
        "message": message,
        "details": {"name": name, "group": kind.group, "kind": kind.plural},
        "undelivered": report,
    }))
    .into_response()
}

/// How long a deletion's answer waits for the drain beyond the grace period.
const DRAIN_MARGIN: std::time::Duration = std::time::Duration::from_secs(60);

/// `409`: the object holds undelivered events and the caller did not say `force`.
fn undelivered_conflict(
    kind: &KindInfo,
    what: &str,
    name: &str,
    total: u64,
    counts: &[(String, Option<u64>)],
) -> Response {
    let causes: Vec<Value> = counts
        .iter()
        .filter_map(|(trigger, count)| {
            count.filter(|c| *c > 0).map(|count| {
                json!({
                    "reason": "UndeliveredEvents",
                    "field": format!("trigger {trigger}"),
                    "message": format!("{count} undelivered events"),
                })
            })
        })
        .collect();
    let message = format!(
        "{what} holds {total} undelivered events; deleting it sends them to the dead-letter sink where one is set and drops the rest. Delete with ?force=true (rivulet delete --force) to go ahead"
    );
    (
        StatusCode::CONFLICT,
        axum::Json(json!({
            "apiVersion": "v1",
            "kind": "Status",
            "status": "Failure",
            "reason": "Conflict",
            "message": message,
            "code": 409,
            "details": {"name": name, "group": kind.group, "kind": kind.plural, "causes": causes},
            "undelivered": total,
        })),
    )
        .into_response()
}

async fn list_grouped(
    State(state): State<ApiState>,
    Path((group, version, namespace, plural)): Path<(String, String, String, String)>,
    Query(params): Query<Params>,
) -> Response {
    match Served::find(&group, &version, &plural) {
        Some(served) => list(state, served, Some(&namespace), &params).await,
        None => unknown_kind(&group, &version, &plural),
    }
}

async fn list_grouped_all(
    State(state): State<ApiState>,
    Path((group, version, plural)): Path<(String, String, String)>,
    Query(params): Query<Params>,
) -> Response {
    match Served::find(&group, &version, &plural) {
        Some(served) => list(state, served, None, &params).await,
        None => unknown_kind(&group, &version, &plural),
    }
}

async fn get_grouped(
    State(state): State<ApiState>,
    Path((group, version, namespace, plural, name)): Path<(String, String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    match Served::find(&group, &version, &plural) {
        Some(served) => get_one(state, served, &namespace, &name, &headers).await,
        None => unknown_kind(&group, &version, &plural),
    }
}

async fn put_grouped(
    State(state): State<ApiState>,
    Path((group, version, namespace, plural, name)): Path<(String, String, String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match Served::find(&group, &version, &plural) {
        Some(served) => put_one(state, served, &namespace, &name, headers, body).await,
        None => unknown_kind(&group, &version, &plural),
    }
}

async fn delete_grouped(
    State(state): State<ApiState>,
    Path((group, version, namespace, plural, name)): Path<(String, String, String, String, String)>,
    Query(params): Query<Params>,
) -> Response {
    match Served::find(&group, &version, &plural) {
        Some(served) => delete_one(state, served, &namespace, &name, &params).await,
        None => unknown_kind(&group, &version, &plural),
    }
}

async fn list_core(
    State(state): State<ApiState>,
    Path((version, namespace, plural)): Path<(String, String, String)>,
    Query(params): Query<Params>,
) -> Response {
    match Served::find("", &version, &plural) {
        Some(served) => list(state, served, Some(&namespace), &params).await,
        None => unknown_kind("", &version, &plural),
    }
}

async fn list_core_all(
    State(state): State<ApiState>,
    Path((version, plural)): Path<(String, String)>,
    Query(params): Query<Params>,
) -> Response {
    match Served::find("", &version, &plural) {
        Some(served) => list(state, served, None, &params).await,
        None => unknown_kind("", &version, &plural),
    }
}

async fn get_core(
    State(state): State<ApiState>,
    Path((version, namespace, plural, name)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    match Served::find("", &version, &plural) {
        Some(served) => get_one(state, served, &namespace, &name, &headers).await,
        None => unknown_kind("", &version, &plural),
    }
}

async fn put_core(
    State(state): State<ApiState>,
    Path((version, namespace, plural, name)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match Served::find("", &version, &plural) {
        Some(served) => put_one(state, served, &namespace, &name, headers, body).await,
        None => unknown_kind("", &version, &plural),
    }
}

async fn delete_core(
    State(state): State<ApiState>,
    Path((version, namespace, plural, name)): Path<(String, String, String, String)>,
    Query(params): Query<Params>,
) -> Response {
    match Served::find("", &version, &plural) {
        Some(served) => delete_one(state, served, &namespace, &name, &params).await,
        None => unknown_kind("", &version, &plural),
    }
}
