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
use rayon::prelude::*;

use crate::base::schema::FieldType;
use crate::base::table::read_parquet_one;
use crate::error::{Error, Result};

/// One imported file, column by column.
pub struct InputTable {
    pub file: PathBuf,
    pub rows: usize,
    pub columns: Vec<InputColumn>,
    /// The 1-based line of each row in a CSV file (None for Parquet).
    lines: Option<Vec<u64>>,
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

impl InputTable {
    pub fn read(file: &Path) -> Result<InputTable> {
        let ext = file
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        match ext.as_str() {
            "parquet" | "pq" => Self::read_parquet(file),
            "csv" | "txt" | "tsv" => Self::read_csv(file),
            _ => Err(Error::input(
                file,
                "file name",
                "unknown format: expected a .csv or .parquet file",
            )),
        }
    }

    fn read_parquet(file: &Path) -> Result<InputTable> {
        let batch = read_parquet_one(file, None)?;
        let columns = batch
            .schema()
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(f, a)| InputColumn {
                name: f.name().clone(),
                data: ColumnData::Arrow(a.clone()),
            })
            .collect();
        Ok(InputTable {
            file: file.to_path_buf(),
            rows: batch.num_rows(),
            columns,
            lines: None,
        })
    }

    fn read_csv(file: &Path) -> Result<InputTable> {
        let size = std::fs::metadata(file)
            .map_err(|e| Error::io(file, e))?
            .len();
        // Parts small enough that the raw bytes in flight stay bounded,
        // and at least two per thread so that threads finish together.
        let parts = if size >= PARALLEL_CSV_BYTES {
            (rayon::current_num_threads() * 2).max(size.div_ceil(CSV_PART_BYTES) as usize)
        } else {
            1
        };
        Self::read_csv_in_parts(file, parts)
    }

    /// Read a CSV file cut into about `parts` byte ranges at record
    /// boundaries, parsed in parallel. A boundary is a line break outside
    /// quotes: with quotes escaped by doubling (RFC 4180), a position is
    /// inside a quoted field exactly when an odd number of quotes precede it.
    fn read_csv_in_parts(file: &Path, parts: usize) -> Result<InputTable> {
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
        let ranges = record_ranges(file, start, parts)?;
        let parsed: Vec<Result<CsvPart>> = ranges
            .into_par_iter()
            .map(|range| read_csv_range(file, delimiter, names.len(), range))
            .collect();
        let parsed = parsed.into_iter().collect::<Result<Vec<_>>>()?;
        let lines: Vec<u64> = parsed
            .iter()
            .flat_map(|p| p.lines.iter().copied())
            .collect();
        let columns = names
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let cells: Vec<&dyn Array> =
                    parsed.iter().map(|p| &p.columns[i] as &dyn Array).collect();
                let data = match cells.as_slice() {
                    [one] => one.as_string::<i32>().clone(),
                    _ => concat(&cells)?.as_string::<i32>().clone(),
                };
                Ok(InputColumn {
                    name,
                    data: ColumnData::Cells(data),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(InputTable {
            file: file.to_path_buf(),
            rows: lines.len(),
            columns,
            lines: Some(lines),
        })
    }

    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// Where a row is, for messages: `line 12` in a CSV file, `row 11` in Parquet.
    pub fn locate(&self, row: usize, column: &str) -> String {
        match &self.lines {
            Some(lines) => format!("line {}, column {column:?}", lines[row]),
            None => format!("row {}, column {column:?}", row + 1),
        }
    }

    pub fn error(&self, row: usize, column: &str, message: impl Into<String>) -> Error {
        Error::input(&self.file, self.locate(row, column), message)
    }

    /// Infer the type of a column whose type is not fixed by the base.
    pub fn infer(&self, idx: usize) -> FieldType {
        match &self.columns[idx].data {
            ColumnData::Arrow(a) => FieldType::from_arrow(a.data_type()).unwrap_or(FieldType::Text),
            ColumnData::Cells(cells) => infer_cells(cells.iter().flatten()),
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
                format!("column {name:?}"),
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

fn csv_error(file: &Path, e: csv::Error) -> Error {
    let location = e
        .position()
        .map(|p| format!("line {}", p.line()))
        .unwrap_or_else(|| "reading".into());
    Error::input(file, location, format!("malformed CSV: {e}"))
}

/// What went wrong in a CSV record, without the csv crate's position (which
/// counts from the start of a range, not of the file).
fn csv_message(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Utf8 { err, .. } => format!("invalid UTF-8 ({err})"),
        csv::ErrorKind::Io(err) => err.to_string(),
        _ => e.to_string(),
    }
}

/// CSV files from this size on are parsed in parallel.
const PARALLEL_CSV_BYTES: u64 = 8 << 20;
/// The largest part of a CSV file read into memory at once (per thread).
const CSV_PART_BYTES: u64 = 64 << 20;

/// A byte range of a CSV file holding whole records, and the line it starts on.
struct CsvRange {
    start: u64,
    end: u64,
    line: u64,
}

/// The cells of one range, column by column, and the line of each record.
struct CsvPart {
    columns: Vec<StringArray>,
    lines: Vec<u64>,
}

/// Cut `[start, file end)` into about `parts` ranges of whole records.
fn record_ranges(file: &Path, start: u64, parts: usize) -> Result<Vec<CsvRange>> {
    let end = std::fs::metadata(file)
        .map_err(|e| Error::io(file, e))?
        .len();
    let mut header = Vec::new();
    File::open(file)
        .and_then(|f| f.take(start).read_to_end(&mut header))
        .map_err(|e| Error::io(file, e))?;
    let line = 1 + memchr::memchr_iter(b'\n', &header).count() as u64;
    let step = (end.saturating_sub(start) / parts.max(1) as u64).max(1);
    let mut targets = (1..parts as u64).map(|k| start + k * step).peekable();
    let mut ranges = Vec::with_capacity(parts);
    let mut current = CsvRange { start, end, line };
    if targets.peek().is_some() {
        let mut f = std::io::BufReader::with_capacity(
            1 << 20,
            File::open(file).map_err(|e| Error::io(file, e))?,
        );
        f.seek(SeekFrom::Start(start))
            .map_err(|e| Error::io(file, e))?;
        let (mut pos, mut quoted, mut newlines) = (start, false, 0u64);
        loop {
            let block = f.fill_buf().map_err(|e| Error::io(file, e))?;
            if block.is_empty() {
                break;
            }
            for i in memchr::memchr2_iter(b'"', b'\n', block) {
                if block[i] == b'"' {
                    quoted = !quoted;
                    continue;
                }
                newlines += 1;
                let at = pos + i as u64 + 1;
                if !quoted && targets.peek().is_some_and(|&t| at >= t) {
                    while targets.next_if(|&t| at >= t).is_some() {}
                    current.end = at;
                    let next = CsvRange {
                        start: at,
                        end,
                        line: line + newlines,
                    };
                    ranges.push(std::mem::replace(&mut current, next));
                }
            }
            let n = block.len();
            pos += n as u64;
            f.consume(n);
            if targets.peek().is_none() {
                break;
            }
        }
    }
    ranges.push(current);
    Ok(ranges)
}

/// The line a record starts on. The csv crate's own line count lags behind
/// after a CRLF or an empty line, so lines are counted here from the bytes.
struct LineCounter<'a> {
    bytes: &'a [u8],
    /// Where the last record started, and its line.
    at: usize,
    line: u64,
}

impl LineCounter<'_> {
    /// The line of the record the reader says starts at `byte`: line breaks
    /// left over from the previous record and empty lines are skipped first.
    fn line_at(&mut self, byte: usize) -> u64 {
        let byte = byte.min(self.bytes.len()).max(self.at);
        self.line += memchr::memchr_iter(b'\n', &self.bytes[self.at..byte]).count() as u64;
        let mut start = byte;
        while let Some(&b) = self.bytes.get(start).filter(|b| matches!(b, b'\r' | b'\n')) {
            self.line += (b == b'\n') as u64;
            start += 1;
        }
        self.at = start;
        self.line
    }
}

/// Parse the records of one range into string columns.
fn read_csv_range(file: &Path, delimiter: u8, width: usize, range: CsvRange) -> Result<CsvPart> {
    let mut bytes = vec![0; (range.end - range.start) as usize];
    File::open(file)
        .and_then(|mut f| {
            f.seek(SeekFrom::Start(range.start))?;
            f.read_exact(&mut bytes)
        })
        .map_err(|e| Error::io(file, e))?;
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes.as_slice());
    let mut counter = LineCounter {
        bytes: &bytes,
        at: 0,
        line: range.line,
    };
    let mut line_of =
        |p: Option<&csv::Position>| counter.line_at(p.map(|p| p.byte() as usize).unwrap_or(0));
    // Cells go straight into Arrow string builders: no allocation per cell.
    let mut builders: Vec<StringBuilder> = (0..width).map(|_| StringBuilder::new()).collect();
    let mut lines = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                let line = line_of(e.position());
                return Err(Error::input(
                    file,
                    format!("line {line}"),
                    format!("malformed CSV: {}", csv_message(&e)),
                ));
            }
        }
        let line = line_of(record.position());
        if record.len() != width {
            return Err(Error::input(
                file,
                format!("line {line}"),
                format!(
                    "malformed CSV: {} fields where the header has {width}",
                    record.len()
                ),
            ));
        }
        lines.push(line);
        for (b, cell) in builders.iter_mut().zip(record.iter()) {
            let cell = cell.trim();
            if cell.is_empty() {
                b.append_null();
            } else {
                b.append_value(cell);
            }
        }
    }
    Ok(CsvPart {
        columns: builders.iter_mut().map(|b| b.finish()).collect(),
        lines,
    })
}

fn infer_cells<'a>(values: impl Iterator<Item = &'a str> + Clone) -> FieldType {
    let all = |f: &dyn Fn(&str) -> bool| values.clone().all(f);
    if values.clone().next().is_none() {
        return FieldType::Text;
    }
    if all(&|v| v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false")) {
        FieldType::Bool
    } else if all(&|v| v.parse::<i64>().is_ok()) {
        FieldType::Number { integer: true }
    } else if all(&|v| v.parse::<f64>().is_ok_and(f64::is_finite)) {
        FieldType::Number { integer: false }
    } else if all(&|v| parse_date(v).is_some()) {
        FieldType::Date
    } else if all(&|v| parse_timestamp(v).is_some()) {
        FieldType::Timestamp
    } else {
        FieldType::Text
    }
}

pub fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "1" => Some(true),
        "false" | "f" | "no" | "n" | "0" => Some(false),
        _ => None,
    }
}

pub fn parse_date(v: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(v, "%Y-%m-%d").ok()
}

/// RFC 3339, or a naive `YYYY-MM-DD[ T]HH:MM[:SS[.f]]` read as UTC.
pub fn parse_timestamp(v: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(v, fmt) {
            return Some(t.and_utc());
        }
    }
    None
}

/// Days since 1970-01-01 of a date, as Arrow's Date32 stores it.
pub fn date_to_days(d: NaiveDate) -> i32 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32
}

type CellError = (usize, String);

fn build_from_cells(
    cells: &StringArray,
    ty: &FieldType,
    tags_sep: &str,
) -> std::result::Result<ArrayRef, CellError> {
    fn each<T>(
        cells: &StringArray,
        mut parse: impl FnMut(&str) -> Option<T>,
        what: &str,
        mut push: impl FnMut(Option<T>),
    ) -> std::result::Result<(), CellError> {
        for (row, cell) in cells.iter().enumerate() {
            match cell {
                None => push(None),
                Some(s) => match parse(s) {
                    Some(v) => push(Some(v)),
                    None => return Err((row, format!("{s:?} is not {what}"))),
                },
            }
        }
        Ok(())
    }
    Ok(match ty {
        // Text is the cells themselves.
        FieldType::Text => Arc::new(cells.clone()),
        FieldType::Choice { values } => {
            let a: ArrayRef = Arc::new(cells.clone());
            check_choices(&a, values)?;
            a
        }
        FieldType::Number { integer: true } => {
            let mut b = Int64Builder::new();
            each(
                cells,
                |s| s.parse::<i64>().ok(),
                "a whole number",
                |v| b.append_option(v),
            )?;
            Arc::new(b.finish())
        }
        FieldType::Number { integer: false } => {
            let mut b = Float64Builder::new();
            each(
                cells,
                |s| s.parse::<f64>().ok().filter(|f| f.is_finite()),
                "a number",
                |v| b.append_option(v),
            )?;
            Arc::new(b.finish())
        }
        FieldType::Bool => {
            let mut b = BooleanBuilder::new();
            each(cells, parse_bool, "a boolean (true/false)", |v| {
                b.append_option(v)
            })?;
            Arc::new(b.finish())
        }
        FieldType::Date => {
            let mut b = Date32Builder::new();
            each(
                cells,
                |s| parse_date(s).map(date_to_days),
                "a date (YYYY-MM-DD)",
                |v| b.append_option(v),
            )?;
            Arc::new(b.finish())
        }
        FieldType::Timestamp => {
            let mut b = TimestampMicrosecondBuilder::new().with_timezone("UTC");
            each(
                cells,
                |s| parse_timestamp(s).map(|t| t.timestamp_micros()),
                "a timestamp (RFC 3339 or YYYY-MM-DD HH:MM:SS)",
                |v| b.append_option(v),
            )?;
            Arc::new(b.finish())
        }
        FieldType::Tags => {
            let mut b = ListBuilder::new(StringBuilder::new());
            for cell in cells.iter() {
                match cell {
                    None => b.append_null(),
                    Some(s) => {
                        for t in s.split(tags_sep).map(str::trim).filter(|t| !t.is_empty()) {
                            b.values().append_value(t);
                        }
                        b.append(true);
                    }
                }
            }
            Arc::new(b.finish())
        }
    })
}

fn check_choices(a: &ArrayRef, values: &[String]) -> std::result::Result<(), CellError> {
    let s = a
        .as_any()
        .downcast_ref::<datafusion::arrow::array::StringArray>()
        .expect("choice is Utf8");
    for (row, v) in s.iter().enumerate() {
        if let Some(v) = v
            && !values.iter().any(|x| x == v)
        {
            return Err((
                row,
                format!(
                    "{v:?} is not one of the allowed values ({})",
                    values.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

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
        let whole = InputTable::read_csv_in_parts(&path, 1).unwrap();
        assert_eq!(whole.rows, 200);
        assert_eq!(whole.columns[0].name, "contact_id");
        assert_eq!(whole.lines.as_ref().unwrap()[..5], [2, 4, 5, 9, 10]);
        for parts in 2..=16 {
            let t = InputTable::read_csv_in_parts(&path, parts).unwrap();
            assert_eq!(cells(&t), cells(&whole), "{parts} parts");
            assert_eq!(t.lines, whole.lines, "{parts} parts");
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
        for parts in [1, 2, 3, 7] {
            let e = InputTable::read_csv_in_parts(&path, parts)
                .err()
                .expect("an error")
                .to_string();
            assert!(
                e.contains("line 202: malformed CSV: 3 fields where the header has 2"),
                "{parts} parts: {e}"
            );
        }
    }
}
