//! The CloudEvents an ApiServerSource sends, as Knative builds them: `source` the API
//! server's URL, `subject` the object's path, `data` a reference or the whole object, and the
//! extensions `apiversion`, `kind`, `name` and `namespace` for triggers to filter on.

use std::collections::HashSet;

use bytes::Bytes;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::watcher;
use serde::Serialize;
use serde_json::Value;

use super::{ApiVersionKind, EventMode};
use rivulet_core::event::{Event, ExtensionValue, SpecVersion};
use rivulet_core::filter::Filter;

pub const RESOURCE_ADD_TYPE: &str = "dev.knative.apiserver.resource.add";
pub const RESOURCE_UPDATE_TYPE: &str = "dev.knative.apiserver.resource.update";
pub const RESOURCE_DELETE_TYPE: &str = "dev.knative.apiserver.resource.delete";
pub const REF_ADD_TYPE: &str = "dev.knative.apiserver.ref.add";
pub const REF_UPDATE_TYPE: &str = "dev.knative.apiserver.ref.update";
pub const REF_DELETE_TYPE: &str = "dev.knative.apiserver.ref.delete";

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Updated,
    Deleted,
}

impl Change {
    /// The event type of this change in `mode`.
    pub fn event_type(self, mode: EventMode) -> &'static str {
        let [add, update, delete] = mode.event_types();
        match self {
            Change::Added => add,
            Change::Updated => update,
            Change::Deleted => delete,
        }
    }
}

/// The data of a `Reference` mode event: Knative's object reference, in its field order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
    pub api_version: String,
}

/// The `subject` of an object's events, as Knative writes it:
/// `/apis/{apiVersion}/namespaces/{namespace}/{plural}/{name}`, the core group included
/// (`/apis/v1/namespaces/team/pods/web`). A cluster-scoped object has no namespace segment.
pub fn subject_path(api_version: &str, namespace: &str, plural: &str, name: &str) -> String {
    if namespace.is_empty() {
        format!("/apis/{api_version}/{plural}/{name}")
    } else {
        format!("/apis/{api_version}/namespaces/{namespace}/{plural}/{name}")
    }
}

/// The event for `change` of `object` (a watched object as JSON), of the kind `resource`.
pub fn build_event(
    mode: EventMode,
    change: Change,
    api_url: &str,
    resource: &ApiResource,
    object: &Value,
) -> Event {
    let text = |pointer: &str| {
        object
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    // Watch events carry apiVersion and kind; listed items may not.
    let api_version = Some(text("/apiVersion"))
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| resource.api_version.clone());
    let kind = Some(text("/kind"))
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| resource.kind.clone());
    let name = text("/metadata/name");
    let namespace = text("/metadata/namespace");
    let data = match mode {
        EventMode::Reference => serde_json::to_vec(&ObjectReference {
            kind: kind.clone(),
            namespace: namespace.clone(),
            name: name.clone(),
            api_version: api_version.clone(),
        }),
        EventMode::Resource => {
            let mut whole = object.clone();
            if let Some(map) = whole.as_object_mut() {
                map.insert("apiVersion".into(), Value::String(api_version.clone()));
                map.insert("kind".into(), Value::String(kind.clone()));
            }
            serde_json::to_vec(&whole)
        }
    }
    .expect("JSON values serialise");
    let mut event = Event {
        specversion: SpecVersion::V10,
        id: uuid::Uuid::new_v4().to_string(),
        source: api_url.to_string(),
        ty: change.event_type(mode).to_string(),
        datacontenttype: Some("application/json".into()),
        dataschema: None,
        subject: Some(subject_path(
            &api_version,
            &namespace,
            &resource.plural,
            &name,
        )),
        time: Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        datacontentencoding: None,
        extensions: Default::default(),
        data: Some(Bytes::from(data)),
    };
    event.set_extension("apiversion", ExtensionValue::String(api_version));
    event.set_extension("kind", ExtensionValue::String(kind));
    event.set_extension("name", ExtensionValue::String(name));
    if !namespace.is_empty() {
        event.set_extension("namespace", ExtensionValue::String(namespace));
    }
    event
}

/// Whether `object`'s controller (the owner reference with `controller: true`) is of the
/// owner's kind and, when the owner names one, apiVersion.
pub fn controlled_by(owner: &ApiVersionKind, object: &Value) -> bool {
    let Some(references) = object
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
    else {
        return false;
    };
    references
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
        .is_some_and(|controller| {
            let field = |name: &str| controller.get(name).and_then(Value::as_str);
            field("kind") == Some(owner.kind.as_str())
                && (owner.api_version.is_empty()
                    || field("apiVersion") == Some(owner.api_version.as_str()))
        })
}

/// Turns changes of objects into the events to send, applying `owner` and `filters`.
#[derive(Debug, Clone)]
pub struct Emitter {
    pub mode: EventMode,
    pub owner: Option<ApiVersionKind>,
    pub filter: Option<Filter>,
    /// The `source` of every event.
    pub api_url: String,
}

impl Emitter {
    /// The event to send for `change` of `object`; `None` when the owner filter or a filter
    /// leaves it out.
    pub fn event(&self, change: Change, resource: &ApiResource, object: &Value) -> Option<Event> {
        if let Some(owner) = &self.owner
            && !controlled_by(owner, object)
        {
            return None;
        }
        let event = build_event(self.mode, change, &self.api_url, resource, object);
        match &self.filter {
            Some(filter) if !filter.evaluate(&event).is_match() => None,
            _ => Some(event),
        }
    }
}

/// The objects a watcher knows, to tell an add from an update: kube-runtime reports both as
/// `Apply`. Listings (the first and those after a broken watch) produce no change, as in
/// Knative, whose informer store ignores them.
#[derive(Debug, Default)]
pub struct Known {
    current: HashSet<String>,
    listing: Option<HashSet<String>>,
}

fn identity(object: &DynamicObject) -> String {
    match &object.metadata.uid {
        Some(uid) => uid.clone(),
        None => format!(
            "{}/{}",
            object.metadata.namespace.as_deref().unwrap_or_default(),
            object.metadata.name.as_deref().unwrap_or_default()
        ),
    }
}

impl Known {
    /// The change a watcher event reports, if any.
    pub fn classify(
        &mut self,
        event: watcher::Event<DynamicObject>,
    ) -> Option<(Change, DynamicObject)> {
        match event {
            watcher::Event::Init => {
                self.listing = Some(HashSet::new());
                None
            }
            watcher::Event::InitApply(object) => {
                self.listing
                    .get_or_insert_default()
                    .insert(identity(&object));
                None
            }
            watcher::Event::InitDone => {
                if let Some(listed) = self.listing.take() {
                    self.current = listed;
                }
                None
            }
            watcher::Event::Apply(object) => {
                let change = if self.current.insert(identity(&object)) {
                    Change::Added
                } else {
                    Change::Updated
                };
                Some((change, object))
            }
            watcher::Event::Delete(object) => {
                self.current.remove(&identity(&object));
                Some((Change::Deleted, object))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::GroupVersionKind;
    use serde_json::json;

    fn pods() -> ApiResource {
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Pod"), "pods")
    }

    fn pod(name: &str, uid: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "team", "uid": uid, "labels": {"app": "web"}},
               "spec": {"containers": [{"name": "app", "image": "a"}]}})
    }

    fn dynamic(value: Value) -> DynamicObject {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn subjects_follow_knative_self_links() {
        assert_eq!(
            subject_path("v1", "team", "pods", "web"),
            "/apis/v1/namespaces/team/pods/web"
        );
        assert_eq!(
            subject_path("apps/v1", "team", "deployments", "web"),
            "/apis/apps/v1/namespaces/team/deployments/web"
        );
        assert_eq!(subject_path("v1", "", "nodes", "n1"), "/apis/v1/nodes/n1");
    }

    #[test]
    fn reference_events_carry_knatives_object_reference() {
        let event = build_event(
            EventMode::Reference,
            Change::Updated,
            "https://kubernetes.default.svc",
            &pods(),
            &pod("web", "u1"),
        );
        assert_eq!(event.ty, REF_UPDATE_TYPE);
        assert_eq!(event.source, "https://kubernetes.default.svc");
        assert_eq!(
            event.subject.as_deref(),
            Some("/apis/v1/namespaces/team/pods/web")
        );
        assert_eq!(event.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(
            std::str::from_utf8(event.data.as_ref().unwrap()).unwrap(),
            r#"{"kind":"Pod","namespace":"team","name":"web","apiVersion":"v1"}"#
        );
        assert_eq!(event.attribute("kind").as_deref(), Some("Pod"));
        assert_eq!(event.attribute("apiversion").as_deref(), Some("v1"));
        assert_eq!(event.attribute("namespace").as_deref(), Some("team"));
        assert!(uuid::Uuid::parse_str(&event.id).is_ok(), "{}", event.id);
    }

    #[test]
    fn resource_events_carry_the_whole_object() {
        let mut object = pod("web", "u1");
        object.as_object_mut().unwrap().remove("kind");
        let event = build_event(
            EventMode::Resource,
            Change::Deleted,
            "https://k",
            &pods(),
            &object,
        );
        assert_eq!(event.ty, RESOURCE_DELETE_TYPE);
        let data: Value = serde_json::from_slice(event.data.as_ref().unwrap()).unwrap();
        assert_eq!(data["kind"], "Pod", "filled in from the resource");
        assert_eq!(data["spec"]["containers"][0]["image"], "a");
        assert_eq!(data["metadata"]["labels"]["app"], "web");
    }

    #[test]
    fn the_owner_filter_needs_a_matching_controller() {
        let mut object = pod("web-1", "u1");
        let owner = ApiVersionKind {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
        };
        assert!(!controlled_by(&owner, &object), "no owner");
        object["metadata"]["ownerReferences"] = json!([
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "r", "controller": false}
        ]);
        assert!(
            !controlled_by(&owner, &object),
            "an owner, not the controller"
        );
        object["metadata"]["ownerReferences"][0]["controller"] = json!(true);
        assert!(controlled_by(&owner, &object));
        let any_version = ApiVersionKind {
            api_version: String::new(),
            kind: "ReplicaSet".into(),
        };
        assert!(controlled_by(&any_version, &object));
        let other = ApiVersionKind {
            api_version: "apps/v1".into(),
            kind: "StatefulSet".into(),
        };
        assert!(!controlled_by(&other, &object));
    }

    #[test]
    fn listings_send_nothing_and_applies_tell_adds_from_updates() {
        let mut known = Known::default();
        assert!(known.classify(watcher::Event::Init).is_none());
        assert!(
            known
                .classify(watcher::Event::InitApply(dynamic(pod("old", "u0"))))
                .is_none()
        );
        assert!(known.classify(watcher::Event::InitDone).is_none());
        let change = |known: &mut Known, event| known.classify(event).map(|(c, _)| c);
        assert_eq!(
            change(&mut known, watcher::Event::Apply(dynamic(pod("old", "u0")))),
            Some(Change::Updated),
            "listed, so known"
        );
        assert_eq!(
            change(&mut known, watcher::Event::Apply(dynamic(pod("new", "u1")))),
            Some(Change::Added)
        );
        assert_eq!(
            change(&mut known, watcher::Event::Apply(dynamic(pod("new", "u1")))),
            Some(Change::Updated)
        );
        assert_eq!(
            change(
                &mut known,
                watcher::Event::Delete(dynamic(pod("new", "u1")))
            ),
            Some(Change::Deleted)
        );
        assert_eq!(
            change(&mut known, watcher::Event::Apply(dynamic(pod("new", "u2")))),
            Some(Change::Added),
            "a new object of the same name"
        );
        // A re-listing replaces what is known: "old" is gone, "u2" stays.
        assert!(known.classify(watcher::Event::Init).is_none());
        assert!(
            known
                .classify(watcher::Event::InitApply(dynamic(pod("new", "u2"))))
                .is_none()
        );
        assert!(known.classify(watcher::Event::InitDone).is_none());
        assert_eq!(
            change(&mut known, watcher::Event::Apply(dynamic(pod("old", "u0")))),
            Some(Change::Added)
        );
        assert_eq!(
            change(&mut known, watcher::Event::Apply(dynamic(pod("new", "u2")))),
            Some(Change::Updated)
        );
    }
}
