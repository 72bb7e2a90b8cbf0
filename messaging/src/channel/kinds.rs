//! The channel kinds, each with its backend: Knative's `InMemoryChannel` (the memory
//! channel), `KafkaChannel` (Kafka), `NatsJetStreamChannel` (NATS JetStream), and Rivulet's
//! `EmbeddedChannel` (the durable embedded log) and `RabbitmqChannel` (RabbitMQ).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::{ChannelKind, ChannelReconciler, ChannelStatus};
use rivulet_control::runtime::{Context, MemoryChannelMaxBytes, read_config};
use rivulet_core::knative_kind;
use rivulet_core::resources::validation::{
    ValidationError, typed, validate_delivery, validate_metadata,
};
use rivulet_core::resources::{DeliverySpec, KReference, apply};

/// Registers a channel kind with the one channel reconciler.
macro_rules! register_channel {
    ($resource:ty { group: $group:literal, version: $version:literal, plural: $plural:literal $(,)? }) => {
        rivulet_control::register_kind! {
            kind: <$resource as ChannelKind>::KIND,
            resource: $resource,
            group: $group,
            version: $version,
            plural: $plural,
            validate: validate_channel::<$resource>,
            reconciler: ChannelReconciler<$resource>,
        }
    };
}

/// The checks every channel kind shares: metadata, the spec's shape, its delivery.
fn validate_channel<K>(new: &Value, _old: Option<&Value>) -> Result<(), ValidationError>
where
    K: ChannelKind + serde::de::DeserializeOwned,
{
    validate_metadata(new)?;
    let channel: K = typed(new)?;
    if let Some(delivery) = channel.delivery() {
        validate_delivery("spec.delivery", delivery)?;
    }
    Ok(())
}

/// Knative's `InMemoryChannel`: events kept in this process's memory (bounded by
/// `--memory-channel-max-bytes`; full gets `503`), lost when it stops.
#[apply(knative_kind!)]
#[kube(
    group = "messaging.knative.dev",
    version = "v1",
    kind = "InMemoryChannel",
    status = "ChannelStatus",
    category = "messaging",
    category = "channel",
    label("duck.knative.dev/addressable", "true"),
    label("messaging.knative.dev/subscribable", "true"),
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.address.url"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InMemoryChannelSpec {
    /// The default delivery of the channel's subscriptions.
    pub delivery: Option<DeliverySpec>,
    /// Knative's subscription controller writes its subscribers here; Rivulet reads the
    /// Subscriptions themselves, so this is accepted and not used.
    #[schemars(schema_with = "rivulet_core::resources::free_form_list")]
    pub subscribers: Option<Vec<Value>>,
}

impl ChannelKind for InMemoryChannel {
    const KIND: &'static str = "InMemoryChannel";

    async fn backend(
        &self,
        _namespace: &str,
        ctx: &Arc<Context>,
    ) -> Result<(String, BTreeMap<String, String>), String> {
        let max_bytes = ctx.extensions.get_or_default::<MemoryChannelMaxBytes>().0;
        let settings = BTreeMap::from([(
            rivulet_channels::memory::MAX_BYTES_KEY.to_string(),
            max_bytes.to_string(),
        )]);
        Ok(("memory".into(), settings))
    }

    fn delivery(&self) -> Option<&DeliverySpec> {
        self.spec.delivery.as_ref()
    }
}

register_channel!(InMemoryChannel {
    group: "messaging.knative.dev",
    version: "v1",
    plural: "inmemorychannels",
});

/// Rivulet's `EmbeddedChannel`: events in the embedded log under `--data-dir`, synced to disk
/// before `202`, kept across restarts. The default channel of Channels, Sequences and
/// Parallels.
#[apply(knative_kind!)]
#[kube(
    group = "messaging.rivulet.dev",
    version = "v1alpha1",
    kind = "EmbeddedChannel",
    status = "ChannelStatus",
    category = "messaging",
    category = "channel",
    label("duck.knative.dev/addressable", "true"),
    label("messaging.knative.dev/subscribable", "true"),
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.address.url"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmbeddedChannelSpec {
    /// The default delivery of the channel's subscriptions.
    pub delivery: Option<DeliverySpec>,
    /// Accepted as Knative's subscription controller writes it; not used.
    #[schemars(schema_with = "rivulet_core::resources::free_form_list")]
    pub subscribers: Option<Vec<Value>>,
}

impl ChannelKind for EmbeddedChannel {
    const KIND: &'static str = "EmbeddedChannel";

    async fn backend(
        &self,
        _namespace: &str,
        _ctx: &Arc<Context>,
    ) -> Result<(String, BTreeMap<String, String>), String> {
        Ok(("embedded".into(), BTreeMap::new()))
    }

    fn delivery(&self) -> Option<&DeliverySpec> {
        self.spec.delivery.as_ref()
    }
}

register_channel!(EmbeddedChannel {
    group: "messaging.rivulet.dev",
    version: "v1alpha1",
    plural: "embeddedchannels",
});

/// Where a KafkaChannel finds its servers: Knative's installation-wide ConfigMap.
pub const KAFKA_CHANNEL_CONFIG: &str = "kafka-channel-config";

/// Knative's `KafkaChannel`: a topic per channel, a consumer group per subscription. The
/// servers come from ConfigMap `knative-eventing/kafka-channel-config` (`bootstrap.servers`
/// and any client setting), as in Knative.
#[apply(knative_kind!)]
#[kube(
    group = "messaging.knative.dev",
    version = "v1beta1",
    kind = "KafkaChannel",
    status = "ChannelStatus",
    category = "messaging",
    category = "channel",
    label("duck.knative.dev/addressable", "true"),
    label("messaging.knative.dev/subscribable", "true"),
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.address.url"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaChannelSpec {
    /// Partitions of the topic (default: the config's `default.topic.partitions`, else 10).
    pub num_partitions: Option<i32>,
    /// Replicas of the topic (default: the config's `default.topic.replication.factor`,
    /// else 1).
    pub replication_factor: Option<i16>,
    /// ISO-8601 retention of the topic; accepted, the topic keeps the cluster's default.
    pub retention_duration: Option<String>,
    /// The default delivery of the channel's subscriptions.
    pub delivery: Option<DeliverySpec>,
    /// Accepted as Knative's subscription controller writes it; not used.
    #[schemars(schema_with = "rivulet_core::resources::free_form_list")]
    pub subscribers: Option<Vec<Value>>,
}

impl ChannelKind for KafkaChannel {
    const KIND: &'static str = "KafkaChannel";

    async fn backend(
        &self,
        _namespace: &str,
        ctx: &Arc<Context>,
    ) -> Result<(String, BTreeMap<String, String>), String> {
        let mut settings = super::installation_config(ctx, KAFKA_CHANNEL_CONFIG).await?;
        if !settings.contains_key("bootstrap.servers") {
            return Err(format!(
                "a KafkaChannel needs bootstrap.servers in ConfigMap knative-eventing/{KAFKA_CHANNEL_CONFIG}"
            ));
        }
        if let Some(partitions) = self.spec.num_partitions {
            settings.insert(
                rivulet_channels::kafka::TOPIC_PARTITIONS.into(),
                partitions.to_string(),
            );
        }
        if let Some(replicas) = self.spec.replication_factor {
            settings.insert(
                rivulet_channels::kafka::TOPIC_REPLICATION.into(),
                replicas.to_string(),
            );
        }
        Ok(("kafka".into(), settings))
    }

    fn delivery(&self) -> Option<&DeliverySpec> {
        self.spec.delivery.as_ref()
    }
}

register_channel!(KafkaChannel {
    group: "messaging.knative.dev",
    version: "v1beta1",
    plural: "kafkachannels",
});

/// Where a NatsJetStreamChannel finds its server: ConfigMap `knative-eventing/config-nats`
/// (`url`, and the stream settings a NATS broker's config takes); without it
/// `nats://127.0.0.1:4222`.
pub const NATS_CHANNEL_CONFIG: &str = "config-nats";

/// Knative's `NatsJetStreamChannel` (eventing-natss): a JetStream stream per channel, a
/// durable consumer per subscription.
#[apply(knative_kind!)]
#[kube(
    group = "messaging.knative.dev",
    version = "v1alpha1",
    kind = "NatsJetStreamChannel",
    status = "ChannelStatus",
    category = "messaging",
    category = "channel",
    label("duck.knative.dev/addressable", "true"),
    label("messaging.knative.dev/subscribable", "true"),
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.address.url"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NatsJetStreamChannelSpec {
    /// eventing-natss's stream settings; accepted, the stream takes those of `config-nats`.
    #[schemars(schema_with = "rivulet_core::resources::free_form_object")]
    pub stream: Option<Value>,
    /// eventing-natss's consumer settings; accepted, not used.
    #[schemars(schema_with = "rivulet_core::resources::free_form_object")]
    pub consumer_config_template: Option<Value>,
    /// The default delivery of the channel's subscriptions.
    pub delivery: Option<DeliverySpec>,
    /// Accepted as Knative's subscription controller writes it; not used.
    #[schemars(schema_with = "rivulet_core::resources::free_form_list")]
    pub subscribers: Option<Vec<Value>>,
}

impl ChannelKind for NatsJetStreamChannel {
    const KIND: &'static str = "NatsJetStreamChannel";

    async fn backend(
        &self,
        _namespace: &str,
        ctx: &Arc<Context>,
    ) -> Result<(String, BTreeMap<String, String>), String> {
        let settings = super::installation_config(ctx, NATS_CHANNEL_CONFIG).await?;
        Ok(("nats".into(), settings))
    }

    fn delivery(&self) -> Option<&DeliverySpec> {
        self.spec.delivery.as_ref()
    }
}

register_channel!(NatsJetStreamChannel {
    group: "messaging.knative.dev",
    version: "v1alpha1",
    plural: "natsjetstreamchannels",
});

/// Rivulet's `RabbitmqChannel`: a durable exchange per channel, a queue per subscription.
/// `spec.config` names the Secret (or ConfigMap) with the AMQP `uri`, as a RabbitMQ broker's
/// does.
#[apply(knative_kind!)]
#[kube(
    group = "messaging.rivulet.dev",
    version = "v1alpha1",
    kind = "RabbitmqChannel",
    status = "ChannelStatus",
    category = "messaging",
    category = "channel",
    label("duck.knative.dev/addressable", "true"),
    label("messaging.knative.dev/subscribable", "true"),
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.address.url"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RabbitmqChannelSpec {
    /// The Secret or ConfigMap holding `uri` (and optionally `queueType`).
    pub config: KReference,
    /// The default delivery of the channel's subscriptions.
    pub delivery: Option<DeliverySpec>,
    /// Accepted as Knative's subscription controller writes it; not used.
    #[schemars(schema_with = "rivulet_core::resources::free_form_list")]
    pub subscribers: Option<Vec<Value>>,
}

impl ChannelKind for RabbitmqChannel {
    const KIND: &'static str = "RabbitmqChannel";

    async fn backend(
        &self,
        namespace: &str,
        ctx: &Arc<Context>,
    ) -> Result<(String, BTreeMap<String, String>), String> {
        let settings = read_config(&self.spec.config, namespace, ctx).await?;
        Ok(("rabbitmq".into(), settings))
    }

    fn delivery(&self) -> Option<&DeliverySpec> {
        self.spec.delivery.as_ref()
    }
}

register_channel!(RabbitmqChannel {
    group: "messaging.rivulet.dev",
    version: "v1alpha1",
    plural: "rabbitmqchannels",
});
