//! Kafka-specific behaviour of the `kafka` channel beyond the shared contract: consumers in
//! two processes share a subscription's partitions, and a rebalance loses nothing.
//! Needs the Kafka server named by `RIVULET_KAFKA_BOOTSTRAP` (default `127.0.0.1:9092`).
// Needs a Kafka-protocol server: built with the `kafka-tests` feature, which ./test.sh turns
// on after starting one (a bare `cargo test` leaves these tests out).
#![cfg(feature = "kafka-tests")]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rivulet_channels::contract::{event, shared_server_config};
use rivulet_channels::{ChannelConfig, Prefilter, Subscription, SubscriptionSpec};

/// The tests of this file run one at a time (see the Kafka fixture of the contract tests).
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn fresh_config(partitions: u32) -> ChannelConfig {
    let mut config = shared_server_config(
        "bootstrap.servers",
        "RIVULET_KAFKA_BOOTSTRAP",
        "127.0.0.1:9092",
    );
    config
        .settings
        .insert("default.topic.partitions".into(), partitions.to_string());
    config
}

/// Receives and acknowledges until told to stop, recording the ids it finished.
fn spawn_worker(
    subscription: Arc<dyn Subscription>,
    done: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let batch =
                match tokio::time::timeout(Duration::from_millis(200), subscription.receive(20))
                    .await
                {
                    Err(_) => continue,
                    Ok(Err(_)) => return,
                    Ok(Ok(batch)) => batch,
                };
            for received in batch {
                // Some work, so records are in flight when the group rebalances.
                tokio::time::sleep(Duration::from_millis(2)).await;
                let id = received.envelope.attribute("id").unwrap_or("?").to_owned();
                if subscription.ack(received.id).await.is_ok() {
                    done.lock().unwrap().push(id);
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebalance_between_two_processes_loses_nothing() {
    let _turn = TURN.lock().await;
    let config = fresh_config(4);
    // Two channel objects stand for two Rivulet processes: each consumer is a group member.
    let first = rivulet_channels::open("kafka", config.clone())
        .await
        .expect("opening the channel");
    // Each process has its own data folder, hence its own group member identity.
    let second_data = tempfile::tempdir().unwrap();
    let mut second_config = config.clone();
    second_config.data_dir = second_data.path().to_owned();
    let second = rivulet_channels::open("kafka", second_config)
        .await
        .expect("opening the channel a second time");
    let spec = SubscriptionSpec {
        prefilter: Prefilter::all(),
        max_in_flight: 50,
        one_per_partition: false,
    };
    first.ensure_subscription("shared", &spec).await.unwrap();
    second.ensure_subscription("shared", &spec).await.unwrap();

    const TOTAL: usize = 2_000;
    for chunk in (0..TOTAL).collect::<Vec<_>>().chunks(100) {
        first
            .publish(chunk.iter().map(|&n| event(n)).collect())
            .await
            .expect("publish");
    }

    let done: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let a = first.consume("shared").await.unwrap();
    let worker_a = spawn_worker(a, done.clone(), stop.clone());
    // The second member joins while the first is busy: the group rebalances.
    let started = Instant::now();
    while done.lock().unwrap().len() < TOTAL / 5 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the first consumer is stuck"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b = second.consume("shared").await.unwrap();
    let worker_b = spawn_worker(b, done.clone(), stop.clone());

    let expected: BTreeSet<String> = (0..TOTAL).map(|n| format!("e-{n}")).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let finished: BTreeSet<String> = done.lock().unwrap().iter().cloned().collect();
        if expected.is_subset(&finished) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {TOTAL} events never finished after the rebalance",
            expected.difference(&finished).count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    worker_a.await.unwrap();
    worker_b.await.unwrap();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for id in done.lock().unwrap().iter() {
        *counts.entry(id.clone()).or_default() += 1;
    }
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    eprintln!("rebalance: {TOTAL} events, {duplicates} finished twice");
    assert!(
        duplicates < TOTAL / 2,
        "{duplicates} duplicates: far more than was in flight at the rebalance"
    );
    first.destroy().await.expect("destroy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_acknowledgements_survive_a_new_process() {
    let _turn = TURN.lock().await;
    // Acknowledged offsets above the lowest unfinished one are kept in the commit metadata,
    // so a consumer in a new process skips them.
    let config = fresh_config(1);
    let channel = rivulet_channels::open("kafka", config.clone())
        .await
        .unwrap();
    let spec = SubscriptionSpec {
        prefilter: Prefilter::all(),
        max_in_flight: 0,
        one_per_partition: false,
    };
    channel.ensure_subscription("gaps", &spec).await.unwrap();
    channel.publish((0..20).map(event).collect()).await.unwrap();
    let subscription = channel.consume("gaps").await.unwrap();
    let mut received = Vec::new();
    while received.len() < 20 {
        received.extend(subscription.receive(20 - received.len()).await.unwrap());
    }
    for item in received.iter().filter(|r| {
        let id = r.envelope.attribute("id").unwrap();
        !["e-3", "e-11", "e-12"].contains(&id)
    }) {
        subscription.ack(item.id).await.unwrap();
    }
    // Give the consumer time to commit, then "crash" the process: a new channel object.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(subscription);
    drop(channel);
    let channel = rivulet_channels::open("kafka", config).await.unwrap();
    let subscription = channel.consume("gaps").await.unwrap();
    let mut again = Vec::new();
    while again.len() < 3 {
        let batch = tokio::time::timeout(Duration::from_secs(20), subscription.receive(10))
            .await
            .expect("the unfinished events come back")
            .unwrap();
        again.extend(batch);
    }
    let ids: Vec<&str> = again
        .iter()
        .map(|r| r.envelope.attribute("id").unwrap())
        .collect();
    assert_eq!(ids, ["e-3", "e-11", "e-12"]);
    channel.destroy().await.unwrap();
}
