//! `rivulet graph`: the topology of the live objects on a server, with event rates, as text,
//! DOT or SVG.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use super::ServerArg;
use super::client::get_json;
use crate::graph::{self, Graph, render};

#[derive(Debug, Args)]
pub struct GraphArgs {
    /// Only this namespace (and what its objects point at elsewhere).
    #[arg(short, long, conflicts_with = "all_namespaces")]
    namespace: Option<String>,
    /// Every namespace: the default.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Output: text (a tree per namespace, default), dot (Graphviz), svg (drawn by Rivulet)
    /// or json (the server's answer).
    #[arg(short, long, value_enum, default_value = "text")]
    output: GraphFormat,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum GraphFormat {
    Text,
    Dot,
    Svg,
    Json,
}

pub async fn run(args: GraphArgs) -> anyhow::Result<ExitCode> {
    let remote = args.server.remote();
    let mut url = reqwest::Url::parse(&format!("{}{}", remote.url, graph::PATH))
        .with_context(|| format!("--server {:?} is not a URL", remote.url))?;
    if let Some(namespace) = args.namespace.as_deref().filter(|_| !args.all_namespaces) {
        url.query_pairs_mut().append_pair("namespace", namespace);
    }
    let value = get_json(&remote, url.as_str()).await?;
    let graph: Graph = serde_json::from_value(value).context(
        "the server's graph is not in the expected form; is it a newer or older Rivulet?",
    )?;
    let rendered = match args.output {
        GraphFormat::Text => render::text(&graph),
        GraphFormat::Dot => render::dot(&graph),
        GraphFormat::Svg => render::svg(&graph),
        GraphFormat::Json => format!("{}\n", serde_json::to_string_pretty(&graph)?),
    };
    print!("{rendered}");
    Ok(ExitCode::SUCCESS)
}
