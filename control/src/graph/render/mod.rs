//! The graph as text (a tree per namespace), DOT (for Graphviz) and SVG (drawn here, no
//! Graphviz needed).

use super::{Edge, EdgeKind, Graph, Node, Role};

mod dot;
mod svg;
mod text;

pub use dot::dot;
pub use svg::svg;
pub use text::text;

/// A rate as people read it: `1.50/s`, `0/s`; `-` when not measured yet; `None` when the
/// edge has no counter.
pub fn rate_text(edge: &Edge) -> Option<String> {
    match (edge.rate, edge.count) {
        (Some(rate), _) => Some(per_second(rate)),
        (None, Some(_)) => Some("-".into()),
        (None, None) => None,
    }
}

/// The events per second a sink accepted; `-` when not measured yet.
fn sink_rate(node: &Node) -> String {
    node.rate.map_or_else(|| "-".into(), per_second)
}

/// Events per second with as many digits as help.
pub fn per_second(rate: f64) -> String {
    if !rate.is_finite() || rate <= 0.0 {
        "0/s".into()
    } else if rate < 0.01 {
        "<0.01/s".into()
    } else if rate < 10.0 {
        format!("{rate:.2}/s")
    } else if rate < 100.0 {
        format!("{rate:.1}/s")
    } else {
        format!("{rate:.0}/s")
    }
}

/// What an edge's label says: its note (dead letter) and rate.
fn edge_caption(edge: &Edge) -> Option<String> {
    match (edge.kind.note(), rate_text(edge)) {
        (Some(note), Some(rate)) => Some(format!("{note} {rate}")),
        (Some(note), None) => Some(note.to_string()),
        (None, rate) => rate,
    }
}

/// The namespace names are shown relative to: the one asked for, or the only one there is.
fn home_namespace(graph: &Graph) -> Option<String> {
    if graph.namespace.is_some() {
        return graph.namespace.clone();
    }
    let mut namespaces = graph
        .nodes
        .iter()
        .map(|n| n.namespace.as_str())
        .filter(|ns| !ns.is_empty());
    let first = namespaces.next()?;
    namespaces.all(|ns| ns == first).then(|| first.to_string())
}

/// What a drawing says of a node beyond its kind and name: a trigger's filter, the events a
/// sink accepted, that it is outside Rivulet, why it is not ready.
fn details(node: &Node) -> Vec<String> {
    let mut lines = Vec::new();
    if node.role == Role::Trigger && !node.missing {
        lines.push(format!(
            "[{}]",
            node.filter.as_deref().unwrap_or("all events")
        ));
    }
    if node.role == Role::Sink && !node.missing {
        lines.push(format!("accepted {}", sink_rate(node)));
    }
    if node.external && node.kind != "URL" {
        lines.push("external".into());
    }
    if let Some(problem) = node.problem() {
        lines.push(format!("not ready: {problem}"));
    }
    lines
}

/// How a node is named in a drawing: the URL of a URL node, else the (namespaced) name.
fn node_title(node: &Node, home: Option<&str>) -> String {
    // A broker's channel is named by its backend; its broker says where it is.
    if node.kind == "URL" || node.role == Role::Channel {
        node.name.clone()
    } else {
        node.display_name(home)
    }
}

/// The state a node is drawn in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ready,
    NotReady,
    Unknown,
    External,
}

fn state_of(node: &Node) -> State {
    if node.missing {
        State::NotReady
    } else if node.external {
        State::External
    } else {
        match node.ready {
            Some(true) => State::Ready,
            Some(false) => State::NotReady,
            None => State::Unknown,
        }
    }
}

/// (fill, stroke) of a state.
fn colours(state: State) -> (&'static str, &'static str) {
    match state {
        State::Ready => ("#e6f4ea", "#188038"),
        State::NotReady => ("#fce8e6", "#c5221f"),
        State::Unknown => ("#fef7e0", "#b06000"),
        State::External => ("#ffffff", "#5f6368"),
    }
}

/// The order children are listed in under a node: channel, triggers, then where events go.
fn edge_order(kind: EdgeKind) -> u8 {
    match kind {
        EdgeKind::Channel => 0,
        EdgeKind::Trigger => 1,
        EdgeKind::Sink => 2,
        EdgeKind::Subscriber => 3,
        EdgeKind::DeadLetter => 4,
    }
}

/// The column of a role in a drawing.
fn column_of(role: Role) -> usize {
    match role {
        Role::Source => 0,
        Role::Broker => 1,
        Role::Channel | Role::Trigger => 2,
        Role::Sink | Role::External => 3,
    }
}
