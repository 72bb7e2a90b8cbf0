//! Load and durability helpers: producers that post events and count every answer, waits for
//! every acknowledged event to arrive, and the `kill -9` contract that every channel backend
//! meets (an event that got a `202` is delivered after the server dies and starts again).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{ChildServer, Recorder, http, wait_for};

/// Producers posting binary-mode CloudEvents to one broker URL until stopped; each event's id
/// is `p{producer}-{n}`, and every answer's status is counted.
pub struct Load {
    target: Arc<Mutex<String>>,
    accepted: Arc<Mutex<BTreeSet<String>>>,
    statuses: Arc<Mutex<BTreeMap<u16, usize>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<usize>>,
}

/// What a [`Load`] saw once stopped.
pub struct LoadOutcome {
    /// The ids that got a `202`.
    pub accepted: BTreeSet<String>,
    /// How many answers of each status.
    pub statuses: BTreeMap<u16, usize>,
    /// How many posts were made, whatever their answer.
    pub attempted: usize,
}

impl Load {
    /// Starts `producers` producers posting to `url` (a broker's ingress URL).
    pub fn start(url: impl Into<String>, producers: usize) -> Load {
        let mut load = Load {
            target: Arc::new(Mutex::new(url.into())),
            accepted: Arc::default(),
            statuses: Arc::default(),
            stop: Arc::default(),
            tasks: Vec::new(),
        };
        load.tasks = (0..producers).map(|p| load.producer(p)).collect();
        load
    }

    fn producer(&self, producer: usize) -> tokio::task::JoinHandle<usize> {
        let (target, accepted, statuses, stop) = (
            self.target.clone(),
            self.accepted.clone(),
            self.statuses.clone(),
            self.stop.clone(),
        );
        tokio::spawn(async move {
            let client = http();
            let mut sent = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("p{producer}-{sent}");
                sent += 1;
                let url = target.lock().unwrap().clone();
                let response = client
                    .post(url)
                    .header("ce-specversion", "1.0")
                    .header("ce-id", &id)
                    .header("ce-source", "/load")
                    .header("ce-type", "test.load")
                    .header("content-type", "application/json")
                    .body(format!("{{\"producer\":{producer},\"n\":{sent}}}"))
                    .timeout(Duration::from_secs(15))
                    .send()
                    .await;
                match response.map(|r| r.status().as_u16()) {
                    Ok(code) => {
                        *statuses.lock().unwrap().entry(code).or_default() += 1;
                        if code == 202 {
                            accepted.lock().unwrap().insert(id);
                        } else {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    // The server is gone or restarting: back off instead of spinning.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            sent
        })
    }

    /// Posts to `url` from now on (another replica, a restarted server).
    pub fn retarget(&self, url: impl Into<String>) {
        *self.target.lock().unwrap() = url.into();
    }

    pub fn accepted_count(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    /// How many answers had `status` so far.
    pub fn status_count(&self, status: u16) -> usize {
        self.statuses
            .lock()
            .unwrap()
            .get(&status)
            .copied()
            .unwrap_or(0)
    }

    /// Waits (up to a minute) until at least `at_least` events were accepted in all.
    pub async fn wait_accepted(&self, at_least: usize) {
        let accepted = self.accepted.clone();
        wait_for(
            &format!("{at_least} events accepted"),
            Duration::from_secs(60),
            || {
                let n = accepted.lock().unwrap().len();
                async move { (n >= at_least).then_some(()) }
            },
        )
        .await;
    }

    /// Stops the producers and gives what they saw.
    pub async fn finish(mut self) -> LoadOutcome {
        self.stop.store(true, Ordering::Relaxed);
        let mut attempted = 0;
        for task in self.tasks.drain(..) {
            attempted += task.await.unwrap();
        }
        LoadOutcome {
            accepted: self.accepted.lock().unwrap().clone(),
            statuses: self.statuses.lock().unwrap().clone(),
            attempted,
        }
    }
}

/// Waits until every id in `ids` reached `recorder`; panics after `deadline`, naming some of
/// the missing ones.
pub async fn wait_all_delivered(recorder: &Recorder, ids: &BTreeSet<String>, deadline: Duration) {
    let deadline = Instant::now() + deadline;
    loop {
        let delivered: BTreeSet<String> = recorder.events().into_iter().map(|e| e.id).collect();
        let missing: Vec<&String> = ids.difference(&delivered).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} acknowledged events were never delivered, e.g. {:?}",
            missing.len(),
            ids.len(),
            &missing[..missing.len().min(10)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many deliveries beyond the first each id got, in total.
pub fn duplicates(recorder: &Recorder) -> usize {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for event in recorder.events() {
        *seen.entry(event.id).or_default() += 1;
    }
    seen.values().map(|n| n - 1).sum()
}

/// A subscriber that takes 10 ms an event, so that a backlog builds up behind a trigger
/// delivering one event at a time ([`apply_one_at_a_time_trigger`]) when the server dies.
pub async fn slow_subscriber() -> Recorder {
    let recorder = Recorder::start().await;
    recorder.set_delay(Duration::from_millis(10));
    recorder
}

/// Applies trigger `all` of `broker` to `recorder`, delivering one event at a time, and waits
/// until it is Ready.
pub async fn apply_one_at_a_time_trigger(
    api: &str,
    namespace: &str,
    broker: &str,
    recorder: &Recorder,
) {
    let trigger = crate::with_annotation(
        crate::trigger(namespace, "all", broker, &recorder.url),
        "rivulet.dev/parallelism",
        "1",
    );
    crate::apply(api, &trigger).await;
    crate::wait_ready(api, "Trigger", namespace, "all").await;
}

/// The durability contract of a channel backend: `server` runs a broker at `broker_url`
/// whose trigger delivers to `recorder`, slowed so that a backlog exists. Producers post
/// until `at_least` events were accepted, the server is killed with SIGKILL mid-flow, and a
/// new server on the same data folder must deliver every event that got a `202` (duplicates
/// are allowed, at most one per acknowledged event). Returns the restarted server.
pub async fn kill_9_loses_no_acknowledged_event(
    mut server: ChildServer,
    broker_url: &str,
    recorder: &Recorder,
    at_least: usize,
    backend: &str,
) -> ChildServer {
    let load = Load::start(broker_url, 4);
    load.wait_accepted(at_least).await;
    server.kill9();
    let LoadOutcome {
        accepted,
        attempted,
        ..
    } = load.finish().await;
    let delivered_before_restart = recorder.count();
    assert!(
        delivered_before_restart < accepted.len(),
        "a backlog existed at the kill ({delivered_before_restart} of {} delivered), so the restart is what delivers the rest",
        accepted.len()
    );
    recorder.set_delay(Duration::ZERO);

    let restarted = ChildServer::spawn(&server.data_dir, &[]).await;
    wait_all_delivered(recorder, &accepted, Duration::from_secs(60)).await;
    let duplicates = duplicates(recorder);
    eprintln!(
        "kill -9 on {backend}: {attempted} posted, {} acknowledged, \
         {delivered_before_restart} delivered before the restart, {} deliveries in all, \
         {duplicates} duplicates",
        accepted.len(),
        recorder.count()
    );
    assert!(accepted.len() >= at_least);
    assert!(
        duplicates <= accepted.len(),
        "{duplicates} duplicates for {} events: redelivery beyond what was in flight",
        accepted.len()
    );
    restarted
}
