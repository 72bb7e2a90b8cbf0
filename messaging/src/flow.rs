//! What Sequence and Parallel share: the Channels and Subscriptions they own, made from a
//! channel template, kept as they should be, read back for their status, and removed with
//! them.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::channel::{CHANNEL_KINDS, ChannelTemplate, default_template, owned_by};
use rivulet_control::runtime::{Action, Context, ReconcileError};
use rivulet_core::resources::{
    Addressable, Condition, DeliverySpec, Destination, KReference, find_kind_by_name,
    skip_serializing_none,
};
use rivulet_store::{StoreError, object_key};

/// A reference to an object a flow made (Kubernetes' `ObjectReference`, as Knative writes
/// it in flow statuses).
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
}

/// A channel a flow made, and its readiness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelStatusRef {
    pub channel: ObjectReference,
    pub ready: Condition,
}

/// A Subscription a flow made, and its readiness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionStatusRef {
    pub subscription: ObjectReference,
    pub ready: Condition,
}

/// A destination with a delivery of its own (a Sequence's step), written out rather than
/// flattened so that unknown fields are still refused.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Step {
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<KReference>,
    pub uri: Option<String>,
    #[serde(default, rename = "CACerts", skip_serializing_if = "Option::is_none")]
    pub ca_certs: Option<String>,
    pub audience: Option<String>,
    /// Retries, backoff and dead-letter sink of this step's Subscription.
    pub delivery: Option<DeliverySpec>,
}

impl Step {
    pub fn destination(&self) -> Destination {
        Destination {
            reference: self.reference.clone(),
            uri: self.uri.clone(),
            ca_certs: self.ca_certs.clone(),
            audience: self.audience.clone(),
        }
    }
}

/// What a flow builds from: its owner object, namespace and channel template.
pub struct Flow<'a> {
    pub owner: &'a Value,
    pub namespace: String,
    pub template: ChannelTemplate,
}

impl<'a> Flow<'a> {
    /// The flow of `owner`, with its `spec.channelTemplate` or the default one.
    pub async fn of(
        owner: &'a Value,
        template: Option<&ChannelTemplate>,
        ctx: &Context,
    ) -> Result<Flow<'a>, String> {
        let (namespace, _) = object_key(owner);
        let template = match template {
            Some(template) => template.clone(),
            None => default_template(ctx, &namespace).await?,
        };
        template.check()?;
        Ok(Flow {
            owner,
            namespace,
            template,
        })
    }

    /// A reference to the flow's channel `name`, as a Subscription's channel or reply names it.
    pub fn channel_ref(&self, name: &str) -> KReference {
        KReference {
            api_version: Some(self.template.api_version.clone()),
            kind: self.template.kind.clone(),
            name: name.to_string(),
            namespace: None,
            group: None,
        }
    }

    /// Makes (or keeps) the channel `name`; returns what is stored now.
    pub async fn channel(
        &self,
        ctx: &Context,
        name: &str,
    ) -> Result<Option<Value>, ReconcileError> {
        let wanted = self
            .template
            .channel(&self.namespace, name, self.owner, None);
        let kind = find_kind_by_name(Some(&self.template.api_version), &self.template.kind)
            .expect("the template was checked");
        ensure(ctx, kind, wanted).await
    }

    /// Makes (or keeps) the Subscription `name`.
    pub async fn subscription(
        &self,
        ctx: &Context,
        name: &str,
        channel: &str,
        subscriber: Option<Destination>,
        reply: Option<Destination>,
        delivery: Option<DeliverySpec>,
    ) -> Result<Option<Value>, ReconcileError> {
        let mut spec = json!({"channel": self.channel_ref(channel)});
        if let Some(subscriber) = subscriber {
            spec["subscriber"] = json!(subscriber);
        }
        if let Some(reply) = reply {
            spec["reply"] = json!(reply);
        }
        if let Some(delivery) = delivery {
            spec["delivery"] = json!(delivery);
        }
        let wanted = json!({
            "apiVersion": "messaging.knative.dev/v1",
            "kind": "Subscription",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "ownerReferences": [crate::channel::owner_reference(self.owner)],
            },
            "spec": spec,
        });
        ensure(ctx, Context::kind("Subscription"), wanted).await
    }

    /// Removes what the flow owns that is not in `keep` (steps or branches taken out).
    pub async fn remove_others(
        &self,
        ctx: &Context,
        keep: &[String],
    ) -> Result<(), ReconcileError> {
        remove_owned(ctx, self.owner, |name| keep.iter().any(|k| k == name)).await
    }
}

/// Writes `wanted` unless what is stored has the same spec (and owner); returns what is
/// stored now. The data plane only reads.
async fn ensure(
    ctx: &Context,
    kind: &'static rivulet_core::resources::KindInfo,
    wanted: Value,
) -> Result<Option<Value>, ReconcileError> {
    let (namespace, name) = object_key(&wanted);
    let current = ctx.store.get(kind, &namespace, &name).await?;
    if !ctx.role().writes_status() {
        return Ok(current);
    }
    if let Some(current) = &current {
        let same = current["spec"] == wanted["spec"]
            && current["metadata"]["ownerReferences"] == wanted["metadata"]["ownerReferences"];
        if same {
            return Ok(Some(current.clone()));
        }
    }
    let (stored, _) = ctx.store.apply(kind, wanted).await?;
    Ok(Some(stored))
}

/// Deletes the Channels and Subscriptions `owner` owns whose names `keep` does not keep.
pub async fn remove_owned(
    ctx: &Context,
    owner: &Value,
    keep: impl Fn(&str) -> bool,
) -> Result<(), ReconcileError> {
    if !ctx.role().writes_status() {
        return Ok(());
    }
    let (namespace, _) = object_key(owner);
    let uid = owner["metadata"]["uid"].as_str();
    // Subscriptions first: their consumers stop before the channels' storage goes (a Kafka
    // topic deleted under its consumers can upset the client and the server).
    for kind_name in ["Subscription"].iter().chain(CHANNEL_KINDS) {
        let kind = Context::kind(kind_name);
        for object in ctx.store.list(kind, Some(&namespace)).await? {
            let (_, name) = object_key(&object);
            if owned_by(&object, uid) && !keep(&name) {
                match ctx.store.delete(kind, &namespace, &name).await {
                    Ok(_) | Err(StoreError::NotFound { .. }) => {}
                    Err(error) => return Err(error.into()),
                }
            }
        }
    }
    Ok(())
}

/// The `Ready` condition of a stored object, or Unknown when it has none yet.
pub fn ready_of(object: Option<&Value>) -> Condition {
    object
        .and_then(|o| o.pointer("/status/conditions"))
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_else(|| Condition::unknown("Ready", "NotReconciled", "no status yet"))
}

/// The reference a flow's status gives to a stored object.
pub fn reference_to(
    object: Option<&Value>,
    api_version: &str,
    kind: &str,
    namespace: &str,
    name: &str,
) -> ObjectReference {
    ObjectReference {
        api_version: Some(
            object
                .and_then(|o| o["apiVersion"].as_str())
                .unwrap_or(api_version)
                .to_string(),
        ),
        kind: Some(kind.to_string()),
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
    }
}

/// A channel's address, from its status.
pub fn address_of(channel: Option<&Value>) -> Option<Addressable> {
    channel
        .and_then(|c| c.pointer("/status/address"))
        .and_then(|a| serde_json::from_value(a.clone()).ok())
}

/// A condition of the flow summing up `readies`: True when every one is, with the first
/// that is not named otherwise.
pub fn all_ready(type_: &str, what: &str, readies: &[(String, Condition)]) -> Condition {
    match readies.iter().find(|(_, ready)| !ready.is_true()) {
        None => Condition::new(type_, true, "", ""),
        Some((name, ready)) => Condition::new(
            type_,
            false,
            &format!("{what}NotReady"),
            format!(
                "{name}: {}",
                ready
                    .message
                    .clone()
                    .filter(|m| !m.is_empty())
                    .or_else(|| ready.reason.clone())
                    .unwrap_or_else(|| "not ready".into())
            ),
        ),
    }
}

/// What a flow asks for next: nothing more once ready (its parts requeue it when they change),
/// else a look again in a while.
pub fn next_action(ready: bool) -> Action {
    if ready {
        Action::AwaitChange
    } else {
        Action::Requeue(Duration::from_secs(2))
    }
}
