//! Kubernetes layout on real backends: one controller provisions a broker and a trigger, two
//! data-plane replicas serve them and share the trigger's work through the backend (competing
//! consumers on a RabbitMQ queue, one JetStream pull consumer), every event delivered once.
//! Each process has its own scripted API server; RabbitMQ and NATS are real.

use rivulet_testkit as support;
use rivulet_testkit::rabbitmq as rabbitmq_support;

use std::sync::Arc;
use std::time::Duration;

use rivulet::runtime::{Context, Role};
use serde_json::{Value, json};
use support::kube_api::{Reply, answer, applied, context_in, empty_list, serve};
use tower::ServiceExt;

const NS: &str = "team";

struct Backend {
    broker: Value,
    /// Path and object of the broker's `spec.config`.
    config: (String, Value),
}

fn rabbitmq(broker: &str) -> Backend {
    let secret = format!("{broker}-config");
    let mut object = rabbitmq_support::rabbitmq_broker(NS, broker, "Secret", &secret);
    object["metadata"]["uid"] = json!(format!("uid-{broker}"));
    object["metadata"]["generation"] = json!(1);
    let uri = rabbitmq_support::rabbitmq_uri();
    Backend {
        broker: object,
        config: (
            format!("/api/v1/namespaces/{NS}/secrets/{secret}"),
            json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": secret, "namespace": NS},
                "data": {"uri": base64_encode(&uri)}}),
        ),
    }
}

fn nats(broker: &str) -> Backend {
    let config = format!("{broker}-config");
    Backend {
        broker: json!({
            "apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
            "metadata": {"name": broker, "namespace": NS, "uid": format!("uid-{broker}"),
                "generation": 1,
                "annotations": {"eventing.knative.dev/broker.class": "NatsJetStreamBroker"}},
            "spec": {"config": {"apiVersion": "v1", "kind": "ConfigMap", "name": config}}
        }),
        config: (
            format!("/api/v1/namespaces/{NS}/configmaps/{config}"),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": config, "namespace": NS},
                "data": {"url": std::env::var("RIVULET_NATS_URL")
                    .unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
                    "storage": "memory"}}),
        ),
    }
}

fn base64_encode(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A process in `role` whose API server answers with the backend's config, empty lists, and
/// echoes of what is patched.
fn process(role: Role, backend: &Backend) -> (Arc<Context>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, server) = context_in(role, dir.path());
    let (config_path, config) = backend.config.clone();
    serve(server, move |request| {
        if request.path == config_path {
            Reply::Now(answer(200, &config))
        } else if request.method == "GET" && request.path.ends_with("/triggers") {
            Reply::Now(answer(
                200,
                &empty_list("eventing.knative.dev/v1", "Trigger"),
            ))
        } else if request.method == "GET" && request.path.ends_with("/eventtypes") {
            Reply::Now(answer(
                200,
                &empty_list("eventing.knative.dev/v1beta3", "EventType"),
            ))
        } else if request.method == "PATCH" {
            Reply::Now(answer(200, &request.body))
        } else {
            panic!("unexpected request {request:?}")
        }
    });
    (ctx, dir)
}

/// Deliveries a process made, from its metrics.
fn delivered(ctx: &Context) -> u64 {
    ctx.dispatch
        .metrics
        .render()
        .lines()
        .filter(|line| {
            line.starts_with("rivulet_trigger_deliveries_total")
                && line.contains("outcome=\"delivered\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn replicas_share_a_trigger(backend: Backend) {
    let broker_name = backend.broker["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let subscriber = support::Recorder::start().await;
    // Slow answers and one delivery in flight per replica, so both replicas get a turn.
    subscriber.set_delay(Duration::from_millis(20));
    let trigger = json!({
        "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
        "metadata": {"name": "ship", "namespace": NS, "uid": "t-1", "generation": 1,
            "annotations": {"rivulet.dev/parallelism": "1"}},
        "spec": {"broker": broker_name, "subscriber": {"uri": subscriber.url}},
        "status": {"observedGeneration": 1, "subscriberUri": subscriber.url}
    });

    // The controller provisions the exchange/stream and the queue/consumer.
    let (controller, _controller_dir) = process(Role::Controller, &backend);
    controller
        .handle_change(&applied("Broker", &backend.broker))
        .await;
    controller
        .handle_change(&applied("Trigger", &trigger))
        .await;
    assert!(controller.brokers.get(NS, &broker_name).is_some());

    let (first, _first_dir) = process(Role::DataPlane, &backend);
    let (second, _second_dir) = process(Role::DataPlane, &backend);
    for replica in [&first, &second] {
        replica
            .handle_change(&applied("Broker", &backend.broker))
            .await;
        replica.handle_change(&applied("Trigger", &trigger)).await;
    }

    const EVENTS: usize = 40;
    // Half through each replica's ingress.
    for i in 0..EVENTS {
        let replica = if i % 2 == 0 { &first } else { &second };
        let response = replica
            .ingress
            .clone()
            .router()
            .oneshot(
                http::Request::post(format!("/{NS}/{broker_name}"))
                    .header("ce-specversion", "1.0")
                    .header("ce-id", format!("e-{i}"))
                    .header("ce-source", "/orders")
                    .header("ce-type", "order.created")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "event {i}");
    }
    for i in 0..EVENTS {
        subscriber.wait_for_id(&format!("e-{i}")).await;
    }
    let mut ids: Vec<String> = subscriber.events().into_iter().map(|e| e.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), subscriber.count(), "no event arrived twice");
    // The subscriber records an event before its answer reaches the replica, so the last
    // deliveries may not be counted yet when the last event arrived.
    let (by_first, by_second) = support::wait_for(
        "both replicas to count their deliveries",
        Duration::from_secs(10),
        || {
            let counts = (delivered(&first), delivered(&second));
            async move { (counts.0 + counts.1 >= EVENTS as u64).then_some(counts) }
        },
    )
    .await;
    assert_eq!(
        by_first + by_second,
        EVENTS as u64,
        "each event delivered once ({by_first} + {by_second})"
    );
    assert!(
        by_first > 0 && by_second > 0,
        "both replicas took part: {by_first} and {by_second}"
    );
    assert_eq!(
        delivered(&controller),
        0,
        "the controller carries no events"
    );

    // Deleting through the controller removes what it provisioned.
    for replica in [&first, &second] {
        replica.stop_all().await;
    }
    let mut deleting = backend.broker.clone();
    deleting["metadata"]["deletionTimestamp"] = json!("2026-11-26T12:00:00Z");
    deleting["metadata"]["finalizers"] = json!(["brokers.eventing.knative.dev"]);
    controller
        .handle_change(&applied("Broker", &deleting))
        .await;
    assert!(controller.brokers.get(NS, &broker_name).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_data_plane_replicas_share_a_trigger_queue() {
    let broker = rabbitmq_support::unique("replicas");
    replicas_share_a_trigger(rabbitmq(&broker)).await;
    // The controller's finalizer removed the exchange.
    rabbitmq_support::assert_exchange_removed(NS, &broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_data_plane_replicas_share_a_trigger_consumer() {
    let broker = rabbitmq_support::unique("replicas");
    replicas_share_a_trigger(nats(&broker)).await;
}
