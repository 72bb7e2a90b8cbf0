//! The generic `Channel` (`messaging.knative.dev/v1`): a backing channel of the kind its
//! `spec.channelTemplate` names (by default that of Knative's `default-ch-webhook`
//! ConfigMap, else Rivulet's `EmbeddedChannel`), with the same name, owned by it; its status
//! mirrors the backing channel's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{CHANNEL_KINDS, ChannelStatus};
use rivulet_control::runtime::{Action, Context, Reconcile, ReconcileError, generation};
use rivulet_core::knative_kind;
use rivulet_core::resources::validation::{
    ValidationError, typed, validate_delivery, validate_metadata,
};
use rivulet_core::resources::{
    Condition, ConditionSet, DeliverySpec, KReference, apply, find_kind_by_name,
    skip_serializing_none,
};
use rivulet_store::object_key;

/// Knative's installation-wide default channel: `default-ch-config` in this ConfigMap.
pub const DEFAULT_CHANNEL_CONFIG: (&str, &str) = ("knative-eventing", "default-ch-webhook");

/// What a Channel (and a Sequence or Parallel) makes its channels from.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChannelTemplate {
    pub api_version: String,
    pub kind: String,
    /// The spec of the channels made (a KafkaChannel's `numPartitions`, ...).
    #[schemars(schema_with = "rivulet_core::resources::free_form_object")]
    pub spec: Option<Value>,
}

impl ChannelTemplate {
    /// Whether Rivulet serves the kind, with a message naming those it does otherwise.
    pub fn check(&self) -> Result<(), String> {
        match find_kind_by_name(Some(&self.api_version), &self.kind) {
            Some(kind) if CHANNEL_KINDS.contains(&kind.kind) => Ok(()),
            _ => Err(format!(
                "channel template {} {} is not a channel kind Rivulet serves; use one of {}",
                self.api_version,
                self.kind,
                CHANNEL_KINDS.join(", ")
            )),
        }
    }

    /// The channel `name` in `namespace` made from this template, owned by `owner` (an
    /// object's apiVersion, kind, name and uid), with `delivery` when given.
    pub fn channel(
        &self,
        namespace: &str,
        name: &str,
        owner: &Value,
        delivery: Option<&DeliverySpec>,
    ) -> Value {
        let mut spec = self.spec.clone().unwrap_or_else(|| json!({}));
        if let (Some(delivery), Some(map)) = (delivery, spec.as_object_mut()) {
            map.insert("delivery".into(), json!(delivery));
        }
        json!({
            "apiVersion": self.api_version,
            "kind": self.kind,
            "metadata": {
                "name": name,
                "namespace": namespace,
                "ownerReferences": [owner_reference(owner)],
            },
            "spec": spec,
        })
    }
}

/// A controller owner reference to `owner`, so Kubernetes deletes what it owns with it.
pub fn owner_reference(owner: &Value) -> Value {
    json!({
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// Knative's generic `Channel`.
#[apply(knative_kind!)]
#[kube(
    group = "messaging.knative.dev",
    version = "v1",
    kind = "Channel",
    status = "ChannelStatus",
    category = "messaging",
    category = "channel",
    label("duck.knative.dev/addressable", "true"),
    label("messaging.knative.dev/subscribable", "true"),
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.address.url"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChannelSpec {
    /// The kind of the backing channel; by default `default-ch-webhook`'s.
    pub channel_template: Option<ChannelTemplate>,
    /// The default delivery of the channel's subscriptions, passed to the backing channel.
    pub delivery: Option<DeliverySpec>,
    /// Accepted as Knative's subscription controller writes it; not used.
    #[schemars(schema_with = "rivulet_core::resources::free_form_list")]
    pub subscribers: Option<Vec<Value>>,
}

/// What a generic Channel's `Ready` depends on.
const GENERIC_CHANNEL_CONDITIONS: ConditionSet =
    ConditionSet::new(&["BackingChannelReady", "Addressable"]);

fn validate_generic_channel(new: &Value, old: Option<&Value>) -> Result<(), ValidationError> {
    validate_metadata(new)?;
    // Another kind behind the channel would lose what the old one holds: Knative has the
    // Channel deleted and created again instead.
    if let Some(old) = old
        && old.pointer("/spec/channelTemplate").is_some()
        && old.pointer("/spec/channelTemplate") != new.pointer("/spec/channelTemplate")
    {
        return Err(ValidationError::new(
            "spec.channelTemplate",
            "is immutable; delete the Channel and create it again to change it",
        ));
    }
    let channel: Channel = typed(new)?;
    if let Some(template) = &channel.spec.channel_template {
        template
            .check()
            .map_err(|message| ValidationError::new("spec.channelTemplate", message))?;
    }
    if let Some(delivery) = &channel.spec.delivery {
        validate_delivery("spec.delivery", delivery)?;
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DefaultChannelConfig {
    cluster_default: Option<ChannelTemplate>,
    #[serde(default)]
    namespace_defaults: BTreeMap<String, ChannelTemplate>,
}

/// The channel template for `namespace` when none is given: `default-ch-webhook`'s
/// namespace default, else its cluster default, else an `EmbeddedChannel` (durable, where
/// Knative's own default, the InMemoryChannel, is not).
pub async fn default_template(ctx: &Context, namespace: &str) -> Result<ChannelTemplate, String> {
    let builtin = ChannelTemplate {
        api_version: "messaging.rivulet.dev/v1alpha1".into(),
        kind: "EmbeddedChannel".into(),
        spec: None,
    };
    let (config_namespace, config_name) = DEFAULT_CHANNEL_CONFIG;
    let found = ctx
        .store
        .get(Context::kind("ConfigMap"), config_namespace, config_name)
        .await
        .map_err(|e| e.to_string())?;
    let Some(text) = found
        .as_ref()
        .and_then(|c| c.pointer("/data/default-ch-config"))
        .and_then(Value::as_str)
    else {
        return Ok(builtin);
    };
    let config: DefaultChannelConfig = serde_saphyr::from_str(text).map_err(|e| {
        format!("ConfigMap {config_namespace}/{config_name}: default-ch-config is not valid: {e}")
    })?;
    let template = config
        .namespace_defaults
        .get(namespace)
        .cloned()
        .or(config.cluster_default)
        .unwrap_or(builtin);
    template.check()?;
    Ok(template)
}

/// The reconciler of generic Channels.
pub struct GenericChannelReconciler;

impl Reconcile for GenericChannelReconciler {
    type Resource = Channel;
    const AFTER: &'static [&'static str] = &["ConfigMap"];
    const BEFORE: &'static [&'static str] = &["Trigger"];

    async fn reconcile(
        channel: Channel,
        object: &Value,
        ctx: &Arc<Context>,
    ) -> Result<Action, ReconcileError> {
        let kind = Context::kind("Channel");
        let (namespace, name) = object_key(object);
        let template = match &channel.spec.channel_template {
            Some(template) => Ok(template.clone()),
            None => default_template(ctx, &namespace).await,
        };
        let mut status = ChannelStatus {
            observed_generation: generation(object),
            ..ChannelStatus::default()
        };
        let mut parts = Vec::new();
        let mut action = Action::AwaitChange;
        match template.and_then(|t| t.check().map(|()| t)) {
            Err(reason) => parts.push(Condition::new(
                "BackingChannelReady",
                false,
                "ChannelTemplateInvalid",
                reason,
            )),
            Ok(template) => {
                let backing_kind = find_kind_by_name(Some(&template.api_version), &template.kind)
                    .expect("checked above");
                let wanted =
                    template.channel(&namespace, &name, object, channel.spec.delivery.as_ref());
                let current = ctx.store.get(backing_kind, &namespace, &name).await?;
                let stale = current
                    .as_ref()
                    .is_none_or(|current| current["spec"] != wanted["spec"]);
                if stale && ctx.role().writes_status() {
                    ctx.store.apply(backing_kind, wanted).await?;
                }
                status.channel = Some(KReference {
                    api_version: Some(template.api_version.clone()),
                    kind: template.kind.clone(),
                    name: name.clone(),
                    namespace: Some(namespace.clone()),
                    group: None,
                });
                let backing: Option<ChannelStatus> = current
                    .as_ref()
                    .and_then(|c| c.get("status"))
                    .and_then(|s| serde_json::from_value(s.clone()).ok());
                let backing_ready = backing
                    .as_ref()
                    .and_then(|b| b.conditions.iter().find(|c| c.type_ == "Ready").cloned());
                match backing_ready {
                    Some(ready) if ready.is_true() => {
                        parts.push(Condition::new("BackingChannelReady", true, "", ""));
                    }
                    Some(ready) => parts.push(Condition::new(
                        "BackingChannelReady",
                        false,
                        ready.reason.as_deref().unwrap_or("BackingChannelNotReady"),
                        ready.message.clone().unwrap_or_default(),
                    )),
                    None => {
                        parts.push(Condition::unknown(
                            "BackingChannelReady",
                            "BackingChannelNotReconciled",
                            format!("{} {namespace}/{name} has no status yet", template.kind),
                        ));
                        action = Action::Requeue(Duration::from_secs(1));
                    }
                }
                if let Some(backing) = backing {
                    parts.push(Condition::new(
                        "Addressable",
                        backing.address.is_some(),
                        if backing.address.is_some() {
                            ""
                        } else {
                            "NoAddress"
                        },
                        "",
                    ));
                    status.address = backing.address;
                    status.addresses = backing.addresses;
                    status.dead_letter_sink_uri = backing.dead_letter_sink_uri;
                    status.subscribers = backing.subscribers;
                }
            }
        }
        status.conditions = GENERIC_CHANNEL_CONDITIONS.summarize(parts);
        let status = json!(status);
        let changed = crate::status_changed(object, &status);
        ctx.write_status(kind, &namespace, &name, status).await?;
        if changed {
            crate::requeue_owners(ctx, object);
        }
        Ok(action)
    }

    /// The backing channel goes with the Channel (on Kubernetes its owner reference does
    /// that too).
    async fn cleanup(object: &Value, ctx: &Arc<Context>) -> Result<(), ReconcileError> {
        delete_owned_channel(object, ctx).await
    }
}

/// Deletes the channel of `object`'s name that `object` owns, if there is one.
async fn delete_owned_channel(object: &Value, ctx: &Arc<Context>) -> Result<(), ReconcileError> {
    if !ctx.role().writes_status() {
        return Ok(());
    }
    let (namespace, name) = object_key(object);
    let uid = object["metadata"]["uid"].as_str();
    for kind_name in CHANNEL_KINDS {
        let kind = Context::kind(kind_name);
        if let Some(backing) = ctx.store.get(kind, &namespace, &name).await?
            && owned_by(&backing, uid)
        {
            match ctx.store.delete(kind, &namespace, &name).await {
                Ok(_) | Err(rivulet_store::StoreError::NotFound { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
    }
    Ok(())
}

/// Whether `object` names the owner with `uid` in its owner references.
pub fn owned_by(object: &Value, uid: Option<&str>) -> bool {
    let Some(uid) = uid else {
        return false;
    };
    object["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|owners| owners.iter().any(|o| o["uid"] == uid))
}

rivulet_control::register_kind! {
    kind: "Channel",
    resource: Channel,
    group: "messaging.knative.dev",
    version: "v1",
    plural: "channels",
    validate: validate_generic_channel,
    reconciler: GenericChannelReconciler,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_makes_an_owned_channel_with_the_delivery_passed_on() {
        let template = ChannelTemplate {
            api_version: "messaging.knative.dev/v1beta1".into(),
            kind: "KafkaChannel".into(),
            spec: Some(json!({"numPartitions": 3})),
        };
        let owner = json!({
            "apiVersion": "flows.knative.dev/v1", "kind": "Sequence",
            "metadata": {"name": "flow", "uid": "u-1"}
        });
        let delivery = DeliverySpec {
            retry: Some(2),
            ..DeliverySpec::default()
        };
        let channel = template.channel("default", "flow-kn-sequence-0", &owner, Some(&delivery));
        assert_eq!(channel["kind"], "KafkaChannel");
        assert_eq!(channel["spec"]["numPartitions"], 3);
        assert_eq!(channel["spec"]["delivery"]["retry"], 2);
        assert_eq!(
            channel["metadata"]["ownerReferences"][0]["kind"],
            "Sequence"
        );
        assert!(owned_by(&channel, Some("u-1")));
        assert!(!owned_by(&channel, Some("u-2")));
    }
}
