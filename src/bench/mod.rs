//! The benchmark workloads behind `segments bench`: a generated base of a
//! given size, and named workloads timed over several runs after a warm-up
//! (median, min, max, peak memory, throughput), written as a JSON report
//! that `benches/peers_compare.py` reads to run the same work in DuckDB and
//! ClickHouse.

mod incremental;
mod workload;

use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};

pub use workload::{generated_definitions, prepare, typical_previews};

/// The instant every benchmark base is generated and evaluated at, so that
/// runs and the peers see the same windows.
pub fn bench_as_of() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-23T03:00:00Z")
        .expect("valid instant")
        .with_timezone(&Utc)
}

/// What `segments bench` runs.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Folder holding the generated benchmark bases.
    pub dir: PathBuf,
    pub contacts: u32,
    pub events_per_contact: u32,
    /// Generated segments besides the 11 defaults.
    pub segments: usize,
    /// Timed runs per workload (after one warm-up run).
    pub runs: usize,
    /// nightly, incremental, preview (or one of them: preview:parisiens),
    /// floor, nested-count, overlap, sql (or one query: sql:city-of-segment),
    /// import, or all.
    pub workloads: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkloadResult {
    pub name: String,
    pub runs_ms: Vec<f64>,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub peak_rss_mb: f64,
    /// Units per second of the median run (contacts/s, events/s, rows/s...).
    pub throughput: Value,
    pub note: String,
}

impl WorkloadResult {
    pub fn new(
        name: &str,
        mut runs_ms: Vec<f64>,
        throughput: Value,
        note: String,
    ) -> WorkloadResult {
        let median = median(&mut runs_ms);
        WorkloadResult {
            name: name.to_string(),
            min_ms: runs_ms.iter().copied().fold(f64::INFINITY, f64::min),
            max_ms: runs_ms.iter().copied().fold(0.0, f64::max),
            median_ms: median,
            runs_ms,
            peak_rss_mb: peak_rss_mb(),
            throughput,
            note,
        }
    }
}

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Peak resident memory of this process so far (Linux VmHWM), in MiB.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Time `runs` runs of `f` after one warm-up run, in milliseconds.
pub fn time_runs<T>(
    runs: usize,
    mut f: impl FnMut() -> crate::Result<T>,
) -> crate::Result<(Vec<f64>, T)> {
    let mut last = f()?;
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        last = f()?;
        out.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    Ok((out, last))
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub machine: Value,
    pub base: String,
    pub contacts: u64,
    pub events: u64,
    pub segments: usize,
    pub as_of: String,
    pub workloads: Vec<WorkloadResult>,
    pub preview_segments: Vec<Value>,
    /// The `sql` workload's queries, ours and the peers'.
    pub sql_queries: Vec<Value>,
    pub import: Value,
    /// The `overlap` workload's segments and matrix, for the peers to compute again.
    pub overlap: Value,
}

/// Run the benchmark; returns the report (also written to `base/bench-report.json`).
pub fn run(opts: &BenchOptions) -> crate::Result<BenchReport> {
    workload::run(opts)
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.to_string()))
        .unwrap_or_default();
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory": mem,
    })
}

fn base_dir(opts: &BenchOptions) -> PathBuf {
    opts.dir.join(format!(
        "base-{}x{}",
        opts.contacts, opts.events_per_contact
    ))
}

fn write_json(path: &Path, v: &impl Serialize) -> crate::Result<()> {
    let bytes = serde_json::to_vec_pretty(v).expect("serializes");
    std::fs::write(path, bytes).map_err(|e| crate::Error::io(path, e))
}
