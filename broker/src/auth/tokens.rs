//! Tokens for Rivulet's own senders: minted by Rivulet's issuer (standalone) or requested
//! from Kubernetes' TokenRequest API for the sender's service account, cached per identity
//! and audience until shortly before they expire.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use tokio::sync::Mutex;

use super::{Identity, LocalIssuer};
use rivulet_core::features::FeatureFlags;

/// How long the tokens Rivulet asks for live.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// A cached token is replaced when it has less than this left.
const RENEW_BEFORE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot get a token for {subject} (audience {audience}): {message}")]
pub struct TokenError {
    pub subject: String,
    pub audience: String,
    pub message: String,
}

/// A token and when it expires.
#[derive(Debug, Clone)]
pub struct Token {
    pub value: String,
    pub expires: SystemTime,
}

/// Where tokens come from.
#[async_trait]
pub trait TokenProvider: Send + Sync {
    async fn token(&self, identity: &Identity, audience: &str) -> Result<Token, TokenError>;
}

/// What the delivery sender asks per request: a bearer token, or none when OIDC is off.
#[async_trait]
pub trait BearerSource: Send + Sync {
    async fn bearer(
        &self,
        identity: &Identity,
        audience: &str,
    ) -> Result<Option<String>, TokenError>;
}

/// Tokens signed by Rivulet's own issuer.
pub struct LocalTokens(pub Arc<LocalIssuer>);

#[async_trait]
impl TokenProvider for LocalTokens {
    async fn token(&self, identity: &Identity, audience: &str) -> Result<Token, TokenError> {
        let subject = identity.subject();
        let (value, expires) = self
            .0
            .mint(&subject, audience, TOKEN_LIFETIME)
            .map_err(|e| TokenError {
                subject: subject.clone(),
                audience: audience.to_string(),
                message: e.to_string(),
            })?;
        Ok(Token { value, expires })
    }
}

/// Tokens from Kubernetes' TokenRequest API
/// (`POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`).
pub struct KubeTokens(pub kube::Client);

/// The TokenRequest Rivulet sends for `audience`.
pub fn token_request(audience: &str) -> TokenRequest {
    TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![audience.to_string()]),
            expiration_seconds: Some(TOKEN_LIFETIME.as_secs() as i64),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    }
}

#[async_trait]
impl TokenProvider for KubeTokens {
    async fn token(&self, identity: &Identity, audience: &str) -> Result<Token, TokenError> {
        let error = |message: String| TokenError {
            subject: identity.subject(),
            audience: audience.to_string(),
            message,
        };
        let api: kube::Api<ServiceAccount> =
            kube::Api::namespaced(self.0.clone(), &identity.namespace);
        let answer = api
            .create_token_request(
                &identity.service_account,
                &kube::api::PostParams::default(),
                &token_request(audience),
            )
            .await
            .map_err(|e| error(e.to_string()))?;
        let status = answer
            .status
            .ok_or_else(|| error("the TokenRequest came back without a status".into()))?;
        let value = status
            .token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| error("the TokenRequest came back without a token".into()))?;
        // Without an expiry, trust the lifetime asked for.
        let expires = match status.expiration_timestamp {
            Some(time) => {
                SystemTime::UNIX_EPOCH + Duration::from_secs(time.0.as_second().max(0) as u64)
            }
            None => SystemTime::now() + TOKEN_LIFETIME,
        };
        Ok(Token { value, expires })
    }
}

/// Caches another provider's tokens per identity and audience.
pub struct CachedTokens {
    inner: Arc<dyn TokenProvider>,
    cache: Mutex<HashMap<(Identity, String), Token>>,
}

impl CachedTokens {
    pub fn new(inner: Arc<dyn TokenProvider>) -> Self {
        Self {
            inner,
            cache: Mutex::default(),
        }
    }
}

#[async_trait]
impl TokenProvider for CachedTokens {
    async fn token(&self, identity: &Identity, audience: &str) -> Result<Token, TokenError> {
        let key = (identity.clone(), audience.to_string());
        if let Some(token) = self.cache.lock().await.get(&key)
            && token
                .expires
                .duration_since(SystemTime::now())
                .is_ok_and(|left| left > RENEW_BEFORE)
        {
            return Ok(token.clone());
        }
        let token = self.inner.token(identity, audience).await?;
        self.cache.lock().await.insert(key, token.clone());
        Ok(token)
    }
}

/// Bearer tokens when `authentication-oidc` is on, none otherwise.
pub struct FlaggedBearer {
    pub features: FeatureFlags,
    pub tokens: Arc<dyn TokenProvider>,
}

#[async_trait]
impl BearerSource for FlaggedBearer {
    async fn bearer(
        &self,
        identity: &Identity,
        audience: &str,
    ) -> Result<Option<String>, TokenError> {
        if !self.features.current().authentication_oidc {
            return Ok(None);
        }
        Ok(Some(self.tokens.token(identity, audience).await?.value))
    }
}
