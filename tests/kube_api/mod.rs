//! A scripted Kubernetes API server for reconciler tests: requests are recorded and answered
//! in order from a list, so a test asserts exactly what a reconciler asked for.
#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use rivulet::delivery::{DeliveryDefaults, Sender};
use rivulet::ingress::Ingress;
use rivulet::metrics::Metrics;
use rivulet::runtime::{Context, Reconciler, Role, Settings};
use rivulet::store::KubernetesStore;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

pub type ApiServer = Handle<Request<Body>, Response<Body>>;

/// One request the API server got.
#[derive(Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    pub body: Value,
}

/// A runtime context in `role` over a store backed by the scripted server.
pub fn context_in(role: Role, data_dir: &Path) -> (Arc<Context>, ApiServer) {
    rivulet::install_crypto_provider();
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let metrics = Arc::new(Metrics::new());
    let ingress = Arc::new(Ingress::new(metrics.clone(), 1 << 20));
    let ctx = Context::new(
        Arc::new(KubernetesStore::new(client)),
        ingress.clone(),
        rivulet::dispatcher::Shared {
            sender: Sender::new(),
            ingress,
            metrics,
        },
        Settings {
            data_dir: data_dir.to_path_buf(),
            base_url: "http://rivulet.test".into(),
            delivery: DeliveryDefaults::default(),
            default_parallelism: 1,
            stop_grace: std::time::Duration::from_secs(1),
            role,
        },
    );
    (ctx, handle)
}

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
        body: if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON body")
        },
    }
}

fn response(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
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
    mut answer: impl FnMut(&Seen) -> (u16, Value),
) -> (T, Vec<Seen>) {
    let mut operation = std::pin::pin!(operation);
    let mut requests = Vec::new();
    loop {
        tokio::select! {
            out = &mut operation => return (out, requests),
            Some((request, respond)) = server.next_request() => {
                let request = seen(request).await;
                let (code, body) = answer(&request);
                requests.push(request);
                respond.send_response(response(code, &body));
            }
        }
    }
}

/// The next request made in the background (an Event is sent without waiting), answered
/// with `answer`.
pub async fn next_background_request(server: &mut ApiServer, answer: Value) -> Seen {
    let (request, respond) =
        tokio::time::timeout(std::time::Duration::from_secs(10), server.next_request())
            .await
            .expect("a request within 10 s")
            .expect("the client is alive");
    let seen = seen(request).await;
    respond.send_response(response(201, &answer));
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
