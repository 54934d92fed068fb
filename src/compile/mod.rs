//! Criteria → DataFusion logical plans → roaring bitmaps.
//!
//! A batch of criteria trees (one segment, or every segment of a nightly run)
//! is split into leaves. Maximal subtrees of field and `sql` conditions become
//! one boolean expression each, and all of them are evaluated in a single
//! projection over `contacts` (one scan). All behaviour conditions are
//! evaluated in a single scan of `events` (see [`behavior`]). Identical
//! leaves are computed once. The trees are then evaluated on bitmaps: AND, OR,
//! ANDNOT, NOT as all-contacts minus; segment and import references read
//! stored bitmaps and never rescan.

pub mod behavior;
mod contacts;
mod dictionary;
pub mod expr;
pub mod floor;
pub mod fresh;
pub mod latest;
pub mod materialize;
mod pages;

use std::collections::HashMap;
use std::ops::{Not, Range};

use datafusion::arrow::array::{AsArray, BooleanArray};
use datafusion::common::DFSchema;
use datafusion::logical_expr::{Expr, col, lit};
use datafusion::prelude::DataFrame;
use futures::StreamExt;
use roaring::RoaringBitmap;

use crate::base::schema::{FieldType, IID};
use crate::compile::materialize::{add_masked, iid_column};
use crate::criteria::{Behavior, Criterion};
use crate::engine::Session;
use crate::error::{Error, Result};
pub use behavior::BehaviorParts;
use expr::{Clock, EmptyRule, cond_expr};

/// A criteria tree with its leaves replaced by indices into the [`Plan`].
#[derive(Debug, Clone)]
pub enum Node {
    All(Vec<Node>),
    Any(Vec<Node>),
    Not(Box<Node>),
    Contacts(usize),
    Events(usize),
    Query(usize),
    Segment(String),
    Import(String),
}

impl Node {
    /// This node and every node under it.
    pub fn each(&self, f: &mut impl FnMut(&Node)) {
        f(self);
        match self {
            Node::All(cs) | Node::Any(cs) => cs.iter().for_each(|c| c.each(f)),
            Node::Not(c) => c.each(f),
            _ => {}
        }
    }
}

/// The leaves of a batch of trees, deduplicated.
#[derive(Debug, Default)]
pub struct Plan {
    pub contact_leaves: Vec<Criterion>,
    pub event_leaves: Vec<Behavior>,
    pub queries: Vec<String>,
    /// What identifies each contact and behaviour leaf across runs.
    pub contact_keys: Vec<String>,
    pub event_keys: Vec<String>,
    index: HashMap<String, usize>,
}

fn contacts_only(c: &Criterion) -> bool {
    match c {
        Criterion::Field(_) | Criterion::Sql(_) => true,
        Criterion::All(cs) | Criterion::Any(cs) => cs.iter().all(contacts_only),
        Criterion::Not(x) => contacts_only(x),
        _ => false,
    }
}

impl Plan {
    /// Add a tree; `resolve` maps a segment name or id to its id.
    pub fn add(&mut self, c: &Criterion) -> Node {
        if contacts_only(c) && !matches!(c, Criterion::All(v) | Criterion::Any(v) if v.is_empty()) {
            let key = format!("c:{c:?}");
            let i = *self.index.entry(key.clone()).or_insert_with(|| {
                self.contact_leaves.push(c.clone());
                self.contact_keys.push(key);
                self.contact_leaves.len() - 1
            });
            return Node::Contacts(i);
        }
        match c {
            Criterion::All(cs) => Node::All(cs.iter().map(|x| self.add(x)).collect()),
            Criterion::Any(cs) => Node::Any(cs.iter().map(|x| self.add(x)).collect()),
            Criterion::Not(x) => Node::Not(Box::new(self.add(x))),
            Criterion::Behavior(b) => {
                let key = format!("e:{b:?}");
                let i = *self.index.entry(key.clone()).or_insert_with(|| {
                    self.event_leaves.push((**b).clone());
                    self.event_keys.push(key);
                    self.event_leaves.len() - 1
                });
                Node::Events(i)
            }
            Criterion::Query(q) => {
                let key = format!("q:{q}");
                let i = *self.index.entry(key).or_insert_with(|| {
                    self.queries.push(q.clone());
                    self.queries.len() - 1
                });
                Node::Query(i)
            }
            Criterion::Segment(s) => Node::Segment(s.clone()),
            Criterion::Import(s) => Node::Import(s.clone()),
            Criterion::Field(_) | Criterion::Sql(_) => {
                unreachable!("contacts-only leaves handled above")
            }
        }
    }
}

/// A bitmap, or the error met computing it (shared: a leaf serves every
/// segment that uses it).
pub type Outcome = std::result::Result<RoaringBitmap, std::sync::Arc<Error>>;

/// The bitmap of each leaf, or the error that leaf met.
#[derive(Debug, Default)]
pub struct LeafResults {
    pub contacts: Vec<Outcome>,
    pub events: Vec<Outcome>,
    pub queries: Vec<Outcome>,
    /// Wall time of each pass, in milliseconds: contacts, events, queries
    /// (the passes overlap).
    pub pass_ms: [u64; 3],
    /// The latest times of matching events to keep for the next run (see
    /// [`latest`]).
    pub latest: Option<crate::base::changes::NextLatest>,
    /// For each contact condition, then each behaviour condition, patched
    /// from its kept result: the contacts outside which its result is the
    /// kept one, but for the contacts deleted since (None, or no entry:
    /// not known).
    pub patched: Vec<Option<RoaringBitmap>>,
}

/// The boolean expression of a contacts-only subtree.
pub fn contacts_expr(c: &Criterion, session: &Session, clock: &Clock) -> Result<Expr> {
    Ok(match c {
        Criterion::All(cs) => {
            let mut e = lit(true);
            for x in cs {
                e = e.and(contacts_expr(x, session, clock)?);
            }
            e
        }
        Criterion::Any(cs) => {
            let mut e = lit(false);
            for x in cs {
                e = e.or(contacts_expr(x, session, clock)?);
            }
            e
        }
        Criterion::Not(x) => contacts_expr(x, session, clock)?.not(),
        Criterion::Field(f) => {
            let (ty, column) = session.contact_column(&f.field)?;
            cond_expr(f, &ty, column, clock, EmptyRule::Field)?
        }
        Criterion::Sql(sql) => {
            let schema = DFSchema::try_from_qualified_schema(
                crate::engine::session::CONTACTS,
                &session.contacts_schema,
            )?;
            let e = session
                .ctx
                .parse_sql_expr(sql, &schema)
                .map_err(|e| Error::definition("sql", format!("{sql:?}: {e}")))?;
            // A SQL predicate that is null does not hold, as in WHERE.
            expr::holds(e)
        }
        _ => return Err(Error::Internal("not a contacts-only criterion".into())),
    })
}

impl Session {
    /// The type and column expression of a contact field. A field that the
    /// base knows (recognised or declared) but no import has brought yet is
    /// empty for every contact.
    pub fn contact_column(&self, name: &str) -> Result<(FieldType, Expr)> {
        let ty = self
            .manifest
            .contact_field_type(&self.base.config, name)
            .ok_or_else(|| Error::definition(name, format!("unknown contact field {name:?}")))?;
        if self.manifest.fields.iter().any(|f| f.name == name) {
            return Ok((ty, col(name)));
        }
        let null = datafusion::common::ScalarValue::try_from(&ty.arrow_type())?;
        Ok((ty, lit(null)))
    }

    /// The type and column expression of an event column.
    pub fn event_column(&self, name: &str) -> Result<(FieldType, Expr)> {
        let ty = self
            .event_types
            .get(name)
            .cloned()
            .ok_or_else(|| Error::definition(name, format!("unknown event column {name:?}")))?;
        Ok((ty, col(name)))
    }

    /// Evaluate every leaf of a plan: one pass over contacts, one over events
    /// and each query, run concurrently (each pass also runs in parallel
    /// itself; together they keep every core busy while one of them waits
    /// on reads or on its last partition).
    ///
    /// With `keep_latest`, the pass also finds the latest times of the
    /// conditions that depend on them alone, for the next run.
    pub async fn run_leaves(&self, plan: &Plan, clock: &Clock, keep_latest: bool) -> LeafResults {
        async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, u64) {
            let t = std::time::Instant::now();
            let out = f.await;
            (out, t.elapsed().as_millis() as u64)
        }
        let keys = if keep_latest {
            let parts: Vec<_> = plan
                .event_leaves
                .iter()
                .map(|b| self.behavior_parts(b, clock).ok())
                .collect();
            latest::latest_keys(parts.iter().map(Option::as_ref), clock).1
        } else {
            Vec::new()
        };
        let ((contacts, c_ms), ((events, found), e_ms), (queries, q_ms)) = tokio::join!(
            timed(self.contacts_pass(&plan.contact_leaves, clock, None, None, None)),
            timed(self.events_pass(&plan.event_leaves, clock, None, None, &keys)),
            timed(self.queries_pass(&plan.queries)),
        );
        LeafResults {
            contacts,
            events,
            queries,
            pass_ms: [c_ms, e_ms, q_ms],
            latest: found.map(|bits| {
                crate::base::changes::NextLatest::New(latest::found(self, clock, &keys, bits))
            }),
            patched: Vec::new(),
        }
    }

    /// The contacts pass over every contact, or over the internal ids of
    /// `range` only (the results then hold for those contacts only). With
    /// `only`, the leaves it flags need hold for its contacts only; with
    /// `changed_rows` too, the rows of those contacts are read from these
    /// files (see [`crate::base::changes::Dirty::rows_of`]).
    pub(crate) async fn contacts_pass(
        &self,
        leaves: &[Criterion],
        clock: &Clock,
        range: Option<Range<u32>>,
        only: Option<(&RoaringBitmap, &[bool])>,
        changed_rows: Option<&[crate::base::manifest::DataFile]>,
    ) -> Vec<Outcome> {
        let mut out: Vec<Outcome> = Vec::with_capacity(leaves.len());
        let mut exprs = Vec::new();
        let mut slots = Vec::new();
        let mut restricted = Vec::new();
        for (i, leaf) in leaves.iter().enumerate() {
            match contacts_expr(leaf, self, clock) {
                Ok(e) => {
                    exprs.push(e.alias(format!("l{i}")));
                    slots.push(i);
                    restricted.push(only.is_some_and(|(_, r)| r[i]));
                    out.push(Ok(RoaringBitmap::new()));
                }
                Err(e) => out.push(Err(std::sync::Arc::new(e))),
            }
        }
        if exprs.is_empty() {
            return out;
        }
        let rows = only.map(|(rows, _)| (rows, restricted.as_slice()));
        match self
            .contact_bitmaps(&exprs, range.clone(), rows, changed_rows)
            .await
        {
            Ok(bitmaps) => {
                for (slot, bm) in slots.into_iter().zip(bitmaps) {
                    out[slot] = Ok(bm);
                }
            }
            // One expression failed at run time: evaluate them one by one to
            // pin the failure on its leaf only.
            Err(_) if exprs.len() > 1 => {
                for (slot, e) in slots.into_iter().zip(exprs) {
                    out[slot] = self
                        .contact_bitmaps(&[e], range.clone(), None, None)
                        .await
                        .map(|mut v| v.remove(0))
                        .map_err(|e| std::sync::Arc::new(self.name_damaged_file(e)));
                }
            }
            Err(e) => out[slots[0]] = Err(std::sync::Arc::new(self.name_damaged_file(e))),
        }
        out
    }

    /// `SELECT _iid, e1, e2, ... FROM contacts`, one bitmap per expression.
    pub async fn project_bitmaps(&self, exprs: &[Expr]) -> Result<Vec<RoaringBitmap>> {
        let df = self.contacts_frame(exprs).await?;
        collect_masks(df, exprs.len()).await
    }

    /// The contacts pass as a DataFrame: `_iid` and one boolean per leaf.
    async fn contacts_frame(&self, exprs: &[Expr]) -> Result<DataFrame> {
        let mut select = vec![col(IID)];
        select.extend(exprs.iter().cloned());
        Ok(self
            .ctx
            .table(crate::engine::session::CONTACTS)
            .await?
            .select(select)?)
    }

    /// The optimized logical plans of the two passes of a batch, as text
    /// (for `recompute --dry-run`).
    pub async fn explain(&self, plan: &Plan, clock: &Clock) -> Result<(String, Vec<String>)> {
        let mut exprs = Vec::new();
        for (i, leaf) in plan.contact_leaves.iter().enumerate() {
            if let Ok(e) = contacts_expr(leaf, self, clock) {
                exprs.push(e.alias(format!("l{i}")));
            }
        }
        let parts: Vec<BehaviorParts> = plan
            .event_leaves
            .iter()
            .filter_map(|b| self.behavior_parts(b, clock).ok())
            .collect();
        let show = |df: DataFrame| -> Result<String> {
            Ok(df.into_optimized_plan()?.display_indent().to_string())
        };
        let contacts = if exprs.is_empty() {
            "(no contact conditions)".to_string()
        } else {
            show(self.contacts_frame(&exprs).await?)?
        };
        let events = if parts.is_empty() {
            Vec::new()
        } else {
            let (plan, summary) = self.behavior_explain(&parts, clock).await?;
            vec![format!("{summary}\n{plan}")]
        };
        Ok((contacts, events))
    }

    /// The behaviour pass over every contact, or over the internal ids of
    /// `range` only (the results then hold for those contacts only), with
    /// the latest times of `keys` (None when the pass failed or `keys` is
    /// empty).
    pub(crate) async fn events_pass(
        &self,
        leaves: &[Behavior],
        clock: &Clock,
        range: Option<Range<u32>>,
        only: Option<&RoaringBitmap>,
        keys: &[latest::LatestKey],
    ) -> (Vec<Outcome>, Option<Vec<behavior::LeafBits>>) {
        let mut out: Vec<Outcome> = Vec::with_capacity(leaves.len());
        let mut compiled = Vec::new();
        for (i, b) in leaves.iter().enumerate() {
            match self.behavior_parts(b, clock) {
                Ok(parts) => {
                    compiled.push((i, parts));
                    out.push(Ok(RoaringBitmap::new()));
                }
                Err(e) => out.push(Err(std::sync::Arc::new(e))),
            }
        }
        if compiled.is_empty() && keys.is_empty() {
            return (out, None);
        }
        let all = &self.all_contacts;
        let mut parts: Vec<BehaviorParts> = compiled.iter().map(|(_, p)| p.clone()).collect();
        parts.extend(keys.iter().map(|k| k.leaf(clock)));
        match self
            .behavior_pass_of(&parts, clock, range.clone(), None, only)
            .await
        {
            Ok(mut results) => {
                let found = results.split_off(compiled.len());
                for ((slot, p), bits) in compiled.iter().zip(results) {
                    out[*slot] = Ok(p.finish(bits.has, bits.pass, all));
                }
                (out, (!keys.is_empty()).then_some(found))
            }
            // A run-time failure: evaluate the conditions one by one to pin
            // it on the conditions that cause it.
            Err(e) => {
                let shared = std::sync::Arc::new(self.name_damaged_file(e));
                for (slot, p) in &compiled {
                    out[*slot] = match self
                        .behavior_bitmaps_in(std::slice::from_ref(p), clock, range.clone())
                        .await
                    {
                        Ok(mut r) => {
                            let (has, pass) = r.remove(0);
                            Ok(p.finish(has, pass, all))
                        }
                        Err(_) if compiled.len() > 1 => Err(shared.clone()),
                        Err(e) => Err(std::sync::Arc::new(self.name_damaged_file(e))),
                    };
                }
                (out, None)
            }
        }
    }

    async fn queries_pass(&self, queries: &[String]) -> Vec<Outcome> {
        let mut out = Vec::with_capacity(queries.len());
        for q in queries {
            out.push(self.query_bitmap(q).await.map_err(std::sync::Arc::new));
        }
        out
    }

    /// Contacts returned by a read-only query over the ad-hoc SQL tables
    /// that yields `contact_id`.
    pub async fn query_bitmap(&self, q: &str) -> Result<RoaringBitmap> {
        let ids = self.query_plan(q).await?;
        let map = crate::base::ids::ContactIdMap::load(self.base.dir(), &self.manifest)?;
        let mut out = RoaringBitmap::new();
        let mut stream = ids.execute_stream().await?;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let col = batch
                .column(0)
                .as_primitive::<datafusion::arrow::datatypes::UInt64Type>();
            out.extend(col.iter().flatten().filter_map(|c| map.get(c)));
        }
        Ok(out)
    }

    /// The plan of a query criterion, read-only, down to its `contact_id`
    /// column; nothing is read but file metadata.
    pub async fn query_plan(&self, q: &str) -> Result<DataFrame> {
        let ctx = crate::engine::tables::user_context(&self.base, &self.manifest)?;
        let user = crate::engine::guard::guarded(&ctx, q).await?;
        if user
            .schema()
            .field_with_unqualified_name("contact_id")
            .is_err()
        {
            return Err(Error::usage(
                "a query criterion must return a contact_id column",
            ));
        }
        Ok(user.select(vec![datafusion::logical_expr::cast(
            col("contact_id"),
            datafusion::arrow::datatypes::DataType::UInt64,
        )])?)
    }
}

/// `range.start <= _iid < range.end`.
pub(crate) fn iid_range(r: Range<u32>) -> Expr {
    use datafusion::common::ScalarValue;
    col(IID)
        .gt_eq(lit(ScalarValue::UInt32(Some(r.start))))
        .and(col(IID).lt(lit(ScalarValue::UInt32(Some(r.end)))))
}

/// Stream a plan whose first column is `_iid` and the next `n` are booleans
/// into `n` bitmaps.
async fn collect_masks(df: DataFrame, n: usize) -> Result<Vec<RoaringBitmap>> {
    masks_of(df.execute_stream().await?, n).await
}

/// [`collect_masks`] of a stream of batches: `_iid`, then the masks.
async fn masks_of(
    mut stream: datafusion::physical_plan::SendableRecordBatchStream,
    n: usize,
) -> Result<Vec<RoaringBitmap>> {
    let mut out = vec![RoaringBitmap::new(); n];
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let ids = iid_column(&batch)?;
        for (k, bm) in out.iter_mut().enumerate() {
            let mask: &BooleanArray = batch.column(k + 1).as_boolean();
            add_masked(bm, ids, mask);
        }
    }
    Ok(out)
}

/// Where tree evaluation finds stored bitmaps.
pub trait Bitmaps {
    fn all(&self) -> &RoaringBitmap;
    /// The members of a segment (by id), or why they are not available.
    fn segment(&self, id: &str) -> Outcome;
    fn import(&self, id: &str) -> Outcome;
}

/// Evaluate a tree on bitmaps: the contacts of `env.all()` it holds for
/// (every bitmap read is cut to them, so that what the nodes above combine
/// already is).
pub fn eval(node: &Node, leaves: &LeafResults, env: &dyn Bitmaps) -> Outcome {
    let all = env.all();
    Ok(match node {
        Node::All(cs) => {
            let mut acc: Option<RoaringBitmap> = None;
            for c in cs {
                let b = eval(c, leaves, env)?;
                acc = Some(match acc {
                    None => b,
                    Some(a) => a & b,
                });
            }
            acc.unwrap_or_else(|| all.clone())
        }
        Node::Any(cs) => {
            let mut acc = RoaringBitmap::new();
            for c in cs {
                acc |= eval(c, leaves, env)?;
            }
            acc
        }
        Node::Not(c) => all - eval(c, leaves, env)?,
        Node::Contacts(i) => leaves.contacts[*i].as_ref().map_err(Clone::clone)? & all,
        Node::Events(i) => leaves.events[*i].as_ref().map_err(Clone::clone)? & all,
        Node::Query(i) => leaves.queries[*i].as_ref().map_err(Clone::clone)? & all,
        Node::Segment(id) => env.segment(id)? & all,
        Node::Import(id) => env.import(id)? & all,
    })
}
