//! Behaviour of the embedded backend beyond the channel contract: disk space is reused, and
//! acknowledged events survive the process being killed.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rivulet_channels::contract::{config, event};
use rivulet_channels::embedded::database_path;
use rivulet_channels::{Channel, ChannelConfig, Envelope, SubscriptionSpec};

const SUBSCRIPTION: &str = "s";

async fn open(config: &ChannelConfig) -> Arc<dyn Channel> {
    rivulet_channels::open("embedded", config.clone())
        .await
        .expect("opening the embedded channel")
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()))
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_does_not_grow_when_events_are_acknowledged() {
    const ROUNDS: usize = 10;
    const PER_ROUND: usize = 5_000;
    const PER_CALL: usize = 500;
    let folder = tempfile::tempdir().expect("temporary folder");
    let config = config("growth", "broker", folder.path());
    let path = database_path(&config).expect("database path");
    let channel = open(&config).await;
    channel
        .ensure_subscription(SUBSCRIPTION, &SubscriptionSpec::default())
        .await
        .expect("ensure_subscription");
    let subscription = channel.consume(SUBSCRIPTION).await.expect("consume");
    let payload = Bytes::from(vec![b'x'; 256]);

    let mut sizes = Vec::new();
    for round in 0..ROUNDS {
        for call in 0..PER_ROUND / PER_CALL {
            let first = round * PER_ROUND + call * PER_CALL;
            let events: Vec<Envelope> = (first..first + PER_CALL)
                .map(|n| Envelope {
                    data: Some(payload.clone()),
                    ..event(n)
                })
                .collect();
            channel.publish(events).await.expect("publish");
        }
        let mut received = 0;
        while received < PER_ROUND {
            let batch = tokio::time::timeout(Duration::from_secs(30), subscription.receive(1_000))
                .await
                .expect("events should arrive")
                .expect("receive");
            received += batch.len();
            let acks = batch.iter().map(|event| subscription.ack(event.id));
            for result in futures::future::join_all(acks).await {
                result.expect("ack");
            }
        }
        assert_eq!(received, PER_ROUND, "round {round}");
        sizes.push(file_size(&path));
    }
    eprintln!("database size after each round: {sizes:?}");
    let (second, last) = (sizes[1], sizes[ROUNDS - 1]);
    assert!(
        last <= second + second / 4 + (1 << 20),
        "database grew from {second} bytes after round 2 to {last} after round {ROUNDS}"
    );
}

/// Set in the child process of the crash test: the folder it writes to.
const CRASH_CHILD_FOLDER: &str = "RIVULET_EMBEDDED_CRASH_CHILD_FOLDER";
const CRASH_TEST: &str = "acknowledged_events_survive_kill_9";
const ACK_PREFIX: &str = "acknowledged ";

fn crash_config(folder: &Path) -> ChannelConfig {
    config("crash", "broker", folder)
}

/// The child's part: several publishers in a loop, each printing the id of every event
/// whose publish returned. Bounded in case nobody kills it.
async fn publish_until_killed(folder: &Path) {
    let channel = open(&crash_config(folder)).await;
    channel
        .ensure_subscription(SUBSCRIPTION, &SubscriptionSpec::default())
        .await
        .expect("ensure_subscription");
    let deadline = Instant::now() + Duration::from_secs(60);
    let publishers: Vec<_> = (0..4)
        .map(|publisher| {
            let channel = Arc::clone(&channel);
            tokio::spawn(async move {
                for n in 0..50_000 {
                    if Instant::now() > deadline {
                        break;
                    }
                    let id = format!("p{publisher}-{n}");
                    let event = rivulet_channels::contract::event_with(0, &[("id", &id)]);
                    channel.publish(vec![event]).await.expect("publish");
                    println!("{ACK_PREFIX}{id}");
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.expect("publisher task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9() {
    if let Some(folder) = std::env::var_os(CRASH_CHILD_FOLDER) {
        publish_until_killed(Path::new(&folder)).await;
        return;
    }
    let folder = tempfile::tempdir().expect("temporary folder");
    let test_binary = std::env::current_exe().expect("path of the test binary");
    let mut child = Command::new(test_binary)
        .args([CRASH_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD_FOLDER, folder.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the child process");

    // Lines are read on a thread so waiting for them can time out.
    let stdout = child.stdout.take().expect("child stdout");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut acknowledged = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged.len() < 400 {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                if let Some(id) = line.strip_prefix(ACK_PREFIX) {
                    acknowledged.insert(id.to_owned());
                }
            }
            Err(_) => break,
        }
    }
    child.kill().expect("SIGKILL to the child");
    child.wait().expect("waiting for the killed child");
    // Whatever it printed before dying was acknowledged too.
    reader.join().expect("stdout reader");
    acknowledged.extend(
        lines
            .try_iter()
            .filter_map(|line| line.strip_prefix(ACK_PREFIX).map(str::to_owned)),
    );
    assert!(
        acknowledged.len() >= 400,
        "the child acknowledged only {} events in time",
        acknowledged.len()
    );

    let channel = open(&crash_config(folder.path())).await;
    let subscription = channel.consume(SUBSCRIPTION).await.expect("consume");
    let mut stored = BTreeSet::new();
    while !acknowledged.is_subset(&stored) {
        let batch = tokio::time::timeout(Duration::from_secs(5), subscription.receive(1_000))
            .await
            .unwrap_or_else(|_| {
                let missing: Vec<_> = acknowledged.difference(&stored).take(10).collect();
                panic!(
                    "{} acknowledged events lost, e.g. {missing:?}",
                    acknowledged.difference(&stored).count()
                )
            })
            .expect("receive");
        stored.extend(
            batch
                .iter()
                .filter_map(|event| event.envelope.attribute("id").map(str::to_owned)),
        );
    }
    eprintln!(
        "{} acknowledged events all found among {} stored",
        acknowledged.len(),
        stored.len()
    );
}
