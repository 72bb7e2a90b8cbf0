//! Kubernetes Events from the controller: a Warning when an object stops being ready (or a
//! reconcile fails), a Normal `Ready` when it recovers. Each change is said once, not on
//! every requeue.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde_json::Value;

use super::{Context, ReconcileError, Role};
use rivulet_core::resources::KindInfo;
use rivulet_store::object_key;

/// The reporting controller named in Events.
pub const REPORTER: &str = "rivulet-controller";

type Key = (&'static str, String, String); // kind, namespace, name

/// What an object's `Ready` condition says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadySummary {
    pub ready: bool,
    pub reason: String,
    pub message: String,
}

impl ReadySummary {
    /// The `Ready` condition of a status, if it has one.
    pub fn of(status: &Value) -> Option<Self> {
        let condition = status
            .get("conditions")?
            .as_array()?
            .iter()
            .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))?;
        let text = |field: &str| {
            condition
                .get(field)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Some(Self {
            ready: text("status") == "True",
            reason: text("reason"),
            message: text("message"),
        })
    }
}

/// What was written and what was said, per object.
#[derive(Default)]
pub(super) struct EventState {
    written: Mutex<HashMap<Key, ReadySummary>>,
    said: Mutex<HashMap<Key, Said>>,
    recorder: OnceLock<Option<Recorder>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Said {
    Ready(ReadySummary),
    Failed(String),
}

fn key(kind: &'static KindInfo, namespace: &str, name: &str) -> Key {
    (kind.kind, namespace.to_string(), name.to_string())
}

impl EventState {
    pub(super) fn record_ready(
        &self,
        kind: &'static KindInfo,
        namespace: &str,
        name: &str,
        summary: Option<ReadySummary>,
    ) {
        let mut written = self.written.lock().expect("lock poisoned");
        match summary {
            Some(summary) => written.insert(key(kind, namespace, name), summary),
            None => written.remove(&key(kind, namespace, name)),
        };
    }

    pub(super) fn forget(&self, kind: &'static KindInfo, namespace: &str, name: &str) {
        let key = key(kind, namespace, name);
        self.written.lock().expect("lock poisoned").remove(&key);
        self.said.lock().expect("lock poisoned").remove(&key);
    }

    fn recorder(&self, ctx: &Context) -> Option<Recorder> {
        if ctx.role() != Role::Controller {
            return None;
        }
        self.recorder
            .get_or_init(|| {
                let instance = std::env::var("POD_NAME")
                    .or_else(|_| std::env::var("HOSTNAME"))
                    .ok();
                ctx.kube_client().map(|client| {
                    Recorder::new(
                        client,
                        Reporter {
                            controller: REPORTER.into(),
                            instance,
                        },
                    )
                })
            })
            .clone()
    }

    /// After a reconcile: says what changed in the object's readiness since last said.
    pub(super) fn publish_changes(&self, ctx: &Context, kind: &'static KindInfo, object: &Value) {
        let Some(recorder) = self.recorder(ctx) else {
            return;
        };
        let (namespace, name) = object_key(object);
        let key = key(kind, &namespace, &name);
        let Some(now) = self
            .written
            .lock()
            .expect("lock poisoned")
            .get(&key)
            .cloned()
        else {
            return;
        };
        let before = {
            let mut said = self.said.lock().expect("lock poisoned");
            let current = Said::Ready(now.clone());
            if said.get(&key) == Some(&current) {
                return;
            }
            said.insert(key, current)
        };
        let event = if now.ready {
            // Being ready is news only after something went wrong.
            if before.is_none() || matches!(&before, Some(Said::Ready(r)) if r.ready) {
                return;
            }
            Event {
                type_: EventType::Normal,
                reason: "Ready".into(),
                note: Some(format!("{} {namespace}/{name} is ready", kind.kind)),
                action: "Reconcile".into(),
                secondary: None,
            }
        } else {
            Event {
                type_: EventType::Warning,
                reason: if now.reason.is_empty() {
                    "NotReady".into()
                } else {
                    now.reason.clone()
                },
                note: Some(truncate(&now.message)),
                action: "Reconcile".into(),
                secondary: None,
            }
        };
        publish(recorder, event, reference(kind, object));
    }

    /// A reconcile failed: says so once per distinct error.
    pub(super) fn publish_failure(
        &self,
        ctx: &Context,
        kind: &'static KindInfo,
        object: &Value,
        error: &ReconcileError,
    ) {
        let Some(recorder) = self.recorder(ctx) else {
            return;
        };
        let (namespace, name) = object_key(object);
        let message = error.to_string();
        let current = Said::Failed(message.clone());
        {
            let mut said = self.said.lock().expect("lock poisoned");
            if said.get(&key(kind, &namespace, &name)) == Some(&current) {
                return;
            }
            said.insert(key(kind, &namespace, &name), current);
        }
        let event = Event {
            type_: EventType::Warning,
            reason: error.reason().into(),
            note: Some(truncate(&message)),
            action: "Reconcile".into(),
            secondary: None,
        };
        publish(recorder, event, reference(kind, object));
    }
}

/// The object an Event is about.
fn reference(kind: &KindInfo, object: &Value) -> ObjectReference {
    let (namespace, name) = object_key(object);
    ObjectReference {
        api_version: Some(kind.api_version()),
        kind: Some(kind.kind.to_string()),
        namespace: Some(namespace),
        name: Some(name),
        uid: object
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        ..ObjectReference::default()
    }
}

/// Events carry at most 1 kB of note.
fn truncate(message: &str) -> String {
    if message.len() <= 1000 {
        return message.to_string();
    }
    let mut end = 1000;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
}

/// Sends the Event in the background: reconciling never waits on it, and a failure to say
/// something is only logged.
fn publish(recorder: Recorder, event: Event, reference: ObjectReference) {
    tokio::spawn(async move {
        if let Err(error) = recorder.publish(&event, &reference).await {
            tracing::warn!(%error, reason = %event.reason, object = ?reference.name, "could not publish a Kubernetes Event");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ready_summary_reads_the_ready_condition() {
        let status = json!({"conditions": [
            {"type": "Ready", "status": "False", "reason": "BrokerDoesNotExist", "message": "no broker"},
            {"type": "BrokerReady", "status": "False"}
        ]});
        let summary = ReadySummary::of(&status).expect("has Ready");
        assert!(!summary.ready);
        assert_eq!(summary.reason, "BrokerDoesNotExist");
        assert_eq!(summary.message, "no broker");
        assert!(ReadySummary::of(&json!({"conditions": []})).is_none());
    }

    #[test]
    fn long_notes_are_cut_on_a_character_boundary() {
        let long = "é".repeat(700);
        let cut = truncate(&long);
        assert!(cut.len() <= 1003);
        assert!(cut.ends_with("..."));
    }
}
