//! The `memory` backend: fast and not durable. Events live in per-subscription queues in this
//! process and are lost when it exits. Meant for tests and for brokers that trade durability
//! for speed.
//!
//! Every published event is wrapped in one `Arc<Envelope>` shared by all the queues it is
//! routed to, so fan-out copies no data. A new [`Channel::consume`] on a subscription takes over
//! from the previous consumer (whose `receive` then returns [`ChannelError::Closed`]) and gets
//! the events that were handed out and never acknowledged again, ahead of the rest.

use std::collections::{BTreeMap, HashMap};
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
        open: open_memory,
    }
}

fn open_memory(_config: ChannelConfig) -> OpenChannel {
    Box::pin(async { Ok(Arc::new(MemoryChannel::new()) as Arc<dyn Channel>) })
}

/// Locks a mutex; a panic elsewhere while holding it leaves plain data behind that is still
/// consistent enough for a non-durable queue, so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A non-durable channel held in memory.
#[derive(Default)]
pub struct MemoryChannel {
    registry: Mutex<Registry>,
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
    pending: BTreeMap<u64, Arc<Envelope>>,
    /// Events handed out and not acknowledged.
    in_flight: BTreeMap<u64, Arc<Envelope>>,
    /// 0 means no limit.
    max_in_flight: usize,
    /// Incremented by each `consume`; only the consumer holding the current value receives.
    consumer_generation: u64,
    closed: bool,
}

impl MemoryChannel {
    /// An empty channel without subscriptions.
    pub fn new() -> Self {
        Self::default()
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
        let mut next_seq = registry.next_seq;
        // Grouped per subscription so each queue is locked once per call.
        let mut routed: HashMap<&str, Vec<(u64, Arc<Envelope>)>> = HashMap::new();
        for envelope in events {
            let targets = registry.index.route(&envelope);
            if targets.is_empty() {
                continue;
            }
            let seq = next_seq;
            next_seq += 1;
            let envelope = Arc::new(envelope);
            for target in targets {
                routed
                    .entry(target)
                    .or_default()
                    .push((seq, Arc::clone(&envelope)));
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
                    let Some((id, envelope)) = queue.pending.pop_first() else {
                        break;
                    };
                    queue.in_flight.insert(id, Arc::clone(&envelope));
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
