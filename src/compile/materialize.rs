//! Record batches of internal ids and boolean columns into bitmaps.

use datafusion::arrow::array::BooleanBufferBuilder;
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

/// Which rows' ids are in `set`. Rows of a batch usually come in id order:
/// the members of the batch's range of ids are then looked up among its
/// rows, instead of each row in the set.
pub fn members_mask(ids: &[u32], set: &RoaringBitmap) -> BooleanBuffer {
    match (ids.first(), ids.last()) {
        (Some(&lo), Some(&hi)) if lo <= hi && ids.is_sorted() => {
            let mut bits = BooleanBufferBuilder::new(ids.len());
            bits.append_n(ids.len(), false);
            let mut at = 0;
            for id in set.range(lo..=hi) {
                at += ids[at..].partition_point(|&x| x < id);
                while ids.get(at) == Some(&id) {
                    bits.set_bit(at, true);
                    at += 1;
                }
            }
            bits.finish()
        }
        _ => BooleanBuffer::collect_bool(ids.len(), |i| set.contains(ids[i])),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn members_mask_marks_the_rows_whose_ids_are_in_the_set() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
        for _ in 0..200 {
            let n = rng.random_range(0..300);
            let mut ids: Vec<u32> = (0..n).map(|_| rng.random_range(0..500)).collect();
            if rng.random_bool(0.7) {
                ids.sort_unstable();
            }
            let share = rng.random_range(0.0..1.0);
            let set: RoaringBitmap = (0..600).filter(|_| rng.random_bool(share)).collect();
            let want: Vec<bool> = ids.iter().map(|id| set.contains(*id)).collect();
            let got: Vec<bool> = members_mask(&ids, &set).iter().collect();
            assert_eq!(got, want, "ids {ids:?}");
        }
    }
}
