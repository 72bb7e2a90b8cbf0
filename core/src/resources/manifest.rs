//! Reading Knative-style YAML manifests (one or many documents per file).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::kinds::{KindInfo, find_kind_by_name, find_served_version_by_kind};

/// One object from a manifest, with the kind it belongs to.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub kind: &'static KindInfo,
    pub object: Value,
    /// Where it came from, for error messages.
    pub origin: String,
}

impl Manifest {
    /// `metadata.namespace`, `default` when not set (as `kubectl apply` takes it).
    pub fn namespace(&self) -> &str {
        self.object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
    }

    /// `metadata.name`, which every object needs.
    pub fn name(&self) -> Option<&str> {
        self.object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
    }
}

impl std::fmt::Debug for KindInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.api_version(), self.kind)
    }
}

/// Parses every YAML document in `text`. Empty documents are skipped; an unknown kind or a
/// document that is not an object is an error naming the document.
pub fn parse_manifests(text: &str, origin: &str) -> Result<Vec<Manifest>, String> {
    let parsed = parse_manifests_skipping(text, origin)?;
    match parsed.skipped.into_iter().next() {
        Some(skipped) => Err(skipped.to_string()),
        None => Ok(parsed.manifests),
    }
}

/// What a file held: the objects of kinds Rivulet serves, and those it skipped.
#[derive(Debug, Default)]
pub struct ParsedManifests {
    pub manifests: Vec<Manifest>,
    pub skipped: Vec<Skipped>,
}

/// An object of a kind Rivulet does not serve, and why it cannot.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub origin: String,
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub reason: &'static str,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: Rivulet does not serve {} {}",
            self.origin, self.api_version, self.kind
        )?;
        if !self.name.is_empty() {
            write!(f, " ({})", self.name)?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Why an object of a kind Rivulet does not serve cannot work here, as said to whoever
/// applies a Knative sample that holds one.
fn skip_reason(api_version: &str, kind: &str) -> &'static str {
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    match (group, kind) {
        ("", "Namespace") => {
            "namespaces need no object in standalone mode (any namespace can be used); skipped"
        }
        ("", "ServiceAccount") => {
            "standalone Rivulet has its own tokens instead of Kubernetes service accounts; skipped"
        }
        ("", "Service" | "Pod") | ("apps", _) | ("batch", _) | ("serving.knative.dev", _) => {
            "it runs a workload (a pod), which standalone Rivulet does not; skipped (run the \
             program yourself and point a uri at it, or use Kubernetes mode)"
        }
        ("rbac.authorization.k8s.io", _) => {
            "standalone Rivulet has its own tokens instead of Kubernetes RBAC; skipped"
        }
        _ => "not a kind Rivulet serves; skipped",
    }
}

/// Parses every YAML document in `text`, setting aside objects of kinds Rivulet does not serve
/// (Knative samples often hold a Namespace, a Deployment or a Service beside their eventing
/// objects). A document that is not an object, or has no apiVersion or kind, is an error.
pub fn parse_manifests_skipping(text: &str, origin: &str) -> Result<ParsedManifests, String> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| format!("{origin}: not valid YAML: {e}"))?;
    let mut out = ParsedManifests::default();
    for (index, doc) in docs.into_iter().enumerate() {
        let where_ = format!("{origin} (document {})", index + 1);
        match &doc {
            Value::Null => continue,
            Value::Object(map) if map.is_empty() => continue,
            Value::Object(_) => {}
            _ => {
                return Err(format!(
                    "{where_}: expected a mapping with apiVersion and kind"
                ));
            }
        }
        let items = if doc.get("kind").and_then(Value::as_str) == Some("List") {
            doc.get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        } else {
            vec![doc]
        };
        for item in items {
            match to_manifest(item, &where_)? {
                Ok(manifest) => out.manifests.push(manifest),
                Err(skipped) => out.skipped.push(skipped),
            }
        }
    }
    Ok(out)
}

fn to_manifest(object: Value, origin: &str) -> Result<Result<Manifest, Skipped>, String> {
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{origin}: missing apiVersion"))?;
    let kind_name = object
        .get("kind")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{origin}: missing kind"))?;
    if let Some(kind) = find_kind_by_name(Some(api_version), kind_name) {
        return Ok(Ok(Manifest {
            kind,
            object,
            origin: origin.to_string(),
        }));
    }
    // An older version: stored (and applied) as the current one.
    let Some(kind) = find_served_version_by_kind(api_version, kind_name)
        .and_then(|served| served.stored_kind().map(|kind| (served, kind)))
    else {
        return Ok(Err(Skipped {
            origin: origin.to_string(),
            api_version: api_version.to_string(),
            kind: kind_name.to_string(),
            name: object
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            reason: skip_reason(api_version, kind_name),
        }));
    };
    let (served, kind) = kind;
    let object = (served.upgrade)(object).map_err(|e| format!("{origin}: {e}"))?;
    Ok(Ok(Manifest {
        kind,
        object,
        origin: origin.to_string(),
    }))
}

/// The manifest files named by `path`: the file itself, or the `.yaml`/`.yml`/`.json` files of
/// a folder in name order.
pub fn manifest_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
            })
            .collect();
        files.sort();
        Ok(files)
    } else {
        Ok(vec![path.to_path_buf()])
    }
}
