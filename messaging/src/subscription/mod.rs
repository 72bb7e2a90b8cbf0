//! `Subscription` (`messaging.knative.dev/v1`): one consumer of a channel with its own
//! delivery (retries, backoff, dead-letter sink; the channel's `delivery` where it sets none)
//! whose subscriber's replies go to its `reply`. Without a subscriber, events go to `reply`
//! as they are, as in Knative.

use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::channel::{CHANNEL_KINDS, channel_key};
use rivulet_broker::delivery::DeliveryPolicy;
use rivulet_broker::dispatcher::{self, ReplyRoute, TriggerDispatch};
use rivulet_channels::SubscriptionSpec as ChannelSubscription;
use rivulet_control::runtime::{
    Action, Context, DeliveryShape, Reconcile, ReconcileError, generation,
};
use rivulet_core::filter::Filter;
use rivulet_core::knative_kind;
use rivulet_core::resources::validation::{
    ValidationError, typed, validate_delivery, validate_delivery_annotations, validate_destination,
    validate_metadata,
};
use rivulet_core::resources::{
    Condition, ConditionSet, DeliverySpec, Destination, KReference, apply, find_kind_by_name,
    skip_serializing_none,
};
use rivulet_store::object_key;

/// Knative's `Subscription`.
#[apply(knative_kind!)]
#[kube(
    group = "messaging.knative.dev",
    version = "v1",
    kind = "Subscription",
    status = "SubscriptionStatus",
    category = "messaging"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// The channel, in the Subscription's namespace (`apiVersion`, `kind`, `name`).
    pub channel: KReference,
    /// Where each event goes; without it, events go to `reply` as they are.
    pub subscriber: Option<Destination>,
    /// Where the subscriber's replies go; without it they are dropped.
    pub reply: Option<Destination>,
    /// Retries, backoff and dead-letter sink; the channel's `delivery` when unset.
    pub delivery: Option<DeliverySpec>,
}

/// The resolved addresses a Subscription delivers with (Knative's `physicalSubscription`).
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PhysicalSubscription {
    pub subscriber_uri: Option<String>,
    #[serde(rename = "subscriberCACerts")]
    pub subscriber_ca_certs: Option<String>,
    pub reply_uri: Option<String>,
    #[serde(rename = "replyCACerts")]
    pub reply_ca_certs: Option<String>,
    pub dead_letter_sink_uri: Option<String>,
    #[serde(rename = "deadLetterSinkCACerts")]
    pub dead_letter_sink_ca_certs: Option<String>,
    /// The delivery in force (the Subscription's own, else the channel's).
    pub delivery: Option<DeliverySpec>,
}

#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionStatus {
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub physical_subscription: PhysicalSubscription,
}

/// What a Subscription's `Ready` depends on (Knative's condition types).
pub const SUBSCRIPTION_CONDITIONS: ConditionSet =
    ConditionSet::new(&["ChannelReady", "Resolved", "AddedToChannel"]);

fn validate_subscription(new: &Value, old: Option<&Value>) -> Result<(), ValidationError> {
    validate_metadata(new)?;
    let subscription: Subscription = typed(new)?;
    validate_delivery_annotations(&subscription.metadata)?;
    let spec = &subscription.spec;
    if spec.channel.name.is_empty() {
        return Err(ValidationError::new("spec.channel.name", "is required"));
    }
    if spec
        .channel
        .namespace
        .as_deref()
        .is_some_and(|n| !n.is_empty())
    {
        return Err(ValidationError::new(
            "spec.channel.namespace",
            "must be unset: a Subscription's channel is in its own namespace",
        ));
    }
    // Moving a Subscription to another channel is no atomic change (it may span storage
    // systems): Knative has it deleted and created again.
    if let Some(old) = old
        && old.pointer("/spec/channel") != new.pointer("/spec/channel")
    {
        return Err(ValidationError::new(
            "spec.channel",
            "is immutable; delete the Subscription and create it again to change it",
        ));
    }
    if spec.channel.kind != "Channel" && !CHANNEL_KINDS.contains(&spec.channel.kind.as_str()) {
        return Err(ValidationError::new(
            "spec.channel.kind",
            format!(
                "{:?} is not a channel kind Rivulet serves; use Channel or one of {}",
                spec.channel.kind,
                CHANNEL_KINDS.join(", ")
            ),
        ));
    }
    if spec.subscriber.is_none() && spec.reply.is_none() {
        return Err(ValidationError::new(
            "spec",
            "needs a subscriber or a reply (or both)",
        ));
    }
    if let Some(subscriber) = &spec.subscriber {
        validate_destination("spec.subscriber", subscriber)?;
    }
    if let Some(reply) = &spec.reply {
        validate_destination("spec.reply", reply)?;
    }
    if let Some(delivery) = &spec.delivery {
        validate_delivery("spec.delivery", delivery)?;
    }
    Ok(())
}

/// The key of a Subscription's consumer among the runtime's running consumers, which it
/// shares with triggers (whose names cannot hold a colon).
pub fn consumer_key(name: &str) -> String {
    format!("subscription:{name}")
}

/// The name of a Subscription's subscription on its channel's backend.
fn backend_subscription(name: &str) -> String {
    format!("subscription-{name}")
}

/// A resolved destination of the Subscription, or why not.
async fn resolve(
    ctx: &Context,
    object: &Value,
    field: &str,
    destination: &Destination,
) -> Result<(String, Option<String>), String> {
    let (uri, ca_certs) = ctx
        .resolve_for_with_ca(
            object,
            &format!("/status/physicalSubscription/{field}Uri"),
            &format!("/status/physicalSubscription/{field}CACerts"),
            destination,
        )
        .await?;
    // The controller writes an empty URI for what it could not resolve.
    if uri.is_empty() {
        return Err(format!("the controller could not resolve the {field} yet"));
    }
    Ok((uri, ca_certs))
}

/// The reconciler of Subscriptions.
pub struct SubscriptionReconciler;

impl Reconcile for SubscriptionReconciler {
    type Resource = Subscription;
    const AFTER: &'static [&'static str] = &[
        // A reply or subscriber may be a broker, whose address it needs.
        "Broker",
        "InMemoryChannel",
        "EmbeddedChannel",
        "KafkaChannel",
        "NatsJetStreamChannel",
        "RabbitmqChannel",
        "Channel",
    ];
    const BEFORE: &'static [&'static str] = &["Trigger"];

    async fn reconcile(
        subscription: Subscription,
        object: &Value,
        ctx: &Arc<Context>,
    ) -> Result<Action, ReconcileError> {
        let kind = Context::kind("Subscription");
        ctx.ensure_finalizer(kind, object).await?;
        let (namespace, name) = object_key(object);
        let spec = &subscription.spec;
        let mut parts = Vec::new();
        let mut physical = PhysicalSubscription::default();
        let mut action = Action::AwaitChange;
        let retry_later = Action::Requeue(Duration::from_secs(5));

        let channel_kind =
            find_kind_by_name(spec.channel.api_version.as_deref(), &spec.channel.kind)
                .or_else(|| find_kind_by_name(None, &spec.channel.kind));
        let channel_object = match channel_kind {
            Some(channel_kind) => {
                ctx.store
                    .get(channel_kind, &namespace, &spec.channel.name)
                    .await?
            }
            None => None,
        };
        let key = channel_key(&spec.channel.name);
        let handle = channel_object
            .as_ref()
            .and_then(|_| ctx.brokers.get(&namespace, &key));
        match (&channel_object, &handle) {
            (None, _) => {
                parts.push(Condition::new(
                    "ChannelReady",
                    false,
                    "ChannelNotFound",
                    format!(
                        "{} {namespace}/{} does not exist",
                        spec.channel.kind, spec.channel.name
                    ),
                ));
                action = retry_later;
            }
            (Some(_), None) => {
                parts.push(Condition::new(
                    "ChannelReady",
                    false,
                    "ChannelNotReady",
                    format!(
                        "{} {namespace}/{} is not ready",
                        spec.channel.kind, spec.channel.name
                    ),
                ));
                action = retry_later;
            }
            (Some(_), Some(_)) => parts.push(Condition::new("ChannelReady", true, "", "")),
        }

        let mut problems = Vec::new();
        let subscriber = match &spec.subscriber {
            Some(destination) => match resolve(ctx, object, "subscriber", destination).await {
                Ok(resolved) => Some(resolved),
                Err(reason) => {
                    problems.push(format!("subscriber: {reason}"));
                    None
                }
            },
            None => None,
        };
        let reply = match &spec.reply {
            Some(destination) => match resolve(ctx, object, "reply", destination).await {
                Ok(resolved) => Some(resolved),
                Err(reason) => {
                    problems.push(format!("reply: {reason}"));
                    None
                }
            },
            None => None,
        };
        // The Subscription's delivery replaces the channel's entirely when it sets anything.
        let delivery = match &spec.delivery {
            Some(own) if own.is_set() => Some(own.clone()),
            _ => channel_object
                .as_ref()
                .and_then(|c| c.pointer("/spec/delivery"))
                .and_then(|d| serde_json::from_value::<DeliverySpec>(d.clone()).ok()),
        };
        let dead_letter = match delivery.as_ref().and_then(|d| d.dead_letter_sink.as_ref()) {
            Some(sink) => match resolve(ctx, object, "deadLetterSink", sink).await {
                Ok(resolved) => Some(resolved),
                Err(reason) => {
                    problems.push(format!("dead-letter sink: {reason}"));
                    None
                }
            },
            None => None,
        };
        // Knative's spec: an unresolved destination's URI is the empty string.
        let unresolved = |given: bool, resolved: &Option<(String, Option<String>)>| match resolved {
            Some((uri, _)) => Some(uri.clone()),
            None => given.then(String::new),
        };
        physical.subscriber_uri = unresolved(spec.subscriber.is_some(), &subscriber);
        physical.subscriber_ca_certs = subscriber.as_ref().and_then(|s| s.1.clone());
        physical.reply_uri = unresolved(spec.reply.is_some(), &reply);
        physical.reply_ca_certs = reply.as_ref().and_then(|r| r.1.clone());
        physical.dead_letter_sink_uri = unresolved(
            delivery
                .as_ref()
                .is_some_and(|d| d.dead_letter_sink.is_some()),
            &dead_letter,
        );
        physical.dead_letter_sink_ca_certs = dead_letter.as_ref().and_then(|d| d.1.clone());
        physical.delivery = delivery.clone();
        if problems.is_empty() {
            parts.push(Condition::new("Resolved", true, "", ""));
        } else {
            parts.push(Condition::new(
                "Resolved",
                false,
                "Unresolved",
                problems.join("; "),
            ));
            action = retry_later;
        }

        let consumer = (namespace.clone(), consumer_key(&name));
        // Where events go first: the subscriber, else the reply (then nothing follows).
        let target = match (&subscriber, &reply) {
            (Some(subscriber), reply) => Some((
                subscriber.clone(),
                match reply {
                    Some((uri, ca_certs)) => ReplyRoute::Destination {
                        uri: uri.clone(),
                        ca_certs: ca_certs.clone(),
                    },
                    None => ReplyRoute::Discard,
                },
            )),
            (None, Some(reply)) => Some((reply.clone(), ReplyRoute::Discard)),
            (None, None) => None,
        };
        match (handle, target, problems.is_empty()) {
            (Some(handle), Some(((uri, ca_certs), route)), true) => {
                let shape = DeliveryShape::from_annotations(
                    subscription.metadata.annotations.as_ref(),
                    handle.channel.has_partitions(),
                    ctx.settings.default_parallelism,
                );
                let dispatch = TriggerDispatch {
                    namespace: namespace.clone(),
                    trigger: consumer.1.clone(),
                    broker: key.clone(),
                    subscriber_uri: uri,
                    subscriber_ca_certs: ca_certs,
                    filter: Filter::Everything,
                    policy: DeliveryPolicy {
                        dead_letter_ca_certs: dead_letter.as_ref().and_then(|d| d.1.clone()),
                        // Knative's data plane: a Subscription with only a reply does not
                        // offer to take replies.
                        accepts_reply: spec.subscriber.is_some(),
                        ..DeliveryPolicy::from_spec(
                            delivery.as_ref(),
                            dead_letter.map(|d| d.0),
                            &ctx.settings.delivery,
                        )
                    },
                    ordered: shape.one_at_a_time,
                    parallelism: shape.parallelism,
                    reply: route,
                    rate_limit: shape.rate_limit,
                };
                let channel_spec = ChannelSubscription {
                    prefilter: Filter::Everything.prefilter(),
                    max_in_flight: shape.parallelism,
                    one_per_partition: shape.per_partition,
                };
                handle
                    .channel
                    .ensure_subscription(&backend_subscription(&name), &channel_spec)
                    .await?;
                let fingerprint = format!(
                    "{:p}|{}|{dispatch:?}|{channel_spec:?}",
                    Arc::as_ptr(&handle.channel),
                    handle.config_fingerprint
                );
                if ctx.role().carries_events()
                    && !ctx.is_running_with(&consumer, &fingerprint).await
                {
                    let consuming = handle.channel.consume(&backend_subscription(&name)).await?;
                    let running = dispatcher::spawn(dispatch, consuming, ctx.dispatch.clone());
                    ctx.replace_running(consumer, fingerprint, running).await;
                }
                parts.push(Condition::new("AddedToChannel", true, "", ""));
            }
            _ => {
                ctx.stop_trigger(&consumer.0, &consumer.1).await;
                parts.push(Condition::unknown(
                    "AddedToChannel",
                    "NotAdded",
                    "waiting for the channel and the destinations",
                ));
            }
        }
        let status = SubscriptionStatus {
            observed_generation: generation(object),
            conditions: SUBSCRIPTION_CONDITIONS.summarize(parts),
            physical_subscription: physical,
        };
        let status = json!(status);
        let changed = crate::status_changed(object, &status);
        ctx.write_status(kind, &namespace, &name, status).await?;
        if changed {
            // The channel lists its subscribers' readiness, and a generic Channel mirrors its
            // backing channel's list.
            if let Some(channel_kind) = channel_kind {
                ctx.requeue_now(channel_kind, &namespace, &spec.channel.name);
            }
            if let Some(backing) = channel_object
                .as_ref()
                .and_then(|c| c.pointer("/status/channel/kind"))
                .and_then(Value::as_str)
                .and_then(|k| find_kind_by_name(None, k))
            {
                ctx.requeue_now(backing, &namespace, &spec.channel.name);
            }
            crate::requeue_owners(ctx, object);
        }
        Ok(action)
    }

    /// The Subscription is gone: its consumer stops (deliveries in flight get the delete
    /// grace) and its subscription on the channel's backend, with what it still holds, is
    /// removed.
    async fn cleanup(object: &Value, ctx: &Arc<Context>) -> Result<(), ReconcileError> {
        let (namespace, name) = object_key(object);
        if let Some(running) = ctx.take_trigger(&namespace, &consumer_key(&name)).await {
            running.stop_for_good(ctx.settings.delete_grace).await;
        }
        let channel = object
            .pointer("/spec/channel/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Some(handle) = ctx
            .brokers
            .get(&namespace, &channel_key(channel))
            .filter(|_| ctx.role().owns_backend_resources())
        {
            handle
                .channel
                .delete_subscription(&backend_subscription(&name))
                .await?;
        }
        let kind = object
            .pointer("/spec/channel/kind")
            .and_then(Value::as_str)
            .and_then(|k| find_kind_by_name(None, k));
        if let Some(kind) = kind {
            ctx.requeue_now(kind, &namespace, channel);
        }
        crate::requeue_owners(ctx, object);
        Ok(())
    }
}

rivulet_control::register_kind! {
    kind: "Subscription",
    resource: Subscription,
    group: "messaging.knative.dev",
    version: "v1",
    plural: "subscriptions",
    validate: validate_subscription,
    reconciler: SubscriptionReconciler,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription(spec: Value) -> Value {
        json!({
            "apiVersion": "messaging.knative.dev/v1",
            "kind": "Subscription",
            "metadata": {"name": "s", "namespace": "default"},
            "spec": spec,
        })
    }

    #[test]
    fn a_subscription_needs_a_served_channel_and_a_subscriber_or_a_reply() {
        let channel = json!({"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel", "name": "c"});
        assert!(
            validate_subscription(
                &subscription(json!({"channel": channel, "subscriber": {"uri": "http://a/"}})),
                None
            )
            .is_ok()
        );
        assert!(
            validate_subscription(
                &subscription(json!({"channel": channel, "reply": {"uri": "http://a/"}})),
                None
            )
            .is_ok()
        );
        let neither =
            validate_subscription(&subscription(json!({"channel": channel})), None).unwrap_err();
        assert!(
            neither.message.contains("subscriber or a reply"),
            "{neither:?}"
        );
        let foreign = json!({"apiVersion": "example.com/v1", "kind": "PubSub", "name": "c"});
        let refused = validate_subscription(
            &subscription(json!({"channel": foreign, "subscriber": {"uri": "http://a/"}})),
            None,
        )
        .unwrap_err();
        assert_eq!(refused.field, "spec.channel.kind");
        assert!(validate_subscription(&subscription(json!({"channel": channel, "subscriber": {"uri": "http://a/"}, "delivery": {"retry": -1}})), None).is_err());
    }
}
