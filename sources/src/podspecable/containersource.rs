//! Knative's ContainerSource (`sources.knative.dev/v1`): runs `spec.template` as a
//! Deployment named `{name}-deployment` in the source's namespace, every container and init
//! container told the sink through `K_SINK` (and `K_CE_OVERRIDES`). The Deployment is owned
//! by the source, so Kubernetes deletes it with the source.
//!
//! Status, with Knative's condition names: `SinkBindingReady` (the sink resolved and was
//! put into the template; Knative does that through a SinkBinding) and `ReceiveAdapterReady`
//! (the Deployment is available). Deployments are not watched, so until the Deployment is
//! available the source is reconciled again every [`AVAILABILITY_RECHECK`].

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use rivulet_core::knative_source;
use rivulet_core::resources::apply;
use serde_json::{Value, json};

use super::{PodSpecable, PodSpecableReconciler, api_message, inject_env, injected_env};
use crate::{SourceSpec, SourceStatus};
use rivulet_control::runtime::{Action, Context, ReconcileError};
use rivulet_core::resources::validation::{ValidationError, typed, validate_metadata};
use rivulet_core::resources::{Condition, ConditionSet};

/// The label naming the ContainerSource on its Deployment and pods, as in Knative.
pub const SOURCE_LABEL: &str = "sources.knative.dev/containerSource";
/// The field manager of the Deployments Rivulet applies for ContainerSources.
pub const FIELD_MANAGER: &str = "rivulet-containersource";
/// Knative's condition saying the sink is resolved into the pod template.
pub const SINK_CONDITION: &str = "SinkBindingReady";
/// Knative's condition saying the Deployment is available.
pub const ADAPTER_CONDITION: &str = "ReceiveAdapterReady";
/// What a ContainerSource's `Ready` depends on: its sink bound into the pod, and the
/// receive adapter's Deployment available.
pub const CONTAINER_SOURCE_CONDITIONS: ConditionSet =
    ConditionSet::new(&[SINK_CONDITION, ADAPTER_CONDITION]);

/// How soon a source whose Deployment is not available yet is looked at again.
pub const AVAILABILITY_RECHECK: Duration = Duration::from_secs(10);

/// Knative `ContainerSource`.
#[apply(knative_source!)]
#[kube(
    group = "sources.knative.dev",
    version = "v1",
    kind = "ContainerSource"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerSourceSpec {
    /// The pods to run: a Kubernetes PodTemplateSpec.
    #[schemars(schema_with = "rivulet_core::resources::free_form_object")]
    pub template: Value,
    /// Where events go and what is added to them, as every source has.
    #[serde(flatten)]
    pub source: SourceSpec,
}

rivulet_control::register_kind! {
    kind: "ContainerSource",
    resource: ContainerSource,
    group: "sources.knative.dev",
    version: "v1",
    plural: "containersources",
    validate: validate_container_source_value,
    reconciler: PodSpecableReconciler<ContainerSource>,
}

pub fn validate_container_source_value(
    new: &Value,
    _old: Option<&Value>,
) -> Result<(), ValidationError> {
    validate_metadata(new)?;
    let source: ContainerSource = typed(new)?;
    let spec = &source.spec;
    let template: PodTemplateSpec = serde_path_to_error::deserialize(&spec.template)
        .map_err(|e| ValidationError::new(format!("spec.template.{}", e.path()), e.to_string()))?;
    let containers = template
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    if containers.is_empty() {
        return Err(ValidationError::new(
            "spec.template.spec.containers",
            "must hold at least one container",
        ));
    }
    for (index, container) in containers.iter().enumerate() {
        if container.name.is_empty() {
            return Err(ValidationError::new(
                format!("spec.template.spec.containers[{index}].name"),
                "is required",
            ));
        }
        if container.image.as_deref().unwrap_or_default().is_empty() {
            return Err(ValidationError::new(
                format!("spec.template.spec.containers[{index}].image"),
                "is required",
            ));
        }
    }
    spec.source.validate()?;
    Ok(())
}

/// The name of the Deployment running a ContainerSource.
pub fn deployment_name(source: &str) -> String {
    format!("{source}-deployment")
}

/// The Deployment a ContainerSource runs as, to be server-side applied.
pub fn deployment(source: &ContainerSource, object: &Value, sink_uri: &str) -> Value {
    let (namespace, name) = rivulet_store::object_key(object);
    let uid = object
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut template = source.spec.template.clone();
    if !template.is_object() {
        template = json!({});
    }
    template["metadata"]["labels"][SOURCE_LABEL] = json!(name);
    if let Some(spec) = template.get_mut("spec") {
        inject_env(
            spec,
            &injected_env(sink_uri, source.spec.source.ce_overrides.as_ref()),
        );
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(&name),
            "namespace": namespace,
            "labels": {SOURCE_LABEL: name},
            "ownerReferences": [{
                "apiVersion": "sources.knative.dev/v1",
                "kind": "ContainerSource",
                "name": name,
                "uid": uid,
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "selector": {"matchLabels": {SOURCE_LABEL: name}},
            "template": template,
        },
    })
}

/// `ReceiveAdapterReady` from a Deployment as the API server returned it: as in Knative, its
/// `Available` condition decides, with that condition's reason and message when not true;
/// before the Deployment controller has written one, any available replica counts.
pub fn adapter_condition(deployment: &Value) -> Condition {
    let name = deployment
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let status = deployment.get("status");
    let available = status
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Available"));
    let text = |condition: &Value, field: &str| {
        condition
            .get(field)
            .and_then(Value::as_str)
            .filter(|text| !text.is_empty())
            .map(str::to_string)
    };
    match available {
        Some(condition) if condition.get("status").and_then(Value::as_str) == Some("True") => {
            Condition::new(ADAPTER_CONDITION, true, "", "")
        }
        Some(condition) => Condition::new(
            ADAPTER_CONDITION,
            false,
            &text(condition, "reason").unwrap_or_else(|| "DeploymentUnavailable".into()),
            text(condition, "message")
                .unwrap_or_else(|| format!("Deployment {name} is not available")),
        ),
        None if status
            .and_then(|s| s.get("availableReplicas"))
            .and_then(Value::as_i64)
            .unwrap_or(0)
            >= 1 =>
        {
            Condition::new(ADAPTER_CONDITION, true, "", "")
        }
        None => Condition::new(
            ADAPTER_CONDITION,
            false,
            "DeploymentUnavailable",
            format!("Deployment {name} has no available replica yet"),
        ),
    }
}

/// A ContainerSource's Deployment, with the sink bound into its pods. Nothing to clean up:
/// the Deployment is garbage-collected through its owner reference.
impl PodSpecable for ContainerSource {
    const KIND: &'static str = "ContainerSource";
    const CONDITIONS: ConditionSet = CONTAINER_SOURCE_CONDITIONS;
    const SINK_CONDITION: &'static str = SINK_CONDITION;
    const WORKLOAD_CONDITION: &'static str = ADAPTER_CONDITION;

    fn source(&self) -> &SourceSpec {
        &self.spec.source
    }

    async fn apply_workloads(
        &self,
        object: &Value,
        sink_uri: &str,
        client: kube::Client,
        _ctx: &Arc<Context>,
    ) -> Result<(Condition, Action), ReconcileError> {
        let (namespace, source_name) = rivulet_store::object_key(object);
        let deployment = deployment(self, object, sink_uri);
        let name = deployment_name(&source_name);
        let resource = super::sinkbinding::workload_resource("apps/v1", "Deployment")
            .expect("Deployment is a supported workload");
        let api: Api<DynamicObject> = Api::namespaced_with(client, &namespace, &resource);
        let applied = api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&deployment),
            )
            .await;
        Ok(match applied {
            Ok(applied) => {
                let applied = serde_json::to_value(&applied).unwrap_or_default();
                let available = adapter_condition(&applied);
                let action = if available.is_true() {
                    Action::AwaitChange
                } else {
                    Action::Requeue(AVAILABILITY_RECHECK)
                };
                (available, action)
            }
            Err(error) => (
                Condition::new(
                    ADAPTER_CONDITION,
                    false,
                    "DeploymentFailed",
                    format!(
                        "cannot apply Deployment {namespace}/{name}: {}",
                        api_message(&error)
                    ),
                ),
                Action::Requeue(Duration::from_secs(5)),
            ),
        })
    }
}
