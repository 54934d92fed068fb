//! segments: a contact segmentation engine.
//!
//! The data flow, room by room; each uses only the rooms above it in this
//! list:
//!
//! - [`error`]: the one error type.
//! - [`base`]: the base on disk — configuration, versioned manifests,
//!   contacts and events in Parquet, ids, imports, bitmap files, segments'
//!   stored members and history, the writer lock and reader snapshots.
//! - [`criteria`]: the definition language (JSON), its validation with JSON
//!   paths, and the graph of references between segments.
//! - [`engine`]: the DataFusion session over one version (tables, functions,
//!   caches, memory limit), the tables of ad-hoc SQL, the read-only guard.
//! - [`compile`]: criteria → DataFusion plans (one fused scan of contacts,
//!   one of events), then trees evaluated on bitmaps.
//! - [`jobs`]: the verbs — init, segment lifecycle, the nightly recompute,
//!   audiences, exports.
//! - [`sql`]: read-only SQL for users, over a snapshot or the PostgreSQL
//!   protocol.
//! - [`http`]: the verbs as a JSON API over HTTP, with its OpenAPI document.
//! - [`synth`]: synthetic bases; [`bench`]: benchmark workloads.
//! - [`cli`]: the `segments` command over all of the above.

pub mod base;
pub mod bench;
pub mod cli;
pub mod compile;
pub mod criteria;
pub mod engine;
pub mod error;
pub mod http;
pub mod idle;
pub mod jobs;
pub mod sql;
pub mod synth;

pub use error::{Error, Place, Result};
