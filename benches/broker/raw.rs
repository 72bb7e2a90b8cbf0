//! The raw baselines of the Kafka, RabbitMQ and NATS channels: the same binary-mode
//! CloudEvents published and consumed with the client library alone (rdkafka, lapin,
//! async-nats), on a fresh topic, queue or stream, with the durability the Rivulet channel
//! asks for (`acks=all`; persistent messages with publisher confirms; file storage with
//! acknowledged publishes), and consumer acknowledgements where the protocol has them.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use rivulet_channels::Envelope;

use crate::{Channel, EVENT_TYPE, SENT_AT_ATTRIBUTE, Subscriber};

/// Kafka partitions of the raw topic and of the Rivulet broker's topic.
pub const KAFKA_PARTITIONS: i32 = 3;

pub fn kafka_servers() -> String {
    std::env::var("RIVULET_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

pub fn rabbitmq_uri() -> String {
    std::env::var("RIVULET_RABBITMQ_URI")
        .unwrap_or_else(|_| rivulet_channels::rabbitmq::DEFAULT_URI.to_owned())
}

pub fn nats_url() -> String {
    std::env::var("RIVULET_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A name no earlier run used.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{nanos}")
}

/// The event the raw rows publish: what the load generator posts to ingress, as a channel
/// carries it.
fn envelope(id: u64, payload: &Bytes, sent_at: Option<u64>) -> Envelope {
    let mut attributes = vec![
        ("specversion".to_owned(), "1.0".to_owned()),
        ("id".to_owned(), id.to_string()),
        ("source".to_owned(), "/bench/load".to_owned()),
        ("type".to_owned(), EVENT_TYPE.to_owned()),
        ("datacontenttype".to_owned(), "application/json".to_owned()),
    ];
    if let Some(sent_at) = sent_at {
        attributes.push((SENT_AT_ATTRIBUTE.to_owned(), sent_at.to_string()));
    }
    Envelope {
        attributes,
        data: Some(payload.clone()),
        typed: Vec::new(),
    }
}

/// The send time an envelope carries, if any.
fn sent_at(envelope: &Envelope) -> Option<u64> {
    envelope
        .attribute(SENT_AT_ATTRIBUTE)
        .and_then(|v| v.parse().ok())
}

/// One backend used through its client library alone.
#[async_trait]
pub trait RawChannel: Send + Sync {
    /// Publishes one event and waits until the server has acknowledged it.
    async fn publish(&self, id: u64, payload: &Bytes, sent_at: Option<u64>) -> Result<(), String>;

    /// Removes the topic, queue or stream (consumers stop with it).
    async fn remove(&self);
}

/// A fresh topic, queue or stream on `channel`'s server; with a `subscriber`, a consumer
/// reports every event to it (and acknowledges it) until the channel is removed.
pub async fn open(
    channel: Channel,
    subscriber: Option<Arc<Subscriber>>,
) -> Result<Arc<dyn RawChannel>, String> {
    match channel {
        Channel::Kafka => Ok(Arc::new(kafka::RawKafka::open(subscriber).await?)),
        Channel::RabbitMq => Ok(Arc::new(rabbitmq::RawRabbitMq::open(subscriber).await?)),
        Channel::Nats => Ok(Arc::new(nats::RawNats::open(subscriber).await?)),
        Channel::Memory | Channel::Embedded => Err(format!("{} has no raw client", channel.name())),
    }
}

mod kafka {
    use super::*;
    use rivulet_channels::kafka::binding;
    use rivulet_channels::kafka::rdkafka::admin::{
        AdminClient, AdminOptions, NewTopic, TopicReplication,
    };
    use rivulet_channels::kafka::rdkafka::client::DefaultClientContext;
    use rivulet_channels::kafka::rdkafka::config::ClientConfig;
    use rivulet_channels::kafka::rdkafka::consumer::{Consumer, StreamConsumer};
    use rivulet_channels::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
    use rivulet_channels::kafka::rdkafka::{Offset, TopicPartitionList};

    fn client() -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", kafka_servers());
        config
    }

    pub struct RawKafka {
        topic: String,
        admin: AdminClient<DefaultClientContext>,
        producer: FutureProducer,
        reader: Option<tokio::task::JoinHandle<()>>,
    }

    /// Reads every partition of `topic` from the beginning. Partitions are assigned, not
    /// subscribed: no group join before the clock starts.
    fn consume(
        topic: &str,
        subscriber: Arc<Subscriber>,
    ) -> Result<tokio::task::JoinHandle<()>, String> {
        let consumer: StreamConsumer = client()
            .set("group.id", unique("bench-raw"))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| format!("Kafka consumer: {e}"))?;
        let mut partitions = TopicPartitionList::new();
        for partition in 0..KAFKA_PARTITIONS {
            partitions
                .add_partition_offset(topic, partition, Offset::Beginning)
                .map_err(|e| format!("assigning {topic}/{partition}: {e}"))?;
        }
        consumer
            .assign(&partitions)
            .map_err(|e| format!("assigning {topic}: {e}"))?;
        Ok(tokio::spawn(async move {
            let mut stream = consumer.stream();
            while let Some(message) = stream.next().await {
                match message
                    .map_err(|e| e.to_string())
                    .and_then(|message| binding::from_binary(&message).map_err(|e| e.to_string()))
                {
                    Ok(envelope) => subscriber.record(sent_at(&envelope)),
                    Err(error) => eprintln!("bench: raw Kafka consumer: {error}"),
                }
            }
        }))
    }

    impl RawKafka {
        pub async fn open(subscriber: Option<Arc<Subscriber>>) -> Result<Self, String> {
            let topic = unique("bench-raw");
            let admin: AdminClient<DefaultClientContext> =
                client().create().map_err(|e| format!("Kafka admin: {e}"))?;
            let results = admin
                .create_topics(
                    [&NewTopic::new(
                        &topic,
                        KAFKA_PARTITIONS,
                        TopicReplication::Fixed(1),
                    )],
                    &AdminOptions::new(),
                )
                .await
                .map_err(|e| format!("creating {topic}: {e}"))?;
            for result in results {
                result.map_err(|(t, code)| format!("creating {t}: {code}"))?;
            }
            let reader = match subscriber {
                Some(subscriber) => Some(consume(&topic, subscriber)?),
                None => None,
            };
            // The producer settings of the Kafka channel (acks=all, one request in flight
            // per connection for order), so the rows differ in Rivulet alone.
            let producer = rivulet_channels::kafka::producer(&client())
                .map_err(|e| format!("Kafka producer: {e}"))?;
            Ok(RawKafka {
                topic,
                admin,
                producer,
                reader,
            })
        }
    }

    #[async_trait]
    impl RawChannel for RawKafka {
        async fn publish(
            &self,
            id: u64,
            payload: &Bytes,
            sent_at: Option<u64>,
        ) -> Result<(), String> {
            let envelope = envelope(id, payload, sent_at);
            let record = binding::to_binary(&envelope);
            let mut message = FutureRecord::<str, [u8]>::to(&self.topic).headers(record.headers);
            if let Some(value) = record.value {
                message = message.payload(value);
            }
            self.producer
                .send(message, Duration::from_secs(30))
                .await
                .map(|_| ())
                .map_err(|(e, _)| format!("Kafka produce: {e}"))
        }

        async fn remove(&self) {
            if let Some(reader) = &self.reader {
                reader.abort();
                // tansu 0.6 can fail for good when a topic is deleted while a consumer of it
                // still fetches: give the consumer time to close.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            let _ = self
                .admin
                .delete_topics(&[&self.topic], &AdminOptions::new())
                .await;
        }
    }
}

mod rabbitmq {
    use super::*;
    use rivulet_channels::rabbitmq::amqp;
    use rivulet_channels::rabbitmq::lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    };
    use rivulet_channels::rabbitmq::lapin::types::FieldTable;
    use rivulet_channels::rabbitmq::lapin::{
        Channel, Confirmation, Connection, ConnectionProperties,
    };

    /// Unacknowledged deliveries the consumer may hold, as the Rivulet channel's default.
    const PREFETCH: u16 = 64;

    /// Consumes `queue`, acknowledging each message, until the connection closes.
    async fn consume(
        connection: &Connection,
        queue: &str,
        subscriber: Arc<Subscriber>,
    ) -> Result<(), String> {
        let consuming = connection
            .create_channel()
            .await
            .map_err(|e| format!("RabbitMQ channel: {e}"))?;
        consuming
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .map_err(|e| format!("prefetch: {e}"))?;
        let mut consumer = consuming
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("consuming {queue}: {e}"))?;
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                match amqp::from_message(&delivery.properties, &delivery.data) {
                    Ok(Some(envelope)) => subscriber.record(sent_at(&envelope)),
                    Ok(None) => eprintln!("bench: raw RabbitMQ consumer: not a CloudEvent"),
                    Err(error) => eprintln!("bench: raw RabbitMQ consumer: {error}"),
                }
                if delivery.ack(BasicAckOptions::default()).await.is_err() {
                    break;
                }
            }
        });
        Ok(())
    }

    pub struct RawRabbitMq {
        connection: Connection,
        publisher: Channel,
        queue: String,
    }

    impl RawRabbitMq {
        pub async fn open(subscriber: Option<Arc<Subscriber>>) -> Result<Self, String> {
            let connection = Connection::connect(&rabbitmq_uri(), ConnectionProperties::default())
                .await
                .map_err(|e| format!("RabbitMQ: {e}"))?;
            let queue = unique("bench-raw");
            let publisher = connection
                .create_channel()
                .await
                .map_err(|e| format!("RabbitMQ channel: {e}"))?;
            publisher
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions::durable(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| format!("declaring {queue}: {e}"))?;
            publisher
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| format!("confirm mode: {e}"))?;
            if let Some(subscriber) = subscriber {
                consume(&connection, &queue, subscriber).await?;
            }
            Ok(RawRabbitMq {
                connection,
                publisher,
                queue,
            })
        }
    }

    #[async_trait]
    impl RawChannel for RawRabbitMq {
        async fn publish(
            &self,
            id: u64,
            payload: &Bytes,
            sent_at: Option<u64>,
        ) -> Result<(), String> {
            let envelope = envelope(id, payload, sent_at);
            let (properties, message) =
                amqp::to_message(&envelope).map_err(|e| format!("AMQP mapping: {e}"))?;
            let confirm = self
                .publisher
                .basic_publish(
                    "".into(),
                    self.queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &message,
                    properties,
                )
                .await
                .map_err(|e| format!("RabbitMQ publish: {e}"))?;
            match confirm.await {
                Ok(Confirmation::Ack(_)) => Ok(()),
                Ok(other) => Err(format!("RabbitMQ did not confirm: {other:?}")),
                Err(error) => Err(format!("RabbitMQ confirm: {error}")),
            }
        }

        async fn remove(&self) {
            let _ = self
                .publisher
                .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
                .await;
            let _ = self.connection.close(200, "done".into()).await;
        }
    }
}

mod nats {
    use super::*;
    use rivulet_channels::nats::async_nats::jetstream::{self, consumer::pull};
    use rivulet_channels::nats::binding;

    pub struct RawNats {
        jetstream: jetstream::Context,
        stream: String,
        subject: String,
        reader: Option<tokio::task::JoinHandle<()>>,
    }

    /// A durable pull consumer with explicit acknowledgements, read until removed.
    async fn consume(
        stream: &jetstream::stream::Stream,
        subscriber: Arc<Subscriber>,
    ) -> Result<tokio::task::JoinHandle<()>, String> {
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some("reader".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("creating the consumer: {e}"))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| format!("pulling: {e}"))?;
        Ok(tokio::spawn(async move {
            while let Some(Ok(message)) = messages.next().await {
                match binding::decode(message.headers.as_ref(), &message.payload) {
                    Ok(envelope) => subscriber.record(sent_at(&envelope)),
                    Err(error) => eprintln!("bench: raw NATS consumer: {error}"),
                }
                if message.ack().await.is_err() {
                    break;
                }
            }
        }))
    }

    impl RawNats {
        pub async fn open(subscriber: Option<Arc<Subscriber>>) -> Result<Self, String> {
            let client = rivulet_channels::nats::connect(&nats_url(), "rivulet bench raw")
                .await
                .map_err(|e| format!("NATS: {e}"))?;
            let jetstream = jetstream::new(client);
            let stream = unique("BENCH_RAW").replace('-', "_");
            let subject = format!("{stream}.events");
            let created = jetstream
                .create_stream(jetstream::stream::Config {
                    name: stream.clone(),
                    subjects: vec![subject.clone()],
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("creating stream {stream}: {e}"))?;
            let reader = match subscriber {
                Some(subscriber) => Some(consume(&created, subscriber).await?),
                None => None,
            };
            Ok(RawNats {
                jetstream,
                stream,
                subject,
                reader,
            })
        }
    }

    #[async_trait]
    impl RawChannel for RawNats {
        async fn publish(
            &self,
            id: u64,
            payload: &Bytes,
            sent_at: Option<u64>,
        ) -> Result<(), String> {
            let encoded = binding::encode(&envelope(id, payload, sent_at))
                .map_err(|e| format!("NATS mapping: {e}"))?;
            self.jetstream
                .publish_with_headers(self.subject.clone(), encoded.headers, encoded.payload)
                .await
                .map_err(|e| format!("JetStream publish: {e}"))?
                .await
                .map(|_| ())
                .map_err(|e| format!("JetStream ack: {e}"))
        }

        async fn remove(&self) {
            if let Some(reader) = &self.reader {
                reader.abort();
            }
            let _ = self.jetstream.delete_stream(&self.stream).await;
        }
    }
}
