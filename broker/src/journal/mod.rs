//! The event journal: where each event went. Ingress records its arrival, each trigger its
//! filter's verdict and its delivery (every attempt, the outcome, the reply). Records go
//! through a bounded queue to one writer task, so the data path never waits on the journal:
//! when the writer is behind, records are dropped and counted, never blocking an event.
//!
//! The writer keeps each event's path in memory ([`index`]) for `rivulet events` and appends
//! the records to segment files in the data dir ([`segments`]), so the journal survives a
//! restart. Both are bounded by size and by a retention period. Live taps get each accepted
//! event and each trigger's outcome as they are recorded.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use std::sync::mpsc as std_mpsc;

use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::CancellationToken;

use rivulet_core::event::Event;
use rivulet_core::log_throttle::LogThrottle;
use rivulet_core::metrics::{JournalDropLabels, Metrics};

pub mod index;
pub mod record;
mod segments;

pub use index::{EventPath, ListQuery};
pub use record::{Attempt, EventRef, Outcome, Reply, Step, Summary};

use index::{Bounds, Index};
use record::{Millis, now_millis};

/// How the journal is kept.
#[derive(Debug, Clone)]
pub struct JournalSettings {
    pub enabled: bool,
    /// The folder of its segment files; `None` keeps it in memory only.
    pub dir: Option<PathBuf>,
    /// Bytes it keeps at most, in memory and on disk each.
    pub max_bytes: u64,
    /// How long an event's path is kept.
    pub retention: Duration,
    /// Records waiting for the writer at most; past it they are dropped and counted.
    pub queue: usize,
}

impl Default for JournalSettings {
    fn default() -> Self {
        JournalSettings {
            enabled: true,
            dir: None,
            max_bytes: 64 * 1024 * 1024,
            retention: Duration::from_secs(3600),
            queue: 16 * 1024,
        }
    }
}

/// How ingress answered a request.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// When ingress began to store its events.
    pub at: Millis,
    /// The authenticated subject, else the peer address (or what sent a reply).
    pub sender: String,
    pub status: u16,
    /// Why it was refused or not stored.
    pub error: Option<String>,
}

/// Events read off one broker's ingress, as taps see them.
#[derive(Clone)]
pub enum TapItem {
    /// Events a broker stored (status 202) or refused.
    Arrived {
        namespace: Arc<str>,
        broker: Arc<str>,
        status: u16,
        events: Arc<[Event]>,
    },
    /// A step after arrival (a trigger's verdict or delivery).
    Step { event: Arc<EventRef>, step: Step },
}

enum Message {
    Arrived {
        at: Millis,
        namespace: Arc<str>,
        broker: Arc<str>,
        sender: String,
        status: u16,
        error: Option<String>,
        events: Arc<[Event]>,
    },
    Step {
        namespace: Arc<str>,
        broker: Arc<str>,
        id: String,
        source: String,
        step: Step,
    },
    /// Answered once every record queued before it is applied (tests, shutdown).
    Flush(oneshot::Sender<()>),
}

struct Inner {
    queue: std_mpsc::SyncSender<Message>,
    index: Arc<Mutex<Index>>,
    tap: broadcast::Sender<TapItem>,
    dropped: Counter,
    drop_log: LogThrottle,
    metrics: Arc<Metrics>,
}

/// A handle on the journal; cheap to clone. The default one is off and records nothing.
#[derive(Clone, Default)]
pub struct Journal {
    inner: Option<Arc<Inner>>,
}

/// How many tap items wait per slow client before it misses some.
const TAP_BUFFER: usize = 1024;
/// How long the writer sleeps between taking what is queued.
const WRITER_PAUSE: Duration = Duration::from_millis(20);

impl Journal {
    /// A journal that records nothing.
    pub fn off() -> Self {
        Journal::default()
    }

    /// Starts the journal's writer (loading what the segment files hold) unless `settings`
    /// turn it off. The writer stops, with what is queued written, when `shutdown` fires.
    pub fn start(
        settings: &JournalSettings,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Journal {
        if !settings.enabled {
            return Journal::off();
        }
        let bounds = Bounds {
            max_bytes: usize::try_from(settings.max_bytes).unwrap_or(usize::MAX),
            retention_ms: settings.retention.as_millis() as Millis,
        };
        let mut index = Index::new(bounds);
        let segments = settings.dir.as_ref().and_then(|dir| {
            match segments::Segments::open(dir, settings.max_bytes, settings.retention) {
                Ok((segments, records)) => {
                    for (event, step) in records {
                        index.add(event, step);
                    }
                    Some(segments)
                }
                Err(error) => {
                    metrics.journal_write_failures.inc();
                    tracing::warn!(dir = %dir.display(), %error, "the event journal cannot use its folder; it is kept in memory only");
                    None
                }
            }
        });
        index.evict(now_millis());
        let index = Arc::new(Mutex::new(index));
        let (queue, receiver) = std_mpsc::sync_channel(settings.queue.max(1));
        let (tap, _) = broadcast::channel(TAP_BUFFER);
        let inner = Arc::new(Inner {
            queue,
            index: index.clone(),
            tap: tap.clone(),
            dropped: metrics
                .journal_dropped
                .get_or_create(&JournalDropLabels {
                    reason: "queue_full",
                })
                .clone(),
            drop_log: LogThrottle::default(),
            metrics: metrics.clone(),
        });
        let spawned = std::thread::Builder::new()
            .name("rivulet-journal".into())
            .spawn(move || write(receiver, index, segments, tap, metrics, shutdown));
        if let Err(error) = spawned {
            tracing::warn!(%error, "the event journal's writer could not start; the journal is off");
            return Journal::off();
        }
        Journal { inner: Some(inner) }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    fn send(&self, message: Message) {
        let Some(inner) = &self.inner else {
            return;
        };
        if let Err(std_mpsc::TrySendError::Full(_)) = inner.queue.try_send(message) {
            inner.dropped.inc();
            if let Some(suppressed) = inner.drop_log.allow() {
                tracing::warn!(
                    suppressed,
                    "the event journal is behind; a record was not kept (counted in rivulet_journal_records_dropped_total; suppressed: how many more since the last such line)"
                );
            }
        }
    }

    /// Ingress answered a request carrying `events` to `namespace/broker` as `arrival` says.
    pub fn arrived(
        &self,
        namespace: &Arc<str>,
        broker: &Arc<str>,
        arrival: Arrival,
        events: Arc<[Event]>,
    ) {
        if self.inner.is_none() || events.is_empty() {
            return;
        }
        self.send(Message::Arrived {
            at: arrival.at,
            namespace: namespace.clone(),
            broker: broker.clone(),
            sender: arrival.sender,
            status: arrival.status,
            error: arrival.error,
            events,
        });
    }

    /// A step of event (`source`, `id`) at a trigger of `namespace/broker`.
    pub fn step(
        &self,
        namespace: &Arc<str>,
        broker: &Arc<str>,
        id: String,
        source: String,
        step: Step,
    ) {
        if self.inner.is_none() {
            return;
        }
        self.send(Message::Step {
            namespace: namespace.clone(),
            broker: broker.clone(),
            id,
            source,
            step,
        });
    }

    /// Waits until every record sent before is applied (for tests and the CLI's
    /// read-your-writes); returns at once when the journal is off.
    pub async fn flush(&self) {
        let Some(inner) = &self.inner else {
            return;
        };
        let (done, wait) = oneshot::channel();
        let queue = inner.queue.clone();
        // A full queue makes `send` wait for room: off the runtime's workers.
        let sent = tokio::task::spawn_blocking(move || queue.send(Message::Flush(done)).is_ok())
            .await
            .unwrap_or(false);
        if sent {
            let _ = wait.await;
        }
    }

    /// Every recorded path of events with this id.
    pub fn trace(&self, id: &str) -> Vec<EventPath> {
        match &self.inner {
            Some(inner) => lock(&inner.index).trace(id),
            None => Vec::new(),
        }
    }

    /// The newest paths matching `query`, newest first.
    pub fn list(&self, query: &ListQuery) -> Vec<EventPath> {
        match &self.inner {
            Some(inner) => lock(&inner.index).list(query),
            None => Vec::new(),
        }
    }

    /// A live feed of what is recorded from now on; `None` when the journal is off.
    pub fn tap(&self) -> Option<broadcast::Receiver<TapItem>> {
        self.inner.as_ref().map(|inner| inner.tap.subscribe())
    }

    /// Counts events a slow tap client missed.
    pub fn tap_missed(&self, count: u64) {
        if let Some(inner) = &self.inner {
            inner.metrics.tap_dropped.inc_by(count);
        }
    }
}

fn lock(index: &Mutex<Index>) -> std::sync::MutexGuard<'_, Index> {
    index
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The writer, on a thread of its own: applies records to the index, appends them to the
/// segment files and feeds the taps, in batches. Its file writes never hold up a worker of
/// the runtime that serves events.
fn write(
    receiver: std_mpsc::Receiver<Message>,
    index: Arc<Mutex<Index>>,
    mut segments: Option<segments::Segments>,
    tap: broadcast::Sender<TapItem>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::new();
    let write_log = LogThrottle::default();
    let mut last_eviction = std::time::Instant::now();
    loop {
        // Takes what arrived in the last moment at once, rather than waking for each record:
        // a wake-up per record costs the event path more than the record itself.
        std::thread::sleep(WRITER_PAUSE);
        loop {
            match receiver.try_recv() {
                Ok(message) => batch.push(message),
                Err(std_mpsc::TryRecvError::Empty) => break,
                Err(std_mpsc::TryRecvError::Disconnected) => {
                    apply(
                        &mut batch,
                        &index,
                        &mut segments,
                        &tap,
                        &metrics,
                        &write_log,
                    );
                    return;
                }
            }
        }
        if batch.is_empty()
            && last_eviction.elapsed() < Duration::from_secs(1)
            && !shutdown.is_cancelled()
        {
            continue;
        }
        last_eviction = std::time::Instant::now();
        let stopping = shutdown.is_cancelled();
        if stopping {
            // What is queued still goes in.
            while let Ok(message) = receiver.try_recv() {
                batch.push(message);
            }
        }
        apply(
            &mut batch,
            &index,
            &mut segments,
            &tap,
            &metrics,
            &write_log,
        );
        if stopping {
            break;
        }
    }
    if let Some(segments) = &mut segments
        && let Err(error) = segments.flush()
    {
        metrics.journal_write_failures.inc();
        tracing::warn!(%error, "the event journal could not write its last records");
    }
}

fn apply(
    batch: &mut Vec<Message>,
    index: &Mutex<Index>,
    segments: &mut Option<segments::Segments>,
    tap: &broadcast::Sender<TapItem>,
    metrics: &Metrics,
    write_log: &LogThrottle,
) {
    let tapping = tap.receiver_count() > 0;
    let mut records: Vec<(EventRef, Step)> = Vec::with_capacity(batch.len());
    let mut flushes = Vec::new();
    for message in batch.drain(..) {
        match message {
            Message::Arrived {
                at,
                namespace,
                broker,
                sender,
                status,
                error,
                events,
            } => {
                for event in events.iter() {
                    let reference = EventRef {
                        namespace: namespace.to_string(),
                        broker: broker.to_string(),
                        id: event.id.clone(),
                        source: event.source.clone(),
                    };
                    let step = Step::Arrived {
                        at,
                        ty: event.ty.clone(),
                        subject: event.subject.clone(),
                        sender: sender.clone(),
                        size: event.data.as_ref().map_or(0, |d| d.len() as u64),
                        status,
                        error: error.clone(),
                        attributes: event.to_envelope().attributes,
                    };
                    records.push((reference, step));
                }
                if tapping {
                    let _ = tap.send(TapItem::Arrived {
                        namespace,
                        broker,
                        status,
                        events,
                    });
                }
            }
            Message::Step {
                namespace,
                broker,
                id,
                source,
                step,
            } => {
                let reference = EventRef {
                    namespace: namespace.to_string(),
                    broker: broker.to_string(),
                    id,
                    source,
                };
                if tapping {
                    let _ = tap.send(TapItem::Step {
                        event: Arc::new(reference.clone()),
                        step: step.clone(),
                    });
                }
                records.push((reference, step));
            }
            Message::Flush(done) => flushes.push(done),
        }
    }
    if let Some(files) = segments.as_mut()
        && let Err(error) = files.append(&records)
    {
        metrics.journal_write_failures.inc();
        if let Some(suppressed) = write_log.allow() {
            tracing::warn!(%error, suppressed, "the event journal could not write to its folder; it goes on in memory (suppressed: how many more failures since the last such line)");
        }
    }
    {
        let mut index = lock(index);
        for (event, step) in records {
            index.add(event, step);
        }
        index.evict(now_millis());
        let (events, bytes) = index.size();
        metrics.journal_events.set(events as i64);
        metrics.journal_bytes.set(bytes as i64);
    }
    for done in flushes {
        let _ = done.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> Event {
        rivulet_core::event::parse_structured(
            format!(r#"{{"specversion":"1.0","id":"{id}","source":"/s","type":"t","data":"abc"}}"#)
                .as_bytes(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn records_reach_the_index_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let settings = JournalSettings {
            dir: Some(dir.path().to_path_buf()),
            ..JournalSettings::default()
        };
        let metrics = Arc::new(Metrics::new());
        let stop = CancellationToken::new();
        let journal = Journal::start(&settings, metrics.clone(), stop.clone());
        let (ns, broker): (Arc<str>, Arc<str>) = ("default".into(), "default".into());
        journal.arrived(
            &ns,
            &broker,
            Arrival {
                at: now_millis(),
                sender: "test".into(),
                status: 202,
                error: None,
            },
            vec![event("e1")].into(),
        );
        journal.step(
            &ns,
            &broker,
            "e1".into(),
            "/s".into(),
            Step::Dropped {
                at: now_millis(),
                trigger: "t".into(),
                reason: "ttl".into(),
            },
        );
        journal.flush().await;
        let path = &journal.trace("e1")[0];
        assert_eq!(path.steps.len(), 2);
        assert_eq!(path.outcome, Summary::DroppedTtl);
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;

        let again = Journal::start(&settings, metrics, CancellationToken::new());
        let path = &again.trace("e1")[0];
        assert_eq!(path.steps.len(), 2, "read back from the segment files");
        assert!(matches!(
            &path.steps[0],
            Step::Arrived {
                size: 5,
                status: 202,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let metrics = Arc::new(Metrics::new());
        let settings = JournalSettings {
            queue: 1,
            ..JournalSettings::default()
        };
        let journal = Journal::start(&settings, metrics.clone(), CancellationToken::new());
        let (ns, broker): (Arc<str>, Arc<str>) = ("default".into(), "default".into());
        let sent = 2_000;
        for n in 0..sent {
            journal.arrived(
                &ns,
                &broker,
                Arrival {
                    at: now_millis(),
                    sender: "t".into(),
                    status: 202,
                    error: None,
                },
                vec![event(&n.to_string())].into(),
            );
        }
        journal.flush().await;
        let dropped = metrics
            .journal_dropped
            .get_or_create(&JournalDropLabels {
                reason: "queue_full",
            })
            .get();
        let kept = journal
            .list(&ListQuery {
                limit: usize::MAX,
                ..ListQuery::default()
            })
            .len() as u64;
        assert!(dropped > 0, "a one-record queue overflows at once");
        assert_eq!(kept + dropped, sent, "every record is kept or counted");
    }

    #[test]
    fn an_off_journal_records_nothing() {
        let journal = Journal::off();
        let (ns, broker): (Arc<str>, Arc<str>) = ("default".into(), "default".into());
        journal.arrived(
            &ns,
            &broker,
            Arrival {
                at: now_millis(),
                sender: "t".into(),
                status: 202,
                error: None,
            },
            vec![event("1")].into(),
        );
        assert!(journal.trace("1").is_empty());
        assert!(journal.tap().is_none());
    }
}
