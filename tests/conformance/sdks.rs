//! The official CloudEvents SDKs against Rivulet: the Python SDK (`cloudevents` on PyPI) and
//! the JavaScript SDK (`cloudevents` on npm) send to a broker in binary, structured and batch
//! mode, and receive its deliveries in binary and structured mode.
//!
//! Each SDK runs as a child process (`tests/sdks/cloudevents_sdk.*`): a sender that encodes
//! events with the SDK and posts them, and a receiver that decodes every request with the SDK
//! and prints what it read. Before anything goes through Rivulet, the sender posts straight to
//! the receiver: that is what the SDK itself makes of its own events. What arrives through
//! Rivulet must equal it, attribute for attribute and with the same JSON types, where the
//! HTTP binding can carry them. Binary mode carries every attribute as a string, so an event
//! sent in binary mode keeps string extensions, and an event delivered in binary mode has its
//! integer and boolean extensions in their canonical string forms ("42", "true").
//!
//! `test.sh` installs both SDKs into a cache folder and names them in `RIVULET_PYTHON_SDK`
//! (a Python interpreter that can import the SDK) and `RIVULET_NODE_MODULES`. The Go SDK is
//! not exercised: its modules come from the Go module proxy, which is not among the package
//! registries the test command installs from.

use rivulet_testkit as support;

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use support::{TestServer, WAIT, trigger, wait_for};

const NS: &str = "default";
const BROKER: &str = "default";
const MODES: [&str; 3] = ["binary", "structured", "batch"];
/// The extensions the events carry: the attributes whose types the HTTP binding can lose.
const EXTENSIONS: [&str; 4] = ["intext", "boolext", "strext", "uriext"];

/// How to run one SDK's client script.
struct Sdk {
    name: &'static str,
    program: PathBuf,
    script: PathBuf,
    env: Vec<(&'static str, String)>,
}

impl Sdk {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.program);
        command.arg(&self.script).args(args);
        for (name, value) in &self.env {
            command.env(name, value);
        }
        command
    }

    /// Posts `events` to `url` with the SDK in `mode`; the status of every request.
    fn send(&self, url: &str, mode: &str, events: &[Value]) -> Vec<u16> {
        let mut child = self
            .command(&["send", url, mode])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("the {} sender starts: {e}", self.name));
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(Value::from(events.to_vec()).to_string().as_bytes())
            .expect("the events are written to the sender");
        let output = child.wait_with_output().expect("the sender runs");
        assert!(
            output.status.success(),
            "the {} sender failed ({}): {}",
            self.name,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| {
                let answer: Value = serde_json::from_str(line).expect("the sender prints JSON");
                let status = answer["status"].as_u64().expect("a status") as u16;
                assert!(
                    (200..300).contains(&status),
                    "the {} sender in {mode} mode got {answer}",
                    self.name
                );
                status
            })
            .collect()
    }
}

/// The Python SDK, or why it cannot run here.
fn python_sdk() -> Result<Sdk, String> {
    let program = std::env::var("RIVULET_PYTHON_SDK").unwrap_or_else(|_| "python3".into());
    let check = Command::new(&program)
        .args(["-c", "import cloudevents.core.bindings.http"])
        .output();
    match check {
        Ok(output) if output.status.success() => Ok(Sdk {
            name: "Python",
            program: program.into(),
            script: script("cloudevents_sdk.py"),
            env: vec![],
        }),
        _ => Err(format!(
            "{program} cannot import the CloudEvents SDK (cloudevents 2.x); test.sh installs it \
             and sets RIVULET_PYTHON_SDK"
        )),
    }
}

/// The JavaScript SDK, or why it cannot run here.
fn javascript_sdk() -> Result<Sdk, String> {
    let modules = std::env::var("RIVULET_NODE_MODULES").unwrap_or_default();
    let env = vec![("NODE_PATH", modules.clone())];
    let check = Command::new("node")
        .args(["-e", "require('cloudevents')"])
        .env("NODE_PATH", &modules)
        .output();
    match check {
        Ok(output) if output.status.success() => Ok(Sdk {
            name: "JavaScript",
            program: "node".into(),
            script: script("cloudevents_sdk.cjs"),
            env,
        }),
        _ => Err(format!(
            "node cannot load the CloudEvents SDK from NODE_PATH={modules:?}; test.sh installs it \
             and sets RIVULET_NODE_MODULES"
        )),
    }
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdks")
        .join(name)
}

/// A running SDK receiver; every request it decoded, as `(path, mode, event)`.
struct Receiver {
    child: Child,
    port: u16,
    received: Arc<Mutex<Vec<(String, String, Value)>>>,
}

impl Receiver {
    fn start(sdk: &Sdk) -> Receiver {
        let mut child = sdk
            .command(&["receive"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("the {} receiver starts: {e}", sdk.name));
        let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let first = lines
            .next()
            .and_then(Result::ok)
            .expect("the receiver prints its port");
        let port = serde_json::from_str::<Value>(&first).expect("JSON")["listening"]
            .as_u64()
            .expect("a port") as u16;
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let request: Value = serde_json::from_str(&line).expect("the receiver prints JSON");
                let path = request["path"].as_str().unwrap_or_default().to_string();
                let mode = request["mode"].as_str().unwrap_or_default().to_string();
                for event in request["events"].as_array().cloned().unwrap_or_default() {
                    sink.lock()
                        .unwrap()
                        .push((path.clone(), mode.clone(), event));
                }
            }
        });
        Receiver {
            child,
            port,
            received,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// Waits for `count` events at `path`; returns them by id, with the mode each came in.
    async fn events_at(&self, path: &str, count: usize) -> BTreeMap<String, (String, Value)> {
        let path = format!("/{path}");
        wait_for(&format!("{count} events at {path}"), WAIT, || {
            let at: BTreeMap<String, (String, Value)> = self
                .received
                .lock()
                .unwrap()
                .iter()
                .filter(|(p, _, _)| *p == path)
                .map(|(_, mode, event)| {
                    let id = event["id"].as_str().unwrap_or_default().to_string();
                    (id, (mode.clone(), event.clone()))
                })
                .collect();
            async move { (at.len() >= count).then_some(at) }
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The events sent in `mode`: JSON data with one extension of every JSON type (and a string
/// that looks like a number), and bytes that are not UTF-8 with a negative integer extension.
fn events(sdk: &Sdk, mode: &str) -> Vec<Value> {
    let prefix = format!("{}-{mode}", sdk.name.to_lowercase());
    vec![
        json!({
            "specversion": "1.0", "id": format!("{prefix}-json"), "source": "/sdk/tests",
            "type": "com.example.sdk", "subject": "typed", "time": "2026-12-07T10:00:00.123Z",
            "dataschema": "https://example.com/schema.json", "datacontenttype": "application/json",
            "data": {"n": 1, "text": "ünïcode", "list": [true, null]},
            "intext": 42, "boolext": true, "strext": "42", "uriext": "https://example.com/x"
        }),
        json!({
            "specversion": "1.0", "id": format!("{prefix}-bytes"), "source": "/sdk/tests",
            "type": "com.example.sdk", "time": "2026-12-07T10:00:01Z",
            "datacontenttype": "application/octet-stream", "data_base64": "AAEC/w==",
            "intext": -7
        }),
    ]
}

/// An event as a binary-mode delivery carries it: extensions in their canonical strings.
fn with_string_extensions(event: &Value) -> Value {
    let mut event = event.clone();
    for (name, value) in event.as_object_mut().expect("an event is an object") {
        if !EXTENSIONS.contains(&name.as_str()) {
            continue;
        }
        let text = match value {
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            _ => continue,
        };
        *value = Value::String(text);
    }
    event
}

/// An event as delivered, without the attributes a broker adds: its loop guard and the
/// time it arrived.
fn without_broker_attributes(event: &Value) -> Value {
    let mut event = event.clone();
    let attributes = event.as_object_mut().expect("an event is an object");
    for added in ["knativebrokerttl", "knativearrivaltime"] {
        assert!(
            attributes.remove(added).is_some(),
            "a broker delivery carries {added}: {attributes:?}"
        );
    }
    event
}

async fn exchange_events_with(sdk: Sdk) {
    let receiver = Receiver::start(&sdk);

    // What the SDK makes of its own events, with nothing in between.
    let mut direct = BTreeMap::new();
    for mode in MODES {
        let path = format!("direct-{mode}");
        let sent = events(&sdk, mode);
        sdk.send(&receiver.url(&path), mode, &sent);
        direct.extend(receiver.events_at(&path, sent.len()).await);
    }
    for (id, (mode, event)) in &direct {
        if !id.contains("-binary-") {
            assert_eq!(
                mode,
                if id.contains("-batch-") {
                    "batch"
                } else {
                    "structured"
                }
            );
            assert!(
                event["intext"].is_i64(),
                "the SDK itself keeps types: {event}"
            );
        }
    }

    let server = TestServer::start_ready().await;
    server
        .create_trigger(&trigger(
            NS,
            "to-binary",
            BROKER,
            &receiver.url("via-binary"),
        ))
        .await;
    let mut structured = trigger(NS, "to-json", BROKER, &receiver.url("via-json"));
    structured["spec"]["delivery"] = json!({"format": "json"});
    server.create_trigger(&structured).await;
    server.wait_ready("Trigger", NS, "to-binary").await;
    server.wait_ready("Trigger", NS, "to-json").await;

    let ingress = server.ingress_url(NS, BROKER);
    let sent = MODES.len() * 2;
    for mode in MODES {
        let statuses = sdk.send(&ingress, mode, &events(&sdk, mode));
        assert!(statuses.iter().all(|s| *s == 202), "{mode}: {statuses:?}");
    }
    let via_binary = receiver.events_at("via-binary", sent).await;
    let via_json = receiver.events_at("via-json", sent).await;

    for (id, (mode, event)) in &via_json {
        assert_eq!(mode, "structured", "{id} is delivered in structured mode");
        let (_, expected) = &direct[id];
        assert_eq!(
            without_broker_attributes(event),
            *expected,
            "{id}: a structured delivery carries what the {} SDK sent, types included",
            sdk.name
        );
        if !id.contains("-binary-") && id.ends_with("-json") {
            assert_eq!(event["intext"], json!(42), "{event}");
            assert_eq!(event["boolext"], json!(true), "{event}");
            assert_eq!(event["strext"], json!("42"), "{event}");
        }
    }
    for (id, (mode, event)) in &via_binary {
        assert_eq!(mode, "binary", "{id} is delivered in binary mode");
        let (_, sent) = &direct[id];
        let expected = if id.contains("-binary-") {
            sent.clone()
        } else {
            with_string_extensions(sent)
        };
        assert_eq!(
            without_broker_attributes(event),
            expected,
            "{id}: a binary delivery carries what the {} SDK sent, extensions as strings",
            sdk.name
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_sends_and_receives_in_every_mode() {
    match python_sdk() {
        Ok(sdk) => exchange_events_with(sdk).await,
        Err(reason) => eprintln!("skipped: {reason}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_sdk_sends_and_receives_in_every_mode() {
    match javascript_sdk() {
        Ok(sdk) => exchange_events_with(sdk).await,
        Err(reason) => eprintln!("skipped: {reason}"),
    }
}
