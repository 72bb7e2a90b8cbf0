//! Resolving a `ref` to an object in the cluster (Kubernetes mode), read through the API
//! server: a Kubernetes Service, once it is known to exist, by its DNS name; anything else by
//! its address, at the plural that discovery finds for its apiVersion and kind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::discovery::Scope;
use serde_json::Value;

use super::{DestinationError, Target, addressable};
use crate::runtime::Context;

/// Kinds whose plural is known, so resolving them needs no discovery request:
/// (group, version, kind, plural).
const KNOWN_KINDS: [(&str, &str, &str, &str); 1] =
    [("serving.knative.dev", "v1", "Service", "services")];

/// What discovery found, by kind, so each kind is asked about once. Failures are not kept:
/// a CRD installed later is found on the next try.
#[derive(Clone, Default)]
struct DiscoveredKinds(Arc<Mutex<HashMap<GroupVersionKind, (ApiResource, Scope)>>>);

pub(super) async fn resolve(
    client: &kube::Client,
    ctx: &Context,
    target: Target,
    tls: bool,
) -> Result<String, DestinationError> {
    let gvk = group_version_kind(&target)?;
    if gvk.group.is_empty() && gvk.version == "v1" && gvk.kind == "Service" {
        // Knative calls Services without them being Addressable; checking that this one
        // exists turns a misspelt name into a clear error instead of failed deliveries.
        get(
            client,
            &ApiResource::erase::<Service>(&()),
            &Scope::Namespaced,
            &target,
        )
        .await?;
        return Ok(addressable::service_url(
            &target.name,
            &target.namespace,
            tls,
        ));
    }
    let (resource, scope) = api_resource(client, ctx, &gvk, &target).await?;
    let object = get(client, &resource, &scope, &target).await?;
    addressable::address_url(&object).map_err(|reason| DestinationError::NotAddressable {
        target: target.into(),
        reason,
    })
}

/// The group, version and kind a `ref` names; its apiVersion is required here.
fn group_version_kind(target: &Target) -> Result<GroupVersionKind, DestinationError> {
    let api_version = target
        .api_version
        .as_deref()
        .ok_or_else(|| DestinationError::NoApiVersion(target.clone().into()))?;
    let invalid = || DestinationError::InvalidApiVersion(target.clone().into());
    let (group, version) = match api_version.split_once('/') {
        Some((group, version)) if !group.is_empty() => (group, version),
        Some(_) => return Err(invalid()),
        None => ("", api_version),
    };
    if version.is_empty() || version.contains('/') {
        return Err(invalid());
    }
    Ok(GroupVersionKind::gvk(group, version, &target.kind))
}

/// How to address a kind: a known plural, one discovered before, or one discovery finds now.
async fn api_resource(
    client: &kube::Client,
    ctx: &Context,
    gvk: &GroupVersionKind,
    target: &Target,
) -> Result<(ApiResource, Scope), DestinationError> {
    let known = KNOWN_KINDS.iter().find(|(group, version, kind, _)| {
        gvk.group == *group && gvk.version == *version && gvk.kind == *kind
    });
    if let Some((_, _, _, plural)) = known {
        return Ok((
            ApiResource::from_gvk_with_plural(gvk, plural),
            Scope::Namespaced,
        ));
    }
    let discovered = ctx.extensions.get_or_default::<DiscoveredKinds>();
    if let Some(found) = discovered.0.lock().expect("lock poisoned").get(gvk) {
        return Ok(found.clone());
    }
    let (resource, capabilities) = kube::discovery::pinned_kind(client, gvk)
        .await
        .map_err(|error| discovery_error(error, target))?;
    let found = (resource, capabilities.scope);
    discovered
        .0
        .lock()
        .expect("lock poisoned")
        .insert(gvk.clone(), found.clone());
    Ok(found)
}

fn discovery_error(error: kube::Error, target: &Target) -> DestinationError {
    match error {
        // The group version's resource list is missing: no such group, or not that version.
        kube::Error::Api(status) if status.is_not_found() => {
            DestinationError::UnknownApiVersion(target.clone().into())
        }
        kube::Error::Discovery(kube::error::DiscoveryError::MissingKind(_)) => {
            DestinationError::UnknownKind(target.clone().into())
        }
        source => DestinationError::Api {
            target: target.clone().into(),
            source: Box::new(source),
        },
    }
}

/// The named object as JSON (what `apiVersion`, `kind` and `metadata` leave: spec, status).
async fn get(
    client: &kube::Client,
    resource: &ApiResource,
    scope: &Scope,
    target: &Target,
) -> Result<Value, DestinationError> {
    let api: Api<DynamicObject> = match scope {
        Scope::Namespaced => Api::namespaced_with(client.clone(), &target.namespace, resource),
        Scope::Cluster => Api::all_with(client.clone(), resource),
    };
    match api.get_opt(&target.name).await {
        Ok(Some(object)) => Ok(object.data),
        Ok(None) => Err(DestinationError::DoesNotExist(target.clone().into())),
        Err(source) => Err(DestinationError::Api {
            target: target.clone().into(),
            source: Box::new(source),
        }),
    }
}
