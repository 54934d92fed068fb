//! `segments serve --http`: the JSON API a CRM's back end calls. Every
//! route calls the same library verb as the command line; readers pin the
//! version they read, writers go through the writer lock of the base.
//!
//! - Authentication ([`auth`]): `POST /api/login` gives a bearer token and a
//!   console cookie with its CSRF token; HTTP Basic works for scripts.
//! - Errors ([`error`]): one JSON shape, one mapping from library errors.
//! - The OpenAPI document ([`openapi`]) is generated from the handlers and
//!   served at `/api/openapi.json`.

pub mod auth;
pub mod console;
pub mod data;
pub mod error;
pub mod openapi;
pub mod runs;
pub mod segments;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use serde::Deserialize;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use utoipa::IntoParams;

use crate::base::Base;
use crate::base::config::Account;
use crate::error::{Error, Result};
use auth::{Auth, Caller};
use error::ApiError;

/// How the API is served.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub listen: SocketAddr,
    pub accounts: Vec<Account>,
    /// A request taking longer is answered 408 (imports and exports
    /// included; recomputes run in the background).
    pub request_timeout: Duration,
    /// Largest JSON body.
    pub max_body: usize,
    /// Largest imported file.
    pub max_upload: usize,
    /// Serve HTTPS with this certificate.
    pub tls: Option<crate::sql::tls::TlsFiles>,
    /// A connection waiting this long for its client's next request is
    /// closed (never with `None`).
    pub idle_timeout: Option<Duration>,
}

impl HttpOptions {
    pub fn new(listen: SocketAddr, accounts: Vec<Account>) -> HttpOptions {
        HttpOptions {
            listen,
            accounts,
            request_timeout: Duration::from_secs(600),
            max_body: 4 << 20,
            max_upload: 16 << 30,
            tls: None,
            idle_timeout: Some(Duration::from_secs(3600)),
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub base: Base,
    pub auth: Auth,
    pub runs: runs::Runs,
    pub schema: data::SchemaCache,
    pub options: HttpOptions,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(base: Base, options: HttpOptions) -> AppState {
        AppState(Arc::new(Inner {
            auth: Auth::new(options.accounts.clone()),
            base,
            runs: runs::Runs::default(),
            schema: data::SchemaCache::default(),
            options,
        }))
    }

    /// The base as a write by `caller` sees it: waiting for the writer
    /// lock as long as the request asked.
    pub fn writer_base(&self, wait: &WaitParam) -> Result<Base, ApiError> {
        let mut base = self.base.clone();
        base.lock_wait = wait.duration()?;
        Ok(base)
    }
}

/// The name a second writer is told while a request holds the lock.
pub fn command(caller: &Caller, what: &str) -> String {
    format!("HTTP {what} (user {})", caller.user)
}

/// `?wait=30s`: how long a write waits for the writer lock held by another
/// writer (default: answer 409 at once). At most 10 minutes.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitParam {
    /// `500ms`, `30s`, `2m`; a bare number is seconds.
    pub wait: Option<String>,
}

impl WaitParam {
    pub fn duration(&self) -> Result<Option<Duration>, ApiError> {
        self.wait
            .as_deref()
            .map(|text| {
                crate::base::parse_wait(text)
                    .map_err(|m| ApiError::bad_request(format!("wait={m}")).at("wait"))
            })
            .transpose()
    }
}

/// Query parameters, with the API's error shape when they do not parse.
pub struct ApiQuery<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(v) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(v))
    }
}

/// A JSON body, with the API's error shape when it does not parse.
pub struct ApiJson<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(v) = axum::Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(v))
    }
}

/// The routes of the API.
pub fn router(state: AppState) -> Router {
    let max_body = state.options.max_body;
    let max_upload = state.options.max_upload;
    let api = Router::new()
        .route("/segments", get(segments::list).post(segments::create))
        .route(
            "/segments/{id}",
            get(segments::show)
                .put(segments::edit)
                .delete(segments::delete),
        )
        .route("/segments/{id}/refresh", post(segments::refresh))
        .route("/segments/{id}/pause", post(segments::pause))
        .route("/segments/{id}/resume", post(segments::resume))
        .route("/segments/{id}/duplicate", post(segments::duplicate))
        .route(
            "/segments/{id}/contacts",
            post(segments::add_contacts)
                .put(segments::replace_contacts)
                .delete(segments::remove_contacts),
        )
        .route("/segments/{id}/members", get(segments::members))
        .route("/segments/{id}/history", get(segments::history))
        .route("/segments/{id}/export", get(segments::export))
        .route("/preview", post(data::preview))
        .route("/audience", post(data::audience))
        .route("/overlap", post(data::overlap))
        .route("/schema", get(data::schema))
        .route("/sql", post(data::sql))
        .route("/imports", get(data::imports))
        .route(
            "/imports/{kind}",
            post(data::import).layer(DefaultBodyLimit::max(max_upload)),
        )
        .route("/recompute", post(runs::start))
        .route("/runs", get(runs::list))
        .route("/runs/{id}", get(runs::show))
        .route("/runs/{id}/events", get(runs::events))
        .route("/session", get(data::session))
        .route("/logout", post(data::logout))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require))
        .route("/login", post(data::login))
        .route("/openapi.json", get(openapi::document))
        .layer(DefaultBodyLimit::max(max_body));
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .nest("/api", api)
        .merge(console::routes(state.clone()))
        .fallback(not_found)
        .with_state(state.clone())
        .layer(CompressionLayer::new())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            state.options.request_timeout,
        ))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(CatchPanicLayer::custom(panicked))
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no such resource: {} {}",
        req.method(),
        req.uri().path()
    ))
}

fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error (a bug in segments); nothing was changed",
    )
    .into_response()
}

/// Serve until `shutdown` completes; `ready` is told the bound address.
pub async fn serve(
    base: Base,
    options: HttpOptions,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if options.accounts.is_empty() {
        return Err(Error::usage(
            "serve needs a password: set SEGMENTS_PASSWORD or `password` under [serve] in segments.toml",
        ));
    }
    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|e| Error::usage(format!("cannot listen on {}: {e}", options.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::usage(format!("cannot listen on {}: {e}", options.listen)))?;
    let tls = match &options.tls {
        Some(files) => Some(files.acceptor(&[b"http/1.1"])?),
        None => None,
    };
    let idle = options.idle_timeout;
    let app = router(AppState::new(base, options));
    ready(addr);
    match tls {
        Some(acceptor) => {
            let listener = Idle::new(TlsListener::new(listener, acceptor, addr), idle);
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            // Answers leave as they are written, without waiting on the
            // client's acknowledgement of the previous segment.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(Idle::new(listener, idle), app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
    .map_err(|e| Error::Internal(format!("HTTP server: {e}")))
}

/// Connections closed once they have waited on their client for the
/// idle time.
struct Idle<L> {
    inner: L,
    limit: Option<Duration>,
}

impl<L> Idle<L> {
    fn new(inner: L, limit: Option<Duration>) -> Idle<L> {
        Idle { inner, limit }
    }
}

impl<L: axum::serve::Listener> axum::serve::Listener for Idle<L> {
    type Io = crate::idle::IdleIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.inner.accept().await;
        (crate::idle::IdleIo::new(io, self.limit), addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Connections accepted over TLS. Handshakes run concurrently, each in a
/// task of its own with a time limit, so that a slow client holds up no
/// other; the connections come out as their handshakes end.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

type TlsStream<S> = datafusion_postgres::pgwire::tokio::tokio_rustls::server::TlsStream<S>;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl TlsListener {
    fn new(
        listener: TcpListener,
        acceptor: datafusion_postgres::pgwire::tokio::TlsAcceptor,
        addr: SocketAddr,
    ) -> TlsListener {
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (socket, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    // Out of file descriptors and the like: wait, then go on.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket));
                    if let Ok(Ok(stream)) = handshake.await {
                        let _ = tx.send((stream, peer)).await;
                    }
                });
            }
        });
        TlsListener { ready, addr }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task ends only with the server.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}
