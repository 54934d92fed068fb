//! The behaviour pass: every behaviour condition of a batch evaluated in one
//! scan of events.
//!
//! Each condition is split into what a row must satisfy (its event types, a
//! closed interval of `ts`, and an optional boolean over other columns such
//! as operations and `where` filters) and a per-contact aggregate with its
//! `having` test. DataFusion scans events once per contact shard (a range of
//! internal ids; the files are sorted by id, so row groups and pages outside
//! the range are pruned) and computes the `where` booleans; the kernel below
//! dispatches each row on its event type's dictionary code to the conditions
//! that accept that type only, and accumulates counts, sums, minima... in
//! dense per-contact arrays. The `having` tests then run as DataFusion
//! expressions over the accumulated values, and the results are written
//! straight into bitmaps. Cost grows with the rows and the conditions that
//! accept them, not with rows × conditions, and memory with the shard.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, DictionaryArray, Float64Array, Int64Array, RecordBatch,
    StringArray, TimestampMicrosecondArray, UInt32Array,
};
use datafusion::arrow::buffer::BooleanBuffer;
use datafusion::arrow::datatypes::{
    DataType, Field, Float64Type, Int32Type, Int64Type, Schema, SchemaRef, UInt32Type,
};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{Expr, col, lit, when};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::{DataFrame, SessionContext};
use futures::StreamExt;
use roaring::RoaringBitmap;

use crate::base::schema::{FieldType, IID};
use crate::bitmaps::materialize::add_masked;
use crate::compile::Session;
use crate::compile::expr::{self, Clock, EmptyRule, cond_expr, op_expr, ts_lit};
use crate::compile::session::EVENTS;
use crate::criteria::operand::operand;
use crate::criteria::{Agg, Behavior, Bound, Op, Operand, Window};
use crate::error::{Error, Result};

/// Memory for the per-contact state of one shard; a shard covers as many
/// contacts as fit, so the pass runs in bounded memory on any base.
const SHARD_STATE_BYTES: usize = 256 << 20;
/// Shards per thread: smaller shards keep the state in cache and balance the
/// threads; each costs a look at every file's page index.
const SHARDS_PER_THREAD: usize = 4;
/// Contacts per chunk when the `having` tests turn state into bitmaps.
const HAVING_CHUNK: usize = 64 * 1024;

/// A behaviour condition compiled for the pass.
#[derive(Debug, Clone)]
pub struct BehaviorParts {
    types: Vec<String>,
    /// Matching rows have `lo <= ts <= hi` (µs).
    lo: i64,
    hi: i64,
    /// Operations and `where` filters, as one boolean over event columns.
    extra: Option<Expr>,
    /// The numeric column of sum/avg/min/max, as a float.
    value: Option<Expr>,
    agg: Agg,
    /// For a condition on the existence of a matching event: whether a
    /// contact with one passes.
    pub exists: Option<bool>,
    value_ty: FieldType,
    op: Op,
    operand: Operand,
    zero_matches: bool,
}

impl BehaviorParts {
    /// Contacts with no matching event pass too (count or sum tested
    /// against a bound that 0 satisfies): the result is `pass | (all - has)`.
    pub fn finish(
        &self,
        has: RoaringBitmap,
        pass: RoaringBitmap,
        all: &RoaringBitmap,
    ) -> RoaringBitmap {
        if self.zero_matches {
            pass | (all - has)
        } else {
            pass
        }
    }
}

impl Session {
    /// Compile one behaviour condition for the pass.
    pub fn behavior_parts(&self, b: &Behavior, clock: &Clock) -> Result<BehaviorParts> {
        let as_of = clock.as_of_micros();
        let (mut lo, mut hi) = (i64::MIN, as_of);
        match &b.within {
            None => {}
            Some(Window::Last(d)) => lo = lo.max(as_of.saturating_sub(d.micros()) + 1),
            Some(Window::Range { after, before }) => {
                let at = |bound: &Bound| match bound {
                    Bound::Date(d) => clock.day_start(*d),
                    Bound::Ago(d) => as_of.saturating_sub(d.micros()),
                };
                if let Some(a) = after {
                    lo = lo.max(at(a));
                }
                if let Some(bf) = before {
                    hi = hi.min(at(bf).saturating_sub(1));
                }
            }
        }
        let mut extra: Option<Expr> = None;
        let mut and = |e: Expr| {
            extra = Some(match extra.take() {
                None => e,
                Some(x) => x.and(e),
            })
        };
        if let Some(ops) = &b.operations {
            let ops: Vec<Expr> = ops.iter().map(|o| lit(o.clone())).collect();
            and(col("operation_id").in_list(ops, false));
        }
        for w in &b.wheres {
            let (ty, column) = self.event_column(&w.field)?;
            and(cond_expr(w, &ty, column, clock, EmptyRule::Field)?);
        }
        // A row whose filter is null does not match, as in WHERE.
        let extra = extra.map(expr::holds);
        let h = &b.having;
        let value_ty = h.value_type();
        let having_operand =
            operand(&value_ty, h.op, &h.value).map_err(|m| Error::criteria("having", m))?;
        let value = match h.agg {
            Agg::Sum | Agg::Avg | Agg::Min | Agg::Max => {
                let name = h.column.as_deref().unwrap_or("amount");
                let (ty, column) = self.event_column(name)?;
                if !matches!(ty, FieldType::Number { .. }) {
                    return Err(Error::criteria(
                        "having.field",
                        format!("{name:?} is not a numeric event column"),
                    ));
                }
                Some(datafusion::logical_expr::cast(column, DataType::Float64))
            }
            _ => None,
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
            types: b.events.clone(),
            lo,
            hi,
            extra,
            value,
            agg: h.agg,
            exists,
            value_ty,
            op: h.op,
            operand: having_operand,
            zero_matches,
        })
    }

    /// (contacts with a matching event, contacts whose aggregate passes) for
    /// each condition, in one scan of events.
    pub async fn behavior_bitmaps(
        &self,
        parts: &[BehaviorParts],
        clock: &Clock,
    ) -> Result<Vec<(RoaringBitmap, RoaringBitmap)>> {
        let scan = Arc::new(Scan::new(self, parts, clock)?);
        let end = self.all_contacts.max().map(|m| m as u64 + 1).unwrap_or(0);
        let mut out = vec![(RoaringBitmap::new(), RoaringBitmap::new()); parts.len()];
        if end == 0 {
            return Ok(out);
        }
        let threads = self.ctx.copied_config().target_partitions().max(1);
        let shards = Arc::new(scan.shards(end, threads));
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // One worker per thread takes the next shard until none is left,
        // reusing its state arrays from shard to shard.
        let mut workers = Vec::with_capacity(threads);
        for _ in 0..threads.min(shards.len()) {
            let (ctx, scan, shards, next) =
                (self.ctx.clone(), scan.clone(), shards.clone(), next.clone());
            workers.push(tokio::spawn(async move {
                let mut results = Vec::new();
                let mut state: Option<State> = None;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&(lo, hi)) = shards.get(i) else {
                        break;
                    };
                    let len = (hi - lo) as usize;
                    let st = match &mut state {
                        Some(st) if st.capacity() >= len => {
                            st.reset(len);
                            st
                        }
                        _ => state.insert(State::new(&scan.leaves, len)),
                    };
                    results.push(scan.run_shard(&ctx, st, lo, hi).await?);
                }
                Ok::<_, Error>(results)
            }));
        }
        for w in workers {
            let shards = w
                .await
                .map_err(|e| Error::Internal(format!("events scan task: {e}")))??;
            for shard in shards {
                for (acc, (has, pass)) in out.iter_mut().zip(shard) {
                    acc.0 |= has;
                    acc.1 |= pass;
                }
            }
        }
        Ok(out)
    }

    /// The plan of the scan (for `recompute --dry-run`) and a line on how its
    /// rows are dispatched.
    pub async fn behavior_explain(
        &self,
        parts: &[BehaviorParts],
        clock: &Clock,
    ) -> Result<(String, String)> {
        let scan = Scan::new(self, parts, clock)?;
        let end = self.all_contacts.max().map(|m| m + 1).unwrap_or(0);
        let df = scan.frame(&self.ctx, 0, end).await?;
        let plan = df.into_optimized_plan()?.display_indent().to_string();
        let threads = self.ctx.copied_config().target_partitions().max(1);
        let shards = scan.shards(end as u64, threads).len();
        let mut types: Vec<String> = scan
            .by_type
            .iter()
            .map(|(t, ls)| format!("{t}: {}", ls.len()))
            .collect();
        types.sort();
        let aggregated = parts.iter().filter(|p| p.exists.is_none()).count();
        let summary = format!(
            "{} condition(s) ({} on existence, {} aggregated) in {} shard(s) of contacts; \
             conditions per event type: {}",
            parts.len(),
            parts.len() - aggregated,
            aggregated,
            shards,
            types.join(", ")
        );
        Ok((plan, summary))
    }
}

/// A condition as the kernel sees it.
#[derive(Debug, Clone, Copy)]
struct Leaf {
    lo: i64,
    hi: i64,
    extra: Option<usize>,
    value: Option<usize>,
    agg: Agg,
    /// Only whether a matching event exists matters, and whether a contact
    /// with one passes.
    exists: Option<bool>,
}

/// The shared scan of a batch of behaviour conditions.
struct Scan {
    leaves: Vec<Leaf>,
    /// Event type → the conditions that accept it.
    by_type: HashMap<String, Vec<u32>>,
    /// Columns projected after `_iid`, `ts`, `type`: values, then extras.
    values: Vec<Expr>,
    extras: Vec<Expr>,
    /// Rows outside `[ts_lo, ts_hi]` match no condition.
    ts_lo: i64,
    ts_hi: i64,
    /// The `having` tests of the aggregated conditions.
    having: Vec<HavingTest>,
    ts_type: DataType,
}

/// The `having` test of one aggregated condition, over a batch of its
/// count `n` and aggregate `a`.
struct HavingTest {
    leaf: usize,
    schema: SchemaRef,
    pass: Arc<dyn PhysicalExpr>,
}

/// Deduplicate expressions by their text.
fn slot(exprs: &mut Vec<Expr>, e: &Expr) -> usize {
    let key = e.to_string();
    match exprs.iter().position(|x| x.to_string() == key) {
        Some(i) => i,
        None => {
            exprs.push(e.clone());
            exprs.len() - 1
        }
    }
}

impl Scan {
    fn new(session: &Session, parts: &[BehaviorParts], clock: &Clock) -> Result<Scan> {
        let ts_type = session
            .events_schema
            .field_with_name("ts")
            .map(|f| f.data_type().clone())
            .unwrap_or(DataType::Timestamp(
                datafusion::arrow::datatypes::TimeUnit::Microsecond,
                Some("UTC".into()),
            ));
        let mut leaves = Vec::with_capacity(parts.len());
        let mut by_type: HashMap<String, Vec<u32>> = HashMap::new();
        let (mut values, mut extras) = (Vec::new(), Vec::new());
        let (mut ts_lo, mut ts_hi) = (i64::MAX, i64::MIN);
        let mut having = Vec::new();
        for (k, p) in parts.iter().enumerate() {
            let mut types = p.types.clone();
            types.sort();
            types.dedup();
            for t in types {
                by_type.entry(t).or_default().push(k as u32);
            }
            if p.lo <= p.hi {
                ts_lo = ts_lo.min(p.lo);
                ts_hi = ts_hi.max(p.hi);
            }
            // The extra filter is evaluated on the rows of the condition's
            // event types only.
            let extra = p.extra.as_ref().map(|e| {
                let types: Vec<Expr> = p.types.iter().map(|t| lit(t.clone())).collect();
                let restricted = when(col("type").in_list(types, false), e.clone())
                    .otherwise(lit(false))
                    .expect("a case with one branch");
                slot(&mut extras, &restricted)
            });
            leaves.push(Leaf {
                lo: p.lo,
                hi: p.hi,
                extra,
                value: p.value.as_ref().map(|e| slot(&mut values, e)),
                agg: p.agg,
                exists: p.exists,
            });
            if p.exists.is_some() {
                continue;
            }
            // The having test over the accumulated count `n` and value `a`
            // (a sum is 0, never empty, when nothing matched), each over a
            // batch of its own columns.
            let mut fields = vec![Field::new("n", DataType::Int64, false)];
            match p.agg {
                Agg::Count => {}
                Agg::First | Agg::Last => fields.push(Field::new("a", ts_type.clone(), true)),
                _ => fields.push(Field::new("a", DataType::Float64, p.agg != Agg::Sum)),
            }
            let value = match p.agg {
                Agg::Count => col("n"),
                _ => col("a"),
            };
            let value = if matches!(p.value_ty, FieldType::Number { .. }) {
                datafusion::logical_expr::cast(value, DataType::Float64)
            } else {
                value
            };
            let pass = col("n").gt(lit(0i64)).and(op_expr(
                &p.value_ty,
                p.op,
                &p.operand,
                false,
                value,
                clock,
                EmptyRule::Aggregate,
            ));
            let schema = Arc::new(Schema::new(fields));
            let df_schema = Arc::new(DFSchema::try_from(schema.as_ref().clone())?);
            let simplifier = ExprSimplifier::new(
                SimplifyContext::builder()
                    .with_schema(df_schema.clone())
                    .build(),
            );
            let pass = simplifier.simplify(simplifier.coerce(pass, &df_schema)?)?;
            having.push(HavingTest {
                leaf: k,
                schema,
                pass: session.ctx.create_physical_expr(pass, &df_schema)?,
            });
        }
        Ok(Scan {
            leaves,
            by_type,
            values,
            extras,
            ts_lo,
            ts_hi,
            having,
            ts_type,
        })
    }

    /// Bytes of state per contact.
    fn bytes_per_contact(&self) -> usize {
        self.leaves
            .iter()
            .map(|l| match (l.exists, l.agg) {
                (Some(_), _) | (_, Agg::Count) => 4,
                (_, Agg::First | Agg::Last) => 12,
                _ => 16,
            })
            .sum::<usize>()
            .max(1)
    }

    /// Ranges of internal ids `[lo, hi)` covering `0..end`: a few per
    /// thread, each small enough for its state to fit the budget.
    fn shards(&self, end: u64, threads: usize) -> Vec<(u32, u32)> {
        let fit = (SHARD_STATE_BYTES / self.bytes_per_contact()).max(HAVING_CHUNK) as u64;
        let even = end
            .div_ceil((threads * SHARDS_PER_THREAD) as u64)
            .max(HAVING_CHUNK as u64);
        let len = fit.min(even);
        let mut out = Vec::new();
        let mut lo = 0u64;
        while lo < end {
            let hi = (lo + len).min(end);
            out.push((lo as u32, hi as u32));
            lo = hi;
        }
        out
    }

    /// `_iid, ts (µs), type, values..., extras...` of the events of contacts
    /// `[lo, hi)` that some condition may match.
    async fn frame(&self, ctx: &SessionContext, lo: u32, hi: u32) -> Result<DataFrame> {
        let iid = || col(IID);
        let mut filter = iid()
            .gt_eq(lit(ScalarValue::UInt32(Some(lo))))
            .and(iid().lt(lit(ScalarValue::UInt32(Some(hi)))));
        if self.ts_lo <= self.ts_hi {
            if self.ts_lo > i64::MIN {
                filter = filter.and(col("ts").gt_eq(ts_lit(self.ts_lo)));
            }
            filter = filter.and(col("ts").lt_eq(ts_lit(self.ts_hi)));
        }
        let mut select = vec![
            iid(),
            datafusion::logical_expr::cast(col("ts"), DataType::Int64).alias("ts"),
            col("type"),
        ];
        for (j, v) in self.values.iter().enumerate() {
            select.push(v.clone().alias(format!("v{j}")));
        }
        for (j, x) in self.extras.iter().enumerate() {
            select.push(x.clone().alias(format!("x{j}")));
        }
        Ok(ctx.table(EVENTS).await?.filter(filter)?.select(select)?)
    }

    async fn run_shard(
        &self,
        ctx: &SessionContext,
        state: &mut State,
        lo: u32,
        hi: u32,
    ) -> Result<Vec<(RoaringBitmap, RoaringBitmap)>> {
        if self.ts_lo <= self.ts_hi {
            let mut stream = self.frame(ctx, lo, hi).await?.execute_stream().await?;
            while let Some(batch) = stream.next().await {
                self.accumulate(state, lo, &batch?)?;
            }
        }
        self.finish(state, lo)
    }

    /// The kernel: add one batch of rows to the state.
    fn accumulate(&self, st: &mut State, lo: u32, batch: &RecordBatch) -> Result<()> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let iid = batch.column(0).as_primitive_opt::<UInt32Type>();
        let ts = batch.column(1).as_primitive_opt::<Int64Type>();
        let (Some(iid), Some(ts)) = (iid, ts) else {
            return Err(Error::Internal(
                "events scan: unexpected id or ts type".into(),
            ));
        };
        let (iid, ts) = (iid.values(), ts.values());
        let types = dictionary(batch.column(2))?;
        let keys = types.keys().values();
        let names = types
            .values()
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| Error::Internal("events scan: type values are not text".into()))?;
        let empty: &[u32] = &[];
        let dispatch: Vec<&[u32]> = (0..names.len())
            .map(|i| {
                if names.is_null(i) {
                    return empty;
                }
                self.by_type
                    .get(names.value(i))
                    .map(|v| v.as_slice())
                    .unwrap_or(empty)
            })
            .collect();
        let first_value = 3;
        let values: Vec<&Float64Array> = (0..self.values.len())
            .map(|j| batch.column(first_value + j).as_primitive::<Float64Type>())
            .collect();
        let first_extra = first_value + self.values.len();
        let extras: Vec<BooleanBuffer> = (0..self.extras.len())
            .map(|j| {
                let b: &BooleanArray = batch.column(first_extra + j).as_boolean();
                match b.nulls() {
                    Some(valid) => b.values() & valid.inner(),
                    None => b.values().clone(),
                }
            })
            .collect();
        let type_valid = types.nulls();
        for r in 0..rows {
            if type_valid.is_some_and(|v| v.is_null(r)) {
                continue;
            }
            let leaves = dispatch[keys[r] as usize];
            if leaves.is_empty() {
                continue;
            }
            let t = ts[r];
            let i = (iid[r] - lo) as usize;
            for &l in leaves {
                let l = l as usize;
                let leaf = &self.leaves[l];
                if t < leaf.lo || t > leaf.hi {
                    continue;
                }
                if let Some(x) = leaf.extra
                    && !extras[x].value(r)
                {
                    continue;
                }
                let n = &mut st.n[l][i];
                *n = n.saturating_add(1);
                let first = *n == 1;
                if leaf.exists.is_some() {
                    continue;
                }
                match leaf.agg {
                    Agg::Count => {}
                    Agg::First => {
                        let v = &mut st.t[l][i];
                        if first || t < *v {
                            *v = t;
                        }
                    }
                    Agg::Last => {
                        let v = &mut st.t[l][i];
                        if first || t > *v {
                            *v = t;
                        }
                    }
                    Agg::Sum | Agg::Avg | Agg::Min | Agg::Max => {
                        let column = values[leaf.value.expect("value column")];
                        if column.is_null(r) {
                            continue;
                        }
                        let x = column.value(r);
                        let nn = &mut st.nn[l][i];
                        let v = &mut st.f[l][i];
                        match leaf.agg {
                            Agg::Sum | Agg::Avg => *v += x,
                            Agg::Min if *nn == 0 || x < *v => *v = x,
                            Agg::Max if *nn == 0 || x > *v => *v = x,
                            _ => {}
                        }
                        *nn += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// Turn a shard's state into (has, pass) bitmaps per condition.
    fn finish(&self, st: &State, lo: u32) -> Result<Vec<(RoaringBitmap, RoaringBitmap)>> {
        let mut out: Vec<(RoaringBitmap, RoaringBitmap)> = Vec::with_capacity(self.leaves.len());
        for (l, leaf) in self.leaves.iter().enumerate() {
            let ids = st.n[l][..st.len]
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, _)| lo + i as u32);
            let has = RoaringBitmap::from_sorted_iter(ids).expect("ascending ids");
            let pass = if leaf.exists == Some(true) {
                has.clone()
            } else {
                RoaringBitmap::new()
            };
            out.push((has, pass));
        }
        if self.having.is_empty() {
            return Ok(out);
        }
        let len = st.len;
        let mut start = 0;
        while start < len {
            let end = (start + HAVING_CHUNK).min(len);
            let ids: UInt32Array = (start..end).map(|i| lo + i as u32).collect();
            for test in &self.having {
                let batch = self.having_batch(test, st, start, end)?;
                let mask = test.pass.evaluate(&batch)?.into_array(batch.num_rows())?;
                add_masked(&mut out[test.leaf].1, &ids, mask.as_boolean());
            }
            start = end;
        }
        Ok(out)
    }

    /// Contacts `[start, end)` of a shard with one condition's count and
    /// aggregate.
    fn having_batch(
        &self,
        test: &HavingTest,
        st: &State,
        start: usize,
        end: usize,
    ) -> Result<RecordBatch> {
        let k = test.leaf;
        let leaf = &self.leaves[k];
        let n = &st.n[k][start..end];
        let mut columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from_iter_values(
            n.iter().map(|&c| c as i64),
        ))];
        match leaf.agg {
            Agg::Count => {}
            Agg::First | Agg::Last => {
                let t = &st.t[k][start..end];
                let a: TimestampMicrosecondArray = n
                    .iter()
                    .zip(t)
                    .map(|(&c, &v)| (c > 0).then_some(v))
                    .collect();
                let tz = match &self.ts_type {
                    DataType::Timestamp(_, tz) => tz.clone(),
                    _ => None,
                };
                columns.push(Arc::new(a.with_timezone_opt(tz)));
            }
            _ => {
                let nn = &st.nn[k][start..end];
                let f = &st.f[k][start..end];
                let a: Float64Array = nn
                    .iter()
                    .zip(f)
                    .map(|(&c, &v)| match leaf.agg {
                        Agg::Sum => Some(v),
                        Agg::Avg => (c > 0).then(|| v / c as f64),
                        _ => (c > 0).then_some(v),
                    })
                    .collect();
                columns.push(Arc::new(a));
            }
        }
        Ok(RecordBatch::try_new(test.schema.clone(), columns)?)
    }
}

/// Per-contact state of one shard, per condition: matching rows, non-null
/// values, and the float or timestamp accumulator (empty where unused).
struct State {
    len: usize,
    n: Vec<Vec<u32>>,
    nn: Vec<Vec<u32>>,
    f: Vec<Vec<f64>>,
    t: Vec<Vec<i64>>,
}

impl State {
    /// Zeroed state for `len` contacts; written now, so that the kernel does
    /// not fault on pages the allocator mapped lazily (`vec![0; n]` would
    /// map the zero page and copy it on the kernel's first write).
    #[allow(clippy::slow_vector_initialization)]
    fn new(leaves: &[Leaf], len: usize) -> State {
        let sized = |yes: bool| if yes { len } else { 0 };
        let zeros = |n: usize| {
            let mut v = Vec::with_capacity(n);
            v.resize(n, 0u32);
            v
        };
        State {
            len,
            n: leaves.iter().map(|_| zeros(len)).collect(),
            nn: leaves
                .iter()
                .map(|l| zeros(sized(l.exists.is_none() && l.value.is_some())))
                .collect(),
            f: leaves
                .iter()
                .map(|l| {
                    let mut v = Vec::with_capacity(len);
                    v.resize(sized(l.exists.is_none() && l.value.is_some()), 0f64);
                    v
                })
                .collect(),
            t: leaves
                .iter()
                .map(|l| {
                    let mut v = Vec::with_capacity(len);
                    v.resize(
                        sized(l.exists.is_none() && matches!(l.agg, Agg::First | Agg::Last)),
                        0i64,
                    );
                    v
                })
                .collect(),
        }
    }

    /// Contacts the arrays hold.
    fn capacity(&self) -> usize {
        self.n.first().map(|v| v.len()).unwrap_or(usize::MAX)
    }

    /// Zero the state for a shard of `len` contacts (at most the capacity).
    fn reset(&mut self, len: usize) {
        self.len = len;
        for v in self.n.iter_mut().chain(self.nn.iter_mut()) {
            v.fill(0);
        }
        for v in &mut self.f {
            v.fill(0.0);
        }
        for v in &mut self.t {
            v.fill(0);
        }
    }
}

/// The event type column as a dictionary (it is stored and read as one).
fn dictionary(a: &ArrayRef) -> Result<DictionaryArray<Int32Type>> {
    if let Some(d) = a.as_dictionary_opt::<Int32Type>() {
        return Ok(d.clone());
    }
    let cast = datafusion::arrow::compute::cast(
        a,
        &DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
    )?;
    Ok(cast.as_dictionary::<Int32Type>().clone())
}

/// If a count condition gives the same answer for every count from 1 up,
/// that answer: the condition then only asks whether a matching event exists.
fn count_constant_from_one(op: Op, v: &Operand) -> Option<bool> {
    use Operand as O;
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
fn number_holds(op: Op, v: &Operand, x: f64) -> bool {
    use Operand as O;
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
