//! The running ApiServerSource: one watcher per resource and namespace, each sending its
//! changes to the sink in order.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, ResourceExt};
use kube::runtime::{WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::events::{Emitter, Known};
use super::{NamespaceScope, WatchedResource};
use crate::{SinkClient, SourceAdapter, SourceContext, SourceError, SourceKey};
use rivulet_core::event::Event;

/// Watches the resources of one ApiServerSource and sends their changes.
pub struct ApiServerAdapter {
    /// A client acting as the source's service account.
    client: kube::Client,
    /// That account (`system:serviceaccount:{namespace}:{name}`), for logs.
    account: Arc<str>,
    resources: Vec<Arc<WatchedResource>>,
    scope: NamespaceScope,
    emitter: Arc<Emitter>,
}

impl ApiServerAdapter {
    /// `client` must act as `account`, the source's service account.
    pub fn new(
        client: kube::Client,
        account: String,
        resources: Vec<WatchedResource>,
        scope: NamespaceScope,
        emitter: Emitter,
    ) -> Self {
        Self {
            client,
            account: account.into(),
            resources: resources.into_iter().map(Arc::new).collect(),
            scope,
            emitter: Arc::new(emitter),
        }
    }

    /// Starts following `resource` through `api`, until `cancel` fires.
    fn spawn_watch(
        &self,
        watches: &TaskTracker,
        ctx: &SourceContext,
        api: Api<DynamicObject>,
        resource: &Arc<WatchedResource>,
        place: String,
        cancel: CancellationToken,
    ) {
        watches.spawn(follow(Watch {
            api,
            resource: resource.clone(),
            place,
            account: self.account.clone(),
            emitter: self.emitter.clone(),
            sink: ctx.sink.clone(),
            key: ctx.key.clone(),
            cancel,
            stop_grace: ctx.stop_grace,
        }));
    }

    /// Starts watching the namespaced resources in `namespace`.
    fn watch_namespace(
        &self,
        watches: &TaskTracker,
        ctx: &SourceContext,
        namespace: &str,
        cancel: &CancellationToken,
    ) {
        for resource in self.resources.iter().filter(|r| r.namespaced) {
            let api = Api::namespaced_with(self.client.clone(), namespace, &resource.api_resource);
            self.spawn_watch(
                watches,
                ctx,
                api,
                resource,
                format!("namespace {namespace}"),
                cancel.clone(),
            );
        }
    }

    /// Watches the resources in `namespace` unless they are already.
    fn ensure_watched(
        &self,
        watched: &mut HashMap<String, CancellationToken>,
        watches: &TaskTracker,
        ctx: &SourceContext,
        namespace: String,
    ) {
        if let Entry::Vacant(entry) = watched.entry(namespace) {
            let cancel = ctx.cancel.child_token();
            self.watch_namespace(watches, ctx, entry.key(), &cancel);
            entry.insert(cancel);
        }
    }

    /// Follows the namespaces matching `selector`, watching the resources in each while it
    /// matches, until the source stops.
    async fn follow_namespaces(&self, selector: &str, ctx: &SourceContext, watches: &TaskTracker) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let config = watcher::Config::default().labels(selector);
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        let mut watched: HashMap<String, CancellationToken> = HashMap::new();
        let mut listing: Option<HashSet<String>> = None;
        let mut failing = false;
        loop {
            let next = tokio::select! {
                _ = ctx.cancel.cancelled() => break,
                next = events.next() => next,
            };
            let event = match next {
                None => break,
                Some(Ok(event)) => {
                    failing = false;
                    event
                }
                Some(Err(error)) => {
                    if !failing {
                        tracing::warn!(kind = ctx.key.kind, namespace = %ctx.key.namespace, source = %ctx.key.name,
                            %error, selector, account = %self.account,
                            "cannot follow the namespaces of namespaceSelector; retrying (the source's service account needs list and watch on namespaces)");
                    }
                    failing = true;
                    continue;
                }
            };
            match event {
                watcher::Event::Init => listing = Some(HashSet::new()),
                watcher::Event::InitApply(namespace) => {
                    listing.get_or_insert_default().insert(namespace.name_any());
                }
                watcher::Event::InitDone => {
                    let wanted = listing.take().unwrap_or_default();
                    watched.retain(|name, cancel| {
                        let keep = wanted.contains(name);
                        if !keep {
                            cancel.cancel();
                        }
                        keep
                    });
                    for name in wanted {
                        self.ensure_watched(&mut watched, watches, ctx, name);
                    }
                }
                watcher::Event::Apply(namespace) => {
                    self.ensure_watched(&mut watched, watches, ctx, namespace.name_any());
                }
                // Deleted, or its labels no longer match.
                watcher::Event::Delete(namespace) => {
                    if let Some(cancel) = watched.remove(&namespace.name_any()) {
                        cancel.cancel();
                    }
                }
            }
        }
    }
}

#[async_trait]
impl SourceAdapter for ApiServerAdapter {
    async fn run(&self, ctx: &SourceContext) -> Result<(), SourceError> {
        let watches = TaskTracker::new();
        for resource in &self.resources {
            let (api, place) = match (&self.scope, resource.namespaced) {
                // A cluster-scoped kind lives in no namespace: it is watched cluster-wide.
                (_, false) => (
                    Api::all_with(self.client.clone(), &resource.api_resource),
                    "the cluster".to_string(),
                ),
                (NamespaceScope::All, true) => (
                    Api::all_with(self.client.clone(), &resource.api_resource),
                    "all namespaces".to_string(),
                ),
                (NamespaceScope::Own(namespace), true) => (
                    Api::namespaced_with(self.client.clone(), namespace, &resource.api_resource),
                    format!("namespace {namespace}"),
                ),
                (NamespaceScope::Selected(_), true) => continue,
            };
            self.spawn_watch(
                &watches,
                ctx,
                api,
                resource,
                place,
                ctx.cancel.child_token(),
            );
        }
        match &self.scope {
            NamespaceScope::Selected(selector) if self.resources.iter().any(|r| r.namespaced) => {
                self.follow_namespaces(selector, ctx, &watches).await;
            }
            _ => ctx.cancel.cancelled().await,
        }
        watches.close();
        // Every watch ends at cancellation; a delivery in flight gets the stop grace.
        let limit = ctx.stop_grace + Duration::from_secs(1);
        if tokio::time::timeout(limit, watches.wait()).await.is_err() {
            tracing::info!(namespace = %ctx.key.namespace, source = %ctx.key.name,
                "ApiServerSource watches still stopping; they end in the background");
        }
        Ok(())
    }
}

/// One watch: a kind in a namespace (or cluster-wide).
struct Watch {
    api: Api<DynamicObject>,
    resource: Arc<WatchedResource>,
    /// Where it watches, for logs.
    place: String,
    /// The account it watches as, for logs.
    account: Arc<str>,
    emitter: Arc<Emitter>,
    sink: SinkClient,
    key: SourceKey,
    cancel: CancellationToken,
    stop_grace: Duration,
}

impl Watch {
    /// Sends one event; failures are logged and counted by the sink client. The watch cannot
    /// hold an event upstream, so a delivery that fails after every retry is lost (counted
    /// as `failed`). At a stop, a delivery still retrying gets the stop grace.
    async fn deliver(&self, event: Event) {
        let id = event.id.clone();
        let stopping = async {
            self.cancel.cancelled().await;
            tokio::time::sleep(self.stop_grace).await;
        };
        tokio::select! {
            _ = self.sink.send(event) => {}
            _ = stopping => {
                tracing::warn!(namespace = %self.key.namespace, source = %self.key.name, %id,
                    "ApiServerSource stopped while an event was still being delivered; it was abandoned");
            }
        }
    }
}

/// Follows one watch until it is cancelled: changes after the initial listing become events.
async fn follow(watch: Watch) {
    let resource = &watch.resource.api_resource;
    let mut config = watcher::Config::default();
    if !watch.resource.label_selector.is_empty() {
        config = config.labels(&watch.resource.label_selector);
    }
    let mut known = Known::default();
    let mut failing = false;
    let mut events = std::pin::pin!(watcher(watch.api.clone(), config).default_backoff());
    loop {
        let next = tokio::select! {
            _ = watch.cancel.cancelled() => return,
            next = events.next() => next,
        };
        let event = match next {
            None => return,
            Some(Ok(event)) => {
                failing = false;
                event
            }
            // Said once per outage; the watcher retries with backoff.
            Some(Err(error)) => {
                if !failing {
                    tracing::warn!(namespace = %watch.key.namespace, source = %watch.key.name,
                        kind = %resource.kind, api_version = %resource.api_version, place = %watch.place,
                        account = %watch.account, %error,
                        "cannot watch; retrying (the source's service account needs list and watch on this resource)");
                }
                failing = true;
                continue;
            }
        };
        let Some((change, object)) = known.classify(event) else {
            continue;
        };
        let object = match serde_json::to_value(&object) {
            Ok(object) => object,
            Err(error) => {
                tracing::warn!(namespace = %watch.key.namespace, source = %watch.key.name, %error,
                    "a watched object could not be turned into JSON; skipped");
                continue;
            }
        };
        match watch.emitter.event(change, resource, &object) {
            Some(event) => watch.deliver(event).await,
            None => tracing::debug!(namespace = %watch.key.namespace, source = %watch.key.name,
                ?change, object = ?object.pointer("/metadata/name"), "left out by owner or filters"),
        }
    }
}
