//! Outbound safety: no redirects followed, the egress policy applied to the address actually
//! connected to (IP literals before sending, names after DNS), and what a target answers
//! bounded before it reaches `knativeerrordata`.

use rivulet_testkit as support;
use rivulet_testkit::adapters as adapters_support;

use std::str::FromStr;

use base64::Engine as _;
use rivulet::egress::{EgressPolicy, EgressRule};
use serde_json::{Value, json};
use support::*;

const NS: &str = "default";
const BROKER: &str = "default";
const REFUSED: &str = "rivulet_egress_refused_total";
const RETRIES: &str = "rivulet_trigger_delivery_retries_total";

fn deny(entries: &[&str]) -> EgressPolicy {
    EgressPolicy::new(
        Vec::new(),
        entries
            .iter()
            .map(|e| EgressRule::from_str(e).expect("a valid rule"))
            .collect(),
    )
}

async fn server_with(policy: EgressPolicy) -> TestServer {
    TestServer::start_ready_with(|options| options.egress = policy).await
}

/// A trigger with retries (so a retried refusal would show) and, when given, a dead-letter
/// sink.
fn trigger_to(name: &str, uri: &str, dead_letter: Option<String>) -> Value {
    let mut manifest = trigger(NS, name, BROKER, uri);
    let mut delivery = json!({"retry": 2, "backoffDelay": "PT0.05S", "timeout": "PT5S"});
    if let Some(dls) = dead_letter {
        delivery["deadLetterSink"] = json!({"uri": dls});
    }
    manifest["spec"]["delivery"] = delivery;
    manifest
}

/// Creates trigger `name` delivering to `path` of `sub`, with `sub`'s `/dls` as its
/// dead-letter sink.
async fn trigger_with_dls(server: &TestServer, name: &str, sub: &Subscriber, path: &str) {
    let manifest = trigger_to(name, &sub.url_at(path), Some(sub.url_at("dls")));
    server.create_trigger(&manifest).await;
}

/// The event that reached `sub`'s dead-letter path.
async fn dead_letter(sub: &Subscriber) -> Recorded {
    sub.wait_for_matching(1, |r| r.path == "/dls")
        .await
        .remove(0)
}

fn decoded(data: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(data)
        .expect("knativeerrordata is base64")
}

/// A 302 towards another receiver is a failed, final attempt: the other receiver gets
/// nothing and the dead-letter event carries the 302.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    let server = server_with(EgressPolicy::default()).await;
    let elsewhere = Subscriber::start().await;
    let location = elsewhere.url_at("stolen");
    let sub = Subscriber::with_script(script(move |r: &Recorded| match r.path.as_str() {
        "/dls" => Reply::ok(),
        _ => Reply::status(302).header("location", &location),
    }))
    .await;
    trigger_with_dls(&server, "redirected", &sub, "moved").await;
    server
        .send(NS, BROKER, &TestEvent::new("r-1", "com.example"))
        .await;
    let dead = dead_letter(&sub).await;
    server.wait_deliveries_final(NS, "redirected", 1).await;

    assert_eq!(dead.attr("knativeerrorcode").as_deref(), Some("302"));
    assert_eq!(dead.attr("knativeerrordest"), Some(sub.url_at("moved")));
    assert_eq!(
        sub.requests_at("/moved").len(),
        1,
        "a redirect is final, not retried"
    );
    assert_eq!(
        server
            .delivery_outcomes(NS, "redirected", "dead_lettered")
            .await,
        1.0
    );
    assert_eq!(elsewhere.count(), 0, "the redirect target was never called");
}

/// The cloud metadata address is refused before any connection: one attempt whatever the
/// retries, counted by reason, and the dead-letter event says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_address_is_refused() {
    let server = server_with(EgressPolicy::default()).await;
    let dls = Subscriber::start().await;
    server
        .create_trigger(&trigger_to(
            "metadata",
            "http://169.254.169.254/latest/meta-data/",
            Some(dls.url()),
        ))
        .await;
    server
        .send(NS, BROKER, &TestEvent::new("m-1", "com.example"))
        .await;
    let dead = dls.wait_for(1).await.remove(0);
    server.wait_deliveries_final(NS, "metadata", 1).await;

    assert_eq!(
        dead.attr("knativeerrorcode"),
        None,
        "nothing answered, no status code"
    );
    let why = String::from_utf8(decoded(
        &dead
            .attr("knativeerrordata")
            .expect("the refusal is explained"),
    ))
    .unwrap();
    assert!(
        why.contains("egress to 169.254.169.254 refused") && why.contains("cloud metadata service"),
        "{why}"
    );
    assert_eq!(server.metric(REFUSED, &[("reason", "metadata")]).await, 1.0);
    assert_eq!(
        server
            .metric(RETRIES, &[("namespace", NS), ("trigger", "metadata")])
            .await,
        0.0,
        "a refusal is not retried"
    );
    assert_eq!(
        server
            .delivery_outcomes(NS, "metadata", "dead_lettered")
            .await,
        1.0
    );
}

/// `--egress-deny 127.0.0.0/8` refuses a subscriber on loopback (its dead-letter sink too:
/// the same policy applies to every destination).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_range_is_refused() {
    let server = server_with(deny(&["127.0.0.0/8"])).await;
    let sub = Subscriber::start().await;
    server
        .create_trigger(&trigger_to("denied", &sub.url(), Some(sub.url_at("dls"))))
        .await;
    server
        .send(NS, BROKER, &TestEvent::new("d-1", "com.example"))
        .await;
    server.wait_deliveries_final(NS, "denied", 1).await;

    assert_eq!(server.delivery_outcomes(NS, "denied", "failed").await, 1.0);
    assert_eq!(
        server.metric(REFUSED, &[("reason", "denied")]).await,
        2.0,
        "one refusal for the subscriber, one for the dead-letter sink"
    );
    assert_eq!(
        server
            .metric(RETRIES, &[("namespace", NS), ("trigger", "denied")])
            .await,
        0.0
    );
    assert_eq!(sub.count(), 0, "no request reached the subscriber");
}

/// A host name is judged by the addresses it resolves to: `localhost` with loopback denied is
/// refused after DNS. Seen through an HttpForwardSink, which answers its sender with why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_resolving_to_a_denied_address_is_refused_after_dns() {
    let server = server_with(deny(&["127.0.0.0/8", "::1/128"])).await;
    let target = Subscriber::start().await;
    let sinks = "sinks.rivulet.dev/v1alpha1";
    adapters_support::apply(
        &server.api,
        &json!({
            "apiVersion": sinks,
            "kind": "HttpForwardSink",
            "metadata": {"name": "to-localhost", "namespace": NS},
            "spec": {
                "uri": format!("http://localhost:{}/", target.addr.port()),
                "delivery": {"retry": 2, "backoffDelay": "PT0.05S"}
            }
        }),
    )
    .await;
    let sink =
        adapters_support::wait_ready(&server.api, sinks, "HttpForwardSink", "to-localhost").await;
    let sink_url = sink["status"]["address"]["url"].as_str().unwrap();

    let event = TestEvent::new("l-1", "com.example");
    let response = server
        .client
        .post(sink_url)
        .headers(event.headers())
        .send()
        .await
        .expect("the sink answers");
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();

    assert_eq!(status, 502, "a refusal is final: {body}");
    assert!(
        body.contains("egress to localhost refused")
            && body.contains("127.0.0.1 (denied by --egress-deny 127.0.0.0/8)"),
        "{body}"
    );
    assert_eq!(server.metric(REFUSED, &[("reason", "denied")]).await, 1.0);
    assert_eq!(target.count(), 0, "no request reached the target");
}

/// A 1 MiB error body: `knativeerrordata` holds at most 1024 characters, a prefix of the
/// body, and the dead-letter request carries nothing more of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_target_answers_is_bounded() {
    let server = server_with(EgressPolicy::default()).await;
    let big: Vec<u8> = (0..1024 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let answer = big.clone();
    let sub = Subscriber::with_script(script(move |r: &Recorded| match r.path.as_str() {
        "/dls" => Reply::ok(),
        _ => Reply::status(500).body(answer.clone()),
    }))
    .await;
    trigger_with_dls(&server, "verbose", &sub, "sub").await;
    server
        .send(
            NS,
            BROKER,
            &TestEvent::new("b-1", "com.example").data("application/json", "{}"),
        )
        .await;
    let dead = dead_letter(&sub).await;

    let data = dead.attr("knativeerrordata").expect("the body is reported");
    assert!(data.len() <= 1024, "{} characters", data.len());
    let prefix = decoded(&data);
    assert!(!prefix.is_empty());
    assert_eq!(prefix, big[..prefix.len()], "a prefix of what was answered");
    let carried: usize = dead.body.len()
        + dead
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum::<usize>();
    assert!(
        carried < 4096,
        "the dead-letter request carries {carried} bytes"
    );
    assert_eq!(dead.body.as_ref(), b"{}", "the original data, unchanged");
}

/// The flags on the real binary: `--egress-deny` reaches deliveries, and a malformed entry
/// stops the start with a message saying what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_flags_set_the_policy() {
    let Err(bad) = <rivulet::cli::Cli as clap::Parser>::try_parse_from([
        "rivulet",
        "serve",
        "--egress-deny",
        "10.0.0.1/8",
    ]) else {
        panic!("a bad entry was taken");
    };
    let bad = bad.to_string();
    assert!(
        bad.contains("host bits are set; the network is 10.0.0.0/8"),
        "{bad}"
    );

    let data_dir = tempfile::tempdir().unwrap();
    let child = ChildServer::spawn(
        data_dir.path(),
        &[
            "--egress-deny",
            "127.0.0.0/8",
            "--egress-allow",
            "192.0.2.0/24",
        ],
    )
    .await;
    let server = Api::new(&child.base, &child.api);
    server.wait_ready("Broker", NS, BROKER).await;
    let sub = Subscriber::start().await;
    server
        .create_trigger(&trigger_to("from-flags", &sub.url(), None))
        .await;
    server
        .send(NS, BROKER, &TestEvent::new("f-1", "com.example"))
        .await;
    server.wait_deliveries_final(NS, "from-flags", 1).await;
    assert_eq!(
        server.delivery_outcomes(NS, "from-flags", "failed").await,
        1.0
    );
    assert_eq!(server.metric(REFUSED, &[("reason", "denied")]).await, 1.0);
    assert_eq!(sub.count(), 0);
}
