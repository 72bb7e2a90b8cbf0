//! A Kafka consumer-group member that hands records out for processing and commits each
//! partition only up to its lowest unfinished offset.
//!
//! Records are fetched by a dedicated thread (librdkafka's consumer API blocks), decoded, and
//! queued; [`TrackedConsumer::receive`] hands them out and [`TrackedConsumer::ack`] marks them
//! done in any order. Per partition the consumer commits the lowest offset still unfinished,
//! and puts the offsets already done above it into the commit's metadata string, so a
//! consumer that takes the partition over later (after a rebalance or a restart) skips them
//! instead of redelivering them. Nothing is committed before it is done: at least once.
//!
//! Rebalances: when partitions are revoked the consumer commits what is done, forgets the
//! records of those partitions it still queues, and ignores late acknowledgements for them;
//! the new owner redelivers whatever was unfinished.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::Notify;

use crate::ChannelError;

/// Records queued beyond those handed out before fetching pauses.
const QUEUE_LIMIT: usize = 2_000;
/// How long one poll of the consumer waits; also the delay before a close is noticed.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Commits are sent at most this often while acknowledgements keep coming.
const COMMIT_INTERVAL: Duration = Duration::from_millis(50);
/// Kafka's default limit for commit metadata is 4096 bytes; stay below it.
const METADATA_LIMIT: usize = 3_800;
/// Marks metadata written by this consumer.
const METADATA_PREFIX: &str = "rivulet-done:";
/// How long blocking calls against the Kafka server wait.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Turns a fetched record into the item handed out, or `None` when the record needs no
/// processing (it is then done at once).
pub type Decoder<T> = Arc<dyn Fn(&BorrowedMessage<'_>) -> Option<T> + Send + Sync>;

/// What a tracked consumer reads.
#[derive(Clone)]
pub struct ConsumerSettings {
    /// Connection settings (`bootstrap.servers` and security options).
    pub client: ClientConfig,
    pub group_id: String,
    pub topics: Vec<String>,
    /// Where to start in partitions the group has no committed offset for.
    pub start_at_earliest: bool,
    /// A stable member identity (Kafka static membership): a restarted process with the
    /// same identity takes its partitions back at once. Without one, a member killed
    /// without leaving keeps its partitions on servers that never expire it (tansu 0.6).
    pub instance_id: Option<String>,
}

/// One record handed out by [`TrackedConsumer::receive`].
#[derive(Debug, Clone)]
pub struct Handed<T> {
    /// Pass it to [`TrackedConsumer::ack`].
    pub id: u64,
    pub item: T,
}

/// A consumer-group member with per-record acknowledgements.
pub struct TrackedConsumer<T> {
    shared: Arc<Shared<T>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Shared<T> {
    /// `bootstrap.servers` and group, for the process-wide registry of done offsets.
    servers: String,
    group: String,
    state: Mutex<State<T>>,
    /// Woken on new records, acknowledgements, rebalances and close.
    changed: Notify,
    /// 0 means no limit.
    max_in_flight: AtomicUsize,
    /// At most one record per partition handed out at a time.
    one_per_partition: AtomicBool,
    stop: StopHandle,
    /// Set by acknowledgements; the fetch thread then commits.
    dirty: AtomicBool,
    decode: Decoder<T>,
}

struct State<T> {
    /// Per topic, per partition.
    partitions: HashMap<String, HashMap<i32, PartitionState>>,
    queue: VecDeque<Queued<T>>,
    handed: HashMap<u64, Position>,
    next_id: u64,
    next_epoch: u64,
    closed: bool,
}

struct Queued<T> {
    position: Position,
    item: T,
}

#[derive(Debug, Clone)]
struct Position {
    topic: String,
    partition: i32,
    offset: i64,
    /// Which assignment of the partition the record belongs to.
    epoch: u64,
}

#[derive(Default)]
struct PartitionState {
    epoch: u64,
    /// Offsets fetched and not done yet (queued or handed out).
    unfinished: BTreeSet<i64>,
    /// Offsets done above the commit point (some learnt from an earlier owner's commit).
    done: BTreeSet<i64>,
    /// The offset after the last record fetched, or the committed offset before any fetch.
    next_fetch: Option<i64>,
    /// What was last committed, to skip commits that change nothing.
    last_commit: Option<(i64, String)>,
}

impl PartitionState {
    /// The offset to commit: everything below it is done.
    fn commit_point(&self) -> Option<i64> {
        self.unfinished.first().copied().or(self.next_fetch)
    }

    fn prune(&mut self) {
        if let Some(point) = self.commit_point() {
            self.done = self.done.split_off(&point);
        }
    }

    /// The commit for this partition, if it differs from the last one.
    fn pending_commit(&self) -> Option<(i64, String)> {
        let point = self.commit_point()?;
        let commit = (point, encode_done(point, &self.done));
        (self.last_commit.as_ref() != Some(&commit)).then_some(commit)
    }
}

/// Encodes the offsets done at or above `point` as ranges relative to it:
/// `rivulet-done:3-5,9` means offsets point+3..=point+5 and point+9 are done. Ranges that do
/// not fit Kafka's metadata limit are left out, which only costs redeliveries.
fn encode_done(point: i64, done: &BTreeSet<i64>) -> String {
    let mut text = String::new();
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for &offset in done.range(point..) {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == offset => *end = offset,
            _ => ranges.push((offset, offset)),
        }
    }
    if ranges.is_empty() {
        return text;
    }
    text.push_str(METADATA_PREFIX);
    for (n, (start, end)) in ranges.into_iter().enumerate() {
        let piece = if start == end {
            format!("{}", start - point)
        } else {
            format!("{}-{}", start - point, end - point)
        };
        if text.len() + piece.len() + 1 > METADATA_LIMIT {
            break;
        }
        if n > 0 {
            text.push(',');
        }
        text.push_str(&piece);
    }
    text
}

/// Reads metadata written by [`encode_done`]; anything else (another client's metadata, or
/// garbage) means nothing is known to be done.
fn decode_done(point: i64, metadata: &str) -> BTreeSet<i64> {
    let mut done = BTreeSet::new();
    let Some(ranges) = metadata.strip_prefix(METADATA_PREFIX) else {
        return done;
    };
    for range in ranges.split(',').filter(|r| !r.is_empty()) {
        let (start, end) = match range.split_once('-') {
            Some((start, end)) => (start.parse::<i64>(), end.parse::<i64>()),
            None => (range.parse::<i64>(), range.parse::<i64>()),
        };
        let (Ok(start), Ok(end)) = (start, end) else {
            return BTreeSet::new();
        };
        if start < 0 || end < start || end - start > 1_000_000 {
            return BTreeSet::new();
        }
        done.extend((start..=end).map(|delta| point + delta));
    }
    done
}

/// Offsets done above the commit point, per group and partition, kept for the whole process.
///
/// Commit metadata carries them to whichever consumer takes a partition over, but some
/// servers do not return metadata (tansu 0.6 drops it); this keeps them at least for the
/// consumers of this process (a take-over, a broker reconfigured). Keyed by servers, group,
/// topic and partition; forgotten when the group or topic is deleted.
type DoneKey = (String, String, String, i32);

fn done_registry() -> &'static Mutex<HashMap<DoneKey, BTreeSet<i64>>> {
    static REGISTRY: std::sync::OnceLock<Mutex<HashMap<DoneKey, BTreeSet<i64>>>> =
        std::sync::OnceLock::new();
    REGISTRY.get_or_init(Mutex::default)
}

/// Forgets what this process remembers of `group` on `servers` (the group was deleted).
pub fn forget_group(servers: &str, group: &str) {
    lock(done_registry()).retain(|(s, g, _, _), _| !(s == servers && g == group));
}

/// Forgets what this process remembers of `topic` on `servers` (the topic was deleted).
pub fn forget_topic(servers: &str, topic: &str) {
    lock(done_registry()).retain(|(s, _, t, _), _| !(s == servers && t == topic));
}

/// How many offsets in `from..to` of a partition are known done above the group's commit
/// point `committed`: those in the commit's metadata and those this process remembers
/// (servers that drop metadata).
pub(crate) fn done_between(
    key: (&str, &str, &str, i32),
    committed: i64,
    metadata: &str,
    from: i64,
    to: i64,
) -> u64 {
    let (servers, group, topic, partition) = key;
    let mut done = decode_done(committed, metadata);
    let remembered_key = (
        servers.to_owned(),
        group.to_owned(),
        topic.to_owned(),
        partition,
    );
    if let Some(remembered) = lock(done_registry()).get(&remembered_key) {
        done.extend(remembered.range(committed..));
    }
    done.range(from..to.max(from)).count() as u64
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<T: Send + 'static> TrackedConsumer<T> {
    /// Joins the group and starts fetching. Blocks while the consumer is created, so call it
    /// from a blocking context.
    pub fn start(settings: &ConsumerSettings, decode: Decoder<T>) -> Result<Self, ChannelError> {
        let shared = Arc::new(Shared {
            servers: settings
                .client
                .get("bootstrap.servers")
                .unwrap_or_default()
                .to_owned(),
            group: settings.group_id.clone(),
            state: Mutex::new(State {
                partitions: HashMap::new(),
                queue: VecDeque::new(),
                handed: HashMap::new(),
                next_id: 1,
                next_epoch: 1,
                closed: false,
            }),
            changed: Notify::new(),
            max_in_flight: AtomicUsize::new(0),
            one_per_partition: AtomicBool::new(false),
            stop: StopHandle::default(),
            dirty: AtomicBool::new(false),
            decode,
        });
        let mut config = settings.client.clone();
        // A member that died (kill -9) holds its partitions until its session expires:
        // keep that short, so a restarted process takes over within seconds.
        if config.get("session.timeout.ms").is_none() {
            config.set("session.timeout.ms", "10000");
        }
        if config.get("heartbeat.interval.ms").is_none() {
            config.set("heartbeat.interval.ms", "2000");
        }
        // Also the rebalance timeout: how long the coordinator waits for members that do not
        // rejoin (some servers end a dead member this way rather than by its session). The
        // fetch thread polls continuously, paused or not, so a live member never exceeds it.
        if config.get("max.poll.interval.ms").is_none() {
            config.set("max.poll.interval.ms", "15000");
        }
        if let Some(instance) = &settings.instance_id {
            config.set("group.instance.id", instance);
        }
        config
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                if settings.start_at_earliest {
                    "earliest"
                } else {
                    "latest"
                },
            );
        let context = TrackingContext {
            shared: Arc::clone(&shared),
        };
        let consumer: BaseConsumer<TrackingContext<T>> = config
            .create_with_context(context)
            .map_err(|e| ChannelError::Config(format!("cannot create a Kafka consumer: {e}")))?;
        let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(|e| {
            ChannelError::Unavailable(format!("cannot subscribe to {topics:?}: {e}"))
        })?;
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("kafka-{}", settings.group_id))
            .spawn(move || fetch_loop(consumer, thread_shared))
            .map_err(ChannelError::Io)?;
        Ok(Self {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Limits how many records are handed out and not acknowledged (0: no limit).
    pub fn set_max_in_flight(&self, limit: usize) {
        self.shared.max_in_flight.store(limit, Ordering::Relaxed);
        self.shared.changed.notify_waiters();
    }

    /// Waits for records and returns up to `max` of them, in fetch order.
    /// Hands out at most one record per partition until it is acknowledged (ordered
    /// delivery per partition), or any records (the default).
    pub fn set_one_per_partition(&self, on: bool) {
        self.shared.one_per_partition.store(on, Ordering::Relaxed);
        self.shared.changed.notify_waiters();
    }

    pub async fn receive(&self, max: usize) -> Result<Vec<Handed<T>>, ChannelError> {
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = lock(&self.shared.state);
                if state.closed {
                    return Err(ChannelError::Closed);
                }
                if max == 0 {
                    return Ok(Vec::new());
                }
                let room = match self.shared.max_in_flight.load(Ordering::Relaxed) {
                    0 => max,
                    limit => max.min(limit.saturating_sub(state.handed.len())),
                };
                let mut batch = Vec::new();
                let one_per_partition = self.shared.one_per_partition.load(Ordering::Relaxed);
                let mut busy: BTreeSet<(String, i32)> = if one_per_partition {
                    state
                        .handed
                        .values()
                        .map(|p| (p.topic.clone(), p.partition))
                        .collect()
                } else {
                    BTreeSet::new()
                };
                let mut index = 0;
                while batch.len() < room && index < state.queue.len() {
                    if one_per_partition {
                        let position = &state.queue[index].position;
                        let key = (position.topic.clone(), position.partition);
                        if !busy.insert(key) {
                            // Its partition has a record out: the next one waits for it.
                            index += 1;
                            continue;
                        }
                    }
                    let Some(queued) = state.queue.remove(index) else {
                        break;
                    };
                    let id = state.next_id;
                    state.next_id += 1;
                    state.handed.insert(id, queued.position);
                    batch.push(Handed {
                        id,
                        item: queued.item,
                    });
                }
                if !batch.is_empty() {
                    return Ok(batch);
                }
            }
            changed.await;
        }
    }

    /// Marks a handed-out record as done. Unknown ids (repeated acknowledgements, records of
    /// partitions this member lost) change nothing.
    pub fn ack(&self, id: u64) -> Result<(), ChannelError> {
        {
            let mut state = lock(&self.shared.state);
            if state.closed {
                return Err(ChannelError::Closed);
            }
            let Some(position) = state.handed.remove(&id) else {
                return Ok(());
            };
            if let Some(partition) = state
                .partitions
                .get_mut(&position.topic)
                .and_then(|p| p.get_mut(&position.partition))
                .filter(|p| p.epoch == position.epoch)
            {
                partition.unfinished.remove(&position.offset);
                partition.done.insert(position.offset);
                partition.prune();
            }
        }
        self.shared.dirty.store(true, Ordering::Release);
        self.shared.changed.notify_waiters();
        Ok(())
    }

    /// Commits what is done, leaves the group and waits until the consumer is gone. Records
    /// handed out and not acknowledged are redelivered to the group's next member.
    pub async fn close(&self) {
        self.begin_close();
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread {
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::warn!("the Kafka fetch thread ended abnormally");
            }
        }
    }

    fn begin_close(&self) {
        lock(&self.shared.state).closed = true;
        self.shared.stop.request();
        self.shared.changed.notify_waiters();
    }

    /// A handle that stops this consumer and tells when its fetch thread ended; it stays
    /// usable after the consumer itself is dropped.
    pub fn stop_handle(&self) -> StopHandle {
        self.shared.stop.clone()
    }
}

/// Stops a consumer's fetch thread and waits for it, even after the consumer was dropped
/// (dropping only asks the thread to stop).
#[derive(Clone, Default)]
pub struct StopHandle(Arc<StopState>);

#[derive(Default)]
struct StopState {
    requested: AtomicBool,
    finished: AtomicBool,
    finished_changed: Notify,
}

impl StopHandle {
    /// Asks the fetch thread to commit, leave the group and end.
    pub fn request(&self) {
        self.0.requested.store(true, Ordering::Release);
    }

    fn is_requested(&self) -> bool {
        self.0.requested.load(Ordering::Acquire)
    }

    /// Whether the fetch thread ended (the consumer left the group and stopped fetching).
    pub fn is_stopped(&self) -> bool {
        self.0.finished.load(Ordering::Acquire)
    }

    /// Waits until the fetch thread ended.
    pub async fn stopped(&self) {
        loop {
            let changed = self.0.finished_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_stopped() {
                return;
            }
            changed.await;
        }
    }

    fn finish(&self) {
        self.0.finished.store(true, Ordering::Release);
        self.0.finished_changed.notify_waiters();
    }
}

impl<T> Drop for TrackedConsumer<T> {
    fn drop(&mut self) {
        // The fetch thread commits and leaves the group on its own.
        lock(&self.shared.state).closed = true;
        self.shared.stop.request();
        self.shared.changed.notify_waiters();
    }
}

/// Fetches until closed, then commits and leaves the group.
fn fetch_loop<T: Send + 'static>(
    consumer: BaseConsumer<TrackingContext<T>>,
    shared: Arc<Shared<T>>,
) {
    let mut paused = false;
    let mut last_commit = Instant::now();
    let mut last_error_logged: Option<Instant> = None;
    while !shared.stop.is_requested() {
        match consumer.poll(POLL_INTERVAL) {
            None => {}
            Some(Ok(message)) => {
                take(&shared, &message);
                // Drain what is already fetched without waiting, under one wake-up.
                for _ in 0..500 {
                    match consumer.poll(Duration::ZERO) {
                        Some(Ok(message)) => take(&shared, &message),
                        Some(Err(error)) => {
                            log_error(&mut last_error_logged, &error);
                            break;
                        }
                        None => break,
                    }
                }
                shared.changed.notify_waiters();
            }
            Some(Err(error)) => log_error(&mut last_error_logged, &error),
        }
        let queued = lock(&shared.state).queue.len();
        if !paused && queued >= QUEUE_LIMIT {
            paused = set_paused(&consumer, true);
        } else if paused && queued < QUEUE_LIMIT / 2 {
            paused = !set_paused(&consumer, false);
        }
        if shared.dirty.load(Ordering::Acquire) && last_commit.elapsed() >= COMMIT_INTERVAL {
            shared.dirty.store(false, Ordering::Release);
            commit(&consumer, &shared, None, CommitMode::Async);
            last_commit = Instant::now();
        }
    }
    commit(&consumer, &shared, None, CommitMode::Sync);
    consumer.unsubscribe();
    // Dropping the consumer closes it, which leaves the group.
    drop(consumer);
    lock(&shared.state).closed = true;
    shared.changed.notify_waiters();
    shared.stop.finish();
}

fn log_error(last: &mut Option<Instant>, error: &rdkafka::error::KafkaError) {
    if last.is_none_or(|at| at.elapsed() > Duration::from_secs(5)) {
        tracing::warn!(%error, "Kafka consumer error; librdkafka keeps retrying");
        *last = Some(Instant::now());
    }
}

/// Pauses or resumes every assigned partition; true when it worked.
fn set_paused<C: ConsumerContext>(consumer: &BaseConsumer<C>, pause: bool) -> bool {
    let Ok(assignment) = consumer.assignment() else {
        return false;
    };
    let outcome = if pause {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    outcome.is_ok()
}

/// Records one fetched record.
fn take<T>(shared: &Shared<T>, message: &BorrowedMessage<'_>) {
    let offset = message.offset();
    let item = {
        let state = lock(&shared.state);
        let known_done = state
            .partitions
            .get(message.topic())
            .and_then(|p| p.get(&message.partition()))
            .is_some_and(|p| p.done.contains(&offset));
        drop(state);
        if known_done {
            None
        } else {
            (shared.decode)(message)
        }
    };
    let mut state = lock(&shared.state);
    let epoch = {
        let next_epoch = state.next_epoch;
        let partition = state
            .partitions
            .entry(message.topic().to_owned())
            .or_default()
            .entry(message.partition())
            .or_insert_with(|| PartitionState {
                epoch: next_epoch,
                ..PartitionState::default()
            });
        partition.next_fetch = Some(
            partition
                .next_fetch
                .map_or(offset + 1, |n| n.max(offset + 1)),
        );
        match &item {
            Some(_) => {
                partition.unfinished.insert(offset);
            }
            None => {
                partition.done.insert(offset);
                partition.prune();
            }
        }
        partition.epoch
    };
    if state.next_epoch == epoch {
        state.next_epoch += 1;
    }
    match item {
        Some(item) => state.queue.push_back(Queued {
            position: Position {
                topic: message.topic().to_owned(),
                partition: message.partition(),
                offset,
                epoch,
            },
            item,
        }),
        None => shared.dirty.store(true, Ordering::Release),
    }
}

/// Commits the partitions in `only` (or all) whose commit point or done set changed.
fn commit<C: ConsumerContext, T>(
    consumer: &BaseConsumer<C>,
    shared: &Shared<T>,
    only: Option<&TopicPartitionList>,
    mode: CommitMode,
) {
    let mut list = TopicPartitionList::new();
    {
        let mut state = lock(&shared.state);
        for (topic, partitions) in &mut state.partitions {
            for (&partition, partition_state) in partitions.iter_mut() {
                if only.is_some_and(|only| only.find_partition(topic, partition).is_none()) {
                    continue;
                }
                let Some((offset, metadata)) = partition_state.pending_commit() else {
                    continue;
                };
                let mut element = list.add_partition(topic, partition);
                if element.set_offset(Offset::Offset(offset)).is_err() {
                    continue;
                }
                element.set_metadata(metadata.clone());
                partition_state.last_commit = Some((offset, metadata));
                lock(done_registry()).insert(
                    (
                        shared.servers.clone(),
                        shared.group.clone(),
                        topic.clone(),
                        partition,
                    ),
                    partition_state.done.range(offset..).copied().collect(),
                );
            }
        }
    }
    if list.count() == 0 {
        return;
    }
    if let Err(error) = consumer.commit(&list, mode) {
        tracing::warn!(%error, "committing Kafka offsets failed; will retry");
        forget_commits(shared, &list);
        shared.dirty.store(true, Ordering::Release);
    }
}

/// Forgets that the partitions in `list` were committed, so they are committed again.
fn forget_commits<T>(shared: &Shared<T>, list: &TopicPartitionList) {
    let mut state = lock(&shared.state);
    for element in list.elements() {
        if let Some(partition) = state
            .partitions
            .get_mut(element.topic())
            .and_then(|p| p.get_mut(&element.partition()))
        {
            partition.last_commit = None;
        }
    }
}

/// Follows rebalances and commit outcomes for a [`TrackedConsumer`].
struct TrackingContext<T> {
    shared: Arc<Shared<T>>,
}

impl<T: Send + 'static> ClientContext for TrackingContext<T> {}

impl<T: Send + 'static> ConsumerContext for TrackingContext<T> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                commit(consumer, &self.shared, Some(list), CommitMode::Sync);
                let mut state = lock(&self.shared.state);
                for element in list.elements() {
                    if let Some(partitions) = state.partitions.get_mut(element.topic()) {
                        partitions.remove(&element.partition());
                    }
                }
                let still_owned =
                    |position: &Position, state: &HashMap<String, HashMap<i32, PartitionState>>| {
                        state
                            .get(&position.topic)
                            .and_then(|p| p.get(&position.partition))
                            .is_some_and(|p| p.epoch == position.epoch)
                    };
                let partitions = std::mem::take(&mut state.partitions);
                state
                    .queue
                    .retain(|q| still_owned(&q.position, &partitions));
                state.handed.retain(|_, p| still_owned(p, &partitions));
                state.partitions = partitions;
            }
            Rebalance::Assign(list) => {
                let committed = consumer.committed_offsets((*list).clone(), REQUEST_TIMEOUT);
                let mut state = lock(&self.shared.state);
                for element in list.elements() {
                    let epoch = state.next_epoch;
                    state.next_epoch += 1;
                    let mut partition = PartitionState {
                        epoch,
                        ..PartitionState::default()
                    };
                    if let Ok(committed) = &committed
                        && let Some(entry) =
                            committed.find_partition(element.topic(), element.partition())
                        && let Offset::Offset(point) = entry.offset()
                    {
                        partition.next_fetch = Some(point);
                        partition.done = decode_done(point, entry.metadata());
                        let key = (
                            self.shared.servers.clone(),
                            self.shared.group.clone(),
                            element.topic().to_owned(),
                            element.partition(),
                        );
                        if let Some(remembered) = lock(done_registry()).get(&key) {
                            partition.done.extend(remembered.range(point..));
                        }
                        partition.last_commit = Some((point, entry.metadata().to_owned()));
                    }
                    state
                        .partitions
                        .entry(element.topic().to_owned())
                        .or_default()
                        .insert(element.partition(), partition);
                }
            }
            Rebalance::Error(error) => {
                tracing::warn!(%error, "Kafka consumer group rebalance failed");
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, _rebalance: &Rebalance<'_>) {
        self.shared.changed.notify_waiters();
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(error) = result {
            tracing::warn!(%error, "committing Kafka offsets failed; will retry");
            forget_commits(&self.shared, offsets);
            self.shared.dirty.store(true, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_offsets_round_trip_through_metadata() {
        let done: BTreeSet<i64> = [103, 104, 105, 109, 200].into_iter().collect();
        let text = encode_done(100, &done);
        assert_eq!(text, "rivulet-done:3-5,9,100");
        assert_eq!(decode_done(100, &text), done);
    }

    #[test]
    fn nothing_done_is_empty_metadata() {
        assert_eq!(encode_done(7, &BTreeSet::new()), "");
        assert!(decode_done(7, "").is_empty());
    }

    #[test]
    fn foreign_or_broken_metadata_means_nothing_done() {
        assert!(decode_done(0, "some other client").is_empty());
        assert!(decode_done(0, "rivulet-done:3-x").is_empty());
        assert!(decode_done(0, "rivulet-done:5-2").is_empty());
    }

    #[test]
    fn metadata_stays_under_the_limit() {
        let done: BTreeSet<i64> = (0..10_000).map(|n| n * 2 + 1).collect();
        let text = encode_done(0, &done);
        assert!(text.len() <= METADATA_LIMIT, "{} bytes", text.len());
        assert!(decode_done(0, &text).is_subset(&done));
    }

    #[test]
    fn done_offsets_in_a_range_are_counted_from_metadata_and_memory() {
        let key = ("servers-done-between", "group", "topic", 0);
        // Offsets 13, 14 and 17 done above the commit point 10, per the metadata.
        assert_eq!(done_between(key, 10, "rivulet-done:3-4,7", 10, 20), 3);
        assert_eq!(done_between(key, 10, "rivulet-done:3-4,7", 14, 20), 2);
        assert_eq!(done_between(key, 10, "rivulet-done:3-4,7", 10, 14), 1);
        assert_eq!(done_between(key, 10, "", 10, 20), 0);
        assert_eq!(
            done_between(key, 10, "rivulet-done:3", 20, 10),
            0,
            "empty range"
        );
        // A server that dropped the metadata: what this process committed still counts.
        lock(done_registry()).insert(
            (
                "servers-done-between".into(),
                "group".into(),
                "topic".into(),
                0,
            ),
            [11, 12, 30].into_iter().collect(),
        );
        assert_eq!(done_between(key, 10, "", 10, 20), 2);
        assert_eq!(
            done_between(key, 10, "rivulet-done:2", 10, 20),
            2,
            "no double count"
        );
        forget_group("servers-done-between", "group");
        assert_eq!(done_between(key, 10, "", 10, 20), 0);
    }

    #[test]
    fn commit_point_is_the_lowest_unfinished_offset() {
        let mut partition = PartitionState {
            next_fetch: Some(10),
            ..PartitionState::default()
        };
        partition.unfinished.extend([5, 6, 8]);
        partition.done.extend([3, 4, 7, 9]);
        partition.prune();
        assert_eq!(partition.commit_point(), Some(5));
        assert_eq!(
            partition.pending_commit(),
            Some((5, "rivulet-done:2,4".into()))
        );
        partition.unfinished.clear();
        partition.prune();
        assert_eq!(partition.commit_point(), Some(10));
        assert!(partition.done.is_empty());
    }
}
