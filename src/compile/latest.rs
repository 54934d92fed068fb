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
//! events after its instant. It then answers the conditions, however far
//! the clock moved, unless it moved back: for every contact, or, from a
//! condition's kept result, for the contacts whose times changed and those
//! with a time in the bands of time its window's ends swept ([`Patch`]).

use std::collections::HashSet;

use roaring::RoaringBitmap;

use crate::base::changes::{Latest, LatestTimes};
use crate::compile::behavior::{BehaviorParts, LeafBits};
use crate::compile::expr::Clock;
use crate::engine::Session;
use crate::engine::udf::Bands;
use crate::error::{Error, Result};

/// The conditions of a batch that share their latest times.
#[derive(Debug, Clone)]
pub struct LatestKey {
    pub key: String,
    /// One of them, for its types and filter.
    pub parts: BehaviorParts,
    /// The earliest instant their windows reach (µs).
    pub lo: i64,
    /// The most latest times one of them needs.
    pub slots: usize,
}

impl LatestKey {
    /// The leaf of the events pass that finds these latest times.
    pub fn leaf(&self, clock: &Clock) -> BehaviorParts {
        self.parts.latest(self.lo, clock.as_of_micros(), self.slots)
    }

    /// Whether latest times kept at `as_of` (µs) serve these conditions
    /// now, when the files they do not reflect are `unread`.
    pub fn served_by(&self, kept: &Latest, as_of: i64, clock: &Clock, unread: &Unread) -> bool {
        as_of <= clock.as_of_micros()
            && kept.from <= self.lo
            && kept.slots >= self.slots
            // More than one time per contact: a row read twice would count
            // twice.
            && (kept.slots == 1 || unread.only_new_rows)
    }
}

/// The events files kept latest times do not reflect, or not wholly
/// (positions in the snapshot's `events`).
#[derive(Debug, Default)]
pub struct Unread {
    /// Files added since.
    pub added: Vec<usize>,
    /// Files the kept times reflect up to their instant, holding events
    /// after it.
    pub later: Vec<usize>,
    /// Whether the rows of the files added since are all new to the kept
    /// times: files imports added. Files rewritten (a deletion, a
    /// compaction) hold rows the kept times reflect.
    pub only_new_rows: bool,
}

impl Unread {
    pub fn of(session: &Session, kept: &LatestTimes, imported: &[String]) -> Unread {
        let known: HashSet<&str> = kept.files.iter().map(String::as_str).collect();
        let imported: HashSet<&str> = imported.iter().map(String::as_str).collect();
        let mut out = Unread {
            only_new_rows: true,
            ..Unread::default()
        };
        for (i, e) in session.manifest.events.iter().enumerate() {
            let path = e.file.path.as_str();
            if !known.contains(path) {
                out.added.push(i);
                out.only_new_rows &= imported.contains(path);
            } else if e.max_ts > kept.as_of {
                out.later.push(i);
            }
        }
        out
    }
}

/// Each latest key of some compiled conditions (`None`: a condition that
/// did not compile, or that depends on more than its latest times).
pub fn latest_keys<'a>(
    parts: impl IntoIterator<Item = Option<&'a BehaviorParts>>,
    clock: &Clock,
) -> (Vec<Option<usize>>, Vec<LatestKey>) {
    let as_of = clock.as_of_micros();
    let mut keys: Vec<LatestKey> = Vec::new();
    let mut of_leaf = Vec::new();
    for p in parts {
        let slot = p.and_then(|p| {
            let (key, slots) = p.latest_key(as_of)?;
            Some(match keys.iter().position(|k| k.key == key) {
                Some(i) => {
                    keys[i].lo = keys[i].lo.min(p.lo());
                    keys[i].slots = keys[i].slots.max(slots);
                    i
                }
                None => {
                    keys.push(LatestKey {
                        key,
                        parts: p.clone(),
                        lo: p.lo(),
                        slots,
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
                    slots: k.slots,
                    times: b.times.into(),
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
    /// `unread` files folded in: every matching row of the files added
    /// since, and the rows after the kept instant of the others.
    pub async fn fold_latest(
        &self,
        kept: &LatestTimes,
        presence: &RoaringBitmap,
        keys: &[LatestKey],
        unread: &Unread,
        clock: &Clock,
    ) -> Result<Vec<Folded>> {
        let olds = keys
            .iter()
            .map(|k| {
                kept.by_key
                    .get(&k.key)
                    .ok_or_else(|| Error::Internal(format!("no latest times kept for {}", k.key)))
            })
            .collect::<Result<Vec<&Latest>>>()?;
        // Each key keeps as many times as it kept before. Rows are read from
        // the kept times' earliest instant on, so that the contacts with
        // rows read (`touched`) are all those whose times, as a kept result
        // computed from these files saw them, differ from the kept ones
        // (rows before the key's earliest instant now are then dropped).
        let scan = |files: &[usize], after: i64| {
            let leaves: Vec<BehaviorParts> = keys
                .iter()
                .zip(&olds)
                .map(|(k, old)| {
                    let lo = k.lo.min(old.from).max(after);
                    k.parts.latest(lo, clock.as_of_micros(), old.slots)
                })
                .collect();
            let files = files.to_vec();
            async move {
                if files.is_empty() {
                    Ok(vec![LeafBits::default(); leaves.len()])
                } else {
                    self.behavior_pass(&leaves, clock, None, Some(&files)).await
                }
            }
        };
        let added = scan(&unread.added, i64::MIN).await?;
        let later = scan(&unread.later, kept.as_of.saturating_add(1)).await?;
        let none = RoaringBitmap::new();
        // Keys in parallel: each merge copies its key's times.
        use rayon::prelude::*;
        keys.par_iter()
            .zip(olds)
            .zip(added.into_par_iter().zip(later))
            .map(|((k, old), (added, later))| {
                let touched = &added.has | &later.has;
                let folded = merge(old, presence, k.lo, added)?;
                let times = if later.has.is_empty() {
                    folded
                } else {
                    merge(&folded, &none, k.lo, later)?
                };
                Ok(Folded { times, touched })
            })
            .collect()
    }
}

/// About how many ids one walk of a bitmap steps through in the time of a
/// `rank` or a `select` (each sums the sizes of the containers before its
/// own, then counts bits within it: perf put a run's dirty contacts of
/// 29 conditions, looked up at 64, at 0.6 s of one core).
const RANK_COST: u64 = 256;

/// The ids at `positions` (ascending) of a bitmap's ids: by `select` for a
/// few, else by one walk.
fn ids_at(ids: &RoaringBitmap, positions: Vec<u32>) -> RoaringBitmap {
    if (positions.len() as u64).saturating_mul(RANK_COST) < ids.len() {
        let found = positions.into_iter().filter_map(|p| ids.select(p));
        return RoaringBitmap::from_sorted_iter(found).expect("positions in order");
    }
    let mut found = Vec::with_capacity(positions.len());
    let mut wanted = positions.into_iter().peekable();
    for (at, id) in ids.iter().enumerate() {
        match wanted.peek() {
            None => break,
            Some(&p) if p as usize == at => {
                found.push(id);
                wanted.next();
            }
            Some(_) => {}
        }
    }
    RoaringBitmap::from_sorted_iter(found).expect("positions in order")
}

/// Latest times brought up to date, and the contacts with rows read.
pub struct Folded {
    pub times: Latest,
    /// Contacts with matching rows in the files read: the only ones,
    /// with the contacts added or deleted, whose times may have changed.
    pub touched: RoaringBitmap,
}

/// Answering a condition from latest times for the contacts whose answer
/// may have changed since its kept result only.
pub struct Patch<'a> {
    /// The times now.
    pub now: &'a Latest,
    /// Contacts whose times may have changed: with rows read, added or
    /// deleted.
    pub touched: &'a RoaringBitmap,
    /// Contacts with a kept time in one of the bands of time the
    /// condition's window ends and its `first`/`last` instants swept since
    /// the kept result ([`in_bands`]).
    pub in_bands: &'a RoaringBitmap,
    /// The positions in `now` of a set of contacts holding those (see
    /// [`positions`]), when they were looked up for several conditions at
    /// once.
    pub known: Option<&'a [(u32, Option<usize>)]>,
}

impl Patch<'_> {
    /// The contacts whose answer may differ from the kept result: those
    /// whose times changed, and those with a kept time in one of the swept
    /// bands (for the others, every time is inside or outside the window
    /// and each instant on the same side of every cut as before); with the
    /// position of each one's times now, if it has some.
    pub fn dirty(&self) -> (RoaringBitmap, Vec<(u32, Option<usize>)>) {
        let dirty = self.in_bands | self.touched;
        let rows = match self.known {
            Some(known) => known
                .iter()
                .filter(|(id, _)| dirty.contains(*id))
                .copied()
                .collect(),
            None => positions(&self.now.ids, &dirty),
        };
        (dirty, rows)
    }
}

/// The position among `ids` of each contact of `wanted`, if it is one of
/// them: by rank for a few contacts, else by one walk of the ids in step
/// with the wanted ones.
pub fn positions(ids: &RoaringBitmap, wanted: &RoaringBitmap) -> Vec<(u32, Option<usize>)> {
    if wanted.len().saturating_mul(RANK_COST) < ids.len() {
        return wanted
            .iter()
            .map(|id| (id, ids.contains(id).then(|| ids.rank(id) as usize - 1)))
            .collect();
    }
    let mut rows = Vec::with_capacity(wanted.len() as usize);
    let mut now = ids.iter().enumerate().peekable();
    for id in wanted {
        while now.next_if(|&(_, x)| x < id).is_some() {}
        rows.push((id, now.next_if(|&(_, x)| x == id).map(|(at, _)| at)));
    }
    rows
}

/// For each set of bands of time (closed intervals, µs), the contacts with
/// a kept time in one of them: one look at every time, for all the sets.
pub fn in_bands(kept: &Latest, sets: &[&[(i64, i64)]]) -> Vec<RoaringBitmap> {
    use rayon::prelude::*;
    let k = kept.slots.max(1);
    let sets: Vec<Bands> = sets.iter().map(|b| Bands::new(b.iter().copied())).collect();
    // Bands are narrow next to the spread of the times: most contacts have
    // none in a bucket any band touches, and are passed over after one
    // look-up per time.
    let any = Bands::new(sets.iter().flat_map(Bands::intervals));
    let mut hits: Vec<Vec<u32>> = vec![Vec::new(); sets.len()];
    for (at, t) in kept.times.chunks_exact(k).enumerate() {
        if !t.iter().fold(false, |hit, &x| hit | any.near(x)) {
            continue;
        }
        for (bands, hits) in sets.iter().zip(hits.iter_mut()) {
            // `i64::MIN`: no time.
            if t.iter().any(|&x| x != i64::MIN && bands.contains(x)) {
                hits.push(at as u32);
            }
        }
    }
    hits.into_par_iter()
        .map(|at| ids_at(&kept.ids, at))
        .collect()
}

/// Kept latest times without the contacts of `presence` and the times
/// before `from`, with newly found ones (as many per contact) merged in:
/// each contact keeps its latest ones of both.
fn merge(old: &Latest, presence: &RoaringBitmap, from: i64, new: LeafBits) -> Result<Latest> {
    let k = old.slots.max(1);
    // Nothing to merge in, drop or age out: the kept times stand.
    if new.has.is_empty()
        && old.from == from
        && presence.is_disjoint(&old.ids)
        && old.times.chunks_exact(k).all(|t| t[0] >= from)
    {
        return Ok(old.clone());
    }
    // Where the new rows and the contacts added or deleted since fall
    // among the kept ones (by position): the kept times between them are
    // copied as runs, each contact's looked at for its first time alone.
    enum Event<'a> {
        /// New times for a contact without kept ones, put before this
        /// position.
        Insert(u32, &'a [i64]),
        /// New times for the contact at this position (it keeps the latest
        /// of both, or the new ones alone when it was added or deleted since).
        Merge(&'a [i64], bool),
        /// The contact at this position was added or deleted since.
        Gone,
    }
    let mut events: Vec<(usize, Event)> = Vec::with_capacity(new.has.len() as usize);
    for (id, nt) in new.has.iter().zip(new.times.chunks_exact(k)) {
        let rank = old.ids.rank(id) as usize;
        events.push(match old.ids.contains(id) {
            true => (rank - 1, Event::Merge(nt, presence.contains(id))),
            false => (rank, Event::Insert(id, nt)),
        });
    }
    for id in &(presence & &old.ids) - &new.has {
        events.push((old.ids.rank(id) as usize - 1, Event::Gone));
    }
    // Inserts before the kept contact at the same position.
    events.sort_by_key(|(at, e)| (*at, !matches!(e, Event::Insert(..))));
    let mut times = Vec::with_capacity(old.times.len() + new.times.len());
    let mut dropped: Vec<u32> = Vec::new();
    let mut added: Vec<u32> = Vec::new();
    let mut copied = 0;
    // Kept times of positions [a, b), copied as runs: a contact whose
    // latest time is before `from` is dropped, no condition of the key
    // reaching it any more.
    let kept: &[i64] = &old.times;
    let copy = |a: usize, b: usize, times: &mut Vec<i64>, dropped: &mut Vec<u32>| {
        let mut run = a;
        for p in a..b {
            if kept[p * k] < from {
                times.extend_from_slice(&kept[run * k..p * k]);
                dropped.extend(old.ids.select(p as u32));
                run = p + 1;
            }
        }
        times.extend_from_slice(&kept[run * k..b * k]);
    };
    let mut both = Vec::with_capacity(2 * k);
    for (at, e) in events {
        copy(copied, at, &mut times, &mut dropped);
        copied = at;
        let id = || old.ids.select(at as u32).expect("a kept position");
        let merged: &[i64] = match e {
            Event::Insert(nid, nt) => {
                if nt[0] >= from {
                    added.push(nid);
                    times.extend_from_slice(nt);
                }
                continue;
            }
            Event::Gone => {
                dropped.push(id());
                copied = at + 1;
                continue;
            }
            Event::Merge(nt, true) => nt,
            Event::Merge(nt, false) => {
                both.clear();
                both.extend_from_slice(&kept[at * k..(at + 1) * k]);
                both.extend_from_slice(nt);
                both.sort_unstable_by(|a, b| b.cmp(a));
                &both[..k]
            }
        };
        copied = at + 1;
        if merged[0] >= from {
            times.extend_from_slice(merged);
        } else {
            dropped.push(id());
        }
    }
    copy(copied, old.ids.len() as usize, &mut times, &mut dropped);
    // A contact's first time is from `from` on; its others before it are
    // none.
    if k > 1 {
        for x in &mut times {
            if *x < from {
                *x = i64::MIN;
            }
        }
    }
    let sorted = |ids: Vec<u32>| {
        RoaringBitmap::from_sorted_iter(ids)
            .map_err(|e| Error::Internal(format!("latest times: {e}")))
    };
    let ids = &(&old.ids - &sorted(dropped)?) | &sorted(added)?;
    debug_assert_eq!(ids.len() as usize * k, times.len());
    Ok(Latest {
        from,
        ids,
        slots: k,
        times: times.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids found at positions by `select` and by a walk alike, for a few
    /// positions and for many, to the last id and past it.
    #[test]
    fn ids_at_positions_are_found_alike_by_select_and_by_walk() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(9);
        for case in 0..60 {
            let ids: RoaringBitmap = (0..rng.random_range(0..200_000u32))
                .map(|_| rng.random_range(0..1_000_000))
                .collect();
            let share = [0.0001, 0.01, 0.5][case % 3];
            let mut positions: Vec<u32> = (0..ids.len() as u32 + 3)
                .filter(|_| rng.random_bool(share))
                .collect();
            if case % 4 == 0 && !ids.is_empty() {
                positions.push(ids.len() as u32 - 1);
                positions.sort_unstable();
                positions.dedup();
            }
            let want: RoaringBitmap = positions.iter().filter_map(|&p| ids.select(p)).collect();
            assert_eq!(ids_at(&ids, positions), want, "case {case}");
        }
    }

    fn latest(from: i64, slots: usize, rows: &[(u32, &[i64])]) -> Latest {
        Latest {
            from,
            ids: rows.iter().map(|(id, _)| *id).collect(),
            slots,
            times: rows.iter().flat_map(|(_, t)| t.iter().copied()).collect(),
        }
    }

    /// The contacts a patch answers again, with their times now, against
    /// a plain computation, for few of them (found by rank) and many
    /// (found by a walk).
    #[test]
    fn a_patch_answers_again_the_contacts_touched_or_with_a_time_in_a_band() {
        const N: i64 = i64::MIN;
        // Contacts 0, 3, 6…: times 10·id and, for every other one, 5·id.
        let rows: Vec<(u32, Vec<i64>)> = (0..30_000u32)
            .step_by(3)
            .map(|id| {
                let t = 10 * i64::from(id);
                (id, vec![t, if id % 2 == 0 { 5 * i64::from(id) } else { N }])
            })
            .collect();
        let as_latest = |rows: &[(u32, Vec<i64>)]| Latest {
            from: 0,
            ids: rows.iter().map(|(id, _)| *id).collect(),
            slots: 2,
            times: rows.iter().flat_map(|(_, t)| t.iter().copied()).collect(),
        };
        let before = as_latest(&rows);
        // Now: contact 3 gone, contact 4 new.
        let mut now_rows: Vec<(u32, Vec<i64>)> =
            rows.iter().filter(|(id, _)| *id != 3).cloned().collect();
        now_rows.push((4, vec![7, N]));
        now_rows.sort();
        let now = as_latest(&now_rows);
        for (bands, touched) in [
            (vec![(100, 130)], vec![3u32, 4, 29_997]),
            (vec![(0, 200_000)], vec![4]),
        ] {
            let touched: RoaringBitmap = touched.into_iter().collect();
            let found = in_bands(&before, &[&bands, &[]]);
            assert!(found[1].is_empty(), "no band, no contact");
            let patch = Patch {
                now: &now,
                touched: &touched,
                in_bands: &found[0],
                known: None,
            };
            let (dirty, found) = patch.dirty();
            // The same from the positions of more contacts, looked up once
            // for several conditions.
            let more: RoaringBitmap = &dirty | &(0..30_000).step_by(7).collect::<RoaringBitmap>();
            let known = positions(&now.ids, &more);
            let shared = Patch {
                known: Some(&known),
                ..patch
            };
            assert_eq!(shared.dirty(), (dirty.clone(), found.clone()));
            let mut want: RoaringBitmap = rows
                .iter()
                .filter(|(_, t)| {
                    t.iter()
                        .any(|&x| x != N && bands.iter().any(|&(a, b)| a <= x && x <= b))
                })
                .map(|(id, _)| *id)
                .collect();
            want |= &touched;
            assert_eq!(dirty, want);
            let positions: Vec<(u32, Option<usize>)> = want
                .iter()
                .map(|id| (id, now_rows.iter().position(|(x, _)| *x == id)))
                .collect();
            assert_eq!(found, positions);
        }
    }

    /// Bands against a plain look at each interval, with intervals of
    /// every width (empty, one instant, up to the whole range of `i64`) and
    /// times at their ends; and the contacts `in_bands` finds.
    #[test]
    fn bands_find_every_time_inside_them() {
        use rand::{Rng, SeedableRng};
        const N: i64 = i64::MIN;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
        for round in 0..400 {
            let scale: i64 = [1_000, 1 << 40, i64::MAX / 4][round % 3];
            let mut intervals: Vec<(i64, i64)> = (0..rng.random_range(0..6))
                .map(|_| {
                    let a = rng.random_range(-scale..scale);
                    let w = rng.random_range(-10..scale / 50 + 10);
                    (a, a.saturating_add(w))
                })
                .collect();
            if round % 17 == 0 {
                intervals.push((N, rng.random_range(-scale..scale)));
            }
            if round % 19 == 0 {
                intervals.push((rng.random_range(-scale..scale), i64::MAX));
            }
            let bands = Bands::new(intervals.iter().copied());
            let inside = |t: i64| intervals.iter().any(|&(a, b)| a <= t && t <= b);
            let mut probes = vec![N, N + 1, i64::MAX, 0];
            for &(a, b) in &intervals {
                for t in [a, b] {
                    probes.extend([t.saturating_sub(1), t, t.saturating_add(1)]);
                }
            }
            probes.extend((0..50).map(|_| rng.random_range(-scale..scale)));
            for &t in &probes {
                assert_eq!(bands.contains(t), inside(t), "{t} in {intervals:?}");
                assert!(!inside(t) || bands.near(t), "{t} near {intervals:?}");
            }
            // Two times per contact, some missing.
            let rows: Vec<(u32, Vec<i64>)> = (0..probes.len() as u32)
                .map(|id| {
                    let t = probes[id as usize];
                    let u = match id % 3 {
                        0 => N,
                        _ => probes[rng.random_range(0..probes.len())],
                    };
                    (id * 2, vec![t.max(u), t.min(u)])
                })
                .collect();
            let kept = latest(
                N,
                2,
                &rows.iter().map(|(id, t)| (*id, &t[..])).collect::<Vec<_>>(),
            );
            let found = in_bands(&kept, &[&intervals, &intervals[..intervals.len().min(1)]]);
            for (found, set) in found
                .iter()
                .zip([&intervals[..], &intervals[..intervals.len().min(1)]])
            {
                let want: RoaringBitmap = rows
                    .iter()
                    .filter(|(_, t)| {
                        t.iter()
                            .any(|&x| x != N && set.iter().any(|&(a, b)| a <= x && x <= b))
                    })
                    .map(|(id, _)| *id)
                    .collect();
                assert_eq!(found, &want, "{set:?}");
            }
        }
    }

    /// Merging contact by contact, as the definition says.
    fn merge_one_by_one(
        old: &Latest,
        presence: &RoaringBitmap,
        from: i64,
        new: &LeafBits,
    ) -> Latest {
        let k = old.slots.max(1);
        let mut rows: std::collections::BTreeMap<u32, Vec<i64>> = old
            .ids
            .iter()
            .zip(old.times.chunks_exact(k))
            .filter(|(id, _)| !presence.contains(*id))
            .map(|(id, t)| (id, t.to_vec()))
            .collect();
        for (id, t) in new.has.iter().zip(new.times.chunks_exact(k)) {
            let all = rows.entry(id).or_default();
            all.extend_from_slice(t);
            all.sort_unstable_by(|a, b| b.cmp(a));
            all.truncate(k);
        }
        let rows: Vec<(u32, Vec<i64>)> = rows
            .into_iter()
            .filter(|(_, t)| t[0] >= from)
            .map(|(id, t)| {
                let t = t.iter().map(|&x| if x >= from { x } else { i64::MIN });
                (id, t.collect())
            })
            .collect();
        Latest {
            from,
            ids: rows.iter().map(|(id, _)| *id).collect(),
            slots: k,
            times: rows.into_iter().flat_map(|(_, t)| t).collect(),
        }
    }

    #[test]
    fn merged_latest_times_equal_a_merge_contact_by_contact() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        for _ in 0..300 {
            let k = rng.random_range(1..4usize);
            let span = rng.random_range(1..400u32);
            let times = |rng: &mut rand::rngs::SmallRng| {
                let mut t: Vec<i64> = (0..k)
                    .map(|_| match rng.random_bool(0.3) {
                        true => i64::MIN,
                        false => rng.random_range(0..1000),
                    })
                    .collect();
                t[0] = rng.random_range(0..1000);
                t.sort_unstable_by(|a, b| b.cmp(a));
                t
            };
            let pick = |rng: &mut rand::rngs::SmallRng, share: f64| -> RoaringBitmap {
                (0..span).filter(|_| rng.random_bool(share)).collect()
            };
            let share = rng.random_range(0.0..1.0);
            let old_ids = pick(&mut rng, share);
            let old = Latest {
                from: 0,
                times: old_ids.iter().flat_map(|_| times(&mut rng)).collect(),
                ids: old_ids,
                slots: k,
            };
            let share = rng.random_range(0.0..0.2);
            let new_ids = pick(&mut rng, share);
            let new = LeafBits {
                times: new_ids.iter().flat_map(|_| times(&mut rng)).collect(),
                has: new_ids,
                pass: RoaringBitmap::new(),
            };
            let share = rng.random_range(0.0..0.1);
            let presence = pick(&mut rng, share);
            let from = match rng.random_bool(0.3) {
                true => 0,
                false => rng.random_range(0..1000),
            };
            let want = merge_one_by_one(&old, &presence, from, &new);
            assert_eq!(merge(&old, &presence, from, new).unwrap(), want);
        }
    }

    #[test]
    fn merged_latest_times_keep_each_contacts_latest_of_both() {
        const N: i64 = i64::MIN;
        let old = latest(
            0,
            2,
            &[(1, &[50, 10]), (3, &[40, N]), (5, &[30, 20]), (7, &[5, N])],
        );
        let new = LeafBits {
            has: [2, 3, 5, 9].into_iter().collect(),
            pass: RoaringBitmap::new(),
            times: vec![60, N, 45, 41, 25, N, 70, 65],
        };
        // Contact 5 was deleted and added again: its kept times go.
        let presence: RoaringBitmap = [5, 9].into_iter().collect();
        let merged = merge(&old, &presence, 8, new).unwrap();
        let want = latest(
            8,
            2,
            &[
                (1, &[50, 10]),
                (2, &[60, N]),
                (3, &[45, 41]),
                (5, &[25, N]),
                (9, &[70, 65]),
            ],
        );
        // Contact 7's only time is before `from`: it is dropped.
        assert_eq!(merged, want);
    }
}
