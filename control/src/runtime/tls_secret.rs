//! The serving certificate from a TLS Secret (`--tls-secret`): a change to that Secret puts
//! the new certificate in service; a Secret that cannot be used keeps the old one.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::Context;
use rivulet_store::object_key;

/// How often the Secret is read again where the store does not report Secret changes (the
/// Kubernetes store watches no Secrets: it may only get them by name).
const CLUSTER_POLL: Duration = Duration::from_secs(10);

/// A Secret was applied (`Some`) or deleted (`None`, with the deleted object as `key_of`).
pub(super) fn secret_changed(key_of: &Value, now: Option<&Value>, ctx: &Context) {
    let Some(tls) = &ctx.settings.tls else {
        return;
    };
    let Some(secret) = tls.secret() else {
        return;
    };
    let (namespace, name) = object_key(key_of);
    if (namespace.as_str(), name.as_str()) != (secret.namespace.as_str(), secret.name.as_str()) {
        return;
    }
    let metrics = &ctx.dispatch.metrics;
    tls.report(
        tls.update_from_secret(now),
        &metrics.tls_certificate_reloads,
        &metrics.tls_certificate_reload_failures,
    );
}

/// On a cluster, reads the certificate's Secret by name every [`CLUSTER_POLL`] until `stop`.
/// Elsewhere the store reports Secret changes to the reconcilers, which call
/// [`secret_changed`].
pub async fn follow_tls_secret(ctx: Arc<Context>, stop: CancellationToken) {
    let Some(secret) = ctx
        .settings
        .tls
        .as_ref()
        .and_then(|tls| tls.secret().cloned())
    else {
        return;
    };
    if ctx.kube_client().is_none() {
        return;
    }
    let kind = Context::kind("Secret");
    let mut ticks = tokio::time::interval(CLUSTER_POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match ctx.store.get(kind, &secret.namespace, &secret.name).await {
            Ok(object) => {
                let key = serde_json::json!({
                    "metadata": {"namespace": secret.namespace, "name": secret.name}
                });
                secret_changed(&key, object.as_ref(), &ctx);
            }
            // The API server being away is not a bad certificate: try again next time.
            Err(error) => {
                tracing::warn!(%error, %secret, "cannot read the serving certificate's Secret")
            }
        }
    }
}
