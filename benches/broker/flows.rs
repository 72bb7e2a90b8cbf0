//! The `flows` section: a 3-step Sequence and a 3-branch Parallel end to end on each channel,
//! beside the one-trigger broker row of the same channel, measured the same way in the same
//! run (closed loop, at most [`E2E_WINDOW`] events between send and subscriber).
//!
//! - Sequence: three relay steps (each answers with the event it got) over channels of the
//!   backend, the last step's reply to the subscriber: four deliveries and four channel
//!   writes per event.
//! - Parallel: three branches without filters over channels of the backend, each to a
//!   subscriber of its own; the first one's receipts pace the loop, the others count.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::{
    Channel, E2E_WINDOW, Pace, Rivulet, Row, Runtimes, Settings, Subscriber, System, Target,
    end_to_end_row, load_spec, raw, run_load, serve_locally, start_subscriber,
};

/// Payload of the flow rows, bytes.
pub const FLOWS_PAYLOAD: usize = 1024;

/// The channel template of `channel`'s backend, and the configuration it needs first.
fn template(channel: Channel, namespace: &str) -> (Value, Option<Value>) {
    match channel {
        Channel::Memory => (
            json!({"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel"}),
            None,
        ),
        Channel::Embedded => (
            json!({"apiVersion": "messaging.rivulet.dev/v1alpha1", "kind": "EmbeddedChannel"}),
            None,
        ),
        Channel::Kafka => (
            json!({"apiVersion": "messaging.knative.dev/v1beta1", "kind": "KafkaChannel",
                "spec": {"numPartitions": raw::KAFKA_PARTITIONS, "replicationFactor": 1}}),
            Some(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "kafka-channel-config", "namespace": "knative-eventing"},
                "data": {"bootstrap.servers": raw::kafka_servers()}})),
        ),
        Channel::RabbitMq => (
            json!({"apiVersion": "messaging.rivulet.dev/v1alpha1", "kind": "RabbitmqChannel",
                "spec": {"config": {"kind": "Secret", "name": "rabbitmq"}}}),
            Some(json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "rabbitmq", "namespace": namespace},
                "stringData": {"uri": raw::rabbitmq_uri()}})),
        ),
        Channel::Nats => (
            json!({"apiVersion": "messaging.knative.dev/v1alpha1", "kind": "NatsJetStreamChannel"}),
            Some(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "config-nats", "namespace": "knative-eventing"},
                "data": {"url": raw::nats_url(), "storage": "file"}})),
        ),
    }
}

/// A step that answers each event with itself (binary mode), as a function that passes
/// events on would.
async fn start_relay() -> std::io::Result<std::net::SocketAddr> {
    let router = axum::Router::new().route(
        "/",
        axum::routing::post(|headers: HeaderMap, body: Bytes| async move {
            let mut reply = HeaderMap::new();
            for (name, value) in &headers {
                if name.as_str().starts_with("ce-") || name == "content-type" {
                    reply.insert(name.clone(), value.clone());
                }
            }
            (StatusCode::OK, reply, body).into_response()
        }),
    );
    serve_locally(router).await
}

/// The flow rows of every channel: the broker's one-trigger row, then the Sequence's and
/// the Parallel's.
pub fn rows(runtimes: &Runtimes, settings: &Settings) -> (Vec<Row>, Vec<String>) {
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for channel in &settings.channels {
        let broker = end_to_end_row(
            runtimes,
            settings,
            *channel,
            System::Rivulet,
            FLOWS_PAYLOAD,
            None,
        )
        .map(|mut row| {
            row.section = "flows";
            row.label = format!("{}, broker, 1 trigger", channel.name());
            row
        });
        for (what, row) in [
            ("broker", broker),
            (
                "sequence",
                flow_row(runtimes, settings, *channel, Flow::Sequence),
            ),
            (
                "parallel",
                flow_row(runtimes, settings, *channel, Flow::Parallel),
            ),
        ] {
            match row {
                Ok(row) => {
                    eprintln!(
                        "bench: flows {}: {:.0} ev/s in",
                        row.label, row.result.accepted_per_second
                    );
                    rows.push(row);
                }
                Err(error) => {
                    eprintln!("bench: flows {} {what} failed: {error}", channel.name());
                    failures.push(format!("flows {} {what}: {error}", channel.name()));
                }
            }
        }
    }
    (rows, failures)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Sequence,
    Parallel,
}

fn flow_row(
    runtimes: &Runtimes,
    settings: &Settings,
    channel: Channel,
    flow: Flow,
) -> Result<Row, String> {
    let subscriber = Subscriber::new(None);
    let others = [Subscriber::new(None), Subscriber::new(None)];
    let rivulet = runtimes.sut.block_on(Rivulet::start_with_journal(true))?;
    let outcome = runtimes.load.block_on(async {
        let subscriber_addr = start_subscriber(subscriber.clone())
            .await
            .map_err(|e| format!("subscriber: {e}"))?;
        let (template, config) = template(channel, &rivulet.namespace);
        if let Some(config) = config {
            let kind = config["kind"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase();
            let namespace = config["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = config["metadata"]["name"].as_str().unwrap_or_default();
            rivulet
                .put(
                    &format!("/api/v1/namespaces/{namespace}/{kind}s/{name}"),
                    config.clone(),
                )
                .await?;
        }
        let (name, ingress_channel, object) = match flow {
            Flow::Sequence => {
                let mut steps = Vec::new();
                for _ in 0..3 {
                    let relay = start_relay().await.map_err(|e| format!("relay: {e}"))?;
                    steps.push(json!({"uri": format!("http://{relay}/")}));
                }
                let spec = json!({
                    "channelTemplate": template,
                    "steps": steps,
                    "reply": {"uri": format!("http://{subscriber_addr}/")},
                });
                ("seq", "seq-kn-sequence-0", ("sequences", spec))
            }
            Flow::Parallel => {
                let mut branches =
                    vec![json!({"subscriber": {"uri": format!("http://{subscriber_addr}/")}})];
                for other in &others {
                    let addr = start_subscriber(other.clone())
                        .await
                        .map_err(|e| format!("subscriber: {e}"))?;
                    branches.push(json!({"subscriber": {"uri": format!("http://{addr}/")}}));
                }
                let spec = json!({"channelTemplate": template, "branches": branches});
                ("par", "par-kn-parallel", ("parallels", spec))
            }
        };
        let (plural, spec) = object;
        let kind = if flow == Flow::Sequence {
            "Sequence"
        } else {
            "Parallel"
        };
        let path = rivulet.resource_path("apis/flows.knative.dev/v1", plural, name);
        rivulet
            .put(
                &path,
                json!({"apiVersion": "flows.knative.dev/v1", "kind": kind,
                    "metadata": {"name": name, "namespace": rivulet.namespace}, "spec": spec}),
            )
            .await?;
        await_ready(&rivulet, &path).await?;
        // Deliveries in flight per Subscription, as the broker row's trigger has.
        set_parallelism(&rivulet).await?;
        let ingress_path = format!("/{}/{ingress_channel}-kn-channel", rivulet.namespace);
        await_delivery(&rivulet, &ingress_path, &subscriber).await?;
        for other in &others {
            other.received.store(0, Ordering::Relaxed);
        }
        let credits = Arc::new(Semaphore::new(E2E_WINDOW));
        subscriber.set_credits(Some(credits.clone()));
        let target = Target::Http {
            addr: rivulet.addr(),
            path: ingress_path,
        };
        let spec = load_spec(
            settings,
            target,
            FLOWS_PAYLOAD,
            Pace::ClosedLoop(credits),
            settings.connections,
        );
        run_load(spec, Some(subscriber.clone())).await
    });
    let Rivulet { server, .. } = rivulet;
    runtimes
        .sut
        .block_on(server.shutdown())
        .map_err(|e| format!("server shutdown failed: {e:#}"))?;
    let result = outcome?;
    let label = match flow {
        Flow::Sequence => format!("{}, Sequence, 3 steps", channel.name()),
        Flow::Parallel => format!("{}, Parallel, 3 branches", channel.name()),
    };
    let note = match flow {
        Flow::Sequence => format!("at most {E2E_WINDOW} events in flight; 4 deliveries per event"),
        Flow::Parallel => format!(
            "at most {E2E_WINDOW} events in flight at branch 1; branches 2 and 3 got {} and {}",
            others[0].received.load(Ordering::Relaxed),
            others[1].received.load(Ordering::Relaxed)
        ),
    };
    Ok(Row {
        section: "flows",
        channel,
        system: System::Rivulet,
        payload: FLOWS_PAYLOAD,
        label,
        result,
        e2e_latency: None,
        rate: None,
        note,
    })
}

/// Waits until the flow at `path` is Ready.
async fn await_ready(rivulet: &Rivulet, path: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let object = rivulet.get(path).await?;
        let ready = object
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("not ready after 120 s: {object}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Gives every Subscription of the server's namespace the broker row's parallelism.
async fn set_parallelism(rivulet: &Rivulet) -> Result<(), String> {
    let list_path = format!(
        "/apis/messaging.knative.dev/v1/namespaces/{}/subscriptions",
        rivulet.namespace
    );
    let list = rivulet.get(&list_path).await?;
    for mut subscription in list["items"].as_array().cloned().unwrap_or_default() {
        let name = subscription["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        subscription["metadata"]["annotations"]["rivulet.dev/parallelism"] = json!("64");
        if let Some(meta) = subscription["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
        }
        rivulet
            .put(&format!("{list_path}/{name}"), subscription)
            .await?;
    }
    Ok(())
}

/// Posts probe events to `path` until the subscriber has one, then forgets them.
async fn await_delivery(
    rivulet: &Rivulet,
    path: &str,
    subscriber: &Subscriber,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let url = format!("{}{path}", rivulet.server.base_url);
    while subscriber.received.load(Ordering::Relaxed) == 0 {
        if Instant::now() > deadline {
            return Err("no probe event came through in 120 s".into());
        }
        let _ = rivulet
            .client
            .post(&url)
            .header("ce-specversion", "1.0")
            .header("ce-id", "probe")
            .header("ce-source", "/bench/probe")
            .header("ce-type", super::EVENT_TYPE)
            .send()
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    subscriber.received.store(0, Ordering::Relaxed);
    Ok(())
}

/// The flow rows as a table: per channel, the broker's one-trigger figure and each flow's,
/// with the flow's share of it.
pub fn markdown(rows: &[Row]) -> String {
    let mut text = format!(
        "Flows, {} payload, closed loop (events in per second):\n\n\
         | channel | broker, 1 trigger | Sequence, 3 steps | Parallel, 3 branches |\n\
         |---|---|---|---|\n",
        super::size_label(FLOWS_PAYLOAD)
    );
    let mut channels: Vec<Channel> = rows.iter().map(|row| row.channel).collect();
    channels.dedup();
    for channel in channels {
        let rate = |suffix: &str| {
            rows.iter()
                .find(|row| row.channel == channel && row.label.ends_with(suffix))
                .map(|row| row.result.accepted_per_second)
        };
        let broker = rate("broker, 1 trigger");
        let cell = |flow: Option<f64>| match (flow, broker) {
            (Some(flow), Some(broker)) if broker > 0.0 => {
                format!("{flow:.0} ({:.2}×)", flow / broker)
            }
            (Some(flow), _) => format!("{flow:.0}"),
            (None, _) => "failed".to_owned(),
        };
        text.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            channel.name(),
            broker.map_or_else(|| "failed".to_owned(), |b| format!("{b:.0}")),
            cell(rate("Sequence, 3 steps")),
            cell(rate("Parallel, 3 branches")),
        ));
    }
    text
}
