//! `NatsSink` (`sinks.rivulet.dev/v1alpha1`): publishes every CloudEvent it receives over HTTP
//! to a NATS subject in the CloudEvents NATS binding's binary mode (attributes as `ce-*`
//! headers, `datacontenttype` as `content-type`, data as the payload).
//!
//! With `jetstream: false` (the default) the answer is `202` once the NATS server has the
//! message (a round trip after the publish): core NATS hands it to whoever subscribes now and
//! keeps nothing. With `jetstream: true` the answer is `202` only once the stream that takes
//! the subject acknowledged the message; no stream taking the subject is `502`. NATS
//! unreachable, or no answer within ten seconds, is `503`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rivulet_channels::nats::async_nats::{self, jetstream};
use rivulet_channels::nats::{DEFAULT_URL, binding};
use rivulet_core::knative_sink;
use rivulet_core::resources::apply;

use super::{Built, Outlet, SinkError, SinkKey, SinkKind, SinkStatus};
use rivulet_control::runtime::Context;
use rivulet_core::event::Event;
use rivulet_core::resources::Condition;
use rivulet_core::resources::validation::{
    ValidateSpec, ValidationError, validate_nats_subject, validate_nats_url,
};

/// How long a publish waits for the server (and JetStream's acknowledgement).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// `NatsSink`.
#[apply(knative_sink!)]
#[kube(group = "sinks.rivulet.dev", version = "v1alpha1", kind = "NatsSink")]
#[kube(printcolumn = r#"{"name":"Subject","type":"string","jsonPath":".spec.subject"}"#)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NatsSinkSpec {
    /// The NATS server (`nats://host:4222`); `nats://127.0.0.1:4222` when unset.
    pub url: Option<String>,
    /// The subject events are published on (no wildcards).
    pub subject: String,
    /// Publish through JetStream and answer only after the stream's acknowledgement.
    #[serde(default)]
    pub jetstream: bool,
}

crate::register_sink! {
    NatsSink {
        group: "sinks.rivulet.dev",
        version: "v1alpha1",
    }
}

impl ValidateSpec for NatsSinkSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        if let Some(url) = &self.url {
            validate_nats_url("spec.url", url)?;
        }
        validate_nats_subject("spec.subject", &self.subject, false)
    }
}

impl SinkKind for NatsSink {
    const KIND: &'static str = "NatsSink";
    const PLURAL: &'static str = "natssinks";

    async fn build(&self, key: &SinkKey, _ctx: &Arc<Context>) -> Result<Built, Condition> {
        let spec = &self.spec;
        let url = spec.url.clone().unwrap_or_else(|| DEFAULT_URL.to_owned());
        Ok(Built {
            fingerprint: format!("{url}|{}|{}", spec.subject, spec.jetstream),
            outlet: Arc::new(NatsPublisher {
                url,
                client_name: format!("rivulet NatsSink {}/{}", key.namespace, key.name),
                subject: spec.subject.clone(),
                jetstream: spec.jetstream,
                client: tokio::sync::Mutex::new(None),
            }),
            conditions: Vec::new(),
        })
    }
}

/// Publishes to one subject over one connection, made on first use.
pub struct NatsPublisher {
    url: String,
    client_name: String,
    subject: String,
    jetstream: bool,
    client: tokio::sync::Mutex<Option<async_nats::Client>>,
}

fn unavailable(error: impl std::fmt::Display) -> SinkError {
    SinkError::Unavailable(format!("NATS: {error}"))
}

impl NatsPublisher {
    async fn client(&self) -> Result<async_nats::Client, SinkError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = &*slot {
            return Ok(client.clone());
        }
        let client = rivulet_channels::nats::connect(&self.url, &self.client_name)
            .await
            .map_err(unavailable)?;
        *slot = Some(client.clone());
        Ok(client)
    }
}

#[async_trait]
impl Outlet for NatsPublisher {
    async fn accept(&self, event: Event) -> Result<(), SinkError> {
        let encoded = binding::encode(&event.to_envelope())
            .map_err(|e| SinkError::Invalid(format!("the event cannot travel over NATS: {e}")))?;
        let client = self.client().await?;
        // The client reconnects by itself; while it is away, publishing would only fill its
        // buffer, so say so at once.
        if !rivulet_channels::nats::is_connected(&client) {
            return Err(unavailable(format!("not connected to {}", self.url)));
        }
        let subject = self.subject.clone();
        if self.jetstream {
            let context = rivulet_channels::nats::jetstream_context(client);
            let ack = context
                .publish_with_headers(subject, encoded.headers, encoded.payload)
                .await
                .map_err(unavailable)?;
            match tokio::time::timeout(PUBLISH_TIMEOUT, ack).await {
                Err(_) => Err(unavailable(format!(
                    "no JetStream acknowledgement within {PUBLISH_TIMEOUT:?}"
                ))),
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => match error.kind() {
                    jetstream::context::PublishErrorKind::StreamNotFound => {
                        Err(SinkError::Refused(format!(
                            "no JetStream stream takes subject {:?}",
                            self.subject
                        )))
                    }
                    jetstream::context::PublishErrorKind::MaxPayloadExceeded => Err(
                        SinkError::Refused(format!("the event is too large for NATS: {error}")),
                    ),
                    _ => Err(unavailable(error)),
                },
            }
        } else {
            client
                .publish_with_headers(subject, encoded.headers, encoded.payload)
                .await
                .map_err(unavailable)?;
            tokio::time::timeout(PUBLISH_TIMEOUT, client.flush())
                .await
                .map_err(|_| unavailable(format!("no answer within {PUBLISH_TIMEOUT:?}")))?
                .map_err(unavailable)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let spec = |url: Option<&str>, subject: &str| NatsSinkSpec {
            url: url.map(str::to_owned),
            subject: subject.into(),
            jetstream: true,
        };
        assert!(spec(None, "orders.created").validate().is_ok());
        assert!(spec(Some("nats://h:4222"), "o").validate().is_ok());
        let field = |s: NatsSinkSpec| s.validate().unwrap_err().field;
        assert_eq!(field(spec(None, "")), "spec.subject");
        assert_eq!(field(spec(None, "orders.*")), "spec.subject");
        assert_eq!(field(spec(Some("amqp://h"), "o")), "spec.url");
    }
}
