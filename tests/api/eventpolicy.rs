//! EventPolicy authorization at ingress (OIDC on): subjects admitted by refs and `sub`
//! patterns, filters, `default-authorization-mode` when no policy applies, and the status
//! policies and guarded brokers report.

use rivulet_testkit as support;

use std::time::Duration;

use serde_json::{Value, json};
use support::oidc::{TestIssuer, TestKey, claims, post_with_token};
use support::{TestServer, condition, wait_for};

struct Setup {
    server: TestServer,
    issuer: TestIssuer,
    key: TestKey,
}

impl Setup {
    async fn start(mode: &str) -> Setup {
        let key = TestKey::generate("k");
        let issuer = TestIssuer::start(vec![key.clone()]).await;
        let url = issuer.url.clone();
        let mode = format!("default-authorization-mode={mode}");
        let server = TestServer::start_with(move |options| {
            options
                .features
                .set_pair("authentication-oidc=enabled")
                .unwrap();
            options.features.set_pair(&mode).unwrap();
            options.oidc_issuers = vec![url];
        })
        .await;
        Setup {
            server,
            issuer,
            key,
        }
    }

    /// Posts an event of type `ty` to `namespace/broker` as `sub`; status and body.
    async fn send_as(&self, namespace: &str, broker: &str, sub: &str, ty: &str) -> (u16, String) {
        let audience = format!("eventing.knative.dev/broker/{namespace}/{broker}");
        let token = self.key.sign(&claims(&self.issuer.url, sub, &audience));
        let url = self.server.ingress_url(namespace, broker);
        let id = format!("{sub}-{ty}");
        let (status, _, body) = post_with_token(&url, &id, ty, Some(&token)).await;
        (status, body)
    }
}

fn policy(namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "eventing.knative.dev/v1alpha1",
        "kind": "EventPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec
    })
}

/// Waits until the broker lists exactly `names` in `status.policies`; returns the broker.
async fn wait_policies(
    server: &TestServer,
    namespace: &str,
    broker: &str,
    names: &[&str],
) -> Value {
    wait_for(
        &format!("broker {namespace}/{broker} to list policies {names:?}"),
        support::WAIT,
        || async {
            let object = server.get("Broker", namespace, broker).await?;
            let listed: Vec<String> = object
                .pointer("/status/policies")
                .and_then(Value::as_array)
                .map(|list| {
                    list.iter()
                        .filter_map(|p| p["name"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            (listed == names).then_some(object)
        },
    )
    .await
}

#[tokio::test]
async fn policies_admit_their_subjects_and_refuse_others() {
    let setup = Setup::start("allow-all").await;
    let server = &setup.server;
    server.create_broker("team", "orders", Value::Null).await;
    server
        .apply(&policy(
            "team",
            "orders-senders",
            json!({
                "to": [{"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "orders"}}],
                "from": [
                    {"ref": {"apiVersion": "v1", "kind": "ServiceAccount", "name": "checkout"}},
                    {"sub": "system:serviceaccount:partners:*"}
                ]
            }),
        ))
        .await;
    let broker = wait_policies(server, "team", "orders", &["orders-senders"]).await;
    assert_eq!(
        broker["status"]["policies"][0]["apiVersion"],
        "eventing.knative.dev/v1alpha1"
    );
    let ready = condition(&broker, "EventPoliciesReady").unwrap();
    assert_eq!(ready["status"], "True", "{ready}");
    let policy = server
        .wait_ready("EventPolicy", "team", "orders-senders")
        .await;
    assert_eq!(
        policy["status"]["from"],
        json!([
            "system:serviceaccount:team:checkout",
            "system:serviceaccount:partners:*"
        ])
    );

    let (status, body) = setup
        .send_as("team", "orders", "system:serviceaccount:team:checkout", "t")
        .await;
    assert_eq!(status, 202, "the referenced service account: {body}");
    let (status, body) = setup
        .send_as("team", "orders", "system:serviceaccount:partners:acme", "t")
        .await;
    assert_eq!(status, 202, "a sub matching the prefix pattern: {body}");

    let (status, body) = setup
        .send_as("team", "orders", "system:serviceaccount:team:intruder", "t")
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not admitted"), "{body}");
    assert!(body.contains("orders-senders"), "names the policy: {body}");
    let (status, _) = setup
        .send_as(
            "team",
            "orders",
            "system:serviceaccount:partnersx:acme",
            "t",
        )
        .await;
    assert_eq!(status, 403, "the pattern is a prefix of the whole subject");

    // A broker the policy does not select follows the default mode (allow-all here).
    server.create_broker("team", "other", Value::Null).await;
    let other = server.wait_ready("Broker", "team", "other").await;
    assert_eq!(
        condition(&other, "EventPoliciesReady").unwrap()["reason"],
        "DefaultAuthorizationMode"
    );
    let (status, body) = setup
        .send_as("team", "other", "system:serviceaccount:team:intruder", "t")
        .await;
    assert_eq!(status, 202, "{body}");

    // Deleting the policy re-reconciles the broker: the default mode applies again.
    server.delete("EventPolicy", "team", "orders-senders").await;
    let broker = wait_policies(server, "team", "orders", &[]).await;
    assert_eq!(
        condition(&broker, "EventPoliciesReady").unwrap()["reason"],
        "DefaultAuthorizationMode"
    );
    let (status, body) = setup
        .send_as("team", "orders", "system:serviceaccount:team:intruder", "t")
        .await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test]
async fn events_must_pass_the_policys_filters() {
    let setup = Setup::start("allow-all").await;
    let server = &setup.server;
    server.create_broker("shop", "orders", Value::Null).await;
    server
        .apply(&json!({
            "apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
            "metadata": {"name": "labelled", "namespace": "shop", "labels": {"guarded": "yes"}},
            "spec": {}
        }))
        .await;
    server.wait_ready("Broker", "shop", "labelled").await;
    server
        .apply(&policy(
            "shop",
            "only-orders",
            json!({
                "to": [{"selector": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
                                      "matchLabels": {"guarded": "yes"}}}],
                "from": [{"sub": "system:serviceaccount:shop:*"}],
                "filters": [{"prefix": {"type": "com.shop.order."}}]
            }),
        ))
        .await;
    wait_policies(server, "shop", "labelled", &["only-orders"]).await;
    wait_policies(server, "shop", "orders", &[]).await;

    let sub = "system:serviceaccount:shop:web";
    let (status, body) = setup
        .send_as("shop", "labelled", sub, "com.shop.order.created")
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = setup
        .send_as("shop", "labelled", sub, "com.shop.refund.created")
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("filters"), "{body}");
    assert!(body.contains("only-orders"), "{body}");
    // The unlabelled broker is not selected.
    let (status, body) = setup
        .send_as("shop", "orders", sub, "com.shop.refund.created")
        .await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test]
async fn deny_all_refuses_everyone_no_policy_admits() {
    let setup = Setup::start("deny-all").await;
    let broker = setup
        .server
        .wait_ready("Broker", "default", "default")
        .await;
    let ready = condition(&broker, "EventPoliciesReady").unwrap();
    assert_eq!(ready["reason"], "DefaultAuthorizationMode");
    assert!(
        ready["message"].as_str().unwrap().contains("deny-all"),
        "{ready}"
    );
    let (status, body) = setup
        .send_as(
            "default",
            "default",
            "system:serviceaccount:default:me",
            "t",
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("deny-all"), "{body}");

    // A policy opens the broker to its subjects only.
    setup
        .server
        .apply(&policy(
            "default",
            "me-only",
            json!({"from": [{"sub": "system:serviceaccount:default:me"}]}),
        ))
        .await;
    wait_policies(&setup.server, "default", "default", &["me-only"]).await;
    let (status, body) = setup
        .send_as(
            "default",
            "default",
            "system:serviceaccount:default:me",
            "t",
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, _) = setup
        .send_as(
            "default",
            "default",
            "system:serviceaccount:default:you",
            "t",
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn allow_same_namespace_admits_only_the_targets_namespace() {
    let setup = Setup::start("allow-same-namespace").await;
    let (status, body) = setup
        .send_as(
            "default",
            "default",
            "system:serviceaccount:default:app",
            "t",
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = setup
        .send_as(
            "default",
            "default",
            "system:serviceaccount:elsewhere:app",
            "t",
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("allow-same-namespace"), "{body}");
    // A subject that is not a service account is from no namespace.
    let (status, _) = setup
        .send_as("default", "default", "alice@example.com", "t")
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn invalid_policies_are_refused_with_the_field_and_rule() {
    let setup = Setup::start("allow-all").await;
    let (status, body) = setup
        .server
        .try_apply(&policy(
            "default",
            "bad-sub",
            json!({"from": [{"sub": "system:*:default"}]}),
        ))
        .await;
    assert_eq!(status, 422, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("spec.from[0].sub") && text.contains("last character"),
        "{text}"
    );

    let (status, body) = setup
        .server
        .try_apply(&policy(
            "default",
            "bad-to",
            json!({"to": [{"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "x"},
                           "selector": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker"}}]}),
        ))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.to_string().contains("only one of ref or selector"),
        "{body}"
    );

    let (status, body) = setup
        .server
        .try_apply(&policy(
            "default",
            "bad-filter",
            json!({"from": [{"sub": "x"}], "filters": [{"cesql": "type = = 'x'"}]}),
        ))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("spec.filters[0]"), "{body}");
    // Nothing refused was stored.
    tokio::time::sleep(Duration::ZERO).await;
    assert!(
        setup
            .server
            .get("EventPolicy", "default", "bad-sub")
            .await
            .is_none()
    );
}

#[tokio::test]
async fn replies_are_authorized_as_the_trigger_that_sent_them() {
    let setup = Setup::start("deny-all").await;
    let server = &setup.server;
    let reply = support::TestEvent::new("the-reply", "com.example.reply");
    let replier = support::Subscriber::with_script(support::script(move |request| {
        if request.attr("type").as_deref() == Some("com.example.request") {
            support::Reply::event(200, &reply)
        } else {
            support::Reply::status(202)
        }
    }))
    .await;
    let recorder = support::Recorder::start().await;
    let sender = "system:serviceaccount:default:app";
    for broker in ["open", "closed"] {
        server.create_broker("default", broker, Value::Null).await;
        server
            .create_trigger(&json!({
                "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
                "metadata": {"name": format!("{broker}-replier"), "namespace": "default"},
                "spec": {"broker": broker, "subscriber": {"uri": replier.url()},
                         "filter": {"attributes": {"type": "com.example.request"}}}
            }))
            .await;
        server
            .create_trigger(&json!({
                "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
                "metadata": {"name": format!("{broker}-catch"), "namespace": "default"},
                "spec": {"broker": broker, "subscriber": {"uri": recorder.url},
                         "filter": {"attributes": {"type": "com.example.reply"}}}
            }))
            .await;
    }
    // On "open" the replying trigger is admitted by reference; on "closed" only the sender.
    server
        .apply(&policy(
            "default",
            "open-senders",
            json!({
                "to": [{"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "open"}}],
                "from": [{"sub": sender},
                         {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger", "name": "open-replier"}}]
            }),
        ))
        .await;
    server
        .apply(&policy(
            "default",
            "closed-senders",
            json!({
                "to": [{"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "closed"}}],
                "from": [{"sub": sender}]
            }),
        ))
        .await;
    let open = wait_policies(server, "default", "open", &["open-senders"]).await;
    wait_policies(server, "default", "closed", &["closed-senders"]).await;
    let policy = server
        .wait_ready("EventPolicy", "default", "open-senders")
        .await;
    assert_eq!(
        policy["status"]["from"][1],
        "system:serviceaccount:default:open-replier-oidc-eventing.knative.dev-trigger"
    );
    assert_eq!(
        condition(&open, "EventPoliciesReady").unwrap()["status"],
        "True"
    );

    let (status, body) = setup
        .send_as("default", "open", sender, "com.example.request")
        .await;
    assert_eq!(status, 202, "{body}");
    let reply = recorder.wait_for_id("the-reply").await;
    assert_eq!(reply.event.ty, "com.example.reply");

    let (status, body) = setup
        .send_as("default", "closed", sender, "com.example.request")
        .await;
    assert_eq!(status, 202, "{body}");
    server
        .wait_metric(
            "rivulet_trigger_replies_total",
            &[("trigger", "closed-replier"), ("outcome", "refused")],
            1.0,
        )
        .await;
    assert_eq!(
        recorder.count(),
        1,
        "the refused reply never reached the broker's triggers"
    );
}
