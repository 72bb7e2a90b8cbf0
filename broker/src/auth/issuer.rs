//! Rivulet as its own OIDC issuer: an ES256 key kept in the data folder, its JWKS and an
//! OpenID discovery document served on the ingress listener, and tokens minted for Rivulet's
//! own senders.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::response::IntoResponse;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};

/// File name of the signing key (PKCS#8 DER) in the data folder.
pub const KEY_FILE: &str = "oidc-signing-key.p8";
/// Where the discovery document and the JWKS are served.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
pub const JWKS_PATH: &str = "/openid/v1/jwks";

#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("signing key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("cannot sign a token: {0}")]
    Sign(String),
}

/// The issuer: its URL, key and public JWK.
pub struct LocalIssuer {
    url: String,
    kid: String,
    key: EncodingKey,
    jwk: Value,
}

impl std::fmt::Debug for LocalIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalIssuer")
            .field("url", &self.url)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl LocalIssuer {
    /// Loads the key from `data_dir`, making one (mode 0600) on first start.
    pub fn load_or_create(data_dir: &Path, url: &str) -> Result<Self, IssuerError> {
        let path = data_dir.join(KEY_FILE);
        let error = |message: String| IssuerError::Key {
            path: path.clone(),
            message,
        };
        let der = match std::fs::read(&path) {
            Ok(der) => der,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let der = EcdsaKeyPair::generate_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    &SystemRandom::new(),
                )
                .map_err(|_| error("cannot generate a key".into()))?
                .as_ref()
                .to_vec();
                rivulet_store::replace_private(&path, &der).map_err(|e| error(e.to_string()))?;
                der
            }
            Err(e) => return Err(error(e.to_string())),
        };
        Self::from_pkcs8(&der, url).map_err(error)
    }

    /// An issuer with a PKCS#8 P-256 key.
    pub fn from_pkcs8(der: &[u8], url: &str) -> Result<Self, String> {
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new())
                .map_err(|_| "not a PKCS#8 P-256 key".to_string())?;
        let public = pair.public_key().as_ref();
        // An uncompressed point: 0x04, then x and y of 32 bytes each.
        if public.len() != 65 {
            return Err("unexpected public key encoding".into());
        }
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let digest = ring::digest::digest(&ring::digest::SHA256, public);
        let kid = b64.encode(&digest.as_ref()[..12]);
        let jwk = json!({
            "kty": "EC",
            "crv": "P-256",
            "alg": "ES256",
            "use": "sig",
            "kid": kid,
            "x": b64.encode(&public[1..33]),
            "y": b64.encode(&public[33..65]),
        });
        Ok(Self {
            url: url.trim_end_matches('/').to_string(),
            kid,
            key: EncodingKey::from_ec_der(der),
            jwk,
        })
    }

    /// The issuer URL (`iss` of its tokens).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn jwks(&self) -> Value {
        json!({"keys": [self.jwk]})
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    pub fn discovery(&self) -> Value {
        json!({
            "issuer": self.url,
            "jwks_uri": format!("{}{JWKS_PATH}", self.url),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }

    /// A token for `subject` and `audience`, valid for `lifetime`; with its expiry.
    pub fn mint(
        &self,
        subject: &str,
        audience: &str,
        lifetime: Duration,
    ) -> Result<(String, SystemTime), IssuerError> {
        let now = SystemTime::now();
        let issued = now
            .duration_since(UNIX_EPOCH)
            .map_err(|e| IssuerError::Sign(e.to_string()))?
            .as_secs();
        let expires = issued + lifetime.as_secs();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let claims = json!({
            "iss": self.url,
            "sub": subject,
            "aud": audience,
            "iat": issued,
            "nbf": issued,
            "exp": expires,
        });
        let token = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| IssuerError::Sign(e.to_string()))?;
        Ok((token, UNIX_EPOCH + Duration::from_secs(expires)))
    }

    /// The discovery document and JWKS routes.
    pub fn router(self: Arc<Self>) -> axum::Router {
        let discovery = self.discovery();
        let jwks = self.jwks();
        axum::Router::new()
            .route(
                DISCOVERY_PATH,
                axum::routing::get(move || {
                    let body = discovery.clone();
                    async move { axum::Json(body).into_response() }
                }),
            )
            .route(
                JWKS_PATH,
                axum::routing::get(move || {
                    let body = jwks.clone();
                    async move {
                        (
                            [(axum::http::header::CONTENT_TYPE, "application/jwk-set+json")],
                            body.to_string(),
                        )
                            .into_response()
                    }
                }),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let first = LocalIssuer::load_or_create(dir.path(), "http://127.0.0.1:1/").unwrap();
        let again = LocalIssuer::load_or_create(dir.path(), "http://127.0.0.1:1").unwrap();
        assert_eq!(first.jwk(), again.jwk(), "the same key after a restart");
        assert_eq!(first.url(), "http://127.0.0.1:1");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let discovery = first.discovery();
        assert_eq!(discovery["jwks_uri"], "http://127.0.0.1:1/openid/v1/jwks");
        let (token, _) = first.mint("me", "aud", Duration::from_secs(60)).unwrap();
        assert_eq!(token.split('.').count(), 3);
    }
}
