//! The web console at `/`: one HTML page, a stylesheet and a script, built
//! into the binary (no CDN, no build step), working through the JSON API
//! with the session cookie and its CSRF token.
//!
//! Pages: the segments list (`/`), a segment (`/segments/{id}`), its
//! profiles (`/segments/{id}/profiles`), the criteria builder (`/new`,
//! `/segments/{id}/edit`), overlaps (`/overlap?segments=a,b`), audiences
//! (`/audience`) and `/login`. Every page
//! but the login needs a session: without one it redirects to `/login`.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use super::AppState;

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");
const ICON: &str = include_str!("console/icon.svg");

/// Scripts and styles from this server only; no framing.
const POLICY: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
     connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// The routes of the console (the API is nested beside them).
pub fn routes(state: AppState) -> Router<AppState> {
    let pages = Router::new()
        .route("/", get(page))
        .route("/new", get(page))
        .route("/audience", get(page))
        .route("/overlap", get(page))
        .route("/segments/{id}", get(page))
        .route("/segments/{id}/profiles", get(page))
        .route("/segments/{id}/edit", get(page))
        .route_layer(middleware::from_fn_with_state(state, logged_in));
    Router::new()
        .merge(pages)
        .route("/login", get(page))
        .route(
            "/assets/console.js",
            get(|| asset(SCRIPT, "text/javascript; charset=utf-8")),
        )
        .route(
            "/assets/console.css",
            get(|| asset(STYLE, "text/css; charset=utf-8")),
        )
        .route("/assets/icon.svg", get(|| asset(ICON, "image/svg+xml")))
        .layer(middleware::from_fn(headers))
}

async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
}

async fn asset(body: &'static str, mime: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, mime),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Pages need a session; without one, the login page (then back here).
async fn logged_in(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.auth.has_session(req.headers()) {
        return next.run(req).await;
    }
    let back = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let to = format!("/login?next={}", encode(&back));
    (StatusCode::SEE_OTHER, Redirect::to(&to)).into_response()
}

/// Percent-encode a path for a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}
