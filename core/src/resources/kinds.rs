//! The kinds Rivulet serves, registered by the module that defines each one.

use serde_json::Value;

use super::validation::ValidationError;

/// How the resource API and the store know a kind.
pub struct KindInfo {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    /// Checks a new object (and, on update, the transition from the stored one).
    pub validate: fn(new: &Value, old: Option<&Value>) -> Result<(), ValidationError>,
}

impl KindInfo {
    /// `group/version`, or just `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The resource API path of the collection across every namespace.
    pub fn all_namespaces_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}/{}", self.version, self.plural)
        } else {
            format!("/apis/{}/{}/{}", self.group, self.version, self.plural)
        }
    }

    /// The resource API path of the collection in `namespace`.
    pub fn collection_path(&self, namespace: &str) -> String {
        if self.group.is_empty() {
            format!(
                "/api/{}/namespaces/{namespace}/{}",
                self.version, self.plural
            )
        } else {
            format!(
                "/apis/{}/{}/namespaces/{namespace}/{}",
                self.group, self.version, self.plural
            )
        }
    }
}

inventory::collect!(KindInfo);

/// An older API version of a kind, served by converting to and from the stored version: its
/// manifests are upgraded before they are stored, and reads at its path are downgraded.
pub struct ServedVersion {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    /// The version objects are stored in.
    pub stored_version: &'static str,
    /// Converts an object of this version into the stored version.
    pub upgrade: fn(Value) -> Result<Value, ValidationError>,
    /// Converts a stored object into this version.
    pub downgrade: fn(Value) -> Value,
}

impl ServedVersion {
    /// The kind objects of this version are stored as.
    pub fn stored_kind(&self) -> Option<&'static KindInfo> {
        find_kind(self.group, self.stored_version, self.plural)
    }

    pub fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }
}

inventory::collect!(ServedVersion);

/// The converted version served at `group/version/plural`.
pub fn find_served_version(
    group: &str,
    version: &str,
    plural: &str,
) -> Option<&'static ServedVersion> {
    inventory::iter::<ServedVersion>()
        .find(|v| v.group == group && v.version == version && v.plural == plural)
}

/// The converted version with this `apiVersion` and `kind`.
pub fn find_served_version_by_kind(
    api_version: &str,
    kind: &str,
) -> Option<&'static ServedVersion> {
    inventory::iter::<ServedVersion>().find(|v| v.kind == kind && v.api_version() == api_version)
}

/// Every kind served, in a stable order.
pub fn kinds() -> Vec<&'static KindInfo> {
    let mut all: Vec<_> = inventory::iter::<KindInfo>().collect();
    all.sort_by_key(|k| (k.group, k.kind, k.version));
    all
}

/// The kind served at `group/version/plural`.
pub fn find_kind(group: &str, version: &str, plural: &str) -> Option<&'static KindInfo> {
    inventory::iter::<KindInfo>()
        .find(|k| k.group == group && k.version == version && k.plural == plural)
}

/// A kind by `apiVersion` and `kind`, or by a short name the CLI accepts (kind, plural,
/// lower-case kind).
pub fn find_kind_by_name(api_version: Option<&str>, name: &str) -> Option<&'static KindInfo> {
    let lower = name.to_ascii_lowercase();
    inventory::iter::<KindInfo>().find(|k| {
        let name_matches =
            k.kind == name || k.plural == lower || k.kind.to_ascii_lowercase() == lower;
        name_matches && api_version.is_none_or(|v| v == k.api_version())
    })
}

// Broker and backend configuration, served in standalone mode too.
inventory::submit! {
    KindInfo {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
        validate: super::validation::validate_plain_object,
    }
}
inventory::submit! {
    KindInfo {
        group: "",
        version: "v1",
        kind: "Secret",
        plural: "secrets",
        validate: super::validation::validate_plain_object,
    }
}
