//! RabbitMQ stopped under load and started again (`rabbitmqctl stop_app` / `start_app`):
//! ingress answers 503 while it is down, connections and consumers come back by themselves,
//! and every event that got a 202 is delivered. Its own test binary, since it stops the
//! RabbitMQ every other RabbitMQ test uses; skipped (with a reason) where `rabbitmqctl` is
//! missing or RIVULET_RABBITMQ_FAULTS=0.

use rivulet_testkit as support;
use rivulet_testkit::rabbitmq as rabbitmq_support;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rabbitmq_support::{delete_broker, rabbitmq_broker, rabbitmq_uri, unique, uri_secret};
use support::{Recorder, TestServer, apply, http, wait_for, with_annotation};

const NS: &str = "default";

fn rabbitmqctl(command: &str) -> Result<(), String> {
    let output = Command::new("rabbitmqctl")
        .arg(command)
        .output()
        .map_err(|e| format!("rabbitmqctl cannot run: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "rabbitmqctl {command} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Starts the RabbitMQ application again when dropped, so a failing test does not leave it
/// stopped for everything after it.
struct StartAgain;

impl Drop for StartAgain {
    fn drop(&mut self) {
        if let Err(error) = rabbitmqctl("start_app") {
            eprintln!("{error}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_outage_gives_503_and_loses_no_accepted_event() {
    if std::env::var("RIVULET_RABBITMQ_FAULTS").as_deref() == Ok("0") {
        eprintln!("skipped: RIVULET_RABBITMQ_FAULTS=0");
        return;
    }
    if rabbitmqctl("status").is_err() {
        eprintln!("skipped: rabbitmqctl cannot reach the local RabbitMQ, so it cannot be stopped");
        return;
    }
    let server = TestServer::start().await;
    let recorder = Recorder::start().await;
    let broker = unique("outage");
    let secret = format!("{broker}-rabbitmq");
    apply(&server.api, &uri_secret(NS, &secret, &rabbitmq_uri())).await;
    apply(
        &server.api,
        &rabbitmq_broker(NS, &broker, "Secret", &secret),
    )
    .await;
    support::wait_ready(&server.api, "Broker", NS, &broker).await;
    let trigger = with_annotation(
        support::trigger(NS, "all", &broker, &recorder.url),
        "rivulet.dev/parallelism",
        "8",
    );
    server.create_trigger(&trigger).await;

    let accepted: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let unavailable = Arc::new(AtomicUsize::new(0));
    let other_answers: Arc<Mutex<Vec<String>>> = Arc::default();
    let down = Arc::new(AtomicBool::new(false));
    let accepted_while_down = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for producer in 0..4 {
        let (accepted, unavailable, other_answers, down, accepted_while_down, stop) = (
            accepted.clone(),
            unavailable.clone(),
            other_answers.clone(),
            down.clone(),
            accepted_while_down.clone(),
            stop.clone(),
        );
        let url = format!("{}/{NS}/{broker}", server.base);
        producers.push(tokio::spawn(async move {
            let client = http();
            let mut sent = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("p{producer}-{sent}");
                sent += 1;
                let was_down = down.load(Ordering::SeqCst);
                let response = client
                    .post(&url)
                    .header("ce-specversion", "1.0")
                    .header("ce-id", &id)
                    .header("ce-source", "/outage")
                    .header("ce-type", "test.outage")
                    .body("")
                    .timeout(Duration::from_secs(15))
                    .send()
                    .await;
                match response.map(|r| r.status().as_u16()) {
                    Ok(202) => {
                        if was_down && down.load(Ordering::SeqCst) {
                            accepted_while_down.fetch_add(1, Ordering::SeqCst);
                        }
                        accepted.lock().unwrap().insert(id);
                    }
                    Ok(503) => {
                        unavailable.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => other_answers
                        .lock()
                        .unwrap()
                        .push(format!("{id}: {other:?}")),
                }
            }
        }));
    }
    let accepted_count = || accepted.lock().unwrap().len();
    wait_for(
        "200 accepted events before the outage",
        support::WAIT,
        || {
            let n = accepted_count();
            async move { (n >= 200).then_some(()) }
        },
    )
    .await;

    let restart = StartAgain;
    let stopping = Instant::now();
    rabbitmqctl("stop_app").expect("RabbitMQ stops");
    down.store(true, Ordering::SeqCst);
    eprintln!("RabbitMQ stopped in {:?}", stopping.elapsed());
    let before = unavailable.load(Ordering::SeqCst);
    wait_for(
        "ingress to answer 503 while RabbitMQ is down",
        support::WAIT,
        || {
            let n = unavailable.load(Ordering::SeqCst);
            async move { (n > before + 10).then_some(()) }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    down.store(false, Ordering::SeqCst);
    let starting = Instant::now();
    drop(restart);
    eprintln!("RabbitMQ started in {:?}", starting.elapsed());

    let after_restart = accepted_count();
    wait_for(
        "ingress to accept events again",
        Duration::from_secs(60),
        || {
            let n = accepted_count();
            async move { (n >= after_restart + 200).then_some(()) }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for producer in producers {
        producer.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let delivered: BTreeSet<String> = recorder.events().into_iter().map(|e| e.id).collect();
        let missing: Vec<&String> = accepted.difference(&delivered).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} acknowledged events were never delivered, e.g. {:?}",
            missing.len(),
            accepted.len(),
            &missing[..missing.len().min(10)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "outage: {} accepted, {} answered 503, {} deliveries",
        accepted.len(),
        unavailable.load(Ordering::SeqCst),
        recorder.count()
    );
    assert_eq!(
        accepted_while_down.load(Ordering::SeqCst),
        0,
        "ingress accepted events while RabbitMQ was down"
    );
    let others = other_answers.lock().unwrap().clone();
    assert!(others.is_empty(), "answers other than 202/503: {others:?}");
    delete_broker(&server.api, NS, &broker).await;
}
