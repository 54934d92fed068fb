//! Behaviour history: the append-only events import, laid out for the
//! queries we run (files per month of `ts`, rows sorted by event type, then
//! internal id, then `ts`, a row group per type at least, so that a scan of
//! some types reads their row groups only and a scan of some contacts their
//! pages only), and the removal of a deleted contact's events.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, TimestampMicrosecondArray, UInt32Array,
    UInt64Array, new_null_array,
};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{DataType, Field, Int32Type, SchemaRef};
use rayon::prelude::*;
use roaring::RoaringBitmap;

use crate::base::Writer;
use crate::base::bitmaps::write_bitmap;
use crate::base::ids::{ContactIdMap, input_contact_ids};
use crate::base::imports::{ImportReport, import_name};
use crate::base::input::InputChunks;
use crate::base::manifest::{EventFile, ImportKind, ImportRecord};
use crate::base::schema::{
    CONTACT_ID, FieldDef, FieldType, IID, check_field_name, recognised_event_field,
};
use crate::base::table::{ParallelWriter, events_properties, read_parquet_one, schema_ref};
use crate::error::{Error, Place, Result};

/// Text event columns (types, operations, URLs, product names...) repeat a
/// limited set of values: they are stored dictionary-encoded and read as
/// dictionaries, so that conditions on them are tested once per distinct
/// value rather than once per row (a chunk whose dictionary grows too large
/// is written plain by the Parquet writer and still reads correctly).
pub fn is_dictionary_column(ty: &FieldType) -> bool {
    matches!(ty, FieldType::Text | FieldType::Choice { .. })
}

pub fn events_schema(columns: &[FieldDef]) -> SchemaRef {
    let mut out = vec![
        Field::new(IID, DataType::UInt32, false),
        Field::new(CONTACT_ID, DataType::UInt64, false),
    ];
    out.extend(columns.iter().map(|f| {
        let required = f.name == "ts" || f.name == "type";
        let dt = if is_dictionary_column(&f.ty) {
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
        } else {
            f.ty.arrow_type()
        };
        Field::new(&f.name, dt, !required)
    }));
    schema_ref(out)
}

pub struct EventImportOptions {
    pub name: Option<String>,
    pub skip_unknown: bool,
}

/// A chunk with fewer rows than the base's contacts divided by this looks
/// up its own contacts' ids alone.
const FEW_IDS: u64 = 16;

/// Append the events of a file. On any error nothing is published (files
/// written for earlier chunks stay unreferenced and are collected).
///
/// The file is read chunk by chunk; each chunk's events are written as
/// files of their own, one per month, so that the size of the file does not
/// bound the import by memory.
pub fn import_events(
    w: &mut Writer,
    file: &Path,
    opts: &EventImportOptions,
) -> Result<ImportReport> {
    let input = InputChunks::open(file)?.text_as_dictionaries()?;
    for required in [CONTACT_ID, "ts", "type"] {
        if input.column(required).is_none() {
            return Err(Error::input(
                file,
                Place::Header,
                format!("the required column {required:?} is missing"),
            ));
        }
    }
    let columns = event_columns(w, &input)?;
    let schema = events_schema(&columns);
    let sep = w.base.config.tags_separator.clone();
    let dir = w.dir().to_path_buf();
    // The whole id map, once a chunk names many contacts; for a chunk of a
    // few, the ids of its contacts alone (a micro-batch then costs a read
    // of the ids, not a hash of every contact of the base).
    let mut whole: Option<ContactIdMap> = None;

    let mut unknown = 0u64;
    // The first event of an unknown contact: where, and whose.
    let mut first_unknown: Option<(Place, u64)> = None;
    let mut files = Vec::new();
    let mut touched = RoaringBitmap::new();
    let mut types = std::collections::BTreeSet::new();
    let mut added = 0u64;
    for chunk in input.iter() {
        let chunk = chunk?;
        let ids = input_contact_ids(&chunk)?;
        if whole.is_none() && ids.len() as u64 * FEW_IDS >= w.next.contact_count {
            whole = Some(ContactIdMap::load(&dir, &w.next)?);
        }
        let some = match whole {
            Some(_) => None,
            None => Some(ContactIdMap::load_some(&dir, &w.next, &ids)?),
        };
        let map = whole.as_ref().or(some.as_ref()).expect("an id map");
        // The internal id of each row, `NONE` for a contact not in the base
        // (internal ids stay below it).
        const NONE: u32 = u32::MAX;
        let iids: Vec<u32> = ids
            .par_iter()
            .with_min_len(64 * 1024)
            .map(|id| map.get(*id).unwrap_or(NONE))
            .collect();
        let missing = iids.par_iter().filter(|&&i| i == NONE).count();
        if missing > 0 {
            unknown += missing as u64;
            let row = iids.iter().position(|&i| i == NONE).expect("a missing row");
            if first_unknown.is_none() && !opts.skip_unknown {
                first_unknown = Some((chunk.locate(row, CONTACT_ID), ids[row]));
            }
        }
        let keep: Option<Vec<bool>> =
            (missing > 0).then(|| iids.iter().map(|&i| i != NONE).collect());
        // Past an unknown contact, the rest of the file is only counted.
        if first_unknown.is_some() {
            continue;
        }
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from(iids)),
            Arc::new(UInt64Array::from(ids)),
        ];
        let converted: Vec<Result<ArrayRef>> = columns
            .par_iter()
            .zip(schema.fields().par_iter().skip(2))
            .map(|(c, field)| {
                let a = match chunk.column(&c.name) {
                    Some(idx) => match (&c.ty, chunk.text_dictionary(idx)?) {
                        (FieldType::Text, Some(dictionary)) => dictionary,
                        _ => chunk.typed(idx, &c.ty, &sep)?,
                    },
                    None => new_null_array(&c.ty.arrow_type(), chunk.rows),
                };
                Ok(datafusion::arrow::compute::cast(&a, field.data_type())?)
            })
            .collect();
        for a in converted {
            arrays.push(a?);
        }
        for required in ["ts", "type"] {
            let a = &arrays[2 + columns
                .iter()
                .position(|c| c.name == required)
                .expect("standard")];
            let nulls = a.nulls().filter(|n| n.null_count() > 0);
            let kept = |r: usize| keep.as_ref().is_none_or(|k| k[r]);
            if let Some(row) = nulls.and_then(|n| (0..a.len()).find(|&r| n.is_null(r) && kept(r))) {
                return Err(chunk.error(row, required, format!("{required} is missing")));
            }
        }
        let batch = RecordBatch::try_new(schema.clone(), arrays)?;
        // Rows of unknown contacts (skipped) are left out; often there are none.
        let batch = match keep {
            None => batch,
            Some(keep) => filter_record_batch(&batch, &BooleanArray::from(keep))?,
        };
        add_types(&batch, &mut types)?;
        touched |= crate::base::bitmaps::bitmap_of(iid_column(&batch));
        files.extend(write_partitioned(w, &schema, &batch)?);
        added += batch.num_rows() as u64;
    }
    if let Some((at, id)) = first_unknown {
        return Err(Error::input(
            file,
            at,
            format!(
                "{unknown} event(s) belong to contacts not in the base (first: contact_id {id}); import the contacts first or pass --skip-unknown"
            ),
        ));
    }
    let paths = files.iter().map(|f| f.file.path.clone()).collect();
    w.next.events.extend(files);
    w.next.event_columns = columns;
    crate::base::changes::record(
        w,
        crate::base::changes::Changed {
            events: touched.clone(),
            types: Some(types.into_iter().collect()),
            files: paths,
            ..Default::default()
        },
    )?;

    let now = Utc::now();
    let (id, name) = import_name(&w.next, file, opts.name.as_deref(), now)?;
    let touched_file = write_bitmap(w, "import", &touched)?;
    let report = ImportReport {
        id: id.clone(),
        name: name.clone(),
        file: file.display().to_string(),
        rows_added: added,
        rows_updated: 0,
        rows_skipped: unknown,
        new_fields: Vec::new(),
    };
    w.next.imports.push(ImportRecord {
        id,
        name,
        kind: ImportKind::Events,
        at: now,
        file: report.file.clone(),
        rows_added: added,
        rows_updated: 0,
        rows_skipped: unknown,
        contacts: touched_file,
    });
    Ok(report)
}

/// The event columns after an import: the base's, then new ones from the
/// file (typed by the configuration, by name, or inferred from a read of
/// the file).
fn event_columns(w: &Writer, input: &InputChunks) -> Result<Vec<FieldDef>> {
    let mut columns = w.next.event_columns.clone();
    let mut to_infer = Vec::new();
    for (idx, name) in input.names.iter().enumerate() {
        if name == CONTACT_ID || columns.iter().any(|c| &c.name == name) {
            continue;
        }
        check_field_name(name).map_err(|m| Error::input(&input.file, Place::Header, m))?;
        let ty = w
            .base
            .config
            .fields
            .get(name)
            .cloned()
            .or_else(|| recognised_event_field(name));
        if ty.is_none() {
            to_infer.push((idx, columns.len()));
        }
        columns.push(FieldDef {
            name: name.clone(),
            ty: ty.unwrap_or(FieldType::Text),
        });
    }
    let (idx, at): (Vec<usize>, Vec<usize>) = to_infer.into_iter().unzip();
    for (c, ty) in at.into_iter().zip(input.infer(&idx)?) {
        columns[c].ty = ty;
    }
    Ok(columns)
}

fn ts_column(batch: &RecordBatch) -> &TimestampMicrosecondArray {
    batch
        .column_by_name("ts")
        .and_then(|a| a.as_any().downcast_ref::<TimestampMicrosecondArray>())
        .expect("events have a µs ts column")
}

/// The internal ids of a batch of events (its first column).
fn iid_column(batch: &RecordBatch) -> &[u32] {
    batch
        .column(0)
        .as_any()
        .downcast_ref::<UInt32Array>()
        .expect("events have u32 ids first")
        .values()
}

pub fn month_of(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .map(|t| t.format("%Y-%m").to_string())
        .unwrap_or_else(|| "invalid".into())
}

/// Split a batch by month of `ts`, sort each part by (`type`, `_iid`, `ts`),
/// write a file each.
pub fn write_partitioned(
    w: &Writer,
    schema: &SchemaRef,
    batch: &RecordBatch,
) -> Result<Vec<EventFile>> {
    let ts = ts_column(batch).values();
    let iids = iid_column(batch);
    let types = type_ranks(batch)?;
    // Rows by month: each row's month in parallel, then the rows pushed
    // to their month's list (directly indexed, as an import spans few).
    let months: Vec<i32> = ts
        .par_iter()
        .with_min_len(64 * 1024)
        .map(|&t| month_index(t) as i32)
        .collect();
    let (lo, hi) = months
        .iter()
        .fold((i32::MAX, i32::MIN), |(lo, hi), &m| (lo.min(m), hi.max(m)));
    let mut slots: BTreeMap<i32, Vec<u32>> = BTreeMap::new();
    if lo <= hi && hi - lo < 4096 {
        let mut by_slot: Vec<Vec<u32>> = vec![Vec::new(); (hi - lo) as usize + 1];
        for (row, &m) in months.iter().enumerate() {
            by_slot[(m - lo) as usize].push(row as u32);
        }
        for (slot, rows) in by_slot.into_iter().enumerate() {
            if !rows.is_empty() {
                slots.insert(lo + slot as i32, rows);
            }
        }
    } else {
        for (row, &m) in months.iter().enumerate() {
            slots.entry(m).or_default().push(row as u32);
        }
    }
    drop(months);
    let by_month = slots;
    let mut out = Vec::new();
    for (_, rows) in by_month {
        let month = month_of(ts[rows[0] as usize]);
        let indices = UInt32Array::from(stored_order(rows, &types, iids, ts));
        out.push(write_sorted(
            w,
            schema,
            batch,
            &types,
            Some(&indices),
            &month,
        )?);
    }
    Ok(out)
}

/// `rows` (ascending) in the order events are stored: by (`type`, `_iid`,
/// `ts`), then by row, so that the order is the same however the rows were
/// grouped. Each type's rows, in row order, are sorted by `_iid` (a stable
/// radix sort); only a contact's rows that are not already in time order
/// are sorted again (an import ordered by time or by contact has none).
fn stored_order(rows: Vec<u32>, types: &[u32], iids: &[u32], ts: &[i64]) -> Vec<u32> {
    let kinds = rows
        .iter()
        .map(|&r| types[r as usize] + 1)
        .max()
        .unwrap_or(0);
    let mut by_type: Vec<Vec<u64>> = vec![Vec::new(); kinds as usize];
    for r in rows {
        by_type[types[r as usize] as usize].push(u64::from(iids[r as usize]) << 32 | u64::from(r));
    }
    by_type
        .into_par_iter()
        .flat_map_iter(|mut keys| {
            // Stable, by `_iid` alone: rows were pushed in order.
            radsort::sort_by_key(&mut keys, |&k| (k >> 32) as u32);
            let mut order: Vec<u32> = keys.iter().map(|&k| k as u32).collect();
            let mut start = 0;
            while start < keys.len() {
                let contact = keys[start] >> 32;
                let len = keys[start..]
                    .iter()
                    .take_while(|&&k| k >> 32 == contact)
                    .count();
                let run = &mut order[start..start + len];
                if len > 1 && !run.is_sorted_by_key(|&r| ts[r as usize]) {
                    run.sort_unstable_by_key(|&r| (ts[r as usize], r));
                }
                start += len;
            }
            order
        })
        .collect()
}

/// The month of a µs timestamp (UTC) as `year * 12 + month - 1`, by the
/// civil-from-days arithmetic (no calendar object per row).
fn month_index(micros: i64) -> i64 {
    let days = micros.div_euclid(86_400_000_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    year * 12 + month - 1
}

/// The `type` column of a batch as a dictionary, whatever it is stored as.
fn type_dictionary(batch: &RecordBatch) -> Result<ArrayRef> {
    let column = batch
        .column_by_name("type")
        .ok_or_else(|| Error::Internal("events: no type column".into()))?;
    Ok(datafusion::arrow::compute::cast(
        column,
        &DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
    )?)
}

/// Add the event types of a batch's rows to a set.
fn add_types(batch: &RecordBatch, into: &mut std::collections::BTreeSet<String>) -> Result<()> {
    let column = type_dictionary(batch)?;
    let types = column.as_dictionary::<Int32Type>();
    let names = types.values().as_string::<i32>();
    let mut used = vec![false; names.len()];
    for &k in types.keys().values().iter() {
        used[k as usize] = true;
    }
    for (k, used) in used.into_iter().enumerate() {
        if used && !into.contains(names.value(k)) {
            into.insert(names.value(k).to_string());
        }
    }
    Ok(())
}

/// Each row's event type as its rank among the batch's types (in the order
/// of their names), whatever the dictionary holding them.
fn type_ranks(batch: &RecordBatch) -> Result<Vec<u32>> {
    let column = type_dictionary(batch)?;
    let types = column.as_dictionary::<Int32Type>();
    let names = types.values().as_string::<i32>();
    let mut order: Vec<u32> = (0..names.len() as u32).collect();
    order.sort_by_key(|&k| names.value(k as usize));
    // Equal names (a dictionary may repeat one) share their rank.
    let mut rank = vec![0u32; names.len()];
    for pair in order.windows(2) {
        let same = names.value(pair[0] as usize) == names.value(pair[1] as usize);
        rank[pair[1] as usize] = rank[pair[0] as usize] + u32::from(!same);
    }
    Ok(types
        .keys()
        .values()
        .iter()
        .map(|&k| rank[k as usize])
        .collect())
}

/// Write the rows `indices` of a batch, which are in (`type`, `_iid`, `ts`)
/// order, as one month's file (all rows, in their order, without indices),
/// each type's rows in row groups of their own (`types`: the batch's
/// [`type_ranks`]).
fn write_sorted(
    w: &Writer,
    schema: &SchemaRef,
    batch: &RecordBatch,
    types: &[u32],
    indices: Option<&UInt32Array>,
    month: &str,
) -> Result<EventFile> {
    let rows = indices.map_or(batch.num_rows(), |i| i.len());
    let row = |at: usize| indices.map_or(at, |i| i.value(at) as usize);
    let ts = ts_column(batch).values();
    let (min_ts, max_ts) = (0..rows)
        .into_par_iter()
        .with_min_len(64 * 1024)
        .fold(
            || (i64::MAX, i64::MIN),
            |(lo, hi), at| (lo.min(ts[row(at)]), hi.max(ts[row(at)])),
        )
        .reduce(|| (i64::MAX, i64::MIN), |a, b| (a.0.min(b.0), a.1.max(b.1)));
    // Each type's rows, one range of the order each.
    let mut ranges = Vec::new();
    let mut start = 0;
    while start < rows {
        let kind = types[row(start)];
        let end = (start + 1..rows)
            .find(|&at| types[row(at)] != kind)
            .unwrap_or(rows);
        ranges.push(start..end);
        start = end;
    }
    let sink = w.new_file(&format!("events/{month}"), "events", "parquet")?;
    let mut writer = ParallelWriter::new(sink, schema.clone(), events_properties())?;
    writer.write_groups(batch, indices, &ranges)?;
    let file = writer.finish()?;
    Ok(EventFile {
        file,
        month: month.to_string(),
        rows: rows as u64,
        min_ts,
        max_ts,
        by_type: true,
    })
}

/// A month's file written in (`_iid`, `ts`) order, as the generator writes
/// it, rewritten in the stored order; the first file is removed.
pub fn sort_by_type(w: &Writer, file: &EventFile) -> Result<EventFile> {
    let path = w.dir().join(&file.file.path);
    let batch = read_parquet_one(&path, None)?;
    let types = type_ranks(&batch)?;
    let mut order: Vec<u32> = (0..batch.num_rows() as u32).collect();
    // Stable: each type's rows keep their (`_iid`, `ts`) order.
    order.par_sort_by_key(|&r| types[r as usize]);
    let indices = UInt32Array::from(order);
    let sorted = write_sorted(
        w,
        &batch.schema(),
        &batch,
        &types,
        Some(&indices),
        &file.month,
    )?;
    drop(batch);
    std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
    Ok(sorted)
}

/// One month's files merged into one by [`compact_months`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct MonthCompaction {
    pub month: String,
    /// Files before; one after.
    pub files: usize,
    pub rows: u64,
}

/// Whether an events file keeps each type's rows in row groups of their
/// own: recorded by the writer since the flag exists, read from the row
/// groups' statistics of `type` for files written before.
pub fn stored_by_type(dir: &Path, e: &EventFile) -> bool {
    e.by_type || rows_by_type(dir, e).is_some()
}

/// The row groups of a file stored by type, in file order.
#[derive(Debug)]
pub struct TypeGroups {
    pub groups: Vec<TypeGroup>,
    rows: HashMap<String, u64>,
}

/// A row group of one event type, and where it starts: the offset of its
/// first column's first page, by which a byte range of the file holds it.
#[derive(Debug)]
pub struct TypeGroup {
    pub ty: String,
    pub rows: u64,
    pub start: i64,
}

impl TypeGroups {
    pub fn new(groups: Vec<TypeGroup>) -> TypeGroups {
        let mut rows: HashMap<String, u64> = HashMap::new();
        for g in &groups {
            *rows.entry(g.ty.clone()).or_default() += g.rows;
        }
        TypeGroups { groups, rows }
    }

    /// The rows of an event type.
    pub fn rows(&self, ty: &str) -> Option<u64> {
        self.rows.get(ty).copied()
    }
}

/// The row groups of a file stored by type (None for a file whose row
/// groups mix types, or unreadable), from their statistics of `type`;
/// read once a process, as files never change.
pub fn rows_by_type(dir: &Path, e: &EventFile) -> Option<std::sync::Arc<TypeGroups>> {
    type_groups_at(&dir.join(&e.file.path))
}

/// [`rows_by_type`] of the file at a path.
pub fn type_groups_at(path: &Path) -> Option<std::sync::Arc<TypeGroups>> {
    use std::sync::{Arc, LazyLock, Mutex};
    type Seen = HashMap<std::path::PathBuf, Option<Arc<TypeGroups>>>;
    static SEEN: LazyLock<Mutex<Seen>> = LazyLock::new(|| Mutex::new(HashMap::new()));
    let key = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    if let Some(known) = SEEN.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return known.clone();
    }
    let read = read_type_groups(&key).map(Arc::new);
    SEEN.lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, read.clone());
    read
}

/// The row groups when every one's `type` statistics hold one value.
fn read_type_groups(path: &Path) -> Option<TypeGroups> {
    use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(std::fs::File::open(path).ok()?).ok()?;
    let meta = reader.metadata();
    let column = meta
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|c| c.name() == "type")?;
    let mut groups = Vec::with_capacity(meta.num_row_groups());
    for g in meta.row_groups() {
        let s = g.column(column).statistics()?;
        match (s.min_bytes_opt(), s.max_bytes_opt(), s.null_count_opt()) {
            (Some(a), Some(b), Some(0)) if a == b => {
                let ty = String::from_utf8(a.to_vec()).ok()?;
                let first = g.column(0);
                groups.push(TypeGroup {
                    ty,
                    rows: g.num_rows().max(0) as u64,
                    start: first
                        .dictionary_page_offset()
                        .unwrap_or_else(|| first.data_page_offset()),
                });
            }
            _ => return None,
        }
    }
    Some(TypeGroups::new(groups))
}

/// The months `segments compact` rewrites: those holding more than
/// `max_files` files, and those with a file of the older layout (by
/// contact, types mixed in every row group), rewritten by type.
pub fn months_to_rewrite(dir: &Path, events: &[EventFile], max_files: usize) -> Vec<String> {
    let mut out = months_over(events, max_files);
    for e in events {
        if !out.contains(&e.month) && !stored_by_type(dir, e) {
            out.push(e.month.clone());
        }
    }
    out.sort();
    out
}

/// The months that hold more than `max_files` files, oldest first.
pub fn months_over(events: &[EventFile], max_files: usize) -> Vec<String> {
    let mut per_month: BTreeMap<&str, usize> = BTreeMap::new();
    for e in events {
        *per_month.entry(e.month.as_str()).or_default() += 1;
    }
    per_month
        .into_iter()
        .filter(|(_, n)| *n > max_files.max(1))
        .map(|(m, _)| m.to_string())
        .collect()
}

/// Merge the files of each of `months` into one, sorted by (`type`,
/// `_iid`, `ts`) as an import writes a month (rows of one contact at one instant keep
/// the order of their files), in the next version; the merged file takes
/// the place of the month's first. A file written before a column was added
/// reads it as empty, as the scans do.
pub fn compact_months(w: &mut Writer, months: &[String]) -> Result<Vec<MonthCompaction>> {
    let dir = w.dir().to_path_buf();
    let schema = events_schema(&w.next.event_columns);
    let files = std::mem::take(&mut w.next.events);
    let mut merged: BTreeMap<String, EventFile> = BTreeMap::new();
    let mut report = Vec::new();
    for month in months {
        let of_month: Vec<&EventFile> = files.iter().filter(|e| &e.month == month).collect();
        if of_month.len() < 2 && of_month.iter().all(|e| stored_by_type(&dir, e)) {
            continue;
        }
        let batches = of_month
            .iter()
            .map(|e| {
                let b = read_parquet_one(&dir.join(&e.file.path), None)?;
                aligned(&b, &schema)
            })
            .collect::<Result<Vec<_>>>()?;
        let all = datafusion::arrow::compute::concat_batches(&schema, &batches)?;
        drop(batches);
        let iids = iid_column(&all);
        let ts = ts_column(&all).values();
        let types = type_ranks(&all)?;
        let rows = (0..all.num_rows() as u32).collect();
        let indices = UInt32Array::from(stored_order(rows, &types, iids, ts));
        let file = write_sorted(w, &schema, &all, &types, Some(&indices), month)?;
        report.push(MonthCompaction {
            month: month.clone(),
            files: of_month.len(),
            rows: file.rows,
        });
        merged.insert(month.clone(), file);
    }
    let compacted: Vec<String> = merged.keys().cloned().collect();
    let mut out = Vec::with_capacity(files.len());
    for e in files {
        if !compacted.contains(&e.month) {
            out.push(e);
        } else if let Some(file) = merged.remove(&e.month) {
            out.push(file);
        }
    }
    w.next.events = out;
    Ok(report)
}

/// A batch of an events file with the columns of `schema`: those it lacks
/// (added to the base after it was written) empty.
fn aligned(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => Ok(datafusion::arrow::compute::cast(c, f.data_type())?),
            None => Ok(new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Rewrite the event files that hold events of deleted contacts.
pub fn delete_events_of(w: &mut Writer, gone: &RoaringBitmap) -> Result<()> {
    let dir = w.dir().to_path_buf();
    let files = std::mem::take(&mut w.next.events);
    let mut out = Vec::with_capacity(files.len());
    for ef in files {
        let batch = read_parquet_one(&dir.join(&ef.file.path), None)?;
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<UInt32Array>()
            .ok_or_else(|| Error::base(&dir, format!("{}: no _iid column", ef.file.path)))?;
        if !ids.values().iter().any(|i| gone.contains(*i)) {
            out.push(ef);
            continue;
        }
        let keep: BooleanArray = ids
            .values()
            .iter()
            .map(|i| Some(!gone.contains(*i)))
            .collect();
        let kept = filter_record_batch(&batch, &keep)?;
        if kept.num_rows() > 0 {
            // Filtering keeps the (`type`, `_iid`, `ts`) order.
            let types = type_ranks(&kept)?;
            out.push(write_sorted(
                w,
                &kept.schema(),
                &kept,
                &types,
                None,
                &ef.month,
            )?);
        }
    }
    w.next.events = out;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Rows come out by (`type`, `_iid`, `ts`, row) whatever order they
    /// come in: by time, by contact, or shuffled, with ties in every key.
    #[test]
    fn stored_order_is_by_type_contact_time_and_row() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        for case in 0..300 {
            let n = rng.random_range(0..400);
            let kinds = rng.random_range(1..6);
            let contacts = rng.random_range(1..50);
            let mut rows: Vec<(u32, u32, i64)> = (0..n)
                .map(|_| {
                    (
                        rng.random_range(0..kinds),
                        rng.random_range(0..contacts),
                        rng.random_range(-3..20),
                    )
                })
                .collect();
            match case % 3 {
                0 => rows.sort_by_key(|r| r.2),
                1 => rows.sort_by_key(|r| (r.1, r.2)),
                _ => {}
            }
            let types: Vec<u32> = rows.iter().map(|r| r.0).collect();
            let iids: Vec<u32> = rows.iter().map(|r| r.1).collect();
            let ts: Vec<i64> = rows.iter().map(|r| r.2).collect();
            let mut want: Vec<u32> = (0..n).collect();
            want.sort_by_key(|&r| (types[r as usize], iids[r as usize], ts[r as usize], r));
            // Any subset of the rows, as a month is.
            let subset: Vec<u32> = (0..n).filter(|r| case % 2 == 0 || r % 3 != 0).collect();
            want.retain(|r| subset.contains(r));
            assert_eq!(
                stored_order(subset, &types, &iids, &ts),
                want,
                "case {case}"
            );
        }
    }

    /// The month arithmetic agrees with the calendar, before and after
    /// 1970, across leap years and month ends.
    #[test]
    fn month_index_agrees_with_the_calendar() {
        let step = 7 * 3_600_000_000 + 13 * 60_000_000 + 1;
        let mut t: i64 = -40 * 365 * 86_400_000_000;
        while t < 140 * 365 * 86_400_000_000 {
            for at in [t, t - 1, t + 1] {
                let m = month_index(at);
                let label = format!("{:04}-{:02}", m.div_euclid(12), m.rem_euclid(12) + 1);
                assert_eq!(label, month_of(at), "{at}");
            }
            t += step;
        }
    }
}
