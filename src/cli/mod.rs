//! Argument parsing (clap derive) and the wiring of each command.

pub mod output;
mod shell;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use output::{Format, print_rows};
use segments::base::Base;
use segments::base::config::Config;
use segments::base::contacts::{ImportOptions, delete_contacts, import_contacts};
use segments::base::events::{EventImportOptions, import_events};
use segments::base::imports::ImportReport;
use segments::criteria::Definition;
use segments::jobs::export::RowFormat;
use segments::jobs::init;
use segments::jobs::recompute::{RunReport, after_import, compute_into, recompute};
use segments::jobs::segments::{self as seg, Channel};
use segments::jobs::views;

#[derive(Parser)]
#[command(
    name = "segments",
    version,
    about = "Contact segmentation engine: Parquet, DataFusion, roaring bitmaps"
)]
struct Cli {
    /// The base directory.
    #[arg(long, global = true, env = "SEGMENTS_BASE", default_value = ".")]
    base: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a base with its configuration and the default segments.
    Init {
        /// IANA time zone of calendar days (e.g. Europe/Paris).
        #[arg(long, default_value = "UTC")]
        time_zone: String,
    },
    /// Import contacts (upsert) or events (append) from CSV or Parquet.
    #[command(subcommand)]
    Import(ImportCmd),
    /// Contacts: delete (right to be forgotten).
    #[command(subcommand)]
    Contacts(ContactsCmd),
    /// Segments: preview, create, list, show, edit, members, export...
    #[command(subcommand)]
    Segment(SegmentCmd),
    /// The nightly job: recompute every active segment, dependencies first.
    Recompute {
        #[arg(long, value_parser = parse_as_of)]
        as_of: Option<DateTime<Utc>>,
        /// Parallel jobs (default: the cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// Print the plan (order, shared leaves, passes) and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Show a stored run report instead (1 = latest, 2 = the one before...).
        #[arg(long, num_args = 0..=1, default_missing_value = "1")]
        report: Option<usize>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Contacts of the included segments, minus the excluded, reachable on a channel.
    Audience {
        #[arg(long, value_delimiter = ',', required = true)]
        include: Vec<String>,
        #[arg(long, value_delimiter = ',')]
        exclude: Vec<String>,
        #[arg(long, value_enum)]
        channel: ChannelArg,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, value_parser = parse_as_of)]
        as_of: Option<DateTime<Utc>>,
    },
    /// Read-only SQL over contacts, events, imports and segments. Without a
    /// query: an interactive shell on a terminal, or the statements read
    /// from standard input.
    Sql {
        query: Option<String>,
        /// table, csv or json (JSON lines); with --out, also parquet.
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// Write the rows to this file (format from --format, else from
        /// the extension: .csv, .json, .jsonl, .parquet).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Memory the query's joins, sorts and aggregates may hold (e.g.
        /// 512MiB, 2GiB; default: half the machine's memory).
        #[arg(long, value_parser = segments::base::parse_size, env = "SEGMENTS_MEMORY_LIMIT")]
        memory_limit: Option<usize>,
    },
    /// Serve the read-only SQL of `sql` over the PostgreSQL wire protocol,
    /// for psql and BI tools. The user and password come from SEGMENTS_USER
    /// and SEGMENTS_PASSWORD, or from [serve] in segments.toml.
    Serve {
        /// Address to listen on; loopback unless told otherwise.
        #[arg(long, default_value = "127.0.0.1:5433")]
        listen: std::net::SocketAddr,
        /// Memory the joins, sorts and aggregates of the queries running at
        /// once may hold together (default: half the machine's memory).
        #[arg(long, value_parser = segments::base::parse_size, env = "SEGMENTS_MEMORY_LIMIT")]
        memory_limit: Option<usize>,
    },
    /// Verify the base: manifest, files, checksums, bitmaps, statistics.
    Check,
    /// Generate a deterministic synthetic base.
    Gen(GenArgs),
    /// Benchmark workloads on a generated base (see BENCHMARKS.md).
    Bench(BenchArgs),
    /// Generate a demo base if needed, recompute it, print the segments.
    Demo {
        /// Where the demo base lives.
        #[arg(long, default_value = "demo-base")]
        dir: PathBuf,
        #[arg(long, default_value_t = 20_000)]
        contacts: u32,
    },
}

#[derive(Args)]
struct BenchArgs {
    /// Folder holding the generated benchmark bases.
    #[arg(long, default_value = "bench-data")]
    dir: PathBuf,
    #[arg(long, default_value_t = 100_000)]
    contacts: u32,
    #[arg(long, default_value_t = 30)]
    events_per_contact: u32,
    /// Generated segments besides the 11 defaults.
    #[arg(long, default_value_t = 100)]
    segments: usize,
    /// Timed runs per workload (after one warm-up run).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// nightly, preview (or one of them: preview:parisiens), nested-count,
    /// sql, import, or all.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    workloads: Vec<String>,
}

impl From<BenchArgs> for segments::bench::BenchOptions {
    fn from(a: BenchArgs) -> Self {
        segments::bench::BenchOptions {
            dir: a.dir,
            contacts: a.contacts,
            events_per_contact: a.events_per_contact,
            segments: a.segments,
            runs: a.runs,
            workloads: a.workloads,
        }
    }
}

#[derive(Args)]
struct GenArgs {
    #[arg(long, default_value_t = 10_000)]
    contacts: u32,
    #[arg(long, default_value_t = 30)]
    events_per_contact: u32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Time of the newest events (default now).
    #[arg(long, value_parser = parse_as_of)]
    as_of: Option<DateTime<Utc>>,
}

#[derive(Subcommand)]
enum ImportCmd {
    Contacts {
        file: PathBuf,
        #[arg(long)]
        name: Option<String>,
        /// Empty values in the file erase existing values.
        #[arg(long)]
        overwrite_empty: bool,
        #[arg(long, value_parser = parse_as_of)]
        as_of: Option<DateTime<Utc>>,
    },
    Events {
        file: PathBuf,
        #[arg(long)]
        name: Option<String>,
        /// Leave out events of unknown contacts (counted in the report).
        #[arg(long)]
        skip_unknown: bool,
        #[arg(long, value_parser = parse_as_of)]
        as_of: Option<DateTime<Utc>>,
    },
}

#[derive(Subcommand)]
enum ContactsCmd {
    /// Delete contacts everywhere: contacts, events, imports, segments, history.
    Delete {
        ids: Vec<u64>,
        /// A CSV or Parquet file with a contact_id column.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SegmentCmd {
    /// Count and sample of a definition; nothing is saved.
    Preview {
        file: PathBuf,
        #[arg(long, value_parser = parse_as_of)]
        as_of: Option<DateTime<Utc>>,
    },
    /// Validate, save and compute a segment; or, with --static, create a
    /// fixed list from a file or a query.
    Create {
        /// The definition (JSON) of a dynamic segment.
        #[arg(required_unless_present = "static_")]
        file: Option<PathBuf>,
        #[arg(long, value_parser = parse_as_of)]
        as_of: Option<DateTime<Utc>>,
        /// Create a static segment (a fixed list of contacts).
        #[arg(long = "static", requires = "name")]
        static_: bool,
        /// Name of the static segment.
        #[arg(long)]
        name: Option<String>,
        /// Id of the static segment (default: a slug of the name).
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Add members to a static segment.
    Add {
        id: String,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Remove members from a static segment.
    Remove {
        id: String,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Replace the members of a static segment.
    Replace {
        id: String,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Replace a segment's definition and recompute it.
    Edit {
        id: String,
        file: PathBuf,
        #[arg(long, value_parser = parse_as_of)]
        as_of: Option<DateTime<Utc>>,
    },
    /// Copy a segment's definition under a new name and compute it.
    Duplicate {
        id: String,
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = parse_as_of)]
        as_of: Option<DateTime<Utc>>,
    },
    /// Delete a segment (the contacts stay in the base).
    Delete { id: String },
    /// Stop recomputing a segment; its members stay frozen.
    Pause { id: String },
    /// Recompute again, starting now.
    Resume {
        id: String,
        #[arg(long, value_parser = parse_as_of)]
        as_of: Option<DateTime<Utc>>,
    },
    /// Update a segment now.
    Refresh {
        id: String,
        #[arg(long, value_parser = parse_as_of)]
        as_of: Option<DateTime<Utc>>,
    },
    /// List segments.
    List {
        #[arg(long, value_enum, default_value = "name")]
        sort: SortKey,
        /// Only segments with this status.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Definition, state, statistics and recent history of a segment.
    Show {
        id: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Size over time, with entries and exits per computation.
    History {
        id: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Members with name, e-mail, entry date and opt-ins.
    Members {
        id: String,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// Only members who entered at or after this date or instant.
        #[arg(long)]
        since: Option<String>,
        /// Sort by a column (contact_id, last_name, first_name, email,
        /// entered_at...); prefix with '-' for descending.
        #[arg(long, allow_hyphen_values = true)]
        sort: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Write the members to CSV or Parquet (first column contact_id).
    Export {
        id: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_delimiter = ',')]
        columns: Vec<String>,
    },
}

#[derive(Args)]
#[group(multiple = false)]
struct SourceArgs {
    /// A CSV or Parquet file with a contact_id column.
    #[arg(long)]
    from: Option<PathBuf>,
    /// A read-only query returning contact_id.
    #[arg(long)]
    from_query: Option<String>,
}

impl SourceArgs {
    fn source(self) -> anyhow::Result<seg::StaticSource> {
        match (self.from, self.from_query) {
            (Some(f), None) => Ok(seg::StaticSource::File(f)),
            (None, Some(q)) => Ok(seg::StaticSource::Query(q)),
            _ => anyhow::bail!("give --from FILE or --from-query \"SELECT contact_id ...\""),
        }
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SortKey {
    Name,
    Size,
    Computed,
    Status,
}

impl From<SortKey> for views::SortKey {
    fn from(k: SortKey) -> Self {
        match k {
            SortKey::Name => views::SortKey::Name,
            SortKey::Size => views::SortKey::Size,
            SortKey::Computed => views::SortKey::Computed,
            SortKey::Status => views::SortKey::Status,
        }
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ChannelArg {
    Email,
    Sms,
}

impl From<ChannelArg> for Channel {
    fn from(c: ChannelArg) -> Self {
        match c {
            ChannelArg::Email => Channel::Email,
            ChannelArg::Sms => Channel::Sms,
        }
    }
}

fn parse_as_of(s: &str) -> Result<DateTime<Utc>, String> {
    segments::base::input::parse_timestamp(s)
        .or_else(|| {
            segments::base::input::parse_date(s)
                .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
        })
        .ok_or_else(|| format!("{s:?} is not an RFC 3339 instant (2026-11-23T02:00:00Z)"))
}

pub fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(dispatch(cli))
}

fn open(dir: &Path) -> anyhow::Result<Base> {
    Ok(Base::open(dir)?)
}

fn describe(cmd: &str) -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        cmd.to_string()
    } else {
        format!("segments {}", args.join(" "))
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let dir = cli.base.clone();
    match cli.command {
        Command::Init { time_zone } => {
            let config = Config {
                time_zone,
                ..Config::default()
            };
            config.tz().map_err(anyhow::Error::msg)?;
            let base = init(&dir, config)?;
            println!(
                "created base {} with {} default segments",
                base.dir().display(),
                segments::jobs::default_segments(&base.config).len()
            );
        }
        Command::Import(cmd) => {
            let base = open(&dir)?;
            let mut w = base.writer(&describe("import"))?;
            let (report, as_of) = match cmd {
                ImportCmd::Contacts {
                    file,
                    name,
                    overwrite_empty,
                    as_of,
                } => (
                    import_contacts(
                        &mut w,
                        &file,
                        &ImportOptions {
                            name,
                            overwrite_empty,
                        },
                    )?,
                    as_of,
                ),
                ImportCmd::Events {
                    file,
                    name,
                    skip_unknown,
                    as_of,
                } => (
                    import_events(&mut w, &file, &EventImportOptions { name, skip_unknown })?,
                    as_of,
                ),
            };
            let refreshed = after_import(&mut w, as_of.unwrap_or_else(Utc::now)).await?;
            w.commit()?;
            print_import(&report, refreshed);
        }
        Command::Contacts(ContactsCmd::Delete { ids, file }) => {
            let base = open(&dir)?;
            let mut all = ids;
            if let Some(f) = file {
                let input = segments::base::input::InputTable::read(&f)?;
                all.extend(segments::base::ids::input_contact_ids(&input)?);
            }
            let mut w = base.writer(&describe("contacts delete"))?;
            let n = delete_contacts(&mut w, &all)?;
            w.commit()?;
            println!("deleted {n} contact(s) from contacts, events, imports and segments");
        }
        Command::Segment(cmd) => return segment(&dir, cmd).await,
        Command::Recompute {
            as_of,
            jobs,
            dry_run,
            report,
            format,
        } => {
            let mut base = open(&dir)?;
            base.jobs = jobs;
            if let Some(index) = report {
                let snap = base.snapshot()?;
                let r = segments::jobs::recompute::read_report(snap.dir(), &snap.manifest, index)?;
                if format == Format::Json {
                    println!("{}", serde_json::to_string_pretty(&r)?);
                } else {
                    println!(
                        "run started {} as of {}, {} ms",
                        r.started_at.to_rfc3339(),
                        r.as_of.to_rfc3339(),
                        r.duration_ms
                    );
                    print_run(&r, format)?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            if dry_run {
                let snap = base.snapshot()?;
                print!(
                    "{}",
                    segments::jobs::recompute::dry_run(
                        &base,
                        &snap.manifest,
                        as_of.unwrap_or_else(Utc::now)
                    )
                    .await?
                );
                return Ok(ExitCode::SUCCESS);
            }
            let bar = progress_bar(&mut base);
            let mut w = base.writer(&describe("recompute"))?;
            let report = recompute(&mut w, as_of.unwrap_or_else(Utc::now)).await?;
            w.commit()?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            print_run(&report, format)?;
            let failures = report.failures();
            if !failures.is_empty() {
                eprintln!("{} segment(s) failed:", failures.len());
                for f in failures {
                    eprintln!("  {}: {}", f.id, f.error.clone().unwrap_or_default());
                }
                return Ok(ExitCode::from(2));
            }
        }
        Command::Audience {
            include,
            exclude,
            channel,
            out,
            as_of,
        } => {
            let base = open(&dir)?;
            let mut w = base.writer(&describe("audience"))?;
            let bm = seg::audience(
                &mut w,
                &include,
                &exclude,
                channel.into(),
                as_of.unwrap_or_else(Utc::now),
            )
            .await?;
            let m = w.commit()?;
            match out {
                Some(path) => {
                    let batch = seg::members_batch(base.dir(), &m, &bm, None, &[])?;
                    segments::jobs::export::write_batch(&path, &batch)?;
                    println!("{} contact(s) written to {}", bm.len(), path.display());
                }
                None => println!("{} contact(s)", bm.len()),
            }
        }
        Command::Sql {
            query,
            format,
            out,
            memory_limit,
        } => {
            let mut base = open(&dir)?;
            base.memory_limit = memory_limit;
            let rf = match (format, &out) {
                (Some(f), _) => f.rows(RowFormat::JsonLines),
                (None, Some(path)) => RowFormat::of_path(path)?,
                (None, None) => RowFormat::Table,
            };
            if rf == RowFormat::Parquet && out.is_none() {
                anyhow::bail!("Parquet is written to a file: add --out FILE.parquet");
            }
            let Some(query) = query else {
                if out.is_some() {
                    anyhow::bail!("--out saves the rows of one query: give the query");
                }
                return shell::run(&base, rf).await.map(|()| ExitCode::SUCCESS);
            };
            let snap = base.snapshot()?;
            let (schema, batches) = segments::sql::query(&snap, &query).await?;
            match &out {
                Some(path) => {
                    segments::jobs::export::save_batches(path, &schema, &batches, rf)?;
                    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                    eprintln!("{rows} row(s) written to {}", path.display());
                }
                None => segments::jobs::export::print_batches(
                    &mut std::io::stdout().lock(),
                    &batches,
                    rf,
                )?,
            }
        }
        Command::Serve {
            listen,
            memory_limit,
        } => {
            let mut base = open(&dir)?;
            base.memory_limit = memory_limit;
            let (user, password) = base.config.serve.credentials();
            let opts = segments::sql::serve::ServeOptions {
                listen,
                user: user.clone(),
                password,
            };
            segments::sql::serve::serve(
                base,
                opts,
                |addr| {
                    eprintln!(
                        "serving {} on {addr} (PostgreSQL protocol, user {user}, read-only); Ctrl-C stops",
                        dir.display()
                    )
                },
                stop_signal(),
            )
            .await?;
            eprintln!("stopped");
        }
        Command::Check => {
            let base = open(&dir)?;
            let snap = base.snapshot()?;
            let problems = segments::base::check::check(&snap)?;
            if problems.is_empty() {
                println!(
                    "ok: version {}, {} contacts, {} event files, {} segments",
                    snap.manifest.version,
                    snap.manifest.contact_count,
                    snap.manifest.events.len(),
                    snap.manifest.segments.len()
                );
            } else {
                for p in &problems {
                    eprintln!("problem: {p}");
                }
                return Ok(ExitCode::from(3));
            }
        }
        Command::Gen(args) => {
            let opts = segments::synth::GenOptions {
                contacts: args.contacts,
                events_per_contact: args.events_per_contact,
                seed: args.seed,
                as_of: args.as_of.unwrap_or_else(Utc::now),
            };
            let t0 = std::time::Instant::now();
            let stats = segments::synth::generate(&dir, &opts)?;
            println!(
                "generated {} contacts and {} events in {:.1}s",
                stats.contacts,
                stats.events,
                t0.elapsed().as_secs_f64()
            );
        }
        Command::Bench(args) => {
            let opts = segments::bench::BenchOptions::from(args);
            // The workloads own their runtime: leave this one first.
            let report = tokio::task::spawn_blocking(move || segments::bench::run(&opts)).await??;
            let rows: Vec<serde_json::Value> = report
                .workloads
                .iter()
                .map(|w| {
                    json!({"workload": w.name, "median_ms": format!("{:.3}", w.median_ms), "min_ms": format!("{:.3}", w.min_ms),
                        "max_ms": format!("{:.3}", w.max_ms), "peak_rss_mb": format!("{:.0}", w.peak_rss_mb),
                        "throughput": w.throughput.to_string(), "note": w.note})
                })
                .collect();
            println!(
                "base {}: {} contacts, {} events",
                report.base, report.contacts, report.events
            );
            print_rows(
                Format::Table,
                &[
                    "workload",
                    "median_ms",
                    "min_ms",
                    "max_ms",
                    "peak_rss_mb",
                    "throughput",
                    "note",
                ],
                &rows,
            )?;
            println!("report: {}/bench-report.json", report.base);
        }
        Command::Demo {
            dir: demo_dir,
            contacts,
        } => return demo(&demo_dir, contacts).await,
    }
    Ok(ExitCode::SUCCESS)
}

fn print_import(r: &ImportReport, refreshed: Option<RunReport>) {
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
fn progress_bar(base: &mut Base) -> Option<indicatif::ProgressBar> {
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
    base.progress = Some(segments::base::ProgressHook(std::sync::Arc::new(
        move |phase, done, total| {
            hook.set_length(total);
            hook.set_position(done);
            hook.set_message(phase.to_string());
        },
    )));
    Some(bar)
}

fn print_run(report: &RunReport, format: Format) -> anyhow::Result<()> {
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
            "time: contacts {} ms, events {} ms, queries {} ms, trees {} ms, opt-ins {} ms, storing {} ms",
            p.contacts_ms, p.events_ms, p.queries_ms, p.trees_ms, p.optins_ms, p.store_ms
        );
    }
    Ok(())
}

fn read_definition(file: &Path) -> anyhow::Result<Definition> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    Definition::parse_str(&text, &file.display().to_string())
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

fn now_or(t: Option<DateTime<Utc>>) -> DateTime<Utc> {
    t.unwrap_or_else(Utc::now)
}

/// The columns of `segment list` (and the head of `segment show`).
const SEGMENT_COLUMNS: &[&str] = &[
    "id",
    "name",
    "kind",
    "status",
    "contacts",
    "email_optins",
    "sms_optins",
    "computed_at",
    "duration_ms",
];

/// A typed result as the JSON object listing commands print.
fn row(value: &impl serde::Serialize) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::to_value(value)?)
}

async fn segment(dir: &Path, cmd: SegmentCmd) -> anyhow::Result<ExitCode> {
    let base = open(dir)?;
    match cmd {
        SegmentCmd::Preview { file, as_of } => {
            let def = read_definition(&file)?;
            let snap = base.snapshot()?;
            let p = seg::preview(&snap, &def, now_or(as_of)).await?;
            println!("{} contact(s) ({} ms)", p.count, p.duration_ms);
            if !p.sample.is_empty() {
                let s: Vec<String> = p.sample.iter().map(u64::to_string).collect();
                println!("sample: {}", s.join(", "));
            }
        }
        SegmentCmd::Create {
            static_: true,
            name,
            id,
            source,
            ..
        } => {
            let name = name.expect("clap requires --name with --static");
            let mut w = base.writer(&describe("segment create --static"))?;
            let (id, n) =
                seg::create_static(&mut w, id.as_deref(), &name, &source.source()?).await?;
            w.commit()?;
            println!("created static segment {id}: {n} contact(s)");
        }
        SegmentCmd::Add { id, source } => {
            return change_static(&base, &id, seg::StaticChange::Add, source).await;
        }
        SegmentCmd::Remove { id, source } => {
            return change_static(&base, &id, seg::StaticChange::Remove, source).await;
        }
        SegmentCmd::Replace { id, source } => {
            return change_static(&base, &id, seg::StaticChange::Replace, source).await;
        }
        SegmentCmd::Create { file, as_of, .. } => {
            let file = file.expect("clap requires FILE without --static");
            let def = read_definition(&file)?;
            let mut w = base.writer(&describe("segment create"))?;
            let report = seg::create(&mut w, &def, now_or(as_of)).await?;
            w.commit()?;
            return finish_compute(&report, &format!("created segment {}", def.id));
        }
        SegmentCmd::Edit { id, file, as_of } => {
            let def = read_definition(&file)?;
            let mut w = base.writer(&describe("segment edit"))?;
            let report = seg::edit(&mut w, &id, &def, now_or(as_of)).await?;
            w.commit()?;
            return finish_compute(&report, &format!("updated segment {id}"));
        }
        SegmentCmd::Duplicate { id, name, as_of } => {
            let mut w = base.writer(&describe("segment duplicate"))?;
            let source = w.next.find_segment(&id)?.id.clone();
            let (def, report) = seg::duplicate(&mut w, &id, &name, now_or(as_of)).await?;
            w.commit()?;
            return finish_compute(
                &report,
                &format!("created segment {} from {source}", def.id),
            );
        }
        SegmentCmd::Delete { id } => {
            let mut w = base.writer(&describe("segment delete"))?;
            let id = seg::delete(&mut w, &id)?;
            w.commit()?;
            println!("deleted segment {id} (its contacts stay in the base)");
        }
        SegmentCmd::Pause { id } => {
            let mut w = base.writer(&describe("segment pause"))?;
            let id = seg::set_paused(&mut w, &id, true)?;
            w.commit()?;
            println!("paused {id}: its members stay as last computed");
        }
        SegmentCmd::Resume { id, as_of } | SegmentCmd::Refresh { id, as_of } => {
            let mut w = base.writer(&describe("segment refresh"))?;
            let id = seg::set_paused(&mut w, &id, false)?;
            let report = compute_into(&mut w, std::slice::from_ref(&id), now_or(as_of)).await?;
            w.commit()?;
            return finish_compute(&report, &format!("computed {id}"));
        }
        SegmentCmd::List {
            sort,
            status,
            format,
        } => {
            let snap = base.snapshot()?;
            let rows = views::list(&snap, sort.into(), status.as_deref())
                .iter()
                .map(row)
                .collect::<anyhow::Result<Vec<_>>>()?;
            print_rows(format, SEGMENT_COLUMNS, &rows)?;
        }
        SegmentCmd::Show { id, format } => {
            let snap = base.snapshot()?;
            let row = row(&views::show(&snap, &id)?)?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&row)?),
                Format::Parquet => anyhow::bail!("a segment is shown as a table, JSON or CSV"),
                Format::Table | Format::Csv => {
                    for k in SEGMENT_COLUMNS.iter().chain(&["error", "description"]) {
                        println!("{k:>13}: {}", output::cell(&row[k]));
                    }
                    println!(
                        "{:>13}: {}",
                        "criteria",
                        serde_json::to_string(&row["criteria"])?
                    );
                }
            }
        }
        SegmentCmd::History { id, format } => {
            let snap = base.snapshot()?;
            let rows = views::history(&snap, &id)?
                .iter()
                .map(row)
                .collect::<anyhow::Result<Vec<_>>>()?;
            print_rows(format, &["at", "as_of", "size", "entries", "exits"], &rows)?;
        }
        SegmentCmd::Members {
            id,
            limit,
            offset,
            since,
            sort,
            format,
        } => {
            let snap = base.snapshot()?;
            let since = since
                .map(|s| parse_as_of(&s).map_err(anyhow::Error::msg))
                .transpose()?;
            let query = views::MembersQuery {
                since,
                sort,
                offset,
                limit,
            };
            let batch = views::members_page(&snap, &id, &query)?;
            let rf = format.rows(RowFormat::JsonArray);
            segments::jobs::export::print_batches(&mut std::io::stdout().lock(), &[batch], rf)?;
        }
        SegmentCmd::Export { id, out, columns } => {
            let snap = base.snapshot()?;
            let (_, members) = seg::members_of(&snap, &id)?;
            let batch = seg::members_batch(
                snap.dir(),
                &snap.manifest,
                &members.members,
                Some(&members),
                &columns,
            )?;
            segments::jobs::export::write_batch(&out, &batch)?;
            println!(
                "{} contact(s) written to {}",
                batch.num_rows(),
                out.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn change_static(
    base: &Base,
    id: &str,
    change: seg::StaticChange,
    source: SourceArgs,
) -> anyhow::Result<ExitCode> {
    let mut w = base.writer(&describe("segment change"))?;
    let n = seg::change_static(&mut w, id, change, &source.source()?).await?;
    w.commit()?;
    println!("{id}: {n} contact(s)");
    Ok(ExitCode::SUCCESS)
}

fn finish_compute(report: &RunReport, done: &str) -> anyhow::Result<ExitCode> {
    for s in &report.segments {
        if let Some(e) = &s.error {
            eprintln!("error: segment {} failed: {e}", s.id);
            return Ok(ExitCode::from(2));
        }
    }
    let size = report
        .segments
        .iter()
        .map(|s| s.size)
        .next_back()
        .unwrap_or(0);
    println!("{done}: {size} contact(s) in {} ms", report.duration_ms);
    Ok(ExitCode::SUCCESS)
}

async fn demo(dir: &Path, contacts: u32) -> anyhow::Result<ExitCode> {
    let as_of = Utc::now();
    if !dir.join("segments.toml").exists() {
        println!(
            "generating a demo base in {} ({contacts} contacts)...",
            dir.display()
        );
        segments::synth::generate(
            dir,
            &segments::synth::GenOptions {
                contacts,
                events_per_contact: 30,
                seed: 42,
                as_of,
            },
        )?;
    }
    let mut base = open(dir)?;
    segments::synth::create_examples(&base, as_of).await?;
    let bar = progress_bar(&mut base);
    let mut w = base.writer("segments demo")?;
    let report = recompute(&mut w, as_of).await?;
    w.commit()?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    println!(
        "nightly recompute: {} segments in {} ms ({} contact conditions, {} behaviour conditions, shared scans)",
        report.segments.len(),
        report.duration_ms,
        report.contact_leaves,
        report.event_leaves
    );
    let snap = base.snapshot()?;
    let rows = snap
        .manifest
        .segments
        .iter()
        .map(|r| {
            row(&views::SegmentSummary::of(
                r,
                &base.config,
                Utc::now(),
                false,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    print_rows(
        Format::Table,
        &[
            "id",
            "name",
            "status",
            "contacts",
            "email_optins",
            "sms_optins",
            "duration_ms",
        ],
        &rows,
    )?;
    Ok(if report.failures().is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}
