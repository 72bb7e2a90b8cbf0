//! CustomResourceDefinitions for every custom kind Rivulet serves, generated from the Rust
//! types (`rivulet crds`, and the files under `deploy/`).
//!
//! Each kind registers a [`CrdVersion`] next to its type. A kind served in several versions
//! registers one per version; they are merged into one CRD whose storage version is the one
//! whose derive keeps `storage = true` (the others say `#[kube(storage = false)]`).

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::crd::{MergeError, merge_crds};

/// One served version of a custom kind: `<Type as kube::CustomResourceExt>::crd`.
pub struct CrdVersion {
    pub crd: fn() -> CustomResourceDefinition,
}

inventory::collect!(CrdVersion);

/// Why the registered versions do not make a set of CRDs.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("{crd}: {count} versions are marked as the storage version; exactly one must be")]
    StorageVersion { crd: String, count: usize },
    #[error("{crd}: {source}")]
    Merge {
        crd: String,
        #[source]
        source: MergeError,
    },
    #[error("cannot write YAML: {0}")]
    Yaml(String),
}

/// Every CRD, one per kind, sorted by name.
pub fn crds() -> Result<Vec<CustomResourceDefinition>, CrdError> {
    let generated = inventory::iter::<CrdVersion>().map(|version| (version.crd)());
    merge_versions(generated)
}

/// Groups single-version CRDs by name and merges each group into one CRD.
pub fn merge_versions(
    generated: impl IntoIterator<Item = CustomResourceDefinition>,
) -> Result<Vec<CustomResourceDefinition>, CrdError> {
    let mut by_name: BTreeMap<String, Vec<CustomResourceDefinition>> = BTreeMap::new();
    for crd in generated {
        let name = crd.metadata.name.clone().unwrap_or_default();
        by_name.entry(name).or_default().push(crd);
    }
    by_name
        .into_iter()
        .map(|(name, versions)| merge_one(name, versions))
        .collect()
}

fn merge_one(
    name: String,
    mut versions: Vec<CustomResourceDefinition>,
) -> Result<CustomResourceDefinition, CrdError> {
    let storage: Vec<String> = versions
        .iter()
        .flat_map(|crd| crd.spec.versions.iter())
        .filter(|version| version.storage)
        .map(|version| version.name.clone())
        .collect();
    let [stored] = storage.as_slice() else {
        return Err(CrdError::StorageVersion {
            crd: name,
            count: storage.len(),
        });
    };
    // Registration order depends on linking; sort so the output is stable.
    versions.sort_by(|a, b| version_names(a).cmp(&version_names(b)));
    let mut merged =
        merge_crds(versions, stored).map_err(|source| CrdError::Merge { crd: name, source })?;
    // The storage version first, then the others by name.
    merged.spec.versions[1..].sort_by(|a, b| a.name.cmp(&b.name));
    Ok(merged)
}

fn version_names(crd: &CustomResourceDefinition) -> Vec<&str> {
    crd.spec.versions.iter().map(|v| v.name.as_str()).collect()
}

/// The CRDs as one multi-document YAML stream, as `rivulet crds` prints it.
pub fn crds_yaml() -> Result<String, CrdError> {
    let mut out = String::from(
        "# CustomResourceDefinitions generated from Rivulet's resource types.\n\
         # Do not edit: regenerate with `rivulet crds --to FILE`.\n",
    );
    for crd in crds()? {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd).map_err(|e| CrdError::Yaml(e.to_string()))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    fn with_version(name: &str, storage: bool) -> CustomResourceDefinition {
        let mut crd = crate::resources::Broker::crd();
        crd.spec.versions[0].name = name.into();
        crd.spec.versions[0].storage = storage;
        crd
    }

    #[test]
    fn versions_of_one_kind_merge_with_the_storage_version_first() {
        let merged = merge_versions([
            with_version("v1beta3", false),
            with_version("v1", true),
            with_version("v1beta2", false),
        ])
        .unwrap();
        assert_eq!(merged.len(), 1);
        let versions: Vec<_> = merged[0]
            .spec
            .versions
            .iter()
            .map(|v| (v.name.as_str(), v.storage))
            .collect();
        assert_eq!(
            versions,
            [("v1", true), ("v1beta2", false), ("v1beta3", false)]
        );
    }

    #[test]
    fn a_kind_needs_exactly_one_storage_version() {
        let none = merge_versions([with_version("v1", false), with_version("v2", false)]);
        assert!(matches!(
            none,
            Err(CrdError::StorageVersion { count: 0, .. })
        ));
        let two = merge_versions([with_version("v1", true), with_version("v2", true)]);
        assert!(matches!(
            two,
            Err(CrdError::StorageVersion { count: 2, .. })
        ));
    }

    #[test]
    fn every_registered_kind_except_core_ones_has_a_crd() {
        let names: Vec<String> = crds()
            .unwrap()
            .into_iter()
            .map(|crd| crd.metadata.name.unwrap())
            .collect();
        for kind in crate::resources::kinds() {
            if kind.group.is_empty() {
                continue;
            }
            let name = format!("{}.{}", kind.plural, kind.group);
            assert!(names.contains(&name), "no CRD registered for {name}");
        }
    }
}
