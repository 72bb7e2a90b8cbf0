//! Many triggers on one broker: after a restart, ingress takes events within seconds, and
//! readiness says so honestly meanwhile (503, with ingress answering 503 and `Retry-After`
//! rather than a 404 for a broker not loaded yet). Memory with 10,000 triggers is measured by
//! the `footprint` benchmark; this test checks the functional part.
//!
//! `RIVULET_TEST_TRIGGERS` changes the trigger count: 1,000 by default, so that the first
//! start (every trigger new: a store write, a subscription and a status each) stays within
//! a minute in a debug build; `RIVULET_TEST_TRIGGERS=10000` checks the full figure (the
//! first start then takes minutes in a debug build; the restart stays within the bound).

use rivulet_testkit as support;

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use support::{ChildServer, Recorder, http, wait_for};

const PROBE_TYPE: &str = "dev.rivulet.many.probe";
/// The requirement is 5 s; a debug build on a loaded machine gets generous slack.
const RESTART_BOUND: Duration = Duration::from_secs(20);

/// Waits until the probe event `id` reached its subscriber (`what` names it on timeout).
async fn wait_for_probe(recorder: &Recorder, id: &str, what: &str, timeout: Duration) {
    wait_for(what, timeout, || {
        let found = recorder.events().iter().any(|e| e.id == id);
        async move { found.then_some(()) }
    })
    .await;
}

/// Writes the broker and the triggers into `folder`, a file per thousand (a manifest file
/// holds 1,024 documents at most).
fn write_manifests(folder: &Path, triggers: usize, probe_subscriber: &str) {
    std::fs::create_dir_all(folder).unwrap();
    std::fs::write(
        folder.join("broker.yaml"),
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: default\n  namespace: default\nspec: {}\n",
    )
    .unwrap();
    std::fs::write(
        folder.join("probe.yaml"),
        format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: probe\n  namespace: default\nspec:\n  broker: default\n  filter:\n    attributes:\n      type: {PROBE_TYPE}\n  subscriber:\n    uri: {probe_subscriber}\n"
        ),
    )
    .unwrap();
    // Filters that match nothing posted here, to an address nothing listens on.
    for (file, chunk) in (0..triggers).collect::<Vec<_>>().chunks(1_000).enumerate() {
        let mut text = String::new();
        for n in chunk {
            write!(
                text,
                "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t{n}\n  namespace: default\nspec:\n  broker: default\n  filter:\n    attributes:\n      type: dev.rivulet.many.none{n}\n  subscriber:\n    uri: http://127.0.0.1:9/\n"
            )
            .unwrap();
        }
        std::fs::write(folder.join(format!("triggers-{file}.yaml")), text).unwrap();
    }
}

/// What one attempt to post the probe event got.
enum Answer {
    Accepted,
    /// Nothing listens yet (the process is still reading its store).
    Refused,
    Starting,
}

/// Posts the probe event with `id`; any answer but 202, 503 with `Retry-After`, or a refused
/// connection fails the test.
async fn post_probe(base: &str, id: &str) -> Answer {
    let response = http()
        .post(format!("{base}/default/default"))
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/tests/many-triggers")
        .header("ce-type", PROBE_TYPE)
        .header("content-type", "application/json")
        .body("{}")
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    let response = match response {
        Ok(response) => response,
        Err(error) if error.is_connect() => return Answer::Refused,
        Err(error) => panic!("posting {id}: {error}"),
    };
    match response.status().as_u16() {
        202 => Answer::Accepted,
        503 => {
            assert!(
                response.headers().contains_key("retry-after"),
                "a 503 while starting carries Retry-After"
            );
            Answer::Starting
        }
        other => panic!(
            "ingress answered {other} while starting: {}",
            response.text().await.unwrap_or_default()
        ),
    }
}

async fn readyz(base: &str) -> Option<u16> {
    http()
        .get(format!("{base}/readyz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// Polls readiness and ingress until the probe event is accepted; checks that readiness
/// never says 200 while ingress refuses, and returns how many attempts were refused.
async fn post_when_serving(server: &mut ChildServer, id: &str, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    let mut starting = 0;
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("rivulet serve exited while starting: {status}");
        }
        let ready_before = readyz(&server.base).await;
        match post_probe(&server.base, id).await {
            Answer::Accepted => return starting,
            Answer::Refused | Answer::Starting => {
                assert_ne!(
                    ready_before,
                    Some(200),
                    "/readyz said 200 before ingress took events"
                );
                starting += 1;
            }
        }
        assert!(
            Instant::now() < deadline,
            "ingress did not take events within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_triggers_ingress_serves_soon_after_restart() {
    let triggers: usize = std::env::var("RIVULET_TEST_TRIGGERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let recorder = Recorder::start().await;
    let folder = tempfile::tempdir().unwrap();
    let config = folder.path().join("manifests");
    write_manifests(&config, triggers, &recorder.url);
    let data = folder.path().join("data");
    let config_arg = config.to_str().unwrap();

    // First start: every trigger is new and gets its subscription before ingress serves.
    let mut server = ChildServer::spawn_unready(&data, &["--config", config_arg]);
    let first_start = Instant::now();
    // Every trigger is written, subscribed and given a status: fsyncs, many per trigger.
    let first_bound = Duration::from_secs(60) + Duration::from_millis(60) * triggers as u32;
    let refused = post_when_serving(&mut server, "first", first_bound).await;
    eprintln!(
        "{triggers} triggers: first start took {:?} ({refused} attempts refused)",
        first_start.elapsed()
    );
    let what = "the probe event before the restart";
    wait_for_probe(&recorder, "first", what, Duration::from_secs(60)).await;
    // Let the last statuses land, as a long-running server would have.
    server.terminate(Duration::from_secs(60)).await;

    // Restart: the broker is served within the bound; the triggers settled before resume
    // behind it and the event accepted meanwhile still reaches its subscriber.
    let restarted = Instant::now();
    let mut server = ChildServer::spawn_unready(&data, &["--config", config_arg]);
    post_when_serving(&mut server, "second", RESTART_BOUND).await;
    let elapsed = restarted.elapsed();
    eprintln!("{triggers} triggers: restart to first 202 took {elapsed:?}");
    assert_eq!(readyz(&server.base).await, Some(200));
    let what = "the probe event after the restart";
    wait_for_probe(&recorder, "second", what, Duration::from_secs(120)).await;
    server.terminate(Duration::from_secs(60)).await;
}
