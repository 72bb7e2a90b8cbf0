//! Property tests on the stable toolchain, in every test run: the parsers that take input from
//! outside (the HTTP binding, structured and batched JSON, CESQL, trigger filters, manifests
//! and resource objects) are fed generated and mutated input. None may panic; what they
//! accept must survive a round trip; and ingress over real HTTP never answers 5xx to a
//! malformed request. `fuzz/` explores further with cargo-fuzz on nightly.

use rivulet_testkit as support;

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use rivulet::cesql::{Expression, Value as SqlValue};
use rivulet::event::{
    Event, ExtensionValue, from_http, parse_batch, parse_structured, to_http_binary, to_json,
};
use rivulet::filter::Filter;
use rivulet::resources::validation::validate_filter;
use rivulet::resources::{SubscriptionsApiFilter, kinds, parse_manifests};
use serde_json::{Map, Value, json};

const ATTRIBUTE_NAMES: &[&str] = &[
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "dataschema",
    "schemaurl",
    "datacontenttype",
    "datacontentencoding",
    "data",
    "data_base64",
    "knativebrokerttl",
    "traceparent",
];

fn attribute_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(ATTRIBUTE_NAMES).prop_map(str::to_string),
        2 => "[a-z0-9]{1,24}",
        1 => "[A-Za-z0-9_.-]{0,30}",
        1 => "\\PC{0,8}",
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,16}",
        "\\PC{0,12}",
        Just("1.0".to_string()),
        Just("0.3".to_string()),
        Just("2018-04-26T14:48:09+02:00".to_string()),
        Just("application/json".to_string()),
        Just("base64".to_string()),
        Just("%zz%".to_string()),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 24, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::btree_map(attribute_name(), inner, 0..5)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A JSON object shaped like a structured CloudEvent: mostly valid required attributes,
/// sometimes missing or of the wrong type, plus extensions and data of any shape.
fn structured_object() -> impl Strategy<Value = Value> {
    let required = |name: &'static str, valid: &'static str| {
        prop_oneof![
            6 => Just(Some(Value::from(valid))),
            1 => Just(None),
            1 => json_value().prop_map(Some),
        ]
        .prop_map(move |value| (name, value))
    };
    (
        required("specversion", "1.0"),
        required("id", "id-1"),
        required("source", "/properties"),
        required("type", "com.example.property"),
        proptest::collection::btree_map(attribute_name(), json_value(), 0..6),
    )
        .prop_map(|(specversion, id, source, ty, rest)| {
            let mut object: Map<String, Value> = rest.into_iter().collect();
            for (name, value) in [specversion, id, source, ty] {
                match value {
                    Some(value) => object.insert(name.to_string(), value),
                    None => object.remove(name),
                };
            }
            Value::Object(object)
        })
}

/// Bytes of a document, sometimes mutated: a byte flipped, cut short, or doubled.
fn mutated(document: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = document.len().max(1);
    (0..4u8, 0..len, any::<u8>()).prop_map(move |(how, at, byte)| {
        let mut bytes = document.clone();
        match how {
            0 => {}
            1 if at < bytes.len() => bytes[at] = byte,
            2 => bytes.truncate(at),
            _ => bytes.extend_from_slice(&document),
        }
        bytes
    })
}

fn structured_bytes() -> impl Strategy<Value = Vec<u8>> {
    structured_object().prop_flat_map(|object| mutated(serde_json::to_vec(&object).unwrap()))
}

fn batch_bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(structured_object(), 0..4)
        .prop_flat_map(|events| mutated(serde_json::to_vec(&events).unwrap()))
}

const HEADER_NAMES: &[&str] = &[
    "ce-specversion",
    "ce-id",
    "ce-source",
    "ce-type",
    "ce-subject",
    "ce-time",
    "ce-dataschema",
    "ce-knativebrokerttl",
    "content-type",
    "content-type",
];

const CONTENT_TYPES: &[&str] = &[
    "application/json",
    "application/cloudevents+json",
    "application/cloudevents+json; charset=utf-8",
    "application/cloudevents+json; charset=latin1",
    "application/cloudevents-batch+json",
    "text/plain",
    "application/cloudevents+xml",
];

/// Header names and raw values, in order.
type Headers = Vec<(String, Vec<u8>)>;

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(HEADER_NAMES).prop_map(str::to_string),
        1 => "ce-[a-z0-9]{1,12}",
        1 => "ce-[A-Za-z0-9-]{0,30}",
    ]
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => text().prop_map(String::into_bytes),
        2 => proptest::sample::select(CONTENT_TYPES).prop_map(|v| v.as_bytes().to_vec()),
        1 => proptest::collection::vec(any::<u8>(), 0..12),
    ]
}

/// A binary-mode header set: the required attributes, each usually there, plus others.
fn binary_headers() -> impl Strategy<Value = Headers> {
    let base = [
        ("ce-specversion", "1.0"),
        ("ce-id", "id-1"),
        ("ce-source", "/properties"),
        ("ce-type", "com.example.property"),
    ];
    (
        proptest::collection::vec(proptest::bool::weighted(0.9), 4),
        proptest::collection::vec((header_name(), header_value()), 0..4),
    )
        .prop_map(move |(keep, extra)| {
            let mut all: Headers = base
                .iter()
                .zip(keep)
                .filter(|(_, keep)| *keep)
                .map(|((n, v), _)| (n.to_string(), v.as_bytes().to_vec()))
                .collect();
            all.extend(extra);
            all
        })
}

fn content_type(value: &str) -> Headers {
    vec![("content-type".to_string(), value.as_bytes().to_vec())]
}

/// A request's headers and body, in each mode, some of it broken.
fn request() -> impl Strategy<Value = (Headers, Vec<u8>)> {
    prop_oneof![
        (
            binary_headers(),
            proptest::collection::vec(any::<u8>(), 0..64)
        ),
        structured_bytes().prop_map(|body| (content_type("application/cloudevents+json"), body)),
        batch_bytes().prop_map(|body| (content_type("application/cloudevents-batch+json"), body)),
        (
            proptest::collection::vec((header_name(), header_value()), 0..8),
            body()
        ),
    ]
}

fn header_map(pairs: &[(String, Vec<u8>)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        // Pairs that http itself cannot carry never reach Rivulet; leave them out.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => proptest::collection::vec(any::<u8>(), 0..64),
        2 => structured_bytes(),
        1 => batch_bytes(),
    ]
}

/// An event with every extension as text.
fn as_text(event: &Event) -> Event {
    let mut text = event.clone();
    for (name, value) in text.extensions.iter_mut() {
        let rendered = event.attribute(name).unwrap_or_default().into_owned();
        *value = ExtensionValue::String(rendered);
    }
    text
}

/// What a parser accepted is a valid event and survives both encodings unchanged.
fn assert_round_trips(event: &Event) -> Result<(), TestCaseError> {
    prop_assert!(
        event.validate().is_ok(),
        "accepted an invalid event {event:?}"
    );
    let reparsed = parse_structured(to_json(event).as_bytes());
    prop_assert_eq!(reparsed.as_ref(), Ok(event), "structured round trip");
    // Binary mode carries every attribute as text, so an extension's type is not kept.
    let (headers, body) = to_http_binary(event);
    match from_http(&headers, body) {
        Ok((_, events)) => {
            prop_assert_eq!(events.len(), 1);
            prop_assert_eq!(as_text(&events[0]), as_text(event), "binary round trip");
        }
        Err(error) => prop_assert!(false, "binary round trip refused: {error}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(Config::with_cases(512))]

    #[test]
    fn structured_json_never_panics_and_round_trips(bytes in structured_bytes()) {
        if let Ok(event) = parse_structured(&bytes) {
            assert_round_trips(&event)?;
        }
    }

    #[test]
    fn batched_json_never_panics_and_round_trips(bytes in batch_bytes()) {
        if let Ok(events) = parse_batch(&bytes) {
            for event in &events {
                assert_round_trips(event)?;
            }
        }
    }

    #[test]
    fn http_binding_never_panics_and_round_trips((pairs, body) in request()) {
        if let Ok((_, events)) = from_http(&header_map(&pairs), Bytes::from(body)) {
            for event in &events {
                assert_round_trips(event)?;
            }
        }
    }
}

#[test]
fn deeply_nested_json_is_refused_not_overflowed() {
    for depth in [200, 10_000, 100_000] {
        let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let structured =
            format!(r#"{{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{nested}}}"#);
        let extension =
            format!(r#"{{"specversion":"1.0","id":"1","source":"/s","type":"t","deep":{nested}}}"#);
        assert!(
            parse_structured(structured.as_bytes()).is_err(),
            "depth {depth} accepted"
        );
        assert!(
            parse_structured(extension.as_bytes()).is_err(),
            "depth {depth} accepted"
        );
        assert!(parse_batch(format!("[{structured}]").as_bytes()).is_err());
        assert!(parse_manifests(&format!("spec: {nested}"), "deep.yaml").is_err());
    }
}

const CESQL_TOKENS: &[&str] = &[
    "(",
    ")",
    ",",
    "+",
    "-",
    "*",
    "/",
    "%",
    "=",
    "!=",
    "<>",
    "<",
    "<=",
    ">",
    ">=",
    "AND",
    "OR",
    "XOR",
    "NOT",
    "LIKE",
    "IN",
    "EXISTS",
    "TRUE",
    "FALSE",
    "id",
    "type",
    "source",
    "subject",
    "count",
    "flag",
    "number",
    "missing",
    "'a'",
    "'%a_'",
    "\"b\"",
    "''",
    "0",
    "1",
    "-1",
    "2147483647",
    "-2147483648",
    "99999999999",
    "ABS",
    "LENGTH",
    "CONCAT",
    "CONCAT_WS",
    "LOWER",
    "UPPER",
    "TRIM",
    "LEFT",
    "RIGHT",
    "SUBSTRING",
    "INT",
    "BOOL",
    "STRING",
    "IS_INT",
    "IS_BOOL",
    "IS_STRING",
    "ESCAPE",
    "'\\'",
];

fn cesql_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::collection::vec(proptest::sample::select(CESQL_TOKENS), 0..16)
            .prop_map(|tokens| tokens.join(" ")),
        1 => "\\PC{0,24}",
        1 => "[()'\"a-z0-9 =<>!%+*/-]{0,24}",
    ]
}

fn cesql_event() -> std::collections::HashMap<String, SqlValue<'static>> {
    let mut event = std::collections::HashMap::new();
    for (name, value) in [
        ("specversion", "1.0"),
        ("id", "property-1"),
        ("source", "/properties"),
        ("type", "com.example.property"),
        ("subject", "a%b_c"),
        ("count", "42"),
    ] {
        event.insert(name.to_string(), SqlValue::from(value.to_string()));
    }
    event.insert("flag".to_string(), SqlValue::Boolean(true));
    event.insert("number".to_string(), SqlValue::Integer(i32::MIN));
    event
}

proptest! {
    #![proptest_config(Config::with_cases(2048))]

    #[test]
    fn cesql_never_panics_and_matches_agrees_with_evaluate(text in cesql_text()) {
        match Expression::parse(&text) {
            Ok(expression) => {
                let event = cesql_event();
                let evaluation = expression.evaluate(&event);
                let passes = evaluation.error.is_none() && evaluation.value.is_true();
                prop_assert_eq!(expression.matches(&event), passes);
            }
            Err(error) => prop_assert!(error.position() <= text.chars().count()),
        }
    }
}

fn attribute_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map(attribute_name(), text(), 0..3)
}

fn filter() -> impl Strategy<Value = SubscriptionsApiFilter> {
    let leaf = prop_oneof![
        attribute_map().prop_map(|m| SubscriptionsApiFilter {
            exact: Some(m),
            ..Default::default()
        }),
        attribute_map().prop_map(|m| SubscriptionsApiFilter {
            prefix: Some(m),
            ..Default::default()
        }),
        attribute_map().prop_map(|m| SubscriptionsApiFilter {
            suffix: Some(m),
            ..Default::default()
        }),
        cesql_text().prop_map(|e| SubscriptionsApiFilter {
            cesql: Some(e),
            ..Default::default()
        }),
        Just(SubscriptionsApiFilter::default()),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(|all| SubscriptionsApiFilter {
                all: Some(all),
                ..Default::default()
            }),
            proptest::collection::vec(inner.clone(), 0..4).prop_map(|any| SubscriptionsApiFilter {
                any: Some(any),
                ..Default::default()
            }),
            inner.prop_map(|not| SubscriptionsApiFilter {
                not: Some(Box::new(not)),
                ..Default::default()
            }),
        ]
    })
}

proptest! {
    #![proptest_config(Config::with_cases(512))]

    /// A filter validation accepts compiles, and evaluating it never panics.
    #[test]
    fn valid_filters_compile_and_evaluate(filter in filter(), bytes in structured_bytes()) {
        if validate_filter("spec.filters[0]", &filter).is_ok() {
            let compiled = Filter::compile(&filter);
            prop_assert!(compiled.is_ok(), "validated filter refused: {:?}", compiled.err());
            if let (Ok(compiled), Ok(event)) = (compiled, parse_structured(&bytes)) {
                let _ = compiled.evaluate(&event);
            }
        }
    }

    /// Filters arrive as JSON inside a Trigger: any JSON is read or refused, never a panic.
    #[test]
    fn filter_json_never_panics(value in json_value()) {
        if let Ok(filter) = serde_json::from_value::<SubscriptionsApiFilter>(value) {
            let _ = validate_filter("spec.filters[0]", &filter);
        }
    }
}

const YAML_PIECES: &[&str] = &[
    "apiVersion: eventing.knative.dev/v1\n",
    "kind: Broker\n",
    "kind: Trigger\n",
    "metadata:\n",
    "  name: default\n",
    "  namespace: default\n",
    "spec:\n",
    "  broker: default\n",
    "  filter:\n",
    "    attributes:\n",
    "      type: a\n",
    "---\n",
    "- ",
    "  ",
    "{",
    "}",
    "[",
    "]",
    ": ",
    "&anchor ",
    "*anchor ",
    "!!binary ",
    "<<: *anchor\n",
    "\"",
    "'",
    "\n",
    "~",
    "12345678901234567890123",
];

fn yaml_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::collection::vec(proptest::sample::select(YAML_PIECES), 0..24)
            .prop_map(|pieces| pieces.concat()),
        1 => "\\PC{0,64}",
    ]
}

/// An object of a served kind with generated metadata and spec.
fn resource_object() -> impl Strategy<Value = (usize, Value)> {
    let name = prop_oneof![
        3 => "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
        1 => "\\PC{0,12}",
        1 => "[a-z]{250,300}",
    ];
    (
        0..kinds().len(),
        name,
        proptest::option::of(attribute_map()),
        json_value(),
    )
        .prop_map(|(kind, name, labels, spec)| {
            let info = kinds()[kind];
            let object = json!({
                "apiVersion": info.api_version(),
                "kind": info.kind,
                "metadata": {"name": name, "namespace": "default", "labels": labels},
                "spec": spec,
            });
            (kind, object)
        })
}

proptest! {
    #![proptest_config(Config::with_cases(512))]

    #[test]
    fn manifests_never_panic(text in yaml_text()) {
        let _ = parse_manifests(&text, "generated.yaml");
    }

    /// Every kind's validation takes any object, new or as an update, without a panic.
    #[test]
    fn resource_validation_never_panics(
        (kind, object) in resource_object(),
        (_, old) in resource_object(),
    ) {
        let info = kinds()[kind];
        let _ = (info.validate)(&object, None);
        let _ = (info.validate)(&object, Some(&old));
    }
}

/// The whole ingress over real HTTP: a malformed request gets a 4xx that says why, never a
/// 5xx, and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_answers_generated_requests_without_server_errors() {
    let server = support::InProcessServer::start().await;
    let url = format!("{}/default/default", server.base);
    let client = support::http();
    let strategy = request();
    let mut runner = TestRunner::new(Config::with_cases(96));
    let mut requests: Vec<(Headers, Vec<u8>)> = Vec::new();
    for _ in 0..96 {
        let tree = strategy.new_tree(&mut runner).expect("generate a request");
        requests.push(tree.current());
    }
    let mut accepted = 0;
    for (pairs, body) in requests {
        let response = client
            .post(&url)
            .headers(header_map(&pairs))
            .body(body.clone())
            .send()
            .await
            .expect("ingress answers");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(
            !status.is_server_error(),
            "{status} for headers {pairs:?} body {:?}: {text}",
            String::from_utf8_lossy(&body)
        );
        if status.as_u16() == 202 {
            accepted += 1;
        } else {
            assert!(status.is_client_error(), "{status}: {text}");
            assert!(!text.trim().is_empty(), "{status} without a message");
        }
    }
    // The generators lean towards valid events, so some must get through.
    assert!(accepted > 0, "no generated request was accepted");
    let status = support::post_binary(&server.base, "default/default", "after", "t", "{}").await;
    assert_eq!(
        status, 202,
        "ingress still serves after the generated requests"
    );
    server.shutdown().await;
}

/// The resource API over real HTTP: a generated object of any kind is stored or refused with
/// a 4xx that says why, never a 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_api_answers_generated_objects_without_server_errors() {
    let server = support::InProcessServer::start().await;
    let mut runner = TestRunner::new(Config::with_cases(64));
    let strategy = resource_object();
    for _ in 0..64 {
        let (kind, object) = strategy
            .new_tree(&mut runner)
            .expect("generate an object")
            .current();
        let info = kinds()[kind];
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let segment =
            percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
        let url = format!(
            "{}{}/{segment}",
            server.api,
            info.collection_path("default")
        );
        let response = support::api_request(reqwest::Method::PUT, &url)
            .json(&object)
            .send()
            .await
            .expect("the resource API answers");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(!status.is_server_error(), "{status} for {object}: {text}");
        if status.is_client_error() {
            assert!(!text.trim().is_empty(), "{status} without a message");
        }
    }
    server.shutdown().await;
}
