//! OIDC sender identity and EventPolicy authorization, as Knative does them.
//!
//! - Every addressable Rivulet serves has an audience (`{group}/{kind}/{namespace}/{name}`,
//!   lower case) published in `status.address.audience` when `authentication-oidc` is on.
//! - Ingress verifies `Authorization: Bearer <JWT>` against trusted issuers ([`verifier`]),
//!   then asks the EventPolicies that apply to the target whether the token's subject may send
//!   this event ([`policy`]); with none applying, `default-authorization-mode` decides.
//! - Rivulet's own senders attach a token for the target's audience ([`tokens`]): standalone,
//!   Rivulet is its own issuer ([`issuer`]); on Kubernetes, the TokenRequest API.

pub mod issuer;
pub mod policy;
pub mod tokens;
pub mod verifier;

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use rivulet_core::event::Event;
use rivulet_core::features::FeatureFlags;

pub use issuer::LocalIssuer;
pub use policy::{PolicyIndex, TargetRef};
pub use tokens::{BearerSource, TokenProvider};
pub use verifier::{Claims, Verifier};

/// Kubernetes names are at most this long.
const MAX_NAME: usize = 63;

/// The OIDC audience of an object, in Knative's format.
pub fn audience(group: &str, kind: &str, namespace: &str, name: &str) -> String {
    format!("{group}/{kind}/{namespace}/{name}").to_lowercase()
}

/// The audience of a Broker.
pub fn broker_audience(namespace: &str, name: &str) -> String {
    audience("eventing.knative.dev", "Broker", namespace, name)
}

/// The audience of a destination: its own `audience` when set, else that of the Broker
/// its `ref` names (the audiences Rivulet itself checks).
pub fn destination_audience(
    destination: &rivulet_core::resources::Destination,
    namespace: &str,
) -> Option<String> {
    if let Some(audience) = destination.audience.as_deref().filter(|a| !a.is_empty()) {
        return Some(audience.to_string());
    }
    let reference = destination.reference.as_ref()?;
    let group = reference
        .api_version
        .as_deref()
        .and_then(|v| v.rsplit_once('/'))
        .map(|(group, _)| group)
        .or(reference.group.as_deref())
        .unwrap_or("eventing.knative.dev");
    (reference.kind == "Broker" && group == "eventing.knative.dev").then(|| {
        broker_audience(
            reference.namespace.as_deref().unwrap_or(namespace),
            &reference.name,
        )
    })
}

/// The name of the OIDC service account Knative gives a resource:
/// `{name}-oidc-{group}-{kind}`, lower case, shortened with a hash past 63 characters.
pub fn oidc_service_account(group: &str, kind: &str, name: &str) -> String {
    let suffix = format!("-oidc-{group}-{kind}").to_lowercase();
    let full = format!("{}{suffix}", name.to_lowercase());
    if full.len() <= MAX_NAME {
        return full;
    }
    // Too long: keep a readable head and make the rest unique with a hash of the whole.
    let digest = ring::digest::digest(&ring::digest::SHA256, full.as_bytes());
    let hash: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let head: String = name
        .to_lowercase()
        .chars()
        .take(MAX_NAME - hash.len())
        .collect();
    format!("{head}{hash}")
}

/// The name of an authorization mode as `config-features` writes it.
pub fn mode_name(mode: rivulet_core::features::AuthorizationMode) -> &'static str {
    use rivulet_core::features::AuthorizationMode::*;
    match mode {
        AllowAll => "allow-all",
        AllowSameNamespace => "allow-same-namespace",
        DenyAll => "deny-all",
    }
}

/// The subject of tokens issued to a Kubernetes service account.
pub fn service_account_subject(namespace: &str, service_account: &str) -> String {
    format!("system:serviceaccount:{namespace}:{service_account}")
}

/// Who a Rivulet sender acts as: a service account in a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub namespace: String,
    pub service_account: String,
}

impl Identity {
    /// The OIDC identity Knative gives a resource (a Trigger, a source, a sink).
    pub fn for_resource(group: &str, kind: &str, namespace: &str, name: &str) -> Self {
        Identity {
            namespace: namespace.to_string(),
            service_account: oidc_service_account(group, kind, name),
        }
    }

    /// The `sub` of this identity's tokens.
    pub fn subject(&self) -> String {
        service_account_subject(&self.namespace, &self.service_account)
    }
}

/// Why a request was refused. The token itself never appears in a message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required: send Authorization: Bearer <token> for audience {audience}")]
    MissingToken { audience: String },
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
}

impl AuthError {
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::MissingToken { .. } | AuthError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{self}\n"),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            let challenge = match &self {
                AuthError::InvalidToken(_) => "Bearer error=\"invalid_token\"",
                _ => "Bearer",
            };
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

/// The bearer token of a request, if it carries one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// What ingress and Rivulet's senders share: the flags, the verifier, the policies, tokens.
pub struct Auth {
    pub features: FeatureFlags,
    pub verifier: Verifier,
    pub issuer: Arc<LocalIssuer>,
    pub policies: PolicyIndex,
    pub tokens: Arc<dyn TokenProvider>,
}

impl Auth {
    /// Whether `authentication-oidc` is on now.
    pub fn enabled(&self) -> bool {
        self.features.current().authentication_oidc
    }

    /// The verified subject of a request to `target`; `None` when OIDC is off.
    pub async fn authenticate(
        &self,
        target: &TargetRef,
        headers: &HeaderMap,
    ) -> Result<Option<String>, AuthError> {
        if !self.enabled() {
            return Ok(None);
        }
        let audience = target.audience();
        let token = bearer_token(headers).ok_or_else(|| AuthError::MissingToken {
            audience: audience.clone(),
        })?;
        let claims = self.verifier.verify(token, &audience).await?;
        Ok(Some(claims.sub))
    }

    /// Whether `subject` may send `events` to `target` (OIDC on, identity established).
    pub fn authorize(
        &self,
        target: &TargetRef,
        subject: &str,
        events: &[Event],
    ) -> Result<(), AuthError> {
        let mode = self.features.current().default_authorization_mode;
        self.policies.authorize(target, subject, events, mode)
    }
}

/// Building the shared state at server start.
pub mod setup {
    use std::sync::Arc;

    use anyhow::Context as _;

    use super::tokens::{CachedTokens, FlaggedBearer, KubeTokens, LocalTokens};
    use super::{Auth, BearerSource, LocalIssuer, PolicyIndex, TokenProvider, Verifier};
    use rivulet_core::features::FeatureFlags;

    /// What the command line says about tokens.
    pub struct AuthSettings<'a> {
        /// Where Rivulet's issuer keeps its key.
        pub data_dir: &'a std::path::Path,
        /// The ingress base URL, which is the issuer URL.
        pub base_url: &'a str,
        /// Further issuers whose tokens are trusted (`--oidc-issuer`).
        pub oidc_issuers: &'a [String],
        pub oidc_jwks_refresh: std::time::Duration,
        /// Kubernetes' TokenRequest API, when this process runs in a cluster in a role that
        /// sends as the cluster's workloads; `None` signs with Rivulet's own issuer.
        pub kube_tokens: Option<kube::Client>,
    }

    /// Rivulet's issuer (its key in the data folder, issuer URL = the ingress base URL), the
    /// verifier of the trusted issuers, and the token source: Kubernetes' TokenRequest API
    /// when given one, Rivulet's issuer otherwise.
    pub fn build(
        settings: AuthSettings<'_>,
        features: FeatureFlags,
        egress: Arc<crate::egress::Egress>,
    ) -> anyhow::Result<Arc<Auth>> {
        let issuer = Arc::new(
            LocalIssuer::load_or_create(settings.data_dir, settings.base_url)
                .context("cannot set up the OIDC issuer")?,
        );
        for url in settings.oidc_issuers {
            url::Url::parse(url).with_context(|| format!("--oidc-issuer {url} is not a URL"))?;
        }
        let verifier = Verifier::new(
            issuer.clone(),
            settings.oidc_issuers,
            settings.oidc_jwks_refresh,
            egress,
        );
        let source: Arc<dyn TokenProvider> = match settings.kube_tokens {
            Some(client) => Arc::new(KubeTokens(client)),
            None => Arc::new(LocalTokens(issuer.clone())),
        };
        Ok(Arc::new(Auth {
            features,
            verifier,
            issuer,
            policies: PolicyIndex::default(),
            tokens: Arc::new(CachedTokens::new(source)),
        }))
    }

    /// What the delivery sender asks for tokens.
    pub fn bearer(auth: &Auth) -> Arc<dyn BearerSource> {
        Arc::new(FlaggedBearer {
            features: auth.features.clone(),
            tokens: auth.tokens.clone(),
        })
    }
}
