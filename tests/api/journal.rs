//! The event journal: `rivulet events trace|list` and `rivulet tap` against a real server,
//! with real subscribers that accept, fail and dead-letter.

use rivulet_testkit as support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{InProcessServer, Recorder, api_request, apply, wait_for, wait_ready};

async fn cli(server: &InProcessServer, args: &[&str]) -> String {
    let output = support::cli(&server.api)
        .args(args)
        .output()
        .await
        .expect("the rivulet binary runs");
    support::assert_succeeded(&output, &args.join(" "));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn trigger_with(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    })
}

/// A broker with three triggers: one delivers, one fails and dead-letters, one refuses.
async fn three_triggers(server: &InProcessServer) -> (Recorder, Recorder) {
    let good = Recorder::start().await;
    let failing = Recorder::start().await;
    failing.set_status(503);
    apply(
        &server.api,
        &trigger_with(
            "takes-all",
            json!({"broker": "default", "subscriber": {"uri": good.url}}),
        ),
    )
    .await;
    apply(
        &server.api,
        &trigger_with(
            "fails",
            json!({
                "broker": "default",
                "subscriber": {"uri": failing.url},
                "delivery": {
                    "retry": 1,
                    "backoffPolicy": "linear",
                    "backoffDelay": "PT0.05S",
                    "deadLetterSink": {"uri": good.url},
                },
            }),
        ),
    )
    .await;
    apply(
        &server.api,
        &trigger_with(
            "wants-other",
            json!({
                "broker": "default",
                "filter": {"attributes": {"type": "com.example.other"}},
                "subscriber": {"uri": good.url},
            }),
        ),
    )
    .await;
    for name in ["takes-all", "fails", "wants-other"] {
        wait_ready(&server.api, "Trigger", "default", name).await;
    }
    (good, failing)
}

/// The journal entry of `id` once every trigger has recorded its step.
async fn settled_path(server: &InProcessServer, id: &str, steps: usize) -> Value {
    wait_for("the event's path", Duration::from_secs(20), || async {
        let response = api_request(
            reqwest::Method::GET,
            format!("{}/journal/events/{id}", server.api),
        )
        .send()
        .await
        .ok()?;
        let body: Value = response.json().await.ok()?;
        let path = body["events"][0].clone();
        let recorded = path["steps"].as_array()?.len()
            + path["refused"]["count"].as_u64().unwrap_or(0) as usize;
        (recorded >= steps).then_some(path)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_shows_every_trigger_verdict_attempt_and_outcome() {
    let server = InProcessServer::start().await;
    let (good, _failing) = three_triggers(&server).await;
    assert_eq!(
        support::post_binary(
            &server.base,
            "default/default",
            "journal-1",
            "com.example.order",
            r#"{"n":1}"#
        )
        .await,
        202
    );
    good.wait_for_id("journal-1").await;
    // Arrival, two deliveries, one refusal.
    let path = settled_path(&server, "journal-1", 4).await;
    assert_eq!(path["outcome"], "dead-lettered", "{path:#}");
    assert_eq!(path["refused"]["count"], 1);
    assert_eq!(path["refused"]["by_filter"]["exact"], 1);
    assert_eq!(path["refused"]["triggers"][0], "wants-other");
    // The embedded channel routes by filter: that verdict is worked out when asked.
    assert_eq!(path["refused"]["worked_out"], 1);
    let steps = path["steps"].as_array().unwrap();
    let arrived = steps.iter().find(|s| s["step"] == "arrived").unwrap();
    assert_eq!(arrived["status"], 202);
    assert_eq!(arrived["size"], 7);
    assert!(
        arrived["sender"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{arrived}"
    );
    let fails = steps.iter().find(|s| s["trigger"] == "fails").unwrap();
    assert_eq!(fails["outcome"], "dead-lettered");
    assert_eq!(
        fails["attempt_count"], 3,
        "two to the subscriber, one to the dead-letter sink"
    );
    assert_eq!(fails["attempts"][0]["status"], 503);
    assert_eq!(fails["attempts"][2]["dead_letter"], true);
    assert_eq!(fails["attempts"][2]["status"], 202);

    let text = cli(&server, &["events", "trace", "journal-1"]).await;
    assert!(
        text.contains(
            "event journal-1 from /tests (type com.example.order) at broker default/default"
        ),
        "{text}"
    );
    assert!(
        text.contains("arrived: accepted, from 127.0.0.1:"),
        "{text}"
    );
    assert!(text.contains("trigger takes-all: delivered to"), "{text}");
    assert!(text.contains("trigger fails: dead-lettered to"), "{text}");
    assert!(text.contains("attempt 2: 503"), "{text}");
    assert!(text.contains("dead-letter attempt 1: 202"), "{text}");
    assert!(
        text.contains("refused by 1 trigger (exact: 1): wants-other"),
        "{text}"
    );
    assert!(text.contains("outcome: dead-lettered"), "{text}");

    let listed = cli(
        &server,
        &[
            "events",
            "list",
            "--broker",
            "default/default",
            "--since",
            "10m",
            "--outcome",
            "dead-lettered",
        ],
    )
    .await;
    assert!(listed.contains("journal-1"), "{listed}");
    assert!(listed.contains("dead-lettered"), "{listed}");
    let failed = cli(&server, &["events", "list", "--outcome", "failed"]).await;
    assert_eq!(failed, "no events found\n");

    let unknown = support::cli(&server.api)
        .args(["events", "trace", "never-sent"])
        .output()
        .await
        .unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no event with id \"never-sent\""));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_exhausted_events_are_journaled_with_their_status() {
    let server = InProcessServer::start().await;
    let response = support::http()
        .post(format!("{}/default/default", server.base))
        .header("ce-specversion", "1.0")
        .header("ce-id", "looped")
        .header("ce-source", "/tests")
        .header("ce-type", "t")
        .header("ce-knativebrokerttl", "0")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let path = settled_path(&server, "looped", 1).await;
    assert_eq!(path["outcome"], "refused");
    assert_eq!(path["steps"][0]["status"], 400);
    assert!(
        path["steps"][0]["error"].as_str().unwrap().contains("TTL"),
        "{path}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_refuses_bad_parameters_with_a_reason() {
    let server = InProcessServer::start().await;
    for (query, needle) in [
        ("outcome=lost", "unknown outcome \"lost\""),
        ("since=yesterday", "neither a duration"),
        ("limit=0", "limit must be between"),
        ("colour=red", "unknown field"),
    ] {
        let response = api_request(
            reqwest::Method::GET,
            format!("{}/journal/events?{query}", server.api),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(response.status().as_u16(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains(needle),
            "{query}: {body}"
        );
    }
    let anonymous = support::http()
        .get(format!("{}/journal/events", server.api))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_survives_a_restart_and_can_be_turned_off() {
    let data_dir = tempfile::tempdir().unwrap();
    let dir = data_dir.path().to_path_buf();
    let server = InProcessServer::start_with(|o| o.data_dir = dir.clone()).await;
    assert_eq!(
        support::post_binary(&server.base, "default/default", "kept", "t", "1").await,
        202
    );
    settled_path(&server, "kept", 1).await;
    server.shutdown().await;
    let lock_free = || async {
        // A CLI child another test forks at this moment holds the lock until it execs.
        wait_for(
            "the data folder's lock",
            Duration::from_secs(10),
            || async { rivulet::store::lock::lock_data_dir(&dir).ok().map(drop) },
        )
        .await
    };
    lock_free().await;

    let again = InProcessServer::start_with(|o| o.data_dir = dir.clone()).await;
    let path = settled_path(&again, "kept", 1).await;
    assert_eq!(path["steps"][0]["status"], 202);
    again.shutdown().await;
    lock_free().await;

    let off = InProcessServer::start_with(|o| {
        o.data_dir = dir.clone();
        o.journal.enabled = false;
    })
    .await;
    let response = api_request(
        reqwest::Method::GET,
        format!("{}/journal/events/kept", off.api),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let body: Value = response.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("--no-journal"));
    off.shutdown().await;
}

/// Reads server-sent events until `done` says stop, returning (event name, data) pairs.
async fn read_sse(
    mut response: reqwest::Response,
    mut done: impl FnMut(&[(String, Value)]) -> bool,
) -> Vec<(String, Value)> {
    let mut frames = Vec::new();
    let mut buffer = String::new();
    let reading = async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let frame: String = buffer.drain(..end + 2).collect();
                let mut name = String::new();
                let mut data = String::new();
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if !data.is_empty() {
                    frames.push((name, serde_json::from_str(&data).unwrap()));
                }
                if done(&frames) {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), reading)
        .await
        .expect("the tap sent what was expected in time");
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_streams_matching_events_with_each_triggers_outcome() {
    let server = InProcessServer::start().await;
    let good = Recorder::start().await;
    apply(
        &server.api,
        &trigger_with(
            "sees-all",
            json!({"broker": "default", "subscriber": {"uri": good.url}}),
        ),
    )
    .await;
    wait_ready(&server.api, "Trigger", "default", "sees-all").await;
    let bad_filter = api_request(
        reqwest::Method::GET,
        format!(
            "{}/journal/tap/default/default?filter=type%20%3D",
            server.api
        ),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(bad_filter.status().as_u16(), 400);
    let unknown = api_request(
        reqwest::Method::GET,
        format!("{}/journal/tap/default/nope", server.api),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(unknown.status().as_u16(), 404);

    let filter = "type = 'tap.me'";
    let response = api_request(
        reqwest::Method::GET,
        reqwest::Url::parse_with_params(
            &format!("{}/journal/tap/default/default", server.api),
            [("filter", filter)],
        )
        .unwrap(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    // The tap is open once its response headers arrived; events sent now are seen.
    let base = server.base.clone();
    tokio::spawn(async move {
        support::post_binary(&base, "default/default", "not-tapped", "tap.not", "1").await;
        support::post_binary(&base, "default/default", "tapped", "tap.me", "2").await;
    });
    let frames = read_sse(response, |frames| {
        frames
            .iter()
            .any(|(name, data)| name == "step" && data["id"] == "tapped")
    })
    .await;
    let events: Vec<&Value> = frames
        .iter()
        .filter(|(name, _)| name == "event")
        .map(|(_, data)| data)
        .collect();
    assert_eq!(events.len(), 1, "only the matching event: {frames:?}");
    assert_eq!(events[0]["event"]["id"], "tapped");
    assert_eq!(events[0]["status"], 202);
    let step = frames.iter().find(|(name, _)| name == "step").unwrap();
    assert_eq!(step.1["step"]["trigger"], "sees-all");
    assert_eq!(step.1["step"]["outcome"], "delivered");

    // The CLI streams the same, and stops after --max-events.
    let mut tap = support::cli(&server.api)
        .args([
            "tap",
            "default/default",
            "--filter",
            filter,
            "--max-events",
            "1",
            "-o",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let base = server.base.clone();
    let sender = tokio::spawn(async move {
        // Until the tap is connected, events pass unseen: keep sending.
        for n in 0..200 {
            support::post_binary(&base, "default/default", &format!("cli-{n}"), "tap.me", "3")
                .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let output = tokio::time::timeout(Duration::from_secs(20), async {
        let status = tap.wait().await.unwrap();
        let mut stdout = String::new();
        use tokio::io::AsyncReadExt as _;
        tap.stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .await
            .unwrap();
        (status, stdout)
    })
    .await
    .expect("rivulet tap stops after one event");
    sender.abort();
    assert!(output.0.success());
    let line: Value = serde_json::from_str(output.1.lines().next().unwrap()).unwrap();
    assert_eq!(line["kind"], "event");
    assert_eq!(line["data"]["event"]["type"], "tap.me");
    server.shutdown().await;
}

/// `text` with every run of digits replaced, so times, ports and latencies compare equal.
fn masked(text: &str) -> String {
    let mut out = String::new();
    let mut in_digits = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('N');
            }
            in_digits = true;
        } else {
            in_digits = false;
            out.push(c);
        }
    }
    out
}

/// The fenced block right after `<!-- output of: COMMAND -->` on a docs page.
fn shown_output(page: &str, command: &str) -> String {
    let marker = format!("<!-- output of: {command} -->");
    let after = page
        .split_once(&marker)
        .unwrap_or_else(|| panic!("the page shows the output of {command}"))
        .1;
    let block = after.split_once("```text\n").expect("a text block").1;
    block
        .split_once("```")
        .expect("a closed block")
        .0
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkthrough_page_shows_what_the_commands_print() {
    let page = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/where-did-my-event-go.md"),
    )
    .unwrap();
    let yaml = page
        .split_once("```yaml\n")
        .unwrap()
        .1
        .split_once("```")
        .unwrap()
        .0;
    let server = InProcessServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The page's subscriber is down; a port nothing listens on stands in for 8099.
    let closed = support::free_port();
    let manifest = support::write_file(
        dir.path(),
        "failing.yaml",
        &yaml.replace("8099", &closed.to_string()),
    );
    cli(&server, &["apply", "-f", manifest.to_str().unwrap()]).await;
    for name in ["billing", "audit"] {
        wait_ready(&server.api, "Trigger", "default", name).await;
    }
    let response = support::http()
        .post(format!("{}/default/default", server.base))
        .header("ce-specversion", "1.0")
        .header("ce-id", "order-1001")
        .header("ce-source", "/shop")
        .header("ce-type", "com.example.order")
        .header("content-type", "application/json")
        .body(r#"{"total": 42}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    // Arrival, the billing delivery, and the audit refusal worked out when asked.
    let path = settled_path(&server, "order-1001", 3).await;
    assert_eq!(path["outcome"], "failed");
    for command in [
        "rivulet events list --outcome failed --since 10m",
        "rivulet events trace order-1001",
    ] {
        let args: Vec<&str> = command.split(' ').skip(1).collect();
        let printed = cli(&server, &args).await;
        let shown = shown_output(&page, command);
        assert_eq!(
            masked(&printed),
            masked(&shown),
            "{command} prints (left) what the page shows (right), digits aside"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_is_noted_on_its_parent_and_journaled_as_an_event_of_its_own() {
    use support::{Recorded, Reply, Subscriber, script};
    let server = InProcessServer::start().await;
    let sub = Subscriber::with_script(script(|r: &Recorded| {
        if r.attr("type").as_deref() == Some("com.example.ask") {
            Reply::event(
                200,
                &support::TestEvent::new(&format!("answer-{}", r.id()), "com.example.answer"),
            )
        } else {
            Reply::ok()
        }
    }))
    .await;
    apply(
        &server.api,
        &trigger_with(
            "asks",
            json!({"broker": "default", "subscriber": {"uri": sub.url()}}),
        ),
    )
    .await;
    wait_ready(&server.api, "Trigger", "default", "asks").await;
    assert_eq!(
        support::post_binary(
            &server.base,
            "default/default",
            "ask-1",
            "com.example.ask",
            "{}"
        )
        .await,
        202
    );
    let parent = settled_path(&server, "ask-1", 2).await;
    let delivery = parent["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "delivery")
        .unwrap()
        .clone();
    assert_eq!(delivery["reply"]["id"], "answer-ask-1");
    assert_eq!(delivery["reply"]["type"], "com.example.answer");
    assert_eq!(delivery["reply"]["outcome"], "published");
    let reply = settled_path(&server, "answer-ask-1", 2).await;
    let arrived = &reply["steps"][0];
    assert_eq!(
        arrived["step"], "arrived",
        "steps are in time order: {reply}"
    );
    assert_eq!(arrived["status"], 202);
    assert_eq!(arrived["sender"], "reply to ask-1 via trigger default/asks");
    let text = cli(&server, &["events", "trace", "ask-1"]).await;
    assert!(
        text.contains("reply answer-ask-1 (type com.example.answer): published"),
        "{text}"
    );
    server.shutdown().await;
}
