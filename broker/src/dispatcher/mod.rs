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

use crate::delivery::AttemptLog;
use crate::delivery::{DeliveryPolicy, Outcome, Sender};
use crate::health::TriggerHealth;
use crate::ingress::ARRIVAL_TIME;
use crate::ingress::{BROKER_TTL, Ingress, IngressError, ttl_of};
use crate::journal::{self, Journal, Step};
use crate::telemetry::{self, TriggerSpan};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::Histogram;
use rivulet_core::event::{Event, ExtensionValue};
use rivulet_core::filter::{self, Filter};
use rivulet_core::log_throttle::LogThrottle;
use rivulet_core::metrics::knative;
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
    /// Where the subscriber's reply goes.
    pub reply: ReplyRoute,
    /// Deliveries per second at most (`rivulet.dev/rate-limit`); `None` for no bound.
    pub rate_limit: Option<f64>,
}

/// Spaces the deliveries of one trigger at least `1 / rate` apart, whatever their
/// parallelism: an event waits for its turn (unacknowledged, holding its slot), so a
/// subscriber that can take only so much is never sent more, and nothing is dropped.
struct Pacer {
    interval: Duration,
    next: std::sync::Mutex<tokio::time::Instant>,
}

impl Pacer {
    fn new(per_second: f64) -> Self {
        Pacer {
            interval: Duration::from_secs_f64(1.0 / per_second),
            next: std::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits until this delivery's turn.
    async fn turn(&self) {
        let at = {
            let mut next = self
                .next
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let at = (*next).max(tokio::time::Instant::now());
            *next = at + self.interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// Where a subscriber's reply goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyRoute {
    /// Back into the broker the event came from (a Trigger).
    Broker,
    /// To a destination (a Subscription's `reply`), with the delivery's retries. When it
    /// cannot be delivered, the original event goes to the dead-letter sink, as Knative's
    /// channel dispatchers do.
    Destination {
        uri: String,
        ca_certs: Option<String>,
    },
    /// Nowhere: a Subscription without `reply` drops replies, as Knative's channels do.
    Discard,
}

/// What dispatchers share: the HTTP sender, the ingress replies go back through, metrics.
#[derive(Clone)]
pub struct Shared {
    pub sender: Sender,
    pub ingress: Arc<Ingress>,
    pub metrics: Arc<Metrics>,
    /// Where each trigger's verdict and delivery are recorded.
    pub journal: Journal,
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
    /// The trigger's broker, as the journal names it.
    journal_namespace: Arc<str>,
    journal_broker: Arc<str>,
    /// Knative's `filter_type` label: the trigger's `type` filter, or `any`.
    filter_type: String,
    /// Knative-named series by response code, made on first use.
    knative: std::sync::Mutex<Vec<(u16, Counter, Histogram)>>,
    knative_processing: OnceLock<Histogram>,
    lag: OnceLock<prometheus_client::metrics::gauge::Gauge<f64, AtomicU64>>,
    /// Where final outcomes go for the trigger's health (Events, its condition).
    health: Option<Arc<TriggerHealth>>,
}

impl TriggerMetrics {
    fn new(
        metrics: &Arc<Metrics>,
        dispatch: &TriggerDispatch,
        health: Option<Arc<TriggerHealth>>,
    ) -> Self {
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
            journal_namespace: dispatch.namespace.as_str().into(),
            journal_broker: dispatch.broker.as_str().into(),
            filter_type: dispatch
                .filter
                .exact_value("type")
                .unwrap_or("any")
                .to_string(),
            knative: std::sync::Mutex::default(),
            knative_processing: OnceLock::new(),
            lag: OnceLock::new(),
            health,
        }
    }

    fn knative_labels(&self, broker: &str, code: u16) -> knative::FilterLabels {
        knative::FilterLabels {
            broker_name: broker.to_string(),
            container_name: knative::FILTER_CONTAINER,
            filter_type: self.filter_type.clone(),
            namespace_name: self.namespace.clone(),
            response_code: code,
            response_code_class: knative::code_class(code),
            trigger_name: self.trigger.clone(),
            unique_name: self.metrics.knative.unique_name.clone(),
        }
    }

    /// Counts a delivery in Knative's filter metrics.
    fn count_knative(&self, broker: &str, code: u16, took: Duration) {
        let mut series = self
            .knative
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let index = match series.iter().position(|(c, _, _)| *c == code) {
            Some(index) => index,
            None => {
                let labels = self.knative_labels(broker, code);
                let knative = &self.metrics.knative;
                series.push((
                    code,
                    knative.filter_event_count.get_or_create_owned(&labels),
                    knative
                        .filter_dispatch_latencies
                        .get_or_create_owned(&labels),
                ));
                series.len() - 1
            }
        };
        let (_, count, latency) = &series[index];
        count.inc();
        latency.observe(took.as_secs_f64() * 1000.0);
    }

    /// Knative's processing latency: from taking the event to starting its delivery.
    fn processing(&self, broker: &str) -> &Histogram {
        self.knative_processing.get_or_init(|| {
            let labels = knative::FilterProcessingLabels {
                broker_name: broker.to_string(),
                container_name: knative::FILTER_CONTAINER,
                filter_type: self.filter_type.clone(),
                namespace_name: self.namespace.clone(),
                trigger_name: self.trigger.clone(),
                unique_name: self.metrics.knative.unique_name.clone(),
            };
            self.metrics
                .knative
                .filter_processing_latencies
                .get_or_create_owned(&labels)
        })
    }

    fn lag(&self) -> &prometheus_client::metrics::gauge::Gauge<f64, AtomicU64> {
        self.series(&self.lag, &self.metrics.trigger_lag_seconds)
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
    let health = shared
        .ingress
        .health()
        .map(|health| health.trigger(&dispatch.namespace, &dispatch.trigger));
    let metrics = Arc::new(TriggerMetrics::new(&shared.metrics, &dispatch, health));
    let dispatch = Arc::new(dispatch);
    tasks.spawn(consume(
        Consumer {
            dispatch: dispatch.clone(),
            metrics,
            subscription,
            shared,
            abandon: abandon.clone(),
            unfinished: unfinished.clone(),
            pacer: dispatch.rate_limit.map(|rate| Arc::new(Pacer::new(rate))),
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
    pacer: Option<Arc<Pacer>>,
}

impl Consumer {
    /// Handles one event; it stays counted as unfinished when abandoned before its ack.
    async fn handle(&self, received: Received) {
        let paced_delivery = async {
            if let Some(pacer) = &self.pacer {
                pacer.turn().await;
            }
            handle(
                &self.dispatch,
                &self.metrics,
                &*self.subscription,
                &self.shared,
                received,
            )
            .await
        };
        let finished = tokio::select! {
            () = paced_delivery => true,
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
    let taken = Instant::now();
    let arrived = arrival_of(&event);
    if let Some(arrived) = arrived {
        let lag = (chrono::Utc::now() - arrived)
            .num_microseconds()
            .unwrap_or(0);
        metrics.lag().set(lag.max(0) as f64 / 1e6);
    }
    let journal = &shared.journal;
    match dispatch.filter.evaluate(&event) {
        filter::Outcome::Match => {
            metrics.matched().inc();
        }
        filter::Outcome::NoMatch => {
            metrics.rejected().inc();
            if journal.enabled() {
                let filter = dispatch.filter.refused_by(&event);
                record(journal, metrics, event, |at| Step::Refused {
                    at,
                    trigger: dispatch.trigger.clone(),
                    filter: filter.to_string(),
                });
            }
            ack(dispatch, metrics, subscription, received.id).await;
            return;
        }
        filter::Outcome::EvaluationError(kind) => {
            if journal.enabled() {
                record(journal, metrics, event, |at| Step::Refused {
                    at,
                    trigger: dispatch.trigger.clone(),
                    filter: format!("cesql-error:{kind}"),
                });
            }
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
        record(journal, metrics, event, |at| Step::Dropped {
            at,
            trigger: dispatch.trigger.clone(),
            reason: "ttl".into(),
        });
        ack(dispatch, metrics, subscription, received.id).await;
        return;
    }
    event.set_extension(BROKER_TTL, ExtensionValue::Integer(ttl));
    let span = TriggerSpan::start(shared.ingress.telemetry(), dispatch, &mut event);
    let started = Instant::now();
    metrics
        .processing(&dispatch.broker)
        .observe(started.duration_since(taken).as_secs_f64() * 1000.0);
    let mut attempts = journal.enabled().then(AttemptLog::default);
    let outcome = shared
        .sender
        .deliver_logged(
            &dispatch.subscriber_uri,
            dispatch.subscriber_ca_certs.as_deref(),
            &event,
            &dispatch.policy,
            attempts.as_mut(),
        )
        .await;
    let took = started.elapsed();
    metrics.latency().observe(took.as_secs_f64());
    let code = match &outcome {
        Outcome::Delivered { status, .. } => status.as_u16(),
        Outcome::DeadLettered { failure, .. } | Outcome::Failed { failure, .. } => {
            // No answer at all counts as a bad gateway, as a proxy would say.
            failure.status.map_or(502, |s| s.as_u16())
        }
    };
    metrics.count_knative(&dispatch.broker, code, took);
    metrics.outcome(&outcome).inc();
    span.finish(&outcome);
    metrics.retries().inc_by(u64::from(outcome.attempts() - 1));
    if let Some(health) = &metrics.health {
        match &outcome {
            Outcome::Delivered { .. } => health.delivered(),
            Outcome::DeadLettered { failure, .. } | Outcome::Failed { failure, .. } => health
                .failed(
                    failure.status.map(|s| s.as_u16()),
                    failure.reason,
                    &failure.message,
                    matches!(outcome, Outcome::DeadLettered { .. }),
                ),
        }
    }
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
    let mut reply_noted = None;
    let journaled = match &outcome {
        Outcome::Delivered { .. } => journal::Outcome::Delivered,
        Outcome::DeadLettered { .. } => journal::Outcome::DeadLettered,
        Outcome::Failed { .. } => journal::Outcome::Failed,
    };
    match outcome {
        Outcome::Delivered { reply, .. } => {
            if let Some(reply) = reply {
                let (id, ty) = (reply.id.clone(), reply.ty.clone());
                let published = match &dispatch.reply {
                    ReplyRoute::Broker => publish_reply(dispatch, shared, &event, reply).await,
                    ReplyRoute::Destination { uri, ca_certs } => {
                        forward_reply(dispatch, shared, &event, reply, uri, ca_certs.as_deref())
                            .await
                    }
                    ReplyRoute::Discard => "discarded",
                };
                reply_noted = Some(journal::Reply {
                    id,
                    ty,
                    outcome: published.to_string(),
                });
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
    if let Some(attempts) = attempts {
        let latency_ms =
            arrived.map(|arrived| (chrono::Utc::now() - arrived).num_milliseconds().max(0) as u64);
        record(journal, metrics, event, |at| Step::Delivery {
            at,
            trigger: dispatch.trigger.clone(),
            subscriber: dispatch.subscriber_uri.clone(),
            attempt_count: attempts.count,
            attempts: attempts.attempts,
            outcome: journaled,
            dead_letter: dispatch.policy.dead_letter_uri.clone(),
            latency_ms,
            reply: reply_noted,
        });
    }
    ack(dispatch, metrics, subscription, received.id).await;
}

/// When ingress took the event in (its `knativearrivaltime`).
fn arrival_of(event: &Event) -> Option<chrono::DateTime<chrono::Utc>> {
    match event.extensions.get(ARRIVAL_TIME)? {
        ExtensionValue::String(text) => chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc)),
        _ => None,
    }
}

/// Records a step of `event` (given up: it is done with) in the journal, if it is on.
fn record(
    journal: &Journal,
    metrics: &TriggerMetrics,
    event: Event,
    step: impl FnOnce(journal::record::Millis) -> Step,
) {
    if !journal.enabled() {
        return;
    }
    journal.step(
        &metrics.journal_namespace,
        &metrics.journal_broker,
        event.id,
        event.source,
        step(journal::record::now_millis()),
    );
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

/// Delivers a reply to a Subscription's `reply` with the subscription's retries and the TTL
/// its parent was delivered with (so loops through channels end too). When it cannot be
/// delivered, the parent goes to the dead-letter sink instead, as Knative's channels do.
async fn forward_reply(
    dispatch: &TriggerDispatch,
    shared: &Shared,
    parent: &Event,
    mut reply: Event,
    uri: &str,
    ca_certs: Option<&str>,
) -> &'static str {
    let ttl = ttl_of(parent);
    if ttl <= 0 {
        tracing::info!(subscription = %dispatch.trigger, id = %reply.id, "reply dropped: TTL exhausted (event loop?)");
        return "ttl-exhausted";
    }
    reply.set_extension(BROKER_TTL, ExtensionValue::Integer(ttl));
    telemetry::continue_in_reply(shared.ingress.telemetry(), parent, &mut reply);
    // The reply destination's own answer is not read.
    let policy = DeliveryPolicy {
        dead_letter_uri: None,
        auth: None,
        accepts_reply: false,
        ..dispatch.policy.clone()
    };
    let failure = match shared
        .sender
        .deliver_to(uri, ca_certs, &reply, &policy)
        .await
    {
        Outcome::Delivered { .. } => return "delivered",
        Outcome::DeadLettered { failure, .. } | Outcome::Failed { failure, .. } => failure,
    };
    if dispatch.policy.dead_letter_uri.is_none() {
        tracing::error!(subscription = %dispatch.trigger, id = %parent.id, reply = %uri, error = %failure.message, "the reply could not be delivered and there is no dead-letter sink");
        return "failed";
    }
    let why = format!(
        "the reply could not be delivered to {uri}: {}",
        failure.message
    );
    match shared
        .sender
        .dead_letter(parent, uri, &why, &dispatch.policy)
        .await
    {
        Ok(()) => {
            tracing::info!(subscription = %dispatch.trigger, id = %parent.id, error = %failure.message, "reply undeliverable; the event was dead-lettered");
            "dead-lettered"
        }
        Err(dead_letter) => {
            tracing::error!(subscription = %dispatch.trigger, id = %parent.id, error = %failure.message, dead_letter_error = %dead_letter.message, "the reply could not be delivered and the dead-letter sink did not take the event");
            "failed"
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
) -> &'static str {
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
        return "ttl-exhausted";
    }
    reply.set_extension(BROKER_TTL, ExtensionValue::Integer(ttl));
    telemetry::continue_in_reply(shared.ingress.telemetry(), parent, &mut reply);
    let subject = dispatch
        .policy
        .auth
        .as_ref()
        .map(|a| a.identity.subject())
        .unwrap_or_default();
    let sender = format!(
        "reply to {} via trigger {}/{}",
        parent.id, dispatch.namespace, dispatch.trigger
    );
    let mut wait = Duration::from_millis(100);
    for attempt in 1..=5 {
        match shared
            .ingress
            .accept_from(
                &dispatch.namespace,
                &dispatch.broker,
                vec![reply.clone()],
                &subject,
                sender.clone(),
            )
            .await
        {
            Ok(()) => {
                count("published");
                return "published";
            }
            Err(error @ IngressError::Auth(_)) => {
                tracing::warn!(trigger = %dispatch.trigger, %error, "reply refused by the broker's EventPolicies");
                count("refused");
                return "refused";
            }
            Err(error @ IngressError::Invalid(_)) => {
                tracing::warn!(trigger = %dispatch.trigger, %error, "reply refused by the broker");
                count("invalid");
                return "invalid";
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
    "unavailable"
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
    async fn the_pacer_spaces_turns_by_the_rate_and_does_not_save_up_idle_time() {
        let pacer = Pacer::new(10.0);
        let start = tokio::time::Instant::now();
        let mut turns = Vec::new();
        for _ in 0..3 {
            pacer.turn().await;
            turns.push(start.elapsed());
        }
        assert_eq!(
            turns,
            [
                Duration::ZERO,
                Duration::from_millis(100),
                Duration::from_millis(200)
            ]
        );
        // After a quiet second the next turn is at once, and the one after a step later:
        // no burst of the turns the quiet time could have held.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let resumed = tokio::time::Instant::now();
        pacer.turn().await;
        pacer.turn().await;
        assert_eq!(resumed.elapsed(), Duration::from_millis(100));
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
            journal: Journal::off(),
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
            reply: ReplyRoute::Broker,
            rate_limit: None,
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
