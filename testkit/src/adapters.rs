//! Resource helpers for the source and sink tests that name a kind by its apiVersion too
//! (a kind may be served in several versions); applying is the kit's one `apply`.

use serde_json::Value;

use crate::{WAIT, api_request, wait_for};

pub use crate::{apply, put as put_object};

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
