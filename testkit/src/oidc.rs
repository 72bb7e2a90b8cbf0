//! An OIDC issuer served by the test over real HTTP (discovery document and JWKS, keys made
//! in the test), and tokens minted with any claims, header and key.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};

/// A P-256 signing key and its public JWK.
#[derive(Clone)]
pub struct TestKey {
    pub kid: String,
    pkcs8: Vec<u8>,
    /// The public key as an uncompressed point (what an attacker may use as an HMAC secret).
    pub public: Vec<u8>,
}

impl TestKey {
    pub fn generate(kid: &str) -> Self {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .expect("a key")
                .as_ref()
                .to_vec();
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &pkcs8,
            &SystemRandom::new(),
        )
        .expect("the key loads");
        TestKey {
            kid: kid.to_string(),
            public: pair.public_key().as_ref().to_vec(),
            pkcs8,
        }
    }

    pub fn jwk(&self) -> Value {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": b64.encode(&self.public[1..33]),
            "y": b64.encode(&self.public[33..65]),
        })
    }

    /// An ES256 token with these claims, naming this key's kid.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&self.pkcs8))
            .expect("the token signs")
    }

    /// An ES256 token naming another kid.
    pub fn sign_as_kid(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&self.pkcs8))
            .expect("the token signs")
    }

    /// HS256 with this key's public bytes as the secret: algorithm confusion.
    pub fn sign_hs256_with_public_key(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        let secret = EncodingKey::from_secret(&self.public).expect("an HMAC key");
        jsonwebtoken::encode(&header, claims, &secret).expect("the token signs")
    }
}

/// A token with `alg: none` and no signature.
pub fn unsigned_token(claims: &Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.",
        b64.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
        b64.encode(claims.to_string())
    )
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims for `sub` and `aud` from `iss`, valid for ten minutes.
pub fn claims(iss: &str, sub: &str, aud: &str) -> Value {
    json!({"iss": iss, "sub": sub, "aud": aud, "iat": now(), "nbf": now(), "exp": now() + 600})
}

/// An issuer serving `{url}/.well-known/openid-configuration` and its JWKS, counting JWKS
/// fetches; its keys can be replaced (rotation).
pub struct TestIssuer {
    pub url: String,
    keys: Arc<Mutex<Vec<TestKey>>>,
    jwks_fetches: Arc<AtomicUsize>,
}

impl TestIssuer {
    pub async fn start(keys: Vec<TestKey>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the issuer binds");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let keys = Arc::new(Mutex::new(keys));
        let jwks_fetches = Arc::new(AtomicUsize::new(0));
        let discovery = json!({
            "issuer": url,
            "jwks_uri": format!("{url}/keys"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        });
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || {
                    let body = discovery.clone();
                    async move { axum::Json(body) }
                }),
            )
            .route(
                "/keys",
                axum::routing::get({
                    let keys = keys.clone();
                    let fetches = jwks_fetches.clone();
                    move || {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        let jwks: Vec<Value> =
                            keys.lock().unwrap().iter().map(TestKey::jwk).collect();
                        async move { axum::Json(json!({"keys": jwks})) }
                    }
                }),
            );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestIssuer {
            url,
            keys,
            jwks_fetches,
        }
    }

    /// Publishes `keys` instead of the current ones.
    pub fn rotate(&self, keys: Vec<TestKey>) {
        *self.keys.lock().unwrap() = keys;
    }

    pub fn jwks_fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }
}

/// Posts one binary-mode event with an optional bearer token; returns status, headers, body.
pub async fn post_with_token(
    url: &str,
    id: &str,
    ty: &str,
    token: Option<&str>,
) -> (u16, http::HeaderMap, String) {
    let mut request = super::http()
        .post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/tests/oidc")
        .header("ce-type", ty)
        .header("content-type", "application/json")
        .body("{}");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("ingress answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap_or_default())
}
