//! Micro-benchmarks of the functions every event passes through, with a regression guard.
//!
//! Run with `cargo bench --bench micro`. Each case runs in 15 timed samples after a warm-up;
//! its figure is the median nanoseconds per call. The guard compares every case with the
//! reference in `benches/results/micro.json` and prints `ok` or `REGRESSED` per case; the
//! command fails when one is slower than its reference by more than the tolerance.
//!
//! Settings (environment):
//! - `RIVULET_MICRO_MILLIS`: measured milliseconds per case (default 1,500).
//! - `RIVULET_MICRO_TOLERANCE`: allowed slow-down over the reference, percent (default 30;
//!   the reference was measured on the machine named in the file: compare on a like one).
//! - `RIVULET_MICRO_SAVE=1`: write this run's figures as the new reference.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use rivulet::channels::Envelope;
use rivulet::channels::nats::binding;
use rivulet::event::{self, Event};
use rivulet::filter::{Filter, Outcome};
use rivulet::resources::TriggerSpec;
use serde_json::{Value, json};

const SAMPLES: usize = 15;

/// A binary-mode request as producers send it: the required attributes, a content type,
/// two extensions and a 100-byte JSON payload.
fn binary_request() -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("ce-specversion", "1.0"),
        ("ce-id", "7c1f4a9e-5d2b-4c1a-9b8e-3f2a1d0c9e8b"),
        ("ce-source", "/orders/web"),
        ("ce-type", "dev.rivulet.bench.order"),
        ("ce-time", "2026-12-07T10:00:00.123Z"),
        (
            "ce-traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("ce-knativebrokerttl", "255"),
        ("content-type", "application/json"),
    ] {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    let body = Bytes::from_static(
        br#"{"orderId":"4f1c2a9e-7b3d","amount":129.95,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
    );
    (headers, body)
}

fn structured_request() -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/cloudevents+json"),
    );
    let body = json!({
        "specversion": "1.0",
        "id": "7c1f4a9e-5d2b-4c1a-9b8e-3f2a1d0c9e8b",
        "source": "/orders/web",
        "type": "dev.rivulet.bench.order",
        "time": "2026-12-07T10:00:00.123Z",
        "datacontenttype": "application/json",
        "knativebrokerttl": 255,
        "data": {"orderId": "4f1c2a9e-7b3d", "amount": 129.95}
    });
    (headers, Bytes::from(body.to_string()))
}

fn event() -> Event {
    let (headers, body) = binary_request();
    let (_, mut events) = event::from_http(&headers, body).expect("the sample is valid");
    events.remove(0)
}

fn trigger_filter(filters: Value) -> Filter {
    let spec: TriggerSpec = serde_json::from_value(json!({
        "broker": "default",
        "subscriber": {"uri": "http://subscriber/"},
        "filters": filters,
    }))
    .expect("a trigger spec");
    Filter::for_trigger(&spec).expect("the filter compiles")
}

/// Runs `call` in batches for `budget`, giving the median nanoseconds per call of the samples.
fn measure(budget: Duration, mut call: impl FnMut()) -> f64 {
    // Calibrate a batch to about a sample's share of the budget.
    let sample = budget / SAMPLES as u32;
    let mut batch = 1u64;
    loop {
        let started = Instant::now();
        for _ in 0..batch {
            call();
        }
        if started.elapsed() >= sample / 4 || batch >= 1 << 30 {
            let per_call = started.elapsed().as_secs_f64() / batch as f64;
            batch = ((sample.as_secs_f64() / per_call.max(1e-12)) as u64).max(1);
            break;
        }
        batch *= 4;
    }
    let mut figures: Vec<f64> = (0..SAMPLES)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..batch {
                call();
            }
            started.elapsed().as_nanos() as f64 / batch as f64
        })
        .collect();
    figures.sort_by(f64::total_cmp);
    figures[SAMPLES / 2]
}

type Case = (&'static str, Box<dyn FnMut()>);

fn cases() -> Vec<Case> {
    let (binary_headers, binary_body) = binary_request();
    let (structured_headers, structured_body) = structured_request();
    let sample = event();
    let envelope = sample.to_envelope();
    let nats = binding::encode(&envelope).expect("the envelope encodes");
    let exact = trigger_filter(json!([{"exact": {"type": "dev.rivulet.bench.order"}}]));
    let prefix = trigger_filter(json!([{"prefix": {"type": "dev.rivulet.bench."}}]));
    let cesql = trigger_filter(json!([{
        "cesql": "type = 'dev.rivulet.bench.order' AND source LIKE '/orders/%'"
    }]));
    let miss = trigger_filter(json!([{"exact": {"type": "dev.rivulet.bench.never"}}]));
    let matched = |outcome: Outcome| matches!(outcome, Outcome::Match);
    let evaluate = move |filter: Filter, event: Event, expect: bool| -> Box<dyn FnMut()> {
        assert_eq!(matched(filter.evaluate(&event)), expect);
        Box::new(move || {
            black_box(black_box(&filter).evaluate(black_box(&event)));
        })
    };
    vec![
        (
            "http binding: parse binary mode",
            Box::new(move || {
                black_box(event::from_http(
                    black_box(&binary_headers),
                    black_box(binary_body.clone()),
                ))
                .ok();
            }),
        ),
        (
            "http binding: parse structured mode",
            Box::new(move || {
                black_box(event::from_http(
                    black_box(&structured_headers),
                    black_box(structured_body.clone()),
                ))
                .ok();
            }),
        ),
        ("http binding: write binary mode", {
            let event = sample.clone();
            Box::new(move || {
                black_box(event::to_http_binary(black_box(&event)));
            })
        }),
        ("envelope: encode (event to channel)", {
            let event = sample.clone();
            Box::new(move || {
                black_box(black_box(&event).to_envelope());
            })
        }),
        ("envelope: decode (channel to event)", {
            let envelope: Envelope = envelope.clone();
            Box::new(move || {
                black_box(Event::from_envelope(black_box(&envelope))).ok();
            })
        }),
        ("nats binding: encode", {
            let envelope = envelope.clone();
            Box::new(move || {
                black_box(binding::encode(black_box(&envelope))).ok();
            })
        }),
        (
            "nats binding: decode",
            Box::new(move || {
                black_box(binding::decode(
                    black_box(Some(&nats.headers)),
                    black_box(&nats.payload),
                ))
                .ok();
            }),
        ),
        (
            "filter: exact, match",
            evaluate(exact, sample.clone(), true),
        ),
        (
            "filter: exact, no match",
            evaluate(miss, sample.clone(), false),
        ),
        (
            "filter: prefix, match",
            evaluate(prefix, sample.clone(), true),
        ),
        ("filter: cesql, match", evaluate(cesql, sample, true)),
    ]
}

fn reference_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/results/micro.json")
}

fn env_number(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn main() {
    let budget = Duration::from_millis(env_number("RIVULET_MICRO_MILLIS", 1_500.0) as u64);
    let tolerance = env_number("RIVULET_MICRO_TOLERANCE", 30.0);
    let reference: Value = std::fs::read_to_string(reference_path())
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null);
    let mut figures = serde_json::Map::new();
    let mut regressed = Vec::new();
    println!(
        "{:<40} {:>10} {:>10} {:>8}  guard (tolerance {tolerance:.0}%)",
        "case", "ns/call", "reference", "change"
    );
    for (name, mut call) in cases() {
        let nanos = measure(budget, &mut *call);
        figures.insert(name.to_owned(), json!((nanos * 10.0).round() / 10.0));
        let Some(base) = reference["cases"][name].as_f64() else {
            println!(
                "{name:<40} {nanos:>10.1} {:>10} {:>8}  no reference",
                "-", "-"
            );
            continue;
        };
        let change = (nanos / base - 1.0) * 100.0;
        let verdict = if change > tolerance {
            regressed.push(format!("{name}: {nanos:.1} ns, reference {base:.1} ns"));
            "REGRESSED"
        } else {
            "ok"
        };
        println!("{name:<40} {nanos:>10.1} {base:>10.1} {change:>+7.1}%  {verdict}");
    }
    if std::env::var("RIVULET_MICRO_SAVE").is_ok_and(|value| value == "1") {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let saved = json!({
            "machine": format!("{cores} cores, {}", cpu_model()),
            "date": chrono::Utc::now().format("%Y-%m-%d").to_string(),
            "unit": "median nanoseconds per call",
            "cases": figures,
        });
        let text = serde_json::to_string_pretty(&saved).expect("JSON") + "\n";
        std::fs::write(reference_path(), text).expect("the reference is written");
        println!("reference written to benches/results/micro.json");
    }
    if regressed.is_empty() {
        println!("regression guard: ok");
    } else {
        println!(
            "regression guard: {} case(s) slower than the reference by more than {tolerance:.0}%:",
            regressed.len()
        );
        for line in &regressed {
            println!("  {line}");
        }
        std::process::exit(1);
    }
}
