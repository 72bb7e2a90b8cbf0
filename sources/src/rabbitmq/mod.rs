//! RabbitmqSource (`sources.knative.dev/v1alpha1`): consumes a RabbitMQ queue and delivers
//! each message to the sink as a CloudEvent, acknowledging the message only once the sink (or
//! its dead-letter sink) took it.
//!
//! Fields follow Knative's RabbitmqSource: `rabbitmqClusterReference.connectionSecret` names a
//! Secret with the connection (key `uri` with an AMQP URI, or Knative's `uri`/`port`/
//! `username`/`password`), or Rivulet's `spec.uri` gives the AMQP URI directly (a reference to a
//! `RabbitmqCluster` by name is Kubernetes-only and refused). `rabbitmqResourcesConfig` names
//! the queue (`queueName`), the exchange to bind it to (`exchangeName`, bound with routing key
//! `#`), `vhost`, `parallelism` (messages in flight, default 1: in order) and `predeclared`
//! (the queue exists already: nothing is declared or bound).
//!
//! A message in the CloudEvents AMQP binding (binary mode: `cloudEvents_*` headers, or
//! structured mode: content type `application/cloudevents+json`) is that event. Any other
//! message is wrapped: type `dev.knative.rabbitmq.event`, source
//! `/apis/v1/namespaces/{namespace}/rabbitmqsources/{name}`, id the message id (or a new UUID),
//! time the message timestamp (or now), the body as data with the message's content type
//! (`application/json` when it parses as JSON, else `application/octet-stream`).
//!
//! A message that claims to be a CloudEvent but is not a valid one, and a message the sink
//! refuses for good (a `4xx` it does not retry), is rejected without requeue (RabbitMQ
//! dead-letters it when the queue has a dead-letter exchange). While the sink is unreachable
//! the message is held and sent again with a growing pause.

use rivulet_core::resources::skip_serializing_none;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use rivulet_channels::rabbitmq::lapin::options::{
    BasicAckOptions, BasicRejectOptions, QueueBindOptions, QueueDeclareOptions,
};
use rivulet_channels::rabbitmq::lapin::types::FieldTable;
use rivulet_channels::rabbitmq::lapin::{self, BasicProperties, Connection, ConnectionProperties};
use rivulet_channels::rabbitmq::{amqp, link};
use rivulet_core::knative_source;
use rivulet_core::resources::apply;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use super::{
    CloudEventAttributes, Prepared, SourceAdapter, SourceContext, SourceError, SourceKey,
    SourceKind, SourceSpec, SourceStatus,
};
use rivulet_control::runtime::Context;
use rivulet_core::event::{Event, SpecVersion};
use rivulet_core::resources::rabbitmq_broker_config::{
    RabbitmqClusterReference, validate_amqp_connection,
};
use rivulet_core::resources::validation::{ValidateSpec, ValidationError};
use rivulet_core::resources::{Condition, DeliverySpec};

/// The type of events wrapped around messages that carry no CloudEvent.
pub const WRAPPED_EVENT_TYPE: &str = "dev.knative.rabbitmq.event";

/// Knative's `RabbitmqSource`.
#[apply(knative_source!)]
#[kube(
    group = "sources.knative.dev",
    version = "v1alpha1",
    kind = "RabbitmqSource"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RabbitmqSourceSpec {
    /// Where the RabbitMQ is: its connection Secret.
    pub rabbitmq_cluster_reference: Option<RabbitmqClusterReference>,
    /// Rivulet's shortcut: the AMQP URI itself (`amqp://user:password@host:5672/%2f`).
    pub uri: Option<String>,
    pub rabbitmq_resources_config: RabbitmqResourcesConfig,
    /// Retries towards the sink.
    pub delivery: Option<DeliverySpec>,
    /// Where events go and what is added to them, as every source has.
    #[serde(flatten)]
    pub source: SourceSpec,
    /// Accepted for Knative compatibility; unused outside Kubernetes.
    pub service_account_name: Option<String>,
}

/// What to consume.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RabbitmqResourcesConfig {
    pub queue_name: String,
    /// An existing exchange the queue is bound to (routing key `#`), unless `predeclared`.
    pub exchange_name: Option<String>,
    /// The virtual host, when the URI does not name one.
    pub vhost: Option<String>,
    /// Messages in flight to the sink; 1 (the default) keeps their order.
    pub parallelism: Option<i32>,
    /// The queue (and its bindings) exist already: declare nothing.
    #[serde(default)]
    pub predeclared: bool,
}

crate::register_source! {
    RabbitmqSource {
        group: "sources.knative.dev",
        version: "v1alpha1",
        plural: "rabbitmqsources",
    }
}

impl ValidateSpec for RabbitmqSourceSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        const SECRET_FIELD: &str = "spec.rabbitmqClusterReference.connectionSecret";
        validate_amqp_connection(
            self.uri.as_deref(),
            self.rabbitmq_cluster_reference
                .as_ref()
                .and_then(|r| r.connection_secret.as_ref()),
            SECRET_FIELD,
            ValidationError::new(
                SECRET_FIELD,
                "is required (or spec.uri): a RabbitmqCluster by name needs Kubernetes",
            ),
        )?;
        let resources = &self.rabbitmq_resources_config;
        if resources.queue_name.is_empty() {
            return Err(ValidationError::new(
                "spec.rabbitmqResourcesConfig.queueName",
                "is required",
            ));
        }
        if resources.queue_name.len() > 255 {
            return Err(ValidationError::new(
                "spec.rabbitmqResourcesConfig.queueName",
                "is longer than 255 bytes",
            ));
        }
        if resources
            .exchange_name
            .as_ref()
            .is_some_and(|e| e.len() > 255)
        {
            return Err(ValidationError::new(
                "spec.rabbitmqResourcesConfig.exchangeName",
                "is longer than 255 bytes",
            ));
        }
        if let Some(parallelism) = resources.parallelism
            && !(1..=1000).contains(&parallelism)
        {
            return Err(ValidationError::new(
                "spec.rabbitmqResourcesConfig.parallelism",
                format!("{parallelism} is not between 1 and 1000"),
            ));
        }
        self.source.validate_with_delivery(self.delivery.as_ref())
    }
}

/// `uri` with its virtual host replaced by `vhost`.
fn with_vhost(uri: &str, vhost: &str) -> String {
    let (scheme, rest) = uri.split_once("://").unwrap_or(("amqp", uri));
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let query = rest.find('?').map(|at| &rest[at..]).unwrap_or("");
    let encoded: String = vhost
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("{scheme}://{authority}/{encoded}{query}")
}

impl SourceKind for RabbitmqSource {
    const KIND: &'static str = "RabbitmqSource";

    fn source(&self) -> &SourceSpec {
        &self.spec.source
    }

    fn delivery(&self) -> Option<&DeliverySpec> {
        self.spec.delivery.as_ref()
    }

    async fn prepare(&self, key: &SourceKey, ctx: &Arc<Context>) -> Result<Prepared, Condition> {
        let spec = &self.spec;
        let mut conditions = Vec::new();
        let secret = spec.rabbitmq_cluster_reference.as_ref().map(|reference| {
            (
                reference.namespace.as_deref().unwrap_or(&key.namespace),
                reference
                    .connection_secret
                    .as_ref()
                    .map(|s| s.name.as_str())
                    .unwrap_or_default(),
            )
        });
        let uri = rivulet_control::runtime::amqp_connection_uri(
            ctx,
            spec.uri.as_deref(),
            secret,
            "spec.uri nor a connection Secret",
            &mut conditions,
        )
        .await?;
        let resources = &spec.rabbitmq_resources_config;
        let uri = match &resources.vhost {
            Some(vhost) => with_vhost(&uri, vhost),
            None => uri,
        };
        let event_source = format!(
            "/apis/v1/namespaces/{}/rabbitmqsources/{}",
            key.namespace, key.name
        );
        let parallelism = resources.parallelism.unwrap_or(1).clamp(1, 1000) as u16;
        let adapter = RabbitmqAdapter {
            uri,
            queue: resources.queue_name.clone(),
            exchange: resources.exchange_name.clone().filter(|e| !e.is_empty()),
            predeclared: resources.predeclared,
            parallelism,
            event_source: event_source.clone(),
        };
        Ok(Prepared {
            fingerprint: format!("{adapter:?}"),
            adapter: Arc::new(adapter),
            ce_attributes: vec![CloudEventAttributes {
                type_: WRAPPED_EVENT_TYPE.into(),
                source: event_source,
            }],
            address: None,
            conditions,
        })
    }
}

/// Consumes one queue.
struct RabbitmqAdapter {
    uri: String,
    queue: String,
    exchange: Option<String>,
    predeclared: bool,
    parallelism: u16,
    event_source: String,
}

impl std::fmt::Debug for RabbitmqAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URI is compared, not shown: it may hold a password.
        write!(
            f,
            "{}|{}|{:?}|{}|{}|{}",
            self.uri,
            self.queue,
            self.exchange,
            self.predeclared,
            self.parallelism,
            self.event_source
        )
    }
}

fn upstream(what: &str, error: impl std::fmt::Display) -> SourceError {
    SourceError::Upstream(format!("RabbitMQ {what}: {error}"))
}

#[async_trait]
impl SourceAdapter for RabbitmqAdapter {
    /// One connection per run; when it breaks the run ends with an error and the framework
    /// starts it again with back-off, and RabbitMQ redelivers what was not acknowledged.
    async fn run(&self, ctx: &SourceContext) -> Result<(), SourceError> {
        let connection = tokio::select! {
            _ = ctx.cancel.cancelled() => return Ok(()),
            connection = tokio::time::timeout(
                Duration::from_secs(10),
                Connection::connect(
                    &self.uri,
                    ConnectionProperties::default().with_connection_name(
                        format!("rivulet RabbitmqSource {}/{}", ctx.key.namespace, ctx.key.name).into(),
                    ),
                ),
            ) => connection
                .map_err(|_| upstream("connect", "timed out"))?
                .map_err(|e| upstream("connect", format!("{e} ({})", link::redact(&self.uri))))?,
        };
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| upstream("channel", e))?;
        channel
            .queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions {
                    passive: self.predeclared,
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| upstream(&format!("queue {}", self.queue), e))?;
        if let (Some(exchange), false) = (&self.exchange, self.predeclared) {
            channel
                .queue_bind(
                    self.queue.as_str().into(),
                    exchange.as_str().into(),
                    "#".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| upstream(&format!("binding to exchange {exchange}"), e))?;
        }
        let mut consumer = link::consume(&channel, &self.queue, self.parallelism)
            .await
            .map_err(|(step, e)| upstream(step, e))?;
        let slots = Arc::new(Semaphore::new(usize::from(self.parallelism)));
        let tasks = TaskTracker::new();
        let outcome = loop {
            let delivery = tokio::select! {
                _ = ctx.cancel.cancelled() => break Ok(()),
                delivery = consumer.next() => delivery,
            };
            let delivery = match delivery {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => break Err(upstream("consumer", error)),
                None => break Err(upstream("consumer", "cancelled by RabbitMQ")),
            };
            let permit = tokio::select! {
                _ = ctx.cancel.cancelled() => break Ok(()),
                permit = slots.clone().acquire_owned() => permit.expect("never closed"),
            };
            let (sink, cancel) = (ctx.sink.clone(), ctx.cancel.clone());
            let event = message_to_event(&delivery.properties, &delivery.data, &self.event_source);
            let work = async move {
                forward(delivery, event, &sink, &cancel).await;
                drop(permit);
            };
            if self.parallelism == 1 {
                work.await;
            } else {
                tasks.spawn(work);
            }
        };
        tasks.close();
        let _ = tokio::time::timeout(ctx.stop_grace, tasks.wait()).await;
        // Closing hands whatever is still unacknowledged back to the queue.
        let _ = channel.close(200, "source stopped".into()).await;
        let _ = connection.close(200, "source stopped".into()).await;
        outcome
    }
}

/// Delivers one message's event and acknowledges the message once the sink took it.
async fn forward(
    delivery: lapin::message::Delivery,
    event: Result<Event, String>,
    sink: &super::SinkClient,
    cancel: &tokio_util::sync::CancellationToken,
) {
    let event = match event {
        Ok(event) => event,
        Err(reason) => {
            tracing::warn!(%reason, "rejecting a RabbitMQ message that is no valid CloudEvent");
            let _ = delivery
                .acker
                .reject(BasicRejectOptions { requeue: false })
                .await;
            return;
        }
    };
    let mut pause = Duration::from_millis(500);
    loop {
        match sink.send(event.clone()).await {
            Ok(_) => {
                // A failed ack means the channel closed: RabbitMQ delivers the message again.
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                return;
            }
            Err(error) if !error.is_temporary() => {
                let _ = delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await;
                return;
            }
            Err(_) => {}
        }
        tokio::select! {
            // Left unacknowledged: the queue gets it back when the channel closes.
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

/// The event a message stands for: its own in the CloudEvents AMQP binding, or the message
/// wrapped in one.
pub fn message_to_event(
    properties: &BasicProperties,
    body: &[u8],
    event_source: &str,
) -> Result<Event, String> {
    if amqp::is_structured(properties) {
        return rivulet_core::event::parse_structured(body)
            .map_err(|e| format!("structured-mode message: {e}"));
    }
    if let Some(envelope) = amqp::from_message(properties, body).map_err(|e| e.to_string())? {
        let event = Event::from_envelope(&envelope).map_err(|e| e.to_string())?;
        event.validate().map_err(|e| e.to_string())?;
        return Ok(event);
    }
    let content_type = properties
        .content_type()
        .as_ref()
        .map(|c| c.as_str().to_owned());
    let datacontenttype = match content_type {
        _ if body.is_empty() => None,
        Some(content_type) => Some(content_type),
        None if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() => {
            Some("application/json".to_owned())
        }
        None => Some("application/octet-stream".to_owned()),
    };
    let time = properties
        .timestamp()
        .and_then(|seconds| i64::try_from(seconds).ok())
        .and_then(|seconds| chrono::DateTime::from_timestamp(seconds, 0))
        .unwrap_or_else(chrono::Utc::now);
    Ok(Event {
        specversion: SpecVersion::V10,
        id: properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        source: event_source.to_owned(),
        ty: WRAPPED_EVENT_TYPE.to_owned(),
        datacontenttype,
        dataschema: None,
        subject: None,
        time: Some(time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        datacontentencoding: None,
        extensions: BTreeMap::new(),
        data: (!body.is_empty()).then(|| bytes::Bytes::copy_from_slice(body)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rivulet_channels::Envelope;

    #[test]
    fn messages_become_events() {
        let plain = BasicProperties::default().with_message_id("m-1".into());
        let event = message_to_event(&plain, b"{\"a\":1}", "/src").unwrap();
        assert_eq!(event.ty, WRAPPED_EVENT_TYPE);
        assert_eq!(event.source, "/src");
        assert_eq!(event.id, "m-1");
        assert_eq!(event.datacontenttype.as_deref(), Some("application/json"));
        let text = BasicProperties::default().with_content_type("text/plain".into());
        let event = message_to_event(&text, b"hello", "/src").unwrap();
        assert_eq!(event.datacontenttype.as_deref(), Some("text/plain"));
        assert!(!event.id.is_empty());

        let envelope = Envelope {
            attributes: vec![
                ("specversion".into(), "1.0".into()),
                ("id".into(), "ce-1".into()),
                ("source".into(), "/producer".into()),
                ("type".into(), "com.example".into()),
            ],
            data: None,
            typed: Vec::new(),
        };
        let (properties, body) = amqp::to_message(&envelope).unwrap();
        let event = message_to_event(&properties, &body, "/src").unwrap();
        assert_eq!(
            (event.id.as_str(), event.ty.as_str()),
            ("ce-1", "com.example")
        );

        let structured =
            BasicProperties::default().with_content_type("application/cloudevents+json".into());
        let body = br#"{"specversion":"1.0","id":"s-1","source":"/s","type":"t","data":{"x":1}}"#;
        let event = message_to_event(&structured, body, "/src").unwrap();
        assert_eq!(event.id, "s-1");
        assert!(message_to_event(&structured, b"not json", "/src").is_err());
    }

    #[test]
    fn vhosts_replace_the_uri_path() {
        assert_eq!(
            with_vhost("amqp://u:p@h:5672/%2f?heartbeat=10", "orders/eu"),
            "amqp://u:p@h:5672/orders%2Feu?heartbeat=10"
        );
        assert_eq!(with_vhost("amqp://h", "/"), "amqp://h/%2F");
    }

    #[test]
    fn validation_names_the_field() {
        let spec = |uri: Option<&str>, queue: &str| RabbitmqSourceSpec {
            uri: uri.map(str::to_owned),
            rabbitmq_resources_config: RabbitmqResourcesConfig {
                queue_name: queue.into(),
                ..RabbitmqResourcesConfig::default()
            },
            source: SourceSpec {
                sink: rivulet_core::resources::Destination {
                    uri: Some("http://127.0.0.1:9/".into()),
                    ..Default::default()
                },
                ce_overrides: None,
            },
            ..RabbitmqSourceSpec::default()
        };
        assert!(spec(Some("amqp://h"), "q").validate().is_ok());
        assert_eq!(
            spec(None, "q").validate().unwrap_err().field,
            "spec.rabbitmqClusterReference.connectionSecret"
        );
        assert_eq!(
            spec(Some("amqp://h"), "").validate().unwrap_err().field,
            "spec.rabbitmqResourcesConfig.queueName"
        );
        assert_eq!(
            spec(Some("http://h"), "q").validate().unwrap_err().field,
            "spec.uri"
        );
    }
}
