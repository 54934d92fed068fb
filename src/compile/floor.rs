//! The decoding floor of a plan: what it costs only to decode, from the
//! Parquet files, the columns and row groups the plan's passes read, with
//! as many threads as the passes use. `segments bench` reports it beside
//! the engine's time; what lies above it is the engine's own work
//! (planning, filters, dispatch to conditions, state, bitmaps).
//!
//! The row groups are those the conditions need: in the events files the
//! scan keeps (a window reaches them), the row groups whose `type` is one
//! the conditions read and whose times meet the windows of that type's
//! conditions. Each is decoded with the columns its type's conditions
//! read, plus `_iid` and `type`, and `ts` where the scan reads it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use datafusion::parquet::file::metadata::RowGroupMetaData;
use datafusion::parquet::file::statistics::Statistics;

use super::behavior::BehaviorParts;
use super::expr::Clock;
use super::{Plan, contacts_expr};
use crate::base::schema::IID;
use crate::engine::Session;
use crate::error::{Error, Result};

/// What decoding a plan's reads took.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Floor {
    /// Rows decoded: contacts, events.
    pub contact_rows: u64,
    pub event_rows: u64,
    /// Row groups decoded.
    pub row_groups: usize,
    /// Compressed bytes of the column chunks decoded.
    pub bytes: u64,
}

/// One row group of one file, with the columns to decode.
struct Unit {
    file: usize,
    row_group: usize,
    columns: Vec<String>,
    events: bool,
}

impl Session {
    /// Decode, and only decode, what `plan`'s contacts and events passes
    /// read at `clock` (the rows are counted, then dropped).
    pub fn decode_floor(&self, plan: &Plan, clock: &Clock) -> Result<Floor> {
        let mut files: Vec<(PathBuf, ArrowReaderMetadata)> = Vec::new();
        let mut units = Vec::new();
        let open = |path: PathBuf| -> Result<(PathBuf, ArrowReaderMetadata)> {
            let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            let meta = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new())
                .map_err(|e| Error::parquet(&path, e))?;
            Ok((path, meta))
        };

        let mut columns = BTreeSet::new();
        for leaf in &plan.contact_leaves {
            if let Ok(e) = contacts_expr(leaf, self, clock) {
                columns.extend(e.column_refs().into_iter().map(|c| c.name.clone()));
            }
        }
        if let (false, Some(contacts)) = (plan.contact_leaves.is_empty(), &self.manifest.contacts) {
            columns.insert(IID.to_string());
            let (path, meta) = open(self.base.dir().join(&contacts.path))?;
            for row_group in 0..meta.metadata().num_row_groups() {
                units.push(Unit {
                    file: files.len(),
                    row_group,
                    columns: columns.iter().cloned().collect(),
                    events: false,
                });
            }
            files.push((path, meta));
        }

        let parts: Vec<BehaviorParts> = plan
            .event_leaves
            .iter()
            .filter_map(|b| self.behavior_parts(b, clock).ok())
            .collect();
        if !parts.is_empty() {
            let reads = self.events_reads(&parts, clock)?;
            let every: BTreeSet<&String> = reads.sets.iter().flat_map(|(_, c)| c).collect();
            let any = reads
                .windows
                .values()
                .fold((i64::MAX, i64::MIN), |(lo, hi), w| {
                    (lo.min(w.0), hi.max(w.1))
                });
            for (i, with_ts) in reads.files {
                let (path, meta) = open(self.base.dir().join(&self.manifest.events[i].file.path))?;
                for (row_group, g) in meta.metadata().row_groups().iter().enumerate() {
                    // A row group of one type is read with that type's
                    // columns if its times meet that type's windows; one of
                    // mixed types with every column if they meet any window.
                    let (columns, (lo, hi)) = match one_type(g) {
                        Some(t) => match reads.sets.iter().find(|(types, _)| types.contains(&t)) {
                            Some((_, c)) => (c.iter().collect(), reads.windows[&t]),
                            None => continue,
                        },
                        None => (every.clone(), any),
                    };
                    let (min, max) = ts_range(g).unwrap_or((i64::MIN, i64::MAX));
                    if max < lo || min > hi {
                        continue;
                    }
                    let mut read: BTreeSet<String> = columns.into_iter().cloned().collect();
                    read.extend([IID.to_string(), "type".to_string()]);
                    if with_ts {
                        read.insert("ts".to_string());
                    }
                    units.push(Unit {
                        file: files.len(),
                        row_group,
                        columns: read.into_iter().collect(),
                        events: true,
                    });
                }
                files.push((path, meta));
            }
        }
        self.decode(&files, &units)
    }

    /// Decode the units on the session's threads, each taking the next.
    fn decode(&self, files: &[(PathBuf, ArrowReaderMetadata)], units: &[Unit]) -> Result<Floor> {
        let threads = self.ctx.copied_config().target_partitions().max(1);
        let batch = self.ctx.copied_config().batch_size();
        let next = AtomicUsize::new(0);
        let work = || -> Result<Floor> {
            let mut floor = Floor::default();
            while let Some(u) = units.get(next.fetch_add(1, Ordering::Relaxed)) {
                let (path, meta) = &files[u.file];
                let schema = meta.metadata().file_metadata().schema_descr();
                let fields = schema.root_schema().get_fields();
                let roots: Vec<usize> = (0..fields.len())
                    .filter(|&k| u.columns.iter().any(|c| c == fields[k].name()))
                    .collect();
                let group = meta.metadata().row_group(u.row_group);
                floor.bytes += (0..group.num_columns())
                    .filter(|&k| roots.contains(&schema.get_column_root_idx(k)))
                    .map(|k| group.column(k).compressed_size().max(0) as u64)
                    .sum::<u64>();
                let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
                let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, meta.clone())
                    .with_projection(ProjectionMask::roots(schema, roots))
                    .with_row_groups(vec![u.row_group])
                    .with_batch_size(batch)
                    .build()
                    .map_err(|e| Error::parquet(path, e))?;
                let mut rows = 0;
                for b in reader {
                    rows += b?.num_rows() as u64;
                }
                match u.events {
                    true => floor.event_rows += rows,
                    false => floor.contact_rows += rows,
                }
                floor.row_groups += 1;
            }
            Ok(floor)
        };
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads).map(|_| s.spawn(work)).collect();
            let mut total = Floor::default();
            for w in workers {
                let f = w
                    .join()
                    .map_err(|_| Error::Internal("decoding floor: a thread panicked".into()))??;
                total.contact_rows += f.contact_rows;
                total.event_rows += f.event_rows;
                total.row_groups += f.row_groups;
                total.bytes += f.bytes;
            }
            Ok(total)
        })
    }
}

/// The one event type of a row group, from its statistics (None: mixed
/// or unknown).
fn one_type(g: &RowGroupMetaData) -> Option<String> {
    let c = g
        .columns()
        .iter()
        .find(|c| c.column_path().string() == "type")?;
    let s = c.statistics()?;
    match (s.min_bytes_opt(), s.max_bytes_opt()) {
        (Some(a), Some(b)) if a == b => String::from_utf8(a.to_vec()).ok(),
        _ => None,
    }
}

/// The range of a row group's `ts` (µs), from its statistics.
fn ts_range(g: &RowGroupMetaData) -> Option<(i64, i64)> {
    let c = g
        .columns()
        .iter()
        .find(|c| c.column_path().string() == "ts")?;
    match c.statistics()? {
        Statistics::Int64(s) => Some((*s.min_opt()?, *s.max_opt()?)),
        _ => None,
    }
}
