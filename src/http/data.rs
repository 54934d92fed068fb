//! The routes beside segments: preview, audience, the schema of the base,
//! read-only SQL, imports, and the session (login, logout).

use std::path::Path as FsPath;
use std::sync::{Arc, Mutex};

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use datafusion::arrow::array::RecordBatch;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use utoipa::{IntoParams, ToSchema};

use super::auth::{Caller, LoginAnswer, LoginRequest, SESSION_COOKIE, cookie};
use super::error::{ApiError, ApiResult, ErrorBody};
use super::segments::{WriteParams, attachment, definition, parse_instant};
use super::{ApiJson, ApiQuery, AppState, command};
use crate::base::contacts::ImportOptions;
use crate::base::events::EventImportOptions;
use crate::error::Error;
use crate::jobs::change;
use crate::jobs::import::{ImportFile, import as import_verb};
use crate::jobs::recompute::RunReport;
use crate::jobs::segments::{self as seg, Channel, Preview};
use crate::jobs::views::{self, BaseSchema, ImportInfo};

/// Rows as JSON objects (Arrow's JSON writer: dates and times as text).
pub fn json_rows(batches: &[RecordBatch]) -> ApiResult<Vec<serde_json::Map<String, Value>>> {
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    let mut w = datafusion::arrow::json::ArrayWriter::new(Vec::new());
    w.write_batches(&refs).map_err(Error::from)?;
    w.finish().map_err(Error::from)?;
    let bytes = w.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::from(Error::Internal(format!("rows as JSON: {e}"))))
}

/// Stream a file written in `dir`; the directory goes when the stream ends.
pub async fn stream_file(
    dir: tempfile::TempDir,
    path: &FsPath,
    mime: &str,
    name: &str,
) -> ApiResult<Response> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::io(path, e))?;
    let stream = tokio_util::io::ReaderStream::new(file).map_ok(move |chunk| {
        // Held by the stream: the file is removed after the last chunk.
        let _ = &dir;
        chunk
    });
    Ok(attachment(Body::from_stream(stream), mime, name))
}

/// A definition to preview: `name` and `id` may be left out.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PreviewBody {
    pub id: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    #[schema(value_type = Object)]
    pub criteria: Value,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AsOfParam {
    /// RFC 3339 instant (or a date) to evaluate relative criteria at (default now).
    pub as_of: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PreviewParams {
    /// RFC 3339 instant (or a date) to evaluate relative criteria at (default now).
    pub as_of: Option<String>,
    /// With the profiles of the sample (default true); `false` answers the
    /// count and the sample's ids alone, as `segment preview` does.
    pub profiles: Option<bool>,
}

/// Count and sample of a definition, with the sample's profiles; nothing is
/// saved (`segment preview`).
#[utoipa::path(operation_id = "preview", post, path = "/api/preview", tag = "segments", params(PreviewParams),
    request_body = PreviewBody,
    responses((status = 200, body = PreviewAnswer), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn preview(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<PreviewParams>,
    ApiJson(mut body): ApiJson<Value>,
) -> ApiResult<axum::Json<PreviewAnswer>> {
    if let Some(obj) = body.as_object_mut() {
        obj.entry("name").or_insert_with(|| Value::from("preview"));
    }
    let def = definition(&body)?;
    let as_of = parse_instant(p.as_of.as_deref(), "as_of")?.unwrap_or_else(chrono::Utc::now);
    let snap = state.base.snapshot()?;
    let preview = match p.profiles {
        Some(false) => seg::preview(&snap, &def, as_of).await?,
        _ => seg::preview_with_profiles(&snap, &def, as_of).await?,
    };
    let profiles = match &preview.profiles {
        Some(batch) => json_rows(std::slice::from_ref(batch))?,
        None => Vec::new(),
    };
    Ok(axum::Json(PreviewAnswer { preview, profiles }))
}

/// A preview and the profiles of its sample.
#[derive(Debug, Serialize, ToSchema)]
pub struct PreviewAnswer {
    #[serde(flatten)]
    pub preview: Preview,
    /// `contact_id`, first_name, last_name, email, email_optin, sms_optin
    /// of the sample (those the base has).
    #[schema(value_type = Vec<Object>)]
    pub profiles: Vec<serde_json::Map<String, Value>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AudienceBody {
    /// Segments (ids or names) whose contacts are sent to.
    pub include: Vec<String>,
    /// Segments whose contacts are left out.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// `email` or `sms`: reachable contacts have an address or number,
    /// opted in, not a bad one.
    pub channel: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AudienceParams {
    /// `count` (default): the count only; `csv` or `parquet`: the contacts,
    /// like `audience --out`.
    pub format: Option<String>,
    pub wait: Option<String>,
    pub as_of: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AudienceCount {
    pub contacts: u64,
}

/// The contacts of a send: in any included segment, in no excluded one,
/// reachable on the channel. The segments involved are refreshed first.
#[utoipa::path(operation_id = "audience", post, path = "/api/audience", tag = "segments", params(AudienceParams),
    request_body = AudienceBody,
    responses((status = 200, body = AudienceCount, content_type = "application/json", description = "The count; with format=csv or parquet, the contacts as a file"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn audience(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(p): ApiQuery<AudienceParams>,
    ApiJson(body): ApiJson<AudienceBody>,
) -> ApiResult<Response> {
    let channel = match body.channel.as_str() {
        "email" => Channel::Email,
        "sms" => Channel::Sms,
        other => {
            return Err(
                ApiError::bad_request(format!("channel {other:?}: expected email or sms"))
                    .at("channel"),
            );
        }
    };
    let ext = match p.format.as_deref() {
        None | Some("count") => None,
        Some(f @ ("csv" | "parquet")) => Some(f),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format={other:?}: expected count, csv or parquet"
            ))
            .at("format"));
        }
    };
    let wp = WriteParams {
        wait: p.wait,
        as_of: p.as_of,
    };
    let base = state.writer_base(&super::WaitParam {
        wait: wp.wait.clone(),
    })?;
    let as_of = parse_instant(wp.as_of.as_deref(), "as_of")?.unwrap_or_else(chrono::Utc::now);
    let (bm, m) = change(&base, &command(&caller, "audience"), async |w| {
        seg::audience(w, &body.include, &body.exclude, channel, as_of).await
    })
    .await?;
    let Some(ext) = ext else {
        return Ok(axum::Json(AudienceCount { contacts: bm.len() }).into_response());
    };
    let dir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let path = dir.path().join(format!("audience.{ext}"));
    let written = path.clone();
    let base_dir = state.base.dir().to_path_buf();
    tokio::task::spawn_blocking(move || -> crate::Result<()> {
        let batch = seg::members_batch(&base_dir, &m, &bm, None, &[])?;
        crate::jobs::export::write_batch(&written, &batch)
    })
    .await
    .map_err(|e| Error::Internal(format!("audience task: {e}")))??;
    let mime = if ext == "csv" {
        "text/csv; charset=utf-8"
    } else {
        "application/vnd.apache.parquet"
    };
    stream_file(dir, &path, mime, &format!("audience.{ext}")).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverlapBody {
    /// Segments (ids or names), at least one.
    pub segments: Vec<String>,
    /// `email` or `sms`: count only contacts reachable on the channel.
    pub only_reachable: Option<String>,
}

/// How segments intersect: every pairwise count (and % of the row's
/// segment), sizes, union and intersection of all (`segment overlap`).
#[utoipa::path(operation_id = "overlap", post, path = "/api/overlap", tag = "segments", request_body = OverlapBody,
    responses((status = 200, body = views::Overlap), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn overlap(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<OverlapBody>,
) -> ApiResult<axum::Json<views::Overlap>> {
    let channel = match body.only_reachable.as_deref() {
        None => None,
        Some("email") => Some(Channel::Email),
        Some("sms") => Some(Channel::Sms),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "only_reachable {other:?}: expected email or sms"
            ))
            .at("only_reachable"));
        }
    };
    let snap = state.base.snapshot()?;
    Ok(axum::Json(views::overlap(&snap, &body.segments, channel)?))
}

/// The schema of the newest version, computed once per version.
#[derive(Default)]
pub struct SchemaCache(Mutex<Option<Arc<BaseSchema>>>);

/// Fields, event types, operations, imports and segments: what a criteria
/// builder offers.
#[utoipa::path(operation_id = "schema", get, path = "/api/schema", tag = "base",
    responses((status = 200, body = BaseSchema)))]
pub async fn schema(State(state): State<AppState>) -> ApiResult<axum::Json<Arc<BaseSchema>>> {
    let snap = state.base.snapshot()?;
    let cached = state
        .schema
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(s) = cached.filter(|s| s.version == snap.manifest.version) {
        return Ok(axum::Json(s));
    }
    let s = Arc::new(views::schema(&snap).await?);
    *state.schema.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(s.clone());
    Ok(axum::Json(s))
}

/// The imports of the base, oldest first.
#[utoipa::path(operation_id = "list_imports", get, path = "/api/imports", tag = "base",
    responses((status = 200, body = Vec<ImportInfo>)))]
pub async fn imports(State(state): State<AppState>) -> ApiResult<axum::Json<Vec<ImportInfo>>> {
    let snap = state.base.snapshot()?;
    Ok(axum::Json(views::imports(&snap)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportParams {
    /// The import's name (default: from the file name).
    pub name: Option<String>,
    /// The file name when the body is the raw file: its extension says
    /// CSV or Parquet (default `upload.csv`).
    pub file: Option<String>,
    /// Contacts: empty values in the file erase existing values.
    #[serde(default)]
    pub overwrite_empty: bool,
    /// Events: leave out events of unknown contacts (counted).
    #[serde(default)]
    pub skip_unknown: bool,
    pub wait: Option<String>,
    pub as_of: Option<String>,
}

/// What an import did, and the segments it recomputed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportAnswer {
    #[schema(value_type = Object)]
    pub import: Value,
    /// The run of the active segments, when below the auto-refresh
    /// threshold (otherwise they are marked for refresh).
    pub run: Option<RunReport>,
}

/// A file name as given by a client, safe as one path component.
fn upload_name(given: Option<&str>) -> ApiResult<String> {
    let name = given.unwrap_or("upload.csv").trim();
    let name = name.rsplit(['/', '\\']).next().unwrap_or_default();
    if name.is_empty() || name.starts_with('.') || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!("file name {name:?} is not usable")).at("file"));
    }
    Ok(name.to_string())
}

/// Import contacts or events: the body is the file (CSV or Parquet), raw or
/// as the `file` part of a multipart form. Same rules and errors as
/// `segments import`; nothing is changed when the file has an error.
#[utoipa::path(operation_id = "import_file", post, path = "/api/imports/{kind}", tag = "base",
    params(("kind" = String, Path, description = "`contacts` or `events`"), ImportParams),
    request_body(content = Vec<u8>, content_type = "text/csv"),
    responses((status = 201, body = ImportAnswer), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn import(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(kind): Path<String>,
    ApiQuery(p): ApiQuery<ImportParams>,
    req: Request,
) -> ApiResult<Response> {
    if !matches!(kind.as_str(), "contacts" | "events") {
        return Err(ApiError::not_found(format!(
            "imports are of contacts or events, not {kind:?}"
        )));
    }
    let dir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let path = if multipart {
        let mut form = Multipart::from_request(req, &state)
            .await
            .map_err(|r| ApiError::new(r.status(), status_code(r.status()), r.body_text()))?;
        let mut saved = None;
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| ApiError::new(e.status(), status_code(e.status()), e.body_text()))?
        {
            if field.name() != Some("file") {
                continue;
            }
            let name = upload_name(p.file.as_deref().or(field.file_name()))?;
            let path = dir.path().join(&name);
            let stream = field.map_err(|e| (e.status(), e.body_text()));
            spool(stream, &path, state.options.max_upload).await?;
            saved = Some(path);
            break;
        }
        saved.ok_or_else(|| ApiError::bad_request("the form has no `file` part").at("file"))?
    } else {
        let path = dir.path().join(upload_name(p.file.as_deref())?);
        let stream = req
            .into_body()
            .into_data_stream()
            .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()));
        spool(stream, &path, state.options.max_upload).await?;
        path
    };
    let as_of = parse_instant(p.as_of.as_deref(), "as_of")?;
    let what = match kind.as_str() {
        "contacts" => ImportFile::Contacts {
            file: path,
            options: ImportOptions {
                name: p.name,
                overwrite_empty: p.overwrite_empty,
            },
        },
        _ => ImportFile::Events {
            file: path,
            options: EventImportOptions {
                name: p.name,
                skip_unknown: p.skip_unknown,
            },
        },
    };
    let base = state.writer_base(&super::WaitParam { wait: p.wait })?;
    let (report, run) = import_verb(
        &base,
        &command(&caller, &format!("import {kind}")),
        &what,
        as_of,
    )
    .await?;
    drop(dir);
    let import = serde_json::to_value(&report)
        .map_err(|e| Error::Internal(format!("import report: {e}")))?;
    Ok((
        StatusCode::CREATED,
        axum::Json(ImportAnswer { import, run }),
    )
        .into_response())
}

fn status_code(status: StatusCode) -> &'static str {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        "too_large"
    } else {
        "bad_request"
    }
}

/// Write a body to a file as it arrives, refusing more than `limit` bytes.
async fn spool(
    mut stream: impl futures::Stream<Item = Result<Bytes, (StatusCode, String)>> + Unpin,
    path: &FsPath,
    limit: usize,
) -> ApiResult<()> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| Error::io(path, e))?;
    let mut size = 0usize;
    while let Some(chunk) = stream.try_next().await.map_err(|(status, text)| {
        let what = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("the file is larger than this server accepts ({text})")
        } else {
            text
        };
        ApiError::new(status, status_code(status), what)
    })? {
        size += chunk.len();
        if size > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the file is larger than this server accepts ({limit} bytes)"),
            ));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| Error::io(path, e))?;
    }
    file.flush().await.map_err(|e| Error::io(path, e))?;
    Ok(())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlBody {
    /// One read-only query over contacts, events, imports, segments,
    /// segment_members.
    pub query: String,
    /// `json` (default): rows as objects; `arrow`: an Arrow IPC stream.
    pub format: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SqlAnswer {
    pub columns: Vec<String>,
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<serde_json::Map<String, Value>>,
}

/// Read-only SQL, with the guard and memory limit of `segments sql`.
#[utoipa::path(operation_id = "sql", post, path = "/api/sql", tag = "base", request_body = SqlBody,
    responses((status = 200, body = SqlAnswer, content_type = "application/json", description = "Rows as JSON; with format=arrow, an Arrow IPC stream (application/vnd.apache.arrow.stream)"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn sql(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<SqlBody>,
) -> ApiResult<Response> {
    let arrow = match body.format.as_deref() {
        None | Some("json") => false,
        Some("arrow") => true,
        Some(other) => {
            return Err(
                ApiError::bad_request(format!("format {other:?}: expected json or arrow"))
                    .at("format"),
            );
        }
    };
    let snap = state.base.snapshot()?;
    let (schema, batches) = crate::sql::query(&snap, &body.query).await?;
    if arrow {
        let mut w = datafusion::arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &schema)
            .map_err(Error::from)?;
        for b in &batches {
            w.write(b).map_err(Error::from)?;
        }
        w.finish().map_err(Error::from)?;
        let bytes = w.into_inner().map_err(Error::from)?;
        return Ok((
            [(header::CONTENT_TYPE, "application/vnd.apache.arrow.stream")],
            bytes,
        )
            .into_response());
    }
    Ok(axum::Json(SqlAnswer {
        columns: schema.fields().iter().map(|f| f.name().clone()).collect(),
        rows: json_rows(&batches)?,
    })
    .into_response())
}

/// Open a session: a bearer token for programs, and for the console an
/// HttpOnly cookie with the CSRF token its forms send.
#[utoipa::path(operation_id = "login", post, path = "/api/login", tag = "session", request_body = LoginRequest,
    responses((status = 200, body = LoginAnswer), (status = 401, body = ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<LoginRequest>,
) -> ApiResult<Response> {
    let answer = state
        .auth
        .login(&body.user, &body.password)
        .ok_or_else(|| ApiError::unauthorized("wrong user or password"))?;
    // Over HTTPS, the browser sends the cookie over HTTPS only.
    let secure = if state.options.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        answer.token, answer.expires_in_s
    );
    Ok(([(header::SET_COOKIE, cookie)], axum::Json(answer)).into_response())
}

/// The caller of this session.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionInfo {
    pub user: String,
    pub role: String,
    /// The CSRF token to send in `X-CSRF-Token` (cookie sessions).
    pub csrf_token: Option<String>,
}

/// Who is calling (and the CSRF token of a cookie session).
#[utoipa::path(operation_id = "session", get, path = "/api/session", tag = "session",
    responses((status = 200, body = SessionInfo), (status = 401, body = ErrorBody)))]
pub async fn session(Extension(caller): Extension<Caller>) -> axum::Json<SessionInfo> {
    axum::Json(SessionInfo {
        user: caller.user,
        role: match caller.role {
            crate::base::config::Role::Write => "write".into(),
            crate::base::config::Role::Read => "read".into(),
        },
        csrf_token: caller.csrf,
    })
}

/// Close the session of the token or cookie.
#[utoipa::path(operation_id = "logout", post, path = "/api/logout", tag = "session",
    responses((status = 204, description = "Closed")))]
pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    if let Some(token) = bearer.or_else(|| cookie(&headers, SESSION_COOKIE)) {
        state.auth.logout(token.trim());
    }
    let expired = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, expired)]).into_response()
}
