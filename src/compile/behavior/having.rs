//! The `having` tests over the accumulated values of a shard, written
//! straight into bitmaps.

use super::*;

impl Scan {
    /// Turn a shard's state into bitmaps (and kept times) per condition.
    pub(super) fn finish(&self, st: &State, lo: u32) -> Result<Vec<LeafBits>> {
        let mut out: Vec<LeafBits> = Vec::with_capacity(self.leaves.len());
        for (l, leaf) in self.leaves.iter().enumerate() {
            let counts = &st.n[st.cap * l..st.cap * l + st.len];
            let bits = BooleanBuffer::collect_bool(st.len, |i| counts[i] > 0);
            let has = bits_from(lo, &bits);
            let pass = if leaf.exists == Some(true) {
                has.clone()
            } else {
                RoaringBitmap::new()
            };
            let mut times = Vec::new();
            if leaf.slots > 0 {
                times.reserve(has.len() as usize * leaf.slots);
                for i in bits.set_indices() {
                    let filled = (st.n[st.cap * l + i] as usize).min(leaf.slots);
                    for j in 0..leaf.slots {
                        times.push(match j < filled {
                            true => st.t[st.cap * (leaf.time + j) + i],
                            false => i64::MIN,
                        });
                    }
                }
            }
            out.push(LeafBits { has, pass, times });
        }
        if self.having.is_empty() {
            return Ok(out);
        }
        let len = st.len;
        for test in &self.having {
            // Contacts without a matching event never pass the test (it
            // asks for a count above 0): when they are most of the shard,
            // the test runs over the others alone.
            let has = &out[test.leaf].has;
            if (has.len() as usize) < len / 4 {
                let rows: Vec<usize> = has.iter().map(|id| (id - lo) as usize).collect();
                let mut pass = Vec::new();
                for chunk in rows.chunks(HAVING_CHUNK) {
                    let batch = self.having_batch(test, st, chunk.iter().copied())?;
                    let mask = test.pass.evaluate(&batch)?.into_array(batch.num_rows())?;
                    let bits = true_bits(mask.as_boolean());
                    pass.extend(bits.set_indices().map(|j| lo + chunk[j] as u32));
                }
                out[test.leaf].pass |= RoaringBitmap::from_sorted_iter(pass)
                    .map_err(|e| Error::Internal(format!("having: {e}")))?;
                continue;
            }
            let mut start = 0;
            while start < len {
                let end = (start + HAVING_CHUNK).min(len);
                let batch = self.having_batch(test, st, start..end)?;
                let mask = test.pass.evaluate(&batch)?.into_array(batch.num_rows())?;
                let bits = true_bits(mask.as_boolean());
                out[test.leaf].pass |= bits_from(lo + start as u32, &bits);
                start = end;
            }
        }
        Ok(out)
    }

    /// Some contacts of a shard (positions in it, ascending) with one
    /// condition's count and aggregate.
    pub(super) fn having_batch(
        &self,
        test: &HavingTest,
        st: &State,
        rows: impl Iterator<Item = usize> + Clone,
    ) -> Result<RecordBatch> {
        let k = test.leaf;
        let leaf = &self.leaves[k];
        let rows: Vec<usize> = rows.collect();
        let n = &st.n[st.cap * k..];
        // Values and validity are built apart, each in one pass over the
        // rows: an array collected from options pays a builder per value.
        let counts: Vec<i64> = rows.iter().map(|&i| n[i] as i64).collect();
        let mut columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(counts))];
        match leaf.agg {
            Agg::Count => {}
            Agg::First | Agg::Last => {
                let at = st.cap * leaf.time;
                let times: Vec<i64> = rows.iter().map(|&i| st.t[at + i]).collect();
                let tz = match &self.ts_type {
                    DataType::Timestamp(_, tz) => tz.clone(),
                    _ => None,
                };
                let a = TimestampMicrosecondArray::new(times.into(), validity(&rows, |i| n[i] > 0));
                columns.push(Arc::new(a.with_timezone_opt(tz)));
            }
            agg => {
                let at = st.cap * leaf.float;
                let (nn, f) = (&st.nn[at..], &st.f[at..]);
                let values: Vec<f64> = match agg {
                    Agg::Avg => rows
                        .iter()
                        .map(|&i| match nn[i] {
                            0 => 0.0,
                            c => f[i] / c as f64,
                        })
                        .collect(),
                    _ => rows.iter().map(|&i| f[i]).collect(),
                };
                // A sum of no values is 0; the other aggregates of none are
                // empty.
                let nulls = match agg {
                    Agg::Sum => None,
                    _ => validity(&rows, |i| nn[i] > 0),
                };
                columns.push(Arc::new(Float64Array::new(values.into(), nulls)));
            }
        }
        Ok(RecordBatch::try_new(test.schema.clone(), columns)?)
    }
}

/// The validity of some rows: none when every one is present.
fn validity(rows: &[usize], present: impl Fn(usize) -> bool) -> Option<NullBuffer> {
    let bits = BooleanBuffer::collect_bool(rows.len(), |j| present(rows[j]));
    Some(NullBuffer::new(bits)).filter(|b| b.null_count() > 0)
}

/// The smallest count from which a count condition gives the same answer
/// for every larger count, if it is at most `most`.
pub(super) fn count_constant_from(op: Op, v: &Operand, most: usize) -> Option<usize> {
    // Past the largest number the test names, every count answers alike.
    let top = match v {
        Operand::Number(x) => *x,
        Operand::NumberRange(lo, hi) => lo.max(*hi),
        _ => 0.0,
    };
    if !top.is_finite() {
        return None;
    }
    let end = top.max(0.0).ceil() as usize + 2;
    (1..=most).find(|&k| {
        let at = number_holds(op, v, k as f64);
        (k..=end.max(k)).all(|n| number_holds(op, v, n as f64) == at)
    })
}

/// If a count condition gives the same answer for every count from 1 up,
/// that answer: the condition then only asks whether a matching event exists.
pub(super) fn count_constant_from_one(op: Op, v: &Operand) -> Option<bool> {
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
pub(super) fn number_holds(op: Op, v: &Operand, x: f64) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_test_is_constant_from_the_count_it_names() {
        use Operand as O;
        let cases = [
            (Op::Gte, O::Number(1.0), Some(1)),
            (Op::Gte, O::Number(3.0), Some(3)),
            (Op::Gt, O::Number(2.0), Some(3)),
            (Op::Eq, O::Number(2.0), Some(3)),
            (Op::Lt, O::Number(3.0), Some(3)),
            (Op::Lte, O::Number(0.0), Some(1)),
            (Op::Neq, O::Number(3.0), Some(4)),
            (Op::Neq, O::Number(4.0), None),
            (Op::Between, O::NumberRange(2.0, 3.0), Some(4)),
            (Op::Gte, O::Number(5.0), None),
            (Op::Eq, O::Number(100.0), None),
            (Op::Gte, O::Number(2.5), Some(3)),
        ];
        for (op, v, want) in cases {
            assert_eq!(count_constant_from(op, &v, 4), want, "{op:?} {v:?}");
        }
    }
}
