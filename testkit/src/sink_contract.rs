//! The contract every sink kind meets, run against each kind's real target (an HTTP
//! receiver, RabbitMQ, NATS, Kafka): a Ready sink publishes its address; an event posted in
//! binary or structured mode is answered `202` only once its target has it, with id and data
//! intact; a request that is not a CloudEvent gets `400` and a non-POST `405`; a sink whose
//! target cannot be reached answers `503`, so the sender keeps the event.

use std::future::Future;

use serde_json::{Value, json};

use crate::adapters::ready_address;
use crate::{http, post_binary_to, unique};

/// A sink kind and where what it hands on can be read back.
pub trait SinkTarget {
    /// The sink `name` (in namespace `default`), handing events to what [`SinkTarget::next`]
    /// reads.
    fn sink(&self, name: &str) -> Value;
    /// The same kind, handing events to a target that cannot be reached.
    fn unreachable_sink(&self, name: &str) -> Value;
    /// The next event the target got, as its id and data; panics when none comes in time.
    fn next(&mut self) -> impl Future<Output = (String, Vec<u8>)>;
}

/// Runs the contract for `target` against the resource API at `api`.
pub async fn sink_contract(api: &str, target: &mut impl SinkTarget) {
    let url = ready_address(api, &target.sink(&unique("contract"))).await;

    let id = unique("binary");
    let answer = post_binary_to(&url, &id, "test.contract", r#"{"n":1}"#).await;
    assert_eq!(answer, 202, "a binary event is accepted");
    assert_eq!(target.next().await, (id, br#"{"n":1}"#.to_vec()));

    let id = unique("structured");
    let answer = http()
        .post(&url)
        .header("content-type", "application/cloudevents+json")
        .body(
            json!({"specversion": "1.0", "id": id, "source": "/contract",
                   "type": "test.contract", "datacontenttype": "application/json",
                   "data": {"n": 2}})
            .to_string(),
        )
        .send()
        .await
        .expect("the sink answers");
    assert_eq!(
        answer.status().as_u16(),
        202,
        "a structured event is accepted"
    );
    assert_eq!(target.next().await, (id, br#"{"n":2}"#.to_vec()));

    let refused = http()
        .post(&url)
        .header("ce-specversion", "1.0")
        .header("ce-source", "/contract")
        .header("ce-type", "test.contract")
        .body("{}")
        .send()
        .await
        .expect("the sink answers");
    assert_eq!(refused.status().as_u16(), 400, "an event without an id");
    let message = refused.text().await.unwrap_or_default();
    assert!(
        message.contains("id"),
        "the answer names what is wrong: {message}"
    );

    let get = http().get(&url).send().await.expect("the sink answers");
    assert_eq!(get.status().as_u16(), 405, "only POST takes events");

    let url = ready_address(api, &target.unreachable_sink(&unique("unreachable"))).await;
    let unavailable = post_binary_to(&url, &unique("lost"), "test.contract", "{}").await;
    assert_eq!(
        unavailable, 503,
        "a target that cannot be reached leaves the event with its sender"
    );
}
