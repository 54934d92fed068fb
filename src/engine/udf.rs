//! Scalar functions the criteria need and DataFusion lacks: the local
//! month-day of a date or timestamp (for anniversaries), and the lower-case
//! form of a text or of a tags list (for case-insensitive matching), which
//! lower-cases ASCII values in place and allocates only for the others.

use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate};
use chrono_tz::Tz;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, Int32Array, ListArray, StringArray, StringBuilder,
    TimestampMicrosecondArray,
};
use datafusion::arrow::buffer::Buffer;
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
