//! The event-type discovery registry.
//!
//! Ingress hands every accepted request's events to an [`Observer`], which only tries to put
//! them on a bounded queue: a full queue drops the observation (counted in
//! `rivulet_eventtype_observations_dropped_total`), so discovery never slows or fails
//! ingress. A background worker ([`worker`]) creates an EventType for each new
//! (broker, type, source pattern), infers the payload schema ([`schema`]) and writes it to the
//! EventType's status only when it changed, at most once per `min_write_interval`. A broker
//! gets at most `max_per_broker` auto-created EventTypes; events past it are counted in
//! `rivulet_eventtypes_capped_total` and get none.
//! [`query`] filters EventType lists, [`xregistry`] serves the CloudEvents xRegistry view,
//! [`scaffold`] writes function skeletons from a schema.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use crate::event::Event;
use crate::metrics::{Metrics, RegistryDropLabels};

pub mod pattern;
pub mod query;
mod reconcile;
pub mod scaffold;
pub mod schema;
pub mod worker;
pub mod xregistry;

pub use reconcile::{
    EVENT_TYPE_KNOWN, StatusLock, event_type_condition, exact_type_filter, known_event_type,
};

/// The default of [`RegistrySettings::max_per_broker`].
pub const DEFAULT_MAX_PER_BROKER: usize = 1000;

/// How discovery behaves; part of `rivulet serve`'s options.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// Create EventTypes for the events brokers accept (`--no-eventtype-autocreate` turns it
    /// off; schemas are still inferred for EventTypes applied by hand).
    pub autocreate: bool,
    /// Requests waiting for the worker at most; more are dropped and counted.
    pub queue_capacity: usize,
    /// Source patterns per (broker, type) that get their own EventType; sources beyond it
    /// share one EventType whose source is `*`.
    pub max_sources_per_type: usize,
    /// The shortest time between two status writes of one EventType.
    pub min_write_interval: Duration,
    /// Schema versions kept per EventType.
    pub max_schema_versions: usize,
    /// EventTypes auto-created per broker at most (`--eventtype-max-per-broker`). Past it,
    /// events are still accepted but new classes get no EventType; EventTypes applied by
    /// hand do not count and are not limited.
    pub max_per_broker: usize,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self {
            autocreate: true,
            queue_capacity: 1024,
            max_sources_per_type: 20,
            min_write_interval: Duration::from_secs(1),
            max_schema_versions: 10,
            max_per_broker: DEFAULT_MAX_PER_BROKER,
        }
    }
}

/// Brokers at their cap of auto-created EventTypes, with the cap: filled by the discovery
/// worker, shown by the Broker reconciler as an informational condition.
#[derive(Clone, Default)]
pub struct CappedBrokers(Arc<Mutex<HashMap<(String, String), usize>>>);

impl CappedBrokers {
    /// Records whether a broker is at its cap; true when that changed.
    pub fn set(&self, namespace: &str, broker: &str, cap: Option<usize>) -> bool {
        let mut capped = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = (namespace.to_string(), broker.to_string());
        match cap {
            Some(max) => capped.insert(key, max) != Some(max),
            None => capped.remove(&key).is_some(),
        }
    }

    /// The cap a broker is at, if it is.
    pub fn get(&self, namespace: &str, broker: &str) -> Option<usize> {
        let capped = self.0.lock().unwrap_or_else(|e| e.into_inner());
        capped
            .get(&(namespace.to_string(), broker.to_string()))
            .copied()
    }
}

/// The events of one accepted request.
pub struct Observation {
    pub namespace: String,
    pub broker: String,
    pub events: Vec<Event>,
}

/// Ingress's handle on the registry: never waits.
pub struct Observer {
    queue: mpsc::Sender<Observation>,
    dropped: Counter,
}

impl Observer {
    /// A handle and the receiving end the worker reads.
    pub fn new(metrics: &Metrics, capacity: usize) -> (Self, mpsc::Receiver<Observation>) {
        let (queue, receiver) = mpsc::channel(capacity.max(1));
        let dropped = metrics
            .eventtype_observations_dropped
            .get_or_create(&RegistryDropLabels {
                reason: "queue_full",
            })
            .clone();
        (Self { queue, dropped }, receiver)
    }

    /// Queues the events for discovery, or drops and counts them when the queue is full.
    pub fn observe(&self, namespace: &str, broker: &str, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let count = events.len() as u64;
        let observation = Observation {
            namespace: namespace.to_string(),
            broker: broker.to_string(),
            events,
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.queue.try_send(observation) {
            self.dropped.inc_by(count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let metrics = Metrics::new();
        let (observer, mut receiver) = Observer::new(&metrics, 1);
        let event = || {
            crate::event::parse_structured(
                br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#,
            )
            .unwrap()
        };
        observer.observe("default", "default", vec![event()]);
        observer.observe("default", "default", vec![event(), event()]);
        let dropped = metrics
            .eventtype_observations_dropped
            .get_or_create(&RegistryDropLabels {
                reason: "queue_full",
            })
            .get();
        assert_eq!(dropped, 2);
        assert_eq!(receiver.try_recv().unwrap().events.len(), 1);
        assert!(receiver.try_recv().is_err());
    }
}
