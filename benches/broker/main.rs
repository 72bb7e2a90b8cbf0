//! Rivulet's benchmark: every channel beside its raw baseline, fan-out, in one run.
//!
//! Run with `cargo bench --bench broker`. Settings (environment):
//! - `RIVULET_BENCH_SECONDS`: measured seconds of each row (default 5; a warm-up of a fifth
//!   of that, at least 0.2 s, comes first).
//! - `RIVULET_BENCH_CONNECTIONS`: load-generator connections (default 32).
//! - `RIVULET_BENCH_CHANNELS`: a comma list of `memory`, `embedded`, `kafka`, `rabbitmq`,
//!   `nats` (default all). Kafka is reached at `RIVULET_KAFKA_BOOTSTRAP` (default
//!   `127.0.0.1:9092`), RabbitMQ at `RIVULET_RABBITMQ_URI`, NATS at `RIVULET_NATS_URL`.
//! - `RIVULET_BENCH_PAYLOADS`: payload sizes in bytes (default `100,1024,32768`).
//! - `RIVULET_BENCH_SECTIONS`: a comma list of `ingress`, `e2e-throughput`, `e2e-latency`,
//!   `delivery`, `fanout` and `flows` (default all).
//! - `RIVULET_BENCH_NGINX`: the nginx executable of the `delivery` section (default: `nginx`
//!   on the PATH or in `/usr/sbin`); without one the section is reported as failed.
//! - `RIVULET_BENCH_MAX_TRIGGERS`: the largest fan-out trigger count (default 10,000).
//!
//! Sections, each row beside its baseline measured the same way in the same run:
//! - `ingress`: events posted as fast as answered to a broker without triggers (on Kafka,
//!   RabbitMQ and NATS each `202` waits for the server's acknowledgement). Baselines: a bare
//!   axum handler answering `202` (memory, embedded); the raw client publishing with one
//!   acknowledged publish in flight per connection (Kafka, RabbitMQ, NATS).
//! - `e2e-throughput`: one matching trigger, closed loop (at most 1,024 events between send
//!   and subscriber). Baseline for Kafka, RabbitMQ, NATS: raw publish and consume, same loop.
//! - `e2e-latency`: send time to subscriber at a fixed rate below saturation: 1,000 ev/s, or
//!   half the slower of the two end-to-end throughputs of that channel and payload when that
//!   is lower. Baselines: the bare handler's round trip; raw publish to consume.
//! - `delivery`: the memory and embedded channels with 1 and 10 matching triggers delivering
//!   to nginx answering `202`, beside nginx alone and nginx forwarding to itself (see
//!   `delivery.rs`).
//! - `fanout`: 1, 10, 100, 1,000 and 10,000 triggers whose filters never match, plus one
//!   trigger that matches every event, on one server per (channel, filter kind), triggers
//!   added between rows. Filter kinds: `exact` on `type` (memory and embedded channels),
//!   `prefix` on `type` and `cesql` (memory channel only, keeping the run time bounded).
//!   The subscriber must receive each accepted event once, from the matching trigger alone.
//! - `flows`: a 3-step Sequence and a 3-branch Parallel over each channel's kind, beside the
//!   one-trigger broker row of that channel, closed loop, 1 KiB (see `flows.rs`).
//!
//! Method, identical for every row that is compared:
//! - Two tokio runtimes in this process, two worker threads each: `rv-sut` runs the system
//!   under test (the bare handler or the Rivulet server), `rv-load` runs the load generator,
//!   the subscriber and the raw clients. Both share the machine's cores, so figures include
//!   the generator's cost; the CPU columns split it per side (from `/proc/self/task`).
//! - The generator keeps N HTTP/1.1 keep-alive connections (hyper, one task each, one request
//!   in flight per connection) posting binary-mode CloudEvents with a JSON payload; the raw
//!   rows run N tasks publishing the same events through one client.
//! - Each row gets a fresh server, data folder, namespace and topic, queue or stream.
//!
//! Output: the full table and a summary on stdout; in `RIVULET_BENCH_OUT` (default
//! `bench-results` under `$CARGO_TARGET_DIR`, or under `target/` in the package when that is
//! unset) `broker.json`, the summary as `broker.md`, and the plots `throughput.svg`,
//! `latency.svg`, `fanout.svg` and `delivery.svg`.

/// The allocator of the `rivulet` binary, so the server in this process allocates as it does
/// there.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod delivery;
mod flows;
mod nginx;
mod plots;
mod raw;

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
const SENT_AT_ATTRIBUTE: &str = "benchsentat";
const SENT_AT_HEADER: &str = "ce-benchsentat";
/// The end-to-end latency rows send at this fixed rate, or lower (see the module comment).
const FIXED_RATE: u32 = 1_000;
/// Connections used by the fixed-rate rows: at 1,000 ev/s each sends every 16 ms, far
/// longer than an ingress round trip, so sends are not held back by slow answers.
const FIXED_RATE_CONNECTIONS: usize = 16;
/// Events allowed between ingress and subscriber in the end-to-end throughput rows; keeps
/// the backlog bounded so the figure is a sustainable rate, not ingress outrunning delivery.
const E2E_WINDOW: usize = 1_024;
/// Largest latency recorded, in microseconds.
const MAX_MICROS: u64 = 60_000_000;
/// Payload of the fan-out rows, bytes.
const FANOUT_PAYLOAD: usize = 100;
/// Non-matching trigger counts of the fan-out rows, up to `RIVULET_BENCH_MAX_TRIGGERS`.
const TRIGGER_COUNTS: [usize; 5] = [1, 10, 100, 1_000, 10_000];
/// Section names accepted by `RIVULET_BENCH_SECTIONS`, in the order they run.
const SECTIONS: [&str; 6] = [
    "ingress",
    "e2e-throughput",
    "e2e-latency",
    "delivery",
    "fanout",
    "flows",
];

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

/// A JSON payload of exactly `size` bytes (at least the fixed part's 48), the same for
/// every request of a row.
fn payload(size: usize) -> Bytes {
    let head = r#"{"orderId":"4f1c2a9e-7b3d","amount":129.95,"pad":""#;
    let tail = r#""}"#;
    let filler = size.saturating_sub(head.len() + tail.len());
    Bytes::from(format!("{head}{}{tail}", "x".repeat(filler)))
}

/// Payload sizes in bytes, for labels.
fn size_label(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

#[derive(Debug, Clone)]
struct Settings {
    warmup: Duration,
    measure: Duration,
    connections: usize,
    max_triggers: usize,
    channels: Vec<Channel>,
    payloads: Vec<usize>,
    /// Which of [`SECTIONS`] run.
    sections: [bool; SECTIONS.len()],
}

/// The number in environment variable `name`, `default` when it is unset; an error naming
/// what is `expected` when it does not parse or is not `valid`.
fn env_number<T: std::str::FromStr>(
    name: &str,
    default: T,
    expected: &str,
    valid: impl Fn(&T) -> bool,
) -> Result<T, String> {
    match std::env::var(name) {
        Ok(text) => text
            .parse::<T>()
            .ok()
            .filter(valid)
            .ok_or_else(|| format!("{name} must be {expected}, not {text:?}")),
        Err(_) => Ok(default),
    }
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        let seconds = env_number(
            "RIVULET_BENCH_SECONDS",
            5.0,
            "a positive number",
            |s: &f64| s.is_finite() && *s > 0.0,
        )?;
        let connections = env_number(
            "RIVULET_BENCH_CONNECTIONS",
            32,
            "between 1 and 4096",
            |n: &usize| (1..=4096).contains(n),
        )?;
        let max_triggers = env_number(
            "RIVULET_BENCH_MAX_TRIGGERS",
            10_000,
            "between 1 and 100000",
            |n: &usize| (1..=100_000).contains(n),
        )?;
        let sections = match std::env::var("RIVULET_BENCH_SECTIONS") {
            Ok(text) => parse_sections(&text)?,
            Err(_) => [true; SECTIONS.len()],
        };
        let channels = match std::env::var("RIVULET_BENCH_CHANNELS") {
            Ok(text) => parse_channels(&text)?,
            Err(_) => Channel::ALL.to_vec(),
        };
        let payloads = match std::env::var("RIVULET_BENCH_PAYLOADS") {
            Ok(text) => parse_payloads(&text)?,
            Err(_) => vec![100, 1024, 32 * 1024],
        };
        Ok(Settings {
            warmup: Duration::from_secs_f64((seconds / 5.0).max(0.2)),
            measure: Duration::from_secs_f64(seconds),
            connections,
            max_triggers,
            channels,
            payloads,
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

fn parse_channels(text: &str) -> Result<Vec<Channel>, String> {
    let mut chosen = Vec::new();
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let channel = Channel::ALL
            .into_iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| {
                format!(
                    "RIVULET_BENCH_CHANNELS: unknown channel {name:?}, known: {}",
                    Channel::ALL.map(Channel::name).join(", ")
                )
            })?;
        chosen.push(channel);
    }
    if chosen.is_empty() {
        Err("RIVULET_BENCH_CHANNELS names no channel".into())
    } else {
        Ok(chosen)
    }
}

fn parse_payloads(text: &str) -> Result<Vec<usize>, String> {
    let sizes: Vec<usize> = text
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| {
            n.parse::<usize>()
                .ok()
                .filter(|size| (48..=1 << 20).contains(size))
                .ok_or_else(|| {
                    format!("RIVULET_BENCH_PAYLOADS: {n:?} is not a size from 48 to 1048576 bytes")
                })
        })
        .collect::<Result<_, _>>()?;
    if sizes.is_empty() {
        Err("RIVULET_BENCH_PAYLOADS names no size".into())
    } else {
        Ok(sizes)
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

impl Subscriber {
    /// Counts one received event, gives its credit back, and records its latency when it
    /// carries a send time inside the measured window.
    fn record(&self, sent: Option<u64>) {
        let now = nanos_since_epoch();
        self.received.fetch_add(1, Ordering::Relaxed);
        if let Some(credits) = self
            .credits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            credits.add_permits(1);
        }
        if let Some(sent) = sent
            && sent >= self.record_from.load(Ordering::Relaxed)
        {
            let latency = now.saturating_sub(sent) / 1_000;
            self.latencies
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .saturating_record(latency.max(1));
        }
    }
}

async fn receive_event(
    State(subscriber): State<Arc<Subscriber>>,
    headers: HeaderMap,
) -> StatusCode {
    let sent = headers
        .get(SENT_AT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    subscriber.record(sent);
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

/// Where the generator sends events.
#[derive(Clone)]
enum Target {
    /// HTTP posts to `path` on a server (bare handler or Rivulet ingress).
    Http { addr: SocketAddr, path: String },
    /// Publishes through a raw client.
    Raw(Arc<dyn raw::RawChannel>),
}

#[derive(Clone)]
struct LoadSpec {
    target: Target,
    payload: Bytes,
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
    /// When the first request was sent.
    began: Instant,
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

/// One generator connection's way of sending an event and learning whether it was taken.
enum Sender {
    Http {
        sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        template: RequestTemplate,
    },
    Raw {
        channel: Arc<dyn raw::RawChannel>,
        payload: Bytes,
    },
}

impl Sender {
    async fn connect(spec: &LoadSpec) -> Result<Self, String> {
        match &spec.target {
            Target::Http { addr, path } => {
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
                stream
                    .set_nodelay(true)
                    .map_err(|e| format!("cannot set TCP_NODELAY: {e}"))?;
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
                tokio::spawn(connection);
                let template = RequestTemplate {
                    uri: path
                        .parse()
                        .map_err(|e| format!("bad path {path:?}: {e}"))?,
                    host: HeaderValue::from_str(&addr.to_string()).expect("an address is a header"),
                    payload: spec.payload.clone(),
                };
                Ok(Sender::Http { sender, template })
            }
            Target::Raw(channel) => Ok(Sender::Raw {
                channel: channel.clone(),
                payload: spec.payload.clone(),
            }),
        }
    }

    /// Sends one event: whether it was accepted (`202`, or acknowledged by the server).
    async fn send(&mut self, id: u64, sent_at: Option<u64>) -> Result<bool, String> {
        match self {
            Sender::Http { sender, template } => {
                let request = template.build(id, sent_at);
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
                Ok(status == StatusCode::ACCEPTED)
            }
            Sender::Raw { channel, payload } => match channel.publish(id, payload, sent_at).await {
                Ok(()) => Ok(true),
                Err(error) => {
                    eprintln!("bench: {error}");
                    Ok(false)
                }
            },
        }
    }
}

/// One connection: sends events one after the other until told to stop.
async fn drive_connection(
    spec: Arc<LoadSpec>,
    index: usize,
    counters: Arc<LoadCounters>,
    begin: Instant,
) -> Result<Histogram<u64>, String> {
    let mut sender = Sender::connect(&spec).await?;
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
        let recording = counters.recording.load(Ordering::Relaxed);
        let started = Instant::now();
        let accepted = sender
            .send(id, stamp_send_time.then(nanos_since_epoch))
            .await?;
        if recording {
            latencies.saturating_record(micros(started.elapsed()).max(1));
        }
        if accepted {
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
        began: begin,
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
enum Channel {
    Memory,
    Embedded,
    Kafka,
    RabbitMq,
    Nats,
}

impl Channel {
    const ALL: [Channel; 5] = [
        Channel::Memory,
        Channel::Embedded,
        Channel::Kafka,
        Channel::RabbitMq,
        Channel::Nats,
    ];

    /// The name `IngressReady` reports (`{name} channel`) and settings use.
    fn name(self) -> &'static str {
        match self {
            Channel::Memory => "memory",
            Channel::Embedded => "embedded",
            Channel::Kafka => "kafka",
            Channel::RabbitMq => "rabbitmq",
            Channel::Nats => "nats",
        }
    }

    /// Whether the channel lives on an outside server, with a raw client as its baseline.
    fn is_external(self) -> bool {
        !matches!(self, Channel::Memory | Channel::Embedded)
    }

    /// What the channel's rows are compared with.
    fn baseline(self) -> &'static str {
        match self {
            Channel::Memory | Channel::Embedded => "bare axum handler",
            Channel::Kafka => "raw rdkafka",
            Channel::RabbitMq => "raw lapin",
            Channel::Nats => "raw async-nats",
        }
    }

    /// The broker class annotation and the configuration object `spec.config` names.
    fn broker_config(self, namespace: &str) -> Option<(&'static str, Value)> {
        let metadata = |name: &str| json!({"name": name, "namespace": namespace});
        match self {
            Channel::Embedded => None,
            Channel::Memory => Some((
                "MTChannelBasedBroker",
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata("imc-channel"),
                    "data": {"channel-template-spec":
                        "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\n"}}),
            )),
            Channel::Kafka => Some((
                "Kafka",
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata("kafka"),
                    "data": {"bootstrap.servers": raw::kafka_servers(),
                        "default.topic.partitions": raw::KAFKA_PARTITIONS.to_string(),
                        "default.topic.replication.factor": "1"}}),
            )),
            Channel::RabbitMq => Some((
                "RabbitMQBroker",
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": metadata("rabbitmq"),
                    "stringData": {"uri": raw::rabbitmq_uri()}}),
            )),
            Channel::Nats => Some((
                "NatsJetStreamBroker",
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata("nats"),
                    "data": {"url": raw::nats_url(), "storage": "file"}}),
            )),
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
const FANOUT_RUNS: [(FilterKind, &[Channel]); 3] = [
    (FilterKind::Exact, &[Channel::Memory, Channel::Embedded]),
    (FilterKind::Prefix, &[Channel::Memory]),
    (FilterKind::Cesql, &[Channel::Memory]),
];

struct Rivulet {
    server: RunningServer,
    /// A namespace of its own, so topics, queues and streams of earlier rows are not reused.
    namespace: String,
    /// Keeps the data folder alive while the server runs.
    _data_dir: tempfile::TempDir,
    client: reqwest::Client,
}

impl Rivulet {
    /// A server with the event journal on or off (the default is on).
    async fn start_with_journal(journal: bool) -> Result<Self, String> {
        let data_dir = tempfile::tempdir().map_err(|e| format!("no temporary folder: {e}"))?;
        let options = ServeOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            // Loopback only: the benchmark drives the resource API without a token.
            api_auth: rivulet::api::auth::ApiAuth::None,
            data_dir: data_dir.path().to_path_buf(),
            shutdown_grace: Duration::from_secs(1),
            journal: rivulet::journal::JournalSettings {
                enabled: journal,
                ..Default::default()
            },
            ..ServeOptions::default()
        };
        let server = rivulet::server::start(options)
            .await
            .map_err(|e| format!("the server did not start: {e:#}"))?;
        Ok(Rivulet {
            server,
            namespace: raw::unique(NAMESPACE),
            _data_dir: data_dir,
            client: reqwest::Client::new(),
        })
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addr
    }

    async fn put(&self, path: &str, body: Value) -> Result<(), String> {
        let url = format!("{}{path}", self.server.api_url);
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
        let url = format!("{}{path}", self.server.api_url);
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

    /// The path of a resource of this server's namespace.
    fn resource_path(&self, api: &str, plural: &str, name: &str) -> String {
        format!("/{api}/namespaces/{}/{plural}/{name}", self.namespace)
    }

    /// Creates the broker on the chosen channel and waits until it is ready on that channel.
    async fn create_broker(&self, channel: Channel) -> Result<(), String> {
        let mut broker = json!({
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Broker",
            "metadata": {"name": BROKER, "namespace": self.namespace},
            "spec": {}
        });
        if let Some((class, config)) = channel.broker_config(&self.namespace) {
            let kind = config["kind"].as_str().unwrap_or_default().to_owned();
            let name = config["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let plural = format!("{}s", kind.to_ascii_lowercase());
            self.put(&self.resource_path("api/v1", &plural, &name), config)
                .await?;
            broker["metadata"]["annotations"] = json!({"eventing.knative.dev/broker.class": class});
            broker["spec"]["config"] = json!({"apiVersion": "v1", "kind": kind, "name": name});
        }
        let path = self.resource_path("apis/eventing.knative.dev/v1", "brokers", BROKER);
        self.put(&path, broker).await?;
        let expected = format!("{} channel", channel.name());
        let deadline = Instant::now() + Duration::from_secs(60);
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
                return Err(format!("broker not ready after 60 s: {object}"));
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
                let mut body = json!({
                    "apiVersion": "eventing.knative.dev/v1",
                    "kind": "Trigger",
                    "metadata": {"name": name, "namespace": self.namespace},
                    "spec": {
                        "broker": BROKER,
                        "filters": kind.filters((!matching).then_some(index)),
                        "subscriber": {"uri": format!("http://{subscriber}/")}
                    }
                });
                if matching {
                    // Deliveries in flight, enough for a remote channel's round trips.
                    body["metadata"]["annotations"] = json!({"rivulet.dev/parallelism": "64"});
                }
                let path = self.resource_path("apis/eventing.knative.dev/v1", "triggers", &name);
                async move { self.put(&path, body).await }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Waits until `expected` triggers report Ready.
    async fn await_triggers_ready(&self, expected: usize) -> Result<(), String> {
        let path = format!(
            "/apis/eventing.knative.dev/v1/namespaces/{}/triggers",
            self.namespace
        );
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

    fn start_rivulet(&self, channel: Channel) -> Result<Rivulet, String> {
        self.start_rivulet_with_journal(channel, true)
    }

    fn start_rivulet_with_journal(
        &self,
        channel: Channel,
        journal: bool,
    ) -> Result<Rivulet, String> {
        let rivulet = self.sut.block_on(Rivulet::start_with_journal(journal))?;
        if let Err(error) = self.load.block_on(rivulet.create_broker(channel)) {
            let _ = self.stop_rivulet(rivulet);
            return Err(error);
        }
        Ok(rivulet)
    }

    fn stop_rivulet(&self, rivulet: Rivulet) -> Result<(), String> {
        // The matching trigger goes first, so its consumer has stopped when the broker's
        // deletion removes the topic, exchange or stream (tansu 0.6 can fail for good when
        // a topic is deleted under a consumer).
        let trigger = rivulet.resource_path("apis/eventing.knative.dev/v1", "triggers", "match0");
        let broker = rivulet.resource_path("apis/eventing.knative.dev/v1", "brokers", BROKER);
        self.load.block_on(async {
            for (path, pause) in [(trigger, 2_000), (broker, 500)] {
                let url = format!("{}{path}", rivulet.server.api_url);
                if let Ok(response) = rivulet.client.delete(url).send().await
                    && response.status().is_success()
                {
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
        });
        let Rivulet {
            server, _data_dir, ..
        } = rivulet;
        self.sut
            .block_on(server.shutdown())
            .map_err(|e| format!("server shutdown failed: {e:#}"))
    }
}

/// A generator of `connections` sending `payload` to `target` at `pace`.
fn load_spec(
    settings: &Settings,
    target: Target,
    payload: usize,
    pace: Pace,
    connections: usize,
) -> LoadSpec {
    LoadSpec {
        target,
        payload: self::payload(payload),
        connections,
        pace,
        warmup: settings.warmup,
        measure: settings.measure,
    }
}

impl Rivulet {
    /// Ingress of the server's broker.
    fn ingress(&self) -> Target {
        Target::Http {
            addr: self.addr(),
            path: format!("/{}/{BROKER}", self.namespace),
        }
    }

    /// Posts probe events (no send time) until the subscriber has one, then forgets them:
    /// a remote channel's consumer may start reading after its trigger reports ready.
    async fn await_delivery(&self, subscriber: &Subscriber) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while subscriber.received.load(Ordering::Relaxed) == 0 {
            if Instant::now() > deadline {
                return Err("no probe event reached the subscriber in 120 s".into());
            }
            self.post_probe().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        subscriber.received.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Posts one probe event (no send time) to the broker; its answer does not matter.
    async fn post_probe(&self) {
        let url = format!("{}/{}/{BROKER}", self.server.base_url, self.namespace);
        let _ = self
            .client
            .post(&url)
            .header("ce-specversion", "1.0")
            .header("ce-id", "probe")
            .header("ce-source", "/bench/probe")
            .header("ce-type", EVENT_TYPE)
            .send()
            .await;
    }
}

/// Who a row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Rivulet,
    /// The channel's baseline ([`Channel::baseline`]).
    Baseline,
}

/// One line of the report.
struct Row {
    section: &'static str,
    channel: Channel,
    system: System,
    payload: usize,
    label: String,
    result: LoadResult,
    /// Subscriber-side end-to-end latency, microseconds.
    e2e_latency: Option<Histogram<u64>>,
    /// The fixed rate of a latency row, events per second.
    rate: Option<u32>,
    note: String,
}

impl Row {
    /// The row's latency: end to end where measured, else the send round trip.
    fn latency(&self) -> &Histogram<u64> {
        self.e2e_latency
            .as_ref()
            .unwrap_or(&self.result.request_latency)
    }

    fn describes(&self, section: &str, channel: Channel, system: System, payload: usize) -> bool {
        self.section == section
            && self.channel == channel
            && self.system == system
            && self.payload == payload
    }
}

fn row_label(channel: Channel, system: System, payload: usize) -> String {
    let who = match system {
        System::Rivulet => format!("Rivulet, {}", channel.name()),
        System::Baseline => channel.baseline().to_owned(),
    };
    format!("{who}, {}", size_label(payload))
}

/// Events posted (or published) as fast as answered, no consumer.
fn ingress_row(
    runtimes: &Runtimes,
    settings: &Settings,
    channel: Channel,
    system: System,
    payload: usize,
) -> Result<Row, String> {
    let spec = |target| load_spec(settings, target, payload, Pace::Max, settings.connections);
    let result = match (system, channel.is_external()) {
        (System::Baseline, false) => {
            let addr = runtimes
                .sut
                .block_on(start_bare_handler())
                .map_err(|e| format!("bare handler: {e}"))?;
            let target = Target::Http {
                addr,
                path: format!("/{NAMESPACE}/{BROKER}"),
            };
            runtimes.load.block_on(run_load(spec(target), None))?
        }
        (System::Baseline, true) => runtimes.load.block_on(async {
            let raw = raw::open(channel, None).await?;
            let result = run_load(spec(Target::Raw(raw.clone())), None).await;
            raw.remove().await;
            result
        })?,
        (System::Rivulet, _) => {
            let rivulet = runtimes.start_rivulet(channel)?;
            let result = runtimes
                .load
                .block_on(run_load(spec(rivulet.ingress()), None));
            runtimes.stop_rivulet(rivulet)?;
            result?
        }
    };
    Ok(Row {
        section: "ingress",
        channel,
        system,
        payload,
        label: row_label(channel, system, payload),
        result,
        e2e_latency: None,
        rate: None,
        note: String::new(),
    })
}

/// Events from send to subscriber (or raw consumer): closed loop, or at `fixed_rate`.
fn end_to_end_row(
    runtimes: &Runtimes,
    settings: &Settings,
    channel: Channel,
    system: System,
    payload: usize,
    fixed_rate: Option<u32>,
) -> Result<Row, String> {
    let credits = fixed_rate
        .is_none()
        .then(|| Arc::new(Semaphore::new(E2E_WINDOW)));
    let pace = match (&credits, fixed_rate) {
        (_, Some(per_second)) => Pace::Fixed { per_second },
        (Some(credits), None) => Pace::ClosedLoop(credits.clone()),
        (None, None) => Pace::Max,
    };
    let connections = if fixed_rate.is_some() {
        FIXED_RATE_CONNECTIONS
    } else {
        settings.connections
    };
    let subscriber = Subscriber::new(None);
    let result = match (system, channel.is_external()) {
        (System::Baseline, false) => {
            // The bare handler delivers nothing: its row is the send round trip.
            let addr = runtimes
                .sut
                .block_on(start_bare_handler())
                .map_err(|e| format!("bare handler: {e}"))?;
            let target = Target::Http {
                addr,
                path: format!("/{NAMESPACE}/{BROKER}"),
            };
            let pace = if fixed_rate.is_some() {
                pace
            } else {
                Pace::Max
            };
            let spec = load_spec(settings, target, payload, pace, connections);
            runtimes.load.block_on(run_load(spec, None))?
        }
        (System::Baseline, true) => runtimes.load.block_on(async {
            let raw = raw::open(channel, Some(subscriber.clone())).await?;
            subscriber.set_credits(credits.clone());
            let spec = load_spec(
                settings,
                Target::Raw(raw.clone()),
                payload,
                pace,
                connections,
            );
            let result = run_load(spec, Some(subscriber.clone())).await;
            raw.remove().await;
            result
        })?,
        (System::Rivulet, _) => {
            let subscriber_addr = runtimes
                .load
                .block_on(start_subscriber(subscriber.clone()))
                .map_err(|e| format!("subscriber: {e}"))?;
            let rivulet = runtimes.start_rivulet(channel)?;
            let outcome = runtimes.load.block_on(async {
                rivulet
                    .create_triggers(0..1, subscriber_addr, FilterKind::Exact, true)
                    .await?;
                rivulet.await_triggers_ready(1).await?;
                rivulet.await_delivery(&subscriber).await?;
                subscriber.set_credits(credits.clone());
                let spec = load_spec(settings, rivulet.ingress(), payload, pace, connections);
                run_load(spec, Some(subscriber.clone())).await
            });
            runtimes.stop_rivulet(rivulet)?;
            outcome?
        }
    };
    let delivers = system == System::Rivulet || channel.is_external();
    let received = subscriber.received.load(Ordering::Relaxed);
    let note = match (fixed_rate, delivers) {
        (_, false) => "send round trip".to_owned(),
        (Some(_), true) => {
            let mut note = format!("received {received} of {} accepted", result.accepted_total);
            if result.late_sends > 0 {
                note.push_str(&format!(", {} sends >2 ms late", result.late_sends));
            }
            note
        }
        (None, true) => format!("at most {E2E_WINDOW} events in flight"),
    };
    Ok(Row {
        section: if fixed_rate.is_some() {
            "e2e-latency"
        } else {
            "e2e-throughput"
        },
        channel,
        system,
        payload,
        label: row_label(channel, system, payload),
        e2e_latency: (fixed_rate.is_some() && delivers).then(|| subscriber.latencies()),
        rate: fixed_rate,
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
    channel: Channel,
    kind: FilterKind,
) -> Result<Vec<Row>, String> {
    let subscriber = Subscriber::new(None);
    let subscriber_addr = runtimes
        .load
        .block_on(start_subscriber(subscriber.clone()))
        .map_err(|e| format!("subscriber: {e}"))?;
    let rivulet = runtimes.start_rivulet(channel)?;
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
                rivulet.ingress(),
                FANOUT_PAYLOAD,
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
                channel.name(),
                kind.name(),
                result.accepted_per_second,
                server_micros_per_event(&result).unwrap_or(0.0),
                setup.as_secs_f64()
            );
            rows.push(Row {
                section: "fanout",
                channel,
                system: System::Rivulet,
                payload: FANOUT_PAYLOAD,
                rate: None,
                label: format!("{}, {}, {count} triggers", channel.name(), kind.name()),
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

/// Where the JSON, the summary and the plots go: `RIVULET_BENCH_OUT`, else
/// `bench-results` in the target folder.
fn results_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RIVULET_BENCH_OUT") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench-results")
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
        "channel": row.channel.name(),
        "system": match row.system {
            System::Rivulet => "rivulet".to_owned(),
            System::Baseline => row.channel.baseline().to_owned(),
        },
        "payload_bytes": row.payload,
        "label": row.label,
        "fixed_rate": row.rate,
        "accepted_per_second": r.accepted_per_second,
        "delivered_per_second": r.delivered_per_second,
        "accepted_total": r.accepted_total,
        "refused_total": r.refused_total,
        "late_sends": r.late_sends,
        "send_latency": latency(&r.request_latency),
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
        "{:<15} {:<40} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>6} {:>6} {:>6} {:>8}  note",
        "section",
        "row",
        "rate",
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
        let latency = row.latency();
        println!(
            "{:<15} {:<40} {:>9} {:>9.0} {:>9} {:>8} {:>8} {:>8} {:>6.2} {:>6.2} {:>6.2} {:>8.1}  {}{}",
            row.section,
            row.label,
            row.rate.map_or_else(|| "max".into(), |r| r.to_string()),
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
const LEGEND: &str = "rate: the fixed send rate, or max; in ev/s: events accepted (202, or acknowledged by the server) per second;
out ev/s: events the subscriber (or raw consumer) received per second;
latency: send -> subscriber (or raw consumer) in the e2e-latency rows that deliver, else the send round trip;
srvCPU/genCPU: cores used by server threads / generator, subscriber and raw-client threads; extCPU: cores used by other processes;
µs/ev: server CPU time per accepted event.";

/// The end-to-end throughput of a row: delivered, or accepted when nothing delivers.
fn e2e_rate(row: &Row) -> f64 {
    row.result
        .delivered_per_second
        .unwrap_or(row.result.accepted_per_second)
}

/// The fixed rate of a channel's latency rows: [`FIXED_RATE`], or half the slower end-to-end
/// throughput measured for it when that is lower (so both rows run below saturation).
fn fixed_rate(rows: &[Row], channel: Channel, payload: usize) -> u32 {
    let slowest = rows
        .iter()
        .filter(|row| {
            row.section == "e2e-throughput"
                && row.channel == channel
                && row.payload == payload
                && (row.system == System::Rivulet || channel.is_external())
        })
        .map(e2e_rate)
        .reduce(f64::min);
    match slowest {
        Some(rate) if rate / 2.0 < f64::from(FIXED_RATE) => ((rate / 20.0) as u32 * 10).max(10),
        _ => FIXED_RATE,
    }
}

/// A figure and how it compares with its baseline.
fn versus(rivulet: f64, baseline: f64) -> String {
    if baseline > 0.0 {
        format!(
            "{rivulet:.0} / {baseline:.0} ({:.0}%)",
            rivulet * 100.0 / baseline
        )
    } else {
        format!("{rivulet:.0} / -")
    }
}

fn percentiles(histogram: &Histogram<u64>) -> String {
    [0.50, 0.99, 0.999]
        .map(|q| format_ms(percentile_ms(histogram, q)))
        .join(" / ")
}

/// The table of docs/benchmarks.md: per channel and payload, Rivulet beside its baseline.
fn summary_markdown(rows: &[Row], settings: &Settings) -> String {
    let mut text = String::from(
        "| channel | payload | ingress ev/s: Rivulet / baseline | end to end ev/s: Rivulet / baseline | fixed rate ev/s | latency p50 / p99 / p99.9 ms: Rivulet | baseline |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let find = |section: &str, channel, system, payload| {
        rows.iter()
            .find(|row| row.describes(section, channel, system, payload))
    };
    let channel_rows = rows.iter().any(|row| row.section != "fanout");
    if !channel_rows {
        text.clear();
    }
    for channel in settings.channels.iter().filter(|_| channel_rows) {
        for payload in &settings.payloads {
            let pair = |section: &str, figure: fn(&Row) -> f64| match (
                find(section, *channel, System::Rivulet, *payload),
                find(section, *channel, System::Baseline, *payload),
            ) {
                (Some(rivulet), Some(baseline)) => versus(figure(rivulet), figure(baseline)),
                (Some(rivulet), None) => versus(figure(rivulet), 0.0),
                _ => "-".to_owned(),
            };
            let latency = |system| {
                find("e2e-latency", *channel, system, *payload)
                    .map_or_else(|| "-".to_owned(), |row| percentiles(row.latency()))
            };
            let rate = find("e2e-latency", *channel, System::Rivulet, *payload)
                .and_then(|row| row.rate)
                .map_or_else(|| "-".to_owned(), |r| r.to_string());
            text.push_str(&format!(
                "| {} | {} | {} | {} | {rate} | {} | {} |\n",
                channel.name(),
                size_label(*payload),
                pair("ingress", |row| row.result.accepted_per_second),
                pair("e2e-throughput", e2e_rate),
                latency(System::Rivulet),
                latency(System::Baseline),
            ));
        }
    }
    let fanout: Vec<&Row> = rows.iter().filter(|row| row.section == "fanout").collect();
    if !fanout.is_empty() {
        text.push_str(
            "\n| fan-out (100 B) | triggers | ev/s | server µs per event |\n|---|---|---|---|\n",
        );
        for row in fanout {
            text.push_str(&format!(
                "| {} | {} | {:.0} | {:.1} |\n",
                row.label.split(", ").take(2).collect::<Vec<_>>().join(", "),
                row.label
                    .rsplit(", ")
                    .next()
                    .unwrap_or_default()
                    .trim_end_matches(" triggers"),
                row.result.accepted_per_second,
                server_micros_per_event(&row.result).unwrap_or(0.0),
            ));
        }
    }
    text
}

/// How the run compares with the aims of the benchmark, one line each.
fn aims(rows: &[Row], settings: &Settings) -> Vec<String> {
    let mut lines = Vec::new();
    let find = |section: &str, channel, system, payload| {
        rows.iter()
            .find(|row| row.describes(section, channel, system, payload))
    };
    for payload in &settings.payloads {
        if let (Some(rivulet), Some(bare)) = (
            find("ingress", Channel::Memory, System::Rivulet, *payload),
            find("ingress", Channel::Memory, System::Baseline, *payload),
        ) {
            lines.push(format!(
                "ingress, memory channel / bare handler, {}: {:.2} (aim >= 0.70)",
                size_label(*payload),
                rivulet.result.accepted_per_second / bare.result.accepted_per_second.max(1e-9)
            ));
        }
        for channel in Channel::ALL.into_iter().filter(|c| c.is_external()) {
            if let (Some(rivulet), Some(raw)) = (
                find("e2e-throughput", channel, System::Rivulet, *payload),
                find("e2e-throughput", channel, System::Baseline, *payload),
            ) {
                lines.push(format!(
                    "end to end, {} / {}, {}: {:.2} (aim >= 0.70)",
                    channel.name(),
                    channel.baseline(),
                    size_label(*payload),
                    e2e_rate(rivulet) / e2e_rate(raw).max(1e-9)
                ));
            }
        }
    }
    for channel in [Channel::Memory, Channel::Embedded] {
        let exact = |count: usize| {
            rows.iter().find(|row| {
                row.section == "fanout"
                    && row.channel == channel
                    && row.label == format!("{}, exact, {count} triggers", channel.name())
            })
        };
        if let (Some(one), Some(thousand)) = (exact(1), exact(1_000)) {
            lines.push(format!(
                "fan-out, {}, 1,000 non-matching exact triggers / 1: {:.2} (aim >= 0.80)",
                channel.name(),
                thousand.result.accepted_per_second / one.result.accepted_per_second.max(1e-9)
            ));
        }
    }
    lines
}

fn main() {
    rivulet::install_crypto_provider();
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
    let machine = format!("{cores} cores, {}", cpu_model());
    println!("rivulet bench, {date}");
    println!("machine: {machine}");
    println!(
        "method: {} keep-alive HTTP/1.1 connections (hyper) or raw-client tasks, binary-mode events with JSON payloads of {}; \
         {:.1} s warm-up then {:.1} s measured per row; server on runtime rv-sut (2 workers), \
         generator, subscriber and raw clients on runtime rv-load (2 workers), same process",
        settings.connections,
        settings
            .payloads
            .iter()
            .map(|p| size_label(*p))
            .collect::<Vec<_>>()
            .join(", "),
        settings.warmup.as_secs_f64(),
        settings.measure.as_secs_f64()
    );
    println!();

    let runtimes = Runtimes::new().map_err(|e| format!("cannot build runtimes: {e}"))?;
    let started = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    let mut failures = Vec::new();
    // A failed row (say, a server that is not running) is reported and the run goes on.
    let mut keep = |rows: &mut Vec<Row>, row: Result<Row, String>, what: String| match row {
        Ok(row) => {
            eprintln!(
                "bench: {} {}: {:.0} ev/s in",
                row.section, row.label, row.result.accepted_per_second
            );
            rows.push(row);
        }
        Err(error) => {
            eprintln!("bench: {what} failed: {error}");
            failures.push(format!("{what}: {error}"));
        }
    };
    let systems = [System::Baseline, System::Rivulet];
    for section in ["ingress", "e2e-throughput", "e2e-latency"] {
        if !settings.runs(section) {
            continue;
        }
        for channel in &settings.channels {
            for payload in &settings.payloads {
                let rate = fixed_rate(&rows, *channel, *payload);
                for system in systems {
                    let row = match section {
                        "ingress" => ingress_row(&runtimes, &settings, *channel, system, *payload),
                        "e2e-throughput" => {
                            end_to_end_row(&runtimes, &settings, *channel, system, *payload, None)
                        }
                        _ => end_to_end_row(
                            &runtimes,
                            &settings,
                            *channel,
                            system,
                            *payload,
                            Some(rate),
                        ),
                    };
                    let what = format!("{section} {}", row_label(*channel, system, *payload));
                    keep(&mut rows, row, what);
                }
            }
        }
    }
    let mut delivery_rows = Vec::new();
    if settings.runs("delivery") {
        match delivery::rows(&runtimes, &settings) {
            Ok(measured) => delivery_rows = measured,
            Err(error) => {
                eprintln!("bench: delivery failed: {error}");
                failures.push(format!("delivery: {error}"));
            }
        }
    }
    if settings.runs("fanout") {
        for (kind, channels) in FANOUT_RUNS {
            for channel in channels.iter().filter(|c| settings.channels.contains(c)) {
                match fanout_rows(&runtimes, &settings, *channel, kind) {
                    Ok(fanout) => rows.extend(fanout),
                    Err(error) => {
                        eprintln!(
                            "bench: fan-out {} {} failed: {error}",
                            channel.name(),
                            kind.name()
                        );
                        failures.push(format!(
                            "fan-out {} {}: {error}",
                            channel.name(),
                            kind.name()
                        ));
                    }
                }
            }
        }
    }

    let mut flow_rows = Vec::new();
    if settings.runs("flows") {
        let (measured, failed) = flows::rows(&runtimes, &settings);
        flow_rows = measured;
        failures.extend(failed);
    }

    print_table(&rows);
    print_table(&flow_rows);
    println!("{LEGEND}");
    println!();
    let mut summary = summary_markdown(&rows, &settings);
    if !delivery_rows.is_empty() {
        summary.push('\n');
        summary.push_str(&delivery::markdown(&delivery_rows));
    }
    if !flow_rows.is_empty() {
        summary.push('\n');
        summary.push_str(&flows::markdown(&flow_rows));
    }
    println!("{summary}");
    let mut aims = aims(&rows, &settings);
    aims.extend(delivery::aims(&delivery_rows));
    for line in &aims {
        println!("{line}");
    }
    println!("total bench time {:.0} s", started.elapsed().as_secs_f64());

    let report = json!({
        "date": date,
        "machine": {"cores": cores, "cpu": cpu_model()},
        "settings": {
            "warmup_seconds": settings.warmup.as_secs_f64(),
            "measure_seconds": settings.measure.as_secs_f64(),
            "connections": settings.connections,
            "channels": settings.channels.iter().map(|c| c.name()).collect::<Vec<_>>(),
            "payload_bytes": settings.payloads,
            "fixed_rate_max": FIXED_RATE,
            "fixed_rate_connections": FIXED_RATE_CONNECTIONS,
            "e2e_window": E2E_WINDOW,
            "sections": SECTIONS
                .iter()
                .filter(|section| settings.runs(section))
                .collect::<Vec<_>>(),
            "fanout_trigger_counts": settings.trigger_counts(),
            "fanout_payload_bytes": FANOUT_PAYLOAD,
        },
        "aims": aims,
        "failures": failures,
        "rows": rows.iter().chain(&flow_rows).map(row_json).collect::<Vec<_>>(),
        "delivery": delivery_rows.iter().map(delivery::DeliveryRow::json).collect::<Vec<_>>(),
    });
    let dir = results_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    write(
        "broker.json",
        &serde_json::to_string_pretty(&report).map_err(|e| format!("JSON: {e}"))?,
    )?;
    write(
        "broker.md",
        &format!("Measured {date} on {machine}.\n\n{summary}"),
    )?;
    let title = format!("{date}, {machine}");
    plots::write_all(&dir, &rows, &title)?;
    plots::delivery(&dir.join("delivery.svg"), &delivery_rows, &title)?;
    println!("results, summary and plots written to {}", dir.display());
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} rows failed:\n{}",
            failures.len(),
            failures.join("\n")
        ))
    }
}
