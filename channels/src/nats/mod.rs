//! The `nats` backend: NATS JetStream through async-nats.
//!
//! One stream per broker, `KN_BROKER_{NAMESPACE}_{NAME}` (upper case, `.` as `_`), taking the
//! subjects `kn.broker.{namespace}.{name}.>`; an event is published on
//! `kn.broker.{namespace}.{name}.{type}` (the type escaped into one subject token) in the
//! CloudEvents NATS binding's binary mode ([`binding`]). The stream keeps events within the
//! optional `maxAge` and `maxBytes` limits (limits retention; `retention: interest` removes an
//! event once every subscription acknowledged it, but NATS 2.9 servers were seen losing
//! acknowledged events of such streams across a restart); when `maxBytes` is reached new
//! events are refused (ingress answers 503) rather than old ones dropped.
//!
//! Each subscription is a durable pull consumer named after it, created by
//! [`Channel::ensure_subscription`] with "deliver new", so events published before it exists
//! never reach it. A prefilter naming a `type` is pushed down as the consumer's filter
//! subject; the rest of the prefilter is applied here and the events it rejects are
//! acknowledged without being handed out.
//!
//! A consumer pulls only as many events as `max_in_flight` leaves room for, and keeps every
//! event it holds alive on the server with progress acknowledgements, so `ackWait` bounds how
//! soon a crashed process's events are delivered again, not how long a delivery may take.
//! The `id` handed out is the event's stream sequence. A new [`Channel::consume`] takes over:
//! the previous consumer's unacknowledged events are negatively acknowledged (in order) and so
//! delivered again at once, and the same happens when a consumer is dropped.

pub mod binding;

/// The NATS client this backend is built on, for the NATS source and sink and for tests.
pub use async_nats;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind, ErrorCode};
use async_nats::{Client, Subject};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{Notify, watch};

use crate::{
    Backend, Channel, ChannelConfig, ChannelError, Envelope, Prefilter, Received, Subscription,
    SubscriptionSpec,
};

inventory::submit! {
    Backend {
        name: "nats",
        durable: true,
        broker_class: Some("NatsJetStreamBroker"),
        channel_kind: Some("NatsJetStreamChannel"),
        open: |config| crate::opened(async move { NatsChannel::open(&config).await }),
    }
}

/// The server used when the configuration names none.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";
/// How long the server waits for an acknowledgement (or a progress signal) before it delivers
/// an event again.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(10);
/// Events a consumer without `max_in_flight` buffers ahead of its subscriber.
const PREFETCH: usize = 256;
/// How long one pull request waits on the server for events.
const PULL_EXPIRY: Duration = Duration::from_secs(3);
/// Pause after a failed pull before the next one.
const PULL_RETRY: Duration = Duration::from_millis(500);
/// Bound on JetStream API requests and publish acknowledgements.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The backend settings a broker's `spec.config` gives.
#[derive(Debug, Clone, PartialEq)]
pub struct NatsSettings {
    /// `url`: the NATS server(s), comma-separated.
    pub url: String,
    /// `storage`: `file` (default) or `memory`.
    pub storage: StorageType,
    /// `replicas`: copies of the stream in a cluster (1 to 5, default 1).
    pub replicas: usize,
    /// `maxAge`: events older than this are removed; zero keeps them.
    pub max_age: Duration,
    /// `maxBytes`: the stream's size limit; -1 for none.
    pub max_bytes: i64,
    /// `ackWait`: redelivery delay of events whose consumer went away without a word.
    pub ack_wait: Duration,
    /// `retention`: `limits` (default: events stay until `maxAge`/`maxBytes`) or `interest`
    /// (an event is removed once every subscription acknowledged it).
    pub retention: RetentionPolicy,
}

impl NatsSettings {
    /// Reads the settings, with an error naming the key that is wrong.
    pub fn from_settings(settings: &BTreeMap<String, String>) -> Result<Self, ChannelError> {
        let get = |key: &str| {
            settings
                .get(key)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
        };
        let bad = |key: &str, value: &str, why: &str| {
            ChannelError::Config(format!("NATS setting {key} = {value:?}: {why}"))
        };
        let storage = match get("storage").map(str::to_ascii_lowercase).as_deref() {
            None | Some("file") => StorageType::File,
            Some("memory") => StorageType::Memory,
            Some(other) => return Err(bad("storage", other, "expected file or memory")),
        };
        let replicas = match get("replicas") {
            None => 1,
            Some(text) => match text.parse::<usize>() {
                Ok(n @ 1..=5) => n,
                _ => return Err(bad("replicas", text, "expected a number from 1 to 5")),
            },
        };
        let max_age = match get("maxAge") {
            None => Duration::ZERO,
            Some(text) => parse_duration(text).ok_or_else(|| {
                bad(
                    "maxAge",
                    text,
                    "expected a duration such as 24h, 90m, 1h30m or PT24H",
                )
            })?,
        };
        let max_bytes = match get("maxBytes") {
            None => -1,
            Some(text) => parse_size(text).ok_or_else(|| {
                bad(
                    "maxBytes",
                    text,
                    "expected a size in bytes such as 1073741824, 512Mi or 1G, or -1",
                )
            })?,
        };
        let ack_wait = match get("ackWait") {
            None => DEFAULT_ACK_WAIT,
            Some(text) => parse_duration(text)
                .filter(|d| *d >= Duration::from_secs(1))
                .ok_or_else(|| bad("ackWait", text, "expected a duration of at least 1s"))?,
        };
        let retention = match get("retention").map(str::to_ascii_lowercase).as_deref() {
            None | Some("limits") => RetentionPolicy::Limits,
            Some("interest") => RetentionPolicy::Interest,
            Some(other) => return Err(bad("retention", other, "expected limits or interest")),
        };
        Ok(Self {
            url: get("url").unwrap_or(DEFAULT_URL).to_owned(),
            retention,
            storage,
            replicas,
            max_age,
            max_bytes,
            ack_wait,
        })
    }
}

/// Reads `90s`, `500ms`, `1h30m`, `7d` (Go style) or `PT1H30M`, `P7D` (ISO-8601).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let iso = text.strip_prefix('P').or_else(|| text.strip_prefix('p'));
    let mut total = Duration::ZERO;
    let mut number = String::new();
    let mut in_time = iso.is_none();
    let mut seen_unit = false;
    let body = iso.unwrap_or(text);
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        if iso.is_some() && (c == 'T' || c == 't') {
            in_time = true;
            continue;
        }
        let unit = match c.to_ascii_lowercase() {
            'm' if chars.peek() == Some(&'s') && iso.is_none() => {
                chars.next();
                0.001
            }
            'd' => 86_400.0,
            'w' if !in_time => 604_800.0,
            'h' if in_time => 3_600.0,
            'm' if in_time => 60.0,
            's' if in_time => 1.0,
            _ => return None,
        };
        let value: f64 = number.parse().ok()?;
        number.clear();
        total += Duration::try_from_secs_f64(value * unit).ok()?;
        seen_unit = true;
    }
    (number.is_empty() && seen_unit).then_some(total)
}

pub use crate::parse_size;

/// Connects to NATS with the options every Rivulet component uses: a bounded connection
/// timeout, and reconnection without end once connected.
pub async fn connect(url: &str, client_name: &str) -> Result<Client, ChannelError> {
    let options = async_nats::ConnectOptions::new()
        .name(client_name)
        .connection_timeout(REQUEST_TIMEOUT)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Disconnected => tracing::warn!("NATS connection lost"),
                async_nats::Event::Connected => tracing::info!("NATS connection (re)established"),
                other => tracing::debug!(event = %other, "NATS connection event"),
            }
        });
    async_nats::connect_with_options(url, options)
        .await
        .map_err(|e| match e.kind() {
            async_nats::ConnectErrorKind::ServerParse => {
                ChannelError::Config(format!("NATS url {url:?}: {e}"))
            }
            _ => ChannelError::Unavailable(format!("cannot connect to NATS at {url}: {e}")),
        })
}

/// A JetStream context with Rivulet's timeouts.
pub fn jetstream_context(client: Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(REQUEST_TIMEOUT)
        .ack_timeout(REQUEST_TIMEOUT)
        .build(client)
}

/// Whether the client is connected right now.
pub fn is_connected(client: &Client) -> bool {
    client.connection_state() == State::Connected
}

/// The stream name of a broker: `KN_BROKER_{NAMESPACE}_{NAME}`.
pub fn stream_name(namespace: &str, broker: &str) -> Result<String, ChannelError> {
    Ok(format!(
        "KN_BROKER_{}_{}",
        name_part("namespace", namespace)?.to_ascii_uppercase(),
        name_part("broker", broker)?.to_ascii_uppercase()
    ))
}

/// The subject prefix of a broker: `kn.broker.{namespace}.{name}`.
pub fn subject_prefix(namespace: &str, broker: &str) -> Result<String, ChannelError> {
    Ok(format!(
        "kn.broker.{}.{}",
        name_part("namespace", namespace)?,
        name_part("broker", broker)?
    ))
}

/// A Kubernetes name (lower-case letters, digits, `-`, `.`) as one token of a NATS name or
/// subject: `.` becomes `_`, which such names never contain.
fn name_part(what: &str, name: &str) -> Result<String, ChannelError> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if !valid {
        return Err(ChannelError::Config(format!(
            "{what} {name:?} cannot name a NATS stream: use lower-case letters, digits, '-' and '.'"
        )));
    }
    Ok(name.replace('.', "_"))
}

/// The durable consumer name of a subscription: letters, digits and `-` as they are, every
/// other byte as `_xx`.
pub fn consumer_name(subscription: &str) -> String {
    let mut name = String::with_capacity(subscription.len());
    for byte in subscription.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            name.push(char::from(byte));
        } else {
            name.push_str(&format!("_{byte:02x}"));
        }
    }
    name
}

/// An event type as one subject token: letters, digits, `-` and `_` as they are, every other
/// byte as `%XX` (so `.`, `*`, `>` and spaces never reach the subject).
pub fn type_token(event_type: &str) -> String {
    if event_type.is_empty() {
        return "%".to_owned();
    }
    let mut token = String::with_capacity(event_type.len());
    for byte in event_type.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            token.push(char::from(byte));
        } else {
            token.push_str(&format!("%{byte:02X}"));
        }
    }
    token
}

fn unavailable(what: &str, error: impl std::fmt::Display) -> ChannelError {
    ChannelError::Unavailable(format!("NATS JetStream: {what}: {error}"))
}

/// A refused publish: `Full` when the stream reached its `maxBytes` (or a message limit) and,
/// with discard-new, takes nothing more until events age out, so senders are told to come
/// back later; otherwise the server is unavailable.
fn publish_refused(error: impl std::fmt::Display) -> ChannelError {
    let text = error.to_string();
    if text.contains("maximum bytes exceeded") || text.contains("maximum messages exceeded") {
        ChannelError::Full(format!(
            "the broker's NATS JetStream stream is full (its maxBytes limit): {text}"
        ))
    } else {
        unavailable("publish acknowledgement", text)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What is kept in a consumer's description so that a process that never saw
/// `ensure_subscription` still knows the prefilter.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSpec {
    rivulet_prefilter: Vec<(String, String)>,
    max_in_flight: usize,
}

fn describe(spec: &SubscriptionSpec) -> String {
    let stored = StoredSpec {
        rivulet_prefilter: spec.prefilter.exact.clone(),
        max_in_flight: spec.max_in_flight,
    };
    serde_json::to_string(&stored).unwrap_or_default()
}

fn spec_from_description(description: Option<&str>) -> SubscriptionSpec {
    let stored = description.and_then(|d| serde_json::from_str::<StoredSpec>(d).ok());
    match stored {
        Some(stored) => SubscriptionSpec {
            prefilter: Prefilter {
                filter: None,
                prefix: Vec::new(),
                exact: stored.rivulet_prefilter,
            },
            max_in_flight: stored.max_in_flight,
            one_per_partition: false,
        },
        None => SubscriptionSpec::default(),
    }
}

/// The JetStream API error code behind `error`, if any.
fn jetstream_code(error: &(dyn std::error::Error + 'static)) -> Option<ErrorCode> {
    use jetstream::context::{ConsumerInfoError, ConsumerInfoErrorKind, GetStreamError};
    use jetstream::stream::{ConsumerError, ConsumerErrorKind};
    let mut current = Some(error);
    while let Some(cause) = current {
        if let Some(js) = cause.downcast_ref::<jetstream::Error>() {
            return Some(js.error_code());
        }
        if let Some(e) = cause.downcast_ref::<ConsumerError>()
            && let ConsumerErrorKind::JetStream(js) = e.kind()
        {
            return Some(js.error_code());
        }
        if let Some(e) = cause.downcast_ref::<ConsumerInfoError>() {
            match e.kind() {
                ConsumerInfoErrorKind::NotFound => return Some(ErrorCode::CONSUMER_NOT_FOUND),
                ConsumerInfoErrorKind::StreamNotFound => return Some(ErrorCode::STREAM_NOT_FOUND),
                ConsumerInfoErrorKind::JetStream(js) => return Some(js.error_code()),
                _ => {}
            }
        }
        if let Some(e) = cause.downcast_ref::<GetStreamError>()
            && let jetstream::context::GetStreamErrorKind::JetStream(js) = e.kind()
        {
            return Some(js.error_code());
        }
        current = cause.source();
    }
    None
}

/// Whether `error` is a JetStream API error with one of `codes`.
fn is_error_code(error: &(dyn std::error::Error + 'static), codes: &[ErrorCode]) -> bool {
    jetstream_code(error).is_some_and(|code| codes.contains(&code))
}

/// One subscription this channel knows of.
#[derive(Default)]
struct Known {
    spec: Option<SubscriptionSpec>,
    live: Weak<Live>,
}

/// A broker's channel on NATS JetStream.
pub struct NatsChannel {
    client: Client,
    jetstream: jetstream::Context,
    stream: Mutex<stream::Stream>,
    stream_config: stream::Config,
    subject_prefix: String,
    settings: NatsSettings,
    subscriptions: Mutex<HashMap<String, Known>>,
    destroyed: AtomicBool,
}

impl NatsChannel {
    /// Connects and creates (or updates) the broker's stream.
    pub async fn open(config: &ChannelConfig) -> Result<Self, ChannelError> {
        let settings = NatsSettings::from_settings(&config.settings)?;
        let stream_name = stream_name(&config.namespace, &config.broker)?;
        let subject_prefix = subject_prefix(&config.namespace, &config.broker)?;
        let client = connect(&settings.url, "rivulet-channel").await?;
        let jetstream = jetstream_context(client.clone());
        let stream_config = stream::Config {
            name: stream_name.clone(),
            description: Some(format!(
                "Rivulet broker {}/{}",
                config.namespace, config.broker
            )),
            subjects: vec![format!("{subject_prefix}.>")],
            retention: settings.retention,
            discard: DiscardPolicy::New,
            storage: settings.storage,
            num_replicas: settings.replicas,
            max_age: settings.max_age,
            max_bytes: settings.max_bytes,
            ..Default::default()
        };
        let stream = Self::ensure_stream(&jetstream, &stream_config).await?;
        Ok(Self {
            client,
            jetstream,
            stream: Mutex::new(stream),
            stream_config,
            subject_prefix,
            settings,
            subscriptions: Mutex::new(HashMap::new()),
            destroyed: AtomicBool::new(false),
        })
    }

    async fn ensure_stream(
        jetstream: &jetstream::Context,
        config: &stream::Config,
    ) -> Result<stream::Stream, ChannelError> {
        if let Err(error) = jetstream.create_or_update_stream(config.clone()).await {
            return Err(match error.kind() {
                jetstream::context::CreateStreamErrorKind::JetStream(_) => ChannelError::Config(
                    format!("NATS JetStream refused stream {}: {error}", config.name),
                ),
                _ => unavailable(&format!("creating stream {}", config.name), error),
            });
        }
        jetstream
            .get_stream(&config.name)
            .await
            .map_err(|e| unavailable(&format!("opening stream {}", config.name), e))
    }

    /// The durable consumer of subscription `name`; `UnknownSubscription` when it (or the
    /// stream) does not exist.
    async fn existing_consumer(&self, name: &str) -> Result<PullConsumer, ChannelError> {
        self.check_open()?;
        match self.stream().get_consumer(&consumer_name(name)).await {
            Ok(consumer) => Ok(consumer),
            Err(error)
                if is_error_code(
                    &*error,
                    &[ErrorCode::CONSUMER_NOT_FOUND, ErrorCode::STREAM_NOT_FOUND],
                ) =>
            {
                Err(ChannelError::UnknownSubscription(name.to_owned()))
            }
            Err(error) => Err(unavailable(&format!("opening consumer {name:?}"), error)),
        }
    }

    fn check_open(&self) -> Result<(), ChannelError> {
        if self.destroyed.load(Ordering::SeqCst) {
            return Err(ChannelError::Closed);
        }
        Ok(())
    }

    fn stream(&self) -> stream::Stream {
        lock(&self.stream).clone()
    }

    /// The subject an event is published on.
    fn subject_of(&self, envelope: &Envelope) -> String {
        format!(
            "{}.{}",
            self.subject_prefix,
            type_token(envelope.attribute("type").unwrap_or(""))
        )
    }

    /// The consumer's filter subject: the prefilter's `type` pushed down, if it has one.
    fn filter_subject(&self, prefilter: &Prefilter) -> String {
        prefilter
            .exact
            .iter()
            .find(|(name, _)| name == "type")
            .map(|(_, value)| format!("{}.{}", self.subject_prefix, type_token(value)))
            .unwrap_or_default()
    }

    /// The stream again after it was found missing (deleted behind our back).
    async fn recreate_stream(&self) -> Result<(), ChannelError> {
        let stream = Self::ensure_stream(&self.jetstream, &self.stream_config).await?;
        *lock(&self.stream) = stream;
        Ok(())
    }
}

#[async_trait]
impl Channel for NatsChannel {
    async fn publish(&self, events: Vec<Envelope>) -> Result<(), ChannelError> {
        self.check_open()?;
        if !is_connected(&self.client) {
            return Err(ChannelError::Unavailable(format!(
                "not connected to NATS at {}",
                self.settings.url
            )));
        }
        // Everything is sent before any acknowledgement is awaited, so a batch costs about
        // one round trip; one connection keeps the events of a call in order.
        let mut acks = Vec::with_capacity(events.len());
        for envelope in &events {
            let encoded = binding::encode(envelope)
                .map_err(|e| ChannelError::Corrupt(format!("cannot write the event: {e}")))?;
            let ack = self
                .jetstream
                .publish_with_headers(self.subject_of(envelope), encoded.headers, encoded.payload)
                .await
                .map_err(|e| unavailable("publish", e))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(publish_refused)?;
        }
        Ok(())
    }

    async fn ensure_subscription(
        &self,
        name: &str,
        spec: &SubscriptionSpec,
    ) -> Result<(), ChannelError> {
        self.check_open()?;
        let config = consumer::pull::Config {
            durable_name: Some(consumer_name(name)),
            description: Some(describe(spec)),
            deliver_policy: DeliverPolicy::New,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.settings.ack_wait,
            max_deliver: -1,
            filter_subject: self.filter_subject(&spec.prefilter),
            max_ack_pending: -1,
            ..Default::default()
        };
        let mut created = self.stream().create_consumer(config.clone()).await;
        if let Err(error) = &created
            && is_error_code(error, &[ErrorCode::STREAM_NOT_FOUND])
        {
            self.recreate_stream().await?;
            created = self.stream().create_consumer(config).await;
        }
        created.map_err(|e| unavailable(&format!("creating consumer for {name:?}"), e))?;
        let mut subscriptions = lock(&self.subscriptions);
        let known = subscriptions.entry(name.to_owned()).or_default();
        known.spec = Some(spec.clone());
        if let Some(live) = known.live.upgrade() {
            live.update(spec);
        }
        Ok(())
    }

    async fn consume(&self, name: &str) -> Result<Arc<dyn Subscription>, ChannelError> {
        let consumer = self.existing_consumer(name).await?;
        let known_spec = lock(&self.subscriptions)
            .get(name)
            .and_then(|known| known.spec.clone());
        let spec = known_spec.unwrap_or_else(|| {
            spec_from_description(consumer.cached_info().config.description.as_deref())
        });
        let live = Arc::new(Live::new(
            self.client.clone(),
            consumer,
            &spec,
            self.settings.ack_wait,
        ));
        let previous = {
            let mut subscriptions = lock(&self.subscriptions);
            let known = subscriptions.entry(name.to_owned()).or_default();
            std::mem::replace(&mut known.live, Arc::downgrade(&live))
        };
        // The previous consumer gives back what it holds before the new one pulls, so those
        // events come first, in order.
        if let Some(previous) = previous.upgrade() {
            previous.release().await;
        }
        Live::start(&live);
        Ok(Arc::new(NatsSubscription { live }))
    }

    async fn backlog(&self, name: &str) -> Result<Option<u64>, ChannelError> {
        let mut consumer = self.existing_consumer(name).await?;
        let info = consumer
            .info()
            .await
            .map_err(|e| unavailable(&format!("reading consumer {name:?}"), e))?;
        // Waiting to be pulled, and pulled but not acknowledged.
        Ok(Some(info.num_pending + info.num_ack_pending as u64))
    }

    async fn delete_subscription(&self, name: &str) -> Result<(), ChannelError> {
        self.check_open()?;
        let known = lock(&self.subscriptions).remove(name);
        if let Some(live) = known.and_then(|k| k.live.upgrade()) {
            live.close();
        }
        match self.stream().delete_consumer(&consumer_name(name)).await {
            Ok(_) => Ok(()),
            Err(error)
                if is_error_code(
                    &error,
                    &[ErrorCode::CONSUMER_NOT_FOUND, ErrorCode::STREAM_NOT_FOUND],
                ) =>
            {
                Ok(())
            }
            Err(error) => Err(unavailable(&format!("deleting consumer {name:?}"), error)),
        }
    }

    async fn destroy(&self) -> Result<(), ChannelError> {
        self.destroyed.store(true, Ordering::SeqCst);
        let known: Vec<Known> = lock(&self.subscriptions).drain().map(|(_, k)| k).collect();
        for live in known.iter().filter_map(|k| k.live.upgrade()) {
            live.close();
        }
        match self.jetstream.delete_stream(&self.stream_config.name).await {
            Ok(_) => Ok(()),
            Err(error) if is_error_code(&error, &[ErrorCode::STREAM_NOT_FOUND]) => Ok(()),
            Err(error) => Err(unavailable(
                &format!("deleting stream {}", self.stream_config.name),
                error,
            )),
        }
    }

    async fn ready(&self) -> Result<(), ChannelError> {
        self.check_open()?;
        if is_connected(&self.client) {
            Ok(())
        } else {
            Err(ChannelError::Unavailable(format!(
                "not connected to NATS at {}",
                self.settings.url
            )))
        }
    }
}

/// An event pulled from the server and not acknowledged yet.
struct Held {
    seq: u64,
    /// Where acknowledgements for this delivery go.
    reply: Subject,
    envelope: Arc<Envelope>,
    /// JetStream delivered it more than once.
    redelivered: bool,
}

#[derive(Default)]
struct Queue {
    /// Pulled, not handed out yet, in stream order.
    buffered: VecDeque<Held>,
    /// Handed out, waiting for `ack`: stream sequence -> reply subject.
    in_flight: HashMap<u64, Subject>,
    /// Given back to the server (taken over or dropped); nothing more is handed out.
    released: bool,
}

/// The state of one consumer, shared by its handle and its background tasks.
struct Live {
    client: Client,
    consumer: PullConsumer,
    prefilter: Mutex<Prefilter>,
    /// 0: no limit on events handed out.
    max_in_flight: AtomicUsize,
    ack_wait: Duration,
    queue: Mutex<Queue>,
    /// Woken when events were buffered (receivers wait on it).
    arrived: Notify,
    /// Woken when room was made (the puller waits on it).
    freed: Notify,
    closed: watch::Sender<bool>,
    /// The pulling task; awaited on release so its pull request is gone before anything is
    /// given back (else the server could hand the events straight back to it).
    puller: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Live {
    fn new(
        client: Client,
        consumer: PullConsumer,
        spec: &SubscriptionSpec,
        ack_wait: Duration,
    ) -> Self {
        Self {
            client,
            consumer,
            prefilter: Mutex::new(spec.prefilter.clone()),
            max_in_flight: AtomicUsize::new(spec.max_in_flight),
            ack_wait,
            queue: Mutex::new(Queue::default()),
            arrived: Notify::new(),
            freed: Notify::new(),
            closed: watch::channel(false).0,
            puller: Mutex::new(None),
        }
    }

    fn start(live: &Arc<Self>) {
        *lock(&live.puller) = Some(tokio::spawn(pull_loop(Arc::clone(live))));
        tokio::spawn(keep_alive_loop(Arc::clone(live)));
    }

    fn update(&self, spec: &SubscriptionSpec) {
        *lock(&self.prefilter) = spec.prefilter.clone();
        self.max_in_flight
            .store(spec.max_in_flight, Ordering::SeqCst);
        self.freed.notify_waiters();
    }

    fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    fn close(&self) {
        self.closed.send_replace(true);
        self.arrived.notify_waiters();
        self.freed.notify_waiters();
    }

    /// How many more events may be pulled now.
    fn room(&self) -> usize {
        let queue = lock(&self.queue);
        match self.max_in_flight.load(Ordering::SeqCst) {
            0 => PREFETCH.saturating_sub(queue.buffered.len()),
            limit => limit.saturating_sub(queue.buffered.len() + queue.in_flight.len()),
        }
    }

    /// Stops consuming and negatively acknowledges everything held, in stream order, so the
    /// server delivers it again at once. Late acknowledgements of events handed out still
    /// count. Runs once.
    async fn release(&self) {
        self.close();
        let puller = lock(&self.puller).take();
        if let Some(puller) = puller {
            // Dropping its pull request unsubscribes the request's inbox, ahead of the
            // negative acknowledgements on the same connection.
            let _ = puller.await;
        }
        // A round trip after the unsubscription: once the server answers, it has dropped the
        // old pull request's interest and will not hand the events given back to it.
        if let Err(error) = self.consumer.get_info().await {
            tracing::debug!(%error, "consumer info before giving events back failed");
        }
        let mut replies: Vec<(u64, Subject)> = {
            let mut queue = lock(&self.queue);
            if queue.released {
                return;
            }
            queue.released = true;
            let buffered = std::mem::take(&mut queue.buffered);
            buffered
                .into_iter()
                .map(|held| (held.seq, held.reply))
                .chain(queue.in_flight.iter().map(|(s, r)| (*s, r.clone())))
                .collect()
        };
        replies.sort_unstable_by_key(|(seq, _)| *seq);
        for (_, reply) in replies {
            self.signal(reply, AckKind::Nak(None)).await;
        }
        if let Err(error) = self.client.flush().await {
            tracing::debug!(%error, "flushing negative acknowledgements failed");
        }
    }

    async fn signal(&self, reply: Subject, kind: AckKind) {
        if let Err(error) = self.client.publish(reply, Bytes::from(kind)).await {
            tracing::debug!(%error, "sending an acknowledgement to NATS failed");
        }
    }

    /// Takes in one pulled message.
    async fn take(&self, message: jetstream::Message) {
        let Some(reply) = message.reply.clone() else {
            return;
        };
        let (seq, redelivered) = match message.info() {
            Ok(info) => (info.stream_sequence, info.delivered > 1),
            Err(error) => {
                tracing::warn!(%error, "ignoring a JetStream message without delivery information");
                return;
            }
        };
        let envelope = match binding::decode(message.headers.as_ref(), &message.payload) {
            Ok(envelope) => envelope,
            Err(error) => {
                // Only ingress writes to the broker's subjects; a foreign message is dropped
                // for good rather than redelivered forever.
                tracing::error!(%error, subject = %message.subject, seq, "dropping a message that is not a CloudEvent");
                self.signal(reply, AckKind::Term).await;
                return;
            }
        };
        if !lock(&self.prefilter).matches(&envelope) {
            self.signal(reply, AckKind::Ack).await;
            return;
        }
        let give_back = {
            let mut queue = lock(&self.queue);
            if queue.released {
                true
            } else {
                if let Some(slot) = queue.in_flight.get_mut(&seq) {
                    // Delivered again while being worked on: acknowledge the newest delivery.
                    *slot = reply.clone();
                } else if let Some(held) = queue.buffered.iter_mut().find(|h| h.seq == seq) {
                    held.reply = reply.clone();
                } else {
                    queue.buffered.push_back(Held {
                        seq,
                        reply: reply.clone(),
                        envelope: Arc::new(envelope),
                        redelivered,
                    });
                }
                false
            }
        };
        if give_back {
            self.signal(reply, AckKind::Nak(None)).await;
        } else {
            self.arrived.notify_waiters();
        }
    }
}

/// Pulls events while there is room for them.
async fn pull_loop(live: Arc<Live>) {
    let mut closed = live.closed.subscribe();
    loop {
        let freed = live.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if live.is_closed() {
            return;
        }
        let room = live.room();
        if room == 0 {
            tokio::select! {
                _ = freed => continue,
                _ = closed.wait_for(|c| *c) => return,
            }
        }
        let batch = tokio::select! {
            batch = live.consumer.batch().max_messages(room).expires(PULL_EXPIRY).messages() => batch,
            _ = closed.wait_for(|c| *c) => return,
        };
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(error) => {
                tracing::debug!(%error, "pull request failed; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(PULL_RETRY) => continue,
                    _ = closed.wait_for(|c| *c) => return,
                }
            }
        };
        loop {
            let next = tokio::select! {
                next = batch.next() => next,
                _ = closed.wait_for(|c| *c) => return,
            };
            match next {
                None => break,
                Some(Ok(message)) => live.take(message).await,
                Some(Err(error)) => {
                    tracing::debug!(%error, "pull request ended with an error; trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(PULL_RETRY) => break,
                        _ = closed.wait_for(|c| *c) => return,
                    }
                }
            }
        }
    }
}

/// Tells the server every held event is still being worked on, well within `ack_wait`.
async fn keep_alive_loop(live: Arc<Live>) {
    let mut closed = live.closed.subscribe();
    let period = live.ack_wait / 3;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = closed.wait_for(|c| *c) => return,
        }
        let replies: Vec<Subject> = {
            let queue = lock(&live.queue);
            queue
                .buffered
                .iter()
                .map(|held| held.reply.clone())
                .chain(queue.in_flight.values().cloned())
                .collect()
        };
        for reply in replies {
            live.signal(reply, AckKind::Progress).await;
        }
    }
}

/// The handle [`Channel::consume`] gives out; dropping it gives the held events back.
struct NatsSubscription {
    live: Arc<Live>,
}

impl Drop for NatsSubscription {
    fn drop(&mut self) {
        let live = Arc::clone(&self.live);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { live.release().await });
            }
            // Without a runtime the server redelivers after `ack_wait`.
            Err(_) => live.close(),
        }
    }
}

#[async_trait]
impl Subscription for NatsSubscription {
    async fn receive(&self, max: usize) -> Result<Vec<Received>, ChannelError> {
        let live = &self.live;
        loop {
            let arrived = live.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            {
                let mut queue = lock(&live.queue);
                if live.is_closed() || queue.released {
                    return Err(ChannelError::Closed);
                }
                if max == 0 {
                    return Ok(Vec::new());
                }
                let take = max.min(queue.buffered.len());
                if take > 0 {
                    let mut batch = Vec::with_capacity(take);
                    for held in queue.buffered.drain(..take).collect::<Vec<_>>() {
                        queue.in_flight.insert(held.seq, held.reply);
                        batch.push(Received {
                            id: held.seq,
                            envelope: held.envelope,
                            redelivered: held.redelivered,
                        });
                    }
                    drop(queue);
                    live.freed.notify_waiters();
                    return Ok(batch);
                }
            }
            arrived.await;
        }
    }

    async fn ack(&self, id: u64) -> Result<(), ChannelError> {
        let reply = lock(&self.live.queue).in_flight.remove(&id);
        if let Some(reply) = reply {
            self.live.freed.notify_waiters();
            self.live
                .client
                .publish(reply, Bytes::from(AckKind::Ack))
                .await
                .map_err(|e| unavailable("acknowledgement", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::pairs as settings;

    #[test]
    fn settings_have_defaults_and_name_bad_keys() {
        let defaults = NatsSettings::from_settings(&BTreeMap::new()).unwrap();
        assert_eq!(defaults.url, DEFAULT_URL);
        assert_eq!(defaults.storage, StorageType::File);
        assert_eq!(defaults.replicas, 1);
        assert_eq!(defaults.max_age, Duration::ZERO);
        assert_eq!(defaults.max_bytes, -1);
        assert_eq!(defaults.retention, RetentionPolicy::Limits);

        let set = NatsSettings::from_settings(&settings(&[
            ("url", "nats://example:4222"),
            ("storage", "memory"),
            ("replicas", "3"),
            ("maxAge", "1h30m"),
            ("maxBytes", "512Mi"),
            ("retention", "interest"),
        ]))
        .unwrap();
        assert_eq!(set.storage, StorageType::Memory);
        assert_eq!(set.replicas, 3);
        assert_eq!(set.max_age, Duration::from_secs(5400));
        assert_eq!(set.max_bytes, 512 << 20);
        assert_eq!(set.retention, RetentionPolicy::Interest);

        for (key, value) in [
            ("storage", "disk"),
            ("replicas", "0"),
            ("maxAge", "soon"),
            ("maxBytes", "lots"),
            ("retention", "forever"),
        ] {
            let error = NatsSettings::from_settings(&settings(&[(key, value)])).unwrap_err();
            assert!(
                matches!(&error, ChannelError::Config(m) if m.contains(key)),
                "{key}: {error}"
            );
        }
    }

    #[test]
    fn durations_in_go_and_iso_forms() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("PT24H"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("P1DT1M"), Some(Duration::from_secs(86_460)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("10"), None, "a unit is required");
        assert_eq!(parse_duration("5x"), None);
    }

    #[test]
    fn names_are_valid_and_distinct() {
        assert_eq!(
            stream_name("default", "my.broker").unwrap(),
            "KN_BROKER_DEFAULT_MY_BROKER"
        );
        assert_eq!(
            subject_prefix("default", "my.broker").unwrap(),
            "kn.broker.default.my_broker"
        );
        assert!(stream_name("default", "Bad Name").is_err());
        assert_eq!(consumer_name("trigger-a.b"), "trigger-a_2eb");
        assert_ne!(consumer_name("a.b"), consumer_name("a_b"));
        assert_eq!(type_token("com.example.order"), "com%2Eexample%2Eorder");
        assert_ne!(type_token("a.b"), type_token("a%2Eb"));
        assert!(!type_token("x *>").contains([' ', '*', '>', '.']));
    }

    #[test]
    fn stored_spec_round_trips() {
        let spec = SubscriptionSpec {
            prefilter: Prefilter {
                filter: None,
                prefix: Vec::new(),
                exact: vec![("type".into(), "t".into()), ("source".into(), "/s".into())],
            },
            max_in_flight: 7,
            one_per_partition: false,
        };
        assert_eq!(spec_from_description(Some(&describe(&spec))), spec);
        assert_eq!(
            spec_from_description(Some("someone else's consumer")),
            SubscriptionSpec::default()
        );
    }
}
