//! KafkaSink and KafkaSource end to end over a real Kafka-protocol server (test.sh starts
//! tansu on 127.0.0.1:9092; `RIVULET_KAFKA_BOOTSTRAP` names another).

// Needs a Kafka-protocol server: built with the `kafka-tests` feature, which ./test.sh turns
// on after starting one (a bare `cargo test` leaves these tests out).
#![cfg(feature = "kafka-tests")]

use rivulet_testkit as support;
use rivulet_testkit::adapters as adapters_support;
use rivulet_testkit::kafka as kafka_support;

use std::time::Duration;

use adapters_support::{apply, wait_ready};
use kafka_support::{bootstrap, unique};
use rivulet_channels::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use rivulet_channels::kafka::rdkafka::message::{Header, OwnedHeaders};
use rivulet_channels::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use rivulet_channels::kafka::rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use support::sink_contract::{SinkTarget, sink_contract};
use support::source_contract::{SourceUpstream, source_contract};
use support::{InProcessServer, Recorder, TestEvent, wait_for};

fn kafka_sink(name: &str, topic: &str, mode: &str) -> Value {
    json!({
        "apiVersion": "eventing.knative.dev/v1alpha1",
        "kind": "KafkaSink",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "topic": topic,
            "bootstrapServers": [bootstrap()],
            "contentMode": mode,
            "numPartitions": 1,
            "replicationFactor": 1
        }
    })
}

async fn post_event(url: &str, id: &str, extra: &[(&str, &str)]) -> u16 {
    let mut event = TestEvent::new(id, "test.sink")
        .source("/kafka-sink-test")
        .data("application/json", "{\"n\":1}");
    for (name, value) in extra {
        event = event.attr(name, value);
    }
    event.post_to(url).await
}

async fn read(topic: &str, count: usize) -> Vec<kafka_support::RawRecord> {
    let (servers, topic) = (bootstrap(), topic.to_owned());
    tokio::task::spawn_blocking(move || kafka_support::read_topic(&servers, &topic, count))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_sink_writes_binary_and_structured_records_after_the_acknowledgement() {
    let _turn = kafka_support::one_at_a_time().await;
    let server = InProcessServer::start_with(support::tune_for_tests).await;
    let binary_topic = unique("sink-binary");
    let structured_topic = unique("sink-structured");
    apply(&server.api, &kafka_sink("binary", &binary_topic, "binary")).await;
    apply(
        &server.api,
        &kafka_sink("structured", &structured_topic, "structured"),
    )
    .await;
    let version = "eventing.knative.dev/v1alpha1";
    let binary = wait_ready(&server.api, version, "KafkaSink", "binary").await;
    let structured = wait_ready(&server.api, version, "KafkaSink", "structured").await;
    let binary_url = binary["status"]["address"]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let structured_url = structured["status"]["address"]["url"]
        .as_str()
        .unwrap()
        .to_owned();

    assert_eq!(
        post_event(&binary_url, "b-1", &[("partitionkey", "k1")]).await,
        202
    );
    assert_eq!(post_event(&structured_url, "s-1", &[]).await, 202);

    // The 202 came after the acknowledgement, so the records are there already.
    let records = read(&binary_topic, 1).await;
    let record = &records[0];
    assert_eq!(record.header("ce_id").as_deref(), Some("b-1"));
    assert_eq!(record.header("ce_type").as_deref(), Some("test.sink"));
    assert_eq!(
        record.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(record.key.as_deref(), Some(&b"k1"[..]));
    assert_eq!(record.value.as_deref(), Some(&b"{\"n\":1}"[..]));

    let records = read(&structured_topic, 1).await;
    let record = &records[0];
    assert_eq!(
        record.header("content-type").as_deref(),
        Some("application/cloudevents+json")
    );
    let event: Value = serde_json::from_slice(record.value.as_deref().unwrap()).unwrap();
    assert_eq!(event["id"], "s-1");
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["data"], json!({"n": 1}));
    server.shutdown().await;
}

async fn produce(topic: &str, records: Vec<(Option<&str>, OwnedHeaders, &str)>) {
    let producer: FutureProducer = kafka_support::client(&bootstrap())
        .set("acks", "all")
        .create()
        .unwrap();
    for (key, headers, value) in records {
        let mut record = FutureRecord::to(topic).headers(headers).payload(value);
        if let Some(key) = key {
            record = record.key(key);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .expect("produced");
    }
}

fn headers(pairs: &[(&str, &str)]) -> OwnedHeaders {
    pairs.iter().fold(OwnedHeaders::new(), |headers, (k, v)| {
        headers.insert(Header {
            key: k,
            value: Some(*v),
        })
    })
}

/// The group's committed offset in partition 0 of `topic`, if any.
fn committed(topic: &str, group: &str) -> Option<i64> {
    let consumer: BaseConsumer = kafka_support::client(&bootstrap())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, 0);
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .ok()?;
    match committed.find_partition(topic, 0)?.offset() {
        Offset::Offset(offset) => Some(offset),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_source_passes_cloudevents_through_and_wraps_other_records() {
    let _turn = kafka_support::one_at_a_time().await;
    let topic = unique("source");
    kafka_support::create_topic(&bootstrap(), &topic, 1).await;
    produce(
        &topic,
        vec![
            (
                None,
                headers(&[
                    ("ce_specversion", "1.0"),
                    ("ce_id", "binary-1"),
                    ("ce_source", "/producer"),
                    ("ce_type", "test.binary"),
                    ("content-type", "text/plain"),
                ]),
                "hello",
            ),
            (
                None,
                headers(&[("content-type", "application/cloudevents+json")]),
                r#"{"specversion":"1.0","id":"structured-1","source":"/producer","type":"test.structured","data":{"x":1}}"#,
            ),
            (Some("user-9"), headers(&[("Trace-Id", "abc")]), "plain bytes"),
        ],
    )
    .await;

    let server = InProcessServer::start_with(support::tune_for_tests).await;
    let recorder = Recorder::start().await;
    // The sink refuses at first: nothing may be committed until it accepts.
    recorder.set_status(503);
    let group = unique("source-group");
    let source = json!({
        "apiVersion": "sources.knative.dev/v1beta1",
        "kind": "KafkaSource",
        "metadata": {"name": "from-kafka", "namespace": "default"},
        "spec": {
            "bootstrapServers": [bootstrap()],
            "topics": [topic],
            "consumerGroup": group,
            "initialOffset": "earliest",
            "ordering": "ordered",
            "sink": {"uri": recorder.url}
        }
    });
    apply(&server.api, &source).await;
    wait_ready(
        &server.api,
        "sources.knative.dev/v1beta1",
        "KafkaSource",
        "from-kafka",
    )
    .await;
    wait_for(
        "attempts at the refusing sink",
        Duration::from_secs(30),
        || {
            let n = recorder.attempts().len();
            async move { (n >= 2).then_some(()) }
        },
    )
    .await;
    let (t, g) = (topic.clone(), group.clone());
    let while_refused = tokio::task::spawn_blocking(move || committed(&t, &g))
        .await
        .unwrap();
    assert!(
        while_refused.unwrap_or(0) == 0,
        "an offset was committed before the sink accepted: {while_refused:?}"
    );

    recorder.set_status(202);
    let binary = recorder.wait_for_id("binary-1").await;
    assert_eq!(binary.event.ty, "test.binary");
    assert_eq!(binary.event.data.as_deref(), Some(&b"hello"[..]));
    let structured = recorder.wait_for_id("structured-1").await;
    assert_eq!(structured.event.ty, "test.structured");
    let plain = recorder.wait_for_id("partition:0/offset:2").await;
    assert_eq!(plain.event.ty, "dev.knative.kafka.event");
    assert_eq!(
        plain.event.source,
        format!("/apis/v1/namespaces/default/kafkasources/from-kafka#{topic}")
    );
    assert_eq!(plain.event.subject.as_deref(), Some("partition:0#2"));
    assert_eq!(plain.event.attribute("key").as_deref(), Some("user-9"));
    assert_eq!(
        plain.event.attribute("kafkaheadertraceid").as_deref(),
        Some("abc")
    );
    assert_eq!(plain.event.data.as_deref(), Some(&b"plain bytes"[..]));
    let ids: Vec<String> = recorder.events().into_iter().map(|e| e.id).collect();
    assert_eq!(
        ids,
        ["binary-1", "structured-1", "partition:0/offset:2"],
        "in order, each once"
    );

    let (t, g) = (topic.clone(), group.clone());
    wait_for(
        "the offsets to be committed",
        Duration::from_secs(20),
        || {
            let (t, g) = (t.clone(), g.clone());
            async move {
                let offset = tokio::task::spawn_blocking(move || committed(&t, &g))
                    .await
                    .unwrap();
                (offset == Some(3)).then_some(())
            }
        },
    )
    .await;
    server.shutdown().await;
}

/// KafkaSink in binary mode, read back from its topic.
struct KafkaTarget {
    topic: String,
    seen: usize,
}

impl SinkTarget for KafkaTarget {
    fn sink(&self, name: &str) -> Value {
        kafka_sink(name, &self.topic, "binary")
    }

    fn unreachable_sink(&self, name: &str) -> Value {
        // A closed port; no numPartitions, so the sink does not try to create the topic.
        json!({
            "apiVersion": "eventing.knative.dev/v1alpha1",
            "kind": "KafkaSink",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"topic": self.topic,
                     "bootstrapServers": [format!("127.0.0.1:{}", support::free_port())],
                     "contentMode": "binary"}
        })
    }

    async fn next(&mut self) -> (String, Vec<u8>) {
        self.seen += 1;
        let record = read(&self.topic, self.seen)
            .await
            .pop()
            .expect("the record is in the topic");
        let id = record.header("ce_id").expect("a ce_id header");
        (id, record.value.unwrap_or_default())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_kafka_sink_meets_the_sink_contract() {
    let _turn = kafka_support::one_at_a_time().await;
    let server = InProcessServer::start_with(support::tune_for_tests).await;
    let mut target = KafkaTarget {
        topic: unique("sink-contract"),
        seen: 0,
    };
    sink_contract(&server.api, &mut target).await;
    server.shutdown().await;
}

/// KafkaSource reading a topic from its start: a record produced to it.
struct KafkaTopic {
    topic: String,
}

impl SourceUpstream for KafkaTopic {
    fn source(&self, name: &str) -> Value {
        json!({
            "apiVersion": "sources.knative.dev/v1beta1",
            "kind": "KafkaSource",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "bootstrapServers": [bootstrap()],
                "topics": [self.topic],
                "consumerGroup": unique("contract-group"),
                "initialOffset": "earliest"
            }
        })
    }

    async fn produce(&mut self, _name: &str, _source: &Value) {
        produce(&self.topic, vec![(None, OwnedHeaders::new(), r#"{"n":1}"#)]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_kafka_source_meets_the_source_contract() {
    let _turn = kafka_support::one_at_a_time().await;
    let server = InProcessServer::start_with(support::tune_for_tests).await;
    let topic = unique("source-contract");
    kafka_support::create_topic(&bootstrap(), &topic, 1).await;
    source_contract(&server.api, &mut KafkaTopic { topic }).await;
    server.shutdown().await;
}
