//! `rivulet serve` and `rivulet controller`: one runtime, in the role the command gives it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::api::auth::{ApiAuth, Gate, Tokens};
use crate::api::{self, ApiState};
use crate::delivery::{DeliveryDefaults, Sender};
use crate::discovery::{DiscoverySettings, worker::Worker};
use crate::dispatcher;
use crate::ingress::{Ingress, Observer};
use crate::metrics::Metrics;
use crate::resources::{find_kind_by_name, manifest_files, parse_manifests_skipping};
use crate::runtime::routes::{HttpRoutes, Listener, PublicRoutes};
use crate::runtime::{CappedBrokers, Context, Role, Settings, StatusLock};
use crate::store::{FileStore, KubernetesStore, ResourceStore};

/// Everything `rivulet serve` can be told.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Manifest files or folders applied at start.
    pub config: Vec<PathBuf>,
    /// Event ingress (broker paths, source and sink receive endpoints), and health.
    pub listen: SocketAddr,
    /// The resource API, tokens, xRegistry and metrics, and health.
    pub api_listen: SocketAddr,
    /// How the resource API authenticates callers.
    pub api_auth: ApiAuth,
    /// Allow `--api-auth none` on an address other than loopback.
    pub force_insecure_api: bool,
    pub data_dir: PathBuf,
    /// Largest request body ingress takes, in bytes.
    pub body_limit: usize,
    pub delivery: DeliveryDefaults,
    pub default_parallelism: usize,
    /// How long shutdown waits for deliveries in flight.
    pub shutdown_grace: Duration,
    /// How long deleting a broker or trigger waits for its deliveries in flight.
    pub delete_grace: Duration,
    /// The URL brokers advertise; by default `http://` + the listen address.
    pub advertised_url: Option<String>,
    /// Event-type discovery: auto-creation, its bounds and write rate.
    pub discovery: DiscoverySettings,
    /// Bytes a memory channel holds at most unless its broker's config sets `maxBytes`.
    pub memory_channel_max_bytes: u64,
    /// Where resources are kept.
    pub store: StoreChoice,
    /// What this process does: everything (standalone), the controller, or the data plane.
    pub role: Role,
    /// Feature flags from the command line; they win over the `config-features` ConfigMap.
    pub features: crate::features::Features,
    /// Where outbound requests (deliveries, sinks, sources) may go.
    pub egress: crate::egress::EgressPolicy,
    /// The serving certificate (`--tls-cert`, `--tls-key`, `--tls-ca`); required when
    /// `transport-encryption` is `permissive` or `strict`.
    pub tls: Option<crate::tls::TlsFiles>,
    /// The serving certificate from a TLS Secret in the store instead (`--tls-secret`),
    /// followed as it changes.
    pub tls_secret: Option<crate::tls::SecretRef>,
    /// External OIDC issuers whose tokens ingress accepts (Rivulet always trusts itself).
    pub oidc_issuers: Vec<String>,
    /// An issuer's keys are refetched for an unknown `kid` at most this often.
    pub oidc_jwks_refresh: Duration,
    /// Timeouts, connection and header limits of both listeners.
    pub listeners: crate::listener::ListenerLimits,
    /// The event journal; its folder is `journal` under the data dir unless set.
    pub journal: crate::journal::JournalSettings,
    /// Where traces go over OTLP; `None` leaves tracing off. The CLI fills it from the
    /// `OTEL_*` variables.
    pub telemetry: Option<crate::telemetry::TelemetryConfig>,
    /// How often each running trigger's queue depth is sampled into
    /// `rivulet_trigger_queue_depth`.
    pub queue_depth_interval: Duration,
}

/// How long shutdown waits for the last trace spans to be exported.
const TRACE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where `rivulet serve` keeps resources.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreChoice {
    /// JSON files under the data dir (standalone mode).
    #[default]
    File,
    /// The Kubernetes API server, found from the in-cluster service account or kubeconfig.
    Kubernetes,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            config: Vec::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            api_auth: ApiAuth::default(),
            force_insecure_api: false,
            data_dir: PathBuf::from(".rivulet"),
            body_limit: 4 * 1024 * 1024,
            delivery: DeliveryDefaults::default(),
            default_parallelism: 64,
            shutdown_grace: Duration::from_secs(5),
            delete_grace: crate::runtime::DEFAULT_DELETE_GRACE,
            advertised_url: None,
            discovery: DiscoverySettings::default(),
            memory_channel_max_bytes: rivulet_channels::memory::DEFAULT_MAX_BYTES,
            store: StoreChoice::default(),
            role: Role::default(),
            features: crate::features::Features::default(),
            egress: crate::egress::EgressPolicy::default(),
            tls: None,
            tls_secret: None,
            oidc_issuers: Vec::new(),
            oidc_jwks_refresh: Duration::from_secs(10),
            listeners: crate::listener::ListenerLimits::default(),
            journal: crate::journal::JournalSettings::default(),
            telemetry: None,
            queue_depth_interval: crate::runtime::DEFAULT_QUEUE_DEPTH_INTERVAL,
        }
    }
}

/// A server that is up.
pub struct RunningServer {
    /// Where ingress listens, and the URL brokers are addressed under.
    pub local_addr: SocketAddr,
    /// The URL clients reach the server at: `https://` when transport encryption is strict.
    pub base_url: String,
    /// The https URL of the ingress listener, when a certificate is configured.
    pub https_url: Option<String>,
    /// Where the resource API listens, and its URL (`https://` when transport encryption is
    /// strict).
    pub api_addr: SocketAddr,
    pub api_url: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// This process's hold on the data folder, let go when the server is dropped.
    data_dir_lock: Option<std::fs::File>,
}

impl RunningServer {
    /// Stops intake, finishes (or hands back) deliveries in flight, and waits for the end.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await.context("server task panicked")?
    }

    /// Waits until the server stops by itself (it does not, unless it fails).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task panicked")?
    }

    /// A token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Opens the store, applies manifests, starts the control loop and the HTTP server.
pub async fn start(options: ServeOptions) -> anyhow::Result<RunningServer> {
    crate::install_crypto_provider();
    crate::store::create_private_dir(&options.data_dir)
        .with_context(|| format!("cannot create the data dir {}", options.data_dir.display()))?;
    let lock = crate::store::lock::lock_data_dir(&options.data_dir)?;
    // Damaged files are reported before anything opens (and would replace) them.
    let data_dir = options.data_dir.clone();
    let damage = tokio::task::spawn_blocking(move || crate::store::check::check(&data_dir))
        .await
        .context("checking the data dir failed")?
        .with_context(|| format!("cannot check the data dir {}", options.data_dir.display()))?;
    if !damage.is_empty() {
        anyhow::bail!(crate::store::check::refusal(&options.data_dir, &damage));
    }
    let store = open_store(&options).await?;
    let mut server = start_with_store(options, store).await?;
    server.data_dir_lock = Some(lock);
    Ok(server)
}

/// Refuses `--api-auth none` where others could reach the API.
fn check_api_auth(options: &ServeOptions) -> anyhow::Result<()> {
    if options.api_auth == ApiAuth::None
        && !options.api_listen.ip().is_loopback()
        && !options.force_insecure_api
        && options.role == Role::Standalone
    {
        anyhow::bail!(
            "--api-auth none on {}: anyone who reaches that address could change every \
             resource; listen on loopback (--api-listen 127.0.0.1:8081), keep token auth, or add \
             --force-insecure-api",
            options.api_listen
        );
    }
    Ok(())
}

fn url_of(addr: SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    if addr.is_ipv6() && !addr.ip().is_unspecified() {
        format!("http://[{host}]:{}", addr.port())
    } else {
        format!("http://{host}:{}", addr.port())
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

async fn open_store(options: &ServeOptions) -> anyhow::Result<Arc<dyn ResourceStore>> {
    Ok(match options.store {
        StoreChoice::File => Arc::new(
            FileStore::open(&options.data_dir.join("resources"))
                .context("cannot open the resource store in the data dir")?,
        ),
        StoreChoice::Kubernetes => {
            let config = kube::Config::infer().await.context(
                "--store kubernetes: no Kubernetes API server configured (neither an in-cluster \
                 service account nor a kubeconfig from KUBECONFIG or ~/.kube/config)",
            )?;
            let store = KubernetesStore::from_config(config)
                .context("--store kubernetes: cannot build the Kubernetes API client")?;
            Arc::new(if options.role == Role::DataPlane {
                store.announcing_status()
            } else {
                store
            })
        }
    })
}

/// Like [`start`], with resources kept in `store`; `options.store` then only decides whether
/// a default broker is made (with `File`).
pub async fn start_with_store(
    options: ServeOptions,
    store: Arc<dyn ResourceStore>,
) -> anyhow::Result<RunningServer> {
    crate::install_crypto_provider();
    check_api_auth(&options)?;
    // Before anything is bound or written: a certificate problem is a start error.
    let tls = load_tls(&options)?;
    crate::store::create_private_dir(&options.data_dir)
        .with_context(|| format!("cannot create the data dir {}", options.data_dir.display()))?;
    apply_manifests(&*store, &options.config).await?;
    // The Secret may come with the manifests just applied.
    let tls = match &options.tls_secret {
        Some(secret) => Some(load_tls_secret(secret, &*store).await?),
        None => tls,
    };
    // A cluster's brokers are the cluster's business: none is made up there.
    if options.config.is_empty() && options.store == StoreChoice::File {
        ensure_default_broker(&*store).await?;
    }

    // The controller takes no events: its one listener is the health and metrics one.
    let listener = if options.role.carries_events() {
        Some(bind(options.listen, "ingress").await?)
    } else {
        None
    };
    let api_listener = bind(options.api_listen, "resource API").await?;
    let api_addr = api_listener.local_addr()?;
    let api_url = url_of(api_addr);
    let local_addr = match &listener {
        Some(listener) => listener.local_addr()?,
        None => api_addr,
    };
    let base_url = options
        .advertised_url
        .clone()
        .unwrap_or_else(|| url_of(local_addr));
    // Standalone, the resource API is Rivulet's own and needs its tokens; on Kubernetes the
    // API server is the control plane and this listener serves health and metrics only.
    let gate = match (options.role, options.api_auth) {
        (Role::Standalone, ApiAuth::Token) => Some(Gate::Tokens(
            Tokens::open(&options.data_dir).context("cannot open the API tokens")?,
        )),
        (Role::Standalone, ApiAuth::None) => Some(Gate::Open),
        _ => None,
    };

    let features = crate::features::FeatureFlags::new(options.features.clone());
    let https_base_url = tls.as_ref().map(|_| https_url_of(&base_url));

    let metrics = Arc::new(Metrics::new());
    let guards = listener_guards(&options, &metrics);
    let brokers = Arc::new(rivulet_broker::brokers::BrokerTable::new(metrics.clone()));
    let ingress = Arc::new(Ingress::new(brokers, options.body_limit));
    let telemetry = match &options.telemetry {
        Some(config) => Some(
            crate::telemetry::Telemetry::start(config, metrics.trace_spans_dropped.clone())
                .context("cannot set up trace export")?,
        ),
        None => None,
    };
    if let Some(telemetry) = &telemetry {
        ingress.set_telemetry(telemetry.clone());
    }
    // One egress policy for every outbound call: deliveries and OIDC key fetches alike.
    let egress = Arc::new(crate::egress::Egress::new(
        options.egress.clone(),
        Some(metrics.clone()),
    ));
    let auth_settings = crate::auth::setup::AuthSettings {
        data_dir: &options.data_dir,
        base_url: &base_url,
        oidc_issuers: &options.oidc_issuers,
        oidc_jwks_refresh: options.oidc_jwks_refresh,
        kube_tokens: match options.role {
            Role::Standalone => None,
            Role::Controller | Role::DataPlane => store.kube_client(),
        },
    };
    let auth = crate::auth::setup::build(auth_settings, features.clone(), egress.clone())?;
    ingress.set_auth(auth.clone());
    let shutdown = CancellationToken::new();
    // The controller carries no events, so it has nothing to journal.
    let journal = if options.role.carries_events() {
        let settings = crate::journal::JournalSettings {
            dir: Some(
                options
                    .journal
                    .dir
                    .clone()
                    .unwrap_or_else(|| options.data_dir.join("journal")),
            ),
            ..options.journal.clone()
        };
        crate::journal::Journal::start(&settings, metrics.clone(), shutdown.clone())
    } else {
        crate::journal::Journal::off()
    };
    ingress.set_journal(journal.clone());
    let shared = dispatcher::Shared {
        journal,
        sender: Sender::with_egress(egress)
            .with_response_limit(options.delivery.max_response_body)
            .with_transport(crate::tls::TrustBundles::default(), features.clone())
            .with_bearer(crate::auth::setup::bearer(&auth))
            .with_trace_headers(telemetry.is_some()),
        ingress: ingress.clone(),
        metrics: metrics.clone(),
    };
    let ctx = Context::new(
        store.clone(),
        ingress.clone(),
        shared,
        Settings {
            data_dir: options.data_dir.clone(),
            base_url: base_url.clone(),
            api_url: api_url.clone(),
            delivery: options.delivery.clone(),
            default_parallelism: options.default_parallelism,
            stop_grace: options.shutdown_grace,
            delete_grace: options.delete_grace,
            role: options.role,
            features: features.clone(),
            tls: tls.clone(),
            https_base_url: https_base_url.clone(),
        },
    );
    ctx.extensions.set(crate::runtime::MemoryChannelMaxBytes(
        options.memory_channel_max_bytes,
    ));
    if let Some(tls) = &tls {
        ctx.dispatch.sender.trust_bundles().trust_own(&tls.ca_pem());
        tls.spawn_watch(
            metrics.tls_certificate_reloads.clone(),
            metrics.tls_certificate_reload_failures.clone(),
            shutdown.clone(),
        );
        tokio::spawn(crate::runtime::follow_tls_secret(
            ctx.clone(),
            shutdown.clone(),
        ));
        // New CA certificates go into every https address.
        let mut changes = tls.subscribe();
        let ctx = ctx.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    changed = changes.changed() => if changed.is_err() { return },
                }
                if let Some(tls) = &ctx.settings.tls {
                    ctx.dispatch.sender.trust_bundles().trust_own(&tls.ca_pem());
                }
                ctx.resync().await;
            }
        });
    }
    // Discovery runs beside ingress, fed through a bounded queue it never makes ingress wait on.
    let (observer, observations) = Observer::new(&metrics, options.discovery.queue_capacity);
    ingress.set_observer(observer);
    let discovery = tokio::spawn(
        Worker::new(
            store.clone(),
            options.discovery.clone(),
            metrics.clone(),
            ctx.extensions.get_or_default::<StatusLock>(),
        )
        .report_caps(ctx.extensions.get_or_default::<CappedBrokers>(), {
            let ctx = Arc::downgrade(&ctx);
            move |namespace, broker| {
                if let Some(ctx) = ctx.upgrade() {
                    ctx.requeue_now(Context::kind("Broker"), namespace, broker);
                }
            }
        })
        .run(observations, shutdown.clone()),
    );
    let ready = Arc::new(AtomicBool::new(false));
    let storage_health = Arc::new(crate::runtime::storage::StorageHealth::default());
    let api_state = ApiState {
        store: store.clone(),
        metrics: metrics.clone(),
        ready: ready.clone(),
        runtime: Some(ctx.clone()),
        storage: storage_health.clone(),
    };
    let routes = |wanted: Listener| {
        inventory::iter::<HttpRoutes>()
            .filter(move |routes| routes.listener == wanted)
            .fold(axum::Router::new(), |app, routes| {
                app.merge((routes.build)(ctx.clone()))
            })
    };
    let api_app = match gate {
        Some(gate) => api::router(
            api_state.clone(),
            gate,
            routes(Listener::Api),
            inventory::iter::<PublicRoutes>().fold(axum::Router::new(), |app, public| {
                app.merge((public.build)())
            }),
        ),
        None => api::metrics_only_router(api_state.clone()),
    }
    .fallback(unknown_path);
    let ingress_app = listener.as_ref().map(|_| {
        api::health_router(ready.clone(), storage_health.clone())
            .merge(ingress.clone().router())
            .merge(auth.issuer.clone().router())
            .merge(routes(Listener::Ingress))
            .fallback(unknown_path)
            .layer(http_trace())
    });
    let api_app = api_app.layer(http_trace());

    let changes = store.watch();
    // Serve from now on: while brokers are loaded, `/readyz` and ingress answer 503 (rather
    // than leaving connections unanswered), and the resource API is up.
    let ingress_app = ingress_app.map(|app| {
        app.layer(axum::middleware::from_fn_with_state(
            (ready.clone(), true),
            refuse_until_ready,
        ))
    });
    let api_app = api_app.layer(axum::middleware::from_fn_with_state(
        (ready.clone(), false),
        refuse_until_ready,
    ));
    let (control_tx, control_rx) = tokio::sync::oneshot::channel::<tokio::task::JoinHandle<()>>();
    let stop = shutdown.clone();
    let serving_ctx = ctx.clone();
    let serving_features = features.clone();
    let serving_tls = tls.clone();
    let serving_ready = ready.clone();
    let task = tokio::spawn(async move {
        let (ctx, features, tls, ready) =
            (serving_ctx, serving_features, serving_tls, serving_ready);
        let stopped = {
            let stop = stop.clone();
            let ready = ready.clone();
            move || {
                let stop = stop.clone();
                let ready = ready.clone();
                async move {
                    stop.cancelled().await;
                    ready.store(false, Ordering::Relaxed);
                }
            }
        };
        // Both listeners follow transport-encryption with the same certificate.
        let api_serving = crate::tls::serve(
            api_listener,
            api_app,
            tls.clone(),
            features.clone(),
            guards.api,
            stopped(),
        );
        let result = match (listener, ingress_app) {
            (Some(listener), Some(app)) => {
                let ingress_serving =
                    crate::tls::serve(listener, app, tls, features, guards.ingress, stopped());
                let (ingress, api) = tokio::join!(ingress_serving, api_serving);
                ingress.and(api)
            }
            _ => api_serving.await,
        };
        // Intake has stopped: let deliveries in flight finish or hand them back.
        if let Ok(control) = control_rx.await {
            let _ = control.await;
        }
        let _ = discovery.await;
        rivulet_sources::stop_all(&ctx).await;
        ctx.stop_all().await;
        for broker in ctx.brokers.handles() {
            broker.channel.close().await;
        }
        // Last: the spans of the deliveries that just finished go out too.
        if let Some(telemetry) = telemetry {
            telemetry.shutdown(TRACE_FLUSH_TIMEOUT).await;
        }
        tracing::info!("rivulet stopped");
        result.context("HTTP server failed")
    });

    // Trust bundles first, so the first deliveries already trust them.
    if ctx.kube_client().is_some() {
        tokio::spawn(crate::runtime::follow_trust_bundles(
            ctx.clone(),
            shutdown.clone(),
        ));
    } else {
        crate::runtime::follow_trust_bundles(ctx.clone(), shutdown.clone()).await;
    }
    ctx.refresh_features().await;
    // The config-features ConfigMap may ask for TLS too.
    if let Err(error) = check_tls_mode(features.current().transport_encryption, tls.is_some()) {
        shutdown.cancel();
        return Err(error);
    }
    // The control loop brings brokers up, says when ingress can take events, resumes the
    // triggers that were settled before, then follows changes.
    let (serving_tx, serving_rx) = tokio::sync::oneshot::channel::<()>();
    let control = tokio::spawn({
        let (ctx, ready, shutdown) = (ctx.clone(), ready.clone(), shutdown.clone());
        async move {
            ctx.resync_at_start(|| {
                ready.store(true, Ordering::Relaxed);
                let _ = serving_tx.send(());
            })
            .await;
            ctx.run(changes, shutdown).await;
        }
    });
    let _ = control_tx.send(control);
    tokio::spawn(crate::runtime::storage::watch(
        ctx.clone(),
        storage_health,
        metrics.clone(),
        shutdown.clone(),
    ));
    if options.role.carries_events() {
        tokio::spawn(crate::runtime::sample_queue_depths(
            ctx.clone(),
            options.queue_depth_interval,
            shutdown.clone(),
        ));
    }
    // Returned once ingress takes events, as before; a start that fails meanwhile shows in
    // the task.
    let _ = serving_rx.await;
    tracing::info!(%base_url, %api_url, data_dir = %options.data_dir.display(), store = ?options.store, role = ?options.role, "rivulet is serving");

    let strict =
        features.current().transport_encryption == crate::features::TransportEncryption::Strict;
    let (client_url, client_api_url) = match (&https_base_url, strict) {
        (Some(https), true) => (https.clone(), https_url_of(&api_url)),
        _ => (base_url.clone(), api_url.clone()),
    };
    Ok(RunningServer {
        local_addr,
        base_url: client_url,
        https_url: https_base_url,
        api_addr,
        api_url: client_api_url,
        shutdown,
        task,
        data_dir_lock: None,
    })
}

struct ListenerGuards {
    ingress: crate::listener::ListenerGuard,
    api: crate::listener::ListenerGuard,
}

/// Raises the open-files limit, then sets each listener's connection limit below it.
fn listener_guards(options: &ServeOptions, metrics: &Metrics) -> ListenerGuards {
    use crate::listener::{ListenerGuard, connection_limit, raise_open_files_limit};
    let open_files = raise_open_files_limit();
    if let Some(limit) = open_files {
        metrics
            .open_files_limit
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
    }
    let limits = &options.listeners;
    let listeners = if options.role.carries_events() { 2 } else { 1 };
    let max_connections = connection_limit(limits, open_files, listeners);
    tracing::info!(
        max_connections,
        open_files_limit = ?open_files,
        header_read_timeout = ?limits.header_read_timeout,
        idle_timeout = ?limits.idle_timeout,
        request_timeout = ?limits.request_timeout,
        "listener limits"
    );
    ListenerGuards {
        ingress: ListenerGuard::new("ingress", limits, max_connections, metrics),
        api: ListenerGuard::new("api", limits, max_connections, metrics),
    }
}

/// The serving certificate from files, checked against the transport-encryption mode:
/// permissive and strict need one (from files or a Secret). With `disabled`, a configured
/// certificate is loaded (so a later switch of the flag can use it) but plain HTTP is served.
fn load_tls(options: &ServeOptions) -> anyhow::Result<Option<Arc<crate::tls::CertReloader>>> {
    use crate::features::TransportEncryption;
    let mode = options.features.transport_encryption;
    if options.tls.is_some() && options.tls_secret.is_some() {
        anyhow::bail!(
            "give the TLS certificate as files (--tls-cert, --tls-key) or as a Secret (--tls-secret), not both"
        );
    }
    check_tls_mode(mode, options.tls.is_some() || options.tls_secret.is_some())?;
    if mode == TransportEncryption::Disabled
        && (options.tls.is_some() || options.tls_secret.is_some())
    {
        tracing::warn!(
            "a TLS certificate is configured but transport-encryption is disabled: serving plain HTTP only (set --feature transport-encryption=permissive or strict)"
        );
    }
    let Some(files) = &options.tls else {
        return Ok(None);
    };
    let reloader =
        crate::tls::CertReloader::load(files.clone()).context("cannot use the TLS certificate")?;
    Ok(Some(reloader))
}

/// The serving certificate from its Secret in the store, read by name.
async fn load_tls_secret(
    secret: &crate::tls::SecretRef,
    store: &dyn ResourceStore,
) -> anyhow::Result<Arc<crate::tls::CertReloader>> {
    let kind = find_kind_by_name(None, "Secret").expect("Secret is registered");
    let object = store
        .get(kind, &secret.namespace, &secret.name)
        .await
        .with_context(|| format!("--tls-secret: cannot read {secret}"))?;
    crate::tls::CertReloader::from_secret(secret.clone(), object.as_ref())
        .context("--tls-secret: cannot use the TLS certificate")
}

/// Permissive and strict transport encryption need a certificate.
fn check_tls_mode(
    mode: crate::features::TransportEncryption,
    have_cert: bool,
) -> anyhow::Result<()> {
    use crate::features::TransportEncryption;
    let name = match mode {
        TransportEncryption::Disabled => return Ok(()),
        TransportEncryption::Permissive => "permissive",
        TransportEncryption::Strict => "strict",
    };
    if !have_cert {
        anyhow::bail!(
            "transport-encryption is {name} but no certificate is configured: give --tls-cert FILE --tls-key FILE (or --tls-secret NAMESPACE/NAME), or set transport-encryption=disabled"
        );
    }
    Ok(())
}

/// The https form of an http base URL (same host and port: one listener serves both).
fn https_url_of(base_url: &str) -> String {
    match base_url.strip_prefix("http://") {
        Some(rest) => format!("https://{rest}"),
        None => base_url.to_string(),
    }
}

/// While brokers are loaded at start (and once shutdown began): `/readyz` says so, and with
/// `refuse_events` (the ingress listener) every other request but `/healthz` gets 503 with
/// `Retry-After`, as for a channel that cannot take events, so senders retry instead of
/// taking a 404 for a broker not loaded yet. Answered here, ahead of request tracing, which
/// would log each as a failure.
async fn refuse_until_ready(
    axum::extract::State((ready, refuse_events)): axum::extract::State<(Arc<AtomicBool>, bool)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let path = request.uri().path();
    if ready.load(Ordering::Relaxed) || path == "/healthz" || (!refuse_events && path != "/readyz")
    {
        return next.run(request).await;
    }
    let message = if path == "/readyz" {
        "not ready: brokers are being loaded\n"
    } else {
        "rivulet is starting: brokers are being loaded\n"
    };
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::RETRY_AFTER, "1")],
        message,
    )
        .into_response()
}

/// A 404 that says what was asked for and what is served, rather than an empty body.
async fn unknown_path(
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> impl axum::response::IntoResponse {
    (
        axum::http::StatusCode::NOT_FOUND,
        format!(
            "no such path: {method} {}; ingress (--listen) is POST /{{namespace}}/{{broker}}; resources under /apis/... and /api/v1/..., the xRegistry view under /xregistry and the web console at /ui/ are on the API listener (--api-listen)\n",
            uri.path()
        ),
    )
}

async fn apply_manifests(store: &dyn ResourceStore, paths: &[PathBuf]) -> anyhow::Result<()> {
    for path in paths {
        let files = manifest_files(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        if files.is_empty() {
            anyhow::bail!(
                "config folder {} holds no .yaml, .yml or .json file",
                path.display()
            );
        }
        for file in files {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let parsed = parse_manifests_skipping(&text, &file.display().to_string())
                .map_err(anyhow::Error::msg)?;
            for skipped in &parsed.skipped {
                tracing::warn!("{skipped}");
            }
            for manifest in parsed.manifests {
                store
                    .apply(manifest.kind, manifest.object)
                    .await
                    .map_err(|e| anyhow::anyhow!("{}: {e}", manifest.origin))?;
            }
        }
    }
    Ok(())
}

async fn ensure_default_broker(store: &dyn ResourceStore) -> anyhow::Result<()> {
    let kind = find_kind_by_name(None, "Broker").expect("Broker is registered");
    if store.get(kind, "default", "default").await?.is_none() {
        store
            .apply(
                kind,
                json!({
                    "apiVersion": "eventing.knative.dev/v1",
                    "kind": "Broker",
                    "metadata": {"name": "default", "namespace": "default"},
                    "spec": {}
                }),
            )
            .await?;
    }
    Ok(())
}

/// Request tracing at debug level, 5xx answers included: the handlers log the causes of
/// their failures themselves (throttled where a fault fails every request), and a line per
/// failed request would flood the log during an outage. Metrics count every answer.
fn http_trace() -> tower_http::trace::TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    tower_http::trace::DefaultMakeSpan,
    tower_http::trace::DefaultOnRequest,
    tower_http::trace::DefaultOnResponse,
    tower_http::trace::DefaultOnBodyChunk,
    tower_http::trace::DefaultOnEos,
    tower_http::trace::DefaultOnFailure,
> {
    tower_http::trace::TraceLayer::new_for_http()
        .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG))
}
