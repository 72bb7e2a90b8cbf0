//! Deleting a trigger or broker that still holds undelivered events: deliveries in flight
//! get a grace period to finish, what is left goes to the dead-letter sink where there is
//! one, and whatever is dropped is counted (metric, log line, and the deleting request's
//! answer).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rivulet_channels::{Channel, ChannelError};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;

use super::Context;
use super::trigger::subscription_name;
use rivulet_broker::delivery::DeliveryPolicy;
use rivulet_broker::dispatcher::Running;
use rivulet_core::event::Event;
use rivulet_core::filter::{self, Filter};
use rivulet_core::metrics::{DeletionLabels, DroppedLabels};
use rivulet_core::resources::Trigger;
use rivulet_core::resources::validation::typed;
use rivulet_store::object_key;

/// The grace period deletions give deliveries in flight unless told otherwise.
pub const DEFAULT_DELETE_GRACE: Duration = Duration::from_secs(30);

/// How long the drain waits for the next leftover event while the subscription says more
/// are there (a backend may take a moment to hand back what a stopped consumer held).
const LEFTOVER_WAIT: Duration = Duration::from_secs(5);

/// How long the drain waits for more when the backend cannot count what it holds.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// Leftovers taken off the subscription at once.
const LEFTOVER_BATCH: usize = 256;

/// What became of the undelivered events of a deleted trigger or broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainReport {
    /// Deliveries in flight at the deletion that finished within the grace period.
    pub drained: u64,
    /// Events never delivered that went to the dead-letter sink.
    pub dead_lettered: u64,
    /// Events never delivered that are gone: no dead-letter sink, or it failed too.
    pub dropped: u64,
}

impl DrainReport {
    fn add(&mut self, other: DrainReport) {
        self.drained += other.drained;
        self.dead_lettered += other.dead_lettered;
        self.dropped += other.dropped;
    }
}

/// A deleted object whose drain someone waits for: kind, namespace, name.
type DeletionKey = (&'static str, String, String);

/// Requests waiting for the outcome of a deletion.
#[derive(Default)]
pub(super) struct DeletionWaiters(
    std::sync::Mutex<HashMap<DeletionKey, oneshot::Sender<DrainReport>>>,
);

impl DeletionWaiters {
    fn key(kind: &'static str, namespace: &str, name: &str) -> DeletionKey {
        (kind, namespace.to_owned(), name.to_owned())
    }

    pub(super) fn wait(
        &self,
        kind: &'static str,
        namespace: &str,
        name: &str,
    ) -> oneshot::Receiver<DrainReport> {
        let (sender, receiver) = oneshot::channel();
        self.0
            .lock()
            .expect("lock poisoned")
            .insert(Self::key(kind, namespace, name), sender);
        receiver
    }

    pub(super) fn finish(
        &self,
        kind: &'static str,
        namespace: &str,
        name: &str,
        report: DrainReport,
    ) {
        let waiter = self
            .0
            .lock()
            .expect("lock poisoned")
            .remove(&Self::key(kind, namespace, name));
        if let Some(waiter) = waiter {
            let _ = waiter.send(report);
        }
    }
}

/// Where a trigger's leftovers go, and which of them were ever its business.
struct Leftovers {
    subscriber_uri: String,
    filter: Option<Filter>,
    policy: DeliveryPolicy,
}

impl Leftovers {
    /// From the running consumer's settings, or else from the trigger as stored (its status
    /// holds the resolved dead-letter sink).
    fn of(ctx: &Context, trigger: &Value, running: Option<&Running>) -> Self {
        if let Some(running) = running {
            let dispatch = &running.dispatch;
            return Leftovers {
                subscriber_uri: dispatch.subscriber_uri.clone(),
                filter: Some(dispatch.filter.clone()),
                policy: dispatch.policy.clone(),
            };
        }
        let parsed: Option<Trigger> = typed(trigger).ok();
        let text = |pointer: &str| {
            trigger
                .pointer(pointer)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        Leftovers {
            subscriber_uri: text("/status/subscriberUri").unwrap_or_default(),
            filter: parsed
                .as_ref()
                .and_then(|t| Filter::for_trigger(&t.spec).ok()),
            policy: DeliveryPolicy::from_spec(
                parsed.as_ref().and_then(|t| t.spec.delivery.as_ref()),
                text("/status/deadLetterSinkUri"),
                &ctx.settings.delivery,
            ),
        }
    }
}

/// What became of one leftover event.
enum Disposal {
    /// Not for this trigger (its filter refuses it): nothing was lost.
    NotWanted,
    DeadLettered,
    Dropped,
}

/// Stops a deleted trigger's consumer (giving deliveries in flight the grace period), then
/// sends what its subscription still holds to the dead-letter sink or counts it dropped.
/// Leaves the subscription itself to the caller. Counts and logs the outcome.
pub(super) async fn drain_trigger(
    ctx: &Arc<Context>,
    channel: &Arc<dyn Channel>,
    trigger: &Value,
    running: Option<Running>,
) -> DrainReport {
    let (namespace, name) = object_key(trigger);
    let leftovers = Leftovers::of(ctx, trigger, running.as_ref());
    let mut report = DrainReport::default();
    if let Some(running) = running {
        let stopped = running.stop_for_good(ctx.settings.delete_grace).await;
        tracing::debug!(%namespace, trigger = %name, finished = stopped.finished, abandoned = stopped.abandoned, "deleted trigger's consumer stopped");
        report.drained = stopped.finished;
    }
    let subscription = subscription_name(&name);
    let expected = match channel.backlog(&subscription).await {
        Ok(expected) => expected,
        Err(ChannelError::UnknownSubscription(_)) => Some(0),
        Err(error) => {
            tracing::warn!(%namespace, trigger = %name, %error, "cannot count the events of the deleted trigger; taking what comes");
            None
        }
    };
    tracing::debug!(%namespace, trigger = %name, ?expected, "deleted trigger's events left in its subscription");
    if expected != Some(0) {
        let (dead_lettered, dropped) = take_leftovers(
            ctx,
            channel,
            &subscription,
            expected,
            &leftovers,
            &namespace,
            &name,
        )
        .await;
        report.dead_lettered = dead_lettered;
        report.dropped = dropped;
    }
    record(ctx, &namespace, &name, report);
    report
}

/// Consumes the rest of a subscription and disposes of each event; counts of dead-lettered
/// and dropped.
async fn take_leftovers(
    ctx: &Arc<Context>,
    channel: &Arc<dyn Channel>,
    subscription: &str,
    expected: Option<u64>,
    leftovers: &Leftovers,
    namespace: &str,
    trigger: &str,
) -> (u64, u64) {
    let (mut dead_lettered, mut dropped, mut seen) = (0u64, 0u64, 0u64);
    let consumer = match channel.consume(subscription).await {
        Ok(consumer) => consumer,
        Err(error) => {
            let lost = expected.unwrap_or(0);
            tracing::error!(%namespace, %trigger, %error, lost, "cannot read the deleted trigger's events; they are dropped");
            return (0, lost);
        }
    };
    let why = format!("trigger {namespace}/{trigger} was deleted before the event was delivered");
    loop {
        if expected.is_some_and(|expected| seen >= expected) {
            break;
        }
        let wait = if expected.is_some() {
            LEFTOVER_WAIT
        } else {
            IDLE_WAIT
        };
        let batch = match tokio::time::timeout(wait, consumer.receive(LEFTOVER_BATCH)).await {
            Ok(Ok(batch)) => batch,
            Ok(Err(ChannelError::Closed)) | Err(_) => break,
            Ok(Err(error)) => {
                tracing::warn!(%namespace, %trigger, %error, "reading the deleted trigger's events failed");
                break;
            }
        };
        for received in batch {
            seen += 1;
            match dispose(ctx, &received.envelope, leftovers, &why, namespace, trigger).await {
                Disposal::NotWanted => {}
                Disposal::DeadLettered => dead_lettered += 1,
                Disposal::Dropped => dropped += 1,
            }
            // Done with it either way; the subscription is removed next.
            let _ = consumer.ack(received.id).await;
        }
    }
    if let Some(expected) = expected
        && seen < expected
    {
        // The backend counted events that never came back: they go with the subscription.
        // Some of them may be events a backend skips without handing them out, because the
        // trigger's prefilter refuses them (Kafka counts them): what it still holds now is
        // the most that was lost.
        let lost = still_held(channel, subscription)
            .await
            .map_or(expected - seen, |held| held.min(expected - seen));
        tracing::warn!(%namespace, %trigger, lost, "events of the deleted trigger could not be read back; counted as dropped");
        dropped += lost;
    }
    (dead_lettered, dropped)
}

/// What the subscription holds once the acknowledgements just made have reached the
/// backend (some commit them a moment later); `None` when it cannot tell.
async fn still_held(channel: &Arc<dyn Channel>, subscription: &str) -> Option<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let held = channel.backlog(subscription).await.ok().flatten()?;
        if held == 0 || tokio::time::Instant::now() >= deadline {
            return Some(held);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn dispose(
    ctx: &Context,
    envelope: &rivulet_channels::Envelope,
    leftovers: &Leftovers,
    why: &str,
    namespace: &str,
    trigger: &str,
) -> Disposal {
    let event = match Event::from_envelope(envelope) {
        Ok(event) => event,
        Err(error) => {
            tracing::error!(%namespace, %trigger, %error, "an unreadable event of the deleted trigger is dropped");
            return Disposal::Dropped;
        }
    };
    if let Some(filter) = &leftovers.filter
        && !matches!(filter.evaluate(&event), filter::Outcome::Match)
    {
        return Disposal::NotWanted;
    }
    if leftovers.policy.dead_letter_uri.is_none() {
        return Disposal::Dropped;
    }
    match ctx
        .dispatch
        .sender
        .dead_letter(&event, &leftovers.subscriber_uri, why, &leftovers.policy)
        .await
    {
        Ok(()) => Disposal::DeadLettered,
        Err(failure) => {
            tracing::error!(%namespace, %trigger, id = %event.id, error = %failure.message, "the dead-letter sink refused an event of the deleted trigger; it is dropped");
            Disposal::Dropped
        }
    }
}

/// Counts a trigger's drain in the metrics and says it in the log.
fn record(ctx: &Context, namespace: &str, trigger: &str, report: DrainReport) {
    let metrics = &ctx.dispatch.metrics;
    for (outcome, count) in [
        ("drained", report.drained),
        ("dead_lettered", report.dead_lettered),
        ("dropped", report.dropped),
    ] {
        if count > 0 {
            metrics
                .deletion_events
                .get_or_create(&DeletionLabels {
                    namespace: namespace.to_owned(),
                    trigger: trigger.to_owned(),
                    outcome,
                })
                .inc_by(count);
        }
    }
    if report.dropped > 0 {
        metrics
            .events_dropped
            .get_or_create(&DroppedLabels {
                namespace: namespace.to_owned(),
                trigger: trigger.to_owned(),
                reason: "deleted",
            })
            .inc_by(report.dropped);
        tracing::warn!(
            %namespace,
            %trigger,
            drained = report.drained,
            dead_lettered = report.dead_lettered,
            dropped = report.dropped,
            "trigger deleted with undelivered events: some were dropped"
        );
    } else if report != DrainReport::default() {
        tracing::info!(
            %namespace,
            %trigger,
            drained = report.drained,
            dead_lettered = report.dead_lettered,
            "trigger deleted; its undelivered events were drained or dead-lettered"
        );
    }
}

/// Drains several triggers of one channel at once and adds their reports up.
pub(super) async fn drain_triggers(
    ctx: &Arc<Context>,
    channel: &Arc<dyn Channel>,
    triggers: Vec<(Value, Option<Running>)>,
) -> DrainReport {
    let reports =
        futures::future::join_all(triggers.into_iter().map(|(trigger, running)| async move {
            drain_trigger(ctx, channel, &trigger, running).await
        }))
        .await;
    let mut total = DrainReport::default();
    for report in reports {
        total.add(report);
    }
    total
}
