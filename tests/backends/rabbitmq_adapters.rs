//! RabbitmqSource and RabbitmqSink on a real RabbitMQ: messages of any kind become CloudEvents
//! at the sink, acknowledged only once the sink took them; events posted to the sink are
//! published per the CloudEvents AMQP binding after RabbitMQ's confirm, and the source reads
//! them back as the same events.

use rivulet_testkit as support;
use rivulet_testkit::adapters as adapters_support;
use rivulet_testkit::rabbitmq as rabbitmq_support;

use std::time::Duration;

use adapters_support::{apply, ready_address, wait_ready};
use futures::StreamExt;
use rabbitmq_support::{connect, queue_depth, rabbitmq_uri, unique, uri_secret, wait_consumed};
use rivulet_channels::rabbitmq::amqp;
use rivulet_channels::rabbitmq::lapin::message::Delivery;
use rivulet_channels::rabbitmq::lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use rivulet_channels::rabbitmq::lapin::types::FieldTable;
use rivulet_channels::rabbitmq::lapin::{BasicProperties, Channel, Consumer, ExchangeKind};
use serde_json::{Value, json};
use support::sink_contract::{SinkTarget, sink_contract};
use support::source_contract::{SourceUpstream, source_contract};
use support::{TestServer, http, wait_for};

const SOURCES: &str = "sources.knative.dev/v1alpha1";
const SINKS: &str = "sinks.rivulet.dev/v1alpha1";

fn source(name: &str, queue: &str, exchange: Option<&str>, sink: &str) -> Value {
    let mut resources = json!({"queueName": queue, "parallelism": 1});
    if let Some(exchange) = exchange {
        resources["exchangeName"] = json!(exchange);
    }
    json!({
        "apiVersion": SOURCES,
        "kind": "RabbitmqSource",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "rabbitmqClusterReference": {"connectionSecret": {"name": format!("{name}-secret")}},
            "rabbitmqResourcesConfig": resources,
            "delivery": {"retry": 1, "backoffDelay": "PT0.05S"},
            "ceOverrides": {"extensions": {"origin": "rabbitmq"}},
            "sink": {"uri": sink}
        }
    })
}

/// A RabbitmqSink `name` in namespace `default` publishing to `exchange` of the broker at
/// `uri`.
fn rabbitmq_sink(name: &str, uri: &str, exchange: &str) -> Value {
    json!({
        "apiVersion": SINKS,
        "kind": "RabbitmqSink",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"uri": uri, "exchange": exchange}
    })
}

/// Deletes what a test declared: its queues, then its exchange.
async fn remove(channel: &Channel, queues: &[String], exchange: &str) {
    for queue in queues {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    channel
        .exchange_delete(exchange.into(), Default::default())
        .await
        .unwrap();
}

async fn publish(
    channel: &Channel,
    exchange: &str,
    key: &str,
    properties: BasicProperties,
    body: &[u8],
) {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .expect("publish");
    confirm.await.expect("confirm");
}

/// Deletes the RabbitmqSource `name`.
async fn delete_source(api: &str, name: &str) {
    let status = adapters_support::delete_object(api, SOURCES, "RabbitmqSource", name).await;
    assert!(
        (200..300).contains(&status),
        "DELETE RabbitmqSource {name}: {status}"
    );
}

/// A test's own topic exchange on RabbitMQ, named after the test's unique `name`, with a
/// connection and channel to it. The test removes what it declared.
struct Rabbit {
    name: String,
    exchange: String,
    connection: rivulet_channels::rabbitmq::lapin::Connection,
    channel: Channel,
}

impl Rabbit {
    async fn declare(prefix: &str) -> Rabbit {
        let name = unique(prefix);
        let exchange = format!("{name}.exchange");
        let connection = connect().await;
        let channel = connection.create_channel().await.unwrap();
        declare_topic(&channel, &exchange).await;
        Rabbit {
            name,
            exchange,
            connection,
            channel,
        }
    }

    /// Starts a RabbitmqSource named after the test that reads `queue` (bound to the
    /// exchange) into `sink`, with a Secret of its own; waits until it consumes.
    async fn start_source(&self, api: &str, queue: &str, sink: &str) -> Value {
        let secret = uri_secret("default", &format!("{}-secret", self.name), &rabbitmq_uri());
        support::apply(api, &secret).await;
        apply(api, &source(&self.name, queue, Some(&self.exchange), sink)).await;
        let object = wait_ready(api, SOURCES, "RabbitmqSource", &self.name).await;
        wait_consumed(&self.connection, queue).await;
        object
    }

    /// Waits until `queue` holds `depth` ready messages.
    async fn wait_depth(&self, queue: &str, depth: u32, what: &str) {
        wait_for(what, support::WAIT, || async {
            (queue_depth(&self.connection, queue).await == depth).then_some(())
        })
        .await;
    }
}

/// The next message `consumer` gets.
async fn next_delivery(consumer: &mut Consumer, within: Duration) -> Delivery {
    tokio::time::timeout(within, consumer.next())
        .await
        .expect("a message in the queue")
        .expect("a delivery")
        .expect("no error")
}

/// A binary-mode event `id` of type `ty` (source `/sink-test`) posted to `url`.
fn sink_event(url: &str, id: &str, ty: &str) -> reqwest::RequestBuilder {
    http()
        .post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/sink-test")
        .header("ce-type", ty)
}

async fn declare_topic(channel: &Channel, exchange: &str) {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("exchange.declare");
}

/// A queue of the test's own bound to `exchange` with `binding`, and a consumer of it, to look
/// at messages as they are in RabbitMQ. The test deletes the queue.
async fn inspect(channel: &Channel, exchange: &str, queue: &str, binding: &str) -> Consumer {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            binding.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_turns_messages_into_events_and_acks_after_the_sink() {
    let (server, recorder) = TestServer::start_with_recorder().await;
    let rabbit = Rabbit::declare("src").await;
    let (name, exchange, channel) = (&rabbit.name, &rabbit.exchange, &rabbit.channel);
    let object = rabbit.start_source(&server.api, name, &recorder.url).await;
    assert_eq!(
        object
            .pointer("/status/ceAttributes/0/type")
            .and_then(Value::as_str),
        Some("dev.knative.rabbitmq.event")
    );

    // A plain JSON message, a binary-mode CloudEvent and a structured-mode one.
    publish(
        channel,
        exchange,
        "orders.created",
        BasicProperties::default().with_message_id("plain-1".into()),
        br#"{"order":1}"#,
    )
    .await;
    let envelope = adapters_support::producer_event();
    let (properties, body) = amqp::to_message(&envelope).unwrap();
    publish(channel, exchange, "x", properties, &body).await;
    publish(
        channel,
        exchange,
        "y",
        BasicProperties::default().with_content_type("application/cloudevents+json".into()),
        br#"{"specversion":"1.0","id":"structured-1","source":"/s","type":"com.example.structured","data":{"x":1}}"#,
    )
    .await;

    let plain = recorder.wait_for_id("plain-1").await.event;
    assert_eq!(plain.ty, "dev.knative.rabbitmq.event");
    assert_eq!(
        plain.source,
        format!("/apis/v1/namespaces/default/rabbitmqsources/{name}")
    );
    assert_eq!(plain.data.as_deref(), Some(&br#"{"order":1}"#[..]));
    assert_eq!(plain.datacontenttype.as_deref(), Some("application/json"));
    let binary = recorder.wait_for_id("binary-1").await.event;
    assert_eq!(binary.ty, "com.example.binary");
    assert_eq!(binary.data.as_deref(), Some(&b"hello"[..]));
    assert_eq!(binary.datacontenttype.as_deref(), Some("text/plain"));
    assert_eq!(
        binary
            .attribute("origin")
            .map(|v| v.into_owned())
            .as_deref(),
        Some("rabbitmq"),
        "ceOverrides applied"
    );
    let structured = recorder.wait_for_id("structured-1").await.event;
    assert_eq!(structured.ty, "com.example.structured");
    rabbit
        .wait_depth(name, 0, "the queue to be empty (all acknowledged)")
        .await;

    // The sink fails: the message is held, never acknowledged; deleting the source hands it
    // back to the queue.
    recorder.set_status(503);
    publish(
        channel,
        exchange,
        "z",
        BasicProperties::default().with_message_id("held-1".into()),
        b"{}",
    )
    .await;
    wait_for("delivery attempts of held-1", support::WAIT, || {
        let attempts = recorder
            .attempts()
            .iter()
            .filter(|r| r.event.id == "held-1")
            .count();
        async move { (attempts >= 2).then_some(()) }
    })
    .await;
    assert_eq!(
        queue_depth(&rabbit.connection, name).await,
        0,
        "held-1 is unacknowledged, not ready"
    );
    delete_source(&server.api, name).await;
    rabbit.wait_depth(name, 1, "held-1 back in the queue").await;
    assert_eq!(recorder.count(), 3, "held-1 was never accepted");
    remove(channel, std::slice::from_ref(name), exchange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_publishes_after_confirm_and_the_source_reads_it_back() {
    let (server, recorder) = TestServer::start_with_recorder().await;
    let rabbit = Rabbit::declare("sink").await;
    let (name, exchange, channel) = (&rabbit.name, &rabbit.exchange, &rabbit.channel);
    let inspected = format!("{name}.inspect");
    let mut consumer = inspect(channel, exchange, &inspected, "com.example.#").await;
    let sink = rabbitmq_sink(name, &rabbitmq_uri(), exchange);
    let sink_url = ready_address(&server.api, &sink).await;
    // The source reads what the sink writes.
    let source_queue = format!("{name}.source");
    rabbit
        .start_source(&server.api, &source_queue, &recorder.url)
        .await;

    let paid = sink_event(&sink_url, "via-sink-1", "com.example.paid")
        .header("ce-tenant", "acme")
        .header("content-type", "application/json")
        .body(r#"{"total":12345678901234567890123}"#);
    assert_eq!(support::status_of(paid).await, 202);

    let delivery = next_delivery(&mut consumer, Duration::from_secs(10)).await;
    assert_eq!(
        delivery.routing_key.as_str(),
        "com.example.paid",
        "routing key = event type"
    );
    assert_eq!(*delivery.properties.delivery_mode(), Some(2), "persistent");
    assert_eq!(
        delivery
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str()),
        Some("application/json")
    );
    let headers = delivery.properties.headers().clone().expect("headers");
    assert!(headers.contains_key("cloudEvents_id"));
    assert!(headers.contains_key("cloudEvents_tenant"));
    assert_eq!(delivery.data, br#"{"total":12345678901234567890123}"#);

    let back = recorder.wait_for_id("via-sink-1").await.event;
    assert_eq!(back.ty, "com.example.paid");
    assert_eq!(back.source, "/sink-test");
    assert_eq!(
        back.attribute("tenant").map(|v| v.into_owned()).as_deref(),
        Some("acme")
    );
    assert_eq!(
        back.data.as_deref(),
        Some(&br#"{"total":12345678901234567890123}"#[..])
    );

    // A routing key no queue is bound for (the source's queue takes everything with `#`, so
    // unbind it first): nothing took it, and the sender is told.
    channel
        .queue_unbind(
            source_queue.as_str().into(),
            exchange.as_str().into(),
            "#".into(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let unroutable = sink_event(&sink_url, "nowhere-2", "org.other");
    assert_eq!(support::status_of(unroutable).await, 502);

    // An unreachable RabbitMQ is 503.
    let down = rabbitmq_sink(
        &format!("{name}-down"),
        "amqp://guest:guest@127.0.0.1:1/%2f",
        exchange,
    );
    let down_url = ready_address(&server.api, &down).await;
    let answer = sink_event(&down_url, "down-1", "com.example.paid");
    assert_eq!(support::status_of(answer).await, 503);

    delete_source(&server.api, name).await;
    remove(channel, &[inspected, source_queue], exchange).await;
}

/// RabbitmqSink publishing to a topic exchange, read back from a queue bound to all of it.
struct RabbitmqTarget {
    exchange: String,
    consumer: Consumer,
}

impl SinkTarget for RabbitmqTarget {
    fn sink(&self, name: &str) -> Value {
        rabbitmq_sink(name, &rabbitmq_uri(), &self.exchange)
    }

    fn unreachable_sink(&self, name: &str) -> Value {
        let closed = format!("amqp://guest:guest@127.0.0.1:{}/%2f", support::free_port());
        rabbitmq_sink(name, &closed, &self.exchange)
    }

    async fn next(&mut self) -> (String, Vec<u8>) {
        let delivery = next_delivery(&mut self.consumer, support::WAIT).await;
        let headers = delivery.properties.headers().clone().expect("headers");
        let id = headers
            .inner()
            .get("cloudEvents_id")
            .and_then(amqp::value_text)
            .expect("a cloudEvents_id header");
        (id, delivery.data)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rabbitmq_sink_meets_the_sink_contract() {
    let server = TestServer::start().await;
    let rabbit = Rabbit::declare("contract").await;
    let queue = format!("{}.all", rabbit.name);
    let consumer = inspect(&rabbit.channel, &rabbit.exchange, &queue, "#").await;
    let mut target = RabbitmqTarget {
        exchange: rabbit.exchange.clone(),
        consumer,
    };
    sink_contract(&server.api, &mut target).await;
    remove(&rabbit.channel, &[queue], &rabbit.exchange).await;
}

/// RabbitmqSource reading its own queue: a message published to it.
struct RabbitmqQueue {
    channel: Channel,
}

impl SourceUpstream for RabbitmqQueue {
    fn source(&self, name: &str) -> Value {
        let mut source = source(name, &format!("{name}.queue"), None, "");
        let spec = source["spec"].as_object_mut().unwrap();
        spec.remove("sink");
        spec.remove("ceOverrides");
        spec["rabbitmqClusterReference"] =
            json!({"connectionSecret": {"name": "contract-rabbitmq"}});
        source
    }

    async fn produce(&mut self, name: &str, _source: &Value) {
        let connection = connect().await;
        wait_consumed(&connection, &format!("{name}.queue")).await;
        publish(
            &self.channel,
            "",
            &format!("{name}.queue"),
            BasicProperties::default().with_content_type("application/json".into()),
            br#"{"n":1}"#,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rabbitmq_source_meets_the_source_contract() {
    let server = TestServer::start().await;
    apply(
        &server.api,
        &uri_secret("default", "contract-rabbitmq", &rabbitmq_uri()),
    )
    .await;
    let connection = connect().await;
    let channel = connection.create_channel().await.unwrap();
    source_contract(&server.api, &mut RabbitmqQueue { channel }).await;
}
