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
use crate::base::manifest::{Manifest, SegmentRecord, SegmentStatus};
use crate::base::members::{KeptOptIns, Members, OptIns, store_result};
use crate::compile::expr::Clock;
use crate::compile::fresh::Freshness;
use crate::compile::{Bitmaps, Node, Outcome, Plan, eval};
use crate::criteria::Criterion;
use crate::criteria::graph::SegmentGraph;
use crate::engine::Session;
use crate::error::{Error, Result};

/// The outcome of evaluating a batch of segments.
pub struct Computation {
    pub results: BTreeMap<String, Outcome>,
    /// Each condition's result, by key, for the next run to patch.
    pub leaves: Vec<(String, RoaringBitmap)>,
    /// The latest times of matching events, for the next run.
    pub latest: Option<crate::base::changes::NextLatest>,
    /// How kept results were used.
    pub freshness: Freshness,
    pub contact_leaves: usize,
    pub event_leaves: usize,
    pub queries: usize,
    pub leaves_ms: u64,
    /// Wall time of the contacts, events and queries passes, then of the
    /// trees on bitmaps.
    pub phases: Phases,
}

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
    batch: &'a HashMap<String, Outcome>,
    /// Names and ids of the batch's segments → id.
    batch_keys: &'a HashMap<String, String>,
}

impl Env<'_> {
    fn resolve(&self, key: &str) -> Option<String> {
        self.batch_keys
            .get(key)
            .cloned()
            .or_else(|| self.manifest.segment(key).map(|s| s.id.clone()))
    }
}

impl Bitmaps for Env<'_> {
    fn all(&self) -> &RoaringBitmap {
        self.all
    }
    fn segment(&self, key: &str) -> Outcome {
        let id = self.resolve(key).ok_or_else(|| Error::UnknownSegment {
            key: key.to_string(),
        })?;
        if self.batch_keys.contains_key(&id) {
            return match self.batch.get(&id) {
                Some(Ok(b)) => Ok(b.clone()),
                Some(Err(_)) => Err(Error::DependencyFailed { id }.into()),
                None => Err(Error::Internal(format!(
                    "dependency {id} was not computed before its dependants (a reference cycle?)"
                ))
                .into()),
            };
        }
        let rec = self
            .manifest
            .segment(&id)
            .ok_or_else(|| Error::UnknownSegment { key: id.clone() })?;
        Members::load(&self.dir, rec)
            .map(|m| m.members)
            .map_err(std::sync::Arc::new)
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
    let mut keys: HashMap<String, String> = HashMap::new();
    for (id, name, _) in targets {
        keys.insert(id.clone(), id.clone());
        keys.insert(name.clone(), id.clone());
    }
    let mut g = SegmentGraph::default();
    for (id, _, c) in targets {
        let deps = c.segment_refs().into_iter().filter_map(|r| {
            keys.get(&r)
                .cloned()
                .or_else(|| m.segment(&r).map(|s| s.id.clone()))
        });
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
) -> Computation {
    compute_since(
        session,
        m,
        dir,
        clock,
        targets,
        Earlier::None("no kept results were asked for".into()),
        false,
    )
    .await
}

/// [`compute`], patching the conditions' kept results when there are;
/// with `keep`, what the next run needs is found too (the latest times of
/// matching events).
pub async fn compute_since(
    session: &Session,
    m: &Manifest,
    dir: &std::path::Path,
    clock: &Clock,
    targets: &[(String, String, Criterion)],
    earlier: Earlier,
    keep: bool,
) -> Computation {
    let start = Instant::now();
    let mut plan = Plan::default();
    let nodes: Vec<Node> = targets.iter().map(|(_, _, c)| plan.add(c)).collect();
    let (mut leaves, freshness) = match &earlier {
        Earlier::Kept(kept) => session.run_leaves_since(&plan, clock, kept, keep).await,
        Earlier::None(why) => (
            session.run_leaves(&plan, clock, keep).await,
            Freshness::full(why.clone(), &plan),
        ),
    };
    let leaves_ms = start.elapsed().as_millis() as u64;
    let latest = leaves.latest.take();
    let kept_leaves: Vec<(String, RoaringBitmap)> = plan
        .contact_keys
        .iter()
        .zip(&leaves.contacts)
        .chain(plan.event_keys.iter().zip(&leaves.events))
        .filter_map(|(k, r)| r.as_ref().ok().map(|bm| (k.clone(), bm.clone())))
        .collect();
    let trees = Instant::now();
    let mut batch_keys = HashMap::new();
    for (id, name, _) in targets {
        batch_keys.insert(id.clone(), id.clone());
        batch_keys.insert(name.clone(), id.clone());
    }
    let mut batch: HashMap<String, Outcome> = HashMap::new();
    // The segments of a level in parallel.
    for level in dependency_levels(targets, m) {
        use rayon::prelude::*;
        let env = Env {
            all: &session.all_contacts,
            dir: dir.to_path_buf(),
            manifest: m,
            batch: &batch,
            batch_keys: &batch_keys,
        };
        let done: Vec<(usize, Outcome)> = level
            .par_iter()
            .map(|&i| (i, eval(&nodes[i], &leaves, &env)))
            .collect();
        for (i, r) in done {
            batch.insert(targets[i].0.clone(), r);
        }
    }
    Computation {
        results: batch.into_iter().collect(),
        leaves: kept_leaves,
        latest,
        freshness,
        contact_leaves: plan.contact_leaves.len(),
        event_leaves: plan.event_leaves.len(),
        queries: plan.queries.len(),
        leaves_ms,
        phases: Phases {
            contacts_ms: leaves.pass_ms[0],
            events_ms: leaves.pass_ms[1],
            queries_ms: leaves.pass_ms[2],
            trees_ms: trees.elapsed().as_millis() as u64,
            ..Phases::default()
        },
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
    let mut comp = compute_since(
        &session,
        &w.next,
        &dir,
        &clock,
        &targets,
        earlier,
        every_active,
    )
    .await;
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
    comp.leaves.extend(opt.as_kept());
    // Every condition kept its result, and the batch has those conditions
    // only: the kept files stand for this version too.
    let f = &comp.freshness;
    let unchanged = f.contacts.patched
        + f.contacts.full
        + f.events.patched
        + f.events.full
        + f.events.from_latest
        == 0
        && kept == Some(comp.leaves.len());
    let t = Instant::now();
    if every_active && unchanged {
        crate::base::changes::keep_again(w, as_of);
    } else if every_active {
        let leaves = std::mem::take(&mut comp.leaves);
        crate::base::changes::keep(w, as_of, leaves, comp.latest.as_ref())?;
    }
    let keep_ms = t.elapsed().as_millis() as u64;
    let mut phases = Phases {
        optins_ms,
        keep_ms,
        ..comp.phases
    };
    let store = Instant::now();
    let at = Utc::now();
    let mut report = RunReport {
        started_at,
        as_of,
        duration_ms: 0,
        contact_leaves: comp.contact_leaves,
        event_leaves: comp.event_leaves,
        queries: comp.queries,
        phases,
        freshness: Some(comp.freshness.clone()),
        segments: Vec::new(),
    };
    // Segments in parallel: each reads its members and writes its files.
    let mut segments = std::mem::take(&mut w.next.segments);
    let results: HashMap<&str, &Outcome> = comp
        .results
        .iter()
        .map(|(id, r)| (id.as_str(), r))
        .collect();
    let done = std::sync::atomic::AtomicU64::new(0);
    let stored: Vec<Result<SegmentRun>> = {
        use rayon::prelude::*;
        segments
            .par_iter_mut()
            .filter_map(|rec| {
                let result = results.get(rec.id.as_str())?;
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                w.base.progress("storing segments", n, total);
                Some(store_one(w, rec, result, &opt, at, as_of, comp.leaves_ms))
            })
            .collect()
    };
    let mut runs: HashMap<String, SegmentRun> = HashMap::new();
    for run in stored {
        let run = run?;
        runs.insert(run.id.clone(), run);
    }
    report.segments = comp
        .results
        .keys()
        .filter_map(|id| runs.remove(id))
        .collect();
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
    result: &Outcome,
    opt: &OptIns,
    at: DateTime<Utc>,
    as_of: DateTime<Utc>,
    leaves_ms: u64,
) -> Result<SegmentRun> {
    let t0 = Instant::now();
    match result {
        Ok(bm) => {
            store_result(w, rec, bm.clone(), opt, at, as_of, leaves_ms)?;
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
