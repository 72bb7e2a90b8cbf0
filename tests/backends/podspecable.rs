//! SinkBinding and ContainerSource reconciled against a scripted Kubernetes API server, and
//! in standalone mode through the in-process server.

use rivulet_testkit as support;

use rivulet::runtime::{Action, ReconcileError};
use serde_json::{Value, json};
use support::kube_api::{Scripted, Seen};

fn deployment(name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "team"},
        "spec": {"template": {"spec": {
            "initContainers": [{"name": "setup", "image": "s"}],
            "containers": [{"name": "app", "image": "a"}, {"name": "side", "image": "b"}]}}}
    })
}

fn list(kind: &str, items: Vec<Value>) -> (u16, Value) {
    (
        200,
        json!({"apiVersion": "apps/v1", "kind": format!("{kind}List"),
            "metadata": {"resourceVersion": "1"}, "items": items}),
    )
}

/// The API server's answer to a failed request.
fn failure(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
            "code": code, "reason": reason, "message": message}),
    )
}

/// The collections of the bindable kinds in namespace team, in the order a binding looks for
/// what it bound.
const BINDABLE: [&str; 5] = [
    "/apis/apps/v1/namespaces/team/deployments",
    "/apis/apps/v1/namespaces/team/statefulsets",
    "/apis/apps/v1/namespaces/team/daemonsets",
    "/apis/apps/v1/namespaces/team/replicasets",
    "/apis/serving.knative.dev/v1/namespaces/team/services",
];

/// Answers to the five lists of workloads labelled as bound, none found.
fn nothing_bound_before() -> Vec<(u16, Value)> {
    [
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "ReplicaSet",
        "Service",
    ]
    .iter()
    .map(|kind| list(kind, Vec::new()))
    .collect()
}

/// The `labelSelector` query parameter of a request, decoded.
fn label_selector(request: &Seen) -> Option<String> {
    url::form_urlencoded::parse(request.query.as_bytes())
        .find(|(key, _)| key == "labelSelector")
        .map(|(_, value)| value.into_owned())
}

/// Asserts `requests` are the five lists of what binding `bind` labelled, in order.
fn assert_lists_bound_workloads(requests: &[Seen]) {
    assert_eq!(requests.len(), 5, "{requests:?}");
    assert_listed(requests.iter());
}

/// Asserts `requests` list what binding `bind` labelled, one bindable kind after another.
fn assert_listed<'a>(requests: impl Iterator<Item = &'a Seen>) {
    let mut count = 0;
    for (request, collection) in requests.zip(BINDABLE) {
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, collection);
        assert_eq!(
            label_selector(request).as_deref(),
            Some("rivulet.dev/sinkbinding=bind"),
            "{request:?}"
        );
        count += 1;
    }
    assert_eq!(count, BINDABLE.len(), "a list of every bindable kind");
}

/// The path of the `apps/v1` workload `name` of `kind` in namespace team.
fn workload_path(kind: &str, name: &str) -> String {
    let plural = format!("{}s", kind.to_ascii_lowercase());
    format!("/apis/apps/v1/namespaces/team/{plural}/{name}")
}

/// Asserts `request` is an apply by `rivulet-sinkbinding` giving up everything it owned of
/// the `apps/v1` workload `name` of `kind`.
fn assert_release(request: &Seen, kind: &str, name: &str) {
    request.assert_apply(&workload_path(kind, name), "rivulet-sinkbinding");
    // Naming no env and no label: the API server drops what this manager owned.
    assert_eq!(
        request.body,
        json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}})
    );
}

fn sink_binding() -> Value {
    json!({
        "apiVersion": "sources.knative.dev/v1", "kind": "SinkBinding",
        "metadata": {"name": "bind", "namespace": "team", "uid": "u-9", "generation": 2},
        "spec": {
            "subject": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "sink": {"uri": "http://sink.example/events"},
            "ceOverrides": {"extensions": {"team": "blue"}}
        }
    })
}

fn env_of(container: &Value, name: &str) -> Option<String> {
    container["env"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == name)
        .and_then(|v| v["value"].as_str().map(str::to_string))
}

fn condition<'a>(status_request: &'a Seen, type_: &str) -> &'a Value {
    status_request.body["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} in {}", status_request.body))
}

/// Asserts the status `status_request` writes has condition `type_` with `status`.
fn assert_condition(status_request: &Seen, type_: &str, status: &str) {
    let found = condition(status_request, type_);
    assert_eq!(found["status"], status, "{type_}: {found}");
}

/// Asserts the status `status_request` writes has condition `type_` false, with `reason` and
/// `message`.
fn assert_false(status_request: &Seen, type_: &str, reason: &str, message: &str) {
    let found = condition(status_request, type_);
    assert_eq!(found["status"], "False", "{type_}: {found}");
    assert_eq!(found["reason"], reason, "{type_}: {found}");
    assert_eq!(found["message"], message, "{type_}: {found}");
}

/// Asserts `request` is a SinkBinding apply of the env and the label on Deployment `name`.
fn assert_bind(request: &Seen, name: &str) {
    request.assert_apply(&workload_path("Deployment", name), "rivulet-sinkbinding");
    assert!(request.query.contains("force=true"), "{}", request.query);
    assert_eq!(
        request.body["metadata"]["labels"],
        json!({"rivulet.dev/sinkbinding": "bind"})
    );
}

/// Reconciles `object` of `kind` on a fresh context, answering with `answers` in order.
async fn reconciled(
    kind: &str,
    object: &Value,
    answers: Vec<(u16, Value)>,
) -> (Result<Action, ReconcileError>, Vec<Seen>) {
    Scripted::standalone()
        .reconcile(kind, object, answers)
        .await
}

/// Cleans up after the deleted `object` of `kind` on a fresh context, answering with
/// `answers` in order.
async fn cleaned_up(
    kind: &str,
    object: &Value,
    answers: Vec<(u16, Value)>,
) -> (Result<(), ReconcileError>, Vec<Seen>) {
    Scripted::standalone().clean_up(kind, object, answers).await
}

#[tokio::test]
async fn sink_binding_applies_k_sink_to_every_container_and_reports_ready() {
    let object = sink_binding();
    let mut answers = vec![(200, deployment("web")), (200, deployment("web"))];
    answers.extend(nothing_bound_before());
    answers.push((200, object.clone()));
    let (result, requests) = reconciled("SinkBinding", &object, answers).await;
    assert_eq!(result.expect("reconciled"), Action::AwaitChange);
    assert_eq!(requests.len(), 8, "{requests:?}");
    assert_eq!(requests[0].method, "GET");
    assert_eq!(
        requests[0].path,
        "/apis/apps/v1/namespaces/team/deployments/web"
    );
    let apply = &requests[1];
    assert_bind(apply, "web");
    let pod_spec = &apply.body["spec"]["template"]["spec"];
    let containers = pod_spec["containers"].as_array().unwrap();
    let init_containers = pod_spec["initContainers"].as_array().unwrap();
    assert_eq!(containers.len(), 2);
    assert_eq!(init_containers.len(), 1);
    assert_eq!(init_containers[0]["name"], "setup");
    for container in containers.iter().chain(init_containers) {
        assert_eq!(
            env_of(container, "K_SINK").as_deref(),
            Some("http://sink.example/events")
        );
        assert_eq!(
            env_of(container, "K_CE_OVERRIDES").as_deref(),
            Some(r#"{"extensions":{"team":"blue"}}"#)
        );
        // Only the names and the env entries: nothing else is claimed.
        assert_eq!(container.as_object().unwrap().len(), 2, "{container}");
    }
    assert_lists_bound_workloads(&requests[2..7]);
    let status = &requests[7];
    assert_eq!(status.method, "PATCH");
    assert_eq!(
        status.path,
        "/apis/sources.knative.dev/v1/namespaces/team/sinkbindings/bind/status"
    );
    assert_eq!(
        status.body["status"]["sinkUri"],
        "http://sink.example/events"
    );
    assert_eq!(status.body["status"]["observedGeneration"], 2);
    for type_ in ["Ready", "SinkProvided", "SinkBindingAvailable"] {
        assert_eq!(condition(status, type_)["status"], "True", "{type_}");
    }
}

#[tokio::test]
async fn a_selector_with_expressions_is_sent_as_a_label_selector_and_stale_workloads_are_released()
{
    let mut object = sink_binding();
    object["spec"]["subject"] = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "selector": {
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["front", "edge"]},
                {"key": "env", "operator": "NotIn", "values": ["test"]},
                {"key": "example.com/events", "operator": "Exists"},
                {"key": "legacy", "operator": "DoesNotExist"}
            ]
        }
    });
    let answers = vec![
        list("Deployment", vec![deployment("web"), deployment("edge")]),
        (200, deployment("web")),
        (200, deployment("edge")),
        // Labelled as bound: web still matches; old no longer does (its labels changed).
        list("Deployment", vec![deployment("web"), deployment("old")]),
        (200, deployment("old")),
        // A StatefulSet bound while the subject's kind was StatefulSet.
        list("StatefulSet", vec![json!({"metadata": {"name": "db"}})]),
        (
            200,
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"}}),
        ),
        list("DaemonSet", Vec::new()),
        list("ReplicaSet", Vec::new()),
        list("Service", Vec::new()),
        (200, object.clone()),
    ];
    let (result, requests) = reconciled("SinkBinding", &object, answers).await;
    assert_eq!(result.expect("reconciled"), Action::AwaitChange);
    assert_eq!(requests.len(), 11, "{requests:?}");
    let lookup = &requests[0];
    assert_eq!(lookup.method, "GET");
    assert_eq!(lookup.path, "/apis/apps/v1/namespaces/team/deployments");
    assert_eq!(
        label_selector(lookup).as_deref(),
        Some("app=web,tier in (edge,front),env notin (test),example.com/events,!legacy")
    );
    assert_bind(&requests[1], "web");
    assert_bind(&requests[2], "edge");
    assert_listed([3, 5, 7, 8, 9].iter().map(|&i| &requests[i]));
    assert_release(&requests[4], "Deployment", "old");
    assert!(
        !requests[4].query.contains("force"),
        "{}",
        requests[4].query
    );
    assert_release(&requests[6], "StatefulSet", "db");
    assert_condition(&requests[10], "SinkBindingAvailable", "True");
}

#[tokio::test]
async fn a_changed_subject_name_releases_the_workload_bound_before() {
    let mut object = sink_binding();
    object["spec"]["subject"]["name"] = json!("api");
    let mut answers = vec![
        (200, deployment("api")),
        (200, deployment("api")),
        list("Deployment", vec![deployment("web"), deployment("api")]),
        (200, deployment("web")),
    ];
    answers.extend(nothing_bound_before().into_iter().skip(1));
    answers.push((200, object.clone()));
    let (result, requests) = reconciled("SinkBinding", &object, answers).await;
    assert_eq!(result.expect("reconciled"), Action::AwaitChange);
    assert_eq!(requests.len(), 9, "{requests:?}");
    assert_bind(&requests[1], "api");
    assert_release(&requests[3], "Deployment", "web");
    // api, bound now, is kept: the only release is web's.
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.method == "PATCH" && r.path.contains("/deployments/"))
            .count(),
        2,
        "{requests:?}"
    );
}

fn knative_service(name: &str) -> Value {
    json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "team", "resourceVersion": "41",
            "labels": {"rivulet.dev/sinkbinding": "bind"}},
        "spec": {"template": {"spec": {"containers": [{
            "image": "fn",
            "env": [{"name": "A", "value": "1"}, {"name": "K_SINK", "value": "http://old/"}]
        }]}}}
    })
}

/// A Knative Service's container is unnamed and its lists are kept whole, so it is bound and
/// released by merge patches of its whole container list, against the version read.
#[tokio::test]
async fn a_knative_service_is_bound_and_released_by_merge_patches_of_its_containers() {
    let mut object = sink_binding();
    object["spec"]["subject"] =
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "fn"});
    let mut answers = vec![(200, knative_service("fn")), (200, knative_service("fn"))];
    answers.extend(nothing_bound_before().into_iter().take(4));
    answers.push(list(
        "Service",
        vec![knative_service("fn"), knative_service("old-fn")],
    ));
    answers.push((200, knative_service("old-fn")));
    answers.push((200, object.clone()));
    let (result, requests) = reconciled("SinkBinding", &object, answers).await;
    assert_eq!(result.expect("reconciled"), Action::AwaitChange);
    assert_eq!(requests.len(), 9, "{requests:?}");
    let services = "/apis/serving.knative.dev/v1/namespaces/team/services";
    assert_eq!(
        (requests[0].method.as_str(), requests[0].path.clone()),
        ("GET", format!("{services}/fn"))
    );
    let bind = &requests[1];
    assert_eq!(
        (bind.method.as_str(), bind.path.clone()),
        ("PATCH", format!("{services}/fn"))
    );
    assert_eq!(
        bind.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(
        bind.body,
        json!({
            "metadata": {"resourceVersion": "41", "labels": {"rivulet.dev/sinkbinding": "bind"}},
            "spec": {"template": {"spec": {"containers": [{"image": "fn", "env": [
                {"name": "A", "value": "1"},
                {"name": "K_SINK", "value": "http://sink.example/events"},
                {"name": "K_CE_OVERRIDES", "value": r#"{"extensions":{"team":"blue"}}"#}
            ]}]}}}
        })
    );
    assert_lists_bound_workloads(&requests[2..7]);
    // fn is kept; old-fn, labelled but no longer the subject, is released.
    let release = &requests[7];
    assert_eq!(
        (release.method.as_str(), release.path.clone()),
        ("PATCH", format!("{services}/old-fn"))
    );
    assert_eq!(
        release.body,
        json!({
            "metadata": {"resourceVersion": "41", "labels": {"rivulet.dev/sinkbinding": null}},
            "spec": {"template": {"spec": {"containers": [
                {"image": "fn", "env": [{"name": "A", "value": "1"}]}
            ]}}}
        })
    );
    assert_condition(&requests[8], "SinkBindingAvailable", "True");
}

#[tokio::test]
async fn a_missing_subject_is_reported_not_ready_and_retried() {
    let object = sink_binding();
    let mut answers = vec![failure(404, "NotFound", "deployments \"web\" not found")];
    answers.extend(nothing_bound_before());
    answers.push((200, object.clone()));
    let (result, requests) = reconciled("SinkBinding", &object, answers).await;
    assert!(
        matches!(result.expect("reconciled"), Action::Requeue(_)),
        "a missing subject is looked for again"
    );
    // Nothing is bound now, so whatever was bound before is released (none here).
    assert_lists_bound_workloads(&requests[1..6]);
    let ready = &requests[6].body["status"]["conditions"][0];
    assert_eq!(ready["type"], "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "SubjectMissing");
    let available = condition(&requests[6], "SinkBindingAvailable");
    assert_eq!(available["status"], "False");
    assert_eq!(available["message"], "Deployment web does not exist");
}

#[tokio::test]
async fn a_failing_subject_lookup_releases_nothing() {
    let object = sink_binding();
    let (result, requests) = reconciled(
        "SinkBinding",
        &object,
        vec![
            failure(500, "InternalError", "etcd timed out"),
            (200, object.clone()),
        ],
    )
    .await;
    assert!(matches!(result.expect("reconciled"), Action::Requeue(_)));
    // The subjects are unknown: no list of bound workloads, no release.
    assert_eq!(requests.len(), 2, "{requests:?}");
    let available = condition(&requests[1], "SinkBindingAvailable");
    assert_eq!(available["status"], "False");
    assert_eq!(available["reason"], "SubjectUnavailable");
    assert!(
        support::message_contains(available, "etcd timed out (500)"),
        "{available}"
    );
}

#[tokio::test]
async fn a_forbidden_apply_is_reported_as_binding_failed_and_retried() {
    let object = sink_binding();
    let mut answers = vec![
        (200, deployment("web")),
        failure(
            403,
            "Forbidden",
            "deployments.apps \"web\" is forbidden: cannot patch",
        ),
    ];
    answers.extend(nothing_bound_before());
    answers.push((200, object.clone()));
    let (result, requests) = reconciled("SinkBinding", &object, answers).await;
    assert!(matches!(result.expect("reconciled"), Action::Requeue(_)));
    assert_bind(&requests[1], "web");
    // The workload still matches: it is not released.
    assert_lists_bound_workloads(&requests[2..7]);
    let status = &requests[7];
    let forbidden =
        "cannot bind Deployment web: deployments.apps \"web\" is forbidden: cannot patch (403)";
    assert_false(status, "SinkBindingAvailable", "BindingFailed", forbidden);
    assert_eq!(condition(status, "Ready")["reason"], "BindingFailed");
}

#[tokio::test]
async fn a_failing_release_is_reported_and_retried() {
    let object = sink_binding();
    let mut answers = vec![
        (200, deployment("web")),
        (200, deployment("web")),
        list("Deployment", vec![deployment("old")]),
        failure(500, "InternalError", "try again"),
    ];
    answers.extend(nothing_bound_before().into_iter().skip(1));
    answers.push((200, object.clone()));
    let (result, requests) = reconciled("SinkBinding", &object, answers).await;
    assert!(matches!(result.expect("reconciled"), Action::Requeue(_)));
    assert_release(&requests[3], "Deployment", "old");
    let message = "cannot release Deployment old: try again (500)";
    assert_false(
        &requests[8],
        "SinkBindingAvailable",
        "BindingFailed",
        message,
    );
}

#[tokio::test]
async fn a_failing_status_write_is_a_reconcile_error() {
    let object = sink_binding();
    let mut answers = vec![(200, deployment("web")), (200, deployment("web"))];
    answers.extend(nothing_bound_before());
    answers.push(failure(500, "InternalError", "status unavailable"));
    let (result, requests) = reconciled("SinkBinding", &object, answers).await;
    let error = result.expect_err("the status could not be written");
    assert!(error.to_string().contains("status unavailable"), "{error}");
    assert!(requests[7].path.ends_with("/sinkbindings/bind/status"));
}

#[tokio::test]
async fn deleting_a_sink_binding_releases_every_workload_it_labelled() {
    let object = sink_binding();
    let answers = vec![
        list("Deployment", vec![deployment("web"), deployment("gone")]),
        (200, deployment("web")),
        failure(404, "NotFound", "deployments.apps \"gone\" not found"),
        list("StatefulSet", Vec::new()),
        list("DaemonSet", vec![json!({"metadata": {"name": "agent"}})]),
        (
            200,
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"}}),
        ),
        list("ReplicaSet", Vec::new()),
        // Knative Serving is not installed: nothing of that kind was bound.
        failure(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
    ];
    let (result, requests) = cleaned_up("SinkBinding", &object, answers).await;
    // A workload deleted meanwhile has nothing left to release.
    result.expect("cleaned up");
    assert_eq!(requests.len(), 8, "{requests:?}");
    assert_listed([0, 3, 4, 6, 7].iter().map(|&i| &requests[i]));
    assert_release(&requests[1], "Deployment", "web");
    assert_release(&requests[2], "Deployment", "gone");
    assert_release(&requests[5], "DaemonSet", "agent");
}

#[tokio::test]
async fn a_forbidden_release_on_delete_is_an_error() {
    let object = sink_binding();
    let mut answers = vec![
        list("Deployment", vec![deployment("web")]),
        failure(403, "Forbidden", "cannot patch deployments"),
    ];
    answers.extend(nothing_bound_before().into_iter().skip(1));
    let (result, requests) = cleaned_up("SinkBinding", &object, answers).await;
    let error = result.expect_err("the release was refused");
    assert_eq!(
        error.to_string(),
        "Kubernetes API: cannot release Deployment web: cannot patch deployments (403)"
    );
    // The other kinds are still released.
    assert_eq!(requests.len(), 6, "{requests:?}");
}

fn container_source() -> Value {
    json!({
        "apiVersion": "sources.knative.dev/v1", "kind": "ContainerSource",
        "metadata": {"name": "heart", "namespace": "team", "uid": "u-42", "generation": 1},
        "spec": {
            "template": {"spec": {
                "initContainers": [{"name": "prepare", "image": "setup"}],
                "containers": [{"name": "beat", "image": "heartbeats",
                "env": [{"name": "K_SINK", "value": "stale"}, {"name": "PERIOD", "value": "1"}]}]}},
            "sink": {"uri": "http://sink.example/"}
        }
    })
}

/// The Deployment as the API server answers an apply, with `status`.
fn applied_deployment(status: Value) -> Value {
    let mut deployment = deployment("heart-deployment");
    deployment["status"] = status;
    deployment
}

#[tokio::test]
async fn container_source_applies_an_owned_deployment_and_is_ready_once_available() {
    let object = container_source();
    let available = applied_deployment(json!({
        "replicas": 1, "availableReplicas": 1,
        "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}]
    }));
    let (result, requests) = reconciled(
        "ContainerSource",
        &object,
        vec![(200, available), (200, object.clone())],
    )
    .await;
    assert_eq!(result.expect("reconciled"), Action::AwaitChange);
    assert_eq!(requests.len(), 2, "{requests:?}");
    let apply = &requests[0];
    apply.assert_apply(
        "/apis/apps/v1/namespaces/team/deployments/heart-deployment",
        "rivulet-containersource",
    );
    assert!(apply.query.contains("force=true"), "{}", apply.query);
    let body = &apply.body;
    let owner = &body["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "ContainerSource");
    assert_eq!(owner["name"], "heart");
    assert_eq!(owner["uid"], "u-42");
    assert_eq!(owner["controller"], true);
    assert_eq!(
        body["spec"]["selector"]["matchLabels"]["sources.knative.dev/containerSource"],
        "heart"
    );
    assert_eq!(
        body["spec"]["template"]["metadata"]["labels"]["sources.knative.dev/containerSource"],
        "heart"
    );
    let container = &body["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["env"].as_array().unwrap().len(), 2, "{container}");
    assert_eq!(
        env_of(container, "K_SINK").as_deref(),
        Some("http://sink.example/")
    );
    assert_eq!(env_of(container, "PERIOD").as_deref(), Some("1"));
    assert!(env_of(container, "K_CE_OVERRIDES").is_none());
    let init = &body["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(
        env_of(init, "K_SINK").as_deref(),
        Some("http://sink.example/")
    );
    let status = &requests[1];
    assert_eq!(status.body["status"]["sinkUri"], "http://sink.example/");
    assert_eq!(status.body["status"]["conditions"][0]["type"], "Ready");
    for type_ in ["Ready", "SinkBindingReady", "ReceiveAdapterReady"] {
        assert_eq!(condition(status, type_)["status"], "True", "{type_}");
    }
}

#[tokio::test]
async fn a_deployment_not_available_yet_is_reported_and_requeued() {
    let object = container_source();
    let unavailable = applied_deployment(json!({
        "replicas": 1, "unavailableReplicas": 1,
        "conditions": [
            {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"},
            {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
             "message": "Deployment does not have minimum availability."}
        ]
    }));
    let (result, requests) = reconciled(
        "ContainerSource",
        &object,
        vec![(200, unavailable), (200, object.clone())],
    )
    .await;
    assert_eq!(
        result.expect("reconciled"),
        Action::Requeue(std::time::Duration::from_secs(10))
    );
    let status = &requests[1];
    assert_condition(status, "SinkBindingReady", "True");
    for type_ in ["Ready", "ReceiveAdapterReady"] {
        let message = "Deployment does not have minimum availability.";
        assert_false(status, type_, "MinimumReplicasUnavailable", message);
    }
}

#[tokio::test]
async fn a_new_deployment_without_status_is_not_ready_and_a_replica_count_is_enough() {
    let mut cluster = Scripted::standalone();
    let object = container_source();
    let (result, requests) = cluster
        .reconcile(
            "ContainerSource",
            &object,
            vec![(200, deployment("heart-deployment")), (200, object.clone())],
        )
        .await;
    assert!(matches!(result.expect("reconciled"), Action::Requeue(_)));
    let message = "Deployment heart-deployment has no available replica yet";
    assert_false(
        &requests[1],
        "ReceiveAdapterReady",
        "DeploymentUnavailable",
        message,
    );

    // No Available condition written yet, but a replica available.
    let counted = applied_deployment(json!({"availableReplicas": 1}));
    let (result, requests) = cluster
        .reconcile(
            "ContainerSource",
            &object,
            vec![(200, counted), (200, object.clone())],
        )
        .await;
    assert_eq!(result.expect("reconciled"), Action::AwaitChange);
    assert_condition(&requests[1], "ReceiveAdapterReady", "True");
}

#[tokio::test]
async fn a_failing_deployment_apply_is_reported_and_retried() {
    let object = container_source();
    for (code, reason, message) in [
        (500, "InternalError", "etcdserver: request timed out"),
        (403, "Forbidden", "cannot patch deployments in team"),
    ] {
        let (result, requests) = reconciled(
            "ContainerSource",
            &object,
            vec![failure(code, reason, message), (200, object.clone())],
        )
        .await;
        assert!(matches!(result.expect("reconciled"), Action::Requeue(_)));
        assert_eq!(requests[0].method, "PATCH");
        let why = format!("cannot apply Deployment team/heart-deployment: {message} ({code})");
        assert_false(
            &requests[1],
            "ReceiveAdapterReady",
            "DeploymentFailed",
            &why,
        );
        assert_eq!(
            condition(&requests[1], "Ready")["reason"],
            "DeploymentFailed"
        );
    }
}

#[tokio::test]
async fn standalone_mode_validates_and_says_kubernetes_is_required() {
    let server = support::InProcessServer::start().await;
    let api = server.api.clone();
    let source = json!({
        "apiVersion": "sources.knative.dev/v1", "kind": "ContainerSource",
        "metadata": {"name": "heart", "namespace": "default"},
        "spec": {
            "template": {"spec": {"containers": [{"name": "beat", "image": "heartbeats"}]}},
            "sink": {"uri": "http://127.0.0.1:1/"}
        }
    });
    let object = support::apply_needing_kubernetes(&api, &source).await;
    assert_eq!(object["status"]["sinkUri"], "http://127.0.0.1:1/");

    let mut both = sink_binding();
    both["metadata"]["namespace"] = json!("default");
    both["spec"]["subject"]["selector"] = json!({"matchLabels": {"app": "web"}});
    let (code, body) = support::put(&api, &both).await;
    assert_eq!(code, 422, "{body}");
    assert!(body.to_string().contains("spec.subject"), "{body}");

    let mut expressions = sink_binding();
    expressions["metadata"]["namespace"] = json!("default");
    expressions["spec"]["subject"] = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "selector": {"matchExpressions": [{"key": "app", "operator": "Matches", "values": ["w"]}]}});
    let (code, body) = support::put(&api, &expressions).await;
    assert_eq!(code, 422, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("spec.subject.selector.matchExpressions[0].operator")
            && text.contains("Matches"),
        "{body}"
    );
    let values = "spec.subject.selector.matchExpressions[0].values";
    let first_value = "spec.subject.selector.matchExpressions[0].values[0]";
    for (expression, says) in [
        (json!({"key": "app", "operator": "In"}), values),
        (
            json!({"key": "app", "operator": "Exists", "values": ["web"]}),
            "must be empty",
        ),
        (
            json!({"key": "app", "operator": "In", "values": ["a b"]}),
            first_value,
        ),
    ] {
        expressions["spec"]["subject"]["selector"]["matchExpressions"][0] = expression.clone();
        let (code, body) = support::put(&api, &expressions).await;
        assert_eq!(code, 422, "{expression}: {body}");
        assert!(body.to_string().contains(says), "{expression}: {body}");
    }
    expressions["spec"]["subject"]["selector"]["matchExpressions"][0] =
        json!({"key": "app", "operator": "In", "values": ["web", "api"]});
    let (code, body) = support::put(&api, &expressions).await;
    assert!(code == 200 || code == 201, "{code} {body}");

    // A Knative Service can be bound; a Job (its pod template is fixed) cannot.
    let mut knative = sink_binding();
    knative["metadata"]["name"] = json!("bind-fn");
    knative["metadata"]["namespace"] = json!("default");
    knative["spec"]["subject"] =
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "fn"});
    let (code, body) = support::put(&api, &knative).await;
    assert!(code == 200 || code == 201, "{code} {body}");
    knative["spec"]["subject"] = json!({"apiVersion": "batch/v1", "kind": "Job", "name": "fn"});
    let (code, body) = support::put(&api, &knative).await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body.to_string().contains("batch/v1 Job cannot be bound"),
        "{body}"
    );

    let mut empty = source.clone();
    empty["spec"]["template"]["spec"]["containers"] = json!([]);
    let (code, body) = support::put(&api, &empty).await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body.to_string().contains("spec.template.spec.containers"),
        "{body}"
    );
    server.shutdown().await;
}
