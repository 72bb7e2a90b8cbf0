//! Faults on a NATS JetStream broker, each test with a NATS server of its own (the real
//! `nats-server` binary, on a free port with its own store), so stopping it disturbs nobody:
//! - NATS stopped for a while under load and started again: ingress answers 503 while it is
//!   down, everything reconnects by itself, and every event that got a 202 is delivered;
//! - `kill -9` of Rivulet mid-flow: every event that got a 202 is delivered after a restart.
//!
//! The server binary is `RIVULET_NATS_SERVER`, else `nats-server` from `/usr/sbin` or `PATH`;
//! without one the tests say so and skip.

use rivulet_testkit as support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::durability::{Load, LoadOutcome, wait_all_delivered};
use support::{ChildServer, Recorder, apply, free_port, wait_for};

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

    let load = Load::start(format!("{}/{NS}/{BROKER}", _server.base), 4);
    load.wait_accepted(200).await;
    nats.stop();
    let accepted_at_stop = load.accepted_count();
    let unavailable_before = load.status_count(503);
    // Down for a while, under load.
    let down = Instant::now();
    wait_for("ingress to answer 503", Duration::from_secs(30), || {
        let n = load.status_count(503);
        async move { (n > unavailable_before + 20).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(down.elapsed())).await;
    let accepted_while_down = load.accepted_count() - accepted_at_stop;
    nats.run();
    let accepted_at_start = load.accepted_count();
    load.wait_accepted(accepted_at_start + 200).await;
    let LoadOutcome {
        accepted, statuses, ..
    } = load.finish().await;
    wait_all_delivered(&recorder, &accepted, DELIVERY_DEADLINE).await;
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
    let server = setup(&nats.url(), data.path(), "3s", &recorder).await;

    let broker_url = format!("{}/{NS}/{BROKER}", server.base);
    support::durability::kill_9_loses_no_acknowledged_event(
        server,
        &broker_url,
        &recorder,
        300,
        "NATS JetStream",
    )
    .await;
}
