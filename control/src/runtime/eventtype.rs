//! EventType reconciler, and the trigger side: whether a trigger's exact `type` filter names
//! a known EventType.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Action, Context, Reconcile, ReconcileError, Reconciler};
use rivulet_core::resources::eventtype::{attribute_of, broker_of};
use rivulet_core::resources::{Condition, KindInfo, TriggerSpec, find_kind_by_name};
use rivulet_store::{ResourceStore, object_key};

/// Serialises read-modify-write of EventType status between the reconciler (conditions) and
/// the discovery worker (schema, sample), so neither overwrites the other's fields.
#[derive(Clone, Default)]
pub struct StatusLock(Arc<tokio::sync::Mutex<()>>);

impl StatusLock {
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.0.lock().await
    }
}

/// The condition type a trigger gets when its filter names an exact event type.
pub const EVENT_TYPE_KNOWN: &str = "EventTypeKnown";

/// An EventType's readiness follows its broker's.
pub struct EventTypeReconciler;

impl Reconcile for EventTypeReconciler {
    type Resource = rivulet_core::resources::EventType;
    const AFTER: &'static [&'static str] = &["Broker"];

    async fn reconcile(
        _: Self::Resource,
        object: &Value,
        ctx: &Arc<Context>,
    ) -> Result<Action, ReconcileError> {
        reconcile(object, ctx).await
    }

    async fn cleanup(object: &Value, ctx: &Arc<Context>) -> Result<(), ReconcileError> {
        cleanup(object, ctx).await
    }
}

inventory::submit! { Reconciler::of::<EventTypeReconciler>("EventType") }

fn eventtype_kind() -> &'static KindInfo {
    find_kind_by_name(None, "EventType").expect("EventType is registered")
}

async fn reconcile(object: &Value, ctx: &Arc<Context>) -> Result<Action, ReconcileError> {
    let (namespace, name) = object_key(object);
    let mut parts = Vec::new();
    let mut action = Action::AwaitChange;
    if let Some(broker) = broker_of(object) {
        if ctx.brokers.get(&namespace, broker).is_some() {
            parts.push(Condition::new("BrokerReady", true, "", ""));
        } else {
            parts.push(Condition::new(
                "BrokerReady",
                false,
                "BrokerDoesNotExist",
                format!("broker {namespace}/{broker} does not exist or is not ready"),
            ));
            // Brokers do not announce readiness to EventTypes: look again later.
            action = Action::Requeue(std::time::Duration::from_secs(10));
        }
    }
    let conditions = rivulet_core::resources::EVENT_TYPE_CONDITIONS.summarize(parts);
    {
        let lock = ctx.extensions.get_or_default::<StatusLock>();
        let _guard = lock.lock().await;
        let kind = eventtype_kind();
        let current = ctx.store.get(kind, &namespace, &name).await?;
        let Some(current) = current else {
            return Ok(Action::AwaitChange);
        };
        let mut status = match current.get("status") {
            Some(Value::Object(map)) => map.clone(),
            _ => serde_json::Map::new(),
        };
        status.insert("conditions".into(), json!(conditions));
        if let Some(generation) = super::generation(object) {
            status.insert("observedGeneration".into(), json!(generation));
        }
        ctx.write_status(kind, &namespace, &name, Value::Object(status))
            .await?;
    }
    requeue_triggers(object, ctx).await?;
    Ok(action)
}

async fn cleanup(object: &Value, ctx: &Arc<Context>) -> Result<(), ReconcileError> {
    requeue_triggers(object, ctx).await
}

/// Triggers whose exact type filter names this EventType's type look again.
async fn requeue_triggers(object: &Value, ctx: &Arc<Context>) -> Result<(), ReconcileError> {
    let (namespace, _) = object_key(object);
    let Some(event_type) = attribute_of(object, "type") else {
        return Ok(());
    };
    let broker = broker_of(object);
    let trigger_kind = find_kind_by_name(None, "Trigger").expect("Trigger is registered");
    for trigger in ctx.store.list(trigger_kind, Some(&namespace)).await? {
        let Ok(spec) = serde_json::from_value::<TriggerSpec>(trigger["spec"].clone()) else {
            continue;
        };
        if broker.is_some_and(|b| b != spec.broker) {
            continue;
        }
        if exact_type_filter(&spec).as_deref() == Some(event_type) {
            let (_, name) = object_key(&trigger);
            ctx.requeue_now(trigger_kind, &namespace, &name);
        }
    }
    Ok(())
}

/// The event type a trigger's filter asks for exactly, if it does: `filter.attributes.type`,
/// or `exact.type` in one of the top-level `filters`.
pub fn exact_type_filter(spec: &TriggerSpec) -> Option<String> {
    if let Some(ty) = spec
        .filter
        .as_ref()
        .and_then(|f| f.attributes.get("type"))
        .filter(|t| !t.is_empty())
    {
        return Some(ty.clone());
    }
    spec.filters
        .iter()
        .filter_map(|f| f.exact.as_ref()?.get("type"))
        .find(|t| !t.is_empty())
        .cloned()
}

/// Whether an EventType of `event_type` exists for `broker` in `namespace` (one without a
/// broker reference counts for every broker).
pub async fn known_event_type(
    store: &dyn ResourceStore,
    namespace: &str,
    broker: &str,
    event_type: &str,
) -> bool {
    match store.list(eventtype_kind(), Some(namespace)).await {
        Ok(objects) => objects.iter().any(|o| {
            attribute_of(o, "type") == Some(event_type) && broker_of(o).is_none_or(|b| b == broker)
        }),
        // Unknown is not a warning worth raising.
        Err(_) => true,
    }
}

/// The `EventTypeKnown` condition of a trigger whose filter asks for `event_type`: a warning
/// when no EventType has that type, which never affects `Ready`.
pub async fn event_type_condition(
    store: &dyn ResourceStore,
    namespace: &str,
    spec: &TriggerSpec,
) -> Option<Condition> {
    let event_type = exact_type_filter(spec)?;
    if known_event_type(store, namespace, &spec.broker, &event_type).await {
        return Some(Condition::new(EVENT_TYPE_KNOWN, true, "", ""));
    }
    let mut condition = Condition::new(
        EVENT_TYPE_KNOWN,
        false,
        "NoMatchingEventType",
        format!(
            "no EventType of type {event_type:?} is known for broker {namespace}/{}; the filter may never match",
            spec.broker
        ),
    );
    condition.severity = Some("Warning".into());
    Some(condition)
}
