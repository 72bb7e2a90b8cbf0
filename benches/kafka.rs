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

mod channel_rows;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use channel_rows::{BrokerSetup, Row, events_per_row, payload, rivulet_row, unique};
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

fn servers() -> String {
    std::env::var("RIVULET_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

fn client() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", servers());
    config
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
        write_rate: events as f64 / produced.as_secs_f64(),
    })
}

fn main() {
    rivulet::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let events = events_per_row(20000);
    let rows = runtime.block_on(async {
        let raw = raw_row(events).await;
        let rivulet = rivulet_row(
            events,
            BrokerSetup {
                name: "Rivulet ingress -> Kafka -> trigger",
                class: "Kafka",
                config: json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kafka"},
                         "data": {"bootstrap.servers": servers(),
                                  "default.topic.partitions": PARTITIONS.to_string(),
                                  "default.topic.replication.factor": "1"}}),
                delivery_deadline: Duration::from_secs(600),
            },
        )
        .await;
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
                row.write_rate
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
