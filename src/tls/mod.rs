//! TLS with rustls (ring): the serving certificate, reloaded when its files change
//! ([`CertReloader`]); one listener that speaks plain HTTP, HTTPS or both per Knative's
//! `transport-encryption` flag ([`serve`]); and the trust used when delivering to https
//! targets ([`TrustBundles`], [`ClientCache`]).

use std::path::PathBuf;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

mod client;
mod server;

pub use client::{BuildClient, ClientCache, TRUST_BUNDLE_LABEL, TrustBundles, parse_ca_bundle};
pub use server::{CertReloader, Connection, classify, serve};

/// The files of the serving certificate, as given to `--tls-cert`, `--tls-key` and
/// `--tls-ca`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM of the CA that signed the certificate, published as `CACerts` in https
    /// addresses; without it the certificate chain itself is published.
    pub ca: Option<PathBuf>,
    /// How often the files are read again to see whether they changed.
    pub reload_interval: std::time::Duration,
}

impl TlsFiles {
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            ca: None,
            reload_interval: std::time::Duration::from_secs(2),
        }
    }
}

/// Why a certificate, key or CA bundle cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: String },
    #[error("{path}: not a PEM private key: {message}")]
    BadKey { path: String, message: String },
    #[error("{path}: the PEM is malformed: {message}")]
    BadPem { path: String, message: String },
    #[error("the key in {key} does not fit the certificate in {cert}: {message}")]
    Mismatch {
        cert: String,
        key: String,
        message: String,
    },
    #[error("{0}")]
    Config(String),
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Every certificate of a PEM text; `origin` names it in errors.
pub(crate) fn certificates(
    pem: &[u8],
    origin: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: origin.to_string(),
        });
    }
    Ok(certs)
}

fn private_key(pem: &[u8], origin: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::BadKey {
        path: origin.to_string(),
        message: e.to_string(),
    })
}
