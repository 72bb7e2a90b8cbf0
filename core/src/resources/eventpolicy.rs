//! Knative `EventPolicy` (`eventing.knative.dev/v1alpha1`): who may send events to which
//! addressables of its namespace, and which events.

use super::skip_serializing_none;
use std::collections::BTreeMap;

use super::apply;
use crate::knative_kind;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::Condition;
use super::condition_set::ConditionSet;
use super::trigger::SubscriptionsApiFilter;
use super::validation::{ValidationError, typed, validate_filter, validate_metadata};

/// Knative `EventPolicy`.
#[apply(knative_kind!)]
#[kube(
    group = "eventing.knative.dev",
    version = "v1alpha1",
    kind = "EventPolicy"
)]
#[kube(status = "EventPolicyStatus", category = "eventing")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventPolicySpec {
    /// The addressables of this namespace the policy guards; empty means all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<EventPolicySpecTo>,
    /// Who may send: service accounts (or resources, by their OIDC identity) and `sub`
    /// patterns (a trailing `*` matches any suffix).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<EventPolicySpecFrom>,
    /// Subscriptions API filters every event must pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<SubscriptionsApiFilter>,
}

#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventPolicySpecTo {
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<EventPolicyToReference>,
    pub selector: Option<EventPolicySelector>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventPolicyToReference {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
}

/// A label selector over addressables of one kind.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventPolicySelector {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    pub match_labels: Option<BTreeMap<String, String>>,
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,
}

/// One `matchExpressions` entry of a Kubernetes label selector.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    pub values: Option<Vec<String>>,
}

#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventPolicySpecFrom {
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<EventPolicyFromReference>,
    pub sub: Option<String>,
}

#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventPolicyFromReference {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    /// Defaults to the policy's namespace.
    pub namespace: Option<String>,
}

/// What an EventPolicy's `Ready` depends on: OIDC authentication turned on, and its `from`
/// subjects and filters understood.
pub const EVENT_POLICY_CONDITIONS: ConditionSet =
    ConditionSet::new(&["AuthenticationEnabled", "SubjectsResolved"]);

#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct EventPolicyStatus {
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The OIDC subjects `spec.from` resolves to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<String>,
}

/// A reference to an EventPolicy in a guarded object's `status.policies`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct AppliedEventPolicyRef {
    pub api_version: String,
    pub name: String,
}

pub fn validate_event_policy_value(
    new: &Value,
    _old: Option<&Value>,
) -> Result<(), ValidationError> {
    validate_metadata(new)?;
    let policy: EventPolicy = typed(new)?;
    validate_event_policy(&policy.spec)
}

/// Knative's rules: each `from` is a `ref` or a `sub` (a `*` only as its last character),
/// each `to` a `ref` or a `selector`, references name apiVersion, kind and name.
pub fn validate_event_policy(spec: &EventPolicySpec) -> Result<(), ValidationError> {
    for (i, from) in spec.from.iter().enumerate() {
        let field = format!("spec.from[{i}]");
        let sub = from.sub.as_deref().filter(|s| !s.is_empty());
        match (&from.reference, sub) {
            (None, None) => {
                return Err(ValidationError::new(field, "set one of ref or sub"));
            }
            (Some(_), Some(_)) => {
                return Err(ValidationError::new(field, "set only one of ref or sub"));
            }
            (Some(r), None) => {
                required(&field, "ref", &r.api_version, &r.kind, &r.name)?;
            }
            (None, Some(sub)) => {
                if sub.find('*').is_some_and(|at| at + 1 < sub.len()) {
                    return Err(ValidationError::new(
                        format!("{field}.sub"),
                        format!("{sub:?}: '*' is only allowed as the last character"),
                    ));
                }
            }
        }
    }
    for (i, to) in spec.to.iter().enumerate() {
        let field = format!("spec.to[{i}]");
        match (&to.reference, &to.selector) {
            (None, None) => return Err(ValidationError::new(field, "set one of ref or selector")),
            (Some(_), Some(_)) => {
                return Err(ValidationError::new(
                    field,
                    "set only one of ref or selector",
                ));
            }
            (Some(r), None) => required(&field, "ref", &r.api_version, &r.kind, &r.name)?,
            (None, Some(s)) => {
                if s.api_version.is_empty() || s.kind.is_empty() {
                    return Err(ValidationError::new(
                        format!("{field}.selector"),
                        "apiVersion and kind are required",
                    ));
                }
                for (j, e) in s.match_expressions.iter().flatten().enumerate() {
                    let values = e.values.as_deref().unwrap_or_default();
                    let ok = match e.operator.as_str() {
                        "In" | "NotIn" => !values.is_empty(),
                        "Exists" | "DoesNotExist" => values.is_empty(),
                        _ => false,
                    };
                    if !ok {
                        return Err(ValidationError::new(
                            format!("{field}.selector.matchExpressions[{j}]"),
                            "operator must be In or NotIn (with values) or Exists or DoesNotExist (without)",
                        ));
                    }
                }
            }
        }
    }
    for (i, filter) in spec.filters.iter().enumerate() {
        validate_filter(&format!("spec.filters[{i}]"), filter)?;
    }
    Ok(())
}

fn required(
    field: &str,
    what: &str,
    api_version: &str,
    kind: &str,
    name: &str,
) -> Result<(), ValidationError> {
    for (key, value) in [("apiVersion", api_version), ("kind", kind), ("name", name)] {
        if value.is_empty() {
            return Err(ValidationError::new(
                format!("{field}.{what}.{key}"),
                "is required",
            ));
        }
    }
    Ok(())
}

inventory::submit! {
    super::KindInfo {
        group: "eventing.knative.dev",
        version: "v1alpha1",
        kind: "EventPolicy",
        plural: "eventpolicies",
        validate: validate_event_policy_value,
    }
}

inventory::submit! {
    crate::resources::CrdVersion {
        crd: <EventPolicy as kube::CustomResourceExt>::crd,
    }
}
