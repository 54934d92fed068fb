//! Computing segments: one batch of criteria trees evaluated with shared
//! scans (see `compile`), trees run on bitmaps in dependency order, failures
//! isolated per segment; and the nightly job that recomputes every active
//! segment and publishes all results in one manifest.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use datafusion::logical_expr::Expr;
use roaring::RoaringBitmap;
use serde::Serialize;

use crate::base::Writer;
use crate::base::bitmaps::read_bitmap;
use crate::base::changes::Earlier;
use crate::base::changes::{Kept, KeptSince};
use crate::base::manifest::{Manifest, SegmentRecord, SegmentStatus};
use crate::base::members::{
    KEPT_ALL, KeptOptIns, Members, NewMembers, OptIns, store_result, stored_as,
};
use crate::compile::expr::Clock;
use crate::compile::fresh::Freshness;
use crate::compile::{Bitmaps, LeafResults, Node, Outcome, Plan, eval};
use crate::criteria::Criterion;
use crate::criteria::graph::SegmentGraph;
use crate::engine::Session;
use crate::error::{Error, Result};

/// A segment's new members, or why they could not be computed.
pub type Computed = std::result::Result<NewMembers, Arc<Error>>;

/// Where a run's time went, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Phases {
    pub contacts_ms: u64,
    pub events_ms: u64,
    pub queries_ms: u64,
    pub trees_ms: u64,
    pub optins_ms: u64,
    pub store_ms: u64,
    /// Writing the conditions' results and latest times for the next run.
    #[serde(default)]
    pub keep_ms: u64,
}

struct Env<'a> {
    all: &'a RoaringBitmap,
    dir: PathBuf,
    manifest: &'a Manifest,
    batch: &'a HashMap<String, Computed>,
    /// Names and ids of the batch's segments → id.
    batch_keys: &'a HashMap<String, String>,
}

/// The ids and names of a batch's segments → id.
fn batch_keys(targets: &[(String, String, Criterion)]) -> HashMap<String, String> {
    let mut keys = HashMap::new();
    for (id, name, _) in targets {
        keys.insert(id.clone(), id.clone());
        keys.insert(name.clone(), id.clone());
    }
    keys
}

/// The id of the segment a criterion names, among the batch's first.
fn resolve(batch_keys: &HashMap<String, String>, m: &Manifest, key: &str) -> Option<String> {
    batch_keys
        .get(key)
        .cloned()
        .or_else(|| m.segment(key).map(|s| s.id.clone()))
}

impl Env<'_> {
    fn id_of(&self, key: &str) -> std::result::Result<String, Arc<Error>> {
        resolve(self.batch_keys, self.manifest, key).ok_or_else(|| {
            Error::UnknownSegment {
                key: key.to_string(),
            }
            .into()
        })
    }

    /// A segment's members as stored before this run.
    fn stored(&self, id: &str) -> Outcome {
        let rec = self
            .manifest
            .segment(id)
            .ok_or_else(|| Error::UnknownSegment { key: id.into() })?;
        Members::load(&self.dir, rec)
            .map(|m| m.members)
            .map_err(Arc::new)
    }

    /// The entries and exits of a batch's segment found among changed
    /// contacts ([`Within`]).
    fn moves(&self, id: &str) -> Option<(&RoaringBitmap, &RoaringBitmap)> {
        match self.batch.get(id) {
            Some(Ok(NewMembers::Within { entries, exits, .. })) => Some((entries, exits)),
            _ => None,
        }
    }
}

impl Bitmaps for Env<'_> {
    fn all(&self) -> &RoaringBitmap {
        self.all
    }
    fn segment(&self, key: &str) -> Outcome {
        let id = self.id_of(key)?;
        if !self.batch_keys.contains_key(&id) {
            return self.stored(&id);
        }
        match self.batch.get(&id) {
            Some(Ok(NewMembers::Whole(b))) => Ok(b.clone()),
            Some(Ok(NewMembers::Within { entries, exits, .. })) => {
                Ok((self.stored(&id)? - exits) | entries)
            }
            Some(Err(_)) => Err(Error::DependencyFailed { id }.into()),
            None => Err(Error::Internal(format!(
                "dependency {id} was not computed before its dependants (a reference cycle?)"
            ))
            .into()),
        }
    }
    fn import(&self, key: &str) -> Outcome {
        let imp = self
            .manifest
            .import(key)
            .ok_or_else(|| Error::UnknownImport {
                key: key.to_string(),
            })?;
        read_bitmap(&self.dir, &imp.contacts).map_err(std::sync::Arc::new)
    }
}

/// Segment ids in dependency order (dependencies first).
pub fn dependency_order(targets: &[(String, String, Criterion)], m: &Manifest) -> Vec<usize> {
    dependency_levels(targets, m)
        .into_iter()
        .flatten()
        .collect()
}

/// The targets by level: those of a level refer only to segments of the
/// levels before it, or outside the targets.
pub fn dependency_levels(targets: &[(String, String, Criterion)], m: &Manifest) -> Vec<Vec<usize>> {
    let keys = batch_keys(targets);
    let mut g = SegmentGraph::default();
    for (id, _, c) in targets {
        let deps = c
            .segment_refs()
            .into_iter()
            .filter_map(|r| resolve(&keys, m, &r));
        g.add(id, deps);
    }
    let pos: HashMap<&str, usize> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| (t.0.as_str(), i))
        .collect();
    g.levels()
        .into_iter()
        .map(|level| {
            level
                .iter()
                .filter_map(|id| pos.get(id.as_str()).copied())
                .collect()
        })
        .collect()
}

/// Evaluate segments (id, name, criteria) over a version of the base.
pub async fn compute(
    session: &Session,
    m: &Manifest,
    dir: &std::path::Path,
    clock: &Clock,
    targets: &[(String, String, Criterion)],
) -> BTreeMap<String, Outcome> {
    let none = Earlier::None("no kept results were asked for".into());
    let cond = conditions(session, clock, targets, &none, false).await;
    let (results, _) = trees(session, m, dir, targets, &cond, None);
    results
        .into_iter()
        .map(|(id, r)| {
            let r = r.and_then(|new| match new {
                NewMembers::Whole(b) => Ok(b),
                NewMembers::Within { .. } => Err(Error::Internal(format!(
                    "segment {id} was found among changed contacts without kept results"
                ))
                .into()),
            });
            (id, r)
        })
        .collect()
}

/// A batch's conditions, evaluated.
struct Conditions {
    plan: Plan,
    nodes: Vec<Node>,
    leaves: LeafResults,
    freshness: Freshness,
    leaves_ms: u64,
}

/// Evaluate the conditions of a batch, patching their kept results when
/// there are; with `keep`, what the next run needs is found too (the latest
/// times of matching events).
async fn conditions(
    session: &Session,
    clock: &Clock,
    targets: &[(String, String, Criterion)],
    earlier: &Earlier,
    keep: bool,
) -> Conditions {
    let start = Instant::now();
    let mut plan = Plan::default();
    let nodes: Vec<Node> = targets.iter().map(|(_, _, c)| plan.add(c)).collect();
    let (leaves, freshness) = match earlier {
        Earlier::Kept(kept) => session.run_leaves_since(&plan, clock, kept, keep).await,
        Earlier::None(why) => (
            session.run_leaves(&plan, clock, keep).await,
            Freshness::full(why.clone(), &plan),
        ),
    };
    Conditions {
        plan,
        nodes,
        leaves,
        freshness,
        leaves_ms: start.elapsed().as_millis() as u64,
    }
}

/// What the segments and imports a tree names stand for: segment ids and
/// imports' contacts files.
fn names_in(node: &Node, batch_keys: &HashMap<String, String>, m: &Manifest) -> Vec<String> {
    let mut out = Vec::new();
    node.each(&mut |n| match n {
        Node::Segment(key) => out.push(match resolve(batch_keys, m, key) {
            Some(id) => format!("segment {id}"),
            None => format!("unknown segment {key}"),
        }),
        Node::Import(key) => out.push(match m.import(key) {
            Some(i) => format!("import {} {}", i.id, i.contacts.path),
            None => format!("unknown import {key}"),
        }),
        _ => {}
    });
    out.sort();
    out.dedup();
    out
}

/// Run the batch's trees on bitmaps, the segments of a level in parallel;
/// among the contacts whose inputs changed alone for the segments `within`
/// serves. Returns the results, and what each segment's names stand for.
fn trees(
    session: &Session,
    m: &Manifest,
    dir: &std::path::Path,
    targets: &[(String, String, Criterion)],
    cond: &Conditions,
    within: Option<&Within>,
) -> (BTreeMap<String, Computed>, BTreeMap<String, Vec<String>>) {
    use rayon::prelude::*;
    let batch_keys = batch_keys(targets);
    let mut batch: HashMap<String, Computed> = HashMap::new();
    let mut names = BTreeMap::new();
    for level in dependency_levels(targets, m) {
        let done: Vec<(usize, Vec<String>, Computed)> = {
            let env = Env {
                all: &session.all_contacts,
                dir: dir.to_path_buf(),
                manifest: m,
                batch: &batch,
                batch_keys: &batch_keys,
            };
            level
                .par_iter()
                .map(|&i| {
                    let (node, id) = (&cond.nodes[i], &targets[i].0);
                    let named = names_in(node, &batch_keys, m);
                    let r = match within {
                        Some(w) if w.serves(id, node, &named, &env) => w.eval(node, &env),
                        _ => eval(node, &cond.leaves, &env).map(NewMembers::Whole),
                    };
                    (i, named, r)
                })
                .collect()
        };
        for (i, named, r) in done {
            batch.insert(targets[i].0.clone(), r);
            names.insert(targets[i].0.clone(), named);
        }
    }
    (batch.into_iter().collect(), names)
}

/// At most this share (1/n) of the contacts changed since the kept results
/// for trees to run among them alone. Measured at 10M contacts and 111
/// segments, when every tree ran among all of them: among 430,000 changed
/// contacts (4.3%), trees and storing took 255 ms, against 235 ms over
/// every contact (most of it reading each segment's members); among 8,550,
/// 76 ms against 212. Each tree now runs among the contacts for which its
/// own inputs changed: trees among the 430,000 took 100–141 ms.
const WITHIN_SHARE: u64 = 20;

/// Trees among the contacts whose inputs changed since the kept results. A
/// tree decides each contact from that contact's bitmaps alone: a segment
/// whose stored members are its tree over the kept results (its print in
/// them stands) keeps them but for the contacts for which one of its
/// conditions, a segment it names, their presence or their opt-ins
/// changed; its tree runs among those alone, over the kept results and over
/// the new ones, for its entries and exits.
struct Within<'a> {
    /// Every contact whose conditions, presence or opt-ins changed.
    contacts: RoaringBitmap,
    /// Each condition's kept and new results, contact conditions first
    /// (None: one of them is missing).
    conds: Vec<Option<Changed<'a>>>,
    contact_conds: usize,
    queries: usize,
    all_before: &'a RoaringBitmap,
    all_after: &'a RoaringBitmap,
    /// The contacts deleted since.
    gone: RoaringBitmap,
    /// The contacts who came or went, or opted in or out.
    moved: RoaringBitmap,
    optins_before: OptIns,
    optins_after: &'a OptIns,
    /// The contacts who opted in since, and who opted out.
    opted_in: OptIns,
    opted_out: OptIns,
    /// The segments stored with the kept results ([`KeptLeaves::segments`]).
    ///
    /// [`KeptLeaves::segments`]: crate::base::manifest::KeptLeaves::segments
    prints: &'a BTreeMap<String, String>,
    /// The stored members of the segments others name, read once.
    stored: std::sync::Mutex<HashMap<String, Arc<RoaringBitmap>>>,
}

/// A condition's kept and new results, and the contacts for which they
/// differ but for the contacts deleted since.
struct Changed<'a> {
    kept: &'a RoaringBitmap,
    new: &'a RoaringBitmap,
    delta: RoaringBitmap,
}

impl<'a> Within<'a> {
    /// None when the kept results lack the contacts or opt-ins they were
    /// computed with, or so many contacts changed that trees over every
    /// contact cost less.
    fn of(
        kept: &'a Kept,
        cond: &'a Conditions,
        all: &'a RoaringBitmap,
        optins: &'a OptIns,
    ) -> Option<Within<'a>> {
        use rayon::prelude::*;
        if kept.segments.is_empty() {
            return None;
        }
        let all_before: &RoaringBitmap = kept.results.get(KEPT_ALL)?;
        let optins_before = OptIns::kept_in(&kept.results)?;
        let patched = |i: usize| cond.leaves.patched.get(i).and_then(Option::as_ref);
        let pairs: Vec<(Option<&RoaringBitmap>, &Outcome, Option<&RoaringBitmap>)> = cond
            .plan
            .contact_keys
            .iter()
            .zip(&cond.leaves.contacts)
            .chain(cond.plan.event_keys.iter().zip(&cond.leaves.events))
            .enumerate()
            .map(|(i, (k, new))| (kept.results.get(k).map(|b| &**b), new, patched(i)))
            .collect();
        // A condition patched for some contacts differs from its kept
        // result among those alone (and the contacts deleted since, who
        // moved): its delta is found among them.
        let conds: Vec<Option<Changed>> = pairs
            .par_iter()
            .map(|&(kept, new, patched)| {
                let (kept, new) = (kept?, new.as_ref().ok()?);
                let delta = match patched {
                    Some(p) => &(kept & p) ^ &(new & p),
                    None => kept ^ new,
                };
                Some(Changed { kept, new, delta })
            })
            .collect();
        let minus = |a: &OptIns, b: &OptIns| OptIns {
            email: &a.email - &b.email,
            sms: &a.sms - &b.sms,
        };
        let (opted_in, opted_out) = (minus(optins, &optins_before), minus(&optins_before, optins));
        let gone = all_before - all;
        let mut moved = all_before ^ all;
        for o in [&opted_in, &opted_out] {
            moved |= &o.email;
            moved |= &o.sms;
        }
        let mut contacts = moved.clone();
        for c in conds.iter().flatten() {
            contacts |= &c.delta;
        }
        if contacts.len() * WITHIN_SHARE > all.len() {
            return None;
        }
        Some(Within {
            contacts,
            conds,
            contact_conds: cond.plan.contact_keys.len(),
            queries: cond.leaves.queries.len(),
            all_before,
            all_after: all,
            gone,
            moved,
            optins_before,
            optins_after: optins,
            opted_in,
            opted_out,
            prints: &kept.segments,
            stored: Default::default(),
        })
    }

    /// What this run changed in each kept result (`kept XOR now`), by key
    /// (see [`crate::base::changes::keep`]): in each condition's (its
    /// delta, and the deleted contacts it held), in the contacts', in the
    /// opt-ins'. None when a condition lacks its kept or new result.
    fn changes(&self, plan: &Plan) -> Option<HashMap<String, RoaringBitmap>> {
        let keys = plan.contact_keys.iter().chain(&plan.event_keys);
        let mut out = HashMap::with_capacity(self.conds.len() + 3);
        for (key, c) in keys.zip(&self.conds) {
            let c = c.as_ref()?;
            out.insert(key.clone(), &c.delta | &(c.kept & &self.gone));
        }
        out.insert(KEPT_ALL.to_string(), self.all_before ^ self.all_after);
        let optins = OptIns {
            email: &self.opted_in.email | &self.opted_out.email,
            sms: &self.opted_in.sms | &self.opted_out.sms,
        };
        out.extend(optins.as_kept());
        Some(out)
    }

    /// The condition a leaf of a tree stands for.
    fn at(&self, n: &Node) -> Option<usize> {
        match n {
            Node::Contacts(i) => Some(*i),
            Node::Events(i) => Some(self.contact_conds + i),
            _ => None,
        }
    }

    /// Whether a segment's tree can run among the changed contacts: its
    /// print stands, its conditions have kept and new results, and the
    /// segments it names ran among them too.
    fn serves(&self, id: &str, node: &Node, named: &[String], env: &Env) -> bool {
        let Some(rec) = env.manifest.segments.iter().find(|s| s.id == id) else {
            return false;
        };
        let print = crate::base::members::stored_as(rec, named);
        let mut ok = print.is_some() && self.prints.get(id) == print.as_ref();
        node.each(&mut |n| {
            ok &= match n {
                Node::Contacts(_) | Node::Events(_) => {
                    self.at(n).is_some_and(|at| self.conds[at].is_some())
                }
                Node::Query(_) => false,
                Node::Segment(key) => env.id_of(key).is_ok_and(|id| env.moves(&id).is_some()),
                Node::All(_) | Node::Any(_) | Node::Not(_) | Node::Import(_) => true,
            }
        });
        ok
    }

    /// A named segment's stored members.
    fn stored(&self, env: &Env, id: &str) -> std::result::Result<Arc<RoaringBitmap>, Arc<Error>> {
        let lock = || self.stored.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = lock().get(id) {
            return Ok(m.clone());
        }
        let m = Arc::new(env.stored(id)?);
        lock().insert(id.to_string(), m.clone());
        Ok(m)
    }

    /// A segment's entries and exits among the contacts for which one of
    /// its inputs changed.
    fn eval(&self, node: &Node, env: &Env) -> Computed {
        let mut changed = self.moved.clone();
        let mut used = vec![false; self.conds.len()];
        node.each(&mut |n| {
            if let Some(at) = self.at(n) {
                used[at] = true;
                if let Some(c) = &self.conds[at] {
                    changed |= &c.delta;
                }
            }
            if let Node::Segment(key) = n
                && let Ok(id) = env.id_of(key)
                && let Some((entries, exits)) = env.moves(&id)
            {
                changed |= entries;
                changed |= exits;
            }
        });
        // Each condition the tree reads, among those contacts, as kept and
        // as it is now.
        let (mut before, mut after) = (Vec::with_capacity(used.len()), Vec::new());
        for (c, used) in self.conds.iter().zip(&used) {
            let (b, a) = match (c, used) {
                (Some(c), true) => {
                    let b = c.kept & &changed;
                    let a = match c.delta.is_empty() {
                        true => &b - &self.gone,
                        false => c.new & &changed,
                    };
                    (b, a)
                }
                _ => Default::default(),
            };
            before.push(Ok(b));
            after.push(Ok(a));
        }
        let leaves = |mut contacts: Vec<Outcome>| {
            let events = contacts.split_off(self.contact_conds);
            LeafResults {
                contacts,
                events,
                queries: vec![Ok(RoaringBitmap::new()); self.queries],
                ..LeafResults::default()
            }
        };
        let side = |all: &RoaringBitmap, after: bool| Among {
            all: all & &changed,
            changed: &changed,
            after,
            env,
            within: self,
        };
        let before = eval(node, &leaves(before), &side(self.all_before, false))?;
        let after = eval(node, &leaves(after), &side(self.all_after, true))?;
        let (entries, exits) = (&after - &before, &before - &after);
        // Opt-ins counted on the few contacts who moved or opted in or out
        // rather than on every member among the changed contacts.
        let stayed = |x: &RoaringBitmap| after.intersection_len(x) - entries.intersection_len(x);
        let moved = |went: &RoaringBitmap, then: &OptIns, stayed_as: &OptIns| {
            [
                went.intersection_len(&then.email) + stayed(&stayed_as.email),
                went.intersection_len(&then.sms) + stayed(&stayed_as.sms),
            ]
        };
        Ok(NewMembers::Within {
            optins_gained: moved(&entries, self.optins_after, &self.opted_in),
            optins_lost: moved(&exits, &self.optins_before, &self.opted_out),
            entries,
            exits,
        })
    }
}

/// What a tree run among some changed contacts ([`Within::eval`]) sees:
/// the conditions' results and the named segments' members among them,
/// before or after.
struct Among<'a> {
    all: RoaringBitmap,
    changed: &'a RoaringBitmap,
    after: bool,
    env: &'a Env<'a>,
    within: &'a Within<'a>,
}

impl Bitmaps for Among<'_> {
    fn all(&self) -> &RoaringBitmap {
        &self.all
    }
    fn segment(&self, key: &str) -> Outcome {
        let id = self.env.id_of(key)?;
        let (entries, exits) = self.env.moves(&id).ok_or_else(|| {
            Error::Internal(format!("segment {id} was not found among changed contacts"))
        })?;
        let before = &*self.within.stored(self.env, &id)? & self.changed;
        Ok(match self.after {
            true => (before - exits) | entries,
            false => before,
        })
    }
    fn import(&self, key: &str) -> Outcome {
        self.env.import(key)
    }
}

/// Opt-in bitmaps for statistics (empty when the base has no such field).
pub async fn optins(session: &Session) -> Result<OptIns> {
    let mut v = session.project_bitmaps(&optin_exprs(session)?).await?;
    let sms = v.pop().unwrap_or_default();
    let email = v.pop().unwrap_or_default();
    Ok(OptIns { email, sms })
}

/// Whether a contact opted in to e-mail, to SMS.
fn optin_exprs(session: &Session) -> Result<[Expr; 2]> {
    let e: Expr = crate::compile::expr::holds(session.contact_column("email_optin")?.1);
    let s: Expr = crate::compile::expr::holds(session.contact_column("sms_optin")?.1);
    Ok([e.alias("e"), s.alias("s")])
}

/// Kept opt-ins brought up to date for the contacts changed since, from
/// the rows imports kept of them.
async fn optins_patched(
    session: &Session,
    kept: OptIns,
    changed: &RoaringBitmap,
    rows: &[crate::base::manifest::DataFile],
) -> Result<OptIns> {
    let live = changed & &session.all_contacts;
    let mut v = session
        .contact_bitmaps(
            &optin_exprs(session)?,
            None,
            Some((&live, &[true, true])),
            Some(rows),
        )
        .await?;
    let sms = v.pop().unwrap_or_default();
    let email = v.pop().unwrap_or_default();
    Ok(OptIns {
        email: (kept.email - changed) | (email & &live),
        sms: (kept.sms - changed) | (sms & &live),
    })
}

/// Per-segment line of a run report.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct SegmentRun {
    pub id: String,
    pub status: String,
    pub size: u64,
    pub entries: u64,
    pub exits: u64,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a recompute did; kept in the base as JSON.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RunReport {
    pub started_at: DateTime<Utc>,
    pub as_of: DateTime<Utc>,
    pub duration_ms: u64,
    pub contact_leaves: usize,
    pub event_leaves: usize,
    pub queries: usize,
    #[serde(default)]
    pub phases: Phases,
    /// How the results kept from the previous run were used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freshness: Option<Freshness>,
    pub segments: Vec<SegmentRun>,
}

impl RunReport {
    pub fn failures(&self) -> Vec<&SegmentRun> {
        self.segments
            .iter()
            .filter(|s| s.status == "failed")
            .collect()
    }
}

/// Parse the stored criteria of the segments to compute.
pub fn targets_of(m: &Manifest, ids: &[String]) -> Result<Vec<(String, String, Criterion)>> {
    let mut out = Vec::new();
    for id in ids {
        let rec = m.find_segment(id)?;
        if let Some(c) = &rec.criteria {
            out.push((
                rec.id.clone(),
                rec.name.clone(),
                Criterion::parse(c, "criteria")?,
            ));
        }
    }
    Ok(out)
}

/// Compute the given dynamic segments inside a writer and record the results
/// (members, history, statistics, status) in its next manifest, patching
/// the conditions' kept results (see [`crate::compile::fresh`]).
pub async fn compute_into(
    w: &mut Writer,
    ids: &[String],
    as_of: DateTime<Utc>,
) -> Result<RunReport> {
    compute_into_with(w, ids, as_of, Fresh::Incremental).await
}

/// Whether a recompute may patch the results kept from the previous one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fresh {
    #[default]
    Incremental,
    /// Every condition evaluated for every contact (`recompute --full`).
    Full,
}

/// The results kept for a writer's version, or why there are none usable.
fn earlier(base: &crate::base::Base, m: &Manifest, fresh: Fresh) -> Earlier {
    if fresh == Fresh::Full {
        return Earlier::None("a full run was asked for".into());
    }
    match crate::base::changes::kept(base, m) {
        Ok(e) => e,
        Err(e) => Earlier::None(format!("the kept results cannot be read ({e})")),
    }
}

/// [`compute_into`], choosing whether kept results are patched. When the
/// batch is every active segment, its conditions' results are kept for
/// the next run.
pub async fn compute_into_with(
    w: &mut Writer,
    ids: &[String],
    as_of: DateTime<Utc>,
    fresh: Fresh,
) -> Result<RunReport> {
    let started = Instant::now();
    let started_at = Utc::now();
    let targets = targets_of(&w.next, ids)?;
    let total = targets.len() as u64;
    w.base.progress("scanning contacts and events", 0, total);
    let session = Session::new(&w.base, Arc::new(w.next.clone()))?;
    let clock = Clock::new(as_of, w.base.tz());
    let dir = w.dir().to_path_buf();
    let earlier = earlier(&w.base, &w.next, fresh);
    let kept = match &earlier {
        Earlier::Kept(k) => Some(k.results.len()),
        Earlier::None(_) => None,
    };
    let kept_optins = match &earlier {
        Earlier::Kept(k) => OptIns::from_kept(k, &session.all_contacts),
        Earlier::None(_) => None,
    };
    let every_active = {
        let mut a = active_ids(&w.next);
        let mut b = ids.to_vec();
        a.sort();
        b.sort();
        b.dedup();
        a == b
    };
    let mut cond = conditions(&session, &clock, &targets, &earlier, every_active).await;
    // Opt-ins, kept with the conditions' results: found again only when
    // contacts changed since, for those alone when imports kept their rows.
    let t = Instant::now();
    let opt = match kept_optins {
        Some(KeptOptIns::Same(opt)) => opt,
        Some(KeptOptIns::Patch { opt, changed, rows }) => {
            optins_patched(&session, opt, &changed, &rows).await?
        }
        None => optins(&session).await?,
    };
    let optins_ms = t.elapsed().as_millis() as u64;
    let t = Instant::now();
    let within = match &earlier {
        Earlier::Kept(k) => Within::of(k, &cond, &session.all_contacts, &opt),
        Earlier::None(_) => None,
    };
    let incremental = matches!(earlier, Earlier::Kept(_));
    let (results, names) = trees(&session, &w.next, &dir, &targets, &cond, within.as_ref());
    let trees_ms = t.elapsed().as_millis() as u64;
    let within_contacts = within.as_ref().map_or(0, |w| w.contacts.len());
    // What this run changed in the kept results: the new ones are kept as
    // those changes, when few.
    let since = match (&earlier, &within) {
        (Earlier::Kept(k), Some(within)) if every_active => {
            within.changes(&cond.plan).map(|changed| KeptSince {
                base: k.base.clone(),
                changed,
            })
        }
        _ => None,
    };
    drop(within);
    drop(earlier);
    let mut freshness = std::mem::take(&mut cond.freshness);
    if incremental {
        freshness.within_contacts = within_contacts;
        for r in results.values() {
            match r {
                Ok(NewMembers::Within { .. }) => freshness.segments_within += 1,
                _ => freshness.segments_whole += 1,
            }
        }
    }
    let latest = cond.leaves.latest.take();
    let mut leaves: Vec<(String, RoaringBitmap)> = cond
        .plan
        .contact_keys
        .iter()
        .zip(std::mem::take(&mut cond.leaves.contacts))
        .chain(
            cond.plan
                .event_keys
                .iter()
                .zip(std::mem::take(&mut cond.leaves.events)),
        )
        .filter_map(|(k, r)| r.ok().map(|bm| (k.clone(), bm)))
        .collect();
    leaves.extend(opt.as_kept());
    leaves.push((KEPT_ALL.to_string(), session.all_contacts.clone()));
    // Every condition kept its result, and the batch has those conditions
    // only: the kept files stand for this version too.
    let f = &freshness;
    let unchanged = f.contacts.patched
        + f.contacts.full
        + f.events.patched
        + f.events.full
        + f.events.from_latest
        == 0
        && kept == Some(leaves.len());
    let t = Instant::now();
    if every_active && unchanged {
        crate::base::changes::keep_again(w, as_of);
    } else if every_active {
        crate::base::changes::keep(w, as_of, leaves, latest.as_ref(), since)?;
    }
    let keep_ms = t.elapsed().as_millis() as u64;
    let pass_ms = cond.leaves.pass_ms;
    let mut phases = Phases {
        contacts_ms: pass_ms[0],
        events_ms: pass_ms[1],
        queries_ms: pass_ms[2],
        trees_ms,
        optins_ms,
        keep_ms,
        ..Phases::default()
    };
    let store = Instant::now();
    let at = Utc::now();
    let leaves_ms = cond.leaves_ms;
    let mut report = RunReport {
        started_at,
        as_of,
        duration_ms: 0,
        contact_leaves: cond.plan.contact_leaves.len(),
        event_leaves: cond.plan.event_leaves.len(),
        queries: cond.plan.queries.len(),
        phases,
        freshness: Some(freshness),
        segments: Vec::new(),
    };
    // Segments in parallel: each reads its members and writes its files.
    let mut segments = std::mem::take(&mut w.next.segments);
    let done = std::sync::atomic::AtomicU64::new(0);
    let stored: Vec<Result<SegmentRun>> = {
        use rayon::prelude::*;
        segments
            .par_iter_mut()
            .filter_map(|rec| {
                let result = results.get(rec.id.as_str())?;
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                w.base.progress("storing segments", n, total);
                Some(store_one(w, rec, result, &opt, at, as_of, leaves_ms))
            })
            .collect()
    };
    let mut runs: HashMap<String, SegmentRun> = HashMap::new();
    for run in stored {
        let run = run?;
        runs.insert(run.id.clone(), run);
    }
    report.segments = results.keys().filter_map(|id| runs.remove(id)).collect();
    // The kept results stand for the members just stored.
    if every_active && let Some(l) = &mut w.next.leaves {
        l.segments = segments
            .iter()
            .filter(|rec| matches!(results.get(&rec.id), Some(Ok(_))))
            .filter_map(|rec| {
                let print = stored_as(rec, names.get(&rec.id)?)?;
                Some((rec.id.clone(), print))
            })
            .collect();
    }
    w.next.segments = segments;
    phases.store_ms = store.elapsed().as_millis() as u64;
    report.phases = phases;
    w.base.progress("publishing", total, total);
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Store a segment's new result, or its failure (its previous members are
/// kept, the error shown with its status).
fn store_one(
    w: &Writer,
    rec: &mut SegmentRecord,
    result: &Computed,
    opt: &OptIns,
    at: DateTime<Utc>,
    as_of: DateTime<Utc>,
    leaves_ms: u64,
) -> Result<SegmentRun> {
    let t0 = Instant::now();
    match result {
        Ok(new) => {
            store_result(w, rec, new, opt, at, as_of, leaves_ms)?;
            let history = rec.history.points(w.dir())?;
            let p = history.last().expect("a point was just added");
            Ok(SegmentRun {
                id: rec.id.clone(),
                status: "up_to_date".into(),
                size: p.size,
                entries: p.entries,
                exits: p.exits,
                duration_ms: leaves_ms + t0.elapsed().as_millis() as u64,
                error: None,
            })
        }
        Err(e) => {
            rec.status = SegmentStatus::Failed;
            rec.error = Some(e.to_string());
            Ok(SegmentRun {
                id: rec.id.clone(),
                status: "failed".into(),
                size: rec.stats.as_ref().map(|s| s.contacts).unwrap_or(0),
                entries: 0,
                exits: 0,
                duration_ms: 0,
                error: Some(e.to_string()),
            })
        }
    }
}

/// Ids of every active dynamic segment.
pub fn active_ids(m: &Manifest) -> Vec<String> {
    m.segments
        .iter()
        .filter(|s| !s.paused && s.criteria.is_some())
        .map(|s| s.id.clone())
        .collect()
}

/// The nightly job: recompute every active segment, publish in one manifest,
/// keep the run report in the base.
/// The nightly job as one action: take the lock as `command`, recompute
/// every active segment as of `as_of`, publish (a failing segment keeps its
/// members and is reported in the run, the others are published).
pub async fn nightly(
    base: &crate::base::Base,
    command: &str,
    as_of: DateTime<Utc>,
    fresh: Fresh,
) -> Result<RunReport> {
    let (report, _) =
        crate::jobs::change(base, command, async |w| recompute(w, as_of, fresh).await).await?;
    Ok(report)
}

pub async fn recompute(w: &mut Writer, as_of: DateTime<Utc>, fresh: Fresh) -> Result<RunReport> {
    let ids = active_ids(&w.next);
    let report = compute_into_with(w, &ids, as_of, fresh).await?;
    save_report(w, &report)?;
    Ok(report)
}

const KEPT_RUNS: usize = 30;

pub fn save_report(w: &mut Writer, report: &RunReport) -> Result<()> {
    use std::io::Write;
    let mut sink = w.new_file("runs", "run", "json")?;
    let bytes = serde_json::to_vec_pretty(report).expect("report serializes");
    sink.write_all(&bytes)
        .map_err(|e| Error::io(sink.path(), e))?;
    let f = sink.finish()?;
    w.next.runs.push(f);
    let n = w.next.runs.len();
    if n > KEPT_RUNS {
        w.next.runs.drain(..n - KEPT_RUNS);
    }
    Ok(())
}

/// After an import: recompute every active segment when the base has fewer
/// than the configured threshold of them, otherwise mark them for refresh.
/// Runs inside the import's writer, so data and segments publish together.
pub async fn after_import(w: &mut Writer, as_of: DateTime<Utc>) -> Result<Option<RunReport>> {
    let ids = active_ids(&w.next);
    if ids.len() < w.base.config.auto_refresh_threshold {
        let report = compute_into(w, &ids, as_of).await?;
        save_report(w, &report)?;
        Ok(Some(report))
    } else {
        for s in &mut w.next.segments {
            if !s.paused && s.criteria.is_some() {
                s.needs_refresh = true;
            }
        }
        Ok(None)
    }
}

/// What a recompute would do, without doing it: the dependency levels, the
/// shared leaves and the logical plans of the two passes.
pub async fn dry_run(
    base: &crate::base::Base,
    m: &Manifest,
    as_of: DateTime<Utc>,
    fresh: Fresh,
) -> Result<String> {
    use std::fmt::Write;
    let ids = active_ids(m);
    let targets = targets_of(m, &ids)?;
    let mut g = SegmentGraph::default();
    let graph = crate::criteria::graph::graph_of(m)?;
    for id in &ids {
        g.add(id, graph.deps.get(id).cloned().unwrap_or_default());
    }
    let mut plan = Plan::default();
    let mut references = 0;
    for (_, _, c) in &targets {
        plan.add(c);
        references += c.segment_refs().len();
    }
    let session = Session::new(base, Arc::new(m.clone()))?;
    let clock = Clock::new(as_of, base.tz());
    let (contacts, events) = session.explain(&plan, &clock).await?;
    let earlier = earlier(base, m, fresh);
    let freshness = match &earlier {
        Earlier::Kept(kept) => session.freshness_since(&plan, &clock, kept).await,
        Earlier::None(why) => Freshness::full(why.clone(), &plan),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "recompute of {} active segment(s) as of {}",
        ids.len(),
        as_of.to_rfc3339()
    );
    let _ = writeln!(
        out,
        "\norder (each line can run together once the lines above are done):"
    );
    for (i, level) in g.levels().iter().enumerate() {
        let _ = writeln!(out, "  {}: {}", i + 1, level.join(", "));
    }
    let _ = writeln!(
        out,
        "\nshared leaves: {} contact condition(s), {} behaviour condition(s), {} query(ies), {} segment reference(s) read from bitmaps",
        plan.contact_leaves.len(),
        plan.event_leaves.len(),
        plan.queries.len(),
        references
    );
    let _ = writeln!(out, "\n{}", freshness.describe());
    let _ = writeln!(out, "\npass 1, one scan of contacts:\n{contacts}");
    for (i, pass) in events.iter().enumerate() {
        let _ = writeln!(out, "\npass {}, one scan of events: {pass}", i + 2);
    }
    if !plan.queries.is_empty() {
        let _ = writeln!(
            out,
            "\nthen {} query pass(es), one per query criterion",
            plan.queries.len()
        );
    }
    Ok(out)
}

/// Read a stored run report: `index` 1 is the latest, 2 the one before...
pub fn read_report(dir: &std::path::Path, m: &Manifest, index: usize) -> Result<RunReport> {
    let n = m.runs.len();
    if index == 0 || index > n {
        return Err(Error::usage(format!(
            "there are {n} run report(s); ask for 1 (latest) to {n}"
        )));
    }
    let f = &m.runs[n - index];
    let bytes = crate::base::store::read_checked(dir, f)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::base(dir, format!("{}: {e}", f.path)))
}
