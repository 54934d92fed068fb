//! Conditions evaluated again only where something changed.
//!
//! The results kept from the last recompute ([`Kept`]) hold one bitmap per
//! condition as of an earlier version and instant. Now, a condition's
//! result can differ only for:
//! - a contact condition: the contacts whose fields changed (added,
//!   updated, deleted); when it compares fields with instants or days that
//!   the clock moved (relative dates), the contacts whose values lie
//!   between those then and now too: they are looked up, and the
//!   condition evaluated for them, in one scan of those fields; every
//!   contact when its expression at the two instants differs otherwise,
//!   or it calls a function of the current time;
//! - a behaviour condition: the contacts added or deleted, those with new
//!   events of its types, and those with an event of its types in one of
//!   the bands of time that the ends of its window and its `first`/`last`
//!   instants swept between the two instants ([`Moved`]); every contact
//!   when a filter on event columns depends on the clock.
//!
//! A behaviour condition that depends on a contact's matching events through
//! the time of the latest one alone (an existence test over a window that
//! ends at the run's instant, a `last` test) is neither patched nor
//! evaluated again: it is answered from the latest times kept per contact,
//! brought up to date, for the contacts whose answer may have changed (see
//! [`crate::compile::latest`]).
//!
//! Such a condition is evaluated again over the internal ids from the first
//! to the last of those contacts (every contact when they spread over most
//! ids, or when a condition of the pass is evaluated in full anyway; a
//! contact condition is then evaluated on the rows of few contacts alone),
//! and its result patched: `(kept − changed) ∪ (new ∩ changed)`. The other
//! conditions keep their result; a pass none of whose conditions changed
//! reads nothing.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;

use chrono::{DateTime, Utc};
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::tree_node::TreeNode;
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::logical_expr::{Expr, Volatility, col, lit};
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};

use crate::base::changes::{Dirty, Kept};
use crate::base::changes::{LatestTimes, NextLatest};
use crate::base::manifest::DataFile;
use crate::base::schema::IID;
use crate::base::times::TimeIndex;
use crate::compile::behavior::Moved;
use crate::compile::contacts::unqualify;
use crate::compile::expr::{Clock, ts_lit};
use crate::compile::latest::{self, LatestKey, Now};
use crate::compile::{LeafResults, Outcome, Plan, collect_masks, contacts_expr, masks_of};
use crate::engine::Session;
use crate::engine::session::{CONTACTS, abs, listing_table};
use crate::engine::udf::{Bands, InBands};
use crate::error::Result;

/// How a recompute used the results kept from the previous one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Freshness {
    /// `incremental` (kept results patched) or `full` (every condition
    /// evaluated for every contact).
    pub mode: String,
    /// Why the run is full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The version and instant of the kept results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_as_of: Option<DateTime<Utc>>,
    /// Contacts changed by imports and deletions since.
    pub changed_contacts: u64,
    pub contacts: PassFreshness,
    pub events: PassFreshness,
    /// Segments whose trees ran on the contacts whose conditions, presence
    /// or opt-ins changed since alone (`within_contacts`), their members
    /// elsewhere those stored with the kept results.
    #[serde(default)]
    pub segments_within: usize,
    /// Segments whose trees ran on every contact.
    #[serde(default)]
    pub segments_whole: usize,
    /// Contacts whose conditions, presence or opt-ins changed, when trees
    /// ran among them (at most a twentieth of the contacts).
    #[serde(default)]
    pub within_contacts: u64,
}

/// What one pass evaluated again.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PassFreshness {
    /// Conditions whose kept result stands.
    pub kept: usize,
    /// Conditions evaluated again for the contacts that may have changed.
    pub patched: usize,
    /// Conditions evaluated for every contact.
    pub full: usize,
    /// Conditions answered for every contact from the latest times of
    /// matching events kept per contact, brought up to date.
    #[serde(default)]
    pub from_latest: usize,
    /// Contacts the patched conditions were evaluated again for.
    pub dirty_contacts: u64,
    /// Share of the internal ids whose rows the pass read (0: none).
    pub read_share: f64,
    /// Files of the rows of changed contacts, kept by the imports that
    /// changed them, that the pass read instead of the contacts file (0:
    /// none).
    #[serde(default)]
    pub changed_rows: usize,
}

impl Freshness {
    /// A few lines for people: how each pass runs.
    pub fn describe(&self) -> String {
        let head = match (&self.reason, self.since_version, self.since_as_of) {
            (Some(why), ..) => format!("full: every condition for every contact ({why})"),
            (None, Some(v), Some(t)) => format!(
                "incremental: from the results of version {v} as of {}; {} contact(s) changed since",
                t.to_rfc3339(),
                self.changed_contacts
            ),
            _ => "incremental".to_string(),
        };
        let pass = |name: &str, p: &PassFreshness| {
            let latest = if p.from_latest > 0 {
                format!(", {} from the latest times kept", p.from_latest)
            } else {
                String::new()
            };
            let reads = match p.changed_rows {
                0 => format!("reads {:.1}% of ids", p.read_share * 100.0),
                n => format!("reads the rows the last {n} import(s) kept of their contacts"),
            };
            format!(
                "  {name}: {} kept, {} patched for {} contact(s), {} in full{latest}; {reads}",
                p.kept, p.patched, p.dirty_contacts, p.full,
            )
        };
        let mut out = format!(
            "{head}\n{}\n{}",
            pass("contact conditions", &self.contacts),
            pass("behaviour conditions", &self.events)
        );
        if self.segments_within > 0 {
            out.push_str(&format!(
                "\n  segments: {} among the {} contact(s) whose conditions, presence or opt-ins changed, {} over every contact",
                self.segments_within, self.within_contacts, self.segments_whole
            ));
        } else if self.segments_whole > 0 {
            out.push_str(&format!(
                "\n  segments: {} over every contact",
                self.segments_whole
            ));
        }
        out
    }

    /// A full run, and why.
    pub fn full(reason: impl Into<String>, plan: &Plan) -> Freshness {
        Freshness {
            mode: "full".into(),
            reason: Some(reason.into()),
            contacts: PassFreshness {
                full: plan.contact_leaves.len(),
                read_share: f64::from(u8::from(!plan.contact_leaves.is_empty())),
                ..PassFreshness::default()
            },
            events: PassFreshness {
                full: plan.event_leaves.len(),
                read_share: f64::from(u8::from(!plan.event_leaves.is_empty())),
                ..PassFreshness::default()
            },
            ..Freshness::default()
        }
    }
}

/// When the bands of time a condition's boundaries swept hold more events
/// than the contacts divided by this, their contacts are not looked up:
/// as many, the condition is evaluated for every contact anyway (see
/// [`PassWork::of`]).
const BAND_CONTACTS_SHARE: f64 = 4.0;

/// Event types, and closed intervals of time (µs).
type Banded = (Vec<String>, Vec<(i64, i64)>);

/// What to do with one condition. Kept results are borrowed from the
/// [`Kept`] they were read into: a copy of each would cost as much as the
/// narrowing to the contacts now that makes each result anyway.
enum Way<'k> {
    /// Its kept result stands.
    Keep(Cow<'k, RoaringBitmap>),
    /// Evaluate it again for these contacts (kept result, contacts, and
    /// the contacts its result was already found again for as they were
    /// looked up).
    Patch(Cow<'k, RoaringBitmap>, RoaringBitmap, RoaringBitmap),
    /// Its result, found again for these contacts while they were looked
    /// up (result, contacts).
    Found(Cow<'k, RoaringBitmap>, RoaringBitmap),
    /// Evaluate it for every contact.
    Full,
    /// Answer it for every contact from the latest times of matching
    /// events, brought up to date.
    Latest,
    /// The same, from its kept result and for the contacts whose answer
    /// may have changed: those whose times changed, and those with a time
    /// in the bands of time its window's ends swept (kept result, bands).
    LatestPatch(&'k RoaringBitmap, Vec<(i64, i64)>),
}

impl<'k> Way<'k> {
    fn patch(kept: &'k RoaringBitmap, dirty: RoaringBitmap) -> Way<'k> {
        if dirty.is_empty() {
            Way::Keep(Cow::Borrowed(kept))
        } else {
            Way::Patch(Cow::Borrowed(kept), dirty, RoaringBitmap::new())
        }
    }

    /// Ways whose dirty contacts are all found: a patch with none keeps
    /// its result, or the one found as its contacts were looked up.
    fn settled(ways: Vec<Way<'k>>) -> Vec<Way<'k>> {
        ways.into_iter()
            .map(|w| match w {
                Way::Patch(old, d, found) if d.is_empty() => match found.is_empty() {
                    true => Way::Keep(old),
                    false => Way::Found(old, found),
                },
                w => w,
            })
            .collect()
    }
}

/// A kept result narrowed to the contacts now (`all`): as it is when no
/// contact left since (a kept result holds contacts of its time alone).
fn narrowed(kept: Cow<'_, RoaringBitmap>, all: &RoaringBitmap, left: bool) -> RoaringBitmap {
    match (kept, left) {
        (kept, false) => kept.into_owned(),
        (Cow::Borrowed(kept), true) => kept & all,
        (Cow::Owned(kept), true) => kept & all,
    }
}

/// Whether an expression calls a function whose result is not fixed by its
/// arguments (the current time, a random number).
fn reads_clock(e: &Expr) -> bool {
    e.exists(|e| {
        Ok(matches!(e, Expr::ScalarFunction(f)
            if f.func.signature().volatility != Volatility::Immutable))
    })
    .unwrap_or(true)
}

/// Where a condition compiled at two instants differs only in the values
/// it compares columns with (a relative date, moved by the clock): for
/// each such comparison, a filter of the values between the two (both
/// included), or of the values in one list but not the other. A contact
/// whose values pass none of the filters gets the same answer at both
/// instants: each comparison, or membership, comes out the same with
/// either value. None when they differ in any other way.
fn value_bands(now: &Expr, before: &Expr) -> Option<Vec<Expr>> {
    use datafusion::logical_expr::{Operator, expr::InList};
    fn walk(now: &Expr, before: &Expr, out: &mut Vec<Expr>) -> bool {
        if now == before {
            return true;
        }
        match (now, before) {
            (Expr::BinaryExpr(a), Expr::BinaryExpr(b)) if a.op == b.op => {
                let compares = matches!(
                    a.op,
                    Operator::Eq
                        | Operator::NotEq
                        | Operator::Lt
                        | Operator::LtEq
                        | Operator::Gt
                        | Operator::GtEq
                );
                let between = |c: &Expr, x: &Expr, y: &Expr| match (x, y) {
                    (Expr::Literal(x, _), Expr::Literal(y, _)) if !x.is_null() && !y.is_null() => {
                        let (lo, hi) = match x.partial_cmp(y)? {
                            std::cmp::Ordering::Greater => (y, x),
                            _ => (x, y),
                        };
                        Some(c.clone().between(lit(lo.clone()), lit(hi.clone())))
                    }
                    _ => None,
                };
                let band = match (&*a.left, &*a.right, &*b.left, &*b.right) {
                    (c, x, d, y) if compares && c == d && matches!(c, Expr::Column(_)) => {
                        between(c, x, y)
                    }
                    (x, c, y, d) if compares && c == d && matches!(c, Expr::Column(_)) => {
                        between(c, x, y)
                    }
                    _ => None,
                };
                match band {
                    Some(band) => {
                        out.push(band);
                        true
                    }
                    None => walk(&a.left, &b.left, out) && walk(&a.right, &b.right, out),
                }
            }
            (Expr::Not(a), Expr::Not(b)) => walk(a, b, out),
            (
                Expr::InList(InList {
                    expr: a,
                    list: x,
                    negated: na,
                }),
                Expr::InList(InList {
                    expr: b,
                    list: y,
                    negated: nb,
                }),
            ) if a == b && na == nb => {
                let literal = |e: &Expr| matches!(e, Expr::Literal(v, _) if !v.is_null());
                if !(x.iter().all(literal) && y.iter().all(literal)) {
                    return false;
                }
                let moved: Vec<Expr> = x
                    .iter()
                    .filter(|v| !y.contains(v))
                    .chain(y.iter().filter(|v| !x.contains(v)))
                    .cloned()
                    .collect();
                if !moved.is_empty() {
                    out.push((**a).clone().in_list(moved, false));
                }
                true
            }
            _ => false,
        }
    }
    let mut out = Vec::new();
    walk(now, before, &mut out).then_some(out)
}

impl Session {
    /// What each leaf of a plan needs, from kept results (see the module's
    /// documentation): reads the events in the bands of time that moved.
    async fn ways_since<'k>(
        &self,
        plan: &Plan,
        clock: &Clock,
        kept: &'k Kept,
        latest: Option<&LatestTimes>,
        keep: bool,
    ) -> Ways<'k> {
        let then = Clock::new(kept.as_of, clock.tz);
        let dirty = &kept.dirty;

        // A contact condition that compares fields with instants moved by
        // the clock changes only for the contacts whose values lie between
        // the instants then and now: they are looked up, and the condition
        // evaluated for them, in one scan of those fields.
        let mut contact_banded: Vec<(usize, Vec<Expr>, Expr)> = Vec::new();
        let mut contacts: Vec<Way<'k>> = Vec::with_capacity(plan.contact_leaves.len());
        for (i, (leaf, key)) in plan
            .contact_leaves
            .iter()
            .zip(&plan.contact_keys)
            .enumerate()
        {
            let Some(old) = kept.results.get(key) else {
                contacts.push(Way::Full);
                continue;
            };
            let way = match (
                contacts_expr(leaf, self, clock),
                contacts_expr(leaf, self, &then),
            ) {
                (Ok(now), Ok(before)) if !reads_clock(&now) && now == before => {
                    Way::patch(old, dirty.fields.clone())
                }
                (Ok(now), Ok(before)) if !reads_clock(&now) => match value_bands(&now, &before) {
                    Some(bands) => {
                        contact_banded.push((i, bands, now));
                        Way::Patch(
                            Cow::Borrowed(old),
                            dirty.fields.clone(),
                            RoaringBitmap::new(),
                        )
                    }
                    None => Way::Full,
                },
                _ => Way::Full,
            };
            contacts.push(way);
        }
        // Looking those contacts up pays only when the pass would not read
        // every contact anyway. (They are looked up beside the events of
        // the bands of time below.)
        let contacts_read_all = contacts.iter().any(|w| matches!(w, Way::Full));
        let contacts_found = async {
            match contacts_read_all {
                true => Err(()),
                false => {
                    let wanted: Vec<(&[Expr], &Expr)> =
                        contact_banded.iter().map(|(_, b, e)| (&b[..], e)).collect();
                    self.contacts_in_bands(&wanted).await.map_err(|_| ())
                }
            }
        };

        // Conditions that depend on the latest time of a matching event
        // alone are answered from the kept latest times when those serve
        // (and keep their result when nothing they read changed); when
        // they do not and this run keeps its results, they are evaluated
        // in full and their latest times found again.
        let nows: Vec<_> = plan
            .event_leaves
            .iter()
            .map(|b| self.behavior_parts(b, clock))
            .collect();
        let (of_leaf, keys) = latest::latest_keys(nows.iter().map(|p| p.as_ref().ok()), clock);
        let unread = latest
            .map(|l| latest::Unread::of(self, l, &dirty.files))
            .unwrap_or_default();
        let served: Vec<bool> = keys
            .iter()
            .map(|k| {
                latest.is_some_and(|l| {
                    l.by_key
                        .get(&k.key)
                        .is_some_and(|kt| k.served_by(kt, l.as_of, clock, &unread))
                })
            })
            .collect();
        let forward = kept.as_of <= clock.as_of;
        let mut events = Vec::with_capacity(plan.event_leaves.len());
        let mut banded: Vec<(usize, Banded)> = Vec::new();
        for (i, ((b, key), now)) in plan
            .event_leaves
            .iter()
            .zip(&plan.event_keys)
            .zip(nows)
            .enumerate()
        {
            let old = kept.results.get(key);
            let latest = of_leaf[i].filter(|&k| served[k] || keep);
            let way = match (now, self.behavior_parts(b, &then), old) {
                (Ok(now), Ok(before), Some(old)) => {
                    let moved = now.moved_since(&before, clock, &then);
                    let dirty = dirty.for_events(now.types());
                    match (moved, latest) {
                        (Moved::Same, Some(_)) if dirty.is_empty() => Way::Keep(Cow::Borrowed(old)),
                        // At the same instant, the changed contacts alone
                        // are evaluated again (their latest times are
                        // still brought up to date).
                        (Moved::Same, Some(k)) if served[k] => {
                            Way::Patch(Cow::Borrowed(old), dirty, RoaringBitmap::new())
                        }
                        // (Not when the clock went back: the kept result
                        // saw rows after the instant the times now reach.)
                        (Moved::Bands(bands), Some(k)) if served[k] && forward => {
                            Way::LatestPatch(old, bands)
                        }
                        (_, Some(k)) if served[k] => Way::Latest,
                        (_, Some(_)) => Way::Full,
                        (Moved::Everything, None) => Way::Full,
                        (moved, None) => {
                            if let Moved::Bands(bands) = moved {
                                banded.push((i, (now.types().to_vec(), bands)));
                            }
                            Way::Patch(Cow::Borrowed(old), dirty, RoaringBitmap::new())
                        }
                    }
                }
                (Ok(_), _, _) if latest.is_some_and(|k| served[k]) => Way::Latest,
                _ => Way::Full,
            };
            events.push(way);
        }
        // What becomes of each key's latest times.
        let how: Vec<KeyWay> = (0..keys.len())
            .map(|k| {
                let ways = || {
                    events
                        .iter()
                        .zip(&of_leaf)
                        .filter(move |(_, o)| **o == Some(k))
                        .map(|(w, _)| w)
                };
                if served[k]
                    && ways()
                        .any(|w| matches!(w, Way::Latest | Way::LatestPatch(..) | Way::Patch(..)))
                {
                    KeyWay::Fold
                } else if !served[k] && keep {
                    KeyWay::Find
                } else if served[k] {
                    KeyWay::Carry
                } else {
                    KeyWay::Drop
                }
            })
            .collect();
        // A key found again: every condition of it in full.
        for (w, o) in events.iter_mut().zip(&of_leaf) {
            if o.is_some_and(|k| matches!(how[k], KeyWay::Find)) {
                *w = Way::Full;
            }
        }
        // Contacts with events in the bands of time that moved. Bands that
        // hold events for a quarter of the contacts or more are not looked
        // up: their conditions are evaluated in full. The others are, unless
        // the pass evaluates a condition in full anyway: the events pass
        // then reads every contact, and evaluates these conditions in full
        // too at no extra cost. Otherwise the pass reads the rows of the
        // changed contacts alone, however spread over the ids they are.
        let crowd = self.all_contacts.len() as f64 / BAND_CONTACTS_SHARE;
        banded.retain(|(i, (_, bands))| {
            let crowded = self.events_in(bands) >= crowd;
            if crowded {
                events[*i] = Way::Full;
            }
            !crowded
        });
        let reads_all = events.iter().any(|w| matches!(w, Way::Full));
        let events_found = async {
            match reads_all {
                true => Err(()),
                false => {
                    let wanted: Vec<Banded> = banded.iter().map(|(_, b)| b.clone()).collect();
                    self.banded_contacts(&wanted).await.map_err(|_| ())
                }
            }
        };
        // The two scans side by side: neither keeps both cores busy all
        // along (a day later at 10M, about 290 ms one after the other, 250
        // side by side).
        let (found, events_found) = tokio::join!(contacts_found, events_found);
        for (k, (i, _, _)) in contact_banded.iter().enumerate() {
            let way = std::mem::replace(&mut contacts[*i], Way::Full);
            contacts[*i] = match (&found, way) {
                (Ok(found), Way::Patch(old, fields, _)) => {
                    let (band, pass) = &found[k];
                    let old = Cow::Owned((&*old - band) | (pass & band));
                    match fields.is_empty() {
                        true => Way::Found(old, band.clone()),
                        false => Way::Patch(old, fields, band.clone()),
                    }
                }
                _ => Way::Full,
            };
        }
        let contacts = Way::settled(contacts);
        match events_found {
            Ok(found) => {
                for ((i, _), bm) in banded.iter().zip(found) {
                    if let Way::Patch(_, d, _) = &mut events[*i] {
                        *d |= bm;
                    }
                }
            }
            Err(()) => {
                for (i, _) in &banded {
                    events[*i] = Way::Full;
                }
            }
        }
        let events = Way::settled(events);
        Ways {
            contacts,
            events,
            latest: LatestWork {
                of_leaf,
                keys,
                how,
                unread,
            },
        }
    }

    /// How a recompute from kept results would run, without running it.
    pub async fn freshness_since(&self, plan: &Plan, clock: &Clock, kept: &Kept) -> Freshness {
        let ways = self
            .ways_since(plan, clock, kept, kept.latest.as_ref(), false)
            .await;
        let all = &self.all_contacts;
        Freshness {
            mode: "incremental".into(),
            reason: None,
            since_version: Some(kept.version),
            since_as_of: Some(kept.as_of),
            changed_contacts: kept.dirty.contacts().len(),
            contacts: {
                let mut work = PassWork::of(&ways.contacts, all);
                work.rows_from(&kept.dirty, all);
                work.fresh
            },
            events: PassWork::of(&ways.events, all).fresh,
            ..Freshness::default()
        }
    }

    /// Evaluate the leaves of a plan from kept results: each leaf keeps its
    /// result, is patched for the contacts that may have changed, is
    /// answered from the latest times kept, or is evaluated in full (see
    /// the module's documentation). With `keep`, the latest times are
    /// brought up to date for the next run.
    pub async fn run_leaves_since(
        &self,
        plan: &Plan,
        clock: &Clock,
        kept: &Kept,
        keep: bool,
    ) -> (LeafResults, Freshness) {
        match self
            .leaves_since(plan, clock, kept, kept.latest.as_ref(), keep)
            .await
        {
            Ok(out) => out,
            // The kept latest times cannot be read (damaged by a power cut
            // after they were written, say): their conditions are
            // evaluated in full and the times found again.
            Err(LatestUnreadable) => match self.leaves_since(plan, clock, kept, None, keep).await {
                Ok(out) => out,
                Err(LatestUnreadable) => unreachable!("no latest times are read"),
            },
        }
    }

    /// [`Session::run_leaves_since`] with these kept latest times (None:
    /// none serve), unless they cannot be read.
    async fn leaves_since(
        &self,
        plan: &Plan,
        clock: &Clock,
        kept: &Kept,
        kept_latest: Option<&LatestTimes>,
        keep: bool,
    ) -> std::result::Result<(LeafResults, Freshness), LatestUnreadable> {
        let Ways {
            contacts: contact_ways,
            events: event_ways,
            latest: work,
        } = self.ways_since(plan, clock, kept, kept_latest, keep).await;
        let dirty = &kept.dirty;
        let all = &self.all_contacts;
        let (mut c_work, e_work) = (
            PassWork::of(&contact_ways, all),
            PassWork::of(&event_ways, all),
        );
        let changed_rows = c_work.rows_from(dirty, all);
        let c_leaves: Vec<_> = c_work
            .run_on
            .iter()
            .map(|&i| plan.contact_leaves[i].clone())
            .collect();
        let e_leaves: Vec<_> = e_work
            .run_on
            .iter()
            .map(|&i| plan.event_leaves[i].clone())
            .collect();
        let pick = |way: KeyWay| -> Vec<LatestKey> {
            work.keys
                .iter()
                .zip(&work.how)
                .filter(|(_, h)| **h == way)
                .map(|(k, _)| k.clone())
                .collect()
        };
        // Keys to bring up to date whose times cannot have changed (no file
        // to read, no contact deleted, the same earliest instant) stay as
        // they are.
        let state_same = work.unread.added.is_empty()
            && work.unread.later.is_empty()
            && (&dirty.presence - all).is_empty();
        let same = |k: &LatestKey| {
            state_same
                && kept_latest
                    .and_then(|l| l.by_key.get(&k.key))
                    .is_some_and(|l| l.from == k.lo)
        };
        let to_find = pick(KeyWay::Find);
        let (to_same, mut to_fold): (Vec<LatestKey>, Vec<LatestKey>) =
            pick(KeyWay::Fold).into_iter().partition(|k| same(k));
        let mut carried = pick(KeyWay::Carry);
        let renewed = keep && !(to_find.is_empty() && to_fold.is_empty());
        // Times written again reflect every events file: kept times that
        // do not (files imports added since they were written, whose rows
        // earlier runs folded in without writing them) are brought up to
        // date too, though their conditions kept their results.
        if renewed && !state_same {
            to_fold.append(&mut carried);
        }
        let answers_same = event_ways.iter().zip(&work.of_leaf).any(|(w, o)| {
            matches!(w, Way::Latest | Way::LatestPatch(..))
                && o.is_some_and(|k| to_same.iter().any(|s| s.key == work.keys[k].key))
        });
        // The kept times are read only when some are used or written again.
        let body = if !to_fold.is_empty()
            || answers_same
            || renewed && !(to_same.is_empty() && carried.is_empty())
        {
            match kept.latest_times(&self.base) {
                Ok(Some(body)) => Some(body),
                Ok(None) | Err(_) => return Err(LatestUnreadable),
            }
        } else {
            None
        };
        async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, u64) {
            let t = std::time::Instant::now();
            let out = f.await;
            (out, t.elapsed().as_millis() as u64)
        }
        let ((c_new, c_ms), e_out, (queries, q_ms)) = tokio::join!(
            timed(async {
                if c_leaves.is_empty() {
                    Vec::new()
                } else {
                    let only = c_work
                        .only
                        .as_ref()
                        .map(|rows| (rows, c_work.restricted.as_slice()));
                    self.contacts_pass(&c_leaves, clock, c_work.range.clone(), only, changed_rows)
                        .await
                }
            }),
            timed(async {
                let pass = async {
                    if e_leaves.is_empty() && to_find.is_empty() {
                        return (Vec::new(), None);
                    }
                    // Conditions patched alone, for few contacts spread
                    // over the ids: the rows of those contacts alone.
                    let only = e_work
                        .only
                        .as_ref()
                        .filter(|_| e_work.fresh.full == 0 && to_find.is_empty());
                    self.events_pass(&e_leaves, clock, e_work.range.clone(), only, &to_find)
                        .await
                };
                // The kept latest times brought up to date beside the pass.
                let fold = async {
                    match &body {
                        Some(l) if !to_fold.is_empty() => self
                            .fold_latest(l, &dirty.presence, &to_fold, &work.unread, clock)
                            .await
                            .map_err(|e| std::sync::Arc::new(self.name_damaged_file(e))),
                        _ => Ok(Vec::new()),
                    }
                };
                let ((new, found), folded) = tokio::join!(pass, fold);
                (new, found, folded)
            }),
            timed(self.queries_pass(&plan.queries)),
        );
        let ((e_new, found, folded), e_ms) = e_out;
        // The conditions answered from the latest times: for every contact,
        // or, from their kept result, for the contacts whose answer may
        // have changed.
        let no_rows = RoaringBitmap::new();
        // The contacts with a kept time in the bands of time each one's
        // window swept: one look at each key's kept times for all of its
        // conditions, the keys side by side.
        let bands_of = |i: usize| match &event_ways[i] {
            Way::LatestPatch(_, bands) => &bands[..],
            _ => &[],
        };
        let mut by_key: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, way) in event_ways.iter().enumerate() {
            if let (Way::LatestPatch(..), Some(k)) = (way, work.of_leaf[i]) {
                let key = work.keys[k].key.as_str();
                match by_key.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, leaves)) => leaves.push(i),
                    None => by_key.push((key, vec![i])),
                }
            }
        }
        let in_bands: HashMap<usize, RoaringBitmap> = {
            use rayon::prelude::*;
            by_key
                .par_iter()
                .flat_map_iter(|(key, leaves)| {
                    let sets: Vec<&[(i64, i64)]> = leaves.iter().map(|&i| bands_of(i)).collect();
                    let found = match body.as_ref().and_then(|b| b.by_key.get(*key)) {
                        Some(before) => {
                            let buckets = body.as_ref().and_then(|b| b.buckets.get(*key));
                            latest::in_bands(before, buckets, &sets)
                        }
                        None => Vec::new(),
                    };
                    leaves.iter().copied().zip(found).collect::<Vec<_>>()
                })
                .collect()
        };
        // A key's times now, and the contacts whose times may have changed.
        let state_of = |key: &str| {
            let kept = body
                .as_ref()
                .and_then(|b| b.by_key.get(key))
                .ok_or_else(|| {
                    std::sync::Arc::new(crate::error::Error::Internal(format!(
                        "no latest times kept for {key}"
                    )))
                })?;
            match to_fold.iter().position(|f| f.key == key) {
                Some(at) => folded
                    .as_ref()
                    .map(|f| (Now::changed(kept, &f[at].changes), &f[at].touched))
                    .map_err(Clone::clone),
                None => Ok((Now::kept(kept), &no_rows)),
            }
        };
        // The times of the contacts any of a key's patched conditions looks
        // at: one walk of its ids for all of them.
        let known: HashMap<&str, Vec<latest::Row<'_>>> = {
            use rayon::prelude::*;
            by_key
                .par_iter()
                .filter(|(_, leaves)| leaves.len() > 1)
                .filter_map(|(key, leaves)| {
                    let (now, touched) = state_of(key).ok()?;
                    let mut wanted = touched | &dirty.presence;
                    for i in leaves {
                        wanted |= in_bands.get(i).unwrap_or(&no_rows);
                    }
                    Some((*key, now.rows_of(&wanted)))
                })
                .collect()
        };
        // Each condition on its own core; patched ones with the contacts
        // whose answer may have changed.
        let answer = |i: usize, way: &Way| -> Option<(Outcome, Option<RoaringBitmap>)> {
            if !matches!(way, Way::Latest | Way::LatestPatch(..)) {
                return None;
            }
            let k = work.of_leaf[i].expect("a condition answered from latest times has a key");
            let key = &work.keys[k].key;
            let before = body.as_ref().and_then(|b| b.by_key.get(key));
            let state = state_of(key);
            let mut scope = None;
            let outcome = match state {
                Ok((now, touched)) => self
                    .behavior_parts(&plan.event_leaves[i], clock)
                    .and_then(|p| match (way, before) {
                        (Way::LatestPatch(old, _), Some(_)) => {
                            let touched = touched | &dirty.presence;
                            let patch = latest::Patch {
                                now,
                                touched: &touched,
                                in_bands: in_bands.get(&i).unwrap_or(&no_rows),
                                known: known.get(key.as_str()).map(Vec::as_slice),
                            };
                            let (changed, rows) = patch.dirty();
                            let (has, pass) = self.answer_from_latest(&p, clock, || {
                                rows.iter().filter_map(|&(id, t)| t.map(|t| (id, t)))
                            })?;
                            let new = p.finish(has, pass, &(all & &changed));
                            let patched = (*old - &changed) | (new & &changed);
                            scope = Some(changed);
                            Ok(patched)
                        }
                        _ => {
                            let (has, pass) = self.answer_from_latest(&p, clock, || now.rows())?;
                            Ok(p.finish(has, pass, all))
                        }
                    })
                    .map_err(std::sync::Arc::new),
                Err(e) => Err(e.clone()),
            };
            Some((outcome, scope))
        };
        let answered: Vec<Option<(Outcome, Option<RoaringBitmap>)>> = {
            use rayon::prelude::*;
            event_ways
                .par_iter()
                .enumerate()
                .map(|(i, way)| answer(i, way))
                .collect()
        };
        // The latest times for the next run: found again, brought up to
        // date, or kept as they were.
        let latest = match (found, folded, &body) {
            _ if !keep || work.keys.is_empty() => None,
            _ if !renewed => {
                (kept_latest.is_some() && kept.latest_file.is_some()).then_some(NextLatest::Same)
            }
            // Times brought up to date from a few rows stand as they were
            // kept: the next run folds those rows in again.
            // (Not when contacts were deleted: the next run would not know
            // to drop their times.)
            _ if to_find.is_empty()
                && kept_latest.is_some()
                && kept.latest_file.is_some()
                && (&dirty.presence - all).is_empty()
                && work.unread.only_new_rows
                && self.few_unread(&work.unread) =>
            {
                Some(NextLatest::Same)
            }
            (found, Ok(folded), body) if found.is_some() || to_find.is_empty() => {
                let mut next = latest::found(self, clock, &to_find, found.unwrap_or_default());
                // Kept times with their changes, written whole.
                for (k, l) in to_fold.iter().zip(folded) {
                    let Some(kept) = body.as_ref().and_then(|b| b.by_key.get(&k.key)) else {
                        continue;
                    };
                    if let Ok(times) = Now::changed(kept, &l.changes).flatten() {
                        next.by_key.insert(k.key.clone(), times);
                    }
                }
                for k in to_same.iter().chain(&carried) {
                    if let Some(l) = body.as_ref().and_then(|b| b.by_key.get(&k.key)) {
                        next.by_key.insert(k.key.clone(), l.clone());
                    }
                }
                let all_keys = to_find.len() + to_fold.len() + to_same.len() + carried.len();
                (next.by_key.len() == all_keys).then_some(NextLatest::New(next))
            }
            _ => None,
        };
        let c_fresh = c_work.fresh.clone();
        let e_fresh = e_work.fresh.clone();
        // Contacts deleted since the kept results: narrowed out of them.
        let left = !(&dirty.presence - all).is_empty();
        let (contacts, mut patched) = c_work.combine(contact_ways, c_new, Vec::new(), all, left);
        let (events, e_patched) = e_work.combine(event_ways, e_new, answered, all, left);
        patched.extend(e_patched);
        let freshness = Freshness {
            mode: "incremental".into(),
            reason: None,
            since_version: Some(kept.version),
            since_as_of: Some(kept.as_of),
            changed_contacts: dirty.contacts().len(),
            contacts: c_fresh,
            events: e_fresh,
            ..Freshness::default()
        };
        Ok((
            LeafResults {
                contacts,
                events,
                queries,
                pass_ms: [c_ms, e_ms, q_ms],
                latest,
                patched,
            },
            freshness,
        ))
    }

    /// Whether the events files kept latest times do not reflect hold few
    /// enough rows to be folded in again by the next run rather than the
    /// times written again (`latest_rewrite_percent` of the base's events).
    fn few_unread(&self, unread: &latest::Unread) -> bool {
        let events = &self.manifest.events;
        let rows = |files: &[usize]| files.iter().map(|&i| events[i].rows).sum::<u64>();
        let unread = rows(&unread.added) + rows(&unread.later);
        let all: u64 = events.iter().map(|e| e.rows).sum();
        unread.saturating_mul(100)
            <= all.saturating_mul(u64::from(self.base.config.latest_rewrite_percent))
            && unread > 0
    }

    /// About how many events fall in some closed intervals of time, from
    /// the files' time ranges (as if each file's rows were spread evenly).
    fn events_in(&self, bands: &[(i64, i64)]) -> f64 {
        let mut n = 0.0;
        for f in &self.manifest.events {
            let width = (f.max_ts - f.min_ts) as f64 + 1.0;
            for &(lo, hi) in bands {
                let overlap = hi.min(f.max_ts) as f64 - lo.max(f.min_ts) as f64 + 1.0;
                if overlap > 0.0 {
                    n += f.rows as f64 * (overlap / width).min(1.0);
                }
            }
        }
        n
    }

    /// For each condition, the contacts whose values pass one of its
    /// filters ([`value_bands`]), and those of them for which it holds:
    /// from the index of the column it reads when it reads one indexed
    /// column alone ([`crate::base::times`]), else in one scan of the
    /// contacts for all such conditions.
    async fn contacts_in_bands(
        &self,
        wanted: &[(&[Expr], &Expr)],
    ) -> Result<Vec<(RoaringBitmap, RoaringBitmap)>> {
        let index_of = |(bands, holds): &(&[Expr], &Expr)| {
            let mut columns = std::collections::BTreeSet::new();
            for e in bands.iter().chain([*holds]) {
                columns.extend(e.column_refs().into_iter().map(|c| c.name.clone()));
            }
            let contacts = self.manifest.contacts.as_ref()?;
            match columns.len() {
                1 => self
                    .manifest
                    .contact_times
                    .iter()
                    .find(|t| columns.contains(&t.column) && t.of == contacts.path),
                _ => None,
            }
        };
        let mut groups: Vec<(Option<&TimeIndex>, Vec<usize>)> = Vec::new();
        for (i, w) in wanted.iter().enumerate() {
            let index = index_of(w);
            match groups.iter_mut().find(|(g, _)| *g == index) {
                Some((_, members)) => members.push(i),
                None => groups.push((index, vec![i])),
            }
        }
        let found = futures::future::try_join_all(groups.iter().map(|(index, members)| {
            let some: Vec<(&[Expr], &Expr)> = members.iter().map(|&i| wanted[i]).collect();
            async move {
                match index {
                    Some(index) => self.indexed_in_bands(index, &some).await,
                    None => self.scanned_in_bands(&some).await,
                }
            }
        }))
        .await?;
        let mut out = vec![Default::default(); wanted.len()];
        for ((_, members), found) in groups.iter().zip(found) {
            for (&i, f) in members.iter().zip(found) {
                out[i] = f;
            }
        }
        Ok(out)
    }

    /// [`Session::contacts_in_bands`] of conditions that read one indexed
    /// column alone, from its index: the row groups of the values in their
    /// bands alone are read.
    async fn indexed_in_bands(
        &self,
        index: &TimeIndex,
        wanted: &[(&[Expr], &Expr)],
    ) -> Result<Vec<(RoaringBitmap, RoaringBitmap)>> {
        use datafusion::arrow::datatypes::Schema;
        let field = self.contacts_schema.field_with_name(&index.column)?;
        let intervals: Option<Vec<Vec<(i64, i64)>>> = wanted
            .iter()
            .map(|(bands, _)| bands.iter().map(|b| interval(b, field)).collect())
            .collect();
        if let Some(intervals) = intervals {
            return self.looked_up_in_bands(index, wanted, &intervals);
        }
        let schema = std::sync::Arc::new(Schema::new(vec![
            self.contacts_schema.field_with_name(&index.column)?.clone(),
            self.contacts_schema.field_with_name(IID)?.clone(),
        ]));
        let table = listing_table(&self.ctx, schema, &[abs(&self.base, &index.file.path)])?;
        let mut select = vec![col(IID)];
        let mut any = lit(false);
        for (i, (bands, holds)) in wanted.iter().enumerate() {
            let mut band = lit(false);
            for b in bands.iter() {
                band = band.or(unqualify(b.clone())?);
            }
            any = any.or(band.clone());
            select.push(band.alias(format!("b{i}")));
            select.push(unqualify((*holds).clone())?.alias(format!("h{i}")));
        }
        let df = self.ctx.read_table(table)?.filter(any)?.select(select)?;
        let mut masks = collect_masks(df, 2 * wanted.len()).await?.into_iter();
        Ok(std::iter::from_fn(|| Some((masks.next()?, masks.next()?))).collect())
    }

    /// [`Session::indexed_in_bands`] where each band is an interval of the
    /// column's values (`intervals`, as numbers: days or microseconds): the
    /// pages of the index that meet one are read, each interval's rows found
    /// in the values (ordered) by a binary search, and each condition
    /// evaluated for the rows of its own intervals alone.
    fn looked_up_in_bands(
        &self,
        index: &TimeIndex,
        wanted: &[(&[Expr], &Expr)],
        intervals: &[Vec<(i64, i64)>],
    ) -> Result<Vec<(RoaringBitmap, RoaringBitmap)>> {
        use datafusion::arrow::array::{Array, AsArray, UInt32Array};
        use datafusion::arrow::datatypes::{Int64Type, UInt32Type};
        let every: Vec<(i64, i64)> = intervals.iter().flatten().copied().collect();
        let batch = crate::base::table::read_parquet_where(
            &self.base.dir().join(&index.file.path),
            &[&index.column, IID],
            &index.column,
            |min, max| every.iter().any(|&(lo, hi)| lo <= max && min <= hi),
        )?;
        let column = batch
            .column_by_name(&index.column)
            .ok_or_else(|| crate::error::Error::Internal("an index without values".into()))?;
        let numbers = datafusion::arrow::compute::cast(column, &DataType::Int64)?;
        let values = numbers.as_primitive::<Int64Type>().values();
        let schema = DFSchema::try_from(batch.schema().as_ref().clone())?;
        let mut out = Vec::with_capacity(wanted.len());
        for ((_, holds), intervals) in wanted.iter().zip(intervals) {
            let mut rows: Vec<u32> = Vec::new();
            for &(lo, hi) in intervals {
                let from = values.partition_point(|&v| v < lo);
                let to = values.partition_point(|&v| v <= hi).max(from);
                rows.extend(from as u32..to as u32);
            }
            rows.sort_unstable();
            rows.dedup();
            let rows =
                datafusion::arrow::compute::take_record_batch(&batch, &UInt32Array::from(rows))?;
            let iids = rows
                .column_by_name(IID)
                .ok_or_else(|| crate::error::Error::Internal("an index without ids".into()))?
                .as_primitive::<UInt32Type>();
            let band: RoaringBitmap = iids.values().iter().copied().collect();
            let holds = self.physical_expr(unqualify((*holds).clone())?, &schema)?;
            let mask = holds.evaluate(&rows)?.into_array(rows.num_rows())?;
            let mask = mask.as_boolean();
            let pass: RoaringBitmap = iids
                .values()
                .iter()
                .enumerate()
                .filter(|&(k, _)| mask.is_valid(k) && mask.value(k))
                .map(|(_, &i)| i)
                .collect();
            out.push((band, pass));
        }
        Ok(out)
    }

    /// [`Session::contacts_in_bands`] in one scan of the contacts.
    async fn scanned_in_bands(
        &self,
        wanted: &[(&[Expr], &Expr)],
    ) -> Result<Vec<(RoaringBitmap, RoaringBitmap)>> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let bands: Vec<Expr> = wanted
            .iter()
            .map(|(bands, _)| bands.iter().cloned().reduce(Expr::or).unwrap_or(lit(false)))
            .collect();
        let mut select = vec![col(IID)];
        for (i, (band, (_, holds))) in bands.into_iter().zip(wanted).enumerate() {
            select.push(band.alias(format!("b{i}")));
            select.push((*holds).clone().alias(format!("h{i}")));
        }
        let table = self.ctx.table(CONTACTS).await?;
        let any = any_band(wanted.iter().flat_map(|(b, _)| b.iter()), table.schema());
        let df = table.filter(any)?.select(select)?;
        let mut masks = collect_masks(df, 2 * wanted.len()).await?.into_iter();
        Ok(std::iter::from_fn(|| Some((masks.next()?, masks.next()?))).collect())
    }

    /// For each (event types, closed intervals of time): the contacts with
    /// an event of one of the types at a time in one of the intervals, in
    /// one scan of the events files whose times meet an interval. Its rows
    /// are those of the types (row groups of other types are skipped by
    /// their statistics) at a time in an interval, found by one look-up per
    /// row ([`InBands`]); each condition's test runs on those alone.
    async fn banded_contacts(&self, wanted: &[Banded]) -> Result<Vec<RoaringBitmap>> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let mut tests = Vec::with_capacity(wanted.len());
        for (types, bands) in wanted {
            let types: Vec<Expr> = types.iter().map(|t| lit(t.clone())).collect();
            let mut when = lit(false);
            for &(lo, hi) in bands {
                when = when.or(col("ts").between(ts_lit(lo), ts_lit(hi)));
            }
            tests.push(col("type").in_list(types, false).and(when));
        }
        let bands: Vec<(i64, i64)> = wanted.iter().flat_map(|(_, b)| b.iter().copied()).collect();
        let mut types: Vec<&String> = wanted.iter().flat_map(|(t, _)| t).collect();
        types.sort();
        types.dedup();
        let files: Vec<&crate::base::manifest::EventFile> = self
            .manifest
            .events
            .iter()
            .filter(|f| {
                bands
                    .iter()
                    .any(|&(lo, hi)| lo <= f.max_ts && f.min_ts <= hi)
            })
            .collect();
        let paths: Vec<String> = files
            .iter()
            .map(|f| abs(&self.base, &f.file.path))
            .collect();
        let near = InBands::udf(Bands::new(bands)).call(vec![col("ts")]);
        let types: Vec<String> = types.into_iter().cloned().collect();
        // Files that store each type's rows in row groups of their own are
        // read in the row groups of these types alone; the reader then
        // tests `ts` first, and decodes the other columns for the few rows
        // in the bands only.
        let layouts = crate::engine::by_type::layouts(self.base.dir(), files.iter().copied());
        let filter = match &layouts {
            Some(_) => near,
            None => near.and(col("type").in_list(types.iter().map(lit).collect(), false)),
        };
        let mut select = vec![col(IID)];
        select.extend(
            tests
                .into_iter()
                .enumerate()
                .map(|(i, t)| t.alias(format!("b{i}"))),
        );
        let table = listing_table(&self.ctx, self.events_schema.clone(), &paths)?;
        let mut state = self.ctx.state();
        state
            .config_mut()
            .options_mut()
            .execution
            .parquet
            .pushdown_filters = layouts.is_some();
        let source = datafusion::datasource::provider_as_source(table);
        let plan = datafusion::logical_expr::LogicalPlanBuilder::scan("events", source, None)?
            .filter(filter)?
            .project(select)?
            .build()?;
        let plan = state.create_physical_plan(&plan).await?;
        let plan = match &layouts {
            Some(layouts) => crate::compile::behavior::of_types(plan, &types, layouts)?,
            None => plan,
        };
        let stream = datafusion::physical_plan::execute_stream(plan, self.ctx.task_ctx())?;
        masks_of(stream, wanted.len()).await
    }
}

/// A filter `column BETWEEN lo AND hi` between two literals, as its parts.
fn between_literals(band: &Expr) -> Option<(&Column, &ScalarValue, &ScalarValue)> {
    use datafusion::logical_expr::expr::Between;
    match band {
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) => match (&**expr, &**low, &**high) {
            (Expr::Column(c), Expr::Literal(lo, _), Expr::Literal(hi, _)) => Some((c, lo, hi)),
            _ => None,
        },
        _ => None,
    }
}

/// A value as a number (days, microseconds), when it is one.
fn number(v: &ScalarValue) -> Option<i64> {
    match v.cast_to(&DataType::Int64) {
        Ok(ScalarValue::Int64(Some(n))) => Some(n),
        _ => None,
    }
}

/// A filter of [`value_bands`] as an interval of a column's values, as
/// numbers, when it is one on that column between values of its type.
fn interval(band: &Expr, column: &Field) -> Option<(i64, i64)> {
    let t = column.data_type();
    let (_, lo, hi) = between_literals(band).filter(|(c, lo, hi)| {
        c.name == *column.name() && lo.data_type() == *t && hi.data_type() == *t
    })?;
    number(lo).zip(number(hi))
}

/// Whether a contact's values pass one of some filters ([`value_bands`]):
/// the intervals of each column of integers, dates or timestamps found by
/// one look-up per value ([`InBands`]), the other filters as they are.
fn any_band<'a>(bands: impl Iterator<Item = &'a Expr>, schema: &DFSchema) -> Expr {
    let mut by_column: Vec<(Column, Vec<(i64, i64)>)> = Vec::new();
    let mut others: Vec<Expr> = Vec::new();
    for band in bands {
        let interval = between_literals(band).and_then(|(c, lo, hi)| {
            let (_, field) = schema.qualified_field_from_column(c).ok()?;
            let t = field.data_type();
            if !(InBands::takes(t) && lo.data_type() == *t && hi.data_type() == *t) {
                return None;
            }
            number(lo).zip(number(hi)).map(|i| (c.clone(), i))
        });
        match interval {
            Some((c, i)) => match by_column.iter_mut().find(|(d, _)| *d == c) {
                Some((_, is)) => is.push(i),
                None => by_column.push((c, vec![i])),
            },
            None => others.push(band.clone()),
        }
    }
    by_column
        .into_iter()
        .map(|(c, is)| InBands::udf(Bands::new(is)).call(vec![Expr::Column(c)]))
        .chain(others)
        .reduce(Expr::or)
        .unwrap_or(lit(false))
}

/// The ids from the first to the last of some contacts, unless they spread
/// over half of all ids (`span`) or more: reading a range of ids costs
/// about its share of a full read, so a wide range is read whole.
fn id_range(contacts: &RoaringBitmap, span: u32) -> Option<Range<u32>> {
    match (contacts.min(), contacts.max()) {
        (Some(lo), Some(hi)) if u64::from(hi - lo) * 2 < u64::from(span) => Some(lo..hi + 1),
        _ => None,
    }
}

/// The kept latest times could not be read.
struct LatestUnreadable;

/// What each leaf of a plan needs.
struct Ways<'k> {
    contacts: Vec<Way<'k>>,
    events: Vec<Way<'k>>,
    latest: LatestWork,
}

/// The latest times of a batch: each key's, and the key of each
/// behaviour condition.
struct LatestWork {
    of_leaf: Vec<Option<usize>>,
    keys: Vec<LatestKey>,
    how: Vec<KeyWay>,
    /// The events files the kept latest times do not reflect.
    unread: latest::Unread,
}

/// What becomes of the kept latest times of one key.
#[derive(Debug, Clone, Copy, PartialEq)]
enum KeyWay {
    /// Kept as they are: nothing its conditions read changed.
    Carry,
    /// Brought up to date, and its conditions answered from them.
    Fold,
    /// Found again by the events pass, its conditions evaluated in full.
    Find,
    /// Not kept (a run that keeps no results).
    Drop,
}

/// The work of one pass: which conditions to evaluate, over which ids.
struct PassWork {
    /// Positions of the conditions to evaluate.
    run_on: Vec<usize>,
    range: Option<Range<u32>>,
    /// When the pass reads every id but the patched conditions need hold
    /// for few contacts: those contacts, and which conditions of `run_on`
    /// are patched.
    only: Option<RoaringBitmap>,
    restricted: Vec<bool>,
    fresh: PassFreshness,
}

impl PassWork {
    /// The files holding the rows now of every contact the pass needs,
    /// when its every condition is patched for few contacts and imports
    /// kept those contacts' rows: read instead of the contacts file.
    fn rows_from<'a>(&mut self, dirty: &'a Dirty, all: &RoaringBitmap) -> Option<&'a [DataFile]> {
        let only = self.only.as_ref()?;
        if self.restricted.is_empty() || !self.restricted.iter().all(|&r| r) {
            return None;
        }
        let files = dirty.rows_of(&(only & all))?;
        self.fresh.changed_rows = files.len();
        Some(files)
    }

    fn of(ways: &[Way], all: &RoaringBitmap) -> PassWork {
        let full = ways.iter().filter(|w| matches!(w, Way::Full)).count();
        let from_latest = ways
            .iter()
            .filter(|w| matches!(w, Way::Latest | Way::LatestPatch(..)))
            .count();
        let mut dirty = RoaringBitmap::new();
        // Contacts whose conditions were evaluated again as they were
        // looked up: the pass does not read them for those.
        let mut looked_up = RoaringBitmap::new();
        let mut run_on = Vec::new();
        let mut patched = 0;
        for (i, w) in ways.iter().enumerate() {
            match w {
                Way::Keep(_) | Way::Latest | Way::LatestPatch(..) => continue,
                Way::Patch(_, d, found) => {
                    dirty |= d;
                    looked_up |= found;
                    patched += 1;
                }
                Way::Found(_, d) => {
                    looked_up |= d;
                    patched += 1;
                    continue;
                }
                Way::Full => {}
            }
            run_on.push(i);
        }
        let span = all.max().map_or(0, |m| m + 1);
        // Patched conditions read the ids of their changed contacts only,
        // unless those spread over most ids or the pass reads every contact
        // anyway.
        let range = if full == 0 {
            id_range(&dirty, span)
        } else {
            None
        };
        let read_share = match (&range, run_on.is_empty()) {
            (_, true) => 0.0,
            (Some(r), false) => f64::from(r.end - r.start) / f64::from(span.max(1)),
            (None, false) => 1.0,
        };
        // Patched conditions spread over the ids, or read with conditions
        // evaluated in full: evaluated on the rows of their contacts only,
        // when those are few.
        let restricted: Vec<bool> = run_on
            .iter()
            .map(|&i| matches!(ways[i], Way::Patch(..)))
            .collect();
        let only =
            (range.is_none() && patched > 0 && dirty.len() * 4 < all.len()).then(|| dirty.clone());
        PassWork {
            run_on,
            range,
            only,
            restricted,
            fresh: PassFreshness {
                kept: ways.len() - full - patched - from_latest,
                patched,
                full,
                from_latest,
                dirty_contacts: (&dirty | &looked_up).len(),
                read_share,
                changed_rows: 0,
            },
        }
    }
}

impl PassWork {
    /// The pass's results: kept ones, patched ones, and the ones evaluated
    /// in full (`evaluated`: results of `run_on`, in order) or answered
    /// from the latest times (`answered`, by position, with the contacts
    /// they were patched for); with the contacts each was patched for
    /// ([`LeafResults::patched`]). The conditions side by side: each
    /// result is narrowed to the contacts now (a kept one only when
    /// contacts `left` since), a pass over its bitmap.
    fn combine(
        self,
        ways: Vec<Way>,
        evaluated: Vec<Outcome>,
        answered: Vec<Option<(Outcome, Option<RoaringBitmap>)>>,
        all: &RoaringBitmap,
        left: bool,
    ) -> (Vec<Outcome>, Vec<Option<RoaringBitmap>>) {
        use rayon::prelude::*;
        let mut new: Vec<Option<(Outcome, Option<RoaringBitmap>)>> = vec![None; ways.len()];
        for (i, r) in self.run_on.iter().zip(evaluated) {
            new[*i] = Some((r, None));
        }
        for (slot, r) in new.iter_mut().zip(answered) {
            if r.is_some() {
                *slot = r;
            }
        }
        ways.into_par_iter()
            .zip(new)
            .map(|(way, new)| match (way, new) {
                (Way::Keep(old), _) => (Ok(narrowed(old, all, left)), Some(RoaringBitmap::new())),
                (Way::Found(old, band), _) => (Ok(narrowed(old, all, left)), Some(band)),
                (Way::Patch(old, d, found), Some((new, _))) => {
                    let new = new.map(|new| ((&*old - &d) | (new & &d)) & all);
                    (new, Some(d | found))
                }
                (Way::Full | Way::Latest | Way::LatestPatch(..), Some(new)) => new,
                (_, None) => unreachable!("evaluated by the pass"),
            })
            .unzip()
    }
}
