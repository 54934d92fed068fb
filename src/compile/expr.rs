//! Field conditions as DataFusion expressions, with the SPEC's empty-value
//! rules built in. Every expression returned here is null-free (true or
//! false on every row), so that `not` and the fused trees stay exact.

use std::ops::Not;

use chrono::{DateTime, Datelike, Duration as ChronoDuration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use datafusion::common::ScalarValue;
use datafusion::functions::expr_fn::{contains, ends_with, octet_length, starts_with};
use datafusion::functions_nested::expr_fn::{
    array_empty, array_has, array_has_all, array_has_any, make_array,
};
use datafusion::logical_expr::{Expr, lit};

use crate::base::input::date_to_days;
use crate::base::schema::FieldType;
use crate::criteria::operand::{Operand, operand};
use crate::criteria::{FieldCond, Op};
use crate::engine::udf::{LowerTags, LowerText, MonthDay};
use crate::error::{Error, Result};

/// The evaluation instant and the calendar it is read in.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub as_of: DateTime<Utc>,
    pub tz: Tz,
}

impl Clock {
    pub fn new(as_of: DateTime<Utc>, tz: Tz) -> Clock {
        Clock { as_of, tz }
    }

    pub fn as_of_micros(&self) -> i64 {
        self.as_of.timestamp_micros()
    }

    /// The calendar day of `as_of` in the base's time zone.
    pub fn today(&self) -> NaiveDate {
        self.as_of.with_timezone(&self.tz).date_naive()
    }

    /// The instant the day starts in the base's time zone (µs since epoch).
    pub fn day_start(&self, d: NaiveDate) -> i64 {
        let midnight = d.and_hms_opt(0, 0, 0).expect("midnight exists");
        match self.tz.from_local_datetime(&midnight).earliest() {
            Some(t) => t.timestamp_micros(),
            // The day starts in a DST gap: the first valid local instant is an hour later.
            None => self
                .tz
                .from_local_datetime(&(midnight + ChronoDuration::hours(1)))
                .earliest()
                .map(|t| t.timestamp_micros())
                .unwrap_or_else(|| midnight.and_utc().timestamp_micros()),
        }
    }
}

/// `e IS NOT NULL AND e`: true where `e` is true, false where it is false or
/// null. Written this way rather than `e IS TRUE` because DataFusion 55
/// infers a non-null type for `IS TRUE` that its physical planner does not
/// always keep once filters are pushed down and subexpressions shared.
pub fn holds(e: Expr) -> Expr {
    e.clone().is_not_null().and(e)
}

pub fn ts_lit(micros: i64) -> Expr {
    lit(ScalarValue::TimestampMicrosecond(
        Some(micros),
        Some("UTC".into()),
    ))
}

fn date_lit(d: NaiveDate) -> Expr {
    lit(ScalarValue::Date32(Some(date_to_days(d))))
}

/// How an empty value meets a negative operator: on fields, rule 3 says it
/// matches; on behaviour aggregates, an empty aggregate matches only `is_empty`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmptyRule {
    Field,
    Aggregate,
}

/// The month-days (`MMDD`) on which an anniversary falls within `days` from
/// `today` (rule 8: 29 February counts as 28 February in common years).
pub fn anniversary_days(today: NaiveDate, days: i64) -> Vec<i32> {
    let mut out = Vec::new();
    let span = days.min(366);
    for i in 0..=span {
        let d = today + ChronoDuration::days(i);
        out.push(crate::engine::udf::month_day_of(d));
        if d.month() == 2 && d.day() == 28 && NaiveDate::from_ymd_opt(d.year(), 2, 29).is_none() {
            out.push(229);
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Compile one condition over the column expression `col` of type `ty`.
pub fn cond_expr(
    f: &FieldCond,
    ty: &FieldType,
    col: Expr,
    clock: &Clock,
    rule: EmptyRule,
) -> Result<Expr> {
    let v = operand(ty, f.op, &f.value).map_err(|m| Error::definition(&f.field, m))?;
    Ok(op_expr(ty, f.op, &v, f.case_sensitive, col, clock, rule))
}

fn is_empty(ty: &FieldType, col: &Expr) -> Expr {
    match ty {
        // Lengths, read from the offsets, rather than a comparison of every
        // value with "" or a count of the elements of every list.
        FieldType::Text => col
            .clone()
            .is_null()
            .or(octet_length(col.clone()).eq(lit(0i32))),
        FieldType::Tags => col.clone().is_null().or(array_empty(col.clone())),
        _ => col.clone().is_null(),
    }
}

/// Up to this many values, a tags condition tests each value on its own.
const FEW_TAGS: usize = 4;

fn texts_lit(values: &[String], cs: bool) -> Vec<Expr> {
    values
        .iter()
        .map(|s| lit(if cs { s.clone() } else { s.to_lowercase() }))
        .collect()
}

#[allow(clippy::too_many_arguments)]
pub fn op_expr(
    ty: &FieldType,
    op: Op,
    v: &Operand,
    cs: bool,
    col: Expr,
    clock: &Clock,
    rule: EmptyRule,
) -> Expr {
    let empty = is_empty(ty, &col);
    // Positive operators never match an empty value (rule 2).
    let positive = |cond: Expr| empty.clone().not().and(cond);
    // Negative operators match empty values on fields (rule 3), except choice (rule 4).
    let negative = |cond: Expr| match (rule, ty) {
        (EmptyRule::Field, FieldType::Choice { .. }) | (EmptyRule::Aggregate, _) => {
            empty.clone().not().and(cond.not())
        }
        (EmptyRule::Field, _) => empty.clone().or(cond.not()),
    };
    match op {
        Op::IsEmpty => return empty,
        Op::IsNotEmpty => return empty.not(),
        Op::IsTrue => return holds(col),
        Op::IsFalse => return holds(col.not()),
        _ => {}
    }
    let text_col = |cs: bool| {
        if cs {
            col.clone()
        } else {
            LowerText::udf().call(vec![col.clone()])
        }
    };
    let text_val = |s: &str| lit(if cs { s.to_string() } else { s.to_lowercase() });
    match (ty, v) {
        (FieldType::Choice { .. }, Operand::Text(s)) => {
            let c = col.clone().eq(lit(s.clone()));
            if op == Op::Eq {
                positive(c)
            } else {
                negative(c)
            }
        }
        (FieldType::Choice { .. }, Operand::Texts(vals)) => {
            let c = col.clone().in_list(texts_lit(vals, true), false);
            if op == Op::In {
                positive(c)
            } else {
                negative(c)
            }
        }
        (FieldType::Text, Operand::Text(s)) => {
            let t = text_col(cs);
            let val = text_val(s);
            let c = match op {
                Op::Eq | Op::Neq => t.eq(val),
                Op::StartsWith | Op::NotStartsWith => starts_with(t, val),
                Op::EndsWith | Op::NotEndsWith => ends_with(t, val),
                _ => contains(t, val),
            };
            if op.is_negative() {
                negative(c)
            } else {
                positive(c)
            }
        }
        (FieldType::Text, Operand::Texts(vals)) => {
            let c = text_col(cs).in_list(texts_lit(vals, cs), false);
            if op.is_negative() {
                negative(c)
            } else {
                positive(c)
            }
        }
        (FieldType::Tags, Operand::Texts(vals)) => {
            let tags = if cs {
                col.clone()
            } else {
                LowerTags::udf().call(vec![col.clone()])
            };
            // A few values: one vectorized `array_has` per value; more: one
            // lookup per tag.
            let few = vals.len() <= FEW_TAGS;
            let has = |v: Expr| array_has(tags.clone(), v);
            let any = || {
                match few {
                    true => texts_lit(vals, cs).into_iter().map(has).reduce(Expr::or),
                    false => None,
                }
                .unwrap_or_else(|| array_has_any(tags.clone(), make_array(texts_lit(vals, cs))))
            };
            match op {
                Op::ContainsAny => positive(any()),
                Op::ContainsAll => positive(
                    match few {
                        true => texts_lit(vals, cs).into_iter().map(has).reduce(Expr::and),
                        false => None,
                    }
                    .unwrap_or_else(|| {
                        array_has_all(tags.clone(), make_array(texts_lit(vals, cs)))
                    }),
                ),
                // Rule 5: contains_none matches empty tags.
                _ => empty.clone().or(any().not()),
            }
        }
        (FieldType::Number { .. }, Operand::Number(n)) => {
            let n = lit(*n);
            let c = match op {
                Op::Eq | Op::Neq => col.clone().eq(n),
                Op::Lt => col.clone().lt(n),
                Op::Lte => col.clone().lt_eq(n),
                Op::Gt => col.clone().gt(n),
                _ => col.clone().gt_eq(n),
            };
            if op == Op::Neq {
                negative(c)
            } else {
                positive(c)
            }
        }
        (FieldType::Number { .. }, Operand::NumberRange(lo, hi)) => {
            positive(col.clone().between(lit(*lo), lit(*hi)))
        }
        (FieldType::Date, _) => date_expr(op, v, col.clone(), clock, positive, negative),
        (FieldType::Timestamp, _) => timestamp_expr(op, v, col.clone(), clock, positive, negative),
        // Validation refuses every other pairing.
        _ => lit(false),
    }
}

fn anniversary(col: Expr, clock: &Clock, d: &crate::criteria::Duration) -> Expr {
    let days = anniversary_days(clock.today(), d.days());
    let list: Vec<Expr> = days.into_iter().map(lit).collect();
    MonthDay::udf(clock.tz).call(vec![col]).in_list(list, false)
}

fn date_expr(
    op: Op,
    v: &Operand,
    col: Expr,
    clock: &Clock,
    positive: impl Fn(Expr) -> Expr,
    negative: impl Fn(Expr) -> Expr,
) -> Expr {
    let today = clock.today();
    match (op, v) {
        (Op::Eq, Operand::Date(d)) => positive(col.eq(date_lit(*d))),
        (Op::Neq, Operand::Date(d)) => negative(col.eq(date_lit(*d))),
        (Op::Before, Operand::Date(d)) => positive(col.lt(date_lit(*d))),
        (Op::After, Operand::Date(d)) => positive(col.gt(date_lit(*d))),
        (Op::Between, Operand::DateRange(lo, hi)) => {
            positive(col.between(date_lit(*lo), date_lit(*hi)))
        }
        (Op::WithinLast, Operand::Duration(d)) => {
            let from = today - ChronoDuration::days(d.days());
            positive(col.between(date_lit(from), date_lit(today)))
        }
        (Op::MoreThanAgo, Operand::Duration(d)) => {
            positive(col.lt(date_lit(today - ChronoDuration::days(d.days()))))
        }
        (Op::AnniversaryWithin, Operand::Duration(d)) => positive(anniversary(col, clock, d)),
        _ => lit(false),
    }
}

fn timestamp_expr(
    op: Op,
    v: &Operand,
    col: Expr,
    clock: &Clock,
    positive: impl Fn(Expr) -> Expr,
    negative: impl Fn(Expr) -> Expr,
) -> Expr {
    let start = |d: NaiveDate| clock.day_start(d);
    let next = |d: NaiveDate| clock.day_start(d + ChronoDuration::days(1));
    let day = |d: NaiveDate| {
        col.clone()
            .gt_eq(ts_lit(start(d)))
            .and(col.clone().lt(ts_lit(next(d))))
    };
    let as_of = clock.as_of_micros();
    match (op, v) {
        (Op::Eq, Operand::Date(d)) => positive(day(*d)),
        (Op::Neq, Operand::Date(d)) => negative(day(*d)),
        (Op::Before, Operand::Date(d)) => positive(col.lt(ts_lit(start(*d)))),
        (Op::After, Operand::Date(d)) => positive(col.gt_eq(ts_lit(next(*d)))),
        (Op::Between, Operand::DateRange(lo, hi)) => positive(
            col.clone()
                .gt_eq(ts_lit(start(*lo)))
                .and(col.lt(ts_lit(next(*hi)))),
        ),
        (Op::WithinLast, Operand::Duration(d)) => positive(
            col.clone()
                .gt(ts_lit(as_of - d.micros()))
                .and(col.lt_eq(ts_lit(as_of))),
        ),
        (Op::MoreThanAgo, Operand::Duration(d)) => positive(col.lt_eq(ts_lit(as_of - d.micros()))),
        (Op::AnniversaryWithin, Operand::Duration(d)) => positive(anniversary(col, clock, d)),
        _ => lit(false),
    }
}
