//! The same Sequence and Parallel over every channel kind: the in-process ones, and
//! RabbitMQ, NATS JetStream and Kafka over the real servers. Names carry a per-run suffix so
//! that what an interrupted run left in a server never meets this one.

use super::flows::{
    a_parallel_sends_to_each_branch_its_filter_passes, a_sequence_runs_its_steps_in_order,
};
use super::*;

fn unique(name: &str) -> String {
    format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

async fn flows_over(server: &TestServer, template: Value) {
    flows_within(server, template, WAIT).await;
}

/// Each event crosses up to three channels, each with its consumers' own pace.
async fn flows_within(server: &TestServer, template: Value, patience: std::time::Duration) {
    a_sequence_runs_its_steps_in_order(server, template.clone(), &unique("seq"), patience).await;
    a_parallel_sends_to_each_branch_its_filter_passes(server, template, &unique("par"), patience)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_over_in_memory_channels() {
    let server = TestServer::start().await;
    flows_over(
        &server,
        json!({"apiVersion": IN_MEMORY.0, "kind": IN_MEMORY.1}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_over_embedded_channels() {
    let server = TestServer::start().await;
    flows_over(
        &server,
        json!({"apiVersion": EMBEDDED.0, "kind": EMBEDDED.1}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_over_rabbitmq_channels() {
    let server = TestServer::start().await;
    server
        .apply(&support::rabbitmq::uri_secret(
            "default",
            "rabbitmq",
            &support::rabbitmq::rabbitmq_uri(),
        ))
        .await;
    flows_over(
        &server,
        json!({
            "apiVersion": "messaging.rivulet.dev/v1alpha1",
            "kind": "RabbitmqChannel",
            "spec": {"config": {"kind": "Secret", "name": "rabbitmq"}},
        }),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_over_nats_jetstream_channels() {
    let server = TestServer::start().await;
    server
        .apply(&json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"namespace": "knative-eventing", "name": "config-nats"},
            "data": {"url": support::nats::nats_url()},
        }))
        .await;
    flows_over(
        &server,
        json!({"apiVersion": "messaging.knative.dev/v1alpha1", "kind": "NatsJetStreamChannel"}),
    )
    .await;
}

// Needs a Kafka-protocol server: the `kafka-tests` feature, which ./test.sh turns on.
#[cfg(feature = "kafka-tests")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_over_kafka_channels() {
    let _one = support::kafka::one_at_a_time().await;
    let server = TestServer::start().await;
    server
        .apply(&json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"namespace": "knative-eventing", "name": "kafka-channel-config"},
            "data": {"bootstrap.servers": support::kafka::bootstrap()},
        }))
        .await;
    // Every channel's consumer group joins the Kafka server on its own: give them time.
    flows_within(
        &server,
        json!({
            "apiVersion": "messaging.knative.dev/v1beta1",
            "kind": "KafkaChannel",
            "spec": {"numPartitions": 1, "replicationFactor": 1},
        }),
        std::time::Duration::from_secs(90),
    )
    .await;
    // Kafka's client threads must be gone before the test process exits.
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_channel_without_servers_says_where_to_name_them() {
    let server = TestServer::start().await;
    server
        .apply(&channel(
            ("messaging.knative.dev/v1beta1", "KafkaChannel"),
            "k",
            json!({}),
        ))
        .await;
    let condition = server
        .wait_condition("KafkaChannel", "default", "k", "DispatcherReady", "False")
        .await;
    assert!(
        condition["message"]
            .as_str()
            .unwrap()
            .contains("kafka-channel-config"),
        "{condition}"
    );
}
