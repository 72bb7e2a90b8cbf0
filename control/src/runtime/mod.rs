//! The control loop: reconcilers bring channels, ingress and trigger consumers in line with
//! the resources in the store. One `reconcile(object, ctx) -> Result<Action>` per kind, and
//! one `error_policy` that decides when to try again.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::{Mutex, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use rivulet_broker::delivery::DeliveryDefaults;
use rivulet_broker::dispatcher::{self, Running};
use rivulet_broker::ingress::{BrokerTable, Ingress};
use rivulet_core::resources::{KindInfo, find_kind_by_name};
use rivulet_store::{ResourceStore, StoreError, StoreEvent, object_key};

mod broker;
mod destination;
mod drain;
mod eventpolicy;
mod events;
mod eventtype;
pub mod health;
mod queue_depth;
pub mod routes;
mod running;
mod secrets;
pub mod storage;
mod tls_secret;
mod trigger;
mod trust;

pub use broker::{CappedBrokers, MemoryChannelMaxBytes, choose_backend, read_config};
pub use destination::{resolve_destination, resolve_destination_with_ca};
pub use drain::{DEFAULT_DELETE_GRACE, DrainReport};
pub use events::ReadySummary;
pub use eventtype::StatusLock;
pub use queue_depth::{DEFAULT_QUEUE_DEPTH_INTERVAL, sample_queue_depths};
pub use running::{AdapterKey, RunningGuard, RunningMap};
pub use secrets::{amqp_connection_uri, amqp_uri_of_secret};
pub use tls_secret::follow_tls_secret;
pub use trigger::DeliveryShape;
pub use trust::follow_trust_bundles;

/// What a reconciler wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing until the object (or something it depends on) changes.
    AwaitChange,
    /// Try again after a while (a dependency is not ready yet).
    Requeue(Duration),
}

/// Why a reconcile failed; the error policy requeues.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Channel(#[from] rivulet_channels::ChannelError),
    #[error("invalid object: {0}")]
    Invalid(String),
    /// The Kubernetes API refused or failed a request about a workload.
    #[error("Kubernetes API: {0}")]
    Kubernetes(String),
}

impl ReconcileError {
    /// A short machine-readable class, used as the reason of Kubernetes Events.
    pub fn reason(&self) -> &'static str {
        match self {
            ReconcileError::Store(StoreError::Api { .. } | StoreError::Unavailable(_)) => {
                "ApiServerError"
            }
            ReconcileError::Store(_) => "StoreError",
            ReconcileError::Kubernetes(_) => "ApiServerError",
            ReconcileError::Channel(_) => "BackendUnavailable",
            ReconcileError::Invalid(_) => "InvalidObject",
        }
    }
}

/// The reconciler of one kind, registered with `inventory::submit!` next to its code so the
/// control loop needs no list of kinds.
pub struct Reconciler {
    /// The kind it reconciles (`Broker`, `Trigger`, ...).
    pub kind: &'static str,
    /// Kinds whose objects this reconciler reads (a Broker reads its config and policies), so
    /// a resync reconciles them first. Kinds that are not linked in are passed over.
    pub after: &'static [&'static str],
    /// Kinds that read this kind's objects but cannot name it (a Trigger's subscriber may be
    /// any sink kind), so a resync reconciles this kind before them.
    pub before: &'static [&'static str],
    pub reconcile: ReconcileFn,
    /// Cleanup after the object was deleted (the finalizer's work).
    pub cleanup: CleanupFn,
}

/// Reconciles one object of a kind.
pub type ReconcileFn =
    for<'a> fn(&'a Value, &'a Arc<Context>) -> BoxFuture<'a, Result<Action, ReconcileError>>;
/// Cleans up after a deleted object.
pub type CleanupFn =
    for<'a> fn(&'a Value, &'a Arc<Context>) -> BoxFuture<'a, Result<(), ReconcileError>>;

/// How one kind is reconciled, with its resource typed. [`Reconciler::of`] makes the
/// registered [`Reconciler`] of an implementation: the runtime parses each stored object into
/// [`Reconcile::Resource`] (one that does not parse is reported invalid, not reconciled) and
/// hands it over with the object as stored, for its metadata and status.
pub trait Reconcile: Send + Sync + 'static {
    /// The kind's resource type; `serde_json::Value` for kinds read as plain objects.
    type Resource: serde::de::DeserializeOwned + Send + Sync;
    /// Kinds whose objects this kind reads (a Broker reads its config and policies), so a
    /// resync reconciles them first. Kinds that are not linked in are passed over.
    const AFTER: &'static [&'static str] = &[];
    /// Kinds that read this kind's objects but cannot name it (a Trigger's subscriber may be
    /// any sink kind), so a resync reconciles this kind before them.
    const BEFORE: &'static [&'static str] = &[];

    fn reconcile(
        resource: Self::Resource,
        object: &Value,
        ctx: &Arc<Context>,
    ) -> impl Future<Output = Result<Action, ReconcileError>> + Send;

    /// Cleanup after the object was deleted (the finalizer's work). The object comes as it
    /// was stored: a deleted object need not parse.
    fn cleanup(
        _object: &Value,
        _ctx: &Arc<Context>,
    ) -> impl Future<Output = Result<(), ReconcileError>> + Send {
        async { Ok(()) }
    }
}

impl Reconciler {
    /// The registered form of `R`, reconciling objects of `kind`.
    pub const fn of<R: Reconcile>(kind: &'static str) -> Reconciler {
        Reconciler {
            kind,
            after: R::AFTER,
            before: R::BEFORE,
            reconcile: reconcile_typed::<R>,
            cleanup: cleanup_of::<R>,
        }
    }
}

fn reconcile_typed<'a, R: Reconcile>(
    object: &'a Value,
    ctx: &'a Arc<Context>,
) -> BoxFuture<'a, Result<Action, ReconcileError>> {
    Box::pin(async move {
        let resource = rivulet_core::resources::validation::typed::<R::Resource>(object)
            .map_err(|e| ReconcileError::Invalid(e.to_string()))?;
        R::reconcile(resource, object, ctx).await
    })
}

fn cleanup_of<'a, R: Reconcile>(
    object: &'a Value,
    ctx: &'a Arc<Context>,
) -> BoxFuture<'a, Result<(), ReconcileError>> {
    Box::pin(R::cleanup(object, ctx))
}

/// An object to reconcile again later: its kind, namespace and name.
type RequeueKey = (&'static KindInfo, String, String);

inventory::collect!(Reconciler);

/// What a process does in the system. Standalone does everything; on Kubernetes the work is
/// split so the data plane needs no write access beyond EventTypes and scales out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Role {
    /// `rivulet serve` with the file store: everything in one process.
    #[default]
    Standalone,
    /// `rivulet controller`: resolves destinations, provisions and removes backend resources
    /// (topics, exchanges, streams, queues, consumers), writes status, finalizers and
    /// Kubernetes Events, and runs the source adapters that must run once (schedules, watches).
    Controller,
    /// `rivulet serve --store kubernetes`: ingress, trigger dispatch and the source adapters
    /// that share work across replicas. Takes resolved addresses from the status the
    /// controller wrote.
    DataPlane,
}

impl Role {
    /// Whether this process writes status (and Events).
    pub fn writes_status(self) -> bool {
        self != Role::DataPlane
    }

    /// Whether this process creates and removes backend resources for the objects it sees.
    pub fn owns_backend_resources(self) -> bool {
        self != Role::DataPlane
    }

    /// Whether this process delivers events (ingress, trigger consumers).
    pub fn carries_events(self) -> bool {
        self != Role::Controller
    }
}

/// Settings of the runtime that come from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What this process does.
    pub role: Role,
    pub data_dir: PathBuf,
    /// The base URL brokers are addressed at (`http://127.0.0.1:8080`).
    pub base_url: String,
    /// The base URL of the resource API listener (`http://127.0.0.1:8081`).
    pub api_url: String,
    pub delivery: DeliveryDefaults,
    /// Deliveries in flight per trigger unless its annotation says otherwise.
    pub default_parallelism: usize,
    /// How long a stopping trigger waits for its deliveries in flight.
    pub stop_grace: Duration,
    /// How long deleting a trigger or broker waits for its deliveries in flight before what
    /// is left goes to the dead-letter sink (or is dropped, counted).
    pub delete_grace: Duration,
    /// Knative's feature flags in force (`config-features` and `--feature`).
    pub features: rivulet_core::features::FeatureFlags,
    /// The serving certificate, when TLS is configured; its CA goes into https addresses.
    pub tls: Option<Arc<rivulet_broker::tls::CertReloader>>,
    /// The base URL of the https addresses (`https://127.0.0.1:8080`), when TLS is
    /// configured.
    pub https_base_url: Option<String>,
}

impl Settings {
    /// The address of something served at `path` under the base URL, and the list of its
    /// addresses, as Knative publishes them per `transport-encryption`: `disabled` (or no
    /// certificate) the http address alone; `permissive` the http address, and both the
    /// https and http ones in the list; `strict` the https address alone. https addresses
    /// carry `CACerts`.
    pub fn addresses_at(
        &self,
        path: &str,
        audience: Option<String>,
    ) -> (
        rivulet_core::resources::Addressable,
        Option<Vec<rivulet_core::resources::Addressable>>,
    ) {
        use rivulet_core::features::TransportEncryption;
        use rivulet_core::resources::Addressable;
        let http = Addressable {
            name: Some("http".into()),
            url: format!("{}{path}", self.base_url),
            audience: audience.clone(),
            ..Addressable::default()
        };
        let (Some(tls), Some(https_base)) = (&self.tls, &self.https_base_url) else {
            return (http, None);
        };
        let https = Addressable {
            name: Some("https".into()),
            url: format!("{https_base}{path}"),
            ca_certs: Some(tls.ca_pem()),
            audience,
        };
        match self.features.current().transport_encryption {
            TransportEncryption::Disabled => (http, None),
            TransportEncryption::Permissive => (http.clone(), Some(vec![https, http])),
            TransportEncryption::Strict => (https.clone(), Some(vec![https])),
        }
    }
}

/// Shared state of the reconcilers.
pub struct Context {
    pub store: Arc<dyn ResourceStore>,
    /// Every ready broker: the broker reconciler fills it, the others read it.
    pub brokers: Arc<BrokerTable>,
    pub ingress: Arc<Ingress>,
    pub dispatch: dispatcher::Shared,
    pub settings: Settings,
    /// Running trigger consumers by (namespace, name), with the fingerprint of their config.
    triggers: RunningMap<(String, String), Running>,
    requeue: mpsc::UnboundedSender<RequeueKey>,
    requeue_rx: Mutex<Option<mpsc::UnboundedReceiver<RequeueKey>>>,
    /// State of plug-ins (source and sink adapters), by type.
    pub extensions: Extensions,
    /// Readiness last written per object, and what Events have said of it.
    events: events::EventState,
    /// Objects whose cleanup already ran when their finalizer was removed, by uid, so their
    /// final deletion does not run it again.
    finalized: std::sync::Mutex<HashSet<String>>,
    /// Deletions whose drain outcome a request waits for.
    deletions: drain::DeletionWaiters,
    /// Delivery health of triggers and brokers: Events and the `DeliveryHealthy` condition.
    delivery_health: health::HealthState,
}

/// Per-runtime state of plug-ins, by type, so the runtime keeps no field per plug-in.
#[derive(Default)]
pub struct Extensions(std::sync::Mutex<http::Extensions>);

impl Extensions {
    /// The value of type `T` (usually an `Arc` of shared state), created on first use.
    pub fn get_or_default<T: Clone + Default + Send + Sync + 'static>(&self) -> T {
        self.0
            .lock()
            .expect("lock poisoned")
            .get_or_insert_default::<T>()
            .clone()
    }

    /// Sets the value of type `T` (a setting made at start, read by a plug-in later).
    pub fn set<T: Clone + Send + Sync + 'static>(&self, value: T) {
        self.0.lock().expect("lock poisoned").insert(value);
    }
}

impl Context {
    /// What each running trigger of `namespace/broker` was started with.
    pub async fn running_triggers(
        &self,
        namespace: &str,
        broker: &str,
    ) -> Vec<Arc<dispatcher::TriggerDispatch>> {
        self.triggers
            .lock()
            .await
            .values()
            .filter(|running| {
                running.dispatch.namespace == namespace && running.dispatch.broker == broker
            })
            .map(|running| running.dispatch.clone())
            .collect()
    }

    pub fn new(
        store: Arc<dyn ResourceStore>,
        ingress: Arc<Ingress>,
        dispatch: dispatcher::Shared,
        settings: Settings,
    ) -> Arc<Self> {
        let (requeue, requeue_rx) = mpsc::unbounded_channel();
        let (delivery_health, wakes) = health::HealthState::new(&ingress, &dispatch.metrics);
        let ctx = Arc::new(Self {
            store,
            brokers: ingress.brokers().clone(),
            ingress,
            dispatch,
            settings,
            triggers: RunningMap::default(),
            requeue,
            requeue_rx: Mutex::new(Some(requeue_rx)),
            extensions: Extensions::default(),
            events: events::EventState::default(),
            finalized: std::sync::Mutex::default(),
            deletions: drain::DeletionWaiters::default(),
            delivery_health,
        });
        if let Some(wakes) = wakes {
            health::spawn(&ctx, wakes);
        }
        ctx
    }

    /// What this process does.
    pub fn role(&self) -> Role {
        self.settings.role
    }

    /// The Kubernetes API client, when resources are kept in a cluster (`--store kubernetes`).
    pub fn kube_client(&self) -> Option<kube::Client> {
        self.store.kube_client()
    }

    /// A Kubernetes API client acting as `user` (impersonation), when resources are kept in
    /// a cluster; see [`ResourceStore::kube_client_as`].
    pub fn kube_client_as(&self, user: &str) -> Option<Result<kube::Client, StoreError>> {
        self.store.kube_client_as(user)
    }

    /// The URL of the Kubernetes API server, when resources are kept in a cluster and the
    /// URL is known.
    pub fn kube_cluster_url(&self) -> Option<String> {
        self.store.kube_cluster_url()
    }

    pub fn kind(name: &str) -> &'static KindInfo {
        find_kind_by_name(None, name).expect("built-in kinds are registered")
    }

    /// Writes an object's status; the data plane leaves status to the controller.
    pub async fn write_status(
        &self,
        kind: &'static KindInfo,
        namespace: &str,
        name: &str,
        status: Value,
    ) -> Result<(), ReconcileError> {
        if !self.role().writes_status() {
            return Ok(());
        }
        self.events
            .record_ready(kind, namespace, name, ReadySummary::of(&status));
        let mut status = status;
        // A local store reads cheaply, and keeping unchanged conditions' times there lets a
        // restart with thousands of objects write nothing. On Kubernetes the read would be
        // one more API request per status write, so the status is written as before.
        if self.kube_client().is_none()
            && let Ok(Some(current)) = self.store.get(kind, namespace, name).await
            && let Some(written) = current.get("status")
        {
            keep_transition_times(&mut status, written);
        }
        match self.store.put_status(kind, namespace, name, status).await {
            // Deleted meanwhile: nothing to report on.
            Err(StoreError::NotFound { .. }) => Ok(()),
            other => Ok(other?),
        }
    }

    /// Resolves a destination of `object`. The data plane takes the URL the controller
    /// resolved and wrote at `status_field` (a JSON pointer), once the controller has seen
    /// the object's current generation, so it needs no read access to what destinations
    /// point at; everyone else resolves it.
    pub async fn resolve_for(
        &self,
        object: &Value,
        status_field: &str,
        destination: &rivulet_core::resources::Destination,
    ) -> Result<String, String> {
        let (namespace, _) = object_key(object);
        if self.role() != Role::DataPlane {
            return resolve_destination(destination, &namespace, self).await;
        }
        let observed = object
            .pointer("/status/observedGeneration")
            .and_then(Value::as_i64);
        if observed != generation(object) {
            return Err(format!(
                "waiting for the controller to reconcile generation {}",
                generation(object).unwrap_or_default()
            ));
        }
        object
            .pointer(status_field)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("waiting for the controller to resolve {status_field}"))
    }

    /// Like [`Context::resolve_for`], with the CA certificates to trust at the URL; the data
    /// plane reads them from `ca_field` beside the URL.
    pub async fn resolve_for_with_ca(
        &self,
        object: &Value,
        status_field: &str,
        ca_field: &str,
        destination: &rivulet_core::resources::Destination,
    ) -> Result<(String, Option<String>), String> {
        if self.role() != Role::DataPlane {
            let (namespace, _) = object_key(object);
            return resolve_destination_with_ca(destination, &namespace, self).await;
        }
        let url = self.resolve_for(object, status_field, destination).await?;
        let ca_certs = object
            .pointer(ca_field)
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok((url, ca_certs))
    }

    /// Puts this process's finalizer on a kind whose deletion must remove backend resources
    /// first. Only the controller does; elsewhere cleanup runs on deletion.
    pub async fn ensure_finalizer(
        &self,
        kind: &'static KindInfo,
        object: &Value,
    ) -> Result<(), ReconcileError> {
        if self.role() != Role::Controller || is_deleting(object) {
            return Ok(());
        }
        let finalizer = finalizer_name(kind);
        if has_finalizer(object, &finalizer) {
            return Ok(());
        }
        let (namespace, name) = object_key(object);
        match self
            .store
            .set_finalizer(kind, &namespace, &name, &finalizer, true)
            .await
        {
            Err(StoreError::NotFound { .. }) => Ok(()),
            other => Ok(other?),
        }
    }

    /// Reconciles an object again soon (when something it depends on changed).
    pub fn requeue_now(&self, kind: &'static KindInfo, namespace: &str, name: &str) {
        let _ = self
            .requeue
            .send((kind, namespace.to_string(), name.to_string()));
    }

    /// Reads Knative's `config-features` ConfigMap and puts its flags (under the command
    /// line's) in force; whether they changed.
    pub async fn refresh_features(&self) -> bool {
        let kind = Self::kind("ConfigMap");
        let data = match self
            .store
            .get(
                kind,
                rivulet_core::features::CONFIG_NAMESPACE,
                rivulet_core::features::CONFIG_NAME,
            )
            .await
        {
            Ok(object) => object.and_then(|o| o.get("data").cloned()),
            Err(error) => {
                tracing::warn!(%error, "cannot read the config-features ConfigMap; flags unchanged");
                return false;
            }
        };
        let (changed, errors) = self.settings.features.apply_config_map(data.as_ref());
        for error in errors {
            tracing::warn!(%error, "config-features: flag ignored");
        }
        if changed {
            tracing::info!(features = ?self.settings.features.current().all, "feature flags changed");
        }
        changed
    }

    /// Reconciles everything in the store (after missing change notices), kind by kind in
    /// the reconcilers' order.
    pub async fn resync(self: &Arc<Self>) {
        let deferred = RESYNCING.scope((), self.resync_kinds(false)).await;
        debug_assert!(deferred.is_empty());
    }

    /// Reconciles everything in the store at start, and calls `serving` as soon as ingress
    /// can take events: every broker (and everything but settled triggers) reconciled.
    ///
    /// A trigger that was Ready at its current generation on a broker that was too keeps its
    /// subscription in the channel across a restart (the channel routes to it before its
    /// consumer attaches), so it is brought back after `serving`: with thousands of triggers
    /// ingress would otherwise wait for all of them. Any other trigger is reconciled first,
    /// so that an event accepted once ingress is serving reaches every trigger.
    pub async fn resync_at_start(self: &Arc<Self>, serving: impl FnOnce()) {
        let started = std::time::Instant::now();
        let deferred = RESYNCING.scope((), self.resync_kinds(true)).await;
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            deferred_triggers = deferred.len(),
            "brokers are served"
        );
        serving();
        let kind = Self::kind("Trigger");
        let count = deferred.len();
        for trigger in deferred {
            let object = match trigger {
                Listed::Object(object) => Some(object),
                // Read now: it may have changed meanwhile.
                Listed::Key(namespace, name) => {
                    self.store.get(kind, &namespace, &name).await.ok().flatten()
                }
            };
            if let Some(object) = object {
                self.reconcile_applied(kind, &object).await;
            }
        }
        if count > 0 {
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                triggers = count,
                "settled triggers resumed"
            );
        }
    }

    /// Reconciles every kind in order; with `defer_settled`, returns the settled triggers
    /// (see [`Context::resync_at_start`]) instead of reconciling them.
    async fn resync_kinds(self: &Arc<Self>, defer_settled: bool) -> Vec<Listed> {
        let reconcilers = resync_order();
        let mut settled_brokers = HashSet::new();
        let mut deferred = Vec::new();
        for reconciler in reconcilers {
            let Some(kind) = find_kind_by_name(None, reconciler.kind) else {
                continue;
            };
            // ConfigMaps and Secrets only pass their changes on to the brokers naming them,
            // and every broker is reconciled here anyway: listing the cluster's would be waste.
            if kind.group.is_empty() {
                continue;
            }
            // One object at a time where reads are cheap: thousands of triggers parsed at
            // once would make the start's peak memory.
            let listed: Vec<Listed> = match self.store.list_local_keys(kind).await {
                Ok(Some(keys)) => keys
                    .into_iter()
                    .map(|(namespace, name)| Listed::Key(namespace, name))
                    .collect(),
                Ok(None) => match self.store.list(kind, None).await {
                    Ok(objects) => objects.into_iter().map(Listed::Object).collect(),
                    Err(error) => {
                        tracing::error!(%error, kind = kind.kind, "listing failed");
                        continue;
                    }
                },
                Err(error) => {
                    tracing::error!(%error, kind = kind.kind, "listing failed");
                    continue;
                }
            };
            for entry in listed {
                let object = match &entry {
                    Listed::Object(object) => object.clone(),
                    Listed::Key(namespace, name) => {
                        match self.store.get(kind, namespace, name).await {
                            Ok(Some(object)) => object,
                            _ => continue,
                        }
                    }
                };
                if defer_settled && kind.kind == "Broker" && is_settled(&object) {
                    settled_brokers.insert(object_key(&object));
                }
                if defer_settled && kind.kind == "Trigger" && is_settled(&object) {
                    let (namespace, _) = object_key(&object);
                    let broker = object
                        .pointer("/spec/broker")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    if settled_brokers.contains(&(namespace, broker)) {
                        deferred.push(entry);
                        continue;
                    }
                }
                self.reconcile_applied(kind, &object).await;
            }
        }
        deferred
    }

    /// Whether a broker may leave its triggers to a resync in progress, which reconciles
    /// every trigger after the brokers anyway.
    pub(crate) fn in_resync() -> bool {
        RESYNCING.try_with(|()| ()).is_ok()
    }

    fn reconciler(kind: &KindInfo) -> Option<&'static Reconciler> {
        inventory::iter::<Reconciler>().find(|r| r.kind == kind.kind)
    }

    /// Handles one change as the control loop does (reconcile, finalize or clean up) and
    /// says what the loop would do next with the object; for driving reconcilers in tests.
    pub async fn handle_change(self: &Arc<Self>, change: &StoreEvent) -> Action {
        match change {
            StoreEvent::Applied { kind, object } => self.reconcile_applied(kind, object).await,
            StoreEvent::Deleted { kind, object } => {
                self.reconcile_deleted(kind, object).await;
                Action::AwaitChange
            }
        }
    }

    async fn reconcile_applied(
        self: &Arc<Self>,
        kind: &'static KindInfo,
        object: &Value,
    ) -> Action {
        let Some(reconciler) = Self::reconciler(kind) else {
            return Action::AwaitChange;
        };
        let (namespace, name) = object_key(object);
        self.delivery_health.note_object(kind.kind, object);
        let action = if is_deleting(object) {
            self.finalize(kind, reconciler, object)
                .await
                .unwrap_or_else(|error| self.error_policy(kind, object, &error))
        } else {
            let result = (reconciler.reconcile)(object, self).await;
            self.events.publish_changes(self, kind, object);
            result.unwrap_or_else(|error| self.error_policy(kind, object, &error))
        };
        if let Action::Requeue(after) = action {
            let requeue = self.requeue.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = requeue.send((kind, namespace, name));
            });
        }
        action
    }

    /// An object with a deletion timestamp: clean up, then let it go by removing this
    /// process's finalizer. A failed cleanup keeps the finalizer and is tried again.
    async fn finalize(
        self: &Arc<Self>,
        kind: &'static KindInfo,
        reconciler: &Reconciler,
        object: &Value,
    ) -> Result<Action, ReconcileError> {
        let finalizer = finalizer_name(kind);
        let ours = self.role() == Role::Controller && has_finalizer(object, &finalizer);
        if !ours && self.role() == Role::Controller {
            // Someone else's finalizer holds it; our cleanup runs when it is gone.
            return Ok(Action::AwaitChange);
        }
        (reconciler.cleanup)(object, self).await?;
        if let Some(uid) = uid(object) {
            self.finalized.lock().expect("lock poisoned").insert(uid);
        }
        if ours {
            let (namespace, name) = object_key(object);
            match self
                .store
                .set_finalizer(kind, &namespace, &name, &finalizer, false)
                .await
            {
                Ok(()) | Err(StoreError::NotFound { .. }) => {}
                Err(error) => return Err(error.into()),
            }
            self.events.forget(kind, &namespace, &name);
        }
        Ok(Action::AwaitChange)
    }

    async fn reconcile_deleted(self: &Arc<Self>, kind: &'static KindInfo, object: &Value) {
        let Some(reconciler) = Self::reconciler(kind) else {
            return;
        };
        let (namespace, name) = object_key(object);
        self.events.forget(kind, &namespace, &name);
        self.delivery_health.forget(kind.kind, &namespace, &name);
        let already = uid(object)
            .is_some_and(|uid| self.finalized.lock().expect("lock poisoned").remove(&uid));
        if already {
            return;
        }
        if let Err(error) = (reconciler.cleanup)(object, self).await {
            let (namespace, name) = object_key(object);
            tracing::warn!(kind = kind.kind, %namespace, %name, %error, "cleanup failed");
        }
    }

    /// Errors are logged, reported as a Warning Event (by the controller), and retried
    /// after a pause.
    fn error_policy(
        &self,
        kind: &'static KindInfo,
        object: &Value,
        error: &ReconcileError,
    ) -> Action {
        let (namespace, name) = object_key(object);
        tracing::warn!(kind = kind.kind, %namespace, %name, %error, "reconcile failed; retrying in 5s");
        self.events.publish_failure(self, kind, object, error);
        Action::Requeue(Duration::from_secs(5))
    }

    /// Whether the consumer of a trigger (or a Subscription, whose keys' names start with
    /// `subscription:`) runs with exactly this configuration.
    pub async fn is_running_with(&self, key: &(String, String), fingerprint: &str) -> bool {
        self.triggers.lock().await.runs_with(key, fingerprint)
    }

    /// Installs a trigger's (or Subscription's) new consumer, stopping the one it replaces.
    pub async fn replace_running(
        &self,
        key: (String, String),
        fingerprint: String,
        running: Running,
    ) {
        let old = self
            .triggers
            .lock()
            .await
            .replace(key, fingerprint, running);
        if let Some(old) = old {
            // The old consumer finishes in the background; events it has not acknowledged
            // reach the new one too (at least once).
            tokio::spawn(old.stop(self.settings.stop_grace));
        }
    }

    /// Takes a trigger's (or Subscription's) consumer out of service, for its deletion to
    /// stop.
    pub async fn take_trigger(&self, namespace: &str, name: &str) -> Option<Running> {
        self.triggers
            .remove(&(namespace.to_string(), name.to_string()))
            .await
    }

    /// How many undelivered events deleting a Broker or Trigger would leave behind, per
    /// trigger (`None` where the backend cannot count); empty for other kinds.
    pub async fn undelivered(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<(String, Option<u64>)>, ReconcileError> {
        let (broker, triggers) = match kind {
            "Trigger" => {
                let Some(trigger) = self
                    .store
                    .get(Self::kind("Trigger"), namespace, name)
                    .await?
                else {
                    return Ok(Vec::new());
                };
                let broker = trigger
                    .pointer("/spec/broker")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                (broker, vec![name.to_owned()])
            }
            "Broker" => {
                let triggers = self
                    .store
                    .list(Self::kind("Trigger"), Some(namespace))
                    .await?
                    .into_iter()
                    .filter(|t| t.pointer("/spec/broker").and_then(Value::as_str) == Some(name))
                    .map(|t| object_key(&t).1)
                    .collect();
                (name.to_owned(), triggers)
            }
            _ => return Ok(Vec::new()),
        };
        let Some(handle) = self.brokers.get(namespace, &broker) else {
            return Ok(Vec::new());
        };
        let mut counts = Vec::new();
        for trigger in triggers {
            match handle
                .channel
                .backlog(&trigger::subscription_name(&trigger))
                .await
            {
                Ok(count) => counts.push((trigger, count)),
                Err(rivulet_channels::ChannelError::UnknownSubscription(_)) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(counts)
    }

    /// The outcome of the deletion of a Broker or Trigger, once its drain is done; ask before
    /// deleting it from the store.
    pub fn watch_deletion(
        &self,
        kind: &'static str,
        namespace: &str,
        name: &str,
    ) -> tokio::sync::oneshot::Receiver<DrainReport> {
        self.deletions.wait(kind, namespace, name)
    }

    pub async fn stop_trigger(&self, namespace: &str, name: &str) {
        if let Some(running) = self.take_trigger(namespace, name).await {
            tokio::spawn(running.stop(self.settings.stop_grace));
        }
    }

    /// Stops every trigger consumer, each waiting up to the grace period.
    pub async fn stop_all(&self) {
        let running = self.triggers.drain().await;
        futures::future::join_all(
            running
                .into_iter()
                .map(|(_, r)| r.stop(self.settings.stop_grace)),
        )
        .await;
    }

    /// Runs the control loop until `shutdown` fires. Call [`Context::resync`] first, with
    /// `changes` subscribed before it, so no change falls between the two.
    pub async fn run(
        self: Arc<Self>,
        mut changes: broadcast::Receiver<StoreEvent>,
        shutdown: CancellationToken,
    ) {
        let mut requeued = self
            .requeue_rx
            .lock()
            .await
            .take()
            .expect("the control loop runs once");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                change = changes.recv() => match change {
                    Ok(StoreEvent::Applied { kind, object }) => { self.reconcile_applied(kind, &object).await; }
                    Ok(StoreEvent::Deleted { kind, object }) => self.reconcile_deleted(kind, &object).await,
                    Err(broadcast::error::RecvError::Lagged(_)) => self.resync().await,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                Some((kind, namespace, name)) = requeued.recv() => {
                    if let Ok(Some(object)) = self.store.get(kind, &namespace, &name).await {
                        self.reconcile_applied(kind, &object).await;
                    }
                }
            }
        }
    }
}

/// Runs the drain and removal of a deleted object. Standalone runs it beside the control
/// loop, which must not stall for a grace period; the controller waits for it, so a failure
/// keeps the finalizer and is tried again.
async fn run_deletion(
    ctx: &Arc<Context>,
    kind: &'static str,
    object: &Value,
    work: impl std::future::Future<Output = Result<(), ReconcileError>> + Send + 'static,
) -> Result<(), ReconcileError> {
    if ctx.role() == Role::Controller {
        return work.await;
    }
    let (namespace, name) = object_key(object);
    tokio::spawn(async move {
        if let Err(error) = work.await {
            tracing::warn!(kind, %namespace, %name, %error, "cleanup after deletion failed");
        }
    });
    Ok(())
}

/// An object a resync goes through: read already, or to be read when its turn comes.
enum Listed {
    Object(Value),
    Key(String, String),
}

tokio::task_local! {
    /// Set while a resync reconciles every object kind by kind.
    static RESYNCING: ();
}

/// Ready at its current generation, as last written.
fn is_settled(object: &Value) -> bool {
    let observed = object
        .pointer("/status/observedGeneration")
        .and_then(Value::as_i64);
    let ready = object
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    ready && observed.is_some() && observed == generation(object)
}

/// Gives each condition of `status` that says what it said in `written` (ignoring the time)
/// the time it last changed there, as Knative does: a reconcile that changes nothing then
/// writes nothing, which keeps a restart with thousands of objects from rewriting them all.
fn keep_transition_times(status: &mut Value, written: &Value) {
    const TIME: &str = "lastTransitionTime";
    let Some(before) = written.get("conditions").and_then(Value::as_array) else {
        return;
    };
    let Some(now) = status.get_mut("conditions").and_then(Value::as_array_mut) else {
        return;
    };
    for condition in now.iter_mut().filter_map(Value::as_object_mut) {
        let Some(old) = before
            .iter()
            .filter_map(Value::as_object)
            .find(|old| old.get("type") == condition.get("type"))
        else {
            continue;
        };
        let same = old.len() == condition.len()
            && old
                .iter()
                .all(|(key, value)| key == TIME || condition.get(key) == Some(value));
        if let (true, Some(time)) = (same, old.get(TIME)) {
            condition.insert(TIME.to_string(), time.clone());
        }
    }
}

/// Every registered reconciler, each after the kinds it reads ([`Reconciler::after`]) and
/// before the kinds that read it ([`Reconciler::before`]); kinds with no order between them
/// come by name, so the order is the same on every start.
pub fn resync_order() -> Vec<&'static Reconciler> {
    order_reconcilers(inventory::iter::<Reconciler>().collect())
}

fn order_reconcilers(mut reconcilers: Vec<&'static Reconciler>) -> Vec<&'static Reconciler> {
    reconcilers.sort_by_key(|r| r.kind);
    let index: HashMap<&str, usize> = reconcilers
        .iter()
        .enumerate()
        .map(|(i, r)| (r.kind, i))
        .collect();
    // waiting[i]: how many kinds must come before reconciler i; next[i]: those after it.
    let mut waiting = vec![0usize; reconcilers.len()];
    let mut next = vec![Vec::new(); reconcilers.len()];
    for (i, reconciler) in reconcilers.iter().enumerate() {
        let earlier = reconciler
            .after
            .iter()
            .filter_map(|k| index.get(k).map(|&j| (j, i)));
        let later = reconciler
            .before
            .iter()
            .filter_map(|k| index.get(k).map(|&j| (i, j)));
        for (first, then) in earlier.chain(later) {
            next[first].push(then);
            waiting[then] += 1;
        }
    }
    let mut ready: std::collections::BTreeSet<usize> = (0..reconcilers.len())
        .filter(|&i| waiting[i] == 0)
        .collect();
    let mut ordered = Vec::with_capacity(reconcilers.len());
    while let Some(i) = ready.pop_first() {
        ordered.push(reconcilers[i]);
        for &then in &next[i] {
            waiting[then] -= 1;
            if waiting[then] == 0 {
                ready.insert(then);
            }
        }
    }
    if ordered.len() < reconcilers.len() {
        // A circle of dependencies: the rest come by name rather than not at all.
        let circle: Vec<_> = reconcilers
            .iter()
            .enumerate()
            .filter(|(i, _)| waiting[*i] > 0)
            .map(|(_, r)| r.kind)
            .collect();
        tracing::error!(
            ?circle,
            "reconciler dependencies form a circle; these resync by name"
        );
        ordered.extend(
            circle
                .iter()
                .filter_map(|k| index.get(k).map(|&i| reconcilers[i])),
        );
    }
    ordered
}

/// The finalizer name of a kind, as Knative names them (`brokers.eventing.knative.dev`).
pub fn finalizer_name(kind: &KindInfo) -> String {
    format!("{}.{}", kind.plural, kind.group)
}

fn has_finalizer(object: &Value, finalizer: &str) -> bool {
    object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|list| list.iter().any(|f| f.as_str() == Some(finalizer)))
}

fn is_deleting(object: &Value) -> bool {
    object.pointer("/metadata/deletionTimestamp").is_some()
}

fn uid(object: &Value) -> Option<String> {
    object
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .map(str::to_string)
}

pub fn generation(object: &Value) -> Option<i64> {
    object
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn reconciler(
        kind: &'static str,
        after: &'static [&'static str],
        before: &'static [&'static str],
    ) -> Reconciler {
        Reconciler {
            kind,
            after,
            before,
            reconcile: |_, _| Box::pin(async { Ok(Action::AwaitChange) }),
            cleanup: |_, _| Box::pin(async { Ok(()) }),
        }
    }

    fn kinds(order: Vec<&'static Reconciler>) -> Vec<&'static str> {
        order.into_iter().map(|r| r.kind).collect()
    }

    #[test]
    fn dependencies_order_the_resync_and_names_break_ties() {
        static TRIGGER: Reconciler = reconciler("Trigger", &["Broker"], &[]);
        static BROKER: Reconciler = reconciler("Broker", &["ConfigMap", "NotLinked"], &[]);
        static CONFIG_MAP: Reconciler = reconciler("ConfigMap", &[], &[]);
        static SINK: Reconciler = reconciler("ASink", &[], &["Trigger"]);
        static SOURCE: Reconciler = reconciler("ASource", &["Trigger"], &[]);
        let order = order_reconcilers(vec![&TRIGGER, &SOURCE, &BROKER, &SINK, &CONFIG_MAP]);
        assert_eq!(
            kinds(order),
            ["ASink", "ConfigMap", "Broker", "Trigger", "ASource"]
        );
    }

    #[test]
    fn a_circle_of_dependencies_still_resyncs_every_kind() {
        static A: Reconciler = reconciler("A", &["B"], &[]);
        static B: Reconciler = reconciler("B", &["A"], &[]);
        static C: Reconciler = reconciler("C", &[], &[]);
        let order = order_reconcilers(vec![&B, &A, &C]);
        assert_eq!(kinds(order), ["C", "A", "B"]);
    }
}
