//! Knative's ApiServerSource (`sources.knative.dev/v1`): turns changes of Kubernetes objects
//! into CloudEvents.
//!
//! One kube-runtime watcher per `resources` entry (and per namespace), with the entry's label
//! selector applied by the API server. The kinds are resolved through API discovery, so the
//! plural in requests and subjects is the server's own. As in Knative, the initial listing of
//! existing objects sends nothing: only later adds, updates and deletes become events, of
//! types `dev.knative.apiserver.{resource,ref}.{add,update,delete}` depending on `mode`.
//!
//! Every request of a source's watches (discovery, lists, watches, the namespaces of a
//! `namespaceSelector`) goes out impersonating its `serviceAccountName` (`default` when unset)
//! in its namespace, so a source sees only what that account may: Knative runs its adapter
//! as that account. A refused list makes the status say `InsufficientPermissions`. In
//! standalone mode there is no API server to watch: the source is validated and its sink
//! resolved, and its status says `KubernetesRequired`.

use rivulet_core::resources::skip_serializing_none;
use std::collections::BTreeMap;
use std::sync::Arc;

use kube::api::{Api, DynamicObject, GroupVersionKind, ListParams};
use kube::discovery::Scope;
use rivulet_core::knative_source;
use rivulet_core::resources::apply;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    CloudEventAttributes, KUBERNETES_REQUIRED, Prepared, SourceKey, SourceKind, SourceSpec,
    SourceStatus,
};
use rivulet_control::runtime::Context;
use rivulet_core::filter::Filter;
use rivulet_core::resources::validation::{ValidateSpec, ValidationError, validate_filter};
use rivulet_core::resources::{Condition, SubscriptionsApiFilter};

mod adapter;
pub mod events;

pub use adapter::ApiServerAdapter;
pub use events::{Change, ObjectReference, build_event, subject_path};

/// The service account of a source that names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// The reason of `SufficientPermissions=False`: the API server refused the source's account.
pub const INSUFFICIENT_PERMISSIONS: &str = "InsufficientPermissions";

/// The user a source's requests act as: its service account, as Kubernetes names it
/// (`system:serviceaccount:{namespace}:{name}`).
pub fn service_account_user(namespace: &str, service_account_name: Option<&str>) -> String {
    let name = service_account_name
        .filter(|name| !name.is_empty())
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT);
    format!("system:serviceaccount:{namespace}:{name}")
}

/// The `source` of events when the API server's URL is not known (a client built by hand):
/// the name every pod reaches the API server at.
pub const DEFAULT_API_SERVER_URL: &str = "https://kubernetes.default.svc";

/// Knative `ApiServerSource`.
#[apply(knative_source!)]
#[kube(
    group = "sources.knative.dev",
    version = "v1",
    kind = "ApiServerSource"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiServerSourceSpec {
    /// The kinds of objects watched, each with an optional label selector (applied by the
    /// API server). At least one.
    #[serde(default)]
    pub resources: Vec<ApiVersionKindSelector>,
    /// Only objects whose controller (the owner reference with `controller: true`) has this
    /// kind (and apiVersion, when set) produce events.
    pub owner: Option<ApiVersionKind>,
    /// `Reference` (the default): events carry a reference to the object. `Resource`: events
    /// carry the whole object.
    #[serde(default)]
    pub mode: EventMode,
    /// The service account, in the source's namespace, whose rights the watches have: every
    /// request impersonates it, so it must be allowed to get, list and watch the resources
    /// (and namespaces, with a `namespaceSelector`). `default` when unset.
    pub service_account_name: Option<String>,
    /// The namespaces watched, by label. Unset: only the source's own namespace. Empty (`{}`):
    /// every namespace.
    pub namespace_selector: Option<LabelSelector>,
    /// Knative's subscriptions API filters (experimental in Knative): an event is sent only
    /// when every filter matches it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<SubscriptionsApiFilter>,
    /// Where events go and what is added to them, as every source has.
    #[serde(flatten)]
    pub source: SourceSpec,
}

/// A kind of object to watch.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiVersionKindSelector {
    /// `v1` for the core group, `group/version` otherwise (e.g. `apps/v1`).
    #[serde(default)]
    pub api_version: String,
    /// The kind, e.g. `Pod` or `Deployment`.
    #[serde(default)]
    pub kind: String,
    /// Only objects with matching labels.
    pub selector: Option<LabelSelector>,
}

/// An apiVersion and kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiVersionKind {
    /// `v1` or `group/version`; any version when empty.
    #[serde(default)]
    pub api_version: String,
    /// The kind (required).
    #[serde(default)]
    pub kind: String,
}

/// What an event carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, Default)]
pub enum EventMode {
    /// A reference to the object: `{kind, namespace, name, apiVersion}`.
    #[default]
    Reference,
    /// The whole object.
    Resource,
}

impl EventMode {
    /// The event types this mode sends: add, update, delete.
    pub fn event_types(self) -> [&'static str; 3] {
        match self {
            EventMode::Reference => [
                events::REF_ADD_TYPE,
                events::REF_UPDATE_TYPE,
                events::REF_DELETE_TYPE,
            ],
            EventMode::Resource => [
                events::RESOURCE_ADD_TYPE,
                events::RESOURCE_UPDATE_TYPE,
                events::RESOURCE_DELETE_TYPE,
            ],
        }
    }
}

/// A Kubernetes label selector: every label and every expression must match. An empty
/// selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Requirements on labels that must all hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    /// The label's key.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// The values for `In` and `NotIn` (at least one); empty for `Exists` and
    /// `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl LabelSelector {
    /// Whether the selector matches every object.
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// The selector in the API server's query syntax (`app=web,tier in (a,b),!canary`);
    /// empty when it matches everything. Assumes a validated selector.
    pub fn to_query(&self) -> String {
        let labels = self.match_labels.iter().map(|(k, v)| format!("{k}={v}"));
        let expressions = self.match_expressions.iter().map(|r| {
            let values = r.values.join(",");
            match r.operator.as_str() {
                "In" => format!("{} in ({values})", r.key),
                "NotIn" => format!("{} notin ({values})", r.key),
                "DoesNotExist" => format!("!{}", r.key),
                _ => r.key.clone(),
            }
        });
        labels.chain(expressions).collect::<Vec<_>>().join(",")
    }
}

crate::register_source! {
    ApiServerSource {
        group: "sources.knative.dev",
        version: "v1",
        plural: "apiserversources",
    }
}

impl ValidateSpec for ApiServerSourceSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.resources.is_empty() {
            return Err(ValidationError::new(
                "spec.resources",
                "must list at least one resource to watch (apiVersion and kind)",
            ));
        }
        for (index, resource) in self.resources.iter().enumerate() {
            let field = format!("spec.resources[{index}]");
            if resource.api_version.trim().is_empty() {
                return Err(ValidationError::new(
                    format!("{field}.apiVersion"),
                    "is required (v1 for the core group, group/version otherwise, e.g. apps/v1)",
                ));
            }
            group_version_kind(&resource.api_version, "-")
                .map_err(|m| ValidationError::new(format!("{field}.apiVersion"), m))?;
            if resource.kind.trim().is_empty() {
                return Err(ValidationError::new(
                    format!("{field}.kind"),
                    "is required (e.g. Pod)",
                ));
            }
            if let Some(selector) = &resource.selector {
                validate_label_selector(&format!("{field}.selector"), selector)?;
            }
        }
        if let Some(owner) = &self.owner {
            if !owner.api_version.is_empty() {
                group_version_kind(&owner.api_version, "-")
                    .map_err(|m| ValidationError::new("spec.owner.apiVersion", m))?;
            }
            if owner.kind.trim().is_empty() {
                return Err(ValidationError::new(
                    "spec.owner.kind",
                    "is required (the kind of the controlling owner, e.g. ReplicaSet)",
                ));
            }
        }
        if let Some(selector) = &self.namespace_selector {
            validate_label_selector("spec.namespaceSelector", selector)?;
        }
        if let Some(name) = self
            .service_account_name
            .as_deref()
            .filter(|n| !n.is_empty())
            && (name.len() > 253 || !rivulet_core::resources::validation::is_dns_subdomain(name))
        {
            return Err(ValidationError::new(
                "spec.serviceAccountName",
                format!(
                    "{name:?} is not a service account name (lower-case letters, digits, '-' and '.', up to 253)"
                ),
            ));
        }
        for (index, filter) in self.filters.iter().enumerate() {
            validate_filter(&format!("spec.filters[{index}]"), filter)?;
        }
        self.source.validate()?;
        Ok(())
    }
}

/// The group, version and kind of `apiVersion` (`v1` or `group/version`) and `kind`.
pub fn group_version_kind(api_version: &str, kind: &str) -> Result<GroupVersionKind, String> {
    let invalid = || {
        format!(
            "{api_version:?} is not an apiVersion; write v1 for the core group or group/version (e.g. apps/v1)"
        )
    };
    let (group, version) = match api_version.split_once('/') {
        None => ("", api_version),
        Some((group, version)) => (group, version),
    };
    let valid_part = |part: &str| {
        !part.is_empty() && rivulet_core::resources::validation::is_dns_subdomain(part)
    };
    if !valid_part(version) || (api_version.contains('/') && !valid_part(group)) {
        return Err(invalid());
    }
    Ok(GroupVersionKind::gvk(group, version, kind))
}

/// Checks a label selector as the API server would parse it.
pub fn validate_label_selector(
    field: &str,
    selector: &LabelSelector,
) -> Result<(), ValidationError> {
    for (key, value) in &selector.match_labels {
        rivulet_core::resources::validation::check_label_key(
            &format!("{field}.matchLabels[{key}]"),
            key,
        )?;
        rivulet_core::resources::validation::check_label_value(
            &format!("{field}.matchLabels[{key}]"),
            value,
        )?;
    }
    for (index, requirement) in selector.match_expressions.iter().enumerate() {
        let field = format!("{field}.matchExpressions[{index}]");
        rivulet_core::resources::validation::check_label_key(
            &format!("{field}.key"),
            &requirement.key,
        )?;
        match requirement.operator.as_str() {
            "In" | "NotIn" => {
                if requirement.values.is_empty() {
                    return Err(ValidationError::new(
                        format!("{field}.values"),
                        format!("{} needs at least one value", requirement.operator),
                    ));
                }
                for (i, value) in requirement.values.iter().enumerate() {
                    rivulet_core::resources::validation::check_label_value(
                        &format!("{field}.values[{i}]"),
                        value,
                    )?;
                }
            }
            "Exists" | "DoesNotExist" => {
                if !requirement.values.is_empty() {
                    return Err(ValidationError::new(
                        format!("{field}.values"),
                        format!("must be empty for {}", requirement.operator),
                    ));
                }
            }
            other => {
                return Err(ValidationError::new(
                    format!("{field}.operator"),
                    format!("{other:?} is not an operator; use In, NotIn, Exists or DoesNotExist"),
                ));
            }
        }
    }
    Ok(())
}

/// One kind to watch, as discovery resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedResource {
    pub api_resource: kube::api::ApiResource,
    /// Whether the kind lives in namespaces (a cluster-scoped kind is watched cluster-wide).
    pub namespaced: bool,
    /// The label selector in query syntax; empty for every object.
    pub label_selector: String,
}

/// Which namespaces are watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceScope {
    /// No `namespaceSelector`: the source's own namespace.
    Own(String),
    /// An empty `namespaceSelector`: every namespace.
    All,
    /// The namespaces matching this label selector (query syntax), followed as they come
    /// and go.
    Selected(String),
}

/// The condition of an ApiServerSource on a server without a Kubernetes API.
pub fn kubernetes_required() -> Condition {
    Condition::new(
        "Deployed",
        false,
        KUBERNETES_REQUIRED,
        "ApiServerSource watches the Kubernetes API and works only when Rivulet runs with --store kubernetes; in standalone mode it is stored and validated but not run",
    )
}

/// The condition saying the API server refused the source's account what the source needs.
fn insufficient_permissions(message: String) -> Condition {
    Condition::new(
        "SufficientPermissions",
        false,
        INSUFFICIENT_PERMISSIONS,
        message,
    )
}

/// Resolves a resource entry through discovery (as `account`): the plural and whether it is
/// namespaced.
async fn discover(
    client: &kube::Client,
    account: &str,
    index: usize,
    entry: &ApiVersionKindSelector,
) -> Result<WatchedResource, Condition> {
    let field = format!("spec.resources[{index}]");
    let gvk = group_version_kind(&entry.api_version, &entry.kind).map_err(|message| {
        Condition::new(
            "Deployed",
            false,
            "InvalidSpec",
            format!("{field}: {message}"),
        )
    })?;
    let not_found =
        |message: String| Condition::new("Deployed", false, "ResourceNotFound", message);
    let (api_resource, capabilities) =
        kube::discovery::pinned_kind(client, &gvk)
            .await
            .map_err(|error| match error {
                kube::Error::Discovery(_) => not_found(format!(
                    "{field}: the API server has no kind {} in {}",
                    entry.kind, entry.api_version
                )),
                kube::Error::Api(status) if status.code == 404 => not_found(format!(
                    "{field}: the API server does not serve {} ({})",
                    entry.api_version, status.message
                )),
                kube::Error::Api(status) if status.code == 403 => {
                    insufficient_permissions(format!(
                        "{field}: {account} may not look up {} through API discovery ({})",
                        entry.api_version, status.message
                    ))
                }
                other => Condition::new(
                    "Deployed",
                    false,
                    "DiscoveryFailed",
                    format!(
                        "{field}: cannot look up {} {} on the API server: {}",
                        entry.api_version,
                        entry.kind,
                        super::podspecable::api_message(&other)
                    ),
                ),
            })?;
    Ok(WatchedResource {
        api_resource,
        namespaced: capabilities.scope == Scope::Namespaced,
        label_selector: entry
            .selector
            .as_ref()
            .map(LabelSelector::to_query)
            .unwrap_or_default(),
    })
}

/// Lists (at most one object of) every resource in every place it is watched, as the
/// source's account, so that a missing grant shows in the status and not only in the logs of
/// watches retrying. With a `namespaceSelector`, the matching namespaces are looked up first.
async fn check_permissions(
    client: &kube::Client,
    account: &str,
    resources: &[WatchedResource],
    scope: &NamespaceScope,
) -> Result<(), Condition> {
    let refused = |what: &str, place: &str, error: kube::Error| match error {
        kube::Error::Api(status) if status.code == 403 => insufficient_permissions(format!(
            "{account} may not list {what} {place}; grant it get, list and watch on them \
             (the API server said: {})",
            status.message
        )),
        other => Condition::new(
            "Deployed",
            false,
            "ListFailed",
            format!(
                "cannot list {what} {place} as {account}: {}",
                super::podspecable::api_message(&other)
            ),
        ),
    };
    let namespaces: Vec<Option<String>> = match scope {
        NamespaceScope::Own(namespace) => vec![Some(namespace.clone())],
        NamespaceScope::All => vec![None],
        NamespaceScope::Selected(_) if !resources.iter().any(|r| r.namespaced) => Vec::new(),
        NamespaceScope::Selected(selector) => {
            let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
            let listed = api
                .list_metadata(&ListParams::default().labels(selector))
                .await
                .map_err(|e| refused("namespaces", "(spec.namespaceSelector)", e))?;
            listed
                .items
                .into_iter()
                .filter_map(|namespace| namespace.metadata.name)
                .map(Some)
                .collect()
        }
    };
    for resource in resources {
        let what = format!(
            "{} ({})",
            resource.api_resource.plural, resource.api_resource.api_version
        );
        let places = if resource.namespaced {
            namespaces.as_slice()
        } else {
            &[None]
        };
        let mut params = ListParams::default().limit(1);
        if !resource.label_selector.is_empty() {
            params = params.labels(&resource.label_selector);
        }
        for namespace in places {
            let (api, place) = match namespace {
                Some(namespace) => (
                    Api::<DynamicObject>::namespaced_with(
                        client.clone(),
                        namespace,
                        &resource.api_resource,
                    ),
                    format!("in namespace {namespace}"),
                ),
                None if resource.namespaced => (
                    Api::all_with(client.clone(), &resource.api_resource),
                    "in all namespaces".to_string(),
                ),
                None => (
                    Api::all_with(client.clone(), &resource.api_resource),
                    "in the cluster".to_string(),
                ),
            };
            api.list(&params)
                .await
                .map_err(|e| refused(&what, &place, e))?;
        }
    }
    Ok(())
}

impl SourceKind for ApiServerSource {
    const KIND: &'static str = "ApiServerSource";
    // A watch in every data-plane replica would send every change several times.
    const RUNS_ONCE: bool = true;

    fn source(&self) -> &SourceSpec {
        &self.spec.source
    }

    async fn prepare(&self, key: &SourceKey, ctx: &Arc<Context>) -> Result<Prepared, Condition> {
        let spec = &self.spec;
        let account = service_account_user(&key.namespace, spec.service_account_name.as_deref());
        // Never the controller's own client: the source sees what its account may see.
        let Some(client) = ctx.kube_client_as(&account) else {
            return Err(kubernetes_required());
        };
        let invalid = |message: String| Condition::new("Deployed", false, "InvalidSpec", message);
        spec.validate().map_err(|e| invalid(e.to_string()))?;
        let client = client.map_err(|error| {
            Condition::new("Deployed", false, "ImpersonationFailed", error.to_string())
        })?;
        let mut resources = Vec::with_capacity(spec.resources.len());
        for (index, entry) in spec.resources.iter().enumerate() {
            resources.push(discover(&client, &account, index, entry).await?);
        }
        let filter = if spec.filters.is_empty() {
            None
        } else {
            let parts = spec
                .filters
                .iter()
                .map(Filter::compile)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|m| invalid(format!("spec.filters: {m}")))?;
            Some(Filter::All(parts))
        };
        let scope = match &spec.namespace_selector {
            None => NamespaceScope::Own(key.namespace.clone()),
            Some(selector) if selector.is_empty() => NamespaceScope::All,
            Some(selector) => NamespaceScope::Selected(selector.to_query()),
        };
        check_permissions(&client, &account, &resources, &scope).await?;
        let api_url = ctx
            .kube_cluster_url()
            .unwrap_or_else(|| DEFAULT_API_SERVER_URL.to_string());
        let fingerprint = format!(
            "{account}|{:?}|{:?}|{:?}|{:?}|{:?}|{api_url}",
            resources, scope, spec.mode, spec.owner, spec.filters
        );
        // In Knative's order: add, delete, update.
        let [add, update, delete] = spec.mode.event_types();
        let ce_attributes = [add, delete, update]
            .into_iter()
            .map(|type_| CloudEventAttributes {
                type_: type_.to_string(),
                source: api_url.clone(),
            })
            .collect();
        Ok(Prepared {
            adapter: Arc::new(ApiServerAdapter::new(
                client,
                account,
                resources,
                scope,
                events::Emitter {
                    mode: spec.mode,
                    owner: spec.owner.clone(),
                    filter,
                    api_url,
                },
            )),
            fingerprint,
            ce_attributes,
            address: None,
            conditions: vec![Condition::new("SufficientPermissions", true, "", "")],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rivulet_core::resources::validation::{typed, validate_resource};
    use serde_json::Value;
    use serde_json::json;

    fn source(spec: Value) -> Value {
        let mut object = json!({
            "apiVersion": "sources.knative.dev/v1",
            "kind": "ApiServerSource",
            "metadata": {"name": "watch", "namespace": "team"},
            "spec": {
                "resources": [{"apiVersion": "v1", "kind": "Pod"}],
                "sink": {"uri": "http://127.0.0.1:1/"}
            }
        });
        for (k, v) in spec.as_object().unwrap() {
            object["spec"][k] = v.clone();
        }
        object
    }

    fn error_field(spec: Value) -> String {
        validate_resource::<ApiServerSource>(&source(spec), None)
            .expect_err("refused")
            .field
    }

    #[test]
    fn a_valid_source_passes_and_mode_defaults_to_reference() {
        let object = source(json!({
            "mode": "Resource",
            "owner": {"apiVersion": "apps/v1", "kind": "ReplicaSet"},
            "serviceAccountName": "watcher",
            "namespaceSelector": {"matchLabels": {"env": "dev"}},
            "filters": [{"prefix": {"subject": "/apis/v1/"}}],
            "resources": [{"apiVersion": "apps/v1", "kind": "Deployment",
                "selector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}}]
        }));
        validate_resource::<ApiServerSource>(&object, None).expect("valid");
        let parsed: ApiServerSource = typed(&source(json!({}))).unwrap();
        assert_eq!(parsed.spec.mode, EventMode::Reference);
    }

    #[test]
    fn bad_specs_name_the_field() {
        assert_eq!(error_field(json!({"resources": []})), "spec.resources");
        assert_eq!(
            error_field(json!({"resources": [{"apiVersion": "v1"}]})),
            "spec.resources[0].kind"
        );
        assert_eq!(
            error_field(json!({"resources": [{"kind": "Pod"}]})),
            "spec.resources[0].apiVersion"
        );
        assert_eq!(
            error_field(json!({"resources": [{"apiVersion": "a/b/c", "kind": "Pod"}]})),
            "spec.resources[0].apiVersion"
        );
        assert_eq!(error_field(json!({"mode": "Ref"})), "spec.mode");
        assert_eq!(
            error_field(json!({"owner": {"apiVersion": "apps/v1"}})),
            "spec.owner.kind"
        );
        assert_eq!(
            error_field(json!({"namespaceSelector": {"matchExpressions": [
                {"key": "env", "operator": "Like", "values": ["x"]}]}})),
            "spec.namespaceSelector.matchExpressions[0].operator"
        );
        assert_eq!(
            error_field(json!({"resources": [{"apiVersion": "v1", "kind": "Pod",
                "selector": {"matchExpressions": [{"key": "env", "operator": "In"}]}}]})),
            "spec.resources[0].selector.matchExpressions[0].values"
        );
        assert_eq!(
            error_field(json!({"resources": [{"apiVersion": "v1", "kind": "Pod",
                "selector": {"matchLabels": {"app": "a,b"}}}]})),
            "spec.resources[0].selector.matchLabels[app]"
        );
        assert_eq!(
            error_field(json!({"filters": [{"exact": {"type": "a"}, "prefix": {"type": "b"}}]})),
            "spec.filters[0]"
        );
        assert_eq!(error_field(json!({"sink": {}})), "spec.sink");
        assert_eq!(
            error_field(json!({"serviceAccountName": "Pod_Reader"})),
            "spec.serviceAccountName"
        );
        assert_eq!(
            error_field(json!({"labelSelector": "a=b"})),
            "spec.labelSelector"
        );
    }

    #[test]
    fn sources_act_as_their_service_account_or_the_namespace_default() {
        assert_eq!(
            service_account_user("team", Some("reader")),
            "system:serviceaccount:team:reader"
        );
        for unset in [None, Some("")] {
            assert_eq!(
                service_account_user("team", unset),
                "system:serviceaccount:team:default"
            );
        }
    }

    #[test]
    fn selectors_render_in_query_syntax() {
        let selector: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "web", "a.io/team": "blue"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["front", "back"]},
                {"key": "env", "operator": "NotIn", "values": ["prod"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "owner", "operator": "Exists"}
            ]
        }))
        .unwrap();
        assert_eq!(
            selector.to_query(),
            "a.io/team=blue,app=web,tier in (front,back),env notin (prod),!canary,owner"
        );
        assert!(LabelSelector::default().is_empty());
        assert_eq!(LabelSelector::default().to_query(), "");
    }

    #[test]
    fn api_versions_split_into_group_and_version() {
        let core = group_version_kind("v1", "Pod").unwrap();
        assert_eq!((core.group.as_str(), core.version.as_str()), ("", "v1"));
        let apps = group_version_kind("apps/v1", "Deployment").unwrap();
        assert_eq!((apps.group.as_str(), apps.version.as_str()), ("apps", "v1"));
        for bad in ["", "/v1", "apps/", "a/b/c", "Apps/v1"] {
            assert!(group_version_kind(bad, "X").is_err(), "{bad}");
        }
    }
}
