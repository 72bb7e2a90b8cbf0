//! The graph as a tree per namespace: each source, then each broker not reached from one,
//! with what it feeds below it, a rate on every arrow.
//!
//! ```text
//! namespace default
//!   PingSource tick
//!   └─ 0.02/s ─▶ Broker default
//!      ├─ 0.02/s ─▶ Channel embedded
//!      └─ 0.02/s ─▶ Trigger all [all events]
//!         └─ 0.02/s ─▶ http://127.0.0.1:9000/
//! ```

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;

use super::{edge_order, home_namespace, rate_text};
use crate::graph::{Edge, Graph, Node, Role, nodes_by_id};

/// Renders the graph as indented text, ending with a newline.
pub fn text(graph: &Graph) -> String {
    let nodes = nodes_by_id(graph);
    let mut outgoing: BTreeMap<&str, Vec<&Edge>> = BTreeMap::new();
    let mut has_incoming = HashSet::new();
    for edge in &graph.edges {
        outgoing.entry(edge.from.as_str()).or_default().push(edge);
        has_incoming.insert(edge.to.as_str());
    }
    for edges in outgoing.values_mut() {
        edges.sort_by_key(|e| (edge_order(e.kind), e.to.as_str()));
    }
    // Asked for one namespace, objects elsewhere show only under what points at them.
    let namespaces: BTreeSet<&str> = graph
        .nodes
        .iter()
        .map(|n| n.namespace.as_str())
        .filter(|ns| !ns.is_empty())
        .filter(|ns| graph.namespace.as_deref().is_none_or(|asked| asked == *ns))
        .collect();
    let mut out = String::new();
    if namespaces.is_empty() {
        let scope = match &graph.namespace {
            Some(ns) => format!(" in namespace {ns}"),
            None => String::new(),
        };
        let _ = writeln!(out, "no sources, brokers, triggers or sinks{scope}");
        return out;
    }
    let mut printer = Printer {
        nodes: &nodes,
        outgoing: &outgoing,
        expanded: HashSet::new(),
        out: String::new(),
        home: home_namespace(graph),
    };
    for (index, namespace) in namespaces.iter().enumerate() {
        if index > 0 {
            printer.out.push('\n');
        }
        let _ = writeln!(printer.out, "namespace {namespace}");
        printer.home = Some(namespace.to_string());
        // Roots in flow order: sources, then what no source reached yet, then anything
        // nothing points at.
        let in_namespace: Vec<&Node> = graph
            .nodes
            .iter()
            .filter(|n| n.namespace == *namespace)
            .collect();
        let roots = in_namespace
            .iter()
            .filter(|n| n.role == Role::Source)
            .chain(in_namespace.iter().filter(|n| n.role == Role::Broker))
            .chain(
                in_namespace
                    .iter()
                    .filter(|n| !has_incoming.contains(n.id.as_str())),
            )
            .chain(in_namespace.iter());
        for root in roots {
            // Shown already, under what feeds it or as an earlier root.
            if !printer.expanded.contains(root.id.as_str()) {
                printer.root(root);
            }
        }
    }
    out.push_str(&printer.out);
    out
}

struct Printer<'a> {
    nodes: &'a BTreeMap<&'a str, &'a Node>,
    outgoing: &'a BTreeMap<&'a str, Vec<&'a Edge>>,
    /// Nodes whose children were listed: shown again, they say so instead of repeating.
    expanded: HashSet<&'a str>,
    out: String,
    home: Option<String>,
}

impl<'a> Printer<'a> {
    fn root(&mut self, node: &'a Node) {
        let label = self.label(node);
        let _ = writeln!(self.out, "  {label}");
        self.expanded.insert(node.id.as_str());
        self.children(node, "  ");
    }

    fn children(&mut self, node: &'a Node, prefix: &str) {
        let Some(edges) = self.outgoing.get(node.id.as_str()) else {
            return;
        };
        let edges = edges.clone();
        for (index, edge) in edges.iter().enumerate() {
            let last = index + 1 == edges.len();
            let (branch, indent) = if last {
                ("└─", "   ")
            } else {
                ("├─", "│  ")
            };
            let arrow = match rate_text(edge) {
                Some(rate) => format!("{branch} {rate} ─▶"),
                None => format!("{branch}──▶"),
            };
            let note = edge
                .kind
                .note()
                .map(|n| format!("{n}: "))
                .unwrap_or_default();
            let Some(target) = self.nodes.get(edge.to.as_str()).copied() else {
                continue;
            };
            let label = self.label(target);
            let has_children = self.outgoing.contains_key(target.id.as_str());
            if has_children && self.expanded.contains(target.id.as_str()) {
                let _ = writeln!(self.out, "{prefix}{arrow} {note}{label} (see above)");
                continue;
            }
            let _ = writeln!(self.out, "{prefix}{arrow} {note}{label}");
            self.expanded.insert(target.id.as_str());
            self.children(target, &format!("{prefix}{indent}"));
        }
    }

    fn label(&self, node: &Node) -> String {
        let mut label = if node.kind == "URL" {
            node.name.clone()
        } else {
            format!("{} {}", node.kind, node.display_name(self.home.as_deref()))
        };
        if node.role == Role::Trigger && !node.missing {
            let filter = node.filter.as_deref().unwrap_or("all events");
            let _ = write!(label, " [{filter}]");
        }
        if node.role == Role::Sink && !node.missing {
            let _ = write!(label, " (accepted {})", super::sink_rate(node));
        }
        if node.external && node.kind != "URL" {
            label.push_str(" (external)");
        }
        if let Some(problem) = node.problem() {
            let _ = write!(label, "  (not ready: {problem})");
        }
        label
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::graph::{EdgeKind, Node};

    pub(crate) fn node(kind: &str, role: Role, name: &str) -> Node {
        Node {
            id: format!("{kind}/default/{name}"),
            kind: kind.into(),
            role,
            api_version: None,
            namespace: "default".into(),
            name: name.into(),
            ready: Some(true),
            reason: None,
            message: None,
            address: None,
            filter: None,
            external: false,
            missing: false,
            rate: None,
        }
    }

    pub(crate) fn edge(from: &Node, to: &Node, kind: EdgeKind, rate: Option<f64>) -> Edge {
        Edge {
            from: from.id.clone(),
            to: to.id.clone(),
            kind,
            label: None,
            rate,
            count: Some(0),
        }
    }

    #[test]
    fn a_tree_per_namespace_with_rates_filters_and_problems() {
        let ping = node("PingSource", Role::Source, "tick");
        let hook = node("WebhookSource", Role::Source, "hook");
        let broker = node("Broker", Role::Broker, "default");
        let mut orders = node("Trigger", Role::Trigger, "orders");
        orders.filter = Some("type=order".into());
        let mut all = node("Trigger", Role::Trigger, "all");
        all.ready = Some(false);
        all.reason = Some("SubscriberNotResolved".into());
        let mut sink = node("EventDisplaySink", Role::Sink, "show");
        sink.rate = Some(2.0);
        let graph = Graph {
            edges: vec![
                edge(&ping, &broker, EdgeKind::Sink, Some(0.02)),
                edge(&hook, &broker, EdgeKind::Sink, Some(1.0)),
                edge(&broker, &orders, EdgeKind::Trigger, Some(1.5)),
                edge(&broker, &all, EdgeKind::Trigger, None),
                edge(&orders, &sink, EdgeKind::Subscriber, Some(1.5)),
                edge(&orders, &sink, EdgeKind::DeadLetter, Some(0.0)),
            ],
            nodes: vec![ping, hook, broker, orders, all, sink],
            ..Graph::default()
        };
        let expected = "\
namespace default
  PingSource tick
  └─ 0.02/s ─▶ Broker default
     ├─ - ─▶ Trigger all [all events]  (not ready: SubscriberNotResolved)
     └─ 1.50/s ─▶ Trigger orders [type=order]
        ├─ 1.50/s ─▶ EventDisplaySink show (accepted 2.00/s)
        └─ 0/s ─▶ dead letter: EventDisplaySink show (accepted 2.00/s)
  WebhookSource hook
  └─ 1.00/s ─▶ Broker default (see above)
";
        assert_eq!(text(&graph), expected);
    }

    #[test]
    fn an_empty_graph_says_so() {
        let graph = Graph {
            namespace: Some("team".into()),
            ..Graph::default()
        };
        assert_eq!(
            text(&graph),
            "no sources, brokers, triggers or sinks in namespace team\n"
        );
    }
}
