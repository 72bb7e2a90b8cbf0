//! The controller and the data plane against a scripted Kubernetes API server: finalizers,
//! status, Kubernetes Events, error and requeue paths, cleanup on deletion, and a data plane
//! that delivers to the address the controller resolved.

use rivulet_testkit as support;

use std::time::Duration;

use rivulet::runtime::{Action, Role};
use serde_json::{Value, json};
use support::kube_api::{Scripted, Seen, condition, deleted, empty_list, status_error};
use tower::ServiceExt;

const BROKERS: &str = "/apis/eventing.knative.dev/v1/namespaces/team/brokers";
const TRIGGERS: &str = "/apis/eventing.knative.dev/v1/namespaces/team/triggers";

fn broker() -> Value {
    json!({
        "apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
        "metadata": {"name": "orders", "namespace": "team", "uid": "b-1", "generation": 1},
        "spec": {}
    })
}

fn trigger(subscriber: Value) -> Value {
    json!({
        "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
        "metadata": {"name": "ship", "namespace": "team", "uid": "t-1", "generation": 3},
        "spec": {"broker": "orders", "subscriber": subscriber}
    })
}

fn with_finalizer(mut object: Value, finalizer: &str) -> Value {
    object["metadata"]["finalizers"] = json!([finalizer]);
    object
}

/// The same object, being deleted.
fn being_deleted(mut object: Value) -> Value {
    object["metadata"]["deletionTimestamp"] = json!("2026-11-26T12:00:00Z");
    object
}

/// The API server's answer to a list of the broker's triggers: there are none.
fn no_triggers() -> (u16, Value) {
    (200, empty_list("eventing.knative.dev/v1", "Trigger"))
}

/// Checks `event` is a Warning Kubernetes Event for `team/{name}` of `kind` with `reason`,
/// whose note says `note`.
fn assert_warning(event: &Seen, kind: &str, reason: &str, note: &str) {
    assert_eq!(event.method, "POST");
    assert_eq!(event.path, "/apis/events.k8s.io/v1/namespaces/team/events");
    assert_eq!(event.body["type"], "Warning", "{}", event.body);
    assert_eq!(event.body["reason"], reason, "{}", event.body);
    assert_eq!(event.body["regarding"]["kind"], kind);
    let text = event.body["note"].as_str().unwrap_or_default();
    assert!(text.contains(note), "{text}");
}

#[tokio::test]
async fn controller_puts_its_finalizer_on_a_broker_then_writes_its_status() {
    let mut cluster = Scripted::new(Role::Controller);
    let object = broker();
    let finalized = with_finalizer(object.clone(), "brokers.eventing.knative.dev");
    let (action, requests) = cluster
        .apply(
            "Broker",
            &object,
            vec![(200, finalized), (200, object.clone()), no_triggers()],
        )
        .await;
    assert_eq!(action, Action::AwaitChange);

    let finalizer = &requests[0];
    finalizer.assert_apply(&format!("{BROKERS}/orders"), "rivulet-finalizer");
    assert_eq!(
        finalizer.body["metadata"]["finalizers"],
        json!(["brokers.eventing.knative.dev"])
    );
    // Only the finalizer is claimed by that field manager.
    assert!(finalizer.body.get("spec").is_none(), "{}", finalizer.body);

    let status = &requests[1];
    assert_eq!(status.method, "PATCH");
    assert_eq!(status.path, format!("{BROKERS}/orders/status"));
    assert!(
        status.query.contains("fieldManager=rivulet"),
        "{}",
        status.query
    );
    let status = &status.body["status"];
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["address"]["url"], "http://rivulet.test/team/orders");
    for type_ in ["Ready", "IngressReady", "Addressable"] {
        assert_eq!(condition(status, type_)["status"], "True", "{type_}");
    }

    assert_eq!(requests[2].method, "GET");
    assert_eq!(requests[2].path, TRIGGERS);
    assert_eq!(requests.len(), 3);
}

#[tokio::test]
async fn a_failing_api_server_makes_the_controller_requeue_and_report_a_warning_event() {
    let mut cluster = Scripted::new(Role::Controller);
    let failing = status_error(500, "InternalError", "etcd is having a bad day");
    let (action, requests) = cluster
        .apply("Broker", &broker(), vec![(500, failing)])
        .await;
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(
        matches!(action, Action::Requeue(after) if after > Duration::ZERO),
        "{action:?}"
    );
    let event = cluster.next_background_request().await;
    assert_warning(
        &event,
        "Broker",
        "ApiServerError",
        "etcd is having a bad day",
    );
    assert_eq!(event.body["reportingController"], "rivulet-controller");
    assert_eq!(event.body["regarding"]["name"], "orders");
    assert_eq!(event.body["regarding"]["uid"], "b-1");
}

#[tokio::test]
async fn a_trigger_without_its_broker_is_not_ready_and_says_so_once_in_an_event() {
    let mut cluster = Scripted::new(Role::Controller);
    let object = with_finalizer(
        trigger(json!({"uri": "http://shipping.team.svc/"})),
        "triggers.eventing.knative.dev",
    );
    let (_, requests) = cluster
        .apply("Trigger", &object, vec![(200, object.clone())])
        .await;
    // The finalizer is there already: only the status is written.
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].path, format!("{TRIGGERS}/ship/status"));
    let status = &requests[0].body["status"];
    assert_eq!(status["subscriberUri"], "http://shipping.team.svc/");
    let ready = condition(status, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "BrokerDoesNotExist");

    let event = cluster.next_background_request().await;
    assert_warning(&event, "Trigger", "BrokerDoesNotExist", "");

    // The same state again is not news: the status is written, no second Event.
    let (_, again) = cluster
        .apply("Trigger", &object, vec![(200, object.clone())])
        .await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), cluster.server.next_request())
            .await
            .is_err(),
        "no further request (Event) expected"
    );
}

#[tokio::test]
async fn deleting_a_broker_removes_its_channel_then_its_finalizer_and_cleans_up_once() {
    let mut cluster = Scripted::new(Role::Controller);
    let object = with_finalizer(broker(), "brokers.eventing.knative.dev");
    cluster
        .apply(
            "Broker",
            &object,
            vec![(200, object.clone()), no_triggers()],
        )
        .await;
    assert!(cluster.ctx.brokers.get("team", "orders").is_some());

    let deleting = being_deleted(object);
    let (action, requests) = cluster
        .apply(
            "Broker",
            &deleting,
            vec![no_triggers(), (200, deleting.clone())],
        )
        .await;
    assert_eq!(action, Action::AwaitChange);
    assert!(cluster.ctx.brokers.get("team", "orders").is_none());
    assert_eq!(requests[0].path, TRIGGERS);
    let release = &requests[1];
    assert_eq!(release.method, "PATCH");
    assert_eq!(release.path, format!("{BROKERS}/orders"));
    assert!(release.query.contains("fieldManager=rivulet-finalizer"));
    assert_eq!(release.body["metadata"]["finalizers"], json!([]));

    // The object's final deletion: its cleanup already ran, nothing more is asked.
    let (_, after) = cluster.handle(&deleted("Broker", &deleting), vec![]).await;
    assert!(after.is_empty(), "{after:?}");
}

#[tokio::test]
async fn a_failed_cleanup_keeps_the_finalizer_and_requeues() {
    let mut cluster = Scripted::new(Role::Controller);
    let deleting = being_deleted(with_finalizer(broker(), "brokers.eventing.knative.dev"));
    let forbidden = status_error(403, "Forbidden", "cannot patch brokers");
    let (action, requests) = cluster
        .apply("Broker", &deleting, vec![no_triggers(), (403, forbidden)])
        .await;
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(matches!(action, Action::Requeue(_)), "{action:?}");
    let event = cluster.next_background_request().await;
    assert_warning(&event, "Broker", "ApiServerError", "cannot patch brokers");
}

/// An event posted to the broker team/orders, with a JSON body when `data` is given.
fn order_event(id: &str, data: Option<&'static str>) -> http::Request<axum::body::Body> {
    let request = http::Request::post("/team/orders")
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/orders")
        .header("ce-type", "order.created");
    match data {
        Some(json) => request
            .header("content-type", "application/json")
            .body(axum::body::Body::from(json)),
        None => request.body(axum::body::Body::empty()),
    }
    .unwrap()
}

/// A data plane that has seen the broker team/orders (and looked up its triggers).
async fn data_plane_with_broker() -> Scripted {
    let mut cluster = Scripted::new(Role::DataPlane);
    let (_, requests) = cluster
        .apply("Broker", &broker(), vec![no_triggers()])
        .await;
    // No finalizer, no status: only the broker's triggers are looked up.
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].method, "GET");
    cluster
}

/// Hands the data plane the trigger `object`; it asks the API server nothing.
async fn data_plane_sees_trigger(cluster: &mut Scripted, object: &Value) {
    let (_, requests) = cluster.apply("Trigger", object, vec![]).await;
    assert!(requests.is_empty(), "{requests:?}");
}

/// Posts `request` to the data plane's ingress and checks it is accepted.
async fn assert_accepted(router: &axum::Router, request: http::Request<axum::body::Body>) {
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 202);
}

#[tokio::test]
async fn the_data_plane_writes_no_status_and_delivers_to_the_address_the_controller_resolved() {
    let mut cluster = data_plane_with_broker().await;
    let subscriber = support::Recorder::start().await;

    // The spec names a Service the data plane could not resolve itself; the status holds
    // what the controller made of it.
    let mut object =
        trigger(json!({"ref": {"apiVersion": "v1", "kind": "Service", "name": "shipping"}}));
    object["status"] = json!({"observedGeneration": 3, "subscriberUri": subscriber.url});
    data_plane_sees_trigger(&mut cluster, &object).await;

    let router = cluster.ctx.ingress.clone().router();
    assert_accepted(&router, order_event("e-1", Some(r#"{"n":1}"#))).await;
    let received = subscriber.wait_for_id("e-1").await;
    assert_eq!(received.event.ty, "order.created");
}

#[tokio::test]
async fn the_data_plane_waits_for_the_controller_to_see_a_new_generation() {
    let mut cluster = data_plane_with_broker().await;
    let stale = support::Recorder::start().await;
    let current = support::Recorder::start().await;
    // Generation 3 in the spec, but the status is of generation 2: its URL may be stale.
    let mut object = trigger(json!({"uri": current.url}));
    object["status"] = json!({"observedGeneration": 2, "subscriberUri": stale.url});
    data_plane_sees_trigger(&mut cluster, &object).await;
    let router = cluster.ctx.ingress.clone().router();
    assert_accepted(&router, order_event("e-2", None)).await;

    // The controller catches up; from now on events go to the current address.
    object["status"] = json!({"observedGeneration": 3, "subscriberUri": current.url});
    data_plane_sees_trigger(&mut cluster, &object).await;
    assert_accepted(&router, order_event("e-3", None)).await;
    current.wait_for_id("e-3").await;
    assert_eq!(stale.count(), 0, "nothing goes to the stale address");
}
