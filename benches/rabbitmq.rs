//! RabbitMQ channel throughput beside raw lapin, on the same server in the same run.
//!
//! Run with `cargo bench --bench rabbitmq` against the RabbitMQ named by
//! `RIVULET_RABBITMQ_URI` (default `amqp://guest:guest@127.0.0.1:5672/%2f`).
//! `RIVULET_BENCH_EVENTS` sets the events per row (default 20 000).
//!
//! Both rows move the same events (binary-mode CloudEvents of a 1 KiB JSON payload, persistent
//! messages in a durable classic queue, publisher confirms, consumer acknowledgements):
//! - raw lapin: one confirm-mode channel publishes with up to 1 024 unconfirmed messages while
//!   a consumer (prefetch 64) acknowledges each message; the figure is events from the first
//!   publish to the last acknowledgement, per second.
//! - Rivulet: a `RabbitMQBroker` with one trigger (parallelism 64); 64 HTTP connections post
//!   the events to ingress (each `202` waits for RabbitMQ's confirm) and a local subscriber
//!   answers `202`; the figure is events from the first post to the last delivery, per second.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use futures::StreamExt;
use rivulet::server::ServeOptions;
use rivulet_channels::Envelope;
use rivulet_channels::rabbitmq::amqp;
use rivulet_channels::rabbitmq::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use rivulet_channels::rabbitmq::lapin::types::FieldTable;
use rivulet_channels::rabbitmq::lapin::{Confirmation, Connection, ConnectionProperties};
use serde_json::json;
use tokio::sync::Semaphore;

const PUBLISH_WINDOW: usize = 1_024;
const PREFETCH: u16 = 64;
const HTTP_CONNECTIONS: usize = 64;

fn uri() -> String {
    std::env::var("RIVULET_RABBITMQ_URI")
        .unwrap_or_else(|_| rivulet_channels::rabbitmq::DEFAULT_URI.to_owned())
}

fn events_per_row() -> usize {
    std::env::var("RIVULET_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// A 1 KiB JSON payload.
fn payload() -> String {
    let filler = "x".repeat(1024 - 40);
    format!("{{\"orderId\":\"4f1c2a9e\",\"filler\":\"{filler}\"}}")
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{nanos}")
}

struct Row {
    name: &'static str,
    events: usize,
    elapsed: Duration,
    /// The publishing side alone (confirmed messages), per second.
    publish_rate: f64,
}

impl Row {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

async fn raw_row(events: usize) -> Result<Row, String> {
    let connection = Connection::connect(&uri(), ConnectionProperties::default())
        .await
        .map_err(|e| e.to_string())?;
    let queue = unique("bench-raw");
    let publisher = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    publisher
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let consuming = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    consuming
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut consumer = consuming
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let reader = tokio::spawn(async move {
        let mut read = 0;
        while read < events {
            match tokio::time::timeout(Duration::from_secs(60), consumer.next()).await {
                Ok(Some(Ok(delivery))) => {
                    delivery
                        .ack(BasicAckOptions::default())
                        .await
                        .map_err(|e| e.to_string())?;
                    read += 1;
                }
                _ => return Err(format!("the raw consumer stopped after {read} messages")),
            }
        }
        Ok(Instant::now())
    });

    let body = payload();
    let window = Arc::new(Semaphore::new(PUBLISH_WINDOW));
    let started = Instant::now();
    let mut pending = Vec::with_capacity(events);
    for n in 0..events {
        let envelope = envelope(&format!("raw-{n}"), &body);
        let (properties, message) = amqp::to_message(&envelope).map_err(|e| e.to_string())?;
        let permit = window.clone().acquire_owned().await.expect("open");
        let confirm = publisher
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &message,
                properties,
            )
            .await
            .map_err(|e| e.to_string())?;
        pending.push(tokio::spawn(async move {
            let outcome = confirm.await;
            drop(permit);
            matches!(outcome, Ok(Confirmation::Ack(_)))
        }));
    }
    for confirm in pending {
        if !confirm.await.unwrap_or(false) {
            return Err("a raw publish was not confirmed".into());
        }
    }
    let published = started.elapsed();
    let finished = reader.await.map_err(|e| e.to_string())??;
    let _ = publisher
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "done".into()).await;
    Ok(Row {
        name: "raw lapin publish + consume",
        events,
        elapsed: finished - started,
        publish_rate: events as f64 / published.as_secs_f64(),
    })
}

fn envelope(id: &str, body: &str) -> Envelope {
    Envelope {
        attributes: vec![
            ("specversion".into(), "1.0".into()),
            ("id".into(), id.into()),
            ("source".into(), "/bench".into()),
            ("type".into(), "dev.rivulet.bench".into()),
            ("datacontenttype".into(), "application/json".into()),
        ],
        data: Some(body.to_owned().into()),
    }
}

async fn rivulet_row(events: usize) -> Result<Row, String> {
    let delivered = Arc::new(AtomicUsize::new(0));
    let counter = delivered.clone();
    let subscriber = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::Relaxed);
            StatusCode::ACCEPTED
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let subscriber_addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move { axum::serve(listener, subscriber).await });

    let data = tempfile::tempdir().map_err(|e| e.to_string())?;
    let server = rivulet::server::start(ServeOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: data.path().to_path_buf(),
        ..ServeOptions::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    let base = server.base_url.clone();
    let http = reqwest::Client::new();
    let namespace = unique("bench");
    let resources = [
        (
            "api/v1",
            "secrets",
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "rabbitmq", "namespace": namespace},
                   "stringData": {"uri": uri()}}),
        ),
        (
            "apis/eventing.knative.dev/v1",
            "brokers",
            json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
                   "metadata": {"name": "load", "namespace": namespace,
                                "annotations": {"eventing.knative.dev/broker.class": "RabbitMQBroker"}},
                   "spec": {"config": {"apiVersion": "v1", "kind": "Secret", "name": "rabbitmq"}}}),
        ),
        (
            "apis/eventing.knative.dev/v1",
            "triggers",
            json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
                   "metadata": {"name": "all", "namespace": namespace,
                                "annotations": {"rivulet.dev/parallelism": "64"}},
                   "spec": {"broker": "load", "subscriber": {"uri": format!("http://{subscriber_addr}/")}}}),
        ),
    ];
    for (group, plural, resource) in &resources {
        let name = resource["metadata"]["name"].as_str().unwrap_or_default();
        let url = format!("{base}/{group}/namespaces/{namespace}/{plural}/{name}");
        let response = http
            .put(url)
            .json(resource)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("applying {plural}/{name}: {}", response.status()));
        }
    }
    // Wait until the trigger consumes: one probe event must arrive.
    let ingress = format!("{base}/{namespace}/load");
    let probe_deadline = Instant::now() + Duration::from_secs(60);
    while delivered.load(Ordering::Relaxed) == 0 {
        if Instant::now() > probe_deadline {
            return Err("the RabbitMQ broker never delivered a probe event".into());
        }
        let _ = post(&http, &ingress, "probe", "{}").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    delivered.store(0, Ordering::Relaxed);

    let body = Arc::new(payload());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let connections: Vec<_> = (0..HTTP_CONNECTIONS)
        .map(|_| {
            let (http, ingress, body, next) =
                (http.clone(), ingress.clone(), body.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= events {
                        return Ok::<(), String>(());
                    }
                    let status = post(&http, &ingress, &format!("e-{n}"), &body).await?;
                    if status != 202 {
                        return Err(format!("ingress answered {status}"));
                    }
                }
            })
        })
        .collect();
    for connection in connections {
        connection.await.map_err(|e| e.to_string())??;
    }
    let published = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    while delivered.load(Ordering::Relaxed) < events {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {events} delivered",
                delivered.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let _ = http
        .delete(format!(
            "{base}/apis/eventing.knative.dev/v1/namespaces/{namespace}/brokers/load"
        ))
        .send()
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.shutdown().await.map_err(|e| e.to_string())?;
    Ok(Row {
        name: "Rivulet ingress -> RabbitMQ -> trigger",
        events,
        elapsed,
        publish_rate: events as f64 / published.as_secs_f64(),
    })
}

async fn post(http: &reqwest::Client, url: &str, id: &str, body: &str) -> Result<u16, String> {
    http.post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/bench")
        .header("ce-type", "dev.rivulet.bench")
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

fn main() {
    rivulet::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let events = events_per_row();
    let rows = runtime.block_on(async {
        let raw = raw_row(events).await;
        let rivulet = rivulet_row(events).await;
        [raw, rivulet]
    });
    println!(
        "RabbitMQ {} — {events} events of 1 KiB per row, persistent, publisher confirms",
        rivulet_channels::rabbitmq::link::redact(&uri())
    );
    println!("{:<40} {:>14} {:>16}", "row", "end-to-end/s", "confirmed/s");
    let mut failed = false;
    for row in rows {
        match row {
            Ok(row) => println!(
                "{:<40} {:>14.0} {:>16.0}",
                row.name,
                row.rate(),
                row.publish_rate
            ),
            Err(error) => {
                failed = true;
                eprintln!("a row failed: {error}");
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
