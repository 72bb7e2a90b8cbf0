//! The contract every source kind meets, run against each kind's real upstream (a schedule,
//! HTTP requests, RabbitMQ, NATS, Kafka): the fields every source shares (`spec.sink`,
//! `spec.ceOverrides`) mean the same in each. A source with a resolvable sink is Ready and
//! publishes the sink's URI in `status.sinkUri`; what comes from upstream reaches the sink as
//! CloudEvents carrying the overrides; a source whose sink names a missing object is not
//! Ready, with `SinkProvided` False and reason `SinkNotFound`.

use std::future::Future;

use serde_json::{Value, json};

use crate::adapters::{apply, get_object, wait_ready};
use crate::{Recorder, WAIT, condition, ready_condition, unique, wait_for};

/// A source kind and how to make its upstream produce.
pub trait SourceUpstream {
    /// The source `name` (in namespace `default`) reading this upstream, without `sink` or
    /// `ceOverrides`: the contract sets those.
    fn source(&self, name: &str) -> Value;
    /// Makes the upstream produce one message (a request, a publish, a record) for the source
    /// `name`, which is Ready. A source that produces by itself (a schedule) does nothing.
    fn produce(&mut self, name: &str, source: &Value) -> impl Future<Output = ()>;
}

/// Runs the contract for `upstream` against the resource API at `api`.
pub async fn source_contract(api: &str, upstream: &mut impl SourceUpstream) {
    let recorder = Recorder::start().await;
    let name = unique("contract");
    let mut source = upstream.source(&name);
    source["spec"]["sink"] = json!({"uri": recorder.url});
    source["spec"]["ceOverrides"] = json!({"extensions": {"contract": "kept"}});
    apply(api, &source).await;
    let text = |object: &Value, pointer: &str| {
        object
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (api_version, kind) = (text(&source, "/apiVersion"), text(&source, "/kind"));
    let ready = wait_ready(api, &api_version, &kind, &name).await;
    assert_eq!(
        text(&ready, "/status/sinkUri").trim_end_matches('/'),
        recorder.url.trim_end_matches('/'),
        "status.sinkUri is the resolved sink: {ready}"
    );

    upstream.produce(&name, &ready).await;
    let event = wait_for(&format!("an event from the {kind}"), WAIT, || {
        let first = recorder.events().into_iter().next();
        async move { first }
    })
    .await;
    assert_eq!(
        event
            .attribute("contract")
            .map(|v| v.into_owned())
            .as_deref(),
        Some("kept"),
        "ceOverrides are added to what the source sends: {event:?}"
    );

    let orphan = unique("orphan");
    let mut missing = upstream.source(&orphan);
    missing["spec"]["sink"] = json!({"ref": {"apiVersion": "eventing.knative.dev/v1",
                                             "kind": "Broker", "name": unique("missing")}});
    apply(api, &missing).await;
    let sink_provided = wait_for("SinkProvided to say the sink is missing", WAIT, || async {
        let object = get_object(api, &api_version, &kind, &orphan).await;
        condition(&object, "SinkProvided").filter(|c| c["status"] == "False")
    })
    .await;
    assert_eq!(sink_provided["reason"], "SinkNotFound", "{sink_provided}");
    let object = get_object(api, &api_version, &kind, &orphan).await;
    let ready = ready_condition(&object).expect("a Ready condition");
    assert_eq!(ready["status"], "False", "{object}");
}
