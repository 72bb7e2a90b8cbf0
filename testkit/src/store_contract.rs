//! The contract every resource store meets, so that reconcilers behave alike in standalone
//! mode (files) and in a cluster (the Kubernetes API server): apply creates an object, then
//! reports it unchanged or updated (spec, labels, owners) and counts generations by spec
//! changes; the namespace defaults to `default`; get and list read by namespace and name,
//! ordered; an invalid object is refused with its validation error; only a status write sets
//! the status, keeping the spec, and it needs the object; delete hands back the object, once;
//! a watch hears applies and deletions but not status writes. Each case works in namespaces
//! of its own, so the cases share one store.
//!
//! Finalizers are not part of it: the file store has none (deletion runs cleanup directly),
//! so each store's instantiation tests them its own way.

use std::sync::Arc;
use std::time::Duration;

use rivulet::resources::{KindInfo, find_kind_by_name};
use rivulet::store::{Applied, ResourceStore, StoreError, StoreEvent, object_key};
use serde_json::{Value, json};

/// How long a watch may take to hear of a change (the Kubernetes store's watches list and
/// connect in the background).
const HEARD_WITHIN: Duration = Duration::from_secs(20);

/// Runs every case of the contract against `store`, which starts empty.
pub async fn store_contract(store: Arc<dyn ResourceStore>) {
    let store = store.as_ref();
    apply_creates_then_reports_unchanged_or_updated(store).await;
    the_namespace_defaults_to_default(store).await;
    get_and_list_read_by_namespace_and_name_in_order(store).await;
    invalid_objects_are_refused_with_their_validation_error(store).await;
    status_writes_keep_the_spec_and_need_the_object(store).await;
    delete_returns_the_object_once(store).await;
    a_watch_hears_applies_and_deletions_but_not_status(store).await;
}

/// The kinds the contract stores objects of.
pub fn broker_kind() -> &'static KindInfo {
    find_kind_by_name(None, "Broker").expect("Broker is a served kind")
}

pub fn trigger_kind() -> &'static KindInfo {
    find_kind_by_name(None, "Trigger").expect("Trigger is a served kind")
}

/// A Broker whose delivery retries `retry` times (a spec to change).
pub fn broker(namespace: &str, name: &str, retry: i64) -> Value {
    json!({
        "apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"delivery": {"retry": retry}},
    })
}

/// A Trigger on `broker` delivering to a fixed URI.
pub fn trigger(namespace: &str, name: &str, broker: &str) -> Value {
    json!({
        "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"broker": broker, "subscriber": {"uri": "http://subscriber.test/"}},
    })
}

fn meta<'a>(object: &'a Value, field: &str) -> &'a Value {
    &object["metadata"][field]
}

async fn apply(
    store: &dyn ResourceStore,
    kind: &'static KindInfo,
    object: Value,
) -> (Value, Applied) {
    let shown = object.to_string();
    store
        .apply(kind, object)
        .await
        .unwrap_or_else(|error| panic!("{shown} is applied: {error}"))
}

async fn apply_creates_then_reports_unchanged_or_updated(store: &dyn ResourceStore) {
    let ns = "contract-apply";
    let (created, outcome) = apply(store, broker_kind(), broker(ns, "orders", 1)).await;
    assert_eq!(outcome, Applied::Created);
    assert_eq!(meta(&created, "namespace"), ns);
    assert_eq!(meta(&created, "generation"), 1, "{created}");
    for field in ["uid", "creationTimestamp", "resourceVersion"] {
        assert!(
            meta(&created, field)
                .as_str()
                .is_some_and(|v| !v.is_empty()),
            "a created object has a {field}: {created}"
        );
    }

    let (same, outcome) = apply(store, broker_kind(), broker(ns, "orders", 1)).await;
    assert_eq!(outcome, Applied::Unchanged, "the same object again");
    for field in ["uid", "generation", "resourceVersion"] {
        assert_eq!(meta(&same, field), meta(&created, field), "{field}");
    }

    let (updated, outcome) = apply(store, broker_kind(), broker(ns, "orders", 2)).await;
    assert_eq!(outcome, Applied::Updated, "a spec change");
    assert_eq!(updated["spec"]["delivery"]["retry"], 2);
    assert_eq!(
        meta(&updated, "generation"),
        2,
        "one spec change, one generation"
    );
    for field in ["uid", "creationTimestamp"] {
        assert_eq!(meta(&updated, field), meta(&created, field), "{field}");
    }
    assert_ne!(
        meta(&updated, "resourceVersion"),
        meta(&created, "resourceVersion")
    );

    let mut labelled = broker(ns, "orders", 2);
    labelled["metadata"]["labels"] = json!({"team": "shipping"});
    let (relabelled, outcome) = apply(store, broker_kind(), labelled).await;
    assert_eq!(outcome, Applied::Updated, "a label change");
    assert_eq!(meta(&relabelled, "labels")["team"], "shipping");
    assert_eq!(
        meta(&relabelled, "generation"),
        2,
        "metadata is not spec: the generation stays"
    );

    // Owners change when an owner is recreated (autocreated EventTypes follow their
    // broker's uid): the new one is stored, not reported unchanged.
    let mut owned = broker(ns, "orders", 2);
    owned["metadata"]["labels"] = json!({"team": "shipping"});
    owned["metadata"]["ownerReferences"] = owner("uid-1");
    let (_, outcome) = apply(store, broker_kind(), owned.clone()).await;
    assert_eq!(outcome, Applied::Updated, "an owner given");
    owned["metadata"]["ownerReferences"] = owner("uid-2");
    let (reowned, outcome) = apply(store, broker_kind(), owned).await;
    assert_eq!(outcome, Applied::Updated, "another owner");
    assert_eq!(meta(&reowned, "ownerReferences"), &owner("uid-2"));
    assert_eq!(meta(&reowned, "generation"), 2);

    let stored = store
        .get(broker_kind(), ns, "orders")
        .await
        .expect("get works")
        .expect("the broker is stored");
    assert_eq!(stored["spec"]["delivery"]["retry"], 2);
    assert_eq!(meta(&stored, "generation"), 2);
    assert_eq!(meta(&stored, "labels")["team"], "shipping");
    assert_eq!(meta(&stored, "ownerReferences"), &owner("uid-2"));
}

fn owner(uid: &str) -> Value {
    json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}])
}

async fn the_namespace_defaults_to_default(store: &dyn ResourceStore) {
    let mut object = broker("", "contract-defaulted", 1);
    object["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("namespace");
    let (created, outcome) = apply(store, broker_kind(), object).await;
    assert_eq!(outcome, Applied::Created);
    assert_eq!(meta(&created, "namespace"), "default");
    let found = store
        .get(broker_kind(), "default", "contract-defaulted")
        .await
        .expect("get works");
    assert!(found.is_some(), "found in namespace default");
    store
        .delete(broker_kind(), "default", "contract-defaulted")
        .await
        .expect("deleted again");
}

fn keys(objects: &[Value]) -> Vec<(String, String)> {
    objects.iter().map(object_key).collect()
}

fn key(namespace: &str, name: &str) -> (String, String) {
    (namespace.to_string(), name.to_string())
}

async fn get_and_list_read_by_namespace_and_name_in_order(store: &dyn ResourceStore) {
    let (a, b) = ("contract-list-a", "contract-list-b");
    // Applied out of order, so that the order of the lists is the store's doing.
    for (ns, name) in [(b, "zeta"), (a, "beta"), (b, "alpha"), (a, "alpha")] {
        apply(store, broker_kind(), broker(ns, name, 1)).await;
    }
    apply(store, trigger_kind(), trigger(a, "alpha", "alpha")).await;

    let in_a = store
        .list(broker_kind(), Some(a))
        .await
        .expect("list works");
    assert_eq!(
        keys(&in_a),
        [key(a, "alpha"), key(a, "beta")],
        "one namespace"
    );

    let everywhere = keys(&store.list(broker_kind(), None).await.expect("list works"));
    let mut sorted = everywhere.clone();
    sorted.sort();
    assert_eq!(everywhere, sorted, "all namespaces, by namespace and name");
    let ours: Vec<_> = everywhere
        .into_iter()
        .filter(|(ns, _)| ns == a || ns == b)
        .collect();
    assert_eq!(
        ours,
        [
            key(a, "alpha"),
            key(a, "beta"),
            key(b, "alpha"),
            key(b, "zeta")
        ]
    );

    let triggers = store
        .list(trigger_kind(), Some(a))
        .await
        .expect("list works");
    assert_eq!(keys(&triggers), [key(a, "alpha")], "one kind at a time");
    assert_eq!(triggers[0]["kind"], "Trigger");
    assert_eq!(triggers[0]["spec"]["broker"], "alpha");

    let found = store
        .get(broker_kind(), b, "zeta")
        .await
        .expect("get works");
    let found = found.expect("the broker is found");
    assert_eq!(found["kind"], "Broker");
    assert_eq!(meta(&found, "name"), "zeta");
    for (ns, name) in [(a, "zeta"), (a, "missing")] {
        let missing = store.get(broker_kind(), ns, name).await.expect("get works");
        assert!(missing.is_none(), "no {ns}/{name}: {missing:?}");
    }
    let missing = store
        .get(trigger_kind(), b, "zeta")
        .await
        .expect("get works");
    assert!(missing.is_none(), "a broker is no trigger");
}

/// The validation error an apply of `object` is refused with.
async fn refusal(store: &dyn ResourceStore, kind: &'static KindInfo, object: Value) -> String {
    match store.apply(kind, object).await {
        Err(StoreError::Invalid(error)) => error.to_string(),
        other => panic!("refused as invalid, not {other:?}"),
    }
}

async fn invalid_objects_are_refused_with_their_validation_error(store: &dyn ResourceStore) {
    let ns = "contract-invalid";
    let error = refusal(store, broker_kind(), broker(ns, "Bad_Name", 1)).await;
    assert!(error.contains("metadata.name"), "{error}");
    let error = refusal(store, trigger_kind(), trigger(ns, "no-broker", "")).await;
    assert!(error.contains("spec.broker"), "{error}");
    for (kind, name) in [(broker_kind(), "Bad_Name"), (trigger_kind(), "no-broker")] {
        let stored = store.get(kind, ns, name).await.expect("get works");
        assert!(
            stored.is_none(),
            "a refused object is not stored: {stored:?}"
        );
    }

    // Validation sees the stored object too: a trigger's broker cannot change.
    apply(store, trigger_kind(), trigger(ns, "moving", "first")).await;
    let error = refusal(store, trigger_kind(), trigger(ns, "moving", "second")).await;
    assert!(error.contains("spec.broker"), "{error}");
    let stored = store
        .get(trigger_kind(), ns, "moving")
        .await
        .expect("get works");
    assert_eq!(stored.expect("still stored")["spec"]["broker"], "first");
}

fn ready_status() -> Value {
    json!({"observedGeneration": 1,
           "conditions": [{"type": "Ready", "status": "True"}]})
}

async fn status_writes_keep_the_spec_and_need_the_object(store: &dyn ResourceStore) {
    let ns = "contract-status";
    apply(store, broker_kind(), broker(ns, "orders", 3)).await;
    store
        .put_status(broker_kind(), ns, "orders", ready_status())
        .await
        .expect("the status is written");
    let stored = store
        .get(broker_kind(), ns, "orders")
        .await
        .expect("get works")
        .expect("the broker is stored");
    assert_eq!(stored["status"], ready_status());
    assert_eq!(stored["spec"]["delivery"]["retry"], 3, "the spec is kept");
    assert_eq!(meta(&stored, "generation"), 1, "a status is no spec change");

    let (applied, outcome) = apply(store, broker_kind(), broker(ns, "orders", 3)).await;
    assert_eq!(outcome, Applied::Unchanged);
    assert_eq!(applied["status"], ready_status(), "apply keeps the status");
    let (applied, outcome) = apply(store, broker_kind(), broker(ns, "orders", 4)).await;
    assert_eq!(outcome, Applied::Updated);
    assert_eq!(applied["status"], ready_status(), "apply keeps the status");

    // Only status writes set a status: one carried by an applied object (copied from a
    // listing, say) is not the store's, as the status subresource makes it in Kubernetes.
    let mut claiming = broker(ns, "claiming", 1);
    claiming["status"] = ready_status();
    let (created, _) = apply(store, broker_kind(), claiming.clone()).await;
    assert!(created.get("status").is_none(), "{created}");
    let mut stale = broker(ns, "orders", 4);
    stale["status"] = json!({"conditions": [{"type": "Ready", "status": "False"}]});
    let (applied, _) = apply(store, broker_kind(), stale).await;
    assert_eq!(
        applied["status"],
        ready_status(),
        "the stored status is kept"
    );
    let stored = store
        .get(broker_kind(), ns, "claiming")
        .await
        .expect("get works")
        .expect("the broker is stored");
    assert!(stored.get("status").is_none(), "{stored}");

    match store
        .put_status(broker_kind(), ns, "missing", ready_status())
        .await
    {
        Err(StoreError::NotFound {
            kind,
            namespace,
            name,
        }) => assert_eq!(
            (kind, namespace.as_str(), name.as_str()),
            ("Broker", ns, "missing")
        ),
        other => panic!("the status of a missing object is NotFound, not {other:?}"),
    }
    let missing = store
        .get(broker_kind(), ns, "missing")
        .await
        .expect("get works");
    assert!(missing.is_none(), "a status write creates nothing");
}

async fn delete_returns_the_object_once(store: &dyn ResourceStore) {
    let ns = "contract-delete";
    apply(store, broker_kind(), broker(ns, "orders", 5)).await;
    let deleted = store
        .delete(broker_kind(), ns, "orders")
        .await
        .expect("the broker is deleted");
    assert_eq!(meta(&deleted, "name"), "orders");
    assert_eq!(meta(&deleted, "namespace"), ns);
    assert_eq!(
        deleted["spec"]["delivery"]["retry"], 5,
        "the object as it was"
    );

    let gone = store
        .get(broker_kind(), ns, "orders")
        .await
        .expect("get works");
    assert!(gone.is_none(), "{gone:?}");
    let listed = store
        .list(broker_kind(), Some(ns))
        .await
        .expect("list works");
    assert!(listed.is_empty(), "{listed:?}");
    match store.delete(broker_kind(), ns, "orders").await {
        Err(StoreError::NotFound { name, .. }) => assert_eq!(name, "orders"),
        other => panic!("a second delete is NotFound, not {other:?}"),
    }
}

/// The next change to an object of namespace `ns` the watch hears, as ("applied" or
/// "deleted", name, object); panics when none comes in time.
async fn next_change(
    changes: &mut tokio::sync::broadcast::Receiver<StoreEvent>,
    ns: &str,
) -> (&'static str, String, Value) {
    let heard = tokio::time::timeout(HEARD_WITHIN, async {
        loop {
            let (what, object) = match changes.recv().await {
                Ok(StoreEvent::Applied { object, .. }) => ("applied", object),
                Ok(StoreEvent::Deleted { object, .. }) => ("deleted", object),
                // Missed changes are not this contract's subject; read on.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(error) => panic!("the watch ended: {error}"),
            };
            let (namespace, name) = object_key(&object);
            if namespace == ns {
                return (what, name, object.as_ref().clone());
            }
        }
    })
    .await;
    heard.unwrap_or_else(|_| panic!("no change in {ns} heard within {HEARD_WITHIN:?}"))
}

async fn a_watch_hears_applies_and_deletions_but_not_status(store: &dyn ResourceStore) {
    let ns = "contract-watch";
    let mut changes = store.watch();
    apply(store, broker_kind(), broker(ns, "first", 1)).await;
    let (what, name, object) = next_change(&mut changes, ns).await;
    assert_eq!((what, name.as_str()), ("applied", "first"));
    assert_eq!(object["kind"], "Broker");
    assert_eq!(object["spec"]["delivery"]["retry"], 1);

    // Reconcilers write status and need not hear it back: the next change heard is the
    // next apply.
    store
        .put_status(broker_kind(), ns, "first", ready_status())
        .await
        .expect("the status is written");
    apply(store, broker_kind(), broker(ns, "first", 2)).await;
    let (what, name, object) = next_change(&mut changes, ns).await;
    assert_eq!((what, name.as_str()), ("applied", "first"));
    assert_eq!(
        object["spec"]["delivery"]["retry"], 2,
        "the spec change, not the status"
    );

    store
        .delete(broker_kind(), ns, "first")
        .await
        .expect("the broker is deleted");
    let (what, name, _) = next_change(&mut changes, ns).await;
    assert_eq!((what, name.as_str()), ("deleted", "first"));
}
