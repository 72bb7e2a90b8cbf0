//! Sink kinds: HTTP endpoints that take CloudEvents and hand them to something outside.
//!
//! A sink hands events to its [`Outlet`]. The generic HTTP handler ([`handle`]) reads CloudEvents in any
//! content mode (binary, structured, batched), calls the sink for each and answers `202` only
//! once the sink accepted all of them: `400` for an invalid event, `502` when the target
//! refused it, `503` when the target could not be reached.
//!
//! Each sink kind lives in its own folder with its resource type, its outlet and its tests.
//! The resource implements [`SinkKind`] and registers itself with `register_sink!`: its
//! `KindInfo` and a [`SinkReconciler`] calling the generic [`reconcile`] and [`cleanup`]. Registered sinks are served at
//! `/sinks/{namespace}/{plural}/{name}`, published as `status.address.url`, so a Trigger (or a
//! source) can name them with `ref`.
#![forbid(unsafe_code)]

use rivulet_core::resources::skip_serializing_none;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kube::core::object::HasSpec;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use rivulet_control::runtime::routes::HttpRoutes;
use rivulet_control::runtime::{self, Action, Context, ReconcileError, Reconciler};
use rivulet_core::event::{self, Event};
use rivulet_core::metrics::AdapterOutcomeLabels;
use rivulet_core::resources::validation::{
    ValidateSpec, ValidationError, typed, validate_metadata,
};
use rivulet_core::resources::{Addressable, Condition, ConditionSet, find_kind_by_name};
use rivulet_store::object_key;

/// The reconciler of every [`SinkKind`]: [`reconcile`] and [`cleanup`].
pub struct SinkReconciler<K>(std::marker::PhantomData<K>);

impl<K: SinkKind> runtime::Reconcile for SinkReconciler<K> {
    // Read as a plain object and parsed by the kind, which may fill in what can be left out.
    type Resource = Value;
    const AFTER: &'static [&'static str] = RESYNC_AFTER;
    const BEFORE: &'static [&'static str] = RESYNC_BEFORE;

    async fn reconcile(
        _object: Value,
        object: &Value,
        ctx: &Arc<Context>,
    ) -> Result<Action, ReconcileError> {
        let resource =
            K::from_object(object).map_err(|e| ReconcileError::Invalid(e.to_string()))?;
        reconcile::<K>(resource, object, ctx).await
    }

    fn cleanup(
        object: &Value,
        ctx: &Arc<Context>,
    ) -> impl Future<Output = Result<(), ReconcileError>> + Send {
        cleanup::<K>(object, ctx)
    }
}

/// A sink lists the policies that admit senders to it.
pub const RESYNC_AFTER: &[&str] = &["EventPolicy"];

/// Triggers and sources may name a sink by reference and resolve its address from its status,
/// so sinks are resynced before them.
pub const RESYNC_BEFORE: &[&str] = &["Trigger"];

/// Registers a sink kind, named once by its [`SinkKind`], with the generic reconciler. Its
/// metadata and spec ([`ValidateSpec`]) are checked by [`validate_sink`].
///
/// [`ValidateSpec`]: rivulet_core::resources::validation::ValidateSpec
macro_rules! register_sink {
    ($resource:ty {
        group: $group:literal,
        version: $version:literal $(,)?
    }) => {
        rivulet_control::register_kind! {
            kind: <$resource as $crate::SinkKind>::KIND,
            resource: $resource,
            group: $group,
            version: $version,
            plural: <$resource as $crate::SinkKind>::PLURAL,
            validate: $crate::validate_sink::<$resource>,
            reconciler: $crate::SinkReconciler<$resource>,
        }
    };
}
pub(crate) use register_sink;

pub mod display;
pub mod http_forward;
pub mod kafka;
pub mod nats;
pub mod rabbitmq;

/// The largest request a sink takes.
pub const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// Where a sink kind puts the events it receives: a URL, a topic, a subject, an exchange, the
/// log. ("Sink" means what Knative means: an addressable that receives events.)
#[async_trait]
pub trait Outlet: Send + Sync + 'static {
    /// Returns once the event is safely handed on (or fails with the reason).
    async fn accept(&self, event: Event) -> Result<(), SinkError>;
}

/// Why a sink did not take an event; each maps to an HTTP status.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// Not a valid CloudEvent (`400`).
    #[error("not a valid CloudEvent: {0}")]
    Invalid(String),
    /// The target refused the event for good (`502`).
    #[error("the target refused the event: {0}")]
    Refused(String),
    /// The target could not take it now (`503`); sending again later may work.
    #[error("the target is unavailable: {0}")]
    Unavailable(String),
}

impl SinkError {
    pub fn status(&self) -> StatusCode {
        match self {
            SinkError::Invalid(_) => StatusCode::BAD_REQUEST,
            SinkError::Refused(_) => StatusCode::BAD_GATEWAY,
            SinkError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for SinkError {
    fn into_response(self) -> Response {
        (
            self.status(),
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{self}\n"),
        )
            .into_response()
    }
}

/// Reads the CloudEvents of a request and gives each to `outlet`, in order. Returns how many
/// were accepted.
pub async fn handle(outlet: &dyn Outlet, request: Request) -> Result<usize, SinkError> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, BODY_LIMIT)
        .await
        .map_err(|_| SinkError::Invalid(format!("the body is larger than {BODY_LIMIT} bytes")))?;
    let (_, events) =
        event::from_http(&parts.headers, body).map_err(|e| SinkError::Invalid(e.to_string()))?;
    let count = events.len();
    for event in events {
        outlet.accept(event).await?;
    }
    Ok(count)
}

/// Answers a request for a sink that hands events to `outlet`: `202` once accepted, the
/// error's status otherwise.
pub async fn respond(outlet: &dyn Outlet, request: Request) -> Response {
    if request.method() != Method::POST {
        return method_not_allowed();
    }
    match handle(outlet, request).await {
        Ok(_) => StatusCode::ACCEPTED.into_response(),
        Err(error) => error.into_response(),
    }
}

fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, HeaderValue::from_static("POST"))],
        "POST CloudEvents here\n",
    )
        .into_response()
}

/// A router that serves one sink at every path (for `rivulet display`).
pub fn router(outlet: Arc<dyn Outlet>) -> axum::Router {
    axum::Router::new()
        .fallback(
            |State(outlet): State<Arc<dyn Outlet>>, request: Request| async move {
                respond(&*outlet, request).await
            },
        )
        .with_state(outlet)
}

/// What a sink's `Ready` depends on: its address (published once its target is built); the
/// checks a kind's `build` reports count too.
pub const SINK_CONDITIONS: ConditionSet = ConditionSet::new(&["Addressable"]);

/// Status of every sink kind.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct SinkStatus {
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    pub address: Option<Addressable>,
}

/// Which sink: its kind, namespace and name.
pub type SinkKey = rivulet_control::runtime::AdapterKey;

/// A sink kind's resource, as the generic reconciler needs it.
pub trait SinkKind: DeserializeOwned + Send + Sync + 'static {
    /// The kind's name, as registered in its `KindInfo`.
    const KIND: &'static str;
    /// Its plural, the path segment it is served under.
    const PLURAL: &'static str;

    /// Reads the resource from its stored object. A kind whose spec may be left out fills
    /// it in here, for validation and reconciling alike.
    fn from_object(object: &Value) -> Result<Self, ValidationError> {
        typed(object)
    }

    /// Builds the sink, checking what validation cannot. An error is the failing condition
    /// to report; the reconciler tries again later.
    fn build(
        &self,
        key: &SinkKey,
        ctx: &Arc<Context>,
    ) -> impl Future<Output = Result<Built, Condition>> + Send;
}

/// The `validate` of every sink kind: its metadata, then its spec ([`ValidateSpec`]) as
/// [`SinkKind::from_object`] reads it.
pub fn validate_sink<K>(new: &Value, _old: Option<&Value>) -> Result<(), ValidationError>
where
    K: SinkKind + HasSpec,
    K::Spec: ValidateSpec,
{
    validate_metadata(new)?;
    K::from_object(new)?.spec().validate()
}

/// A sink ready to serve.
pub struct Built {
    pub outlet: Arc<dyn Outlet>,
    /// Identity of the configuration: a change replaces the sink.
    pub fingerprint: String,
    /// Further (true) conditions to report.
    pub conditions: Vec<Condition>,
}

struct Served {
    kind: &'static str,
    fingerprint: String,
    outlet: Arc<dyn Outlet>,
}

/// A served sink's plural, namespace and name.
type ServedKey = (String, String, String);

/// The sinks served by one runtime.
#[derive(Default, Clone)]
struct ServedSinks(Arc<RwLock<HashMap<ServedKey, Arc<Served>>>>);

/// Where a sink is served, below the server's base URL.
pub fn sink_path(namespace: &str, plural: &str, name: &str) -> String {
    format!("/sinks/{namespace}/{plural}/{name}")
}

inventory::submit! {
    HttpRoutes {
        listener: rivulet_control::runtime::routes::Listener::Ingress,
        build: routes,
    }
}

fn routes(ctx: Arc<Context>) -> axum::Router {
    axum::Router::new()
        .route(
            "/sinks/{namespace}/{plural}/{name}",
            axum::routing::any(receive),
        )
        .with_state(ctx)
}

async fn receive(
    State(ctx): State<Arc<Context>>,
    Path((namespace, plural, name)): Path<(String, String, String)>,
    request: Request,
) -> Response {
    if request.method() != Method::POST {
        return method_not_allowed();
    }
    let served = ctx.extensions.get_or_default::<ServedSinks>();
    let found = served
        .0
        .read()
        .expect("lock poisoned")
        .get(&(plural.clone(), namespace.clone(), name.clone()))
        .cloned();
    let Some(served) = found else {
        return (
            StatusCode::NOT_FOUND,
            format!("no ready sink {plural} {namespace}/{name}\n"),
        )
            .into_response();
    };
    let request = match authorize(&ctx, served.kind, &namespace, &name, request).await {
        Ok(request) => request,
        Err(refused) => return refused,
    };
    let result = handle(&*served.outlet, request).await;
    let (outcome, count) = match &result {
        Ok(count) => ("accepted", *count as u64),
        Err(SinkError::Invalid(_)) => ("invalid", 1),
        Err(_) => ("failed", 1),
    };
    ctx.dispatch
        .metrics
        .sink_events
        .get_or_create(&AdapterOutcomeLabels {
            kind: served.kind,
            namespace,
            name,
            outcome,
        })
        .inc_by(count);
    match result {
        Ok(_) => StatusCode::ACCEPTED.into_response(),
        Err(error) => {
            tracing::debug!(kind = served.kind, %error, "sink did not accept a request");
            error.into_response()
        }
    }
}

/// With `authentication-oidc` on, a sink takes only senders with a valid token for its
/// audience whom its EventPolicies (or the default authorization mode) admit; the request
/// comes back with its body read, for the sink to take.
async fn authorize(
    ctx: &Context,
    kind: &'static str,
    namespace: &str,
    name: &str,
    request: Request,
) -> Result<Request, Response> {
    let Some(auth) = ctx.ingress.auth().filter(|auth| auth.enabled()) else {
        return Ok(request);
    };
    let target = rivulet_broker::auth::TargetRef {
        group: find_kind_by_name(None, kind)
            .map(|k| k.group.to_string())
            .unwrap_or_default(),
        kind: kind.to_string(),
        namespace: namespace.to_string(),
        name: name.to_string(),
        labels: Default::default(),
    };
    let (parts, body) = request.into_parts();
    let subject = auth
        .authenticate(&target, &parts.headers)
        .await
        .map_err(IntoResponse::into_response)?
        .unwrap_or_default();
    let body = axum::body::to_bytes(body, BODY_LIMIT).await.map_err(|_| {
        SinkError::Invalid(format!("the body is larger than {BODY_LIMIT} bytes")).into_response()
    })?;
    let (_, events) = event::from_http(&parts.headers, body.clone())
        .map_err(|e| SinkError::Invalid(e.to_string()).into_response())?;
    auth.authorize(&target, &subject, &events)
        .map_err(IntoResponse::into_response)?;
    Ok(Request::from_parts(parts, axum::body::Body::from(body)))
}

/// The generic sink reconciler: builds the sink, serves it at its address, writes the status,
/// and re-reconciles the objects that name it by `ref` once its address is known.
pub async fn reconcile<K: SinkKind>(
    resource: K,
    object: &Value,
    ctx: &Arc<Context>,
) -> Result<Action, ReconcileError> {
    let kind = find_kind_by_name(None, K::KIND)
        .ok_or_else(|| ReconcileError::Invalid(format!("kind {} is not registered", K::KIND)))?;
    let (namespace, name) = object_key(object);
    let key = SinkKey {
        kind: K::KIND,
        namespace: namespace.clone(),
        name: name.clone(),
    };
    let served = ctx.extensions.get_or_default::<ServedSinks>();
    let map_key = (K::PLURAL.to_string(), namespace.clone(), name.clone());
    let mut status = SinkStatus {
        observed_generation: runtime::generation(object),
        ..SinkStatus::default()
    };
    let mut parts = Vec::new();
    let mut action = Action::AwaitChange;
    match resource.build(&key, ctx).await {
        Ok(built) => {
            let mut map = served.0.write().expect("lock poisoned");
            if map
                .get(&map_key)
                .is_none_or(|s| s.fingerprint != built.fingerprint)
            {
                map.insert(
                    map_key,
                    Arc::new(Served {
                        kind: K::KIND,
                        fingerprint: built.fingerprint,
                        outlet: built.outlet,
                    }),
                );
            }
            parts.extend(built.conditions);
            parts.push(Condition::new("Addressable", true, "", ""));
            // https when transport encryption asks for it, like a broker's.
            let audience = ctx
                .settings
                .features
                .current()
                .authentication_oidc
                .then(|| rivulet_broker::auth::audience(kind.group, K::KIND, &namespace, &name));
            let (address, _) = ctx
                .settings
                .addresses_at(&sink_path(&namespace, K::PLURAL, &name), audience);
            status.address = Some(address);
        }
        Err(condition) => {
            served.0.write().expect("lock poisoned").remove(&map_key);
            parts.push(condition);
            action = Action::Requeue(Duration::from_secs(5));
        }
    }
    status.conditions = SINK_CONDITIONS.summarize(parts);
    let old_url = object
        .pointer("/status/address/url")
        .and_then(Value::as_str);
    let address_changed = old_url != status.address.as_ref().map(|a| a.url.as_str());
    ctx.write_status(kind, &namespace, &name, json!(status))
        .await?;
    if address_changed {
        reconcile_referrers(K::KIND, &namespace, &name, ctx).await;
    }
    Ok(action)
}

/// The generic cleanup of a deleted sink: stop serving it.
pub async fn cleanup<K: SinkKind>(
    object: &Value,
    ctx: &Arc<Context>,
) -> Result<(), ReconcileError> {
    let (namespace, name) = object_key(object);
    let served = ctx.extensions.get_or_default::<ServedSinks>();
    served
        .0
        .write()
        .expect("lock poisoned")
        .remove(&(K::PLURAL.to_string(), namespace, name));
    Ok(())
}

/// Reconciles every object (of any kind with a reconciler) whose spec names this sink by
/// `ref`, so a trigger applied before its sink resolves once the sink has an address.
async fn reconcile_referrers(kind: &str, namespace: &str, name: &str, ctx: &Arc<Context>) {
    for reconciler in inventory::iter::<Reconciler>() {
        if reconciler.kind == kind {
            continue;
        }
        let Some(referrer_kind) = find_kind_by_name(None, reconciler.kind) else {
            continue;
        };
        // ConfigMaps and Secrets have no spec to name a sink in; listing them would read
        // every one in the cluster for nothing.
        if referrer_kind.group.is_empty() {
            continue;
        }
        let Ok(objects) = ctx.store.list(referrer_kind, None).await else {
            continue;
        };
        for object in objects {
            let (object_namespace, _) = object_key(&object);
            let names_it = object
                .get("spec")
                .is_some_and(|spec| refers_to(spec, kind, namespace, name, &object_namespace));
            if names_it && let Err(error) = (reconciler.reconcile)(&object, ctx).await {
                tracing::debug!(%error, kind = reconciler.kind, "re-reconciling a referrer failed");
            }
        }
    }
}

/// Whether `value` holds a `ref` to `kind` `namespace/name` (a ref without a namespace is in
/// the referrer's namespace).
fn refers_to(value: &Value, kind: &str, namespace: &str, name: &str, own_namespace: &str) -> bool {
    match value {
        Value::Object(map) => {
            if let Some(reference) = map.get("ref") {
                let ref_namespace = reference
                    .get("namespace")
                    .and_then(Value::as_str)
                    .unwrap_or(own_namespace);
                if reference.get("kind").and_then(Value::as_str) == Some(kind)
                    && reference.get("name").and_then(Value::as_str) == Some(name)
                    && ref_namespace == namespace
                {
                    return true;
                }
            }
            map.values()
                .any(|v| refers_to(v, kind, namespace, name, own_namespace))
        }
        Value::Array(items) => items
            .iter()
            .any(|v| refers_to(v, kind, namespace, name, own_namespace)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_are_found_anywhere_in_the_spec() {
        let spec = json!({
            "broker": "default",
            "subscriber": {"ref": {"apiVersion": "sinks.rivulet.dev/v1alpha1", "kind": "EventDisplaySink", "name": "show"}},
        });
        assert!(refers_to(
            &spec,
            "EventDisplaySink",
            "default",
            "show",
            "default"
        ));
        assert!(!refers_to(
            &spec,
            "EventDisplaySink",
            "other",
            "show",
            "default"
        ));
        assert!(!refers_to(
            &spec,
            "HttpForwardSink",
            "default",
            "show",
            "default"
        ));
        let nested = json!({"delivery": {"deadLetterSink": {"ref": {"kind": "HttpForwardSink", "name": "dls", "namespace": "x"}}}});
        assert!(refers_to(&nested, "HttpForwardSink", "x", "dls", "default"));
    }

    #[test]
    fn errors_map_to_statuses() {
        assert_eq!(
            SinkError::Invalid(String::new()).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            SinkError::Refused(String::new()).status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            SinkError::Unavailable(String::new()).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
