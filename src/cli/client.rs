//! CLI commands that talk to a running server over HTTP.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::{OutputFormat, SendArgs};
use crate::resources::{
    KindInfo, find_kind_by_name, kinds, manifest_files, parse_manifests_skipping,
};

pub(super) fn http() -> reqwest::Client {
    crate::install_crypto_provider();
    reqwest::Client::new()
}

/// A Rivulet server's resource API, and a client that carries its token.
pub struct Remote {
    pub url: String,
    pub client: reqwest::Client,
    /// Where the token came from, for the hint on a 401.
    token_origin: Option<String>,
}

impl Remote {
    /// `token` from `--token`/`RIVULET_TOKEN`, else the admin token in `data_dir`.
    pub fn new(url: &str, token: Option<&str>, data_dir: &std::path::Path) -> Remote {
        crate::install_crypto_provider();
        let (token, token_origin) = match token {
            Some(token) => (Some(token.trim().to_string()), Some("--token".to_string())),
            None => match crate::api::auth::read_admin_token(data_dir) {
                Some(token) => (
                    Some(token),
                    Some(
                        data_dir
                            .join(crate::api::auth::ADMIN_TOKEN_FILE)
                            .display()
                            .to_string(),
                    ),
                ),
                None => (None, None),
            },
        };
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token
            && let Ok(mut value) =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        {
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .expect("a client with these settings builds");
        Remote {
            url: url.trim_end_matches('/').to_string(),
            client,
            token_origin,
        }
    }

    /// Turns an error response into a message, with a hint when the token was the problem.
    pub async fn failure(&self, response: reqwest::Response) -> String {
        let status = response.status();
        let message = failure(response).await;
        match (status.as_u16(), &self.token_origin) {
            (401, None) => format!(
                "{message} (no token: pass --token, set RIVULET_TOKEN, or run where --data-dir holds the server's admin.token)"
            ),
            (401, Some(origin)) => format!("{message} (token from {origin})"),
            _ => message,
        }
    }
}

pub(super) fn object_url(server: &str, kind: &KindInfo, namespace: &str, name: &str) -> String {
    format!(
        "{}{}/{name}",
        server.trim_end_matches('/'),
        kind.collection_path(namespace)
    )
}

/// Turns an error response (a Kubernetes `Status` or plain text) into a message.
pub(super) async fn failure(response: reqwest::Response) -> String {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or(text);
    format!("{status}: {}", message.trim())
}

/// GETs `url` from the Rivulet server at `server` and returns the JSON body; a refusal
/// becomes an error carrying what the server said.
pub(super) async fn get_json(remote: &Remote, url: &str) -> anyhow::Result<Value> {
    let response = remote
        .client
        .get(url)
        .send()
        .await
        .map_err(|e| unreachable(&remote.url, e))?;
    if !response.status().is_success() {
        bail!("{}", remote.failure(response).await);
    }
    Ok(response.json().await?)
}

pub(super) fn unreachable(server: &str, error: reqwest::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot reach the Rivulet server at {server} ({error}); is `rivulet serve` running? (--server picks another)"
    )
}

fn find_kind(name: &str) -> anyhow::Result<&'static KindInfo> {
    find_kind_by_name(None, name).ok_or_else(|| {
        let known: Vec<String> = kinds().iter().map(|k| k.plural.to_string()).collect();
        anyhow::anyhow!("unknown kind {name:?}; known: {}", known.join(", "))
    })
}

pub async fn apply(remote: &Remote, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut manifests = Vec::new();
    let mut skipped = Vec::new();
    let mut read = |text: &str, origin: &str| -> anyhow::Result<()> {
        let parsed = parse_manifests_skipping(text, origin).map_err(anyhow::Error::msg)?;
        manifests.extend(parsed.manifests);
        skipped.extend(parsed.skipped);
        Ok(())
    };
    for path in files {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            read(&text, "stdin")?;
            continue;
        }
        let listed =
            manifest_files(path).with_context(|| format!("cannot read {}", path.display()))?;
        for file in listed {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            read(&text, &file.display().to_string())?;
        }
    }
    // Knative samples hold a Namespace, a Deployment or a Service beside their eventing
    // objects: those are named and skipped, and only a refusal of a served kind fails.
    for skipped in &skipped {
        eprintln!("warning: {skipped}");
    }
    if manifests.is_empty() {
        if skipped.is_empty() {
            bail!("no objects found in the given manifests");
        }
        // Nothing was refused, so this is not a failure; the warnings above say why.
        eprintln!(
            "warning: nothing applied: none of the objects in the given manifests is of a kind Rivulet serves"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut failed = false;
    for manifest in manifests {
        let namespace = manifest.namespace().to_string();
        let Some(name) = manifest.name() else {
            eprintln!("{}: metadata.name is required", manifest.origin);
            failed = true;
            continue;
        };
        let url = object_url(&remote.url, manifest.kind, &namespace, name);
        let response = remote
            .client
            .put(&url)
            .json(&manifest.object)
            .send()
            .await
            .map_err(|e| unreachable(&remote.url, e))?;
        let label = format!("{}/{name}", manifest.kind.kind.to_ascii_lowercase());
        match response.status().as_u16() {
            201 => println!("{label} created"),
            200 => println!("{label} configured"),
            _ => {
                eprintln!("{label}: {}", remote.failure(response).await);
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Which namespaces `get` looks in.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    Namespace(&'a str),
    AllNamespaces,
}

pub async fn get(
    remote: &Remote,
    kind_name: &str,
    name: Option<&str>,
    scope: Scope<'_>,
    output: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let kind = find_kind(kind_name)?;
    let url = match (name, scope) {
        (Some(name), Scope::Namespace(namespace)) => object_url(&remote.url, kind, namespace, name),
        (Some(_), Scope::AllNamespaces) => {
            bail!("--all-namespaces lists a kind; to show one object, name its --namespace")
        }
        (None, Scope::Namespace(namespace)) => {
            format!("{}{}", remote.url, kind.collection_path(namespace))
        }
        (None, Scope::AllNamespaces) => format!("{}{}", remote.url, kind.all_namespaces_path()),
    };
    let body = get_json(remote, &url).await?;
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&body)?),
        OutputFormat::Yaml => print!("{}", serde_saphyr::to_string(&body)?),
        OutputFormat::Table | OutputFormat::Wide => {
            let items = match body.get("items").and_then(Value::as_array) {
                Some(items) => items.clone(),
                None => vec![body],
            };
            let columns = Columns {
                namespace: matches!(scope, Scope::AllNamespaces),
                wide: matches!(output, OutputFormat::Wide),
            };
            print_table(kind, &items, columns);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The optional columns of a table.
#[derive(Debug, Clone, Copy)]
struct Columns {
    namespace: bool,
    wide: bool,
}

fn print_table(kind: &KindInfo, items: &[Value], columns: Columns) {
    let text = |v: &Value, pointer: &str| {
        v.pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let ready = |v: &Value| -> (String, String) {
        let conditions = v.pointer("/status/conditions").and_then(Value::as_array);
        let ready = conditions.and_then(|c| {
            c.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        });
        match ready {
            Some(c) => (text(c, "/status"), text(c, "/reason")),
            None => ("Unknown".into(), String::new()),
        }
    };
    type Column = Box<dyn Fn(&Value) -> String>;
    let mut extra: Vec<(&str, Column)> = match kind.kind {
        "Broker" => vec![("URL", Box::new(move |v| text(v, "/status/address/url")))],
        "Trigger" => vec![
            ("BROKER", Box::new(move |v| text(v, "/spec/broker"))),
            (
                "SUBSCRIBER_URI",
                Box::new(move |v| text(v, "/status/subscriberUri")),
            ),
        ],
        _ => Vec::new(),
    };
    if columns.wide {
        match kind.kind {
            "Broker" => extra.push((
                "CLASS",
                Box::new(move |v| {
                    text(
                        v,
                        "/metadata/annotations/eventing.knative.dev~1broker.class",
                    )
                }),
            )),
            "Trigger" => extra.push((
                "FILTER",
                Box::new(|v| {
                    let filters = v
                        .pointer("/spec/filters")
                        .filter(|f| f.as_array().is_some_and(|a| !a.is_empty()));
                    filters
                        .or(v.pointer("/spec/filter"))
                        .map(Value::to_string)
                        .unwrap_or_default()
                }),
            )),
            _ => {}
        }
        extra.push((
            "AGE",
            Box::new(move |v| age(&text(v, "/metadata/creationTimestamp"))),
        ));
    }
    if items.is_empty() {
        eprintln!("No resources found.");
        return;
    }
    let mut header = Vec::new();
    if columns.namespace {
        header.push(format!("{:<20}", "NAMESPACE"));
    }
    header.push(format!("{:<28} {:<8} {:<24}", "NAME", "READY", "REASON"));
    header.extend(extra.iter().map(|(name, _)| name.to_string()));
    println!("{}", header.join(" ").trim_end());
    for item in items {
        let (status, reason) = ready(item);
        let mut row = Vec::new();
        if columns.namespace {
            row.push(format!("{:<20}", text(item, "/metadata/namespace")));
        }
        row.push(format!(
            "{:<28} {:<8} {:<24}",
            text(item, "/metadata/name"),
            status,
            reason
        ));
        row.extend(extra.iter().map(|(_, column)| column(item)));
        println!("{}", row.join(" ").trim_end());
    }
}

/// How long ago an RFC 3339 time was, as kubectl shows it (`45s`, `12m`, `3h`, `5d`).
fn age(created: &str) -> String {
    let Ok(created) = chrono::DateTime::parse_from_rfc3339(created) else {
        return String::new();
    };
    let seconds = (chrono::Utc::now() - created.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

pub async fn delete(
    remote: &Remote,
    kind_name: &str,
    name: &str,
    namespace: &str,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let kind = find_kind(kind_name)?;
    let mut url = object_url(&remote.url, kind, namespace, name);
    if force {
        url.push_str("?force=true");
    }
    let response = remote
        .client
        .delete(url)
        .send()
        .await
        .map_err(|e| unreachable(&remote.url, e))?;
    if response.status() == reqwest::StatusCode::CONFLICT && !force {
        // The server refuses to drop undelivered events unasked; its message has the count.
        let message = remote.failure(response).await;
        bail!("{message}\nrun again with --force to delete it anyway");
    }
    if !response.status().is_success() {
        bail!("{}", remote.failure(response).await);
    }
    let answer: Value =
        serde_json::from_str(&response.text().await.unwrap_or_default()).unwrap_or(Value::Null);
    let deleted = format!("{}/{name} deleted", kind.kind.to_ascii_lowercase());
    // Brokers and triggers: what became of their undelivered events.
    let count = |field: &str| {
        answer
            .pointer(&format!("/undelivered/{field}"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let (drained, dead_lettered, dropped) =
        (count("drained"), count("deadLettered"), count("dropped"));
    if answer.get("kind").and_then(Value::as_str) != Some("Status") {
        println!("{deleted}");
    } else if answer.get("undelivered").is_some_and(Value::is_null) {
        // The drain outlasted the answer; the server says where to look.
        let message = answer.get("message").and_then(Value::as_str).unwrap_or("");
        println!("{deleted}; {message}");
    } else if drained + dead_lettered + dropped == 0 {
        println!("{deleted}");
    } else {
        println!(
            "{deleted}; its undelivered events: {drained} finished delivery within the grace period, {dead_lettered} dead-lettered, {dropped} dropped"
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn send(args: SendArgs) -> anyhow::Result<ExitCode> {
    let url = match &args.url {
        Some(url) => url.clone(),
        None => {
            let (namespace, broker) = args
                .broker
                .split_once('/')
                .unwrap_or(("default", &args.broker));
            format!(
                "{}/{namespace}/{broker}",
                args.ingress.trim_end_matches('/')
            )
        }
    };
    let data = match (&args.data, &args.data_file) {
        (Some(text), _) => Some(text.clone().into_bytes()),
        (None, Some(path)) => {
            Some(std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?)
        }
        (None, None) => None,
    };
    let mut event = serde_json::json!({
        "specversion": "1.0",
        "id": args.id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        "source": args.source,
        "type": args.ty,
    });
    if let Some(subject) = &args.subject {
        event["subject"] = subject.clone().into();
    }
    let content_type = args
        .content_type
        .clone()
        .or_else(|| data.as_ref().map(|_| "application/json".to_string()));
    if let Some(ct) = &content_type {
        event["datacontenttype"] = ct.clone().into();
    }
    for (name, value) in &args.extensions {
        event[name] = value.clone().into();
    }
    // Build through the event model so the request is exactly what ingress expects.
    let mut parsed = crate::event::parse_structured(event.to_string().as_bytes())
        .map_err(|e| anyhow::anyhow!("the event would be invalid: {e}"))?;
    parsed.data = data.map(bytes::Bytes::from);
    let (headers, body) = if args.structured {
        crate::event::to_http_structured(&parsed)
    } else {
        crate::event::to_http_binary(&parsed)
    };
    let response = http()
        .post(&url)
        .headers(headers)
        .body(body)
        .send()
        .await
        .map_err(|e| match &args.url {
            Some(_) => anyhow::anyhow!("cannot reach {url}: {e}"),
            None => anyhow::anyhow!(
                "cannot reach Rivulet's ingress at {} ({e}); is `rivulet serve` running? (--ingress picks another)",
                args.ingress
            ),
        })?;
    if response.status().is_success() {
        println!("sent {} ({})", parsed.id, response.status());
        Ok(ExitCode::SUCCESS)
    } else {
        bail!("{}", failure(response).await)
    }
}
