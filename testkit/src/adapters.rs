//! Resource helpers for the source and sink tests: they work for any served kind, found
//! through the kind table rather than a fixed list of paths.

use serde_json::Value;

use crate::{WAIT, api_request, wait_for};

/// PUTs any served kind through the resource API; returns status and body.
pub async fn put_object(base: &str, object: &Value) -> (u16, Value) {
    let kind = rivulet::resources::find_kind_by_name(
        object["apiVersion"].as_str(),
        object["kind"].as_str().expect("a kind"),
    )
    .expect("a served kind");
    let namespace = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let name = object["metadata"]["name"].as_str().expect("a name");
    let response = api_request(
        reqwest::Method::PUT,
        format!("{base}{}/{name}", kind.collection_path(namespace)),
    )
    .json(object)
    .send()
    .await
    .expect("the resource API answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub async fn apply(base: &str, object: &Value) {
    let (status, body) = put_object(base, object).await;
    assert!(
        status == 200 || status == 201,
        "apply answered {status}: {body}"
    );
}

pub async fn get_object(base: &str, api_version: &str, kind: &str, name: &str) -> Value {
    let kind = rivulet::resources::find_kind_by_name(Some(api_version), kind).expect("served");
    api_request(
        reqwest::Method::GET,
        format!("{base}{}/{name}", kind.collection_path("default")),
    )
    .send()
    .await
    .expect("the resource API answers")
    .json()
    .await
    .expect("JSON")
}

/// Waits until the object's `Ready` condition is `True`; returns the object.
pub async fn wait_ready(base: &str, api_version: &str, kind: &str, name: &str) -> Value {
    wait_for(&format!("{kind} {name} to be Ready"), WAIT, || async {
        let object = get_object(base, api_version, kind, name).await;
        let ready = object
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
        ready.then_some(object)
    })
    .await
}
