use super::skip_serializing_none;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Addressable, Condition, DeliverySpec, KReference};
use super::condition_set::ConditionSet;

/// Knative `Broker`: an ingress for events and the channel behind it.
// Written out rather than with `knative_kind!`: Knative lists the wide `Class` column last.
#[skip_serializing_none]
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[kube(
    group = "eventing.knative.dev",
    version = "v1",
    kind = "Broker",
    namespaced,
    status = "BrokerStatus",
    category = "all",
    category = "knative",
    category = "eventing",
    label("duck.knative.dev/addressable", "true"),
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.address.url"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Class","type":"string","jsonPath":".metadata.annotations.eventing\\.knative\\.dev/broker\\.class","priority":1}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BrokerSpec {
    /// Backend configuration: a ConfigMap, Secret or backend-specific object.
    pub config: Option<KReference>,
    /// Default delivery for the broker's triggers.
    pub delivery: Option<DeliverySpec>,
}

/// What a Broker's `Ready` depends on: its ingress over a working channel, its address, and
/// the EventPolicies that apply to it (a dead-letter sink, when set, counts too).
pub const BROKER_CONDITIONS: ConditionSet =
    ConditionSet::new(&["IngressReady", "Addressable", "EventPoliciesReady"]);

#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct BrokerStatus {
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    pub address: Option<Addressable>,
    /// Every address, when there are several (http and https).
    pub addresses: Option<Vec<Addressable>>,
    pub dead_letter_sink_uri: Option<String>,
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
    /// The EventPolicies that apply to the broker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<super::eventpolicy::AppliedEventPolicyRef>,
}

inventory::submit! {
    super::KindInfo {
        group: "eventing.knative.dev",
        version: "v1",
        kind: "Broker",
        plural: "brokers",
        validate: super::validation::validate_broker_value,
    }
}

inventory::submit! {
    crate::resources::CrdVersion {
        crd: <Broker as kube::CustomResourceExt>::crd,
    }
}
