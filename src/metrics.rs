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
        Metrics {
            registry,
            events_received,
            ingress_events,
            filter_matched,
            filter_rejected,
            filter_errors,
            deliveries,
            retries,
            delivery_latency,
            replies,
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
