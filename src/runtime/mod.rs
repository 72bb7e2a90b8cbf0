//! The control loop: reconcilers bring channels, ingress and trigger consumers in line with
//! the resources in the store. One `reconcile(object, ctx) -> Result<Action>` per kind, and
//! one `error_policy` that decides when to try again.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::{Mutex, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::delivery::DeliveryDefaults;
use crate::dispatcher::{self, Running};
use crate::ingress::Ingress;
use crate::resources::{KindInfo, find_kind_by_name};
use crate::store::{ResourceStore, StoreError, StoreEvent, object_key};

mod broker;
mod destination;
mod trigger;

pub use destination::resolve_destination;

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
}

/// The reconciler of one kind, registered with `inventory::submit!` next to its code so the
/// control loop needs no list of kinds.
pub struct Reconciler {
    /// The kind it reconciles (`Broker`, `Trigger`, ...).
    pub kind: &'static str,
    /// Resync order, lowest first: what others depend on comes first.
    pub order: u8,
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

/// An object to reconcile again later: its kind, namespace and name.
type RequeueKey = (&'static KindInfo, String, String);

inventory::collect!(Reconciler);

/// Settings of the runtime that come from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    /// The base URL brokers are addressed at (`http://127.0.0.1:8080`).
    pub base_url: String,
    pub delivery: DeliveryDefaults,
    /// Deliveries in flight per trigger unless its annotation says otherwise.
    pub default_parallelism: usize,
    /// How long a stopping trigger waits for its deliveries in flight.
    pub stop_grace: Duration,
}

/// Shared state of the reconcilers.
pub struct Context {
    pub store: Arc<dyn ResourceStore>,
    pub ingress: Arc<Ingress>,
    pub dispatch: dispatcher::Shared,
    pub settings: Settings,
    /// Running trigger consumers by (namespace, name), with the fingerprint of their config.
    triggers: Mutex<HashMap<(String, String), (String, Running)>>,
    requeue: mpsc::UnboundedSender<RequeueKey>,
    requeue_rx: Mutex<Option<mpsc::UnboundedReceiver<RequeueKey>>>,
    /// State of plug-ins (source and sink adapters), by type.
    pub extensions: Extensions,
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
}

impl Context {
    pub fn new(
        store: Arc<dyn ResourceStore>,
        ingress: Arc<Ingress>,
        dispatch: dispatcher::Shared,
        settings: Settings,
    ) -> Arc<Self> {
        let (requeue, requeue_rx) = mpsc::unbounded_channel();
        Arc::new(Self {
            store,
            ingress,
            dispatch,
            settings,
            triggers: Mutex::default(),
            requeue,
            requeue_rx: Mutex::new(Some(requeue_rx)),
            extensions: Extensions::default(),
        })
    }

    /// The Kubernetes API client, when resources are kept in a cluster (`--store kubernetes`).
    pub fn kube_client(&self) -> Option<kube::Client> {
        self.store.kube_client()
    }

    /// The URL of the Kubernetes API server, when resources are kept in a cluster and the
    /// URL is known.
    pub fn kube_cluster_url(&self) -> Option<String> {
        self.store.kube_cluster_url()
    }

    pub(crate) fn kind(name: &str) -> &'static KindInfo {
        find_kind_by_name(None, name).expect("built-in kinds are registered")
    }

    /// Writes an object's status.
    pub(crate) async fn write_status(
        &self,
        kind: &'static KindInfo,
        namespace: &str,
        name: &str,
        status: Value,
    ) -> Result<(), ReconcileError> {
        match self.store.put_status(kind, namespace, name, status).await {
            // Deleted meanwhile: nothing to report on.
            Err(StoreError::NotFound { .. }) => Ok(()),
            other => Ok(other?),
        }
    }

    /// Reconciles an object again soon (when something it depends on changed).
    pub(crate) fn requeue_now(&self, kind: &'static KindInfo, namespace: &str, name: &str) {
        let _ = self
            .requeue
            .send((kind, namespace.to_string(), name.to_string()));
    }

    /// Reconciles everything in the store (at start, and after missing change notices), kind
    /// by kind in the reconcilers' order.
    pub async fn resync(self: &Arc<Self>) {
        let mut reconcilers: Vec<&Reconciler> = inventory::iter::<Reconciler>().collect();
        reconcilers.sort_by_key(|r| r.order);
        for reconciler in reconcilers {
            let Some(kind) = find_kind_by_name(None, reconciler.kind) else {
                continue;
            };
            match self.store.list(kind, None).await {
                Ok(objects) => {
                    for object in objects {
                        self.reconcile_applied(kind, &object).await;
                    }
                }
                Err(error) => tracing::error!(%error, kind = kind.kind, "listing failed"),
            }
        }
    }

    fn reconciler(kind: &KindInfo) -> Option<&'static Reconciler> {
        inventory::iter::<Reconciler>().find(|r| r.kind == kind.kind)
    }

    async fn reconcile_applied(self: &Arc<Self>, kind: &'static KindInfo, object: &Value) {
        let Some(reconciler) = Self::reconciler(kind) else {
            return;
        };
        let (namespace, name) = object_key(object);
        let action = (reconciler.reconcile)(object, self)
            .await
            .unwrap_or_else(|error| self.error_policy(kind, &namespace, &name, &error));
        if let Action::Requeue(after) = action {
            let requeue = self.requeue.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = requeue.send((kind, namespace, name));
            });
        }
    }

    async fn reconcile_deleted(self: &Arc<Self>, kind: &'static KindInfo, object: &Value) {
        let Some(reconciler) = Self::reconciler(kind) else {
            return;
        };
        if let Err(error) = (reconciler.cleanup)(object, self).await {
            let (namespace, name) = object_key(object);
            tracing::warn!(kind = kind.kind, %namespace, %name, %error, "cleanup failed");
        }
    }

    /// Errors are logged and retried after a pause.
    fn error_policy(
        &self,
        kind: &'static KindInfo,
        namespace: &str,
        name: &str,
        error: &ReconcileError,
    ) -> Action {
        tracing::warn!(kind = kind.kind, %namespace, %name, %error, "reconcile failed; retrying in 5s");
        Action::Requeue(Duration::from_secs(5))
    }

    /// Whether the trigger's consumer runs with exactly this configuration.
    async fn is_running_with(&self, key: &(String, String), fingerprint: &str) -> bool {
        self.triggers
            .lock()
            .await
            .get(key)
            .is_some_and(|(running, _)| running == fingerprint)
    }

    /// Installs a trigger's new consumer, stopping the one it replaces.
    async fn replace_running(&self, key: (String, String), fingerprint: String, running: Running) {
        let old = self
            .triggers
            .lock()
            .await
            .insert(key, (fingerprint, running));
        if let Some((_, old)) = old {
            // The old consumer finishes in the background; events it has not acknowledged
            // reach the new one too (at least once).
            tokio::spawn(old.stop(self.settings.stop_grace));
        }
    }

    async fn stop_trigger(&self, namespace: &str, name: &str) {
        let old = self
            .triggers
            .lock()
            .await
            .remove(&(namespace.to_string(), name.to_string()));
        if let Some((_, running)) = old {
            tokio::spawn(running.stop(self.settings.stop_grace));
        }
    }

    /// Stops every trigger consumer, each waiting up to the grace period.
    pub async fn stop_all(&self) {
        let running: Vec<_> = self
            .triggers
            .lock()
            .await
            .drain()
            .map(|(_, (_, r))| r)
            .collect();
        futures::future::join_all(
            running
                .into_iter()
                .map(|r| r.stop(self.settings.stop_grace)),
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
                    Ok(StoreEvent::Applied { kind, object }) => self.reconcile_applied(kind, &object).await,
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

/// A condition list as JSON, with `Ready` derived from the others.
pub(crate) fn conditions(
    mut parts: Vec<crate::resources::Condition>,
) -> Vec<crate::resources::Condition> {
    let failing = parts.iter().find(|c| !c.is_true()).cloned();
    let ready = match failing {
        None => crate::resources::Condition::new("Ready", true, "", ""),
        Some(c) => crate::resources::Condition::new(
            "Ready",
            false,
            c.reason.as_deref().unwrap_or(&c.type_),
            c.message.unwrap_or_default(),
        ),
    };
    parts.insert(0, ready);
    parts
}

pub(crate) fn generation(object: &Value) -> Option<i64> {
    object
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
}
