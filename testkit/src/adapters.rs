//! Resource helpers for the source and sink tests that name a kind by its apiVersion too
//! (a kind may be served in several versions); applying is the kit's one `apply`.

use rivulet_channels::Envelope;
use serde_json::Value;

use crate::{WAIT, api_request, wait_for};

pub use crate::{apply, put as put_object};

/// The CloudEvent a producer publishes straight to a broker the sources read (RabbitMQ,
/// NATS): id `binary-1`, type `com.example.binary`, source `/producer`, text data `hello`.
pub fn producer_event() -> Envelope {
    Envelope {
        attributes: vec![
            ("specversion".into(), "1.0".into()),
            ("id".into(), "binary-1".into()),
            ("source".into(), "/producer".into()),
            ("type".into(), "com.example.binary".into()),
            ("datacontenttype".into(), "text/plain".into()),
        ],
        data: Some("hello".into()),
        typed: Vec::new(),
    }
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

/// Applies an addressable object (a sink, a webhook source), waits until it is Ready and
/// gives its address.
pub async fn ready_address(base: &str, object: &Value) -> String {
    apply(base, object).await;
    let text = |pointer: &str| object.pointer(pointer).and_then(Value::as_str).unwrap();
    let ready = wait_ready(
        base,
        text("/apiVersion"),
        text("/kind"),
        text("/metadata/name"),
    )
    .await;
    ready
        .pointer("/status/address/url")
        .and_then(Value::as_str)
        .expect("a Ready object has an address")
        .to_owned()
}

/// Deletes an object in namespace `default` (not forced); returns the status code.
pub async fn delete_object(base: &str, api_version: &str, kind: &str, name: &str) -> u16 {
    let kind = rivulet::resources::find_kind_by_name(Some(api_version), kind).expect("served");
    let url = format!("{base}{}/{name}", kind.collection_path("default"));
    crate::status_of(api_request(reqwest::Method::DELETE, url)).await
}
