//! The channel and subscription parts of Knative's eventing specs (control plane: channel and
//! subscription lifecycles, topology-based routing, event delivery), one test per rule.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_with_the_same_destination_each_deliver_with_the_data_unchanged() {
    let server = TestServer::start().await;
    let subscriber = Subscriber::start().await;
    server.apply(&channel(IN_MEMORY, "c", json!({}))).await;
    for name in ["one", "two"] {
        server
            .apply(&subscription(
                name,
                IN_MEMORY,
                "c",
                json!({"subscriber": {"uri": subscriber.url()}}),
            ))
            .await;
        server.wait_ready("Subscription", "default", name).await;
    }
    let url = address(&server, "InMemoryChannel", "c").await;
    let data = r#"{"a": 1,   "b": [true, null], "c": "ü"}"#;
    let status = TestEvent::new("same-1", "com.example.order")
        .data("application/json", data)
        .post_to(&url)
        .await;
    assert_eq!(status, 202);
    let got = subscriber.wait_for(2).await;
    assert!(got.iter().all(|r| r.id() == "same-1"));
    for request in got {
        assert_eq!(
            request.event().data.as_deref(),
            Some(data.as_bytes()),
            "the data is as sent"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_made_before_its_channel_is_not_ready_until_the_channel_is() {
    let server = TestServer::start().await;
    let subscriber = Subscriber::start().await;
    server
        .apply(&subscription(
            "early",
            EMBEDDED,
            "later",
            json!({"subscriber": {"uri": subscriber.url()}}),
        ))
        .await;
    let waiting = server
        .wait_condition("Subscription", "default", "early", "ChannelReady", "False")
        .await;
    assert_eq!(waiting["reason"], "ChannelNotFound");
    let ready = server
        .get("Subscription", "default", "early")
        .await
        .unwrap();
    assert_eq!(
        support::condition(&ready, "Ready").unwrap()["status"],
        "False"
    );

    server.apply(&channel(EMBEDDED, "later", json!({}))).await;
    server.wait_ready("Subscription", "default", "early").await;
    let url = address(&server, "EmbeddedChannel", "later").await;
    send(&url, "late-1", json!({})).await;
    assert_eq!(subscriber.wait_for(1).await[0].id(), "late-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolvable_destination_makes_the_subscription_not_ready_with_an_empty_uri() {
    let server = TestServer::start().await;
    server.apply(&channel(IN_MEMORY, "c", json!({}))).await;
    server
        .apply(&subscription(
            "dangling",
            IN_MEMORY,
            "c",
            json!({"subscriber": {"ref": {"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel", "name": "missing"}}}),
        ))
        .await;
    let resolved = server
        .wait_condition("Subscription", "default", "dangling", "Resolved", "False")
        .await;
    assert!(
        resolved["message"].as_str().unwrap().contains("missing"),
        "{resolved}"
    );
    let object = server
        .get("Subscription", "default", "dangling")
        .await
        .unwrap();
    assert_eq!(
        object["status"]["physicalSubscription"]["subscriberUri"],
        ""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_without_a_reply_destination_is_dropped_and_the_delivery_completes() {
    let server = TestServer::start().await;
    let replier = step("dropped").await;
    let dead_letters = Subscriber::start().await;
    server.apply(&channel(IN_MEMORY, "c", json!({}))).await;
    server
        .apply(&subscription(
            "no-reply",
            IN_MEMORY,
            "c",
            json!({"subscriber": {"uri": replier.url()}, "delivery": {"deadLetterSink": {"uri": dead_letters.url()}}}),
        ))
        .await;
    server
        .wait_ready("Subscription", "default", "no-reply")
        .await;
    let url = address(&server, "InMemoryChannel", "c").await;
    send(&url, "r-1", json!({})).await;
    replier.wait_for(1).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(dead_letters.count(), 0, "a dropped reply is no failure");
    assert_eq!(replier.count(), 1, "delivered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriptions_channel_and_a_channels_template_are_immutable() {
    let server = TestServer::start().await;
    server.apply(&channel(IN_MEMORY, "a", json!({}))).await;
    let original = subscription(
        "s",
        IN_MEMORY,
        "a",
        json!({"subscriber": {"uri": "http://127.0.0.1:9/"}}),
    );
    server.apply(&original).await;
    let moved = subscription(
        "s",
        IN_MEMORY,
        "b",
        json!({"subscriber": {"uri": "http://127.0.0.1:9/"}}),
    );
    let (status, body) = server.try_apply(&moved).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("spec.channel"),
        "{body}"
    );
    // Other fields may change.
    let retargeted = subscription(
        "s",
        IN_MEMORY,
        "a",
        json!({"subscriber": {"uri": "http://127.0.0.1:10/"}}),
    );
    assert_eq!(server.try_apply(&retargeted).await.0, 200);

    let mut elsewhere = subscription(
        "t",
        IN_MEMORY,
        "a",
        json!({"subscriber": {"uri": "http://127.0.0.1:9/"}}),
    );
    elsewhere["spec"]["channel"]["namespace"] = json!("other");
    let (status, body) = server.try_apply(&elsewhere).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("namespace"),
        "{body}"
    );

    let generic = ("messaging.knative.dev/v1", "Channel");
    let template = |kind: &str, version: &str| {
        channel(
            generic,
            "g",
            json!({"channelTemplate": {"apiVersion": version, "kind": kind}}),
        )
    };
    server
        .apply(&template("InMemoryChannel", "messaging.knative.dev/v1"))
        .await;
    let (status, body) = server
        .try_apply(&template(
            "EmbeddedChannel",
            "messaging.rivulet.dev/v1alpha1",
        ))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("immutable"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_subscription_with_a_subscriber_offers_to_take_replies() {
    let server = TestServer::start().await;
    let subscriber = Subscriber::start().await;
    let forwarded = Subscriber::start().await;
    server.apply(&channel(IN_MEMORY, "c", json!({}))).await;
    server
        .apply(&subscription(
            "calls",
            IN_MEMORY,
            "c",
            json!({"subscriber": {"uri": subscriber.url()}}),
        ))
        .await;
    server
        .apply(&subscription(
            "passes-on",
            IN_MEMORY,
            "c",
            json!({"reply": {"uri": forwarded.url()}}),
        ))
        .await;
    server.wait_ready("Subscription", "default", "calls").await;
    server
        .wait_ready("Subscription", "default", "passes-on")
        .await;
    let url = address(&server, "InMemoryChannel", "c").await;
    send(&url, "prefer-1", json!({})).await;
    let called = subscriber.wait_for(1).await;
    assert_eq!(called[0].header("prefer"), Some("reply"));
    let passed = forwarded.wait_for(1).await;
    assert_eq!(
        passed[0].header("prefer"),
        None,
        "the data-plane spec: SHOULD NOT advertise"
    );
}
