//! The manifest: the one JSON document that names every file of a version
//! of the base. Versions are published atomically (temp file, fsync, rename,
//! fsync directory); the newest complete manifest is the current state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::base::schema::FieldDef;
use crate::error::{Error, Result};

pub const MANIFEST_DIR: &str = "manifests";
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub version: u64,
    pub written_at: DateTime<Utc>,
    /// What wrote this version (`import contacts x.csv`, `recompute`...).
    pub written_by: String,
    /// The next internal id to hand out; ids are never reused.
    pub next_iid: u32,
    /// Contacts: one Parquet file ordered by internal id (None while empty).
    pub contacts: Option<DataFile>,
    /// The contacts file's dates and times, ordered by value
    /// ([`crate::base::times`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contact_times: Vec<crate::base::times::TimeIndex>,
    /// The contacts file's ids, ordered by `contact_id`
    /// ([`crate::base::id_index`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_ids: Option<crate::base::id_index::IdIndex>,
    /// Bitmap of every live internal id.
    pub all_contacts: Option<DataFile>,
    pub contact_count: u64,
    /// Contact fields, in column order (without `_iid` and `contact_id`).
    pub fields: Vec<FieldDef>,
    /// Event columns beyond `_iid` and `contact_id`, in column order.
    pub event_columns: Vec<FieldDef>,
    /// Event files, partitioned by month of `ts` and sorted by (`_iid`, `ts`).
    pub events: Vec<EventFile>,
    pub imports: Vec<ImportRecord>,
    pub segments: Vec<SegmentRecord>,
    /// Reports of the last recompute runs, newest last.
    #[serde(default)]
    pub runs: Vec<DataFile>,
    /// The results of every condition of the last recompute of all active
    /// segments, which the next one patches (see `base::changes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaves: Option<KeptLeaves>,
    /// What each import or deletion since `leaves` changed, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
}

/// Condition results kept for the next recompute.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeptLeaves {
    /// The version whose data they reflect.
    pub version: u64,
    /// The instant they were computed as of.
    pub as_of: DateTime<Utc>,
    /// One bitmap per condition, tagged by its position in `keys`.
    pub bitmaps: DataFile,
    /// When the results were written as their changes from `bitmaps`
    /// (written by an earlier run): for each condition whose result
    /// differs, by the same tags, the contacts for which it does (each
    /// result is its bitmap there XOR this one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<DataFile>,
    /// JSON: the conditions and the settings they were compiled under.
    pub keys: DataFile,
    /// The latest times of matching events per contact (see
    /// [`crate::base::changes::LatestTimes`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<DataFile>,
    /// The events files imports added since those latest times were
    /// written, which they do not reflect: all their rows are new to them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latest_imported: Vec<String>,
    /// The segments the run that kept them stored, by id, with what their
    /// members were computed from and are held in, as they stood after it
    /// ([`crate::base::members::stored_as`]). While a segment's stands,
    /// its members are these conditions' trees.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub segments: BTreeMap<String, String>,
}

/// The contacts one import or deletion changed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Change {
    pub version: u64,
    /// Bitmaps: contacts whose fields changed (added, updated, deleted),
    /// contacts added or deleted, contacts with new or deleted events.
    pub contacts: DataFile,
    /// The event types of the new events (None: any type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<String>>,
    /// The events files an import added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// The rows, as stored after it, of the contacts an import added or
    /// updated, when they are few (see [`crate::base::changes::Dirty::rows`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<DataFile>,
}

/// A file of the base, relative to its directory, with its size and checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    pub path: String,
    pub bytes: u64,
    pub crc32: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventFile {
    pub file: DataFile,
    /// `YYYY-MM` of every `ts` in the file.
    pub month: String,
    pub rows: u64,
    pub min_ts: i64,
    pub max_ts: i64,
    /// Rows sorted by type, then internal id and time, each type's rows in
    /// row groups of their own (false: by id and time, types mixed).
    #[serde(default)]
    pub by_type: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportRecord {
    pub id: String,
    pub name: String,
    pub kind: ImportKind,
    pub at: DateTime<Utc>,
    pub file: String,
    pub rows_added: u64,
    pub rows_updated: u64,
    #[serde(default)]
    pub rows_skipped: u64,
    /// Contacts touched by the import.
    pub contacts: DataFile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportKind {
    Contacts,
    Events,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentRecord {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The criteria of a dynamic segment; None for a static segment.
    pub criteria: Option<serde_json::Value>,
    pub paused: bool,
    pub status: SegmentStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Set when an import changed data and the segment was not recomputed.
    #[serde(default)]
    pub needs_refresh: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<SegmentStats>,
    /// Members and entry cohorts, as of a computation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<DataFile>,
    /// The entries and exits of the computations since that one, oldest
    /// first: the members are the file's with them applied
    /// ([`crate::base::members::Members::load`]). A computation that changes
    /// few members writes its entries and exits only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members_since: Vec<MembersChange>,
    /// One point per computation that changed or confirmed the members.
    #[serde(default)]
    pub history: History,
}

/// The entries and exits of one computation of a segment, applied to its
/// members file when it is read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MembersChange {
    /// When the entries entered (their cohort).
    pub at: DateTime<Utc>,
    /// Bitmaps of the entries and exits (the history point's file).
    pub delta: DataFile,
}

/// The history of a segment. A base recomputed every night holds years of
/// it, which most commands never look at: it is kept as the manifest's
/// JSON text when the manifest is read, and parsed when first used.
#[derive(Debug, Clone, Default)]
pub struct History {
    raw: Option<Box<serde_json::value::RawValue>>,
    points: Vec<HistoryPoint>,
}

impl History {
    /// The points, oldest first.
    pub fn points(&self, dir: &Path) -> Result<std::borrow::Cow<'_, [HistoryPoint]>> {
        Ok(match &self.raw {
            None => std::borrow::Cow::Borrowed(&self.points),
            Some(raw) => std::borrow::Cow::Owned(parse_history(dir, raw)?),
        })
    }

    /// The points, to change them or add one.
    pub fn points_mut(&mut self, dir: &Path) -> Result<&mut Vec<HistoryPoint>> {
        if let Some(raw) = self.raw.take() {
            self.points = parse_history(dir, &raw)?;
        }
        Ok(&mut self.points)
    }

    /// The bitmaps of entries and exits the points refer to.
    pub fn deltas(&self, dir: &Path) -> Result<Vec<DataFile>> {
        /// A point as far as its files go: the rest is not parsed.
        #[derive(Deserialize)]
        struct Delta {
            #[serde(default)]
            delta: Option<DataFile>,
        }
        Ok(match &self.raw {
            None => self.points.iter().filter_map(|p| p.delta.clone()).collect(),
            Some(raw) => serde_json::from_str::<Vec<Delta>>(raw.get())
                .map_err(|e| Error::base(dir, format!("damaged segment history: {e}")))?
                .into_iter()
                .filter_map(|p| p.delta)
                .collect(),
        })
    }
}

fn parse_history(dir: &Path, raw: &serde_json::value::RawValue) -> Result<Vec<HistoryPoint>> {
    serde_json::from_str(raw.get())
        .map_err(|e| Error::base(dir, format!("damaged segment history: {e}")))
}

impl Serialize for History {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match &self.raw {
            Some(raw) => raw.serialize(s),
            None => self.points.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for History {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(History {
            raw: Some(Deserialize::deserialize(d)?),
            points: Vec::new(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegmentStatus {
    Computing,
    UpToDate,
    Failed,
    Paused,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentStats {
    pub contacts: u64,
    pub email_optins: u64,
    pub sms_optins: u64,
    pub computed_at: DateTime<Utc>,
    pub as_of: DateTime<Utc>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryPoint {
    pub at: DateTime<Utc>,
    pub as_of: DateTime<Utc>,
    pub size: u64,
    pub entries: u64,
    pub exits: u64,
    /// Bitmaps of the entries and exits of that computation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<DataFile>,
}

/// Bound the detail of a history to `days` (0: every detail kept), counted
/// back from `now`, the time (`as_of`) of its newest computation: older
/// points lose their entry and exit bitmaps (whose files are then no longer
/// referenced), and the old points of one day (in `tz`) that follow each
/// other become one, with the day's last size and its entries and exits
/// summed.
pub fn bound_history(points: &mut Vec<HistoryPoint>, now: DateTime<Utc>, days: u32, tz: Tz) {
    if days == 0 {
        return;
    }
    let horizon = now - chrono::Duration::days(days as i64);
    if points.iter().all(|p| p.as_of >= horizon) {
        return;
    }
    let day = |t: DateTime<Utc>| t.with_timezone(&tz).date_naive();
    let mut kept: Vec<HistoryPoint> = Vec::with_capacity(points.len());
    for mut p in points.drain(..) {
        if p.as_of >= horizon {
            kept.push(p);
            continue;
        }
        p.delta = None;
        match kept.last_mut() {
            Some(last) if last.as_of < horizon && day(last.as_of) == day(p.as_of) => {
                last.entries += p.entries;
                last.exits += p.exits;
                last.at = p.at;
                last.as_of = p.as_of;
                last.size = p.size;
            }
            _ => kept.push(p),
        }
    }
    *points = kept;
}

/// The problems of a history against its bound (see [`bound_history`]): an
/// old point that keeps its bitmaps, or two old points of one day in a row.
pub fn history_problems(points: &[HistoryPoint], days: u32, tz: Tz) -> Vec<String> {
    let Some(now) = points.last().map(|p| p.as_of) else {
        return Vec::new();
    };
    if days == 0 {
        return Vec::new();
    }
    let horizon = now - chrono::Duration::days(days as i64);
    let old = |p: &HistoryPoint| p.as_of < horizon;
    let day = |p: &HistoryPoint| p.as_of.with_timezone(&tz).date_naive();
    let mut problems = Vec::new();
    if points.iter().any(|p| old(p) && p.delta.is_some()) {
        problems.push(format!(
            "history older than {days} days keeps entry and exit bitmaps"
        ));
    }
    if points
        .windows(2)
        .any(|w| old(&w[0]) && old(&w[1]) && day(&w[0]) == day(&w[1]))
    {
        problems.push(format!(
            "history older than {days} days has more than one point a day"
        ));
    }
    problems
}

impl Manifest {
    pub fn empty() -> Manifest {
        Manifest {
            format: FORMAT,
            version: 0,
            written_at: Utc::now(),
            written_by: "init".into(),
            next_iid: 0,
            contacts: None,
            contact_times: Vec::new(),
            contact_ids: None,
            all_contacts: None,
            contact_count: 0,
            fields: Vec::new(),
            event_columns: crate::base::schema::standard_event_columns(),
            events: Vec::new(),
            imports: Vec::new(),
            segments: Vec::new(),
            runs: Vec::new(),
            leaves: None,
            changes: Vec::new(),
        }
    }

    /// Every data file this version refers to (`dir`, the base's, names it
    /// in errors).
    pub fn files(&self, dir: &Path) -> Result<Vec<DataFile>> {
        let mut out: Vec<DataFile> = Vec::new();
        out.extend(self.contacts.iter().cloned());
        out.extend(self.contact_times.iter().map(|t| t.file.clone()));
        out.extend(self.contact_ids.iter().map(|t| t.file.clone()));
        out.extend(self.all_contacts.iter().cloned());
        out.extend(self.events.iter().map(|e| e.file.clone()));
        out.extend(self.imports.iter().map(|i| i.contacts.clone()));
        for s in &self.segments {
            out.extend(s.members.iter().cloned());
            out.extend(s.members_since.iter().map(|c| c.delta.clone()));
            out.extend(s.history.deltas(dir)?);
        }
        out.extend(self.runs.iter().cloned());
        if let Some(l) = &self.leaves {
            out.extend([l.bitmaps.clone(), l.keys.clone()]);
            out.extend(l.changes.clone());
            out.extend(l.latest.clone());
        }
        for c in &self.changes {
            out.push(c.contacts.clone());
            out.extend(c.rows.clone());
        }
        Ok(out)
    }

    pub fn segment(&self, key: &str) -> Option<&SegmentRecord> {
        self.segments
            .iter()
            .find(|s| s.id == key)
            .or_else(|| self.segments.iter().find(|s| s.name == key))
    }

    /// The type of a contact field: the base's own field, else its
    /// declaration in the configuration, else the SPEC's recognised column
    /// (known before any import brings it, so that the default segments
    /// hold on an empty base).
    pub fn contact_field_type(
        &self,
        config: &crate::base::config::Config,
        name: &str,
    ) -> Option<crate::base::schema::FieldType> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.ty.clone())
            .or_else(|| config.fields.get(name).cloned())
            .or_else(|| crate::base::schema::recognised_contact_field(name))
    }

    /// The segment with this id or name, or [`Error::UnknownSegment`].
    pub fn find_segment(&self, key: &str) -> Result<&SegmentRecord> {
        self.segment(key).ok_or_else(|| Error::UnknownSegment {
            key: key.to_string(),
        })
    }

    /// The same, to change it.
    pub fn find_segment_mut(&mut self, key: &str) -> Result<&mut SegmentRecord> {
        self.segment_mut(key).ok_or_else(|| Error::UnknownSegment {
            key: key.to_string(),
        })
    }

    pub fn segment_mut(&mut self, key: &str) -> Option<&mut SegmentRecord> {
        let idx = self
            .segments
            .iter()
            .position(|s| s.id == key)
            .or_else(|| self.segments.iter().position(|s| s.name == key))?;
        Some(&mut self.segments[idx])
    }

    pub fn import(&self, key: &str) -> Option<&ImportRecord> {
        self.imports
            .iter()
            .find(|s| s.id == key)
            .or_else(|| self.imports.iter().find(|s| s.name == key))
    }
}

pub fn manifest_path(dir: &Path, version: u64) -> PathBuf {
    dir.join(MANIFEST_DIR).join(format!("{version:020}.json"))
}

/// The versions of every manifest present, ascending.
pub fn list_versions(dir: &Path) -> Result<Vec<u64>> {
    let mdir = dir.join(MANIFEST_DIR);
    let entries = std::fs::read_dir(&mdir).map_err(|e| Error::io(&mdir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&mdir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(v) = name
            .strip_suffix(".json")
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push(v);
        }
    }
    out.sort_unstable();
    Ok(out)
}

pub fn read_manifest(dir: &Path, version: u64) -> Result<Manifest> {
    let path = manifest_path(dir, version);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    parse_manifest(dir, version, &path, &bytes)
}

/// What tells a manifest file's contents apart without reading them. A
/// published manifest is never written again in place: each version is
/// written to a temporary file and renamed into place, so the same file
/// (device and inode) with the same size and modification time holds the
/// same bytes. A base deleted and created again in the same folder numbers
/// its versions from the start again, in new files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    device: u64,
    inode: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        #[cfg(unix)]
        let (device, inode) = {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        };
        #[cfg(not(unix))]
        let (device, inode) = (0, 0);
        Stamp {
            device,
            inode,
            len: meta.len(),
            modified: meta.modified().ok(),
        }
    }
}

/// A manifest file's path, what identifies its contents (its stamp and
/// its first bytes), and the manifest parsed from them.
type Parsed = (PathBuf, Stamp, Vec<u8>, Arc<Manifest>);
/// Manifests last read by [`read_manifest_again`], most recent first.
static RECENT_MANIFESTS: Mutex<Vec<Parsed>> = Mutex::new(Vec::new());
const RECENT_MANIFESTS_KEPT: usize = 4;
/// The first bytes of a manifest, compared as well: they hold the time it
/// was written, to the nanosecond, which tells apart two files that a
/// file system's coarse clock and a reused inode number would not.
const HEAD: usize = 256;

/// The same as [`read_manifest`], for a process that reads the same
/// version over and over (a server or a bench takes a snapshot per query):
/// a manifest holds every segment with its history (megabytes on a base
/// recomputed for months), and reading and parsing it was a tenth of a
/// small preview. The parsed manifest is reused while the file opened is
/// the one parsed before: same [`Stamp`] (taken from the open file, so the
/// bytes and the stamp belong together) and same first bytes.
pub fn read_manifest_again(dir: &Path, version: u64) -> Result<Arc<Manifest>> {
    use std::io::Read;
    let path = manifest_path(dir, version);
    let mut file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    let stamp = Stamp::of(&file.metadata().map_err(|e| Error::io(&path, e))?);
    let mut bytes = Vec::with_capacity(HEAD);
    (&mut file)
        .take(HEAD as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(&path, e))?;
    let recent = || RECENT_MANIFESTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((.., m)) = recent()
        .iter()
        .find(|(p, s, head, _)| *p == path && *s == stamp && *head == bytes)
    {
        return Ok(m.clone());
    }
    let head = bytes.clone();
    bytes.reserve((stamp.len as usize).saturating_sub(bytes.len()));
    file.read_to_end(&mut bytes)
        .map_err(|e| Error::io(&path, e))?;
    let m = Arc::new(parse_manifest(dir, version, &path, &bytes)?);
    let mut kept = recent();
    kept.retain(|(p, ..)| *p != path);
    kept.insert(0, (path, stamp, head, m.clone()));
    kept.truncate(RECENT_MANIFESTS_KEPT);
    Ok(m)
}

fn parse_manifest(dir: &Path, version: u64, path: &Path, bytes: &[u8]) -> Result<Manifest> {
    let m: Manifest = serde_json::from_slice(bytes)
        .map_err(|e| Error::base(dir, format!("damaged manifest {}: {e}", path.display())))?;
    if m.format != FORMAT {
        return Err(Error::base(
            dir,
            format!(
                "manifest format {} is not supported (expected {FORMAT})",
                m.format
            ),
        ));
    }
    if m.version != version {
        return Err(Error::base(
            dir,
            format!("manifest {} says version {}", path.display(), m.version),
        ));
    }
    Ok(m)
}

/// Ids are lower-case letters, digits, `-` and `_`.
pub fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().flat_map(|c| c.to_lowercase()) {
        let c = match c {
            'à' | 'á' | 'â' | 'ä' | 'ã' | 'å' => 'a',
            'ç' => 'c',
            'è' | 'é' | 'ê' | 'ë' => 'e',
            'ì' | 'í' | 'î' | 'ï' => 'i',
            'ò' | 'ó' | 'ô' | 'ö' | 'õ' => 'o',
            'ù' | 'ú' | 'û' | 'ü' => 'u',
            'ÿ' => 'y',
            'ñ' => 'n',
            c => c,
        };
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_matches('-').to_string();
    if out.is_empty() {
        "segment".into()
    } else {
        out.chars().take(64).collect()
    }
}

pub fn check_id(id: &str) -> std::result::Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid id {id:?}: use 1 to 64 lower-case letters, digits, '-' or '_'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POINTS: &str = r#"[{"at":"2026-11-01T03:00:00Z","as_of":"2026-11-01T03:00:00Z","size":3,"entries":3,"exits":0,"delta":{"path":"bitmaps/delta-a-v2-1.bm","bytes":40,"crc32":7}},{"at":"2026-11-02T03:00:00Z","as_of":"2026-11-02T03:00:00Z","size":3,"entries":0,"exits":0}]"#;

    /// A version read again is parsed once; a base deleted and created
    /// again in the same folder, whose version 0 is another file, is read
    /// anew, as is a file changed in place.
    #[test]
    fn a_manifest_read_again_is_parsed_again_only_when_its_file_changed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("base");
        let write = |by: &str| {
            std::fs::create_dir_all(dir.join(MANIFEST_DIR)).unwrap();
            let mut m = Manifest::empty();
            m.written_by = by.into();
            let bytes = serde_json::to_vec_pretty(&m).unwrap();
            crate::base::store::write_atomic(&manifest_path(&dir, 0), &bytes).unwrap();
        };
        // Names of one length: the files differ by their inode and
        // their first bytes.
        write("first!");
        let a = read_manifest_again(&dir, 0).unwrap();
        let b = read_manifest_again(&dir, 0).unwrap();
        assert_eq!(a.written_by, "first!");
        assert!(Arc::ptr_eq(&a, &b), "parsed again although unchanged");

        std::fs::remove_dir_all(&dir).unwrap();
        write("second");
        assert_eq!(read_manifest_again(&dir, 0).unwrap().written_by, "second");

        // Written in place (never done by a writer): another length.
        let path = manifest_path(&dir, 0);
        let mut m = Manifest::empty();
        m.written_by = "third, longer".into();
        std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
        assert_eq!(
            read_manifest_again(&dir, 0).unwrap().written_by,
            "third, longer"
        );
    }

    #[test]
    fn history_is_read_when_used_and_written_back_as_it_was() {
        let dir = Path::new("base");
        let h: History = serde_json::from_str(POINTS).unwrap();
        // Not touched: written back verbatim.
        assert_eq!(serde_json::to_string(&h).unwrap(), POINTS);
        let points = h.points(dir).unwrap();
        assert_eq!(
            points.iter().map(|p| p.size).collect::<Vec<_>>(),
            vec![3, 3]
        );
        let deltas = h.deltas(dir).unwrap();
        assert_eq!(deltas.len(), 1);
        assert_eq!(deltas[0].path, "bitmaps/delta-a-v2-1.bm");
        // Changed: parsed once, then written from the points.
        let at = points[1].at;
        drop(points);
        let mut h = h;
        h.points_mut(dir).unwrap().push(HistoryPoint {
            at,
            as_of: at,
            size: 4,
            entries: 1,
            exits: 0,
            delta: None,
        });
        let again: History = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
        let sizes: Vec<u64> = again.points(dir).unwrap().iter().map(|p| p.size).collect();
        assert_eq!(sizes, vec![3, 3, 4]);
        assert_eq!(again.deltas(dir).unwrap(), deltas);
    }

    #[test]
    fn a_damaged_history_is_an_error_of_the_base() {
        let dir = Path::new("base");
        let h: History = serde_json::from_str(r#"[{"at":"yesterday"}]"#).unwrap();
        for e in [
            h.points(dir).map(|_| ()).unwrap_err(),
            h.clone().points_mut(dir).map(|_| ()).unwrap_err(),
        ] {
            let text = e.to_string();
            assert!(
                text.contains("base base: damaged segment history"),
                "{text}"
            );
        }
        let h: History = serde_json::from_str(r#"[{"delta":7}]"#).unwrap();
        assert!(h.deltas(dir).is_err());
    }

    /// Points at `as_of` times (RFC 3339), each with a delta file, and its
    /// size, entries and exits.
    fn points(at: &[(&str, u64, u64, u64)]) -> Vec<HistoryPoint> {
        at.iter()
            .enumerate()
            .map(|(i, &(t, size, entries, exits))| {
                let t: DateTime<Utc> = t.parse().unwrap();
                HistoryPoint {
                    at: t,
                    as_of: t,
                    size,
                    entries,
                    exits,
                    delta: Some(DataFile {
                        path: format!("bitmaps/delta-{i}.bm"),
                        bytes: 1,
                        crc32: 0,
                    }),
                }
            })
            .collect()
    }

    #[test]
    fn history_beyond_its_days_keeps_one_point_a_day_without_bitmaps() {
        let tz: Tz = "Europe/Paris".parse().unwrap();
        let mut h = points(&[
            ("2026-01-01T09:00:00Z", 10, 10, 0),
            ("2026-01-01T21:00:00Z", 12, 3, 1),
            // 23:30 UTC is the next day in Paris.
            ("2026-01-01T23:30:00Z", 11, 0, 1),
            ("2026-01-03T09:00:00Z", 15, 4, 0),
            ("2026-01-09T09:00:00Z", 14, 0, 1),
            ("2026-01-09T10:00:00Z", 16, 2, 0),
            ("2026-01-10T09:00:00Z", 16, 0, 0),
        ]);
        assert_eq!(history_problems(&h, 0, tz), Vec::<String>::new());
        assert_eq!(history_problems(&h, 3, tz).len(), 2);
        let now = h.last().unwrap().as_of;
        bound_history(&mut h, now, 3, tz);
        let seen: Vec<(String, u64, u64, u64, bool)> = h
            .iter()
            .map(|p| {
                (
                    p.as_of.to_rfc3339(),
                    p.size,
                    p.entries,
                    p.exits,
                    p.delta.is_some(),
                )
            })
            .collect();
        let row =
            |t: &str, size, entries, exits, delta| (t.to_string(), size, entries, exits, delta);
        assert_eq!(
            seen,
            vec![
                row("2026-01-01T21:00:00+00:00", 12, 13, 1, false),
                row("2026-01-01T23:30:00+00:00", 11, 0, 1, false),
                row("2026-01-03T09:00:00+00:00", 15, 4, 0, false),
                row("2026-01-09T09:00:00+00:00", 14, 0, 1, true),
                row("2026-01-09T10:00:00+00:00", 16, 2, 0, true),
                row("2026-01-10T09:00:00+00:00", 16, 0, 0, true),
            ]
        );
        assert_eq!(history_problems(&h, 3, tz), Vec::<String>::new());
        // Bounding again changes nothing; 0 days keeps every detail.
        let again = h.clone();
        bound_history(&mut h, now, 3, tz);
        assert_eq!(format!("{h:?}"), format!("{again:?}"));
        let mut all = points(&[
            ("2020-01-01T00:00:00Z", 1, 1, 0),
            ("2026-01-01T00:00:00Z", 1, 0, 0),
        ]);
        bound_history(&mut all, now, 0, tz);
        assert!(all.iter().all(|p| p.delta.is_some()));
    }
}
