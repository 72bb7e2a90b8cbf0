//! A Kubernetes API server on a real socket, for `rivulet serve --store kubernetes` and
//! `rivulet controller` run as child processes (a kubeconfig points them at it). It holds
//! the objects a test gives it: lists and gets answer from them, and watches stream the
//! changes the test makes with [`KubeServer::update`]. Writes from the processes (status,
//! finalizers, Kubernetes Events) are answered with what was sent and recorded, not stored,
//! so a test sees what a controller wrote and decides itself what the others see.
//!
//! [`KubeServer::start_stateful`] starts one whose writes change what it serves, as a real
//! API server's do: server-side applies, status patches, deletions (held back by
//! finalizers) and creations, each announced to the watches, which resume from the
//! resourceVersion they are given. That is what the store contract runs the Kubernetes
//! store against.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use futures::StreamExt;
use rivulet::resources::find_kind_by_name;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::kube_api::status_error;

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Write {
    pub method: String,
    pub path: String,
    pub body: Value,
}

/// (plural, namespace, name, object)
type Stored = (String, String, String, Value);

struct ServerState {
    objects: Mutex<Vec<Stored>>,
    /// The resourceVersion of the last change.
    version: AtomicU64,
    /// Each change as (plural, namespace, watch event), for the open watches.
    changes: tokio::sync::broadcast::Sender<(String, String, Value)>,
    writes: Mutex<Vec<Write>>,
    /// Requests answered 404 because nothing here matched them, for diagnosis.
    unknown: Mutex<Vec<String>>,
    /// Whether writes change the objects (see [`KubeServer::start_stateful`]).
    stateful: bool,
    /// In stateful mode, every change as (resourceVersion, plural, namespace, watch event),
    /// so that a watch started from a list's resourceVersion misses nothing made between.
    history: Mutex<Vec<(u64, String, String, Value)>>,
}

/// The API server; stops when dropped.
pub struct KubeServer {
    pub url: String,
    state: Arc<ServerState>,
    stop: CancellationToken,
}

impl KubeServer {
    /// Serves `objects` (each with `apiVersion`, `kind`, `metadata.name`, `metadata.namespace`).
    pub async fn start(objects: Vec<Value>) -> KubeServer {
        Self::serve(objects, false).await
    }

    /// Serves `objects` like [`KubeServer::start`], but writes change them: a server-side
    /// apply creates an object or replaces the fields it gives, a status patch replaces
    /// the status, a DELETE removes the object (or marks it while it has finalizers), with
    /// `uid`, `creationTimestamp`, `generation` and `resourceVersion` kept as Kubernetes
    /// does. Writes are still recorded ([`KubeServer::writes`]).
    pub async fn start_stateful(objects: Vec<Value>) -> KubeServer {
        Self::serve(objects, true).await
    }

    async fn serve(objects: Vec<Value>, stateful: bool) -> KubeServer {
        let objects = objects
            .into_iter()
            .map(|object| stored(object, 1))
            .collect();
        // A stateful server's watches follow every write; a lagging one ends and resumes
        // from its last resourceVersion, so a roomier channel only saves reconnections.
        let capacity = if stateful { 1024 } else { 64 };
        let state = Arc::new(ServerState {
            objects: Mutex::new(objects),
            version: AtomicU64::new(1),
            changes: tokio::sync::broadcast::channel(capacity).0,
            writes: Mutex::default(),
            unknown: Mutex::default(),
            stateful,
            history: Mutex::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the API server binds a port");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(state.clone());
        let serve_stop = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(serve_stop.cancelled_owned())
                .await;
        });
        KubeServer { url, state, stop }
    }

    /// Writes a kubeconfig pointing at this server into `dir`; returns its path.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: test\n  cluster:\n    server: {}\n\
             users:\n- name: test\n  user: {{}}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\n\
             current-context: test\n",
            self.url
        );
        std::fs::write(&path, text).expect("the kubeconfig can be written");
        path
    }

    /// Replaces the stored object of the same kind, namespace and name with `object`, and
    /// tells the watches (a `MODIFIED` event).
    pub fn update(&self, object: Value) {
        let version = self.state.version.fetch_add(1, Ordering::SeqCst) + 1;
        let (plural, namespace, name, object) = stored(object, version);
        let mut objects = self.state.objects.lock().unwrap();
        objects.retain(|(p, ns, n, _)| !(*p == plural && *ns == namespace && *n == name));
        objects.push((plural.clone(), namespace.clone(), name, object.clone()));
        publish(
            &self.state,
            version,
            plural,
            namespace,
            json!({"type": "MODIFIED", "object": object}),
        );
    }

    /// Every PATCH, POST, PUT and DELETE received, in order.
    pub fn writes(&self) -> Vec<Write> {
        self.state.writes.lock().unwrap().clone()
    }

    /// Requests nothing here matched (answered 404).
    pub fn unknown_requests(&self) -> Vec<String> {
        self.state.unknown.lock().unwrap().clone()
    }
}

impl Drop for KubeServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An object as stored, at resourceVersion `version`.
fn stored(mut object: Value, version: u64) -> Stored {
    let kind = object["kind"].as_str().expect("an object has a kind");
    let plural = match kind {
        "Secret" => "secrets".to_string(),
        "ConfigMap" => "configmaps".to_string(),
        other => find_kind_by_name(None, other)
            .unwrap_or_else(|| panic!("no kind {other}"))
            .plural
            .to_string(),
    };
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let name = object["metadata"]["name"]
        .as_str()
        .expect("an object has a name")
        .to_string();
    object["metadata"]["resourceVersion"] = json!(version.to_string());
    (plural, namespace, name, object)
}

/// The parts of an API path: plural, namespace (if namespaced), name and subresource.
fn parse_path(path: &str) -> Option<(String, Option<String>, Option<String>)> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => (Some(*namespace), rest),
        rest => (None, rest),
    };
    match rest {
        [plural] => Some((plural.to_string(), namespace.map(String::from), None)),
        [plural, name, ..] => Some((
            plural.to_string(),
            namespace.map(String::from),
            Some(name.to_string()),
        )),
        _ => None,
    }
}

fn json_response(code: u16, body: &Value) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

async fn answer(State(state): State<Arc<ServerState>>, request: Request) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    let content_type = request
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = axum::body::to_bytes(request.into_body(), 16 << 20)
        .await
        .unwrap_or_default();
    let not_found = |what: String| {
        state.unknown.lock().unwrap().push(what);
        json_response(404, &status_error(404, "NotFound", "not found"))
    };
    if method != "GET" {
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        state.writes.lock().unwrap().push(Write {
            method: method.clone(),
            path: path.clone(),
            body: body.clone(),
        });
        if state.stateful {
            return stateful::write(&state, &method, &path, &query, &content_type, body);
        }
        return json_response(if method == "POST" { 201 } else { 200 }, &body);
    }
    let Some((plural, namespace, name)) = parse_path(&path) else {
        return not_found(format!("{method} {path}?{query}"));
    };
    let in_scope = move |p: &String, ns: &String| {
        *p == plural && namespace.as_ref().is_none_or(|wanted| wanted == ns)
    };
    match name {
        Some(name) => {
            let found = state
                .objects
                .lock()
                .unwrap()
                .iter()
                .find(|(p, ns, n, _)| in_scope(p, ns) && *n == name)
                .map(|(_, _, _, object)| object.clone());
            match found {
                Some(object) => json_response(200, &object),
                None => not_found(format!("{method} {path}")),
            }
        }
        None if query.split('&').any(|pair| pair == "watch=true") => {
            // Changes made from now on, one JSON document a line, until the client goes
            // away. kube's watcher lists (`resourceVersion=0`, pages of 500: all in one here)
            // and then watches from the list's resourceVersion, with `allowWatchBookmarks`
            // (bookmarks are optional; none are sent) and `sendInitialEvents` only for
            // streaming lists. By default changes between the list and the watch are not
            // replayed (tests change objects once every process is running); a stateful
            // server replays them.
            let (changes, earlier) = {
                // Under the lock writers publish under: nothing falls between the two.
                let objects = state.objects.lock().unwrap();
                let earlier = if state.stateful {
                    stateful::earlier_events(&state, &objects, &query, &in_scope)
                } else {
                    Vec::new()
                };
                (state.changes.subscribe(), earlier)
            };
            let earlier = futures::stream::iter(earlier.into_iter().map(|event| {
                let mut line = serde_json::to_vec(&event).unwrap();
                line.push(b'\n');
                Ok::<_, Infallible>(Bytes::from(line))
            }));
            let live = futures::stream::unfold(changes, move |mut changes| {
                let in_scope = in_scope.clone();
                async move {
                    loop {
                        match changes.recv().await {
                            Ok((p, ns, event)) if in_scope(&p, &ns) => {
                                let mut line = serde_json::to_vec(&event).unwrap();
                                line.push(b'\n');
                                return Some((Ok::<_, Infallible>(Bytes::from(line)), changes));
                            }
                            Ok(_) => continue,
                            Err(_) => return None,
                        }
                    }
                }
            });
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Body::from_stream(earlier.chain(live)))
                .unwrap()
        }
        None => {
            let objects = state.objects.lock().unwrap();
            let items: Vec<Value> = objects
                .iter()
                .filter(|(p, ns, _, _)| in_scope(p, ns))
                .map(|(_, _, _, object)| object.clone())
                .collect();
            // Read under the lock, so a watch from it starts right after these items.
            let version = state.version.load(Ordering::SeqCst).to_string();
            drop(objects);
            json_response(
                200,
                &json!({"apiVersion": "v1", "kind": "List",
                    "metadata": {"resourceVersion": version}, "items": items}),
            )
        }
    }
}

/// Tells the open watches of a change made at resourceVersion `version`; a stateful server
/// also keeps it for watches that start from an earlier version. Called with the objects
/// locked, so that a watch starting meanwhile sees the change exactly once.
fn publish(state: &ServerState, version: u64, plural: String, namespace: String, event: Value) {
    if state.stateful {
        state.history.lock().unwrap().push((
            version,
            plural.clone(),
            namespace.clone(),
            event.clone(),
        ));
    }
    let _ = state.changes.send((plural, namespace, event));
}

/// Writes that change what a stateful server serves.
mod stateful {
    use std::sync::atomic::Ordering;

    use axum::response::Response;
    use rivulet::resources::now_rfc3339;
    use serde_json::{Map, Value, json};

    use super::{ServerState, Stored, json_response, parse_path, publish, status_error};

    /// The metadata fields an apply may set; the rest of metadata is the server's.
    const APPLIED_METADATA: [&str; 4] = ["labels", "annotations", "finalizers", "ownerReferences"];

    /// Top-level fields that are not content an apply sets.
    const NOT_APPLIED: [&str; 4] = ["apiVersion", "kind", "metadata", "status"];

    /// The watch events a watch starting with `query` gets before the changes from now on:
    /// those after its `resourceVersion`, or, without one (or `0`), every object as `ADDED`
    /// (ended by a bookmark when it asked for `sendInitialEvents`).
    pub(super) fn earlier_events(
        state: &ServerState,
        objects: &[Stored],
        query: &str,
        in_scope: &impl Fn(&String, &String) -> bool,
    ) -> Vec<Value> {
        let param = |name: &str| {
            url::form_urlencoded::parse(query.as_bytes())
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.into_owned())
        };
        let since = param("resourceVersion")
            .and_then(|version| version.parse::<u64>().ok())
            .filter(|version| *version > 0);
        if let Some(since) = since {
            return state
                .history
                .lock()
                .unwrap()
                .iter()
                .filter(|(version, p, ns, _)| *version > since && in_scope(p, ns))
                .map(|(_, _, _, event)| event.clone())
                .collect();
        }
        let mut events: Vec<Value> = objects
            .iter()
            .filter(|(p, ns, _, _)| in_scope(p, ns))
            .map(|(_, _, _, object)| json!({"type": "ADDED", "object": object}))
            .collect();
        if param("sendInitialEvents").as_deref() == Some("true") {
            let version = state.version.load(Ordering::SeqCst).to_string();
            events.push(json!({"type": "BOOKMARK", "object": {
                "metadata": {"resourceVersion": version,
                             "annotations": {"k8s.io/initial-events-end": "true"}}}}));
        }
        events
    }

    /// Answers a PATCH, POST or DELETE by changing the objects.
    pub(super) fn write(
        state: &ServerState,
        method: &str,
        path: &str,
        query: &str,
        content_type: &str,
        body: Value,
    ) -> Response {
        let Some((plural, namespace, name)) = parse_path(path) else {
            return refused(404, "NotFound", &format!("nothing served at {path}"));
        };
        let namespace = namespace.unwrap_or_default();
        let mut objects = state.objects.lock().unwrap();
        let mut store = Change {
            state,
            objects: &mut objects,
            plural,
            namespace,
        };
        match (method, name) {
            ("PATCH", Some(name)) if !content_type.starts_with("application/apply-patch") => {
                refused(
                    415,
                    "UnsupportedMediaType",
                    &format!("{name}: only server-side apply patches are served here"),
                )
            }
            ("PATCH", Some(name)) if path.trim_end_matches('/').ends_with("/status") => {
                store.patch_status(&name, &body)
            }
            ("PATCH", Some(name)) => {
                let manager = url::form_urlencoded::parse(query.as_bytes())
                    .find(|(key, _)| key == "fieldManager")
                    .map(|(_, value)| value.into_owned());
                let Some(manager) = manager else {
                    return refused(400, "BadRequest", "an apply needs a fieldManager");
                };
                store.apply(&name, &body, &manager)
            }
            ("DELETE", Some(name)) => store.delete(&name),
            ("POST", None) => store.create(body),
            _ => refused(405, "MethodNotAllowed", &format!("{method} {path}")),
        }
    }

    fn refused(code: u16, reason: &str, message: &str) -> Response {
        json_response(code, &status_error(code, reason, message))
    }

    /// The objects of one plural and namespace, locked for a write.
    struct Change<'a> {
        state: &'a ServerState,
        objects: &'a mut Vec<Stored>,
        plural: String,
        namespace: String,
    }

    impl Change<'_> {
        fn position(&self, name: &str) -> Option<usize> {
            self.objects
                .iter()
                .position(|(p, ns, n, _)| *p == self.plural && *ns == self.namespace && n == name)
        }

        fn not_found(&self, name: &str) -> Response {
            refused(
                404,
                "NotFound",
                &format!("{} \"{name}\" not found", self.plural),
            )
        }

        /// Stores `object` as the object at `at` (or a new one) and announces it, with a
        /// new resourceVersion; an object equal to the stored one changes nothing.
        fn commit(&mut self, name: &str, at: Option<usize>, mut object: Value) -> Value {
            if let Some(at) = at
                && self.objects[at].3 == object
            {
                return object;
            }
            let version = self.state.version.fetch_add(1, Ordering::SeqCst) + 1;
            object["metadata"]["resourceVersion"] = json!(version.to_string());
            let kind = match at {
                Some(at) => {
                    self.objects[at].3 = object.clone();
                    "MODIFIED"
                }
                None => {
                    self.objects.push((
                        self.plural.clone(),
                        self.namespace.clone(),
                        name.to_string(),
                        object.clone(),
                    ));
                    "ADDED"
                }
            };
            self.announce(version, json!({"type": kind, "object": object}));
            object
        }

        /// Removes the object at `at` and announces it; the object as it went.
        fn remove(&mut self, at: usize) -> Value {
            let (_, _, _, mut object) = self.objects.remove(at);
            let version = self.state.version.fetch_add(1, Ordering::SeqCst) + 1;
            object["metadata"]["resourceVersion"] = json!(version.to_string());
            self.announce(version, json!({"type": "DELETED", "object": object}));
            object
        }

        fn announce(&self, version: u64, event: Value) {
            publish(
                self.state,
                version,
                self.plural.clone(),
                self.namespace.clone(),
                event,
            );
        }

        /// A new object gets its identity; only objects of API groups (not core `v1`
        /// ConfigMaps and Secrets) count generations.
        fn born(&self, object: &mut Value) {
            let uid = format!(
                "00000000-0000-4000-8000-{:012x}",
                self.state.version.load(Ordering::SeqCst)
            );
            let meta = &mut object["metadata"];
            meta["uid"] = json!(uid);
            meta["creationTimestamp"] = json!(now_rfc3339());
            if object["apiVersion"]
                .as_str()
                .is_some_and(|v| v.contains('/'))
            {
                object["metadata"]["generation"] = json!(1);
            }
            if !self.namespace.is_empty() {
                object["metadata"]["namespace"] = json!(self.namespace);
            }
        }

        fn create(&mut self, mut object: Value) -> Response {
            let Some(name) = object["metadata"]["name"].as_str().map(String::from) else {
                return refused(422, "Invalid", "metadata.name: Required value");
            };
            if self.position(&name).is_some() {
                let message = format!("{} \"{name}\" already exists", self.plural);
                return refused(409, "AlreadyExists", &message);
            }
            if let Some(meta) = object["metadata"].as_object_mut() {
                for server_owned in ["resourceVersion", "deletionTimestamp", "managedFields"] {
                    meta.remove(server_owned);
                }
            }
            self.born(&mut object);
            let created = self.commit(&name, None, object);
            json_response(201, &created)
        }

        fn patch_status(&mut self, name: &str, patch: &Value) -> Response {
            let Some(at) = self.position(name) else {
                return self.not_found(name);
            };
            let mut object = self.objects[at].3.clone();
            match patch.get("status") {
                Some(status) => object["status"] = status.clone(),
                None => {
                    if let Some(map) = object.as_object_mut() {
                        map.remove("status");
                    }
                }
            }
            let patched = self.commit(name, Some(at), object);
            json_response(200, &patched)
        }

        /// A server-side apply by `manager`: the fields it gives replace the stored ones,
        /// and those it gave last time but not now go, unless another manager set them too.
        /// Ownership is kept per field (`spec`, `metadata.labels`, ...) in
        /// `metadata.managedFields`, coarser than Kubernetes' per key but alike for whole
        /// objects applied again and again.
        fn apply(&mut self, name: &str, patch: &Value, manager: &str) -> Response {
            let at = self.position(name);
            let old = at.map(|at| self.objects[at].3.clone());
            let mut object = old.clone().unwrap_or_else(|| {
                json!({"apiVersion": patch["apiVersion"], "kind": patch["kind"],
                       "metadata": {"name": name}})
            });
            let given = applied_fields(patch);
            let others: Vec<String> = managers(&object)
                .into_iter()
                .filter(|other| other != manager)
                .flat_map(|other| owned_fields(&object, &other))
                .collect();
            for field in owned_fields(&object, manager) {
                if !given.contains(&field) && !others.contains(&field) {
                    set_field(&mut object, &field, None);
                }
            }
            let mut owned = Vec::new();
            for field in given {
                let value = field_of(patch, &field).cloned();
                // Applying an empty list or map of metadata (`finalizers: []`) gives up
                // what the manager had there.
                let emptied =
                    field.starts_with("metadata.") && value.as_ref().is_some_and(is_empty);
                if emptied {
                    set_field(&mut object, &field, None);
                } else {
                    set_field(&mut object, &field, value);
                    owned.push(field);
                }
            }
            set_owned_fields(&mut object, manager, &owned);
            match &old {
                None => self.born(&mut object),
                Some(old) if old.get("spec") != object.get("spec") => {
                    if let Some(generation) = old["metadata"]["generation"].as_i64() {
                        object["metadata"]["generation"] = json!(generation + 1);
                    }
                }
                Some(_) => {}
            }
            let applied = self.commit(name, at, object);
            let released = applied["metadata"].get("deletionTimestamp").is_some()
                && applied["metadata"].get("finalizers").is_none();
            if released && let Some(at) = self.position(name) {
                // The last finalizer of an object being deleted went: now it goes.
                let gone = self.remove(at);
                return json_response(200, &gone);
            }
            json_response(if old.is_none() { 201 } else { 200 }, &applied)
        }

        /// Removes the object, or, while it has finalizers, marks it as being deleted.
        fn delete(&mut self, name: &str) -> Response {
            let Some(at) = self.position(name) else {
                return self.not_found(name);
            };
            let object = self.objects[at].3.clone();
            let finalized = object["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|finalizers| !finalizers.is_empty());
            if !finalized {
                let gone = self.remove(at);
                return json_response(200, &gone);
            }
            if object["metadata"].get("deletionTimestamp").is_some() {
                return json_response(200, &object);
            }
            let mut marked = object;
            marked["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            let marked = self.commit(name, Some(at), marked);
            json_response(200, &marked)
        }
    }

    fn is_empty(value: &Value) -> bool {
        match value {
            Value::Array(items) => items.is_empty(),
            Value::Object(map) => map.is_empty(),
            Value::Null => true,
            _ => false,
        }
    }

    /// The fields an applied configuration sets, as `spec` or `metadata.labels`.
    fn applied_fields(patch: &Value) -> Vec<String> {
        let mut fields: Vec<String> = patch
            .as_object()
            .into_iter()
            .flat_map(Map::keys)
            .filter(|key| !NOT_APPLIED.contains(&key.as_str()))
            .cloned()
            .collect();
        if let Some(meta) = patch.get("metadata").and_then(Value::as_object) {
            fields.extend(
                APPLIED_METADATA
                    .iter()
                    .filter(|key| meta.contains_key(**key))
                    .map(|key| format!("metadata.{key}")),
            );
        }
        fields
    }

    fn field_of<'a>(object: &'a Value, field: &str) -> Option<&'a Value> {
        match field.split_once('.') {
            Some((parent, key)) => object.get(parent)?.get(key),
            None => object.get(field),
        }
    }

    fn set_field(object: &mut Value, field: &str, value: Option<Value>) {
        let (map, key) = match field.split_once('.') {
            Some((parent, key)) => (object.get_mut(parent).and_then(Value::as_object_mut), key),
            None => (object.as_object_mut(), field),
        };
        if let Some(map) = map {
            match value {
                Some(value) => map.insert(key.to_string(), value),
                None => map.remove(key),
            };
        }
    }

    fn managers(object: &Value) -> Vec<String> {
        object["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|entry| entry["manager"].as_str().map(String::from))
            .collect()
    }

    /// The fields `manager` applied last, read from its `managedFields` entry
    /// (`{"f:spec": {}, "f:metadata": {"f:labels": {}}}`).
    fn owned_fields(object: &Value, manager: &str) -> Vec<String> {
        let entry = object["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|entry| entry["manager"] == manager);
        let Some(fields) = entry.and_then(|entry| entry["fieldsV1"].as_object()) else {
            return Vec::new();
        };
        let mut owned = Vec::new();
        for (key, inner) in fields {
            let key = key.trim_start_matches("f:");
            if key == "metadata" {
                owned.extend(
                    inner
                        .as_object()
                        .into_iter()
                        .flat_map(Map::keys)
                        .map(|inner| format!("metadata.{}", inner.trim_start_matches("f:"))),
                );
            } else {
                owned.push(key.to_string());
            }
        }
        owned
    }

    fn set_owned_fields(object: &mut Value, manager: &str, owned: &[String]) {
        let api_version = object["apiVersion"].clone();
        let mut fields = Map::new();
        for field in owned {
            match field.split_once('.') {
                Some((parent, key)) => {
                    let parent = fields
                        .entry(format!("f:{parent}"))
                        .or_insert_with(|| json!({}));
                    parent[format!("f:{key}")] = json!({});
                }
                None => {
                    fields.insert(format!("f:{field}"), json!({}));
                }
            }
        }
        let meta = object["metadata"]
            .as_object_mut()
            .expect("a stored object has metadata");
        let entries = meta
            .entry("managedFields")
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .expect("managedFields is a list");
        entries.retain(|entry| entry["manager"] != manager);
        if !fields.is_empty() {
            entries.push(json!({"manager": manager, "operation": "Apply",
                "apiVersion": api_version, "fieldsType": "FieldsV1",
                "fieldsV1": fields}));
        }
        if entries.is_empty() {
            meta.remove("managedFields");
        }
    }
}
