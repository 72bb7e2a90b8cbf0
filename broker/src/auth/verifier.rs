//! Verifying bearer JWTs: the issuer must be trusted, its keys come from OpenID discovery
//! (`{issuer}/.well-known/openid-configuration` → `jwks_uri`), fetched with a bounded body
//! and a timeout and cached; an unknown `kid` refetches them, at most once per refresh
//! interval so that senders cannot force a storm of fetches. The algorithm must be the one
//! of the key that signed (no `none`, no HMAC, no RSA algorithm with an EC key).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Mutex;

use super::AuthError;
use super::issuer::{DISCOVERY_PATH, LocalIssuer};
use crate::egress::Egress;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECONDS: u64 = 30;
/// Largest discovery document and JWKS read.
const DOCUMENT_LIMIT: usize = 256 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The claims Rivulet reads from a verified token.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
}

/// One key of an issuer: what verifies and the algorithms it may be used with.
#[derive(Clone)]
struct Key {
    decoding: DecodingKey,
    algorithms: Vec<Algorithm>,
}

#[derive(Default)]
struct IssuerKeys {
    by_kid: HashMap<String, Key>,
    /// Keys without a `kid`, used when a token names none.
    unnamed: Vec<Key>,
    fetched: Option<Instant>,
}

/// Verifies tokens for the issuers it trusts (always including Rivulet itself).
pub struct Verifier {
    local: Arc<LocalIssuer>,
    local_key: Key,
    trusted: HashSet<String>,
    /// Fetches discovery documents and keys under the egress policy.
    http: reqwest::Client,
    egress: Arc<Egress>,
    refresh: Duration,
    cache: Mutex<HashMap<String, IssuerKeys>>,
}

impl Verifier {
    /// Trusts `local` and `issuers`; refetches an issuer's keys on an unknown `kid` at most
    /// once per `refresh`; fetches only where `egress` allows.
    pub fn new(
        local: Arc<LocalIssuer>,
        issuers: &[String],
        refresh: Duration,
        egress: Arc<Egress>,
    ) -> Self {
        rivulet_core::install_crypto_provider();
        let http = egress
            .client_builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .expect("a client with these settings builds");
        let local_key = serde_json::from_value::<Jwk>(local.jwk().clone())
            .ok()
            .and_then(|jwk| key_of(&jwk))
            .expect("Rivulet's own JWK is valid");
        Verifier {
            trusted: issuers
                .iter()
                .map(|i| i.trim_end_matches('/').to_string())
                .collect(),
            local,
            local_key,
            http,
            egress,
            refresh,
            cache: Mutex::default(),
        }
    }

    /// Checks `token`'s signature, `iss`, `aud` (must equal `audience`), `exp` and `nbf`.
    pub async fn verify(&self, token: &str, audience: &str) -> Result<Claims, AuthError> {
        let invalid = |m: String| AuthError::InvalidToken(m);
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            invalid(format!(
                "the token header is not a usable JWS header ({e}); alg must be an asymmetric algorithm such as ES256 or RS256"
            ))
        })?;
        if matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(invalid(format!(
                "algorithm {:?} is not accepted: tokens must be signed with the issuer's public-key algorithm",
                header.alg
            )));
        }
        let unverified: Claims = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|e| invalid(format!("the token claims cannot be read: {e}")))?;
        let issuer = unverified.iss.trim_end_matches('/').to_string();
        let key = if issuer == self.local.url() {
            self.local_key.clone()
        } else if self.trusted.contains(&issuer) {
            self.key_for(&issuer, header.kid.as_deref()).await?
        } else {
            return Err(invalid(format!("issuer {issuer} is not trusted")));
        };
        if !key.algorithms.contains(&header.alg) {
            return Err(invalid(format!(
                "algorithm {:?} does not match the issuer's key (which signs with {:?})",
                header.alg, key.algorithms
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_audience(&[audience]);
        validation.set_issuer(&[unverified.iss.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data =
            jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                invalid(match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired".to_string(),
                    ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
                    ErrorKind::InvalidAudience => {
                        format!("the token's audience is not {audience}")
                    }
                    ErrorKind::InvalidIssuer => "the token's issuer does not match".into(),
                    ErrorKind::InvalidSignature => "the signature does not verify".into(),
                    ErrorKind::MissingRequiredClaim(claim) => {
                        format!("the token has no {claim} claim")
                    }
                    other => format!("the token does not verify: {other:?}"),
                })
            })?;
        Ok(data.claims)
    }

    /// The key `kid` of `issuer`, fetching the issuer's keys when not known yet, or when the
    /// `kid` is unknown and the last fetch is older than the refresh interval.
    async fn key_for(&self, issuer: &str, kid: Option<&str>) -> Result<Key, AuthError> {
        let mut cache = self.cache.lock().await;
        let keys = cache.entry(issuer.to_string()).or_default();
        if let Some(key) = pick(keys, kid) {
            return Ok(key);
        }
        let may_fetch = keys.fetched.is_none_or(|at| at.elapsed() >= self.refresh);
        if !may_fetch {
            return Err(unknown_key(issuer, kid));
        }
        // Counted as a fetch even when it fails, so a broken issuer is not hammered either.
        keys.fetched = Some(Instant::now());
        match self.fetch_keys(issuer).await {
            Ok((by_kid, unnamed)) => {
                keys.by_kid = by_kid;
                keys.unnamed = unnamed;
            }
            Err(message) => {
                tracing::warn!(%issuer, %message, "cannot fetch the issuer's keys");
                return Err(AuthError::InvalidToken(format!(
                    "the keys of issuer {issuer} cannot be fetched: {message}"
                )));
            }
        }
        pick(keys, kid).ok_or_else(|| unknown_key(issuer, kid))
    }

    async fn fetch_keys(&self, issuer: &str) -> Result<(HashMap<String, Key>, Vec<Key>), String> {
        let discovery = self
            .fetch_json(&format!("{issuer}{DISCOVERY_PATH}"))
            .await?;
        let announced = discovery
            .get("issuer")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if announced.trim_end_matches('/') != issuer {
            return Err(format!(
                "the discovery document names issuer {announced:?}, not {issuer}"
            ));
        }
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or("the discovery document has no jwks_uri")?;
        let jwks = self.fetch_json(jwks_uri).await?;
        let list = jwks
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("the JWKS has no keys array")?;
        let mut by_kid = HashMap::new();
        let mut unnamed = Vec::new();
        for value in list {
            // Keys Rivulet cannot use (symmetric, encryption, unknown curves) are skipped.
            let Ok(jwk) = serde_json::from_value::<Jwk>(value.clone()) else {
                continue;
            };
            let Some(key) = key_of(&jwk) else { continue };
            match &jwk.common.key_id {
                Some(kid) => {
                    by_kid.insert(kid.clone(), key);
                }
                None => unnamed.push(key),
            }
        }
        Ok((by_kid, unnamed))
    }

    async fn fetch_json(&self, url: &str) -> Result<Value, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url} is not a URL: {e}"))?;
        // IP-literal URLs never reach the policy's resolver.
        self.egress
            .check_url(&parsed)
            .map_err(|e| format!("GET {url}: {e}"))?;
        let mut response = self
            .http
            .get(parsed)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url} answered {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?
        {
            if body.len() + chunk.len() > DOCUMENT_LIMIT {
                return Err(format!("GET {url}: larger than {DOCUMENT_LIMIT} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| format!("GET {url}: not JSON: {e}"))
    }
}

fn pick(keys: &IssuerKeys, kid: Option<&str>) -> Option<Key> {
    match kid {
        Some(kid) => keys.by_kid.get(kid).cloned(),
        None if keys.by_kid.len() + keys.unnamed.len() == 1 => keys
            .by_kid
            .values()
            .chain(keys.unnamed.iter())
            .next()
            .cloned(),
        None => None,
    }
}

fn unknown_key(issuer: &str, kid: Option<&str>) -> AuthError {
    AuthError::InvalidToken(match kid {
        Some(kid) => format!("issuer {issuer} has no key with kid {kid:?}"),
        None => format!("the token names no kid and issuer {issuer} has several keys"),
    })
}

/// The verifying key of a JWK and the algorithms it may verify: those its type allows,
/// narrowed to its `alg` when it names one. Symmetric keys are never used.
fn key_of(jwk: &Jwk) -> Option<Key> {
    let allowed: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        _ => return None,
    };
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature)
    {
        return None;
    }
    let algorithms = match jwk.common.key_algorithm {
        None => allowed,
        Some(named) => {
            let named = named_algorithm(named)?;
            if !allowed.contains(&named) {
                return None;
            }
            vec![named]
        }
    };
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key {
        decoding,
        algorithms,
    })
}

fn named_algorithm(named: KeyAlgorithm) -> Option<Algorithm> {
    Some(match named {
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> Arc<LocalIssuer> {
        let dir = tempfile::tempdir().unwrap();
        Arc::new(LocalIssuer::load_or_create(dir.path(), "http://rivulet.test").unwrap())
    }

    #[tokio::test]
    async fn rivulets_own_tokens_verify_for_their_audience_only() {
        let issuer = local();
        let verifier = Verifier::new(issuer.clone(), &[], Duration::from_secs(10), Arc::default());
        let (token, _) = issuer
            .mint(
                "system:serviceaccount:ns:sa",
                "aud-a",
                Duration::from_secs(60),
            )
            .unwrap();
        let claims = verifier.verify(&token, "aud-a").await.unwrap();
        assert_eq!(claims.sub, "system:serviceaccount:ns:sa");
        let wrong = verifier.verify(&token, "aud-b").await.unwrap_err();
        assert!(wrong.to_string().contains("audience"), "{wrong}");
        assert!(!wrong.to_string().contains(&token));
    }

    #[tokio::test]
    async fn untrusted_issuers_and_garbage_are_refused() {
        let verifier = Verifier::new(local(), &[], Duration::from_secs(10), Arc::default());
        let der = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        let other = LocalIssuer::from_pkcs8(der.as_ref(), "http://elsewhere.test").unwrap();
        let (token, _) = other.mint("x", "a", Duration::from_secs(60)).unwrap();
        let error = verifier.verify(&token, "a").await.unwrap_err();
        assert!(error.to_string().contains("not trusted"), "{error}");
        assert!(verifier.verify("not-a-jwt", "a").await.is_err());
    }
}
