//! EventPolicy evaluation: which policies apply to a target (by `spec.to` refs and label
//! selectors, or all targets of the namespace when `to` is empty), whether one of them
//! admits a subject (exact, case-insensitive, or a prefix pattern ending in `*`), and whether
//! the events pass that policy's filters. With no policy applying,
//! `default-authorization-mode` decides.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use super::{AuthError, oidc_service_account, service_account_subject};
use rivulet_core::event::Event;
use rivulet_core::features::AuthorizationMode;
use rivulet_core::filter::Filter;
use rivulet_core::resources::eventpolicy::{
    EventPolicy, EventPolicySelector, EventPolicySpecFrom, LabelSelectorRequirement,
};

/// An addressable an EventPolicy may guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRef {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl TargetRef {
    pub fn audience(&self) -> String {
        super::audience(&self.group, &self.kind, &self.namespace, &self.name)
    }

    fn describe(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A policy ready to evaluate.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    pub name: String,
    pub namespace: String,
    policy: EventPolicy,
    /// Resolved `spec.from`: subjects and prefix patterns.
    pub subjects: Vec<String>,
    filters: Vec<Filter>,
    /// Why the policy cannot be used; such a policy passes no event (it fails closed).
    pub error: Option<String>,
}

impl CompiledPolicy {
    /// Compiles a (validated) policy; a filter that does not compile is kept as `error`.
    pub fn new(policy: EventPolicy) -> Self {
        let namespace = policy.metadata.namespace.clone().unwrap_or_default();
        let subjects = policy
            .spec
            .from
            .iter()
            .filter_map(|from| resolve_subject(from, &namespace))
            .collect();
        let (filters, error) = match policy
            .spec
            .filters
            .iter()
            .map(Filter::compile)
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(filters) => (filters, None),
            Err(e) => (Vec::new(), Some(format!("spec.filters: {e}"))),
        };
        Self {
            name: policy.metadata.name.clone().unwrap_or_default(),
            namespace,
            policy,
            subjects,
            filters,
            error,
        }
    }

    /// Whether the policy guards `target`.
    pub fn applies_to(&self, target: &TargetRef) -> bool {
        if target.namespace != self.namespace {
            return false;
        }
        let to = &self.policy.spec.to;
        if to.is_empty() {
            return true;
        }
        to.iter().any(|to| {
            if let Some(r) = &to.reference
                && group_of(&r.api_version).eq_ignore_ascii_case(&target.group)
                && r.kind.eq_ignore_ascii_case(&target.kind)
                && r.name.eq_ignore_ascii_case(&target.name)
            {
                return true;
            }
            to.selector
                .as_ref()
                .is_some_and(|s| selector_matches(s, target))
        })
    }

    /// Whether `subject` is among the policy's senders.
    pub fn admits(&self, subject: &str) -> bool {
        self.subjects.iter().any(|allowed| {
            allowed.eq_ignore_ascii_case(subject)
                || allowed
                    .strip_suffix('*')
                    .is_some_and(|prefix| subject.starts_with(prefix))
        })
    }

    /// Whether every event passes the policy's filters.
    pub fn passes(&self, events: &[Event]) -> bool {
        self.error.is_none()
            && events
                .iter()
                .all(|event| self.filters.iter().all(|f| f.evaluate(event).is_match()))
    }
}

/// The subject a `spec.from` entry stands for: a ServiceAccount ref is that account; a ref
/// to another resource is the OIDC service account Knative gives it; `sub` as written.
pub fn resolve_subject(from: &EventPolicySpecFrom, namespace: &str) -> Option<String> {
    if let Some(sub) = from.sub.as_deref().filter(|s| !s.is_empty()) {
        return Some(sub.to_string());
    }
    let r = from.reference.as_ref()?;
    let ns = r.namespace.as_deref().unwrap_or(namespace);
    let group = group_of(&r.api_version);
    if group.is_empty() && r.kind == "ServiceAccount" {
        return Some(service_account_subject(ns, &r.name));
    }
    Some(service_account_subject(
        ns,
        &oidc_service_account(group, &r.kind, &r.name),
    ))
}

/// The group of an `apiVersion` (empty for the core group).
fn group_of(api_version: &str) -> &str {
    api_version
        .rsplit_once('/')
        .map(|(group, _)| group)
        .unwrap_or("")
}

fn selector_matches(selector: &EventPolicySelector, target: &TargetRef) -> bool {
    if !group_of(&selector.api_version).eq_ignore_ascii_case(&target.group)
        || !selector.kind.eq_ignore_ascii_case(&target.kind)
    {
        return false;
    }
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| target.labels.get(k) == Some(v));
    labels_match
        && selector
            .match_expressions
            .iter()
            .flatten()
            .all(|e| requirement_matches(e, &target.labels))
}

fn requirement_matches(r: &LabelSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let value = labels.get(&r.key);
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

/// The EventPolicies in force, by namespace and name.
#[derive(Default)]
pub struct PolicyIndex(RwLock<HashMap<String, BTreeMap<String, Arc<CompiledPolicy>>>>);

impl PolicyIndex {
    pub fn insert(&self, policy: CompiledPolicy) {
        self.0
            .write()
            .expect("lock poisoned")
            .entry(policy.namespace.clone())
            .or_default()
            .insert(policy.name.clone(), Arc::new(policy));
    }

    pub fn remove(&self, namespace: &str, name: &str) {
        let mut all = self.0.write().expect("lock poisoned");
        if let Some(in_namespace) = all.get_mut(namespace) {
            in_namespace.remove(name);
            if in_namespace.is_empty() {
                all.remove(namespace);
            }
        }
    }

    /// The policies guarding `target`, by name.
    pub fn applying(&self, target: &TargetRef) -> Vec<Arc<CompiledPolicy>> {
        self.0
            .read()
            .expect("lock poisoned")
            .get(&target.namespace)
            .map(|policies| {
                policies
                    .values()
                    .filter(|p| p.applies_to(target))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether `subject` may send `events` to `target`.
    pub fn authorize(
        &self,
        target: &TargetRef,
        subject: &str,
        events: &[Event],
        mode: AuthorizationMode,
    ) -> Result<(), AuthError> {
        let policies = self.applying(target);
        if policies.is_empty() {
            return match mode {
                AuthorizationMode::AllowAll => Ok(()),
                AuthorizationMode::DenyAll => Err(AuthError::Forbidden(format!(
                    "no EventPolicy applies to {} and default-authorization-mode is deny-all",
                    target.describe()
                ))),
                AuthorizationMode::AllowSameNamespace => {
                    let prefix = format!("system:serviceaccount:{}:", target.namespace);
                    if subject.starts_with(&prefix) {
                        Ok(())
                    } else {
                        Err(AuthError::Forbidden(format!(
                            "subject {subject} is not from namespace {} and no EventPolicy applies to {} (default-authorization-mode is allow-same-namespace)",
                            target.namespace,
                            target.describe()
                        )))
                    }
                }
            };
        }
        let admitting: Vec<_> = policies.iter().filter(|p| p.admits(subject)).collect();
        if admitting.iter().any(|p| p.passes(events)) {
            return Ok(());
        }
        if admitting.is_empty() {
            let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
            return Err(AuthError::Forbidden(format!(
                "subject {subject} is not admitted by the EventPolicies applying to {} ({})",
                target.describe(),
                names.join(", ")
            )));
        }
        let names: Vec<&str> = admitting.iter().map(|p| p.name.as_str()).collect();
        Err(AuthError::Forbidden(format!(
            "the event does not pass the filters of EventPolicy {} applying to {}",
            names.join(", "),
            target.describe()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(value: serde_json::Value) -> CompiledPolicy {
        let policy: EventPolicy = serde_json::from_value(value).unwrap();
        CompiledPolicy::new(policy)
    }

    fn broker(name: &str, labels: &[(&str, &str)]) -> TargetRef {
        TargetRef {
            group: "eventing.knative.dev".into(),
            kind: "Broker".into(),
            namespace: "ns".into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn refs_selectors_and_subjects_resolve_as_knative() {
        let p = policy(json!({
            "apiVersion": "eventing.knative.dev/v1alpha1", "kind": "EventPolicy",
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {
                "to": [
                    {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "a"}},
                    {"selector": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
                                  "matchLabels": {"team": "x"},
                                  "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}}
                ],
                "from": [
                    {"ref": {"apiVersion": "v1", "kind": "ServiceAccount", "name": "sender"}},
                    {"ref": {"apiVersion": "sources.knative.dev/v1", "kind": "PingSource", "name": "tick", "namespace": "other"}},
                    {"sub": "system:serviceaccount:team:*"}
                ]
            }
        }));
        assert!(p.applies_to(&broker("a", &[])));
        assert!(p.applies_to(&broker("b", &[("team", "x")])));
        assert!(!p.applies_to(&broker("b", &[("team", "x"), ("env", "prod")])));
        assert!(!p.applies_to(&broker("c", &[])));
        assert_eq!(
            p.subjects,
            [
                "system:serviceaccount:ns:sender",
                "system:serviceaccount:other:tick-oidc-sources.knative.dev-pingsource",
                "system:serviceaccount:team:*"
            ]
        );
        assert!(p.admits("system:serviceaccount:team:anyone"));
        assert!(!p.admits("system:serviceaccount:teams:anyone"));
    }

    #[test]
    fn default_mode_decides_when_no_policy_applies() {
        let index = PolicyIndex::default();
        let target = broker("a", &[]);
        let same = "system:serviceaccount:ns:x";
        let other = "system:serviceaccount:elsewhere:x";
        assert!(
            index
                .authorize(&target, other, &[], AuthorizationMode::AllowAll)
                .is_ok()
        );
        assert!(
            index
                .authorize(&target, same, &[], AuthorizationMode::DenyAll)
                .is_err()
        );
        assert!(
            index
                .authorize(&target, same, &[], AuthorizationMode::AllowSameNamespace)
                .is_ok()
        );
        let refused = index
            .authorize(&target, other, &[], AuthorizationMode::AllowSameNamespace)
            .unwrap_err();
        assert_eq!(refused.status(), http::StatusCode::FORBIDDEN);
    }
}
