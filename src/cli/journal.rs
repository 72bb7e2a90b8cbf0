//! `rivulet events trace|list` and `rivulet tap`: the event journal from the command line,
//! over the resource API like the other client commands.

use std::process::ExitCode;

use anyhow::bail;
use chrono::TimeZone;
use clap::Subcommand;
use serde_json::Value;

use super::ServerArg;
use super::client::{Remote, get_json, unreachable};

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Show where one event went: its arrival, each trigger's verdict, every delivery
    /// attempt, the outcome and any reply, as a timeline.
    ///
    /// Example: rivulet events trace order-42
    Trace {
        /// The event's id (every event with this id is shown, one per source and broker).
        id: String,
        /// Output: text (a timeline, default) or json.
        #[arg(short, long, default_value = "text")]
        output: JournalOutput,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Find recent events, newest first (all filters must match).
    ///
    /// Example: rivulet events list --broker default/default --since 10m --outcome dead-lettered
    List {
        /// Only events of this broker: NAMESPACE/NAME, or NAME in namespace `default`.
        #[arg(long)]
        broker: Option<String>,
        /// Only events that reached this outcome at some trigger: accepted, unmatched,
        /// delivered, dropped-ttl, dead-lettered, failed, refused, not-stored.
        #[arg(long)]
        outcome: Option<String>,
        /// Only events that arrived within this long (10m, 2h) or since this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only events of this type.
        #[arg(long = "type")]
        ty: Option<String>,
        /// Only events from this source.
        #[arg(long)]
        source: Option<String>,
        /// At most this many events (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Output: text (a table, default) or json.
        #[arg(short, long, default_value = "text")]
        output: JournalOutput,
        #[command(flatten)]
        server: ServerArg,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum JournalOutput {
    Text,
    Json,
}

pub async fn events(command: EventsCommand) -> anyhow::Result<ExitCode> {
    match command {
        EventsCommand::Trace { id, output, server } => {
            let remote = server.remote();
            let url = format!("{}/journal/events/{}", remote.url, encode(&id));
            let body = get_json(&remote, &url).await?;
            match output {
                JournalOutput::Json => println!("{}", serde_json::to_string_pretty(&body)?),
                JournalOutput::Text => {
                    for path in body["events"].as_array().into_iter().flatten() {
                        print!("{}", timeline(path));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        EventsCommand::List {
            broker,
            outcome,
            since,
            ty,
            source,
            limit,
            output,
            server,
        } => {
            let remote = server.remote();
            let mut query = vec![("limit", limit.to_string())];
            for (name, value) in [
                ("broker", broker),
                ("outcome", outcome),
                ("since", since),
                ("type", ty),
                ("source", source),
            ] {
                if let Some(value) = value {
                    query.push((name, value));
                }
            }
            let url =
                reqwest::Url::parse_with_params(&format!("{}/journal/events", remote.url), &query)?;
            let body = get_json(&remote, url.as_str()).await?;
            match output {
                JournalOutput::Json => println!("{}", serde_json::to_string_pretty(&body)?),
                JournalOutput::Text => print!("{}", table(&body)),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Streams a broker's events as they arrive, with each trigger's outcome, until stopped
/// (or until `max_events` events were shown).
pub async fn tap(
    broker: &str,
    filter: Option<String>,
    output: JournalOutput,
    max_events: Option<u64>,
    remote: Remote,
) -> anyhow::Result<ExitCode> {
    let (namespace, name) = broker.split_once('/').unwrap_or(("default", broker));
    let url = reqwest::Url::parse_with_params(
        &format!(
            "{}/journal/tap/{}/{}",
            remote.url,
            encode(namespace),
            encode(name)
        ),
        filter.iter().map(|f| ("filter", f)),
    )?;
    let mut response = remote
        .client
        .get(url)
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .send()
        .await
        .map_err(|e| unreachable(&remote.url, e))?;
    if !response.status().is_success() {
        bail!("{}", remote.failure(response).await);
    }
    eprintln!("tapping broker {namespace}/{name}; stop with Ctrl-C");
    let mut buffer = Vec::new();
    let mut frame = SseFrame::default();
    let mut shown = 0u64;
    while let Some(chunk) = response.chunk().await? {
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if !line.is_empty() {
                frame.take(line);
                continue;
            }
            let Some((kind, data)) = frame.finish() else {
                continue;
            };
            let data: Value = serde_json::from_str(&data).unwrap_or(Value::String(data));
            match output {
                JournalOutput::Json => {
                    println!("{}", serde_json::json!({"kind": kind, "data": data}))
                }
                JournalOutput::Text => println!("{}", tap_line(&kind, &data)),
            }
            if kind == "event" {
                shown += 1;
            }
            // Steps of the last event may follow; stopping at its arrival is what was asked.
            if max_events.is_some_and(|max| shown >= max) {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    eprintln!("the server closed the tap");
    Ok(ExitCode::SUCCESS)
}

/// One server-sent event being read.
#[derive(Default)]
struct SseFrame {
    event: Option<String>,
    data: Vec<String>,
}

impl SseFrame {
    fn take(&mut self, line: &str) {
        if let Some(value) = line.strip_prefix("event:") {
            self.event = Some(value.trim().to_string());
        } else if let Some(value) = line.strip_prefix("data:") {
            self.data
                .push(value.strip_prefix(' ').unwrap_or(value).to_string());
        }
        // Comments (keep-alives) and other fields are skipped.
    }

    fn finish(&mut self) -> Option<(String, String)> {
        let event = self.event.take();
        let data = std::mem::take(&mut self.data);
        if data.is_empty() {
            return None;
        }
        Some((event.unwrap_or_else(|| "message".into()), data.join("\n")))
    }
}

fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// `HH:MM:SS.mmm` (UTC) of milliseconds since the epoch.
fn clock(millis: &Value) -> String {
    millis
        .as_u64()
        .and_then(|ms| chrono::Utc.timestamp_millis_opt(ms as i64).single())
        .map(|t| t.format("%H:%M:%S%.3f").to_string())
        .unwrap_or_else(|| "??:??:??.???".into())
}

fn day(millis: &Value) -> String {
    millis
        .as_u64()
        .and_then(|ms| chrono::Utc.timestamp_millis_opt(ms as i64).single())
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("")
}

/// The event's type, as its arrival recorded it (empty when not recorded).
fn arrival_type(path: &Value) -> String {
    path["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["step"] == "arrived")
        .map(|s| text(&s["type"]).to_string())
        .unwrap_or_default()
}

/// One event's path as a readable timeline.
pub fn timeline(path: &Value) -> String {
    let mut out = String::new();
    let ty = arrival_type(path);
    out.push_str(&format!(
        "event {} from {} (type {}) at broker {}/{}, {} UTC\n",
        text(&path["id"]),
        text(&path["source"]),
        if ty.is_empty() { "unknown" } else { &ty },
        text(&path["namespace"]),
        text(&path["broker"]),
        day(&path["first_at"]),
    ));
    for step in path["steps"].as_array().into_iter().flatten() {
        let at = clock(&step["at"]);
        match text(&step["step"]) {
            "arrived" => {
                let status = step["status"].as_u64().unwrap_or(0);
                let verdict = match status {
                    202 => "accepted".to_string(),
                    s if s >= 500 => format!("not stored ({s})"),
                    s => format!("refused ({s})"),
                };
                out.push_str(&format!(
                    "  {at}  arrived: {verdict}, from {}, {} bytes of data\n",
                    text(&step["sender"]),
                    step["size"].as_u64().unwrap_or(0)
                ));
                if let Some(error) = step["error"].as_str() {
                    out.push_str(&format!("                {error}\n"));
                }
            }
            "delivery" => {
                let count = step["attempt_count"].as_u64().unwrap_or(0);
                let after = step["latency_ms"]
                    .as_u64()
                    .map(|ms| format!(", {ms} ms after arrival"))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "  {at}  trigger {}: {} to {} ({count} attempt{}{after})\n",
                    text(&step["trigger"]),
                    text(&step["outcome"]),
                    text(&step["subscriber"]),
                    if count == 1 { "" } else { "s" },
                ));
                for attempt in step["attempts"].as_array().into_iter().flatten() {
                    let status = attempt["status"]
                        .as_u64()
                        .map_or("no answer".to_string(), |s| s.to_string());
                    let mut line = format!(
                        "                {}attempt {}: {status} in {:.1} ms",
                        if attempt["dead_letter"] == true {
                            "dead-letter "
                        } else {
                            ""
                        },
                        attempt["attempt"],
                        attempt["latency_ms"].as_f64().unwrap_or(0.0)
                    );
                    if let Some(after) = attempt["retry_after_s"].as_u64() {
                        line.push_str(&format!(", Retry-After {after}s"));
                    }
                    if let Some(error) = attempt["error"].as_str() {
                        line.push_str(&format!(": {error}"));
                    }
                    out.push_str(&line);
                    out.push('\n');
                }
                if let Some(dead_letter) = step["dead_letter"].as_str()
                    && step["outcome"] != "delivered"
                {
                    out.push_str(&format!(
                        "                dead-letter sink: {dead_letter}\n"
                    ));
                }
                if step["reply"].is_object() {
                    out.push_str(&format!(
                        "                reply {} (type {}): {}\n",
                        text(&step["reply"]["id"]),
                        text(&step["reply"]["type"]),
                        text(&step["reply"]["outcome"])
                    ));
                }
            }
            "dropped" => out.push_str(&format!(
                "  {at}  trigger {}: dropped ({})\n",
                text(&step["trigger"]),
                text(&step["reason"])
            )),
            other => out.push_str(&format!("  {at}  {other}\n")),
        }
    }
    let refused = &path["refused"];
    if let Some(count) = refused["count"].as_u64() {
        let by_filter: Vec<String> = refused["by_filter"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(kind, n)| format!("{kind}: {n}"))
            .collect();
        let triggers: Vec<&str> = refused["triggers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let more = count.saturating_sub(triggers.len() as u64);
        let worked_out = refused["worked_out"].as_u64().unwrap_or(0);
        out.push_str(&format!(
            "  refused by {count} trigger{} ({}): {}{}{}\n",
            if count == 1 { "" } else { "s" },
            by_filter.join(", "),
            triggers.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            },
            if worked_out > 0 {
                format!(" ({worked_out} from the current filters: the channel routed the event past them)")
            } else {
                String::new()
            }
        ));
    }
    let pending: Vec<&str> = path["pending"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !pending.is_empty() {
        out.push_str(&format!(
            "  not finished yet at: {} (their filters accept it; see rivulet_trigger_queue_depth)\n",
            pending.join(", ")
        ));
    }
    out.push_str(&format!("  outcome: {}\n", text(&path["outcome"])));
    out
}

fn table(body: &Value) -> String {
    let rows: Vec<[String; 6]> = body["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|path| {
            let ty = arrival_type(path);
            [
                text(&path["id"]).to_string(),
                text(&path["source"]).to_string(),
                ty,
                format!("{}/{}", text(&path["namespace"]), text(&path["broker"])),
                clock(&path["first_at"]),
                text(&path["outcome"]).to_string(),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no events found\n".to_string();
    }
    let header = ["ID", "SOURCE", "TYPE", "BROKER", "ARRIVED (UTC)", "OUTCOME"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for cells in std::iter::once(header.map(str::to_string)).chain(rows) {
        let line: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// One line of `rivulet tap` text output.
fn tap_line(kind: &str, data: &Value) -> String {
    match kind {
        "event" => {
            let event = &data["event"];
            format!(
                "{} {}  {}  {}  {}",
                clock(&serde_json::json!(
                    rivulet_broker::journal::record::now_millis()
                )),
                data["status"],
                text(&event["type"]),
                text(&event["source"]),
                text(&event["id"]),
            )
        }
        "step" => {
            let step = &data["step"];
            let what = match text(&step["step"]) {
                "delivery" => {
                    let status = step["attempts"]
                        .as_array()
                        .and_then(|a| a.last())
                        .and_then(|a| a["status"].as_u64())
                        .map_or(String::new(), |s| format!(" ({s})"));
                    format!("{}{status}", text(&step["outcome"]))
                }
                "refused" => format!("refused by its {} filter", text(&step["filter"])),
                "dropped" => format!("dropped ({})", text(&step["reason"])),
                other => other.to_string(),
            };
            format!(
                "    -> trigger {}: {what}  [{}]",
                text(&step["trigger"]),
                text(&data["id"])
            )
        }
        "missed" => format!(
            "    ({} events missed: this tap read too slowly)",
            data["missed"]
        ),
        other => format!("{other}: {data}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_timeline_shows_attempts_refusals_and_the_outcome() {
        let path = json!({
            "namespace": "default", "broker": "default", "id": "e1", "source": "/s",
            "first_at": 0, "outcome": "dead-lettered",
            "steps": [
                {"step": "arrived", "at": 0, "type": "t", "sender": "127.0.0.1:1", "size": 3, "status": 202},
                {"step": "delivery", "at": 5, "trigger": "tr", "subscriber": "http://s/",
                 "attempt_count": 2, "outcome": "dead-lettered", "dead_letter": "http://dls/",
                 "attempts": [
                    {"attempt": 1, "at": 1, "target": "http://s/", "status": 503, "latency_ms": 1.0, "retry_after_s": 1, "error": "503 Service Unavailable"},
                    {"attempt": 1, "at": 4, "target": "http://dls/", "status": 202, "latency_ms": 1.0, "dead_letter": true}
                 ]}
            ],
            "refused": {"count": 3, "by_filter": {"exact": 3}, "triggers": ["a", "b"]}
        });
        let text = timeline(&path);
        assert!(
            text.contains("event e1 from /s (type t) at broker default/default"),
            "{text}"
        );
        assert!(
            text.contains("arrived: accepted, from 127.0.0.1:1"),
            "{text}"
        );
        assert!(
            text.contains("trigger tr: dead-lettered to http://s/ (2 attempts)"),
            "{text}"
        );
        assert!(
            text.contains("attempt 1: 503 in 1.0 ms, Retry-After 1s: 503 Service Unavailable"),
            "{text}"
        );
        assert!(text.contains("dead-letter attempt 1: 202"), "{text}");
        assert!(
            text.contains("refused by 3 triggers (exact: 3): a, b and 1 more"),
            "{text}"
        );
        assert!(text.ends_with("outcome: dead-lettered\n"), "{text}");
    }

    #[test]
    fn sse_frames_join_data_lines_and_skip_comments() {
        let mut frame = SseFrame::default();
        frame.take(": keep-alive");
        assert!(frame.finish().is_none());
        frame.take("event: step");
        frame.take("data: {\"a\":");
        frame.take("data: 1}");
        assert_eq!(
            frame.finish(),
            Some(("step".to_string(), "{\"a\":\n1}".to_string()))
        );
    }
}
