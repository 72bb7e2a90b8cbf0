//! The background side of discovery: turns observed events into EventTypes and schemas.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::pattern::{self, WILDCARD};
use super::{DiscoverySettings, schema};
use rivulet_broker::ingress::Observation;
use rivulet_control::runtime::{CappedBrokers, StatusLock};
use rivulet_core::event::Event;
use rivulet_core::metrics::{BrokerLabels, Metrics};
use rivulet_core::resources::eventtype::{
    AUTOCREATED_LABEL, BROKER_LABEL, SchemaVersion, attribute, attribute_of, broker_of,
    broker_reference,
};
use rivulet_core::resources::{KindInfo, find_kind_by_name, now_rfc3339};
use rivulet_store::{ResourceStore, StoreError};

/// Samples larger than this keep their attributes but not their data.
const SAMPLE_DATA_LIMIT: usize = 16 * 1024;
/// How long an event class without an EventType waits before the store is asked again.
const UNTRACKED_RETRY: Duration = Duration::from_secs(5);
/// Remembered event classes without an EventType (untracked or capped) at most; past it
/// they are forgotten, so a flood of distinct types cannot grow the worker's memory.
const MAX_REMEMBERED_MISSES: usize = 10_000;
/// How often pending writes are looked at.
const FLUSH_TICK: Duration = Duration::from_millis(100);
/// Once this many inferred schemas in a row changed nothing, the schema counts as stable...
const STABLE_AFTER: u32 = 16;
/// ...and only one event in this many has its data inferred, until one changes the schema.
/// Inference parses the whole payload, the largest cost of an accepted event otherwise;
/// a field every new event carries still shows within this many events.
const STABLE_SAMPLE_EVERY: u32 = 32;

/// (namespace, broker, type, source pattern).
type ClassKey = (String, String, String, String);
/// (namespace, EventType name).
type ObjectKey = (String, String);
/// (namespace, broker).
type BrokerKey = (String, String);

enum Target {
    EventType(ObjectKey),
    /// No EventType and none may be created; look again after the instant.
    Untracked(Instant),
    /// No EventType because the broker is at its cap; look again after the instant.
    Capped(Instant),
}

/// What looking a class up found.
enum Resolved {
    EventType(ObjectKey),
    /// None exists and auto-creation is off.
    Untracked,
    /// None exists and the broker has as many auto-created EventTypes as it may.
    Capped,
}

/// Auto-created EventTypes of one broker, counted from the store.
struct BrokerCount {
    count: usize,
    counted_at: Instant,
    /// The cap was reported (logged) and the broker has not gone below it since.
    cap_reported: bool,
}

/// What the worker knows about one EventType.
struct Tracked {
    schema: Option<Value>,
    version: u32,
    versions: Vec<SchemaVersion>,
    sample: Option<Value>,
    data_schema: Option<String>,
    data_content_type: Option<String>,
    dirty: bool,
    last_write: Option<Instant>,
    /// Inferences in a row that left the schema as it was.
    unchanged: u32,
    /// Events still to pass before the next inference (while the schema is stable).
    skip: u32,
}

impl Tracked {
    fn from_object(object: &Value) -> Self {
        let status = object.get("status").cloned().unwrap_or(Value::Null);
        let text = |key: &str| status.get(key).and_then(Value::as_str).map(str::to_string);
        Tracked {
            schema: status.get("schema").cloned(),
            version: status
                .get("schemaVersion")
                .and_then(Value::as_u64)
                .unwrap_or(0) as u32,
            versions: status
                .get("schemaVersions")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default(),
            sample: status.get("sample").cloned(),
            data_schema: text("dataSchema"),
            data_content_type: text("dataContentType"),
            dirty: false,
            last_write: None,
            unchanged: 0,
            skip: 0,
        }
    }
}

/// Turns observations into EventTypes and schemas; see the module docs of `registry`.
pub struct Worker {
    store: Arc<dyn ResourceStore>,
    settings: DiscoverySettings,
    metrics: Arc<Metrics>,
    status_lock: StatusLock,
    kind: &'static KindInfo,
    classes: HashMap<ClassKey, Target>,
    /// Source patterns with their own class, per (namespace, broker, type).
    patterns: HashMap<(String, String, String), usize>,
    tracked: HashMap<ObjectKey, Tracked>,
    autocreated: HashMap<BrokerKey, BrokerCount>,
    capped: CappedBrokers,
    /// Told (namespace, broker) when a broker reaches its cap or goes below it again.
    on_cap_change: Option<CapChange>,
}

/// Called with (namespace, broker) when a broker's cap state changes.
type CapChange = Box<dyn Fn(&str, &str) + Send + Sync>;

impl Worker {
    pub fn new(
        store: Arc<dyn ResourceStore>,
        settings: DiscoverySettings,
        metrics: Arc<Metrics>,
        status_lock: StatusLock,
    ) -> Self {
        Self {
            store,
            settings,
            metrics,
            status_lock,
            kind: find_kind_by_name(None, "EventType").expect("EventType is registered"),
            classes: HashMap::new(),
            patterns: HashMap::new(),
            tracked: HashMap::new(),
            autocreated: HashMap::new(),
            capped: CappedBrokers::default(),
            on_cap_change: None,
        }
    }

    /// Records brokers at their cap in `capped` and calls `changed` when one reaches it or
    /// goes below it again (so the broker's status can say so).
    pub fn report_caps(
        mut self,
        capped: CappedBrokers,
        changed: impl Fn(&str, &str) + Send + Sync + 'static,
    ) -> Self {
        self.capped = capped;
        self.on_cap_change = Some(Box::new(changed));
        self
    }

    fn set_capped(&self, namespace: &str, broker: &str, cap: Option<usize>) {
        if self.capped.set(namespace, broker, cap)
            && let Some(changed) = &self.on_cap_change
        {
            changed(namespace, broker);
        }
    }

    /// Runs until `shutdown`, then writes what is pending.
    pub async fn run(
        mut self,
        mut observations: mpsc::Receiver<Observation>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(FLUSH_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                observation = observations.recv() => match observation {
                    Some(observation) => self.observe(observation).await,
                    None => break,
                },
                _ = tick.tick() => self.flush(false).await,
            }
        }
        self.flush(true).await;
    }

    pub async fn observe(&mut self, observation: Observation) {
        for event in observation.events.iter() {
            if let Err(error) = self
                .observe_event(&observation.namespace, &observation.broker, event)
                .await
            {
                tracing::warn!(%error, namespace = %observation.namespace, broker = %observation.broker,
                    "event type discovery failed for an event");
            }
        }
    }

    async fn observe_event(
        &mut self,
        namespace: &str,
        broker: &str,
        event: &Event,
    ) -> Result<(), StoreError> {
        let Some(target) = self.target(namespace, broker, event).await? else {
            return Ok(());
        };
        let max_versions = self.settings.max_schema_versions.max(1);
        let Some(tracked) = self.tracked.get_mut(&target) else {
            return Ok(());
        };
        refine(tracked, event, max_versions);
        Ok(())
    }

    /// The EventType an event belongs to, found, created or `None`.
    async fn target(
        &mut self,
        namespace: &str,
        broker: &str,
        event: &Event,
    ) -> Result<Option<ObjectKey>, StoreError> {
        let source = pattern::source_pattern(&event.source);
        let triple = (namespace.to_string(), broker.to_string(), event.ty.clone());
        let mut class = (
            namespace.to_string(),
            broker.to_string(),
            event.ty.clone(),
            source,
        );
        if !self.classes.contains_key(&class) {
            let used = self.patterns.get(&triple).copied().unwrap_or(0);
            // Past the cap, new sources share the catch-all class (and are not remembered).
            if used >= self.settings.max_sources_per_type.max(1) {
                class.3 = WILDCARD.to_string();
            }
        }
        match self.classes.get(&class) {
            Some(Target::EventType(key)) if self.tracked.contains_key(key) => {
                return Ok(Some(key.clone()));
            }
            Some(Target::Untracked(retry_at)) if Instant::now() < *retry_at => return Ok(None),
            Some(Target::Capped(retry_at)) if Instant::now() < *retry_at => {
                self.count_capped(namespace, broker);
                return Ok(None);
            }
            _ => {}
        }
        let resolved = self.resolve(&class, event).await?;
        let is_new = !self.classes.contains_key(&class);
        let retry_at = Instant::now() + UNTRACKED_RETRY;
        let (target, found) = match resolved {
            Resolved::EventType(key) => (Target::EventType(key.clone()), Some(key)),
            Resolved::Untracked => (Target::Untracked(retry_at), None),
            Resolved::Capped => {
                self.count_capped(namespace, broker);
                (Target::Capped(retry_at), None)
            }
        };
        if found.is_none() && self.classes.len() >= self.tracked.len() + MAX_REMEMBERED_MISSES {
            self.classes
                .retain(|_, t| matches!(t, Target::EventType(_)));
        }
        self.classes.insert(class.clone(), target);
        // Only sources that got an EventType use up the type's source slots.
        if is_new && found.is_some() && class.3 != WILDCARD {
            *self.patterns.entry(triple).or_default() += 1;
        }
        Ok(found)
    }

    /// Counts an event that gets no EventType because its broker is at the cap.
    fn count_capped(&self, namespace: &str, broker: &str) {
        self.metrics
            .eventtypes_capped
            .get_or_create(&BrokerLabels {
                namespace: namespace.to_string(),
                broker: broker.to_string(),
            })
            .inc();
    }

    /// Whether the broker may get one more auto-created EventType. The count comes from the
    /// store, so a restart keeps the cap and deleted EventTypes free their place; at the cap
    /// it is read again at most every [`UNTRACKED_RETRY`].
    async fn may_autocreate(&mut self, namespace: &str, broker: &str) -> Result<bool, StoreError> {
        let key = (namespace.to_string(), broker.to_string());
        let max = self.settings.max_per_broker;
        let stale = match self.autocreated.get(&key) {
            None => true,
            Some(known) => known.count >= max && known.counted_at.elapsed() >= UNTRACKED_RETRY,
        };
        if stale {
            let count = self
                .store
                .list(self.kind, Some(namespace))
                .await?
                .iter()
                .filter(|o| is_autocreated_for(o, broker))
                .count();
            let entry = self.autocreated.entry(key.clone()).or_insert(BrokerCount {
                count,
                counted_at: Instant::now(),
                cap_reported: false,
            });
            entry.count = count;
            entry.counted_at = Instant::now();
        }
        let known = self.autocreated.get_mut(&key).expect("counted above");
        let below = known.count < max;
        // Reported when the cap is reached, and again when the broker goes below it.
        let report = known.cap_reported == below;
        known.cap_reported = !below;
        if report {
            self.set_capped(namespace, broker, (!below).then_some(max));
            if !below {
                tracing::warn!(%namespace, %broker, max, "broker reached its cap of auto-created EventTypes (--eventtype-max-per-broker): events of new types are still accepted but get no EventType; counted in rivulet_eventtypes_capped_total");
            }
        }
        Ok(below)
    }

    /// Finds the EventType of a class in the store (auto-created or applied by hand), or
    /// creates it when auto-creation is on.
    async fn resolve(&mut self, class: &ClassKey, event: &Event) -> Result<Resolved, StoreError> {
        let (namespace, broker, event_type, source) = class;
        let name = pattern::eventtype_name(broker, event_type, source);
        let existing = match self.store.get(self.kind, namespace, &name).await? {
            Some(object) => Some(object),
            None => self
                .store
                .list(self.kind, Some(namespace))
                .await?
                .into_iter()
                .filter(|o| {
                    attribute_of(o, "type") == Some(event_type.as_str())
                        && broker_of(o).is_none_or(|b| b == broker)
                })
                .filter(|o| match attribute_of(o, "source") {
                    None => true,
                    Some(declared) => {
                        declared == source || pattern::source_matches(declared, source)
                    }
                })
                // A declared source beats "any source".
                .max_by_key(|o| attribute_of(o, "source").is_some()),
        };
        if let Some(object) = existing {
            let key = (
                namespace.clone(),
                object
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or(&name)
                    .to_string(),
            );
            self.tracked
                .entry(key.clone())
                .or_insert_with(|| Tracked::from_object(&object));
            return Ok(Resolved::EventType(key));
        }
        if !self.settings.autocreate {
            return Ok(Resolved::Untracked);
        }
        if !self.may_autocreate(namespace, broker).await? {
            return Ok(Resolved::Capped);
        }
        // Owned by its broker, so Kubernetes' garbage collector removes it with the broker.
        let broker_kind = rivulet_core::resources::find_kind_by_name(None, "Broker")
            .expect("Broker is registered");
        let broker_uid = self
            .store
            .get(broker_kind, namespace, broker)
            .await?
            .and_then(|b| {
                b.pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
        let manifest = autocreated(
            namespace,
            broker,
            event_type,
            source,
            &name,
            event,
            broker_uid.as_deref(),
        );
        self.store.apply(self.kind, manifest).await?;
        if let Some(known) = self
            .autocreated
            .get_mut(&(namespace.clone(), broker.clone()))
        {
            known.count += 1;
        }
        self.metrics.eventtypes_autocreated.inc();
        tracing::info!(%namespace, %broker, r#type = %event_type, %source, %name, "event type discovered");
        let key = (namespace.clone(), name);
        self.tracked.insert(
            key.clone(),
            Tracked {
                dirty: true,
                ..Tracked::from_object(&Value::Null)
            },
        );
        Ok(Resolved::EventType(key))
    }

    /// Writes changed EventTypes whose last write is old enough (all of them when `force`).
    pub async fn flush(&mut self, force: bool) {
        let interval = self.settings.min_write_interval;
        let due: Vec<ObjectKey> = self
            .tracked
            .iter()
            .filter(|(_, t)| {
                t.dirty && (force || t.last_write.is_none_or(|at| at.elapsed() >= interval))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            match self.write(&key).await {
                Ok(true) => {}
                Ok(false) => {
                    // Deleted meanwhile: forget it, a later event finds or creates it again.
                    self.tracked.remove(&key);
                    self.classes
                        .retain(|_, t| !matches!(t, Target::EventType(k) if *k == key));
                }
                Err(error) => {
                    tracing::warn!(%error, namespace = %key.0, name = %key.1, "could not write an EventType's schema");
                    if let Some(t) = self.tracked.get_mut(&key) {
                        t.last_write = Some(Instant::now());
                    }
                }
            }
        }
    }

    /// Writes one EventType's learned state into its status; false when it is gone.
    async fn write(&mut self, key: &ObjectKey) -> Result<bool, StoreError> {
        let Some(tracked) = self.tracked.get_mut(key) else {
            return Ok(true);
        };
        let _guard = self.status_lock.lock().await;
        let Some(object) = self.store.get(self.kind, &key.0, &key.1).await? else {
            return Ok(false);
        };
        let mut status = match object.get("status") {
            Some(Value::Object(map)) => map.clone(),
            _ => serde_json::Map::new(),
        };
        let mut set = |field: &str, value: Option<Value>| match value {
            Some(value) => {
                status.insert(field.to_string(), value);
            }
            None => {
                status.remove(field);
            }
        };
        set("schema", tracked.schema.clone());
        set(
            "schemaVersion",
            (tracked.version > 0).then(|| json!(tracked.version)),
        );
        set(
            "schemaVersions",
            (!tracked.versions.is_empty()).then(|| json!(tracked.versions)),
        );
        set("sample", tracked.sample.clone());
        set("dataSchema", tracked.data_schema.clone().map(Value::from));
        set(
            "dataContentType",
            tracked.data_content_type.clone().map(Value::from),
        );
        match self
            .store
            .put_status(self.kind, &key.0, &key.1, Value::Object(status))
            .await
        {
            Ok(()) => {}
            Err(StoreError::NotFound { .. }) => return Ok(false),
            Err(error) => return Err(error),
        }
        self.metrics.eventtype_status_writes.inc();
        tracked.dirty = false;
        tracked.last_write = Some(Instant::now());
        Ok(true)
    }
}

/// Learns from one event: dataschema, content type, schema (a new version when it changed)
/// and a sample. Marks the EventType dirty only when something changed. The schema is
/// inferred from every event until it has been stable for [`STABLE_AFTER`] events, then
/// from one in [`STABLE_SAMPLE_EVERY`].
fn refine(tracked: &mut Tracked, event: &Event, max_versions: usize) {
    if let Some(data_schema) = &event.dataschema
        && tracked.data_schema.as_ref() != Some(data_schema)
    {
        tracked.data_schema = Some(data_schema.clone());
        tracked.dirty = true;
    }
    if let Some(content_type) = &event.datacontenttype
        && tracked.data_content_type.as_ref() != Some(content_type)
    {
        tracked.data_content_type = Some(content_type.clone());
        tracked.dirty = true;
    }
    let sampled = if tracked.skip > 0 {
        tracked.skip -= 1;
        false
    } else {
        true
    };
    let observed = event
        .data
        .as_ref()
        .filter(|_| sampled && is_json(event.datacontenttype.as_deref()))
        .and_then(|data| schema::infer_payload(data));
    if let Some(observed) = observed {
        let merged = match &tracked.schema {
            Some(current) => schema::merge(current, &observed),
            None => observed,
        };
        if tracked.schema.as_ref() == Some(&merged) {
            tracked.unchanged = tracked.unchanged.saturating_add(1);
            if tracked.unchanged >= STABLE_AFTER {
                tracked.skip = STABLE_SAMPLE_EVERY - 1;
            }
        } else {
            tracked.unchanged = 0;
            tracked.version += 1;
            tracked.versions.push(SchemaVersion {
                version: tracked.version,
                created_at: now_rfc3339(),
                schema: merged.clone(),
            });
            let excess = tracked.versions.len().saturating_sub(max_versions);
            tracked.versions.drain(..excess);
            tracked.schema = Some(merged);
            tracked.sample = Some(sample_of(event));
            tracked.dirty = true;
        }
    }
    if tracked.sample.is_none() {
        tracked.sample = Some(sample_of(event));
        tracked.dirty = true;
    }
}

/// Whether `object` is an EventType auto-created for `broker`.
fn is_autocreated_for(object: &Value, broker: &str) -> bool {
    let labels = object.pointer("/metadata/labels");
    let label = |name: &str| labels.and_then(|l| l.get(name)).and_then(Value::as_str);
    label(AUTOCREATED_LABEL) == Some("true") && label(BROKER_LABEL) == Some(broker)
}

/// Whether data with this content type is JSON (no content type means JSON in CloudEvents).
pub fn is_json(content_type: Option<&str>) -> bool {
    content_type.is_none_or(|ct| {
        let essence = ct.split(';').next().unwrap_or_default().trim();
        essence.eq_ignore_ascii_case("application/json")
            || essence.eq_ignore_ascii_case("text/json")
            || essence.to_ascii_lowercase().ends_with("+json")
    })
}

fn sample_of(event: &Event) -> Value {
    let mut event = event.clone();
    if event
        .data
        .as_ref()
        .is_some_and(|d| d.len() > SAMPLE_DATA_LIMIT)
    {
        event.data = None;
    }
    serde_json::from_str(&rivulet_core::event::to_json(&event)).unwrap_or(Value::Null)
}

fn autocreated(
    namespace: &str,
    broker: &str,
    event_type: &str,
    source: &str,
    name: &str,
    event: &Event,
    broker_uid: Option<&str>,
) -> Value {
    let source_value = (source != WILDCARD).then_some(source);
    let mut attributes = vec![
        attribute("type", Some(event_type), true),
        attribute("source", source_value, true),
        attribute("specversion", Some(event.specversion.as_str()), true),
        attribute("id", None, true),
    ];
    if let Some(data_schema) = &event.dataschema {
        attributes.push(attribute("dataschema", Some(data_schema), false));
    }
    let mut metadata = json!({
        "name": name,
        "namespace": namespace,
        "labels": {AUTOCREATED_LABEL: "true", BROKER_LABEL: broker},
    });
    if let Some(uid) = broker_uid {
        metadata["ownerReferences"] = json!([{
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Broker",
            "name": broker,
            "uid": uid,
        }]);
    }
    json!({
        "apiVersion": "eventing.knative.dev/v1beta3",
        "kind": "EventType",
        "metadata": metadata,
        "spec": {
            "reference": broker_reference(namespace, broker),
            "description": format!("Discovered from events on broker {namespace}/{broker}"),
            "attributes": attributes,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: &str) -> Event {
        let mut event = rivulet_core::event::parse_structured(
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"application/json"}"#,
        )
        .unwrap();
        event.data = Some(bytes::Bytes::from(data.to_string()));
        event
    }

    fn fresh() -> Tracked {
        Tracked::from_object(&Value::Null)
    }

    #[test]
    fn versions_bump_only_when_the_schema_changes_and_stay_bounded() {
        let mut tracked = fresh();
        refine(&mut tracked, &event(r#"{"a": 1}"#), 3);
        assert_eq!(tracked.version, 1);
        assert!(tracked.dirty);
        tracked.dirty = false;
        refine(&mut tracked, &event(r#"{"a": 2}"#), 3);
        assert_eq!(tracked.version, 1, "same shape, same version");
        assert!(!tracked.dirty, "nothing to write for a known shape");
        for (i, body) in [
            r#"{"a": 1, "b": 1}"#,
            r#"{"a": "x"}"#,
            r#"{"c": []}"#,
            r#"{"c": [1]}"#,
        ]
        .iter()
        .enumerate()
        {
            refine(&mut tracked, &event(body), 3);
            assert_eq!(tracked.version, 2 + i as u32);
        }
        assert_eq!(tracked.versions.len(), 3);
        assert_eq!(tracked.versions[0].version, 3);
        let schema = tracked.schema.unwrap();
        assert_eq!(
            schema["properties"]["a"]["type"],
            json!(["string", "integer"])
        );
        assert!(schema.get("required").is_none(), "{schema}");
    }

    #[test]
    fn a_stable_schema_is_sampled_and_a_new_field_still_shows() {
        let mut tracked = fresh();
        // The first event creates the schema; the next STABLE_AFTER leave it unchanged.
        for _ in 0..=STABLE_AFTER {
            refine(&mut tracked, &event(r#"{"a": 1}"#), 10);
        }
        assert_eq!(
            tracked.skip,
            STABLE_SAMPLE_EVERY - 1,
            "stable: sampling starts"
        );
        // Every later event carries a new field: it is found within one sampling period.
        let mut seen_after = None;
        for n in 1..=STABLE_SAMPLE_EVERY {
            refine(&mut tracked, &event(r#"{"a": 1, "b": true}"#), 10);
            if tracked.version == 2 {
                seen_after = Some(n);
                break;
            }
        }
        assert_eq!(
            seen_after,
            Some(STABLE_SAMPLE_EVERY),
            "found at the next sample"
        );
        assert_eq!(
            tracked.schema.as_ref().unwrap()["properties"]["b"]["type"],
            json!("boolean")
        );
        assert_eq!(
            (tracked.unchanged, tracked.skip),
            (0, 0),
            "a change ends sampling"
        );
    }

    #[test]
    fn non_json_data_gives_no_schema_but_a_sample() {
        let mut tracked = fresh();
        let mut e = event("plain text");
        e.datacontenttype = Some("text/plain".into());
        refine(&mut tracked, &e, 3);
        assert!(tracked.schema.is_none());
        assert_eq!(tracked.sample.as_ref().unwrap()["data"], "plain text");
        assert!(is_json(Some("application/cloudevents+json; charset=utf-8")));
        assert!(!is_json(Some("application/xml")));
    }
}
