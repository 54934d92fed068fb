//! The segment definition language (SPEC "Segment definitions"): parsing
//! from JSON with precise paths, typed operands, validation against the
//! base's schema, and the graph of references between segments.
//!
//! This module knows nothing of DataFusion: `compile` turns checked criteria
//! into plans.

pub mod graph;
pub mod operand;
pub mod validate;

use serde_json::Value;

use crate::base::manifest::{check_id, slug};
use crate::error::{Error, Result};
pub use operand::{Duration, DurationUnit, Operand};

/// One node of a criteria tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Criterion {
    All(Vec<Criterion>),
    Any(Vec<Criterion>),
    Not(Box<Criterion>),
    Field(FieldCond),
    Behavior(Box<Behavior>),
    Segment(String),
    Import(String),
    Sql(String),
    Query(String),
}

/// A condition on a contact field or an event column.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldCond {
    pub field: String,
    pub op: Op,
    /// The raw JSON value; typed by [`operand::operand`] against the field's type.
    pub value: Value,
    pub case_sensitive: bool,
}

macro_rules! ops {
    ($($v:ident => $s:literal),* $(,)?) => {
        /// Field operators.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Op { $($v),* }
        impl Op {
            pub const ALL: &'static [Op] = &[$(Op::$v),*];
            pub fn name(self) -> &'static str { match self { $(Op::$v => $s),* } }
            pub fn parse(s: &str) -> Option<Op> { match s { $($s => Some(Op::$v),)* _ => None } }
        }
    };
}

ops! {
    Eq => "eq", Neq => "neq", In => "in", NotIn => "not_in",
    StartsWith => "starts_with", NotStartsWith => "not_starts_with",
    EndsWith => "ends_with", NotEndsWith => "not_ends_with",
    Contains => "contains", NotContains => "not_contains",
    IsEmpty => "is_empty", IsNotEmpty => "is_not_empty",
    Lt => "lt", Lte => "lte", Gt => "gt", Gte => "gte", Between => "between",
    Before => "before", After => "after", WithinLast => "within_last",
    MoreThanAgo => "more_than_ago", AnniversaryWithin => "anniversary_within",
    IsTrue => "is_true", IsFalse => "is_false",
    ContainsAny => "contains_any", ContainsAll => "contains_all", ContainsNone => "contains_none",
}

impl Op {
    /// The negative operators of rule 3 (they match empty text, number and date fields).
    pub fn is_negative(self) -> bool {
        matches!(
            self,
            Op::Neq | Op::NotIn | Op::NotStartsWith | Op::NotEndsWith | Op::NotContains
        )
    }
}

/// A condition on behaviour history.
#[derive(Debug, Clone, PartialEq)]
pub struct Behavior {
    pub events: Vec<String>,
    pub operations: Option<Vec<String>>,
    pub wheres: Vec<FieldCond>,
    pub within: Option<Window>,
    pub having: Having,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Window {
    /// `as_of - d < ts`
    Last(Duration),
    /// after inclusive, before exclusive
    Range {
        after: Option<Bound>,
        before: Option<Bound>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Bound {
    /// Midnight of that day in the base's time zone.
    Date(chrono::NaiveDate),
    /// `as_of` minus the duration.
    Ago(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Agg {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    First,
    Last,
}

impl Agg {
    pub fn name(self) -> &'static str {
        match self {
            Agg::Count => "count",
            Agg::Sum => "sum",
            Agg::Avg => "avg",
            Agg::Min => "min",
            Agg::Max => "max",
            Agg::First => "first",
            Agg::Last => "last",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Having {
    pub agg: Agg,
    /// The numeric column of sum/avg/min/max (default `amount`).
    pub column: Option<String>,
    pub op: Op,
    pub value: Value,
}

impl Having {
    pub fn default_count() -> Having {
        Having {
            agg: Agg::Count,
            column: None,
            op: Op::Gte,
            value: Value::from(1),
        }
    }

    /// The type of the aggregate, for operator checks.
    pub fn value_type(&self) -> crate::base::schema::FieldType {
        match self.agg {
            Agg::First | Agg::Last => crate::base::schema::FieldType::Timestamp,
            _ => crate::base::schema::FieldType::Number { integer: false },
        }
    }
}

/// A segment definition as the user writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub criteria: Criterion,
    /// The criteria JSON as given (stored in the manifest).
    pub criteria_json: Value,
}

/// Limits that keep hostile definitions from exhausting the stack or memory.
pub const MAX_DEPTH: usize = 64;
pub const MAX_NODES: usize = 10_000;

impl Definition {
    pub fn parse_str(text: &str, origin: &str) -> Result<Definition> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::definition(origin, format!("invalid JSON: {e}")))?;
        Definition::parse(&v)
    }

    pub fn parse(v: &Value) -> Result<Definition> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::definition("$", "a segment definition is a JSON object"))?;
        for k in obj.keys() {
            if !matches!(k.as_str(), "id" | "name" | "description" | "criteria") {
                return Err(Error::definition(
                    k.as_str(),
                    "unknown key (expected id, name, description, criteria)",
                ));
            }
        }
        let name = match obj.get("name") {
            Some(Value::String(s))
                if !s.trim().is_empty() && s.len() <= 256 && !s.chars().any(char::is_control) =>
            {
                s.trim().to_string()
            }
            Some(_) => {
                return Err(Error::definition(
                    "name",
                    "a non-empty string of at most 256 characters without control characters",
                ));
            }
            None => {
                return Err(Error::definition(
                    "name",
                    "missing: every segment has a name",
                ));
            }
        };
        let id = match obj.get("id") {
            Some(Value::String(s)) => {
                check_id(s).map_err(|m| Error::definition("id", m))?;
                s.clone()
            }
            Some(_) => return Err(Error::definition("id", "expected a string")),
            None => slug(&name),
        };
        let description = match obj.get("description") {
            Some(Value::String(s)) => Some(s.clone()),
            None | Some(Value::Null) => None,
            Some(_) => return Err(Error::definition("description", "expected a string")),
        };
        let criteria_json = obj
            .get("criteria")
            .cloned()
            .ok_or_else(|| Error::definition("criteria", "missing"))?;
        let criteria = Criterion::parse(&criteria_json, "criteria")?;
        Ok(Definition {
            id,
            name,
            description,
            criteria,
            criteria_json,
        })
    }
}

impl Criterion {
    pub fn parse(v: &Value, path: &str) -> Result<Criterion> {
        let mut nodes = 0;
        parse_node(v, path, 0, &mut nodes)
    }

    /// Segment ids or names this criterion refers to.
    pub fn segment_refs(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.visit(&mut |c| {
            if let Criterion::Segment(s) = c {
                out.push(s.clone());
            }
        });
        out
    }

    /// Visit every node with its JSON path (`criteria.all[2].any[0]`),
    /// parents before children; the first error stops the walk.
    pub fn walk(
        &self,
        path: &str,
        f: &mut dyn FnMut(&Criterion, &str) -> Result<()>,
    ) -> Result<()> {
        f(self, path)?;
        match self {
            Criterion::All(cs) | Criterion::Any(cs) => {
                let kind = if matches!(self, Criterion::All(_)) {
                    "all"
                } else {
                    "any"
                };
                for (i, c) in cs.iter().enumerate() {
                    c.walk(&format!("{path}.{kind}[{i}]"), f)?;
                }
                Ok(())
            }
            Criterion::Not(c) => c.walk(&format!("{path}.not"), f),
            _ => Ok(()),
        }
    }

    pub fn visit(&self, f: &mut dyn FnMut(&Criterion)) {
        f(self);
        match self {
            Criterion::All(cs) | Criterion::Any(cs) => cs.iter().for_each(|c| c.visit(f)),
            Criterion::Not(c) => c.visit(f),
            _ => {}
        }
    }
}

fn parse_node(v: &Value, path: &str, depth: usize, nodes: &mut usize) -> Result<Criterion> {
    *nodes += 1;
    if depth > MAX_DEPTH {
        return Err(Error::definition(
            path,
            format!("criteria nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    if *nodes > MAX_NODES {
        return Err(Error::definition(
            path,
            format!("more than {MAX_NODES} criteria in one definition"),
        ));
    }
    let obj = v.as_object().ok_or_else(|| {
        Error::definition(
            path,
            "a criterion is a JSON object such as {\"all\": [...]} or {\"field\": ...}",
        )
    })?;
    let kind = [
        "all", "any", "not", "field", "behavior", "segment", "import", "sql", "query",
    ]
    .into_iter()
    .find(|k| obj.contains_key(*k))
    .ok_or_else(|| {
        Error::definition(
            path,
            "expected one of all, any, not, field, behavior, segment, import, sql, query",
        )
    })?;
    let allowed: &[&str] = match kind {
        "field" => &["field", "op", "value", "case_sensitive"],
        k => match k {
            "all" => &["all"],
            "any" => &["any"],
            "not" => &["not"],
            "behavior" => &["behavior"],
            "segment" => &["segment"],
            "import" => &["import"],
            "sql" => &["sql"],
            _ => &["query"],
        },
    };
    if let Some(extra) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(Error::definition(
            path,
            format!("unexpected key {extra:?} beside {kind:?} (a criterion is exactly one kind)"),
        ));
    }
    let inner = &obj[kind];
    let child = format!("{path}.{kind}");
    Ok(match kind {
        "all" | "any" => {
            let arr = inner
                .as_array()
                .ok_or_else(|| Error::definition(&child, "expected an array of criteria"))?;
            let cs = arr
                .iter()
                .enumerate()
                .map(|(i, c)| parse_node(c, &format!("{child}[{i}]"), depth + 1, nodes))
                .collect::<Result<Vec<_>>>()?;
            if kind == "all" {
                Criterion::All(cs)
            } else {
                Criterion::Any(cs)
            }
        }
        "not" => Criterion::Not(Box::new(parse_node(inner, &child, depth + 1, nodes)?)),
        "field" => Criterion::Field(parse_field(obj, path)?),
        "behavior" => Criterion::Behavior(Box::new(parse_behavior(inner, &child)?)),
        _ => {
            let s = inner
                .as_str()
                .filter(|s| !s.trim().is_empty())
                .ok_or_else(|| Error::definition(&child, "expected a non-empty string"))?;
            match kind {
                "segment" => Criterion::Segment(s.to_string()),
                "import" => Criterion::Import(s.to_string()),
                "sql" => Criterion::Sql(s.to_string()),
                _ => Criterion::Query(s.to_string()),
            }
        }
    })
}

fn parse_field(obj: &serde_json::Map<String, Value>, path: &str) -> Result<FieldCond> {
    let field = obj["field"]
        .as_str()
        .ok_or_else(|| Error::definition(format!("{path}.field"), "expected a field name"))?
        .to_string();
    let op_s = obj
        .get("op")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::definition(format!("{path}.op"), "expected an operator name"))?;
    let op = Op::parse(op_s).ok_or_else(|| {
        let names: Vec<&str> = Op::ALL.iter().map(|o| o.name()).collect();
        Error::definition(
            format!("{path}.op"),
            format!("unknown operator {op_s:?} (one of {})", names.join(", ")),
        )
    })?;
    let case_sensitive = match obj.get("case_sensitive") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(Error::definition(
                format!("{path}.case_sensitive"),
                "expected true or false",
            ));
        }
    };
    Ok(FieldCond {
        field,
        op,
        value: obj.get("value").cloned().unwrap_or(Value::Null),
        case_sensitive,
    })
}

fn string_or_list(v: &Value, path: &str) -> Result<Vec<String>> {
    match v {
        Value::String(s) if !s.is_empty() => Ok(vec![s.clone()]),
        Value::Array(a) if !a.is_empty() => a
            .iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .ok_or_else(|| {
                        Error::definition(format!("{path}[{i}]"), "expected a non-empty string")
                    })
            })
            .collect(),
        _ => Err(Error::definition(
            path,
            "expected a string or a non-empty list of strings",
        )),
    }
}

fn parse_behavior(v: &Value, path: &str) -> Result<Behavior> {
    let obj = v
        .as_object()
        .ok_or_else(|| Error::definition(path, "expected an object with \"event\""))?;
    if let Some(k) = obj.keys().find(|k| {
        !matches!(
            k.as_str(),
            "event" | "operation" | "where" | "within" | "having"
        )
    }) {
        return Err(Error::definition(
            format!("{path}.{k}"),
            "unknown key (expected event, operation, where, within, having)",
        ));
    }
    let events = string_or_list(
        obj.get("event")
            .ok_or_else(|| Error::definition(format!("{path}.event"), "missing"))?,
        &format!("{path}.event"),
    )?;
    let operations = obj
        .get("operation")
        .map(|o| string_or_list(o, &format!("{path}.operation")))
        .transpose()?;
    let wheres = match obj.get("where") {
        None => Vec::new(),
        Some(Value::Array(a)) => {
            a.iter()
                .enumerate()
                .map(|(i, w)| {
                    let p = format!("{path}.where[{i}]");
                    let o = w
                        .as_object()
                        .filter(|o| o.contains_key("field"))
                        .ok_or_else(|| {
                            Error::definition(
                                &p,
                                "expected {\"field\": ..., \"op\": ..., \"value\": ...}",
                            )
                        })?;
                    if let Some(k) = o.keys().find(|k| {
                        !matches!(k.as_str(), "field" | "op" | "value" | "case_sensitive")
                    }) {
                        return Err(Error::definition(&p, format!("unexpected key {k:?}")));
                    }
                    parse_field(o, &p)
                })
                .collect::<Result<Vec<_>>>()?
        }
        Some(_) => {
            return Err(Error::definition(
                format!("{path}.where"),
                "expected a list of field conditions",
            ));
        }
    };
    let within = obj
        .get("within")
        .map(|w| parse_window(w, &format!("{path}.within")))
        .transpose()?;
    let having = match obj.get("having") {
        None => Having::default_count(),
        Some(h) => parse_having(h, &format!("{path}.having"))?,
    };
    Ok(Behavior {
        events,
        operations,
        wheres,
        within,
        having,
    })
}

fn parse_window(v: &Value, path: &str) -> Result<Window> {
    match v {
        Value::String(s) => Ok(Window::Last(
            Duration::parse(s).map_err(|m| Error::definition(path, m))?,
        )),
        Value::Object(o) => {
            if let Some(k) = o.keys().find(|k| !matches!(k.as_str(), "after" | "before")) {
                return Err(Error::definition(
                    format!("{path}.{k}"),
                    "unknown key (expected after, before)",
                ));
            }
            let bound = |k: &str| -> Result<Option<Bound>> {
                match o.get(k) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) => {
                        if let Some(d) = crate::base::input::parse_date(s) {
                            Ok(Some(Bound::Date(d)))
                        } else {
                            Duration::parse(s)
                                .map(|d| Some(Bound::Ago(d)))
                                .map_err(|_| Error::definition(format!("{path}.{k}"), format!("{s:?} is neither a date (YYYY-MM-DD) nor a duration (30d)")))
                        }
                    }
                    Some(_) => Err(Error::definition(
                        format!("{path}.{k}"),
                        "expected a date or a duration string",
                    )),
                }
            };
            let (after, before) = (bound("after")?, bound("before")?);
            if after.is_none() && before.is_none() {
                return Err(Error::definition(path, "give after, before or both"));
            }
            Ok(Window::Range { after, before })
        }
        _ => Err(Error::definition(
            path,
            "expected a duration such as \"30d\" or {\"after\": D, \"before\": D}",
        )),
    }
}

fn parse_having(v: &Value, path: &str) -> Result<Having> {
    let o = v.as_object().ok_or_else(|| {
        Error::definition(path, "expected {\"agg\": ..., \"op\": ..., \"value\": ...}")
    })?;
    if let Some(k) = o
        .keys()
        .find(|k| !matches!(k.as_str(), "agg" | "field" | "op" | "value"))
    {
        return Err(Error::definition(
            format!("{path}.{k}"),
            "unknown key (expected agg, field, op, value)",
        ));
    }
    let agg_s = o.get("agg").and_then(Value::as_str).unwrap_or("count");
    let agg = match agg_s {
        "count" => Agg::Count,
        "sum" => Agg::Sum,
        "avg" => Agg::Avg,
        "min" => Agg::Min,
        "max" => Agg::Max,
        "first" => Agg::First,
        "last" => Agg::Last,
        other => {
            return Err(Error::definition(
                format!("{path}.agg"),
                format!("unknown aggregate {other:?} (count, sum, avg, min, max, first, last)"),
            ));
        }
    };
    let column = match o.get("field") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(Error::definition(
                format!("{path}.field"),
                "expected a column name",
            ));
        }
    };
    if column.is_some() && matches!(agg, Agg::Count | Agg::First | Agg::Last) {
        return Err(Error::definition(
            format!("{path}.field"),
            format!("{agg_s} takes no field"),
        ));
    }
    let op_s = o
        .get("op")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::definition(format!("{path}.op"), "expected an operator name"))?;
    let op = Op::parse(op_s).ok_or_else(|| {
        Error::definition(format!("{path}.op"), format!("unknown operator {op_s:?}"))
    })?;
    Ok(Having {
        agg,
        column,
        op,
        value: o.get("value").cloned().unwrap_or(Value::Null),
    })
}
