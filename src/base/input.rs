//! Files users import (CSV with a header, or Parquet), read into columns
//! and converted to the base's types with errors that name the file, the
//! line and the column.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, ListBuilder,
    StringArray, StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::compute::{CastOptions, cast_with_options};

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
        let delimiter = if file.extension().is_some_and(|e| e == "tsv") {
            b'\t'
        } else {
            b','
        };
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .flexible(false)
            .from_path(file)
            .map_err(|e| csv_error(file, e))?;
        let headers = reader.headers().map_err(|e| csv_error(file, e))?.clone();
        let names: Vec<String> = headers
            .iter()
            .map(|h| h.trim().trim_start_matches('\u{feff}').to_string())
            .collect();
        // Cells go straight into Arrow string builders: no allocation per cell.
        let mut builders: Vec<StringBuilder> = names.iter().map(|_| StringBuilder::new()).collect();
        let mut lines = Vec::new();
        let mut record = csv::StringRecord::new();
        while reader
            .read_record(&mut record)
            .map_err(|e| csv_error(file, e))?
        {
            lines.push(record.position().map(|p| p.line()).unwrap_or(0));
            for (b, cell) in builders.iter_mut().zip(record.iter()) {
                let cell = cell.trim();
                if cell.is_empty() {
                    b.append_null();
                } else {
                    b.append_value(cell);
                }
            }
        }
        let columns = names
            .into_iter()
            .zip(builders.iter_mut())
            .map(|(name, b)| InputColumn {
                name,
                data: ColumnData::Cells(b.finish()),
            })
            .collect();
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
