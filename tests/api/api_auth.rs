//! The resource API's own listener and its bearer tokens: who may read, who may write, and
//! that Secrets never come back out.

use rivulet_testkit as support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::process::Stdio;

use reqwest::Method;
use rivulet::api::auth::ApiAuth;
use rivulet::server::ServeOptions;
use serde_json::{Value, json};
use support::{InProcessServer, TEST_TOKEN, api_request, http, resource_path};

const SECRET_VALUE: &str = "hunter2-very-secret";

fn secret() -> Value {
    use base64::Engine as _;
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "creds", "namespace": "default"},
        "data": {"password": base64::engine::general_purpose::STANDARD.encode(SECRET_VALUE)}
    })
}

fn secret_url(server: &InProcessServer) -> String {
    format!(
        "{}{}",
        server.api,
        resource_path("Secret", "default", "creds")
    )
}

/// Every way the body of a response could carry the secret: as is, and base64-encoded.
fn leaks(body: &str) -> bool {
    use base64::Engine as _;
    body.contains(SECRET_VALUE)
        || body.contains(&base64::engine::general_purpose::STANDARD.encode(SECRET_VALUE))
}

/// The text of a GET of `url` with the admin token.
async fn admin_get_text(url: String) -> String {
    api_request(Method::GET, &url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .expect("the answer is text")
}

/// Runs `rivulet` with `args` against the API at `api`, with no token but the one it finds
/// in `data_dir`; its output.
async fn rivulet_cli(api: &str, args: &[&str], data_dir: &std::path::Path) -> std::process::Output {
    tokio::process::Command::new(support::binary())
        .args(args)
        .env("RIVULET_SERVER", api)
        .env_remove("RIVULET_TOKEN")
        .env("RIVULET_DATA_DIR", data_dir)
        .env("RIVULET_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("the rivulet binary runs")
}

/// Checks the command failed; its stderr.
fn failure_text(output: &std::process::Output, what: &str) -> String {
    assert!(!output.status.success(), "{what} should fail");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_token_get_401_with_a_challenge_and_no_secret() {
    let server = InProcessServer::start().await;
    support::apply(&server.api, &secret()).await;
    let url = secret_url(&server);
    let list = format!("{}/api/v1/namespaces/default/secrets", server.api);

    for (what, request) in [
        ("no token", http().get(&url)),
        ("no token, list", http().get(&list)),
        (
            "wrong token",
            http().get(&url).bearer_auth("rvt_not_the_token"),
        ),
        (
            "not a bearer token",
            http()
                .get(&url)
                .header("authorization", "Basic YWRtaW46YWRtaW4="),
        ),
        (
            "metrics without a token",
            http().get(format!("{}/metrics", server.api)),
        ),
        ("write without a token", http().put(&url).json(&secret())),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{what}");
        let challenge = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(challenge.starts_with("Bearer"), "{what}: {challenge:?}");
        let body = response.text().await.unwrap();
        assert!(
            body.to_lowercase().contains("token"),
            "{what} says why: {body}"
        );
        assert!(!leaks(&body), "{what} leaked the secret: {body}");
    }
    // The server still has it, unchanged by the refused write.
    let stored = api_request(Method::GET, &url).send().await.unwrap();
    assert_eq!(stored.status(), 200);

    // Health stays open on both listeners, for probes.
    for base in [&server.base, &server.api] {
        let health = http().get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200);
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_never_come_back_and_a_redacted_copy_cannot_be_applied() {
    let server = InProcessServer::start().await;
    let created = support::apply(&server.api, &secret()).await;
    assert!(!leaks(&created.to_string()), "the PUT answer: {created}");
    assert_eq!(created["data"]["password"], "<redacted>");

    let got = admin_get_text(secret_url(&server)).await;
    assert!(!leaks(&got), "{got}");
    assert!(got.contains("password"), "the keys are listed: {got}");
    let list = admin_get_text(format!("{}/api/v1/namespaces/default/secrets", server.api)).await;
    assert!(!leaks(&list), "{list}");

    // `get -o yaml` shows no value either.
    let output = tokio::process::Command::new(support::binary())
        .args(["get", "secret", "creds", "-o", "yaml"])
        .env("RIVULET_SERVER", &server.api)
        .env("RIVULET_TOKEN", TEST_TOKEN)
        .env("RIVULET_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let yaml = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{yaml}");
    assert!(yaml.contains("password") && !leaks(&yaml), "{yaml}");

    // Applying what GET returned would store the placeholder: refused, saying why.
    let (status, body) = support::put(&server.api, &serde_json::from_str(&got).unwrap()).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        support::message_contains(&body, "never returns Secret values"),
        "{body}"
    );
    // Nor does the metrics text carry it.
    let metrics = admin_get_text(format!("{}/metrics", server.api)).await;
    assert!(!leaks(&metrics));
    // The file on disk is the owner's alone.
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_tokens_read_admin_tokens_write_and_revoked_tokens_stop_working() {
    let server = InProcessServer::start().await;
    let tokens = format!("{}/auth/tokens", server.api);

    let created = support::json_of(
        api_request(Method::POST, &tokens).json(&json!({"name": "dashboard", "role": "viewer"})),
    )
    .await;
    let viewer = created["token"].as_str().expect("a token").to_string();
    assert_eq!(created["role"], "viewer");

    let broker_url = format!(
        "{}{}",
        server.api,
        resource_path("Broker", "default", "default")
    );
    let read = http().get(&broker_url).bearer_auth(&viewer);
    assert_eq!(support::status_of(read).await, 200);
    let whoami = support::json_of(
        http()
            .get(format!("{}/auth/whoami", server.api))
            .bearer_auth(&viewer),
    )
    .await;
    assert_eq!(whoami, json!({"name": "dashboard", "role": "viewer"}));

    for (what, request) in [
        (
            "PUT",
            http()
                .put(&broker_url)
                .json(&support::broker("default", "default")),
        ),
        ("DELETE", http().delete(&broker_url)),
        (
            "token creation",
            http()
                .post(&tokens)
                .json(&json!({"name": "sneaky", "role": "admin"})),
        ),
        ("token list", http().get(&tokens)),
    ] {
        let response = request.bearer_auth(&viewer).send().await.unwrap();
        assert_eq!(response.status(), 403, "{what}");
        let body: Value = response.json().await.unwrap();
        assert!(
            support::message_contains(&body, "needs role admin"),
            "{what}: {body}"
        );
    }
    // The broker is still there.
    assert!(
        support::get(&server.api, "Broker", "default", "default")
            .await
            .is_some()
    );

    let listed = support::json_of(api_request(Method::GET, &tokens)).await;
    assert!(!listed.to_string().contains(&viewer), "{listed}");
    assert_eq!(listed["items"].as_array().unwrap().len(), 2, "{listed}");

    let revoked = api_request(Method::DELETE, format!("{tokens}/dashboard"));

    assert_eq!(support::status_of(revoked).await, 200);
    let after = http().get(&broker_url).bearer_auth(&viewer);
    assert_eq!(support::status_of(after).await, 401);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listener_serves_only_its_plane() {
    let server = InProcessServer::start().await;
    // Resources are not on the ingress listener, even with the token.
    let on_ingress = api_request(
        Method::GET,
        format!(
            "{}{}",
            server.base,
            resource_path("Secret", "default", "creds")
        ),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(on_ingress.status(), 404);
    assert!(
        on_ingress.text().await.unwrap().contains("--api-listen"),
        "the 404 says where the API is"
    );
    let metrics_on_ingress = http().get(format!("{}/metrics", server.base));
    assert_eq!(support::status_of(metrics_on_ingress).await, 404);
    // Events are not taken on the API listener.
    let event_on_api = support::post_binary(&server.api, "default/default", "e1", "t", "{}").await;
    assert_eq!(event_on_api, 404);
    let event_on_api = api_request(Method::POST, format!("{}/default/default", server.api))
        .header("ce-specversion", "1.0")
        .header("ce-id", "e2")
        .header("ce-source", "/t")
        .header("ce-type", "t");
    assert_eq!(support::status_of(event_on_api).await, 404);
    assert_eq!(
        support::post_binary(&server.base, "default/default", "e3", "t", "{}").await,
        202
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_writes_a_private_admin_token_that_the_cli_finds() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("state");
    let server = rivulet::server::start(support::loopback_options(&data_dir))
        .await
        .unwrap();
    let token_file = data_dir.join("admin.token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "admin.token is the owner's alone");
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert!(token.trim().starts_with("rvt_"), "{token}");

    let api = &server.api_url;
    // With the data folder, the CLI finds the token.
    let out = rivulet_cli(api, &["get", "brokers"], &data_dir).await;
    support::assert_succeeded(&out, "get brokers with the data folder");
    // Elsewhere it has none, and says how to give one.
    let out = rivulet_cli(api, &["get", "brokers"], data.path()).await;
    let stderr = failure_text(&out, "get brokers without a token");
    assert!(
        stderr.contains("401") && stderr.contains("--token"),
        "{stderr}"
    );

    // A viewer token made by the CLI reads but cannot apply.
    let create = ["token", "create", "--role", "viewer", "--name", "ro"];
    let out = rivulet_cli(api, &create, &data_dir).await;
    support::assert_succeeded(&out, "token create");
    let viewer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let manifest = support::write_file(
        data.path(),
        "broker.yaml",
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: ro-made\n",
    );
    let apply = [
        "apply",
        "--token",
        &viewer,
        "-f",
        manifest.to_str().unwrap(),
    ];
    let out = rivulet_cli(api, &apply, data.path()).await;
    let stderr = failure_text(&out, "apply with a viewer token");
    assert!(
        stderr.contains("403") && stderr.contains("viewer"),
        "{stderr}"
    );
    let out = rivulet_cli(api, &["token", "list"], &data_dir).await;
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("ro") && listed.contains("viewer"),
        "{listed}"
    );
    assert!(!listed.contains(&viewer));
    server.shutdown().await.unwrap();

    // A restart keeps the same admin token.
    let again = rivulet::server::start(support::loopback_options(&data_dir))
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), token);
    again.shutdown().await.unwrap();
}

#[tokio::test]
async fn running_without_auth_is_refused_off_loopback_unless_forced() {
    let data = tempfile::tempdir().unwrap();
    let options = ServeOptions {
        api_listen: SocketAddr::from(([0, 0, 0, 0], 0)),
        api_auth: ApiAuth::None,
        ..support::loopback_options(data.path())
    };
    let error = match rivulet::server::start(options.clone()).await {
        Ok(_) => panic!("--api-auth none on 0.0.0.0 must be refused"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("--force-insecure-api") && error.contains("0.0.0.0"),
        "{error}"
    );

    // On loopback it is allowed, and then no token is needed.
    let open = rivulet::server::start(ServeOptions {
        api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..options.clone()
    })
    .await
    .unwrap();
    let request = http().get(format!(
        "{}{}",
        open.api_url,
        resource_path("Broker", "default", "default")
    ));
    assert_eq!(support::status_of(request).await, 200);
    open.shutdown().await.unwrap();

    // Forced, it starts on every address.
    let forced = rivulet::server::start(ServeOptions {
        force_insecure_api: true,
        ..options
    })
    .await
    .unwrap();
    forced.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_data_plane_serves_no_resource_api() {
    let data = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(
        rivulet::store::FileStore::open(&data.path().join("resources")).unwrap(),
    );
    use rivulet::store::ResourceStore as _;
    let kind = rivulet::resources::find_kind_by_name(None, "Secret").unwrap();
    store.apply(kind, secret()).await.unwrap();
    let server = rivulet::server::start_with_store(
        ServeOptions {
            store: rivulet::server::StoreChoice::Kubernetes,
            role: rivulet::runtime::Role::DataPlane,
            ..support::loopback_options(data.path())
        },
        store,
    )
    .await
    .unwrap();
    for base in [&server.base_url, &server.api_url] {
        for path in [
            resource_path("Secret", "default", "creds"),
            "/api/v1/namespaces/default/secrets".to_string(),
            resource_path("Broker", "default", "default"),
        ] {
            let response = http().get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(response.status(), 404, "{base}{path}");
            assert!(!leaks(&response.text().await.unwrap()));
        }
    }
    // What it does serve there: health and metrics, for probes and scraping.
    let metrics = http().get(format!("{}/metrics", server.api_url));
    assert_eq!(support::status_of(metrics).await, 200);
    assert!(
        !data.path().join("admin.token").exists(),
        "no token is made on Kubernetes"
    );
    server.shutdown().await.unwrap();
}

/// A password in a RabbitMQ URI Secret, used by a broker whose server cannot be reached, shows
/// up in no log line (at debug level), no status and no API answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_stay_out_of_logs_and_status() {
    const PASSWORD: &str = "pw-never-in-logs-42";
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("state");
    support::give_test_token(&data_dir);
    let log_path = data.path().join("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let (port, api_port) = (support::free_port(), support::free_port());
    let mut child = std::process::Command::new(support::binary())
        .args(["serve", "--log", "debug"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--api-listen", &format!("127.0.0.1:{api_port}")])
        .arg("--data-dir")
        .arg(&data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let api = format!("http://127.0.0.1:{api_port}");
    support::wait_until_ready(&api).await;

    // Port 1 on loopback: nothing listens, so connecting fails and is logged and reported.
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "rabbit", "namespace": "default"},
        "stringData": {"uri": format!("amqp://rivulet:{PASSWORD}@127.0.0.1:1/%2f")}
    });
    support::apply(&api, &secret).await;
    support::apply(
        &api,
        &json!({
            "apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
            "metadata": {"name": "leaky", "namespace": "default",
                "annotations": {"eventing.knative.dev/broker.class": "RabbitMQBroker"}},
            "spec": {"config": {"apiVersion": "v1", "kind": "Secret", "name": "rabbit"}}
        }),
    )
    .await;
    let broker = support::wait_status(&api, "Broker", "default", "leaky", "False").await;
    // Give the connection attempts time to be logged, retries included.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let answers = [
        broker.to_string(),
        admin_get_text(format!("{api}/api/v1/namespaces/default/secrets/rabbit")).await,
        admin_get_text(format!("{api}/metrics")).await,
    ];
    let _ = child.kill();
    let _ = child.wait();
    let logged = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logged.contains("RabbitMQ") || logged.contains("amqp"),
        "the failed connection is logged at all: {logged}"
    );
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(PASSWORD);
    for (what, text) in [("log", &logged)]
        .into_iter()
        .chain(answers.iter().map(|a| ("answer", a)))
    {
        assert!(
            !text.contains(PASSWORD) && !text.contains(&encoded),
            "the password leaked into a {what}: {text}"
        );
    }
}
