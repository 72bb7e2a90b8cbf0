//! Broker throughput and latency, measured in one run beside a bare HTTP handler.
//!
//! Run with `cargo bench --bench broker`. `RIVULET_BENCH_SECONDS` sets the measured seconds
//! of each row (default 5; a warm-up of a fifth of that, at least 0.2 s, comes first) and
//! `RIVULET_BENCH_CONNECTIONS` the number of load-generator connections (default 32).
//! `RIVULET_BENCH_SECTIONS` picks sections to run, a comma list of `ingress`,
//! `e2e-throughput`, `e2e-latency` and `fanout` (default all), and
//! `RIVULET_BENCH_MAX_TRIGGERS` caps the largest fan-out trigger count (default 10,000).
//!
//! Sections:
//! - `ingress`: events posted as fast as answered, no trigger; beside a bare axum handler.
//! - `e2e-throughput` / `e2e-latency`: one matching trigger, closed loop / fixed rate.
//! - `fanout`: 1, 10, 100, 1,000 and 10,000 triggers whose filters never match, plus one
//!   trigger that matches every event, on one server per (channel, filter kind), triggers
//!   added between rows. Filter kinds: `exact` on `type` (memory and embedded channels),
//!   `prefix` on `type` and `cesql` (memory channel only, keeping the run time bounded).
//!   Load is closed loop like `e2e-throughput`, so the rate is what ingress and dispatch
//!   sustain together; the subscriber must receive each accepted event once, from the
//!   matching trigger alone.
//!
//! Method, identical for every row that is compared:
//! - Two tokio runtimes in this process, two worker threads each: `rv-sut` runs the system
//!   under test (the bare handler or the Rivulet server), `rv-load` runs the load generator
//!   and the subscriber. Both share the machine's cores, so figures include the generator's
//!   cost; the CPU columns split it per side (from `/proc/self/task`).
//! - The generator keeps N HTTP/1.1 keep-alive connections (hyper, one task each, one request
//!   in flight per connection) posting binary-mode CloudEvents with a ~100-byte JSON payload.
//! - Each row gets a fresh server and data folder, shut down before the next row starts.
//!
//! The table goes to stdout and a JSON copy to `$CARGO_TARGET_DIR/bench-results/broker.json`
//! (`target/` in the package when the variable is unset).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper_util::rt::TokioIo;
use rivulet::server::{RunningServer, ServeOptions};
use serde_json::{Value, json};
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;

const NAMESPACE: &str = "bench";
const BROKER: &str = "load";
const EVENT_TYPE: &str = "dev.rivulet.bench.order";
/// Extension carrying the send time, in nanoseconds since [`epoch`].
const SENT_AT_HEADER: &str = "ce-benchsentat";
/// The end-to-end latency rows send at this fixed rate.
const FIXED_RATE: u32 = 1_000;
/// Connections used by the fixed-rate rows: each sends every 16 ms, far longer than an
/// ingress round trip, so sends are not held back by slow answers.
const FIXED_RATE_CONNECTIONS: usize = 16;
/// Events allowed between ingress and subscriber in the end-to-end throughput rows; keeps
/// the backlog bounded so the figure is a sustainable rate, not ingress outrunning delivery.
const E2E_WINDOW: usize = 1_024;
/// Largest latency recorded, in microseconds.
const MAX_MICROS: u64 = 60_000_000;
/// Non-matching trigger counts of the fan-out rows, up to `RIVULET_BENCH_MAX_TRIGGERS`.
const TRIGGER_COUNTS: [usize; 5] = [1, 10, 100, 1_000, 10_000];
/// Section names accepted by `RIVULET_BENCH_SECTIONS`, in the order they run.
const SECTIONS: [&str; 4] = ["ingress", "e2e-throughput", "e2e-latency", "fanout"];

/// The instant send times are measured from; shared by generator and subscriber.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos_since_epoch() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// A ~100-byte JSON payload, the same for every request.
fn payload() -> Bytes {
    Bytes::from_static(
        br#"{"orderId":"4f1c2a9e-7b3d","customer":"c-10293","amount":129.95,"currency":"EUR","items":3}"#,
    )
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    warmup: Duration,
    measure: Duration,
    connections: usize,
    max_triggers: usize,
    /// Which of [`SECTIONS`] run.
    sections: [bool; SECTIONS.len()],
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        let seconds = match std::env::var("RIVULET_BENCH_SECONDS") {
            Ok(text) => text
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0)
                .ok_or_else(|| {
                    format!("RIVULET_BENCH_SECONDS must be a positive number, not {text:?}")
                })?,
            Err(_) => 5.0,
        };
        let connections = match std::env::var("RIVULET_BENCH_CONNECTIONS") {
            Ok(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=4096).contains(n))
                .ok_or_else(|| {
                    format!("RIVULET_BENCH_CONNECTIONS must be between 1 and 4096, not {text:?}")
                })?,
            Err(_) => 32,
        };
        let max_triggers = match std::env::var("RIVULET_BENCH_MAX_TRIGGERS") {
            Ok(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=100_000).contains(n))
                .ok_or_else(|| {
                    format!("RIVULET_BENCH_MAX_TRIGGERS must be between 1 and 100000, not {text:?}")
                })?,
            Err(_) => 10_000,
        };
        let sections = match std::env::var("RIVULET_BENCH_SECTIONS") {
            Ok(text) => parse_sections(&text)?,
            Err(_) => [true; SECTIONS.len()],
        };
        Ok(Settings {
            warmup: Duration::from_secs_f64((seconds / 5.0).max(0.2)),
            measure: Duration::from_secs_f64(seconds),
            connections,
            max_triggers,
            sections,
        })
    }

    fn runs(&self, section: &str) -> bool {
        SECTIONS
            .iter()
            .position(|known| *known == section)
            .is_some_and(|i| self.sections[i])
    }

    /// The fan-out trigger counts: the standard ones below the cap, then the cap.
    fn trigger_counts(&self) -> Vec<usize> {
        let mut counts: Vec<usize> = TRIGGER_COUNTS
            .into_iter()
            .filter(|count| *count < self.max_triggers)
            .collect();
        counts.push(self.max_triggers);
        counts
    }
}

fn parse_sections(text: &str) -> Result<[bool; SECTIONS.len()], String> {
    let mut chosen = [false; SECTIONS.len()];
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let index = SECTIONS
            .iter()
            .position(|known| *known == name)
            .ok_or_else(|| {
                format!(
                    "RIVULET_BENCH_SECTIONS: unknown section {name:?}, known: {}",
                    SECTIONS.join(", ")
                )
            })?;
        chosen[index] = true;
    }
    if chosen.contains(&true) {
        Ok(chosen)
    } else {
        Err("RIVULET_BENCH_SECTIONS names no section".into())
    }
}

// ---------------------------------------------------------------------------------------
// CPU accounting per side, from /proc/self/task/*/stat.

/// CPU time used so far by the threads of each side, and by the whole machine.
#[derive(Debug, Clone, Copy, Default)]
struct CpuSample {
    server: Duration,
    load: Duration,
    other: Duration,
    /// Busy time of all cores (everything but idle and iowait), from `/proc/stat`.
    machine: Duration,
}

fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|ticks| *ticks > 0)
        .unwrap_or(100)
}

fn cpu_sample() -> CpuSample {
    static TICKS: OnceLock<u64> = OnceLock::new();
    let ticks = *TICKS.get_or_init(clock_ticks_per_second);
    let mut sample = CpuSample {
        machine: machine_busy(ticks),
        ..CpuSample::default()
    };
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return sample;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // The thread name sits in parentheses and may hold spaces; fields follow the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
        let used: u64 = [11, 12]
            .iter()
            .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
            .sum();
        let used = Duration::from_secs_f64(used as f64 / ticks as f64);
        if name.starts_with("rv-load") {
            sample.load += used;
        } else if name.starts_with("rv-sut") || name.starts_with("rivulet-") {
            sample.server += used;
        } else {
            sample.other += used;
        }
    }
    sample
}

fn machine_busy(ticks: u64) -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Duration::ZERO;
    };
    let Some(total) = stat.lines().find(|line| line.starts_with("cpu ")) else {
        return Duration::ZERO;
    };
    // user nice system idle iowait irq softirq steal: idle and iowait are not busy.
    let busy: u64 = total
        .split_whitespace()
        .skip(1)
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .filter_map(|(_, value)| value.parse::<u64>().ok())
        .sum();
    Duration::from_secs_f64(busy as f64 / ticks as f64)
}

/// Average cores busy over a window: this process's two sides, and everything else on the
/// machine (other processes, which make figures noisier when they are busy).
#[derive(Debug, Clone, Copy, Default)]
struct CpuUse {
    server_cores: f64,
    load_cores: f64,
    outside_cores: f64,
}

fn cpu_use(before: CpuSample, after: CpuSample, window: Duration) -> CpuUse {
    let secs = window.as_secs_f64().max(1e-9);
    let cores =
        |after: Duration, before: Duration| after.saturating_sub(before).as_secs_f64() / secs;
    let ours = cores(
        after.server + after.load + after.other,
        before.server + before.load + before.other,
    );
    CpuUse {
        server_cores: cores(after.server, before.server),
        load_cores: cores(after.load, before.load),
        outside_cores: (cores(after.machine, before.machine) - ours).max(0.0),
    }
}

/// Waits until the server's threads are nearly idle (below 0.05 cores over 250 ms), so work
/// left over from setting up (reconciling, status writes) does not count in the next row.
/// Returns how long that took.
async fn settle() -> Duration {
    let started = Instant::now();
    let interval = Duration::from_millis(250);
    while started.elapsed() < Duration::from_secs(30) {
        let before = cpu_sample();
        tokio::time::sleep(interval).await;
        if cpu_use(before, cpu_sample(), interval).server_cores < 0.05 {
            break;
        }
    }
    started.elapsed()
}

// ---------------------------------------------------------------------------------------
// Subscriber: answers 200, counts, and records end-to-end latency from the send time.

struct Subscriber {
    received: AtomicU64,
    /// Events sent at or after this time (nanoseconds since [`epoch`]) are recorded.
    record_from: AtomicU64,
    latencies: Mutex<Histogram<u64>>,
    /// Credits of a closed-loop generator: one back per event received. Replaced between
    /// the rows of a server that keeps its subscriber (fan-out).
    credits: Mutex<Option<Arc<Semaphore>>>,
}

impl Subscriber {
    fn new(credits: Option<Arc<Semaphore>>) -> Arc<Self> {
        Arc::new(Subscriber {
            received: AtomicU64::new(0),
            record_from: AtomicU64::new(u64::MAX),
            latencies: Mutex::new(new_histogram()),
            credits: Mutex::new(credits),
        })
    }

    fn set_credits(&self, credits: Option<Arc<Semaphore>>) {
        *self
            .credits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = credits;
    }

    fn latencies(&self) -> Histogram<u64> {
        self.latencies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

async fn receive_event(
    State(subscriber): State<Arc<Subscriber>>,
    headers: HeaderMap,
) -> StatusCode {
    let now = nanos_since_epoch();
    subscriber.received.fetch_add(1, Ordering::Relaxed);
    if let Some(credits) = subscriber
        .credits
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
    {
        credits.add_permits(1);
    }
    let sent = headers
        .get(SENT_AT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(sent) = sent
        && sent >= subscriber.record_from.load(Ordering::Relaxed)
    {
        let latency = now.saturating_sub(sent) / 1_000;
        subscriber
            .latencies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .saturating_record(latency.max(1));
    }
    StatusCode::OK
}

/// Serves `router` on a free local port on the current runtime.
async fn serve_locally(router: axum::Router) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            eprintln!("bench: a local HTTP server stopped: {error}");
        }
    });
    Ok(addr)
}

async fn start_subscriber(subscriber: Arc<Subscriber>) -> std::io::Result<SocketAddr> {
    let router = axum::Router::new()
        .route("/", axum::routing::post(receive_event))
        .with_state(subscriber);
    serve_locally(router).await
}

/// The raw baseline: an axum handler that reads the body and answers 202.
async fn start_bare_handler() -> std::io::Result<SocketAddr> {
    let router = axum::Router::new().route(
        "/{namespace}/{broker}",
        axum::routing::post(|_body: Bytes| async { StatusCode::ACCEPTED }),
    );
    serve_locally(router).await
}

// ---------------------------------------------------------------------------------------
// Load generator.

#[derive(Clone)]
enum Pace {
    /// As fast as each connection gets answers.
    Max,
    /// As fast as possible while at most the semaphore's credits are unreceived.
    ClosedLoop(Arc<Semaphore>),
    /// A fixed total rate spread evenly over the connections.
    Fixed { per_second: u32 },
}

#[derive(Clone)]
struct LoadSpec {
    addr: SocketAddr,
    path: String,
    connections: usize,
    pace: Pace,
    warmup: Duration,
    measure: Duration,
}

#[derive(Default)]
struct LoadCounters {
    stop: AtomicBool,
    recording: AtomicBool,
    accepted: AtomicU64,
    refused: AtomicU64,
    /// Fixed-rate sends that left more than 2 ms after their scheduled time.
    late: AtomicU64,
}

struct LoadResult {
    /// Events answered 202 per second during the measured window.
    accepted_per_second: f64,
    /// Events the subscriber received per second during the window.
    delivered_per_second: Option<f64>,
    accepted_total: u64,
    refused_total: u64,
    late_sends: u64,
    /// Ingress round trips during the window, microseconds.
    request_latency: Histogram<u64>,
    cpu: CpuUse,
}

struct RequestTemplate {
    uri: hyper::Uri,
    host: HeaderValue,
    payload: Bytes,
}

impl RequestTemplate {
    fn build(&self, id: u64, sent_at: Option<u64>) -> Request<Full<Bytes>> {
        let mut builder = Request::post(self.uri.clone())
            .header(HOST, self.host.clone())
            .header("ce-specversion", HeaderValue::from_static("1.0"))
            .header("ce-id", id)
            .header("ce-source", HeaderValue::from_static("/bench/load"))
            .header("ce-type", HeaderValue::from_static(EVENT_TYPE))
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(sent_at) = sent_at {
            builder = builder.header(SENT_AT_HEADER, sent_at);
        }
        builder
            .body(Full::new(self.payload.clone()))
            .expect("a request from valid parts")
    }
}

/// One connection: sends requests one after the other until told to stop.
async fn drive_connection(
    spec: Arc<LoadSpec>,
    index: usize,
    counters: Arc<LoadCounters>,
    begin: Instant,
) -> Result<Histogram<u64>, String> {
    let stream = tokio::net::TcpStream::connect(spec.addr)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", spec.addr))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("cannot set TCP_NODELAY: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    tokio::spawn(connection);
    let template = RequestTemplate {
        uri: spec
            .path
            .parse()
            .map_err(|e| format!("bad path {:?}: {e}", spec.path))?,
        host: HeaderValue::from_str(&spec.addr.to_string()).expect("an address is a header"),
        payload: payload(),
    };
    let mut latencies = new_histogram();
    let end = begin + spec.warmup + spec.measure;
    let connections = spec.connections as u64;
    let mut sequence = 0u64;
    loop {
        if counters.stop.load(Ordering::Relaxed) {
            break;
        }
        let mut stamp_send_time = false;
        match &spec.pace {
            Pace::Max => {}
            Pace::ClosedLoop(credits) => match credits.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => break,
            },
            Pace::Fixed { per_second } => {
                let period = Duration::from_secs(1) / *per_second;
                let slot = sequence * connections + index as u64;
                let due = begin + period * u32::try_from(slot).unwrap_or(u32::MAX);
                if due >= end {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                if due.elapsed() > Duration::from_millis(2) {
                    counters.late.fetch_add(1, Ordering::Relaxed);
                }
                stamp_send_time = true;
            }
        }
        sequence += 1;
        let id = (index as u64) << 40 | sequence;
        let request = template.build(id, stamp_send_time.then(nanos_since_epoch));
        let recording = counters.recording.load(Ordering::Relaxed);
        let started = Instant::now();
        sender
            .ready()
            .await
            .map_err(|e| format!("connection closed: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status();
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading a response failed: {e}"))?;
        if recording {
            latencies.saturating_record(micros(started.elapsed()).max(1));
        }
        if status == StatusCode::ACCEPTED {
            counters.accepted.fetch_add(1, Ordering::Relaxed);
        } else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            if let Pace::ClosedLoop(credits) = &spec.pace {
                credits.add_permits(1);
            }
        }
    }
    Ok(latencies)
}

/// Runs one load pattern: warm-up, measured window, then stop. For fixed-rate loads it also
/// waits (up to 10 s) for the subscriber to receive everything that was accepted.
async fn run_load(
    spec: LoadSpec,
    subscriber: Option<Arc<Subscriber>>,
) -> Result<LoadResult, String> {
    settle().await;
    let spec = Arc::new(spec);
    let counters = Arc::new(LoadCounters::default());
    let begin = Instant::now() + Duration::from_millis(50);
    if let Some(subscriber) = &subscriber {
        let record_from = begin + spec.warmup;
        let nanos = record_from.duration_since(epoch()).as_nanos();
        subscriber
            .record_from
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
    let tasks: Vec<_> = (0..spec.connections)
        .map(|index| {
            tokio::spawn(drive_connection(
                spec.clone(),
                index,
                counters.clone(),
                begin,
            ))
        })
        .collect();

    tokio::time::sleep_until((begin + spec.warmup).into()).await;
    counters.recording.store(true, Ordering::Relaxed);
    let (accepted_before, received_before, cpu_before, window_start) = (
        counters.accepted.load(Ordering::Relaxed),
        subscriber
            .as_ref()
            .map(|s| s.received.load(Ordering::Relaxed)),
        cpu_sample(),
        Instant::now(),
    );
    tokio::time::sleep(spec.measure).await;
    let (accepted_after, received_after, cpu_after, window) = (
        counters.accepted.load(Ordering::Relaxed),
        subscriber
            .as_ref()
            .map(|s| s.received.load(Ordering::Relaxed)),
        cpu_sample(),
        window_start.elapsed(),
    );
    counters.recording.store(false, Ordering::Relaxed);
    counters.stop.store(true, Ordering::Relaxed);
    if let Pace::ClosedLoop(credits) = &spec.pace {
        credits.close();
    }

    let mut request_latency = new_histogram();
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(30), task).await {
            Ok(Ok(Ok(latencies))) => request_latency
                .add(latencies)
                .map_err(|e| format!("merging histograms: {e}"))?,
            Ok(Ok(Err(error))) => return Err(error),
            Ok(Err(panic)) => return Err(format!("a load task panicked: {panic}")),
            Err(_) => return Err("a load connection did not finish within 30 s".into()),
        }
    }
    let accepted_total = counters.accepted.load(Ordering::Relaxed);
    if let (Pace::Fixed { .. }, Some(subscriber)) = (&spec.pace, &subscriber) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while subscriber.received.load(Ordering::Relaxed) < accepted_total
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let seconds = window.as_secs_f64();
    Ok(LoadResult {
        accepted_per_second: (accepted_after - accepted_before) as f64 / seconds,
        delivered_per_second: received_after
            .zip(received_before)
            .map(|(after, before)| (after - before) as f64 / seconds),
        accepted_total,
        refused_total: counters.refused.load(Ordering::Relaxed),
        late_sends: counters.late.load(Ordering::Relaxed),
        request_latency,
        cpu: cpu_use(cpu_before, cpu_after, window),
    })
}

// ---------------------------------------------------------------------------------------
// Rivulet server and its resources, set up through the resource API.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Memory,
    Embedded,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Embedded => "embedded",
        }
    }
}

/// The filter dialect of a fan-out server's triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FilterKind {
    Exact,
    Prefix,
    Cesql,
}

impl FilterKind {
    fn name(self) -> &'static str {
        match self {
            FilterKind::Exact => "exact",
            FilterKind::Prefix => "prefix",
            FilterKind::Cesql => "cesql",
        }
    }

    /// The trigger's `filters`: matching every generated event, or (with the trigger's
    /// number) never matching one.
    fn filters(self, never_matching: Option<usize>) -> Value {
        let filter = match (self, never_matching) {
            (FilterKind::Exact, None) => json!({"exact": {"type": EVENT_TYPE}}),
            (FilterKind::Exact, Some(n)) => {
                json!({"exact": {"type": format!("dev.rivulet.bench.never.{n}")}})
            }
            (FilterKind::Prefix, None) => json!({"prefix": {"type": EVENT_TYPE}}),
            (FilterKind::Prefix, Some(n)) => {
                json!({"prefix": {"type": format!("dev.rivulet.bench.never.{n}.")}})
            }
            (FilterKind::Cesql, None) => json!({
                "cesql": format!("type = '{EVENT_TYPE}' AND source LIKE '/bench/%'")
            }),
            (FilterKind::Cesql, Some(n)) => json!({
                "cesql": format!("type = 'dev.rivulet.bench.never.{n}' AND source LIKE '/bench/%'")
            }),
        };
        json!([filter])
    }
}

/// The fan-out servers: each filter kind with the channels it runs on.
const FANOUT_RUNS: [(FilterKind, &[Backend]); 3] = [
    (FilterKind::Exact, &[Backend::Memory, Backend::Embedded]),
    (FilterKind::Prefix, &[Backend::Memory]),
    (FilterKind::Cesql, &[Backend::Memory]),
];

struct Rivulet {
    server: RunningServer,
    /// Keeps the data folder alive while the server runs.
    _data_dir: tempfile::TempDir,
    client: reqwest::Client,
}

impl Rivulet {
    async fn start() -> Result<Self, String> {
        let data_dir = tempfile::tempdir().map_err(|e| format!("no temporary folder: {e}"))?;
        let options = ServeOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.path().to_path_buf(),
            shutdown_grace: Duration::from_secs(1),
            ..ServeOptions::default()
        };
        let server = rivulet::server::start(options)
            .await
            .map_err(|e| format!("the server did not start: {e:#}"))?;
        Ok(Rivulet {
            server,
            _data_dir: data_dir,
            client: reqwest::Client::new(),
        })
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addr
    }

    async fn put(&self, path: &str, body: Value) -> Result<(), String> {
        let url = format!("{}{path}", self.server.base_url);
        let response = self
            .client
            .put(&url)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("PUT {path}: {e}"))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            let text = response.text().await.unwrap_or_default();
            Err(format!("PUT {path} answered {status}: {text}"))
        }
    }

    async fn get(&self, path: &str) -> Result<Value, String> {
        let url = format!("{}{path}", self.server.base_url);
        let response = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        response
            .json()
            .await
            .map_err(|e| format!("GET {path}: body is not JSON: {e}"))
    }

    /// Creates the broker on the chosen channel and waits until it is ready on that channel.
    async fn create_broker(&self, backend: Backend) -> Result<(), String> {
        let mut broker = json!({
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Broker",
            "metadata": {"name": BROKER, "namespace": NAMESPACE},
            "spec": {}
        });
        if backend == Backend::Memory {
            self.put(
                &format!("/api/v1/namespaces/{NAMESPACE}/configmaps/imc-channel"),
                json!({
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": "imc-channel", "namespace": NAMESPACE},
                    "data": {
                        "channel-template-spec":
                            "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\n"
                    }
                }),
            )
            .await?;
            broker["metadata"]["annotations"] =
                json!({"eventing.knative.dev/broker.class": "MTChannelBasedBroker"});
            broker["spec"]["config"] =
                json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "imc-channel"});
        }
        let path = format!("/apis/eventing.knative.dev/v1/namespaces/{NAMESPACE}/brokers/{BROKER}");
        self.put(&path, broker).await?;
        let expected = format!("{} channel", backend.name());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let object = self.get(&path).await?;
            let conditions = object
                .pointer("/status/conditions")
                .and_then(Value::as_array);
            let condition = |kind: &str| {
                conditions
                    .into_iter()
                    .flatten()
                    .find(|c| c["type"] == kind)
                    .cloned()
            };
            let ready = condition("Ready").is_some_and(|c| c["status"] == "True");
            let ingress = condition("IngressReady");
            if ready {
                let message = ingress.as_ref().and_then(|c| c["message"].as_str());
                return if message == Some(expected.as_str()) {
                    Ok(())
                } else {
                    Err(format!(
                        "broker is ready on {message:?}, expected {expected:?}"
                    ))
                };
            }
            if Instant::now() > deadline {
                return Err(format!("broker not ready after 20 s: {object}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Creates the triggers numbered `range`, 16 requests at a time, each with a `kind`
    /// filter that matches the generated events or never does.
    async fn create_triggers(
        &self,
        range: std::ops::Range<usize>,
        subscriber: SocketAddr,
        kind: FilterKind,
        matching: bool,
    ) -> Result<(), String> {
        let results: Vec<Result<(), String>> = futures::stream::iter(range)
            .map(|index| {
                let name = if matching {
                    format!("match{index}")
                } else {
                    format!("t{index:05}")
                };
                let body = json!({
                    "apiVersion": "eventing.knative.dev/v1",
                    "kind": "Trigger",
                    "metadata": {"name": name, "namespace": NAMESPACE},
                    "spec": {
                        "broker": BROKER,
                        "filters": kind.filters((!matching).then_some(index)),
                        "subscriber": {"uri": format!("http://{subscriber}/")}
                    }
                });
                let path =
                    format!("/apis/eventing.knative.dev/v1/namespaces/{NAMESPACE}/triggers/{name}");
                async move { self.put(&path, body).await }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Waits until `expected` triggers report Ready.
    async fn await_triggers_ready(&self, expected: usize) -> Result<(), String> {
        let path = format!("/apis/eventing.knative.dev/v1/namespaces/{NAMESPACE}/triggers");
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let list = self.get(&path).await?;
            let ready = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|item| {
                    item.pointer("/status/conditions")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
                .count();
            if ready >= expected {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "only {ready} of {expected} triggers ready after 300 s"
                ));
            }
            // Each poll lists every trigger; polling slowly keeps it from slowing the setup.
            let pause = if expected > 1_000 { 1_000 } else { 200 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios. Servers run on the `sut` runtime; generator, subscriber and API calls on `load`.

struct Runtimes {
    sut: Runtime,
    load: Runtime,
}

impl Runtimes {
    fn new() -> std::io::Result<Self> {
        let build = |name: &str| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name(name)
                .enable_all()
                .build()
        };
        Ok(Runtimes {
            sut: build("rv-sut")?,
            load: build("rv-load")?,
        })
    }

    fn start_rivulet(&self, backend: Backend) -> Result<Rivulet, String> {
        let rivulet = self.sut.block_on(Rivulet::start())?;
        self.load.block_on(rivulet.create_broker(backend))?;
        Ok(rivulet)
    }

    fn stop_rivulet(&self, rivulet: Rivulet) -> Result<(), String> {
        let Rivulet {
            server, _data_dir, ..
        } = rivulet;
        self.sut
            .block_on(server.shutdown())
            .map_err(|e| format!("server shutdown failed: {e:#}"))
    }
}

fn broker_path() -> String {
    format!("/{NAMESPACE}/{BROKER}")
}

fn load_spec(settings: &Settings, addr: SocketAddr, pace: Pace, connections: usize) -> LoadSpec {
    LoadSpec {
        addr,
        path: broker_path(),
        connections,
        pace,
        warmup: settings.warmup,
        measure: settings.measure,
    }
}

/// One line of the report.
struct Row {
    section: &'static str,
    label: String,
    result: LoadResult,
    /// Subscriber-side end-to-end latency, microseconds.
    e2e_latency: Option<Histogram<u64>>,
    note: String,
}

fn ingress_row(
    runtimes: &Runtimes,
    settings: &Settings,
    backend: Option<Backend>,
) -> Result<Row, String> {
    let (label, result) = match backend {
        None => {
            let addr = runtimes
                .sut
                .block_on(start_bare_handler())
                .map_err(|e| format!("bare handler: {e}"))?;
            let spec = load_spec(settings, addr, Pace::Max, settings.connections);
            (
                "bare axum handler (202)".to_string(),
                runtimes.load.block_on(run_load(spec, None))?,
            )
        }
        Some(backend) => {
            let rivulet = runtimes.start_rivulet(backend)?;
            let spec = load_spec(settings, rivulet.addr(), Pace::Max, settings.connections);
            let result = runtimes.load.block_on(run_load(spec, None));
            runtimes.stop_rivulet(rivulet)?;
            (format!("broker, {} channel", backend.name()), result?)
        }
    };
    Ok(Row {
        section: "ingress",
        label,
        result,
        e2e_latency: None,
        note: String::new(),
    })
}

fn end_to_end_row(
    runtimes: &Runtimes,
    settings: &Settings,
    backend: Backend,
    fixed_rate: bool,
) -> Result<Row, String> {
    let credits = (!fixed_rate).then(|| Arc::new(Semaphore::new(E2E_WINDOW)));
    let subscriber = Subscriber::new(credits.clone());
    let subscriber_addr = runtimes
        .load
        .block_on(start_subscriber(subscriber.clone()))
        .map_err(|e| format!("subscriber: {e}"))?;
    let rivulet = runtimes.start_rivulet(backend)?;
    let outcome = runtimes.load.block_on(async {
        rivulet
            .create_triggers(0..1, subscriber_addr, FilterKind::Exact, true)
            .await?;
        rivulet.await_triggers_ready(1).await?;
        let spec = match credits {
            Some(credits) => load_spec(
                settings,
                rivulet.addr(),
                Pace::ClosedLoop(credits),
                settings.connections,
            ),
            None => load_spec(
                settings,
                rivulet.addr(),
                Pace::Fixed {
                    per_second: FIXED_RATE,
                },
                FIXED_RATE_CONNECTIONS,
            ),
        };
        run_load(spec, Some(subscriber.clone())).await
    });
    runtimes.stop_rivulet(rivulet)?;
    let result = outcome?;
    let received = subscriber.received.load(Ordering::Relaxed);
    let note = if fixed_rate {
        let mut note = format!("received {received} of {} accepted", result.accepted_total);
        if result.late_sends > 0 {
            note.push_str(&format!(", {} sends >2 ms late", result.late_sends));
        }
        note
    } else {
        format!("at most {E2E_WINDOW} events in flight")
    };
    Ok(Row {
        section: if fixed_rate {
            "e2e-latency"
        } else {
            "e2e-throughput"
        },
        label: if fixed_rate {
            format!("{} channel, {FIXED_RATE} ev/s", backend.name())
        } else {
            format!("{} channel, max", backend.name())
        },
        e2e_latency: fixed_rate.then(|| subscriber.latencies()),
        result,
        note,
    })
}

/// Fan-out on one server: at each count, that many triggers whose `kind` filters never
/// match plus one that matches every event, loaded in a closed loop. Every accepted event
/// must reach the subscriber once: more means a non-matching trigger delivered.
fn fanout_rows(
    runtimes: &Runtimes,
    settings: &Settings,
    backend: Backend,
    kind: FilterKind,
) -> Result<Vec<Row>, String> {
    let subscriber = Subscriber::new(None);
    let subscriber_addr = runtimes
        .load
        .block_on(start_subscriber(subscriber.clone()))
        .map_err(|e| format!("subscriber: {e}"))?;
    let rivulet = runtimes.start_rivulet(backend)?;
    let mut rows = Vec::new();
    let mut created = 0;
    // Every event accepted so far on this server, warm-up included.
    let mut accepted = 0u64;
    let outcome = (|| {
        runtimes
            .load
            .block_on(rivulet.create_triggers(0..1, subscriber_addr, kind, true))?;
        for count in settings.trigger_counts() {
            let setup_started = Instant::now();
            runtimes.load.block_on(async {
                rivulet
                    .create_triggers(created..count, subscriber_addr, kind, false)
                    .await?;
                rivulet.await_triggers_ready(count + 1).await
            })?;
            let setup = setup_started.elapsed();
            let settled = runtimes.load.block_on(settle());
            let added = count - created;
            created = count;
            let credits = Arc::new(Semaphore::new(E2E_WINDOW));
            subscriber.set_credits(Some(credits.clone()));
            let spec = load_spec(
                settings,
                rivulet.addr(),
                Pace::ClosedLoop(credits),
                settings.connections,
            );
            let result = runtimes
                .load
                .block_on(run_load(spec, Some(subscriber.clone())))?;
            accepted += result.accepted_total;
            let received = runtimes
                .load
                .block_on(await_received(&subscriber, accepted))?;
            // Progress, as a large fan-out run takes minutes.
            eprintln!(
                "bench: fanout {} {} {count}: {:.0} ev/s in, {:.1} µs/ev, setup {:.1} s",
                backend.name(),
                kind.name(),
                result.accepted_per_second,
                server_micros_per_event(&result).unwrap_or(0.0),
                setup.as_secs_f64()
            );
            rows.push(Row {
                section: "fanout",
                label: format!("{}, {}, {count} triggers", backend.name(), kind.name()),
                result,
                e2e_latency: None,
                note: format!(
                    "+1 matching; {added} applied and ready in {:.1} s, idle {:.1} s later; \
                     received {received} of {accepted}",
                    setup.as_secs_f64(),
                    settled.as_secs_f64()
                ),
            });
        }
        // Late strays would come after the matching deliveries: give them time to show.
        runtimes.load.block_on(settle());
        Ok::<(), String>(())
    })();
    runtimes.stop_rivulet(rivulet)?;
    outcome?;
    let received = subscriber.received.load(Ordering::Relaxed);
    if received != accepted {
        return Err(format!(
            "{} fan-out: the subscriber received {received} events for {accepted} accepted",
            kind.name()
        ));
    }
    Ok(rows)
}

/// Waits (up to 30 s) until the subscriber has received `expected` events; more is an error,
/// as only one trigger matches.
async fn await_received(subscriber: &Subscriber, expected: u64) -> Result<u64, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let received = subscriber.received.load(Ordering::Relaxed);
        if received > expected {
            return Err(format!(
                "{} events reached the subscriber beyond the {expected} accepted: \
                 a non-matching trigger delivered",
                received - expected
            ));
        }
        if received == expected {
            return Ok(received);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the subscriber received {received} of {expected} accepted events after 30 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Report.

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn percentile_ms(histogram: &Histogram<u64>, quantile: f64) -> Option<f64> {
    (!histogram.is_empty()).then(|| histogram.value_at_quantile(quantile) as f64 / 1_000.0)
}

fn format_ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |ms| format!("{ms:.2}"))
}

fn results_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench-results").join("broker.json")
}

fn row_json(row: &Row) -> Value {
    let r = &row.result;
    let latency = |h: &Histogram<u64>| {
        json!({
            "count": h.len(),
            "p50_ms": percentile_ms(h, 0.50),
            "p99_ms": percentile_ms(h, 0.99),
            "p999_ms": percentile_ms(h, 0.999),
            "max_ms": percentile_ms(h, 1.0),
        })
    };
    json!({
        "section": row.section,
        "label": row.label,
        "accepted_per_second": r.accepted_per_second,
        "delivered_per_second": r.delivered_per_second,
        "accepted_total": r.accepted_total,
        "refused_total": r.refused_total,
        "late_sends": r.late_sends,
        "ingress_request_latency": latency(&r.request_latency),
        "end_to_end_latency": row.e2e_latency.as_ref().map(latency),
        "server_cpu_cores": r.cpu.server_cores,
        "load_cpu_cores": r.cpu.load_cores,
        "outside_cpu_cores": r.cpu.outside_cores,
        "server_cpu_us_per_event": server_micros_per_event(r),
        "note": row.note,
    })
}

fn server_micros_per_event(result: &LoadResult) -> Option<f64> {
    (result.accepted_per_second > 0.0)
        .then(|| result.cpu.server_cores * 1e6 / result.accepted_per_second)
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<16} {:<34} {:>10} {:>10} {:>8} {:>8} {:>8} {:>6} {:>6} {:>6} {:>8}  note",
        "section",
        "row",
        "in ev/s",
        "out ev/s",
        "p50 ms",
        "p99 ms",
        "p99.9",
        "srvCPU",
        "genCPU",
        "extCPU",
        "µs/ev"
    );
    for row in rows {
        let r = &row.result;
        // Latency columns: end to end where measured, else the ingress round trip.
        let latency = row.e2e_latency.as_ref().unwrap_or(&r.request_latency);
        println!(
            "{:<16} {:<34} {:>10.0} {:>10} {:>8} {:>8} {:>8} {:>6.2} {:>6.2} {:>6.2} {:>8.1}  {}{}",
            row.section,
            row.label,
            r.accepted_per_second,
            r.delivered_per_second
                .map_or_else(|| "-".into(), |d| format!("{d:.0}")),
            format_ms(percentile_ms(latency, 0.50)),
            format_ms(percentile_ms(latency, 0.99)),
            format_ms(percentile_ms(latency, 0.999)),
            r.cpu.server_cores,
            r.cpu.load_cores,
            r.cpu.outside_cores,
            server_micros_per_event(r).unwrap_or(0.0),
            row.note,
            if r.refused_total > 0 {
                format!(" [{} refused]", r.refused_total)
            } else {
                String::new()
            },
        );
    }
}

/// What the columns mean, printed under the table.
const LEGEND: &str = "in ev/s: events answered 202 per second; out ev/s: events the subscriber received per second;
latency: end to end (send -> subscriber) in the e2e rows, else the ingress round trip;
srvCPU/genCPU: cores used by server threads / generator and subscriber threads; extCPU: cores used by other processes;
µs/ev: server CPU time per accepted event.";

fn main() {
    if let Err(error) = run() {
        eprintln!("bench broker failed: {error}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let settings = Settings::from_env()?;
    let _ = epoch();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
    println!("rivulet broker bench, {date}");
    println!("machine: {cores} cores, {}", cpu_model());
    println!(
        "method: {} keep-alive HTTP/1.1 connections (hyper), binary-mode events with a {}-byte JSON payload; \
         {:.1} s warm-up then {:.1} s measured per row; server on runtime rv-sut (2 workers), \
         generator and subscriber on runtime rv-load (2 workers), same process",
        settings.connections,
        payload().len(),
        settings.warmup.as_secs_f64(),
        settings.measure.as_secs_f64()
    );
    println!();

    let runtimes = Runtimes::new().map_err(|e| format!("cannot build runtimes: {e}"))?;
    let started = Instant::now();
    let mut rows = Vec::new();
    // Ingress rows: bare handler, memory, embedded, in that order.
    let mut ingress = None;
    if settings.runs("ingress") {
        for backend in [None, Some(Backend::Memory), Some(Backend::Embedded)] {
            rows.push(ingress_row(&runtimes, &settings, backend)?);
        }
        ingress = Some([0, 1, 2].map(|i| rows[i].result.accepted_per_second));
    }
    for (section, fixed_rate) in [("e2e-throughput", false), ("e2e-latency", true)] {
        if settings.runs(section) {
            for backend in [Backend::Memory, Backend::Embedded] {
                rows.push(end_to_end_row(&runtimes, &settings, backend, fixed_rate)?);
            }
        }
    }
    if settings.runs("fanout") {
        for (kind, backends) in FANOUT_RUNS {
            for backend in backends {
                rows.extend(fanout_rows(&runtimes, &settings, *backend, kind)?);
            }
        }
    }

    print_table(&rows);
    println!("{LEGEND}");
    println!();
    let ratio = ingress.map(|[bare, memory, embedded]| {
        let over_bare = |rate: f64| if bare > 0.0 { rate / bare } else { 0.0 };
        println!(
            "ingress memory/bare = {:.2} (aim >= 0.50), embedded/bare = {:.2}",
            over_bare(memory),
            over_bare(embedded)
        );
        over_bare(memory)
    });
    let worst_p99 = rows
        .iter()
        .filter_map(|row| row.e2e_latency.as_ref())
        .filter_map(|h| percentile_ms(h, 0.99))
        .reduce(f64::max);
    if let Some(worst_p99) = worst_p99 {
        println!(
            "end-to-end p99 at {FIXED_RATE} ev/s, worst channel = {worst_p99:.2} ms (aim < 10 ms)"
        );
    }
    println!("total bench time {:.0} s", started.elapsed().as_secs_f64());

    let report = json!({
        "date": date,
        "machine": {"cores": cores, "cpu": cpu_model()},
        "settings": {
            "warmup_seconds": settings.warmup.as_secs_f64(),
            "measure_seconds": settings.measure.as_secs_f64(),
            "connections": settings.connections,
            "fixed_rate": FIXED_RATE,
            "fixed_rate_connections": FIXED_RATE_CONNECTIONS,
            "e2e_window": E2E_WINDOW,
            "payload_bytes": payload().len(),
            "sections": SECTIONS
                .iter()
                .filter(|section| settings.runs(section))
                .collect::<Vec<_>>(),
            "fanout_trigger_counts": settings.trigger_counts(),
        },
        "ingress_memory_over_bare": ratio,
        "e2e_worst_p99_ms": worst_p99,
        "rows": rows.iter().map(row_json).collect::<Vec<_>>(),
    });
    let path = results_path();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let text = serde_json::to_string_pretty(&report).map_err(|e| format!("JSON: {e}"))?;
    std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("results written to {}", path.display());
    Ok(())
}
