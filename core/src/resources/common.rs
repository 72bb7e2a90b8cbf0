//! Types shared by several kinds (Knative's `duck` types).

use super::skip_serializing_none;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A reference to another object (Knative `KReference`).
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KReference {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub api_version: Option<String>,
    pub group: Option<String>,
}

/// Where events go: an object reference, a URI, or a URI relative to the object's address.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<KReference>,
    pub uri: Option<String>,
    /// PEM CA certificates to trust for this destination (accepted, used for https).
    #[serde(default, rename = "CACerts", skip_serializing_if = "Option::is_none")]
    pub ca_certs: Option<String>,
    /// OIDC audience of the destination: Rivulet's senders present a token for it.
    pub audience: Option<String>,
}

/// Knative's backoff policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackoffPolicy {
    Linear,
    #[default]
    Exponential,
}

/// Content mode for deliveries to a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryFormat {
    Json,
    Binary,
}

/// How events are delivered: retries, backoff, timeout and the dead-letter sink.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliverySpec {
    pub dead_letter_sink: Option<Destination>,
    /// Retries after the first attempt.
    pub retry: Option<i32>,
    pub backoff_policy: Option<BackoffPolicy>,
    /// ISO-8601 duration, the base delay of the backoff.
    pub backoff_delay: Option<String>,
    /// ISO-8601 duration, the longest wait between retries that `backoffDelay` and
    /// `backoffPolicy` make (Knative's `backoffMax`); `Retry-After` answers are bounded by
    /// `retryAfterMax` instead.
    pub backoff_max: Option<String>,
    /// ISO-8601 duration, per request.
    pub timeout: Option<String>,
    /// ISO-8601 duration, the longest `Retry-After` honoured.
    pub retry_after_max: Option<String>,
    pub format: Option<DeliveryFormat>,
}

impl DeliverySpec {
    /// Whether any field is set: a trigger's delivery replaces the broker's only then.
    pub fn is_set(&self) -> bool {
        self != &DeliverySpec::default()
    }
}

/// A status condition as Knative writes it.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub severity: Option<String>,
    pub last_transition_time: Option<String>,
}

impl Condition {
    pub fn new(type_: &str, ok: bool, reason: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Condition {
            type_: type_.to_string(),
            status: if ok { "True" } else { "False" }.to_string(),
            reason: (!reason.is_empty()).then(|| reason.to_string()),
            message: (!message.is_empty()).then_some(message),
            severity: None,
            last_transition_time: Some(now_rfc3339()),
        }
    }

    /// A condition whose outcome is not known yet (a dependency still settling).
    pub fn unknown(type_: &str, reason: &str, message: impl Into<String>) -> Self {
        Condition {
            status: "Unknown".into(),
            ..Condition::new(type_, false, reason, message)
        }
    }

    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// An address a status publishes.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Addressable {
    pub name: Option<String>,
    pub url: String,
    /// PEM CA certificates that sign the certificate served at an https `url`.
    #[serde(default, rename = "CACerts", skip_serializing_if = "Option::is_none")]
    pub ca_certs: Option<String>,
    /// The OIDC audience of tokens for this address (when `authentication-oidc` is on).
    pub audience: Option<String>,
}

/// The current time in RFC 3339, seconds precision, UTC.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// CRD schema of a list of any JSON objects (`#[schemars(schema_with = "free_form_list")]`).
pub fn free_form_list(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let item = free_form_object(generator);
    schemars::json_schema!({
        "type": "array",
        "nullable": true,
        "items": item,
    })
}

/// CRD schema of a field kept as any JSON object: Kubernetes needs every schema node typed,
/// and a free-form one marked as such (`#[schemars(schema_with = "free_form_object")]`).
pub fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true,
    })
}
