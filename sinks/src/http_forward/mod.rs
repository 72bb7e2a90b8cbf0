//! `HttpForwardSink` (`sinks.rivulet.dev/v1alpha1`): forwards every event to a URL with
//! Knative's delivery rules (`spec.delivery`: retries, backoff, timeout, dead-letter sink),
//! and answers its sender `202` only once the target (or the dead-letter sink) took the
//! event. Replies of the target are not passed back.

use std::sync::Arc;

use async_trait::async_trait;
use rivulet_core::knative_sink;
use rivulet_core::resources::apply;

use super::{Built, Outlet, SinkError, SinkKey, SinkKind, SinkStatus};
use rivulet_broker::delivery::{DeliveryPolicy, Outcome, Sender, is_retryable};
use rivulet_control::runtime::{self, Context};
use rivulet_core::event::Event;
use rivulet_core::metrics::{AdapterLabels, Metrics};
use rivulet_core::resources::validation::{
    ValidateSpec, ValidationError, validate_delivery, validate_destination,
};
use rivulet_core::resources::{Condition, DeliverySpec, Destination};

/// `HttpForwardSink`.
#[apply(knative_sink!)]
#[kube(
    group = "sinks.rivulet.dev",
    version = "v1alpha1",
    kind = "HttpForwardSink"
)]
#[kube(printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.uri"}"#)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpForwardSinkSpec {
    /// Where events are forwarded: an absolute http or https URL.
    pub uri: String,
    /// Knative's delivery spec towards `uri`.
    pub delivery: Option<DeliverySpec>,
}

crate::register_sink! {
    HttpForwardSink {
        group: "sinks.rivulet.dev",
        version: "v1alpha1",
    }
}

impl ValidateSpec for HttpForwardSinkSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.uri.is_empty() {
            return Err(ValidationError::new("spec.uri", "is required"));
        }
        let as_destination = Destination {
            uri: Some(self.uri.clone()),
            ..Destination::default()
        };
        validate_destination("spec", &as_destination)?;
        // Rivulet's own kind, so it can refuse at admission what it could never forward to.
        if let Ok(url) = url::Url::parse(&self.uri)
            && !matches!(url.scheme(), "http" | "https")
        {
            return Err(ValidationError::new(
                "spec.uri",
                format!(
                    "scheme {:?} is not supported; use http or https",
                    url.scheme()
                ),
            ));
        }
        if let Some(delivery) = &self.delivery {
            validate_delivery("spec.delivery", delivery)?;
        }
        Ok(())
    }
}

impl SinkKind for HttpForwardSink {
    const KIND: &'static str = "HttpForwardSink";
    const PLURAL: &'static str = "httpforwardsinks";

    async fn build(&self, key: &SinkKey, ctx: &Arc<Context>) -> Result<Built, Condition> {
        let spec = &self.spec;
        let mut conditions = Vec::new();
        let mut dead_letter_uri = None;
        if let Some(dls) = spec
            .delivery
            .as_ref()
            .and_then(|d| d.dead_letter_sink.as_ref())
        {
            let uri = runtime::resolve_destination(dls, &key.namespace, ctx)
                .await
                .map_err(|reason| {
                    Condition::new("DeadLetterSinkResolved", false, "Unresolved", reason)
                })?;
            conditions.push(Condition::new("DeadLetterSinkResolved", true, "", ""));
            dead_letter_uri = Some(uri);
        }
        let policy = DeliveryPolicy::from_spec(
            spec.delivery.as_ref(),
            dead_letter_uri,
            &ctx.settings.delivery,
        );
        let fingerprint = format!("{}|{policy:?}", spec.uri);
        Ok(Built {
            outlet: Arc::new(HttpForward {
                uri: spec.uri.clone(),
                policy,
                sender: ctx.dispatch.sender.clone(),
                metrics: ctx.dispatch.metrics.clone(),
                labels: key.labels(),
            }),
            fingerprint,
            conditions,
        })
    }
}

/// Forwards events to one URL.
pub struct HttpForward {
    uri: String,
    policy: DeliveryPolicy,
    sender: Sender,
    metrics: Arc<Metrics>,
    labels: AdapterLabels,
}

#[async_trait]
impl Outlet for HttpForward {
    async fn accept(&self, event: Event) -> Result<(), SinkError> {
        let outcome = self.sender.deliver(&self.uri, &event, &self.policy).await;
        let attempts = outcome.attempts();
        if attempts > 1 {
            self.metrics
                .sink_retries
                .get_or_create(&self.labels)
                .inc_by(u64::from(attempts - 1));
        }
        match outcome {
            // A dead-lettered event is kept, as Knative's channels count it as handled.
            Outcome::Delivered { .. } | Outcome::DeadLettered { .. } => Ok(()),
            Outcome::Failed { failure, .. } => {
                let message = format!(
                    "{} after {attempts} attempt(s): {}",
                    self.uri, failure.message
                );
                tracing::warn!(namespace = %self.labels.namespace, sink = %self.labels.name,
                    id = %event.id, error = %message, "event not forwarded");
                if failure.status.map_or(failure.retryable(), is_retryable) {
                    Err(SinkError::Unavailable(message))
                } else {
                    Err(SinkError::Refused(message))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let spec = |uri: &str, delivery: Option<DeliverySpec>| HttpForwardSinkSpec {
            uri: uri.into(),
            delivery,
        };
        assert!(spec("http://127.0.0.1:9/", None).validate().is_ok());
        assert_eq!(spec("", None).validate().unwrap_err().field, "spec.uri");
        assert_eq!(
            spec("ftp://x/", None).validate().unwrap_err().field,
            "spec.uri"
        );
        let bad_retry = DeliverySpec {
            retry: Some(-1),
            ..DeliverySpec::default()
        };
        assert_eq!(
            spec("http://x/", Some(bad_retry))
                .validate()
                .unwrap_err()
                .field,
            "spec.delivery.retry"
        );
    }
}
