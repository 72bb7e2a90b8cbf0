//! The `embedded` backend: a durable log in one [`redb`] database file per broker, at
//! `{data_dir}/channels/{namespace}/{broker}.redb`.
//!
//! Layout: every event that at least one subscription wants is stored once (`events`, by
//! sequence number) with a count of the subscriptions still holding it (`refcounts`); each
//! subscription's queue is a set of `(subscription, seq)` keys (`queue`); subscriptions and
//! their prefilters are kept too (`subscriptions`), so events are routed to them after a
//! restart before any consumer attaches. Acknowledging removes a queue key and decrements the
//! count; at zero the event is deleted and redb reuses its pages.
//!
//! All writes go through one writer thread that takes whatever requests are queued (group
//! commit), applies them in one transaction and commits once, so concurrent publishers share
//! one fsync. A consumer reads its queue from the start and keeps its position in memory, so
//! what was never acknowledged is delivered again after a restart; a new `consume` on the same
//! subscription takes over from the previous consumer (whose `receive` then returns
//! [`ChannelError::Closed`]) and starts from the start of the queue again.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::routing::RoutingIndex;
use crate::{
    Backend, Channel, ChannelConfig, ChannelError, Envelope, OpenChannel, Prefilter, Received,
    Subscription, SubscriptionSpec,
};

inventory::submit! {
    Backend {
        name: "embedded",
        durable: true,
        open: open_embedded,
    }
}

fn open_embedded(config: ChannelConfig) -> OpenChannel {
    Box::pin(async move {
        let channel = EmbeddedChannel::open(&config).await?;
        Ok(Arc::new(channel) as Arc<dyn Channel>)
    })
}

/// seq -> encoded envelope.
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// (subscription, seq) -> (): the events a subscription still holds.
const QUEUE: TableDefinition<(&str, u64), ()> = TableDefinition::new("queue");
/// seq -> number of subscriptions still holding the event.
const REFCOUNTS: TableDefinition<u64, u32> = TableDefinition::new("refcounts");
/// subscription name -> encoded [`StoredSubscription`].
const SUBSCRIPTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("subscriptions");
/// Small named counters.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_SEQ: &str = "next_seq";

/// Most requests applied in one transaction.
const MAX_OPS_PER_COMMIT: usize = 1024;
/// Requests waiting for the writer beyond this make callers wait (back-pressure).
const WRITE_QUEUE_CAPACITY: usize = 4096;
/// Acknowledgement-only commits skip the fsync; this bounds how many may follow each other
/// before one is made durable, so that a quiet period without publishes does not leave an
/// ever longer tail of acknowledgements to redeliver after a crash.
const MAX_NON_DURABLE_COMMITS: u32 = 256;

/// Version tag in front of every encoded envelope, so the encoding can evolve.
const ENVELOPE_FORMAT: u8 = 1;

#[derive(Serialize, Deserialize)]
struct StoredEnvelope<'a> {
    #[serde(borrow)]
    attributes: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    #[serde(borrow)]
    data: Option<&'a [u8]>,
}

fn encode_envelope(envelope: &Envelope) -> Result<Vec<u8>, ChannelError> {
    let stored = StoredEnvelope {
        attributes: envelope
            .attributes
            .iter()
            .map(|(name, value)| (Cow::Borrowed(name.as_str()), Cow::Borrowed(value.as_str())))
            .collect(),
        data: envelope.data.as_deref(),
    };
    let mut encoded = vec![ENVELOPE_FORMAT];
    postcard::to_io(&stored, &mut encoded)
        .map_err(|e| ChannelError::Corrupt(format!("cannot encode event: {e}")))?;
    Ok(encoded)
}

fn decode_envelope(seq: u64, encoded: &[u8]) -> Result<Envelope, ChannelError> {
    let corrupt = |why: String| ChannelError::Corrupt(format!("stored event {seq}: {why}"));
    let (format, body) = encoded
        .split_first()
        .ok_or_else(|| corrupt("empty record".into()))?;
    if *format != ENVELOPE_FORMAT {
        return Err(corrupt(format!("unknown format {format}")));
    }
    let stored: StoredEnvelope<'_> =
        postcard::from_bytes(body).map_err(|e| corrupt(e.to_string()))?;
    Ok(Envelope {
        attributes: stored
            .attributes
            .into_iter()
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect(),
        data: stored.data.map(Bytes::copy_from_slice),
    })
}

#[derive(Serialize, Deserialize)]
struct StoredSubscription {
    prefilter: Vec<(String, String)>,
    max_in_flight: u64,
}

fn encode_subscription(spec: &SubscriptionSpec) -> Result<Vec<u8>, ChannelError> {
    let stored = StoredSubscription {
        prefilter: spec.prefilter.exact.clone(),
        max_in_flight: spec.max_in_flight as u64,
    };
    postcard::to_stdvec(&stored)
        .map_err(|e| ChannelError::Corrupt(format!("cannot encode subscription: {e}")))
}

fn decode_subscription(name: &str, encoded: &[u8]) -> Result<SubscriptionSpec, ChannelError> {
    let stored: StoredSubscription = postcard::from_bytes(encoded)
        .map_err(|e| ChannelError::Corrupt(format!("stored subscription {name:?}: {e}")))?;
    Ok(SubscriptionSpec {
        prefilter: Prefilter {
            filter: None,
            prefix: Vec::new(),
            exact: stored.prefilter,
        },
        max_in_flight: usize::try_from(stored.max_in_flight).unwrap_or(usize::MAX),
        one_per_partition: false,
    })
}

/// Any redb failure: the log cannot take or give events right now.
fn storage(error: impl std::fmt::Display) -> ChannelError {
    ChannelError::Unavailable(format!("embedded log: {error}"))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where the database of a broker lives.
pub fn database_path(config: &ChannelConfig) -> Result<PathBuf, ChannelError> {
    for (what, value) in [("namespace", &config.namespace), ("broker", &config.broker)] {
        let bad =
            value.is_empty() || value == "." || value == ".." || value.contains(['/', '\\', '\0']);
        if bad {
            return Err(ChannelError::Config(format!(
                "{what} {value:?} cannot name a folder or file of the embedded log"
            )));
        }
    }
    Ok(config
        .data_dir
        .join("channels")
        .join(&config.namespace)
        .join(format!("{}.redb", config.broker)))
}

/// In-memory state of one subscription, shared by the writer and the consumers.
struct SubscriptionState {
    closed: AtomicBool,
    max_in_flight: AtomicUsize,
    /// Incremented by each `consume`; only the consumer holding the current value receives.
    consumer_generation: AtomicU64,
    /// Woken on new events, acknowledgements, take-over by a new consumer and deletion.
    changed: Notify,
}

impl SubscriptionState {
    fn new(max_in_flight: usize) -> Self {
        Self {
            closed: AtomicBool::new(false),
            max_in_flight: AtomicUsize::new(max_in_flight),
            consumer_generation: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

type SubscriptionStates = Mutex<HashMap<String, Arc<SubscriptionState>>>;

type Reply<T> = oneshot::Sender<Result<T, ChannelError>>;

enum WriteRequest {
    Publish {
        /// Each event with its encoding (encoded by the caller, off the writer thread).
        events: Vec<(Envelope, Vec<u8>)>,
        reply: Reply<()>,
    },
    Ack {
        subscription: Arc<str>,
        seq: u64,
        reply: Reply<()>,
    },
    EnsureSubscription {
        name: String,
        spec: SubscriptionSpec,
        /// `spec` as stored.
        encoded: Vec<u8>,
        reply: Reply<()>,
    },
    DeleteSubscription {
        name: String,
        reply: Reply<()>,
    },
}

impl WriteRequest {
    fn answer(self, result: Result<(), ChannelError>) {
        let reply = match self {
            WriteRequest::Publish { reply, .. }
            | WriteRequest::Ack { reply, .. }
            | WriteRequest::EnsureSubscription { reply, .. }
            | WriteRequest::DeleteSubscription { reply, .. } => reply,
        };
        // The caller may have given up waiting; nothing to do then.
        let _ = reply.send(result);
    }
}

/// What the channel and its consumers share; dropping the last of them stops the writer and
/// closes the database.
struct Shared {
    database: Arc<Database>,
    path: PathBuf,
    states: Arc<SubscriptionStates>,
    requests: Option<mpsc::Sender<WriteRequest>>,
    writer: Option<JoinHandle<()>>,
    destroyed: AtomicBool,
    commits: Arc<AtomicU64>,
}

impl Shared {
    fn check_open(&self) -> Result<(), ChannelError> {
        if self.destroyed.load(Ordering::SeqCst) {
            return Err(ChannelError::Closed);
        }
        Ok(())
    }

    /// Hands a request to the writer and waits for its answer.
    async fn write<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> WriteRequest,
    ) -> Result<T, ChannelError> {
        self.check_open()?;
        let requests = self.requests.as_ref().ok_or(ChannelError::Closed)?;
        let (reply, answer) = oneshot::channel();
        requests
            .send(make(reply))
            .await
            .map_err(|_| ChannelError::Unavailable("embedded log writer stopped".into()))?;
        answer
            .await
            .map_err(|_| ChannelError::Unavailable("embedded log writer stopped".into()))?
    }

    fn state(&self, name: &str) -> Option<Arc<SubscriptionState>> {
        lock(&self.states).get(name).cloned()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Closing the request queue ends the writer; waiting for it releases its handle on the
        // database, so the same file can be opened again right after the channel is dropped.
        self.requests = None;
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!(path = %self.path.display(), "embedded log writer panicked");
        }
    }
}

/// A durable channel in one redb database file.
pub struct EmbeddedChannel {
    shared: Arc<Shared>,
}

impl EmbeddedChannel {
    /// Opens (creating if needed) the database of the broker named in `config`.
    pub async fn open(config: &ChannelConfig) -> Result<Self, ChannelError> {
        let path = database_path(config)?;
        let opened = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || open_database(&path))
                .await
                .map_err(|e| storage(format!("opening the database failed: {e}")))??
        };
        let OpenedDatabase {
            database,
            index,
            max_in_flight,
            next_seq,
        } = opened;
        let database = Arc::new(database);
        let states: Arc<SubscriptionStates> = Arc::new(Mutex::new(
            max_in_flight
                .into_iter()
                .map(|(name, limit)| (name, Arc::new(SubscriptionState::new(limit))))
                .collect(),
        ));
        let commits = Arc::new(AtomicU64::new(0));
        let (requests, incoming) = mpsc::channel(WRITE_QUEUE_CAPACITY);
        let writer = Writer {
            database: Arc::clone(&database),
            states: Arc::clone(&states),
            index,
            next_seq,
            non_durable_commits: 0,
            commits: Arc::clone(&commits),
        };
        let writer = std::thread::Builder::new()
            .name("rivulet-embedded-writer".into())
            .spawn(move || writer.run(incoming))?;
        Ok(Self {
            shared: Arc::new(Shared {
                database,
                path,
                states,
                requests: Some(requests),
                writer: Some(writer),
                destroyed: AtomicBool::new(false),
                commits,
            }),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Number of transactions committed since the channel was opened.
    pub fn commit_count(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }
}

struct OpenedDatabase {
    database: Database,
    index: RoutingIndex,
    max_in_flight: HashMap<String, usize>,
    next_seq: u64,
}

fn open_database(path: &Path) -> Result<OpenedDatabase, ChannelError> {
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder)?;
    }
    let database = Database::create(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => {
            ChannelError::Unavailable(format!("embedded log {} is already open", path.display()))
        }
        other => storage(format!("cannot open {}: {other}", path.display())),
    })?;
    // Create every table up front so readers never meet a missing one.
    let transaction = database.begin_write().map_err(storage)?;
    let mut index = RoutingIndex::new();
    let mut max_in_flight = HashMap::new();
    let next_seq;
    {
        transaction.open_table(EVENTS).map_err(storage)?;
        transaction.open_table(QUEUE).map_err(storage)?;
        transaction.open_table(REFCOUNTS).map_err(storage)?;
        let subscriptions = transaction.open_table(SUBSCRIPTIONS).map_err(storage)?;
        for entry in subscriptions.iter().map_err(storage)? {
            let (name, encoded) = entry.map_err(storage)?;
            let spec = decode_subscription(name.value(), encoded.value())?;
            index.insert(name.value(), spec.prefilter);
            max_in_flight.insert(name.value().to_owned(), spec.max_in_flight);
        }
        let meta = transaction.open_table(META).map_err(storage)?;
        next_seq = meta
            .get(NEXT_SEQ)
            .map_err(storage)?
            .map_or(0, |v| v.value());
    }
    transaction.commit().map_err(storage)?;
    Ok(OpenedDatabase {
        database,
        index,
        max_in_flight,
        next_seq,
    })
}

/// The single writer: owns the routing index and the sequence counter, so routing and storing
/// happen in the order of commits.
struct Writer {
    database: Arc<Database>,
    states: Arc<SubscriptionStates>,
    index: RoutingIndex,
    next_seq: u64,
    non_durable_commits: u32,
    commits: Arc<AtomicU64>,
}

/// The open tables of one write transaction.
struct Tables<'t> {
    events: Table<'t, u64, &'static [u8]>,
    queue: Table<'t, (&'static str, u64), ()>,
    refcounts: Table<'t, u64, u32>,
    subscriptions: Table<'t, &'static str, &'static [u8]>,
    meta: Table<'t, &'static str, u64>,
}

impl<'t> Tables<'t> {
    fn open(transaction: &'t WriteTransaction) -> Result<Self, redb::Error> {
        Ok(Self {
            events: transaction.open_table(EVENTS)?,
            queue: transaction.open_table(QUEUE)?,
            refcounts: transaction.open_table(REFCOUNTS)?,
            subscriptions: transaction.open_table(SUBSCRIPTIONS)?,
            meta: transaction.open_table(META)?,
        })
    }

    /// One subscription no longer holds event `seq`; deletes the event when none does.
    fn release(&mut self, seq: u64) -> Result<(), redb::Error> {
        let holders = self.refcounts.get(seq)?.map_or(0, |count| count.value());
        if holders > 1 {
            self.refcounts.insert(seq, holders - 1)?;
        } else {
            self.refcounts.remove(seq)?;
            self.events.remove(seq)?;
        }
        Ok(())
    }
}

/// What to do in memory once a transaction committed.
#[derive(Default)]
struct Committed {
    /// Subscriptions that got events.
    fed: HashSet<String>,
    ensured: Vec<(String, usize)>,
    /// Whether a subscription was written (not merely ensured as it was stored).
    subscriptions_written: bool,
    deleted: Vec<String>,
}

impl Writer {
    fn run(mut self, mut incoming: mpsc::Receiver<WriteRequest>) {
        let mut batch = Vec::new();
        while let Some(first) = incoming.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_OPS_PER_COMMIT {
                match incoming.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.commit_batch(&mut batch);
        }
        if self.non_durable_commits > 0 {
            // Make the last acknowledgements durable before the database closes.
            if let Err(error) = self.commit_empty_durably() {
                tracing::warn!(%error, "embedded log: final commit failed");
            }
        }
    }

    fn commit_empty_durably(&mut self) -> Result<(), redb::Error> {
        let mut transaction = self.database.begin_write()?;
        transaction.set_durability(Durability::Immediate)?;
        transaction.commit()?;
        self.non_durable_commits = 0;
        Ok(())
    }

    fn commit_batch(&mut self, batch: &mut Vec<WriteRequest>) {
        let seq_before = self.next_seq;
        let force_durable = self.non_durable_commits >= MAX_NON_DURABLE_COMMITS;
        let outcome = self.apply(batch, force_durable);
        let result = match outcome {
            Ok((committed, durable)) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                if durable {
                    self.non_durable_commits = 0;
                } else {
                    self.non_durable_commits += 1;
                }
                self.after_commit(committed);
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "embedded log: commit failed");
                // Nothing was stored: undo what was changed in memory along the way.
                self.next_seq = seq_before;
                if let Err(reload) = self.reload_index() {
                    tracing::error!(error = %reload, "embedded log: cannot reload subscriptions");
                }
                Err(error.to_string())
            }
        };
        for request in batch.drain(..) {
            request.answer(result.clone().map_err(storage));
        }
    }

    /// Applies the whole batch in one transaction and commits it; says whether the commit
    /// was durable.
    fn apply(
        &mut self,
        batch: &[WriteRequest],
        force_durable: bool,
    ) -> Result<(Committed, bool), redb::Error> {
        let mut transaction = self.database.begin_write()?;
        let mut committed = Committed::default();
        {
            let mut tables = Tables::open(&transaction)?;
            for request in batch {
                self.apply_one(&mut tables, request, &mut committed)?;
            }
            tables.meta.insert(NEXT_SEQ, self.next_seq)?;
        }
        // Stored events and subscription changes are acknowledged to callers as durable, so
        // they need the fsync. A batch that stored neither (acknowledgements, or events no
        // subscription wants) skips it: after a crash acknowledged events are delivered again,
        // which at-least-once delivery allows.
        let durable = force_durable
            || !committed.fed.is_empty()
            || committed.subscriptions_written
            || !committed.deleted.is_empty();
        transaction.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        transaction.commit()?;
        Ok((committed, durable))
    }

    fn apply_one(
        &mut self,
        tables: &mut Tables<'_>,
        request: &WriteRequest,
        committed: &mut Committed,
    ) -> Result<(), redb::Error> {
        match request {
            WriteRequest::Publish { events, .. } => {
                for (envelope, encoded) in events {
                    let targets = self.index.route(envelope);
                    if targets.is_empty() {
                        // Nobody wants it: not stored at all.
                        continue;
                    }
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    tables.events.insert(seq, encoded.as_slice())?;
                    let holders = u32::try_from(targets.len()).unwrap_or(u32::MAX);
                    tables.refcounts.insert(seq, holders)?;
                    for target in targets {
                        tables.queue.insert((target, seq), ())?;
                        if !committed.fed.contains(target) {
                            committed.fed.insert(target.to_owned());
                        }
                    }
                }
            }
            WriteRequest::Ack {
                subscription, seq, ..
            } => {
                if tables.queue.remove((&**subscription, *seq))?.is_some() {
                    tables.release(*seq)?;
                }
            }
            WriteRequest::EnsureSubscription {
                name,
                spec,
                encoded,
                ..
            } => {
                // Every trigger ensures its subscription at every start: when it is stored as
                // asked, only the routing index (which keeps the full prefilter in memory)
                // changes, and the commit needs no fsync.
                let stored = tables
                    .subscriptions
                    .get(name.as_str())?
                    .is_some_and(|stored| stored.value() == encoded.as_slice());
                if !stored {
                    tables
                        .subscriptions
                        .insert(name.as_str(), encoded.as_slice())?;
                    committed.subscriptions_written = true;
                }
                self.index.insert(name, spec.prefilter.clone());
                committed.ensured.push((name.clone(), spec.max_in_flight));
            }
            WriteRequest::DeleteSubscription { name, .. } => {
                tables.subscriptions.remove(name.as_str())?;
                self.index.remove(name);
                let mut held = Vec::new();
                tables.queue.retain_in(
                    (name.as_str(), 0)..=(name.as_str(), u64::MAX),
                    |key, ()| {
                        held.push(key.1);
                        false
                    },
                )?;
                for seq in held {
                    tables.release(seq)?;
                }
                committed.fed.remove(name);
                committed.deleted.push(name.clone());
            }
        }
        Ok(())
    }

    fn after_commit(&self, committed: Committed) {
        let mut states = lock(&self.states);
        for (name, max_in_flight) in committed.ensured {
            let state = states
                .entry(name)
                .or_insert_with(|| Arc::new(SubscriptionState::new(max_in_flight)));
            state.max_in_flight.store(max_in_flight, Ordering::SeqCst);
            state.changed.notify_waiters();
        }
        for name in committed.deleted {
            if let Some(state) = states.remove(&name) {
                state.close();
            }
        }
        for name in committed.fed {
            if let Some(state) = states.get(&name) {
                state.changed.notify_waiters();
            }
        }
    }

    fn reload_index(&mut self) -> Result<(), ChannelError> {
        let transaction = self.database.begin_read().map_err(storage)?;
        let subscriptions = transaction.open_table(SUBSCRIPTIONS).map_err(storage)?;
        let mut index = RoutingIndex::new();
        for entry in subscriptions.iter().map_err(storage)? {
            let (name, encoded) = entry.map_err(storage)?;
            let spec = decode_subscription(name.value(), encoded.value())?;
            index.insert(name.value(), spec.prefilter);
        }
        self.index = index;
        Ok(())
    }
}

#[async_trait]
impl Channel for EmbeddedChannel {
    async fn publish(&self, events: Vec<Envelope>) -> Result<(), ChannelError> {
        if events.is_empty() {
            return self.shared.check_open();
        }
        let events = events
            .into_iter()
            .map(|envelope| {
                let encoded = encode_envelope(&envelope)?;
                Ok((envelope, encoded))
            })
            .collect::<Result<Vec<_>, ChannelError>>()?;
        self.shared
            .write(|reply| WriteRequest::Publish { events, reply })
            .await
    }

    async fn ensure_subscription(
        &self,
        name: &str,
        spec: &SubscriptionSpec,
    ) -> Result<(), ChannelError> {
        let name = name.to_owned();
        let spec = spec.clone();
        let encoded = encode_subscription(&spec)?;
        self.shared
            .write(|reply| WriteRequest::EnsureSubscription {
                name,
                spec,
                encoded,
                reply,
            })
            .await
    }

    async fn consume(&self, name: &str) -> Result<Arc<dyn Subscription>, ChannelError> {
        self.shared.check_open()?;
        let state = self
            .shared
            .state(name)
            .ok_or_else(|| ChannelError::UnknownSubscription(name.to_owned()))?;
        let generation = state.consumer_generation.fetch_add(1, Ordering::SeqCst) + 1;
        // The previous consumer, if waiting, learns it was replaced.
        state.changed.notify_waiters();
        Ok(Arc::new(EmbeddedSubscription {
            shared: Arc::clone(&self.shared),
            name: Arc::from(name),
            state,
            generation,
            reader: Mutex::new(ReaderPosition::default()),
        }))
    }

    async fn delete_subscription(&self, name: &str) -> Result<(), ChannelError> {
        let name = name.to_owned();
        self.shared
            .write(|reply| WriteRequest::DeleteSubscription { name, reply })
            .await
    }

    async fn destroy(&self) -> Result<(), ChannelError> {
        self.shared.destroyed.store(true, Ordering::SeqCst);
        for state in lock(&self.shared.states).values() {
            state.close();
        }
        match std::fs::remove_file(&self.shared.path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    async fn ready(&self) -> Result<(), ChannelError> {
        self.shared.check_open()?;
        match &self.shared.requests {
            Some(requests) if !requests.is_closed() => Ok(()),
            _ => Err(ChannelError::Unavailable(
                "embedded log writer stopped".into(),
            )),
        }
    }
}

/// A consumer's place in its queue; kept in memory only.
#[derive(Default)]
struct ReaderPosition {
    /// The next sequence number to read from.
    next_seq: u64,
    /// Handed out and not acknowledged yet.
    in_flight: BTreeSet<u64>,
}

struct EmbeddedSubscription {
    shared: Arc<Shared>,
    name: Arc<str>,
    state: Arc<SubscriptionState>,
    generation: u64,
    reader: Mutex<ReaderPosition>,
}

impl EmbeddedSubscription {
    fn check_current(&self) -> Result<(), ChannelError> {
        let replaced = self.state.consumer_generation.load(Ordering::SeqCst) != self.generation;
        if replaced || self.state.closed.load(Ordering::SeqCst) {
            return Err(ChannelError::Closed);
        }
        self.shared.check_open()
    }
}

/// Reads up to `limit` events of `subscription` from `from` on.
fn read_queue(
    database: &Database,
    subscription: &str,
    from: u64,
    limit: usize,
) -> Result<Vec<(u64, Envelope)>, ChannelError> {
    let transaction = database.begin_read().map_err(storage)?;
    let queue = transaction.open_table(QUEUE).map_err(storage)?;
    let events = transaction.open_table(EVENTS).map_err(storage)?;
    let mut batch = Vec::new();
    for entry in queue
        .range((subscription, from)..=(subscription, u64::MAX))
        .map_err(storage)?
        .take(limit)
    {
        let (key, _) = entry.map_err(storage)?;
        let seq = key.value().1;
        let encoded = events.get(seq).map_err(storage)?.ok_or_else(|| {
            ChannelError::Corrupt(format!(
                "event {seq} is queued for {subscription:?} but missing"
            ))
        })?;
        batch.push((seq, decode_envelope(seq, encoded.value())?));
    }
    Ok(batch)
}

#[async_trait]
impl Subscription for EmbeddedSubscription {
    async fn receive(&self, max: usize) -> Result<Vec<Received>, ChannelError> {
        loop {
            // Registered before reading so a commit in between is not missed.
            let changed = self.state.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            self.check_current()?;
            if max == 0 {
                return Ok(Vec::new());
            }
            let (from, room) = {
                let reader = lock(&self.reader);
                let room = match self.state.max_in_flight.load(Ordering::SeqCst) {
                    0 => max,
                    limit => max.min(limit.saturating_sub(reader.in_flight.len())),
                };
                (reader.next_seq, room)
            };
            if room > 0 {
                let database = Arc::clone(&self.shared.database);
                let name = Arc::clone(&self.name);
                let batch =
                    tokio::task::spawn_blocking(move || read_queue(&database, &name, from, room))
                        .await
                        .map_err(|e| storage(format!("reading the queue failed: {e}")))??;
                if let Some(&(last, _)) = batch.last() {
                    let mut reader = lock(&self.reader);
                    // A concurrent receive on this consumer moved on meanwhile: read again.
                    if reader.next_seq != from {
                        continue;
                    }
                    reader.next_seq = last + 1;
                    reader.in_flight.extend(batch.iter().map(|(seq, _)| *seq));
                    return Ok(batch
                        .into_iter()
                        .map(|(id, envelope)| Received {
                            id,
                            envelope: Arc::new(envelope),
                        })
                        .collect());
                }
            }
            changed.await;
        }
    }

    async fn ack(&self, id: u64) -> Result<(), ChannelError> {
        if self.state.closed.load(Ordering::SeqCst) {
            return Err(ChannelError::Closed);
        }
        // Only events this consumer handed out; anything else (a repeated ack) changes nothing.
        if !lock(&self.reader).in_flight.contains(&id) {
            return Ok(());
        }
        let subscription = Arc::clone(&self.name);
        self.shared
            .write(|reply| WriteRequest::Ack {
                subscription,
                seq: id,
                reply,
            })
            .await?;
        lock(&self.reader).in_flight.remove(&id);
        self.state.changed.notify_waiters();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableTableMetadata;
    use std::collections::BTreeMap;

    fn config(dir: &Path) -> ChannelConfig {
        ChannelConfig {
            namespace: "ns".into(),
            broker: "b".into(),
            data_dir: dir.to_path_buf(),
            settings: BTreeMap::new(),
        }
    }

    fn event(id: &str, kind: &str) -> Envelope {
        Envelope {
            attributes: vec![("id".into(), id.into()), ("type".into(), kind.into())],
            data: Some(Bytes::from(vec![0, 1, 2, 255])),
        }
    }

    fn count_rows(channel: &EmbeddedChannel) -> (u64, u64, u64) {
        let transaction = channel.shared.database.begin_read().unwrap();
        let events = transaction.open_table(EVENTS).unwrap().len().unwrap();
        let queue = transaction.open_table(QUEUE).unwrap().len().unwrap();
        let refcounts = transaction.open_table(REFCOUNTS).unwrap().len().unwrap();
        (events, queue, refcounts)
    }

    #[test]
    fn envelope_encoding_round_trips() {
        let envelope = Envelope {
            attributes: vec![
                ("specversion".into(), "1.0".into()),
                ("x".into(), "ü".into()),
            ],
            data: Some(Bytes::from_static(&[0, 159, 146, 150])),
        };
        let encoded = encode_envelope(&envelope).unwrap();
        assert_eq!(decode_envelope(1, &encoded).unwrap(), envelope);
        let empty = Envelope {
            attributes: vec![],
            data: Some(Bytes::new()),
        };
        assert_eq!(
            decode_envelope(2, &encode_envelope(&empty).unwrap()).unwrap(),
            empty
        );
        assert!(matches!(
            decode_envelope(3, &[9, 9]),
            Err(ChannelError::Corrupt(_))
        ));
        assert!(matches!(
            decode_envelope(4, &[]),
            Err(ChannelError::Corrupt(_))
        ));
    }

    #[test]
    fn path_components_are_checked() {
        let dir = Path::new("data");
        let mut bad = config(dir);
        bad.broker = "../escape".into();
        assert!(matches!(database_path(&bad), Err(ChannelError::Config(_))));
        bad.broker = String::new();
        assert!(matches!(database_path(&bad), Err(ChannelError::Config(_))));
        assert_eq!(
            database_path(&config(dir)).unwrap(),
            dir.join("channels").join("ns").join("b.redb")
        );
    }

    #[tokio::test]
    async fn unwanted_events_are_not_stored_and_acked_ones_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let channel = EmbeddedChannel::open(&config(dir.path())).await.unwrap();
        channel.publish(vec![event("0", "a")]).await.unwrap();
        assert_eq!(count_rows(&channel), (0, 0, 0));

        let only_a = SubscriptionSpec {
            prefilter: Prefilter {
                filter: None,
                prefix: Vec::new(),
                exact: vec![("type".into(), "a".into())],
            },
            max_in_flight: 0,
            one_per_partition: false,
        };
        channel.ensure_subscription("a", &only_a).await.unwrap();
        channel
            .ensure_subscription("all", &SubscriptionSpec::default())
            .await
            .unwrap();
        channel
            .publish(vec![event("1", "a"), event("2", "b")])
            .await
            .unwrap();
        // One copy of each event; "1" is queued twice, "2" once.
        assert_eq!(count_rows(&channel), (2, 3, 2));

        let a = channel.consume("a").await.unwrap();
        let got = a.receive(10).await.unwrap();
        assert_eq!(got.len(), 1);
        a.ack(got[0].id).await.unwrap();
        assert_eq!(count_rows(&channel), (2, 2, 2), "still held by `all`");

        let all = channel.consume("all").await.unwrap();
        for received in all.receive(10).await.unwrap() {
            all.ack(received.id).await.unwrap();
        }
        assert_eq!(count_rows(&channel), (0, 0, 0));
    }

    #[tokio::test]
    async fn deleting_a_subscription_releases_its_events() {
        let dir = tempfile::tempdir().unwrap();
        let channel = EmbeddedChannel::open(&config(dir.path())).await.unwrap();
        channel
            .ensure_subscription("s", &SubscriptionSpec::default())
            .await
            .unwrap();
        channel
            .publish(vec![event("1", "a"), event("2", "a")])
            .await
            .unwrap();
        assert_eq!(count_rows(&channel), (2, 2, 2));
        channel.delete_subscription("s").await.unwrap();
        assert_eq!(count_rows(&channel), (0, 0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_publishers_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let channel = EmbeddedChannel::open(&config(dir.path())).await.unwrap();
        channel
            .ensure_subscription("s", &SubscriptionSpec::default())
            .await
            .unwrap();
        let before = channel.commit_count();
        let publishes = (0..100).map(|i| channel.publish(vec![event(&i.to_string(), "a")]));
        for result in futures::future::join_all(publishes).await {
            result.unwrap();
        }
        let commits = channel.commit_count() - before;
        assert!(
            commits < 50,
            "100 concurrent publishes took {commits} commits"
        );
        assert_eq!(count_rows(&channel).0, 100);
    }

    #[tokio::test]
    async fn database_file_is_where_documented_and_destroy_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let channel = EmbeddedChannel::open(&config(dir.path())).await.unwrap();
        let expected = dir.path().join("channels/ns/b.redb");
        assert_eq!(channel.path(), expected);
        assert!(expected.is_file());
        channel.destroy().await.unwrap();
        assert!(!expected.exists());
        assert!(matches!(
            channel.publish(vec![event("1", "a")]).await,
            Err(ChannelError::Closed)
        ));
    }

    #[tokio::test]
    async fn second_open_of_the_same_file_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let _first = EmbeddedChannel::open(&config(dir.path())).await.unwrap();
        match EmbeddedChannel::open(&config(dir.path())).await {
            Err(ChannelError::Unavailable(message)) => {
                assert!(message.contains("already open"), "{message}")
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("opened the same database twice"),
        }
    }
}
