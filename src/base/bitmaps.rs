//! Roaring bitmaps of internal ids on disk: a file holds one or more
//! tagged bitmaps (members, cohorts, entries and exits), checksummed.

use std::io::Write;
use std::path::Path;

use roaring::RoaringBitmap;

use crate::base::Writer;
use crate::base::manifest::DataFile;
use crate::base::store::{Durability, map_checked, read_checked};
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"SEGBMP01";

/// Bytes written to a data file at a time.
pub const WRITE_BUFFER: usize = 1 << 20;

/// A bitmap file holds tagged bitmaps: for members, tag 0 is the member set
/// and the others are entry cohorts tagged with their entry time (µs since
/// the epoch); for deltas, tag 0 is entries and tag 1 exits.
pub struct TaggedBitmaps(pub Vec<(i64, RoaringBitmap)>);

impl TaggedBitmaps {
    /// Write the file's bytes, bitmap after bitmap.
    pub fn encode_into(&self, out: &mut impl Write) -> std::io::Result<()> {
        use rayon::prelude::*;
        // The bitmaps serialized in parallel, then written in order.
        let parts = self
            .0
            .par_iter()
            .map(|(_, bm)| {
                let mut bytes = Vec::with_capacity(bm.serialized_size());
                bm.serialize_into(&mut bytes).map(|()| bytes)
            })
            .collect::<std::io::Result<Vec<Vec<u8>>>>()?;
        out.write_all(MAGIC)?;
        out.write_all(&(self.0.len() as u64).to_le_bytes())?;
        for ((tag, _), bytes) in self.0.iter().zip(parts) {
            out.write_all(&tag.to_le_bytes())?;
            out.write_all(&(bytes.len() as u64).to_le_bytes())?;
            out.write_all(&bytes)?;
        }
        Ok(())
    }

    /// The bitmaps of a file's bytes, checked whole against the manifest's
    /// checksum beforehand: each bitmap is not validated again.
    fn decode(bytes: &[u8]) -> std::result::Result<TaggedBitmaps, String> {
        let mut rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or("not a bitmap file (bad magic)")?;
        let take_u64 = |rest: &mut &[u8]| -> std::result::Result<u64, String> {
            if rest.len() < 8 {
                return Err("truncated bitmap file".into());
            }
            let (head, tail) = rest.split_at(8);
            *rest = tail;
            Ok(u64::from_le_bytes(head.try_into().expect("8 bytes")))
        };
        let n = take_u64(&mut rest)?;
        let mut parts = Vec::new();
        for _ in 0..n {
            let tag = take_u64(&mut rest)? as i64;
            let len = take_u64(&mut rest)? as usize;
            if rest.len() < len {
                return Err("truncated bitmap file".into());
            }
            let (head, tail) = rest.split_at(len);
            parts.push((tag, head));
            rest = tail;
        }
        // The bitmaps in parallel: a recompute's kept results are tens of
        // megabytes.
        use rayon::prelude::*;
        let out = parts
            .into_par_iter()
            .map(|(tag, bytes)| {
                RoaringBitmap::deserialize_unchecked_from(bytes)
                    .map(|bm| (tag, bm))
                    .map_err(|e| format!("damaged bitmap: {e}"))
            })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        Ok(TaggedBitmaps(out))
    }

    pub fn write(&self, writer: &Writer, stem: &str) -> Result<DataFile> {
        self.write_as(writer, stem, Durability::Flushed)
    }

    pub fn write_as(
        &self,
        writer: &Writer,
        stem: &str,
        durability: Durability,
    ) -> Result<DataFile> {
        let sink = writer.new_file("bitmaps", stem, "bm")?;
        let path = sink.path().to_path_buf();
        let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER, sink);
        self.encode_into(&mut out)
            .map_err(|e| Error::io(&path, e))?;
        let sink = out
            .into_inner()
            .map_err(|e| Error::io(&path, e.into_error()))?;
        sink.finish_as(durability)
    }

    pub fn read(dir: &Path, file: &DataFile) -> Result<TaggedBitmaps> {
        // Large files (kept results) decoded where they are mapped, small
        // ones read.
        let decoded = match file.bytes >= 1 << 20 {
            true => TaggedBitmaps::decode(&map_checked(dir, file)?),
            false => TaggedBitmaps::decode(&read_checked(dir, file)?),
        };
        decoded.map_err(|m| Error::base(dir, format!("{}: {m}", file.path)))
    }

    /// The bitmap with a tag (or empty).
    pub fn get(&self, tag: i64) -> RoaringBitmap {
        self.0
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, b)| b.clone())
            .unwrap_or_default()
    }
}

/// Write a single bitmap (tag 0).
/// The set of ids given in any order. Many ids set bits in a byte per
/// eight ids first (a bitmap insert per unordered id costs several times
/// more); few, spread over a wide range, are sorted.
pub fn bitmap_of(ids: &[u32]) -> RoaringBitmap {
    use rayon::prelude::*;
    let Some(max) = ids.par_iter().copied().max() else {
        return RoaringBitmap::new();
    };
    let bytes = max as usize / 8 + 1;
    if bytes / 4 > ids.len() {
        let mut sorted = ids.to_vec();
        sorted.par_sort_unstable();
        sorted.dedup();
        return RoaringBitmap::from_sorted_iter(sorted).expect("sorted ids");
    }
    let bits = ids
        .par_chunks(1 << 20)
        .fold(
            || vec![0u8; bytes],
            |mut bits, part| {
                for &i in part {
                    bits[i as usize / 8] |= 1 << (i % 8);
                }
                bits
            },
        )
        .reduce_with(|mut a, b| {
            a.iter_mut().zip(b).for_each(|(x, y)| *x |= y);
            a
        })
        .expect("ids");
    RoaringBitmap::from_lsb0_bytes(0, &bits)
}

pub fn write_bitmap(writer: &Writer, stem: &str, bm: &RoaringBitmap) -> Result<DataFile> {
    TaggedBitmaps(vec![(0, bm.clone())]).write(writer, stem)
}

/// Read a single bitmap (tag 0).
pub fn read_bitmap(dir: &Path, file: &DataFile) -> Result<RoaringBitmap> {
    Ok(TaggedBitmaps::read(dir, file)?.get(0))
}

/// The bitmap of every live contact of a version, read once while it
/// stands: every query's session starts from it. A file of the base known
/// by its name, size and checksum never changes, so the last one read is
/// kept for the process.
pub fn read_all_contacts(dir: &Path, file: &DataFile) -> Result<RoaringBitmap> {
    type Kept = Option<(std::path::PathBuf, DataFile, RoaringBitmap)>;
    static KEPT: std::sync::Mutex<Kept> = std::sync::Mutex::new(None);
    let kept = || KEPT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((d, f, bm)) = kept().as_ref()
        && d == dir
        && f == file
    {
        return Ok(bm.clone());
    }
    let bm = read_bitmap(dir, file)?;
    *kept() = Some((dir.to_path_buf(), file.clone(), bm.clone()));
    Ok(bm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Dense and sparse ids, repeated and in any order, up to `u32::MAX`.
    #[test]
    fn bitmap_of_holds_every_id_given() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
        for case in 0..200 {
            let n = rng.random_range(0..3_000);
            let top = match case % 3 {
                0 => rng.random_range(1..5_000),
                1 => rng.random_range(1..10_000_000),
                _ => u32::MAX,
            };
            let mut ids: Vec<u32> = (0..n).map(|_| rng.random_range(0..top)).collect();
            if case % 5 == 0 {
                ids.push(top - 1);
                ids.push(0);
            }
            let want: RoaringBitmap = ids.iter().copied().collect();
            assert_eq!(bitmap_of(&ids), want, "case {case}");
        }
        let many: Vec<u32> = (0..3_000_000).map(|i| (i * 7) % 2_500_000).collect();
        assert_eq!(bitmap_of(&many), many.iter().copied().collect());
    }
}
