//! Kept results held by the process that read or wrote them, by file.
//!
//! A recompute from kept results reads the results of every condition
//! (67 MB at 10M contacts) and the latest times kept per contact (320 MB),
//! each checked against its checksum, before it evaluates anything: about
//! 35 ms of every refresh at 10M contacts. A process that serves a base
//! (the HTTP server, a benchmark) keeps the last of each it read or wrote,
//! checked, and the next refresh of the same files reads none of them
//! again. A base's files are never changed once written: a file's path,
//! size and checksum name its content.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use roaring::RoaringBitmap;

use crate::base::changes::LatestTimes;
use crate::base::manifest::DataFile;

/// The bitmaps of a file of kept results, by tag.
pub type Bitmaps = Arc<HashMap<i64, Arc<RoaringBitmap>>>;

/// The last file of each kind this process read or wrote, decoded.
#[derive(Default)]
pub struct Cache {
    bitmaps: Mutex<Option<(DataFile, Bitmaps)>>,
    latest: Mutex<Option<(DataFile, Arc<LatestTimes>)>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cache")
    }
}

impl Cache {
    /// The bitmaps of `file`, read (`read`) unless held.
    pub fn bitmaps<E>(
        &self,
        file: &DataFile,
        read: impl FnOnce() -> Result<Bitmaps, E>,
    ) -> Result<Bitmaps, E> {
        held(&self.bitmaps, file, read)
    }

    /// Hold the bitmaps of a file just written.
    pub fn wrote_bitmaps(&self, file: &DataFile, bitmaps: Bitmaps) {
        *lock(&self.bitmaps) = Some((file.clone(), bitmaps));
    }

    /// The latest times of `file`, read (`read`) unless held.
    pub fn latest<E>(
        &self,
        file: &DataFile,
        read: impl FnOnce() -> Result<Arc<LatestTimes>, E>,
    ) -> Result<Arc<LatestTimes>, E> {
        held(&self.latest, file, read)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The value held for `file`, or the one `read` gives, held in its place
/// (a failed read leaves what was held).
fn held<T: Clone, E>(
    slot: &Mutex<Option<(DataFile, T)>>,
    file: &DataFile,
    read: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    if let Some((f, v)) = &*lock(slot)
        && f == file
    {
        return Ok(v.clone());
    }
    let v = read()?;
    *lock(slot) = Some((file.clone(), v.clone()));
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, crc32: u32) -> DataFile {
        DataFile {
            path: path.into(),
            bytes: 8,
            crc32,
        }
    }

    #[test]
    fn a_file_is_read_once_and_another_replaces_it() {
        let cache = Cache::default();
        let reads = std::cell::Cell::new(0);
        let read = |n: u32| {
            reads.set(reads.get() + 1);
            let mut m = HashMap::new();
            m.insert(0, Arc::new(RoaringBitmap::from_iter([n])));
            Ok::<_, ()>(Arc::new(m))
        };
        let a = file("bitmaps/leaves-v1-0.bm", 1);
        let got = cache.bitmaps(&a, || read(1)).unwrap();
        assert_eq!(got[&0].iter().collect::<Vec<_>>(), [1]);
        let again = cache.bitmaps(&a, || read(9)).unwrap();
        assert_eq!(again[&0].iter().collect::<Vec<_>>(), [1]);
        assert_eq!(reads.get(), 1, "held after the first read");
        // The same path with another checksum is another content.
        let b = file("bitmaps/leaves-v1-0.bm", 2);
        let other = cache.bitmaps(&b, || read(2)).unwrap();
        assert_eq!(other[&0].iter().collect::<Vec<_>>(), [2]);
        assert_eq!(reads.get(), 2);
        // A failed read leaves the file held.
        assert!(cache.bitmaps(&a, || Err::<Bitmaps, ()>(())).is_err());
        cache.bitmaps(&b, || read(7)).unwrap();
        assert_eq!(reads.get(), 2);
        // A file written is held as written.
        let c = file("bitmaps/leaves-v2-0.bm", 3);
        cache.wrote_bitmaps(&c, read(3).unwrap());
        let written = cache.bitmaps(&c, || read(8)).unwrap();
        assert_eq!(written[&0].iter().collect::<Vec<_>>(), [3]);
    }
}
