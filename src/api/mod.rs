//! The resource API (`/apis/{group}/{version}/namespaces/{ns}/{plural}[/{name}]`, and
//! `/api/v1/...` for ConfigMaps and Secrets), health endpoints and metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::metrics::Metrics;
use crate::resources::{KindInfo, find_kind};
use crate::store::{Applied, ResourceStore, StoreError};

/// State of the API handlers.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn ResourceStore>,
    pub metrics: Arc<Metrics>,
    /// False until start-up is done, and again while shutting down.
    pub ready: Arc<AtomicBool>,
}

/// The largest manifest the API takes.
const MANIFEST_LIMIT: usize = 4 * 1024 * 1024;

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
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
        .route(
            "/api/{version}/namespaces/{namespace}/{plural}/{name}",
            get(get_core).put(put_core).delete(delete_core),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MANIFEST_LIMIT))
        .with_state(state)
}

async fn readyz(State(state): State<ApiState>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
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

/// A Kubernetes-style `Status` error body.
fn status_error(code: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    let message = message.into();
    (
        code,
        axum::Json(json!({
            "apiVersion": "v1",
            "kind": "Status",
            "status": "Failure",
            "reason": reason,
            "message": message,
            "code": code.as_u16(),
        })),
    )
        .into_response()
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
        StoreError::Io(_) => status_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            error.to_string(),
        ),
    }
}

async fn list(state: ApiState, kind: &'static KindInfo, namespace: Option<&str>) -> Response {
    match state.store.list(kind, namespace).await {
        Ok(items) => axum::Json(json!({
            "apiVersion": kind.api_version(),
            "kind": format!("{}List", kind.kind),
            "items": items,
        }))
        .into_response(),
        Err(e) => store_error(e),
    }
}

async fn get_one(
    state: ApiState,
    kind: &'static KindInfo,
    namespace: &str,
    name: &str,
) -> Response {
    match state.store.get(kind, namespace, name).await {
        Ok(Some(object)) => axum::Json(object).into_response(),
        Ok(None) => status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} {namespace}/{name} not found", kind.kind),
        ),
        Err(e) => store_error(e),
    }
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
    serde_json::from_slice(body).or_else(|json_error| {
        serde_saphyr::from_slice(body)
            .map_err(|_| format!("body is neither valid JSON ({json_error}) nor YAML"))
    })
}

async fn put_one(
    state: ApiState,
    kind: &'static KindInfo,
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
    if let Some(declared) = object.get("kind").and_then(Value::as_str) {
        if declared != kind.kind {
            return status_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("body is a {declared}, the path is for {}", kind.plural),
            );
        }
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
    match state.store.apply(kind, object).await {
        Ok((stored, Applied::Created)) => (StatusCode::CREATED, axum::Json(stored)).into_response(),
        Ok((stored, _)) => (StatusCode::OK, axum::Json(stored)).into_response(),
        Err(e) => store_error(e),
    }
}

async fn delete_one(
    state: ApiState,
    kind: &'static KindInfo,
    namespace: &str,
    name: &str,
) -> Response {
    match state.store.delete(kind, namespace, name).await {
        Ok(object) => axum::Json(object).into_response(),
        Err(e) => store_error(e),
    }
}

async fn list_grouped(
    State(state): State<ApiState>,
    Path((group, version, namespace, plural)): Path<(String, String, String, String)>,
) -> Response {
    match find_kind(&group, &version, &plural) {
        Some(kind) => list(state, kind, Some(&namespace)).await,
        None => unknown_kind(&group, &version, &plural),
    }
}

async fn list_grouped_all(
    State(state): State<ApiState>,
    Path((group, version, plural)): Path<(String, String, String)>,
) -> Response {
    match find_kind(&group, &version, &plural) {
        Some(kind) => list(state, kind, None).await,
        None => unknown_kind(&group, &version, &plural),
    }
}

async fn get_grouped(
    State(state): State<ApiState>,
    Path((group, version, namespace, plural, name)): Path<(String, String, String, String, String)>,
) -> Response {
    match find_kind(&group, &version, &plural) {
        Some(kind) => get_one(state, kind, &namespace, &name).await,
        None => unknown_kind(&group, &version, &plural),
    }
}

async fn put_grouped(
    State(state): State<ApiState>,
    Path((group, version, namespace, plural, name)): Path<(String, String, String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match find_kind(&group, &version, &plural) {
        Some(kind) => put_one(state, kind, &namespace, &name, headers, body).await,
        None => unknown_kind(&group, &version, &plural),
    }
}

async fn delete_grouped(
    State(state): State<ApiState>,
    Path((group, version, namespace, plural, name)): Path<(String, String, String, String, String)>,
) -> Response {
    match find_kind(&group, &version, &plural) {
        Some(kind) => delete_one(state, kind, &namespace, &name).await,
        None => unknown_kind(&group, &version, &plural),
    }
}

async fn list_core(
    State(state): State<ApiState>,
    Path((version, namespace, plural)): Path<(String, String, String)>,
) -> Response {
    match find_kind("", &version, &plural) {
        Some(kind) => list(state, kind, Some(&namespace)).await,
        None => unknown_kind("", &version, &plural),
    }
}

async fn get_core(
    State(state): State<ApiState>,
    Path((version, namespace, plural, name)): Path<(String, String, String, String)>,
) -> Response {
    match find_kind("", &version, &plural) {
        Some(kind) => get_one(state, kind, &namespace, &name).await,
        None => unknown_kind("", &version, &plural),
    }
}

async fn put_core(
    State(state): State<ApiState>,
    Path((version, namespace, plural, name)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match find_kind("", &version, &plural) {
        Some(kind) => put_one(state, kind, &namespace, &name, headers, body).await,
        None => unknown_kind("", &version, &plural),
    }
}

async fn delete_core(
    State(state): State<ApiState>,
    Path((version, namespace, plural, name)): Path<(String, String, String, String)>,
) -> Response {
    match find_kind("", &version, &plural) {
        Some(kind) => delete_one(state, kind, &namespace, &name).await,
        None => unknown_kind("", &version, &plural),
    }
}
