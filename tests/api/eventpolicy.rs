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

    /// Sends as [`Setup::send_as`] does and checks ingress answers `expected`; the body.
    async fn expect(
        &self,
        to: (&str, &str),
        sub: &str,
        ty: &str,
        expected: u16,
        why: &str,
    ) -> String {
        let (namespace, broker) = to;
        let (status, body) = self.send_as(namespace, broker, sub, ty).await;
        assert_eq!(
            status, expected,
            "{sub} sending {ty} to {namespace}/{broker} ({why}): {body}"
        );
        body
    }

    /// Applies an EventPolicy `name` in `namespace` with `spec`.
    async fn apply_policy(&self, namespace: &str, name: &str, spec: Value) {
        self.server.apply(&policy(namespace, name, spec)).await;
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

/// A ref to the Broker `name` in the policy's namespace, as `to` or `from` lists it.
fn broker_ref(name: &str) -> Value {
    json!({"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": name}})
}

/// Checks the `EventPoliciesReady` condition of `broker` has `field` equal to `expected`.
fn assert_policies_ready(broker: &Value, field: &str, expected: &str) {
    let ready = condition(broker, "EventPoliciesReady").expect("an EventPoliciesReady condition");
    assert_eq!(ready[field], expected, "{ready}");
}

#[tokio::test]
async fn policies_admit_their_subjects_and_refuse_others() {
    let setup = Setup::start("allow-all").await;
    let server = &setup.server;
    server.create_broker("team", "orders", Value::Null).await;
    let spec = json!({
        "to": [broker_ref("orders")],
        "from": [
            {"ref": {"apiVersion": "v1", "kind": "ServiceAccount", "name": "checkout"}},
            {"sub": "system:serviceaccount:partners:*"}
        ]
    });
    setup.apply_policy("team", "orders-senders", spec).await;
    let broker = wait_policies(server, "team", "orders", &["orders-senders"]).await;
    assert_eq!(
        broker["status"]["policies"][0]["apiVersion"],
        "eventing.knative.dev/v1alpha1"
    );
    assert_policies_ready(&broker, "status", "True");
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

    let orders = ("team", "orders");
    for (sub, expected, why) in [
        (
            "system:serviceaccount:team:checkout",
            202,
            "the referenced service account",
        ),
        (
            "system:serviceaccount:partners:acme",
            202,
            "a sub matching the prefix pattern",
        ),
        (
            "system:serviceaccount:partnersx:acme",
            403,
            "the pattern is a prefix of the whole subject",
        ),
    ] {
        setup.expect(orders, sub, "t", expected, why).await;
    }
    let intruder = "system:serviceaccount:team:intruder";
    let body = setup
        .expect(orders, intruder, "t", 403, "no policy admits it")
        .await;
    assert!(body.contains("not admitted"), "{body}");
    assert!(body.contains("orders-senders"), "names the policy: {body}");

    // A broker the policy does not select follows the default mode (allow-all here).
    server.create_broker("team", "other", Value::Null).await;
    let other = server.wait_ready("Broker", "team", "other").await;
    assert_policies_ready(&other, "reason", "DefaultAuthorizationMode");
    let why = "the default mode of a broker no policy selects";
    setup
        .expect(("team", "other"), intruder, "t", 202, why)
        .await;

    // Deleting the policy re-reconciles the broker: the default mode applies again.
    server.delete("EventPolicy", "team", "orders-senders").await;
    let broker = wait_policies(server, "team", "orders", &[]).await;
    assert_policies_ready(&broker, "reason", "DefaultAuthorizationMode");
    let why = "the default mode once the policy is deleted";
    setup.expect(orders, intruder, "t", 202, why).await;
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
    let spec = json!({
        "to": [{"selector": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
                              "matchLabels": {"guarded": "yes"}}}],
        "from": [{"sub": "system:serviceaccount:shop:*"}],
        "filters": [{"prefix": {"type": "com.shop.order."}}]
    });
    setup.apply_policy("shop", "only-orders", spec).await;
    wait_policies(server, "shop", "labelled", &["only-orders"]).await;
    wait_policies(server, "shop", "orders", &[]).await;

    let sub = "system:serviceaccount:shop:web";
    let labelled = ("shop", "labelled");
    let order = "com.shop.order.created";
    setup
        .expect(labelled, sub, order, 202, "passes the filters")
        .await;
    let refund = "com.shop.refund.created";
    let body = setup
        .expect(labelled, sub, refund, 403, "fails the filters")
        .await;
    assert!(body.contains("filters"), "{body}");
    assert!(body.contains("only-orders"), "{body}");
    let why = "the unlabelled broker is not selected";
    setup
        .expect(("shop", "orders"), sub, refund, 202, why)
        .await;
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
    let default = ("default", "default");
    let me = "system:serviceaccount:default:me";
    let body = setup.expect(default, me, "t", 403, "no policy yet").await;
    assert!(body.contains("deny-all"), "{body}");

    // A policy opens the broker to its subjects only.
    let spec = json!({"from": [{"sub": me}]});
    setup.apply_policy("default", "me-only", spec).await;
    wait_policies(&setup.server, "default", "default", &["me-only"]).await;
    setup
        .expect(default, me, "t", 202, "the policy's subject")
        .await;
    let you = "system:serviceaccount:default:you";
    setup
        .expect(default, you, "t", 403, "not the policy's subject")
        .await;
}

#[tokio::test]
async fn allow_same_namespace_admits_only_the_targets_namespace() {
    let setup = Setup::start("allow-same-namespace").await;
    let default = ("default", "default");
    let why = "a service account of the broker's namespace";
    setup
        .expect(default, "system:serviceaccount:default:app", "t", 202, why)
        .await;
    let elsewhere = "system:serviceaccount:elsewhere:app";
    let why = "a service account of another namespace";
    let body = setup.expect(default, elsewhere, "t", 403, why).await;
    assert!(body.contains("allow-same-namespace"), "{body}");
    let why = "a subject that is not a service account is from no namespace";
    setup
        .expect(default, "alice@example.com", "t", 403, why)
        .await;
}

#[tokio::test]
async fn invalid_policies_are_refused_with_the_field_and_rule() {
    let setup = Setup::start("allow-all").await;
    let both = json!({"to": [{
        "ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "x"},
        "selector": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker"}
    }]});
    let cases = [
        (
            "bad-sub",
            json!({"from": [{"sub": "system:*:default"}]}),
            &["spec.from[0].sub", "last character"][..],
        ),
        ("bad-to", both, &["only one of ref or selector"]),
        (
            "bad-filter",
            json!({"from": [{"sub": "x"}], "filters": [{"cesql": "type = = 'x'"}]}),
            &["spec.filters[0]"],
        ),
    ];
    for (name, spec, says) in cases {
        let (status, body) = setup.server.try_apply(&policy("default", name, spec)).await;
        assert_eq!(status, 422, "{name}: {body}");
        let text = body.to_string();
        for part in says {
            assert!(text.contains(part), "{name}: should say {part:?}: {text}");
        }
    }
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
        let triggers = [
            ("replier", replier.url(), "com.example.request"),
            ("catch", recorder.url.clone(), "com.example.reply"),
        ];
        for (role, subscriber, ty) in triggers {
            server
                .create_trigger(&json!({
                    "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
                    "metadata": {"name": format!("{broker}-{role}"), "namespace": "default"},
                    "spec": {"broker": broker, "subscriber": {"uri": subscriber},
                             "filter": {"attributes": {"type": ty}}}
                }))
                .await;
        }
    }
    // On "open" the replying trigger is admitted by reference; on "closed" only the sender.
    let open_replier = json!({
        "ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger", "name": "open-replier"}
    });
    let open_senders = json!({"to": [broker_ref("open")], "from": [{"sub": sender}, open_replier]});
    setup
        .apply_policy("default", "open-senders", open_senders)
        .await;
    let closed_senders = json!({"to": [broker_ref("closed")], "from": [{"sub": sender}]});
    setup
        .apply_policy("default", "closed-senders", closed_senders)
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
    assert_policies_ready(&open, "status", "True");

    let request = "com.example.request";
    let why = "the policy's subject";
    setup
        .expect(("default", "open"), sender, request, 202, why)
        .await;
    let reply = recorder.wait_for_id("the-reply").await;
    assert_eq!(reply.event.ty, "com.example.reply");

    setup
        .expect(("default", "closed"), sender, request, 202, why)
        .await;
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
