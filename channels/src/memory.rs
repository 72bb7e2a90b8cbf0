//! The `memory` backend: fast and not durable. Events live in per-subscription queues in this
//! process and are lost when it exits. Meant for tests and for brokers that trade durability
//! for speed.
//!
//! Every published event is wrapped in one `Arc<Envelope>` shared by all the queues it is
//! routed to, so fan-out copies no data. A new [`Channel::consume`] on a subscription takes over
//! from the previous consumer (whose `receive` then returns [`ChannelError::Closed`]) and gets
//! the events that were handed out and never acknowledged again, ahead of the rest.
//!
//! The channel is bounded in bytes (`maxBytes` in the broker's config, default
//! [`DEFAULT_MAX_BYTES`]). An event counts against the bound from its publication until every
//! subscription it was routed to has acknowledged it (or was deleted): one hung subscriber
//! holds the space of everything queued for it. Publishing past the bound fails with
//! [`ChannelError::Full`] and stores nothing of the batch.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::routing::RoutingIndex;
use crate::{
    Backend, Channel, ChannelConfig, ChannelError, Envelope, OpenChannel, Received, Subscription,
    SubscriptionSpec,
};

inventory::submit! {
    Backend {
        name: "memory",
        durable: false,
        broker_class: None,
        channel_kind: Some("InMemoryChannel"),
        open: open_memory,
    }
}

/// The byte bound of a memory channel whose config sets no `maxBytes`.
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;
/// The settings key of the byte bound.
pub const MAX_BYTES_KEY: &str = "maxBytes";
/// What an event costs besides its attribute and data bytes: the envelope, the `Arc`, the
/// vectors and one queue entry per subscription, roughly. Keeps a flood of tiny events
/// from slipping past the bound.
const EVENT_OVERHEAD: u64 = 256;

fn open_memory(config: ChannelConfig) -> OpenChannel {
    Box::pin(async move {
        let max_bytes = match config.settings.get(MAX_BYTES_KEY) {
            None => DEFAULT_MAX_BYTES,
            Some(text) => crate::parse_size(text)
                .filter(|n| *n > 0)
                .map(|n| n as u64)
                .ok_or_else(|| {
                    ChannelError::Config(format!(
                        "{MAX_BYTES_KEY} {text:?} of the memory channel is not a size; expected bytes such as 268435456, 256Mi or 1G"
                    ))
                })?,
        };
        Ok(Arc::new(MemoryChannel::with_max_bytes(max_bytes)) as Arc<dyn Channel>)
    })
}

/// The channel's byte budget, shared by every stored event's [`Charge`].
struct Budget {
    used: AtomicU64,
    max: u64,
}

/// The bytes one stored event holds; given back when the last queue lets the event go.
struct Charge {
    bytes: u64,
    budget: Arc<Budget>,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// An event as the queues hold it: shared by every subscription it was routed to.
struct Stored {
    envelope: Arc<Envelope>,
    _charge: Charge,
}

/// The bytes an event is charged for.
fn size_of(envelope: &Envelope) -> u64 {
    let attributes: usize = envelope
        .attributes
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .sum();
    let data = envelope.data.as_ref().map_or(0, |d| d.len());
    (attributes + data) as u64 + EVENT_OVERHEAD
}

/// Locks a mutex; a panic elsewhere while holding it leaves plain data behind that is still
/// consistent enough for a non-durable queue, so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A non-durable channel held in memory, bounded in bytes.
pub struct MemoryChannel {
    registry: Mutex<Registry>,
    budget: Arc<Budget>,
}

impl Default for MemoryChannel {
    fn default() -> Self {
        Self::with_max_bytes(DEFAULT_MAX_BYTES)
    }
}

#[derive(Default)]
struct Registry {
    index: RoutingIndex,
    subscriptions: HashMap<String, Arc<SubscriptionState>>,
    /// Sequence number of the next published event; ids handed to consumers.
    next_seq: u64,
    destroyed: bool,
}

#[derive(Default)]
struct SubscriptionState {
    queue: Mutex<Queue>,
    /// Woken on new events, acknowledgements (room under `max_in_flight`), take-over by a
    /// new consumer and deletion.
    changed: Notify,
}

#[derive(Default)]
struct Queue {
    /// Events not handed out yet (or handed out again), by sequence number.
    pending: BTreeMap<u64, Arc<Stored>>,
    /// Events handed out and not acknowledged.
    in_flight: BTreeMap<u64, Arc<Stored>>,
    /// 0 means no limit.
    max_in_flight: usize,
    /// Incremented by each `consume`; only the consumer holding the current value receives.
    consumer_generation: u64,
    closed: bool,
}

impl MemoryChannel {
    /// An empty channel without subscriptions, bounded by [`DEFAULT_MAX_BYTES`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty channel that holds at most `max_bytes` of events.
    pub fn with_max_bytes(max_bytes: u64) -> Self {
        Self {
            registry: Mutex::default(),
            budget: Arc::new(Budget {
                used: AtomicU64::new(0),
                max: max_bytes,
            }),
        }
    }

    /// Bytes held by events not yet acknowledged by every subscription they were routed to.
    pub fn used_bytes(&self) -> u64 {
        self.budget.used.load(Ordering::SeqCst)
    }

    /// Reserves `bytes` for a batch, or says why not. A batch is taken into an empty channel
    /// even when larger than the bound, so an event bigger than the bound cannot be refused
    /// for ever; ingress's body limit bounds it.
    fn reserve(&self, bytes: u64) -> Result<(), ChannelError> {
        let max = self.budget.max;
        self.budget
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                (used == 0 || used.saturating_add(bytes) <= max).then(|| used + bytes)
            })
            .map(drop)
            .map_err(|used| {
                ChannelError::Full(format!(
                    "the memory channel holds {used} of its {max} bytes, waiting for subscribers to acknowledge; {bytes} more do not fit"
                ))
            })
    }

    fn registry(&self) -> Result<MutexGuard<'_, Registry>, ChannelError> {
        let registry = lock(&self.registry);
        if registry.destroyed {
            return Err(ChannelError::Closed);
        }
        Ok(registry)
    }
}

#[async_trait]
impl Channel for MemoryChannel {
    async fn publish(&self, events: Vec<Envelope>) -> Result<(), ChannelError> {
        let mut registry = self.registry()?;
        let registry = &mut *registry;
        // Events no subscription wants are not stored and cost nothing.
        let wanted: Vec<(Envelope, Vec<&str>)> = events
            .into_iter()
            .map(|envelope| {
                let targets = registry.index.route(&envelope);
                (envelope, targets)
            })
            .filter(|(_, targets)| !targets.is_empty())
            .collect();
        let sizes: Vec<u64> = wanted.iter().map(|(e, _)| size_of(e)).collect();
        // All or nothing: a refused batch leaves no event behind.
        self.reserve(sizes.iter().sum())?;
        let mut next_seq = registry.next_seq;
        // Grouped per subscription so each queue is locked once per call.
        let mut routed: HashMap<&str, Vec<(u64, Arc<Stored>)>> = HashMap::new();
        for ((envelope, targets), bytes) in wanted.into_iter().zip(sizes) {
            let seq = next_seq;
            next_seq += 1;
            let stored = Arc::new(Stored {
                envelope: Arc::new(envelope),
                _charge: Charge {
                    bytes,
                    budget: Arc::clone(&self.budget),
                },
            });
            for target in targets {
                routed
                    .entry(target)
                    .or_default()
                    .push((seq, Arc::clone(&stored)));
            }
        }
        for (name, entries) in routed {
            let Some(state) = registry.subscriptions.get(name) else {
                continue;
            };
            lock(&state.queue).pending.extend(entries);
            state.changed.notify_waiters();
        }
        registry.next_seq = next_seq;
        Ok(())
    }

    async fn ensure_subscription(
        &self,
        name: &str,
        spec: &SubscriptionSpec,
    ) -> Result<(), ChannelError> {
        let mut registry = self.registry()?;
        registry.index.insert(name, spec.prefilter.clone());
        let state = registry.subscriptions.entry(name.to_owned()).or_default();
        lock(&state.queue).max_in_flight = spec.max_in_flight;
        // A raised limit may let a waiting consumer go on.
        state.changed.notify_waiters();
        Ok(())
    }

    async fn consume(&self, name: &str) -> Result<Arc<dyn Subscription>, ChannelError> {
        let registry = self.registry()?;
        let state = registry
            .subscriptions
            .get(name)
            .ok_or_else(|| ChannelError::UnknownSubscription(name.to_owned()))?;
        let generation = {
            let mut queue = lock(&state.queue);
            let mut unacknowledged = std::mem::take(&mut queue.in_flight);
            queue.pending.append(&mut unacknowledged);
            queue.consumer_generation += 1;
            queue.consumer_generation
        };
        // The previous consumer, if waiting, learns it was replaced.
        state.changed.notify_waiters();
        Ok(Arc::new(MemorySubscription {
            state: Arc::clone(state),
            generation,
        }))
    }

    async fn backlog(&self, name: &str) -> Result<Option<u64>, ChannelError> {
        let registry = self.registry()?;
        let state = registry
            .subscriptions
            .get(name)
            .ok_or_else(|| ChannelError::UnknownSubscription(name.to_owned()))?;
        let queue = lock(&state.queue);
        Ok(Some((queue.pending.len() + queue.in_flight.len()) as u64))
    }

    async fn delete_subscription(&self, name: &str) -> Result<(), ChannelError> {
        let mut registry = self.registry()?;
        registry.index.remove(name);
        if let Some(state) = registry.subscriptions.remove(name) {
            close(&state);
        }
        Ok(())
    }

    async fn destroy(&self) -> Result<(), ChannelError> {
        let mut registry = lock(&self.registry);
        registry.destroyed = true;
        registry.index = RoutingIndex::new();
        for (_, state) in registry.subscriptions.drain() {
            close(&state);
        }
        Ok(())
    }

    async fn ready(&self) -> Result<(), ChannelError> {
        self.registry().map(drop)
    }
}

fn close(state: &SubscriptionState) {
    {
        let mut queue = lock(&state.queue);
        queue.closed = true;
        queue.pending.clear();
        queue.in_flight.clear();
    }
    state.changed.notify_waiters();
}

struct MemorySubscription {
    state: Arc<SubscriptionState>,
    generation: u64,
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn receive(&self, max: usize) -> Result<Vec<Received>, ChannelError> {
        loop {
            // Registered before looking at the queue so a wake-up in between is not lost.
            let changed = self.state.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut queue = lock(&self.state.queue);
                if queue.closed || queue.consumer_generation != self.generation {
                    return Err(ChannelError::Closed);
                }
                if max == 0 {
                    return Ok(Vec::new());
                }
                let room = match queue.max_in_flight {
                    0 => max,
                    limit => max.min(limit.saturating_sub(queue.in_flight.len())),
                };
                let mut batch = Vec::new();
                while batch.len() < room {
                    let Some((id, stored)) = queue.pending.pop_first() else {
                        break;
                    };
                    let envelope = Arc::clone(&stored.envelope);
                    queue.in_flight.insert(id, stored);
                    batch.push(Received {
                        id,
                        envelope,
                        redelivered: false,
                    });
                }
                if !batch.is_empty() {
                    return Ok(batch);
                }
            }
            changed.await;
        }
    }

    async fn ack(&self, id: u64) -> Result<(), ChannelError> {
        let removed = {
            let mut queue = lock(&self.state.queue);
            if queue.closed {
                return Err(ChannelError::Closed);
            }
            // A replaced consumer's late ack finds its event back in `pending`; it is done all
            // the same. Unknown ids (a repeated ack) change nothing.
            queue.in_flight.remove(&id).is_some() || queue.pending.remove(&id).is_some()
        };
        if removed {
            self.state.changed.notify_waiters();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Prefilter;

    fn event(id: &str) -> Envelope {
        Envelope {
            attributes: vec![("id".into(), id.into()), ("type".into(), "t".into())],
            data: Some(bytes::Bytes::from(id.to_owned())),
            typed: Vec::new(),
        }
    }

    #[tokio::test]
    async fn fan_out_shares_one_allocation() {
        let channel = MemoryChannel::new();
        let spec = SubscriptionSpec {
            prefilter: Prefilter::all(),
            max_in_flight: 0,
            one_per_partition: false,
        };
        channel.ensure_subscription("a", &spec).await.unwrap();
        channel.ensure_subscription("b", &spec).await.unwrap();
        channel.publish(vec![event("1")]).await.unwrap();
        let a = channel
            .consume("a")
            .await
            .unwrap()
            .receive(1)
            .await
            .unwrap();
        let b = channel
            .consume("b")
            .await
            .unwrap()
            .receive(1)
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&a[0].envelope, &b[0].envelope));
    }

    #[tokio::test]
    async fn replaced_consumer_is_closed_and_its_ack_still_counts() {
        let channel = MemoryChannel::new();
        channel
            .ensure_subscription("s", &SubscriptionSpec::default())
            .await
            .unwrap();
        channel.publish(vec![event("1"), event("2")]).await.unwrap();
        let first = channel.consume("s").await.unwrap();
        let got = first.receive(2).await.unwrap();
        let second = channel.consume("s").await.unwrap();
        assert!(matches!(first.receive(1).await, Err(ChannelError::Closed)));
        first.ack(got[0].id).await.unwrap();
        let again = second.receive(10).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].envelope.attribute("id"), Some("2"));
    }

    fn all_events() -> SubscriptionSpec {
        SubscriptionSpec {
            prefilter: Prefilter::all(),
            max_in_flight: 0,
            one_per_partition: false,
        }
    }

    #[tokio::test]
    async fn space_frees_only_once_every_subscription_acknowledged() {
        let one = size_of(&event("1"));
        let channel = MemoryChannel::with_max_bytes(3 * one);
        channel
            .ensure_subscription("fast", &all_events())
            .await
            .unwrap();
        channel
            .ensure_subscription("hung", &all_events())
            .await
            .unwrap();
        channel
            .publish(vec![event("1"), event("2"), event("3")])
            .await
            .unwrap();
        assert_eq!(channel.used_bytes(), 3 * one, "fan-out is charged once");
        let refused = channel.publish(vec![event("4")]).await;
        assert!(matches!(refused, Err(ChannelError::Full(_))), "{refused:?}");

        let fast = channel.consume("fast").await.unwrap();
        for received in fast.receive(3).await.unwrap() {
            fast.ack(received.id).await.unwrap();
        }
        assert_eq!(
            channel.used_bytes(),
            3 * one,
            "the hung one still holds them"
        );
        assert!(matches!(
            channel.publish(vec![event("4")]).await,
            Err(ChannelError::Full(_))
        ));

        let hung = channel.consume("hung").await.unwrap();
        let first = hung.receive(1).await.unwrap();
        hung.ack(first[0].id).await.unwrap();
        assert_eq!(channel.used_bytes(), 2 * one);
        channel.publish(vec![event("4")]).await.unwrap();
        let rest: Vec<_> = hung.receive(10).await.unwrap();
        assert_eq!(
            rest.len(),
            3,
            "nothing refused was stored, nothing taken was lost"
        );
    }

    #[tokio::test]
    async fn a_refused_batch_stores_nothing_and_deletion_frees_space() {
        let one = size_of(&event("1"));
        let channel = MemoryChannel::with_max_bytes(2 * one);
        channel
            .ensure_subscription("s", &all_events())
            .await
            .unwrap();
        channel.publish(vec![event("1")]).await.unwrap();
        assert!(matches!(
            channel.publish(vec![event("2"), event("3")]).await,
            Err(ChannelError::Full(_))
        ));
        assert_eq!(channel.used_bytes(), one);
        channel.delete_subscription("s").await.unwrap();
        assert_eq!(channel.used_bytes(), 0);
        // Unrouted events take no space.
        channel
            .publish((0..10).map(|n| event(&n.to_string())).collect())
            .await
            .unwrap();
        assert_eq!(channel.used_bytes(), 0);
    }

    #[tokio::test]
    async fn an_event_larger_than_the_bound_still_enters_an_empty_channel() {
        let channel = MemoryChannel::with_max_bytes(16);
        channel
            .ensure_subscription("s", &all_events())
            .await
            .unwrap();
        channel.publish(vec![event("big")]).await.unwrap();
        assert!(matches!(
            channel.publish(vec![event("next")]).await,
            Err(ChannelError::Full(_))
        ));
    }

    #[tokio::test]
    async fn max_bytes_comes_from_the_config() {
        let config = |value: &str| ChannelConfig {
            namespace: "ns".into(),
            broker: "b".into(),
            data_dir: std::env::temp_dir(),
            settings: [(MAX_BYTES_KEY.to_owned(), value.to_owned())].into(),
        };
        assert!(matches!(
            open_memory(config("lots")).await,
            Err(ChannelError::Config(message)) if message.contains("maxBytes")
        ));
        assert!(open_memory(config("0")).await.is_err());
        let channel = open_memory(config("1Ki")).await.unwrap();
        channel
            .ensure_subscription("s", &all_events())
            .await
            .unwrap();
        let big = |id: &str| Envelope {
            data: Some(bytes::Bytes::from(vec![b'x'; 600])),
            ..event(id)
        };
        channel.publish(vec![big("1")]).await.unwrap();
        assert!(matches!(
            channel.publish(vec![big("2")]).await,
            Err(ChannelError::Full(_))
        ));
    }

    #[tokio::test]
    async fn destroyed_channel_refuses_work() {
        let channel = MemoryChannel::new();
        channel.destroy().await.unwrap();
        assert!(matches!(
            channel.publish(vec![event("1")]).await,
            Err(ChannelError::Closed)
        ));
        assert!(channel.ready().await.is_err());
    }
}
