//! The `rivulet` command line, run as a real binary against a real server.

use rivulet_testkit as support;

use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{InProcessServer, Recorder};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::process::Command;

fn rivulet() -> Command {
    let mut command = Command::new(support::binary());
    command
        .env_remove("RIVULET_SERVER")
        .env_remove("RIVULET_INGRESS")
        .env_remove("RIVULET_TOKEN")
        .env("RIVULET_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs the CLI against `server`'s resource API with the test token, and ingress for `send`.
async fn run(server: &support::InProcessServer, args: &[&str]) -> Output {
    support::cli(&server.api)
        .args(args)
        .env("RIVULET_INGRESS", &server.base)
        .output()
        .await
        .expect("the rivulet binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts success and returns stdout.
fn ok(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}): stdout {} stderr {}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

const BROKER_YAML: &str = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: cli-broker\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cli-config\ndata:\n  key: value\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_from_a_file_then_get_in_each_format_then_delete() {
    let server = InProcessServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("resources.yaml");
    std::fs::write(&file, BROKER_YAML).unwrap();
    let out = ok(
        &run(&server, &["apply", "-f", file.to_str().unwrap()]).await,
        "apply -f",
    );
    assert!(out.contains("broker/cli-broker created"), "{out}");
    assert!(out.contains("configmap/cli-config created"), "{out}");
    let out = ok(
        &run(&server, &["apply", "-f", file.to_str().unwrap()]).await,
        "apply -f again",
    );
    assert!(out.contains("broker/cli-broker configured"), "{out}");
    support::wait_ready(&server.api, "Broker", "default", "cli-broker").await;

    let table = ok(&run(&server, &["get", "brokers"]).await, "get brokers");
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.contains("NAME") && header.contains("READY") && header.contains("URL"),
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.starts_with("cli-broker "))
        .unwrap_or_else(|| panic!("a row for cli-broker in {table}"));
    assert!(
        row.contains("True") && row.contains(&format!("{}/default/cli-broker", server.base)),
        "{row}"
    );

    // -A: every namespace, with a NAMESPACE column; -o wide: the class and age too.
    support::apply(&server.api, &support::broker("team-a", "other")).await;
    let all = ok(&run(&server, &["get", "brokers", "-A"]).await, "get -A");
    assert!(
        all.lines()
            .next()
            .unwrap_or_default()
            .starts_with("NAMESPACE"),
        "{all}"
    );
    for (namespace, name) in [("default", "cli-broker"), ("team-a", "other")] {
        assert!(
            all.lines()
                .any(|l| l.starts_with(namespace) && l.contains(&format!(" {name} "))),
            "{namespace}/{name} in {all}"
        );
    }
    let wide = ok(
        &run(&server, &["get", "brokers", "-o", "wide"]).await,
        "get -o wide",
    );
    let header = wide.lines().next().unwrap_or_default();
    assert!(header.contains("CLASS") && header.contains("AGE"), "{wide}");
    assert!(wide.contains("MTChannelBasedBroker"), "{wide}");
    // Core kinds too: the ConfigMap in default and one in another namespace.
    let elsewhere = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "elsewhere", "namespace": "team-a"}, "data": {"k": "v"}
    });
    support::apply(&server.api, &elsewhere).await;
    let configmaps = ok(
        &run(&server, &["get", "configmaps", "-A"]).await,
        "get configmaps -A",
    );
    for (namespace, name) in [("default", "cli-config"), ("team-a", "elsewhere")] {
        assert!(
            configmaps
                .lines()
                .any(|l| l.starts_with(namespace) && l.contains(&format!(" {name} "))),
            "{namespace}/{name} in {configmaps}"
        );
    }

    let json = ok(
        &run(&server, &["get", "broker", "cli-broker", "-o", "json"]).await,
        "get -o json",
    );
    let object: Value = serde_json::from_str(&json).expect("-o json prints JSON");
    assert_eq!(object["metadata"]["name"], "cli-broker");
    assert_eq!(object["kind"], "Broker");

    let yaml = ok(
        &run(&server, &["get", "configmap", "cli-config", "-o", "yaml"]).await,
        "get -o yaml",
    );
    let object: Value = serde_saphyr::from_str(&yaml).expect("-o yaml prints YAML");
    assert_eq!(object["data"]["key"], "value");

    let out = ok(
        &run(&server, &["delete", "broker", "cli-broker"]).await,
        "delete",
    );
    assert!(out.contains("broker/cli-broker deleted"), "{out}");
    assert!(
        support::get(&server.api, "Broker", "default", "cli-broker")
            .await
            .is_none()
    );
    let again = run(&server, &["delete", "broker", "cli-broker"]).await;
    assert!(!again.status.success(), "deleting a missing broker fails");
    assert!(
        text(&again.stderr).contains("not found"),
        "{}",
        text(&again.stderr)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_reads_stdin_and_reports_invalid_objects() {
    let server = InProcessServer::start().await;
    let mut child = rivulet()
        .args(["apply", "-f", "-"])
        .env("RIVULET_SERVER", &server.api)
        .env("RIVULET_TOKEN", support::TEST_TOKEN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(BROKER_YAML.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let stdout = ok(&out, "apply -f -");
    assert!(stdout.contains("broker/cli-broker created"), "{stdout}");
    assert!(
        support::get(&server.api, "ConfigMap", "default", "cli-config")
            .await
            .is_some()
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = support::write_file(
        dir.path(),
        "bad.yaml",
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: bad\nspec:\n  broker: default\n  subscriber:\n    uri: http://127.0.0.1:9/\n  filters:\n    - exact:\n        Type: x\n",
    );
    let out = run(&server, &["apply", "-f", bad.to_str().unwrap()]).await;
    assert!(!out.status.success(), "an invalid object makes apply fail");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("trigger/bad") && stderr.contains("spec.filters[0].exact[Type]"),
        "{stderr}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_posts_binary_and_structured_events_with_extensions() {
    let server = InProcessServer::start().await;
    let recorder = Recorder::start().await;
    support::apply_trigger_ready(&server.api, "default", "all", "default", &recorder.url).await;

    let out = run(
        &server,
        &[
            "send",
            "--type",
            "cli.binary",
            "--id",
            "cli-1",
            "--subject",
            "café",
            "--data",
            "{\"a\":1}",
            "--ext",
            "region=eu",
            "--ext",
            "tier=gold",
        ],
    )
    .await;
    let stdout = ok(&out, "send");
    assert!(
        stdout.contains("cli-1") && stdout.contains("202"),
        "{stdout}"
    );
    let got = recorder.wait_for_id("cli-1").await;
    assert_eq!(got.event.ty, "cli.binary");
    assert_eq!(got.event.subject.as_deref(), Some("café"));
    assert_eq!(got.event.attribute("region").as_deref(), Some("eu"));
    assert_eq!(got.event.attribute("tier").as_deref(), Some("gold"));
    assert_eq!(got.event.data.as_deref(), Some(&b"{\"a\":1}"[..]));

    let out = run(
        &server,
        &[
            "send",
            "--structured",
            "--type",
            "cli.structured",
            "--id",
            "cli-2",
            "--source",
            "/cli/test",
            "--data",
            "hello",
            "--content-type",
            "text/plain",
            "--ext",
            "region=us",
        ],
    )
    .await;
    ok(&out, "send --structured");
    let got = recorder.wait_for_id("cli-2").await;
    assert_eq!(got.event.source, "/cli/test");
    assert_eq!(got.event.attribute("region").as_deref(), Some("us"));
    assert_eq!(got.event.data.as_deref(), Some(&b"hello"[..]));

    // An event the broker refuses is reported with the reason.
    let out = run(&server, &["send", "--type", "x", "--ext", "Bad=1"]).await;
    assert!(!out.status.success(), "an invalid extension name fails");
    assert!(text(&out.stderr).contains("Bad"), "{}", text(&out.stderr));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_eval_exits_0_on_match_and_1_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let trigger = support::write_file(
        dir.path(),
        "trigger.yaml",
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: f\nspec:\n  broker: default\n  subscriber:\n    uri: http://127.0.0.1:9/\n  filters:\n    - prefix:\n        type: com.example.\n    - cesql: \"source LIKE '/shop/%'\"\n",
    );
    let matching = support::write_file(
        dir.path(),
        "match.json",
        r#"{"specversion":"1.0","id":"1","source":"/shop/eu","type":"com.example.order"}"#,
    );
    let other = support::write_file(
        dir.path(),
        "other.json",
        r#"{"specversion":"1.0","id":"2","source":"/warehouse","type":"com.example.order"}"#,
    );

    let filter_eval = |event: &std::path::Path| {
        let mut command = rivulet();
        command
            .args(["filter", "eval", "--trigger"])
            .arg(&trigger)
            .arg("--event")
            .arg(event);
        command
    };
    let out = filter_eval(&matching).output().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "match");
    let out = filter_eval(&other).output().await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "no match");

    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, r#"{"specversion":"1.0","id":"3"}"#).unwrap();
    let out = filter_eval(&broken).output().await.unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("broken.json"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn display_prints_the_events_it_receives() {
    let port = support::free_port();
    let mut display = rivulet()
        .args(["display", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    // Wait until it listens: OPTIONS or GET answer something once it is up.
    support::wait_for("rivulet display to listen", support::WAIT, || {
        let request = support::http().get(&url).send();
        async move { request.await.ok().map(|_| ()) }
    })
    .await;
    let out = rivulet()
        .args([
            "send",
            "--url",
            &url,
            "--type",
            "display.check",
            "--id",
            "shown-1",
            "--data",
            "{\"greeting\":\"hello display\"}",
        ])
        .output()
        .await
        .expect("the rivulet binary runs");
    ok(&out, "send --url to display");

    let mut lines = tokio::io::BufReader::new(display.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    let found = tokio::time::timeout(support::WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push_str(&line);
            seen.push('\n');
            if seen.contains("display.check") && seen.contains("hello display") {
                return true;
            }
        }
        false
    })
    .await;
    let _ = display.kill().await;
    assert_eq!(
        found,
        Ok(true),
        "display printed the type and the data; it printed:\n{seen}"
    );
    assert!(seen.contains("shown-1"), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_has_help_naming_its_flags() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--help"],
            &[
                "serve", "apply", "get", "delete", "send", "filter", "display",
            ],
        ),
        (
            &["serve", "--help"],
            &[
                "--config",
                "--listen",
                "--api-listen",
                "--api-auth",
                "--data-dir",
                "--body-limit",
                "--shutdown-grace",
            ],
        ),
        (&["apply", "--help"], &["--filename", "--server", "--token"]),
        (
            &["get", "--help"],
            &[
                "--namespace",
                "--all-namespaces",
                "--output",
                "wide",
                "--server",
                // Every kind is listed, not a sample.
                "PingSource",
                "SinkBinding",
                "EventPolicy",
                "ConfigMap",
                "Trigger",
            ],
        ),
        (&["delete", "--help"], &["--namespace", "--server"]),
        (
            &["send", "--help"],
            &[
                "--type",
                "--source",
                "--id",
                "--data",
                "--ext",
                "--structured",
                "--broker",
                "--url",
                "--ingress",
            ],
        ),
        (&["filter", "eval", "--help"], &["--trigger", "--event"]),
        (&["cesql", "eval", "--help"], &["--event", "-o, --output"]),
        (&["crds", "--help"], &["-o, --output", "--to"]),
        (&["display", "--help"], &["--listen"]),
        (&["serve", "--help"], &["--no-eventtype-autocreate"]),
        (
            &["eventtypes", "list", "--help"],
            &["--broker", "--type", "--type-prefix", "--source", "--query"],
        ),
        (
            &["eventtypes", "show", "--help"],
            &["--namespace", "--output"],
        ),
        (
            &["eventtypes", "scaffold", "--help"],
            &["--lang", "--dir", "rust", "typescript", "python"],
        ),
    ];
    for (args, flags) in cases {
        let out = rivulet().args(*args).output().await.unwrap();
        let help = text(&out.stdout);
        assert!(
            out.status.success(),
            "rivulet {args:?} exits 0: {}",
            text(&out.stderr)
        );
        for flag in *flags {
            assert!(
                help.contains(flag),
                "rivulet {args:?} mentions {flag}:\n{help}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_say_when_the_server_is_not_running() {
    let nobody = format!("http://127.0.0.1:{}", support::free_port());
    for args in [
        &["get", "brokers"][..],
        &["apply", "-f", "-"][..],
        &["delete", "broker", "x"][..],
        &["send", "--type", "t"][..],
    ] {
        let mut command = rivulet();
        command
            .args(args)
            .env("RIVULET_SERVER", &nobody)
            .env("RIVULET_INGRESS", &nobody);
        if args.contains(&"-") {
            command.stdin(Stdio::piped());
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(BROKER_YAML.as_bytes()).await.unwrap();
        }
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .expect("the command gives up in time")
            .unwrap();
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} fails");
        assert!(
            stderr.contains(&nobody),
            "{args:?} names the server: {stderr}"
        );
        assert!(
            !stderr.contains("panicked"),
            "{args:?} does not panic: {stderr}"
        );
        assert!(
            stderr.contains("rivulet serve"),
            "{args:?} suggests starting the server: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_the_kubernetes_store_says_when_no_cluster_is_configured() {
    let data_dir = tempfile::tempdir().unwrap();
    let out = rivulet()
        .args(["serve", "--store", "kubernetes", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("KUBECONFIG", data_dir.path().join("no-such-kubeconfig"))
        .env("HOME", data_dir.path())
        .output()
        .await
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "serve fails: {stderr}");
    assert!(stderr.contains("--store kubernetes"), "{stderr}");
    assert!(stderr.contains("kubeconfig"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `cesql eval` without `--event` evaluates a constant expression, and says what is missing
/// when the expression reads attributes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cesql_eval_without_an_event_says_what_is_missing() {
    let constant = rivulet()
        .args(["cesql", "eval", "1 + 2 = 3"])
        .output()
        .await
        .unwrap();
    assert_eq!(ok(&constant, "a constant expression").trim(), "true");
    let reads = rivulet()
        .args(["cesql", "eval", "type = 'x' AND subject = 'y'"])
        .output()
        .await
        .unwrap();
    assert!(!reads.status.success(), "no event to evaluate against");
    let message = text(&reads.stderr);
    assert!(
        message.contains("type") && message.contains("--event"),
        "{message}"
    );
}

/// A Knative sample holds a Namespace, a Deployment and a Service beside its eventing objects:
/// `apply` takes the kinds Rivulet serves, names each one it skips and why, and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_skips_kinds_it_does_not_serve_and_says_so() {
    let server = InProcessServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = support::write_file(
        dir.path(),
        "sample.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: sample\n---\n\
         apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: sample\n  namespace: sample\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: hello-display\n  namespace: sample\nspec:\n  replicas: 1\n---\n\
         apiVersion: v1\nkind: Service\nmetadata:\n  name: hello-display\n  namespace: sample\nspec:\n  ports: [{port: 80}]\n---\n\
         apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: hello\n  namespace: sample\nspec:\n  broker: sample\n  subscriber:\n    uri: http://127.0.0.1:9/\n",
    );
    let out = run(&server, &["apply", "-f", file.to_str().unwrap()]).await;
    let stdout = ok(&out, "apply of a sample with unserved kinds");
    assert!(stdout.contains("broker/sample created"), "{stdout}");
    assert!(stdout.contains("trigger/hello created"), "{stdout}");
    let stderr = text(&out.stderr);
    for skipped in [
        "v1 Namespace (sample)",
        "apps/v1 Deployment (hello-display)",
        "v1 Service (hello-display)",
    ] {
        assert!(stderr.contains(skipped), "{skipped} in {stderr}");
    }
    assert!(stderr.contains("runs a workload"), "{stderr}");

    // Only unserved kinds: nothing was refused, so apply succeeds and says nothing was applied.
    let only = support::write_file(
        dir.path(),
        "only.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n",
    );
    let out = run(&server, &["apply", "-f", only.to_str().unwrap()]).await;
    ok(&out, "apply of unserved kinds only");
    assert!(
        text(&out.stderr).contains("nothing applied: none of the objects"),
        "{}",
        text(&out.stderr)
    );
    server.shutdown().await;
}
