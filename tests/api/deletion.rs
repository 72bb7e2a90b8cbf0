//! Deleting a broker or trigger that still holds undelivered events, over real HTTP: the
//! DELETE is refused with the count unless forced; a forced one gives deliveries in flight the
//! grace period, sends the rest to the dead-letter sink (with `knativeerror*` attributes) or
//! counts them dropped, and answers with the numbers. On the embedded log and on RabbitMQ.

use rivulet_testkit as support;
use rivulet_testkit::rabbitmq as rabbitmq_support;

use std::time::Duration;

use rabbitmq_support::{rabbitmq_broker, rabbitmq_uri, unique, uri_secret};
use reqwest::Method;
use serde_json::{Value, json};
use support::{
    Reply, Subscriber, TestEvent, TestServer, always, api_request, resource_path, wait_for,
    with_annotation,
};

const NS: &str = "default";

/// A trigger on `broker` delivering to `subscriber`, `parallelism` at a time, with an
/// optional dead-letter sink of its own.
fn trigger(name: &str, broker: &str, subscriber: &str, dead_letter: Option<&str>) -> Value {
    let mut spec = json!({"broker": broker, "subscriber": {"uri": subscriber}});
    if let Some(sink) = dead_letter {
        spec["delivery"] = json!({"deadLetterSink": {"uri": sink}});
    }
    json!({
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    })
}

/// DELETE of a broker or trigger, `force` or not; the status and the JSON answer.
async fn delete(server: &TestServer, kind: &str, name: &str, force: bool) -> (u16, Value) {
    let mut url = format!("{}{}", server.api, resource_path(kind, NS, name));
    if force {
        url.push_str("?force=true");
    }
    let response = api_request(Method::DELETE, url)
        .send()
        .await
        .expect("the resource API answers");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn send_events(server: &TestServer, broker: &str, prefix: &str, count: usize) {
    for n in 0..count {
        server
            .send(
                NS,
                broker,
                &TestEvent::new(&format!("{prefix}-{n}"), "test.deletion"),
            )
            .await;
    }
}

/// Waits until the subscriber holds `n` requests unanswered at once.
async fn wait_in_flight(subscriber: &Subscriber, n: usize) {
    wait_for(&format!("{n} deliveries in flight"), support::WAIT, || {
        std::future::ready((subscriber.in_flight() >= n).then_some(()))
    })
    .await;
}

fn undelivered(answer: &Value, field: &str) -> u64 {
    answer
        .pointer(&format!("/undelivered/{field}"))
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no undelivered.{field} in {answer}"))
}

/// A hung subscriber holds 2 events, 8 more wait behind them: the broker's DELETE is refused
/// naming all 10; forced, every one of them reaches the trigger's dead-letter sink with the
/// reason, and the answer says so.
async fn forced_broker_deletion_dead_letters_everything(server: &TestServer, broker: &str) {
    let hung = Subscriber::with_script(always(Reply::hang())).await;
    let dead_letters = Subscriber::start().await;
    server
        .create_trigger(&with_annotation(
            trigger("stuck", broker, &hung.url(), Some(&dead_letters.url())),
            "rivulet.dev/parallelism",
            "2",
        ))
        .await;
    send_events(server, broker, "kept", 10).await;
    wait_in_flight(&hung, 2).await;

    let (status, refusal) = delete(server, "Broker", broker, false).await;
    assert_eq!(status, 409, "refused unforced: {refusal}");
    assert_eq!(refusal["undelivered"], 10, "{refusal}");
    let message = refusal["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("10 undelivered events") && message.contains("force"),
        "the refusal names the count and the way out: {message}"
    );
    assert!(
        server.get("Broker", NS, broker).await.is_some(),
        "a refused DELETE deletes nothing"
    );

    let (status, answer) = delete(server, "Broker", broker, true).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(undelivered(&answer, "deadLettered"), 10, "{answer}");
    assert_eq!(undelivered(&answer, "dropped"), 0, "{answer}");
    assert_eq!(undelivered(&answer, "drained"), 0, "{answer}");
    let received = dead_letters.wait_for(10).await;
    let mut ids: Vec<String> = received.iter().map(|r| r.id()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10, "each event dead-lettered once: {ids:?}");
    for request in &received {
        assert_eq!(
            request.attr("knativeerrordest").as_deref(),
            Some(hung.url().as_str())
        );
        let data = request.attr("knativeerrordata").unwrap_or_default();
        let why = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &data)
            .expect("knativeerrordata is base64");
        assert!(
            String::from_utf8_lossy(&why).contains("was deleted before the event was delivered"),
            "knativeerrordata says why: {}",
            String::from_utf8_lossy(&why)
        );
    }
    assert!(server.get("Broker", NS, broker).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_with_a_hung_subscriber_dead_letters_on_forced_delete() {
    let server = TestServer::start_with(|options| {
        options.delete_grace = Duration::from_millis(300);
    })
    .await;
    server.create_broker(NS, "held", json!({})).await;
    forced_broker_deletion_dead_letters_everything(&server, "held").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_broker_with_a_hung_subscriber_dead_letters_on_forced_delete() {
    let server = TestServer::start_with(|options| {
        options.delete_grace = Duration::from_millis(300);
    })
    .await;
    let broker = unique("deleted");
    let secret = format!("{broker}-rabbitmq");
    server
        .apply(&uri_secret(NS, &secret, &rabbitmq_uri()))
        .await;
    server
        .apply(&rabbitmq_broker(NS, &broker, "Secret", &secret))
        .await;
    server.wait_ready("Broker", NS, &broker).await;
    forced_broker_deletion_dead_letters_everything(&server, &broker).await;
}

/// Without a dead-letter sink the forced DELETE drops the events, and says how many: in its
/// answer and in `rivulet_events_dropped_total{reason="deleted"}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_trigger_deletion_without_a_sink_counts_the_dropped() {
    let server = TestServer::start_with(|options| {
        options.delete_grace = Duration::from_millis(300);
    })
    .await;
    let hung = Subscriber::with_script(always(Reply::hang())).await;
    server
        .create_trigger(&with_annotation(
            trigger("lossy", "default", &hung.url(), None),
            "rivulet.dev/parallelism",
            "3",
        ))
        .await;
    send_events(&server, "default", "lost", 7).await;
    wait_in_flight(&hung, 3).await;

    let (status, refusal) = delete(&server, "Trigger", "lossy", false).await;
    assert_eq!(status, 409, "{refusal}");
    assert_eq!(refusal["undelivered"], 7, "{refusal}");

    let (status, answer) = delete(&server, "Trigger", "lossy", true).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(undelivered(&answer, "dropped"), 7, "{answer}");
    assert_eq!(undelivered(&answer, "deadLettered"), 0, "{answer}");
    let labels = [
        ("namespace", NS),
        ("trigger", "lossy"),
        ("reason", "deleted"),
    ];
    assert_eq!(
        server.metric("rivulet_events_dropped_total", &labels).await,
        7.0
    );
    assert_eq!(
        server
            .metric(
                "rivulet_deletion_events_total",
                &[("trigger", "lossy"), ("outcome", "dropped")]
            )
            .await,
        7.0
    );
    assert!(server.get("Trigger", NS, "lossy").await.is_none());
}

/// Deliveries in flight that finish within the grace period are delivered, not counted as
/// dropped; only what never started is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_finishing_within_the_grace_are_not_dropped() {
    let server = TestServer::start_with(|options| {
        // Far longer than the subscriber's delay: the grace the deletion gives.
        options.delete_grace = Duration::from_secs(30);
    })
    .await;
    let slow = Subscriber::with_script(always(Reply::ok().delay(Duration::from_secs(1)))).await;
    server
        .create_trigger(&with_annotation(
            trigger("slow", "default", &slow.url(), None),
            "rivulet.dev/parallelism",
            "2",
        ))
        .await;
    send_events(&server, "default", "slow", 5).await;
    wait_in_flight(&slow, 2).await;

    let (status, answer) = delete(&server, "Trigger", "slow", true).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(undelivered(&answer, "drained"), 2, "{answer}");
    assert_eq!(undelivered(&answer, "dropped"), 3, "{answer}");
    assert_eq!(
        slow.requests().len(),
        2,
        "nothing new was started after the deletion"
    );
}

/// A broker or trigger with nothing undelivered is deleted without `force`, and an invalid
/// `force` is a 400 that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_undelivered_needs_no_force() {
    let server = TestServer::start().await;
    let subscriber = Subscriber::start().await;
    server
        .create_trigger(&trigger("idle", "default", &subscriber.url(), None))
        .await;
    send_events(&server, "default", "done", 3).await;
    subscriber.wait_for(3).await;
    server.wait_deliveries_final(NS, "idle", 3).await;

    let (status, answer) = delete(&server, "Trigger", "idle", false).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(undelivered(&answer, "dropped"), 0, "{answer}");

    let url = format!(
        "{}{}?force=yes",
        server.api,
        resource_path("Broker", NS, "default")
    );
    let response = api_request(Method::DELETE, url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(support::message_contains(&body, "force"), "{body}");
    let (status, answer) = delete(&server, "Broker", "default", false).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_broker_with_a_hung_subscriber_dead_letters_on_forced_delete() {
    let server = TestServer::start_with(|options| {
        options.delete_grace = Duration::from_millis(300);
    })
    .await;
    let broker = unique("deleted-nats");
    let nats_url = std::env::var("RIVULET_NATS_URL")
        .unwrap_or_else(|_| rivulet_channels::nats::DEFAULT_URL.into());
    server
        .apply(&json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": broker, "namespace": NS},
            "data": {"url": nats_url, "storage": "file", "maxAge": "1h"},
        }))
        .await;
    server
        .apply(&json!({
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Broker",
            "metadata": {
                "name": broker,
                "namespace": NS,
                "annotations": {"eventing.knative.dev/broker.class": "NatsJetStreamBroker"},
            },
            "spec": {"config": {"apiVersion": "v1", "kind": "ConfigMap", "name": broker}},
        }))
        .await;
    server.wait_ready("Broker", NS, &broker).await;
    forced_broker_deletion_dead_letters_everything(&server, &broker).await;
}

/// Runs the `rivulet` binary against `server`'s resource API with the test token.
async fn rivulet_cli(server: &TestServer, args: &[&str]) -> std::process::Output {
    support::cli(&server.api)
        .args(args)
        .output()
        .await
        .expect("the rivulet binary runs")
}

/// `rivulet delete broker NAME` refuses with the count and points at `--force`; with it,
/// the broker goes and the numbers are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_refuses_without_force_and_prints_the_numbers_with_it() {
    let server = TestServer::start_with(|options| {
        options.delete_grace = Duration::from_millis(300);
    })
    .await;
    server.create_broker(NS, "cli-held", json!({})).await;
    let hung = Subscriber::with_script(always(Reply::hang())).await;
    server
        .create_trigger(&with_annotation(
            trigger("cli-stuck", "cli-held", &hung.url(), None),
            "rivulet.dev/parallelism",
            "1",
        ))
        .await;
    send_events(&server, "cli-held", "cli", 4).await;
    wait_in_flight(&hung, 1).await;

    let refused = rivulet_cli(&server, &["delete", "broker", "cli-held"]).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "refused: {stderr}");
    assert!(
        stderr.contains("4 undelivered events") && stderr.contains("--force"),
        "the refusal names the count and --force: {stderr}"
    );
    assert!(server.get("Broker", NS, "cli-held").await.is_some());

    let forced = rivulet_cli(&server, &["delete", "broker", "cli-held", "--force"]).await;
    let stdout = String::from_utf8_lossy(&forced.stdout);
    assert!(
        forced.status.success(),
        "forced: {stdout} {}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert!(
        stdout.contains("broker/cli-held deleted") && stdout.contains("0 dead-lettered, 4 dropped"),
        "the numbers are printed: {stdout}"
    );
    assert!(server.get("Broker", NS, "cli-held").await.is_none());
}
