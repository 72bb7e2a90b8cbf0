//! Knative's feature flags: the `config-features` ConfigMap (namespace `knative-eventing`)
//! and `--feature NAME=VALUE` on the command line, which wins over the ConfigMap.
//!
//! Only the flags Rivulet acts on are typed; every other name is kept as written so that a
//! Knative `config-features` applies unchanged.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;

/// Namespace and name of the ConfigMap that holds the flags, as in Knative.
pub const CONFIG_NAMESPACE: &str = "knative-eventing";
pub const CONFIG_NAME: &str = "config-features";

/// `default-authorization-mode`: what happens to a request that no EventPolicy covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AuthorizationMode {
    /// Every authenticated sender may send (Knative's default).
    #[default]
    AllowAll,
    /// Senders from the target's own namespace only.
    AllowSameNamespace,
    /// Nobody, unless an EventPolicy admits them.
    DenyAll,
}

/// `transport-encryption`: whether event traffic uses TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TransportEncryption {
    /// Plain HTTP only (Knative's default).
    #[default]
    Disabled,
    /// HTTPS offered and advertised beside plain HTTP.
    Permissive,
    /// HTTPS only: plain HTTP is refused.
    Strict,
}

/// The flags in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Features {
    /// `authentication-oidc`: senders must present a JWT for the target's audience, and
    /// Rivulet's own senders attach one.
    pub authentication_oidc: bool,
    pub default_authorization_mode: AuthorizationMode,
    pub transport_encryption: TransportEncryption,
    /// Every flag as written, typed or not.
    pub all: BTreeMap<String, String>,
}

/// A flag name or value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("feature flag {name}: {message}")]
pub struct FeatureError {
    pub name: String,
    pub message: String,
}

impl Features {
    /// Applies one `NAME=VALUE` pair; the typed flags check their value.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), FeatureError> {
        let error = |message: String| FeatureError {
            name: name.to_string(),
            message,
        };
        let value = value.trim();
        match name {
            "authentication-oidc" => {
                self.authentication_oidc = enabled_or_disabled(value).map_err(error)?;
            }
            "default-authorization-mode" => {
                self.default_authorization_mode = match value {
                    "allow-all" => AuthorizationMode::AllowAll,
                    "allow-same-namespace" => AuthorizationMode::AllowSameNamespace,
                    "deny-all" => AuthorizationMode::DenyAll,
                    other => {
                        return Err(error(format!(
                            "'{other}' is not one of allow-all, allow-same-namespace, deny-all"
                        )));
                    }
                };
            }
            "transport-encryption" => {
                self.transport_encryption = match value {
                    "disabled" => TransportEncryption::Disabled,
                    "permissive" => TransportEncryption::Permissive,
                    "strict" => TransportEncryption::Strict,
                    other => {
                        return Err(error(format!(
                            "'{other}' is not one of disabled, permissive, strict"
                        )));
                    }
                };
            }
            "" => return Err(error("the name is empty".to_string())),
            _ => {}
        }
        self.all.insert(name.to_string(), value.to_string());
        Ok(())
    }

    /// Parses `NAME=VALUE` as given to `--feature`.
    pub fn set_pair(&mut self, pair: &str) -> Result<(), FeatureError> {
        let (name, value) = pair.split_once('=').ok_or_else(|| FeatureError {
            name: pair.to_string(),
            message: "expected NAME=VALUE".to_string(),
        })?;
        self.set(name.trim(), value)
    }

    /// The flags of a `config-features` ConfigMap's `data`, then `overrides` on top.
    pub fn from_config_map(
        data: Option<&Value>,
        overrides: &Features,
    ) -> (Features, Vec<FeatureError>) {
        let mut features = Features::default();
        let mut errors = Vec::new();
        if let Some(Value::Object(data)) = data {
            for (name, value) in data {
                if let Some(value) = value.as_str()
                    && let Err(e) = features.set(name, value)
                {
                    errors.push(e);
                }
            }
        }
        for (name, value) in &overrides.all {
            // Overrides were checked when they were parsed.
            let _ = features.set(name, value);
        }
        (features, errors)
    }
}

fn enabled_or_disabled(value: &str) -> Result<bool, String> {
    match value {
        "enabled" => Ok(true),
        "disabled" => Ok(false),
        other => Err(format!("'{other}' is not one of enabled, disabled")),
    }
}

/// The flags in force, shared by every part that reads them; replaced when the ConfigMap
/// changes. The command line's flags stay on top of whatever the ConfigMap says.
#[derive(Debug, Clone, Default)]
pub struct FeatureFlags {
    current: Arc<RwLock<Arc<Features>>>,
    overrides: Arc<Features>,
}

impl FeatureFlags {
    /// The flags of the command line, in force until a ConfigMap adds to them.
    pub fn new(overrides: Features) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(overrides.clone()))),
            overrides: Arc::new(overrides),
        }
    }

    /// Puts the `data` of a `config-features` ConfigMap in force (`None`: it was deleted);
    /// whether anything changed, and the flags that could not be used.
    pub fn apply_config_map(&self, data: Option<&Value>) -> (bool, Vec<FeatureError>) {
        let (features, errors) = Features::from_config_map(data, &self.overrides);
        (self.replace(features), errors)
    }

    /// The flags now.
    pub fn current(&self) -> Arc<Features> {
        self.current.read().expect("lock poisoned").clone()
    }

    /// Puts `features` in force; whether anything changed.
    pub fn replace(&self, features: Features) -> bool {
        let mut slot = self.current.write().expect("lock poisoned");
        if **slot == features {
            return false;
        }
        *slot = Arc::new(features);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn typed_flags_parse_and_reject_unknown_values() {
        let mut f = Features::default();
        f.set_pair("authentication-oidc=enabled").unwrap();
        f.set_pair("default-authorization-mode=deny-all").unwrap();
        f.set_pair("transport-encryption=strict").unwrap();
        f.set_pair("new-trigger-filters=enabled").unwrap();
        assert!(f.authentication_oidc);
        assert_eq!(f.default_authorization_mode, AuthorizationMode::DenyAll);
        assert_eq!(f.transport_encryption, TransportEncryption::Strict);
        assert_eq!(f.all["new-trigger-filters"], "enabled");
        let e = f.set_pair("transport-encryption=maybe").unwrap_err();
        assert!(
            e.to_string().contains("disabled, permissive, strict"),
            "{e}"
        );
        assert!(f.set_pair("no-equals-sign").is_err());
    }

    #[test]
    fn command_line_wins_over_the_config_map() {
        let mut overrides = Features::default();
        overrides.set_pair("authentication-oidc=disabled").unwrap();
        let data = json!({"authentication-oidc": "enabled", "transport-encryption": "permissive", "bad": "x", "default-authorization-mode": "nobody"});
        let (f, errors) = Features::from_config_map(Some(&data), &overrides);
        assert!(!f.authentication_oidc);
        assert_eq!(f.transport_encryption, TransportEncryption::Permissive);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].name, "default-authorization-mode");
    }

    #[test]
    fn a_config_map_adds_to_the_command_line_and_its_removal_takes_back_only_its_part() {
        let mut overrides = Features::default();
        overrides
            .set_pair("transport-encryption=permissive")
            .unwrap();
        let flags = FeatureFlags::new(overrides);
        let data = json!({"authentication-oidc": "enabled", "transport-encryption": "disabled"});
        let (changed, errors) = flags.apply_config_map(Some(&data));
        assert!(changed && errors.is_empty());
        let now = flags.current();
        assert!(now.authentication_oidc);
        assert_eq!(now.transport_encryption, TransportEncryption::Permissive);
        let (changed, _) = flags.apply_config_map(None);
        assert!(changed);
        assert!(!flags.current().authentication_oidc);
        assert_eq!(
            flags.current().transport_encryption,
            TransportEncryption::Permissive
        );
    }

    #[test]
    fn replace_reports_a_change_once() {
        let flags = FeatureFlags::default();
        let mut f = Features::default();
        f.set_pair("authentication-oidc=enabled").unwrap();
        assert!(flags.replace(f.clone()));
        assert!(!flags.replace(f));
        assert!(flags.current().authentication_oidc);
    }
}
