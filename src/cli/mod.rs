//! The `segments` command line: argument parsing (clap derive), the wiring
//! of each command to the verbs, the formatting of results. Errors are
//! reported once, here, by [`main`].

mod commands;
pub mod output;
mod process;
mod segment;
mod shell;

use commands::*;
use segment::{row, segment};

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::base::Base;
use crate::base::config::Config;
use crate::base::contacts::ImportOptions;
use crate::base::events::EventImportOptions;
use crate::criteria::Definition;
use crate::jobs::export::RowFormat;
use crate::jobs::import::{ImportFile, import};
use crate::jobs::recompute::{Fresh, RunReport, nightly};
use crate::jobs::segments::{self as seg, Channel};
use crate::jobs::views;
use crate::jobs::{change, init};
use output::{Format, print_import, print_rows, print_run, progress_bar};

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
    /// When another writer holds the base, wait for it this long
    /// (e.g. 30s, 5m; at most 10m) instead of failing at once.
    #[arg(long, global = true, env = "SEGMENTS_WAIT", value_parser = crate::base::parse_wait)]
    wait: Option<std::time::Duration>,
    #[command(subcommand)]
    command: Command,
}

/// `--wait` of this run, for every base it opens.
static LOCK_WAIT: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();

#[derive(Subcommand)]
enum Command {
    /// Create a base with its configuration and the default segments.
    Init(InitArgs),
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
    Recompute(RecomputeArgs),
    /// Contacts of the included segments, minus the excluded, reachable on a channel.
    Audience(AudienceArgs),
    /// Read-only SQL over contacts, events, imports and segments. Without a
    /// query: an interactive shell on a terminal, or the statements read
    /// from standard input.
    Sql(SqlArgs),
    /// Serve the base: the JSON API over HTTP (--http), the read-only SQL of
    /// `sql` over the PostgreSQL protocol (--pg), or both. The user and
    /// password come from SEGMENTS_USER and SEGMENTS_PASSWORD, or from
    /// [serve] in segments.toml.
    Serve(ServeArgs),
    /// Verify the base: manifest, files, checksums, bitmaps, statistics.
    Check,
    /// Merge the events files of each month that imports have cut into
    /// several into one (imports do it past `compact_after_files`),
    /// rewrite by type the files of the older layout, and index a contacts
    /// file written without its indexes.
    Compact(CompactArgs),
    /// Generate a deterministic synthetic base.
    Gen(GenArgs),
    /// Benchmark workloads on a generated base (see BENCHMARKS.md).
    Bench(BenchArgs),
    /// Generate a demo base if needed, recompute it, print the segments.
    Demo(DemoArgs),
}

#[derive(Args)]
struct InitArgs {
    /// IANA time zone of calendar days (e.g. Europe/Paris).
    #[arg(long, default_value = "UTC")]
    time_zone: String,
}

#[derive(Args)]
struct RecomputeArgs {
    #[arg(long, value_parser = parse_as_of)]
    as_of: Option<DateTime<Utc>>,
    /// Parallel jobs (default: the cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Print the plan (order, shared leaves, passes) and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Evaluate every condition for every contact (default: patch the
    /// results of the last run where contacts, events or time moved).
    #[arg(long)]
    full: bool,
    /// Show a stored run report instead (1 = latest, 2 = the one before...).
    #[arg(long, num_args = 0..=1, default_missing_value = "1")]
    report: Option<usize>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Args)]
struct AudienceArgs {
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
}

#[derive(Args)]
struct SqlArgs {
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
    #[arg(long, value_parser = crate::base::parse_size, env = "SEGMENTS_MEMORY_LIMIT")]
    memory_limit: Option<usize>,
}

#[derive(Args)]
struct ServeArgs {
    /// The JSON API (and console) on this port or address
    /// (default 127.0.0.1:8080 when neither --http nor --pg is given).
    #[arg(long, value_name = "PORT|ADDR")]
    http: Option<String>,
    /// Read-only SQL over the PostgreSQL protocol on this port or address
    /// (default 127.0.0.1:5433 when neither --http nor --pg is given).
    #[arg(long, value_name = "PORT|ADDR")]
    pg: Option<String>,
    /// The interface to listen on, for other machines to connect
    /// (e.g. 0.0.0.0): without it, only loopback addresses are served.
    #[arg(long, value_name = "IP")]
    listen: Option<std::net::IpAddr>,
    /// Memory the joins, sorts and aggregates of the queries running at
    /// once may hold together (default: half the machine's memory).
    #[arg(long, value_parser = crate::base::parse_size, env = "SEGMENTS_MEMORY_LIMIT")]
    memory_limit: Option<usize>,
    /// Largest file an import over HTTP accepts (e.g. 2G).
    #[arg(long, value_parser = crate::base::parse_size, default_value = "16G")]
    max_upload: usize,
    /// A request still running after this many seconds is answered 408.
    #[arg(long, default_value_t = 600)]
    request_timeout: u64,
    /// Over the PostgreSQL protocol, a statement still running after this
    /// long is cancelled (e.g. 30s, 5m); each connection may change it
    /// with `SET statement_timeout`. Default: none.
    #[arg(long, value_parser = crate::base::parse_duration)]
    statement_timeout: Option<std::time::Duration>,
    /// A connection of either protocol waiting this long for its client's
    /// next statement or request is closed (e.g. 10m, 1h; 0: never). A
    /// statement still running is not waiting.
    #[arg(long, value_parser = crate::base::parse_duration, default_value = "1h")]
    idle_timeout: std::time::Duration,
    /// Serve HTTPS and TLS over the PostgreSQL protocol with this
    /// certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct CompactArgs {
    /// Merge the months holding more files than this.
    #[arg(long, default_value_t = 1)]
    max_files: usize,
}

#[derive(Args)]
struct DemoArgs {
    /// Where the demo base lives.
    #[arg(long, default_value = "demo-base")]
    dir: PathBuf,
    #[arg(long, default_value_t = 20_000)]
    contacts: u32,
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
    /// nightly, incremental, preview (or one of them: preview:parisiens),
    /// floor (decoding only what the nightly and each preview read),
    /// nested-count, overlap, sql (or one query: sql:city-of-segment),
    /// import, or all.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    workloads: Vec<String>,
}

impl From<BenchArgs> for crate::bench::BenchOptions {
    fn from(a: BenchArgs) -> Self {
        crate::bench::BenchOptions {
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
    /// How segments intersect: pairwise counts (and % of each row's
    /// segment), sizes, union and intersection of all.
    Overlap {
        #[arg(required = true)]
        ids: Vec<String>,
        /// Count only contacts reachable on this channel (as `audience`).
        #[arg(long, value_enum)]
        only_reachable: Option<ChannelArg>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
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
    crate::base::input::parse_timestamp(s)
        .or_else(|| {
            crate::base::input::parse_date(s)
                .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
        })
        .ok_or_else(|| format!("{s:?} is not an RFC 3339 instant (2026-11-23T02:00:00Z)"))
}

/// The `segments` process: settings, arguments, the command, its exit code.
pub fn main() -> ExitCode {
    process::setup();
    match run() {
        Ok(code) => code,
        Err(e) => {
            // A closed pipe (`segments ... | head`) is a normal end.
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::BrokenPipe
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(dispatch(cli))
}

fn open(dir: &Path) -> anyhow::Result<Base> {
    let mut base = Base::open(dir)?;
    base.lock_wait = LOCK_WAIT.get().copied().flatten();
    Ok(base)
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
    let _ = LOCK_WAIT.set(cli.wait);
    match cli.command {
        Command::Init(args) => return init_base(&dir, args).await,
        Command::Import(cmd) => return import_cmd(&dir, cmd).await,
        Command::Contacts(ContactsCmd::Delete { ids, file }) => {
            let base = open(&dir)?;
            let n = crate::jobs::contacts::delete(
                &base,
                &describe("contacts delete"),
                &ids,
                file.as_deref(),
            )
            .await?;
            println!("deleted {n} contact(s) from contacts, events, imports and segments");
        }
        Command::Segment(cmd) => return segment(&dir, cmd).await,
        Command::Recompute(args) => return recompute_cmd(&dir, args).await,
        Command::Audience(args) => return audience_cmd(&dir, args).await,
        Command::Sql(args) => return sql_cmd(&dir, args).await,
        Command::Serve(args) => return serve_cmd(&dir, args).await,
        Command::Check => return check_cmd(&dir),
        Command::Compact(args) => {
            let base = open(&dir)?;
            let merged =
                crate::jobs::compact::compact(&base, &describe("segments compact"), args.max_files)
                    .await?;
            if merged.is_empty() {
                println!(
                    "nothing to compact: no month holds more than {} file(s), every file is stored by type, the contacts file is indexed",
                    args.max_files.max(1)
                );
            }
            if merged.indexed {
                println!("contacts: indexed (ids, dates and times)");
            }
            for m in merged.months {
                match m.files {
                    1 => println!("{}: rewritten by type ({} events)", m.month, m.rows),
                    n => println!("{}: {n} files merged into one ({} events)", m.month, m.rows),
                }
            }
        }
        Command::Gen(args) => return gen_cmd(&dir, args).await,
        Command::Bench(args) => return bench_cmd(args).await,
        Command::Demo(args) => return demo(&args.dir, args.contacts).await,
    }
    Ok(ExitCode::SUCCESS)
}

fn now_or(t: Option<DateTime<Utc>>) -> DateTime<Utc> {
    t.unwrap_or_else(Utc::now)
}
