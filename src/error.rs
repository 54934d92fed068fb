//! The one error type of the library. Variants say which phase failed and
//! whose fault it is: the user's input (`Input`, `Definition`), the state of the
//! base on disk (`Base`, `Locked`), the query engine (`Engine`), or a bug
//! (`Internal`). The CLI prints them once, without a backtrace.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file the user gave us has a problem at a precise place.
    #[error("{file}: {place}: {message}")]
    Input {
        file: PathBuf,
        place: Place,
        message: String,
    },

    /// A segment definition is invalid; `path` is a JSON path such as `criteria.all[2].any[0]`.
    #[error("{path}: {message}")]
    Definition { path: String, message: String },

    /// A command was given arguments that cannot work (a bad flag value...).
    #[error("{0}")]
    Usage(String),

    /// The change conflicts with the base as it is: a name or id already
    /// taken, a segment other segments still refer to.
    #[error("{0}")]
    Conflict(String),

    /// No segment has this id or name.
    #[error("unknown segment {key:?}")]
    UnknownSegment { key: String },

    /// No import has this id or name.
    #[error("unknown import {key:?}")]
    UnknownImport { key: String },

    /// A segment this one refers to failed in the same run.
    #[error("dependency {id} failed")]
    DependencyFailed { id: String },

    /// One error met by several results (a leaf that several segments
    /// share); it reads as the error itself.
    #[error("{0}")]
    Shared(std::sync::Arc<Error>),

    /// The base directory is missing, damaged or incompatible.
    #[error("base {dir}: {message}")]
    Base { dir: PathBuf, message: String },

    /// Another process holds the write lock of the base.
    #[error(
        "the base is locked by another writer: `{command}` (pid {pid}, started {started}); wait for it to finish"
    )]
    Locked {
        command: String,
        pid: u32,
        started: String,
    },

    /// A SQL statement is not allowed (writes, DDL, file access).
    #[error("refused: {0} (SQL over a base is read-only)")]
    ReadOnly(String),

    /// DataFusion failed while planning or executing.
    #[error("query engine: {0}")]
    Engine(datafusion::error::DataFusionError),

    /// A query needed more memory than the limit of its memory pool.
    #[error(
        "query stopped: it needs more memory than its limit ({0}); raise the limit with --memory-limit or SEGMENTS_MEMORY_LIMIT"
    )]
    MemoryLimit(String),

    /// Arrow failed while building or converting record batches.
    #[error("arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),

    /// Parquet failed while reading or writing a file.
    #[error("parquet {file}: {source}")]
    Parquet {
        file: PathBuf,
        source: datafusion::parquet::errors::ParquetError,
    },

    /// A file system operation failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A broken invariant: a bug in segments.
    #[error("internal error (a bug in segments): {0}")]
    Internal(String),
}

/// Where in a file given by the user a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// The header row: a missing or repeated column.
    Header,
    /// The file as a whole: `"file name"`, `"configuration"`, `"reading"`.
    File(&'static str),
    /// A column of the file as a whole.
    Column(String),
    /// A line of a CSV file (1-based, the header is line 1), and the
    /// column at fault if there is one.
    Line { line: u64, column: Option<String> },
    /// A row of a Parquet file (1-based) and the column at fault.
    Row { row: u64, column: String },
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Header => f.write_str("header"),
            Place::File(what) => f.write_str(what),
            Place::Column(c) => write!(f, "column {c:?}"),
            Place::Line { line, column: None } => write!(f, "line {line}"),
            Place::Line {
                line,
                column: Some(c),
            } => write!(f, "line {line}, column {c:?}"),
            Place::Row { row, column } => write!(f, "row {row}, column {column:?}"),
        }
    }
}

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Error {
        match e.find_root() {
            datafusion::error::DataFusionError::ResourcesExhausted(m) => {
                // DataFusion lists every consumer; the failed allocation says it all.
                let line = m
                    .lines()
                    .find(|l| l.contains("Failed to allocate"))
                    .or_else(|| m.lines().next())
                    .unwrap_or_default();
                Error::MemoryLimit(line.trim().trim_start_matches("Error: ").to_string())
            }
            _ => Error::Engine(e),
        }
    }
}

impl From<std::sync::Arc<Error>> for Error {
    /// The error itself when nothing else holds it.
    fn from(e: std::sync::Arc<Error>) -> Error {
        std::sync::Arc::try_unwrap(e).unwrap_or_else(Error::Shared)
    }
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn definition(path: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Definition {
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Error::Usage(message.into())
    }

    pub fn base(dir: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Base {
            dir: dir.into(),
            message: message.into(),
        }
    }

    pub fn input(file: impl Into<PathBuf>, place: Place, message: impl Into<String>) -> Self {
        Error::Input {
            file: file.into(),
            place,
            message: message.into(),
        }
    }

    pub fn parquet(
        file: impl Into<PathBuf>,
        source: datafusion::parquet::errors::ParquetError,
    ) -> Self {
        Error::Parquet {
            file: file.into(),
            source,
        }
    }
}
