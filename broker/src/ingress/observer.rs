//! What ingress hands to event-type discovery: the events of each accepted request, on a
//! bounded queue that never makes ingress wait.

use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use rivulet_core::event::Event;
use rivulet_core::metrics::{DiscoveryDropLabels, Metrics};

/// The events of one accepted request.
pub struct Observation {
    pub namespace: String,
    pub broker: String,
    pub events: std::sync::Arc<[Event]>,
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
            .get_or_create(&DiscoveryDropLabels {
                reason: "queue_full",
            })
            .clone();
        (Self { queue, dropped }, receiver)
    }

    /// Queues the events for discovery, or drops and counts them when the queue is full.
    pub fn observe(&self, namespace: &str, broker: &str, events: std::sync::Arc<[Event]>) {
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
            rivulet_core::event::parse_structured(
                br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#,
            )
            .unwrap()
        };
        observer.observe("default", "default", vec![event()].into());
        observer.observe("default", "default", vec![event(), event()].into());
        let dropped = metrics
            .eventtype_observations_dropped
            .get_or_create(&DiscoveryDropLabels {
                reason: "queue_full",
            })
            .get();
        assert_eq!(dropped, 2);
        assert_eq!(receiver.try_recv().unwrap().events.len(), 1);
        assert!(receiver.try_recv().is_err());
    }
}
