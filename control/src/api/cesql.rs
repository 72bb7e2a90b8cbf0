//! `GET /cesql/check?expression=`: whether a CESQL expression parses, and if not, why, in the
//! words a trigger's or a tap's refusal would use. For editors that check as the user types.

use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::status_error;

/// Longer expressions are refused unparsed.
pub const MAX_EXPRESSION: usize = 16 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CheckParams {
    expression: String,
}

pub(super) async fn check(
    params: Result<Query<CheckParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(CheckParams { expression })) = params else {
        return status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "give the expression to check as ?expression=",
        );
    };
    if expression.len() > MAX_EXPRESSION {
        return axum::Json(json!({
            "valid": false,
            "error": format!("the expression is {} bytes; at most {MAX_EXPRESSION} are taken", expression.len()),
        }))
        .into_response();
    }
    match rivulet_core::filter::compile_cesql(&expression) {
        Ok(_) => axum::Json(json!({"valid": true})).into_response(),
        Err(error) => axum::Json(json!({"valid": false, "error": error})).into_response(),
    }
}
