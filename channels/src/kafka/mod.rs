//! The `kafka` backend: one topic per broker on a Kafka-protocol server, one consumer group
//! per subscription.
//!
//! - The topic is `knative-broker-{namespace}-{broker}`, created when the channel opens with
//!   `default.topic.partitions` partitions and `default.topic.replication.factor` replicas
//!   (Knative's keys), and deleted by [`Channel::destroy`].
//! - [`Channel::publish`] returns once the server acknowledged every record with
//!   `acks=all`. Events are written in the binary content mode of the CloudEvents Kafka
//!   binding ([`binding`]), keyed by their `partitionkey` extension when they have one.
//! - Each subscription is the consumer group `{topic}.{subscription}`. Creating it commits
//!   the partitions' current ends, so it gets what is published afterwards. Offsets are
//!   committed only up to the lowest record not yet acknowledged (see [`consumer`]).
//! - Within one process a new [`Channel::consume`] of a subscription takes over from the
//!   previous consumer; consumers in other processes share the partitions, as Kafka groups do.
//!
//! Order holds per partition. The prefilter is applied as records are read: Kafka cannot
//! route, so every group reads every record and skips those that cannot match.

pub mod binding;
pub mod consumer;

pub use rdkafka;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::{
    Backend, Channel, ChannelConfig, ChannelError, Envelope, Prefilter, Received, Subscription,
    SubscriptionSpec,
};
use consumer::{ConsumerSettings, Decoder, REQUEST_TIMEOUT, StopHandle, TrackedConsumer};

inventory::submit! {
    Backend {
        name: "kafka",
        durable: true,
        broker_class: Some("Kafka"),
        channel_kind: Some("KafkaChannel"),
        open: |config| crate::opened(async move { KafkaChannel::open(config).await }),
    }
}

/// The setting naming the Kafka servers.
pub const BOOTSTRAP_SERVERS: &str = "bootstrap.servers";
/// Partitions of a broker's topic (Knative's key).
pub const TOPIC_PARTITIONS: &str = "default.topic.partitions";
/// Replication factor of a broker's topic (Knative's key).
pub const TOPIC_REPLICATION: &str = "default.topic.replication.factor";
/// Knative's default partition count for broker topics.
pub const DEFAULT_PARTITIONS: i32 = 10;
/// A single replica unless configured: right for one-server setups, set it for clusters.
pub const DEFAULT_REPLICATION: i32 = 1;

/// Settings passed to librdkafka as they are: security and client tuning.
const PASSED_THROUGH_PREFIXES: &[&str] = &[
    "security.",
    "sasl.",
    "ssl.",
    "client.",
    "socket.",
    "delivery.timeout.ms",
    "request.timeout.ms",
    "linger.ms",
    "compression.",
    "enable.idempotence",
    "max.in.flight.requests.per.connection",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
];

/// How long a produce may take, retries included, before publish fails (503 at ingress).
const DEFAULT_DELIVERY_TIMEOUT_MS: &str = "10000";

/// The topic of a broker, as Knative names it.
pub fn topic_name(namespace: &str, broker: &str) -> String {
    format!("knative-broker-{namespace}-{broker}")
}

/// The consumer group of one subscription of a broker's topic.
pub fn group_id(topic: &str, subscription: &str) -> String {
    format!("{topic}.{subscription}")
}

/// librdkafka settings for reaching the servers named in `settings`: `bootstrap.servers`
/// plus any security or client setting among them.
pub fn client_config(settings: &BTreeMap<String, String>) -> Result<ClientConfig, ChannelError> {
    let servers = settings
        .get(BOOTSTRAP_SERVERS)
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ChannelError::Config(format!(
                "the Kafka configuration needs {BOOTSTRAP_SERVERS:?} (host:port[,host:port...])"
            ))
        })?;
    let mut config = ClientConfig::new();
    config.set(BOOTSTRAP_SERVERS, servers);
    for (key, value) in settings {
        if PASSED_THROUGH_PREFIXES.iter().any(|p| key.starts_with(p)) {
            config.set(key, value);
        }
    }
    Ok(config)
}

/// A producer that answers only once every in-sync replica has a record.
///
/// One produce request in flight per connection keeps the order of records across retries
/// without the idempotent producer, which not every Kafka-protocol server implements
/// correctly (tansu 0.6 fails on it); servers that do can be given `enable.idempotence` and
/// a larger `max.in.flight.requests.per.connection` in the broker's configuration.
pub fn producer(client: &ClientConfig) -> Result<FutureProducer, ChannelError> {
    let mut config = client.clone();
    config.set("acks", "all");
    if config.get("enable.idempotence").is_none() {
        config.set("enable.idempotence", "false");
    }
    if config
        .get("max.in.flight.requests.per.connection")
        .is_none()
    {
        config.set("max.in.flight.requests.per.connection", "1");
    }
    if config.get("delivery.timeout.ms").is_none() {
        config.set("delivery.timeout.ms", DEFAULT_DELIVERY_TIMEOUT_MS);
    }
    config
        .create()
        .map_err(|e| ChannelError::Config(format!("cannot create a Kafka producer: {e}")))
}

/// Sends records and waits for every acknowledgement; the error names the first failure.
pub async fn produce_all<'a, I>(producer: &FutureProducer, records: I) -> Result<(), ChannelError>
where
    I: IntoIterator<Item = FutureRecord<'a, str, [u8]>>,
{
    let mut pending = Vec::new();
    let mut failure = None;
    for record in records {
        match producer.send_result(record) {
            Ok(delivery) => pending.push(delivery),
            Err((error, _)) => {
                failure = Some(error.to_string());
                break;
            }
        }
    }
    for delivery in futures::future::join_all(pending).await {
        match delivery {
            Ok(Ok(_)) => {}
            Ok(Err((error, _))) => {
                failure.get_or_insert_with(|| error.to_string());
            }
            Err(_) => {
                failure.get_or_insert_with(|| "the producer shut down".into());
            }
        }
    }
    match failure {
        None => Ok(()),
        Some(reason) => Err(ChannelError::Unavailable(format!(
            "Kafka did not acknowledge the write: {reason}"
        ))),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn parse_count(
    settings: &BTreeMap<String, String>,
    key: &str,
    default: i32,
) -> Result<i32, ChannelError> {
    match settings.get(key) {
        None => Ok(default),
        Some(text) => text
            .trim()
            .parse::<i32>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                ChannelError::Config(format!("{key} must be a positive integer, not {text:?}"))
            }),
    }
}

fn unavailable(what: &str, error: impl std::fmt::Display) -> ChannelError {
    ChannelError::Unavailable(format!("{what}: {error}"))
}

/// Runs a blocking librdkafka call off the async runtime.
async fn blocking<R: Send + 'static>(
    work: impl FnOnce() -> Result<R, ChannelError> + Send + 'static,
) -> Result<R, ChannelError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ChannelError::Unavailable(format!("a Kafka call panicked: {e}")))?
}

/// A broker's channel on Kafka.
pub struct KafkaChannel {
    topic: String,
    partitions: i32,
    replication: i32,
    client: ClientConfig,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    subscriptions: Mutex<HashMap<String, SubscriptionEntry>>,
    /// This process's identity as a static member of the trigger groups.
    member_id: String,
}

/// The file in the data folder that keeps the process's consumer-group identity.
const MEMBER_ID_FILE: &str = "kafka-member-id";

/// This process's identity in consumer groups: random, kept in the data folder, so a
/// restarted process (even after `kill -9`) takes its partitions back at once, while
/// processes with their own data folders (replicas) never fence each other.
fn member_id(data_dir: &std::path::Path) -> Result<String, ChannelError> {
    let path = data_dir.join(MEMBER_ID_FILE);
    if let Ok(stored) = std::fs::read_to_string(&path) {
        let stored = stored.trim();
        if !stored.is_empty() {
            return Ok(stored.to_owned());
        }
    }
    std::fs::create_dir_all(data_dir)?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    std::fs::write(&path, &id)?;
    Ok(id)
}

/// How long counting a subscription's backlog may take: a sampler asks for every trigger in
/// turn, so a slow server must not hold it up for long.
const BACKLOG_TIMEOUT: Duration = Duration::from_secs(5);

/// How long closing a consumer (final commit, leaving the group) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// What this process knows of one subscription.
struct SubscriptionEntry {
    prefilter: Arc<RwLock<Prefilter>>,
    max_in_flight: usize,
    one_per_partition: bool,
    /// The consumer currently reading it, if any.
    active: Weak<TrackedConsumer<Arc<Envelope>>>,
    /// Every consumer started for it whose fetch thread may still run, dropped or not.
    consumers: Vec<StopHandle>,
}

impl KafkaChannel {
    /// Connects and creates the broker's topic if it does not exist.
    pub async fn open(config: ChannelConfig) -> Result<Self, ChannelError> {
        let client = client_config(&config.settings)?;
        let partitions = parse_count(&config.settings, TOPIC_PARTITIONS, DEFAULT_PARTITIONS)?;
        let replication = parse_count(&config.settings, TOPIC_REPLICATION, DEFAULT_REPLICATION)?;
        let producer = producer(&client)?;
        let admin: AdminClient<DefaultClientContext> = client.create().map_err(|e| {
            ChannelError::Config(format!("cannot create a Kafka admin client: {e}"))
        })?;
        let channel = Self {
            topic: topic_name(&config.namespace, &config.broker),
            partitions,
            replication,
            client,
            producer,
            admin,
            subscriptions: Mutex::new(HashMap::new()),
            member_id: member_id(&config.data_dir)?,
        };
        channel.create_topic().await?;
        Ok(channel)
    }

    /// The broker's topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn servers(&self) -> &str {
        self.client.get(BOOTSTRAP_SERVERS).unwrap_or_default()
    }

    fn admin_options() -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(REQUEST_TIMEOUT))
            .operation_timeout(Some(REQUEST_TIMEOUT))
    }

    async fn create_topic(&self) -> Result<(), ChannelError> {
        let topic = NewTopic::new(
            &self.topic,
            self.partitions,
            TopicReplication::Fixed(self.replication),
        );
        let results = self
            .admin
            .create_topics([&topic], &Self::admin_options())
            .await
            .map_err(|e| unavailable(&format!("creating topic {}", self.topic), e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(unavailable(&format!("creating topic {topic}"), code));
                }
            }
        }
        Ok(())
    }

    /// A consumer in `group` that never joins it, for reading and committing its offsets.
    fn group_client(&self, group: &str) -> Result<BaseConsumer, ChannelError> {
        let mut config = self.client.clone();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false");
        config
            .create()
            .map_err(|e| ChannelError::Config(format!("cannot create a Kafka consumer: {e}")))
    }

    /// Every partition of the topic with the group's committed offset (if any) and metadata.
    /// A topic created a moment ago may not be in the server's metadata yet: asks again for
    /// a few seconds.
    fn committed(consumer: &BaseConsumer, topic: &str) -> Result<TopicPartitionList, ChannelError> {
        let mut attempt = 0;
        loop {
            match Self::committed_once(consumer, topic, REQUEST_TIMEOUT) {
                Err(error) if attempt < 20 => {
                    tracing::debug!(%error, "reading committed offsets; trying again");
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(250));
                }
                other => return other,
            }
        }
    }

    fn committed_once(
        consumer: &BaseConsumer,
        topic: &str,
        timeout: Duration,
    ) -> Result<TopicPartitionList, ChannelError> {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| unavailable(&format!("reading the partitions of {topic}"), e))?;
        let mut list = TopicPartitionList::new();
        for described in metadata.topics().iter().filter(|t| t.name() == topic) {
            if let Some(error) = described.error() {
                return Err(ChannelError::Unavailable(format!(
                    "topic {topic}: {:?}",
                    RDKafkaErrorCode::from(error)
                )));
            }
            for partition in described.partitions() {
                list.add_partition(topic, partition.id());
            }
        }
        if list.count() == 0 {
            return Err(ChannelError::Unavailable(format!(
                "topic {topic} has no partitions"
            )));
        }
        consumer
            .committed_offsets(list, timeout)
            .map_err(|e| unavailable("reading committed offsets", e))
    }

    /// The events `group` has not finished, summed over the topic's partitions: from the
    /// committed offset (or the start of the partition, when nothing is committed) to the
    /// end, less the offsets done above the commit point. Uses a client that never joins the
    /// group, so the running consumers are not disturbed. Gives up at `deadline`.
    fn count_backlog(
        consumer: &BaseConsumer,
        key: (&str, &str, &str),
        name: &str,
        deadline: Instant,
    ) -> Result<u64, ChannelError> {
        let (servers, group, topic) = key;
        let left = || {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                Err(ChannelError::Unavailable(format!(
                    "counting the backlog of {group} took longer than {BACKLOG_TIMEOUT:?}"
                )))
            } else {
                Ok(left)
            }
        };
        let committed = Self::committed_once(consumer, topic, left()?)?;
        // The group is made with committed offsets (see ensure_subscription): none at all
        // means the subscription does not exist.
        if !committed
            .elements()
            .iter()
            .any(|e| matches!(e.offset(), Offset::Offset(_)))
        {
            return Err(ChannelError::UnknownSubscription(name.to_owned()));
        }
        let mut total = 0u64;
        for element in committed.elements() {
            let partition = element.partition();
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, left()?)
                .map_err(|e| unavailable("reading the ends of the topic", e))?;
            let (start, done) = match element.offset() {
                Offset::Offset(point) => {
                    // Records below the low watermark were removed by retention.
                    let start = point.max(low);
                    let metadata = element.metadata();
                    let key = (servers, group, topic, partition);
                    (
                        start,
                        consumer::done_between(key, point, metadata, start, high),
                    )
                }
                _ => (low, 0),
            };
            let waiting = u64::try_from(high.saturating_sub(start)).unwrap_or(0);
            total = total.saturating_add(waiting.saturating_sub(done));
        }
        Ok(total)
    }

    fn entry_for(&self, name: &str) -> (Arc<RwLock<Prefilter>>, usize, bool) {
        let mut subscriptions = lock(&self.subscriptions);
        let entry = subscriptions
            .entry(name.to_owned())
            .or_insert_with(|| SubscriptionEntry {
                prefilter: Arc::new(RwLock::new(Prefilter::all())),
                max_in_flight: 0,
                one_per_partition: false,
                active: Weak::new(),
                consumers: Vec::new(),
            });
        (
            Arc::clone(&entry.prefilter),
            entry.max_in_flight,
            entry.one_per_partition,
        )
    }

    /// Stops every consumer of `name` this process started and waits until they left the
    /// group and stopped fetching (also those already dropped, which stop on their own).
    async fn stop_consumers(&self, name: &str) {
        let handles: Vec<StopHandle> = lock(&self.subscriptions)
            .get_mut(name)
            .map(|entry| std::mem::take(&mut entry.consumers))
            .unwrap_or_default();
        for handle in &handles {
            handle.request();
        }
        let all_stopped = futures::future::join_all(handles.iter().map(StopHandle::stopped));
        if tokio::time::timeout(CLOSE_TIMEOUT, all_stopped)
            .await
            .is_err()
        {
            tracing::warn!(
                subscription = name,
                "a Kafka consumer did not close in time"
            );
        }
    }
}

#[async_trait]
impl Channel for KafkaChannel {
    async fn close(&self) {
        let names: Vec<String> = lock(&self.subscriptions).keys().cloned().collect();
        futures::future::join_all(names.iter().map(|name| self.stop_consumers(name))).await;
    }

    async fn publish(&self, events: Vec<Envelope>) -> Result<(), ChannelError> {
        let encoded: Vec<_> = events.iter().map(binding::to_binary).collect();
        let records = encoded.into_iter().map(|record| {
            let mut out = FutureRecord::to(&self.topic).headers(record.headers);
            if let Some(key) = record.key {
                out = out.key(key);
            }
            if let Some(value) = record.value {
                out = out.payload(value);
            }
            out
        });
        produce_all(&self.producer, records).await
    }

    async fn ensure_subscription(
        &self,
        name: &str,
        spec: &SubscriptionSpec,
    ) -> Result<(), ChannelError> {
        let group = group_id(&self.topic, name);
        let consumer = self.group_client(&group)?;
        let topic = self.topic.clone();
        blocking(move || {
            let committed = Self::committed(&consumer, &topic)?;
            // Partitions the group has no offset in start at their current end.
            let mut starts = TopicPartitionList::new();
            for element in committed.elements() {
                if matches!(element.offset(), Offset::Offset(_)) {
                    continue;
                }
                let (_, high) = consumer
                    .fetch_watermarks(&topic, element.partition(), REQUEST_TIMEOUT)
                    .map_err(|e| unavailable("reading the end of the topic", e))?;
                starts
                    .add_partition_offset(&topic, element.partition(), Offset::Offset(high))
                    .map_err(|e| unavailable("building a commit", e))?;
            }
            if starts.count() > 0 {
                consumer
                    .commit(&starts, CommitMode::Sync)
                    .map_err(|e| unavailable(&format!("creating consumer group {group}"), e))?;
            }
            Ok(())
        })
        .await?;
        let (prefilter, _, _) = self.entry_for(name);
        *prefilter.write().unwrap_or_else(PoisonError::into_inner) = spec.prefilter.clone();
        let active = {
            let mut subscriptions = lock(&self.subscriptions);
            let entry = subscriptions.get_mut(name).expect("entry created above");
            entry.max_in_flight = spec.max_in_flight;
            entry.one_per_partition = spec.one_per_partition;
            entry.active.upgrade()
        };
        if let Some(active) = active {
            active.set_max_in_flight(spec.max_in_flight);
            active.set_one_per_partition(spec.one_per_partition);
        }
        Ok(())
    }

    async fn consume(&self, name: &str) -> Result<Arc<dyn Subscription>, ChannelError> {
        let group = group_id(&self.topic, name);
        let probe = self.group_client(&group)?;
        let topic = self.topic.clone();
        let known = blocking(move || {
            let committed = Self::committed(&probe, &topic)?;
            Ok(committed
                .elements()
                .iter()
                .any(|e| matches!(e.offset(), Offset::Offset(_))))
        })
        .await?;
        if !known {
            return Err(ChannelError::UnknownSubscription(name.to_owned()));
        }
        // One consumer per subscription in this process: the newest takes over.
        self.stop_consumers(name).await;
        let (prefilter, max_in_flight, one_per_partition) = self.entry_for(name);
        let decode: Decoder<Arc<Envelope>> =
            Arc::new(move |message| match binding::from_binary(message) {
                Ok(envelope) => {
                    let wanted = prefilter
                        .read()
                        .unwrap_or_else(PoisonError::into_inner)
                        .matches(&envelope);
                    wanted.then(|| Arc::new(envelope))
                }
                Err(error) => {
                    tracing::error!(%error, "skipping a record that is not a CloudEvent");
                    None
                }
            });
        let settings = ConsumerSettings {
            client: self.client.clone(),
            group_id: group,
            topics: vec![self.topic.clone()],
            start_at_earliest: true,
            instance_id: Some(format!("rivulet-{}-{name}", self.member_id)),
        };
        let consumer = blocking(move || TrackedConsumer::start(&settings, decode)).await?;
        consumer.set_max_in_flight(max_in_flight);
        consumer.set_one_per_partition(one_per_partition);
        let consumer = Arc::new(consumer);
        if let Some(entry) = lock(&self.subscriptions).get_mut(name) {
            entry.active = Arc::downgrade(&consumer);
            entry.consumers.retain(|c| !c.is_stopped());
            entry.consumers.push(consumer.stop_handle());
        }
        Ok(Arc::new(KafkaSubscription { consumer }))
    }

    async fn backlog(&self, name: &str) -> Result<Option<u64>, ChannelError> {
        let group = group_id(&self.topic, name);
        let consumer = self.group_client(&group)?;
        let topic = self.topic.clone();
        let servers = self.servers().to_owned();
        let name = name.to_owned();
        let deadline = Instant::now() + BACKLOG_TIMEOUT;
        let counted_group = group.clone();
        let count = blocking(move || {
            Self::count_backlog(
                &consumer,
                (&servers, &counted_group, &topic),
                &name,
                deadline,
            )
        });
        // The librdkafka calls each end by the deadline; this bounds the whole as well.
        match tokio::time::timeout(BACKLOG_TIMEOUT + Duration::from_secs(1), count).await {
            Ok(count) => count.map(Some),
            Err(_) => Err(ChannelError::Unavailable(format!(
                "counting the backlog of {group} timed out"
            ))),
        }
    }

    async fn delete_subscription(&self, name: &str) -> Result<(), ChannelError> {
        self.stop_consumers(name).await;
        lock(&self.subscriptions).remove(name);
        let group = group_id(&self.topic, name);
        consumer::forget_group(self.servers(), &group);
        let results = self
            .admin
            .delete_groups(&[group.as_str()], &Self::admin_options())
            .await
            .map_err(|e| unavailable(&format!("deleting consumer group {group}"), e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::GroupIdNotFound)) => {}
                Err((group, code)) => {
                    return Err(unavailable(
                        &format!("deleting consumer group {group}"),
                        code,
                    ));
                }
            }
        }
        Ok(())
    }

    async fn destroy(&self) -> Result<(), ChannelError> {
        let names: Vec<String> = lock(&self.subscriptions).keys().cloned().collect();
        // Fetching from a topic being deleted breaks some servers (tansu 0.6): stop first.
        for name in &names {
            self.stop_consumers(name).await;
        }
        lock(&self.subscriptions).clear();
        // The groups of this process's subscriptions. Groups made by other processes keep no
        // offsets once the topic is gone, so they are forgotten with it.
        let mut groups: Vec<String> = names.iter().map(|n| group_id(&self.topic, n)).collect();
        groups.sort();
        groups.dedup();
        if !groups.is_empty() {
            let names: Vec<&str> = groups.iter().map(String::as_str).collect();
            if let Err(error) = self
                .admin
                .delete_groups(&names, &Self::admin_options())
                .await
            {
                tracing::warn!(%error, "deleting the consumer groups of a removed broker failed");
            }
        }
        consumer::forget_topic(self.servers(), &self.topic);
        let results = self
            .admin
            .delete_topics(&[self.topic.as_str()], &Self::admin_options())
            .await
            .map_err(|e| unavailable(&format!("deleting topic {}", self.topic), e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((topic, code)) => {
                    return Err(unavailable(&format!("deleting topic {topic}"), code));
                }
            }
        }
        Ok(())
    }

    async fn ready(&self) -> Result<(), ChannelError> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(2))
                .map(drop)
                .map_err(|e: KafkaError| unavailable("Kafka is not reachable", e))
        })
        .await
    }

    fn has_partitions(&self) -> bool {
        true
    }
}

/// One consumer of a subscription.
struct KafkaSubscription {
    consumer: Arc<TrackedConsumer<Arc<Envelope>>>,
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn receive(&self, max: usize) -> Result<Vec<Received>, ChannelError> {
        let handed = self.consumer.receive(max).await?;
        Ok(handed
            .into_iter()
            .map(|h| Received {
                id: h.id,
                envelope: h.item,
                // A record read again after a rebalance looks like any other.
                redelivered: false,
            })
            .collect())
    }

    async fn ack(&self, id: u64) -> Result<(), ChannelError> {
        self.consumer.ack(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::pairs as settings;

    #[test]
    fn names_follow_knative() {
        assert_eq!(
            topic_name("default", "orders"),
            "knative-broker-default-orders"
        );
        assert_eq!(
            group_id("knative-broker-default-orders", "trigger-t1"),
            "knative-broker-default-orders.trigger-t1"
        );
    }

    #[test]
    fn bootstrap_servers_are_required() {
        let error = client_config(&settings(&[])).expect_err("no servers");
        assert!(error.to_string().contains("bootstrap.servers"), "{error}");
    }

    #[test]
    fn security_settings_pass_through_and_others_do_not() {
        let config = client_config(&settings(&[
            ("bootstrap.servers", "k:9092"),
            ("security.protocol", "SASL_SSL"),
            ("default.topic.partitions", "3"),
        ]))
        .expect("valid");
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.get("default.topic.partitions"), None);
    }

    #[test]
    fn topic_counts_are_validated() {
        let good = settings(&[("default.topic.partitions", "3")]);
        assert_eq!(parse_count(&good, TOPIC_PARTITIONS, 10).unwrap(), 3);
        assert_eq!(parse_count(&good, TOPIC_REPLICATION, 1).unwrap(), 1);
        let bad = settings(&[("default.topic.partitions", "zero")]);
        assert!(parse_count(&bad, TOPIC_PARTITIONS, 10).is_err());
        let zero = settings(&[("default.topic.partitions", "0")]);
        assert!(parse_count(&zero, TOPIC_PARTITIONS, 10).is_err());
    }
}
