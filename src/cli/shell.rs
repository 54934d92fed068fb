//! `segments sql` without a query: an interactive shell on a terminal (line
//! editing, history, multi-line statements, dot commands), or a script of
//! statements read from standard input.

use std::io::{BufRead, IsTerminal};
use std::time::Instant;

use comfy_table::Table;
use rustyline::error::ReadlineError;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Completer, Helper, Highlighter, Hinter};

use crate::base::Base;
use crate::jobs::export::{RowFormat, print_batches};
use crate::sql::{describe_tables, is_blank, query, split_statements};

const HELP: &str = "\
Statements end with `;` and may span lines. Each statement reads the base as
it is when the statement starts (one snapshot). SQL is read-only.
  .tables              the tables and their row counts
  .schema [TABLE]      the columns of one table, or of all
  .format table|csv|json
                       how rows are printed
  .timer on|off        print each statement's time
  .help                this help
  .quit                leave (or Ctrl-D)";

/// Run the shell, or the statements of standard input when it is not a
/// terminal (stopping at the first error).
pub async fn run(base: &Base, format: RowFormat) -> anyhow::Result<()> {
    let mut shell = Shell {
        base,
        format,
        timer: false,
    };
    if std::io::stdin().is_terminal() {
        shell.interactive().await
    } else {
        shell.script().await
    }
}

struct Shell<'a> {
    base: &'a Base,
    format: RowFormat,
    timer: bool,
}

/// What a line typed at the prompt asks for.
enum Outcome {
    Continue,
    Quit,
}

impl Shell<'_> {
    async fn interactive(&mut self) -> anyhow::Result<()> {
        let config = rustyline::Config::builder()
            .auto_add_history(false)
            .max_history_size(10_000)?
            .build();
        let mut editor = rustyline::Editor::with_config(config)?;
        editor.set_helper(Some(SqlInput));
        let history =
            std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".segments_history"));
        if let Some(h) = &history {
            let _ = editor.load_history(h);
        }
        println!(
            "segments SQL shell on {} (read-only). Statements end with `;`; .help for commands.",
            self.base.dir().display()
        );
        loop {
            match editor.readline("segments> ") {
                Ok(input) => {
                    if is_blank(&input) {
                        continue;
                    }
                    let _ = editor.add_history_entry(input.trim());
                    match self.input(&input).await {
                        Ok(Outcome::Quit) => break,
                        Ok(Outcome::Continue) => {}
                        Err(e) => eprintln!("error: {e:#}"),
                    }
                }
                Err(ReadlineError::Interrupted) => continue,
                Err(ReadlineError::Eof) => break,
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(h) = &history {
            let _ = editor.save_history(h);
        }
        Ok(())
    }

    async fn script(&mut self) -> anyhow::Result<()> {
        let mut pending = String::new();
        for line in std::io::stdin().lock().lines() {
            let line = line?;
            if is_blank(&pending) && line.trim_start().starts_with('.') {
                if let Outcome::Quit = self.input(&line).await? {
                    return Ok(());
                }
                continue;
            }
            pending.push_str(&line);
            pending.push('\n');
            let (statements, rest) = split_statements(&pending);
            for s in statements {
                self.statement(&s).await?;
            }
            pending = rest;
        }
        // The last statement may lack its `;`.
        if !is_blank(&pending) {
            self.statement(pending.trim()).await?;
        }
        Ok(())
    }

    /// One input: a dot command, or complete statements.
    async fn input(&mut self, input: &str) -> anyhow::Result<Outcome> {
        let trimmed = input.trim();
        if let Some(command) = trimmed.strip_prefix('.') {
            return self.dot(command).await;
        }
        let (statements, rest) = split_statements(input);
        for s in statements {
            self.statement(&s).await?;
        }
        if !is_blank(&rest) {
            self.statement(rest.trim()).await?;
        }
        Ok(Outcome::Continue)
    }

    async fn statement(&self, sql: &str) -> anyhow::Result<()> {
        let started = Instant::now();
        let snap = self.base.snapshot()?;
        let (_, batches) = query(&snap, sql).await?;
        print_batches(&mut std::io::stdout().lock(), &batches, self.format)?;
        if self.timer {
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            eprintln!("{rows} row(s) in {:.3} s", started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn dot(&mut self, command: &str) -> anyhow::Result<Outcome> {
        let mut words = command.split_whitespace();
        let name = words.next().unwrap_or("");
        let arg = words.next();
        match (name, arg) {
            ("quit" | "exit" | "q", None) => return Ok(Outcome::Quit),
            ("help", None) => println!("{HELP}"),
            ("tables", None) => {
                let snap = self.base.snapshot()?;
                let mut table = Table::new();
                table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
                table.set_header(["table", "rows"]);
                for (name, _) in describe_tables(&snap).await? {
                    let count = query(&snap, &format!("SELECT count(*) FROM \"{name}\""))
                        .await?
                        .1;
                    let rows = count
                        .first()
                        .map(|b| {
                            datafusion::arrow::util::display::array_value_to_string(b.column(0), 0)
                        })
                        .transpose()?
                        .unwrap_or_default();
                    table.add_row([name, rows]);
                }
                println!("{table}");
            }
            ("schema", table) => {
                let snap = self.base.snapshot()?;
                let tables = describe_tables(&snap).await?;
                if let Some(t) = table
                    && !tables.iter().any(|(n, _)| n == t)
                {
                    let names: Vec<&str> = tables.iter().map(|(n, _)| n.as_str()).collect();
                    anyhow::bail!("no table {t:?}; the tables are {}", names.join(", "));
                }
                let mut out = Table::new();
                out.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
                out.set_header(["table", "column", "type", "nullable"]);
                for (name, schema) in tables.iter().filter(|(n, _)| table.is_none_or(|t| t == n)) {
                    for f in schema.fields() {
                        out.add_row([
                            name.clone(),
                            f.name().clone(),
                            f.data_type().to_string(),
                            if f.is_nullable() { "yes" } else { "no" }.to_string(),
                        ]);
                    }
                }
                println!("{out}");
            }
            ("format", Some(f)) => {
                self.format = match f {
                    "table" => RowFormat::Table,
                    "csv" => RowFormat::Csv,
                    "json" => RowFormat::JsonLines,
                    _ => anyhow::bail!("unknown format {f:?}: table, csv or json"),
                };
            }
            ("timer", Some(v @ ("on" | "off"))) => self.timer = v == "on",
            _ => anyhow::bail!("unknown command .{command}; .help lists the commands"),
        }
        Ok(Outcome::Continue)
    }
}

/// Line editing: a statement goes on over several lines until its `;`.
#[derive(Completer, Helper, Highlighter, Hinter)]
struct SqlInput;

impl Validator for SqlInput {
    fn validate(&self, ctx: &mut ValidationContext) -> rustyline::Result<ValidationResult> {
        let input = ctx.input();
        if input.trim_start().starts_with('.') || is_blank(&split_statements(input).1) {
            Ok(ValidationResult::Valid(None))
        } else {
            Ok(ValidationResult::Incomplete)
        }
    }
}
