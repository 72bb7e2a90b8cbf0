//! Storage faults of the real binary: a full disk makes ingress, `/readyz` and the Broker say
//! so and recovers by itself once space returns, with every accepted event delivered; damaged
//! store files stop the start with a message naming them, and `rivulet store repair` keeps
//! what can be kept.

use rivulet_testkit as support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::durability::wait_all_delivered;
use support::{ChildServer, Recorder, TEST_TOKEN, apply, condition, get, http, wait_for};

/// How long recovery and redelivery get (the issue states no bound; this is generous slack).
const RECOVERY: Duration = Duration::from_secs(60);

/// A small tmpfs, unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
    _parent: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts an 8 MiB tmpfs, or says why it cannot (not root, no mount).
    fn mount() -> Result<Self, String> {
        let parent = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = parent.path().join("data");
        std::fs::create_dir(&path).map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs failed (the test needs root): {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Self {
            path,
            _parent: parent,
        })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the filesystem of `dir` with one file until it takes no more.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("the filler can be created");
    let chunk = vec![0xAAu8; 64 * 1024];
    loop {
        if let Err(error) = file.write_all(&chunk).and_then(|()| file.sync_all()) {
            assert_eq!(
                error.raw_os_error(),
                Some(28),
                "filling stopped with {error}"
            );
            break;
        }
    }
    // Whatever was not a full chunk.
    let mut byte = [0u8; 1];
    while file.write_all(&byte).and_then(|()| file.sync_all()).is_ok() {
        byte[0] = byte[0].wrapping_add(1);
    }
    path
}

async fn post(base: &str, id: &str) -> reqwest::Response {
    http()
        .post(format!("{base}/default/default"))
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/storage")
        .header("ce-type", "test.storage")
        .header("content-type", "application/json")
        .body(format!("{{\"pad\":\"{}\"}}", "x".repeat(2048)))
        .send()
        .await
        .expect("ingress answers")
}

async fn readyz(base: &str) -> (u16, String) {
    let response = http()
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz answers");
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

async fn metrics(api: &str) -> String {
    http()
        .get(format!("{api}/metrics"))
        .bearer_auth(TEST_TOKEN)
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .unwrap_or_default()
}

/// Applies trigger `all` on the default broker with retries enough that nothing is given up
/// while `recorder` refuses, waits until it is Ready, and makes the recorder refuse (503).
async fn hold_deliveries(server: &ChildServer, recorder: &Recorder, retries: u32) {
    let mut trigger = support::trigger("default", "all", "default", &recorder.url);
    trigger["spec"]["delivery"] =
        json!({"retry": retries, "backoffPolicy": "linear", "backoffDelay": "PT0.2S"});
    apply(&server.api, &trigger).await;
    support::wait_ready(&server.api, "Trigger", "default", "all").await;
    recorder.set_status(503);
}

/// Posts events named `{prefix}-{n}` until ingress answers 503 (at most `limit`), adding the
/// accepted ones to `accepted`; the refusal. Any other answer fails the test.
async fn post_until_refused(
    base: &str,
    prefix: &str,
    limit: usize,
    accepted: &mut BTreeSet<String>,
) -> reqwest::Response {
    for n in 0..limit {
        let id = format!("{prefix}-{n}");
        let response = post(base, &id).await;
        match response.status().as_u16() {
            202 => {
                accepted.insert(id);
            }
            503 => return response,
            other => panic!("ingress answered {other} to {id}"),
        }
    }
    panic!("ingress took all {limit} {prefix} events, never refusing one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_is_reported_and_recovered_from_without_loss() {
    let disk = match SmallDisk::mount() {
        Ok(disk) => disk,
        Err(reason) => {
            eprintln!("SKIPPED a_full_disk_is_reported_and_recovered_from_without_loss: {reason}");
            return;
        }
    };
    let recorder = Recorder::start().await;
    let server = ChildServer::spawn(&disk.path, &[]).await;
    // The subscriber refuses while the disk fills: a delivered event would free its pages for
    // the next one, and a fast machine could then take events for ever without the log
    // needing more room.
    hold_deliveries(&server, &recorder, 10_000).await;

    let mut accepted = BTreeSet::new();
    for n in 0..20 {
        let id = format!("before-{n}");
        assert_eq!(post(&server.base, &id).await.status(), 202);
        accepted.insert(id);
    }

    let filler = fill(&disk.path);
    // The log may still have free pages inside: events are taken until it needs more.
    let refusal = post_until_refused(&server.base, "filling", 2000, &mut accepted).await;
    assert!(
        refusal.headers().get("retry-after").is_some(),
        "a 503 says when to retry"
    );
    let body = refusal.text().await.unwrap();
    assert!(body.contains("storage full"), "{body}");

    for listener in [&server.base, &server.api] {
        let (status, body) = wait_for("readyz 503", RECOVERY, || async {
            let (status, body) = readyz(listener).await;
            (status == 503).then_some((status, body))
        })
        .await;
        assert_eq!(status, 503);
        assert!(body.contains("storage full"), "{body}");
    }
    let broker = wait_for("Broker not Ready", RECOVERY, || async {
        let broker = get(&server.api, "Broker", "default", "default").await?;
        (support::ready_condition(&broker)?["status"] == "False").then_some(broker)
    })
    .await;
    let ingress = condition(&broker, "IngressReady").expect("IngressReady is reported");
    assert_eq!(ingress["reason"], "StorageFull", "{broker}");
    assert!(
        support::message_contains(&ingress, "storage full"),
        "{broker}"
    );
    let text = metrics(&server.api).await;
    assert!(text.contains("rivulet_storage_full 1"), "{text}");

    std::fs::remove_file(&filler).unwrap();
    recorder.set_status(202);
    wait_for("readyz 200 on both listeners", RECOVERY, || async {
        let ingress = readyz(&server.base).await.0;
        let api = readyz(&server.api).await.0;
        (ingress == 200 && api == 200).then_some(())
    })
    .await;
    support::wait_ready(&server.api, "Broker", "default", "default").await;
    for n in 0..20 {
        let id = format!("after-{n}");
        assert_eq!(post(&server.base, &id).await.status(), 202);
        accepted.insert(id);
    }
    wait_all_delivered(&recorder, &accepted, RECOVERY).await;
    let text = metrics(&server.api).await;
    assert!(text.contains("rivulet_storage_full 0"), "{text}");
    assert!(
        text.contains("rivulet_storage_faults_total{component=\"embedded_log\",kind=\"full\"} 1"),
        "{text}"
    );
    drop(server);
}

/// `rivulet serve` on `data_dir` that is expected to stop at once; its output.
fn serve_expecting_refusal(data_dir: &Path) -> Output {
    let mut child = support::serve_command(data_dir, support::free_port(), support::free_port())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the rivulet binary starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("try_wait works").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("rivulet serve kept running on a damaged data dir");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    child.wait_with_output().expect("output is read")
}

fn store_command(verb: &str, data_dir: &Path) -> Output {
    Command::new(support::binary())
        .args(["store", verb, "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("the rivulet binary runs")
}

/// A server with a trigger whose subscriber refuses everything (so events stay queued), and
/// `count` accepted events; stopped again. Returns the recorder and the accepted ids.
async fn queue_events(data_dir: &Path, count: usize) -> (Recorder, BTreeSet<String>) {
    let recorder = Recorder::start().await;
    recorder.set_status(503);
    let mut server = ChildServer::spawn(data_dir, &[]).await;
    hold_deliveries(&server, &recorder, 1000).await;
    apply(
        &server.api,
        &json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "extra", "namespace": "default"}, "data": {"k": "v"}}),
    )
    .await;
    let mut ids = BTreeSet::new();
    for n in 0..count {
        let id = format!("queued-{n}");
        assert_eq!(post(&server.base, &id).await.status(), 202);
        ids.insert(id);
    }
    let status = server.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "rivulet serve stopped with {status}");
    (recorder, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_garbled_resource_file_stops_the_start_and_repair_keeps_the_queued_events() {
    let data = tempfile::tempdir().unwrap();
    let (recorder, ids) = queue_events(data.path(), 50).await;
    let damaged = data
        .path()
        .join("resources/core/configmaps/default/extra.json");
    assert!(damaged.exists(), "resource files are where the docs say");
    std::fs::write(
        &damaged,
        b"{\"apiVersion\": \"v1\", \"kind\": \"Conf\x00\xff",
    )
    .unwrap();
    // A write a crash cut short: not damage, removed at start.
    let torn = data
        .path()
        .join("resources/core/configmaps/default/other.json.tmp");
    std::fs::write(&torn, b"{\"apiVersion\": \"v1\", \"ki").unwrap();

    let refused = serve_expecting_refusal(data.path());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "start refused: {stderr}");
    assert!(stderr.contains(&damaged.display().to_string()), "{stderr}");
    assert!(stderr.contains("not valid JSON"), "{stderr}");
    assert!(stderr.contains("rivulet store repair"), "{stderr}");
    assert!(damaged.exists(), "the damaged file was left alone");

    let check = store_command("check", data.path());
    assert_eq!(check.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&check.stdout).contains("extra.json"));
    let repair = store_command("repair", data.path());
    let said = String::from_utf8_lossy(&repair.stdout);
    assert!(repair.status.success(), "{said}");
    assert!(
        said.contains("extra.json") && said.contains("moved aside"),
        "{said}"
    );
    assert!(!damaged.exists());

    recorder.set_status(202);
    let server = ChildServer::spawn(data.path(), &[]).await;
    assert!(!torn.exists(), "the torn write was removed");
    wait_all_delivered(&recorder, &ids, RECOVERY).await;
    assert!(
        get(&server.api, "ConfigMap", "default", "extra")
            .await
            .is_none(),
        "the damaged resource is gone until applied again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_zero_length_log_stops_the_start_instead_of_starting_empty() {
    let data = tempfile::tempdir().unwrap();
    let (_recorder, _ids) = queue_events(data.path(), 20).await;
    let log = data.path().join("channels/default/default.redb");
    assert!(std::fs::metadata(&log).unwrap().len() > 0);
    std::fs::File::create(&log).unwrap(); // truncates to zero bytes

    let refused = serve_expecting_refusal(data.path());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "start refused: {stderr}");
    assert!(stderr.contains(&log.display().to_string()), "{stderr}");
    assert!(stderr.contains("zero bytes"), "{stderr}");
    assert_eq!(
        std::fs::metadata(&log).unwrap().len(),
        0,
        "the file was not replaced"
    );

    let repair = store_command("repair", data.path());
    let said = String::from_utf8_lossy(&repair.stdout);
    assert!(repair.status.success(), "{said}");
    assert!(said.contains("default.redb"), "{said}");
    let aside: Vec<_> = std::fs::read_dir(log.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged file was kept aside");

    let server = ChildServer::spawn(data.path(), &[]).await;
    support::wait_ready(&server.api, "Broker", "default", "default").await;
    assert_eq!(post(&server.base, "after-repair").await.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_a_data_folder_in_use_stops_with_a_message() {
    let data = tempfile::tempdir().unwrap();
    let first = ChildServer::spawn(data.path(), &[]).await;
    let output = serve_expecting_refusal(data.path());
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("in use by another rivulet process") && stderr.contains("--data-dir"),
        "{stderr}"
    );
    // The first one is unaffected.
    assert_eq!(post(&first.base, "still-served").await.status(), 202);
    drop(first);
}

/// A backlog that fills the disk by itself (the subscriber down): ingress refuses new events
/// while free space is under the reserve, deliveries go on once the subscriber is back, and
/// the log gives the room back, so ingress takes events again without anyone freeing space.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_that_fills_the_disk_is_delivered_and_the_log_recovers_by_itself() {
    let disk = match SmallDisk::mount() {
        Ok(disk) => disk,
        Err(reason) => {
            eprintln!(
                "SKIPPED a_backlog_that_fills_the_disk_is_delivered_and_the_log_recovers_by_itself: {reason}"
            );
            return;
        }
    };
    let recorder = Recorder::start().await;
    let server = ChildServer::spawn(&disk.path, &[]).await;
    hold_deliveries(&server, &recorder, 10_000).await;

    let mut accepted = BTreeSet::new();
    let refusal = post_until_refused(&server.base, "backlog", 10_000, &mut accepted).await;
    assert!(refusal.headers().get("retry-after").is_some());
    let body = refusal.text().await.unwrap();
    assert!(body.contains("storage full"), "{body}");
    assert!(accepted.len() > 100, "only {} accepted", accepted.len());

    // Nobody frees space: the deliveries do.
    recorder.set_status(202);
    wait_all_delivered(&recorder, &accepted, RECOVERY).await;
    let after = wait_for("ingress to take events again", RECOVERY, || async {
        let id = format!("after-{}", accepted.len());
        (post(&server.base, &id).await.status() == 202).then_some(id)
    })
    .await;
    accepted.insert(after);
    wait_for("readyz 200", RECOVERY, || async {
        (readyz(&server.base).await.0 == 200).then_some(())
    })
    .await;
    wait_all_delivered(&recorder, &accepted, RECOVERY).await;
    drop(server);
}
