//! `Sequence` (`flows.knative.dev/v1`): steps called in order, each step's reply going to
//! the next, the last one's to `spec.reply`. Built as Knative builds it: a channel per step
//! (`NAME-kn-sequence-I`, from the channel template) and a Subscription per step from that
//! channel to the step with its reply to the next step's channel.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::channel::ChannelTemplate;
use crate::flow::{
    ChannelStatusRef, Flow, Step, SubscriptionStatusRef, address_of, all_ready, next_action,
    ready_of, reference_to, remove_owned,
};
use rivulet_control::runtime::{Action, Context, Reconcile, ReconcileError, generation};
use rivulet_core::knative_kind;
use rivulet_core::resources::validation::{
    ValidationError, typed, validate_delivery, validate_destination, validate_metadata,
};
use rivulet_core::resources::{
    Addressable, Condition, ConditionSet, Destination, apply, skip_serializing_none,
};
use rivulet_store::object_key;

/// Knative's `Sequence`.
#[apply(knative_kind!)]
#[kube(
    group = "flows.knative.dev",
    version = "v1",
    kind = "Sequence",
    status = "SequenceStatus",
    category = "flows",
    label("duck.knative.dev/addressable", "true"),
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.address.url"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SequenceSpec {
    /// What is called, in order; each gets the previous one's reply.
    pub steps: Vec<Step>,
    /// The kind of the channels between steps; by default `default-ch-webhook`'s.
    pub channel_template: Option<ChannelTemplate>,
    /// Where the last step's reply goes; without it, it is dropped.
    pub reply: Option<Destination>,
}

#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct SequenceStatus {
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub subscription_statuses: Vec<SubscriptionStatusRef>,
    #[serde(default)]
    pub channel_statuses: Vec<ChannelStatusRef>,
    pub address: Option<Addressable>,
}

/// What a Sequence's `Ready` depends on (Knative's condition types).
pub const SEQUENCE_CONDITIONS: ConditionSet =
    ConditionSet::new(&["ChannelsReady", "SubscriptionsReady", "Addressable"]);

/// The name of the channel and the Subscription of step `index`.
pub fn step_name(sequence: &str, index: usize) -> String {
    format!("{sequence}-kn-sequence-{index}")
}

fn validate_sequence(new: &Value, _old: Option<&Value>) -> Result<(), ValidationError> {
    validate_metadata(new)?;
    let sequence: Sequence = typed(new)?;
    if sequence.spec.steps.is_empty() {
        return Err(ValidationError::new(
            "spec.steps",
            "needs at least one step",
        ));
    }
    for (i, step) in sequence.spec.steps.iter().enumerate() {
        validate_destination(&format!("spec.steps[{i}]"), &step.destination())?;
        if let Some(delivery) = &step.delivery {
            validate_delivery(&format!("spec.steps[{i}].delivery"), delivery)?;
        }
    }
    if let Some(template) = &sequence.spec.channel_template {
        template
            .check()
            .map_err(|message| ValidationError::new("spec.channelTemplate", message))?;
    }
    if let Some(reply) = &sequence.spec.reply {
        validate_destination("spec.reply", reply)?;
    }
    Ok(())
}

/// The reconciler of Sequences.
pub struct SequenceReconciler;

impl Reconcile for SequenceReconciler {
    type Resource = Sequence;
    const AFTER: &'static [&'static str] = &["ConfigMap", "Subscription"];
    const BEFORE: &'static [&'static str] = &["Trigger"];

    async fn reconcile(
        sequence: Sequence,
        object: &Value,
        ctx: &Arc<Context>,
    ) -> Result<Action, ReconcileError> {
        let kind = Context::kind("Sequence");
        let (namespace, name) = object_key(object);
        let mut status = SequenceStatus {
            observed_generation: generation(object),
            ..SequenceStatus::default()
        };
        let flow = match Flow::of(object, sequence.spec.channel_template.as_ref(), ctx).await {
            Ok(flow) => flow,
            Err(reason) => {
                status.conditions = SEQUENCE_CONDITIONS.summarize(vec![Condition::new(
                    "ChannelsReady",
                    false,
                    "ChannelTemplateInvalid",
                    reason,
                )]);
                ctx.write_status(kind, &namespace, &name, json!(status))
                    .await?;
                return Ok(Action::AwaitChange);
            }
        };
        let steps = &sequence.spec.steps;
        let mut channels = Vec::new();
        let mut subscriptions = Vec::new();
        for (index, step) in steps.iter().enumerate() {
            let step_name = step_name(&name, index);
            let channel = flow.channel(ctx, &step_name).await?;
            let reply = match steps.get(index + 1) {
                Some(_) => Some(Destination {
                    reference: Some(flow.channel_ref(&self::step_name(&name, index + 1))),
                    ..Destination::default()
                }),
                None => sequence.spec.reply.clone(),
            };
            let subscription = flow
                .subscription(
                    ctx,
                    &step_name,
                    &step_name,
                    Some(step.destination()),
                    reply,
                    step.delivery.clone(),
                )
                .await?;
            channels.push((step_name.clone(), channel));
            subscriptions.push((step_name, subscription));
        }
        let keep: Vec<String> = (0..steps.len()).map(|i| step_name(&name, i)).collect();
        flow.remove_others(ctx, &keep).await?;

        let channel_readies: Vec<(String, Condition)> = channels
            .iter()
            .map(|(n, c)| (n.clone(), ready_of(c.as_ref())))
            .collect();
        let subscription_readies: Vec<(String, Condition)> = subscriptions
            .iter()
            .map(|(n, s)| (n.clone(), ready_of(s.as_ref())))
            .collect();
        status.channel_statuses = channels
            .iter()
            .zip(&channel_readies)
            .map(|((n, c), (_, ready))| ChannelStatusRef {
                channel: reference_to(
                    c.as_ref(),
                    &flow.template.api_version,
                    &flow.template.kind,
                    &namespace,
                    n,
                ),
                ready: ready.clone(),
            })
            .collect();
        status.subscription_statuses = subscriptions
            .iter()
            .zip(&subscription_readies)
            .map(|((n, s), (_, ready))| SubscriptionStatusRef {
                subscription: reference_to(
                    s.as_ref(),
                    "messaging.knative.dev/v1",
                    "Subscription",
                    &namespace,
                    n,
                ),
                ready: ready.clone(),
            })
            .collect();
        status.address = address_of(channels.first().and_then(|(_, c)| c.as_ref()));
        let addressable = Condition::new(
            "Addressable",
            status.address.is_some(),
            if status.address.is_some() {
                ""
            } else {
                "NoAddress"
            },
            if status.address.is_some() {
                ""
            } else {
                "the first step's channel has no address yet"
            },
        );
        let parts = vec![
            all_ready("ChannelsReady", "Channel", &channel_readies),
            all_ready("SubscriptionsReady", "Subscription", &subscription_readies),
            addressable,
        ];
        let ready = parts.iter().all(Condition::is_true);
        if !ready {
            status.address = None;
        }
        status.conditions = SEQUENCE_CONDITIONS.summarize(parts);
        ctx.write_status(kind, &namespace, &name, json!(status))
            .await?;
        Ok(next_action(ready))
    }

    /// The channels and Subscriptions go with the Sequence (on Kubernetes its owner
    /// references do that too).
    async fn cleanup(object: &Value, ctx: &Arc<Context>) -> Result<(), ReconcileError> {
        remove_owned(ctx, object, |_| false).await
    }
}

rivulet_control::register_kind! {
    kind: "Sequence",
    resource: Sequence,
    group: "flows.knative.dev",
    version: "v1",
    plural: "sequences",
    validate: validate_sequence,
    reconciler: SequenceReconciler,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequence_needs_steps_with_destinations() {
        let sequence = |spec: Value| json!({"apiVersion": "flows.knative.dev/v1", "kind": "Sequence", "metadata": {"name": "s", "namespace": "default"}, "spec": spec});
        assert!(validate_sequence(&sequence(json!({"steps": [{"uri": "http://a/"}, {"ref": {"apiVersion": "v1", "kind": "Service", "name": "b"}}]})), None).is_ok());
        let none = validate_sequence(&sequence(json!({"steps": []})), None).unwrap_err();
        assert_eq!(none.field, "spec.steps");
        let empty_step = validate_sequence(&sequence(json!({"steps": [{}]})), None).unwrap_err();
        assert_eq!(empty_step.field, "spec.steps[0]");
        let unknown = validate_sequence(
            &sequence(json!({"steps": [{"uri": "http://a/", "colour": "red"}]})),
            None,
        );
        assert!(unknown.is_err(), "unknown fields are refused");
        let bad_template = validate_sequence(&sequence(json!({"steps": [{"uri": "http://a/"}], "channelTemplate": {"apiVersion": "example.com/v1", "kind": "PubSub"}})), None).unwrap_err();
        assert_eq!(bad_template.field, "spec.channelTemplate");
        assert_eq!(step_name("flow", 2), "flow-kn-sequence-2");
    }
}
