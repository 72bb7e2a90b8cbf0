//! Resources kept by the Kubernetes API server: the same objects as in standalone mode, read
//! and written as custom resources (and core ConfigMaps and Secrets), so the reconcilers run
//! unchanged in a cluster.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use futures::StreamExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, TypeMeta,
};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::{Applied, ResourceStore, StoreError, StoreEvent, normalise, object_key};
use rivulet_core::resources::{KindInfo, kinds};

mod announce;

use announce::Announcer;

/// The field manager Rivulet's server-side applies are recorded under.
pub const FIELD_MANAGER: &str = "rivulet";
/// The field manager of finalizers, apart from the object's content, so that applying an
/// object never re-adds one and releasing it removes exactly that entry.
pub const FINALIZER_MANAGER: &str = "rivulet-finalizer";

/// Fields the API server owns; an applied configuration leaves them out.
/// Finalizers are left out too: they are applied apart (see [`FINALIZER_MANAGER`]).
const SERVER_FIELDS: [&str; 8] = [
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "finalizers",
];

/// Makes a client of the store's API server that acts as the given user (Kubernetes
/// impersonation: every request carries `Impersonate-User`).
pub type ClientsAs = dyn Fn(&str) -> Result<kube::Client, kube::Error> + Send + Sync;

/// The store of Kubernetes mode. Writes are server-side applies by the field manager
/// `rivulet`; changes are learnt from one watch per custom resource kind, started by the
/// first [`ResourceStore::watch`].
pub struct KubernetesStore {
    client: kube::Client,
    /// The API server's URL, when known (ApiServerSource events carry it as their `source`).
    cluster_url: Option<String>,
    /// Clients acting as another user; `None` for a store given only a client.
    clients_as: Option<Arc<ClientsAs>>,
    changes: broadcast::Sender<StoreEvent>,
    watchers: OnceLock<Vec<JoinHandle<()>>>,
    announce_status: bool,
}

impl KubernetesStore {
    pub fn new(client: kube::Client) -> Self {
        let (changes, _) = broadcast::channel(4096);
        Self {
            client,
            cluster_url: None,
            clients_as: None,
            changes,
            watchers: OnceLock::new(),
            announce_status: false,
        }
    }

    /// A store on the API server `config` points at, with its URL, that can act as other
    /// users: their clients are built from the same configuration, impersonating them.
    pub fn from_config(config: kube::Config) -> Result<Self, kube::Error> {
        let cluster_url = config.cluster_url.to_string();
        let client = kube::Client::try_from(config.clone())?;
        Ok(Self::new(client)
            .with_cluster_url(cluster_url)
            .with_clients_as(move |user| kube::Client::try_from(impersonating(&config, user))))
    }

    /// Makes the clients that act as another user with `clients_as` (a store built from a
    /// client alone has none).
    pub fn with_clients_as(
        mut self,
        clients_as: impl Fn(&str) -> Result<kube::Client, kube::Error> + Send + Sync + 'static,
    ) -> Self {
        self.clients_as = Some(Arc::new(clients_as));
        self
    }

    /// Announces status changes too: the data plane acts on the status the controller
    /// writes (resolved addresses) and writes none of its own that it would hear back.
    pub fn announcing_status(mut self) -> Self {
        self.announce_status = true;
        self
    }

    /// Records the URL the client reaches the API server at (without a trailing `/`).
    pub fn with_cluster_url(mut self, url: impl Into<String>) -> Self {
        self.cluster_url = Some(url.into().trim_end_matches('/').to_string());
        self
    }

    fn namespaced(&self, kind: &KindInfo, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, &api_resource(kind))
    }

    fn not_found(kind: &KindInfo, namespace: &str, name: &str) -> StoreError {
        StoreError::NotFound {
            kind: kind.kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// One watch per custom resource kind. ConfigMaps and Secrets are not watched: that would
    /// mean every one in the cluster; brokers read theirs again whenever they reconcile.
    fn start_watchers(&self) -> Vec<JoinHandle<()>> {
        kinds()
            .into_iter()
            .filter(|kind| !kind.group.is_empty())
            .map(|kind| {
                let api = Api::all_with(self.client.clone(), &api_resource(kind));
                tokio::spawn(watch_kind(
                    kind,
                    api,
                    self.changes.clone(),
                    self.announce_status,
                ))
            })
            .collect()
    }
}

impl Drop for KubernetesStore {
    fn drop(&mut self) {
        for watcher in self.watchers.get().into_iter().flatten() {
            watcher.abort();
        }
    }
}

/// `config` acting as `user` alone: an impersonation it had already (a kubeconfig's `as`,
/// `as-groups`) is replaced, not added to, so no group of the former leaks into the latter.
pub fn impersonating(config: &kube::Config, user: &str) -> kube::Config {
    let mut config = config.clone();
    config.auth_info.impersonate = Some(user.to_string());
    config.auth_info.impersonate_groups = None;
    config.auth_info.impersonate_uid = None;
    config.auth_info.impersonate_user_extra = None;
    config
}

/// How kube addresses a kind: its group (empty for the core group), version, kind and plural.
pub fn api_resource(kind: &KindInfo) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(kind.group, kind.version, kind.kind),
        kind.plural,
    )
}

fn api_error(error: kube::Error) -> StoreError {
    match error {
        kube::Error::Api(status) => StoreError::Api {
            code: status.code,
            reason: status.reason,
            message: status.message,
        },
        other => StoreError::Unavailable(other.to_string()),
    }
}

fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.is_not_found())
}

/// An object as JSON, with the `apiVersion` and `kind` that list items leave out.
fn to_json(kind: &KindInfo, mut object: DynamicObject) -> Value {
    if object.types.is_none() {
        object.types = Some(TypeMeta {
            api_version: kind.api_version(),
            kind: kind.kind.to_string(),
        });
    }
    serde_json::to_value(object).unwrap_or_default()
}

fn resource_version(object: &Value) -> Option<&str> {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
}

/// The configuration Rivulet applies: the object without status and server-owned metadata.
fn applied_configuration(mut object: Value) -> Value {
    if let Some(map) = object.as_object_mut() {
        map.remove("status");
    }
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in SERVER_FIELDS {
            meta.remove(field);
        }
    }
    object
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

#[async_trait]
impl ResourceStore for KubernetesStore {
    async fn get(
        &self,
        kind: &'static KindInfo,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, StoreError> {
        match self.namespaced(kind, namespace).get_opt(name).await {
            Ok(Some(object)) => Ok(Some(to_json(kind, object))),
            Ok(None) => Ok(None),
            Err(error) => Err(api_error(error)),
        }
    }

    async fn list(
        &self,
        kind: &'static KindInfo,
        namespace: Option<&str>,
    ) -> Result<Vec<Value>, StoreError> {
        // Least privilege: Secrets are read one by one, by the name a resource gives, and
        // the roles grant `get` alone; a listing would be refused by the cluster anyway.
        if kind.group.is_empty() && kind.kind == "Secret" {
            return Err(StoreError::Api {
                code: 403,
                reason: "Forbidden".into(),
                message: "Secrets are read by name only, never listed".into(),
            });
        }
        let api = match namespace {
            Some(namespace) => self.namespaced(kind, namespace),
            None => Api::all_with(self.client.clone(), &api_resource(kind)),
        };
        let list = api.list(&ListParams::default()).await.map_err(api_error)?;
        let mut objects: Vec<Value> = list
            .items
            .into_iter()
            .map(|object| to_json(kind, object))
            .collect();
        objects.sort_by_key(object_key);
        Ok(objects)
    }

    async fn apply(
        &self,
        kind: &'static KindInfo,
        object: Value,
    ) -> Result<(Value, Applied), StoreError> {
        let object = normalise(kind, object)?;
        // What can be checked without the stored object is checked before any request.
        (kind.validate)(&object, None)?;
        let (namespace, name) = object_key(&object);
        let api = self.namespaced(kind, &namespace);
        let old = match api.get_opt(&name).await.map_err(api_error)? {
            Some(old) => {
                let old = to_json(kind, old);
                (kind.validate)(&object, Some(&old))?;
                Some(old)
            }
            None => None,
        };
        let applied = api
            .patch(
                &name,
                &apply_params(),
                &Patch::Apply(applied_configuration(object)),
            )
            .await
            .map_err(api_error)?;
        let applied = to_json(kind, applied);
        // An apply that changes nothing leaves the resourceVersion as it was.
        let outcome = match &old {
            None => Applied::Created,
            Some(old) if resource_version(old) == resource_version(&applied) => Applied::Unchanged,
            Some(_) => Applied::Updated,
        };
        Ok((applied, outcome))
    }

    async fn put_status(
        &self,
        kind: &'static KindInfo,
        namespace: &str,
        name: &str,
        status: Value,
    ) -> Result<(), StoreError> {
        let patch = json!({
            "apiVersion": kind.api_version(),
            "kind": kind.kind,
            "metadata": {"name": name, "namespace": namespace},
            "status": status,
        });
        match self
            .namespaced(kind, namespace)
            .patch_status(name, &apply_params(), &Patch::Apply(patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if is_not_found(&error) => Err(Self::not_found(kind, namespace, name)),
            Err(error) => Err(api_error(error)),
        }
    }

    async fn delete(
        &self,
        kind: &'static KindInfo,
        namespace: &str,
        name: &str,
    ) -> Result<Value, StoreError> {
        match self
            .namespaced(kind, namespace)
            .delete(name, &DeleteParams::default())
            .await
        {
            // The object as it is being deleted, or (for some kinds) only a Status.
            Ok(deleted) => Ok(deleted.either(
                |object| to_json(kind, object),
                |_status| {
                    json!({
                        "apiVersion": kind.api_version(),
                        "kind": kind.kind,
                        "metadata": {"name": name, "namespace": namespace},
                    })
                },
            )),
            Err(error) if is_not_found(&error) => Err(Self::not_found(kind, namespace, name)),
            Err(error) => Err(api_error(error)),
        }
    }

    async fn set_finalizer(
        &self,
        kind: &'static KindInfo,
        namespace: &str,
        name: &str,
        finalizer: &str,
        present: bool,
    ) -> Result<(), StoreError> {
        let finalizers: Vec<&str> = if present { vec![finalizer] } else { vec![] };
        let patch = json!({
            "apiVersion": kind.api_version(),
            "kind": kind.kind,
            "metadata": {"name": name, "namespace": namespace, "finalizers": finalizers},
        });
        match self
            .namespaced(kind, namespace)
            .patch(
                name,
                &PatchParams::apply(FINALIZER_MANAGER).force(),
                &Patch::Apply(patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if is_not_found(&error) => Err(Self::not_found(kind, namespace, name)),
            Err(error) => Err(api_error(error)),
        }
    }

    fn watch(&self) -> broadcast::Receiver<StoreEvent> {
        let receiver = self.changes.subscribe();
        self.watchers.get_or_init(|| self.start_watchers());
        receiver
    }

    fn kube_client(&self) -> Option<kube::Client> {
        Some(self.client.clone())
    }

    fn kube_client_as(&self, user: &str) -> Option<Result<kube::Client, StoreError>> {
        Some(match &self.clients_as {
            Some(clients_as) => clients_as(user).map_err(|error| {
                StoreError::Unavailable(format!("cannot make a client acting as {user}: {error}"))
            }),
            None => Err(StoreError::Unavailable(format!(
                "cannot act as {user}: this store was built from a client, without the \
                 configuration that impersonating needs"
            ))),
        })
    }

    fn kube_cluster_url(&self) -> Option<String> {
        self.cluster_url.clone()
    }
}

/// Follows one kind across all namespaces, announcing changes until the store is dropped.
/// The watcher lists again after a broken watch; the announcer turns that into the changes
/// missed meanwhile.
async fn watch_kind(
    kind: &'static KindInfo,
    api: Api<DynamicObject>,
    changes: broadcast::Sender<StoreEvent>,
    announce_status: bool,
) {
    let mut announcer = Announcer::new(kind, announce_status);
    let mut failing = false;
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                failing = false;
                for change in announcer.on_event(event_as_json(kind, event)) {
                    let _ = changes.send(change);
                }
            }
            // Said once per outage (a CRD not installed, RBAC missing, the server away);
            // the watcher retries with backoff.
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(kind = kind.kind, group = kind.group, %error, "watching failed; retrying");
            }
            Err(error) => tracing::debug!(kind = kind.kind, %error, "watching still fails"),
        }
    }
}

fn event_as_json(kind: &KindInfo, event: watcher::Event<DynamicObject>) -> watcher::Event<Value> {
    use watcher::Event;
    let json = |object| to_json(kind, object);
    match event {
        Event::Apply(object) => Event::Apply(json(object)),
        Event::Delete(object) => Event::Delete(json(object)),
        Event::Init => Event::Init,
        Event::InitApply(object) => Event::InitApply(json(object)),
        Event::InitDone => Event::InitDone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Accepts one connection, answers an empty list and returns the request head.
    async fn answer_once(listener: TcpListener) -> String {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buffer = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let read = socket.read(&mut buffer).await.unwrap();
            if read == 0 {
                break;
            }
            head.extend_from_slice(&buffer[..read]);
        }
        let body = r#"{"kind":"NamespaceList","apiVersion":"v1","metadata":{},"items":[]}"#;
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(response.as_bytes()).await.unwrap();
        String::from_utf8(head).unwrap().to_ascii_lowercase()
    }

    #[tokio::test]
    async fn a_client_as_a_user_impersonates_that_user_alone() {
        rivulet_core::install_crypto_provider();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mut config = kube::Config::new(url.parse().unwrap());
        // An impersonation from the kubeconfig is replaced, groups included.
        config.auth_info.impersonate = Some("someone-else".into());
        config.auth_info.impersonate_groups = Some(vec!["system:masters".into()]);
        let store = KubernetesStore::from_config(config).expect("a store");
        let client = store
            .kube_client_as("system:serviceaccount:team:reader")
            .expect("Kubernetes mode")
            .expect("a client");
        let server = tokio::spawn(answer_once(listener));
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
        namespaces
            .list(&ListParams::default())
            .await
            .expect("listed");
        let head = server.await.unwrap();
        assert!(
            head.contains("\r\nimpersonate-user: system:serviceaccount:team:reader\r\n"),
            "{head}"
        );
        assert!(
            !head.contains("impersonate-group") && !head.contains("someone-else"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn a_store_built_from_a_client_alone_cannot_impersonate() {
        let (service, _server) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let store = KubernetesStore::new(kube::Client::new(service, "default"));
        let Some(Err(error)) = store.kube_client_as("system:serviceaccount:team:reader") else {
            panic!("no configuration to impersonate with, yet a client");
        };
        assert!(
            error
                .to_string()
                .contains("system:serviceaccount:team:reader"),
            "{error}"
        );
    }
}
