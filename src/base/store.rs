//! Durable file writing: every data file is written once under a fresh name,
//! checksummed while it is written, and fsynced before a manifest names it.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::base::manifest::DataFile;
use crate::error::{Error, Result};

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
        crash_point();
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
        self.file.sync_all().map_err(|e| Error::io(&self.abs, e))?;
        crash_point();
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
    crash_point();
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    crash_point();
    sync_dir(dir)
}

/// Fault injection for crash tests. With `SEGMENTS_CRASH_AT=N` the process
/// aborts at its N-th durable step (a data file created or flushed, a small
/// file written or renamed into place, a superseded file collected), as a
/// SIGKILL or a power cut would stop it there. Tests step N from 1 until the
/// command finishes, which visits every point of a command.
pub fn crash_point() {
    static AT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    static STEP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let Some(at) = *AT.get_or_init(|| {
        std::env::var("SEGMENTS_CRASH_AT")
            .ok()
            .and_then(|v| v.parse().ok())
    }) else {
        return;
    };
    if STEP.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == at {
        std::process::abort();
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

pub fn verify(base: &Path, file: &DataFile, bytes: &[u8]) -> Result<()> {
    if bytes.len() as u64 != file.bytes || crc32fast::hash(bytes) != file.crc32 {
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
