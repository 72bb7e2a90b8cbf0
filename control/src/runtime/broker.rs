//! Broker reconciler: picks and opens the broker's channel, publishes its address, and
//! re-reconciles the broker's triggers.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::drain::{self, DrainReport};
use super::{Action, Context, Reconcile, ReconcileError, Reconciler, generation};
use rivulet_broker::brokers::BrokerHandle;
use rivulet_core::features;
use rivulet_core::resources::validation::typed;
use rivulet_core::resources::{
    BROKER_CLASS_ANNOTATION, Broker, BrokerStatus, Condition, KReference,
};
use rivulet_store::object_key;

/// Which channel backend a broker uses, and its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendChoice {
    pub backend: String,
    pub settings: BTreeMap<String, String>,
}

/// The byte bound of memory channels whose broker config sets no `maxBytes`
/// (`--memory-channel-max-bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryChannelMaxBytes(pub u64);

impl Default for MemoryChannelMaxBytes {
    fn default() -> Self {
        Self(rivulet_channels::memory::DEFAULT_MAX_BYTES)
    }
}

/// A channel per broker, its address and its policies.
pub struct BrokerReconciler;

impl Reconcile for BrokerReconciler {
    type Resource = Broker;
    const AFTER: &'static [&'static str] =
        &["ConfigMap", "Secret", "RabbitmqBrokerConfig", "EventPolicy"];

    async fn reconcile(
        broker: Broker,
        object: &Value,
        ctx: &Arc<Context>,
    ) -> Result<Action, ReconcileError> {
        ctx.ensure_finalizer(Context::kind("Broker"), object)
            .await?;
        let (namespace, name) = object_key(object);
        let oidc = ctx.settings.features.current().authentication_oidc;
        let audience = oidc.then(|| {
            rivulet_broker::auth::audience("eventing.knative.dev", "Broker", &namespace, &name)
        });
        let (address, addresses) = ctx
            .settings
            .addresses_at(&format!("/{namespace}/{name}"), audience);
        let mut parts = Vec::new();
        let mut action = Action::AwaitChange;

        match choose_backend(&broker, &namespace, ctx).await {
            Err(reason) => {
                parts.push(Condition::new(
                    "IngressReady",
                    false,
                    "BackendConfigInvalid",
                    reason,
                ));
                drop_handle(&namespace, &name, ctx);
            }
            Ok(choice) => {
                let fingerprint = format!("{}:{:?}", choice.backend, choice.settings);
                let existing = ctx.brokers.get(&namespace, &name);
                let channel = match existing {
                    Some(handle) if handle.config_fingerprint == fingerprint => {
                        Ok(handle.channel.clone())
                    }
                    other => {
                        if other.is_some() {
                            drop_handle(&namespace, &name, ctx);
                        }
                        rivulet_channels::open(
                            &choice.backend,
                            rivulet_channels::ChannelConfig {
                                namespace: namespace.clone(),
                                broker: name.clone(),
                                data_dir: ctx.settings.data_dir.clone(),
                                settings: choice.settings.clone(),
                            },
                        )
                        .await
                    }
                };
                match channel {
                    Err(error) => {
                        parts.push(Condition::new(
                            "IngressReady",
                            false,
                            "ChannelUnavailable",
                            format!("{} channel: {error}", choice.backend),
                        ));
                        action = Action::Requeue(Duration::from_secs(5));
                    }
                    Ok(channel) => {
                        let backend = rivulet_channels::backend(&choice.backend)
                            .map(|b| b.name)
                            .unwrap_or("unknown");
                        let dead_letter = match broker
                            .spec
                            .delivery
                            .as_ref()
                            .and_then(|d| d.dead_letter_sink.as_ref())
                        {
                            None => None,
                            Some(sink) => Some(
                                ctx.resolve_for(object, "/status/deadLetterSinkUri", sink)
                                    .await,
                            ),
                        };
                        let dead_letter_uri =
                            dead_letter.as_ref().and_then(|r| r.as_ref().ok()).cloned();
                        if let Some(Err(reason)) = &dead_letter {
                            parts.push(Condition::new(
                                "DeadLetterSinkResolved",
                                false,
                                "Unresolved",
                                reason.clone(),
                            ));
                            action = Action::Requeue(Duration::from_secs(5));
                        } else if dead_letter.is_some() {
                            parts.push(Condition::new("DeadLetterSinkResolved", true, "", ""));
                        }
                        let channel_fault = channel.storage_fault();
                        ctx.brokers.insert(Arc::new(BrokerHandle {
                            namespace: namespace.clone(),
                            name: name.clone(),
                            backend,
                            channel,
                            delivery: broker.spec.delivery.clone(),
                            dead_letter_uri,
                            config_fingerprint: fingerprint,
                            labels: broker.metadata.labels.clone().unwrap_or_default(),
                        }));
                        let ingress_ready = match channel_fault {
                            None => Condition::new(
                                "IngressReady",
                                true,
                                "",
                                format!("{backend} channel"),
                            ),
                            Some(fault) => {
                                // Checked again when the fault goes (see `storage::watch`) and
                                // meanwhile now and then.
                                action = Action::Requeue(Duration::from_secs(5));
                                let reason = if fault.full {
                                    "StorageFull"
                                } else {
                                    "StorageFailed"
                                };
                                Condition::new("IngressReady", false, reason, fault.message)
                            }
                        };
                        parts.insert(0, ingress_ready);
                        parts.insert(1, Condition::new("Addressable", true, "", ""));
                    }
                }
            }
        }

        let ready = parts.iter().all(Condition::is_true);
        let target = rivulet_broker::auth::TargetRef {
            group: "eventing.knative.dev".into(),
            kind: "Broker".into(),
            namespace: namespace.clone(),
            name: name.clone(),
            labels: broker.metadata.labels.clone().unwrap_or_default(),
        };
        let (policies, policies_ready) = super::eventpolicy::policies_status(ctx, &target);
        parts.push(policies_ready);
        if let Some(cap) = ctx
            .extensions
            .get_or_default::<CappedBrokers>()
            .get(&namespace, &name)
        {
            // Informational: the broker works, only discovery stopped for new types.
            parts.push(Condition {
                severity: Some("Info".into()),
                ..Condition::new(
                    "EventTypesAutoCreated",
                    false,
                    "CapReached",
                    format!(
                        "{cap} EventTypes were auto-created for this broker, the most allowed (--eventtype-max-per-broker); events of new types are accepted but get no EventType (counted in rivulet_eventtypes_capped_total)"
                    ),
                )
            });
        }
        let status = BrokerStatus {
            observed_generation: generation(object),
            conditions: rivulet_core::resources::BROKER_CONDITIONS.summarize(parts),
            address: ready.then_some(address),
            addresses: addresses.filter(|_| ready),
            policies,
            dead_letter_sink_uri: ctx
                .brokers
                .get(&namespace, &name)
                .and_then(|h| h.dead_letter_uri.clone()),
            annotations: None,
        };
        ctx.write_status(Context::kind("Broker"), &namespace, &name, json!(status))
            .await?;
        reconcile_triggers_of(&namespace, &name, ctx).await;
        Ok(action)
    }

    /// A broker is gone: close its ingress, stop its triggers and, where this process owns
    /// backend resources, drain what their subscriptions still hold (grace for deliveries in
    /// flight, the rest to the dead-letter sinks or counted dropped) and remove its channel's
    /// storage (topic, exchange, stream, log).
    async fn cleanup(object: &Value, ctx: &Arc<Context>) -> Result<(), ReconcileError> {
        let (namespace, name) = object_key(object);
        let handle = ctx.brokers.remove(&namespace, &name);
        // The consumers are taken here so that the drain stops them, not the triggers' reconcile.
        let kind = Context::kind("Trigger");
        let mut triggers = Vec::new();
        for trigger in ctx.store.list(kind, Some(&namespace)).await? {
            if trigger.pointer("/spec/broker").and_then(Value::as_str) == Some(name.as_str()) {
                let running = ctx.take_trigger(&namespace, &object_key(&trigger).1).await;
                // Not ready any more: the broker is gone.
                Box::pin(ctx.reconcile_applied(kind, &trigger)).await;
                triggers.push((trigger, running));
            }
        }
        let Some(handle) = handle.filter(|_| ctx.role().owns_backend_resources()) else {
            for running in triggers.into_iter().filter_map(|(_, running)| running) {
                tokio::spawn(running.stop_for_good(ctx.settings.delete_grace));
            }
            ctx.deletions
                .finish("Broker", &namespace, &name, DrainReport::default());
            return Ok(());
        };
        let work = {
            let ctx = ctx.clone();
            async move {
                let report = drain::drain_triggers(&ctx, &handle.channel, triggers).await;
                if report != DrainReport::default() {
                    tracing::info!(
                        %namespace,
                        broker = %name,
                        drained = report.drained,
                        dead_lettered = report.dead_lettered,
                        dropped = report.dropped,
                        "broker deleted with undelivered events"
                    );
                }
                let destroyed = handle.channel.destroy().await;
                ctx.deletions.finish("Broker", &namespace, &name, report);
                destroyed.map_err(ReconcileError::from)
            }
        };
        super::run_deletion(ctx, "Broker", object, work).await
    }
}

/// An object brokers name in `spec.config` (a ConfigMap, Secret or RabbitmqBrokerConfig):
/// when it changes, the brokers that name it are reconciled again, after what else the kind
/// is used for has followed the change.
pub struct ConfigReconciler<K>(std::marker::PhantomData<K>);

/// What else a kind of config object is used for, told of each change.
pub trait ConfigUse: Send + Sync + 'static {
    /// `object` was applied (`current` is `Some(object)`) or deleted (`None`).
    fn changed(_object: &Value, _current: Option<&Value>, _ctx: &Arc<Context>) {}
}

/// A ConfigMap may also be a trust bundle for delivery.
pub struct ConfigMapUse;

impl ConfigUse for ConfigMapUse {
    fn changed(object: &Value, current: Option<&Value>, ctx: &Arc<Context>) {
        match current {
            Some(_) => super::trust::config_map_applied(object, ctx),
            None => super::trust::config_map_deleted(object, ctx),
        }
    }
}

/// A Secret may also hold the serving certificate.
pub struct SecretUse;

impl ConfigUse for SecretUse {
    fn changed(object: &Value, current: Option<&Value>, ctx: &Arc<Context>) {
        super::tls_secret::secret_changed(object, current, ctx);
    }
}

/// A RabbitmqBrokerConfig is only ever a broker's configuration.
pub struct RabbitmqBrokerConfigUse;

impl ConfigUse for RabbitmqBrokerConfigUse {}

impl<K: ConfigUse> Reconcile for ConfigReconciler<K> {
    type Resource = Value;

    async fn reconcile(
        _: Value,
        object: &Value,
        ctx: &Arc<Context>,
    ) -> Result<Action, ReconcileError> {
        K::changed(object, Some(object), ctx);
        reconcile_config_users(object, ctx).await
    }

    async fn cleanup(object: &Value, ctx: &Arc<Context>) -> Result<(), ReconcileError> {
        K::changed(object, None, ctx);
        reconcile_config_users(object, ctx).await.map(|_| ())
    }
}

inventory::submit! { Reconciler::of::<BrokerReconciler>("Broker") }
inventory::submit! { Reconciler::of::<ConfigReconciler<ConfigMapUse>>("ConfigMap") }
inventory::submit! { Reconciler::of::<ConfigReconciler<SecretUse>>("Secret") }
inventory::submit! {
    Reconciler::of::<ConfigReconciler<RabbitmqBrokerConfigUse>>("RabbitmqBrokerConfig")
}

fn drop_handle(namespace: &str, name: &str, ctx: &Context) {
    if ctx.brokers.remove(namespace, name).is_some() {
        tracing::info!(%namespace, broker = %name, "broker channel closed");
    }
}

/// Reconciles the triggers that name this broker.
async fn reconcile_triggers_of(namespace: &str, broker: &str, ctx: &Arc<Context>) {
    // A resync reconciles every trigger after the brokers: doing it here too would double
    // the work of a start with thousands of triggers.
    if Context::in_resync() {
        return;
    }
    let kind = Context::kind("Trigger");
    let Ok(triggers) = ctx.store.list(kind, Some(namespace)).await else {
        return;
    };
    for trigger in triggers {
        if trigger.pointer("/spec/broker").and_then(Value::as_str) == Some(broker) {
            Box::pin(ctx.reconcile_applied(kind, &trigger)).await;
        }
    }
}

/// A ConfigMap or Secret changed: reconcile the brokers whose `spec.config` names it.
pub async fn reconcile_config_users(
    config: &Value,
    ctx: &Arc<Context>,
) -> Result<Action, ReconcileError> {
    let (namespace, name) = object_key(config);
    let (namespace, name) = (namespace.as_str(), name.as_str());
    if (namespace, name) == (features::CONFIG_NAMESPACE, features::CONFIG_NAME)
        && config.get("kind").and_then(Value::as_str) == Some("ConfigMap")
        && ctx.refresh_features().await
    {
        // Addresses, audiences and policies depend on the flags: reconcile everything, in a
        // task of its own since this runs inside a reconcile.
        let ctx = ctx.clone();
        tokio::spawn(async move { ctx.resync().await });
    }
    let kind = Context::kind("Broker");
    for broker in ctx.store.list(kind, None).await? {
        let (broker_ns, _) = object_key(&broker);
        let config_ns = broker
            .pointer("/spec/config/namespace")
            .and_then(Value::as_str)
            .unwrap_or(&broker_ns);
        let config_kind = config.get("kind").and_then(Value::as_str);
        if config_ns == namespace
            && broker.pointer("/spec/config/name").and_then(Value::as_str) == Some(name)
            && broker.pointer("/spec/config/kind").and_then(Value::as_str) == config_kind
        {
            Box::pin(ctx.reconcile_applied(kind, &broker)).await;
        }
    }
    Ok(Action::AwaitChange)
}

/// Maps the broker class (and its `spec.config`) to a channel backend, as DESIGN.md's table
/// says; each backend registers the class and channel kind it serves. No class, or
/// `MTChannelBasedBroker` without a channel template, is the embedded log.
pub async fn choose_backend(
    broker: &Broker,
    namespace: &str,
    ctx: &Context,
) -> Result<BackendChoice, String> {
    let class = broker
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(BROKER_CLASS_ANNOTATION))
        .map(String::as_str)
        .unwrap_or("");
    let settings = match &broker.spec.config {
        Some(reference) => Some(read_config(reference, namespace, ctx).await?),
        None => None,
    };
    let backend = match class {
        "" | "MTChannelBasedBroker" => match settings
            .as_ref()
            .and_then(|s| s.get("channel-template-spec"))
        {
            None => "embedded".to_string(),
            Some(template) => channel_template_backend(template)?,
        },
        class => {
            let Some(backend) = rivulet_channels::backend_for_broker_class(class) else {
                let mut classes = rivulet_channels::served_names(|b| b.broker_class);
                classes.insert(0, "MTChannelBasedBroker");
                return Err(format!(
                    "broker class {class:?} is not served; use {}, or no class for the embedded log",
                    classes.join(", ")
                ));
            };
            if settings.is_none() {
                return Err(format!(
                    "broker class {class} needs spec.config naming its backend configuration"
                ));
            }
            backend.name.to_string()
        }
    };
    let mut settings = settings.unwrap_or_default();
    if backend == "memory" {
        // The server-wide default, unless the broker's config sets its own.
        settings
            .entry(rivulet_channels::memory::MAX_BYTES_KEY.to_owned())
            .or_insert_with(|| {
                ctx.extensions
                    .get_or_default::<MemoryChannelMaxBytes>()
                    .0
                    .to_string()
            });
    }
    Ok(BackendChoice { backend, settings })
}

/// The backend a Knative channel template (`channel-template-spec`) names.
fn channel_template_backend(template: &str) -> Result<String, String> {
    let parsed: Value = serde_saphyr::from_str(template)
        .map_err(|e| format!("channel-template-spec is not valid YAML: {e}"))?;
    let Some(kind) = parsed.get("kind").and_then(Value::as_str) else {
        return Err("channel-template-spec has no kind".into());
    };
    match rivulet_channels::backend_for_channel_kind(kind) {
        Some(backend) => Ok(backend.name.to_string()),
        None => Err(format!(
            "channel-template-spec kind {kind:?} is not served; use {}",
            rivulet_channels::served_names(|b| b.channel_kind).join(", ")
        )),
    }
}

/// Knative's installation-wide channel ConfigMap for channel-based brokers.
pub const DEFAULT_CHANNEL_CONFIG: (&str, &str) = ("knative-eventing", "config-br-default-channel");

fn is_default_channel_config(kind: &str, namespace: &str, name: &str) -> bool {
    kind == "ConfigMap" && (namespace, name) == DEFAULT_CHANNEL_CONFIG
}

/// The string data of the ConfigMap or Secret a broker's `spec.config` names.
pub async fn read_config(
    reference: &KReference,
    namespace: &str,
    ctx: &Context,
) -> Result<BTreeMap<String, String>, String> {
    let ns = reference.namespace.as_deref().unwrap_or(namespace);
    let kind = match reference.kind.as_str() {
        "ConfigMap" => Context::kind("ConfigMap"),
        "Secret" => Context::kind("Secret"),
        "RabbitmqBrokerConfig" => {
            return Box::pin(read_rabbitmq_broker_config(&reference.name, ns, ctx)).await;
        }
        other => {
            return Err(format!(
                "spec.config kind {other:?} is not served; name a ConfigMap or Secret (or a RabbitmqBrokerConfig)"
            ));
        }
    };
    let found = ctx
        .store
        .get(kind, ns, &reference.name)
        .await
        .map_err(|e| e.to_string())?;
    let object = match found {
        Some(object) => object,
        // Knative installs this ConfigMap and its samples name it; without one applied here,
        // it stands for Rivulet's default channel, the embedded log.
        None if is_default_channel_config(kind.kind, ns, &reference.name) => {
            return Ok(BTreeMap::new());
        }
        None => {
            return Err(format!(
                "spec.config: {} {ns}/{} does not exist",
                kind.kind, reference.name
            ));
        }
    };
    let mut data = BTreeMap::new();
    if kind.kind == "Secret" {
        let values = rivulet_core::resources::secret::secret_values(&object)
            .map_err(|e| format!("Secret {ns}/{}: {e}", reference.name))?;
        for (key, value) in values {
            let text = String::from_utf8(value)
                .map_err(|_| format!("Secret {ns}/{}: data.{key} is not UTF-8", reference.name))?;
            data.insert(key, text);
        }
    } else if let Some(map) = object.get("data").and_then(Value::as_object) {
        for (key, value) in map {
            data.insert(key.clone(), value.as_str().unwrap_or_default().to_string());
        }
    }
    Ok(data)
}

/// The settings a Knative `RabbitmqBrokerConfig` gives: `uri` from its connection Secret,
/// `queueType` from its spec.
async fn read_rabbitmq_broker_config(
    name: &str,
    namespace: &str,
    ctx: &Context,
) -> Result<BTreeMap<String, String>, String> {
    use rivulet_core::resources::rabbitmq_broker_config::RabbitmqBrokerConfig;
    let object = ctx
        .store
        .get(Context::kind("RabbitmqBrokerConfig"), namespace, name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!("spec.config: RabbitmqBrokerConfig {namespace}/{name} does not exist")
        })?;
    let config: RabbitmqBrokerConfig = typed(&object).map_err(|e| e.to_string())?;
    let reference = &config.spec.rabbitmq_cluster_reference;
    let secret = reference.connection_secret.as_ref().ok_or_else(|| {
        format!("RabbitmqBrokerConfig {namespace}/{name}: only rabbitmqClusterReference.connectionSecret is served")
    })?;
    let secret_reference = KReference {
        kind: "Secret".into(),
        namespace: Some(
            reference
                .namespace
                .clone()
                .unwrap_or_else(|| namespace.to_owned()),
        ),
        name: secret.name.clone(),
        api_version: None,
        group: None,
    };
    let data = read_config(&secret_reference, namespace, ctx).await?;
    let uri = rivulet_channels::rabbitmq::link::uri_from_secret(&data)
        .map_err(|e| format!("RabbitmqBrokerConfig {namespace}/{name}: {e}"))?;
    let mut settings = BTreeMap::from([("uri".to_owned(), uri)]);
    if let Some(queue_type) = config.spec.queue_type {
        settings.insert("queueType".into(), queue_type);
    }
    Ok(settings)
}

/// Brokers at their cap of auto-created EventTypes, with the cap: filled by the discovery
/// worker, shown by the Broker reconciler as an informational condition.
#[derive(Clone, Default)]
pub struct CappedBrokers(Arc<Mutex<HashMap<(String, String), usize>>>);

impl CappedBrokers {
    /// Records whether a broker is at its cap; true when that changed.
    pub fn set(&self, namespace: &str, broker: &str, cap: Option<usize>) -> bool {
        let mut capped = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = (namespace.to_string(), broker.to_string());
        match cap {
            Some(max) => capped.insert(key, max) != Some(max),
            None => capped.remove(&key).is_some(),
        }
    }

    /// The cap a broker is at, if it is.
    pub fn get(&self, namespace: &str, broker: &str) -> Option<usize> {
        let capped = self.0.lock().unwrap_or_else(|e| e.into_inner());
        capped
            .get(&(namespace.to_string(), broker.to_string()))
            .copied()
    }
}
