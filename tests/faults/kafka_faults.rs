//! Faults around the Kafka broker class: Rivulet killed with SIGKILL mid-flow, and the Kafka
//! server unreachable for a while. Nothing that got a `202` may be lost; duplicates are
//! allowed (at least once) and counted.
//!
//! The outage test stops a tansu server of its own (on its own port and data folder), never
//! the shared one the other tests use.

// Needs a Kafka-protocol server: built with the `kafka-tests` feature, which ./test.sh turns
// on after starting one (a bare `cargo test` leaves these tests out).
#![cfg(feature = "kafka-tests")]

use rivulet_testkit as support;
use rivulet_testkit::kafka as kafka_support;

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_support::{PrivateTansu, bootstrap, unique};
use serde_json::{Value, json};
use support::durability::{Load, LoadOutcome, duplicates, wait_all_delivered};
use support::{ChildServer, InProcessServer, Recorder, apply, wait_for, wait_ready};

/// How long everything acknowledged may take to arrive after a fault ends.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(60);

fn kafka_resources(namespace: &str, settings: &[(&str, String)], subscriber: &str) -> Vec<Value> {
    let data: BTreeMap<&str, String> = settings.iter().cloned().collect();
    let mut trigger = support::trigger(namespace, "all", "events", subscriber);
    trigger["metadata"]["annotations"] = json!({"rivulet.dev/parallelism": "8"});
    vec![
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "kafka", "namespace": namespace}, "data": data}),
        json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
               "metadata": {"name": "events", "namespace": namespace,
                            "annotations": {"eventing.knative.dev/broker.class": "Kafka"}},
               "spec": {"config": {"apiVersion": "v1", "kind": "ConfigMap", "name": "kafka"}}}),
        trigger,
    ]
}

/// Answers other than 202 and 503 (none is expected).
fn other_answers(outcome: &LoadOutcome) -> usize {
    outcome
        .statuses
        .iter()
        .filter(|(code, _)| ![202, 503].contains(*code))
        .map(|(_, n)| n)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_rivulet_loses_no_acknowledged_event() {
    let _turn = kafka_support::one_at_a_time().await;
    let data = tempfile::tempdir().unwrap();
    let recorder = Recorder::start().await;
    // A slow subscriber, so a backlog exists in Kafka when the server dies.
    recorder.set_delay(Duration::from_millis(20));
    let server = ChildServer::spawn(data.path(), &[]).await;
    let namespace = unique("ns");
    let settings = [
        ("bootstrap.servers", bootstrap()),
        ("default.topic.partitions", "3".to_owned()),
        ("default.topic.replication.factor", "1".to_owned()),
    ];
    for resource in kafka_resources(&namespace, &settings, &recorder.url) {
        apply(&server.api, &resource).await;
    }
    wait_ready(&server.api, "Trigger", &namespace, "all").await;

    let broker_url = format!("{}/{namespace}/events", server.base);
    support::durability::kill_9_loses_no_acknowledged_event(
        server,
        &broker_url,
        &recorder,
        400,
        "Kafka",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_outage_answers_503_and_recovers_by_itself() {
    let Some(mut tansu) = PrivateTansu::start() else {
        eprintln!(
            "skipped: no tansu binary (install it with `cargo install tansu --locked --features dynostore,libsql` or set RIVULET_TANSU)"
        );
        return;
    };
    let server = InProcessServer::start_with(support::tune_for_tests).await;
    let recorder = Recorder::start().await;
    let namespace = unique("ns");
    let settings = [
        ("bootstrap.servers", tansu.servers()),
        ("default.topic.partitions", "2".to_owned()),
        ("default.topic.replication.factor", "1".to_owned()),
        // A produce that cannot be acknowledged fails after 3 s: ingress answers 503.
        ("delivery.timeout.ms", "3000".to_owned()),
    ];
    for resource in kafka_resources(&namespace, &settings, &recorder.url) {
        apply(&server.api, &resource).await;
    }
    wait_ready(&server.api, "Trigger", &namespace, "all").await;

    let load = Load::start(format!("{}/{namespace}/events", server.base), 3);
    load.wait_accepted(100).await;

    tansu.kill();
    let accepted_at_outage = load.accepted_count();
    wait_for(
        "503 answers during the outage",
        Duration::from_secs(30),
        || {
            let n = load.status_count(503);
            async move { (n >= 3).then_some(()) }
        },
    )
    .await;
    // Requests acknowledged just before the kill may still come back 202; after a few
    // seconds of outage nothing new is acknowledged.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let accepted_in_outage = load.accepted_count();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        load.accepted_count(),
        accepted_in_outage,
        "an event was acknowledged while Kafka was down"
    );

    tansu.restart();
    load.wait_accepted(accepted_in_outage + 100).await;
    let outcome = load.finish().await;
    wait_all_delivered(&recorder, &outcome.accepted, DELIVERY_DEADLINE).await;
    eprintln!(
        "Kafka outage: {} acknowledged ({accepted_at_outage} before the outage), statuses \
         {:?}, {} deliveries, {} duplicates",
        outcome.accepted.len(),
        outcome.statuses,
        recorder.count(),
        duplicates(&recorder)
    );
    assert_eq!(other_answers(&outcome), 0, "only 202 and 503 are expected");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebalances_between_two_rivulets_lose_nothing() {
    // Two Rivulet processes serving the same broker and trigger share the trigger's consumer
    // group, as replicas of a data plane do: one joins mid-flow, then the first one restarts
    // on its data folder (a rolling restart), each time rebalancing the group.
    let _turn = kafka_support::one_at_a_time().await;
    let recorder = Recorder::start().await;
    recorder.set_delay(Duration::from_millis(5));
    let namespace = unique("ns");
    let settings = [
        ("bootstrap.servers", bootstrap()),
        ("default.topic.partitions", "4".to_owned()),
        ("default.topic.replication.factor", "1".to_owned()),
    ];
    let first_data = tempfile::tempdir().unwrap();
    let start_first = || async {
        let server = InProcessServer::start_with(|options| {
            support::tune_for_tests(options);
            options.data_dir = first_data.path().to_owned();
        })
        .await;
        for resource in kafka_resources(&namespace, &settings, &recorder.url) {
            apply(&server.api, &resource).await;
        }
        wait_ready(&server.api, "Trigger", &namespace, "all").await;
        server
    };
    let first = start_first().await;

    let load = Load::start(format!("{}/{namespace}/events", first.base), 3);
    load.wait_accepted(200).await;

    let second = InProcessServer::start_with(support::tune_for_tests).await;
    for resource in kafka_resources(&namespace, &settings, &recorder.url) {
        apply(&second.api, &resource).await;
    }
    wait_ready(&second.api, "Trigger", &namespace, "all").await;
    // 200 more events while both serve.
    load.wait_accepted(load.accepted_count() + 200).await;

    load.retarget(format!("{}/{namespace}/events", second.base));
    first.shutdown().await;
    // 100 more events while the first is down.
    load.wait_accepted(load.accepted_count() + 100).await;
    let first = start_first().await;
    // 200 more events after the first came back.
    load.wait_accepted(load.accepted_count() + 200).await;
    let outcome = load.finish().await;
    let accepted = &outcome.accepted;
    wait_all_delivered(&recorder, accepted, DELIVERY_DEADLINE).await;
    eprintln!(
        "two Rivulets, three rebalances: {} acknowledged, {} deliveries, {} duplicates",
        accepted.len(),
        recorder.count(),
        duplicates(&recorder)
    );
    assert_eq!(other_answers(&outcome), 0, "only 202 and 503 are expected");
    assert!(
        duplicates(&recorder) <= accepted.len(),
        "redelivery beyond what was in flight"
    );
    first.shutdown().await;
    second.shutdown().await;
}
