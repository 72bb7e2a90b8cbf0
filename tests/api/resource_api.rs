//! The resource API over real HTTP: apply, read, list and delete; Knative validation; status
//! conditions; configuration from files at start.

use rivulet_testkit as support;

use std::process::{Command, Stdio};

use serde_json::{Value, json};
use support::{InProcessServer, Recorder, apply, broker, condition, get, put, trigger};

const BROKERS: &str = "/apis/eventing.knative.dev/v1/namespaces/default/brokers";
const TRIGGERS: &str = "/apis/eventing.knative.dev/v1/namespaces/default/triggers";

async fn list_names(base: &str, collection: &str) -> Vec<String> {
    let list = support::json_of(support::api_request(
        reqwest::Method::GET,
        format!("{base}{collection}"),
    ))
    .await;
    list["items"]
        .as_array()
        .expect("a list has items")
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

async fn delete(base: &str, path: &str) -> u16 {
    support::api_request(reqwest::Method::DELETE, format!("{base}{path}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_can_be_put_read_listed_and_deleted() {
    let server = InProcessServer::start().await;
    let base = &server.api;
    let (status, created) = put(base, &broker("default", "orders")).await;
    assert_eq!(status, 201, "the first PUT creates: {created}");
    assert!(
        created.pointer("/metadata/uid").is_some(),
        "uid is filled in"
    );
    let (status, _) = put(base, &broker("default", "orders")).await;
    assert_eq!(status, 200, "a second PUT is an update");

    let got = get(base, "Broker", "default", "orders")
        .await
        .expect("the broker exists");
    assert_eq!(got["metadata"]["name"], "orders");
    let names = list_names(base, BROKERS).await;
    assert!(
        names.contains(&"orders".to_string()) && names.contains(&"default".to_string()),
        "list: {names:?}"
    );

    // YAML is accepted too.
    let yaml = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: from-yaml\nspec: {}\n";
    let request = support::api_request(reqwest::Method::PUT, format!("{base}{BROKERS}/from-yaml"))
        .header("content-type", "application/yaml")
        .body(yaml);
    assert_eq!(support::status_of(request).await, 201);

    assert_eq!(delete(base, &format!("{BROKERS}/orders")).await, 200);
    assert!(
        get(base, "Broker", "default", "orders").await.is_none(),
        "deleted broker is gone"
    );
    assert_eq!(
        delete(base, &format!("{BROKERS}/orders")).await,
        404,
        "deleting twice is 404"
    );
    assert!(
        !list_names(base, BROKERS)
            .await
            .contains(&"orders".to_string())
    );
    // Its ingress closes.
    support::wait_for(
        "ingress of a deleted broker to answer 404",
        support::WAIT,
        || async {
            (support::post_binary(&server.base, "default/orders", "late", "t", "{}").await == 404)
                .then_some(())
        },
    )
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_can_be_put_read_listed_and_deleted() {
    let server = InProcessServer::start().await;
    let base = &server.api;
    let (status, _) = put(
        base,
        &trigger("default", "t1", "default", "http://127.0.0.1:9/"),
    )
    .await;
    assert_eq!(status, 201);
    let got = get(base, "Trigger", "default", "t1")
        .await
        .expect("the trigger exists");
    assert_eq!(got["spec"]["broker"], "default");
    assert_eq!(list_names(base, TRIGGERS).await, vec!["t1".to_string()]);
    assert_eq!(delete(base, &format!("{TRIGGERS}/t1")).await, 200);
    assert!(get(base, "Trigger", "default", "t1").await.is_none());
    assert!(list_names(base, TRIGGERS).await.is_empty());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_for_another_kind_or_name_is_refused() {
    let server = InProcessServer::start().await;
    let base = &server.api;
    let response =
        support::api_request(reqwest::Method::PUT, format!("{base}{BROKERS}/other-name"))
            .json(&broker("default", "orders"))
            .send()
            .await
            .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("metadata.name"));
    let response = support::api_request(reqwest::Method::PUT, format!("{base}{TRIGGERS}/orders"))
        .json(&broker("default", "orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("Broker"));
    let response = support::api_request(
        reqwest::Method::GET,
        format!("{base}/apis/eventing.knative.dev/v1/namespaces/default/widgets"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 404, "unknown kinds are 404");
    server.shutdown().await;
}

fn trigger_with(spec_changes: Value) -> Value {
    let mut object = trigger("default", "checked", "default", "http://127.0.0.1:9/");
    for (key, value) in spec_changes.as_object().unwrap() {
        if value.is_null() {
            object["spec"].as_object_mut().unwrap().remove(key);
        } else {
            object["spec"][key] = value.clone();
        }
    }
    object
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_objects_are_refused_with_422_naming_field_and_rule() {
    let server = InProcessServer::start().await;
    let base = &server.api;
    let cases: Vec<(&str, Value, &[&str])> = vec![
        (
            "legacy filter attribute with upper case",
            trigger_with(json!({"filter": {"attributes": {"Type": "x"}}})),
            &["spec.filter.attributes[Type]", "lower-case"],
        ),
        (
            "exact filter attribute with a dash",
            trigger_with(json!({"filters": [{"exact": {"my-attr": "x"}}]})),
            &["spec.filters[0].exact[my-attr]", "lower-case"],
        ),
        (
            "filter attribute starting with a digit",
            trigger_with(json!({"filters": [{"prefix": {"1type": "x"}}]})),
            &["spec.filters[0].prefix[1type]", "start with"],
        ),
        (
            "filter object with no dialect",
            trigger_with(json!({"filters": [{}]})),
            &["spec.filters[0]", "exactly one dialect"],
        ),
        (
            "filter object with two dialects",
            trigger_with(json!({"filters": [{"exact": {"type": "a"}, "prefix": {"type": "b"}}]})),
            &["spec.filters[0]", "exactly one dialect", "exact, prefix"],
        ),
        (
            "nested filter with two dialects",
            trigger_with(
                json!({"filters": [{"all": [{"exact": {"type": "a"}, "suffix": {"type": "b"}}]}]}),
            ),
            &["spec.filters[0].all[0]", "exactly one dialect"],
        ),
        (
            "invalid cesql",
            trigger_with(json!({"filters": [{"cesql": "type = = 'x'"}]})),
            &["spec.filters[0].cesql"],
        ),
        (
            "backoffDelay that is not ISO-8601",
            trigger_with(json!({"delivery": {"backoffDelay": "5s"}})),
            &["spec.delivery.backoffDelay", "ISO-8601"],
        ),
        (
            "timeout that is not ISO-8601",
            trigger_with(json!({"delivery": {"timeout": "30 seconds"}})),
            &["spec.delivery.timeout", "ISO-8601"],
        ),
        (
            "negative retry",
            trigger_with(json!({"delivery": {"retry": -1}})),
            &["spec.delivery.retry", "zero or more"],
        ),
        (
            "unknown field in spec",
            trigger_with(json!({"bogus": true})),
            &["spec", "unknown field", "bogus"],
        ),
        (
            "unknown field in a filter",
            trigger_with(json!({"filters": [{"exakt": {"type": "a"}}]})),
            &["spec.filters[0]", "unknown field", "exakt"],
        ),
        (
            "missing subscriber",
            trigger_with(json!({"subscriber": null})),
            &["spec", "subscriber"],
        ),
        (
            "subscriber with neither ref nor uri",
            trigger_with(json!({"subscriber": {}})),
            &["spec.subscriber", "ref or a uri"],
        ),
        (
            "subscriber with a relative uri",
            trigger_with(json!({"subscriber": {"uri": "/relative/path"}})),
            &["spec.subscriber.uri", "absolute"],
        ),
        (
            "missing broker",
            trigger_with(json!({"broker": ""})),
            &["spec.broker", "required"],
        ),
        (
            "broker with negative retry",
            {
                let mut b = broker("default", "checked");
                b["spec"]["delivery"] = json!({"retry": -3});
                b
            },
            &["spec.delivery.retry", "zero or more"],
        ),
        (
            "broker with an unknown spec field",
            {
                let mut b = broker("default", "checked");
                b["spec"]["channel"] = json!("x");
                b
            },
            &["spec", "unknown field", "channel"],
        ),
        (
            "name that is not a DNS name",
            {
                let mut b = broker("default", "checked");
                b["metadata"]["name"] = json!("Not_A_Name");
                b
            },
            &["metadata.name"],
        ),
    ];
    let mut failures = Vec::new();
    for (what, object, words) in &cases {
        let kind = object["kind"].as_str().unwrap();
        let name = object["metadata"]["name"].as_str().unwrap();
        let response = support::api_request(
            reqwest::Method::PUT,
            format!("{base}{}", support::resource_path(kind, "default", name)),
        )
        .json(object)
        .send()
        .await
        .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let message = body["message"].as_str().unwrap_or_default();
        if status != 422 {
            failures.push(format!("{what}: expected 422, got {status}: {body}"));
        } else if let Some(missing) = words.iter().find(|w| !message.contains(*w)) {
            failures.push(format!(
                "{what}: message {message:?} does not mention {missing:?}"
            ));
        } else {
            eprintln!("{what} -> {message}");
        }
    }
    support::assert_no_failures(&failures, cases.len());
    assert!(
        get(base, "Trigger", "default", "checked").await.is_none(),
        "nothing refused was stored"
    );
    server.shutdown().await;
}

fn classed_broker(name: &str, class: &str, config: Option<&str>) -> Value {
    let mut b = broker("default", name);
    b["metadata"]["annotations"] = json!({"eventing.knative.dev/broker.class": class});
    if let Some(config) = config {
        b["spec"]["config"] = json!({"apiVersion": "v1", "kind": "ConfigMap", "name": config});
    }
    b
}

fn configmap(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}, "data": data})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immutable_fields_cannot_change_on_update() {
    let server = InProcessServer::start().await;
    let base = &server.api;
    apply(base, &configmap("cfg-a", json!({}))).await;
    apply(base, &configmap("cfg-b", json!({}))).await;
    apply(
        base,
        &classed_broker("fixed", "MTChannelBasedBroker", Some("cfg-a")),
    )
    .await;

    let (status, body) = put(base, &classed_broker("fixed", "Kafka", Some("cfg-a"))).await;
    assert_eq!(status, 422, "class change: {body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("eventing.knative.dev/broker.class") && message.contains("immutable"),
        "{message}"
    );

    let (status, body) = put(
        base,
        &classed_broker("fixed", "MTChannelBasedBroker", Some("cfg-b")),
    )
    .await;
    assert_eq!(status, 422, "config change: {body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("spec.config") && message.contains("immutable"),
        "{message}"
    );

    apply(
        base,
        &trigger("default", "bound", "default", "http://127.0.0.1:9/"),
    )
    .await;
    let (status, body) = put(
        base,
        &trigger("default", "bound", "fixed", "http://127.0.0.1:9/"),
    )
    .await;
    assert_eq!(status, 422, "trigger broker change: {body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("spec.broker") && message.contains("immutable"),
        "{message}"
    );

    // Changing something mutable is fine.
    let (status, _) = put(
        base,
        &trigger("default", "bound", "default", "http://127.0.0.1:10/"),
    )
    .await;
    assert_eq!(status, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_ready_address_and_subscriber_uri() {
    let server = InProcessServer::start().await;
    let base = &server.api;
    let recorder = Recorder::start().await;
    apply(base, &broker("default", "shop")).await;
    let shop = support::wait_ready(base, "Broker", "default", "shop").await;
    assert_eq!(
        shop.pointer("/status/address/url").and_then(Value::as_str),
        Some(format!("{}/default/shop", server.base).as_str())
    );
    apply(base, &trigger("default", "shop-all", "shop", &recorder.url)).await;
    let t = support::wait_ready(base, "Trigger", "default", "shop-all").await;
    assert_eq!(
        t.pointer("/status/subscriberUri").and_then(Value::as_str),
        Some(recorder.url.as_str())
    );
    for needed in ["BrokerReady", "SubscriberResolved"] {
        let c = condition(&t, needed).unwrap_or_else(|| panic!("condition {needed} in {t}"));
        assert_eq!(c["status"], "True");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_for_a_missing_broker_waits_and_becomes_ready_with_it() {
    let server = InProcessServer::start().await;
    let base = &server.api;
    let recorder = Recorder::start().await;
    apply(base, &trigger("default", "early", "later", &recorder.url)).await;
    let t = support::wait_status(base, "Trigger", "default", "early", "False").await;
    let ready = support::ready_condition(&t).unwrap();
    assert_eq!(ready["reason"], "BrokerDoesNotExist", "{ready}");
    assert!(
        support::message_contains(&ready, "later"),
        "the message names the broker: {ready}"
    );

    apply(base, &broker("default", "later")).await;
    support::wait_ready(base, "Trigger", "default", "early").await;
    // And it delivers.
    assert_eq!(
        support::post_binary(&server.base, "default/later", "via-later", "t", "{}").await,
        202
    );
    recorder.wait_for_id("via-later").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_config_the_default_broker_exists() {
    let server = InProcessServer::start().await;
    let b = support::wait_ready(&server.api, "Broker", "default", "default").await;
    assert!(b.pointer("/status/address/url").is_some());
    assert_eq!(
        support::post_binary(&server.base, "default/default", "d1", "t", "{}").await,
        202
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_folder_of_multi_document_yaml_applies_everything() {
    let config = tempfile::tempdir().unwrap();
    support::write_file(
        config.path(),
        "10-brokers.yaml",
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: alpha\n  namespace: team\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: mem\n  namespace: team\ndata:\n  channel-template-spec: |\n    apiVersion: messaging.knative.dev/v1\n    kind: InMemoryChannel\n---\napiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: beta\n  namespace: team\n  annotations:\n    eventing.knative.dev/broker.class: MTChannelBasedBroker\nspec:\n  config:\n    apiVersion: v1\n    kind: ConfigMap\n    name: mem\n",
    );
    support::write_file(
        config.path(),
        "20-triggers.yml",
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: on-alpha\n  namespace: team\nspec:\n  broker: alpha\n  subscriber:\n    uri: http://127.0.0.1:9/\n---\n---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: on-beta\n  namespace: team\nspec:\n  broker: beta\n  filters:\n    - exact:\n        type: x\n  subscriber:\n    uri: http://127.0.0.1:9/\n",
    );
    std::fs::write(config.path().join("README.txt"), "not a manifest").unwrap();
    let path = config.path().to_path_buf();
    let server = InProcessServer::start_with(|o| o.config = vec![path]).await;
    let base = &server.api;
    support::wait_ready(base, "Broker", "team", "alpha").await;
    support::wait_ready(base, "Broker", "team", "beta").await;
    assert!(get(base, "ConfigMap", "team", "mem").await.is_some());
    support::wait_ready(base, "Trigger", "team", "on-alpha").await;
    support::wait_ready(base, "Trigger", "team", "on-beta").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channel_template_picks_the_memory_channel_and_no_config_the_embedded_log() {
    let server = InProcessServer::start().await;
    let base = &server.api;
    apply(
        base,
        &configmap(
            "imc",
            json!({"channel-template-spec": "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\n"}),
        ),
    )
    .await;
    apply(
        base,
        &classed_broker("in-memory", "MTChannelBasedBroker", Some("imc")),
    )
    .await;
    apply(
        base,
        &classed_broker("on-disk", "MTChannelBasedBroker", None),
    )
    .await;

    let memory = support::wait_ready(base, "Broker", "default", "in-memory").await;
    let message = condition(&memory, "IngressReady").unwrap()["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("memory"),
        "IngressReady names the memory backend: {message:?}"
    );
    let embedded = support::wait_ready(base, "Broker", "default", "on-disk").await;
    let message = condition(&embedded, "IngressReady").unwrap()["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("embedded"),
        "IngressReady names the embedded backend: {message:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unserved_broker_class_or_channel_kind_names_what_the_backends_serve() {
    let server = InProcessServer::start().await;
    let base = &server.api;
    apply(
        base,
        &configmap(
            "odd-channel",
            json!({"channel-template-spec": "apiVersion: messaging.knative.dev/v1\nkind: PigeonChannel\n"}),
        ),
    )
    .await;
    apply(base, &classed_broker("pigeon", "PigeonBroker", None)).await;
    apply(
        base,
        &classed_broker("odd", "MTChannelBasedBroker", Some("odd-channel")),
    )
    .await;

    let message = |object: Value| {
        support::ready_condition(&object).unwrap()["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let pigeon = message(support::wait_status(base, "Broker", "default", "pigeon", "False").await);
    for class in [
        "MTChannelBasedBroker",
        "RabbitMQBroker",
        "NatsJetStreamBroker",
        "Kafka",
    ] {
        assert!(pigeon.contains(class), "{class} is offered: {pigeon:?}");
    }
    assert!(pigeon.contains("\"PigeonBroker\""), "{pigeon:?}");
    let odd = message(support::wait_status(base, "Broker", "default", "odd", "False").await);
    for kind in ["InMemoryChannel", "KafkaChannel", "NatsJetStreamChannel"] {
        assert!(odd.contains(kind), "{kind} is offered: {odd:?}");
    }
    assert!(odd.contains("\"PigeonChannel\""), "{odd:?}");
    server.shutdown().await;
}

#[test]
fn serve_refuses_a_config_file_with_an_invalid_manifest() {
    let config = tempfile::tempdir().unwrap();
    let file = support::write_file(
        config.path(),
        "bad-trigger.yaml",
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: ok\n---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: broken\nspec:\n  broker: ok\n  subscriber:\n    uri: http://127.0.0.1:9/\n  delivery:\n    retry: -2\n",
    );
    let data = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let mut child = Command::new(support::binary())
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--config",
        ])
        .arg(&file)
        .arg("--data-dir")
        .arg(data.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It must exit by itself; a server that starts serving would hang here, so bound the wait.
    let deadline = std::time::Instant::now() + support::WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve kept running with an invalid config");
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "serve exits non-zero");
    assert!(
        stderr.contains("bad-trigger.yaml"),
        "the message names the file: {stderr}"
    );
    assert!(
        stderr.contains("spec.delivery.retry"),
        "the message names the field: {stderr}"
    );
}

/// Defaults as Knative's webhook sets them, seen in what the API answers after an apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_objects_get_knatives_defaults() {
    let server = InProcessServer::start().await;
    let api = &server.api;

    // The default broker made at start has a class, so applying it with that class works.
    let stored = get(api, "Broker", "default", "default").await.unwrap();
    assert_eq!(
        stored["metadata"]["annotations"]["eventing.knative.dev/broker.class"],
        "MTChannelBasedBroker"
    );
    let mut with_class = broker("default", "default");
    with_class["metadata"]["annotations"] =
        json!({"eventing.knative.dev/broker.class": "MTChannelBasedBroker"});
    apply(api, &with_class).await;

    // A trigger: empty filter, broker label, subscriber ref namespace; `spec:` null is none.
    let created = apply(
        api,
        &json!({
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {"name": "plain", "namespace": "default"},
            "spec": {
                "broker": "default",
                "subscriber": {"ref": {"apiVersion": "v1", "kind": "Service", "name": "display"}}
            }
        }),
    )
    .await;
    assert_eq!(created["spec"]["filter"], json!({}), "{created}");
    assert_eq!(
        created["metadata"]["labels"]["eventing.knative.dev/broker"],
        "default"
    );
    assert_eq!(created["spec"]["subscriber"]["ref"]["namespace"], "default");
    let null_spec = apply(
        api,
        &json!({
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Broker",
            "metadata": {"name": "null-spec", "namespace": "default"},
            "spec": null
        }),
    )
    .await;
    assert_eq!(null_spec["spec"], json!({}), "{null_spec}");

    // config-br-defaults picks the class, config and delivery of new brokers.
    apply(
        api,
        &json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "config-br-defaults", "namespace": "knative-eventing"},
            "data": {"default-br-config": "clusterDefault:\n  brokerClass: MTChannelBasedBroker\n  apiVersion: v1\n  kind: ConfigMap\n  name: imc-channel\n  namespace: knative-eventing\n  delivery:\n    retry: 4\n"}
        }),
    )
    .await;
    let defaulted = apply(api, &broker("default", "configured")).await;
    assert_eq!(
        defaulted["spec"]["config"],
        json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "imc-channel", "namespace": "knative-eventing"}),
        "{defaulted}"
    );
    assert_eq!(defaulted["spec"]["delivery"]["retry"], 4);
    server.shutdown().await;
}
