//! Channels and flows on Kubernetes, against a scripted API server: the controller builds flows
//! as Knative does (a Sequence's channels and Subscriptions applied server-side with owner
//! references, so Kubernetes deletes them with it), and the data plane serves a channel and
//! delivers to the address the controller resolved, writing nothing.

use rivulet_testkit as support;

use rivulet::runtime::{Action, Role};
use serde_json::{Value, json};
use support::kube_api::{Scripted, Seen, empty_list, status_error};

const MESSAGING: &str = "/apis/messaging.knative.dev/v1/namespaces/team";

/// Lists are empty, single objects missing, and applies answered with what was sent.
fn empty_cluster(seen: &Seen) -> (u16, Value) {
    let segments = seen.path.trim_end_matches('/').split('/').count();
    match seen.method.as_str() {
        "GET" if segments == 7 => (200, empty_list("v1", "List")),
        "GET" => (404, status_error(404, "NotFound", "not found")),
        _ => (200, seen.body.clone()),
    }
}

#[tokio::test]
async fn the_controller_builds_a_sequence_from_channels_and_subscriptions_it_owns() {
    let mut cluster = Scripted::new(Role::Controller);
    let sequence = json!({
        "apiVersion": "flows.knative.dev/v1", "kind": "Sequence",
        "metadata": {"name": "flow", "namespace": "team", "uid": "s-1", "generation": 2},
        "spec": {
            "channelTemplate": {"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel"},
            "steps": [{"uri": "http://a.example/"}, {"uri": "http://b.example/", "delivery": {"retry": 4}}],
            "reply": {"uri": "http://end.example/"},
        }
    });
    let (action, requests) = cluster.apply_by("Sequence", &sequence, empty_cluster).await;
    assert!(
        matches!(action, Action::Requeue(_)),
        "not ready yet: {action:?}"
    );

    let applied = |path: &str| -> Value {
        requests
            .iter()
            .find(|r| r.method == "PATCH" && r.path == path)
            .unwrap_or_else(|| {
                panic!(
                    "no apply of {path}: {:?}",
                    requests
                        .iter()
                        .map(|r| (&r.method, &r.path))
                        .collect::<Vec<_>>()
                )
            })
            .body
            .clone()
    };
    for step in 0..2 {
        let channel = applied(&format!(
            "{MESSAGING}/inmemorychannels/flow-kn-sequence-{step}"
        ));
        let owner = &channel["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "Sequence");
        assert_eq!(owner["uid"], "s-1");
        assert_eq!(owner["controller"], true);
        assert_eq!(owner["blockOwnerDeletion"], true);
    }
    let first = applied(&format!("{MESSAGING}/subscriptions/flow-kn-sequence-0"));
    assert_eq!(first["spec"]["channel"]["kind"], "InMemoryChannel");
    assert_eq!(first["spec"]["channel"]["name"], "flow-kn-sequence-0");
    assert_eq!(first["spec"]["subscriber"]["uri"], "http://a.example/");
    assert_eq!(
        first["spec"]["reply"]["ref"]["name"], "flow-kn-sequence-1",
        "to the next step"
    );
    let last = applied(&format!("{MESSAGING}/subscriptions/flow-kn-sequence-1"));
    assert_eq!(last["spec"]["reply"]["uri"], "http://end.example/");
    assert_eq!(last["spec"]["delivery"]["retry"], 4);
    assert_eq!(last["metadata"]["ownerReferences"][0]["uid"], "s-1");

    let status =
        &applied("/apis/flows.knative.dev/v1/namespaces/team/sequences/flow/status")["status"];
    assert_eq!(status["observedGeneration"], 2);
    assert_eq!(status["channelStatuses"].as_array().unwrap().len(), 2);
    assert_eq!(
        status["subscriptionStatuses"][1]["subscription"]["name"],
        "flow-kn-sequence-1"
    );
    let ready = support::kube_api::condition(status, "Ready");
    assert_ne!(
        ready["status"], "True",
        "its parts have no status yet: {status}"
    );
    assert!(
        status.get("address").is_none(),
        "no address before it is ready"
    );
}

#[tokio::test]
async fn the_data_plane_serves_a_channel_and_delivers_to_the_address_the_controller_resolved() {
    use tower::ServiceExt as _;
    let mut cluster = Scripted::new(Role::DataPlane);
    let channel = json!({
        "apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel",
        "metadata": {"name": "orders", "namespace": "team", "uid": "c-1", "generation": 1},
        "spec": {}
    });
    let (_, requests) = cluster
        .apply_by("InMemoryChannel", &channel, empty_cluster)
        .await;
    assert!(
        requests.iter().all(|r| r.method == "GET"),
        "the data plane writes nothing: {requests:?}"
    );

    // The spec names a Service the data plane cannot resolve itself; the status holds what
    // the controller made of it.
    let subscriber = support::Recorder::start().await;
    let subscription = json!({
        "apiVersion": "messaging.knative.dev/v1", "kind": "Subscription",
        "metadata": {"name": "ship", "namespace": "team", "uid": "s-1", "generation": 2},
        "spec": {
            "channel": {"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel", "name": "orders"},
            "subscriber": {"ref": {"apiVersion": "v1", "kind": "Service", "name": "shipping"}}
        },
        "status": {"observedGeneration": 2, "physicalSubscription": {"subscriberUri": subscriber.url}}
    });
    let channel_path = format!("{MESSAGING}/inmemorychannels/orders");
    let (_, requests) = cluster
        .apply_by("Subscription", &subscription, |seen| {
            if seen.method == "GET" && seen.path == channel_path {
                (200, channel.clone())
            } else {
                empty_cluster(seen)
            }
        })
        .await;
    assert!(requests.iter().all(|r| r.method == "GET"), "{requests:?}");

    let router = cluster.ctx.ingress.clone().router();
    let request = http::Request::post("/team/orders-kn-channel")
        .header("ce-specversion", "1.0")
        .header("ce-id", "c-1")
        .header("ce-source", "/orders")
        .header("ce-type", "order.created")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = router.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 202);
    let received = subscriber.wait_for_id("c-1").await;
    assert_eq!(received.event.ty, "order.created");
}
