//! The one error shape of the API, `{"error": {"code", "message", "path"}}`,
//! and the one place where library errors become HTTP statuses.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{Error, Place};

/// An error as the API answers it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: Box<ErrorDetail>,
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, for programs: `invalid_definition`, `unknown_segment`,
    /// `writer_busy`, `conflict`, `invalid_import`, `memory_limit`...
    pub code: &'static str,
    /// For people: what is wrong and what to do.
    pub message: String,
    /// Where: the JSON path of the faulty part of a definition
    /// (`criteria.all[1].op`), or the file, line and column of an import.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The writer holding the base, when the answer is `writer_busy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<Holder>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Holder {
    pub command: String,
    pub pid: u32,
    pub started: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: Box::new(ErrorDetail {
                code,
                message: message.into(),
                path: None,
                holder: None,
            }),
        }
    }

    pub fn at(mut self, path: impl Into<String>) -> ApiError {
        self.body.path = Some(path.into());
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        use StatusCode as S;
        let message = e.to_string();
        match e {
            Error::Shared(inner) => ApiError::from(Error::from(inner)),
            Error::Definition { path, message } => {
                ApiError::new(S::BAD_REQUEST, "invalid_definition", message).at(path)
            }
            Error::Usage(m) => ApiError::new(S::BAD_REQUEST, "bad_request", m),
            Error::UnknownSegment { .. } => ApiError::new(S::NOT_FOUND, "unknown_segment", message),
            Error::UnknownImport { .. } => ApiError::new(S::NOT_FOUND, "unknown_import", message),
            Error::Conflict(m) => ApiError::new(S::CONFLICT, "conflict", m),
            Error::Locked {
                command,
                pid,
                started,
            } => {
                let mut err = ApiError::new(S::CONFLICT, "writer_busy", message);
                err.body.holder = Some(Holder {
                    command,
                    pid,
                    started,
                });
                err
            }
            Error::Input {
                file,
                place,
                message,
            } => {
                // The name the client gave, never a path on the server.
                let name = file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let status = match place {
                    Place::File("configuration") => S::INTERNAL_SERVER_ERROR,
                    _ => S::UNPROCESSABLE_ENTITY,
                };
                ApiError::new(
                    status,
                    "invalid_import",
                    format!("{name}: {place}: {message}"),
                )
                .at(format!("{name}: {place}"))
            }
            Error::ReadOnly(_) => ApiError::new(S::FORBIDDEN, "read_only", message),
            Error::MemoryLimit(_) => ApiError::new(S::SERVICE_UNAVAILABLE, "memory_limit", message),
            Error::Engine(_) | Error::Arrow(_) => {
                ApiError::new(S::BAD_REQUEST, "query_error", message)
            }
            Error::DependencyFailed { .. } => {
                ApiError::new(S::UNPROCESSABLE_ENTITY, "dependency_failed", message)
            }
            Error::Base { .. } | Error::Parquet { .. } | Error::Io { .. } => {
                ApiError::new(S::INTERNAL_SERVER_ERROR, "base_error", message)
            }
            Error::Internal(_) => ApiError::new(S::INTERNAL_SERVER_ERROR, "internal", message),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(status, "too_large", r.body_text());
        }
        let code = match r {
            JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
            _ => "invalid_json",
        };
        ApiError::new(status, code, r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::bad_request(r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { error: *self.body })).into_response()
    }
}

/// What handlers return.
pub type ApiResult<T> = std::result::Result<T, ApiError>;
