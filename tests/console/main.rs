//! The web console at `/ui/`, driven in a real headless Chromium against a running server:
//! logging in, the topology following `apply`, an object's view and its apply (refused to a
//! viewer), the live tap, an event's trace, a scaffold download, keyboard use, phone width,
//! both themes, a 200-object topology, and the screenshots in docs/console/.

mod browser;

use std::io::Read as _;
use std::time::Instant;

use browser::{Browser, DESKTOP, SETTLE};
use reqwest::Method;
use rivulet_testkit as support;
use serde_json::{Value, json};
use support::{Subscriber, TestEvent, TestServer, WAIT, api_request, wait_for};

/// A viewer token made through the API.
async fn viewer_token(server: &TestServer) -> String {
    let response = api_request(Method::POST, format!("{}/auth/tokens", server.api))
        .json(&json!({"name": "console-viewer", "role": "viewer"}))
        .send()
        .await
        .expect("the API answers");
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.expect("JSON");
    body["token"].as_str().expect("a token").to_string()
}

fn broker(name: &str) -> Value {
    json!({
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": {"namespace": "default", "name": name},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_turned_away_and_a_broker_applied_appears_in_the_topology() {
    let server = TestServer::start_ready().await;
    let Some(browser) = Browser::open(&server.api).await else {
        return;
    };
    browser.log_in_with("rvt_not_a_token").await;
    browser
        .wait_text("#login-error", "the token is not valid")
        .await;
    browser.log_in().await;
    assert_eq!(
        browser.route().await,
        "#/topology",
        "the console opens on the topology"
    );
    browser
        .wait_css(r#"svg#topology g.node[data-id="Broker/default/default"]"#)
        .await;

    // `rivulet apply -f`, as a user would, while the topology is open.
    let manifest = tempfile::NamedTempFile::new().expect("a manifest file");
    std::fs::write(
        manifest.path(),
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: shop\n",
    )
    .expect("written");
    let applied = support::cli(&server.api)
        .arg("apply")
        .arg("-f")
        .arg(manifest.path())
        .output()
        .await
        .expect("the rivulet binary runs");
    support::assert_succeeded(&applied, "rivulet apply");
    let shop = r#"svg#topology g.node[data-id="Broker/default/shop"]"#;
    browser.wait_css(shop).await;
    let ready = browser.wait_attr(shop, "data-ready").await;
    assert!(
        ["true", "unknown", "false"].contains(&ready.as_str()),
        "{ready}"
    );
    wait_for("the new broker to show Ready", WAIT, || async {
        let element = browser
            .client
            .find(fantoccini::Locator::Css(shop))
            .await
            .ok()?;
        (element.attr("data-ready").await.ok()?? == "true").then_some(())
    })
    .await;

    // Into its object view by keyboard: focus the node, press Enter.
    let node = browser.wait_css(shop).await;
    node.send_keys("\u{E007}").await.expect("Enter on the node");
    browser
        .wait_css("table#object-conditions tr.condition[data-type=\"Ready\"]")
        .await;
    assert!(
        browser.route().await.contains("/Broker/default/shop"),
        "{}",
        browser.route().await
    );
    let yaml = browser.wait_value("textarea#object-yaml").await;
    assert!(
        yaml.contains("kind: Broker") && yaml.contains("name: shop"),
        "{yaml}"
    );
    browser.client.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_object_applies_with_the_apis_validation_and_a_viewer_is_refused() {
    let server = TestServer::start_ready().await;
    server.apply(&broker("shop")).await;
    let viewer = viewer_token(&server).await;
    let Some(browser) = Browser::open(&server.api).await else {
        return;
    };
    browser.log_in().await;
    browser
        .goto("#/object/eventing.knative.dev~v1/Broker/default/shop")
        .await;
    let yaml = browser.wait_value("textarea#object-yaml").await;
    assert!(yaml.contains("name: shop"), "{yaml}");

    // An invalid change is refused with the validation's words, and nothing is stored.
    let invalid = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: shop\n  namespace: default\nspec:\n  delivery:\n    retry: -3\n";
    browser.set_value("textarea#object-yaml", invalid).await;
    browser.click("#object-apply").await;
    let refused = browser
        .wait_attr("#object-apply-result", "data-outcome")
        .await;
    assert_eq!(refused, "error");
    let message = browser.wait_text("#object-apply-result", "retry").await;
    assert!(
        message.contains("422") || message.to_lowercase().contains("invalid"),
        "{message}"
    );

    // A valid change is stored.
    let labelled = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: shop\n  namespace: default\n  labels:\n    team: checkout\n";
    browser.set_value("textarea#object-yaml", labelled).await;
    browser.click("#object-apply").await;
    browser
        .wait_text("#object-apply-result", "configured")
        .await;
    let stored = server
        .get("Broker", "default", "shop")
        .await
        .expect("the broker");
    assert_eq!(stored["metadata"]["labels"]["team"], "checkout");

    // A viewer sees the same page, and the server refuses the change.
    browser.click("#logout").await;
    browser.log_in_with(&viewer).await;
    browser.wait_text("#whoami", "viewer").await;
    browser
        .goto("#/object/eventing.knative.dev~v1/Broker/default/shop")
        .await;
    browser.wait_value("textarea#object-yaml").await;
    let relabelled = labelled.replace("checkout", "payments");
    browser.set_value("textarea#object-yaml", &relabelled).await;
    browser.click("#object-apply").await;
    let message = browser.wait_text("#object-apply-result", "viewer").await;
    assert!(message.contains("403"), "{message}");
    assert_eq!(
        browser
            .wait_attr("#object-apply-result", "data-outcome")
            .await,
        "error"
    );
    let stored = server
        .get("Broker", "default", "shop")
        .await
        .expect("the broker");
    assert_eq!(
        stored["metadata"]["labels"]["team"], "checkout",
        "nothing changed"
    );
    browser.client.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sent_event_shows_in_the_live_tap_and_opens_its_trace() {
    let (server, _subscriber) = TestServer::start_subscribed().await;
    let Some(browser) = Browser::open(&server.api).await else {
        return;
    };
    browser.log_in().await;
    browser.goto("#/tap").await;
    browser
        .wait_css("#tap-broker option[value=\"default/default\"]")
        .await;

    // The filter box checks CESQL as it is typed.
    browser.fill("#tap-filter", "type = ").await;
    assert_eq!(
        browser
            .wait_attr("#tap-filter-status[data-valid=\"false\"]", "data-valid")
            .await,
        "false"
    );
    browser
        .fill("#tap-filter", "type = 'com.example.order'")
        .await;
    browser
        .wait_css("#tap-filter-status[data-valid=\"true\"]")
        .await;
    browser.click("#tap-start").await;
    browser.wait_text("#tap-state", "listening").await;

    let skipped = TestEvent::new("console-other-1", "com.example.refund");
    server.send("default", "default", &skipped).await;
    let order = TestEvent::new("console-order-1", "com.example.order")
        .data("application/json", r#"{"total": 12}"#);
    server.send("default", "default", &order).await;
    let row = ".tap-event[data-id=\"console-order-1\"]";
    browser.wait_css(row).await;
    tokio::time::sleep(SETTLE).await;
    assert!(
        browser
            .client
            .find(fantoccini::Locator::Css(
                ".tap-event[data-id=\"console-other-1\"]"
            ))
            .await
            .is_err(),
        "the filter keeps other types out"
    );
    browser.wait_text(row, "com.example.order").await;

    // Its trace: the arrival and the delivery to trigger `all`.
    browser.click(&format!("{row} a")).await;
    wait_for("the trace route", WAIT, || async {
        (browser.route().await == "#/trace/console-order-1").then_some(())
    })
    .await;
    let timeline = browser.wait_text("#trace-timeline", "all").await;
    assert!(timeline.contains("delivered"), "{timeline}");
    let steps = browser
        .eval("return document.querySelectorAll('#trace-timeline li.step').length")
        .await;
    assert!(steps.as_u64().unwrap_or(0) >= 2, "{steps}");

    // The search finds it by type and outcome.
    browser.goto("#/trace").await;
    browser.fill("#trace-type", "com.example.order").await;
    browser.click("#trace-search").await;
    browser
        .wait_css("table#trace-results tr.trace-row[data-id=\"console-order-1\"]")
        .await;
    browser.client.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_type_shows_its_schema_and_downloads_a_scaffolded_function() {
    let server = TestServer::start_ready().await;
    let order = TestEvent::new("console-schema-1", "com.example.order.placed")
        .data("application/json", r#"{"orderId": "A-1", "total": 12.5}"#);
    server.send("default", "default", &order).await;
    let name = server
        .wait_eventtype_schema("default", "com.example.order.placed")
        .await;
    let Some(browser) = Browser::open(&server.api).await else {
        return;
    };
    browser.log_in().await;
    browser.goto("#/eventtypes").await;
    browser.fill("#eventtypes-search", "order.placed").await;
    let row = format!("tr.eventtype[data-name=\"{name}\"]");
    browser.click(&row).await;
    let schema = browser.wait_text("#eventtype-schema", "orderId").await;
    assert!(schema.contains("total"), "{schema}");
    browser.wait_text("#eventtype-example", "A-1").await;

    browser.click("button.scaffold[data-lang=\"rust\"]").await;
    let archive = browser.downloaded(".tar.gz").await;
    let bytes = std::fs::read(&archive).expect("the download is readable");
    let mut files = Vec::new();
    let mut entries = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    for entry in entries.entries().expect("a tar archive") {
        let mut entry = entry.expect("an entry");
        let path = entry.path().expect("a path").display().to_string();
        let mut text = String::new();
        entry.read_to_string(&mut text).expect("text");
        files.push((path, text));
    }
    let file = |suffix: &str| {
        files
            .iter()
            .find(|(path, _)| path.ends_with(suffix))
            .map(|(_, text)| text.as_str())
            .unwrap_or_else(|| {
                panic!(
                    "{suffix} in {:?}",
                    files.iter().map(|f| &f.0).collect::<Vec<_>>()
                )
            })
    };
    assert!(file("src/main.rs").contains("com.example.order.placed"));
    let payload = file("src/payload.rs");
    assert!(
        payload.contains("order_id") && payload.contains("total"),
        "the payload is typed from the schema: {payload}"
    );
    assert!(files.iter().any(|(path, _)| path.ends_with("Cargo.toml")));
    browser.client.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_move_between_pages_and_the_layout_fits_a_phone_in_both_themes() {
    let server = TestServer::start_ready().await;
    let Some(browser) = Browser::open(&server.api).await else {
        return;
    };
    browser.log_in().await;
    browser.wait_css("svg#topology").await;
    // Keys are read from the page body, not while typing.
    let body = browser.wait_css("body").await;
    for (keys, route) in [
        ("ge", "#/eventtypes"),
        ("gl", "#/tap"),
        ("gr", "#/trace"),
        ("go", "#/objects"),
        ("gt", "#/topology"),
    ] {
        body.send_keys(keys).await.expect("typing keys");
        wait_for(&format!("{keys} to open {route}"), WAIT, || async {
            (browser.route().await == route).then_some(())
        })
        .await;
    }
    // Every nav link is reachable with Tab.
    let reachable = browser
        .eval(
            "return [...document.querySelectorAll('#nav a')].every(a => a.tabIndex >= 0 && a.offsetParent !== null)",
        )
        .await;
    assert_eq!(reachable, json!(true));

    let theme = browser.wait_attr("html", "data-theme").await;
    browser.click("#theme-toggle").await;
    let other = if theme == "dark" { "light" } else { "dark" };
    browser
        .wait_css(&format!("html[data-theme=\"{other}\"]"))
        .await;

    browser.resize((375, 740)).await;
    for route in [
        "#/topology",
        "#/objects",
        "#/eventtypes",
        "#/tap",
        "#/trace",
    ] {
        browser.goto(route).await;
        browser.wait_css("main#main h1").await;
        let overflow = browser
            .eval("return document.documentElement.scrollWidth - window.innerWidth")
            .await;
        assert!(
            overflow.as_i64().unwrap_or(i64::MAX) <= 0,
            "{route} is wider than a phone by {overflow}px"
        );
    }
    browser.resize(DESKTOP).await;
    browser.client.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topology_of_two_hundred_objects_renders_every_node() {
    let server = TestServer::start_ready().await;
    let subscriber = Subscriber::start().await;
    // 10 brokers with 19 triggers each: 200 objects beside broker default.
    for b in 0..10 {
        let name = format!("shop-{b}");
        server.apply(&broker(&name)).await;
        for t in 0..19 {
            let trigger = support::trigger(
                "default",
                &format!("{name}-t{t}"),
                &name,
                &subscriber.url_at(&format!("/{b}/{t}")),
            );
            server.apply(&trigger).await;
        }
    }
    let Some(browser) = Browser::open(&server.api).await else {
        return;
    };
    browser.log_in().await;
    let started = Instant::now();
    let nodes = wait_for("every object in the topology", WAIT, || async {
        let count = browser
            .eval("const s = document.querySelector('svg#topology'); return s ? s.querySelectorAll('g.node').length : 0")
            .await
            .as_u64()?;
        (count >= 200).then_some(count)
    })
    .await;
    let render_ms = browser.wait_attr("svg#topology", "data-render-ms").await;
    // Reported, not asserted: timings belong in benchmarks (docs/console.md has the figure).
    println!(
        "topology: {nodes} nodes drawn in {render_ms} ms (page ready after {:?})",
        started.elapsed()
    );
    for id in [
        "Broker/default/shop-9",
        "Trigger/default/shop-9-t18",
        "Trigger/default/shop-0-t0",
    ] {
        browser
            .wait_css(&format!("svg#topology g.node[data-id=\"{id}\"]"))
            .await;
    }
    browser.client.close().await.ok();
}

/// Takes a screenshot of every page, in both themes and at phone width, each after the page
/// showed its content; with `RIVULET_UPDATE_SCREENSHOTS=1` they replace those docs/console.md
/// shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_renders_for_the_screenshots_in_the_docs() {
    let (server, subscriber) = TestServer::start_subscribed().await;
    let mut orders = support::trigger("default", "orders", "default", &subscriber.url());
    orders["spec"]["filter"] = json!({"attributes": {"type": "com.example.order.placed"}});
    server.apply(&orders).await;
    server
        .apply(&json!({
            "apiVersion": "sources.knative.dev/v1",
            "kind": "PingSource",
            "metadata": {"namespace": "default", "name": "heartbeat"},
            "spec": {
                "schedule": "* * * * *",
                "data": "{\"beat\": true}",
                "sink": {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "default"}}
            }
        }))
        .await;
    for i in 0..5 {
        let order = TestEvent::new(&format!("order-{i}"), "com.example.order.placed")
            .source("/shop/checkout")
            .data(
                "application/json",
                format!(r#"{{"orderId": "A-{i}", "total": {i}.5}}"#),
            );
        server.send("default", "default", &order).await;
    }
    let Some(browser) = Browser::open(&server.api).await else {
        return;
    };
    browser.log_in().await;
    let update = std::env::var_os("RIVULET_UPDATE_SCREENSHOTS").is_some();
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/console");
    // Both themes are shot; the page's text picks which go in the docs.
    let shown_in_docs =
        std::fs::read_to_string(docs.with_extension("md")).expect("docs/console.md");
    let pages = [
        (
            "topology",
            "#/topology",
            "svg#topology g.node[data-id=\"Trigger/default/orders\"]",
        ),
        // Kinds of every version: EventType is served in v1beta3 beside Broker in v1.
        ("objects", "#/objects", "tr.object[data-kind=\"EventType\"]"),
        (
            "object",
            "#/object/eventing.knative.dev~v1/Trigger/default/orders",
            "table#object-conditions tr.condition",
        ),
        ("eventtypes", "#/eventtypes", "tr.eventtype"),
        ("trace", "#/trace/order-4", "#trace-timeline li.step"),
        (
            "tap",
            "#/tap",
            "#tap-broker option[value=\"default/default\"]",
        ),
    ];
    for theme in ["light", "dark"] {
        for (name, route, shown) in pages {
            browser.goto(route).await;
            browser.wait_css(shown).await;
            let current = browser.wait_attr("html", "data-theme").await;
            if current != theme {
                browser.click("#theme-toggle").await;
                browser
                    .wait_css(&format!("html[data-theme=\"{theme}\"]"))
                    .await;
            }
            if name == "eventtypes" {
                browser.click("tr.eventtype").await;
                browser.wait_css("#eventtype-schema").await;
            }
            if name == "tap" {
                browser.click("#tap-start").await;
                browser.wait_text("#tap-state", "listening").await;
                let order = TestEvent::new(&format!("tap-{theme}"), "com.example.order.placed")
                    .data("application/json", r#"{"orderId": "A-9", "total": 9.5}"#);
                server.send("default", "default", &order).await;
                browser
                    .wait_css(&format!(".tap-event[data-id=\"tap-{theme}\"]"))
                    .await;
            }
            tokio::time::sleep(SETTLE).await;
            let png = browser.screenshot().await;
            assert!(
                png.starts_with(b"\x89PNG") && png.len() > 10_000,
                "{name} in {theme}"
            );
            let file = format!("{name}-{theme}.png");
            if update && shown_in_docs.contains(&format!("console/{file}")) {
                std::fs::write(docs.join(file), &png).expect("written");
            }
        }
    }
    browser.resize((390, 844)).await;
    browser.goto("#/topology").await;
    browser.wait_css("svg#topology g.node").await;
    tokio::time::sleep(SETTLE).await;
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"));
    if update {
        std::fs::write(docs.join("topology-phone.png"), &png).expect("written");
    }
    browser.client.close().await.ok();
}
