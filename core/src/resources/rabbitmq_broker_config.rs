//! Knative's `RabbitmqBrokerConfig` (`eventing.knative.dev/v1alpha1`): what a
//! `RabbitMQBroker`'s `spec.config` may name instead of a Secret or ConfigMap. Rivulet reads
//! the connection from `spec.rabbitmqClusterReference.connectionSecret` (a Secret with `uri`,
//! or Knative's `uri`/`port`/`username`/`password` keys) and the queue type from
//! `spec.queueType`. A reference to a `RabbitmqCluster` by `name` alone needs the Kubernetes
//! cluster operator and is refused.

use super::skip_serializing_none;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::validation::{ValidationError, typed, validate_metadata};

/// `RabbitmqBrokerConfig`.
#[skip_serializing_none]
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[kube(
    group = "eventing.knative.dev",
    version = "v1alpha1",
    kind = "RabbitmqBrokerConfig",
    plural = "rabbitmqbrokerconfigs",
    namespaced,
    category = "knative",
    category = "eventing"
)]
#[serde(rename_all = "camelCase")]
pub struct RabbitmqBrokerConfigSpec {
    pub rabbitmq_cluster_reference: RabbitmqClusterReference,
    /// `classic` or `quorum`.
    pub queue_type: Option<String>,
}

/// Where the RabbitMQ is. Only `connectionSecret` is served outside Kubernetes.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RabbitmqClusterReference {
    /// A `RabbitmqCluster` of the cluster operator (Kubernetes only).
    pub name: Option<String>,
    /// Namespace of the cluster or the Secret; the referring object's own when unset.
    pub namespace: Option<String>,
    pub connection_secret: Option<SecretReference>,
}

/// A Secret by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretReference {
    pub name: String,
}

/// Checks where a RabbitMQ source or sink connects: an AMQP URI at `spec.uri` or a connection
/// Secret at `secret_field`, exactly one of them. `missing` is the error when neither is given,
/// since each kind says differently what it expects.
pub fn validate_amqp_connection(
    uri: Option<&str>,
    secret: Option<&SecretReference>,
    secret_field: &str,
    missing: ValidationError,
) -> Result<(), ValidationError> {
    match (uri, secret) {
        (Some(_), Some(_)) => Err(ValidationError::new(
            "spec.uri",
            format!("give either spec.uri or {secret_field}, not both"),
        )),
        (None, None) => Err(missing),
        (Some(uri), None) => rivulet_channels::rabbitmq::link::check_uri(uri)
            .map_err(|e| ValidationError::new("spec.uri", e.to_string())),
        (None, Some(secret)) if secret.name.is_empty() => Err(ValidationError::new(
            format!("{secret_field}.name"),
            "is required",
        )),
        (None, Some(_)) => Ok(()),
    }
}

inventory::submit! {
    super::KindInfo {
        group: "eventing.knative.dev",
        version: "v1alpha1",
        kind: "RabbitmqBrokerConfig",
        plural: "rabbitmqbrokerconfigs",
        validate: validate_rabbitmq_broker_config_value,
    }
}

inventory::submit! {
    crate::resources::CrdVersion {
        crd: <RabbitmqBrokerConfig as kube::CustomResourceExt>::crd,
    }
}

pub fn validate_rabbitmq_broker_config_value(
    new: &Value,
    _old: Option<&Value>,
) -> Result<(), ValidationError> {
    validate_metadata(new)?;
    let config: RabbitmqBrokerConfig = typed(new)?;
    validate_rabbitmq_broker_config(&config.spec)
}

pub fn validate_rabbitmq_broker_config(
    spec: &RabbitmqBrokerConfigSpec,
) -> Result<(), ValidationError> {
    const SECRET_FIELD: &str = "spec.rabbitmqClusterReference.connectionSecret";
    validate_amqp_connection(
        None,
        spec.rabbitmq_cluster_reference.connection_secret.as_ref(),
        SECRET_FIELD,
        ValidationError::new(
            SECRET_FIELD,
            "is required outside Kubernetes: name a Secret whose key uri holds the AMQP URI",
        ),
    )?;
    match spec.queue_type.as_deref() {
        None | Some("classic") | Some("quorum") => Ok(()),
        Some(other) => Err(ValidationError::new(
            "spec.queueType",
            format!("{other:?} is not a queue type; use classic or quorum"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn connection_secret_and_queue_type_are_checked() {
        let config = |spec: Value| {
            json!({"apiVersion": "eventing.knative.dev/v1alpha1", "kind": "RabbitmqBrokerConfig",
                   "metadata": {"name": "c", "namespace": "default"}, "spec": spec})
        };
        let good = config(json!({
            "rabbitmqClusterReference": {"connectionSecret": {"name": "rabbit"}},
            "queueType": "quorum"
        }));
        assert!(validate_rabbitmq_broker_config_value(&good, None).is_ok());
        let cluster_only = config(json!({"rabbitmqClusterReference": {"name": "rabbitmq"}}));
        let error = validate_rabbitmq_broker_config_value(&cluster_only, None).unwrap_err();
        assert_eq!(
            error.field,
            "spec.rabbitmqClusterReference.connectionSecret"
        );
        let bad_type = config(json!({
            "rabbitmqClusterReference": {"connectionSecret": {"name": "rabbit"}},
            "queueType": "stream"
        }));
        let error = validate_rabbitmq_broker_config_value(&bad_type, None).unwrap_err();
        assert_eq!(error.field, "spec.queueType");
    }
}
