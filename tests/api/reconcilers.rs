//! Every reconciler besides Broker and Trigger (tests/controller.rs) and the pod-spec kinds
//! (tests/podspecable.rs) against a scripted Kubernetes API server: the status each writes in
//! the controller and what else it asks for, requeues while something is missing, the error
//! policy when the API server fails, and a data plane that writes no status.

use rivulet_testkit as support;
use rivulet_testkit::rabbitmq as rabbitmq_support;

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use rivulet::runtime::{Action, Role};
use serde_json::{Value, json};
use support::kube_api::{Scripted, Seen, condition, deleted, empty_list, list_of, status_error};

const NS: &str = "team";
const BROKER_API: &str = "eventing.knative.dev/v1";
/// What sources and sinks do while something they need is missing.
const RETRY_SOON: Action = Action::Requeue(Duration::from_secs(5));

// ---------------------------------------------------------------------------------------
// Objects, paths and assertions shared by the tests.

/// Where the API server keeps a kind: `/apis/{group}/{version}` (`/api/v1` for the core
/// group), then `/namespaces/{namespace}` unless cluster-wide, then the plural.
fn collection(api_version: &str, plural: &str, namespace: Option<&str>) -> String {
    let root = if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    };
    match namespace {
        Some(namespace) => format!("{root}/namespaces/{namespace}/{plural}"),
        None => format!("{root}/{plural}"),
    }
}

/// The path of an object in the test namespace.
fn object_path(api_version: &str, plural: &str, name: &str) -> String {
    format!("{}/{name}", collection(api_version, plural, Some(NS)))
}

fn broker_path(name: &str) -> String {
    object_path(BROKER_API, "brokers", name)
}

fn secret_path(name: &str) -> String {
    object_path("v1", "secrets", name)
}

fn triggers_in_namespace() -> String {
    collection(BROKER_API, "triggers", Some(NS))
}

/// A broker with the controller's finalizer already on it, so reconciling it asks only for
/// its status and its triggers.
fn broker(name: &str) -> Value {
    json!({
        "apiVersion": BROKER_API, "kind": "Broker",
        "metadata": {"name": name, "namespace": NS, "uid": format!("{name}-uid"), "generation": 1,
            "finalizers": ["brokers.eventing.knative.dev"]},
        "spec": {}
    })
}

/// A broker whose `spec.config` names `config` of `kind`.
fn broker_with_config(name: &str, api_version: &str, kind: &str, config: &str) -> Value {
    let mut object = broker(name);
    object["spec"]["config"] = json!({"apiVersion": api_version, "kind": kind, "name": config});
    object
}

fn broker_ref(name: &str) -> Value {
    json!({"ref": {"apiVersion": BROKER_API, "kind": "Broker", "name": name}})
}

/// A Secret as the API server returns it: `data` base64-encoded.
fn secret(name: &str, data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(key, value)| {
            let encoded = base64::engine::general_purpose::STANDARD.encode(value);
            (key.to_string(), Value::String(encoded))
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": NS}, "data": data})
}

fn not_found(what: &str) -> (u16, Value) {
    (
        404,
        status_error(404, "NotFound", &format!("{what} not found")),
    )
}

fn internal_error() -> (u16, Value) {
    (
        500,
        status_error(500, "InternalError", "etcd is having a bad day"),
    )
}

/// Reconciles broker `orders` in the controller, so it is served and EventTypes and
/// triggers find it.
async fn ready_broker(cluster: &mut Scripted) {
    let object = broker("orders");
    let (action, requests) = cluster
        .apply(
            "Broker",
            &object,
            vec![(200, object.clone()), no_triggers()],
        )
        .await;
    assert_eq!(action, Action::AwaitChange, "{requests:?}");
    assert!(cluster.ctx.brokers.get(NS, "orders").is_some());
}

/// The API server's answer to a list of triggers: there are none.
fn no_triggers() -> (u16, Value) {
    (200, empty_list(BROKER_API, "Trigger"))
}

/// What each request asked for: its method and path.
fn asked(requests: &[Seen]) -> Vec<(&str, &str)> {
    requests
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect()
}

/// The status a request writes, after checking that it is a server-side apply of the status
/// subresource of `object_path` by the field manager `rivulet`.
fn written_status<'a>(request: &'a Seen, object_path: &str) -> &'a Value {
    request.assert_apply(&format!("{object_path}/status"), "rivulet");
    &request.body["status"]
}

/// The conditions of a status, exactly: their types and statuses, in order.
fn assert_conditions(status: &Value, expected: &[(&str, &str)], what: &str) {
    let conditions: Vec<(&str, &str)> = status["conditions"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no conditions in {status}"))
        .iter()
        .map(|c| (c["type"].as_str().unwrap(), c["status"].as_str().unwrap()))
        .collect();
    assert_eq!(conditions, expected, "{what}: {status}");
}

/// `Ready` and `others`, all true.
fn all_true<'a>(others: &[&'a str]) -> Vec<(&'a str, &'a str)> {
    std::iter::once("Ready")
        .chain(others.iter().copied())
        .map(|type_| (type_, "True"))
        .collect()
}

/// The Warning Event the controller posts in the background about `kind` `name`; its note.
async fn warning_event(cluster: &mut Scripted, reason: &str, kind: &str, name: &str) -> String {
    let event = cluster.next_background_request().await;
    assert_eq!(event.method, "POST", "{event:?}");
    assert_eq!(
        event.path,
        format!("/apis/events.k8s.io/v1/namespaces/{NS}/events")
    );
    assert_eq!(event.body["type"], "Warning", "{}", event.body);
    assert_eq!(event.body["reason"], reason, "{}", event.body);
    assert_eq!(event.body["reportingController"], "rivulet-controller");
    assert_eq!(event.body["regarding"]["kind"], kind, "{}", event.body);
    assert_eq!(event.body["regarding"]["name"], name, "{}", event.body);
    event.body["note"].as_str().unwrap_or_default().to_string()
}

/// A failed status write: the error policy requeues and says why in a Warning Event.
async fn assert_api_server_error_reported(
    cluster: &mut Scripted,
    action: Action,
    kind: &str,
    name: &str,
) {
    assert_eq!(action, RETRY_SOON, "{kind}");
    let note = warning_event(cluster, "ApiServerError", kind, name).await;
    assert!(note.contains("etcd is having a bad day"), "{kind}: {note}");
}

/// How an object of `kind` fails to be prepared or built, and what its status says then.
struct Failure {
    kind: &'static str,
    spec: Value,
    /// The answers to what it reads.
    lookup_answers: Vec<(u16, Value)>,
    /// The failing condition, its reason and part of its message.
    condition: &'static str,
    reason: &'static str,
    message: &'static str,
}

// ---------------------------------------------------------------------------------------
// Sources: PingSource, KafkaSource, RabbitmqSource, NatsSource, WebhookSource.

struct SourceCase {
    kind: &'static str,
    api_version: &'static str,
    plural: &'static str,
    name: &'static str,
    /// The spec, but for its sink.
    spec: Value,
    /// What the source reads besides its sink, in order: path and answer.
    lookups: Vec<(String, Value)>,
    /// Its conditions after `Ready` when all is well.
    ready_conditions: &'static [&'static str],
    ce_attributes: Value,
    /// `status.address.url`, for a source that takes requests.
    address: Option<&'static str>,
}

impl SourceCase {
    fn object(&self, sink: Value) -> Value {
        let mut spec = self.spec.clone();
        spec["sink"] = sink;
        json!({
            "apiVersion": self.api_version, "kind": self.kind,
            "metadata": {"name": self.name, "namespace": NS, "uid": format!("{}-uid", self.name),
                "generation": 4},
            "spec": spec
        })
    }

    fn path(&self) -> String {
        object_path(self.api_version, self.plural, self.name)
    }

    fn lookup_answers(&self) -> Vec<(u16, Value)> {
        self.lookups.iter().map(|(_, a)| (200, a.clone())).collect()
    }
}

fn source_cases() -> Vec<SourceCase> {
    vec![
        SourceCase {
            kind: "PingSource",
            api_version: "sources.knative.dev/v1",
            plural: "pingsources",
            name: "tick",
            // Once a year: the controller runs it, and it must not fire during the test.
            spec: json!({"schedule": "0 0 1 1 *", "contentType": "application/json",
                "data": "{\"n\": 1}"}),
            lookups: vec![],
            ready_conditions: &["SinkProvided", "Deployed"],
            ce_attributes: json!([{"type": "dev.knative.sources.ping",
                "source": "/apis/v1/namespaces/team/pingsources/tick"}]),
            address: None,
        },
        SourceCase {
            kind: "KafkaSource",
            api_version: "sources.knative.dev/v1beta1",
            plural: "kafkasources",
            name: "from-kafka",
            // No Kafka runs here: the controller prepares the source without connecting.
            spec: json!({"bootstrapServers": ["127.0.0.1:9092"], "topics": ["orders", "payments"],
                "consumerGroup": "shipping"}),
            lookups: vec![],
            ready_conditions: &["SinkProvided", "Deployed"],
            ce_attributes: json!([
                {"type": "dev.knative.kafka.event",
                    "source": "/apis/v1/namespaces/team/kafkasources/from-kafka#orders"},
                {"type": "dev.knative.kafka.event",
                    "source": "/apis/v1/namespaces/team/kafkasources/from-kafka#payments"}
            ]),
            address: None,
        },
        SourceCase {
            kind: "RabbitmqSource",
            api_version: "sources.knative.dev/v1alpha1",
            plural: "rabbitmqsources",
            name: "from-rabbit",
            spec: json!({"rabbitmqClusterReference": {"connectionSecret": {"name": "rabbit"}},
                "rabbitmqResourcesConfig": {"queueName": "orders"}}),
            lookups: vec![(
                secret_path("rabbit"),
                secret("rabbit", &[("uri", &rabbitmq_support::rabbitmq_uri())]),
            )],
            ready_conditions: &["SinkProvided", "SecretResolved", "Deployed"],
            ce_attributes: json!([{"type": "dev.knative.rabbitmq.event",
                "source": "/apis/v1/namespaces/team/rabbitmqsources/from-rabbit"}]),
            address: None,
        },
        SourceCase {
            kind: "NatsSource",
            api_version: "sources.rivulet.dev/v1alpha1",
            plural: "natssources",
            name: "from-nats",
            spec: json!({"url": "nats://127.0.0.1:4222", "subject": "orders.>"}),
            lookups: vec![],
            ready_conditions: &["SinkProvided", "Deployed"],
            ce_attributes: json!([{"type": "dev.rivulet.nats.message",
                "source": "/apis/v1/namespaces/team/natssources/from-nats"}]),
            address: None,
        },
        SourceCase {
            kind: "WebhookSource",
            api_version: "sources.rivulet.dev/v1alpha1",
            plural: "webhooksources",
            name: "hook",
            spec: json!({"eventType": "com.github.push",
                "secret": {"name": "github", "key": "token"}}),
            lookups: vec![(
                secret_path("github"),
                secret("github", &[("token", "s3cret")]),
            )],
            ready_conditions: &["SinkProvided", "SecretResolved", "Deployed"],
            ce_attributes: json!([{"type": "com.github.push", "source": "/webhooks/team/hook"}]),
            address: Some("http://rivulet.test/webhooks/team/hook"),
        },
    ]
}

#[tokio::test]
async fn sources_in_the_controller_write_their_sink_attributes_and_conditions() {
    for case in source_cases() {
        let mut cluster = Scripted::new(Role::Controller);
        let object = case.object(broker_ref("orders"));
        let mut answers = vec![(200, broker("orders"))];
        answers.extend(case.lookup_answers());
        answers.push((200, object.clone()));
        let (action, requests) = cluster.apply(case.kind, &object, answers).await;
        let kind = case.kind;
        assert_eq!(action, Action::AwaitChange, "{kind}");
        // The sink, what the source needs, its status: no finalizer on sources.
        assert_eq!(
            requests.len(),
            case.lookups.len() + 2,
            "{kind}: {requests:?}"
        );
        assert_eq!(
            asked(&requests)[0],
            ("GET", broker_path("orders").as_str()),
            "{kind}"
        );
        for ((path, _), request) in case.lookups.iter().zip(&requests[1..]) {
            assert_eq!(
                (request.method.as_str(), &request.path),
                ("GET", path),
                "{kind}"
            );
        }
        let patch = requests.last().unwrap();
        assert_eq!(patch.body["kind"], kind);
        let status = written_status(patch, &case.path());
        assert_eq!(status["observedGeneration"], 4, "{kind}");
        assert_conditions(status, &all_true(case.ready_conditions), kind);
        assert_eq!(
            status["sinkUri"], "http://rivulet.test/team/orders",
            "{kind}"
        );
        assert_eq!(status["ceAttributes"], case.ce_attributes, "{kind}");
        let address = case
            .address
            .map_or(Value::Null, |url| json!({"name": "http", "url": url}));
        assert_eq!(status["address"], address, "{kind}");
    }
}

#[tokio::test]
async fn a_source_whose_sink_broker_does_not_exist_is_not_ready_and_requeues() {
    for case in source_cases() {
        let mut cluster = Scripted::new(Role::Controller);
        let object = case.object(broker_ref("missing"));
        let mut answers = vec![not_found("brokers \"missing\"")];
        answers.extend(case.lookup_answers());
        answers.push((200, object.clone()));
        let (action, requests) = cluster.apply(case.kind, &object, answers).await;
        let kind = case.kind;
        assert_eq!(action, RETRY_SOON, "{kind}");
        assert_eq!(requests[0].path, broker_path("missing"), "{kind}");
        let status = written_status(requests.last().unwrap(), &case.path());
        assert_conditions(
            status,
            &[("Ready", "False"), ("SinkProvided", "False")],
            kind,
        );
        let sink = condition(status, "SinkProvided");
        assert_eq!(sink["reason"], "SinkNotFound", "{kind}");
        assert_eq!(
            sink["message"], "Broker team/missing (eventing.knative.dev/v1) does not exist",
            "{kind}"
        );
        assert_eq!(
            condition(status, "Ready")["reason"],
            "SinkNotFound",
            "{kind}"
        );
        for field in ["sinkUri", "ceAttributes", "address"] {
            assert!(status.get(field).is_none(), "{kind}: {field} in {status}");
        }
        let note = warning_event(&mut cluster, "SinkNotFound", kind, case.name).await;
        assert!(note.contains("team/missing"), "{kind}: {note}");
    }
}

#[tokio::test]
async fn a_source_whose_adapter_cannot_be_prepared_says_why_and_requeues() {
    // Each kind's own failure; `spec` holds the fields changed.
    let failures = vec![
        Failure {
            kind: "PingSource",
            spec: json!({"schedule": "every tuesday"}),
            lookup_answers: vec![],
            condition: "Deployed",
            reason: "InvalidSpec",
            message: "is not a cron schedule",
        },
        Failure {
            kind: "KafkaSource",
            spec: json!({"bootstrapServers": []}),
            lookup_answers: vec![],
            condition: "ConnectionEstablished",
            reason: "InvalidConfiguration",
            message: "bootstrap.servers",
        },
        Failure {
            kind: "RabbitmqSource",
            spec: json!({}),
            lookup_answers: vec![not_found("secrets \"rabbit\"")],
            condition: "SecretResolved",
            reason: "SecretNotFound",
            message: "Secret team/rabbit does not exist",
        },
        Failure {
            kind: "WebhookSource",
            spec: json!({}),
            lookup_answers: vec![(200, secret("github", &[("other", "x")]))],
            condition: "SecretResolved",
            reason: "SecretNotFound",
            message: "has no key \"token\"",
        },
    ];
    let cases = source_cases();
    for Failure {
        kind,
        spec: changes,
        lookup_answers,
        condition: type_,
        reason,
        message,
    } in failures
    {
        let case = cases.iter().find(|c| c.kind == kind).unwrap();
        let mut cluster = Scripted::new(Role::Controller);
        let mut object = case.object(json!({"uri": "http://shipping.team.svc/"}));
        for (field, value) in changes.as_object().unwrap() {
            object["spec"][field] = value.clone();
        }
        let mut answers = lookup_answers;
        answers.push((200, object.clone()));
        let (action, requests) = cluster.apply(kind, &object, answers).await;
        assert_eq!(action, RETRY_SOON, "{kind}");
        let status = written_status(requests.last().unwrap(), &case.path());
        assert_conditions(
            status,
            &[
                ("Ready", "False"),
                ("SinkProvided", "True"),
                (type_, "False"),
            ],
            kind,
        );
        let failing = condition(status, type_);
        assert_eq!(failing["reason"], reason, "{kind}");
        let text = failing["message"].as_str().unwrap();
        assert!(text.contains(message), "{kind}: {text}");
        // The sink resolved all the same, and is reported.
        assert_eq!(status["sinkUri"], "http://shipping.team.svc/", "{kind}");
        warning_event(&mut cluster, reason, kind, case.name).await;
    }
}

#[tokio::test]
async fn a_source_whose_status_cannot_be_written_requeues_with_a_warning_event() {
    for case in source_cases() {
        let mut cluster = Scripted::new(Role::Controller);
        let object = case.object(json!({"uri": "http://shipping.team.svc/"}));
        let mut answers = case.lookup_answers();
        answers.push(internal_error());
        let (action, requests) = cluster.apply(case.kind, &object, answers).await;
        assert_eq!(requests.len(), case.lookups.len() + 1, "{}", case.kind);
        written_status(requests.last().unwrap(), &case.path());
        assert_api_server_error_reported(&mut cluster, action, case.kind, case.name).await;
    }
}

#[tokio::test]
async fn sources_in_the_data_plane_take_their_sink_from_the_status_and_write_none() {
    // A PingSource runs in the controller, a WebhookSource in every data-plane replica:
    // either way the data plane asks the API server nothing.
    let cases = source_cases();
    for kind in ["PingSource", "WebhookSource"] {
        let case = cases.iter().find(|c| c.kind == kind).unwrap();
        let mut cluster = Scripted::new(Role::DataPlane);
        let mut object = case.object(broker_ref("orders"));
        // Without a Secret to read.
        object["spec"].as_object_mut().unwrap().remove("secret");
        object["status"] = json!({"observedGeneration": 4, "sinkUri": "http://shipping.team.svc/"});
        let (action, requests) = cluster.apply(kind, &object, vec![]).await;
        assert_eq!(action, Action::AwaitChange, "{kind}");
        assert!(requests.is_empty(), "{kind}: {requests:?}");

        // A status of an older generation may name a stale sink: wait for the controller.
        object["status"]["observedGeneration"] = json!(3);
        let (action, requests) = cluster.apply(kind, &object, vec![]).await;
        assert_eq!(action, RETRY_SOON, "{kind}");
        assert!(requests.is_empty(), "{kind}: {requests:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Sinks: EventDisplaySink, HttpForwardSink, KafkaSink, NatsSink, RabbitmqSink.

/// Every kind with a reconciler but the core ones (ConfigMap and Secret have no spec that
/// could name a sink): where a sink whose address changed looks for objects naming it.
fn referrer_collections() -> BTreeSet<String> {
    inventory::iter::<rivulet::runtime::Reconciler>()
        .filter_map(|reconciler| rivulet::resources::find_kind_by_name(None, reconciler.kind))
        .filter(|kind| !kind.group.is_empty())
        .map(|kind| format!("/apis/{}/{}/{}", kind.group, kind.version, kind.plural))
        .collect()
}

struct SinkCase {
    kind: &'static str,
    api_version: &'static str,
    plural: &'static str,
    name: &'static str,
    spec: Value,
    /// What building the sink reads, in order: path and answer.
    lookups: Vec<(String, Value)>,
    /// Its conditions after `Ready` when all is well.
    ready_conditions: &'static [&'static str],
}

impl SinkCase {
    fn object(&self) -> Value {
        json!({
            "apiVersion": self.api_version, "kind": self.kind,
            "metadata": {"name": self.name, "namespace": NS, "uid": format!("{}-uid", self.name),
                "generation": 2},
            "spec": self.spec
        })
    }

    fn path(&self) -> String {
        object_path(self.api_version, self.plural, self.name)
    }

    fn url(&self) -> String {
        format!(
            "http://rivulet.test/sinks/team/{}/{}",
            self.plural, self.name
        )
    }

    /// The collections other than its own kind's.
    fn referrer_collections(&self) -> BTreeSet<String> {
        let own = collection(self.api_version, self.plural, None);
        referrer_collections()
            .into_iter()
            .filter(|c| *c != own)
            .collect()
    }
}

fn sink_cases() -> Vec<SinkCase> {
    vec![
        SinkCase {
            kind: "EventDisplaySink",
            api_version: "sinks.rivulet.dev/v1alpha1",
            plural: "eventdisplaysinks",
            name: "show",
            spec: json!({}),
            lookups: vec![],
            ready_conditions: &["Addressable"],
        },
        SinkCase {
            kind: "HttpForwardSink",
            api_version: "sinks.rivulet.dev/v1alpha1",
            plural: "httpforwardsinks",
            name: "forward",
            spec: json!({"uri": "http://shipping.team.svc/",
                "delivery": {"retry": 2, "deadLetterSink": broker_ref("orders")}}),
            lookups: vec![(broker_path("orders"), broker("orders"))],
            ready_conditions: &["DeadLetterSinkResolved", "Addressable"],
        },
        SinkCase {
            kind: "KafkaSink",
            api_version: "eventing.knative.dev/v1alpha1",
            plural: "kafkasinks",
            name: "to-kafka",
            // No Kafka runs here: without numPartitions no topic is created, and the
            // producer connects when it first sends.
            spec: json!({"topic": "orders", "bootstrapServers": ["127.0.0.1:9092"]}),
            lookups: vec![],
            ready_conditions: &["TopicReady", "Addressable"],
        },
        SinkCase {
            kind: "NatsSink",
            api_version: "sinks.rivulet.dev/v1alpha1",
            plural: "natssinks",
            name: "to-nats",
            spec: json!({"url": "nats://127.0.0.1:4222", "subject": "orders.created"}),
            lookups: vec![],
            ready_conditions: &["Addressable"],
        },
        SinkCase {
            kind: "RabbitmqSink",
            api_version: "sinks.rivulet.dev/v1alpha1",
            plural: "rabbitmqsinks",
            name: "to-rabbit",
            spec: json!({"connectionSecret": {"name": "rabbit"}, "exchange": "orders"}),
            lookups: vec![(
                secret_path("rabbit"),
                secret("rabbit", &[("uri", &rabbitmq_support::rabbitmq_uri())]),
            )],
            ready_conditions: &["SecretResolved", "Addressable"],
        },
    ]
}

/// Answers a sink's requests by path: its lookups, its status, and empty lists of referrers.
fn sink_api(case: &SinkCase, status_answer: (u16, Value)) -> impl FnMut(&Seen) -> (u16, Value) {
    let lookups = case.lookups.clone();
    let referrers = case.referrer_collections();
    let status_path = format!("{}/status", case.path());
    move |request| match request.method.as_str() {
        "PATCH" if request.path == status_path => status_answer.clone(),
        "GET" if referrers.contains(&request.path) => (200, empty_list("v1", "")),
        "GET" => lookups
            .iter()
            .find(|(path, _)| *path == request.path)
            .map(|(_, answer)| (200, answer.clone()))
            .unwrap_or_else(|| panic!("unexpected request {request:?}")),
        _ => panic!("unexpected request {request:?}"),
    }
}

#[tokio::test]
async fn sinks_in_the_controller_publish_their_address_and_make_referrers_look_again() {
    for case in sink_cases() {
        let mut cluster = Scripted::new(Role::Controller);
        let object = case.object();
        let (action, requests) = cluster
            .apply_by(case.kind, &object, sink_api(&case, (200, object.clone())))
            .await;
        let kind = case.kind;
        assert_eq!(action, Action::AwaitChange, "{kind}");
        let lookups = case.lookups.len();
        for ((path, _), request) in case.lookups.iter().zip(&requests) {
            assert_eq!(
                (request.method.as_str(), &request.path),
                ("GET", path),
                "{kind}"
            );
        }
        let status = written_status(&requests[lookups], &case.path());
        assert_eq!(status["observedGeneration"], 2, "{kind}");
        assert_conditions(status, &all_true(case.ready_conditions), kind);
        assert_eq!(
            status["address"],
            json!({"name": "http", "url": case.url()}),
            "{kind}"
        );
        // The address is new: everything that may name the sink by ref is looked through,
        // once per kind, across namespaces.
        let listed: Vec<&str> = requests[lookups + 1..]
            .iter()
            .map(|r| {
                assert_eq!(r.method, "GET", "{kind}: {r:?}");
                r.path.as_str()
            })
            .collect();
        let listed_set: BTreeSet<String> = listed.iter().map(|p| p.to_string()).collect();
        assert_eq!(listed.len(), listed_set.len(), "{kind}: {listed:?}");
        assert_eq!(listed_set, case.referrer_collections(), "{kind}");
    }
}

#[tokio::test]
async fn a_trigger_naming_a_new_sink_is_reconciled_with_the_sink_address() {
    let mut cluster = Scripted::new(Role::Controller);
    ready_broker(&mut cluster).await;
    let case = &sink_cases()[0];
    let sink = case.object();
    let mut sink_with_address = sink.clone();
    sink_with_address["status"] = json!({"address": {"url": case.url()}});
    let trigger = json!({
        "apiVersion": BROKER_API, "kind": "Trigger",
        "metadata": {"name": "show-all", "namespace": NS, "uid": "t-1", "generation": 1,
            "finalizers": ["triggers.eventing.knative.dev"]},
        "spec": {"broker": "orders", "subscriber": {"ref": {
            "apiVersion": case.api_version, "kind": case.kind, "name": case.name}}}
    });
    let triggers = collection(BROKER_API, "triggers", None);
    let trigger_status = format!("{}/status", object_path(BROKER_API, "triggers", "show-all"));
    let mut sink_answers = sink_api(case, (200, sink.clone()));
    let (action, requests) = cluster
        .apply_by(case.kind, &sink, |request| {
            if request.path == triggers {
                (200, list_of(BROKER_API, "Trigger", vec![trigger.clone()]))
            } else if request.method == "GET" && request.path == case.path() {
                // The trigger resolves its subscriber from the status just written.
                (200, sink_with_address.clone())
            } else if request.path == trigger_status {
                (200, trigger.clone())
            } else {
                sink_answers(request)
            }
        })
        .await;
    assert_eq!(action, Action::AwaitChange);
    let trigger_patch = requests
        .iter()
        .find(|r| r.path == trigger_status)
        .expect("the trigger's status is written");
    let status = written_status(
        trigger_patch,
        &object_path(BROKER_API, "triggers", "show-all"),
    );
    assert_eq!(status["subscriberUri"], case.url());
    assert_conditions(
        status,
        &all_true(&["BrokerReady", "SubscriberResolved", "DependencyReady"]),
        "Trigger",
    );
}

#[tokio::test]
async fn a_sink_that_cannot_be_built_says_why_and_requeues() {
    let failures = vec![
        Failure {
            kind: "HttpForwardSink",
            spec: json!({"uri": "http://shipping.team.svc/",
                "delivery": {"deadLetterSink": broker_ref("missing")}}),
            lookup_answers: vec![not_found("brokers \"missing\"")],
            condition: "DeadLetterSinkResolved",
            reason: "Unresolved",
            message: "Broker team/missing (eventing.knative.dev/v1) does not exist",
        },
        Failure {
            kind: "KafkaSink",
            spec: json!({"topic": "orders", "bootstrapServers": []}),
            lookup_answers: vec![],
            condition: "TopicReady",
            reason: "InvalidConfiguration",
            message: "bootstrap.servers",
        },
        Failure {
            kind: "RabbitmqSink",
            spec: json!({"connectionSecret": {"name": "rabbit"}, "exchange": "orders"}),
            lookup_answers: vec![not_found("secrets \"rabbit\"")],
            condition: "SecretResolved",
            reason: "SecretNotFound",
            message: "Secret team/rabbit does not exist",
        },
    ];
    let cases = sink_cases();
    for Failure {
        kind,
        spec,
        lookup_answers,
        condition: type_,
        reason,
        message,
    } in failures
    {
        let case = cases.iter().find(|c| c.kind == kind).unwrap();
        let mut cluster = Scripted::new(Role::Controller);
        let mut object = case.object();
        object["spec"] = spec;
        let mut answers = lookup_answers;
        answers.push((200, object.clone()));
        let (action, requests) = cluster.apply(kind, &object, answers).await;
        assert_eq!(action, RETRY_SOON, "{kind}");
        // It had no address and has none: nobody is asked to look again.
        let status = written_status(requests.last().unwrap(), &case.path());
        assert_conditions(status, &[("Ready", "False"), (type_, "False")], kind);
        let failing = condition(status, type_);
        assert_eq!(failing["reason"], reason, "{kind}");
        let text = failing["message"].as_str().unwrap();
        assert!(text.contains(message), "{kind}: {text}");
        assert!(status.get("address").is_none(), "{kind}: {status}");
        warning_event(&mut cluster, reason, kind, case.name).await;
    }
}

#[tokio::test]
async fn a_sink_that_loses_its_address_makes_referrers_look_again() {
    let mut cluster = Scripted::new(Role::Controller);
    let case = sink_cases().remove(1);
    assert_eq!(case.kind, "HttpForwardSink");
    let mut object = case.object();
    object["spec"]["delivery"]["deadLetterSink"] = broker_ref("gone");
    object["status"] = json!({"observedGeneration": 1, "address": {"url": case.url()}});
    let mut answers = sink_api(&case, (200, object.clone()));
    let gone = broker_path("gone");
    let (action, requests) = cluster
        .apply_by(case.kind, &object, |request| {
            if request.path == gone {
                not_found("brokers \"gone\"")
            } else {
                answers(request)
            }
        })
        .await;
    assert_eq!(action, RETRY_SOON);
    assert_eq!(requests[0].path, gone);
    let status = written_status(&requests[1], &case.path());
    assert!(status.get("address").is_none(), "{status}");
    let listed: BTreeSet<String> = requests[2..].iter().map(|r| r.path.clone()).collect();
    assert_eq!(listed, case.referrer_collections());
    warning_event(&mut cluster, "Unresolved", case.kind, case.name).await;
}

#[tokio::test]
async fn kafka_sink_topic_creation_needs_a_kafka_server() {
    // With numPartitions the controller creates the topic; with no Kafka to ask it reports
    // why after the admin request's 10 s timeout, and tries again later.
    let mut cluster = Scripted::new(Role::Controller);
    let case = sink_cases().remove(2);
    assert_eq!(case.kind, "KafkaSink");
    let mut object = case.object();
    object["spec"] = json!({"topic": "orders", "numPartitions": 3,
        "bootstrapServers": [format!("127.0.0.1:{}", support::free_port())]});
    let (action, requests) = cluster
        .apply(case.kind, &object, vec![(200, object.clone())])
        .await;
    assert_eq!(action, RETRY_SOON);
    let status = written_status(&requests[0], &case.path());
    assert_conditions(
        status,
        &[("Ready", "False"), ("TopicReady", "False")],
        "KafkaSink",
    );
    assert_eq!(condition(status, "TopicReady")["reason"], "TopicNotCreated");
    warning_event(&mut cluster, "TopicNotCreated", case.kind, case.name).await;
}

#[tokio::test]
async fn a_sink_whose_status_cannot_be_written_requeues_with_a_warning_event() {
    for case in sink_cases() {
        let mut cluster = Scripted::new(Role::Controller);
        let (action, requests) = cluster
            .apply_by(case.kind, &case.object(), sink_api(&case, internal_error()))
            .await;
        // The failed write ends the reconcile: no referrers are looked for.
        assert_eq!(requests.len(), case.lookups.len() + 1, "{}", case.kind);
        written_status(requests.last().unwrap(), &case.path());
        assert_api_server_error_reported(&mut cluster, action, case.kind, case.name).await;
    }
}

#[tokio::test]
async fn sinks_in_the_data_plane_write_no_status() {
    for case in sink_cases() {
        if !case.lookups.is_empty() {
            // What building reads is shown in the controller; here: no status.
            continue;
        }
        let mut cluster = Scripted::new(Role::DataPlane);
        let kind = case.kind;
        // As the controller wrote it: nothing to ask.
        let mut object = case.object();
        object["status"] = json!({"observedGeneration": 2, "address": {"url": case.url()}});
        let (action, requests) = cluster.apply(kind, &object, vec![]).await;
        assert_eq!(action, Action::AwaitChange, "{kind}");
        assert!(requests.is_empty(), "{kind}: {requests:?}");

        // Seen before the controller wrote its status: referrers are looked through, but
        // still no status is written.
        let (action, requests) = cluster
            .apply_by(kind, &case.object(), sink_api(&case, (200, Value::Null)))
            .await;
        assert_eq!(action, Action::AwaitChange, "{kind}");
        assert!(
            requests.iter().all(|r| r.method == "GET"),
            "{kind}: {requests:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// EventType.

fn event_type() -> Value {
    json!({
        "apiVersion": "eventing.knative.dev/v1beta3", "kind": "EventType",
        "metadata": {"name": "order-created", "namespace": NS, "uid": "et-1", "generation": 2},
        "spec": {
            "reference": {"apiVersion": BROKER_API, "kind": "Broker", "name": "orders"},
            "attributes": [{"name": "type", "required": true, "value": "order.created"}]
        }
    })
}

fn event_type_path() -> String {
    object_path(
        "eventing.knative.dev/v1beta3",
        "eventtypes",
        "order-created",
    )
}

/// The EventType as stored, with what discovery wrote in its status.
fn stored_event_type() -> Value {
    let mut stored = event_type();
    stored["status"] = json!({"schemaVersion": 1, "schema": {"type": "object"}});
    stored
}

/// What reconciling an EventType reads and writes, answered: its stored status, the status
/// write, the triggers of its namespace.
fn event_type_answers() -> Vec<(u16, Value)> {
    vec![
        (200, stored_event_type()),
        (200, event_type()),
        no_triggers(),
    ]
}

#[tokio::test]
async fn an_event_type_of_a_ready_broker_is_ready_and_keeps_what_discovery_wrote() {
    let mut cluster = Scripted::new(Role::Controller);
    ready_broker(&mut cluster).await;
    let (action, requests) = cluster
        .apply("EventType", &event_type(), event_type_answers())
        .await;
    assert_eq!(action, Action::AwaitChange);
    assert_eq!(requests.len(), 3, "{requests:?}");
    // The status is read first, so the inferred schema is written back unchanged.
    assert_eq!(asked(&requests)[0], ("GET", event_type_path().as_str()));
    let status = written_status(&requests[1], &event_type_path());
    assert_eq!(status["observedGeneration"], 2);
    assert_conditions(status, &all_true(&["BrokerReady"]), "EventType");
    assert_eq!(status["schema"], json!({"type": "object"}));
    assert_eq!(status["schemaVersion"], 1);
    // Triggers filtering on its type are looked up to be reconciled again.
    assert_eq!(
        asked(&requests)[2],
        ("GET", triggers_in_namespace().as_str())
    );
}

#[tokio::test]
async fn an_event_type_without_its_broker_is_not_ready_and_requeues() {
    let mut cluster = Scripted::new(Role::Controller);
    let (action, requests) = cluster
        .apply("EventType", &event_type(), event_type_answers())
        .await;
    assert_eq!(action, Action::Requeue(Duration::from_secs(10)));
    let status = written_status(&requests[1], &event_type_path());
    assert_conditions(
        status,
        &[("Ready", "False"), ("BrokerReady", "False")],
        "EventType",
    );
    let broker_ready = condition(status, "BrokerReady");
    assert_eq!(broker_ready["reason"], "BrokerDoesNotExist");
    assert_eq!(
        broker_ready["message"],
        "broker team/orders does not exist or is not ready"
    );
    let note = warning_event(
        &mut cluster,
        "BrokerDoesNotExist",
        "EventType",
        "order-created",
    )
    .await;
    assert!(note.contains("team/orders"), "{note}");
}

#[tokio::test]
async fn an_event_type_whose_status_cannot_be_written_requeues_with_a_warning_event() {
    let mut cluster = Scripted::new(Role::Controller);
    ready_broker(&mut cluster).await;
    let (action, requests) = cluster
        .apply(
            "EventType",
            &event_type(),
            vec![(200, stored_event_type()), internal_error()],
        )
        .await;
    assert_eq!(requests.len(), 2, "{requests:?}");
    written_status(&requests[1], &event_type_path());
    assert_api_server_error_reported(&mut cluster, action, "EventType", "order-created").await;
}

#[tokio::test]
async fn an_event_type_deleted_meanwhile_gets_no_status() {
    let mut cluster = Scripted::new(Role::Controller);
    let (action, requests) = cluster
        .apply(
            "EventType",
            &event_type(),
            vec![not_found("eventtypes \"order-created\"")],
        )
        .await;
    assert_eq!(action, Action::AwaitChange);
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].method, "GET");
}

#[tokio::test]
async fn an_event_type_in_the_data_plane_writes_no_status() {
    let mut cluster = Scripted::new(Role::DataPlane);
    let (_, requests) = cluster
        .apply(
            "EventType",
            &event_type(),
            vec![(200, stored_event_type()), no_triggers()],
        )
        .await;
    let asked = asked(&requests);
    assert_eq!(
        asked,
        [
            ("GET", event_type_path().as_str()),
            ("GET", triggers_in_namespace().as_str())
        ]
    );
}

// ---------------------------------------------------------------------------------------
// ConfigMap, Secret and RabbitmqBrokerConfig: a change reconciles the brokers naming them.

const ALL_BROKERS: &str = "/apis/eventing.knative.dev/v1/brokers";
/// A channel template picking the memory channel: the broker's status shows it was read.
const IN_MEMORY: &str = "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\n";

fn config_map(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": NS},
        "data": {"channel-template-spec": IN_MEMORY}})
}

/// The brokers in the cluster: `orders` names `kind` `config`; `audit` names one of the same
/// name in another namespace, `billing` another of the same kind.
fn brokers_naming(kind: &str, config: &str) -> (Value, Value) {
    let orders = broker_with_config("orders", "v1", kind, config);
    let mut audit = broker_with_config("audit", "v1", kind, config);
    audit["metadata"]["namespace"] = json!("elsewhere");
    let billing = broker_with_config("billing", "v1", kind, "billing-config");
    let list = list_of(BROKER_API, "Broker", vec![audit, billing, orders.clone()]);
    (orders, list)
}

#[tokio::test]
async fn a_changed_config_map_or_secret_reconciles_the_brokers_naming_it() {
    let configs = [
        ("ConfigMap", config_map("broker-config")),
        (
            "Secret",
            secret("broker-config", &[("channel-template-spec", IN_MEMORY)]),
        ),
    ];
    for (kind, config) in configs {
        let mut cluster = Scripted::new(Role::Controller);
        let (orders, brokers) = brokers_naming(kind, "broker-config");
        let plural = format!("{}s", kind.to_ascii_lowercase());
        let (action, requests) = cluster
            .apply(
                kind,
                &config,
                vec![
                    (200, brokers),
                    (200, config.clone()),
                    (200, orders.clone()),
                    no_triggers(),
                ],
            )
            .await;
        assert_eq!(action, Action::AwaitChange, "{kind}");
        let asked = asked(&requests);
        // Only `orders` is reconciled: it reads the config, writes its status, looks up its
        // triggers.
        assert_eq!(
            asked,
            [
                ("GET", ALL_BROKERS),
                ("GET", object_path("v1", &plural, "broker-config").as_str()),
                (
                    "PATCH",
                    format!("{}/status", broker_path("orders")).as_str()
                ),
                ("GET", triggers_in_namespace().as_str()),
            ],
            "{kind}"
        );
        let status = written_status(&requests[2], &broker_path("orders"));
        assert_conditions(
            status,
            &all_true(&["IngressReady", "Addressable", "EventPoliciesReady"]),
            kind,
        );
        assert_eq!(
            condition(status, "IngressReady")["message"],
            "memory channel",
            "{kind}"
        );
        assert_eq!(status["address"]["url"], "http://rivulet.test/team/orders");
        assert_eq!(
            cluster.ctx.brokers.get(NS, "orders").map(|b| b.backend),
            Some("memory")
        );
    }
}

#[tokio::test]
async fn a_deleted_config_map_leaves_the_brokers_naming_it_not_ready() {
    let mut cluster = Scripted::new(Role::Controller);
    let (orders, brokers) = brokers_naming("ConfigMap", "broker-config");
    let (action, requests) = cluster
        .handle(
            &deleted("ConfigMap", &config_map("broker-config")),
            vec![
                (200, brokers),
                not_found("configmaps \"broker-config\""),
                (200, orders.clone()),
                no_triggers(),
            ],
        )
        .await;
    assert_eq!(action, Action::AwaitChange);
    assert_eq!(requests[0].path, ALL_BROKERS);
    let status = written_status(&requests[2], &broker_path("orders"));
    assert_conditions(
        status,
        &[
            ("Ready", "False"),
            ("IngressReady", "False"),
            ("EventPoliciesReady", "True"),
        ],
        "Broker",
    );
    let ingress = condition(status, "IngressReady");
    assert_eq!(ingress["reason"], "BackendConfigInvalid");
    assert_eq!(
        ingress["message"],
        "spec.config: ConfigMap team/broker-config does not exist"
    );
    assert!(cluster.ctx.brokers.get(NS, "orders").is_none());
    warning_event(&mut cluster, "BackendConfigInvalid", "Broker", "orders").await;
}

#[tokio::test]
async fn a_config_change_whose_brokers_cannot_be_listed_requeues_with_a_warning_event() {
    let mut cluster = Scripted::new(Role::Controller);
    let (action, requests) = cluster
        .apply(
            "ConfigMap",
            &config_map("broker-config"),
            vec![internal_error()],
        )
        .await;
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, ALL_BROKERS);
    assert_api_server_error_reported(&mut cluster, action, "ConfigMap", "broker-config").await;
}

#[tokio::test]
async fn a_failed_broker_status_on_a_config_change_is_reported_on_the_broker() {
    let mut cluster = Scripted::new(Role::Controller);
    let (_, brokers) = brokers_naming("ConfigMap", "broker-config");
    let (action, requests) = cluster
        .apply(
            "ConfigMap",
            &config_map("broker-config"),
            vec![
                (200, brokers),
                (200, config_map("broker-config")),
                internal_error(),
            ],
        )
        .await;
    assert_eq!(requests.len(), 3, "{requests:?}");
    written_status(&requests[2], &broker_path("orders"));
    // The ConfigMap is done with; the broker is requeued and the Event is about it.
    assert_eq!(action, Action::AwaitChange);
    let note = warning_event(&mut cluster, "ApiServerError", "Broker", "orders").await;
    assert!(note.contains("etcd is having a bad day"), "{note}");
}

#[tokio::test]
async fn a_changed_rabbitmq_broker_config_reconciles_its_broker_on_rabbitmq() {
    let mut cluster = Scripted::new(Role::Controller);
    let name = rabbitmq_support::unique("recon");
    let mut broker_object = broker_with_config(
        &name,
        "eventing.knative.dev/v1alpha1",
        "RabbitmqBrokerConfig",
        "rabbit-config",
    );
    broker_object["metadata"]["annotations"] =
        json!({"eventing.knative.dev/broker.class": "RabbitMQBroker"});
    let config = json!({
        "apiVersion": "eventing.knative.dev/v1alpha1", "kind": "RabbitmqBrokerConfig",
        "metadata": {"name": "rabbit-config", "namespace": NS, "uid": "rbc-1", "generation": 1},
        "spec": {"rabbitmqClusterReference": {"connectionSecret": {"name": "rabbit"}},
            "queueType": "classic"}
    });
    let (action, requests) = cluster
        .apply(
            "RabbitmqBrokerConfig",
            &config,
            vec![
                (
                    200,
                    list_of(BROKER_API, "Broker", vec![broker_object.clone()]),
                ),
                (200, config.clone()),
                (
                    200,
                    secret("rabbit", &[("uri", &rabbitmq_support::rabbitmq_uri())]),
                ),
                (200, broker_object.clone()),
                no_triggers(),
            ],
        )
        .await;
    assert_eq!(action, Action::AwaitChange);
    let asked = asked(&requests);
    assert_eq!(
        asked,
        [
            ("GET", ALL_BROKERS),
            (
                "GET",
                object_path(
                    "eventing.knative.dev/v1alpha1",
                    "rabbitmqbrokerconfigs",
                    "rabbit-config"
                )
                .as_str()
            ),
            ("GET", secret_path("rabbit").as_str()),
            ("PATCH", format!("{}/status", broker_path(&name)).as_str()),
            ("GET", triggers_in_namespace().as_str()),
        ]
    );
    let status = written_status(&requests[3], &broker_path(&name));
    assert_conditions(
        status,
        &all_true(&["IngressReady", "Addressable", "EventPoliciesReady"]),
        "Broker",
    );
    assert_eq!(
        condition(status, "IngressReady")["message"],
        "rabbitmq channel"
    );
    let exchange_name = rivulet_channels::rabbitmq::exchange_name(NS, &name);
    let connection = rabbitmq_support::connect().await;
    assert!(
        rabbitmq_support::exchange_exists(&connection, &exchange_name).await,
        "the broker's exchange {exchange_name} was declared"
    );

    // The broker goes: its exchange with it.
    let (_, requests) = cluster
        .handle(&deleted("Broker", &broker_object), vec![no_triggers()])
        .await;
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(!rabbitmq_support::exchange_exists(&connection, &exchange_name).await);
}
