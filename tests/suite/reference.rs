//! A plain-Rust reference evaluator of criteria, written from the SPEC
//! ("Segment definitions", "Field operators and empty values", "Behaviour
//! criteria") a second time, independently of `segments::criteria` and
//! `segments::compile`: it reads the criteria JSON itself (values, durations,
//! windows, aggregates and the empty-value rules), loads contacts and events
//! into memory and interprets every criterion row at a time.
//!
//! From the library it takes only the data: the manifest (field types,
//! segments, imports) and the files' contents. A `segment` criterion is
//! evaluated from that segment's own criteria at the instant of its last
//! computation (static segments keep their stored members), so chains of
//! segments are checked too. `sql` and `query` criteria are not supported
//! (they panic): callers leave them out.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use chrono::{DateTime, Datelike, Duration as ChronoDuration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Float64Type, TimeUnit, TimestampMicrosecondType,
};
use serde_json::Value;

use segments::base::schema::FieldType;

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

/// A segment as the manifest keeps it.
pub struct RefSegment {
    pub id: String,
    /// The criteria of a dynamic segment; None for a static one.
    pub criteria: Option<Value>,
    /// The instant of its last computation.
    pub as_of: Option<DateTime<Utc>>,
    /// Its stored members (used for static segments only).
    pub stored: BTreeSet<u32>,
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
    /// Segment id and name → the segment.
    pub segments: HashMap<String, std::rc::Rc<RefSegment>>,
    /// Members of segments already evaluated, by id.
    evaluated: RefCell<HashMap<String, BTreeSet<u32>>>,
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
        let bm = segments::base::bitmaps::read_bitmap(dir, &imp.contacts).expect("import bitmap");
        let set: BTreeSet<u32> = bm.iter().collect();
        imports.insert(imp.id.clone(), set.clone());
        imports.insert(imp.name.clone(), set);
    }

    let mut segments = HashMap::new();
    for rec in &m.segments {
        let stored = segments::base::members::Members::load(dir, rec)
            .expect("segment members")
            .members
            .iter()
            .collect();
        let seg = std::rc::Rc::new(RefSegment {
            id: rec.id.clone(),
            criteria: rec.criteria.clone(),
            as_of: rec.stats.as_ref().map(|s| s.as_of),
            stored,
        });
        segments.insert(rec.id.clone(), seg.clone());
        segments.insert(rec.name.clone(), seg);
    }

    RefBase {
        tz: base.tz(),
        fields,
        event_columns,
        contacts,
        events,
        imports,
        segments,
        evaluated: RefCell::new(HashMap::new()),
    }
}

/// The evaluation instant and the calendar of the base.
#[derive(Clone, Copy)]
struct Cal {
    as_of: i64,
    today: NaiveDate,
    tz: Tz,
}

const HOUR: i64 = 3_600_000_000;

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

    /// The first instant of a day in the base's time zone (µs): midnight
    /// (the earlier one when the clock goes back over it), or where
    /// midnight falls in a gap of the clock, the instant the day starts
    /// after it (the first local minute that exists).
    fn midnight(&self, d: NaiveDate) -> i64 {
        let start = d.and_hms_opt(0, 0, 0).unwrap();
        (0..=180)
            .find_map(|m| {
                self.tz
                    .from_local_datetime(&(start + ChronoDuration::minutes(m)))
                    .earliest()
            })
            .unwrap_or_else(|| panic!("no start of day for {d}"))
            .timestamp_micros()
    }
}

/// SPEC: durations are `Nh`, `Nd` or `Nw`.
#[derive(Debug, Clone, Copy)]
struct Dur {
    hours: i64,
}

impl Dur {
    fn parse(v: &Value) -> Dur {
        let s = v
            .as_str()
            .unwrap_or_else(|| panic!("reference: duration {v}"));
        let s = s.trim();
        let (n, unit) = s.split_at(s.len() - 1);
        let n: i64 = n
            .parse()
            .unwrap_or_else(|_| panic!("reference: duration {s:?}"));
        let hours = match unit {
            "h" => n,
            "d" => 24 * n,
            "w" => 7 * 24 * n,
            _ => panic!("reference: duration {s:?}"),
        };
        Dur { hours }
    }

    fn micros(self) -> i64 {
        self.hours * HOUR
    }

    /// Calendar days (hours are refused on dates).
    fn days(self) -> ChronoDuration {
        ChronoDuration::days(self.hours / 24)
    }
}

fn date_of(v: &Value) -> NaiveDate {
    let s = v.as_str().unwrap_or_else(|| panic!("reference: date {v}"));
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .unwrap_or_else(|_| panic!("reference: date {s:?}"))
}

fn pair(v: &Value) -> (&Value, &Value) {
    match v.as_array().map(Vec::as_slice) {
        Some([a, b]) => (a, b),
        _ => panic!("reference: [low, high] expected, got {v}"),
    }
}

fn number(v: &Value) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("reference: number {v}"))
}

/// A string, or a list of strings.
fn texts(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().expect("a list of strings").to_string())
            .collect(),
        _ => panic!("reference: strings expected, got {v}"),
    }
}

/// The anniversary of (month, day) in a year; 29 Feb is 28 Feb in common years.
fn anniversary_in(year: i32, month: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, day)
        .or_else(|| NaiveDate::from_ymd_opt(year, month, day - 1))
        .expect("valid anniversary")
}

fn anniversary_within(d: NaiveDate, today: NaiveDate, days: ChronoDuration) -> bool {
    let mut next = anniversary_in(today.year(), d.month(), d.day());
    if next < today {
        next = anniversary_in(today.year() + 1, d.month(), d.day());
    }
    next <= today + days
}

fn norm(s: &str, case_sensitive: bool) -> String {
    if case_sensitive {
        s.to_string()
    } else {
        s.to_lowercase()
    }
}

/// The types of the SPEC's recognised contact columns, for criteria (the
/// default segments) on a base that lacks some of them: every value empty.
fn recognised(field: &str) -> Option<FieldType> {
    Some(match field {
        "email" | "phone" | "first_name" | "last_name" | "company" => FieldType::Text,
        "email_optin" | "sms_optin" => FieldType::Bool,
        "created_at" => FieldType::Timestamp,
        "email_status" => FieldType::Choice {
            values: [
                "valid",
                "hard_bounce",
                "bad_syntax",
                "bad_domain",
                "bad_alias",
            ]
            .map(String::from)
            .to_vec(),
        },
        "sms_status" => FieldType::Choice {
            values: ["valid", "hard_bounce", "bad_number"]
                .map(String::from)
                .to_vec(),
        },
        _ => return None,
    })
}

/// Does a value meet `{"op": op, "value": value}` on a field of type `ty`?
/// `aggregate`: the value is an aggregate of events, and an empty one
/// matches only `is_empty`.
fn matches_value(
    ty: &FieldType,
    op: &str,
    value: &Value,
    case_sensitive: bool,
    v: &V,
    cal: &Cal,
    aggregate: bool,
) -> bool {
    let empty = v.is_empty();
    match op {
        "is_empty" => return empty,
        "is_not_empty" => return !empty,
        _ => {}
    }
    if empty {
        // Rules 2 to 5: positive operators never match an empty field; the
        // negative ones do on text, number and date fields; on choice
        // fields no operator but is_empty does; contains_none matches
        // empty tags; an empty aggregate matches only is_empty.
        return !aggregate
            && match ty {
                FieldType::Text => matches!(
                    op,
                    "neq" | "not_in" | "not_starts_with" | "not_ends_with" | "not_contains"
                ),
                FieldType::Number { .. } | FieldType::Date | FieldType::Timestamp => op == "neq",
                FieldType::Choice { .. } | FieldType::Bool => false,
                FieldType::Tags => op == "contains_none",
            };
    }
    match (ty, v) {
        (FieldType::Text, V::Text(s)) => {
            let s = norm(s, case_sensitive);
            let xs: Vec<String> = texts(value)
                .iter()
                .map(|x| norm(x, case_sensitive))
                .collect();
            let x = &xs[0];
            match op {
                "eq" => &s == x,
                "neq" => &s != x,
                "in" => xs.contains(&s),
                "not_in" => !xs.contains(&s),
                "starts_with" => s.starts_with(x.as_str()),
                "not_starts_with" => !s.starts_with(x.as_str()),
                "ends_with" => s.ends_with(x.as_str()),
                "not_ends_with" => !s.ends_with(x.as_str()),
                "contains" => s.contains(x.as_str()),
                "not_contains" => !s.contains(x.as_str()),
                _ => panic!("reference: text operator {op:?}"),
            }
        }
        // Rule 1: choice values compare exactly.
        (FieldType::Choice { .. }, V::Text(s)) => {
            let xs = texts(value);
            match op {
                "eq" => s == &xs[0],
                "neq" => s != &xs[0],
                "in" => xs.contains(s),
                "not_in" => !xs.contains(s),
                _ => panic!("reference: choice operator {op:?}"),
            }
        }
        (FieldType::Number { .. }, V::Num(n)) => {
            let n = *n;
            match op {
                "eq" => n == number(value),
                "neq" => n != number(value),
                "lt" => n < number(value),
                "lte" => n <= number(value),
                "gt" => n > number(value),
                "gte" => n >= number(value),
                "between" => {
                    let (lo, hi) = pair(value);
                    number(lo) <= n && n <= number(hi)
                }
                _ => panic!("reference: number operator {op:?}"),
            }
        }
        (FieldType::Date | FieldType::Timestamp, V::Date(_) | V::Ts(_)) => {
            // Timestamps compare by their calendar day in the base's zone,
            // but for the durations, which count from the instant.
            let (day, instant) = match v {
                V::Date(d) => (*d, None),
                V::Ts(t) => (cal.local_day(*t), Some(*t)),
                _ => unreachable!(),
            };
            match op {
                "eq" => day == date_of(value),
                "neq" => day != date_of(value),
                "before" => day < date_of(value),
                "after" => day > date_of(value),
                "between" => {
                    let (lo, hi) = pair(value);
                    date_of(lo) <= day && day <= date_of(hi)
                }
                "within_last" => {
                    let d = Dur::parse(value);
                    match instant {
                        Some(t) => cal.as_of - d.micros() < t && t <= cal.as_of,
                        None => cal.today - d.days() <= day && day <= cal.today,
                    }
                }
                "more_than_ago" => {
                    let d = Dur::parse(value);
                    match instant {
                        Some(t) => t <= cal.as_of - d.micros(),
                        None => day < cal.today - d.days(),
                    }
                }
                "anniversary_within" => {
                    anniversary_within(day, cal.today, Dur::parse(value).days())
                }
                _ => panic!("reference: date operator {op:?}"),
            }
        }
        (FieldType::Bool, V::Bool(b)) => match op {
            "is_true" => *b,
            // Rule 5: null is empty, not false.
            "is_false" => !*b,
            _ => panic!("reference: bool operator {op:?}"),
        },
        // Rule 7: tags compare like text.
        (FieldType::Tags, V::Tags(tags)) => {
            let have: BTreeSet<String> = tags.iter().map(|t| norm(t, case_sensitive)).collect();
            let xs: Vec<String> = texts(value)
                .iter()
                .map(|x| norm(x, case_sensitive))
                .collect();
            match op {
                "contains_any" => xs.iter().any(|x| have.contains(x)),
                "contains_all" => xs.iter().all(|x| have.contains(x)),
                "contains_none" => !xs.iter().any(|x| have.contains(x)),
                _ => panic!("reference: tags operator {op:?}"),
            }
        }
        _ => panic!("reference: a {} field holds {v:?}", ty.name()),
    }
}

/// A field condition `{"field", "op", "value", "case_sensitive"}` on a value.
fn condition_holds(ty: &FieldType, c: &Value, v: &V, cal: &Cal) -> bool {
    let op = c["op"].as_str().expect("an operator");
    let case_sensitive = c.get("case_sensitive").and_then(Value::as_bool) == Some(true);
    matches_value(ty, op, &c["value"], case_sensitive, v, cal, false)
}

impl RefBase {
    pub fn all(&self) -> BTreeSet<u32> {
        self.contacts.iter().map(|c| c.iid).collect()
    }

    pub fn contact(&self, iid: u32) -> Option<&RefContact> {
        self.contacts.iter().find(|c| c.iid == iid)
    }

    /// Evaluate criteria (JSON) at `as_of`.
    pub fn eval(&self, c: &Value, as_of: DateTime<Utc>) -> BTreeSet<u32> {
        self.eval_in(c, &Cal::new(as_of, self.tz))
    }

    /// The members of a segment: its criteria at the instant of its last
    /// computation (none before it was computed), or its stored members
    /// when it is static.
    pub fn segment(&self, key: &str) -> BTreeSet<u32> {
        let seg = self
            .segments
            .get(key)
            .unwrap_or_else(|| panic!("reference: unknown segment {key:?}"))
            .clone();
        if let Some(done) = self.evaluated.borrow().get(&seg.id) {
            return done.clone();
        }
        let members = match (&seg.criteria, seg.as_of) {
            (None, _) => seg.stored.intersection(&self.all()).copied().collect(),
            (Some(_), None) => BTreeSet::new(),
            (Some(c), Some(at)) => self.eval(c, at),
        };
        self.evaluated
            .borrow_mut()
            .insert(seg.id.clone(), members.clone());
        members
    }

    fn eval_in(&self, c: &Value, cal: &Cal) -> BTreeSet<u32> {
        let o = c
            .as_object()
            .unwrap_or_else(|| panic!("reference: criterion {c}"));
        if let Some(cs) = o.get("all") {
            // `all` of nothing is every contact.
            let mut acc = self.all();
            for x in cs.as_array().expect("all: a list") {
                let r = self.eval_in(x, cal);
                acc = acc.intersection(&r).copied().collect();
            }
            acc
        } else if let Some(cs) = o.get("any") {
            let mut acc = BTreeSet::new();
            for x in cs.as_array().expect("any: a list") {
                acc.extend(self.eval_in(x, cal));
            }
            acc
        } else if let Some(x) = o.get("not") {
            let r = self.eval_in(x, cal);
            self.all().difference(&r).copied().collect()
        } else if let Some(f) = o.get("field") {
            let f = f.as_str().expect("a field name");
            let ty = self
                .fields
                .get(f)
                .cloned()
                .or_else(|| recognised(f))
                .unwrap_or_else(|| panic!("reference: unknown field {f:?}"));
            self.contacts
                .iter()
                .filter(|ct| condition_holds(&ty, c, ct.fields.get(f).unwrap_or(&V::Null), cal))
                .map(|ct| ct.iid)
                .collect()
        } else if let Some(b) = o.get("behavior") {
            self.contacts
                .iter()
                .filter(|ct| self.behavior_holds(b, ct.iid, cal))
                .map(|ct| ct.iid)
                .collect()
        } else if let Some(s) = o.get("segment") {
            self.segment(s.as_str().expect("a segment id"))
        } else if let Some(s) = o.get("import") {
            let s = s.as_str().expect("an import id");
            let all = self.all();
            self.imports
                .get(s)
                .unwrap_or_else(|| panic!("reference: unknown import {s:?}"))
                .intersection(&all)
                .copied()
                .collect()
        } else {
            panic!("reference: sql and query are not supported: {c}")
        }
    }

    /// The events of a contact that pass type, operation, where and window.
    fn matching(&self, b: &Value, iid: u32, cal: &Cal) -> Vec<&RefEvent> {
        let Some(evs) = self.events.get(&iid) else {
            return Vec::new();
        };
        let types = texts(&b["event"]);
        let operations = b.get("operation").map(texts);
        // `"30d"` keeps as_of - 30d < ts; {after, before}: after inclusive,
        // before exclusive; a date is its midnight in the base's zone, a
        // duration as_of minus it.
        let bound = |v: Option<&Value>| -> Option<i64> {
            let s = v?.as_str()?;
            Some(match NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d") {
                Ok(d) => cal.midnight(d),
                Err(_) => cal.as_of - Dur::parse(&Value::from(s)).micros(),
            })
        };
        let (lo, hi) = match b.get("within") {
            None => (None, None),
            Some(w @ Value::String(_)) => (Some(cal.as_of - Dur::parse(w).micros() + 1), None),
            Some(w) => (bound(w.get("after")), bound(w.get("before"))),
        };
        let wheres: Vec<&Value> = b
            .get("where")
            .map(|w| w.as_array().expect("where: a list").iter().collect())
            .unwrap_or_default();
        evs.iter()
            .filter(|e| e.ts <= cal.as_of)
            .filter(|e| lo.is_none_or(|lo| e.ts >= lo))
            .filter(|e| hi.is_none_or(|hi| e.ts < hi))
            .filter(|e| matches!(e.cols.get("type"), Some(V::Text(t)) if types.contains(t)))
            .filter(|e| match &operations {
                None => true,
                Some(ops) => {
                    matches!(e.cols.get("operation_id"), Some(V::Text(o)) if ops.contains(o))
                }
            })
            .filter(|e| {
                wheres.iter().all(|w| {
                    let col = w["field"].as_str().expect("a column");
                    let ty = self
                        .event_columns
                        .get(col)
                        .unwrap_or_else(|| panic!("reference: unknown event column {col:?}"));
                    condition_holds(ty, w, e.cols.get(col).unwrap_or(&V::Null), cal)
                })
            })
            .collect()
    }

    /// The events a behaviour criterion selects for a contact at `as_of`.
    #[allow(dead_code)]
    pub fn matching_events(&self, b: &Value, iid: u32, as_of: DateTime<Utc>) -> Vec<&RefEvent> {
        self.matching(b, iid, &Cal::new(as_of, self.tz))
    }

    /// The aggregate of `having` over a contact's matching events (V::Null
    /// when empty): count and sum of nothing are 0; avg, min, max, first and
    /// last of nothing are empty; empty values of the column are ignored.
    fn aggregate(&self, b: &Value, iid: u32, cal: &Cal) -> V {
        let evs = self.matching(b, iid, cal);
        let having = b.get("having");
        let agg = having
            .and_then(|h| h.get("agg"))
            .and_then(Value::as_str)
            .unwrap_or("count");
        let column = having
            .and_then(|h| h.get("field"))
            .and_then(Value::as_str)
            .unwrap_or("amount");
        let nums: Vec<f64> = evs
            .iter()
            .filter_map(|e| match e.cols.get(column) {
                Some(V::Num(x)) => Some(*x),
                _ => None,
            })
            .collect();
        let or_empty = |x: Option<f64>| x.map_or(V::Null, V::Num);
        match agg {
            "count" => V::Num(evs.len() as f64),
            "sum" => V::Num(nums.iter().sum()),
            "avg" => {
                or_empty((!nums.is_empty()).then(|| nums.iter().sum::<f64>() / nums.len() as f64))
            }
            "min" => or_empty(nums.iter().copied().reduce(f64::min)),
            "max" => or_empty(nums.iter().copied().reduce(f64::max)),
            "first" => evs.iter().map(|e| e.ts).min().map_or(V::Null, V::Ts),
            "last" => evs.iter().map(|e| e.ts).max().map_or(V::Null, V::Ts),
            _ => panic!("reference: aggregate {agg:?}"),
        }
    }

    fn behavior_holds(&self, b: &Value, iid: u32, cal: &Cal) -> bool {
        let v = self.aggregate(b, iid, cal);
        // Without `having`: at least one matching event.
        let Some(h) = b.get("having") else {
            return matches!(v, V::Num(n) if n >= 1.0);
        };
        let agg = h.get("agg").and_then(Value::as_str).unwrap_or("count");
        // first and last are instants and take the date operators.
        let ty = match agg {
            "first" | "last" => FieldType::Timestamp,
            _ => FieldType::Number { integer: false },
        };
        let op = h["op"].as_str().expect("an operator");
        matches_value(&ty, op, &h["value"], false, &v, cal, true)
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
