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
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::routing::RoutingIndex;
use crate::{
    Backend, Channel, ChannelConfig, ChannelError, Envelope, Prefilter, Received, StorageFault,
    Subscription, SubscriptionSpec,
};

inventory::submit! {
    Backend {
        name: "embedded",
        durable: true,
        broker_class: None,
        channel_kind: None,
        open: |config| crate::opened(async move { EmbeddedChannel::open(&config).await }),
    }
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
/// Written and removed again to find out whether the disk takes writes after a fault.
const PROBE: TableDefinition<&str, &[u8]> = TableDefinition::new("probe");
/// How much the probe writes: enough to need fresh pages, little enough to be harmless.
const PROBE_BYTES: usize = 64 * 1024;
/// First and longest wait between recovery attempts after a storage fault.
const RECOVERY_FIRST_WAIT: Duration = Duration::from_millis(250);
const RECOVERY_LONGEST_WAIT: Duration = Duration::from_secs(2);

/// Most requests applied in one transaction.
const MAX_OPS_PER_COMMIT: usize = 1024;
/// Requests waiting for the writer beyond this make callers wait (back-pressure).
const WRITE_QUEUE_CAPACITY: usize = 4096;
/// Acknowledgement-only commits skip the fsync; this bounds how many may follow each other
/// before one is made durable, so that a quiet period without publishes does not leave an
/// ever longer tail of acknowledgements to redeliver after a crash.
const MAX_NON_DURABLE_COMMITS: u32 = 256;

/// Version tag in front of every encoded envelope, so the encoding can evolve. Format 1 is
/// the bare encoding; format 2 (written now) puts a CRC-32 of it first, so that damage
/// inside a record is found (redb checks page checksums only when verifying the file).
const ENVELOPE_FORMAT: u8 = 2;
const ENVELOPE_FORMAT_UNCHECKED: u8 = 1;

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
    let mut encoded = vec![ENVELOPE_FORMAT, 0, 0, 0, 0];
    postcard::to_io(&stored, &mut encoded)
        .map_err(|e| ChannelError::Corrupt(format!("cannot encode event: {e}")))?;
    // Appended only when there is something: records of events without typed extensions
    // (and those written before types were kept) end with the envelope.
    if let Some(types) = envelope.types_header() {
        postcard::to_io(&types, &mut encoded)
            .map_err(|e| ChannelError::Corrupt(format!("cannot encode event: {e}")))?;
    }
    let checksum = crc32fast::hash(&encoded[5..]);
    encoded[1..5].copy_from_slice(&checksum.to_le_bytes());
    Ok(encoded)
}

fn decode_envelope(seq: u64, encoded: &[u8]) -> Result<Envelope, ChannelError> {
    let corrupt = |why: String| ChannelError::Corrupt(format!("stored event {seq}: {why}"));
    let (format, rest) = encoded
        .split_first()
        .ok_or_else(|| corrupt("empty record".into()))?;
    let body = match *format {
        ENVELOPE_FORMAT => {
            let (checksum, body) = rest
                .split_first_chunk::<4>()
                .ok_or_else(|| corrupt("record cut short".into()))?;
            if u32::from_le_bytes(*checksum) != crc32fast::hash(body) {
                return Err(corrupt("checksum mismatch".into()));
            }
            body
        }
        ENVELOPE_FORMAT_UNCHECKED => rest,
        other => return Err(corrupt(format!("unknown format {other}"))),
    };
    let (stored, rest): (StoredEnvelope<'_>, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| corrupt(e.to_string()))?;
    let typed = if rest.is_empty() {
        Vec::new()
    } else {
        let types: &str = postcard::from_bytes(rest).map_err(|e| corrupt(e.to_string()))?;
        Envelope::parse_types_header(types)
    };
    Ok(Envelope {
        typed,
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

/// The storage fault behind a failed write, if it was one: an I/O error (or redb refusing
/// to go on after one) rather than a logic or data error.
fn storage_fault_of(path: &Path, error: &redb::Error) -> Option<StorageFault> {
    let (full, why) = match error {
        redb::Error::Io(io) => (io_error_means_full(io), io.to_string()),
        redb::Error::PreviousIo => (false, "an earlier write failed".to_owned()),
        redb::Error::Backend(other) => (false, other.to_string()),
        _ => return None,
    };
    let what = if full {
        "storage full"
    } else {
        "storage failed"
    };
    Some(StorageFault {
        full,
        message: format!(
            "{what}: cannot write the embedded log {}: {why}; events are refused until writes \
             succeed again (retried in the background)",
            path.display()
        ),
    })
}

/// Free space the embedded log leaves on its filesystem: below it new events are refused
/// (storage full), while acknowledgements and subscription changes go on in it, so that
/// deliveries can always free room. Without it a backlog that fills the disk would stop the
/// acknowledgements too, and nothing would ever free room again.
fn space_reserve(filesystem_bytes: u64) -> u64 {
    (filesystem_bytes / 10).clamp(1 << 20, 256 << 20)
}

/// How often, at most, the log is compacted while its filesystem is under the reserve: the
/// file does not shrink by itself when acknowledged events free pages inside it.
const COMPACTION_INTERVAL: Duration = Duration::from_secs(5);

/// Compaction moves every live page and needs room for it: with more events than this still
/// held it could use up the reserve and fail for lack of space, so it waits until deliveries
/// have drained the backlog this far.
const COMPACTION_MAX_EVENTS: u64 = 1_000;

/// Room set aside beside a log (`{log}.reserve`), given back when a write fails for lack of
/// space, so that the log can always be reopened and its acknowledgements written: the reserve
/// keeps new events out, but the log's own page growth can still fill the disk. A twentieth of
/// the filesystem, 1 to 32 MiB; made again once the filesystem has room for it above the
/// reserve.
fn ballast_bytes(filesystem_bytes: u64) -> u64 {
    (filesystem_bytes / 20).clamp(1 << 20, 32 << 20)
}

/// How often, at most, a missing ballast is made again.
const BALLAST_RETRY: Duration = Duration::from_secs(5);

/// The ballast file of the log at `log`.
fn ballast_path(log: &Path) -> PathBuf {
    log.with_extension("reserve")
}

/// Makes the ballast of the log at `log` when it is missing and the filesystem has room for it
/// above the reserve; whether it is there afterwards.
fn ensure_ballast(log: &Path) -> bool {
    let path = ballast_path(log);
    let Some((available, total)) = free_space(log) else {
        return false;
    };
    let bytes = ballast_bytes(total);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() >= bytes) {
        return true;
    }
    if available < space_reserve(total) + bytes {
        return false;
    }
    let made = std::fs::File::create(&path).and_then(|file| {
        // Allocated, not sparse: the point is that the blocks are taken.
        rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, bytes)
            .map_err(std::io::Error::from)
            .or_else(|_| {
                use std::io::Write as _;
                let zeros = vec![0u8; 1 << 20];
                let mut file = &file;
                for _ in 0..bytes.div_ceil(1 << 20) {
                    file.write_all(&zeros)?;
                }
                Ok::<(), std::io::Error>(())
            })?;
        file.sync_all()
    });
    match made {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "embedded log: cannot set room aside for recovery");
            let _ = std::fs::remove_file(&path);
            false
        }
    }
}

/// Gives the ballast of the log at `log` back to the filesystem; whether there was one.
fn release_ballast(log: &Path) -> bool {
    std::fs::remove_file(ballast_path(log)).is_ok()
}

/// The fault to report when the filesystem of `path` has less free space than the reserve.
fn low_space_fault(path: &Path) -> Option<StorageFault> {
    let (available, total) = free_space(path)?;
    let reserve = space_reserve(total);
    (available < reserve).then(|| StorageFault {
        full: true,
        message: format!(
            "storage full: {} KiB free on the filesystem of the embedded log {}, under the {} KiB \
             kept for deliveries to free room; new events are refused until space is freed",
            available >> 10,
            path.display(),
            reserve >> 10
        ),
    })
}

/// Free and total bytes of the filesystem holding `path`, for an unprivileged writer.
#[cfg(unix)]
fn free_space(path: &Path) -> Option<(u64, u64)> {
    let stat = rustix::fs::statvfs(path.parent()?).ok()?;
    Some((
        stat.f_bavail.saturating_mul(stat.f_frsize),
        stat.f_blocks.saturating_mul(stat.f_frsize),
    ))
}

#[cfg(not(unix))]
fn free_space(_path: &Path) -> Option<(u64, u64)> {
    None
}

/// ENOSPC or EDQUOT.
pub fn io_error_means_full(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
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
        .join(database_file_name(&config.broker)))
}

/// A broker's database file. A broker name may have 253 characters, more than a file name
/// holds with its extension (255 bytes): a long one is cut and made unique by a digest.
/// Names that fit keep the plain name earlier versions used.
fn database_file_name(broker: &str) -> String {
    const KEPT: usize = 200;
    if broker.len() + ".redb".len() <= 255 {
        return format!("{broker}.redb");
    }
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(broker.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let mut end = KEPT;
    while !broker.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}-{hex}.redb", &broker[..end])
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

/// The open database; empty while the writer recovers from a storage fault (redb refuses
/// every operation after a failed write until the file is opened again).
type DatabaseSlot = RwLock<Option<Arc<Database>>>;

/// The storage fault being recovered from, if any.
type FaultCell = Mutex<Option<StorageFault>>;

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
    fn is_publish(&self) -> bool {
        matches!(self, WriteRequest::Publish { .. })
    }

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
    database: Arc<DatabaseSlot>,
    fault: Arc<FaultCell>,
    /// Set while the filesystem's free space is under the reserve: new events are refused,
    /// everything else goes on.
    low_space: Arc<FaultCell>,
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

    fn check_writable(&self) -> Result<(), ChannelError> {
        self.check_open()?;
        match &*lock(&self.fault) {
            Some(fault) => Err(ChannelError::Unavailable(fault.message.clone())),
            None => Ok(()),
        }
    }

    /// The open database, or why there is none right now.
    fn database(&self) -> Result<Arc<Database>, ChannelError> {
        self.check_open()?;
        let database = self
            .database
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match database {
            Some(database) => Ok(database),
            None => Err(self.check_writable().err().unwrap_or_else(|| {
                ChannelError::Unavailable("embedded log is being reopened".into())
            })),
        }
    }

    /// Hands a request to the writer and waits for its answer.
    async fn write<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> WriteRequest,
    ) -> Result<T, ChannelError> {
        // Refused at once while the disk is full, rather than queued behind the recovery.
        self.check_writable()?;
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
        let database = Arc::new(RwLock::new(Some(Arc::new(database))));
        let fault = Arc::new(Mutex::new(None));
        let low_space = Arc::new(Mutex::new(None));
        let states: Arc<SubscriptionStates> = Arc::new(Mutex::new(
            max_in_flight
                .into_iter()
                .map(|(name, limit)| (name, Arc::new(SubscriptionState::new(limit))))
                .collect(),
        ));
        let commits = Arc::new(AtomicU64::new(0));
        let (requests, incoming) = mpsc::channel(WRITE_QUEUE_CAPACITY);
        let writer = Writer {
            path: path.clone(),
            database: Arc::clone(&database),
            fault: Arc::clone(&fault),
            low_space: Arc::clone(&low_space),
            last_compaction: None,
            ballast: (false, None),
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
                fault,
                low_space,
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

/// What start-up and `rivulet store repair` say about a damaged log file.
fn damaged(path: &Path, what: &str) -> ChannelError {
    ChannelError::Corrupt(format!(
        "embedded log {}: {what}; nothing was changed. `rivulet store repair` keeps every \
         intact record and moves the damaged file aside",
        path.display()
    ))
}

/// Opens the log file of a broker, creating it when there is none. A file that exists but is
/// empty is refused: redb would silently start a new log in it, and whatever was queued in
/// the old one would be gone without a word.
fn open_database(path: &Path) -> Result<OpenedDatabase, ChannelError> {
    let database = match std::fs::metadata(path) {
        Ok(metadata) if metadata.len() == 0 => {
            return Err(damaged(
                path,
                "the file is empty (zero bytes) where the log must be",
            ));
        }
        Ok(_) => open_existing(path, false)?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => create_new(path)?,
        Err(error) => return Err(error.into()),
    };
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

/// Opens an existing log file. redb rolls a file that was not closed cleanly back to its last
/// durable commit: a torn last write is a normal crash artefact, logged here. With `verify`,
/// every page's checksum is checked first, so damage is reported rather than met later.
fn open_existing(path: &Path, verify: bool) -> Result<Database, ChannelError> {
    let shown = path.display().to_string();
    let mut builder = Database::builder();
    builder.set_check_integrity_on_open(verify);
    // Called with each step of the repair; said once.
    let said = AtomicBool::new(false);
    builder.set_repair_callback(move |_| {
        if !said.swap(true, Ordering::Relaxed) {
            tracing::warn!(path = %shown, "embedded log was not closed cleanly; rolling back to its last durable commit");
        }
    });
    builder.open(path).map_err(|error| match error {
        redb::DatabaseError::DatabaseAlreadyOpen => {
            ChannelError::Unavailable(format!("embedded log {} is already open", path.display()))
        }
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(why)) => {
            damaged(path, &format!("the file is corrupt ({why})"))
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            damaged(path, &format!("the file is truncated ({io})"))
        }
        other => storage(format!("cannot open {}: {other}", path.display())),
    })
}

/// Creates a new log file under a temporary name and renames it into place once redb has
/// written its header, so an empty file at `path` is never a crash artefact.
fn create_new(path: &Path) -> Result<Database, ChannelError> {
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder)?;
    }
    let temporary = path.with_extension("redb.new");
    match std::fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error.into()),
    }
    let database = Database::create(&temporary)
        .map_err(|e| storage(format!("cannot create {}: {e}", temporary.display())))?;
    let transaction = database.begin_write().map_err(storage)?;
    transaction.commit().map_err(storage)?;
    drop(database);
    std::fs::rename(&temporary, path)?;
    if let Some(folder) = path.parent() {
        std::fs::File::open(folder)?.sync_all()?;
    }
    open_existing(path, false)
}

/// Checks a log file without changing it (the server must not be running): every page's
/// checksum and every stored record. Says what is wrong, naming the file.
pub fn check_file(path: &Path) -> Result<(), ChannelError> {
    let path = path.to_path_buf();
    // redb may panic on a file damaged outside it; that is a finding, not a crash.
    let outcome = std::panic::catch_unwind(move || -> Result<(), ChannelError> {
        if std::fs::metadata(&path)?.len() == 0 {
            return Err(damaged(
                &path,
                "the file is empty (zero bytes) where the log must be",
            ));
        }
        let database = open_existing(&path, true)?;
        let transaction = database.begin_read().map_err(storage)?;
        let unreadable = |e: redb::StorageError| damaged(&path, &format!("unreadable ({e})"));
        // A log that never got its tables (created, then stopped at once) is an empty log.
        match transaction.open_table(SUBSCRIPTIONS) {
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(other) => return Err(storage(other)),
            Ok(subscriptions) => {
                for entry in subscriptions.iter().map_err(unreadable)? {
                    let (name, encoded) = entry.map_err(unreadable)?;
                    decode_subscription(name.value(), encoded.value())
                        .map_err(|e| damaged(&path, &e.to_string()))?;
                }
            }
        }
        match transaction.open_table(EVENTS) {
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(other) => return Err(storage(other)),
            Ok(events) => {
                for entry in events.iter().map_err(unreadable)? {
                    let (seq, encoded) = entry.map_err(unreadable)?;
                    decode_envelope(seq.value(), encoded.value())
                        .map_err(|e| damaged(&path, &e.to_string()))?;
                }
            }
        }
        Ok(())
    });
    outcome.unwrap_or_else(|_| {
        Err(ChannelError::Corrupt(
            "the embedded log is damaged: reading it failed".into(),
        ))
    })
}

/// What [`salvage_file`] kept.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Salvaged {
    /// Events still queued for at least one subscription.
    pub events: u64,
    pub subscriptions: u64,
    /// Records that could not be read back and were left behind.
    pub lost_records: u64,
}

/// Builds a new log at `into` from whatever can be read from the damaged log at `from`:
/// every subscription and every queued event that decodes. `from` is not changed.
pub fn salvage_file(from: &Path, into: &Path) -> Result<Salvaged, ChannelError> {
    let (from, into) = (from.to_path_buf(), into.to_path_buf());
    std::panic::catch_unwind(move || salvage_inner(&from, &into)).unwrap_or_else(|_| {
        Err(ChannelError::Corrupt(
            "the damaged log could not be read at all".into(),
        ))
    })
}

fn salvage_inner(from: &Path, into: &Path) -> Result<Salvaged, ChannelError> {
    let mut report = Salvaged::default();
    if std::fs::metadata(from)?.len() == 0 {
        // An empty file holds nothing to salvage: the new log is empty.
        let database = create_salvage_target(into)?;
        let transaction = database.begin_write().map_err(storage)?;
        Tables::open(&transaction).map_err(storage)?;
        transaction.commit().map_err(storage)?;
        return Ok(report);
    }
    let source = match open_existing(from, true) {
        Ok(database) => database,
        // Past what redb repairs itself: read what the pages still give.
        Err(ChannelError::Corrupt(_)) => open_existing(from, false)?,
        Err(other) => return Err(other),
    };
    let read = source.begin_read().map_err(storage)?;
    let mut subscriptions = Vec::new();
    if let Ok(table) = read.open_table(SUBSCRIPTIONS)
        && let Ok(entries) = table.iter()
    {
        for entry in entries {
            match entry {
                Ok((name, encoded))
                    if decode_subscription(name.value(), encoded.value()).is_ok() =>
                {
                    subscriptions.push((name.value().to_owned(), encoded.value().to_vec()));
                }
                _ => report.lost_records += 1,
            }
        }
    }
    let mut events = std::collections::BTreeMap::new();
    if let Ok(table) = read.open_table(EVENTS)
        && let Ok(entries) = table.iter()
    {
        for entry in entries {
            match entry {
                Ok((seq, encoded)) if decode_envelope(seq.value(), encoded.value()).is_ok() => {
                    events.insert(seq.value(), encoded.value().to_vec());
                }
                _ => report.lost_records += 1,
            }
        }
    }
    let known: HashSet<&str> = subscriptions.iter().map(|(n, _)| n.as_str()).collect();
    let mut queued: Vec<(String, u64)> = Vec::new();
    if let Ok(table) = read.open_table(QUEUE)
        && let Ok(entries) = table.iter()
    {
        for entry in entries {
            match entry {
                Ok((key, _)) => {
                    let (name, seq) = key.value();
                    if known.contains(name) && events.contains_key(&seq) {
                        queued.push((name.to_owned(), seq));
                    } else {
                        report.lost_records += 1;
                    }
                }
                Err(_) => report.lost_records += 1,
            }
        }
    }
    let next_seq = read
        .open_table(META)
        .ok()
        .and_then(|meta| meta.get(NEXT_SEQ).ok().flatten().map(|v| v.value()))
        .unwrap_or(0)
        .max(events.keys().next_back().map_or(0, |last| last + 1));
    drop(read);
    drop(source);

    let target = create_salvage_target(into)?;
    let mut transaction = target.begin_write().map_err(storage)?;
    transaction
        .set_durability(Durability::Immediate)
        .map_err(storage)?;
    {
        let mut tables = Tables::open(&transaction).map_err(storage)?;
        for (name, encoded) in &subscriptions {
            tables
                .subscriptions
                .insert(name.as_str(), encoded.as_slice())
                .map_err(storage)?;
        }
        let mut holders: HashMap<u64, u32> = HashMap::new();
        for (name, seq) in &queued {
            tables
                .queue
                .insert((name.as_str(), *seq), ())
                .map_err(storage)?;
            *holders.entry(*seq).or_default() += 1;
        }
        for (seq, count) in &holders {
            tables
                .events
                .insert(*seq, events[seq].as_slice())
                .map_err(storage)?;
            tables.refcounts.insert(*seq, *count).map_err(storage)?;
        }
        tables.meta.insert(NEXT_SEQ, next_seq).map_err(storage)?;
        report.events = holders.len() as u64;
        report.subscriptions = subscriptions.len() as u64;
    }
    transaction.commit().map_err(storage)?;
    Ok(report)
}

/// A new, empty log file at `into`.
fn create_salvage_target(into: &Path) -> Result<Database, ChannelError> {
    match std::fs::remove_file(into) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error.into()),
    }
    Database::create(into).map_err(|e| storage(format!("cannot create {}: {e}", into.display())))
}

/// The single writer: owns the routing index and the sequence counter, so routing and storing
/// happen in the order of commits.
struct Writer {
    path: PathBuf,
    database: Arc<DatabaseSlot>,
    fault: Arc<FaultCell>,
    low_space: Arc<FaultCell>,
    last_compaction: Option<std::time::Instant>,
    /// Whether the ballast is in place, and when making it was last tried.
    ballast: (bool, Option<std::time::Instant>),
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
        self.keep_ballast();
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
            if lock(&self.fault).is_some() && !self.recover(&mut incoming) {
                return;
            }
        }
        if self.non_durable_commits > 0 {
            // Make the last acknowledgements durable before the database closes.
            if let Err(error) = self.commit_empty_durably() {
                tracing::warn!(%error, "embedded log: final commit failed");
            }
        }
    }

    /// The open database; the writer only runs while there is one.
    fn database(&self) -> Result<Arc<Database>, redb::Error> {
        self.database
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(redb::Error::PreviousIo)
    }

    /// After a failed write redb refuses everything until the file is opened again. Closes
    /// it, then reopens it and writes a probe, with growing waits, until that works; requests
    /// arriving meanwhile are refused. Returns false when the channel was dropped meanwhile.
    fn recover(&mut self, incoming: &mut mpsc::Receiver<WriteRequest>) -> bool {
        // Readers hold the database only while reading; the reopen waits for them to let go.
        self.database
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let full = lock(&self.fault).as_ref().is_some_and(|fault| fault.full);
        if full && release_ballast(&self.path) {
            self.ballast = (false, Some(std::time::Instant::now()));
            tracing::warn!(path = %self.path.display(), "embedded log: the disk is full; gave back the room kept beside the log so that deliveries can go on");
        }
        let mut wait = RECOVERY_FIRST_WAIT;
        loop {
            loop {
                match incoming.try_recv() {
                    Ok(request) => {
                        let refusal = lock(&self.fault)
                            .as_ref()
                            .map(|fault| fault.message.clone())
                            .unwrap_or_default();
                        request.answer(Err(ChannelError::Unavailable(refusal)));
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return false,
                }
            }
            std::thread::sleep(wait);
            match self.reopen() {
                Ok(()) => {
                    *lock(&self.fault) = None;
                    tracing::warn!(path = %self.path.display(), "embedded log takes writes again");
                    // Consumers that failed to read meanwhile look again.
                    for state in lock(&self.states).values() {
                        state.changed.notify_waiters();
                    }
                    return true;
                }
                Err(error) => {
                    tracing::debug!(path = %self.path.display(), %error, "embedded log still cannot write");
                    wait = (wait * 2).min(RECOVERY_LONGEST_WAIT);
                }
            }
        }
    }

    /// Opens the file again (redb rolls back to the last durable commit) and proves with a
    /// durable probe write that it takes writes again.
    fn reopen(&mut self) -> Result<(), ChannelError> {
        let opened = open_database(&self.path)?;
        let database = opened.database;
        let probe = || -> Result<(), redb::Error> {
            let mut transaction = database.begin_write()?;
            transaction.set_durability(Durability::Immediate)?;
            transaction
                .open_table(PROBE)?
                .insert("probe", vec![0u8; PROBE_BYTES].as_slice())?;
            transaction.commit()?;
            let mut transaction = database.begin_write()?;
            transaction.set_durability(Durability::Immediate)?;
            transaction.open_table(PROBE)?.remove("probe")?;
            transaction.commit()?;
            Ok(())
        };
        probe().map_err(storage)?;
        self.index = opened.index;
        self.next_seq = opened.next_seq;
        self.non_durable_commits = 0;
        *self
            .database
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(database));
        Ok(())
    }

    /// How many events the log holds, if it can be read.
    fn stored_events(&self) -> Option<u64> {
        let transaction = self.database().ok()?.begin_read().ok()?;
        let events = transaction.open_table(EVENTS).ok()?;
        redb::ReadableTableMetadata::len(&events).ok()
    }

    fn commit_empty_durably(&mut self) -> Result<(), redb::Error> {
        let mut transaction = self.database()?.begin_write()?;
        transaction.set_durability(Durability::Immediate)?;
        transaction.commit()?;
        self.non_durable_commits = 0;
        Ok(())
    }

    fn commit_batch(&mut self, batch: &mut Vec<WriteRequest>) {
        if batch.iter().any(WriteRequest::is_publish)
            && let Some(fault) = self.check_space()
        {
            let (publishes, rest): (Vec<_>, Vec<_>) =
                batch.drain(..).partition(WriteRequest::is_publish);
            for request in publishes {
                request.answer(Err(ChannelError::Unavailable(fault.message.clone())));
            }
            *batch = rest;
        }
        if !batch.is_empty() {
            self.commit_requests(batch);
        }
        if lock(&self.low_space).is_some() {
            self.compact_to_free_space();
        } else {
            self.keep_ballast();
        }
    }

    /// Makes the ballast again when it is missing, at most every [`BALLAST_RETRY`].
    fn keep_ballast(&mut self) {
        match self.ballast {
            (true, _) => {}
            (false, Some(tried)) if tried.elapsed() < BALLAST_RETRY => {}
            (false, _) => {
                self.ballast = (ensure_ballast(&self.path), Some(std::time::Instant::now()))
            }
        }
    }

    /// Whether the filesystem is under the reserve now; records (and logs) a change.
    fn check_space(&mut self) -> Option<StorageFault> {
        let fault = low_space_fault(&self.path);
        let mut cell = lock(&self.low_space);
        match (cell.is_some(), &fault) {
            (false, Some(fault)) => {
                tracing::error!(path = %self.path.display(), fault = %fault.message, "embedded log: free space under the reserve; refusing new events while deliveries go on");
            }
            (true, None) => {
                tracing::warn!(path = %self.path.display(), "embedded log: free space above the reserve again; taking events");
            }
            _ => {}
        }
        cell.clone_from(&fault);
        fault
    }

    /// Gives the room acknowledged events freed inside the file back to the filesystem, so
    /// that free space can return above the reserve. Needs the database to itself: readers
    /// hold it only while reading, and get "being reopened" meanwhile (they retry).
    fn compact_to_free_space(&mut self) {
        if self
            .last_compaction
            .is_some_and(|at| at.elapsed() < COMPACTION_INTERVAL)
        {
            return;
        }
        self.last_compaction = Some(std::time::Instant::now());
        if self
            .stored_events()
            .is_none_or(|events| events > COMPACTION_MAX_EVENTS)
        {
            return;
        }
        let Some(mut shared) = self
            .database
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let mut attempts = 0;
        let database = loop {
            match Arc::try_unwrap(shared) {
                Ok(mut database) => {
                    match database.compact() {
                        Ok(_) => {
                            tracing::info!(path = %self.path.display(), "embedded log compacted to free space")
                        }
                        Err(error) => {
                            tracing::warn!(path = %self.path.display(), %error, "embedded log: compaction failed")
                        }
                    }
                    break Arc::new(database);
                }
                // A reader still holds it: wait a little, else leave it for the next time.
                Err(still_shared) if attempts < 100 => {
                    attempts += 1;
                    shared = still_shared;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(still_shared) => break still_shared,
            }
        };
        *self
            .database
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(database);
        self.check_space();
        for state in lock(&self.states).values() {
            state.changed.notify_waiters();
        }
    }

    fn commit_requests(&mut self, batch: &mut Vec<WriteRequest>) {
        let seq_before = self.next_seq;
        // Pages an acknowledgement frees are reused only after a durable commit: while space
        // is short, every commit is durable so that the file stops growing.
        let force_durable =
            self.non_durable_commits >= MAX_NON_DURABLE_COMMITS || lock(&self.low_space).is_some();
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
                // Nothing was stored: undo what was changed in memory along the way.
                self.next_seq = seq_before;
                if let Some(fault) = storage_fault_of(&self.path, &error) {
                    // Reopening reloads the subscriptions; the database refuses reads now.
                    tracing::error!(path = %self.path.display(), %error, full = fault.full, "embedded log: write failed; refusing events until the disk takes writes again");
                    let refusal = fault.message.clone();
                    *lock(&self.fault) = Some(fault);
                    Err(refusal)
                } else {
                    tracing::error!(%error, "embedded log: commit failed");
                    if let Err(reload) = self.reload_index() {
                        tracing::error!(error = %reload, "embedded log: cannot reload subscriptions");
                    }
                    Err(format!("embedded log: {error}"))
                }
            }
        };
        for request in batch.drain(..) {
            request.answer(result.clone().map_err(ChannelError::Unavailable));
        }
    }

    /// Applies the whole batch in one transaction and commits it; says whether the commit
    /// was durable.
    fn apply(
        &mut self,
        batch: &[WriteRequest],
        force_durable: bool,
    ) -> Result<(Committed, bool), redb::Error> {
        let mut transaction = self.database()?.begin_write()?;
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
        let transaction = self
            .database()
            .map_err(storage)?
            .begin_read()
            .map_err(storage)?;
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

    async fn backlog(&self, name: &str) -> Result<Option<u64>, ChannelError> {
        if self.shared.state(name).is_none() {
            return Err(ChannelError::UnknownSubscription(name.to_owned()));
        }
        // The queue holds exactly what the subscription has not acknowledged.
        let database = self.shared.database()?;
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || {
            let transaction = database.begin_read().map_err(storage)?;
            let queue = transaction.open_table(QUEUE).map_err(storage)?;
            let mut count = 0u64;
            for entry in queue
                .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))
                .map_err(storage)?
            {
                entry.map_err(storage)?;
                count += 1;
            }
            Ok(Some(count))
        })
        .await
        .map_err(|e| storage(format!("counting the queue failed: {e}")))?
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
        release_ballast(&self.shared.path);
        match std::fs::remove_file(&self.shared.path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    fn storage_fault(&self) -> Option<StorageFault> {
        if let Some(fault) = lock(&self.shared.fault).clone() {
            return Some(fault);
        }
        // Space freed from outside (a file removed, the volume grown) counts at once.
        let mut low_space = lock(&self.shared.low_space);
        if low_space.is_some() && low_space_fault(&self.shared.path).is_none() {
            *low_space = None;
        }
        low_space.clone()
    }

    async fn ready(&self) -> Result<(), ChannelError> {
        self.shared.check_writable()?;
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
                let database = self.shared.database()?;
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
                            redelivered: false,
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
        let written = self
            .shared
            .write(|reply| WriteRequest::Ack {
                subscription,
                seq: id,
                reply,
            })
            .await;
        // The event was dealt with either way; an acknowledgement that was not written (disk
        // full) frees its slot too, and the event is delivered again after a restart.
        lock(&self.reader).in_flight.remove(&id);
        written?;
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
            typed: Vec::new(),
        }
    }

    /// A channel in `dir` with one subscription, `s`, to every event.
    async fn subscribed_channel(dir: &Path) -> EmbeddedChannel {
        let channel = EmbeddedChannel::open(&config(dir)).await.unwrap();
        channel
            .ensure_subscription("s", &SubscriptionSpec::default())
            .await
            .unwrap();
        channel
    }

    fn count_rows(channel: &EmbeddedChannel) -> (u64, u64, u64) {
        let transaction = channel.shared.database().unwrap().begin_read().unwrap();
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
            typed: Vec::new(),
        };
        let encoded = encode_envelope(&envelope).unwrap();
        assert_eq!(decode_envelope(1, &encoded).unwrap(), envelope);
        let empty = Envelope {
            attributes: vec![],
            data: Some(Bytes::new()),
            typed: Vec::new(),
        };
        assert_eq!(
            decode_envelope(2, &encode_envelope(&empty).unwrap()).unwrap(),
            empty
        );
        let mut flipped = encode_envelope(&envelope).unwrap();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(
            decode_envelope(5, &flipped),
            Err(ChannelError::Corrupt(_))
        ));
        // Records written before checksums still read.
        let mut unchecked = vec![ENVELOPE_FORMAT_UNCHECKED];
        unchecked.extend_from_slice(&encode_envelope(&envelope).unwrap()[5..]);
        assert_eq!(decode_envelope(6, &unchecked).unwrap(), envelope);
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

    /// The room kept beside a log for recovery is taken (allocated, not sparse) when the log
    /// opens, given back on request, and goes with the log when it is destroyed.
    #[tokio::test]
    async fn a_log_keeps_room_beside_it_for_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let channel = EmbeddedChannel::open(&config(dir.path())).await.unwrap();
        let log = database_path(&config(dir.path())).unwrap();
        let ballast = ballast_path(&log);
        let (_, total) = free_space(&log).unwrap();
        let expected = ballast_bytes(total);
        // The writer thread makes it as it starts.
        let mut waited = 0;
        while !std::fs::metadata(&ballast).is_ok_and(|m| m.len() == expected) && waited < 100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += 1;
        }
        assert!(
            std::fs::metadata(&ballast).is_ok_and(|m| m.len() == expected),
            "{} holds {expected} bytes",
            ballast.display()
        );
        {
            use std::os::unix::fs::MetadataExt as _;
            let blocks = std::fs::metadata(&ballast).unwrap().blocks();
            assert!(
                blocks * 512 >= expected,
                "allocated, not sparse: {blocks} blocks"
            );
        }
        assert!(release_ballast(&log));
        assert!(!ballast.exists());
        assert!(!release_ballast(&log), "nothing left to give back");
        assert!(ensure_ballast(&log), "made again while there is room");
        channel.destroy().await.unwrap();
        assert!(!ballast.exists() && !log.exists());
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
        let channel = subscribed_channel(dir.path()).await;
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
        let channel = subscribed_channel(dir.path()).await;
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
    async fn an_empty_log_file_is_refused_not_started_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("channels/ns/b.redb");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"").unwrap();
        match EmbeddedChannel::open(&config(dir.path())).await {
            Err(ChannelError::Corrupt(message)) => {
                assert!(message.contains("zero bytes"), "{message}");
                assert!(message.contains("b.redb"), "{message}");
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("an empty log file was taken as a new log"),
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "left alone");
        assert!(matches!(check_file(&path), Err(ChannelError::Corrupt(_))));
    }

    #[tokio::test]
    async fn salvage_keeps_queued_events_and_subscriptions() {
        let dir = tempfile::tempdir().unwrap();
        let path = {
            let channel = subscribed_channel(dir.path()).await;
            channel
                .publish(vec![event("1", "a"), event("2", "a"), event("3", "a")])
                .await
                .unwrap();
            let consumer = channel.consume("s").await.unwrap();
            let first = consumer.receive(1).await.unwrap();
            consumer.ack(first[0].id).await.unwrap();
            channel.path().to_path_buf()
        };
        check_file(&path).unwrap();
        let rebuilt = dir.path().join("rebuilt.redb");
        let kept = salvage_file(&path, &rebuilt).unwrap();
        assert_eq!(
            kept,
            Salvaged {
                events: 2,
                subscriptions: 1,
                lost_records: 0
            }
        );
        std::fs::rename(&rebuilt, &path).unwrap();
        let channel = EmbeddedChannel::open(&config(dir.path())).await.unwrap();
        let consumer = channel.consume("s").await.unwrap();
        let ids: Vec<_> = consumer
            .receive(10)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.envelope.attribute("id").unwrap().to_owned())
            .collect();
        assert_eq!(ids, ["2", "3"]);
    }

    #[tokio::test]
    async fn garbage_in_the_middle_is_found_and_the_rest_salvaged() {
        let dir = tempfile::tempdir().unwrap();
        let path = {
            let channel = subscribed_channel(dir.path()).await;
            for n in 0..40 {
                let mut envelope = event(&n.to_string(), "a");
                envelope.data = Some(Bytes::from(format!("MARK{n:02}{}", "x".repeat(3000))));
                channel.publish(vec![envelope]).await.unwrap();
            }
            channel.path().to_path_buf()
        };
        // Garble every copy of one event's data: a page in use, in the middle of the file.
        let mut bytes = std::fs::read(&path).unwrap();
        let marker = b"MARK20";
        let mut garbled = 0;
        for start in 0..bytes.len() - marker.len() {
            if &bytes[start..start + marker.len()] == marker {
                bytes[start..start + 64].fill(0x5A);
                garbled += 1;
            }
        }
        assert!(garbled > 0);
        std::fs::write(&path, &bytes).unwrap();

        match check_file(&path) {
            Err(ChannelError::Corrupt(message)) => assert!(message.contains("b.redb"), "{message}"),
            other => panic!("garbage was not found: {other:?}"),
        }
        let rebuilt = dir.path().join("rebuilt.redb");
        let kept = salvage_file(&path, &rebuilt).unwrap();
        assert!(kept.events >= 30, "{kept:?}");
        check_file(&rebuilt).unwrap();
        // What was kept is intact: no garbled data passed for an event.
        std::fs::rename(&rebuilt, &path).unwrap();
        let channel = EmbeddedChannel::open(&config(dir.path())).await.unwrap();
        let consumer = channel.consume("s").await.unwrap();
        let got = consumer.receive(100).await.unwrap();
        assert_eq!(got.len() as u64, kept.events);
        for received in got {
            let id: usize = received.envelope.attribute("id").unwrap().parse().unwrap();
            let data = received.envelope.data.as_ref().unwrap();
            assert!(
                data.starts_with(format!("MARK{id:02}").as_bytes()),
                "event {id} garbled"
            );
        }
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
