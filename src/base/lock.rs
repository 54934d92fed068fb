//! The writer lock: one writer at a time, by an advisory lock on `LOCK` that
//! the kernel releases when the holder dies. The file also says who holds it,
//! so a second writer gets a message naming the command, pid and start time.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const LOCK_FILE: &str = "LOCK";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Holder {
    pub command: String,
    pub pid: u32,
    pub started: String,
}

/// Held while a writer works; released on drop (or by the kernel on death).
#[derive(Debug)]
pub struct WriteLock {
    file: File,
    /// Set when the previous holder died without releasing its claim.
    pub took_over: Option<Holder>,
}

impl WriteLock {
    pub fn acquire(dir: &Path, command: &str) -> Result<WriteLock> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let mut previous = String::new();
        // A reader probing for a writer (`current_holder`) takes a shared
        // lock for an instant and writes no claim: wait that out.
        let mut attempt = 0;
        let locked = loop {
            match file.try_lock() {
                Ok(()) => break Ok(()),
                Err(TryLockError::WouldBlock) if attempt < 50 => {
                    previous.clear();
                    let _ = file.seek(SeekFrom::Start(0));
                    let _ = file.read_to_string(&mut previous);
                    if serde_json::from_str::<Holder>(&previous).is_ok() {
                        break Err(TryLockError::WouldBlock);
                    }
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => break Err(e),
            }
        };
        previous.clear();
        let _ = file.seek(SeekFrom::Start(0));
        match locked {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let _ = file.read_to_string(&mut previous);
                let holder: Option<Holder> = serde_json::from_str(&previous).ok();
                let holder = holder.unwrap_or(Holder {
                    command: "unknown".into(),
                    pid: 0,
                    started: "unknown".into(),
                });
                return Err(Error::Locked {
                    command: holder.command,
                    pid: holder.pid,
                    started: holder.started,
                });
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        let _ = file.read_to_string(&mut previous);
        // A claim written by a process that is gone: it died while writing.
        let took_over = serde_json::from_str::<Holder>(&previous)
            .ok()
            .filter(|h| h.pid != std::process::id());
        let me = Holder {
            command: command.to_string(),
            pid: std::process::id(),
            started: Utc::now().to_rfc3339(),
        };
        let text = serde_json::to_string(&me).expect("holder serializes");
        file.set_len(0).map_err(|e| Error::io(&path, e))?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io(&path, e))?;
        file.write_all(text.as_bytes())
            .map_err(|e| Error::io(&path, e))?;
        Ok(WriteLock { file, took_over })
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        // Clear the claim so that the next writer does not report a takeover.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// True when a process with this pid exists (Linux: /proc/PID).
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The writer holding the lock right now, if any (a probe that never waits
/// and never takes the lock).
pub fn current_holder(dir: &Path) -> Option<Holder> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new().read(true).open(&path).ok()?;
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            None
        }
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            file.read_to_string(&mut text).ok()?;
            serde_json::from_str(&text).ok()
        }
        Err(TryLockError::Error(_)) => None,
    }
}
