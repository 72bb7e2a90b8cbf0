//! Event loops end: every delivery out of a trigger carries `knativebrokerttl` one lower,
//! so an event that comes back into a broker by any path (the subscriber being a broker's
//! ingress, two brokers feeding each other, a reply) runs out of hops, is dropped and
//! counted. Ingress refuses an event that arrives with no hop left.

use rivulet_testkit as support;
use rivulet_testkit::adapters as adapters_support;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use bytes::Bytes;
use serde_json::json;
use support::{Recorded, Subscriber, TestEvent, TestServer, trigger};

const NS: &str = "default";
const BROKER: &str = "default";
const DROPPED: &str = "rivulet_events_dropped_total";
const INGRESS: &str = "rivulet_ingress_events_total";

/// A trigger that only takes events of `event_type`.
fn typed_trigger(
    name: &str,
    broker: &str,
    subscriber: &str,
    event_type: &str,
) -> serde_json::Value {
    let mut manifest = trigger(NS, name, broker, subscriber);
    manifest["spec"]["filters"] = json!([{"exact": {"type": event_type}}]);
    manifest
}

/// The TTLs deliveries carried, highest first (deliveries run in parallel, so they may
/// arrive in any order).
fn ttls(requests: &[Recorded]) -> Vec<i32> {
    let mut ttls: Vec<i32> = requests
        .iter()
        .map(|r| {
            r.header("ce-knativebrokerttl")
                .expect("every delivery carries the TTL")
                .parse()
                .expect("the TTL is an integer")
        })
        .collect();
    ttls.sort_unstable_by(|a, b| b.cmp(a));
    ttls
}

async fn delivered(server: &TestServer, trigger: &str) -> f64 {
    server.delivery_outcomes(NS, trigger, "delivered").await
}

async fn ttl_drops(server: &TestServer, trigger: &str) -> f64 {
    server
        .metric(DROPPED, &[("trigger", trigger), ("reason", "ttl")])
        .await
}

/// Waits until `trigger` has dropped one event for running out of hops.
async fn wait_ttl_drop(server: &TestServer, trigger: &str) {
    server
        .wait_metric(DROPPED, &[("trigger", trigger), ("reason", "ttl")], 1.0)
        .await;
}

/// How many events ingress accepted into `broker`.
async fn accepted(server: &TestServer, broker: &str) -> f64 {
    server
        .metric(INGRESS, &[("broker", broker), ("outcome", "accepted")])
        .await
}

/// Creates a Ready trigger `name` on the default broker for events of `event_type`.
async fn subscribe(server: &TestServer, name: &str, subscriber: &str, event_type: &str) {
    let manifest = typed_trigger(name, BROKER, subscriber, event_type);
    server.create_trigger(&manifest).await;
}

/// The loop: a trigger `name` sending events of `event_type` to `subscriber` (a way back
/// into the default broker), and a trigger `watch` showing every re-entry to the returned
/// subscriber.
async fn loop_with_watcher(
    server: &TestServer,
    name: &str,
    subscriber: &str,
    event_type: &str,
) -> Subscriber {
    let watcher = Subscriber::start().await;
    subscribe(server, name, subscriber, event_type).await;
    subscribe(server, "watch", &watcher.url(), event_type).await;
    watcher
}

/// Sends an event into the default broker with `knativebrokerttl` set to `ttl`.
async fn send_with_ttl(server: &TestServer, id: &str, event_type: &str, ttl: &str) {
    let event = TestEvent::new(id, event_type).attr("knativebrokerttl", ttl);
    server.send(NS, BROKER, &event).await;
}

/// Posts `body` to the default broker's ingress as `content_type`: the status and body.
async fn post_as(
    server: &TestServer,
    content_type: &'static str,
    body: String,
) -> (StatusCode, String) {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static(content_type));
    server
        .post_raw(NS, BROKER, headers, Bytes::from(body))
        .await
}

/// A trigger whose subscriber is its own broker's ingress: with the default TTL (255) the
/// event is stored 255 times (TTL 255 down to 1) and delivered 254 times, then the trigger
/// drops it and counts the drop. A second trigger watching the same events sees every
/// re-entry once, with the TTL falling by one each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_subscribed_to_its_own_broker_stops_after_the_ttl() {
    let server = TestServer::start_ready().await;
    let ingress = server.ingress_url(NS, BROKER);
    let watcher = loop_with_watcher(&server, "echo", &ingress, "com.example.loop").await;

    server
        .send(NS, BROKER, &TestEvent::new("self", "com.example.loop"))
        .await;
    wait_ttl_drop(&server, "echo").await;
    wait_ttl_drop(&server, "watch").await;

    assert_eq!(delivered(&server, "echo").await, 254.0);
    let seen = watcher.wait_for(254).await;
    assert_eq!(ttls(&seen), (1..=254).rev().collect::<Vec<_>>());
    assert!(seen.iter().all(|r| r.id() == "self"));
    assert_eq!(
        accepted(&server, BROKER).await,
        255.0,
        "the sender's event and 254 re-entries, nothing after the drop"
    );
    // The loop is over: no event is left in it, so nothing more is delivered or dropped.
    server.wait_deliveries_final(NS, "echo", 254).await;
    assert_eq!(ttl_drops(&server, "echo").await, 1.0);
    assert_eq!(watcher.count(), 254);
}

/// A TTL the sender sets low ends the same loop sooner; one set above the default is
/// lowered to it, so no sender can make a loop practically endless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_ttl_from_the_sender_stops_the_loop_sooner_and_a_high_one_is_capped() {
    let server = TestServer::start_ready().await;
    let ingress = server.ingress_url(NS, BROKER);
    let watcher = loop_with_watcher(&server, "echo", &ingress, "com.example.short").await;
    send_with_ttl(&server, "short", "com.example.short", "4").await;
    wait_ttl_drop(&server, "echo").await;
    assert_eq!(delivered(&server, "echo").await, 3.0);
    let seen = watcher.wait_for(3).await;
    assert_eq!(ttls(&seen), [3, 2, 1]);

    // Past the default: stored as 255, so the first delivery carries 254.
    let capped = Subscriber::start().await;
    subscribe(&server, "capped", &capped.url(), "com.example.high").await;
    send_with_ttl(&server, "high", "com.example.high", "2000000000").await;
    let got = capped.wait_for(1).await;
    assert_eq!(ttls(&got), [254]);
}

/// Two brokers each with a trigger whose subscriber is the other's ingress: the event
/// bounces between them with the TTL falling on every hop, and the broker holding it when
/// the count runs out drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_pong_between_two_brokers_stops() {
    let server = TestServer::start_ready().await;
    for broker in ["ping", "pong"] {
        server
            .create_broker(NS, broker, serde_json::Value::Null)
            .await;
    }
    // Each broker's trigger sends to the other's ingress.
    for (name, from, to) in [("to-pong", "ping", "pong"), ("to-ping", "pong", "ping")] {
        let other = server.ingress_url(NS, to);
        server
            .create_trigger(&trigger(NS, name, from, &other))
            .await;
    }

    server
        .send(NS, "ping", &TestEvent::new("ball", "com.example.ball"))
        .await;
    // Stored at ping with 255, 253, ..., 1 (128 times) and at pong with 254, ..., 2 (127
    // times): the event with TTL 1 is at ping, whose trigger drops it.
    wait_ttl_drop(&server, "to-pong").await;
    server.wait_deliveries_final(NS, "to-pong", 127).await;
    server.wait_deliveries_final(NS, "to-ping", 127).await;
    assert_eq!(delivered(&server, "to-pong").await, 127.0);
    assert_eq!(delivered(&server, "to-ping").await, 127.0);
    assert_eq!(ttl_drops(&server, "to-ping").await, 0.0);
    assert_eq!(accepted(&server, "ping").await, 128.0);
    assert_eq!(accepted(&server, "pong").await, 127.0);
}

/// Ingress refuses an event that arrives with no hop left (TTL zero or below), in every
/// content mode, with a 400 that says why; each refused event is counted as a TTL drop of
/// the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_refuses_an_event_with_no_hop_left() {
    let (server, sub) = TestServer::start_subscribed().await;

    for ttl in ["0", "-3"] {
        let (status, body) = server
            .post_raw(
                NS,
                BROKER,
                TestEvent::new("spent", "com.example.spent")
                    .attr("knativebrokerttl", ttl)
                    .headers(),
                Bytes::new(),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "TTL {ttl}: {body}");
        assert!(body.contains("knativebrokerttl"), "{body}");
        assert!(
            body.contains("spent"),
            "the message names the event: {body}"
        );
    }

    let event = json!({"specversion": "1.0", "id": "s0", "source": "/t", "type": "t",
                       "knativebrokerttl": 0});
    let (status, body) = post_as(&server, "application/cloudevents+json", event.to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let batch = json!([
        {"specversion": "1.0", "id": "b-ok", "source": "/t", "type": "t"},
        {"specversion": "1.0", "id": "b0", "source": "/t", "type": "t", "knativebrokerttl": 0},
    ]);
    let batched = "application/cloudevents-batch+json";
    let (status, body) = post_as(&server, batched, batch.to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("b0"), "{body}");

    assert_eq!(
        server
            .metric(
                DROPPED,
                &[("namespace", NS), ("trigger", ""), ("reason", "ttl")]
            )
            .await,
        4.0
    );
    // Nothing of the refused requests was stored: the next event is the first delivered.
    server
        .send(NS, BROKER, &TestEvent::new("fresh", "com.example.fresh"))
        .await;
    let got = sub.wait_for(1).await;
    assert_eq!(got[0].id(), "fresh");
    assert_eq!(ttls(&got), [254]);
}

/// A loop through a backend: a trigger's subscriber is a NatsSink, whose subject a
/// NatsSource reads back into the same broker. The TTL travels in the NATS message with the
/// other attributes, so the loop ends as it would over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_through_a_nats_sink_and_source_carries_the_ttl_and_stops() {
    let server = TestServer::start_ready().await;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let name = format!("loop-{}-{nanos}", std::process::id());
    let nats_url = std::env::var("RIVULET_NATS_URL")
        .unwrap_or_else(|_| rivulet_channels::nats::DEFAULT_URL.into());
    adapters_support::apply(
        &server.api,
        &json!({
            "apiVersion": "sinks.rivulet.dev/v1alpha1",
            "kind": "NatsSink",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"url": nats_url, "subject": format!("{name}.events")}
        }),
    )
    .await;
    let sink =
        adapters_support::wait_ready(&server.api, "sinks.rivulet.dev/v1alpha1", "NatsSink", &name)
            .await;
    let sink_url = sink["status"]["address"]["url"]
        .as_str()
        .expect("the sink has an address")
        .to_string();
    adapters_support::apply(
        &server.api,
        &json!({
            "apiVersion": "sources.rivulet.dev/v1alpha1",
            "kind": "NatsSource",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "url": nats_url,
                "subject": format!("{name}.>"),
                "sink": {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": BROKER}}
            }
        }),
    )
    .await;
    adapters_support::wait_ready(
        &server.api,
        "sources.rivulet.dev/v1alpha1",
        "NatsSource",
        &name,
    )
    .await;

    // Core NATS keeps nothing for a subscriber that is not there yet: probe through the sink
    // until an event comes back through the source.
    let probes = Subscriber::start().await;
    subscribe(&server, "probes", &probes.url(), "com.example.probe").await;
    support::wait_for("the source to subscribe", support::WAIT, || {
        let (client, url, probes) = (support::http(), sink_url.clone(), &probes);
        async move {
            let event = TestEvent::new("probe", "com.example.probe");
            client
                .post(&url)
                .headers(event.headers())
                .send()
                .await
                .ok()?;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            (probes.count() > 0).then_some(())
        }
    })
    .await;

    let watcher = loop_with_watcher(&server, "to-nats", &sink_url, "com.example.loop").await;
    send_with_ttl(&server, "round", "com.example.loop", "6").await;
    wait_ttl_drop(&server, "to-nats").await;
    assert_eq!(delivered(&server, "to-nats").await, 5.0);
    let seen = watcher.wait_for(5).await;
    assert_eq!(ttls(&seen), [5, 4, 3, 2, 1]);
    assert!(seen.iter().all(|r| r.id() == "round"));
}
