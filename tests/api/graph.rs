//! `rivulet graph` and `GET /graph`: the topology of live objects with event rates, as text,
//! DOT and SVG, read with a viewer token, refused without one; and the example of
//! docs/graph.md.

use rivulet_testkit as support;

use std::path::Path;
use std::process::Output;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Subscriber, TestEvent, TestServer, WAIT, api_request, http, wait_for};

/// Runs `rivulet graph` with `args` against `server`'s resource API.
async fn graph(server: &TestServer, args: &[&str]) -> Output {
    support::cli(&server.api)
        .arg("graph")
        .args(args)
        .output()
        .await
        .expect("the rivulet binary runs")
}

fn stdout_of(output: &Output, what: &str) -> String {
    support::assert_succeeded(output, what);
    String::from_utf8(output.stdout.clone()).expect("the output is UTF-8")
}

/// The rate on the arrow into the line naming `target` (`└─ 1.50/s ─▶ Trigger orders ...`):
/// `None` when there is no such line or the rate is not measured yet.
fn rate_into(text: &str, target: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.contains(&format!("─▶ {target}")))?;
    let (_, after) = line.split_once("─ ")?;
    let (rate, _) = after.split_once(" ─▶")?;
    rate.strip_suffix("/s")?.parse().ok()
}

fn webhook(namespace: &str, name: &str, broker: &str) -> Value {
    json!({
        "apiVersion": "sources.rivulet.dev/v1alpha1",
        "kind": "WebhookSource",
        "metadata": {"namespace": namespace, "name": name},
        "spec": {
            "eventType": "com.example.order",
            "sink": {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": broker}}
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graph_shows_the_flow_with_filters_and_rates_in_text_dot_and_svg() {
    let server = TestServer::start().await;
    let subscriber = Subscriber::start().await;
    server.create_broker("default", "shop", Value::Null).await;
    let mut orders = support::trigger("default", "orders", "shop", &subscriber.url());
    orders["spec"]["filter"] = json!({"attributes": {"type": "com.example.order"}});
    server.create_trigger(&orders).await;
    server
        .create_trigger(&support::trigger(
            "default",
            "audit",
            "shop",
            &subscriber.url_at("/audit"),
        ))
        .await;
    server.apply(&webhook("default", "hook", "shop")).await;
    let source = server.wait_ready("WebhookSource", "default", "hook").await;
    let hook_url = source["status"]["address"]["url"]
        .as_str()
        .expect("the webhook's address")
        .to_string();
    // A trigger on a broker that does not exist: shown, with why it is not ready.
    server
        .apply(&support::trigger(
            "default",
            "stray",
            "nowhere",
            &subscriber.url(),
        ))
        .await;
    support::wait_status(&server.api, "Trigger", "default", "stray", "False").await;

    // Orders through the webhook, other events straight to the broker.
    for n in 0..6 {
        let response = http()
            .post(&hook_url)
            .json(&json!({"order": n}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202);
    }
    for n in 0..4 {
        server
            .send(
                "default",
                "shop",
                &TestEvent::new(&format!("other-{n}"), "com.example.other"),
            )
            .await;
    }
    subscriber.wait_for(6 + 10).await;

    // Rates show once each series has been measured for a second.
    let measured = [
        "Broker shop",
        "Trigger orders",
        "Trigger audit",
        "Channel embedded",
    ];
    let text = wait_for("rates on the arrows", WAIT, || async {
        let text = stdout_of(&graph(&server, &[]).await, "rivulet graph");
        measured
            .iter()
            .all(|target| rate_into(&text, target).is_some_and(|rate| rate > 0.0))
            .then_some(text)
    })
    .await;
    // source → broker → trigger [filter] → subscriber, each arrow with a rate.
    for expected in [
        "namespace default",
        "  WebhookSource hook",
        "─▶ Broker shop",
        "─▶ Channel embedded",
        "─▶ Trigger orders [type=com.example.order]",
        "─▶ Trigger audit [all events]",
        &format!("─▶ {}", subscriber.url()),
        &format!("─▶ {}", subscriber.url_at("/audit")),
        "Broker nowhere  (not ready: does not exist)",
        "─▶ Trigger stray [all events]  (not ready: ",
    ] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }

    // The same graph in JSON: counts along the edges.
    let (status, answer) = server.get_json("/graph?namespace=default").await;
    assert_eq!(status, 200, "{answer}");
    let edge = |from: &str, to: &str| {
        answer["edges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["from"] == from && e["to"] == to)
            .cloned()
            .unwrap_or_else(|| panic!("edge {from} -> {to} in {answer:#}"))
    };
    assert_eq!(
        edge("Broker/default/shop", "Trigger/default/orders")["count"],
        6
    );
    assert_eq!(
        edge("Broker/default/shop", "Trigger/default/orders")["label"],
        "type=com.example.order"
    );
    assert_eq!(
        edge("Broker/default/shop", "Trigger/default/audit")["count"],
        10
    );
    assert_eq!(
        edge("WebhookSource/default/hook", "Broker/default/shop")["count"],
        6
    );
    assert_eq!(
        edge("Broker/default/shop", "channel/default/shop")["count"],
        10
    );

    // DOT: every edge, in a digraph Graphviz takes.
    let dot = stdout_of(&graph(&server, &["-o", "dot"]).await, "graph -o dot");
    assert!(dot.starts_with("digraph rivulet {") && dot.trim_end().ends_with('}'));
    assert_eq!(dot.matches('{').count(), dot.matches('}').count(), "{dot}");
    for (from, to) in [
        ("WebhookSource/default/hook", "Broker/default/shop"),
        ("Broker/default/shop", "channel/default/shop"),
        ("Broker/default/shop", "Trigger/default/orders"),
        ("Broker/default/shop", "Trigger/default/audit"),
        (
            "Trigger/default/orders",
            &format!("url:{}", subscriber.url()),
        ),
    ] {
        assert!(
            dot.contains(&format!("\"{from}\" -> \"{to}\" [label=\"")),
            "{from} -> {to} in:\n{dot}"
        );
    }

    // SVG: well formed, every node named.
    let svg = stdout_of(&graph(&server, &["-o", "svg"]).await, "graph -o svg");
    check_svg(&svg);
    for name in [
        "hook", "shop", "orders", "audit", "stray", "nowhere", "embedded",
    ] {
        assert!(
            svg.contains(&format!(">{name}</text>")),
            "{name} in:\n{svg}"
        );
    }
    assert!(svg.contains("[type=com.example.order]"), "{svg}");
}

/// Tags balance, the document has one root, and `&` only starts an entity.
fn check_svg(svg: &str) {
    assert!(
        svg.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg "),
        "{svg}"
    );
    assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
    let mut open = Vec::new();
    let mut rest = svg.split_once("?>").expect("a declaration").1;
    while let Some(start) = rest.find('<') {
        let end = rest[start..].find('>').expect("a closed tag") + start;
        let tag = &rest[start + 1..end];
        rest = &rest[end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(open.pop(), Some(name.to_string()), "in:\n{svg}");
        } else if !tag.ends_with('/') {
            open.push(tag.split(' ').next().unwrap_or_default().to_string());
        }
    }
    assert!(open.is_empty(), "unclosed {open:?}");
    for (at, _) in svg.match_indices('&') {
        assert!(
            ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                .iter()
                .any(|entity| svg[at..].starts_with(entity)),
            "a bare & at {at}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_read_the_graph_and_requests_without_a_token_are_refused() {
    let server = TestServer::start_ready().await;
    let url = format!("{}/graph", server.api);
    let created = support::json_of(
        api_request(Method::POST, format!("{}/auth/tokens", server.api))
            .json(&json!({"name": "wallboard", "role": "viewer"})),
    )
    .await;
    let viewer = created["token"].as_str().expect("a token");
    let answer = http()
        .get(&url)
        .bearer_auth(viewer)
        .send()
        .await
        .expect("the server answers");
    assert_eq!(answer.status().as_u16(), 200);
    let graph: Value = answer.json().await.unwrap();
    assert!(
        graph["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == "Broker/default/default" && n["ready"] == true),
        "{graph:#}"
    );
    assert_eq!(support::status_of(http().get(&url)).await, 401);
    assert_eq!(
        support::status_of(http().get(&url).bearer_auth("rvt_not_a_token")).await,
        401
    );
    // The CLI with the viewer token, and a query the graph does not take.
    let output = support::cli(&server.api)
        .args(["graph", "-A"])
        .env("RIVULET_TOKEN", viewer)
        .output()
        .await
        .unwrap();
    assert!(stdout_of(&output, "graph -A as a viewer").contains("  Broker default"));
    for query in ["broker=x", "namespace=a%2Fb"] {
        assert_eq!(
            support::status_of(api_request(Method::GET, format!("{url}?{query}"))).await,
            400,
            "{query}"
        );
    }
    // Without a token the CLI says what is missing.
    let output = tokio::process::Command::new(support::binary())
        .args([
            "graph",
            "--server",
            &server.api,
            "--data-dir",
            "/nonexistent",
        ])
        .env_remove("RIVULET_TOKEN")
        .env_remove("RIVULET_SERVER")
        .env("RIVULET_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("no token"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_shows_its_objects_and_what_they_point_at() {
    let server = TestServer::start_ready().await;
    server.create_broker("team", "inbox", Value::Null).await;
    let display = json!({
        "apiVersion": "sinks.rivulet.dev/v1alpha1",
        "kind": "EventDisplaySink",
        "metadata": {"namespace": "shared", "name": "show"}
    });
    server.apply(&display).await;
    let mut trigger = support::trigger("team", "all", "inbox", "http://unused.invalid/");
    trigger["spec"]["subscriber"] = json!({"ref": {
        "apiVersion": "sinks.rivulet.dev/v1alpha1", "kind": "EventDisplaySink",
        "name": "show", "namespace": "shared"
    }});
    server.create_trigger(&trigger).await;

    let team = stdout_of(&graph(&server, &["-n", "team"]).await, "graph -n team");
    assert!(
        team.starts_with("namespace team\n  Broker inbox\n"),
        "{team}"
    );
    // The sink in another namespace is shown as it is (ready), not as missing.
    assert!(team.contains("─▶ EventDisplaySink shared/show"), "{team}");
    assert!(!team.contains("not ready"), "{team}");
    assert!(!team.contains("Broker default"), "{team}");
    let all = stdout_of(&graph(&server, &[]).await, "graph");
    assert!(all.contains("namespace default\n  Broker default"), "{all}");
    assert!(all.contains("namespace team\n  Broker inbox"), "{all}");
    let empty = stdout_of(&graph(&server, &["-n", "nobody"]).await, "graph -n nobody");
    assert_eq!(
        empty,
        "no sources, brokers, triggers or sinks in namespace nobody\n"
    );
}

/// The first fenced block of `language` in `page` whose text starts with `start`.
fn fenced_block(page: &str, language: &str, start: &str) -> String {
    let fence = format!("```{language}\n");
    page.split(&fence)
        .skip(1)
        .filter_map(|rest| rest.split_once("```").map(|(block, _)| block))
        .find(|block| block.starts_with(start))
        .unwrap_or_else(|| panic!("a ```{language} block starting with {start:?}"))
        .to_string()
}

/// Text output with every rate replaced by `R`, so that outputs taken at different times
/// compare.
fn without_rates(text: &str) -> String {
    text.lines()
        .map(|line| {
            let mut line = line.to_string();
            if let (Some(start), Some(end)) = (line.find("─ "), line.find(" ─▶"))
                && start < end
            {
                line.replace_range(start + "─ ".len()..end, "R");
            }
            if let Some(start) = line.find("(accepted ")
                && let Some(end) = line[start..].find(')')
            {
                line.replace_range(start + "(accepted ".len()..start + end, "R");
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_of_the_graph_page_prints_what_the_page_shows() {
    let page = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/graph.md"))
        .expect("docs/graph.md");
    let manifests = fenced_block(&page, "yaml", "apiVersion:");
    let shown = fenced_block(&page, "text", "$ rivulet graph -n demo\n");
    let (command, expected) = shown.split_once('\n').unwrap();

    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = support::write_file(dir.path(), "example.yaml", &manifests);
    let applied = support::cli(&server.api)
        .args(["apply", "-f", file.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    support::assert_succeeded(&applied, "apply the page's example");
    for (kind, name) in [
        ("Broker", "shop"),
        ("PingSource", "heartbeat"),
        ("WebhookSource", "orders-in"),
        ("EventDisplaySink", "show"),
        ("Trigger", "orders"),
        ("Trigger", "everything"),
    ] {
        server.wait_ready(kind, "demo", name).await;
    }
    let args: Vec<&str> = command
        .trim_start_matches("$ rivulet ")
        .split_whitespace()
        .collect();
    let output = support::cli(&server.api)
        .args(&args)
        .output()
        .await
        .unwrap();
    let printed = stdout_of(&output, command);
    assert_eq!(
        without_rates(&printed),
        without_rates(expected),
        "the page shows:\n{expected}\nrivulet printed:\n{printed}"
    );
}

#[test]
fn rates_are_read_and_blanked_on_the_arrows() {
    let text = "  └─ 1.50/s ─▶ Trigger orders [type=a]\n     └─ - ─▶ EventDisplaySink show (accepted 2.00/s)";
    assert_eq!(rate_into(text, "Trigger orders"), Some(1.5));
    assert_eq!(rate_into(text, "EventDisplaySink show"), None);
    assert_eq!(
        without_rates(text),
        "  └─ R ─▶ Trigger orders [type=a]\n     └─ R ─▶ EventDisplaySink show (accepted R)"
    );
}
