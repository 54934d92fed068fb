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

use crate::base::changes::{Buckets, Latest, LatestTimes};
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
        buckets: Default::default(),
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
        // Keys in parallel: each looks up the kept times of the contacts
        // with rows read, the others' stand.
        use rayon::prelude::*;
        keys.par_iter()
            .zip(olds)
            .zip(added.into_par_iter().zip(later))
            .map(|((k, old), (added, later))| {
                let touched = &added.has | &later.has;
                let first = Now::kept(old).fold(presence, k.lo, &added)?;
                let changes = match later.has.is_empty() {
                    true => first,
                    false => Now::changed(old, &first).fold(&none, k.lo, &later)?,
                };
                Ok(Folded { changes, touched })
            })
            .collect()
    }
}

/// About how many ids listing a bitmap's blocks ([`Blocks`]) steps through
/// in the time of a `rank` or a `select` (each sums the sizes of the
/// containers before its own, then counts bits within it). Measured on
/// 6.5M ids spread over 10M: a `select` 0.97 µs, a `rank` 0.53 µs, a block
/// listed 1.3 ns per id.
const RANK_COST: u64 = 512;

/// [`in_bands`] among the contacts at some positions (`near`), which hold
/// every contact with a time in one of the bands: each one's times read
/// once for all the sets, runs of them on every core.
fn among(kept: &Latest, near: &RoaringBitmap, sets: &[Bands]) -> Vec<RoaringBitmap> {
    use rayon::prelude::*;
    let k = kept.slots.max(1);
    let near: Vec<u32> = near.iter().collect();
    let runs: Vec<Vec<Vec<u32>>> = near
        .par_chunks(1 << 12)
        .map(|positions| {
            let mut hits: Vec<Vec<u32>> = vec![Vec::new(); sets.len()];
            for &p in positions {
                let at = p as usize * k;
                hit(p, &kept.times[at..at + k], sets, &mut hits);
            }
            hits
        })
        .collect();
    ids_of_runs(kept, &runs, sets.len())
}

/// How many times looked at in order cost about as much as one found by
/// position among the contacts of some buckets ([`in_bands`]).
const NEAR_COST: u64 = 4;

/// For each set of positions (ascending) among a bitmap's ids, the ids at
/// them: by `select` for a few, else a block of ids at a time for all the
/// sets at once ([`Blocks`]). One listing of the blocks serves every set:
/// the positions of all the sets are weighed together (eight sets of
/// 5,000 positions each among 4.6M ids are 40,000 `select`s, or one
/// listing).
fn ids_at(ids: &RoaringBitmap, sets: &[Vec<u32>]) -> Vec<RoaringBitmap> {
    use rayon::prelude::*;
    let positions: u64 = sets.iter().map(|p| p.len() as u64).sum();
    if positions.saturating_mul(RANK_COST) >= ids.len() {
        let sets: Vec<&[u32]> = sets.iter().map(Vec::as_slice).collect();
        return Blocks::new(ids).ids_at(&sets);
    }
    sets.par_iter()
        .map(|p| {
            let found = p.iter().filter_map(|&at| ids.select(at));
            RoaringBitmap::from_sorted_iter(found).expect("positions in order")
        })
        .collect()
}

/// Ids in a block share their upper 16 bits (a roaring container).
const BLOCK: u32 = 1 << 16;

/// A bitmap's ids by blocks of [`BLOCK`], with the position among them of
/// each block's first id. Ids are found by position, and positions by id,
/// a block at a time, the blocks on every core: each block's ids are
/// listed at once (`next_many`, 1.3 ns an id), where a walk of every id,
/// id by id, took 5.6 ns an id.
struct Blocks<'a> {
    ids: &'a RoaringBitmap,
    /// For each block holding ids: its first possible id and the position
    /// of its first id.
    starts: Vec<(u32, u64)>,
}

impl<'a> Blocks<'a> {
    fn new(ids: &'a RoaringBitmap) -> Blocks<'a> {
        let mut starts = Vec::new();
        if let (Some(lo), Some(hi)) = (ids.min(), ids.max()) {
            let mut at = 0;
            for b in lo / BLOCK..=hi / BLOCK {
                let first = b * BLOCK;
                let n = ids.range_cardinality(first..=first | (BLOCK - 1));
                if n > 0 {
                    starts.push((first, at));
                    at += n;
                }
            }
        }
        Blocks { ids, starts }
    }

    /// The position after block `i`'s last id.
    fn end(&self, i: usize) -> u64 {
        self.starts.get(i + 1).map_or(self.ids.len(), |s| s.1)
    }

    /// Block `i`'s ids, in order.
    fn list<'b>(&self, i: usize, buf: &'b mut Vec<u32>) -> &'b [u32] {
        let first = self.starts[i].0;
        buf.resize(BLOCK as usize, 0);
        let n = self
            .ids
            .range(first..=first | (BLOCK - 1))
            .next_many(buf)
            .len();
        &buf[..n]
    }

    /// For each set of positions (ascending), the ids at them (positions
    /// past the last id are left out): each block listed once for all.
    fn ids_at(&self, sets: &[&[u32]]) -> Vec<RoaringBitmap> {
        use rayon::prelude::*;
        let found: Vec<Vec<Vec<u32>>> = (0..self.starts.len())
            .into_par_iter()
            .map_init(Vec::new, |buf, i| {
                let (start, end) = (self.starts[i].1, self.end(i));
                let within: Vec<&[u32]> = sets
                    .iter()
                    .map(|p| {
                        let from = p.partition_point(|&x| u64::from(x) < start);
                        let to = p.partition_point(|&x| u64::from(x) < end);
                        &p[from..to]
                    })
                    .collect();
                if within.iter().all(|p| p.is_empty()) {
                    return vec![Vec::new(); sets.len()];
                }
                let ids = self.list(i, buf);
                within
                    .iter()
                    .map(|p| {
                        p.iter()
                            .map(|&x| ids[(u64::from(x) - start) as usize])
                            .collect()
                    })
                    .collect()
            })
            .collect();
        (0..sets.len())
            .into_par_iter()
            .map(|s| {
                let ids = found.iter().flat_map(|block| block[s].iter().copied());
                RoaringBitmap::from_sorted_iter(ids).expect("positions in order")
            })
            .collect()
    }

    /// The position among the ids of each id of `wanted`, if it is one.
    fn positions(&self, wanted: &RoaringBitmap) -> Vec<(u32, Option<usize>)> {
        use rayon::prelude::*;
        let wanted = Blocks::new(wanted);
        let rows: Vec<Vec<(u32, Option<usize>)>> = (0..wanted.starts.len())
            .into_par_iter()
            .map_init(
                || (Vec::new(), Vec::new()),
                |(wbuf, buf), w| {
                    let first = wanted.starts[w].0;
                    let want = wanted.list(w, wbuf);
                    let Ok(i) = self.starts.binary_search_by_key(&first, |s| s.0) else {
                        return want.iter().map(|&id| (id, None)).collect();
                    };
                    let start = self.starts[i].1 as usize;
                    let ids = self.list(i, buf);
                    let mut at = 0;
                    want.iter()
                        .map(|&id| {
                            while ids.get(at).is_some_and(|&x| x < id) {
                                at += 1;
                            }
                            let found = ids.get(at) == Some(&id);
                            (id, found.then_some(start + at))
                        })
                        .collect()
                },
            )
            .collect();
        rows.concat()
    }
}

/// Latest times brought up to date, and the contacts with rows read.
pub struct Folded {
    /// The changes to the kept times.
    pub changes: Changes,
    /// Contacts with matching rows in the files read: the only ones,
    /// with the contacts added or deleted, whose times may have changed.
    pub touched: RoaringBitmap,
}

/// The changes folded into kept latest times: the contacts whose kept
/// times no longer stand, and the times now of those that have some. A run
/// that brings the kept times up to date from a few rows looks up those
/// rows' contacts alone, instead of copying every contact's times.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Changes {
    /// Contacts whose kept times no longer stand.
    pub replaced: RoaringBitmap,
    /// The times now of those of them that have some, from its `from` on
    /// (the earliest instant the conditions reach now).
    pub now: Latest,
}

/// A contact and its times now, if it has some.
pub type Row<'a> = (u32, Option<&'a [i64]>);

/// Latest times as they stand now: kept ones, and the changes since.
///
/// Kept times before `from` (the earliest instant the conditions now reach)
/// are left in place: a contact whose latest is before it is passed over,
/// and its other times before it count as none (every condition's window
/// starts at or after `from`).
#[derive(Debug, Clone, Copy)]
pub struct Now<'a> {
    pub kept: &'a Latest,
    pub changes: Option<&'a Changes>,
}

impl<'a> Now<'a> {
    /// Kept times that stand as they are.
    pub fn kept(kept: &'a Latest) -> Now<'a> {
        Now {
            kept,
            changes: None,
        }
    }

    /// Kept times with changes.
    pub fn changed(kept: &'a Latest, changes: &'a Changes) -> Now<'a> {
        Now {
            kept,
            changes: Some(changes),
        }
    }

    pub fn slots(&self) -> usize {
        self.kept.slots.max(1)
    }

    /// Events before this instant are left out.
    pub fn from(&self) -> i64 {
        self.changes.map_or(self.kept.from, |c| c.now.from)
    }

    /// Each contact with times and its times, in the order of the ids.
    pub fn rows(&self) -> impl Iterator<Item = (u32, &'a [i64])> + 'a {
        let k = self.slots();
        let from = self.from();
        let base: &'a Latest = self.kept;
        let changes: Option<&'a Changes> = self.changes;
        // The kept contacts whose times stand: the replaced ones walked in
        // step.
        let mut replaced = changes.map(|c| c.replaced.iter().peekable());
        let standing = base
            .ids
            .iter()
            .zip(base.times.chunks_exact(k))
            .filter(move |(id, _)| match replaced.as_mut() {
                Some(r) => {
                    while r.next_if(|x| x < id).is_some() {}
                    r.peek() != Some(id)
                }
                None => true,
            });
        let changed = changes
            .into_iter()
            .flat_map(move |c| c.now.ids.iter().zip(c.now.times.chunks_exact(k)));
        by_id(standing, changed).filter(move |(_, t)| t[0] >= from)
    }

    /// The times of each contact of `wanted`, if it has some.
    pub fn rows_of(&self, wanted: &RoaringBitmap) -> Vec<Row<'a>> {
        let k = self.slots();
        let from = self.from();
        let at = |l: &'a Latest, wanted: &RoaringBitmap| {
            let times: &'a [i64] = &l.times;
            positions(&l.ids, wanted).into_iter().map(move |(id, at)| {
                let t = at
                    .map(|at| &times[at * k..(at + 1) * k])
                    .filter(|t| t[0] >= from);
                (id, t)
            })
        };
        let Some(changes) = self.changes else {
            return at(self.kept, wanted).collect();
        };
        let kept = at(self.kept, &(wanted - &changes.replaced));
        let changed = at(&changes.now, &(wanted & &changes.replaced));
        by_id(kept, changed).collect()
    }

    /// These times with `new` folded in: the contacts of `presence` (added
    /// or deleted since) lose their times now, then each contact of `new`
    /// keeps the latest of its times now and its new ones; times before
    /// `from` are left out.
    pub fn fold(&self, presence: &RoaringBitmap, from: i64, new: &LeafBits) -> Result<Changes> {
        let k = self.slots();
        let changed = &new.has | presence;
        let mut olds = self.rows_of(&(&new.has - presence)).into_iter().peekable();
        let mut news = new.has.iter().zip(new.times.chunks_exact(k)).peekable();
        let mut ids = Vec::with_capacity(changed.len() as usize);
        let mut times = Vec::with_capacity(changed.len() as usize * k);
        let mut both = Vec::with_capacity(2 * k);
        for id in &changed {
            let old = olds.next_if(|&(x, _)| x == id).and_then(|(_, t)| t);
            let Some((_, nt)) = news.next_if(|&(x, _)| x == id) else {
                // Added or deleted since, without new rows: no times.
                continue;
            };
            let merged = match old {
                None => nt,
                Some(ot) => {
                    both.clear();
                    both.extend_from_slice(ot);
                    both.extend_from_slice(nt);
                    both.sort_unstable_by(|a, b| b.cmp(a));
                    &both[..k]
                }
            };
            if merged[0] < from {
                continue;
            }
            ids.push(id);
            times.extend(merged.iter().map(|&x| if x < from { i64::MIN } else { x }));
        }
        let fresh = Latest {
            from,
            ids: sorted(ids)?,
            slots: k,
            times: times.into(),
        };
        // The earlier changes, with these over them.
        let Some(earlier) = self.changes else {
            return Ok(Changes {
                replaced: changed,
                now: fresh,
            });
        };
        let before = &earlier.now;
        let kept: Vec<(u32, &[i64])> = before
            .ids
            .iter()
            .zip(before.times.chunks_exact(k))
            .filter(|(id, _)| !changed.contains(*id))
            .collect();
        let mut ids = Vec::with_capacity(kept.len() + fresh.ids.len() as usize);
        let mut times = Vec::with_capacity(ids.capacity() * k);
        let fresh_rows = fresh.ids.iter().zip(fresh.times.chunks_exact(k));
        for (id, t) in by_id(kept.into_iter(), fresh_rows) {
            if t[0] < from {
                continue;
            }
            ids.push(id);
            times.extend(t.iter().map(|&x| if x < from { i64::MIN } else { x }));
        }
        Ok(Changes {
            replaced: &earlier.replaced | &changed,
            now: Latest {
                from,
                ids: sorted(ids)?,
                slots: k,
                times: times.into(),
            },
        })
    }

    /// These times as kept times of their own, written whole.
    pub fn flatten(&self) -> Result<Latest> {
        match self.changes {
            None => Ok(self.kept.clone()),
            Some(c) => merge(self.kept, &c.replaced, c.now.from, &c.now.ids, &c.now.times),
        }
    }
}

/// Two runs of rows in the order of their ids, no id in both, as one.
fn by_id<T>(
    a: impl Iterator<Item = (u32, T)>,
    b: impl Iterator<Item = (u32, T)>,
) -> impl Iterator<Item = (u32, T)> {
    let mut a = a.peekable();
    let mut b = b.peekable();
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some((x, _)), Some((y, _))) if y < x => b.next(),
        (Some(_), _) => a.next(),
        (None, _) => b.next(),
    })
}

fn sorted(ids: Vec<u32>) -> Result<RoaringBitmap> {
    RoaringBitmap::from_sorted_iter(ids).map_err(|e| Error::Internal(format!("latest times: {e}")))
}

/// Answering a condition from latest times for the contacts whose answer
/// may have changed since its kept result only.
pub struct Patch<'a> {
    /// The times now.
    pub now: Now<'a>,
    /// Contacts whose times may have changed: with rows read, added or
    /// deleted.
    pub touched: &'a RoaringBitmap,
    /// Contacts with a kept time in one of the bands of time the
    /// condition's window ends and its `first`/`last` instants swept since
    /// the kept result ([`in_bands`]).
    pub in_bands: &'a RoaringBitmap,
    /// The times now of a set of contacts holding those, when they were
    /// looked up for several conditions at once ([`Now::rows_of`]).
    pub known: Option<&'a [Row<'a>]>,
}

impl<'a> Patch<'a> {
    /// The contacts whose answer may differ from the kept result: those
    /// whose times changed, and those with a kept time in one of the swept
    /// bands (for the others, every time is inside or outside the window
    /// and each instant on the same side of every cut as before); with the
    /// times of each one now, if it has some.
    pub fn dirty(&self) -> (RoaringBitmap, Vec<Row<'a>>) {
        let dirty = self.in_bands | self.touched;
        let rows = match self.known {
            // Both in the order of the ids: one walk of each, in step
            // (a look-up in the bitmap per known row took as long as
            // finding the contacts in the bands).
            Some(known) => {
                let mut rows = Vec::with_capacity(dirty.len() as usize);
                let mut known = known.iter().peekable();
                for id in &dirty {
                    while known.next_if(|(x, _)| *x < id).is_some() {}
                    if let Some(row) = known.next_if(|(x, _)| *x == id) {
                        rows.push(*row);
                    }
                }
                rows
            }
            None => self.now.rows_of(&dirty),
        };
        (dirty, rows)
    }
}

/// The position among `ids` of each contact of `wanted`, if it is one of
/// them: by rank for a few contacts, else a block of ids at a time
/// ([`Blocks`]).
pub fn positions(ids: &RoaringBitmap, wanted: &RoaringBitmap) -> Vec<(u32, Option<usize>)> {
    if wanted.len().saturating_mul(RANK_COST) < ids.len() {
        return wanted
            .iter()
            .map(|id| (id, ids.contains(id).then(|| ids.rank(id) as usize - 1)))
            .collect();
    }
    Blocks::new(ids).positions(wanted)
}

/// For each set of bands of time (closed intervals, µs), the contacts with
/// a kept time in one of them: the times of the contacts in the buckets
/// the bands meet, when the kept times have buckets and those hold few
/// contacts, else one look at every time, for all the sets.
pub fn in_bands(
    kept: &Latest,
    buckets: Option<&Buckets>,
    sets: &[&[(i64, i64)]],
) -> Vec<RoaringBitmap> {
    use rayon::prelude::*;
    let k = kept.slots.max(1);
    let sets: Vec<Bands> = sets.iter().map(|b| Bands::new(b.iter().copied())).collect();
    let near = buckets.and_then(|b| b.near(sets.iter().flat_map(Bands::intervals)));
    // A time looked up by position costs a few times one looked at in
    // order.
    if let Some(near) = near.filter(|n| n.len().saturating_mul(NEAR_COST) < kept.ids.len()) {
        return among(kept, &near, &sets);
    }
    // Bands are narrow next to the spread of the times: most contacts have
    // none in a bucket any band touches, and are passed over after one
    // look-up per time.
    let any = Bands::new(sets.iter().flat_map(Bands::intervals));
    // Runs of contacts side by side, their positions in order.
    const RUN: usize = 1 << 16;
    let runs: Vec<Vec<Vec<u32>>> = kept
        .times
        .par_chunks(k * RUN)
        .enumerate()
        .map(|(run, times)| {
            let mut hits: Vec<Vec<u32>> = vec![Vec::new(); sets.len()];
            for (at, t) in times.chunks_exact(k).enumerate() {
                let near = match k {
                    1 => any.near(t[0]),
                    _ => t.iter().fold(false, |hit, &x| hit | any.near(x)),
                };
                if near {
                    hit((run * RUN + at) as u32, t, &sets, &mut hits);
                }
            }
            hits
        })
        .collect();
    ids_of_runs(kept, &runs, sets.len())
}

/// The contact at position `p`, with these times, among the hits of each
/// set of bands one of its times is in (`i64::MIN`: no time).
fn hit(p: u32, times: &[i64], sets: &[Bands], hits: &mut [Vec<u32>]) {
    for (bands, hits) in sets.iter().zip(hits.iter_mut()) {
        if times.iter().any(|&x| x != i64::MIN && bands.contains(x)) {
            hits.push(p);
        }
    }
}

/// The ids at the positions of runs of hits (each set's hits of a run,
/// the runs in order of positions), for each of `sets` sets.
fn ids_of_runs(kept: &Latest, runs: &[Vec<Vec<u32>>], sets: usize) -> Vec<RoaringBitmap> {
    let hits: Vec<Vec<u32>> = (0..sets)
        .map(|s| runs.iter().flat_map(|r| r[s].iter().copied()).collect())
        .collect();
    ids_at(&kept.ids, &hits)
}

/// Kept latest times without the contacts of `presence` and the times
/// before `from`, with newly found ones (as many per contact) merged in:
/// each contact keeps its latest ones of both.
fn merge(
    old: &Latest,
    presence: &RoaringBitmap,
    from: i64,
    has: &RoaringBitmap,
    new_times: &[i64],
) -> Result<Latest> {
    let k = old.slots.max(1);
    // Nothing to merge in, drop or age out: the kept times stand.
    if has.is_empty()
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
    let mut events: Vec<(usize, Event)> = Vec::with_capacity(has.len() as usize);
    for (id, nt) in has.iter().zip(new_times.chunks_exact(k)) {
        let rank = old.ids.rank(id) as usize;
        events.push(match old.ids.contains(id) {
            true => (rank - 1, Event::Merge(nt, presence.contains(id))),
            false => (rank, Event::Insert(id, nt)),
        });
    }
    for id in &(presence & &old.ids) - has {
        events.push((old.ids.rank(id) as usize - 1, Event::Gone));
    }
    // Inserts before the kept contact at the same position.
    events.sort_by_key(|(at, e)| (*at, !matches!(e, Event::Insert(..))));
    let mut times = Vec::with_capacity(old.times.len() + new_times.len());
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

    /// Ids found at positions by `select` and by blocks alike, for a few
    /// positions and for many, to the last id and past it.
    #[test]
    fn ids_at_positions_are_found_alike_by_select_and_by_blocks() {
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
            // Alone, and beside a set of many positions and an empty one.
            let every: Vec<u32> = (0..ids.len() as u32).step_by(3).collect();
            let every_want: RoaringBitmap = every.iter().filter_map(|&p| ids.select(p)).collect();
            let alone = ids_at(&ids, std::slice::from_ref(&positions));
            assert_eq!(alone.len(), 1, "case {case}");
            assert_eq!(alone[0], want, "case {case}");
            let found = ids_at(&ids, &[every, Vec::new(), positions]);
            assert_eq!(
                found,
                [every_want, RoaringBitmap::new(), want],
                "case {case}"
            );
        }
    }

    /// Positions of wanted ids found by blocks as by rank: ids in blocks
    /// the others lack and the other way round, dense and sparse blocks,
    /// ids past 2^16 · 2^8.
    #[test]
    fn positions_of_ids_are_found_alike_by_rank_and_by_blocks() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
        for case in 0..40 {
            let span = [70_000u32, 1_000_000, 20_000_000][case % 3];
            let mut set = |share: f64| -> RoaringBitmap {
                let n = (f64::from(span) * share) as u32;
                let lo = rng.random_range(0..span / 2);
                (0..n).map(|_| rng.random_range(lo..span)).collect()
            };
            let ids = set([0.9, 0.05, 0.002][case % 3]);
            let wanted = set([0.5, 0.01, 0.3][case / 3 % 3])
                | ids.iter().step_by(7).collect::<RoaringBitmap>();
            let by_rank: Vec<(u32, Option<usize>)> = wanted
                .iter()
                .map(|id| (id, ids.contains(id).then(|| ids.rank(id) as usize - 1)))
                .collect();
            assert_eq!(Blocks::new(&ids).positions(&wanted), by_rank, "case {case}");
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
            let found = in_bands(&before, None, &[&bands, &[]]);
            assert!(found[1].is_empty(), "no band, no contact");
            // The same times now as the kept ones with changes: contact 3
            // replaced by none, contact 4 by its time.
            let changes = Changes {
                replaced: [3, 4].into_iter().collect(),
                now: latest(0, 2, &[(4, &[7, N])]),
            };
            for view in [Now::kept(&now), Now::changed(&before, &changes)] {
                let patch = Patch {
                    now: view,
                    touched: &touched,
                    in_bands: &found[0],
                    known: None,
                };
                let (dirty, found) = patch.dirty();
                // The same from the times of more contacts, looked up once
                // for several conditions.
                let more: RoaringBitmap =
                    &dirty | &(0..30_000).step_by(7).collect::<RoaringBitmap>();
                let known = view.rows_of(&more);
                let shared = Patch {
                    known: Some(&known),
                    ..patch
                };
                assert_eq!(shared.dirty(), (dirty.clone(), found.clone()));
                let want = &with_a_time_in(&rows, &bands) | &touched;
                assert_eq!(dirty, want);
                let times: Vec<Row<'_>> = want
                    .iter()
                    .map(|id| {
                        let row = now_rows.iter().find(|(x, _)| *x == id);
                        (id, row.map(|(_, t)| &t[..]))
                    })
                    .collect();
                assert_eq!(found, times);
                let all: Vec<(u32, &[i64])> = view.rows().collect();
                let want: Vec<(u32, &[i64])> =
                    now_rows.iter().map(|(id, t)| (*id, &t[..])).collect();
                assert_eq!(all, want);
            }
        }
    }

    /// The contacts of `rows` with a time in one of `bands`, one by one.
    fn with_a_time_in(rows: &[(u32, Vec<i64>)], bands: &[(i64, i64)]) -> RoaringBitmap {
        rows.iter()
            .filter(|(_, t)| {
                t.iter()
                    .any(|&x| x != i64::MIN && bands.iter().any(|&(a, b)| a <= x && x <= b))
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Contacts found in bands far into the kept times: past the first
    /// runs of contacts looked at side by side.
    #[test]
    fn contacts_in_bands_are_found_at_their_positions_among_many() {
        // Every other id, one time each: half its id.
        let rows: Vec<(u32, Vec<i64>)> = (0..300_000u32)
            .map(|i| (2 * i, vec![i64::from(i)]))
            .collect();
        let kept = latest(
            0,
            1,
            &rows.iter().map(|(id, t)| (*id, &t[..])).collect::<Vec<_>>(),
        );
        let bands = [(70_000, 70_010), (200_000, 200_000), (299_999, 400_000)];
        let found = in_bands(&kept, None, &[&bands, &bands[1..2]]);
        let want: RoaringBitmap = (70_000..=70_010)
            .chain([200_000, 299_999])
            .map(|i| 2 * i)
            .collect();
        assert_eq!(found[0], want);
        assert_eq!(found[1], [400_000].into_iter().collect::<RoaringBitmap>());
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
            let found = in_bands(
                &kept,
                None,
                &[&intervals, &intervals[..intervals.len().min(1)]],
            );
            for (found, set) in found
                .iter()
                .zip([&intervals[..], &intervals[..intervals.len().min(1)]])
            {
                assert_eq!(found, &with_a_time_in(&rows, set), "{set:?}");
            }
            assert_among_buckets(&kept, &rows, &intervals);
            // One time per contact.
            let rows: Vec<(u32, Vec<i64>)> = rows.iter().map(|(id, t)| (*id, vec![t[0]])).collect();
            let kept = latest(
                N,
                1,
                &rows.iter().map(|(id, t)| (*id, &t[..])).collect::<Vec<_>>(),
            );
            let found = in_bands(&kept, None, &[&intervals]);
            assert_eq!(found[0], with_a_time_in(&rows, &intervals), "{intervals:?}");
            assert_among_buckets(&kept, &rows, &intervals);
        }
    }

    /// The buckets written with some kept times hold every contact with a
    /// time in the bands; among them, the contacts `in_bands` finds by
    /// looking at every time.
    fn assert_among_buckets(kept: &Latest, rows: &[(u32, Vec<i64>)], intervals: &[(i64, i64)]) {
        let file = LatestTimes {
            by_key: [("k".to_string(), kept.clone())].into(),
            ..LatestTimes::default()
        };
        let mut bytes = Vec::new();
        file.encode_into(&mut bytes).expect("encoded");
        let read = LatestTimes::decode(&crate::base::changes::mapped(&bytes)).expect("decoded");
        let (kept, buckets) = (&read.by_key["k"], &read.buckets["k"]);
        let bands = Bands::new(intervals.iter().copied());
        let near = buckets.near(bands.intervals()).expect("buckets read");
        let with = with_a_time_in(rows, intervals);
        let at: RoaringBitmap = positions(&kept.ids, &with)
            .into_iter()
            .map(|(_, p)| p.expect("a kept contact") as u32)
            .collect();
        assert!(
            at.is_subset(&near),
            "{intervals:?}: {at:?} not among {near:?}"
        );
        assert_eq!(among(kept, &near, &[bands])[0], with, "{intervals:?}");
        let all: RoaringBitmap = (0..kept.ids.len() as u32).collect();
        let sets = [intervals];
        assert_eq!(
            in_bands(kept, Some(buckets), &sets)[0],
            with,
            "{intervals:?}"
        );
        assert_eq!(
            among(kept, &all, &[Bands::new(intervals.iter().copied())])[0],
            with
        );
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
            // New rows for a fifth of the contacts at most.
            let rows = |rng: &mut rand::rngs::SmallRng| {
                let share = rng.random_range(0.0..0.2);
                let has = pick(rng, share);
                LeafBits {
                    times: has.iter().flat_map(|_| times(rng)).collect(),
                    has,
                    pass: RoaringBitmap::new(),
                }
            };
            let new = rows(&mut rng);
            let share = rng.random_range(0.0..0.1);
            let presence = pick(&mut rng, share);
            let from = match rng.random_bool(0.3) {
                true => 0,
                false => rng.random_range(0..1000),
            };
            let want = merge_one_by_one(&old, &presence, from, &new);
            assert_eq!(
                merge(&old, &presence, from, &new.has, &new.times).unwrap(),
                want
            );
            // Folded in as changes: the same times, whole or row by row.
            let changes = Now::kept(&old).fold(&presence, from, &new).unwrap();
            let now = Now::changed(&old, &changes);
            assert_eq!(now.flatten().unwrap(), want);
            assert_eq!(rows_of(now), rows_of(Now::kept(&want)));
            // And again, over those changes.
            let again = rows(&mut rng);
            let from = from + rng.random_range(0..100);
            let none = RoaringBitmap::new();
            let want = merge_one_by_one(&want, &none, from, &again);
            let changes = now.fold(&none, from, &again).unwrap();
            let now = Now::changed(&old, &changes);
            assert_eq!(now.flatten().unwrap(), want);
            assert_eq!(rows_of(now), rows_of(Now::kept(&want)));
            let some: RoaringBitmap = (0..span + 2).filter(|_| rng.random_bool(0.3)).collect();
            let read = |rows: Vec<Row<'_>>| -> Vec<(u32, Option<Vec<i64>>)> {
                let clear = |t: &[i64]| {
                    t.iter()
                        .map(|&x| if x < from { i64::MIN } else { x })
                        .collect()
                };
                rows.into_iter().map(|(id, t)| (id, t.map(clear))).collect()
            };
            assert_eq!(
                read(now.rows_of(&some)),
                read(Now::kept(&want).rows_of(&some))
            );
        }
    }

    /// Each contact's times as a condition reads them: times before
    /// `from` count as none.
    fn rows_of(now: Now<'_>) -> Vec<(u32, Vec<i64>)> {
        let from = now.from();
        now.rows()
            .map(|(id, t)| {
                let t = t.iter().map(|&x| if x < from { i64::MIN } else { x });
                (id, t.collect())
            })
            .collect()
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
        let merged = merge(&old, &presence, 8, &new.has, &new.times).unwrap();
        let changes = Now::kept(&old).fold(&presence, 8, &new).unwrap();
        assert_eq!(Now::changed(&old, &changes).flatten().unwrap(), merged);
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
