//! Typed operands: the `value` of a condition read according to the field's
//! type and the operator (SPEC "Field operators and empty values").

use chrono::NaiveDate;
use serde_json::Value;

use crate::base::input::parse_date;
use crate::base::schema::FieldType;
use crate::criteria::Op;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DurationUnit {
    Hours,
    Days,
    Weeks,
}

/// `Nh`, `Nd` or `Nw`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Duration {
    pub n: i64,
    pub unit: DurationUnit,
}

impl Duration {
    pub fn parse(s: &str) -> Result<Duration, String> {
        let err = || format!("{s:?} is not a duration (e.g. \"12h\", \"30d\", \"2w\")");
        let s = s.trim();
        // The unit is the last character, whatever its width.
        let at = s.char_indices().last().map(|(i, _)| i).unwrap_or(0);
        let (num, unit) = s.split_at(at);
        let unit = match unit {
            "h" => DurationUnit::Hours,
            "d" => DurationUnit::Days,
            "w" => DurationUnit::Weeks,
            _ => return Err(err()),
        };
        let n: i64 = num.parse().map_err(|_| err())?;
        if !(0..=100_000).contains(&n) {
            return Err(format!("{s:?}: durations go from 0 to 100000 units"));
        }
        Ok(Duration { n, unit })
    }

    pub fn micros(self) -> i64 {
        let hour = 3_600_000_000i64;
        match self.unit {
            DurationUnit::Hours => self.n * hour,
            DurationUnit::Days => self.n * 24 * hour,
            DurationUnit::Weeks => self.n * 7 * 24 * hour,
        }
    }

    /// Whole days, for date fields (hours are refused there at validation).
    pub fn days(self) -> i64 {
        match self.unit {
            DurationUnit::Hours => self.n / 24,
            DurationUnit::Days => self.n,
            DurationUnit::Weeks => self.n * 7,
        }
    }

    pub fn chrono(self) -> chrono::Duration {
        chrono::Duration::microseconds(self.micros())
    }
}

/// The value of a condition once typed.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    None,
    Text(String),
    Texts(Vec<String>),
    Number(f64),
    NumberRange(f64, f64),
    Date(NaiveDate),
    DateRange(NaiveDate, NaiveDate),
    Duration(Duration),
}

/// Is `op` valid on a field of type `ty`?
pub fn op_allowed(ty: &FieldType, op: Op) -> bool {
    use Op::*;
    let common = matches!(op, IsEmpty | IsNotEmpty);
    common
        || match ty {
            FieldType::Text => matches!(
                op,
                Eq | Neq
                    | In
                    | NotIn
                    | StartsWith
                    | NotStartsWith
                    | EndsWith
                    | NotEndsWith
                    | Contains
                    | NotContains
            ),
            FieldType::Number { .. } => matches!(op, Eq | Neq | Lt | Lte | Gt | Gte | Between),
            FieldType::Date | FieldType::Timestamp => matches!(
                op,
                Eq | Neq | Before | After | Between | WithinLast | MoreThanAgo | AnniversaryWithin
            ),
            FieldType::Bool => matches!(op, IsTrue | IsFalse),
            FieldType::Choice { .. } => matches!(op, Eq | Neq | In | NotIn),
            FieldType::Tags => matches!(op, ContainsAny | ContainsAll | ContainsNone),
        }
}

/// Type the JSON value of a condition; the error says what was expected.
pub fn operand(ty: &FieldType, op: Op, v: &Value) -> Result<Operand, String> {
    use Op::*;
    if !op_allowed(ty, op) {
        return Err(format!(
            "operator {:?} does not apply to a {} field",
            op.name(),
            ty.name()
        ));
    }
    let no_value = |v: &Value| -> Result<Operand, String> {
        if v.is_null() {
            Ok(Operand::None)
        } else {
            Err(format!("operator {:?} takes no value", op.name()))
        }
    };
    let text = |v: &Value| -> Result<String, String> {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("operator {:?} expects a string value", op.name()))
    };
    let texts = |v: &Value| -> Result<Vec<String>, String> {
        match v {
            Value::String(s) => Ok(vec![s.clone()]),
            Value::Array(a) if !a.is_empty() => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| "expected a list of strings".to_string())
                })
                .collect(),
            _ => Err(format!(
                "operator {:?} expects a non-empty list of strings",
                op.name()
            )),
        }
    };
    let number = |v: &Value| -> Result<f64, String> {
        v.as_f64()
            .ok_or_else(|| format!("operator {:?} expects a number", op.name()))
    };
    let date = |v: &Value| -> Result<NaiveDate, String> {
        v.as_str()
            .and_then(parse_date)
            .ok_or_else(|| format!("operator {:?} expects a date \"YYYY-MM-DD\"", op.name()))
    };
    let pair = |v: &Value| -> Result<(Value, Value), String> {
        match v.as_array().map(|a| a.as_slice()) {
            Some([a, b]) => Ok((a.clone(), b.clone())),
            _ => Err("between expects [low, high]".to_string()),
        }
    };
    let choice_check = |vals: &[String]| -> Result<(), String> {
        if let FieldType::Choice { values } = ty
            && let Some(bad) = vals.iter().find(|x| !values.contains(x))
        {
            return Err(format!(
                "{bad:?} is not one of the allowed values ({})",
                values.join(", ")
            ));
        }
        Ok(())
    };
    Ok(match (ty, op) {
        (_, IsEmpty | IsNotEmpty | IsTrue | IsFalse) => no_value(v)?,
        (FieldType::Text, In | NotIn) | (FieldType::Tags, _) => Operand::Texts(texts(v)?),
        (FieldType::Text, _) => Operand::Text(text(v)?),
        (FieldType::Choice { .. }, In | NotIn) => {
            let t = texts(v)?;
            choice_check(&t)?;
            Operand::Texts(t)
        }
        (FieldType::Choice { .. }, _) => {
            let t = text(v)?;
            choice_check(std::slice::from_ref(&t))?;
            Operand::Text(t)
        }
        (FieldType::Number { .. }, Between) => {
            let (a, b) = pair(v)?;
            let (lo, hi) = (number(&a)?, number(&b)?);
            if lo > hi {
                return Err(format!("between: low {lo} is above high {hi}"));
            }
            Operand::NumberRange(lo, hi)
        }
        (FieldType::Number { .. }, _) => Operand::Number(number(v)?),
        (FieldType::Date | FieldType::Timestamp, Between) => {
            let (a, b) = pair(v)?;
            let (lo, hi) = (date(&a)?, date(&b)?);
            if lo > hi {
                return Err(format!("between: {lo} is after {hi}"));
            }
            Operand::DateRange(lo, hi)
        }
        (FieldType::Date | FieldType::Timestamp, WithinLast | MoreThanAgo | AnniversaryWithin) => {
            let s = v.as_str().ok_or_else(|| {
                format!(
                    "operator {:?} expects a duration such as \"30d\"",
                    op.name()
                )
            })?;
            let d = Duration::parse(s)?;
            if (matches!(ty, FieldType::Date) || op == AnniversaryWithin)
                && d.unit == DurationUnit::Hours
            {
                return Err(format!("{s:?}: use days or weeks on calendar dates"));
            }
            Operand::Duration(d)
        }
        (FieldType::Date | FieldType::Timestamp, _) => Operand::Date(date(v)?),
        (FieldType::Bool, _) => unreachable!("bool operators take no value"),
    })
}
