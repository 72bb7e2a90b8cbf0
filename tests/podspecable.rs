//! SinkBinding and ContainerSource reconciled against a scripted Kubernetes API server, and
//! in standalone mode through the in-process server.

mod support;

use serde_json::{Value, json};
use support::kube_api::{context, exchange, reconciler};

fn deployment(name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "team"},
        "spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "a"}, {"name": "side", "image": "b"}]}}}
    })
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

#[tokio::test]
async fn sink_binding_applies_k_sink_to_every_container_and_reports_ready() {
    let (ctx, mut server) = context();
    let object = sink_binding();
    let (result, requests) = exchange(
        &mut server,
        (reconciler("SinkBinding").reconcile)(&object, &ctx),
        vec![
            (200, deployment("web")),
            (200, deployment("web")),
            (200, object.clone()),
        ],
    )
    .await;
    result.expect("reconciled");
    assert_eq!(requests[0].method, "GET");
    assert_eq!(
        requests[0].path,
        "/apis/apps/v1/namespaces/team/deployments/web"
    );
    let apply = &requests[1];
    assert_eq!(apply.method, "PATCH");
    assert_eq!(apply.path, "/apis/apps/v1/namespaces/team/deployments/web");
    assert_eq!(
        apply.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert!(
        apply.query.contains("fieldManager=rivulet-sinkbinding"),
        "{}",
        apply.query
    );
    assert!(apply.query.contains("force=true"), "{}", apply.query);
    let containers = apply.body["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 2);
    for container in containers {
        assert_eq!(
            env_of(container, "K_SINK").as_deref(),
            Some("http://sink.example/events")
        );
        assert_eq!(
            env_of(container, "K_CE_OVERRIDES").as_deref(),
            Some(r#"{"extensions":{"team":"blue"}}"#)
        );
        // Only the names and the env entries: nothing else is claimed.
        assert!(container.get("image").is_none());
    }
    let status = &requests[2];
    assert_eq!(
        status.path,
        "/apis/sources.knative.dev/v1/namespaces/team/sinkbindings/bind/status"
    );
    let status = &status.body["status"];
    assert_eq!(status["sinkUri"], "http://sink.example/events");
    assert_eq!(status["observedGeneration"], 2);
    let conditions = status["conditions"].as_array().unwrap();
    for type_ in ["Ready", "SinkProvided", "BindingsReady"] {
        assert!(
            conditions
                .iter()
                .any(|c| c["type"] == type_ && c["status"] == "True"),
            "{type_} in {conditions:?}"
        );
    }
}

#[tokio::test]
async fn a_missing_subject_is_reported_not_ready() {
    let (ctx, mut server) = context();
    let object = sink_binding();
    let not_found = json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
        "code": 404, "reason": "NotFound", "message": "deployments \"web\" not found"});
    let (result, requests) = exchange(
        &mut server,
        (reconciler("SinkBinding").reconcile)(&object, &ctx),
        vec![(404, not_found), (200, object.clone())],
    )
    .await;
    result.expect("reconciled");
    let ready = &requests[1].body["status"]["conditions"][0];
    assert_eq!(ready["type"], "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "SubjectNotFound");
}

#[tokio::test]
async fn deleting_a_sink_binding_releases_its_env_entries() {
    let (ctx, mut server) = context();
    let object = sink_binding();
    let (result, requests) = exchange(
        &mut server,
        (reconciler("SinkBinding").cleanup)(&object, &ctx),
        vec![(200, deployment("web")), (200, deployment("web"))],
    )
    .await;
    result.expect("cleaned up");
    assert_eq!(requests.len(), 2);
    let release = &requests[1];
    assert_eq!(release.method, "PATCH");
    assert_eq!(
        release.path,
        "/apis/apps/v1/namespaces/team/deployments/web"
    );
    assert!(release.query.contains("fieldManager=rivulet-sinkbinding"));
    assert_eq!(
        release.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    // An apply naming no env: the API server drops what this manager owned.
    assert!(release.body.get("spec").is_none(), "{}", release.body);
    assert_eq!(release.body["metadata"]["name"], "web");
}

#[tokio::test]
async fn container_source_applies_an_owned_deployment() {
    let (ctx, mut server) = context();
    let object = json!({
        "apiVersion": "sources.knative.dev/v1", "kind": "ContainerSource",
        "metadata": {"name": "heart", "namespace": "team", "uid": "u-42", "generation": 1},
        "spec": {
            "template": {"spec": {"containers": [{"name": "beat", "image": "heartbeats",
                "env": [{"name": "K_SINK", "value": "stale"}, {"name": "PERIOD", "value": "1"}]}]}},
            "sink": {"uri": "http://sink.example/"}
        }
    });
    let (result, requests) = exchange(
        &mut server,
        (reconciler("ContainerSource").reconcile)(&object, &ctx),
        vec![(200, deployment("heart-deployment")), (200, object.clone())],
    )
    .await;
    result.expect("reconciled");
    let apply = &requests[0];
    assert_eq!(apply.method, "PATCH");
    assert_eq!(
        apply.path,
        "/apis/apps/v1/namespaces/team/deployments/heart-deployment"
    );
    assert_eq!(
        apply.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert!(apply.query.contains("fieldManager=rivulet-containersource"));
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
    let status = &requests[1].body["status"];
    assert_eq!(status["sinkUri"], "http://sink.example/");
    assert_eq!(status["conditions"][0]["type"], "Ready");
    assert_eq!(status["conditions"][0]["status"], "True");
}

#[tokio::test]
async fn standalone_mode_validates_and_says_kubernetes_is_required() {
    let server = support::InProcessServer::start().await;
    let base = server.base.clone();
    let source = json!({
        "apiVersion": "sources.knative.dev/v1", "kind": "ContainerSource",
        "metadata": {"name": "heart", "namespace": "default"},
        "spec": {
            "template": {"spec": {"containers": [{"name": "beat", "image": "heartbeats"}]}},
            "sink": {"uri": "http://127.0.0.1:1/"}
        }
    });
    support::apply(&base, &source).await;
    let object = support::wait_status(&base, "ContainerSource", "default", "heart", "False").await;
    let ready = support::ready_condition(&object).unwrap();
    assert_eq!(ready["reason"], "KubernetesRequired");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("--store kubernetes"),
        "{ready}"
    );
    assert_eq!(object["status"]["sinkUri"], "http://127.0.0.1:1/");

    let mut both = sink_binding();
    both["metadata"]["namespace"] = json!("default");
    both["spec"]["subject"]["selector"] = json!({"matchLabels": {"app": "web"}});
    let (code, body) = support::put(&base, &both).await;
    assert_eq!(code, 422, "{body}");
    assert!(body.to_string().contains("spec.subject"), "{body}");

    let mut empty = source.clone();
    empty["spec"]["template"]["spec"]["containers"] = json!([]);
    let (code, body) = support::put(&base, &empty).await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body.to_string().contains("spec.template.spec.containers"),
        "{body}"
    );
    server.shutdown().await;
}
