//! Soak: mixed load on `rivulet serve` for a long time with faults injected, sampling memory
//! and checking that every event that got a `202` reached its subscriber at least once.
//!
//! Run with `cargo bench --bench soak`. Settings (environment):
//! - `RIVULET_SOAK_SECONDS`: load duration (default 3600);
//! - `RIVULET_SOAK_RATE`: events posted per second (default 200);
//! - `RIVULET_SOAK_KILL_EVERY`: seconds between `kill -9` and restart of the Rivulet process
//!   (default 300; 0 for none);
//! - `RIVULET_SOAK_OUTAGE_EVERY`: seconds between 20 s subscriber outages (all `503`)
//!   (default 240; 0 for none);
//! - `RIVULET_SOAK_DISK_FULL_EVERY`: seconds between disk-full episodes (default 0, none): the
//!   data folder is then a small tmpfs, filled for 20 s and freed; needs root (mount).
//! - `RIVULET_SOAK_LOG`: a file Rivulet's warnings and errors are appended to (default: none).
//!
//! Faults all along: the subscriber answers 5% of requests with `500` and leaves 2% unanswered
//! past the delivery timeout. Load: binary, structured and batched events of 100 B to 16 KiB
//! on one broker with three triggers (one per type family, one matching everything).
//!
//! Memory is `VmRSS` of the Rivulet process every 5 s, beside the same figure for a bare
//! tokio + axum server answering `202` under the same load for the first minute (the
//! baseline). Figures go to `benches/results/soak.csv` and a plot to
//! `benches/results/soak.svg` (copied to `docs/soak.svg`). The run fails if an accepted event
//! was never delivered.

#[path = "support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{bare_server, env_number, free_port};

use plotters::prelude::*;
use serde_json::json;

const BARE_SERVER_ENV: &str = "RIVULET_SOAK_BARE_LISTEN";
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const OUTAGE: Duration = Duration::from_secs(20);
/// The trigger delivery timeout; the subscriber's hung answers wait longer than this.
const DELIVERY_TIMEOUT: &str = "PT2S";
const HANG: Duration = Duration::from_secs(3);
const TYPES: [&str; 2] = ["dev.rivulet.soak.order", "dev.rivulet.soak.audit"];

fn main() {
    if let Ok(listen) = std::env::var(BARE_SERVER_ENV) {
        bare_server(&listen);
        return;
    }
    rivulet::install_crypto_provider();
    let settings = Settings::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let report = runtime.block_on(soak(&settings));
    let results = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    let _ = std::fs::create_dir_all(&results);
    write_csv(&results.join("soak.csv"), &report.samples).expect("writing soak.csv");
    plot(&results.join("soak.svg"), &report, &settings).expect("plotting soak.svg");
    let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/soak.svg");
    let _ = std::fs::copy(results.join("soak.svg"), docs);
    report.print(&settings);
    if report.lost > 0 {
        eprintln!("FAILED: {} accepted events never delivered", report.lost);
        std::process::exit(1);
    }
}

struct Settings {
    seconds: u64,
    rate: u64,
    kill_every: u64,
    outage_every: u64,
    disk_full_every: u64,
}

impl Settings {
    fn from_env() -> Self {
        Self {
            seconds: env_number("RIVULET_SOAK_SECONDS", 3600),
            rate: env_number("RIVULET_SOAK_RATE", 200),
            kill_every: env_number("RIVULET_SOAK_KILL_EVERY", 300),
            outage_every: env_number("RIVULET_SOAK_OUTAGE_EVERY", 240),
            disk_full_every: env_number("RIVULET_SOAK_DISK_FULL_EVERY", 0),
        }
    }
}

#[derive(Clone, Copy)]
struct Sample {
    seconds: f64,
    rss_mib: f64,
    baseline_mib: Option<f64>,
    accepted: u64,
    refused: u64,
    delivered: u64,
    restarts: u64,
}

struct Report {
    samples: Vec<Sample>,
    accepted: u64,
    refused: u64,
    delivered_unique: u64,
    lost: u64,
    restarts: u64,
    outages: u64,
    disk_full: u64,
    subscriber_requests: u64,
    drain_seconds: f64,
}

impl Report {
    fn print(&self, settings: &Settings) {
        let first = self.samples.iter().find(|s| s.seconds >= 60.0);
        let last = self.samples.last();
        let peak = self.samples.iter().map(|s| s.rss_mib).fold(0.0, f64::max);
        println!(
            "soak: {} s at {} events/s; {} kill -9 restarts, {} subscriber outages, {} disk-full episodes",
            settings.seconds, settings.rate, self.restarts, self.outages, self.disk_full
        );
        println!(
            "accepted {} (refused {}), delivered {} distinct ids ({} subscriber requests), lost {}; drained in {:.0} s",
            self.accepted,
            self.refused,
            self.delivered_unique,
            self.subscriber_requests,
            self.lost,
            self.drain_seconds
        );
        if let (Some(first), Some(last)) = (first, last) {
            println!(
                "RSS after 1 min {:.1} MiB, at the end {:.1} MiB, peak {peak:.1} MiB",
                first.rss_mib, last.rss_mib
            );
        }
        if let Some(baseline) = self
            .samples
            .iter()
            .filter_map(|s| s.baseline_mib)
            .next_back()
        {
            println!("baseline (bare axum server under the same load): {baseline:.1} MiB");
        }
    }
}

/// What the subscriber saw, and how it behaves now.
#[derive(Default)]
struct SubscriberState {
    delivered: Mutex<HashSet<String>>,
    requests: AtomicU64,
    outage: AtomicBool,
}

async fn soak(settings: &Settings) -> Report {
    let subscriber = Arc::new(SubscriberState::default());
    let subscriber_url = start_subscriber(subscriber.clone()).await;
    let folder = tempfile::tempdir().expect("a work folder");
    let data = folder.path().join("data");
    std::fs::create_dir_all(&data).expect("the data folder");
    let disk_full = settings.disk_full_every > 0 && mount_tmpfs(&data);
    let mut rivulet = Rivulet::start(&data);
    apply_resources(&rivulet.api, &subscriber_url).await;

    let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
    let refused = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(post_load(
        rivulet.base.clone(),
        settings.rate,
        accepted.clone(),
        refused.clone(),
        stop.clone(),
    ));
    // The baseline under the same load shape, for the first minute.
    let baseline = Bare::start();
    let baseline_stop = Arc::new(AtomicBool::new(false));
    let baseline_load = tokio::spawn(post_load(
        baseline.base.clone(),
        settings.rate,
        Arc::default(),
        Arc::new(AtomicU64::new(0)),
        baseline_stop.clone(),
    ));
    let mut baseline = Some((baseline, baseline_load));

    let started = Instant::now();
    let mut samples = Vec::new();
    let (mut restarts, mut outages, mut disk_full_episodes) = (0, 0, 0);
    let mut next_kill = secs(settings.kill_every);
    let mut next_outage = secs(settings.outage_every);
    let mut next_disk_full = secs(settings.disk_full_every);
    let mut next_sample = Duration::ZERO;
    let end = Duration::from_secs(settings.seconds);
    while started.elapsed() < end {
        let now = started.elapsed();
        if now >= next_sample {
            let baseline_mib = baseline.as_ref().map(|(bare, _)| rss_mib(bare.child.id()));
            samples.push(Sample {
                seconds: now.as_secs_f64(),
                rss_mib: rss_mib(rivulet.child.id()),
                baseline_mib,
                accepted: accepted.lock().unwrap().len() as u64,
                refused: refused.load(Ordering::Relaxed),
                delivered: subscriber.delivered.lock().unwrap().len() as u64,
                restarts,
            });
            next_sample += SAMPLE_EVERY;
        }
        if now >= Duration::from_secs(60)
            && let Some((bare, load)) = baseline.take()
        {
            baseline_stop.store(true, Ordering::Relaxed);
            let _ = load.await;
            drop(bare);
        }
        if now >= next_kill {
            rivulet.kill9_and_restart();
            restarts += 1;
            next_kill += secs(settings.kill_every);
        }
        if now >= next_outage {
            subscriber.outage.store(true, Ordering::Relaxed);
            outages += 1;
            next_outage += secs(settings.outage_every);
        }
        if subscriber.outage.load(Ordering::Relaxed)
            && now >= next_outage.saturating_sub(secs(settings.outage_every)) + OUTAGE
        {
            subscriber.outage.store(false, Ordering::Relaxed);
        }
        if disk_full && now >= next_disk_full {
            fill_disk_for(&data, OUTAGE).await;
            disk_full_episodes += 1;
            next_disk_full += secs(settings.disk_full_every);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = load.await;
    subscriber.outage.store(false, Ordering::Relaxed);

    // Every accepted id must arrive; retries with backoff may take a while after faults.
    let drain_started = Instant::now();
    let accepted: Vec<String> = accepted.lock().unwrap().clone();
    let mut missing = accepted.len();
    while drain_started.elapsed() < Duration::from_secs(300) {
        missing = {
            let delivered = subscriber.delivered.lock().unwrap();
            accepted
                .iter()
                .filter(|id| !delivered.contains(*id))
                .count()
        };
        if missing == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    samples.push(Sample {
        seconds: started.elapsed().as_secs_f64(),
        rss_mib: rss_mib(rivulet.child.id()),
        baseline_mib: None,
        accepted: accepted.len() as u64,
        refused: refused.load(Ordering::Relaxed),
        delivered: subscriber.delivered.lock().unwrap().len() as u64,
        restarts,
    });
    drop(rivulet);
    if disk_full {
        let _ = Command::new("umount").arg(&data).status();
    }
    Report {
        samples,
        accepted: accepted.len() as u64,
        refused: refused.load(Ordering::Relaxed),
        delivered_unique: subscriber.delivered.lock().unwrap().len() as u64,
        lost: missing as u64,
        restarts,
        outages,
        disk_full: disk_full_episodes,
        subscriber_requests: subscriber.requests.load(Ordering::Relaxed),
        drain_seconds: drain_started.elapsed().as_secs_f64(),
    }
}

fn secs(seconds: u64) -> Duration {
    if seconds == 0 {
        Duration::MAX / 2
    } else {
        Duration::from_secs(seconds)
    }
}

/// The Rivulet child process; restarted on the same ports and data folder.
struct Rivulet {
    child: Child,
    listen: String,
    api_listen: String,
    data: PathBuf,
    base: String,
    api: String,
}

impl Rivulet {
    fn start(data: &Path) -> Self {
        let listen = format!("127.0.0.1:{}", free_port());
        let api_listen = format!("127.0.0.1:{}", free_port());
        let child = Self::spawn(&listen, &api_listen, data);
        Self {
            child,
            base: format!("http://{listen}"),
            api: format!("http://{api_listen}"),
            listen,
            api_listen,
            data: data.to_path_buf(),
        }
    }

    fn spawn(listen: &str, api_listen: &str, data: &Path) -> Child {
        // Loopback only: the benchmark applies resources without a token.
        Command::new(env!("CARGO_BIN_EXE_rivulet"))
            .args(["serve", "--listen", listen, "--api-listen", api_listen])
            .args(["--api-auth", "none", "--data-dir"])
            .arg(data)
            .env("RIVULET_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(server_log())
            .spawn()
            .expect("rivulet starts")
    }

    fn kill9_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(&self.listen, &self.api_listen, &self.data);
    }
}

impl Drop for Rivulet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The baseline process: this executable re-run as a bare server.
struct Bare {
    child: Child,
    base: String,
}

impl Bare {
    fn start() -> Self {
        let listen = format!("127.0.0.1:{}", free_port());
        let child = Command::new(std::env::current_exe().expect("the benchmark's executable"))
            .env(BARE_SERVER_ENV, &listen)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the bare server starts");
        Self {
            child,
            base: format!("http://{listen}"),
        }
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn apply_resources(api: &str, subscriber: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let delivery = json!({
        "retry": 30, "backoffPolicy": "exponential", "backoffDelay": "PT0.2S",
        "timeout": DELIVERY_TIMEOUT,
    });
    let triggers = [
        ("orders", Some(TYPES[0])),
        ("audits", Some(TYPES[1])),
        ("everything", None),
    ];
    for (name, kind) in triggers {
        let filter = kind.map_or_else(|| json!({}), |t| json!({"attributes": {"type": t}}));
        let trigger = json!({
            "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "broker": "default", "filter": filter,
                "subscriber": {"uri": format!("{subscriber}{name}")},
                "delivery": delivery,
            }
        });
        let url = format!("{api}/apis/eventing.knative.dev/v1/namespaces/default/triggers/{name}");
        loop {
            match client.put(&url).json(&trigger).send().await {
                Ok(response) if response.status().is_success() => break,
                Ok(response) if response.status().is_client_error() => panic!(
                    "trigger {name} refused: {}",
                    response.text().await.unwrap_or_default()
                ),
                _ => {
                    assert!(Instant::now() < deadline, "rivulet never took the triggers");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    // Ready triggers, so the first events reach them.
    for (name, _) in triggers {
        let url = format!("{api}/apis/eventing.knative.dev/v1/namespaces/default/triggers/{name}");
        let remaining = deadline.saturating_duration_since(Instant::now());
        rivulet_testkit::wait_for(
            &format!("trigger {name} to become ready"),
            remaining,
            || async {
                let response = client.get(&url).send().await.ok()?;
                let object = response.json::<serde_json::Value>().await.ok()?;
                rivulet_testkit::ready_condition(&object)
                    .is_some_and(|ready| ready["status"] == "True")
                    .then_some(())
            },
        )
        .await;
    }
}

/// Posts at `rate` events per second, in a mix of modes and sizes, recording accepted ids.
async fn post_load(
    base: String,
    rate: u64,
    accepted: Arc<Mutex<Vec<String>>>,
    refused: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    const WORKERS: u64 = 16;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client");
    let url = format!("{base}/default/default");
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let (client, url, accepted, refused, stop) = (
                client.clone(),
                url.clone(),
                accepted.clone(),
                refused.clone(),
                stop.clone(),
            );
            let every = Duration::from_secs_f64(WORKERS as f64 / rate.max(1) as f64);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    n += 1;
                    let ids: Vec<String> = match n % 10 {
                        // One batch in ten: three events in one request.
                        0 => (0..3).map(|k| format!("w{worker}-{n}-{k}")).collect(),
                        _ => vec![format!("w{worker}-{n}")],
                    };
                    let size = [100, 1_000, 16_384][(n % 3) as usize];
                    let data = "x".repeat(size);
                    let kind = TYPES[(n % 2) as usize];
                    let request = match n % 10 {
                        0 => client
                            .post(&url)
                            .header("content-type", "application/cloudevents-batch+json")
                            .body(
                                serde_json::to_vec(
                                    &ids.iter()
                                        .map(|id| structured(id, kind, &data))
                                        .collect::<Vec<_>>(),
                                )
                                .expect("JSON"),
                            ),
                        1 | 5 => client
                            .post(&url)
                            .header("content-type", "application/cloudevents+json")
                            .body(
                                serde_json::to_vec(&structured(&ids[0], kind, &data))
                                    .expect("JSON"),
                            ),
                        _ => client
                            .post(&url)
                            .header("ce-specversion", "1.0")
                            .header("ce-id", &ids[0])
                            .header("ce-source", "/bench/soak")
                            .header("ce-type", kind)
                            .header("content-type", "text/plain")
                            .body(data),
                    };
                    match request.send().await {
                        Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED => {
                            accepted.lock().unwrap().extend(ids);
                        }
                        _ => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
}

fn structured(id: &str, kind: &str, data: &str) -> serde_json::Value {
    json!({"specversion": "1.0", "id": id, "source": "/bench/soak", "type": kind,
           "datacontenttype": "text/plain", "data": data})
}

/// The subscriber: records ids it answered 2xx for; 5% `500`, 2% hung past the delivery
/// timeout, and everything `503` during an outage.
async fn start_subscriber(state: Arc<SubscriberState>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("the subscriber binds");
    let url = format!("http://{}/", listener.local_addr().expect("an address"));
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let state = state.clone();
        async move {
            let n = state.requests.fetch_add(1, Ordering::Relaxed);
            if state.outage.load(Ordering::Relaxed) {
                return axum::http::StatusCode::SERVICE_UNAVAILABLE;
            }
            // A fixed pattern rather than randomness: every run injects the same faults.
            match n % 100 {
                7 | 31 | 54 | 77 | 93 => return axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                13 | 66 => {
                    tokio::time::sleep(HANG).await;
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                _ => {}
            }
            let id = request
                .headers()
                .get("ce-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let id = match id {
                Some(id) => Some(id),
                None => {
                    let body = axum::body::to_bytes(request.into_body(), 1 << 20)
                        .await
                        .unwrap_or_default();
                    serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["id"].as_str().map(str::to_owned))
                }
            };
            match id {
                Some(id) => {
                    state.delivered.lock().unwrap().insert(id);
                    axum::http::StatusCode::ACCEPTED
                }
                None => axum::http::StatusCode::BAD_REQUEST,
            }
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

/// Where Rivulet's log goes: appended to the file `RIVULET_SOAK_LOG` names (warnings and
/// errors, across restarts), else nowhere.
fn server_log() -> Stdio {
    let Ok(path) = std::env::var("RIVULET_SOAK_LOG") else {
        return Stdio::null();
    };
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        Ok(file) => Stdio::from(file),
        Err(error) => panic!("cannot open RIVULET_SOAK_LOG {path}: {error}"),
    }
}

/// A 64 MiB tmpfs over the data folder, so filling it is cheap; false (with the reason) when
/// it cannot be mounted.
fn mount_tmpfs(data: &Path) -> bool {
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
        .arg(data)
        .status();
    match status {
        Ok(status) if status.success() => true,
        other => {
            eprintln!("disk-full episodes skipped: cannot mount a tmpfs (needs root): {other:?}");
            false
        }
    }
}

/// Fills the data folder's file system for `hold`, then frees it.
async fn fill_disk_for(data: &Path, hold: Duration) {
    let filler = data.join("soak-filler");
    let _ = Command::new("fallocate")
        .args(["-l", "1G"])
        .arg(&filler)
        .status();
    // fallocate refuses more than the free space: fill what is left with dd.
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "status=none"])
        .arg(format!("of={}", filler.display()))
        .status();
    tokio::time::sleep(hold).await;
    let _ = std::fs::remove_file(&filler);
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn write_csv(path: &Path, samples: &[Sample]) -> std::io::Result<()> {
    let mut text =
        String::from("seconds,rss_mib,baseline_rss_mib,accepted,refused,delivered,restarts\n");
    for s in samples {
        text.push_str(&format!(
            "{:.0},{:.1},{},{},{},{},{}\n",
            s.seconds,
            s.rss_mib,
            s.baseline_mib
                .map_or_else(String::new, |m| format!("{m:.1}")),
            s.accepted,
            s.refused,
            s.delivered,
            s.restarts
        ));
    }
    std::fs::write(path, text)
}

fn plot(path: &Path, report: &Report, settings: &Settings) -> Result<(), String> {
    let failed = |e: String| format!("plotting the soak: {e}");
    let samples = &report.samples;
    let end = samples.last().map_or(1.0, |s| s.seconds.max(1.0)) / 60.0;
    let top_mib = samples
        .iter()
        .map(|s| s.rss_mib.max(s.baseline_mib.unwrap_or(0.0)))
        .filter(|m| m.is_finite())
        .fold(10.0, f64::max)
        * 1.2;
    let top_events = samples.iter().map(|s| s.accepted).max().unwrap_or(1).max(1) as f64 * 1.1;
    let root = SVGBackend::new(path, (1200, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(e.to_string()))?;
    let (upper, lower) = root.split_vertically(400);
    let title = format!(
        "Rivulet soak: {} min at {} events/s, {} kill -9 restarts, {} subscriber outages, lost {}",
        settings.seconds / 60,
        settings.rate,
        report.restarts,
        report.outages,
        report.lost
    );
    let mut memory = ChartBuilder::on(&upper)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..top_mib)
        .map_err(|e| failed(e.to_string()))?;
    memory
        .configure_mesh()
        .x_desc("minutes")
        .y_desc("RSS MiB")
        .draw()
        .map_err(|e| failed(e.to_string()))?;
    memory
        .draw_series(LineSeries::new(
            samples
                .iter()
                .filter(|s| s.rss_mib.is_finite())
                .map(|s| (s.seconds / 60.0, s.rss_mib)),
            &BLUE,
        ))
        .map_err(|e| failed(e.to_string()))?
        .label("rivulet serve")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    memory
        .draw_series(LineSeries::new(
            samples
                .iter()
                .filter_map(|s| s.baseline_mib.map(|m| (s.seconds / 60.0, m))),
            &BLACK,
        ))
        .map_err(|e| failed(e.to_string()))?
        .label("bare axum server (first minute)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
    memory
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .map_err(|e| failed(e.to_string()))?;
    let mut events = ChartBuilder::on(&lower)
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..top_events)
        .map_err(|e| failed(e.to_string()))?;
    events
        .configure_mesh()
        .x_desc("minutes")
        .y_desc("events")
        .draw()
        .map_err(|e| failed(e.to_string()))?;
    for (label, color, value) in [
        (
            "accepted (202)",
            GREEN,
            (|s: &Sample| s.accepted) as fn(&Sample) -> u64,
        ),
        ("delivered (distinct ids)", RED, |s: &Sample| s.delivered),
        ("refused (503 or no answer)", MAGENTA, |s: &Sample| {
            s.refused
        }),
    ] {
        events
            .draw_series(LineSeries::new(
                samples.iter().map(|s| (s.seconds / 60.0, value(s) as f64)),
                &color,
            ))
            .map_err(|e| failed(e.to_string()))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
    }
    events
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .map_err(|e| failed(e.to_string()))?;
    root.present().map_err(|e| failed(e.to_string()))
}
