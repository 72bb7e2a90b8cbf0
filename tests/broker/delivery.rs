//! End-to-end tests of delivery semantics over real HTTP: filters, content modes, retries,
//! backoff, dead-letter sinks, replies and their TTL, isolation between triggers, ordering and
//! parallelism, broker references, live changes and metrics.
//!
//! Every test starts its own server with the default broker `default/default` and its own
//! recording subscriber. Waits are "until a condition holds" with a deadline; to show that
//! something did *not* happen, a test first waits for a fact that can only hold once it would
//! have happened (a final delivery outcome in `/metrics`, or a later event through an ordered
//! trigger).

use rivulet_testkit as support;

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use base64::Engine as _;
use bytes::Bytes;
use rivulet::event::HttpMode;
use serde_json::{Value, json};
use support::{
    Api, ChildServer, Recorded, Reply, Subscriber, TestEvent, TestServer, always, per_attempt,
    script, trigger, with_annotation,
};

const NS: &str = "default";
const BROKER: &str = "default";
const DELIVERIES: &str = "rivulet_trigger_deliveries_total";
const REPLIES: &str = "rivulet_trigger_replies_total";
const ORDER: &str = "kafka.eventing.knative.dev/delivery.order";

/// Marks a trigger manifest as ordered: one delivery at a time, in channel order.
fn ordered(manifest: Value) -> Value {
    with_annotation(manifest, ORDER, "ordered")
}

fn with_spec(mut manifest: Value, field: &str, value: Value) -> Value {
    manifest["spec"][field] = value;
    manifest
}

fn ids(requests: &[Recorded]) -> Vec<String> {
    requests.iter().map(Recorded::id).collect()
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

// ---------------------------------------------------------------------------------------
// Filters
// ---------------------------------------------------------------------------------------

/// Every filter dialect, legacy and subscriptions API, end to end. Each trigger is ordered,
/// so once the trigger's own sentinel event (sent last) arrives, every earlier event has been
/// filtered and, if it matched, delivered: the set received is then final.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_filter_dialect_delivers_exactly_the_matching_events() {
    let server = TestServer::start_ready().await;
    let sub = Subscriber::start().await;

    let events = [
        TestEvent::new("e1", "com.example.order.created")
            .source("/shop/eu")
            .attr("region", "eu"),
        TestEvent::new("e2", "com.example.order.deleted").source("/shop/us"),
        TestEvent::new("e3", "com.other.created")
            .source("/bank/eu")
            .attr("region", "us"),
        TestEvent::new("e4", "com.example.order.created")
            .source("/bank/us")
            .attr("subject", "vip"),
        TestEvent::new("e5", "org.misc").source("/misc"),
    ];
    // (trigger name, filter fields of the spec, ids expected)
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "legacy-exact",
            // An empty value means "the attribute must exist".
            json!({"filter": {"attributes": {"type": "com.example.order.created", "region": ""}}}),
            vec!["e1"],
        ),
        (
            "legacy-exists",
            json!({"filter": {"attributes": {"region": ""}}}),
            vec!["e1", "e3"],
        ),
        (
            "exact",
            json!({"filters": [{"exact": {"source": "/shop/us"}}]}),
            vec!["e2"],
        ),
        (
            "prefix",
            json!({"filters": [{"prefix": {"type": "com.example."}}]}),
            vec!["e1", "e2", "e4"],
        ),
        (
            "suffix",
            json!({"filters": [{"suffix": {"type": ".created"}}]}),
            vec!["e1", "e3", "e4"],
        ),
        (
            "all",
            json!({"filters": [{"all": [
                {"prefix": {"type": "com.example."}},
                {"suffix": {"source": "/us"}}
            ]}]}),
            vec!["e2", "e4"],
        ),
        (
            "any",
            json!({"filters": [{"any": [
                {"exact": {"region": "us"}},
                {"exact": {"subject": "vip"}}
            ]}]}),
            vec!["e3", "e4"],
        ),
        (
            "not",
            json!({"filters": [{"not": {"prefix": {"type": "com.example."}}}]}),
            vec!["e3", "e5"],
        ),
        (
            "cesql",
            json!({"filters": [{"cesql": "source LIKE '/bank/%' AND type LIKE '%.created'"}]}),
            vec!["e3", "e4"],
        ),
        (
            "list-is-and",
            // Several entries in `filters`: all must match.
            json!({"filters": [
                {"prefix": {"type": "com.example."}},
                {"exact": {"region": "eu"}}
            ]}),
            vec!["e1"],
        ),
    ];

    for (name, filter, _) in &cases {
        let mut manifest = ordered(trigger(NS, name, BROKER, &sub.url_at(name)));
        for (field, value) in filter.as_object().unwrap() {
            manifest["spec"][field] = value.clone();
        }
        server.create_trigger(&manifest).await;
    }
    for event in &events {
        server.send(NS, BROKER, event).await;
    }
    // A sentinel per trigger: a copy of an event it matches, under a new id, sent last.
    for (name, _, expected) in &cases {
        let model = events.iter().find(|e| e.id == expected[0]).unwrap();
        let mut sentinel = model.clone().attr("id", &format!("sentinel-{name}"));
        sentinel.id = format!("sentinel-{name}");
        server.send(NS, BROKER, &sentinel).await;
    }

    for (name, _, expected) in &cases {
        let path = format!("/{name}");
        let sentinel = format!("sentinel-{name}");
        sub.wait_for_matching(1, |r| r.path == path && r.id() == sentinel)
            .await;
        let received: Vec<String> = ids(&sub.requests_at(&path))
            .into_iter()
            .filter(|id| !id.starts_with("sentinel-"))
            .collect();
        let expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            received, expected,
            "trigger {name} must receive exactly the matching events, in order"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Content
// ---------------------------------------------------------------------------------------

/// Binary mode: every `ce-` header and the Content-Type reach the subscriber as sent, byte
/// for byte, and so does the body; the broker adds only its own extensions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_mode_attributes_and_data_arrive_unchanged() {
    let server = TestServer::start_ready().await;
    let sub = Subscriber::start().await;
    server
        .create_trigger(&ordered(trigger(NS, "verbatim", BROKER, &sub.url())))
        .await;

    let json_body =
        Bytes::from_static(br#"{ "big": 12345678901234567890123, "list":[1,2.50,"x"] }"#);
    let binary_body: Vec<u8> = (0..=255u8).collect();
    let sent = [
        TestEvent::new("attrs-1", "com.example.attrs")
            .source("/rivulet/tests/attrs")
            .attr("subject", "order%2042")
            .attr("time", "2024-05-01T12:34:56.789+02:00")
            .attr("dataschema", "https://example.com/schema.json")
            .attr("myext", "caf%C3%A9%20au%20lait")
            .attr("count", "42")
            .data("application/json", json_body.clone()),
        TestEvent::new("attrs-2", "com.example.legacy")
            .attr("specversion", "0.3")
            .attr("schemaurl", "https://example.com/old.json")
            .data("text/plain; charset=utf-8", "plain text"),
        TestEvent::new("attrs-3", "com.example.bytes")
            .data("application/octet-stream", binary_body.clone()),
    ];
    for event in &sent {
        server.send(NS, BROKER, event).await;
    }
    let received = sub.wait_for(sent.len()).await;
    assert_eq!(ids(&received), ["attrs-1", "attrs-2", "attrs-3"]);

    for (event, got) in sent.iter().zip(&received) {
        for (name, value) in &event.header_pairs {
            assert_eq!(
                got.header(name),
                Some(value.as_str()),
                "event {}: header {name} must arrive unchanged",
                event.id
            );
        }
        assert_eq!(
            got.body, event.body,
            "event {}: data must arrive byte for byte",
            event.id
        );
        // Only the broker's own extensions are added (the TTL less this delivery's hop).
        let mut added: Vec<&str> = got
            .headers
            .keys()
            .map(|k| k.as_str())
            .filter(|k| k.starts_with("ce-"))
            .filter(|k| !event.header_pairs.iter().any(|(n, _)| n == k))
            .collect();
        added.sort();
        assert_eq!(
            added,
            ["ce-knativearrivaltime", "ce-knativebrokerttl"],
            "event {}",
            event.id
        );
        assert_eq!(got.header("ce-knativebrokerttl"), Some("254"));
    }
    assert_eq!(
        received[1].header("ce-specversion"),
        Some("0.3"),
        "0.3 is never upgraded"
    );
    assert_eq!(received[0].attr("myext").as_deref(), Some("café au lait"));
}

/// `delivery.format: json` delivers in structured mode; JSON data keeps its exact text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_format_delivers_structured_mode_with_data_unchanged() {
    let server = TestServer::start_ready().await;
    let sub = Subscriber::start().await;
    let manifest = with_spec(
        trigger(NS, "structured", BROKER, &sub.url()),
        "delivery",
        json!({"format": "json"}),
    );
    server.create_trigger(&manifest).await;

    let data = Bytes::from_static(br#"{"big":12345678901234567890123,"nested":{"a":[1,2]}}"#);
    server
        .send(
            NS,
            BROKER,
            &TestEvent::new("structured-1", "com.example.structured")
                .attr("subject", "order%2042")
                .attr("myext", "hello%20world")
                .data("application/json", data.clone()),
        )
        .await;
    let got = sub.wait_for(1).await.remove(0);
    assert_eq!(got.mode, Some(HttpMode::Structured));
    assert!(
        got.header("content-type")
            .is_some_and(|ct| ct.starts_with("application/cloudevents+json")),
        "content type {:?}",
        got.header("content-type")
    );
    assert!(
        got.header("ce-id").is_none(),
        "no binary-mode headers in structured mode"
    );
    let body = String::from_utf8(got.body.to_vec()).expect("structured JSON is UTF-8");
    assert!(
        body.contains("12345678901234567890123"),
        "the big integer must keep its digits: {body}"
    );
    let event = got.event();
    assert_eq!(event.data.as_ref(), Some(&data));
    assert_eq!(event.id, "structured-1");
    assert_eq!(event.subject.as_deref(), Some("order 42"));
    assert_eq!(got.attr("myext").as_deref(), Some("hello world"));
    assert_eq!(event.datacontenttype.as_deref(), Some("application/json"));
}

// ---------------------------------------------------------------------------------------
// Retries and backoff
// ---------------------------------------------------------------------------------------

fn retrying(name: &str, uri: &str, delivery: Value) -> Value {
    with_spec(trigger(NS, name, BROKER, uri), "delivery", delivery)
}

/// 503, 503, 200: the event is delivered once, on the third attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_errors_are_retried_until_delivered() {
    let server = TestServer::start_ready().await;
    let sub = Subscriber::with_script(per_attempt(
        vec![Reply::status(503), Reply::status(503)],
        Reply::ok(),
    ))
    .await;
    server
        .create_trigger(&retrying(
            "flaky",
            &sub.url(),
            json!({"retry": 5, "backoffPolicy": "linear", "backoffDelay": "PT0.05S"}),
        ))
        .await;
    server
        .send(NS, BROKER, &TestEvent::new("r-1", "com.example"))
        .await;
    server.wait_deliveries_final(NS, "flaky", 1).await;

    let requests = sub.requests();
    assert_eq!(
        ids(&requests),
        ["r-1", "r-1", "r-1"],
        "three attempts, then success"
    );
    assert_eq!(
        requests.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(
        server.delivery_outcomes(NS, "flaky", "delivered").await,
        1.0
    );
    assert_eq!(
        server
            .metric(
                "rivulet_trigger_delivery_retries_total",
                &[("trigger", "flaky")]
            )
            .await,
        2.0
    );
}

/// A 400 is final: no retry even with retries left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_not_retried() {
    let server = TestServer::start_ready().await;
    let sub = Subscriber::with_script(always(Reply::status(400))).await;
    server
        .create_trigger(&retrying(
            "picky",
            &sub.url(),
            json!({"retry": 3, "backoffDelay": "PT0.05S"}),
        ))
        .await;
    server
        .send(NS, BROKER, &TestEvent::new("bad-1", "com.example"))
        .await;
    server.wait_deliveries_final(NS, "picky", 1).await;
    assert_eq!(sub.count(), 1, "a 400 must not be retried");
    assert_eq!(server.delivery_outcomes(NS, "picky", "failed").await, 1.0);
}

/// `retry: 2` means exactly three attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_count_bounds_the_attempts() {
    let server = TestServer::start_ready().await;
    let sub = Subscriber::with_script(always(Reply::status(500))).await;
    server
        .create_trigger(&retrying(
            "broken",
            &sub.url(),
            json!({"retry": 2, "backoffDelay": "PT0.05S"}),
        ))
        .await;
    server
        .send(NS, BROKER, &TestEvent::new("x-1", "com.example"))
        .await;
    server.wait_deliveries_final(NS, "broken", 1).await;
    let requests = sub.requests();
    assert_eq!(requests.len(), 3, "1 + retry attempts");
    assert_eq!(server.delivery_outcomes(NS, "broken", "failed").await, 1.0);
}

/// Linear and exponential backoff with the same base delay: within each trigger the attempts
/// come one after the other, and the exponential trigger, whose waits grow faster
/// (0.2+0.4+0.8 s against 0.1+0.2+0.3 s), makes its last attempt after the linear one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linear_and_exponential_backoff_space_the_attempts() {
    let server = TestServer::start_ready().await;
    let sub = Subscriber::with_script(always(Reply::status(500))).await;
    for policy in ["linear", "exponential"] {
        server
            .create_trigger(&retrying(
                policy,
                &sub.url_at(policy),
                json!({"retry": 3, "backoffPolicy": policy, "backoffDelay": "PT0.1S"}),
            ))
            .await;
    }
    server
        .send(NS, BROKER, &TestEvent::new("b-1", "com.example"))
        .await;
    server.wait_deliveries_final(NS, "linear", 1).await;
    server.wait_deliveries_final(NS, "exponential", 1).await;

    let linear = sub.requests_at("/linear");
    let exponential = sub.requests_at("/exponential");
    for (name, attempts) in [("linear", &linear), ("exponential", &exponential)] {
        assert_eq!(attempts.len(), 4, "{name}: 1 + 3 retries");
        for pair in attempts.windows(2) {
            assert!(
                pair[1].received_at > pair[0].received_at,
                "{name}: attempt {} must come after attempt {}",
                pair[1].attempt,
                pair[0].attempt
            );
        }
    }
    assert!(
        exponential[3].received_at > linear[3].received_at,
        "the exponential backoff waits longer in total than the linear one"
    );
}

/// A subscriber answering 429 with `Retry-After: 1` gets the event again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let server = TestServer::start_ready().await;
    let sub = Subscriber::with_script(per_attempt(
        vec![Reply::status(429).header("retry-after", "1")],
        Reply::ok(),
    ))
    .await;
    server
        .create_trigger(&retrying(
            "throttled",
            &sub.url(),
            json!({"retry": 1, "backoffDelay": "PT0.05S"}),
        ))
        .await;
    server
        .send(NS, BROKER, &TestEvent::new("ra-1", "com.example"))
        .await;
    server.wait_deliveries_final(NS, "throttled", 1).await;
    assert_eq!(
        server.delivery_outcomes(NS, "throttled", "delivered").await,
        1.0
    );
    assert_eq!(sub.count(), 2);
}

/// A subscriber that does not answer within `delivery.timeout` counts as failed: retried,
/// and dead-lettered when attempts run out (without `knativeerrorcode`: there was no answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscribers_time_out_and_are_retried_or_dead_lettered() {
    let server = TestServer::start_ready().await;
    let sub = Subscriber::with_script(script(|r: &Recorded| match (r.path.as_str(), r.attempt) {
        ("/dls", _) => Reply::ok(),
        ("/once", 1) => Reply::hang(),
        ("/once", _) => Reply::ok(),
        _ => Reply::hang(),
    }))
    .await;
    server
        .create_trigger(&retrying(
            "slow-once",
            &sub.url_at("once"),
            json!({"retry": 1, "backoffDelay": "PT0.05S", "timeout": "PT0.5S"}),
        ))
        .await;
    server
        .create_trigger(&retrying(
            "slow-always",
            &sub.url_at("always"),
            json!({
                "retry": 1, "backoffDelay": "PT0.05S", "timeout": "PT0.5S",
                "deadLetterSink": {"uri": sub.url_at("dls")}
            }),
        ))
        .await;
    server
        .send(NS, BROKER, &TestEvent::new("t-1", "com.example"))
        .await;
    server.wait_deliveries_final(NS, "slow-once", 1).await;
    server.wait_deliveries_final(NS, "slow-always", 1).await;

    assert_eq!(
        server.delivery_outcomes(NS, "slow-once", "delivered").await,
        1.0
    );
    assert_eq!(sub.requests_at("/once").len(), 2);
    assert_eq!(
        server
            .delivery_outcomes(NS, "slow-always", "dead_lettered")
            .await,
        1.0
    );
    assert_eq!(sub.requests_at("/always").len(), 2);
    let dead = sub.requests_at("/dls");
    assert_eq!(ids(&dead), ["t-1"]);
    assert_eq!(dead[0].attr("knativeerrordest"), Some(sub.url_at("always")));
    assert_eq!(
        dead[0].attr("knativeerrorcode"),
        None,
        "no response, no status code"
    );
}

// ---------------------------------------------------------------------------------------
// Dead-letter sink
// ---------------------------------------------------------------------------------------

/// After the last attempt the event goes to the dead-letter sink with the error extensions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_events_reach_the_dead_letter_sink_with_error_extensions() {
    let server = TestServer::start_ready().await;
    let error_body = "boom: warehouse offline";
    let sub = Subscriber::with_script(script(move |r: &Recorded| {
        if r.path == "/dls" {
            Reply::ok()
        } else {
            Reply::status(500).body(error_body)
        }
    }))
    .await;
    server
        .create_trigger(&retrying(
            "doomed",
            &sub.url_at("sub"),
            json!({
                "retry": 1, "backoffDelay": "PT0.05S",
                "deadLetterSink": {"uri": sub.url_at("dls")}
            }),
        ))
        .await;
    let data = Bytes::from_static(br#"{"order":7}"#);
    server
        .send(
            NS,
            BROKER,
            &TestEvent::new("d-1", "com.example.order")
                .attr("subject", "seven")
                .data("application/json", data.clone()),
        )
        .await;
    let dead = sub
        .wait_for_matching(1, |r| r.path == "/dls")
        .await
        .remove(0);
    server.wait_deliveries_final(NS, "doomed", 1).await;

    assert_eq!(
        sub.requests_at("/sub").len(),
        2,
        "dead-lettered only after both attempts"
    );
    assert_eq!(dead.attr("knativeerrordest"), Some(sub.url_at("sub")));
    assert_eq!(dead.attr("knativeerrorcode").as_deref(), Some("500"));
    // The dead-letter delivery is a hop like any other: the TTL the broker held, less one.
    assert_eq!(dead.header("ce-knativebrokerttl"), Some("254"));
    assert_eq!(
        dead.attr("knativeerrordata"),
        Some(base64::engine::general_purpose::STANDARD.encode(error_body))
    );
    let event = dead.event();
    assert_eq!(
        (
            event.id.as_str(),
            event.ty.as_str(),
            event.subject.as_deref()
        ),
        ("d-1", "com.example.order", Some("seven"))
    );
    assert_eq!(event.data.as_ref(), Some(&data));
    assert_eq!(
        server
            .delivery_outcomes(NS, "doomed", "dead_lettered")
            .await,
        1.0
    );
}

/// A trigger that sets any delivery field replaces the broker's delivery entirely: the
/// broker's dead-letter sink and retry count do not apply to it, while a trigger without
/// delivery inherits both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_delivery_replaces_broker_delivery_entirely() {
    let server = TestServer::start_ready().await;
    let sub = Subscriber::with_script(script(|r: &Recorded| {
        if r.path == "/dls" {
            Reply::ok()
        } else {
            Reply::status(500)
        }
    }))
    .await;
    server
        .create_broker(
            NS,
            "guarded",
            json!({"delivery": {
                "retry": 3, "backoffDelay": "PT0.05S",
                "deadLetterSink": {"uri": sub.url_at("dls")}
            }}),
        )
        .await;
    let own = with_spec(
        with_spec(
            trigger(NS, "own", "guarded", &sub.url_at("own")),
            "delivery",
            json!({"retry": 1, "backoffDelay": "PT0.05S"}),
        ),
        "filters",
        json!([{"exact": {"type": "own"}}]),
    );
    let inherit = with_spec(
        trigger(NS, "inherit", "guarded", &sub.url_at("inherit")),
        "filters",
        json!([{"exact": {"type": "inherit"}}]),
    );
    let own_status = server.create_trigger(&own).await;
    let inherit_status = server.create_trigger(&inherit).await;
    assert!(own_status["status"]["deadLetterSinkUri"].is_null());
    assert_eq!(
        inherit_status["status"]["deadLetterSinkUri"],
        json!(sub.url_at("dls"))
    );

    server
        .send(NS, "guarded", &TestEvent::new("own-1", "own"))
        .await;
    server
        .send(NS, "guarded", &TestEvent::new("inherit-1", "inherit"))
        .await;
    server.wait_deliveries_final(NS, "own", 1).await;
    server.wait_deliveries_final(NS, "inherit", 1).await;

    assert_eq!(
        sub.requests_at("/own").len(),
        2,
        "the trigger's retry: 1, not the broker's 3"
    );
    assert_eq!(server.delivery_outcomes(NS, "own", "failed").await, 1.0);
    assert_eq!(
        sub.requests_at("/inherit").len(),
        4,
        "the broker's retry: 3"
    );
    assert_eq!(
        server
            .delivery_outcomes(NS, "inherit", "dead_lettered")
            .await,
        1.0
    );
    assert_eq!(
        ids(&sub.requests_at("/dls")),
        ["inherit-1"],
        "only the inheriting trigger uses the broker's dead-letter sink"
    );
}

// ---------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------

/// A reply event (200 with CloudEvent headers) re-enters the broker with the TTL its parent
/// was delivered with (255 less one); its own delivery takes one more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_reenter_the_broker_with_decremented_ttl() {
    let server = TestServer::start_ready().await;
    let sub = Subscriber::with_script(script(|r: &Recorded| {
        if r.path == "/a" {
            Reply::event(
                200,
                &TestEvent::new(&format!("reply-of-{}", r.id()), "com.example.b")
                    .data("application/json", r#"{"answer":42}"#),
            )
        } else {
            Reply::ok()
        }
    }))
    .await;
    let a = with_spec(
        trigger(NS, "a", BROKER, &sub.url_at("a")),
        "filters",
        json!([{"exact": {"type": "com.example.a"}}]),
    );
    let b = with_spec(
        trigger(NS, "b", BROKER, &sub.url_at("b")),
        "filters",
        json!([{"exact": {"type": "com.example.b"}}]),
    );
    server.create_trigger(&a).await;
    server.create_trigger(&b).await;

    server
        .send(NS, BROKER, &TestEvent::new("a-1", "com.example.a"))
        .await;
    let got = sub.wait_for_matching(1, |r| r.path == "/b").await.remove(0);
    assert_eq!(got.id(), "reply-of-a-1");
    assert_eq!(got.attr("type").as_deref(), Some("com.example.b"));
    assert_eq!(
        sub.requests_at("/a")[0].header("ce-knativebrokerttl"),
        Some("254")
    );
    assert_eq!(got.header("ce-knativebrokerttl"), Some("253"));
    assert_eq!(got.body, Bytes::from_static(br#"{"answer":42}"#));
    assert_eq!(
        sub.requests_at("/a")[0].header("prefer"),
        Some("reply"),
        "deliveries ask for a reply"
    );
    assert_eq!(
        sub.requests_at("/a")[0].header("kn-namespace"),
        Some(NS),
        "deliveries name the trigger's namespace, as Knative's dispatchers do"
    );
    server
        .wait_metric(REPLIES, &[("trigger", "a"), ("outcome", "published")], 1.0)
        .await;
}

/// A 202 carrying CloudEvent headers is an acknowledgement, never a reply. Trigger `a` is
/// ordered, so the genuine reply to its second event is published after anything the first
/// could have produced; trigger `b` is ordered too, so it would see a bogus reply first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_responses_are_never_replies() {
    let server = TestServer::start_ready().await;
    let sub = Subscriber::with_script(script(|r: &Recorded| {
        match (r.path.as_str(), r.id().as_str()) {
            ("/a", "first") => Reply::event(202, &TestEvent::new("bogus", "com.example.b")),
            ("/a", _) => Reply::event(200, &TestEvent::new("genuine", "com.example.b")),
            _ => Reply::ok(),
        }
    }))
    .await;
    let a = ordered(with_spec(
        trigger(NS, "a", BROKER, &sub.url_at("a")),
        "filters",
        json!([{"exact": {"type": "com.example.a"}}]),
    ));
    let b = ordered(with_spec(
        trigger(NS, "b", BROKER, &sub.url_at("b")),
        "filters",
        json!([{"exact": {"type": "com.example.b"}}]),
    ));
    server.create_trigger(&a).await;
    server.create_trigger(&b).await;

    server
        .send(NS, BROKER, &TestEvent::new("first", "com.example.a"))
        .await;
    server
        .send(NS, BROKER, &TestEvent::new("second", "com.example.a"))
        .await;
    sub.wait_for_matching(1, |r| r.path == "/b").await;
    assert_eq!(ids(&sub.requests_at("/b")), ["genuine"]);
    assert_eq!(server.delivery_outcomes(NS, "a", "delivered").await, 2.0);
}

/// A 200 that claims to carry an event (`ce-specversion`) but misses `ce-id` is a failed
/// delivery: the event goes to the dead-letter sink and nothing re-enters the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_replies_are_failed_deliveries() {
    let server = TestServer::start_ready().await;
    let sub = Subscriber::with_script(script(|r: &Recorded| match r.path.as_str() {
        "/a" => Reply::status(200)
            .header("ce-specversion", "1.0")
            .header("ce-type", "com.example.b")
            .header("ce-source", "/replier"),
        _ => Reply::ok(),
    }))
    .await;
    let a = with_spec(
        with_spec(
            trigger(NS, "a", BROKER, &sub.url_at("a")),
            "filters",
            json!([{"exact": {"type": "com.example.a"}}]),
        ),
        "delivery",
        json!({"deadLetterSink": {"uri": sub.url_at("dls")}}),
    );
    let b = ordered(with_spec(
        trigger(NS, "b", BROKER, &sub.url_at("b")),
        "filters",
        json!([{"exact": {"type": "com.example.b"}}]),
    ));
    server.create_trigger(&a).await;
    server.create_trigger(&b).await;

    server
        .send(NS, BROKER, &TestEvent::new("m-1", "com.example.a"))
        .await;
    let dead = sub
        .wait_for_matching(1, |r| r.path == "/dls")
        .await
        .remove(0);
    assert_eq!(dead.id(), "m-1");
    assert_eq!(dead.attr("knativeerrordest"), Some(sub.url_at("a")));
    assert!(dead.attr("knativeerrorcode").is_some());
    server.wait_deliveries_final(NS, "a", 1).await;
    assert_eq!(
        server.delivery_outcomes(NS, "a", "dead_lettered").await,
        1.0
    );

    // Nothing reached trigger b before this later event (b is ordered).
    server
        .send(NS, BROKER, &TestEvent::new("later", "com.example.b"))
        .await;
    sub.wait_for_matching(1, |r| r.path == "/b").await;
    assert_eq!(ids(&sub.requests_at("/b")), ["later"]);
}

/// A subscriber that answers every event with a reply of the same type makes a loop; the
/// broker TTL ends it. With `knativebrokerttl: 5` the subscriber sees TTLs 4, 3, 2, 1: each
/// delivery carries the TTL less one and each reply re-enters with its parent's delivered
/// TTL. The last reply re-enters with TTL 1, which has no hop left: the trigger drops it and
/// counts it. Four deliveries: the original and three replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_loops_are_stopped_by_the_broker_ttl() {
    let server = TestServer::start_ready().await;
    let sub = Subscriber::with_script(script(|r: &Recorded| {
        Reply::event(
            200,
            &TestEvent::new(&format!("{}+", r.id()), "com.example.loop"),
        )
    }))
    .await;
    server
        .create_trigger(&trigger(NS, "loop", BROKER, &sub.url()))
        .await;
    server
        .send(
            NS,
            BROKER,
            &TestEvent::new("loop", "com.example.loop").attr("knativebrokerttl", "5"),
        )
        .await;
    server
        .wait_metric(
            "rivulet_events_dropped_total",
            &[("trigger", "loop"), ("reason", "ttl")],
            1.0,
        )
        .await;
    // The TTL is exhausted only after the fourth delivery, and nothing was delivered after it.
    let requests = sub.requests();
    assert_eq!(ids(&requests), ["loop", "loop+", "loop++", "loop+++"]);
    let ttls: Vec<Option<&str>> = requests
        .iter()
        .map(|r| r.header("ce-knativebrokerttl"))
        .collect();
    assert_eq!(ttls, [Some("4"), Some("3"), Some("2"), Some("1")]);
    assert_eq!(
        server
            .metric(REPLIES, &[("trigger", "loop"), ("outcome", "published")])
            .await,
        4.0
    );
    assert_eq!(server.delivery_outcomes(NS, "loop", "delivered").await, 4.0);
}

// ---------------------------------------------------------------------------------------
// Independence, order, parallelism
// ---------------------------------------------------------------------------------------

/// Each matching trigger gets its own delivery, also when they share a subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_triggers_with_the_same_subscriber_each_deliver() {
    let server = TestServer::start_ready().await;
    let sub = Subscriber::start().await;
    server
        .create_trigger(&trigger(NS, "first", BROKER, &sub.url()))
        .await;
    server
        .create_trigger(&trigger(NS, "second", BROKER, &sub.url()))
        .await;
    for id in ["s-1", "s-2", "s-3"] {
        server
            .send(NS, BROKER, &TestEvent::new(id, "com.example"))
            .await;
    }
    server.wait_deliveries_final(NS, "first", 3).await;
    server.wait_deliveries_final(NS, "second", 3).await;
    let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
    for request in sub.requests() {
        *per_id.entry(request.id()).or_default() += 1;
    }
    assert_eq!(
        per_id,
        BTreeMap::from([("s-1".into(), 2), ("s-2".into(), 2), ("s-3".into(), 2)])
    );
}

/// A subscriber that never answers holds up only its own trigger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_subscriber_does_not_delay_other_triggers() {
    let server = TestServer::start_ready().await;
    let sub = Subscriber::with_script(script(|r: &Recorded| {
        if r.path == "/stuck" {
            Reply::hang()
        } else {
            Reply::ok()
        }
    }))
    .await;
    let stuck = with_spec(
        ordered(trigger(NS, "stuck", BROKER, &sub.url_at("stuck"))),
        "delivery",
        json!({"timeout": "PT60S"}),
    );
    server.create_trigger(&stuck).await;
    server
        .create_trigger(&trigger(NS, "free", BROKER, &sub.url_at("free")))
        .await;
    for i in 0..10 {
        server
            .send(
                NS,
                BROKER,
                &TestEvent::new(&format!("f-{i}"), "com.example"),
            )
            .await;
    }
    let free = sub.wait_for_matching(10, |r| r.path == "/free").await;
    assert_eq!(sorted(ids(&free)).len(), 10);
    let stuck_requests = sub.requests_at("/stuck");
    assert_eq!(
        ids(&stuck_requests),
        ["f-0"],
        "the stuck trigger is still waiting on its first event"
    );
    assert!(sub.in_flight() >= 1, "the stuck request is still open");
}

/// An ordered trigger delivers one event at a time in the order ingress accepted them, even
/// when the subscriber answers some events more slowly than others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_triggers_deliver_in_order() {
    let server = TestServer::start_ready().await;
    let sub = Subscriber::with_script(script(|r: &Recorded| {
        let slow = r.id().ends_with(['0', '3', '7']);
        Reply::ok().delay(Duration::from_millis(if slow { 15 } else { 0 }))
    }))
    .await;
    server
        .create_trigger(&ordered(trigger(NS, "in-order", BROKER, &sub.url())))
        .await;
    let sent: Vec<String> = (0..50).map(|i| format!("o-{i:02}")).collect();
    for id in &sent {
        server
            .send(NS, BROKER, &TestEvent::new(id, "com.example"))
            .await;
    }
    let received = sub.wait_for(50).await;
    assert_eq!(ids(&received), sent);
    assert_eq!(
        sub.max_in_flight(),
        1,
        "ordered means one delivery at a time"
    );
}

/// `rivulet.dev/parallelism: "8"` lets up to eight deliveries run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unordered_triggers_deliver_in_parallel_up_to_the_bound() {
    let server = TestServer::start_ready().await;
    let sub = Subscriber::with_script(always(Reply::ok().delay(Duration::from_millis(250)))).await;
    let manifest = with_annotation(
        trigger(NS, "parallel", BROKER, &sub.url()),
        "rivulet.dev/parallelism",
        "8",
    );
    server.create_trigger(&manifest).await;

    // One batch, so all events are in the channel at once.
    let batch: Vec<Value> = (0..24)
        .map(|i| {
            json!({"specversion": "1.0", "id": format!("p-{i}"), "source": "/tests", "type": "com.example"})
        })
        .collect();
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        "content-type",
        "application/cloudevents-batch+json".parse().unwrap(),
    );
    let (status, body) = server
        .post_raw(
            NS,
            BROKER,
            headers,
            Bytes::from(serde_json::to_vec(&batch).unwrap()),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    server.wait_deliveries_final(NS, "parallel", 24).await;
    let max = sub.max_in_flight();
    assert!(
        max > 1,
        "deliveries must overlap, saw at most {max} at once"
    );
    assert!(max <= 8, "at most 8 deliveries at once, saw {max}");
    assert_eq!(sorted(ids(&sub.requests())).len(), 24);
}

// ---------------------------------------------------------------------------------------
// References, live changes, metrics
// ---------------------------------------------------------------------------------------

/// A subscriber `ref` to a Broker resolves to its ingress: broker → trigger → broker →
/// trigger → subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_ref_subscriber_forwards_to_that_broker() {
    let server = TestServer::start_ready().await;
    let sub = Subscriber::start().await;
    server.create_broker(NS, "second", Value::Null).await;
    let forward = json!({
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": "forward", "namespace": NS},
        "spec": {
            "broker": BROKER,
            "subscriber": {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "second"}}
        }
    });
    let status = server.create_trigger(&forward).await;
    assert_eq!(
        status["status"]["subscriberUri"],
        json!(server.ingress_url(NS, "second"))
    );
    server
        .create_trigger(&trigger(NS, "final", "second", &sub.url()))
        .await;

    server
        .send(
            NS,
            BROKER,
            &TestEvent::new("hop-1", "com.example.hop").data("text/plain", "payload"),
        )
        .await;
    let got = sub.wait_for(1).await.remove(0);
    assert_eq!(got.id(), "hop-1");
    assert_eq!(got.body, Bytes::from_static(b"payload"));
    assert_eq!(
        server.delivery_outcomes(NS, "forward", "delivered").await,
        1.0
    );
}

/// A `ref` to a kind Rivulet does not serve leaves the trigger not Ready, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ref_to_an_unknown_kind_leaves_the_trigger_not_ready() {
    let server = TestServer::start_ready().await;
    server
        .apply(&json!({
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {"name": "dangling", "namespace": NS},
            "spec": {
                "broker": BROKER,
                "subscriber": {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "web"}}
            }
        }))
        .await;
    let ready = server
        .wait_condition("Trigger", NS, "dangling", "Ready", "False")
        .await;
    let message = ready["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("Service") && message.contains("serving.knative.dev/v1"),
        "the reason names the unresolvable ref: {ready}"
    );
    let resolved = server
        .wait_condition("Trigger", NS, "dangling", "SubscriberResolved", "False")
        .await;
    assert!(resolved["reason"].is_string(), "{resolved}");
}

/// Applying and deleting triggers takes effect while the server runs (here the real binary).
/// After a delete, the trigger gets nothing more; applied again, it gets only new events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_and_deleting_a_trigger_takes_effect_without_restart() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut child = ChildServer::spawn(data_dir.path(), &["--shutdown-grace", "200ms"]).await;
    let server = Api::new(&child.base, &child.api);
    server.wait_ready("Broker", NS, BROKER).await;
    let sub = Subscriber::start().await;
    let temp = ordered(trigger(NS, "temp", BROKER, &sub.url_at("temp")));

    server.create_trigger(&temp).await;
    server
        .send(NS, BROKER, &TestEvent::new("before", "com.example"))
        .await;
    sub.wait_for_matching(1, |r| r.path == "/temp").await;

    server.delete("Trigger", NS, "temp").await;
    assert!(server.get("Trigger", NS, "temp").await.is_none());
    // Changes are handled in order: once this trigger is Ready, the delete has been handled.
    server
        .create_trigger(&trigger(NS, "marker", BROKER, &sub.url_at("marker")))
        .await;
    server
        .send(NS, BROKER, &TestEvent::new("during", "com.example"))
        .await;
    sub.wait_for_matching(1, |r| r.path == "/marker").await;

    server.create_trigger(&temp).await;
    server
        .send(NS, BROKER, &TestEvent::new("after", "com.example"))
        .await;
    sub.wait_for_matching(2, |r| r.path == "/temp").await;
    assert_eq!(
        ids(&sub.requests_at("/temp")),
        ["before", "after"],
        "nothing while deleted, and a new trigger starts with new events"
    );
    let status = child.terminate(Duration::from_secs(10)).await;
    assert!(
        status.success(),
        "rivulet serve exits cleanly on SIGTERM: {status}"
    );
}

/// `/metrics` counts final delivery outcomes per trigger, and ingress outcomes per broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_deliveries_by_outcome() {
    let server = TestServer::start_ready().await;
    let sub = Subscriber::with_script(script(|r: &Recorded| {
        if r.path == "/dls" || r.attr("type").as_deref() == Some("ok") {
            Reply::ok()
        } else {
            Reply::status(400)
        }
    }))
    .await;
    server
        .create_trigger(&retrying(
            "metered",
            &sub.url_at("metered"),
            json!({"deadLetterSink": {"uri": sub.url_at("dls")}}),
        ))
        .await;
    let unguarded = with_spec(
        trigger(NS, "unguarded", BROKER, &sub.url_at("unguarded")),
        "filters",
        json!([{"exact": {"type": "bad"}}]),
    );
    server.create_trigger(&unguarded).await;
    for (id, ty) in [
        ("m1", "ok"),
        ("m2", "bad"),
        ("m3", "ok"),
        ("m4", "bad"),
        ("m5", "ok"),
    ] {
        server.send(NS, BROKER, &TestEvent::new(id, ty)).await;
    }
    let (status, _) = server
        .post_raw(
            NS,
            BROKER,
            axum::http::HeaderMap::new(),
            Bytes::from_static(b"not an event"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    server.wait_deliveries_final(NS, "metered", 5).await;
    server.wait_deliveries_final(NS, "unguarded", 2).await;

    let text = server.metrics_text().await;
    let count = |trigger: &str, outcome: &str| {
        support::metric_sum(
            &text,
            DELIVERIES,
            &[
                ("namespace", NS),
                ("trigger", trigger),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(count("metered", "delivered"), 3.0, "{text}");
    assert_eq!(count("metered", "dead_lettered"), 2.0, "{text}");
    assert_eq!(count("metered", "failed"), 0.0, "{text}");
    assert_eq!(count("unguarded", "failed"), 2.0, "{text}");
    assert_eq!(count("unguarded", "delivered"), 0.0, "{text}");
    let ingress = |outcome: &str| {
        support::metric_sum(
            &text,
            "rivulet_ingress_events_total",
            &[("namespace", NS), ("broker", BROKER), ("outcome", outcome)],
        )
    };
    assert_eq!(ingress("accepted"), 5.0, "{text}");
    assert_eq!(ingress("refused"), 1.0, "{text}");
}

/// Any absolute URI is admitted as a subscriber, as in Knative; a scheme Rivulet cannot send to
/// fails at delivery, at once (no retries), and the event goes to the dead-letter sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_with_an_unusual_scheme_is_admitted_and_fails_at_delivery() {
    let server = TestServer::start_ready().await;
    let sub = Subscriber::start().await;
    server
        .create_trigger(&retrying(
            "mail",
            "mailto:ops@example.com",
            json!({"retry": 5, "backoffDelay": "PT0.05S", "deadLetterSink": {"uri": sub.url_at("dls")}}),
        ))
        .await;
    server
        .send(NS, BROKER, &TestEvent::new("m-1", "com.example.mail"))
        .await;
    let dead = sub
        .wait_for_matching(1, |r| r.path == "/dls")
        .await
        .remove(0);
    assert_eq!(dead.id(), "m-1");
    assert_eq!(
        dead.attr("knativeerrordest").as_deref(),
        Some("mailto:ops@example.com")
    );
    server
        .wait_metric(
            DELIVERIES,
            &[("trigger", "mail"), ("outcome", "dead_lettered")],
            1.0,
        )
        .await;
    assert_eq!(
        server
            .metric(
                "rivulet_trigger_delivery_retries_total",
                &[("trigger", "mail")]
            )
            .await,
        0.0,
        "an unsupported scheme is not retried"
    );
}

/// Integer and boolean extensions sent in structured mode reach a structured-mode subscriber
/// as JSON numbers and booleans, and `knativebrokerttl` as a number, through the channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extension_types_survive_to_a_structured_subscriber() {
    let server = TestServer::start_ready().await;
    let sub = Subscriber::start().await;
    server
        .create_trigger(&with_spec(
            trigger(NS, "typed", BROKER, &sub.url()),
            "delivery",
            json!({"format": "json"}),
        ))
        .await;
    let event = json!({
        "specversion": "1.0", "id": "typed-1", "source": "/types", "type": "com.example.typed",
        "intext": 42, "boolext": true, "strext": "42"
    });
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        "content-type",
        axum::http::HeaderValue::from_static("application/cloudevents+json"),
    );
    let (status, body) = server
        .post_raw(NS, BROKER, headers, Bytes::from(event.to_string()))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let got = sub.wait_for(1).await.remove(0);
    let delivered: Value = serde_json::from_slice(&got.body).expect("structured JSON");
    assert_eq!(delivered["intext"], json!(42), "{delivered}");
    assert_eq!(delivered["boolext"], json!(true), "{delivered}");
    assert_eq!(delivered["strext"], json!("42"), "{delivered}");
    assert_eq!(delivered["knativebrokerttl"], json!(254), "{delivered}");
}

/// `backoffMax` caps the waits of an exponential backoff: five retries from a 1 s delay would
/// wait a minute in all (2 + 4 + 8 + 16 + 32 s), longer than the test waits for them, and
/// capped at 0.1 s they all come at once. Zero or a non-duration is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_max_caps_the_waits_between_retries() {
    // The suite's servers cap every wait at 2 s; this one leaves it to backoffMax.
    let server = TestServer::start_ready_with(|options| {
        options.delivery.backoff_cap = Duration::from_secs(120);
    })
    .await;
    let sub = Subscriber::with_script(always(Reply::status(503))).await;
    server
        .create_trigger(&retrying(
            "capped",
            &sub.url(),
            json!({"retry": 5, "backoffPolicy": "exponential", "backoffDelay": "PT1S", "backoffMax": "PT0.1S"}),
        ))
        .await;
    server
        .send(NS, BROKER, &TestEvent::new("cap-1", "com.example"))
        .await;
    let attempts = sub.wait_for(6).await;
    assert!(attempts.iter().all(|r| r.id() == "cap-1"));

    for (bad, words) in [("PT0S", "longer than zero"), ("soon", "backoffMax")] {
        let (status, body) = server
            .try_apply(&retrying("refused", &sub.url(), json!({"backoffMax": bad})))
            .await;
        assert_eq!(status, 422, "{bad}: {body}");
        assert!(body["message"].as_str().unwrap().contains(words), "{body}");
    }
}

/// `rivulet.dev/rate-limit` paces a trigger's deliveries without dropping any: every event
/// sent reaches the subscriber, once; a value that is not a rate above zero is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_trigger_delivers_every_event_and_bad_rates_are_refused() {
    let server = TestServer::start_ready().await;
    let sub = Subscriber::start().await;
    let paced = with_annotation(
        with_annotation(
            trigger(NS, "paced", BROKER, &sub.url()),
            "rivulet.dev/rate-limit",
            "40",
        ),
        "rivulet.dev/parallelism",
        "16",
    );
    server.create_trigger(&paced).await;
    for i in 0..12 {
        server
            .send(
                NS,
                BROKER,
                &TestEvent::new(&format!("paced-{i}"), "com.example"),
            )
            .await;
    }
    let got = sub.wait_for(12).await;
    let mut ids: Vec<String> = got.iter().map(|r| r.id()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 12, "each event once: {ids:?}");

    for bad in ["0", "-3", "fast", "2000000"] {
        let refused = with_annotation(
            trigger(NS, "refused", BROKER, &sub.url()),
            "rivulet.dev/rate-limit",
            bad,
        );
        let (status, body) = server.try_apply(&refused).await;
        assert_eq!(status, 422, "{bad}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains("per second"),
            "{body}"
        );
    }
}

/// Rivulet's `DATA(path)` CESQL extension filters on the event's JSON data: only the order
/// above 100 reaches the trigger (the embedded channel routes by the same filter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cesql_filter_on_the_payload_passes_only_matching_data() {
    let server = TestServer::start_ready().await;
    let sub = Subscriber::start().await;
    let mut big_orders = trigger(NS, "big-orders", BROKER, &sub.url());
    big_orders["spec"]["filters"] =
        json!([{"cesql": "type = 'com.example.order' AND DATA('order.total') > 100"}]);
    server.create_trigger(&big_orders).await;
    for (id, total) in [("small", 50), ("big", 150), ("unpriced", -1)] {
        let data = if total < 0 {
            json!({"order": {}})
        } else {
            json!({"order": {"total": total}})
        };
        server
            .send(
                NS,
                BROKER,
                &TestEvent::new(id, "com.example.order").data("application/json", data.to_string()),
            )
            .await;
    }
    let got = sub.wait_for(1).await;
    assert_eq!(got[0].id(), "big");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sub.count(), 1, "the small and the unpriced orders stay out");
}
