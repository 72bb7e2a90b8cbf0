//! Work that runs per object (a trigger's consumer, a source's adapter), kept with the
//! fingerprint of the configuration it was started with, so that a reconcile restarts it only
//! when that configuration changed.

use std::collections::HashMap;
use std::hash::Hash;

use rivulet_core::metrics::AdapterLabels;
use tokio::sync::{Mutex, MutexGuard};

/// Which source or sink adapter: its kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AdapterKey {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl AdapterKey {
    /// The adapter's labels on the source and sink metrics.
    pub fn labels(&self) -> AdapterLabels {
        AdapterLabels {
            kind: self.kind,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

/// Running work by key, each with the fingerprint of its configuration.
pub struct RunningMap<K, T> {
    entries: Mutex<HashMap<K, (String, T)>>,
}

impl<K, T> Default for RunningMap<K, T> {
    fn default() -> Self {
        Self {
            entries: Mutex::default(),
        }
    }
}

impl<K: Eq + Hash, T> RunningMap<K, T> {
    /// Locks the map, so that checking what runs and replacing it is one step that no other
    /// reconcile interleaves with.
    pub async fn lock(&self) -> RunningGuard<'_, K, T> {
        RunningGuard(self.entries.lock().await)
    }

    /// Takes one key's work out, for the caller to stop.
    pub async fn remove(&self, key: &K) -> Option<T> {
        self.lock().await.remove(key)
    }

    /// Takes every key's work out, for the caller to stop (at shutdown).
    pub async fn drain(&self) -> Vec<(K, T)> {
        let mut entries = self.entries.lock().await;
        entries
            .drain()
            .map(|(key, (_, work))| (key, work))
            .collect()
    }
}

/// The locked map.
pub struct RunningGuard<'a, K, T>(MutexGuard<'a, HashMap<K, (String, T)>>);

impl<K: Eq + Hash, T> RunningGuard<'_, K, T> {
    /// Whether `key`'s work runs with exactly this configuration.
    pub fn runs_with(&self, key: &K, fingerprint: &str) -> bool {
        self.0
            .get(key)
            .is_some_and(|(current, _)| current == fingerprint)
    }

    /// Puts `work` in for `key`, giving back what it replaces for the caller to stop.
    pub fn replace(&mut self, key: K, fingerprint: String, work: T) -> Option<T> {
        self.0.insert(key, (fingerprint, work)).map(|(_, old)| old)
    }

    /// Takes one key's work out, for the caller to stop.
    pub fn remove(&mut self, key: &K) -> Option<T> {
        self.0.remove(key).map(|(_, work)| work)
    }

    /// Every running piece of work.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.0.values().map(|(_, work)| work)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_is_replaced_only_when_its_fingerprint_changes() {
        let map = RunningMap::<&str, u32>::default();
        let mut running = map.lock().await;
        assert!(!running.runs_with(&"a", "v1"));
        assert_eq!(running.replace("a", "v1".into(), 1), None);
        assert!(running.runs_with(&"a", "v1"));
        assert!(!running.runs_with(&"a", "v2"));
        assert_eq!(running.replace("a", "v2".into(), 2), Some(1));
        drop(running);
        assert_eq!(map.remove(&"a").await, Some(2));
        assert_eq!(map.remove(&"a").await, None);
        map.lock().await.replace("b", "v1".into(), 3);
        assert_eq!(map.drain().await, vec![("b", 3)]);
    }
}
