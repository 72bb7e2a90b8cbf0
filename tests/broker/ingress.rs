//! Broker ingress over real HTTP: malformed requests are refused with the right status and a
//! message that says what is wrong, and the three content modes are accepted and delivered.

use rivulet_testkit as support;

use reqwest::Method;
use rivulet::event::{Event, SpecVersion};
use serde_json::json;
use support::{InProcessServer, Recorder, http};

/// The body limit the malformed-request server runs with, small so 413 is cheap to reach.
const SMALL_BODY_LIMIT: usize = 1024;

/// One request that ingress must refuse.
struct Malformed {
    what: &'static str,
    method: Method,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: String,
    status: u16,
    /// A piece of the response body that says what is wrong (case-insensitive).
    message: &'static str,
}

/// A binary-mode event ingress refuses as a bad request.
fn binary(
    what: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    message: &'static str,
) -> Malformed {
    Malformed {
        what,
        method: Method::POST,
        path: "/default/default",
        headers,
        body: "{}".into(),
        status: 400,
        message,
    }
}

fn structured(
    what: &'static str,
    content_type: &'static str,
    body: String,
    message: &'static str,
) -> Malformed {
    Malformed {
        what,
        method: Method::POST,
        path: "/default/default",
        headers: vec![("content-type", content_type)],
        body,
        status: 400,
        message,
    }
}

const CE_JSON: &str = "application/cloudevents+json";
const CE_BATCH: &str = "application/cloudevents-batch+json";

fn good_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("ce-specversion", "1.0"),
        ("ce-id", "good-1"),
        ("ce-source", "/tests"),
        ("ce-type", "test.good"),
        ("content-type", "application/json"),
    ]
}

fn without(name: &str) -> Vec<(&'static str, &'static str)> {
    good_headers()
        .into_iter()
        .filter(|(n, _)| *n != name)
        .collect()
}

fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut headers = good_headers();
    headers.extend_from_slice(extra);
    headers
}

fn malformed_requests() -> Vec<Malformed> {
    let event =
        json!({"specversion": "1.0", "id": "s-1", "source": "/tests", "type": "test.structured"});
    let dropping = |name: &str| {
        let mut e = event.clone();
        e.as_object_mut().unwrap().remove(name);
        e.to_string()
    };
    let adding = |name: &str, value: serde_json::Value| {
        let mut e = event.clone();
        e[name] = value;
        e.to_string()
    };
    vec![
        binary(
            "binary without ce-specversion",
            without("ce-specversion"),
            "ce-specversion",
        ),
        binary(
            "unknown specversion",
            with(&[])
                .into_iter()
                .map(|(n, v)| {
                    if n == "ce-specversion" {
                        (n, "2.0")
                    } else {
                        (n, v)
                    }
                })
                .collect(),
            "specversion",
        ),
        structured(
            "batch mixing spec versions",
            CE_BATCH,
            json!([event, {"specversion": "0.3", "id": "s-2", "source": "/tests", "type": "t"}])
                .to_string(),
            "same specversion",
        ),
        binary(
            "quoted header value without its closing quote",
            with(&[("ce-subject", "\"open")]),
            "closing",
        ),
        binary("binary without ce-id", without("ce-id"), "ce-id"),
        binary(
            "binary without ce-source",
            without("ce-source"),
            "ce-source",
        ),
        binary("binary without ce-type", without("ce-type"), "ce-type"),
        binary(
            "binary with an invalid time",
            with(&[("ce-time", "yesterday")]),
            "time",
        ),
        binary(
            "binary extension with invalid characters",
            with(&[("ce-my_ext", "x")]),
            "my_ext",
        ),
        binary(
            "non-integer knativebrokerttl",
            with(&[("ce-knativebrokerttl", "many")]),
            "knativebrokerttl",
        ),
        binary(
            "ce-id sent twice",
            with(&[("ce-id", "again")]),
            "more than once",
        ),
        binary(
            "empty ce-id",
            without("ce-id")
                .into_iter()
                .chain([("ce-id", "")])
                .collect(),
            "id",
        ),
        structured(
            "structured without specversion",
            CE_JSON,
            dropping("specversion"),
            "specversion",
        ),
        structured("structured without id", CE_JSON, dropping("id"), "`id`"),
        structured(
            "structured without source",
            CE_JSON,
            dropping("source"),
            "`source`",
        ),
        structured(
            "structured without type",
            CE_JSON,
            dropping("type"),
            "`type`",
        ),
        structured(
            "structured with an invalid time",
            CE_JSON,
            adding("time", json!("2024-13-45T99:00:00Z")),
            "time",
        ),
        structured(
            "structured body that is not JSON",
            CE_JSON,
            "{\"specversion\": \"1.0\",".into(),
            "not valid JSON",
        ),
        structured(
            "structured with data and data_base64",
            CE_JSON,
            {
                let mut e = event.clone();
                e["data"] = json!({"a": 1});
                e["data_base64"] = json!("AQID");
                e.to_string()
            },
            "data_base64",
        ),
        structured(
            "structured extension with upper case",
            CE_JSON,
            adding("myExt", json!("x")),
            "myExt",
        ),
        structured(
            "structured extension with a dash",
            CE_JSON,
            adding("my-ext", json!("x")),
            "my-ext",
        ),
        structured(
            "structured id that is a number",
            CE_JSON,
            adding("id", json!(42)),
            "id",
        ),
        structured(
            "structured in latin-1",
            "application/cloudevents+json; charset=iso-8859-1",
            event.to_string(),
            "charset",
        ),
        structured(
            "batch that is not an array",
            CE_BATCH,
            event.to_string(),
            "array",
        ),
        structured(
            "batch with an invalid event",
            CE_BATCH,
            json!([event, {"specversion": "1.0", "id": "b-2", "source": "/tests"}]).to_string(),
            "batch event 1",
        ),
        structured(
            "unsupported structured format",
            "application/cloudevents+xml",
            "<event/>".into(),
            "not supported",
        ),
        Malformed {
            what: "body over the limit",
            method: Method::POST,
            path: "/default/default",
            headers: good_headers(),
            body: format!("\"{}\"", "x".repeat(SMALL_BODY_LIMIT * 2)),
            status: 413,
            message: "limit",
        },
        Malformed {
            what: "unknown broker",
            method: Method::POST,
            path: "/default/nosuchbroker",
            headers: good_headers(),
            body: "{}".into(),
            status: 404,
            message: "nosuchbroker",
        },
        Malformed {
            what: "unknown path shape",
            method: Method::POST,
            path: "/default/default/extra",
            headers: good_headers(),
            body: "{}".into(),
            status: 404,
            message: "/default/default/extra",
        },
        Malformed {
            what: "GET on the ingress path",
            method: Method::GET,
            path: "/default/default",
            headers: vec![],
            body: String::new(),
            status: 405,
            message: "POST",
        },
        Malformed {
            what: "PUT on the ingress path",
            method: Method::PUT,
            path: "/default/default",
            headers: good_headers(),
            body: "{}".into(),
            status: 405,
            message: "POST",
        },
        Malformed {
            what: "DELETE on the ingress path",
            method: Method::DELETE,
            path: "/default/default",
            headers: vec![],
            body: String::new(),
            status: 405,
            message: "POST",
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_a_4xx_that_says_why_and_the_server_keeps_serving() {
    let server = InProcessServer::start_with(|o| o.body_limit = SMALL_BODY_LIMIT).await;
    let client = http();
    let cases = malformed_requests();
    assert!(cases.len() >= 20, "the table covers at least 20 cases");
    let mut failures = Vec::new();
    for case in &cases {
        let mut request =
            client.request(case.method.clone(), format!("{}{}", server.base, case.path));
        for (name, value) in &case.headers {
            request = request.header(*name, *value);
        }
        let response = request
            .body(case.body.clone())
            .send()
            .await
            .expect("ingress answers");
        let status = response.status().as_u16();
        let allow = response
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap_or_default().to_string());
        let text = response.text().await.unwrap_or_default();
        if status != case.status {
            failures.push(format!(
                "{}: expected {}, got {status} ({})",
                case.what,
                case.status,
                text.trim()
            ));
        } else if !text.to_lowercase().contains(&case.message.to_lowercase()) {
            failures.push(format!(
                "{}: message {:?} does not mention {:?}",
                case.what,
                text.trim(),
                case.message
            ));
        } else if status == 405 && allow.as_deref() != Some("POST, OPTIONS") {
            failures.push(format!("{}: Allow header is {allow:?}", case.what));
        } else {
            eprintln!("{} -> {status}: {}", case.what, text.trim());
        }
    }
    support::assert_no_failures(&failures, cases.len());

    let status = support::post_binary(
        &server.base,
        "default/default",
        "after-the-bad-ones",
        "test.good",
        "{}",
    )
    .await;
    assert_eq!(
        status, 202,
        "a good event after the malformed ones is accepted"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_answers_allow_post_options() {
    let server = InProcessServer::start().await;
    let response = http()
        .request(Method::OPTIONS, format!("{}/default/default", server.base))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "OPTIONS answers {}",
        response.status()
    );
    assert_eq!(response.headers().get("allow").unwrap(), "POST, OPTIONS");
    server.shutdown().await;
}

/// A server with a trigger on default/default that sends everything to a recorder.
async fn server_with_recorder() -> (InProcessServer, Recorder) {
    let server = InProcessServer::start().await;
    let recorder = Recorder::start().await;
    support::apply_trigger_ready(&server.api, "default", "all", "default", &recorder.url).await;
    (server, recorder)
}

/// A binary-mode POST of event `id` of type `ty` (source `/tests`) to default/default.
fn binary_event(
    server: &InProcessServer,
    specversion: &str,
    id: &str,
    ty: &str,
) -> reqwest::RequestBuilder {
    http()
        .post(format!("{}/default/default", server.base))
        .header("ce-specversion", specversion)
        .header("ce-id", id)
        .header("ce-source", "/tests")
        .header("ce-type", ty)
}

/// Sends `request` (event `id`), checks ingress accepts it and returns the event as the
/// recorder got it.
async fn deliver(recorder: &Recorder, request: reqwest::RequestBuilder, id: &str) -> Event {
    assert_eq!(
        support::status_of(request).await,
        202,
        "ingress accepts {id}"
    );
    recorder.wait_for_id(id).await.event
}

/// On a server of its own: sends a binary-mode event as [`binary_event`] makes it, with
/// `more` added (headers, a body), and returns it as the subscriber got it.
async fn deliver_alone(
    specversion: &str,
    id: &str,
    ty: &str,
    more: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> Event {
    let (server, recorder) = server_with_recorder().await;
    let request = more(binary_event(&server, specversion, id, ty));
    let got = deliver(&recorder, request, id).await;
    server.shutdown().await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_structured_and_batched_events_are_accepted_and_delivered() {
    let (server, recorder) = server_with_recorder().await;
    let client = http();
    let url = format!("{}/default/default", server.base);

    let binary = binary_event(&server, "1.0", "mode-binary", "test.mode")
        .header("content-type", "application/json")
        .body(r#"{"n":12345678901234567890123}"#);
    assert_eq!(support::status_of(binary).await, 202);

    let structured = client
        .post(&url)
        .header("content-type", "application/cloudevents+json")
        .body(r#"{"specversion":"1.0","id":"mode-structured","source":"/tests","type":"test.mode","datacontenttype":"application/json","data":{"n":12345678901234567890123}}"#);
    assert_eq!(support::status_of(structured).await, 202);

    let batch = json!([
        {"specversion": "1.0", "id": "mode-batch-1", "source": "/tests", "type": "test.mode", "data": "one", "datacontenttype": "text/plain"},
        {"specversion": "1.0", "id": "mode-batch-2", "source": "/tests", "type": "test.mode", "data_base64": "AAEC"}
    ]);
    let batched = client
        .post(&url)
        .header("content-type", "application/cloudevents-batch+json")
        .body(batch.to_string());
    assert_eq!(support::status_of(batched).await, 202);

    // JSON data reaches the subscriber byte for byte, in either mode.
    let big_number = br#"{"n":12345678901234567890123}"#;
    for (id, data) in [
        ("mode-binary", &big_number[..]),
        ("mode-structured", &big_number[..]),
        ("mode-batch-1", &b"one"[..]),
        ("mode-batch-2", &[0u8, 1, 2][..]),
    ] {
        let got = recorder.wait_for_id(id).await.event;
        assert_eq!(got.data.as_deref(), Some(data), "the data of {id}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn specversion_0_3_is_accepted_and_kept() {
    let got = deliver_alone("0.3", "v03-event", "test.v03", |request| {
        request
            .header("content-type", "text/plain")
            .body("old but fine")
    })
    .await;
    assert_eq!(
        got.specversion,
        SpecVersion::V03,
        "specversion is never upgraded"
    );
    assert_eq!(got.data.as_deref(), Some(&b"old but fine"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percent_encoded_header_values_are_decoded() {
    let got = deliver_alone("1.0", "percent", "test.percent", |request| {
        request
            .header("ce-subject", "caf%C3%A9")
            .header("ce-note", "100%25%20sure")
            // Quoted, as older senders wrote values with spaces and quotes.
            .header("ce-quoted", "\"say \\\"hi\\\" 100%25\"")
    })
    .await;
    assert_eq!(got.subject.as_deref(), Some("café"));
    assert_eq!(got.attribute("note").as_deref(), Some("100% sure"));
    assert_eq!(got.attribute("quoted").as_deref(), Some("say \"hi\" 100%"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrival_time_is_added_and_ttl_defaults_to_255() {
    let (server, recorder) = server_with_recorder().await;
    let before = chrono::Utc::now();
    let status = support::post_binary(
        &server.base,
        "default/default",
        "stamped",
        "test.stamp",
        "{}",
    )
    .await;
    assert_eq!(status, 202);
    let got = recorder.wait_for_id("stamped").await.event;
    let arrival = got
        .attribute("knativearrivaltime")
        .expect("knativearrivaltime is added")
        .into_owned();
    let arrival = chrono::DateTime::parse_from_rfc3339(&arrival)
        .unwrap_or_else(|e| panic!("knativearrivaltime {arrival:?} is not RFC 3339: {e}"));
    assert!(
        arrival >= before - chrono::Duration::seconds(1),
        "arrival time {arrival} is not before the request was sent ({before})"
    );
    // The default TTL, less the hop of this delivery.
    assert_eq!(got.attribute("knativebrokerttl").as_deref(), Some("254"));

    // A TTL the producer set is kept (and lowered by the delivery's hop).
    let request =
        binary_event(&server, "1.0", "own-ttl", "test.stamp").header("ce-knativebrokerttl", "7");
    let got = deliver(&recorder, request, "own-ttl").await;
    assert_eq!(got.attribute("knativebrokerttl").as_deref(), Some("6"));
    server.shutdown().await;
}
