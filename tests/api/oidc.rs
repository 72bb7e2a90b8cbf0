//! OIDC sender identity: ingress verifies bearer JWTs from trusted issuers (discovery and
//! JWKS over HTTP, key rotation, no fetch storms, every forged or misdirected token refused
//! with 401), brokers publish their audience, and Rivulet signs its own deliveries.

use rivulet_testkit as support;

use std::time::Duration;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use support::oidc::{TestIssuer, TestKey, claims, now, post_with_token, unsigned_token};
use support::{Recorder, TestServer, condition, trigger};

const BROKER_AUDIENCE: &str = "eventing.knative.dev/broker/default/default";

async fn server_trusting(issuer: &TestIssuer, refresh: Duration) -> TestServer {
    let url = issuer.url.clone();
    TestServer::start_with(move |options| {
        options
            .features
            .set_pair("authentication-oidc=enabled")
            .unwrap();
        options.oidc_issuers = vec![url];
        options.oidc_jwks_refresh = refresh;
    })
    .await
}

/// Asserts a 401 with a Bearer challenge, a message containing `why`, and no token echoed.
fn assert_refused(answer: &(u16, http::HeaderMap, String), token: &str, why: &str) {
    let (status, headers, body) = answer;
    assert_eq!(*status, 401, "{body}");
    let challenge = headers
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(challenge.starts_with("Bearer"), "challenge: {challenge:?}");
    assert!(body.contains(why), "expected {why:?} in {body:?}");
    assert!(
        !token.is_empty() && !body.contains(token),
        "the token was echoed"
    );
}

#[tokio::test]
async fn ingress_verifies_tokens_and_refuses_forgeries() {
    let key = TestKey::generate("k1");
    let issuer = TestIssuer::start(vec![key.clone()]).await;
    let server = server_trusting(&issuer, Duration::from_secs(3600)).await;
    let url = server.ingress_url("default", "default");
    let sub = "system:serviceaccount:default:sender";

    let good = key.sign(&claims(&issuer.url, sub, BROKER_AUDIENCE));
    let (status, _, body) = post_with_token(&url, "ok-1", "t", Some(&good)).await;
    assert_eq!(status, 202, "a valid token is accepted: {body}");

    let (status, headers, body) = post_with_token(&url, "none-1", "t", None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert!(
        body.contains(BROKER_AUDIENCE),
        "says which audience: {body}"
    );

    let mut expired = claims(&issuer.url, sub, BROKER_AUDIENCE);
    expired["exp"] = json!(now() - 600);
    expired["nbf"] = json!(now() - 1200);
    let token = key.sign(&expired);
    let answer = post_with_token(&url, "exp-1", "t", Some(&token)).await;
    assert_refused(&answer, &token, "expired");

    let mut early = claims(&issuer.url, sub, BROKER_AUDIENCE);
    early["nbf"] = json!(now() + 600);
    let token = key.sign(&early);
    let answer = post_with_token(&url, "nbf-1", "t", Some(&token)).await;
    assert_refused(&answer, &token, "not valid yet");

    let token = key.sign(&claims(
        &issuer.url,
        sub,
        "eventing.knative.dev/broker/default/other",
    ));
    let answer = post_with_token(&url, "aud-1", "t", Some(&token)).await;
    assert_refused(&answer, &token, "audience");

    // Signed by the trusted key but claiming another issuer.
    let token = key.sign(&claims(
        "http://127.0.0.1:9/elsewhere",
        sub,
        BROKER_AUDIENCE,
    ));
    let answer = post_with_token(&url, "iss-1", "t", Some(&token)).await;
    assert_refused(&answer, &token, "not trusted");

    let token = unsigned_token(&claims(&issuer.url, sub, BROKER_AUDIENCE));
    let answer = post_with_token(&url, "none-alg", "t", Some(&token)).await;
    assert_refused(&answer, &token, "invalid token");

    let token = key.sign_hs256_with_public_key(&claims(&issuer.url, sub, BROKER_AUDIENCE));
    let answer = post_with_token(&url, "hs-1", "t", Some(&token)).await;
    assert_refused(&answer, &token, "HS256");

    // A token signed by a key the issuer does not publish, under the issuer's kid.
    let stranger = TestKey::generate("k1");
    let token = stranger.sign(&claims(&issuer.url, sub, BROKER_AUDIENCE));
    let answer = post_with_token(&url, "sig-1", "t", Some(&token)).await;
    assert_refused(&answer, &token, "signature");

    // Only the valid one got in.
    let counted = server
        .metric(
            "rivulet_ingress_events_total",
            &[("broker", "default"), ("outcome", "accepted")],
        )
        .await;
    assert_eq!(counted, 1.0);
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_keys_so_rotation_is_honoured() {
    let old = TestKey::generate("old");
    let issuer = TestIssuer::start(vec![old.clone()]).await;
    let server = server_trusting(&issuer, Duration::ZERO).await;
    let url = server.ingress_url("default", "default");
    let sub = "system:serviceaccount:default:sender";

    let token = old.sign(&claims(&issuer.url, sub, BROKER_AUDIENCE));
    assert_eq!(post_with_token(&url, "r-1", "t", Some(&token)).await.0, 202);
    assert_eq!(issuer.jwks_fetches(), 1);

    let new = TestKey::generate("new");
    issuer.rotate(vec![new.clone()]);
    let token = new.sign(&claims(&issuer.url, sub, BROKER_AUDIENCE));
    let (status, _, body) = post_with_token(&url, "r-2", "t", Some(&token)).await;
    assert_eq!(
        status, 202,
        "the rotated key is fetched and accepted: {body}"
    );
    assert_eq!(issuer.jwks_fetches(), 2);

    // The old key is gone from the JWKS: once the keys are refetched it no longer verifies.
    let token = old.sign(&claims(&issuer.url, sub, BROKER_AUDIENCE));
    let (status, _, body) = post_with_token(&url, "r-3", "t", Some(&token)).await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn issuer_key_fetches_go_through_the_egress_policy() {
    let key = TestKey::generate("k1");
    let issuer = TestIssuer::start(vec![key.clone()]).await;
    let url = issuer.url.clone();
    let server = TestServer::start_with(move |options| {
        options
            .features
            .set_pair("authentication-oidc=enabled")
            .unwrap();
        options.oidc_issuers = vec![url];
        options.egress =
            rivulet::egress::EgressPolicy::new(Vec::new(), vec!["127.0.0.0/8".parse().unwrap()]);
    })
    .await;
    let token = key.sign(&claims(
        &issuer.url,
        "system:serviceaccount:default:sender",
        BROKER_AUDIENCE,
    ));
    let url = server.ingress_url("default", "default");
    let (status, _, body) = post_with_token(&url, "e-1", "t", Some(&token)).await;
    assert_eq!(
        status, 401,
        "keys from a denied address are not fetched: {body}"
    );
    assert_eq!(issuer.jwks_fetches(), 0);
    assert!(server.metric("rivulet_egress_refused_total", &[]).await >= 1.0);
}

#[tokio::test]
async fn unknown_kids_cannot_force_a_storm_of_key_fetches() {
    let key = TestKey::generate("k1");
    let issuer = TestIssuer::start(vec![key.clone()]).await;
    let server = server_trusting(&issuer, Duration::from_secs(3600)).await;
    let url = server.ingress_url("default", "default");
    let sub = "system:serviceaccount:default:sender";

    let token = key.sign(&claims(&issuer.url, sub, BROKER_AUDIENCE));
    assert_eq!(post_with_token(&url, "s-1", "t", Some(&token)).await.0, 202);
    for i in 0..10 {
        let token = key.sign_as_kid(
            &format!("made-up-{i}"),
            &claims(&issuer.url, sub, BROKER_AUDIENCE),
        );
        let answer = post_with_token(&url, &format!("s-x{i}"), "t", Some(&token)).await;
        assert_refused(&answer, &token, "no key with kid");
    }
    assert_eq!(issuer.jwks_fetches(), 1, "the keys were fetched once");
    // The cached key still verifies.
    assert_eq!(
        post_with_token(&url, "s-2", "t", Some(&token_for(&key, &issuer)))
            .await
            .0,
        202
    );
}

fn token_for(key: &TestKey, issuer: &TestIssuer) -> String {
    key.sign(&claims(
        &issuer.url,
        "system:serviceaccount:default:sender",
        BROKER_AUDIENCE,
    ))
}

#[tokio::test]
async fn oidc_is_off_by_default_and_brokers_publish_their_audience_when_on() {
    let off = TestServer::start().await;
    let status = support::post_binary(&off.base, "default/default", "plain-1", "t", "{}").await;
    assert_eq!(status, 202, "plain POST works with OIDC off");
    let broker = off.wait_ready("Broker", "default", "default").await;
    assert!(broker.pointer("/status/address/audience").is_none());
    let policies = condition(&broker, "EventPoliciesReady").expect("the condition is set");
    assert_eq!(policies["reason"], "OIDCDisabled");

    let issuer = TestIssuer::start(vec![TestKey::generate("k")]).await;
    let on = server_trusting(&issuer, Duration::from_secs(10)).await;
    let broker = on.wait_ready("Broker", "default", "default").await;
    assert_eq!(broker["status"]["address"]["audience"], BROKER_AUDIENCE);
    let policies = condition(&broker, "EventPoliciesReady").expect("the condition is set");
    assert_eq!(policies["status"], "True");
    assert_eq!(policies["reason"], "DefaultAuthorizationMode");
    assert!(
        policies["message"].as_str().unwrap().contains("allow-all"),
        "{policies}"
    );
}

/// Verifies a token with Rivulet's published keys, as a subscriber would.
async fn verify_with_rivulet_jwks(base: &str, token: &str, audience: &str) -> Value {
    let client = support::http();
    let discovery =
        support::json_of(client.get(format!("{base}/.well-known/openid-configuration"))).await;
    assert_eq!(discovery["issuer"], base);
    let jwks = support::json_of(client.get(discovery["jwks_uri"].as_str().unwrap())).await;
    let jwk: Jwk = serde_json::from_value(jwks["keys"][0].clone()).unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[base]);
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(&jwk).unwrap(), &validation)
        .expect("Rivulet's token verifies with its JWKS")
        .claims
}

#[tokio::test]
async fn rivulet_signs_its_deliveries_for_the_subscribers_audience() {
    let key = TestKey::generate("k");
    let issuer = TestIssuer::start(vec![key.clone()]).await;
    let server = server_trusting(&issuer, Duration::from_secs(10)).await;
    let subscriber = Recorder::start().await;
    let mut manifest = trigger("default", "signed", "default", &subscriber.url);
    manifest["spec"]["subscriber"]["audience"] = json!("my-subscriber");
    let trigger = server.create_trigger(&manifest).await;
    assert_eq!(trigger["status"]["subscriberAudience"], "my-subscriber");
    assert_eq!(
        trigger["status"]["auth"]["serviceAccountName"],
        "signed-oidc-eventing.knative.dev-trigger"
    );

    let token = token_for(&key, &issuer);
    let url = server.ingress_url("default", "default");
    assert_eq!(
        post_with_token(&url, "signed-1", "t", Some(&token)).await.0,
        202
    );
    let received = subscriber.wait_for_id("signed-1").await;
    let header = received.headers["authorization"].to_str().unwrap();
    let token = header.strip_prefix("Bearer ").expect("a bearer token");
    let claims = verify_with_rivulet_jwks(&server.base, token, "my-subscriber").await;
    assert_eq!(
        claims["sub"],
        "system:serviceaccount:default:signed-oidc-eventing.knative.dev-trigger"
    );

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let key_file = server.data_dir().join("oidc-signing-key.p8");
        let mode = std::fs::metadata(key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the signing key is private");
    }
}

#[tokio::test]
async fn a_trigger_delivering_to_a_broker_is_admitted_with_rivulets_own_token() {
    let key = TestKey::generate("k");
    let issuer = TestIssuer::start(vec![key.clone()]).await;
    let server = server_trusting(&issuer, Duration::from_secs(10)).await;
    server.create_broker("default", "second", Value::Null).await;
    let subscriber = Recorder::start().await;
    server
        .create_trigger(&trigger("default", "at-second", "second", &subscriber.url))
        .await;
    let forward = json!({
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": "to-second", "namespace": "default"},
        "spec": {"broker": "default", "subscriber": {"ref": {
            "apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "second"}}}
    });
    let forward = server.create_trigger(&forward).await;
    assert_eq!(
        forward["status"]["subscriberAudience"],
        "eventing.knative.dev/broker/default/second"
    );

    let url = server.ingress_url("default", "default");
    let token = token_for(&key, &issuer);
    assert_eq!(
        post_with_token(&url, "hop-1", "t", Some(&token)).await.0,
        202
    );
    subscriber.wait_for_id("hop-1").await;

    // Without a token the second broker refuses, so the hop went through verification.
    let (status, _, _) =
        post_with_token(&server.ingress_url("default", "second"), "hop-2", "t", None).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn kubernetes_tokens_come_from_the_token_request_api_and_are_cached() {
    use rivulet::auth::Identity;
    use rivulet::auth::tokens::{CachedTokens, KubeTokens, TokenProvider};
    use support::kube_api::{context, exchange};

    let (ctx, mut server) = context();
    let tokens = CachedTokens::new(std::sync::Arc::new(KubeTokens(
        ctx.kube_client().expect("a Kubernetes client"),
    )));
    let identity = Identity::for_resource("eventing.knative.dev", "Trigger", "team", "t1");
    let answer = json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "metadata": {"name": "t1-oidc-eventing.knative.dev-trigger", "namespace": "team"},
        "spec": {"audiences": ["eventing.knative.dev/broker/team/b"]},
        "status": {"token": "issued-by-the-cluster", "expirationTimestamp": "2099-01-01T00:00:00Z"}
    });
    let audience = "eventing.knative.dev/broker/team/b";
    let (token, requests) = exchange(
        &mut server,
        tokens.token(&identity, audience),
        vec![(201, answer)],
    )
    .await;
    assert_eq!(token.unwrap().value, "issued-by-the-cluster");
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.path,
        "/api/v1/namespaces/team/serviceaccounts/t1-oidc-eventing.knative.dev-trigger/token"
    );
    assert_eq!(request.body["kind"], "TokenRequest");
    assert_eq!(request.body["spec"]["audiences"], json!([audience]));
    assert_eq!(request.body["spec"]["expirationSeconds"], 3600);

    // Cached until shortly before it expires: no second request.
    let (again, requests) = exchange(&mut server, tokens.token(&identity, audience), vec![]).await;
    assert_eq!(again.unwrap().value, "issued-by-the-cluster");
    assert!(requests.is_empty(), "{requests:?}");

    // A refusal from the API server is an error naming the subject, not a panic.
    let (refused, _) = exchange(
        &mut server,
        tokens.token(&identity, "other-audience"),
        vec![(
            403,
            support::kube_api::status_error(
                403,
                "Forbidden",
                "cannot create serviceaccounts/token",
            ),
        )],
    )
    .await;
    let error = refused.unwrap_err().to_string();
    assert!(
        error.contains("system:serviceaccount:team:t1-oidc-eventing.knative.dev-trigger"),
        "{error}"
    );
}

#[tokio::test]
async fn source_and_sink_endpoints_take_only_authenticated_senders() {
    let key = TestKey::generate("k");
    let issuer = TestIssuer::start(vec![key.clone()]).await;
    let server = server_trusting(&issuer, Duration::from_secs(10)).await;
    let recorder = Recorder::start().await;
    let sub = "system:serviceaccount:default:sender";

    server
        .apply(&json!({
            "apiVersion": "sources.rivulet.dev/v1alpha1", "kind": "WebhookSource",
            "metadata": {"name": "hook", "namespace": "default"},
            "spec": {"sink": {"uri": recorder.url}}
        }))
        .await;
    let hook = server.wait_ready("WebhookSource", "default", "hook").await;
    let audience = "sources.rivulet.dev/webhooksource/default/hook";
    assert_eq!(hook["status"]["address"]["audience"], audience);
    let url = hook["status"]["address"]["url"].as_str().unwrap();
    let (status, headers, _) = post_with_token(url, "w-1", "t", None).await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer");
    let wrong = key.sign(&claims(&issuer.url, sub, BROKER_AUDIENCE));
    let answer = post_with_token(url, "w-2", "t", Some(&wrong)).await;
    assert_refused(&answer, &wrong, "audience");
    let right = key.sign(&claims(&issuer.url, sub, audience));
    let (status, _, body) = post_with_token(url, "w-3", "t", Some(&right)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        recorder.count(),
        1,
        "only the authenticated request got through"
    );

    server
        .apply(&json!({
            "apiVersion": "sinks.rivulet.dev/v1alpha1", "kind": "HttpForwardSink",
            "metadata": {"name": "fwd", "namespace": "default"},
            "spec": {"uri": recorder.url}
        }))
        .await;
    let sink = server.wait_ready("HttpForwardSink", "default", "fwd").await;
    let audience = "sinks.rivulet.dev/httpforwardsink/default/fwd";
    assert_eq!(sink["status"]["address"]["audience"], audience);
    let url = sink["status"]["address"]["url"].as_str().unwrap();
    let (status, _, _) = post_with_token(url, "s-1", "t", None).await;
    assert_eq!(status, 401);
    let right = key.sign(&claims(&issuer.url, sub, audience));
    let (status, _, body) = post_with_token(url, "s-2", "t", Some(&right)).await;
    assert_eq!(status, 202, "{body}");
    recorder.wait_for_id("s-2").await;
    assert!(recorder.events().iter().all(|e| e.id != "s-1"));
}

#[tokio::test]
async fn the_config_features_config_map_turns_oidc_on_while_running() {
    let server = TestServer::start().await;
    let url = server.ingress_url("default", "default");
    assert_eq!(post_with_token(&url, "before", "t", None).await.0, 202);
    server
        .apply(&json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "config-features", "namespace": "knative-eventing"},
            "data": {"authentication-oidc": "enabled"}
        }))
        .await;
    support::wait_for(
        "the broker to publish its audience",
        support::WAIT,
        || async {
            let broker = server.get("Broker", "default", "default").await?;
            (broker["status"]["address"]["audience"] == BROKER_AUDIENCE).then_some(())
        },
    )
    .await;
    let (status, headers, _) = post_with_token(&url, "after", "t", None).await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer");
}
