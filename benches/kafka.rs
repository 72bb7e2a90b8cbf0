//! Kafka channel throughput beside raw rdkafka, on the same server in the same run.
//!
//! Run with `cargo bench --bench kafka` against the Kafka server named by
//! `RIVULET_KAFKA_BOOTSTRAP` (default `127.0.0.1:9092`; test.sh starts tansu there).
//! `RIVULET_BENCH_EVENTS` sets the events per row (default 20 000).
//!
//! Both rows move the same events (binary-mode CloudEvents of a 1 KiB JSON payload) through
//! a fresh 3-partition topic with `acks=all`:
//! - raw rdkafka: one producer sends every record with up to 1 024 unacknowledged, while a
//!   consumer group member reads them; the figure is events from the first send to the last
//!   record read, per second.
//! - Rivulet: a Kafka-class broker with one trigger; 64 HTTP connections post the events to
//!   ingress (each `202` waits for the Kafka acknowledgement) and a local subscriber answers
//!   `202`; the figure is events from the first post to the last delivery, per second.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use rivulet::server::ServeOptions;
use rivulet_channels::Envelope;
use rivulet_channels::kafka::binding;
use rivulet_channels::kafka::rdkafka::admin::{
    AdminClient, AdminOptions, NewTopic, TopicReplication,
};
use rivulet_channels::kafka::rdkafka::client::DefaultClientContext;
use rivulet_channels::kafka::rdkafka::config::ClientConfig;
use rivulet_channels::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use rivulet_channels::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use tokio::sync::Semaphore;

const PARTITIONS: i32 = 3;
const PRODUCE_WINDOW: usize = 1_024;
const HTTP_CONNECTIONS: usize = 64;

fn servers() -> String {
    std::env::var("RIVULET_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
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

fn client() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", servers());
    config
}

struct Row {
    name: &'static str,
    events: usize,
    elapsed: Duration,
    /// The producing side alone (acknowledged writes), per second.
    produce_rate: f64,
}

impl Row {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

async fn raw_row(events: usize) -> Result<Row, String> {
    let topic = unique("bench-raw");
    let admin: AdminClient<DefaultClientContext> = client().create().map_err(|e| e.to_string())?;
    let results = admin
        .create_topics(
            [&NewTopic::new(
                &topic,
                PARTITIONS,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        )
        .await
        .map_err(|e| e.to_string())?;
    for result in results {
        result.map_err(|(t, code)| format!("creating {t}: {code}"))?;
    }
    let read = Arc::new(AtomicUsize::new(0));
    let consumer_topic = topic.clone();
    let consumer_read = read.clone();
    let consumer = std::thread::spawn(move || -> Result<Instant, String> {
        let consumer: BaseConsumer = client()
            .set("group.id", unique("bench-raw-group"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "true")
            .create()
            .map_err(|e| e.to_string())?;
        consumer
            .subscribe(&[&consumer_topic])
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(600);
        while consumer_read.load(Ordering::Relaxed) < events {
            if Instant::now() > deadline {
                return Err("the raw consumer timed out".into());
            }
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                message.map_err(|e| e.to_string())?;
                consumer_read.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(Instant::now())
    });
    // Let the consumer join before the clock starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let producer: FutureProducer = client()
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .create()
        .map_err(|e| e.to_string())?;
    let body = payload();
    let window = Arc::new(Semaphore::new(PRODUCE_WINDOW));
    let started = Instant::now();
    let mut pending = Vec::with_capacity(events);
    for n in 0..events {
        let envelope = Envelope {
            attributes: vec![
                ("specversion".into(), "1.0".into()),
                ("id".into(), format!("raw-{n}")),
                ("source".into(), "/bench".into()),
                ("type".into(), "dev.rivulet.bench".into()),
                ("datacontenttype".into(), "application/json".into()),
            ],
            data: Some(body.clone().into()),
        };
        let permit = window.clone().acquire_owned().await.expect("open");
        let record = binding::to_binary(&envelope);
        let delivery = producer
            .send_result(
                FutureRecord::<str, [u8]>::to(&topic)
                    .headers(record.headers)
                    .payload(body.as_bytes()),
            )
            .map_err(|(e, _)| e.to_string())?;
        pending.push(tokio::spawn(async move {
            let outcome = delivery.await;
            drop(permit);
            matches!(outcome, Ok(Ok(_)))
        }));
    }
    for delivery in pending {
        if !delivery.await.unwrap_or(false) {
            return Err("a raw produce failed".into());
        }
    }
    let produced = started.elapsed();
    let finished = tokio::task::spawn_blocking(move || consumer.join())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|_| "the consumer thread panicked".to_string())??;
    let _ = admin.delete_topics(&[&topic], &AdminOptions::new()).await;
    Ok(Row {
        name: "raw rdkafka produce + consume",
        events,
        elapsed: finished - started,
        produce_rate: events as f64 / produced.as_secs_f64(),
    })
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
    let settings: BTreeMap<&str, String> = BTreeMap::from([
        ("bootstrap.servers", servers()),
        ("default.topic.partitions", PARTITIONS.to_string()),
        ("default.topic.replication.factor", "1".into()),
    ]);
    let resources = [
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "kafka", "namespace": namespace}, "data": settings}),
        json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
               "metadata": {"name": "load", "namespace": namespace,
                            "annotations": {"eventing.knative.dev/broker.class": "Kafka"}},
               "spec": {"config": {"apiVersion": "v1", "kind": "ConfigMap", "name": "kafka"}}}),
        json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
               "metadata": {"name": "all", "namespace": namespace,
                            "annotations": {"rivulet.dev/parallelism": "64"}},
               "spec": {"broker": "load", "subscriber": {"uri": format!("http://{subscriber_addr}/")}}}),
    ];
    for resource in &resources {
        let kind = resource["kind"].as_str().unwrap_or_default();
        let (group, plural) = match kind {
            "ConfigMap" => ("api/v1".to_owned(), "configmaps"),
            "Broker" => ("apis/eventing.knative.dev/v1".to_owned(), "brokers"),
            _ => ("apis/eventing.knative.dev/v1".to_owned(), "triggers"),
        };
        let name = resource["metadata"]["name"].as_str().unwrap_or_default();
        let url = format!("{base}/{group}/namespaces/{namespace}/{plural}/{name}");
        let response = http
            .put(url)
            .json(resource)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("applying {kind}: {}", response.status()));
        }
    }
    // Wait until the trigger consumes: one probe event must arrive.
    let ingress = format!("{base}/{namespace}/load");
    let probe_deadline = Instant::now() + Duration::from_secs(60);
    while delivered.load(Ordering::Relaxed) == 0 {
        if Instant::now() > probe_deadline {
            return Err("the Kafka broker never delivered a probe event".into());
        }
        let _ = post(&http, &ingress, "probe", "{}").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
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
    let produced = started.elapsed();
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
        name: "Rivulet ingress -> Kafka -> trigger",
        events,
        elapsed,
        produce_rate: events as f64 / produced.as_secs_f64(),
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
        "Kafka server {} — {events} events of 1 KiB per row, 3 partitions, acks=all",
        servers()
    );
    println!(
        "{:<40} {:>14} {:>16}",
        "row", "end-to-end/s", "acknowledged/s"
    );
    let mut failed = false;
    for row in rows {
        match row {
            Ok(row) => println!(
                "{:<40} {:>14.0} {:>16.0}",
                row.name,
                row.rate(),
                row.produce_rate
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
