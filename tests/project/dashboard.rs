//! The Grafana dashboard in `deploy/grafana/`: importable as shared (a Prometheus data source
//! input, the namespace, broker and trigger variables), and every metric its queries use is
//! one a running server serves, so the dashboard cannot drift from the code.

use rivulet_testkit as support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Recorder, TestEvent, TestServer, WAIT};

const NS: &str = "default";
const BROKER: &str = "default";
const DATASOURCE: &str = "${DS_PROMETHEUS}";

fn dashboard() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/rivulet.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

/// Every PromQL query: panel targets and template variables.
fn queries(dashboard: &Value) -> Vec<String> {
    let mut queries: Vec<String> = panels(dashboard)
        .iter()
        .flat_map(|panel| panel["targets"].as_array().into_iter().flatten())
        .filter_map(|target| target["expr"].as_str().map(str::to_owned))
        .collect();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let query = &variable["query"];
        if let Some(text) = query.as_str().or_else(|| query["query"].as_str()) {
            queries.push(text.to_owned());
        }
    }
    queries
}

/// The metric names a query uses: Rivulet's own and Knative's.
fn metric_names(query: &str) -> BTreeSet<String> {
    query
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("rivulet_") || word.starts_with("mt_broker_"))
        .map(str::to_owned)
        .collect()
}

/// The sample names in Prometheus text.
fn served_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_dashboard_is_importable() {
    let dashboard = dashboard();
    assert!(
        dashboard["schemaVersion"].as_u64().is_some(),
        "a schemaVersion"
    );
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    let inputs = dashboard["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs.iter().any(|input| input["name"] == "DS_PROMETHEUS"
            && input["type"] == "datasource"
            && input["pluginId"] == "prometheus"),
        "a Prometheus data source input: {inputs:?}"
    );
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("templating variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for wanted in ["namespace", "broker", "trigger"] {
        assert!(
            variables.contains(&wanted),
            "variable {wanted} in {variables:?}"
        );
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        assert_eq!(
            variable["datasource"]["uid"], DATASOURCE,
            "variable {}",
            variable["name"]
        );
    }
    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let id = panel["id"].as_u64().expect("every panel has an id");
        assert!(ids.insert(id), "panel id {id} used twice");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], DATASOURCE,
            "panel {}",
            panel["title"]
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(
            !targets.is_empty(),
            "panel {} queries something",
            panel["title"]
        );
        for target in targets {
            assert_eq!(target["datasource"]["uid"], DATASOURCE);
            assert!(target["expr"].as_str().is_some_and(|e| !e.is_empty()));
        }
    }
}

#[test]
fn metric_names_are_found_in_queries() {
    assert_eq!(
        metric_names(
            "sum by (le) (rate(mt_broker_filter_event_dispatch_latencies_bucket{a=~\"$b\"}[5m])) / rivulet_trigger_queue_depth"
        ),
        BTreeSet::from([
            "mt_broker_filter_event_dispatch_latencies_bucket".to_owned(),
            "rivulet_trigger_queue_depth".to_owned()
        ])
    );
}

/// Every metric the dashboard queries is served by a server that delivered an event, refused
/// one by its egress policy and sampled its queue depths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_served() {
    let used: BTreeSet<String> = queries(&dashboard())
        .iter()
        .flat_map(|query| metric_names(query))
        .collect();
    assert!(
        used.len() >= 10,
        "the dashboard queries the metrics it is for: {used:?}"
    );

    let server = TestServer::start_ready_with(|options| {
        options.queue_depth_interval = Duration::from_millis(200);
    })
    .await;
    let recorder = Recorder::start().await;
    server
        .create_trigger(&support::trigger(NS, "all", BROKER, &recorder.url))
        .await;
    // The cloud metadata address is refused by the default egress policy: a failed delivery
    // and an egress refusal, without connecting anywhere.
    let mut refused = support::trigger(NS, "refused", BROKER, "http://169.254.169.254/");
    refused["spec"]["delivery"] = json!({"retry": 0});
    server.create_trigger(&refused).await;
    server
        .send(
            NS,
            BROKER,
            &TestEvent::new("dashboard-1", "com.example.dashboard"),
        )
        .await;
    recorder.wait_for_id("dashboard-1").await;
    server.wait_deliveries_final(NS, "refused", 1).await;

    // Queue depth is sampled: wait for a round rather than for a fixed time.
    let deadline = Instant::now() + WAIT;
    loop {
        let served = served_names(&server.metrics_text().await);
        let missing: Vec<&String> = used.difference(&served).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard queries metrics /metrics does not serve: {missing:?}\nserved: {served:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
