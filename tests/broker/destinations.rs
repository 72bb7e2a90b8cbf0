//! Destination `ref`s resolved in Kubernetes mode against a scripted API server: which objects
//! are read (and discovered) on the way, and the URL each kind of referent gives.

use rivulet_testkit as support;

use std::sync::Arc;
use std::time::Duration;

use rivulet::resources::Destination;
use rivulet::runtime::{Action, Context, resolve_destination};
use serde_json::{Value, json};
use support::kube_api::{ApiServer, Seen, context, exchange, reconciler};

/// The base URL brokers are addressed at in the scripted context.
const BASE_URL: &str = "http://rivulet.test";

fn destination(value: Value) -> Destination {
    serde_json::from_value(value).expect("a destination")
}

/// Resolves `destination` for an object in namespace `team`, answering the API server's
/// requests with `answers`: the outcome and the paths that were read.
async fn resolve(
    ctx: &Arc<Context>,
    server: &mut ApiServer,
    destination: Value,
    answers: Vec<(u16, Value)>,
) -> (Result<String, String>, Vec<String>) {
    let destination = self::destination(destination);
    let (resolved, requests) = exchange(
        server,
        resolve_destination(&destination, "team", ctx),
        answers,
    )
    .await;
    for request in &requests {
        assert_eq!(request.method, "GET", "{request:?}");
    }
    (
        resolved,
        requests.into_iter().map(|r: Seen| r.path).collect(),
    )
}

/// The API server's answer for a missing object or resource list.
fn not_found(what: &str) -> (u16, Value) {
    let message = format!("{what} not found");
    (
        404,
        json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
               "code": 404, "reason": "NotFound", "message": message}),
    )
}

fn core_service(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": [{"port": 80, "targetPort": 8080}]}
    })
}

fn knative_service(name: &str, status: Value) -> Value {
    json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "team"},
        "spec": {"template": {"spec": {"containers": [{"image": "hello"}]}}},
        "status": status
    })
}

/// An API group version's resource list, as discovery reads it.
fn resource_list(group_version: &str, kind: &str, plural: &str) -> Value {
    json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
        "resources": [
            {"name": plural, "singularName": kind.to_lowercase(), "namespaced": true,
             "kind": kind, "verbs": ["get", "list", "watch"]},
            {"name": format!("{plural}/status"), "singularName": "", "namespaced": true,
             "kind": kind, "verbs": ["get", "patch"]}
        ]
    })
}

#[tokio::test]
async fn a_kubernetes_service_resolves_to_its_cluster_dns_name_once_it_exists() {
    let (ctx, mut server) = context();
    let (resolved, paths) = resolve(
        &ctx,
        &mut server,
        json!({"ref": {"apiVersion": "v1", "kind": "Service", "name": "web"}}),
        vec![(200, core_service("team", "web"))],
    )
    .await;
    assert_eq!(paths, ["/api/v1/namespaces/team/services/web"]);
    // As Knative writes it: no port, no trailing slash.
    assert_eq!(resolved.unwrap(), "http://web.team.svc.cluster.local");

    // The ref's own namespace wins; CA certificates on the destination mean https.
    let (resolved, paths) = resolve(
        &ctx,
        &mut server,
        json!({"ref": {"apiVersion": "v1", "kind": "Service", "name": "api", "namespace": "shop"},
               "CACerts": "-----BEGIN CERTIFICATE-----\n..."}),
        vec![(200, core_service("shop", "api"))],
    )
    .await;
    assert_eq!(paths, ["/api/v1/namespaces/shop/services/api"]);
    assert_eq!(resolved.unwrap(), "https://api.shop.svc.cluster.local");
}

#[tokio::test]
async fn a_missing_kubernetes_service_is_an_error_that_names_it() {
    let (ctx, mut server) = context();
    let (resolved, paths) = resolve(
        &ctx,
        &mut server,
        json!({"ref": {"apiVersion": "v1", "kind": "Service", "name": "gone"}}),
        vec![not_found("services \"gone\"")],
    )
    .await;
    assert_eq!(paths, ["/api/v1/namespaces/team/services/gone"]);
    assert_eq!(
        resolved.unwrap_err(),
        "Service team/gone (v1) does not exist"
    );
}

#[tokio::test]
async fn a_knative_service_resolves_to_its_address_not_its_public_url() {
    let (ctx, mut server) = context();
    let (resolved, paths) = resolve(
        &ctx,
        &mut server,
        json!({"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "hello"}}),
        vec![(
            200,
            knative_service(
                "hello",
                json!({
                    "url": "https://hello.team.example.com",
                    "address": {"url": "http://hello.team.svc.cluster.local"},
                    "conditions": [{"type": "Ready", "status": "True"}]
                }),
            ),
        )],
    )
    .await;
    // Its plural is known: no discovery request.
    assert_eq!(
        paths,
        ["/apis/serving.knative.dev/v1/namespaces/team/services/hello"]
    );
    assert_eq!(resolved.unwrap(), "http://hello.team.svc.cluster.local");
}

#[tokio::test]
async fn a_knative_service_without_an_address_yet_is_not_addressable() {
    let (ctx, mut server) = context();
    let (resolved, _) = resolve(
        &ctx,
        &mut server,
        json!({"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "hello"}}),
        vec![(
            200,
            knative_service(
                "hello",
                // Knative's resolver takes no fallback to status.url.
                json!({
                    "url": "https://hello.team.example.com",
                    "conditions": [{"type": "Ready", "status": "Unknown", "reason": "Deploying"}]
                }),
            ),
        )],
    )
    .await;
    let error = resolved.unwrap_err();
    assert_eq!(
        error,
        "Service team/hello (serving.knative.dev/v1) is not addressable: no status.address or status.addresses (yet)"
    );

    let (missing, _) = resolve(
        &ctx,
        &mut server,
        json!({"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "nope"}}),
        vec![not_found("services.serving.knative.dev \"nope\"")],
    )
    .await;
    assert_eq!(
        missing.unwrap_err(),
        "Service team/nope (serving.knative.dev/v1) does not exist"
    );
}

#[tokio::test]
async fn any_addressable_kind_is_found_by_discovery_and_read_dynamically() {
    let (ctx, mut server) = context();
    let widget = json!({
        "apiVersion": "example.dev/v1alpha1", "kind": "Widget",
        "metadata": {"name": "w1", "namespace": "team"},
        "status": {
            "address": {"name": "http", "url": "http://w1.team.svc.cluster.local"},
            "addresses": [
                {"name": "https", "url": "https://w1.team.svc.cluster.local"},
                {"name": "http", "url": "http://w1.team.svc.cluster.local"}
            ]
        }
    });
    let reference =
        json!({"ref": {"apiVersion": "example.dev/v1alpha1", "kind": "Widget", "name": "w1"}});
    let (resolved, paths) = resolve(
        &ctx,
        &mut server,
        reference.clone(),
        vec![
            (
                200,
                resource_list("example.dev/v1alpha1", "Widget", "widgets"),
            ),
            (200, widget.clone()),
        ],
    )
    .await;
    assert_eq!(
        paths,
        [
            "/apis/example.dev/v1alpha1",
            "/apis/example.dev/v1alpha1/namespaces/team/widgets/w1"
        ]
    );
    // Knative's default address: the first of status.addresses.
    assert_eq!(resolved.unwrap(), "https://w1.team.svc.cluster.local");

    // The plural is remembered: the next resolution reads the object only.
    let (resolved, paths) = resolve(&ctx, &mut server, reference, vec![(200, widget)]).await;
    assert_eq!(
        paths,
        ["/apis/example.dev/v1alpha1/namespaces/team/widgets/w1"]
    );
    assert_eq!(resolved.unwrap(), "https://w1.team.svc.cluster.local");
}

#[tokio::test]
async fn an_unknown_api_version_or_kind_is_an_error_that_names_it() {
    let (ctx, mut server) = context();
    let (resolved, paths) = resolve(
        &ctx,
        &mut server,
        json!({"ref": {"apiVersion": "nope.dev/v1", "kind": "Gadget", "name": "g"}}),
        vec![not_found(
            "the server could not find the requested resource",
        )],
    )
    .await;
    assert_eq!(paths, ["/apis/nope.dev/v1"]);
    assert_eq!(
        resolved.unwrap_err(),
        "cannot resolve a ref to Gadget team/g (nope.dev/v1): the API server does not serve that apiVersion"
    );

    let (resolved, paths) = resolve(
        &ctx,
        &mut server,
        json!({"ref": {"apiVersion": "example.dev/v1alpha1", "kind": "Gizmo", "name": "g"}}),
        vec![(
            200,
            resource_list("example.dev/v1alpha1", "Widget", "widgets"),
        )],
    )
    .await;
    assert_eq!(paths, ["/apis/example.dev/v1alpha1"]);
    assert_eq!(
        resolved.unwrap_err(),
        "cannot resolve a ref to Gizmo team/g (example.dev/v1alpha1): the API server serves no such kind in that apiVersion"
    );

    // Without an apiVersion there is nothing to discover: no request at all.
    let (resolved, paths) = resolve(
        &ctx,
        &mut server,
        json!({"ref": {"kind": "Service", "name": "web"}}),
        vec![],
    )
    .await;
    assert!(paths.is_empty(), "{paths:?}");
    assert!(
        resolved.unwrap_err().contains("needs an apiVersion"),
        "the error says what is missing"
    );
}

#[tokio::test]
async fn an_object_without_an_address_is_not_addressable() {
    let (ctx, mut server) = context();
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "team"},
        "spec": {"replicas": 1},
        "status": {"replicas": 1, "readyReplicas": 1}
    });
    let (resolved, paths) = resolve(
        &ctx,
        &mut server,
        json!({"ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}}),
        vec![
            (200, resource_list("apps/v1", "Deployment", "deployments")),
            (200, deployment),
        ],
    )
    .await;
    assert_eq!(
        paths,
        [
            "/apis/apps/v1",
            "/apis/apps/v1/namespaces/team/deployments/web"
        ]
    );
    assert_eq!(
        resolved.unwrap_err(),
        "Deployment team/web (apps/v1) is not addressable: no status.address or status.addresses (yet)"
    );
}

#[tokio::test]
async fn a_relative_uri_is_joined_to_the_resolved_url() {
    let (ctx, mut server) = context();
    let (resolved, _) = resolve(
        &ctx,
        &mut server,
        json!({"ref": {"apiVersion": "v1", "kind": "Service", "name": "web"},
               "uri": "/events?source=orders"}),
        vec![(200, core_service("team", "web"))],
    )
    .await;
    assert_eq!(
        resolved.unwrap(),
        "http://web.team.svc.cluster.local/events?source=orders"
    );

    let (resolved, _) = resolve(
        &ctx,
        &mut server,
        json!({"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "hello"},
               "uri": "hooks/in"}),
        vec![(
            200,
            knative_service(
                "hello",
                json!({"address": {"url": "http://hello.team.svc.cluster.local/base/"}}),
            ),
        )],
    )
    .await;
    assert_eq!(
        resolved.unwrap(),
        "http://hello.team.svc.cluster.local/base/hooks/in"
    );
}

#[tokio::test]
async fn kinds_rivulet_serves_are_read_from_its_store_as_before() {
    let (ctx, mut server) = context();
    let broker = json!({
        "apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
        "metadata": {"name": "default", "namespace": "team"}, "spec": {}
    });
    let (resolved, paths) = resolve(
        &ctx,
        &mut server,
        json!({"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "default"}}),
        vec![(200, broker)],
    )
    .await;
    assert_eq!(
        paths,
        ["/apis/eventing.knative.dev/v1/namespaces/team/brokers/default"]
    );
    // The ingress URL, without waiting for the broker's status.
    assert_eq!(resolved.unwrap(), format!("{BASE_URL}/team/default"));

    let sink = json!({
        "apiVersion": "sinks.rivulet.dev/v1alpha1", "kind": "EventDisplaySink",
        "metadata": {"name": "show", "namespace": "team"}, "spec": {},
        "status": {"address": {"url": "http://rivulet.test/sinks/team/show"}}
    });
    let (resolved, paths) = resolve(
        &ctx,
        &mut server,
        json!({"ref": {"apiVersion": "sinks.rivulet.dev/v1alpha1", "kind": "EventDisplaySink", "name": "show"}}),
        vec![(200, sink)],
    )
    .await;
    assert_eq!(
        paths,
        ["/apis/sinks.rivulet.dev/v1alpha1/namespaces/team/eventdisplaysinks/show"]
    );
    assert_eq!(resolved.unwrap(), "http://rivulet.test/sinks/team/show");
}

#[tokio::test]
async fn standalone_mode_still_refuses_kinds_it_does_not_serve() {
    let server = support::InProcessServer::start().await;
    let mut trigger = support::trigger("default", "to-service", "default", "http://unused");
    trigger["spec"]["subscriber"] =
        json!({"ref": {"apiVersion": "v1", "kind": "Service", "name": "web"}});
    support::apply(&server.api, &trigger).await;
    let object =
        support::wait_status(&server.api, "Trigger", "default", "to-service", "False").await;
    let resolved = support::condition(&object, "SubscriberResolved").expect("the condition");
    assert_eq!(resolved["status"], "False");
    let message = resolved["message"].as_str().unwrap();
    assert!(message.contains("Service default/web (v1)"), "{message}");
    assert!(
        message.contains("standalone Rivulet does not run") && message.contains("uri"),
        "{message}"
    );

    // A kind that is no workload either: the ref must name a kind Rivulet serves.
    let mut gadget = support::trigger("default", "to-gadget", "default", "http://unused");
    gadget["spec"]["subscriber"] =
        json!({"ref": {"apiVersion": "example.dev/v1", "kind": "Gadget", "name": "g"}});
    support::apply(&server.api, &gadget).await;
    let object =
        support::wait_status(&server.api, "Trigger", "default", "to-gadget", "False").await;
    let resolved = support::condition(&object, "SubscriberResolved").expect("the condition");
    let message = resolved["message"].as_str().unwrap();
    assert!(message.contains("in standalone mode"), "{message}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_trigger_whose_subscriber_does_not_resolve_yet_tries_again_later() {
    let (ctx, mut server) = context();
    let trigger = json!({
        "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
        "metadata": {"name": "to-web", "namespace": "team", "generation": 1},
        "spec": {"broker": "default",
                 "subscriber": {"ref": {"apiVersion": "v1", "kind": "Service", "name": "web"}}}
    });
    let (action, requests) = exchange(
        &mut server,
        (reconciler("Trigger").reconcile)(&trigger, &ctx),
        vec![not_found("services \"web\""), (200, trigger.clone())],
    )
    .await;
    // Nothing tells Rivulet when the Service appears: it looks again.
    assert_eq!(action.unwrap(), Action::Requeue(Duration::from_secs(5)));
    assert_eq!(requests[0].path, "/api/v1/namespaces/team/services/web");
    let status = &requests[1];
    assert_eq!(
        status.path,
        "/apis/eventing.knative.dev/v1/namespaces/team/triggers/to-web/status"
    );
    let conditions = status.body["status"]["conditions"].as_array().unwrap();
    let resolved = conditions
        .iter()
        .find(|c| c["type"] == "SubscriberResolved")
        .expect("SubscriberResolved");
    assert_eq!(resolved["status"], "False");
    assert_eq!(resolved["message"], "Service team/web (v1) does not exist");
}
