//! Bounds that push back instead of growing: the cap on auto-created EventTypes per broker
//! (kept across a restart), and the byte bound of the memory channel behind a hung
//! subscriber (503 with `Retry-After` when full, nothing lost once the subscriber recovers).

use rivulet_testkit as support;

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::{
    Api, ChildServer, Reply, Subscriber, TestEvent, TestServer, WAIT, condition, script, wait_for,
};

const EVENTTYPES: &str = "/apis/eventing.knative.dev/v1beta3/namespaces";

/// The EventType list of broker `default/default`.
async fn eventtype_list(api: &Api) -> Value {
    let (status, body) = api
        .get_json(&format!("{EVENTTYPES}/default/eventtypes?broker=default"))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// EventTypes of broker `default/default`, as (type, auto-created?).
async fn eventtypes(api: &Api) -> Vec<(String, bool)> {
    let body = eventtype_list(api).await;
    body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|o| {
            let ty = o["spec"]["attributes"]
                .as_array()
                .and_then(|a| a.iter().find(|a| a["name"] == "type"))
                .and_then(|a| a["value"].as_str())
                .unwrap_or_default()
                .to_string();
            let auto = o["metadata"]["labels"]["rivulet.dev/autocreated"] == "true";
            (ty, auto)
        })
        .collect()
}

fn auto_created(list: &[(String, bool)]) -> usize {
    list.iter().filter(|(_, auto)| *auto).count()
}

const CAPPED: &str = "rivulet_eventtypes_capped_total";
const DEFAULT_BROKER: [(&str, &str); 2] = [("namespace", "default"), ("broker", "default")];

async fn start_capped(data_dir: &std::path::Path, cap: usize) -> TestServer {
    let data_dir = data_dir.to_path_buf();
    TestServer::start_with(move |options| {
        options.data_dir = data_dir;
        options.discovery.max_per_broker = cap;
        options.discovery.min_write_interval = Duration::from_millis(20);
    })
    .await
}

/// Posts events `e{n}` of type `com.example.t{n}`, every one accepted (past the cap too), and
/// waits until the cap metric reads `capped`: events are observed in order, so then all were
/// seen. Returns the broker's EventTypes.
async fn send_types(server: &TestServer, numbers: Range<u32>, capped: f64) -> Vec<(String, bool)> {
    for n in numbers {
        let event = TestEvent::new(&format!("e{n}"), &format!("com.example.t{n}"));
        server.send("default", "default", &event).await;
    }
    server.wait_metric(CAPPED, &DEFAULT_BROKER, capped).await;
    eventtypes(server).await
}

#[tokio::test(flavor = "multi_thread")]
async fn eventtypes_past_the_cap_are_counted_not_stored_and_a_restart_keeps_the_cap() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let server = start_capped(dir.path(), 5).await;
    let list = send_types(&server, 0..8, 3.0).await;
    assert_eq!(auto_created(&list), 5, "{list:?}");
    // The broker says so, without ceasing to be Ready.
    let (broker, capped) = wait_for("the cap in the broker's status", WAIT, || async {
        let broker = server.get("Broker", "default", "default").await?;
        let capped = condition(&broker, "EventTypesAutoCreated")?;
        Some((broker, capped))
    })
    .await;
    assert_eq!(capped["status"], "False", "{capped}");
    assert_eq!(capped["reason"], "CapReached", "{capped}");
    assert_eq!(capped["severity"], "Info", "{capped}");
    assert!(
        capped["message"].as_str().unwrap_or_default().contains('5'),
        "{capped}"
    );
    assert_eq!(
        condition(&broker, "Ready").unwrap()["status"],
        "True",
        "{broker}"
    );
    // Types that have one keep working; the same capped type is counted again.
    server
        .send(
            "default",
            "default",
            &TestEvent::new("again", "com.example.t0"),
        )
        .await;
    server
        .send(
            "default",
            "default",
            &TestEvent::new("again7", "com.example.t7"),
        )
        .await;
    server.wait_metric(CAPPED, &DEFAULT_BROKER, 4.0).await;

    // An EventType applied by hand is not capped.
    let manual = json!({
        "apiVersion": "eventing.knative.dev/v1beta3",
        "kind": "EventType",
        "metadata": {"name": "manual", "namespace": "default"},
        "spec": {
            "reference": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "default"},
            "attributes": [{"name": "type", "value": "com.example.manual", "required": true}]
        }
    });
    let (status, body) = server.try_apply(&manual).await;
    assert!(status < 300, "{status}: {body}");
    let list = eventtypes(&server).await;
    assert_eq!(auto_created(&list), 5);
    assert!(
        list.iter()
            .any(|(ty, auto)| ty == "com.example.manual" && !auto)
    );
    server.shutdown().await;

    // The cap counts what is stored, so a restart does not start from zero.
    let server = start_capped(dir.path(), 5).await;
    let list = send_types(&server, 8..11, 3.0).await;
    assert_eq!(auto_created(&list), 5, "{list:?}");
    let types: BTreeSet<&str> = list.iter().map(|(ty, _)| ty.as_str()).collect();
    assert!(!types.contains("com.example.t8"), "{types:?}");

    // Deleting an auto-created EventType frees a place (the count is read again at the cap).
    server
        .delete(
            "EventType",
            "default",
            &eventtype_name(&server, "com.example.t0").await,
        )
        .await;
    let sent = &std::sync::atomic::AtomicUsize::new(0);
    let server_ref = &server;
    wait_for("a freed place to be used", WAIT, || async move {
        let server = server_ref;
        let n = sent.fetch_add(1, Ordering::SeqCst);
        server
            .send(
                "default",
                "default",
                &TestEvent::new(&format!("r{n}"), "com.example.late"),
            )
            .await;
        let list = eventtypes(server).await;
        list.iter()
            .any(|(ty, _)| ty == "com.example.late")
            .then_some(())
    })
    .await;
    assert_eq!(auto_created(&eventtypes(&server).await), 5);
    // Below the cap for a moment, the condition went away.
    wait_for("the cap condition to clear", WAIT, || async {
        let broker = server.get("Broker", "default", "default").await?;
        condition(&broker, "EventTypesAutoCreated")
            .is_none()
            .then_some(())
    })
    .await;
    server.shutdown().await;
}

async fn eventtype_name(api: &Api, ty: &str) -> String {
    let body = eventtype_list(api).await;
    body["items"]
        .as_array()
        .and_then(|items| {
            items.iter().find(|o| {
                o["spec"]["attributes"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|a| a["name"] == "type" && a["value"] == ty))
            })
        })
        .and_then(|o| o["metadata"]["name"].as_str())
        .unwrap_or_else(|| panic!("an EventType for {ty}"))
        .to_string()
}

/// Resident memory of a process, in bytes.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc is readable");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_subscriber_fills_the_memory_channel_then_ingress_pushes_back_and_nothing_is_lost() {
    const BOUND: u64 = 16 * MIB;
    const EVENT_BYTES: usize = 256 * 1024;
    // Offered on top of what fits: enough that an unbounded channel would break the memory
    // assertion below.
    const REFUSED_TRIES: usize = 300;

    let hung = Arc::new(AtomicBool::new(true));
    let subscriber = {
        let hung = hung.clone();
        Subscriber::with_script(script(move |_| {
            if hung.load(Ordering::SeqCst) {
                Reply::hang()
            } else {
                Reply::ok()
            }
        }))
        .await
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut child = ChildServer::spawn(
        dir.path(),
        &[
            "--memory-channel-max-bytes",
            "16Mi",
            "--delivery-timeout",
            "1s",
            "--backoff-cap",
            "1s",
            "--parallelism",
            "4",
        ],
    )
    .await;
    let api = Api::new(&child.base, &child.api);
    api.apply(&json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "in-memory", "namespace": "default"},
        "data": {"channel-template-spec": "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\n"}
    }))
    .await;
    let broker = api
        .create_broker(
            "default",
            "fast",
            json!({"config": {"apiVersion": "v1", "kind": "ConfigMap", "name": "in-memory"}}),
        )
        .await;
    assert!(
        support::condition(&broker, "IngressReady").unwrap()["message"]
            .as_str()
            .unwrap_or_default()
            .contains("memory"),
        "{broker}"
    );
    let mut trigger = support::trigger("default", "slow", "fast", &subscriber.url());
    // Enough retries that nothing is given up while the subscriber hangs.
    trigger["spec"]["delivery"] =
        json!({"retry": 10000, "backoffPolicy": "linear", "backoffDelay": "PT0.2S"});
    api.create_trigger(&trigger).await;

    let data = "x".repeat(EVENT_BYTES);
    let event = |id: &str| TestEvent::new(id, "com.example.big").data("text/plain", data.clone());
    // Warm up (allocator, connection pools) before the baseline is taken.
    api.send("default", "fast", &event("warm-up")).await;
    subscriber.wait_for(1).await;
    let baseline = resident_bytes(child.pid());

    let mut accepted = vec!["warm-up".to_string()];
    let mut refused = 0;
    let mut n = 0;
    while refused < REFUSED_TRIES {
        n += 1;
        assert!(n < 10_000, "ingress never pushed back");
        let id = format!("e{n}");
        let response = api
            .client
            .post(api.ingress_url("default", "fast"))
            .headers(event(&id).headers())
            .body(event(&id).body.clone())
            .send()
            .await
            .expect("ingress answers");
        match response.status().as_u16() {
            202 => {
                assert_eq!(refused, 0, "accepted after a refusal while still hung");
                accepted.push(id);
            }
            503 => {
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                assert!(
                    retry_after.is_some_and(|s| s >= 1),
                    "{:?}",
                    response.headers()
                );
                let body = response.text().await.unwrap_or_default();
                assert!(body.contains("full"), "{body}");
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    let stored = accepted.len() as u64 * EVENT_BYTES as u64;
    assert!(
        stored <= BOUND,
        "{} events of {EVENT_BYTES} bytes accepted",
        accepted.len()
    );
    assert!(
        stored >= BOUND * 3 / 4,
        "pushed back too early: {} events accepted",
        accepted.len()
    );
    let grown = resident_bytes(child.pid()).saturating_sub(baseline);
    let offered = (accepted.len() + REFUSED_TRIES) as u64 * EVENT_BYTES as u64;
    eprintln!(
        "{} events accepted, {REFUSED_TRIES} refused; resident memory grew by {} KiB",
        accepted.len(),
        grown / 1024
    );
    assert!(
        grown < BOUND + 24 * MIB && grown < offered,
        "resident memory grew by {} MiB (bound {} MiB, offered {} MiB)",
        grown / MIB,
        BOUND / MIB,
        offered / MIB
    );
    assert_eq!(
        api.metric(
            "rivulet_ingress_events_total",
            &[("broker", "fast"), ("outcome", "full")]
        )
        .await,
        REFUSED_TRIES as f64
    );

    // The subscriber recovers: everything that got a 202 arrives, and ingress takes events again.
    hung.store(false, Ordering::SeqCst);
    subscriber.release();
    api.wait_metric(
        "rivulet_trigger_deliveries_total",
        &[("trigger", "slow"), ("outcome", "delivered")],
        accepted.len() as f64,
    )
    .await;
    let delivered: BTreeSet<String> = subscriber.requests().iter().map(|r| r.id()).collect();
    for id in &accepted {
        assert!(
            delivered.contains(id),
            "event {id} got a 202 and was never delivered"
        );
    }
    let (api_ref, event_ref) = (&api, &event);
    wait_for("ingress to take events again", WAIT, || async move {
        let (api, event) = (api_ref, event_ref);
        let (status, _) = api
            .post_raw(
                "default",
                "fast",
                event("after").headers(),
                event("after").body.clone(),
            )
            .await;
        (status == 202).then_some(())
    })
    .await;
    subscriber.wait_for_matching(1, |r| r.id() == "after").await;
    child.kill9();
}
