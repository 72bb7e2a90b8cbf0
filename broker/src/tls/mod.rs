//! TLS with rustls (ring): the serving certificate, reloaded when its files or its Secret
//! change ([`CertReloader`]); one listener that speaks plain HTTP, HTTPS or both per Knative's
//! `transport-encryption` flag ([`serve`]); and the trust used when delivering to https
//! targets ([`TrustBundles`], [`ClientCache`]).

use std::path::PathBuf;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

mod client;
mod server;

pub use client::{BuildClient, ClientCache, TRUST_BUNDLE_LABEL, TrustBundles, parse_ca_bundle};
pub use server::{CertReloader, CertSource, Connection, classify, serve};

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

/// A Kubernetes TLS Secret (`kubernetes.io/tls`) holding the serving certificate, as given to
/// `--tls-secret NAMESPACE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret {}/{}", self.namespace, self.name)
    }
}

impl std::str::FromStr for SecretRef {
    type Err = TlsError;

    fn from_str(text: &str) -> Result<Self, TlsError> {
        let valid = |part: &str| {
            !part.is_empty()
                && part.len() <= 253
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        };
        match text.split_once('/') {
            Some((namespace, name)) if valid(namespace) && valid(name) => Ok(Self {
                namespace: namespace.to_string(),
                name: name.to_string(),
            }),
            _ => Err(TlsError::Config(format!(
                "{text:?} is not NAMESPACE/NAME of a Secret (lowercase letters, digits, '-' and '.')"
            ))),
        }
    }
}

/// The keys of a Kubernetes TLS Secret.
pub const SECRET_CERT_KEY: &str = "tls.crt";
pub const SECRET_KEY_KEY: &str = "tls.key";
pub const SECRET_CA_KEY: &str = "ca.crt";

impl SecretRef {
    /// The PEMs of the Secret `object` (None: it does not exist). Values come from `data`
    /// (base64, as Kubernetes keeps them) or `stringData` (plain, which wins, as Kubernetes
    /// folds it over `data` on write).
    pub(crate) fn pems(&self, object: Option<&serde_json::Value>) -> Result<Pems, TlsError> {
        let object = object.ok_or_else(|| TlsError::SecretMissing {
            secret: self.to_string(),
        })?;
        let value = |key: &str| -> Result<Option<Pem>, TlsError> {
            let origin = format!("{self} data[{key:?}]");
            let bytes =
                rivulet_core::resources::secret::secret_value(object, key).map_err(|_| {
                    TlsError::BadPem {
                        path: origin.clone(),
                        message: "the value is not base64".into(),
                    }
                })?;
            Ok(bytes.map(|bytes| Pem { origin, bytes }))
        };
        let required = |key: &str| {
            value(key)?.ok_or_else(|| TlsError::SecretKeyMissing {
                secret: self.to_string(),
                key: key.to_string(),
            })
        };
        Ok(Pems {
            cert: required(SECRET_CERT_KEY)?,
            key: required(SECRET_KEY_KEY)?,
            ca: value(SECRET_CA_KEY)?,
        })
    }
}

/// One PEM text and the name errors give it (a file path, or a Secret's key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pem {
    pub origin: String,
    pub bytes: Vec<u8>,
}

/// The certificate chain, key and optional CA as read from their source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pems {
    pub cert: Pem,
    pub key: Pem,
    pub ca: Option<Pem>,
}

impl Pems {
    pub(crate) fn read(files: &TlsFiles) -> Result<Self, TlsError> {
        let pem = |path: &std::path::Path| -> Result<Pem, TlsError> {
            Ok(Pem {
                origin: path.display().to_string(),
                bytes: read(path)?,
            })
        };
        Ok(Self {
            cert: pem(&files.cert)?,
            key: pem(&files.key)?,
            ca: files.ca.as_deref().map(pem).transpose()?,
        })
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
    #[error("{secret} does not exist: it must hold the serving certificate (tls.crt, tls.key)")]
    SecretMissing { secret: String },
    #[error("{secret} has no data[{key:?}]: a TLS Secret needs tls.crt and tls.key")]
    SecretKeyMissing { secret: String, key: String },
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
