//! The `delivery` section: the whole path from a producer's request to a subscriber, next to
//! what the same two hops cost without a broker between them.
//!
//! The subscriber is nginx answering `202` (a worker per core), counting requests with its
//! status module. Rows, each over the same load (the section's keep-alive connections, as
//! fast as answered):
//! - `receiver`: the load straight at nginx: what one hop costs;
//! - `proxy`: nginx `proxy_pass` with kept-alive upstream connections in front of it: two
//!   hops, without durability or filtering;
//! - `ingress`: Rivulet's broker on the memory channel with no trigger;
//! - `1 trigger` and `10 triggers` on the memory and embedded channels: every trigger
//!   matches and delivers to the nginx receiver, with Rivulet's default delivery settings;
//! - `1 trigger, journal off` on the memory channel: the same with the event journal off,
//!   so what the journal costs is measured in the same run.
//!
//! `RIVULET_BENCH_PARALLELISM` sets the triggers' `rivulet.dev/parallelism` (deliveries in
//! flight per trigger); without it they have the server's default.
//!
//! End to end is accepted events divided by the time from the first request until nginx has
//! received every accepted event once per trigger.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::nginx::{self, Nginx};
use crate::{
    BROKER, Channel, CpuUse, EVENT_TYPE, LoadSpec, Pace, Rivulet, Runtimes, Settings, Target,
    run_load, size_label,
};

/// What a delivery row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Receiver,
    Proxy,
    /// Rivulet ingress with no trigger.
    Ingress(Channel),
    /// Rivulet with this many matching triggers delivering to the receiver.
    Triggers(Channel, usize),
    /// One matching trigger, the event journal off.
    WithoutJournal(Channel),
}

impl Path {
    pub fn label(self) -> String {
        match self {
            Path::Receiver => "nginx receiver".into(),
            Path::Proxy => "nginx proxy -> receiver".into(),
            Path::Ingress(channel) => format!("Rivulet ingress, {}, no trigger", channel.name()),
            Path::Triggers(channel, 1) => format!("Rivulet, {}, 1 trigger", channel.name()),
            Path::Triggers(channel, n) => format!("Rivulet, {}, {n} triggers", channel.name()),
            Path::WithoutJournal(channel) => {
                format!("Rivulet, {}, 1 trigger, journal off", channel.name())
            }
        }
    }

    /// Deliveries the receiver gets per accepted event.
    fn copies(self) -> u64 {
        match self {
            Path::Receiver | Path::Proxy => 1,
            Path::Ingress(_) => 0,
            Path::Triggers(_, n) => n as u64,
            Path::WithoutJournal(_) => 1,
        }
    }
}

pub struct DeliveryRow {
    pub path: Path,
    pub payload: usize,
    /// Accepted events per second, first request to last delivery.
    pub events_per_second: f64,
    pub accepted: u64,
    pub refused: u64,
    /// First request to last delivery (or to the end of the load without a trigger).
    pub seconds: f64,
    pub cpu: CpuUse,
}

impl DeliveryRow {
    pub fn deliveries_per_second(&self) -> f64 {
        self.events_per_second * self.path.copies().max(1) as f64
    }

    pub fn json(&self) -> Value {
        json!({
            "path": self.path.label(),
            "payload_bytes": self.payload,
            "events_per_second": self.events_per_second,
            "deliveries_per_second": self.deliveries_per_second(),
            "accepted": self.accepted,
            "refused": self.refused,
            "seconds": self.seconds,
            "server_cpu_cores": self.cpu.server_cores,
            "load_cpu_cores": self.cpu.load_cores,
            "outside_cpu_cores": self.cpu.outside_cores,
        })
    }
}

/// The section's rows, for each payload of the run; `Err` when nginx is missing.
pub fn rows(runtimes: &Runtimes, settings: &Settings) -> Result<Vec<DeliveryRow>, String> {
    let binary = nginx::executable().ok_or(
        "nginx was not found (install it, e.g. the distribution's nginx-light package, \
         or name it in RIVULET_BENCH_NGINX)",
    )?;
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let receiver = runtimes.load.block_on(Nginx::receiver(&binary, workers))?;
    let proxy = runtimes
        .load
        .block_on(Nginx::proxy(&binary, workers, receiver.addr))?;
    let mut rows = Vec::new();
    let channels: Vec<Channel> = [Channel::Memory, Channel::Embedded]
        .into_iter()
        .filter(|channel| settings.channels.contains(channel))
        .collect();
    for &payload in &settings.payloads {
        let mut paths = vec![Path::Receiver, Path::Proxy];
        if channels.contains(&Channel::Memory) {
            paths.push(Path::Ingress(Channel::Memory));
        }
        for &channel in &channels {
            paths.extend([Path::Triggers(channel, 1), Path::Triggers(channel, 10)]);
            if channel == Channel::Memory {
                paths.push(Path::WithoutJournal(channel));
            }
        }
        for path in paths {
            let row = row(runtimes, settings, &receiver, &proxy, path, payload)?;
            eprintln!(
                "bench: delivery {}, {}: {:.0} ev/s end to end",
                path.label(),
                size_label(payload),
                row.events_per_second
            );
            rows.push(row);
        }
    }
    Ok(rows)
}

fn row(
    runtimes: &Runtimes,
    settings: &Settings,
    receiver: &Nginx,
    proxy: &Nginx,
    path: Path,
    payload: usize,
) -> Result<DeliveryRow, String> {
    let direct = |addr| Target::Http {
        addr,
        path: "/".into(),
    };
    match path {
        Path::Receiver => runtimes.load.block_on(measure(
            settings,
            direct(receiver.addr),
            payload,
            receiver,
            path,
        )),
        Path::Proxy => runtimes.load.block_on(measure(
            settings,
            direct(proxy.addr),
            payload,
            receiver,
            path,
        )),
        Path::Ingress(channel) | Path::Triggers(channel, _) | Path::WithoutJournal(channel) => {
            let journal = !matches!(path, Path::WithoutJournal(_));
            let rivulet = runtimes.start_rivulet_with_journal(channel, journal)?;
            let measured = runtimes.load.block_on(async {
                let triggers = path.copies() as usize;
                for index in 0..triggers {
                    create_trigger(&rivulet, index, receiver.addr).await?;
                }
                rivulet.await_triggers_ready(triggers).await?;
                if triggers > 0 {
                    await_first_delivery(&rivulet, receiver).await?;
                }
                measure(settings, rivulet.ingress(), payload, receiver, path).await
            });
            runtimes.stop_rivulet(rivulet)?;
            measured
        }
    }
}

/// A trigger matching every generated event, with Rivulet's default delivery settings.
async fn create_trigger(
    rivulet: &Rivulet,
    index: usize,
    receiver: std::net::SocketAddr,
) -> Result<(), String> {
    let name = format!("match{index}");
    let mut body = json!({
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": name, "namespace": rivulet.namespace},
        "spec": {
            "broker": BROKER,
            "filters": [{"exact": {"type": EVENT_TYPE}}],
            "subscriber": {"uri": format!("http://{receiver}/")}
        }
    });
    // Deliveries in flight per trigger: the server's default unless the run names one.
    if let Ok(parallelism) = std::env::var("RIVULET_BENCH_PARALLELISM") {
        body["metadata"]["annotations"] = json!({"rivulet.dev/parallelism": parallelism});
    }
    let path = rivulet.resource_path("apis/eventing.knative.dev/v1", "triggers", &name);
    rivulet.put(&path, body).await
}

/// Posts probe events until the receiver has one: a consumer may start a moment after its
/// trigger reports ready.
async fn await_first_delivery(rivulet: &Rivulet, receiver: &Nginx) -> Result<(), String> {
    let before = receiver.requests().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.requests().await? == before {
        if Instant::now() > deadline {
            return Err("no probe event reached nginx in 60 s".into());
        }
        rivulet.post_probe().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every trigger's probe copy arrives before the measured load begins.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

/// A warm-up load, then the measured one, each followed by waiting until the receiver has
/// every accepted event once per trigger.
async fn measure(
    settings: &Settings,
    target: Target,
    payload: usize,
    receiver: &Nginx,
    path: Path,
) -> Result<DeliveryRow, String> {
    let spec = |seconds: Duration| LoadSpec {
        target: target.clone(),
        payload: crate::payload(payload),
        connections: settings.connections,
        pace: Pace::Max,
        warmup: Duration::ZERO,
        measure: seconds,
    };
    let copies = path.copies();
    let warmup = run_load(spec(settings.warmup), None).await?;
    let before = receiver.requests().await?;
    // Deliveries of the warm-up may still be under way; wait for them first.
    let settled = await_requests(receiver, before, 0, Duration::from_secs(2)).await;
    drop((warmup, settled));
    let base = receiver.requests().await?;
    let load = run_load(spec(settings.measure), None).await?;
    let expected = load.accepted_total * copies;
    let finished = if copies == 0 {
        Instant::now()
    } else {
        await_requests(receiver, base, expected, Duration::from_secs(120))
            .await
            .map_err(|got| {
                format!(
                    "{}: the receiver got {got} of {expected} deliveries within 120 s",
                    path.label()
                )
            })?
    };
    let seconds = finished.duration_since(load.began).as_secs_f64();
    Ok(DeliveryRow {
        path,
        payload,
        events_per_second: load.accepted_total as f64 / seconds.max(1e-9),
        accepted: load.accepted_total,
        refused: load.refused_total,
        seconds,
        cpu: load.cpu,
    })
}

/// Waits until the receiver has `expected` requests more than `base`, or (with
/// `expected == 0`) until its count stops moving for 200 ms. Gives the time it got there,
/// or how many it got when `limit` passed.
async fn await_requests(
    receiver: &Nginx,
    base: u64,
    expected: u64,
    limit: Duration,
) -> Result<Instant, u64> {
    let deadline = Instant::now() + limit;
    let mut last = (base, Instant::now());
    loop {
        let now = receiver.requests().await.unwrap_or(last.0);
        let got = now.saturating_sub(base);
        if expected > 0 && got >= expected {
            return Ok(Instant::now());
        }
        if expected == 0 {
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() > Duration::from_millis(200) {
                return Ok(last.1);
            }
        }
        if Instant::now() > deadline {
            return Err(got);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The section's table for the summary: each row with its ratio to the proxy, and the
/// ingress row's to the receiver.
pub fn markdown(rows: &[DeliveryRow]) -> String {
    let mut text = String::from(
        "| delivery path | payload | events/s end to end | deliveries/s | share of proxy | share of receiver | server cores |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let of = |other: Path| {
            find(rows, other, row.payload).map_or_else(
                || "-".to_owned(),
                |base| {
                    format!(
                        "{:.2}",
                        row.events_per_second / base.events_per_second.max(1e-9)
                    )
                },
            )
        };
        text.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {} | {} | {:.2} |\n",
            row.path.label(),
            size_label(row.payload),
            row.events_per_second,
            row.deliveries_per_second(),
            of(Path::Proxy),
            of(Path::Receiver),
            row.cpu.server_cores,
        ));
    }
    text
}

fn find(rows: &[DeliveryRow], path: Path, payload: usize) -> Option<&DeliveryRow> {
    rows.iter()
        .find(|row| row.path == path && row.payload == payload)
}

/// The aims for the delivery path, one line each.
pub fn aims(rows: &[DeliveryRow]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut payloads: Vec<usize> = rows.iter().map(|row| row.payload).collect();
    payloads.dedup();
    for payload in payloads {
        let ratio = |path, base| {
            find(rows, path, payload)
                .zip(find(rows, base, payload))
                .map(|(row, base)| row.events_per_second / base.events_per_second.max(1e-9))
        };
        let checks = [
            (Path::Triggers(Channel::Memory, 1), Path::Proxy, 0.7),
            (Path::Triggers(Channel::Embedded, 1), Path::Proxy, 0.5),
            (Path::Ingress(Channel::Memory), Path::Receiver, 0.6),
        ];
        for (path, base, aim) in checks {
            if let Some(ratio) = ratio(path, base) {
                lines.push(format!(
                    "delivery, {} / {}, {}: {ratio:.2} (aim >= {aim:.2})",
                    path.label(),
                    base.label(),
                    size_label(payload)
                ));
            }
        }
    }
    lines
}
