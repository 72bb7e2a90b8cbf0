//! The graph drawn as SVG without Graphviz: a column per role, left to right (sources,
//! brokers, triggers and channels, subscribers and sinks), a box per node coloured by its
//! state, and a curved arrow per edge labelled with its rate.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use super::{
    State, colours, column_of, details, edge_caption, home_namespace, node_title, state_of,
};
use crate::graph::build::shorten;
use crate::graph::{EdgeKind, Graph, Node};

const MARGIN: f64 = 24.0;
const HEADER: f64 = 28.0;
const LINE_HEIGHT: f64 = 15.0;
const ROW_GAP: f64 = 16.0;
const COLUMN_GAP: f64 = 150.0;
const MIN_BOX_WIDTH: f64 = 130.0;
/// The longest line in a box; longer text is cut with `…` (the full text is the tooltip).
const MAX_LINE_CHARS: usize = 40;
/// An estimate of a character's width at the font size used, for box widths.
const CHAR_WIDTH: f64 = 7.0;
const COLUMNS: usize = 4;

/// Where a node is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Placed {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
}

/// The lines of text in a node's box: its kind, its name, then its details (filter, rate,
/// problem).
fn box_lines(node: &Node, home: Option<&str>) -> Vec<String> {
    let mut lines = vec![
        if node.kind == "URL" {
            "URL".to_string()
        } else {
            node.kind.clone()
        },
        node_title(node, home),
    ];
    lines.extend(details(node));
    lines
        .into_iter()
        .map(|line| shorten(&line, MAX_LINE_CHARS))
        .collect()
}

/// The height of a box with `lines` lines of text.
fn box_height(lines: usize) -> f64 {
    LINE_HEIGHT * lines as f64 + 12.0
}

/// Places every node: columns by role (empty ones left out), and within a column nodes in
/// the order of what they connect to, so that edges cross little.
pub(crate) fn layout(graph: &Graph) -> (HashMap<String, Placed>, f64, f64) {
    let home = home_namespace(graph);
    let mut columns: Vec<Vec<&Node>> = vec![Vec::new(); COLUMNS];
    for node in &graph.nodes {
        columns[column_of(node.role)].push(node);
    }
    let mut position: HashMap<&str, f64> = HashMap::new();
    let mut neighbours: HashMap<&str, Vec<&str>> = HashMap::new();
    for edge in &graph.edges {
        neighbours.entry(&edge.to).or_default().push(&edge.from);
        neighbours.entry(&edge.from).or_default().push(&edge.to);
    }
    // Brokers first, by name; then each other column by the mean position of the nodes it
    // connects to that are placed already (sources after brokers, the rest left to right).
    let order = [1usize, 0, 2, 3];
    for column in order {
        let nodes = &mut columns[column];
        let key = |node: &Node| {
            let placed: Vec<f64> = neighbours
                .get(node.id.as_str())
                .into_iter()
                .flatten()
                .filter_map(|n| position.get(n).copied())
                .collect();
            if placed.is_empty() {
                f64::MAX
            } else {
                placed.iter().sum::<f64>() / placed.len() as f64
            }
        };
        let mut keyed: Vec<(f64, &Node)> = nodes.iter().map(|n| (key(n), *n)).collect();
        keyed.sort_by(|a, b| {
            a.0.total_cmp(&b.0).then_with(|| {
                (a.1.role, &a.1.namespace, &a.1.name).cmp(&(b.1.role, &b.1.namespace, &b.1.name))
            })
        });
        *nodes = keyed.into_iter().map(|(_, n)| n).collect();
        for (index, node) in nodes.iter().enumerate() {
            position.insert(&node.id, index as f64);
        }
    }
    let mut placed = HashMap::new();
    let mut x = MARGIN;
    let mut height: f64 = 0.0;
    for nodes in columns.iter().filter(|c| !c.is_empty()) {
        let width = nodes
            .iter()
            .flat_map(|n| box_lines(n, home.as_deref()))
            .map(|line| line.chars().count() as f64 * CHAR_WIDTH + 20.0)
            .fold(MIN_BOX_WIDTH, f64::max);
        let mut y = MARGIN + HEADER;
        for node in nodes {
            let box_height = box_height(box_lines(node, home.as_deref()).len());
            placed.insert(
                node.id.clone(),
                Placed {
                    x,
                    y,
                    width,
                    height: box_height,
                },
            );
            height = height.max(y + box_height);
            y += box_height + ROW_GAP;
        }
        x += width + COLUMN_GAP;
    }
    let width = (x - COLUMN_GAP + MARGIN).max(320.0);
    (
        placed,
        width,
        (height + MARGIN).max(MARGIN + HEADER + MARGIN),
    )
}

/// Renders the graph as a standalone SVG document.
pub fn svg(graph: &Graph) -> String {
    let home = home_namespace(graph);
    let (placed, width, height) = layout(graph);
    let mut out = String::new();
    let _ = writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
    );
    out.push_str(concat!(
        "<defs>",
        r##"<marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#5f6368"/></marker>"##,
        r##"<marker id="arrow-dead" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#c5221f"/></marker>"##,
        "</defs>\n"
    ));
    let _ = writeln!(
        out,
        r#"<rect x="0" y="0" width="{width:.0}" height="{height:.0}" fill="white"/>"#
    );
    let scope = match &graph.namespace {
        Some(ns) => format!("namespace {ns}"),
        None => "all namespaces".to_string(),
    };
    let title = format!(
        "Rivulet topology, {scope}; rates over the last {} s",
        graph.rate_window_seconds
    );
    let _ = writeln!(
        out,
        r##"<text x="{MARGIN}" y="{:.0}" font-size="14" font-weight="bold" fill="#202124">{}</text>"##,
        MARGIN + 4.0,
        escape(&title)
    );
    if graph.nodes.is_empty() {
        let _ = writeln!(
            out,
            r##"<text x="{MARGIN}" y="{:.0}" fill="#5f6368">no sources, brokers, triggers or sinks</text>"##,
            MARGIN + HEADER + 10.0
        );
    }
    let ports = ports(graph, &placed);
    for (index, edge) in graph.edges.iter().enumerate() {
        let (Some(from), Some(to)) = (placed.get(&edge.from), placed.get(&edge.to)) else {
            continue;
        };
        draw_edge(&mut out, edge, from, to, ports[index]);
    }
    let by_id: BTreeMap<&str, &Node> = graph.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    for (id, node) in by_id {
        if let Some(at) = placed.get(id) {
            draw_node(&mut out, node, at, home.as_deref());
        }
    }
    out.push_str("</svg>\n");
    out
}

/// Where each edge leaves its source and reaches its target, as fractions of the boxes'
/// heights: a node's edges are spread over its side in the order of the nodes at their other
/// end, so that they neither overlap nor cross at the box.
fn ports(graph: &Graph, placed: &HashMap<String, Placed>) -> Vec<(f64, f64)> {
    let centre = |id: &str| placed.get(id).map_or(0.0, |p| p.y + p.height / 2.0);
    let mut leaving: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut arriving: HashMap<&str, Vec<usize>> = HashMap::new();
    for (index, edge) in graph.edges.iter().enumerate() {
        leaving.entry(&edge.from).or_default().push(index);
        arriving.entry(&edge.to).or_default().push(index);
    }
    let mut ports = vec![(0.5, 0.5); graph.edges.len()];
    for edges in leaving.values_mut() {
        edges.sort_by(|a, b| centre(&graph.edges[*a].to).total_cmp(&centre(&graph.edges[*b].to)));
        for (rank, index) in edges.iter().enumerate() {
            ports[*index].0 = (rank + 1) as f64 / (edges.len() + 1) as f64;
        }
    }
    for edges in arriving.values_mut() {
        edges.sort_by(|a, b| {
            centre(&graph.edges[*a].from).total_cmp(&centre(&graph.edges[*b].from))
        });
        for (rank, index) in edges.iter().enumerate() {
            ports[*index].1 = (rank + 1) as f64 / (edges.len() + 1) as f64;
        }
    }
    ports
}

fn draw_edge(
    out: &mut String,
    edge: &crate::graph::Edge,
    from: &Placed,
    to: &Placed,
    (leave, arrive): (f64, f64),
) {
    let (x1, y1) = (from.x + from.width, from.y + from.height * leave);
    // Forward edges enter the target's left side; edges back (a reply to a broker) or
    // within a column go round to its right side.
    let forward = to.x > from.x + from.width;
    let (x2, y2) = if forward {
        (to.x, to.y + to.height * arrive)
    } else {
        (to.x + to.width, to.y + to.height * arrive)
    };
    let (c1, c2) = if forward {
        let bend = ((x2 - x1) / 2.0).max(30.0);
        ((x1 + bend, y1), (x2 - bend, y2))
    } else {
        let reach = 60.0 + (y2 - y1).abs() / 4.0;
        ((x1 + reach, y1), (x2 + reach, y2))
    };
    let (colour, marker, dash) = match edge.kind {
        EdgeKind::DeadLetter => ("#c5221f", "arrow-dead", r#" stroke-dasharray="5,4""#),
        _ => ("#5f6368", "arrow", ""),
    };
    let _ = writeln!(
        out,
        r#"<path d="M{x1:.1},{y1:.1} C{:.1},{:.1} {:.1},{:.1} {x2:.1},{y2:.1}" fill="none" stroke="{colour}" stroke-width="1.4"{dash} marker-end="url(#{marker})"/>"#,
        c1.0, c1.1, c2.0, c2.1
    );
    if let Some(caption) = edge_caption(edge) {
        // The curve's midpoint.
        let mx = (x1 + 3.0 * c1.0 + 3.0 * c2.0 + x2) / 8.0;
        let my = (y1 + 3.0 * c1.1 + 3.0 * c2.1 + y2) / 8.0;
        let _ = writeln!(
            out,
            r#"<text x="{mx:.1}" y="{:.1}" text-anchor="middle" font-size="11" fill="{colour}" stroke="white" stroke-width="3" paint-order="stroke">{}</text>"#,
            my - 4.0,
            escape(&caption)
        );
    }
}

fn draw_node(out: &mut String, node: &Node, at: &Placed, home: Option<&str>) {
    let state = state_of(node);
    let (fill, stroke) = colours(state);
    let dash = if state == State::External {
        r#" stroke-dasharray="4,3""#
    } else {
        ""
    };
    let mut tooltip = match node.kind.as_str() {
        "URL" => node.name.clone(),
        kind if node.namespace.is_empty() => format!("{kind} {}", node.name),
        kind => format!("{kind} {}/{}", node.namespace, node.name),
    };
    for extra in [&node.address, &node.message].into_iter().flatten() {
        tooltip.push('\n');
        tooltip.push_str(extra);
    }
    let _ = writeln!(out, r#"<g class="node" id="{}">"#, escape(&node.id));
    let _ = writeln!(out, "<title>{}</title>", escape(&tooltip));
    let _ = writeln!(
        out,
        r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" rx="8" fill="{fill}" stroke="{stroke}" stroke-width="1.5"{dash}/>"#,
        at.x, at.y, at.width, at.height
    );
    let lines = box_lines(node, home);
    for (index, line) in lines.iter().enumerate() {
        let style = match index {
            0 => r##"font-size="10" fill="#5f6368""##,
            1 => r##"font-weight="bold" fill="#202124""##,
            _ => r##"font-size="10" fill="#3c4043""##,
        };
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" {style}>{}</text>"#,
            at.x + 10.0,
            at.y + LINE_HEIGHT + index as f64 * LINE_HEIGHT,
            escape(line)
        );
    }
    out.push_str("</g>\n");
}

/// Text made safe for XML content and attribute values; characters XML 1.0 does not allow
/// are left out.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || matches!(c, '\u{FFFE}' | '\u{FFFF}') => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Role;
    use crate::graph::render::text::tests::{edge, node};

    /// A small well-formedness check: tags nest and close, attributes are quoted, and `&`
    /// only starts one of XML's entities.
    fn check_xml(text: &str) -> Result<(), String> {
        let body = text
            .strip_prefix(r#"<?xml version="1.0" encoding="UTF-8"?>"#)
            .ok_or("no XML declaration")?;
        let mut open: Vec<String> = Vec::new();
        let mut rest = body;
        let mut roots = 0;
        while let Some(start) = rest.find('<') {
            check_text(&rest[..start])?;
            let end = rest[start..].find('>').ok_or("unclosed tag")? + start;
            let tag = &rest[start + 1..end];
            rest = &rest[end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                let expected = open.pop().ok_or(format!("stray </{name}>"))?;
                if expected != name {
                    return Err(format!("</{name}> closes <{expected}>"));
                }
                continue;
            }
            let self_closing = tag.ends_with('/');
            let tag = tag.trim_end_matches('/');
            let (name, attributes) = tag.split_once(' ').unwrap_or((tag, ""));
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(format!("bad tag name {name:?}"));
            }
            check_attributes(attributes)?;
            if open.is_empty() {
                roots += 1;
            }
            if !self_closing {
                open.push(name.to_string());
            }
        }
        check_text(rest)?;
        if !open.is_empty() {
            return Err(format!("unclosed {open:?}"));
        }
        if roots != 1 {
            return Err(format!("{roots} root elements"));
        }
        Ok(())
    }

    fn check_text(text: &str) -> Result<(), String> {
        if text.contains('>') {
            return Err(format!("bare > in {text:?}"));
        }
        for (at, _) in text.match_indices('&') {
            let entity = &text[at..];
            if !["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                .iter()
                .any(|e| entity.starts_with(e))
            {
                return Err(format!("bare & in {text:?}"));
            }
        }
        Ok(())
    }

    fn check_attributes(mut text: &str) -> Result<(), String> {
        loop {
            text = text.trim_start();
            if text.is_empty() {
                return Ok(());
            }
            let (name, rest) = text.split_once("=\"").ok_or(format!("unquoted {text:?}"))?;
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(format!("bad attribute name {name:?}"));
            }
            let (value, rest) = rest.split_once('"').ok_or("unterminated value")?;
            if value.contains('<') {
                return Err(format!("< in attribute {value:?}"));
            }
            check_text(value)?;
            text = rest;
        }
    }

    fn sample() -> Graph {
        let source = node("PingSource", Role::Source, "tick");
        let broker = node("Broker", Role::Broker, "default");
        let mut trigger = node("Trigger", Role::Trigger, "a<b>&\"c\"");
        trigger.filter = Some("type='x' & y<z".into());
        let mut url = node("URL", Role::External, "http://x.example/?a=1&b=<2>");
        url.id = format!("url:{}", url.name);
        url.namespace.clear();
        url.external = true;
        let mut sink = node("KafkaSink", Role::Sink, "k");
        sink.ready = Some(false);
        sink.reason = Some("Bad\u{1}Reason".into());
        sink.rate = Some(3.0);
        Graph {
            edges: vec![
                edge(&source, &broker, EdgeKind::Sink, Some(0.5)),
                edge(&broker, &trigger, EdgeKind::Trigger, Some(12.25)),
                edge(&trigger, &url, EdgeKind::Subscriber, None),
                edge(&trigger, &sink, EdgeKind::DeadLetter, Some(0.0)),
                // A reply back into the broker, drawn round the right side.
                edge(&sink, &broker, EdgeKind::Sink, None),
            ],
            nodes: vec![source, broker, trigger, url, sink],
            rate_window_seconds: 60,
            ..Graph::default()
        }
    }

    #[test]
    fn the_checker_refuses_what_is_not_well_formed() {
        let head = r#"<?xml version="1.0" encoding="UTF-8"?>"#;
        assert!(check_xml(&format!("{head}<svg><g></svg>")).is_err());
        assert!(check_xml(&format!("{head}<svg>a & b</svg>")).is_err());
        assert!(check_xml(&format!("{head}<svg x=1/>")).is_err());
        assert!(check_xml(&format!("{head}<svg/><svg/>")).is_err());
        assert!(check_xml(&format!("{head}<svg><t a=\"&lt;\">x &amp; y</t></svg>")).is_ok());
    }

    #[test]
    fn names_are_escaped_and_the_document_is_well_formed() {
        let svg = svg(&sample());
        check_xml(&svg).unwrap_or_else(|e| panic!("{e}:\n{svg}"));
        assert!(svg.contains("a&lt;b&gt;&amp;&quot;c&quot;"), "{svg}");
        assert!(svg.contains("[type=&apos;x&apos; &amp; y&lt;z]"), "{svg}");
        assert!(
            svg.contains("http://x.example/?a=1&amp;b=&lt;2&gt;"),
            "{svg}"
        );
        assert!(!svg.contains('\u{1}'));
        assert!(
            svg.contains(">12.2/s<") || svg.contains(">12.3/s<"),
            "{svg}"
        );
        assert!(svg.contains(">dead letter 0/s<"), "{svg}");
        let empty = super::svg(&Graph::default());
        check_xml(&empty).unwrap_or_else(|e| panic!("{e}:\n{empty}"));
    }

    #[test]
    fn columns_run_left_to_right_and_boxes_do_not_overlap() {
        let graph = sample();
        let (placed, width, height) = layout(&graph);
        let at = |id: &str| placed[id];
        let source = at("PingSource/default/tick");
        let broker = at("Broker/default/default");
        let trigger = at("Trigger/default/a<b>&\"c\"");
        let url = at("url:http://x.example/?a=1&b=<2>");
        let sink = at("KafkaSink/default/k");
        assert!(source.x + source.width < broker.x);
        assert!(broker.x + broker.width < trigger.x);
        assert!(trigger.x + trigger.width < url.x);
        assert_eq!(url.x, sink.x);
        // Boxes of a column follow each other with a gap.
        let (upper, lower) = if url.y < sink.y {
            (url, sink)
        } else {
            (sink, url)
        };
        assert!(upper.y + upper.height + ROW_GAP <= lower.y);
        for p in placed.values() {
            assert!(p.x + p.width <= width && p.y + p.height <= height);
        }
        // A not-ready trigger shows its filter and its problem.
        assert_eq!(trigger.height, box_height(3));
        // Long names are cut to fit their box.
        let mut long = node("Broker", Role::Broker, &"n".repeat(300));
        long.ready = None;
        let lines = box_lines(&long, Some("default"));
        assert!(
            lines.iter().all(|l| l.chars().count() <= MAX_LINE_CHARS),
            "{lines:?}"
        );
    }

    #[test]
    fn an_empty_column_takes_no_room() {
        let broker = node("Broker", Role::Broker, "default");
        let graph = Graph {
            nodes: vec![broker],
            ..Graph::default()
        };
        let (placed, width, _) = layout(&graph);
        assert_eq!(placed["Broker/default/default"].x, MARGIN);
        assert!(width < 400.0);
    }
}
