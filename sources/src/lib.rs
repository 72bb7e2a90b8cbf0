//! Source adapters: components that bring events from outside into a sink (usually a
//! broker's ingress), with Knative's source semantics (`spec.sink`, `spec.ceOverrides`,
//! `status.sinkUri`).
//!
//! Each source kind lives in its own folder with its resource type, its adapter and its
//! tests, and registers itself with `inventory`: its `KindInfo`, a `runtime::Reconciler` that
//! calls the generic [`reconcile`] and [`cleanup`] for its [`SourceKind`], and, when it
//! serves HTTP, a `runtime::routes::HttpRoutes`. Nothing here lists the kinds.
//!
//! The framework resolves `spec.sink`, writes the status (`Ready`, `SinkProvided`,
//! `Deployed`, `status.sinkUri`, `observedGeneration`) and runs one adapter task per source,
//! restarted when its configuration changes. Adapters deliver through a [`SinkClient`], which
//! applies `ceOverrides.extensions` and Knative's delivery rules (retries with backoff) and
//! answers `Ok` only once the sink took the event, so an adapter that can hold an event
//! upstream (a queue, a log) acknowledges it only then.
#![forbid(unsafe_code)]

use rivulet_core::resources::skip_serializing_none;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::StatusCode;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use rivulet_broker::delivery::{DeliveryPolicy, Outcome, Sender, is_retryable};
use rivulet_control::runtime::{self, Action, Context, ReconcileError};
use rivulet_core::event::{Event, ExtensionValue};
use rivulet_core::metrics::{AdapterLabels, Metrics};
use rivulet_core::resources::validation::ValidationError;
use rivulet_core::resources::{
    Addressable, BackoffPolicy, Condition, ConditionSet, DeliverySpec, Destination, KindInfo,
    find_kind_by_name,
};
use rivulet_store::object_key;

/// Registers a source kind, named once by its [`SourceKind`], with the generic reconciler.
/// Without `validate`, the kind's metadata and spec ([`ValidateSpec`]) are checked.
///
/// [`ValidateSpec`]: rivulet_core::resources::validation::ValidateSpec
macro_rules! register_source {
    ($resource:ty {
        group: $group:literal,
        version: $version:literal,
        plural: $plural:literal $(,)?
    }) => {
        $crate::register_source! {
            $resource {
                group: $group,
                version: $version,
                plural: $plural,
                validate: rivulet_core::resources::validation::validate_resource::<$resource>,
            }
        }
    };
    ($resource:ty {
        group: $group:literal,
        version: $version:literal,
        plural: $plural:literal,
        validate: $validate:path $(,)?
    }) => {
        rivulet_control::register_kind! {
            kind: <$resource as $crate::SourceKind>::KIND,
            resource: $resource,
            group: $group,
            version: $version,
            plural: $plural,
            validate: $validate,
            reconciler: $crate::SourceReconciler<$resource>,
        }
    };
}
pub(crate) use register_source;

pub mod apiserver;
pub mod kafka;
pub mod nats;
pub mod ping;
pub mod podspecable;
pub mod rabbitmq;
pub mod webhook;

/// The reconciler of every [`SourceKind`]: [`reconcile`] and [`cleanup`].
pub struct SourceReconciler<K>(std::marker::PhantomData<K>);

impl<K: SourceKind> runtime::Reconcile for SourceReconciler<K> {
    type Resource = K;
    const AFTER: &'static [&'static str] = RESYNC_AFTER;

    fn reconcile(
        resource: K,
        object: &Value,
        ctx: &Arc<Context>,
    ) -> impl Future<Output = Result<Action, ReconcileError>> + Send {
        reconcile::<K>(resource, object, ctx)
    }

    fn cleanup(
        object: &Value,
        ctx: &Arc<Context>,
    ) -> impl Future<Output = Result<(), ReconcileError>> + Send {
        cleanup::<K>(object, ctx)
    }
}

/// What a source's reconciler reads, resynced first: its sink is usually a broker (or a sink
/// kind, which places itself before triggers), and its triggers should be consuming before it
/// sends.
pub const RESYNC_AFTER: &[&str] = &["Broker", "Trigger", "EventPolicy"];

/// The reason of a condition saying the kind needs the Kubernetes API, which a standalone
/// server does not have. Waiting does not change that, so such a source is not retried.
pub const KUBERNETES_REQUIRED: &str = "KubernetesRequired";

/// What every source's spec has (Knative's `duckv1.SourceSpec`), flattened into each kind's
/// spec so that it is written once.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSpec {
    /// Where the source sends its events: an object reference, a URI, or a URI relative to
    /// the object's address.
    pub sink: Destination,
    /// Attributes added to every event the source sends.
    pub ce_overrides: Option<CloudEventOverrides>,
}

impl SourceSpec {
    /// Checks `spec.sink` and `spec.ceOverrides`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        rivulet_core::resources::validation::validate_destination("spec.sink", &self.sink)?;
        if let Some(overrides) = &self.ce_overrides {
            validate_ce_overrides("spec.ceOverrides", overrides)?;
        }
        Ok(())
    }

    /// Checks `spec.sink`, `spec.ceOverrides` and the kind's `spec.delivery`, when set.
    pub fn validate_with_delivery(
        &self,
        delivery: Option<&DeliverySpec>,
    ) -> Result<(), ValidationError> {
        self.validate()?;
        if let Some(delivery) = delivery {
            rivulet_core::resources::validation::validate_delivery("spec.delivery", delivery)?;
        }
        Ok(())
    }
}

/// Knative's `spec.ceOverrides`: attributes added to every event a source sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudEventOverrides {
    /// Extension attributes set (or replaced) on every event.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extensions: BTreeMap<String, String>,
}

/// The `type` and `source` of events a source produces (Knative's `status.ceAttributes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CloudEventAttributes {
    #[serde(rename = "type")]
    pub type_: String,
    pub source: String,
}

/// What a source's `Ready` depends on: its sink resolved and its adapter running. A
/// dead-letter sink, when set, and the checks a kind's `prepare` reports count too.
pub const SOURCE_CONDITIONS: ConditionSet = ConditionSet::new(&["SinkProvided", "Deployed"]);

/// Knative's `SourceStatus`, shared by every source kind.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The resolved `spec.sink`.
    pub sink_uri: Option<String>,
    /// The resolved dead-letter sink of the source's delivery, when it has one.
    pub dead_letter_sink_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ce_attributes: Vec<CloudEventAttributes>,
    /// Where the source takes requests, for sources that do (webhooks).
    pub address: Option<Addressable>,
}

/// Which source: its kind, namespace and name.
pub type SourceKey = rivulet_control::runtime::AdapterKey;

/// How a source delivers when its kind has no delivery spec: sources cannot ask anyone to
/// send again, so they retry for a few minutes before giving up.
pub fn default_source_delivery() -> DeliverySpec {
    DeliverySpec {
        retry: Some(10),
        backoff_policy: Some(BackoffPolicy::Exponential),
        backoff_delay: Some("PT0.2S".into()),
        ..DeliverySpec::default()
    }
}

/// A source adapter: brings events from somewhere to its sink.
#[async_trait]
pub trait SourceAdapter: Send + Sync + 'static {
    /// Runs until `ctx.cancel` fires. An error ends this run; the framework logs it and
    /// runs the adapter again after a pause.
    async fn run(&self, ctx: &SourceContext) -> Result<(), SourceError>;
}

/// Why an adapter stopped before it was told to.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("state: {0}")]
    State(#[from] std::io::Error),
    #[error("upstream: {0}")]
    Upstream(String),
}

/// What a running adapter gets.
pub struct SourceContext {
    pub key: SourceKey,
    /// Delivers to the resolved `spec.sink`.
    pub sink: SinkClient,
    /// Fires when the source is deleted, changed or the server stops.
    pub cancel: CancellationToken,
    pub metrics: Arc<Metrics>,
    /// A folder of this source's own under the data dir, for state that must survive a
    /// restart (created on demand by the adapter).
    pub state_dir: PathBuf,
    /// How long work in flight may go on once `cancel` fired.
    pub stop_grace: Duration,
}

/// A source kind's resource, as the generic reconciler needs it.
pub trait SourceKind: DeserializeOwned + Send + Sync + 'static {
    /// The kind's name, as registered in its `KindInfo`.
    const KIND: &'static str;

    /// The resource's sink and CloudEvent overrides.
    fn source(&self) -> &SourceSpec;
    /// Whether the adapter must run once in the whole system (a schedule, a watch) rather
    /// than in every data-plane replica (where it shares work through its upstream, like a
    /// consumer group or a queue). On Kubernetes, the single controller runs the former.
    const RUNS_ONCE: bool = false;
    /// The delivery rules towards the sink, when the kind's spec has them; unset or empty,
    /// [`default_delivery`](Self::default_delivery) applies.
    fn delivery(&self) -> Option<&DeliverySpec> {
        None
    }
    /// The delivery rules of a source that sets none: [`default_source_delivery`].
    fn default_delivery() -> DeliverySpec {
        default_source_delivery()
    }
    /// Builds the adapter, checking what validation cannot (secrets, ...). An error is the
    /// failing condition to report; the reconciler tries again later.
    fn prepare(
        &self,
        key: &SourceKey,
        ctx: &Arc<Context>,
    ) -> impl Future<Output = Result<Prepared, Condition>> + Send;
}

/// A ready-to-run adapter and what the status should say about it.
pub struct Prepared {
    pub adapter: Arc<dyn SourceAdapter>,
    /// Identity of the adapter's configuration: a change restarts the adapter.
    pub fingerprint: String,
    pub ce_attributes: Vec<CloudEventAttributes>,
    /// `status.address.url`, for sources that take requests.
    pub address: Option<String>,
    /// Further (true) conditions to report.
    pub conditions: Vec<Condition>,
}

/// Delivers events to one sink with the delivery rules of `rivulet_broker::delivery`,
/// counting outcomes and retries per source. Cheap to clone.
#[derive(Clone)]
pub struct SinkClient {
    uri: String,
    policy: DeliveryPolicy,
    overrides: BTreeMap<String, String>,
    sender: Sender,
    metrics: Arc<Metrics>,
    labels: AdapterLabels,
}

/// A delivery that is done with: the sink (or the dead-letter sink) has the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub attempts: u32,
    /// The sink refused it and the dead-letter sink took it.
    pub dead_lettered: bool,
}

/// The sink did not take the event, after every attempt the policy allows.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the sink {uri} did not take the event after {attempts} attempt(s): {message}")]
pub struct SendError {
    pub uri: String,
    pub attempts: u32,
    /// The sink's last answer, when there was one.
    pub status: Option<StatusCode>,
    pub message: String,
}

impl SendError {
    /// Whether trying again later may work (no answer, or a retryable status).
    pub fn is_temporary(&self) -> bool {
        self.status.is_none_or(is_retryable)
    }
}

impl SinkClient {
    pub fn new(
        uri: String,
        policy: DeliveryPolicy,
        overrides: BTreeMap<String, String>,
        sender: Sender,
        metrics: Arc<Metrics>,
        key: &SourceKey,
    ) -> Self {
        Self {
            uri,
            policy,
            overrides,
            sender,
            metrics,
            labels: key.labels(),
        }
    }

    /// The resolved sink URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Applies `ceOverrides.extensions` and delivers `event`; `Ok` only once the sink (or
    /// the dead-letter sink) took it. A failure is logged and counted here; the caller
    /// decides whether it can hold the event and try again.
    pub async fn send(&self, mut event: Event) -> Result<Sent, SendError> {
        for (name, value) in &self.overrides {
            event.set_extension(name, ExtensionValue::String(value.clone()));
        }
        let outcome = self.sender.deliver(&self.uri, &event, &self.policy).await;
        let attempts = outcome.attempts();
        if attempts > 1 {
            self.metrics
                .source_retries
                .get_or_create(&self.labels)
                .inc_by(u64::from(attempts - 1));
        }
        let (label, result) = match outcome {
            Outcome::Delivered { .. } => (
                "sent",
                Ok(Sent {
                    attempts,
                    dead_lettered: false,
                }),
            ),
            Outcome::DeadLettered { failure, .. } => {
                tracing::warn!(
                    kind = self.labels.kind, namespace = %self.labels.namespace, source = %self.labels.name,
                    id = %event.id, sink = %self.uri, error = %failure.message,
                    "the sink refused the event; it went to the dead-letter sink"
                );
                (
                    "dead_lettered",
                    Ok(Sent {
                        attempts,
                        dead_lettered: true,
                    }),
                )
            }
            Outcome::Failed {
                failure,
                dead_letter_error,
                ..
            } => {
                let mut message = failure.message.clone();
                if let Some(dead) = dead_letter_error {
                    message.push_str(&format!(
                        "; the dead-letter sink failed too: {}",
                        dead.message
                    ));
                }
                tracing::warn!(
                    kind = self.labels.kind, namespace = %self.labels.namespace, source = %self.labels.name,
                    id = %event.id, sink = %self.uri, attempts, error = %message,
                    "event not delivered to the sink"
                );
                (
                    "failed",
                    Err(SendError {
                        uri: self.uri.clone(),
                        attempts,
                        status: failure.status,
                        message,
                    }),
                )
            }
        };
        self.metrics
            .source_events
            .get_or_create(&self.labels.with_outcome(label))
            .inc();
        result
    }
}

/// Checks `ceOverrides` as Knative does: extension names are lower-case letters and digits,
/// and core attributes cannot be overridden.
pub fn validate_ce_overrides(
    field: &str,
    overrides: &CloudEventOverrides,
) -> Result<(), ValidationError> {
    for name in overrides.extensions.keys() {
        let field = format!("{field}.extensions[{name}]");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(ValidationError::new(
                field,
                format!(
                    "extension name {name:?} must contain only lower-case letters (a-z) and digits"
                ),
            ));
        }
        let core = rivulet_channels::V10_CONTEXT_ATTRIBUTES.contains(&name.as_str())
            || matches!(name.as_str(), "data" | "data_base64");
        if core {
            return Err(ValidationError::new(
                field,
                format!("{name:?} is a core CloudEvents attribute and cannot be overridden"),
            ));
        }
    }
    Ok(())
}

/// The running adapters of one runtime, by source.
#[derive(Default, Clone)]
struct RunningSources(Arc<runtime::RunningMap<SourceKey, RunningSource>>);

struct RunningSource {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    stop_grace: Duration,
}

impl RunningSource {
    /// Cancels the adapter and waits for it to end (its grace, and a little more).
    async fn stop(self, key: &SourceKey) {
        self.cancel.cancel();
        let limit = self.stop_grace + Duration::from_secs(1);
        if tokio::time::timeout(limit, self.task).await.is_err() {
            tracing::warn!(kind = key.kind, namespace = %key.namespace, source = %key.name,
                "source adapter did not stop in time; left to finish in the background");
        }
    }
}

fn kind_info(kind: &str) -> Result<&'static KindInfo, ReconcileError> {
    find_kind_by_name(None, kind)
        .ok_or_else(|| ReconcileError::Invalid(format!("kind {kind} is not registered")))
}

/// The folder a source keeps its state in.
pub fn state_dir(ctx: &Context, key: &SourceKey) -> PathBuf {
    ctx.settings
        .data_dir
        .join("sources")
        .join(key.kind.to_ascii_lowercase())
        .join(&key.namespace)
        .join(&key.name)
}

/// The generic source reconciler: resolves `spec.sink`, prepares the adapter, runs it (or
/// restarts it when its configuration changed) and writes the status.
pub async fn reconcile<K: SourceKind>(
    resource: K,
    object: &Value,
    ctx: &Arc<Context>,
) -> Result<Action, ReconcileError> {
    let kind = kind_info(K::KIND)?;
    let (namespace, name) = object_key(object);
    let key = SourceKey {
        kind: K::KIND,
        namespace: namespace.clone(),
        name: name.clone(),
    };
    let mut status = SourceStatus {
        observed_generation: runtime::generation(object),
        ..SourceStatus::default()
    };
    let mut parts = Vec::new();
    // Whatever is missing may appear later (a broker, a sink's address, a secret).
    let mut action = Action::AwaitChange;
    let retry_later = Action::Requeue(Duration::from_secs(5));

    let sink = ctx
        .resolve_for(object, "/status/sinkUri", &resource.source().sink)
        .await;
    match &sink {
        Ok(uri) => {
            status.sink_uri = Some(uri.clone());
            parts.push(Condition::new("SinkProvided", true, "", ""));
        }
        Err(reason) => {
            parts.push(Condition::new(
                "SinkProvided",
                false,
                "SinkNotFound",
                reason.clone(),
            ));
            action = retry_later;
        }
    }
    let delivery = resource
        .delivery()
        .filter(|delivery| delivery.is_set())
        .cloned()
        .unwrap_or_else(K::default_delivery);
    let mut dead_letter_uri = Ok(None);
    if let Some(dls) = &delivery.dead_letter_sink {
        dead_letter_uri = ctx
            .resolve_for(object, "/status/deadLetterSinkUri", dls)
            .await
            .map(Some);
        status.dead_letter_sink_uri = dead_letter_uri.clone().ok().flatten();
        match &dead_letter_uri {
            Ok(_) => parts.push(Condition::new("DeadLetterSinkResolved", true, "", "")),
            Err(reason) => {
                parts.push(Condition::new(
                    "DeadLetterSinkResolved",
                    false,
                    "Unresolved",
                    reason.clone(),
                ));
                action = retry_later;
            }
        }
    }
    let prepared = resource.prepare(&key, ctx).await;
    if let Err(condition) = &prepared {
        parts.push(condition.clone());
        if condition.reason.as_deref() != Some(KUBERNETES_REQUIRED) {
            action = retry_later;
        }
    }

    let running = ctx.extensions.get_or_default::<RunningSources>();
    match (sink, dead_letter_uri, prepared) {
        (Ok(uri), Ok(dead_letter_uri), Ok(prepared)) => {
            parts.extend(prepared.conditions.iter().cloned());
            let overrides = resource
                .source()
                .ce_overrides
                .as_ref()
                .map(|o| o.extensions.clone())
                .unwrap_or_default();
            // The source sends as its OIDC identity, with a token when the sink has an audience.
            let policy = DeliveryPolicy {
                auth: Some(rivulet_broker::delivery::DeliveryAuth {
                    identity: rivulet_broker::auth::Identity::for_resource(
                        kind.group,
                        K::KIND,
                        &namespace,
                        &name,
                    ),
                    audience: rivulet_broker::auth::destination_audience(
                        &resource.source().sink,
                        &namespace,
                    ),
                    dead_letter_audience: delivery
                        .dead_letter_sink
                        .as_ref()
                        .and_then(|d| rivulet_broker::auth::destination_audience(d, &namespace)),
                }),
                ..DeliveryPolicy::from_spec(
                    Some(&delivery),
                    dead_letter_uri,
                    &ctx.settings.delivery,
                )
            };
            let fingerprint = format!("{uri}|{overrides:?}|{policy:?}|{}", prepared.fingerprint);
            let client = SinkClient::new(
                uri,
                policy,
                overrides,
                ctx.dispatch.sender.clone(),
                ctx.dispatch.metrics.clone(),
                &key,
            );
            if runs_here::<K>(ctx.role()) {
                ensure_running(ctx, &running, &key, fingerprint, prepared.adapter, client).await;
            } else if let Some(old) = running.0.remove(&key).await {
                old.stop(&key).await;
            }
            parts.push(Condition::new("Deployed", true, "", ""));
            status.ce_attributes = prepared.ce_attributes;
            status.address = prepared.address.map(|url| Addressable {
                name: Some("http".into()),
                url,
                audience: ctx
                    .settings
                    .features
                    .current()
                    .authentication_oidc
                    .then(|| {
                        rivulet_broker::auth::audience(kind.group, K::KIND, &namespace, &name)
                    }),
                ..Addressable::default()
            });
        }
        _ => {
            if let Some(old) = running.0.remove(&key).await {
                old.stop(&key).await;
            }
        }
    }
    status.conditions = SOURCE_CONDITIONS.summarize(parts);
    ctx.write_status(kind, &namespace, &name, json!(status))
        .await?;
    Ok(action)
}

/// Whether a source kind's adapter runs in a process of this role.
fn runs_here<K: SourceKind>(role: runtime::Role) -> bool {
    match role {
        runtime::Role::Standalone => true,
        runtime::Role::Controller => K::RUNS_ONCE,
        runtime::Role::DataPlane => !K::RUNS_ONCE,
    }
}

async fn ensure_running(
    ctx: &Arc<Context>,
    running: &RunningSources,
    key: &SourceKey,
    fingerprint: String,
    adapter: Arc<dyn SourceAdapter>,
    sink: SinkClient,
) {
    let mut map = running.0.lock().await;
    if map.runs_with(key, &fingerprint) {
        return;
    }
    // The old adapter ends before the new one starts, so a schedule never fires twice.
    if let Some(old) = map.remove(key) {
        old.stop(key).await;
    }
    let cancel = CancellationToken::new();
    let source_ctx = SourceContext {
        key: key.clone(),
        sink,
        cancel: cancel.clone(),
        metrics: ctx.dispatch.metrics.clone(),
        state_dir: state_dir(ctx, key),
        stop_grace: ctx.settings.stop_grace,
    };
    let task = tokio::spawn(supervise(adapter, source_ctx));
    tracing::info!(kind = key.kind, namespace = %key.namespace, source = %key.name, "source adapter started");
    map.replace(
        key.clone(),
        fingerprint,
        RunningSource {
            cancel,
            task,
            stop_grace: ctx.settings.stop_grace,
        },
    );
}

/// Runs an adapter until cancelled, starting it again (with a growing pause) when it fails.
async fn supervise(adapter: Arc<dyn SourceAdapter>, ctx: SourceContext) {
    let mut pause = Duration::from_secs(1);
    loop {
        let result = adapter.run(&ctx).await;
        if ctx.cancel.is_cancelled() {
            break;
        }
        match result {
            Ok(()) => break,
            Err(error) => {
                tracing::warn!(kind = ctx.key.kind, namespace = %ctx.key.namespace, source = %ctx.key.name,
                    %error, ?pause, "source adapter failed; starting it again");
                tokio::select! {
                    _ = ctx.cancel.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// The generic cleanup of a deleted source: stop its adapter and remove its state.
pub async fn cleanup<K: SourceKind>(
    object: &Value,
    ctx: &Arc<Context>,
) -> Result<(), ReconcileError> {
    let (namespace, name) = object_key(object);
    let key = SourceKey {
        kind: K::KIND,
        namespace,
        name,
    };
    let running = ctx.extensions.get_or_default::<RunningSources>();
    let old = running.0.remove(&key).await;
    if let Some(old) = old {
        old.stop(&key).await;
    }
    match std::fs::remove_dir_all(state_dir(ctx, &key)) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(kind = key.kind, namespace = %key.namespace, source = %key.name, %error,
                "could not remove the source's state");
        }
        _ => {}
    }
    Ok(())
}

/// Stops every source adapter of this runtime (at shutdown), each within its grace.
pub async fn stop_all(ctx: &Context) {
    let running = ctx.extensions.get_or_default::<RunningSources>();
    let all = running.0.drain().await;
    futures::future::join_all(all.into_iter().map(|(key, source)| async move {
        source.stop(&key).await;
    }))
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_must_be_lower_case_alphanumeric_and_not_core() {
        let mut overrides = CloudEventOverrides::default();
        overrides.extensions.insert("team".into(), "a".into());
        assert!(validate_ce_overrides("spec.ceOverrides", &overrides).is_ok());
        overrides.extensions.insert("Bad-Name".into(), "a".into());
        let error = validate_ce_overrides("spec.ceOverrides", &overrides).unwrap_err();
        assert_eq!(error.field, "spec.ceOverrides.extensions[Bad-Name]");
        let mut core = CloudEventOverrides::default();
        core.extensions.insert("type".into(), "x".into());
        let error = validate_ce_overrides("spec.ceOverrides", &core).unwrap_err();
        assert!(error.message.contains("core"), "{error}");
    }
}
