//! The behaviour pass: every behaviour condition of a batch evaluated in one
//! scan of events.
//!
//! Each condition is split into what a row must satisfy (its event types, a
//! closed interval of `ts`, and an optional boolean over other columns such
//! as operations and `where` filters) and a per-contact aggregate with its
//! `having` test. DataFusion scans events once per contact shard (a range of
//! internal ids) and for the conditions' event types (files keep each type's
//! rows in row groups of their own, sorted by id, so the row groups of other
//! types and the pages outside the range are pruned; types whose conditions
//! read the same columns are read by one plan, the columns none of them
//! reads left unread) and computes the `where` booleans (a filter on one
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

mod having;
use having::{count_constant_from, count_constant_from_one, number_holds};
mod kernel;
mod scan;
pub(crate) use scan::of_types;

/// Most latest times kept per contact for one key: count conditions whose
/// answer changes above this count are evaluated from history.
pub const LATEST_SLOTS: usize = 4;
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
/// Contacts of the state of a shard that keeps its rows: its contacts are
/// accumulated and turned into bitmaps this many at a time, so the state
/// of a thread stays this small whatever the shard (at 1M contacts and the
/// 111 segments of the benchmark, 26 MB against 50 MB for a whole shard).
const STATE_PART_CONTACTS: usize = HAVING_CHUNK;
/// Up to this many rows to read per thread, a scan takes one shard per
/// thread: each shard plans and opens its files once per group of files
/// and set of types, which costs more than balancing saves.
const FEW_ROWS_PER_THREAD: u64 = 2 << 20;
/// A pass whose range holds more than this many contacts per row to read
/// (the rows of a small import, say) reads its rows first and keeps state
/// for the contacts they name alone: state for every contact would cost
/// more to clear and to turn into bitmaps than the rows cost to read.
const SPARSE_CONTACTS_PER_ROW: u64 = 8;
/// A pass over the rows of some contacts only, one in this many or fewer
/// of the contacts, has the reader test `_iid` before it decodes the other
/// columns: their rows are then few enough that decoding those columns for
/// them alone, skipping the rest of each page, costs less than decoding
/// every row (at 10M contacts, 6,400 contacts: about 80 → 60 ms; 443K
/// contacts: 260 → 350 ms).
const TESTED_IN_READER: u64 = 100;

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
    /// For a leaf of the pass that keeps each contact's latest matching
    /// times (see [`LeafBits::times`]), how many; it has no `having` test.
    /// 0 for a condition.
    slots: usize,
}

/// What the pass found for one condition.
#[derive(Debug, Default, Clone)]
pub struct LeafBits {
    /// Contacts with a matching event.
    pub has: RoaringBitmap,
    /// Contacts whose aggregate passes the `having` test.
    pub pass: RoaringBitmap,
    /// For a leaf made by [`BehaviorParts::latest`] with `k` slots: the
    /// times of each contact's `k` latest matching events, latest first
    /// (`i64::MIN` past the ones it has), `k` per contact in the order of
    /// `has`.
    pub times: Vec<i64>,
}

/// How the outcome of a behaviour condition can change for a contact whose
/// events stay the same, when the clock moves.
#[derive(Debug, Clone, PartialEq)]
pub enum Moved {
    /// It cannot.
    Same,
    /// Only for contacts with an event of the condition's types whose time
    /// falls in one of these closed intervals (µs).
    Bands(Vec<(i64, i64)>),
    /// For any contact.
    Everything,
}

impl BehaviorParts {
    /// The event types the condition reads.
    pub fn types(&self) -> &[String] {
        &self.types
    }

    /// The earliest time a matching event may have (µs; `i64::MIN`: any).
    pub fn lo(&self) -> i64 {
        self.lo
    }

    /// When the condition depends on a contact's matching events through
    /// the times of its latest few alone (whether one exists in a window
    /// ending at `as_of`, a `last` test, a count tested against a small
    /// number), the key of those times (the event types and the filter)
    /// and how many it needs. Conditions with the same key share them.
    pub fn latest_key(&self, as_of: i64) -> Option<(String, usize)> {
        if self.slots > 0 || self.hi != as_of {
            return None;
        }
        let slots = match (self.exists, self.agg) {
            (Some(_), _) | (None, Agg::Last) => 1,
            (None, Agg::Count) => count_constant_from(self.op, &self.operand, LATEST_SLOTS)?,
            _ => return None,
        };
        let mut types = self.types.clone();
        types.sort();
        types.dedup();
        let extra = self.extra.as_ref().map(|e| e.to_string());
        let key = serde_json::json!({"types": types, "where": extra}).to_string();
        Some((key, slots))
    }

    /// A leaf that keeps, for each contact, the times of its `slots` latest
    /// events matching this condition's types and filter in `[lo, hi]`.
    pub fn latest(&self, lo: i64, hi: i64, slots: usize) -> BehaviorParts {
        BehaviorParts {
            lo,
            hi,
            value: None,
            agg: Agg::Last,
            exists: None,
            op: Op::IsNotEmpty,
            zero_matches: false,
            slots: slots.max(1),
            ..self.clone()
        }
    }

    /// How this condition (compiled at `clock`) can differ from the same
    /// condition compiled at `earlier_clock` (`earlier`): the window's ends
    /// move, and so do the instants a `first`/`last` test compares with.
    /// A filter on event columns that depends on the clock (a date column
    /// within the last days...) can change anything.
    pub fn moved_since(
        &self,
        earlier: &BehaviorParts,
        clock: &Clock,
        earlier_clock: &Clock,
    ) -> Moved {
        if self.extra != earlier.extra {
            return Moved::Everything;
        }
        let mut bands = Vec::new();
        let mut band = |a: i64, b: i64| {
            if a != b {
                bands.push((a.min(b), a.max(b)));
            }
        };
        band(earlier.lo, self.lo);
        band(earlier.hi, self.hi);
        if self.exists.is_none() && matches!(self.agg, Agg::First | Agg::Last) {
            let test = |clock: &Clock| {
                op_expr(
                    &self.value_ty,
                    self.op,
                    &self.operand,
                    false,
                    col("a"),
                    clock,
                    EmptyRule::Aggregate,
                )
            };
            let (now, then) = (test(clock), test(earlier_clock));
            if now != then {
                match (scan::time_cuts(&then), scan::time_cuts(&now)) {
                    (Some(a), Some(b)) if a.len() == b.len() => {
                        for (x, y) in a.into_iter().zip(b) {
                            band(x, y);
                        }
                    }
                    _ => return Moved::Everything,
                }
            }
        }
        if bands.is_empty() {
            Moved::Same
        } else {
            Moved::Bands(bands)
        }
    }

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
            operand(&value_ty, h.op, &h.value).map_err(|m| Error::definition("having", m))?;
        let value = match h.agg {
            Agg::Sum | Agg::Avg | Agg::Min | Agg::Max => {
                let name = h.column.as_deref().unwrap_or("amount");
                let (ty, column) = self.event_column(name)?;
                if !matches!(ty, FieldType::Number { .. }) {
                    return Err(Error::definition(
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
            slots: 0,
        })
    }

    /// (contacts with a matching event, contacts whose aggregate passes) for
    /// each condition, in one scan of events.
    pub async fn behavior_bitmaps(
        &self,
        parts: &[BehaviorParts],
        clock: &Clock,
    ) -> Result<Vec<(RoaringBitmap, RoaringBitmap)>> {
        self.behavior_bitmaps_in(parts, clock, None).await
    }

    /// [`Session::behavior_bitmaps`] for the contacts of an internal id
    /// range (or all): only the events of those contacts are read.
    pub async fn behavior_bitmaps_in(
        &self,
        parts: &[BehaviorParts],
        clock: &Clock,
        range: Option<std::ops::Range<u32>>,
    ) -> Result<Vec<(RoaringBitmap, RoaringBitmap)>> {
        Ok(self
            .behavior_pass(parts, clock, range, None)
            .await?
            .into_iter()
            .map(|b| (b.has, b.pass))
            .collect())
    }

    /// The pass over the contacts of an internal id range (or all), and
    /// over some of the snapshot's events files (positions in its
    /// `events`; None: all).
    pub async fn behavior_pass(
        &self,
        parts: &[BehaviorParts],
        clock: &Clock,
        range: Option<std::ops::Range<u32>>,
        files: Option<&[usize]>,
    ) -> Result<Vec<LeafBits>> {
        self.behavior_pass_of(parts, clock, range, files, None)
            .await
    }

    /// [`Session::behavior_pass`] over the rows of some contacts only
    /// (`only`): the others have neither events nor times.
    pub async fn behavior_pass_of(
        &self,
        parts: &[BehaviorParts],
        clock: &Clock,
        range: Option<std::ops::Range<u32>>,
        files: Option<&[usize]>,
        only: Option<&RoaringBitmap>,
    ) -> Result<Vec<LeafBits>> {
        let mut scan = Scan::new(self, parts, clock, files)?;
        let all_end = self.all_contacts.max().map(|m| m as u64 + 1).unwrap_or(0);
        let (start, end) = match range {
            Some(r) => (u64::from(r.start), u64::from(r.end).min(all_end)),
            None => (0, all_end),
        };
        let mut out = vec![LeafBits::default(); parts.len()];
        if end <= start {
            return Ok(out);
        }
        let threads = self.ctx.copied_config().target_partitions().max(1);
        // Rows to read: the range's share of the scan's, or its contacts'.
        let contacts = match only {
            Some(only) => {
                let in_reader = self
                    .scan_layout
                    .only_in_reader
                    .unwrap_or(only.len() * TESTED_IN_READER <= self.all_contacts.len());
                scan.only = Some((
                    crate::engine::tables::id_in_set(only, end as u32),
                    in_reader,
                ));
                only.range_cardinality(start as u32..end as u32)
            }
            None => end - start,
        };
        let rows = scan.rows * contacts / all_end;
        scan.plan(&self.ctx).await?;
        let scan = Arc::new(scan);
        let few = rows <= FEW_ROWS_PER_THREAD
            && rows.saturating_mul(SPARSE_CONTACTS_PER_ROW) < end - start;
        if self.scan_layout.rows_first.unwrap_or(few) {
            return scan.run_sparse(&self.ctx, start as u32, end as u32).await;
        }
        let shards = Arc::new(scan.shards(start..end, rows, threads, self.scan_layout));
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
                    let len = scan.state_contacts(hi - lo);
                    let st = match &mut state {
                        Some(st) if st.cap >= len => st,
                        _ => state.insert(State::new(&scan, len)),
                    };
                    results.extend(scan.run_shard(&ctx, st, lo, hi).await?);
                }
                Ok::<_, Error>(results)
            }));
        }
        let mut shards = Vec::new();
        for w in workers {
            shards.extend(
                w.await
                    .map_err(|e| Error::Internal(format!("events scan task: {e}")))??,
            );
        }
        // Times follow the order of the contacts: parts of shards in id
        // order.
        shards.sort_unstable_by_key(|(lo, _)| *lo);
        for (_, shard) in shards {
            for (acc, bits) in out.iter_mut().zip(shard) {
                acc.has |= bits.has;
                acc.pass |= bits.pass;
                acc.times.extend(bits.times);
            }
        }
        Ok(out)
    }

    /// The type of the events' `ts`.
    fn events_ts_type(&self) -> DataType {
        self.events_schema
            .field_with_name("ts")
            .map(|f| f.data_type().clone())
            .unwrap_or(DataType::Timestamp(
                datafusion::arrow::datatypes::TimeUnit::Microsecond,
                Some("UTC".into()),
            ))
    }

    /// A condition with a [`BehaviorParts::latest_key`], answered from the
    /// times of each contact's latest matching events (`slots` per contact,
    /// latest first; none after the condition's window ends), for the
    /// contacts `rows` gives with their times, by increasing id: (contacts
    /// with a matching event, contacts that pass), as the pass gives them.
    pub fn answer_from_latest<'a, I>(
        &self,
        p: &BehaviorParts,
        clock: &Clock,
        rows: impl Fn() -> I,
    ) -> Result<(RoaringBitmap, RoaringBitmap)>
    where
        I: Iterator<Item = (u32, &'a [i64])>,
    {
        let unsorted = |e| Error::Internal(format!("latest times: {e}"));
        // Each contact's count of matching events in the window, up to
        // the times kept, and its latest.
        let inside = || {
            rows()
                .filter(|&(_, t)| p.lo <= t[0] && t[0] <= p.hi)
                .map(|(id, t)| {
                    let n = t.iter().take_while(|&&x| x != i64::MIN && x >= p.lo);
                    (id, n.count(), t[0])
                })
        };
        let has = RoaringBitmap::from_sorted_iter(inside().map(|(id, ..)| id)).map_err(unsorted)?;
        if let Some(passes) = p.exists {
            let pass = if passes {
                has.clone()
            } else {
                RoaringBitmap::new()
            };
            return Ok((has, pass));
        }
        if p.agg == Agg::Count {
            let pass = inside()
                .filter(|&(_, n, _)| number_holds(p.op, &p.operand, n as f64))
                .map(|(id, ..)| id);
            return Ok((
                has,
                RoaringBitmap::from_sorted_iter(pass).map_err(unsorted)?,
            ));
        }
        let ts_type = self.events_ts_type();
        let tz = match &ts_type {
            DataType::Timestamp(_, tz) => tz.clone(),
            _ => None,
        };
        let (schema, expr) = scan::having_expr(p, &ts_type, clock);
        let test = self.physical_expr(expr, &DFSchema::try_from(schema.as_ref().clone())?)?;
        let (at, ts): (Vec<u32>, Vec<i64>) = inside().map(|(id, _, t)| (id, t)).unzip();
        let mut pass = Vec::new();
        for (at, ts) in at.chunks(HAVING_CHUNK).zip(ts.chunks(HAVING_CHUNK)) {
            let n = Int64Array::from(vec![1i64; ts.len()]);
            let a = TimestampMicrosecondArray::from(ts.to_vec()).with_timezone_opt(tz.clone());
            let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(n), Arc::new(a)])?;
            let mask = test.evaluate(&batch)?.into_array(batch.num_rows())?;
            pass.extend(true_bits(mask.as_boolean()).set_indices().map(|j| at[j]));
        }
        let pass = RoaringBitmap::from_sorted_iter(pass).map_err(unsorted)?;
        Ok((has, pass))
    }

    /// What the scan of `parts` reads of the events files.
    pub fn events_reads(&self, parts: &[BehaviorParts], clock: &Clock) -> Result<EventReads> {
        Ok(Scan::new(self, parts, clock, None)?.reads())
    }

    /// The plan of the scan (for `recompute --dry-run`) and a line on how its
    /// rows are dispatched.
    pub async fn behavior_explain(
        &self,
        parts: &[BehaviorParts],
        clock: &Clock,
    ) -> Result<(String, String)> {
        let scan = Scan::new(self, parts, clock, None)?;
        let end = self.all_contacts.max().map(|m| m + 1).unwrap_or(0);
        let mut plans = Vec::new();
        for (p, projection) in scan.projections.iter().enumerate() {
            let read = scan.groups.iter().zip(&scan.tables);
            let Some((group, table)) = read
                .filter_map(|(g, tables)| Some((g, tables[p].as_ref()?)))
                .next()
            else {
                continue;
            };
            let df = scan
                .frame(&self.ctx, group, table, projection, Some((0, end)))
                .await?;
            plans.push(df.into_optimized_plan()?.display_indent().to_string());
        }
        let plan = plans.join("\n");
        let threads = self.ctx.copied_config().target_partitions().max(1);
        let shards = scan
            .shards(0..end as u64, scan.rows, threads, self.scan_layout)
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
             {}; conditions per event type: {}; row filters: {} on dictionary values, {} per row",
            parts.len(),
            parts.len() - aggregated,
            aggregated,
            shards,
            scan.files_line(),
            types.join(", "),
            on_values,
            scan.atoms.len() - on_values
        );
        Ok((plan, summary))
    }
}

/// What a scan of events reads (for the decoding floor).
#[derive(Debug, Clone)]
pub struct EventReads {
    /// The files read, as positions in the snapshot's `events`, each with
    /// whether its `ts` is read (files a window takes whole are read
    /// without it).
    pub files: Vec<(usize, bool)>,
    /// The types read alike, and the columns their conditions read besides
    /// `_iid`, `ts` and `type`.
    pub sets: Vec<(Vec<String>, Vec<String>)>,
    /// Each type's rows outside `[lo, hi]` (µs) match no condition.
    pub windows: HashMap<String, (i64, i64)>,
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
    /// How many of its latest times are kept (see [`LeafBits::times`]).
    slots: usize,
}

/// Event types whose conditions read the same value, filter and
/// dictionary columns: they are read by one plan, the other columns
/// projected empty rather than read (a type's rows have row groups of
/// their own, where a column it never has is empty).
struct Projection {
    types: Vec<String>,
    values: Vec<bool>,
    planned: Vec<bool>,
    dictionaries: Vec<bool>,
    /// Rows of these types outside `[lo, hi]` match none of their
    /// conditions: row groups and pages holding only such rows are skipped.
    lo: i64,
    hi: i64,
    /// A condition of these types keeps its times: every file is read
    /// with its `ts`.
    timed: bool,
}

/// Events files read by one plan of each shard.
#[derive(Clone)]
struct FileGroup {
    /// The time that stands for every row, for files read without `ts`.
    ts: Option<i64>,
    /// That time, a batch long.
    fill: Vec<i64>,
    /// The files, as positions in the snapshot's `events`.
    files: Vec<usize>,
}

/// The shared scan of a batch of behaviour conditions.
struct Scan {
    /// The files, in groups read alike.
    groups: Vec<FileGroup>,
    /// The same groups, each read with its `ts` (for projections that
    /// keep times).
    timed_groups: Vec<FileGroup>,
    /// Per group, per projection: a table of the group's files that the
    /// projection's window reaches (None: no such file).
    tables: Vec<Vec<Option<Arc<dyn datafusion::catalog::TableProvider>>>>,
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
    /// The types read alike, each set with the columns its conditions read.
    projections: Vec<Projection>,
    /// Rows of the files read, of the types read (all their rows for
    /// files whose row groups mix types).
    rows: u64,
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
    /// Rows of these contacts only (a filter on `_iid`), when set; tested
    /// by the reader ([`TESTED_IN_READER`]) or after it.
    only: Option<(Expr, bool)>,
    /// The row groups of each file read, by its location in the scan,
    /// when every one is stored by type: the scan reads the row groups of
    /// a projection's types as byte ranges, and opens no other.
    type_layouts: Option<crate::engine::by_type::TypeLayouts>,
    /// Per group, per projection: the plan of its scan for every shard
    /// (None: nothing to read), once [`Scan::plan`] has run.
    plans: Vec<Vec<Option<Arc<dyn ExecutionPlan>>>>,
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

/// The columns of a batch of the scan, as the kernel reads them.
struct Rows<'a> {
    /// Internal ids, or places in the shard's contacts when it holds
    /// some of them only.
    iid: std::borrow::Cow<'a, [u32]>,
    /// Times (µs), or one time standing for every row of a group of files.
    ts: std::borrow::Cow<'a, [i64]>,
    keys: ScalarBuffer<i32>,
    type_valid: Option<NullBuffer>,
    /// Event type code → the conditions that accept it.
    dispatch: Vec<&'a [u32]>,
    /// Type code → itself if some condition accepts it, else the number
    /// of codes.
    code_of: Vec<u32>,
    /// The value columns, and the extra filters, that conditions of the
    /// batch's types read (None: no such condition reads it).
    values: Vec<Option<&'a Float64Array>>,
    extras: Vec<Option<BooleanBuffer>>,
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
