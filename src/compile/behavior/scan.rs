//! Planning and running the scan of events: the columns and filters a
//! batch of conditions needs, shards of contacts, and the rows of a batch
//! as the kernel reads them.

use std::borrow::Cow;

use super::*;
use crate::base::manifest::EventFile;

impl Scan {
    pub(super) fn new(
        session: &Session,
        parts: &[BehaviorParts],
        clock: &Clock,
        files: Option<&[usize]>,
    ) -> Result<Scan> {
        let ts_type = session.events_ts_type();
        let mut leaves = Vec::with_capacity(parts.len());
        let mut by_type: HashMap<String, Vec<u32>> = HashMap::new();
        let mut values = Vec::new();
        let mut filters = Filters::default();
        let (mut ts_lo, mut ts_hi) = (i64::MAX, i64::MIN);
        let mut having = Vec::new();
        let (mut floats, mut times) = (0, 0);
        // Where a first/last test changes outcome (None: not only at instants).
        let mut value_cuts: Option<Vec<i64>> = Some(Vec::new());
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
            if p.exists.is_none() || p.slots > 0 {
                match p.agg {
                    Agg::First | Agg::Last => times += p.slots.max(1),
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
                slots: p.slots,
            });
            if p.exists.is_some() || p.slots > 0 {
                continue;
            }
            let (schema, pass) = having_expr(p, &ts_type, clock);
            if matches!(p.agg, Agg::First | Agg::Last) {
                value_cuts = match (value_cuts, time_cuts(&pass)) {
                    (Some(mut all), Some(cuts)) => {
                        all.extend(cuts);
                        Some(all)
                    }
                    _ => None,
                };
            }
            let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
            having.push(HavingTest {
                leaf: k,
                schema,
                pass: session.physical_expr(pass, &df_schema)?,
            });
        }
        let groups = file_groups(session, &leaves, value_cuts, files);
        // Files whose row groups mix types would be read once per
        // projection: they are read once, with every column.
        let stored_by_type = session
            .manifest
            .events
            .iter()
            .all(|e| crate::base::events::stored_by_type(session.base.dir(), e));
        let projections = projections(&by_type, &leaves, &filters, values.len(), stored_by_type);
        let rows = groups
            .iter()
            .flat_map(|g| &g.files)
            .map(|&i| {
                let e = &session.manifest.events[i];
                match crate::base::events::rows_by_type(session.base.dir(), e) {
                    Some(per_type) => by_type.keys().filter_map(|t| per_type.rows(t)).sum(),
                    None => e.rows,
                }
            })
            .sum();
        // Each projection reads those files of a group that its window
        // reaches, through a table of its own.
        let tables = groups
            .iter()
            .map(|g| {
                projections
                    .iter()
                    .map(|p| {
                        let files: Vec<&EventFile> = g
                            .files
                            .iter()
                            .map(|&i| &session.manifest.events[i])
                            .filter(|e| reaches(e, p.lo, p.hi))
                            .collect();
                        match files.is_empty() {
                            true => Ok(None),
                            false => session.events_table(&files).map(Some),
                        }
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let timed_groups = groups
            .iter()
            .map(|g| FileGroup {
                ts: None,
                fill: Vec::new(),
                ..g.clone()
            })
            .collect();
        let type_layouts = match stored_by_type {
            true => crate::engine::by_type::layouts(
                session.base.dir(),
                groups
                    .iter()
                    .flat_map(|g| &g.files)
                    .map(|&i| &session.manifest.events[i]),
            ),
            false => None,
        };
        Ok(Scan {
            groups,
            timed_groups,
            tables,
            leaves,
            by_type,
            values,
            planned: filters.planned,
            dictionaries: filters.dictionaries,
            atoms: filters.atoms,
            extras: filters.extras,
            projections,
            rows,
            ts_lo,
            ts_hi,
            having,
            ts_type,
            floats,
            times,
            layout: session.scan_layout,
            only: None,
            type_layouts,
            plans: Vec::new(),
        })
    }

    /// How the events files are read, for `recompute --dry-run`.
    pub(super) fn files_line(&self) -> String {
        let full: usize = self
            .groups
            .iter()
            .filter(|g| g.ts.is_none())
            .map(|g| g.files.len())
            .sum();
        let alike: Vec<&FileGroup> = self.groups.iter().filter(|g| g.ts.is_some()).collect();
        let without: usize = alike.iter().map(|g| g.files.len()).sum();
        format!(
            "events files: {full} read with their times, {without} without (in {} group(s))",
            alike.len()
        )
    }

    /// What the scan reads, for the decoding floor.
    pub(super) fn reads(&self) -> EventReads {
        let mut sets = Vec::with_capacity(self.projections.len());
        for p in &self.projections {
            let mut columns = std::collections::BTreeSet::new();
            let exprs = self.values.iter().zip(&p.values);
            for (e, _) in exprs
                .chain(self.planned.iter().zip(&p.planned))
                .filter(|(_, on)| **on)
            {
                columns.extend(e.column_refs().into_iter().map(|c| c.name.clone()));
            }
            for (d, _) in self
                .dictionaries
                .iter()
                .zip(&p.dictionaries)
                .filter(|(_, on)| **on)
            {
                columns.insert(d.clone());
            }
            sets.push((p.types.clone(), columns.into_iter().collect()));
        }
        let files = match self.ts_lo <= self.ts_hi {
            true => self
                .groups
                .iter()
                .flat_map(|g| g.files.iter().map(move |&i| (i, g.ts.is_none())))
                .collect(),
            false => Vec::new(),
        };
        let windows = self
            .by_type
            .iter()
            .map(|(t, ks)| {
                let leaves = ks.iter().map(|&k| &self.leaves[k as usize]);
                let (lo, hi) = leaves
                    .filter(|l| l.lo <= l.hi)
                    .fold((i64::MAX, i64::MIN), |(lo, hi), l| {
                        (lo.min(l.lo), hi.max(l.hi))
                    });
                (t.clone(), (lo, hi))
            })
            .collect();
        EventReads {
            files,
            sets,
            windows,
        }
    }

    /// Bytes of state per contact.
    pub(super) fn bytes_per_contact(&self) -> usize {
        (4 * self.leaves.len() + 12 * self.floats + 8 * self.times).max(1)
    }

    /// Whether the state of `contacts` stays in cache while batches are
    /// dispatched as they come.
    pub(super) fn fits_in_cache(&self, contacts: u32) -> bool {
        contacts as usize * self.bytes_per_contact() <= DIRECT_STATE_BYTES
    }

    /// Bytes a scanned row takes while its shard is buffered.
    pub(super) fn bytes_per_row(&self) -> usize {
        4 + 8
            + 4
            + 8 * self.values.len()
            + self.planned.len().div_ceil(8)
            + 1
            + 4 * self.dictionaries.len()
    }

    /// Ranges of internal ids `[lo, hi)` covering the contacts of `ids`,
    /// whose events to read number about `rows`: a few per thread, each
    /// small enough for its state and its buffered rows to fit their
    /// budgets; one per thread when there are few rows to read.
    pub(super) fn shards(
        &self,
        ids: std::ops::Range<u64>,
        rows: u64,
        threads: usize,
        layout: ScanLayout,
    ) -> Vec<(u32, u32)> {
        let (start, end) = (ids.start, ids.end);
        let contacts = end.saturating_sub(start);
        let state_fit = (SHARD_STATE_BYTES / self.bytes_per_contact()) as u64;
        let rows_per_contact = rows.div_ceil(contacts.max(1)).max(1);
        let rows_fit = (SHARD_ROW_BYTES / self.bytes_per_row()) as u64 / rows_per_contact;
        let even = contacts.div_ceil((threads * SHARDS_PER_THREAD) as u64);
        // A state small enough to take batches as they come needs no
        // blocks: fewer shards then save plans.
        let wide = contacts.div_ceil((threads * DIRECT_SHARDS_PER_THREAD) as u64);
        let few = rows <= threads as u64 * FEW_ROWS_PER_THREAD;
        let len = match layout.shard_contacts {
            Some(n) => n.max(1) as u64,
            None if few => contacts
                .div_ceil(threads as u64)
                .min(state_fit)
                .max(HAVING_CHUNK as u64),
            None if self.fits_in_cache(wide.min(u32::MAX as u64) as u32) => {
                wide.max(HAVING_CHUNK as u64)
            }
            None => state_fit.min(rows_fit).min(even).max(HAVING_CHUNK as u64),
        };
        let mut out = Vec::new();
        let mut lo = start;
        while lo < end {
            let hi = (lo + len).min(end);
            out.push((lo as u32, hi as u32));
            lo = hi;
        }
        out
    }

    /// `_iid, ts (µs), type, values..., extras...` of the events in a
    /// group of files that some condition may match (`ts` left out where
    /// the group stands for it), of the contacts `[lo, hi)` of `ids` (None:
    /// of any contact; [`with_ids`] narrows the plan to a shard's).
    pub(super) async fn frame(
        &self,
        ctx: &SessionContext,
        group: &FileGroup,
        table: &Arc<dyn datafusion::catalog::TableProvider>,
        projection: &Projection,
        ids: Option<(u32, u32)>,
    ) -> Result<DataFrame> {
        // Files store each type's rows in row groups of their own: the
        // groups of other types are skipped by their statistics.
        let types = &projection.types;
        let dictionary = |t: &String| {
            lit(ScalarValue::Dictionary(
                Box::new(DataType::Int32),
                Box::new(ScalarValue::Utf8(Some(t.clone()))),
            ))
        };
        let of_types = col("type").in_list(types.iter().map(dictionary).collect(), false);
        let mut filter = match ids {
            Some((lo, hi)) => {
                let iid = || col(IID);
                iid()
                    .gt_eq(lit(ScalarValue::UInt32(Some(lo))))
                    .and(iid().lt(lit(ScalarValue::UInt32(Some(hi)))))
            }
            None => lit(true),
        };
        // The rows of some contacts, in files whose row groups of other
        // types are left out by their layouts: `_iid` alone is tested (by
        // the reader, before it decodes the other columns, when they are
        // few); the kernel takes each condition's types and window as it
        // does for every contact.
        let few = self.only.as_ref().filter(|_| self.type_layouts.is_some());
        match few {
            Some((only, _)) => filter = filter.and(only.clone()),
            None => {
                filter = filter.and(of_types);
                if let Some((only, _)) = &self.only {
                    filter = filter.and(only.clone());
                }
            }
        }
        let mut select = vec![col(IID)];
        if group.ts.is_none() {
            // The windows of these types' conditions skip row groups and
            // pages.
            if few.is_none() {
                if projection.lo > i64::MIN {
                    filter = filter.and(col("ts").gt_eq(ts_lit(projection.lo)));
                }
                filter = filter.and(col("ts").lt_eq(ts_lit(projection.hi)));
            }
            select.push(datafusion::logical_expr::cast(col("ts"), DataType::Int64).alias("ts"));
        }
        select.push(col("type"));
        // Columns no condition of these types reads are left out (see
        // `rows`).
        for (j, v) in self.values.iter().enumerate() {
            if projection.values[j] {
                select.push(v.clone().alias(format!("v{j}")));
            }
        }
        for (j, x) in self.planned.iter().enumerate() {
            if projection.planned[j] {
                select.push(x.clone().alias(format!("x{j}")));
            }
        }
        for (j, d) in self.dictionaries.iter().enumerate() {
            if projection.dictionaries[j] {
                select.push(col(d.as_str()).alias(format!("d{j}")));
            }
        }
        let source = datafusion::datasource::provider_as_source(table.clone());
        let plan =
            datafusion::logical_expr::LogicalPlanBuilder::scan(EVENTS, source, None)?.build()?;
        // The files were chosen by their times before the scan: statistics
        // of whole files would prune none of them, and checking them again
        // costs every file of every shard.
        let mut state = ctx.state();
        let execution = &mut state.config_mut().options_mut().execution;
        execution.collect_statistics = false;
        execution.parquet.pushdown_filters = few.is_some_and(|(_, in_reader)| *in_reader);
        Ok(DataFrame::new(state, plan).filter(filter)?.select(select)?)
    }

    /// Plans the scan of each projection over each group of files its
    /// windows reach, once for every shard: shards differ only by the ids
    /// their scans keep ([`with_ids`]).
    pub(super) async fn plan(&mut self, ctx: &SessionContext) -> Result<()> {
        let mut plans = Vec::with_capacity(self.groups.len());
        for ((group, timed), tables) in self.groups.iter().zip(&self.timed_groups).zip(&self.tables)
        {
            let mut of_group = Vec::with_capacity(self.projections.len());
            for (projection, table) in self.projections.iter().zip(tables) {
                // Types none of whose windows holds these rows are not read:
                // files read without `ts` lie wholly inside or outside each
                // window, on the side of the time that stands for their rows.
                let reached = match group.ts {
                    None => projection.lo <= projection.hi,
                    Some(t) => projection.lo <= t && t <= projection.hi,
                };
                let Some(table) = table
                    .as_ref()
                    .filter(|_| reached && self.ts_lo <= self.ts_hi)
                else {
                    of_group.push(None);
                    continue;
                };
                let group = if projection.timed { timed } else { group };
                let plan = self
                    .frame(ctx, group, table, projection, None)
                    .await?
                    .create_physical_plan()
                    .await?;
                // Rows of some contacts only: the filter keeps those few
                // rows, instead of the kernel looking each one up.
                let plan = match self.only {
                    Some(_) => plan,
                    None => without_filters(plan)?,
                };
                let plan = match &self.type_layouts {
                    Some(layouts) => of_types(plan, &projection.types, layouts)?,
                    None => plan,
                };
                of_group.push(Some(plan));
            }
            plans.push(of_group);
        }
        self.plans = plans;
        Ok(())
    }

    /// Each batch of the events of contacts `[lo, hi)` that some
    /// condition may match, with the group of files and the set of types
    /// it was read from (and, as the files' row groups and pages hold
    /// the ids of a range, maybe rows of contacts next to them).
    async fn each_batch<'a>(
        &'a self,
        ctx: &SessionContext,
        lo: u32,
        hi: u32,
        mut take: impl FnMut(RecordBatch, &'a FileGroup, &'a Projection) -> Result<()>,
    ) -> Result<()> {
        if self.plans.len() != self.groups.len() {
            return Err(Error::Internal("events scan: not planned".into()));
        }
        for ((group, timed), plans) in self.groups.iter().zip(&self.timed_groups).zip(&self.plans) {
            for (projection, plan) in self.projections.iter().zip(plans) {
                let Some(plan) = plan else {
                    continue;
                };
                let group = if projection.timed { timed } else { group };
                let plan = with_ids(plan, lo, hi)?;
                let mut stream = datafusion::physical_plan::execute_stream(plan, ctx.task_ctx())?;
                while let Some(batch) = stream.next().await {
                    take(batch?, group, projection)?;
                }
            }
        }
        Ok(())
    }

    /// The pass over the contacts `[lo, hi)`: the bitmaps of each part of
    /// them that the state held at a time, from `lo` up.
    pub(super) async fn run_shard(
        &self,
        ctx: &SessionContext,
        state: &mut State,
        lo: u32,
        hi: u32,
    ) -> Result<Vec<(u32, Vec<LeafBits>)>> {
        // A shard whose whole state fits in cache takes each batch as it
        // comes, while the batch is in cache too. Otherwise, as each file
        // brings the shard's contacts in id order, the batches are kept and
        // dispatched block of contacts by block, so that a block's state
        // stays in cache while the rows of every file for it are added.
        let direct = self.direct(hi - lo);
        if direct {
            state.reset((hi - lo) as usize);
        }
        let mut kept = Vec::new();
        self.each_batch(ctx, lo, hi, |batch, group, projection| {
            if direct {
                let rows = self.rows(&batch, group, projection)?;
                self.accumulate(state, lo, hi, &rows, 0..rows.iid.len());
            } else {
                kept.push((batch, group, projection));
            }
            Ok(())
        })
        .await?;
        if direct {
            return Ok(vec![(lo, self.finish(state, lo)?)]);
        }
        let rows: Vec<Rows> = kept
            .iter()
            .map(|(b, group, projection)| self.rows(b, group, projection))
            .collect::<Result<_>>()?;
        // Each batch's rows in runs of ascending ids: a batch may join the
        // ends of several row groups (one per event type).
        let mut runs: Vec<(&Rows, usize, usize)> = Vec::new();
        for r in &rows {
            runs.extend(ascending_runs(&r.iid).map(|run| (r, run.start, run.end)));
        }
        let block = match self.layout.block_contacts {
            Some(n) => n.max(1),
            None => (BLOCK_STATE_BYTES / self.bytes_per_contact()).max(64) as u32,
        };
        // The state holds a part of the shard at a time: each part's
        // contacts are accumulated, then turned into bitmaps, and the
        // state cleared for the next.
        let part = u32::try_from(state.cap).unwrap_or(u32::MAX).max(1);
        let mut out = Vec::new();
        let mut c = lo;
        while c < hi {
            let d = c.saturating_add(part).min(hi);
            state.reset((d - c) as usize);
            let mut a = c;
            while a < d {
                let b = a.saturating_add(block).min(d);
                for (r, at, end) in runs.iter_mut() {
                    let stop = *at + r.iid[*at..*end].partition_point(|&id| id < b);
                    self.accumulate(state, c, d, r, *at..stop);
                    *at = stop;
                }
                a = b;
            }
            out.push((c, self.finish(state, c)?));
            c = d;
        }
        Ok(out)
    }

    /// Whether a shard of `contacts` takes its batches as they come (its
    /// whole state then fits in cache) rather than keeping them.
    pub(super) fn direct(&self, contacts: u32) -> bool {
        self.layout.block_contacts.is_none() && self.fits_in_cache(contacts)
    }

    /// Contacts of the state of a shard of `contacts`: a shard that keeps
    /// its batches turns a part of its contacts into bitmaps at a time.
    pub(super) fn state_contacts(&self, contacts: u32) -> usize {
        match self.direct(contacts) {
            true => contacts as usize,
            false => (contacts as usize).min(
                self.layout
                    .state_contacts
                    .map_or(STATE_PART_CONTACTS, |n| n.max(1) as usize),
            ),
        }
    }

    /// The pass over contacts `[lo, hi)` when they have few rows to read:
    /// the rows are read first, and the state holds the contacts they name
    /// alone, in id order, instead of every contact of the range.
    pub(super) async fn run_sparse(
        &self,
        ctx: &SessionContext,
        lo: u32,
        hi: u32,
    ) -> Result<Vec<LeafBits>> {
        let mut kept = Vec::new();
        self.each_batch(ctx, lo, hi, |batch, group, projection| {
            kept.push((batch, group, projection));
            Ok(())
        })
        .await?;
        let mut rows: Vec<Rows> = kept
            .iter()
            .map(|(b, group, projection)| self.rows(b, group, projection))
            .collect::<Result<_>>()?;
        let inside = |id: &u32| (lo..hi).contains(id);
        let mut ids: Vec<u32> = rows
            .iter()
            .flat_map(|r| r.iid.iter().copied())
            .filter(inside)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let span = u32::try_from(ids.len())
            .map_err(|_| Error::Internal("events scan: too many contacts".into()))?;
        let mut state = State::new(self, ids.len());
        for r in &mut rows {
            // Each row's contact, by its place among those named (past
            // them for contacts next to the range, which the kernel skips).
            let at: Vec<u32> = r
                .iid
                .iter()
                .map(|id| match inside(id) {
                    true => ids.partition_point(|x| x < id) as u32,
                    false => span,
                })
                .collect();
            r.iid = Cow::Owned(at);
            self.accumulate(&mut state, 0, span, r, 0..r.iid.len());
        }
        let named = |places: RoaringBitmap| {
            RoaringBitmap::from_sorted_iter(places.iter().map(|i| ids[i as usize]))
                .expect("places and ids ascend together")
        };
        Ok(self
            .finish(&state, 0)?
            .into_iter()
            .map(|b| LeafBits {
                has: named(b.has),
                pass: named(b.pass),
                times: b.times,
            })
            .collect())
    }

    /// The columns of a batch of the scan, as the kernel reads them.
    pub(super) fn rows<'a>(
        &'a self,
        batch: &'a RecordBatch,
        group: &'a FileGroup,
        projection: &Projection,
    ) -> Result<Rows<'a>> {
        let unexpected = || Error::Internal("events scan: unexpected id or ts type".into());
        let iid = batch
            .column(0)
            .as_primitive_opt::<UInt32Type>()
            .ok_or_else(unexpected)?;
        let (ts, at_type): (Cow<'a, [i64]>, usize) = match group.ts {
            None => {
                let ts = batch
                    .column(1)
                    .as_primitive_opt::<Int64Type>()
                    .ok_or_else(unexpected)?;
                (Cow::Borrowed(ts.values()), 2)
            }
            Some(_) if batch.num_rows() <= group.fill.len() => {
                (Cow::Borrowed(&group.fill[..batch.num_rows()]), 1)
            }
            Some(t) => (Cow::Owned(vec![t; batch.num_rows()]), 1),
        };
        let types = dictionary(batch.column(at_type))?;
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
        // The columns this projection reads follow the type, in order;
        // the others are absent.
        let mut next = at_type + 1;
        let mut take = |read: bool| {
            read.then(|| {
                next += 1;
                batch.column(next - 1)
            })
        };
        let values: Vec<Option<&Float64Array>> = projection
            .values
            .iter()
            .map(|&read| take(read).map(|c| c.as_primitive::<Float64Type>()))
            .collect();
        let planned: Vec<Option<&ArrayRef>> =
            projection.planned.iter().map(|&read| take(read)).collect();
        let dictionaries: Vec<Option<&ArrayRef>> = projection
            .dictionaries
            .iter()
            .map(|&read| take(read))
            .collect();
        // An atom over a column left out belongs to conditions of other
        // types only, and so does any extra filter made of it.
        let atoms: Vec<Option<BooleanBuffer>> = self
            .atoms
            .iter()
            .map(|atom| match atom {
                Atom::Planned(j) => Ok(planned[*j].map(|c| true_bits(c.as_boolean()))),
                Atom::Dictionary(j, test) => dictionaries[*j].map(|c| test.evaluate(c)).transpose(),
            })
            .collect::<Result<_>>()?;
        let extras: Vec<Option<BooleanBuffer>> = self
            .extras
            .iter()
            .map(|parts| {
                let mut bits = atoms[parts[0]].clone()?;
                for &a in &parts[1..] {
                    bits = &bits & atoms[a].as_ref()?;
                }
                Some(bits)
            })
            .collect();
        Ok(Rows {
            iid: Cow::Borrowed(iid.values()),
            ts,
            keys: types.keys().values().clone(),
            type_valid: types.nulls().cloned(),
            dispatch,
            code_of,
            values,
            extras,
        })
    }
}

/// The events files of the snapshot, in groups read alike. A file whose
/// rows all fall on the same side of every instant where some condition's
/// window starts or ends, or where a first/last test changes outcome
/// (`value_cuts`; None when such a test depends on more than instants), is
/// read without `ts`: one of its times stands for every row, since each
/// window takes all of its rows or none and each first/last value stays
/// on the same side of every instant its test compares it with (the
/// largest of such values too). Such files are grouped by those sides;
/// the others are read in full, in one group; files no window reaches are
/// left out.
fn file_groups(
    session: &Session,
    leaves: &[Leaf],
    value_cuts: Option<Vec<i64>>,
    only: Option<&[usize]>,
) -> Vec<FileGroup> {
    let events = &session.manifest.events;
    // The files some condition's window reaches; the others are left out.
    let windows: Vec<(i64, i64)> = leaves
        .iter()
        .filter(|l| l.lo <= l.hi)
        .map(|l| (l.lo, l.hi))
        .collect();
    let reached: Vec<usize> = (0..events.len())
        .filter(|i| only.is_none_or(|only| only.contains(i)))
        .filter(|&i| windows.iter().any(|&(lo, hi)| reaches(&events[i], lo, hi)))
        .collect();
    let in_full = |files: Vec<usize>| match files.is_empty() {
        true => Vec::new(),
        false => vec![FileGroup {
            ts: None,
            fill: Vec::new(),
            files,
        }],
    };
    let Some(mut cuts) = value_cuts else {
        return in_full(reached);
    };
    cuts.extend(
        windows
            .iter()
            .flat_map(|&(lo, hi)| [lo, hi.saturating_add(1)]),
    );
    cuts.retain(|&c| c > i64::MIN && c < i64::MAX);
    cuts.sort_unstable();
    cuts.dedup();
    let mut exact = Vec::new();
    let mut alike: Vec<(Vec<bool>, Vec<usize>)> = Vec::new();
    for i in reached {
        let (min, max) = (events[i].min_ts, events[i].max_ts);
        if cuts.iter().any(|&c| min < c && c <= max) {
            exact.push(i);
            continue;
        }
        let sides: Vec<bool> = cuts.iter().map(|&c| min >= c).collect();
        match alike.iter_mut().find(|(s, _)| *s == sides) {
            Some((_, files)) => files.push(i),
            None => alike.push((sides, vec![i])),
        }
    }
    let batch = session.ctx.copied_config().batch_size();
    let mut groups = in_full(exact);
    for (_, files) in alike {
        let t = events[files[0]].min_ts;
        groups.push(FileGroup {
            ts: Some(t),
            fill: vec![t; batch],
            files,
        });
    }
    groups
}

/// Whether a file holds a time in the window `[lo, hi]` (none when empty).
fn reaches(file: &EventFile, lo: i64, hi: i64) -> bool {
    lo <= hi && file.min_ts <= hi && lo <= file.max_ts
}

/// The instants at which the value `a` of a first/last test changes its
/// outcome: the test holds alike for two values on the same side of each
/// (`v < c` for both or `v >= c` for both). None when the test does more
/// with the value than compare it with instants (a day-of-year test).
pub(super) fn time_cuts(pass: &Expr) -> Option<Vec<i64>> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::{Between, BinaryExpr, Operator};
    let is_value = |e: &Expr| matches!(e, Expr::Column(c) if c.name == "a");
    let instant = |e: &Expr| match e {
        Expr::Literal(ScalarValue::TimestampMicrosecond(Some(v), _), _) => Some(*v),
        _ => None,
    };
    let mut cuts = Vec::new();
    let mut only_instants = true;
    let walked = pass.apply(|e| match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) if is_value(left) || is_value(right) => {
            let (v, op) = if is_value(left) {
                (instant(right), Some(*op))
            } else {
                (instant(left), op.swap())
            };
            match (v, op) {
                (Some(v), Some(Operator::Lt | Operator::GtEq)) => cuts.push(v),
                (Some(v), Some(Operator::Gt | Operator::LtEq)) => cuts.push(v.saturating_add(1)),
                (Some(v), Some(Operator::Eq | Operator::NotEq)) => {
                    cuts.extend([v, v.saturating_add(1)])
                }
                _ => only_instants = false,
            }
            Ok(TreeNodeRecursion::Jump)
        }
        Expr::Between(Between {
            expr, low, high, ..
        }) if is_value(expr) => {
            match (instant(low), instant(high)) {
                (Some(lo), Some(hi)) => cuts.extend([lo, hi.saturating_add(1)]),
                _ => only_instants = false,
            }
            Ok(TreeNodeRecursion::Jump)
        }
        Expr::IsNull(x) | Expr::IsNotNull(x) if is_value(x) => Ok(TreeNodeRecursion::Jump),
        e if is_value(e) => {
            only_instants = false;
            Ok(TreeNodeRecursion::Stop)
        }
        _ => Ok(TreeNodeRecursion::Continue),
    });
    (walked.is_ok() && only_instants).then_some(cuts)
}

/// The plan without its filter operators. The scan keeps their predicate to
/// skip row groups and pages by their statistics; the kernel checks the
/// shard's id range and each condition's time window row by row, so
/// copying the surviving rows into new batches would be wasted work.
/// The plan's scan reading the row groups of `types` alone, as byte ranges
/// of their files, in as many partitions as before (unchanged when the scan
/// is not of whole files). The kernel takes the rows of its types anyway:
/// this only spares opening and pruning the row groups of the others.
pub(crate) fn of_types(
    plan: Arc<dyn ExecutionPlan>,
    types: &[String],
    layouts: &crate::engine::by_type::TypeLayouts,
) -> Result<Arc<dyn ExecutionPlan>> {
    use crate::engine::by_type::{TypeTest, only_types};
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::datasource::source::DataSourceExec;
    use datafusion::physical_plan::ExecutionPlanProperties;
    let test = TypeTest::In(types.to_vec());
    let ranged = plan.transform_up(|node| {
        if !node.is::<DataSourceExec>() {
            return Ok(Transformed::no(node));
        }
        let partitions = node.output_partitioning().partition_count();
        Ok(match only_types(&node, &test, layouts, partitions, None) {
            Some(scan) => Transformed::yes(scan),
            None => Transformed::no(node),
        })
    })?;
    Ok(ranged.data)
}

/// The plan of a scan, planned for every shard, reading the row groups and
/// pages that may hold contacts `[lo, hi)`: the files are stored by id, and
/// the range is added to the predicate their statistics are pruned by.
/// Rows of the contacts next to the range may still come: the kernel
/// takes those of its shard. Each shard runs a plan of its own.
fn with_ids(plan: &Arc<dyn ExecutionPlan>, lo: u32, hi: u32) -> Result<Arc<dyn ExecutionPlan>> {
    use datafusion::datasource::physical_plan::FileSource;
    use datafusion::logical_expr::Operator;
    use datafusion::physical_expr::expressions::{BinaryExpr, Literal};
    let ranged = crate::engine::page_index::map_parquet_sources(plan.clone(), |parquet, conf| {
        let iid: Arc<dyn PhysicalExpr> =
            Arc::new(Column::new_with_schema(IID, conf.file_schema())?);
        let bound = |op, id: u32| -> Arc<dyn PhysicalExpr> {
            let id = Arc::new(Literal::new(ScalarValue::UInt32(Some(id))));
            Arc::new(BinaryExpr::new(iid.clone(), op, id))
        };
        let and =
            |a, b| -> Arc<dyn PhysicalExpr> { Arc::new(BinaryExpr::new(a, Operator::And, b)) };
        let range = and(bound(Operator::GtEq, lo), bound(Operator::Lt, hi));
        Ok(parquet.with_predicate(match FileSource::filter(parquet) {
            Some(p) => and(p, range),
            None => range,
        }))
    })?;
    // Nodes that keep state while they run (a repartition) start anew.
    Ok(datafusion::physical_plan::execution_plan::reset_plan_states(ranged)?)
}

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

/// The event types of a scan in sets read alike: the types whose conditions
/// read the same value, filter and dictionary columns (all in one set,
/// reading every column any of them reads, unless `split`).
fn projections(
    by_type: &HashMap<String, Vec<u32>>,
    leaves: &[Leaf],
    filters: &Filters,
    values: usize,
    split: bool,
) -> Vec<Projection> {
    let mut types: Vec<&String> = by_type.keys().collect();
    types.sort();
    let mut out: Vec<Projection> = Vec::new();
    for t in types {
        let mut p = Projection {
            types: vec![t.clone()],
            values: vec![false; values],
            planned: vec![false; filters.planned.len()],
            dictionaries: vec![false; filters.dictionaries.len()],
            lo: i64::MAX,
            hi: i64::MIN,
            timed: false,
        };
        for &k in &by_type[t] {
            let leaf = &leaves[k as usize];
            p.timed |= leaf.slots > 0;
            if leaf.lo <= leaf.hi {
                p.lo = p.lo.min(leaf.lo);
                p.hi = p.hi.max(leaf.hi);
            }
            if let Some(v) = leaf.value {
                p.values[v] = true;
            }
            let extra = leaf.extra.map(|e| filters.extras[e].as_slice());
            for &a in extra.unwrap_or(&[]) {
                match &filters.atoms[a] {
                    Atom::Planned(j) => p.planned[*j] = true,
                    Atom::Dictionary(j, _) => p.dictionaries[*j] = true,
                }
            }
        }
        let alike = out.iter_mut().find(|q| {
            !split
                || q.values == p.values
                    && q.planned == p.planned
                    && q.dictionaries == p.dictionaries
        });
        match alike {
            Some(q) => {
                q.types.push(t.clone());
                let or =
                    |a: &mut Vec<bool>, b: &[bool]| a.iter_mut().zip(b).for_each(|(x, y)| *x |= y);
                or(&mut q.values, &p.values);
                or(&mut q.planned, &p.planned);
                or(&mut q.dictionaries, &p.dictionaries);
                q.lo = q.lo.min(p.lo);
                q.hi = q.hi.max(p.hi);
                q.timed |= p.timed;
            }
            None => out.push(p),
        }
    }
    out
}

/// The `having` test of an aggregated condition over its accumulated count
/// `n` and value `a` (a sum is 0, never empty, when nothing matched), with
/// the schema of a batch of those two columns.
pub(super) fn having_expr(
    p: &BehaviorParts,
    ts_type: &DataType,
    clock: &Clock,
) -> (SchemaRef, Expr) {
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
    (Arc::new(Schema::new(fields)), pass)
}

/// The runs of ascending values of `ids`, in order, covering it.
fn ascending_runs(ids: &[u32]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut start = 0;
    (1..=ids.len())
        .filter(|&i| i == ids.len() || ids[i] < ids[i - 1])
        .map(move |i| {
            let run = start..i;
            start = i;
            run
        })
}

#[cfg(test)]
mod tests {
    use super::ascending_runs;

    #[test]
    fn ids_are_cut_where_they_go_down() {
        let runs = |ids: &[u32]| ascending_runs(ids).collect::<Vec<_>>();
        assert!(runs(&[]).is_empty());
        assert_eq!(runs(&[7]), vec![0..1]);
        assert_eq!(runs(&[1, 1, 2, 5]), vec![0..4]);
        assert_eq!(runs(&[3, 9, 2, 2, 8, 1]), vec![0..2, 2..5, 5..6]);
        assert_eq!(runs(&[5, 4, 3]), vec![0..1, 1..2, 2..3]);
    }
}
