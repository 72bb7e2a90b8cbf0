//! ApiServerSource against a scripted Kubernetes API server: the discovery, list and watch
//! requests it makes (each acting as the source's service account), the CloudEvents a real
//! HTTP sink receives for the watch events fed to it, and the status when the account may not
//! list. And in standalone mode, through the in-process server.

use rivulet_testkit as support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rivulet::event::Event;
use rivulet::runtime::{Action, Context};
use serde_json::{Value, json};
use support::Recorder;
use support::kube_api::{
    Reply, Requests, Seen, answer, answer_bytes, context_with, exchange, reconciler, serve,
    status_error,
};

const API_URL: &str = "https://kubernetes.test:6443";

fn kube_context() -> (Arc<Context>, support::kube_api::ApiServer) {
    context_with(|store| store.with_cluster_url(format!("{API_URL}/")))
}

fn source(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "sources.knative.dev/v1", "kind": "ApiServerSource",
        "metadata": {"name": name, "namespace": "team", "uid": "u-1", "generation": 3},
        "spec": spec,
    })
}

/// What discovery answers for the core group and `apps/v1`.
fn discovery(group_version: &str) -> Value {
    let resources = match group_version {
        "v1" => json!([
            {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
             "verbs": ["get", "list", "watch"]},
            {"name": "pods/status", "singularName": "", "namespaced": true, "kind": "Pod",
             "verbs": ["get", "patch"]},
            {"name": "namespaces", "singularName": "namespace", "namespaced": false,
             "kind": "Namespace", "verbs": ["get", "list", "watch"]},
        ]),
        "apps/v1" => json!([
            {"name": "deployments", "singularName": "deployment", "namespaced": true,
             "kind": "Deployment", "verbs": ["get", "list", "watch"]},
        ]),
        other => panic!("no discovery for {other}"),
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
           "resources": resources})
}

fn pod(namespace: &str, name: &str, uid: &str, version: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": namespace, "uid": uid,
                        "resourceVersion": version, "labels": {"app": "web"}},
           "spec": {"containers": [{"name": "app", "image": "web:1"}]}})
}

fn owned_by(mut object: Value, kind: &str) -> Value {
    object["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "apps/v1", "kind": kind, "name": "web-7d4", "uid": "o-1",
        "controller": true, "blockOwnerDeletion": true,
    }]);
    object
}

fn list(items: Vec<Value>) -> Value {
    json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "10"},
           "items": items})
}

/// A watch answer: the events, one JSON document a line.
fn watch_events(events: &[(&str, Value)]) -> Reply {
    let mut body = Vec::new();
    for (type_, object) in events {
        serde_json::to_writer(&mut body, &json!({"type": type_, "object": object})).unwrap();
        body.push(b'\n');
    }
    Reply::Now(answer_bytes(200, body))
}

/// An API server that answers discovery, status writes, lists of `path` with `listed`, and
/// the first watch of `path` with `events`; later watches stay open with nothing new.
fn scripted(
    server: support::kube_api::ApiServer,
    path: &'static str,
    listed: Vec<Value>,
    events: Vec<(&'static str, Value)>,
) -> Requests {
    let mut events = Some(events);
    serve(server, move |request: &Seen| {
        if request.path == "/api/v1" {
            return Reply::Now(answer(200, &discovery("v1")));
        }
        if let Some(group_version) = request.path.strip_prefix("/apis/")
            && group_version == "apps/v1"
        {
            return Reply::Now(answer(200, &discovery(group_version)));
        }
        if request.path.ends_with("/status") {
            return Reply::Now(answer(200, &request.body));
        }
        if request.path == path && !request.is_watch() {
            return Reply::Now(answer(200, &list(listed.clone())));
        }
        if request.path == path
            && let Some(events) = events.take()
        {
            return watch_events(&events);
        }
        Reply::Hold
    })
}

async fn wait_for_events(sink: &Recorder, count: usize) -> Vec<Event> {
    support::wait_for(
        &format!("{count} events at the sink"),
        support::WAIT,
        || async {
            let events = sink.events();
            (events.len() >= count).then_some(events)
        },
    )
    .await
}

fn data(event: &Event) -> Value {
    serde_json::from_slice(event.data.as_ref().expect("data")).expect("JSON data")
}

fn extension(event: &Event, name: &str) -> Option<String> {
    event.attribute(name).map(|v| v.into_owned())
}

fn status_written(requests: &Requests, plural_name: &str) -> Value {
    let path = format!(
        "/apis/sources.knative.dev/v1/namespaces/team/apiserversources/{plural_name}/status"
    );
    let writes = requests.to(&path);
    writes.last().expect("a status write").body["status"].clone()
}

/// Every request for the source's watches acts as `user`; status writes are Rivulet's own.
fn assert_acting_as(requests: &[Seen], user: &str) {
    assert!(!requests.is_empty(), "no request");
    for request in requests {
        let expected = (!request.path.ends_with("/status")).then_some(user);
        assert_eq!(
            request.impersonate_user.as_deref(),
            expected,
            "{} {}?{}",
            request.method,
            request.path,
            request.query
        );
    }
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} in {status}"))
}

#[tokio::test]
async fn reference_mode_sends_refs_for_changes_after_the_initial_listing() {
    let sink = Recorder::start().await;
    let (ctx, server) = kube_context();
    let pods = "/api/v1/namespaces/team/pods";
    let requests = scripted(
        server,
        pods,
        vec![pod("team", "existing", "u-e", "8")],
        vec![
            ("MODIFIED", pod("team", "existing", "u-e", "11")),
            ("ADDED", pod("team", "fresh", "u-f", "12")),
            ("MODIFIED", pod("team", "fresh", "u-f", "13")),
            ("DELETED", pod("team", "fresh", "u-f", "14")),
        ],
    );
    let object = source(
        "pods",
        json!({
            "resources": [{"apiVersion": "v1", "kind": "Pod",
                           "selector": {"matchLabels": {"app": "web"},
                                        "matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}]}}],
            "serviceAccountName": "pod-watcher",
            "sink": {"uri": sink.url},
            "ceOverrides": {"extensions": {"team": "blue"}}
        }),
    );
    (reconciler("ApiServerSource").reconcile)(&object, &ctx)
        .await
        .expect("reconciled");

    let events = wait_for_events(&sink, 4).await;
    let summary: Vec<(String, String)> = events
        .iter()
        .map(|e| (e.ty.clone(), e.subject.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        summary,
        [
            (
                "dev.knative.apiserver.ref.update".to_string(),
                "/apis/v1/namespaces/team/pods/existing".to_string()
            ),
            (
                "dev.knative.apiserver.ref.add".into(),
                "/apis/v1/namespaces/team/pods/fresh".into()
            ),
            (
                "dev.knative.apiserver.ref.update".into(),
                "/apis/v1/namespaces/team/pods/fresh".into()
            ),
            (
                "dev.knative.apiserver.ref.delete".into(),
                "/apis/v1/namespaces/team/pods/fresh".into()
            ),
        ],
        "the listed pod gets no add; changes after it do"
    );
    let added = &events[1];
    assert_eq!(added.source, API_URL);
    assert_eq!(added.datacontenttype.as_deref(), Some("application/json"));
    assert_eq!(
        data(added),
        json!({"kind": "Pod", "namespace": "team", "name": "fresh", "apiVersion": "v1"})
    );
    assert_eq!(extension(added, "kind").as_deref(), Some("Pod"));
    assert_eq!(extension(added, "name").as_deref(), Some("fresh"));
    assert_eq!(extension(added, "namespace").as_deref(), Some("team"));
    assert_eq!(extension(added, "apiversion").as_deref(), Some("v1"));
    assert_eq!(
        extension(added, "team").as_deref(),
        Some("blue"),
        "ceOverrides"
    );
    let ids: std::collections::HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), 4, "a fresh id per event");

    // Discovery, then one list and a watch of the pods of the source's namespace, the label
    // selector sent to the API server.
    assert!(!requests.to("/api/v1").is_empty(), "discovery of v1");
    let pod_requests = requests.to(pods);
    let listing = pod_requests.iter().find(|r| !r.is_watch()).expect("a list");
    let watching = pod_requests.iter().find(|r| r.is_watch()).expect("a watch");
    for request in [listing, watching] {
        assert_eq!(request.method, "GET");
        assert_eq!(
            request.param("labelSelector").as_deref(),
            Some("app=web,!canary"),
            "{request:?}"
        );
    }
    assert_eq!(watching.param("resourceVersion").as_deref(), Some("10"));
    assert_acting_as(&requests.all(), "system:serviceaccount:team:pod-watcher");

    let status = status_written(&requests, "pods");
    assert_eq!(status["sinkUri"], sink.url);
    assert_eq!(status["observedGeneration"], 3);
    for type_ in ["Ready", "SinkProvided", "SufficientPermissions"] {
        assert_eq!(condition(&status, type_)["status"], "True", "{status}");
    }
    let attributes = status["ceAttributes"].as_array().unwrap();
    let types: Vec<&str> = attributes
        .iter()
        .map(|a| a["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "dev.knative.apiserver.ref.add",
            "dev.knative.apiserver.ref.delete",
            "dev.knative.apiserver.ref.update"
        ],
        "Knative's order"
    );
    assert!(
        attributes.iter().all(|a| a["source"] == API_URL),
        "{attributes:?}"
    );

    (reconciler("ApiServerSource").cleanup)(&object, &ctx)
        .await
        .expect("stopped");
}

#[tokio::test]
async fn resource_mode_sends_whole_objects_from_every_namespace() {
    let sink = Recorder::start().await;
    let (ctx, server) = kube_context();
    // An empty namespaceSelector: every namespace, so one cluster-wide watch.
    let deployments = "/apis/apps/v1/deployments";
    let deployment = |namespace: &str, replicas: i64, version: &str| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "namespace": namespace, "uid": format!("d-{namespace}"),
                            "resourceVersion": version},
               "spec": {"replicas": replicas}})
    };
    let requests = scripted(
        server,
        deployments,
        vec![],
        vec![
            ("ADDED", deployment("shop", 1, "11")),
            ("MODIFIED", deployment("shop", 3, "12")),
            ("DELETED", deployment("shop", 3, "13")),
        ],
    );
    let object = source(
        "deployments",
        json!({
            "mode": "Resource",
            "namespaceSelector": {},
            "resources": [{"apiVersion": "apps/v1", "kind": "Deployment"}],
            "sink": {"uri": sink.url}
        }),
    );
    (reconciler("ApiServerSource").reconcile)(&object, &ctx)
        .await
        .expect("reconciled");

    let events = wait_for_events(&sink, 3).await;
    let types: Vec<&str> = events.iter().map(|e| e.ty.as_str()).collect();
    assert_eq!(
        types,
        [
            "dev.knative.apiserver.resource.add",
            "dev.knative.apiserver.resource.update",
            "dev.knative.apiserver.resource.delete"
        ]
    );
    for event in &events {
        assert_eq!(event.source, API_URL);
        assert_eq!(
            event.subject.as_deref(),
            Some("/apis/apps/v1/namespaces/shop/deployments/web")
        );
        assert_eq!(event.datacontenttype.as_deref(), Some("application/json"));
    }
    let updated = data(&events[1]);
    assert_eq!(updated["kind"], "Deployment");
    assert_eq!(updated["apiVersion"], "apps/v1");
    assert_eq!(updated["metadata"]["namespace"], "shop");
    assert_eq!(updated["spec"]["replicas"], 3, "the whole object");

    assert!(
        !requests.to("/apis/apps/v1").is_empty(),
        "discovery of apps/v1"
    );
    let watched = requests.to(deployments);
    assert!(watched.iter().any(|r| !r.is_watch()), "a list");
    assert!(watched.iter().any(Seen::is_watch), "a watch");
    assert!(
        watched.iter().all(|r| r.param("labelSelector").is_none()),
        "no selector: {watched:?}"
    );
    // No serviceAccountName: the namespace's `default` account, as in Knative.
    assert_acting_as(&requests.all(), "system:serviceaccount:team:default");
    let status = status_written(&requests, "deployments");
    assert_eq!(
        status["ceAttributes"][0]["type"],
        "dev.knative.apiserver.resource.add"
    );

    (reconciler("ApiServerSource").cleanup)(&object, &ctx)
        .await
        .expect("stopped");
}

#[tokio::test]
async fn the_owner_filter_keeps_only_objects_controlled_by_the_owner_kind() {
    let sink = Recorder::start().await;
    let (ctx, server) = kube_context();
    let pods = "/api/v1/namespaces/team/pods";
    let _requests = scripted(
        server,
        pods,
        vec![],
        vec![
            ("ADDED", pod("team", "orphan", "u-1", "11")),
            (
                "ADDED",
                owned_by(pod("team", "stateful-0", "u-2", "12"), "StatefulSet"),
            ),
            (
                "ADDED",
                owned_by(pod("team", "web-7d4-x", "u-3", "13"), "ReplicaSet"),
            ),
            ("MODIFIED", pod("team", "orphan", "u-1", "14")),
            (
                "DELETED",
                owned_by(pod("team", "web-7d4-x", "u-3", "15"), "ReplicaSet"),
            ),
        ],
    );
    let object = source(
        "owned",
        json!({
            "owner": {"apiVersion": "apps/v1", "kind": "ReplicaSet"},
            "resources": [{"apiVersion": "v1", "kind": "Pod"}],
            "sink": {"uri": sink.url}
        }),
    );
    (reconciler("ApiServerSource").reconcile)(&object, &ctx)
        .await
        .expect("reconciled");

    // Events are sent in watch order, so once the last one arrived the others were decided.
    let events = wait_for_events(&sink, 2).await;
    let summary: Vec<(&str, String)> = events
        .iter()
        .map(|e| (e.ty.as_str(), extension(e, "name").unwrap_or_default()))
        .collect();
    assert_eq!(
        summary,
        [
            ("dev.knative.apiserver.ref.add", "web-7d4-x".to_string()),
            ("dev.knative.apiserver.ref.delete", "web-7d4-x".to_string()),
        ]
    );
    assert_eq!(
        data(&events[0]),
        json!({"kind": "Pod", "namespace": "team", "name": "web-7d4-x", "apiVersion": "v1"}),
        "the reference names the object itself, not its owner"
    );
    assert_eq!(sink.attempts().len(), 2, "nothing else was sent");

    (reconciler("ApiServerSource").cleanup)(&object, &ctx)
        .await
        .expect("stopped");
}

#[tokio::test]
async fn a_namespace_selector_watches_each_matching_namespace() {
    let sink = Recorder::start().await;
    let (ctx, server) = kube_context();
    let namespace = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": name, "uid": format!("n-{name}"), "resourceVersion": "5",
                            "labels": {"env": "dev"}}})
    };
    let mut watched_dev = false;
    let requests = serve(server, move |request: &Seen| {
        match (request.path.as_str(), request.is_watch()) {
            ("/api/v1", _) => Reply::Now(answer(200, &discovery("v1"))),
            ("/api/v1/namespaces", false) => {
                Reply::Now(answer(200, &list(vec![namespace("dev-a")])))
            }
            ("/api/v1/namespaces/dev-a/pods", false) => Reply::Now(answer(200, &list(vec![]))),
            ("/api/v1/namespaces/dev-a/pods", true) if !watched_dev => {
                watched_dev = true;
                watch_events(&[("ADDED", pod("dev-a", "api", "u-9", "11"))])
            }
            (path, _) if path.ends_with("/status") => Reply::Now(answer(200, &request.body)),
            _ => Reply::Hold,
        }
    });
    let object = source(
        "selected",
        json!({
            "namespaceSelector": {"matchLabels": {"env": "dev"}},
            "resources": [{"apiVersion": "v1", "kind": "Pod"}],
            "sink": {"uri": sink.url}
        }),
    );
    (reconciler("ApiServerSource").reconcile)(&object, &ctx)
        .await
        .expect("reconciled");

    let events = wait_for_events(&sink, 1).await;
    assert_eq!(events[0].ty, "dev.knative.apiserver.ref.add");
    assert_eq!(
        events[0].subject.as_deref(),
        Some("/apis/v1/namespaces/dev-a/pods/api")
    );
    let namespaces = requests.to("/api/v1/namespaces");
    assert!(!namespaces.is_empty());
    assert!(
        namespaces
            .iter()
            .all(|r| r.param("labelSelector").as_deref() == Some("env=dev")),
        "{namespaces:?}"
    );
    assert!(
        requests.to("/api/v1/namespaces/team/pods").is_empty(),
        "the source's own namespace does not match the selector"
    );
    // The namespaces are looked up as the source's account too.
    assert_acting_as(&requests.all(), "system:serviceaccount:team:default");

    (reconciler("ApiServerSource").cleanup)(&object, &ctx)
        .await
        .expect("stopped");
}

#[tokio::test]
async fn a_refused_list_names_the_account_and_is_tried_again_until_granted() {
    let (ctx, server) = kube_context();
    let pods = "/api/v1/namespaces/team/pods";
    let account = "system:serviceaccount:team:reader";
    let granted = Arc::new(AtomicBool::new(false));
    let requests = serve(server, {
        let granted = granted.clone();
        move |request: &Seen| match request.path.as_str() {
            "/api/v1" => Reply::Now(answer(200, &discovery("v1"))),
            path if path.ends_with("/status") => Reply::Now(answer(200, &request.body)),
            path if path == pods && !granted.load(Ordering::SeqCst) => Reply::Now(answer(
                403,
                &status_error(
                    403,
                    "Forbidden",
                    "pods is forbidden: User \"system:serviceaccount:team:reader\" cannot list \
                     resource \"pods\" in API group \"\" in the namespace \"team\"",
                ),
            )),
            path if path == pods && !request.is_watch() => Reply::Now(answer(200, &list(vec![]))),
            _ => Reply::Hold,
        }
    });
    let object = source(
        "denied",
        json!({
            "serviceAccountName": "reader",
            "resources": [{"apiVersion": "v1", "kind": "Pod"}],
            "sink": {"uri": "http://127.0.0.1:1/"}
        }),
    );
    let reconcile = || (reconciler("ApiServerSource").reconcile)(&object, &ctx);

    let action = reconcile().await.expect("reconciled");
    assert!(
        matches!(action, Action::Requeue(_)),
        "tried again later: {action:?}"
    );
    let status = status_written(&requests, "denied");
    let ready = condition(&status, "Ready");
    assert_eq!(ready["status"], "False", "{status}");
    assert_eq!(ready["reason"], "InsufficientPermissions");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains(account) && message.contains("pods") && message.contains("team"),
        "names the account, the resource and where: {message}"
    );
    let sufficient = condition(&status, "SufficientPermissions");
    assert_eq!(sufficient["status"], "False");
    assert_eq!(sufficient["message"], ready["message"]);
    assert!(
        requests.to(pods).iter().all(|r| !r.is_watch()),
        "no watch starts while the account may not list"
    );
    assert_acting_as(&requests.all(), account);

    // Granted meanwhile: the next try runs the source.
    granted.store(true, Ordering::SeqCst);
    let action = reconcile().await.expect("reconciled");
    assert_eq!(action, Action::AwaitChange);
    let status = status_written(&requests, "denied");
    for type_ in ["Ready", "SufficientPermissions"] {
        assert_eq!(condition(&status, type_)["status"], "True", "{status}");
    }
    support::wait_for("a watch of the pods", support::WAIT, || async {
        requests.to(pods).into_iter().find(Seen::is_watch)
    })
    .await;
    assert_acting_as(&requests.all(), account);

    (reconciler("ApiServerSource").cleanup)(&object, &ctx)
        .await
        .expect("stopped");
}

#[tokio::test]
async fn an_unknown_kind_is_reported_not_ready() {
    let (ctx, mut server) = kube_context();
    let object = source(
        "typo",
        json!({
            "resources": [{"apiVersion": "v1", "kind": "Pods"}],
            "sink": {"uri": "http://127.0.0.1:1/"}
        }),
    );
    let (result, requests) = exchange(
        &mut server,
        (reconciler("ApiServerSource").reconcile)(&object, &ctx),
        vec![(200, discovery("v1")), (200, object.clone())],
    )
    .await;
    result.expect("reconciled");
    assert_eq!(requests[0].path, "/api/v1");
    assert_eq!(
        requests[0].impersonate_user.as_deref(),
        Some("system:serviceaccount:team:default"),
        "discovery acts as the source's account"
    );
    let ready = &requests[1].body["status"]["conditions"][0];
    assert_eq!(ready["type"], "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "ResourceNotFound");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("spec.resources[0]") && message.contains("Pods"),
        "{message}"
    );
}

#[tokio::test]
async fn standalone_mode_validates_and_says_kubernetes_is_required() {
    let server = support::InProcessServer::start().await;
    let api = server.api.clone();
    let mut object = source(
        "pods",
        json!({
            "resources": [{"apiVersion": "v1", "kind": "Pod"}],
            "sink": {"uri": "http://127.0.0.1:1/"}
        }),
    );
    object["metadata"] = json!({"name": "pods", "namespace": "default"});
    let stored = support::apply_needing_kubernetes(&api, &object).await;
    assert_eq!(stored["status"]["sinkUri"], "http://127.0.0.1:1/");

    for (change, field) in [
        (json!({"mode": "Ref"}), "spec.mode"),
        (json!({"resources": []}), "spec.resources"),
        (
            json!({"resources": [{"apiVersion": "v1"}]}),
            "spec.resources[0].kind",
        ),
        (
            json!({"owner": {"apiVersion": "apps/v1"}}),
            "spec.owner.kind",
        ),
    ] {
        let mut bad = object.clone();
        for (key, value) in change.as_object().unwrap() {
            bad["spec"][key] = value.clone();
        }
        let (code, body) = support::put(&api, &bad).await;
        assert_eq!(code, 422, "{change}: {body}");
        assert!(body.to_string().contains(field), "{change}: {body}");
    }
    server.shutdown().await;
}
