//! `rivulet_trigger_queue_depth` and `rivulet_trigger_lag_seconds` on every channel backend,
//! through `/metrics` of a real server: a trigger whose subscriber refuses events keeps them
//! unacknowledged while it retries, the sampled depth shows them, and it falls back to zero
//! once the subscriber takes them. The embedded log runs always; NATS JetStream and RabbitMQ
//! need their servers (test.sh starts them), Kafka the `kafka-tests` feature.

use rivulet_testkit as support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Recorder, TestEvent, TestServer, WAIT, metric_sample, wait_for};

const NS: &str = "default";
/// Events sent while the subscriber refuses them.
const EVENTS: usize = 5;
const DEPTH: &str = "rivulet_trigger_queue_depth";
const LAG: &str = "rivulet_trigger_lag_seconds";

/// A server that samples queue depths often, so the test need not wait ten seconds a round.
async fn server() -> TestServer {
    TestServer::start_with(|options| {
        options.queue_depth_interval = Duration::from_millis(200);
    })
    .await
}

/// The sampled depth of a trigger, if it has a series.
async fn depth(server: &TestServer, namespace: &str, trigger: &str) -> Option<f64> {
    let text = server.metrics_text().await;
    metric_sample(
        &text,
        DEPTH,
        &[("namespace", namespace), ("trigger", trigger)],
    )
}

/// Sends events through `namespace/broker` to a new trigger whose subscriber answers 503 until
/// they show in its queue depth, then lets the subscriber take them and waits for the depth
/// to be zero. Returns the trigger's name.
async fn depth_rises_and_falls(server: &TestServer, namespace: &str, broker: &str) -> String {
    let recorder = Recorder::start().await;
    recorder.set_status(503);
    let name = support::unique("depth");
    let mut trigger = support::trigger(namespace, &name, broker, &recorder.url);
    // Retried until the subscriber recovers (the tests cap backoff at 2 s): meanwhile every
    // event stays unacknowledged in the trigger's subscription.
    trigger["spec"]["delivery"] =
        json!({"retry": 1000, "backoffPolicy": "linear", "backoffDelay": "PT1S"});
    server.create_trigger(&trigger).await;
    for n in 0..EVENTS {
        server
            .send(
                namespace,
                broker,
                &TestEvent::new(&format!("{name}-{n}"), "test.depth")
                    .data("application/json", format!("{{\"n\":{n}}}")),
            )
            .await;
    }
    // Some backends count events their consumer has not taken yet: wait until the subscriber
    // has refused one too, so the count includes events held while retrying.
    wait_for("the queue depth to count the refused events", WAIT, || {
        let (name, refused) = (name.clone(), !recorder.attempts().is_empty());
        async move {
            depth(server, namespace, &name)
                .await
                .filter(|depth| refused && *depth >= 1.0)
                .map(|_| ())
        }
    })
    .await;
    wait_for("the trigger's lag", WAIT, || {
        let name = name.clone();
        async move {
            let text = server.metrics_text().await;
            metric_sample(&text, LAG, &[("namespace", namespace), ("trigger", &name)])
                .filter(|lag| *lag >= 0.0)
                .map(|_| ())
        }
    })
    .await;

    recorder.set_status(202);
    wait_for("every event to be delivered", WAIT, || {
        let count = recorder.count();
        async move { (count >= EVENTS).then_some(()) }
    })
    .await;
    wait_for("the queue depth to be back at zero", WAIT, || {
        let name = name.clone();
        async move { (depth(server, namespace, &name).await == Some(0.0)).then_some(()) }
    })
    .await;
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_depth_on_the_embedded_log_and_its_series_go_with_the_trigger() {
    let server = server().await;
    let broker = support::unique("depth-embedded");
    server.create_broker(NS, &broker, Value::Null).await;
    let trigger = depth_rises_and_falls(&server, NS, &broker).await;

    server.delete("Trigger", NS, &trigger).await;
    let labels = [("namespace", NS), ("trigger", trigger.as_str())];
    wait_for("the deleted trigger's series to go", WAIT, || async {
        let text = server.metrics_text().await;
        (metric_sample(&text, DEPTH, &labels).is_none()
            && metric_sample(&text, LAG, &labels).is_none())
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_depth_on_nats_jetstream() {
    let server = server().await;
    let broker = support::nats::unique("depth-nats");
    server
        .apply(&json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": broker, "namespace": NS},
            "data": {"url": support::nats::nats_url(), "storage": "file", "maxAge": "1h"},
        }))
        .await;
    server
        .apply(&support::broker_of_class(
            NS,
            &broker,
            "NatsJetStreamBroker",
            "ConfigMap",
            &broker,
        ))
        .await;
    server.wait_ready("Broker", NS, &broker).await;
    depth_rises_and_falls(&server, NS, &broker).await;
    server.delete("Broker", NS, &broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_depth_on_rabbitmq() {
    use support::rabbitmq::{rabbitmq_broker, rabbitmq_uri, uri_secret};
    let server = server().await;
    let broker = support::rabbitmq::unique("depth-rabbitmq");
    let secret = format!("{broker}-rabbitmq");
    server
        .apply(&uri_secret(NS, &secret, &rabbitmq_uri()))
        .await;
    server
        .apply(&rabbitmq_broker(NS, &broker, "Secret", &secret))
        .await;
    server.wait_ready("Broker", NS, &broker).await;
    depth_rises_and_falls(&server, NS, &broker).await;
    server.delete("Broker", NS, &broker).await;
}

// Needs a Kafka-protocol server: built with the `kafka-tests` feature, which ./test.sh turns
// on after starting one (a bare `cargo test` leaves this test out).
#[cfg(feature = "kafka-tests")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_depth_on_kafka() {
    use support::kafka::{bootstrap, broker_config, one_at_a_time};
    let _turn = one_at_a_time().await;
    let server = server().await;
    // A namespace of its own: the topic is named after namespace and broker.
    let namespace = support::kafka::unique("depth-ns");
    server
        .apply(&json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "kafka-config", "namespace": namespace},
            "data": broker_config(&bootstrap(), 2),
        }))
        .await;
    server
        .apply(&support::broker_of_class(
            &namespace,
            "events",
            "Kafka",
            "ConfigMap",
            "kafka-config",
        ))
        .await;
    server.wait_ready("Broker", &namespace, "events").await;
    depth_rises_and_falls(&server, &namespace, "events").await;
    server.delete("Broker", &namespace, "events").await;
}
