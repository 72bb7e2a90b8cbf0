//! Keeps the delivery sender's trust bundles (ConfigMaps labelled
//! `networking.knative.dev/trust-bundle: "true"`) in line with the store.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt as _;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::Context;
use rivulet_broker::tls::TRUST_BUNDLE_LABEL;
use rivulet_store::object_key;

/// A ConfigMap was applied.
pub(crate) fn config_map_applied(object: &Value, ctx: &Context) {
    if ctx.dispatch.sender.trust_bundles().applied(object) {
        let (namespace, name) = object_key(object);
        tracing::info!(%namespace, %name, "trust bundle changed");
    }
}

/// A ConfigMap was deleted.
pub(crate) fn config_map_deleted(object: &Value, ctx: &Context) {
    let (namespace, name) = object_key(object);
    if ctx
        .dispatch
        .sender
        .trust_bundles()
        .deleted(&namespace, &name)
    {
        tracing::info!(%namespace, %name, "trust bundle removed");
    }
}

/// Takes in the trust bundles that exist now and follows their changes until `stop`. With
/// the Kubernetes API, a watch selects the labelled ConfigMaps only (the rest of the
/// cluster's are none of Rivulet's business); with files, every ConfigMap is in the store
/// and its changes reach the ConfigMap reconciler.
pub async fn follow_trust_bundles(ctx: Arc<Context>, stop: CancellationToken) {
    if let Some(client) = ctx.kube_client() {
        tokio::select! {
            () = watch_cluster(client, &ctx) => {}
            () = stop.cancelled() => {}
        }
        return;
    }
    match ctx.store.list(Context::kind("ConfigMap"), None).await {
        Ok(config_maps) => {
            for config_map in config_maps {
                config_map_applied(&config_map, &ctx);
            }
        }
        Err(error) => tracing::warn!(%error, "cannot list ConfigMaps for trust bundles"),
    }
}

async fn watch_cluster(client: kube::Client, ctx: &Context) {
    use kube::runtime::watcher::{self, Event};
    use kube::runtime::{WatchStreamExt as _, watcher as watch};
    let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = kube::Api::all(client);
    let selector = format!("{TRUST_BUNDLE_LABEL}=true");
    let mut events =
        std::pin::pin!(watch(api, watcher::Config::default().labels(&selector)).default_backoff());
    // Bundles listed in a (re)list, so those gone meanwhile are forgotten at its end.
    let mut listed = HashSet::new();
    let mut known = HashSet::new();
    while let Some(event) = events.next().await {
        let json = |object| serde_json::to_value(object).unwrap_or(Value::Null);
        match event {
            Ok(Event::Init) => listed.clear(),
            Ok(Event::InitApply(object)) => {
                let object = json(object);
                listed.insert(object_key(&object));
                config_map_applied(&object, ctx);
            }
            Ok(Event::InitDone) => {
                for (namespace, name) in known.difference(&listed) {
                    ctx.dispatch.sender.trust_bundles().deleted(namespace, name);
                }
                known = std::mem::take(&mut listed);
            }
            Ok(Event::Apply(object)) => {
                let object = json(object);
                known.insert(object_key(&object));
                config_map_applied(&object, ctx);
            }
            Ok(Event::Delete(object)) => {
                let object = json(object);
                known.remove(&object_key(&object));
                config_map_deleted(&object, ctx);
            }
            Err(error) => {
                tracing::debug!(%error, "watching trust-bundle ConfigMaps failed; retrying")
            }
        }
    }
}
