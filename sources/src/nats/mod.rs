//! NatsSource (`sources.rivulet.dev/v1alpha1`; Knative has no standard NATS source kind):
//! brings NATS messages to a sink as CloudEvents.
//!
//! Two modes:
//! - core NATS (no `spec.stream`): subscribes to `spec.subject` (wildcards allowed) as a
//!   member of `spec.queueGroup`, by default the source's own group, so data-plane replicas
//!   split the messages; other subscribers of the subject still get every message. Core NATS keeps nothing: a message the
//!   sink does not take after the delivery retries is logged, counted and gone.
//! - JetStream (`spec.stream` set): consumes the stream through the durable pull consumer
//!   `spec.consumer` (default `rivulet-{namespace}-{name}`, created when missing, filtered on
//!   `spec.subject`). A message is acknowledged only once the sink (or its dead-letter sink)
//!   took it; otherwise it is negatively acknowledged with a growing delay and JetStream
//!   delivers it again. The stream itself must exist: it belongs to whoever publishes.
//!
//! A message in the CloudEvents NATS binding (binary mode: `ce-*` headers; structured mode:
//! `content-type: application/cloudevents+json`) is that event. Any other message is wrapped:
//! type `dev.rivulet.nats.message`, source `/apis/v1/namespaces/{namespace}/natssources/{name}`
//! (as Knative's sources name themselves; a NATS subject with wildcards is no URI reference),
//! subject the message's own NATS subject, id `{stream}-{sequence}` in JetStream mode (the same on every redelivery) or the
//! `Nats-Msg-Id` header or a new UUID in core mode, time the JetStream publish time (or now),
//! the body as data with the `content-type` header as datacontenttype (`application/json` when
//! the body parses as JSON, else `application/octet-stream`), JSON bodies thus kept as JSON.
//!
//! A message that claims to be a CloudEvent but is not a valid one, and one the sink refuses
//! for good (a `4xx` it does not retry), is terminated in JetStream (never redelivered).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use rivulet_channels::nats::async_nats::jetstream::AckKind;
use rivulet_channels::nats::async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use rivulet_channels::nats::async_nats::{self, HeaderMap};
use rivulet_channels::nats::{DEFAULT_URL, binding};
use rivulet_core::knative_source;
use rivulet_core::resources::apply;

use super::{
    CloudEventAttributes, Prepared, SinkClient, SourceAdapter, SourceContext, SourceError,
    SourceKey, SourceKind, SourceSpec, SourceStatus,
};
use rivulet_core::event::{Event, SpecVersion};
use rivulet_core::resources::validation::{
    ValidateSpec, ValidationError, validate_nats_subject, validate_nats_url,
};
use rivulet_core::resources::{Condition, DeliverySpec};

/// The type of events wrapped around messages that carry no CloudEvent.
pub const WRAPPED_EVENT_TYPE: &str = "dev.rivulet.nats.message";

/// How long JetStream waits for an acknowledgement before it delivers a message again; the
/// source reports progress while the sink is still being tried, so this only matters when the
/// source process dies.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// The first and the longest pause before JetStream delivers a failed message again.
const FIRST_REDELIVERY_DELAY: Duration = Duration::from_millis(500);
const LONGEST_REDELIVERY_DELAY: Duration = Duration::from_secs(30);

/// `NatsSource`.
#[apply(knative_source!)]
#[kube(
    group = "sources.rivulet.dev",
    version = "v1alpha1",
    kind = "NatsSource"
)]
#[kube(printcolumn = r#"{"name":"Subject","type":"string","jsonPath":".spec.subject"}"#)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NatsSourceSpec {
    /// The NATS server (`nats://host:4222`); `nats://127.0.0.1:4222` when unset.
    pub url: Option<String>,
    /// The subject to read; wildcards (`*`, `>`) allowed.
    pub subject: String,
    /// Core NATS only: join this queue group, so that sources sharing it split the messages
    /// (default `rivulet-{namespace}-{name}`: the source's own, which its replicas share).
    pub queue_group: Option<String>,
    /// JetStream mode: the stream to consume (it must exist).
    pub stream: Option<String>,
    /// JetStream mode: the durable consumer's name.
    pub consumer: Option<String>,
    /// Retries towards the sink.
    pub delivery: Option<DeliverySpec>,
    /// Where events go and what is added to them, as every source has.
    #[serde(flatten)]
    pub source: SourceSpec,
}

crate::register_source! {
    NatsSource {
        group: "sources.rivulet.dev",
        version: "v1alpha1",
        plural: "natssources",
    }
}

/// Stream and consumer names: no white space, `.`, `*`, `>`, path separators.
fn validate_name(field: &str, name: &str) -> Result<(), ValidationError> {
    if name.is_empty() {
        return Err(ValidationError::new(field, "is empty"));
    }
    if name.len() > 255 {
        return Err(ValidationError::new(field, "is longer than 255 bytes"));
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        return Err(ValidationError::new(
            field,
            format!("{name:?} holds white space or one of . * > / \\"),
        ));
    }
    Ok(())
}

impl ValidateSpec for NatsSourceSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        if let Some(url) = &self.url {
            validate_nats_url("spec.url", url)?;
        }
        validate_nats_subject("spec.subject", &self.subject, true)?;
        match (&self.stream, &self.consumer, &self.queue_group) {
            (None, Some(_), _) => {
                return Err(ValidationError::new(
                    "spec.consumer",
                    "needs spec.stream (a durable consumer is a JetStream thing)",
                ));
            }
            (Some(_), _, Some(_)) => {
                return Err(ValidationError::new(
                    "spec.queueGroup",
                    "is for core NATS; in JetStream mode sources sharing spec.consumer split the messages",
                ));
            }
            _ => {}
        }
        if let Some(stream) = &self.stream {
            validate_name("spec.stream", stream)?;
        }
        if let Some(consumer) = &self.consumer {
            validate_name("spec.consumer", consumer)?;
        }
        if let Some(group) = &self.queue_group {
            validate_name("spec.queueGroup", group)?;
        }
        self.source.validate_with_delivery(self.delivery.as_ref())
    }
}

impl SourceKind for NatsSource {
    const KIND: &'static str = "NatsSource";

    fn source(&self) -> &SourceSpec {
        &self.spec.source
    }

    fn delivery(&self) -> Option<&DeliverySpec> {
        self.spec.delivery.as_ref()
    }

    async fn prepare(
        &self,
        key: &SourceKey,
        _ctx: &Arc<rivulet_control::runtime::Context>,
    ) -> Result<Prepared, Condition> {
        let spec = &self.spec;
        let event_source = format!(
            "/apis/v1/namespaces/{}/natssources/{}",
            key.namespace, key.name
        );
        let mode = match &spec.stream {
            Some(stream) => Mode::JetStream {
                stream: stream.clone(),
                consumer: spec
                    .consumer
                    .clone()
                    .unwrap_or_else(|| format!("rivulet-{}-{}", key.namespace, key.name)),
            },
            // Data-plane replicas each run the source; a queue group of its own makes them
            // split the messages instead of each sending every one.
            None => Mode::Core {
                queue_group: Some(
                    spec.queue_group
                        .clone()
                        .unwrap_or_else(|| format!("rivulet-{}-{}", key.namespace, key.name)),
                ),
            },
        };
        let adapter = NatsAdapter {
            url: spec.url.clone().unwrap_or_else(|| DEFAULT_URL.to_owned()),
            subject: spec.subject.clone(),
            mode,
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
            conditions: Vec::new(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Core { queue_group: Option<String> },
    JetStream { stream: String, consumer: String },
}

/// Reads one subject or stream.
#[derive(Debug)]
struct NatsAdapter {
    url: String,
    subject: String,
    mode: Mode,
    event_source: String,
}

fn upstream(what: &str, error: impl std::fmt::Display) -> SourceError {
    SourceError::Upstream(format!("NATS {what}: {error}"))
}

#[async_trait]
impl SourceAdapter for NatsAdapter {
    async fn run(&self, ctx: &SourceContext) -> Result<(), SourceError> {
        let client_name = format!("rivulet NatsSource {}/{}", ctx.key.namespace, ctx.key.name);
        let client = tokio::select! {
            _ = ctx.cancel.cancelled() => return Ok(()),
            client = rivulet_channels::nats::connect(&self.url, &client_name) => {
                client.map_err(|e| upstream("connect", e))?
            }
        };
        let outcome = match &self.mode {
            Mode::Core { queue_group } => self.run_core(&client, queue_group.as_deref(), ctx).await,
            Mode::JetStream { stream, consumer } => {
                self.run_jetstream(&client, stream, consumer, ctx).await
            }
        };
        // Whatever is unacknowledged goes back to JetStream once its ack wait is over.
        let _ = client.drain().await;
        outcome
    }
}

impl NatsAdapter {
    async fn run_core(
        &self,
        client: &async_nats::Client,
        queue_group: Option<&str>,
        ctx: &SourceContext,
    ) -> Result<(), SourceError> {
        let subject = self.subject.clone();
        let mut subscriber = match queue_group {
            Some(group) => client.queue_subscribe(subject, group.to_owned()).await,
            None => client.subscribe(subject).await,
        }
        .map_err(|e| upstream(&format!("subscribe to {}", self.subject), e))?;
        loop {
            let message = tokio::select! {
                _ = ctx.cancel.cancelled() => return Ok(()),
                message = subscriber.next() => message,
            };
            let Some(message) = message else {
                return Err(upstream("subscription", "closed by the server"));
            };
            let id = header(message.headers.as_ref(), "Nats-Msg-Id")
                .map(str::to_owned)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let wrapping = Wrapping {
                event_source: &self.event_source,
                id,
                time: chrono::Utc::now(),
            };
            match message_to_event(
                &message.subject,
                message.headers.as_ref(),
                &message.payload,
                wrapping,
            ) {
                // Core NATS cannot take a message back: `send` logs and counts a failure.
                Ok(event) => {
                    let _ = ctx.sink.send(event).await;
                }
                Err(reason) => {
                    tracing::warn!(subject = %message.subject, %reason, "dropping a NATS message that is no valid CloudEvent");
                }
            }
        }
    }

    async fn run_jetstream(
        &self,
        client: &async_nats::Client,
        stream_name: &str,
        consumer_name: &str,
        ctx: &SourceContext,
    ) -> Result<(), SourceError> {
        let jetstream = rivulet_channels::nats::jetstream_context(client.clone());
        let stream = jetstream
            .get_stream(stream_name)
            .await
            .map_err(|e| upstream(&format!("stream {stream_name}"), e))?;
        let consumer: PullConsumer = stream
            .get_or_create_consumer(
                consumer_name,
                pull::Config {
                    durable_name: Some(consumer_name.to_owned()),
                    description: Some(format!(
                        "rivulet NatsSource {}/{}",
                        ctx.key.namespace, ctx.key.name
                    )),
                    filter_subject: self.subject.clone(),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    ..pull::Config::default()
                },
            )
            .await
            .map_err(|e| upstream(&format!("consumer {consumer_name}"), e))?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(16)
            .messages()
            .await
            .map_err(|e| upstream(&format!("consumer {consumer_name}"), e))?;
        loop {
            let message = tokio::select! {
                _ = ctx.cancel.cancelled() => return Ok(()),
                message = messages.next() => message,
            };
            let message = match message {
                Some(Ok(message)) => message,
                Some(Err(error)) => return Err(upstream("consume", error)),
                None => return Err(upstream("consume", "the message stream ended")),
            };
            let (id, time, delivered) = match message.info() {
                Ok(info) => (
                    format!("{}-{}", info.stream, info.stream_sequence),
                    chrono::DateTime::from_timestamp_nanos(
                        i64::try_from(info.published.unix_timestamp_nanos()).unwrap_or_default(),
                    ),
                    info.delivered,
                ),
                Err(_) => (uuid::Uuid::new_v4().to_string(), chrono::Utc::now(), 1),
            };
            let wrapping = Wrapping {
                event_source: &self.event_source,
                id,
                time,
            };
            let event = message_to_event(
                &message.subject,
                message.headers.as_ref(),
                &message.payload,
                wrapping,
            );
            let verdict = match event {
                Ok(event) => send_with_progress(&ctx.sink, event, &message).await,
                Err(reason) => {
                    tracing::warn!(subject = %message.subject, %reason, "terminating a NATS message that is no valid CloudEvent");
                    AckKind::Term
                }
            };
            let verdict = match verdict {
                AckKind::Nak(_) => AckKind::Nak(Some(redelivery_delay(delivered))),
                other => other,
            };
            // A lost acknowledgement means JetStream delivers the message again: at least once.
            if let Err(error) = message.ack_with(verdict).await {
                tracing::warn!(%error, "acknowledging a JetStream message failed");
            }
        }
    }
}

/// Delivers `event`, telling JetStream the message is still being worked on meanwhile (the
/// sink's retries may outlast the ack wait). Returns what to answer JetStream.
async fn send_with_progress(
    sink: &SinkClient,
    event: Event,
    message: &async_nats::jetstream::Message,
) -> AckKind {
    let send = sink.send(event);
    tokio::pin!(send);
    let mut progress = tokio::time::interval(ACK_WAIT / 3);
    progress.tick().await;
    loop {
        tokio::select! {
            outcome = &mut send => {
                return match outcome {
                    Ok(_) => AckKind::Ack,
                    Err(error) if !error.is_temporary() => AckKind::Term,
                    Err(_) => AckKind::Nak(None),
                };
            }
            _ = progress.tick() => {
                let _ = message.ack_with(AckKind::Progress).await;
            }
        }
    }
}

/// `delivered` counts attempts so far, starting at 1: the pause doubles each time.
fn redelivery_delay(delivered: i64) -> Duration {
    let doublings = u32::try_from(delivered.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    (FIRST_REDELIVERY_DELAY * 2u32.pow(doublings)).min(LONGEST_REDELIVERY_DELAY)
}

/// The first value of a header, its name matched without regard to case.
fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?
        .iter()
        .find(|(key, _)| AsRef::<str>::as_ref(*key).eq_ignore_ascii_case(name))
        .and_then(|(_, values)| values.first())
        .map(|value| value.as_str())
}

/// The attributes a wrapped message gets.
pub struct Wrapping<'a> {
    pub event_source: &'a str,
    pub id: String,
    pub time: chrono::DateTime<chrono::Utc>,
}

/// The event a message stands for: its own in the CloudEvents NATS binding, or the message
/// wrapped in one.
pub fn message_to_event(
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &bytes::Bytes,
    wrapping: Wrapping<'_>,
) -> Result<Event, String> {
    let content_type = header(headers, binding::CONTENT_TYPE_HEADER);
    if binding::is_binary(headers) {
        let envelope = binding::decode(headers, payload).map_err(|e| e.to_string())?;
        let event = Event::from_envelope(&envelope).map_err(|e| e.to_string())?;
        event.validate().map_err(|e| e.to_string())?;
        return Ok(event);
    }
    if content_type.is_some_and(|c| {
        c.trim_start()
            .to_ascii_lowercase()
            .starts_with("application/cloudevents+json")
    }) {
        return rivulet_core::event::parse_structured(payload)
            .map_err(|e| format!("structured-mode message: {e}"));
    }
    let datacontenttype = match content_type {
        _ if payload.is_empty() => None,
        Some(content_type) => Some(content_type.to_owned()),
        None if serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok() => {
            Some("application/json".to_owned())
        }
        None => Some("application/octet-stream".to_owned()),
    };
    Ok(Event {
        specversion: SpecVersion::V10,
        id: wrapping.id,
        source: wrapping.event_source.to_owned(),
        ty: WRAPPED_EVENT_TYPE.to_owned(),
        datacontenttype,
        dataschema: None,
        subject: Some(subject.to_owned()),
        time: Some(
            wrapping
                .time
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        ),
        datacontentencoding: None,
        extensions: BTreeMap::new(),
        data: (!payload.is_empty()).then(|| payload.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rivulet_channels::Envelope;

    fn wrapping() -> Wrapping<'static> {
        Wrapping {
            event_source: "/apis/v1/namespaces/default/natssources/n",
            id: "m-1".into(),
            time: chrono::Utc::now(),
        }
    }

    #[test]
    fn messages_become_events() {
        let json = bytes::Bytes::from_static(b"{\"a\":1}");
        let event = message_to_event("orders.eu", None, &json, wrapping()).unwrap();
        assert_eq!(event.ty, WRAPPED_EVENT_TYPE);
        assert_eq!(event.source, "/apis/v1/namespaces/default/natssources/n");
        assert_eq!(event.subject.as_deref(), Some("orders.eu"));
        assert_eq!(event.id, "m-1");
        assert_eq!(event.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(event.data.as_deref(), Some(&b"{\"a\":1}"[..]));

        let mut text = HeaderMap::new();
        text.insert("Content-Type", "text/plain");
        let body = bytes::Bytes::from_static(b"hello");
        let event = message_to_event("s", Some(&text), &body, wrapping()).unwrap();
        assert_eq!(event.datacontenttype.as_deref(), Some("text/plain"));
        let raw = bytes::Bytes::from_static(b"\x00\x01");
        let event = message_to_event("s", None, &raw, wrapping()).unwrap();
        assert_eq!(
            event.datacontenttype.as_deref(),
            Some("application/octet-stream")
        );

        let envelope = Envelope {
            attributes: vec![
                ("specversion".into(), "1.0".into()),
                ("id".into(), "ce-1".into()),
                ("source".into(), "/producer".into()),
                ("type".into(), "com.example".into()),
            ],
            data: Some("x".into()),
            typed: Vec::new(),
        };
        let encoded = binding::encode(&envelope).unwrap();
        let event =
            message_to_event("s", Some(&encoded.headers), &encoded.payload, wrapping()).unwrap();
        assert_eq!(
            (event.id.as_str(), event.ty.as_str()),
            ("ce-1", "com.example")
        );

        let mut structured = HeaderMap::new();
        structured.insert("content-type", "application/cloudevents+json");
        let body = bytes::Bytes::from_static(
            br#"{"specversion":"1.0","id":"s-1","source":"/s","type":"t","data":{"x":1}}"#,
        );
        let event = message_to_event("s", Some(&structured), &body, wrapping()).unwrap();
        assert_eq!(event.id, "s-1");
        let broken = bytes::Bytes::from_static(b"not json");
        assert!(message_to_event("s", Some(&structured), &broken, wrapping()).is_err());
    }

    #[test]
    fn redelivery_waits_longer_each_time() {
        assert_eq!(redelivery_delay(1), FIRST_REDELIVERY_DELAY);
        assert_eq!(redelivery_delay(2), FIRST_REDELIVERY_DELAY * 2);
        assert_eq!(redelivery_delay(100), LONGEST_REDELIVERY_DELAY);
        assert_eq!(redelivery_delay(0), FIRST_REDELIVERY_DELAY);
    }

    #[test]
    fn validation_names_the_field() {
        let spec = |subject: &str, stream: Option<&str>, consumer: Option<&str>| NatsSourceSpec {
            subject: subject.into(),
            stream: stream.map(str::to_owned),
            consumer: consumer.map(str::to_owned),
            source: SourceSpec {
                sink: rivulet_core::resources::Destination {
                    uri: Some("http://127.0.0.1:9/".into()),
                    ..Default::default()
                },
                ce_overrides: None,
            },
            ..NatsSourceSpec::default()
        };
        assert!(spec("orders.>", None, None).validate().is_ok());
        assert!(
            spec("orders.*", Some("ORDERS"), Some("c"))
                .validate()
                .is_ok()
        );
        let field = |s: NatsSourceSpec| s.validate().unwrap_err().field;
        assert_eq!(field(spec("", None, None)), "spec.subject");
        assert_eq!(field(spec("a..b", None, None)), "spec.subject");
        assert_eq!(field(spec("a.>.b", None, None)), "spec.subject");
        assert_eq!(field(spec("a", None, Some("c"))), "spec.consumer");
        assert_eq!(field(spec("a", Some("A.B"), None)), "spec.stream");
        let mut bad_url = spec("a", None, None);
        bad_url.url = Some("http://h:4222".into());
        assert_eq!(field(bad_url), "spec.url");
    }
}
