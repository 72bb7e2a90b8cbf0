//! `Parallel` (`flows.knative.dev/v1`): every event to every branch, each with an optional
//! filter and a subscriber whose reply goes to the branch's `reply`, else the Parallel's.
//! Built as Knative builds it: an ingress channel (`NAME-kn-parallel`), and per branch a
//! channel (`NAME-kn-parallel-I`), a Subscription from the ingress channel to the filter with
//! its reply to the branch's channel (`NAME-kn-parallel-filter-I`; without a filter, events
//! pass straight on), and one from the branch's channel to the subscriber
//! (`NAME-kn-parallel-I`). A filter passes an event by answering with it, and drops it by
//! answering without an event.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::channel::ChannelTemplate;
use crate::flow::{
    ChannelStatusRef, Flow, SubscriptionStatusRef, address_of, all_ready, next_action, ready_of,
    reference_to, remove_owned,
};
use rivulet_control::runtime::{Action, Context, Reconcile, ReconcileError, generation};
use rivulet_core::knative_kind;
use rivulet_core::resources::validation::{
    ValidationError, typed, validate_delivery, validate_destination, validate_metadata,
};
use rivulet_core::resources::{
    Addressable, Condition, ConditionSet, DeliverySpec, Destination, apply, skip_serializing_none,
};
use rivulet_store::object_key;

/// One branch of a Parallel.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Branch {
    /// Decides whether the branch takes an event: it answers with the event to pass it.
    pub filter: Option<Destination>,
    pub subscriber: Destination,
    /// Where the subscriber's reply goes; the Parallel's `reply` when unset.
    pub reply: Option<Destination>,
    /// Retries, backoff and dead-letter sink of the subscriber's Subscription.
    pub delivery: Option<DeliverySpec>,
}

/// Knative's `Parallel`.
#[apply(knative_kind!)]
#[kube(
    group = "flows.knative.dev",
    version = "v1",
    kind = "Parallel",
    status = "ParallelStatus",
    category = "flows",
    label("duck.knative.dev/addressable", "true"),
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.address.url"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParallelSpec {
    pub branches: Vec<Branch>,
    /// The kind of the Parallel's channels; by default `default-ch-webhook`'s.
    pub channel_template: Option<ChannelTemplate>,
    /// Where replies go for branches without a `reply` of their own.
    pub reply: Option<Destination>,
}

/// One branch's parts and their readiness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BranchStatus {
    pub filter_subscription_status: SubscriptionStatusRef,
    pub filter_channel_status: ChannelStatusRef,
    pub subscriber_subscription_status: SubscriptionStatusRef,
}

#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ParallelStatus {
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    pub ingress_channel_status: Option<ChannelStatusRef>,
    #[serde(default)]
    pub branch_statuses: Vec<BranchStatus>,
    pub address: Option<Addressable>,
}

/// What a Parallel's `Ready` depends on (Knative's condition types).
pub const PARALLEL_CONDITIONS: ConditionSet = ConditionSet::new(&[
    "IngressChannelReady",
    "ChannelsReady",
    "SubscriptionsReady",
    "Addressable",
]);

/// The Parallel's ingress channel.
pub fn ingress_name(parallel: &str) -> String {
    format!("{parallel}-kn-parallel")
}

/// Branch `index`'s channel, and the Subscription to its subscriber.
pub fn branch_name(parallel: &str, index: usize) -> String {
    format!("{parallel}-kn-parallel-{index}")
}

/// Branch `index`'s Subscription to its filter.
pub fn filter_name(parallel: &str, index: usize) -> String {
    format!("{parallel}-kn-parallel-filter-{index}")
}

fn validate_parallel(new: &Value, _old: Option<&Value>) -> Result<(), ValidationError> {
    validate_metadata(new)?;
    let parallel: Parallel = typed(new)?;
    if parallel.spec.branches.is_empty() {
        return Err(ValidationError::new(
            "spec.branches",
            "needs at least one branch",
        ));
    }
    for (i, branch) in parallel.spec.branches.iter().enumerate() {
        let field = format!("spec.branches[{i}]");
        validate_destination(&format!("{field}.subscriber"), &branch.subscriber)?;
        if let Some(filter) = &branch.filter {
            validate_destination(&format!("{field}.filter"), filter)?;
        }
        if let Some(reply) = &branch.reply {
            validate_destination(&format!("{field}.reply"), reply)?;
        }
        if let Some(delivery) = &branch.delivery {
            validate_delivery(&format!("{field}.delivery"), delivery)?;
        }
    }
    if let Some(template) = &parallel.spec.channel_template {
        template
            .check()
            .map_err(|message| ValidationError::new("spec.channelTemplate", message))?;
    }
    if let Some(reply) = &parallel.spec.reply {
        validate_destination("spec.reply", reply)?;
    }
    Ok(())
}

/// The reconciler of Parallels.
pub struct ParallelReconciler;

impl Reconcile for ParallelReconciler {
    type Resource = Parallel;
    const AFTER: &'static [&'static str] = &["ConfigMap", "Subscription"];
    const BEFORE: &'static [&'static str] = &["Trigger"];

    async fn reconcile(
        parallel: Parallel,
        object: &Value,
        ctx: &Arc<Context>,
    ) -> Result<Action, ReconcileError> {
        let kind = Context::kind("Parallel");
        let (namespace, name) = object_key(object);
        let mut status = ParallelStatus {
            observed_generation: generation(object),
            ..ParallelStatus::default()
        };
        let flow = match Flow::of(object, parallel.spec.channel_template.as_ref(), ctx).await {
            Ok(flow) => flow,
            Err(reason) => {
                status.conditions = PARALLEL_CONDITIONS.summarize(vec![Condition::new(
                    "IngressChannelReady",
                    false,
                    "ChannelTemplateInvalid",
                    reason,
                )]);
                ctx.write_status(kind, &namespace, &name, json!(status))
                    .await?;
                return Ok(Action::AwaitChange);
            }
        };
        let channel_ref = |channel: Option<&Value>, name: &str| {
            reference_to(
                channel,
                &flow.template.api_version,
                &flow.template.kind,
                &namespace,
                name,
            )
        };
        let subscription_ref = |subscription: Option<&Value>, name: &str| {
            reference_to(
                subscription,
                "messaging.knative.dev/v1",
                "Subscription",
                &namespace,
                name,
            )
        };
        let ingress = ingress_name(&name);
        let ingress_channel = flow.channel(ctx, &ingress).await?;
        let ingress_ready = ready_of(ingress_channel.as_ref());
        let mut keep = vec![ingress.clone()];
        let mut channel_readies = Vec::new();
        let mut subscription_readies = Vec::new();
        for (index, branch) in parallel.spec.branches.iter().enumerate() {
            let branch_channel_name = branch_name(&name, index);
            let filter_subscription_name = filter_name(&name, index);
            let branch_channel = flow.channel(ctx, &branch_channel_name).await?;
            let to_branch = Destination {
                reference: Some(flow.channel_ref(&branch_channel_name)),
                ..Destination::default()
            };
            let filter_subscription = flow
                .subscription(
                    ctx,
                    &filter_subscription_name,
                    &ingress,
                    branch.filter.clone(),
                    Some(to_branch),
                    None,
                )
                .await?;
            let subscriber_subscription = flow
                .subscription(
                    ctx,
                    &branch_channel_name,
                    &branch_channel_name,
                    Some(branch.subscriber.clone()),
                    branch.reply.clone().or_else(|| parallel.spec.reply.clone()),
                    branch.delivery.clone(),
                )
                .await?;
            let readies = (
                ready_of(filter_subscription.as_ref()),
                ready_of(branch_channel.as_ref()),
                ready_of(subscriber_subscription.as_ref()),
            );
            channel_readies.push((branch_channel_name.clone(), readies.1.clone()));
            subscription_readies.push((filter_subscription_name.clone(), readies.0.clone()));
            subscription_readies.push((branch_channel_name.clone(), readies.2.clone()));
            status.branch_statuses.push(BranchStatus {
                filter_subscription_status: SubscriptionStatusRef {
                    subscription: subscription_ref(
                        filter_subscription.as_ref(),
                        &filter_subscription_name,
                    ),
                    ready: readies.0,
                },
                filter_channel_status: ChannelStatusRef {
                    channel: channel_ref(branch_channel.as_ref(), &branch_channel_name),
                    ready: readies.1,
                },
                subscriber_subscription_status: SubscriptionStatusRef {
                    subscription: subscription_ref(
                        subscriber_subscription.as_ref(),
                        &branch_channel_name,
                    ),
                    ready: readies.2,
                },
            });
            keep.push(branch_channel_name);
            keep.push(filter_subscription_name);
        }
        flow.remove_others(ctx, &keep).await?;

        status.ingress_channel_status = Some(ChannelStatusRef {
            channel: channel_ref(ingress_channel.as_ref(), &ingress),
            ready: ingress_ready.clone(),
        });
        status.address = address_of(ingress_channel.as_ref());
        let ingress_condition = if ingress_ready.is_true() {
            Condition::new("IngressChannelReady", true, "", "")
        } else {
            all_ready(
                "IngressChannelReady",
                "Channel",
                &[(ingress.clone(), ingress_ready)],
            )
        };
        let parts = vec![
            ingress_condition,
            all_ready("ChannelsReady", "Channel", &channel_readies),
            all_ready("SubscriptionsReady", "Subscription", &subscription_readies),
            Condition::new(
                "Addressable",
                status.address.is_some(),
                if status.address.is_some() {
                    ""
                } else {
                    "NoAddress"
                },
                "",
            ),
        ];
        let ready = parts.iter().all(Condition::is_true);
        if !ready {
            status.address = None;
        }
        status.conditions = PARALLEL_CONDITIONS.summarize(parts);
        ctx.write_status(kind, &namespace, &name, json!(status))
            .await?;
        Ok(next_action(ready))
    }

    /// The channels and Subscriptions go with the Parallel (on Kubernetes its owner
    /// references do that too).
    async fn cleanup(object: &Value, ctx: &Arc<Context>) -> Result<(), ReconcileError> {
        remove_owned(ctx, object, |_| false).await
    }
}

rivulet_control::register_kind! {
    kind: "Parallel",
    resource: Parallel,
    group: "flows.knative.dev",
    version: "v1",
    plural: "parallels",
    validate: validate_parallel,
    reconciler: ParallelReconciler,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parallel_needs_branches_with_subscribers() {
        let parallel = |spec: Value| json!({"apiVersion": "flows.knative.dev/v1", "kind": "Parallel", "metadata": {"name": "p", "namespace": "default"}, "spec": spec});
        assert!(validate_parallel(&parallel(json!({"branches": [{"subscriber": {"uri": "http://a/"}}, {"filter": {"uri": "http://f/"}, "subscriber": {"uri": "http://b/"}}]})), None).is_ok());
        assert_eq!(
            validate_parallel(&parallel(json!({"branches": []})), None)
                .unwrap_err()
                .field,
            "spec.branches"
        );
        assert!(
            validate_parallel(
                &parallel(json!({"branches": [{"filter": {"uri": "http://f/"}}]})),
                None
            )
            .is_err(),
            "a branch needs a subscriber"
        );
        let bad_filter = validate_parallel(
            &parallel(json!({"branches": [{"subscriber": {"uri": "http://a/"}, "filter": {}}]})),
            None,
        )
        .unwrap_err();
        assert_eq!(bad_filter.field, "spec.branches[0].filter");
        assert_eq!(
            (ingress_name("p"), branch_name("p", 1), filter_name("p", 1)),
            (
                "p-kn-parallel".to_string(),
                "p-kn-parallel-1".to_string(),
                "p-kn-parallel-filter-1".to_string()
            )
        );
    }
}
