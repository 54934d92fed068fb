//! Output formats of listing commands: an aligned table on a terminal,
//! JSON (one document) or CSV.

use std::io::{IsTerminal, Write};

use crate::base::Base;
use crate::base::imports::ImportReport;
use crate::jobs::export::RowFormat;
use crate::jobs::recompute::RunReport;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::{Value, json};

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

pub fn print_import(r: &ImportReport, refreshed: Option<RunReport>) {
    println!(
        "import {:?} ({}): {} added, {} updated{}",
        r.name,
        r.id,
        r.rows_added,
        r.rows_updated,
        if r.rows_skipped > 0 {
            format!(", {} skipped (unknown contacts)", r.rows_skipped)
        } else {
            String::new()
        }
    );
    if !r.new_fields.is_empty() {
        println!("new fields: {}", r.new_fields.join(", "));
    }
    match refreshed {
        Some(rep) => println!(
            "recomputed {} segment(s) in {} ms",
            rep.segments.len(),
            rep.duration_ms
        ),
        None => println!("segments marked for refresh (above the auto-refresh threshold)"),
    }
}

/// A progress bar on a terminal (segments done/total, phase, elapsed);
/// nothing when standard error is piped.
pub fn progress_bar(base: &mut Base) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} segments  {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let hook = bar.clone();
    base.progress = Some(crate::base::ProgressHook(std::sync::Arc::new(
        move |phase, done, total| {
            hook.set_length(total);
            hook.set_position(done);
            hook.set_message(phase.to_string());
        },
    )));
    Some(bar)
}

pub fn print_run(report: &RunReport, format: Format) -> anyhow::Result<()> {
    let rows: Vec<serde_json::Value> = report
        .segments
        .iter()
        .map(|s| json!({"segment": s.id, "status": s.status, "size": s.size, "entries": s.entries, "exits": s.exits, "error": s.error}))
        .collect();
    print_rows(
        format,
        &["segment", "status", "size", "entries", "exits", "error"],
        &rows,
    )?;
    if format == Format::Table {
        println!(
            "{} segment(s) in {} ms ({} contact conditions in one scan of contacts, {} behaviour conditions over events, {} queries)",
            report.segments.len(),
            report.duration_ms,
            report.contact_leaves,
            report.event_leaves,
            report.queries
        );
        let p = &report.phases;
        println!(
            "time: contacts {} ms, events {} ms, queries {} ms, trees {} ms, kept for the next run {} ms, opt-ins {} ms, storing {} ms",
            p.contacts_ms,
            p.events_ms,
            p.queries_ms,
            p.trees_ms,
            p.keep_ms,
            p.optins_ms,
            p.store_ms
        );
        if let Some(f) = &report.freshness {
            println!("{}", f.describe());
        }
    }
    Ok(())
}
