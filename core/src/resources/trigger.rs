use super::skip_serializing_none;
use std::collections::BTreeMap;

use super::apply;
use crate::knative_kind;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, DeliverySpec, Destination};
use super::condition_set::ConditionSet;

/// Knative `Trigger`: a subscription to a broker's events, with a filter.
#[apply(knative_kind!)]
#[kube(group = "eventing.knative.dev", version = "v1", kind = "Trigger")]
#[kube(status = "TriggerStatus", category = "eventing")]
#[kube(
    printcolumn = r#"{"name":"Broker","type":"string","jsonPath":".spec.broker"}"#,
    printcolumn = r#"{"name":"Subscriber_URI","type":"string","jsonPath":".status.subscriberUri"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TriggerSpec {
    /// Name of the broker in the trigger's namespace.
    pub broker: String,
    /// Legacy filter: exact matches on attributes; an empty value matches any value.
    pub filter: Option<TriggerFilter>,
    /// New filters (Knative's subscriptions API): all must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<SubscriptionsApiFilter>,
    pub subscriber: Destination,
    pub delivery: Option<DeliverySpec>,
}

/// The legacy `spec.filter`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TriggerFilter {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// One filter of Knative's subscriptions API; exactly one dialect must be set.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscriptionsApiFilter {
    pub exact: Option<BTreeMap<String, String>>,
    pub prefix: Option<BTreeMap<String, String>>,
    pub suffix: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "nested_filters")]
    pub all: Option<Vec<SubscriptionsApiFilter>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "nested_filters")]
    pub any: Option<Vec<SubscriptionsApiFilter>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::common::free_form_object")]
    pub not: Option<Box<SubscriptionsApiFilter>>,
    pub cesql: Option<String>,
}

// A CRD schema cannot refer to itself, so nested filters are kept as given in the CRD (as
// Knative's is) and checked by validation.
fn nested_filters(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "nullable": true,
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
    })
}

/// What a Trigger's `Ready` depends on: its broker, its subscriber's address, and the object
/// its `knative.dev/dependency` annotation names (True without one). An invalid filter or an
/// unresolved dead-letter sink, reported only then, count too.
pub const TRIGGER_CONDITIONS: ConditionSet =
    ConditionSet::new(&["BrokerReady", "SubscriberResolved", "DependencyReady"]);

#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TriggerStatus {
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    pub subscriber_uri: Option<String>,
    /// PEM CA certificates to trust at an https subscriber.
    #[serde(
        default,
        rename = "subscriberCACerts",
        skip_serializing_if = "Option::is_none"
    )]
    pub subscriber_ca_certs: Option<String>,
    pub dead_letter_sink_uri: Option<String>,
    /// PEM CA certificates to trust at an https dead-letter sink.
    #[serde(
        default,
        rename = "deadLetterSinkCACerts",
        skip_serializing_if = "Option::is_none"
    )]
    pub dead_letter_sink_ca_certs: Option<String>,
    /// The OIDC audience of the resolved subscriber, when it has one.
    pub subscriber_audience: Option<String>,
    /// The resolved dead-letter sink's OIDC audience, when it has one.
    pub dead_letter_sink_audience: Option<String>,
    /// The OIDC identity the trigger sends as (`serviceAccountName`).
    pub auth: Option<AuthStatus>,
}

/// Knative's `AuthStatus`: the service account an object's senders use.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct AuthStatus {
    pub service_account_name: Option<String>,
}

inventory::submit! {
    super::KindInfo {
        group: "eventing.knative.dev",
        version: "v1",
        kind: "Trigger",
        plural: "triggers",
        validate: super::validation::validate_trigger_value,
    }
}

inventory::submit! {
    crate::resources::CrdVersion {
        crd: <Trigger as kube::CustomResourceExt>::crd,
    }
}

/// Knative's `knative.dev/dependency` annotation on a Trigger: the object it waits for.
pub const DEPENDENCY_ANNOTATION: &str = "knative.dev/dependency";

/// The object a dependency annotation names.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DependencyReference {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

/// Reads a dependency annotation: JSON with `apiVersion`, `kind` and `name`.
pub fn parse_dependency(text: &str) -> Result<DependencyReference, String> {
    let reference: DependencyReference = serde_json::from_str(text).map_err(|e| {
        format!("Unable to unmarshal objectReference from dependency annotation of trigger: {e}")
    })?;
    for (field, value) in [
        ("apiVersion", &reference.api_version),
        ("kind", &reference.kind),
        ("name", &reference.name),
    ] {
        if value.is_empty() {
            return Err(format!("the dependency annotation needs {field}"));
        }
    }
    Ok(reference)
}
