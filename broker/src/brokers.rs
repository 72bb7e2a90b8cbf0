//! The broker table: every ready broker by namespace and name, with its channel, what its
//! triggers inherit, and its intake counters. Reconcilers fill it; ingress and the
//! dispatcher read it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use rivulet_channels::Channel;
use rivulet_core::log_throttle::LogThrottle;
use rivulet_core::metrics::{BrokerLabels, DroppedLabels, IngressLabels, Metrics};
use rivulet_core::resources::DeliverySpec;

use crate::auth::TargetRef;

/// A ready broker: its channel and what its triggers inherit.
pub struct BrokerHandle {
    pub namespace: String,
    pub name: String,
    /// The channel backend's name (`embedded`, `memory`, ...).
    pub backend: &'static str,
    pub channel: Arc<dyn Channel>,
    /// The broker's `spec.delivery`, the default for its triggers.
    pub delivery: Option<DeliverySpec>,
    /// The broker's resolved dead-letter sink.
    pub dead_letter_uri: Option<String>,
    /// Identity of the configuration the channel was opened with, to notice changes.
    pub config_fingerprint: String,
    /// The broker's labels, which EventPolicy selectors match.
    pub labels: BTreeMap<String, String>,
}

impl BrokerHandle {
    /// The broker as an EventPolicy target.
    pub fn target(&self) -> TargetRef {
        TargetRef {
            group: "eventing.knative.dev".into(),
            kind: "Broker".into(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            labels: self.labels.clone(),
        }
    }
}

/// A broker's ingress counters, looked up once rather than per request.
#[derive(Clone)]
pub(crate) struct BrokerCounters {
    pub(crate) received: Counter,
    pub(crate) accepted: Counter,
    pub(crate) refused: Counter,
    pub(crate) unavailable: Counter,
    pub(crate) ttl_dropped: Counter,
    /// Whether a TTL drop was logged already: a loop logs once, not once per event.
    pub(crate) ttl_logged: Arc<AtomicBool>,
    pub(crate) full: Counter,
    /// Storage and backend failures fail every request while they last: one line per interval.
    pub(crate) unavailable_log: Arc<LogThrottle>,
    /// The broker's names, shared with the journal's records.
    pub(crate) namespace: Arc<str>,
    pub(crate) name: Arc<str>,
    /// Knative-named series by status code and event type, each made on first use.
    pub(crate) knative: Arc<Mutex<HashMap<u16, HashMap<String, KnativeIngress>>>>,
}

/// One (status, event type) series pair of Knative's ingress metrics.
#[derive(Clone)]
pub(crate) struct KnativeIngress {
    pub(crate) count: Counter,
    pub(crate) latency: Histogram,
}

impl BrokerCounters {
    fn new(metrics: &Metrics, namespace: &str, broker: &str) -> Self {
        let outcome = |outcome| {
            metrics
                .ingress_events
                .get_or_create(&IngressLabels {
                    namespace: namespace.to_string(),
                    broker: broker.to_string(),
                    outcome,
                })
                .clone()
        };
        BrokerCounters {
            received: metrics
                .events_received
                .get_or_create(&BrokerLabels {
                    namespace: namespace.to_string(),
                    broker: broker.to_string(),
                })
                .clone(),
            accepted: outcome("accepted"),
            refused: outcome("refused"),
            unavailable: outcome("unavailable"),
            ttl_dropped: metrics
                .events_dropped
                .get_or_create(&DroppedLabels {
                    namespace: namespace.to_string(),
                    trigger: String::new(),
                    reason: "ttl",
                })
                .clone(),
            ttl_logged: Arc::default(),
            full: outcome("full"),
            unavailable_log: Arc::default(),
            namespace: namespace.into(),
            name: broker.into(),
            knative: Arc::default(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) handle: Arc<BrokerHandle>,
    pub(crate) counters: BrokerCounters,
}

/// Brokers by namespace, then name: looked up with borrowed strings on every request.
type BrokerMap = HashMap<String, HashMap<String, Entry>>;

/// Every ready broker, looked up on each request with borrowed strings.
pub struct BrokerTable {
    brokers: RwLock<BrokerMap>,
    metrics: Arc<Metrics>,
}

impl BrokerTable {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        BrokerTable {
            brokers: RwLock::default(),
            metrics,
        }
    }

    pub fn insert(&self, handle: Arc<BrokerHandle>) {
        let counters = BrokerCounters::new(&self.metrics, &handle.namespace, &handle.name);
        self.brokers
            .write()
            .expect("lock poisoned")
            .entry(handle.namespace.clone())
            .or_default()
            .insert(handle.name.clone(), Entry { handle, counters });
    }

    pub fn remove(&self, namespace: &str, name: &str) -> Option<Arc<BrokerHandle>> {
        let mut brokers = self.brokers.write().expect("lock poisoned");
        let in_namespace = brokers.get_mut(namespace)?;
        let removed = in_namespace.remove(name).map(|entry| entry.handle);
        if in_namespace.is_empty() {
            brokers.remove(namespace);
        }
        self.metrics.knative.forget_broker(namespace, name);
        removed
    }

    /// The metrics ingress records into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub(crate) fn entry(&self, namespace: &str, name: &str) -> Option<Entry> {
        self.brokers
            .read()
            .expect("lock poisoned")
            .get(namespace)?
            .get(name)
            .cloned()
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<BrokerHandle>> {
        self.entry(namespace, name).map(|entry| entry.handle)
    }

    /// Every broker ingress serves.
    pub fn handles(&self) -> Vec<Arc<BrokerHandle>> {
        self.brokers
            .read()
            .expect("lock poisoned")
            .values()
            .flat_map(|in_namespace| in_namespace.values().map(|entry| entry.handle.clone()))
            .collect()
    }
}
