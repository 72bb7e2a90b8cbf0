//! Footprint of `rivulet serve`: start-up time to ready and resident memory idle, with
//! 10,000 triggers, and under load, and the time from a restart to the first `202`, measured
//! beside a bare HTTP server in the same run.
//!
//! Run with `cargo bench --bench footprint` (release build; `RIVULET_BINARY` names another
//! `rivulet` to measure, such as the `dist` profile's). `RIVULET_BENCH_TRIGGERS` sets
//! the trigger count (default 10,000) and `RIVULET_BENCH_SECONDS` the load duration
//! (default 5).
//!
//! Method:
//! - Each process is started fresh on a free port: the `rivulet` binary of this build
//!   (`rivulet serve` with its embedded default broker, a fresh data folder), and as the
//!   baseline this benchmark's own executable re-run as a bare tokio + axum server answering
//!   `202` (the smallest HTTP server a Rust service starts from).
//! - Start-up: from spawning the process to the first `200` from `GET /readyz` (the bare
//!   server answers every path), median of 5 starts.
//! - Memory: `VmRSS` from `/proc/{pid}/status` after 2 s idle; after applying the triggers
//!   (exact `type` filters that match nothing, subscriber `http://127.0.0.1:9/`) and waiting
//!   until the last is Ready; and the peak (`VmHWM`) after posting events with 32 connections
//!   for the load duration.
//! - Restart: the process is stopped with `kill -9` and started again on the same data folder
//!   (with its triggers); from spawning to the first `202` from ingress for a posted event,
//!   and `VmRSS` 10 s later, once the triggers have resumed. The bare server restarts empty.
//!
//! The table goes to stdout and a JSON copy to `$CARGO_TARGET_DIR/bench-results/footprint.json`.

#[path = "support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::{bare_server, env_number, free_port};

use serde_json::{Value, json};

/// Set in the environment of the re-run executable to make it the bare baseline server.
const BARE_SERVER_ENV: &str = "RIVULET_FOOTPRINT_BARE_LISTEN";
const STARTS: usize = 5;
const LOAD_CONNECTIONS: usize = 32;

fn main() {
    if let Ok(listen) = std::env::var(BARE_SERVER_ENV) {
        bare_server(&listen);
        return;
    }
    rivulet::install_crypto_provider();
    let triggers: usize = env_number("RIVULET_BENCH_TRIGGERS", 10_000);
    let seconds: u64 = env_number("RIVULET_BENCH_SECONDS", 5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let rows = runtime.block_on(async {
        vec![
            measure(Target::Bare, triggers, seconds).await,
            measure(Target::Rivulet, triggers, seconds).await,
        ]
    });

    println!(
        "footprint on {} cores; {triggers} triggers; load {LOAD_CONNECTIONS} connections for {seconds} s",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<34} {:>12} {:>10} {:>18} {:>16} {:>12} {:>18} {:>20}",
        "process",
        "ready ms",
        "idle MiB",
        "+triggers MiB",
        "peak load MiB",
        "events/s",
        "restart→202 ms",
        "after restart MiB"
    );
    for row in &rows {
        println!(
            "{:<34} {:>12.1} {:>10.1} {:>18} {:>16.1} {:>12.0} {:>18.1} {:>20.1}",
            row.name,
            row.ready_ms,
            row.idle_mib,
            row.with_triggers_mib
                .map_or_else(|| "–".to_owned(), |m| format!("{m:.1}")),
            row.peak_mib,
            row.events_per_second,
            row.restart_to_accept_ms,
            row.after_restart_mib
        );
    }
    let path = results_path();
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let document = json!({
        "triggers": triggers,
        "load_seconds": seconds,
        "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
    });
    match std::fs::write(
        &path,
        serde_json::to_vec_pretty(&document).unwrap_or_default(),
    ) {
        Ok(()) => println!("written to {}", path.display()),
        Err(error) => eprintln!("cannot write {}: {error}", path.display()),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Target {
    Bare,
    Rivulet,
}

struct Row {
    name: &'static str,
    ready_ms: f64,
    idle_mib: f64,
    with_triggers_mib: Option<f64>,
    peak_mib: f64,
    events_per_second: f64,
    restart_to_accept_ms: f64,
    after_restart_mib: f64,
}

impl Row {
    fn to_json(&self) -> Value {
        json!({
            "process": self.name,
            "ready_ms": self.ready_ms,
            "idle_mib": self.idle_mib,
            "with_triggers_mib": self.with_triggers_mib,
            "peak_load_mib": self.peak_mib,
            "events_per_second": self.events_per_second,
            "restart_to_first_202_ms": self.restart_to_accept_ms,
            "after_restart_mib": self.after_restart_mib,
        })
    }
}

/// A started process, killed when dropped.
struct Running {
    child: Child,
    base: String,
    /// The resource API (Rivulet's own listener; the bare server's only one otherwise).
    api: String,
    _data: Option<tempfile::TempDir>,
    /// How to start it again on the same ports and data folder.
    command: Vec<std::ffi::OsString>,
    env: Vec<(String, String)>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn spawn(target: Target) -> Running {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut api = format!("http://{listen}");
        let (mut command, data) = match target {
            Target::Bare => {
                let mut command =
                    Command::new(std::env::current_exe().expect("the benchmark's executable"));
                command.env(BARE_SERVER_ENV, &listen);
                (command, None)
            }
            Target::Rivulet => {
                let data = tempfile::tempdir().expect("a data folder");
                // `RIVULET_BINARY` measures another build, e.g. `target/dist/rivulet`.
                let binary = std::env::var_os("RIVULET_BINARY")
                    .unwrap_or_else(|| env!("CARGO_BIN_EXE_rivulet").into());
                let mut command = Command::new(binary);
                let api_listen = format!("127.0.0.1:{}", free_port());
                api = format!("http://{api_listen}");
                // Loopback only: the benchmark applies triggers without a token.
                command
                    .args(["serve", "--listen", &listen, "--api-listen", &api_listen])
                    .args(["--api-auth", "none", "--data-dir"])
                    .arg(data.path())
                    .env("RIVULET_LOG", "warn");
                (command, Some(data))
            }
        };
        let program = std::iter::once(command.get_program().to_owned())
            .chain(command.get_args().map(ToOwned::to_owned))
            .collect();
        let env = command
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_str()?.to_owned(), v?.to_str()?.to_owned())))
            .collect();
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the process starts");
        Running {
            child,
            base: format!("http://{listen}"),
            api,
            _data: data,
            command: program,
            env,
        }
    }

    /// `kill -9`, then the same command again.
    fn kill9_and_respawn(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the process starts again");
    }

    fn rss_mib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc/{pid}/status is readable");
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(f64::NAN);
        kib / 1024.0
    }
}

async fn measure(target: Target, triggers: usize, seconds: u64) -> Row {
    let client = reqwest::Client::new();
    let mut starts = Vec::new();
    for _ in 0..STARTS {
        let started = Instant::now();
        let process = Running::spawn(target);
        wait_ready(&client, &process.base).await;
        starts.push(started.elapsed().as_secs_f64() * 1_000.0);
    }
    starts.sort_by(f64::total_cmp);
    let ready_ms = starts[STARTS / 2];

    let process = Running::spawn(target);
    wait_ready(&client, &process.base).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_mib = process.rss_mib("VmRSS:");
    let with_triggers_mib = if target == Target::Rivulet {
        apply_triggers(&client, &process.api, triggers).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        Some(process.rss_mib("VmRSS:"))
    } else {
        None
    };
    let events_per_second = load(&process.base, Duration::from_secs(seconds)).await;
    let peak_mib = process.rss_mib("VmHWM:");
    let mut process = process;
    let restarted = Instant::now();
    process.kill9_and_respawn();
    wait_accepting(&client, &process.base).await;
    let restart_to_accept_ms = restarted.elapsed().as_secs_f64() * 1_000.0;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after_restart_mib = process.rss_mib("VmRSS:");
    Row {
        name: match target {
            Target::Bare => "bare axum server answering 202",
            Target::Rivulet => "rivulet serve (embedded channel)",
        },
        ready_ms,
        idle_mib,
        with_triggers_mib,
        peak_mib,
        events_per_second,
        restart_to_accept_ms,
        after_restart_mib,
    }
}

/// Posts one event until ingress answers `202`.
async fn wait_accepting(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let response = client
            .post(format!("{base}/default/default"))
            .header("ce-specversion", "1.0")
            .header("ce-id", "restart-probe")
            .header("ce-source", "/bench/footprint")
            .header("ce-type", "dev.rivulet.bench.load")
            .body("{}")
            .send()
            .await;
        if response.is_ok_and(|r| r.status() == reqwest::StatusCode::ACCEPTED) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{base} never took an event again"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = client.get(format!("{base}/readyz")).send().await
            && response.status().is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "{base} never became ready");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn apply_triggers(client: &reqwest::Client, base: &str, count: usize) {
    for n in 0..count {
        let trigger = json!({
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {"name": format!("t{n}"), "namespace": "default"},
            "spec": {
                "broker": "default",
                "filter": {"attributes": {"type": format!("dev.rivulet.bench.none{n}")}},
                "subscriber": {"uri": "http://127.0.0.1:9/"}
            }
        });
        let url = format!("{base}/apis/eventing.knative.dev/v1/namespaces/default/triggers/t{n}");
        let response = client
            .put(url)
            .json(&trigger)
            .send()
            .await
            .expect("applying a trigger");
        assert!(
            response.status().is_success(),
            "applying trigger t{n}: {}",
            response.status()
        );
    }
    // The last trigger Ready means the control loop went through all of them.
    let last = format!(
        "{base}/apis/eventing.knative.dev/v1/namespaces/default/triggers/t{}",
        count - 1
    );
    rivulet_testkit::wait_for(
        "the triggers to become ready",
        Duration::from_secs(120),
        || async {
            is_ready(client.get(&last).send().await.ok()?)
                .await
                .then_some(())
        },
    )
    .await;
}

/// Posts binary-mode CloudEvents to the default broker for `duration`; returns accepted/s.
async fn load(base: &str, duration: Duration) -> f64 {
    let client = reqwest::Client::new();
    let url = format!("{base}/default/default");
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..LOAD_CONNECTIONS)
        .map(|worker| {
            let (client, url, stop, accepted) =
                (client.clone(), url.clone(), stop.clone(), accepted.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let response = client
                        .post(&url)
                        .header("ce-specversion", "1.0")
                        .header("ce-id", format!("{worker}-{n}"))
                        .header("ce-source", "/bench/footprint")
                        .header("ce-type", "dev.rivulet.bench.load")
                        .header("content-type", "application/json")
                        .body(r#"{"order":42,"amount":17.5,"currency":"EUR"}"#)
                        .send()
                        .await;
                    if response.is_ok_and(|r| r.status().is_success()) {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.await;
    }
    accepted.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn results_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench-results").join("footprint.json")
}

/// Whether the object in `response` has a `Ready` condition that is `True`.
async fn is_ready(response: reqwest::Response) -> bool {
    let object = response.json::<Value>().await.unwrap_or_default();
    rivulet_testkit::ready_condition(&object).is_some_and(|ready| ready["status"] == "True")
}
