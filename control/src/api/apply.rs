//! `POST /apply`: what `rivulet apply -f` does, on the server: every object in a YAML (or
//! JSON) body of one or more documents, each stored through the same path and validation as
//! `PUT` on its URL. Objects of kinds Rivulet does not serve are skipped and named, as the CLI
//! does. Admin tokens only, like every request that is not a read.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ApiState, MANIFEST_LIMIT, Served, put_one, status_body, status_error};
use rivulet_core::resources::parse_manifests_skipping;

/// Objects one request may apply at most.
const MAX_OBJECTS: usize = 500;

pub(super) async fn apply(State(state): State<ApiState>, body: Bytes) -> Response {
    let Ok(text) = std::str::from_utf8(&body) else {
        return status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "body is not UTF-8 text",
        );
    };
    let parsed = match parse_manifests_skipping(text, "body") {
        Ok(parsed) => parsed,
        Err(message) => return status_error(StatusCode::BAD_REQUEST, "BadRequest", message),
    };
    if parsed.manifests.len() > MAX_OBJECTS {
        return status_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!(
                "the body holds {} objects; apply at most {MAX_OBJECTS} at once",
                parsed.manifests.len()
            ),
        );
    }
    let skipped: Vec<String> = parsed.skipped.iter().map(ToString::to_string).collect();
    if parsed.manifests.is_empty() {
        let message = if skipped.is_empty() {
            "no objects found in the body".to_string()
        } else {
            format!(
                "none of the objects is of a kind Rivulet serves: {}",
                skipped.join("; ")
            )
        };
        return status_error(StatusCode::BAD_REQUEST, "BadRequest", message);
    }
    let mut json_body = HeaderMap::new();
    json_body.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let mut results = Vec::new();
    // The first refusal: its status, reason and words.
    let mut first_failure: Option<(StatusCode, String, String)> = None;
    for manifest in parsed.manifests {
        let namespace = manifest.namespace().to_string();
        let kind = manifest.kind.kind;
        let Some(name) = manifest.name().map(str::to_string) else {
            let message = format!("{}: metadata.name is required", manifest.origin);
            first_failure.get_or_insert((
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid".into(),
                message.clone(),
            ));
            results.push(json!({"kind": kind, "namespace": namespace, "outcome": "failed", "code": 422, "message": message}));
            continue;
        };
        let body = Bytes::from(serde_json::to_vec(&manifest.object).expect("a Value serialises"));
        let response = put_one(
            state.clone(),
            Served::Stored(manifest.kind),
            &namespace,
            &name,
            json_body.clone(),
            body,
        )
        .await;
        let code = response.status();
        let mut result = json!({
            "kind": kind,
            "apiVersion": manifest.kind.api_version(),
            "namespace": namespace,
            "name": name,
            "code": code.as_u16(),
        });
        result["outcome"] = match code {
            StatusCode::CREATED => json!("created"),
            StatusCode::OK => json!("configured"),
            _ => {
                let (reason, message) = refusal_of(response).await;
                let label = format!(
                    "{} {namespace}/{name}: {message}",
                    kind.to_ascii_lowercase()
                );
                first_failure.get_or_insert((code, reason, label.clone()));
                result["message"] = json!(label);
                json!("failed")
            }
        };
        results.push(result);
    }
    let body = json!({"results": results, "skipped": skipped});
    match first_failure {
        None => axum::Json(body).into_response(),
        // The first refusal's status and words, with every object's result beside them.
        Some((code, reason, message)) => {
            let mut status = status_body(code, &reason, message);
            status["results"] = body["results"].clone();
            status["skipped"] = body["skipped"].clone();
            (code, axum::Json(status)).into_response()
        }
    }
}

/// The `reason` and `message` of a Status body.
async fn refusal_of(response: Response) -> (String, String) {
    let bytes = axum::body::to_bytes(response.into_body(), MANIFEST_LIMIT)
        .await
        .unwrap_or_default();
    let status: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let text = |field: &str| {
        status
            .get(field)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    (
        text("reason").unwrap_or_else(|| "Failure".into()),
        text("message").unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()),
    )
}
