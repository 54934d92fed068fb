//! The contacts' ids ordered by `contact_id`, for imports that name few
//! contacts. An events import of ten thousand rows into a base of ten
//! million contacts would otherwise read both id columns of the whole
//! contacts file to find its contacts' internal ids. Here each id is found
//! in one block of the file, mapped, and only the blocks looked in are
//! read and checked.
//!
//! The file is written with the contacts file, from the same rows:
//!
//! ```text
//! "SEGIDS01"  count: u64  block: u32  0: u32
//! fences: [u64; blocks]     the first contact_id of each block
//! crcs:   [u32; blocks]     the CRC-32 of each block's bytes
//! crc:    u32               the CRC-32 of every byte above
//! zeros up to a multiple of 8 bytes
//! blocks: contact_ids [u64; n] then internal ids [u32; n], n = block
//!         (fewer in the last one)
//! ```
//!
//! Numbers are little-endian. A block that does not match its checksum is
//! an error: the caller reads the contacts file instead.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::base::Writer;
use crate::base::manifest::DataFile;
use crate::base::store::Durability;
use crate::error::{Error, Result};

/// The ids of a contacts file, ordered by `contact_id`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdIndex {
    /// The contacts file it was written from.
    pub of: String,
    pub file: DataFile,
}

const MAGIC: &[u8; 8] = b"SEGIDS01";

/// Contacts a block: 3 KB, the most a look-up reads and checks for an id.
const BLOCK: usize = 256;

/// Bytes before the fences.
const HEAD: usize = 24;

/// Where the blocks start in a file of `blocks` blocks.
fn blocks_at(blocks: usize) -> usize {
    (HEAD + blocks * 12 + 4).next_multiple_of(8)
}

/// Write the index of `(contact_id, internal id)` pairs (the rows of the
/// contacts file `of`). It is not waited for on the disk (120 MB for ten
/// million contacts): damaged by a power cut, its checksums tell, imports
/// read the contacts file instead, and `compact` writes it again.
pub fn write(w: &Writer, of: &str, pairs: &mut [(u64, u32)]) -> Result<IdIndex> {
    radsort::sort_by_key(pairs, |p| p.0);
    let sink = w.new_file("contacts", "ids", "bin")?;
    let file = encode(sink, pairs)?.finish_as(Durability::Rebuildable)?;
    Ok(IdIndex {
        of: of.to_string(),
        file,
    })
}

/// The file of pairs ordered by `contact_id`, written to `out`.
fn encode<W: Write>(out: W, sorted: &[(u64, u32)]) -> Result<W> {
    let blocks: Vec<&[(u64, u32)]> = sorted.chunks(BLOCK).collect();
    let bodies: Vec<Vec<u8>> = {
        use rayon::prelude::*;
        blocks
            .par_iter()
            .map(|b| {
                let mut body = Vec::with_capacity(b.len() * 12);
                body.extend(b.iter().flat_map(|p| p.0.to_le_bytes()));
                body.extend(b.iter().flat_map(|p| p.1.to_le_bytes()));
                body
            })
            .collect()
    };
    let mut head = Vec::with_capacity(blocks_at(blocks.len()));
    head.extend(MAGIC);
    head.extend((sorted.len() as u64).to_le_bytes());
    head.extend((BLOCK as u32).to_le_bytes());
    head.extend(0u32.to_le_bytes());
    head.extend(blocks.iter().flat_map(|b| b[0].0.to_le_bytes()));
    head.extend(bodies.iter().flat_map(|b| crc32fast::hash(b).to_le_bytes()));
    head.extend(crc32fast::hash(&head).to_le_bytes());
    head.resize(blocks_at(blocks.len()), 0);
    let mut out = BufWriter::with_capacity(1 << 20, out);
    let io = |e: std::io::Error| Error::Internal(format!("writing the ids' index: {e}"));
    out.write_all(&head).map_err(io)?;
    for b in &bodies {
        out.write_all(b).map_err(io)?;
    }
    out.into_inner().map_err(|e| io(e.into_error()))
}

/// An index's file, its header read and checked.
pub struct Opened {
    dir: PathBuf,
    map: memmap2::Mmap,
    count: usize,
    block: usize,
    fences: Vec<u64>,
    crcs: Vec<u32>,
    path: String,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

impl Opened {
    /// Map the file of `index` in `dir` and check its header.
    pub fn open(dir: &Path, index: &IdIndex) -> Result<Opened> {
        let map = crate::base::store::map(dir, &index.file)?;
        Self::read(dir, map, &index.file.path, index.file.bytes)
    }

    fn read(dir: &Path, map: memmap2::Mmap, path: &str, bytes: u64) -> Result<Opened> {
        let damaged = |what: &str| Error::base(dir, format!("{path} is damaged: {what}"));
        if map.len() as u64 != bytes || map.len() < HEAD || &map[..8] != MAGIC {
            return Err(damaged("not an index of ids of this size"));
        }
        let count = u64_at(&map, 8) as usize;
        let block = u32_at(&map, 16) as usize;
        if block == 0 {
            return Err(damaged("blocks of no contact"));
        }
        let blocks = count.div_ceil(block);
        let at = blocks_at(blocks);
        if map.len() != at + count * 12 {
            return Err(damaged("its size does not match its count of ids"));
        }
        let crc_at = HEAD + blocks * 12;
        if crc32fast::hash(&map[..crc_at]) != u32_at(&map, crc_at) {
            return Err(damaged("its header does not match its checksum"));
        }
        let fences = (0..blocks).map(|b| u64_at(&map, HEAD + b * 8)).collect();
        let crcs = (0..blocks)
            .map(|b| u32_at(&map, HEAD + blocks * 8 + b * 4))
            .collect();
        Ok(Opened {
            dir: dir.to_path_buf(),
            map,
            count,
            block,
            fences,
            crcs,
            path: path.to_string(),
        })
    }

    /// The bytes of block `b`, checked: its `contact_id`s, then its
    /// internal ids.
    fn block(&self, b: usize) -> Result<(&[u8], &[u8])> {
        let n = self.block.min(self.count - b * self.block);
        let at = blocks_at(self.fences.len()) + b * self.block * 12;
        let body = &self.map[at..at + n * 12];
        if crc32fast::hash(body) != self.crcs[b] {
            return Err(Error::base(
                &self.dir,
                format!(
                    "{} is damaged: block {b} does not match its checksum",
                    self.path
                ),
            ));
        }
        Ok(body.split_at(n * 8))
    }

    /// The internal ids of those of `wanted` that the index holds.
    pub fn find(&self, wanted: &[u64]) -> Result<Vec<(u64, u32)>> {
        use rayon::prelude::*;
        let mut wanted = wanted.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        // Ids in order, in runs side by side: each block met is checked
        // once within a run.
        let found = wanted
            .par_chunks(1024)
            .map(|ids| {
                let mut out = Vec::new();
                let mut at: Option<(usize, &[u8], &[u8])> = None;
                for &id in ids {
                    let Some(b) = self.fences.partition_point(|&f| f <= id).checked_sub(1) else {
                        continue;
                    };
                    let (cids, iids) = match at {
                        Some((k, c, i)) if k == b => (c, i),
                        _ => {
                            let (c, i) = self.block(b)?;
                            at = Some((b, c, i));
                            (c, i)
                        }
                    };
                    let n = cids.len() / 8;
                    let k = partition(n, |k| u64_at(cids, k * 8) < id);
                    if k < n && u64_at(cids, k * 8) == id {
                        out.push((id, u32_at(iids, k * 4)));
                    }
                }
                Ok(out)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(found.into_iter().flatten().collect())
    }

    /// Every pair of the index, in the order of `contact_id`.
    pub fn pairs(&self) -> Result<Vec<(u64, u32)>> {
        let mut out = Vec::with_capacity(self.count);
        for b in 0..self.fences.len() {
            let (cids, iids) = self.block(b)?;
            for k in 0..cids.len() / 8 {
                out.push((u64_at(cids, k * 8), u32_at(iids, k * 4)));
            }
        }
        Ok(out)
    }
}

/// The first of `0..n` for which `before` is false (`before` true then
/// false along the range).
fn partition(n: usize, before: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if before(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn opened(pairs: &[(u64, u32)]) -> Opened {
        let mut sorted = pairs.to_vec();
        sorted.sort();
        let bytes = encode(Vec::new(), &sorted).unwrap();
        let mut map = memmap2::MmapMut::map_anon(bytes.len().max(1)).unwrap();
        map[..bytes.len()].copy_from_slice(&bytes);
        Opened::read(
            Path::new("base"),
            map.make_read_only().unwrap(),
            "ids.bin",
            bytes.len() as u64,
        )
        .unwrap()
    }

    #[test]
    fn every_id_is_found_in_its_block_and_others_are_not() {
        // Ids spread wide and close, over several blocks and a short last one.
        let pairs: Vec<(u64, u32)> = (0..2 * BLOCK as u64 + 37)
            .map(|k| (k * k * 7 + 3, (k as u32 * 13) % 10_007))
            .collect();
        let index = opened(&pairs);
        assert_eq!(index.fences.len(), 3);
        assert_eq!(index.pairs().unwrap(), pairs);
        let mut wanted: Vec<u64> = pairs.iter().map(|p| p.0).collect();
        // Absent ones: before the first, between two, after the last.
        wanted.extend([0, 1, 4, 11, u64::MAX, pairs.last().unwrap().0 + 1]);
        // In no order, some twice.
        wanted.reverse();
        wanted.extend(wanted[..50].to_vec());
        let found: HashMap<u64, u32> = index.find(&wanted).unwrap().into_iter().collect();
        assert_eq!(found.len(), pairs.len());
        for (c, i) in &pairs {
            assert_eq!(found.get(c), Some(i), "contact_id {c}");
        }
    }

    #[test]
    fn an_empty_index_finds_nothing() {
        let index = opened(&[]);
        assert!(index.find(&[0, 5]).unwrap().is_empty());
        assert!(index.pairs().unwrap().is_empty());
    }

    #[test]
    fn a_damaged_block_or_header_is_an_error() {
        let pairs: Vec<(u64, u32)> = (0..BLOCK as u64 * 2).map(|k| (k * 3, k as u32)).collect();
        let mut sorted = pairs.clone();
        sorted.sort();
        let bytes = encode(Vec::new(), &sorted).unwrap();
        let read = |bytes: &[u8]| {
            let mut map = memmap2::MmapMut::map_anon(bytes.len()).unwrap();
            map.copy_from_slice(bytes);
            Opened::read(
                Path::new("base"),
                map.make_read_only().unwrap(),
                "ids.bin",
                bytes.len() as u64,
            )
        };
        // A bit changed in the second block's internal ids.
        let mut bad = bytes.clone();
        let at = blocks_at(2) + BLOCK * 12 + BLOCK * 8 + 5;
        bad[at] ^= 1;
        let index = read(&bad).unwrap();
        // The first block is read; the second is refused.
        assert_eq!(index.find(&[3]).unwrap(), [(3, 1)]);
        let e = index.find(&[3 * BLOCK as u64 + 3]).unwrap_err().to_string();
        assert!(e.contains("block 1"), "{e}");
        // A fence changed: the header is refused.
        let mut bad = bytes.clone();
        bad[HEAD + 8] ^= 1;
        let e = read(&bad).err().expect("refused").to_string();
        assert!(e.contains("header"), "{e}");
        // Cut short.
        assert!(read(&bytes[..bytes.len() - 4]).is_err());
    }
}
