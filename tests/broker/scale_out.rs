//! Scale-out on the real backends: a `rivulet controller` and three data-plane replicas
//! (`rivulet serve --store kubernetes`), each its own process, against one API server and
//! one RabbitMQ, NATS JetStream or Kafka backend.
//!
//! Two triggers with different filters. First a steady load, posted round-robin to the
//! three ingresses: every event reaches each matching trigger exactly once, and each replica
//! delivers a share. Then load again while one replica is killed with SIGKILL and started
//! again: every event that got a 202 reaches each matching trigger at least once; the
//! duplicates that the kill causes are counted and printed, and Rivulet's own count of
//! redeliveries is read from the replicas' metrics.

use rivulet_testkit as support;
use rivulet_testkit::nats::nats_url;
use rivulet_testkit::rabbitmq as rabbitmq_support;

#[cfg(feature = "kafka-tests")]
use rivulet_testkit::kafka as kafka_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use support::kube_server::KubeServer;
use support::{
    ChildServer, Reply, Subscriber, always, api_request, free_port, metric_sum, wait_for,
};

const NS: &str = "team";
/// The broker's name on every backend (the backends' own names carry a unique suffix).
const REPLICAS: usize = 3;
/// Events posted in the steady phase, and at least as many in each stretch of the fault phase.
const STEADY_EVENTS: usize = 300;
const FAULT_STRETCH: usize = 300;
/// How long events that got a 202 may take to arrive once the load stops (NATS redelivers a
/// killed consumer's events after its ackWait, 10 s by default; Kafka after a rebalance).
const DELIVERY_DEADLINE: Duration = Duration::from_secs(60);

/// The three event types the load cycles through, and which trigger each should reach.
const TYPES: [&str; 3] = ["order.created", "order.shipped", "audit.logged"];
/// Trigger `created` takes `order.created`; trigger `orders` takes every type under `order.`.
fn matches(trigger: &str, event_type: &str) -> bool {
    match trigger {
        "created" => event_type == "order.created",
        "orders" => event_type.starts_with("order."),
        other => panic!("no trigger {other}"),
    }
}
const TRIGGERS: [&str; 2] = ["created", "orders"];

/// The type of the event with this id (`{phase}-{n}`).
fn type_of(id: &str) -> &'static str {
    let n: usize = id
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("an id of the load: {id}"));
    TYPES[n % TYPES.len()]
}

fn base64_encode(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The broker and the object its `spec.config` names.
struct Backend {
    broker: Value,
    config: Value,
    /// Whether the backend tells a redelivery apart (RabbitMQ, NATS; not Kafka).
    reports_redeliveries: bool,
}

fn broker(name: &str, class: &str, config_kind: &str) -> Value {
    json!({
        "apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"),
            "generation": 1,
            "annotations": {"eventing.knative.dev/broker.class": class}},
        "spec": {"config": {"apiVersion": "v1", "kind": config_kind, "name": format!("{name}-config")}}
    })
}

fn rabbitmq(name: &str) -> Backend {
    Backend {
        broker: broker(name, "RabbitMQBroker", "Secret"),
        config: json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("{name}-config"), "namespace": NS},
            "data": {"uri": base64_encode(&rabbitmq_support::rabbitmq_uri())}}),
        reports_redeliveries: true,
    }
}

fn nats(name: &str) -> Backend {
    Backend {
        broker: broker(name, "NatsJetStreamBroker", "ConfigMap"),
        config: json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("{name}-config"), "namespace": NS},
            "data": {"url": nats_url(), "storage": "memory"}}),
        reports_redeliveries: true,
    }
}

#[cfg(feature = "kafka-tests")]
fn kafka(name: &str) -> Backend {
    // More partitions than replicas, so that each member of the group gets some.
    let data = kafka_support::broker_config(&kafka_support::bootstrap(), 6);
    Backend {
        broker: broker(name, "Kafka", "ConfigMap"),
        config: json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("{name}-config"), "namespace": NS},
            "data": data}),
        reports_redeliveries: false,
    }
}

fn trigger(name: &str, broker: &str, filter: Value, subscriber: &str) -> Value {
    let mut spec = json!({"broker": broker, "subscriber": {"uri": subscriber}});
    spec.as_object_mut()
        .unwrap()
        .extend(filter.as_object().unwrap().clone());
    json!({
        "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{broker}-{name}"),
            "generation": 1,
            "annotations": {"rivulet.dev/parallelism": "4"}},
        "spec": spec,
        // What the controller resolves and the data plane reads.
        "status": {"observedGeneration": 1, "subscriberUri": subscriber}
    })
}

/// A `rivulet controller` child process, killed when dropped.
struct ControllerProcess {
    child: Child,
    health: String,
}

impl ControllerProcess {
    fn spawn(kubeconfig: &Path, data_dir: &Path) -> Self {
        let port = free_port();
        let child =
            support::rivulet_command(["controller", "--listen", &format!("127.0.0.1:{port}")])
                .arg("--data-dir")
                .arg(data_dir)
                .args(["--advertised-url", "http://broker-ingress.test"])
                .env("KUBECONFIG", kubeconfig)
                .spawn()
                .expect("the rivulet binary starts");
        Self {
            child,
            health: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the controller wrote a Ready=True status for the trigger: its subscription
/// (queue, consumer, consumer group) exists in the backend from then on.
async fn wait_trigger_provisioned(kube: &KubeServer, name: &str) {
    let path = format!("/apis/eventing.knative.dev/v1/namespaces/{NS}/triggers/{name}/status");
    wait_for(
        &format!("the controller to make trigger {name} Ready"),
        Duration::from_secs(60),
        || {
            let ready = kube.writes().iter().any(|write| {
                write.path == path
                    && write.body["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            async move { ready.then_some(()) }
        },
    )
    .await;
}

async fn metrics_of(replica: &ChildServer) -> String {
    match api_request(reqwest::Method::GET, format!("{}/metrics", replica.api))
        .send()
        .await
    {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Deliveries a replica made (successful ones), from its metrics.
async fn delivered_by(replica: &ChildServer) -> f64 {
    metric_sum(
        &metrics_of(replica).await,
        "rivulet_trigger_deliveries_total",
        &[("outcome", "delivered")],
    )
}

/// Posts one event; its status code, or `None` when the replica could not be reached.
async fn post(client: &reqwest::Client, url: &str, id: &str) -> Option<u16> {
    client
        .post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/scale-out")
        .header("ce-type", type_of(id))
        .body(format!("{{\"id\":\"{id}\"}}"))
        .header("content-type", "application/json")
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()
        .map(|response| response.status().as_u16())
}

/// Events that got a 202, and what else the ingresses answered.
#[derive(Default)]
struct Load {
    accepted: Mutex<BTreeSet<String>>,
    /// Per replica index, the 202s it gave.
    accepted_by: Mutex<BTreeMap<usize, usize>>,
    refused: Mutex<BTreeMap<String, usize>>,
    stop: AtomicBool,
}

impl Load {
    fn accepted(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    fn accepted_by(&self, replica: usize) -> usize {
        self.accepted_by
            .lock()
            .unwrap()
            .get(&replica)
            .copied()
            .unwrap_or(0)
    }
}

/// Posts events `{phase}-0`, `{phase}-1`, ... round-robin to `urls` (read anew for each
/// event, so a restarted replica gets its share) until `load.stop`, from `senders` tasks.
fn start_load(
    phase: &'static str,
    urls: Arc<Mutex<Vec<String>>>,
    load: Arc<Load>,
    senders: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..senders)
        .map(|sender| {
            let (urls, load) = (urls.clone(), load.clone());
            tokio::spawn(async move {
                let client = support::http();
                let mut n = sender;
                while !load.stop.load(Ordering::Relaxed) {
                    let id = format!("{phase}-{n}");
                    let replica = n % REPLICAS;
                    let url = urls.lock().unwrap()[replica].clone();
                    match post(&client, &url, &id).await {
                        Some(202) => {
                            load.accepted.lock().unwrap().insert(id);
                            *load.accepted_by.lock().unwrap().entry(replica).or_default() += 1;
                        }
                        other => {
                            let answer = match other {
                                Some(code) => code.to_string(),
                                None => "unreachable".into(),
                            };
                            *load.refused.lock().unwrap().entry(answer).or_default() += 1;
                            // A replica being killed or started: do not spin on it.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    n += senders;
                }
            })
        })
        .collect()
}

async fn wait_accepted(load: &Load, count: usize, what: &str) {
    wait_for(what, Duration::from_secs(60), || {
        let n = load.accepted();
        async move { (n >= count).then_some(()) }
    })
    .await;
}

/// Per trigger, how many requests each event id of `phase` got.
fn deliveries(
    subscriber: &Subscriber,
    phase: &str,
) -> BTreeMap<&'static str, BTreeMap<String, usize>> {
    let prefix = format!("{phase}-");
    TRIGGERS
        .iter()
        .map(|trigger| {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for request in subscriber.requests_at(&format!("/{trigger}")) {
                let id = request.event().id.clone();
                if id.starts_with(&prefix) {
                    *counts.entry(id).or_default() += 1;
                }
            }
            (*trigger, counts)
        })
        .collect()
}

/// Waits until every accepted id of `phase` reached each trigger that matches it; fails
/// naming the missing ones after [`DELIVERY_DEADLINE`]. Also checks no trigger got an event
/// its filter rejects. Returns the number of duplicate deliveries per trigger.
async fn check_delivered(
    subscriber: &Subscriber,
    phase: &str,
    accepted: &BTreeSet<String>,
) -> BTreeMap<&'static str, usize> {
    let missing = |counts: &BTreeMap<&'static str, BTreeMap<String, usize>>| {
        let mut missing = Vec::new();
        for trigger in TRIGGERS {
            for id in accepted {
                if matches(trigger, type_of(id)) && !counts[trigger].contains_key(id) {
                    missing.push(format!("{trigger}:{id}"));
                }
            }
        }
        missing
    };
    let deadline = tokio::time::Instant::now() + DELIVERY_DEADLINE;
    let counts = loop {
        let counts = deliveries(subscriber, phase);
        let missing = missing(&counts);
        if missing.is_empty() {
            break counts;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{phase}: {} deliveries of the {} accepted events never arrived, e.g. {:?}",
            missing.len(),
            accepted.len(),
            &missing[..missing.len().min(10)]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for trigger in TRIGGERS {
        let wrong: Vec<&String> = counts[trigger]
            .keys()
            .filter(|id| !matches(trigger, type_of(id)))
            .collect();
        assert!(
            wrong.is_empty(),
            "{phase}: trigger {trigger} got events its filter rejects: {wrong:?}"
        );
    }
    TRIGGERS
        .iter()
        .map(|trigger| {
            let extra = counts[trigger].values().map(|n| n - 1).sum::<usize>();
            (*trigger, extra)
        })
        .collect()
}

/// Rivulet's count of redeliveries, summed over the replicas still running.
async fn redelivered(replicas: &[ChildServer]) -> f64 {
    let mut total = 0.0;
    for replica in replicas {
        total += metric_sum(
            &metrics_of(replica).await,
            "rivulet_trigger_redelivered_events_total",
            &[],
        );
    }
    total
}

async fn scale_out(backend: Backend) {
    let broker_name = backend.broker["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    // A short pause per answer keeps deliveries in flight when a replica is killed.
    let subscriber =
        Subscriber::with_script(always(Reply::ok().delay(Duration::from_millis(5)))).await;
    let triggers = [
        trigger(
            "created",
            &broker_name,
            json!({"filter": {"attributes": {"type": "order.created"}}}),
            &subscriber.url_at("created"),
        ),
        trigger(
            "orders",
            &broker_name,
            json!({"filters": [{"prefix": {"type": "order."}}]}),
            &subscriber.url_at("orders"),
        ),
    ];
    let mut objects = vec![backend.config.clone(), backend.broker.clone()];
    objects.extend(triggers.iter().cloned());
    let kube = KubeServer::start(objects).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.kubeconfig(dir.path());

    let controller_dir = dir.path().join("controller");
    let controller = ControllerProcess::spawn(&kubeconfig, &controller_dir);
    for name in TRIGGERS {
        wait_trigger_provisioned(&kube, name).await;
    }

    let replica_dir = |i: usize| dir.path().join(format!("replica-{i}"));
    let env = [("KUBECONFIG", kubeconfig.as_path())];
    let serve_args = ["--store", "kubernetes"];
    let mut replicas = Vec::new();
    for i in 0..REPLICAS {
        replicas.push(ChildServer::spawn_with_env(&replica_dir(i), &serve_args, &env).await);
    }
    let ingress = |replica: &ChildServer| format!("{}/{NS}/{broker_name}", replica.base);
    // Each ingress takes events once its replica has reconciled the broker.
    let client = support::http();
    for (i, replica) in replicas.iter().enumerate() {
        let url = &ingress(replica);
        let client = &client;
        wait_for(
            &format!("replica {i} to accept events"),
            Duration::from_secs(30),
            || async move {
                (post(client, url, &format!("warmup-{}", i * 3 + 2)).await == Some(202))
                    .then_some(())
            },
        )
        .await;
    }
    let urls = Arc::new(Mutex::new(replicas.iter().map(ingress).collect::<Vec<_>>()));

    // Warm-up until every replica delivers: each has its share of the work (on Kafka, the
    // consumer groups have settled on three members), so nothing moves under the steady load.
    let warmup = Arc::new(Load::default());
    let senders = start_load("warmup", urls.clone(), warmup.clone(), REPLICAS);
    wait_for(
        "every replica to deliver warm-up events",
        Duration::from_secs(60),
        || {
            let replicas = &replicas;
            async move {
                for replica in replicas {
                    if delivered_by(replica).await == 0.0 {
                        return None;
                    }
                }
                Some(())
            }
        },
    )
    .await;
    warmup.stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.await.unwrap();
    }
    let accepted = warmup.accepted.lock().unwrap().clone();
    check_delivered(&subscriber, "warmup", &accepted).await;
    // The subscriber records a request before its answer reaches the replica: wait until
    // the replicas counted every warm-up delivery.
    let warmup_deliveries = subscriber.count();
    let before_steady = wait_for(
        "the replicas to count the warm-up deliveries",
        Duration::from_secs(10),
        || {
            let replicas = &replicas;
            async move {
                let mut shares = Vec::new();
                for replica in replicas {
                    shares.push(delivered_by(replica).await as usize);
                }
                (shares.iter().sum::<usize>() >= warmup_deliveries).then_some(shares)
            }
        },
    )
    .await;

    // Steady load: exactly once, shared by all three.
    let steady = Arc::new(Load::default());
    let senders = start_load("steady", urls.clone(), steady.clone(), REPLICAS * 2);
    wait_accepted(&steady, STEADY_EVENTS, "the steady load to be accepted").await;
    steady.stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.await.unwrap();
    }
    let refused = steady.refused.lock().unwrap().clone();
    assert!(refused.is_empty(), "steady load refused: {refused:?}");
    let accepted = steady.accepted.lock().unwrap().clone();
    let duplicates = check_delivered(&subscriber, "steady", &accepted).await;
    eprintln!(
        "steady: {} events accepted, duplicate deliveries per trigger {duplicates:?}",
        accepted.len()
    );
    assert!(
        duplicates.values().all(|n| *n == 0),
        "under steady load each event reaches each matching trigger once: {duplicates:?}"
    );
    let expected: usize = accepted
        .iter()
        .map(|id| TRIGGERS.iter().filter(|t| matches(t, type_of(id))).count())
        .sum();
    let shares = wait_for(
        "the replicas to count their deliveries",
        Duration::from_secs(10),
        || {
            let (replicas, before_steady) = (&replicas, &before_steady);
            async move {
                let mut shares = Vec::new();
                for (replica, before) in replicas.iter().zip(before_steady) {
                    shares.push(delivered_by(replica).await as usize - before);
                }
                (shares.iter().sum::<usize>() >= expected).then_some(shares)
            }
        },
    )
    .await;
    eprintln!("steady: deliveries per replica {shares:?} (of {expected})");
    assert_eq!(
        shares.iter().sum::<usize>(),
        expected,
        "each delivery made once"
    );
    assert!(
        shares.iter().all(|n| *n > 0),
        "every replica took a share of the work: {shares:?}"
    );
    let health = support::http()
        .get(format!("{}/healthz", controller.health))
        .send()
        .await
        .map(|r| r.status().as_u16());
    assert_eq!(health.ok(), Some(200), "the controller stayed up");

    // Load while one replica is killed with SIGKILL and started again.
    let faulty = Arc::new(Load::default());
    let senders = start_load("fault", urls.clone(), faulty.clone(), REPLICAS * 2);
    wait_accepted(&faulty, FAULT_STRETCH, "load before the kill").await;
    const VICTIM: usize = 1;
    replicas[VICTIM].kill9();
    let at_kill = faulty.accepted();
    eprintln!("fault: replica {VICTIM} killed after {at_kill} accepted events");
    wait_accepted(&faulty, at_kill + FAULT_STRETCH, "load with a replica down").await;
    replicas[VICTIM] = ChildServer::spawn_with_env(&replica_dir(VICTIM), &serve_args, &env).await;
    urls.lock().unwrap()[VICTIM] = ingress(&replicas[VICTIM]);
    let by_victim = faulty.accepted_by(VICTIM);
    let at_restart = faulty.accepted();
    wait_accepted(
        &faulty,
        at_restart + FAULT_STRETCH,
        "load after the restart",
    )
    .await;
    faulty.stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.await.unwrap();
    }
    assert!(
        faulty.accepted_by(VICTIM) > by_victim,
        "the restarted replica takes events again"
    );
    let accepted = faulty.accepted.lock().unwrap().clone();
    let duplicates = check_delivered(&subscriber, "fault", &accepted).await;
    let refused = faulty.refused.lock().unwrap().clone();
    let redeliveries = redelivered(&replicas).await;
    eprintln!(
        "fault: {} events accepted, answers other than 202 {refused:?}, duplicate deliveries \
         per trigger {duplicates:?}, redeliveries counted by the replicas still running \
         {redeliveries}",
        accepted.len()
    );
    let unexpected: Vec<&String> = refused
        .keys()
        .filter(|answer| !matches!(answer.as_str(), "unreachable" | "503"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "answers other than 202, 503 or no answer from a killed replica: {refused:?}"
    );
    if backend.reports_redeliveries {
        let duplicates: usize = duplicates.values().sum();
        assert!(
            redeliveries >= duplicates as f64,
            "every duplicate the subscriber saw was a redelivery the replicas counted \
             ({redeliveries} counted, {duplicates} duplicates)"
        );
    }

    // Deleted through the controller, which removes what it made in the backend.
    for (plural, object) in triggers
        .iter()
        .map(|t| ("triggers", t))
        .chain([("brokers", &backend.broker)])
    {
        let mut deleting = object.clone();
        let finalizer = format!("{plural}.eventing.knative.dev");
        deleting["metadata"]["deletionTimestamp"] = json!("2026-11-26T12:00:00Z");
        deleting["metadata"]["finalizers"] = json!([finalizer]);
        kube.update(deleting);
        let name = object["metadata"]["name"].as_str().unwrap();
        wait_finalizer_released(&kube, plural, name).await;
    }
    drop(controller);
}

/// Waits until the controller took its finalizer off the object: its cleanup is done.
async fn wait_finalizer_released(kube: &KubeServer, plural: &str, name: &str) {
    let path = format!("/apis/eventing.knative.dev/v1/namespaces/{NS}/{plural}/{name}");
    wait_for(
        &format!("the controller to finish deleting {plural}/{name}"),
        Duration::from_secs(30),
        || {
            let released = kube.writes().iter().any(|write| {
                write.path == path && write.body["metadata"]["finalizers"] == json!([])
            });
            async move { released.then_some(()) }
        },
    )
    .await;
}

/// One backend at a time: each runs four processes beside a steady load.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_three_replicas_share_work_and_survive_a_kill() {
    let _turn = one_at_a_time().await;
    let broker = rabbitmq_support::unique("scale");
    scale_out(rabbitmq(&broker)).await;
    // Deleting the broker removed its exchange.
    rabbitmq_support::assert_exchange_removed(NS, &broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_three_replicas_share_work_and_survive_a_kill() {
    let _turn = one_at_a_time().await;
    let broker = rabbitmq_support::unique("scale");
    scale_out(nats(&broker)).await;
    let client = rivulet_channels::nats::async_nats::connect(nats_url())
        .await
        .expect("NATS is reachable");
    let stream = rivulet_channels::nats::stream_name(NS, &broker).expect("a stream name");
    assert!(
        rivulet_channels::nats::async_nats::jetstream::new(client)
            .get_stream(&stream)
            .await
            .is_err(),
        "deleting the broker removed its stream {stream}"
    );
}

#[cfg(feature = "kafka-tests")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_three_replicas_share_work_and_survive_a_kill() {
    let _turn = one_at_a_time().await;
    let broker = kafka_support::unique("scale");
    scale_out(kafka(&broker)).await;
    let topic = format!("knative-broker-{NS}-{broker}");
    assert_eq!(
        kafka_support::partitions_of(&kafka_support::bootstrap(), &topic),
        None,
        "deleting the broker removed its topic"
    );
}
