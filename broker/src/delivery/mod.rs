//! Sending one event to one destination with Knative's delivery rules: retries on the
//! retryable status codes, linear or exponential backoff with a cap, `Retry-After`, per-request
//! timeout, replies, and the dead-letter sink with the `knativeerror*` extensions.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::auth::{BearerSource, Identity};
use crate::egress::{self, Egress, EgressError};
use rivulet_core::event::{self, Event, EventError, ExtensionValue};
use rivulet_core::resources::validation::parse_duration;
use rivulet_core::resources::{BackoffPolicy, DeliveryFormat, DeliverySpec};

/// Server-wide delivery defaults, for what neither broker nor trigger sets.
#[derive(Debug, Clone)]
pub struct DeliveryDefaults {
    /// Timeout of one request when `delivery.timeout` is not set.
    pub timeout: Duration,
    /// No backoff (nor `Retry-After`) waits longer than this.
    pub backoff_cap: Duration,
    /// The largest successful response (a reply event) read from a subscriber, in bytes;
    /// a larger one fails the attempt.
    pub max_response_body: usize,
}

impl Default for DeliveryDefaults {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            backoff_cap: Duration::from_secs(60),
            max_response_body: REPLY_LIMIT,
        }
    }
}

/// The header naming the namespace of the trigger, source or sink that sends an event.
pub const KN_NAMESPACE: &str = "kn-namespace";

/// A delivery spec resolved into numbers and URLs.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryPolicy {
    /// Retries after the first attempt.
    pub retry: u32,
    pub backoff_policy: BackoffPolicy,
    pub backoff_delay: Duration,
    /// The server's cap on any wait (`--backoff-cap`).
    pub backoff_cap: Duration,
    /// The delivery's own cap on the waits of its backoff (`backoffMax`).
    pub backoff_max: Option<Duration>,
    pub timeout: Duration,
    /// The longest `Retry-After` honoured; `None` caps it at `backoff_cap`.
    pub retry_after_max: Option<Duration>,
    pub format: DeliveryFormat,
    pub dead_letter_uri: Option<String>,
    /// PEM CA certificates of the dead-letter sink (its `CACerts`), for https.
    pub dead_letter_ca_certs: Option<String>,
    /// Who sends and for which audiences it presents OIDC tokens.
    pub auth: Option<DeliveryAuth>,
    /// Whether a reply is taken (`Prefer: reply`); not where one would be dropped unread,
    /// as when a Subscription without a subscriber passes events on to its reply.
    pub accepts_reply: bool,
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
            backoff_max: duration(&spec.backoff_max),
            timeout: duration(&spec.timeout).unwrap_or(defaults.timeout),
            retry_after_max: duration(&spec.retry_after_max),
            format: spec.format.unwrap_or(DeliveryFormat::Binary),
            dead_letter_uri,
            dead_letter_ca_certs: None,
            auth: None,
            accepts_reply: true,
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
            .min(self.backoff_max.unwrap_or(Duration::MAX))
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

/// The attempts of one delivery, as the journal keeps them: the first few and the last.
#[derive(Debug, Default)]
pub struct AttemptLog {
    pub attempts: Vec<crate::journal::Attempt>,
    /// Attempts made, including those not kept.
    pub count: u32,
    /// Set once attempts go to the dead-letter sink.
    pub dead_letter: bool,
}

impl AttemptLog {
    fn note(&mut self, attempt: u32, took: Duration, result: Result<StatusCode, &Failure>) {
        use crate::journal::record::{ATTEMPTS_KEPT, bounded_text, now_millis};
        let (status, retry_after, error) = match result {
            Ok(status) => (Some(status.as_u16()), None, None),
            Err(failure) => (
                failure.status.map(|s| s.as_u16()),
                failure.retry_after.map(|d| d.as_secs()),
                Some(bounded_text(&failure.message)),
            ),
        };
        let noted = crate::journal::Attempt {
            attempt,
            at: now_millis(),
            status,
            latency_ms: took.as_secs_f64() * 1000.0,
            retry_after_s: retry_after,
            error,
            dead_letter: self.dead_letter,
        };
        self.count += 1;
        if self.attempts.len() >= ATTEMPTS_KEPT {
            // Keep the first ones and the latest.
            self.attempts.pop();
        }
        self.attempts.push(noted);
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
    /// Why, in one word for a metric label: `response_too_large`, `timeout`, `network`,
    /// `status`, `redirect`, `malformed_reply`, `refused`, `local`.
    pub reason: &'static str,
    retryable: bool,
    retry_after: Option<Duration>,
}

impl Failure {
    /// Whether another attempt could succeed (a refusal, a redirect or a `4xx` cannot).
    pub fn retryable(&self) -> bool {
        self.retryable
    }

    /// No request was made, and none will be: the target is refused as it stands.
    fn final_without_response(message: String) -> Self {
        Failure {
            status: None,
            body: Bytes::new(),
            message,
            reason: "refused",
            retryable: false,
            retry_after: None,
        }
    }
}

/// The most of a failed response's body that is read: `knativeerrordata` keeps far less, and
/// a target must not make Rivulet buffer what it likes.
pub const FAILURE_BODY_LIMIT: usize = 64 * 1024;

/// The largest successful response (a reply event) that is read, unless configured otherwise
/// ([`DeliveryDefaults::max_response_body`]).
pub const REPLY_LIMIT: usize = 16 * 1024 * 1024;

/// How much of a target's answer goes into a log line.
const LOGGED_BODY_PREFIX: usize = 128;

/// Sends events over HTTP. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Sender {
    /// Trusts the system roots only.
    client: reqwest::Client,
    egress: Arc<Egress>,
    /// Clients that also trust the trust bundles and a destination's `CACerts`.
    clients: crate::tls::ClientCache,
    /// `transport-encryption` strict refuses plain http targets.
    features: Option<rivulet_core::features::FeatureFlags>,
    /// Bearer tokens for targets with an OIDC audience.
    bearer: Option<Arc<dyn BearerSource>>,
    /// The most of a successful response that is read.
    response_limit: usize,
    /// Destination URLs parsed already, by their text.
    urls: Arc<std::sync::RwLock<HashMap<String, reqwest::Url>>>,
    /// Whether requests carry the event's trace context as HTTP headers too (tracing on).
    trace_headers: bool,
}

/// Parsed destination URLs kept at most; past it the cache starts again empty.
const PARSED_URLS_KEPT: usize = 4096;

impl Default for Sender {
    fn default() -> Self {
        Self::new()
    }
}

/// The one place delivery clients are configured: under `egress`, trusting `extra_roots`
/// beside the system roots.
fn build_client(
    egress: &Arc<Egress>,
    extra_roots: Vec<reqwest::Certificate>,
) -> reqwest::Result<reqwest::Client> {
    egress
        .client_builder()
        .pool_max_idle_per_host(256)
        .tls_certs_merge(extra_roots)
        .build()
}

/// Builds clients for the TLS client cache, each under the same egress policy.
fn client_factory(egress: &Arc<Egress>) -> crate::tls::BuildClient {
    let egress = egress.clone();
    Arc::new(move |roots| build_client(&egress, roots))
}

impl Sender {
    /// A sender under the default egress policy (built-in refusals only), not counted in
    /// metrics.
    pub fn new() -> Self {
        Self::with_egress(Arc::new(Egress::default()))
    }

    /// A sender whose every request goes through `egress`.
    pub fn with_egress(egress: Arc<Egress>) -> Self {
        rivulet_core::install_crypto_provider();
        let client =
            build_client(&egress, Vec::new()).expect("a client with these settings builds");
        Self {
            client,
            clients: crate::tls::ClientCache::new(
                crate::tls::TrustBundles::default(),
                client_factory(&egress),
            ),
            egress,
            features: None,
            bearer: None,
            response_limit: REPLY_LIMIT,
            urls: Arc::default(),
            trace_headers: false,
        }
    }

    /// Sends the event's `traceparent` and `tracestate` as HTTP headers as well, as traced
    /// HTTP clients do.
    pub fn with_trace_headers(mut self, on: bool) -> Self {
        self.trace_headers = on;
        self
    }

    /// The egress policy this sender applies, for other components that call out.
    pub fn egress(&self) -> &Arc<Egress> {
        &self.egress
    }

    /// A sender that trusts `trust` (the trust-bundle ConfigMaps) and follows the
    /// `transport-encryption` flag in `features`.
    pub fn with_transport(
        mut self,
        trust: crate::tls::TrustBundles,
        features: rivulet_core::features::FeatureFlags,
    ) -> Self {
        self.clients = crate::tls::ClientCache::new(trust, client_factory(&self.egress));
        self.features = Some(features);
        self
    }

    /// The trust bundles this sender trusts.
    pub fn trust_bundles(&self) -> &crate::tls::TrustBundles {
        self.clients.trust()
    }

    /// Reads at most `limit` bytes of a successful response; beyond it the attempt fails
    /// and the rest is not read (the connection is dropped).
    pub fn with_response_limit(mut self, limit: usize) -> Self {
        self.response_limit = limit;
        self
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
        self.deliver_to(uri, None, event, policy).await
    }

    /// Like [`Sender::deliver`], trusting `ca_certs` (PEM, the destination's `CACerts`) for
    /// an https `uri` beside the system roots and trust bundles.
    pub async fn deliver_to(
        &self,
        uri: &str,
        ca_certs: Option<&str>,
        event: &Event,
        policy: &DeliveryPolicy,
    ) -> Outcome {
        self.deliver_logged(uri, ca_certs, event, policy, None)
            .await
    }

    /// Like [`Sender::deliver_to`], noting each attempt (to the subscriber and to the
    /// dead-letter sink) in `log` when given.
    pub async fn deliver_logged(
        &self,
        uri: &str,
        ca_certs: Option<&str>,
        event: &Event,
        policy: &DeliveryPolicy,
        mut log: Option<&mut AttemptLog>,
    ) -> Outcome {
        let audience = policy.auth.as_ref().and_then(|a| a.audience.as_deref());
        let (failure, attempts) = match self
            .send_with_retries(uri, ca_certs, event, policy, audience, log.as_deref_mut())
            .await
        {
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
        if let Some(log) = log.as_deref_mut() {
            log.dead_letter = true;
        }
        match self
            .send_to_dead_letter(dead_letter_uri, event, uri, &failure, policy, log)
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

    /// Sends `event` straight to the policy's dead-letter sink, without trying `destination`:
    /// for events that will never be delivered (their trigger or broker was deleted).
    /// `why` becomes `knativeerrordata`, as a refusal's reason does.
    pub async fn dead_letter(
        &self,
        event: &Event,
        destination: &str,
        why: &str,
        policy: &DeliveryPolicy,
    ) -> Result<(), Failure> {
        let Some(dead_letter_uri) = &policy.dead_letter_uri else {
            return Err(Failure::final_without_response(
                "no dead-letter sink".into(),
            ));
        };
        let failure = Failure {
            body: Bytes::from(why.to_owned()),
            ..Failure::final_without_response(why.to_owned())
        };
        self.send_to_dead_letter(dead_letter_uri, event, destination, &failure, policy, None)
            .await
            .map(drop)
            .map_err(|(failure, _)| failure)
    }

    /// Sends `event`, which `destination` did not take because of `failure`, to the policy's
    /// dead-letter sink at `dead_letter_uri`, with Knative's error extensions added.
    async fn send_to_dead_letter(
        &self,
        dead_letter_uri: &str,
        event: &Event,
        destination: &str,
        failure: &Failure,
        policy: &DeliveryPolicy,
        log: Option<&mut AttemptLog>,
    ) -> Result<(StatusCode, Option<Event>, u32), (Failure, u32)> {
        let dead_letter = dead_letter_event(event, destination, failure);
        let audience = policy
            .auth
            .as_ref()
            .and_then(|a| a.dead_letter_audience.as_deref());
        let ca_certs = policy.dead_letter_ca_certs.as_deref();
        self.send_with_retries(
            dead_letter_uri,
            ca_certs,
            &dead_letter,
            policy,
            audience,
            log,
        )
        .await
    }

    /// Attempts delivery `1 + retry` times at most. A malformed reply is final: sending the
    /// same event again would not make the reply valid.
    async fn send_with_retries(
        &self,
        uri: &str,
        ca_certs: Option<&str>,
        event: &Event,
        policy: &DeliveryPolicy,
        audience: Option<&str>,
        mut log: Option<&mut AttemptLog>,
    ) -> Result<(StatusCode, Option<Event>, u32), (Failure, u32)> {
        let refused = |failure: Failure, log: Option<&mut AttemptLog>| {
            if let Some(log) = log {
                log.note(1, Duration::ZERO, Err(&failure));
            }
            Err((failure, 1))
        };
        let client = match self.client_for(uri, ca_certs) {
            Ok(client) => client,
            // Trying again would not change the address or its certificates.
            Err(message) => return refused(Failure::final_without_response(message), log),
        };
        let url = match self.destination_url(uri) {
            Ok(url) => url,
            Err(failure) => return refused(failure, log),
        };
        let (mut headers, body) = match policy.format {
            DeliveryFormat::Binary => event::to_http_binary(event),
            DeliveryFormat::Json => event::to_http_structured(event),
        };
        if policy.accepts_reply {
            headers.insert(
                http::HeaderName::from_static("prefer"),
                HeaderValue::from_static("reply"),
            );
        }
        // The sender's namespace, as Knative's dispatchers say it to every destination.
        if let Some(namespace) = policy
            .auth
            .as_ref()
            .and_then(|auth| HeaderValue::from_str(&auth.identity.namespace).ok())
        {
            headers.insert(KN_NAMESPACE, namespace);
        }
        if self.trace_headers {
            crate::telemetry::put_trace_headers(event, &mut headers);
        }
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let started = std::time::Instant::now();
            let sent = match self.authorization(policy, audience).await {
                Ok(authorization) => {
                    let mut request = reqwest::Request::new(http::Method::POST, url.clone());
                    *request.headers_mut() = headers.clone();
                    if let Some(value) = authorization {
                        request
                            .headers_mut()
                            .insert(http::header::AUTHORIZATION, value);
                    }
                    *request.timeout_mut() = Some(policy.timeout);
                    *request.body_mut() = Some(body.clone().into());
                    self.send_once(&client, request).await
                }
                Err(failure) => Err(failure),
            };
            if let Some(log) = log.as_deref_mut() {
                let outcome = sent.as_ref().map(|delivered| delivered.0);
                log.note(attempt, started.elapsed(), outcome);
            }
            match sent {
                Ok(delivered) => return Ok((delivered.0, delivered.1, attempt)),
                Err(failure) => {
                    if !failure.retryable || attempt > policy.retry {
                        return Err((failure, attempt));
                    }
                    let wait = policy.wait_before(attempt, failure.retry_after);
                    tracing::debug!(%uri, attempt, ?wait, error = %failure.message,
                        answer = %body_prefix(&failure.body), "delivery failed, retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// The client for `uri`: refused when transport encryption is strict and `uri` is plain
    /// http (Knative's producers send to https only then); one that trusts `ca_certs` too
    /// when given.
    fn client_for(&self, uri: &str, ca_certs: Option<&str>) -> Result<reqwest::Client, String> {
        let plain = uri
            .get(..7)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://"));
        if plain
            && self.features.as_ref().is_some_and(|f| {
                f.current().transport_encryption
                    == rivulet_core::features::TransportEncryption::Strict
            })
        {
            return Err(format!(
                "transport-encryption is strict: not delivering to {uri} over plain http; give the destination an https address"
            ));
        }
        Ok(self
            .clients
            .client_for(ca_certs)?
            .unwrap_or_else(|| self.client.clone()))
    }

    /// The parsed URL of a destination, checked against the scheme rules and the egress
    /// policy. Parsed URLs are kept (a few thousand at most), as one trigger sends to the
    /// same address for every event.
    fn destination_url(&self, uri: &str) -> Result<reqwest::Url, Failure> {
        let cached = self
            .urls
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(uri)
            .cloned();
        let url = match cached {
            Some(url) => url,
            None => {
                let url = reqwest::Url::parse(uri).map_err(|error| {
                    Failure::final_without_response(format!(
                        "invalid destination URL {uri:?}: {error}"
                    ))
                })?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(Failure::final_without_response(format!(
                        "cannot deliver to {uri}: scheme {:?} is not supported, only http and https",
                        url.scheme()
                    )));
                }
                let mut urls = self
                    .urls
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if urls.len() >= PARSED_URLS_KEPT {
                    urls.clear();
                }
                urls.insert(uri.to_owned(), url.clone());
                url
            }
        };
        // Checked on every send: the policy can change while the URL stays.
        // IP-literal URLs never reach the resolver, which checks names after DNS.
        self.egress
            .check_url(&url)
            .map_err(|refused| refusal_failure(&refused))?;
        Ok(url)
    }

    async fn send_once(
        &self,
        client: &reqwest::Client,
        request: reqwest::Request,
    ) -> Result<(StatusCode, Option<Event>), Failure> {
        let timeout = request.timeout().copied().unwrap_or_default();
        let response = match client.execute(request).await {
            Ok(response) => response,
            Err(error) => {
                if let Some(refused) = egress::refusal_in(&error) {
                    return Err(refusal_failure(refused));
                }
                let (message, reason) = if error.is_timeout() {
                    (format!("no response within {timeout:?}"), "timeout")
                } else {
                    (
                        format!("request failed: {}", error_chain(&error)),
                        "network",
                    )
                };
                return Err(Failure {
                    status: None,
                    body: Bytes::new(),
                    message,
                    reason,
                    retryable: true,
                    retry_after: None,
                });
            }
        };
        let status = response.status();
        let response_headers = response.headers().clone();
        let reply_limit = self.response_limit;
        // Sending the event again would bring the same answer. The reason goes where the
        // body would (`knativeerrordata`): what the subscriber sent was not kept.
        let too_large = || {
            let message = format!(
                "the subscriber's response ({status}) is larger than the response limit of \
                 {reply_limit} bytes (--max-response-body); it was not read further"
            );
            Failure {
                status: Some(StatusCode::BAD_GATEWAY),
                body: Bytes::from(message.clone()),
                message,
                reason: "response_too_large",
                retryable: false,
                retry_after: None,
            }
        };
        let limit = if status.is_success() {
            if response
                .content_length()
                .is_some_and(|length| length > reply_limit as u64)
            {
                return Err(too_large());
            }
            reply_limit
        } else {
            FAILURE_BODY_LIMIT
        };
        let (body, complete) = match read_bounded(response, limit).await {
            Ok(read) => read,
            Err(error) => {
                return Err(Failure {
                    status: Some(status),
                    body: Bytes::new(),
                    message: format!("reading the response failed: {}", error_chain(&error)),
                    reason: "network",
                    retryable: true,
                    retry_after: None,
                });
            }
        };
        if status.is_redirection() {
            return Err(Failure {
                status: Some(status),
                retry_after: None,
                message: format!(
                    "subscriber answered {status}; redirects are not followed (deliver to the final address)"
                ),
                reason: "redirect",
                body,
                retryable: false,
            });
        }
        if !status.is_success() {
            return Err(Failure {
                status: Some(status),
                retry_after: retry_after(&response_headers),
                message: format!("subscriber answered {status}"),
                reason: "status",
                body,
                retryable: is_retryable(status),
            });
        }
        if !complete {
            return Err(too_large());
        }
        match reply_of(status, &response_headers, body.clone()) {
            Ok(reply) => Ok((status, reply)),
            Err(error) => Err(Failure {
                status: Some(StatusCode::BAD_GATEWAY),
                body,
                message: format!("malformed reply: {error}"),
                reason: "malformed_reply",
                retryable: false,
                retry_after: None,
            }),
        }
    }
}

/// A refused destination: final (the policy will not change between attempts), and the
/// dead-letter event's `knativeerrordata` says why, in Rivulet's words: nothing came from
/// the target.
fn refusal_failure(refused: &EgressError) -> Failure {
    let message = refused.to_string();
    Failure {
        body: Bytes::from(message.clone()),
        ..Failure::final_without_response(message)
    }
}

/// Reads at most `limit` bytes of the body and stops there (the connection is then dropped
/// rather than drained); whether the whole body was read.
async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<(Bytes, bool), reqwest::Error> {
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body.freeze(), false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body.freeze(), true))
}

/// The start of a target's answer, for a log line: short, and escaped.
fn body_prefix(body: &[u8]) -> String {
    let end = body.len().min(LOGGED_BODY_PREFIX);
    let mut text = String::from_utf8_lossy(&body[..end])
        .escape_debug()
        .to_string();
    if body.len() > end {
        text.push('…');
    }
    text
}

impl Failure {
    /// A failure before anything was sent.
    fn local(message: String) -> Self {
        Failure {
            status: None,
            body: Bytes::new(),
            message,
            reason: "local",
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
            backoff_max: None,
            timeout: Duration::from_secs(1),
            retry_after_max: None,
            format: DeliveryFormat::Binary,
            dead_letter_uri: None,
            dead_letter_ca_certs: None,
            auth: None,
            accepts_reply: true,
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
    fn backoff_max_caps_the_backoff_but_not_a_retry_after() {
        let mut p = policy(BackoffPolicy::Exponential, 100);
        p.backoff_max = Some(Duration::from_millis(300));
        assert_eq!(p.backoff(1), Duration::from_millis(200));
        assert_eq!(
            p.backoff(2),
            Duration::from_millis(300),
            "capped by backoffMax"
        );
        assert_eq!(p.backoff(30), Duration::from_millis(300), "no overflow");
        let mut linear = policy(BackoffPolicy::Linear, 100);
        linear.backoff_max = Some(Duration::from_millis(250));
        assert_eq!(linear.backoff(5), Duration::from_millis(250));
        // A Retry-After is bounded by retryAfterMax (else the server's cap), not backoffMax.
        assert_eq!(
            p.wait_before(1, Some(Duration::from_millis(800))),
            Duration::from_millis(800)
        );
        // The server's cap stays the ceiling.
        p.backoff_max = Some(Duration::from_secs(60));
        assert_eq!(p.backoff(20), Duration::from_secs(1));
        let spec = rivulet_core::resources::DeliverySpec {
            backoff_max: Some("PT0.5S".into()),
            ..Default::default()
        };
        let from_spec = DeliveryPolicy::from_spec(Some(&spec), None, &Default::default());
        assert_eq!(from_spec.backoff_max, Some(Duration::from_millis(500)));
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
            reason: "status",
            retryable: true,
            retry_after: None,
        };
        let event = rivulet_core::event::parse_structured(
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#,
        )
        .unwrap();
        let dead = dead_letter_event(&event, "http://sub/", &failure);
        assert_eq!(dead.attribute("knativeerrordest").unwrap(), "http://sub/");
        assert_eq!(dead.attribute("knativeerrorcode").unwrap(), "500");
        assert_eq!(dead.attribute("knativeerrordata").unwrap().len(), 1024);
    }
}
