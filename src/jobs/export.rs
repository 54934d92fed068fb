//! Writing contact rows: CSV (header, `contact_id` first) or Parquet files,
//! and tables, CSV or JSON lines for a terminal or a pipe.

use std::io::Write;
use std::path::Path;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::csv::WriterBuilder;
use datafusion::arrow::json::LineDelimitedWriter;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::parquet::arrow::ArrowWriter;

use crate::base::store::write_atomic;
use crate::error::{Error, Result};

/// Write rows to `path`; the format follows the extension (.csv or .parquet).
/// The file appears whole or not at all.
pub fn write_batch(path: &Path, batch: &RecordBatch) -> Result<()> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let mut bytes: Vec<u8> = Vec::new();
    match ext.as_str() {
        "csv" => {
            let mut w = WriterBuilder::new().with_header(true).build(&mut bytes);
            w.write(&flatten_lists(batch)?)?;
        }
        "parquet" => {
            let mut w = ArrowWriter::try_new(&mut bytes, batch.schema(), None)
                .map_err(|e| Error::parquet(path, e))?;
            w.write(batch).map_err(|e| Error::parquet(path, e))?;
            w.close().map_err(|e| Error::parquet(path, e))?;
        }
        _ => {
            return Err(Error::usage(format!(
                "{}: expected a .csv or .parquet file",
                path.display()
            )));
        }
    }
    write_atomic(&absolute(path)?, &bytes)
}

/// CSV has no lists: tags become one cell joined with `;`.
fn flatten_lists(batch: &RecordBatch) -> Result<RecordBatch> {
    use datafusion::arrow::array::{Array, ListArray, StringArray, StringBuilder};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    let mut fields = Vec::new();
    let mut cols: Vec<Arc<dyn Array>> = Vec::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        if let Some(list) = c.as_any().downcast_ref::<ListArray>() {
            let mut b = StringBuilder::new();
            for i in 0..list.len() {
                if list.is_null(i) {
                    b.append_null();
                } else {
                    let v = list.value(i);
                    let s = v
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .map(|s| s.iter().flatten().collect::<Vec<_>>().join(";"));
                    b.append_option(s);
                }
            }
            fields.push(Field::new(f.name(), DataType::Utf8, true));
            cols.push(Arc::new(b.finish()));
        } else {
            fields.push(f.as_ref().clone());
            cols.push(c.clone());
        }
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

/// How rows are printed or saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowFormat {
    Table,
    Csv,
    /// One JSON document: an array of objects.
    JsonArray,
    /// One JSON object per line.
    JsonLines,
    /// A Parquet file (saved only, never printed).
    Parquet,
}

impl RowFormat {
    /// The format a file name asks for: `.csv`, `.json` / `.jsonl` /
    /// `.ndjson` (JSON lines) or `.parquet`.
    pub fn of_path(path: &Path) -> Result<RowFormat> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        Ok(match ext.as_str() {
            "csv" => RowFormat::Csv,
            "json" | "jsonl" | "ndjson" => RowFormat::JsonLines,
            "parquet" => RowFormat::Parquet,
            _ => {
                return Err(Error::usage(format!(
                    "{}: say --format csv|json|parquet, or name the file .csv, .json or .parquet",
                    path.display()
                )));
            }
        })
    }
}

/// Write rows as an aligned table, CSV, a JSON array or JSON lines (a
/// terminal gets no Parquet).
pub fn print_batches(
    out: &mut impl Write,
    batches: &[RecordBatch],
    format: RowFormat,
) -> Result<()> {
    if format == RowFormat::Parquet {
        return Err(Error::usage(
            "Parquet is written to a file: add --out FILE.parquet",
        ));
    }
    write_batches(out, batches, format)
}

/// Save rows to a file in one atomic write (rows of `schema`, which also
/// types an empty Parquet file).
pub fn save_batches(
    path: &Path,
    schema: &datafusion::arrow::datatypes::SchemaRef,
    batches: &[RecordBatch],
    format: RowFormat,
) -> Result<()> {
    let mut bytes: Vec<u8> = Vec::new();
    if format == RowFormat::Parquet {
        let mut w = ArrowWriter::try_new(&mut bytes, schema.clone(), None)
            .map_err(|e| Error::parquet(path, e))?;
        for b in batches {
            w.write(b).map_err(|e| Error::parquet(path, e))?;
        }
        w.close().map_err(|e| Error::parquet(path, e))?;
    } else {
        write_batches(&mut bytes, batches, format)?;
    }
    write_atomic(&absolute(path)?, &bytes)
}

fn absolute(path: &Path) -> Result<std::path::PathBuf> {
    Ok(if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io(path, e))?
            .join(path)
    })
}

/// Rows as an aligned table, CSV, a JSON array or JSON lines.
fn write_batches(out: &mut impl Write, batches: &[RecordBatch], format: RowFormat) -> Result<()> {
    match format {
        RowFormat::JsonArray => {
            let mut w = datafusion::arrow::json::ArrayWriter::new(&mut *out);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
            drop(w);
            writeln!(out).map_err(|e| Error::io("output", e))?;
        }
        RowFormat::JsonLines => {
            let mut w = LineDelimitedWriter::new(&mut *out);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
        RowFormat::Csv => {
            let mut w = WriterBuilder::new().with_header(true).build(&mut *out);
            for b in batches {
                w.write(&flatten_lists(b)?)?;
            }
        }
        RowFormat::Table => {
            let t = pretty_format_batches(batches)?;
            writeln!(out, "{t}").map_err(|e| Error::io("output", e))?;
        }
        RowFormat::Parquet => return Err(Error::Internal("Parquet is not a text format".into())),
    }
    Ok(())
}

/// Rows sorted by a column (`-col` for descending, nulls last), then a page.
pub fn sorted_page(
    batch: &RecordBatch,
    key: &str,
    offset: usize,
    limit: usize,
) -> Result<RecordBatch> {
    use datafusion::arrow::compute::{SortOptions, sort_to_indices, take_record_batch};
    let (name, descending) = match key.strip_prefix('-') {
        Some(k) => (k, true),
        None => (key, false),
    };
    let column = batch.column_by_name(name).ok_or_else(|| {
        let names: Vec<String> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        Error::usage(format!(
            "cannot sort by {name:?}: columns are {}",
            names.join(", ")
        ))
    })?;
    let options = SortOptions {
        descending,
        nulls_first: false,
    };
    let indices = sort_to_indices(column, Some(options), None)?;
    let sorted = take_record_batch(batch, &indices)?;
    let start = offset.min(sorted.num_rows());
    let len = limit.min(sorted.num_rows() - start);
    Ok(sorted.slice(start, len))
}
