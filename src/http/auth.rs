//! Who is calling: the accounts of `[serve]`, sessions opened by
//! `POST /api/login` (a bearer token, and a cookie for the console with a
//! CSRF token), HTTP Basic for scripts. Passwords are compared in constant
//! time. A `read` account may not change the base.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine as _;
use rand::Rng;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use super::AppState;
use super::error::ApiError;
use crate::base::config::{Account, Role};

/// The cookie of a console session.
pub const SESSION_COOKIE: &str = "segments_session";
/// The header that carries the CSRF token of a cookie session.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts after login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// The accounts and the open sessions.
pub struct Auth {
    accounts: Vec<Account>,
    sessions: Mutex<HashMap<String, Session>>,
}

#[derive(Clone)]
struct Session {
    user: String,
    role: Role,
    csrf: String,
    expires: Instant,
}

/// The caller of a request, once authenticated.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: String,
    pub role: Role,
    /// The CSRF token of a cookie session.
    pub csrf: Option<String>,
}

/// A session: its bearer token (also set as an HttpOnly cookie) and the
/// CSRF token that state-changing requests made with the cookie carry in
/// `X-CSRF-Token`.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoginAnswer {
    pub token: String,
    pub csrf_token: String,
    pub user: String,
    #[schema(value_type = String, example = "write")]
    pub role: Role,
    pub expires_in_s: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub user: String,
    pub password: String,
}

/// Equal in time that depends on the lengths only.
fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Auth {
    pub fn new(accounts: Vec<Account>) -> Auth {
        Auth {
            accounts,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// The account of a user and password; every account is compared, so
    /// that the time taken does not tell which users exist.
    fn check(&self, user: &str, password: &str) -> Option<&Account> {
        let mut found = None;
        for a in &self.accounts {
            let ok = same(&a.user, user) & same(&a.password, password);
            if ok && found.is_none() {
                found = Some(a);
            }
        }
        found
    }

    /// Open a session.
    pub fn login(&self, user: &str, password: &str) -> Option<LoginAnswer> {
        let account = self.check(user, password)?;
        let token = random_token();
        let csrf = random_token();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        sessions.insert(
            token.clone(),
            Session {
                user: account.user.clone(),
                role: account.role,
                csrf: csrf.clone(),
                expires: now + SESSION_TTL,
            },
        );
        Some(LoginAnswer {
            token,
            csrf_token: csrf,
            user: account.user.clone(),
            role: account.role,
            expires_in_s: SESSION_TTL.as_secs(),
        })
    }

    pub fn logout(&self, token: &str) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.remove(token);
    }

    /// Whether a request carries the cookie of a live session.
    pub fn has_session(&self, headers: &HeaderMap) -> bool {
        cookie(headers, SESSION_COOKIE).is_some_and(|t| self.session(&t).is_some())
    }

    fn session(&self, token: &str) -> Option<Session> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .get(token)
            .filter(|s| s.expires > Instant::now())
            .cloned()
    }

    /// The caller of a request: a bearer token, HTTP Basic, or the session
    /// cookie (which also needs the CSRF token on state-changing requests).
    fn caller(&self, method: &Method, headers: &HeaderMap) -> Result<Caller, ApiError> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let value = value
                .to_str()
                .map_err(|_| ApiError::unauthorized("unreadable Authorization header"))?;
            if let Some(token) = value.strip_prefix("Bearer ") {
                let s = self.session(token.trim()).ok_or_else(|| {
                    ApiError::unauthorized("unknown or expired token; log in again")
                })?;
                return Ok(Caller {
                    user: s.user,
                    role: s.role,
                    csrf: None,
                });
            }
            if let Some(encoded) = value.strip_prefix("Basic ") {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| ApiError::unauthorized("unreadable Basic credentials"))?;
                let (user, password) = decoded.split_once(':').unwrap_or((&decoded, ""));
                let a = self
                    .check(user, password)
                    .ok_or_else(|| ApiError::unauthorized("wrong user or password"))?;
                return Ok(Caller {
                    user: a.user.clone(),
                    role: a.role,
                    csrf: None,
                });
            }
            return Err(ApiError::unauthorized(
                "use `Authorization: Bearer TOKEN` (from POST /api/login) or Basic",
            ));
        }
        let Some(token) = cookie(headers, SESSION_COOKIE) else {
            return Err(ApiError::unauthorized(
                "log in: POST /api/login, then send `Authorization: Bearer TOKEN`",
            ));
        };
        let s = self
            .session(&token)
            .ok_or_else(|| ApiError::unauthorized("session expired; log in again"))?;
        if !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            let given = headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !same(given, &s.csrf) {
                return Err(ApiError::forbidden(
                    "csrf",
                    "missing or wrong X-CSRF-Token for a request made with the session cookie",
                ));
            }
        }
        Ok(Caller {
            user: s.user,
            role: s.role,
            csrf: Some(s.csrf),
        })
    }
}

/// The value of a cookie of the request.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Requests that read, whatever their method: a `read` account may make them.
fn reads_only(method: &Method, path: &str) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        || matches!(
            path,
            "/api/preview" | "/api/sql" | "/api/overlap" | "/api/logout"
        )
}

/// Every request under `/api` but login and the OpenAPI document passes
/// here: it is authenticated, and a `read` caller may not write.
pub async fn require(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    // The whole path: inside `/api` the router sees only the rest.
    let path = req
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or_else(|| req.uri().path().to_string(), |u| u.path().to_string());
    let caller = state.auth.caller(req.method(), req.headers())?;
    if caller.role == Role::Read && !reads_only(req.method(), &path) {
        return Err(ApiError::forbidden(
            "read_only_account",
            format!("{} may read the base but not change it", caller.user),
        ));
    }
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}
