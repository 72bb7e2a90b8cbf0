//! Trigger reconciler: compiles the filter, resolves subscriber and dead-letter sink,
//! ensures the trigger's subscription on the broker's channel and runs its consumer.

use std::sync::Arc;

use rivulet_channels::SubscriptionSpec;
use serde_json::{Value, json};

use super::drain::{self, DrainReport};
use super::{Action, Context, Reconcile, ReconcileError, Reconciler, generation};
use rivulet_broker::delivery::DeliveryPolicy;
use rivulet_broker::dispatcher::{self, ReplyRoute, TriggerDispatch};
use rivulet_core::filter::Filter;
use rivulet_core::resources::{
    Condition, DELIVERY_ORDER_ANNOTATION, DEPENDENCY_ANNOTATION, PARALLELISM_ANNOTATION,
    RATE_LIMIT_ANNOTATION, Trigger, TriggerStatus, parse_dependency,
};
use rivulet_store::object_key;

/// How a consumer of a channel (a Trigger, a Subscription) delivers, from its annotations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeliveryShape {
    /// One delivery at a time in channel order (ordered, on a channel without partitions).
    pub one_at_a_time: bool,
    /// Ordered per partition: the channel hands out one event per partition at a time.
    pub per_partition: bool,
    /// Deliveries in flight at most.
    pub parallelism: usize,
    /// Deliveries per second at most.
    pub rate_limit: Option<f64>,
}

impl DeliveryShape {
    /// Reads `kafka.eventing.knative.dev/delivery.order`, `rivulet.dev/parallelism` and
    /// `rivulet.dev/rate-limit` (validated on apply). On a partitioned channel (Kafka) ordered
    /// delivery is per partition, and partitions go in parallel.
    pub fn from_annotations(
        annotations: Option<&std::collections::BTreeMap<String, String>>,
        partitioned: bool,
        default_parallelism: usize,
    ) -> Self {
        let get = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
        let ordered = get(DELIVERY_ORDER_ANNOTATION) == Some("ordered");
        let per_partition = ordered && partitioned;
        let one_at_a_time = ordered && !per_partition;
        let parallelism = if one_at_a_time {
            1
        } else {
            get(PARALLELISM_ANNOTATION)
                .and_then(|p| p.parse().ok())
                .unwrap_or(default_parallelism)
        };
        DeliveryShape {
            one_at_a_time,
            per_partition,
            parallelism,
            rate_limit: get(RATE_LIMIT_ANNOTATION)
                .and_then(|rate| rivulet_core::resources::parse_rate_limit(rate).ok()),
        }
    }
}

/// A dispatcher per trigger, consuming its broker's channel.
pub struct TriggerReconciler;

impl Reconcile for TriggerReconciler {
    type Resource = Trigger;
    const AFTER: &'static [&'static str] = &["Broker", "EventPolicy"];

    async fn reconcile(
        trigger: Trigger,
        object: &Value,
        ctx: &Arc<Context>,
    ) -> Result<Action, ReconcileError> {
        ctx.ensure_finalizer(Context::kind("Trigger"), object)
            .await?;
        let (namespace, name) = object_key(object);
        let mut parts = Vec::new();
        let mut status = TriggerStatus {
            observed_generation: generation(object),
            ..TriggerStatus::default()
        };

        let broker = ctx.brokers.get(&namespace, &trigger.spec.broker);
        match &broker {
            Some(_) => parts.push(Condition::new("BrokerReady", true, "", "")),
            None => parts.push(Condition::new(
                "BrokerReady",
                false,
                "BrokerDoesNotExist",
                format!(
                    "broker {namespace}/{} does not exist or is not ready",
                    trigger.spec.broker
                ),
            )),
        }
        // An unresolved destination may resolve later (a Service created, a Knative Service
        // becoming ready, the controller writing the URI) without any change Rivulet is told of:
        // try again after a while.
        let mut action = Action::AwaitChange;
        let retry_later = Action::Requeue(std::time::Duration::from_secs(5));
        let subscriber = ctx
            .resolve_for_with_ca(
                object,
                "/status/subscriberUri",
                "/status/subscriberCACerts",
                &trigger.spec.subscriber,
            )
            .await;
        match &subscriber {
            Ok((uri, ca_certs)) => {
                status.subscriber_uri = Some(uri.clone());
                status.subscriber_ca_certs = ca_certs.clone();
                parts.push(Condition::new("SubscriberResolved", true, "", ""));
            }
            Err(reason) => {
                parts.push(Condition::new(
                    "SubscriberResolved",
                    false,
                    "Unresolved",
                    reason.clone(),
                ));
                action = retry_later;
            }
        }
        // A trigger's delivery replaces the broker's entirely when it sets anything.
        let delivery = match &trigger.spec.delivery {
            Some(own) if own.is_set() => Some(own.clone()),
            _ => broker.as_ref().and_then(|b| b.delivery.clone()),
        };
        let mut dead_letter_uri = None;
        let mut dead_letter_ca_certs = None;
        if let Some(sink) = delivery.as_ref().and_then(|d| d.dead_letter_sink.as_ref()) {
            match ctx
                .resolve_for_with_ca(
                    object,
                    "/status/deadLetterSinkUri",
                    "/status/deadLetterSinkCACerts",
                    sink,
                )
                .await
            {
                Ok((uri, ca_certs)) => {
                    status.dead_letter_sink_uri = Some(uri.clone());
                    status.dead_letter_sink_ca_certs = ca_certs.clone();
                    dead_letter_uri = Some(uri);
                    dead_letter_ca_certs = ca_certs;
                    parts.push(Condition::new("DeadLetterSinkResolved", true, "", ""));
                }
                Err(reason) => {
                    parts.push(Condition::new(
                        "DeadLetterSinkResolved",
                        false,
                        "Unresolved",
                        reason,
                    ));
                    action = retry_later;
                }
            }
        }
        let filter = Filter::for_trigger(&trigger.spec);
        if let Err(reason) = &filter {
            parts.push(Condition::new(
                "FilterValid",
                false,
                "InvalidFilter",
                reason.clone(),
            ));
        }

        // Who the trigger sends as, and the audiences of what it sends to (Knative's names).
        let identity = rivulet_broker::auth::Identity::for_resource(
            "eventing.knative.dev",
            "Trigger",
            &namespace,
            &name,
        );
        let subscriber_audience =
            rivulet_broker::auth::destination_audience(&trigger.spec.subscriber, &namespace);
        let dead_letter_audience = delivery
            .as_ref()
            .and_then(|d| d.dead_letter_sink.as_ref())
            .and_then(|sink| rivulet_broker::auth::destination_audience(sink, &namespace));
        if ctx.settings.features.current().authentication_oidc {
            status.subscriber_audience = subscriber_audience.clone();
            status.dead_letter_sink_audience = dead_letter_audience.clone();
            status.auth = Some(rivulet_core::resources::AuthStatus {
                service_account_name: Some(identity.service_account.clone()),
            });
        }
        let delivery_auth = rivulet_broker::delivery::DeliveryAuth {
            identity,
            audience: subscriber_audience,
            dead_letter_audience,
        };

        let all_ok = parts.iter().all(Condition::is_true);
        match (broker, subscriber, filter, all_ok) {
            (Some(broker), Ok((subscriber_uri, subscriber_ca_certs)), Ok(filter), true) => {
                let shape = DeliveryShape::from_annotations(
                    trigger.metadata.annotations.as_ref(),
                    broker.channel.has_partitions(),
                    ctx.settings.default_parallelism,
                );
                let dispatch = TriggerDispatch {
                    namespace: namespace.clone(),
                    trigger: name.clone(),
                    broker: trigger.spec.broker.clone(),
                    subscriber_uri,
                    subscriber_ca_certs,
                    policy: DeliveryPolicy {
                        dead_letter_ca_certs,
                        auth: Some(delivery_auth),
                        ..DeliveryPolicy::from_spec(
                            delivery.as_ref(),
                            dead_letter_uri,
                            &ctx.settings.delivery,
                        )
                    },
                    filter,
                    ordered: shape.one_at_a_time,
                    parallelism: shape.parallelism,
                    reply: ReplyRoute::Broker,
                    rate_limit: shape.rate_limit,
                };
                let spec = SubscriptionSpec {
                    prefilter: dispatch.filter.prefilter(),
                    max_in_flight: shape.parallelism,
                    one_per_partition: shape.per_partition,
                };
                let subscription_name = subscription_name(&name);
                broker
                    .channel
                    .ensure_subscription(&subscription_name, &spec)
                    .await?;
                // Kept per running trigger: a hash of the configuration rather than its text,
                // which is kilobytes per trigger once thousands run.
                let fingerprint = {
                    use std::hash::{Hash as _, Hasher as _};
                    let mut hasher = std::collections::hash_map::DefaultHasher::new();
                    format!(
                        "{:p}|{}|{:?}|{:?}",
                        Arc::as_ptr(&broker.channel),
                        broker.config_fingerprint,
                        dispatch,
                        spec
                    )
                    .hash(&mut hasher);
                    format!("{:016x}", hasher.finish())
                };
                let key = (namespace.clone(), name.clone());
                // The controller provisions the subscription; the data plane consumes it.
                if ctx.role().carries_events() && !ctx.is_running_with(&key, &fingerprint).await {
                    let subscription = broker.channel.consume(&subscription_name).await?;
                    let running = dispatcher::spawn(dispatch, subscription, ctx.dispatch.clone());
                    ctx.replace_running(key, fingerprint, running).await;
                }
            }
            _ => ctx.stop_trigger(&namespace, &name).await,
        }

        // Part of Ready, but events flow meanwhile, as in Knative: the dependency (a source
        // that sends to the broker) only says whether the whole is up.
        let (dependency, settled) = dependency_condition(&trigger, &namespace, ctx).await;
        if !settled {
            action = retry_later;
        }
        parts.push(dependency);
        // A warning beside Ready, never part of it (it carries a severity).
        if ctx.role().writes_status()
            && let Some(known) =
                super::eventtype::event_type_condition(&*ctx.store, &namespace, &trigger.spec).await
        {
            parts.push(known);
        }
        // What deliveries have shown lately; informational, never part of Ready.
        if let Some(health) = ctx.delivery_health.condition(&namespace, &name) {
            parts.push(health);
        }
        status.conditions = rivulet_core::resources::TRIGGER_CONDITIONS.summarize(parts);
        ctx.write_status(Context::kind("Trigger"), &namespace, &name, json!(status))
            .await?;
        Ok(action)
    }

    /// A trigger is gone: stop its consumer and, where this process owns backend resources,
    /// drain what its subscription still holds (grace for deliveries in flight, the rest to the
    /// dead-letter sink or counted dropped), then remove the subscription (queue, consumer).
    async fn cleanup(object: &Value, ctx: &Arc<Context>) -> Result<(), ReconcileError> {
        let (namespace, name) = object_key(object);
        let running = ctx.take_trigger(&namespace, &name).await;
        let broker = object
            .pointer("/spec/broker")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let handle = ctx.brokers.get(&namespace, broker);
        let Some(handle) = handle.filter(|_| ctx.role().owns_backend_resources()) else {
            // The data plane lets go of what it holds (the controller drains it); without a
            // broker the broker's deletion drained it already.
            if let Some(running) = running {
                tokio::spawn(running.stop_for_good(ctx.settings.delete_grace));
            }
            ctx.deletions
                .finish("Trigger", &namespace, &name, DrainReport::default());
            return Ok(());
        };
        let work = {
            let (ctx, object) = (ctx.clone(), object.clone());
            async move {
                let report = drain::drain_trigger(&ctx, &handle.channel, &object, running).await;
                let removed = handle
                    .channel
                    .delete_subscription(&subscription_name(&name))
                    .await;
                ctx.deletions.finish("Trigger", &namespace, &name, report);
                removed.map_err(ReconcileError::from)
            }
        };
        super::run_deletion(ctx, "Trigger", object, work).await
    }
}

inventory::submit! { Reconciler::of::<TriggerReconciler>("Trigger") }

/// The `DependencyReady` condition: True without a `knative.dev/dependency` annotation, else
/// the named object's readiness (in the trigger's namespace), with Knative's reasons; and
/// whether it is settled (no need to look again until something changes).
async fn dependency_condition(
    trigger: &Trigger,
    namespace: &str,
    ctx: &Context,
) -> (Condition, bool) {
    const TYPE: &str = "DependencyReady";
    let unknown = |reason: &str, message: String| Condition::unknown(TYPE, reason, message);
    let Some(annotation) = trigger
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DEPENDENCY_ANNOTATION))
    else {
        return (Condition::new(TYPE, true, "", ""), true);
    };
    let reference = match parse_dependency(annotation) {
        Ok(reference) => reference,
        Err(message) => return (Condition::new(TYPE, false, "ReferenceError", message), true),
    };
    let group = reference
        .api_version
        .rsplit_once('/')
        .map_or("", |(g, _)| g);
    let Some(kind) = rivulet_core::resources::kinds()
        .into_iter()
        .find(|k| k.group == group && k.kind == reference.kind)
    else {
        return (
            unknown(
                "ListerDoesNotExist",
                format!(
                    "kind {} of {} is not served here, so its readiness is unknown",
                    reference.kind, reference.api_version
                ),
            ),
            false,
        );
    };
    let object = match ctx.store.get(kind, namespace, &reference.name).await {
        Ok(Some(object)) => object,
        Ok(None) => {
            let message = format!(
                "Dependency does not exist: {} {namespace}/{} not found",
                reference.kind, reference.name
            );
            return (
                Condition::new(TYPE, false, "DependencyDoesNotExist", message),
                false,
            );
        }
        Err(error) => {
            return (
                unknown(
                    "DependencyGetFailed",
                    format!("Failed to get dependency: {error}"),
                ),
                false,
            );
        }
    };
    if generation(&object)
        != object
            .pointer("/status/observedGeneration")
            .and_then(Value::as_i64)
    {
        return (
            unknown(
                "GenerationNotEqual",
                "the dependency has not reconciled its latest generation yet".into(),
            ),
            false,
        );
    }
    let ready = object
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|all| all.iter().find(|c| c["type"] == "Ready"));
    let text = |field: &str| {
        ready
            .and_then(|c| c[field].as_str())
            .unwrap_or_default()
            .to_string()
    };
    match ready.and_then(|c| c["status"].as_str()) {
        None => (
            unknown(
                "DependencyNotConfigured",
                "Dependency has not yet been reconciled.".into(),
            ),
            false,
        ),
        Some("True") => (Condition::new(TYPE, true, "", ""), true),
        Some("False") => (
            Condition::new(TYPE, false, &text("reason"), text("message")),
            false,
        ),
        Some(_) => (unknown(&text("reason"), text("message")), false),
    }
}

/// The channel subscription of a trigger.
pub fn subscription_name(trigger: &str) -> String {
    format!("trigger-{trigger}")
}
