//! `rivulet eventtypes list|show|scaffold`: discovery from the command line, over the
//! resource API like the other client commands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::Value;

use super::client::{Remote, get_json, object_url};
use super::{OutputFormat, ServerArg};
use crate::discovery::scaffold::{self, Lang};
use crate::resources::eventtype::{attribute_of, broker_of};
use crate::resources::{KindInfo, find_kind_by_name};

#[derive(Debug, Subcommand)]
pub enum EventTypesCommand {
    /// List EventTypes, optionally filtered (all filters must match).
    ///
    /// Example: rivulet eventtypes list --broker default --type-prefix com.example.
    List {
        /// Only EventTypes of this broker.
        #[arg(long)]
        broker: Option<String>,
        /// Only this exact event type.
        #[arg(long = "type")]
        ty: Option<String>,
        /// Only event types starting with this.
        #[arg(long)]
        type_prefix: Option<String>,
        /// Only this source, or the pattern covering it (/orders/42 finds /orders/*).
        #[arg(long)]
        source: Option<String>,
        /// Free text in name, type, source, broker or description (case-insensitive).
        #[arg(short, long)]
        query: Option<String>,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Output: table (default), wide, yaml or json.
        #[arg(short, long, default_value = "table")]
        output: OutputFormat,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Show one EventType: attributes, inferred schema and a sample event.
    Show {
        name: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Output: table (readable text, default; wide is the same), yaml or json (the whole
        /// object).
        #[arg(short, long, default_value = "table")]
        output: OutputFormat,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Write a ready-to-run function for an EventType, its handler taking the payload typed
    /// from the inferred schema.
    ///
    /// rust: a Cargo project (axum, serde structs, Option for optional fields);
    /// typescript: interfaces and a node:http server, no dependencies;
    /// python: dataclasses and an http.server server, standard library only.
    Scaffold {
        name: String,
        #[arg(long, value_enum)]
        lang: Lang,
        /// Folder to write the project to (default: ./NAME-LANG).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Overwrite files that already exist.
        #[arg(long)]
        force: bool,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[command(flatten)]
        server: ServerArg,
    },
}

fn kind() -> &'static KindInfo {
    find_kind_by_name(None, "EventType").expect("EventType is registered")
}

pub async fn run(command: EventTypesCommand) -> anyhow::Result<ExitCode> {
    match command {
        EventTypesCommand::List {
            broker,
            ty,
            type_prefix,
            source,
            query,
            namespace,
            output,
            server,
        } => {
            let params: Vec<(&str, String)> = [
                ("broker", broker),
                ("type", ty),
                ("typePrefix", type_prefix),
                ("source", source),
                ("q", query),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
            list(&server.remote(), &namespace, &params, output).await
        }
        EventTypesCommand::Show {
            name,
            namespace,
            output,
            server,
        } => {
            let object = fetch(&server.remote(), &namespace, &name).await?;
            match output {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&object)?),
                OutputFormat::Yaml => print!("{}", serde_saphyr::to_string(&object)?),
                OutputFormat::Table | OutputFormat::Wide => print!("{}", describe(&object)),
            }
            Ok(ExitCode::SUCCESS)
        }
        EventTypesCommand::Scaffold {
            name,
            lang,
            dir,
            force,
            namespace,
            server,
        } => {
            let object = fetch(&server.remote(), &namespace, &name).await?;
            if object.pointer("/status/schema").is_none() {
                eprintln!(
                    "note: {name} has no inferred schema yet (no JSON payload seen); the payload is left untyped"
                );
            }
            let files = scaffold::generate(&object, lang)?;
            let lang_name = format!("{lang:?}").to_lowercase();
            let dir = dir.unwrap_or_else(|| PathBuf::from(format!("{name}-{lang_name}")));
            scaffold::write(&dir, &files, force)?;
            for file in &files {
                println!("wrote {}", dir.join(&file.path).display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn fetch(remote: &Remote, namespace: &str, name: &str) -> anyhow::Result<Value> {
    get_json(remote, &object_url(&remote.url, kind(), namespace, name)).await
}

async fn list(
    remote: &Remote,
    namespace: &str,
    params: &[(&str, String)],
    output: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let mut url = format!("{}{}", remote.url, kind().collection_path(namespace));
    if !params.is_empty() {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())))
            .finish();
        url = format!("{url}?{query}");
    }
    let body = get_json(remote, &url).await?;
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&body)?),
        OutputFormat::Yaml => print!("{}", serde_saphyr::to_string(&body)?),
        OutputFormat::Table | OutputFormat::Wide => {
            let items = body["items"].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                eprintln!("No event types found.");
            } else {
                print!("{}", table(&items));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn text<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn schema_column(object: &Value) -> String {
    object
        .pointer("/status/schemaVersion")
        .and_then(Value::as_u64)
        .map(|v| format!("v{v}"))
        .unwrap_or_else(|| "-".into())
}

/// The list as a table: name, broker, type, source, schema version, ready.
pub fn table(items: &[Value]) -> String {
    let rows: Vec<[String; 6]> = items
        .iter()
        .map(|item| {
            let ready = item
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .and_then(|c| c["status"].as_str())
                .unwrap_or("Unknown");
            [
                text(item, "/metadata/name").to_string(),
                broker_of(item).unwrap_or("").to_string(),
                attribute_of(item, "type").unwrap_or("").to_string(),
                attribute_of(item, "source").unwrap_or("*").to_string(),
                schema_column(item),
                ready.to_string(),
            ]
        })
        .collect();
    let header = ["NAME", "BROKER", "TYPE", "SOURCE", "SCHEMA", "READY"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; 6]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i == 5 {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(header);
    for row in &rows {
        out.push_str(&line([
            &row[0], &row[1], &row[2], &row[3], &row[4], &row[5],
        ]));
    }
    out
}

/// One EventType as readable text.
pub fn describe(object: &Value) -> String {
    let mut out = format!(
        "Name:         {}\nNamespace:    {}\nBroker:       {}\nDescription:  {}\nAttributes:\n",
        text(object, "/metadata/name"),
        text(object, "/metadata/namespace"),
        broker_of(object).unwrap_or("-"),
        text(object, "/spec/description"),
    );
    for attribute in object
        .pointer("/spec/attributes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push_str(&format!(
            "  {:<12} {}{}\n",
            text(attribute, "/name"),
            attribute
                .get("value")
                .and_then(Value::as_str)
                .unwrap_or("(any)"),
            if attribute["required"] == true {
                "  (required)"
            } else {
                ""
            }
        ));
    }
    if let Some(data_schema) = object.pointer("/status/dataSchema").and_then(Value::as_str) {
        out.push_str(&format!("Dataschema:   {data_schema}\n"));
    }
    match object.pointer("/status/schema") {
        Some(schema) => out.push_str(&format!(
            "Schema ({}):\n{}\n",
            schema_column(object),
            indent(&serde_json::to_string_pretty(schema).unwrap_or_default())
        )),
        None => out.push_str("Schema:       none yet (no JSON payload seen)\n"),
    }
    if let Some(sample) = object.pointer("/status/sample") {
        out.push_str(&format!(
            "Sample event:\n{}\n",
            indent(&serde_json::to_string_pretty(sample).unwrap_or_default())
        ));
    }
    out
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
