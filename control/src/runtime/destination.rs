//! Resolving a `Destination` (`uri`, `ref`, or `ref` + relative `uri`) to a URL.
//!
//! A `ref` names, in this order of lookup: a Broker (its ingress URL); another kind Rivulet
//! serves (read from its store); and, in Kubernetes mode only, any object in the cluster, read
//! through the API server ([`cluster`]). Which URL an object stands for is Knative's duck
//! typing ([`addressable`]).

use std::fmt;

use super::Context;
use rivulet_core::resources::{Destination, KReference, KindInfo, find_kind_by_name};
use rivulet_store::StoreError;

mod addressable;
mod cluster;

use addressable::NotAddressable;

/// The URL a destination points at. `namespace` is the referring object's namespace.
/// A `ref` to a Broker resolves to its ingress; a `ref` to any other kind resolves by duck
/// typing (a Kubernetes Service to its cluster DNS name). Anything else is refused with the
/// reason.
pub async fn resolve_destination(
    destination: &Destination,
    namespace: &str,
    ctx: &Context,
) -> Result<String, String> {
    resolve(destination, namespace, ctx)
        .await
        .map(|(url, _)| url)
        .map_err(|error| error.to_string())
}

/// Like [`resolve_destination`], with the CA certificates (PEM) to trust at the URL: the
/// destination's own `CACerts`, else those the addressed object publishes.
pub async fn resolve_destination_with_ca(
    destination: &Destination,
    namespace: &str,
    ctx: &Context,
) -> Result<(String, Option<String>), String> {
    let (url, ca_certs) = resolve(destination, namespace, ctx)
        .await
        .map_err(|error| error.to_string())?;
    let own = destination
        .ca_certs
        .clone()
        .filter(|pem| !pem.trim().is_empty());
    Ok((url, own.or(ca_certs)))
}

/// Why a destination has no URL. Large parts are boxed: errors are rare, results many.
#[derive(Debug, thiserror::Error)]
enum DestinationError {
    #[error("destination has neither ref nor uri")]
    Empty,
    #[error(
        "cannot resolve a ref to {0}: in standalone mode a ref must name a Broker or another addressable kind Rivulet serves; use uri for other destinations"
    )]
    NotServed(Box<Target>),
    #[error(
        "cannot resolve a ref to {0}: it runs a workload (a pod), which standalone Rivulet does not run; run the program yourself and point uri at it, or use Kubernetes mode"
    )]
    WorkloadInStandalone(Box<Target>),
    #[error(
        "cannot resolve a ref to {0}: a ref to a kind Rivulet does not serve needs an apiVersion (v1 for a Kubernetes Service, serving.knative.dev/v1 for a Knative Service)"
    )]
    NoApiVersion(Box<Target>),
    #[error("cannot resolve a ref to {0}: apiVersion must be `version` or `group/version`")]
    InvalidApiVersion(Box<Target>),
    #[error("cannot resolve a ref to {0}: the API server does not serve that apiVersion")]
    UnknownApiVersion(Box<Target>),
    #[error("cannot resolve a ref to {0}: the API server serves no such kind in that apiVersion")]
    UnknownKind(Box<Target>),
    #[error("{0} does not exist")]
    DoesNotExist(Box<Target>),
    #[error("{target} is not addressable: {reason}")]
    NotAddressable {
        target: Box<Target>,
        reason: NotAddressable,
    },
    #[error("reading {target}: {source}")]
    Store {
        target: Box<Target>,
        source: StoreError,
    },
    #[error("reading {target}: {source}")]
    Api {
        target: Box<Target>,
        source: Box<kube::Error>,
    },
}

/// The object a `ref` names, with the namespace it is looked up in.
#[derive(Debug, Clone)]
struct Target {
    api_version: Option<String>,
    kind: String,
    namespace: String,
    name: String,
}

impl Target {
    fn new(reference: &KReference, namespace: &str) -> Self {
        Self {
            api_version: reference.api_version.clone(),
            kind: reference.kind.clone(),
            namespace: reference
                .namespace
                .clone()
                .unwrap_or_else(|| namespace.to_string()),
            name: reference.name.clone(),
        }
    }
}

impl Target {
    /// A Kubernetes or Knative Service: a program in a pod, not an object Rivulet serves.
    fn is_workload(&self) -> bool {
        self.kind == "Service"
            && matches!(
                self.api_version.as_deref(),
                Some("v1") | Some("serving.knative.dev/v1")
            )
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)?;
        match &self.api_version {
            Some(api_version) => write!(f, " ({api_version})"),
            None => Ok(()),
        }
    }
}

async fn resolve(
    destination: &Destination,
    namespace: &str,
    ctx: &Context,
) -> Result<(String, Option<String>), DestinationError> {
    let Some(reference) = &destination.reference else {
        return destination
            .uri
            .clone()
            .map(|uri| (uri, None))
            .ok_or(DestinationError::Empty);
    };
    let target = Target::new(reference, namespace);
    let base = match served_kind(reference) {
        Some(kind) => from_store(kind, target, ctx).await?,
        None => match ctx.kube_client() {
            Some(client) => {
                // As Knative does: CA certificates on the destination mean https.
                let tls = destination
                    .ca_certs
                    .as_deref()
                    .is_some_and(|c| !c.is_empty());
                (cluster::resolve(&client, ctx, target, tls).await?, None)
            }
            None if target.is_workload() => {
                return Err(DestinationError::WorkloadInStandalone(target.into()));
            }
            None => return Err(DestinationError::NotServed(target.into())),
        },
    };
    let (base, ca_certs) = base;
    Ok((
        match &destination.uri {
            Some(relative) => join_relative(&base, relative),
            None => base,
        },
        ca_certs,
    ))
}

/// The kind Rivulet serves that a `ref` names, if it names one.
fn served_kind(reference: &KReference) -> Option<&'static KindInfo> {
    find_kind_by_name(reference.api_version.as_deref(), &reference.kind)
        .filter(|kind| kind.kind == reference.kind)
}

async fn from_store(
    kind: &'static KindInfo,
    target: Target,
    ctx: &Context,
) -> Result<(String, Option<String>), DestinationError> {
    let object = match ctx.store.get(kind, &target.namespace, &target.name).await {
        Ok(Some(object)) => object,
        Ok(None) => return Err(DestinationError::DoesNotExist(target.into())),
        Err(source) => {
            return Err(DestinationError::Store {
                target: target.into(),
                source,
            });
        }
    };
    if kind.kind == "Broker" {
        // Known without waiting for the broker's status to be written.
        let (address, _) = ctx
            .settings
            .addresses_at(&format!("/{}/{}", target.namespace, target.name), None);
        return Ok((address.url, address.ca_certs));
    }
    addressable::address(&object).map_err(|reason| DestinationError::NotAddressable {
        target: target.into(),
        reason,
    })
}

fn join_relative(base: &str, relative: &str) -> String {
    match url::Url::parse(base).and_then(|b| b.join(relative)) {
        Ok(joined) => joined.to_string(),
        Err(_) => format!(
            "{}/{}",
            base.trim_end_matches('/'),
            relative.trim_start_matches('/')
        ),
    }
}
