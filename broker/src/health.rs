//! Delivery health as the data path sees it: per trigger, final failures in a row, the last
//! failure and dead-letter counts; per broker, senders refused. Dispatchers and ingress
//! write counters and notes here and queue a wake-up for the reporter, which turns them into
//! Kubernetes Events and a Trigger condition.
//!
//! Nothing here waits: the state is atomics (and a mutex taken only on a failure), and the
//! wake-up queue is bounded and written with `try_send`. A wake-up that does not fit is only
//! counted: the counters keep what it was about, and the reporter reads them on its next
//! pass anyway.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use rivulet_core::log_throttle::LogThrottle;
use rivulet_core::metrics::Metrics;
use tokio::sync::mpsc;

/// How much of a failure's message is kept (and shown in Events and the condition).
pub const MESSAGE_LIMIT: usize = 1024;

/// What the reporter is woken for.
pub enum Wake {
    Trigger(Arc<TriggerHealth>),
    Broker(Arc<BrokerHealth>),
}

/// The last final failure of a trigger's delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureNote {
    pub at: DateTime<Utc>,
    /// The subscriber's response status, when it answered.
    pub status: Option<u16>,
    /// Why, in one word (`status`, `timeout`, `network`, ...).
    pub reason: &'static str,
    /// At most [`MESSAGE_LIMIT`] bytes.
    pub message: String,
    /// Whether the dead-letter sink took the event.
    pub dead_lettered: bool,
}

/// One trigger's delivery health. Kept across restarts of its consumer (a new configuration
/// starts a new consumer, not a new history).
pub struct TriggerHealth {
    pub namespace: String,
    pub trigger: String,
    /// Final failures (dead-lettered or failed) since the last delivery.
    in_row: AtomicU64,
    /// When the current run of failures began (ms since the epoch; 0 when none).
    failing_since_ms: AtomicU64,
    dead_lettered: AtomicU64,
    failed: AtomicU64,
    /// Deliveries that ended a run of failures.
    recoveries: AtomicU64,
    last_failure: Mutex<Option<FailureNote>>,
    waker: Waker,
}

/// What a trigger's counters say at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TriggerSnapshot {
    pub in_row: u64,
    pub failing_since: Option<DateTime<Utc>>,
    pub dead_lettered: u64,
    pub failed: u64,
    pub recoveries: u64,
    pub last_failure: Option<FailureNote>,
}

impl TriggerHealth {
    /// A delivery succeeded. One relaxed load unless it ends a run of failures.
    pub fn delivered(self: &Arc<Self>) {
        if self.in_row.load(Ordering::Relaxed) == 0 {
            return;
        }
        if self.in_row.swap(0, Ordering::AcqRel) > 0 {
            self.failing_since_ms.store(0, Ordering::Release);
            self.recoveries.fetch_add(1, Ordering::AcqRel);
            self.waker.wake(Wake::Trigger(self.clone()));
        }
    }

    /// A delivery ended in failure after its last attempt; `dead_lettered` when the
    /// dead-letter sink took the event.
    pub fn failed(
        self: &Arc<Self>,
        status: Option<u16>,
        reason: &'static str,
        message: &str,
        dead_lettered: bool,
    ) {
        let now = Utc::now();
        let note = FailureNote {
            at: now,
            status,
            reason,
            message: bounded(message),
            dead_lettered,
        };
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(note);
        if self.in_row.fetch_add(1, Ordering::AcqRel) == 0 {
            let millis = u64::try_from(now.timestamp_millis()).unwrap_or(1).max(1);
            self.failing_since_ms.store(millis, Ordering::Release);
        }
        if dead_lettered {
            self.dead_lettered.fetch_add(1, Ordering::AcqRel);
        } else {
            self.failed.fetch_add(1, Ordering::AcqRel);
        }
        self.waker.wake(Wake::Trigger(self.clone()));
    }

    pub fn snapshot(&self) -> TriggerSnapshot {
        let since = self.failing_since_ms.load(Ordering::Acquire);
        TriggerSnapshot {
            in_row: self.in_row.load(Ordering::Acquire),
            failing_since: (since > 0)
                .then(|| DateTime::from_timestamp_millis(since as i64))
                .flatten(),
            dead_lettered: self.dead_lettered.load(Ordering::Acquire),
            failed: self.failed.load(Ordering::Acquire),
            recoveries: self.recoveries.load(Ordering::Acquire),
            last_failure: self
                .last_failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// Why ingress refused a sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalKind {
    /// No token, or one that does not verify (401).
    Unauthenticated,
    /// An EventPolicy (or the default authorization mode) does not admit it (403).
    Forbidden,
}

/// The last sender a broker refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalNote {
    pub at: DateTime<Utc>,
    pub kind: RefusalKind,
    /// The sender's OIDC subject, when it was established.
    pub subject: Option<String>,
    /// Why, as ingress answered it (names the policies); at most [`MESSAGE_LIMIT`] bytes.
    pub message: String,
}

/// One broker's refused senders.
pub struct BrokerHealth {
    pub namespace: String,
    pub broker: String,
    unauthenticated: AtomicU64,
    forbidden: AtomicU64,
    last: Mutex<HashMap<RefusalKind, RefusalNote>>,
    waker: Waker,
}

/// What a broker's counters say at one moment.
#[derive(Debug, Clone, Default)]
pub struct BrokerSnapshot {
    pub unauthenticated: u64,
    pub forbidden: u64,
    pub last: HashMap<RefusalKind, RefusalNote>,
}

impl BrokerHealth {
    /// Ingress refused a request.
    pub fn refused(self: &Arc<Self>, kind: RefusalKind, subject: Option<&str>, message: &str) {
        let note = RefusalNote {
            at: Utc::now(),
            kind,
            subject: subject.map(str::to_string),
            message: bounded(message),
        };
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kind, note);
        match kind {
            RefusalKind::Unauthenticated => &self.unauthenticated,
            RefusalKind::Forbidden => &self.forbidden,
        }
        .fetch_add(1, Ordering::AcqRel);
        self.waker.wake(Wake::Broker(self.clone()));
    }

    pub fn snapshot(&self) -> BrokerSnapshot {
        BrokerSnapshot {
            unauthenticated: self.unauthenticated.load(Ordering::Acquire),
            forbidden: self.forbidden.load(Ordering::Acquire),
            last: self.last.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

/// The sending end of the wake-up queue.
#[derive(Clone)]
struct Waker {
    queue: mpsc::Sender<Wake>,
    shared: Arc<WakerShared>,
}

struct WakerShared {
    dropped: Counter,
    log: LogThrottle,
}

impl Waker {
    fn wake(&self, wake: Wake) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.queue.try_send(wake) {
            self.shared.dropped.inc();
            if let Some(suppressed) = self.shared.log.allow() {
                tracing::warn!(
                    suppressed,
                    "the delivery-health reporter is behind; a notice was dropped (its counts are read on the next pass; suppressed: how many more since the last such line)"
                );
            }
        }
    }
}

type Key = (String, String);

/// Every trigger's and broker's health, and the queue that wakes the reporter.
pub struct Health {
    triggers: Mutex<HashMap<Key, Arc<TriggerHealth>>>,
    brokers: Mutex<HashMap<Key, Arc<BrokerHealth>>>,
    waker: Waker,
}

impl Health {
    /// The state and the receiving end the reporter reads; `capacity` bounds the queue.
    pub fn new(metrics: &Metrics, capacity: usize) -> (Arc<Self>, mpsc::Receiver<Wake>) {
        let (queue, receiver) = mpsc::channel(capacity.max(1));
        let waker = Waker {
            queue,
            shared: Arc::new(WakerShared {
                dropped: metrics.health_reports_dropped.clone(),
                log: LogThrottle::default(),
            }),
        };
        let health = Health {
            triggers: Mutex::default(),
            brokers: Mutex::default(),
            waker,
        };
        (Arc::new(health), receiver)
    }

    /// A trigger's health, made on first use (when its consumer starts).
    pub fn trigger(&self, namespace: &str, trigger: &str) -> Arc<TriggerHealth> {
        let mut triggers = self.triggers.lock().unwrap_or_else(|e| e.into_inner());
        triggers
            .entry((namespace.to_string(), trigger.to_string()))
            .or_insert_with(|| {
                Arc::new(TriggerHealth {
                    namespace: namespace.to_string(),
                    trigger: trigger.to_string(),
                    in_row: AtomicU64::new(0),
                    failing_since_ms: AtomicU64::new(0),
                    dead_lettered: AtomicU64::new(0),
                    failed: AtomicU64::new(0),
                    recoveries: AtomicU64::new(0),
                    last_failure: Mutex::new(None),
                    waker: self.waker.clone(),
                })
            })
            .clone()
    }

    /// A broker's refusals, made on its first refusal.
    pub fn broker(&self, namespace: &str, broker: &str) -> Arc<BrokerHealth> {
        let mut brokers = self.brokers.lock().unwrap_or_else(|e| e.into_inner());
        brokers
            .entry((namespace.to_string(), broker.to_string()))
            .or_insert_with(|| {
                Arc::new(BrokerHealth {
                    namespace: namespace.to_string(),
                    broker: broker.to_string(),
                    unauthenticated: AtomicU64::new(0),
                    forbidden: AtomicU64::new(0),
                    last: Mutex::default(),
                    waker: self.waker.clone(),
                })
            })
            .clone()
    }

    /// Forgets a deleted trigger: one made again under the same name starts afresh.
    pub fn forget_trigger(&self, namespace: &str, trigger: &str) {
        self.triggers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(namespace.to_string(), trigger.to_string()));
    }

    /// Forgets a deleted broker.
    pub fn forget_broker(&self, namespace: &str, broker: &str) {
        self.brokers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(namespace.to_string(), broker.to_string()));
    }
}

/// `message` cut to [`MESSAGE_LIMIT`] bytes on a character boundary.
pub fn bounded(message: &str) -> String {
    if message.len() <= MESSAGE_LIMIT {
        return message.to_string();
    }
    let mut end = MESSAGE_LIMIT - 3;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_in_a_row_end_with_a_delivery_and_wake_the_reporter_each_time() {
        let metrics = Metrics::new();
        let (health, mut wakes) = Health::new(&metrics, 16);
        let trigger = health.trigger("ns", "t");
        trigger.delivered();
        assert!(
            wakes.try_recv().is_err(),
            "a delivery in good health is silent"
        );
        trigger.failed(Some(500), "status", "500 Internal Server Error", true);
        trigger.failed(None, "timeout", "timed out", false);
        let seen = trigger.snapshot();
        assert_eq!(seen.in_row, 2);
        assert_eq!((seen.dead_lettered, seen.failed), (1, 1));
        assert!(seen.failing_since.is_some());
        assert_eq!(seen.last_failure.unwrap().reason, "timeout");
        trigger.delivered();
        let seen = trigger.snapshot();
        assert_eq!((seen.in_row, seen.recoveries), (0, 1));
        assert!(seen.failing_since.is_none());
        let mut count = 0;
        while wakes.try_recv().is_ok() {
            count += 1;
        }
        assert_eq!(count, 3);
        assert!(Arc::ptr_eq(&trigger, &health.trigger("ns", "t")));
    }

    #[test]
    fn a_full_queue_drops_wake_ups_and_counts_them_but_keeps_the_counts() {
        let metrics = Metrics::new();
        let (health, _wakes) = Health::new(&metrics, 1);
        let broker = health.broker("ns", "b");
        for _ in 0..3 {
            broker.refused(
                RefusalKind::Forbidden,
                Some("system:serviceaccount:ns:x"),
                "no",
            );
        }
        assert_eq!(metrics.health_reports_dropped.get(), 2);
        assert_eq!(broker.snapshot().forbidden, 3);
    }

    #[test]
    fn long_messages_are_cut_to_the_limit() {
        let long = "é".repeat(MESSAGE_LIMIT);
        let cut = bounded(&long);
        assert!(cut.len() <= MESSAGE_LIMIT, "{}", cut.len());
        assert!(cut.ends_with("..."));
    }
}
