//! Prometheus metrics, exposed at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerLabels {
    pub namespace: String,
    pub broker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IngressLabels {
    pub namespace: String,
    pub broker: String,
    /// `accepted`, `refused` (4xx) or `unavailable` (5xx).
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
pub struct DropLabels {
    pub namespace: String,
    pub broker: String,
    /// The trigger that dropped the event; empty when ingress refused it.
    pub trigger: String,
    /// `ttl`: the event's hop count (`knativebrokerttl`) was exhausted (an event loop).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdapterLabels {
    /// The source or sink kind (`PingSource`, `HttpForwardSink`, ...).
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
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
pub struct RegistryDropLabels {
    /// `queue_full`: the discovery queue was full, the observation was dropped.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EgressLabels {
    /// `denied`, `not_allowed`, `metadata`, `link_local`, `unspecified`, `multicast`,
    /// `broadcast`.
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
    /// Seconds from taking an event off the channel to its final outcome.
    pub delivery_latency: Family<TriggerLabels, Histogram, fn() -> Histogram>,
    pub replies: Family<ReplyLabels, Counter>,
    /// Events not delivered or not accepted on purpose, by reason.
    pub events_dropped: Family<DropLabels, Counter>,
    /// Events a source adapter produced, by delivery outcome.
    pub source_events: Family<AdapterOutcomeLabels, Counter>,
    /// Delivery attempts beyond the first, per source.
    pub source_retries: Family<AdapterLabels, Counter>,
    /// Events a sink adapter received, by outcome.
    pub sink_events: Family<AdapterOutcomeLabels, Counter>,
    /// Attempts beyond the first a sink made towards its target.
    pub sink_retries: Family<AdapterLabels, Counter>,
    /// Ingress observations the EventType registry did not look at.
    pub eventtype_observations_dropped: Family<RegistryDropLabels, Counter>,
    /// Outbound requests the egress policy refused, by reason.
    pub egress_refused: Family<EgressLabels, Counter>,
    /// EventTypes created from traffic.
    pub eventtypes_autocreated: Counter,
    /// Writes of an EventType's inferred schema, sample or dataschema.
    pub eventtype_status_writes: Counter,
    /// Serving certificates put in service after their files changed.
    pub tls_certificate_reloads: Counter,
    /// Changed certificate files that could not be used (the previous certificate stayed).
    pub tls_certificate_reload_failures: Counter,
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
        let events_dropped = Family::default();
        registry.register(
            "events_dropped",
            "Events dropped instead of delivered or accepted, by reason (ttl: hop count exhausted)",
            events_dropped.clone(),
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
        let eventtypes_autocreated = Counter::default();
        registry.register(
            "eventtypes_autocreated",
            "EventTypes created from broker traffic",
            eventtypes_autocreated.clone(),
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
        Metrics {
            registry,
            egress_refused,
            tls_certificate_reloads,
            tls_certificate_reload_failures,
            eventtype_observations_dropped,
            eventtypes_autocreated,
            eventtype_status_writes,
            events_received,
            ingress_events,
            filter_matched,
            filter_rejected,
            filter_errors,
            deliveries,
            retries,
            delivery_latency,
            replies,
            events_dropped,
            source_events,
            source_retries,
            sink_events,
            sink_retries,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}
