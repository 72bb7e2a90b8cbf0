//! Event-type discovery end to end: auto-creation from traffic (and its bounds), schema
//! inference as payloads evolve, the discovery queries, v1beta2 reads, the trigger warning
//! condition, and `rivulet eventtypes list|show`.

use rivulet_testkit as support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Subscriber, TestEvent, TestServer, WAIT, condition, wait_for};

const V1BETA3: &str = "/apis/eventing.knative.dev/v1beta3/namespaces";
const V1BETA2: &str = "/apis/eventing.knative.dev/v1beta2/namespaces";

async fn start() -> TestServer {
    TestServer::start_with(|options| {
        options.discovery.min_write_interval = Duration::from_millis(20);
    })
    .await
}

fn json_event(id: &str, ty: &str, source: &str, data: Value) -> TestEvent {
    TestEvent::new(id, ty)
        .source(source)
        .data("application/json", data.to_string())
}

/// EventTypes in `namespace` matching `query` (e.g. `?broker=shop`).
async fn list(server: &TestServer, namespace: &str, query: &str) -> Vec<Value> {
    let (status, body) = server
        .get_json(&format!("{V1BETA3}/{namespace}/eventtypes{query}"))
        .await;
    assert_eq!(status, 200, "list {query}: {body}");
    body["items"].as_array().cloned().unwrap_or_default()
}

/// Sends a JSON event to `broker` in namespace `default`.
async fn send_json(
    server: &TestServer,
    broker: &str,
    (id, ty, source): (&str, &str, &str),
    data: Value,
) {
    let event = json_event(id, ty, source, data);
    server.send("default", broker, &event).await;
}

/// PUTs `manifest` to `path` under the resource API; the status code.
async fn put(server: &TestServer, path: &str, manifest: &Value) -> u16 {
    support::api_request(reqwest::Method::PUT, format!("{}{path}", server.api))
        .json(manifest)
        .send()
        .await
        .expect("the resource API answers")
        .status()
        .as_u16()
}

fn attribute(object: &Value, name: &str) -> Option<String> {
    object["spec"]["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["name"] == name)?
        .get("value")?
        .as_str()
        .map(str::to_string)
}

/// (broker, type, source) of each EventType.
fn classes(items: &[Value]) -> BTreeSet<(String, String, String)> {
    items
        .iter()
        .map(|o| {
            (
                o["spec"]["reference"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                attribute(o, "type").unwrap_or_default(),
                attribute(o, "source").unwrap_or_else(|| "(any)".into()),
            )
        })
        .collect()
}

async fn wait_count(server: &TestServer, namespace: &str, query: &str, count: usize) -> Vec<Value> {
    wait_for(
        &format!("{count} EventTypes for {query:?}"),
        WAIT,
        || async {
            let items = list(server, namespace, query).await;
            (items.len() == count).then_some(items)
        },
    )
    .await
}

/// Waits until the named EventType's status satisfies `check`.
async fn wait_eventtype(
    server: &TestServer,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(what, WAIT, || async {
        let (status, object) = server
            .get_json(&format!("{V1BETA3}/default/eventtypes/{name}"))
            .await;
        (status == 200 && check(&object)).then_some(object)
    })
    .await
}

/// The name of the EventType of type `ty` among `items`.
fn name_of_type(items: &[Value], ty: &str) -> String {
    let object = items
        .iter()
        .find(|o| attribute(o, "type").as_deref() == Some(ty))
        .unwrap_or_else(|| panic!("an EventType of type {ty}"));
    object["metadata"]["name"].as_str().unwrap().to_string()
}

/// Waits until the named EventType has a schema; returns it.
async fn wait_schema(server: &TestServer, name: &str) -> Value {
    wait_eventtype(server, name, &format!("a schema for {name}"), |o| {
        o["status"]["schema"].is_object()
    })
    .await
}

/// Waits until the named EventType's schema is at `version`; returns it.
async fn wait_schema_version(server: &TestServer, name: &str, version: u64) -> Value {
    wait_eventtype(server, name, &format!("schema version {version}"), |o| {
        o["status"]["schemaVersion"] == version
    })
    .await
}

/// Strings as a set, for comparing.
fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// A trigger on the default broker sending to `subscriber`, with `filtering` (a `filter`
/// or `filters` field, or nothing) added to its spec.
fn trigger(name: &str, subscriber: &str, filtering: Value) -> Value {
    let mut manifest = support::trigger("default", name, "default", subscriber);
    if let Value::Object(fields) = filtering {
        for (field, value) in fields {
            manifest["spec"][field] = value;
        }
    }
    manifest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_traffic_creates_one_eventtype_per_broker_type_and_source_pattern() {
    let server = start().await;
    server.create_broker("default", "shop", Value::Null).await;
    server
        .create_broker("default", "billing", Value::Null)
        .await;
    let order = json!({"id": 1});
    for (i, source) in ["/orders/1", "/orders/2", "/orders/30021", "/web"]
        .iter()
        .enumerate()
    {
        let event = json_event(
            &format!("o{i}"),
            "com.example.order.created",
            source,
            order.clone(),
        );
        server.send("default", "shop", &event).await;
    }
    let cart = "https://shop.example.com/carts/9b2f3c1e-8d4a-4b6e-9f00-0123456789ab";
    let others = [
        (
            "shop",
            ("c1", "com.example.cart.updated", cart),
            json!({"items": 2}),
        ),
        (
            "billing",
            ("i1", "com.example.invoice.paid", "/invoices/42"),
            json!({"total": 9.5}),
        ),
        // The same type on another broker is another EventType.
        (
            "billing",
            ("o9", "com.example.order.created", "/orders/7"),
            order.clone(),
        ),
    ];
    for (broker, event, data) in others {
        send_json(&server, broker, event, data).await;
    }

    let items = wait_count(&server, "default", "", 5).await;
    let expected: BTreeSet<(String, String, String)> = [
        ("shop", "com.example.order.created", "/orders/*"),
        ("shop", "com.example.order.created", "/web"),
        (
            "shop",
            "com.example.cart.updated",
            "https://shop.example.com/carts/*",
        ),
        ("billing", "com.example.invoice.paid", "/invoices/*"),
        ("billing", "com.example.order.created", "/orders/*"),
    ]
    .iter()
    .map(|(b, t, s)| (b.to_string(), t.to_string(), s.to_string()))
    .collect();
    assert_eq!(classes(&items), expected);
    for item in &items {
        let name = item["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("et-"), "{name}");
        assert_eq!(
            item["metadata"]["labels"]["rivulet.dev/autocreated"],
            "true"
        );
        assert_eq!(item["apiVersion"], "eventing.knative.dev/v1beta3");
        assert_eq!(attribute(item, "specversion").as_deref(), Some("1.0"));
    }
    // Each EventType becomes Ready (its broker exists).
    let name = items[0]["metadata"]["name"].as_str().unwrap().to_string();
    let ready = server.wait_ready("EventType", "default", &name).await;
    assert!(condition(&ready, "BrokerReady").is_some(), "{ready}");
    assert!(
        server
            .metric("rivulet_eventtypes_autocreated_total", &[])
            .await
            >= 5.0
    );

    // More events of known classes create nothing new.
    for i in 0..10 {
        let event = json_event(
            &format!("more{i}"),
            "com.example.order.created",
            &format!("/orders/{}", 100 + i),
            order.clone(),
        );
        server.send("default", "shop", &event).await;
    }
    // A marker class, sent last, shows the worker has seen everything before it.
    send_json(
        &server,
        "shop",
        ("m", "com.example.marker", "/m"),
        json!({}),
    )
    .await;
    let items = wait_count(&server, "default", "", 6).await;
    assert_eq!(
        items
            .iter()
            .filter(|o| attribute(o, "type").as_deref() == Some("com.example.order.created"))
            .count(),
        3
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_beyond_the_cap_share_one_eventtype() {
    let server = TestServer::start_with(|options| {
        options.discovery.max_sources_per_type = 3;
        options.discovery.min_write_interval = Duration::from_millis(20);
    })
    .await;
    // Names, not ids: each is a pattern of its own until the cap.
    for (i, user) in ["alice", "bob", "carol", "dave", "erin", "frank"]
        .iter()
        .enumerate()
    {
        let event = json_event(
            &format!("u{i}"),
            "com.example.login",
            &format!("/users/{user}"),
            json!({"ok": true}),
        );
        server.send("default", "default", &event).await;
    }
    let items = wait_count(&server, "default", "?type=com.example.login", 4).await;
    let sources: BTreeSet<String> = classes(&items).into_iter().map(|(_, _, s)| s).collect();
    let expected = set(&["/users/alice", "/users/bob", "/users/carol", "(any)"]);
    assert_eq!(sources, expected);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_are_inferred_refined_and_versioned_without_rewriting_on_every_event() {
    let server = start().await;
    let ty = "com.example.order.placed";
    let first = json!({
        "orderId": 1,
        "placedAt": "2026-11-26T12:00:00Z",
        "customer": {"name": "Ada", "email": "ada@example.com"},
        "lines": [{"sku": "A-1", "qty": 2}]
    });
    let event = json_event("1", ty, "/orders/1", first)
        .attr("dataschema", "https://example.com/order.json");
    server.send("default", "default", &event).await;
    let items = wait_count(&server, "default", &format!("?type={ty}"), 1).await;
    let name = items[0]["metadata"]["name"].as_str().unwrap().to_string();
    let v1 = wait_schema_version(&server, &name, 1).await;
    let schema = &v1["status"]["schema"];
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    assert_eq!(
        schema["required"],
        json!(["customer", "lines", "orderId", "placedAt"])
    );
    assert_eq!(schema["properties"]["placedAt"]["format"], "date-time");
    assert_eq!(
        schema["properties"]["customer"]["properties"]["email"]["format"],
        "email"
    );
    assert_eq!(
        schema["properties"]["lines"]["items"]["properties"]["qty"]["type"],
        "integer"
    );
    assert_eq!(v1["status"]["dataSchema"], "https://example.com/order.json");
    assert_eq!(v1["status"]["sample"]["id"], "1");
    assert_eq!(v1["status"]["sample"]["data"]["orderId"], 1);

    // The shape evolves: email goes missing, qty becomes fractional, a note appears.
    let second = json!({
        "orderId": 2,
        "placedAt": "2026-11-26T12:01:00Z",
        "customer": {"name": "Bob"},
        "lines": [{"sku": "B-2", "qty": 0.5}],
        "note": "leave at the door"
    });
    send_json(&server, "default", ("2", ty, "/orders/2"), second).await;
    let v2 = wait_schema_version(&server, &name, 2).await;
    let schema = &v2["status"]["schema"];
    assert_eq!(
        schema["required"],
        json!(["customer", "lines", "orderId", "placedAt"])
    );
    assert_eq!(schema["properties"]["note"]["type"], "string");
    assert_eq!(
        schema["properties"]["customer"]["required"],
        json!(["name"])
    );
    assert_eq!(
        schema["properties"]["lines"]["items"]["properties"]["qty"]["type"],
        "number"
    );
    assert_eq!(v2["status"]["schemaVersions"].as_array().unwrap().len(), 2);
    assert_eq!(
        v2["status"]["sample"]["id"], "2",
        "the sample shows the newest shape"
    );

    // Steady traffic of a known shape writes nothing; a new shape writes once.
    let writes_before = server
        .metric("rivulet_eventtype_status_writes_total", &[])
        .await;
    for i in 0..25 {
        let same = json!({"orderId": 10 + i, "placedAt": "2026-11-26T13:00:00Z",
                          "customer": {"name": "C"}, "lines": [], "note": "n"});
        send_json(
            &server,
            "default",
            (&format!("s{i}"), ty, "/orders/9"),
            same,
        )
        .await;
    }
    // The schema is stable now, so only one event in 32 is inferred: a shape that every new
    // event carries is seen within 32 events.
    let changed = json!({"orderId": "X-1", "placedAt": "2026-11-26T14:00:00Z", "customer": {"name": "D"}, "lines": []});
    for i in 0..32 {
        let id = format!("last{i}");
        send_json(&server, "default", (&id, ty, "/orders/9"), changed.clone()).await;
    }
    let v3 = wait_schema_version(&server, &name, 3).await;
    assert_eq!(
        v3["status"]["schema"]["properties"]["orderId"]["type"],
        json!(["string", "integer"])
    );
    assert!(
        v3["status"]["schema"]["required"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f != "note")
    );
    let writes_after = server
        .metric("rivulet_eventtype_status_writes_total", &[])
        .await;
    assert!(
        writes_after - writes_before <= 2.0,
        "25 events of a known shape and 32 of one new shape caused {} writes",
        writes_after - writes_before
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_filter_by_broker_type_prefix_source_and_text() {
    let server = start().await;
    server.create_broker("default", "shop", Value::Null).await;
    for (broker, ty, source) in [
        ("shop", "com.example.order.created", "/orders/1"),
        ("shop", "com.example.order.shipped", "/orders/1"),
        ("shop", "com.example.cart.updated", "/carts/abc"),
        ("default", "com.example.order.created", "/legacy"),
        ("default", "org.other.ping", "/ping"),
    ] {
        send_json(&server, broker, ("x", ty, source), json!({"a": 1})).await;
    }
    let all = wait_count(&server, "default", "", 5).await;
    let types = |items: Vec<Value>| -> BTreeSet<String> {
        items.iter().filter_map(|o| attribute(o, "type")).collect()
    };

    assert_eq!(
        types(list(&server, "default", "?broker=shop").await),
        set(&[
            "com.example.order.created",
            "com.example.order.shipped",
            "com.example.cart.updated"
        ])
    );
    assert_eq!(
        list(&server, "default", "?type=com.example.order.created")
            .await
            .len(),
        2
    );
    assert_eq!(
        list(
            &server,
            "default",
            "?type=com.example.order.created&broker=default"
        )
        .await
        .len(),
        1
    );
    assert_eq!(
        types(list(&server, "default", "?typePrefix=com.example.order.").await),
        set(&["com.example.order.created", "com.example.order.shipped"])
    );
    // A concrete source finds the pattern that covers it.
    assert_eq!(
        types(list(&server, "default", "?source=/orders/987&broker=shop").await),
        set(&["com.example.order.created", "com.example.order.shipped"])
    );
    assert_eq!(
        types(list(&server, "default", "?q=PING").await),
        set(&["org.other.ping"])
    );
    assert!(
        list(&server, "default", "?q=nothing-like-this")
            .await
            .is_empty()
    );
    assert!(list(&server, "other-namespace", "").await.is_empty());

    let (status, body) = server
        .get_json(&format!("{V1BETA3}/default/eventtypes?colour=red"))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("typePrefix"),
        "{body}"
    );

    // One EventType with its schema and sample.
    let name = name_of_type(&all, "org.other.ping");
    let one = wait_schema(&server, &name).await;
    assert_eq!(
        one["status"]["schema"]["properties"]["a"]["type"],
        "integer"
    );
    assert_eq!(one["status"]["sample"]["type"], "org.other.ping");

    // The same objects read as v1beta2.
    let (status, old) = server
        .get_json(&format!("{V1BETA2}/default/eventtypes/{name}"))
        .await;
    assert_eq!(status, 200, "{old}");
    assert_eq!(old["apiVersion"], "eventing.knative.dev/v1beta2");
    assert_eq!(old["spec"]["type"], "org.other.ping");
    assert_eq!(old["spec"]["source"], "/ping");
    assert_eq!(old["spec"]["broker"], "default");
    assert!(
        old["spec"]["schemaData"]
            .as_str()
            .unwrap()
            .contains("integer")
    );
    let (_, old_list) = server
        .get_json(&format!("{V1BETA2}/default/eventtypes?broker=shop"))
        .await;
    assert_eq!(old_list["apiVersion"], "eventing.knative.dev/v1beta2");
    assert_eq!(old_list["items"].as_array().unwrap().len(), 3);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventtypes_can_be_applied_by_hand_in_v1beta3_and_v1beta2() {
    let server = TestServer::start_with(|options| {
        options.discovery.autocreate = false;
        options.discovery.min_write_interval = Duration::from_millis(20);
    })
    .await;
    let manual = json!({
        "apiVersion": "eventing.knative.dev/v1beta3", "kind": "EventType",
        "metadata": {"name": "orders", "namespace": "default"},
        "spec": {
            "reference": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "default"},
            "description": "Orders, declared by hand",
            "attributes": [
                {"name": "type", "value": "com.example.manual", "required": true},
                {"name": "source", "value": "/orders/*", "required": true}
            ]
        }
    });
    let orders = format!("{V1BETA3}/default/eventtypes/orders");
    assert_eq!(
        put(&server, &orders, &manual).await,
        201,
        "a v1beta3 EventType"
    );
    let invalid = json!({"apiVersion": "eventing.knative.dev/v1beta3", "kind": "EventType",
        "metadata": {"name": "bad"}, "spec": {"attributes": [{"name": "source", "value": "/x"}]}});
    let bad = format!("{V1BETA3}/default/eventtypes/bad");
    assert_eq!(
        put(&server, &bad, &invalid).await,
        422,
        "one without a type"
    );

    let legacy = json!({
        "apiVersion": "eventing.knative.dev/v1beta2", "kind": "EventType",
        "metadata": {"name": "legacy", "namespace": "default"},
        "spec": {"type": "com.example.legacy", "source": "/legacy", "broker": "default"}
    });
    let legacy_path = format!("{V1BETA2}/default/eventtypes/legacy");
    assert_eq!(
        put(&server, &legacy_path, &legacy).await,
        201,
        "a v1beta2 EventType"
    );
    let (_, stored) = server
        .get_json(&format!("{V1BETA3}/default/eventtypes/legacy"))
        .await;
    assert_eq!(
        attribute(&stored, "type").as_deref(),
        Some("com.example.legacy")
    );
    assert_eq!(stored["spec"]["reference"]["name"], "default");

    // Without auto-creation, unknown classes create nothing, but a declared EventType still
    // learns its schema from matching events.
    let unknown = ("u", "com.example.unknown", "/u");
    send_json(&server, "default", unknown, json!({"z": 1})).await;
    let declared = ("m", "com.example.manual", "/orders/5");
    send_json(&server, "default", declared, json!({"total": 3})).await;
    let learned = wait_schema(&server, "orders").await;
    assert_eq!(
        learned["status"]["schema"]["properties"]["total"]["type"],
        "integer"
    );
    let names: BTreeSet<String> = list(&server, "default", "")
        .await
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, set(&["legacy", "orders"]));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_for_unknown_types_get_a_warning_that_clears_when_the_type_appears() {
    let server = start().await;
    let subscriber = Subscriber::start().await;
    let refund = json!({"filter": {"attributes": {"type": "com.example.refund"}}});
    let on_refund = server
        .create_trigger(&trigger("on-refund", &subscriber.url(), refund))
        .await;
    let warning = condition(&on_refund, "EventTypeKnown").expect("an EventTypeKnown condition");
    assert_eq!(warning["status"], "False");
    assert_eq!(warning["severity"], "Warning");
    assert_eq!(warning["reason"], "NoMatchingEventType");
    assert_eq!(
        condition(&on_refund, "Ready").unwrap()["status"],
        "True",
        "a warning only"
    );

    // A trigger without an exact type filter gets no such condition.
    let any = trigger("on-anything", &subscriber.url(), Value::Null);
    let any = server.create_trigger(&any).await;
    assert!(condition(&any, "EventTypeKnown").is_none());

    // The type shows up in traffic: the EventType is created and the warning clears.
    let refund = ("r1", "com.example.refund", "/refunds/1");
    send_json(&server, "default", refund, json!({"amount": 5})).await;
    subscriber.wait_for(1).await;
    let cleared = wait_for("EventTypeKnown=True", WAIT, || async {
        let trigger = server.get("Trigger", "default", "on-refund").await?;
        let known = condition(&trigger, "EventTypeKnown")?;
        (known["status"] == "True").then_some(trigger)
    })
    .await;
    assert_eq!(condition(&cleared, "Ready").unwrap()["status"], "True");

    // New-style filters count too.
    let nope = json!({"filters": [{"exact": {"type": "com.example.nope"}}]});
    let exact = server
        .create_trigger(&trigger("on-exact", &subscriber.url(), nope))
        .await;
    assert_eq!(
        condition(&exact, "EventTypeKnown").unwrap()["status"],
        "False"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_lists_with_filters_and_shows_schema_and_sample() {
    let server = start().await;
    for (event, data) in [
        (("1", "com.example.cli.one", "/one"), json!({"n": 1})),
        (("2", "com.example.cli.two", "/two"), json!({"s": "x"})),
    ] {
        send_json(&server, "default", event, data).await;
    }
    let items = wait_count(&server, "default", "?typePrefix=com.example.cli", 2).await;
    let one = name_of_type(&items, "com.example.cli.one");
    wait_schema(&server, &one).await;

    let run = |args: Vec<String>| {
        let api = server.api.clone();
        async move {
            let output = support::cli(&api)
                .args(&args)
                .output()
                .await
                .expect("the rivulet binary runs");
            support::assert_succeeded(&output, &format!("rivulet {args:?}"));
            String::from_utf8_lossy(&output.stdout).into_owned()
        }
    };
    let table = run(vec![
        "eventtypes".into(),
        "list".into(),
        "--type-prefix".into(),
        "com.example.cli".into(),
    ])
    .await;
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("com.example.cli.one") && table.contains("com.example.cli.two"),
        "{table}"
    );
    let filtered = run(vec![
        "eventtypes".into(),
        "list".into(),
        "--type".into(),
        "com.example.cli.two".into(),
        "-o".into(),
        "json".into(),
    ])
    .await;
    let filtered: Value = serde_json::from_str(&filtered).unwrap();
    assert_eq!(filtered["items"].as_array().unwrap().len(), 1);
    let shown = run(vec!["eventtypes".into(), "show".into(), one.clone()]).await;
    assert!(shown.contains("com.example.cli.one"), "{shown}");
    assert!(shown.contains("Schema (v1)"), "{shown}");
    assert!(shown.contains("\"integer\""), "{shown}");
    assert!(shown.contains("Sample event"), "{shown}");
    // `get eventtypes` works too, like any kind.
    let got = run(vec!["get".into(), "eventtypes".into()]).await;
    assert!(got.contains(&one), "{got}");
    server.shutdown().await;
}
