//! Method-style test utilities: [`TestServer`] (an in-process server tuned for delivery tests),
//! [`Api`] (resource API, ingress and `/metrics` of any server by base URL), [`TestEvent`]
//! (a binary-mode event to post) and [`metric_sum`] (reads Prometheus text).

use std::ops::Deref;
use std::path::Path;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use bytes::Bytes;
use rivulet::server::ServeOptions;
use serde_json::{Value, json};

use super::{InProcessServer, WAIT, condition, http, resource_path, wait_for};

/// Server logs go to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Delivery-test settings on top of the defaults: short shutdown grace, a 2 s cap on
/// backoff and `Retry-After`, and a 5 s default request timeout (well under [`WAIT`]).
pub fn tune_for_tests(options: &mut ServeOptions) {
    options.shutdown_grace = Duration::from_millis(200);
    options.delivery.backoff_cap = Duration::from_secs(2);
    options.delivery.timeout = Duration::from_secs(5);
}

/// An [`InProcessServer`] with [`tune_for_tests`] settings; dereferences to its [`Api`] and
/// stops when dropped. With no `config`, broker `default/default` exists.
pub struct TestServer {
    client: Api,
    inner: InProcessServer,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts with the test settings and waits until broker `default/default` is Ready.
    pub async fn start_ready() -> TestServer {
        Self::start_ready_with(|_| {}).await
    }

    /// Starts with the test settings, with a recording receiver to point sinks, sources and
    /// triggers at.
    pub async fn start_with_recorder() -> (TestServer, crate::Recorder) {
        (Self::start().await, crate::Recorder::start().await)
    }

    /// Starts with broker `default/default` Ready and a subscriber taking all its events
    /// through trigger `default/all`.
    pub async fn start_subscribed() -> (TestServer, crate::Subscriber) {
        let server = Self::start_ready().await;
        let subscriber = crate::Subscriber::start().await;
        let all = super::trigger("default", "all", "default", &subscriber.url());
        server.create_trigger(&all).await;
        (server, subscriber)
    }

    /// Starts with the test settings and `configure`'s changes, then waits until broker
    /// `default/default` is Ready.
    pub async fn start_ready_with(configure: impl FnOnce(&mut ServeOptions)) -> TestServer {
        let server = Self::start_with(configure).await;
        server.wait_ready("Broker", "default", "default").await;
        server
    }

    /// Starts with the test settings, then `configure`'s changes.
    pub async fn start_with(configure: impl FnOnce(&mut ServeOptions)) -> TestServer {
        init_tracing();
        let inner = InProcessServer::start_with(|options| {
            tune_for_tests(options);
            configure(options);
        })
        .await;
        TestServer {
            client: Api::new(&inner.base, &inner.api),
            inner,
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.inner.data_dir.path()
    }

    /// Stops the server as SIGTERM would and waits for the end.
    pub async fn shutdown(mut self) {
        if let Some(server) = self.inner.server.take() {
            server.shutdown().await.expect("the server stops cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = &self.inner.server {
            server.shutdown_token().cancel();
        }
    }
}

impl Deref for TestServer {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.client
    }
}

/// A client of one Rivulet server (in process or child) by its two URLs.
#[derive(Clone)]
pub struct Api {
    /// Ingress: `http://127.0.0.1:PORT`, no trailing slash.
    pub base: String,
    /// The resource API, likewise.
    pub api: String,
    pub client: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, api: &str) -> Api {
        Api {
            base: base.trim_end_matches('/').to_string(),
            api: api.trim_end_matches('/').to_string(),
            client: http(),
        }
    }

    /// The ingress URL of a broker.
    pub fn ingress_url(&self, namespace: &str, broker: &str) -> String {
        format!("{}/{namespace}/{broker}", self.base)
    }

    /// PUTs a manifest; returns the status code and the answer.
    pub async fn try_apply(&self, manifest: &Value) -> (u16, Value) {
        super::put(&self.api, manifest).await
    }

    /// PUTs a manifest, fails the test unless accepted; returns the stored object.
    pub async fn apply(&self, manifest: &Value) -> Value {
        super::apply(&self.api, manifest).await
    }

    /// GETs `path` of the resource API with the test token; returns the status code and the
    /// JSON answer (`Null` when the answer is not JSON).
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = super::api_request(reqwest::Method::GET, format!("{}{path}", self.api))
            .send()
            .await
            .expect("the server answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// An object, or `None` when it does not exist.
    pub async fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        super::get(&self.api, kind, namespace, name).await
    }

    /// Deletes an object, forced: events it still holds are dead-lettered or dropped rather
    /// than refusing the delete (tests/api/deletion.rs covers the refusal). Fails the test unless
    /// the server answers 200.
    pub async fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let response = super::api_request(
            reqwest::Method::DELETE,
            format!(
                "{}{}?force=true",
                self.api,
                resource_path(kind, namespace, name)
            ),
        )
        .send()
        .await
        .expect("the resource API answers");
        let status = response.status();
        assert_eq!(
            status,
            StatusCode::OK,
            "DELETE {kind} {namespace}/{name}: {}",
            response.text().await.unwrap_or_default()
        );
    }

    /// Waits until condition `condition_type` of the object has `status` (`"True"` or
    /// `"False"`); returns the condition. On timeout the panic shows the last status seen.
    pub async fn wait_condition(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        condition_type: &str,
        status: &str,
    ) -> Value {
        let start = Instant::now();
        loop {
            let object = self.get(kind, namespace, name).await;
            if let Some(found) = object
                .as_ref()
                .and_then(|o| condition(o, condition_type))
                .filter(|c| c["status"] == status)
            {
                return found;
            }
            if start.elapsed() > WAIT {
                let seen = object.map(|o| o["status"].clone());
                panic!(
                    "timed out after {WAIT:?} waiting for {kind} {namespace}/{name} condition \
                     {condition_type}={status}; last status seen: {seen:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the object is Ready; returns it.
    pub async fn wait_ready(&self, kind: &str, namespace: &str, name: &str) -> Value {
        self.wait_condition(kind, namespace, name, "Ready", "True")
            .await;
        self.get(kind, namespace, name)
            .await
            .expect("a ready object exists")
    }

    /// Waits until an EventType of events of type `event_type` in `namespace` has an
    /// inferred schema; returns its name.
    pub async fn wait_eventtype_schema(&self, namespace: &str, event_type: &str) -> String {
        let path = format!("/apis/eventing.knative.dev/v1beta3/namespaces/{namespace}/eventtypes");
        let what = format!("an EventType of {event_type} with a schema");
        crate::wait_for(&what, WAIT, || async {
            let (_, list) = self.get_json(&path).await;
            list["items"].as_array()?.iter().find_map(|item| {
                item.pointer("/status/schema")?;
                let types = item.pointer("/spec/attributes")?.as_array()?;
                types
                    .iter()
                    .any(|a| a["name"] == "type" && a["value"] == event_type)
                    .then_some(())?;
                item.pointer("/metadata/name")?.as_str().map(str::to_string)
            })
        })
        .await
    }

    /// Applies a broker with `spec` (`Value::Null` for none) and waits until it is Ready.
    pub async fn create_broker(&self, namespace: &str, name: &str, spec: Value) -> Value {
        let mut manifest = super::broker(namespace, name);
        if !spec.is_null() {
            manifest["spec"] = spec;
        }
        self.apply(&manifest).await;
        self.wait_ready("Broker", namespace, name).await
    }

    /// Applies a trigger manifest (see [`super::trigger`]) and waits until it is Ready;
    /// returns the trigger with its status.
    pub async fn create_trigger(&self, manifest: &Value) -> Value {
        self.apply(manifest).await;
        let namespace = manifest["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default");
        let name = manifest["metadata"]["name"]
            .as_str()
            .expect("the trigger has a name");
        self.wait_ready("Trigger", namespace, name).await
    }

    /// Posts an event to a broker and fails the test unless ingress answers 202.
    pub async fn send(&self, namespace: &str, broker: &str, event: &TestEvent) {
        let (status, body) = self
            .post_raw(namespace, broker, event.headers(), event.body.clone())
            .await;
        assert_eq!(
            status,
            StatusCode::ACCEPTED,
            "ingress refused event {}: {body}",
            event.id
        );
    }

    /// Posts any body with any headers to a broker's ingress; returns status and body.
    pub async fn post_raw(
        &self,
        namespace: &str,
        broker: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> (StatusCode, String) {
        let response = self
            .client
            .post(self.ingress_url(namespace, broker))
            .headers(headers)
            .body(body)
            .send()
            .await
            .expect("ingress answers");
        let status = response.status();
        (status, response.text().await.unwrap_or_default())
    }

    /// The `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        super::api_request(reqwest::Method::GET, format!("{}/metrics", self.api))
            .send()
            .await
            .expect("/metrics answers")
            .text()
            .await
            .expect("/metrics is text")
    }

    /// The sum of the samples of `name` (the full sample name, such as
    /// `rivulet_trigger_deliveries_total`) whose labels include `labels`; 0 when none.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics_text().await, name, labels)
    }

    /// Waits until [`Api::metric`] equals `value`.
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        let what = format!("metric {name}{labels:?} to be {value}");
        wait_for(&what, WAIT, || async {
            (self.metric(name, labels).await == value).then_some(())
        })
        .await;
    }

    /// How many deliveries of a trigger ended with `outcome` (`delivered`, `dead_lettered`,
    /// `failed`, ...).
    pub async fn delivery_outcomes(&self, namespace: &str, trigger: &str, outcome: &str) -> f64 {
        self.metric(
            "rivulet_trigger_deliveries_total",
            &[
                ("namespace", namespace),
                ("trigger", trigger),
                ("outcome", outcome),
            ],
        )
        .await
    }

    /// Waits until a trigger has reached `count` final delivery outcomes (delivered,
    /// dead-lettered or failed): every attempt for those events is over.
    pub async fn wait_deliveries_final(&self, namespace: &str, trigger: &str, count: u64) {
        self.wait_metric(
            "rivulet_trigger_deliveries_total",
            &[("namespace", namespace), ("trigger", trigger)],
            count as f64,
        )
        .await;
    }
}

/// Label names and values of one sample.
type Labels = Vec<(String, String)>;

/// The name, labels and value of one sample line of the Prometheus text format.
fn parse_sample(line: &str) -> Option<(&str, Labels, f64)> {
    let Some(open) = line.find('{') else {
        let (name, value) = line.split_once(' ')?;
        return Some((name, Vec::new(), value.trim().parse().ok()?));
    };
    let name = &line[..open];
    let mut labels = Vec::new();
    let mut chars = line[open + 1..].chars();
    loop {
        // key="value" pairs separated by commas, up to the closing brace.
        let mut key = String::new();
        for c in chars.by_ref() {
            match c {
                '=' => break,
                ',' | ' ' => {}
                '}' => {
                    let rest: String = chars.collect();
                    let value = rest.split_whitespace().next()?.parse().ok()?;
                    return Some((name, labels, value));
                }
                c => key.push(c),
            }
        }
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        let mut escaped = false;
        for c in chars.by_ref() {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => break,
                (true, 'n') => {
                    value.push('\n');
                    escaped = false;
                }
                (_, c) => {
                    value.push(c);
                    escaped = false;
                }
            }
        }
        labels.push((key, value));
    }
}

/// The sum of the samples named `name` in Prometheus text whose labels include `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(parse_sample)
        .filter(|(sample, found, _)| {
            *sample == name
                && labels
                    .iter()
                    .all(|(k, v)| found.iter().any(|(fk, fv)| fk == k && fv == v))
        })
        .map(|(_, _, value)| value)
        .sum()
}

/// The value of the first sample named `name` whose labels include `labels`; `None` when
/// there is none (unlike [`metric_sum`], which cannot tell a missing series from a zero).
pub fn metric_sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(parse_sample)
        .find(|(sample, found, _)| {
            *sample == name
                && labels
                    .iter()
                    .all(|(k, v)| found.iter().any(|(fk, fv)| fk == k && fv == v))
        })
        .map(|(_, _, value)| value)
}

/// A CloudEvent in HTTP binary mode: `ce-` headers and a body. Header values go out exactly
/// as given: percent-encode them where the binding requires it (space, `"`, `%`, non-ASCII).
#[derive(Debug, Clone)]
pub struct TestEvent {
    pub id: String,
    /// Header names (lower case) and values, in order.
    pub header_pairs: Vec<(String, String)>,
    pub body: Bytes,
}

impl TestEvent {
    /// A 1.0 event with this id and type, source `/rivulet/tests`, no data.
    pub fn new(id: &str, event_type: &str) -> TestEvent {
        TestEvent {
            id: id.to_string(),
            header_pairs: vec![
                ("ce-specversion".into(), "1.0".into()),
                ("ce-id".into(), id.into()),
                ("ce-source".into(), "/rivulet/tests".into()),
                ("ce-type".into(), event_type.into()),
            ],
            body: Bytes::new(),
        }
    }

    /// Sets or replaces header `name`.
    pub fn header(mut self, name: &str, value: &str) -> TestEvent {
        let name = name.to_ascii_lowercase();
        if name == "ce-id" {
            self.id = value.to_string();
        }
        match self.header_pairs.iter_mut().find(|(n, _)| *n == name) {
            Some(pair) => pair.1 = value.to_string(),
            None => self.header_pairs.push((name, value.to_string())),
        }
        self
    }

    /// Sets context attribute `name` (header `ce-{name}`).
    pub fn attr(self, name: &str, value: &str) -> TestEvent {
        self.header(&format!("ce-{name}"), value)
    }

    pub fn source(self, source: &str) -> TestEvent {
        self.attr("source", source)
    }

    /// Sets the data and its content type.
    pub fn data(mut self, content_type: &str, body: impl Into<Bytes>) -> TestEvent {
        self.body = body.into();
        self.header("content-type", content_type)
    }

    /// Posts the event to any URL (a broker, a sink); returns the status, 0 when nothing
    /// answered.
    pub async fn post_to(&self, url: &str) -> u16 {
        http()
            .post(url)
            .headers(self.headers())
            .body(self.body.clone())
            .send()
            .await
            .map(|response| response.status().as_u16())
            .unwrap_or(0)
    }

    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in &self.header_pairs {
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"),
                HeaderValue::from_str(value).expect("a valid header value"),
            );
        }
        headers
    }
}

/// A JSON manifest with one more annotation.
pub fn with_annotation(mut manifest: Value, name: &str, value: &str) -> Value {
    if !manifest["metadata"]["annotations"].is_object() {
        manifest["metadata"]["annotations"] = json!({});
    }
    manifest["metadata"]["annotations"][name] = json!(value);
    manifest
}
