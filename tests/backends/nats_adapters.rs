//! NatsSource and NatsSink against the NATS server at `RIVULET_NATS_URL` (default
//! `nats://127.0.0.1:4222`): core NATS messages reach a trigger's subscriber through a broker;
//! JetStream messages are acknowledged only once the sink took them, so a sink that is down
//! for a while loses nothing; events posted to a NatsSink arrive on the subject per the
//! CloudEvents NATS binding, after JetStream's acknowledgement when asked for.

use rivulet_testkit as support;
use rivulet_testkit::adapters as adapters_support;
use rivulet_testkit::nats::{client, nats_url, unique};

use std::time::Duration;

use adapters_support::{apply, put_object, ready_address, wait_ready};
use futures::StreamExt;
use rivulet_channels::nats::async_nats::{self, jetstream};
use rivulet_channels::nats::binding;
use serde_json::{Value, json};
use support::sink_contract::{SinkTarget, sink_contract};
use support::source_contract::{SourceUpstream, source_contract};
use support::{TestServer, WAIT, http, wait_for};

const SOURCES: &str = "sources.rivulet.dev/v1alpha1";
const SINKS: &str = "sinks.rivulet.dev/v1alpha1";

/// A NatsSource `name` in namespace `default` reading subjects `{name}.>`, with the spec
/// fields of `more` besides.
fn nats_source(name: &str, more: Value) -> Value {
    let mut source = json!({
        "apiVersion": SOURCES,
        "kind": "NatsSource",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"url": nats_url(), "subject": format!("{name}.>")}
    });
    if let (Some(spec), Value::Object(more)) = (source["spec"].as_object_mut(), more) {
        spec.extend(more);
    }
    source
}

/// A NatsSink `name` in namespace `default` publishing on `subject` of the server at `url`,
/// waiting for JetStream's acknowledgement when `jetstream`.
fn nats_sink(name: &str, url: String, subject: &str, jetstream: bool) -> Value {
    json!({
        "apiVersion": SINKS,
        "kind": "NatsSink",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"url": url, "subject": subject, "jetstream": jetstream}
    })
}

/// Creates JetStream stream `stream` in memory, taking `subject`.
async fn memory_stream(js: &jetstream::Context, stream: &str, subject: String) {
    js.create_stream(jetstream::stream::Config {
        name: stream.to_owned(),
        subjects: vec![subject],
        storage: jetstream::stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .expect("stream created");
}

fn header<'a>(headers: &'a async_nats::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|value| value.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_messages_reach_a_trigger_through_a_broker() {
    let (server, recorder) = TestServer::start_with_recorder().await;
    let name = unique("core");
    support::apply(&server.api, &support::broker("default", &name)).await;
    support::apply_trigger_ready(&server.api, "default", &name, &name, &recorder.url).await;
    let source = nats_source(
        &name,
        json!({
            "ceOverrides": {"extensions": {"origin": "nats"}},
            "sink": {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": name}}
        }),
    );
    apply(&server.api, &source).await;
    let object = wait_ready(&server.api, SOURCES, "NatsSource", &name).await;
    assert_eq!(
        object
            .pointer("/status/ceAttributes/0/type")
            .and_then(Value::as_str),
        Some("dev.rivulet.nats.message")
    );
    let nats = client().await;
    // Core NATS keeps nothing for a subscriber that is not there yet: probe until it is.
    wait_for("the source to subscribe", WAIT, || {
        let (nats, subject) = (nats.clone(), format!("{name}.probe"));
        let recorder = recorder.clone();
        async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", "probe");
            nats.publish_with_headers(subject, headers, "{}".into())
                .await
                .unwrap();
            nats.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            (recorder.count() > 0).then_some(())
        }
    })
    .await;

    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "plain-1");
    nats.publish_with_headers(
        format!("{name}.orders.eu"),
        headers,
        r#"{"total":12345678901234567890123}"#.into(),
    )
    .await
    .unwrap();
    let envelope = adapters_support::producer_event();
    let encoded = binding::encode(&envelope).unwrap();
    nats.publish_with_headers(format!("{name}.x"), encoded.headers, encoded.payload)
        .await
        .unwrap();
    nats.flush().await.unwrap();

    let plain = recorder.wait_for_id("plain-1").await.event;
    assert_eq!(plain.ty, "dev.rivulet.nats.message");
    assert_eq!(
        plain.source,
        format!("/apis/v1/namespaces/default/natssources/{name}")
    );
    assert_eq!(
        plain.subject.as_deref(),
        Some(format!("{name}.orders.eu").as_str())
    );
    assert_eq!(plain.datacontenttype.as_deref(), Some("application/json"));
    assert_eq!(
        plain.data.as_deref(),
        Some(&br#"{"total":12345678901234567890123}"#[..]),
        "JSON data byte for byte"
    );
    assert_eq!(
        plain.attribute("origin").map(|v| v.into_owned()).as_deref(),
        Some("nats"),
        "ceOverrides applied"
    );
    let binary = recorder.wait_for_id("binary-1").await.event;
    assert_eq!(binary.ty, "com.example.binary");
    assert_eq!(binary.source, "/producer");
    assert_eq!(binary.datacontenttype.as_deref(), Some("text/plain"));
    assert_eq!(binary.data.as_deref(), Some(&b"hello"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_source_loses_nothing_while_the_sink_is_down() {
    let (server, recorder) = TestServer::start_with_recorder().await;
    let name = unique("js");
    let stream_name = name.to_ascii_uppercase().replace('-', "_");
    let js = jetstream::new(client().await);
    memory_stream(&js, &stream_name, format!("{name}.>")).await;

    // Published before the source exists: the durable consumer starts at the beginning.
    const COUNT: usize = 10;
    for n in 0..COUNT {
        js.publish(format!("{name}.orders"), format!(r#"{{"n":{n}}}"#).into())
            .await
            .unwrap()
            .await
            .expect("JetStream acknowledged");
    }
    recorder.set_status(503);
    let source = nats_source(
        &name,
        json!({
            "stream": stream_name,
            "consumer": "orders-reader",
            "delivery": {"retry": 0},
            "sink": {"uri": recorder.url}
        }),
    );
    apply(&server.api, &source).await;
    wait_ready(&server.api, SOURCES, "NatsSource", &name).await;
    wait_for("failed deliveries while the sink is down", WAIT, || {
        let attempts = recorder.attempts().len();
        async move { (attempts >= COUNT + 2).then_some(()) }
    })
    .await;
    assert_eq!(recorder.count(), 0, "nothing was accepted yet");
    recorder.set_status(202);

    let expected: Vec<String> = (1..=COUNT)
        .map(|seq| format!("{stream_name}-{seq}"))
        .collect();
    for id in &expected {
        let event = recorder.wait_for_id(id).await.event;
        assert_eq!(event.ty, "dev.rivulet.nats.message");
    }
    let mut stream = js.get_stream(&stream_name).await.unwrap();
    let stream_for_wait = stream.clone();
    wait_for("every message acknowledged", WAIT, || {
        let stream = stream_for_wait.clone();
        async move {
            let info = stream.consumer_info("orders-reader").await.ok()?;
            (info.num_ack_pending == 0 && info.num_pending == 0).then_some(())
        }
    })
    .await;
    let mut delivered: Vec<String> = recorder.events().into_iter().map(|e| e.id).collect();
    delivered.sort();
    delivered.dedup();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(delivered, expected_sorted, "every message, none extra");
    assert_eq!(stream.info().await.unwrap().state.messages, COUNT as u64);
    js.delete_stream(&stream_name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_publishes_to_jetstream_and_to_core_nats() {
    let server = TestServer::start().await;
    let name = unique("sink");
    let stream_name = name.to_ascii_uppercase().replace('-', "_");
    let nats = client().await;
    let js = jetstream::new(nats.clone());
    memory_stream(&js, &stream_name, format!("{name}.js")).await;
    // Applies sink `{name}-{suffix}` and gives its address once Ready.
    let ready_sink = |suffix: &str, url: String, subject: String, jetstream: bool| {
        let sink = nats_sink(&format!("{name}-{suffix}"), url, &subject, jetstream);
        let api = server.api.clone();
        async move { ready_address(&api, &sink).await }
    };
    let post = |url: String, id: &'static str| async move {
        let request = http()
            .post(url)
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-source", "/sink-test")
            .header("ce-type", "com.example.paid")
            .header("ce-tenant", "acme corp")
            .header("content-type", "application/json")
            .body(r#"{"total":12345678901234567890123}"#);
        support::status_of(request).await
    };

    // JetStream: 202 means the stream has it.
    let js_url = ready_sink("js", nats_url(), format!("{name}.js"), true).await;
    assert_eq!(post(js_url, "js-1").await, 202);
    let stored = js
        .get_stream(&stream_name)
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&format!("{name}.js"))
        .await
        .expect("the event is in the stream");
    assert_eq!(header(&stored.headers, "ce-id"), Some("js-1"));
    assert_eq!(header(&stored.headers, "ce-type"), Some("com.example.paid"));
    assert_eq!(header(&stored.headers, "ce-source"), Some("/sink-test"));
    assert_eq!(header(&stored.headers, "ce-tenant"), Some("acme%20corp"));
    assert_eq!(
        header(&stored.headers, "content-type"),
        Some("application/json")
    );
    assert_eq!(&stored.payload[..], br#"{"total":12345678901234567890123}"#);
    let decoded = binding::decode(Some(&stored.headers), &stored.payload).unwrap();
    assert!(
        decoded
            .attributes
            .contains(&("tenant".into(), "acme corp".into()))
    );

    // JetStream on a subject no stream takes: refused, not lost silently.
    let nowhere = ready_sink("nostream", nats_url(), format!("{name}.nowhere"), true).await;
    assert_eq!(post(nowhere, "nowhere-1").await, 502);

    // Core NATS: a subscriber there now gets it.
    let mut subscriber = nats.subscribe(format!("{name}.core")).await.unwrap();
    nats.flush().await.unwrap();
    let core_url = ready_sink("core", nats_url(), format!("{name}.core"), false).await;
    assert_eq!(post(core_url, "core-1").await, 202);
    let message = tokio::time::timeout(Duration::from_secs(10), subscriber.next())
        .await
        .expect("a message on the core subject")
        .expect("the subscription is open");
    let headers = message.headers.expect("binding headers");
    assert_eq!(header(&headers, "ce-id"), Some("core-1"));
    assert_eq!(header(&headers, "ce-specversion"), Some("1.0"));
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert_eq!(
        &message.payload[..],
        br#"{"total":12345678901234567890123}"#
    );

    // NATS unreachable: 503.
    let down_url = ready_sink(
        "down",
        "nats://127.0.0.1:1".into(),
        format!("{name}.core"),
        false,
    )
    .await;
    assert_eq!(post(down_url, "down-1").await, 503);
    js.delete_stream(&stream_name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_refused_with_the_field_named() {
    let server = TestServer::start().await;
    let cases = [
        (
            json!({
                "apiVersion": SOURCES, "kind": "NatsSource",
                "metadata": {"name": "no-subject", "namespace": "default"},
                "spec": {"subject": "", "sink": {"uri": "http://127.0.0.1:9/"}}
            }),
            "spec.subject",
        ),
        (
            json!({
                "apiVersion": SOURCES, "kind": "NatsSource",
                "metadata": {"name": "consumer-only", "namespace": "default"},
                "spec": {"subject": "a", "consumer": "c", "sink": {"uri": "http://127.0.0.1:9/"}}
            }),
            "spec.consumer",
        ),
        (
            json!({
                "apiVersion": SOURCES, "kind": "NatsSource",
                "metadata": {"name": "bad-url", "namespace": "default"},
                "spec": {"url": "http://h:4222", "subject": "a", "sink": {"uri": "http://127.0.0.1:9/"}}
            }),
            "spec.url",
        ),
        (
            json!({
                "apiVersion": SINKS, "kind": "NatsSink",
                "metadata": {"name": "wildcard", "namespace": "default"},
                "spec": {"subject": "orders.>"}
            }),
            "spec.subject",
        ),
    ];
    for (object, field) in cases {
        let (status, body) = put_object(&server.api, &object).await;
        assert_eq!(status, 422, "{object}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{field} named in {body}");
    }
}

/// NatsSink on core NATS, read by a subscriber of its subject.
struct NatsTarget {
    subject: String,
    subscriber: async_nats::Subscriber,
}

impl SinkTarget for NatsTarget {
    fn sink(&self, name: &str) -> Value {
        nats_sink(name, nats_url(), &self.subject, false)
    }

    fn unreachable_sink(&self, name: &str) -> Value {
        let closed = format!("nats://127.0.0.1:{}", support::free_port());
        nats_sink(name, closed, &self.subject, false)
    }

    async fn next(&mut self) -> (String, Vec<u8>) {
        let message = tokio::time::timeout(WAIT, self.subscriber.next())
            .await
            .expect("a message on the subject")
            .expect("the subscription is open");
        let id = message
            .headers
            .as_ref()
            .and_then(|h| header(h, "ce-id"))
            .expect("a ce-id header")
            .to_owned();
        (id, message.payload.to_vec())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_sink_meets_the_sink_contract() {
    let server = TestServer::start().await;
    let subject = format!("{}.contract", unique("sink"));
    let nats = client().await;
    let subscriber = nats.subscribe(subject.clone()).await.unwrap();
    nats.flush().await.unwrap();
    sink_contract(
        &server.api,
        &mut NatsTarget {
            subject,
            subscriber,
        },
    )
    .await;
}

/// NatsSource on core NATS: a message published on its subject.
struct NatsSubject {
    nats: async_nats::Client,
}

impl SourceUpstream for NatsSubject {
    fn source(&self, name: &str) -> Value {
        nats_source(name, json!({}))
    }

    async fn produce(&mut self, name: &str, _source: &Value) {
        // Core NATS keeps nothing for late subscribers; a Ready source is subscribed already.
        self.nats
            .publish(format!("{name}.created"), r#"{"n":1}"#.into())
            .await
            .unwrap();
        self.nats.flush().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_source_meets_the_source_contract() {
    let server = TestServer::start().await;
    let nats = client().await;
    source_contract(&server.api, &mut NatsSubject { nats }).await;
}
