//! Contact ids: the user's `contact_id` and the dense internal id (`_iid`)
//! each contact gets on first sight, never changed and never reused.

use std::path::Path;

use datafusion::arrow::array::{Array, AsArray, RecordBatch, UInt32Array, UInt64Array};
use datafusion::arrow::datatypes::{DataType, UInt64Type};

use crate::base::input::{ColumnData, InputTable};
use crate::base::manifest::Manifest;
use crate::base::schema::{CONTACT_ID, FieldType, IID};
use crate::base::table::read_parquet_one;
use crate::error::{Error, Place, Result};

/// `contact_id` → internal id, for every live contact (a fast hash: an
/// events import looks up every row).
#[derive(Debug, Default, Clone)]
pub struct ContactIdMap {
    pub to_iid: datafusion::common::HashMap<u64, u32>,
}

impl ContactIdMap {
    pub fn load(dir: &Path, m: &Manifest) -> Result<ContactIdMap> {
        Self::read(dir, m, None)
    }

    /// The map of the contacts among `wanted` only: for a few ids, reading
    /// the base's ids costs much less than hashing every one of them.
    pub fn load_some(dir: &Path, m: &Manifest, wanted: &[u64]) -> Result<ContactIdMap> {
        let wanted: datafusion::common::HashSet<u64> = wanted.iter().copied().collect();
        Self::read(dir, m, Some(&wanted))
    }

    fn read(
        dir: &Path,
        m: &Manifest,
        wanted: Option<&datafusion::common::HashSet<u64>>,
    ) -> Result<ContactIdMap> {
        let Some(f) = &m.contacts else {
            return Ok(ContactIdMap::default());
        };
        let batch = read_parquet_one(&dir.join(&f.path), Some(&[IID, CONTACT_ID]))?;
        let (iids, cids) = id_columns(&batch)?;
        let pairs = iids.values().iter().zip(cids.values());
        let to_iid = match wanted {
            None => pairs.map(|(i, c)| (*c, *i)).collect(),
            Some(wanted) => pairs
                .filter(|(_, c)| wanted.contains(*c))
                .map(|(i, c)| (*c, *i))
                .collect(),
        };
        Ok(ContactIdMap { to_iid })
    }
}

pub fn id_columns(batch: &RecordBatch) -> Result<(&UInt32Array, &UInt64Array)> {
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
            Place::Header,
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
        // Unsigned ids without nulls (as this engine and most writers
        // store them) are taken as they are.
        ColumnData::Arrow(raw) if raw.null_count() == 0 && raw.data_type() == &DataType::UInt64 => {
            Ok(raw.as_primitive::<UInt64Type>().values().to_vec())
        }
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
