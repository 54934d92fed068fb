//! Record batches of internal ids and boolean columns into bitmaps.

use datafusion::arrow::array::{Array, BooleanArray, RecordBatch, UInt32Array};
use datafusion::arrow::buffer::BooleanBuffer;
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

/// Insert the ids of the rows where `mask` is true (null counts as false).
pub fn add_masked(bitmap: &mut RoaringBitmap, ids: &UInt32Array, mask: &BooleanArray) {
    let bits: BooleanBuffer = match mask.nulls() {
        Some(valid) => mask.values() & valid.inner(),
        None => mask.values().clone(),
    };
    let values = ids.values();
    // Contacts are stored in id order, and without deletions their ids
    // are contiguous: the mask is then the bitmap's bits.
    if let Some(&first) = values.first()
        && values
            .iter()
            .enumerate()
            .all(|(i, &v)| v.wrapping_sub(first) == i as u32)
    {
        *bitmap |= bits_from(first, &bits);
        return;
    }
    let mut run: Vec<u32> = Vec::with_capacity(bits.count_set_bits());
    run.extend(bits.set_indices().map(|i| values[i]));
    add_ids(bitmap, run);
}

/// The ids `lo + i` for the set bits `i < bits.len()`, built container by
/// container. Kernels may leave bits set past the length in the last byte
/// (a `NOT` flips the padding), so those are cleared first.
pub fn bits_from(lo: u32, bits: &BooleanBuffer) -> RoaringBitmap {
    let len = bits.len();
    let sliced = bits.sliced();
    let mut bytes = sliced.as_slice()[..len.div_ceil(8)].to_vec();
    if let Some(last) = bytes.last_mut()
        && !len.is_multiple_of(8)
    {
        *last &= (1u8 << (len % 8)) - 1;
    }
    RoaringBitmap::from_lsb0_bytes(lo, &bytes)
}

/// Insert ids; rows of one batch usually come in id order (files are sorted
/// by internal id), which takes the fast sorted path.
fn add_ids(bitmap: &mut RoaringBitmap, mut run: Vec<u32>) {
    if run.is_empty() {
        return;
    }
    if !run.windows(2).all(|w| w[0] < w[1]) {
        run.sort_unstable();
        run.dedup();
    }
    let part = RoaringBitmap::from_sorted_iter(run).expect("sorted, deduplicated ids");
    *bitmap |= part;
}
