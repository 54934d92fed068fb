//! Output formats of listing commands: an aligned table on a terminal,
//! JSON (one document) or CSV.

use std::io::Write;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use segments::jobs::export::RowFormat;
use serde_json::Value;

/// The `--format` of every command that prints rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    /// One JSON document (listings) or JSON lines (`sql`).
    Json,
    Csv,
    /// Saved to a file only (`sql --out`).
    Parquet,
}

impl Format {
    /// The library's format for rows; `json` is what JSON means for the
    /// command (an array for listings, lines for `sql`).
    pub fn rows(self, json: RowFormat) -> RowFormat {
        match self {
            Format::Table => RowFormat::Table,
            Format::Json => json,
            Format::Csv => RowFormat::Csv,
            Format::Parquet => RowFormat::Parquet,
        }
    }
}

/// Rows as JSON objects with the same keys, printed in the chosen format.
pub fn print_rows(format: Format, columns: &[&str], rows: &[Value]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Parquet => anyhow::bail!(
            "Parquet is written to a file: `segment export ID --out FILE.parquet` or `sql --out FILE.parquet`"
        ),
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, rows)?;
            writeln!(out)?;
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(columns)?;
            for r in rows {
                w.write_record(columns.iter().map(|c| cell(&r[*c])))?;
            }
            w.flush()?;
        }
        Format::Table => {
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED);
            t.set_header(columns.to_vec());
            for r in rows {
                t.add_row(columns.iter().map(|c| cell(&r[*c])).collect::<Vec<_>>());
            }
            writeln!(out, "{t}")?;
        }
    }
    Ok(())
}

pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
