//! The YAML examples of the documentation: every fenced ```yaml block of every page of `docs/`
//! is applied, page by page and in order, to an in-process server of its own, and every object
//! applied must become Ready (ConfigMaps, Secrets and other kinds without status aside).
//!
//! A block is skipped when the line right before its fence is
//! `<!-- not applied: REASON -->` (a fragment, a status, or an example that needs Kubernetes
//! mode or a Kafka server). RabbitMQ (`127.0.0.1:5672`) and NATS (`127.0.0.1:4222`) run
//! wherever the suite runs, so their examples are applied; the blocks marked as needing a
//! Kafka server are applied by a test of their own behind the `kafka-tests` feature.

use rivulet_testkit as support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;
use support::{TestServer, WAIT, api_request};

const MARKER: &str = "<!-- not applied:";

/// Pages whose examples were applied before the documentation moved out of the README, and
/// how many of their blocks must still be applied at least.
const MUST_APPLY: &[(&str, usize)] = &[("sources-and-sinks.md", 4)];

/// Knative feature flags a page's examples need, as the page says: an EventPolicy applies only
/// with `authentication-oidc` on.
const PAGE_FEATURES: &[(&str, &str)] = &[("security.md", "authentication-oidc=enabled")];

/// One fenced YAML block of a page.
struct Block {
    /// 1-based among the YAML blocks of its page.
    number: usize,
    /// 1-based line of the opening fence.
    line: usize,
    text: String,
    /// The reason of a `<!-- not applied: ... -->` marker.
    not_applied: Option<String>,
}

/// Every page of `docs/` by file name, with its YAML blocks.
fn pages_with_blocks() -> Vec<(String, Vec<Block>)> {
    docs_pages()
        .into_iter()
        .map(|path| {
            let page = path
                .file_name()
                .expect("a file name")
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let blocks = yaml_blocks(&text, &page);
            (page, blocks)
        })
        .collect()
}

fn docs_pages() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a readable docs folder").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    pages.sort();
    pages
}

/// The reason of a marker line, `None` when the line is no marker. Panics on a marker without
/// a reason.
fn marker_reason(line: &str, page: &str, number: usize) -> Option<String> {
    let line = line.trim();
    let rest = line.strip_prefix(MARKER)?;
    let reason = rest
        .strip_suffix("-->")
        .unwrap_or_else(|| panic!("{page}:{number}: a not-applied marker must end with -->"))
        .trim();
    assert!(
        !reason.is_empty(),
        "{page}:{number}: a not-applied marker needs a reason"
    );
    Some(reason.to_string())
}

/// The fenced YAML blocks of a page, in order. Fences may be indented (inside a list item);
/// the block's lines lose that indentation.
fn yaml_blocks(text: &str, page: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            let indent = line.len() - trimmed.len();
            let open = i;
            let close = (open + 1..lines.len())
                .find(|&j| lines[j].trim() == "```")
                .unwrap_or_else(|| panic!("{page}:{}: a fence that never closes", open + 1));
            if info.trim() == "yaml" {
                let body: Vec<&str> = lines[open + 1..close]
                    .iter()
                    .map(|l| l.get(indent..).unwrap_or_else(|| l.trim_start()))
                    .collect();
                let not_applied = open
                    .checked_sub(1)
                    .and_then(|before| marker_reason(lines[before], page, before + 1));
                blocks.push(Block {
                    number: blocks.len() + 1,
                    line: open + 1,
                    text: body.join("\n") + "\n",
                    not_applied,
                });
            }
            i = close + 1;
            continue;
        }
        // A marker must sit right before a YAML fence, or it marks nothing.
        if marker_reason(line, page, i + 1).is_some() {
            let next = lines.get(i + 1).map_or("", |l| l.trim());
            assert!(
                next == "```yaml",
                "{page}:{}: a not-applied marker must be the line right before a ```yaml fence",
                i + 1
            );
        }
        i += 1;
    }
    blocks
}

fn describe(object: &Value) -> String {
    format!(
        "{} {}/{}",
        object["kind"].as_str().unwrap_or("?"),
        object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default"),
        object["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// Whether Rivulet writes status conditions for the object's kind: its CRD has the status
/// subresource. ConfigMaps and Secrets have no CRD; configuration kinds such as
/// RabbitmqBrokerConfig have no status.
fn has_conditions(object: &Value) -> bool {
    static CRDS: OnceLock<Vec<CustomResourceDefinition>> = OnceLock::new();
    let crds = CRDS.get_or_init(|| rivulet::resources::crds().expect("the CRDs build"));
    let group = object["apiVersion"]
        .as_str()
        .and_then(|v| v.rsplit_once('/'))
        .map_or("", |(group, _)| group);
    let kind = object["kind"].as_str().unwrap_or_default();
    crds.iter().any(|crd| {
        crd.spec.group == group
            && crd.spec.names.kind == kind
            && crd.spec.versions.iter().any(|version| {
                version
                    .subresources
                    .as_ref()
                    .is_some_and(|s| s.status.is_some())
            })
    })
}

fn is_ready(object: &Value) -> bool {
    object
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// Waits until the object is Ready; on timeout the panic shows its last conditions.
async fn wait_ready(api: &str, object: &Value, origin: &str) {
    let namespace = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let path = support::resource_path(
        object["kind"].as_str().expect("an object has a kind"),
        namespace,
        object["metadata"]["name"]
            .as_str()
            .expect("an object has a name"),
    );
    let url = format!("{api}{path}");
    let deadline = Instant::now() + WAIT;
    let mut last = Value::Null;
    loop {
        let response = api_request(reqwest::Method::GET, &url)
            .send()
            .await
            .expect("the resource API answers");
        if response.status().as_u16() == 200 {
            last = response.json().await.unwrap_or(Value::Null);
            if is_ready(&last) {
                return;
            }
        }
        if Instant::now() > deadline {
            panic!(
                "{origin}: {} not Ready after {WAIT:?}; conditions: {}",
                describe(object),
                last.pointer("/status/conditions").unwrap_or(&Value::Null)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Applies the blocks of one page that `select` picks to a server of its own, the text of
/// each through `edit`, and waits until what they hold is Ready; returns how many blocks were
/// applied.
async fn apply_page(
    page: &str,
    blocks: &[Block],
    select: impl Fn(&Block) -> bool,
    edit: impl Fn(&str) -> String,
) -> usize {
    let blocks: Vec<&Block> = blocks.iter().filter(|b| select(b)).collect();
    if blocks.is_empty() {
        return 0;
    }
    let server = TestServer::start_with(|options| {
        for (_, feature) in PAGE_FEATURES.iter().filter(|(p, _)| *p == page) {
            options
                .features
                .set_pair(feature)
                .unwrap_or_else(|e| panic!("{feature}: {e}"));
        }
    })
    .await;
    let mut applied = Vec::new();
    for block in &blocks {
        let origin = format!(
            "docs/{page} YAML block {} (line {})",
            block.number, block.line
        );
        let manifests = rivulet::resources::parse_manifests(&edit(&block.text), &origin)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!manifests.is_empty(), "{origin}: no object in the block");
        for manifest in manifests {
            let (status, body) = support::put(&server.api, &manifest.object).await;
            assert!(
                status == 200 || status == 201,
                "{origin}: PUT {} answered {status}: {body}",
                describe(&manifest.object)
            );
            applied.push((origin.clone(), manifest.object));
        }
    }
    for (origin, object) in &applied {
        if !has_conditions(object) {
            continue;
        }
        wait_ready(&server.api, object, origin).await;
    }
    server.shutdown().await;
    blocks.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_examples_apply_and_become_ready() {
    let mut applied: BTreeMap<String, usize> = BTreeMap::new();
    for (page, blocks) in pages_with_blocks() {
        let count = apply_page(
            &page,
            &blocks,
            |block| block.not_applied.is_none(),
            str::to_owned,
        )
        .await;
        applied.insert(page, count);
    }
    let total: usize = applied.values().sum();
    assert!(total > 0, "no YAML block of docs/ was applied");
    for (page, at_least) in MUST_APPLY {
        let count = applied.get(*page).copied().unwrap_or(0);
        assert!(
            count >= *at_least,
            "docs/{page}: {count} YAML blocks applied, {at_least} at least expected"
        );
    }
}

/// The reason that marks the blocks needing a Kafka server: the test below applies them.
#[cfg(feature = "kafka-tests")]
const NEEDS_KAFKA: &str = "needs a Kafka server";

/// The blocks marked as needing a Kafka server, applied against the one `./test.sh` starts
/// (`RIVULET_KAFKA_BOOTSTRAP`, else `127.0.0.1:9092`, the address the examples name).
#[cfg(feature = "kafka-tests")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_kafka_examples_apply_and_become_ready() {
    let bootstrap =
        std::env::var("RIVULET_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let mut total = 0;
    for (page, blocks) in pages_with_blocks() {
        total += apply_page(
            &page,
            &blocks,
            |block| block.not_applied.as_deref() == Some(NEEDS_KAFKA),
            |text| text.replace("127.0.0.1:9092", &bootstrap),
        )
        .await;
    }
    assert!(
        total > 0,
        "no YAML block of docs/ is marked \"{NEEDS_KAFKA}\""
    );
}

#[test]
fn blocks_and_markers_are_found() {
    let page = "first\n\n```yaml\na: 1\n```\n\n<!-- not applied: a fragment -->\n```yaml\nb: 2\n```\n\n- item\n\n  ```yaml\n  c: 3\n  ```\n\n```sh\n```yaml inside a shell block is text\n```\n";
    let blocks = yaml_blocks(page, "example.md");
    assert_eq!(blocks.len(), 3);
    assert_eq!(blocks[0].text, "a: 1\n");
    assert_eq!(blocks[0].not_applied, None);
    assert_eq!(blocks[1].not_applied.as_deref(), Some("a fragment"));
    assert_eq!(blocks[1].line, 8);
    assert_eq!(blocks[2].text, "c: 3\n");
}

#[test]
#[should_panic(expected = "needs a reason")]
fn a_marker_without_a_reason_is_refused() {
    yaml_blocks("<!-- not applied: -->\n```yaml\na: 1\n```\n", "example.md");
}
