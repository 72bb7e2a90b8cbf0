//! Samples how many events each running trigger's subscription holds unacknowledged into
//! `rivulet_trigger_queue_depth`, one trigger after another, so a slow or failing backend
//! costs at most one bounded call per trigger and round.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rivulet_channels::ChannelError;
use rivulet_core::log_throttle::LogThrottle;
use rivulet_core::metrics::TriggerLabels;
use tokio_util::sync::CancellationToken;

use super::Context;
use super::trigger::subscription_name;

/// How often queue depths are sampled unless configured otherwise.
pub const DEFAULT_QUEUE_DEPTH_INTERVAL: Duration = Duration::from_secs(10);

/// How long counting one trigger's events may take before it is skipped for the round.
const COUNT_TIMEOUT: Duration = Duration::from_secs(5);

/// Samples every `interval` until `stop`.
pub async fn sample_queue_depths(ctx: Arc<Context>, interval: Duration, stop: CancellationToken) {
    let mut sampler = Sampler::default();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        sampler.round(&ctx, &stop).await;
    }
}

/// What one round leaves for the next.
#[derive(Default)]
struct Sampler {
    /// Triggers that ran at the last round: their series go once they no longer run.
    running: HashSet<TriggerLabels>,
    /// Triggers whose depth series exists.
    sampled: HashSet<TriggerLabels>,
    /// Backends failing every round write a line now and then, not one per trigger.
    failures: LogThrottle,
}

impl Sampler {
    async fn round(&mut self, ctx: &Context, stop: &CancellationToken) {
        let triggers: Vec<(TriggerLabels, String)> = ctx
            .triggers
            .lock()
            .await
            .values()
            .map(|running| {
                let dispatch = &running.dispatch;
                let labels = TriggerLabels {
                    namespace: dispatch.namespace.clone(),
                    trigger: dispatch.trigger.clone(),
                };
                (labels, dispatch.broker.clone())
            })
            .collect();
        let metrics = &ctx.dispatch.metrics;
        let mut sampled = HashSet::new();
        for (labels, broker) in &triggers {
            if stop.is_cancelled() {
                return;
            }
            let Some(handle) = ctx.brokers.get(&labels.namespace, broker) else {
                continue;
            };
            let subscription = subscription_name(&labels.trigger);
            let counted =
                tokio::time::timeout(COUNT_TIMEOUT, handle.channel.backlog(&subscription)).await;
            let failure = match counted {
                Ok(Ok(Some(depth))) => {
                    metrics
                        .trigger_queue_depth
                        .get_or_create(labels)
                        .set(i64::try_from(depth).unwrap_or(i64::MAX));
                    sampled.insert(labels.clone());
                    continue;
                }
                // A backend that cannot count has no series; a subscription being created
                // or removed is counted next round.
                Ok(Ok(None) | Err(ChannelError::UnknownSubscription(_))) => continue,
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("no answer within {COUNT_TIMEOUT:?}"),
            };
            // The last value stays until a count succeeds again.
            if self.sampled.contains(labels) {
                sampled.insert(labels.clone());
            }
            if let Some(suppressed) = self.failures.allow() {
                tracing::warn!(
                    namespace = %labels.namespace,
                    trigger = %labels.trigger,
                    backend = handle.backend,
                    error = %failure,
                    suppressed,
                    "cannot count the events a trigger's subscription holds"
                );
            }
        }
        for gone in self.sampled.difference(&sampled) {
            metrics.trigger_queue_depth.remove(gone);
        }
        let running: HashSet<TriggerLabels> =
            triggers.into_iter().map(|(labels, _)| labels).collect();
        // A trigger that stopped running (deleted, or its broker gone) has no lag either;
        // a consumer started again makes its series anew.
        for gone in self.running.difference(&running) {
            metrics.trigger_lag_seconds.remove(gone);
        }
        self.running = running;
        self.sampled = sampled;
    }
}
