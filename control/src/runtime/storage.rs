//! Storage health: follows the faults the embedded logs and the resource store report (a full
//! disk), so that `/readyz` says why it is not ready, the affected Brokers' Ready condition
//! turns False and back, and the `rivulet_storage_*` metrics tell the story. Recovery itself
//! happens where the fault is (the log's writer reopens and probes; the store probes here).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rivulet_channels::StorageFault;
use tokio_util::sync::CancellationToken;

use super::Context;
use rivulet_core::metrics::{Metrics, StorageLabels};

/// How often the faults are looked at.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// The storage faults known right now, by what has them.
#[derive(Default)]
pub struct StorageHealth {
    faults: Mutex<BTreeMap<String, StorageFault>>,
}

impl StorageHealth {
    /// Why storage keeps the server from being ready, if it does.
    pub fn problem(&self) -> Option<String> {
        let faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        if faults.is_empty() {
            return None;
        }
        Some(
            faults
                .iter()
                .map(|(what, fault)| format!("{what}: {}", fault.message))
                .collect::<Vec<_>>()
                .join("; "),
        )
    }

    /// Replaces the known faults; returns the ones that appeared and the ones that went.
    fn update(&self, now: BTreeMap<String, StorageFault>) -> (Vec<String>, Vec<String>) {
        let mut faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        let appeared = now
            .keys()
            .filter(|what| !faults.contains_key(*what))
            .cloned()
            .collect();
        let went = faults
            .keys()
            .filter(|what| !now.contains_key(*what))
            .cloned()
            .collect();
        *faults = now;
        (appeared, went)
    }
}

const RESOURCE_STORE: &str = "resource store";

fn broker_key(namespace: &str, name: &str) -> String {
    format!("broker {namespace}/{name}")
}

/// Follows storage faults until `stop`: keeps `health` and the metrics current, and
/// reconciles a Broker whose log's fault appeared or went, so its Ready condition says so.
pub async fn watch(
    ctx: Arc<Context>,
    health: Arc<StorageHealth>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(WATCH_INTERVAL) => {}
        }
        ctx.store.probe_storage().await;
        let mut now = BTreeMap::new();
        if let Some(fault) = ctx.store.storage_fault() {
            now.insert(RESOURCE_STORE.to_owned(), fault);
        }
        let mut brokers = BTreeMap::new();
        for handle in ctx.brokers.handles() {
            if let Some(fault) = handle.channel.storage_fault() {
                let key = broker_key(&handle.namespace, &handle.name);
                brokers.insert(key.clone(), (handle.namespace.clone(), handle.name.clone()));
                now.insert(key, fault);
            }
        }
        let full = now.values().any(|fault| fault.full);
        let failed = now.values().any(|fault| !fault.full);
        metrics.storage_full.set(i64::from(full));
        metrics.storage_failed.set(i64::from(failed));
        let previous: BTreeMap<String, StorageFault> = health
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let (appeared, went) = health.update(now.clone());
        for what in &appeared {
            let fault = &now[what];
            let component = if what == RESOURCE_STORE {
                "resource_store"
            } else {
                "embedded_log"
            };
            metrics
                .storage_faults
                .get_or_create(&StorageLabels {
                    component,
                    kind: if fault.full { "full" } else { "failed" },
                })
                .inc();
            tracing::error!(%what, fault = %fault.message, "storage fault: not ready until writes work again");
        }
        for what in &went {
            tracing::warn!(%what, "storage fault over: writes work again");
        }
        // Brokers whose fault appeared or went get their status written again.
        let changed = appeared.iter().chain(&went).filter_map(|what| {
            brokers.get(what).cloned().or_else(|| {
                previous.contains_key(what).then(|| {
                    let (namespace, name) = what
                        .strip_prefix("broker ")
                        .and_then(|rest| rest.split_once('/'))
                        .unwrap_or_default();
                    (namespace.to_owned(), name.to_owned())
                })
            })
        });
        let kind = Context::kind("Broker");
        for (namespace, name) in changed.collect::<Vec<_>>() {
            if let Ok(Some(object)) = ctx.store.get(kind, &namespace, &name).await {
                ctx.reconcile_applied(kind, &object).await;
            }
        }
    }
}
