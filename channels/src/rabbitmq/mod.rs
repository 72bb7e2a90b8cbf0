//! The `rabbitmq` backend: a broker's events in RabbitMQ, through lapin.
//!
//! Layout: one durable headers exchange per broker, `rivulet.{namespace}.{broker}`, and one
//! durable queue per subscription (trigger), `rivulet.{namespace}.{broker}.{subscription}`,
//! bound to it with `x-match: all` and the subscription's exact prefilter as header matches,
//! so RabbitMQ drops events a trigger cannot want before they reach the dispatcher (names over
//! 255 bytes are cut and end in a hash of the full name). Events are persistent messages in
//! the CloudEvents AMQP binary mode ([`amqp`]).
//!
//! Settings (the broker's `spec.config` data): `uri` (required, an AMQP URI) and `queueType`
//! (`classic`, the default, or `quorum`).
//!
//! `publish` returns once RabbitMQ confirmed every message (publisher confirms); a negative
//! or missing confirm is [`ChannelError::Unavailable`]. A consumer takes its queue with
//! `basic.qos(prefetch = max_in_flight)` and acknowledges a message only when told to; the
//! ids it hands out stand for delivery tags on its current AMQP channel. When the connection
//! breaks, the consumer reconnects with back-off by itself; the tags of the lost channel are
//! void then (RabbitMQ delivers those messages again) and acknowledging them does nothing.
//! A new `consume` of the same subscription takes over: the previous consumer's channel is
//! closed, so what it held goes back to the queue, and its `receive` returns
//! [`ChannelError::Closed`].
//!
//! Prefilter changes: binding anew happens at `ensure_subscription`; the binding it replaces is
//! removed when this process made it. A binding left from before a restart stays, which only
//! lets more events through (the dispatcher filters them out). `destroy` deletes the exchange
//! and the queues of the subscriptions this channel knows (every trigger's, since the trigger
//! reconciler ensures each one at start).

pub mod amqp;
pub mod link;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, Confirmation, ExchangeKind};
use tokio::sync::Notify;

pub use lapin;
pub use link::Link;

use crate::{
    Backend, Channel, ChannelConfig, ChannelError, Envelope, Received, Subscription,
    SubscriptionSpec,
};
use link::{is_not_found, is_precondition_failed, unavailable};

inventory::submit! {
    Backend {
        name: "rabbitmq",
        durable: true,
        broker_class: Some("RabbitMQBroker"),
        channel_kind: None,
        open: |config| crate::opened(async move { RabbitChannel::open(&config).await }),
    }
}

/// An existing queue as RabbitMQ reports it (its ready messages and consumers), by a passive
/// declare; an error, which closes `channel`, when the queue does not exist.
pub async fn inspect_queue(
    channel: &lapin::Channel,
    queue: &str,
) -> Result<lapin::Queue, lapin::Error> {
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
}

/// The URI of a RabbitMQ on this host with its default user, for tests and examples.
pub const DEFAULT_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// How long a publish waits for RabbitMQ's confirms (a blocked connection, say, when RabbitMQ
/// is out of memory or disk) before answering unavailable.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an acknowledgement may take to be written. `basic.ack` has no answer; one that
/// cannot be written within this (its connection died under it and the write never ends) is
/// lost, and RabbitMQ delivers the message again, as for any unacknowledged delivery.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest AMQP name (a short string).
const MAX_NAME: usize = 255;

/// Which kind of queue subscriptions get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    #[default]
    Classic,
    Quorum,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// The backend's settings, from the broker's `spec.config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RabbitSettings {
    pub uri: String,
    pub queue_type: QueueType,
}

impl RabbitSettings {
    pub fn from_settings(settings: &BTreeMap<String, String>) -> Result<Self, ChannelError> {
        let uri = settings
            .get("uri")
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                ChannelError::Config(
                    "the RabbitMQ broker config has no key \"uri\" (an AMQP URI such as amqp://user:password@host:5672/%2f)".into(),
                )
            })?;
        link::check_uri(&uri)?;
        let queue_type = match settings.get("queueType").map(|q| q.trim()) {
            None | Some("") | Some("classic") => QueueType::Classic,
            Some("quorum") => QueueType::Quorum,
            Some(other) => {
                return Err(ChannelError::Config(format!(
                    "queueType {other:?} is not known; use classic or quorum"
                )));
            }
        };
        Ok(Self { uri, queue_type })
    }
}

/// The exchange of a broker.
pub fn exchange_name(namespace: &str, broker: &str) -> String {
    bounded_name(format!("rivulet.{namespace}.{broker}"))
}

/// The queue of a subscription.
pub fn queue_name(namespace: &str, broker: &str, subscription: &str) -> String {
    bounded_name(format!("rivulet.{namespace}.{broker}.{subscription}"))
}

/// `name` if it fits an AMQP name, else its start and a hash of the whole.
fn bounded_name(name: String) -> String {
    if name.len() <= MAX_NAME {
        return name;
    }
    // FNV-1a: stable across builds, unlike std's hasher.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut cut = MAX_NAME - 17;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}.{hash:016x}", &name[..cut])
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Ends one consumer: its `receive` returns `Closed` and its AMQP channel is closed.
#[derive(Default)]
struct ConsumerControl {
    closed: AtomicBool,
    changed: Notify,
    /// The consumer's current AMQP channel.
    channel: Mutex<Option<lapin::Channel>>,
    /// Events handed out and not acknowledged: RabbitMQ's message count leaves them out.
    held: AtomicUsize,
}

impl ConsumerControl {
    async fn close(&self, why: &str) {
        self.closed.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
        let channel = lock(&self.channel).take();
        if let Some(channel) = channel
            && channel.status().connected()
        {
            // Closing returns what the consumer held to the queue right away.
            let _ = channel.close(200, why.into()).await;
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Resolves once the consumer is closed.
    async fn closed(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_closed() {
                return;
            }
            changed.await;
        }
    }
}

/// What the channel knows about one subscription.
#[derive(Default)]
struct KnownSubscription {
    /// The binding arguments this process made, to remove them when the prefilter changes.
    binding: Option<FieldTable>,
    max_in_flight: usize,
    consumer: Option<Arc<ConsumerControl>>,
}

struct Shared {
    link: Link,
    settings: RabbitSettings,
    namespace: String,
    broker: String,
    exchange: String,
    publisher: tokio::sync::Mutex<Option<lapin::Channel>>,
    subscriptions: Mutex<HashMap<String, KnownSubscription>>,
    destroyed: AtomicBool,
}

impl Shared {
    fn check_open(&self) -> Result<(), ChannelError> {
        if self.destroyed.load(Ordering::SeqCst) {
            return Err(ChannelError::Closed);
        }
        Ok(())
    }

    fn queue(&self, subscription: &str) -> String {
        queue_name(&self.namespace, &self.broker, subscription)
    }

    /// The channel publishes go through, in confirm mode; made again when it broke.
    async fn publisher(&self) -> Result<lapin::Channel, ChannelError> {
        let mut slot = self.publisher.lock().await;
        if let Some(channel) = &*slot
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        *slot = None;
        let channel = self.link.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| unavailable("confirm.select", e))?;
        *slot = Some(channel.clone());
        Ok(channel)
    }

    async fn declare_exchange(&self) -> Result<(), ChannelError> {
        let channel = self.link.channel().await?;
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Headers,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                if is_precondition_failed(&e) {
                    ChannelError::Config(format!(
                        "exchange {} exists in RabbitMQ with other settings than a durable headers exchange: {e}",
                        self.exchange
                    ))
                } else {
                    unavailable("exchange.declare", e)
                }
            })?;
        let _ = channel.close(200, "done".into()).await;
        Ok(())
    }

    /// Whether the queue of `subscription` exists.
    async fn queue_exists(&self, queue: &str) -> Result<bool, ChannelError> {
        Ok(self.queue_message_count(queue).await?.is_some())
    }

    /// The messages ready in a queue (not those delivered and unacknowledged), or `None`
    /// when it does not exist: a passive declare, on a channel of its own since RabbitMQ
    /// closes the channel when the queue does not exist.
    async fn queue_message_count(&self, queue: &str) -> Result<Option<u32>, ChannelError> {
        let channel = self.link.channel().await?;
        match inspect_queue(&channel, queue).await {
            Ok(declared) => {
                let _ = channel.close(200, "done".into()).await;
                Ok(Some(declared.message_count()))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(unavailable("queue.declare", e)),
        }
    }

    async fn delete_queue(&self, queue: &str) -> Result<(), ChannelError> {
        let channel = self.link.channel().await?;
        match channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
        {
            Ok(_) => {
                let _ = channel.close(200, "done".into()).await;
                Ok(())
            }
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(unavailable("queue.delete", e)),
        }
    }
}

/// A broker's channel in RabbitMQ.
pub struct RabbitChannel {
    shared: Arc<Shared>,
}

impl RabbitChannel {
    /// Connects and declares the broker's exchange.
    pub async fn open(config: &ChannelConfig) -> Result<Self, ChannelError> {
        let settings = RabbitSettings::from_settings(&config.settings)?;
        let exchange = exchange_name(&config.namespace, &config.broker);
        let shared = Arc::new(Shared {
            link: Link::new(
                settings.uri.clone(),
                format!("rivulet broker {}/{}", config.namespace, config.broker),
            ),
            settings,
            namespace: config.namespace.clone(),
            broker: config.broker.clone(),
            exchange,
            publisher: tokio::sync::Mutex::new(None),
            subscriptions: Mutex::new(HashMap::new()),
            destroyed: AtomicBool::new(false),
        });
        shared.declare_exchange().await?;
        Ok(Self { shared })
    }

    /// The exchange events are published to.
    pub fn exchange(&self) -> &str {
        &self.shared.exchange
    }
}

#[async_trait]
impl Channel for RabbitChannel {
    async fn publish(&self, events: Vec<Envelope>) -> Result<(), ChannelError> {
        self.shared.check_open()?;
        let messages = events
            .iter()
            .map(amqp::to_message)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ChannelError::Config(format!("event cannot travel over AMQP: {e}")))?;
        let channel = self.shared.publisher().await?;
        let mut confirms = Vec::with_capacity(messages.len());
        for (properties, body) in messages {
            let confirm = channel
                .basic_publish(
                    self.shared.exchange.as_str().into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await
                .map_err(|e| unavailable("publish", e))?;
            confirms.push(confirm);
        }
        let all = futures::future::join_all(confirms);
        let results = tokio::time::timeout(CONFIRM_TIMEOUT, all)
            .await
            .map_err(|_| {
                ChannelError::Unavailable(format!(
                    "RabbitMQ did not confirm the events within {CONFIRM_TIMEOUT:?}"
                ))
            })?;
        for result in results {
            match result.map_err(|e| unavailable("publisher confirm", e))? {
                Confirmation::Ack(_) => {}
                Confirmation::Nack(_) => {
                    return Err(ChannelError::Unavailable(
                        "RabbitMQ refused to store an event (negative confirm)".into(),
                    ));
                }
                Confirmation::NotRequested => {
                    return Err(ChannelError::Unavailable(
                        "RabbitMQ gave no confirm for an event".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    async fn ensure_subscription(
        &self,
        name: &str,
        spec: &SubscriptionSpec,
    ) -> Result<(), ChannelError> {
        self.shared.check_open()?;
        let queue = self.shared.queue(name);
        let binding = amqp::binding_arguments(&spec.prefilter.exact).map_err(|e| {
            ChannelError::Config(format!("prefilter of subscription {name:?}: {e}"))
        })?;
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(self.shared.settings.queue_type.as_str().into()),
        );
        let channel = self.shared.link.channel().await?;
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .map_err(|e| {
                if is_precondition_failed(&e) {
                    ChannelError::Config(format!(
                        "queue {queue} exists in RabbitMQ with other settings (queue type {}?): {e}",
                        self.shared.settings.queue_type.as_str()
                    ))
                } else {
                    unavailable("queue.declare", e)
                }
            })?;
        channel
            .queue_bind(
                queue.as_str().into(),
                self.shared.exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                binding.clone(),
            )
            .await
            .map_err(|e| unavailable("queue.bind", e))?;
        let previous = lock(&self.shared.subscriptions)
            .get(name)
            .and_then(|known| known.binding.clone());
        if let Some(previous) = previous
            && previous != binding
        {
            channel
                .queue_unbind(
                    queue.as_str().into(),
                    self.shared.exchange.as_str().into(),
                    "".into(),
                    previous,
                )
                .await
                .map_err(|e| unavailable("queue.unbind", e))?;
        }
        let _ = channel.close(200, "done".into()).await;
        let mut subscriptions = lock(&self.shared.subscriptions);
        let known = subscriptions.entry(name.to_owned()).or_default();
        known.binding = Some(binding);
        known.max_in_flight = spec.max_in_flight;
        Ok(())
    }

    async fn consume(&self, name: &str) -> Result<Arc<dyn Subscription>, ChannelError> {
        self.shared.check_open()?;
        let queue = self.shared.queue(name);
        if !self.shared.queue_exists(&queue).await? {
            return Err(ChannelError::UnknownSubscription(name.to_owned()));
        }
        let control = Arc::new(ConsumerControl::default());
        let (previous, max_in_flight) = {
            let mut subscriptions = lock(&self.shared.subscriptions);
            let known = subscriptions.entry(name.to_owned()).or_default();
            (
                known.consumer.replace(Arc::clone(&control)),
                known.max_in_flight,
            )
        };
        if let Some(previous) = previous {
            previous.close("taken over by a new consumer").await;
        }
        Ok(Arc::new(RabbitSubscription {
            shared: Arc::clone(&self.shared),
            queue,
            prefetch: u16::try_from(max_in_flight).unwrap_or(u16::MAX),
            control,
            consumer: tokio::sync::Mutex::new(None),
            in_flight: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }))
    }

    async fn backlog(&self, name: &str) -> Result<Option<u64>, ChannelError> {
        self.shared.check_open()?;
        let queue = self.shared.queue(name);
        let Some(waiting) = self.shared.queue_message_count(&queue).await? else {
            return Err(ChannelError::UnknownSubscription(name.to_owned()));
        };
        let held = lock(&self.shared.subscriptions)
            .get(name)
            .and_then(|known| known.consumer.as_ref())
            .map_or(0, |consumer| consumer.held.load(Ordering::SeqCst));
        Ok(Some(u64::from(waiting) + held as u64))
    }

    async fn delete_subscription(&self, name: &str) -> Result<(), ChannelError> {
        self.shared.check_open()?;
        let known = lock(&self.shared.subscriptions).remove(name);
        if let Some(consumer) = known.and_then(|k| k.consumer) {
            consumer.close("subscription deleted").await;
        }
        self.shared.delete_queue(&self.shared.queue(name)).await
    }

    async fn destroy(&self) -> Result<(), ChannelError> {
        self.shared.destroyed.store(true, Ordering::SeqCst);
        let known: Vec<(String, KnownSubscription)> =
            lock(&self.shared.subscriptions).drain().collect();
        for (name, subscription) in known {
            if let Some(consumer) = subscription.consumer {
                consumer.close("broker deleted").await;
            }
            self.shared.delete_queue(&self.shared.queue(&name)).await?;
        }
        let channel = self.shared.link.channel().await?;
        match channel
            .exchange_delete(
                self.shared.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await
        {
            Ok(()) => {
                let _ = channel.close(200, "done".into()).await;
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(unavailable("exchange.delete", e)),
        }
        *self.shared.publisher.lock().await = None;
        self.shared.link.close().await;
        Ok(())
    }

    async fn ready(&self) -> Result<(), ChannelError> {
        self.shared.check_open()?;
        self.shared.link.connection().await.map(|_| ())
    }
}

/// One consumer of a subscription's queue.
struct RabbitSubscription {
    shared: Arc<Shared>,
    queue: String,
    /// `basic.qos` prefetch; 0 is no limit.
    prefetch: u16,
    control: Arc<ConsumerControl>,
    /// The AMQP consumer, started on the first `receive` and again after a reconnect.
    consumer: tokio::sync::Mutex<Option<lapin::Consumer>>,
    /// Handed-out ids to their deliveries' ackers on the current AMQP channel.
    in_flight: Mutex<HashMap<u64, Acker>>,
    next_id: AtomicU64,
}

/// What waiting for the next delivery gave.
enum Next {
    Delivery(Box<lapin::message::Delivery>),
    /// The connection or channel broke: start over.
    Broken(String),
    /// RabbitMQ ended the consumer (its queue was deleted, or the channel closed).
    Ended,
    Closed,
}

impl RabbitSubscription {
    /// Starts consuming on a new AMQP channel. `Ok(None)` when the queue no longer exists.
    async fn start(&self) -> Result<Option<lapin::Consumer>, ChannelError> {
        let channel = self.shared.link.channel().await?;
        // Deliveries of an earlier channel are void now: RabbitMQ delivers them again.
        lock(&self.in_flight).clear();
        self.control.held.store(0, Ordering::SeqCst);
        *lock(&self.control.channel) = Some(channel.clone());
        if self.control.is_closed() {
            let _ = channel.close(200, "closed".into()).await;
            return Err(ChannelError::Closed);
        }
        match link::consume(&channel, &self.queue, self.prefetch).await {
            Ok(consumer) => Ok(Some(consumer)),
            Err(("basic.consume", e)) if is_not_found(&e) => Ok(None),
            Err((step, e)) => Err(unavailable(step, e)),
        }
    }

    async fn next(&self, consumer: &mut lapin::Consumer) -> Next {
        tokio::select! {
            _ = self.control.closed() => Next::Closed,
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => Next::Delivery(Box::new(delivery)),
                Some(Err(error)) => Next::Broken(error.to_string()),
                None => Next::Ended,
            },
        }
    }

    /// Turns a delivery into a handed-out event; `None` for a message that is no CloudEvent
    /// (acknowledged and dropped, since nobody could ever deliver it).
    async fn hand_out(&self, delivery: lapin::message::Delivery) -> Option<Received> {
        match amqp::from_message(&delivery.properties, &delivery.data) {
            Ok(Some(envelope)) => {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                lock(&self.in_flight).insert(id, delivery.acker);
                self.control.held.fetch_add(1, Ordering::SeqCst);
                Some(Received {
                    id,
                    envelope: Arc::new(envelope),
                    redelivered: delivery.redelivered,
                })
            }
            outcome => {
                let why = match outcome {
                    Err(e) => e.to_string(),
                    _ => "no CloudEvent attributes".into(),
                };
                tracing::error!(queue = %self.queue, %why, "dropping a message that is not a readable CloudEvent");
                let _ = delivery
                    .acker
                    .ack(lapin::options::BasicAckOptions::default())
                    .await;
                None
            }
        }
    }
}

#[async_trait]
impl Subscription for RabbitSubscription {
    async fn receive(&self, max: usize) -> Result<Vec<Received>, ChannelError> {
        let mut slot = self.consumer.lock().await;
        loop {
            if self.control.is_closed() || self.shared.destroyed.load(Ordering::SeqCst) {
                return Err(ChannelError::Closed);
            }
            if max == 0 {
                return Ok(Vec::new());
            }
            let consumer = match &mut *slot {
                Some(consumer) => consumer,
                None => match self.start().await {
                    Ok(Some(consumer)) => slot.insert(consumer),
                    Ok(None) => return Err(ChannelError::Closed),
                    Err(ChannelError::Closed) => return Err(ChannelError::Closed),
                    Err(error) => {
                        tracing::debug!(queue = %self.queue, %error, "cannot consume yet; retrying");
                        tokio::select! {
                            _ = self.control.closed() => return Err(ChannelError::Closed),
                            _ = self.shared.link.wait_for_connection() => {}
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            match self.next(consumer).await {
                Next::Closed => return Err(ChannelError::Closed),
                Next::Broken(error) => {
                    tracing::warn!(queue = %self.queue, %error, "consumer lost; consuming again");
                    *slot = None;
                }
                Next::Ended => {
                    *slot = None;
                    // Deleted queue, or a channel that went away with its connection.
                    if let Ok(false) = self.shared.queue_exists(&self.queue).await {
                        self.control.close("queue deleted").await;
                        return Err(ChannelError::Closed);
                    }
                }
                Next::Delivery(first) => {
                    let mut batch = Vec::with_capacity(max.min(64));
                    batch.extend(self.hand_out(*first).await);
                    while batch.len() < max {
                        match consumer.next().now_or_never() {
                            Some(Some(Ok(delivery))) => batch.extend(self.hand_out(delivery).await),
                            _ => break,
                        }
                    }
                    if !batch.is_empty() {
                        return Ok(batch);
                    }
                }
            }
        }
    }

    async fn ack(&self, id: u64) -> Result<(), ChannelError> {
        let Some(acker) = lock(&self.in_flight).remove(&id) else {
            // Unknown, repeated, or void after a reconnect: RabbitMQ redelivers the message.
            return Ok(());
        };
        self.control.held.fetch_sub(1, Ordering::SeqCst);
        let acked = tokio::time::timeout(
            ACK_TIMEOUT,
            acker.ack(lapin::options::BasicAckOptions::default()),
        )
        .await;
        match acked {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                tracing::debug!(queue = %self.queue, "acknowledgement of a delivery on a closed channel skipped; it will be redelivered")
            }
            Ok(Err(error)) => {
                tracing::debug!(queue = %self.queue, %error, "acknowledgement lost with its channel; the event will be redelivered")
            }
            Err(_) => {
                tracing::debug!(queue = %self.queue, "acknowledgement not written within {ACK_TIMEOUT:?} (its connection is gone); the event will be redelivered")
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_amqp_limits() {
        assert_eq!(exchange_name("ns", "b"), "rivulet.ns.b");
        assert_eq!(queue_name("ns", "b", "trigger-t"), "rivulet.ns.b.trigger-t");
        let long = queue_name("ns", &"b".repeat(253), &"t".repeat(253));
        assert_eq!(long.len(), MAX_NAME);
        let other = queue_name("ns", &"b".repeat(253), &format!("{}u", "t".repeat(252)));
        assert_ne!(long, other, "the hash tells long names apart");
    }

    #[test]
    fn settings_are_checked() {
        let settings = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let parsed =
            RabbitSettings::from_settings(&settings(&[("uri", "amqp://localhost:5672/%2f")]))
                .unwrap();
        assert_eq!(parsed.queue_type, QueueType::Classic);
        let quorum = RabbitSettings::from_settings(&settings(&[
            ("uri", "amqp://localhost"),
            ("queueType", "quorum"),
        ]))
        .unwrap();
        assert_eq!(quorum.queue_type, QueueType::Quorum);
        for bad in [
            settings(&[]),
            settings(&[("uri", "localhost")]),
            settings(&[("uri", "amqp://localhost"), ("queueType", "stream")]),
        ] {
            assert!(matches!(
                RabbitSettings::from_settings(&bad),
                Err(ChannelError::Config(_))
            ));
        }
    }
}
