//! `POST /api/recompute` starts the nightly job in the background; its
//! progress is read at `/api/runs/{id}`, or followed as server-sent events.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::{ApiError, ApiResult, ErrorBody, ErrorDetail};
use super::segments::parse_instant;
use super::{ApiQuery, AppState, WaitParam, command};
use crate::base::ProgressHook;
use crate::jobs::recompute::{Fresh, RunReport, nightly};

/// Runs started by this server, newest last (the last 100 are kept).
#[derive(Default)]
pub struct Runs {
    runs: Mutex<BTreeMap<u64, watch::Receiver<RunState>>>,
}

const KEPT: usize = 100;

/// A run as it goes.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunState {
    pub id: u64,
    /// `running`, `done` (every segment computed), `failed` (some
    /// segments failed, or the run could not start: see `error`).
    pub state: &'static str,
    /// What the run is doing: `waiting for the writer lock`, `scanning
    /// contacts and events`, `storing segments`, `publishing`, `published`.
    pub phase: String,
    /// Segments done and to do.
    pub done: u64,
    pub total: u64,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub as_of: DateTime<Utc>,
    /// The report, once published.
    pub report: Option<RunReport>,
    pub error: Option<ErrorDetail>,
}

impl Runs {
    fn add(&self, rx: watch::Receiver<RunState>) {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let id = rx.borrow().id;
        runs.insert(id, rx);
        while runs.len() > KEPT {
            runs.pop_first();
        }
    }

    fn next_id(&self) -> u64 {
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.keys().next_back().map_or(1, |k| k + 1)
    }

    fn get(&self, id: u64) -> Option<watch::Receiver<RunState>> {
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.get(&id).cloned()
    }
}

/// Where to follow a run.
#[derive(Debug, Serialize, ToSchema)]
pub struct Started {
    pub id: u64,
    /// `/api/runs/{id}`.
    pub url: String,
    /// `/api/runs/{id}/events` (server-sent events).
    pub events: String,
}

/// `wait` and `as_of` as for every write; `full=true` evaluates every
/// condition for every contact instead of patching the kept results.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RecomputeParams {
    /// `500ms`, `30s`, `2m`: wait that long for another writer to finish
    /// (default: answer 409 at once).
    pub wait: Option<String>,
    /// RFC 3339 instant (or a date) to evaluate relative criteria at.
    pub as_of: Option<String>,
    /// Evaluate every condition for every contact (default: only where
    /// something changed since the last run).
    pub full: Option<bool>,
}

/// Start the nightly job (every active segment) in the background. Answers
/// 409 at once when another writer holds the base (unless `wait` is given:
/// the run then waits for it).
#[utoipa::path(operation_id = "start_recompute", post, path = "/api/recompute", tag = "runs", params(RecomputeParams),
    responses((status = 202, body = Started), (status = 409, body = ErrorBody)))]
pub async fn start(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(p): ApiQuery<RecomputeParams>,
) -> ApiResult<Response> {
    let wait = WaitParam {
        wait: p.wait.clone(),
    };
    let mut base = state.writer_base(&wait)?;
    let as_of = parse_instant(p.as_of.as_deref(), "as_of")?.unwrap_or_else(Utc::now);
    if base.lock_wait.is_none()
        && let Some(h) = crate::base::lock::current_holder(base.dir())
    {
        return Err(crate::Error::Locked {
            command: h.command,
            pid: h.pid,
            started: h.started,
        }
        .into());
    }
    let id = state.runs.next_id();
    let (tx, rx) = watch::channel(RunState {
        id,
        state: "running",
        phase: "waiting for the writer lock".into(),
        done: 0,
        total: 0,
        started_at: Utc::now(),
        finished_at: None,
        as_of,
        report: None,
        error: None,
    });
    state.runs.add(rx);
    let progress = tx.clone();
    base.progress = Some(ProgressHook(std::sync::Arc::new(
        move |phase: &str, done, total| {
            progress.send_modify(|s| {
                s.phase = phase.to_string();
                s.done = done;
                s.total = total;
            });
        },
    )));
    let who = command(&caller, "recompute");
    tokio::spawn(async move {
        let fresh = if p.full.unwrap_or(false) {
            Fresh::Full
        } else {
            Fresh::Incremental
        };
        let outcome = nightly(&base, &who, as_of, fresh).await;
        tx.send_modify(|s| {
            s.finished_at = Some(Utc::now());
            match outcome {
                Ok(report) => {
                    s.state = if report.failures().is_empty() {
                        "done"
                    } else {
                        "failed"
                    };
                    s.phase = "published".into();
                    s.done = report.segments.len() as u64;
                    s.total = s.done;
                    s.report = Some(report);
                }
                Err(e) => {
                    s.state = "failed";
                    s.error = Some(*ApiError::from(e).body);
                }
            }
        });
    });
    let started = Started {
        id,
        url: format!("/api/runs/{id}"),
        events: format!("/api/runs/{id}/events"),
    };
    Ok((StatusCode::ACCEPTED, axum::Json(started)).into_response())
}

fn run(state: &AppState, id: &str) -> ApiResult<watch::Receiver<RunState>> {
    id.parse::<u64>()
        .ok()
        .and_then(|id| state.runs.get(id))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_run",
                format!("unknown run {id:?}"),
            )
        })
}

/// The runs started by this server, oldest first.
#[utoipa::path(operation_id = "list_runs", get, path = "/api/runs", tag = "runs",
    responses((status = 200, body = Vec<RunState>)))]
pub async fn list(State(state): State<AppState>) -> axum::Json<Vec<RunState>> {
    let runs = state.runs.runs.lock().unwrap_or_else(|e| e.into_inner());
    axum::Json(runs.values().map(|r| r.borrow().clone()).collect())
}

/// A run: its state, phase, segments done of total, and its report once
/// published.
#[utoipa::path(operation_id = "show_run", get, path = "/api/runs/{id}", tag = "runs",
    params(("id" = u64, Path, description = "Run id from POST /api/recompute")),
    responses((status = 200, body = RunState), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<RunState>> {
    Ok(axum::Json(run(&state, &id)?.borrow().clone()))
}

/// The run's progress as server-sent events (`progress`, then one `end`),
/// at most ten a second.
#[utoipa::path(operation_id = "run_events", get, path = "/api/runs/{id}/events", tag = "runs",
    params(("id" = u64, Path, description = "Run id")),
    responses((status = 200, description = "Server-sent events of RunState", content_type = "text/event-stream"),
        (status = 404, body = ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>> {
    let rx = run(&state, &id)?;
    let stream = futures::stream::unfold(Some((rx, true)), |next| async move {
        let (mut rx, first) = next?;
        let mut gone = false;
        if !first {
            // Wait for a change (or the end of the run), then let changes
            // gather for a moment.
            gone = rx.changed().await.is_err();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let now = rx.borrow_and_update().clone();
        let finished = now.finished_at.is_some() || gone;
        let event = Event::default()
            .event(if finished { "end" } else { "progress" })
            .json_data(&now)
            .unwrap_or_else(|_| Event::default().event("end"));
        Some((Ok(event), (!finished).then_some((rx, false))))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
