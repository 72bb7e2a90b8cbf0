//! EventPolicy reconciler: keeps the policies in force for ingress, writes their status
//! (`AuthenticationEnabled`, `SubjectsResolved`, `from`) and re-reconciles the brokers of
//! their namespace, whose `status.policies` and `EventPoliciesReady` follow.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Action, Context, Reconcile, ReconcileError, Reconciler, generation};
use rivulet_broker::auth::policy::CompiledPolicy;
use rivulet_broker::auth::{TargetRef, mode_name};
use rivulet_core::resources::Condition;
use rivulet_core::resources::eventpolicy::{AppliedEventPolicyRef, EventPolicy, EventPolicyStatus};
use rivulet_store::object_key;

/// The apiVersion policies are listed with in `status.policies`.
const POLICY_API_VERSION: &str = "eventing.knative.dev/v1alpha1";

/// The policies ingress enforces, kept in step with the EventPolicy objects.
pub struct EventPolicyReconciler;

impl Reconcile for EventPolicyReconciler {
    type Resource = EventPolicy;

    async fn reconcile(
        policy: EventPolicy,
        object: &Value,
        ctx: &Arc<Context>,
    ) -> Result<Action, ReconcileError> {
        let (namespace, name) = object_key(object);
        let compiled = CompiledPolicy::new(policy);
        let oidc = ctx.settings.features.current().authentication_oidc;
        let mut parts = vec![if oidc {
            Condition::new("AuthenticationEnabled", true, "", "")
        } else {
            Condition::new(
                "AuthenticationEnabled",
                false,
                "OIDCAuthenticationDisabled",
                "feature \"authentication-oidc\" must be enabled for EventPolicies to apply",
            )
        }];
        parts.push(match &compiled.error {
            None => Condition::new("SubjectsResolved", true, "", ""),
            Some(error) => {
                Condition::new("SubjectsResolved", false, "InvalidFilters", error.clone())
            }
        });
        let status = EventPolicyStatus {
            observed_generation: generation(object),
            conditions: rivulet_core::resources::eventpolicy::EVENT_POLICY_CONDITIONS
                .summarize(parts),
            from: compiled.subjects.clone(),
        };
        if let Some(auth) = ctx.ingress.auth() {
            auth.policies.insert(compiled);
        }
        ctx.write_status(
            Context::kind("EventPolicy"),
            &namespace,
            &name,
            json!(status),
        )
        .await?;
        reconcile_brokers_in(&namespace, ctx).await;
        Ok(Action::AwaitChange)
    }

    async fn cleanup(object: &Value, ctx: &Arc<Context>) -> Result<(), ReconcileError> {
        let (namespace, name) = object_key(object);
        if let Some(auth) = ctx.ingress.auth() {
            auth.policies.remove(&namespace, &name);
        }
        reconcile_brokers_in(&namespace, ctx).await;
        Ok(())
    }
}

inventory::submit! { Reconciler::of::<EventPolicyReconciler>("EventPolicy") }

/// The brokers of `namespace` report the policies that apply to them again.
async fn reconcile_brokers_in(namespace: &str, ctx: &Arc<Context>) {
    let kind = Context::kind("Broker");
    let Ok(brokers) = ctx.store.list(kind, Some(namespace)).await else {
        return;
    };
    for broker in brokers {
        Box::pin(ctx.reconcile_applied(kind, &broker)).await;
    }
}

/// `status.policies` and the `EventPoliciesReady` condition of a guarded object, as Knative
/// sets them.
pub(crate) fn policies_status(
    ctx: &Context,
    target: &TargetRef,
) -> (Vec<AppliedEventPolicyRef>, Condition) {
    let features = ctx.settings.features.current();
    let applying = ctx
        .ingress
        .auth()
        .map(|auth| auth.policies.applying(target))
        .unwrap_or_default();
    if applying.is_empty() {
        let condition = if features.authentication_oidc {
            Condition::new(
                "EventPoliciesReady",
                true,
                "DefaultAuthorizationMode",
                format!(
                    "Default authz mode is {:?}",
                    mode_name(features.default_authorization_mode)
                ),
            )
        } else {
            Condition::new(
                "EventPoliciesReady",
                true,
                "OIDCDisabled",
                "Feature \"authentication-oidc\" must be enabled to support Authorization",
            )
        };
        return (Vec::new(), condition);
    }
    let (ready, unready): (Vec<_>, Vec<_>) = applying
        .iter()
        .partition(|p| features.authentication_oidc && p.error.is_none());
    let policies = ready
        .iter()
        .map(|p| AppliedEventPolicyRef {
            api_version: POLICY_API_VERSION.into(),
            name: p.name.clone(),
        })
        .collect();
    let condition = if unready.is_empty() {
        Condition::new("EventPoliciesReady", true, "", "")
    } else {
        let names: Vec<&str> = unready.iter().map(|p| p.name.as_str()).collect();
        Condition::new(
            "EventPoliciesReady",
            false,
            "EventPoliciesNotReady",
            format!("event policies {} are not ready", names.join(", ")),
        )
    };
    (policies, condition)
}
