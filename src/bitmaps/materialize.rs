//! Record batches of internal ids and boolean columns into bitmaps.

use datafusion::arrow::array::{Array, BooleanArray, RecordBatch, UInt32Array};
use roaring::RoaringBitmap;

use crate::error::{Error, Result};

/// The internal id column (first column) of a batch.
pub fn iid_column(batch: &RecordBatch) -> Result<&UInt32Array> {
    batch
        .column(0)
        .as_any()
        .downcast_ref::<UInt32Array>()
        .ok_or_else(|| {
            Error::Internal(format!(
                "expected u32 ids, got {}",
                batch.column(0).data_type()
            ))
        })
}

/// Insert the ids of the rows where `mask` is true.
pub fn add_masked(bitmap: &mut RoaringBitmap, ids: &UInt32Array, mask: &BooleanArray) {
    let values = ids.values();
    let mut run: Vec<u32> = Vec::new();
    let mut sorted = true;
    for (i, m) in mask.iter().enumerate() {
        if m == Some(true) {
            let id = values[i];
            if run.last().is_some_and(|&l| l >= id) {
                sorted = false;
            }
            run.push(id);
        }
    }
    if sorted {
        let part = RoaringBitmap::from_sorted_iter(run).expect("sorted ids");
        *bitmap |= part;
    } else {
        bitmap.extend(run);
    }
}

/// Insert every id of the batch.
pub fn add_all(bitmap: &mut RoaringBitmap, ids: &UInt32Array) {
    let v = ids.values();
    if v.windows(2).all(|w| w[0] < w[1]) {
        *bitmap |= RoaringBitmap::from_sorted_iter(v.iter().copied()).expect("sorted ids");
    } else {
        bitmap.extend(v.iter().copied());
    }
}
