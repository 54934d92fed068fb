//! Criteria → DataFusion logical plans → roaring bitmaps.
//!
//! A batch of criteria trees (one segment, or every segment of a nightly run)
//! is split into leaves. Maximal subtrees of field and `sql` conditions become
//! one boolean expression each, and all of them are evaluated in a single
//! projection over `contacts` (one scan). All behaviour conditions are
//! evaluated in a single aggregate over `events`: one filtered count and
//! aggregate per condition, grouped by contact (one scan). Identical leaves
//! are computed once. The trees are then evaluated on bitmaps: AND, OR,
//! ANDNOT, NOT as all-contacts minus; segment and import references read
//! stored bitmaps and never rescan.

pub mod expr;
pub mod session;
pub mod udf;

use std::collections::HashMap;
use std::ops::Not;

use datafusion::arrow::array::{AsArray, BooleanArray};
use datafusion::common::DFSchema;
use datafusion::functions_aggregate::expr_fn::{avg, count, max, min, sum};
use datafusion::logical_expr::{Expr, ExprFunctionExt, col, lit};
use datafusion::prelude::DataFrame;
use futures::StreamExt;
use roaring::RoaringBitmap;

use crate::base::schema::{FieldType, IID};
use crate::bitmaps::materialize::{add_masked, iid_column};
use crate::criteria::operand::operand;
use crate::criteria::{Agg, Behavior, Bound, Criterion, Op, Window};
use crate::error::{Error, Result};
use expr::{Clock, EmptyRule, cond_expr, op_expr, ts_lit};
pub use session::{Session, read_only};

/// Behaviour conditions aggregated together in one pass over events; more
/// are split over several passes to bound the per-contact state.
const MAX_AGGREGATES_PER_PASS: usize = 32;

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

/// The leaves of a batch of trees, deduplicated.
#[derive(Debug, Default)]
pub struct Plan {
    pub contact_leaves: Vec<Criterion>,
    pub event_leaves: Vec<Behavior>,
    pub queries: Vec<String>,
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
            let i = *self.index.entry(key).or_insert_with(|| {
                self.contact_leaves.push(c.clone());
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
                let i = *self.index.entry(key).or_insert_with(|| {
                    self.event_leaves.push((**b).clone());
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

/// The bitmap of each leaf, or the error that leaf met.
#[derive(Debug, Default)]
pub struct LeafResults {
    pub contacts: Vec<std::result::Result<RoaringBitmap, String>>,
    pub events: Vec<std::result::Result<RoaringBitmap, String>>,
    pub queries: Vec<std::result::Result<RoaringBitmap, String>>,
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
            let schema =
                DFSchema::try_from_qualified_schema(session::CONTACTS, &session.contacts_schema)?;
            let e = session
                .ctx
                .parse_sql_expr(sql, &schema)
                .map_err(|e| Error::criteria("sql", format!("{sql:?}: {e}")))?;
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
        if let Some(ty) = self.field_types.get(name) {
            return Ok((ty.clone(), col(name)));
        }
        let ty = self
            .config_fields
            .get(name)
            .cloned()
            .or_else(|| crate::base::schema::recognised_contact_field(name))
            .ok_or_else(|| Error::criteria(name, format!("unknown contact field {name:?}")))?;
        let null = datafusion::common::ScalarValue::try_from(&ty.arrow_type())?;
        Ok((ty, lit(null)))
    }

    /// The type and column expression of an event column.
    pub fn event_column(&self, name: &str) -> Result<(FieldType, Expr)> {
        let ty = self
            .event_types
            .get(name)
            .cloned()
            .ok_or_else(|| Error::criteria(name, format!("unknown event column {name:?}")))?;
        Ok((ty, col(name)))
    }

    /// Evaluate every leaf of a plan: one pass over contacts, one over events,
    /// then each query.
    pub async fn run_leaves(&self, plan: &Plan, clock: &Clock) -> LeafResults {
        LeafResults {
            contacts: self.contacts_pass(&plan.contact_leaves, clock).await,
            events: self.events_pass(&plan.event_leaves, clock).await,
            queries: self.queries_pass(&plan.queries).await,
        }
    }

    async fn contacts_pass(
        &self,
        leaves: &[Criterion],
        clock: &Clock,
    ) -> Vec<std::result::Result<RoaringBitmap, String>> {
        let mut out: Vec<std::result::Result<RoaringBitmap, String>> =
            Vec::with_capacity(leaves.len());
        let mut exprs = Vec::new();
        let mut slots = Vec::new();
        for (i, leaf) in leaves.iter().enumerate() {
            match contacts_expr(leaf, self, clock) {
                Ok(e) => {
                    exprs.push(e.alias(format!("l{i}")));
                    slots.push(i);
                    out.push(Ok(RoaringBitmap::new()));
                }
                Err(e) => out.push(Err(e.to_string())),
            }
        }
        if exprs.is_empty() {
            return out;
        }
        match self.project_bitmaps(&exprs).await {
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
                        .project_bitmaps(&[e])
                        .await
                        .map(|mut v| v.remove(0))
                        .map_err(|e| e.to_string());
                }
            }
            Err(e) => out[slots[0]] = Err(e.to_string()),
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
        Ok(self.ctx.table(session::CONTACTS).await?.select(select)?)
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
        let mut parts = Vec::new();
        for (i, b) in plan.event_leaves.iter().enumerate() {
            if let Ok(p) = self.behavior_parts(b, clock) {
                parts.push((i, p));
            }
        }
        let show = |df: DataFrame| -> Result<String> {
            Ok(df.into_optimized_plan()?.display_indent().to_string())
        };
        let contacts = if exprs.is_empty() {
            "(no contact conditions)".to_string()
        } else {
            show(self.contacts_frame(&exprs).await?)?
        };
        let (exists, grouped): (Vec<_>, Vec<_>) =
            parts.into_iter().partition(|(_, p)| p.exists.is_some());
        let mut events = Vec::new();
        if !exists.is_empty() {
            events.push(format!(
                "{} existence condition(s), no aggregate:\n{}",
                exists.len(),
                show(self.exists_frame(&exists).await?)?
            ));
        }
        for chunk in grouped.chunks(MAX_AGGREGATES_PER_PASS) {
            events.push(format!(
                "{} aggregated condition(s), grouped by contact:\n{}",
                chunk.len(),
                show(self.events_frame(chunk, clock).await?)?
            ));
        }
        Ok((contacts, events))
    }

    async fn events_pass(
        &self,
        leaves: &[Behavior],
        clock: &Clock,
    ) -> Vec<std::result::Result<RoaringBitmap, String>> {
        let mut out: Vec<std::result::Result<RoaringBitmap, String>> =
            Vec::with_capacity(leaves.len());
        let mut compiled = Vec::new();
        for (i, b) in leaves.iter().enumerate() {
            match self.behavior_parts(b, clock) {
                Ok(parts) => {
                    compiled.push((i, parts));
                    out.push(Ok(RoaringBitmap::new()));
                }
                Err(e) => out.push(Err(e.to_string())),
            }
        }
        if compiled.is_empty() {
            return out;
        }
        // Conditions that only ask whether a matching event exists need no
        // aggregate: one projection over events gives their bitmaps. The
        // others are aggregated per contact, a bounded number per pass so that
        // the aggregation state stays small on large bases.
        let (exists, grouped): (Vec<_>, Vec<_>) =
            compiled.into_iter().partition(|(_, p)| p.exists.is_some());
        let mut groups: Vec<(bool, Vec<(usize, BehaviorParts)>)> = Vec::new();
        if !exists.is_empty() {
            groups.push((true, exists));
        }
        let mut grouped = grouped.into_iter().peekable();
        while grouped.peek().is_some() {
            groups.push((
                false,
                grouped.by_ref().take(MAX_AGGREGATES_PER_PASS).collect(),
            ));
        }
        let all = self.all_contacts.clone();
        for (exists_only, group) in groups {
            match self.group_bitmaps(exists_only, &group, clock).await {
                Ok(results) => {
                    for ((slot, parts), (has, pass)) in group.iter().zip(results) {
                        out[*slot] = Ok(finish_behavior(parts, has, pass, &all));
                    }
                }
                // Pin a run-time failure on the conditions that cause it.
                Err(e) => {
                    let msg = e.to_string();
                    for (slot, parts) in &group {
                        let one = [(*slot, parts.clone())];
                        out[*slot] = match self.group_bitmaps(exists_only, &one, clock).await {
                            Ok(mut r) => {
                                let (has, pass) = r.remove(0);
                                Ok(finish_behavior(parts, has, pass, &all))
                            }
                            Err(_) if group.len() > 1 => Err(msg.clone()),
                            Err(e) => Err(e.to_string()),
                        };
                    }
                }
            }
        }
        out
    }

    /// The existence pass as a DataFrame: `_iid` and one boolean per
    /// condition, for the events matching any of them.
    async fn exists_frame(&self, parts: &[(usize, BehaviorParts)]) -> Result<DataFrame> {
        let mut select = vec![col(IID)];
        let mut any = lit(false);
        for (k, (_, p)) in parts.iter().enumerate() {
            let f = format!("f{k}");
            select.push(p.filter.clone().alias(&f));
            any = any.or(col(&f));
        }
        Ok(self
            .ctx
            .table(session::EVENTS)
            .await?
            .select(select)?
            .filter(any)?)
    }

    /// (contacts with a matching event, contacts whose aggregate passes) for
    /// a group of conditions evaluated in one pass over events.
    async fn group_bitmaps(
        &self,
        exists_only: bool,
        parts: &[(usize, BehaviorParts)],
        clock: &Clock,
    ) -> Result<Vec<(RoaringBitmap, RoaringBitmap)>> {
        if !exists_only {
            return self.aggregate_bitmaps(parts, clock).await;
        }
        let df = self.exists_frame(parts).await?;
        let has = collect_masks(df, parts.len()).await?;
        Ok(has
            .into_iter()
            .zip(parts)
            .map(|(h, (_, p))| {
                let pass = if p.exists == Some(true) {
                    h.clone()
                } else {
                    RoaringBitmap::new()
                };
                (h, pass)
            })
            .collect())
    }

    /// The row filter, aggregate and having test of one behaviour condition.
    fn behavior_parts(&self, b: &Behavior, clock: &Clock) -> Result<BehaviorParts> {
        let as_of = clock.as_of_micros();
        let types: Vec<Expr> = b.events.iter().map(|t| lit(t.clone())).collect();
        let mut filter = col("ts")
            .lt_eq(ts_lit(as_of))
            .and(col("type").in_list(types, false));
        if let Some(ops) = &b.operations {
            let ops: Vec<Expr> = ops.iter().map(|o| lit(o.clone())).collect();
            filter = filter.and(expr::holds(col("operation_id").in_list(ops, false)));
        }
        for w in &b.wheres {
            let (ty, column) = self.event_column(&w.field)?;
            filter = filter.and(cond_expr(w, &ty, column, clock, EmptyRule::Field)?);
        }
        match &b.within {
            None => {}
            Some(Window::Last(d)) => filter = filter.and(col("ts").gt(ts_lit(as_of - d.micros()))),
            Some(Window::Range { after, before }) => {
                let at = |bound: &Bound| match bound {
                    Bound::Date(d) => clock.day_start(*d),
                    Bound::Ago(d) => as_of - d.micros(),
                };
                if let Some(a) = after {
                    filter = filter.and(col("ts").gt_eq(ts_lit(at(a))));
                }
                if let Some(bf) = before {
                    filter = filter.and(col("ts").lt(ts_lit(at(bf))));
                }
            }
        }
        let h = &b.having;
        let value_ty = h.value_type();
        let having_operand =
            operand(&value_ty, h.op, &h.value).map_err(|m| Error::criteria("having", m))?;
        let column = h.column.clone().unwrap_or_else(|| "amount".into());
        let agg_column = match h.agg {
            Agg::Count => None,
            Agg::First | Agg::Last => Some("ts".to_string()),
            _ => Some(column.clone()),
        };
        let agg = match h.agg {
            Agg::Count => None,
            Agg::Sum => Some(sum(col(column.as_str()))),
            Agg::Avg => Some(avg(col(column.as_str()))),
            Agg::Min => Some(min(col(column.as_str()))),
            Agg::Max => Some(max(col(column.as_str()))),
            Agg::First => Some(min(col("ts"))),
            Agg::Last => Some(max(col("ts"))),
        };
        // A count condition that holds the same for every count from 1 up
        // only asks whether a matching event exists (and whether that passes).
        let exists = match h.agg {
            Agg::Count => count_constant_from_one(h.op, &having_operand),
            _ => None,
        };
        // Contacts with no matching event: count and sum are 0, the others empty.
        let zero_matches = match h.agg {
            Agg::Count | Agg::Sum => number_holds(h.op, &having_operand, 0.0),
            _ => h.op == Op::IsEmpty,
        };
        Ok(BehaviorParts {
            filter,
            agg,
            agg_column,
            exists,
            agg_kind: h.agg,
            value_ty,
            op: h.op,
            operand: having_operand,
            zero_matches,
        })
    }

    /// One aggregate over events for many behaviour conditions; for each,
    /// the contacts with a matching event and those whose aggregate passes.
    async fn aggregate_bitmaps(
        &self,
        parts: &[(usize, BehaviorParts)],
        clock: &Clock,
    ) -> Result<Vec<(RoaringBitmap, RoaringBitmap)>> {
        let df = self.events_frame(parts, clock).await?;
        let masks = collect_masks(df, parts.len() * 2).await?;
        let mut it = masks.into_iter();
        let mut out = Vec::with_capacity(parts.len());
        while let (Some(h), Some(p)) = (it.next(), it.next()) {
            out.push((h, p));
        }
        Ok(out)
    }

    /// The events pass as a DataFrame: per contact with a matching event,
    /// `h{k}` (has a matching event) and `p{k}` (its aggregate passes) per leaf.
    async fn events_frame(
        &self,
        parts: &[(usize, BehaviorParts)],
        clock: &Clock,
    ) -> Result<DataFrame> {
        // Each condition's row filter is computed once, as a column `f{k}`;
        // the scan keeps rows matching any of them, and each aggregate
        // counts the rows of its own condition.
        let mut pre = vec![col(IID)];
        let mut columns: Vec<&str> = parts
            .iter()
            .filter_map(|(_, p)| p.agg_column.as_deref())
            .collect();
        columns.sort_unstable();
        columns.dedup();
        pre.extend(columns.into_iter().map(col));
        let mut any = lit(false);
        let mut aggs = Vec::new();
        for (k, (_, p)) in parts.iter().enumerate() {
            let f = format!("f{k}");
            pre.push(p.filter.clone().alias(&f));
            any = any.or(col(&f));
            aggs.push(
                count(lit(1))
                    .filter(col(&f))
                    .build()?
                    .alias(format!("n{k}")),
            );
            if let Some(a) = &p.agg {
                aggs.push(a.clone().filter(col(&f)).build()?.alias(format!("a{k}")));
            }
        }
        let mut select = vec![col(IID)];
        for (k, (_, p)) in parts.iter().enumerate() {
            let n = col(format!("n{k}"));
            let has = n.clone().gt(lit(0i64));
            let value = match p.agg_kind {
                Agg::Count => n.clone(),
                Agg::Sum => {
                    datafusion::functions::expr_fn::coalesce(vec![col(format!("a{k}")), lit(0.0)])
                }
                _ => col(format!("a{k}")),
            };
            let value = if matches!(p.value_ty, FieldType::Number { .. }) {
                datafusion::logical_expr::cast(
                    value,
                    datafusion::arrow::datatypes::DataType::Float64,
                )
            } else {
                value
            };
            let pass = has.clone().and(op_expr(
                &p.value_ty,
                p.op,
                &p.operand,
                false,
                value,
                clock,
                EmptyRule::Aggregate,
            ));
            select.push(has.alias(format!("h{k}")));
            select.push(pass.alias(format!("p{k}")));
        }
        let df = self
            .ctx
            .table(session::EVENTS)
            .await?
            .select(pre)?
            .filter(any)?
            .aggregate(vec![col(IID)], aggs)?
            .select(select)?;
        Ok(df)
    }

    async fn queries_pass(
        &self,
        queries: &[String],
    ) -> Vec<std::result::Result<RoaringBitmap, String>> {
        let mut out = Vec::with_capacity(queries.len());
        for q in queries {
            out.push(self.query_bitmap(q).await.map_err(|e| e.to_string()));
        }
        out
    }

    /// Contacts returned by a read-only query over the ad-hoc SQL tables
    /// that yields `contact_id`.
    pub async fn query_bitmap(&self, q: &str) -> Result<RoaringBitmap> {
        let ctx = crate::sql::tables::user_context(&self.base, &self.manifest)?;
        let user = crate::sql::guarded(&ctx, q).await?;
        if user
            .schema()
            .field_with_unqualified_name("contact_id")
            .is_err()
        {
            return Err(Error::usage(
                "a query criterion must return a contact_id column",
            ));
        }
        let ids = user.select(vec![datafusion::logical_expr::cast(
            col("contact_id"),
            datafusion::arrow::datatypes::DataType::UInt64,
        )])?;
        let map = crate::base::contacts::ContactIdMap::load(self.base.dir(), &self.manifest)?;
        let mut out = RoaringBitmap::new();
        let mut stream = ids.execute_stream().await?;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let col = batch
                .column(0)
                .as_primitive::<datafusion::arrow::datatypes::UInt64Type>();
            out.extend(
                col.iter()
                    .flatten()
                    .filter_map(|c| map.to_iid.get(&c).copied()),
            );
        }
        Ok(out)
    }
}

#[derive(Debug, Clone)]
pub struct BehaviorParts {
    filter: Expr,
    agg: Option<Expr>,
    agg_column: Option<String>,
    /// For a condition on the existence of a matching event: whether a
    /// contact with one passes.
    exists: Option<bool>,
    agg_kind: Agg,
    value_ty: FieldType,
    op: Op,
    operand: crate::criteria::Operand,
    zero_matches: bool,
}

fn finish_behavior(
    p: &BehaviorParts,
    has: RoaringBitmap,
    pass: RoaringBitmap,
    all: &RoaringBitmap,
) -> RoaringBitmap {
    if p.zero_matches {
        pass | (all - has)
    } else {
        pass
    }
}

/// If a count condition gives the same answer for every count from 1 up,
/// that answer: the condition then only asks whether a matching event exists.
fn count_constant_from_one(op: Op, v: &crate::criteria::Operand) -> Option<bool> {
    use crate::criteria::Operand as O;
    // Is there a whole number n >= 1 with lo <= n <= hi?
    let some_count_in = |lo: f64, hi: f64| lo.max(1.0).ceil() <= hi;
    let is_count = |x: f64| x >= 1.0 && x.fract() == 0.0;
    match (op, v) {
        (Op::IsNotEmpty, _) => Some(true),
        (Op::IsEmpty, _) => Some(false),
        (Op::Gte, O::Number(x)) if *x <= 1.0 => Some(true),
        (Op::Gt, O::Number(x)) if *x < 1.0 => Some(true),
        (Op::Lt, O::Number(x)) if *x <= 1.0 => Some(false),
        (Op::Lte, O::Number(x)) if *x < 1.0 => Some(false),
        (Op::Eq, O::Number(x)) if !is_count(*x) => Some(false),
        (Op::Neq, O::Number(x)) if !is_count(*x) => Some(true),
        (Op::Between, O::NumberRange(lo, hi)) if !some_count_in(*lo, *hi) => Some(false),
        _ => None,
    }
}

/// Does a number satisfy a having operator (for the zero of count and sum)?
fn number_holds(op: Op, v: &crate::criteria::Operand, x: f64) -> bool {
    use crate::criteria::Operand as O;
    match (op, v) {
        (Op::Eq, O::Number(n)) => x == *n,
        (Op::Neq, O::Number(n)) => x != *n,
        (Op::Lt, O::Number(n)) => x < *n,
        (Op::Lte, O::Number(n)) => x <= *n,
        (Op::Gt, O::Number(n)) => x > *n,
        (Op::Gte, O::Number(n)) => x >= *n,
        (Op::Between, O::NumberRange(lo, hi)) => *lo <= x && x <= *hi,
        (Op::IsNotEmpty, _) => true,
        _ => false,
    }
}

/// Stream a plan whose first column is `_iid` and the next `n` are booleans
/// into `n` bitmaps.
async fn collect_masks(df: DataFrame, n: usize) -> Result<Vec<RoaringBitmap>> {
    let mut out = vec![RoaringBitmap::new(); n];
    let mut stream = df.execute_stream().await?;
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
    fn segment(&self, id: &str) -> std::result::Result<RoaringBitmap, String>;
    fn import(&self, id: &str) -> std::result::Result<RoaringBitmap, String>;
}

/// Evaluate a tree on bitmaps.
pub fn eval(
    node: &Node,
    leaves: &LeafResults,
    env: &dyn Bitmaps,
) -> std::result::Result<RoaringBitmap, String> {
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
            acc.unwrap_or_else(|| env.all().clone())
        }
        Node::Any(cs) => {
            let mut acc = RoaringBitmap::new();
            for c in cs {
                acc |= eval(c, leaves, env)?;
            }
            acc
        }
        Node::Not(c) => env.all() - eval(c, leaves, env)?,
        Node::Contacts(i) => leaves.contacts[*i].clone()?,
        Node::Events(i) => leaves.events[*i].clone()?,
        Node::Query(i) => leaves.queries[*i].clone()?,
        Node::Segment(id) => env.segment(id)?,
        Node::Import(id) => env.import(id)?,
    } & env.all())
}
