//! The base on disk: one directory holding the configuration, versioned
//! manifests, and immutable data files (contacts, events, bitmaps).
//!
//! Readers pin one manifest version ([`Snapshot`]) and see it whole for their
//! run. Writers ([`Writer`]) hold the lock, write new files, then publish a new
//! manifest atomically; superseded files are collected once no reader can
//! still need them (pins of live processes, plus a grace period).

pub mod bitmaps;
pub mod cache;
pub mod changes;
pub mod check;
pub mod config;
pub mod contacts;
pub mod events;
pub mod id_index;
pub mod ids;
pub mod imports;
pub mod input;
pub mod lock;
pub mod manifest;
pub mod members;

pub mod schema;
pub mod status;
pub mod store;
pub mod table;
pub mod times;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;

use crate::error::{Error, Result};
pub use config::Config;
pub use manifest::Manifest;

use lock::WriteLock;
use manifest::{MANIFEST_DIR, list_versions, manifest_path, read_manifest_again};
use store::{SinkFile, write_atomic};

const READERS_DIR: &str = "readers";
/// Superseded versions stay readable this long even without a pin, which
/// covers a reader between reading the manifest and writing its pin
/// (`SEGMENTS_GC_GRACE_SECS` changes it).
const GC_GRACE: Duration = Duration::from_secs(300);

fn gc_grace() -> Duration {
    std::env::var("SEGMENTS_GC_GRACE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(GC_GRACE, Duration::from_secs)
}

/// An opened base directory.
#[derive(Debug, Clone)]
pub struct Base {
    dir: PathBuf,
    pub config: Config,
    /// Parallelism of query execution (default: the cores).
    pub jobs: Option<usize>,
    /// Memory a query's operators (joins, sorts, aggregates) may hold, in
    /// bytes (default: [`default_memory_limit`]).
    pub memory_limit: Option<usize>,
    /// Told of the progress of long work (a progress bar on a terminal).
    pub progress: Option<ProgressHook>,
    /// How long a change waits for the writer lock held by another writer
    /// before it gives up (default: it does not wait).
    pub lock_wait: Option<Duration>,
    /// Kept results this process read or wrote, shared by its clones.
    pub(crate) cache: std::sync::Arc<cache::Cache>,
}

/// Told (phase, done, total) as long work advances.
pub type ProgressFn = dyn Fn(&str, u64, u64) + Send + Sync;

/// A callback for long work.
#[derive(Clone)]
pub struct ProgressHook(pub std::sync::Arc<ProgressFn>);

impl std::fmt::Debug for ProgressHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressHook")
    }
}

impl Base {
    /// Report progress, if someone listens.
    pub fn progress(&self, phase: &str, done: u64, total: u64) {
        if let Some(p) = &self.progress {
            (p.0)(phase, done, total);
        }
    }
}

impl Base {
    /// Create a new base with its configuration and an empty first manifest.
    /// The default segments are added by [`crate::jobs::init`].
    pub fn create(dir: &Path, config: Config) -> Result<Base> {
        if dir.join(config::CONFIG_FILE).exists() {
            return Err(Error::base(dir, "a base already exists here"));
        }
        for sub in [MANIFEST_DIR, READERS_DIR] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        }
        let m = Manifest::empty();
        let bytes = serde_json::to_vec_pretty(&m).expect("manifest serializes");
        write_atomic(&manifest_path(dir, 0), &bytes)?;
        // The configuration goes last: its presence marks a complete base.
        write_atomic(&dir.join(config::CONFIG_FILE), config.to_toml().as_bytes())?;
        Base::open(dir)
    }

    pub fn open(dir: &Path) -> Result<Base> {
        if !dir.join(config::CONFIG_FILE).exists() {
            return Err(Error::base(
                dir,
                "not a segments base (no segments.toml); create one with `segments init`",
            ));
        }
        let config = Config::load(dir)?;
        Ok(Base {
            dir: dir.to_path_buf(),
            config,
            jobs: None,
            memory_limit: None,
            progress: None,
            lock_wait: None,
            cache: Default::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn tz(&self) -> chrono_tz::Tz {
        self.config.tz().unwrap_or(chrono_tz::UTC)
    }

    /// The newest version that has a complete manifest (manifests are
    /// published whole, by a rename).
    pub fn latest_version(&self) -> Result<u64> {
        list_versions(&self.dir)?
            .last()
            .copied()
            .ok_or_else(|| Error::base(&self.dir, "no manifest found"))
    }

    /// The newest version and its manifest.
    fn latest(&self) -> Result<(u64, Arc<Manifest>)> {
        let v = self.latest_version()?;
        Ok((v, read_manifest_again(&self.dir, v)?))
    }

    /// Pin the current version for reading.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let version = self.latest_version()?;
        let pin = Pin::new(&self.dir, version)?;
        // Read after pinning: from here on the files of `version` stay.
        let manifest = read_manifest_again(&self.dir, version)?;
        Ok(Snapshot {
            base: self.clone(),
            manifest,
            _pin: pin,
        })
    }

    /// Take the writer lock and start a change from the current version.
    pub fn writer(&self, command: &str) -> Result<Writer> {
        let lock = WriteLock::acquire(&self.dir, command)?;
        if let Some(prev) = &lock.took_over {
            tracing_note(&format!(
                "note: took over the lock left by `{}` (pid {}, started {}), which did not finish",
                prev.command, prev.pid, prev.started
            ));
        }
        let (version, manifest) = self.latest()?;
        let mut next = Manifest::clone(&manifest);
        next.version = version + 1;
        next.written_by = command.to_string();
        Ok(Writer {
            base: self.clone(),
            previous: manifest,
            next,
            _lock: lock,
            counter: AtomicU64::new(0),
            created: std::sync::Mutex::new(Vec::new()),
            committed: false,
        })
    }
}

fn tracing_note(msg: &str) {
    eprintln!("{msg}");
}

/// A reader's claim on one version; removed on drop.
#[derive(Debug)]
struct Pin {
    path: PathBuf,
}

impl Pin {
    fn new(dir: &Path, version: u64) -> Result<Pin> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let rdir = dir.join(READERS_DIR);
        std::fs::create_dir_all(&rdir).map_err(|e| Error::io(&rdir, e))?;
        let path = rdir.join(format!(
            "{}-{}.pin",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, version.to_string()).map_err(|e| Error::io(&path, e))?;
        Ok(Pin { path })
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One consistent version of the base, readable for as long as it is held.
#[derive(Debug)]
pub struct Snapshot {
    pub base: Base,
    pub manifest: Arc<Manifest>,
    _pin: Pin,
}

impl Snapshot {
    pub fn dir(&self) -> &Path {
        self.base.dir()
    }

    pub fn abs(&self, rel: &str) -> PathBuf {
        self.base.dir().join(rel)
    }
}

/// A change in progress: the lock, the version it started from, and the
/// manifest it will publish.
#[derive(Debug)]
pub struct Writer {
    pub base: Base,
    pub previous: Arc<Manifest>,
    pub next: Manifest,
    _lock: WriteLock,
    counter: AtomicU64,
    /// Data files created, removed if the writer is dropped without
    /// publishing (a failed import leaves no file behind).
    created: std::sync::Mutex<Vec<PathBuf>>,
    committed: bool,
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let created = std::mem::take(self.created.get_mut().unwrap_or_else(|e| e.into_inner()));
        for path in created {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Writer {
    pub fn dir(&self) -> &Path {
        self.base.dir()
    }

    /// A new data file named after the version being written.
    pub fn new_file(&self, folder: &str, stem: &str, ext: &str) -> Result<SinkFile> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let rel = format!("{folder}/{stem}-v{}-{n}.{ext}", self.next.version);
        self.created
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.base.dir().join(&rel));
        SinkFile::create(self.base.dir(), rel)
    }

    /// Publish the new manifest atomically, then collect garbage.
    pub fn commit(mut self) -> Result<Manifest> {
        self.next.written_at = Utc::now();
        let bytes = serde_json::to_vec_pretty(&self.next).expect("manifest serializes");
        let path = manifest_path(self.base.dir(), self.next.version);
        // From here the manifest may be in place: its files are kept.
        self.committed = true;
        write_atomic(&path, &bytes)?;
        let published = self.next.clone();
        // Collection failures never undo a published version.
        if let Err(e) = collect_garbage(&self.base, &published) {
            tracing_note(&format!("warning: garbage collection: {e}"));
        }
        Ok(published)
    }
}

/// Remove manifests and data files that no reader can still need: not the
/// current version, not pinned by a live process, and superseded for longer
/// than the grace period. Must run under the writer lock, right after
/// `published` was published: it is not read again, and the version before
/// it was most likely parsed by the writer that started from it (manifests
/// hold every segment's history, megabytes on a base recomputed for months).
pub fn collect_garbage(base: &Base, published: &Manifest) -> Result<usize> {
    let dir = base.dir();
    let versions = list_versions(dir)?;
    let Some(&current) = versions.last() else {
        return Ok(0);
    };
    let pinned = live_pins(dir);
    let now = Utc::now();
    let mut keep_versions: Vec<u64> = vec![current];
    let mut keep: HashSet<String> = HashSet::new();
    let mut next_written = now;
    for &v in versions.iter().rev() {
        let read;
        let m = match v == published.version {
            true => published,
            false => match read_manifest_again(dir, v) {
                Ok(m) => {
                    read = m;
                    &*read
                }
                Err(_) if v != current => continue,
                Err(e) => return Err(e),
            },
        };
        // `next_written` is when version v was superseded.
        let fresh = (now - next_written).to_std().unwrap_or_default() < gc_grace();
        if v == current || pinned.contains(&v) || fresh {
            keep_versions.push(v);
            match m.files(dir) {
                Ok(files) => keep.extend(files.into_iter().map(|f| f.path)),
                Err(_) if v != current => continue,
                Err(e) => return Err(e),
            }
        }
        next_written = m.written_at;
    }
    let mut removed = 0;
    for v in versions {
        if !keep_versions.contains(&v) {
            let path = manifest_path(dir, v);
            crate::base::store::crash_point(format_args!("collected {}", path.display()));
            let _ = std::fs::remove_file(path);
            removed += 1;
        }
    }
    // A manifest written to its temporary name but never renamed (the
    // writer died in between): no other writer can be at it under the lock.
    if let Ok(entries) = std::fs::read_dir(dir.join(manifest::MANIFEST_DIR)) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') && name.contains(".tmp-") {
                crate::base::store::crash_point(format_args!(
                    "collected {}",
                    entry.path().display()
                ));
                let _ = std::fs::remove_file(entry.path());
                removed += 1;
            }
        }
    }
    // Spool files of an import that died: only the lock holder writes them.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with(crate::base::table::SPOOL_PREFIX) {
                crate::base::store::crash_point(format_args!(
                    "collected {}",
                    entry.path().display()
                ));
                let _ = std::fs::remove_file(entry.path());
                removed += 1;
            }
        }
    }
    for folder in ["contacts", "events", "bitmaps", "runs"] {
        removed += remove_unreferenced(dir, Path::new(folder), &keep)?;
    }
    Ok(removed)
}

fn live_pins(dir: &Path) -> HashSet<u64> {
    let mut out = HashSet::new();
    let Ok(entries) = std::fs::read_dir(dir.join(READERS_DIR)) else {
        return out;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let pid = name.split('-').next().and_then(|p| p.parse::<u32>().ok());
        match pid {
            Some(pid) if lock::pid_alive(pid) => {
                if let Some(v) = std::fs::read_to_string(entry.path())
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                {
                    out.insert(v);
                }
            }
            _ => {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    out
}

fn remove_unreferenced(dir: &Path, rel: &Path, keep: &HashSet<String>) -> Result<usize> {
    let abs = dir.join(rel);
    let Ok(entries) = std::fs::read_dir(&abs) else {
        return Ok(0);
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let child = rel.join(entry.file_name());
        let ft = entry.file_type().map_err(|e| Error::io(entry.path(), e))?;
        if ft.is_dir() {
            removed += remove_unreferenced(dir, &child, keep)?;
            let _ = std::fs::remove_dir(entry.path()); // only succeeds when empty
        } else if !keep.contains(child.to_string_lossy().as_ref()) {
            crate::base::store::crash_point(format_args!("collected {}", child.display()));
            std::fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Half of the machine's memory (4 GiB where it cannot be read), read once
/// per process: every query's session asks for it.
pub fn default_memory_limit() -> usize {
    static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            })
            .map(|kb| kb * 1024 / 2)
            .unwrap_or(4 << 30)
    })
}

/// How long to wait for the writer lock: `500ms`, `30s`, `2m`; a bare
/// number is seconds. At most ten minutes.
pub fn parse_wait(text: &str) -> std::result::Result<Duration, String> {
    Ok(parse_duration(text)?.min(Duration::from_secs(600)))
}

/// A duration as `500ms`, `30s` (or `30`), `2m` or `1h`.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let bad = || format!("{text:?}: expected a duration such as 500ms, 30s, 2m or 1h");
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(bad()),
    })
}

/// A size in bytes: `1048576`, `512MiB`, `2GiB`, `1.5GB`, `800KB`.
pub fn parse_size(text: &str) -> std::result::Result<usize, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 512MiB, 2GiB)"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" | "k" => 1024.0,
        "mib" | "m" => 1024.0 * 1024.0,
        "gib" | "g" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("{text:?} is not a size (e.g. 512MiB, 2GiB)")),
    };
    let bytes = n * scale;
    if !(1.0..=u64::MAX as f64).contains(&bytes) {
        return Err(format!("{text:?} is not a size of at least one byte"));
    }
    Ok(bytes as usize)
}
