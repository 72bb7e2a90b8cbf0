//! `RabbitmqSink` (`sinks.rivulet.dev/v1alpha1`): publishes every CloudEvent it receives over
//! HTTP to a RabbitMQ exchange, in the CloudEvents AMQP binding's binary mode (attributes as
//! `cloudEvents_*` headers, `datacontenttype` as the content type, data as the body, persistent),
//! and answers `202` only once RabbitMQ confirmed the message.
//!
//! `spec.uri` (an AMQP URI) or `spec.connectionSecret` (a Secret with `uri`, or Knative's
//! `uri`/`port`/`username`/`password`) says where RabbitMQ is; `spec.exchange` (empty: the
//! default exchange) and `spec.routingKey` (unset: the event's `type`) where the message goes.
//! Messages are published mandatory: one that no queue takes is answered `502`, since it would
//! otherwise be gone without a trace. RabbitMQ unreachable or refusing (negative confirm) is
//! `503`; a missing exchange is `502`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rivulet_channels::rabbitmq::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use rivulet_channels::rabbitmq::lapin::{self, Confirmation};
use rivulet_channels::rabbitmq::{Link, amqp, link};
use rivulet_core::knative_sink;
use rivulet_core::resources::apply;

use super::{Built, Outlet, SinkError, SinkKey, SinkKind, SinkStatus};
use rivulet_control::runtime::Context;
use rivulet_core::event::Event;
use rivulet_core::resources::Condition;
use rivulet_core::resources::rabbitmq_broker_config::{SecretReference, validate_amqp_connection};
use rivulet_core::resources::validation::{ValidateSpec, ValidationError};

/// How long a publish waits for RabbitMQ's confirm.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// `RabbitmqSink`.
#[apply(knative_sink!)]
#[kube(
    group = "sinks.rivulet.dev",
    version = "v1alpha1",
    kind = "RabbitmqSink"
)]
#[kube(printcolumn = r#"{"name":"Exchange","type":"string","jsonPath":".spec.exchange"}"#)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RabbitmqSinkSpec {
    /// The AMQP URI (`amqp://user:password@host:5672/%2f`).
    pub uri: Option<String>,
    /// A Secret in the sink's namespace holding the connection instead.
    pub connection_secret: Option<SecretReference>,
    /// The exchange events are published to; empty for the default exchange.
    #[serde(default)]
    pub exchange: String,
    /// The routing key; the event's `type` when unset.
    pub routing_key: Option<String>,
}

crate::register_sink! {
    RabbitmqSink {
        group: "sinks.rivulet.dev",
        version: "v1alpha1",
    }
}

impl ValidateSpec for RabbitmqSinkSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        validate_amqp_connection(
            self.uri.as_deref(),
            self.connection_secret.as_ref(),
            "spec.connectionSecret",
            ValidationError::new("spec.uri", "is required (or spec.connectionSecret)"),
        )?;
        if self.exchange.len() > 255 {
            return Err(ValidationError::new(
                "spec.exchange",
                "is longer than 255 bytes",
            ));
        }
        if self.routing_key.as_ref().is_some_and(|k| k.len() > 255) {
            return Err(ValidationError::new(
                "spec.routingKey",
                "is longer than 255 bytes",
            ));
        }
        Ok(())
    }
}

impl SinkKind for RabbitmqSink {
    const KIND: &'static str = "RabbitmqSink";
    const PLURAL: &'static str = "rabbitmqsinks";

    async fn build(&self, key: &SinkKey, ctx: &Arc<Context>) -> Result<Built, Condition> {
        let spec = &self.spec;
        let mut conditions = Vec::new();
        let uri = rivulet_control::runtime::amqp_connection_uri(
            ctx,
            spec.uri.as_deref(),
            spec.connection_secret
                .as_ref()
                .map(|secret| (key.namespace.as_str(), secret.name.as_str())),
            "spec.uri nor spec.connectionSecret",
            &mut conditions,
        )
        .await?;
        let fingerprint = format!("{uri}|{}|{:?}", spec.exchange, spec.routing_key);
        Ok(Built {
            outlet: Arc::new(RabbitmqPublisher {
                link: Link::new(
                    uri,
                    format!("rivulet RabbitmqSink {}/{}", key.namespace, key.name),
                ),
                exchange: spec.exchange.clone(),
                routing_key: spec.routing_key.clone(),
                channel: tokio::sync::Mutex::new(None),
            }),
            fingerprint,
            conditions,
        })
    }
}

/// Publishes to one exchange, in confirm mode.
pub struct RabbitmqPublisher {
    link: Link,
    exchange: String,
    routing_key: Option<String>,
    channel: tokio::sync::Mutex<Option<lapin::Channel>>,
}

fn unavailable(error: impl std::fmt::Display) -> SinkError {
    SinkError::Unavailable(format!("RabbitMQ: {error}"))
}

impl RabbitmqPublisher {
    async fn channel(&self) -> Result<lapin::Channel, SinkError> {
        let mut slot = self.channel.lock().await;
        if let Some(channel) = &*slot
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        *slot = None;
        let channel = self.link.channel().await.map_err(unavailable)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(unavailable)?;
        *slot = Some(channel.clone());
        Ok(channel)
    }
}

#[async_trait]
impl Outlet for RabbitmqPublisher {
    async fn accept(&self, event: Event) -> Result<(), SinkError> {
        let (properties, body) = amqp::to_message(&event.to_envelope())
            .map_err(|e| SinkError::Invalid(format!("the event cannot travel over AMQP: {e}")))?;
        let routing_key = self.routing_key.as_deref().unwrap_or(&event.ty);
        let routing_key = lapin::types::ShortString::try_new(routing_key).map_err(|_| {
            SinkError::Invalid("the routing key (the event type) is longer than 255 bytes".into())
        })?;
        let channel = self.channel().await?;
        let confirm = channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &body,
                properties,
            )
            .await
            .map_err(unavailable)?;
        let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
            .await
            .map_err(|_| unavailable(format!("no confirm within {CONFIRM_TIMEOUT:?}")))?
            .map_err(|e| {
                if link::is_not_found(&e) {
                    SinkError::Refused(format!("exchange {:?} does not exist: {e}", self.exchange))
                } else {
                    unavailable(e)
                }
            })?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(SinkError::Refused(format!(
                "no queue is bound to exchange {:?} for routing key {:?} ({})",
                self.exchange, returned.delivery.routing_key, returned.reply_text
            ))),
            Confirmation::Nack(_) => Err(unavailable("RabbitMQ refused to store the event")),
            Confirmation::NotRequested => Err(unavailable("no publisher confirm")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let spec = |uri: Option<&str>, secret: Option<&str>| RabbitmqSinkSpec {
            uri: uri.map(str::to_owned),
            connection_secret: secret.map(|name| SecretReference { name: name.into() }),
            ..RabbitmqSinkSpec::default()
        };
        assert!(spec(Some("amqp://h"), None).validate().is_ok());
        assert!(spec(None, Some("s")).validate().is_ok());
        assert_eq!(spec(None, None).validate().unwrap_err().field, "spec.uri");
        assert_eq!(
            spec(Some("amqp://h"), Some("s"))
                .validate()
                .unwrap_err()
                .field,
            "spec.uri"
        );
        assert_eq!(
            spec(None, Some("")).validate().unwrap_err().field,
            "spec.connectionSecret.name"
        );
    }
}
