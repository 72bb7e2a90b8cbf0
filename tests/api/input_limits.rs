//! Input shapes are bounded and names follow Kubernetes' rules: over-long attribute names,
//! too many extensions and deep JSON get a 400 saying which bound, and every name, label
//! and annotation rule a 422 naming the field, never a 500.

use rivulet_testkit as support;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use bytes::Bytes;
use serde_json::{Value, json};
use support::{Subscriber, TestEvent, TestServer, trigger};

const NS: &str = "default";
const BROKER: &str = "default";

/// Posts `body` as `content_type` to the default broker; returns the status and the answer.
async fn post_as(
    server: &TestServer,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> (StatusCode, String) {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static(content_type));
    server.post_raw(NS, BROKER, headers, body.into()).await
}

/// `depth` nested arrays around a number.
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

fn structured_with_data(data: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"specversion":"1.0","id":"deep","source":"/t","type":"t","datacontenttype":"application/json","data":{data}}}"#
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_attribute_names_and_too_many_extensions_are_refused_in_every_mode() {
    let (server, sub) = TestServer::start_subscribed().await;

    // 64 characters is the limit: accepted, and delivered unchanged.
    let longest = "a".repeat(64);
    server
        .send(
            NS,
            BROKER,
            &TestEvent::new("longest", "t").attr(&longest, "v"),
        )
        .await;
    let got = sub.wait_for(1).await;
    assert_eq!(got[0].attr(&longest).as_deref(), Some("v"));

    // Binary mode up to 1,000 characters (a header name); JSON has no such bound of its own.
    for length in [65, 1_000, 10_000] {
        let name = "b".repeat(length);
        if length <= 1_000 {
            let (status, body) = server
                .post_raw(
                    NS,
                    BROKER,
                    TestEvent::new("long", "t").attr(&name, "v").headers(),
                    Bytes::new(),
                )
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "binary, {length}: {body}");
            assert!(body.contains(&format!("{length} characters")), "{body}");
            assert!(
                body.len() < 1000,
                "the message does not echo the whole name"
            );
        }

        let mut event = json!({"specversion": "1.0", "id": "long", "source": "/t", "type": "t"});
        event[&name] = json!("v");
        let (status, body) =
            post_as(&server, "application/cloudevents+json", event.to_string()).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "structured, {length}: {body}"
        );
        assert!(body.contains("at most 64"), "{body}");

        let batch = json!([{"specversion": "1.0", "id": "ok", "source": "/t", "type": "t"}, event]);
        let (status, body) = post_as(
            &server,
            "application/cloudevents-batch+json",
            batch.to_string(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "batch, {length}: {body}");
        assert!(body.contains("batch event 1"), "{body}");
    }

    let mut many = json!({"specversion": "1.0", "id": "many", "source": "/t", "type": "t"});
    for i in 0..65 {
        many[format!("ext{i}")] = json!("v");
    }
    let (status, body) = post_as(&server, "application/cloudevents+json", many.to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("65 extension attributes"), "{body}");
    assert_eq!(sub.count(), 1, "nothing refused was delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_json_is_refused_without_harm_and_moderate_nesting_passes() {
    let (server, sub) = TestServer::start_subscribed().await;

    // The event object is one level; its data may nest 63 more.
    let (status, body) = post_as(
        &server,
        "application/cloudevents+json",
        structured_with_data(&nested(63)),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let got = sub.wait_for(1).await;
    assert_eq!(
        got[0].body,
        Bytes::from(nested(63)),
        "data arrives byte for byte"
    );

    for depth in [64, 100_000] {
        let (status, body) = post_as(
            &server,
            "application/cloudevents+json",
            structured_with_data(&nested(depth)),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "structured, {depth}: {body}"
        );
        assert!(body.contains("more than 64 levels"), "{body}");

        let batch = format!(
            "[{}]",
            String::from_utf8(structured_with_data(&nested(depth)).to_vec()).unwrap()
        );
        let (status, body) = post_as(&server, "application/cloudevents-batch+json", batch).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "batch, {depth}: {body}");
        assert!(body.contains("levels"), "{body}");
    }

    // The resource API refuses a deep manifest with a message, and keeps serving.
    let deep_body = format!(
        r#"{{"apiVersion":"eventing.knative.dev/v1","kind":"Broker","metadata":{{"name":"deep","namespace":"default"}},"spec":{{"x":{}}}}}"#,
        nested(100_000)
    );
    let (status, answer) = put_deep_broker(&server, "application/json", deep_body).await;
    assert_eq!(status, 400);
    let message = answer["message"].as_str().unwrap_or_default();
    assert!(message.contains("more than 64 levels"), "{answer}");
    // YAML: its parser holds it to the same depth, in flow and block style.
    let block: String = (0..1_000)
        .map(|level| format!("{}k:\n", "  ".repeat(level)))
        .collect();
    for yaml in [
        format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: deep\nspec:\n  x: {}\n",
            nested(100_000)
        ),
        format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: deep\nx:\n{}",
            block
                .lines()
                .map(|l| format!("  {l}\n"))
                .collect::<String>()
        ),
    ] {
        let (status, answer) = put_deep_broker(&server, "application/yaml", yaml).await;
        assert_eq!(status, 400);
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert!(server.get("Broker", NS, BROKER).await.is_some());
    assert_eq!(sub.count(), 1, "nothing refused was delivered");
}

/// PUTs manifest text of `content_type` to the path of broker `deep`; returns the status and
/// the JSON answer.
async fn put_deep_broker(server: &TestServer, content_type: &str, text: String) -> (u16, Value) {
    let path = support::resource_path("Broker", NS, "deep");
    let response = support::api_request(reqwest::Method::PUT, format!("{}{path}", server.api))
        .header("content-type", content_type)
        .body(text)
        .send()
        .await
        .expect("the resource API answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// PUTs `object` and returns the status and the Status message.
async fn put(server: &TestServer, object: &Value) -> (u16, String) {
    let (status, body) = server.try_apply(object).await;
    (
        status,
        body["message"].as_str().unwrap_or_default().to_string(),
    )
}

fn object(kind: &str, api_version: &str, name: &str) -> Value {
    json!({"apiVersion": api_version, "kind": kind,
           "metadata": {"name": name, "namespace": NS}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_253_character_name_works_and_longer_names_are_refused_naming_the_field() {
    let server = TestServer::start_ready().await;
    let sub = Subscriber::start().await;

    // The longest name Kubernetes allows, for a broker (its embedded log file) and a
    // trigger on it (its stored object): created, Ready, and events flow.
    let long = format!("{}.{}", "a".repeat(126), "b".repeat(126));
    assert_eq!(long.len(), 253);
    server.create_broker(NS, &long, Value::Null).await;
    server
        .create_trigger(&trigger(NS, &long, &long, &sub.url()))
        .await;
    server
        .send(NS, &long, &TestEvent::new("far", "com.example.far"))
        .await;
    assert_eq!(sub.wait_for(1).await[0].id(), "far");
    assert!(server.get("Trigger", NS, &long).await.is_some());
    let cm = object("ConfigMap", "v1", &long);
    let (status, message) = put(&server, &cm).await;
    assert!(status == 200 || status == 201, "{status}: {message}");

    let too_long = "c".repeat(254);
    for kind in ["Broker", "Trigger", "ConfigMap"] {
        let api_version = match kind {
            "ConfigMap" => "v1",
            _ => "eventing.knative.dev/v1",
        };
        let (status, message) = put(&server, &object(kind, api_version, &too_long)).await;
        assert_eq!(status, 422, "{kind}: {message}");
        assert!(message.contains("metadata.name"), "{message}");
        assert!(message.contains("254 given"), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_labels_and_annotations_follow_kubernetes_rules() {
    let server = TestServer::start_ready().await;
    let broker = |name: &str| support::broker(NS, name);
    let with_meta = |field: &str, value: Value| {
        let mut b = broker("checked");
        b["metadata"][field] = value;
        b
    };
    let cases: Vec<(&str, Value, &[&str])> = vec![
        (
            "namespace over 63 characters",
            {
                let mut b = broker("checked");
                b["metadata"]["namespace"] = json!("n".repeat(64));
                b
            },
            &["metadata.namespace", "DNS label"],
        ),
        (
            "label key name over 63 characters",
            with_meta("labels", json!({"k".repeat(64): "v"})),
            &["metadata.labels", "label key"],
        ),
        (
            "label key prefix that is not a DNS subdomain",
            with_meta("labels", json!({"Example.COM/k": "v"})),
            &["metadata.labels", "label key"],
        ),
        (
            "label value over 63 characters",
            with_meta("labels", json!({"k": "v".repeat(64)})),
            &["metadata.labels[k]", "label value"],
        ),
        (
            "label value with a space",
            with_meta("labels", json!({"k": "a b"})),
            &["metadata.labels[k]", "label value"],
        ),
        (
            "annotation key that is not a qualified name",
            with_meta("annotations", json!({"not a key": "v"})),
            &["metadata.annotations", "label key"],
        ),
        (
            "annotations over 256 KiB together",
            with_meta(
                "annotations",
                json!({"a": "x".repeat(200 * 1024), "b": "y".repeat(100 * 1024)}),
            ),
            &["metadata.annotations", "256 KiB"],
        ),
        (
            "generateName that is not a name prefix",
            with_meta("generateName", json!("Bad_")),
            &["metadata.generateName", "DNS subdomain"],
        ),
        (
            "ContainerSource name over 63 characters (it becomes a label value)",
            {
                let mut s = object("ContainerSource", "sources.knative.dev/v1", &"s".repeat(64));
                s["spec"] = json!({"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}},
                                   "sink": {"uri": "http://127.0.0.1:9/"}});
                s
            },
            &["metadata.name", "DNS label"],
        ),
        (
            "trigger filter on an attribute name over 64 characters",
            {
                let mut t = trigger(NS, "checked", BROKER, "http://127.0.0.1:9/");
                t["spec"]["filters"] = json!([{"exact": {"a".repeat(65): "x"}}]);
                t
            },
            &["spec.filters[0].exact", "at most 64"],
        ),
        (
            "Kafka broker whose topic name would be over 249 characters",
            {
                let mut b = broker(&"k".repeat(240));
                b["metadata"]["annotations"] =
                    json!({"eventing.knative.dev/broker.class": "Kafka"});
                b["spec"]["config"] =
                    json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "kafka"});
                b
            },
            &["metadata.name", "Kafka topic"],
        ),
    ];
    let mut failures = Vec::new();
    for (what, object, words) in &cases {
        let (status, message) = put(&server, object).await;
        if status != 422 {
            failures.push(format!("{what}: expected 422, got {status}: {message}"));
        } else if let Some(missing) = words.iter().find(|w| !message.contains(*w)) {
            failures.push(format!("{what}: {message:?} does not mention {missing:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // What Kubernetes allows passes: prefixed keys, empty values, a generateName prefix.
    let mut fine = broker("labelled");
    fine["metadata"]["labels"] = json!({"example.com/team": "a-b_c.d", "empty": ""});
    fine["metadata"]["annotations"] = json!({"example.com/note": "any text at all"});
    fine["metadata"]["generateName"] = json!("labelled-");
    let (status, message) = put(&server, &fine).await;
    assert!(status == 200 || status == 201, "{status}: {message}");
}
