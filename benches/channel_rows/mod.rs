//! What the channel benchmarks (`kafka`, `nats`, `rabbitmq`) share: the payload, posting to
//! ingress, and the Rivulet row, which differs between them only in the broker's class and
//! configuration object.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use rivulet::server::ServeOptions;
use serde_json::{Value, json};

/// HTTP connections posting to ingress in the Rivulet row.
const HTTP_CONNECTIONS: usize = 64;

/// `RIVULET_BENCH_EVENTS`, else `default`.
pub fn events_per_row(default: usize) -> usize {
    std::env::var("RIVULET_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A 1 KiB JSON payload.
pub fn payload() -> String {
    let filler = "x".repeat(1024 - 40);
    format!("{{\"orderId\":\"4f1c2a9e\",\"filler\":\"{filler}\"}}")
}

pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{nanos}")
}

pub struct Row {
    pub name: &'static str,
    pub events: usize,
    pub elapsed: Duration,
    /// The writing side alone (acknowledged writes), per second.
    pub write_rate: f64,
}

impl Row {
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

/// The broker the Rivulet row runs through.
pub struct BrokerSetup {
    /// The row's name in the table.
    pub name: &'static str,
    /// `eventing.knative.dev/broker.class`.
    pub class: &'static str,
    /// The ConfigMap or Secret `spec.config` names (namespace filled in).
    pub config: Value,
    /// How long delivering everything may take.
    pub delivery_deadline: Duration,
}

/// Posts `events` to a Rivulet broker of `setup` with one trigger to a local subscriber
/// answering 202: events from the first post to the last delivery, per second.
pub async fn rivulet_row(events: usize, setup: BrokerSetup) -> Result<Row, String> {
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
    let mut config = setup.config;
    config["metadata"]["namespace"] = json!(namespace);
    let config_ref =
        json!({"apiVersion": "v1", "kind": config["kind"], "name": config["metadata"]["name"]});
    let resources = [
        config,
        json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
               "metadata": {"name": "load", "namespace": namespace,
                            "annotations": {"eventing.knative.dev/broker.class": setup.class}},
               "spec": {"config": config_ref}}),
        json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
               "metadata": {"name": "all", "namespace": namespace,
                            "annotations": {"rivulet.dev/parallelism": "64"}},
               "spec": {"broker": "load", "subscriber": {"uri": format!("http://{subscriber_addr}/")}}}),
    ];
    for resource in &resources {
        let kind = resource["kind"].as_str().unwrap_or_default();
        let (group, plural) = match kind {
            "ConfigMap" => ("api/v1", "configmaps"),
            "Secret" => ("api/v1", "secrets"),
            "Broker" => ("apis/eventing.knative.dev/v1", "brokers"),
            _ => ("apis/eventing.knative.dev/v1", "triggers"),
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
            return Err(format!("applying {kind} {name}: {}", response.status()));
        }
    }
    // Wait until the trigger consumes: one probe event must arrive.
    let ingress = format!("{base}/{namespace}/load");
    let probe_deadline = Instant::now() + Duration::from_secs(60);
    while delivered.load(Ordering::Relaxed) == 0 {
        if Instant::now() > probe_deadline {
            return Err(format!("{}: no probe event was delivered", setup.name));
        }
        let _ = post(&http, &ingress, "probe", "{}").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
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
    let written = started.elapsed();
    let deadline = Instant::now() + setup.delivery_deadline;
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
    // Deleting the broker removes its topic, stream or exchange.
    let _ = http
        .delete(format!(
            "{base}/apis/eventing.knative.dev/v1/namespaces/{namespace}/brokers/load"
        ))
        .send()
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.shutdown().await.map_err(|e| e.to_string())?;
    Ok(Row {
        name: setup.name,
        events,
        elapsed,
        write_rate: events as f64 / written.as_secs_f64(),
    })
}

/// Posts one binary-mode CloudEvent; the answer's status code.
pub async fn post(http: &reqwest::Client, url: &str, id: &str, body: &str) -> Result<u16, String> {
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
