//! `RabbitMQBroker` end to end, on a real RabbitMQ: delivery through the broker's exchange and
//! the triggers' queues, exact filters pushed down into bindings, Knative's
//! `RabbitmqBrokerConfig`, cleanup of exchange and queues, ordered delivery, and `kill -9` of
//! Rivulet mid-flow losing nothing.

use rivulet_testkit as support;
use rivulet_testkit::rabbitmq as rabbitmq_support;

use std::time::Duration;

use rabbitmq_support::{
    connect, delete_broker, queue_depth, queue_exists, rabbitmq_broker, rabbitmq_uri, unique,
    uri_secret,
};
use rivulet_channels::rabbitmq::lapin::options::QueueDeclareOptions;
use rivulet_channels::rabbitmq::lapin::types::{AMQPValue, FieldTable};
use rivulet_channels::rabbitmq::queue_name;
use serde_json::json;
use support::{ChildServer, Recorder, TestEvent, TestServer, apply, wait_for, with_annotation};

const NS: &str = "default";

/// Applies a Secret and a `RabbitMQBroker` naming it, and waits until the broker is ready.
async fn rabbitmq_broker_ready(base: &str, broker: &str) {
    let secret = format!("{broker}-rabbitmq");
    apply(base, &uri_secret(NS, &secret, &rabbitmq_uri())).await;
    apply(base, &rabbitmq_broker(NS, broker, "Secret", &secret)).await;
    support::wait_ready(base, "Broker", NS, broker).await;
}

/// A server with a ready RabbitMQ broker named after `prefix`, and a subscriber; returns the
/// broker's name too.
async fn server_with_broker(prefix: &str) -> (TestServer, Recorder, String) {
    let (server, recorder) = TestServer::start_with_recorder().await;
    let broker = unique(prefix);
    rabbitmq_broker_ready(&server.api, &broker).await;
    (server, recorder, broker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_triggers_and_exact_filters_run_in_rabbitmq() {
    let (server, recorder, broker) = server_with_broker("deliver").await;
    let mut only_a = support::trigger(NS, "only-a", &broker, &format!("{}a", recorder.url));
    only_a["spec"]["filter"] = json!({"attributes": {"type": "test.a"}});
    server.create_trigger(&only_a).await;
    server
        .create_trigger(&support::trigger(
            NS,
            "everything",
            &broker,
            &format!("{}all", recorder.url),
        ))
        .await;

    for n in 0..10 {
        let kind = if n % 2 == 0 { "test.a" } else { "test.b" };
        server
            .send(
                NS,
                &broker,
                &TestEvent::new(&format!("e-{n}"), kind)
                    .data("application/json", format!("{{\"n\":{n}}}")),
            )
            .await;
    }
    wait_for("10 + 5 deliveries", support::WAIT, || {
        let count = recorder.count();
        async move { (count >= 15).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = recorder.events();
    assert_eq!(events.len(), 15, "no duplicates, nothing extra");
    let a_events: Vec<_> = events.iter().filter(|e| e.ty == "test.a").collect();
    assert_eq!(a_events.len(), 10, "5 to each trigger");
    let event = events
        .iter()
        .find(|e| e.id == "e-4")
        .expect("e-4 delivered");
    assert_eq!(event.data.as_deref(), Some(&b"{\"n\":4}"[..]));
    assert_eq!(event.datacontenttype.as_deref(), Some("application/json"));

    // The type filter was a binding: the dispatcher of `only-a` never saw a `test.b` event.
    let labels = [("namespace", NS), ("trigger", "only-a")];
    assert_eq!(
        server
            .metric("rivulet_trigger_filter_rejected_events_total", &labels)
            .await,
        0.0,
        "non-matching events reached the dispatcher"
    );
    assert_eq!(
        server
            .metric("rivulet_trigger_filter_matched_events_total", &labels)
            .await,
        5.0
    );

    // Deleting a trigger removes its queue; deleting the broker removes the rest.
    let connection = connect().await;
    let only_a_queue = queue_name(NS, &broker, "trigger-only-a");
    let everything_queue = queue_name(NS, &broker, "trigger-everything");
    assert!(queue_exists(&connection, &only_a_queue).await);
    server.delete("Trigger", NS, "only-a").await;
    wait_for("the trigger's queue to go", support::WAIT, || {
        let connection = &connection;
        let queue = only_a_queue.clone();
        async move { (!queue_exists(connection, &queue).await).then_some(()) }
    })
    .await;
    delete_broker(&server.api, NS, &broker).await;
    wait_for("the broker's queues to go", support::WAIT, || {
        let connection = &connection;
        let queue = everything_queue.clone();
        async move { (!queue_exists(connection, &queue).await).then_some(()) }
    })
    .await;
    server.delete("Trigger", NS, "everything").await;
    rabbitmq_support::assert_exchange_removed(NS, &broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_broker_config_selects_quorum_queues() {
    let (server, recorder) = TestServer::start_with_recorder().await;
    let broker = unique("quorum");
    let secret = format!("{broker}-credentials");
    // Knative's connection Secret: host, port and credentials in separate keys.
    let uri: url::Url = rabbitmq_uri().parse().expect("the test URI parses");
    let secret_object = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": secret, "namespace": NS},
        "stringData": {
            "uri": format!("http://{}:15672", uri.host_str().unwrap_or("127.0.0.1")),
            "port": uri.port().unwrap_or(5672).to_string(),
            "username": uri.username(),
            "password": uri.password().unwrap_or("guest"),
        }
    });
    apply(&server.api, &secret_object).await;
    let config = json!({
        "apiVersion": "eventing.knative.dev/v1alpha1",
        "kind": "RabbitmqBrokerConfig",
        "metadata": {"name": broker, "namespace": NS},
        "spec": {
            "rabbitmqClusterReference": {"connectionSecret": {"name": secret}},
            "queueType": "quorum"
        }
    });
    let response = support::api_request(
        reqwest::Method::PUT,
        format!(
            "{}/apis/eventing.knative.dev/v1alpha1/namespaces/{NS}/rabbitmqbrokerconfigs/{broker}",
            server.api
        ),
    )
    .json(&config)
    .send()
    .await
    .expect("PUT reaches the server");
    assert!(response.status().is_success(), "{}", response.status());
    apply(
        &server.api,
        &rabbitmq_broker(NS, &broker, "RabbitmqBrokerConfig", &broker),
    )
    .await;
    support::wait_ready(&server.api, "Broker", NS, &broker).await;
    server
        .create_trigger(&support::trigger(NS, "q", &broker, &recorder.url))
        .await;
    server
        .send(NS, &broker, &TestEvent::new("q-1", "test.q"))
        .await;
    recorder.wait_for_id("q-1").await;

    // Declaring the queue as classic contradicts it: RabbitMQ says it is a quorum queue.
    let connection = connect().await;
    let channel = connection.create_channel().await.unwrap();
    let mut classic = FieldTable::default();
    classic.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
    let declared = channel
        .queue_declare(
            queue_name(NS, &broker, "trigger-q").as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            classic,
        )
        .await;
    let error = declared.expect_err("the trigger's queue is not a classic queue");
    assert!(error.to_string().contains("quorum"), "{error}");
    delete_broker(&server.api, NS, &broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_trigger_gets_events_in_order() {
    let (server, recorder, broker) = server_with_broker("ordered").await;
    let trigger = with_annotation(
        support::trigger(NS, "in-order", &broker, &recorder.url),
        "kafka.eventing.knative.dev/delivery.order",
        "ordered",
    );
    server.create_trigger(&trigger).await;
    let ids: Vec<String> = (0..60).map(|n| format!("o-{n}")).collect();
    for id in &ids {
        server
            .send(NS, &broker, &TestEvent::new(id, "test.order"))
            .await;
    }
    wait_for("60 deliveries", support::WAIT, || {
        let count = recorder.count();
        async move { (count >= 60).then_some(()) }
    })
    .await;
    let got: Vec<String> = recorder.events().into_iter().map(|e| e.id).collect();
    assert_eq!(got, ids);
    // Every event was acknowledged: nothing waits in the queue.
    let connection = connect().await;
    let queue = queue_name(NS, &broker, "trigger-in-order");
    wait_for("the queue to drain", support::WAIT, || {
        let connection = &connection;
        let queue = queue.clone();
        async move { (queue_depth(connection, &queue).await == 0).then_some(()) }
    })
    .await;
    delete_broker(&server.api, NS, &broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_config_without_uri_is_reported() {
    let server = TestServer::start().await;
    let broker = unique("nouri");
    apply(
        &server.api,
        &json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": broker, "namespace": NS}, "data": {"queueType": "quorum"}}),
    )
    .await;
    apply(
        &server.api,
        &rabbitmq_broker(NS, &broker, "ConfigMap", &broker),
    )
    .await;
    let object = support::wait_status(&server.api, "Broker", NS, &broker, "False").await;
    let message = support::condition(&object, "IngressReady").expect("IngressReady")["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("uri"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_event_survives_kill_9_of_rivulet() {
    let data = tempfile::tempdir().unwrap();
    let recorder = support::durability::slow_subscriber().await;
    let server = ChildServer::spawn(data.path(), &[]).await;
    let broker = unique("kill");
    rabbitmq_broker_ready(&server.api, &broker).await;
    support::durability::apply_one_at_a_time_trigger(&server.api, NS, &broker, &recorder).await;

    let broker_url = format!("{}/{NS}/{broker}", server.base);
    let server = support::durability::kill_9_loses_no_acknowledged_event(
        server,
        &broker_url,
        &recorder,
        300,
        "RabbitMQ",
    )
    .await;
    delete_broker(&server.api, NS, &broker).await;
}
