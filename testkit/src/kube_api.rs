//! A scripted Kubernetes API server (`tower_test::mock::pair`) behind a runtime [`Context`]
//! in Kubernetes mode, for reconcilers that talk to the API server: answer requests in
//! order with [`exchange`], or by what they ask with [`serve`] while something runs in the
//! background. Clients acting as another user (impersonation) reach the same server, with
//! the `Impersonate-User` header that kube sends for real.

use std::future::Future;
use std::sync::{Arc, Mutex};

use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use rivulet::delivery::{DeliveryDefaults, Sender};
use rivulet::ingress::{BrokerTable, Ingress};
use rivulet::metrics::Metrics;
use rivulet::resources::find_kind_by_name;
use rivulet::runtime::{Context, Reconciler, Role, Settings};
use rivulet::store::{KubernetesStore, StoreEvent};
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_test::mock::{self, Handle, SendResponse};

pub type ApiServer = Handle<Request<Body>, Response<Body>>;

/// A request as the API server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// The raw query string.
    pub query: String,
    pub content_type: Option<String>,
    /// The user the request acts as (`Impersonate-User`); `None` for Rivulet's own.
    pub impersonate_user: Option<String>,
    pub body: Value,
}

impl Seen {
    /// A query parameter, decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    }

    /// Fails the test unless this is a server-side apply (a `PATCH` of
    /// `application/apply-patch+yaml`) of `path` by the field manager `manager`.
    pub fn assert_apply(&self, path: &str, manager: &str) {
        assert_eq!(self.method, "PATCH", "{self:?}");
        assert_eq!(self.path, path);
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/apply-patch+yaml"),
            "{self:?}"
        );
        assert_eq!(
            self.param("fieldManager").as_deref(),
            Some(manager),
            "{}",
            self.query
        );
    }

    /// Whether this is a watch request (`?watch=true`).
    pub fn is_watch(&self) -> bool {
        self.param("watch").as_deref() == Some("true")
    }
}

/// A runtime context whose store is the Kubernetes store on a scripted API server.
pub fn context() -> (Arc<Context>, ApiServer) {
    context_with(|store| store)
}

/// Like [`context`], with the store adjusted by `configure` (e.g. its cluster URL).
pub fn context_with(
    configure: impl FnOnce(KubernetesStore) -> KubernetesStore,
) -> (Arc<Context>, ApiServer) {
    context_for(Role::Standalone, &std::env::temp_dir(), configure)
}

/// A context in `role` (controller, data plane) keeping local state under `data_dir`.
pub fn context_in(role: Role, data_dir: &std::path::Path) -> (Arc<Context>, ApiServer) {
    context_for(role, data_dir, |store| store)
}

fn context_for(
    role: Role,
    data_dir: &std::path::Path,
    configure: impl FnOnce(KubernetesStore) -> KubernetesStore,
) -> (Arc<Context>, ApiServer) {
    rivulet::install_crypto_provider();
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let impersonating = service.clone();
    let client = kube::Client::new(service, "default");
    let store = KubernetesStore::new(client).with_clients_as(move |user| {
        let user = HeaderValue::from_str(user).map_err(|e| kube::Error::HttpError(e.into()))?;
        let service = impersonating
            .clone()
            .map_request(move |mut request: Request<Body>| {
                request
                    .headers_mut()
                    .insert("impersonate-user", user.clone());
                request
            });
        Ok(kube::Client::new(service, "default"))
    });
    let metrics = Arc::new(Metrics::new());
    let ingress = Arc::new(Ingress::new(
        Arc::new(BrokerTable::new(metrics.clone())),
        1 << 20,
    ));
    let ctx = Context::new(
        Arc::new(configure(store)),
        ingress.clone(),
        rivulet::dispatcher::Shared {
            sender: Sender::new(),
            ingress,
            metrics,
            journal: rivulet::journal::Journal::off(),
        },
        Settings {
            data_dir: data_dir.to_path_buf(),
            base_url: "http://rivulet.test".into(),
            api_url: "http://rivulet-api.test".into(),
            delivery: DeliveryDefaults::default(),
            default_parallelism: 1,
            stop_grace: std::time::Duration::from_secs(1),
            delete_grace: std::time::Duration::from_secs(1),
            role,
            features: Default::default(),
            tls: None,
            https_base_url: None,
        },
    );
    (ctx, handle)
}

/// A context with its scripted API server and, in a role, the folder of its local state
/// (removed when this is dropped): for handing it store events, or objects to reconcile,
/// one after another.
pub struct Scripted {
    pub ctx: Arc<Context>,
    pub server: ApiServer,
    _data_dir: Option<tempfile::TempDir>,
}

impl Scripted {
    pub fn new(role: Role) -> Scripted {
        let data_dir = tempfile::tempdir().expect("a temporary folder");
        let (ctx, server) = context_in(role, data_dir.path());
        Scripted {
            ctx,
            server,
            _data_dir: Some(data_dir),
        }
    }

    /// The context of [`context`].
    pub fn standalone() -> Scripted {
        let (ctx, server) = context();
        Scripted {
            ctx,
            server,
            _data_dir: None,
        }
    }

    /// Runs the reconcile of `kind`'s reconciler on `object`, answering its requests with
    /// `answers` in order; its result and what it asked.
    pub async fn reconcile(
        &mut self,
        kind: &str,
        object: &Value,
        answers: Vec<(u16, Value)>,
    ) -> (
        Result<rivulet::runtime::Action, rivulet::runtime::ReconcileError>,
        Vec<Seen>,
    ) {
        let reconcile = (reconciler(kind).reconcile)(object, &self.ctx);
        exchange(&mut self.server, reconcile, answers).await
    }

    /// [`Scripted::reconcile`] for the cleanup of a deleted object.
    pub async fn clean_up(
        &mut self,
        kind: &str,
        object: &Value,
        answers: Vec<(u16, Value)>,
    ) -> (Result<(), rivulet::runtime::ReconcileError>, Vec<Seen>) {
        let cleanup = (reconciler(kind).cleanup)(object, &self.ctx);
        exchange(&mut self.server, cleanup, answers).await
    }

    /// Hands `change` to the context, answering its requests with `answers` in order; what
    /// it decided and what it asked.
    pub async fn handle(
        &mut self,
        change: &StoreEvent,
        answers: Vec<(u16, Value)>,
    ) -> (rivulet::runtime::Action, Vec<Seen>) {
        exchange(&mut self.server, self.ctx.handle_change(change), answers).await
    }

    /// [`Scripted::handle`] of `object` of kind `kind` being applied.
    pub async fn apply(
        &mut self,
        kind: &str,
        object: &Value,
        answers: Vec<(u16, Value)>,
    ) -> (rivulet::runtime::Action, Vec<Seen>) {
        self.handle(&applied(kind, object), answers).await
    }

    /// [`Scripted::apply`], answering each request with what `decide` makes of it (see
    /// [`exchange_by`]).
    pub async fn apply_by(
        &mut self,
        kind: &str,
        object: &Value,
        decide: impl FnMut(&Seen) -> (u16, Value),
    ) -> (rivulet::runtime::Action, Vec<Seen>) {
        let change = applied(kind, object);
        exchange_by(&mut self.server, self.ctx.handle_change(&change), decide).await
    }

    /// The next request made in the background (such as a Kubernetes Event being posted),
    /// answered with an empty object.
    pub async fn next_background_request(&mut self) -> Seen {
        next_background_request(&mut self.server, json!({})).await
    }
}

/// The store event of `object` (of kind `kind`) being applied, as a watch would deliver it.
pub fn applied(kind: &str, object: &Value) -> StoreEvent {
    StoreEvent::Applied {
        kind: find_kind_by_name(None, kind).expect("a known kind"),
        object: Arc::new(object.clone()),
    }
}

/// The store event of `object` (of kind `kind`) being deleted.
pub fn deleted(kind: &str, object: &Value) -> StoreEvent {
    StoreEvent::Deleted {
        kind: find_kind_by_name(None, kind).expect("a known kind"),
        object: Arc::new(object.clone()),
    }
}

/// The reconciler registered for `kind`.
pub fn reconciler(kind: &str) -> &'static Reconciler {
    inventory::iter::<Reconciler>()
        .find(|r| r.kind == kind)
        .expect("a registered reconciler")
}

pub async fn seen(request: Request<Body>) -> Seen {
    let (parts, body) = request.into_parts();
    let bytes = body.collect().await.expect("a body").to_bytes();
    Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        content_type: parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string()),
        impersonate_user: parts
            .headers
            .get("impersonate-user")
            .map(|v| v.to_str().unwrap().to_string()),
        body: if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON body")
        },
    }
}

/// A JSON answer with status `code`.
pub fn answer(code: u16, body: &Value) -> Response<Body> {
    answer_bytes(code, serde_json::to_vec(body).unwrap())
}

/// An answer with status `code` and a body of exactly `bytes` (e.g. watch events, one JSON
/// document a line).
pub fn answer_bytes(code: u16, bytes: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(bytes))
        .unwrap()
}

/// Runs `operation`, answering its requests in order; what it returned and what it asked.
pub async fn exchange<T>(
    server: &mut ApiServer,
    operation: impl Future<Output = T>,
    answers: Vec<(u16, Value)>,
) -> (T, Vec<Seen>) {
    let mut answers = answers.into_iter();
    exchange_by(server, operation, |request| {
        answers
            .next()
            .unwrap_or_else(|| panic!("unexpected request {request:?}"))
    })
    .await
}

/// Runs `operation`, answering each request with what `answer` makes of it (by path rather
/// than by order, for reconcilers whose requests follow the registration order of kinds);
/// what it returned and what it asked.
pub async fn exchange_by<T>(
    server: &mut ApiServer,
    operation: impl Future<Output = T>,
    mut decide: impl FnMut(&Seen) -> (u16, Value),
) -> (T, Vec<Seen>) {
    let mut operation = std::pin::pin!(operation);
    let mut requests = Vec::new();
    loop {
        tokio::select! {
            out = &mut operation => return (out, requests),
            Some((request, respond)) = server.next_request() => {
                let request = seen(request).await;
                let (code, body) = decide(&request);
                requests.push(request);
                respond.send_response(answer(code, &body));
            }
        }
    }
}

/// How [`serve`] answers one request.
pub enum Reply {
    Now(Response<Body>),
    /// Never answered (a watch that stays open with nothing new).
    Hold,
}

/// The requests [`serve`] saw, in arrival order.
#[derive(Clone, Default)]
pub struct Requests(Arc<Mutex<Vec<Seen>>>);

impl Requests {
    pub fn all(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }

    /// The requests to `path`.
    pub fn to(&self, path: &str) -> Vec<Seen> {
        self.all().into_iter().filter(|r| r.path == path).collect()
    }
}

/// Answers every request with what `decide` says, in a background task, until the server
/// handle is dropped with the task (at the end of the test).
pub fn serve(
    mut server: ApiServer,
    mut decide: impl FnMut(&Seen) -> Reply + Send + 'static,
) -> Requests {
    let requests = Requests::default();
    let recorded = requests.clone();
    tokio::spawn(async move {
        let mut held: Vec<SendResponse<Response<Body>>> = Vec::new();
        while let Some((request, respond)) = server.next_request().await {
            let request = seen(request).await;
            let reply = decide(&request);
            recorded.0.lock().unwrap().push(request);
            match reply {
                Reply::Now(response) => respond.send_response(response),
                Reply::Hold => held.push(respond),
            }
        }
    });
    requests
}

/// The next request made in the background (an Event is sent without waiting), answered
/// with `body` (status 201).
pub async fn next_background_request(server: &mut ApiServer, body: Value) -> Seen {
    let (request, respond) =
        tokio::time::timeout(std::time::Duration::from_secs(10), server.next_request())
            .await
            .expect("a request within 10 s")
            .expect("the client is alive");
    let seen = seen(request).await;
    respond.send_response(answer(201, &body));
    seen
}

/// A Kubernetes `Status` error body.
pub fn status_error(code: u16, reason: &str, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
        "code": code, "reason": reason, "message": message})
}

/// An empty list of a kind.
pub fn empty_list(api_version: &str, kind: &str) -> Value {
    json!({"apiVersion": api_version, "kind": format!("{kind}List"),
        "metadata": {"resourceVersion": "1"}, "items": []})
}

/// A list of a kind holding `items`.
pub fn list_of(api_version: &str, kind: &str, items: Vec<Value>) -> Value {
    let mut list = empty_list(api_version, kind);
    list["items"] = Value::Array(items);
    list
}

/// The condition of `type_` in a status.
pub fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}
