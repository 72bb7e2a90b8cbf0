//! Delivery health: Kubernetes Events the data plane posts on Triggers (dead-lettered
//! deliveries, a subscriber failing and recovering) and Brokers (refused senders), against a
//! scripted API server; and the Trigger's `DeliveryHealthy` condition in standalone.

use rivulet_testkit as support;

use std::sync::Arc;
use std::time::Duration;

use rivulet::runtime::{Context, Role};
use serde_json::{Value, json};
use support::kube_api::{self, Reply, Requests, Seen, answer, applied, status_error};
use support::oidc::{TestIssuer, TestKey, claims};
use support::{Recorder, condition, wait_for};
use support::{TestEvent, TestServer};
use tower::ServiceExt;

const NS: &str = "team";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/team/events";
const WAIT: Duration = Duration::from_secs(30);

fn broker() -> Value {
    json!({
        "apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
        "metadata": {"name": "orders", "namespace": NS, "uid": "b-1", "generation": 1},
        "spec": {}
    })
}

/// A trigger as the data plane sees it once the controller resolved its destinations.
fn trigger(name: &str, subscriber: &str, dead_letter: Option<&str>) -> Value {
    let mut delivery = json!({"retry": 0});
    let mut status = json!({"observedGeneration": 1, "subscriberUri": subscriber});
    if let Some(sink) = dead_letter {
        delivery["deadLetterSink"] = json!({"uri": sink});
        status["deadLetterSinkUri"] = json!(sink);
    }
    json!({
        "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"), "generation": 1},
        "spec": {"broker": "orders", "subscriber": {"uri": subscriber}, "delivery": delivery},
        "status": status
    })
}

/// A data plane on a scripted API server that lists nothing and takes every Event posted.
struct DataPlane {
    ctx: Arc<Context>,
    requests: Requests,
    _dir: tempfile::TempDir,
}

impl DataPlane {
    fn start() -> DataPlane {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, server) = kube_api::context_in(Role::DataPlane, dir.path());
        let requests = kube_api::serve(server, |seen: &Seen| {
            Reply::Now(match seen.method.as_str() {
                "GET" => answer(
                    200,
                    &json!({"apiVersion": "v1", "kind": "List",
                            "metadata": {"resourceVersion": "1"}, "items": []}),
                ),
                "POST" if seen.path == EVENTS => answer(201, &seen.body),
                _ => answer(404, &status_error(404, "NotFound", "not here")),
            })
        });
        DataPlane {
            ctx,
            requests,
            _dir: dir,
        }
    }

    async fn apply(&self, kind: &str, object: &Value) {
        self.ctx.handle_change(&applied(kind, object)).await;
    }

    async fn post(&self, id: &str, token: Option<&str>) -> u16 {
        let mut request = http::Request::post(format!("/{NS}/orders"))
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-source", "/orders")
            .header("ce-type", "order.created");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(axum::body::Body::empty()).unwrap();
        let router = self.ctx.ingress.clone().router();
        router.oneshot(request).await.unwrap().status().as_u16()
    }

    /// The Events posted with `reason`, once there is one.
    async fn events(&self, reason: &str) -> Vec<Value> {
        wait_for(&format!("a {reason} Event"), WAIT, || async {
            let found = self.posted(reason);
            (!found.is_empty()).then_some(found)
        })
        .await
    }

    fn posted(&self, reason: &str) -> Vec<Value> {
        self.requests
            .to(EVENTS)
            .into_iter()
            .map(|r| r.body)
            .filter(|body| body["reason"] == reason)
            .collect()
    }
}

/// Checks `event` is of `type_`, about `kind` `team/{name}` with `uid`, from the data plane.
fn assert_about(event: &Value, type_: &str, kind: &str, name: &str, uid: &str) {
    assert_eq!(event["type"], type_, "{event}");
    let regarding = &event["regarding"];
    assert_eq!(regarding["kind"], kind, "{event}");
    assert_eq!(regarding["name"], name, "{event}");
    assert_eq!(regarding["namespace"], NS, "{event}");
    assert_eq!(regarding["uid"], uid, "{event}");
    assert_eq!(
        regarding["apiVersion"], "eventing.knative.dev/v1",
        "{event}"
    );
    assert_eq!(
        event["reportingController"], "rivulet-data-plane",
        "{event}"
    );
}

fn note(event: &Value) -> &str {
    event["note"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn dead_lettered_deliveries_are_reported_on_the_trigger() {
    let plane = DataPlane::start();
    let subscriber = Recorder::start().await;
    subscriber.set_status(500);
    let dead_letters = Recorder::start().await;
    plane.apply("Broker", &broker()).await;
    plane
        .apply(
            "Trigger",
            &trigger("ship", &subscriber.url, Some(&dead_letters.url)),
        )
        .await;

    assert_eq!(plane.post("e-1", None).await, 202);
    dead_letters.wait_for_id("e-1").await;
    let events = plane.events("DeliveryDeadLettered").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_about(event, "Warning", "Trigger", "ship", "uid-ship");
    let note = note(event);
    assert!(
        note.starts_with("1 event sent to the dead-letter sink"),
        "{note}"
    );
    assert!(note.contains("500"), "{note}");
    // One dead-lettered event is no failing subscriber yet; nor does the data plane write
    // status (the controller owns it).
    assert!(plane.posted("SubscriberFailing").is_empty());
    assert!(
        plane
            .requests
            .all()
            .iter()
            .all(|r| !r.path.ends_with("/status")),
        "{:?}",
        plane.requests.all()
    );
}

#[tokio::test]
async fn a_failing_subscriber_is_reported_once_then_its_recovery() {
    let plane = DataPlane::start();
    let subscriber = Recorder::start().await;
    subscriber.set_status(500);
    plane.apply("Broker", &broker()).await;
    plane
        .apply("Trigger", &trigger("bill", &subscriber.url, None))
        .await;

    for id in ["f-1", "f-2", "f-3", "f-4"] {
        assert_eq!(plane.post(id, None).await, 202);
    }
    let events = plane.events("SubscriberFailing").await;
    let event = &events[0];
    assert_about(event, "Warning", "Trigger", "bill", "uid-bill");
    let note = note(event);
    assert!(note.contains("deliveries in a row failed"), "{note}");
    assert!(note.contains("500 (status)"), "{note}");
    wait_for("the fourth attempt", WAIT, || async {
        (subscriber.attempts().len() >= 4).then_some(())
    })
    .await;

    subscriber.set_status(202);
    assert_eq!(plane.post("ok-1", None).await, 202);
    subscriber.wait_for_id("ok-1").await;
    let recovered = plane.events("SubscriberRecovered").await;
    assert_about(&recovered[0], "Normal", "Trigger", "bill", "uid-bill");
    assert_eq!(
        plane.posted("SubscriberFailing").len(),
        1,
        "failures within a minute make one Event"
    );
    assert!(plane.posted("DeliveryDeadLettered").is_empty());
}

#[tokio::test]
async fn senders_refused_by_an_event_policy_or_without_a_token_are_reported_on_the_broker() {
    let plane = DataPlane::start();
    let key = TestKey::generate("k");
    let issuer = TestIssuer::start(vec![key.clone()]).await;
    let mut features = rivulet::features::Features::default();
    features.set_pair("authentication-oidc=enabled").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let auth = rivulet::auth::setup::build(
        rivulet::auth::setup::AuthSettings {
            data_dir: dir.path(),
            base_url: "http://rivulet.test",
            oidc_issuers: std::slice::from_ref(&issuer.url),
            oidc_jwks_refresh: Duration::from_secs(300),
            kube_tokens: None,
        },
        rivulet::features::FeatureFlags::new(features),
        Arc::new(rivulet::egress::Egress::default()),
    )
    .unwrap();
    plane.ctx.ingress.set_auth(auth);
    plane.apply("Broker", &broker()).await;
    let policy = json!({
        "apiVersion": "eventing.knative.dev/v1alpha1", "kind": "EventPolicy",
        "metadata": {"name": "orders-senders", "namespace": NS, "generation": 1},
        "spec": {
            "to": [{"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "orders"}}],
            "from": [{"sub": "system:serviceaccount:team:checkout"}]
        }
    });
    plane.apply("EventPolicy", &policy).await;

    let audience = format!("eventing.knative.dev/broker/{NS}/orders");
    let intruder = "system:serviceaccount:team:intruder";
    let token = key.sign(&claims(&issuer.url, intruder, &audience));
    assert_eq!(plane.post("p-1", Some(&token)).await, 403);
    assert_eq!(plane.post("p-2", Some(&token)).await, 403);
    assert_eq!(plane.post("p-3", None).await, 401);

    let refused = plane.events("EventPolicyRefused").await;
    let event = &refused[0];
    assert_about(event, "Warning", "Broker", "orders", "b-1");
    let note = note(event);
    assert!(note.contains(intruder), "{note}");
    assert!(note.contains("orders-senders"), "{note}");
    let unauthenticated = plane.events("SenderUnauthenticated").await;
    assert_about(&unauthenticated[0], "Warning", "Broker", "orders", "b-1");
    assert!(
        note.starts_with("1 request refused") || note.starts_with("2 requests refused"),
        "{note}"
    );
}

#[tokio::test]
async fn standalone_trigger_status_carries_the_last_failure_without_losing_ready() {
    let server = TestServer::start_ready().await;
    let subscriber = Recorder::start().await;
    subscriber.set_status(500);
    let mut manifest = support::trigger("default", "flaky", "default", &subscriber.url);
    manifest["spec"]["delivery"] = json!({"retry": 0});
    server.create_trigger(&manifest).await;

    for id in ["s-1", "s-2", "s-3"] {
        server
            .send("default", "default", &TestEvent::new(id, "order.created"))
            .await;
    }
    let failing = server
        .wait_condition("Trigger", "default", "flaky", "DeliveryHealthy", "False")
        .await;
    assert_eq!(failing["reason"], "SubscriberFailing", "{failing}");
    assert_eq!(failing["severity"], "Warning", "{failing}");
    let message = failing["message"].as_str().unwrap_or_default();
    assert!(message.contains("in a row failed"), "{message}");
    assert!(message.contains("500 (status)"), "{message}");
    let trigger = server.get("Trigger", "default", "flaky").await.unwrap();
    let ready = condition(&trigger, "Ready").unwrap();
    assert_eq!(
        ready["status"], "True",
        "a failing subscriber keeps Ready: {ready}"
    );

    subscriber.set_status(202);
    server
        .send(
            "default",
            "default",
            &TestEvent::new("s-ok", "order.created"),
        )
        .await;
    subscriber.wait_for_id("s-ok").await;
    let healthy = server
        .wait_condition("Trigger", "default", "flaky", "DeliveryHealthy", "True")
        .await;
    assert!(healthy.get("reason").is_none(), "{healthy}");
}
