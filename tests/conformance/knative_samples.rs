//! Knative's documentation samples for eventing, applied unchanged in standalone mode.
//!
//! `tests/knative_samples/` holds manifests the project wrote from what those samples exercise:
//! brokers of every class Rivulet serves, triggers with every filter dialect and delivery
//! option, every source and sink, policies and event types, and the objects samples keep
//! beside them (Namespaces, Knative Services, Deployments, RBAC). Each file goes through
//! `rivulet apply -f` as a user would run it. Then every object of a kind Rivulet serves is
//! Ready where what it references exists; where a sample cannot work here (it needs a pod to
//! run, or a kind Rivulet does not serve), apply and the object's status say exactly that.

use rivulet_testkit as support;

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use support::{InProcessServer, WAIT, condition};

/// What one sample file must come to.
struct Sample {
    file: &'static str,
    /// (kind, namespace, name) of objects that become Ready.
    ready: &'static [(&'static str, &'static str, &'static str)],
    /// (kind, namespace, name, words of the Ready=False message) of objects that cannot work.
    not_ready: &'static [(&'static str, &'static str, &'static str, &'static str)],
    /// (kind/name as apply names it, words of the reason) of objects apply skips.
    skipped: &'static [(&'static str, &'static str)],
}

const RUNS_A_WORKLOAD: &str = "runs a workload (a pod), which standalone Rivulet does not";
const NOT_SERVED: &str = "not a kind Rivulet serves";

const SAMPLES: &[Sample] = &[
    Sample {
        file: "getting-started.yaml",
        ready: &[("Broker", "default", "example-broker")],
        not_ready: &[(
            "Trigger",
            "default",
            "cloudevents-trigger",
            "Service default/cloudevents-player (serving.knative.dev/v1): it runs a workload",
        )],
        skipped: &[("Service (cloudevents-player)", RUNS_A_WORKLOAD)],
    },
    Sample {
        file: "channel-based-broker.yaml",
        ready: &[("Broker", "samples", "default")],
        not_ready: &[],
        skipped: &[],
    },
    Sample {
        file: "in-memory-channel-broker.yaml",
        ready: &[
            ("Broker", "samples", "imc-broker"),
            ("ConfigMap", "samples", "imc-channel"),
        ],
        not_ready: &[],
        skipped: &[],
    },
    Sample {
        file: "trigger-filters.yaml",
        ready: &[
            ("Broker", "filters", "default"),
            ("Trigger", "filters", "by-type-and-source"),
            ("Trigger", "filters", "by-extension"),
            ("Trigger", "filters", "every-dialect"),
            ("Trigger", "filters", "everything"),
        ],
        not_ready: &[],
        skipped: &[],
    },
    Sample {
        file: "delivery.yaml",
        ready: &[
            ("Broker", "delivery", "default"),
            ("Broker", "delivery", "dead-letters"),
            ("Trigger", "delivery", "with-retries"),
        ],
        not_ready: &[],
        skipped: &[],
    },
    Sample {
        file: "pingsource.yaml",
        ready: &[
            ("Broker", "ping", "default"),
            ("PingSource", "ping", "test-ping-source"),
            ("PingSource", "ping", "binary-ping"),
            ("PingSource", "ping", "older-api"),
        ],
        not_ready: &[],
        skipped: &[],
    },
    Sample {
        file: "pingsource-to-knative-service.yaml",
        ready: &[],
        not_ready: &[(
            "PingSource",
            "default",
            "ping-to-service",
            "Service default/event-display (serving.knative.dev/v1): it runs a workload",
        )],
        skipped: &[("Service (event-display)", RUNS_A_WORKLOAD)],
    },
    Sample {
        file: "apiserversource.yaml",
        ready: &[("Broker", "apiserver", "default")],
        not_ready: &[(
            "ApiServerSource",
            "apiserver",
            "api-server-source",
            "Kubernetes",
        )],
        skipped: &[
            ("Namespace (apiserver)", "namespaces need no object"),
            (
                "ServiceAccount (events-sa)",
                "instead of Kubernetes service accounts",
            ),
            ("Role (event-watcher)", "instead of Kubernetes RBAC"),
            (
                "RoleBinding (k8s-ra-event-watcher)",
                "instead of Kubernetes RBAC",
            ),
        ],
    },
    Sample {
        file: "containersource-and-sinkbinding.yaml",
        ready: &[("Broker", "workloads", "default")],
        not_ready: &[
            ("ContainerSource", "workloads", "heartbeats", "Kubernetes"),
            ("SinkBinding", "workloads", "bind-heartbeat", "Kubernetes"),
        ],
        skipped: &[("Deployment (heartbeats-sender)", RUNS_A_WORKLOAD)],
    },
    Sample {
        file: "eventpolicy-and-eventtype.yaml",
        // As in Knative, an EventPolicy applies only with the authentication-oidc feature
        // enabled, and a broker with a policy that is not ready is not ready either.
        ready: &[
            ("PingSource", "policies", "allowed-ping"),
            ("EventType", "policies", "ping-event"),
        ],
        not_ready: &[
            (
                "EventPolicy",
                "policies",
                "only-ping",
                "feature \"authentication-oidc\" must be enabled",
            ),
            (
                "Broker",
                "policies",
                "default",
                "event policies only-ping are not ready",
            ),
        ],
        skipped: &[],
    },
    Sample {
        file: "trigger-dependency.yaml",
        ready: &[
            ("Broker", "dependency", "default"),
            ("PingSource", "dependency", "test-ping-source"),
            ("Trigger", "dependency", "ping-trigger"),
        ],
        not_ready: &[],
        skipped: &[],
    },
    Sample {
        file: "rabbitmq.yaml",
        ready: &[
            ("Broker", "rabbitmq", "default"),
            ("RabbitmqSource", "rabbitmq", "rabbitmq-source"),
        ],
        not_ready: &[],
        skipped: &[],
    },
    Sample {
        file: "channels-and-flows.yaml",
        ready: &[
            ("InMemoryChannel", "default", "my-channel"),
            ("Channel", "default", "my-generic-channel"),
            ("Subscription", "default", "my-subscription"),
            ("Sequence", "default", "sequence"),
            ("Parallel", "default", "odd-even-parallel"),
        ],
        not_ready: &[(
            "Sequence",
            "default",
            "sequence-of-services",
            "Service default/first (serving.knative.dev/v1): it runs a workload",
        )],
        skipped: &[("JobSink (job-sink)", NOT_SERVED)],
    },
];

fn samples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/knative_samples")
}

async fn apply(server: &InProcessServer, file: &Path) -> Output {
    support::cli(&server.api)
        .args(["apply", "-f"])
        .arg(file)
        .output()
        .await
        .expect("the rivulet binary runs")
}

/// Waits until the object's Ready condition is False with a message naming `words`.
async fn wait_not_ready(api: &str, kind: &str, namespace: &str, name: &str, words: &str) {
    let what = format!("{kind} {namespace}/{name} not Ready, saying {words:?}");
    support::wait_for(&what, WAIT, || async {
        let object = support::get(api, kind, namespace, name).await?;
        let ready = condition(&object, "Ready")?;
        let message = ready["message"].as_str().unwrap_or_default();
        (ready["status"] == "False" && message.contains(words)).then_some(())
    })
    .await;
}

async fn check(server: &InProcessServer, sample: &Sample, dir: &Path) {
    let path = dir.join(sample.file);
    let out = apply(server, &path).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{}: apply failed ({}): {stdout}{stderr}",
        sample.file,
        out.status
    );
    for (object, reason) in sample.skipped {
        let line = stderr
            .lines()
            .find(|line| line.contains(object))
            .unwrap_or_else(|| panic!("{}: no warning names {object}: {stderr}", sample.file));
        assert!(
            line.contains("Rivulet does not serve") && line.contains(reason),
            "{}: the warning for {object} says why ({reason:?}): {line}",
            sample.file
        );
    }
    let warnings = stderr
        .lines()
        .filter(|l| l.contains("does not serve"))
        .count();
    assert_eq!(
        warnings,
        sample.skipped.len(),
        "{}: one warning per skipped object: {stderr}",
        sample.file
    );
    for (kind, namespace, name) in sample.ready {
        let listed = format!("{}/{name}", kind.to_lowercase());
        assert!(
            stdout.contains(&listed),
            "{}: apply names {listed}: {stdout}",
            sample.file
        );
        if *kind != "ConfigMap" {
            support::wait_ready(&server.api, kind, namespace, name).await;
        }
    }
    for (kind, namespace, name, words) in sample.not_ready {
        wait_not_ready(&server.api, kind, namespace, name, words).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knative_samples_apply_unchanged_and_say_what_cannot_work() {
    let server = InProcessServer::start().await;
    let dir = samples_dir();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("the samples folder")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    files.sort();
    let mut listed: Vec<String> = SAMPLES.iter().map(|s| s.file.to_string()).collect();
    listed.sort();
    assert_eq!(files, listed, "every sample file has its expectations here");
    for sample in SAMPLES {
        check(&server, sample, &dir).await;
    }
    server.shutdown().await;
}

/// The Kafka samples need a Kafka server at 127.0.0.1:9092 (as `test.sh` starts).
#[cfg(feature = "kafka-tests")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knative_kafka_samples_apply_unchanged() {
    let server = InProcessServer::start().await;
    let sample = Sample {
        file: "kafka.yaml",
        ready: &[
            ("Broker", "kafka", "default"),
            ("KafkaSource", "kafka", "kafka-source"),
            ("KafkaSink", "kafka", "my-kafka-sink"),
            ("ConfigMap", "knative-eventing", "kafka-broker-config"),
        ],
        not_ready: &[],
        skipped: &[],
    };
    check(&server, &sample, &samples_dir().join("kafka")).await;
    server.shutdown().await;
}

/// A trigger's `get -o yaml` after applying a sample shows Knative's defaults: the filter,
/// the broker label and the subscriber's namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_reads_back_with_knatives_defaults() {
    let server = InProcessServer::start().await;
    let out = apply(&server, &samples_dir().join("getting-started.yaml")).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trigger: Value = support::get(&server.api, "Trigger", "default", "cloudevents-trigger")
        .await
        .expect("the trigger is stored");
    assert_eq!(
        trigger.pointer("/metadata/labels/eventing.knative.dev~1broker"),
        Some(&Value::from("example-broker")),
        "{trigger}"
    );
    assert_eq!(
        trigger.pointer("/spec/subscriber/ref/namespace"),
        Some(&Value::from("default")),
        "{trigger}"
    );
    let broker = support::get(&server.api, "Broker", "default", "example-broker")
        .await
        .expect("the broker is stored");
    assert_eq!(
        broker.pointer("/metadata/annotations/eventing.knative.dev~1broker.class"),
        Some(&Value::from("MTChannelBasedBroker")),
        "{broker}"
    );
    server.shutdown().await;
}
