//! A plain-Rust reference evaluator of criteria, written from the SPEC
//! ("Segment definitions", "Field operators and empty values", "Behaviour
//! criteria") independently of `segments::compile`: contacts and events are
//! loaded into memory and every criterion is interpreted row at a time.
//!
//! It reuses only the parsed criteria types and the operand typing of the
//! library. `sql` and `query` criteria are not supported (they panic).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use chrono::{DateTime, Datelike, Duration as ChronoDuration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Float64Type, TimeUnit, TimestampMicrosecondType,
};

use segments::base::schema::FieldType;
use segments::criteria::operand::{Operand, operand};
use segments::criteria::{Agg, Behavior, Bound, Criterion, FieldCond, Op, Window};

/// One value of a contact field or an event column.
#[derive(Debug, Clone, PartialEq)]
pub enum V {
    Null,
    Text(String),
    Num(f64),
    Date(NaiveDate),
    /// µs since the epoch, UTC.
    Ts(i64),
    Bool(bool),
    Tags(Vec<String>),
}

impl V {
    /// SPEC: empty = null, or "" for text, or an empty list for tags.
    pub fn is_empty(&self) -> bool {
        match self {
            V::Null => true,
            V::Text(s) => s.is_empty(),
            V::Tags(t) => t.is_empty(),
            _ => false,
        }
    }
}

impl std::fmt::Display for V {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            V::Null => write!(f, "null"),
            V::Text(s) => write!(f, "{s:?}"),
            V::Num(x) => write!(f, "{x}"),
            V::Date(d) => write!(f, "{d}"),
            V::Ts(t) => match DateTime::<Utc>::from_timestamp_micros(*t) {
                Some(t) => write!(f, "{}", t.to_rfc3339()),
                None => write!(f, "ts({t})"),
            },
            V::Bool(b) => write!(f, "{b}"),
            V::Tags(t) => write!(f, "{t:?}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RefEvent {
    pub ts: i64,
    pub cols: HashMap<String, V>,
}

#[derive(Debug, Clone)]
pub struct RefContact {
    pub iid: u32,
    pub contact_id: u64,
    pub fields: HashMap<String, V>,
}

/// A base loaded in memory.
pub struct RefBase {
    pub tz: Tz,
    pub fields: HashMap<String, FieldType>,
    pub event_columns: HashMap<String, FieldType>,
    pub contacts: Vec<RefContact>,
    /// Events by internal id.
    pub events: HashMap<u32, Vec<RefEvent>>,
    /// Import id and name → touched contacts.
    pub imports: HashMap<String, BTreeSet<u32>>,
}

fn column_values(a: &ArrayRef, ty: &FieldType) -> Vec<V> {
    let n = a.len();
    match ty {
        FieldType::Text | FieldType::Choice { .. } => {
            let s = cast(a, &DataType::Utf8).expect("text column casts to Utf8");
            let s = s.as_string::<i32>();
            (0..n)
                .map(|i| {
                    if s.is_null(i) {
                        V::Null
                    } else {
                        V::Text(s.value(i).to_string())
                    }
                })
                .collect()
        }
        FieldType::Number { .. } => {
            let f = cast(a, &DataType::Float64).expect("number column casts to Float64");
            let f = f.as_primitive::<Float64Type>();
            (0..n)
                .map(|i| {
                    if f.is_null(i) {
                        V::Null
                    } else {
                        V::Num(f.value(i))
                    }
                })
                .collect()
        }
        FieldType::Date => {
            let d = cast(a, &DataType::Date32).expect("date column casts to Date32");
            let d = d.as_primitive::<Date32Type>();
            let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
            (0..n)
                .map(|i| {
                    if d.is_null(i) {
                        V::Null
                    } else {
                        V::Date(epoch + ChronoDuration::days(d.value(i) as i64))
                    }
                })
                .collect()
        }
        FieldType::Timestamp => {
            let t = cast(
                a,
                &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            )
            .expect("timestamp column casts");
            let t = t.as_primitive::<TimestampMicrosecondType>();
            (0..n)
                .map(|i| {
                    if t.is_null(i) {
                        V::Null
                    } else {
                        V::Ts(t.value(i))
                    }
                })
                .collect()
        }
        FieldType::Bool => {
            let b = a.as_boolean();
            (0..n)
                .map(|i| {
                    if b.is_null(i) {
                        V::Null
                    } else {
                        V::Bool(b.value(i))
                    }
                })
                .collect()
        }
        FieldType::Tags => {
            let l = a.as_list::<i32>();
            (0..n)
                .map(|i| {
                    if l.is_null(i) {
                        V::Null
                    } else {
                        let inner = l.value(i);
                        let inner = cast(&inner, &DataType::Utf8).expect("tags are text");
                        let s = inner.as_string::<i32>();
                        V::Tags(
                            (0..s.len())
                                .filter(|&j| s.is_valid(j))
                                .map(|j| s.value(j).to_string())
                                .collect(),
                        )
                    }
                })
                .collect()
        }
    }
}

fn u32_col(b: &RecordBatch, name: &str) -> Vec<u32> {
    let a = cast(
        b.column_by_name(name).expect("id column"),
        &DataType::UInt32,
    )
    .unwrap();
    a.as_primitive::<datafusion::arrow::datatypes::UInt32Type>()
        .values()
        .to_vec()
}

fn u64_col(b: &RecordBatch, name: &str) -> Vec<u64> {
    let a = cast(
        b.column_by_name(name).expect("id column"),
        &DataType::UInt64,
    )
    .unwrap();
    a.as_primitive::<datafusion::arrow::datatypes::UInt64Type>()
        .values()
        .to_vec()
}

/// Load the current version of a base into memory.
pub fn load(dir: &Path) -> RefBase {
    let base = segments::base::Base::open(dir).expect("open base");
    let snap = base.snapshot().expect("snapshot");
    let m = &snap.manifest;
    let fields: HashMap<String, FieldType> = m
        .fields
        .iter()
        .map(|f| (f.name.clone(), f.ty.clone()))
        .collect();
    let event_columns: HashMap<String, FieldType> = m
        .event_columns
        .iter()
        .map(|f| (f.name.clone(), f.ty.clone()))
        .collect();

    let batch = segments::base::contacts::load_contacts(dir, m).expect("load contacts");
    let iids = u32_col(&batch, "_iid");
    let cids = u64_col(&batch, "contact_id");
    let mut contacts: Vec<RefContact> = iids
        .iter()
        .zip(&cids)
        .map(|(&iid, &contact_id)| RefContact {
            iid,
            contact_id,
            fields: HashMap::new(),
        })
        .collect();
    for f in &m.fields {
        let vals = match batch.column_by_name(&f.name) {
            Some(a) => column_values(a, &f.ty),
            None => vec![V::Null; batch.num_rows()],
        };
        for (c, v) in contacts.iter_mut().zip(vals) {
            c.fields.insert(f.name.clone(), v);
        }
    }

    let mut events: HashMap<u32, Vec<RefEvent>> = HashMap::new();
    for e in &m.events {
        let b = segments::base::table::read_parquet_one(&dir.join(&e.file.path), None)
            .expect("read events");
        let iids = u32_col(&b, "_iid");
        let mut cols: Vec<(String, Vec<V>)> = Vec::new();
        for c in &m.event_columns {
            let vals = match b.column_by_name(&c.name) {
                Some(a) => column_values(a, &c.ty),
                None => vec![V::Null; b.num_rows()],
            };
            cols.push((c.name.clone(), vals));
        }
        for (row, iid) in iids.iter().enumerate() {
            let mut map = HashMap::new();
            for (name, vals) in &cols {
                map.insert(name.clone(), vals[row].clone());
            }
            let ts = match map.get("ts") {
                Some(V::Ts(t)) => *t,
                other => panic!("event without ts: {other:?}"),
            };
            events
                .entry(*iid)
                .or_default()
                .push(RefEvent { ts, cols: map });
        }
    }

    let mut imports = HashMap::new();
    for imp in &m.imports {
        let bm = segments::bitmaps::read_bitmap(dir, &imp.contacts).expect("import bitmap");
        let set: BTreeSet<u32> = bm.iter().collect();
        imports.insert(imp.id.clone(), set.clone());
        imports.insert(imp.name.clone(), set);
    }

    RefBase {
        tz: base.tz(),
        fields,
        event_columns,
        contacts,
        events,
        imports,
    }
}

/// The evaluation instant and the calendar of the base.
#[derive(Clone, Copy)]
struct Cal {
    as_of: i64,
    today: NaiveDate,
    tz: Tz,
}

impl Cal {
    fn new(as_of: DateTime<Utc>, tz: Tz) -> Cal {
        Cal {
            as_of: as_of.timestamp_micros(),
            today: as_of.with_timezone(&tz).date_naive(),
            tz,
        }
    }

    fn local_day(&self, micros: i64) -> NaiveDate {
        DateTime::<Utc>::from_timestamp_micros(micros)
            .expect("valid timestamp")
            .with_timezone(&self.tz)
            .date_naive()
    }

    /// Midnight of a day in the base's time zone (µs); first valid instant if in a gap.
    fn midnight(&self, d: NaiveDate) -> i64 {
        let mut t = d.and_hms_opt(0, 0, 0).unwrap();
        for _ in 0..4 {
            if let Some(x) = self.tz.from_local_datetime(&t).earliest() {
                return x.timestamp_micros();
            }
            t += ChronoDuration::minutes(30);
        }
        panic!("no midnight for {d}")
    }
}

/// The anniversary of (month, day) in a year; 29 Feb is 28 Feb in common years.
fn anniversary_in(year: i32, month: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, day)
        .or_else(|| NaiveDate::from_ymd_opt(year, month, day - 1))
        .expect("valid anniversary")
}

fn anniversary_within(d: NaiveDate, today: NaiveDate, days: i64) -> bool {
    let mut next = anniversary_in(today.year(), d.month(), d.day());
    if next < today {
        next = anniversary_in(today.year() + 1, d.month(), d.day());
    }
    next <= today + ChronoDuration::days(days)
}

fn norm(s: &str, case_sensitive: bool) -> String {
    if case_sensitive {
        s.to_string()
    } else {
        s.to_lowercase()
    }
}

/// Does a value meet a condition? `aggregate`: an empty value matches only `is_empty`.
fn value_matches(
    ty: &FieldType,
    op: Op,
    opnd: &Operand,
    cs: bool,
    v: &V,
    cal: &Cal,
    aggregate: bool,
) -> bool {
    let empty = v.is_empty();
    match op {
        Op::IsEmpty => return empty,
        Op::IsNotEmpty => return !empty,
        _ => {}
    }
    if empty {
        if aggregate {
            return false;
        }
        return match ty {
            FieldType::Text | FieldType::Number { .. } | FieldType::Date | FieldType::Timestamp => {
                op.is_negative()
            }
            FieldType::Choice { .. } => false,
            FieldType::Bool => false,
            FieldType::Tags => op == Op::ContainsNone,
        };
    }
    match ty {
        FieldType::Text => {
            let V::Text(s) = v else {
                panic!("text value expected, got {v:?}")
            };
            let s = norm(s, cs);
            let one = |x: &String| norm(x, cs);
            match (op, opnd) {
                (Op::Eq, Operand::Text(x)) => s == one(x),
                (Op::Neq, Operand::Text(x)) => s != one(x),
                (Op::In, Operand::Texts(xs)) => xs.iter().any(|x| s == one(x)),
                (Op::NotIn, Operand::Texts(xs)) => !xs.iter().any(|x| s == one(x)),
                (Op::StartsWith, Operand::Text(x)) => s.starts_with(&one(x)),
                (Op::NotStartsWith, Operand::Text(x)) => !s.starts_with(&one(x)),
                (Op::EndsWith, Operand::Text(x)) => s.ends_with(&one(x)),
                (Op::NotEndsWith, Operand::Text(x)) => !s.ends_with(&one(x)),
                (Op::Contains, Operand::Text(x)) => s.contains(&one(x)),
                (Op::NotContains, Operand::Text(x)) => !s.contains(&one(x)),
                _ => panic!("text: unexpected {op:?} {opnd:?}"),
            }
        }
        FieldType::Choice { .. } => {
            let V::Text(s) = v else {
                panic!("choice value expected, got {v:?}")
            };
            match (op, opnd) {
                (Op::Eq, Operand::Text(x)) => s == x,
                (Op::Neq, Operand::Text(x)) => s != x,
                (Op::In, Operand::Texts(xs)) => xs.contains(s),
                (Op::NotIn, Operand::Texts(xs)) => !xs.contains(s),
                _ => panic!("choice: unexpected {op:?} {opnd:?}"),
            }
        }
        FieldType::Number { .. } => {
            let V::Num(n) = v else {
                panic!("number value expected, got {v:?}")
            };
            let n = *n;
            match (op, opnd) {
                (Op::Eq, Operand::Number(x)) => n == *x,
                (Op::Neq, Operand::Number(x)) => n != *x,
                (Op::Lt, Operand::Number(x)) => n < *x,
                (Op::Lte, Operand::Number(x)) => n <= *x,
                (Op::Gt, Operand::Number(x)) => n > *x,
                (Op::Gte, Operand::Number(x)) => n >= *x,
                (Op::Between, Operand::NumberRange(lo, hi)) => *lo <= n && n <= *hi,
                _ => panic!("number: unexpected {op:?} {opnd:?}"),
            }
        }
        FieldType::Date | FieldType::Timestamp => {
            let (day, micros) = match v {
                V::Date(d) => (*d, None),
                V::Ts(t) => (cal.local_day(*t), Some(*t)),
                _ => panic!("date value expected, got {v:?}"),
            };
            match (op, opnd) {
                (Op::Eq, Operand::Date(d)) => day == *d,
                (Op::Neq, Operand::Date(d)) => day != *d,
                (Op::Before, Operand::Date(d)) => day < *d,
                (Op::After, Operand::Date(d)) => day > *d,
                (Op::Between, Operand::DateRange(lo, hi)) => *lo <= day && day <= *hi,
                (Op::WithinLast, Operand::Duration(dur)) => match micros {
                    Some(t) => cal.as_of - dur.micros() < t && t <= cal.as_of,
                    None => cal.today - ChronoDuration::days(dur.days()) <= day && day <= cal.today,
                },
                (Op::MoreThanAgo, Operand::Duration(dur)) => match micros {
                    Some(t) => t <= cal.as_of - dur.micros(),
                    None => day < cal.today - ChronoDuration::days(dur.days()),
                },
                (Op::AnniversaryWithin, Operand::Duration(dur)) => {
                    anniversary_within(day, cal.today, dur.days())
                }
                _ => panic!("date: unexpected {op:?} {opnd:?}"),
            }
        }
        FieldType::Bool => {
            let V::Bool(b) = v else {
                panic!("bool value expected, got {v:?}")
            };
            match op {
                Op::IsTrue => *b,
                Op::IsFalse => !*b,
                _ => panic!("bool: unexpected {op:?}"),
            }
        }
        FieldType::Tags => {
            let V::Tags(tags) = v else {
                panic!("tags value expected, got {v:?}")
            };
            let have: BTreeSet<String> = tags.iter().map(|t| norm(t, cs)).collect();
            let Operand::Texts(xs) = opnd else {
                panic!("tags: unexpected operand {opnd:?}")
            };
            let xs: Vec<String> = xs.iter().map(|x| norm(x, cs)).collect();
            match op {
                Op::ContainsAny => xs.iter().any(|x| have.contains(x)),
                Op::ContainsAll => xs.iter().all(|x| have.contains(x)),
                Op::ContainsNone => !xs.iter().any(|x| have.contains(x)),
                _ => panic!("tags: unexpected {op:?}"),
            }
        }
    }
}

fn cond_matches(ty: &FieldType, c: &FieldCond, v: &V, cal: &Cal) -> bool {
    let opnd = operand(ty, c.op, &c.value).unwrap_or_else(|e| {
        panic!(
            "reference: invalid condition {c:?} on a {} field: {e}",
            ty.name()
        )
    });
    value_matches(ty, c.op, &opnd, c.case_sensitive, v, cal, false)
}

impl RefBase {
    pub fn all(&self) -> BTreeSet<u32> {
        self.contacts.iter().map(|c| c.iid).collect()
    }

    pub fn contact(&self, iid: u32) -> Option<&RefContact> {
        self.contacts.iter().find(|c| c.iid == iid)
    }

    /// Evaluate a criterion at `as_of`; `segments` maps segment ids and names to members.
    pub fn eval(
        &self,
        c: &Criterion,
        as_of: DateTime<Utc>,
        segments: &HashMap<String, BTreeSet<u32>>,
    ) -> BTreeSet<u32> {
        let cal = Cal::new(as_of, self.tz);
        self.eval_in(c, &cal, segments)
    }

    fn eval_in(
        &self,
        c: &Criterion,
        cal: &Cal,
        segments: &HashMap<String, BTreeSet<u32>>,
    ) -> BTreeSet<u32> {
        match c {
            Criterion::All(cs) => {
                let mut acc = self.all();
                for x in cs {
                    let r = self.eval_in(x, cal, segments);
                    acc = acc.intersection(&r).copied().collect();
                }
                acc
            }
            Criterion::Any(cs) => {
                let mut acc = BTreeSet::new();
                for x in cs {
                    acc.extend(self.eval_in(x, cal, segments));
                }
                acc
            }
            Criterion::Not(x) => {
                let r = self.eval_in(x, cal, segments);
                self.all().difference(&r).copied().collect()
            }
            Criterion::Field(f) => {
                let ty = self
                    .fields
                    .get(&f.field)
                    .unwrap_or_else(|| panic!("reference: unknown field {:?}", f.field));
                self.contacts
                    .iter()
                    .filter(|ct| {
                        cond_matches(ty, f, ct.fields.get(&f.field).unwrap_or(&V::Null), cal)
                    })
                    .map(|ct| ct.iid)
                    .collect()
            }
            Criterion::Behavior(b) => self
                .contacts
                .iter()
                .filter(|ct| self.behavior_matches(b, ct.iid, cal))
                .map(|ct| ct.iid)
                .collect(),
            Criterion::Segment(s) => {
                let all = self.all();
                segments
                    .get(s)
                    .unwrap_or_else(|| panic!("reference: unknown segment {s:?}"))
                    .intersection(&all)
                    .copied()
                    .collect()
            }
            Criterion::Import(s) => {
                let all = self.all();
                self.imports
                    .get(s)
                    .unwrap_or_else(|| panic!("reference: unknown import {s:?}"))
                    .intersection(&all)
                    .copied()
                    .collect()
            }
            Criterion::Sql(_) | Criterion::Query(_) => {
                panic!("reference: sql and query are not supported")
            }
        }
    }

    /// The events of a contact that pass type, operation, where and window.
    #[allow(dead_code)]
    pub fn matching_events(&self, b: &Behavior, iid: u32, as_of: DateTime<Utc>) -> Vec<&RefEvent> {
        self.matching_in(b, iid, &Cal::new(as_of, self.tz))
    }

    fn matching_in(&self, b: &Behavior, iid: u32, cal: &Cal) -> Vec<&RefEvent> {
        let Some(evs) = self.events.get(&iid) else {
            return Vec::new();
        };
        let (lo, hi) = match &b.within {
            None => (None, None),
            Some(Window::Last(d)) => (Some(cal.as_of - d.micros() + 1), None),
            Some(Window::Range { after, before }) => {
                let bound = |x: &Bound| match x {
                    Bound::Date(d) => cal.midnight(*d),
                    Bound::Ago(d) => cal.as_of - d.micros(),
                };
                (after.as_ref().map(bound), before.as_ref().map(bound))
            }
        };
        evs.iter()
            .filter(|e| e.ts <= cal.as_of)
            .filter(|e| lo.is_none_or(|lo| e.ts >= lo))
            .filter(|e| hi.is_none_or(|hi| e.ts < hi))
            .filter(|e| match e.cols.get("type") {
                Some(V::Text(t)) => b.events.contains(t),
                _ => false,
            })
            .filter(|e| match &b.operations {
                None => true,
                Some(ops) => match e.cols.get("operation_id") {
                    Some(V::Text(o)) => ops.contains(o),
                    _ => false,
                },
            })
            .filter(|e| {
                b.wheres.iter().all(|w| {
                    let ty = self
                        .event_columns
                        .get(&w.field)
                        .unwrap_or_else(|| panic!("reference: unknown event column {:?}", w.field));
                    cond_matches(ty, w, e.cols.get(&w.field).unwrap_or(&V::Null), cal)
                })
            })
            .collect()
    }

    /// The aggregate of a behaviour condition for a contact (V::Null when empty).
    #[allow(dead_code)]
    pub fn aggregate(&self, b: &Behavior, iid: u32, as_of: DateTime<Utc>) -> V {
        self.aggregate_in(b, iid, &Cal::new(as_of, self.tz))
    }

    fn aggregate_in(&self, b: &Behavior, iid: u32, cal: &Cal) -> V {
        let evs = self.matching_in(b, iid, cal);
        let column = b
            .having
            .column
            .clone()
            .unwrap_or_else(|| "amount".to_string());
        let nums = || -> Vec<f64> {
            evs.iter()
                .filter_map(|e| match e.cols.get(&column) {
                    Some(V::Num(x)) => Some(*x),
                    _ => None,
                })
                .collect()
        };
        match b.having.agg {
            Agg::Count => V::Num(evs.len() as f64),
            Agg::Sum => V::Num(nums().iter().sum()),
            Agg::Avg => {
                let v = nums();
                if v.is_empty() {
                    V::Null
                } else {
                    V::Num(v.iter().sum::<f64>() / v.len() as f64)
                }
            }
            Agg::Min => nums().into_iter().reduce(f64::min).map_or(V::Null, V::Num),
            Agg::Max => nums().into_iter().reduce(f64::max).map_or(V::Null, V::Num),
            Agg::First => evs.iter().map(|e| e.ts).min().map_or(V::Null, V::Ts),
            Agg::Last => evs.iter().map(|e| e.ts).max().map_or(V::Null, V::Ts),
        }
    }

    fn behavior_matches(&self, b: &Behavior, iid: u32, cal: &Cal) -> bool {
        let h = &b.having;
        let ty = h.value_type();
        let opnd = operand(&ty, h.op, &h.value)
            .unwrap_or_else(|e| panic!("reference: invalid having {h:?}: {e}"));
        let v = self.aggregate_in(b, iid, cal);
        value_matches(&ty, h.op, &opnd, false, &v, cal, true)
    }

    /// A readable dump of a contact and its events, for failure messages.
    pub fn describe(&self, iid: u32) -> String {
        let Some(c) = self.contact(iid) else {
            return format!("iid {iid}: not a contact");
        };
        let mut names: Vec<&String> = c.fields.keys().collect();
        names.sort();
        let fields: Vec<String> = names
            .iter()
            .map(|n| format!("{n}={}", c.fields[*n]))
            .collect();
        let mut out = format!(
            "iid {} (contact_id {}): {}",
            iid,
            c.contact_id,
            fields.join(", ")
        );
        if let Some(evs) = self.events.get(&iid) {
            let mut evs: Vec<&RefEvent> = evs.iter().collect();
            evs.sort_by_key(|e| e.ts);
            for e in evs {
                let mut names: Vec<&String> = e.cols.keys().filter(|k| *k != "ts").collect();
                names.sort();
                let cols: Vec<String> = names
                    .iter()
                    .map(|n| format!("{n}={}", e.cols[*n]))
                    .collect();
                out.push_str(&format!(
                    "\n    event ts={} {}",
                    V::Ts(e.ts),
                    cols.join(" ")
                ));
            }
        }
        out
    }
}
