//! What changed since the conditions of the segments were last computed.
//!
//! A recompute of every active segment keeps the bitmap of each of its
//! conditions ([`KeptLeaves`]) with the version and the instant they
//! reflect. Every import and deletion after it records the contacts it
//! changed ([`Change`]). The next recompute evaluates a condition again only
//! for the contacts whose data changed, or whose events or dates crossed one
//! of the condition's moving time boundaries, and keeps the earlier result
//! for every other contact (see [`crate::compile::fresh`]).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::base::bitmaps::TaggedBitmaps;
use crate::base::manifest::{Change, KeptLeaves, Manifest};
use crate::base::store::read_checked;
use crate::base::{Base, Writer};
use crate::error::{Error, Result};

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
}

impl Dirty {
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

/// The `keys` file of kept results.
#[derive(Serialize, Deserialize)]
struct Keys {
    settings: Value,
    keys: Vec<String>,
}

/// Kept condition results and what changed since.
#[derive(Debug)]
pub struct Kept {
    pub version: u64,
    pub as_of: DateTime<Utc>,
    /// Bitmap of each condition, by key.
    pub results: HashMap<String, RoaringBitmap>,
    pub dirty: Dirty,
}

/// Why kept results cannot serve, or the results.
pub enum Earlier {
    Kept(Kept),
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
    if keys.settings != settings(base, m) {
        return Ok(Earlier::None(
            "the time zone, field types or event columns changed".into(),
        ));
    }
    let bitmaps = TaggedBitmaps::read(dir, &l.bitmaps)?;
    let mut results = HashMap::with_capacity(keys.keys.len());
    let mut by_tag: HashMap<i64, RoaringBitmap> = bitmaps.0.into_iter().collect();
    for (i, key) in keys.keys.into_iter().enumerate() {
        if let Some(bm) = by_tag.remove(&(i as i64)) {
            results.insert(key, bm);
        }
    }
    let mut dirty = Dirty::default();
    for c in m.changes.iter().filter(|c| c.version > l.version) {
        let t = TaggedBitmaps::read(dir, &c.contacts)?;
        dirty.fields |= t.get(FIELDS);
        dirty.presence |= t.get(PRESENCE);
        dirty.events.push((c.types.clone(), t.get(EVENTS)));
    }
    Ok(Earlier::Kept(Kept {
        version: l.version,
        as_of: l.as_of,
        results,
        dirty,
    }))
}

/// Keep the condition results of a recompute of every active segment for
/// the next one; the changes they include are dropped.
pub fn keep(
    w: &mut Writer,
    as_of: DateTime<Utc>,
    results: Vec<(String, RoaringBitmap)>,
) -> Result<()> {
    use std::io::Write;
    let (keys, bitmaps): (Vec<String>, Vec<RoaringBitmap>) = results.into_iter().unzip();
    let bitmaps = TaggedBitmaps(
        bitmaps
            .into_iter()
            .enumerate()
            .map(|(i, b)| (i as i64, b))
            .collect(),
    )
    .write(w, "leaves")?;
    let doc = Keys {
        settings: settings(&w.base, &w.next),
        keys,
    };
    let mut sink = w.new_file("bitmaps", "leaves", "json")?;
    sink.write_all(&serde_json::to_vec(&doc).expect("keys serialize"))
        .map_err(|e| Error::io(sink.path(), e))?;
    let keys = sink.finish()?;
    w.next.leaves = Some(KeptLeaves {
        version: w.next.version,
        as_of,
        bitmaps,
        keys,
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
