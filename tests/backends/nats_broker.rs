//! NATS JetStream as a broker's channel, end to end over real HTTP against the NATS server at
//! `RIVULET_NATS_URL` (default `nats://127.0.0.1:4222`): broker classes, filters pushed down
//! to the consumer, retries, ordered and parallel delivery, and the stream and consumers the
//! reconcilers create and remove.

use rivulet_testkit as support;
use rivulet_testkit::nats::{nats_url, unique};

use std::time::Duration;

use rivulet_channels::nats::async_nats;
use rivulet_channels::nats::async_nats::jetstream;
use serde_json::{Value, json};
use support::{
    Recorded, Reply, Subscriber, TestEvent, TestServer, per_attempt, script, trigger, wait_for,
    with_annotation,
};

const NS: &str = "default";
const ORDER: &str = "kafka.eventing.knative.dev/delivery.order";

fn config_map(name: &str, data: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NS},
        "data": data,
    })
}

fn nats_broker(name: &str, class: &str, config: &str) -> Value {
    json!({
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": {
            "name": name,
            "namespace": NS,
            "annotations": {"eventing.knative.dev/broker.class": class},
        },
        "spec": {"config": {"apiVersion": "v1", "kind": "ConfigMap", "name": config}},
    })
}

async fn jetstream() -> jetstream::Context {
    let client = async_nats::connect(nats_url())
        .await
        .expect("the NATS server is reachable (start it with test.sh)");
    jetstream::new(client)
}

/// Applies ConfigMap `name` with `config` and a broker `name` of `class` using it.
async fn apply_nats_broker(server: &TestServer, name: &str, class: &str, config: Value) {
    server.apply(&config_map(name, config)).await;
    server.apply(&nats_broker(name, class, name)).await;
}

/// Applies a ConfigMap and a `NatsJetStreamBroker` broker using it; waits until it is ready.
async fn create_nats_broker(server: &TestServer, name: &str) {
    let config = json!({"url": nats_url(), "storage": "file", "maxAge": "1h"});
    apply_nats_broker(server, name, "NatsJetStreamBroker", config).await;
    server.wait_ready("Broker", NS, name).await;
}

fn ids(received: &[Recorded]) -> Vec<String> {
    received.iter().map(Recorded::id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_broker_delivers_filtered_events_and_cleans_up_after_itself() {
    let server = TestServer::start().await;
    let broker = unique("nats-e2e");
    create_nats_broker(&server, &broker).await;
    let stream_name = rivulet_channels::nats::stream_name(NS, &broker).unwrap();
    let js = jetstream().await;
    let mut stream = js
        .get_stream(&stream_name)
        .await
        .expect("the broker's stream exists");
    let info = stream.info().await.unwrap().clone();
    assert_eq!(
        info.config.max_age,
        Duration::from_secs(3600),
        "maxAge applied"
    );

    let orders = Subscriber::start().await;
    let mut filtered = trigger(NS, "orders", &broker, &orders.url());
    filtered["spec"]["filter"] = json!({"attributes": {"type": "order.created"}});
    server.create_trigger(&filtered).await;
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_consumer("trigger-orders")
        .await
        .expect("the trigger's durable consumer exists");
    assert!(
        consumer
            .cached_info()
            .config
            .filter_subject
            .ends_with(".order%2Ecreated"),
        "the type filter is pushed down to the consumer: {:?}",
        consumer.cached_info().config.filter_subject
    );

    for (id, ty) in [
        ("a", "order.created"),
        ("b", "order.shipped"),
        ("c", "order.created"),
    ] {
        server
            .send(
                NS,
                &broker,
                &TestEvent::new(id, ty).data("application/json", "{\"n\":1}"),
            )
            .await;
    }
    let received = orders.wait_for(2).await;
    // Deliveries run in parallel: the two may arrive in either order.
    let mut got = ids(&received);
    got.sort();
    assert_eq!(got, ["a", "c"]);
    assert_eq!(received[0].event().data.as_deref(), Some(&b"{\"n\":1}"[..]));

    server.delete("Trigger", NS, "orders").await;
    wait_for(
        "the consumer to be deleted",
        Duration::from_secs(20),
        || {
            let stream = stream.clone();
            async move {
                stream
                    .consumer_info("trigger-orders")
                    .await
                    .is_err()
                    .then_some(())
            }
        },
    )
    .await;
    server.delete("Broker", NS, &broker).await;
    wait_for("the stream to be deleted", Duration::from_secs(20), || {
        let js = js.clone();
        let stream_name = stream_name.clone();
        async move { js.get_stream(&stream_name).await.is_err().then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_the_dispatchers_and_the_event_is_acknowledged_once_delivered() {
    let server = TestServer::start().await;
    let broker = unique("nats-retry");
    create_nats_broker(&server, &broker).await;
    let flaky = Subscriber::with_script(per_attempt(
        vec![Reply::status(500), Reply::status(503)],
        Reply::ok(),
    ))
    .await;
    let mut manifest = trigger(NS, "flaky", &broker, &flaky.url());
    manifest["spec"]["delivery"] =
        json!({"retry": 3, "backoffPolicy": "linear", "backoffDelay": "PT0.1S"});
    server.create_trigger(&manifest).await;
    server
        .send(NS, &broker, &TestEvent::new("r-1", "retry.me"))
        .await;
    let attempts = flaky.wait_for(3).await;
    assert_eq!(ids(&attempts), ["r-1", "r-1", "r-1"]);
    // Acknowledged after the outcome: nothing comes again, even past the ack wait.
    tokio::time::sleep(rivulet_channels::nats::DEFAULT_ACK_WAIT + Duration::from_secs(1)).await;
    assert_eq!(flaky.count(), 3, "a delivered event was delivered again");
    let stream_name = rivulet_channels::nats::stream_name(NS, &broker).unwrap();
    let stream = jetstream().await.get_stream(&stream_name).await.unwrap();
    let info = stream.consumer_info("trigger-flaky").await.unwrap();
    assert_eq!(info.num_ack_pending, 0);
    assert_eq!(info.num_pending, 0);
    server.delete("Broker", NS, &broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_and_parallel_triggers_on_nats() {
    let server = TestServer::start().await;
    let broker = unique("nats-order");
    create_nats_broker(&server, &broker).await;
    let in_order = Subscriber::with_script(script(|r: &Recorded| {
        let slow = r.id().ends_with(['0', '3', '7']);
        Reply::ok().delay(Duration::from_millis(if slow { 15 } else { 0 }))
    }))
    .await;
    let parallel = Subscriber::with_script(support::always(
        Reply::ok().delay(Duration::from_millis(200)),
    ))
    .await;
    server
        .create_trigger(&with_annotation(
            trigger(NS, "in-order", &broker, &in_order.url()),
            ORDER,
            "ordered",
        ))
        .await;
    server
        .create_trigger(&with_annotation(
            trigger(NS, "parallel", &broker, &parallel.url()),
            "rivulet.dev/parallelism",
            "8",
        ))
        .await;
    let sent: Vec<String> = (0..40).map(|i| format!("o-{i:02}")).collect();
    for id in &sent {
        server
            .send(NS, &broker, &TestEvent::new(id, "com.example"))
            .await;
    }
    assert_eq!(ids(&in_order.wait_for(40).await), sent);
    assert_eq!(in_order.max_in_flight(), 1, "ordered means one at a time");
    parallel.wait_for(40).await;
    assert!(
        (2..=8).contains(&parallel.max_in_flight()),
        "parallel deliveries up to the bound, got {}",
        parallel.max_in_flight()
    );
    server.delete("Broker", NS, &broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_template_nats_jetstream_channel_selects_nats() {
    let server = TestServer::start().await;
    let broker = unique("nats-mt");
    let config = json!({
        "channel-template-spec": "apiVersion: messaging.knative.dev/v1alpha1\nkind: NatsJetStreamChannel\n",
        "url": nats_url(),
        "storage": "memory",
    });
    apply_nats_broker(&server, &broker, "MTChannelBasedBroker", config).await;
    let ready = server.wait_ready("Broker", NS, &broker).await;
    let message = ready.to_string();
    assert!(message.contains("nats channel"), "{message}");
    let stream_name = rivulet_channels::nats::stream_name(NS, &broker).unwrap();
    let mut stream = jetstream().await.get_stream(&stream_name).await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().config.storage,
        jetstream::stream::StorageType::Memory
    );
    let sub = Subscriber::start().await;
    server
        .create_trigger(&trigger(NS, "all", &broker, &sub.url()))
        .await;
    server.send(NS, &broker, &TestEvent::new("mt-1", "x")).await;
    assert_eq!(ids(&sub.wait_for(1).await), ["mt-1"]);
    server.delete("Broker", NS, &broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_nats_setting_is_reported_on_the_broker() {
    let server = TestServer::start().await;
    let broker = unique("nats-bad");
    let config = json!({"url": nats_url(), "storage": "tape"});
    apply_nats_broker(&server, &broker, "NatsJetStreamBroker", config).await;
    let condition = server
        .wait_condition("Broker", NS, &broker, "Ready", "False")
        .await;
    assert!(
        condition.to_string().contains("storage"),
        "the condition names the setting: {condition}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_refuses_events_with_retry_after() {
    let server = TestServer::start().await;
    let broker = unique("nats-full");
    let config = json!({"url": nats_url(), "storage": "file", "maxAge": "1h", "maxBytes": "8192"});
    apply_nats_broker(&server, &broker, "NatsJetStreamBroker", config).await;
    server.wait_ready("Broker", NS, &broker).await;

    let data = "x".repeat(1024);
    let mut accepted = 0;
    let mut refusal = None;
    for n in 0..64 {
        let event = TestEvent::new(&format!("e{n}"), "test.full").data("text/plain", data.clone());
        let response = http_post(&server, &broker, &event).await;
        match response.status().as_u16() {
            202 => accepted += 1,
            503 => {
                refusal = Some(response);
                break;
            }
            other => panic!("ingress answered {other} for a full stream"),
        }
    }
    let refusal = refusal.expect("ingress refuses once the stream reached maxBytes");
    assert!(accepted > 0, "events fit before the stream is full");
    assert!(
        refusal.headers().get("retry-after").is_some(),
        "a full stream's 503 says when to retry"
    );
    let body = refusal.text().await.unwrap_or_default();
    assert!(
        body.contains("maxBytes"),
        "the refusal names the limit: {body}"
    );
    server.delete("Broker", NS, &broker).await;
}

async fn http_post(server: &TestServer, broker: &str, event: &TestEvent) -> reqwest::Response {
    support::http()
        .post(server.ingress_url(NS, broker))
        .headers(event.headers())
        .body(event.body.clone())
        .send()
        .await
        .expect("ingress answers")
}
