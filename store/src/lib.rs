//! Where resources live. Reconcilers read and watch a [`ResourceStore`]; standalone mode keeps
//! objects in files under the data dir ([`FileStore`]), Kubernetes mode in the API server
//! ([`KubernetesStore`]).
#![forbid(unsafe_code)]

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use rivulet_core::resources::KindInfo;
use rivulet_core::resources::validation::ValidationError;

pub mod check;
mod file;
mod kubernetes;
pub mod lock;
mod private;

pub use file::FileStore;
pub use kubernetes::KubernetesStore;
pub use private::{create_private_dir, replace_private, tighten_tree, write_private};

/// A change to a stored object. Status updates are not announced: reconcilers write them.
#[derive(Debug, Clone)]
pub enum StoreEvent {
    Applied {
        kind: &'static KindInfo,
        object: Arc<Value>,
    },
    Deleted {
        kind: &'static KindInfo,
        object: Arc<Value>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    #[error("{kind} {namespace}/{name} not found")]
    NotFound {
        kind: &'static str,
        namespace: String,
        name: String,
    },
    #[error("storage: {0}")]
    Io(#[from] std::io::Error),
    /// The Kubernetes API server answered with an error status.
    #[error("the API server refused: {message} ({code} {reason})")]
    Api {
        /// The HTTP status code (409 conflict, 403 forbidden, ...).
        code: u16,
        /// The machine-readable reason (`Conflict`, `Forbidden`, ...).
        reason: String,
        message: String,
    },
    /// The Kubernetes API server could not be asked, or its answer not read.
    #[error("API server request failed: {0}")]
    Unavailable(String),
}

/// Whether `apply` created the object or changed an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Created,
    Updated,
    Unchanged,
}

#[async_trait]
pub trait ResourceStore: Send + Sync + 'static {
    async fn get(
        &self,
        kind: &'static KindInfo,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, StoreError>;

    /// Objects of `kind`, in one namespace or all, ordered by namespace and name.
    async fn list(
        &self,
        kind: &'static KindInfo,
        namespace: Option<&str>,
    ) -> Result<Vec<Value>, StoreError>;

    /// The (namespace, name) of the objects of `kind`, when this store reads objects from
    /// memory, so that walking thousands of them can read one at a time instead of holding
    /// them all parsed; `None` where every read is a request (then list the objects).
    async fn list_local_keys(
        &self,
        _kind: &'static KindInfo,
    ) -> Result<Option<Vec<(String, String)>>, StoreError> {
        Ok(None)
    }

    /// Validates and stores an object (create or replace; its status is kept). Fills in
    /// `metadata.namespace` (default `default`), `uid`, `creationTimestamp`, `generation`
    /// (bumped when the spec changes) and `resourceVersion`.
    async fn apply(
        &self,
        kind: &'static KindInfo,
        object: Value,
    ) -> Result<(Value, Applied), StoreError>;

    /// Replaces the status of an existing object; announces nothing.
    async fn put_status(
        &self,
        kind: &'static KindInfo,
        namespace: &str,
        name: &str,
        status: Value,
    ) -> Result<(), StoreError>;

    async fn delete(
        &self,
        kind: &'static KindInfo,
        namespace: &str,
        name: &str,
    ) -> Result<Value, StoreError>;

    /// Adds (`present`) or removes a finalizer of an object. Stores without a notion of
    /// finalizers (files: deletion runs cleanup directly) do nothing.
    async fn set_finalizer(
        &self,
        _kind: &'static KindInfo,
        _namespace: &str,
        _name: &str,
        _finalizer: &str,
        _present: bool,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    /// Changes from now on. A receiver that lags behind gets `Lagged` and should list again.
    fn watch(&self) -> broadcast::Receiver<StoreEvent>;

    /// The Kubernetes API client behind this store, for reconcilers that manage cluster
    /// objects (Deployments); `None` in standalone mode.
    fn kube_client(&self) -> Option<kube::Client> {
        None
    }

    /// A client of the same Kubernetes API server acting as `user` (impersonation), for
    /// work done on someone's behalf with their rights only, e.g.
    /// `system:serviceaccount:team:default`; `None` in standalone mode.
    fn kube_client_as(&self, _user: &str) -> Option<Result<kube::Client, StoreError>> {
        None
    }

    /// The local storage fault writes last failed with (a full disk), if any.
    fn storage_fault(&self) -> Option<rivulet_channels::StorageFault> {
        None
    }

    /// While there is a storage fault, finds out whether writes work again (and clears it
    /// if so).
    async fn probe_storage(&self) {}

    /// The URL of the Kubernetes API server behind this store, when it is known.
    fn kube_cluster_url(&self) -> Option<String> {
        None
    }
}

/// An object as every store takes it: `apiVersion` and `kind` from `kind`, `spec` present for
/// Knative kinds (a Broker usually leaves it out; an empty one lets validation name any field
/// inside it that is required) and `metadata.namespace` defaulted to `default`.
pub(crate) fn normalise(kind: &KindInfo, mut object: Value) -> Result<Value, StoreError> {
    let Some(map) = object.as_object_mut() else {
        return Err(ValidationError::new("object", "must be a JSON/YAML mapping").into());
    };
    map.insert("apiVersion".into(), json!(kind.api_version()));
    map.insert("kind".into(), json!(kind.kind));
    if !kind.group.is_empty() {
        // `spec:` written with nothing after it is YAML's null: the same as no spec.
        let spec = map.entry("spec").or_insert_with(|| json!({}));
        if spec.is_null() {
            *spec = json!({});
        }
    }
    let metadata = map.entry("metadata").or_insert_with(|| json!({}));
    if let Some(meta) = metadata.as_object_mut() {
        meta.entry("namespace").or_insert_with(|| json!("default"));
    }
    rivulet_core::resources::validation::validate_object_meta(kind.kind, &object)?;
    Ok(object)
}

/// Namespace and name of an object.
pub fn object_key(object: &Value) -> (String, String) {
    let namespace = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    (namespace, name)
}
