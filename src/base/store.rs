//! Durable file writing: every data file is written once under a fresh name,
//! checksummed while it is written, and fsynced before a manifest names it.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::base::manifest::DataFile;
use crate::error::{Error, Result};

/// Whether a data file reaches stable storage before a manifest names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Flushed first: members, imports, anything a later run cannot find
    /// again.
    Flushed,
    /// Left to the operating system: what a later run can compute again
    /// (the results a recompute keeps for the next one). A power cut may
    /// leave it damaged under a published manifest; its checksum tells, and
    /// the next run then computes it again instead of reading it. Its
    /// writing costs no wait for the disk (about 90 MB/s here when flushed).
    Rebuildable,
}

/// A file being written: counts bytes and computes the CRC-32 on the way.
pub struct SinkFile {
    file: File,
    hasher: crc32fast::Hasher,
    bytes: u64,
    rel: String,
    abs: PathBuf,
}

impl SinkFile {
    pub fn create(dir: &Path, rel: String) -> Result<SinkFile> {
        let abs = dir.join(&rel);
        if let Some(parent) = abs.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let file = File::create(&abs).map_err(|e| Error::io(&abs, e))?;
        crash_point(format_args!("created {rel}"));
        Ok(SinkFile {
            file,
            hasher: crc32fast::Hasher::new(),
            bytes: 0,
            rel,
            abs,
        })
    }

    pub fn path(&self) -> &Path {
        &self.abs
    }

    /// Flush to stable storage and describe the file for the manifest.
    pub fn finish(self) -> Result<DataFile> {
        self.finish_as(Durability::Flushed)
    }

    /// Describe the file for the manifest, flushed to stable storage first
    /// or not (see [`Durability`]).
    pub fn finish_as(self, durability: Durability) -> Result<DataFile> {
        match durability {
            Durability::Flushed => {
                self.file.sync_all().map_err(|e| Error::io(&self.abs, e))?;
                crash_point(format_args!("flushed {}", self.rel));
            }
            Durability::Rebuildable => crash_point(format_args!("written {}", self.rel)),
        }
        Ok(DataFile {
            path: self.rel,
            bytes: self.bytes,
            crc32: self.hasher.finalize(),
        })
    }
}

impl Write for SinkFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Write a whole small file atomically: temp file, fsync, rename, fsync directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::Internal(format!("no parent for {}", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    {
        let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    }
    crash_point(format_args!("wrote {}", tmp.display()));
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    crash_point(format_args!("renamed into {}", path.display()));
    sync_dir(dir)
}

/// Fault injection for the tests of durability, at each durable step of a
/// writer (a data file created, flushed or written, a small file written or renamed
/// into place, a spool file created, a superseded file collected):
///
/// - `SEGMENTS_CRASH_AT=N` aborts the process at its N-th step, as a SIGKILL
///   or a power cut would stop it there. Tests step N from 1 until the
///   command finishes, which visits every step of a command.
/// - `SEGMENTS_PAUSE_AT=N[,M…]` with `SEGMENTS_PAUSE_FILE=PATH` holds the
///   process at those steps: it writes `N what` to PATH and waits until PATH
///   is removed (ten minutes at most), so that a test can read the base, or
///   kill the writer, at a chosen step.
/// - `SEGMENTS_STEP_LOG=PATH` appends `N what` to PATH for every step, so
///   that a test can choose its steps by what they do.
///
/// `what` names the step ("renamed into …/manifests/…json"); it is only
/// formatted when one of these is set.
pub fn crash_point(what: std::fmt::Arguments<'_>) {
    struct Hooks {
        crash_at: Option<u64>,
        pause_at: Vec<u64>,
        pause_file: Option<PathBuf>,
        step_log: Option<PathBuf>,
    }
    static HOOKS: std::sync::OnceLock<Option<Hooks>> = std::sync::OnceLock::new();
    static STEP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let Some(hooks) = HOOKS.get_or_init(|| {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let crash_at = var("SEGMENTS_CRASH_AT").and_then(|v| v.to_str()?.parse().ok());
        let pause_at: Vec<u64> = var("SEGMENTS_PAUSE_AT")
            .and_then(|v| v.into_string().ok())
            .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
            .unwrap_or_default();
        let pause_file = var("SEGMENTS_PAUSE_FILE").map(PathBuf::from);
        let step_log = var("SEGMENTS_STEP_LOG").map(PathBuf::from);
        let any = crash_at.is_some() || (!pause_at.is_empty() && pause_file.is_some());
        (any || step_log.is_some()).then_some(Hooks {
            crash_at,
            pause_at,
            pause_file,
            step_log,
        })
    }) else {
        return;
    };
    let n = STEP.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    if let Some(log) = &hooks.step_log {
        let line = format!("{n} {what}\n");
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
    }
    if hooks.crash_at == Some(n) {
        std::process::abort();
    }
    if let Some(file) = &hooks.pause_file
        && hooks.pause_at.contains(&n)
    {
        // Written whole under another name, so that the test reads it whole.
        let tmp = file.with_extension("writing");
        if std::fs::write(&tmp, format!("{n} {what}")).is_ok()
            && std::fs::rename(&tmp, file).is_ok()
        {
            let until = std::time::Instant::now() + std::time::Duration::from_secs(600);
            while file.exists() && std::time::Instant::now() < until {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Read a data file and check its size and checksum against the manifest.
pub fn read_checked(base: &Path, file: &DataFile) -> Result<Vec<u8>> {
    let abs = base.join(&file.path);
    let bytes = std::fs::read(&abs).map_err(|e| Error::io(&abs, e))?;
    verify(base, file, &bytes)?;
    Ok(bytes)
}

/// A file of the base mapped in memory, checked whole: its bytes are read
/// where the system keeps them, not copied (kept results and latest times
/// are tens to hundreds of megabytes).
pub fn map_checked(base: &Path, file: &DataFile) -> Result<memmap2::Mmap> {
    let map = map(base, file)?;
    verify(base, file, &map)?;
    Ok(map)
}

/// A data file mapped, not checked: for files whose parts carry
/// checksums of their own, read a part at a time.
#[allow(unsafe_code)]
pub fn map(base: &Path, file: &DataFile) -> Result<memmap2::Mmap> {
    let abs = base.join(&file.path);
    let f = std::fs::File::open(&abs).map_err(|e| Error::io(&abs, e))?;
    // SAFETY: the files of a base are written whole under a name of their
    // own and never written again; removing one (garbage collection)
    // leaves a mapping of it readable.
    unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(&abs, e))
}

/// The CRC-32 of some bytes: of large files (kept latest times are
/// hundreds of megabytes), the checksums of parts computed in parallel and
/// combined.
fn checksum(bytes: &[u8]) -> u32 {
    use rayon::prelude::*;
    const PART: usize = 16 << 20;
    if bytes.len() <= PART {
        return crc32fast::hash(bytes);
    }
    bytes
        .par_chunks(PART)
        .map(|part| {
            let mut h = crc32fast::Hasher::new();
            h.update(part);
            h
        })
        .collect::<Vec<_>>()
        .into_iter()
        .reduce(|mut a, b| {
            a.combine(&b);
            a
        })
        .map_or(0, |h| h.finalize())
}

pub fn verify(base: &Path, file: &DataFile, bytes: &[u8]) -> Result<()> {
    if bytes.len() as u64 != file.bytes || checksum(bytes) != file.crc32 {
        return Err(Error::base(
            base,
            format!(
                "{} is damaged: size or checksum differs from the manifest",
                file.path
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The checksum of parts combined is the file's, on either side of a
    /// part's size.
    #[test]
    fn checksums_of_parts_combine_into_the_whole_ones() {
        let part = 16 << 20;
        let bytes: Vec<u8> = (0..2 * part + 7).map(|i| (i * 31 % 251) as u8).collect();
        for len in [0, 1, part - 1, part, part + 1, 2 * part + 7] {
            let b = &bytes[..len];
            assert_eq!(super::checksum(b), crc32fast::hash(b), "{len} bytes");
        }
    }
}
