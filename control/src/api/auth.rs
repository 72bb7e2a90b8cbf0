//! Bearer tokens on the resource API: an admin token written at first start, further tokens
//! with a role (`viewer` reads, `admin` also writes) created through the API.
//!
//! Only SHA-256 digests of created tokens are kept on disk; the admin token itself stays in
//! `admin.token` (mode 0600) so the CLI on the same machine can find it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};

/// File in the data folder that holds the admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// File in the data folder that holds the digests of created tokens.
const TOKENS_FILE: &str = "tokens.json";
/// Name of the token written at first start.
const ADMIN_NAME: &str = "admin";
/// Created tokens at most, so the token file stays small.
const MAX_TOKENS: usize = 1000;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read resources and metrics.
    Viewer,
    /// Also create, change and delete resources, and manage tokens.
    Admin,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        }
    }
}

/// How the resource API authenticates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ApiAuth {
    /// Bearer tokens (the admin token from the data folder, and tokens made with
    /// `rivulet token create`).
    #[default]
    Token,
    /// No authentication: anyone who reaches the listener is admin. Loopback only, unless
    /// forced.
    None,
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredToken {
    name: String,
    role: Role,
    /// Hex SHA-256 of the token.
    sha256: String,
    created: String,
}

/// Why the token store could not be opened or changed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid token list: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} is empty; delete it to have a new admin token written at start")]
    EmptyAdminToken { path: PathBuf },
}

/// The tokens the API accepts.
pub struct Tokens {
    folder: PathBuf,
    /// Digest → caller; the admin token's digest included.
    by_digest: RwLock<BTreeMap<String, Caller>>,
    created: RwLock<Vec<StoredToken>>,
}

impl Tokens {
    /// Opens the tokens of `data_dir`, writing a new admin token on first start.
    pub fn open(data_dir: &Path) -> Result<Arc<Tokens>, TokenError> {
        let admin = read_or_create_admin_token(data_dir)?;
        let path = data_dir.join(TOKENS_FILE);
        let created: Vec<StoredToken> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| TokenError::Corrupt {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(TokenError::Io { path, source }),
        };
        let mut by_digest = BTreeMap::new();
        for token in &created {
            by_digest.insert(
                token.sha256.clone(),
                Caller {
                    name: token.name.clone(),
                    role: token.role,
                },
            );
        }
        by_digest.insert(
            digest(&admin),
            Caller {
                name: ADMIN_NAME.to_string(),
                role: Role::Admin,
            },
        );
        Ok(Arc::new(Tokens {
            folder: data_dir.to_path_buf(),
            by_digest: RwLock::new(by_digest),
            created: RwLock::new(created),
        }))
    }

    /// The caller a presented token belongs to.
    pub fn caller(&self, token: &str) -> Option<Caller> {
        // Looked up by digest: what a lookup's timing could reveal is about the digest, which
        // does not help guess the token.
        self.by_digest
            .read()
            .expect("lock poisoned")
            .get(&digest(token))
            .cloned()
    }

    fn create(&self, name: &str, role: Role) -> Result<String, (StatusCode, String)> {
        if name.is_empty()
            || name.len() > 63
            || !rivulet_core::resources::validation::is_dns_subdomain(name)
        {
            return Err((
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("token name {name:?}: use 1 to 63 lower-case letters, digits, '-' and '.'"),
            ));
        }
        let mut created = self.created.write().expect("lock poisoned");
        if name == ADMIN_NAME || created.iter().any(|t| t.name == name) {
            return Err((
                StatusCode::CONFLICT,
                format!("a token named {name:?} exists; revoke it first or pick another name"),
            ));
        }
        if created.len() >= MAX_TOKENS {
            return Err((
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{MAX_TOKENS} tokens exist already; revoke some first"),
            ));
        }
        let token = new_token();
        let stored = StoredToken {
            name: name.to_string(),
            role,
            sha256: digest(&token),
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        let mut next = created.clone();
        next.push(stored.clone());
        self.save(&next)?;
        *created = next;
        self.by_digest.write().expect("lock poisoned").insert(
            stored.sha256,
            Caller {
                name: name.to_string(),
                role,
            },
        );
        Ok(token)
    }

    fn revoke(&self, name: &str) -> Result<(), (StatusCode, String)> {
        if name == ADMIN_NAME {
            return Err((
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "the admin token is revoked by deleting {ADMIN_TOKEN_FILE} from the data folder and restarting"
                ),
            ));
        }
        let mut created = self.created.write().expect("lock poisoned");
        let Some(position) = created.iter().position(|t| t.name == name) else {
            return Err((StatusCode::NOT_FOUND, format!("no token named {name:?}")));
        };
        let mut next = created.clone();
        let removed = next.remove(position);
        self.save(&next)?;
        *created = next;
        self.by_digest
            .write()
            .expect("lock poisoned")
            .remove(&removed.sha256);
        Ok(())
    }

    fn save(&self, tokens: &[StoredToken]) -> Result<(), (StatusCode, String)> {
        let bytes = serde_json::to_vec_pretty(tokens).expect("tokens serialise");
        rivulet_store::replace_private(&self.folder.join(TOKENS_FILE), &bytes).map_err(|e| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot save the token list: {e}"),
            )
        })
    }
}

fn digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// 244 random bits from two v4 UUIDs, with a prefix that makes leaked tokens easy to find.
fn new_token() -> String {
    format!(
        "rvt_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn read_or_create_admin_token(data_dir: &Path) -> Result<String, TokenError> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim().to_string();
            if token.is_empty() {
                return Err(TokenError::EmptyAdminToken { path });
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = new_token();
            rivulet_store::replace_private(&path, format!("{token}\n").as_bytes())
                .map_err(|source| TokenError::Io { path, source })?;
            Ok(token)
        }
        Err(source) => Err(TokenError::Io { path, source }),
    }
}

/// Reads the admin token a server wrote into `data_dir`, if there is one.
pub fn read_admin_token(data_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(data_dir.join(ADMIN_TOKEN_FILE)).ok()?;
    let token = text.trim();
    (!token.is_empty()).then(|| token.to_string())
}

/// Authentication of one API listener.
#[derive(Clone)]
pub enum Gate {
    Tokens(Arc<Tokens>),
    /// `--api-auth none`: every caller is admin.
    Open,
}

/// Why a request was not authenticated; each becomes a 401 with a Bearer challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    #[error(
        "this API needs a token: send Authorization: Bearer TOKEN (the admin token is in admin.token in the server's data folder)"
    )]
    Missing,
    #[error("the Authorization header must be `Bearer TOKEN`")]
    Malformed,
    #[error("the token is not valid")]
    Invalid,
}

impl IntoResponse for Unauthenticated {
    fn into_response(self) -> Response {
        let challenge = match self {
            Unauthenticated::Missing => "Bearer realm=\"rivulet\"",
            Unauthenticated::Malformed => "Bearer realm=\"rivulet\", error=\"invalid_request\"",
            Unauthenticated::Invalid => "Bearer realm=\"rivulet\", error=\"invalid_token\"",
        };
        let mut response =
            super::status_error(StatusCode::UNAUTHORIZED, "Unauthorized", self.to_string());
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
        response
    }
}

fn caller_of(gate: &Gate, request: &Request) -> Result<Caller, Unauthenticated> {
    let tokens = match gate {
        Gate::Open => {
            return Ok(Caller {
                name: "anonymous".into(),
                role: Role::Admin,
            });
        }
        Gate::Tokens(tokens) => tokens,
    };
    let value = request
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or(Unauthenticated::Missing)?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or(Unauthenticated::Malformed)?;
    tokens.caller(token).ok_or(Unauthenticated::Invalid)
}

/// Middleware: the caller must hold a token, and an admin one for anything but reading.
pub async fn require_token(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    let caller = match caller_of(&gate, &request) {
        Ok(caller) => caller,
        Err(refusal) => return refusal.into_response(),
    };
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    let needs = if reads && !request.uri().path().starts_with("/auth/tokens") {
        Role::Viewer
    } else {
        Role::Admin
    };
    if caller.role < needs {
        return super::status_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "token {:?} has role {}; {} {} needs role {}",
                caller.name,
                caller.role.as_str(),
                request.method(),
                request.uri().path(),
                needs.as_str()
            ),
        );
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    name: String,
    role: Role,
}

/// `/auth/whoami` and the token routes (`/auth/tokens[/{name}]`), to be put behind
/// [`require_token`].
pub fn routes(gate: Gate) -> Router {
    Router::new()
        .route("/auth/whoami", get(whoami))
        .route("/auth/tokens", get(list_tokens).post(create_token))
        .route("/auth/tokens/{name}", delete(revoke_token))
        .with_state(gate)
}

async fn whoami(axum::Extension(caller): axum::Extension<Caller>) -> Response {
    axum::Json(json!({"name": caller.name, "role": caller.role})).into_response()
}

fn token_store(gate: &Gate) -> Option<&Arc<Tokens>> {
    match gate {
        Gate::Tokens(tokens) => Some(tokens),
        Gate::Open => None,
    }
}

fn no_tokens() -> Response {
    super::status_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server runs with --api-auth none: it has no tokens",
    )
}

async fn list_tokens(State(gate): State<Gate>) -> Response {
    let Some(tokens) = token_store(&gate) else {
        return no_tokens();
    };
    let mut items = vec![json!({"name": ADMIN_NAME, "role": Role::Admin})];
    items.extend(
        tokens
            .created
            .read()
            .expect("lock poisoned")
            .iter()
            .map(|t| json!({"name": t.name, "role": t.role, "created": t.created})),
    );
    axum::Json(json!({"items": items})).into_response()
}

async fn create_token(State(gate): State<Gate>, body: axum::body::Bytes) -> Response {
    let Some(tokens) = token_store(&gate) else {
        return no_tokens();
    };
    let request: CreateToken = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return super::status_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("expected {{\"name\": NAME, \"role\": \"viewer\"|\"admin\"}}: {e}"),
            );
        }
    };
    match tokens.create(&request.name, request.role) {
        Ok(token) => (
            StatusCode::CREATED,
            axum::Json(json!({"name": request.name, "role": request.role, "token": token})),
        )
            .into_response(),
        Err((code, message)) => super::status_error(code, "Invalid", message),
    }
}

async fn revoke_token(State(gate): State<Gate>, UrlPath(name): UrlPath<String>) -> Response {
    let Some(tokens) = token_store(&gate) else {
        return no_tokens();
    };
    match tokens.revoke(&name) {
        Ok(()) => axum::Json(json!({"name": name, "revoked": true})).into_response(),
        Err((code, message)) => super::status_error(code, "Invalid", message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_token_is_written_once_private_and_reused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::open(dir.path()).unwrap();
        let admin = read_admin_token(dir.path()).unwrap();
        assert!(admin.starts_with("rvt_") && admin.len() == 68, "{admin}");
        let mode = std::fs::metadata(dir.path().join(ADMIN_TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(tokens.caller(&admin).unwrap().role, Role::Admin);
        assert!(tokens.caller("rvt_guess").is_none());
        drop(tokens);
        let again = Tokens::open(dir.path()).unwrap();
        assert_eq!(read_admin_token(dir.path()).unwrap(), admin);
        assert!(again.caller(&admin).is_some());
    }

    #[test]
    fn created_tokens_survive_a_restart_and_can_be_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::open(dir.path()).unwrap();
        let viewer = tokens.create("ci", Role::Viewer).unwrap();
        assert_eq!(
            tokens.create("ci", Role::Admin).unwrap_err().0,
            StatusCode::CONFLICT
        );
        assert!(tokens.create("Bad_Name", Role::Admin).is_err());
        let stored = std::fs::read_to_string(dir.path().join(TOKENS_FILE)).unwrap();
        assert!(!stored.contains(&viewer), "the token itself is not stored");
        let reopened = Tokens::open(dir.path()).unwrap();
        assert_eq!(reopened.caller(&viewer).unwrap().role, Role::Viewer);
        reopened.revoke("ci").unwrap();
        assert!(reopened.caller(&viewer).is_none());
        assert!(Tokens::open(dir.path()).unwrap().caller(&viewer).is_none());
        assert!(reopened.revoke("admin").is_err());
    }
}
