//! OpenTelemetry traces over OTLP, named as Knative names them: an ingress span
//! `broker:{name}.{namespace}` per accepted event and a span `trigger:{name}.{namespace}` per
//! delivery, linked through the event's W3C `traceparent` (the CloudEvents distributed
//! tracing extension), so a trace runs on through sources, brokers, triggers and replies.
//!
//! Off unless an endpoint is configured: then nothing here is built, no event is changed and
//! the data path only checks an empty `Option`.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt as _, TraceFlags, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span};
use prometheus_client::metrics::counter::Counter;
use rivulet_core::event::{Event, ExtensionValue};

use crate::delivery::Outcome;
use crate::dispatcher::TriggerDispatch;

mod config;
mod export;

pub use config::{Protocol, TelemetryConfig, TelemetryError};

/// The CloudEvents extension (and HTTP header) carrying the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// Vendor trace state that travels with [`TRACEPARENT`].
pub const TRACESTATE: &str = "tracestate";

/// Span attribute names. Knative's own where it has them (`kn.*`, `messaging.destination`,
/// `messaging.message_id`), the CloudEvents SDK's `cloudevents.*`, OpenTelemetry's semantic
/// conventions for the rest; `rivulet.*` for what only Rivulet reports.
pub mod attributes {
    pub const BROKER_NAME: &str = "kn.broker.name";
    pub const BROKER_NAMESPACE: &str = "kn.broker.namespace";
    pub const TRIGGER_NAME: &str = "kn.trigger.name";
    pub const TRIGGER_NAMESPACE: &str = "kn.trigger.namespace";
    /// Always `knative`, as Knative sets it.
    pub const MESSAGING_SYSTEM: &str = "messaging.system";
    /// `broker:{name}.{namespace}` or `trigger:{name}.{namespace}`, as Knative sets it.
    pub const MESSAGING_DESTINATION: &str = "messaging.destination";
    /// The same value under the current semantic-convention name.
    pub const MESSAGING_DESTINATION_NAME: &str = "messaging.destination.name";
    /// `send` at ingress, `process` at a trigger.
    pub const MESSAGING_OPERATION_NAME: &str = "messaging.operation.name";
    /// The event id, as Knative sets it.
    pub const MESSAGING_MESSAGE_ID: &str = "messaging.message_id";
    pub const CLOUDEVENTS_ID: &str = "cloudevents.id";
    pub const CLOUDEVENTS_SOURCE: &str = "cloudevents.source";
    pub const CLOUDEVENTS_TYPE: &str = "cloudevents.type";
    pub const CLOUDEVENTS_SPECVERSION: &str = "cloudevents.specversion";
    pub const CLOUDEVENTS_SUBJECT: &str = "cloudevents.subject";
    pub const CLOUDEVENTS_DATACONTENTTYPE: &str = "cloudevents.datacontenttype";
    /// Ingress: the status answered; trigger: the subscriber's (or dead-letter sink's) last.
    pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
    /// Why the last delivery attempt failed (`timeout`, `network`, `status`, ...).
    pub const ERROR_TYPE: &str = "error.type";
    /// `delivered`, `dead_lettered` or `failed`.
    pub const DELIVERY_OUTCOME: &str = "rivulet.delivery.outcome";
    /// Attempts made to the subscriber (1 + retries).
    pub const DELIVERY_ATTEMPTS: &str = "rivulet.delivery.attempts";
}

use attributes as attr;

/// A running tracer: cheap to clone, one per server.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Starts exporting to `config`'s endpoint; spans the queue has no room for are dropped
    /// and counted in `dropped`. Needs a Tokio runtime, which exports run on. Nothing is
    /// contacted yet: an unreachable collector shows as export failures in the log.
    pub fn start(config: &TelemetryConfig, dropped: Counter) -> Result<Telemetry, TelemetryError> {
        config::check_endpoint(&config.endpoint)?;
        let queued = Arc::new(AtomicUsize::new(0));
        let exporter = export::exporter(config, queued.clone())?;
        let (processor, resource) = export::processor(config, exporter, queued, dropped);
        // The sampler comes from OTEL_TRACES_SAMPLER / _ARG (parent-based, always on, unless
        // they say otherwise).
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer_with_scope(
            InstrumentationScope::builder("rivulet")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        tracing::info!(endpoint = %config.endpoint, protocol = ?config.protocol, "exporting traces over OTLP");
        Ok(Telemetry {
            inner: Arc::new(Inner { provider, tracer }),
        })
    }

    /// Exports what is left and stops; waits at most `timeout`.
    pub async fn shutdown(&self, timeout: Duration) {
        let provider = self.inner.provider.clone();
        // The provider blocks until its export thread is done; that thread's exports run on
        // this runtime, so the wait is moved off it.
        let stopped =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(timeout)).await;
        match stopped {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "trace export did not finish at shutdown"),
            Err(error) => tracing::warn!(%error, "trace export did not finish at shutdown"),
        }
    }

    fn start_span(
        &self,
        name: String,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
        parent: &Context,
    ) -> Span {
        self.inner
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(&self.inner.tracer, parent)
    }
}

/// The ingress spans of one request (one per event); they end when dropped.
#[derive(Default)]
pub struct IngressSpans {
    spans: Vec<Span>,
    /// Whether the events came over HTTP (a status code to record) or from a reply.
    http: bool,
}

/// Starts one ingress span per event, as a child of the event's `traceparent`, else of the
/// request's `traceparent` header, else as a new trace; then points each event's
/// `traceparent` at its span, so the trace goes on through the channel. `headers` is the
/// HTTP request's (a server span), `None` for replies published in process (a producer span).
/// Does nothing without `telemetry`.
pub fn ingress_spans(
    telemetry: Option<&Telemetry>,
    namespace: &str,
    broker: &str,
    headers: Option<&HeaderMap>,
    events: &mut [Event],
) -> IngressSpans {
    let Some(telemetry) = telemetry else {
        return IngressSpans::default();
    };
    let destination = format!("broker:{broker}.{namespace}");
    let kind = match headers {
        Some(_) => SpanKind::Server,
        None => SpanKind::Producer,
    };
    let spans = events
        .iter_mut()
        .map(|event| {
            let parent = parent_of(event, headers);
            let mut attributes = messaging(&destination, "send", event);
            attributes.push(KeyValue::new(attr::BROKER_NAME, broker.to_string()));
            attributes.push(KeyValue::new(attr::BROKER_NAMESPACE, namespace.to_string()));
            let span = telemetry.start_span(destination.clone(), kind.clone(), attributes, &parent);
            set_trace_context(event, span.span_context());
            span
        })
        .collect();
    IngressSpans {
        spans,
        http: headers.is_some(),
    }
}

impl IngressSpans {
    /// The events are in the channel.
    pub fn accepted(&mut self) {
        self.record(202, None);
    }

    /// The events were refused (or could not be stored) with `status` because of `error`.
    pub fn failed(&mut self, status: StatusCode, error: &dyn std::fmt::Display) {
        self.record(status.as_u16(), Some(error));
    }

    fn record(&mut self, status: u16, error: Option<&dyn std::fmt::Display>) {
        for span in &mut self.spans {
            if self.http {
                span.set_attribute(KeyValue::new(
                    attr::HTTP_RESPONSE_STATUS_CODE,
                    i64::from(status),
                ));
            }
            // A refusal (4xx) is the sender's mistake, not the server's: its status stays
            // unset on a server span, as the HTTP conventions ask.
            if let Some(error) = error
                && (status >= 500 || !self.http)
            {
                span.set_status(Status::error(error.to_string()));
            }
        }
    }
}

/// The span of one trigger's delivery of one event; it ends at [`TriggerSpan::finish`] or
/// when dropped.
#[derive(Default)]
pub struct TriggerSpan(Option<Span>);

impl TriggerSpan {
    /// Starts `trigger:{name}.{namespace}` as a child of the event's `traceparent` (its
    /// ingress span) and points the event's `traceparent` at it, so the subscriber, the
    /// dead-letter sink and a reply continue from here. Does nothing without `telemetry`.
    pub fn start(
        telemetry: Option<&Telemetry>,
        dispatch: &TriggerDispatch,
        event: &mut Event,
    ) -> TriggerSpan {
        let Some(telemetry) = telemetry else {
            return TriggerSpan(None);
        };
        let destination = format!("trigger:{}.{}", dispatch.trigger, dispatch.namespace);
        let mut attributes = messaging(&destination, "process", event);
        attributes.extend([
            KeyValue::new(attr::TRIGGER_NAME, dispatch.trigger.clone()),
            KeyValue::new(attr::TRIGGER_NAMESPACE, dispatch.namespace.clone()),
            KeyValue::new(attr::BROKER_NAME, dispatch.broker.clone()),
            KeyValue::new(attr::BROKER_NAMESPACE, dispatch.namespace.clone()),
        ]);
        let parent = parent_of(event, None);
        let span = telemetry.start_span(destination, SpanKind::Consumer, attributes, &parent);
        set_trace_context(event, span.span_context());
        TriggerSpan(Some(span))
    }

    /// Records how the delivery ended and ends the span.
    pub fn finish(self, outcome: &Outcome) {
        let Some(mut span) = self.0 else {
            return;
        };
        let (status, failure) = match outcome {
            Outcome::Delivered { status, .. } => (Some(*status), None),
            Outcome::DeadLettered { failure, .. } | Outcome::Failed { failure, .. } => {
                (failure.status, Some(failure))
            }
        };
        span.set_attribute(KeyValue::new(attr::DELIVERY_OUTCOME, outcome.label()));
        span.set_attribute(KeyValue::new(
            attr::DELIVERY_ATTEMPTS,
            i64::from(outcome.attempts()),
        ));
        if let Some(status) = status {
            span.set_attribute(KeyValue::new(
                attr::HTTP_RESPONSE_STATUS_CODE,
                i64::from(status.as_u16()),
            ));
        }
        if let Some(failure) = failure {
            span.set_attribute(KeyValue::new(attr::ERROR_TYPE, failure.reason));
            span.set_status(Status::error(failure.message.clone()));
        }
        span.end();
    }
}

/// Gives a reply without a trace context of its own the one of the event it answers (the
/// trigger's span), so its ingress span joins the trace. Does nothing without `telemetry`.
pub fn continue_in_reply(telemetry: Option<&Telemetry>, parent: &Event, reply: &mut Event) {
    if telemetry.is_none() || reply.extensions.contains_key(TRACEPARENT) {
        return;
    }
    for name in [TRACEPARENT, TRACESTATE] {
        if let Some(value) = parent.extensions.get(name) {
            reply.set_extension(name, value.clone());
        }
    }
}

/// Adds the HTTP `traceparent` and `tracestate` headers of the event's trace context, for
/// receivers that read the headers rather than the event.
pub fn put_trace_headers(event: &Event, headers: &mut HeaderMap) {
    for name in [TRACEPARENT, TRACESTATE] {
        if let Some(ExtensionValue::String(value)) = event.extensions.get(name)
            && let Ok(value) = HeaderValue::from_str(value)
        {
            headers.insert(name, value);
        }
    }
}

/// Copies a request's `traceparent` and `tracestate` headers into an event made from the
/// request (a webhook's), unless the event carries a trace context already. A malformed
/// header is left out.
pub fn take_trace_headers(headers: &HeaderMap, event: &mut Event) {
    if event.extensions.contains_key(TRACEPARENT) {
        return;
    }
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(traceparent) = header(TRACEPARENT) else {
        return;
    };
    let parent = TraceContextPropagator::new().extract_with_context(
        &Context::new(),
        &opentelemetry_http::HeaderExtractor(headers),
    );
    if !parent.span().span_context().is_valid() {
        return;
    }
    event.set_extension(
        TRACEPARENT,
        ExtensionValue::String(traceparent.trim().to_string()),
    );
    if let Some(state) = header(TRACESTATE).filter(|s| !s.trim().is_empty()) {
        event.set_extension(TRACESTATE, ExtensionValue::String(state.trim().to_string()));
    }
}

/// The trace to continue: the event's own, else the request's, else none (a new trace).
fn parent_of(event: &Event, headers: Option<&HeaderMap>) -> Context {
    let propagator = TraceContextPropagator::new();
    let from_event = propagator.extract_with_context(&Context::new(), &EventCarrier(event));
    if from_event.span().span_context().is_valid() {
        return from_event;
    }
    if let Some(headers) = headers {
        let from_request = propagator.extract_with_context(
            &Context::new(),
            &opentelemetry_http::HeaderExtractor(headers),
        );
        if from_request.span().span_context().is_valid() {
            return from_request;
        }
    }
    Context::new()
}

/// Sets the event's `traceparent` (and `tracestate`, when there is one) to `context`.
fn set_trace_context(event: &mut Event, context: &SpanContext) {
    let flags = context.trace_flags() & TraceFlags::SAMPLED;
    event.set_extension(
        TRACEPARENT,
        ExtensionValue::String(format!(
            "00-{}-{}-{:02x}",
            context.trace_id(),
            context.span_id(),
            flags.to_u8()
        )),
    );
    let state = context.trace_state().header();
    if state.is_empty() {
        event.extensions.remove(TRACESTATE);
    } else {
        event.set_extension(TRACESTATE, ExtensionValue::String(state));
    }
}

/// The attributes Knative puts on its messaging spans, and the event's.
fn messaging(destination: &str, operation: &'static str, event: &Event) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new(attr::MESSAGING_SYSTEM, "knative"),
        KeyValue::new(attr::MESSAGING_DESTINATION, destination.to_string()),
        KeyValue::new(attr::MESSAGING_DESTINATION_NAME, destination.to_string()),
        KeyValue::new(attr::MESSAGING_OPERATION_NAME, operation),
        KeyValue::new(attr::MESSAGING_MESSAGE_ID, event.id.clone()),
        KeyValue::new(attr::CLOUDEVENTS_ID, event.id.clone()),
        KeyValue::new(attr::CLOUDEVENTS_SOURCE, event.source.clone()),
        KeyValue::new(attr::CLOUDEVENTS_TYPE, event.ty.clone()),
        KeyValue::new(attr::CLOUDEVENTS_SPECVERSION, event.specversion.as_str()),
    ];
    if let Some(subject) = &event.subject {
        attributes.push(KeyValue::new(attr::CLOUDEVENTS_SUBJECT, subject.clone()));
    }
    if let Some(content_type) = &event.datacontenttype {
        attributes.push(KeyValue::new(
            attr::CLOUDEVENTS_DATACONTENTTYPE,
            content_type.clone(),
        ));
    }
    attributes
}

/// Reads the trace context from an event's extensions.
struct EventCarrier<'a>(&'a Event);

impl Extractor for EventCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.extensions.get(key) {
            Some(ExtensionValue::String(value)) => Some(value.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        [TRACEPARENT, TRACESTATE]
            .into_iter()
            .filter(|name| self.0.extensions.contains_key(*name))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(extensions: &[(&str, &str)]) -> Event {
        let mut event = rivulet_core::event::parse_structured(
            br#"{"specversion":"1.0","id":"e1","source":"/s","type":"t"}"#,
        )
        .unwrap();
        for (name, value) in extensions {
            event.set_extension(name, ExtensionValue::String(value.to_string()));
        }
        event
    }

    const SENDER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn the_event_context_wins_over_the_header() {
        let mut headers = HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-11111111111111111111111111111111-2222222222222222-01"),
        );
        let parent = parent_of(&event(&[(TRACEPARENT, SENDER)]), Some(&headers));
        let span = parent.span();
        assert_eq!(
            span.span_context().trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        let parent = parent_of(&event(&[(TRACEPARENT, "garbage")]), Some(&headers));
        assert_eq!(
            parent.span().span_context().span_id().to_string(),
            "2222222222222222"
        );
        assert!(
            !parent_of(&event(&[]), None)
                .span()
                .span_context()
                .is_valid()
        );
    }

    #[test]
    fn request_headers_reach_an_event_only_when_valid_and_missing() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(SENDER));
        headers.insert(TRACESTATE, HeaderValue::from_static("vendor=x"));
        let mut made = event(&[]);
        take_trace_headers(&headers, &mut made);
        assert_eq!(made.attribute(TRACEPARENT).unwrap(), SENDER);
        assert_eq!(made.attribute(TRACESTATE).unwrap(), "vendor=x");

        let own = "00-11111111111111111111111111111111-2222222222222222-01";
        let mut kept = event(&[(TRACEPARENT, own)]);
        take_trace_headers(&headers, &mut kept);
        assert_eq!(kept.attribute(TRACEPARENT).unwrap(), own);

        headers.insert(TRACEPARENT, HeaderValue::from_static("00-zz-01"));
        let mut bad = event(&[]);
        take_trace_headers(&headers, &mut bad);
        assert!(bad.attribute(TRACEPARENT).is_none());
    }

    #[test]
    fn replies_inherit_only_when_tracing_and_without_their_own() {
        let parent = event(&[(TRACEPARENT, SENDER)]);
        let mut reply = event(&[]);
        continue_in_reply(None, &parent, &mut reply);
        assert!(reply.attribute(TRACEPARENT).is_none(), "tracing off");
    }

    #[test]
    fn headers_mirror_the_event_context() {
        let mut headers = HeaderMap::new();
        put_trace_headers(&event(&[(TRACEPARENT, SENDER)]), &mut headers);
        assert_eq!(headers.get(TRACEPARENT).unwrap(), SENDER);
        assert!(headers.get(TRACESTATE).is_none());
    }
}
