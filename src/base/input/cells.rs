//! Text cells to typed Arrow arrays: inference of a column's type, the
//! parsers of booleans, dates and timestamps, and errors that name the
//! line and the column.

use super::*;

/// The type of a column inferred from its values, narrowed chunk by chunk:
/// the first of boolean, integer, number, date and timestamp that every
/// value reads as, else text (also for a column without values).
#[derive(Debug, Clone)]
pub struct Inference {
    /// Bit `k` set: every value so far reads as candidate `k`.
    may: u8,
    seen: bool,
}

impl Default for Inference {
    fn default() -> Self {
        Inference {
            may: (1 << Self::CANDIDATES.len()) - 1,
            seen: false,
        }
    }
}

impl Inference {
    const CANDIDATES: [fn(&str) -> bool; 5] = [
        |v| v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false"),
        |v| v.parse::<i64>().is_ok(),
        |v| v.parse::<f64>().is_ok_and(f64::is_finite),
        |v| parse_date(v).is_some(),
        |v| parse_timestamp(v).is_some(),
    ];

    pub(super) fn cells<'a>(&mut self, values: impl Iterator<Item = &'a str>) {
        for v in values {
            self.seen = true;
            for (k, reads) in Self::CANDIDATES.iter().enumerate() {
                if self.may & (1 << k) != 0 && !reads(v) {
                    self.may &= !(1 << k);
                }
            }
            if self.may == 0 {
                return;
            }
        }
    }

    pub fn result(&self) -> FieldType {
        let first = (0..Self::CANDIDATES.len()).find(|k| self.may & (1 << k) != 0);
        match first.filter(|_| self.seen) {
            Some(0) => FieldType::Bool,
            Some(1) => FieldType::Number { integer: true },
            Some(2) => FieldType::Number { integer: false },
            Some(3) => FieldType::Date,
            Some(4) => FieldType::Timestamp,
            _ => FieldType::Text,
        }
    }
}

pub fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "1" => Some(true),
        "false" | "f" | "no" | "n" | "0" => Some(false),
        _ => None,
    }
}

pub fn parse_date(v: &str) -> Option<NaiveDate> {
    // `YYYY-MM-DD` read directly: the format string would be parsed again
    // for every value.
    let b = v.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b[r].iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    if b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && let (Some(y), Some(m), Some(d)) = (digits(0..4), digits(5..7), digits(8..10))
    {
        return NaiveDate::from_ymd_opt(y as i32, m, d);
    }
    NaiveDate::parse_from_str(v, "%Y-%m-%d").ok()
}

/// RFC 3339, or a naive `YYYY-MM-DD[ T]HH:MM[:SS[.f]]` read as UTC.
pub fn parse_timestamp(v: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Some(t.with_timezone(&Utc));
    }
    // With an offset of hours, or hours and minutes (`+00`, `+0530`), as
    // PostgreSQL and DuckDB print them.
    for fmt in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(v, fmt) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(v, fmt) {
            return Some(t.and_utc());
        }
    }
    None
}

/// Days since 1970-01-01 of a date, as Arrow's Date32 stores it.
pub fn date_to_days(d: NaiveDate) -> i32 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32
}

/// The calendar date of a number of days since 1970-01-01 (Arrow's `Date32`).
pub fn days_to_date(days: i32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(1970, 1, 1)?.checked_add_signed(chrono::Duration::days(days as i64))
}

pub(super) type CellError = (usize, String);

/// Text cells (a `Utf8` array, nulls for empty cells) converted to `ty`,
/// or the first cell that does not read as it: its row and a message.
pub fn typed_text(
    cells: &ArrayRef,
    ty: &FieldType,
    tags_sep: &str,
) -> std::result::Result<ArrayRef, CellError> {
    build_from_cells(cells.as_string::<i32>(), ty, tags_sep)
}

pub(super) fn build_from_cells(
    cells: &StringArray,
    ty: &FieldType,
    tags_sep: &str,
) -> std::result::Result<ArrayRef, CellError> {
    fn each<T>(
        cells: &StringArray,
        mut parse: impl FnMut(&str) -> Option<T>,
        what: &str,
        mut push: impl FnMut(Option<T>),
    ) -> std::result::Result<(), CellError> {
        for (row, cell) in cells.iter().enumerate() {
            match cell {
                None => push(None),
                Some(s) => match parse(s) {
                    Some(v) => push(Some(v)),
                    None => return Err((row, format!("{s:?} is not {what}"))),
                },
            }
        }
        Ok(())
    }
    Ok(match ty {
        // Text is the cells themselves.
        FieldType::Text => Arc::new(cells.clone()),
        FieldType::Choice { values } => {
            let a: ArrayRef = Arc::new(cells.clone());
            check_choices(&a, values)?;
            a
        }
        FieldType::Number { integer: true } => {
            let mut b = Int64Builder::new();
            each(
                cells,
                |s| s.parse::<i64>().ok(),
                "a whole number",
                |v| b.append_option(v),
            )?;
            Arc::new(b.finish())
        }
        FieldType::Number { integer: false } => {
            let mut b = Float64Builder::new();
            each(
                cells,
                |s| s.parse::<f64>().ok().filter(|f| f.is_finite()),
                "a number",
                |v| b.append_option(v),
            )?;
            Arc::new(b.finish())
        }
        FieldType::Bool => {
            let mut b = BooleanBuilder::new();
            each(cells, parse_bool, "a boolean (true/false)", |v| {
                b.append_option(v)
            })?;
            Arc::new(b.finish())
        }
        FieldType::Date => {
            let mut b = Date32Builder::new();
            each(
                cells,
                |s| parse_date(s).map(date_to_days),
                "a date (YYYY-MM-DD)",
                |v| b.append_option(v),
            )?;
            Arc::new(b.finish())
        }
        FieldType::Timestamp => {
            let mut b = TimestampMicrosecondBuilder::new().with_timezone("UTC");
            each(
                cells,
                |s| parse_timestamp(s).map(|t| t.timestamp_micros()),
                "a timestamp (RFC 3339, or YYYY-MM-DD HH:MM:SS with an optional offset)",
                |v| b.append_option(v),
            )?;
            Arc::new(b.finish())
        }
        FieldType::Tags => {
            let mut b = ListBuilder::new(StringBuilder::new());
            for cell in cells.iter() {
                match cell {
                    None => b.append_null(),
                    Some(s) => {
                        for t in s.split(tags_sep).map(str::trim).filter(|t| !t.is_empty()) {
                            b.values().append_value(t);
                        }
                        b.append(true);
                    }
                }
            }
            Arc::new(b.finish())
        }
    })
}

pub(super) fn check_choices(a: &ArrayRef, values: &[String]) -> std::result::Result<(), CellError> {
    let s = a
        .as_any()
        .downcast_ref::<datafusion::arrow::array::StringArray>()
        .expect("choice is Utf8");
    for (row, v) in s.iter().enumerate() {
        if let Some(v) = v
            && !values.iter().any(|x| x == v)
        {
            return Err((
                row,
                format!(
                    "{v:?} is not one of the allowed values ({})",
                    values.join(", ")
                ),
            ));
        }
    }
    Ok(())
}
