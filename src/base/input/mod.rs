//! Files users import (CSV with a header, or Parquet), read into columns
//! and converted to the base's types with errors that name the file, the
//! line and the column.

use std::fs::File;
use std::io::{BufRead, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use datafusion::arrow::array::AsArray;
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, ListBuilder,
    StringArray, StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::compute::{CastOptions, cast_with_options, concat};
use datafusion::arrow::datatypes::{Field, Schema};
use rayon::prelude::*;

use crate::base::schema::FieldType;
use crate::error::{Error, Place, Result};

mod cells;
mod records;
use cells::*;
pub use cells::{
    Inference, date_to_days, days_to_date, parse_bool, parse_date, parse_timestamp, typed_text,
};
use datafusion::arrow::array::RecordBatch;
use datafusion::parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use records::*;

/// One imported file, or one chunk of it, column by column.
pub struct InputTable {
    pub file: PathBuf,
    pub rows: usize,
    pub columns: Vec<InputColumn>,
    /// The 1-based line of each row in a CSV file (None for Parquet).
    lines: Option<Vec<u64>>,
    /// Rows of the file before this chunk (for Parquet row numbers).
    first_row: usize,
}

pub struct InputColumn {
    pub name: String,
    pub data: ColumnData,
}

pub enum ColumnData {
    /// CSV cells, trimmed; an empty cell is null.
    Cells(StringArray),
    /// A Parquet column.
    Arrow(ArrayRef),
}

/// An input file cut into chunks of whole records read one at a time, so
/// that a file of any size is imported in bounded memory: a CSV file in byte
/// ranges (the ranges of a chunk parsed in parallel), a Parquet file in runs
/// of row groups.
pub struct InputChunks {
    pub file: PathBuf,
    /// Column names, from the header or the Parquet schema.
    pub names: Vec<String>,
    source: Source,
}

enum Source {
    Csv {
        delimiter: u8,
        chunks: Vec<Vec<CsvRange>>,
    },
    Parquet {
        metadata: ArrowReaderMetadata,
        /// Row groups of each chunk and the rows before it.
        chunks: Vec<(Vec<usize>, usize)>,
    },
}

/// The bytes of a file read at once: CSV text, or uncompressed Parquet row
/// groups (`SEGMENTS_IMPORT_CHUNK_BYTES` sets it, mostly for tests).
pub fn chunk_bytes() -> u64 {
    std::env::var("SEGMENTS_IMPORT_CHUNK_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(rayon::current_num_threads() as u64 * CHUNK_BYTES_PER_THREAD)
}

impl InputChunks {
    /// Open a file to be read in chunks of about `SEGMENTS_IMPORT_CHUNK_BYTES`.
    pub fn open(file: &Path) -> Result<InputChunks> {
        Self::open_with(file, chunk_bytes())
    }

    fn open_with(file: &Path, chunk_bytes: u64) -> Result<InputChunks> {
        let ext = file
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        match ext.as_str() {
            "parquet" | "pq" => Self::open_parquet(file, chunk_bytes),
            "csv" | "txt" | "tsv" => {
                let size = std::fs::metadata(file)
                    .map_err(|e| Error::io(file, e))?
                    .len();
                let per_chunk = rayon::current_num_threads() * 2;
                // Parts small enough that the raw bytes in flight stay
                // bounded, and at least two per thread so that threads
                // finish together.
                let chunks = size.div_ceil(chunk_bytes.max(1)).max(1) as usize;
                let parts = if size >= PARALLEL_CSV_BYTES || chunks > 1 {
                    (chunks * per_chunk).max(size.div_ceil(CSV_PART_BYTES) as usize)
                } else {
                    1
                };
                Self::open_csv(file, parts, parts.div_ceil(chunks))
            }
            _ => Err(Error::input(
                file,
                Place::File("file name"),
                "unknown format: expected a .csv or .parquet file",
            )),
        }
    }

    /// Text columns of a Parquet file read as dictionaries of their text
    /// (for an import that stores them so): a column written with a
    /// dictionary, as most are, then comes without building a string per
    /// row and hashing it back. Nothing changes for a CSV file.
    pub fn text_as_dictionaries(mut self) -> Result<InputChunks> {
        if let Source::Parquet { metadata, .. } = &mut self.source {
            let schema = metadata.schema();
            let fields: Vec<Field> = schema
                .fields()
                .iter()
                .map(|f| match f.data_type() {
                    DataType::Utf8 | DataType::LargeUtf8 => {
                        f.as_ref().clone().with_data_type(DataType::Dictionary(
                            Box::new(DataType::Int32),
                            Box::new(f.data_type().clone()),
                        ))
                    }
                    _ => f.as_ref().clone(),
                })
                .collect();
            let hint = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
            *metadata = ArrowReaderMetadata::try_new(
                metadata.metadata().clone(),
                ArrowReaderOptions::new().with_schema(hint),
            )
            .map_err(|e| Error::parquet(&self.file, e))?;
        }
        Ok(self)
    }

    fn open_parquet(file: &Path, chunk_bytes: u64) -> Result<InputChunks> {
        let f = File::open(file).map_err(|e| Error::io(file, e))?;
        let metadata = ArrowReaderMetadata::load(&f, ArrowReaderOptions::default())
            .map_err(|e| Error::parquet(file, e))?;
        let names = metadata
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let mut chunks: Vec<(Vec<usize>, usize)> = vec![(Vec::new(), 0)];
        let (mut bytes, mut rows) = (0u64, 0usize);
        for (g, group) in metadata.metadata().row_groups().iter().enumerate() {
            let size = group.total_byte_size().max(0) as u64;
            let last = chunks.last_mut().expect("one chunk");
            if !last.0.is_empty() && bytes + size > chunk_bytes {
                chunks.push((vec![g], rows));
                bytes = size;
            } else {
                last.0.push(g);
                bytes += size;
            }
            rows += group.num_rows().max(0) as usize;
        }
        Ok(InputChunks {
            file: file.to_path_buf(),
            names,
            source: Source::Parquet { metadata, chunks },
        })
    }

    /// Cut a CSV file into about `parts` byte ranges at record boundaries,
    /// `per_chunk` ranges to a chunk. A boundary is a line break outside
    /// quotes: with quotes escaped by doubling (RFC 4180), a position is
    /// inside a quoted field exactly when an odd number of quotes precede it.
    fn open_csv(file: &Path, parts: usize, per_chunk: usize) -> Result<InputChunks> {
        let delimiter = if file.extension().is_some_and(|e| e == "tsv") {
            b'\t'
        } else {
            b','
        };
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .flexible(true)
            .from_path(file)
            .map_err(|e| csv_error(file, e))?;
        let headers = reader.headers().map_err(|e| csv_error(file, e))?.clone();
        let names: Vec<String> = headers
            .iter()
            .map(|h| h.trim().trim_start_matches('\u{feff}').to_string())
            .collect();
        let start = reader.position().byte();
        drop(reader);
        let mut ranges = record_ranges(file, start, parts)?.into_iter().peekable();
        let mut chunks = Vec::new();
        while ranges.peek().is_some() {
            chunks.push(ranges.by_ref().take(per_chunk.max(1)).collect());
        }
        Ok(InputChunks {
            file: file.to_path_buf(),
            names,
            source: Source::Csv { delimiter, chunks },
        })
    }

    pub fn len(&self) -> usize {
        match &self.source {
            Source::Csv { chunks, .. } => chunks.len(),
            Source::Parquet { chunks, .. } => chunks.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn column(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|c| c == name)
    }

    /// The type of a column known without reading its values: the Arrow
    /// type of a Parquet column (None for CSV, whose types are inferred).
    pub fn schema_type(&self, idx: usize) -> Option<FieldType> {
        match &self.source {
            Source::Csv { .. } => None,
            Source::Parquet { metadata, .. } => {
                let dt = metadata.schema().field(idx).data_type();
                Some(FieldType::from_arrow(dt).unwrap_or(FieldType::Text))
            }
        }
    }

    /// The types of some columns: a Parquet column's from the schema, a CSV
    /// column's inferred from all its values, read chunk by chunk.
    pub fn infer(&self, columns: &[usize]) -> Result<Vec<FieldType>> {
        if let Some(types) = columns.iter().map(|&c| self.schema_type(c)).collect() {
            return Ok(types);
        }
        let mut inferences = vec![Inference::default(); columns.len()];
        if !columns.is_empty() {
            for chunk in self.iter() {
                let chunk = chunk?;
                inferences
                    .par_iter_mut()
                    .zip(columns)
                    .for_each(|(inference, &idx)| chunk.narrow(idx, inference));
            }
        }
        Ok(inferences.iter().map(Inference::result).collect())
    }

    /// The chunks one after the other.
    pub fn iter(&self) -> impl Iterator<Item = Result<InputTable>> + '_ {
        (0..self.len()).map(|i| self.read(i))
    }

    /// Read chunk `i`.
    pub fn read(&self, i: usize) -> Result<InputTable> {
        match &self.source {
            Source::Csv { delimiter, chunks } => self.read_csv(*delimiter, &chunks[i]),
            Source::Parquet { metadata, chunks } => {
                let (groups, first_row) = &chunks[i];
                self.read_parquet(metadata, groups, *first_row)
            }
        }
    }

    fn read_parquet(
        &self,
        metadata: &ArrowReaderMetadata,
        groups: &[usize],
        first_row: usize,
    ) -> Result<InputTable> {
        let file = &self.file;
        let parts: Vec<Result<Vec<RecordBatch>>> = groups
            .par_iter()
            .map(|&g| {
                let f = File::open(file).map_err(|e| Error::io(file, e))?;
                ParquetRecordBatchReaderBuilder::new_with_metadata(f, metadata.clone())
                    .with_batch_size(64 * 1024)
                    .with_row_groups(vec![g])
                    .build()
                    .map_err(|e| Error::parquet(file, e))?
                    .map(|b| b.map_err(|e| Error::parquet(file, e.into())))
                    .collect()
            })
            .collect();
        let mut batches = Vec::new();
        for part in parts {
            batches.extend(part?);
        }
        let schema = metadata.schema().clone();
        let batch = datafusion::arrow::compute::concat_batches(&schema, &batches)?;
        let columns = self
            .names
            .iter()
            .zip(batch.columns())
            .map(|(name, a)| InputColumn {
                name: name.clone(),
                data: ColumnData::Arrow(a.clone()),
            })
            .collect();
        Ok(InputTable {
            file: file.clone(),
            rows: batch.num_rows(),
            columns,
            lines: None,
            first_row,
        })
    }

    fn read_csv(&self, delimiter: u8, ranges: &[CsvRange]) -> Result<InputTable> {
        let file = &self.file;
        let width = self.names.len();
        let parsed: Vec<Result<CsvPart>> = ranges
            .par_iter()
            .map(|range| read_csv_range(file, delimiter, width, range))
            .collect();
        let parsed = parsed.into_iter().collect::<Result<Vec<_>>>()?;
        let lines: Vec<u64> = parsed
            .iter()
            .flat_map(|p| p.lines.iter().copied())
            .collect();
        let columns = self
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let cells: Vec<&dyn Array> =
                    parsed.iter().map(|p| &p.columns[i] as &dyn Array).collect();
                let data = match cells.as_slice() {
                    [one] => one.as_string::<i32>().clone(),
                    _ => concat(&cells)?.as_string::<i32>().clone(),
                };
                Ok(InputColumn {
                    name: name.clone(),
                    data: ColumnData::Cells(data),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(InputTable {
            file: file.clone(),
            rows: lines.len(),
            columns,
            lines: Some(lines),
            first_row: 0,
        })
    }
}

impl InputTable {
    /// A whole file at once (for small files such as lists of ids).
    pub fn read(file: &Path) -> Result<InputTable> {
        let chunks = InputChunks::open_with(file, u64::MAX)?;
        chunks.read(0)
    }

    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// Where a row is, for messages: `line 12` in a CSV file, `row 11` in Parquet.
    pub fn locate(&self, row: usize, column: &str) -> Place {
        match &self.lines {
            Some(lines) => Place::Line {
                line: lines[row],
                column: Some(column.to_string()),
            },
            None => Place::Row {
                row: (self.first_row + row + 1) as u64,
                column: column.to_string(),
            },
        }
    }

    pub fn error(&self, row: usize, column: &str, message: impl Into<String>) -> Error {
        Error::input(&self.file, self.locate(row, column), message)
    }

    /// Narrow the type of a CSV column whose type is not fixed by the base
    /// by the values of this table (a Parquet column has its schema's type:
    /// [`InputChunks::schema_type`]).
    pub fn narrow(&self, idx: usize, inference: &mut Inference) {
        if let ColumnData::Cells(cells) = &self.columns[idx].data {
            inference.cells(cells.iter().flatten());
        }
    }

    /// Convert a column to the Arrow type of `ty`.
    pub fn typed(&self, idx: usize, ty: &FieldType, tags_sep: &str) -> Result<ArrayRef> {
        let col = &self.columns[idx];
        match &col.data {
            ColumnData::Cells(cells) => build_from_cells(cells, ty, tags_sep)
                .map_err(|(row, msg)| self.error(row, &col.name, msg)),
            ColumnData::Arrow(a) => self.cast(a, &col.name, ty),
        }
    }

    /// A text column read as a dictionary, as a dictionary with `Int32`
    /// keys of `Utf8` values (None for any other column).
    pub fn text_dictionary(&self, idx: usize) -> Result<Option<ArrayRef>> {
        let ColumnData::Arrow(a) = &self.columns[idx].data else {
            return Ok(None);
        };
        let DataType::Dictionary(_, v) = a.data_type() else {
            return Ok(None);
        };
        if !matches!(**v, DataType::Utf8 | DataType::LargeUtf8) {
            return Ok(None);
        }
        let target = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        Ok(Some(cast_with_options(
            a,
            &target,
            &CastOptions::default(),
        )?))
    }

    fn cast(&self, a: &ArrayRef, name: &str, ty: &FieldType) -> Result<ArrayRef> {
        let target = ty.arrow_type();
        let a = if let DataType::Dictionary(_, v) = a.data_type() {
            cast_with_options(a, v, &CastOptions::default())?
        } else {
            a.clone()
        };
        let out = cast_with_options(&a, &target, &CastOptions::default()).map_err(|e| {
            Error::input(
                &self.file,
                Place::Column(name.to_string()),
                format!("cannot be read as {}: {e}", ty.name()),
            )
        })?;
        // A safe cast turns unconvertible values into nulls: find the first one.
        if out.null_count() != a.null_count() {
            for row in 0..a.len() {
                if a.is_valid(row) && out.is_null(row) {
                    return Err(self.error(
                        row,
                        name,
                        format!("value is not a valid {}", ty.name()),
                    ));
                }
            }
        }
        if let FieldType::Choice { values } = ty {
            check_choices(&out, values).map_err(|(row, m)| self.error(row, name, m))?;
        }
        Ok(out)
    }
}

use datafusion::arrow::datatypes::DataType;

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(t: &InputTable) -> Vec<Vec<Option<String>>> {
        t.columns
            .iter()
            .map(|c| match &c.data {
                ColumnData::Cells(a) => a.iter().map(|v| v.map(str::to_string)).collect(),
                ColumnData::Arrow(_) => unreachable!("CSV cells"),
            })
            .collect()
    }

    /// However a file is cut, quoted line breaks, doubled quotes, CRLF and
    /// empty lines give the same cells and the same line numbers.
    #[test]
    fn csv_files_read_in_parts_give_the_same_cells_and_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.csv");
        let mut text = String::from("\u{feff}contact_id,note,city\r\n");
        for i in 0..200 {
            match i % 5 {
                0 => text += &format!("{i},\"two\nlines, \"\"quoted\"\"\",Paris\r\n"),
                1 => text += &format!("{i},,\"Saint-\"\"Malo\"\"\"\n"),
                2 => text += &format!("{i},\"\n\n\",\n\n"),
                3 => text += &format!("{i},plain,\"a,b\"\n"),
                _ => text += &format!("{i}, spaced ,Lyon\n"),
            }
        }
        std::fs::write(&path, &text).unwrap();
        let whole = InputChunks::open_csv(&path, 1, 1).unwrap().read(0).unwrap();
        assert_eq!(whole.rows, 200);
        assert_eq!(whole.columns[0].name, "contact_id");
        assert_eq!(whole.lines.as_ref().unwrap()[..5], [2, 4, 5, 9, 10]);
        for parts in 2..=16 {
            let t = InputChunks::open_csv(&path, parts, parts)
                .unwrap()
                .read(0)
                .unwrap();
            assert_eq!(cells(&t), cells(&whole), "{parts} parts");
            assert_eq!(t.lines, whole.lines, "{parts} parts");
            // The same parts read as chunks of one to three parts.
            for per_chunk in 1..=3 {
                let chunks = InputChunks::open_csv(&path, parts, per_chunk).unwrap();
                assert_eq!(chunks.len(), parts.div_ceil(per_chunk).min(chunks.len()));
                let (mut all, mut lines) = (vec![vec![]; 3], vec![]);
                for chunk in chunks.iter() {
                    let chunk = chunk.unwrap();
                    for (a, c) in all.iter_mut().zip(cells(&chunk)) {
                        a.extend(c);
                    }
                    lines.extend(chunk.lines.unwrap());
                }
                assert_eq!(all, cells(&whole), "{parts} parts by {per_chunk}");
                assert_eq!(Some(lines), whole.lines, "{parts} parts by {per_chunk}");
            }
        }
    }

    #[test]
    fn dates_read_as_the_format_reads_them() {
        for v in [
            "2024-02-05",
            "2024-02-30",
            "0000-01-01",
            "2024-2-5",
            "2024-02-5",
            "+2024-02-05",
            "2024/02/05",
            "2024-02-05x",
            "２０２４-02-05",
            "2024-00-10",
            "9999-12-31",
        ] {
            assert_eq!(
                parse_date(v),
                NaiveDate::parse_from_str(v, "%Y-%m-%d").ok(),
                "{v}"
            );
        }
    }

    #[test]
    fn timestamps_read_with_and_without_offsets() {
        let utc = |s: &str| parse_timestamp(s).map(|t| t.to_rfc3339());
        let noon = Some("2026-11-04T12:00:50.500+00:00".to_string());
        for v in [
            "2026-11-04T12:00:50.5Z",
            "2026-11-04 12:00:50.5",
            "2026-11-04 12:00:50.5+00",
            "2026-11-04 14:00:50.5+02",
            "2026-11-04T17:30:50.5+0530",
            "2026-11-04 10:00:50.5-02:00",
        ] {
            assert_eq!(utc(v), noon, "{v}");
        }
        for v in ["2026-11-04 12:00:50+2", "2026-11-04 12:00:50+", "noon"] {
            assert_eq!(utc(v), None, "{v}");
        }
    }

    /// A record with the wrong number of fields is named by its line in the
    /// file, whichever part it falls in.
    #[test]
    fn csv_errors_name_the_line_in_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.csv");
        let mut text = String::from("contact_id,city\n");
        for i in 0..100 {
            text += &format!("{i},\"x\ny\"\n");
        }
        text += "100,Paris,extra\n";
        std::fs::write(&path, &text).unwrap();
        for (parts, per_chunk) in [(1, 1), (2, 2), (3, 3), (7, 7), (7, 2), (16, 1)] {
            let chunks = InputChunks::open_csv(&path, parts, per_chunk).unwrap();
            let e = chunks
                .iter()
                .find_map(|c| c.err())
                .expect("an error")
                .to_string();
            assert!(
                e.contains("line 202: malformed CSV: 3 fields where the header has 2"),
                "{parts} parts by {per_chunk}: {e}"
            );
        }
    }
}
