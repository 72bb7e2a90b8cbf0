//! The controller and the data plane against a scripted Kubernetes API server: finalizers,
//! status, Kubernetes Events, error and requeue paths, cleanup on deletion, and a data plane
//! that delivers to the address the controller resolved.

use rivulet_testkit as support;

use std::time::Duration;

use rivulet::runtime::{Action, Role};
use serde_json::{Value, json};
use support::kube_api::{
    applied, condition, context_in, deleted, empty_list, exchange, next_background_request,
    status_error,
};
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

#[tokio::test]
async fn controller_puts_its_finalizer_on_a_broker_then_writes_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, mut server) = context_in(Role::Controller, dir.path());
    let object = broker();
    let (action, requests) = exchange(
        &mut server,
        ctx.handle_change(&applied("Broker", &object)),
        vec![
            (
                200,
                with_finalizer(object.clone(), "brokers.eventing.knative.dev"),
            ),
            (200, object.clone()),
            (200, empty_list("eventing.knative.dev/v1", "Trigger")),
        ],
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
    let dir = tempfile::tempdir().unwrap();
    let (ctx, mut server) = context_in(Role::Controller, dir.path());
    let object = broker();
    let (action, requests) = exchange(
        &mut server,
        ctx.handle_change(&applied("Broker", &object)),
        vec![(
            500,
            status_error(500, "InternalError", "etcd is having a bad day"),
        )],
    )
    .await;
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(
        matches!(action, Action::Requeue(after) if after > Duration::ZERO),
        "{action:?}"
    );
    let event = next_background_request(&mut server, json!({})).await;
    assert_eq!(event.method, "POST");
    assert_eq!(event.path, "/apis/events.k8s.io/v1/namespaces/team/events");
    assert_eq!(event.body["type"], "Warning");
    assert_eq!(event.body["reason"], "ApiServerError");
    assert_eq!(event.body["reportingController"], "rivulet-controller");
    assert_eq!(event.body["regarding"]["kind"], "Broker");
    assert_eq!(event.body["regarding"]["name"], "orders");
    assert_eq!(event.body["regarding"]["uid"], "b-1");
    let note = event.body["note"].as_str().unwrap();
    assert!(note.contains("etcd is having a bad day"), "{note}");
}

#[tokio::test]
async fn a_trigger_without_its_broker_is_not_ready_and_says_so_once_in_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, mut server) = context_in(Role::Controller, dir.path());
    let object = with_finalizer(
        trigger(json!({"uri": "http://shipping.team.svc/"})),
        "triggers.eventing.knative.dev",
    );
    let change = applied("Trigger", &object);
    let (_, requests) = exchange(
        &mut server,
        ctx.handle_change(&change),
        vec![(200, object.clone())],
    )
    .await;
    // The finalizer is there already: only the status is written.
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].path, format!("{TRIGGERS}/ship/status"));
    let status = &requests[0].body["status"];
    assert_eq!(status["subscriberUri"], "http://shipping.team.svc/");
    let ready = condition(status, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "BrokerDoesNotExist");

    let event = next_background_request(&mut server, json!({})).await;
    assert_eq!(event.path, "/apis/events.k8s.io/v1/namespaces/team/events");
    assert_eq!(event.body["type"], "Warning");
    assert_eq!(event.body["reason"], "BrokerDoesNotExist");
    assert_eq!(event.body["regarding"]["kind"], "Trigger");

    // The same state again is not news: the status is written, no second Event.
    let (_, again) = exchange(
        &mut server,
        ctx.handle_change(&change),
        vec![(200, object.clone())],
    )
    .await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), server.next_request())
            .await
            .is_err(),
        "no further request (Event) expected"
    );
}

#[tokio::test]
async fn deleting_a_broker_removes_its_channel_then_its_finalizer_and_cleans_up_once() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, mut server) = context_in(Role::Controller, dir.path());
    let object = with_finalizer(broker(), "brokers.eventing.knative.dev");
    exchange(
        &mut server,
        ctx.handle_change(&applied("Broker", &object)),
        vec![
            (200, object.clone()),
            (200, empty_list("eventing.knative.dev/v1", "Trigger")),
        ],
    )
    .await;
    assert!(ctx.brokers.get("team", "orders").is_some());

    let mut deleting = object.clone();
    deleting["metadata"]["deletionTimestamp"] = json!("2026-11-26T12:00:00Z");
    let (action, requests) = exchange(
        &mut server,
        ctx.handle_change(&applied("Broker", &deleting)),
        vec![
            (200, empty_list("eventing.knative.dev/v1", "Trigger")),
            (200, deleting.clone()),
        ],
    )
    .await;
    assert_eq!(action, Action::AwaitChange);
    assert!(ctx.brokers.get("team", "orders").is_none());
    assert_eq!(requests[0].path, TRIGGERS);
    let release = &requests[1];
    assert_eq!(release.method, "PATCH");
    assert_eq!(release.path, format!("{BROKERS}/orders"));
    assert!(release.query.contains("fieldManager=rivulet-finalizer"));
    assert_eq!(release.body["metadata"]["finalizers"], json!([]));

    // The object's final deletion: its cleanup already ran, nothing more is asked.
    let (_, after) = exchange(
        &mut server,
        ctx.handle_change(&deleted("Broker", &deleting)),
        vec![],
    )
    .await;
    assert!(after.is_empty(), "{after:?}");
}

#[tokio::test]
async fn a_failed_cleanup_keeps_the_finalizer_and_requeues() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, mut server) = context_in(Role::Controller, dir.path());
    let mut deleting = with_finalizer(broker(), "brokers.eventing.knative.dev");
    deleting["metadata"]["deletionTimestamp"] = json!("2026-11-26T12:00:00Z");
    let (action, requests) = exchange(
        &mut server,
        ctx.handle_change(&applied("Broker", &deleting)),
        vec![
            (200, empty_list("eventing.knative.dev/v1", "Trigger")),
            (403, status_error(403, "Forbidden", "cannot patch brokers")),
        ],
    )
    .await;
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(matches!(action, Action::Requeue(_)), "{action:?}");
    let event = next_background_request(&mut server, json!({})).await;
    assert_eq!(event.body["reason"], "ApiServerError");
    assert!(
        event.body["note"]
            .as_str()
            .unwrap()
            .contains("cannot patch brokers")
    );
}

#[tokio::test]
async fn the_data_plane_writes_no_status_and_delivers_to_the_address_the_controller_resolved() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, mut server) = context_in(Role::DataPlane, dir.path());
    let subscriber = support::Recorder::start().await;

    let (_, requests) = exchange(
        &mut server,
        ctx.handle_change(&applied("Broker", &broker())),
        vec![(200, empty_list("eventing.knative.dev/v1", "Trigger"))],
    )
    .await;
    // No finalizer, no status: only the broker's triggers are looked up.
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].method, "GET");

    // The spec names a Service the data plane could not resolve itself; the status holds
    // what the controller made of it.
    let mut object =
        trigger(json!({"ref": {"apiVersion": "v1", "kind": "Service", "name": "shipping"}}));
    object["status"] = json!({"observedGeneration": 3, "subscriberUri": subscriber.url});
    let (_, requests) = exchange(
        &mut server,
        ctx.handle_change(&applied("Trigger", &object)),
        vec![],
    )
    .await;
    assert!(requests.is_empty(), "{requests:?}");

    let response = ctx
        .ingress
        .clone()
        .router()
        .oneshot(
            http::Request::post("/team/orders")
                .header("ce-specversion", "1.0")
                .header("ce-id", "e-1")
                .header("ce-source", "/orders")
                .header("ce-type", "order.created")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(r#"{"n":1}"#))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let received = subscriber.wait_for_id("e-1").await;
    assert_eq!(received.event.ty, "order.created");
}

fn order_event(id: &str) -> http::Request<axum::body::Body> {
    http::Request::post("/team/orders")
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/orders")
        .header("ce-type", "order.created")
        .body(axum::body::Body::empty())
        .unwrap()
}

#[tokio::test]
async fn the_data_plane_waits_for_the_controller_to_see_a_new_generation() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, mut server) = context_in(Role::DataPlane, dir.path());
    exchange(
        &mut server,
        ctx.handle_change(&applied("Broker", &broker())),
        vec![(200, empty_list("eventing.knative.dev/v1", "Trigger"))],
    )
    .await;
    let stale = support::Recorder::start().await;
    let current = support::Recorder::start().await;
    // Generation 3 in the spec, but the status is of generation 2: its URL may be stale.
    let mut object = trigger(json!({"uri": current.url}));
    object["status"] = json!({"observedGeneration": 2, "subscriberUri": stale.url});
    exchange(
        &mut server,
        ctx.handle_change(&applied("Trigger", &object)),
        vec![],
    )
    .await;
    let router = ctx.ingress.clone().router();
    let response = router.clone().oneshot(order_event("e-2")).await.unwrap();
    assert_eq!(response.status(), 202);

    // The controller catches up; from now on events go to the current address.
    object["status"] = json!({"observedGeneration": 3, "subscriberUri": current.url});
    exchange(
        &mut server,
        ctx.handle_change(&applied("Trigger", &object)),
        vec![],
    )
    .await;
    let response = router.oneshot(order_event("e-3")).await.unwrap();
    assert_eq!(response.status(), 202);
    current.wait_for_id("e-3").await;
    assert_eq!(stale.count(), 0, "nothing goes to the stale address");
}
