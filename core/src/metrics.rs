//! Prometheus metrics, exposed at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub mod knative;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerLabels {
    pub namespace: String,
    pub broker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IngressLabels {
    pub namespace: String,
    pub broker: String,
    /// `accepted`, `refused` (4xx), `full` (503 with `Retry-After`: the channel is at its
    /// bound) or `unavailable` (other 5xx).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    pub namespace: String,
    pub trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub namespace: String,
    pub trigger: String,
    /// `delivered`, `dead_lettered`, `failed`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FilterErrorLabels {
    pub namespace: String,
    pub trigger: String,
    /// The cesql error kind.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplyLabels {
    pub namespace: String,
    pub trigger: String,
    /// `published`, `ttl_exhausted`, `invalid`, `unavailable`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdapterLabels {
    /// The source or sink kind (`PingSource`, `HttpForwardSink`, ...).
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl AdapterLabels {
    /// These labels with an `outcome`.
    pub fn with_outcome(&self, outcome: &'static str) -> AdapterOutcomeLabels {
        AdapterOutcomeLabels {
            kind: self.kind,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            outcome,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdapterOutcomeLabels {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// Sources: `sent`, `dead_lettered`, `failed`. Sinks: `accepted`, `invalid`, `failed`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DiscoveryDropLabels {
    /// `queue_full`: the discovery queue was full, the observation was dropped.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EgressLabels {
    /// `denied`, `not_allowed`, `metadata`, `link_local`, `unspecified`, `multicast`,
    /// `broadcast`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `ingress` (`--listen`) or `api` (`--api-listen`).
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionCloseLabels {
    pub listener: &'static str,
    /// `idle`, `header_timeout`, `headers_too_large`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReceiveFailureLabels {
    pub namespace: String,
    pub trigger: String,
    /// The channel error's kind: `unavailable`, `corrupt`, `storage`, ...
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryFailureLabels {
    pub namespace: String,
    pub trigger: String,
    /// Why the last attempt failed: `response_too_large`, `timeout`, `network`, `status`,
    /// `redirect`, `malformed_reply`, `refused`, `local`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeletionLabels {
    pub namespace: String,
    pub trigger: String,
    /// `drained` (in flight, finished within the grace period), `dead_lettered`, `dropped`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DroppedLabels {
    pub namespace: String,
    pub trigger: String,
    /// `deleted`: the trigger (or its broker) was deleted before the event was delivered
    /// and no dead-letter sink took it. `ttl`: the event's hop count (`knativebrokerttl`)
    /// ran out (an event loop); `trigger` is empty when ingress refused it.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StorageLabels {
    /// `embedded_log` or `resource_store`.
    pub component: &'static str,
    /// `full` (no space or over quota) or `failed` (another I/O error).
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JournalDropLabels {
    /// `queue_full`: the journal's writer was behind and the record was not kept.
    pub reason: &'static str,
}

/// Every metric Rivulet records.
pub struct Metrics {
    registry: Registry,
    /// Events that reached ingress, per broker.
    pub events_received: Family<BrokerLabels, Counter>,
    /// Events by ingress outcome, per broker.
    pub ingress_events: Family<IngressLabels, Counter>,
    /// Events a trigger's filter let through or not.
    pub filter_matched: Family<TriggerLabels, Counter>,
    pub filter_rejected: Family<TriggerLabels, Counter>,
    pub filter_errors: Family<FilterErrorLabels, Counter>,
    /// Final delivery outcomes per trigger.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// Attempts beyond the first, per trigger.
    pub retries: Family<TriggerLabels, Counter>,
    /// Events the channel handed out again after an unacknowledged hand-out, per trigger.
    pub redelivered: Family<TriggerLabels, Counter>,
    /// Seconds from taking an event off the channel to its final outcome.
    pub delivery_latency: Family<TriggerLabels, Histogram, fn() -> Histogram>,
    pub replies: Family<ReplyLabels, Counter>,
    /// Events a source adapter produced, by delivery outcome.
    pub source_events: Family<AdapterOutcomeLabels, Counter>,
    /// Delivery attempts beyond the first, per source.
    pub source_retries: Family<AdapterLabels, Counter>,
    /// Events a sink adapter received, by outcome.
    pub sink_events: Family<AdapterOutcomeLabels, Counter>,
    /// Attempts beyond the first a sink made towards its target.
    pub sink_retries: Family<AdapterLabels, Counter>,
    /// Ingress observations the EventType registry did not look at.
    pub eventtype_observations_dropped: Family<DiscoveryDropLabels, Counter>,
    /// Delivery-health reports (failures, recoveries, refused senders) not queued because
    /// the reporter's queue was full; the counts they carry are kept and read later.
    pub health_reports_dropped: Counter,
    /// Outbound requests the egress policy refused, by reason.
    pub egress_refused: Family<EgressLabels, Counter>,
    /// Undelivered events of deleted triggers and brokers, by what became of them.
    pub deletion_events: Family<DeletionLabels, Counter>,
    /// Events lost without delivery or dead-lettering, by reason.
    pub events_dropped: Family<DroppedLabels, Counter>,
    /// EventTypes created from traffic.
    pub eventtypes_autocreated: Counter,
    /// Events whose EventType was not created because their broker is at its cap.
    pub eventtypes_capped: Family<BrokerLabels, Counter>,
    /// Writes of an EventType's inferred schema, sample or dataschema.
    pub eventtype_status_writes: Counter,
    /// Serving certificates put in service after their files changed.
    pub tls_certificate_reloads: Counter,
    /// Changed certificate files that could not be used (the previous certificate stayed).
    pub tls_certificate_reload_failures: Counter,
    /// Connections open per listener.
    pub connections_open: Family<ListenerLabels, Gauge>,
    /// The connection limit per listener.
    pub connections_limit: Family<ListenerLabels, Gauge>,
    /// Connections closed at once because the listener was at its limit.
    pub connections_refused: Family<ListenerLabels, Counter>,
    /// Connections the server closed: idle, headers too slow or too large.
    pub connections_closed: Family<ConnectionCloseLabels, Counter>,
    /// Requests answered 408 because they took longer than the request timeout.
    pub request_timeouts: Family<ListenerLabels, Counter>,
    /// The open-files soft limit in force.
    pub open_files_limit: Gauge,
    /// Deliveries that ended undelivered (dead-lettered or failed), by why the last attempt
    /// failed.
    pub delivery_failures: Family<DeliveryFailureLabels, Counter>,
    /// A trigger's failed reads from its subscription (each retried 500 ms later).
    pub receive_failures: Family<ReceiveFailureLabels, Counter>,
    /// 1 while a disk Rivulet writes to is full (events are refused with 503), else 0.
    pub storage_full: Gauge,
    /// 1 while writes fail for another reason than a full disk, else 0.
    pub storage_failed: Gauge,
    /// Storage fault episodes begun, by component and kind.
    pub storage_faults: Family<StorageLabels, Counter>,
    /// Events a trigger's subscription holds not yet acknowledged (sampled).
    pub trigger_queue_depth: Family<TriggerLabels, Gauge>,
    /// Seconds between an event's arrival at ingress and its trigger taking it off the
    /// channel, for the latest event the trigger took.
    pub trigger_lag_seconds: Family<TriggerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Journal records not kept, by reason.
    pub journal_dropped: Family<JournalDropLabels, Counter>,
    /// Journal writes to disk that failed (the journal goes on in memory).
    pub journal_write_failures: Counter,
    /// Events the journal holds, and about how many bytes.
    pub journal_events: Gauge,
    pub journal_bytes: Gauge,
    /// Events a live tap client missed because it read too slowly.
    pub tap_dropped: Counter,
    /// Knative's own metric names (`mt_broker_*`).
    pub knative: knative::KnativeMetrics,
    /// Trace spans dropped because the export queue was full (tracing on only).
    pub trace_spans_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("rivulet");
        let events_received = Family::default();
        registry.register(
            "ingress_received_events",
            "Events received at broker ingress",
            events_received.clone(),
        );
        let ingress_events = Family::default();
        registry.register(
            "ingress_events",
            "Events by ingress outcome (accepted, refused, unavailable)",
            ingress_events.clone(),
        );
        let filter_matched = Family::default();
        registry.register(
            "trigger_filter_matched_events",
            "Events a trigger's filter accepted",
            filter_matched.clone(),
        );
        let filter_rejected = Family::default();
        registry.register(
            "trigger_filter_rejected_events",
            "Events a trigger's filter did not accept",
            filter_rejected.clone(),
        );
        let filter_errors = Family::default();
        registry.register(
            "trigger_filter_errors",
            "cesql evaluation errors (counted as no match)",
            filter_errors.clone(),
        );
        let deliveries = Family::default();
        registry.register(
            "trigger_deliveries",
            "Final delivery outcomes (delivered, dead_lettered, failed)",
            deliveries.clone(),
        );
        let retries = Family::default();
        registry.register(
            "trigger_delivery_retries",
            "Delivery attempts beyond the first",
            retries.clone(),
        );
        let redelivered = Family::default();
        registry.register(
            "trigger_redelivered_events",
            "Events the channel handed out again because an earlier hand-out was never \
             acknowledged (a replica crashed or lost its connection; RabbitMQ and NATS only)",
            redelivered.clone(),
        );
        let delivery_latency: Family<TriggerLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16)));
        registry.register(
            "trigger_delivery_latency_seconds",
            "Time from dequeue to the final delivery outcome",
            delivery_latency.clone(),
        );
        let replies = Family::default();
        registry.register(
            "trigger_replies",
            "Reply events by outcome (published, ttl_exhausted, invalid, unavailable)",
            replies.clone(),
        );
        let source_events = Family::default();
        registry.register(
            "source_events",
            "Events a source produced, by delivery outcome (sent, dead_lettered, failed)",
            source_events.clone(),
        );
        let source_retries = Family::default();
        registry.register(
            "source_delivery_retries",
            "Source delivery attempts beyond the first",
            source_retries.clone(),
        );
        let sink_events = Family::default();
        registry.register(
            "sink_events",
            "Events a sink received, by outcome (accepted, invalid, failed)",
            sink_events.clone(),
        );
        let sink_retries = Family::default();
        registry.register(
            "sink_delivery_retries",
            "Sink delivery attempts beyond the first",
            sink_retries.clone(),
        );
        let eventtype_observations_dropped = Family::default();
        registry.register(
            "eventtype_observations_dropped",
            "Ingress events the EventType registry skipped (reason: queue_full)",
            eventtype_observations_dropped.clone(),
        );
        let health_reports_dropped = Counter::default();
        registry.register(
            "health_reports_dropped",
            "Delivery-health notices not queued because the reporter was behind (their counts are read later)",
            health_reports_dropped.clone(),
        );
        let eventtypes_autocreated = Counter::default();
        registry.register(
            "eventtypes_autocreated",
            "EventTypes created from broker traffic",
            eventtypes_autocreated.clone(),
        );
        let eventtypes_capped = Family::default();
        registry.register(
            "eventtypes_capped",
            "Events accepted without an EventType because their broker has --eventtype-max-per-broker auto-created EventTypes",
            eventtypes_capped.clone(),
        );
        let eventtype_status_writes = Counter::default();
        registry.register(
            "eventtype_status_writes",
            "Writes of inferred schemas and samples to EventTypes",
            eventtype_status_writes.clone(),
        );
        let egress_refused = Family::default();
        registry.register(
            "egress_refused",
            "Outbound requests refused by the egress policy, by reason",
            egress_refused.clone(),
        );
        let deletion_events = Family::default();
        registry.register(
            "deletion_events",
            "Undelivered events of deleted triggers and brokers (drained, dead_lettered, dropped)",
            deletion_events.clone(),
        );
        let events_dropped = Family::default();
        registry.register(
            "events_dropped",
            "Events lost without delivery or dead-lettering, by reason",
            events_dropped.clone(),
        );
        let tls_certificate_reloads = Counter::default();
        registry.register(
            "tls_certificate_reloads",
            "Serving certificates put in service after their files changed",
            tls_certificate_reloads.clone(),
        );
        let tls_certificate_reload_failures = Counter::default();
        registry.register(
            "tls_certificate_reload_failures",
            "Changed certificate files refused; the previous certificate is still served",
            tls_certificate_reload_failures.clone(),
        );
        let connections_open = Family::default();
        registry.register(
            "connections_open",
            "HTTP connections open, per listener",
            connections_open.clone(),
        );
        let connections_limit = Family::default();
        registry.register(
            "connections_limit",
            "The connection limit of each listener (--max-connections)",
            connections_limit.clone(),
        );
        let connections_refused = Family::default();
        registry.register(
            "connections_refused",
            "Connections closed on arrival because the listener was at its connection limit",
            connections_refused.clone(),
        );
        let connections_closed = Family::default();
        registry.register(
            "connections_closed",
            "Connections the server closed, by reason (idle, header_timeout, headers_too_large)",
            connections_closed.clone(),
        );
        let request_timeouts = Family::default();
        registry.register(
            "http_request_timeouts",
            "Requests answered 408 after the request timeout",
            request_timeouts.clone(),
        );
        let open_files_limit = Gauge::default();
        registry.register(
            "open_files_limit",
            "The open-files soft limit of the process",
            open_files_limit.clone(),
        );
        let delivery_failures = Family::default();
        registry.register(
            "trigger_delivery_failures",
            "Deliveries that ended undelivered (dead-lettered or failed), by why the last attempt failed",
            delivery_failures.clone(),
        );
        let receive_failures = Family::default();
        registry.register(
            "trigger_receive_failures",
            "Failed reads of a trigger's subscription from its channel, by error kind; the trigger retries every 500 ms and delivers nothing meanwhile",
            receive_failures.clone(),
        );
        let storage_full = Gauge::default();
        registry.register(
            "storage_full",
            "1 while a disk Rivulet writes to is full and events are refused, else 0",
            storage_full.clone(),
        );
        let storage_failed = Gauge::default();
        registry.register(
            "storage_failed",
            "1 while writes fail for another reason than a full disk, else 0",
            storage_failed.clone(),
        );
        let storage_faults = Family::default();
        registry.register(
            "storage_faults",
            "Storage fault episodes begun, by component and kind (full, failed)",
            storage_faults.clone(),
        );
        let trigger_queue_depth = Family::default();
        registry.register(
            "trigger_queue_depth",
            "Events a trigger's subscription holds that are not acknowledged yet (sampled)",
            trigger_queue_depth.clone(),
        );
        let trigger_lag_seconds = Family::default();
        registry.register(
            "trigger_lag_seconds",
            "Seconds from arrival at ingress to the trigger taking the event, for its latest event",
            trigger_lag_seconds.clone(),
        );
        let journal_dropped = Family::default();
        registry.register(
            "journal_records_dropped",
            "Event journal records not kept, by reason",
            journal_dropped.clone(),
        );
        let journal_write_failures = Counter::default();
        registry.register(
            "journal_write_failures",
            "Event journal writes to disk that failed",
            journal_write_failures.clone(),
        );
        let journal_events = Gauge::default();
        registry.register(
            "journal_events",
            "Events the event journal holds",
            journal_events.clone(),
        );
        let journal_bytes = Gauge::default();
        registry.register(
            "journal_bytes",
            "About how many bytes of memory the event journal holds",
            journal_bytes.clone(),
        );
        let tap_dropped = Counter::default();
        registry.register(
            "tap_events_dropped",
            "Events a live tap client missed because it read too slowly",
            tap_dropped.clone(),
        );
        let trace_spans_dropped = Counter::default();
        registry.register(
            "trace_spans_dropped",
            "Trace spans dropped because the OTLP export queue was full",
            trace_spans_dropped.clone(),
        );
        Metrics {
            registry,
            trace_spans_dropped,
            connections_open,
            connections_limit,
            connections_refused,
            connections_closed,
            request_timeouts,
            open_files_limit,
            delivery_failures,
            receive_failures,
            storage_full,
            storage_failed,
            storage_faults,
            trigger_queue_depth,
            trigger_lag_seconds,
            journal_dropped,
            journal_write_failures,
            journal_events,
            journal_bytes,
            tap_dropped,
            knative: knative::KnativeMetrics::new(),
            egress_refused,
            deletion_events,
            events_dropped,
            tls_certificate_reloads,
            tls_certificate_reload_failures,
            eventtype_observations_dropped,
            health_reports_dropped,
            eventtypes_autocreated,
            eventtypes_capped,
            eventtype_status_writes,
            events_received,
            ingress_events,
            filter_matched,
            filter_rejected,
            filter_errors,
            deliveries,
            retries,
            redelivered,
            delivery_latency,
            replies,
            source_events,
            source_retries,
            sink_events,
            sink_retries,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode_registry(&mut text, &self.registry)
            .and_then(|()| {
                prometheus_client::encoding::text::encode_registry(
                    &mut text,
                    &self.knative.registry,
                )
            })
            .and_then(|()| prometheus_client::encoding::text::encode_eof(&mut text))
            .expect("writing to a String cannot fail");
        text
    }
}
