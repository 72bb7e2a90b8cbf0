//! Getting ended spans to the collector without the data path ever waiting for it: a bounded
//! queue in front of the SDK's batch processor (a full queue drops and counts), exports run
//! on the server's Tokio runtime with a deadline, failures logged at most every 10 s.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry::Context;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor,
};
use prometheus_client::metrics::counter::Counter;
use rivulet_core::log_throttle::LogThrottle;

use super::config::{Protocol, TelemetryConfig, TelemetryError};

/// The OTLP exporter the configuration asks for, bound to the current Tokio runtime.
pub(super) fn exporter(
    config: &TelemetryConfig,
    queued: Arc<AtomicUsize>,
) -> Result<OnRuntime, TelemetryError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| TelemetryError::NoRuntime)?;
    let built = match config.protocol {
        Protocol::HttpProtobuf => {
            rivulet_core::install_crypto_provider();
            let client = reqwest::Client::builder()
                .timeout(config.export_timeout)
                .build()
                .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(config.endpoint.clone())
                .with_timeout(config.export_timeout)
                .with_http_client(OtlpHttpClient(client))
                .build()
        }
        Protocol::Grpc => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(config.endpoint.clone())
                .with_timeout(config.export_timeout);
            if config.endpoint.starts_with("https:") {
                rivulet_core::install_crypto_provider();
                builder = builder.with_tls_config(
                    opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                        .with_native_roots(),
                );
            }
            builder.build()
        }
    }
    .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
    Ok(OnRuntime {
        inner: Arc::new(tokio::sync::Mutex::new(built)),
        runtime,
        queued,
        timeout: config.export_timeout,
        failures: Arc::new(LogThrottle::default()),
        endpoint: config.endpoint.clone(),
    })
}

/// The batch processor behind the bounded gate, and the resource spans are exported under.
pub(super) fn processor(
    config: &TelemetryConfig,
    exporter: OnRuntime,
    queued: Arc<AtomicUsize>,
    dropped: Counter,
) -> (Gate, Resource) {
    let batch = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            // The rest (OTEL_BSP_SCHEDULE_DELAY, ..._MAX_EXPORT_BATCH_SIZE) from the
            // environment; a batch is never larger than the queue.
            BatchConfigBuilder::default()
                .with_max_queue_size(config.queue_size)
                .build(),
        )
        .build();
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let gate = Gate {
        inner: batch,
        queued,
        limit: config.queue_size,
        dropped,
        drop_log: LogThrottle::default(),
    };
    (gate, resource)
}

/// Counts the spans between their end and their export and refuses one more than the queue
/// holds. The SDK's processor would drop them too, but only says so once; here every drop is
/// counted. The count includes the batch being assembled, so the SDK's own queue (which
/// excludes it) never fills and never drops behind this gate's back.
#[derive(Debug)]
pub(super) struct Gate {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
    limit: usize,
    dropped: Counter,
    drop_log: LogThrottle,
}

impl SpanProcessor for Gate {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let taken = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued < self.limit).then_some(queued + 1)
            })
            .is_ok();
        if taken {
            self.inner.on_end(span);
            return;
        }
        self.dropped.inc();
        if let Some(suppressed) = self.drop_log.allow() {
            tracing::warn!(
                queue = self.limit,
                suppressed,
                "trace spans dropped: the export queue is full (is the OTLP collector reachable?); \
                 counted in rivulet_trace_spans_dropped_total"
            );
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Runs each export as a task on the server's runtime: the batch processor exports from a
/// thread of its own, and the OTLP clients need a Tokio runtime to do I/O. An export that
/// outlives its deadline is abandoned.
pub(super) struct OnRuntime {
    inner: Arc<tokio::sync::Mutex<opentelemetry_otlp::SpanExporter>>,
    runtime: tokio::runtime::Handle,
    queued: Arc<AtomicUsize>,
    timeout: Duration,
    failures: Arc<LogThrottle>,
    endpoint: String,
}

impl fmt::Debug for OnRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnRuntime")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl SpanExporter for OnRuntime {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        // The batch has left the queue: room for as many new spans.
        self.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        let (inner, timeout) = (self.inner.clone(), self.timeout);
        let spans = batch.len();
        let exported = self.runtime.spawn(async move {
            let exporter = inner.lock().await;
            tokio::time::timeout(timeout, exporter.export(batch)).await
        });
        let result = match exported.await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(OTelSdkError::Timeout(timeout)),
            Err(error) => Err(OTelSdkError::InternalFailure(error.to_string())),
        };
        if let Err(error) = &result
            && let Some(suppressed) = self.failures.allow()
        {
            tracing::warn!(endpoint = %self.endpoint, %error, spans, suppressed, "exporting trace spans failed; they are lost (suppressed: how many more failures since the last such line)");
        }
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        match self.inner.try_lock() {
            Ok(mut exporter) => exporter.shutdown_with_timeout(timeout),
            // An export still holds it; it ends by its own deadline.
            Err(_) => Ok(()),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Ok(mut exporter) = self.inner.try_lock() {
            exporter.set_resource(resource);
        }
    }
}

/// The most of a collector's answer that is read.
const ANSWER_LIMIT: usize = 64 * 1024;

/// OTLP/HTTP over the workspace's reqwest (rustls with ring), so the exporter adds no second
/// HTTP or TLS stack.
#[derive(Debug)]
struct OtlpHttpClient(reqwest::Client);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpHttpClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let mut response = self.0.execute(request).await?;
        let status = response.status();
        let headers = response.headers().clone();
        // A collector answers with a short status message; more than this is not read.
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > ANSWER_LIMIT {
                break;
            }
            body.extend_from_slice(&chunk);
        }
        let mut answer = http::Response::new(body.freeze());
        *answer.status_mut() = status;
        *answer.headers_mut() = headers;
        Ok(answer)
    }
}
