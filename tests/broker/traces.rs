//! OpenTelemetry traces end to end: a real OTLP receiver (gRPC with tonic, HTTP/protobuf with
//! axum and prost) started by each test takes the spans of an event that goes from a sender
//! with a known `traceparent` through the broker to a trigger whose subscriber replies, and
//! of the reply through a second trigger; names, kinds, parents and attributes are checked,
//! and the trace context the subscribers received. Without an endpoint, events pass with
//! their `traceparent` untouched.

use rivulet_testkit as support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use rivulet::telemetry::{Protocol, TelemetryConfig};
use serde_json::json;
use support::{Recorded, Reply, Subscriber, TestEvent, TestServer, WAIT, script, wait_for};
use tokio_util::sync::CancellationToken;

/// The sender's trace and span, as a producer with its own tracing would send them.
const SENDER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const SENDER_SPAN: &str = "b7ad6b7169203331";

fn sender_traceparent() -> String {
    format!("00-{SENDER_TRACE}-{SENDER_SPAN}-01")
}

/// One span as the receiver got it, ids in lower-case hex.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    kind: i32,
    attributes: BTreeMap<String, String>,
    service: Option<String>,
}

impl ReceivedSpan {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).map(String::as_str)
    }

    fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }
}

fn text_of(value: &KeyValue) -> String {
    match value.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What every receiver records.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<ReceivedSpan>>>);

impl Spans {
    fn record(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.0.lock().unwrap();
        for resource_spans in request.resource_spans {
            let service = resource_spans.resource.as_ref().and_then(|resource| {
                resource
                    .attributes
                    .iter()
                    .find(|kv| kv.key == "service.name")
                    .map(text_of)
            });
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(ReceivedSpan {
                        name: span.name.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        kind: span.kind,
                        attributes: span
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), text_of(kv)))
                            .collect(),
                        service: service.clone(),
                    });
                }
            }
        }
    }

    fn all(&self) -> Vec<ReceivedSpan> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until a span named `name` for event `id` has arrived.
    async fn wait_for(&self, name: &str, id: &str) -> ReceivedSpan {
        wait_for(&format!("span {name} of event {id}"), WAIT, || {
            let found = self
                .all()
                .into_iter()
                .find(|s| s.name == name && s.attr("messaging.message_id") == Some(id));
            std::future::ready(found)
        })
        .await
    }
}

/// An OTLP receiver on a free loopback port; stops when dropped.
struct Collector {
    endpoint: String,
    spans: Spans,
    stop: CancellationToken,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct GrpcReceiver(Spans);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.record(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    async fn start(protocol: Protocol) -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the receiver binds");
        let addr = listener.local_addr().expect("a bound address");
        let spans = Spans::default();
        let stop = CancellationToken::new();
        let endpoint = match protocol {
            Protocol::Grpc => {
                let service = TraceServiceServer::new(GrpcReceiver(spans.clone()));
                let stopped = stop.clone().cancelled_owned();
                tokio::spawn(
                    tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming_shutdown(
                            tonic::transport::server::TcpIncoming::from(listener),
                            stopped,
                        ),
                );
                format!("http://{addr}")
            }
            Protocol::HttpProtobuf => {
                let recorder = spans.clone();
                let app = axum::Router::new().route(
                    "/v1/traces",
                    axum::routing::post(move |headers: http::HeaderMap, body: bytes::Bytes| {
                        let recorder = recorder.clone();
                        async move {
                            let protobuf = headers
                                .get("content-type")
                                .is_some_and(|v| v == "application/x-protobuf");
                            match ExportTraceServiceRequest::decode(body) {
                                Ok(request) if protobuf => {
                                    recorder.record(request);
                                    let answer = ExportTraceServiceResponse {
                                        partial_success: None,
                                    };
                                    (
                                        http::StatusCode::OK,
                                        [("content-type", "application/x-protobuf")],
                                        answer.encode_to_vec(),
                                    )
                                }
                                _ => (
                                    http::StatusCode::BAD_REQUEST,
                                    [("content-type", "text/plain")],
                                    b"not an OTLP protobuf export".to_vec(),
                                ),
                            }
                        }
                    }),
                );
                let stopped = stop.clone().cancelled_owned();
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(stopped)
                        .await;
                });
                format!("http://{addr}/v1/traces")
            }
        };
        Collector {
            endpoint,
            spans,
            stop,
        }
    }
}

fn trigger_for_type(name: &str, event_type: &str, subscriber: &str) -> serde_json::Value {
    json!({
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "broker": "default",
            "filter": {"attributes": {"type": event_type}},
            "subscriber": {"uri": subscriber}
        }
    })
}

/// The trace context a subscriber request carried: the HTTP header and the event's
/// extension.
fn received_context(request: &Recorded) -> (Option<String>, Option<String>) {
    (
        request.header("traceparent").map(str::to_string),
        request.attr("traceparent"),
    )
}

/// Sender → broker → trigger `first` → subscriber that replies → broker → trigger `second`,
/// all in one trace, checked at the receiver. With `flush_at_shutdown` the spans are read
/// after the server stopped (they must have been exported then), otherwise while it runs.
async fn trace_through_broker_trigger_and_reply(protocol: Protocol, flush_at_shutdown: bool) {
    let collector = Collector::start(protocol).await;
    let endpoint = collector.endpoint.clone();
    let server = TestServer::start_ready_with(|options| {
        options.telemetry = Some(TelemetryConfig::new(endpoint, protocol));
    })
    .await;
    let reply = TestEvent::new("reply-1", "com.example.reply").data("application/json", "{}");
    let subscriber = Subscriber::with_script(script(move |request: &Recorded| {
        match request.path.as_str() {
            "/first" => Reply::event(200, &reply),
            _ => Reply::status(202),
        }
    }))
    .await;
    server
        .create_trigger(&trigger_for_type(
            "first",
            "com.example.original",
            &subscriber.url_at("first"),
        ))
        .await;
    server
        .create_trigger(&trigger_for_type(
            "second",
            "com.example.reply",
            &subscriber.url_at("second"),
        ))
        .await;

    let event = TestEvent::new("traced-1", "com.example.original")
        .attr("traceparent", &sender_traceparent())
        .data("application/json", r#"{"n":1}"#);
    server.send("default", "default", &event).await;
    let first = subscriber
        .wait_for_matching(1, |r| r.path == "/first")
        .await;
    let second = subscriber
        .wait_for_matching(1, |r| r.path == "/second")
        .await;

    let spans = collector.spans.clone();
    let running = if flush_at_shutdown {
        server.shutdown().await;
        None
    } else {
        Some(server)
    };
    let ingress = spans.wait_for("broker:default.default", "traced-1").await;
    let trigger = spans.wait_for("trigger:first.default", "traced-1").await;
    let reply_ingress = spans.wait_for("broker:default.default", "reply-1").await;
    let reply_trigger = spans.wait_for("trigger:second.default", "reply-1").await;

    // Ingress continues the sender's trace.
    assert_eq!(ingress.trace_id, SENDER_TRACE, "{ingress:?}");
    assert_eq!(ingress.parent_span_id, SENDER_SPAN, "{ingress:?}");
    assert_eq!(ingress.kind, SpanKind::Server as i32, "{ingress:?}");
    for (name, value) in [
        ("kn.broker.name", "default"),
        ("kn.broker.namespace", "default"),
        ("messaging.system", "knative"),
        ("messaging.destination", "broker:default.default"),
        ("messaging.destination.name", "broker:default.default"),
        ("messaging.message_id", "traced-1"),
        ("cloudevents.id", "traced-1"),
        ("cloudevents.type", "com.example.original"),
        ("cloudevents.source", "/rivulet/tests"),
        ("cloudevents.specversion", "1.0"),
        ("http.response.status_code", "202"),
    ] {
        assert_eq!(ingress.attr(name), Some(value), "{name} on {ingress:?}");
    }
    assert_eq!(ingress.service.as_deref(), Some("rivulet"));

    // The trigger's span is a child of the ingress span, and the subscriber got its context.
    assert_eq!(trigger.trace_id, SENDER_TRACE, "{trigger:?}");
    assert_eq!(trigger.parent_span_id, ingress.span_id, "{trigger:?}");
    assert_eq!(trigger.kind, SpanKind::Consumer as i32, "{trigger:?}");
    for (name, value) in [
        ("kn.trigger.name", "first"),
        ("kn.trigger.namespace", "default"),
        ("kn.broker.name", "default"),
        ("kn.broker.namespace", "default"),
        ("messaging.system", "knative"),
        ("messaging.destination", "trigger:first.default"),
        ("messaging.message_id", "traced-1"),
        ("rivulet.delivery.outcome", "delivered"),
        ("rivulet.delivery.attempts", "1"),
        ("http.response.status_code", "200"),
    ] {
        assert_eq!(trigger.attr(name), Some(value), "{name} on {trigger:?}");
    }
    let expected = Some(trigger.traceparent());
    assert_eq!(
        received_context(&first[0]),
        (expected.clone(), expected),
        "the subscriber gets the trigger span's context as header and extension"
    );

    // The reply joins the trace under the trigger that got it, then goes on.
    assert_eq!(reply_ingress.trace_id, SENDER_TRACE, "{reply_ingress:?}");
    assert_eq!(
        reply_ingress.parent_span_id, trigger.span_id,
        "{reply_ingress:?}"
    );
    assert_eq!(reply_ingress.kind, SpanKind::Producer as i32);
    assert_eq!(reply_trigger.trace_id, SENDER_TRACE, "{reply_trigger:?}");
    assert_eq!(
        reply_trigger.parent_span_id, reply_ingress.span_id,
        "{reply_trigger:?}"
    );
    assert_eq!(reply_trigger.attr("kn.trigger.name"), Some("second"));
    let (header, extension) = received_context(&second[0]);
    assert_eq!(header, Some(reply_trigger.traceparent()));
    assert_eq!(extension, Some(reply_trigger.traceparent()));

    if let Some(server) = running {
        server.shutdown().await;
    }
}

#[tokio::test]
async fn spans_reach_an_otlp_grpc_receiver_through_broker_trigger_and_reply() {
    trace_through_broker_trigger_and_reply(Protocol::Grpc, false).await;
}

#[tokio::test]
async fn spans_reach_an_otlp_http_receiver_and_are_flushed_at_shutdown() {
    trace_through_broker_trigger_and_reply(Protocol::HttpProtobuf, true).await;
}

#[tokio::test]
async fn a_webhook_request_traceparent_continues_into_the_broker() {
    let collector = Collector::start(Protocol::HttpProtobuf).await;
    let endpoint = collector.endpoint.clone();
    let server = TestServer::start_ready_with(|options| {
        options.telemetry = Some(TelemetryConfig::new(endpoint, Protocol::HttpProtobuf));
    })
    .await;
    let webhook = json!({
        "apiVersion": "sources.rivulet.dev/v1alpha1",
        "kind": "WebhookSource",
        "metadata": {"name": "traced", "namespace": "default"},
        "spec": {
            "eventType": "com.example.hook",
            "eventSource": "https://example.com/hooks",
            "sink": {"uri": server.ingress_url("default", "default")},
        }
    });
    let url = support::adapters::ready_address(&server.api, &webhook).await;
    let response = support::http()
        .post(&url)
        .header("traceparent", sender_traceparent())
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("the webhook answers");
    assert_eq!(response.status(), 202);
    server.shutdown().await;
    let spans = collector.spans.clone();
    let ingress = wait_for("the ingress span of the webhook's event", WAIT, || {
        let found = spans.all().into_iter().find(|s| {
            s.name == "broker:default.default"
                && s.attr("cloudevents.type") == Some("com.example.hook")
        });
        std::future::ready(found)
    })
    .await;
    assert_eq!(ingress.trace_id, SENDER_TRACE, "{ingress:?}");
    assert_eq!(ingress.parent_span_id, SENDER_SPAN, "{ingress:?}");
}

#[tokio::test]
async fn without_an_endpoint_events_keep_their_traceparent_as_sent() {
    let (server, subscriber) = TestServer::start_subscribed().await;
    let traced = TestEvent::new("untraced-1", "com.example.original")
        .attr("traceparent", &sender_traceparent());
    server.send("default", "default", &traced).await;
    let bare = TestEvent::new("untraced-2", "com.example.original");
    server.send("default", "default", &bare).await;
    let requests = subscriber.wait_for(2).await;
    let by_id = |id: &str| {
        requests
            .iter()
            .find(|r| r.id() == id)
            .unwrap_or_else(|| panic!("event {id} delivered"))
    };
    assert_eq!(
        received_context(by_id("untraced-1")),
        (None, Some(sender_traceparent())),
        "the extension passes unchanged and no header is added"
    );
    assert_eq!(received_context(by_id("untraced-2")), (None, None));
    server.shutdown().await;
}

#[tokio::test]
async fn a_dead_lettered_delivery_carries_the_trigger_span_and_says_so() {
    let collector = Collector::start(Protocol::Grpc).await;
    let endpoint = collector.endpoint.clone();
    let server = TestServer::start_ready_with(|options| {
        options.telemetry = Some(TelemetryConfig::new(endpoint, Protocol::Grpc));
    })
    .await;
    let subscriber =
        Subscriber::with_script(script(|request: &Recorded| match request.path.as_str() {
            "/dls" => Reply::status(202),
            _ => Reply::status(400),
        }))
        .await;
    let mut manifest =
        support::trigger("default", "refusing", "default", &subscriber.url_at("sub"));
    manifest["spec"]["delivery"] = json!({"deadLetterSink": {"uri": subscriber.url_at("dls")}});
    server.create_trigger(&manifest).await;
    let event = TestEvent::new("refused-1", "com.example.original")
        .attr("traceparent", &sender_traceparent());
    server.send("default", "default", &event).await;
    let dead = subscriber.wait_for_matching(1, |r| r.path == "/dls").await;
    server.shutdown().await;

    let trigger = collector
        .spans
        .wait_for("trigger:refusing.default", "refused-1")
        .await;
    assert_eq!(trigger.trace_id, SENDER_TRACE, "{trigger:?}");
    for (name, value) in [
        ("rivulet.delivery.outcome", "dead_lettered"),
        ("rivulet.delivery.attempts", "1"),
        ("http.response.status_code", "400"),
        ("error.type", "status"),
    ] {
        assert_eq!(trigger.attr(name), Some(value), "{name} on {trigger:?}");
    }
    let expected = Some(trigger.traceparent());
    assert_eq!(received_context(&dead[0]), (expected.clone(), expected));
}

#[tokio::test]
async fn a_collector_that_never_answers_holds_up_no_delivery_and_drops_are_counted() {
    // Takes connections and never answers: every export waits for its deadline.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("the silent collector binds");
    let addr = silent.local_addr().expect("a bound address");
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            connections.push(connection);
        }
    });
    let (server, subscriber) = {
        let server = TestServer::start_ready_with(|options| {
            let mut config =
                TelemetryConfig::new(format!("http://{addr}/v1/traces"), Protocol::HttpProtobuf);
            // Two spans fill the queue; the first export outlives the test.
            config.queue_size = 2;
            config.export_timeout = std::time::Duration::from_secs(300);
            options.telemetry = Some(config);
        })
        .await;
        let subscriber = Subscriber::start().await;
        server
            .create_trigger(&support::trigger(
                "default",
                "all",
                "default",
                &subscriber.url(),
            ))
            .await;
        (server, subscriber)
    };
    const EVENTS: usize = 10;
    for n in 0..EVENTS {
        let event = TestEvent::new(&format!("busy-{n}"), "com.example.original");
        server.send("default", "default", &event).await;
    }
    let delivered = subscriber.wait_for(EVENTS).await;
    assert_eq!(delivered.len(), EVENTS);
    // Two spans per event, two in the export that hangs, two in the queue: the rest are
    // dropped (the last trigger spans end just after their delivery, hence the wait).
    let least = (2 * EVENTS - 4) as f64;
    wait_for("dropped spans to be counted", WAIT, || async {
        let dropped = server
            .metric("rivulet_trace_spans_dropped_total", &[])
            .await;
        (dropped >= least).then_some(())
    })
    .await;
    server.shutdown().await;
    held.abort();
}
