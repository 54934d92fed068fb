//! `segments serve`: the read-only SQL of `segments sql` over the PostgreSQL
//! wire protocol (pgwire, through datafusion-postgres), for psql and BI tools.
//!
//! - Authentication: one user, SCRAM-SHA-256 password.
//! - Read-only: a query hook sees every statement first. Queries are planned
//!   with DDL, DML and statements refused, and their plans checked, as in
//!   `segments sql`; session statements pass only when they change nothing
//!   shared (SHOW, transactions, cursors over checked queries, a few SET
//!   variables kept per connection); everything else is refused.
//! - Snapshots: each statement reads the newest version of the base when it
//!   starts. A superseded version stays pinned for [`RETAIN`] so that
//!   queries and prepared statements still running on it can finish; of
//!   those, the [`RETAIN_VERSIONS`] newest (each holds a few MiB of
//!   catalog), so that a server whose base changes every few seconds keeps
//!   its memory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{Set, SetExpr, Statement};
use datafusion_postgres::arrow_pg::datatypes::df::encode_dataframe;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::pgwire::api::auth::sasl::SASLAuthStartupHandler;
use datafusion_postgres::pgwire::api::auth::sasl::scram::{ScramAuth, gen_salted_password};
use datafusion_postgres::pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use datafusion_postgres::pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use datafusion_postgres::pgwire::api::portal::Format;
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::results::{Response, Tag};
use datafusion_postgres::pgwire::api::{
    ClientInfo, ConnectionManager, ErrorHandler, METADATA_USER, PgWireServerHandlers,
};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::tokio::process_socket;
use datafusion_postgres::pgwire::types::format::FormatOptions;
use datafusion_postgres::{DfSessionService, QueryHook};
use futures::StreamExt;
use tokio::net::TcpListener;

use super::catalog::{SERVER_VERSION, for_datafusion, shown_version};
use crate::base::{Base, Snapshot};
use crate::engine::deadline::{Running, TIMEOUT_MESSAGE, with_deadline};
use crate::engine::guard::read_only;
use crate::engine::guard::{check_plan, guarded};
use crate::engine::tables::user_context;
use crate::error::{Error, Result};
use crate::idle::IdleWatch;

/// How long a superseded version stays pinned by the server.
pub const RETAIN: Duration = Duration::from_secs(3600);
/// How many superseded versions stay pinned at most.
pub const RETAIN_VERSIONS: usize = 8;

/// Who may connect, and where.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub user: String,
    pub password: String,
    /// The statement timeout a connection starts with (`SET
    /// statement_timeout` changes it for the connection; 0 turns it off).
    pub statement_timeout: Option<Duration>,
    /// Accept TLS connections (`sslmode=require`) with this certificate.
    pub tls: Option<super::tls::TlsFiles>,
    /// A connection waiting this long for its client's next statement is
    /// closed (never with `None`).
    pub idle_timeout: Option<Duration>,
}

/// Serve until `shutdown` completes. `ready` is told the bound address
/// (useful with port 0).
pub async fn serve(
    base: Base,
    opts: ServeOptions,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    if opts.password.is_empty() {
        return Err(Error::usage(
            "serve needs a password: set SEGMENTS_PASSWORD or `password` under [serve] in segments.toml",
        ));
    }
    let tls = match &opts.tls {
        Some(files) => Some(files.acceptor(&[b"postgresql"])?),
        None => None,
    };
    let versions = Arc::new(Versions::open(base, &opts.user)?);
    let connections = Arc::new(Connections::default());
    let hooks: Vec<Arc<dyn QueryHook>> = vec![
        // First: hooks are asked in order and the first answer wins.
        Arc::new(ReadOnly {
            versions: versions.clone(),
            statement_timeout: opts.statement_timeout,
            connections: connections.clone(),
        }),
        Arc::new(CursorStatementHook),
        Arc::new(SetShowHook),
        Arc::new(TransactionStatementHook),
    ];
    let mut params = DefaultServerParameterProvider::default();
    params.default_transaction_read_only = true;
    params.is_superuser = false;
    params.server_version = SERVER_VERSION.to_string();
    let first = versions.latest()?;
    let handlers = Arc::new(Handlers {
        session: Arc::new(DfSessionService::new_with_hooks(first.ctx.clone(), hooks)),
        user: Arc::new(User::new(&opts.user, &opts.password)),
        params: Arc::new(params),
        connections: Arc::new(ConnectionManager::new()),
        tls_only: tls.is_some(),
    });
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|e| Error::usage(format!("cannot listen on {}: {e}", opts.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::usage(format!("cannot listen on {}: {e}", opts.listen)))?;
    ready(addr);
    let accept = async {
        loop {
            match listener.accept().await {
                Ok((socket, peer)) => {
                    // As PostgreSQL: messages leave as they are written.
                    let _ = socket.set_nodelay(true);
                    let (handlers, tls) = (handlers.clone(), tls.clone());
                    let watch = opts
                        .idle_timeout
                        .and_then(|limit| IdleWatch::new(&socket, limit).ok());
                    let connection = connections.open(peer);
                    tokio::spawn(async move {
                        let plain = tls.is_none();
                        let served = process_socket(socket, tls, handlers);
                        match watch {
                            Some(watch) => tokio::select! {
                                _ = served => {}
                                () = watch.idle(|| connection.statements.any()) => watch.close(plain),
                            },
                            None => {
                                let _ = served.await;
                            }
                        }
                        drop(connection);
                    });
                }
                // Out of file descriptors and the like: wait, then go on.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    };
    tokio::select! {
        () = accept => Ok(()),
        () = shutdown => Ok(()),
    }
}

/// The statements running on each open connection, by the client's
/// address (what the query hooks know of a connection).
#[derive(Default)]
struct Connections(Mutex<HashMap<SocketAddr, Arc<Running>>>);

/// An open connection; it leaves [`Connections`] when dropped.
struct Connection {
    connections: Arc<Connections>,
    peer: SocketAddr,
    statements: Arc<Running>,
}

impl Connections {
    fn open(self: &Arc<Self>, peer: SocketAddr) -> Connection {
        let statements = Arc::new(Running::default());
        self.0
            .lock()
            .expect("connections lock")
            .insert(peer, statements.clone());
        Connection {
            connections: self.clone(),
            peer,
            statements,
        }
    }

    /// The running statements of the connection from `peer`.
    fn of(&self, peer: SocketAddr) -> Option<Arc<Running>> {
        self.0.lock().expect("connections lock").get(&peer).cloned()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.connections
            .0
            .lock()
            .expect("connections lock")
            .remove(&self.peer);
    }
}

/// One version of the base with its SQL session.
struct Version {
    snapshot: Snapshot,
    ctx: Arc<SessionContext>,
}

/// The `pg_catalog` schema of datafusion-postgres holds the catalog list it
/// is registered in: a cycle that would keep every version's session (a few
/// MiB each) for good. It is taken out when the version is let go.
impl Drop for Version {
    fn drop(&mut self) {
        if let Some(catalog) = self.ctx.catalog("datafusion") {
            let _ = catalog.deregister_schema("pg_catalog", true);
        }
    }
}

/// The newest version, and superseded ones kept pinned for a while.
struct Versions {
    base: Base,
    /// The one user who can log in (what `current_user` answers).
    user: String,
    live: Mutex<Live>,
}

struct Live {
    current: Option<Arc<Version>>,
    retired: Vec<(Instant, Arc<Version>)>,
}

impl Versions {
    fn open(base: Base, user: &str) -> Result<Versions> {
        Ok(Versions {
            base,
            user: user.to_string(),
            live: Mutex::new(Live {
                current: None,
                retired: Vec::new(),
            }),
        })
    }

    /// The newest version, opened when it changed since the last statement.
    fn latest(&self) -> Result<Arc<Version>> {
        let newest = self.base.latest_version()?;
        let mut live = self.live.lock().expect("versions lock");
        if let Some(v) = &live.current
            && v.snapshot.manifest.version == newest
        {
            return Ok(v.clone());
        }
        let snapshot = self.base.snapshot()?;
        let ctx = user_context(&snapshot.base, &snapshot.manifest)?;
        setup_pg_catalog(&ctx, "datafusion", EmptyContextProvider)
            .map_err(|e| Error::Engine(*e))?;
        super::catalog::register(&ctx, &self.user);
        let version = Arc::new(Version {
            snapshot,
            ctx: Arc::new(ctx),
        });
        let now = Instant::now();
        if let Some(old) = live.current.replace(version.clone()) {
            live.retired.push((now, old));
        }
        live.retired
            .retain(|(at, _)| now.duration_since(*at) < RETAIN);
        let excess = live.retired.len().saturating_sub(RETAIN_VERSIONS);
        live.retired.drain(..excess);
        Ok(version)
    }
}

/// The one user, with its SCRAM salted password.
#[derive(Debug)]
struct User {
    name: String,
    salt: Vec<u8>,
    salted_password: Vec<u8>,
}

/// PBKDF2 iterations of SCRAM-SHA-256 (pgwire's default).
const SCRAM_ITERATIONS: usize = 4096;

impl User {
    fn new(name: &str, password: &str) -> User {
        let salt: Vec<u8> = (0..16).map(|_| rand::random::<u8>()).collect();
        User {
            name: name.to_string(),
            salted_password: gen_salted_password(password, &salt, SCRAM_ITERATIONS),
            salt,
        }
    }
}

#[async_trait]
impl AuthSource for User {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        if login.user() == Some(self.name.as_str()) {
            Ok(Password::new(
                Some(self.salt.clone()),
                self.salted_password.clone(),
            ))
        } else {
            // The same answer as a wrong password: user names are not revealed.
            Err(PgWireError::InvalidPassword(
                login.user().unwrap_or_default().to_string(),
            ))
        }
    }
}

struct Handlers {
    session: Arc<DfSessionService>,
    user: Arc<User>,
    params: Arc<DefaultServerParameterProvider>,
    connections: Arc<ConnectionManager>,
    /// Refuse connections that did not start TLS.
    tls_only: bool,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.session.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.session.clone()
    }

    /// A new handler per connection: it holds the connection's SCRAM exchange.
    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(TlsOnly {
            required: self.tls_only,
            inner: SASLAuthStartupHandler::new(self.params.clone())
                .with_scram(ScramAuth::new(self.user.clone()))
                .with_connection_manager(self.connections.clone()),
        })
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::new(DefaultCancelHandler::new(self.connections.clone()))
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(NameTheUser)
    }
}

/// A server with a certificate serves TLS connections only (as PostgreSQL's
/// `hostssl`): a client that did not ask for TLS is refused at its first
/// message, before any password is exchanged.
struct TlsOnly<H> {
    required: bool,
    inner: H,
}

#[async_trait]
impl<H: StartupHandler> StartupHandler for TlsOnly<H> {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: datafusion_postgres::pgwire::messages::PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo
            + futures::Sink<datafusion_postgres::pgwire::messages::PgWireBackendMessage>
            + Unpin
            + Send
            + Sync,
        C::Error: std::fmt::Debug,
        PgWireError: From<
            <C as futures::Sink<datafusion_postgres::pgwire::messages::PgWireBackendMessage>>::Error,
        >,
    {
        if self.required && !client.is_secure() {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "28000".into(),
                "this server accepts TLS connections only (sslmode=require)".into(),
            ))));
        }
        self.inner.on_startup(client, message).await
    }
}

/// The last SCRAM step reports a wrong password without the user's name:
/// fill it in from the connection so that the message names who failed.
struct NameTheUser;

impl ErrorHandler for NameTheUser {
    fn on_error<C: ClientInfo>(&self, client: &C, error: &mut PgWireError) {
        if let PgWireError::InvalidPassword(user) = error
            && user.is_empty()
            && let Some(u) = client.metadata().get(METADATA_USER)
        {
            *user = u.clone();
        }
    }
}

/// The tag of a savepoint statement, answered without effect: a
/// read-only transaction has nothing to roll back to (SQLAlchemy and
/// other clients open savepoints around their queries).
fn savepoint_tag(stmt: &Statement) -> Option<&'static str> {
    match stmt {
        Statement::Savepoint { .. } => Some("SAVEPOINT"),
        Statement::ReleaseSavepoint { .. } => Some("RELEASE"),
        Statement::Rollback {
            savepoint: Some(_), ..
        } => Some("ROLLBACK"),
        _ => None,
    }
}

/// A query stopped by its statement timeout as PostgreSQL reports it
/// (SQLSTATE 57014, query_canceled); other errors as they are.
fn timed_out(e: PgWireError) -> PgWireError {
    match &e {
        PgWireError::ApiError(inner) if inner.to_string().contains(TIMEOUT_MESSAGE) => {
            PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".into(),
                "57014".into(),
                TIMEOUT_MESSAGE.into(),
            )))
        }
        _ => e,
    }
}

/// The answer to a `SHOW` of one text value.
async fn show((name, value): (&str, String)) -> PgWireResult<Response> {
    use datafusion::arrow::array::StringArray;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let batch = datafusion::arrow::record_batch::RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, false)])),
        vec![Arc::new(StringArray::from(vec![value]))],
    )
    .map_err(|e| to_wire(e.into()))?;
    let df = SessionContext::new()
        .read_batch(batch)
        .map_err(|e| to_wire(e.into()))?;
    encode_dataframe(df, &Format::UnifiedText, None)
        .await
        .map(Response::Query)
}

/// SET variables the session hook keeps per connection. Any other SET would
/// change the shared DataFusion session, so it is refused.
const CONNECTION_SETTINGS: &[&str] = &[
    "statement_timeout",
    "datestyle",
    "bytea_output",
    "intervalstyle",
    "application_name",
    "extra_float_digits",
    "search_path",
    "client_encoding",
];

/// What the server does with a statement.
enum Kind {
    /// A query: planned on the newest version, read-only, plan checked.
    Query,
    /// Answered by the session hooks without touching shared state.
    Session,
    Refused,
}

fn kind(stmt: &Statement) -> Kind {
    match stmt {
        // `WITH ... INSERT` parses as a query whose body writes.
        Statement::Query(q)
            if matches!(
                *q.body,
                SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_)
            ) =>
        {
            Kind::Refused
        }
        Statement::Query(_)
        | Statement::Explain { .. }
        | Statement::ExplainTable { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowFunctions { .. } => Kind::Query,
        Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowCatalogs { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Declare { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. }
        | Statement::Set(Set::SetTimeZone { local: false, .. }) => Kind::Session,
        Statement::Set(Set::SingleAssignment {
            scope: None,
            hivevar: false,
            variable,
            ..
        }) if CONNECTION_SETTINGS.contains(&variable.to_string().to_lowercase().as_str()) => {
            Kind::Session
        }
        _ => Kind::Refused,
    }
}

/// SQLSTATE 25006, read_only_sql_transaction.
fn refused(message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "25006".into(),
        message,
    )))
}

fn refuse_statement(stmt: &Statement) -> PgWireError {
    let text = stmt.to_string();
    let mut words = text.split_whitespace().map(str::to_uppercase);
    let first = words.next().unwrap_or_default();
    let what = match first.as_str() {
        "CREATE" | "DROP" | "ALTER" => format!("{first} {}", words.next().unwrap_or_default()),
        _ if matches!(stmt, Statement::Query(_)) => "a query that writes".to_string(),
        _ => first,
    };
    refused(format!(
        "{what} is not allowed: SQL over a base is read-only"
    ))
}

/// Errors of the library as the client sees them.
fn to_wire(e: Error) -> PgWireError {
    match e {
        Error::ReadOnly(_) => refused(e.to_string()),
        other => PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".into(),
            // 42000, syntax_error_or_access_rule_violation; XX000 otherwise.
            if matches!(other, Error::Engine(_)) {
                "42000".into()
            } else {
                "XX000".into()
            },
            other.to_string(),
        ))),
    }
}

/// The plan of one statement on the newest version, refused if it writes.
async fn checked_plan(versions: &Versions, stmt: &Statement) -> Result<LogicalPlan> {
    let version = versions.latest()?;
    let plan = version
        .ctx
        .state()
        .statement_to_plan(DfStatement::Statement(Box::new(stmt.clone())))
        .await?;
    read_only()
        .verify_plan(&plan)
        .map_err(|e| Error::ReadOnly(e.to_string()))?;
    check_plan(&plan)?;
    Ok(plan)
}

/// `DECLARE c CURSOR FOR query`: the query is checked like any other.
async fn check_cursor(versions: &Versions, stmt: &Statement) -> Result<()> {
    if let Statement::Declare { stmts } = stmt {
        for d in stmts {
            if let Some(q) = &d.for_query {
                checked_plan(versions, &Statement::Query(q.clone())).await?;
            }
        }
    }
    Ok(())
}

struct ReadOnly {
    versions: Arc<Versions>,
    statement_timeout: Option<Duration>,
    connections: Arc<Connections>,
}

/// Where datafusion-postgres keeps a connection's `statement_timeout` (ms).
const TIMEOUT_KEY: &str = "statement_timeout_ms";
/// Set once the connection's timeout has its starting value.
const TIMEOUT_SET_KEY: &str = "segments_statement_timeout_set";

impl ReadOnly {
    /// Give the connection the server's statement timeout, before its first
    /// statement (which may be a `SET statement_timeout`) is handled.
    fn start_timeout(&self, client: &mut dyn HookClient) {
        let metadata = client.metadata_mut();
        if metadata.contains_key(TIMEOUT_SET_KEY) {
            return;
        }
        metadata.insert(TIMEOUT_SET_KEY.into(), String::new());
        if let Some(t) = self.statement_timeout {
            metadata.insert(TIMEOUT_KEY.into(), t.as_millis().to_string());
        }
    }

    /// `plan` under the connection's statement timeout, and counted among
    /// its running statements while it runs.
    fn bounded(&self, plan: LogicalPlan, client: &(dyn ClientInfo + Send + Sync)) -> LogicalPlan {
        let running = self.connections.of(client.socket_addr());
        with_deadline(plan, self.timeout(client), running)
    }

    /// The connection's statement timeout.
    fn timeout(&self, client: &(dyn ClientInfo + Send + Sync)) -> Option<Duration> {
        let metadata = client.metadata();
        if !metadata.contains_key(TIMEOUT_SET_KEY) {
            return self.statement_timeout;
        }
        metadata
            .get(TIMEOUT_KEY)
            .and_then(|ms| ms.parse::<u64>().ok())
            .filter(|&ms| ms > 0)
            .map(Duration::from_millis)
    }
}

/// The hook's answer to a statement that is not a query: a refusal, or
/// nothing (the crate's own hooks handle it) once a cursor's query is
/// checked. `None` for a query.
async fn not_a_query<T>(versions: &Versions, stmt: &Statement) -> Option<Option<PgWireResult<T>>> {
    match kind(stmt) {
        Kind::Refused => Some(Some(Err(refuse_statement(stmt)))),
        Kind::Session => Some(
            check_cursor(versions, stmt)
                .await
                .err()
                .map(|e| Err(to_wire(e))),
        ),
        Kind::Query => None,
    }
}

#[async_trait]
impl QueryHook for ReadOnly {
    async fn handle_simple_query(
        &self,
        stmt: &Statement,
        _ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.start_timeout(client);
        if let Some(tag) = savepoint_tag(stmt) {
            return Some(Ok(Response::Execution(Tag::new(tag))));
        }
        if let Some(shown) = shown_version(stmt) {
            return Some(show(shown).await);
        }
        if let Some(answer) = not_a_query(&self.versions, stmt).await {
            return answer;
        }
        let version = match self.versions.latest() {
            Ok(v) => v,
            Err(e) => return Some(Err(to_wire(e))),
        };
        let stmt = for_datafusion(stmt);
        let df = match guarded(&version.ctx, &stmt.to_string()).await {
            Ok(df) => {
                let (state, plan) = df.into_parts();
                DataFrame::new(state, self.bounded(plan, client))
            }
            Err(e) => return Some(Err(to_wire(e))),
        };
        let format = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        Some(
            encode_dataframe(df, &Format::UnifiedText, Some(format))
                .await
                .map(|mut rows| {
                    rows.data_rows = Box::pin(rows.data_rows.map(|row| row.map_err(timed_out)));
                    Response::Query(rows)
                }),
        )
    }

    async fn handle_extended_parse_query(
        &self,
        stmt: &Statement,
        _ctx: &SessionContext,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        if savepoint_tag(stmt).is_some() {
            return Some(Ok(LogicalPlan::EmptyRelation(
                datafusion::logical_expr::EmptyRelation {
                    produce_one_row: false,
                    schema: Arc::new(datafusion::common::DFSchema::empty()),
                },
            )));
        }
        if let Some(answer) = not_a_query(&self.versions, stmt).await {
            return answer;
        }
        Some(
            checked_plan(&self.versions, &for_datafusion(stmt))
                .await
                .map(|plan| self.bounded(plan, client))
                .map_err(to_wire),
        )
    }

    /// Plans were checked when parsed; checked again before they run.
    async fn handle_extended_query(
        &self,
        stmt: &Statement,
        plan: &LogicalPlan,
        _params: &ParamValues,
        _ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.start_timeout(client);
        if let Some(tag) = savepoint_tag(stmt) {
            return Some(Ok(Response::Execution(Tag::new(tag))));
        }
        if let Some(shown) = shown_version(stmt) {
            return Some(show(shown).await);
        }
        match kind(stmt) {
            Kind::Refused => Some(Err(refuse_statement(stmt))),
            Kind::Query => read_only()
                .verify_plan(plan)
                .map_err(|e| Error::ReadOnly(e.to_string()))
                .and_then(|()| check_plan(plan))
                .err()
                .map(|e| Err(to_wire(e))),
            Kind::Session => None,
        }
    }
}
