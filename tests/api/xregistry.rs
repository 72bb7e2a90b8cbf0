//! The read-only xRegistry view at `/xregistry`: registry, message groups per broker, messages
//! with the CloudEvents envelope, schema groups with inferred schemas and their versions,
//! `?inline=` and `?filter=`.

use rivulet_testkit as support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{TestEvent, TestServer, WAIT, wait_for};

fn event(id: &str, ty: &str, data: Value) -> TestEvent {
    TestEvent::new(id, ty)
        .source("/xr")
        .data("application/json", data.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_documents_follow_the_xregistry_model() {
    let server = TestServer::start_with(|options| {
        options.discovery.min_write_interval = Duration::from_millis(20);
    })
    .await;
    server.create_broker("default", "shop", Value::Null).await;
    server
        .send(
            "default",
            "shop",
            &event("1", "com.example.order", json!({"id": 1})),
        )
        .await;
    server
        .send(
            "default",
            "shop",
            &event("2", "com.example.order", json!({"id": 2, "note": "x"})),
        )
        .await;
    server
        .send(
            "default",
            "default",
            &event("3", "com.example.ping", json!({"ok": true})),
        )
        .await;

    // Wait until both schemas exist (the order one at version 2).
    let root = wait_for("two schemas, one at version 2", WAIT, || async {
        let (_, root) = server.get_json("/xregistry?inline=*").await;
        let schemas: Vec<Value> = root["schemagroups"]
            .as_object()?
            .values()
            .flat_map(|g| {
                g["schemas"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default()
                    .into_values()
            })
            .collect();
        (schemas.len() == 2 && schemas.iter().any(|s| s["versionid"] == "2")).then_some(root)
    })
    .await;
    assert_eq!(root["xid"], "/");
    assert_eq!(root["self"], format!("{}/xregistry", server.api));
    assert!(root["specversion"].is_string() && root["epoch"].is_u64());
    assert_eq!(root["messagegroupscount"], 2);
    let shop = &root["messagegroups"]["default.shop"];
    assert_eq!(shop["messagegroupid"], "default.shop");
    assert_eq!(shop["xid"], "/messagegroups/default.shop");
    assert_eq!(shop["envelope"], "CloudEvents/1.0");
    assert_eq!(shop["messagescount"], 1);
    let (message_id, message) = shop["messages"].as_object().unwrap().iter().next().unwrap();
    assert_eq!(message["messageid"], *message_id);
    assert_eq!(message["envelope"], "CloudEvents/1.0");
    assert_eq!(
        message["envelopemetadata"]["type"]["value"],
        "com.example.order"
    );
    assert_eq!(message["envelopemetadata"]["source"]["value"], "/xr");
    assert_eq!(message["dataschemaformat"], "JSONSchema/draft-07");
    let schema_xid = message["dataschemaxid"].as_str().unwrap();
    assert_eq!(
        schema_xid,
        format!("/schemagroups/default.shop/schemas/{message_id}")
    );

    let schema = &root["schemagroups"]["default.shop"]["schemas"][message_id];
    assert_eq!(schema["format"], "JSONSchema/draft-07");
    assert_eq!(schema["versionid"], "2");
    assert_eq!(schema["versionscount"], 2);
    assert_eq!(schema["versions"]["1"]["isdefault"], false);
    assert_eq!(schema["versions"]["2"]["isdefault"], true);
    assert_eq!(schema["versions"]["1"]["schema"]["required"], json!(["id"]));
    assert!(schema["schema"]["properties"]["note"].is_object());

    // Without ?inline, nested collections are only a URL and a count.
    let (status, plain) = server.get_json("/xregistry").await;
    assert_eq!(status, 200);
    assert!(plain.get("messagegroups").is_none(), "{plain}");
    assert_eq!(
        plain["messagegroupsurl"],
        format!("{}/xregistry/messagegroups", server.api)
    );
    assert_eq!(plain["schemagroupscount"], 2);
    let (_, groups) = server
        .get_json("/xregistry/messagegroups?inline=messages")
        .await;
    assert_eq!(groups.as_object().unwrap().len(), 2);
    assert!(groups["default.shop"]["messages"].is_object());
    let (_, groups) = server.get_json("/xregistry/messagegroups").await;
    assert!(groups["default.shop"].get("messages").is_none());
    assert_eq!(groups["default.shop"]["messagescount"], 1);

    // One message, one schema document, a version's metadata.
    let (status, one) = server
        .get_json(&format!(
            "/xregistry/messagegroups/default.shop/messages/{message_id}"
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(one["messageid"], *message_id);
    let (status, document) = server.get_json(&format!("/xregistry{schema_xid}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        document["$schema"],
        "http://json-schema.org/draft-07/schema#"
    );
    let (_, details) = server
        .get_json(&format!("/xregistry{schema_xid}$details"))
        .await;
    assert_eq!(details["schemaid"], *message_id);
    assert!(
        details.get("schema").is_none(),
        "documents are not inlined unless asked"
    );
    let (_, versions) = server
        .get_json(&format!("/xregistry{schema_xid}/versions"))
        .await;
    assert_eq!(versions.as_object().unwrap().len(), 2);
    let (_, v1) = server
        .get_json(&format!("/xregistry{schema_xid}/versions/1"))
        .await;
    assert_eq!(v1["required"], json!(["id"]));

    // Filters.
    let (_, filtered) = server.get_json(
"/xregistry?inline=*&filter=messagegroups.messages.envelopemetadata.type.value=com.example.p*").await;
    assert_eq!(filtered["messagegroupscount"], 1);
    assert!(
        filtered["messagegroups"]["default.default"].is_object(),
        "{filtered}"
    );
    let (_, filtered) = server
        .get_json("/xregistry/messagegroups?filter=messagegroupid=default.shop")
        .await;
    assert_eq!(filtered.as_object().unwrap().len(), 1);
    let (_, filtered) = server
        .get_json("/xregistry/messagegroups?filter=name=nothing")
        .await;
    assert!(filtered.as_object().unwrap().is_empty());

    let (status, _) = server
        .get_json("/xregistry/messagegroups/nope/messages")
        .await;
    assert_eq!(status, 404);
    let (status, _) = server.get_json("/xregistry/widgets").await;
    assert_eq!(status, 404);
    let (status, model) = server.get_json("/xregistry/model").await;
    assert_eq!(status, 200);
    assert!(model["groups"]["schemagroups"]["resources"]["schemas"].is_object());
    server.shutdown().await;
}
