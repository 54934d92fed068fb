//! Scalar functions the criteria need and DataFusion lacks: the local
//! month-day of a date or timestamp (for anniversaries), the lower-case
//! form of a text or of a tags list (for case-insensitive matching), which
//! lower-cases ASCII values in place and allocates only for the others, and
//! whether a number lies in one of many intervals (one look-up per value).

use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate};
use chrono_tz::Tz;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Int32Array, ListArray, StringArray,
    StringBuilder, TimestampMicrosecondArray,
};
use datafusion::arrow::buffer::{BooleanBuffer, Buffer};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{Result as DFResult, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::base::schema::tags_type;

/// `month_day(d)`: `month * 100 + day` of a date, or of a timestamp's
/// calendar day in the base's time zone.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct MonthDay {
    tz: String,
    signature: Signature,
}

impl MonthDay {
    pub fn udf(tz: Tz) -> ScalarUDF {
        ScalarUDF::from(MonthDay {
            tz: tz.name().to_string(),
            signature: Signature::any(1, Volatility::Immutable),
        })
    }
}

pub fn month_day_of(d: NaiveDate) -> i32 {
    d.month() as i32 * 100 + d.day() as i32
}

impl ScalarUDFImpl for MonthDay {
    fn name(&self) -> &str {
        "month_day"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> DFResult<DataType> {
        match args.first() {
            Some(DataType::Date32) | Some(DataType::Timestamp(TimeUnit::Microsecond, _)) => {
                Ok(DataType::Int32)
            }
            other => exec_err!("month_day expects a date or a µs timestamp, got {other:?}"),
        }
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let tz: Tz = self.tz.parse().unwrap_or(chrono_tz::UTC);
        let arr = args.args[0].to_array(args.number_rows)?;
        let out: Int32Array = match arr.data_type() {
            DataType::Date32 => {
                let a: &Date32Array = arr.as_primitive();
                a.iter()
                    .map(|d| d.and_then(|d| crate::base::input::days_to_date(d).map(month_day_of)))
                    .collect()
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                let a: &TimestampMicrosecondArray = arr.as_primitive();
                a.iter()
                    .map(|t| {
                        t.and_then(DateTime::from_timestamp_micros)
                            .map(|t| month_day_of(t.with_timezone(&tz).date_naive()))
                    })
                    .collect()
            }
            other => return exec_err!("month_day expects a date or a timestamp, got {other}"),
        };
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `lower_tags(tags)`: the list with every value in Unicode lower case.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LowerTags {
    signature: Signature,
}

impl LowerTags {
    pub fn udf() -> ScalarUDF {
        ScalarUDF::from(LowerTags {
            signature: Signature::any(1, Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for LowerTags {
    fn name(&self) -> &str {
        "lower_tags"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> DFResult<DataType> {
        Ok(tags_type())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let arr = args.args[0].to_array(args.number_rows)?;
        let Some(list) = arr.as_any().downcast_ref::<ListArray>() else {
            return exec_err!(
                "lower_tags expects a list of strings, got {}",
                arr.data_type()
            );
        };
        let values = list.values();
        let Some(strings) = values.as_any().downcast_ref::<StringArray>() else {
            return exec_err!("lower_tags expects a list of strings");
        };
        let lowered = lowercase(strings);
        let field = Arc::new(datafusion::arrow::datatypes::Field::new(
            "item",
            DataType::Utf8,
            true,
        ));
        let out = ListArray::try_new(
            field,
            list.offsets().clone(),
            Arc::new(lowered) as ArrayRef,
            list.nulls().cloned(),
        )?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `lower_text(text)`: Unicode lower case, as `str::to_lowercase`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LowerText {
    signature: Signature,
}

impl LowerText {
    pub fn udf() -> ScalarUDF {
        ScalarUDF::from(LowerText {
            signature: Signature::any(1, Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for LowerText {
    fn name(&self) -> &str {
        "lower_text"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let arr = args.args[0].to_array(args.number_rows)?;
        let arr = match arr.data_type() {
            DataType::Utf8 => arr,
            _ => datafusion::arrow::compute::cast(&arr, &DataType::Utf8)?,
        };
        Ok(ColumnarValue::Array(Arc::new(lowercase(
            arr.as_string::<i32>(),
        ))))
    }
}

/// Every value in Unicode lower case (`str::to_lowercase`), ASCII values
/// without an allocation of their own.
fn lowercase(strings: &StringArray) -> StringArray {
    if strings.is_ascii() {
        // Only bytes A-Z change, and none of them is part of a multi-byte
        // character, so the offsets and the null mask stay as they are.
        let bytes = strings.value_data().to_ascii_lowercase();
        return StringArray::new(
            strings.offsets().clone(),
            Buffer::from_vec(bytes),
            strings.nulls().cloned(),
        );
    }
    let mut out = StringBuilder::with_capacity(strings.len(), strings.value_data().len());
    let mut ascii = String::new();
    for v in strings.iter() {
        match v {
            None => out.append_null(),
            Some(s) if s.is_ascii() => {
                ascii.clear();
                ascii.push_str(s);
                ascii.make_ascii_lowercase();
                out.append_value(&ascii);
            }
            Some(s) => out.append_value(s.to_lowercase()),
        }
    }
    out.finish()
}

/// Closed intervals of numbers (instants in µs, days...), with a table of
/// the buckets they touch: a number outside every marked bucket is in none
/// of them, known from one look-up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Bands {
    /// `(a, b − a)` of each interval `[a, b]`, as unsigned numbers.
    bands: Vec<(u64, u64)>,
    /// The start of the first bucket.
    origin: i64,
    /// Buckets of `2^shift` µs.
    shift: u32,
    buckets: u64,
    /// One bit per bucket.
    marks: Vec<u64>,
}

impl Bands {
    /// Buckets the table has at most (a kilobyte of bits).
    const BUCKETS: u64 = 1 << 13;

    pub fn new(bands: impl IntoIterator<Item = (i64, i64)>) -> Bands {
        let bands: Vec<(u64, u64)> = bands
            .into_iter()
            .filter(|(a, b)| a <= b)
            .map(|(a, b)| (a as u64, (b as u64).wrapping_sub(a as u64)))
            .collect();
        let mut out = Bands {
            bands,
            origin: 0,
            shift: 0,
            buckets: 0,
            marks: Vec::new(),
        };
        let origin = out.intervals().map(|(a, _)| a).min().unwrap_or(0);
        let end = out.intervals().map(|(_, b)| b).max().unwrap_or(0);
        let span = (i128::from(end) - i128::from(origin)) as u128;
        let mut shift = 0;
        while span >> shift >= u128::from(Self::BUCKETS) {
            shift += 1;
        }
        let buckets = match out.bands.is_empty() {
            true => 0,
            false => (span >> shift) as u64 + 1,
        };
        // One more bucket, never marked: where every value past the last
        // one falls.
        let mut marks = vec![0u64; (buckets + 1).div_ceil(64) as usize];
        for (a, b) in out.intervals() {
            let first = (a as u64).wrapping_sub(origin as u64) >> shift;
            let last = (b as u64).wrapping_sub(origin as u64) >> shift;
            for i in first..=last {
                marks[(i / 64) as usize] |= 1 << (i % 64);
            }
        }
        out.origin = origin;
        out.shift = shift;
        out.buckets = buckets;
        out.marks = marks;
        out
    }

    /// The intervals `[a, b]`.
    pub fn intervals(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.bands
            .iter()
            .map(|&(a, w)| (a as i64, a.wrapping_add(w) as i64))
    }

    /// Whether `t` may be in an interval: false for every instant in none.
    #[inline]
    pub fn near(&self, t: i64) -> bool {
        // A value before the origin wraps around, as a rule past the last
        // bucket (where it does not, it only costs the exact test). Values
        // past it look at the bucket after it, never marked: without a
        // branch, which values spread on both sides of the last bucket
        // would mispredict half the time (scanning 10M kept times took
        // three times as long).
        let i = ((t as u64).wrapping_sub(self.origin as u64) >> self.shift).min(self.buckets);
        self.marks[(i / 64) as usize] >> (i % 64) & 1 == 1
    }

    /// Whether `t` is in an interval (see [`Bands::near`] for a quicker
    /// first test).
    #[inline]
    pub fn contains(&self, t: i64) -> bool {
        // Without a branch per band: a ≤ t ≤ a + w as t − a ≤ w, unsigned.
        self.bands.iter().fold(false, |hit, &(a, w)| {
            hit | ((t as u64).wrapping_sub(a) <= w)
        })
    }
}

/// `in_bands(x)`: whether an integer, date or timestamp value lies in one
/// of some closed intervals of its numbers (days for dates, the unit of a
/// timestamp), as `x BETWEEN a AND b OR ...` answers.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct InBands {
    bands: Bands,
    signature: Signature,
}

impl InBands {
    pub fn udf(bands: Bands) -> ScalarUDF {
        ScalarUDF::from(InBands {
            bands,
            signature: Signature::any(1, Volatility::Immutable),
        })
    }

    /// Whether `in_bands` takes values of a type, as numbers of `i64`.
    pub fn takes(t: &DataType) -> bool {
        t.is_integer() && *t != DataType::UInt64
            || matches!(
                t,
                DataType::Date32 | DataType::Date64 | DataType::Timestamp(..)
            )
    }
}

impl ScalarUDFImpl for InBands {
    fn name(&self) -> &str {
        "in_bands"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let values = args.args[0].to_array(args.number_rows)?;
        if !InBands::takes(values.data_type()) {
            return exec_err!("in_bands expects integers, dates or timestamps");
        }
        let values = datafusion::arrow::compute::cast(&values, &DataType::Int64)?;
        let values = values.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let v = values.values();
        let bands = &self.bands;
        let found =
            BooleanBuffer::collect_bool(v.len(), |i| bands.near(v[i]) && bands.contains(v[i]));
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::new(
            found,
            values.nulls().cloned(),
        ))))
    }
}
