//! Resolving a `Destination` (`uri`, `ref`, or `ref` + relative `uri`) to a URL.

use serde_json::Value;

use super::Context;
use crate::resources::{Destination, find_kind_by_name};

/// The URL a destination points at. `namespace` is the referring object's namespace.
/// A `ref` to a Broker resolves to its ingress; a `ref` to any other served kind resolves by
/// duck typing to its `status.address.url`. Anything else is refused with the reason.
pub async fn resolve_destination(
    destination: &Destination,
    namespace: &str,
    ctx: &Context,
) -> Result<String, String> {
    let Some(reference) = &destination.reference else {
        return destination
            .uri
            .clone()
            .ok_or_else(|| "destination has neither ref nor uri".to_string());
    };
    let ref_namespace = reference.namespace.as_deref().unwrap_or(namespace);
    let api_version = reference.api_version.as_deref();
    let kind = find_kind_by_name(api_version, &reference.kind).filter(|k| k.kind == reference.kind);
    let Some(kind) = kind else {
        return Err(format!(
            "cannot resolve a ref to {} {:?}: in standalone mode a ref must name a Broker or another addressable kind Rivulet serves; use uri for other destinations",
            api_version.unwrap_or("(no apiVersion)"),
            reference.kind
        ));
    };
    let object = ctx
        .store
        .get(kind, ref_namespace, &reference.name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "{} {ref_namespace}/{} does not exist",
                kind.kind, reference.name
            )
        })?;
    let base = if kind.kind == "Broker" {
        // Known without waiting for the broker's status to be written.
        format!(
            "{}/{ref_namespace}/{}",
            ctx.settings.base_url, reference.name
        )
    } else {
        object
            .pointer("/status/address/url")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                format!(
                    "{} {ref_namespace}/{} is not addressable (no status.address.url yet)",
                    kind.kind, reference.name
                )
            })?
    };
    Ok(match &destination.uri {
        Some(relative) => join_relative(&base, relative),
        None => base,
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
