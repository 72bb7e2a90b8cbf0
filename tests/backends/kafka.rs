//! The Kafka broker class end to end, over a real Kafka-protocol server (test.sh starts
//! tansu on 127.0.0.1:9092; `RIVULET_KAFKA_BOOTSTRAP` names another).
//!
//! The first test checks the server itself: a consumer group resumes exactly where its
//! committed offsets say. A server that fails it would make every other test here fail for
//! reasons that are not Rivulet's.

// Needs a Kafka-protocol server: built with the `kafka-tests` feature, which ./test.sh turns
// on after starting one (a bare `cargo test` leaves these tests out).
#![cfg(feature = "kafka-tests")]

use rivulet_testkit as support;
use rivulet_testkit::kafka as kafka_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kafka_support::{bootstrap, unique};
use rivulet_channels::kafka::rdkafka::Message;
use rivulet_channels::kafka::rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rivulet_channels::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use rivulet_channels::kafka::rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use support::{InProcessServer, Recorder, TestEvent, apply, wait_for, wait_ready};

/// Consumes up to `count` records in group `group` (joining it) and commits what it read.
fn consume_and_commit(servers: &str, topic: &str, group: &str, count: usize) -> Vec<String> {
    let consumer: BaseConsumer = kafka_support::client(servers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("a consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut values = Vec::new();
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let quiet_after = Duration::from_secs(3);
    let mut last_record = Instant::now();
    while values.len() < count && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                values.push(String::from_utf8_lossy(message.payload().unwrap_or_default()).into());
                next.insert(message.partition(), message.offset() + 1);
                last_record = Instant::now();
            }
            Some(Err(error)) => panic!("consuming failed: {error}"),
            None if !values.is_empty() && last_record.elapsed() > quiet_after => break,
            None => {}
        }
    }
    let mut commit = TopicPartitionList::new();
    for (partition, offset) in &next {
        commit
            .add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .expect("a commit");
    }
    if commit.count() > 0 {
        consumer.commit(&commit, CommitMode::Sync).expect("commit");
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_resumes_a_group_from_its_committed_offsets() {
    let _turn = kafka_support::one_at_a_time().await;
    let servers = bootstrap();
    let topic = unique("resume-check");
    kafka_support::create_topic(&servers, &topic, 3).await;
    let producer: FutureProducer = kafka_support::client(&servers)
        .set("acks", "all")
        .create()
        .expect("a producer");
    // 300 records in batches of 30, spread over the three partitions by key.
    for batch in 0..10 {
        let sends: Vec<_> = (0..30)
            .map(|n| {
                let value = format!("r{}", batch * 30 + n);
                let key = format!("k{n}");
                let producer = producer.clone();
                let topic = topic.clone();
                async move {
                    producer
                        .send(
                            FutureRecord::to(&topic).key(&key).payload(&value),
                            Duration::from_secs(10),
                        )
                        .await
                        .map(drop)
                        .map_err(|(e, _)| e)
                }
            })
            .collect();
        for result in futures::future::join_all(sends).await {
            result.expect("the server acknowledged a record");
        }
    }
    let group = unique("resume-group");
    let (servers2, topic2, group2) = (servers.clone(), topic.clone(), group.clone());
    let first =
        tokio::task::spawn_blocking(move || consume_and_commit(&servers2, &topic2, &group2, 120))
            .await
            .unwrap();
    assert_eq!(first.len(), 120, "the first consumer read 120 records");
    let (servers2, topic2, group2) = (servers.clone(), topic.clone(), group.clone());
    let rest =
        tokio::task::spawn_blocking(move || consume_and_commit(&servers2, &topic2, &group2, 1_000))
            .await
            .unwrap();
    let first: BTreeSet<String> = first.into_iter().collect();
    let rest_set: BTreeSet<String> = rest.iter().cloned().collect();
    assert_eq!(
        rest.len(),
        180,
        "the second consumer got exactly the other 180"
    );
    assert_eq!(rest_set.len(), 180, "no record twice");
    assert!(
        first.is_disjoint(&rest_set),
        "nothing of the first 120 again"
    );
    let all: BTreeSet<String> = first.union(&rest_set).cloned().collect();
    assert_eq!(all.len(), 300, "all 300 records read once");
}

fn config_map(namespace: &str, name: &str, partitions: u32) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": kafka_support::broker_config(&bootstrap(), partitions),
    })
}

fn kafka_broker(namespace: &str, name: &str, config: &str) -> Value {
    support::broker_of_class(namespace, name, "Kafka", "ConfigMap", config)
}

/// A server with one Kafka broker of `partitions` partitions in a fresh namespace.
async fn server_with_broker(partitions: u32) -> (InProcessServer, String) {
    let server = InProcessServer::start_with(support::tune_for_tests).await;
    let namespace = unique("ns");
    apply(
        &server.api,
        &config_map(&namespace, "kafka-config", partitions),
    )
    .await;
    apply(
        &server.api,
        &kafka_broker(&namespace, "events", "kafka-config"),
    )
    .await;
    wait_ready(&server.api, "Broker", &namespace, "events").await;
    (server, namespace)
}

async fn post(base: &str, namespace: &str, id: &str, extra: &[(&str, &str)], data: &str) -> u16 {
    let mut event = TestEvent::new(id, "test.kafka")
        .source("/kafka-tests")
        .data("application/json", data.to_owned());
    for (name, value) in extra {
        event = event.attr(name, value);
    }
    event.post_to(&format!("{base}/{namespace}/events")).await
}

/// A subscriber taking `delay_ms` an event, behind trigger `name` of broker `events` with
/// `annotations`; returns once the trigger is Ready.
async fn slow_subscriber(
    server: &InProcessServer,
    namespace: &str,
    name: &str,
    delay_ms: u64,
    annotations: Value,
) -> Recorder {
    let recorder = Recorder::start().await;
    recorder.set_delay(Duration::from_millis(delay_ms));
    let mut trigger = support::trigger(namespace, name, "events", &recorder.url);
    trigger["metadata"]["annotations"] = annotations;
    apply(&server.api, &trigger).await;
    wait_ready(&server.api, "Trigger", namespace, name).await;
    recorder
}

async fn wait_count(recorder: &Recorder, count: usize) {
    wait_for(
        &format!("{count} deliveries"),
        Duration::from_secs(30),
        || {
            let n = recorder.count();
            async move { (n >= count).then_some(()) }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_broker_stores_binary_mode_records_and_delivers_them() {
    let _turn = kafka_support::one_at_a_time().await;
    let (server, namespace) = server_with_broker(3).await;
    let topic = format!("knative-broker-{namespace}-events");
    assert_eq!(
        kafka_support::partitions_of(&bootstrap(), &topic),
        Some(3),
        "the broker created its topic with default.topic.partitions"
    );
    let broker = support::get(&server.api, "Broker", &namespace, "events")
        .await
        .unwrap();
    assert!(broker.pointer("/status/address/url").is_some(), "{broker}");

    let recorder = Recorder::start().await;
    support::apply_trigger_ready(&server.api, &namespace, "all", "events", &recorder.url).await;
    assert_eq!(
        post(
            &server.base,
            &namespace,
            "keyed",
            &[("partitionkey", "customer-7")],
            "{\"n\":1}"
        )
        .await,
        202
    );
    assert_eq!(
        post(&server.base, &namespace, "plain", &[], "{\"n\":2}").await,
        202
    );
    let keyed = recorder.wait_for_id("keyed").await;
    assert_eq!(keyed.event.data.as_deref(), Some(&b"{\"n\":1}"[..]));
    assert_eq!(
        keyed.event.attribute("partitionkey").as_deref(),
        Some("customer-7")
    );
    recorder.wait_for_id("plain").await;

    let servers = bootstrap();
    let records =
        tokio::task::spawn_blocking(move || kafka_support::read_topic(&servers, &topic, 2))
            .await
            .unwrap();
    let keyed = records
        .iter()
        .find(|r| r.header("ce_id").as_deref() == Some("keyed"))
        .expect("the keyed event is in the topic");
    assert_eq!(
        keyed.key.as_deref(),
        Some(&b"customer-7"[..]),
        "keyed by partitionkey"
    );
    assert_eq!(keyed.header("ce_specversion").as_deref(), Some("1.0"));
    assert_eq!(keyed.header("ce_source").as_deref(), Some("/kafka-tests"));
    assert_eq!(keyed.header("ce_type").as_deref(), Some("test.kafka"));
    assert_eq!(
        keyed.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        keyed.value.as_deref(),
        Some(&b"{\"n\":1}"[..]),
        "the data is the value"
    );
    let plain = records
        .iter()
        .find(|r| r.header("ce_id").as_deref() == Some("plain"))
        .expect("the plain event is in the topic");
    assert_eq!(plain.key, None, "no partitionkey, no key");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ordered_trigger_keeps_the_order_of_each_partition_key() {
    let _turn = kafka_support::one_at_a_time().await;
    let (server, namespace) = server_with_broker(3).await;
    let order = json!({"kafka.eventing.knative.dev/delivery.order": "ordered"});
    let recorder = slow_subscriber(&server, &namespace, "ordered", 20, order).await;
    let keys = ["a", "b", "c", "d"];
    for n in 0..15 {
        for key in keys {
            let id = format!("{key}-{n}");
            assert_eq!(
                post(
                    &server.base,
                    &namespace,
                    &id,
                    &[("partitionkey", key)],
                    "{}"
                )
                .await,
                202
            );
        }
    }
    wait_count(&recorder, 60).await;
    let events = recorder.events();
    for key in keys {
        let sequence: Vec<usize> = events
            .iter()
            .filter(|e| e.attribute("partitionkey").as_deref() == Some(key))
            .map(|e| e.id.rsplit('-').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(
            sequence,
            (0..15).collect::<Vec<_>>(),
            "key {key} out of order"
        );
    }
    // One event per partition at a time, partitions in parallel (the four keys fall in
    // more than one of the three partitions).
    let concurrent = recorder.max_in_flight();
    assert!(
        (2..=3).contains(&concurrent),
        "{concurrent} deliveries at once: ordered delivery is one per partition, partitions in parallel"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unordered_trigger_delivers_in_parallel() {
    let _turn = kafka_support::one_at_a_time().await;
    let (server, namespace) = server_with_broker(3).await;
    let order = json!({
        "kafka.eventing.knative.dev/delivery.order": "unordered",
        "rivulet.dev/parallelism": "20"
    });
    let recorder = slow_subscriber(&server, &namespace, "parallel", 300, order).await;
    for n in 0..40 {
        assert_eq!(
            post(&server.base, &namespace, &format!("u-{n}"), &[], "{}").await,
            202
        );
    }
    wait_count(&recorder, 40).await;
    let concurrent = recorder.max_in_flight();
    assert!(
        (2..=20).contains(&concurrent),
        "{concurrent} deliveries at once: unordered delivery must be parallel and bounded by 20"
    );
    let ids: BTreeSet<String> = recorder.events().into_iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 40);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_trigger_deletes_its_group_and_deleting_the_broker_its_topic() {
    let _turn = kafka_support::one_at_a_time().await;
    let (server, namespace) = server_with_broker(1).await;
    let topic = format!("knative-broker-{namespace}-events");
    let recorder = Recorder::start().await;
    support::apply_trigger_ready(&server.api, &namespace, "gone", "events", &recorder.url).await;
    assert_eq!(post(&server.base, &namespace, "one", &[], "{}").await, 202);
    recorder.wait_for_id("one").await;
    let group = format!("{topic}.trigger-gone");
    let servers = bootstrap();
    let has_offsets = |group: String, topic: String| {
        let servers = servers.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                kafka_support::group_has_offsets(&servers, &group, &topic)
            })
            .await
            .unwrap()
        }
    };
    assert!(
        has_offsets(group.clone(), topic.clone()).await,
        "the trigger's consumer group {group} exists"
    );

    support::Api::new(&server.base, &server.api)
        .delete("Trigger", &namespace, "gone")
        .await;
    wait_for(
        "the consumer group to be deleted",
        Duration::from_secs(20),
        || {
            let check = has_offsets(group.clone(), topic.clone());
            async move { (!check.await).then_some(()) }
        },
    )
    .await;

    support::Api::new(&server.base, &server.api)
        .delete("Broker", &namespace, "events")
        .await;
    let (s, t) = (servers.clone(), topic.clone());
    wait_for("the topic to be deleted", Duration::from_secs(20), || {
        let (s, t) = (s.clone(), t.clone());
        async move {
            tokio::task::spawn_blocking(move || kafka_support::partitions_of(&s, &t).is_none())
                .await
                .unwrap()
                .then_some(())
        }
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_without_bootstrap_servers_is_not_ready_and_says_why() {
    let _turn = kafka_support::one_at_a_time().await;
    let server = InProcessServer::start_with(support::tune_for_tests).await;
    let namespace = unique("ns");
    apply(
        &server.api,
        &json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "empty", "namespace": namespace},
                "data": {"default.topic.partitions": "1"}}),
    )
    .await;
    apply(&server.api, &kafka_broker(&namespace, "events", "empty")).await;
    let broker = support::wait_status(&server.api, "Broker", &namespace, "events", "False").await;
    let text = broker.to_string();
    assert!(text.contains("bootstrap.servers"), "{text}");
    server.shutdown().await;
}
