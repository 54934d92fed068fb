//! segments: a contact segmentation engine.
//!
//! The data flow, in five rooms:
//!
//! - [`base`]: the base on disk — configuration, versioned manifests, contacts
//!   and events in Parquet, imports, the writer lock and reader snapshots.
//! - [`criteria`]: the definition language (JSON), its validation with JSON
//!   paths, and the graph of references between segments.
//! - [`compile`]: criteria → DataFusion logical plans (one fused scan of
//!   contacts, one of events), then trees evaluated on bitmaps.
//! - [`bitmaps`]: roaring bitmaps of internal contact ids, their file format.
//! - [`jobs`]: the verbs — init, segment lifecycle, the nightly recompute,
//!   audiences; [`sql`]: read-only SQL; [`synth`]: synthetic bases.

pub mod base;
pub mod bench;
pub mod bitmaps;
pub mod compile;
pub mod criteria;
pub mod error;
pub mod jobs;
pub mod sql;
pub mod synth;

pub use error::{Error, Result};
