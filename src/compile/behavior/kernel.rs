//! The kernel: rows dispatched on their event type's code to the
//! conditions that accept it, accumulated per contact in dense arrays.

use super::*;

impl Scan {
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
    pub(super) fn accumulate(
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
    pub(super) fn group_by_code(
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
    pub(super) fn run_conditions(&self, st: &mut State, rows: &Rows) {
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
                let extra = leaf
                    .extra
                    .map(|x| rows.extras[x].as_ref().expect("read by its types"));
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
                // The value column of an aggregate, read for these types.
                let values = leaf.value.and_then(|v| rows.values[v]);
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
                        // The time kept is chosen, not branched to: the
                        // comparison waits on a load from memory, which a
                        // mispredicted branch would make the next rows' loads
                        // wait for too.
                        Agg::First => {
                            let v = &mut t[cap * leaf.time + i];
                            let kept = *v;
                            *v = if first | (tv < kept) { tv } else { kept };
                        }
                        Agg::Last if leaf.slots > 1 => {
                            // The latest few, latest first: the new time
                            // goes in its place among the ones kept.
                            let filled = (*c as usize - 1).min(leaf.slots);
                            let at = |j: usize| cap * (leaf.time + j) + i;
                            let mut j = filled;
                            while j > 0 && tv > t[at(j - 1)] {
                                j -= 1;
                            }
                            if j < leaf.slots {
                                let mut s = filled.min(leaf.slots - 1);
                                while s > j {
                                    t[at(s)] = t[at(s - 1)];
                                    s -= 1;
                                }
                                t[at(j)] = tv;
                            }
                        }
                        Agg::Last => {
                            let v = &mut t[cap * leaf.time + i];
                            let kept = *v;
                            *v = if first | (tv > kept) { tv } else { kept };
                        }
                        Agg::Sum | Agg::Avg | Agg::Min | Agg::Max => {
                            let column = values.expect("a value column read by its types");
                            if column.is_null(r) {
                                continue;
                            }
                            let x = column.value(r);
                            let at = cap * leaf.float + i;
                            let count = &mut nn[at];
                            let v = &mut f[at];
                            let (none, kept) = (*count == 0, *v);
                            *v = match leaf.agg {
                                Agg::Sum | Agg::Avg => kept + x,
                                Agg::Min if none | (x < kept) => x,
                                Agg::Max if none | (x > kept) => x,
                                _ => kept,
                            };
                            *count += 1;
                        }
                    }
                }
            }
        }
    }
}

impl State {
    /// Zeroed state for `cap` contacts; written now, so that the kernel does
    /// not fault on pages the allocator mapped lazily (`vec![0; n]` would
    /// map the zero page and copy it on the kernel's first write).
    #[allow(clippy::slow_vector_initialization)]
    pub(super) fn new(scan: &Scan, cap: usize) -> State {
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
    pub(super) fn reset(&mut self, len: usize) {
        self.len = len;
        self.n.fill(0);
        self.nn.fill(0);
        self.f.fill(0.0);
        self.t.fill(0);
    }
}
