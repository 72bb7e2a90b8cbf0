//! Sequence and Parallel end to end, as functions of the channel template so that every
//! backend runs the same checks (see backends.rs).

use super::*;

use std::time::Duration;

/// Waits up to `patience` until `subscriber` got `n` requests.
async fn arrivals(subscriber: &Subscriber, n: usize, patience: Duration) -> Vec<Recorded> {
    wait_for(&format!("{n} requests"), patience, || {
        let got = subscriber.requests();
        std::future::ready((got.len() >= n).then_some(got))
    })
    .await
}

/// A 3-step Sequence over channels of `template`: each step's reply reaches the next, the
/// last one's the Sequence's reply; its status lists the channels and Subscriptions it made.
pub async fn a_sequence_runs_its_steps_in_order(
    server: &TestServer,
    template: Value,
    name: &str,
    patience: Duration,
) {
    let (first, second, third) = (
        step("first").await,
        step("second").await,
        step("third").await,
    );
    let end = Subscriber::start().await;
    server
        .apply(&json!({
            "apiVersion": "flows.knative.dev/v1",
            "kind": "Sequence",
            "metadata": {"namespace": "default", "name": name},
            "spec": {
                "channelTemplate": template,
                "steps": [{"uri": first.url()}, {"uri": second.url()}, {"uri": third.url(), "delivery": {"retry": 2}}],
                "reply": {"uri": end.url()},
            }
        }))
        .await;
    let url = address(server, "Sequence", name).await;
    let sequence = server.get("Sequence", "default", name).await.unwrap();
    let status = &sequence["status"];
    let names = |list: &str, field: &str| -> Vec<String> {
        status[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s[field]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let expected: Vec<String> = (0..3).map(|i| format!("{name}-kn-sequence-{i}")).collect();
    assert_eq!(names("channelStatuses", "channel"), expected);
    assert_eq!(names("subscriptionStatuses", "subscription"), expected);
    assert!(
        status["subscriptionStatuses"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["ready"]["status"] == "True"),
        "{status}"
    );
    assert_eq!(
        status["channelStatuses"][0]["channel"]["kind"],
        template["kind"]
    );
    let third_step = server
        .get("Subscription", "default", &format!("{name}-kn-sequence-2"))
        .await
        .unwrap();
    assert_eq!(
        third_step["spec"]["delivery"]["retry"], 2,
        "a step's delivery is its Subscription's"
    );

    for i in 0..3 {
        send(&url, &format!("order-{i}"), json!({"total": i})).await;
    }
    arrivals(&end, 3, patience).await;
    for steps in steps_seen(&end) {
        assert_eq!(steps, ["first", "second", "third"]);
    }
    let mut ids: Vec<String> = end.requests().iter().map(|r| r.id()).collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "order-0-first-second-third",
            "order-1-first-second-third",
            "order-2-first-second-third"
        ]
    );

    // Deleting the Sequence deletes what it made.
    server.delete("Sequence", "default", name).await;
    wait_for("the Sequence's parts to go", WAIT, || async {
        server
            .get("Subscription", "default", &format!("{name}-kn-sequence-0"))
            .await
            .is_none()
            .then_some(())
    })
    .await;
}

/// A filter that passes events of `ty` (answering with the event) and drops the others
/// (answering without one), as Knative's Parallel filters do.
async fn filter_of(ty: &'static str) -> Subscriber {
    Subscriber::with_script(support::script(move |request: &Recorded| {
        let event = request.event();
        if event.ty == ty {
            let same = TestEvent::new(&event.id, &event.ty)
                .data("application/json", event.data.clone().unwrap_or_default());
            Reply::event(200, &same)
        } else {
            Reply::status(202)
        }
    }))
    .await
}

/// A 3-branch Parallel over channels of `template`: each branch sees what its filter passes
/// (all events without a filter), replies go to the branch's reply or else the Parallel's.
pub async fn a_parallel_sends_to_each_branch_its_filter_passes(
    server: &TestServer,
    template: Value,
    name: &str,
    patience: Duration,
) {
    let orders_only = filter_of("com.example.order").await;
    let refunds_only = filter_of("com.example.refund").await;
    let (a, b, c) = (step("a").await, step("b").await, step("c").await);
    let replies = Subscriber::start().await;
    let c_replies = Subscriber::start().await;
    server
        .apply(&json!({
            "apiVersion": "flows.knative.dev/v1",
            "kind": "Parallel",
            "metadata": {"namespace": "default", "name": name},
            "spec": {
                "channelTemplate": template,
                "branches": [
                    {"filter": {"uri": orders_only.url()}, "subscriber": {"uri": a.url()}},
                    {"filter": {"uri": refunds_only.url()}, "subscriber": {"uri": b.url()}},
                    {"subscriber": {"uri": c.url()}, "reply": {"uri": c_replies.url()}},
                ],
                "reply": {"uri": replies.url()},
            }
        }))
        .await;
    let url = address(server, "Parallel", name).await;
    let parallel = server.get("Parallel", "default", name).await.unwrap();
    let status = &parallel["status"];
    assert_eq!(
        status["ingressChannelStatus"]["channel"]["name"],
        format!("{name}-kn-parallel")
    );
    assert_eq!(status["branchStatuses"].as_array().unwrap().len(), 3);
    assert_eq!(
        status["branchStatuses"][1]["filterSubscriptionStatus"]["subscription"]["name"],
        format!("{name}-kn-parallel-filter-1")
    );
    assert_eq!(
        status["branchStatuses"][1]["subscriberSubscriptionStatus"]["subscription"]["name"],
        format!("{name}-kn-parallel-1")
    );

    send(&url, "p-1", json!({})).await;
    // Branch a (its filter passes orders) and branch c (no filter) take it; b does not.
    let got = arrivals(&replies, 1, patience).await;
    assert_eq!(got[0].id(), "p-1-a");
    let got_c = arrivals(&c_replies, 1, patience).await;
    assert_eq!(
        got_c[0].id(),
        "p-1-c",
        "branch c's reply goes to its own reply"
    );
    arrivals(&refunds_only, 1, patience).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b.count(), 0, "branch b's filter dropped the event");
    assert_eq!(replies.count(), 1);
    server.delete("Parallel", "default", name).await;
}
