//! NATS JetStream channel throughput beside raw async-nats, on the same server in the same run.
//!
//! Run with `cargo bench --bench nats` against the NATS server named by `RIVULET_NATS_URL`
//! (default `nats://127.0.0.1:4222`). `RIVULET_BENCH_EVENTS` sets the events per row
//! (default 10 000).
//!
//! Both rows move the same events (binary-mode CloudEvents of a 1 KiB JSON payload, in the
//! CloudEvents NATS binding, file-storage streams, explicit acknowledgements):
//! - raw async-nats: JetStream publishes with up to 1 024 acknowledgements outstanding while a
//!   pull consumer acknowledges each message; the figure is events from the first publish to
//!   the last acknowledgement, per second.
//! - Rivulet: a `NatsJetStreamBroker` with one trigger (parallelism 64); 64 HTTP connections
//!   post the events to ingress (each `202` waits for JetStream's acknowledgement) and a local
//!   subscriber answers `202`; the figure is events from the first post to the last delivery,
//!   per second.

mod channel_rows;

use std::sync::Arc;
use std::time::{Duration, Instant};

use channel_rows::{BrokerSetup, Row, events_per_row, payload, rivulet_row, unique};
use futures::StreamExt;
use rivulet_channels::Envelope;
use rivulet_channels::nats::async_nats::jetstream::{self, consumer::pull};
use rivulet_channels::nats::binding;
use serde_json::json;
use tokio::sync::Semaphore;

const PUBLISH_WINDOW: usize = 1_024;

fn nats_url() -> String {
    std::env::var("RIVULET_NATS_URL")
        .unwrap_or_else(|_| rivulet_channels::nats::DEFAULT_URL.to_owned())
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

async fn raw_row(events: usize) -> Result<Row, String> {
    let client = rivulet_channels::nats::connect(&nats_url(), "rivulet bench raw")
        .await
        .map_err(|e| e.to_string())?;
    let js = jetstream::new(client.clone());
    let name = unique("BENCH_RAW").replace('-', "_");
    let subject = format!("{name}.events");
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("reader".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let reader = tokio::spawn(async move {
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        let mut read = 0;
        while read < events {
            match tokio::time::timeout(Duration::from_secs(60), messages.next()).await {
                Ok(Some(Ok(message))) => {
                    message.ack().await.map_err(|e| e.to_string())?;
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
        let encoded =
            binding::encode(&envelope(&format!("raw-{n}"), &body)).map_err(|e| e.to_string())?;
        let permit = window.clone().acquire_owned().await.expect("open");
        let ack = js
            .publish_with_headers(subject.clone(), encoded.headers, encoded.payload)
            .await
            .map_err(|e| e.to_string())?;
        pending.push(tokio::spawn(async move {
            let outcome = ack.await;
            drop(permit);
            outcome.is_ok()
        }));
    }
    for ack in pending {
        if !ack.await.unwrap_or(false) {
            return Err("a raw publish was not acknowledged".into());
        }
    }
    let published = started.elapsed();
    let finished = reader.await.map_err(|e| e.to_string())??;
    let _ = js.delete_stream(&name).await;
    Ok(Row {
        name: "raw async-nats publish + consume",
        events,
        elapsed: finished - started,
        write_rate: events as f64 / published.as_secs_f64(),
    })
}

fn main() {
    rivulet::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let events = events_per_row(10000);
    let (raw, rivulet) = runtime.block_on(async {
        let raw = raw_row(events).await;
        let rivulet = rivulet_row(
            events,
            BrokerSetup {
                name: "Rivulet ingress -> JetStream -> trigger",
                class: "NatsJetStreamBroker",
                config: json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "nats"},
                         "data": {"url": nats_url(), "storage": "file"}}),
                delivery_deadline: Duration::from_secs(300),
            },
        )
        .await;
        (raw, rivulet)
    });
    println!(
        "NATS {} — {events} events of 1 KiB per row, file storage, explicit acks",
        nats_url()
    );
    println!(
        "{:<40} {:>14} {:>16}",
        "row", "end-to-end/s", "acknowledged/s"
    );
    let mut rates = Vec::new();
    let mut failed = false;
    for row in [raw, rivulet] {
        match row {
            Ok(row) => {
                println!(
                    "{:<40} {:>14.0} {:>16.0}",
                    row.name,
                    row.rate(),
                    row.write_rate
                );
                rates.push(row.rate());
            }
            Err(error) => {
                failed = true;
                eprintln!("a row failed: {error}");
            }
        }
    }
    if let [raw, rivulet] = rates[..] {
        println!("Rivulet end to end / raw: {:.2}", rivulet / raw);
    }
    if failed {
        std::process::exit(1);
    }
}
