//! The behaviour pass: every behaviour condition of a batch evaluated in one
//! scan of events.
//!
//! Each condition is split into what a row must satisfy (its event types, a
//! closed interval of `ts`, and an optional boolean over other columns such
//! as operations and `where` filters) and a per-contact aggregate with its
//! `having` test. DataFusion scans events once per contact shard (a range of
//! internal ids; the files are sorted by id, so row groups and pages outside
//! the range are pruned) and computes the `where` booleans (a filter on one
//! dictionary-encoded column, such as an operation or a URL test, is
//! evaluated on the dictionary's values and looked up by key); the kernel below
//! groups rows by their event type's dictionary code and runs each
//! condition over the rows of its types only, skipping ranges of rows whose
//! times all fall outside its window (files hold a month each), and
//! accumulates counts, sums, minima... in dense per-contact arrays. The
//! `having` tests then run as DataFusion expressions over the accumulated
//! values, and the results are written straight into bitmaps. When a
//! shard's state fits in cache, batches are taken as they come; otherwise
//! its rows are kept until its scan ends and dispatched block of contacts
//! by block, every file's rows for a block together, so that the block's
//! state stays in cache. Cost grows with the rows and the conditions that
//! accept them, not with rows × conditions,
//! and memory with the shard (sized by state and row budgets).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, DictionaryArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::buffer::{BooleanBuffer, NullBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{
    DataType, Field, Float64Type, Int32Type, Int64Type, Schema, SchemaRef, UInt32Type,
};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{Expr, col, lit, when};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::prelude::{DataFrame, SessionContext};
use futures::StreamExt;
use roaring::RoaringBitmap;

use crate::base::schema::{FieldType, IID};
use crate::compile::dictionary::{DictionaryTest, is_dictionary, true_bits};
use crate::compile::expr::{Clock, EmptyRule, cond_expr, op_expr, ts_lit};
use crate::compile::materialize::bits_from;
use crate::criteria::operand::operand;
use crate::criteria::{Agg, Behavior, Bound, Op, Operand, Window};
use crate::engine::Session;
use crate::engine::session::{EVENTS, ScanLayout};
use crate::error::{Error, Result};

/// Memory for the per-contact state of one shard; a shard covers as many
/// contacts as fit, so the pass runs in bounded memory on any base.
const SHARD_STATE_BYTES: usize = 256 << 20;
/// Memory for the scanned rows of one shard, which are kept until the shard
/// is read so that they can be dispatched block of contacts by block.
const SHARD_ROW_BYTES: usize = 192 << 20;
/// Shards per thread: more shards balance the threads; each costs a plan
/// and a look at every file's page index.
const SHARDS_PER_THREAD: usize = 4;
/// Shards per thread when the state fits in cache: without blocks, a
/// larger shard costs nothing but saves a plan.
const DIRECT_SHARDS_PER_THREAD: usize = 2;
/// State per block of contacts: the rows of one block, from every file of
/// the shard, are dispatched together while its state stays in cache.
const BLOCK_STATE_BYTES: usize = 512 << 10;
/// State small enough to stay in cache while a shard's batches are
/// dispatched as they come, in any order of contacts.
const DIRECT_STATE_BYTES: usize = 4 << 20;
/// Separate counts of the kernel's type histogram.
const LANES: usize = 4;
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
        // A row whose filter is null does not match, as in WHERE: the kernel
        // takes a null extra for false.
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
        let shards = Arc::new(scan.shards(end, self.event_rows(), threads, self.scan_layout));
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
                        Some(st) if st.cap >= len => {
                            st.reset(len);
                            st
                        }
                        _ => state.insert(State::new(&scan, len)),
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

    /// Rows of events in the snapshot.
    fn event_rows(&self) -> u64 {
        self.manifest.events.iter().map(|e| e.rows).sum()
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
        let shards = scan
            .shards(end as u64, self.event_rows(), threads, self.scan_layout)
            .len();
        let mut types: Vec<String> = scan
            .by_type
            .iter()
            .map(|(t, ls)| format!("{t}: {}", ls.len()))
            .collect();
        types.sort();
        let aggregated = parts.iter().filter(|p| p.exists.is_none()).count();
        let on_values = scan
            .atoms
            .iter()
            .filter(|a| matches!(a, Atom::Dictionary(..)))
            .count();
        let summary = format!(
            "{} condition(s) ({} on existence, {} aggregated) in {} shard(s) of contacts; \
             conditions per event type: {}; row filters: {} on dictionary values, {} per row",
            parts.len(),
            parts.len() - aggregated,
            aggregated,
            shards,
            types.join(", "),
            on_values,
            scan.atoms.len() - on_values
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
    /// Positions of its accumulators among a contact's float (sum, avg, min,
    /// max) or timestamp (first, last) ones.
    float: usize,
    time: usize,
}

/// The shared scan of a batch of behaviour conditions.
struct Scan {
    leaves: Vec<Leaf>,
    /// Event type → the conditions that accept it.
    by_type: HashMap<String, Vec<u32>>,
    /// Columns projected after `_iid`, `ts`, `type`: values, then the
    /// filters DataFusion computes, then the dictionary columns read as
    /// they are.
    values: Vec<Expr>,
    planned: Vec<Expr>,
    dictionaries: Vec<String>,
    /// The row filters conditions share, and each condition's filter as
    /// the conjunction of some of them.
    atoms: Vec<Atom>,
    extras: Vec<Vec<usize>>,
    /// Rows outside `[ts_lo, ts_hi]` match no condition.
    ts_lo: i64,
    ts_hi: i64,
    /// The `having` tests of the aggregated conditions.
    having: Vec<HavingTest>,
    ts_type: DataType,
    /// Float and timestamp accumulators per contact.
    floats: usize,
    times: usize,
    layout: ScanLayout,
}

/// The `having` test of one aggregated condition, over a batch of its
/// count `n` and aggregate `a`.
struct HavingTest {
    leaf: usize,
    schema: SchemaRef,
    pass: Arc<dyn PhysicalExpr>,
}

/// A row filter of the scan.
enum Atom {
    /// Computed by DataFusion: the `j`th planned column.
    Planned(usize),
    /// A test of the `j`th dictionary column, on its distinct values.
    Dictionary(usize, DictionaryTest),
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

/// The row filters of a scan, as they are collected from its conditions.
#[derive(Default)]
struct Filters {
    planned: Vec<Expr>,
    dictionaries: Vec<String>,
    atoms: Vec<Atom>,
    /// The text of each atom's expression, to share it.
    keys: Vec<String>,
    extras: Vec<Vec<usize>>,
}

impl Filters {
    /// The filter `e` of a condition on events of `types`, as a position in
    /// `extras`. Each conjunct that reads one dictionary column is tested on
    /// the dictionary's values; the others are computed together by
    /// DataFusion, on the rows of the condition's event types only.
    fn add(&mut self, session: &Session, e: &Expr, types: &[String]) -> Result<usize> {
        let mut parts = Vec::new();
        let mut rest: Option<Expr> = None;
        for conjunct in split_conjunction(e) {
            let refs = conjunct.column_refs();
            let dictionary = match refs.iter().next() {
                Some(c) if refs.len() == 1 => session
                    .events_schema
                    .field_with_name(&c.name)
                    .ok()
                    .filter(|f| is_dictionary(f.data_type()))
                    .cloned(),
                _ => None,
            };
            let test = match &dictionary {
                Some(field) => DictionaryTest::new(session, conjunct, field)?,
                None => None,
            };
            match (dictionary, test) {
                (Some(field), Some(test)) => {
                    let key = format!("dictionary: {conjunct}");
                    let at = match self.keys.iter().position(|k| *k == key) {
                        Some(at) => at,
                        None => {
                            let j = slot_name(&mut self.dictionaries, field.name());
                            self.atoms.push(Atom::Dictionary(j, test));
                            self.keys.push(key);
                            self.atoms.len() - 1
                        }
                    };
                    parts.push(at);
                }
                _ => {
                    rest = Some(match rest.take() {
                        None => conjunct.clone(),
                        Some(x) => x.and(conjunct.clone()),
                    })
                }
            }
        }
        if let Some(rest) = rest {
            let types: Vec<Expr> = types.iter().map(|t| lit(t.clone())).collect();
            let restricted = when(col("type").in_list(types, false), rest)
                .otherwise(lit(false))
                .expect("a case with one branch");
            let key = format!("planned: {restricted}");
            let at = match self.keys.iter().position(|k| *k == key) {
                Some(at) => at,
                None => {
                    self.planned.push(restricted);
                    self.atoms.push(Atom::Planned(self.planned.len() - 1));
                    self.keys.push(key);
                    self.atoms.len() - 1
                }
            };
            parts.push(at);
        }
        parts.sort_unstable();
        parts.dedup();
        Ok(match self.extras.iter().position(|x| *x == parts) {
            Some(i) => i,
            None => {
                self.extras.push(parts);
                self.extras.len() - 1
            }
        })
    }
}

/// The position of a name in a list, added if missing.
fn slot_name(names: &mut Vec<String>, name: &str) -> usize {
    match names.iter().position(|n| n == name) {
        Some(i) => i,
        None => {
            names.push(name.to_string());
            names.len() - 1
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
        let mut values = Vec::new();
        let mut filters = Filters::default();
        let (mut ts_lo, mut ts_hi) = (i64::MAX, i64::MIN);
        let mut having = Vec::new();
        let (mut floats, mut times) = (0, 0);
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
            let extra = match &p.extra {
                Some(e) => Some(filters.add(session, e, &p.types)?),
                None => None,
            };
            let value = p.value.as_ref().map(|e| slot(&mut values, e));
            let (float, time) = (floats, times);
            if p.exists.is_none() {
                match p.agg {
                    Agg::First | Agg::Last => times += 1,
                    Agg::Sum | Agg::Avg | Agg::Min | Agg::Max => floats += 1,
                    Agg::Count => {}
                }
            }
            leaves.push(Leaf {
                lo: p.lo,
                hi: p.hi,
                extra,
                value,
                agg: p.agg,
                exists: p.exists,
                float,
                time,
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
            let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
            having.push(HavingTest {
                leaf: k,
                schema,
                pass: session.physical_expr(pass, &df_schema)?,
            });
        }
        Ok(Scan {
            leaves,
            by_type,
            values,
            planned: filters.planned,
            dictionaries: filters.dictionaries,
            atoms: filters.atoms,
            extras: filters.extras,
            ts_lo,
            ts_hi,
            having,
            ts_type,
            floats,
            times,
            layout: session.scan_layout,
        })
    }

    /// Bytes of state per contact.
    fn bytes_per_contact(&self) -> usize {
        (4 * self.leaves.len() + 12 * self.floats + 8 * self.times).max(1)
    }

    /// Whether the state of `contacts` stays in cache while batches are
    /// dispatched as they come.
    fn fits_in_cache(&self, contacts: u32) -> bool {
        contacts as usize * self.bytes_per_contact() <= DIRECT_STATE_BYTES
    }

    /// Bytes a scanned row takes while its shard is buffered.
    fn bytes_per_row(&self) -> usize {
        4 + 8
            + 4
            + 8 * self.values.len()
            + self.planned.len().div_ceil(8)
            + 1
            + 4 * self.dictionaries.len()
    }

    /// Ranges of internal ids `[lo, hi)` covering `0..end`: a few per
    /// thread, each small enough for its state and its buffered rows to fit
    /// their budgets (`rows` is the number of events in the base).
    fn shards(&self, end: u64, rows: u64, threads: usize, layout: ScanLayout) -> Vec<(u32, u32)> {
        let state_fit = (SHARD_STATE_BYTES / self.bytes_per_contact()) as u64;
        let rows_per_contact = rows.div_ceil(end.max(1)).max(1);
        let rows_fit = (SHARD_ROW_BYTES / self.bytes_per_row()) as u64 / rows_per_contact;
        let even = end.div_ceil((threads * SHARDS_PER_THREAD) as u64);
        // A state small enough to take batches as they come needs no
        // blocks: fewer shards then save plans.
        let wide = end.div_ceil((threads * DIRECT_SHARDS_PER_THREAD) as u64);
        let len = match layout.shard_contacts {
            Some(n) => n.max(1) as u64,
            None if self.fits_in_cache(wide.min(u32::MAX as u64) as u32) => {
                wide.max(HAVING_CHUNK as u64)
            }
            None => state_fit.min(rows_fit).min(even).max(HAVING_CHUNK as u64),
        };
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
        for (j, x) in self.planned.iter().enumerate() {
            select.push(x.clone().alias(format!("x{j}")));
        }
        for (j, d) in self.dictionaries.iter().enumerate() {
            select.push(col(d.as_str()).alias(format!("d{j}")));
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
            let plan = self
                .frame(ctx, lo, hi)
                .await?
                .create_physical_plan()
                .await?;
            let plan = without_filters(plan)?;
            let mut stream = datafusion::physical_plan::execute_stream(plan, ctx.task_ctx())?;
            // A shard whose whole state fits in cache takes each batch as it
            // comes, while the batch is in cache too. Otherwise, as each file
            // brings the shard's contacts in id order, the batches are kept
            // and dispatched block of contacts by block, so that a block's
            // state stays in cache while the rows of every file for it are
            // added.
            let direct = self.layout.block_contacts.is_none() && self.fits_in_cache(hi - lo);
            let mut kept = Vec::new();
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                let blockwise = !direct
                    && batch
                        .column(0)
                        .as_primitive_opt::<UInt32Type>()
                        .is_some_and(|ids| ids.values().is_sorted());
                if blockwise {
                    kept.push(batch);
                } else {
                    let rows = self.rows(&batch)?;
                    self.accumulate(state, lo, hi, &rows, 0..rows.iid.len());
                }
            }
            let rows: Vec<Rows> = kept.iter().map(|b| self.rows(b)).collect::<Result<_>>()?;
            let mut cursors = vec![0usize; rows.len()];
            let block = match self.layout.block_contacts {
                Some(n) => n.max(1),
                None => (BLOCK_STATE_BYTES / self.bytes_per_contact()).max(64) as u32,
            };
            let mut a = lo;
            while a < hi {
                let b = a.saturating_add(block).min(hi);
                for (r, at) in rows.iter().zip(cursors.iter_mut()) {
                    let end = *at + r.iid[*at..].partition_point(|&id| id < b);
                    self.accumulate(state, lo, hi, r, *at..end);
                    *at = end;
                }
                a = b;
            }
        }
        self.finish(state, lo)
    }

    /// The columns of a batch of the scan, as the kernel reads them.
    fn rows<'a>(&'a self, batch: &'a RecordBatch) -> Result<Rows<'a>> {
        let iid = batch.column(0).as_primitive_opt::<UInt32Type>();
        let ts = batch.column(1).as_primitive_opt::<Int64Type>();
        let (Some(iid), Some(ts)) = (iid, ts) else {
            return Err(Error::Internal(
                "events scan: unexpected id or ts type".into(),
            ));
        };
        let types = dictionary(batch.column(2))?;
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
        let skip = dispatch.len() as u32;
        let code_of = dispatch
            .iter()
            .enumerate()
            .map(|(k, d)| if d.is_empty() { skip } else { k as u32 })
            .collect();
        let first_value = 3;
        let values: Vec<&Float64Array> = (0..self.values.len())
            .map(|j| batch.column(first_value + j).as_primitive::<Float64Type>())
            .collect();
        let first_planned = first_value + self.values.len();
        let first_dictionary = first_planned + self.planned.len();
        let atoms: Vec<BooleanBuffer> = self
            .atoms
            .iter()
            .map(|atom| match atom {
                Atom::Planned(j) => Ok(true_bits(batch.column(first_planned + j).as_boolean())),
                Atom::Dictionary(j, test) => test.evaluate(batch.column(first_dictionary + j)),
            })
            .collect::<Result<_>>()?;
        let extras: Vec<BooleanBuffer> = self
            .extras
            .iter()
            .map(|parts| {
                let mut bits = atoms[parts[0]].clone();
                for &a in &parts[1..] {
                    bits = &bits & &atoms[a];
                }
                bits
            })
            .collect();
        Ok(Rows {
            iid: iid.values(),
            ts: ts.values(),
            keys: types.keys().values().clone(),
            type_valid: types.nulls().cloned(),
            dispatch,
            code_of,
            values,
            extras,
        })
    }

    /// The kernel: add rows `range` of a batch to the state.
    ///
    /// The rows are first grouped by event type (a counting sort on the
    /// type's dictionary code that keeps their order, so contacts stay
    /// ascending within a type), with the rows of other shards and of types
    /// no condition accepts left out; when a single type is taken, they are
    /// picked in one pass instead. Then each condition runs over the rows
    /// of its types alone: a count or an existence test adds its window and
    /// filter test to the contact's count without a branch; the other
    /// aggregates update their accumulator where the row matches.
    fn accumulate(
        &self,
        st: &mut State,
        lo: u32,
        hi: u32,
        rows: &Rows,
        range: std::ops::Range<usize>,
    ) {
        let sc = &mut st.scratch;
        let codes = rows.dispatch.len();
        let span = hi - lo;
        let mut live = rows
            .dispatch
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.is_empty());
        match (live.next(), live.next()) {
            (None, _) => return,
            // One type taken (a preview, or a batch of a month without the
            // others): the rows are picked in one pass, without a branch.
            (Some((only, _)), None) => {
                sc.order.clear();
                sc.order.resize(range.len(), 0);
                let mut taken = 0;
                let keys = &rows.keys[range.clone()];
                let ids = &rows.iid[range.clone()];
                for ((r, &key), &id) in range.clone().zip(keys).zip(ids) {
                    let ok = (key as u32 == only as u32)
                        & (id.wrapping_sub(lo) < span)
                        & rows.type_valid.as_ref().is_none_or(|v| v.is_valid(r));
                    sc.order[taken] = r as u32;
                    taken += ok as usize;
                }
                sc.order.truncate(taken);
                sc.starts.clear();
                sc.starts
                    .extend((0..codes + 2).map(|k| if k <= only { 0 } else { taken }));
            }
            _ => self.group_by_code(sc, lo, hi, rows, range),
        }
        if sc.order.is_empty() {
            return;
        }
        sc.at.clear();
        sc.at
            .extend(sc.order.iter().map(|&r| rows.iid[r as usize] - lo));
        sc.ts.clear();
        sc.ts.extend(sc.order.iter().map(|&r| rows.ts[r as usize]));
        self.run_conditions(st, rows);
    }

    /// Rows of `range` in `sc.order`, grouped by type code (a counting
    /// sort that keeps their order), with `sc.starts` where each code's
    /// rows start.
    fn group_by_code(
        &self,
        sc: &mut Scratch,
        lo: u32,
        hi: u32,
        rows: &Rows,
        range: std::ops::Range<usize>,
    ) {
        let codes = rows.dispatch.len();
        let skip = codes;
        let span = hi - lo;
        // Each row's code, `skip` for rows no condition takes, without a
        // branch per row.
        sc.codes.clear();
        sc.codes.resize(range.len(), 0);
        for (code, r) in sc.codes.iter_mut().zip(range.clone()) {
            let c = rows
                .code_of
                .get(rows.keys[r] as usize)
                .copied()
                .unwrap_or(skip as u32);
            *code = if rows.iid[r].wrapping_sub(lo) < span {
                c
            } else {
                skip as u32
            };
        }
        if let Some(valid) = &rows.type_valid {
            for (code, r) in sc.codes.iter_mut().zip(range.clone()) {
                if valid.is_null(r) {
                    *code = skip as u32;
                }
            }
        }
        // Rows per code, counted in separate lanes so that a run of one
        // code does not wait on its own count.
        let stride = codes + 1;
        sc.hist.clear();
        sc.hist.resize(LANES * stride, 0);
        for (j, &code) in sc.codes.iter().enumerate() {
            sc.hist[(j % LANES) * stride + code as usize] += 1;
        }
        sc.starts.clear();
        sc.starts.resize(codes + 2, 0);
        for k in 0..=codes {
            let rows_of_k: usize = (0..LANES).map(|lane| sc.hist[lane * stride + k]).sum();
            sc.starts[k + 1] = sc.starts[k] + rows_of_k;
        }
        let taken = sc.starts[skip];
        sc.order.clear();
        sc.order.resize(taken, 0);
        sc.fill.clear();
        sc.fill.extend_from_slice(&sc.starts[..codes]);
        for (r, &code) in range.zip(&sc.codes) {
            if (code as usize) < skip {
                let at = &mut sc.fill[code as usize];
                sc.order[*at] = r as u32;
                *at += 1;
            }
        }
    }

    /// Each condition over the rows of its types (`sc.order` grouped by
    /// code, with their contacts and times).
    fn run_conditions(&self, st: &mut State, rows: &Rows) {
        let State {
            cap,
            n,
            nn,
            f,
            t,
            scratch: sc,
            ..
        } = st;
        let cap = *cap;
        for (k, leaves) in rows.dispatch.iter().enumerate() {
            let (a, b) = (sc.starts[k], sc.starts[k + 1]);
            if a == b {
                continue;
            }
            let (order, at, ts) = (&sc.order[a..b], &sc.at[a..b], &sc.ts[a..b]);
            // Files hold a month each: most windows take all of a range's
            // rows or none.
            let (first, last) = ts
                .iter()
                .fold((i64::MAX, i64::MIN), |(a, b), &t| (a.min(t), b.max(t)));
            for &l in leaves.iter() {
                let l = l as usize;
                let leaf = &self.leaves[l];
                if leaf.hi < first || leaf.lo > last {
                    continue;
                }
                let all_in = leaf.lo <= first && last <= leaf.hi;
                let counts = &mut n[cap * l..cap * (l + 1)];
                let (lo_ts, hi_ts) = (leaf.lo, leaf.hi);
                let extra = leaf.extra.map(|x| &rows.extras[x]);
                if leaf.exists.is_some() || leaf.agg == Agg::Count {
                    match extra {
                        None if all_in => {
                            for &i in at {
                                let c = &mut counts[i as usize];
                                *c = c.saturating_add(1);
                            }
                        }
                        None => {
                            for (&i, &t) in at.iter().zip(ts) {
                                let ok = (t >= lo_ts) & (t <= hi_ts);
                                let c = &mut counts[i as usize];
                                *c = c.saturating_add(ok as u32);
                            }
                        }
                        Some(x) => {
                            for ((&i, &t), &r) in at.iter().zip(ts).zip(order) {
                                let ok = (t >= lo_ts) & (t <= hi_ts) & x.value(r as usize);
                                let c = &mut counts[i as usize];
                                *c = c.saturating_add(ok as u32);
                            }
                        }
                    }
                    continue;
                }
                for ((&i, &tv), &r) in at.iter().zip(ts).zip(order) {
                    let (i, r) = (i as usize, r as usize);
                    if tv < lo_ts || tv > hi_ts || extra.is_some_and(|x| !x.value(r)) {
                        continue;
                    }
                    let c = &mut counts[i];
                    *c = c.saturating_add(1);
                    let first = *c == 1;
                    match leaf.agg {
                        Agg::Count => {}
                        Agg::First => {
                            let v = &mut t[cap * leaf.time + i];
                            if first || tv < *v {
                                *v = tv;
                            }
                        }
                        Agg::Last => {
                            let v = &mut t[cap * leaf.time + i];
                            if first || tv > *v {
                                *v = tv;
                            }
                        }
                        Agg::Sum | Agg::Avg | Agg::Min | Agg::Max => {
                            let column = rows.values[leaf.value.expect("value column")];
                            if column.is_null(r) {
                                continue;
                            }
                            let x = column.value(r);
                            let at = cap * leaf.float + i;
                            let count = &mut nn[at];
                            let v = &mut f[at];
                            match leaf.agg {
                                Agg::Sum | Agg::Avg => *v += x,
                                Agg::Min if *count == 0 || x < *v => *v = x,
                                Agg::Max if *count == 0 || x > *v => *v = x,
                                _ => {}
                            }
                            *count += 1;
                        }
                    }
                }
            }
        }
    }

    /// Turn a shard's state into (has, pass) bitmaps per condition.
    fn finish(&self, st: &State, lo: u32) -> Result<Vec<(RoaringBitmap, RoaringBitmap)>> {
        let mut out: Vec<(RoaringBitmap, RoaringBitmap)> = Vec::with_capacity(self.leaves.len());
        for (l, leaf) in self.leaves.iter().enumerate() {
            let bits = BooleanBuffer::collect_bool(st.len, |i| st.n[st.cap * l + i] > 0);
            let has = bits_from(lo, &bits);
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
            for test in &self.having {
                let batch = self.having_batch(test, st, start, end)?;
                let mask = test.pass.evaluate(&batch)?.into_array(batch.num_rows())?;
                let bits = true_bits(mask.as_boolean());
                out[test.leaf].1 |= bits_from(lo + start as u32, &bits);
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
        let n = &st.n[st.cap * k + start..st.cap * k + end];
        let mut columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from_iter_values(
            n.iter().map(|&c| c as i64),
        ))];
        match leaf.agg {
            Agg::Count => {}
            Agg::First | Agg::Last => {
                let a: TimestampMicrosecondArray = (start..end)
                    .zip(n)
                    .map(|(i, &c)| (c > 0).then(|| st.t[st.cap * leaf.time + i]))
                    .collect();
                let tz = match &self.ts_type {
                    DataType::Timestamp(_, tz) => tz.clone(),
                    _ => None,
                };
                columns.push(Arc::new(a.with_timezone_opt(tz)));
            }
            _ => {
                let a: Float64Array = (start..end)
                    .map(|i| {
                        let at = st.cap * leaf.float + i;
                        (st.nn[at], st.f[at])
                    })
                    .map(|(c, v)| match leaf.agg {
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

/// The columns of a batch of the scan, as the kernel reads them.
struct Rows<'a> {
    iid: &'a [u32],
    ts: &'a [i64],
    keys: ScalarBuffer<i32>,
    type_valid: Option<NullBuffer>,
    /// Event type code → the conditions that accept it.
    dispatch: Vec<&'a [u32]>,
    /// Type code → itself if some condition accepts it, else the number
    /// of codes.
    code_of: Vec<u32>,
    values: Vec<&'a Float64Array>,
    extras: Vec<BooleanBuffer>,
}

/// Per-contact state of one shard, one array per condition (counts of
/// matching rows), per float condition (non-null values and accumulator)
/// and per first/last condition (timestamp), each `cap` contacts long and
/// laid end to end.
struct State {
    len: usize,
    cap: usize,
    n: Vec<u32>,
    nn: Vec<u32>,
    f: Vec<f64>,
    t: Vec<i64>,
    scratch: Scratch,
}

/// The kernel's working space, reused from call to call: the rows of a
/// range grouped by event type.
#[derive(Default)]
struct Scratch {
    /// Each row's type code, or the code past the last for rows left out.
    codes: Vec<u32>,
    /// Where each code's rows start in `order` (and, last, the end).
    starts: Vec<usize>,
    hist: Vec<usize>,
    fill: Vec<usize>,
    /// Row positions, grouped by code.
    order: Vec<u32>,
    /// The contact (its position in the shard) and time of each row of `order`.
    at: Vec<u32>,
    ts: Vec<i64>,
}

impl State {
    /// Zeroed state for `cap` contacts; written now, so that the kernel does
    /// not fault on pages the allocator mapped lazily (`vec![0; n]` would
    /// map the zero page and copy it on the kernel's first write).
    #[allow(clippy::slow_vector_initialization)]
    fn new(scan: &Scan, cap: usize) -> State {
        fn zeroed<T: Copy>(n: usize, zero: T) -> Vec<T> {
            let mut v = Vec::with_capacity(n);
            v.resize(n, zero);
            v
        }
        State {
            len: cap,
            cap,
            n: zeroed(cap * scan.leaves.len(), 0),
            nn: zeroed(cap * scan.floats, 0),
            f: zeroed(cap * scan.floats, 0.0),
            t: zeroed(cap * scan.times, 0),
            scratch: Scratch::default(),
        }
    }

    /// Zero the state for a shard of `len` contacts (at most the capacity).
    fn reset(&mut self, len: usize) {
        self.len = len;
        self.n.fill(0);
        self.nn.fill(0);
        self.f.fill(0.0);
        self.t.fill(0);
    }
}

/// The plan without its filter operators. The scan keeps their predicate to
/// skip row groups and pages by their statistics; the kernel checks the
/// shard's id range and each condition's time window row by row, so
/// copying the surviving rows into new batches would be wasted work.
fn without_filters(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    let stripped = plan.transform_up(|node| {
        let Some(filter) = node.downcast_ref::<FilterExec>() else {
            return Ok(Transformed::no(node));
        };
        let input = filter.input().clone();
        let replacement: Arc<dyn ExecutionPlan> = match filter.projection() {
            None => input,
            Some(columns) => {
                let schema = input.schema();
                let exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = columns
                    .iter()
                    .map(|&i| {
                        let name = schema.field(i).name().clone();
                        let c: Arc<dyn PhysicalExpr> = Arc::new(Column::new(&name, i));
                        (c, name)
                    })
                    .collect();
                Arc::new(ProjectionExec::try_new(exprs, input)?)
            }
        };
        Ok(Transformed::yes(replacement))
    })?;
    Ok(stripped.data)
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
