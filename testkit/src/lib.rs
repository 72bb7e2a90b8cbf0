//! Helpers shared by the end-to-end tests: a server in process or as a child process, a
//! recording subscriber, applying resources and waiting with deadlines.
//!
//! For delivery semantics there is more in two submodules, re-exported here: `api`
//! ([`TestServer`], the method-style [`Api`] client, [`TestEvent`], [`metric_sum`]) and
//! `subscriber` ([`Subscriber`]: records every request and answers per a [`Script`] of
//! statuses per attempt, delays, `Retry-After`, reply events or no answer at all). And
//! `kube_api`, not re-exported: a scripted Kubernetes API server behind a runtime context.
#![forbid(unsafe_code)]

pub mod adapters;
mod api;
pub mod durability;
pub mod kafka;
pub mod kube_api;
pub mod kube_server;
pub mod nats;
pub mod oidc;
pub mod rabbitmq;
pub mod sink_contract;
pub mod source_contract;
pub mod store_contract;
mod subscriber;

pub use api::*;
pub use subscriber::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rivulet::event::Event;
use rivulet::server::{RunningServer, ServeOptions};
use serde_json::Value;

/// How long the wait functions allow for something that should happen soon.
pub const WAIT: Duration = Duration::from_secs(20);

/// The admin token every test server gets (written into its data dir before it starts, as an
/// operator may do); the resource API helpers send it.
pub const TEST_TOKEN: &str = "rvt_test_admin_token_for_the_test_suite_only";

/// Writes [`TEST_TOKEN`] as the admin token of a server that will use `data_dir`.
pub fn give_test_token(data_dir: &Path) {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(data_dir).expect("the data dir can be made");
    let path = data_dir.join("admin.token");
    if !path.exists() {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .expect("the token file can be written");
        writeln!(file, "{TEST_TOKEN}").expect("the token file can be written");
    }
}

/// A request to the resource API, with the test admin token.
pub fn api_request(method: reqwest::Method, url: impl reqwest::IntoUrl) -> reqwest::RequestBuilder {
    http().request(method, url).bearer_auth(TEST_TOKEN)
}

/// An HTTP client for tests.
pub fn http() -> reqwest::Client {
    rivulet::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("the HTTP client builds")
}

/// Sends a request; returns the status code. Fails the test when nothing answers.
pub async fn status_of(request: reqwest::RequestBuilder) -> u16 {
    request
        .send()
        .await
        .expect("the server answers")
        .status()
        .as_u16()
}

/// Sends a request; returns its JSON answer. Fails the test when nothing answers or the
/// answer is not JSON.
pub async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request
        .send()
        .await
        .expect("the server answers")
        .json()
        .await
        .expect("the answer is JSON")
}

/// Whether the `message` of `object` (an error answer or a condition) contains `needle`.
pub fn message_contains(object: &Value, needle: &str) -> bool {
    object["message"]
        .as_str()
        .is_some_and(|message| message.contains(needle))
}

/// Fails the test with every failure listed unless `failures` is empty; `cases` is how many
/// cases ran.
pub fn assert_no_failures(failures: &[String], cases: usize) {
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The `rivulet` CLI ([`binary`]) pointed at the resource API `api` with [`TEST_TOKEN`],
/// logging only warnings, with no stdin and no ingress URL from the environment, killed if
/// the test drops it.
pub fn cli(api: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(binary());
    command
        .env_remove("RIVULET_INGRESS")
        .env("RIVULET_SERVER", api)
        .env("RIVULET_TOKEN", TEST_TOKEN)
        .env("RIVULET_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Fails the test with the command's stderr unless it exited with success; `what` names the
/// command in the message.
pub fn assert_succeeded(output: &std::process::Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Writes `contents` to file `name` in `dir`; returns the file's path.
pub fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents)
        .unwrap_or_else(|e| panic!("{} can be written: {e}", path.display()));
    path
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A name no other test (or earlier run) uses, so brokers, queues, streams and topics named
/// after it start empty.
pub fn unique(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    )
}

/// A free TCP port on 127.0.0.1 (bound and released, so another process can take it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Default options with both listeners on free loopback ports and `data_dir`.
pub fn loopback_options(data_dir: &Path) -> ServeOptions {
    ServeOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: data_dir.to_path_buf(),
        ..ServeOptions::default()
    }
}

/// A server running in this process, with its own data dir.
pub struct InProcessServer {
    /// Ingress's URL.
    pub base: String,
    /// The resource API's URL.
    pub api: String,
    pub server: Option<RunningServer>,
    pub data_dir: tempfile::TempDir,
}

impl InProcessServer {
    /// Starts a server on a free port with default options changed by `configure`.
    pub async fn start_with(configure: impl FnOnce(&mut ServeOptions)) -> Self {
        let data_dir = tempfile::tempdir().expect("a temp dir");
        let mut options = loopback_options(data_dir.path());
        configure(&mut options);
        give_test_token(&options.data_dir);
        let server = rivulet::server::start(options)
            .await
            .expect("the server starts");
        let base = server.base_url.clone();
        let api = server.api_url.clone();
        wait_until_ready(&base).await;
        Self {
            base,
            api,
            server: Some(server),
            data_dir,
        }
    }

    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("the server stops cleanly");
        }
    }
}

/// Waits until `GET {base}/readyz` answers 200.
pub async fn wait_until_ready(base: &str) {
    let client = http();
    let url = format!("{base}/readyz");
    wait_for(&format!("{url} to answer 200"), WAIT, || {
        let request = client.get(&url).timeout(Duration::from_secs(2)).send();
        async move {
            match request.await {
                Ok(r) if r.status().is_success() => Some(()),
                _ => None,
            }
        }
    })
    .await;
}

/// The `rivulet` binary with `args`, logging warnings only, its output to nowhere but
/// stderr; callers add what their case needs before spawning.
pub fn rivulet_command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut command = Command::new(binary());
    command
        .args(args)
        .env("RIVULET_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    command
}

/// `rivulet serve` on loopback ports `port` (ingress) and `api_port` (resource API), keeping
/// its state in `data_dir`.
pub fn serve_command(data_dir: &Path, port: u16, api_port: u16) -> Command {
    let mut command = rivulet_command(["serve"]);
    command
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--api-listen")
        .arg(format!("127.0.0.1:{api_port}"))
        .arg("--data-dir")
        .arg(data_dir);
    command
}

/// The `rivulet` binary built for these tests: `RIVULET_BINARY`, or the one cargo builds for
/// the integration tests, beside the `deps` folder the test executable runs from.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("RIVULET_BINARY") {
        return PathBuf::from(path);
    }
    let test = std::env::current_exe().expect("the test executable has a path");
    let profile_dir = test
        .parent()
        .and_then(Path::parent)
        .expect("test executables run from target/<profile>/deps");
    profile_dir.join(format!("rivulet{}", std::env::consts::EXE_SUFFIX))
}

/// A `rivulet serve` child process.
pub struct ChildServer {
    pub child: Child,
    /// Ingress's URL and port.
    pub base: String,
    pub port: u16,
    /// The resource API's URL and port.
    pub api: String,
    pub api_port: u16,
    pub data_dir: PathBuf,
}

impl ChildServer {
    /// Starts `rivulet serve` on a free port with `data_dir` and extra arguments, and waits
    /// until it is ready. Its logs go to this process's stderr (shown when a test fails).
    pub async fn spawn(data_dir: &Path, extra_args: &[&str]) -> Self {
        Self::spawn_with_env(data_dir, extra_args, &[]).await
    }

    /// Like [`ChildServer::spawn`], with extra environment variables (e.g. `KUBECONFIG`).
    pub async fn spawn_with_env(
        data_dir: &Path,
        extra_args: &[&str],
        env: &[(&str, &Path)],
    ) -> Self {
        // A free port can be taken by another test between finding it and the child binding
        // it; a child that exits before it is ready is started again on other ports.
        for _ in 1..3 {
            let mut server = Self::spawn_unready_with_env(data_dir, extra_args, env);
            match server.ready_or_exit().await {
                Ok(()) => return server,
                Err(status) => eprintln!(
                    "rivulet serve exited before it was ready ({status}); starting it again on other ports"
                ),
            }
        }
        let mut server = Self::spawn_unready_with_env(data_dir, extra_args, env);
        server.wait_ready().await;
        server
    }

    /// Like [`ChildServer::spawn`], without waiting for readiness.
    pub fn spawn_unready(data_dir: &Path, extra_args: &[&str]) -> Self {
        Self::spawn_unready_with_env(data_dir, extra_args, &[])
    }

    fn spawn_unready_with_env(data_dir: &Path, extra_args: &[&str], env: &[(&str, &Path)]) -> Self {
        let port = free_port();
        let api_port = free_port();
        give_test_token(data_dir);
        let child = serve_command(data_dir, port, api_port)
            .args(extra_args)
            .envs(env.iter().copied())
            .spawn()
            .expect("the rivulet binary starts");
        let base = format!("http://127.0.0.1:{port}");
        Self {
            child,
            base,
            port,
            api: format!("http://127.0.0.1:{api_port}"),
            api_port,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// Waits until `/readyz` answers 200; panics if the process exits first.
    pub async fn wait_ready(&mut self) {
        if let Err(status) = self.ready_or_exit().await {
            panic!("rivulet serve exited before it was ready: {status}");
        }
    }

    /// Waits until `/readyz` answers 200, or gives the exit status of a process that ended
    /// first; panics when neither happens in time.
    async fn ready_or_exit(&mut self) -> Result<(), std::process::ExitStatus> {
        let client = http();
        let url = format!("{}/readyz", self.base);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(status);
            }
            if let Ok(r) = client
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                && r.status().is_success()
            {
                return Ok(());
            }
            assert!(Instant::now() < deadline, "rivulet serve not ready in time");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reaps the process.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the exit status.
    pub async fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait works") {
                return status;
            }
            if Instant::now() > deadline {
                self.kill9();
                panic!("rivulet serve did not stop within {timeout:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        }
    }
}

/// One request a [`Recorder`] received.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: http::HeaderMap,
    pub event: Event,
    /// The status the recorder answered with.
    pub answered: u16,
}

impl Received {
    fn accepted(&self) -> bool {
        (200..300).contains(&self.answered)
    }
}

/// A subscriber that records every CloudEvent it gets and answers 202 (or what
/// [`Recorder::set_status`] says). `events`, `count` and `wait_for_id` only see deliveries it
/// answered with 2xx; `attempts` sees every request.
#[derive(Clone)]
pub struct Recorder {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
    status: Arc<Mutex<u16>>,
    delay: Arc<Mutex<Duration>>,
    /// Requests being answered now, and the most seen at once.
    max_in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

impl Recorder {
    pub async fn start() -> Self {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let status = Arc::new(Mutex::new(202u16));
        let delay: Arc<Mutex<Duration>> = Arc::default();
        let in_flight: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let max_in_flight: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the recorder binds");
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let app = {
            let received = received.clone();
            let status = status.clone();
            let delay = delay.clone();
            let (in_flight, max_in_flight) = (in_flight.clone(), max_in_flight.clone());
            axum::Router::new().fallback(move |request: axum::extract::Request| {
                let received = received.clone();
                let status = status.clone();
                let delay = *delay.lock().unwrap();
                let (in_flight, max_in_flight) = (in_flight.clone(), max_in_flight.clone());
                async move {
                    use std::sync::atomic::Ordering::SeqCst;
                    let now = in_flight.fetch_add(1, SeqCst) + 1;
                    max_in_flight.fetch_max(now, SeqCst);
                    tokio::time::sleep(delay).await;
                    in_flight.fetch_sub(1, SeqCst);
                    let (parts, body) = request.into_parts();
                    let body = axum::body::to_bytes(body, 64 * 1024 * 1024)
                        .await
                        .unwrap_or_default();
                    match rivulet::event::from_http(&parts.headers, body) {
                        Ok((_, events)) => {
                            let code = *status.lock().unwrap();
                            let mut list = received.lock().unwrap();
                            for event in events {
                                list.push(Received {
                                    headers: parts.headers.clone(),
                                    event,
                                    answered: code,
                                });
                            }
                            http::StatusCode::from_u16(code).unwrap()
                        }
                        Err(_) => http::StatusCode::BAD_REQUEST,
                    }
                }
            })
        };
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            received,
            status,
            delay,
            max_in_flight,
        }
    }

    /// The most requests that were being answered at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn set_status(&self, code: u16) {
        *self.status.lock().unwrap() = code;
    }

    /// Makes every later request wait this long before it is answered.
    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    /// Events delivered (answered with 2xx), in arrival order.
    pub fn events(&self) -> Vec<Event> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.accepted())
            .map(|r| r.event.clone())
            .collect()
    }

    /// How many deliveries were answered with 2xx.
    pub fn count(&self) -> usize {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.accepted())
            .count()
    }

    /// Every request received, whatever the answer.
    pub fn attempts(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until an event with `id` arrived and returns it.
    pub async fn wait_for_id(&self, id: &str) -> Received {
        wait_for(&format!("event {id} at the subscriber"), WAIT, || {
            let found = self
                .received
                .lock()
                .unwrap()
                .iter()
                .find(|r| r.accepted() && r.event.id == id)
                .cloned();
            async move { found }
        })
        .await
    }
}

/// The resource API path of an object, from the kinds Rivulet registers.
pub fn resource_path(kind: &str, namespace: &str, name: &str) -> String {
    let info = rivulet::resources::find_kind_by_name(None, kind)
        .unwrap_or_else(|| panic!("no path known for kind {kind}"));
    format!("{}/{name}", info.collection_path(namespace))
}

/// PUTs an object (JSON) to the resource API at `base`, at the path of its apiVersion and
/// kind; returns status and body.
pub async fn put(base: &str, object: &Value) -> (u16, Value) {
    let kind = object["kind"].as_str().expect("object has a kind");
    let namespace = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .expect("object has a name");
    let path = match rivulet::resources::find_kind_by_name(object["apiVersion"].as_str(), kind) {
        Some(info) => format!("{}/{name}", info.collection_path(namespace)),
        None => resource_path(kind, namespace, name),
    };
    let response = api_request(reqwest::Method::PUT, format!("{base}{path}"))
        .json(object)
        .send()
        .await
        .expect("PUT reaches the server");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// PUTs an object and panics unless it is accepted (200 or 201).
pub async fn apply(base: &str, object: &Value) -> Value {
    let (status, body) = put(base, object).await;
    assert!(
        status == 200 || status == 201,
        "apply of {} failed with {status}: {body}",
        object["metadata"]["name"]
    );
    body
}

/// GETs an object; `None` on 404.
pub async fn get(base: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
    let response = api_request(
        reqwest::Method::GET,
        format!("{base}{}", resource_path(kind, namespace, name)),
    )
    .send()
    .await
    .expect("GET reaches the server");
    match response.status().as_u16() {
        404 => None,
        200 => Some(response.json().await.expect("GET answers JSON")),
        other => panic!("GET {kind} {namespace}/{name} answered {other}"),
    }
}

/// The `Ready` condition of an object, if it has one.
pub fn ready_condition(object: &Value) -> Option<Value> {
    condition(object, "Ready")
}

pub fn condition(object: &Value, type_: &str) -> Option<Value> {
    object
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// Waits until the object's `Ready` condition is `True` and returns the object.
pub async fn wait_ready(base: &str, kind: &str, namespace: &str, name: &str) -> Value {
    wait_status(base, kind, namespace, name, "True").await
}

/// Waits until the object's `Ready` condition has `status` and returns the object.
pub async fn wait_status(
    base: &str,
    kind: &str,
    namespace: &str,
    name: &str,
    status: &str,
) -> Value {
    wait_for(
        &format!("{kind} {namespace}/{name} Ready={status}"),
        WAIT,
        || async {
            let object = get(base, kind, namespace, name).await?;
            let ready = ready_condition(&object)?;
            (ready["status"] == status).then_some(object)
        },
    )
    .await
}

/// Applies a manifest of a kind that runs workloads only under `--store kubernetes`, waits
/// until it is not Ready because of that and returns the stored object (its status filled in
/// as far as a standalone server can).
pub async fn apply_needing_kubernetes(base: &str, manifest: &Value) -> Value {
    apply(base, manifest).await;
    let kind = manifest["kind"].as_str().expect("the manifest has a kind");
    let metadata = &manifest["metadata"];
    let namespace = metadata["namespace"].as_str().unwrap_or("default");
    let name = metadata["name"].as_str().expect("the manifest has a name");
    let object = wait_status(base, kind, namespace, name, "False").await;
    let ready = ready_condition(&object).expect("a Ready condition");
    assert_eq!(ready["reason"], "KubernetesRequired", "{ready}");
    assert!(message_contains(&ready, "--store kubernetes"), "{ready}");
    object
}

/// A Broker of a backend's `class` whose `spec.config` names `config`, a `config_kind`
/// (`ConfigMap`, `Secret` or `RabbitmqBrokerConfig`).
pub fn broker_of_class(
    namespace: &str,
    name: &str,
    class: &str,
    config_kind: &str,
    config: &str,
) -> Value {
    let api_version = match config_kind {
        "RabbitmqBrokerConfig" => "eventing.knative.dev/v1alpha1",
        _ => "v1",
    };
    serde_json::json!({
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": {"eventing.knative.dev/broker.class": class}
        },
        "spec": {"config": {"apiVersion": api_version, "kind": config_kind, "name": config}}
    })
}

/// A Broker manifest in namespace `default` (or `namespace`).
pub fn broker(namespace: &str, name: &str) -> Value {
    serde_json::json!({
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {}
    })
}

/// A Trigger manifest with no filter sending to `subscriber`.
pub fn trigger(namespace: &str, name: &str, broker: &str, subscriber: &str) -> Value {
    serde_json::json!({
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"broker": broker, "subscriber": {"uri": subscriber}}
    })
}

/// Applies a trigger and waits until it is Ready.
pub async fn apply_trigger_ready(
    base: &str,
    namespace: &str,
    name: &str,
    broker: &str,
    subscriber: &str,
) {
    apply(base, &trigger(namespace, name, broker, subscriber)).await;
    wait_ready(base, "Trigger", namespace, name).await;
}

/// Posts one binary-mode event; returns the status code.
pub async fn post_binary(base: &str, broker_path: &str, id: &str, ty: &str, data: &str) -> u16 {
    post_binary_to(&format!("{base}/{broker_path}"), id, ty, data).await
}

/// Posts a binary-mode CloudEvent with JSON `data` to `url`; returns the status (0 when
/// nothing answered).
pub async fn post_binary_to(url: &str, id: &str, ty: &str, data: &str) -> u16 {
    http()
        .post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/tests")
        .header("ce-type", ty)
        .header("content-type", "application/json")
        .body(data.to_string())
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}
