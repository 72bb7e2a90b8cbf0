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

/// One resolution within a case: the destination, the requests resolving it should make
/// (each path with the API server's answer to it), and what it should come to.
struct Step {
    destination: Value,
    requests: Vec<(&'static str, (u16, Value))>,
    outcome: Outcome,
}

enum Outcome {
    /// The URL it resolves to.
    Url(String),
    /// The error, word for word.
    Error(String),
    /// An error that says this, among other things.
    ErrorSaying(&'static str),
}

impl Outcome {
    fn check(&self, resolved: Result<String, String>, what: &str) {
        match (self, resolved) {
            (Outcome::Url(expected), Ok(url)) => assert_eq!(&url, expected, "{what}"),
            (Outcome::Error(expected), Err(error)) => assert_eq!(&error, expected, "{what}"),
            (Outcome::ErrorSaying(part), Err(error)) => {
                assert!(
                    error.contains(part),
                    "{what}: {error:?} should say {part:?}"
                )
            }
            (_, resolved) => panic!("{what}: unexpected {resolved:?}"),
        }
    }
}

/// The API server's answer with `object`.
fn found(object: Value) -> (u16, Value) {
    (200, object)
}

/// A `ref` to `name` of `kind` in `api_version`, in the object's own namespace.
fn to(api_version: &str, kind: &str, name: &str) -> Value {
    json!({"ref": {"apiVersion": api_version, "kind": kind, "name": name}})
}

/// The same `destination` with a relative `uri`.
fn with_uri(mut destination: Value, uri: &str) -> Value {
    destination["uri"] = json!(uri);
    destination
}

const WEB_SERVICE: &str = "/api/v1/namespaces/team/services/web";
const HELLO_KSERVICE: &str = "/apis/serving.knative.dev/v1/namespaces/team/services/hello";
const EXAMPLE_DEV: &str = "/apis/example.dev/v1alpha1";
const WIDGET_W1: &str = "/apis/example.dev/v1alpha1/namespaces/team/widgets/w1";
const NOT_ADDRESSABLE: &str = "is not addressable: no status.address or status.addresses (yet)";

/// Each case runs its steps in order against one fresh context (what one step discovers,
/// the next may reuse); a failure names the case and the step's destination.
#[tokio::test]
async fn refs_resolve_as_knative_resolves_them() {
    use Outcome::{Error, ErrorSaying, Url};
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
    let w1 = || to("example.dev/v1alpha1", "Widget", "w1");
    let widgets = || found(resource_list("example.dev/v1alpha1", "Widget", "widgets"));
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "team"},
        "spec": {"replicas": 1},
        "status": {"replicas": 1, "readyReplicas": 1}
    });
    let broker = json!({
        "apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
        "metadata": {"name": "default", "namespace": "team"}, "spec": {}
    });
    let sink = json!({
        "apiVersion": "sinks.rivulet.dev/v1alpha1", "kind": "EventDisplaySink",
        "metadata": {"name": "show", "namespace": "team"}, "spec": {},
        "status": {"address": {"url": "http://rivulet.test/sinks/team/show"}}
    });
    let ready = json!({
        "url": "https://hello.team.example.com",
        "address": {"url": "http://hello.team.svc.cluster.local"},
        "conditions": [{"type": "Ready", "status": "True"}]
    });
    // Knative's resolver takes no fallback to status.url.
    let deploying = json!({
        "url": "https://hello.team.example.com",
        "conditions": [{"type": "Ready", "status": "Unknown", "reason": "Deploying"}]
    });
    let with_base_path = json!({"address": {"url": "http://hello.team.svc.cluster.local/base/"}});
    let hello = || to("serving.knative.dev/v1", "Service", "hello");
    // Reading the Knative Service `hello`, with this status.
    let hello_with =
        |status: Value| vec![(HELLO_KSERVICE, found(knative_service("hello", status)))];

    let cases: Vec<(&str, Vec<Step>)> = vec![
        (
            "a_kubernetes_service_resolves_to_its_cluster_dns_name_once_it_exists",
            vec![
                // As Knative writes it: no port, no trailing slash.
                Step {
                    destination: to("v1", "Service", "web"),
                    requests: vec![(WEB_SERVICE, found(core_service("team", "web")))],
                    outcome: Url("http://web.team.svc.cluster.local".into()),
                },
                // The ref's own namespace wins; CA certificates on the destination mean https.
                Step {
                    destination: json!({
                        "ref": {"apiVersion": "v1", "kind": "Service", "name": "api", "namespace": "shop"},
                        "CACerts": "-----BEGIN CERTIFICATE-----\n..."
                    }),
                    requests: vec![(
                        "/api/v1/namespaces/shop/services/api",
                        found(core_service("shop", "api")),
                    )],
                    outcome: Url("https://api.shop.svc.cluster.local".into()),
                },
            ],
        ),
        (
            "a_missing_kubernetes_service_is_an_error_that_names_it",
            vec![Step {
                destination: to("v1", "Service", "gone"),
                requests: vec![(
                    "/api/v1/namespaces/team/services/gone",
                    not_found("services \"gone\""),
                )],
                outcome: Error("Service team/gone (v1) does not exist".into()),
            }],
        ),
        (
            // Its plural is known: no discovery request.
            "a_knative_service_resolves_to_its_address_not_its_public_url",
            vec![Step {
                destination: hello(),
                requests: hello_with(ready),
                outcome: Url("http://hello.team.svc.cluster.local".into()),
            }],
        ),
        (
            "a_knative_service_without_an_address_yet_is_not_addressable",
            vec![
                Step {
                    destination: hello(),
                    requests: hello_with(deploying),
                    outcome: Error(format!(
                        "Service team/hello (serving.knative.dev/v1) {NOT_ADDRESSABLE}"
                    )),
                },
                Step {
                    destination: to("serving.knative.dev/v1", "Service", "nope"),
                    requests: vec![(
                        "/apis/serving.knative.dev/v1/namespaces/team/services/nope",
                        not_found("services.serving.knative.dev \"nope\""),
                    )],
                    outcome: Error("Service team/nope (serving.knative.dev/v1) does not exist".into()),
                },
            ],
        ),
        (
            "a_relative_uri_is_joined_to_the_resolved_url",
            vec![
                Step {
                    destination: with_uri(to("v1", "Service", "web"), "/events?source=orders"),
                    requests: vec![(WEB_SERVICE, found(core_service("team", "web")))],
                    outcome: Url("http://web.team.svc.cluster.local/events?source=orders".into()),
                },
                Step {
                    destination: with_uri(hello(), "hooks/in"),
                    requests: hello_with(with_base_path),
                    outcome: Url("http://hello.team.svc.cluster.local/base/hooks/in".into()),
                },
            ],
        ),
        (
            "any_addressable_kind_is_found_by_discovery_and_read_dynamically",
            vec![
                // Knative's default address: the first of status.addresses.
                Step {
                    destination: w1(),
                    requests: vec![(EXAMPLE_DEV, widgets()), (WIDGET_W1, found(widget.clone()))],
                    outcome: Url("https://w1.team.svc.cluster.local".into()),
                },
                // The plural is remembered: the next resolution reads the object only.
                Step {
                    destination: w1(),
                    requests: vec![(WIDGET_W1, found(widget))],
                    outcome: Url("https://w1.team.svc.cluster.local".into()),
                },
            ],
        ),
        (
            "an_unknown_api_version_or_kind_is_an_error_that_names_it",
            vec![
                Step {
                    destination: to("nope.dev/v1", "Gadget", "g"),
                    requests: vec![(
                        "/apis/nope.dev/v1",
                        not_found("the server could not find the requested resource"),
                    )],
                    outcome: Error("cannot resolve a ref to Gadget team/g (nope.dev/v1): the API server does not serve that apiVersion".into()),
                },
                Step {
                    destination: to("example.dev/v1alpha1", "Gizmo", "g"),
                    requests: vec![(EXAMPLE_DEV, widgets())],
                    outcome: Error("cannot resolve a ref to Gizmo team/g (example.dev/v1alpha1): the API server serves no such kind in that apiVersion".into()),
                },
                // Without an apiVersion there is nothing to discover: no request at all.
                Step {
                    destination: json!({"ref": {"kind": "Service", "name": "web"}}),
                    requests: vec![],
                    outcome: ErrorSaying("needs an apiVersion"),
                },
            ],
        ),
        (
            "an_object_without_an_address_is_not_addressable",
            vec![Step {
                destination: to("apps/v1", "Deployment", "web"),
                requests: vec![
                    (
                        "/apis/apps/v1",
                        found(resource_list("apps/v1", "Deployment", "deployments")),
                    ),
                    (
                        "/apis/apps/v1/namespaces/team/deployments/web",
                        found(deployment),
                    ),
                ],
                outcome: Error(format!("Deployment team/web (apps/v1) {NOT_ADDRESSABLE}")),
            }],
        ),
        (
            "kinds_rivulet_serves_are_read_from_its_store_as_before",
            vec![
                // The ingress URL, without waiting for the broker's status.
                Step {
                    destination: to("eventing.knative.dev/v1", "Broker", "default"),
                    requests: vec![(
                        "/apis/eventing.knative.dev/v1/namespaces/team/brokers/default",
                        found(broker),
                    )],
                    outcome: Url(format!("{BASE_URL}/team/default")),
                },
                Step {
                    destination: to("sinks.rivulet.dev/v1alpha1", "EventDisplaySink", "show"),
                    requests: vec![(
                        "/apis/sinks.rivulet.dev/v1alpha1/namespaces/team/eventdisplaysinks/show",
                        found(sink),
                    )],
                    outcome: Url("http://rivulet.test/sinks/team/show".into()),
                },
            ],
        ),
    ];

    for (case, steps) in cases {
        let (ctx, mut server) = context();
        for step in steps {
            let what = format!("{case}: resolving {}", step.destination);
            let (paths, answers): (Vec<&str>, Vec<(u16, Value)>) =
                step.requests.into_iter().unzip();
            let (resolved, read) = resolve(&ctx, &mut server, step.destination, answers).await;
            assert_eq!(read, paths, "{what}: the paths read");
            step.outcome
                .check(resolved, &format!("{what}: the outcome"));
        }
    }
}

/// Applies a trigger `name` in namespace `default` whose subscriber is `subscriber`, waits
/// until it is not Ready and returns its `SubscriberResolved` condition's message.
async fn unresolved_subscriber(api: &str, name: &str, subscriber: Value) -> String {
    let mut trigger = support::trigger("default", name, "default", "http://unused");
    trigger["spec"]["subscriber"] = subscriber;
    support::apply(api, &trigger).await;
    let object = support::wait_status(api, "Trigger", "default", name, "False").await;
    let resolved = support::condition(&object, "SubscriberResolved").expect("the condition");
    assert_eq!(resolved["status"], "False", "{name}: {resolved}");
    resolved["message"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn standalone_mode_still_refuses_kinds_it_does_not_serve() {
    let server = support::InProcessServer::start().await;
    let message =
        unresolved_subscriber(&server.api, "to-service", to("v1", "Service", "web")).await;
    assert!(message.contains("Service default/web (v1)"), "{message}");
    assert!(
        message.contains("standalone Rivulet does not run") && message.contains("uri"),
        "{message}"
    );

    // A kind that is no workload either: the ref must name a kind Rivulet serves.
    let gadget = to("example.dev/v1", "Gadget", "g");
    let message = unresolved_subscriber(&server.api, "to-gadget", gadget).await;
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
