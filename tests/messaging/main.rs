//! Knative messaging and flows over a running server: Channels fanning out to
//! Subscriptions with their own delivery, replies to a Subscription's `reply`, the channel's
//! delivery as the default, the generic Channel and its default template, Sequence and
//! Parallel; and all of it over each channel backend (RabbitMQ, NATS JetStream and Kafka
//! over the real servers).

mod backends;
mod durability;
mod flows;
mod spec;

use rivulet_testkit as support;

use serde_json::{Value, json};
use support::{Recorded, Reply, Subscriber, TestEvent, TestServer, WAIT, wait_for};

/// A channel of `kind` (`apiVersion`, `kind`) named `name` with `spec`.
pub fn channel(kind: (&str, &str), name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": kind.0,
        "kind": kind.1,
        "metadata": {"namespace": "default", "name": name},
        "spec": spec,
    })
}

/// A Subscription of channel `channel` (of `kind`) with `spec` added.
pub fn subscription(name: &str, kind: (&str, &str), channel: &str, spec: Value) -> Value {
    let mut object = json!({
        "apiVersion": "messaging.knative.dev/v1",
        "kind": "Subscription",
        "metadata": {"namespace": "default", "name": name},
        "spec": {"channel": {"apiVersion": kind.0, "kind": kind.1, "name": channel}},
    });
    if let Value::Object(extra) = spec {
        for (key, value) in extra {
            object["spec"][key] = value;
        }
    }
    object
}

pub const IN_MEMORY: (&str, &str) = ("messaging.knative.dev/v1", "InMemoryChannel");
pub const EMBEDDED: (&str, &str) = ("messaging.rivulet.dev/v1alpha1", "EmbeddedChannel");

/// The address of a Ready object of `kind`.
pub async fn address(server: &TestServer, kind: &str, name: &str) -> String {
    let ready = server.wait_ready(kind, "default", name).await;
    ready["status"]["address"]["url"]
        .as_str()
        .unwrap_or_else(|| panic!("{kind} {name} has an address: {ready}"))
        .to_string()
}

/// Posts a JSON event to `url`; asserts it was taken.
pub async fn send(url: &str, id: &str, data: Value) {
    let status = TestEvent::new(id, "com.example.order")
        .data("application/json", data.to_string())
        .post_to(url)
        .await;
    assert_eq!(status, 202, "{url} takes event {id}");
}

/// A subscriber that answers each event with a reply whose data is the event's, with
/// `mark` appended to its `steps` list.
pub async fn step(mark: &'static str) -> Subscriber {
    Subscriber::with_script(support::script(move |request: &Recorded| {
        let event = request.event();
        let mut data: Value = event
            .data
            .as_ref()
            .and_then(|d| serde_json::from_slice(d).ok())
            .unwrap_or_else(|| json!({}));
        let steps = data["steps"].as_array().cloned().unwrap_or_default();
        let mut steps = steps;
        steps.push(json!(mark));
        data["steps"] = json!(steps);
        let reply = TestEvent::new(&format!("{}-{mark}", event.id), "com.example.step")
            .data("application/json", data.to_string());
        Reply::event(200, &reply)
    }))
    .await
}

/// The `steps` of each event `subscriber` got, in arrival order.
pub fn steps_seen(subscriber: &Subscriber) -> Vec<Vec<String>> {
    subscriber
        .requests()
        .iter()
        .map(|r| {
            let data: Value = serde_json::from_slice(r.event().data.as_deref().unwrap_or(b"{}"))
                .unwrap_or_default();
            data["steps"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .filter_map(|m| m.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_fans_out_to_every_subscription_each_with_its_own_delivery() {
    let server = TestServer::start().await;
    let good = Subscriber::start().await;
    let failing = Subscriber::with_script(support::always(Reply::status(500))).await;
    let dead_letters = Subscriber::start().await;
    server.apply(&channel(IN_MEMORY, "orders", json!({}))).await;
    server
        .apply(&subscription(
            "to-good",
            IN_MEMORY,
            "orders",
            json!({"subscriber": {"uri": good.url()}}),
        ))
        .await;
    server
        .apply(&subscription(
            "to-failing",
            IN_MEMORY,
            "orders",
            json!({
                "subscriber": {"uri": failing.url()},
                "delivery": {"retry": 1, "backoffDelay": "PT0.05S", "deadLetterSink": {"uri": dead_letters.url()}},
            }),
        ))
        .await;
    let url = address(&server, "InMemoryChannel", "orders").await;
    assert!(url.ends_with("/default/orders-kn-channel"), "{url}");
    server
        .wait_ready("Subscription", "default", "to-good")
        .await;
    let failing_status = server
        .wait_ready("Subscription", "default", "to-failing")
        .await;
    assert_eq!(
        failing_status["status"]["physicalSubscription"]["deadLetterSinkUri"],
        dead_letters.url()
    );
    assert_eq!(
        failing_status["status"]["physicalSubscription"]["delivery"]["retry"],
        1
    );

    send(&url, "order-1", json!({"total": 1})).await;
    good.wait_for(1).await;
    let dead = dead_letters.wait_for(1).await;
    assert_eq!(dead[0].id(), "order-1");
    assert_eq!(dead[0].attr("knativeerrorcode").as_deref(), Some("500"));
    assert_eq!(failing.count(), 2, "the first attempt and one retry");

    // The channel lists both subscribers, Ready.
    let listed = wait_for("the channel to list its subscribers", WAIT, || async {
        let channel = server.get("InMemoryChannel", "default", "orders").await?;
        let subscribers = channel["status"]["subscribers"].as_array()?.clone();
        (subscribers.len() == 2 && subscribers.iter().all(|s| s["ready"] == "True"))
            .then_some(subscribers)
    })
    .await;
    assert!(listed.iter().all(|s| s["uid"].is_string()), "{listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_go_to_the_subscriptions_reply_and_the_channels_delivery_is_the_default() {
    let server = TestServer::start().await;
    let replier = step("priced").await;
    let replies = Subscriber::start().await;
    let failing = Subscriber::with_script(support::always(Reply::status(503))).await;
    let channel_dead_letters = Subscriber::start().await;
    server
        .apply(&channel(
            EMBEDDED,
            "orders",
            json!({"delivery": {"retry": 0, "deadLetterSink": {"uri": channel_dead_letters.url()}}}),
        ))
        .await;
    server
        .apply(&subscription(
            "pricing",
            EMBEDDED,
            "orders",
            json!({"subscriber": {"uri": replier.url()}, "reply": {"uri": replies.url()}}),
        ))
        .await;
    server
        .apply(&subscription(
            "broken",
            EMBEDDED,
            "orders",
            json!({"subscriber": {"uri": failing.url()}}),
        ))
        .await;
    let url = address(&server, "EmbeddedChannel", "orders").await;
    server
        .wait_ready("Subscription", "default", "pricing")
        .await;
    server.wait_ready("Subscription", "default", "broken").await;
    send(&url, "order-7", json!({"total": 7})).await;

    let got = replies.wait_for(1).await;
    assert_eq!(got[0].id(), "order-7-priced");
    assert_eq!(steps_seen(&replies), [vec!["priced".to_string()]]);
    // The reply carries on the hop count, so loops through channels end.
    let ttl: i64 = got[0].attr("knativebrokerttl").unwrap().parse().unwrap();
    assert!(ttl < 255, "{ttl}");
    // `broken` set no delivery: the channel's dead-letter sink took the event.
    let dead = channel_dead_letters.wait_for(1).await;
    assert_eq!(dead[0].id(), "order-7");
    assert_eq!(failing.count(), 1, "retry 0 from the channel's delivery");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_without_subscriber_forwards_and_an_undeliverable_reply_dead_letters() {
    let server = TestServer::start().await;
    let forwarded = Subscriber::start().await;
    let replier = step("seen").await;
    let refusing_reply = Subscriber::with_script(support::always(Reply::status(500))).await;
    let dead_letters = Subscriber::start().await;
    server.apply(&channel(IN_MEMORY, "c", json!({}))).await;
    server
        .apply(&subscription(
            "forward",
            IN_MEMORY,
            "c",
            json!({"reply": {"uri": forwarded.url()}}),
        ))
        .await;
    server
        .apply(&subscription(
            "reply-fails",
            IN_MEMORY,
            "c",
            json!({
                "subscriber": {"uri": replier.url()},
                "reply": {"uri": refusing_reply.url()},
                "delivery": {"retry": 1, "backoffDelay": "PT0.05S", "deadLetterSink": {"uri": dead_letters.url()}},
            }),
        ))
        .await;
    let url = address(&server, "InMemoryChannel", "c").await;
    server
        .wait_ready("Subscription", "default", "forward")
        .await;
    server
        .wait_ready("Subscription", "default", "reply-fails")
        .await;
    send(&url, "e-1", json!({})).await;
    let got = forwarded.wait_for(1).await;
    assert_eq!(got[0].id(), "e-1", "the event itself, to the reply");
    // The reply could not be delivered: the original event is dead-lettered.
    let dead = dead_letters.wait_for(1).await;
    assert_eq!(dead[0].id(), "e-1");
    assert_eq!(
        refusing_reply.count(),
        2,
        "the reply had the subscription's retries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generic_channel_is_backed_by_its_template_or_the_configured_default() {
    let server = TestServer::start().await;
    let subscriber = Subscriber::start().await;
    // Without a template and without default-ch-webhook: the durable embedded channel.
    server
        .apply(&channel(
            ("messaging.knative.dev/v1", "Channel"),
            "plain",
            json!({}),
        ))
        .await;
    let plain = server.wait_ready("Channel", "default", "plain").await;
    assert_eq!(plain["status"]["channel"]["kind"], "EmbeddedChannel");
    let backing = server
        .get("EmbeddedChannel", "default", "plain")
        .await
        .expect("the backing channel");
    assert_eq!(backing["metadata"]["ownerReferences"][0]["kind"], "Channel");

    // default-ch-webhook picks InMemoryChannel for this namespace.
    server
        .apply(&json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"namespace": "knative-eventing", "name": "default-ch-webhook"},
            "data": {"default-ch-config": "clusterDefault:\n  apiVersion: messaging.rivulet.dev/v1alpha1\n  kind: EmbeddedChannel\nnamespaceDefaults:\n  default:\n    apiVersion: messaging.knative.dev/v1\n    kind: InMemoryChannel\n"}
        }))
        .await;
    server
        .apply(&channel(
            ("messaging.knative.dev/v1", "Channel"),
            "defaulted",
            json!({}),
        ))
        .await;
    let defaulted = server.wait_ready("Channel", "default", "defaulted").await;
    assert_eq!(defaulted["status"]["channel"]["kind"], "InMemoryChannel");

    // Subscriptions may name the generic Channel; events reach them through its address.
    server
        .apply(&subscription(
            "s",
            ("messaging.knative.dev/v1", "Channel"),
            "defaulted",
            json!({"subscriber": {"uri": subscriber.url()}}),
        ))
        .await;
    server.wait_ready("Subscription", "default", "s").await;
    let url = defaulted["status"]["address"]["url"]
        .as_str()
        .unwrap()
        .to_string();
    send(&url, "g-1", json!({})).await;
    assert_eq!(subscriber.wait_for(1).await[0].id(), "g-1");
    wait_for(
        "the generic channel to list its subscriber",
        WAIT,
        || async {
            let channel = server.get("Channel", "default", "defaulted").await?;
            let subscribers = channel["status"]["subscribers"].as_array()?.clone();
            (subscribers.len() == 1 && subscribers[0]["ready"] == "True").then_some(())
        },
    )
    .await;

    // Deleting the Channel deletes what backs it.
    server.delete("Channel", "default", "defaulted").await;
    wait_for("the backing channel to go", WAIT, || async {
        server
            .get("InMemoryChannel", "default", "defaulted")
            .await
            .is_none()
            .then_some(())
    })
    .await;

    // A template of a kind that is no channel is refused with the kinds that are.
    let (status, body) = server
        .try_apply(&channel(
            ("messaging.knative.dev/v1", "Channel"),
            "wrong",
            json!({"channelTemplate": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker"}}),
        ))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("InMemoryChannel"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_names_may_not_take_the_channel_suffix() {
    let server = TestServer::start().await;
    let (status, body) = server
        .try_apply(&json!({
            "apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
            "metadata": {"namespace": "default", "name": "orders-kn-channel"}
        }))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("-kn-channel"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_subscription_delivers_one_event_at_a_time_in_channel_order() {
    let server = TestServer::start().await;
    let slow = Subscriber::with_script(support::always(
        Reply::ok().delay(std::time::Duration::from_millis(30)),
    ))
    .await;
    server.apply(&channel(EMBEDDED, "ledger", json!({}))).await;
    let ordered = support::with_annotation(
        subscription(
            "in-order",
            EMBEDDED,
            "ledger",
            json!({"subscriber": {"uri": slow.url()}}),
        ),
        "kafka.eventing.knative.dev/delivery.order",
        "ordered",
    );
    server.apply(&ordered).await;
    server
        .wait_ready("Subscription", "default", "in-order")
        .await;
    let url = address(&server, "EmbeddedChannel", "ledger").await;
    for i in 0..8 {
        send(&url, &format!("entry-{i}"), json!({"n": i})).await;
    }
    let got = slow.wait_for(8).await;
    let ids: Vec<String> = got.iter().map(|r| r.id()).collect();
    let expected: Vec<String> = (0..8).map(|i| format!("entry-{i}")).collect();
    assert_eq!(ids, expected);
    assert_eq!(slow.max_in_flight(), 1);
}
