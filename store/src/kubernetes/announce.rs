//! From a kind's watch events to the store's change notices: what the watch says, minus
//! status-only changes (reconcilers write those), plus the deletions a re-list reveals.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kube::runtime::watcher::Event;
use serde_json::Value;

use crate::{StoreEvent, object_key};
use rivulet_core::resources::KindInfo;

type Key = (String, String); // namespace, name

/// The last version seen of each object of one kind.
pub(super) struct Announcer {
    kind: &'static KindInfo,
    known: HashMap<Key, Arc<Value>>,
    /// Objects seen since the watch (re)started listing, until the listing is complete.
    listed: Option<HashSet<Key>>,
    /// Whether status changes are news too.
    with_status: bool,
}

/// The parts of an object a reconciler acts on: everything but the bookkeeping a status
/// write changes, and but status itself unless `with_status`.
fn content(object: &Value, with_status: bool) -> Value {
    let mut content = object.clone();
    if let Some(map) = content.as_object_mut()
        && !with_status
    {
        map.remove("status");
    }
    if let Some(meta) = content.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
    }
    content
}

impl Announcer {
    pub(super) fn new(kind: &'static KindInfo, with_status: bool) -> Self {
        Self {
            kind,
            known: HashMap::new(),
            listed: None,
            with_status,
        }
    }

    pub(super) fn on_event(&mut self, event: Event<Value>) -> Vec<StoreEvent> {
        match event {
            Event::Init => {
                self.listed = Some(HashSet::new());
                Vec::new()
            }
            Event::InitApply(object) => {
                if let Some(listed) = &mut self.listed {
                    listed.insert(object_key(&object));
                }
                self.applied(object).into_iter().collect()
            }
            Event::InitDone => {
                let listed = self.listed.take().unwrap_or_default();
                let gone: Vec<Key> = self
                    .known
                    .keys()
                    .filter(|key| !listed.contains(*key))
                    .cloned()
                    .collect();
                gone.into_iter()
                    .filter_map(|key| self.known.remove(&key))
                    .map(|object| StoreEvent::Deleted {
                        kind: self.kind,
                        object,
                    })
                    .collect()
            }
            Event::Apply(object) => self.applied(object).into_iter().collect(),
            Event::Delete(object) => {
                self.known.remove(&object_key(&object));
                vec![StoreEvent::Deleted {
                    kind: self.kind,
                    object: Arc::new(object),
                }]
            }
        }
    }

    /// Remembers the object; a notice unless only its status (or nothing) changed.
    fn applied(&mut self, object: Value) -> Option<StoreEvent> {
        let object = Arc::new(object);
        let previous = self.known.insert(object_key(&object), object.clone());
        let changed = previous.is_none_or(|previous| {
            content(&previous, self.with_status) != content(&object, self.with_status)
        });
        changed.then_some(StoreEvent::Applied {
            kind: self.kind,
            object,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use rivulet_core::resources::find_kind_by_name;

    fn broker(name: &str, generation: i64, resource_version: &str, status: Value) -> Value {
        json!({
            "apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
            "metadata": {"name": name, "namespace": "ns", "generation": generation,
                         "resourceVersion": resource_version},
            "spec": {"delivery": {"retry": generation}},
            "status": status,
        })
    }

    fn names(events: &[StoreEvent]) -> Vec<String> {
        events
            .iter()
            .map(|event| match event {
                StoreEvent::Applied { object, .. } => format!("applied {}", object_key(object).1),
                StoreEvent::Deleted { object, .. } => format!("deleted {}", object_key(object).1),
            })
            .collect()
    }

    fn announcer() -> Announcer {
        Announcer::new(find_kind_by_name(None, "Broker").unwrap(), false)
    }

    #[test]
    fn status_changes_are_announced_when_asked_for() {
        let mut announcer = Announcer::new(find_kind_by_name(None, "Broker").unwrap(), true);
        announcer.on_event(Event::Apply(broker("b", 1, "1", json!({}))));
        let status_written = announcer.on_event(Event::Apply(broker(
            "b",
            1,
            "2",
            json!({"conditions": [{"type": "Ready", "status": "True"}]}),
        )));
        assert_eq!(names(&status_written), ["applied b"]);
        let nothing = announcer.on_event(Event::Apply(broker(
            "b",
            1,
            "3",
            json!({"conditions": [{"type": "Ready", "status": "True"}]}),
        )));
        assert!(nothing.is_empty(), "{:?}", names(&nothing));
    }

    #[test]
    fn status_only_changes_are_not_announced() {
        let mut announcer = announcer();
        let created = announcer.on_event(Event::Apply(broker("b", 1, "1", json!({}))));
        assert_eq!(names(&created), ["applied b"]);
        let status_written = announcer.on_event(Event::Apply(broker(
            "b",
            1,
            "2",
            json!({"conditions": [{"type": "Ready", "status": "True"}]}),
        )));
        assert!(status_written.is_empty(), "{:?}", names(&status_written));
        let spec_changed = announcer.on_event(Event::Apply(broker("b", 2, "3", json!({}))));
        assert_eq!(names(&spec_changed), ["applied b"]);
        let deleted = announcer.on_event(Event::Delete(broker("b", 2, "4", json!({}))));
        assert_eq!(names(&deleted), ["deleted b"]);
    }

    #[test]
    fn a_relist_announces_what_changed_and_what_vanished_meanwhile() {
        let mut announcer = announcer();
        let mut first = announcer.on_event(Event::Init);
        first.extend(announcer.on_event(Event::InitApply(broker("a", 1, "1", json!({})))));
        first.extend(announcer.on_event(Event::InitApply(broker("b", 1, "2", json!({})))));
        first.extend(announcer.on_event(Event::InitDone));
        assert_eq!(names(&first), ["applied a", "applied b"]);

        // The watch broke; meanwhile `a` got a new status only, `b` went, `c` came.
        let mut relist = announcer.on_event(Event::Init);
        relist.extend(announcer.on_event(Event::InitApply(broker("a", 1, "5", json!({"x": 1})))));
        relist.extend(announcer.on_event(Event::InitApply(broker("c", 1, "6", json!({})))));
        relist.extend(announcer.on_event(Event::InitDone));
        assert_eq!(names(&relist), ["applied c", "deleted b"]);
    }
}
