//! A Kubernetes API server on a real socket, for `rivulet serve --store kubernetes` and
//! `rivulet controller` run as child processes (a kubeconfig points them at it). It holds
//! the objects a test gives it: lists and gets answer from them, and watches stream the
//! changes the test makes with [`KubeServer::update`]. Writes from the processes (status,
//! finalizers, Kubernetes Events) are answered with what was sent and recorded, not stored,
//! so a test sees what a controller wrote and decides itself what the others see.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
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
        let objects = objects
            .into_iter()
            .map(|object| stored(object, 1))
            .collect();
        let state = Arc::new(ServerState {
            objects: Mutex::new(objects),
            version: AtomicU64::new(1),
            changes: tokio::sync::broadcast::channel(64).0,
            writes: Mutex::default(),
            unknown: Mutex::default(),
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
        let _ = self.state.changes.send((
            plural,
            namespace,
            json!({"type": "MODIFIED", "object": object}),
        ));
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
            // away. (Changes between a list and its watch are not replayed: tests change
            // objects only once every process is running.)
            let changes = state.changes.subscribe();
            let events = futures::stream::unfold(changes, move |mut changes| {
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
                .body(Body::from_stream(events))
                .unwrap()
        }
        None => {
            let items: Vec<Value> = state
                .objects
                .lock()
                .unwrap()
                .iter()
                .filter(|(p, ns, _, _)| in_scope(p, ns))
                .map(|(_, _, _, object)| object.clone())
                .collect();
            let version = state.version.load(Ordering::SeqCst).to_string();
            json_response(
                200,
                &json!({"apiVersion": "v1", "kind": "List",
                    "metadata": {"resourceVersion": version}, "items": items}),
            )
        }
    }
}
