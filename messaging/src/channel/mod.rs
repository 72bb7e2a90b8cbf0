//! Channel kinds: each opens a channel of its backend, registers it with ingress under
//! `{name}-kn-channel`, and publishes that address. One reconciler serves every kind; a kind
//! says only which backend it uses and with which settings ([`ChannelKind`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use rivulet_broker::brokers::BrokerHandle;
use rivulet_control::runtime::{Action, Context, Reconcile, ReconcileError, generation};
use rivulet_core::resources::{
    Addressable, Condition, ConditionSet, DeliverySpec, KReference, skip_serializing_none,
};
use rivulet_store::object_key;

mod generic;
mod kinds;

pub use generic::{
    Channel, ChannelSpec, ChannelTemplate, DEFAULT_CHANNEL_CONFIG, default_template, owned_by,
    owner_reference,
};
pub use kinds::{
    EmbeddedChannel, InMemoryChannel, KafkaChannel, NatsJetStreamChannel, RabbitmqChannel,
};

/// What Knative's channel service of `name` is called; Rivulet registers the channel with
/// ingress under it (broker names may not end with it, so the two never meet).
pub fn channel_key(name: &str) -> String {
    format!("{name}{}", rivulet_core::resources::CHANNEL_NAME_SUFFIX)
}

/// Every channel kind Rivulet serves, by kind name.
pub const CHANNEL_KINDS: &[&str] = &[
    "InMemoryChannel",
    "EmbeddedChannel",
    "KafkaChannel",
    "NatsJetStreamChannel",
    "RabbitmqChannel",
];

/// What a channel's `Ready` depends on.
pub const CHANNEL_CONDITIONS: ConditionSet =
    ConditionSet::new(&["DispatcherReady", "Addressable", "DeadLetterSinkResolved"]);

/// One subscriber of a channel, as Knative's channel status lists it.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct SubscriberStatus {
    pub uid: Option<String>,
    pub observed_generation: Option<i64>,
    /// `True`, `False` or `Unknown`.
    pub ready: String,
    pub message: Option<String>,
}

/// The status every channel kind has (Knative's `ChannelableStatus`).
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ChannelStatus {
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    pub address: Option<Addressable>,
    pub addresses: Option<Vec<Addressable>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribers: Vec<SubscriberStatus>,
    pub dead_letter_sink_uri: Option<String>,
    /// The channel behind a generic `Channel`.
    pub channel: Option<KReference>,
}

/// What differs between channel kinds: the backend and its settings.
pub trait ChannelKind: kube::Resource + Send + Sync + 'static {
    /// The kind's name (`InMemoryChannel`).
    const KIND: &'static str;

    /// The backend (`memory`, `kafka`, ...) and its settings.
    fn backend(
        &self,
        namespace: &str,
        ctx: &Arc<Context>,
    ) -> impl Future<Output = Result<(String, BTreeMap<String, String>), String>> + Send;

    /// `spec.delivery`: the default of the channel's subscriptions.
    fn delivery(&self) -> Option<&DeliverySpec>;

    /// The channel's labels, which EventPolicy selectors would match.
    fn labels(&self) -> BTreeMap<String, String> {
        self.meta().labels.clone().unwrap_or_default()
    }
}

/// The reconciler of channel kind `K`.
pub struct ChannelReconciler<K>(std::marker::PhantomData<K>);

impl<K> Reconcile for ChannelReconciler<K>
where
    K: ChannelKind + serde::de::DeserializeOwned,
{
    type Resource = K;
    const AFTER: &'static [&'static str] = &["ConfigMap", "Secret"];
    // A trigger's subscriber may be a channel, whose address it needs.
    const BEFORE: &'static [&'static str] = &["Trigger"];

    async fn reconcile(
        channel: K,
        object: &Value,
        ctx: &Arc<Context>,
    ) -> Result<Action, ReconcileError> {
        let kind = Context::kind(K::KIND);
        ctx.ensure_finalizer(kind, object).await?;
        let (namespace, name) = object_key(object);
        let key = channel_key(&name);
        let mut parts = Vec::new();
        let mut action = Action::AwaitChange;
        let (address, addresses) = ctx
            .settings
            .addresses_at(&format!("/{namespace}/{key}"), None);
        let mut dead_letter_uri = None;
        let mut reopened = false;
        match open(&channel, &namespace, &key, ctx).await {
            Err(reason) => {
                ctx.brokers.remove(&namespace, &key);
                parts.push(Condition::new(
                    "DispatcherReady",
                    false,
                    "ChannelUnavailable",
                    reason,
                ));
                action = Action::Requeue(Duration::from_secs(5));
            }
            Ok((backend, channel_handle, fingerprint, fresh)) => {
                reopened = fresh;
                match channel.delivery().and_then(|d| d.dead_letter_sink.as_ref()) {
                    None => parts.push(Condition::new("DeadLetterSinkResolved", true, "", "")),
                    Some(sink) => match ctx
                        .resolve_for(object, "/status/deadLetterSinkUri", sink)
                        .await
                    {
                        Ok(uri) => {
                            dead_letter_uri = Some(uri);
                            parts.push(Condition::new("DeadLetterSinkResolved", true, "", ""));
                        }
                        Err(reason) => {
                            parts.push(Condition::new(
                                "DeadLetterSinkResolved",
                                false,
                                "Unresolved",
                                reason,
                            ));
                            action = Action::Requeue(Duration::from_secs(5));
                        }
                    },
                }
                ctx.brokers.insert(Arc::new(BrokerHandle {
                    namespace: namespace.clone(),
                    name: key.clone(),
                    backend,
                    channel: channel_handle,
                    delivery: channel.delivery().cloned(),
                    dead_letter_uri: dead_letter_uri.clone(),
                    config_fingerprint: fingerprint,
                    labels: channel.labels(),
                }));
                parts.insert(
                    0,
                    Condition::new("DispatcherReady", true, "", format!("{backend} channel")),
                );
                parts.insert(1, Condition::new("Addressable", true, "", ""));
            }
        }
        let ready = parts.iter().all(Condition::is_true);
        let subscribers = subscribers_of(ctx, &namespace, &name, K::KIND).await;
        let status = ChannelStatus {
            observed_generation: generation(object),
            conditions: CHANNEL_CONDITIONS.summarize(parts),
            address: ready.then_some(address),
            addresses: addresses.filter(|_| ready),
            subscribers,
            dead_letter_sink_uri: dead_letter_uri,
            channel: None,
        };
        let status = json!(status);
        let changed = crate::status_changed(object, &status);
        ctx.write_status(kind, &namespace, &name, status).await?;
        // Subscriptions consume the channel: a new one (or one that came or went) is theirs
        // to follow; the subscribers it lists are only theirs to tell.
        if reopened || changed {
            requeue_subscriptions_of(ctx, &namespace, &name).await;
        }
        if changed {
            crate::requeue_owners(ctx, object);
        }
        Ok(action)
    }

    /// The channel is gone: its subscriptions stop, and where this process owns backend
    /// resources its storage (topic, stream, exchange, log) is removed.
    async fn cleanup(object: &Value, ctx: &Arc<Context>) -> Result<(), ReconcileError> {
        let (namespace, name) = object_key(object);
        let handle = ctx.brokers.remove(&namespace, &channel_key(&name));
        // Consumers stop before the storage goes (deliveries in flight get the delete grace):
        // a Kafka topic deleted under its consumers upsets the client.
        let kind = Context::kind("Subscription");
        for subscription in ctx.store.list(kind, Some(&namespace)).await? {
            if names_channel(&subscription, &name, K::KIND) {
                let (_, subscription_name) = object_key(&subscription);
                let consumer = crate::subscription::consumer_key(&subscription_name);
                if let Some(running) = ctx.take_trigger(&namespace, &consumer).await {
                    running.stop_for_good(ctx.settings.delete_grace).await;
                }
            }
        }
        requeue_subscriptions_of(ctx, &namespace, &name).await;
        if let Some(handle) = handle.filter(|_| ctx.role().owns_backend_resources()) {
            handle.channel.destroy().await?;
        }
        Ok(())
    }
}

/// Opens (or keeps) the channel of `key`: its backend's name, the channel, the fingerprint of
/// the configuration it was opened with, and whether it was opened now.
async fn open<K: ChannelKind>(
    channel: &K,
    namespace: &str,
    key: &str,
    ctx: &Arc<Context>,
) -> Result<
    (
        &'static str,
        Arc<dyn rivulet_channels::Channel>,
        String,
        bool,
    ),
    String,
> {
    let (backend, settings) = channel.backend(namespace, ctx).await?;
    let fingerprint = format!("{backend}:{settings:?}");
    let registered = rivulet_channels::backend(&backend)
        .map(|b| b.name)
        .ok_or_else(|| format!("channel backend {backend:?} is not built in"))?;
    if let Some(existing) = ctx.brokers.get(namespace, key)
        && existing.config_fingerprint == fingerprint
    {
        return Ok((registered, existing.channel.clone(), fingerprint, false));
    }
    let opened = rivulet_channels::open(
        &backend,
        rivulet_channels::ChannelConfig {
            namespace: namespace.to_string(),
            broker: key.to_string(),
            data_dir: ctx.settings.data_dir.clone(),
            settings,
        },
    )
    .await
    .map_err(|error| format!("{backend} channel: {error}"))?;
    Ok((registered, opened, fingerprint, true))
}

/// Whether a Subscription's `spec.channel` names the channel `name` of kind `kind` (or the
/// generic Channel of that name, which the channel backs).
fn names_channel(subscription: &Value, name: &str, kind: &str) -> bool {
    let channel = &subscription["spec"]["channel"];
    channel["name"] == name
        && channel["kind"]
            .as_str()
            .is_some_and(|k| k == kind || k == "Channel")
}

/// The Subscriptions of a channel, as its status lists them.
async fn subscribers_of(
    ctx: &Context,
    namespace: &str,
    name: &str,
    kind: &str,
) -> Vec<SubscriberStatus> {
    let Ok(subscriptions) = ctx
        .store
        .list(Context::kind("Subscription"), Some(namespace))
        .await
    else {
        return Vec::new();
    };
    subscriptions
        .iter()
        .filter(|s| names_channel(s, name, kind))
        .map(|s| {
            let ready = s["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"));
            SubscriberStatus {
                uid: s["metadata"]["uid"].as_str().map(str::to_string),
                observed_generation: generation(s),
                ready: ready
                    .and_then(|c| c["status"].as_str())
                    .unwrap_or("Unknown")
                    .to_string(),
                message: ready
                    .and_then(|c| c["message"].as_str())
                    .filter(|m| !m.is_empty())
                    .map(str::to_string),
            }
        })
        .collect()
}

/// Reconciles the Subscriptions of channel `name` again (they consume its channel).
async fn requeue_subscriptions_of(ctx: &Context, namespace: &str, name: &str) {
    let kind = Context::kind("Subscription");
    let Ok(subscriptions) = ctx.store.list(kind, Some(namespace)).await else {
        return;
    };
    for subscription in &subscriptions {
        if subscription["spec"]["channel"]["name"] == name {
            let (_, subscription_name) = object_key(subscription);
            ctx.requeue_now(kind, namespace, &subscription_name);
        }
    }
}

/// A channel kind's settings from Knative's installation-wide ConfigMap `knative-eventing/NAME`,
/// when there is one.
pub async fn installation_config(
    ctx: &Context,
    name: &str,
) -> Result<BTreeMap<String, String>, String> {
    let reference = KReference {
        kind: "ConfigMap".into(),
        namespace: Some("knative-eventing".into()),
        name: name.into(),
        ..KReference::default()
    };
    match ctx
        .store
        .get(Context::kind("ConfigMap"), "knative-eventing", name)
        .await
    {
        Ok(Some(_)) => {
            rivulet_control::runtime::read_config(&reference, "knative-eventing", ctx).await
        }
        Ok(None) => Ok(BTreeMap::new()),
        Err(error) => Err(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_name_a_channel_by_its_kind_or_as_a_generic_channel() {
        let by_kind = json!({"spec": {"channel": {"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel", "name": "orders"}}});
        let generic = json!({"spec": {"channel": {"kind": "Channel", "name": "orders"}}});
        let other = json!({"spec": {"channel": {"kind": "KafkaChannel", "name": "orders"}}});
        assert!(names_channel(&by_kind, "orders", "InMemoryChannel"));
        assert!(names_channel(&generic, "orders", "InMemoryChannel"));
        assert!(!names_channel(&other, "orders", "InMemoryChannel"));
        assert!(!names_channel(&by_kind, "refunds", "InMemoryChannel"));
        assert_eq!(channel_key("orders"), "orders-kn-channel");
    }
}
