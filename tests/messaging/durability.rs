//! A `202` from a channel on a durable backend survives `kill -9`: the real binary takes
//! events into a channel whose Subscription delivers slowly, is killed mid-flow, and a new
//! process on the same data folder delivers every event it acknowledged.

use super::*;

use support::{ChildServer, durability};

/// Runs the kill -9 contract over a channel of `kind` with `spec`, after `setup` objects.
async fn survives_kill_9(kind: (&str, &str), spec: Value, setup: &[Value], backend: &str) {
    let data = tempfile::tempdir().unwrap();
    let recorder = durability::slow_subscriber().await;
    let server = ChildServer::spawn(data.path(), &[]).await;
    for object in setup {
        support::apply(&server.api, object).await;
    }
    let name = format!(
        "durable-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    support::apply(&server.api, &channel(kind, &name, spec)).await;
    let one_at_a_time = support::with_annotation(
        subscription(
            &name,
            kind,
            &name,
            json!({"subscriber": {"uri": recorder.url}}),
        ),
        "rivulet.dev/parallelism",
        "1",
    );
    support::apply(&server.api, &one_at_a_time).await;
    support::wait_ready(&server.api, "Subscription", "default", &name).await;
    let ready = support::wait_ready(&server.api, kind.1, "default", &name).await;
    let url = ready["status"]["address"]["url"]
        .as_str()
        .unwrap()
        .to_string();
    let restarted =
        durability::kill_9_loses_no_acknowledged_event(server, &url, &recorder, 300, backend).await;
    // Gone with its channel: nothing is left in the backend for the next run.
    support::adapters::delete_object(&restarted.api, kind.0, kind.1, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_embedded_channel_loses_no_acknowledged_event_to_kill_9() {
    survives_kill_9(EMBEDDED, json!({}), &[], "embedded channel").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rabbitmq_channel_loses_no_acknowledged_event_to_kill_9() {
    let secret =
        support::rabbitmq::uri_secret("default", "rabbitmq", &support::rabbitmq::rabbitmq_uri());
    survives_kill_9(
        ("messaging.rivulet.dev/v1alpha1", "RabbitmqChannel"),
        json!({"config": {"kind": "Secret", "name": "rabbitmq"}}),
        &[secret],
        "RabbitMQ channel",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nats_jetstream_channel_loses_no_acknowledged_event_to_kill_9() {
    let config = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"namespace": "knative-eventing", "name": "config-nats"},
        "data": {"url": support::nats::nats_url()},
    });
    survives_kill_9(
        ("messaging.knative.dev/v1alpha1", "NatsJetStreamChannel"),
        json!({}),
        &[config],
        "NATS JetStream channel",
    )
    .await;
}

// Needs a Kafka-protocol server: the `kafka-tests` feature, which ./test.sh turns on.
#[cfg(feature = "kafka-tests")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kafka_channel_loses_no_acknowledged_event_to_kill_9() {
    let _one = support::kafka::one_at_a_time().await;
    let config = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"namespace": "knative-eventing", "name": "kafka-channel-config"},
        "data": {"bootstrap.servers": support::kafka::bootstrap()},
    });
    survives_kill_9(
        ("messaging.knative.dev/v1beta1", "KafkaChannel"),
        json!({"numPartitions": 1, "replicationFactor": 1}),
        &[config],
        "Kafka channel",
    )
    .await;
}
