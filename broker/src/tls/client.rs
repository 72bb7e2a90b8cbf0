//! Trust for outgoing https: the system roots, plus the CA certificates of every ConfigMap
//! labelled as a Knative trust bundle, plus a destination's own `CACerts`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use serde_json::Value;

use super::{TlsError, certificates};

/// The label that makes a ConfigMap's PEM values trusted for delivery, as in Knative.
pub const TRUST_BUNDLE_LABEL: &str = "networking.knative.dev/trust-bundle";

/// The CA certificates of the trust-bundle ConfigMaps, kept current as they change.
#[derive(Clone, Default)]
pub struct TrustBundles(Arc<RwLock<Bundles>>);

#[derive(Default)]
struct Bundles {
    /// PEM certificates by ConfigMap (namespace, name).
    by_config_map: BTreeMap<(String, String), Vec<String>>,
    /// Bumped on every change, so clients built before are not reused.
    generation: u64,
}

impl std::fmt::Debug for TrustBundles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bundles = self.0.read().expect("lock poisoned");
        f.debug_struct("TrustBundles")
            .field("config_maps", &bundles.by_config_map.keys())
            .field("generation", &bundles.generation)
            .finish()
    }
}

impl TrustBundles {
    /// Takes in a ConfigMap that was applied: its certificates when it carries the label,
    /// none when it does not (any more). Values that hold no PEM certificate are skipped and
    /// logged. Whether anything changed.
    pub fn applied(&self, config_map: &Value) -> bool {
        let (namespace, name) = rivulet_store::object_key(config_map);
        let labelled = config_map
            .pointer("/metadata/labels")
            .and_then(|labels| labels.get(TRUST_BUNDLE_LABEL))
            .and_then(Value::as_str)
            == Some("true");
        if !labelled {
            return self.deleted(&namespace, &name);
        }
        let mut pems = Vec::new();
        if let Some(data) = config_map.get("data").and_then(Value::as_object) {
            for (key, value) in data {
                let Some(text) = value.as_str() else { continue };
                match certificates(text.as_bytes(), &format!("{namespace}/{name} {key}")) {
                    Ok(_) => pems.push(text.to_string()),
                    Err(error) => {
                        tracing::warn!(%error, "trust bundle value holds no usable certificate")
                    }
                }
            }
        }
        let mut bundles = self.0.write().expect("lock poisoned");
        if bundles
            .by_config_map
            .get(&(namespace.clone(), name.clone()))
            == Some(&pems)
        {
            return false;
        }
        bundles.by_config_map.insert((namespace, name), pems);
        bundles.generation += 1;
        true
    }

    /// Trusts the CA of Rivulet's own serving certificate, so that what it sends to its own
    /// https addresses (sources to brokers, triggers to brokers) is verified like the rest.
    pub fn trust_own(&self, ca_pem: &str) {
        // No ConfigMap has an empty namespace: the key cannot clash with one.
        let key = (String::new(), "serving certificate".to_string());
        let pems = vec![ca_pem.to_string()];
        let mut bundles = self.0.write().expect("lock poisoned");
        if bundles.by_config_map.get(&key) != Some(&pems) {
            bundles.by_config_map.insert(key, pems);
            bundles.generation += 1;
        }
    }

    /// Forgets a deleted ConfigMap; whether it was a trust bundle.
    pub fn deleted(&self, namespace: &str, name: &str) -> bool {
        let mut bundles = self.0.write().expect("lock poisoned");
        let removed = bundles
            .by_config_map
            .remove(&(namespace.to_string(), name.to_string()))
            .is_some();
        if removed {
            bundles.generation += 1;
        }
        removed
    }

    /// The change count and every trusted PEM certificate now.
    fn snapshot(&self) -> (u64, Vec<String>) {
        let bundles = self.0.read().expect("lock poisoned");
        (
            bundles.generation,
            bundles.by_config_map.values().flatten().cloned().collect(),
        )
    }
}

/// The certificates of a PEM bundle as reqwest takes them.
pub fn parse_ca_bundle(pem: &str, origin: &str) -> Result<Vec<reqwest::Certificate>, TlsError> {
    certificates(pem.as_bytes(), origin)?
        .into_iter()
        .map(|der| {
            reqwest::Certificate::from_der(&der).map_err(|e| TlsError::BadPem {
                path: origin.to_string(),
                message: e.to_string(),
            })
        })
        .collect()
}

/// Builds an HTTP client that trusts the system roots plus the given certificates.
pub type BuildClient =
    Arc<dyn Fn(Vec<reqwest::Certificate>) -> reqwest::Result<reqwest::Client> + Send + Sync>;

/// Clients by extra trust (trust bundles and a destination's CA), few and reused: a client
/// holds a connection pool, and building one parses the system roots.
#[derive(Clone)]
pub struct ClientCache {
    build: BuildClient,
    trust: TrustBundles,
    /// Most recently used first.
    clients: Arc<Mutex<Vec<(ClientKey, reqwest::Client)>>>,
}

#[derive(Clone, PartialEq, Eq)]
struct ClientKey {
    generation: u64,
    ca_certs: Option<String>,
}

/// Clients kept at most; distinct destination CAs are few in practice.
const CACHED_CLIENTS: usize = 16;

impl ClientCache {
    pub fn new(trust: TrustBundles, build: BuildClient) -> Self {
        Self {
            build,
            trust,
            clients: Arc::default(),
        }
    }

    /// The trust bundles this cache follows.
    pub fn trust(&self) -> &TrustBundles {
        &self.trust
    }

    /// A client that trusts the system roots, the trust bundles and `ca_certs` (PEM), or
    /// `None` when there is nothing beyond the system roots to trust.
    pub fn client_for(&self, ca_certs: Option<&str>) -> Result<Option<reqwest::Client>, String> {
        let ca_certs = ca_certs.filter(|c| !c.trim().is_empty());
        let (generation, bundles) = self.trust.snapshot();
        if bundles.is_empty() && ca_certs.is_none() {
            return Ok(None);
        }
        let key = ClientKey {
            generation,
            ca_certs: ca_certs.map(str::to_string),
        };
        let mut clients = self.clients.lock().expect("lock poisoned");
        if let Some(at) = clients.iter().position(|(k, _)| *k == key) {
            let entry = clients.remove(at);
            let client = entry.1.clone();
            clients.insert(0, entry);
            return Ok(Some(client));
        }
        let mut roots = Vec::new();
        for pem in &bundles {
            // Checked when the bundle was taken in.
            roots.extend(parse_ca_bundle(pem, "trust bundle").unwrap_or_default());
        }
        if let Some(pem) = ca_certs {
            roots.extend(
                parse_ca_bundle(pem, "the destination's CACerts").map_err(|e| e.to_string())?,
            );
        }
        let client = (self.build)(roots)
            .map_err(|e| format!("cannot build an HTTP client with these CA certificates: {e}"))?;
        // Clients of an older trust generation will not be asked for again.
        clients.retain(|(k, _)| k.generation == generation);
        clients.truncate(CACHED_CLIENTS - 1);
        clients.insert(0, (key, client.clone()));
        Ok(Some(client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    fn config_map(name: &str, labelled: bool, data: Value) -> Value {
        let labels = if labelled {
            json!({TRUST_BUNDLE_LABEL: "true"})
        } else {
            json!({})
        };
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": "default", "labels": labels},
               "data": data})
    }

    #[test]
    fn only_labelled_config_maps_with_pem_are_trusted() {
        let trust = TrustBundles::default();
        assert!(!trust.applied(&config_map("plain", false, json!({"ca.crt": ca_pem()}))));
        assert!(trust.snapshot().1.is_empty());
        assert!(trust.applied(&config_map(
            "bundle",
            true,
            json!({"ca.crt": ca_pem(), "note": "not a certificate"})
        )));
        assert_eq!(trust.snapshot().1.len(), 1, "the non-PEM value is skipped");
        // The label removed: no longer trusted.
        assert!(trust.applied(&config_map("bundle", false, json!({}))));
        assert!(trust.snapshot().1.is_empty());
    }

    #[test]
    fn the_own_ca_is_trusted_and_replaced_not_accumulated() {
        let trust = TrustBundles::default();
        let (first, second) = (ca_pem(), ca_pem());
        trust.trust_own(&first);
        let (generation, pems) = trust.snapshot();
        assert_eq!(pems, vec![first.clone()]);
        trust.trust_own(&first);
        assert_eq!(
            trust.snapshot().0,
            generation,
            "the same CA again changes nothing"
        );
        trust.trust_own(&second);
        assert_eq!(trust.snapshot().1, vec![second]);
    }

    #[test]
    fn clients_are_reused_per_ca_and_rebuilt_when_bundles_change() {
        rivulet_core::install_crypto_provider();
        let built = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = built.clone();
        let trust = TrustBundles::default();
        let cache = ClientCache::new(
            trust.clone(),
            Arc::new(move |roots| {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                reqwest::Client::builder().tls_certs_merge(roots).build()
            }),
        );
        assert!(cache.client_for(None).unwrap().is_none());
        let ca = ca_pem();
        cache.client_for(Some(&ca)).unwrap().unwrap();
        cache.client_for(Some(&ca)).unwrap().unwrap();
        assert_eq!(built.load(std::sync::atomic::Ordering::SeqCst), 1);
        trust.applied(&config_map("bundle", true, json!({"ca.crt": ca_pem()})));
        cache.client_for(Some(&ca)).unwrap().unwrap();
        assert_eq!(built.load(std::sync::atomic::Ordering::SeqCst), 2);
        let error = cache.client_for(Some("not pem")).unwrap_err();
        assert!(error.contains("CACerts"), "{error}");
    }
}
