//! Sending one event to one destination with Knative's delivery rules: retries on the
//! retryable status codes, linear or exponential backoff with a cap, `Retry-After`, per-request
//! timeout, replies, and the dead-letter sink with the `knativeerror*` extensions.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::auth::{BearerSource, Identity};
use crate::event::{self, Event, EventError, ExtensionValue};
use crate::resources::validation::parse_duration;
use crate::resources::{BackoffPolicy, DeliveryFormat, DeliverySpec};

/// Server-wide delivery defaults, for what neither broker nor trigger sets.
#[derive(Debug, Clone)]
pub struct DeliveryDefaults {
    /// Timeout of one request when `delivery.timeout` is not set.
    pub timeout: Duration,
    /// No backoff (nor `Retry-After`) waits longer than this.
    pub backoff_cap: Duration,
}

impl Default for DeliveryDefaults {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            backoff_cap: Duration::from_secs(60),
        }
    }
}

/// A delivery spec resolved into numbers and URLs.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryPolicy {
    /// Retries after the first attempt.
    pub retry: u32,
    pub backoff_policy: BackoffPolicy,
    pub backoff_delay: Duration,
    pub backoff_cap: Duration,
    pub timeout: Duration,
    /// The longest `Retry-After` honoured; `None` caps it at `backoff_cap`.
    pub retry_after_max: Option<Duration>,
    pub format: DeliveryFormat,
    pub dead_letter_uri: Option<String>,
    /// Who sends and for which audiences it presents OIDC tokens.
    pub auth: Option<DeliveryAuth>,
}

/// The OIDC side of a delivery: the sender's identity, and the audiences of the target and
/// of the dead-letter sink (no token is sent to one without an audience).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryAuth {
    pub identity: Identity,
    pub audience: Option<String>,
    pub dead_letter_audience: Option<String>,
}

impl DeliveryPolicy {
    /// Builds the policy from a (validated) spec. `dead_letter_uri` is the resolved
    /// `deadLetterSink`.
    pub fn from_spec(
        spec: Option<&DeliverySpec>,
        dead_letter_uri: Option<String>,
        defaults: &DeliveryDefaults,
    ) -> Self {
        let spec = spec.cloned().unwrap_or_default();
        let duration = |text: &Option<String>| {
            text.as_deref()
                .and_then(|t| parse_duration("delivery", t).ok())
        };
        DeliveryPolicy {
            retry: spec.retry.unwrap_or(0).max(0) as u32,
            backoff_policy: spec.backoff_policy.unwrap_or_default(),
            backoff_delay: duration(&spec.backoff_delay).unwrap_or(Duration::from_millis(200)),
            backoff_cap: defaults.backoff_cap,
            timeout: duration(&spec.timeout).unwrap_or(defaults.timeout),
            retry_after_max: duration(&spec.retry_after_max),
            format: spec.format.unwrap_or(DeliveryFormat::Binary),
            dead_letter_uri,
            auth: None,
        }
    }

    /// The wait before retry number `retry` (1 for the first retry), capped.
    pub fn backoff(&self, retry: u32) -> Duration {
        let wait = match self.backoff_policy {
            BackoffPolicy::Linear => self.backoff_delay.saturating_mul(retry),
            BackoffPolicy::Exponential => {
                let factor = 2u32.checked_pow(retry).unwrap_or(u32::MAX);
                self.backoff_delay.saturating_mul(factor)
            }
        };
        wait.min(self.backoff_cap)
    }

    /// The wait before a retry, honouring the response's `Retry-After` when longer.
    fn wait_before(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let backoff = self.backoff(retry);
        match retry_after {
            Some(asked) => {
                let limit = self.retry_after_max.unwrap_or(self.backoff_cap);
                backoff.max(asked.min(limit))
            }
            None => backoff,
        }
    }
}

/// Whether Knative's data-plane contract retries after this status.
pub fn is_retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 404 | 408 | 409 | 429) || status.is_server_error()
}

/// The final result of delivering one event.
#[derive(Debug)]
pub enum Outcome {
    /// The subscriber accepted the event, maybe with a reply event.
    Delivered {
        status: StatusCode,
        reply: Option<Event>,
        attempts: u32,
    },
    /// Every attempt failed; the event went to the dead-letter sink.
    DeadLettered { failure: Failure, attempts: u32 },
    /// Every attempt failed and there is no dead-letter sink, or it failed too.
    Failed {
        failure: Failure,
        attempts: u32,
        dead_letter_error: Option<Failure>,
    },
}

impl Outcome {
    /// How many attempts were made to the subscriber.
    pub fn attempts(&self) -> u32 {
        match self {
            Outcome::Delivered { attempts, .. }
            | Outcome::DeadLettered { attempts, .. }
            | Outcome::Failed { attempts, .. } => *attempts,
        }
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered { .. } => "delivered",
            Outcome::DeadLettered { .. } => "dead_lettered",
            Outcome::Failed { .. } => "failed",
        }
    }
}

/// Why the last attempt failed.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The response status, when there was a response.
    pub status: Option<StatusCode>,
    /// The response body (for `knativeerrordata`).
    pub body: Bytes,
    pub message: String,
    retryable: bool,
    retry_after: Option<Duration>,
}

/// Sends events over HTTP. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    /// Bearer tokens for targets with an OIDC audience.
    bearer: Option<Arc<dyn BearerSource>>,
}

impl Default for Sender {
    fn default() -> Self {
        Self::new()
    }
}

impl Sender {
    pub fn new() -> Self {
        crate::install_crypto_provider();
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .expect("a client with these settings builds");
        Self {
            client,
            bearer: None,
        }
    }

    /// Attaches tokens from `bearer` to requests whose target has an audience.
    pub fn with_bearer(mut self, bearer: Arc<dyn BearerSource>) -> Self {
        self.bearer = Some(bearer);
        self
    }

    /// The `Authorization` value for a request to `audience`, if one is due. A token that
    /// cannot be had fails the attempt (retryable: the token source may recover).
    async fn authorization(
        &self,
        policy: &DeliveryPolicy,
        audience: Option<&str>,
    ) -> Result<Option<HeaderValue>, Failure> {
        let (Some(bearer), Some(auth), Some(audience)) = (&self.bearer, &policy.auth, audience)
        else {
            return Ok(None);
        };
        match bearer.bearer(&auth.identity, audience).await {
            Ok(None) => Ok(None),
            Ok(Some(token)) => HeaderValue::try_from(format!("Bearer {token}"))
                .map(Some)
                .map_err(|_| Failure::local("the token is not a valid header value".into())),
            Err(error) => Err(Failure::local(error.to_string())),
        }
    }

    /// Delivers `event` to `uri` under `policy`: retries, then the dead-letter sink.
    pub async fn deliver(&self, uri: &str, event: &Event, policy: &DeliveryPolicy) -> Outcome {
        let audience = policy.auth.as_ref().and_then(|a| a.audience.as_deref());
        let (failure, attempts) = match self.send_with_retries(uri, event, policy, audience).await {
            Ok((status, reply, attempts)) => {
                return Outcome::Delivered {
                    status,
                    reply,
                    attempts,
                };
            }
            Err(failed) => failed,
        };
        let Some(dead_letter_uri) = &policy.dead_letter_uri else {
            return Outcome::Failed {
                failure,
                attempts,
                dead_letter_error: None,
            };
        };
        let dead_letter = dead_letter_event(event, uri, &failure);
        let audience = policy
            .auth
            .as_ref()
            .and_then(|a| a.dead_letter_audience.as_deref());
        match self
            .send_with_retries(dead_letter_uri, &dead_letter, policy, audience)
            .await
        {
            Ok(_) => Outcome::DeadLettered { failure, attempts },
            Err((dead_letter_failure, _)) => Outcome::Failed {
                failure,
                attempts,
                dead_letter_error: Some(dead_letter_failure),
            },
        }
    }

    /// Attempts delivery `1 + retry` times at most. A malformed reply is final: sending the
    /// same event again would not make the reply valid.
    async fn send_with_retries(
        &self,
        uri: &str,
        event: &Event,
        policy: &DeliveryPolicy,
        audience: Option<&str>,
    ) -> Result<(StatusCode, Option<Event>, u32), (Failure, u32)> {
        let (headers, body) = match policy.format {
            DeliveryFormat::Binary => event::to_http_binary(event),
            DeliveryFormat::Json => event::to_http_structured(event),
        };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let sent = match self.authorization(policy, audience).await {
                Ok(authorization) => {
                    let mut headers = headers.clone();
                    if let Some(value) = authorization {
                        headers.insert(http::header::AUTHORIZATION, value);
                    }
                    self.send_once(uri, &headers, body.clone(), policy.timeout)
                        .await
                }
                Err(failure) => Err(failure),
            };
            match sent {
                Ok(delivered) => return Ok((delivered.0, delivered.1, attempt)),
                Err(failure) => {
                    if !failure.retryable || attempt > policy.retry {
                        return Err((failure, attempt));
                    }
                    let wait = policy.wait_before(attempt, failure.retry_after);
                    tracing::debug!(%uri, attempt, ?wait, error = %failure.message, "delivery failed, retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn send_once(
        &self,
        uri: &str,
        headers: &HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(StatusCode, Option<Event>), Failure> {
        let request = self
            .client
            .post(uri)
            .headers(headers.clone())
            .header("prefer", HeaderValue::from_static("reply"))
            .timeout(timeout)
            .body(body);
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                let message = if error.is_timeout() {
                    format!("no response within {timeout:?}")
                } else {
                    format!("request failed: {}", error_chain(&error))
                };
                return Err(Failure {
                    status: None,
                    body: Bytes::new(),
                    message,
                    retryable: true,
                    retry_after: None,
                });
            }
        };
        let status = response.status();
        let response_headers = response.headers().clone();
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(error) => {
                return Err(Failure {
                    status: Some(status),
                    body: Bytes::new(),
                    message: format!("reading the response failed: {}", error_chain(&error)),
                    retryable: true,
                    retry_after: None,
                });
            }
        };
        if !status.is_success() {
            return Err(Failure {
                status: Some(status),
                retry_after: retry_after(&response_headers),
                message: format!("subscriber answered {status}"),
                body,
                retryable: is_retryable(status),
            });
        }
        match reply_of(status, &response_headers, body.clone()) {
            Ok(reply) => Ok((status, reply)),
            Err(error) => Err(Failure {
                status: Some(StatusCode::BAD_GATEWAY),
                body,
                message: format!("malformed reply: {error}"),
                retryable: false,
                retry_after: None,
            }),
        }
    }
}

impl Failure {
    /// A failure before anything was sent.
    fn local(message: String) -> Self {
        Failure {
            status: None,
            body: Bytes::new(),
            message,
            retryable: true,
            retry_after: None,
        }
    }
}

/// The reply event carried by a successful response, if any. A `202` is never a reply; a
/// response without CloudEvents headers or content type carries none.
fn reply_of(
    status: StatusCode,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Option<Event>, EventError> {
    if status == StatusCode::ACCEPTED || status == StatusCode::NO_CONTENT {
        return Ok(None);
    }
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let claims_event = headers.contains_key("ce-specversion")
        || content_type.starts_with("application/cloudevents");
    if !claims_event {
        return Ok(None);
    }
    let (_, mut events) = event::from_http(headers, body)?;
    match events.len() {
        0 => Ok(None),
        1 => Ok(events.pop()),
        n => Err(EventError(format!(
            "a reply carries one event, this one carries {n}"
        ))),
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// Knative's limit on `knativeerrordata`, in characters of base64.
const ERROR_DATA_LIMIT: usize = 1024;

/// The event sent to the dead-letter sink: the original plus the error extensions.
pub fn dead_letter_event(event: &Event, destination: &str, failure: &Failure) -> Event {
    let mut dead = event.clone();
    dead.set_extension(
        "knativeerrordest",
        ExtensionValue::String(destination.to_string()),
    );
    if let Some(status) = failure.status {
        dead.set_extension(
            "knativeerrorcode",
            ExtensionValue::String(status.as_u16().to_string()),
        );
    }
    if !failure.body.is_empty() {
        let mut data = base64::engine::general_purpose::STANDARD.encode(&failure.body);
        data.truncate(ERROR_DATA_LIMIT);
        dead.set_extension("knativeerrordata", ExtensionValue::String(data));
    }
    dead
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(kind: BackoffPolicy, delay_ms: u64) -> DeliveryPolicy {
        DeliveryPolicy {
            retry: 5,
            backoff_policy: kind,
            backoff_delay: Duration::from_millis(delay_ms),
            backoff_cap: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            retry_after_max: None,
            format: DeliveryFormat::Binary,
            dead_letter_uri: None,
            auth: None,
        }
    }

    #[test]
    fn linear_backoff_grows_by_the_delay() {
        let p = policy(BackoffPolicy::Linear, 100);
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(3), Duration::from_millis(300));
    }

    #[test]
    fn exponential_backoff_doubles_and_is_capped() {
        let p = policy(BackoffPolicy::Exponential, 100);
        assert_eq!(p.backoff(1), Duration::from_millis(200));
        assert_eq!(p.backoff(2), Duration::from_millis(400));
        assert_eq!(p.backoff(4), Duration::from_secs(1), "capped at one second");
        assert_eq!(p.backoff(40), Duration::from_secs(1), "no overflow");
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_maximum() {
        let mut p = policy(BackoffPolicy::Linear, 10);
        p.retry_after_max = Some(Duration::from_millis(500));
        assert_eq!(
            p.wait_before(1, Some(Duration::from_secs(3))),
            Duration::from_millis(500)
        );
        assert_eq!(
            p.wait_before(1, Some(Duration::from_millis(50))),
            Duration::from_millis(50)
        );
    }

    #[test]
    fn retryable_statuses_follow_the_data_plane_contract() {
        for code in [404, 408, 409, 429, 500, 502, 503, 504] {
            assert!(is_retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [400, 401, 403, 405, 410, 413, 415, 422] {
            assert!(!is_retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }

    #[test]
    fn error_data_is_base64_and_truncated() {
        let failure = Failure {
            status: Some(StatusCode::INTERNAL_SERVER_ERROR),
            body: Bytes::from(vec![b'x'; 5000]),
            message: String::new(),
            retryable: true,
            retry_after: None,
        };
        let event = crate::event::parse_structured(
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#,
        )
        .unwrap();
        let dead = dead_letter_event(&event, "http://sub/", &failure);
        assert_eq!(dead.attribute("knativeerrordest").unwrap(), "http://sub/");
        assert_eq!(dead.attribute("knativeerrorcode").unwrap(), "500");
        assert_eq!(dead.attribute("knativeerrordata").unwrap().len(), 1024);
    }
}
