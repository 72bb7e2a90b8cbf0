//! TLS end to end: https ingress with certificates made here (a CA and a leaf for
//! localhost/127.0.0.1), `transport-encryption` permissive and strict on one port, https
//! addresses with `CACerts`, the certificate reloaded from its files, and delivery to https
//! subscribers trusted through the destination's `CACerts` or a trust-bundle ConfigMap.

use rivulet_testkit as support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rivulet::server::{RunningServer, ServeOptions};
use rivulet::tls::TlsFiles;
use serde_json::{Value, json};
use support::*;

/// A certificate authority made for one test.
struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        Ca {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A serving certificate for localhost and 127.0.0.1: (cert PEM, key PEM).
    fn leaf(&self) -> (String, String) {
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a fresh leaf and this CA into `dir` (tls.crt, tls.key, ca.crt).
    fn write_into(&self, dir: &Path) -> TlsFiles {
        let (cert, key) = self.leaf();
        let files = tls_files(dir);
        // The key first: a poll between the two writes sees a mismatch and keeps the old pair.
        std::fs::write(&files.key, key).unwrap();
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(files.ca.as_ref().unwrap(), self.pem()).unwrap();
        files
    }
}

fn tls_files(dir: &Path) -> TlsFiles {
    TlsFiles {
        ca: Some(dir.join("ca.crt")),
        reload_interval: Duration::from_millis(100),
        ..TlsFiles::new(dir.join("tls.crt"), dir.join("tls.key"))
    }
}

/// A client that trusts only `ca` (PEM) and opens a new connection per client.
fn trusting(ca: &str) -> reqwest::Client {
    rivulet::install_crypto_provider();
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).unwrap()])
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

struct TlsServer {
    server: Option<RunningServer>,
    /// `http://127.0.0.1:PORT`.
    http: String,
    /// `https://localhost:PORT`.
    https: String,
    /// The resource API's listener, over http and https.
    api_http: String,
    api_https: String,
    _data_dir: tempfile::TempDir,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.shutdown_token().cancel();
        }
    }
}

impl TlsServer {
    async fn start(mode: &str, files: Option<TlsFiles>, ca: &str) -> TlsServer {
        Self::start_with(mode, |options| options.tls = files, ca).await
    }

    async fn start_with(
        mode: &str,
        configure: impl FnOnce(&mut ServeOptions),
        ca: &str,
    ) -> TlsServer {
        init_tracing();
        let data_dir = tempfile::tempdir().unwrap();
        let mut options = loopback_options(data_dir.path());
        configure(&mut options);
        tune_for_tests(&mut options);
        give_test_token(data_dir.path());
        // Disabled is the default; left unset, the config-features ConfigMap can change it.
        if mode != "disabled" {
            options.features.set("transport-encryption", mode).unwrap();
        }
        let server = rivulet::server::start(options)
            .await
            .expect("the server starts");
        let port = server.local_addr.port();
        let api_port = server.api_addr.port();
        let this = TlsServer {
            server: Some(server),
            http: format!("http://127.0.0.1:{port}"),
            https: format!("https://localhost:{port}"),
            api_http: format!("http://127.0.0.1:{api_port}"),
            api_https: format!("https://localhost:{api_port}"),
            _data_dir: data_dir,
        };
        let (client, url) = if mode == "disabled" {
            (http(), format!("{}/readyz", this.http))
        } else {
            (trusting(ca), format!("{}/readyz", this.https))
        };
        wait_answers(&client, &url, "the server to answer").await;
        this
    }

    /// A server in `mode` serving a leaf of a new CA named `ca_name` from files in `dir`:
    /// the CA, the files and the server.
    async fn with_new_ca(mode: &str, ca_name: &str, dir: &Path) -> (Ca, TlsFiles, TlsServer) {
        let ca = Ca::new(ca_name);
        let files = ca.write_into(dir);
        let server = TlsServer::start(mode, Some(files.clone()), &ca.pem()).await;
        (ca, files, server)
    }
}

/// Waits until a GET of `url` with `client` succeeds.
async fn wait_answers(client: &reqwest::Client, url: &str, what: &str) {
    wait_for(what, WAIT, || {
        let request = client.get(url).send();
        async move { request.await.ok().filter(|r| r.status().is_success()) }
    })
    .await;
}

/// Waits until `readyz` is served with a certificate of `new` (on new connections), checks
/// that one of `old` no longer is, waits until https addresses publish `new` and checks the
/// reload was counted.
async fn wait_certificate_replaced(api: &Api, old: &Ca, new: &Ca, readyz: &str, what: &str) {
    wait_answers(&trusting(&new.pem()), readyz, what).await;
    assert!(
        trusting(&old.pem()).get(readyz).send().await.is_err(),
        "the first certificate is no longer served"
    );
    wait_published_ca(api, &new.pem()).await;
    assert!(
        api.metric("rivulet_tls_certificate_reloads_total", &[])
            .await
            >= 1.0
    );
}

/// After a bad certificate was given: waits until its refusal is counted and checks a
/// certificate of `kept` is still served at `readyz`.
async fn assert_bad_certificate_refused(api: &Api, kept: &Ca, readyz: &str) {
    api.wait_metric("rivulet_tls_certificate_reload_failures_total", &[], 1.0)
        .await;
    let still = trusting(&kept.pem()).get(readyz).send().await.unwrap();
    assert!(still.status().is_success(), "{}", still.status());
}

/// Waits until the default broker's https address carries `ca` (PEM).
async fn wait_published_ca(api: &Api, ca: &str) {
    wait_for(
        "the broker's https address to carry the new CA",
        WAIT,
        || {
            let broker = api.get("Broker", "default", "default");
            async move {
                let broker = broker.await?;
                (broker.pointer("/status/addresses/0/CACerts")? == &json!(ca)).then_some(())
            }
        },
    )
    .await;
}

/// Starts a server with `options`, which must fail; the error, with its causes.
async fn start_error(options: ServeOptions, what: &str) -> String {
    match rivulet::server::start(options).await {
        Ok(_) => panic!("{what} started"),
        Err(error) => format!("{error:#}"),
    }
}

/// Waits until the object at `url` (read with `client` and the test token) gives something
/// for `check`; returns it.
async fn wait_object<T>(
    client: &reqwest::Client,
    url: &str,
    what: &str,
    check: impl Fn(Value) -> Option<T>,
) -> T {
    wait_for(what, WAIT, || {
        let request = client.get(url).bearer_auth(TEST_TOKEN).send();
        let check = &check;
        async move { check(request.await.ok()?.json().await.ok()?) }
    })
    .await
}

/// Whether `object` is Ready; the object when it is.
fn when_ready(object: Value) -> Option<Value> {
    (condition(&object, "Ready")?["status"] == "True").then_some(object)
}

async fn post_event(client: &reqwest::Client, url: &str, id: &str) -> reqwest::Result<u16> {
    let event = TestEvent::new(id, "dev.rivulet.tls");
    let response = client
        .post(url)
        .headers(event.headers())
        .body(event.body.clone())
        .send()
        .await?;
    Ok(response.status().as_u16())
}

/// Posts event `id` to the default broker over https, trusting `ca`; checks it is accepted.
async fn assert_https_accepted(server: &TlsServer, ca: &Ca, id: &str, what: &str) {
    let url = format!("{}/default/default", server.https);
    let status = post_event(&trusting(&ca.pem()), &url, id)
        .await
        .unwrap_or_else(|e| panic!("{what}: {}", chain(&e)));
    assert_eq!(status, 202, "{what}");
}

fn broker_path() -> &'static str {
    "/apis/eventing.knative.dev/v1/namespaces/default/brokers/default"
}

/// Waits until the default broker is ready and returns it.
async fn ready_broker(client: &reqwest::Client, base: &str) -> Value {
    let url = format!("{base}{}", broker_path());
    wait_object(
        client,
        &url,
        "broker default/default to be ready",
        when_ready,
    )
    .await
}

/// An event to hand to a sender directly.
fn event(id: &str) -> rivulet::event::Event {
    let (_, mut events) = rivulet::event::from_http(
        &TestEvent::new(id, "dev.rivulet.tls").headers(),
        bytes::Bytes::new(),
    )
    .unwrap();
    events.remove(0)
}

/// The error chain of a failed request, to see why it failed.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text = format!("{text}: {inner}");
        source = inner.source();
    }
    text
}

#[tokio::test]
async fn permissive_serves_http_and_https_on_one_port_and_publishes_both_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _, server) = TlsServer::with_new_ca("permissive", "permissive CA", dir.path()).await;
    let ingress = "/default/default";

    assert_https_accepted(&server, &ca, "s-1", "https with the CA trusted works").await;
    let plain = post_event(&http(), &format!("{}{ingress}", server.http), "p-1")
        .await
        .expect("plain http works on the same port");
    assert_eq!(plain, 202);
    // A client that trusts only the system roots refuses the certificate.
    let untrusted = post_event(&http(), &format!("{}{ingress}", server.https), "u-1")
        .await
        .expect_err("an unknown CA is refused");
    assert!(
        chain(&untrusted).to_lowercase().contains("certificate"),
        "{}",
        chain(&untrusted)
    );

    let broker = ready_broker(&http(), &server.api_http).await;
    let status = &broker["status"];
    assert_eq!(status["address"]["name"], "http");
    assert_eq!(
        status["address"]["url"],
        format!("{}{ingress}", server.http)
    );
    assert!(status["address"].get("CACerts").is_none(), "{status}");
    let addresses = status["addresses"].as_array().expect("addresses listed");
    assert_eq!(addresses.len(), 2, "{status}");
    assert_eq!(addresses[0]["name"], "https");
    assert_eq!(
        addresses[0]["url"],
        format!(
            "https://127.0.0.1:{}{ingress}",
            server.https.rsplit(':').next().unwrap()
        )
    );
    assert_eq!(addresses[0]["CACerts"], ca.pem());
    assert_eq!(addresses[1]["name"], "http");
}

#[tokio::test]
async fn strict_refuses_plain_http_and_publishes_only_the_https_address() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _, server) = TlsServer::with_new_ca("strict", "strict CA", dir.path()).await;
    assert!(
        server
            .server
            .as_ref()
            .unwrap()
            .base_url
            .starts_with("https://"),
        "a strict server is reached over https"
    );

    let response = http()
        .post(format!("{}/default/default", server.http))
        .headers(TestEvent::new("p-1", "dev.rivulet.tls").headers())
        .send()
        .await
        .expect("plain http gets an answer");
    assert_eq!(response.status(), 426);
    assert!(response.text().await.unwrap().contains("HTTPS is required"),);
    assert_https_accepted(&server, &ca, "s-1", "https with the CA trusted").await;
    let client = trusting(&ca.pem());

    // The resource API's listener follows the same mode.
    let api_plain = http().get(format!("{}/readyz", server.api_http));
    assert_eq!(support::status_of(api_plain).await, 426);

    let broker = ready_broker(&client, &server.api_https).await;
    let status = &broker["status"];
    let url = status["address"]["url"].as_str().unwrap();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    assert_eq!(status["address"]["name"], "https");
    assert_eq!(status["address"]["CACerts"], ca.pem());
    assert_eq!(status["addresses"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn permissive_or_strict_without_a_certificate_is_refused_at_start() {
    for mode in ["permissive", "strict"] {
        let data_dir = tempfile::tempdir().unwrap();
        let mut options = loopback_options(data_dir.path());
        options.features.set("transport-encryption", mode).unwrap();
        let error = start_error(options, &format!("{mode} without a certificate")).await;
        assert!(
            error.contains(mode) && error.contains("--tls-cert"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn a_replaced_certificate_is_served_without_restart_and_a_bad_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (first, files, server) = TlsServer::with_new_ca("permissive", "first CA", dir.path()).await;
    let api = Api::new(&server.http, &server.api_http);
    let readyz = format!("{}/readyz", server.https);

    let second = Ca::new("second CA");
    second.write_into(dir.path());
    // New connections get the new certificate: only the second CA's clients get through.
    let what = "the second certificate to be served";
    // And https addresses publish the new CA.
    wait_certificate_replaced(&api, &first, &second, &readyz, what).await;

    // A certificate file that is not PEM: refused, counted, the second one stays.
    std::fs::write(&files.cert, "not a certificate").unwrap();
    assert_bad_certificate_refused(&api, &second, &readyz).await;
}

/// A Kubernetes TLS Secret `default/{name}` with `data` in base64: `tls.crt` and `tls.key`
/// as given, `ca.crt` when `ca` is.
fn tls_secret(name: &str, cert: &str, key: &str, ca: Option<&str>) -> Value {
    use base64::Engine as _;
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let mut data = json!({"tls.crt": b64(cert), "tls.key": b64(key)});
    if let Some(ca) = ca {
        data["ca.crt"] = json!(b64(ca));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "type": "kubernetes.io/tls",
        "data": data
    })
}

/// Writes `manifests` as a JSON list file for `--config` and returns its path.
fn config_file(dir: &Path, manifests: &[Value]) -> PathBuf {
    let path = dir.join("config.json");
    let list = json!({"apiVersion": "v1", "kind": "List", "items": manifests});
    std::fs::write(&path, serde_json::to_vec(&list).unwrap()).unwrap();
    path
}

#[tokio::test]
async fn the_certificate_comes_from_a_secret_and_follows_it_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = Ca::new("first secret CA");
    let (cert, key) = first.leaf();
    let config = config_file(
        dir.path(),
        &[
            tls_secret("serving-cert", &cert, &key, Some(&first.pem())),
            json!({
                "apiVersion": "eventing.knative.dev/v1",
                "kind": "Broker",
                "metadata": {"name": "default", "namespace": "default"},
                "spec": {}
            }),
        ],
    );
    // start_with waits for /readyz over https trusting the first CA only: the Secret's
    // certificate is the one served.
    let server = TlsServer::start_with(
        "permissive",
        |options| {
            options.config = vec![config];
            options.tls_secret = Some("default/serving-cert".parse().unwrap());
        },
        &first.pem(),
    )
    .await;
    let api = Api::new(&server.http, &server.api_http);
    let readyz = format!("{}/readyz", server.https);
    let broker = ready_broker(&http(), &server.api_http).await;
    assert_eq!(
        broker.pointer("/status/addresses/0/CACerts"),
        Some(&json!(first.pem())),
        "the Secret's ca.crt is published"
    );

    // A new Secret through the resource API: served to new connections, no restart.
    let second = Ca::new("second secret CA");
    let (cert, key) = second.leaf();
    apply_with(
        &http(),
        &server.api_http,
        &tls_secret("serving-cert", &cert, &key, Some(&second.pem())),
    )
    .await;
    let what = "the Secret's new certificate to be served";
    wait_certificate_replaced(&api, &first, &second, &readyz, what).await;

    // A Secret whose tls.crt is not a certificate: refused, counted, the second one stays.
    apply_with(
        &http(),
        &server.api_http,
        &tls_secret("serving-cert", "not a certificate", &key, None),
    )
    .await;
    assert_bad_certificate_refused(&api, &second, &readyz).await;
}

#[tokio::test]
async fn a_missing_or_incomplete_tls_secret_is_a_start_error_naming_it() {
    let ca = Ca::new("start CA");
    let (cert, _) = ca.leaf();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (None, "Secret default/serving-cert does not exist"),
        (
            Some(tls_secret("serving-cert", &cert, "", None)),
            r#"data["tls.key"]"#,
        ),
    ];
    for (secret, expected) in cases {
        let data_dir = tempfile::tempdir().unwrap();
        let mut options = ServeOptions {
            tls_secret: Some("default/serving-cert".parse().unwrap()),
            ..loopback_options(data_dir.path())
        };
        if let Some(mut secret) = secret {
            // No tls.key at all.
            secret["data"].as_object_mut().unwrap().remove("tls.key");
            options.config = vec![config_file(dir.path(), &[secret])];
        }
        options
            .features
            .set("transport-encryption", "strict")
            .unwrap();
        let what = format!("a server without a usable Secret ({expected})");
        let error = start_error(options, &what).await;
        assert!(
            error.contains("--tls-secret") && error.contains(expected),
            "{error}"
        );
    }
}

/// Writes a leaf of `ca` for a subscriber and returns (cert path, key path).
fn subscriber_files(ca: &Ca, dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = ca.leaf();
    let (cert_path, key_path) = (dir.join("sub.crt"), dir.join("sub.key"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    (cert_path, key_path)
}

#[tokio::test]
async fn delivery_to_https_trusts_the_destination_cacerts_then_a_trust_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("subscriber CA");
    let (cert, key) = subscriber_files(&ca, dir.path());
    let subscriber = Subscriber::with_tls(always(Reply::status(202)), &cert, &key).await;
    let dead_letters = Subscriber::start().await;
    let server = TestServer::start().await;

    // The CA given with the subscriber: delivered, and the trigger's status carries it.
    let trusted = server
        .create_trigger(&json!({
            "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
            "metadata": {"name": "with-ca", "namespace": "default"},
            "spec": {"broker": "default",
                     "filter": {"attributes": {"type": "with-ca"}},
                     "subscriber": {"uri": subscriber.https_url(), "CACerts": ca.pem()}}
        }))
        .await;
    assert_eq!(trusted["status"]["subscriberCACerts"], ca.pem());
    server
        .send("default", "default", &TestEvent::new("ca-1", "with-ca"))
        .await;
    subscriber.wait_for_matching(1, |r| r.id() == "ca-1").await;

    // Without it: the certificate is refused and the event is dead-lettered, with no
    // status code (there was no response).
    server
        .create_trigger(&json!({
            "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
            "metadata": {"name": "without-ca", "namespace": "default"},
            "spec": {"broker": "default",
                     "filter": {"attributes": {"type": "without-ca"}},
                     "subscriber": {"uri": subscriber.https_url()},
                     "delivery": {"retry": 0, "deadLetterSink": {"uri": dead_letters.url()}}}
        }))
        .await;
    server
        .send(
            "default",
            "default",
            &TestEvent::new("no-ca-1", "without-ca"),
        )
        .await;
    let dead = dead_letters
        .wait_for_matching(1, |r| r.id() == "no-ca-1")
        .await;
    assert_eq!(
        dead[0].attr("knativeerrordest").as_deref(),
        Some(subscriber.https_url().as_str())
    );
    assert_eq!(dead[0].attr("knativeerrorcode"), None);
    assert!(
        !subscriber.requests().iter().any(|r| r.id() == "no-ca-1"),
        "no request got through"
    );

    // Why, as the sender reports it: the certificate.
    let outcome = rivulet::delivery::Sender::new()
        .deliver(
            &subscriber.https_url(),
            &event("why-1"),
            &rivulet::delivery::DeliveryPolicy::from_spec(None, None, &Default::default()),
        )
        .await;
    match outcome {
        rivulet::delivery::Outcome::Failed { failure, .. } => {
            assert!(failure.status.is_none());
            assert!(
                failure.message.to_lowercase().contains("certificate"),
                "{}",
                failure.message
            );
        }
        other => panic!("delivery without the CA: {other:?}"),
    }

    // A trust-bundle ConfigMap with the CA: the same trigger now delivers.
    server
        .apply(&json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "subscriber-ca", "namespace": "default",
                         "labels": {"networking.knative.dev/trust-bundle": "true"}},
            "data": {"ca.pem": ca.pem()}
        }))
        .await;
    let mut n = 0;
    wait_for("delivery trusting the bundle", WAIT, || {
        n += 1;
        let id = format!("bundle-{n}");
        let api: Api = (*server).clone();
        let subscriber = &subscriber;
        async move {
            api.send("default", "default", &TestEvent::new(&id, "without-ca"))
                .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            subscriber
                .requests()
                .iter()
                .any(|r| r.id().starts_with("bundle-"))
                .then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn strict_mode_refuses_delivery_over_plain_http() {
    let subscriber = Subscriber::start().await;
    let mut strict = rivulet::features::Features::default();
    strict.set("transport-encryption", "strict").unwrap();
    let sender = rivulet::delivery::Sender::new().with_transport(
        rivulet::tls::TrustBundles::default(),
        rivulet::features::FeatureFlags::new(strict),
    );
    let policy = rivulet::delivery::DeliveryPolicy {
        retry: 3,
        ..rivulet::delivery::DeliveryPolicy::from_spec(None, None, &Default::default())
    };
    let outcome = sender
        .deliver(&subscriber.url(), &event("plain-1"), &policy)
        .await;
    match outcome {
        rivulet::delivery::Outcome::Failed {
            failure, attempts, ..
        } => {
            assert_eq!(attempts, 1, "a refusal is not retried");
            assert!(failure.message.contains("strict"), "{}", failure.message);
        }
        other => panic!("plain http under strict: {other:?}"),
    }
    assert_eq!(subscriber.count(), 0, "nothing was sent");
}

/// PUTs a manifest to the resource API with `client`; fails the test unless accepted.
async fn apply_with(client: &reqwest::Client, api: &str, manifest: &Value) {
    let kind = manifest["kind"].as_str().unwrap();
    let name = manifest["metadata"]["name"].as_str().unwrap();
    let namespace = manifest["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let request = client
        .put(format!("{api}{}", resource_path(kind, namespace, name)))
        .bearer_auth(TEST_TOKEN)
        .json(manifest);
    let status = support::status_of(request).await;
    assert!(
        (200..300).contains(&status),
        "apply {kind} {name}: {status}"
    );
}

#[tokio::test]
async fn strict_delivery_goes_over_https_between_brokers_and_to_the_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _, server) = TlsServer::with_new_ca("strict", "server CA", dir.path()).await;
    let client = trusting(&ca.pem());
    let subscriber_ca = Ca::new("subscriber CA");
    let (cert, key) = subscriber_files(&subscriber_ca, dir.path());
    let subscriber = Subscriber::with_tls(always(Reply::status(202)), &cert, &key).await;

    let second = json!({
        "apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
        "metadata": {"name": "second", "namespace": "default"}, "spec": {}
    });
    // default -> second: a ref to a broker resolves to its https address and Rivulet's own CA.
    let hop = json!({
        "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
        "metadata": {"name": "hop", "namespace": "default"},
        "spec": {"broker": "default",
                 "subscriber": {"ref": {"apiVersion": "eventing.knative.dev/v1",
                                        "kind": "Broker", "name": "second"}}}
    });
    let last = json!({
        "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
        "metadata": {"name": "last", "namespace": "default"},
        "spec": {"broker": "second",
                 "subscriber": {"uri": subscriber.https_url(), "CACerts": subscriber_ca.pem()}}
    });
    for manifest in [second, hop, last] {
        apply_with(&client, &server.api_https, &manifest).await;
    }
    let hop_url = format!(
        "{}{}",
        server.api_https,
        resource_path("Trigger", "default", "hop")
    );
    let hop = wait_object(&client, &hop_url, "trigger hop to be ready", when_ready).await;
    let hop_uri = hop["status"]["subscriberUri"].as_str().unwrap();
    assert!(hop_uri.starts_with("https://"), "{hop_uri}");
    assert_eq!(hop["status"]["subscriberCACerts"], ca.pem());

    let mut n = 0;
    wait_for("the event to pass both brokers", WAIT, || {
        n += 1;
        let id = format!("chain-{n}");
        let (client, url) = (client.clone(), format!("{}/default/default", server.https));
        let subscriber = &subscriber;
        async move {
            assert_eq!(post_event(&client, &url, &id).await.unwrap(), 202);
            tokio::time::sleep(Duration::from_millis(200)).await;
            (subscriber.count() > 0).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn the_config_features_config_map_switches_a_running_server_to_strict() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _, server) = TlsServer::with_new_ca("disabled", "switch CA", dir.path()).await;
    // Disabled: plain HTTP, even with a certificate.
    let plain = post_event(&http(), &format!("{}/default/default", server.http), "d-1")
        .await
        .unwrap();
    assert_eq!(plain, 202);
    let broker = ready_broker(&http(), &server.api_http).await;
    assert!(broker["status"].get("addresses").is_none());

    apply_with(
        &http(),
        &server.api_http,
        &json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "config-features", "namespace": "knative-eventing"},
            "data": {"transport-encryption": "strict"}
        }),
    )
    .await;
    let ingress = format!("{}/default/default", server.http);
    wait_for("plain http to be refused", WAIT, || {
        let ingress = ingress.clone();
        async move { (post_event(&http(), &ingress, "d-2").await.ok()? == 426).then_some(()) }
    })
    .await;
    let client = trusting(&ca.pem());
    let url = format!("{}{}", server.api_https, broker_path());
    let what = "the broker's address to become https";
    let address = wait_object(&client, &url, what, |broker| {
        let address = broker.pointer("/status/address")?.clone();
        address["url"]
            .as_str()?
            .starts_with("https://")
            .then_some(address)
    })
    .await;
    assert_eq!(address["CACerts"], ca.pem());
}

/// On a cluster no Secret is watched: the certificate's Secret is read again by name (a
/// `get`, never a list or watch) and a change is put in service.
#[tokio::test]
async fn on_kubernetes_the_secret_is_read_by_name_and_a_change_is_served() {
    use std::sync::{Arc, Mutex};
    use support::kube_api::{Reply, answer, serve};

    rivulet::install_crypto_provider();
    let first = Ca::new("first cluster CA");
    let (cert, key) = first.leaf();
    let secret = tls_secret("serving-cert", &cert, &key, Some(&first.pem()));
    let reloader = rivulet::tls::CertReloader::from_secret(
        "default/serving-cert".parse().unwrap(),
        Some(&secret),
    )
    .unwrap();
    let current = Arc::new(Mutex::new(secret));

    let (service, handle) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    let store = rivulet::store::KubernetesStore::new(kube::Client::new(service, "default"));
    let served = current.clone();
    let requests = serve(handle, move |_| {
        Reply::Now(answer(200, &served.lock().unwrap().clone()))
    });
    let metrics = Arc::new(rivulet::metrics::Metrics::new());
    let ingress = Arc::new(rivulet::ingress::Ingress::new(
        Arc::new(rivulet::ingress::BrokerTable::new(metrics.clone())),
        1 << 20,
    ));
    let data_dir = tempfile::tempdir().unwrap();
    let ctx = rivulet::runtime::Context::new(
        Arc::new(store),
        ingress.clone(),
        rivulet::dispatcher::Shared {
            sender: rivulet::delivery::Sender::new(),
            ingress,
            metrics: metrics.clone(),
            journal: rivulet::journal::Journal::off(),
        },
        rivulet::runtime::Settings {
            data_dir: data_dir.path().to_path_buf(),
            base_url: "http://rivulet.test".into(),
            api_url: "http://rivulet-api.test".into(),
            delivery: rivulet::delivery::DeliveryDefaults::default(),
            default_parallelism: 1,
            stop_grace: Duration::from_secs(1),
            delete_grace: Duration::from_secs(1),
            role: rivulet::runtime::Role::DataPlane,
            features: Default::default(),
            tls: Some(reloader.clone()),
            https_base_url: Some("https://rivulet.test".into()),
        },
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let follower = tokio::spawn(rivulet::runtime::follow_tls_secret(ctx, stop.clone()));

    // The Secret changes after the first read; a later read finds the change.
    wait_for("the first read of the Secret", WAIT, || {
        let read = !requests.all().is_empty();
        async move { read.then_some(()) }
    })
    .await;
    assert_eq!(
        reloader.ca_pem(),
        first.pem(),
        "an unchanged Secret is kept"
    );
    let second = Ca::new("second cluster CA");
    let (cert, key) = second.leaf();
    *current.lock().unwrap() = tls_secret("serving-cert", &cert, &key, Some(&second.pem()));
    wait_for("the changed Secret to be served", WAIT, || {
        let done = reloader.ca_pem() == second.pem();
        async move { done.then_some(()) }
    })
    .await;
    assert_eq!(metrics.tls_certificate_reloads.get(), 1);
    stop.cancel();
    follower.await.unwrap();
    let seen = requests.all();
    assert!(!seen.is_empty());
    for request in seen {
        assert_eq!(request.method, "GET");
        assert_eq!(
            request.path,
            "/api/v1/namespaces/default/secrets/serving-cert"
        );
        assert!(!request.is_watch(), "Secrets are not watched");
    }
}

/// The listener limits hold on TLS connections too: a socket that never starts its
/// handshake, one that stops halfway through a request's headers after the handshake, and
/// one that never sends a request are all closed after the header read timeout, while an
/// https sender is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_tls_connections_are_closed_after_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("limits CA");
    let files = ca.write_into(dir.path());
    let server = TlsServer::start_with(
        "permissive",
        |options| {
            options.tls = Some(files);
            options.listeners.header_read_timeout = Duration::from_secs(2);
        },
        &ca.pem(),
    )
    .await;
    let addr = server.http.trim_start_matches("http://").to_string();

    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();

    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut no_request = connector.connect(name.clone(), tcp).await.unwrap();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut half_headers = connector.connect(name, tcp).await.unwrap();
    half_headers
        .write_all(b"POST /default/default HTTP/1.1\r\nhost: localhost\r\n")
        .await
        .unwrap();
    half_headers.flush().await.unwrap();

    let what = "https works beside the slow connections";
    assert_https_accepted(&server, &ca, "tls-limits-1", what).await;

    let mut buffer = [0u8; 1024];
    let closed = tokio::time::timeout(WAIT, async {
        // Plain reads: 0 bytes (or an error) is the server closing.
        while matches!(silent.read(&mut buffer).await, Ok(n) if n > 0) {}
        while matches!(no_request.read(&mut buffer).await, Ok(n) if n > 0) {}
        let mut answer = Vec::new();
        let _ = half_headers.read_to_end(&mut answer).await;
        answer
    })
    .await
    .expect("all three connections are closed by the server");
    assert!(
        !String::from_utf8_lossy(&closed).starts_with("HTTP/1.1 2"),
        "the incomplete request was not served"
    );
}
