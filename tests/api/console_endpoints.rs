//! The API calls the web console is built on, over real HTTP: discovery of the served kinds,
//! an object as YAML, `POST /apply` (with the CLI's validation and skipping, admin only),
//! `GET /cesql/check`, the scaffold download, and the console's files served without a token
//! under a strict Content-Security-Policy.

use rivulet_testkit as support;

use std::io::Read as _;

use reqwest::Method;
use serde_json::{Value, json};
use support::{TestEvent, TestServer, api_request, http};

/// A request with `token` instead of the test suite's admin token.
fn call(method: Method, url: String, token: &str) -> reqwest::RequestBuilder {
    http().request(method, url).bearer_auth(token)
}

async fn viewer_token(server: &TestServer) -> String {
    let response = api_request(Method::POST, format!("{}/auth/tokens", server.api))
        .json(&json!({"name": "reader", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    body["token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn discovery_names_every_served_kind_with_its_plural() {
    let server = TestServer::start().await;
    let (status, groups) = server.get_json("/apis").await;
    assert_eq!(status, 200, "{groups}");
    assert_eq!(groups["kind"], "APIGroupList");
    let eventing = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "eventing.knative.dev")
        .expect("the eventing group");
    assert_eq!(eventing["preferredVersion"]["version"], "v1");
    let versions: Vec<&str> = eventing["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert!(
        versions.contains(&"v1beta3") && versions.contains(&"v1beta2"),
        "{versions:?}"
    );

    let (status, v1) = server.get_json("/apis/eventing.knative.dev/v1").await;
    assert_eq!(status, 200);
    assert_eq!(v1["kind"], "APIResourceList");
    let kinds: Vec<(&str, &str)> = v1["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["kind"].as_str().unwrap(), r["name"].as_str().unwrap()))
        .collect();
    assert!(kinds.contains(&("Broker", "brokers")) && kinds.contains(&("Trigger", "triggers")));
    let (_, v1beta3) = server.get_json("/apis/eventing.knative.dev/v1beta3").await;
    assert!(v1beta3["resources"].to_string().contains("eventtypes"));
    let (_, core) = server.get_json("/api/v1").await;
    assert!(
        core["resources"].to_string().contains("configmaps"),
        "{core}"
    );
    let (status, unknown) = server.get_json("/apis/example.com/v9").await;
    assert_eq!(status, 404);
    assert!(
        unknown["message"].as_str().unwrap().contains("GET /apis"),
        "{unknown}"
    );
}

#[tokio::test]
async fn an_object_reads_as_yaml_when_asked() {
    let server = TestServer::start_ready().await;
    let url = format!(
        "{}/apis/eventing.knative.dev/v1/namespaces/default/brokers/default",
        server.api
    );
    let response = api_request(Method::GET, url)
        .header("accept", "application/yaml")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/yaml");
    let text = response.text().await.unwrap();
    assert!(
        text.starts_with("apiVersion: eventing.knative.dev/v1\n"),
        "{text}"
    );
    assert!(
        text.contains("kind: Broker") && text.contains("type: Ready"),
        "{text}"
    );
}

#[tokio::test]
async fn apply_stores_each_object_skips_foreign_kinds_and_reports_the_first_refusal() {
    let server = TestServer::start_ready().await;
    let manifests = "\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: shop
---
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: broken
spec:
  broker: shop
  subscriber: {}
";
    let response = api_request(Method::POST, format!("{}/apply", server.api))
        .header("content-type", "application/yaml")
        .body(manifests)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "Invalid");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("trigger default/broken: spec.subscriber"),
        "{body}"
    );
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{body}");
    assert_eq!(results[0]["outcome"], "created");
    assert_eq!(results[1]["outcome"], "failed");
    assert!(
        body["skipped"][0].as_str().unwrap().contains("Namespace"),
        "{body}"
    );
    assert!(server.get("Broker", "default", "shop").await.is_some());
    assert!(server.get("Trigger", "default", "broken").await.is_none());

    // Again, valid: the broker is configured (not created), the trigger created.
    let fixed = manifests.replace(
        "subscriber: {}",
        "subscriber:\n    uri: http://127.0.0.1:9/",
    );
    let response = api_request(Method::POST, format!("{}/apply", server.api))
        .body(fixed)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let outcomes: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["configured", "created"]);

    // Not YAML at all, and nothing of a served kind.
    let response = api_request(Method::POST, format!("{}/apply", server.api))
        .body("kind: [unclosed")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = api_request(Method::POST, format!("{}/apply", server.api))
        .body("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("Namespace"),
        "{body}"
    );
}

#[tokio::test]
async fn a_viewer_may_check_cesql_but_not_apply() {
    let server = TestServer::start_ready().await;
    let viewer = viewer_token(&server).await;
    let response = call(Method::POST, format!("{}/apply", server.api), &viewer)
        .body("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: sneaky\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("role viewer"),
        "{body}"
    );
    assert!(server.get("Broker", "default", "sneaky").await.is_none());

    let check = |expression: &str| {
        let url = format!("{}/cesql/check", server.api);
        let viewer = viewer.clone();
        let expression = expression.to_string();
        async move {
            let url = reqwest::Url::parse_with_params(&url, [("expression", expression)]).unwrap();
            let response = call(Method::GET, url.to_string(), &viewer)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    assert_eq!(
        check("type = 'com.example.order' AND EXISTS subject").await,
        json!({"valid": true})
    );
    let bad = check("type = ").await;
    assert_eq!(bad["valid"], false);
    assert!(bad["error"].as_str().unwrap().contains("position"), "{bad}");
    let response = call(Method::GET, format!("{}/cesql/check", server.api), &viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "no expression");

    let response = call(
        Method::GET,
        format!("{}/cesql/check?expression=true", server.api),
        "rvt_wrong",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 401, "no token, no check");
}

#[tokio::test]
async fn a_scaffold_downloads_as_a_project_archive() {
    let server = TestServer::start_ready().await;
    let order = TestEvent::new("scaffold-1", "com.example.order.placed")
        .data("application/json", r#"{"orderId": "A-1", "total": 12.5}"#);
    server.send("default", "default", &order).await;
    let name = server
        .wait_eventtype_schema("default", "com.example.order.placed")
        .await;
    let url = format!("{}/scaffold/default/{name}?lang=python", server.api);
    let response = api_request(Method::GET, url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/gzip");
    let disposition = response.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        disposition,
        format!("attachment; filename=\"{name}-function-python.tar.gz\"")
    );
    let bytes = response.bytes().await.unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let mut app = None;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        assert!(
            path.starts_with(&format!("{name}-function-python/")),
            "{path}"
        );
        if path.ends_with("app.py") {
            let mut text = String::new();
            entry.read_to_string(&mut text).unwrap();
            app = Some(text);
        }
    }
    let app = app.expect("app.py in the archive");
    assert!(app.contains("order_id") || app.contains("orderId"), "{app}");

    for (path, status) in [
        (format!("/scaffold/default/{name}?lang=cobol"), 400),
        (format!("/scaffold/default/{name}"), 400),
        ("/scaffold/default/no-such-type?lang=rust".to_string(), 404),
    ] {
        let response = api_request(Method::GET, format!("{}{path}", server.api))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{path}");
        let body: Value = response.json().await.unwrap();
        assert!(!body["message"].as_str().unwrap().is_empty());
    }
}

#[tokio::test]
async fn the_console_files_need_no_token_and_carry_a_strict_policy() {
    let server = TestServer::start().await;
    let anonymous = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = anonymous
        .get(format!("{}/ui/", server.api))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    let html = page.text().await.unwrap();
    assert!(html.contains("console.js"));
    for file in ["console.js", "console.css", "favicon.svg"] {
        let response = anonymous
            .get(format!("{}/ui/{file}", server.api))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{file}");
    }
    let redirect = anonymous
        .get(format!("{}/ui", server.api))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 308);
    // Nothing else under /ui/, and everything with data still wants a token.
    for path in [
        "/ui/admin.token",
        "/ui/../admin.token",
        "/graph",
        "/journal/events",
    ] {
        let response = anonymous
            .get(format!("{}{path}", server.api))
            .send()
            .await
            .unwrap();
        assert!(
            [401, 404].contains(&response.status().as_u16()),
            "{path}: {}",
            response.status()
        );
    }
    let graph = anonymous
        .get(format!("{}/graph", server.api))
        .send()
        .await
        .unwrap();
    assert_eq!(graph.status(), 401);
}
