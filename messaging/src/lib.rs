//! Knative's messaging and flows kinds: Channels (`InMemoryChannel`, `KafkaChannel`,
//! `NatsJetStreamChannel`, Rivulet's `EmbeddedChannel` and `RabbitmqChannel`, and the generic
//! `Channel` over a template), `Subscription`, and the `Sequence` and `Parallel` built from
//! them, as Knative builds them.
//!
//! A channel kind opens a channel of its backend and serves it at
//! `/{namespace}/{name}-kn-channel` on the ingress listener (Knative names a channel's service
//! `{name}-kn-channel`); each Subscription is a consumer of that channel with its own
//! delivery, and its subscriber's replies go to its `reply`. Sequence and Parallel create
//! Channels and Subscriptions, and read their status back.
#![forbid(unsafe_code)]

pub mod channel;
mod flow;
pub mod parallel;
pub mod sequence;
pub mod subscription;

use rivulet_control::runtime::Context;
use rivulet_core::resources::find_kind_by_name;
use serde_json::Value;

/// Reconciles the owners of `object` again (a Channel behind its backing channel, a Sequence
/// or Parallel behind its Channels and Subscriptions), whose status mirrors it.
pub(crate) fn requeue_owners(ctx: &Context, object: &Value) {
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let Some(owners) = object["metadata"]["ownerReferences"].as_array() else {
        return;
    };
    for owner in owners {
        let (Some(api_version), Some(kind), Some(name)) = (
            owner["apiVersion"].as_str(),
            owner["kind"].as_str(),
            owner["name"].as_str(),
        ) else {
            continue;
        };
        if let Some(kind) = find_kind_by_name(Some(api_version), kind) {
            ctx.requeue_now(kind, namespace, name);
        }
    }
}

/// Whether `status` says something else than what `object` holds, times of transitions
/// aside: only then do the objects that mirror it need to look again (which keeps a channel
/// and its subscriptions, each reconciling the other, from doing so forever).
pub(crate) fn status_changed(object: &Value, status: &Value) -> bool {
    fn without_times(status: &Value) -> Value {
        let mut status = status.clone();
        if let Some(conditions) = status.get_mut("conditions").and_then(Value::as_array_mut) {
            for condition in conditions {
                if let Some(condition) = condition.as_object_mut() {
                    condition.remove("lastTransitionTime");
                }
            }
        }
        status
    }
    object
        .get("status")
        .is_none_or(|old| without_times(old) != without_times(status))
}

#[cfg(test)]
mod tests {
    use super::status_changed;
    use serde_json::json;

    #[test]
    fn only_a_change_other_than_a_transition_time_counts() {
        let object = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
        let same = json!({"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-08T00:00:00Z"}]});
        let other = json!({"conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": "2026-12-08T00:00:00Z"}]});
        assert!(!status_changed(&object, &same));
        assert!(status_changed(&object, &other));
        assert!(status_changed(&json!({}), &same));
    }
}
