//! Contacts: the id map (user `contact_id` to dense internal id), the upsert
//! import, and deletion (right to be forgotten).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, GenericListArray, RecordBatch, StringArray,
    UInt32Array, UInt64Array, new_null_array,
};
use datafusion::arrow::compute::{filter_record_batch, interleave, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef};
use rayon::prelude::*;
use roaring::{RoaringBitmap, RoaringTreemap};

use crate::base::Writer;
use crate::base::bitmaps::{read_bitmap, write_bitmap};
use crate::base::ids::{ContactIdMap, id_columns, input_contact_ids};
use crate::base::imports::{ImportReport, import_name};
use crate::base::input::{Inference, InputChunks, InputTable, chunk_bytes, typed_text};
use crate::base::manifest::{DataFile, ImportKind, ImportRecord, Manifest};
use crate::base::schema::{
    CONTACT_ID, FieldDef, FieldType, IID, check_field_name, recognised_contact_field,
};
use crate::base::table::{
    ParallelWriter, ParquetFile, Spool, Taker, contacts_properties, parquet_schema, read_parquet,
    read_parquet_one, schema_ref, write_parquet,
};
use crate::error::{Error, Place, Result};

/// The Arrow schema of the contacts file for a list of fields.
pub fn contacts_schema(fields: &[FieldDef]) -> datafusion::arrow::datatypes::SchemaRef {
    let mut out = vec![
        Field::new(IID, DataType::UInt32, false),
        Field::new(CONTACT_ID, DataType::UInt64, false),
    ];
    out.extend(
        fields
            .iter()
            .map(|f| Field::new(&f.name, f.ty.arrow_type(), true)),
    );
    schema_ref(out)
}

/// A text column is stored dictionary-encoded when it has at most one
/// distinct value for this many values (cities, countries, choices...).
const DICTIONARY_RATIO: usize = 4;
/// ... and its distinct values fit in this many bytes, well within one
/// Parquet dictionary page per row group.
const DICTIONARY_BYTES: usize = 256 << 10;

/// Values looked at to choose.
const DICTIONARY_SAMPLE: usize = 64 * 1024;

/// An import keeps the rows of the contacts it added or updated (for a
/// recompute to read them alone) when they are at most this share of the
/// base's contacts before it, and at most [`CHANGED_ROWS_MAX`]: more, and
/// a recompute reads every contact anyway.
const CHANGED_ROWS_SHARE: u64 = 8;
const CHANGED_ROWS_MAX: usize = 1 << 20;

/// Contacts as they are stored (see [`storage_schema`]).
pub fn for_storage(batch: &RecordBatch) -> Result<RecordBatch> {
    let schema = storage_schema(&batch.schema(), std::slice::from_ref(batch))?;
    to_storage(batch, &schema)
}

/// The types contacts are stored with: text columns with few distinct
/// values among the first rows of the samples (cities, countries,
/// choices...) dictionary-encoded, the others plain. Conditions on a
/// dictionary column are tested once per distinct value, and its values are
/// decoded once per page.
fn storage_schema(plain: &SchemaRef, samples: &[RecordBatch]) -> Result<SchemaRef> {
    let fields: Vec<Result<Field>> = plain
        .fields()
        .par_iter()
        .enumerate()
        .map(|(i, f)| {
            if f.data_type() != &DataType::Utf8 {
                return Ok(f.as_ref().clone());
            }
            let mut left = DICTIONARY_SAMPLE;
            let mut parts: Vec<ArrayRef> = Vec::new();
            for b in samples {
                let k = left.min(b.num_rows());
                parts.push(b.column(i).slice(0, k));
                left -= k;
            }
            let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
            let sample = datafusion::arrow::compute::concat(&refs)?;
            Ok(if few_distinct(sample.as_string::<i32>()) {
                Field::new(
                    f.name(),
                    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                    f.is_nullable(),
                )
            } else {
                f.as_ref().clone()
            })
        })
        .collect();
    Ok(schema_ref(fields.into_iter().collect::<Result<_>>()?))
}

fn few_distinct(text: &StringArray) -> bool {
    let present = text.len() - text.null_count();
    if present == 0 {
        return false;
    }
    let limit = (present / DICTIONARY_RATIO).max(1);
    let mut seen: HashSet<&str> = HashSet::new();
    let mut bytes = 0usize;
    for v in text.iter().flatten() {
        if seen.insert(v) {
            bytes += v.len();
            if seen.len() > limit || bytes > DICTIONARY_BYTES {
                return false;
            }
        }
    }
    true
}

/// A batch of contacts with the types of a storage schema.
pub fn to_storage(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(a, f)| datafusion::arrow::compute::cast(a, f.data_type()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Write all contacts as the base's new contacts file.
fn write_contacts(w: &Writer, batch: &RecordBatch) -> Result<DataFile> {
    let stored = for_storage(batch)?;
    let sink = w.new_file("contacts", "contacts", "parquet")?;
    let props = contacts_properties(&stored.schema());
    write_parquet(sink, stored.schema(), &[stored], props)
}

/// The schema of the contacts table as stored (dictionary-encoded text
/// columns included).
pub fn stored_contacts_schema(dir: &Path, m: &Manifest) -> Result<SchemaRef> {
    match &m.contacts {
        Some(f) => parquet_schema(&dir.join(&f.path)),
        None => Ok(contacts_schema(&m.fields)),
    }
}

/// All contacts of a version in one batch, every column with its plain
/// type (empty batch when there are none).
pub fn load_contacts(dir: &Path, m: &Manifest) -> Result<RecordBatch> {
    match &m.contacts {
        Some(f) => {
            let stored = read_parquet_one(&dir.join(&f.path), None)?;
            to_storage(&stored, &contacts_schema(&m.fields))
        }
        None => Ok(RecordBatch::new_empty(contacts_schema(&m.fields))),
    }
}

pub struct ImportOptions {
    pub name: Option<String>,
    pub overwrite_empty: bool,
}

/// Decide the type of each input column: the base's field, the declaration in
/// the configuration, the recognised column, or inference, in that order.
/// A Parquet column is inferred from its schema. A CSV column to infer is
/// returned as text with its index in the second list: its values are
/// narrowed while the file is read, and typed after.
fn column_types(w: &Writer, input: &InputChunks) -> Result<(Vec<Option<FieldType>>, Vec<usize>)> {
    let mut out = Vec::new();
    let mut to_infer = Vec::new();
    for (idx, name) in input.names.iter().enumerate() {
        if name == CONTACT_ID {
            out.push(None);
            continue;
        }
        check_field_name(name).map_err(|m| Error::input(&input.file, Place::Header, m))?;
        if input.names[..idx].contains(name) {
            return Err(Error::input(
                &input.file,
                Place::Header,
                format!("column {name:?} appears twice"),
            ));
        }
        let ty = if let Some(f) = w.next.fields.iter().find(|f| &f.name == name) {
            f.ty.clone()
        } else if let Some(t) = w.base.config.fields.get(name) {
            t.clone()
        } else if let Some(t) = recognised_contact_field(name) {
            t
        } else if let Some(t) = input.schema_type(idx) {
            t
        } else {
            to_infer.push(idx);
            FieldType::Text
        };
        out.push(Some(ty));
    }
    Ok((out, to_infer))
}

/// The schema of the spooled input rows: `contact_id`, then the file's fields.
fn spooled_schema(incoming: &[(usize, FieldDef)]) -> SchemaRef {
    let mut spooled = vec![Field::new(CONTACT_ID, DataType::UInt64, false)];
    spooled.extend(
        incoming
            .iter()
            .map(|(_, f)| Field::new(&f.name, f.ty.arrow_type(), true)),
    );
    schema_ref(spooled)
}

fn is_empty_at(a: &dyn Array, row: usize) -> bool {
    if a.is_null(row) {
        return true;
    }
    if let Some(s) = a.as_any().downcast_ref::<StringArray>() {
        return s.value(row).is_empty();
    }
    if let Some(l) = a.as_any().downcast_ref::<GenericListArray<i32>>() {
        return l.value_length(row) == 0;
    }
    false
}

/// The contacts of a version by position in its file: internal ids, and
/// `contact_id`s sorted for lookup (16 bytes a contact).
struct ExistingIds {
    iids: Vec<u32>,
    by_contact: Vec<(u64, u32)>,
}

impl ExistingIds {
    fn load(dir: &Path, m: &Manifest) -> Result<ExistingIds> {
        let Some(f) = &m.contacts else {
            return Ok(ExistingIds {
                iids: Vec::new(),
                by_contact: Vec::new(),
            });
        };
        let (_, batches) = read_parquet(&dir.join(&f.path), Some(&[IID, CONTACT_ID]))?;
        let mut iids = Vec::new();
        let mut by_contact = Vec::new();
        for b in &batches {
            let (i, c) = id_columns(b)?;
            iids.extend_from_slice(i.values());
            by_contact.extend(c.values().iter().map(|&c| (c, 0)));
        }
        for (pos, entry) in by_contact.iter_mut().enumerate() {
            entry.1 = pos as u32;
        }
        by_contact.par_sort_unstable();
        Ok(ExistingIds { iids, by_contact })
    }

    fn position(&self, contact_id: u64) -> Option<u32> {
        self.by_contact
            .binary_search_by_key(&contact_id, |e| e.0)
            .ok()
            .map(|k| self.by_contact[k].1)
    }
}

/// The input rows that update existing contacts, one run per chunk of the
/// file, each sorted by the position of the contact it updates.
struct Run<'a> {
    positions: Vec<u32>,
    at: usize,
    rows: Taker<'a>,
}

/// Upsert the contacts of a file. On any error nothing is written.
///
/// The file is read chunk by chunk, so that its size does not bound the
/// import by memory: each chunk's rows are typed and split into updates of
/// existing contacts (sorted by position) and new contacts, both kept in
/// spools that go to disk past a budget. The new contacts file is then
/// written in one pass over the old one, row group by row group, each with
/// its updates merged in, followed by the new contacts.
pub fn import_contacts(w: &mut Writer, file: &Path, opts: &ImportOptions) -> Result<ImportReport> {
    let input = InputChunks::open(file)?;
    if input.column(CONTACT_ID).is_none() {
        return Err(Error::input(
            file,
            Place::Header,
            "the required column \"contact_id\" is missing",
        ));
    }
    let read = Spooled::read(w, &input)?;
    let retype = Retype::of(&read, w.base.config.tags_separator.clone());

    // The new field list: existing fields, then the file's new columns.
    let mut fields = w.next.fields.clone();
    let mut new_fields = Vec::new();
    for (_, f) in &retype.incoming {
        if !fields.iter().any(|g| g.name == f.name) {
            fields.push(f.clone());
            new_fields.push(f.name.clone());
        }
    }
    let first_new = w.next.next_iid;
    let next_iid = u32::try_from(read.added.rows())
        .ok()
        .and_then(|n| first_new.checked_add(n))
        .ok_or_else(|| Error::base(w.dir(), "more than 4 billion contacts"))?;
    let (contacts_file, changed_rows) = write_merged(w, &read, &retype, &fields, first_new, opts)?;

    let Spooled {
        seen, mut touched, ..
    } = read;
    touched.insert_range(first_new..next_iid);
    let mut all = match &w.next.all_contacts {
        Some(f) => read_bitmap(w.dir(), f)?,
        None => RoaringBitmap::new(),
    };
    all.insert_range(first_new..next_iid);
    let all_file = write_bitmap(w, "all-contacts", &all)?;
    let touched_file = write_bitmap(w, "import", &touched)?;

    let now = Utc::now();
    let (id, name) = import_name(&w.next, file, opts.name.as_deref(), now)?;
    let rows_added = u64::from(next_iid - first_new);
    let report = ImportReport {
        id: id.clone(),
        name: name.clone(),
        file: file.display().to_string(),
        rows_added,
        rows_updated: seen.len() - rows_added,
        rows_skipped: 0,
        new_fields,
    };
    w.next.imports.push(ImportRecord {
        id,
        name,
        kind: ImportKind::Contacts,
        at: now,
        file: report.file.clone(),
        rows_added: report.rows_added,
        rows_updated: report.rows_updated,
        rows_skipped: 0,
        contacts: touched_file,
    });
    crate::base::changes::record(
        w,
        crate::base::changes::Changed {
            presence: (first_new..next_iid).collect(),
            fields: touched,
            rows: changed_rows,
            ..Default::default()
        },
    )?;
    w.next.fields = fields;
    w.next.next_iid = next_iid;
    w.next.contact_count = all.len();
    w.next.contacts = Some(contacts_file);
    crate::base::times::index_contacts(w)?;
    w.next.all_contacts = Some(all_file);
    Ok(report)
}

/// The first phase of an import of contacts: the file read chunk by chunk,
/// each chunk's rows typed and split into updates of existing contacts and
/// new contacts, both spooled; the columns to infer kept as text while
/// their values narrow the type.
struct Spooled {
    /// The file's fields (index in the file, field), as text for those
    /// still to infer.
    incoming: Vec<(usize, FieldDef)>,
    /// The schema of the spooled rows: `contact_id`, then `incoming`.
    schema: SchemaRef,
    updates: Spool,
    added: Spool,
    /// For each chunk, the positions in the old file of the contacts it
    /// updates, sorted (its rows in the spool of updates, in that order).
    run_positions: Vec<Vec<u32>>,
    /// Every `contact_id` of the file.
    seen: RoaringTreemap,
    /// Internal ids of the existing contacts the file updates.
    touched: RoaringBitmap,
    /// The file's columns whose type is inferred, and what their values say.
    to_infer: Vec<usize>,
    inferences: Vec<Inference>,
}

impl Spooled {
    fn read(w: &Writer, input: &InputChunks) -> Result<Spooled> {
        let (types, to_infer) = column_types(w, input)?;
        let sep = w.base.config.tags_separator.clone();
        let dir = w.dir();
        let incoming: Vec<(usize, FieldDef)> = types
            .iter()
            .enumerate()
            .filter_map(|(idx, ty)| {
                let ty = ty.clone()?;
                let name = input.names[idx].clone();
                Some((idx, FieldDef { name, ty }))
            })
            .collect();
        let schema = spooled_schema(&incoming);
        let existing = ExistingIds::load(dir, &w.next)?;
        let budget = 2 * chunk_bytes() as usize;
        let mut out = Spooled {
            updates: Spool::new(dir, schema.clone(), budget),
            added: Spool::new(dir, schema.clone(), budget),
            run_positions: Vec::new(),
            seen: RoaringTreemap::new(),
            touched: RoaringBitmap::new(),
            inferences: vec![Inference::default(); to_infer.len()],
            to_infer,
            incoming,
            schema,
        };
        for chunk in input.iter() {
            let chunk = chunk?;
            let ids = input_contact_ids(&chunk)?;
            for (row, id) in ids.iter().enumerate() {
                if !out.seen.insert(*id) {
                    return Err(duplicate(input, &chunk, row, *id));
                }
            }
            // Columns are converted in parallel, while the columns to infer
            // are narrowed; the first error in column order is reported.
            let (typed, ()) = rayon::join(
                || -> Vec<Result<ArrayRef>> {
                    out.incoming
                        .par_iter()
                        .map(|(idx, f)| chunk.typed(*idx, &f.ty, &sep))
                        .collect()
                },
                || {
                    out.inferences
                        .par_iter_mut()
                        .zip(&out.to_infer)
                        .for_each(|(inference, &idx)| chunk.narrow(idx, inference))
                },
            );
            let mut upd: Vec<(u32, u32)> = Vec::new();
            let mut new_rows: Vec<u32> = Vec::new();
            for (row, id) in ids.iter().enumerate() {
                match existing.position(*id) {
                    Some(pos) => {
                        upd.push((pos, row as u32));
                        out.touched.insert(existing.iids[pos as usize]);
                    }
                    None => new_rows.push(row as u32),
                }
            }
            let mut columns: Vec<ArrayRef> = vec![Arc::new(UInt64Array::from(ids))];
            for c in typed {
                columns.push(c?);
            }
            let batch = RecordBatch::try_new(out.schema.clone(), columns)?;
            upd.sort_unstable();
            if !upd.is_empty() {
                let rows = UInt32Array::from_iter_values(upd.iter().map(|u| u.1));
                out.updates.push(take_record_batch(&batch, &rows)?)?;
            }
            out.run_positions
                .push(upd.into_iter().map(|u| u.0).collect());
            if new_rows.len() == batch.num_rows() {
                out.added.push(batch)?;
            } else {
                out.added
                    .push(take_record_batch(&batch, &UInt32Array::from(new_rows))?)?;
            }
        }
        out.updates.close()?;
        out.added.close()?;
        Ok(out)
    }
}

/// The second phase: the inferred types, and the spooled text of those
/// columns typed as the spools are read back.
struct Retype {
    /// The file's fields with their final types.
    incoming: Vec<(usize, FieldDef)>,
    /// Spooled columns to type (position in the batch, type).
    to_type: Vec<(usize, FieldType)>,
    /// The schema the rows were spooled with, and the one they are read as.
    text_schema: SchemaRef,
    schema: SchemaRef,
    sep: String,
}

impl Retype {
    fn of(read: &Spooled, sep: String) -> Retype {
        let mut incoming = read.incoming.clone();
        let mut to_type = Vec::new();
        for (inference, idx) in read.inferences.iter().zip(&read.to_infer) {
            let at = incoming
                .iter()
                .position(|(i, _)| i == idx)
                .expect("an input column");
            let ty = inference.result();
            if ty != FieldType::Text {
                to_type.push((1 + at, ty.clone()));
            }
            incoming[at].1.ty = ty;
        }
        let schema = spooled_schema(&incoming);
        Retype {
            incoming,
            to_type,
            text_schema: read.schema.clone(),
            schema,
            sep,
        }
    }

    /// A spooled batch with its inferred columns typed.
    fn apply(&self, b: Result<RecordBatch>) -> Result<RecordBatch> {
        let b = b?;
        if self.to_type.is_empty() {
            return Ok(b);
        }
        let mut columns = b.columns().to_vec();
        let converted: Vec<Result<(usize, ArrayRef)>> = self
            .to_type
            .par_iter()
            .map(|(c, ty)| {
                let a = typed_text(&columns[*c], ty, &self.sep).map_err(|(_, m)| {
                    Error::Internal(format!(
                        "column {:?} inferred as {}: {m}",
                        self.text_schema.field(*c).name(),
                        ty.name()
                    ))
                })?;
                Ok((*c, a))
            })
            .collect();
        for c in converted {
            let (c, a) = c?;
            columns[c] = a;
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    /// Rows of a spool, typed as they are read.
    fn taker<'a>(
        &'a self,
        rows: Box<dyn Iterator<Item = Result<RecordBatch>> + Send + 'a>,
    ) -> Taker<'a> {
        Taker::new(self.schema.clone(), Box::new(rows.map(|b| self.apply(b))))
    }
}

/// The third phase: the new contacts file, written in one pass over the
/// old one, row group by row group with its updates merged in, followed by
/// the new contacts (from internal id `first_new`).
fn write_merged(
    w: &Writer,
    read: &Spooled,
    retype: &Retype,
    fields: &[FieldDef],
    first_new: u32,
    opts: &ImportOptions,
) -> Result<(DataFile, Option<DataFile>)> {
    let dir = w.dir();
    // The runs, each read from its place in the spool of updates.
    let mut runs = Vec::with_capacity(read.run_positions.len());
    let mut offset = 0;
    for positions in &read.run_positions {
        let rows = retype.taker(read.updates.read(offset, positions.len())?);
        offset += positions.len();
        runs.push(Run {
            positions: positions.clone(),
            at: 0,
            rows,
        });
    }

    let plain = contacts_schema(fields);
    let new_sample = retype
        .taker(read.added.read(0, DICTIONARY_SAMPLE)?)
        .take(DICTIONARY_SAMPLE)
        .and_then(|b| new_rows_batch(&b, first_new, fields, &plain))?;
    let mut out = Output::default();
    let cap = usize::try_from(w.next.contact_count / CHANGED_ROWS_SHARE)
        .unwrap_or(usize::MAX)
        .min(CHANGED_ROWS_MAX);
    let mut changed = ChangedRows::new(
        cap,
        read.seen.len() as usize <= cap && w.next.leaves.is_some(),
    );

    // The old contacts, row group by row group (a few decoded in parallel),
    // with their updates.
    if let Some(f) = &w.next.contacts {
        let old = ParquetFile::open(&dir.join(&f.path))?;
        let old_plain = contacts_schema(&w.next.fields);
        let groups: Vec<usize> = (0..old.row_groups()).collect();
        let mut position = 0usize;
        for some in groups.chunks(rayon::current_num_threads().max(1)) {
            for batch in old.read(None, some)? {
                let n = batch.num_rows();
                // Rows no update touches go to the new file as they were
                // read, when it stores them with the same types: their
                // text is not decoded and encoded again.
                let untouched = runs.iter().all(|r| {
                    r.positions
                        .get(r.at)
                        .is_none_or(|&p| p as usize >= position + n)
                });
                let batch = match untouched {
                    true => out.as_stored(batch)?,
                    false => Err(batch),
                };
                let batch = match batch {
                    Ok(()) => {
                        position += n;
                        continue;
                    }
                    Err(batch) => to_storage(&batch, &old_plain)?,
                };
                let merged =
                    merge_updates(&batch, position, &mut runs, fields, &retype.schema, opts)?;
                position += n;
                changed.push_of(&merged, &read.touched)?;
                out.write(w, merged, &new_sample)?;
            }
        }
    }
    // Then the new contacts, in file order.
    let mut rows = retype.taker(read.added.read(0, read.added.rows())?);
    let mut iid = first_new;
    loop {
        let b = rows.take(64 * 1024)?;
        if b.num_rows() == 0 {
            break;
        }
        let n = b.num_rows() as u32;
        let new_rows = new_rows_batch(&b, iid, fields, &plain)?;
        changed.push(new_rows.clone());
        out.write(w, new_rows, &new_sample)?;
        iid += n;
    }
    let (file, schema) = out.finish(w, &new_sample)?;
    Ok((file, changed.write(w, &schema)?))
}

/// The rows of the contacts an import adds or updates, as written to the
/// new contacts file, kept in memory while they are few.
struct ChangedRows {
    batches: Vec<RecordBatch>,
    rows: usize,
    cap: usize,
    keep: bool,
}

impl ChangedRows {
    fn new(cap: usize, keep: bool) -> Self {
        ChangedRows {
            batches: Vec::new(),
            rows: 0,
            cap,
            keep,
        }
    }

    fn push(&mut self, batch: RecordBatch) {
        if !self.keep || batch.num_rows() == 0 {
            return;
        }
        self.rows += batch.num_rows();
        if self.rows > self.cap {
            self.keep = false;
            self.batches.clear();
        } else {
            self.batches.push(batch);
        }
    }

    /// The rows of a merged batch whose contacts the import updates.
    fn push_of(&mut self, merged: &RecordBatch, touched: &RoaringBitmap) -> Result<()> {
        if !self.keep {
            return Ok(());
        }
        let (iids, _) = id_columns(merged)?;
        let keep =
            BooleanArray::from_iter(iids.values().iter().map(|i| Some(touched.contains(*i))));
        self.push(filter_record_batch(merged, &keep)?);
        Ok(())
    }

    /// Their file, stored as the new contacts file stores them (None: too
    /// many, or none).
    fn write(self, w: &Writer, schema: &SchemaRef) -> Result<Option<DataFile>> {
        if !self.keep || self.batches.is_empty() {
            return Ok(None);
        }
        let sink = w.new_file("contacts", "changed", "parquet")?;
        let mut out = ParallelWriter::new(sink, schema.clone(), contacts_properties(schema))?;
        for b in self.batches {
            out.write(to_storage(&b, schema)?)?;
        }
        out.finish().map(Some)
    }
}

/// The new contacts file, written once the storage types are chosen on a
/// sample of the first old contacts (updated) and the first new ones.
#[derive(Default)]
struct Output {
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    writer: Option<(ParallelWriter, SchemaRef)>,
}

impl Output {
    fn write(&mut self, w: &Writer, batch: RecordBatch, new_sample: &RecordBatch) -> Result<()> {
        if let Some((out, schema)) = &mut self.writer {
            return out.write(to_storage(&batch, schema)?);
        }
        self.pending_rows += batch.num_rows();
        self.pending.push(batch);
        if self.pending_rows >= DICTIONARY_SAMPLE {
            self.start(w, new_sample)?;
        }
        Ok(())
    }

    /// Write a batch read from the old file as it is, when the new file
    /// stores its columns with the same names and types (Err: it does not,
    /// or they are not chosen yet).
    fn as_stored(&mut self, batch: RecordBatch) -> Result<std::result::Result<(), RecordBatch>> {
        let Some((out, schema)) = &mut self.writer else {
            return Ok(Err(batch));
        };
        let same = |a: &Field, b: &Field| a.name() == b.name() && a.data_type() == b.data_type();
        let alike = schema.fields().len() == batch.num_columns()
            && schema
                .fields()
                .iter()
                .zip(batch.schema().fields())
                .all(|(a, b)| same(a, b));
        let stored = alike
            .then(|| RecordBatch::try_new(schema.clone(), batch.columns().to_vec()).ok())
            .flatten();
        match stored {
            Some(stored) => {
                out.write(stored)?;
                Ok(Ok(()))
            }
            None => Ok(Err(batch)),
        }
    }

    fn start(&mut self, w: &Writer, new_sample: &RecordBatch) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let mut samples = pending.clone();
        samples.push(new_sample.clone());
        let schema = storage_schema(&new_sample.schema(), &samples)?;
        let sink = w.new_file("contacts", "contacts", "parquet")?;
        let mut out = ParallelWriter::new(sink, schema.clone(), contacts_properties(&schema))?;
        for b in pending {
            out.write(to_storage(&b, &schema)?)?;
        }
        self.writer = Some((out, schema));
        Ok(())
    }

    /// The new contacts file, and the schema it stores them with.
    fn finish(mut self, w: &Writer, new_sample: &RecordBatch) -> Result<(DataFile, SchemaRef)> {
        if self.writer.is_none() {
            self.start(w, new_sample)?;
        }
        let (out, schema) = self.writer.expect("contacts writer");
        Ok((out.finish()?, schema))
    }
}

/// A duplicate `contact_id`, with where it was first seen (found again by
/// reading the file from the start).
fn duplicate(input: &InputChunks, at: &InputTable, row: usize, id: u64) -> Error {
    let first = || -> Result<Option<Place>> {
        for chunk in input.iter() {
            let chunk = chunk?;
            let ids = input_contact_ids(&chunk)?;
            if let Some(r) = ids.iter().position(|&x| x == id) {
                return Ok(Some(chunk.locate(r, CONTACT_ID)));
            }
        }
        Ok(None)
    };
    match first() {
        Ok(Some(first)) => at.error(
            row,
            CONTACT_ID,
            format!("duplicate contact_id {id} (first seen at {first})"),
        ),
        Ok(None) => at.error(row, CONTACT_ID, format!("duplicate contact_id {id}")),
        Err(e) => e,
    }
}

/// Old contacts at `position` in the old file, with the updates of the runs
/// that fall on them. An empty input cell keeps the old value unless
/// `overwrite_empty`.
fn merge_updates(
    old: &RecordBatch,
    position: usize,
    runs: &mut [Run],
    fields: &[FieldDef],
    spooled: &SchemaRef,
    opts: &ImportOptions,
) -> Result<RecordBatch> {
    let n = old.num_rows();
    let end = position + n;
    let mut slices = Vec::with_capacity(runs.len());
    let mut source: Vec<Option<(usize, usize)>> = vec![None; n];
    for (r, run) in runs.iter_mut().enumerate() {
        let here = &run.positions[run.at..];
        let k = here.partition_point(|&p| (p as usize) < end);
        for (offset, &p) in here[..k].iter().enumerate() {
            source[p as usize - position] = Some((r, offset));
        }
        run.at += k;
        slices.push(run.rows.take(k)?);
    }
    let mut columns: Vec<ArrayRef> = vec![old.column(0).clone(), old.column(1).clone()];
    let merged: Vec<Result<ArrayRef>> = fields
        .par_iter()
        .map(|f| -> Result<ArrayRef> {
            let dt = f.ty.arrow_type();
            let old_column = old
                .column_by_name(&f.name)
                .cloned()
                .unwrap_or_else(|| new_null_array(&dt, n));
            let Some((c, _)) = spooled.column_with_name(&f.name) else {
                return Ok(old_column);
            };
            if slices.iter().all(|s| s.num_rows() == 0) {
                return Ok(old_column);
            }
            let mut sources: Vec<&dyn Array> = vec![old_column.as_ref()];
            sources.extend(slices.iter().map(|s| s.column(c).as_ref()));
            let idx: Vec<(usize, usize)> = source
                .iter()
                .enumerate()
                .map(|(i, s)| match *s {
                    Some((r, offset))
                        if opts.overwrite_empty
                            || !is_empty_at(slices[r].column(c).as_ref(), offset) =>
                    {
                        (1 + r, offset)
                    }
                    _ => (0, i),
                })
                .collect();
            Ok(interleave(&sources, &idx)?)
        })
        .collect();
    for column in merged {
        columns.push(column?);
    }
    Ok(RecordBatch::try_new(contacts_schema(fields), columns)?)
}

/// New contacts from spooled input rows, with internal ids from `first`.
fn new_rows_batch(
    rows: &RecordBatch,
    first: u32,
    fields: &[FieldDef],
    plain: &SchemaRef,
) -> Result<RecordBatch> {
    let n = rows.num_rows();
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(first..first + n as u32)),
        rows.column(0).clone(),
    ];
    for f in fields {
        columns.push(match rows.column_by_name(&f.name) {
            Some(c) => c.clone(),
            None => new_null_array(&f.ty.arrow_type(), n),
        });
    }
    Ok(RecordBatch::try_new(plain.clone(), columns)?)
}

/// Delete contacts everywhere: contacts, events, imports, segments and history.
/// Returns how many of the given ids were contacts of the base.
pub fn delete_contacts(w: &mut Writer, contact_ids: &[u64]) -> Result<u64> {
    let dir = w.dir().to_path_buf();
    let map = ContactIdMap::load(&dir, &w.next)?;
    let gone: RoaringBitmap = contact_ids.iter().filter_map(|c| map.get(*c)).collect();
    if gone.is_empty() {
        return Ok(0);
    }
    let existing = load_contacts(&dir, &w.next)?;
    let (iids, _) = id_columns(&existing)?;
    // Opt-ins of the deleted contacts, to correct segment statistics.
    let optin_of = |name: &str| -> RoaringBitmap {
        let Some(col) = existing
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<BooleanArray>().cloned())
        else {
            return RoaringBitmap::new();
        };
        iids.values()
            .iter()
            .zip(col.iter())
            .filter(|(i, v)| *v == Some(true) && gone.contains(**i))
            .map(|(i, _)| *i)
            .collect()
    };
    let gone_optins = crate::base::members::OptIns {
        email: optin_of("email_optin"),
        sms: optin_of("sms_optin"),
    };
    let keep: BooleanArray = iids
        .values()
        .iter()
        .map(|i| Some(!gone.contains(*i)))
        .collect();
    let kept = filter_record_batch(&existing, &keep)?;
    w.next.contacts = Some(write_contacts(w, &kept)?);
    crate::base::times::index_contacts(w)?;

    let mut all = match &w.next.all_contacts {
        Some(f) => read_bitmap(&dir, f)?,
        None => RoaringBitmap::new(),
    };
    all -= &gone;
    w.next.contact_count = all.len();
    w.next.all_contacts = Some(write_bitmap(w, "all-contacts", &all)?);

    crate::base::events::delete_events_of(w, &gone)?;
    let mut imports = std::mem::take(&mut w.next.imports);
    for imp in &mut imports {
        let mut bm = read_bitmap(&dir, &imp.contacts)?;
        if bm.is_disjoint(&gone) {
            continue;
        }
        bm -= &gone;
        imp.contacts = write_bitmap(w, "import", &bm)?;
    }
    w.next.imports = imports;
    crate::base::members::forget_contacts(w, &gone, &gone_optins)?;
    crate::base::changes::record(
        w,
        crate::base::changes::Changed {
            fields: gone.clone(),
            presence: gone.clone(),
            events: gone.clone(),
            types: None,
            files: Vec::new(),
            rows: None,
        },
    )?;
    Ok(gone.len())
}
