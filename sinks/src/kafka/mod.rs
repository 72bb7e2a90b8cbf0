//! Knative's `KafkaSink` (`eventing.knative.dev/v1alpha1`): an addressable endpoint that
//! writes each CloudEvent it receives to `spec.topic`, and answers `202` only once the Kafka
//! server acknowledged the record with `acks=all` (`503` when it did not).
//!
//! `contentMode` follows the CloudEvents Kafka binding: `binary` puts the attributes in
//! `ce_` headers and the data in the value; `structured` (Knative's default) writes the whole
//! event as JSON with `content-type: application/cloudevents+json`. The record key is the
//! `partitionkey` extension when the event has one. With `numPartitions` set, the topic is
//! created when missing.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use rivulet_channels::ChannelError;
use rivulet_channels::kafka::rdkafka::admin::{
    AdminClient, AdminOptions, NewTopic, TopicReplication,
};
use rivulet_channels::kafka::rdkafka::client::DefaultClientContext;
use rivulet_channels::kafka::rdkafka::message::{Header, OwnedHeaders};
use rivulet_channels::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use rivulet_channels::kafka::rdkafka::types::RDKafkaErrorCode;
use rivulet_channels::kafka::{self as channel_kafka, binding};
use rivulet_core::knative_sink;
use rivulet_core::resources::apply;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Built, Outlet, SinkError, SinkKey, SinkKind, SinkStatus};
use rivulet_control::runtime::Context;
use rivulet_core::event::{self, Event};
use rivulet_core::resources::Condition;
use rivulet_core::resources::validation::{ValidateSpec, ValidationError};

/// The content type of a structured-mode record.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

/// How events are written to the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum ContentMode {
    Binary,
    #[default]
    Structured,
}

/// Knative `KafkaSink`.
#[apply(knative_sink!)]
#[kube(
    group = "eventing.knative.dev",
    version = "v1alpha1",
    kind = "KafkaSink"
)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSinkSpec {
    /// The topic events are written to.
    pub topic: String,
    /// Kafka servers, `host:port` each.
    pub bootstrap_servers: Vec<String>,
    /// `binary` or `structured` (the default).
    pub content_mode: Option<ContentMode>,
    /// Partitions of the topic when the sink creates it; unset: the topic must exist.
    pub num_partitions: Option<i32>,
    /// Replication factor of the topic when the sink creates it (1 when unset).
    pub replication_factor: Option<i16>,
    /// Knative's authentication reference; accepted, not used (plaintext connections only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "rivulet_core::resources::free_form_object")]
    pub auth: Option<Value>,
}

crate::register_sink! {
    KafkaSink {
        group: "eventing.knative.dev",
        version: "v1alpha1",
    }
}

impl ValidateSpec for KafkaSinkSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.topic.trim().is_empty() {
            return Err(ValidationError::new("spec.topic", "is required"));
        }
        if self.bootstrap_servers.iter().all(|s| s.trim().is_empty()) {
            return Err(ValidationError::new(
                "spec.bootstrapServers",
                "needs at least one host:port",
            ));
        }
        if self.num_partitions.is_some_and(|n| n < 1) {
            return Err(ValidationError::new(
                "spec.numPartitions",
                "must be at least 1",
            ));
        }
        if self.replication_factor.is_some_and(|n| n < 1) {
            return Err(ValidationError::new(
                "spec.replicationFactor",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

impl SinkKind for KafkaSink {
    const KIND: &'static str = "KafkaSink";
    const PLURAL: &'static str = "kafkasinks";

    async fn build(&self, _key: &SinkKey, _ctx: &Arc<Context>) -> Result<Built, Condition> {
        let spec = &self.spec;
        let not_ready =
            |reason: &str, error: String| Condition::new("TopicReady", false, reason, error);
        let settings = BTreeMap::from([(
            channel_kafka::BOOTSTRAP_SERVERS.to_owned(),
            spec.bootstrap_servers.join(","),
        )]);
        let client = channel_kafka::client_config(&settings)
            .map_err(|e| not_ready("InvalidConfiguration", e.to_string()))?;
        if let Some(partitions) = spec.num_partitions {
            let admin: AdminClient<DefaultClientContext> = client
                .create()
                .map_err(|e| not_ready("InvalidConfiguration", e.to_string()))?;
            let topic = NewTopic::new(
                &spec.topic,
                partitions,
                TopicReplication::Fixed(i32::from(spec.replication_factor.unwrap_or(1))),
            );
            let options = AdminOptions::new()
                .request_timeout(Some(std::time::Duration::from_secs(10)))
                .operation_timeout(Some(std::time::Duration::from_secs(10)));
            let results = admin
                .create_topics([&topic], &options)
                .await
                .map_err(|e| not_ready("TopicNotCreated", e.to_string()))?;
            for result in results {
                match result {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((topic, code)) => {
                        return Err(not_ready(
                            "TopicNotCreated",
                            format!("creating topic {topic}: {code}"),
                        ));
                    }
                }
            }
        }
        let producer = channel_kafka::producer(&client)
            .map_err(|e| not_ready("InvalidConfiguration", e.to_string()))?;
        let mode = spec.content_mode.unwrap_or_default();
        let fingerprint = format!(
            "{}|{}|{mode:?}|{:?}|{:?}",
            spec.topic,
            spec.bootstrap_servers.join(","),
            spec.num_partitions,
            spec.replication_factor
        );
        Ok(Built {
            outlet: Arc::new(KafkaPublisher {
                topic: spec.topic.clone(),
                mode,
                producer,
            }),
            fingerprint,
            conditions: vec![Condition::new("TopicReady", true, "", "")],
        })
    }
}

/// Writes events to one topic.
pub struct KafkaPublisher {
    topic: String,
    mode: ContentMode,
    producer: FutureProducer,
}

impl KafkaPublisher {
    /// A sink writing to `topic` with `producer`.
    pub fn new(topic: String, mode: ContentMode, producer: FutureProducer) -> Self {
        Self {
            topic,
            mode,
            producer,
        }
    }
}

#[async_trait]
impl Outlet for KafkaPublisher {
    async fn accept(&self, event: Event) -> Result<(), SinkError> {
        let envelope = event.to_envelope();
        let result = match self.mode {
            ContentMode::Binary => {
                let record = binding::to_binary(&envelope);
                let mut out = FutureRecord::to(&self.topic).headers(record.headers);
                if let Some(key) = record.key {
                    out = out.key(key);
                }
                if let Some(value) = record.value {
                    out = out.payload(value);
                }
                channel_kafka::produce_all(&self.producer, [out]).await
            }
            ContentMode::Structured => {
                let json = event::to_json(&event);
                let headers = OwnedHeaders::new().insert(Header {
                    key: binding::CONTENT_TYPE_HEADER,
                    value: Some(STRUCTURED_CONTENT_TYPE),
                });
                let mut out = FutureRecord::to(&self.topic)
                    .headers(headers)
                    .payload(json.as_bytes());
                if let Some(key) = envelope.attribute(binding::PARTITION_KEY) {
                    out = out.key(key);
                }
                channel_kafka::produce_all(&self.producer, [out]).await
            }
        };
        result.map_err(|error| match error {
            ChannelError::Config(reason) => SinkError::Refused(reason),
            other => SinkError::Unavailable(other.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> KafkaSinkSpec {
        serde_saphyr::from_str(yaml).expect("valid YAML")
    }

    #[test]
    fn content_mode_defaults_to_structured_and_reads_knative_names() {
        let plain = spec("topic: t\nbootstrapServers: [k:9092]\n");
        assert_eq!(
            plain.content_mode.unwrap_or_default(),
            ContentMode::Structured
        );
        let binary = spec("topic: t\nbootstrapServers: [k:9092]\ncontentMode: binary\n");
        assert_eq!(binary.content_mode, Some(ContentMode::Binary));
        assert!(binary.validate().is_ok());
    }

    #[test]
    fn topic_and_servers_are_required() {
        let no_topic = spec("topic: ''\nbootstrapServers: [k:9092]\n");
        assert_eq!(no_topic.validate().unwrap_err().field, "spec.topic");
        let no_servers = spec("topic: t\nbootstrapServers: []\n");
        assert_eq!(
            no_servers.validate().unwrap_err().field,
            "spec.bootstrapServers"
        );
        let bad_partitions = spec("topic: t\nbootstrapServers: [k:9092]\nnumPartitions: 0\n");
        assert_eq!(
            bad_partitions.validate().unwrap_err().field,
            "spec.numPartitions"
        );
    }
}
