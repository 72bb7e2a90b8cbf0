//! End-to-end tests of the sink adapters over real HTTP: the event display sink printing
//! what a trigger sends it (in a `rivulet serve` child process, reading its stdout), and the
//! HTTP forward sink (a target down for a while and back, refusals, invalid events).

use rivulet_testkit as support;
use rivulet_testkit::adapters as adapters_support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adapters_support::{apply, delete_object, ready_address, wait_ready};
use rivulet::event::Event;
use serde_json::{Value, json};
use support::sink_contract::{SinkTarget, sink_contract};
use support::{Recorder, TestServer, WAIT, free_port, http, wait_for, wait_until_ready};

const SINKS: &str = "sinks.rivulet.dev/v1alpha1";

/// Posts a binary-mode event to `url`; returns the status.
async fn post_event(url: &str, id: &str, event_type: &str, data: &str) -> u16 {
    let request = http()
        .post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/tests/sinks")
        .header("ce-type", event_type)
        .header("content-type", "application/json")
        .body(data.to_string());
    support::status_of(request).await
}

/// An HTTP target on a fixed port that records the events it accepts.
async fn start_target(port: u16) -> Arc<Mutex<Vec<Event>>> {
    let received: Arc<Mutex<Vec<Event>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the target port is free again");
    let app = {
        let received = received.clone();
        axum::Router::new().fallback(move |request: axum::extract::Request| {
            let received = received.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20)
                    .await
                    .unwrap_or_default();
                match rivulet::event::from_http(&parts.headers, body) {
                    Ok((_, events)) => {
                        received.lock().unwrap().extend(events);
                        http::StatusCode::ACCEPTED
                    }
                    Err(_) => http::StatusCode::BAD_REQUEST,
                }
            }
        })
    };
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    received
}

fn forward_sink(name: &str, uri: &str, delivery: Value) -> Value {
    json!({
        "apiVersion": SINKS,
        "kind": "HttpForwardSink",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"uri": uri, "delivery": delivery}
    })
}

#[tokio::test]
async fn a_forward_target_down_for_a_while_loses_nothing_and_retries_are_counted() {
    let server = TestServer::start().await;
    let port = free_port();
    // The trigger comes first: it resolves its subscriber once the sink has an address.
    apply(
        &server.api,
        &json!({
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {"name": "to-forward", "namespace": "default"},
            "spec": {
                "broker": "default",
                "subscriber": {"ref": {"apiVersion": SINKS, "kind": "HttpForwardSink", "name": "forward"}},
            }
        }),
    )
    .await;
    apply(
        &server.api,
        &forward_sink(
            "forward",
            &format!("http://127.0.0.1:{port}/"),
            json!({"retry": 40, "backoffPolicy": "linear", "backoffDelay": "PT0.05S"}),
        ),
    )
    .await;
    let sink = wait_ready(&server.api, SINKS, "HttpForwardSink", "forward").await;
    assert_eq!(
        sink["status"]["address"]["url"],
        format!("{}/sinks/default/httpforwardsinks/forward", server.base)
    );
    let trigger = wait_ready(
        &server.api,
        "eventing.knative.dev/v1",
        "Trigger",
        "to-forward",
    )
    .await;
    assert_eq!(
        trigger["status"]["subscriberUri"],
        sink["status"]["address"]["url"]
    );

    let ingress = server.ingress_url("default", "default");
    for i in 0..5 {
        assert_eq!(
            post_event(&ingress, &format!("e{i}"), "com.example.forward", "{}").await,
            202
        );
    }
    // Nothing listens on the target port yet: the sink retries until it does.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let received = start_target(port).await;
    let ids = wait_for("all five events at the target", WAIT, || async {
        let ids: BTreeSet<String> = received
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.id.clone())
            .collect();
        (ids.len() == 5).then_some(ids)
    })
    .await;
    assert_eq!(ids, (0..5).map(|i| format!("e{i}")).collect());
    for event in received.lock().unwrap().iter() {
        assert_eq!(
            event.ty, "com.example.forward",
            "attributes reach the target unchanged"
        );
    }
    let mut accepted = [
        ("kind", "HttpForwardSink"),
        ("name", "forward"),
        ("outcome", "accepted"),
    ]
    .to_vec();
    wait_for("the sink to count five accepted events", WAIT, || async {
        (server.metric("rivulet_sink_events_total", &accepted).await == 5.0).then_some(())
    })
    .await;
    let labels = [("kind", "HttpForwardSink"), ("name", "forward")];
    let retries = server
        .metric("rivulet_sink_delivery_retries_total", &labels)
        .await;
    assert!(
        retries >= 5.0,
        "each event was retried while the target was down: {retries}"
    );
    accepted[2].1 = "failed";
    assert_eq!(
        server.metric("rivulet_sink_events_total", &accepted).await,
        0.0
    );
    server.shutdown().await;
}

#[tokio::test]
async fn the_forward_sink_answers_with_what_the_target_did() {
    let (server, target) = TestServer::start_with_recorder().await;
    let strict = forward_sink(
        "strict",
        &target.url,
        json!({"retry": 1, "backoffDelay": "PT0.01S"}),
    );
    let strict_url = ready_address(&server.api, &strict).await;
    let down = format!("http://127.0.0.1:{}/", free_port());
    let nowhere = forward_sink("nowhere", &down, json!({"timeout": "PT1S"}));
    let nowhere_url = ready_address(&server.api, &nowhere).await;

    assert_eq!(post_event(&strict_url, "ok", "t", "{\"n\":1}").await, 202);
    assert_eq!(target.count(), 1, "the target had it before the 202");
    assert_eq!(target.events()[0].data.as_deref(), Some(&b"{\"n\":1}"[..]));

    let attempts_of = |id: &str| {
        let attempts = target.attempts();
        attempts.iter().filter(|r| r.event.id == id).count()
    };
    target.set_status(400);
    assert_eq!(post_event(&strict_url, "refused", "t", "{}").await, 502);
    assert_eq!(attempts_of("refused"), 1, "a 400 is not retried");
    target.set_status(500);
    assert_eq!(post_event(&strict_url, "broken", "t", "{}").await, 503);
    assert_eq!(attempts_of("broken"), 2, "a 500 is retried (retry: 1)");
    assert_eq!(post_event(&nowhere_url, "lost", "t", "{}").await, 503);

    let not_an_event = http().post(&strict_url).body("hello").send().await.unwrap();
    assert_eq!(not_an_event.status(), 400);
    assert_eq!(http().get(&strict_url).send().await.unwrap().status(), 405);
    let unknown = format!("{}/sinks/default/httpforwardsinks/missing", server.base);
    assert_eq!(post_event(&unknown, "x", "t", "{}").await, 404);

    let (status, body) = adapters_support::put_object(
        &server.api,
        &forward_sink("bad", "ftp://example.com/", json!({})),
    )
    .await;
    assert_eq!(status, 422);
    assert!(
        body["message"].as_str().unwrap().contains("spec.uri"),
        "{body}"
    );

    // Deleted: no longer served.
    let deleted = delete_object(&server.api, SINKS, "HttpForwardSink", "strict").await;
    assert_eq!(deleted, 200);
    wait_for("the deleted sink to stop answering", WAIT, || async {
        (post_event(&strict_url, "gone", "t", "{}").await == 404).then_some(())
    })
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn the_event_display_sink_prints_what_a_trigger_sends_it() {
    let data_dir = tempfile::tempdir().unwrap();
    let config = support::write_file(
        data_dir.path(),
        "display.yaml",
        r#"
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
  namespace: default
spec: {}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: show-everything
  namespace: default
spec:
  broker: default
  subscriber:
    ref:
      apiVersion: sinks.rivulet.dev/v1alpha1
      kind: EventDisplaySink
      name: show
---
apiVersion: sinks.rivulet.dev/v1alpha1
kind: EventDisplaySink
metadata:
  name: show
  namespace: default
spec: {}
"#,
    );
    let port = free_port();
    let api_port = free_port();
    support::give_test_token(&data_dir.path().join("data"));
    let mut child = KillOnDrop(
        support::serve_command(&data_dir.path().join("data"), port, api_port)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::piped())
            .spawn()
            .expect("the rivulet binary starts"),
    );
    let printed = Arc::new(Mutex::new(String::new()));
    {
        let stdout = child.0.stdout.take().unwrap();
        let printed = printed.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut text = printed.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
    }
    let base = format!("http://127.0.0.1:{port}");
    let api = format!("http://127.0.0.1:{api_port}");
    let result = tokio::time::timeout(Duration::from_secs(60), async {
        wait_until_ready(&base).await;
        wait_ready(
            &api,
            "eventing.knative.dev/v1",
            "Trigger",
            "show-everything",
        )
        .await;
        let status = post_event(
            &format!("{base}/default/default"),
            "shown-1",
            "com.example.shown",
            "{\"n\": 12345678901234567890123}",
        )
        .await;
        assert_eq!(status, 202);
        wait_for("the display to print the event", WAIT, || {
            let text = printed.lock().unwrap().clone();
            async move { text.contains("id: shown-1").then_some(text) }
        })
        .await
    })
    .await;
    drop(child);
    let text = result.expect("the display test finished in time");
    assert!(text.contains("type: com.example.shown"), "{text}");
    assert!(text.contains("source: /tests/sinks"), "{text}");
    assert!(
        text.contains("{\"n\": 12345678901234567890123}"),
        "data shown as sent: {text}"
    );
}

/// A child process killed (and reaped) when the test ends, even when it fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// HttpForwardSink, forwarding to a recording receiver.
struct ForwardTarget {
    recorder: Recorder,
    seen: usize,
}

impl SinkTarget for ForwardTarget {
    fn sink(&self, name: &str) -> Value {
        forward_sink(name, &self.recorder.url, json!({"retry": 0}))
    }

    fn unreachable_sink(&self, name: &str) -> Value {
        let closed = format!("http://127.0.0.1:{}/", free_port());
        forward_sink(name, &closed, json!({"retry": 0}))
    }

    async fn next(&mut self) -> (String, Vec<u8>) {
        let seen = self.seen;
        let event = wait_for("the forwarded event", WAIT, || {
            let event = self.recorder.events().get(seen).cloned();
            async move { event }
        })
        .await;
        self.seen += 1;
        (event.id, event.data.unwrap_or_default().to_vec())
    }
}

#[tokio::test]
async fn the_forward_sink_meets_the_sink_contract() {
    let server = TestServer::start().await;
    let mut target = ForwardTarget {
        recorder: Recorder::start().await,
        seen: 0,
    };
    sink_contract(&server.api, &mut target).await;
}
