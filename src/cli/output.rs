//! Output formats of listing commands: an aligned table on a terminal,
//! JSON (one document) or CSV.

use std::io::Write;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
    Csv,
}

/// Rows as JSON objects with the same keys, printed in the chosen format.
pub fn print_rows(format: Format, columns: &[&str], rows: &[Value]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
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
