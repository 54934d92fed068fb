//! `/api/segments`: the segments list, one segment, its lifecycle, its
//! members, history and export. Each handler calls the verb `segment ...`
//! calls on the command line.

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::{ApiJson, ApiQuery, AppState, WaitParam, command};
use crate::criteria::Definition;
use crate::jobs::change;
use crate::jobs::recompute::RunReport;
use crate::jobs::segments as seg;
use crate::jobs::views::{self, HistoryRow, SegmentDetail, SegmentSummary, SortKey};

/// `GET /api/segments` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// `name` (default), `size` (largest first), `computed` (most recent
    /// first) or `status`.
    pub sort: Option<String>,
    /// Only segments of this status: `computing`, `up_to_date`, `late`,
    /// `failed`, `paused`.
    pub status: Option<String>,
    #[serde(default)]
    pub offset: usize,
    /// Default 100, at most 10,000.
    pub limit: Option<usize>,
}

/// A page of the segments list.
#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentPage {
    /// Segments matching the filter, all pages.
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    /// The version of the base the page was read from.
    pub version: u64,
    pub segments: Vec<SegmentSummary>,
}

const STATUSES: &[&str] = &["computing", "up_to_date", "late", "failed", "paused"];

fn sort_key(s: Option<&str>) -> ApiResult<SortKey> {
    Ok(match s {
        None | Some("name") => SortKey::Name,
        Some("size") => SortKey::Size,
        Some("computed") => SortKey::Computed,
        Some("status") => SortKey::Status,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "sort={other:?}: expected name, size, computed or status"
            ))
            .at("sort"));
        }
    })
}

fn page_limit(limit: Option<usize>) -> ApiResult<usize> {
    match limit {
        None => Ok(100),
        Some(n @ 1..=10_000) => Ok(n),
        Some(n) => {
            Err(ApiError::bad_request(format!("limit={n}: between 1 and 10000")).at("limit"))
        }
    }
}

/// The segments, sorted and filtered like `segment list`.
#[utoipa::path(operation_id = "list_segments", get, path = "/api/segments", tag = "segments", params(ListParams),
    responses((status = 200, body = SegmentPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> ApiResult<axum::Json<SegmentPage>> {
    let sort = sort_key(p.sort.as_deref())?;
    if let Some(s) = &p.status
        && !STATUSES.contains(&s.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "status={s:?}: expected one of {}",
            STATUSES.join(", ")
        ))
        .at("status"));
    }
    let limit = page_limit(p.limit)?;
    let snap = state.base.snapshot()?;
    let all = views::list(&snap, sort, p.status.as_deref());
    Ok(axum::Json(SegmentPage {
        total: all.len(),
        offset: p.offset,
        limit,
        version: snap.manifest.version,
        segments: all.into_iter().skip(p.offset).take(limit).collect(),
    }))
}

/// One segment, by id or name: summary, definition, last computations.
#[utoipa::path(operation_id = "show_segment", get, path = "/api/segments/{id}", tag = "segments",
    params(("id" = String, Path, description = "Segment id or name")),
    responses((status = 200, body = SegmentDetail), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<SegmentDetail>> {
    let snap = state.base.snapshot()?;
    Ok(axum::Json(views::show(&snap, &id)?))
}

/// `as_of`: the instant criteria are evaluated at (default now).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WriteParams {
    /// `500ms`, `30s`, `2m`: wait that long for another writer to finish
    /// (default: answer 409 at once).
    pub wait: Option<String>,
    /// RFC 3339 instant (or a date) to evaluate relative criteria at.
    pub as_of: Option<String>,
}

impl WriteParams {
    fn wait(&self) -> WaitParam {
        WaitParam {
            wait: self.wait.clone(),
        }
    }

    fn as_of(&self) -> ApiResult<DateTime<Utc>> {
        parse_instant(self.as_of.as_deref(), "as_of").map(|t| t.unwrap_or_else(Utc::now))
    }
}

/// An RFC 3339 instant or a date (midnight UTC).
pub fn parse_instant(text: Option<&str>, what: &str) -> ApiResult<Option<DateTime<Utc>>> {
    let Some(text) = text else { return Ok(None) };
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(Some(d.and_time(chrono::NaiveTime::MIN).and_utc()));
    }
    Err(ApiError::bad_request(format!(
        "{what}={text:?}: expected an RFC 3339 instant or a date (YYYY-MM-DD)"
    ))
    .at(what))
}

/// A segment definition, the JSON of `segment create FILE`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct DefinitionBody {
    /// Default: derived from the name.
    pub id: Option<String>,
    pub name: String,
    pub description: Option<String>,
    /// The criteria language of the SPEC.
    #[schema(value_type = Object)]
    pub criteria: Value,
}

/// A static segment: a fixed list of contacts, from ids or a query.
#[derive(Debug, Deserialize, ToSchema)]
pub struct StaticBody {
    pub id: Option<String>,
    pub name: String,
    /// Contact ids (all must be in the base)...
    pub contact_ids: Option<Vec<u64>>,
    /// ...or a read-only SQL query returning `contact_id`.
    pub query: Option<String>,
}

/// A dynamic segment (with `criteria`) or a static one (with
/// `contact_ids` or `query`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum CreateBody {
    Dynamic(DefinitionBody),
    Static(StaticBody),
}

/// What a change that computed segments did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Computed {
    /// The segment's state after the change.
    pub segment: SegmentSummary,
    pub run: RunReport,
}

/// The contacts of a static segment, as given in a request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactsBody {
    pub contact_ids: Option<Vec<u64>>,
    pub query: Option<String>,
}

fn static_source(ids: Option<Vec<u64>>, query: Option<String>) -> ApiResult<seg::StaticSource> {
    match (ids, query) {
        (Some(ids), None) => Ok(seg::StaticSource::Ids(ids)),
        (None, Some(q)) => Ok(seg::StaticSource::Query(q)),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_definition",
            "give either contact_ids or query",
        )
        .at("contact_ids")),
    }
}

/// A definition from a request body, with its JSON paths in errors.
pub fn definition(v: &Value) -> ApiResult<Definition> {
    Ok(Definition::parse(v)?)
}

fn summary_of(state: &AppState, id: &str) -> ApiResult<SegmentSummary> {
    let snap = state.base.snapshot()?;
    Ok(views::show(&snap, id)?.summary)
}

/// A run that computed one segment: 201/200 when it succeeded, 422 with
/// the segment's error when it failed (the change is saved; the segment
/// shows as failed).
fn computed(state: &AppState, id: &str, run: RunReport, ok: StatusCode) -> ApiResult<Response> {
    let segment = summary_of(state, id)?;
    let failed = run
        .failures()
        .first()
        .map(|f| f.error.clone().unwrap_or_default());
    let status = if failed.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        ok
    };
    Ok((status, axum::Json(Computed { segment, run })).into_response())
}

/// Create a segment: dynamic from a definition (computed at once), or
/// static from contact ids or a query.
#[utoipa::path(operation_id = "create_segment", post, path = "/api/segments", tag = "segments", params(WriteParams),
    request_body = CreateBody,
    responses((status = 201, body = Computed), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = Computed)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(p): ApiQuery<WriteParams>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Response> {
    let base = state.writer_base(&p.wait())?;
    let as_of = p.as_of()?;
    if body.get("criteria").is_some() {
        let def = definition(&body)?;
        let (run, _) = change(&base, &command(&caller, "create segment"), async |w| {
            seg::create(w, &def, as_of).await
        })
        .await?;
        return computed(&state, &def.id, run, StatusCode::CREATED);
    }
    let StaticBody {
        id,
        name,
        contact_ids,
        query,
    } = serde_json::from_value(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_definition",
            format!("a segment has criteria (dynamic) or contact_ids or query (static): {e}"),
        )
    })?;
    let source = static_source(contact_ids, query)?;
    let ((id, _), _) = change(
        &base,
        &command(&caller, "create static segment"),
        async |w| seg::create_static(w, id.as_deref(), &name, &source).await,
    )
    .await?;
    Ok((StatusCode::CREATED, axum::Json(summary_of(&state, &id)?)).into_response())
}

/// Replace the definition of a dynamic segment and recompute it.
#[utoipa::path(operation_id = "edit_segment", put, path = "/api/segments/{id}", tag = "segments",
    params(("id" = String, Path, description = "Segment id or name"), WriteParams),
    request_body = DefinitionBody,
    responses((status = 200, body = Computed), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = Computed)))]
pub async fn edit(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiQuery(p): ApiQuery<WriteParams>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Response> {
    let base = state.writer_base(&p.wait())?;
    let as_of = p.as_of()?;
    let def = definition(&body)?;
    let (run, m) = change(&base, &command(&caller, "edit segment"), async |w| {
        seg::edit(w, &id, &def, as_of).await
    })
    .await?;
    let id = m
        .find_segment(&def.name)
        .map(|r| r.id.clone())
        .unwrap_or(id);
    computed(&state, &id, run, StatusCode::OK)
}

/// What a delete removed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    pub deleted: String,
}

/// Delete a segment (its contacts stay in the base); refused with 409 while
/// other segments refer to it.
#[utoipa::path(operation_id = "delete_segment", delete, path = "/api/segments/{id}", tag = "segments",
    params(("id" = String, Path, description = "Segment id or name"), WaitParam),
    responses((status = 200, body = Deleted), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiQuery(wait): ApiQuery<WaitParam>,
) -> ApiResult<axum::Json<Deleted>> {
    let base = state.writer_base(&wait)?;
    let (deleted, _) = change(&base, &command(&caller, "delete segment"), async |w| {
        seg::delete(w, &id)
    })
    .await?;
    Ok(axum::Json(Deleted { deleted }))
}

/// Compute a segment now (and resume it if it was paused).
#[utoipa::path(operation_id = "refresh_segment", post, path = "/api/segments/{id}/refresh", tag = "segments",
    params(("id" = String, Path, description = "Segment id or name"), WriteParams),
    responses((status = 200, body = Computed), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = Computed)))]
pub async fn refresh(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiQuery(p): ApiQuery<WriteParams>,
) -> ApiResult<Response> {
    let base = state.writer_base(&p.wait())?;
    let as_of = p.as_of()?;
    let ((id, run), _) = change(&base, &command(&caller, "refresh segment"), async |w| {
        seg::refresh(w, &id, as_of).await
    })
    .await?;
    computed(&state, &id, run, StatusCode::OK)
}

/// Resume a paused segment: it is computed now, and by every run after.
#[utoipa::path(operation_id = "resume_segment", post, path = "/api/segments/{id}/resume", tag = "segments",
    params(("id" = String, Path, description = "Segment id or name"), WriteParams),
    responses((status = 200, body = Computed), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = Computed)))]
pub async fn resume(
    state: State<AppState>,
    caller: Extension<Caller>,
    id: Path<String>,
    p: ApiQuery<WriteParams>,
) -> ApiResult<Response> {
    refresh(state, caller, id, p).await
}

/// Pause a segment: its members stay as last computed.
#[utoipa::path(operation_id = "pause_segment", post, path = "/api/segments/{id}/pause", tag = "segments",
    params(("id" = String, Path, description = "Segment id or name"), WaitParam),
    responses((status = 200, body = SegmentSummary), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn pause(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiQuery(wait): ApiQuery<WaitParam>,
) -> ApiResult<axum::Json<SegmentSummary>> {
    let base = state.writer_base(&wait)?;
    let (id, _) = change(&base, &command(&caller, "pause segment"), async |w| {
        seg::set_paused(w, &id, true)
    })
    .await?;
    Ok(axum::Json(summary_of(&state, &id)?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DuplicateBody {
    /// The copy's name (its id is derived from it).
    pub name: String,
}

/// Copy a dynamic segment under a new name and compute the copy.
#[utoipa::path(operation_id = "duplicate_segment", post, path = "/api/segments/{id}/duplicate", tag = "segments",
    params(("id" = String, Path, description = "Segment id or name"), WriteParams),
    request_body = DuplicateBody,
    responses((status = 201, body = Computed), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = Computed)))]
pub async fn duplicate(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiQuery(p): ApiQuery<WriteParams>,
    ApiJson(body): ApiJson<DuplicateBody>,
) -> ApiResult<Response> {
    let base = state.writer_base(&p.wait())?;
    let as_of = p.as_of()?;
    let ((def, _, run), _) = change(&base, &command(&caller, "duplicate segment"), async |w| {
        seg::duplicate(w, &id, &body.name, as_of).await
    })
    .await?;
    computed(&state, &def.id, run, StatusCode::CREATED)
}

async fn change_static(
    state: AppState,
    caller: Caller,
    id: String,
    how: seg::StaticChange,
    wait: WaitParam,
    body: ContactsBody,
) -> ApiResult<axum::Json<SegmentSummary>> {
    let source = static_source(body.contact_ids, body.query)?;
    let base = state.writer_base(&wait)?;
    let (_, m) = change(
        &base,
        &command(&caller, "change static segment"),
        async |w| seg::change_static(w, &id, how, &source).await,
    )
    .await?;
    let id = m.find_segment(&id)?.id.clone();
    Ok(axum::Json(summary_of(&state, &id)?))
}

/// Add contacts to a static segment.
#[utoipa::path(operation_id = "add_contacts", post, path = "/api/segments/{id}/contacts", tag = "segments",
    params(("id" = String, Path, description = "Segment id or name"), WaitParam),
    request_body = ContactsBody,
    responses((status = 200, body = SegmentSummary), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn add_contacts(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiQuery(wait): ApiQuery<WaitParam>,
    ApiJson(body): ApiJson<ContactsBody>,
) -> ApiResult<axum::Json<SegmentSummary>> {
    change_static(state, caller, id, seg::StaticChange::Add, wait, body).await
}

/// Remove contacts from a static segment.
#[utoipa::path(operation_id = "remove_contacts", delete, path = "/api/segments/{id}/contacts", tag = "segments",
    params(("id" = String, Path, description = "Segment id or name"), WaitParam),
    request_body = ContactsBody,
    responses((status = 200, body = SegmentSummary), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn remove_contacts(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiQuery(wait): ApiQuery<WaitParam>,
    ApiJson(body): ApiJson<ContactsBody>,
) -> ApiResult<axum::Json<SegmentSummary>> {
    change_static(state, caller, id, seg::StaticChange::Remove, wait, body).await
}

/// Replace the contacts of a static segment.
#[utoipa::path(operation_id = "replace_contacts", put, path = "/api/segments/{id}/contacts", tag = "segments",
    params(("id" = String, Path, description = "Segment id or name"), WaitParam),
    request_body = ContactsBody,
    responses((status = 200, body = SegmentSummary), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn replace_contacts(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiQuery(wait): ApiQuery<WaitParam>,
    ApiJson(body): ApiJson<ContactsBody>,
) -> ApiResult<axum::Json<SegmentSummary>> {
    change_static(state, caller, id, seg::StaticChange::Replace, wait, body).await
}

/// `GET /api/segments/{id}/members` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MembersParams {
    /// Only members who entered at or after this instant (RFC 3339 or date).
    pub since: Option<String>,
    /// A column (`contact_id`, `last_name`, `entered_at`...); `-` first
    /// sorts descending. Default: contact order.
    pub sort: Option<String>,
    #[serde(default)]
    pub offset: usize,
    /// Default 100, at most 10,000.
    pub limit: Option<usize>,
}

/// A page of a segment's profiles.
#[derive(Debug, Serialize, ToSchema)]
pub struct MembersPage {
    pub segment: String,
    pub name: String,
    /// Members in the segment (or entered since `since`), all pages.
    pub total: u64,
    pub offset: usize,
    pub limit: usize,
    /// `contact_id`, then first_name, last_name, email, entered_at,
    /// email_optin, sms_optin (those the base has).
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<serde_json::Map<String, Value>>,
}

/// The profiles of a segment: a page, sortable, with entry dates.
#[utoipa::path(operation_id = "segment_members", get, path = "/api/segments/{id}/members", tag = "segments",
    params(("id" = String, Path, description = "Segment id or name"), MembersParams),
    responses((status = 200, body = MembersPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn members(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(p): ApiQuery<MembersParams>,
) -> ApiResult<axum::Json<MembersPage>> {
    let limit = page_limit(p.limit)?;
    let since = parse_instant(p.since.as_deref(), "since")?;
    let snap = state.base.snapshot()?;
    let rec = snap.manifest.find_segment(&id)?;
    let (segment, name) = (rec.id.clone(), rec.name.clone());
    let query = views::MembersQuery {
        since,
        sort: p.sort,
        offset: p.offset,
        limit,
    };
    let (batch, total) = views::members_page(&snap, &id, &query)?;
    Ok(axum::Json(MembersPage {
        segment,
        name,
        total,
        offset: p.offset,
        limit,
        rows: super::data::json_rows(&[batch])?,
    }))
}

/// Every computation of a segment, oldest first: size, entries, exits.
#[utoipa::path(operation_id = "segment_history", get, path = "/api/segments/{id}/history", tag = "segments",
    params(("id" = String, Path, description = "Segment id or name")),
    responses((status = 200, body = Vec<HistoryRow>), (status = 404, body = ErrorBody)))]
pub async fn history(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Vec<HistoryRow>>> {
    let snap = state.base.snapshot()?;
    Ok(axum::Json(views::history(&snap, &id)?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportParams {
    /// `csv` (default) or `parquet`.
    pub format: Option<String>,
    /// Comma-separated contact columns (default: every field).
    pub columns: Option<String>,
}

/// Every member of a segment as a CSV or Parquet file: `contact_id`
/// first, then the columns and `entered_at`, like `segment export`.
#[utoipa::path(operation_id = "export_segment", get, path = "/api/segments/{id}/export", tag = "segments",
    params(("id" = String, Path, description = "Segment id or name"), ExportParams),
    responses((status = 200, description = "The file: text/csv, or application/vnd.apache.parquet with format=parquet", content_type = "text/csv"),
        (status = 404, body = ErrorBody)))]
pub async fn export(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(p): ApiQuery<ExportParams>,
) -> ApiResult<Response> {
    let (ext, mime) = match p.format.as_deref() {
        None | Some("csv") => ("csv", "text/csv; charset=utf-8"),
        Some("parquet") => ("parquet", "application/vnd.apache.parquet"),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format={other:?}: expected csv or parquet"
            ))
            .at("format"));
        }
    };
    let columns: Vec<String> = p
        .columns
        .iter()
        .flat_map(|c| c.split(','))
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect();
    let snap = state.base.snapshot()?;
    let rec_id = snap.manifest.find_segment(&id)?.id.clone();
    let dir = tempfile::tempdir().map_err(|e| crate::Error::io(std::env::temp_dir(), e))?;
    let path = dir.path().join(format!("{rec_id}.{ext}"));
    let written = path.clone();
    tokio::task::spawn_blocking(move || views::export(&snap, &id, &columns, &written))
        .await
        .map_err(|e| crate::Error::Internal(format!("export task: {e}")))??;
    super::data::stream_file(dir, &path, mime, &format!("{rec_id}.{ext}")).await
}

/// A file sent as the body of a response: streamed from disk.
pub fn attachment(body: Body, mime: &str, name: &str) -> Response {
    (
        [
            (header::CONTENT_TYPE, mime.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response()
}
