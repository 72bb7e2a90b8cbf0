//! Knative-compatible resource types, their validation, and the table of kinds Rivulet serves.
//!
//! The types derive kube's `CustomResource`, so the same structs serve the standalone store and
//! the Kubernetes API server.

mod broker;
mod common;
mod condition_set;
mod crds;
pub mod defaults;
pub mod eventpolicy;
pub mod eventtype;
mod kind_macros;
mod kinds;
mod manifest;
pub mod rabbitmq_broker_config;
pub mod secret;
mod trigger;
pub mod validation;

pub use broker::{BROKER_CONDITIONS, Broker, BrokerSpec, BrokerStatus};

/// A channel `NAME` is served at ingress under `NAME-kn-channel`, as Knative names the
/// channel's service; broker names may not end with it.
pub const CHANNEL_NAME_SUFFIX: &str = "-kn-channel";
pub use common::{
    Addressable, BackoffPolicy, Condition, DeliveryFormat, DeliverySpec, Destination, KReference,
    free_form_list, free_form_object, now_rfc3339,
};
pub use condition_set::{ConditionSet, READY};
pub use crds::{CrdError, CrdVersion, crds, crds_yaml, merge_versions};
pub use eventtype::{
    EVENT_TYPE_CONDITIONS, EventAttributeDefinition, EventType, EventTypeSpec, EventTypeStatus,
};
pub use kinds::{
    KindInfo, ServedVersion, find_kind, find_kind_by_name, find_served_version,
    find_served_version_by_kind, kinds,
};
/// Applies a `macro_rules!` macro to the item below, e.g. `#[apply(knative_kind!)]`.
pub use macro_rules_attribute::apply;
pub use manifest::{
    Manifest, ParsedManifests, Skipped, manifest_files, parse_manifests, parse_manifests_skipping,
};
/// Leaves `Option` fields that are `None` out of a struct's JSON; above its `#[derive]`.
pub use serde_with::skip_serializing_none;
pub use trigger::{
    AuthStatus, DEPENDENCY_ANNOTATION, DependencyReference, SubscriptionsApiFilter,
    TRIGGER_CONDITIONS, Trigger, TriggerFilter, TriggerSpec, TriggerStatus, parse_dependency,
};

/// Annotation naming the broker implementation.
pub const BROKER_CLASS_ANNOTATION: &str = "eventing.knative.dev/broker.class";
/// Knative's annotation selecting ordered or unordered delivery for a trigger.
pub const DELIVERY_ORDER_ANNOTATION: &str = "kafka.eventing.knative.dev/delivery.order";
/// Rivulet's annotation bounding a trigger's deliveries in flight.
pub const PARALLELISM_ANNOTATION: &str = "rivulet.dev/parallelism";
/// Rivulet's annotation bounding a trigger's (or Subscription's) deliveries per second.
pub const RATE_LIMIT_ANNOTATION: &str = "rivulet.dev/rate-limit";

/// Deliveries per second a `rivulet.dev/rate-limit` value allows: a number above zero (`50`,
/// `0.5`), at most a million.
pub fn parse_rate_limit(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate <= 1_000_000.0 => Ok(rate),
        _ => Err(format!(
            "{text:?} must be deliveries per second: a number above 0 and at most 1000000 (such as 50 or 0.5)"
        )),
    }
}
