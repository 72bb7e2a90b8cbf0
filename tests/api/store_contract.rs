//! The store contract (`support::store_contract`) for each resource store: files in a
//! temporary folder, and the Kubernetes store against an API server whose writes change what
//! it serves. Finalizers differ by design and are tested per store.

use std::sync::Arc;

use rivulet::store::{FileStore, KubernetesStore, ResourceStore};
use rivulet_testkit as support;
use serde_json::Value;
use support::kube_server::KubeServer;
use support::store_contract::{broker, broker_kind, store_contract};

const FINALIZER: &str = "eventing.knative.dev/contract";

fn kubernetes_store(server: &KubeServer) -> KubernetesStore {
    rivulet::install_crypto_provider();
    let config = kube::Config::new(server.url.parse().expect("the server's URL"));
    KubernetesStore::from_config(config).expect("a store on the test API server")
}

async fn stored(store: &dyn ResourceStore, namespace: &str, name: &str) -> Option<Value> {
    store
        .get(broker_kind(), namespace, name)
        .await
        .expect("get works")
}

/// Applies the broker team/orders (generation 1) and sets the contract's finalizer on it.
async fn apply_with_finalizer(store: &dyn ResourceStore) {
    store
        .apply(broker_kind(), broker("team", "orders", 1))
        .await
        .expect("applied");
    store
        .set_finalizer(broker_kind(), "team", "orders", FINALIZER, true)
        .await
        .expect("setting a finalizer is no error");
}

#[tokio::test]
async fn the_file_store_meets_the_contract() {
    let folder = tempfile::tempdir().unwrap();
    let store = FileStore::open(folder.path()).expect("the store opens");
    store_contract(Arc::new(store)).await;
}

#[tokio::test]
async fn the_kubernetes_store_meets_the_contract() {
    let server = KubeServer::start_stateful(Vec::new()).await;
    store_contract(Arc::new(kubernetes_store(&server))).await;
}

/// Files have no finalizers: deletion runs its cleanup directly, so a finalizer set is
/// ignored and a delete removes the object at once.
#[tokio::test]
async fn the_file_store_ignores_finalizers() {
    let folder = tempfile::tempdir().unwrap();
    let store = FileStore::open(folder.path()).expect("the store opens");
    apply_with_finalizer(&store).await;
    let object = stored(&store, "team", "orders").await.expect("stored");
    assert!(object["metadata"].get("finalizers").is_none(), "{object}");
    store
        .delete(broker_kind(), "team", "orders")
        .await
        .expect("deleted");
    assert!(stored(&store, "team", "orders").await.is_none());
}

/// In a cluster a finalizer holds a deleted object (marked with a deletionTimestamp) until
/// it is released; applying the object again neither adds nor drops it.
#[tokio::test]
async fn the_kubernetes_store_keeps_a_finalized_object_until_released() {
    let server = KubeServer::start_stateful(Vec::new()).await;
    let store = kubernetes_store(&server);
    apply_with_finalizer(&store).await;
    let (applied, _) = store
        .apply(broker_kind(), broker("team", "orders", 2))
        .await
        .expect("applied again");
    assert_eq!(
        applied["metadata"]["finalizers"],
        serde_json::json!([FINALIZER]),
        "an apply keeps the finalizer: {applied}"
    );

    let deleted = store
        .delete(broker_kind(), "team", "orders")
        .await
        .expect("deletion starts");
    assert!(
        deleted["metadata"]["deletionTimestamp"].is_string(),
        "{deleted}"
    );
    let held = stored(&store, "team", "orders")
        .await
        .expect("held by its finalizer");
    assert!(held["metadata"]["deletionTimestamp"].is_string(), "{held}");

    store
        .set_finalizer(broker_kind(), "team", "orders", FINALIZER, false)
        .await
        .expect("the finalizer is released");
    assert!(
        stored(&store, "team", "orders").await.is_none(),
        "gone once released"
    );
}
