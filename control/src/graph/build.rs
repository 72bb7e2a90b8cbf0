//! Builds the graph from live objects, following each object's references the way the
//! runtime resolves them: a `ref` names an object of a kind Rivulet serves (or something
//! outside, such as a Kubernetes Service), a `uri` is an address, which may be one an object
//! publishes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use rivulet_core::resources::{Broker, KindInfo, find_kind_by_name, kinds};
use rivulet_store::{StoreError, object_key};

use super::rates::{Counter, RateTable, Series};
use super::{Edge, EdgeKind, Graph, GraphError, Node, RATE_WINDOW, ready_of};
use crate::runtime::Context;

/// Where a node sits in the flow, which is also its column in a drawing, left to right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    /// Brings events in from outside (PingSource, KafkaSource, WebhookSource, ...).
    Source,
    Broker,
    /// The channel behind a broker (its backend), or a channel kind.
    Channel,
    Trigger,
    /// An addressable kind that takes events (KafkaSink, EventDisplaySink, ...).
    Sink,
    /// A URL, or an object of a kind Rivulet does not serve.
    External,
}

/// The role objects of `kind` play, `None` for kinds outside the flow (ConfigMaps,
/// EventTypes, policies).
pub fn role_of(kind: &KindInfo) -> Option<Role> {
    match (kind.group, kind.kind) {
        ("eventing.knative.dev", "Broker") => Some(Role::Broker),
        ("eventing.knative.dev", "Trigger") => Some(Role::Trigger),
        (group, _) if group.starts_with("sources.") => Some(Role::Source),
        (group, kind) if group.starts_with("sinks.") || kind.ends_with("Sink") => Some(Role::Sink),
        ("messaging.knative.dev" | "messaging.rivulet.dev", kind) if kind.ends_with("Channel") => {
            Some(Role::Channel)
        }
        // A channel's consumer, in the place a trigger has.
        ("messaging.knative.dev", "Subscription") => Some(Role::Trigger),
        // Entry points, in the place a broker has; their parts are channels and Subscriptions.
        ("flows.knative.dev", _) => Some(Role::Broker),
        _ => None,
    }
}

/// The longest filter summary kept; longer ones are cut with `…`.
const FILTER_CHARS: usize = 80;

/// Reads the live objects (in `namespace`, or all) and builds their graph.
pub async fn from_store(
    ctx: &Context,
    rates: &RateTable,
    namespace: Option<&str>,
) -> Result<Graph, GraphError> {
    let mut objects = Vec::new();
    for kind in kinds().into_iter().filter(|k| role_of(k).is_some()) {
        match ctx.store.list(kind, namespace).await {
            Ok(listed) => objects.extend(listed.into_iter().map(|o| (kind, o))),
            // On Kubernetes a kind whose CRD is not installed has no objects.
            Err(StoreError::Api { code: 404, .. }) => {}
            Err(source) => {
                return Err(GraphError::Store {
                    kind: kind.kind,
                    source,
                });
            }
        }
    }
    if let Some(namespace) = namespace {
        objects.extend(referenced_elsewhere(ctx, &objects, namespace).await);
    }
    let mut channels = HashMap::new();
    for (kind, object) in &objects {
        if kind.kind == "Broker" && role_of(kind) == Some(Role::Broker) {
            let (ns, name) = object_key(object);
            if let Some(backend) = backend_of(ctx, object, &ns, &name).await {
                channels.insert((ns, name), backend);
            }
        }
    }
    let mut graph = build(objects, &channels, namespace, &|series| {
        let (rate, total) = rates.rate(series);
        (rate, Some(total))
    });
    graph.untracked_series = rates.untracked();
    Ok(graph)
}

/// Objects outside `namespace` that objects in it name by `ref`, so they show as they are.
async fn referenced_elsewhere(
    ctx: &Context,
    objects: &[(&'static KindInfo, Value)],
    namespace: &str,
) -> Vec<(&'static KindInfo, Value)> {
    let mut wanted = BTreeSet::new();
    for (_, object) in objects {
        if let Some(spec) = object.get("spec") {
            collect_refs(spec, namespace, &mut wanted);
        }
    }
    let mut found = Vec::new();
    for (kind, ns, name) in wanted {
        if ns == namespace {
            continue;
        }
        let Some(kind) = served_kind(None, &kind).filter(|k| role_of(k).is_some()) else {
            continue;
        };
        if let Ok(Some(object)) = ctx.store.get(kind, &ns, &name).await {
            found.push((kind, object));
        }
    }
    found
}

/// Every `ref` (kind, namespace, name) inside `value`.
fn collect_refs(value: &Value, namespace: &str, out: &mut BTreeSet<(String, String, String)>) {
    match value {
        Value::Object(map) => {
            if let Some(reference) = map.get("ref") {
                let text = |field| reference.get(field).and_then(Value::as_str);
                if let (Some(kind), Some(name)) = (text("kind"), text("name")) {
                    let ns = text("namespace").unwrap_or(namespace);
                    out.insert((kind.to_string(), ns.to_string(), name.to_string()));
                }
            }
            for value in map.values() {
                collect_refs(value, namespace, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, namespace, out)),
        _ => {}
    }
}

/// The backend of a broker's channel: the one it runs on here, else the one its class and
/// config pick.
async fn backend_of(ctx: &Context, object: &Value, namespace: &str, name: &str) -> Option<String> {
    if let Some(handle) = ctx.brokers.get(namespace, name) {
        return Some(handle.backend.to_string());
    }
    let broker = rivulet_core::resources::validation::typed::<Broker>(object).ok()?;
    crate::runtime::choose_backend(&broker, namespace, ctx)
        .await
        .ok()
        .map(|choice| choice.backend)
}

/// The kind Rivulet serves that a `ref` names, as the runtime finds it.
fn served_kind(api_version: Option<&str>, kind: &str) -> Option<&'static KindInfo> {
    find_kind_by_name(api_version, kind).filter(|k| k.kind == kind)
}

/// A counter's rate and total.
type RateOf<'a> = &'a dyn Fn(&Series) -> (Option<f64>, Option<u64>);

/// The graph of `objects`; `channels` gives each broker's channel backend by (namespace,
/// name), `rate` each counter series' rate and total.
pub fn build(
    objects: Vec<(&'static KindInfo, Value)>,
    channels: &HashMap<(String, String), String>,
    namespace: Option<&str>,
    rate: RateOf<'_>,
) -> Graph {
    let mut builder = Builder {
        nodes: BTreeMap::new(),
        edges: Vec::new(),
        addresses: HashMap::new(),
        rate,
    };
    // The dead-letter sinks of brokers and channels, the default of their triggers and
    // Subscriptions.
    let mut broker_dead_letters = HashMap::new();
    let mut channel_dead_letters = HashMap::new();
    for (kind, object) in &objects {
        builder.add_object(kind, object);
        let Some(sink) = object.pointer("/spec/delivery/deadLetterSink") else {
            continue;
        };
        match role_of(kind) {
            Some(Role::Broker) => {
                broker_dead_letters.insert(object_key(object), sink.clone());
            }
            Some(Role::Channel) => {
                channel_dead_letters.insert(object_key(object), sink.clone());
            }
            _ => {}
        }
    }
    for (kind, object) in &objects {
        let (ns, name) = object_key(object);
        let id = object_id(kind.kind, &ns, &name);
        match (role_of(kind), kind.kind) {
            (Some(Role::Broker), "Broker") => {
                if let Some(backend) = channels.get(&(ns.clone(), name.clone())) {
                    builder.add_channel(&id, object, &ns, &name, backend);
                }
            }
            (Some(Role::Broker), flow) => builder.add_flow(&id, flow, object, &ns, &name),
            (Some(Role::Channel), "Channel") => {
                // A generic Channel hands its events to the channel behind it.
                let backing = object
                    .pointer("/status/channel/kind")
                    .and_then(Value::as_str)
                    .map(|kind| builder.object_target(kind, None, &ns, &name));
                if let Some(backing) = backing {
                    builder.edge(&id, backing, EdgeKind::Channel, None);
                }
            }
            (Some(Role::Trigger), "Subscription") => {
                builder.add_subscription(&id, object, &ns, &name, &channel_dead_letters)
            }
            (Some(Role::Trigger), _) => {
                builder.add_trigger(&id, object, &ns, &name, &broker_dead_letters)
            }
            (Some(Role::Source), _) => builder.add_source(&id, kind, object, &ns, &name),
            (Some(Role::Sink), _) => {
                let series = Series::new(Counter::SinkAccepted, kind.kind, &ns, &name);
                let (rate, _) = (builder.rate)(&series);
                if let Some(node) = builder.nodes.get_mut(&id) {
                    node.rate = rate;
                }
            }
            _ => {}
        }
    }
    let mut nodes: Vec<Node> = builder.nodes.into_values().collect();
    nodes.sort_by(|a, b| {
        (a.role, &a.namespace, &a.kind, &a.name).cmp(&(b.role, &b.namespace, &b.kind, &b.name))
    });
    let mut edges = builder.edges;
    edges.sort_by(|a, b| (&a.from, &a.to, a.kind).cmp(&(&b.from, &b.to, b.kind)));
    edges.dedup_by(|a, b| a.from == b.from && a.to == b.to && a.kind == b.kind);
    Graph {
        namespace: namespace.map(str::to_string),
        rate_window_seconds: RATE_WINDOW.as_secs(),
        nodes,
        edges,
        untracked_series: 0,
    }
}

fn object_id(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind}/{namespace}/{name}")
}

struct Builder<'a> {
    nodes: BTreeMap<String, Node>,
    edges: Vec<Edge>,
    /// Addresses objects publish (without a trailing `/`), to the object's node.
    addresses: HashMap<String, String>,
    rate: RateOf<'a>,
}

impl Builder<'_> {
    fn add_object(&mut self, kind: &'static KindInfo, object: &Value) {
        let (namespace, name) = object_key(object);
        let id = object_id(kind.kind, &namespace, &name);
        let (ready, reason, message) = ready_of(object);
        let address = object
            .pointer("/status/address/url")
            .and_then(Value::as_str)
            .map(str::to_string);
        let published = address.iter().cloned().chain(
            object
                .pointer("/status/addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|a| a.get("url").and_then(Value::as_str).map(str::to_string)),
        );
        for url in published {
            self.addresses
                .entry(url.trim_end_matches('/').to_string())
                .or_insert_with(|| id.clone());
        }
        let filter = (role_of(kind) == Some(Role::Trigger))
            .then(|| object.get("spec").and_then(filter_summary))
            .flatten();
        self.nodes.insert(
            id.clone(),
            Node {
                id,
                kind: kind.kind.to_string(),
                role: role_of(kind).unwrap_or(Role::External),
                api_version: Some(kind.api_version()),
                namespace,
                name,
                ready,
                reason,
                message,
                address,
                filter,
                external: false,
                missing: false,
                rate: None,
            },
        );
    }

    fn edge(&mut self, from: &str, to: String, kind: EdgeKind, series: Option<Series>) {
        let (rate, count) = match &series {
            Some(series) => (self.rate)(series),
            None => (None, None),
        };
        self.edges.push(Edge {
            from: from.to_string(),
            to,
            kind,
            label: None,
            rate,
            count,
        });
    }

    fn add_channel(
        &mut self,
        broker_id: &str,
        object: &Value,
        ns: &str,
        name: &str,
        backend: &str,
    ) {
        let id = format!("channel/{ns}/{name}");
        // The channel is as ready as the broker's ingress.
        let ingress = object
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|conditions| {
                conditions
                    .iter()
                    .find(|c| c.get("type").and_then(Value::as_str) == Some("IngressReady"))
            });
        let text = |field: &str| {
            ingress
                .and_then(|c| c.get(field))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        self.nodes.insert(
            id.clone(),
            Node {
                id: id.clone(),
                kind: "Channel".into(),
                role: Role::Channel,
                api_version: None,
                namespace: ns.to_string(),
                name: backend.to_string(),
                ready: ingress.map(|_| text("status").as_deref() == Some("True")),
                reason: text("reason"),
                message: text("message"),
                address: None,
                filter: None,
                external: false,
                missing: false,
                rate: None,
            },
        );
        let series = Series::new(Counter::BrokerAccepted, "Broker", ns, name);
        self.edge(broker_id, id, EdgeKind::Channel, Some(series));
    }

    fn add_trigger(
        &mut self,
        id: &str,
        object: &Value,
        ns: &str,
        name: &str,
        broker_dead_letters: &HashMap<(String, String), Value>,
    ) {
        let spec = object.get("spec");
        let series = |counter| Series::new(counter, "Trigger", ns, name);
        if let Some(broker) = spec.and_then(|s| s.get("broker")).and_then(Value::as_str) {
            let broker_id = self.object_target("Broker", None, ns, broker);
            let filter = self.nodes.get(id).and_then(|n| n.filter.clone());
            self.edge(
                &broker_id,
                id.to_string(),
                EdgeKind::Trigger,
                Some(series(Counter::TriggerMatched)),
            );
            if let Some(edge) = self.edges.last_mut() {
                edge.label = filter;
            }
            // Knative: a trigger's delivery replaces its broker's entirely when it sets
            // anything, the dead-letter sink included.
            let own = spec
                .and_then(|s| s.get("delivery"))
                .and_then(Value::as_object)
                .filter(|d| d.values().any(|v| !v.is_null()));
            let dead_letter = match own {
                Some(delivery) => delivery.get("deadLetterSink").cloned(),
                None => broker_dead_letters
                    .get(&(ns.to_string(), broker.to_string()))
                    .cloned(),
            };
            if let Some(target) = dead_letter.and_then(|d| self.destination(&d, ns)) {
                self.edge(
                    id,
                    target,
                    EdgeKind::DeadLetter,
                    Some(series(Counter::TriggerDeadLettered)),
                );
            }
        }
        if let Some(target) = spec
            .and_then(|s| s.get("subscriber"))
            .and_then(|d| self.destination(d, ns))
        {
            self.edge(
                id,
                target,
                EdgeKind::Subscriber,
                Some(series(Counter::TriggerDelivered)),
            );
        }
    }

    /// A Subscription: from its channel, to its subscriber, its reply and its dead-letter
    /// sink (its own delivery's, else its channel's).
    fn add_subscription(
        &mut self,
        id: &str,
        object: &Value,
        ns: &str,
        name: &str,
        channel_dead_letters: &HashMap<(String, String), Value>,
    ) {
        let consumer = format!("subscription:{name}");
        let series = |counter| Series::new(counter, "Subscription", ns, &consumer);
        let spec = object.get("spec");
        let channel = spec.and_then(|s| s.get("channel"));
        let channel_name = channel.and_then(|c| c.get("name")).and_then(Value::as_str);
        if let (Some(channel), Some(channel_name)) = (channel, channel_name) {
            let kind = channel
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("Channel");
            let api_version = channel.get("apiVersion").and_then(Value::as_str);
            let channel_id = self.object_target(kind, api_version, ns, channel_name);
            self.edge(
                &channel_id,
                id.to_string(),
                EdgeKind::Trigger,
                Some(series(Counter::TriggerMatched)),
            );
        }
        if let Some(target) = spec
            .and_then(|s| s.get("subscriber"))
            .and_then(|d| self.destination(d, ns))
        {
            self.edge(
                id,
                target,
                EdgeKind::Subscriber,
                Some(series(Counter::TriggerDelivered)),
            );
        }
        if let Some(target) = spec
            .and_then(|s| s.get("reply"))
            .and_then(|d| self.destination(d, ns))
        {
            self.edge(id, target, EdgeKind::Subscriber, None);
            if let Some(edge) = self.edges.last_mut() {
                edge.label = Some("reply".into());
            }
        }
        let own = spec
            .and_then(|s| s.get("delivery"))
            .and_then(Value::as_object)
            .filter(|d| d.values().any(|v| !v.is_null()));
        let dead_letter = match own {
            Some(delivery) => delivery.get("deadLetterSink").cloned(),
            None => channel_name.and_then(|channel| {
                channel_dead_letters
                    .get(&(ns.to_string(), channel.to_string()))
                    .cloned()
            }),
        };
        if let Some(target) = dead_letter.and_then(|d| self.destination(&d, ns)) {
            self.edge(
                id,
                target,
                EdgeKind::DeadLetter,
                Some(series(Counter::TriggerDeadLettered)),
            );
        }
    }

    /// A Sequence or Parallel: into the channel it takes events at (its first step's, its
    /// ingress channel), of the kind of its channel template.
    fn add_flow(&mut self, id: &str, kind: &str, object: &Value, ns: &str, name: &str) {
        let first = match kind {
            "Sequence" => format!("{name}-kn-sequence-0"),
            "Parallel" => format!("{name}-kn-parallel"),
            _ => return,
        };
        let template = object.pointer("/spec/channelTemplate");
        let channel_kind = template
            .and_then(|t| t.get("kind"))
            .and_then(Value::as_str)
            .or_else(|| {
                object
                    .pointer("/status/channelStatuses/0/channel/kind")
                    .or_else(|| object.pointer("/status/ingressChannelStatus/channel/kind"))
                    .and_then(Value::as_str)
            });
        if let Some(channel_kind) = channel_kind {
            let api_version = template
                .and_then(|t| t.get("apiVersion"))
                .and_then(Value::as_str);
            let channel = self.object_target(channel_kind, api_version, ns, &first);
            self.edge(id, channel, EdgeKind::Channel, None);
        }
    }

    fn add_source(
        &mut self,
        id: &str,
        kind: &'static KindInfo,
        object: &Value,
        ns: &str,
        name: &str,
    ) {
        let series = |counter| Series::new(counter, kind.kind, ns, name);
        if let Some(target) = object
            .pointer("/spec/sink")
            .and_then(|d| self.destination(d, ns))
        {
            self.edge(
                id,
                target,
                EdgeKind::Sink,
                Some(series(Counter::SourceSent)),
            );
        }
        if let Some(target) = object
            .pointer("/spec/delivery/deadLetterSink")
            .and_then(|d| self.destination(d, ns))
        {
            self.edge(
                id,
                target,
                EdgeKind::DeadLetter,
                Some(series(Counter::SourceDeadLettered)),
            );
        }
    }

    /// The node a destination (`ref`, `uri`, or both) points at, added when it is not an
    /// object of the graph.
    fn destination(&mut self, destination: &Value, namespace: &str) -> Option<String> {
        let text = |value: &Value, field: &str| {
            value
                .get(field)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        if let Some(reference) = destination.get("ref").filter(|r| r.is_object()) {
            let kind = text(reference, "kind")?;
            let name = text(reference, "name")?;
            let ns = text(reference, "namespace").unwrap_or_else(|| namespace.to_string());
            let api_version = text(reference, "apiVersion");
            return Some(self.object_target(&kind, api_version.as_deref(), &ns, &name));
        }
        let uri = text(destination, "uri")?;
        if let Some(id) = self.addresses.get(uri.trim_end_matches('/')) {
            return Some(id.clone());
        }
        let id = format!("url:{uri}");
        self.nodes.entry(id.clone()).or_insert_with(|| Node {
            id: id.clone(),
            kind: "URL".into(),
            role: Role::External,
            api_version: None,
            namespace: String::new(),
            name: uri.clone(),
            ready: None,
            reason: None,
            message: None,
            address: Some(uri),
            filter: None,
            external: true,
            missing: false,
            rate: None,
        });
        Some(id)
    }

    /// The node of object `kind` `ns/name`: the object's own, else one saying it is missing
    /// (a kind Rivulet serves) or outside (any other kind).
    fn object_target(
        &mut self,
        kind: &str,
        api_version: Option<&str>,
        ns: &str,
        name: &str,
    ) -> String {
        let served = served_kind(api_version, kind);
        let id = object_id(kind, ns, name);
        if !self.nodes.contains_key(&id) {
            let role = served.and_then(role_of).unwrap_or(Role::External);
            self.nodes.insert(
                id.clone(),
                Node {
                    id: id.clone(),
                    kind: kind.to_string(),
                    role,
                    api_version: served
                        .map(KindInfo::api_version)
                        .or_else(|| api_version.map(str::to_string)),
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    ready: None,
                    reason: None,
                    message: None,
                    address: None,
                    filter: None,
                    external: served.is_none(),
                    missing: served.is_some(),
                    rate: None,
                },
            );
        }
        id
    }
}

/// A trigger's filter in a few words (`type=com.example.a, source=*`), `None` when it takes
/// every event.
pub fn filter_summary(spec: &Value) -> Option<String> {
    let filters: Vec<String> = spec
        .get("filters")
        .and_then(Value::as_array)
        .map(|filters| filters.iter().filter_map(dialect_summary).collect())
        .unwrap_or_default();
    let summary = if !filters.is_empty() {
        filters.join(" and ")
    } else {
        let attributes = spec.pointer("/filter/attributes")?.as_object()?;
        if attributes.is_empty() {
            return None;
        }
        attributes
            .iter()
            .map(|(name, value)| match value.as_str() {
                // Knative: an empty value matches any value of the attribute.
                Some("") | None => format!("{name}=*"),
                Some(value) => format!("{name}={value}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    Some(shorten(&summary, FILTER_CHARS))
}

/// One filter of the subscriptions API in short.
fn dialect_summary(filter: &Value) -> Option<String> {
    let map = filter.as_object()?;
    let pairs = |value: &Value, shape: fn(&str, &str) -> String| {
        value.as_object().map(|attributes| {
            attributes
                .iter()
                .map(|(name, v)| shape(name, v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", ")
        })
    };
    let nested = |value: &Value, word: &str| {
        value.as_array().map(|items| {
            let inner: Vec<String> = items.iter().filter_map(dialect_summary).collect();
            format!("{word}({})", inner.join("; "))
        })
    };
    let mut parts = Vec::new();
    for (dialect, value) in map {
        let part = match dialect.as_str() {
            "exact" => pairs(value, |n, v| format!("{n}={v}")),
            "prefix" => pairs(value, |n, v| format!("{n}={v}*")),
            "suffix" => pairs(value, |n, v| format!("{n}=*{v}")),
            "all" => nested(value, "all"),
            "any" => nested(value, "any"),
            "not" => dialect_summary(value).map(|inner| format!("not({inner})")),
            "cesql" => value.as_str().map(str::to_string),
            _ => None,
        };
        parts.extend(part);
    }
    (!parts.is_empty()).then(|| parts.join(" and "))
}

/// `text` cut to `max` characters, ending with `…` when cut.
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Source kinds live in another crate; one stands in for them here.
    static PING: KindInfo = KindInfo {
        group: "sources.knative.dev",
        version: "v1",
        kind: "PingSource",
        plural: "pingsources",
        validate: rivulet_core::resources::validation::validate_plain_object,
    };

    /// Messaging kinds live in another crate too.
    static MESSAGING: [KindInfo; 3] = [
        KindInfo {
            group: "messaging.knative.dev",
            version: "v1",
            kind: "InMemoryChannel",
            plural: "inmemorychannels",
            validate: rivulet_core::resources::validation::validate_plain_object,
        },
        KindInfo {
            group: "messaging.knative.dev",
            version: "v1",
            kind: "Subscription",
            plural: "subscriptions",
            validate: rivulet_core::resources::validation::validate_plain_object,
        },
        KindInfo {
            group: "flows.knative.dev",
            version: "v1",
            kind: "Sequence",
            plural: "sequences",
            validate: rivulet_core::resources::validation::validate_plain_object,
        },
    ];

    fn kind(name: &str) -> &'static KindInfo {
        if name == PING.kind {
            return &PING;
        }
        if let Some(messaging) = MESSAGING.iter().find(|k| k.kind == name) {
            return messaging;
        }
        find_kind_by_name(None, name).expect("a registered kind")
    }

    #[test]
    fn filters_are_summarised_in_a_few_words() {
        assert_eq!(filter_summary(&json!({})), None);
        assert_eq!(
            filter_summary(&json!({"filter": {"attributes": {"type": "a.b", "source": ""}}})),
            Some("source=*, type=a.b".into())
        );
        let filters = json!({"filters": [
            {"prefix": {"type": "com.example."}},
            {"not": {"exact": {"source": "x"}}},
            {"any": [{"suffix": {"subject": ".png"}}, {"cesql": "ttl > 3"}]}
        ]});
        assert_eq!(
            filter_summary(&filters),
            Some("type=com.example.* and not(source=x) and any(subject=*.png; ttl > 3)".into())
        );
        let long = json!({"filters": [{"cesql": "x".repeat(200)}]});
        let summary = filter_summary(&long).unwrap();
        assert_eq!(summary.chars().count(), FILTER_CHARS);
        assert!(summary.ends_with('…'));
    }

    #[test]
    fn subscriptions_link_their_channel_to_subscriber_reply_and_dead_letters() {
        let channel = json!({
            "metadata": {"namespace": "default", "name": "orders"},
            "spec": {"delivery": {"deadLetterSink": {"uri": "http://dls.example/"}}},
            "status": {"address": {"url": "http://127.0.0.1:8080/default/orders-kn-channel"}}
        });
        let subscription = json!({
            "metadata": {"namespace": "default", "name": "bill"},
            "spec": {"channel": {"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel", "name": "orders"},
                     "subscriber": {"uri": "http://billing.example/"},
                     "reply": {"uri": "http://127.0.0.1:8080/default/orders-kn-channel"}}
        });
        let sequence = json!({
            "metadata": {"namespace": "default", "name": "flow"},
            "spec": {"channelTemplate": {"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel"},
                     "steps": [{"uri": "http://a.example/"}]}
        });
        let objects = vec![
            (kind("InMemoryChannel"), channel),
            (kind("Subscription"), subscription),
            (kind("Sequence"), sequence),
        ];
        let graph = build(objects, &HashMap::new(), None, &|series| {
            assert_eq!(
                series.name,
                if series.kind == "Subscription" {
                    "subscription:bill"
                } else {
                    series.name.as_str()
                }
            );
            (Some(1.0), Some(3))
        });
        let edge = |from: &str, to: &str| {
            graph
                .edges
                .iter()
                .find(|e| e.from == from && e.to == to)
                .unwrap_or_else(|| panic!("{from} -> {to} in {:?}", graph.edges))
        };
        let orders = "InMemoryChannel/default/orders";
        let bill = "Subscription/default/bill";
        assert_eq!(edge(orders, bill).kind, EdgeKind::Trigger);
        assert_eq!(
            edge(bill, "url:http://billing.example/").kind,
            EdgeKind::Subscriber
        );
        let reply = edge(bill, orders);
        assert_eq!(
            reply.label.as_deref(),
            Some("reply"),
            "a reply to the channel's own address"
        );
        assert_eq!(
            edge(bill, "url:http://dls.example/").kind,
            EdgeKind::DeadLetter,
            "the channel's"
        );
        let first_step = edge(
            "Sequence/default/flow",
            "InMemoryChannel/default/flow-kn-sequence-0",
        );
        assert_eq!(first_step.kind, EdgeKind::Channel);
        let roles: BTreeMap<&str, Role> = graph
            .nodes
            .iter()
            .map(|n| (n.id.as_str(), n.role))
            .collect();
        assert_eq!(roles[orders], Role::Channel);
        assert_eq!(roles[bill], Role::Trigger);
        assert_eq!(roles["Sequence/default/flow"], Role::Broker);
    }

    #[test]
    fn objects_and_their_references_become_nodes_and_edges() {
        let broker = json!({
            "metadata": {"namespace": "default", "name": "default"},
            "spec": {"delivery": {"deadLetterSink": {"uri": "http://dls.example/"}}},
            "status": {"address": {"url": "http://127.0.0.1:8080/default/default"},
                       "conditions": [{"type": "Ready", "status": "True"},
                                      {"type": "IngressReady", "status": "True"}]}
        });
        let filtered = json!({
            "metadata": {"namespace": "default", "name": "orders"},
            "spec": {"broker": "default", "filter": {"attributes": {"type": "order"}},
                     "subscriber": {"uri": "http://127.0.0.1:9000/"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        });
        let unfiltered = json!({
            "metadata": {"namespace": "default", "name": "all"},
            "spec": {"broker": "default", "delivery": {"retry": 2},
                     "subscriber": {"ref": {"apiVersion": "v1", "kind": "Service", "name": "display"}}},
            "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "SubscriberNotResolved"}]}
        });
        let orphan = json!({
            "metadata": {"namespace": "default", "name": "orphan"},
            "spec": {"broker": "gone", "subscriber": {"uri": "http://127.0.0.1:9000"}}
        });
        let ping = json!({
            "metadata": {"namespace": "default", "name": "tick"},
            "spec": {"schedule": "* * * * *", "sink": {"uri": "http://127.0.0.1:8080/default/default/"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        });
        let objects = vec![
            (kind("Broker"), broker),
            (kind("Trigger"), filtered),
            (kind("Trigger"), unfiltered),
            (kind("Trigger"), orphan),
            (kind("PingSource"), ping),
        ];
        let channels = HashMap::from([(
            ("default".to_string(), "default".to_string()),
            "embedded".to_string(),
        )]);
        let graph = build(objects, &channels, None, &|series| match series.counter {
            Counter::TriggerMatched if series.name == "orders" => (Some(1.5), Some(90)),
            _ => (None, Some(0)),
        });
        let node = |id: &str| {
            graph
                .nodes
                .iter()
                .find(|n| n.id == id)
                .unwrap_or_else(|| panic!("node {id} in {:#?}", graph.nodes))
        };
        let edge = |from: &str, to: &str| {
            graph
                .edges
                .iter()
                .find(|e| e.from == from && e.to == to)
                .unwrap_or_else(|| panic!("edge {from} -> {to} in {:#?}", graph.edges))
        };
        // A sink URI that is a broker's address leads to the broker.
        assert_eq!(
            edge("PingSource/default/tick", "Broker/default/default").kind,
            EdgeKind::Sink
        );
        let matched = edge("Broker/default/default", "Trigger/default/orders");
        assert_eq!(matched.label.as_deref(), Some("type=order"));
        assert_eq!((matched.rate, matched.count), (Some(1.5), Some(90)));
        assert_eq!(
            node("Trigger/default/orders").filter.as_deref(),
            Some("type=order")
        );
        // Two triggers with the same subscriber URL (with and without the slash) share it.
        assert_eq!(
            edge("Trigger/default/orders", "url:http://127.0.0.1:9000/").kind,
            EdgeKind::Subscriber
        );
        assert!(node("url:http://127.0.0.1:9000/").external);
        // The broker's dead-letter sink serves triggers without a delivery of their own.
        assert_eq!(
            edge("Trigger/default/orders", "url:http://dls.example/").kind,
            EdgeKind::DeadLetter
        );
        assert!(
            !graph
                .edges
                .iter()
                .any(|e| e.from == "Trigger/default/all" && e.kind == EdgeKind::DeadLetter)
        );
        // A ref to a kind Rivulet does not serve is outside; to a served one, missing.
        let service = node("Service/default/display");
        assert!(service.external && !service.missing);
        assert_eq!(service.role, Role::External);
        let gone = node("Broker/default/gone");
        assert!(gone.missing && gone.role == Role::Broker);
        assert_eq!(gone.problem().as_deref(), Some("does not exist"));
        assert_eq!(
            node("Trigger/default/all").problem().as_deref(),
            Some("SubscriberNotResolved")
        );
        assert_eq!(
            node("Trigger/default/orphan").problem().as_deref(),
            Some("not reconciled yet")
        );
        // The broker's channel, as ready as its ingress.
        let channel = node("channel/default/default");
        assert_eq!(
            (channel.name.as_str(), channel.ready),
            ("embedded", Some(true))
        );
        assert_eq!(
            edge("Broker/default/default", "channel/default/default").kind,
            EdgeKind::Channel
        );
    }
}
