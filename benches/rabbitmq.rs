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

mod channel_rows;

use std::sync::Arc;
use std::time::{Duration, Instant};

use channel_rows::{BrokerSetup, Row, events_per_row, payload, rivulet_row, unique};
use futures::StreamExt;
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

fn uri() -> String {
    std::env::var("RIVULET_RABBITMQ_URI")
        .unwrap_or_else(|_| rivulet_channels::rabbitmq::DEFAULT_URI.to_owned())
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
        write_rate: events as f64 / published.as_secs_f64(),
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
                name: "Rivulet ingress -> RabbitMQ -> trigger",
                class: "RabbitMQBroker",
                config: json!({"apiVersion": "v1", "kind": "Secret",
                         "metadata": {"name": "rabbitmq"}, "stringData": {"uri": uri()}}),
                delivery_deadline: Duration::from_secs(600),
            },
        )
        .await;
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
