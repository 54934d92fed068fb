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
use datafusion::arrow::buffer::BooleanBuffer;
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

/// For each row of column `column` of a row group, the outcome of a test of
/// its value: `truth` is given the values of the dictionary page (as UTF-8
/// text) and returns one outcome per value; null rows get `on_null`.
/// `None` if a data page turns out not to be dictionary-encoded.
pub fn dictionary_rows(
    file: &Path,
    rg: &dyn RowGroupReader,
    column: usize,
    truth: &dyn Fn(ArrayRef) -> Result<Vec<bool>>,
    on_null: bool,
) -> Result<Option<BooleanBuffer>> {
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
    let mut out = BooleanBufferBuilder::new(rows);
    let mut lut: Option<Vec<bool>> = None;
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
                lut = Some(truth(values)?);
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
        let lut = lut
            .as_deref()
            .ok_or_else(|| damaged("data page before the dictionary page".into()))?;
        let part = |r: std::ops::Range<usize>| {
            buf.get(r)
                .ok_or_else(|| damaged("truncated data page".into()))
        };
        let levels = levels.map(part).transpose()?;
        let values = part(values)?;
        page_rows
            .decode(levels, values, n, lut, on_null, &mut out)
            .map_err(damaged)?;
    }
    if out.len() != rows {
        return Err(damaged(format!(
            "{} rows in the pages, {rows} in the row group",
            out.len()
        )));
    }
    Ok(Some(out.finish()))
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

/// Buffers reused from page to page.
#[derive(Default)]
struct PageRows {
    valid: Vec<u8>,
    keys: Vec<u32>,
}

impl PageRows {
    /// Append the outcomes of the `n` rows of one data page.
    fn decode(
        &mut self,
        levels: Option<&[u8]>,
        values: &[u8],
        n: usize,
        lut: &[bool],
        on_null: bool,
        out: &mut BooleanBufferBuilder,
    ) -> std::result::Result<(), String> {
        let present = match levels {
            Some(levels) => self.levels(levels, n)?,
            None => n,
        };
        if present == 0 {
            out.append_n(n, on_null);
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
        if let Some(&k) = self.keys.iter().max()
            && k as usize >= lut.len()
        {
            return Err(format!("key {k} past the {} dictionary values", lut.len()));
        }
        let bits = if present == n {
            let keys = &self.keys;
            BooleanBuffer::collect_bool(n, |i| lut[keys[i] as usize])
        } else {
            // The keys are those of the present rows, in order. A row's
            // key is found by counting the present rows before it, word
            // by word, so that no row waits on the one before it (a last
            // key stands past the end, for null rows after the last one).
            self.keys.push(0);
            let words: Vec<u64> = self
                .valid
                .chunks(8)
                .map(|c| {
                    let mut word = [0u8; 8];
                    word[..c.len()].copy_from_slice(c);
                    u64::from_le_bytes(word)
                })
                .collect();
            let before: Vec<usize> = words
                .iter()
                .scan(0, |at, w| {
                    let start = *at;
                    *at += w.count_ones() as usize;
                    Some(start)
                })
                .collect();
            let keys = &self.keys;
            BooleanBuffer::collect_bool(n, |i| {
                let (word, bit) = (words[i >> 6], i & 63);
                let key = before[i >> 6] + (word & ((1u64 << bit) - 1)).count_ones() as usize;
                match (word >> bit) & 1 {
                    1 => lut[keys[key] as usize],
                    _ => on_null,
                }
            })
        };
        out.append_buffer(&bits);
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
        let mut out = BooleanBufferBuilder::new(5);
        PageRows::default()
            .decode(
                Some(&levels),
                &values,
                5,
                &[false, true, false],
                true,
                &mut out,
            )
            .unwrap();
        let got: Vec<bool> = out.finish().iter().collect();
        assert_eq!(got, vec![false, true, true, true, false]);
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
                dictionary_rows(&path, rg.as_ref(), 0, &truth, on_null)
                    .unwrap()
                    .map(|b| b.iter().collect())
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
        let mut out = BooleanBufferBuilder::new(1);
        let err = PageRows::default()
            .decode(None, &values, 1, &[true, false], false, &mut out)
            .unwrap_err();
        assert!(err.contains("key 3"), "{err}");
    }
}
