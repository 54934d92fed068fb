//! What changed since the conditions of the segments were last computed.
//!
//! A recompute of every active segment keeps the bitmap of each of its
//! conditions ([`KeptLeaves`]) with the version and the instant they
//! reflect. Every import and deletion after it records the contacts it
//! changed ([`Change`]). The next recompute evaluates a condition again only
//! for the contacts whose data changed, or whose events or dates crossed one
//! of the condition's moving time boundaries, and keeps the earlier result
//! for every other contact (see [`crate::compile::fresh`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::base::bitmaps::{TaggedBitmaps, WRITE_BUFFER};
use crate::base::manifest::{Change, DataFile, KeptLeaves, Manifest};
use crate::base::store::{Durability, map_checked, read_checked};
use crate::base::{Base, Writer};
use crate::error::{Error, Result};

/// The first bytes of a file of latest times: each key's times start at
/// a multiple of 8 bytes from the file's start (zeros before them), so
/// that a mapped file is read in place, and are followed by their
/// [`Buckets`].
const LATEST_MAGIC: &[u8; 8] = b"SEGLAT03";
/// The same without the buckets (files written by earlier versions).
const LATEST_MAGIC_2: &[u8; 8] = b"SEGLAT02";
/// The same without the alignment.
const LATEST_MAGIC_1: &[u8; 8] = b"SEGLAT01";

/// Tags of a change's bitmaps.
const FIELDS: i64 = 0;
const PRESENCE: i64 = 1;
const EVENTS: i64 = 2;

/// The contacts one write changed.
#[derive(Debug, Default)]
pub struct Changed {
    /// Contacts whose fields changed: added, updated or deleted.
    pub fields: RoaringBitmap,
    /// Contacts added or deleted.
    pub presence: RoaringBitmap,
    /// Contacts with new or deleted events.
    pub events: RoaringBitmap,
    /// The types of those events (None: any type).
    pub types: Option<Vec<String>>,
    /// The events files an import added.
    pub files: Vec<String>,
    /// The rows of the contacts it added or updated, as stored after it.
    pub rows: Option<DataFile>,
}

/// Record what a write changes in the manifest it will publish. Nothing is
/// recorded while no condition results are kept: the next recompute is a
/// full one anyway.
pub fn record(w: &mut Writer, changed: Changed) -> Result<()> {
    if w.next.leaves.is_none() {
        return Ok(());
    }
    let Changed {
        fields,
        presence,
        events,
        types,
        files,
        rows,
    } = changed;
    let contacts = TaggedBitmaps(vec![
        (FIELDS, fields),
        (PRESENCE, presence),
        (EVENTS, events),
    ])
    .write(w, "change")?;
    w.next.changes.push(Change {
        version: w.next.version,
        contacts,
        types,
        files,
        rows,
    });
    Ok(())
}

/// Every contact changed after a version, by what changed.
#[derive(Debug, Default)]
pub struct Dirty {
    pub fields: RoaringBitmap,
    pub presence: RoaringBitmap,
    /// Contacts with new or deleted events, with their types (None: any).
    pub events: Vec<(Option<Vec<String>>, RoaringBitmap)>,
    /// The events files imports added.
    pub files: Vec<String>,
    /// The files of rows of the contacts imports added or updated, oldest
    /// first ([`Change::rows`]): a contact's newest row in them is its row
    /// now, unless a write without such a file changed it since.
    pub rows: Vec<DataFile>,
    /// The contacts whose rows those files hold.
    pub with_rows: RoaringBitmap,
    /// The contacts changed by writes that kept no rows (deletions,
    /// imports of many contacts, bases of earlier versions).
    pub without_rows: RoaringBitmap,
}

impl Dirty {
    /// The files holding the rows now of every contact of `wanted` (live
    /// contacts whose fields changed), when they do.
    pub fn rows_of(&self, wanted: &RoaringBitmap) -> Option<&[DataFile]> {
        let held = wanted.is_subset(&self.with_rows) && wanted.is_disjoint(&self.without_rows);
        (!self.rows.is_empty() && held).then_some(&self.rows)
    }

    /// Contacts for which a behaviour condition on these event types may
    /// have changed: new or deleted events of one of them, contacts added
    /// or deleted.
    pub fn for_events(&self, types: &[String]) -> RoaringBitmap {
        let mut out = self.presence.clone();
        for (t, bm) in &self.events {
            let touches = t
                .as_ref()
                .is_none_or(|t| t.iter().any(|x| types.contains(x)));
            if touches {
                out |= bm;
            }
        }
        out
    }

    /// Every changed contact.
    pub fn contacts(&self) -> RoaringBitmap {
        let mut out = &self.fields | &self.presence;
        for (_, bm) in &self.events {
            out |= bm;
        }
        out
    }
}

/// The settings conditions are compiled under: kept results serve only
/// under the same (time zone, field types, event columns).
fn settings(base: &Base, m: &Manifest) -> Value {
    serde_json::json!({
        "time_zone": base.config.time_zone,
        "declared": base.config.fields,
        "fields": m.fields,
        "event_columns": m.event_columns,
    })
}

/// The `keys` file of kept results. Results written as their changes
/// from an earlier file ([`KeptLeaves::changes`]) hold their settings
/// under [`AS_CHANGES`]: versions of the engine that do not read those
/// changes find other settings than theirs, and compute every condition
/// again rather than take the earlier file for the results.
#[derive(Serialize, Deserialize)]
struct Keys {
    settings: Value,
    keys: Vec<String>,
}

const AS_CHANGES: &str = "kept_as_changes_to";

impl Keys {
    /// The settings, and whether the results were written as changes.
    fn settings(&self) -> (&Value, bool) {
        match self.settings.get(AS_CHANGES) {
            Some(s) if self.settings.as_object().is_some_and(|o| o.len() == 1) => (s, true),
            _ => (&self.settings, false),
        }
    }
}

/// The file of kept results written whole that later ones are written as
/// changes from: its keys, in the order of its tags, and each key's
/// changes since (`results XOR that file's`; no entry: none).
#[derive(Debug, Clone)]
pub struct KeptBase {
    pub file: DataFile,
    pub keys: Vec<String>,
    pub changes: HashMap<String, RoaringBitmap>,
}

/// What a recompute changed in the kept results: each key's contacts whose
/// result differs from the kept one (`kept XOR now`), for every key.
pub struct KeptSince {
    pub base: KeptBase,
    pub changed: HashMap<String, RoaringBitmap>,
}

/// Results are written as changes while those take at most this share of
/// the file written whole (then written whole again: each run reads both).
const CHANGES_SHARE: u64 = 4;

/// Kept condition results and what changed since.
#[derive(Debug)]
pub struct Kept {
    pub version: u64,
    pub as_of: DateTime<Utc>,
    /// Bitmap of each condition, by key (shared with the process's
    /// [`crate::base::cache::Cache`] where the run changed none).
    pub results: HashMap<String, Arc<RoaringBitmap>>,
    pub dirty: Dirty,
    /// The latest times of matching events, for the conditions that depend
    /// on them alone: what they reflect, without the times
    /// ([`LatestTimes::header`]; [`Kept::latest_times`] reads them).
    pub latest: Option<LatestTimes>,
    /// Their file.
    pub latest_file: Option<DataFile>,
    /// The segments stored with them ([`KeptLeaves::segments`]).
    pub segments: std::collections::BTreeMap<String, String>,
    /// The file holding them, or earlier ones they are changes from.
    pub base: KeptBase,
}

impl Kept {
    /// The kept latest times, their file mapped in memory and checked whole
    /// (once in a process: see [`crate::base::cache`]).
    pub fn latest_times(&self, base: &Base) -> Result<Option<Arc<LatestTimes>>> {
        let Some(f) = &self.latest_file else {
            return Ok(None);
        };
        let dir = base.dir();
        base.cache
            .latest(f, || {
                let map = map_checked(dir, f)?;
                LatestTimes::decode(&Arc::new(map))
                    .map(Arc::new)
                    .map_err(|m| Error::base(dir, format!("{}: {m}", f.path)))
            })
            .map(Some)
    }
}

/// The times of a [`Latest`]: its own, or read in place from a mapped file
/// of latest times.
#[derive(Clone)]
pub enum Times {
    Own(Vec<i64>),
    Mapped {
        map: std::sync::Arc<memmap2::Mmap>,
        /// The first byte (a multiple of 8).
        at: usize,
        len: usize,
    },
}

impl Times {
    /// `len` times at byte `at` of a mapped file: read in place when
    /// aligned on a little-endian machine, else copied.
    fn of(map: &std::sync::Arc<memmap2::Mmap>, at: usize, len: usize) -> Times {
        let bytes = &map[at..at + len * 8];
        if cfg!(target_endian = "little") && bytemuck::try_cast_slice::<u8, i64>(bytes).is_ok() {
            return Times::Mapped {
                map: map.clone(),
                at,
                len,
            };
        }
        let times = bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")));
        Times::Own(times.collect())
    }
}

impl Default for Times {
    fn default() -> Times {
        Times::Own(Vec::new())
    }
}

impl From<Vec<i64>> for Times {
    fn from(v: Vec<i64>) -> Times {
        Times::Own(v)
    }
}

impl FromIterator<i64> for Times {
    fn from_iter<I: IntoIterator<Item = i64>>(iter: I) -> Times {
        Times::Own(iter.into_iter().collect())
    }
}

impl std::ops::Deref for Times {
    type Target = [i64];
    fn deref(&self) -> &[i64] {
        match self {
            Times::Own(v) => v,
            Times::Mapped { map, at, len } => bytemuck::cast_slice(&map[*at..*at + len * 8]),
        }
    }
}

impl PartialEq for Times {
    fn eq(&self, other: &Times) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for Times {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// The latest times a run keeps for the next one.
#[derive(Debug)]
pub enum NextLatest {
    /// New ones.
    New(LatestTimes),
    /// The kept ones, unchanged.
    Same,
}

/// The time of each contact's latest event matching some event types and
/// filter, for the conditions that depend on it alone (see
/// [`crate::compile::latest`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latest {
    /// Events before this instant (µs) are left out: a contact whose latest
    /// matching event is older is absent.
    pub from: i64,
    /// Contacts with a matching event from `from` on.
    pub ids: RoaringBitmap,
    /// Times kept per contact.
    pub slots: usize,
    /// The times of each one's `slots` latest, latest first (`i64::MIN`
    /// past the ones it has), in the order of `ids` (µs).
    pub times: Times,
}

/// The contacts of a key's kept times by bucket of time: buckets of about
/// as many times each, in the order of time, each with its earliest and
/// latest time and the positions among the key's ids of the contacts with
/// a time in it. The contacts with a time in a narrow band (the hour a
/// window's end swept since the last run) are then found among the
/// buckets whose times meet the band, instead of by a look at every time
/// (32M at 10M contacts). A newsletter's sends, millions of times within
/// minutes, fill buckets of their own, met only by a band that holds them.
#[derive(Clone)]
pub struct Buckets {
    /// Each bucket's earliest and latest time (µs).
    bounds: Vec<(i64, i64)>,
    /// Each bucket's positions, a serialized bitmap: the bytes from
    /// `at + offsets[i]` to `at + offsets[i + 1]` of `map`.
    map: std::sync::Arc<memmap2::Mmap>,
    at: usize,
    offsets: Vec<u64>,
}

impl Buckets {
    /// About this many buckets a key: an hour's band at 10M contacts and
    /// a year of times meets a few buckets of about 30,000 times each.
    const ABOUT: u64 = 1024;
    /// The times are first counted in this many spans of equal width,
    /// which are then grouped into buckets.
    const SPANS: u64 = 1 << 16;
    /// At most this many buckets (spans holding more times than a bucket
    /// should are buckets of their own).
    const MOST: u64 = 2 * Self::ABOUT + 1;

    /// The buckets of some times, as written after them: the number of
    /// buckets, each one's earliest and latest time, the offsets of their
    /// bitmaps (one more than buckets, from the first bitmap), the
    /// bitmaps, zeros to a multiple of 8 bytes.
    fn encoded(l: &Latest) -> Vec<u8> {
        let k = l.slots.max(1);
        let timed = || l.times.iter().copied().filter(|&t| t != i64::MIN);
        let (lo, hi) = timed().fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
        let mut bounds: Vec<(i64, i64)> = Vec::new();
        let mut bitmaps: Vec<RoaringBitmap> = Vec::new();
        if lo <= hi {
            // Spans of equal width, counted; then grouped in order into
            // buckets of about `total / ABOUT` times.
            // (Differences of times from the earliest fit in a u64.)
            let width = (hi as u64).wrapping_sub(lo as u64);
            let mut shift = 0;
            while width >> shift >= Self::SPANS {
                shift += 1;
            }
            let span = |t: i64| ((t as u64).wrapping_sub(lo as u64) >> shift) as usize;
            let mut counts = vec![0u64; (width >> shift) as usize + 1];
            timed().for_each(|t| counts[span(t)] += 1);
            let total: u64 = counts.iter().sum();
            let per = total.div_ceil(Self::ABOUT).max(1);
            let mut bucket_of = vec![0u32; counts.len()];
            let (mut n, mut held) = (0u32, 0u64);
            for (s, &c) in counts.iter().enumerate().filter(|(_, c)| **c > 0) {
                if held > 0 && held + c > per {
                    n += 1;
                    held = 0;
                }
                bucket_of[s] = n;
                held += c;
            }
            let n = n as usize + 1;
            let bucket = |t: i64| bucket_of[span(t)] as usize;
            bounds = vec![(i64::MAX, i64::MIN); n];
            bitmaps = vec![RoaringBitmap::new(); n];
            // A run of contacts at a time, their positions sorted by bucket
            // (a counting sort), each bucket's appended to its bitmap in
            // order. (Pushing each position to its bucket's bitmap took 3.8
            // s of CPU for 32M times: each push looks for the bitmap's
            // largest value first.) Runs of a few contacts in tests, for
            // their ends to be met.
            const RUN: usize = if cfg!(test) { 8 } else { 1 << 20 };
            let mut starts = vec![0usize; n + 1];
            let mut sorted: Vec<u32> = Vec::new();
            for (r, times) in l.times.chunks(RUN * k).enumerate() {
                let first = (r * RUN) as u32;
                starts.fill(0);
                for &t in times.iter().filter(|&&t| t != i64::MIN) {
                    starts[bucket(t) + 1] += 1;
                }
                for b in 0..n {
                    starts[b + 1] += starts[b];
                }
                sorted.clear();
                sorted.resize(starts[n], 0);
                let mut next = starts.clone();
                for (p, times) in times.chunks_exact(k).enumerate() {
                    for &t in times.iter().filter(|&&t| t != i64::MIN) {
                        let b = bucket(t);
                        sorted[next[b]] = first + p as u32;
                        next[b] += 1;
                        let (min, max) = &mut bounds[b];
                        (*min, *max) = ((*min).min(t), (*max).max(t));
                    }
                }
                for (b, bitmap) in bitmaps.iter_mut().enumerate() {
                    let run = sorted[starts[b]..starts[b + 1]].iter().copied();
                    let appended = match k {
                        1 => bitmap.append(run),
                        // A contact with two times in the bucket: once.
                        _ => {
                            let mut last = None;
                            bitmap.append(run.filter(|&p| last.replace(p) != Some(p)))
                        }
                    };
                    appended.expect("positions in order");
                }
            }
        }
        let mut out = Vec::new();
        out.extend_from_slice(&(bitmaps.len() as u64).to_le_bytes());
        for (min, max) in &bounds {
            out.extend_from_slice(&min.to_le_bytes());
            out.extend_from_slice(&max.to_le_bytes());
        }
        let mut offset = 0u64;
        out.extend_from_slice(&offset.to_le_bytes());
        for b in &bitmaps {
            offset += b.serialized_size() as u64;
            out.extend_from_slice(&offset.to_le_bytes());
        }
        for b in &bitmaps {
            b.serialize_into(&mut out).expect("written to memory");
        }
        out.resize(out.len().next_multiple_of(8), 0);
        out
    }

    /// The buckets that follow a key's times in a mapped file (`take`
    /// hands out its bytes in order, with their position).
    fn decode<'b>(
        map: &std::sync::Arc<memmap2::Mmap>,
        take: &mut impl FnMut(usize) -> std::result::Result<(usize, &'b [u8]), String>,
    ) -> std::result::Result<Buckets, String> {
        let mut word = || -> std::result::Result<u64, String> {
            let (_, b) = take(8)?;
            Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
        };
        let n = word()?;
        if n > Self::MOST {
            return Err("damaged buckets".into());
        }
        let bounds = (0..n)
            .map(|_| Ok((word()? as i64, word()? as i64)))
            .collect::<std::result::Result<Vec<(i64, i64)>, String>>()?;
        let offsets = (0..=n)
            .map(|_| word())
            .collect::<std::result::Result<Vec<u64>, String>>()?;
        let ordered = bounds.iter().all(|(min, max)| min <= max)
            && bounds.windows(2).all(|w| w[0].1 < w[1].0)
            && offsets.windows(2).all(|w| w[0] <= w[1])
            && offsets[0] == 0;
        if !ordered {
            return Err("damaged buckets".into());
        }
        let len = *offsets.last().expect("one offset at least") as usize;
        let (at, _) = take(len)?;
        take((at + len).next_multiple_of(8) - (at + len))?;
        Ok(Buckets {
            bounds,
            map: map.clone(),
            at,
            offsets,
        })
    }

    /// The positions of the contacts in the buckets holding times in one
    /// of these intervals (closed, µs); None when a bucket cannot be read.
    pub fn near(&self, bands: impl IntoIterator<Item = (i64, i64)>) -> Option<RoaringBitmap> {
        let mut wanted = std::collections::BTreeSet::new();
        for (a, b) in bands {
            let first = self.bounds.partition_point(|&(_, max)| max < a);
            wanted.extend((first..self.bounds.len()).take_while(|&i| self.bounds[i].0 <= b));
        }
        let mut out = RoaringBitmap::new();
        for i in wanted {
            let (from, to) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
            let bytes = &self.map[self.at + from..self.at + to];
            out |= RoaringBitmap::deserialize_from(bytes).ok()?;
        }
        Some(out)
    }

    /// The bytes of the bitmaps.
    fn bytes(&self) -> &[u8] {
        &self.map[self.at..self.at + *self.offsets.last().unwrap_or(&0) as usize]
    }
}

impl std::fmt::Debug for Buckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} buckets of latest times", self.bounds.len())
    }
}

impl PartialEq for Buckets {
    fn eq(&self, other: &Buckets) -> bool {
        (&self.bounds, &self.offsets) == (&other.bounds, &other.offsets)
            && self.bytes() == other.bytes()
    }
}

/// The latest times a recompute kept, by key, with what they reflect.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatestTimes {
    /// No event after this instant (µs) is reflected.
    pub as_of: i64,
    /// The events files of the version they reflect.
    pub files: Vec<String>,
    pub by_key: BTreeMap<String, Latest>,
    /// The buckets of each key's times, as read from a file that has them.
    pub buckets: BTreeMap<String, Buckets>,
}

/// The header of a file of latest times.
#[derive(Serialize, Deserialize)]
struct LatestHeader {
    as_of: i64,
    files: Vec<String>,
    keys: Vec<LatestEntry>,
}

/// One key in the header of a file of latest times.
#[derive(Serialize, Deserialize)]
struct LatestEntry {
    key: String,
    from: i64,
    contacts: u64,
    slots: usize,
}

impl LatestTimes {
    /// Write the file's bytes: the header, then each key's contacts, times
    /// and [`Buckets`] (built for every key side by side).
    pub fn encode_into(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        use rayon::prelude::*;
        let header = serde_json::to_vec(&self.header_of()).expect("header serializes");
        out.write_all(LATEST_MAGIC)?;
        out.write_all(&(header.len() as u64).to_le_bytes())?;
        out.write_all(&header)?;
        let buckets: Vec<Vec<u8>> = self
            .by_key
            .par_iter()
            .map(|(_, l)| Buckets::encoded(l))
            .collect();
        let mut at = 16 + header.len();
        for (l, buckets) in self.by_key.values().zip(buckets) {
            let ids = l.ids.serialized_size();
            out.write_all(&(ids as u64).to_le_bytes())?;
            l.ids.serialize_into(&mut *out)?;
            let pad = (at + 8 + ids).next_multiple_of(8) - (at + 8 + ids);
            out.write_all(&[0; 8][..pad])?;
            at += 8 + ids + pad + l.times.len() * 8 + buckets.len();
            for t in l.times.chunks(4096) {
                match cfg!(target_endian = "little") {
                    true => out.write_all(bytemuck::cast_slice(t))?,
                    false => {
                        let bytes: Vec<u8> = t.iter().flat_map(|t| t.to_le_bytes()).collect();
                        out.write_all(&bytes)?;
                    }
                }
            }
            out.write_all(&buckets)?;
        }
        Ok(())
    }

    /// The header of the file: what the times reflect, and each key's
    /// `from`, contacts and slots.
    fn header_of(&self) -> LatestHeader {
        LatestHeader {
            as_of: self.as_of,
            files: self.files.clone(),
            keys: self
                .by_key
                .iter()
                .map(|(k, l)| LatestEntry {
                    key: k.clone(),
                    from: l.from,
                    contacts: l.ids.len(),
                    slots: l.slots,
                })
                .collect(),
        }
    }

    /// What a file of latest times reflects, read from its first bytes:
    /// each key with its `from` and slots, but no times.
    pub fn header(dir: &std::path::Path, file: &DataFile) -> Result<LatestTimes> {
        use std::io::Read;
        let abs = dir.join(&file.path);
        let damaged = |m: String| Error::base(dir, format!("{}: {m}", file.path));
        let mut f = std::fs::File::open(&abs).map_err(|e| Error::io(&abs, e))?;
        let mut head = [0u8; 16];
        f.read_exact(&mut head)
            .map_err(|e| damaged(format!("truncated: {e}")))?;
        if ![LATEST_MAGIC, LATEST_MAGIC_2, LATEST_MAGIC_1]
            .contains(&&head[..8].try_into().expect("8 bytes"))
        {
            return Err(damaged("not a file of latest times (bad magic)".into()));
        }
        let n = u64::from_le_bytes(head[8..].try_into().expect("8 bytes"));
        if n > file.bytes {
            return Err(damaged("damaged header".into()));
        }
        let mut header = vec![0u8; n as usize];
        f.read_exact(&mut header)
            .map_err(|e| damaged(format!("truncated: {e}")))?;
        let header: LatestHeader =
            serde_json::from_slice(&header).map_err(|e| damaged(format!("damaged header: {e}")))?;
        Ok(LatestTimes {
            as_of: header.as_of,
            files: header.files,
            by_key: header
                .keys
                .into_iter()
                .map(|e| {
                    let l = Latest {
                        from: e.from,
                        ids: RoaringBitmap::new(),
                        slots: e.slots,
                        times: Times::default(),
                    };
                    (e.key, l)
                })
                .collect(),
            buckets: BTreeMap::new(),
        })
    }

    /// The latest times of a mapped file, read in place where they can be.
    pub fn decode(map: &std::sync::Arc<memmap2::Mmap>) -> std::result::Result<LatestTimes, String> {
        let bytes: &[u8] = map;
        let (aligned, bucketed) = match bytes.get(..8) {
            Some(m) if m == LATEST_MAGIC => (true, true),
            Some(m) if m == LATEST_MAGIC_2 => (true, false),
            Some(m) if m == LATEST_MAGIC_1 => (false, false),
            _ => return Err("not a file of latest times (bad magic)".into()),
        };
        let mut at = 8;
        let mut take = |n: usize| -> std::result::Result<(usize, &[u8]), String> {
            if bytes.len() - at < n {
                return Err("truncated file of latest times".to_string());
            }
            at += n;
            Ok((at - n, &bytes[at - n..at]))
        };
        let len =
            |(_, b): (usize, &[u8])| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize;
        let n = len(take(8)?);
        let header: LatestHeader =
            serde_json::from_slice(take(n)?.1).map_err(|e| format!("damaged header: {e}"))?;
        let mut by_key = BTreeMap::new();
        let mut buckets = BTreeMap::new();
        for LatestEntry {
            key,
            from,
            contacts: count,
            slots,
        } in header.keys
        {
            let n = len(take(8)?);
            let (end, ids) = take(n)?;
            let ids =
                RoaringBitmap::deserialize_from(ids).map_err(|e| format!("damaged bitmap: {e}"))?;
            if aligned {
                let end = end + n;
                take(end.next_multiple_of(8) - end)?;
            }
            let times = (count as usize)
                .checked_mul(slots)
                .filter(|n| n.checked_mul(8).is_some())
                .ok_or("damaged header")?;
            let (start, _) = take(times * 8)?;
            let times = Times::of(map, start, times);
            if ids.len() != count {
                return Err(format!("{key}: {} contacts for {count} times", ids.len()));
            }
            if bucketed {
                let b = Buckets::decode(map, &mut take).map_err(|e| format!("{key}: {e}"))?;
                buckets.insert(key.clone(), b);
            }
            by_key.insert(
                key,
                Latest {
                    from,
                    ids,
                    slots,
                    times,
                },
            );
        }
        Ok(LatestTimes {
            as_of: header.as_of,
            files: header.files,
            by_key,
            buckets,
        })
    }
}

/// Why kept results cannot serve, or the results.
pub enum Earlier {
    Kept(Box<Kept>),
    /// Why every condition is evaluated in full.
    None(String),
}

/// The kept results of a version, if they were computed under its current
/// settings.
pub fn kept(base: &Base, m: &Manifest) -> Result<Earlier> {
    let Some(l) = &m.leaves else {
        return Ok(Earlier::None("no earlier results are kept".into()));
    };
    let dir = base.dir();
    let keys: Keys = serde_json::from_slice(&read_checked(dir, &l.keys)?)
        .map_err(|e| Error::base(dir, format!("{}: {e}", l.keys.path)))?;
    let (kept_settings, as_changes) = keys.settings();
    if *kept_settings != settings(base, m) {
        return Ok(Earlier::None(
            "the time zone, field types or event columns changed".into(),
        ));
    }
    if as_changes != l.changes.is_some() {
        return Ok(Earlier::None(
            "the kept results lack the file of their changes".into(),
        ));
    }
    let bitmaps = base.cache.bitmaps(&l.bitmaps, || {
        let read = TaggedBitmaps::read(dir, &l.bitmaps)?;
        Ok::<_, Error>(Arc::new(
            read.0.into_iter().map(|(t, b)| (t, Arc::new(b))).collect(),
        ))
    })?;
    let mut changes_by_tag: HashMap<i64, RoaringBitmap> = match &l.changes {
        Some(f) => TaggedBitmaps::read(dir, f)?.0.into_iter().collect(),
        None => HashMap::new(),
    };
    let mut results = HashMap::with_capacity(keys.keys.len());
    let mut changes = HashMap::with_capacity(changes_by_tag.len());
    for (i, key) in keys.keys.iter().enumerate() {
        if let Some(bm) = bitmaps.get(&(i as i64)) {
            let bm = match changes_by_tag.remove(&(i as i64)) {
                Some(c) => {
                    let changed = Arc::new(&**bm ^ &c);
                    changes.insert(key.clone(), c);
                    changed
                }
                None => bm.clone(),
            };
            results.insert(key.clone(), bm);
        }
    }
    let mut dirty = Dirty::default();
    for c in m.changes.iter().filter(|c| c.version > l.version) {
        let t = TaggedBitmaps::read(dir, &c.contacts)?;
        dirty.fields |= t.get(FIELDS);
        dirty.presence |= t.get(PRESENCE);
        dirty.events.push((c.types.clone(), t.get(EVENTS)));
        dirty.files.extend(c.files.iter().cloned());
        let changed = t.get(FIELDS) | t.get(PRESENCE);
        match &c.rows {
            Some(rows) => {
                dirty.rows.push(rows.clone());
                dirty.with_rows |= changed;
            }
            None => dirty.without_rows |= changed,
        }
    }
    dirty.files.extend(l.latest_imported.iter().cloned());
    let latest = match &l.latest {
        Some(f) => Some(LatestTimes::header(dir, f)?),
        None => None,
    };
    Ok(Earlier::Kept(Box::new(Kept {
        version: l.version,
        as_of: l.as_of,
        results,
        dirty,
        latest,
        latest_file: l.latest.clone(),
        segments: l.segments.clone(),
        base: KeptBase {
            file: l.bitmaps.clone(),
            keys: keys.keys,
            changes,
        },
    })))
}

/// Kept results as their changes from the file of earlier ones, when they
/// have that file's keys in order and the changes are few enough.
fn as_changes(keys: &[String], since: KeptSince) -> Option<TaggedBitmaps> {
    let KeptSince { base, mut changed } = since;
    if keys != base.keys {
        return None;
    }
    let mut out = Vec::new();
    let mut bytes = 0u64;
    for (i, key) in base.keys.iter().enumerate() {
        let mut c = changed.remove(key)?;
        if let Some(before) = base.changes.get(key) {
            c ^= before;
        }
        if c.is_empty() {
            continue;
        }
        bytes += c.serialized_size() as u64;
        if bytes.saturating_mul(CHANGES_SHARE) > base.file.bytes {
            return None;
        }
        out.push((i as i64, c));
    }
    Some(TaggedBitmaps(out))
}

/// Keep the condition results of a recompute of every active segment for
/// the next one; the changes they include are dropped. With what the run
/// changed in the kept results (`since`), they are written as their
/// changes from the file of results written whole that those were read
/// from, when few enough ([`CHANGES_SHARE`]); else whole. They are written
/// without waiting for the disk ([`Durability::Rebuildable`]): a run that
/// finds them damaged computes them again.
pub fn keep(
    w: &mut Writer,
    as_of: DateTime<Utc>,
    results: Vec<(String, RoaringBitmap)>,
    latest: Option<&NextLatest>,
    since: Option<KeptSince>,
) -> Result<()> {
    use std::io::Write;
    let (keys, bitmaps): (Vec<String>, Vec<RoaringBitmap>) = results.into_iter().unzip();
    let changes = since.and_then(|s| {
        let file = s.base.file.clone();
        as_changes(&keys, s).map(|c| (file, c))
    });
    let mut settings = settings(&w.base, &w.next);
    let (bitmaps, changes) = match changes {
        // The changes alone, beside the file of earlier results whole.
        Some((file, changes)) => {
            settings = serde_json::json!({ AS_CHANGES: settings });
            let changes = changes.write_as(w, "leaves-changes", Durability::Rebuildable)?;
            (file, Some(changes))
        }
        None => {
            let bitmaps = TaggedBitmaps(
                bitmaps
                    .into_iter()
                    .enumerate()
                    .map(|(i, b)| (i as i64, b))
                    .collect(),
            );
            let file = bitmaps.write_as(w, "leaves", Durability::Rebuildable)?;
            // The next refresh in this process reads them from here.
            let held = bitmaps.0.into_iter().map(|(t, b)| (t, Arc::new(b)));
            w.base.cache.wrote_bitmaps(&file, Arc::new(held.collect()));
            (file, None)
        }
    };
    let doc = Keys { settings, keys };
    let mut sink = w.new_file("bitmaps", "leaves", "json")?;
    sink.write_all(&serde_json::to_vec(&doc).expect("keys serialize"))
        .map_err(|e| Error::io(sink.path(), e))?;
    let keys = sink.finish_as(Durability::Rebuildable)?;
    // Kept latest times that stand do not reflect the files imports added
    // since they were written.
    let mut latest_imported = Vec::new();
    if let (Some(NextLatest::Same), Some(l)) = (latest, &w.next.leaves) {
        latest_imported = l.latest_imported.clone();
        for c in w.next.changes.iter().filter(|c| c.version > l.version) {
            latest_imported.extend(c.files.iter().cloned());
        }
    }
    let latest = match latest {
        Some(NextLatest::Same) => w.next.leaves.as_ref().and_then(|l| l.latest.clone()),
        Some(NextLatest::New(l)) => {
            let sink = w.new_file("bitmaps", "latest", "bin")?;
            let path = sink.path().to_path_buf();
            let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER, sink);
            l.encode_into(&mut out).map_err(|e| Error::io(&path, e))?;
            let sink = out
                .into_inner()
                .map_err(|e| Error::io(&path, e.into_error()))?;
            Some(sink.finish_as(Durability::Rebuildable)?)
        }
        None => None,
    };
    w.next.leaves = Some(KeptLeaves {
        version: w.next.version,
        as_of,
        bitmaps,
        changes,
        keys,
        latest,
        latest_imported,
        segments: std::collections::BTreeMap::new(),
    });
    let version = w.next.version;
    w.next.changes.retain(|c| c.version > version);
    Ok(())
}

/// The kept results stand, unchanged, for the version being written and
/// `as_of` (every condition kept its result); the changes they now include
/// are dropped.
pub fn keep_again(w: &mut Writer, as_of: DateTime<Utc>) {
    let version = w.next.version;
    if let Some(l) = &mut w.next.leaves {
        if l.latest.is_some() {
            for c in w.next.changes.iter().filter(|c| c.version > l.version) {
                l.latest_imported.extend(c.files.iter().cloned());
            }
        }
        l.version = version;
        l.as_of = as_of;
        w.next.changes.retain(|c| c.version > version);
    }
}

/// Forget kept results (a base rewritten from scratch).
pub fn forget(m: &mut Manifest) {
    m.leaves = None;
    m.changes.clear();
}

/// Some bytes in a temporary file, mapped.
#[cfg(test)]
pub(crate) fn mapped(bytes: &[u8]) -> std::sync::Arc<memmap2::Mmap> {
    let mut f = tempfile::tempfile().expect("a temporary file");
    std::io::Write::write_all(&mut f, bytes).expect("written");
    #[allow(unsafe_code)]
    // SAFETY: the file is this test's own and not written again.
    let map = unsafe { memmap2::Mmap::map(&f) }.expect("mapped");
    std::sync::Arc::new(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three keys whose bitmaps have sizes that leave each key's times at
    /// a different offset modulo 8.
    fn sample() -> LatestTimes {
        let mut by_key = BTreeMap::new();
        for (key, ids, slots) in [
            ("a", vec![1u32, 5, 9], 1usize),
            ("b", (0..1000).step_by(7).collect(), 2),
            ("c", vec![70_000], 3),
            ("d", vec![], 1),
        ] {
            let times = (0..ids.len() * slots)
                .map(|i| match i % 5 {
                    4 => i64::MIN,
                    _ => 1_700_000_000_000_000 + i as i64 * 1_000_003,
                })
                .collect();
            let l = Latest {
                from: -5,
                ids: ids.into_iter().collect(),
                slots,
                times,
            };
            by_key.insert(key.to_string(), l);
        }
        LatestTimes {
            as_of: 1_700_000_000_000_000,
            files: vec!["events/2026-11/e.parquet".into()],
            by_key,
            buckets: BTreeMap::new(),
        }
    }

    #[test]
    fn latest_times_read_back_in_place_as_written() {
        let want = sample();
        let mut bytes = Vec::new();
        want.encode_into(&mut bytes).expect("encoded");
        let got = LatestTimes::decode(&mapped(&bytes)).expect("decoded");
        assert_eq!(
            (got.as_of, &got.files, &got.by_key),
            (want.as_of, &want.files, &want.by_key)
        );
        for (key, l) in &got.by_key {
            assert!(
                matches!(l.times, Times::Mapped { .. }),
                "{key} read in place"
            );
            // Every contact with a time is in the buckets of its times.
            let near = got.buckets[key]
                .near([(i64::MIN + 1, i64::MAX)])
                .expect("buckets read");
            let k = l.slots.max(1);
            let timed = l
                .times
                .chunks(k)
                .filter(|t| t.iter().any(|&t| t != i64::MIN))
                .count();
            assert_eq!(near.len(), timed as u64, "{key}");
        }
        // Cut anywhere: an error, never a panic.
        for cut in [9, 20, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                LatestTimes::decode(&mapped(&bytes[..cut])).is_err(),
                "{cut}"
            );
        }
    }

    /// A band finds the buckets of the times at its ends, and of no time
    /// outside it: one bucket per time here (few times), a newsletter's
    /// many sends at one instant in a bucket of its own.
    #[test]
    fn buckets_meet_a_band_at_its_ends() {
        let mut times: Vec<i64> = vec![10, 20, 30, 40];
        times.extend(std::iter::repeat_n(35, 1_000));
        let file = LatestTimes {
            by_key: [(
                "k".to_string(),
                Latest {
                    from: 0,
                    ids: (0..times.len() as u32).collect(),
                    slots: 1,
                    times: times.into(),
                },
            )]
            .into(),
            ..LatestTimes::default()
        };
        let mut bytes = Vec::new();
        file.encode_into(&mut bytes).expect("encoded");
        let read = LatestTimes::decode(&mapped(&bytes)).expect("decoded");
        let near = |a, b| read.buckets["k"].near([(a, b)]).expect("read").len();
        assert_eq!(near(20, 30), 2);
        assert_eq!(near(21, 29), 0);
        assert_eq!(near(30, 34), 1);
        assert_eq!(near(36, 40), 1);
        assert_eq!(near(35, 35), 1_000);
        assert_eq!(near(i64::MIN, 9), 0);
        assert_eq!(near(41, i64::MAX), 0);
    }

    /// A file of latest times in an earlier format: unaligned (the first),
    /// or aligned without buckets (the second).
    fn earlier_format(want: &LatestTimes, magic: &[u8; 8], aligned: bool) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(magic);
        let header = serde_json::to_vec(&want.header_of()).expect("header");
        bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&header);
        for l in want.by_key.values() {
            bytes.extend_from_slice(&(l.ids.serialized_size() as u64).to_le_bytes());
            l.ids.serialize_into(&mut bytes).expect("bitmap");
            if aligned {
                bytes.resize(bytes.len().next_multiple_of(8), 0);
            }
            bytes.extend(l.times.iter().flat_map(|t| t.to_le_bytes()));
        }
        bytes
    }

    /// Files written before the times were aligned, and before they had
    /// buckets, are read too (without buckets).
    #[test]
    fn latest_times_of_earlier_formats_are_read() {
        let want = sample();
        for (magic, aligned) in [(LATEST_MAGIC_1, false), (LATEST_MAGIC_2, true)] {
            let bytes = earlier_format(&want, magic, aligned);
            let got = LatestTimes::decode(&mapped(&bytes)).expect("decoded");
            assert!(got.buckets.is_empty());
            assert_eq!(got, want);
        }
    }
}
