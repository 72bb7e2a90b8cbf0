//! The metrics Knative Eventing's broker exposes, under Knative's names and labels, so its
//! dashboards and alerts keep working: `mt_broker_ingress_*` for ingress and
//! `mt_broker_filter_*` for triggers. Latencies are in milliseconds, as Knative's are.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Distinct `event_type` label values kept per broker; later types are counted as `other`,
/// since the type is the sender's choice and every value is a series.
pub const EVENT_TYPES_PER_BROKER: usize = 100;

/// The `event_type` value of types past [`EVENT_TYPES_PER_BROKER`].
pub const OTHER_EVENT_TYPE: &str = "other";

/// Knative's latency buckets, in milliseconds.
fn latency_ms() -> Histogram {
    Histogram::new([
        1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
    ])
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IngressLabels {
    pub broker_name: String,
    pub event_type: String,
    pub namespace_name: String,
    pub response_code: u16,
    pub response_code_class: &'static str,
    pub unique_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FilterLabels {
    pub broker_name: String,
    pub container_name: &'static str,
    /// The trigger's `type` filter value, or `any`, as Knative labels it.
    pub filter_type: String,
    pub namespace_name: String,
    pub response_code: u16,
    pub response_code_class: &'static str,
    pub trigger_name: String,
    pub unique_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FilterProcessingLabels {
    pub broker_name: String,
    pub container_name: &'static str,
    pub filter_type: String,
    pub namespace_name: String,
    pub trigger_name: String,
    pub unique_name: String,
}

/// `2xx`, `4xx`, `5xx`, ... of a status code.
pub fn code_class(code: u16) -> &'static str {
    match code / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// The container name Knative's filter metrics carry.
pub const FILTER_CONTAINER: &str = "filter";

/// Knative-named metrics, in their own registry (no `rivulet_` prefix).
pub struct KnativeMetrics {
    pub(super) registry: Registry,
    pub ingress_event_count: Family<IngressLabels, Counter>,
    pub ingress_dispatch_latencies: Family<IngressLabels, Histogram, fn() -> Histogram>,
    pub filter_event_count: Family<FilterLabels, Counter>,
    pub filter_dispatch_latencies: Family<FilterLabels, Histogram, fn() -> Histogram>,
    pub filter_processing_latencies: Family<FilterProcessingLabels, Histogram, fn() -> Histogram>,
    /// `unique_name`: this process (the pod name on Kubernetes).
    pub unique_name: String,
    /// Event types seen per broker (namespace/name), for the label bound.
    event_types: Mutex<HashMap<(String, String), std::collections::HashSet<String>>>,
}

impl KnativeMetrics {
    pub(super) fn new() -> Self {
        let mut registry = Registry::default();
        let ingress_event_count = Family::default();
        registry.register(
            "mt_broker_ingress_event_count",
            "Number of events received by a Broker",
            ingress_event_count.clone(),
        );
        let ingress_dispatch_latencies =
            Family::<IngressLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_ms);
        registry.register(
            "mt_broker_ingress_event_dispatch_latencies",
            "The time spent dispatching an event to a Channel, in milliseconds",
            ingress_dispatch_latencies.clone(),
        );
        let filter_event_count = Family::default();
        registry.register(
            "mt_broker_filter_event_count",
            "Number of events received by a Trigger's subscriber, by its response",
            filter_event_count.clone(),
        );
        let filter_dispatch_latencies =
            Family::<FilterLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_ms);
        registry.register(
            "mt_broker_filter_event_dispatch_latencies",
            "The time spent dispatching an event to a Trigger subscriber, in milliseconds",
            filter_dispatch_latencies.clone(),
        );
        let filter_processing_latencies =
            Family::<FilterProcessingLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_ms,
            );
        registry.register(
            "mt_broker_filter_event_processing_latencies",
            "The time spent processing an event before it is dispatched to a Trigger subscriber, in milliseconds",
            filter_processing_latencies.clone(),
        );
        let unique_name = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "rivulet".to_string());
        KnativeMetrics {
            registry,
            ingress_event_count,
            ingress_dispatch_latencies,
            filter_event_count,
            filter_dispatch_latencies,
            filter_processing_latencies,
            unique_name,
            event_types: Mutex::default(),
        }
    }

    /// The `event_type` label for `ty` at a broker: itself while the broker has fewer than
    /// [`EVENT_TYPES_PER_BROKER`] types, else `other`.
    pub fn event_type_label(&self, namespace: &str, broker: &str, ty: &str) -> String {
        let mut seen = self.event_types.lock().unwrap_or_else(|p| p.into_inner());
        let types = seen
            .entry((namespace.to_string(), broker.to_string()))
            .or_default();
        if types.contains(ty) {
            return ty.to_string();
        }
        if types.len() < EVENT_TYPES_PER_BROKER {
            types.insert(ty.to_string());
            return ty.to_string();
        }
        OTHER_EVENT_TYPE.to_string()
    }

    /// Forgets a deleted broker's types.
    pub fn forget_broker(&self, namespace: &str, broker: &str) {
        self.event_types
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(namespace.to_string(), broker.to_string()));
    }

    /// The ingress series of one (broker, type, status).
    pub fn ingress(
        &self,
        namespace: &str,
        broker: &str,
        event_type: String,
        code: u16,
    ) -> IngressLabels {
        IngressLabels {
            broker_name: broker.to_string(),
            event_type,
            namespace_name: namespace.to_string(),
            response_code: code,
            response_code_class: code_class(code),
            unique_name: self.unique_name.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_past_the_bound_are_other() {
        let metrics = KnativeMetrics::new();
        for n in 0..EVENT_TYPES_PER_BROKER {
            assert_eq!(
                metrics.event_type_label("ns", "b", &format!("t{n}")),
                format!("t{n}")
            );
        }
        assert_eq!(
            metrics.event_type_label("ns", "b", "late"),
            OTHER_EVENT_TYPE
        );
        assert_eq!(
            metrics.event_type_label("ns", "b", "t3"),
            "t3",
            "known types stay"
        );
        assert_eq!(
            metrics.event_type_label("ns", "other-broker", "late"),
            "late"
        );
    }

    #[test]
    fn code_classes() {
        assert_eq!(code_class(202), "2xx");
        assert_eq!(code_class(404), "4xx");
        assert_eq!(code_class(503), "5xx");
    }
}
