//! Throughput of CESQL filter evaluation on one core, beside a hand-written Rust
//! closure doing the same check. Run with `cargo bench --bench cesql`.

use std::borrow::Cow;
use std::hint::black_box;
use std::time::{Duration, Instant};

use rivulet::cesql::{EventAttributes, Expression, Value};

/// An event as a broker holds it: typed fields, borrowed out without copying.
struct Event {
    id: String,
    source: String,
    event_type: String,
    subject: String,
    exint: i32,
}

impl EventAttributes for Event {
    fn attribute(&self, name: &str) -> Option<Value<'_>> {
        fn text(s: &str) -> Option<Value<'_>> {
            Some(Value::String(Cow::Borrowed(s)))
        }
        match name {
            "specversion" => text("1.0"),
            "id" => text(&self.id),
            "source" => text(&self.source),
            "type" => text(&self.event_type),
            "subject" => text(&self.subject),
            "exint" => Some(Value::Integer(self.exint)),
            _ => None,
        }
    }
}

/// Runs `check` repeatedly for about `budget`, returning evaluations per second.
fn measure(budget: Duration, mut check: impl FnMut() -> bool) -> f64 {
    const BATCH: u64 = 10_000;
    let start = Instant::now();
    let mut evaluations = 0u64;
    let mut passed = 0u64;
    while start.elapsed() < budget {
        for _ in 0..BATCH {
            passed += u64::from(black_box(check()));
        }
        evaluations += BATCH;
    }
    black_box(passed);
    evaluations as f64 / start.elapsed().as_secs_f64()
}

type Baseline = fn(&Event) -> bool;

fn main() {
    let event = Event {
        id: "7c1f4a9e-5d2b-4c1a-9b8e-3f2a1d0c9e8b".to_owned(),
        source: "/sensors/kitchen".to_owned(),
        event_type: "com.example.sensor.reading".to_owned(),
        subject: "Kitchen".to_owned(),
        exint: 42,
    };
    let cases: [(&str, Baseline); 5] = [
        ("type LIKE 'com.example.%' AND exint > 10", |e| {
            e.event_type.starts_with("com.example.") && e.exint > 10
        }),
        ("source = '/sensors/kitchen'", |e| {
            e.source == "/sensors/kitchen"
        }),
        (
            "type IN ('com.example.created', 'com.example.deleted', 'com.example.sensor.reading')",
            |e| {
                matches!(
                    e.event_type.as_str(),
                    "com.example.created" | "com.example.deleted" | "com.example.sensor.reading"
                )
            },
        ),
        ("SUBSTRING(type, 1, 11) = 'com.example'", |e| {
            e.event_type.chars().take(11).eq("com.example".chars())
        }),
        ("LOWER(subject) = 'kitchen'", |e| {
            e.subject.to_lowercase() == "kitchen"
        }),
    ];
    let budget = Duration::from_millis(
        std::env::var("CESQL_BENCH_MILLIS")
            .ok()
            .and_then(|millis| millis.parse().ok())
            .unwrap_or(1000),
    );
    println!(
        "{:<90} {:>14} {:>14} {:>7}",
        "expression", "cesql eval/s", "closure eval/s", "ratio"
    );
    for (text, baseline) in cases {
        let expression = Expression::parse(text).expect("benchmark expressions are valid");
        assert!(expression.matches(&event), "{text} should match the event");
        assert!(baseline(&event), "the baseline of {text} should match");
        let cesql = measure(budget, || black_box(&expression).matches(black_box(&event)));
        let closure = measure(budget, || black_box(baseline)(black_box(&event)));
        println!(
            "{text:<90} {cesql:>14.0} {closure:>14.0} {:>6.1}x",
            closure / cesql
        );
    }
}
