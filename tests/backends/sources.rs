//! End-to-end tests of the source adapters over real HTTP: PingSource (through a broker and a
//! trigger, across a restart, into a sink that is down for a while) and WebhookSource
//! (signatures, content types, answering only after the sink took the event). The YAML
//! examples of docs/sources-and-sinks.md are applied by tests/docs_examples.rs.

use rivulet_testkit as support;
use rivulet_testkit::adapters as adapters_support;

use std::collections::BTreeSet;
use std::time::Duration;

use adapters_support::{apply, delete_object, get_object, put_object, ready_address, wait_ready};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use support::source_contract::{SourceUpstream, source_contract};
use support::{InProcessServer, Recorder, TestServer, WAIT, http, wait_for};

fn ping_source(name: &str, schedule: &str, sink: Value) -> Value {
    json!({
        "apiVersion": "sources.knative.dev/v1",
        "kind": "PingSource",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "schedule": schedule,
            "contentType": "application/json",
            "data": "{\"message\": \"Hello world!\"}",
            "sink": sink,
        }
    })
}

fn tick_times(recorder: &Recorder) -> Vec<DateTime<Utc>> {
    recorder
        .events()
        .iter()
        .map(|e| {
            DateTime::parse_from_rfc3339(&e.attribute("time").expect("a ping has a time"))
                .expect("RFC 3339")
                .with_timezone(&Utc)
        })
        .collect()
}

#[tokio::test]
async fn ping_source_every_second_reaches_a_trigger_through_the_broker() {
    let (server, subscriber) = TestServer::start_with_recorder().await;
    apply(
        &server.api,
        &json!({
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {"name": "pings", "namespace": "default"},
            "spec": {
                "broker": "default",
                "filter": {"attributes": {"type": "dev.knative.sources.ping"}},
                "subscriber": {"uri": subscriber.url},
            }
        }),
    )
    .await;
    let mut source = ping_source(
        "every-second",
        "* * * * * *",
        json!({"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "default"}}),
    );
    source["spec"]["ceOverrides"] = json!({"extensions": {"team": "blue"}});
    apply(&server.api, &source).await;

    let status = wait_ready(
        &server.api,
        "sources.knative.dev/v1",
        "PingSource",
        "every-second",
    )
    .await;
    assert_eq!(
        status["status"]["sinkUri"],
        format!("{}/default/default", server.base)
    );
    assert_eq!(
        status["status"]["ceAttributes"][0]["type"],
        "dev.knative.sources.ping"
    );

    wait_for("three pings at the subscriber", WAIT, || async {
        (subscriber.count() >= 3).then_some(())
    })
    .await;
    let events = subscriber.events();
    for event in &events {
        assert_eq!(event.ty, "dev.knative.sources.ping");
        assert_eq!(
            event.source,
            "/apis/v1/namespaces/default/pingsources/every-second"
        );
        assert_eq!(event.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(
            event.data.as_deref(),
            Some(&b"{\"message\": \"Hello world!\"}"[..])
        );
        assert_eq!(
            event.attribute("team").as_deref(),
            Some("blue"),
            "ceOverrides applied"
        );
    }
    let times = tick_times(&subscriber);
    let distinct: BTreeSet<_> = times.iter().collect();
    assert_eq!(distinct.len(), times.len(), "one event per tick: {times:?}");
    let ids: BTreeSet<_> = events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), events.len(), "each tick has its own id");
    assert!(
        server
            .metric(
                "rivulet_source_events_total",
                &[("kind", "PingSource"), ("outcome", "sent")]
            )
            .await
            >= 3.0
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_restarted_ping_source_does_not_fire_a_tick_again() {
    let data_dir = tempfile::tempdir().unwrap();
    let subscriber = Recorder::start().await;
    let start = |dir: std::path::PathBuf| {
        InProcessServer::start_with(move |options| {
            options.data_dir = dir;
            options.shutdown_grace = Duration::from_millis(200);
        })
    };
    let first = start(data_dir.path().to_path_buf()).await;
    apply(
        &first.api,
        &ping_source("restart", "* * * * * *", json!({"uri": subscriber.url})),
    )
    .await;
    wait_for("two pings before the restart", WAIT, || async {
        (subscriber.count() >= 2).then_some(())
    })
    .await;
    first.shutdown().await;

    // The state says a tick two seconds ahead already fired: the restarted source must
    // not send it, nor anything before it.
    let state = data_dir
        .path()
        .join("sources/pingsource/default/restart/last-tick");
    assert!(
        state.exists(),
        "the last tick is recorded in {}",
        state.display()
    );
    let fired_ahead = (Utc::now() + chrono::Duration::seconds(2))
        .with_timezone(&Utc)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    std::fs::write(&state, &fired_ahead).unwrap();
    let fired_ahead: DateTime<Utc> = fired_ahead.parse().unwrap();
    let before_restart = subscriber.count();

    let second = start(data_dir.path().to_path_buf()).await;
    wait_for("two pings after the restart", WAIT, || async {
        (subscriber.count() >= before_restart + 2).then_some(())
    })
    .await;
    second.shutdown().await;

    let times = tick_times(&subscriber);
    let after: Vec<_> = times[before_restart..].to_vec();
    assert!(
        after.iter().all(|t| *t > fired_ahead),
        "ticks at or before the recorded one fired again: {after:?} (recorded {fired_ahead})"
    );
    let distinct: BTreeSet<_> = times.iter().collect();
    assert_eq!(distinct.len(), times.len(), "no tick twice: {times:?}");
}

#[tokio::test]
async fn a_sink_down_for_a_while_loses_nothing_and_retries_are_counted() {
    let (server, subscriber) = TestServer::start_with_recorder().await;
    subscriber.set_status(503);
    apply(
        &server.api,
        &ping_source("patient", "* * * * * *", json!({"uri": subscriber.url})),
    )
    .await;
    wait_for(
        "refused deliveries while the sink is down",
        WAIT,
        || async { (subscriber.attempts().len() >= 4).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    subscriber.set_status(202);
    wait_for("six pings accepted", WAIT, || async {
        (subscriber.count() >= 6).then_some(())
    })
    .await;
    // Stop the source so the counters settle, then compare.
    let kind = "PingSource";
    let deleted = delete_object(&server.api, "sources.knative.dev/v1", kind, "patient").await;
    assert_eq!(deleted, 200);
    wait_for("deliveries in flight to finish", WAIT, || async {
        let failed = server
            .metric(
                "rivulet_source_events_total",
                &[("kind", kind), ("outcome", "failed")],
            )
            .await;
        let sent = server
            .metric(
                "rivulet_source_events_total",
                &[("kind", kind), ("outcome", "sent")],
            )
            .await;
        let distinct: BTreeSet<_> = tick_times(&subscriber).into_iter().collect();
        (failed == 0.0 && sent as usize == distinct.len()).then_some(())
    })
    .await;

    let mut times: Vec<_> = tick_times(&subscriber);
    times.sort();
    times.dedup();
    for pair in times.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            chrono::Duration::seconds(1),
            "a tick is missing between {} and {}",
            pair[0],
            pair[1]
        );
    }
    let retries = server
        .metric(
            "rivulet_source_delivery_retries_total",
            &[("kind", kind), ("name", "patient")],
        )
        .await;
    assert!(retries >= 3.0, "retries counted: {retries}");
    server.shutdown().await;
}

fn webhook(name: &str, sink_url: &str, secret: bool) -> Value {
    let mut object = json!({
        "apiVersion": "sources.rivulet.dev/v1alpha1",
        "kind": "WebhookSource",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "eventType": "com.github.push",
            "eventSource": "https://github.com/example/repo",
            "extensionsFromHeaders": {"githubevent": "X-GitHub-Event"},
            "sink": {"uri": sink_url},
            "delivery": {"retry": 2, "backoffDelay": "PT0.05S"},
        }
    });
    if secret {
        object["spec"]["secret"] = json!({"name": "github-webhook", "key": "token"});
    }
    object
}

#[tokio::test]
async fn webhook_with_a_good_and_a_bad_signature() {
    let (server, sink) = TestServer::start_with_recorder().await;
    apply(
        &server.api,
        &json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "github-webhook", "namespace": "default"},
            "stringData": {"token": "It's a Secret to Everybody"},
        }),
    )
    .await;
    let url = ready_address(&server.api, &webhook("github", &sink.url, true)).await;
    assert_eq!(url, format!("{}/webhooks/default/github", server.base));

    let body = r#"{"ref":"refs/heads/main","size":12345678901234567890123}"#;
    let good = rivulet::sources::webhook::sign(b"It's a Secret to Everybody", body.as_bytes());
    let post = |signature: Option<String>| {
        let mut request = http()
            .post(&url)
            .header("content-type", "application/json")
            .header("x-github-event", "push")
            .body(body);
        if let Some(signature) = signature {
            request = request.header("x-hub-signature-256", signature);
        }
        request.send()
    };
    let response = post(Some(good)).await.unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    assert_eq!(sink.count(), 1, "the sink had the event before the 202");
    let event = &sink.events()[0];
    assert_eq!(event.ty, "com.github.push");
    assert_eq!(event.source, "https://github.com/example/repo");
    assert_eq!(event.datacontenttype.as_deref(), Some("application/json"));
    assert_eq!(
        event.data.as_deref(),
        Some(body.as_bytes()),
        "JSON data kept byte for byte"
    );
    assert_eq!(event.attribute("githubevent").as_deref(), Some("push"));

    let bad = rivulet::sources::webhook::sign(b"a guess", body.as_bytes());
    assert_eq!(post(Some(bad)).await.unwrap().status(), 403);
    assert_eq!(post(None).await.unwrap().status(), 401);
    assert_eq!(sink.count(), 1, "refused requests deliver nothing");

    let unknown = http()
        .post(format!("{}/webhooks/default/nothing-here", server.base))
        .body("x");

    assert_eq!(support::status_of(unknown).await, 404);
    let get = http().get(&url).send().await.unwrap();
    assert_eq!(get.status(), 405);
    server.shutdown().await;
}

#[tokio::test]
async fn webhook_answers_only_after_the_sink_accepted() {
    let (server, sink) = TestServer::start_with_recorder().await;
    let url = ready_address(&server.api, &webhook("plain", &sink.url, false)).await;

    sink.set_status(503);
    let response = http()
        .post(&url)
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503, "the sink never took it");
    assert_eq!(sink.attempts().len(), 3, "one attempt and two retries");
    let labels = [("kind", "WebhookSource"), ("name", "plain")];
    assert_eq!(
        server
            .metric("rivulet_source_delivery_retries_total", &labels)
            .await,
        2.0
    );

    sink.set_status(202);
    let request = http()
        .post(&url)
        .header("content-type", "text/plain")
        .body("hello");
    assert_eq!(support::status_of(request).await, 202);
    let event = &sink.events()[0];
    assert_eq!(event.datacontenttype.as_deref(), Some("text/plain"));
    assert_eq!(event.data.as_deref(), Some(&b"hello"[..]));
    assert_eq!(event.ty, "com.github.push");

    sink.set_status(400);
    let refused = http().post(&url).body("{}").send().await.unwrap();
    assert_eq!(
        refused.status(),
        502,
        "a sink that refuses for good is a bad gateway"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn invalid_sources_are_refused_naming_the_field() {
    let server = TestServer::start().await;
    let mut both = ping_source("both", "* * * * *", json!({"uri": "http://127.0.0.1:9/"}));
    both["spec"]["dataBase64"] = json!("aGk=");
    let (status, body) = put_object(&server.api, &both).await;
    assert_eq!(status, 422);
    assert!(
        support::message_contains(&body, "spec.dataBase64"),
        "{body}"
    );

    let bad_zone = {
        let mut p = ping_source("zone", "0 9 * * *", json!({"uri": "http://127.0.0.1:9/"}));
        p["spec"]["timezone"] = json!("Europe/Atlantis");
        p
    };
    let (status, body) = put_object(&server.api, &bad_zone).await;
    assert_eq!(status, 422);
    assert!(
        body["message"].as_str().unwrap().contains("spec.timezone"),
        "{body}"
    );

    let (status, body) = put_object(
        &server.api,
        &ping_source(
            "cron",
            "every minute",
            json!({"uri": "http://127.0.0.1:9/"}),
        ),
    )
    .await;
    assert_eq!(status, 422);
    assert!(
        body["message"].as_str().unwrap().contains("spec.schedule"),
        "{body}"
    );

    // A ref to a broker that does not exist is accepted but not ready, with the reason.
    apply(
        &server.api,
        &ping_source(
            "orphan",
            "@every 1h",
            json!({"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "missing"}}),
        ),
    )
    .await;
    let object = wait_for("the orphan's status", WAIT, || async {
        let object = get_object(
            &server.api,
            "sources.knative.dev/v1",
            "PingSource",
            "orphan",
        )
        .await;
        object
            .pointer("/status/conditions")
            .is_some()
            .then_some(object)
    })
    .await;
    let sink_provided = object["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "SinkProvided")
        .cloned()
        .unwrap();
    assert_eq!(sink_provided["status"], "False");
    assert!(support::message_contains(&sink_provided, "missing"));
    server.shutdown().await;
}

/// Knative's `knative.dev/dependency` annotation: the trigger is not Ready while the source it
/// names is missing, and becomes Ready once the source is; a malformed annotation is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_waits_for_its_dependency_to_be_ready() {
    let (server, subscriber) = TestServer::start_with_recorder().await;
    let trigger = |dependency: &str| {
        json!({
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {
                "name": "waits",
                "namespace": "default",
                "annotations": {"knative.dev/dependency": dependency}
            },
            "spec": {"broker": "default", "subscriber": {"uri": subscriber.url}}
        })
    };
    let (status, body) = put_object(&server.api, &trigger("{\"kind\": \"PingSource\"}")).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        support::message_contains(&body, "knative.dev/dependency"),
        "{body}"
    );

    apply(
        &server.api,
        &trigger(
            r#"{"kind":"PingSource","name":"heartbeat","apiVersion":"sources.knative.dev/v1"}"#,
        ),
    )
    .await;
    let missing = server
        .wait_condition("Trigger", "default", "waits", "DependencyReady", "False")
        .await;
    assert_eq!(missing["reason"], "DependencyDoesNotExist", "{missing}");
    server
        .wait_condition("Trigger", "default", "waits", "Ready", "False")
        .await;

    apply(
        &server.api,
        &ping_source(
            "heartbeat",
            "0 0 1 1 *",
            json!({"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "default"}}),
        ),
    )
    .await;
    server
        .wait_condition("Trigger", "default", "waits", "DependencyReady", "True")
        .await;
    server
        .wait_condition("Trigger", "default", "waits", "Ready", "True")
        .await;
}

/// PingSource: its schedule (every second) produces by itself.
struct Schedule;

impl SourceUpstream for Schedule {
    fn source(&self, name: &str) -> Value {
        let mut source = ping_source(name, "* * * * * *", Value::Null);
        source["spec"].as_object_mut().unwrap().remove("sink");
        source
    }

    async fn produce(&mut self, _name: &str, _source: &Value) {}
}

/// WebhookSource: a request to its address.
struct WebhookRequests;

impl SourceUpstream for WebhookRequests {
    fn source(&self, name: &str) -> Value {
        let mut source = webhook(name, "", false);
        source["spec"].as_object_mut().unwrap().remove("sink");
        source
    }

    async fn produce(&mut self, _name: &str, source: &Value) {
        let url = source["status"]["address"]["url"]
            .as_str()
            .expect("an address");
        let answer = http()
            .post(url)
            .header("content-type", "application/json")
            .body(r#"{"ref":"main"}"#)
            .send()
            .await
            .expect("the webhook answers");
        assert!(answer.status().is_success(), "{}", answer.status());
    }
}

#[tokio::test]
async fn ping_and_webhook_sources_meet_the_source_contract() {
    let server = TestServer::start().await;
    source_contract(&server.api, &mut Schedule).await;
    source_contract(&server.api, &mut WebhookRequests).await;
}
