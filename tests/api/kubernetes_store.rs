//! The Kubernetes store against a scripted API server: which requests it makes, and what it
//! makes of the answers.

use std::future::Future;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use rivulet::resources::{KindInfo, find_kind_by_name};
use rivulet::store::{Applied, KubernetesStore, ResourceStore, StoreError, StoreEvent};
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

type ApiServer = Handle<Request<Body>, Response<Body>>;

/// A request as the API server saw it.
#[derive(Debug)]
struct Seen {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    content_type: Option<String>,
    body: Value,
}

impl Seen {
    fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

fn store() -> (KubernetesStore, ApiServer) {
    rivulet::install_crypto_provider();
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    (KubernetesStore::new(client), handle)
}

fn kind(name: &str) -> &'static KindInfo {
    find_kind_by_name(None, name).expect("a served kind")
}

async fn seen(request: Request<Body>) -> Seen {
    let (parts, body) = request.into_parts();
    let bytes = body.collect().await.expect("a request body").to_bytes();
    Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect(),
        content_type: parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string()),
        body: if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON request body")
        },
    }
}

fn answer(code: u16, body: Value) -> Response<Body> {
    let bytes = match body {
        Value::String(text) => text.into_bytes(),
        other => serde_json::to_vec(&other).unwrap(),
    };
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(bytes))
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
           "code": code, "reason": reason, "message": message})
}

/// Runs `operation`, answering its requests in order with `answers`; what it returned and
/// the requests it made.
async fn exchange<T>(
    server: &mut ApiServer,
    operation: impl Future<Output = T>,
    answers: Vec<(u16, Value)>,
) -> (T, Vec<Seen>) {
    let mut operation = std::pin::pin!(operation);
    let mut answers = answers.into_iter();
    let mut requests = Vec::new();
    loop {
        tokio::select! {
            out = &mut operation => return (out, requests),
            Some((request, respond)) = server.next_request() => {
                requests.push(seen(request).await);
                let (code, body) = answers
                    .next()
                    .unwrap_or_else(|| panic!("unexpected request {:?}", requests.last()));
                respond.send_response(answer(code, body));
            }
        }
    }
}

fn broker(namespace: &str, name: &str, resource_version: &str) -> Value {
    json!({
        "apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
        "metadata": {"name": name, "namespace": namespace, "uid": "u-1", "generation": 1,
                     "resourceVersion": resource_version},
        "spec": {"delivery": {"retry": 3}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    })
}

const BROKERS: &str = "/apis/eventing.knative.dev/v1/namespaces/team/brokers";

#[tokio::test]
async fn get_reads_the_object_and_a_404_is_none() {
    let (store, mut server) = store();
    let (found, requests) = exchange(
        &mut server,
        store.get(kind("Broker"), "team", "orders"),
        vec![(200, broker("team", "orders", "7"))],
    )
    .await;
    let found = found.unwrap().expect("the broker");
    assert_eq!(found["spec"]["delivery"]["retry"], 3);
    assert_eq!(found["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].path, format!("{BROKERS}/orders"));

    let (missing, requests) = exchange(
        &mut server,
        store.get(kind("Broker"), "team", "gone"),
        vec![(404, status(404, "NotFound", "brokers \"gone\" not found"))],
    )
    .await;
    assert!(missing.unwrap().is_none());
    assert_eq!(requests.len(), 1);
}

#[tokio::test]
async fn list_across_namespaces_is_ordered_and_typed() {
    let (store, mut server) = store();
    // List items come without apiVersion and kind, in the server's order.
    let item = |namespace: &str, name: &str| {
        json!({"metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"},
               "spec": {"broker": "default", "subscriber": {"uri": "http://sink"}}})
    };
    let list = json!({
        "apiVersion": "eventing.knative.dev/v1", "kind": "TriggerList",
        "metadata": {"resourceVersion": "9"},
        "items": [item("zeta", "a"), item("alpha", "b"), item("alpha", "a")],
    });
    let (listed, requests) = exchange(
        &mut server,
        store.list(kind("Trigger"), None),
        vec![(200, list)],
    )
    .await;
    let listed = listed.unwrap();
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].path, "/apis/eventing.knative.dev/v1/triggers");
    let keys: Vec<_> = listed
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["metadata"]["namespace"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(keys, ["alpha/a", "alpha/b", "zeta/a"]);
    assert_eq!(listed[0]["kind"], "Trigger");
    assert_eq!(listed[0]["apiVersion"], "eventing.knative.dev/v1");

    let (_, requests) = exchange(
        &mut server,
        store.list(kind("Trigger"), Some("team")),
        vec![(
            200,
            json!({"kind": "TriggerList", "metadata": {}, "items": []}),
        )],
    )
    .await;
    assert_eq!(
        requests[0].path,
        "/apis/eventing.knative.dev/v1/namespaces/team/triggers"
    );
}

#[tokio::test]
async fn apply_is_a_forced_server_side_apply_by_rivulet() {
    let (store, mut server) = store();
    let manifest = json!({
        "apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
        "metadata": {"name": "orders", "namespace": "team", "resourceVersion": "3",
                     "labels": {"tier": "gold"}},
        "status": {"conditions": []},
    });
    let (applied, requests) = exchange(
        &mut server,
        store.apply(kind("Broker"), manifest),
        vec![
            (404, status(404, "NotFound", "not found")),
            (201, broker("team", "orders", "1")),
        ],
    )
    .await;
    let (object, outcome) = applied.unwrap();
    assert_eq!(outcome, Applied::Created);
    assert_eq!(object["metadata"]["uid"], "u-1");

    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].method, "GET");
    let patch = &requests[1];
    assert_eq!(patch.method, "PATCH");
    assert_eq!(patch.path, format!("{BROKERS}/orders"));
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(patch.query("fieldManager"), Some("rivulet"));
    assert_eq!(patch.query("force"), Some("true"));
    assert_eq!(patch.body["apiVersion"], "eventing.knative.dev/v1");
    assert_eq!(patch.body["kind"], "Broker");
    assert_eq!(patch.body["metadata"]["labels"]["tier"], "gold");
    assert_eq!(patch.body["spec"], json!({}), "spec is defaulted");
    assert!(
        patch.body.get("status").is_none(),
        "status is not applied: {}",
        patch.body
    );
    assert!(
        patch.body["metadata"].get("resourceVersion").is_none(),
        "server-owned metadata is left out: {}",
        patch.body
    );
}

#[tokio::test]
async fn apply_tells_unchanged_from_updated_by_resource_version() {
    let (store, mut server) = store();
    let manifest = json!({"metadata": {"name": "orders", "namespace": "team"},
                          "spec": {"delivery": {"retry": 3}}});
    let (unchanged, _) = exchange(
        &mut server,
        store.apply(kind("Broker"), manifest.clone()),
        vec![
            (200, broker("team", "orders", "5")),
            (200, broker("team", "orders", "5")),
        ],
    )
    .await;
    assert_eq!(unchanged.unwrap().1, Applied::Unchanged);
    let (updated, _) = exchange(
        &mut server,
        store.apply(kind("Broker"), manifest),
        vec![
            (200, broker("team", "orders", "5")),
            (200, broker("team", "orders", "6")),
        ],
    )
    .await;
    assert_eq!(updated.unwrap().1, Applied::Updated);
}

#[tokio::test]
async fn config_maps_are_applied_in_the_core_group() {
    let (store, mut server) = store();
    let config_map = json!({"metadata": {"name": "kafka-broker-config"},
                            "data": {"bootstrap.servers": "kafka:9092"}});
    let stored = json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "kafka-broker-config", "namespace": "default",
                                     "resourceVersion": "2"},
                        "data": {"bootstrap.servers": "kafka:9092"}});
    let (applied, requests) = exchange(
        &mut server,
        store.apply(kind("ConfigMap"), config_map),
        vec![(404, status(404, "NotFound", "not found")), (201, stored)],
    )
    .await;
    assert_eq!(applied.unwrap().1, Applied::Created);
    let path = "/api/v1/namespaces/default/configmaps/kafka-broker-config";
    assert_eq!(requests[0].path, path);
    assert_eq!(requests[1].method, "PATCH");
    assert_eq!(requests[1].path, path);
    assert_eq!(requests[1].body["apiVersion"], "v1");
    assert!(
        requests[1].body.get("spec").is_none(),
        "core kinds get no spec"
    );
}

#[tokio::test]
async fn invalid_objects_are_refused_before_any_request() {
    let (store, mut server) = store();
    let (refused, requests) = exchange(
        &mut server,
        store.apply(
            kind("Broker"),
            json!({"metadata": {"name": "Bad_Name"}, "spec": {}}),
        ),
        vec![],
    )
    .await;
    let error = refused.unwrap_err();
    assert!(matches!(error, StoreError::Invalid(_)), "{error:?}");
    assert!(error.to_string().contains("metadata.name"), "{error}");
    assert!(requests.is_empty(), "{requests:?}");
}

#[tokio::test]
async fn forbidden_transitions_are_refused_before_the_patch() {
    let (store, mut server) = store();
    let trigger = |broker: &str| {
        json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
               "metadata": {"name": "t", "namespace": "team", "resourceVersion": "4"},
               "spec": {"broker": broker, "subscriber": {"uri": "http://sink"}}})
    };
    let (refused, requests) = exchange(
        &mut server,
        store.apply(kind("Trigger"), trigger("other")),
        vec![(200, trigger("orders"))],
    )
    .await;
    let error = refused.unwrap_err();
    assert!(error.to_string().contains("spec.broker"), "{error}");
    assert_eq!(requests.len(), 1, "only the read: {requests:?}");
    assert_eq!(requests[0].method, "GET");
}

#[tokio::test]
async fn put_status_applies_to_the_status_subresource() {
    let (store, mut server) = store();
    let written = json!({"conditions": [{"type": "Ready", "status": "False", "reason": "X"}]});
    let (result, requests) = exchange(
        &mut server,
        store.put_status(kind("Broker"), "team", "orders", written.clone()),
        vec![(200, broker("team", "orders", "8"))],
    )
    .await;
    result.unwrap();
    let patch = &requests[0];
    assert_eq!(patch.method, "PATCH");
    assert_eq!(patch.path, format!("{BROKERS}/orders/status"));
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(patch.query("fieldManager"), Some("rivulet"));
    assert_eq!(patch.query("force"), Some("true"));
    assert_eq!(patch.body["status"], written);
    assert_eq!(patch.body["kind"], "Broker");
    assert!(patch.body.get("spec").is_none(), "{}", patch.body);

    let (missing, _) = exchange(
        &mut server,
        store.put_status(kind("Broker"), "team", "gone", json!({})),
        vec![(404, status(404, "NotFound", "brokers \"gone\" not found"))],
    )
    .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound { .. })),
        "{missing:?}"
    );
}

#[tokio::test]
async fn delete_sends_delete_and_returns_the_object() {
    let (store, mut server) = store();
    let (deleted, requests) = exchange(
        &mut server,
        store.delete(kind("Broker"), "team", "orders"),
        vec![(200, broker("team", "orders", "9"))],
    )
    .await;
    assert_eq!(deleted.unwrap()["metadata"]["name"], "orders");
    assert_eq!(requests[0].method, "DELETE");
    assert_eq!(requests[0].path, format!("{BROKERS}/orders"));

    let (missing, _) = exchange(
        &mut server,
        store.delete(kind("Broker"), "team", "gone"),
        vec![(404, status(404, "NotFound", "brokers \"gone\" not found"))],
    )
    .await;
    let error = missing.unwrap_err();
    assert!(matches!(error, StoreError::NotFound { .. }), "{error:?}");
}

#[tokio::test]
async fn api_errors_keep_the_servers_code_and_message() {
    let (store, mut server) = store();
    let (conflict, _) = exchange(
        &mut server,
        store.apply(
            kind("Broker"),
            json!({"metadata": {"name": "orders", "namespace": "team"}}),
        ),
        vec![
            (404, status(404, "NotFound", "not found")),
            (
                409,
                status(409, "Conflict", "Apply failed with 1 conflict: spec.config"),
            ),
        ],
    )
    .await;
    match conflict.unwrap_err() {
        StoreError::Api {
            code,
            reason,
            message,
        } => {
            assert_eq!(code, 409);
            assert_eq!(reason, "Conflict");
            assert!(message.contains("1 conflict"), "{message}");
        }
        other => panic!("expected an API error, got {other:?}"),
    }

    // Not every failure carries a Status: a proxy in front of the server answers in text.
    let (failed, _) = exchange(
        &mut server,
        store.list(kind("Broker"), None),
        vec![(500, json!("etcdserver: request timed out"))],
    )
    .await;
    let error = failed.unwrap_err();
    assert!(
        matches!(error, StoreError::Api { code: 500, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("etcdserver"), "{error}");
}

#[tokio::test]
async fn watching_announces_what_the_initial_listing_finds() {
    let (store, mut server) = store();
    let mut changes = store.watch();
    // One watch per custom resource kind, each starting with a list. Brokers have one;
    // other kinds none. Watch requests are never answered: no change comes after.
    let mut pending_watches = Vec::new();
    let mut paths = Vec::new();
    let announced = loop {
        tokio::select! {
            change = changes.recv() => break change.expect("a change notice"),
            Some((request, respond)) = server.next_request() => {
                let request = seen(request).await;
                assert_eq!(request.method, "GET");
                assert!(!request.path.starts_with("/api/v1/"), "core kinds are not watched: {}", request.path);
                if request.query("watch") == Some("true") {
                    pending_watches.push(respond);
                    continue;
                }
                paths.push(request.path.clone());
                let items = if request.path == "/apis/eventing.knative.dev/v1/brokers" {
                    vec![broker("team", "orders", "3")]
                } else {
                    vec![]
                };
                respond.send_response(answer(200, json!({
                    "kind": "List", "metadata": {"resourceVersion": "10"}, "items": items,
                })));
            }
        }
    };
    match announced {
        StoreEvent::Applied { kind, object } => {
            assert_eq!(kind.kind, "Broker");
            assert_eq!(object["metadata"]["name"], "orders");
            assert_eq!(object["kind"], "Broker");
        }
        other => panic!("expected Applied, got {other:?}"),
    }
}

/// Secrets are read by name (the roles grant `get` alone) and never listed: a listing is
/// refused before any request reaches the API server.
#[tokio::test]
async fn secrets_are_read_by_name_and_never_listed() {
    let (store, mut server) = store();
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "creds", "namespace": "team", "resourceVersion": "3"},
        "data": {"uri": "YW1xcDovL3g="}
    });
    let (found, requests) = exchange(
        &mut server,
        store.get(kind("Secret"), "team", "creds"),
        vec![(200, secret)],
    )
    .await;
    assert_eq!(
        found.unwrap().expect("the secret")["data"]["uri"],
        "YW1xcDovL3g="
    );
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].path, "/api/v1/namespaces/team/secrets/creds");

    for namespace in [Some("team"), None] {
        let (listed, requests) = exchange(
            &mut server,
            store.list(kind("Secret"), namespace),
            Vec::new(),
        )
        .await;
        let error = listed.expect_err("listing Secrets is refused");
        assert!(
            matches!(error, StoreError::Api { code: 403, .. }),
            "{error}"
        );
        assert!(requests.is_empty(), "no request was made: {requests:?}");
    }
}
