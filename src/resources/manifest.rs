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

impl std::fmt::Debug for KindInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.api_version(), self.kind)
    }
}

/// Parses every YAML document in `text`. Empty documents are skipped; an unknown kind or a
/// document that is not an object is an error naming the document.
pub fn parse_manifests(text: &str, origin: &str) -> Result<Vec<Manifest>, String> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| format!("{origin}: not valid YAML: {e}"))?;
    let mut out = Vec::new();
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
        if doc.get("kind").and_then(Value::as_str) == Some("List") {
            let items = doc
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for item in items {
                out.push(to_manifest(item, &where_)?);
            }
            continue;
        }
        out.push(to_manifest(doc, &where_)?);
    }
    Ok(out)
}

fn to_manifest(object: Value, origin: &str) -> Result<Manifest, String> {
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{origin}: missing apiVersion"))?;
    let kind_name = object
        .get("kind")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{origin}: missing kind"))?;
    if let Some(kind) = find_kind_by_name(Some(api_version), kind_name) {
        return Ok(Manifest {
            kind,
            object,
            origin: origin.to_string(),
        });
    }
    // An older version: stored (and applied) as the current one.
    let served = find_served_version_by_kind(api_version, kind_name)
        .ok_or_else(|| format!("{origin}: Rivulet does not serve {api_version} {kind_name}"))?;
    let kind = served
        .stored_kind()
        .ok_or_else(|| format!("{origin}: Rivulet does not serve {api_version} {kind_name}"))?;
    let object = (served.upgrade)(object).map_err(|e| format!("{origin}: {e}"))?;
    Ok(Manifest {
        kind,
        object,
        origin: origin.to_string(),
    })
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
