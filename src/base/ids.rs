//! Contact ids: the user's `contact_id` and the dense internal id (`_iid`)
//! each contact gets on first sight, never changed and never reused.

use std::path::Path;

use datafusion::arrow::array::{Array, AsArray, RecordBatch, UInt32Array, UInt64Array};
use datafusion::arrow::datatypes::{DataType, UInt64Type};

use crate::base::input::{ColumnData, InputTable};
use crate::base::manifest::Manifest;
use crate::base::schema::{CONTACT_ID, FieldType, IID};
use crate::base::table::{read_parquet, read_parquet_one};
use crate::error::{Error, Place, Result};

/// A bit per hash of some ids: an id whose bit is clear is not one of
/// them.
struct HashBits {
    bits: Vec<u64>,
    shift: u32,
}

impl HashBits {
    fn of(ids: impl ExactSizeIterator<Item = u64> + Clone) -> HashBits {
        // About sixteen bits per id: one id in sixteen others passes.
        let log = (ids.len().max(1) * 16)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(6, 32);
        let mut out = HashBits {
            bits: vec![0; 1 << (log - 6)],
            shift: 64 - log,
        };
        for id in ids {
            let h = out.hash(id);
            out.bits[h >> 6] |= 1 << (h & 63);
        }
        out
    }

    fn hash(&self, id: u64) -> usize {
        (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    fn may_hold(&self, id: u64) -> bool {
        let h = self.hash(id);
        self.bits[h >> 6] & (1 << (h & 63)) != 0
    }
}

/// `contact_id` → internal id, for every live contact. An events import
/// looks up every row: ids spread over a range no wider than four times
/// their count (as numbering schemes give them) are looked up by position
/// in a table (at most 16 bytes a contact, as the hash), others in a fast
/// hash.
#[derive(Debug, Clone)]
pub struct ContactIdMap {
    ids: Ids,
}

#[derive(Debug, Clone)]
enum Ids {
    /// `iids[id - first]`, `ABSENT` where no contact has that id.
    Table {
        first: u64,
        iids: Vec<u32>,
        len: usize,
    },
    Hashed(datafusion::common::HashMap<u64, u32>),
}

/// No internal id: they stay below `u32::MAX` (`next_iid` is a `u32`).
const ABSENT: u32 = u32::MAX;

impl Default for ContactIdMap {
    fn default() -> Self {
        ContactIdMap {
            ids: Ids::Hashed(Default::default()),
        }
    }
}

impl ContactIdMap {
    pub fn load(dir: &Path, m: &Manifest) -> Result<ContactIdMap> {
        Self::read(dir, m, None)
    }

    /// The map of the contacts among `wanted` only: for a few ids, reading
    /// the base's ids costs much less than hashing every one of them. From
    /// the index of the contacts' ids when the contacts file has one
    /// that reads back sound, else from the contacts file.
    pub fn load_some(dir: &Path, m: &Manifest, wanted: &[u64]) -> Result<ContactIdMap> {
        let index = m
            .contact_ids
            .as_ref()
            .filter(|i| m.contacts.as_ref().is_some_and(|c| c.path == i.of));
        if let Some(index) = index {
            let found =
                crate::base::id_index::Opened::open(dir, index).and_then(|i| i.find(wanted));
            if let Ok(found) = found {
                return Ok(ContactIdMap {
                    ids: Ids::Hashed(found.into_iter().collect()),
                });
            }
        }
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
        let path = dir.join(&f.path);
        let Some(wanted) = wanted else {
            let batch = read_parquet_one(&path, Some(&[IID, CONTACT_ID]))?;
            let (iids, cids) = id_columns(&batch)?;
            let pairs = iids.values().iter().zip(cids.values());
            return Ok(Self::from_pairs(pairs.map(|(i, c)| (*c, *i)), cids.len()));
        };
        // Batches in parallel, most ids passed over after one look at a bit
        // array of the wanted ones (a cache-sized table), not a hash.
        use rayon::prelude::*;
        let (_, batches) = read_parquet(&path, Some(&[IID, CONTACT_ID]))?;
        let bits = HashBits::of(wanted.iter().copied());
        let found = batches
            .par_iter()
            .map(|b| {
                let (iids, cids) = id_columns(b)?;
                Ok(iids
                    .values()
                    .iter()
                    .zip(cids.values())
                    .filter(|(_, c)| bits.may_hold(**c) && wanted.contains(*c))
                    .map(|(i, c)| (*c, *i))
                    .collect::<Vec<_>>())
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ContactIdMap {
            ids: Ids::Hashed(found.into_iter().flatten().collect()),
        })
    }

    /// The map of `(contact_id, internal id)` pairs, `count` of them.
    pub fn from_pairs(pairs: impl Iterator<Item = (u64, u32)> + Clone, count: usize) -> Self {
        let (lo, hi) = pairs
            .clone()
            .fold((u64::MAX, 0), |(lo, hi), (c, _)| (lo.min(c), hi.max(c)));
        let ids = match hi.checked_sub(lo) {
            Some(span) if span / 4 < count as u64 => {
                let mut iids = vec![ABSENT; span as usize + 1];
                let mut len = 0;
                for (c, i) in pairs {
                    let at = &mut iids[(c - lo) as usize];
                    len += usize::from(*at == ABSENT);
                    *at = i;
                }
                Ids::Table {
                    first: lo,
                    iids,
                    len,
                }
            }
            _ => Ids::Hashed(pairs.collect()),
        };
        ContactIdMap { ids }
    }

    pub fn get(&self, id: u64) -> Option<u32> {
        match &self.ids {
            Ids::Table { first, iids, .. } => id
                .checked_sub(*first)
                .and_then(|at| iids.get(usize::try_from(at).ok()?))
                .copied()
                .filter(|&i| i != ABSENT),
            Ids::Hashed(map) => map.get(&id).copied(),
        }
    }

    /// How many contact ids the map holds.
    pub fn len(&self) -> usize {
        match &self.ids {
            Ids::Table { len, .. } => *len,
            Ids::Hashed(map) => map.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every `(contact_id, internal id)` pair, in no particular order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = (u64, u32)> + '_> {
        match &self.ids {
            Ids::Table { first, iids, .. } => Box::new(
                iids.iter()
                    .enumerate()
                    .filter(|(_, i)| **i != ABSENT)
                    .map(move |(at, i)| (first + at as u64, *i)),
            ),
            Ids::Hashed(map) => Box::new(map.iter().map(|(c, i)| (*c, *i))),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Every id of the set passes its bit array; of others, about one in
    /// sixteen, whether the ids run in sequence or are spread.
    #[test]
    fn hash_bits_pass_every_id_held_and_few_others() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(9);
        for n in [0usize, 1, 3, 1000, 20_000] {
            for spread in [1u64, 1 << 40] {
                let first = rng.random_range(0..1u64 << 50);
                let ids: Vec<u64> = (0..n as u64).map(|i| first + i * spread).collect();
                let bits = HashBits::of(ids.iter().copied());
                assert!(
                    ids.iter().all(|&id| bits.may_hold(id)),
                    "{n} ids by {spread}"
                );
                let others = 100_000u64;
                let passed = (0..others)
                    .filter(|&i| bits.may_hold(first + n as u64 * spread + 1 + i))
                    .count() as u64;
                assert!(
                    passed * 8 < others,
                    "{n} ids by {spread}: {passed} others pass"
                );
            }
        }
    }

    /// Ids numbered closely (a table) or spread (a hash) answer alike:
    /// present ids, absent ones inside and outside the range, extremes.
    #[test]
    fn contact_ids_are_found_by_table_or_hash_alike() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
        for case in 0..200 {
            let n = rng.random_range(0..500u64);
            let first = match case % 4 {
                0 => 0,
                1 => u64::MAX - 2 * n - 1,
                _ => rng.random_range(0..1u64 << 40),
            };
            let spread = [1, 4, u64::MAX / 4][case % 3];
            let pairs: Vec<(u64, u32)> = (0..n)
                .map(|i| {
                    let at = rng.random_range(0..n.saturating_mul(spread).max(1));
                    (first.wrapping_add(at), i as u32)
                })
                .collect();
            let want: datafusion::common::HashMap<u64, u32> = pairs.iter().copied().collect();
            let map = ContactIdMap::from_pairs(pairs.iter().copied(), pairs.len());
            match (spread, &map.ids) {
                (1, Ids::Table { .. }) | (4, _) => {}
                (_, Ids::Hashed(_)) if spread > 4 || n == 0 => {}
                (_, Ids::Table { .. }) if n == 1 => {}
                _ => panic!("case {case}: ids spread by {spread} kept as {:?}", map.ids),
            }
            assert_eq!(map.len(), want.len(), "case {case}");
            let got: datafusion::common::HashMap<u64, u32> = map.iter().collect();
            assert_eq!(got, want, "case {case}");
            let probes = pairs
                .iter()
                .flat_map(|(c, _)| [*c, c.wrapping_add(1), c.wrapping_sub(1)])
                .chain([0, 1, first.wrapping_sub(1), u64::MAX, u64::MAX - 1]);
            for id in probes {
                assert_eq!(map.get(id), want.get(&id).copied(), "case {case}, id {id}");
            }
        }
    }
}
