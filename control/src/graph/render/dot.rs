//! The graph in Graphviz's DOT language, left to right, a cluster per namespace:
//! `rivulet graph -o dot | dot -Tpng > graph.png`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{State, colours, details, edge_caption, node_title, state_of};
use crate::graph::{EdgeKind, Graph, Node};

/// Renders the graph as a DOT `digraph`.
pub fn dot(graph: &Graph) -> String {
    let mut out = String::from("digraph rivulet {\n");
    out.push_str("  rankdir=LR;\n");
    out.push_str(
        "  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\", fontsize=11];\n",
    );
    out.push_str("  edge [fontname=\"Helvetica\", fontsize=10];\n");
    let mut by_namespace: BTreeMap<&str, Vec<&Node>> = BTreeMap::new();
    for node in &graph.nodes {
        by_namespace
            .entry(node.namespace.as_str())
            .or_default()
            .push(node);
    }
    for (index, (namespace, nodes)) in by_namespace.iter().enumerate() {
        // Nodes without a namespace (URLs) stay outside every cluster.
        let indent = if namespace.is_empty() {
            "  "
        } else {
            let _ = writeln!(out, "  subgraph cluster_{index} {{");
            let _ = writeln!(
                out,
                "    label={};",
                quoted(&format!("namespace {namespace}"))
            );
            out.push_str("    style=dashed; color=\"#9aa0a6\";\n");
            "    "
        };
        for node in nodes {
            let _ = writeln!(
                out,
                "{indent}{} [{}];",
                quoted(&node.id),
                node_attributes(node)
            );
        }
        if !namespace.is_empty() {
            out.push_str("  }\n");
        }
    }
    for edge in &graph.edges {
        let mut attributes = Vec::new();
        if let Some(caption) = edge_caption(edge) {
            attributes.push(format!("label={}", quoted(&caption)));
        }
        match edge.kind {
            EdgeKind::DeadLetter => attributes.push("style=dashed, color=\"#c5221f\"".into()),
            EdgeKind::Channel => attributes.push("color=\"#5f6368\"".into()),
            _ => {}
        }
        let _ = writeln!(
            out,
            "  {} -> {}{};",
            quoted(&edge.from),
            quoted(&edge.to),
            if attributes.is_empty() {
                String::new()
            } else {
                format!(" [{}]", attributes.join(", "))
            }
        );
    }
    out.push_str("}\n");
    out
}

fn node_attributes(node: &Node) -> String {
    let mut lines = Vec::new();
    if node.kind != "URL" {
        lines.push(node.kind.clone());
    }
    // The cluster names the namespace.
    lines.push(node_title(node, Some(node.namespace.as_str())));
    lines.extend(details(node));
    let state = state_of(node);
    let (fill, stroke) = colours(state);
    let mut attributes = format!(
        "label={}, fillcolor=\"{fill}\", color=\"{stroke}\"",
        quoted(&lines.join("\n"))
    );
    if state == State::External {
        attributes.push_str(", style=\"rounded,dashed\"");
    }
    if let Some(message) = &node.message {
        let _ = write!(attributes, ", tooltip={}", quoted(message));
    }
    attributes
}

/// A DOT string: quotes and backslashes escaped, line breaks as `\n`, other control
/// characters left out.
pub(super) fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Role;
    use crate::graph::render::text::tests::{edge, node};

    #[test]
    fn strings_are_quoted_for_dot() {
        assert_eq!(quoted(r#"a "b" \c"#), r#""a \"b\" \\c""#);
        assert_eq!(quoted("one\ntwo\u{7}"), r#""one\ntwo""#);
    }

    #[test]
    fn every_node_and_edge_is_in_a_balanced_digraph() {
        let source = node("PingSource", Role::Source, "tick");
        let broker = node("Broker", Role::Broker, "default");
        let mut url = node("URL", Role::External, "http://x.example/?a=\"1\"&b=2");
        url.id = "url:http://x.example/?a=\"1\"&b=2".into();
        url.namespace.clear();
        url.external = true;
        let graph = Graph {
            edges: vec![
                edge(&source, &broker, EdgeKind::Sink, Some(2.0)),
                edge(&broker, &url, EdgeKind::DeadLetter, None),
            ],
            nodes: vec![source, broker, url],
            ..Graph::default()
        };
        let text = dot(&graph);
        assert!(
            text.starts_with("digraph rivulet {\n") && text.ends_with("}\n"),
            "{text}"
        );
        assert_eq!(
            text.matches('{').count(),
            text.matches('}').count(),
            "{text}"
        );
        assert!(
            text.contains(
                r#""PingSource/default/tick" -> "Broker/default/default" [label="2.00/s"];"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#""Broker/default/default" -> "url:http://x.example/?a=\"1\"&b=2" [label="dead letter -", style=dashed"#),
            "{text}"
        );
        assert!(text.contains("subgraph cluster_"), "{text}");
        // The URL has no namespace, so no cluster.
        assert!(text.contains("\n  \"url:http"), "{text}");
    }
}
