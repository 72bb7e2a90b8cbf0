//! Knative's `KafkaSource` (`sources.knative.dev/v1beta1`): reads records from Kafka topics
//! in a consumer group and sends each to the sink as a CloudEvent.
//!
//! A record that carries a CloudEvent per the Kafka binding (binary mode with `ce_` headers,
//! or structured mode with `content-type: application/cloudevents+json`) passes through as
//! that event. Any other record becomes an event of type `dev.knative.kafka.event` with
//! Knative's conventions: source `/apis/v1/namespaces/{ns}/kafkasources/{name}#{topic}`,
//! subject `partition:{p}#{offset}`, id `partition:{p}/offset:{offset}`, time from the
//! record's timestamp, the record key as extension `key`, headers as extensions
//! `kafkaheader{name}`, the value as data.
//!
//! Offsets are committed only once the sink accepted the event (or its dead-letter sink
//! did); a sink that keeps refusing holds its record, which is tried again until it goes
//! through. `ordering: ordered` sends one event at a time in fetch order (per partition in
//! order); `unordered` (the default) sends up to 64 at once and commits up to the lowest
//! unfinished offset of each partition.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rivulet_channels::ChannelError;
use rivulet_channels::kafka::consumer::{ConsumerSettings, Decoder, TrackedConsumer};
use rivulet_channels::kafka::rdkafka::Message;
use rivulet_channels::kafka::rdkafka::message::Headers;
use rivulet_channels::kafka::{self as channel_kafka, binding};
use rivulet_core::knative_source;
use rivulet_core::resources::apply;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use super::{
    CloudEventAttributes, Prepared, SourceAdapter, SourceContext, SourceError, SourceKey,
    SourceKind, SourceSpec, SourceStatus,
};
use rivulet_control::runtime::Context;
use rivulet_core::event::{Event, ExtensionValue, SpecVersion, parse_structured};
use rivulet_core::resources::validation::{ValidateSpec, ValidationError};
use rivulet_core::resources::{Condition, DeliverySpec};

/// The type of events made from records that are not CloudEvents.
pub const KAFKA_EVENT_TYPE: &str = "dev.knative.kafka.event";
/// Deliveries in flight at most with `ordering: unordered`.
const UNORDERED_IN_FLIGHT: usize = 64;

/// Where a new consumer group starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum InitialOffset {
    Earliest,
    #[default]
    Latest,
}

/// Delivery order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    Ordered,
    #[default]
    Unordered,
}

/// Knative `KafkaSource`.
#[apply(knative_source!)]
#[kube(
    group = "sources.knative.dev",
    version = "v1beta1",
    kind = "KafkaSource"
)]
#[kube(category = "eventing")]
#[kube(printcolumn = r#"{"name":"Topics","type":"string","jsonPath":".spec.topics"}"#)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSourceSpec {
    /// Kafka servers, `host:port` each.
    pub bootstrap_servers: Vec<String>,
    pub topics: Vec<String>,
    /// The consumer group; `knative-kafka-source-{uid or name}` when unset.
    pub consumer_group: Option<String>,
    /// Where a group without committed offsets starts: `latest` (default) or `earliest`.
    pub initial_offset: Option<InitialOffset>,
    /// `ordered` or `unordered` (default).
    pub ordering: Option<Ordering>,
    /// Knative's consumer count; accepted, one consumer runs per source here.
    pub consumers: Option<i32>,
    /// Knative's `net` (authentication); accepted, not used (plaintext connections only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "rivulet_core::resources::free_form_object")]
    pub net: Option<Value>,
    /// Where events go and what is added to them, as every source has.
    #[serde(flatten)]
    pub source: SourceSpec,
    /// Delivery rules towards the sink.
    pub delivery: Option<DeliverySpec>,
}

crate::register_source! {
    KafkaSource {
        group: "sources.knative.dev",
        version: "v1beta1",
        plural: "kafkasources",
    }
}

impl ValidateSpec for KafkaSourceSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.bootstrap_servers.iter().all(|s| s.trim().is_empty()) {
            return Err(ValidationError::new(
                "spec.bootstrapServers",
                "needs at least one host:port",
            ));
        }
        if self.topics.is_empty() || self.topics.iter().any(|t| t.trim().is_empty()) {
            return Err(ValidationError::new(
                "spec.topics",
                "needs at least one topic name, none empty",
            ));
        }
        if self
            .consumer_group
            .as_deref()
            .is_some_and(|g| g.trim().is_empty())
        {
            return Err(ValidationError::new(
                "spec.consumerGroup",
                "must not be empty",
            ));
        }
        self.source.validate()?;
        Ok(())
    }
}

impl SourceKind for KafkaSource {
    const KIND: &'static str = "KafkaSource";

    fn source(&self) -> &SourceSpec {
        &self.spec.source
    }

    fn delivery(&self) -> Option<&DeliverySpec> {
        self.spec.delivery.as_ref()
    }

    async fn prepare(&self, key: &SourceKey, _ctx: &Arc<Context>) -> Result<Prepared, Condition> {
        let spec = &self.spec;
        let settings = std::collections::BTreeMap::from([(
            channel_kafka::BOOTSTRAP_SERVERS.to_owned(),
            spec.bootstrap_servers.join(","),
        )]);
        let client = channel_kafka::client_config(&settings).map_err(|e| {
            Condition::new(
                "ConnectionEstablished",
                false,
                "InvalidConfiguration",
                e.to_string(),
            )
        })?;
        let group_id = spec
            .consumer_group
            .clone()
            .unwrap_or_else(|| format!("knative-kafka-source-{}-{}", key.namespace, key.name));
        let ordered = spec.ordering == Some(Ordering::Ordered);
        let start_at_earliest = spec.initial_offset == Some(InitialOffset::Earliest);
        let fingerprint = format!(
            "{}|{:?}|{group_id}|{start_at_earliest}|{ordered}",
            spec.bootstrap_servers.join(","),
            spec.topics
        );
        let ce_attributes = spec
            .topics
            .iter()
            .map(|topic| CloudEventAttributes {
                type_: KAFKA_EVENT_TYPE.into(),
                source: record_source(&key.namespace, &key.name, topic),
            })
            .collect();
        Ok(Prepared {
            adapter: Arc::new(KafkaSourceAdapter {
                settings: ConsumerSettings {
                    client,
                    group_id,
                    topics: spec.topics.clone(),
                    instance_id: None,
                    start_at_earliest,
                },
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                ordered,
            }),
            fingerprint,
            ce_attributes,
            address: None,
            conditions: Vec::new(),
        })
    }
}

/// Knative's source attribute of events made from plain records.
pub fn record_source(namespace: &str, name: &str, topic: &str) -> String {
    format!("/apis/v1/namespaces/{namespace}/kafkasources/{name}#{topic}")
}

/// Reads the topics and sends every record to the sink.
pub struct KafkaSourceAdapter {
    settings: ConsumerSettings,
    namespace: String,
    name: String,
    ordered: bool,
}

/// One record turned into the event to send.
type Item = Event;

#[async_trait]
impl SourceAdapter for KafkaSourceAdapter {
    async fn run(&self, ctx: &SourceContext) -> Result<(), SourceError> {
        let (namespace, name) = (self.namespace.clone(), self.name.clone());
        let decode: Decoder<Item> = Arc::new(move |message| {
            match record_to_event(message, &namespace, &name) {
                Ok(event) => Some(event),
                Err(error) => {
                    tracing::warn!(%error, topic = message.topic(), partition = message.partition(),
                        offset = message.offset(), "skipping a record that carries an invalid CloudEvent");
                    None
                }
            }
        });
        let settings = self.settings.clone();
        let consumer =
            tokio::task::spawn_blocking(move || TrackedConsumer::start(&settings, decode))
                .await
                .map_err(|e| SourceError::Upstream(e.to_string()))?
                .map_err(|e| match e {
                    ChannelError::Config(reason) => SourceError::Config(reason),
                    other => SourceError::Upstream(other.to_string()),
                })?;
        let consumer = Arc::new(consumer);
        let in_flight = if self.ordered { 1 } else { UNORDERED_IN_FLIGHT };
        consumer.set_max_in_flight(in_flight);
        let slots = Arc::new(Semaphore::new(in_flight));
        let tasks = TaskTracker::new();
        loop {
            let batch = tokio::select! {
                _ = ctx.cancel.cancelled() => break,
                batch = consumer.receive(in_flight) => batch,
            };
            let batch = match batch {
                Ok(batch) => batch,
                Err(error) => {
                    consumer.close().await;
                    return Err(SourceError::Upstream(error.to_string()));
                }
            };
            for handed in batch {
                let permit = tokio::select! {
                    _ = ctx.cancel.cancelled() => break,
                    permit = slots.clone().acquire_owned() => permit.expect("never closed"),
                };
                let (consumer, sink, cancel) =
                    (Arc::clone(&consumer), ctx.sink.clone(), ctx.cancel.clone());
                let delivery = async move {
                    if send_until_taken(&sink, handed.item, &cancel).await {
                        // A failed ack means the consumer closed: the record is redelivered.
                        let _ = consumer.ack(handed.id);
                    }
                    drop(permit);
                };
                if self.ordered {
                    delivery.await;
                } else {
                    tasks.spawn(delivery);
                }
            }
        }
        tasks.close();
        let _ = tokio::time::timeout(ctx.stop_grace, tasks.wait()).await;
        consumer.close().await;
        Ok(())
    }
}

/// Sends until the sink (or its dead-letter sink) takes the event; false when cancelled first.
async fn send_until_taken(
    sink: &super::SinkClient,
    event: Event,
    cancel: &tokio_util::sync::CancellationToken,
) -> bool {
    let mut pause = Duration::from_millis(500);
    loop {
        if sink.send(event.clone()).await.is_ok() {
            return true;
        }
        tokio::select! {
            _ = cancel.cancelled() => return false,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

/// The event a record stands for.
pub fn record_to_event(
    message: &impl Message,
    namespace: &str,
    name: &str,
) -> Result<Event, rivulet_core::event::EventError> {
    if binding::is_binary(message) {
        let envelope = binding::from_binary(message)
            .map_err(|e| rivulet_core::event::EventError(e.to_string()))?;
        return Event::from_envelope(&envelope);
    }
    let content_type = binding::content_type(message);
    if content_type.as_deref().is_some_and(|t| {
        t.to_ascii_lowercase()
            .starts_with("application/cloudevents+json")
    }) {
        return parse_structured(message.payload().unwrap_or_default());
    }
    let partition = message.partition();
    let offset = message.offset();
    let mut event = Event {
        specversion: SpecVersion::V10,
        id: format!("partition:{partition}/offset:{offset}"),
        source: record_source(namespace, name, message.topic()),
        ty: KAFKA_EVENT_TYPE.into(),
        datacontenttype: content_type,
        dataschema: None,
        subject: Some(format!("partition:{partition}#{offset}")),
        time: message
            .timestamp()
            .to_millis()
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        datacontentencoding: None,
        extensions: Default::default(),
        data: message.payload().map(Bytes::copy_from_slice),
    };
    if let Some(key) = message.key() {
        event.set_extension(
            "key",
            ExtensionValue::String(String::from_utf8_lossy(key).into_owned()),
        );
    }
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            let suffix: String = header
                .key
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .map(|c| c.to_ascii_lowercase())
                .collect();
            if suffix.is_empty()
                || header
                    .key
                    .eq_ignore_ascii_case(binding::CONTENT_TYPE_HEADER)
            {
                continue;
            }
            let value = String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned();
            event.set_extension(
                &format!("kafkaheader{suffix}"),
                ExtensionValue::String(value),
            );
        }
    }
    event.validate()?;
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> KafkaSourceSpec {
        serde_saphyr::from_str(yaml).expect("valid YAML")
    }

    #[test]
    fn knative_fields_are_read() {
        let spec = spec(
            "bootstrapServers: [k:9092]\ntopics: [a, b]\nconsumerGroup: g\ninitialOffset: earliest\nordering: ordered\nsink:\n  uri: http://x/\n",
        );
        assert_eq!(spec.initial_offset, Some(InitialOffset::Earliest));
        assert_eq!(spec.ordering, Some(Ordering::Ordered));
        assert_eq!(spec.consumer_group.as_deref(), Some("g"));
        assert!(spec.validate().is_ok());
    }

    #[test]
    fn topics_and_servers_are_required() {
        let no_topics = spec("bootstrapServers: [k:9092]\ntopics: []\nsink:\n  uri: http://x/\n");
        assert_eq!(no_topics.validate().unwrap_err().field, "spec.topics");
        let no_servers = spec("bootstrapServers: []\ntopics: [a]\nsink:\n  uri: http://x/\n");
        assert_eq!(
            no_servers.validate().unwrap_err().field,
            "spec.bootstrapServers"
        );
    }

    #[test]
    fn plain_record_source_follows_knative() {
        assert_eq!(
            record_source("default", "orders", "t1"),
            "/apis/v1/namespaces/default/kafkasources/orders#t1"
        );
    }
}
