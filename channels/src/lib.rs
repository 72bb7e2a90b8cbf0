//! Rivulet's `Channel` abstraction: the durable pipe between a broker's ingress and the
//! per-trigger consumers.
//!
//! A channel stores [`Envelope`]s: the CloudEvent's attributes as strings (as every protocol
//! binding carries them) and its data bytes, untouched. Each trigger owns one named
//! subscription with its own position; a subscription redelivers whatever it handed out and
//! was not acknowledged before the consumer went away.
//!
//! Backends register themselves with [`inventory`] under a name and are opened through
//! [`open`], so adding a backend touches no central list.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

#[cfg(feature = "contract")]
pub mod contract;
pub mod embedded;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
pub mod routing;

pub use routing::{Prefilter, RouteFilter, RoutingIndex};

/// The context attributes CloudEvents 1.0 defines, in the order the spec lists them.
pub const V10_CONTEXT_ATTRIBUTES: [&str; 8] = [
    "specversion",
    "id",
    "source",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
];

/// The context attributes CloudEvents 0.3 defines, in the order the spec lists them.
pub const V03_CONTEXT_ATTRIBUTES: [&str; 9] = [
    "specversion",
    "id",
    "source",
    "type",
    "datacontenttype",
    "schemaurl",
    "subject",
    "time",
    "datacontentencoding",
];

/// One CloudEvent as a channel carries it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Envelope {
    /// Context attributes in their canonical string form, `specversion` first. Names are
    /// lower-case CloudEvents attribute names; `datacontenttype` is among them when set.
    pub attributes: Vec<(String, String)>,
    /// The event data exactly as received, if any.
    pub data: Option<Bytes>,
    /// Extension attributes whose type is not String, so that a structured delivery writes
    /// them as JSON numbers and booleans again. Every backend keeps them: the embedded log in
    /// the record, the others in the [`TYPES_HEADER`] message header.
    pub typed: Vec<(String, AttributeType)>,
}

/// The type of an extension attribute that is not a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributeType {
    Integer,
    Boolean,
}

impl AttributeType {
    fn as_str(self) -> &'static str {
        match self {
            AttributeType::Integer => "integer",
            AttributeType::Boolean => "boolean",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "integer" => Some(AttributeType::Integer),
            "boolean" => Some(AttributeType::Boolean),
            _ => None,
        }
    }
}

/// The message header (Kafka, NATS, RabbitMQ) naming the extension attributes that are not
/// strings: `name=integer,other=boolean`. Not a `ce` header, so other CloudEvents readers of
/// the same topic, stream or queue do not take it for an attribute.
pub const TYPES_HEADER: &str = "rivulet-types";

impl Envelope {
    /// The [`TYPES_HEADER`] value, when some extension is not a string.
    pub fn types_header(&self) -> Option<String> {
        (!self.typed.is_empty()).then(|| {
            self.typed
                .iter()
                .map(|(name, ty)| format!("{name}={}", ty.as_str()))
                .collect::<Vec<_>>()
                .join(",")
        })
    }

    /// Reads a [`TYPES_HEADER`] value; entries it does not understand are left out (the
    /// attribute then stays a string).
    pub fn parse_types_header(value: &str) -> Vec<(String, AttributeType)> {
        value
            .split(',')
            .filter_map(|entry| {
                let (name, ty) = entry.trim().split_once('=')?;
                Some((name.to_owned(), AttributeType::parse(ty)?))
            })
            .collect()
    }

    /// The value of attribute `name`, if present.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Where a subscription's events come from when it is created, and what it wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriptionSpec {
    /// A conservative filter the backend may apply before handing events out (a superset of
    /// what the trigger wants). Backends that cannot route deliver everything.
    pub prefilter: Prefilter,
    /// How many unacknowledged events the consumer holds at most (prefetch).
    pub max_in_flight: usize,
    /// Ordered delivery per partition: at most one unacknowledged event per partition, so
    /// partitions may be delivered in parallel while each keeps its order. Only for
    /// backends whose [`Channel::has_partitions`] is true; others ignore it.
    pub one_per_partition: bool,
}

/// An event handed to a subscriber, to be acknowledged by `id` once its outcome is final.
#[derive(Debug, Clone)]
pub struct Received {
    /// Opaque, unique within the subscription; pass it to [`Subscription::ack`].
    pub id: u64,
    pub envelope: Arc<Envelope>,
    /// The backend handed this event out before and it was never acknowledged (a consumer
    /// crashed or lost its connection): delivering it may make a duplicate. Only RabbitMQ
    /// (its `redelivered` flag) and NATS JetStream (a delivery count above one) can tell;
    /// the other backends always say `false`.
    pub redelivered: bool,
}

/// A channel for one broker.
#[async_trait]
pub trait Channel: Send + Sync + 'static {
    /// Appends events. Returns only once every event is durable by this backend's standard
    /// (fsync, broker acknowledgement); on error none of them may be assumed stored.
    async fn publish(&self, events: Vec<Envelope>) -> Result<(), ChannelError>;

    /// Creates the named subscription if it does not exist, or updates its spec. Events
    /// published after this returns reach the subscription even while nobody consumes it.
    async fn ensure_subscription(
        &self,
        name: &str,
        spec: &SubscriptionSpec,
    ) -> Result<(), ChannelError>;

    /// Starts consuming a subscription created by [`Channel::ensure_subscription`]. Events
    /// handed out earlier and never acknowledged are delivered again.
    async fn consume(&self, name: &str) -> Result<Arc<dyn Subscription>, ChannelError>;

    /// How many events the subscription holds that were not acknowledged yet (waiting, or
    /// handed out to a consumer and unfinished), so deleting it can say what would be lost.
    /// `None` when the backend cannot tell cheaply. Events the trigger's filter would refuse
    /// may be among them on backends that route by a conservative prefilter.
    async fn backlog(&self, _name: &str) -> Result<Option<u64>, ChannelError> {
        Ok(None)
    }

    /// Removes a subscription and whatever it still holds.
    async fn delete_subscription(&self, name: &str) -> Result<(), ChannelError>;

    /// Removes the channel's storage (topic, stream, exchange, files) for good.
    async fn destroy(&self) -> Result<(), ChannelError>;

    /// Lets go of what this process holds at shutdown and waits until it is let go (Kafka
    /// consumers leave their groups, so partitions move to other replicas at once, and no
    /// client thread outlives the process's shutdown). Stored events and subscriptions stay.
    async fn close(&self) {}

    /// Whether the backend can take events right now.
    async fn ready(&self) -> Result<(), ChannelError>;

    /// Whether the backend splits events into ordered partitions (Kafka) and honours
    /// [`SubscriptionSpec::one_per_partition`]. Without partitions, ordered delivery means
    /// one event at a time for the whole subscription.
    fn has_partitions(&self) -> bool {
        false
    }

    /// The local storage fault the channel is recovering from, if any (the embedded log on a
    /// full disk). Cheap: readiness and broker status ask often.
    fn storage_fault(&self) -> Option<StorageFault> {
        None
    }
}

/// Why a channel's local storage cannot take writes right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageFault {
    /// The filesystem is full or over quota (as opposed to another I/O failure).
    pub full: bool,
    /// What failed, naming the file.
    pub message: String,
}

/// One consumer's view of a subscription.
#[async_trait]
pub trait Subscription: Send + Sync {
    /// Waits until at least one event is available and returns up to `max` of them, in
    /// channel order. Returns [`ChannelError::Closed`] once the subscription is deleted or the
    /// channel shut down.
    async fn receive(&self, max: usize) -> Result<Vec<Received>, ChannelError>;

    /// Marks an event as done (delivered or dead-lettered). Acknowledgements may arrive in any
    /// order.
    async fn ack(&self, id: u64) -> Result<(), ChannelError>;
}

/// What went wrong in a channel, classified for metrics and status codes.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The backend cannot be reached or refused the write; ingress answers 503.
    #[error("channel unavailable: {0}")]
    Unavailable(String),
    /// The channel holds as much as it may; it takes events again once subscribers catch
    /// up. Ingress answers 503 with `Retry-After`.
    #[error("channel full: {0}")]
    Full(String),
    /// The backend's configuration is wrong (bad URL, missing key).
    #[error("channel misconfigured: {0}")]
    Config(String),
    /// No subscription of that name.
    #[error("no subscription named {0:?}")]
    UnknownSubscription(String),
    /// The subscription or channel was closed.
    #[error("channel closed")]
    Closed,
    /// Stored data could not be read back.
    #[error("corrupt channel data: {0}")]
    Corrupt(String),
    #[error("channel i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl ChannelError {
    /// A short, stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ChannelError::Unavailable(_) => "unavailable",
            ChannelError::Full(_) => "full",
            ChannelError::Config(_) => "config",
            ChannelError::UnknownSubscription(_) => "unknown_subscription",
            ChannelError::Closed => "closed",
            ChannelError::Corrupt(_) => "corrupt",
            ChannelError::Io(_) => "io",
        }
    }
}

/// Reads a byte size: a plain number, or one with a K/M/G/T (powers of 1000) or Ki/Mi/Gi/Ti
/// (powers of 1024) suffix; `-1` means no limit.
pub fn parse_size(text: &str) -> Option<i64> {
    let text = text.trim();
    if text == "-1" {
        return Some(-1);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let number: i64 = digits.parse().ok()?;
    let factor: i64 = match suffix.trim().trim_end_matches(['B', 'b']) {
        "" => 1,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(factor).filter(|n| *n > 0)
}

/// Everything a backend needs to open the channel of one broker.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// Broker namespace and name; backends derive topic/stream/exchange names from them.
    pub namespace: String,
    pub broker: String,
    /// Folder for local state (the embedded backend keeps its files here).
    pub data_dir: PathBuf,
    /// Backend settings (the keys of the broker's `spec.config` ConfigMap or Secret).
    pub settings: BTreeMap<String, String>,
}

/// What opening a channel gives back, eventually.
pub type OpenChannel = futures::future::BoxFuture<'static, Result<Arc<dyn Channel>, ChannelError>>;

/// What a backend's `open` gives back, given the future that opens its own channel type.
pub fn opened<C: Channel + 'static>(
    opening: impl std::future::Future<Output = Result<C, ChannelError>> + Send + 'static,
) -> OpenChannel {
    Box::pin(async move { Ok(Arc::new(opening.await?) as Arc<dyn Channel>) })
}

/// A channel backend, registered by name with `inventory::submit!`.
pub struct Backend {
    /// The name brokers select it by (`embedded`, `memory`, `kafka`, ...).
    pub name: &'static str,
    /// Whether an event it acknowledged survives a crash of the process.
    pub durable: bool,
    /// The Knative broker class (`eventing.knative.dev/broker.class`) this backend serves, if
    /// any; such a broker needs `spec.config` naming the backend's settings.
    pub broker_class: Option<&'static str>,
    /// The Knative channel kind (in `channel-template-spec` of an `MTChannelBasedBroker`'s
    /// config) this backend serves, if any.
    pub channel_kind: Option<&'static str>,
    pub open: fn(ChannelConfig) -> OpenChannel,
}

inventory::collect!(Backend);

/// Looks a backend up by name.
pub fn backend(name: &str) -> Option<&'static Backend> {
    inventory::iter::<Backend>().find(|b| b.name == name)
}

/// The backend that serves a Knative broker class.
pub fn backend_for_broker_class(class: &str) -> Option<&'static Backend> {
    inventory::iter::<Backend>().find(|b| b.broker_class == Some(class))
}

/// The backend that serves a Knative channel kind.
pub fn backend_for_channel_kind(kind: &str) -> Option<&'static Backend> {
    inventory::iter::<Backend>().find(|b| b.channel_kind == Some(kind))
}

/// Every broker class (or channel kind) some backend serves, sorted, for errors.
pub fn served_names(name: fn(&Backend) -> Option<&'static str>) -> Vec<&'static str> {
    let mut names: Vec<_> = inventory::iter::<Backend>().filter_map(name).collect();
    names.sort_unstable();
    names
}

/// Names of every registered backend, for help texts and errors.
pub fn backend_names() -> Vec<&'static str> {
    let mut names: Vec<_> = inventory::iter::<Backend>().map(|b| b.name).collect();
    names.sort_unstable();
    names
}

/// Opens the channel of one broker on the named backend.
pub async fn open(
    backend_name: &str,
    config: ChannelConfig,
) -> Result<Arc<dyn Channel>, ChannelError> {
    let backend = backend(backend_name).ok_or_else(|| {
        ChannelError::Config(format!(
            "no channel backend named {backend_name:?}; known: {}",
            backend_names().join(", ")
        ))
    })?;
    (backend.open)(config).await
}

/// Builders the backends' unit tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use std::collections::BTreeMap;

    use bytes::Bytes;

    use crate::Envelope;

    /// An envelope of string attributes and optional data.
    pub fn envelope(attributes: &[(&str, &str)], data: Option<&[u8]>) -> Envelope {
        Envelope {
            attributes: attributes
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            data: data.map(Bytes::copy_from_slice),
            typed: Vec::new(),
        }
    }

    /// A map of backend settings, from `(key, value)` pairs.
    pub fn pairs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }
}
