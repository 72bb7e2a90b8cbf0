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
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{TlsError, TlsFiles, certificates, private_key, read};
use crate::features::{FeatureFlags, TransportEncryption};

/// The first byte of a TLS record carrying a handshake: a client speaking TLS starts with it,
/// no HTTP request line does.
const TLS_HANDSHAKE: u8 = 0x16;

/// How long a new connection may take to send its first byte and finish the TLS handshake;
/// an idle connection must not hold a shutdown up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The serving certificate as last read from its files. New handshakes get the newest one;
/// a new file that cannot be used keeps the previous certificate in service.
pub struct CertReloader {
    files: TlsFiles,
    current: RwLock<Arc<Loaded>>,
    /// The bytes last read (used or refused), so a bad file is reported once, not per poll.
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
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl CertReloader {
    /// Reads the files once; an error here is an error at start.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let (bytes, loaded) = load(&files)?;
        let (changed, _) = tokio::sync::watch::channel(0);
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(Arc::new(loaded)),
            last_seen: Mutex::new(bytes),
            changed,
        }))
    }

    /// Reads the files again: `Ok(true)` when a new certificate is now served, `Ok(false)`
    /// when nothing changed since the last read, an error when the new files cannot be used
    /// (the previous certificate stays).
    pub fn reload(&self) -> Result<bool, TlsError> {
        let bytes = raw(&self.files)?;
        {
            let mut last = self.last_seen.lock().expect("lock poisoned");
            if *last == bytes {
                return Ok(false);
            }
            *last = bytes;
        }
        let (_, loaded) = load(&self.files)?;
        *self.current.write().expect("lock poisoned") = Arc::new(loaded);
        self.changed.send_modify(|n| *n += 1);
        Ok(true)
    }

    /// Polls the files until `stop`, counting reloads and refused files.
    pub fn spawn_watch(
        self: &Arc<Self>,
        reloads: Counter,
        failures: Counter,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(this.files.reload_interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                match this.reload() {
                    Ok(true) => {
                        reloads.inc();
                        tracing::info!(cert = %this.files.cert.display(), "serving certificate reloaded");
                    }
                    Ok(false) => {}
                    Err(error) => {
                        failures.inc();
                        tracing::error!(%error, "new serving certificate refused; the previous one is still served");
                    }
                }
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

    /// A rustls server configuration whose certificate follows the files, offering HTTP/2
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

/// The three files' bytes together, to notice any change.
fn raw(files: &TlsFiles) -> Result<Vec<u8>, TlsError> {
    let mut bytes = read(&files.cert)?;
    bytes.extend(read(&files.key)?);
    if let Some(ca) = &files.ca {
        bytes.extend(read(ca)?);
    }
    Ok(bytes)
}

fn load(files: &TlsFiles) -> Result<(Vec<u8>, Loaded), TlsError> {
    let bytes = raw(files)?;
    let cert_name = files.cert.display().to_string();
    let key_name = files.key.display().to_string();
    let cert_pem = read(&files.cert)?;
    let chain = certificates(&cert_pem, &cert_name)?;
    let key = private_key(&read(&files.key)?, &key_name)?;
    let provider = rustls::crypto::ring::default_provider();
    let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| TlsError::Mismatch {
        cert: cert_name.clone(),
        key: key_name,
        message: e.to_string(),
    })?;
    let ca_pem = match &files.ca {
        Some(ca) => {
            let pem = read(ca)?;
            certificates(&pem, &ca.display().to_string())?;
            String::from_utf8_lossy(&pem).into_owned()
        }
        None => String::from_utf8_lossy(&cert_pem).into_owned(),
    };
    Ok((
        bytes,
        Loaded {
            key: Arc::new(key),
            ca_pem,
        },
    ))
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
/// `426 Upgrade Required`.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<CertReloader>>,
    features: FeatureFlags,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tls
        .as_ref()
        .map(|tls| tokio_rustls::TlsAcceptor::from(tls.server_config()));
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let graceful = GracefulShutdown::new();
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
        let mode = features.current().transport_encryption;
        if mode != TransportEncryption::Disabled && acceptor.is_none() && !warned {
            tracing::error!(
                ?mode,
                "transport-encryption asks for TLS but no certificate is configured (--tls-cert, --tls-key): https cannot be served"
            );
        }
        warned = mode != TransportEncryption::Disabled && acceptor.is_none();
        let task = ConnectionTask {
            stream,
            mode,
            acceptor: acceptor.clone(),
            app: app.clone(),
            builder: builder.clone(),
            watcher: graceful.watcher(),
        };
        tokio::spawn(async move {
            if let Err(error) = task.run().await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

struct ConnectionTask {
    stream: TcpStream,
    mode: TransportEncryption,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl ConnectionTask {
    async fn run(self) -> Result<(), BoxError> {
        let first = if self.mode == TransportEncryption::Disabled {
            None
        } else {
            let mut byte = [0u8; 1];
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.stream.peek(&mut byte)).await {
                Ok(Ok(0)) | Err(_) => return Ok(()),
                Ok(Ok(_)) => Some(byte[0]),
                Ok(Err(error)) => return Err(error.into()),
            }
        };
        let service = TowerToHyperService::new(self.app);
        match (
            classify(self.mode, self.acceptor.is_some(), first),
            self.acceptor,
        ) {
            (Connection::Tls, Some(acceptor)) => {
                let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(self.stream))
                    .await
                    .map_err(|_| "TLS handshake timed out")??;
                let conn = self
                    .builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service);
                self.watcher.watch(conn).await
            }
            (Connection::Refuse, _) | (Connection::Tls, None) => {
                let refuse = hyper::service::service_fn(refusal);
                let conn = self
                    .builder
                    .serve_connection(TokioIo::new(self.stream), refuse);
                self.watcher.watch(conn).await
            }
            (Connection::Plain, _) => {
                let conn = self
                    .builder
                    .serve_connection_with_upgrades(TokioIo::new(self.stream), service);
                self.watcher.watch(conn).await
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
        crate::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (cert, key, _) = self_signed();
        std::fs::write(&cert_path, &cert).unwrap();
        std::fs::write(&key_path, &key).unwrap();
        let reloader = CertReloader::load(TlsFiles::new(&cert_path, &key_path)).unwrap();
        let mut features = crate::features::Features::default();
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
