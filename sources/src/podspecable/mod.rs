//! Knative's PodSpecable sources: `SinkBinding` and `ContainerSource`
//! (`sources.knative.dev/v1`). Rivulet runs no adapter for them: the workload's own containers
//! send the events, told where by the environment variables `K_SINK` (the resolved sink) and
//! `K_CE_OVERRIDES` (the `ceOverrides`, as JSON).
//!
//! Both write Kubernetes workloads, so they reconcile only when resources are kept in a
//! cluster (`--store kubernetes`). In standalone mode they are accepted and validated, and
//! their status says `Ready=False` with reason `KubernetesRequired`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::{CloudEventOverrides, SourceSpec, SourceStatus};
use rivulet_control::runtime::{self, Action, Context, ReconcileError};
use rivulet_core::resources::{Condition, ConditionSet};

pub mod containersource;
pub mod sinkbinding;

/// The environment variable holding the resolved sink URL.
pub const SINK_ENV: &str = "K_SINK";
/// The environment variable holding `ceOverrides` as JSON.
pub const CE_OVERRIDES_ENV: &str = "K_CE_OVERRIDES";

/// The environment variables a bound container gets, in order.
pub fn injected_env(sink_uri: &str, overrides: Option<&CloudEventOverrides>) -> Vec<Value> {
    let mut env = vec![json!({"name": SINK_ENV, "value": sink_uri})];
    if let Some(overrides) = overrides {
        let text = serde_json::to_string(overrides).unwrap_or_else(|_| "{}".into());
        env.push(json!({"name": CE_OVERRIDES_ENV, "value": text}));
    }
    env
}

/// The container lists of a pod spec that get the variables: Knative binds init containers
/// too, so a setup step can send events as well.
pub const CONTAINER_LISTS: [&str; 2] = ["initContainers", "containers"];

/// Sets `env` on every container and init container of a pod spec: a variable already there
/// with the same name is replaced in place (never duplicated); the others are kept.
/// `K_CE_OVERRIDES` is removed when `env` no longer carries it, so dropping `ceOverrides`
/// takes effect.
pub fn inject_env(pod_spec: &mut Value, env: &[Value]) {
    let names: Vec<&str> = env
        .iter()
        .filter_map(|var| var.get("name").and_then(Value::as_str))
        .collect();
    for list in CONTAINER_LISTS {
        let Some(containers) = pod_spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for container in containers {
            if let Some(container) = container.as_object_mut() {
                set_container_env(container, &names, env);
            }
        }
    }
}

/// Removes the variables [`inject_env`] sets from every container and init container of a
/// pod spec; the others are kept.
pub fn remove_injected_env(pod_spec: &mut Value) {
    for list in CONTAINER_LISTS {
        let Some(containers) = pod_spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for env in containers
            .iter_mut()
            .filter_map(|c| c.get_mut("env").and_then(Value::as_array_mut))
        {
            env.retain(|var| {
                let name = var.get("name").and_then(Value::as_str).unwrap_or_default();
                name != SINK_ENV && name != CE_OVERRIDES_ENV
            });
        }
    }
}

fn set_container_env(
    container: &mut serde_json::Map<String, Value>,
    names: &[&str],
    env: &[Value],
) {
    let current = container
        .entry("env")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !current.is_array() {
        *current = Value::Array(Vec::new());
    }
    let list = current.as_array_mut().expect("made an array above");
    list.retain(|var| {
        let name = var.get("name").and_then(Value::as_str).unwrap_or_default();
        name != CE_OVERRIDES_ENV || names.contains(&CE_OVERRIDES_ENV)
    });
    for var in env {
        let name = var.get("name").and_then(Value::as_str);
        match list
            .iter_mut()
            .find(|existing| existing.get("name").and_then(Value::as_str) == name)
        {
            Some(existing) => *existing = var.clone(),
            None => list.push(var.clone()),
        }
    }
}

/// The condition reported when a kind needs the Kubernetes API and the server has none.
pub fn kubernetes_required(kind: &str, condition: &str) -> Condition {
    Condition::new(
        condition,
        false,
        super::KUBERNETES_REQUIRED,
        format!(
            "{kind} manages Kubernetes workloads and works only when Rivulet runs with --store kubernetes; in standalone mode it is stored and validated but not reconciled"
        ),
    )
}

/// A podspecable kind's resource, as [`PodSpecableReconciler`] needs it: the kind writes its
/// workloads, the reconciler does the rest.
pub(crate) trait PodSpecable: serde::de::DeserializeOwned + Send + Sync + 'static {
    /// The kind's name, as registered in its `KindInfo`.
    const KIND: &'static str;
    /// What the kind's `Ready` depends on.
    const CONDITIONS: ConditionSet;
    /// The condition saying the sink resolved.
    const SINK_CONDITION: &'static str;
    /// The condition saying the workloads are in place.
    const WORKLOAD_CONDITION: &'static str;
    /// Whether the kind has work to do on deletion, and so keeps a finalizer even while no
    /// controller runs.
    const FINALIZER: bool = false;

    /// The resource's sink and CloudEvent overrides.
    fn source(&self) -> &SourceSpec;

    /// Writes the workloads with `sink_uri` bound in: the kind's workload condition and
    /// when to look again.
    fn apply_workloads(
        &self,
        object: &Value,
        sink_uri: &str,
        client: kube::Client,
        ctx: &Arc<Context>,
    ) -> impl Future<Output = Result<(Condition, Action), ReconcileError>> + Send;

    /// The finalizer's work, when the kind has one.
    fn cleanup(
        _object: &Value,
        _ctx: &Arc<Context>,
    ) -> impl Future<Output = Result<(), ReconcileError>> + Send {
        async { Ok(()) }
    }
}

/// The reconciler of every [`PodSpecable`] kind: on the controller, resolves the sink, has
/// the kind write its workloads, and writes the status.
pub(crate) struct PodSpecableReconciler<K>(std::marker::PhantomData<K>);

impl<K: PodSpecable> runtime::Reconcile for PodSpecableReconciler<K> {
    type Resource = K;
    const AFTER: &'static [&'static str] = crate::RESYNC_AFTER;

    async fn reconcile(
        resource: K,
        object: &Value,
        ctx: &Arc<Context>,
    ) -> Result<Action, ReconcileError> {
        // Workloads are the controller's to write; the data plane has no say (nor the rights).
        if !ctx.role().owns_backend_resources() {
            return Ok(Action::AwaitChange);
        }
        if K::FINALIZER {
            // Its workloads are released before it goes, even when deleted while no
            // controller ran.
            ctx.ensure_finalizer(Context::kind(K::KIND), object).await?;
        }
        let (namespace, _) = rivulet_store::object_key(object);
        let mut parts = Vec::new();
        let uri = match runtime::resolve_destination(&resource.source().sink, &namespace, ctx).await
        {
            Ok(uri) => {
                parts.push(Condition::new(K::SINK_CONDITION, true, "", ""));
                uri
            }
            Err(reason) => {
                parts.push(Condition::new(
                    K::SINK_CONDITION,
                    false,
                    "SinkNotFound",
                    reason,
                ));
                write_status::<K>(ctx, object, None, parts).await?;
                return Ok(Action::Requeue(Duration::from_secs(5)));
            }
        };
        let Some(client) = ctx.kube_client() else {
            parts.push(kubernetes_required(K::KIND, K::WORKLOAD_CONDITION));
            write_status::<K>(ctx, object, Some(uri), parts).await?;
            return Ok(Action::AwaitChange);
        };
        let (workloads, action) = resource.apply_workloads(object, &uri, client, ctx).await?;
        parts.push(workloads);
        write_status::<K>(ctx, object, Some(uri), parts).await?;
        Ok(action)
    }

    fn cleanup(
        object: &Value,
        ctx: &Arc<Context>,
    ) -> impl Future<Output = Result<(), ReconcileError>> + Send {
        K::cleanup(object, ctx)
    }
}

/// Writes a source status made of `parts`, with `Ready` derived by the kind's condition set.
async fn write_status<K: PodSpecable>(
    ctx: &Arc<Context>,
    object: &Value,
    sink_uri: Option<String>,
    parts: Vec<Condition>,
) -> Result<(), ReconcileError> {
    let (namespace, name) = rivulet_store::object_key(object);
    let status = SourceStatus {
        observed_generation: runtime::generation(object),
        conditions: K::CONDITIONS.summarize(parts),
        sink_uri,
        ..SourceStatus::default()
    };
    ctx.write_status(Context::kind(K::KIND), &namespace, &name, json!(status))
        .await
}

/// The message of a Kubernetes API failure, for a condition.
pub(crate) fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_and_values(container: &Value) -> Vec<(String, String)> {
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["name"].as_str().unwrap().to_string(),
                    v["value"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn existing_variables_are_replaced_not_duplicated_and_others_kept() {
        let mut spec = json!({"containers": [
            {"name": "app", "image": "a", "env": [
                {"name": "LOG", "value": "debug"},
                {"name": "K_SINK", "value": "http://old/"},
            ]},
            {"name": "side", "image": "b"},
        ]});
        let mut overrides = CloudEventOverrides::default();
        overrides.extensions.insert("team".into(), "blue".into());
        let env = injected_env("http://new/", Some(&overrides));
        inject_env(&mut spec, &env);
        inject_env(&mut spec, &env);
        assert_eq!(
            names_and_values(&spec["containers"][0]),
            [
                ("LOG".to_string(), "debug".to_string()),
                ("K_SINK".into(), "http://new/".into()),
                (
                    "K_CE_OVERRIDES".into(),
                    r#"{"extensions":{"team":"blue"}}"#.into()
                ),
            ]
        );
        assert_eq!(names_and_values(&spec["containers"][1]).len(), 2);
        assert_eq!(spec["containers"][1]["image"], "b");
    }

    #[test]
    fn init_containers_get_the_variables_too() {
        let mut spec = json!({
            "initContainers": [{"name": "setup", "image": "s"}],
            "containers": [{"name": "app", "image": "a"}],
        });
        inject_env(&mut spec, &injected_env("http://s/", None));
        assert_eq!(
            names_and_values(&spec["initContainers"][0]),
            [("K_SINK".to_string(), "http://s/".to_string())]
        );
        assert_eq!(
            names_and_values(&spec["containers"][0]),
            [("K_SINK".to_string(), "http://s/".to_string())]
        );
    }

    #[test]
    fn dropped_overrides_are_removed() {
        let mut spec = json!({"containers": [{"name": "app", "env": [
            {"name": "K_CE_OVERRIDES", "value": "{}"}, {"name": "KEEP", "value": "1"}]}]});
        inject_env(&mut spec, &injected_env("http://s/", None));
        assert_eq!(
            names_and_values(&spec["containers"][0]),
            [
                ("KEEP".to_string(), "1".to_string()),
                ("K_SINK".into(), "http://s/".into())
            ]
        );
    }
}
