//! Broker ingress: `POST /{namespace}/{broker}` takes CloudEvents (binary, structured or
//! batched), stamps them, and answers `202` only once the broker's channel has them durably.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rivulet_channels::ChannelError;

mod observer;

pub use observer::{Observation, Observer};

use crate::auth::{Auth, AuthError};
pub use crate::brokers::{BrokerHandle, BrokerTable};
use crate::brokers::{Entry, KnativeIngress};
use crate::health::{Health, RefusalKind};
use crate::journal::{Arrival, Journal};
use crate::telemetry::{self, IngressSpans, Telemetry};
use rivulet_core::event::{self, Event, EventError, ExtensionValue};

/// Extension stamped with the time ingress accepted the event.
pub const ARRIVAL_TIME: &str = "knativearrivaltime";
/// Extension counting how many more hops an event may make: every delivery out of a trigger
/// (to its subscriber, its dead-letter sink, or as a reply) carries it less one, so an event
/// that comes back into a broker by any path ends its loop when the count runs out.
pub const BROKER_TTL: &str = "knativebrokerttl";
/// The TTL given to events that arrive without one, and the most an event may carry: a
/// larger value is lowered to it, so no sender can make a loop practically endless.
pub const DEFAULT_TTL: i32 = 255;
/// `Retry-After` (seconds) of the 503 answered while a broker's channel is full: space
/// frees as subscribers acknowledge, so trying again soon is reasonable.
pub const FULL_RETRY_AFTER_SECS: u64 = 1;

/// The `Retry-After` of a 503: storage recovery probes at least every 2 s.
const RETRY_AFTER_SECONDS: &str = "5";

/// Why ingress refused events; each maps to the contract's status code.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("broker {namespace}/{name} not found")]
    UnknownBroker { namespace: String, name: String },
    #[error("not a valid CloudEvent: {0}")]
    Invalid(#[from] EventError),
    #[error(
        "event {id} has {BROKER_TTL} {ttl}: it has made as many hops as its TTL allows \
         (an event loop?) and is not accepted"
    )]
    TtlExhausted {
        id: String,
        ttl: i32,
        /// How many events of the request had no hop left.
        exhausted: usize,
    },
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{0}")]
    Channel(#[from] ChannelError),
    #[error("{0}")]
    Auth(#[from] AuthError),
}

impl IngressError {
    pub fn status(&self) -> StatusCode {
        match self {
            IngressError::UnknownBroker { .. } => StatusCode::NOT_FOUND,
            IngressError::Invalid(_) | IngressError::TtlExhausted { .. } => StatusCode::BAD_REQUEST,
            IngressError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IngressError::Channel(
                ChannelError::Unavailable(_) | ChannelError::Closed | ChannelError::Full(_),
            ) => StatusCode::SERVICE_UNAVAILABLE,
            IngressError::Channel(_) => StatusCode::INTERNAL_SERVER_ERROR,
            IngressError::Auth(error) => error.status(),
        }
    }
}

impl IntoResponse for IngressError {
    fn into_response(self) -> Response {
        if let IngressError::Auth(error) = self {
            return error.into_response();
        }
        let status = self.status();
        if let IngressError::Channel(ChannelError::Full(_)) = &self {
            return (
                status,
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; charset=utf-8"),
                    ),
                    (
                        header::RETRY_AFTER,
                        HeaderValue::from(FULL_RETRY_AFTER_SECS),
                    ),
                ],
                format!("{self}; try again later\n"),
            )
                .into_response();
        }
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{self}\n"),
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // A full disk or a backend outage passes; tell senders when to try again.
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}

/// The intake logic shared by HTTP and replies, over the brokers of a [`BrokerTable`].
pub struct Ingress {
    brokers: Arc<BrokerTable>,
    body_limit: usize,
    /// Event-type discovery, told about accepted events without being waited for.
    observer: OnceLock<Observer>,
    /// OIDC authentication and EventPolicy authorization, once set.
    auth: OnceLock<Arc<Auth>>,
    /// Where each event's arrival is recorded, once set.
    journal: OnceLock<Journal>,
    /// Trace export, when an OTLP endpoint is configured.
    telemetry: OnceLock<Telemetry>,
    /// Delivery health: refused senders here, trigger failures from the dispatchers.
    health: OnceLock<Arc<Health>>,
}

impl Ingress {
    pub fn new(brokers: Arc<BrokerTable>, body_limit: usize) -> Self {
        Self {
            brokers,
            body_limit,
            observer: OnceLock::new(),
            auth: OnceLock::new(),
            journal: OnceLock::new(),
            telemetry: OnceLock::new(),
            health: OnceLock::new(),
        }
    }

    /// Reports delivery health (refused senders, trigger failures) from now on (once).
    pub fn set_health(&self, health: Arc<Health>) {
        let _ = self.health.set(health);
    }

    /// Where delivery health is reported, when set.
    pub fn health(&self) -> Option<&Arc<Health>> {
        self.health.get()
    }

    /// Tells the health reporter that `entry`'s broker refused a sender (401 or 403).
    fn report_refusal(&self, entry: &Entry, subject: Option<&str>, error: &AuthError) {
        let Some(health) = self.health.get() else {
            return;
        };
        let kind = match error {
            AuthError::Forbidden(_) => RefusalKind::Forbidden,
            AuthError::MissingToken { .. } | AuthError::InvalidToken(_) => {
                RefusalKind::Unauthenticated
            }
        };
        health
            .broker(&entry.handle.namespace, &entry.handle.name)
            .refused(kind, subject, &error.to_string());
    }

    /// Traces intake from now on, and lets dispatchers trace deliveries (once).
    pub fn set_telemetry(&self, telemetry: Telemetry) {
        let _ = self.telemetry.set(telemetry);
    }

    /// The tracer, when tracing is on.
    pub fn telemetry(&self) -> Option<&Telemetry> {
        self.telemetry.get()
    }

    /// Records arrivals in `journal` from now on (once).
    pub fn set_journal(&self, journal: Journal) {
        let _ = self.journal.set(journal);
    }

    /// The journal arrivals are recorded in (off until set).
    pub fn journal(&self) -> Journal {
        self.journal.get().cloned().unwrap_or_default()
    }

    /// Checks senders' tokens and EventPolicies from now on (once).
    pub fn set_auth(&self, auth: Arc<Auth>) {
        let _ = self.auth.set(auth);
    }

    /// OIDC and EventPolicy state, when set.
    pub fn auth(&self) -> Option<&Arc<Auth>> {
        self.auth.get()
    }

    /// Hands accepted events to event-type discovery from now on (once).
    pub fn set_observer(&self, observer: Observer) {
        let _ = self.observer.set(observer);
    }

    /// Tells discovery and the journal about events a broker answered `status` to; never
    /// waits. Discovery hears only of stored events.
    fn observe(
        &self,
        entry: &Entry,
        at: crate::journal::record::Millis,
        sender: String,
        status: StatusCode,
        error: Option<String>,
        events: Vec<Event>,
    ) {
        let journal = self.journal.get().filter(|j| j.enabled());
        // EventTypes name the broker they were seen on; events into a channel make none.
        let observer = self.observer.get().filter(|_| {
            status == StatusCode::ACCEPTED
                && !entry
                    .handle
                    .name
                    .ends_with(rivulet_core::resources::CHANNEL_NAME_SUFFIX)
        });
        if journal.is_none() && observer.is_none() {
            return;
        }
        let events: Arc<[Event]> = events.into();
        if let Some(observer) = observer {
            observer.observe(&entry.handle.namespace, &entry.handle.name, events.clone());
        }
        if let Some(journal) = journal {
            journal.arrived(
                &entry.counters.namespace,
                &entry.counters.name,
                Arrival {
                    at,
                    sender,
                    status: status.as_u16(),
                    error,
                },
                events,
            );
        }
    }

    /// Counts a request's events in Knative's ingress metrics, under their status and type.
    fn count_knative(&self, entry: &Entry, status: StatusCode, events: &[Event], took: Duration) {
        let knative = &self.brokers.metrics().knative;
        let code = status.as_u16();
        let millis = took.as_secs_f64() * 1000.0;
        let mut series = entry
            .counters
            .knative
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let by_type = series.entry(code).or_default();
        for event in events {
            let handles = match by_type.get(&event.ty) {
                Some(handles) => handles,
                None => {
                    let label = knative.event_type_label(
                        &entry.handle.namespace,
                        &entry.handle.name,
                        &event.ty,
                    );
                    let labels =
                        knative.ingress(&entry.handle.namespace, &entry.handle.name, label, code);
                    let handles = KnativeIngress {
                        count: knative.ingress_event_count.get_or_create_owned(&labels),
                        latency: knative
                            .ingress_dispatch_latencies
                            .get_or_create_owned(&labels),
                    };
                    // Types past the label bound share `other` and are not remembered here.
                    if by_type.len() >= rivulet_core::metrics::knative::EVENT_TYPES_PER_BROKER {
                        handles.count.inc();
                        handles.latency.observe(millis);
                        continue;
                    }
                    by_type.entry(event.ty.clone()).or_insert(handles)
                }
            };
            handles.count.inc();
            handles.latency.observe(millis);
        }
    }

    /// The brokers this ingress serves.
    pub fn brokers(&self) -> &Arc<BrokerTable> {
        &self.brokers
    }

    fn entry(&self, namespace: &str, name: &str) -> Option<Entry> {
        self.brokers.entry(namespace, name)
    }

    /// Stamps events and publishes them to the broker's channel; returns once durable.
    pub async fn accept(
        &self,
        namespace: &str,
        broker: &str,
        events: Vec<Event>,
    ) -> Result<(), IngressError> {
        self.accept_as(namespace, broker, events, "local".to_string())
            .await
    }

    /// Like [`Ingress::accept`], naming the sender for the journal.
    async fn accept_as(
        &self,
        namespace: &str,
        broker: &str,
        mut events: Vec<Event>,
        sender: String,
    ) -> Result<(), IngressError> {
        let Some(entry) = self.entry(namespace, broker) else {
            return Err(IngressError::UnknownBroker {
                namespace: namespace.to_string(),
                name: broker.to_string(),
            });
        };
        let mut spans =
            telemetry::ingress_spans(self.telemetry(), namespace, broker, None, &mut events);
        self.store(&entry, events, sender, &mut spans).await
    }

    /// Publishes events to the broker's channel, then counts, traces and records how that
    /// went.
    async fn store(
        &self,
        entry: &Entry,
        mut events: Vec<Event>,
        sender: String,
        spans: &mut IngressSpans,
    ) -> Result<(), IngressError> {
        let started = Instant::now();
        let at = crate::journal::record::now_millis();
        let published = publish(&entry.handle, &mut events).await;
        let status = match &published {
            Ok(()) => {
                spans.accepted();
                StatusCode::ACCEPTED
            }
            Err(error) => {
                spans.failed(error.status(), error);
                error.status()
            }
        };
        self.count_knative(entry, status, &events, started.elapsed());
        let error = published.as_ref().err().map(ToString::to_string);
        self.observe(entry, at, sender, status, error, events);
        published
    }

    /// Like [`Ingress::accept`] for a reply sent by `subject` (a trigger's OIDC identity):
    /// with `authentication-oidc` on, the broker's EventPolicies decide as for any sender.
    /// Replies never leave the process, so the identity needs no token to be believed.
    /// `sender` names it in the journal.
    pub async fn accept_from(
        &self,
        namespace: &str,
        broker: &str,
        events: Vec<Event>,
        subject: &str,
        sender: String,
    ) -> Result<(), IngressError> {
        if let Some(auth) = self.auth()
            && auth.enabled()
            && let Some(entry) = self.entry(namespace, broker)
            && let Err(error) = auth.authorize(&entry.handle.target(), subject, &events)
        {
            self.report_refusal(&entry, Some(subject), &error);
            let error = IngressError::from(error);
            self.observe(
                &entry,
                crate::journal::record::now_millis(),
                sender,
                error.status(),
                Some(error.to_string()),
                events,
            );
            return Err(error);
        }
        self.accept_as(namespace, broker, events, sender).await
    }

    /// The HTTP routes of ingress.
    pub fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route(
                "/{namespace}/{broker}",
                axum::routing::post(post_events)
                    .options(options)
                    .fallback(method_not_allowed),
            )
            .with_state(self)
    }
}

/// Stamps events and publishes them to a broker's channel; returns once durable.
async fn publish(handle: &BrokerHandle, events: &mut [Event]) -> Result<(), IngressError> {
    let arrival = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    check_ttl(events)?;
    let mut envelopes = Vec::with_capacity(events.len());
    for event in events.iter_mut() {
        stamp(event, &arrival)?;
        envelopes.push(event.to_envelope());
    }
    if envelopes.is_empty() {
        return Ok(());
    }
    handle.channel.publish(envelopes).await?;
    Ok(())
}

/// Who sent a request, for the journal: the authenticated subject, else the peer address.
fn sender_name(subject: Option<&str>, peer: Option<SocketAddr>) -> String {
    match (subject, peer) {
        (Some(subject), _) if !subject.is_empty() => subject.to_string(),
        (_, Some(peer)) => peer.to_string(),
        _ => "unknown".to_string(),
    }
}

/// Refuses the request when an event has no hop left (TTL zero or below), as Knative's
/// ingress does: storing it would only have every trigger drop it.
fn check_ttl(events: &[Event]) -> Result<(), IngressError> {
    let mut exhausted = events.iter().filter_map(|event| {
        let ttl = event.attribute(BROKER_TTL)?.parse::<i32>().ok()?;
        (ttl <= 0).then_some((event, ttl))
    });
    let Some((first, ttl)) = exhausted.next() else {
        return Ok(());
    };
    Err(IngressError::TtlExhausted {
        id: first.id.clone(),
        ttl,
        exhausted: 1 + exhausted.count(),
    })
}

/// Adds the arrival time and the broker TTL (the default when missing, lowered to it when
/// above); refuses a TTL that is not an integer.
fn stamp(event: &mut Event, arrival: &str) -> Result<(), IngressError> {
    event.set_extension(ARRIVAL_TIME, ExtensionValue::String(arrival.to_string()));
    match event.attribute(BROKER_TTL).map(|v| v.parse::<i32>()) {
        None => event.set_extension(BROKER_TTL, ExtensionValue::Integer(DEFAULT_TTL)),
        Some(Ok(ttl)) if ttl > DEFAULT_TTL => {
            event.set_extension(BROKER_TTL, ExtensionValue::Integer(DEFAULT_TTL));
        }
        Some(Ok(_)) => {}
        Some(Err(_)) => {
            return Err(EventError(format!("extension {BROKER_TTL} must be an integer")).into());
        }
    }
    Ok(())
}

/// The TTL an event carries (the default when it carries none or garbage).
pub fn ttl_of(event: &Event) -> i32 {
    event
        .attribute(BROKER_TTL)
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_TTL)
}

async fn post_events(
    State(ingress): State<Arc<Ingress>>,
    Path((namespace, broker)): Path<(String, String)>,
    request: Request,
) -> Response {
    let Some(entry) = ingress.entry(&namespace, &broker) else {
        return IngressError::UnknownBroker {
            namespace,
            name: broker,
        }
        .into_response();
    };
    match receive(&ingress, &entry, request).await {
        Ok(count) => {
            entry.counters.accepted.inc_by(count as u64);
            StatusCode::ACCEPTED.into_response()
        }
        Err(IngressError::Channel(ChannelError::Full(reason))) => {
            // The sender keeps the events and is told when to try again: pushed back, not
            // dropped. Debug only, since a full channel refuses every request for a while.
            tracing::debug!(%namespace, %broker, %reason, "ingress pushed back: channel full");
            entry.counters.full.inc();
            IngressError::Channel(ChannelError::Full(reason)).into_response()
        }
        Err(error) => {
            if let IngressError::TtlExhausted { exhausted, .. } = &error {
                entry.counters.ttl_dropped.inc_by(*exhausted as u64);
                if !entry.counters.ttl_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%namespace, %broker, %error, "ingress drops events whose TTL is exhausted (an event loop?); further drops are only counted in rivulet_events_dropped_total");
                }
            }
            if error.status().is_server_error() {
                entry.counters.unavailable.inc();
                if let Some(suppressed) = entry.counters.unavailable_log.allow() {
                    tracing::warn!(%namespace, %broker, %error, suppressed, "ingress could not store events (suppressed: how many more since the last such line)");
                } else {
                    tracing::debug!(%namespace, %broker, %error, "ingress could not store events");
                }
            } else {
                tracing::debug!(%namespace, %broker, %error, "ingress refused a request");
                entry.counters.refused.inc();
            }
            error.into_response()
        }
    }
}

async fn receive(
    ingress: &Ingress,
    entry: &Entry,
    request: Request,
) -> Result<usize, IngressError> {
    let (parts, body) = request.into_parts();
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    // Who sends is settled before the body is read, so anonymous senders cost little; with
    // OIDC off nothing is looked at (or allocated) here.
    let checks = ingress
        .auth()
        .filter(|auth| auth.enabled())
        .map(|auth| (auth, entry.handle.target()));
    let subject = match &checks {
        Some((auth, target)) => match auth.authenticate(target, &parts.headers).await {
            Ok(subject) => subject,
            Err(error) => {
                ingress.report_refusal(entry, None, &error);
                return Err(error.into());
            }
        },
        None => None,
    };
    let limit = ingress.body_limit;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(IngressError::TooLarge { limit });
    }
    let body = axum::body::to_bytes(Body::new(body), limit)
        .await
        .map_err(|_| IngressError::TooLarge { limit })?;
    let (_, mut events) = event::from_http(&parts.headers, body)?;
    let mut spans = telemetry::ingress_spans(
        ingress.telemetry(),
        &entry.handle.namespace,
        &entry.handle.name,
        Some(&parts.headers),
        &mut events,
    );
    let sender = || sender_name(subject.as_deref(), peer);
    if let (Some((auth, target)), Some(subject)) = (&checks, &subject)
        && let Err(error) = auth.authorize(target, subject, &events)
    {
        ingress.report_refusal(entry, Some(subject), &error);
        let error = IngressError::from(error);
        spans.failed(error.status(), &error);
        ingress.observe(
            entry,
            crate::journal::record::now_millis(),
            sender(),
            error.status(),
            Some(error.to_string()),
            events,
        );
        return Err(error);
    }
    let count = events.len();
    entry.counters.received.inc_by(count as u64);
    ingress.store(entry, events, sender(), &mut spans).await?;
    Ok(count)
}

async fn options() -> Response {
    (
        StatusCode::OK,
        [
            (header::ALLOW, HeaderValue::from_static("POST, OPTIONS")),
            (
                header::HeaderName::from_static("webhook-allowed-origin"),
                HeaderValue::from_static("*"),
            ),
            (
                header::HeaderName::from_static("webhook-allowed-rate"),
                HeaderValue::from_static("*"),
            ),
        ],
    )
        .into_response()
}

async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, HeaderValue::from_static("POST, OPTIONS"))],
        "broker ingress accepts POST (and OPTIONS)\n",
    )
        .into_response()
}
