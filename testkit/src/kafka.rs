//! Helpers for the tests that talk to a real Kafka-protocol server: where it is, fresh
//! names, a raw client to look at topics, and a private tansu server a test may stop.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rivulet_channels::kafka::rdkafka::admin::{
    AdminClient, AdminOptions, NewTopic, TopicReplication,
};
use rivulet_channels::kafka::rdkafka::client::DefaultClientContext;
use rivulet_channels::kafka::rdkafka::config::ClientConfig;
use rivulet_channels::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use rivulet_channels::kafka::rdkafka::message::{Headers, Message};
use rivulet_channels::kafka::rdkafka::{Offset, TopicPartitionList};

/// The shared Kafka server: `RIVULET_KAFKA_BOOTSTRAP`, else `127.0.0.1:9092` (test.sh starts
/// tansu there).
pub fn bootstrap() -> String {
    std::env::var("RIVULET_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// Taken by each test of a file for its whole run, so they run one at a time: tansu 0.6
/// sometimes reports a topic as unknown while others are created and deleted, and
/// librdkafka 2.12 crashes on its answer to a fetch of an unknown topic.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

pub use crate::unique;

/// Client settings for `servers`.
pub fn client(servers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", servers);
    config
}

pub fn admin(servers: &str) -> AdminClient<DefaultClientContext> {
    client(servers).create().expect("an admin client")
}

pub fn admin_options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))
}

pub async fn create_topic(servers: &str, topic: &str, partitions: i32) {
    let results = admin(servers)
        .create_topics(
            [&NewTopic::new(
                topic,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &admin_options(),
        )
        .await
        .expect("create_topics");
    for result in results {
        result.unwrap_or_else(|(topic, code)| panic!("creating topic {topic}: {code}"));
    }
}

/// Partition count of `topic`, or `None` when the server does not know it.
pub fn partitions_of(servers: &str, topic: &str) -> Option<usize> {
    let consumer: BaseConsumer = client(servers).create().expect("a consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .ok()?;
    let described = metadata.topics().iter().find(|t| t.name() == topic)?;
    if described.error().is_some() || described.partitions().is_empty() {
        return None;
    }
    Some(described.partitions().len())
}

/// Whether consumer group `group` has a committed offset in any partition of `topic` (how
/// a group shows it exists; tansu 0.6 cannot describe groups, so listing them fails there).
pub fn group_has_offsets(servers: &str, group: &str, topic: &str) -> bool {
    let consumer: BaseConsumer = client(servers)
        .set("group.id", group)
        .create()
        .expect("a consumer");
    let Some(partitions) = partitions_of(servers, topic) else {
        return false;
    };
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions as i32 {
        list.add_partition(topic, partition);
    }
    consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("the server answers an offset fetch")
        .elements()
        .iter()
        .any(|e| matches!(e.offset(), Offset::Offset(_)))
}

/// One record as read back raw.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub value: Option<Vec<u8>>,
}

impl RawRecord {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Reads every record of `topic` from the beginning until `count` arrived (or panics after
/// 20 s), without a consumer group.
pub fn read_topic(servers: &str, topic: &str, count: usize) -> Vec<RawRecord> {
    let consumer: BaseConsumer = client(servers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let partitions = partitions_of(servers, topic).expect("the topic exists");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions as i32 {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("an assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut records = Vec::new();
    while records.len() < count {
        assert!(
            Instant::now() < deadline,
            "read {} of {count} records of {topic}",
            records.len()
        );
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.expect("a record");
        records.push(RawRecord {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            headers: message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
            value: message.payload().map(<[u8]>::to_vec),
        });
    }
    records
}

/// Settings of a Kafka broker ConfigMap.
pub fn broker_config(servers: &str, partitions: u32) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("bootstrap.servers", servers.to_owned()),
        ("default.topic.partitions", partitions.to_string()),
        ("default.topic.replication.factor", "1".to_owned()),
    ])
}

/// The tansu binary: `RIVULET_TANSU`, else `tansu` on PATH, else `~/.cargo/bin/tansu`.
pub fn tansu_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("RIVULET_TANSU").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("tansu"))
            .find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| {
        let home = std::env::var_os("HOME")?;
        let candidate = Path::new(&home).join(".cargo/bin/tansu");
        candidate.is_file().then_some(candidate)
    })
}

/// A tansu server of a test's own, on its own port and data folder, that the test may kill
/// and start again.
pub struct PrivateTansu {
    binary: PathBuf,
    pub port: u16,
    data: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateTansu {
    /// Starts one, or returns `None` when no tansu binary is installed.
    pub fn start() -> Option<Self> {
        let binary = tansu_binary()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut tansu = Self {
            binary,
            port,
            data: tempfile::tempdir().expect("a temporary folder"),
            child: None,
        };
        tansu.restart();
        Some(tansu)
    }

    pub fn servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the server (again, on the same port and data) and waits for its port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "tansu is already running");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("tansu.log"))
            .expect("a log file");
        let child = Command::new(&self.binary)
            .current_dir(self.data.path())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "sqlite://tansu.db",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tansu starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not open port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: the server is gone at once, as in a crash or a network cut.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateTansu {
    fn drop(&mut self) {
        self.kill();
    }
}
