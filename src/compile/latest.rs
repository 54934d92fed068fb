//! Conditions answered from the time of each contact's latest matching event.
//!
//! Whether a contact has an event of some types passing some filter in a
//! window that ends at the instant of the run, and the time of its last
//! such event, depend on its events through one number: the time of its
//! latest matching event. A recompute that keeps its results also keeps
//! that time per contact ([`LatestTimes`]) for each (types, filter) of such
//! conditions, from the earliest instant their windows reach.
//!
//! The next recompute brings those times up to date without reading the
//! history again. It drops the contacts added or deleted since. It folds
//! in, by maximum, the matching rows of the events files it does not
//! reflect: files added since (imports; files rewritten by a deletion or a
//! compaction are read again, which a maximum ignores) and files holding
//! events after its instant. It then answers the conditions for every
//! contact, however far the clock moved, unless it moved back.

use std::collections::BTreeMap;

use roaring::RoaringBitmap;

use crate::base::changes::{Latest, LatestTimes};
use crate::compile::behavior::{BehaviorParts, LeafBits};
use crate::compile::expr::Clock;
use crate::engine::Session;
use crate::error::{Error, Result};

/// The conditions of a batch that share one latest time.
#[derive(Debug, Clone)]
pub struct LatestKey {
    pub key: String,
    /// One of them, for its types and filter.
    pub parts: BehaviorParts,
    /// The earliest instant their windows reach (µs).
    pub lo: i64,
}

impl LatestKey {
    /// The leaf of the events pass that finds these latest times.
    pub fn leaf(&self, clock: &Clock) -> BehaviorParts {
        self.parts.latest(self.lo, clock.as_of_micros())
    }

    /// Whether latest times kept at `as_of` (µs) serve these conditions
    /// now.
    pub fn served_by(&self, kept: &Latest, as_of: i64, clock: &Clock) -> bool {
        as_of <= clock.as_of_micros() && kept.from <= self.lo
    }
}

/// Each latest key of some compiled conditions (`None`: a condition that
/// did not compile, or that depends on more than its latest time).
pub fn latest_keys<'a>(
    parts: impl IntoIterator<Item = Option<&'a BehaviorParts>>,
    clock: &Clock,
) -> (Vec<Option<usize>>, Vec<LatestKey>) {
    let as_of = clock.as_of_micros();
    let mut keys: Vec<LatestKey> = Vec::new();
    let mut of_leaf = Vec::new();
    for p in parts {
        let slot = p.and_then(|p| {
            let key = p.latest_key(as_of)?;
            Some(match keys.iter().position(|k| k.key == key) {
                Some(i) => {
                    keys[i].lo = keys[i].lo.min(p.lo());
                    i
                }
                None => {
                    keys.push(LatestKey {
                        key,
                        parts: p.clone(),
                        lo: p.lo(),
                    });
                    keys.len() - 1
                }
            })
        });
        of_leaf.push(slot);
    }
    (of_leaf, keys)
}

/// The latest times found by the events pass for `keys` (its leaves made
/// by [`LatestKey::leaf`]), as kept for the next run.
pub fn found(
    session: &Session,
    clock: &Clock,
    keys: &[LatestKey],
    bits: Vec<LeafBits>,
) -> LatestTimes {
    LatestTimes {
        as_of: clock.as_of_micros(),
        files: session
            .manifest
            .events
            .iter()
            .map(|e| e.file.path.clone())
            .collect(),
        by_key: keys
            .iter()
            .zip(bits)
            .map(|(k, b)| {
                let latest = Latest {
                    from: k.lo,
                    ids: b.has,
                    times: b.times,
                };
                (k.key.clone(), latest)
            })
            .collect(),
    }
}

impl Session {
    /// Kept latest times brought up to `clock` for `keys` (each served by
    /// its kept times, see [`LatestKey::served_by`]): the contacts of
    /// `presence` (added or deleted since) dropped, and the rows of the
    /// files the kept times do not reflect folded in.
    pub async fn fold_latest(
        &self,
        kept: &LatestTimes,
        presence: &RoaringBitmap,
        keys: &[LatestKey],
        clock: &Clock,
    ) -> Result<Vec<Latest>> {
        let known: std::collections::HashSet<&str> =
            kept.files.iter().map(String::as_str).collect();
        let unread: Vec<usize> = self
            .manifest
            .events
            .iter()
            .enumerate()
            .filter(|(_, e)| !known.contains(e.file.path.as_str()) || e.max_ts > kept.as_of)
            .map(|(i, _)| i)
            .collect();
        let new = if unread.is_empty() {
            vec![LeafBits::default(); keys.len()]
        } else {
            let leaves: Vec<BehaviorParts> = keys.iter().map(|k| k.leaf(clock)).collect();
            self.behavior_pass(&leaves, clock, None, Some(&unread))
                .await?
        };
        keys.iter()
            .zip(new)
            .map(|(k, new)| {
                let old = kept.by_key.get(&k.key).ok_or_else(|| {
                    Error::Internal(format!("no latest times kept for {}", k.key))
                })?;
                merge(old, presence, k.lo, new)
            })
            .collect()
    }
}

/// Kept latest times without the contacts of `presence` and the times
/// before `from`, with newly found ones folded in by maximum.
fn merge(old: &Latest, presence: &RoaringBitmap, from: i64, new: LeafBits) -> Result<Latest> {
    let mut by_id: BTreeMap<u32, i64> = BTreeMap::new();
    for (id, t) in new.has.iter().zip(new.times) {
        by_id.insert(id, t);
    }
    let mut ids = Vec::with_capacity(old.times.len() + by_id.len());
    let mut times = Vec::with_capacity(ids.capacity());
    let mut fresh = by_id.into_iter().peekable();
    let mut push = |id: u32, t: i64| {
        if t >= from {
            ids.push(id);
            times.push(t);
        }
    };
    for (id, &t) in old.ids.iter().zip(&old.times) {
        while let Some(&(nid, nt)) = fresh.peek().filter(|(nid, _)| *nid < id) {
            push(nid, nt);
            fresh.next();
        }
        // A contact added or deleted since has no kept events.
        let gone = presence.contains(id);
        let t = match fresh.peek() {
            Some(&(nid, nt)) if nid == id => {
                fresh.next();
                if gone { nt } else { t.max(nt) }
            }
            _ if gone => continue,
            _ => t,
        };
        push(id, t);
    }
    for (nid, nt) in fresh {
        push(nid, nt);
    }
    let ids = RoaringBitmap::from_sorted_iter(ids)
        .map_err(|e| Error::Internal(format!("latest times: {e}")))?;
    Ok(Latest { from, ids, times })
}
