//! Dictionary-encoded text columns read straight from their pages.
//!
//! A text column of few distinct values (a city, a status) is stored as a
//! dictionary page of its values and, per data page, the definition levels
//! (which rows are null) and one dictionary key per non-null row, both in
//! Parquet's run-length/bit-packed hybrid encoding. A test of such a column
//! has one outcome per dictionary value; looking it up key by key while the
//! pages are decoded gives one bit per row without building the column's
//! Arrow arrays (keys padded out to the null rows, then a dictionary array),
//! which is most of the cost of a contacts condition on such a column.

use std::path::Path;

use bytes::Bytes;
use datafusion::arrow::array::{ArrayRef, BooleanBufferBuilder, StringBuilder};
use datafusion::arrow::buffer::{BooleanBuffer, Buffer};
use datafusion::parquet::basic::{Encoding, Type as PhysicalType};
use datafusion::parquet::column::page::Page;
use datafusion::parquet::errors::{ParquetError, Result as ParquetResult};
use datafusion::parquet::file::metadata::ColumnChunkMetaData;
use datafusion::parquet::file::reader::{ChunkReader, Length, RowGroupReader};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::error::{Error, Result};

/// A Parquet file read at positions (`pread`), so that threads can share
/// one reader: `File`'s own reader seeks a duplicate of the descriptor,
/// and duplicates share one position.
pub struct PositionedFile(pub std::fs::File);

impl Length for PositionedFile {
    fn len(&self) -> u64 {
        self.0.metadata().map(|m| m.len()).unwrap_or(0)
    }
}

impl ChunkReader for PositionedFile {
    type T = std::io::BufReader<ReadAt>;

    fn get_read(&self, start: u64) -> ParquetResult<Self::T> {
        Ok(std::io::BufReader::new(ReadAt {
            file: self.0.try_clone()?,
            at: start,
        }))
    }

    fn get_bytes(&self, start: u64, length: usize) -> ParquetResult<Bytes> {
        let mut buf = vec![0; length];
        self.0.read_exact_at(&mut buf, start)?;
        Ok(buf.into())
    }
}

/// Reads from a position of a file, moving its own position only.
pub struct ReadAt {
    file: std::fs::File,
    at: u64,
}

impl std::io::Read for ReadAt {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// Whether a column chunk can be read by [`dictionary_rows`]: a flat
/// (optional or required) byte-array column with a dictionary page, whose
/// data pages, as far as the chunk's metadata tells, are all
/// dictionary-encoded. A writer falls back to plain values once a
/// dictionary grows too large; such chunks are read through Arrow.
pub fn is_dictionary_chunk(chunk: &ColumnChunkMetaData) -> bool {
    let descr = chunk.column_descr();
    descr.max_rep_level() == 0
        && descr.max_def_level() <= 1
        && descr.physical_type() == PhysicalType::BYTE_ARRAY
        && chunk.dictionary_page_offset().is_some()
        && chunk.page_encoding_stats().is_none_or(|stats| {
            stats.iter().all(|s| {
                s.page_type == datafusion::parquet::basic::PageType::DICTIONARY_PAGE
                    || is_dictionary_encoding(s.encoding)
            })
        })
}

fn is_dictionary_encoding(e: Encoding) -> bool {
    matches!(e, Encoding::RLE_DICTIONARY | Encoding::PLAIN_DICTIONARY)
}

/// A test of a text column's values: `truth` is given the values of a
/// dictionary page (as UTF-8 text) and returns one outcome per value; null
/// rows get `on_null`.
pub struct ValueTest<'a> {
    pub truth: &'a dyn Fn(ArrayRef) -> Result<Vec<bool>>,
    pub on_null: bool,
}

/// For each row of column `column` of a row group, the outcome of each of
/// `tests` on its value, the column decoded once for all of them.
/// `None` if a data page turns out not to be dictionary-encoded.
pub fn dictionary_rows(
    file: &Path,
    rg: &dyn RowGroupReader,
    column: usize,
    tests: &[ValueTest],
) -> Result<Option<Vec<BooleanBuffer>>> {
    let chunk = rg.metadata().column(column);
    if !is_dictionary_chunk(chunk) {
        return Ok(None);
    }
    let optional = chunk.column_descr().max_def_level() == 1;
    let rows = usize::try_from(rg.metadata().num_rows()).unwrap_or(0);
    let damaged = |what: String| {
        Error::parquet(
            file,
            ParquetError::General(format!("column {}: {what}", chunk.column_path())),
        )
    };
    let mut outs: Vec<BooleanBufferBuilder> = tests
        .iter()
        .map(|_| BooleanBufferBuilder::new(rows))
        .collect();
    let mut outcomes: Option<Vec<Outcomes>> = None;
    let mut page_rows = PageRows::default();
    let pages = rg
        .get_column_page_reader(column)
        .map_err(|e| Error::parquet(file, e))?;
    for page in pages {
        let page = page.map_err(|e| Error::parquet(file, e))?;
        let (buf, levels, values, n) = match &page {
            Page::DictionaryPage {
                buf,
                num_values,
                encoding,
                ..
            } => {
                if !matches!(encoding, Encoding::PLAIN | Encoding::PLAIN_DICTIONARY) {
                    return Ok(None);
                }
                let values = plain_strings(buf, *num_values as usize).map_err(damaged)?;
                outcomes = Some(
                    tests
                        .iter()
                        .map(|t| {
                            Ok(Outcomes {
                                of_value: (t.truth)(values.clone())?,
                                of_null: t.on_null,
                            })
                        })
                        .collect::<Result<_>>()?,
                );
                continue;
            }
            Page::DataPage {
                buf,
                num_values,
                encoding,
                def_level_encoding,
                ..
            } => {
                if !is_dictionary_encoding(*encoding)
                    || (optional && *def_level_encoding != Encoding::RLE)
                {
                    return Ok(None);
                }
                // Version 1: the levels are prefixed with their length.
                let levels = if optional {
                    let len = buf
                        .get(..4)
                        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                        .ok_or_else(|| damaged("truncated data page".into()))?;
                    Some(4..4 + len)
                } else {
                    None
                };
                let start = levels.as_ref().map_or(0, |l| l.end);
                (buf, levels, start..buf.len(), *num_values as usize)
            }
            Page::DataPageV2 {
                buf,
                num_values,
                encoding,
                def_levels_byte_len,
                rep_levels_byte_len,
                ..
            } => {
                if !is_dictionary_encoding(*encoding) {
                    return Ok(None);
                }
                let start = *rep_levels_byte_len as usize;
                let end = start + *def_levels_byte_len as usize;
                let levels = optional.then_some(start..end);
                (buf, levels, end..buf.len(), *num_values as usize)
            }
        };
        let outcomes = outcomes
            .as_deref()
            .ok_or_else(|| damaged("data page before the dictionary page".into()))?;
        let part = |r: std::ops::Range<usize>| {
            buf.get(r)
                .ok_or_else(|| damaged("truncated data page".into()))
        };
        let levels = levels.map(part).transpose()?;
        let values = part(values)?;
        page_rows
            .decode(levels, values, n, outcomes, &mut outs)
            .map_err(damaged)?;
    }
    let read = outs.first().map_or(rows, |o| o.len());
    if read != rows {
        return Err(damaged(format!(
            "{read} rows in the pages, {rows} in the row group"
        )));
    }
    Ok(Some(outs.iter_mut().map(|o| o.finish()).collect()))
}

/// The values of a plain-encoded dictionary page of text.
fn plain_strings(buf: &[u8], n: usize) -> std::result::Result<ArrayRef, String> {
    let mut out = StringBuilder::with_capacity(n, buf.len());
    let mut at = 0;
    for _ in 0..n {
        let len = buf
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or("truncated dictionary page")?;
        let bytes = buf
            .get(at + 4..at + 4 + len)
            .ok_or("truncated dictionary page")?;
        let text = std::str::from_utf8(bytes).map_err(|_| "a dictionary value is not UTF-8")?;
        out.append_value(text);
        at += 4 + len;
    }
    Ok(Arc::new(out.finish()))
}

/// The outcome of a test for each value of a dictionary, and for nulls.
struct Outcomes {
    of_value: Vec<bool>,
    of_null: bool,
}

/// Buffers reused from page to page.
#[derive(Default)]
struct PageRows {
    valid: Vec<u8>,
    keys: Vec<u32>,
}

impl PageRows {
    /// Append the outcomes of the `n` rows of one data page, one builder
    /// per test.
    fn decode(
        &mut self,
        levels: Option<&[u8]>,
        values: &[u8],
        n: usize,
        tests: &[Outcomes],
        outs: &mut [BooleanBufferBuilder],
    ) -> std::result::Result<(), String> {
        let present = match levels {
            Some(levels) => self.levels(levels, n)?,
            None => n,
        };
        if present == 0 {
            for (test, out) in tests.iter().zip(outs) {
                out.append_n(n, test.of_null);
            }
            return Ok(());
        }
        let (&width, keys) = values.split_first().ok_or("data page without keys")?;
        self.keys.clear();
        self.keys.reserve(present + 8);
        for run in Hybrid::new(keys, width)? {
            let left = present - self.keys.len();
            if left == 0 {
                break;
            }
            match run? {
                Run::Repeat(k, count) => {
                    let len = self.keys.len() + count.min(left);
                    self.keys.resize(len, k);
                }
                Run::Packed(packed, count) => {
                    unpack_into(packed, width, count.min(left), &mut self.keys)
                }
            }
        }
        if self.keys.len() < present {
            return Err(format!("{} keys missing", present - self.keys.len()));
        }
        let keys = &self.keys[..present];
        let values = tests.first().map_or(0, |t| t.of_value.len());
        if let Some(&k) = keys.iter().max()
            && k as usize >= values
        {
            return Err(format!("key {k} past the {values} dictionary values"));
        }
        for (test, out) in tests.iter().zip(outs) {
            let hits = outcome_bits(keys, &test.of_value);
            let bits = if present == n {
                BooleanBuffer::new(Buffer::from_vec(hits), 0, n)
            } else {
                spread(&self.valid, &hits, n, test.of_null)
            };
            out.append_buffer(&bits);
        }
        Ok(())
    }

    /// Decode the definition levels of `n` rows (0 null, 1 present) into
    /// `self.valid`; returns the number of present rows.
    fn levels(&mut self, levels: &[u8], n: usize) -> std::result::Result<usize, String> {
        let mut valid = BooleanBufferBuilder::new(n);
        for run in Hybrid::new(levels, 1)? {
            let left = n - valid.len();
            if left == 0 {
                break;
            }
            match run? {
                Run::Repeat(v, count) => valid.append_n(count.min(left), v != 0),
                Run::Packed(packed, count) => {
                    valid.append_packed_range(0..count.min(left).min(packed.len() * 8), packed)
                }
            }
        }
        if valid.len() < n {
            return Err(format!("{} definition levels missing", n - valid.len()));
        }
        let valid = valid.finish();
        let present = valid.count_set_bits();
        self.valid.clear();
        self.valid.extend_from_slice(valid.values());
        Ok(present)
    }
}

/// One bit per key, the outcome of its value, 64 to a word, and a last
/// word of zeros (so that [`spread`] may always read the word after).
/// The keys are below `of_value.len()`.
fn outcome_bits(keys: &[u32], of_value: &[bool]) -> Vec<u64> {
    let mut words = Vec::with_capacity(keys.len() / 64 + 2);
    if of_value.len() <= 64 {
        // Few values (a status, a city): a table of 64 whose lookups need
        // no bounds check (twice as fast as the checked one, and as a
        // shift of the outcomes packed in a register).
        let mut outcomes = [0u64; 64];
        for (o, &v) in outcomes.iter_mut().zip(of_value) {
            *o = u64::from(v);
        }
        for chunk in keys.chunks(64) {
            let mut word = 0u64;
            for (bit, &k) in chunk.iter().enumerate() {
                word |= outcomes[(k & 63) as usize] << bit;
            }
            words.push(word);
        }
    } else {
        for chunk in keys.chunks(64) {
            let mut word = 0u64;
            for (bit, &k) in chunk.iter().enumerate() {
                word |= u64::from(of_value[k as usize]) << bit;
            }
            words.push(word);
        }
    }
    words.push(0);
    words
}

/// The outcomes of `n` rows from those of their present rows, in order
/// (`hits`, from [`outcome_bits`]), and the rows' validity (`valid`, one
/// bit per row): each present row takes the next outcome, each null row
/// `of_null`. Eight rows at a time: a byte of validity and the next bits of
/// `hits` give the byte of outcomes through [`DEPOSIT`].
fn spread(valid: &[u8], hits: &[u64], n: usize, of_null: bool) -> BooleanBuffer {
    let words = n.div_ceil(64);
    let mut out = Vec::with_capacity(words);
    let mut at = 0;
    for chunk in valid.chunks(8).take(words) {
        let mut bytes = [0u8; 8];
        bytes[..chunk.len()].copy_from_slice(chunk);
        let (i, j) = (at / 64, at % 64);
        let mut next = hits[i] >> j;
        if j > 0 {
            next |= hits[i + 1] << (64 - j);
        }
        let mut word = 0u64;
        for (b, &mask) in bytes.iter().enumerate() {
            let placed = DEPOSIT[usize::from(mask) << 8 | (next & 0xff) as usize];
            word |= u64::from(placed) << (8 * b);
            next >>= mask.count_ones();
        }
        let valid = u64::from_le_bytes(bytes);
        at += valid.count_ones() as usize;
        out.push(if of_null { word | !valid } else { word });
    }
    BooleanBuffer::new(Buffer::from_vec(out), 0, n)
}

/// `DEPOSIT[mask << 8 | bits]`: the low bits of `bits`, in order, placed at
/// the set bits of `mask` (a byte of x86's `pdep`, without the instruction,
/// which some processors run slowly).
static DEPOSIT: [u8; 1 << 16] = {
    let mut table = [0u8; 1 << 16];
    let mut i = 0;
    while i < table.len() {
        let (mut mask, mut bits, mut placed) = (i >> 8, i & 0xff, 0);
        while mask != 0 {
            let lowest = mask & mask.wrapping_neg();
            if bits & 1 == 1 {
                placed |= lowest;
            }
            bits >>= 1;
            mask &= mask - 1;
        }
        table[i] = placed as u8;
        i += 1;
    }
    table
};

/// A run of Parquet's run-length/bit-packed hybrid encoding.
enum Run<'a> {
    /// One value repeated.
    Repeat(u32, usize),
    /// Values bit-packed, least significant bit first (a multiple of 8,
    /// the last ones possibly padding).
    Packed(&'a [u8], usize),
}

/// The runs of values of `width` bits encoded in `data`.
struct Hybrid<'a> {
    data: &'a [u8],
    width: u8,
}

impl<'a> Hybrid<'a> {
    fn new(data: &'a [u8], width: u8) -> std::result::Result<Self, String> {
        if width > 32 {
            return Err(format!("bit width {width} is over 32"));
        }
        Ok(Hybrid { data, width })
    }

    fn uleb128(&mut self) -> std::result::Result<usize, String> {
        let mut v: usize = 0;
        for (i, &b) in self.data.iter().enumerate().take(10) {
            v |= ((b & 0x7f) as usize) << (7 * i);
            if b & 0x80 == 0 {
                self.data = &self.data[i + 1..];
                return Ok(v);
            }
        }
        Err("bad run header".into())
    }
}

impl<'a> Iterator for Hybrid<'a> {
    type Item = std::result::Result<Run<'a>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.data.is_empty() {
            return None;
        }
        let header = match self.uleb128() {
            Ok(h) => h,
            Err(e) => return Some(Err(e)),
        };
        let width = self.width as usize;
        if header & 1 == 1 {
            let groups = header >> 1;
            // A last group cut short by the end of the page is read as far
            // as it goes.
            let bytes = (groups * width).min(self.data.len());
            let (packed, rest) = self.data.split_at(bytes);
            self.data = rest;
            let count = (bytes * 8)
                .checked_div(width)
                .map_or(groups * 8, |n| n.min(groups * 8));
            Some(Ok(Run::Packed(packed, count)))
        } else {
            let bytes = width.div_ceil(8);
            let Some(value) = self.data.get(..bytes) else {
                return Some(Err("truncated run".into()));
            };
            let v = value
                .iter()
                .rev()
                .fold(0u32, |acc, &b| (acc << 8) | b as u32);
            self.data = &self.data[bytes..];
            Some(Ok(Run::Repeat(v, header >> 1)))
        }
    }
}

/// Append the first `count` values of `width` bits packed in `packed`.
fn unpack_into(packed: &[u8], width: u8, count: usize, out: &mut Vec<u32>) {
    let w = width as usize;
    let start = out.len();
    if w == 0 {
        out.resize(start + count, 0);
        return;
    }
    if w > 16 {
        out.extend((0..count).map(|i| unpack(packed, width, i)));
        return;
    }
    // Eight values at a time: a group of eight takes `w` bytes, read as
    // one word straight from the page (but for the last groups).
    let groups = count.div_ceil(8).min(packed.len().div_ceil(w));
    out.reserve(groups * 8);
    for g in 0..groups {
        let at = g * w;
        let group: [u32; 8] = if w <= 8 {
            let v = match packed.get(at..at + 8) {
                Some(b) => u64::from_le_bytes(b.try_into().expect("8 bytes")),
                None => u64::from_le_bytes(padded(&packed[at..])),
            };
            let mask = (1u64 << w) - 1;
            std::array::from_fn(|j| ((v >> (j * w)) & mask) as u32)
        } else {
            let v = match packed.get(at..at + 16) {
                Some(b) => u128::from_le_bytes(b.try_into().expect("16 bytes")),
                None => u128::from_le_bytes(padded(&packed[at..])),
            };
            let mask = (1u128 << w) - 1;
            std::array::from_fn(|j| ((v >> (j * w)) & mask) as u32)
        };
        out.extend_from_slice(&group);
    }
    out.truncate(start + count);
}

/// The first bytes of `tail`, zero-padded to `N`.
fn padded<const N: usize>(tail: &[u8]) -> [u8; N] {
    let mut b = [0u8; N];
    let k = tail.len().min(N);
    b[..k].copy_from_slice(&tail[..k]);
    b
}

/// Value `i` of values of `width` bits packed least significant bit first.
#[inline]
fn unpack(packed: &[u8], width: u8, i: usize) -> u32 {
    if width == 0 {
        return 0;
    }
    let bit = i * width as usize;
    let byte = bit / 8;
    let word = match packed.get(byte..byte + 8) {
        Some(b) => u64::from_le_bytes(b.try_into().expect("8 bytes")),
        None => {
            let mut w = [0u8; 8];
            let tail = &packed[byte.min(packed.len())..];
            w[..tail.len()].copy_from_slice(tail);
            u64::from_le_bytes(w)
        }
    };
    ((word >> (bit % 8)) & ((1u64 << width) - 1)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values packed `width` bits each, least significant bit first.
    fn pack(values: &[u32], width: u8) -> Vec<u8> {
        let mut out = vec![0u8; (values.len() * width as usize).div_ceil(8)];
        for (i, &v) in values.iter().enumerate() {
            for b in 0..width as usize {
                if v >> b & 1 == 1 {
                    let bit = i * width as usize + b;
                    out[bit / 8] |= 1 << (bit % 8);
                }
            }
        }
        out
    }

    #[test]
    fn unpacks_every_width_up_to_the_last_value() {
        for width in [1u8, 3, 7, 8, 13, 16, 17, 32] {
            let max = if width == 32 {
                u32::MAX
            } else {
                (1 << width) - 1
            };
            let values: Vec<u32> = (0..37u32)
                .map(|i| i.wrapping_mul(2654435761) & max)
                .collect();
            let packed = pack(&values, width);
            let got: Vec<u32> = (0..values.len())
                .map(|i| unpack(&packed, width, i))
                .collect();
            assert_eq!(got, values, "width {width}");
            let mut got = vec![7];
            unpack_into(&packed, width, values.len(), &mut got);
            assert_eq!(got[1..], values, "width {width}, by groups");
        }
    }

    #[test]
    fn reads_repeated_and_packed_runs() {
        // A run of 300 times 5 (header 600, as LEB128), then one packed
        // group of 8 values of 3 bits (header 3).
        let group = [1u32, 2, 3, 4, 5, 6, 7, 0];
        let mut data = vec![0xd8, 0x04, 5];
        data.push(3);
        data.extend(pack(&group, 3));
        let runs: Vec<_> = Hybrid::new(&data, 3)
            .unwrap()
            .map(|r| match r.unwrap() {
                Run::Repeat(v, n) => (vec![v], n),
                Run::Packed(p, n) => ((0..n).map(|i| unpack(p, 3, i)).collect(), n),
            })
            .collect();
        assert_eq!(runs, vec![(vec![5], 300), (group.to_vec(), 8)]);
    }

    #[test]
    fn nulls_take_their_outcome_and_keys_go_to_the_present_rows() {
        // Rows: a, null, b, null, c (keys 0, 1, 2); "b" passes; null passes.
        let levels = [3u8, 0b10101]; // one packed group of 8 levels
        let mut values = vec![2u8, 3];
        values.extend(pack(&[0, 1, 2, 0, 0, 0, 0, 0], 2));
        let mut outs = [BooleanBufferBuilder::new(5), BooleanBufferBuilder::new(5)];
        // The same keys under a second test: "a" or "c" pass, nulls do not.
        let tests = [
            Outcomes {
                of_value: vec![false, true, false],
                of_null: true,
            },
            Outcomes {
                of_value: vec![true, false, true],
                of_null: false,
            },
        ];
        PageRows::default()
            .decode(Some(&levels), &values, 5, &tests, &mut outs)
            .unwrap();
        let got: Vec<Vec<bool>> = outs
            .iter_mut()
            .map(|o| o.finish().iter().collect())
            .collect();
        assert_eq!(got[0], vec![false, true, true, true, false]);
        assert_eq!(got[1], vec![true, false, false, false, true]);
    }

    #[test]
    fn outcomes_of_present_rows_are_spread_over_the_rows_in_order() {
        // Pseudo-random validity over 1,000 rows (a last word of 40), with
        // runs of every length, against placing the outcomes one by one.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        // Dictionaries of few values (a table of 64) and of many.
        for (density, values) in [0, 1, 2, 4, 7, 8]
            .into_iter()
            .zip([2, 64, 100].iter().cycle())
        {
            let n = 1000;
            let valid: Vec<bool> = (0..n).map(|_| next() % 8 < density).collect();
            let present = valid.iter().filter(|v| **v).count();
            let of_value: Vec<bool> = (0..*values).map(|v| v % 3 == 1).collect();
            let keys: Vec<u32> = (0..present).map(|_| (next() % values) as u32).collect();
            let hits: Vec<bool> = keys.iter().map(|&k| of_value[k as usize]).collect();
            let packed = outcome_bits(&keys, &of_value);
            let valid_bytes = BooleanBuffer::from_iter(valid.iter().copied());
            for of_null in [false, true] {
                let mut left = hits.iter();
                let expected: Vec<bool> = valid
                    .iter()
                    .map(|&v| if v { *left.next().unwrap() } else { of_null })
                    .collect();
                let got: Vec<bool> = spread(valid_bytes.values(), &packed, n, of_null)
                    .iter()
                    .collect();
                assert_eq!(got, expected, "density {density}/8, nulls {of_null}");
            }
        }
    }

    /// Rows of text with nulls written with the given settings, read back
    /// through the pages: the outcomes of "starts with a" (nulls: `on_null`)
    /// row group by row group, or `None` where the reader gave up.
    fn written_and_read(
        props: datafusion::parquet::file::properties::WriterProperties,
        on_null: bool,
    ) -> (Vec<bool>, Vec<Option<Vec<bool>>>) {
        use datafusion::arrow::array::{Array, AsArray, RecordBatch, StringArray};
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        use datafusion::parquet::arrow::ArrowWriter;
        use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};

        let texts: Vec<Option<String>> = (0..5000u32)
            .map(|i| match i.wrapping_mul(2654435761) % 11 {
                0 | 1 => None,
                k if i > 3000 => Some(format!("{}{k}", ["a", "b", "ab"][(i % 3) as usize])),
                k => Some(format!("{}{}", ["a", "b"][(k % 2) as usize], i % 7)),
            })
            .collect();
        let column = StringArray::from(texts.clone());
        let schema = Arc::new(Schema::new(vec![Field::new("t", DataType::Utf8, true)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(column)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let mut w =
            ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, Some(props))
                .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let expected = texts
            .iter()
            .map(|t| t.as_ref().map_or(on_null, |t| t.starts_with('a')))
            .collect();
        let reader = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
        let truth = |values: ArrayRef| -> Result<Vec<bool>> {
            let v = values.as_string::<i32>();
            Ok((0..v.len()).map(|i| v.value(i).starts_with('a')).collect())
        };
        let groups = (0..reader.num_row_groups())
            .map(|g| {
                let rg = reader.get_row_group(g).unwrap();
                let test = ValueTest {
                    truth: &truth,
                    on_null,
                };
                dictionary_rows(&path, rg.as_ref(), 0, &[test])
                    .unwrap()
                    .map(|b| b[0].iter().collect())
            })
            .collect();
        (expected, groups)
    }

    #[test]
    fn pages_of_either_version_read_as_the_rows_were_written() {
        use datafusion::parquet::basic::{Compression, ZstdLevel};
        use datafusion::parquet::file::properties::{WriterProperties, WriterVersion};
        for version in [WriterVersion::PARQUET_1_0, WriterVersion::PARQUET_2_0] {
            for on_null in [false, true] {
                let props = WriterProperties::builder()
                    .set_writer_version(version)
                    .set_compression(Compression::ZSTD(ZstdLevel::default()))
                    .set_max_row_group_row_count(Some(1500))
                    .set_data_page_row_count_limit(256)
                    .set_write_batch_size(128)
                    .build();
                let (expected, groups) = written_and_read(props, on_null);
                let got: Vec<bool> = groups.into_iter().flat_map(|g| g.unwrap()).collect();
                assert_eq!(got, expected, "{version:?}, nulls {on_null}");
            }
        }
    }

    #[test]
    fn a_column_that_fell_back_to_plain_values_is_left_to_arrow() {
        use datafusion::parquet::file::properties::WriterProperties;
        let props = WriterProperties::builder()
            .set_dictionary_page_size_limit(64)
            .set_data_page_row_count_limit(256)
            .set_write_batch_size(128)
            .build();
        let (_, groups) = written_and_read(props, false);
        assert_eq!(groups, vec![None]);
    }

    #[test]
    fn a_key_past_the_dictionary_is_an_error() {
        let mut values = vec![2u8, 3];
        values.extend(pack(&[3, 0, 0, 0, 0, 0, 0, 0], 2));
        let mut out = [BooleanBufferBuilder::new(1)];
        let test = Outcomes {
            of_value: vec![true, false],
            of_null: false,
        };
        let err = PageRows::default()
            .decode(None, &values, 1, &[test], &mut out)
            .unwrap_err();
        assert!(err.contains("key 3"), "{err}");
    }
}
