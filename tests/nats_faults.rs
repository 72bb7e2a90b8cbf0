//! Faults on a NATS JetStream broker, each test with a NATS server of its own (the real
//! `nats-server` binary, on a free port with its own store), so stopping it disturbs nobody:
//! - NATS stopped for a while under load and started again: ingress answers 503 while it is
//!   down, everything reconnects by itself, and every event that got a 202 is delivered;
//! - `kill -9` of Rivulet mid-flow: every event that got a 202 is delivered after a restart.
//!
//! The server binary is `RIVULET_NATS_SERVER`, else `nats-server` from `/usr/sbin` or `PATH`;
//! without one the tests say so and skip.

use rivulet_testkit as support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{ChildServer, Recorder, apply, free_port, http, wait_for};

const NS: &str = "default";
const BROKER: &str = "jets";
/// How long everything acknowledged may take to arrive once the system is whole again.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(60);

fn nats_server_binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("RIVULET_NATS_SERVER") {
        return Some(PathBuf::from(path));
    }
    let installed = PathBuf::from("/usr/sbin/nats-server");
    if installed.exists() {
        return Some(installed);
    }
    let found = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    found.then(|| PathBuf::from("nats-server"))
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
        .is_ok()
}

/// A `nats-server -js` child process of this test.
struct NatsServer {
    binary: PathBuf,
    port: u16,
    store: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    fn start(binary: PathBuf, store: &Path) -> NatsServer {
        let mut server = NatsServer {
            binary,
            port: free_port(),
            store: store.to_path_buf(),
            child: None,
        };
        server.run();
        server
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and store, and waits for its port.
    fn run(&mut self) {
        let child = Command::new(&self.binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !port_open(self.port) {
            assert!(
                Instant::now() < deadline,
                "nats-server did not open port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it the way a service manager does (SIGTERM), and waits until the port is closed.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        while port_open(self.port) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn manifests(url: &str, ack_wait: &str) -> Vec<Value> {
    vec![
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "nats", "namespace": NS},
            "data": {"url": url, "storage": "file", "ackWait": ack_wait},
        }),
        json!({
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Broker",
            "metadata": {
                "name": BROKER,
                "namespace": NS,
                "annotations": {"eventing.knative.dev/broker.class": "NatsJetStreamBroker"},
            },
            "spec": {"config": {"apiVersion": "v1", "kind": "ConfigMap", "name": "nats"}},
        }),
    ]
}

/// Producers posting events until stopped; counts every status they get.
struct Load {
    accepted: Arc<Mutex<BTreeSet<String>>>,
    statuses: Arc<Mutex<BTreeMap<u16, usize>>>,
    unavailable_since: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(base: &str, producers: usize) -> Load {
        let load = Load {
            accepted: Arc::default(),
            statuses: Arc::default(),
            unavailable_since: Arc::default(),
            stop: Arc::default(),
            tasks: Vec::new(),
        };
        let mut tasks = Vec::new();
        for producer in 0..producers {
            let (accepted, statuses, unavailable, stop) = (
                load.accepted.clone(),
                load.statuses.clone(),
                load.unavailable_since.clone(),
                load.stop.clone(),
            );
            let url = format!("{base}/{NS}/{BROKER}");
            tasks.push(tokio::spawn(async move {
                let client = http();
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("p{producer}-{n}");
                    n += 1;
                    let response = client
                        .post(&url)
                        .header("ce-specversion", "1.0")
                        .header("ce-id", &id)
                        .header("ce-source", "/faults")
                        .header("ce-type", "test.fault")
                        .header("content-type", "application/json")
                        .body(format!("{{\"n\":{n}}}"))
                        .timeout(Duration::from_secs(15))
                        .send()
                        .await;
                    match response {
                        Ok(r) => {
                            let code = r.status().as_u16();
                            *statuses.lock().unwrap().entry(code).or_default() += 1;
                            if code == 202 {
                                accepted.lock().unwrap().insert(id);
                            } else {
                                if code == 503 {
                                    unavailable.fetch_add(1, Ordering::Relaxed);
                                }
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }));
        }
        Load { tasks, ..load }
    }

    fn accepted_count(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    async fn wait_accepted(&self, at_least: usize) {
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

    async fn finish(mut self) -> (BTreeSet<String>, BTreeMap<u16, usize>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks.drain(..) {
            task.await.unwrap();
        }
        let accepted = self.accepted.lock().unwrap().clone();
        let statuses = self.statuses.lock().unwrap().clone();
        (accepted, statuses)
    }
}

async fn wait_all_delivered(recorder: &Recorder, ids: &BTreeSet<String>) {
    let deadline = Instant::now() + DELIVERY_DEADLINE;
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

async fn setup(url: &str, data: &Path, ack_wait: &str, recorder: &Recorder) -> ChildServer {
    let server = ChildServer::spawn(data, &[]).await;
    for manifest in manifests(url, ack_wait) {
        apply(&server.api, &manifest).await;
    }
    support::wait_ready(&server.api, "Broker", NS, BROKER).await;
    let mut all = support::trigger(NS, "all", BROKER, &recorder.url);
    all["metadata"]["annotations"] = json!({"rivulet.dev/parallelism": "4"});
    apply(&server.api, &all).await;
    support::wait_ready(&server.api, "Trigger", NS, "all").await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_outage_under_load_gives_503_then_recovers_without_loss() {
    let Some(binary) = nats_server_binary() else {
        eprintln!("skipped: no nats-server binary (set RIVULET_NATS_SERVER)");
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::start(binary, store.path());
    let recorder = Recorder::start().await;
    let _server = setup(&nats.url(), data.path(), "5s", &recorder).await;

    let load = Load::start(&_server.base, 4);
    load.wait_accepted(200).await;
    nats.stop();
    let accepted_at_stop = load.accepted_count();
    let unavailable_before = load.unavailable_since.load(Ordering::Relaxed);
    // Down for a while, under load.
    let down = Instant::now();
    wait_for("ingress to answer 503", Duration::from_secs(30), || {
        let n = load.unavailable_since.load(Ordering::Relaxed);
        async move { (n > unavailable_before + 20).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(down.elapsed())).await;
    let accepted_while_down = load.accepted_count() - accepted_at_stop;
    nats.run();
    let accepted_at_start = load.accepted_count();
    load.wait_accepted(accepted_at_start + 200).await;
    let (accepted, statuses) = load.finish().await;
    wait_all_delivered(&recorder, &accepted).await;
    eprintln!(
        "NATS outage: statuses {statuses:?}, {} accepted ({accepted_at_stop} before the stop, \
         {accepted_while_down} while stopping), {} deliveries",
        accepted.len(),
        recorder.count()
    );
    assert!(
        statuses.get(&503).copied().unwrap_or(0) > 20,
        "503 while NATS was down"
    );
    assert!(
        statuses.keys().all(|code| [202, 503].contains(code)),
        "only 202 and 503: {statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_rivulet_mid_flow_loses_nothing_on_nats() {
    let Some(binary) = nats_server_binary() else {
        eprintln!("skipped: no nats-server binary (set RIVULET_NATS_SERVER)");
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(binary, store.path());
    let recorder = Recorder::start().await;
    // A slow subscriber, so a backlog (and deliveries in flight) exist when Rivulet dies.
    recorder.set_delay(Duration::from_millis(10));
    let mut server = setup(&nats.url(), data.path(), "3s", &recorder).await;

    let load = Load::start(&server.base, 4);
    load.wait_accepted(300).await;
    server.kill9();
    let (accepted, _) = load.finish().await;
    let delivered_before_restart = recorder.count();
    assert!(
        delivered_before_restart < accepted.len(),
        "a backlog existed at the kill ({delivered_before_restart} of {} delivered)",
        accepted.len()
    );
    recorder.set_delay(Duration::ZERO);
    let _restarted = ChildServer::spawn(data.path(), &[]).await;
    wait_all_delivered(&recorder, &accepted).await;
    eprintln!(
        "kill -9 on NATS: {} acknowledged, {delivered_before_restart} delivered before the \
         restart, {} deliveries in all",
        accepted.len(),
        recorder.count()
    );
}
