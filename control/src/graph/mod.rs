//! The topology of live objects: sources → brokers → triggers → subscribers, with each
//! broker's channel and the sinks and dead-letter sinks they point at, and the event rate on
//! every edge. Served as JSON at `GET /graph` on the resource API listener; [`render`] turns
//! it into text, DOT or SVG.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::runtime::Context;
use crate::runtime::routes::{HttpRoutes, Listener};

mod build;
mod rates;
pub mod render;

pub use build::{Role, role_of};
pub use rates::{RATE_WINDOW, RateTable};

/// The path of the graph on the resource API listener.
pub const PATH: &str = "/graph";

/// Every object of a topology and how events flow between them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Graph {
    /// The namespace asked for; `None` for every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The span rates are averaged over, in seconds (shorter for what appeared since).
    pub rate_window_seconds: u64,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    /// Counters left out of rate measurement because the rate table is full; their edges
    /// carry no rate.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub untracked_series: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One object, or something objects point at that Rivulet does not serve (a URL, a
/// Kubernetes Service).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// Unique in the graph: `Kind/namespace/name`, `channel/namespace/broker` or `url:URL`.
    pub id: String,
    /// The object's kind (`Broker`, `PingSource`, `Service`, ...), `Channel` for a broker's
    /// channel, `URL` for a bare address.
    pub kind: String,
    /// Where it sits in the flow.
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// The object's name, a channel's backend, or the URL.
    pub name: String,
    /// The `Ready` condition's status: `None` when the object has none yet (or is no object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `status.address.url`, or the URL of a URL node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// A trigger's filter, in short.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Not an object Rivulet serves: a URL, or a `ref` to another kind.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
    /// Named by a `ref` of a kind Rivulet serves, but not found.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub missing: bool,
    /// Events a sink accepted, per second (sinks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
}

impl Node {
    /// `name`, or `namespace/name` when the graph spans namespaces other than `namespace`.
    pub fn display_name(&self, home_namespace: Option<&str>) -> String {
        if self.namespace.is_empty() || home_namespace == Some(self.namespace.as_str()) {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }

    /// Why it is not ready, in a few words: the reason, else the message; `None` when ready.
    pub fn problem(&self) -> Option<String> {
        if self.missing {
            return Some("does not exist".into());
        }
        if self.external {
            return None;
        }
        match self.ready {
            Some(true) => None,
            Some(false) => Some(
                self.reason
                    .clone()
                    .filter(|r| !r.is_empty())
                    .or_else(|| self.message.clone().filter(|m| !m.is_empty()))
                    .unwrap_or_else(|| "not ready".into()),
            ),
            None => Some("not reconciled yet".into()),
        }
    }
}

/// Events flowing from one node to another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub kind: EdgeKind,
    /// A trigger's filter on the broker → trigger edge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Events per second over the rate window; `None` when this edge has no counter or it
    /// is not measured yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Events along this edge since the server started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// What an edge stands for, and which counter its rate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EdgeKind {
    /// A source's `spec.sink`: events it sent.
    Sink,
    /// A broker into its channel: events ingress accepted.
    Channel,
    /// A broker to a trigger: events its filter passed.
    Trigger,
    /// A trigger's subscriber: events delivered.
    Subscriber,
    /// A dead-letter sink: events that went there.
    DeadLetter,
}

impl EdgeKind {
    /// A word for the edge, where the target alone does not say it.
    pub fn note(self) -> Option<&'static str> {
        match self {
            EdgeKind::DeadLetter => Some("dead letter"),
            _ => None,
        }
    }
}

/// The `?namespace=` of `GET /graph`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GraphQuery {
    #[serde(default)]
    namespace: Option<String>,
}

/// Why the graph could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("reading {kind}: {source}")]
    Store {
        kind: &'static str,
        source: rivulet_store::StoreError,
    },
}

#[derive(Clone)]
struct GraphState {
    ctx: Arc<Context>,
    rates: Arc<RateTable>,
}

inventory::submit! {
    HttpRoutes { listener: Listener::Api, build: routes }
}

fn routes(ctx: Arc<Context>) -> Router {
    let rates = Arc::new(RateTable::new(ctx.dispatch.metrics.clone()));
    rates::spawn_sampler(&ctx, rates.clone());
    Router::new()
        .route(PATH, get(graph))
        .with_state(GraphState { ctx, rates })
}

async fn graph(
    State(state): State<GraphState>,
    query: Result<Query<GraphQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => {
            return crate::api::status_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("{rejection}; the graph takes ?namespace=NAME only"),
            );
        }
    };
    let namespace = query.namespace.filter(|n| !n.is_empty());
    if let Some(namespace) = &namespace
        && (namespace.len() > 253
            || !rivulet_core::resources::validation::is_dns_subdomain(namespace))
    {
        return crate::api::status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("namespace {namespace:?} is not a valid namespace name"),
        );
    }
    match build::from_store(&state.ctx, &state.rates, namespace.as_deref()).await {
        Ok(graph) => axum::Json(graph).into_response(),
        Err(error) => crate::api::status_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            error.to_string(),
        ),
    }
}

/// The nodes of a graph by id.
pub fn nodes_by_id(graph: &Graph) -> BTreeMap<&str, &Node> {
    graph.nodes.iter().map(|n| (n.id.as_str(), n)).collect()
}

/// `value`'s `Ready` condition as (ready, reason, message).
fn ready_of(object: &Value) -> (Option<bool>, Option<String>, Option<String>) {
    match object
        .get("status")
        .and_then(crate::runtime::ReadySummary::of)
    {
        None => (None, None, None),
        Some(summary) => (
            Some(summary.ready),
            Some(summary.reason).filter(|r| !r.is_empty()),
            Some(summary.message).filter(|m| !m.is_empty()),
        ),
    }
}
