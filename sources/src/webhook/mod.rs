//! WebhookSource (`sources.rivulet.dev/v1alpha1`): turns any HTTP POST to
//! `/webhooks/{namespace}/{name}` into a CloudEvent and delivers it to the sink.
//!
//! JSON bodies become JSON data (`application/json`); other bodies keep their content type.
//! With `spec.secret`, a request must carry `X-Hub-Signature-256: sha256=<hex>`, the
//! HMAC-SHA256 of the body under the secret (GitHub's scheme), compared in constant time.
//! The caller gets `202` only once the sink took the event; otherwise `502`/`503` with the
//! reason, so it can send again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hmac::{KeyInit, Mac};
use rivulet_core::knative_source;
use rivulet_core::resources::apply;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    CloudEventAttributes, CloudEventOverrides, Prepared, SourceAdapter, SourceContext, SourceError,
    SourceKey, SourceKind, SourceSpec, SourceStatus,
};
use rivulet_control::runtime::Context;
use rivulet_control::runtime::routes::HttpRoutes;
use rivulet_core::event::{Event, ExtensionValue, SpecVersion};
use rivulet_core::resources::validation::{ValidateSpec, ValidationError};
use rivulet_core::resources::{Condition, DeliverySpec, find_kind_by_name};

/// The event type when `spec.eventType` is not set.
pub const DEFAULT_EVENT_TYPE: &str = "dev.rivulet.webhook";
/// The header carrying the body's signature.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";
/// The largest body a webhook takes.
pub const BODY_LIMIT: usize = 4 * 1024 * 1024;

/// Rivulet's `WebhookSource`.
#[apply(knative_source!)]
#[kube(
    group = "sources.rivulet.dev",
    version = "v1alpha1",
    kind = "WebhookSource"
)]
#[kube(
    label("duck.knative.dev/addressable", "true"),
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.address.url"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookSourceSpec {
    /// The `type` of the events; `dev.rivulet.webhook` when unset.
    pub event_type: Option<String>,
    /// The `source` of the events; the source's own path when unset.
    pub event_source: Option<String>,
    /// Extension attributes taken from request headers: extension name to header name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extensions_from_headers: BTreeMap<String, String>,
    /// The Secret key holding the HMAC-SHA256 key; when set, requests must be signed.
    pub secret: Option<SecretKeySelector>,
    /// Where events go and what is added to them, as every source has.
    #[serde(flatten)]
    pub source: SourceSpec,
    /// Retries towards the sink while the caller waits (no dead-letter sink: the caller is
    /// told of the failure instead).
    pub delivery: Option<DeliverySpec>,
}

/// One key of a Secret in the source's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeySelector {
    pub name: String,
    pub key: String,
}

crate::register_source! {
    WebhookSource {
        group: "sources.rivulet.dev",
        version: "v1alpha1",
        plural: "webhooksources",
    }
}

inventory::submit! {
    HttpRoutes {
        listener: rivulet_control::runtime::routes::Listener::Ingress,
        build: routes,
    }
}

/// When no `delivery` is set: a few quick retries, since the caller is waiting.
fn default_delivery() -> DeliverySpec {
    DeliverySpec {
        retry: Some(3),
        backoff_policy: Some(rivulet_core::resources::BackoffPolicy::Exponential),
        backoff_delay: Some("PT0.1S".into()),
        timeout: Some("PT10S".into()),
        ..DeliverySpec::default()
    }
}

impl ValidateSpec for WebhookSourceSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.event_type.as_deref() == Some("") {
            return Err(ValidationError::new(
                "spec.eventType",
                "must not be empty; leave it out for dev.rivulet.webhook",
            ));
        }
        if self.event_source.as_deref() == Some("") {
            return Err(ValidationError::new(
                "spec.eventSource",
                "must not be empty; leave it out for the source's own path",
            ));
        }
        let mut as_overrides = CloudEventOverrides::default();
        for (extension, header_name) in &self.extensions_from_headers {
            as_overrides
                .extensions
                .insert(extension.clone(), header_name.clone());
            if header::HeaderName::from_bytes(header_name.as_bytes()).is_err() {
                return Err(ValidationError::new(
                    format!("spec.extensionsFromHeaders[{extension}]"),
                    format!("{header_name:?} is not a valid HTTP header name"),
                ));
            }
        }
        super::validate_ce_overrides("spec.extensionsFromHeaders", &as_overrides)
            .map_err(|e| ValidationError::new(e.field.replace(".extensions[", "["), e.message))?;
        if let Some(secret) = &self.secret {
            if secret.name.is_empty() {
                return Err(ValidationError::new("spec.secret.name", "is required"));
            }
            if secret.key.is_empty() {
                return Err(ValidationError::new("spec.secret.key", "is required"));
            }
        }
        self.source.validate_with_delivery(self.delivery.as_ref())?;
        if self
            .delivery
            .as_ref()
            .is_some_and(|delivery| delivery.dead_letter_sink.is_some())
        {
            return Err(ValidationError::new(
                "spec.delivery.deadLetterSink",
                "is not supported: a webhook source answers its caller with the failure instead",
            ));
        }
        Ok(())
    }
}

impl SourceKind for WebhookSource {
    const KIND: &'static str = "WebhookSource";

    fn source(&self) -> &SourceSpec {
        &self.spec.source
    }

    fn delivery(&self) -> Option<&DeliverySpec> {
        self.spec.delivery.as_ref()
    }

    fn default_delivery() -> DeliverySpec {
        self::default_delivery()
    }

    async fn prepare(&self, key: &SourceKey, ctx: &Arc<Context>) -> Result<Prepared, Condition> {
        let spec = &self.spec;
        let mut conditions = Vec::new();
        if let Some(selector) = &spec.secret {
            read_secret(ctx, &key.namespace, selector)
                .await
                .map_err(|reason| {
                    Condition::new("SecretResolved", false, "SecretNotFound", reason)
                })?;
            conditions.push(Condition::new("SecretResolved", true, "", ""));
        }
        let event_type = spec
            .event_type
            .clone()
            .unwrap_or_else(|| DEFAULT_EVENT_TYPE.into());
        let event_source = spec
            .event_source
            .clone()
            .unwrap_or_else(|| webhook_path(&key.namespace, &key.name));
        let config = WebhookConfig {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            event_type: event_type.clone(),
            event_source: event_source.clone(),
            extensions_from_headers: spec.extensions_from_headers.clone(),
            secret: spec.secret.clone(),
        };
        Ok(Prepared {
            fingerprint: format!("{config:?}"),
            adapter: Arc::new(WebhookAdapter {
                endpoints: ctx.extensions.get_or_default::<Endpoints>(),
                config: Arc::new(config),
            }),
            ce_attributes: vec![CloudEventAttributes {
                type_: event_type,
                source: event_source,
            }],
            address: Some(format!(
                "{}{}",
                ctx.settings.base_url,
                webhook_path(&key.namespace, &key.name)
            )),
            conditions,
        })
    }
}

/// Where a webhook source takes requests.
pub fn webhook_path(namespace: &str, name: &str) -> String {
    format!("/webhooks/{namespace}/{name}")
}

#[derive(Debug)]
struct WebhookConfig {
    namespace: String,
    name: String,
    event_type: String,
    event_source: String,
    extensions_from_headers: BTreeMap<String, String>,
    secret: Option<SecretKeySelector>,
}

/// A webhook that takes requests: its configuration and its sink.
struct Endpoint {
    config: Arc<WebhookConfig>,
    sink: super::SinkClient,
}

/// A webhook's namespace and name.
type EndpointKey = (String, String);

/// The webhooks that take requests in one runtime.
#[derive(Default, Clone)]
struct Endpoints(Arc<RwLock<HashMap<EndpointKey, Arc<Endpoint>>>>);

impl Endpoints {
    fn get(&self, namespace: &str, name: &str) -> Option<Arc<Endpoint>> {
        self.0
            .read()
            .expect("lock poisoned")
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }
}

/// A webhook source's adapter: it publishes its endpoint while it runs.
struct WebhookAdapter {
    endpoints: Endpoints,
    config: Arc<WebhookConfig>,
}

#[async_trait]
impl SourceAdapter for WebhookAdapter {
    async fn run(&self, ctx: &SourceContext) -> Result<(), SourceError> {
        let key = (self.config.namespace.clone(), self.config.name.clone());
        let endpoint = Arc::new(Endpoint {
            config: self.config.clone(),
            sink: ctx.sink.clone(),
        });
        self.endpoints
            .0
            .write()
            .expect("lock poisoned")
            .insert(key.clone(), endpoint.clone());
        ctx.cancel.cancelled().await;
        let mut map = self.endpoints.0.write().expect("lock poisoned");
        // A newer adapter of the same source may have taken the place already.
        if map.get(&key).is_some_and(|e| Arc::ptr_eq(e, &endpoint)) {
            map.remove(&key);
        }
        Ok(())
    }
}

/// The value of a Secret key in `namespace` (`data` is base64, `stringData` plain).
async fn read_secret(
    ctx: &Context,
    namespace: &str,
    selector: &SecretKeySelector,
) -> Result<Vec<u8>, String> {
    let kind = find_kind_by_name(Some("v1"), "Secret").ok_or("Secrets are not served")?;
    let secret = ctx
        .store
        .get(kind, namespace, &selector.name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("Secret {namespace}/{} does not exist", selector.name))?;
    rivulet_core::resources::secret::secret_value(&secret, &selector.key)
        .map_err(|e| format!("Secret {namespace}/{}: {e}", selector.name))?
        .ok_or_else(|| {
            format!(
                "Secret {namespace}/{} has no key {:?}",
                selector.name, selector.key
            )
        })
}

fn routes(ctx: Arc<Context>) -> axum::Router {
    axum::Router::new()
        .route("/webhooks/{namespace}/{name}", axum::routing::any(receive))
        .with_state(ctx)
}

fn answer(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{}\n", message.into()),
    )
        .into_response()
}

async fn receive(
    State(ctx): State<Arc<Context>>,
    Path((namespace, name)): Path<(String, String)>,
    request: Request,
) -> Response {
    if request.method() != Method::POST {
        let mut response = answer(StatusCode::METHOD_NOT_ALLOWED, "webhooks take POST");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let endpoints = ctx.extensions.get_or_default::<Endpoints>();
    let Some(endpoint) = endpoints.get(&namespace, &name) else {
        return answer(
            StatusCode::NOT_FOUND,
            format!("no ready WebhookSource {namespace}/{name}"),
        );
    };
    let (parts, body) = request.into_parts();
    // With authentication-oidc on, the sender's token is checked before the body is read.
    let target = rivulet_broker::auth::TargetRef {
        group: "sources.rivulet.dev".into(),
        kind: "WebhookSource".into(),
        namespace: namespace.clone(),
        name: name.clone(),
        labels: Default::default(),
    };
    let auth = ctx.ingress.auth().cloned();
    let subject = match &auth {
        Some(auth) => match auth.authenticate(&target, &parts.headers).await {
            Ok(subject) => subject,
            Err(refused) => return refused.into_response(),
        },
        None => None,
    };
    let body = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(body) => body,
        Err(_) => {
            return answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {BODY_LIMIT} bytes"),
            );
        }
    };
    if let Some(selector) = &endpoint.config.secret {
        let key = match read_secret(&ctx, &namespace, selector).await {
            Ok(key) => key,
            Err(reason) => {
                tracing::warn!(%namespace, webhook = %name, %reason, "webhook secret unavailable");
                return answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the webhook's secret is not available",
                );
            }
        };
        if let Err((status, reason)) = verify_signature(&key, &parts.headers, &body) {
            tracing::debug!(%namespace, webhook = %name, %reason, "webhook request refused");
            return answer(status, reason);
        }
    }
    let event = match to_event(&endpoint.config, &parts.headers, body) {
        Ok(event) => event,
        Err(reason) => return answer(StatusCode::BAD_REQUEST, reason),
    };
    if let (Some(auth), Some(subject)) = (&auth, &subject)
        && let Err(refused) = auth.authorize(&target, subject, std::slice::from_ref(&event))
    {
        return refused.into_response();
    }
    let id = event.id.clone();
    match endpoint.sink.send(event).await {
        Ok(_) => answer(StatusCode::ACCEPTED, format!("accepted as event {id}")),
        Err(error) if error.is_temporary() => {
            answer(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
        }
        Err(error) => answer(StatusCode::BAD_GATEWAY, error.to_string()),
    }
}

/// Checks `X-Hub-Signature-256: sha256=<hex>` against the body, in constant time.
/// A missing signature is `401`, a wrong one `403`.
pub fn verify_signature(
    key: &[u8],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), (StatusCode, String)> {
    let Some(value) = headers.get(SIGNATURE_HEADER) else {
        return Err((
            StatusCode::UNAUTHORIZED,
            "missing header X-Hub-Signature-256 (sha256=<hex HMAC of the body>)".into(),
        ));
    };
    let refused = |why: &str| (StatusCode::FORBIDDEN, format!("signature refused: {why}"));
    let text = value.to_str().map_err(|_| refused("not text"))?;
    let hex = text
        .strip_prefix("sha256=")
        .ok_or_else(|| refused("it must start with sha256="))?;
    let expected = decode_hex(hex).ok_or_else(|| refused("not hexadecimal"))?;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key)
        .map_err(|_| refused("the key cannot be used"))?;
    mac.update(body);
    mac.verify_slice(&expected)
        .map_err(|_| refused("it does not match the body"))
}

/// The `sha256=<hex>` signature of `body` under `key`, as a sender computes it.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut text = String::from("sha256=");
    for byte in digest.iter() {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Builds the CloudEvent for one request.
fn to_event(config: &WebhookConfig, headers: &HeaderMap, body: Bytes) -> Result<Event, String> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| {
            v.to_str()
                .map(str::to_string)
                .map_err(|_| "header Content-Type is not text".to_string())
        })
        .transpose()?;
    let essence = content_type.as_deref().map(|c| {
        c.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    let datacontenttype = if body.is_empty() {
        None
    } else {
        match essence.as_deref() {
            Some(e) if e == "application/json" || e.ends_with("+json") => {
                if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
                    return Err(format!(
                        "the body is not valid JSON although Content-Type is {e}"
                    ));
                }
                Some("application/json".to_string())
            }
            Some(_) => content_type.clone(),
            None if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok() => {
                Some("application/json".to_string())
            }
            None => Some("application/octet-stream".to_string()),
        }
    };
    let mut extensions = BTreeMap::new();
    for (extension, header_name) in &config.extensions_from_headers {
        if let Some(value) = headers.get(header_name.as_str()) {
            let value = value
                .to_str()
                .map_err(|_| format!("header {header_name} is not text"))?;
            extensions.insert(extension.clone(), ExtensionValue::String(value.to_string()));
        }
    }
    let mut event = Event {
        specversion: SpecVersion::V10,
        id: uuid::Uuid::new_v4().to_string(),
        source: config.event_source.clone(),
        ty: config.event_type.clone(),
        datacontenttype,
        dataschema: None,
        subject: None,
        time: Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        datacontentencoding: None,
        extensions,
        data: (!body.is_empty()).then_some(body),
    };
    // The caller's trace goes on through the event (the distributed tracing extension).
    rivulet_broker::telemetry::take_trace_headers(headers, &mut event);
    event
        .validate()
        .map_err(|e| format!("the request does not make a valid CloudEvent: {e}"))?;
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WebhookConfig {
        WebhookConfig {
            namespace: "default".into(),
            name: "hook".into(),
            event_type: "com.github.push".into(),
            event_source: "/github".into(),
            extensions_from_headers: [("githubevent".to_string(), "X-GitHub-Event".to_string())]
                .into_iter()
                .collect(),
            secret: None,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn signatures_are_checked() {
        let body = b"{\"zen\":\"Keep it logically awesome.\"}";
        let good = sign(b"s3cret", body);
        assert!(verify_signature(b"s3cret", &headers(&[(SIGNATURE_HEADER, &good)]), body).is_ok());
        let (status, _) =
            verify_signature(b"other", &headers(&[(SIGNATURE_HEADER, &good)]), body).unwrap_err();
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = verify_signature(b"s3cret", &headers(&[]), body).unwrap_err();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = verify_signature(
            b"s3cret",
            &headers(&[(SIGNATURE_HEADER, "sha256=zz")]),
            body,
        )
        .unwrap_err();
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) =
            verify_signature(b"s3cret", &headers(&[(SIGNATURE_HEADER, &good[7..])]), body)
                .unwrap_err();
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "the sha256= prefix is required"
        );
    }

    #[test]
    fn known_signature_vector() {
        // HMAC-SHA256 of "The quick brown fox jumps over the lazy dog" under "key".
        assert_eq!(
            sign(b"key", b"The quick brown fox jumps over the lazy dog"),
            "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }

    #[test]
    fn json_stays_json_and_other_bodies_keep_their_type() {
        let event = to_event(
            &config(),
            &headers(&[
                ("content-type", "application/json"),
                ("x-github-event", "push"),
            ]),
            Bytes::from_static(b"{\"n\": 12345678901234567890123}"),
        )
        .unwrap();
        assert_eq!(event.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(
            event.data.as_deref(),
            Some(&b"{\"n\": 12345678901234567890123}"[..])
        );
        assert_eq!(event.attribute("githubevent").as_deref(), Some("push"));
        assert_eq!(event.ty, "com.github.push");

        let form = to_event(
            &config(),
            &headers(&[("content-type", "application/x-www-form-urlencoded")]),
            Bytes::from_static(b"a=1&b=2"),
        )
        .unwrap();
        assert_eq!(
            form.datacontenttype.as_deref(),
            Some("application/x-www-form-urlencoded")
        );
        assert!(form.attribute("githubevent").is_none());

        let untyped_json =
            to_event(&config(), &headers(&[]), Bytes::from_static(b"[1,2]")).unwrap();
        assert_eq!(
            untyped_json.datacontenttype.as_deref(),
            Some("application/json")
        );
        let untyped = to_event(&config(), &headers(&[]), Bytes::from_static(b"\x00\x01")).unwrap();
        assert_eq!(
            untyped.datacontenttype.as_deref(),
            Some("application/octet-stream")
        );

        let broken = to_event(
            &config(),
            &headers(&[("content-type", "application/json")]),
            Bytes::from_static(b"{not json"),
        );
        assert!(broken.unwrap_err().contains("not valid JSON"));
    }

    #[test]
    fn validation_names_the_field() {
        let mut spec = WebhookSourceSpec {
            source: SourceSpec {
                sink: rivulet_core::resources::Destination {
                    uri: Some("http://127.0.0.1:1/".into()),
                    ..Default::default()
                },
                ce_overrides: None,
            },
            ..WebhookSourceSpec::default()
        };
        assert!(spec.validate().is_ok());
        spec.extensions_from_headers
            .insert("Bad".into(), "X-Thing".into());
        assert_eq!(
            spec.validate().unwrap_err().field,
            "spec.extensionsFromHeaders[Bad]"
        );
        spec.extensions_from_headers.clear();
        spec.delivery = Some(DeliverySpec {
            dead_letter_sink: Some(spec.source.sink.clone()),
            ..DeliverySpec::default()
        });
        assert_eq!(
            spec.validate().unwrap_err().field,
            "spec.delivery.deadLetterSink"
        );
        spec.delivery = None;
        spec.secret = Some(SecretKeySelector {
            name: "s".into(),
            key: String::new(),
        });
        assert_eq!(spec.validate().unwrap_err().field, "spec.secret.key");
    }
}
