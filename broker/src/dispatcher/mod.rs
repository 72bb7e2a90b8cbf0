//! One consumer per trigger: take events off the trigger's subscription, filter, deliver,
//! hand replies back to the broker, and acknowledge only once the outcome is final.
//!
//! Each trigger runs on its own task with its own bound on deliveries in flight, so a slow
//! or failing subscriber never holds up another trigger.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use rivulet_channels::{ChannelError, Received, Subscription};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::delivery::{DeliveryPolicy, Outcome, Sender};
use crate::ingress::{BROKER_TTL, Ingress, IngressError, ttl_of};
use crate::telemetry::{self, TriggerSpan};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::Histogram;
use rivulet_core::event::{Event, ExtensionValue};
use rivulet_core::filter::{self, Filter};
use rivulet_core::log_throttle::LogThrottle;
use rivulet_core::metrics::{
    DeliveryLabels, DroppedLabels, FilterErrorLabels, Metrics, ReceiveFailureLabels, ReplyLabels,
    TriggerLabels,
};

/// Everything one trigger's consumer needs; built by the trigger reconciler.
#[derive(Debug, Clone)]
pub struct TriggerDispatch {
    pub namespace: String,
    pub trigger: String,
    pub broker: String,
    pub subscriber_uri: String,
    /// PEM CA certificates to trust at an https subscriber (its `CACerts`).
    pub subscriber_ca_certs: Option<String>,
    pub filter: Filter,
    pub policy: DeliveryPolicy,
    /// One delivery at a time, in channel order (ordered mode on a channel without
    /// partitions; a partitioned channel keeps the order of each partition by itself).
    pub ordered: bool,
    /// Deliveries in flight at most (1 when ordered).
    pub parallelism: usize,
}

/// What dispatchers share: the HTTP sender, the ingress replies go back through, metrics.
#[derive(Clone)]
pub struct Shared {
    pub sender: Sender,
    pub ingress: Arc<Ingress>,
    pub metrics: Arc<Metrics>,
}

/// A trigger's metric handles, each looked up on its first use and kept: per event a lookup
/// would cost a map access, and creating them all up front would give ten thousand idle
/// triggers a histogram each (memory and scrape size) before any event flows, where Knative
/// shows a trigger's series once it has data.
struct TriggerMetrics {
    metrics: Arc<Metrics>,
    namespace: String,
    trigger: String,
    matched: OnceLock<Counter>,
    rejected: OnceLock<Counter>,
    retries: OnceLock<Counter>,
    redelivered: OnceLock<Counter>,
    latency: OnceLock<Histogram>,
    delivered: OnceLock<Counter>,
    dead_lettered: OnceLock<Counter>,
    failed: OnceLock<Counter>,
    ttl_dropped: OnceLock<Counter>,
    /// Whether a TTL drop was logged already: a loop logs once, not once per event.
    ttl_logged: AtomicBool,
    /// Acknowledgements fail for every event while the channel cannot write (a full disk).
    ack_failure_log: LogThrottle,
    /// Reads fail every 500 ms while the channel's backend is down.
    receive_failure_log: LogThrottle,
}

impl TriggerMetrics {
    fn new(metrics: &Arc<Metrics>, dispatch: &TriggerDispatch) -> Self {
        TriggerMetrics {
            metrics: metrics.clone(),
            namespace: dispatch.namespace.clone(),
            trigger: dispatch.trigger.clone(),
            matched: OnceLock::new(),
            rejected: OnceLock::new(),
            retries: OnceLock::new(),
            redelivered: OnceLock::new(),
            latency: OnceLock::new(),
            delivered: OnceLock::new(),
            dead_lettered: OnceLock::new(),
            failed: OnceLock::new(),
            ttl_dropped: OnceLock::new(),
            ttl_logged: AtomicBool::new(false),
            ack_failure_log: LogThrottle::default(),
            receive_failure_log: LogThrottle::default(),
        }
    }

    fn labels(&self) -> TriggerLabels {
        TriggerLabels {
            namespace: self.namespace.clone(),
            trigger: self.trigger.clone(),
        }
    }

    /// The trigger's series of `family`, made on first use and kept in `cell`.
    fn series<'a, M: Clone, C: MetricConstructor<M>>(
        &self,
        cell: &'a OnceLock<M>,
        family: &Family<TriggerLabels, M, C>,
    ) -> &'a M {
        cell.get_or_init(|| family.get_or_create_owned(&self.labels()))
    }

    fn matched(&self) -> &Counter {
        self.series(&self.matched, &self.metrics.filter_matched)
    }

    fn rejected(&self) -> &Counter {
        self.series(&self.rejected, &self.metrics.filter_rejected)
    }

    fn retries(&self) -> &Counter {
        self.series(&self.retries, &self.metrics.retries)
    }

    fn redelivered(&self) -> &Counter {
        self.series(&self.redelivered, &self.metrics.redelivered)
    }

    fn latency(&self) -> &Histogram {
        self.series(&self.latency, &self.metrics.delivery_latency)
    }

    fn ttl_dropped(&self) -> &Counter {
        self.ttl_dropped.get_or_init(|| self.dropped("ttl"))
    }

    /// The trigger's count of events dropped for `reason` (looked up each time: rare).
    fn dropped(&self, reason: &'static str) -> Counter {
        self.metrics
            .events_dropped
            .get_or_create(&DroppedLabels {
                namespace: self.namespace.clone(),
                trigger: self.trigger.clone(),
                reason,
            })
            .clone()
    }

    fn receive_failed(&self, error: &ChannelError) {
        self.metrics
            .receive_failures
            .get_or_create(&ReceiveFailureLabels {
                namespace: self.namespace.clone(),
                trigger: self.trigger.clone(),
                kind: error.kind(),
            })
            .inc();
    }

    fn outcome(&self, outcome: &Outcome) -> &Counter {
        let (cell, label) = match outcome {
            Outcome::Delivered { .. } => (&self.delivered, "delivered"),
            Outcome::DeadLettered { .. } => (&self.dead_lettered, "dead_lettered"),
            Outcome::Failed { .. } => (&self.failed, "failed"),
        };
        cell.get_or_init(|| {
            self.metrics
                .deliveries
                .get_or_create(&DeliveryLabels {
                    namespace: self.namespace.clone(),
                    trigger: self.trigger.clone(),
                    outcome: label,
                })
                .clone()
        })
    }
}

/// A running trigger consumer.
pub struct Running {
    stop: CancellationToken,
    /// Deliveries still going give up, unacknowledged (after a deletion's grace period).
    abandon: CancellationToken,
    tasks: TaskTracker,
    /// Events taken off the subscription and not acknowledged yet.
    unfinished: Arc<AtomicU64>,
    /// What the consumer was started with.
    pub dispatch: Arc<TriggerDispatch>,
}

/// What stopping a consumer for good left behind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stopped {
    /// Events the consumer held at the stop that were finished (delivered, dead-lettered or
    /// filtered out, then acknowledged) within the grace period.
    pub finished: u64,
    /// Events it held and gave up on unacknowledged; the subscription still has them.
    pub abandoned: u64,
}

impl Running {
    /// Stops taking new events, waits up to `grace` for deliveries in flight, then abandons
    /// the rest unacknowledged and waits for them to let go, so the subscription can be
    /// consumed by someone else right after. Says how many events ended which way.
    pub async fn stop_for_good(self, grace: Duration) -> Stopped {
        self.stop.cancel();
        self.tasks.close();
        let held = self.unfinished.load(Ordering::SeqCst);
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            self.abandon.cancel();
            self.tasks.wait().await;
        }
        let abandoned = self.unfinished.load(Ordering::SeqCst);
        Stopped {
            finished: held.saturating_sub(abandoned),
            abandoned,
        }
    }

    /// Stops taking new events and waits up to `grace` for deliveries in flight. What is
    /// still unfinished then stays unacknowledged and is delivered again later.
    pub async fn stop(self, grace: Duration) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::info!("deliveries still in flight at stop; they will be redelivered");
        }
    }
}

/// Starts consuming `subscription` for one trigger.
pub fn spawn(
    dispatch: TriggerDispatch,
    subscription: Arc<dyn Subscription>,
    shared: Shared,
) -> Running {
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let abandon = CancellationToken::new();
    let unfinished = Arc::new(AtomicU64::new(0));
    let metrics = Arc::new(TriggerMetrics::new(&shared.metrics, &dispatch));
    let dispatch = Arc::new(dispatch);
    tasks.spawn(consume(
        Consumer {
            dispatch: dispatch.clone(),
            metrics,
            subscription,
            shared,
            abandon: abandon.clone(),
            unfinished: unfinished.clone(),
        },
        stop.clone(),
    ));
    Running {
        stop,
        abandon,
        tasks,
        unfinished,
        dispatch,
    }
}

/// What each delivery of one trigger's consumer shares.
#[derive(Clone)]
struct Consumer {
    dispatch: Arc<TriggerDispatch>,
    metrics: Arc<TriggerMetrics>,
    subscription: Arc<dyn Subscription>,
    shared: Shared,
    abandon: CancellationToken,
    unfinished: Arc<AtomicU64>,
}

impl Consumer {
    /// Handles one event; it stays counted as unfinished when abandoned before its ack.
    async fn handle(&self, received: Received) {
        let finished = tokio::select! {
            () = handle(
                &self.dispatch,
                &self.metrics,
                &*self.subscription,
                &self.shared,
                received,
            ) => true,
            () = self.abandon.cancelled() => false,
        };
        if finished {
            self.unfinished.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Takes events off the subscription while there is room and drives their deliveries on
/// this one task: no task per event, and the subscription's read stays pending across
/// deliveries finishing (a read is not cancelled halfway, which some backends do not allow
/// without handing the events out again).
async fn consume(consumer: Consumer, stop: CancellationToken) {
    let (dispatch, subscription) = (consumer.dispatch.clone(), consumer.subscription.clone());
    let limit = if dispatch.ordered {
        1
    } else {
        dispatch.parallelism.max(1)
    };
    let mut in_flight = FuturesUnordered::new();
    let mut reading: Option<BoxFuture<'static, Result<Vec<Received>, ChannelError>>> = None;
    // After a failed read, the next one waits: the backend is likely down.
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let room = limit - in_flight.len();
        if reading.is_none() && room > 0 {
            let subscription = subscription.clone();
            let wait_until = retry_at.take();
            reading = Some(Box::pin(async move {
                if let Some(at) = wait_until {
                    tokio::time::sleep_until(at).await;
                }
                subscription.receive(room).await
            }));
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            read = async { reading.as_mut().expect("polled only when reading").await }, if reading.is_some() => {
                reading = None;
                match read {
                    Ok(batch) => {
                        consumer
                            .unfinished
                            .fetch_add(batch.len() as u64, Ordering::SeqCst);
                        for received in batch {
                            let consumer = consumer.clone();
                            in_flight.push(async move { consumer.handle(received).await });
                        }
                    }
                    Err(ChannelError::Closed) => break,
                    Err(error) => {
                        consumer.metrics.receive_failed(&error);
                        if let Some(suppressed) = consumer.metrics.receive_failure_log.allow() {
                            tracing::warn!(trigger = %dispatch.trigger, %error, suppressed, "receiving from the channel failed; retrying every 500 ms (suppressed: how many more failures since the last such line)");
                        }
                        retry_at = Some(tokio::time::Instant::now() + Duration::from_millis(500));
                    }
                }
            }
        }
    }
    // Stopped: nothing new is taken; what is in flight finishes, or gives up when abandoned.
    drop(reading);
    while in_flight.next().await.is_some() {}
}

/// Filters, delivers and acknowledges one event.
async fn handle(
    dispatch: &TriggerDispatch,
    metrics: &TriggerMetrics,
    subscription: &dyn Subscription,
    shared: &Shared,
    received: Received,
) {
    if received.redelivered {
        // At least once: the subscriber may see this event twice.
        metrics.redelivered().inc();
        tracing::debug!(trigger = %dispatch.trigger, "the channel handed an event out again");
    }
    let mut event = match Event::from_envelope(&received.envelope) {
        Ok(event) => event,
        Err(error) => {
            // Only ingress writes to channels, so this is corruption, not user input.
            tracing::error!(trigger = %dispatch.trigger, %error, "dropping an unreadable event from the channel");
            metrics.dropped("unreadable").inc();
            ack(dispatch, metrics, subscription, received.id).await;
            return;
        }
    };
    match dispatch.filter.evaluate(&event) {
        filter::Outcome::Match => {
            metrics.matched().inc();
        }
        filter::Outcome::NoMatch => {
            metrics.rejected().inc();
            ack(dispatch, metrics, subscription, received.id).await;
            return;
        }
        filter::Outcome::EvaluationError(kind) => {
            shared
                .metrics
                .filter_errors
                .get_or_create(&FilterErrorLabels {
                    namespace: dispatch.namespace.clone(),
                    trigger: dispatch.trigger.clone(),
                    kind,
                })
                .inc();
            metrics.rejected().inc();
            ack(dispatch, metrics, subscription, received.id).await;
            return;
        }
    }
    // Every delivery is a hop: it carries one less, so whatever brings the event back into a
    // broker (the subscriber being one, a sink and a source, a reply) brings the lower count.
    let ttl = ttl_of(&event) - 1;
    if ttl <= 0 {
        metrics.ttl_dropped().inc();
        if !metrics.ttl_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                namespace = %dispatch.namespace,
                trigger = %dispatch.trigger,
                id = %event.id,
                source = %event.source,
                "event dropped: its broker TTL is exhausted (an event loop?); further drops by this trigger are only counted in rivulet_events_dropped_total"
            );
        } else {
            tracing::debug!(trigger = %dispatch.trigger, id = %event.id, "event dropped: broker TTL exhausted");
        }
        ack(dispatch, metrics, subscription, received.id).await;
        return;
    }
    event.set_extension(BROKER_TTL, ExtensionValue::Integer(ttl));
    let span = TriggerSpan::start(shared.ingress.telemetry(), dispatch, &mut event);
    let started = Instant::now();
    let outcome = shared
        .sender
        .deliver_to(
            &dispatch.subscriber_uri,
            dispatch.subscriber_ca_certs.as_deref(),
            &event,
            &dispatch.policy,
        )
        .await;
    metrics.latency().observe(started.elapsed().as_secs_f64());
    metrics.outcome(&outcome).inc();
    span.finish(&outcome);
    metrics.retries().inc_by(u64::from(outcome.attempts() - 1));
    if let Outcome::DeadLettered { failure, .. } | Outcome::Failed { failure, .. } = &outcome {
        shared
            .metrics
            .delivery_failures
            .get_or_create(&rivulet_core::metrics::DeliveryFailureLabels {
                namespace: dispatch.namespace.clone(),
                trigger: dispatch.trigger.clone(),
                reason: failure.reason,
            })
            .inc();
    }
    match outcome {
        Outcome::Delivered { reply, .. } => {
            if let Some(reply) = reply {
                publish_reply(dispatch, shared, &event, reply).await;
            }
        }
        Outcome::DeadLettered { failure, attempts } => {
            tracing::info!(trigger = %dispatch.trigger, id = %event.id, attempts, error = %failure.message, "event dead-lettered");
        }
        Outcome::Failed {
            failure,
            attempts,
            dead_letter_error,
        } => {
            tracing::error!(
                trigger = %dispatch.trigger,
                id = %event.id,
                source = %event.source,
                attempts,
                error = %failure.message,
                dead_letter_error = dead_letter_error.as_ref().map(|f| f.message.as_str()),
                "event could not be delivered and no dead-letter sink took it"
            );
        }
    }
    ack(dispatch, metrics, subscription, received.id).await;
}

async fn ack(
    dispatch: &TriggerDispatch,
    metrics: &TriggerMetrics,
    subscription: &dyn Subscription,
    id: u64,
) {
    if let Err(error) = subscription.ack(id).await {
        // The event will be delivered again: at least once.
        if let Some(suppressed) = metrics.ack_failure_log.allow() {
            tracing::warn!(trigger = %dispatch.trigger, %error, suppressed, "acknowledgement failed; the event will be delivered again (suppressed: how many more since the last such line)");
        } else {
            tracing::debug!(trigger = %dispatch.trigger, %error, "acknowledgement failed");
        }
    }
}

/// Sends a reply back into the broker with the TTL its parent was delivered with (already one
/// less than the broker held); at zero it is dropped.
async fn publish_reply(
    dispatch: &TriggerDispatch,
    shared: &Shared,
    parent: &Event,
    mut reply: Event,
) {
    let ttl = ttl_of(parent);
    let count = |outcome| {
        shared
            .metrics
            .replies
            .get_or_create(&ReplyLabels {
                namespace: dispatch.namespace.clone(),
                trigger: dispatch.trigger.clone(),
                outcome,
            })
            .inc()
    };
    if ttl <= 0 {
        tracing::info!(trigger = %dispatch.trigger, id = %reply.id, "reply dropped: broker TTL exhausted (event loop?)");
        count("ttl_exhausted");
        return;
    }
    reply.set_extension(BROKER_TTL, ExtensionValue::Integer(ttl));
    telemetry::continue_in_reply(shared.ingress.telemetry(), parent, &mut reply);
    let subject = dispatch
        .policy
        .auth
        .as_ref()
        .map(|a| a.identity.subject())
        .unwrap_or_default();
    let mut wait = Duration::from_millis(100);
    for attempt in 1..=5 {
        match shared
            .ingress
            .accept_from(
                &dispatch.namespace,
                &dispatch.broker,
                vec![reply.clone()],
                &subject,
            )
            .await
        {
            Ok(()) => {
                count("published");
                return;
            }
            Err(error @ IngressError::Auth(_)) => {
                tracing::warn!(trigger = %dispatch.trigger, %error, "reply refused by the broker's EventPolicies");
                count("refused");
                return;
            }
            Err(error @ IngressError::Invalid(_)) => {
                tracing::warn!(trigger = %dispatch.trigger, %error, "reply refused by the broker");
                count("invalid");
                return;
            }
            Err(error) => {
                tracing::warn!(trigger = %dispatch.trigger, %error, attempt, "reply could not be stored, retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }
    tracing::error!(trigger = %dispatch.trigger, id = %reply.id, "reply lost: the broker's channel stayed unavailable");
    count("unavailable");
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use std::sync::atomic::AtomicUsize;

    /// A subscription whose every read fails, as a corrupt record or a dead backend does.
    struct Unreadable {
        reads: AtomicUsize,
    }

    #[async_trait]
    impl Subscription for Unreadable {
        async fn receive(&self, _max: usize) -> Result<Vec<Received>, ChannelError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            Err(ChannelError::Corrupt(
                "stored event 7: checksum mismatch".into(),
            ))
        }

        async fn ack(&self, _id: u64) -> Result<(), ChannelError> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_reads_are_retried_and_counted_by_kind() {
        let metrics = Arc::new(Metrics::new());
        let shared = Shared {
            sender: Sender::new(),
            ingress: Arc::new(Ingress::new(
                Arc::new(crate::brokers::BrokerTable::new(metrics.clone())),
                1 << 20,
            )),
            metrics: metrics.clone(),
        };
        let dispatch = TriggerDispatch {
            namespace: "default".into(),
            trigger: "stuck".into(),
            broker: "default".into(),
            subscriber_uri: "http://127.0.0.1:9/".into(),
            subscriber_ca_certs: None,
            filter: Filter::Everything,
            policy: DeliveryPolicy::from_spec(None, None, &Default::default()),
            ordered: false,
            parallelism: 4,
        };
        let subscription = Arc::new(Unreadable {
            reads: AtomicUsize::new(0),
        });
        let running = spawn(dispatch, subscription.clone(), shared);
        tokio::time::sleep(Duration::from_millis(1_250)).await;
        let reads = subscription.reads.load(Ordering::SeqCst);
        assert_eq!(reads, 3, "read at once, then every 500 ms");
        let text = metrics.render();
        assert!(
            text.contains(
                "rivulet_trigger_receive_failures_total{namespace=\"default\",trigger=\"stuck\",kind=\"corrupt\"} 3"
            ),
            "{text}"
        );
        running.stop_for_good(Duration::ZERO).await;
    }
}
