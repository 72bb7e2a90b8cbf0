//! Knative's SinkBinding (`sources.knative.dev/v1`): tells existing workloads (the
//! `subject`, by name or label selector) where to send events, by setting `K_SINK` (and
//! `K_CE_OVERRIDES`) on every container and init container of their pod template.
//!
//! The variables are written by server-side apply under the field manager
//! `rivulet-sinkbinding`, which names only those env entries (containers and env are lists
//! keyed by name, so the apply merges into them) and the label `rivulet.dev/sinkbinding`.
//! The workload's owner keeps every other field. To unbind a workload, an apply naming
//! nothing makes the API server drop exactly the entries (and the label) this manager owned.
//! A JSON merge patch cannot do that: it replaces whole lists.
//!
//! The label is how a binding remembers what it bound, across restarts of Rivulet: a
//! workload labelled with the binding's name that is no longer among its subjects (its labels
//! changed, or the binding's subject did) is released at the next reconcile, and deleting the
//! binding releases every workload carrying its label. Workloads are not watched, so a
//! ready binding looks at its subjects again every [`SUBJECT_RECHECK`].

use rivulet_core::resources::skip_serializing_none;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use rivulet_core::knative_kind;
use rivulet_core::resources::apply;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{CONTAINER_LISTS, PodSpecable, PodSpecableReconciler, api_message, injected_env};
use crate::{SourceSpec, SourceStatus};
use rivulet_control::runtime::{Action, Context, ReconcileError};
use rivulet_core::resources::validation::{ValidationError, typed, validate_metadata};
use rivulet_core::resources::{Condition, ConditionSet};

/// The field manager owning the injected env entries and the binding label.
pub const FIELD_MANAGER: &str = "rivulet-sinkbinding";
/// The label naming the SinkBinding on every workload it bound.
pub const BINDING_LABEL: &str = "rivulet.dev/sinkbinding";
/// Knative's condition saying the subjects are bound.
pub const AVAILABLE_CONDITION: &str = "SinkBindingAvailable";
/// What a SinkBinding's `Ready` depends on: its sink resolved, and the subject's pods given
/// `K_SINK`.
pub const SINK_BINDING_CONDITIONS: ConditionSet =
    ConditionSet::new(&["SinkProvided", AVAILABLE_CONDITION]);

/// How often a ready binding looks at its subjects again, since workloads are not watched:
/// a workload created or relabelled meanwhile is bound or released then.
pub const SUBJECT_RECHECK: Duration = Duration::from_secs(60);
/// The workload kinds a SinkBinding can bind, as (apiVersion, kind, plural). A Job's pod
/// template cannot change once created, so Jobs are not bound.
pub const BINDABLE_KINDS: [(&str, &str, &str); 5] = [
    ("apps/v1", "Deployment", "deployments"),
    ("apps/v1", "StatefulSet", "statefulsets"),
    ("apps/v1", "DaemonSet", "daemonsets"),
    ("apps/v1", "ReplicaSet", "replicasets"),
    (KNATIVE_SERVICE.0, KNATIVE_SERVICE.1, "services"),
];

/// A Knative Service (apiVersion, kind). Its containers are usually unnamed and its CRD keeps
/// lists whole under server-side apply, so it is bound by a JSON merge patch of its whole
/// container lists instead, made against the version read (`resourceVersion`) so that a
/// concurrent change is not overwritten. Each change of its template makes a new Revision,
/// as binding one does in Knative.
pub const KNATIVE_SERVICE: (&str, &str) = ("serving.knative.dev/v1", "Service");

fn is_knative_service(api_version: &str, kind: &str) -> bool {
    (api_version, kind) == KNATIVE_SERVICE
}

/// Knative `SinkBinding`.
#[apply(knative_kind!)]
#[kube(group = "sources.knative.dev", version = "v1", kind = "SinkBinding")]
#[kube(status = "SourceStatus", category = "sources", category = "bindings")]
#[kube(
    label("duck.knative.dev/source", "true"),
    label("duck.knative.dev/binding", "true"),
    printcolumn = r#"{"name":"Sink","type":"string","jsonPath":".status.sinkUri"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SinkBindingSpec {
    /// The workloads whose containers get `K_SINK` and `K_CE_OVERRIDES`.
    pub subject: Subject,
    /// Where the workloads send events and what they add to them: the sink resolved into
    /// `K_SINK`, the overrides passed as JSON in `K_CE_OVERRIDES`.
    #[serde(flatten)]
    pub source: SourceSpec,
}

/// The workloads bound: one by name, or all matching a label selector.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subject {
    /// `apps/v1`, or `serving.knative.dev/v1` for a Knative Service.
    pub api_version: String,
    /// Deployment, StatefulSet, DaemonSet or ReplicaSet (`apps/v1`), or Service
    /// (`serving.knative.dev/v1`).
    pub kind: String,
    /// Must be the binding's own namespace when set.
    pub namespace: Option<String>,
    /// The one workload bound; mutually exclusive with `selector`.
    pub name: Option<String>,
    /// The labels of the workloads bound; mutually exclusive with `name`.
    pub selector: Option<SubjectSelector>,
}

/// A Kubernetes label selector: a workload matches when it satisfies every `matchLabels`
/// entry and every `matchExpressions` requirement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubjectSelector {
    /// Labels the workload must carry with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Requirements on the workload's labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelRequirement>,
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelRequirement {
    /// The label's key.
    pub key: String,
    /// How the label relates to `values`.
    pub operator: SelectorOperator,
    /// The values for `In` and `NotIn` (at least one); empty for `Exists` and `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// The operator of a label requirement, as in Kubernetes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SelectorOperator {
    /// The label is set to one of the values.
    In,
    /// The label is absent or set to none of the values.
    NotIn,
    /// The label is set, to any value.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

impl SubjectSelector {
    /// The selector in the syntax of the API server's `labelSelector` query parameter:
    /// `k=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, joined by commas.
    pub fn to_query(&self) -> String {
        let labels = self.match_labels.iter().map(|(k, v)| format!("{k}={v}"));
        let expressions = self.match_expressions.iter().map(|requirement| {
            let key = &requirement.key;
            let mut values = requirement.values.clone();
            values.sort();
            let values = values.join(",");
            match requirement.operator {
                SelectorOperator::In => format!("{key} in ({values})"),
                SelectorOperator::NotIn => format!("{key} notin ({values})"),
                SelectorOperator::Exists => key.clone(),
                SelectorOperator::DoesNotExist => format!("!{key}"),
            }
        });
        labels.chain(expressions).collect::<Vec<_>>().join(",")
    }
}

rivulet_control::register_kind! {
    kind: "SinkBinding",
    resource: SinkBinding,
    group: "sources.knative.dev",
    version: "v1",
    plural: "sinkbindings",
    validate: validate_sink_binding_value,
    reconciler: PodSpecableReconciler<SinkBinding>,
}

/// How kube addresses a workload kind a SinkBinding can bind; `None` for other kinds.
pub fn workload_resource(api_version: &str, kind: &str) -> Option<ApiResource> {
    let (api_version, kind, plural) = BINDABLE_KINDS
        .iter()
        .find(|(v, k, _)| *v == api_version && *k == kind)?;
    let (group, version) = api_version.split_once('/')?;
    Some(ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, kind),
        plural,
    ))
}

fn validate_selector(selector: &SubjectSelector) -> Result<(), ValidationError> {
    const FIELD: &str = "spec.subject.selector";
    if selector.match_labels.is_empty() && selector.match_expressions.is_empty() {
        return Err(ValidationError::new(
            FIELD,
            "must hold at least one matchLabels entry or matchExpressions requirement (an empty selector would bind every workload)",
        ));
    }
    for (key, value) in &selector.match_labels {
        rivulet_core::resources::validation::check_label_key(&format!("{FIELD}.matchLabels"), key)?;
        rivulet_core::resources::validation::check_label_value(
            &format!("{FIELD}.matchLabels.{key}"),
            value,
        )?;
    }
    for (index, requirement) in selector.match_expressions.iter().enumerate() {
        let field = format!("{FIELD}.matchExpressions[{index}]");
        rivulet_core::resources::validation::check_label_key(
            &format!("{field}.key"),
            &requirement.key,
        )?;
        let values = &requirement.values;
        match requirement.operator {
            SelectorOperator::In | SelectorOperator::NotIn if values.is_empty() => {
                return Err(ValidationError::new(
                    format!("{field}.values"),
                    "must hold at least one value for the operators In and NotIn",
                ));
            }
            SelectorOperator::Exists | SelectorOperator::DoesNotExist if !values.is_empty() => {
                return Err(ValidationError::new(
                    format!("{field}.values"),
                    "must be empty for the operators Exists and DoesNotExist",
                ));
            }
            _ => {}
        }
        for (value_index, value) in values.iter().enumerate() {
            rivulet_core::resources::validation::check_label_value(
                &format!("{field}.values[{value_index}]"),
                value,
            )?;
        }
    }
    Ok(())
}

pub fn validate_sink_binding_value(
    new: &Value,
    _old: Option<&Value>,
) -> Result<(), ValidationError> {
    validate_metadata(new)?;
    let binding: SinkBinding = typed(new)?;
    let (namespace, name) = rivulet_store::object_key(new);
    if name.len() > 63 {
        return Err(ValidationError::new(
            "metadata.name",
            format!(
                "must be at most 63 characters: it is the value of the {BINDING_LABEL} label on the workloads bound"
            ),
        ));
    }
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
                "{} {} cannot be bound; use apps/v1 Deployment, StatefulSet, DaemonSet or ReplicaSet, or serving.knative.dev/v1 Service",
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
        (None, Some(selector)) => validate_selector(selector)?,
        _ => {}
    }
    binding.spec.source.validate()?;
    Ok(())
}

/// The apply that sets `env` on every container and init container of a workload (named in
/// `pod_spec`, its current `spec.template.spec`) and labels it with the binding's name.
pub fn env_apply(
    subject: &Subject,
    workload: &str,
    binding: &str,
    pod_spec: &Value,
    env: &[Value],
) -> Value {
    let mut spec = serde_json::Map::new();
    for list in CONTAINER_LISTS {
        let containers: Vec<Value> = pod_spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("name").and_then(Value::as_str))
            .map(|name| json!({"name": name, "env": env}))
            .collect();
        if !containers.is_empty() {
            spec.insert(list.to_string(), Value::Array(containers));
        }
    }
    json!({
        "apiVersion": subject.api_version,
        "kind": subject.kind,
        "metadata": {"name": workload, "labels": {BINDING_LABEL: binding}},
        "spec": {"template": {"spec": spec}},
    })
}

/// The merge patch that binds a Knative Service: its container lists with `env` set, the
/// binding label, and the `resourceVersion` it was computed from.
pub fn knative_service_bind_patch(workload: &DynamicObject, binding: &str, env: &[Value]) -> Value {
    let mut pod_spec = pod_spec(workload).clone();
    super::inject_env(&mut pod_spec, env);
    json!({
        "metadata": {
            "resourceVersion": workload.metadata.resource_version,
            "labels": {BINDING_LABEL: binding},
        },
        "spec": {"template": {"spec": container_lists(&pod_spec)}},
    })
}

/// The merge patch that releases a Knative Service: its container lists without the
/// injected variables, and no binding label.
pub fn knative_service_release_patch(workload: &DynamicObject) -> Value {
    let mut pod_spec = pod_spec(workload).clone();
    super::remove_injected_env(&mut pod_spec);
    json!({
        "metadata": {
            "resourceVersion": workload.metadata.resource_version,
            "labels": {BINDING_LABEL: null},
        },
        "spec": {"template": {"spec": container_lists(&pod_spec)}},
    })
}

/// The container lists of a pod spec, alone.
fn container_lists(pod_spec: &Value) -> serde_json::Map<String, Value> {
    CONTAINER_LISTS
        .iter()
        .filter_map(|list| Some((list.to_string(), pod_spec.get(*list)?.clone())))
        .collect()
}

/// The apply that gives up every field `rivulet-sinkbinding` owned on a workload: its env
/// entries and the binding label.
pub fn release_apply(api_version: &str, kind: &str, workload: &str) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": workload}})
}

fn pod_spec(workload: &DynamicObject) -> &Value {
    static NONE: Value = Value::Null;
    workload
        .data
        .pointer("/spec/template/spec")
        .unwrap_or(&NONE)
}

/// Why the subject's workloads are not known.
enum SubjectError {
    /// The named workload does not exist (Knative's `SubjectMissing`).
    Missing(String),
    /// The API server did not answer the lookup (Knative's `SubjectUnavailable`).
    Unavailable(String),
}

/// The subject's workloads that exist now.
async fn subjects(
    api: &Api<DynamicObject>,
    subject: &Subject,
) -> Result<Vec<DynamicObject>, SubjectError> {
    match (&subject.name, &subject.selector) {
        (Some(name), _) => match api.get_opt(name).await {
            Ok(Some(workload)) => Ok(vec![workload]),
            Ok(None) => Err(SubjectError::Missing(format!(
                "{} {name} does not exist",
                subject.kind
            ))),
            Err(error) => Err(SubjectError::Unavailable(format!(
                "cannot read {} {name}: {}",
                subject.kind,
                api_message(&error)
            ))),
        },
        (None, Some(selector)) => api
            .list(&ListParams::default().labels(&selector.to_query()))
            .await
            .map(|list| list.items)
            .map_err(|error| {
                SubjectError::Unavailable(format!(
                    "cannot list {}s: {}",
                    subject.kind,
                    api_message(&error)
                ))
            }),
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

/// Releases every workload labelled as bound by `binding` except those in `keep` (kind and
/// name), across all bindable kinds since the subject's kind may have changed. Returns what
/// could not be done.
async fn release_bound(
    client: &kube::Client,
    namespace: &str,
    binding: &str,
    keep: &[(&str, String)],
) -> Vec<String> {
    let mut failures = Vec::new();
    let selector = format!("{BINDING_LABEL}={binding}");
    for (api_version, kind, _) in BINDABLE_KINDS {
        let resource = workload_resource(api_version, kind).expect("a bindable kind");
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        let labelled = match api.list(&ListParams::default().labels(&selector)).await {
            Ok(list) => list.items,
            // Knative Serving is not installed: nothing of that kind can have been bound.
            Err(kube::Error::Api(status))
                if status.code == 404 && is_knative_service(api_version, kind) =>
            {
                continue;
            }
            Err(error) => {
                failures.push(format!(
                    "cannot list the {kind}s bound before: {}",
                    api_message(&error)
                ));
                continue;
            }
        };
        for workload in labelled {
            let name = workload.metadata.name.clone().unwrap_or_default();
            if keep.iter().any(|(k, n)| *k == kind && *n == name) {
                continue;
            }
            let released = if is_knative_service(api_version, kind) {
                let patch = knative_service_release_patch(&workload);
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
            } else {
                let apply = release_apply(api_version, kind, &name);
                api.patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER),
                    &Patch::Apply(&apply),
                )
                .await
            };
            match released {
                Ok(_) => {}
                // Deleted meanwhile: nothing left to release.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => failures.push(format!(
                    "cannot release {kind} {name}: {}",
                    api_message(&error)
                )),
            }
        }
    }
    failures
}

/// The bindings with a recheck of their subjects scheduled, so each has at most one.
#[derive(Clone, Default)]
struct PendingRechecks(Arc<Mutex<HashSet<(String, String)>>>);

/// Reconciles the binding again after [`SUBJECT_RECHECK`], unless that is already planned.
/// (Returning `Action::Requeue` would start one more timer at every change of the binding.)
fn schedule_recheck(ctx: &Arc<Context>, namespace: &str, name: &str) {
    let pending = ctx.extensions.get_or_default::<PendingRechecks>();
    let key = (namespace.to_string(), name.to_string());
    if !pending.0.lock().expect("lock poisoned").insert(key.clone()) {
        return;
    }
    let ctx = Arc::downgrade(ctx);
    tokio::spawn(async move {
        tokio::time::sleep(SUBJECT_RECHECK).await;
        pending.0.lock().expect("lock poisoned").remove(&key);
        if let Some(ctx) = ctx.upgrade() {
            ctx.requeue_now(Context::kind("SinkBinding"), &key.0, &key.1);
        }
    });
}

/// `K_SINK` and `K_CE_OVERRIDES` in the bound workloads' pods, taken out again on deletion.
impl PodSpecable for SinkBinding {
    const KIND: &'static str = "SinkBinding";
    const CONDITIONS: ConditionSet = SINK_BINDING_CONDITIONS;
    const SINK_CONDITION: &'static str = "SinkProvided";
    const WORKLOAD_CONDITION: &'static str = AVAILABLE_CONDITION;
    const FINALIZER: bool = true;

    fn source(&self) -> &SourceSpec {
        &self.spec.source
    }

    async fn apply_workloads(
        &self,
        object: &Value,
        sink_uri: &str,
        client: kube::Client,
        ctx: &Arc<Context>,
    ) -> Result<(Condition, Action), ReconcileError> {
        let (namespace, binding_name) = rivulet_store::object_key(object);
        let subject = &self.spec.subject;
        let api = subject_api(client.clone(), subject, &namespace)?;
        let env = injected_env(sink_uri, self.spec.source.ce_overrides.as_ref());
        // (reason, message) of everything that went wrong, the first reason reported.
        let mut problems: Vec<(&str, String)> = Vec::new();
        // The subjects found, which keep the binding; `None` when they are unknown, in which
        // case nothing is released.
        let subjects_now = match subjects(&api, subject).await {
            Ok(workloads) => {
                let mut names = Vec::new();
                for workload in &workloads {
                    let name = workload.metadata.name.clone().unwrap_or_default();
                    let bound = if is_knative_service(&subject.api_version, &subject.kind) {
                        let patch = knative_service_bind_patch(workload, &binding_name, &env);
                        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await
                    } else {
                        let apply =
                            env_apply(subject, &name, &binding_name, pod_spec(workload), &env);
                        let params = PatchParams::apply(FIELD_MANAGER).force();
                        api.patch(&name, &params, &Patch::Apply(&apply)).await
                    };
                    if let Err(error) = bound {
                        problems.push((
                            "BindingFailed",
                            format!(
                                "cannot bind {} {name}: {}",
                                subject.kind,
                                api_message(&error)
                            ),
                        ));
                    }
                    names.push((subject.kind.as_str(), name));
                }
                Some(names)
            }
            Err(SubjectError::Missing(message)) => {
                problems.push(("SubjectMissing", message));
                Some(Vec::new())
            }
            Err(SubjectError::Unavailable(message)) => {
                problems.push(("SubjectUnavailable", message));
                None
            }
        };
        if let Some(keep) = &subjects_now {
            for failure in release_bound(&client, &namespace, &binding_name, keep).await {
                problems.push(("BindingFailed", failure));
            }
        }
        Ok(match problems.first() {
            None => {
                schedule_recheck(ctx, &namespace, &binding_name);
                (
                    Condition::new(AVAILABLE_CONDITION, true, "", ""),
                    Action::AwaitChange,
                )
            }
            Some((reason, _)) => {
                let messages: Vec<&str> = problems.iter().map(|(_, m)| m.as_str()).collect();
                (
                    Condition::new(AVAILABLE_CONDITION, false, reason, messages.join("; ")),
                    Action::Requeue(Duration::from_secs(5)),
                )
            }
        })
    }

    /// Removes the injected variables from every workload the binding labelled.
    async fn cleanup(object: &Value, ctx: &Arc<Context>) -> Result<(), ReconcileError> {
        let Some(client) = ctx
            .kube_client()
            .filter(|_| ctx.role().owns_backend_resources())
        else {
            return Ok(());
        };
        let (namespace, name) = rivulet_store::object_key(object);
        let failures = release_bound(&client, &namespace, &name, &[]).await;
        if failures.is_empty() {
            Ok(())
        } else {
            Err(ReconcileError::Kubernetes(failures.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(value: Value) -> SubjectSelector {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn selectors_become_label_selector_queries() {
        let query = selector(json!({
            "matchLabels": {"app": "web", "tier": "front"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "dev"]},
                {"key": "team", "operator": "NotIn", "values": ["x"]},
                {"key": "example.com/bound", "operator": "Exists"},
                {"key": "legacy", "operator": "DoesNotExist"},
            ],
        }))
        .to_query();
        assert_eq!(
            query,
            "app=web,tier=front,env in (dev,prod),team notin (x),example.com/bound,!legacy"
        );
    }

    fn binding_with_selector(selector: Value) -> Value {
        json!({
            "apiVersion": "sources.knative.dev/v1", "kind": "SinkBinding",
            "metadata": {"name": "bind", "namespace": "team"},
            "spec": {
                "subject": {"apiVersion": "apps/v1", "kind": "Deployment", "selector": selector},
                "sink": {"uri": "http://sink.example/"}
            }
        })
    }

    fn refusal(selector: Value) -> ValidationError {
        validate_sink_binding_value(&binding_with_selector(selector), None).expect_err("refused")
    }

    #[test]
    fn an_unknown_operator_is_a_field_error_naming_it() {
        let error = refusal(json!({"matchExpressions": [
            {"key": "app", "operator": "In", "values": ["web"]},
            {"key": "app", "operator": "Matches", "values": ["w.*"]}]}));
        assert_eq!(
            error.field,
            "spec.subject.selector.matchExpressions[1].operator"
        );
        assert!(error.message.contains("Matches"), "{}", error.message);
        assert!(error.message.contains("DoesNotExist"), "{}", error.message);
    }

    #[test]
    fn values_must_fit_the_operator_and_be_label_values() {
        let error = refusal(json!({"matchExpressions": [{"key": "app", "operator": "NotIn"}]}));
        assert_eq!(
            error.field,
            "spec.subject.selector.matchExpressions[0].values"
        );
        let error = refusal(json!({"matchExpressions": [
            {"key": "app", "operator": "DoesNotExist", "values": ["x"]}]}));
        assert_eq!(
            error.field,
            "spec.subject.selector.matchExpressions[0].values"
        );
        let error = refusal(json!({"matchExpressions": [
            {"key": "app", "operator": "In", "values": ["ok", "x,y"]}]}));
        assert_eq!(
            error.field,
            "spec.subject.selector.matchExpressions[0].values[1]"
        );
        let error = refusal(json!({"matchExpressions": [
            {"key": "bad key", "operator": "Exists"}]}));
        assert_eq!(error.field, "spec.subject.selector.matchExpressions[0].key");
        let error = refusal(json!({"matchLabels": {"app": "we b"}}));
        assert_eq!(error.field, "spec.subject.selector.matchLabels.app");
        let error = refusal(json!({}));
        assert_eq!(error.field, "spec.subject.selector");
    }

    #[test]
    fn valid_selectors_and_long_names() {
        let valid = binding_with_selector(json!({
            "matchLabels": {"app.kubernetes.io/name": "web"},
            "matchExpressions": [{"key": "tier", "operator": "Exists"}]}));
        validate_sink_binding_value(&valid, None).expect("valid");
        let mut long = valid.clone();
        long["metadata"]["name"] = json!("b".repeat(64));
        let error = validate_sink_binding_value(&long, None).expect_err("too long a label value");
        assert_eq!(error.field, "metadata.name");
    }
}
