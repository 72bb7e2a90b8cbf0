//! Serving: the certificate that follows its files, and the accept loop that decides per
//! connection between plain HTTP, TLS and a refusal.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Pems, SecretRef, TlsError, TlsFiles, certificates, private_key};
use crate::listener::{Activity, ListenerGuard};
use rivulet_core::features::{FeatureFlags, TransportEncryption};

/// The first byte of a TLS record carrying a handshake: a client speaking TLS starts with it,
/// no HTTP request line does.
const TLS_HANDSHAKE: u8 = 0x16;

/// Where the serving certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// Files, polled for changes.
    Files(TlsFiles),
    /// A TLS Secret in the resource store, handed over by whoever sees it change
    /// ([`CertReloader::update_from_secret`]).
    Secret(SecretRef),
}

/// The serving certificate as last read from its source. New handshakes get the newest one;
/// a new certificate that cannot be used keeps the previous one in service.
pub struct CertReloader {
    source: CertSource,
    current: RwLock<Arc<Loaded>>,
    /// The bytes last seen (used or refused), so a bad one is reported once, not per poll.
    last_seen: Mutex<Vec<u8>>,
    changed: tokio::sync::watch::Sender<u64>,
}

struct Loaded {
    key: Arc<CertifiedKey>,
    /// PEM published as `CACerts`.
    ca_pem: String,
}

impl std::fmt::Debug for CertReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertReloader")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl CertReloader {
    /// Reads the files once; an error here is an error at start.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let pems = Pems::read(&files)?;
        Self::new(CertSource::Files(files), pems)
    }

    /// Takes the certificate from the Secret `object` (None: it does not exist); an error
    /// here is an error at start.
    pub fn from_secret(
        secret: SecretRef,
        object: Option<&serde_json::Value>,
    ) -> Result<Arc<Self>, TlsError> {
        let pems = secret.pems(object)?;
        let seen = secret_fingerprint(object);
        let this = Self::new(CertSource::Secret(secret), pems)?;
        *this.last_seen.lock().expect("lock poisoned") = seen;
        Ok(this)
    }

    fn new(source: CertSource, pems: Pems) -> Result<Arc<Self>, TlsError> {
        let seen = pems_fingerprint(&pems);
        let loaded = load(pems)?;
        let (changed, _) = tokio::sync::watch::channel(0);
        Ok(Arc::new(Self {
            source,
            current: RwLock::new(Arc::new(loaded)),
            last_seen: Mutex::new(seen),
            changed,
        }))
    }

    pub fn source(&self) -> &CertSource {
        &self.source
    }

    /// The Secret the certificate comes from, if it comes from one.
    pub fn secret(&self) -> Option<&SecretRef> {
        match &self.source {
            CertSource::Secret(secret) => Some(secret),
            CertSource::Files(_) => None,
        }
    }

    /// Reads the files again: `Ok(true)` when a new certificate is now served, `Ok(false)`
    /// when nothing changed since the last read (or the source is not files), an error when
    /// the new files cannot be used (the previous certificate stays).
    pub fn reload(&self) -> Result<bool, TlsError> {
        let CertSource::Files(files) = &self.source else {
            return Ok(false);
        };
        let pems = Pems::read(files)?;
        self.update(pems_fingerprint(&pems), || Ok(pems))
    }

    /// The certificate's Secret as it now is (None: deleted): `Ok(true)` when a new
    /// certificate is now served, `Ok(false)` when the Secret's values did not change since
    /// last seen (or the source is not this Secret), an error when the new values cannot be
    /// used (the previous certificate stays).
    pub fn update_from_secret(&self, object: Option<&serde_json::Value>) -> Result<bool, TlsError> {
        let Some(secret) = self.secret() else {
            return Ok(false);
        };
        self.update(secret_fingerprint(object), || secret.pems(object))
    }

    /// Puts the certificate of `pems` in service unless `seen` was already seen.
    fn update(
        &self,
        seen: Vec<u8>,
        pems: impl FnOnce() -> Result<Pems, TlsError>,
    ) -> Result<bool, TlsError> {
        {
            let mut last = self.last_seen.lock().expect("lock poisoned");
            if *last == seen {
                return Ok(false);
            }
            *last = seen;
        }
        let loaded = load(pems()?)?;
        *self.current.write().expect("lock poisoned") = Arc::new(loaded);
        self.changed.send_modify(|n| *n += 1);
        Ok(true)
    }

    /// Counts and logs the outcome of a reload or update.
    pub fn report(&self, outcome: Result<bool, TlsError>, reloads: &Counter, failures: &Counter) {
        match outcome {
            Ok(true) => {
                reloads.inc();
                tracing::info!(source = ?self.source, "serving certificate reloaded");
            }
            Ok(false) => {}
            Err(error) => {
                failures.inc();
                tracing::error!(%error, "new serving certificate refused; the previous one is still served");
            }
        }
    }

    /// Polls the files until `stop`, counting reloads and refused files. A Secret is not
    /// polled here: its changes come through the resource store.
    pub fn spawn_watch(
        self: &Arc<Self>,
        reloads: Counter,
        failures: Counter,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let CertSource::Files(files) = &this.source else {
                return;
            };
            let mut ticks = tokio::time::interval(files.reload_interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                this.report(this.reload(), &reloads, &failures);
            }
        })
    }

    /// The CA certificates (PEM) that clients should trust for this server.
    pub fn ca_pem(&self) -> String {
        self.current.read().expect("lock poisoned").ca_pem.clone()
    }

    /// Changes each time a new certificate is put in service.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A rustls server configuration whose certificate follows its source, offering HTTP/2
    /// and HTTP/1.1.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl ResolvesServerCert for CertReloader {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("lock poisoned").key.clone())
    }
}

/// The three PEMs' bytes together, to notice any change.
fn pems_fingerprint(pems: &Pems) -> Vec<u8> {
    let mut bytes = pems.cert.bytes.clone();
    bytes.extend(&pems.key.bytes);
    if let Some(ca) = &pems.ca {
        bytes.extend(&ca.bytes);
    }
    bytes
}

/// A Secret's values, to notice any change (empty: no Secret). Metadata changes (labels,
/// resourceVersion) do not count.
fn secret_fingerprint(object: Option<&serde_json::Value>) -> Vec<u8> {
    object.map_or_else(Vec::new, |object| {
        let values = [object.get("data"), object.get("stringData")];
        serde_json::to_vec(&values).unwrap_or_default()
    })
}

fn load(pems: Pems) -> Result<Loaded, TlsError> {
    let chain = certificates(&pems.cert.bytes, &pems.cert.origin)?;
    let key = private_key(&pems.key.bytes, &pems.key.origin)?;
    let provider = rustls::crypto::ring::default_provider();
    let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| TlsError::Mismatch {
        cert: pems.cert.origin.clone(),
        key: pems.key.origin.clone(),
        message: e.to_string(),
    })?;
    let ca_pem = match &pems.ca {
        Some(ca) => {
            certificates(&ca.bytes, &ca.origin)?;
            String::from_utf8_lossy(&ca.bytes).into_owned()
        }
        None => String::from_utf8_lossy(&pems.cert.bytes).into_owned(),
    };
    Ok(Loaded {
        key: Arc::new(key),
        ca_pem,
    })
}

/// What to do with one accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    Plain,
    Tls,
    /// Plain HTTP where only HTTPS is served: answered with a refusal, then closed.
    Refuse,
}

/// Decides from the transport-encryption mode, whether a certificate is loaded and the
/// connection's first byte (`None`: not looked at).
pub fn classify(mode: TransportEncryption, have_cert: bool, first: Option<u8>) -> Connection {
    let hello = have_cert && first == Some(TLS_HANDSHAKE);
    match mode {
        TransportEncryption::Disabled => Connection::Plain,
        TransportEncryption::Permissive if hello => Connection::Tls,
        TransportEncryption::Permissive => Connection::Plain,
        TransportEncryption::Strict if hello => Connection::Tls,
        TransportEncryption::Strict => Connection::Refuse,
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then lets requests in flight
/// finish. Per connection, by the `transport-encryption` flag in force when it arrives:
/// `disabled` serves plain HTTP (a configured certificate is then unused); `permissive`
/// serves TLS to clients whose first byte opens a TLS handshake and plain HTTP to the rest,
/// on the same port; `strict` serves TLS only and answers plain HTTP with
/// `426 Upgrade Required`. `guard` bounds connections, their idleness and their requests.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<CertReloader>>,
    features: FeatureFlags,
    guard: ListenerGuard,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tls
        .as_ref()
        .map(|tls| tokio_rustls::TlsAcceptor::from(tls.server_config()));
    let builder = Arc::new(guard.http_builder());
    let closing = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    // The flags can change at run time (config-features): say once that TLS was asked for
    // without a certificate, rather than per refused connection.
    let mut warned = false;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Over the limit the connection is closed here, before it costs a task.
        let Some(slot) = guard.admit(peer) else {
            drop(stream);
            continue;
        };
        let mode = features.current().transport_encryption;
        if mode != TransportEncryption::Disabled && acceptor.is_none() && !warned {
            tracing::error!(
                ?mode,
                "transport-encryption asks for TLS but no certificate is configured (--tls-cert and --tls-key, or --tls-secret): https cannot be served"
            );
        }
        warned = mode != TransportEncryption::Disabled && acceptor.is_none();
        let task = ConnectionTask {
            stream,
            peer,
            mode,
            acceptor: acceptor.clone(),
            app: app.clone(),
            builder: builder.clone(),
            guard: guard.clone(),
            closing: closing.clone(),
        };
        connections.spawn(async move {
            if let Err(error) = task.run().await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    closing.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

struct ConnectionTask {
    stream: TcpStream,
    peer: std::net::SocketAddr,
    mode: TransportEncryption,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    guard: ListenerGuard,
    /// Cancelled when the server stops: connections close once their requests are answered.
    closing: CancellationToken,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl ConnectionTask {
    async fn run(self) -> Result<(), BoxError> {
        // The first byte and the TLS handshake count against the time to send headers.
        let handshake_timeout = self.guard.limits().header_read_timeout;
        let first = if self.mode == TransportEncryption::Disabled {
            None
        } else {
            let mut byte = [0u8; 1];
            match tokio::time::timeout(handshake_timeout, self.stream.peek(&mut byte)).await {
                Ok(Ok(0)) | Err(_) => return Ok(()),
                Ok(Ok(_)) => Some(byte[0]),
                Ok(Err(error)) => return Err(error.into()),
            }
        };
        let activity = Arc::new(Activity::default());
        let service = self.guard.service(self.app, activity.clone(), self.peer);
        let guard = &self.guard;
        match (
            classify(self.mode, self.acceptor.is_some(), first),
            self.acceptor,
        ) {
            (Connection::Tls, Some(acceptor)) => {
                let stream = tokio::time::timeout(handshake_timeout, acceptor.accept(self.stream))
                    .await
                    .map_err(|_| "TLS handshake timed out")??;
                let conn = self
                    .builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service);
                guard.drive(conn, &activity, &self.closing).await
            }
            (Connection::Refuse, _) | (Connection::Tls, None) => {
                let refuse = hyper::service::service_fn(refusal);
                let conn = self
                    .builder
                    .serve_connection(TokioIo::new(self.stream), refuse);
                guard.drive(conn, &activity, &self.closing).await
            }
            (Connection::Plain, _) => {
                let conn = self
                    .builder
                    .serve_connection_with_upgrades(TokioIo::new(self.stream), service);
                guard.drive(conn, &activity, &self.closing).await
            }
        }
    }
}

/// The answer to plain HTTP where HTTPS is required.
async fn refusal(request: Request<hyper::body::Incoming>) -> Result<Response<Body>, Infallible> {
    let message = "HTTPS is required: transport-encryption is strict and this server does not \
                   accept plain HTTP; connect with https:// (trusting the CA in the address's \
                   CACerts)\n";
    let mut response = Response::builder()
        .status(StatusCode::UPGRADE_REQUIRED)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8");
    // Connection-level headers exist in HTTP/1 only.
    if request.version() < http::Version::HTTP_2 {
        response = response
            .header(http::header::UPGRADE, "TLS/1.3, HTTP/1.1")
            .header(http::header::CONNECTION, "close");
    }
    Ok(response
        .body(Body::from(message))
        .expect("a static response builds"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use TransportEncryption::*;

    #[test]
    fn the_first_byte_decides_in_permissive_mode() {
        assert_eq!(classify(Permissive, true, Some(0x16)), Connection::Tls);
        assert_eq!(classify(Permissive, true, Some(b'P')), Connection::Plain);
        assert_eq!(classify(Permissive, true, Some(b'G')), Connection::Plain);
        // Without a certificate there is nothing to do TLS with.
        assert_eq!(classify(Permissive, false, Some(0x16)), Connection::Plain);
    }

    #[test]
    fn strict_mode_refuses_anything_but_a_tls_handshake() {
        assert_eq!(classify(Strict, true, Some(0x16)), Connection::Tls);
        assert_eq!(classify(Strict, true, Some(b'P')), Connection::Refuse);
        assert_eq!(classify(Strict, true, Some(0)), Connection::Refuse);
        assert_eq!(classify(Strict, false, Some(0x16)), Connection::Refuse);
    }

    /// A self-signed certificate for localhost: (cert PEM, key PEM, DER).
    fn self_signed() -> (String, String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    fn served(reloader: &CertReloader) -> Vec<u8> {
        reloader.current.read().unwrap().key.cert[0].to_vec()
    }

    #[test]
    fn reload_serves_new_files_and_keeps_the_old_certificate_on_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (cert, key, first_der) = self_signed();
        std::fs::write(&cert_path, &cert).unwrap();
        std::fs::write(&key_path, &key).unwrap();
        let reloader = CertReloader::load(TlsFiles::new(&cert_path, &key_path)).unwrap();
        assert_eq!(served(&reloader), first_der);
        assert_eq!(
            reloader.ca_pem(),
            cert,
            "without --tls-ca the chain is published"
        );
        assert!(
            !reloader.reload().unwrap(),
            "unchanged files are not a reload"
        );

        let (cert, key, second_der) = self_signed();
        std::fs::write(&cert_path, &cert).unwrap();
        std::fs::write(&key_path, &key).unwrap();
        let changes = reloader.subscribe();
        assert!(reloader.reload().unwrap());
        assert!(changes.has_changed().unwrap());
        assert_eq!(served(&reloader), second_der);

        // A key that does not fit the certificate: refused, the second one stays.
        let (_, other_key, _) = self_signed();
        std::fs::write(&key_path, &other_key).unwrap();
        let error = reloader.reload().unwrap_err();
        assert!(matches!(error, TlsError::Mismatch { .. }), "{error}");
        assert_eq!(served(&reloader), second_der);
        // Not PEM at all: refused too, and reported once rather than on every poll.
        std::fs::write(&cert_path, "garbage").unwrap();
        let error = reloader.reload().unwrap_err();
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
        assert!(!reloader.reload().unwrap());
        assert_eq!(served(&reloader), second_der);
    }

    fn tls_secret(cert: &str, key: &str) -> serde_json::Value {
        use base64::Engine as _;
        let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"namespace": "ns", "name": "serving"},
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": b64(cert), "tls.key": b64(key)}
        })
    }

    #[test]
    fn a_secret_update_serves_the_new_certificate_and_a_bad_one_keeps_the_old() {
        let secret: SecretRef = "ns/serving".parse().unwrap();
        let (cert, key, first_der) = self_signed();
        let reloader =
            CertReloader::from_secret(secret.clone(), Some(&tls_secret(&cert, &key))).unwrap();
        assert_eq!(served(&reloader), first_der);
        assert_eq!(reloader.ca_pem(), cert);
        assert_eq!(reloader.secret(), Some(&secret));
        assert!(
            !reloader
                .update_from_secret(Some(&tls_secret(&cert, &key)))
                .unwrap(),
            "the same values are not a reload"
        );
        assert!(
            !reloader.reload().unwrap(),
            "a Secret is not polled as files"
        );

        let (cert, key, second_der) = self_signed();
        let mut second = tls_secret(&cert, &key);
        assert!(reloader.update_from_secret(Some(&second)).unwrap());
        assert_eq!(served(&reloader), second_der);

        // No tls.key: refused naming the Secret and the key, once; the second one stays.
        second["data"].as_object_mut().unwrap().remove("tls.key");
        let error = reloader.update_from_secret(Some(&second)).unwrap_err();
        assert!(
            error.to_string().contains("Secret ns/serving")
                && error.to_string().contains("tls.key"),
            "{error}"
        );
        assert!(!reloader.update_from_secret(Some(&second)).unwrap());
        // Not base64.
        second["data"]["tls.key"] = "%%%".into();
        let error = reloader.update_from_secret(Some(&second)).unwrap_err();
        assert!(error.to_string().contains("not base64"), "{error}");
        // Deleted.
        let error = reloader.update_from_secret(None).unwrap_err();
        assert!(matches!(error, TlsError::SecretMissing { .. }), "{error}");
        assert_eq!(served(&reloader), second_der);

        // stringData (plain text) is read too, and a ca.crt is published as the CA.
        let (cert, key, third_der) = self_signed();
        let (ca, _, _) = self_signed();
        let third = serde_json::json!({
            "metadata": {"namespace": "ns", "name": "serving"},
            "stringData": {"tls.crt": cert, "tls.key": key, "ca.crt": ca}
        });
        assert!(reloader.update_from_secret(Some(&third)).unwrap());
        assert_eq!(served(&reloader), third_der);
        assert_eq!(reloader.ca_pem(), ca);
    }

    #[test]
    fn a_missing_or_incomplete_secret_at_start_is_an_error_naming_it() {
        let secret: SecretRef = "ns/serving".parse().unwrap();
        let error = CertReloader::from_secret(secret.clone(), None).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("Secret ns/serving does not exist"),
            "{error}"
        );
        let (cert, _, _) = self_signed();
        let error =
            CertReloader::from_secret(secret, Some(&tls_secret(&cert, "not a key"))).unwrap_err();
        assert!(
            error
                .to_string()
                .contains(r#"Secret ns/serving data["tls.key"]"#),
            "{error}"
        );
    }

    #[test]
    fn a_secret_is_named_namespace_slash_name() {
        let secret: SecretRef = "knative-eventing/broker-tls".parse().unwrap();
        assert_eq!(secret.namespace, "knative-eventing");
        assert_eq!(secret.name, "broker-tls");
        for bad in ["broker-tls", "/x", "ns/", "a/b/c", "NS/x"] {
            let error = bad.parse::<SecretRef>().unwrap_err();
            assert!(
                error.to_string().contains("NAMESPACE/NAME"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn a_bad_certificate_at_start_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let (cert, _, _) = self_signed();
        std::fs::write(&cert_path, &cert).unwrap();
        std::fs::write(&key_path, "not a key").unwrap();
        let error = CertReloader::load(TlsFiles::new(&cert_path, &key_path)).unwrap_err();
        assert!(error.to_string().contains("k.pem"), "{error}");
        let missing =
            CertReloader::load(TlsFiles::new(dir.path().join("none"), &key_path)).unwrap_err();
        assert!(missing.to_string().contains("cannot read"), "{missing}");
    }

    #[tokio::test]
    async fn strict_mode_answers_plain_http_with_426_and_serves_tls_on_the_same_port() {
        rivulet_core::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (cert, key, _) = self_signed();
        std::fs::write(&cert_path, &cert).unwrap();
        std::fs::write(&key_path, &key).unwrap();
        let reloader = CertReloader::load(TlsFiles::new(&cert_path, &key_path)).unwrap();
        let mut features = rivulet_core::features::Features::default();
        features.set("transport-encryption", "strict").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            app,
            Some(reloader),
            FeatureFlags::new(features),
            ListenerGuard::new(
                "test",
                &crate::listener::ListenerLimits::default(),
                64,
                &rivulet_core::metrics::Metrics::new(),
            ),
            stop.clone().cancelled_owned(),
        ));
        let plain = reqwest::get(format!("http://127.0.0.1:{port}/"))
            .await
            .unwrap();
        assert_eq!(plain.status(), StatusCode::UPGRADE_REQUIRED);
        assert!(plain.text().await.unwrap().contains("HTTPS is required"));
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(cert.as_bytes()).unwrap()])
            .build()
            .unwrap();
        let secure = client
            .get(format!("https://localhost:{port}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(secure.text().await.unwrap(), "hello");
        stop.cancel();
        server.await.unwrap().unwrap();
    }

    #[test]
    fn disabled_mode_serves_plain_even_with_a_certificate() {
        assert_eq!(classify(Disabled, true, Some(0x16)), Connection::Plain);
        assert_eq!(classify(Disabled, true, None), Connection::Plain);
    }
}
