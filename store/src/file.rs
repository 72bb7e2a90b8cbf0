//! Resources kept in memory and mirrored to one JSON file per object.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::sync::{Mutex, broadcast};

use rivulet_channels::StorageFault;

use super::{Applied, ResourceStore, StoreError, StoreEvent, normalise, object_key};
use rivulet_core::resources::{KindInfo, kinds, now_rfc3339};

type Key = (&'static str, &'static str, String, String); // group, plural, namespace, name

/// The standalone store: `{root}/{group}/{plural}/{namespace}/{name}.json`.
pub struct FileStore {
    root: PathBuf,
    objects: Mutex<State>,
    changes: broadcast::Sender<StoreEvent>,
    /// Set while writes fail (disk full); cleared by the next write or probe that works.
    fault: std::sync::Mutex<Option<StorageFault>>,
}

struct State {
    objects: BTreeMap<Key, Stored>,
    resource_version: u64,
}

/// An object as compact JSON text. A parsed `Value` takes ten to twenty times the memory of
/// its text (a map per object level); with thousands of triggers that was most of the
/// process. Parsing on read costs far less than a reconcile does with the object.
struct Stored(Box<str>);

impl Stored {
    fn new(object: &Value) -> Self {
        Stored(
            serde_json::to_string(object)
                .expect("JSON values serialise")
                .into_boxed_str(),
        )
    }

    fn value(&self) -> Value {
        serde_json::from_str(&self.0).expect("stored objects are JSON written by Stored::new")
    }
}

/// The broker defaults of the stored `config-br-defaults` ConfigMap, if there is one; an
/// unreadable one counts as none (with a warning), as a missing one does.
fn broker_defaults(state: &State) -> rivulet_core::resources::defaults::BrokerDefaults {
    use rivulet_core::resources::defaults::{
        BROKER_DEFAULTS_NAME, BROKER_DEFAULTS_NAMESPACE, BrokerDefaults,
    };
    let config_maps = rivulet_core::resources::find_kind_by_name(None, "ConfigMap")
        .expect("ConfigMap is registered");
    let Some(stored) = state.objects.get(&key(
        config_maps,
        BROKER_DEFAULTS_NAMESPACE,
        BROKER_DEFAULTS_NAME,
    )) else {
        return BrokerDefaults::default();
    };
    BrokerDefaults::from_config_map(&stored.value()).unwrap_or_else(|error| {
        tracing::warn!(%error, "broker defaults ignored");
        BrokerDefaults::default()
    })
}

fn key(kind: &'static KindInfo, namespace: &str, name: &str) -> Key {
    (
        kind.group,
        kind.plural,
        namespace.to_string(),
        name.to_string(),
    )
}

/// The file of an object. Names may have 253 characters, more than a file name may hold
/// with its extensions (255 bytes), so long ones are cut and made unique by a digest; the
/// object is read back from the file's content, never from its name.
fn file_name(name: &str) -> String {
    const KEPT: usize = 200;
    // Names that fit keep their plain file (with room for the ".json.tmp" of a write), as
    // earlier versions wrote it.
    if name.len() + ".json.tmp".len() <= 255 {
        return format!("{name}.json");
    }
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(name.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let mut end = KEPT;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}-{hex}.json", &name[..end])
}

fn group_dir(kind: &KindInfo) -> &str {
    if kind.group.is_empty() {
        "core"
    } else {
        kind.group
    }
}

impl FileStore {
    /// Opens the store under `root`, loading what an earlier run left there. Every folder
    /// is kept 0700 and every file 0600 (Secrets are among them); looser modes an earlier
    /// version left are narrowed here. A file that cannot be read back is refused, naming it
    /// (`rivulet store repair` moves it aside); a half-written `.json.tmp` a crash left is
    /// removed, the object keeps its previous file.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        super::create_private_dir(root)?;
        super::tighten_tree(root)?;
        let mut objects = BTreeMap::new();
        let mut resource_version = 0u64;
        for kind in kinds() {
            let kind_dir = root.join(group_dir(kind)).join(kind.plural);
            let Ok(namespaces) = std::fs::read_dir(&kind_dir) else {
                continue;
            };
            for ns_entry in namespaces.flatten() {
                for file in std::fs::read_dir(ns_entry.path())?.flatten() {
                    let path = file.path();
                    if path.to_str().is_some_and(|p| p.ends_with(".json.tmp")) {
                        tracing::warn!(path = %path.display(), "removing a resource file a crash left half-written");
                        std::fs::remove_file(&path)?;
                        continue;
                    }
                    if path.extension().and_then(|e| e.to_str()) != Some("json") {
                        continue;
                    }
                    let object: Value = std::fs::read(&path)
                        .map_err(|e| e.to_string())
                        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                        .map_err(|e| {
                            std::io::Error::new(
                                std::io::ErrorKind::InvalidData,
                                format!(
                                    "resource file {} is damaged ({e}); `rivulet store repair` \
                                     moves it aside",
                                    path.display()
                                ),
                            )
                        })?;
                    if let Some(rv) = object
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .and_then(|s| s.parse::<u64>().ok())
                    {
                        resource_version = resource_version.max(rv);
                    }
                    let (ns, name) = object_key(&object);
                    objects.insert(key(kind, &ns, &name), Stored::new(&object));
                }
            }
        }
        let (changes, _) = broadcast::channel(4096);
        Ok(Self {
            root: root.to_path_buf(),
            objects: Mutex::new(State {
                objects,
                resource_version,
            }),
            changes,
            fault: std::sync::Mutex::new(None),
        })
    }

    fn set_fault(&self, fault: Option<StorageFault>) {
        *self
            .fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fault;
    }

    fn path(&self, kind: &KindInfo, namespace: &str, name: &str) -> PathBuf {
        self.root
            .join(group_dir(kind))
            .join(kind.plural)
            .join(namespace)
            .join(file_name(name))
    }

    /// Writes atomically: a crash leaves either the old or the new file.
    async fn persist(&self, path: PathBuf, object: &Value) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(object).expect("JSON values serialise");
        let shown = path.display().to_string();
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let dir = path.parent().expect("object paths have a parent");
            super::create_private_dir(dir)?;
            let tmp = path.with_extension("json.tmp");
            // A failed write (disk full) leaves no half-written file behind.
            let written =
                super::write_private(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &path));
            if written.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            written?;
            std::fs::File::open(dir)?.sync_all()
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        match written {
            Ok(()) => {
                self.set_fault(None);
                Ok(())
            }
            Err(error) => {
                let full = rivulet_channels::embedded::io_error_means_full(&error);
                let what = if full {
                    "storage full"
                } else {
                    "storage failed"
                };
                self.set_fault(Some(StorageFault {
                    full,
                    message: format!("{what}: cannot write the resource file {shown}: {error}"),
                }));
                Err(error.into())
            }
        }
    }
}

#[async_trait]
impl ResourceStore for FileStore {
    async fn get(
        &self,
        kind: &'static KindInfo,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, StoreError> {
        let state = self.objects.lock().await;
        Ok(state
            .objects
            .get(&key(kind, namespace, name))
            .map(Stored::value))
    }

    async fn list(
        &self,
        kind: &'static KindInfo,
        namespace: Option<&str>,
    ) -> Result<Vec<Value>, StoreError> {
        let state = self.objects.lock().await;
        // Objects are ordered by kind, then namespace: read only the range asked for, so that
        // listing a small kind beside thousands of triggers stays cheap.
        let from = key(kind, namespace.unwrap_or_default(), "");
        Ok(state
            .objects
            .range(from..)
            .take_while(|((g, p, ns, _), _)| {
                *g == kind.group && *p == kind.plural && namespace.is_none_or(|n| n == ns)
            })
            .map(|(_, v)| v.value())
            .collect())
    }

    async fn list_local_keys(
        &self,
        kind: &'static KindInfo,
    ) -> Result<Option<Vec<(String, String)>>, StoreError> {
        let state = self.objects.lock().await;
        Ok(Some(
            state
                .objects
                .range(key(kind, "", "")..)
                .take_while(|((g, p, _, _), _)| *g == kind.group && *p == kind.plural)
                .map(|((_, _, namespace, name), _)| (namespace.clone(), name.clone()))
                .collect(),
        ))
    }

    async fn apply(
        &self,
        kind: &'static KindInfo,
        object: Value,
    ) -> Result<(Value, Applied), StoreError> {
        let mut object = normalise(kind, object)?;
        let (namespace, name) = object_key(&object);
        let mut state = self.objects.lock().await;
        let old = state
            .objects
            .get(&key(kind, &namespace, &name))
            .map(Stored::value);
        rivulet_core::resources::defaults::set_defaults(kind, &mut object, old.as_ref(), || {
            broker_defaults(&state)
        });
        (kind.validate)(&object, old.as_ref())?;
        // Only put_status sets a status, as the status subresource makes it in Kubernetes: one
        // carried by the applied object (copied from a listing, say) is not the store's.
        object
            .as_object_mut()
            .expect("normalised objects are mappings")
            .remove("status");

        let meta = object["metadata"].as_object_mut().expect("checked above");
        let outcome = match &old {
            None => {
                meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
                meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
                meta.insert("generation".into(), json!(1));
                Applied::Created
            }
            Some(old) => {
                for field in ["uid", "creationTimestamp"] {
                    if let Some(v) = old.pointer(&format!("/metadata/{field}")) {
                        meta.insert(field.into(), v.clone());
                    }
                }
                let old_generation = old
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                let content_changed = old.get("spec") != object.get("spec")
                    || old.get("data") != object.get("data")
                    || old.get("stringData") != object.get("stringData");
                // Every field an apply gives counts, as in Kubernetes: owners too (an owner
                // recreated has a new uid), and top-level fields beside the spec.
                let meta_changed =
                    ["labels", "annotations", "ownerReferences"]
                        .iter()
                        .any(|field| {
                            let field = format!("/metadata/{field}");
                            old.pointer(&field) != object.pointer(&field)
                        });
                let other_changed = [&object, old]
                    .into_iter()
                    .filter_map(Value::as_object)
                    .flat_map(|map| map.keys())
                    .filter(|key| !["metadata", "status"].contains(&key.as_str()))
                    .any(|key| old.get(key) != object.get(key));
                let meta = object["metadata"].as_object_mut().expect("checked above");
                meta.insert(
                    "generation".into(),
                    json!(old_generation + i64::from(content_changed)),
                );
                if let Some(status) = old.get("status") {
                    object
                        .as_object_mut()
                        .expect("checked above")
                        .insert("status".into(), status.clone());
                }
                if content_changed || meta_changed || other_changed {
                    Applied::Updated
                } else {
                    Applied::Unchanged
                }
            }
        };
        if outcome == Applied::Unchanged {
            return Ok((old.expect("unchanged implies old"), outcome));
        }
        state.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
        self.persist(self.path(kind, &namespace, &name), &object)
            .await?;
        state
            .objects
            .insert(key(kind, &namespace, &name), Stored::new(&object));
        drop(state);
        let _ = self.changes.send(StoreEvent::Applied {
            kind,
            object: Arc::new(object.clone()),
        });
        Ok((object, outcome))
    }

    async fn put_status(
        &self,
        kind: &'static KindInfo,
        namespace: &str,
        name: &str,
        status: Value,
    ) -> Result<(), StoreError> {
        let mut state = self.objects.lock().await;
        let Some(mut object) = state
            .objects
            .get(&key(kind, namespace, name))
            .map(Stored::value)
        else {
            return Err(StoreError::NotFound {
                kind: kind.kind,
                namespace: namespace.to_string(),
                name: name.to_string(),
            });
        };
        if object.get("status") == Some(&status) {
            return Ok(());
        }
        object["status"] = status;
        state
            .objects
            .insert(key(kind, namespace, name), Stored::new(&object));
        self.persist(self.path(kind, namespace, name), &object)
            .await
    }

    async fn delete(
        &self,
        kind: &'static KindInfo,
        namespace: &str,
        name: &str,
    ) -> Result<Value, StoreError> {
        let mut state = self.objects.lock().await;
        let Some(object) = state
            .objects
            .remove(&key(kind, namespace, name))
            .map(|stored| stored.value())
        else {
            return Err(StoreError::NotFound {
                kind: kind.kind,
                namespace: namespace.to_string(),
                name: name.to_string(),
            });
        };
        match tokio::fs::remove_file(self.path(kind, namespace, name)).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        drop(state);
        let _ = self.changes.send(StoreEvent::Deleted {
            kind,
            object: Arc::new(object.clone()),
        });
        Ok(object)
    }

    fn watch(&self) -> broadcast::Receiver<StoreEvent> {
        self.changes.subscribe()
    }

    fn storage_fault(&self) -> Option<StorageFault> {
        self.fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    async fn probe_storage(&self) {
        if self.storage_fault().is_none() {
            return;
        }
        let probe = self.root.join(".probe.tmp");
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let outcome = super::write_private(&probe, &vec![0u8; 64 * 1024]);
            let _ = std::fs::remove_file(&probe);
            outcome
        })
        .await;
        if let Ok(Ok(())) = written {
            self.set_fault(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rivulet_core::resources::find_kind_by_name;

    fn broker(name: &str, delivery_retry: i32) -> Value {
        json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
               "metadata": {"name": name}, "spec": {"delivery": {"retry": delivery_retry}}})
    }

    #[tokio::test]
    async fn apply_fills_metadata_and_bumps_generation_on_spec_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let kind = find_kind_by_name(None, "Broker").unwrap();
        let (created, outcome) = store.apply(kind, broker("b", 1)).await.unwrap();
        assert_eq!(outcome, Applied::Created);
        assert_eq!(created["metadata"]["namespace"], "default");
        assert_eq!(created["metadata"]["generation"], 1);
        let uid = created["metadata"]["uid"].clone();
        let (_, outcome) = store.apply(kind, broker("b", 1)).await.unwrap();
        assert_eq!(outcome, Applied::Unchanged);
        let (updated, outcome) = store.apply(kind, broker("b", 2)).await.unwrap();
        assert_eq!(outcome, Applied::Updated);
        assert_eq!(updated["metadata"]["generation"], 2);
        assert_eq!(updated["metadata"]["uid"], uid);
    }

    #[tokio::test]
    async fn objects_and_status_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let kind = find_kind_by_name(None, "Broker").unwrap();
        {
            let store = FileStore::open(dir.path()).unwrap();
            store.apply(kind, broker("b", 1)).await.unwrap();
            store
                .put_status(kind, "default", "b", json!({"conditions": []}))
                .await
                .unwrap();
        }
        let store = FileStore::open(dir.path()).unwrap();
        let object = store.get(kind, "default", "b").await.unwrap().unwrap();
        assert_eq!(object["status"], json!({"conditions": []}));
        let (applied, _) = store.apply(kind, broker("b", 5)).await.unwrap();
        assert_eq!(
            applied["status"],
            json!({"conditions": []}),
            "apply keeps status"
        );
        assert_eq!(store.list(kind, Some("default")).await.unwrap().len(), 1);
        store.delete(kind, "default", "b").await.unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        assert!(store.get(kind, "default", "b").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn invalid_objects_are_refused_and_changes_announced() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let kind = find_kind_by_name(None, "Broker").unwrap();
        let mut changes = store.watch();
        let error = store
            .apply(kind, json!({"metadata": {"name": "Bad_Name"}, "spec": {}}))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("metadata.name"), "{error}");
        store.apply(kind, broker("b", 1)).await.unwrap();
        assert!(matches!(changes.try_recv(), Ok(StoreEvent::Applied { .. })));
        assert!(
            changes.try_recv().is_err(),
            "the refused object was not announced"
        );
    }
}
