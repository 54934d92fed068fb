//! Contacts: the id map (user `contact_id` to dense internal id), the upsert
//! import, and deletion (right to be forgotten).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, GenericListArray, RecordBatch, StringArray,
    UInt32Array, UInt64Array, new_null_array,
};
use datafusion::arrow::compute::{filter_record_batch, interleave};
use datafusion::arrow::datatypes::{DataType, Field, Int32Type, SchemaRef};
use rayon::prelude::*;
use roaring::RoaringBitmap;

use crate::base::input::{ColumnData, InputTable};
use crate::base::manifest::{DataFile, ImportKind, ImportRecord, Manifest};
use crate::base::schema::{
    CONTACT_ID, FieldDef, FieldType, IID, check_field_name, recognised_contact_field,
};
use crate::base::table::{
    contacts_properties, parquet_schema, read_parquet_one, schema_ref, write_parquet,
};
use crate::base::{Snapshot, Writer};
use crate::bitmaps::{read_bitmap, write_bitmap};
use crate::error::{Error, Result};

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

/// Values looked at first: a column with many distinct values among them is
/// stored plain without encoding the rest.
const DICTIONARY_SAMPLE: usize = 64 * 1024;

/// Contacts as they are stored: text columns with few distinct values
/// (cities, countries, choices...) dictionary-encoded, the others plain.
/// Conditions on a dictionary column are tested once per distinct value,
/// and its values are decoded once per page.
pub fn for_storage(batch: &RecordBatch) -> Result<RecordBatch> {
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns = Vec::with_capacity(batch.num_columns());
    let dictionaries: Vec<Result<Option<ArrayRef>>> =
        batch.columns().par_iter().map(dictionary_of).collect();
    for ((f, a), dict) in batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .zip(dictionaries)
    {
        match dict? {
            Some(dict) => {
                fields.push(Field::new(
                    f.name(),
                    dict.data_type().clone(),
                    f.is_nullable(),
                ));
                columns.push(dict);
            }
            None => {
                fields.push(f.as_ref().clone());
                columns.push(a.clone());
            }
        }
    }
    Ok(RecordBatch::try_new(schema_ref(fields), columns)?)
}

/// A text column as a dictionary, when it has few distinct values.
fn dictionary_of(a: &ArrayRef) -> Result<Option<ArrayRef>> {
    let Some(text) = a.as_string_opt::<i32>() else {
        return Ok(None);
    };
    if !few_distinct(&text.slice(0, text.len().min(DICTIONARY_SAMPLE))) {
        return Ok(None);
    }
    let dict = datafusion::arrow::compute::cast(
        a,
        &DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
    )?;
    let values = dict.as_dictionary::<Int32Type>().values();
    let present = a.len() - a.null_count();
    let few = values.len() <= (present / DICTIONARY_RATIO).max(1)
        && values.as_string::<i32>().values().len() <= DICTIONARY_BYTES;
    Ok(few.then_some(dict))
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
    write_parquet(sink, stored.schema(), &[stored], contacts_properties())
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

/// `contact_id` → internal id, for every live contact.
#[derive(Debug, Default, Clone)]
pub struct ContactIdMap {
    pub to_iid: HashMap<u64, u32>,
}

impl ContactIdMap {
    pub fn load(dir: &Path, m: &Manifest) -> Result<ContactIdMap> {
        let Some(f) = &m.contacts else {
            return Ok(ContactIdMap::default());
        };
        let batch = read_parquet_one(&dir.join(&f.path), Some(&[IID, CONTACT_ID]))?;
        let mut to_iid = HashMap::with_capacity(batch.num_rows());
        let (iids, cids) = id_columns(&batch)?;
        for (i, c) in iids.values().iter().zip(cids.values()) {
            to_iid.insert(*c, *i);
        }
        Ok(ContactIdMap { to_iid })
    }

    pub fn from_snapshot(s: &Snapshot) -> Result<ContactIdMap> {
        Self::load(s.dir(), &s.manifest)
    }
}

fn id_columns(batch: &RecordBatch) -> Result<(&UInt32Array, &UInt64Array)> {
    let iids = batch
        .column_by_name(IID)
        .and_then(|a| a.as_any().downcast_ref::<UInt32Array>())
        .ok_or_else(|| Error::Internal("contacts file without _iid".into()))?;
    let cids = batch
        .column_by_name(CONTACT_ID)
        .and_then(|a| a.as_any().downcast_ref::<UInt64Array>())
        .ok_or_else(|| Error::Internal("contacts file without contact_id".into()))?;
    Ok((iids, cids))
}

/// Read the `contact_id` column of an input file, refusing missing and negative ids.
pub fn input_contact_ids(input: &InputTable) -> Result<Vec<u64>> {
    let idx = input.column(CONTACT_ID).ok_or_else(|| {
        Error::input(
            &input.file,
            "header",
            "the required column \"contact_id\" is missing",
        )
    })?;
    let ty = FieldType::Number { integer: true };
    match &input.columns[idx].data {
        ColumnData::Cells(cells) => cells
            .iter()
            .enumerate()
            .map(|(row, c)| match c {
                None => Err(input.error(row, CONTACT_ID, "contact_id is missing")),
                Some(s) => s.parse::<u64>().map_err(|_| {
                    input.error(
                        row,
                        CONTACT_ID,
                        format!("{s:?} is not a non-negative 64-bit integer"),
                    )
                }),
            })
            .collect(),
        ColumnData::Arrow(_) => {
            let arr = input.typed(idx, &ty, ";")?;
            let cast = datafusion::arrow::compute::cast(&arr, &DataType::UInt64);
            let a = arr
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>();
            let mut out = Vec::with_capacity(input.rows);
            for row in 0..input.rows {
                match a {
                    Some(a) if a.is_valid(row) && a.value(row) >= 0 => {
                        out.push(a.value(row) as u64)
                    }
                    Some(a) if a.is_valid(row) => {
                        return Err(input.error(
                            row,
                            CONTACT_ID,
                            "contact_id must not be negative",
                        ));
                    }
                    _ => {
                        // u64 values above i64::MAX: read them without the Int64 detour.
                        let u = cast.as_ref().ok().and_then(|c| {
                            c.as_any()
                                .downcast_ref::<UInt64Array>()
                                .filter(|u| u.is_valid(row))
                                .map(|u| u.value(row))
                        });
                        match u {
                            Some(v) => out.push(v),
                            None => {
                                return Err(input.error(row, CONTACT_ID, "contact_id is missing"));
                            }
                        }
                    }
                }
            }
            Ok(out)
        }
    }
}

pub struct ImportOptions {
    pub name: Option<String>,
    pub overwrite_empty: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportReport {
    pub id: String,
    pub name: String,
    pub file: String,
    pub rows_added: u64,
    pub rows_updated: u64,
    pub rows_skipped: u64,
    pub new_fields: Vec<String>,
}

/// Decide the type of each input column: the base's field, the declaration in
/// the configuration, the recognised column, or inference, in that order.
fn column_types(w: &Writer, input: &InputTable) -> Result<Vec<Option<FieldType>>> {
    let mut out = Vec::new();
    let mut to_infer = Vec::new();
    for (idx, col) in input.columns.iter().enumerate() {
        if col.name == CONTACT_ID {
            out.push(None);
            continue;
        }
        check_field_name(&col.name).map_err(|m| Error::input(&input.file, "header", m))?;
        if input.columns[..idx].iter().any(|c| c.name == col.name) {
            return Err(Error::input(
                &input.file,
                "header",
                format!("column {:?} appears twice", col.name),
            ));
        }
        let ty = if let Some(f) = w.next.fields.iter().find(|f| f.name == col.name) {
            f.ty.clone()
        } else if let Some(t) = w.base.config.fields.get(&col.name) {
            t.clone()
        } else if let Some(t) = recognised_contact_field(&col.name) {
            t
        } else {
            to_infer.push(idx);
            FieldType::Text
        };
        out.push(Some(ty));
    }
    let inferred: Vec<FieldType> = to_infer.par_iter().map(|&i| input.infer(i)).collect();
    for (idx, ty) in to_infer.into_iter().zip(inferred) {
        out[idx] = Some(ty);
    }
    Ok(out)
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

/// Upsert the contacts of a file. On any error nothing is written.
pub fn import_contacts(w: &mut Writer, file: &Path, opts: &ImportOptions) -> Result<ImportReport> {
    let input = InputTable::read(file)?;
    let ids = input_contact_ids(&input)?;
    let types = column_types(w, &input)?;
    let sep = w.base.config.tags_separator.clone();
    // Columns are converted in parallel; the first error in column order is reported.
    let typed: Vec<Result<(String, FieldType, ArrayRef)>> = types
        .par_iter()
        .enumerate()
        .filter_map(|(idx, ty)| ty.as_ref().map(|ty| (idx, ty)))
        .map(|(idx, ty)| {
            let name = input.columns[idx].name.clone();
            Ok((name, ty.clone(), input.typed(idx, ty, &sep)?))
        })
        .collect();
    let typed = typed.into_iter().collect::<Result<Vec<_>>>()?;

    // Duplicates within the file.
    let mut seen: HashMap<u64, usize> = HashMap::with_capacity(ids.len());
    for (row, id) in ids.iter().enumerate() {
        if let Some(first) = seen.insert(*id, row) {
            return Err(input.error(
                row,
                CONTACT_ID,
                format!(
                    "duplicate contact_id {id} (first seen at {})",
                    input.locate(first, CONTACT_ID)
                ),
            ));
        }
    }

    let dir = w.dir().to_path_buf();
    let existing = load_contacts(&dir, &w.next)?;
    let (old_iids, old_cids) = id_columns(&existing)?;
    let mut position: HashMap<u64, usize> = HashMap::with_capacity(existing.num_rows());
    for (pos, c) in old_cids.values().iter().enumerate() {
        position.insert(*c, pos);
    }

    // Which input row updates which existing row; new contacts get new ids.
    let mut update_of: Vec<Option<usize>> = vec![None; existing.num_rows()];
    let mut new_rows: Vec<usize> = Vec::new();
    let mut touched = RoaringBitmap::new();
    let mut next_iid = w.next.next_iid;
    let mut new_iids: Vec<u32> = Vec::new();
    for (row, id) in ids.iter().enumerate() {
        match position.get(id) {
            Some(&pos) => {
                update_of[pos] = Some(row);
                touched.insert(old_iids.value(pos));
            }
            None => {
                new_rows.push(row);
                let iid = next_iid;
                next_iid = next_iid
                    .checked_add(1)
                    .ok_or_else(|| Error::base(&dir, "more than 4 billion contacts"))?;
                new_iids.push(iid);
                touched.insert(iid);
            }
        }
    }

    // The new field list: existing fields, then the file's new columns.
    let mut fields = w.next.fields.clone();
    let mut new_fields = Vec::new();
    for (name, ty, _) in &typed {
        if !fields.iter().any(|f| &f.name == name) {
            fields.push(FieldDef {
                name: name.clone(),
                ty: ty.clone(),
            });
            new_fields.push(name.clone());
        }
    }

    // Build each output column by interleaving the existing column (source 0),
    // the input column (source 1) and a single null (source 2).
    let n_old = existing.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(fields.len() + 2);
    let mut iids: Vec<u32> = old_iids.values().to_vec();
    iids.extend(&new_iids);
    columns.push(Arc::new(UInt32Array::from(iids)));
    let mut cids: Vec<u64> = old_cids.values().to_vec();
    cids.extend(new_rows.iter().map(|&r| ids[r]));
    columns.push(Arc::new(UInt64Array::from(cids)));
    let merged = fields
        .par_iter()
        .map(|f| -> Result<ArrayRef> {
            let dt = f.ty.arrow_type();
            let old: ArrayRef = existing
                .column_by_name(&f.name)
                .cloned()
                .unwrap_or_else(|| new_null_array(&dt, n_old));
            let incoming = typed
                .iter()
                .find(|(n, _, _)| n == &f.name)
                .map(|(_, _, a)| a.clone());
            let null = new_null_array(&dt, 1);
            let Some(inc) = incoming else {
                let mut idx: Vec<(usize, usize)> = (0..n_old).map(|r| (0, r)).collect();
                idx.extend(new_rows.iter().map(|_| (2, 0)));
                return Ok(interleave(
                    &[old.as_ref(), old.as_ref(), null.as_ref()],
                    &idx,
                )?);
            };
            let mut idx: Vec<(usize, usize)> = Vec::with_capacity(n_old + new_rows.len());
            for (pos, upd) in update_of.iter().enumerate() {
                match upd {
                    Some(row) if opts.overwrite_empty || !is_empty_at(inc.as_ref(), *row) => {
                        idx.push((1, *row))
                    }
                    _ => idx.push((0, pos)),
                }
            }
            idx.extend(new_rows.iter().map(|&r| (1, r)));
            Ok(interleave(
                &[old.as_ref(), inc.as_ref(), null.as_ref()],
                &idx,
            )?)
        })
        .collect::<Vec<_>>();
    for column in merged {
        columns.push(column?);
    }
    let batch = RecordBatch::try_new(contacts_schema(&fields), columns)?;
    let contacts_file = write_contacts(w, &batch)?;
    let mut all = match &w.next.all_contacts {
        Some(f) => read_bitmap(&dir, f)?,
        None => RoaringBitmap::new(),
    };
    all.extend(new_iids.iter().copied());
    let all_file = write_bitmap(w, "all-contacts", &all)?;
    let touched_file = write_bitmap(w, "import", &touched)?;

    let now = Utc::now();
    let (id, name) = import_name(&w.next, file, opts.name.as_deref(), now)?;
    let report = ImportReport {
        id: id.clone(),
        name: name.clone(),
        file: file.display().to_string(),
        rows_added: new_rows.len() as u64,
        rows_updated: (ids.len() - new_rows.len()) as u64,
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
    w.next.fields = fields;
    w.next.next_iid = next_iid;
    w.next.contact_count = all.len();
    w.next.contacts = Some(contacts_file);
    w.next.all_contacts = Some(all_file);
    Ok(report)
}

/// The id and name of a new import: the given name, or the file's stem and the time.
pub fn import_name(
    m: &Manifest,
    file: &Path,
    name: Option<&str>,
    now: chrono::DateTime<Utc>,
) -> Result<(String, String)> {
    let name = match name {
        Some(n) => n.to_string(),
        None => format!(
            "{} {}",
            file.file_stem().unwrap_or_default().to_string_lossy(),
            now.format("%Y-%m-%d %H:%M:%S")
        ),
    };
    if m.imports.iter().any(|i| i.name == name) {
        return Err(Error::usage(format!(
            "an import named {name:?} already exists"
        )));
    }
    let mut id = crate::criteria::slug(&name);
    if m.imports.iter().any(|i| i.id == id) {
        id = format!("{id}-{}", m.imports.len() + 1);
    }
    Ok((id, name))
}

/// Delete contacts everywhere: contacts, events, imports, segments and history.
/// Returns how many of the given ids were contacts of the base.
pub fn delete_contacts(w: &mut Writer, contact_ids: &[u64]) -> Result<u64> {
    let dir = w.dir().to_path_buf();
    let map = ContactIdMap::load(&dir, &w.next)?;
    let gone: RoaringBitmap = contact_ids
        .iter()
        .filter_map(|c| map.to_iid.get(c).copied())
        .collect();
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
    let gone_optins = crate::jobs::segment_store::OptIns {
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
    crate::jobs::segment_store::forget_contacts(w, &gone, &gone_optins)?;
    Ok(gone.len())
}
