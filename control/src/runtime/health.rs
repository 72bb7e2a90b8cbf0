//! The delivery-health reporter: turns what dispatchers and ingress counted
//! ([`rivulet_broker::health`]) into Kubernetes Events on Triggers and Brokers and into the
//! Trigger's `DeliveryHealthy` condition.
//!
//! - A trigger is failing after [`FAILURES_IN_ROW`] final failures in a row (events that
//!   exhausted their retries, dead-lettered or not), or once its first final failure is
//!   [`FAILING_FOR`] old with no delivery since. One delivery ends it.
//! - Events (`DeliveryDeadLettered`, `SubscriberFailing`, `SubscriberRecovered` on the
//!   Trigger; `EventPolicyRefused`, `SenderUnauthenticated` on the Broker) are said at most
//!   once per object and reason per [`EVENT_WINDOW`], with how many occurrences they stand
//!   for; later ones wait for the window to pass.
//! - The condition never changes `Ready`: a subscriber that is down makes no Trigger
//!   NotReady, as in Knative. It is written when the trigger turns failing or healthy, and
//!   while failing its message is refreshed at most every [`STATUS_REFRESH`].
//!
//! Where the process has no Kubernetes API (standalone), Events are log lines: the file
//! store serves no `v1` Event kind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use serde_json::Value;
use tokio::sync::mpsc;

use rivulet_broker::health::{
    BrokerHealth, BrokerSnapshot, FailureNote, Health, RefusalKind, TriggerHealth, TriggerSnapshot,
    Wake,
};
use rivulet_core::resources::Condition;
use rivulet_store::object_key;

use super::Context;

/// Final failures in a row that make a trigger failing.
pub const FAILURES_IN_ROW: u64 = 3;
/// How long failures without a delivery make a trigger failing, however few.
pub const FAILING_FOR: Duration = Duration::from_secs(60);
/// At most one Event per object and reason in this long.
pub const EVENT_WINDOW: Duration = Duration::from_secs(60);
/// How often a failing trigger's condition message is brought up to date at most.
pub const STATUS_REFRESH: Duration = Duration::from_secs(30);
/// The condition type.
pub const DELIVERY_HEALTHY: &str = "DeliveryHealthy";
/// How many wake-ups may wait for the reporter.
const QUEUE: usize = 1024;
/// How often the reporter looks at failing triggers and held-back Events.
const SWEEP: Duration = Duration::from_secs(1);
/// The reporting component named in these Events: the data path saw what they say.
const REPORTER: &str = "rivulet-data-plane";

type Key = (String, String);

/// What the reconcilers and the reporter share.
pub(super) struct HealthState {
    /// The `DeliveryHealthy` condition of each trigger that has one.
    conditions: Mutex<HashMap<Key, Condition>>,
    /// uids of the triggers and brokers reconciled here, for the Events' references.
    uids: Mutex<HashMap<(&'static str, String, String), String>>,
    health: Arc<Health>,
}

impl HealthState {
    /// Sets up health reporting for `ingress` (and the dispatchers that share it); the
    /// receiving end is for [`spawn`], unless someone reads this ingress's reports already.
    pub(super) fn new(
        ingress: &rivulet_broker::ingress::Ingress,
        metrics: &rivulet_core::metrics::Metrics,
    ) -> (Self, Option<mpsc::Receiver<Wake>>) {
        let (health, wakes) = match ingress.health() {
            Some(health) => (health.clone(), None),
            None => {
                let (health, wakes) = Health::new(metrics, QUEUE);
                ingress.set_health(health.clone());
                (health, Some(wakes))
            }
        };
        let state = HealthState {
            conditions: Mutex::default(),
            uids: Mutex::default(),
            health,
        };
        (state, wakes)
    }

    /// The trigger's `DeliveryHealthy` condition, when it has one.
    pub(super) fn condition(&self, namespace: &str, name: &str) -> Option<Condition> {
        self.conditions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Notes the uid of a Trigger or Broker seen by the control loop.
    pub(super) fn note_object(&self, kind: &'static str, object: &Value) {
        if kind != "Trigger" && kind != "Broker" {
            return;
        }
        let Some(uid) = object.pointer("/metadata/uid").and_then(Value::as_str) else {
            return;
        };
        let (namespace, name) = object_key(object);
        let mut uids = self.uids.lock().unwrap_or_else(|e| e.into_inner());
        let key = (kind, namespace, name);
        if uids.get(&key).map(String::as_str) != Some(uid) {
            uids.insert(key, uid.to_string());
        }
    }

    /// A Trigger or Broker is gone: one made again under its name starts afresh.
    pub(super) fn forget(&self, kind: &'static str, namespace: &str, name: &str) {
        self.uids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(kind, namespace.to_string(), name.to_string()));
        match kind {
            "Trigger" => {
                self.conditions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&(namespace.to_string(), name.to_string()));
                self.health.forget_trigger(namespace, name);
            }
            "Broker" => self.health.forget_broker(namespace, name),
            _ => {}
        }
    }

    fn uid(&self, kind: &'static str, namespace: &str, name: &str) -> Option<String> {
        self.uids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(kind, namespace.to_string(), name.to_string()))
            .cloned()
    }

    fn set_condition(&self, namespace: &str, name: &str, condition: Condition) {
        self.conditions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((namespace.to_string(), name.to_string()), condition);
    }
}

/// Runs the reporter in the background while the context lives.
pub(super) fn spawn(ctx: &Arc<Context>, wakes: mpsc::Receiver<Wake>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(run(Arc::downgrade(ctx), wakes));
}

async fn run(ctx: Weak<Context>, mut wakes: mpsc::Receiver<Wake>) {
    let mut reporter = Reporter::default();
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            wake = wakes.recv() => {
                let (Some(wake), Some(ctx)) = (wake, ctx.upgrade()) else { break };
                match wake {
                    Wake::Trigger(health) => reporter.trigger(&ctx, health, Instant::now()),
                    Wake::Broker(health) => reporter.broker(&ctx, health, Instant::now()),
                }
            }
            _ = sweep.tick() => {
                let Some(ctx) = ctx.upgrade() else { break };
                reporter.sweep(&ctx, Instant::now());
            }
        }
    }
}

/// One reason's Events for one object: when the last was said, and what waits.
#[derive(Default)]
struct Limited {
    last: Option<Instant>,
    /// Occurrences not said yet.
    pending: u64,
}

impl Limited {
    fn add(&mut self, count: u64) {
        self.pending += count;
    }

    /// Whether to say the pending occurrences now (then they count as said); how many.
    fn due(&mut self, now: Instant) -> Option<u64> {
        if self.pending == 0 || self.last.is_some_and(|last| now - last < EVENT_WINDOW) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.pending))
    }
}

/// What the reporter knows of one trigger.
struct TriggerWatch {
    health: Arc<TriggerHealth>,
    /// The counters as last accounted for.
    seen: TriggerSnapshot,
    failing: bool,
    dead_lettered: Limited,
    failing_events: Limited,
    recovered: Limited,
    /// When the condition was last handed to the status writer.
    condition_at: Option<Instant>,
    /// A newer message waits for [`STATUS_REFRESH`].
    condition_stale: bool,
}

impl TriggerWatch {
    fn new(health: Arc<TriggerHealth>) -> Self {
        TriggerWatch {
            health,
            seen: TriggerSnapshot::default(),
            failing: false,
            dead_lettered: Limited::default(),
            failing_events: Limited::default(),
            recovered: Limited::default(),
            condition_at: None,
            condition_stale: false,
        }
    }
}

struct BrokerWatch {
    health: Arc<BrokerHealth>,
    seen: BrokerSnapshot,
    forbidden: Limited,
    unauthenticated: Limited,
}

#[derive(Default)]
struct Reporter {
    triggers: HashMap<Key, TriggerWatch>,
    brokers: HashMap<Key, BrokerWatch>,
}

impl Reporter {
    fn trigger(&mut self, ctx: &Arc<Context>, health: Arc<TriggerHealth>, now: Instant) {
        let key = (health.namespace.clone(), health.trigger.clone());
        let watch = self
            .triggers
            .entry(key)
            .or_insert_with(|| TriggerWatch::new(health.clone()));
        if !Arc::ptr_eq(&watch.health, &health) {
            // The trigger was deleted and made again: its history went with it.
            *watch = TriggerWatch::new(health);
        }
        update_trigger(ctx, watch, now);
    }

    fn broker(&mut self, ctx: &Arc<Context>, health: Arc<BrokerHealth>, now: Instant) {
        let key = (health.namespace.clone(), health.broker.clone());
        let watch = self.brokers.entry(key).or_insert_with(|| BrokerWatch {
            health: health.clone(),
            seen: BrokerSnapshot::default(),
            forbidden: Limited::default(),
            unauthenticated: Limited::default(),
        });
        if !Arc::ptr_eq(&watch.health, &health) {
            watch.health = health;
            watch.seen = BrokerSnapshot::default();
        }
        update_broker(ctx, watch, now);
    }

    /// Failing by time, held-back Events and condition messages: looked at every second,
    /// for the triggers and brokers that have something going on.
    fn sweep(&mut self, ctx: &Arc<Context>, now: Instant) {
        // Held by nothing else: the trigger or broker was deleted and its consumer is gone.
        self.triggers
            .retain(|_, watch| Arc::strong_count(&watch.health) > 1);
        self.brokers
            .retain(|_, watch| Arc::strong_count(&watch.health) > 1);
        for watch in self.triggers.values_mut() {
            let busy = watch.failing
                || watch.seen.in_row > 0
                || watch.condition_stale
                || watch.dead_lettered.pending > 0
                || watch.failing_events.pending > 0
                || watch.recovered.pending > 0;
            if busy {
                update_trigger(ctx, watch, now);
            }
        }
        for watch in self.brokers.values_mut() {
            if watch.forbidden.pending > 0 || watch.unauthenticated.pending > 0 {
                update_broker(ctx, watch, now);
            }
        }
    }
}

fn is_failing(snapshot: &TriggerSnapshot) -> bool {
    snapshot.in_row >= FAILURES_IN_ROW
        || snapshot
            .failing_since
            .is_some_and(|since| (Utc::now() - since).to_std().unwrap_or_default() >= FAILING_FOR)
}

fn update_trigger(ctx: &Arc<Context>, watch: &mut TriggerWatch, now: Instant) {
    let current = watch.health.snapshot();
    let dead_lettered = current
        .dead_lettered
        .saturating_sub(watch.seen.dead_lettered);
    let failed = current.failed.saturating_sub(watch.seen.failed);
    let recoveries = current.recoveries.saturating_sub(watch.seen.recoveries);
    watch.seen = current.clone();
    watch.dead_lettered.add(dead_lettered);

    let failing = is_failing(&current);
    let mut changed = false;
    if failing && !watch.failing {
        watch.failing = true;
        changed = true;
        watch.recovered.pending = 0;
        watch.failing_events.add(current.in_row.max(1));
    } else if failing {
        watch.failing_events.add(dead_lettered + failed);
    } else if watch.failing && recoveries > 0 {
        watch.failing = false;
        changed = true;
        watch.failing_events.pending = 0;
        watch.recovered.add(1);
    }

    let (namespace, name) = (&watch.health.namespace, &watch.health.trigger);
    let last = current.last_failure.as_ref();
    if let Some(last) = last
        && let Some(count) = watch.dead_lettered.due(now)
    {
        let note = format!(
            "{count} event{} sent to the dead-letter sink after failed delivery; the last at {}",
            plural(count),
            describe(last)
        );
        say(
            ctx,
            "Trigger",
            namespace,
            name,
            Warning,
            "DeliveryDeadLettered",
            note,
        );
    }
    if let Some(last) = last
        && watch.failing_events.due(now).is_some()
    {
        let note = failing_message(&current, last);
        say(
            ctx,
            "Trigger",
            namespace,
            name,
            Warning,
            "SubscriberFailing",
            note,
        );
    }
    if watch.recovered.due(now).is_some() {
        let note = "the subscriber accepts deliveries again".to_string();
        say(
            ctx,
            "Trigger",
            namespace,
            name,
            Normal,
            "SubscriberRecovered",
            note,
        );
    }

    // The condition: on every change of health, and while failing as its message ages.
    if changed || watch.failing {
        watch.condition_stale = true;
    }
    let refresh_due = watch
        .condition_at
        .is_none_or(|at| now - at >= STATUS_REFRESH);
    if watch.condition_stale && (changed || refresh_due) {
        watch.condition_stale = false;
        watch.condition_at = Some(now);
        let condition = match (watch.failing, last) {
            (true, Some(last)) => {
                let reason = if last.dead_lettered {
                    "DeadLettered"
                } else {
                    "SubscriberFailing"
                };
                let mut condition = Condition::new(
                    DELIVERY_HEALTHY,
                    false,
                    reason,
                    failing_message(&current, last),
                );
                // Informational: a condition with a severity never changes Ready.
                condition.severity = Some("Warning".into());
                condition
            }
            _ => Condition::new(DELIVERY_HEALTHY, true, "", ""),
        };
        let previous = ctx.delivery_health.condition(namespace, name);
        let condition = keep_transition_time(condition, previous.as_ref());
        if previous.as_ref() != Some(&condition) {
            ctx.delivery_health
                .set_condition(namespace, name, condition);
            if ctx.role().writes_status() {
                // The trigger's reconcile writes the status with the condition in it: one
                // writer of the status, so nothing else it wrote meanwhile is lost.
                ctx.requeue_now(Context::kind("Trigger"), namespace, name);
            }
        }
    }
}

/// A condition whose status did not change keeps the time it last changed.
fn keep_transition_time(mut condition: Condition, previous: Option<&Condition>) -> Condition {
    if let Some(previous) = previous
        && previous.status == condition.status
    {
        condition
            .last_transition_time
            .clone_from(&previous.last_transition_time);
    }
    condition
}

fn update_broker(ctx: &Arc<Context>, watch: &mut BrokerWatch, now: Instant) {
    let current = watch.health.snapshot();
    watch
        .forbidden
        .add(current.forbidden.saturating_sub(watch.seen.forbidden));
    watch.unauthenticated.add(
        current
            .unauthenticated
            .saturating_sub(watch.seen.unauthenticated),
    );
    let (namespace, name) = (&watch.health.namespace, &watch.health.broker);
    let kinds = [
        (
            RefusalKind::Forbidden,
            &mut watch.forbidden,
            "EventPolicyRefused",
        ),
        (
            RefusalKind::Unauthenticated,
            &mut watch.unauthenticated,
            "SenderUnauthenticated",
        ),
    ];
    for (kind, limited, reason) in kinds {
        let Some(last) = current.last.get(&kind) else {
            continue;
        };
        if let Some(count) = limited.due(now) {
            let sender = match &last.subject {
                Some(subject) => format!(" from {subject}"),
                None => String::new(),
            };
            let note = format!(
                "{count} request{} refused; the last at {}{sender}: {}",
                plural(count),
                time(&last.at),
                last.message
            );
            say(ctx, "Broker", namespace, name, Warning, reason, note);
        }
    }
    watch.seen = current;
}

fn failing_message(current: &TriggerSnapshot, last: &FailureNote) -> String {
    let since = current
        .failing_since
        .map(|since| format!(" since {}", time(&since)))
        .unwrap_or_default();
    format!(
        "{} deliver{} in a row failed{since}; the last at {}",
        current.in_row,
        if current.in_row == 1 { "y" } else { "ies" },
        describe(last)
    )
}

/// `2026-11-26T12:00:00Z: 500 (status): message`.
fn describe(failure: &FailureNote) -> String {
    let status = failure.status.map(|s| format!("{s} ")).unwrap_or_default();
    format!(
        "{}: {status}({}): {}",
        time(&failure.at),
        failure.reason,
        failure.message
    )
}

fn time(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn plural(count: u64) -> &'static str {
    if count == 1 { "" } else { "s" }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventKind {
    Normal,
    Warning,
}
use EventKind::{Normal, Warning};

/// Says an Event: posted to Kubernetes when this process has a client, else logged.
fn say(
    ctx: &Arc<Context>,
    kind: &'static str,
    namespace: &str,
    name: &str,
    type_: EventKind,
    reason: &str,
    note: String,
) {
    let note = rivulet_broker::health::bounded(&note);
    let Some(client) = ctx.kube_client() else {
        match type_ {
            Warning => tracing::warn!(kind, %namespace, %name, reason, %note, "delivery health"),
            Normal => tracing::info!(kind, %namespace, %name, reason, %note, "delivery health"),
        }
        return;
    };
    let regarding = ObjectReference {
        api_version: Some(Context::kind(kind).api_version()),
        kind: Some(kind.to_string()),
        namespace: Some(namespace.to_string()),
        name: Some(name.to_string()),
        uid: ctx.delivery_health.uid(kind, namespace, name),
        ..ObjectReference::default()
    };
    let now = k8s_openapi::jiff::Timestamp::now();
    let instance = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| REPORTER.to_string());
    let event = K8sEvent {
        metadata: ObjectMeta {
            // Unique per Event, as Kubernetes' own recorders name them.
            name: Some(format!("{name}.{:x}", now.as_nanosecond())),
            namespace: Some(namespace.to_string()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(now)),
        action: Some("Deliver".into()),
        reason: Some(reason.to_string()),
        note: Some(note),
        regarding: Some(regarding),
        reporting_controller: Some(REPORTER.into()),
        reporting_instance: Some(instance),
        type_: Some(
            match type_ {
                Normal => "Normal",
                Warning => "Warning",
            }
            .into(),
        ),
        ..K8sEvent::default()
    };
    let events: Api<K8sEvent> = Api::namespaced(client, namespace);
    let reason = reason.to_string();
    // In the background: the reporter never waits on the API server.
    tokio::spawn(async move {
        if let Err(error) = events.create(&PostParams::default(), &event).await {
            tracing::warn!(%error, %reason, "could not publish a Kubernetes Event");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_occurrences_wait_for_the_window_then_are_said_together() {
        let start = Instant::now();
        let mut limited = Limited::default();
        assert_eq!(limited.due(start), None, "nothing to say");
        limited.add(2);
        assert_eq!(limited.due(start), Some(2));
        limited.add(5);
        assert_eq!(limited.due(start + Duration::from_secs(10)), None);
        limited.add(1);
        assert_eq!(limited.due(start + EVENT_WINDOW), Some(6));
    }

    #[test]
    fn a_trigger_fails_after_three_in_a_row_or_after_a_minute_of_failures() {
        let snapshot = |in_row, ago: Option<i64>| TriggerSnapshot {
            in_row,
            failing_since: ago.map(|s| Utc::now() - chrono::Duration::seconds(s)),
            ..TriggerSnapshot::default()
        };
        assert!(!is_failing(&snapshot(0, None)));
        assert!(!is_failing(&snapshot(2, Some(5))));
        assert!(is_failing(&snapshot(3, Some(5))));
        assert!(is_failing(&snapshot(1, Some(61))));
    }

    #[test]
    fn a_failure_is_described_with_time_status_reason_and_message() {
        let note = FailureNote {
            at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            status: Some(500),
            reason: "status",
            message: "subscriber answered 500".into(),
            dead_lettered: true,
        };
        assert_eq!(
            describe(&note),
            "2027-01-15T08:00:00Z: 500 (status): subscriber answered 500"
        );
    }
}
