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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_support::{PrivateTansu, bootstrap, unique};
use serde_json::{Value, json};
use support::{ChildServer, InProcessServer, Recorder, apply, http, wait_for, wait_ready};

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

/// What a set of producers saw.
#[derive(Default)]
struct Tally {
    accepted: Mutex<BTreeSet<String>>,
    unavailable: AtomicUsize,
    other: AtomicUsize,
}

/// Producers posting events to `{base}/{namespace}/events` until `stop`.
fn spawn_producers(
    base: Arc<Mutex<String>>,
    namespace: &str,
    producers: usize,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<usize>> {
    (0..producers)
        .map(|producer| {
            let (base, tally, stop) = (base.clone(), tally.clone(), stop.clone());
            let namespace = namespace.to_owned();
            tokio::spawn(async move {
                let client = http();
                let mut sent = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("p{producer}-{sent}");
                    sent += 1;
                    let url = format!("{}/{namespace}/events", base.lock().unwrap());
                    let response = client
                        .post(url)
                        .header("ce-specversion", "1.0")
                        .header("ce-id", &id)
                        .header("ce-source", "/kafka-faults")
                        .header("ce-type", "test.fault")
                        .header("content-type", "application/json")
                        .body(format!("{{\"producer\":{producer},\"n\":{sent}}}"))
                        .timeout(Duration::from_secs(15))
                        .send()
                        .await;
                    match response.map(|r| r.status().as_u16()) {
                        Ok(202) => {
                            tally.accepted.lock().unwrap().insert(id);
                        }
                        Ok(503) => {
                            tally.unavailable.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Ok(_) => {
                            tally.other.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                sent
            })
        })
        .collect()
}

async fn wait_accepted(tally: &Tally, count: usize, what: &str) {
    wait_for(what, Duration::from_secs(60), || {
        let n = tally.accepted.lock().unwrap().len();
        async move { (n >= count).then_some(()) }
    })
    .await;
}

/// Waits until every id reached the recorder; panics naming the missing ones.
async fn wait_all_delivered(recorder: &Recorder, ids: &BTreeSet<String>) {
    let deadline = std::time::Instant::now() + DELIVERY_DEADLINE;
    loop {
        let delivered: BTreeSet<String> = recorder.events().into_iter().map(|e| e.id).collect();
        let missing: Vec<&String> = ids.difference(&delivered).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {} acknowledged events were never delivered, e.g. {:?}",
            missing.len(),
            ids.len(),
            &missing[..missing.len().min(10)]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn duplicates(recorder: &Recorder) -> usize {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for event in recorder.events() {
        *seen.entry(event.id).or_default() += 1;
    }
    seen.values().map(|n| n - 1).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_rivulet_loses_no_acknowledged_event() {
    let _turn = kafka_support::one_at_a_time().await;
    let data = tempfile::tempdir().unwrap();
    let recorder = Recorder::start().await;
    // A slow subscriber, so a backlog exists in Kafka when the server dies.
    recorder.set_delay(Duration::from_millis(20));
    let mut server = ChildServer::spawn(data.path(), &[]).await;
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

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let base = Arc::new(Mutex::new(server.base.clone()));
    let producers = spawn_producers(base.clone(), &namespace, 4, tally.clone(), stop.clone());
    wait_accepted(&tally, 400, "400 events accepted before the kill").await;
    server.kill9();
    let accepted_at_kill = tally.accepted.lock().unwrap().len();
    stop.store(true, Ordering::Relaxed);
    let mut attempted = 0;
    for producer in producers {
        attempted += producer.await.unwrap();
    }
    let delivered_before = recorder.count();
    assert!(
        delivered_before < accepted_at_kill,
        "a backlog existed at the kill ({delivered_before} of {accepted_at_kill} delivered)"
    );
    recorder.set_delay(Duration::ZERO);

    let _server = ChildServer::spawn(data.path(), &[]).await;
    let accepted = tally.accepted.lock().unwrap().clone();
    wait_all_delivered(&recorder, &accepted).await;
    let duplicates = duplicates(&recorder);
    eprintln!(
        "kill -9 with Kafka: {attempted} posted, {} acknowledged, {delivered_before} delivered \
         before the restart, {} deliveries in all, {duplicates} duplicates",
        accepted.len(),
        recorder.count(),
    );
    assert!(accepted.len() >= 400);
    assert!(
        duplicates <= accepted.len(),
        "{duplicates} duplicates for {} events: redelivery beyond what was in flight",
        accepted.len()
    );
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

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let base = Arc::new(Mutex::new(server.base.clone()));
    let producers = spawn_producers(base, &namespace, 3, tally.clone(), stop.clone());
    wait_accepted(&tally, 100, "100 events accepted before the outage").await;

    tansu.kill();
    let accepted_at_outage = tally.accepted.lock().unwrap().len();
    wait_for(
        "503 answers during the outage",
        Duration::from_secs(30),
        || {
            let n = tally.unavailable.load(Ordering::Relaxed);
            async move { (n >= 3).then_some(()) }
        },
    )
    .await;
    // Requests acknowledged just before the kill may still come back 202; after a few
    // seconds of outage nothing new is acknowledged.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let accepted_in_outage = tally.accepted.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        tally.accepted.lock().unwrap().len(),
        accepted_in_outage,
        "an event was acknowledged while Kafka was down"
    );

    tansu.restart();
    wait_accepted(
        &tally,
        accepted_in_outage + 100,
        "100 more events accepted after Kafka came back",
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for producer in producers {
        producer.await.unwrap();
    }
    let accepted = tally.accepted.lock().unwrap().clone();
    wait_all_delivered(&recorder, &accepted).await;
    eprintln!(
        "Kafka outage: {} acknowledged ({accepted_at_outage} before the outage), {} answered 503, \
         {} other answers, {} deliveries, {} duplicates",
        accepted.len(),
        tally.unavailable.load(Ordering::Relaxed),
        tally.other.load(Ordering::Relaxed),
        recorder.count(),
        duplicates(&recorder)
    );
    assert_eq!(
        tally.other.load(Ordering::Relaxed),
        0,
        "only 202 and 503 are expected"
    );
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

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let base = Arc::new(Mutex::new(first.base.clone()));
    let producers = spawn_producers(base.clone(), &namespace, 3, tally.clone(), stop.clone());
    wait_accepted(&tally, 200, "200 events accepted by the first Rivulet").await;

    let second = InProcessServer::start_with(support::tune_for_tests).await;
    for resource in kafka_resources(&namespace, &settings, &recorder.url) {
        apply(&second.api, &resource).await;
    }
    wait_ready(&second.api, "Trigger", &namespace, "all").await;
    let joined_at = tally.accepted.lock().unwrap().len();
    wait_accepted(&tally, joined_at + 200, "200 more events while both serve").await;

    *base.lock().unwrap() = second.base.clone();
    first.shutdown().await;
    let left_at = tally.accepted.lock().unwrap().len();
    wait_accepted(
        &tally,
        left_at + 100,
        "100 more events while the first is down",
    )
    .await;
    let first = start_first().await;
    let back_at = tally.accepted.lock().unwrap().len();
    wait_accepted(
        &tally,
        back_at + 200,
        "200 more events after the first came back",
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for producer in producers {
        producer.await.unwrap();
    }

    let accepted = tally.accepted.lock().unwrap().clone();
    wait_all_delivered(&recorder, &accepted).await;
    eprintln!(
        "two Rivulets, three rebalances: {} acknowledged, {} deliveries, {} duplicates",
        accepted.len(),
        recorder.count(),
        duplicates(&recorder)
    );
    assert_eq!(
        tally.other.load(Ordering::Relaxed),
        0,
        "only 202 and 503 are expected"
    );
    assert!(
        duplicates(&recorder) <= accepted.len(),
        "redelivery beyond what was in flight"
    );
    first.shutdown().await;
    second.shutdown().await;
}
