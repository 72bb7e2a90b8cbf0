//! Knative's SinkBinding (`sources.knative.dev/v1`): tells existing workloads (the
//! `subject`, by name or label selector) where to send events, by setting `K_SINK` (and
//! `K_CE_OVERRIDES`) on every container of their pod template.
//!
//! The variables are written by server-side apply under the field manager
//! `rivulet-sinkbinding`, which names only those env entries (containers and env are lists
//! keyed by name, so the apply merges into them). The workload's owner keeps every other
//! field; and on delete, an apply naming nothing makes the API server drop exactly the
//! entries this manager owned. A JSON merge patch cannot do that: it replaces whole lists.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::CustomResource;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{api_message, injected_env, kubernetes_required, write_status};
use crate::resources::validation::{
    ValidationError, typed, validate_destination, validate_metadata,
};
use crate::resources::{Condition, Destination, KindInfo};
use crate::runtime::{self, Action, Context, ReconcileError, Reconciler};
use crate::sources::{CloudEventOverrides, SourceStatus};

/// The field manager owning the injected env entries.
pub const FIELD_MANAGER: &str = "rivulet-sinkbinding";

/// Knative `SinkBinding`.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[kube(
    group = "sources.knative.dev",
    version = "v1",
    kind = "SinkBinding",
    plural = "sinkbindings",
    namespaced,
    status = "SourceStatus",
    category = "all",
    category = "knative",
    category = "sources",
    category = "bindings",
    label("duck.knative.dev/source", "true"),
    label("duck.knative.dev/binding", "true"),
    printcolumn = r#"{"name":"Sink","type":"string","jsonPath":".status.sinkUri"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SinkBindingSpec {
    pub subject: Subject,
    pub sink: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ce_overrides: Option<CloudEventOverrides>,
}

/// The workloads bound: one by name, or all matching a label selector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subject {
    pub api_version: String,
    pub kind: String,
    /// Must be the binding's own namespace when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<SubjectSelector>,
}

/// A label selector; `matchLabels` only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubjectSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

inventory::submit! {
    KindInfo {
        group: "sources.knative.dev",
        version: "v1",
        kind: "SinkBinding",
        plural: "sinkbindings",
        validate: validate_sink_binding_value,
    }
}

inventory::submit! {
    crate::resources::CrdVersion {
        crd: <SinkBinding as kube::CustomResourceExt>::crd,
    }
}

inventory::submit! {
    Reconciler {
        kind: "SinkBinding",
        order: 30,
        reconcile: |object, ctx| Box::pin(reconcile(object, ctx)),
        cleanup: |object, ctx| Box::pin(cleanup(object, ctx)),
    }
}

/// How kube addresses a workload kind a SinkBinding can bind; `None` for other kinds.
/// (A Job's pod template cannot change once created, so Jobs are not bound.)
pub fn workload_resource(api_version: &str, kind: &str) -> Option<ApiResource> {
    let plural = match (api_version, kind) {
        ("apps/v1", "Deployment") => "deployments",
        ("apps/v1", "StatefulSet") => "statefulsets",
        ("apps/v1", "DaemonSet") => "daemonsets",
        ("apps/v1", "ReplicaSet") => "replicasets",
        _ => return None,
    };
    Some(ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("apps", "v1", kind),
        plural,
    ))
}

pub fn validate_sink_binding_value(
    new: &Value,
    _old: Option<&Value>,
) -> Result<(), ValidationError> {
    validate_metadata(new)?;
    let binding: SinkBinding = typed(new)?;
    let (namespace, _) = crate::store::object_key(new);
    let subject = &binding.spec.subject;
    if subject.api_version.is_empty() {
        return Err(ValidationError::new(
            "spec.subject.apiVersion",
            "is required",
        ));
    }
    if subject.kind.is_empty() {
        return Err(ValidationError::new("spec.subject.kind", "is required"));
    }
    if workload_resource(&subject.api_version, &subject.kind).is_none() {
        return Err(ValidationError::new(
            "spec.subject.kind",
            format!(
                "{} {} cannot be bound; use apps/v1 Deployment, StatefulSet, DaemonSet or ReplicaSet",
                subject.api_version, subject.kind
            ),
        ));
    }
    if let Some(subject_namespace) = &subject.namespace
        && *subject_namespace != namespace
    {
        return Err(ValidationError::new(
            "spec.subject.namespace",
            format!("must be the binding's namespace {namespace:?} (or unset)"),
        ));
    }
    match (&subject.name, &subject.selector) {
        (Some(_), Some(_)) => {
            return Err(ValidationError::new(
                "spec.subject",
                "name and selector are mutually exclusive; set one of them",
            ));
        }
        (None, None) => {
            return Err(ValidationError::new(
                "spec.subject",
                "set name or selector to say which workloads to bind",
            ));
        }
        (Some(name), None) if name.is_empty() => {
            return Err(ValidationError::new(
                "spec.subject.name",
                "must not be empty",
            ));
        }
        (None, Some(selector)) if selector.match_labels.is_empty() => {
            return Err(ValidationError::new(
                "spec.subject.selector.matchLabels",
                "must hold at least one label (an empty selector would bind every workload)",
            ));
        }
        _ => {}
    }
    validate_destination("spec.sink", &binding.spec.sink)?;
    if let Some(overrides) = &binding.spec.ce_overrides {
        crate::sources::validate_ce_overrides("spec.ceOverrides", overrides)?;
    }
    Ok(())
}

/// The apply that sets `env` on the named containers of a workload.
pub fn env_apply(subject: &Subject, name: &str, containers: &[String], env: &[Value]) -> Value {
    let containers: Vec<Value> = containers
        .iter()
        .map(|container| json!({"name": container, "env": env}))
        .collect();
    json!({
        "apiVersion": subject.api_version,
        "kind": subject.kind,
        "metadata": {"name": name},
        "spec": {"template": {"spec": {"containers": containers}}},
    })
}

/// The apply that gives up every field `rivulet-sinkbinding` owned on a workload.
pub fn release_apply(subject: &Subject, name: &str) -> Value {
    json!({"apiVersion": subject.api_version, "kind": subject.kind, "metadata": {"name": name}})
}

fn container_names(workload: &DynamicObject) -> Vec<String> {
    workload
        .data
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// The subject's workloads that exist now.
async fn subjects(
    api: &Api<DynamicObject>,
    subject: &Subject,
) -> Result<Vec<DynamicObject>, String> {
    match (&subject.name, &subject.selector) {
        (Some(name), _) => match api.get_opt(name).await {
            Ok(Some(workload)) => Ok(vec![workload]),
            Ok(None) => Err(format!("{} {name} does not exist", subject.kind)),
            Err(error) => Err(api_message(&error)),
        },
        (None, Some(selector)) => {
            let labels: Vec<String> = selector
                .match_labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            api.list(&ListParams::default().labels(&labels.join(",")))
                .await
                .map(|list| list.items)
                .map_err(|error| api_message(&error))
        }
        (None, None) => Ok(Vec::new()),
    }
}

fn subject_api(
    client: kube::Client,
    subject: &Subject,
    namespace: &str,
) -> Result<Api<DynamicObject>, ReconcileError> {
    let resource = workload_resource(&subject.api_version, &subject.kind).ok_or_else(|| {
        ReconcileError::Invalid(format!(
            "{} {} cannot be bound",
            subject.api_version, subject.kind
        ))
    })?;
    Ok(Api::namespaced_with(client, namespace, &resource))
}

async fn reconcile(object: &Value, ctx: &Arc<Context>) -> Result<Action, ReconcileError> {
    let binding: SinkBinding = typed(object).map_err(|e| ReconcileError::Invalid(e.to_string()))?;
    let (namespace, _) = crate::store::object_key(object);
    let retry_later = Action::Requeue(Duration::from_secs(5));
    let mut parts = Vec::new();
    let uri = match runtime::resolve_destination(&binding.spec.sink, &namespace, ctx).await {
        Ok(uri) => {
            parts.push(Condition::new("SinkProvided", true, "", ""));
            uri
        }
        Err(reason) => {
            parts.push(Condition::new(
                "SinkProvided",
                false,
                "SinkNotFound",
                reason,
            ));
            write_status(ctx, "SinkBinding", object, None, parts).await?;
            return Ok(retry_later);
        }
    };
    let Some(client) = ctx.kube_client() else {
        parts.push(kubernetes_required("SinkBinding", "BindingsReady"));
        write_status(ctx, "SinkBinding", object, Some(uri), parts).await?;
        return Ok(Action::AwaitChange);
    };
    let subject = &binding.spec.subject;
    let api = subject_api(client, subject, &namespace)?;
    let env = injected_env(&uri, binding.spec.ce_overrides.as_ref());
    let mut action = Action::AwaitChange;
    match subjects(&api, subject).await {
        Err(message) => {
            parts.push(Condition::new(
                "BindingsReady",
                false,
                "SubjectNotFound",
                message,
            ));
            action = retry_later;
        }
        Ok(workloads) => {
            let mut failures = Vec::new();
            for workload in &workloads {
                let name = workload.metadata.name.clone().unwrap_or_default();
                let apply = env_apply(subject, &name, &container_names(workload), &env);
                let params = PatchParams::apply(FIELD_MANAGER).force();
                if let Err(error) = api.patch(&name, &params, &Patch::Apply(&apply)).await {
                    failures.push(format!("{name}: {}", api_message(&error)));
                }
            }
            if failures.is_empty() {
                parts.push(Condition::new("BindingsReady", true, "", ""));
            } else {
                parts.push(Condition::new(
                    "BindingsReady",
                    false,
                    "BindingFailed",
                    format!("cannot bind {}", failures.join("; ")),
                ));
                action = retry_later;
            }
        }
    }
    write_status(ctx, "SinkBinding", object, Some(uri), parts).await?;
    Ok(action)
}

/// Removes the injected variables from the subject's workloads.
async fn cleanup(object: &Value, ctx: &Arc<Context>) -> Result<(), ReconcileError> {
    let Some(client) = ctx.kube_client() else {
        return Ok(());
    };
    let binding: SinkBinding = typed(object).map_err(|e| ReconcileError::Invalid(e.to_string()))?;
    let (namespace, _) = crate::store::object_key(object);
    let subject = &binding.spec.subject;
    let api = subject_api(client, subject, &namespace)?;
    let workloads = subjects(&api, subject)
        .await
        .map_err(ReconcileError::Invalid)?;
    for workload in workloads {
        let name = workload.metadata.name.clone().unwrap_or_default();
        let apply = release_apply(subject, &name);
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&apply),
        )
        .await
        .map_err(|error| ReconcileError::Invalid(format!("{name}: {}", api_message(&error))))?;
    }
    Ok(())
}
