//! Durability of the real binary: a `202` survives `kill -9`, resources survive restarts, and
//! SIGTERM stops cleanly without losing events in flight.

use rivulet_testkit as support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use support::{ChildServer, Recorder, apply, durability, get, wait_for};

/// How long the restarted server gets to deliver everything it acknowledged.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_event_survives_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let recorder = durability::slow_subscriber().await;
    let server = ChildServer::spawn(data.path(), &[]).await;
    durability::apply_one_at_a_time_trigger(&server.api, "default", "default", &recorder).await;

    let broker_url = format!("{}/default/default", server.base);
    durability::kill_9_loses_no_acknowledged_event(server, &broker_url, &recorder, 300, "embedded")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_and_their_status_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let recorder = Recorder::start().await;
    let mut server = ChildServer::spawn(data.path(), &[]).await;
    let api = server.api.clone();
    apply(
        &api,
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "shop"}, "data": {"colour": "blue"}}),
    )
    .await;
    apply(&api, &support::broker("shop", "orders")).await;
    apply(
        &api,
        &support::trigger("shop", "audit", "orders", &recorder.url),
    )
    .await;
    let broker_before = support::wait_ready(&api, "Broker", "shop", "orders").await;
    let trigger_before = support::wait_ready(&api, "Trigger", "shop", "audit").await;
    server.kill9();

    let server = ChildServer::spawn(data.path(), &[]).await;
    let base = server.base.clone();
    let api = server.api.clone();
    let configmap = get(&api, "ConfigMap", "shop", "settings")
        .await
        .expect("the ConfigMap survives");
    assert_eq!(configmap["data"]["colour"], "blue");
    let broker = get(&api, "Broker", "shop", "orders")
        .await
        .expect("the broker survives");
    let trigger = get(&api, "Trigger", "shop", "audit")
        .await
        .expect("the trigger survives");
    for (before, after) in [(&broker_before, &broker), (&trigger_before, &trigger)] {
        assert_eq!(
            before["metadata"]["uid"], after["metadata"]["uid"],
            "the same object, not a new one"
        );
        let ready =
            support::ready_condition(after).expect("status survives with a Ready condition");
        assert_eq!(ready["status"], "True", "{after}");
    }
    assert_eq!(trigger["status"]["subscriberUri"], recorder.url.as_str());
    assert!(
        broker.pointer("/status/address/url").is_some(),
        "the address survives: {broker}"
    );
    // And it works.
    assert_eq!(
        support::post_binary(&base, "shop/orders", "after-restart", "t", "{}").await,
        202
    );
    recorder.wait_for_id("after-restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_events_in_flight_are_not_lost() {
    let data = tempfile::tempdir().unwrap();
    let recorder = Recorder::start().await;
    // The subscriber fails for now, so deliveries are in flight (retrying) at SIGTERM.
    recorder.set_status(503);
    let mut server = ChildServer::spawn(data.path(), &["--shutdown-grace", "1s"]).await;
    let base = server.base.clone();
    let api = server.api.clone();
    let mut retrying = support::trigger("default", "slow", "default", &recorder.url);
    retrying["spec"]["delivery"] =
        json!({"retry": 100, "backoffPolicy": "linear", "backoffDelay": "PT0.2S"});
    apply(&api, &retrying).await;
    support::wait_ready(&api, "Trigger", "default", "slow").await;

    let ids: BTreeSet<String> = (0..20).map(|i| format!("inflight-{i}")).collect();
    for id in &ids {
        assert_eq!(
            support::post_binary(&base, "default/default", id, "test.term", "{}").await,
            202
        );
    }
    wait_for(
        "every event to be attempted at least once",
        support::WAIT,
        || {
            let attempted: BTreeSet<String> = recorder
                .attempts()
                .into_iter()
                .map(|r| r.event.id)
                .collect();
            let all = ids.is_subset(&attempted);
            async move { all.then_some(()) }
        },
    )
    .await;
    assert_eq!(recorder.count(), 0, "nothing was delivered yet");

    let status = server.terminate(Duration::from_secs(10)).await;
    assert!(
        status.success(),
        "SIGTERM ends rivulet serve with success, got {status}"
    );

    recorder.set_status(202);
    let _server = ChildServer::spawn(data.path(), &["--shutdown-grace", "1s"]).await;
    durability::wait_all_delivered(&recorder, &ids, DELIVERY_DEADLINE).await;
    eprintln!("SIGTERM: {} duplicates", durability::duplicates(&recorder));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_when_idle_exits_with_success() {
    let data = tempfile::tempdir().unwrap();
    let mut server = ChildServer::spawn(data.path(), &[]).await;
    assert_eq!(
        support::post_binary(&server.base, "default/default", "idle", "t", "{}").await,
        202
    );
    let status = server.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "got {status}");
}

/// Nobody reads stderr any more (the pipe's reader is gone): the server still serves and
/// SIGTERM still stops it, at once, with success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_when_stderr_is_a_closed_pipe() {
    let data = tempfile::tempdir().unwrap();
    let (mut child, base) = serve_logging_to_a_pipe(data.path());
    drop(child.stderr.take());
    support::wait_for(
        "ingress to take events",
        Duration::from_secs(60),
        || async {
            (support::post_binary(&base, "default/default", "closed-stderr", "t", "{}").await
                == 202)
                .then_some(())
        },
    )
    .await;
    let terminated = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(terminated.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait works") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("rivulet serve ignored SIGTERM with stderr closed");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "got {status}");
}

/// Logs written to a pipe or a file carry no colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_to_a_pipe_have_no_colour_codes() {
    let data = tempfile::tempdir().unwrap();
    let (mut child, base) = serve_logging_to_a_pipe(data.path());
    support::wait_for(
        "ingress to take events",
        Duration::from_secs(60),
        || async {
            (support::post_binary(&base, "default/default", "plain-log", "t", "{}").await == 202)
                .then_some(())
        },
    )
    .await;
    let _ = child.kill();
    let output = child.wait_with_output().expect("output is read");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("rivulet is serving"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log: {log}"
    );
}

/// `rivulet serve` on `data_dir` logging at info to a pipe (stdout discarded); the child and
/// its ingress URL.
fn serve_logging_to_a_pipe(data_dir: &std::path::Path) -> (std::process::Child, String) {
    let (listen, api) = (support::free_port(), support::free_port());
    let child = support::serve_command(data_dir, listen, api)
        .env("RIVULET_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("rivulet serve starts");
    (child, format!("http://127.0.0.1:{listen}"))
}
