//! Field types of contacts and events, and how each maps to Arrow.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};
use serde::{Deserialize, Serialize};

/// The type of a contact field or an event column, as the criteria language sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type", deny_unknown_fields)]
pub enum FieldType {
    Text,
    /// Integer or float; `integer` keeps whole numbers exact on disk.
    Number {
        #[serde(default)]
        integer: bool,
    },
    Date,
    Timestamp,
    Bool,
    /// One value out of a declared list.
    Choice {
        values: Vec<String>,
    },
    /// A list of text values.
    Tags,
}

impl FieldType {
    pub fn name(&self) -> &'static str {
        match self {
            FieldType::Text => "text",
            FieldType::Number { .. } => "number",
            FieldType::Date => "date",
            FieldType::Timestamp => "timestamp",
            FieldType::Bool => "bool",
            FieldType::Choice { .. } => "choice",
            FieldType::Tags => "tags",
        }
    }

    /// The Arrow type a field of this type is stored as.
    pub fn arrow_type(&self) -> DataType {
        match self {
            FieldType::Text | FieldType::Choice { .. } => DataType::Utf8,
            FieldType::Number { integer: true } => DataType::Int64,
            FieldType::Number { integer: false } => DataType::Float64,
            FieldType::Date => DataType::Date32,
            FieldType::Timestamp => timestamp_type(),
            FieldType::Bool => DataType::Boolean,
            FieldType::Tags => tags_type(),
        }
    }

    /// The field type for an Arrow type read from a Parquet file, if we support it.
    pub fn from_arrow(dt: &DataType) -> Option<FieldType> {
        Some(match dt {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => FieldType::Text,
            DataType::Dictionary(_, v) if v.is_string() => FieldType::Text,
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64 => FieldType::Number { integer: true },
            DataType::Float16
            | DataType::Float32
            | DataType::Float64
            | DataType::Decimal128(..) => FieldType::Number { integer: false },
            DataType::Date32 | DataType::Date64 => FieldType::Date,
            DataType::Timestamp(..) => FieldType::Timestamp,
            DataType::Boolean => FieldType::Bool,
            DataType::List(f) | DataType::LargeList(f) if f.data_type().is_string() => {
                FieldType::Tags
            }
            _ => return None,
        })
    }
}

/// Timestamps are stored in microseconds, UTC.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Tags are stored as a list of UTF-8 strings.
pub fn tags_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

/// A named field of the contacts table or of the events table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldDef {
    pub name: String,
    #[serde(flatten)]
    pub ty: FieldType,
}

/// Hidden column: the dense internal id of a contact.
pub const IID: &str = "_iid";
/// The user's id of a contact.
pub const CONTACT_ID: &str = "contact_id";

/// The recognised contact columns and their fixed types.
/// The contact columns [`recognised_contact_field`] knows.
pub const RECOGNISED_CONTACT_FIELDS: &[&str] = &[
    "email",
    "phone",
    "first_name",
    "last_name",
    "company",
    "email_optin",
    "sms_optin",
    "email_status",
    "sms_status",
    "created_at",
];

pub fn recognised_contact_field(name: &str) -> Option<FieldType> {
    let choice = |v: &[&str]| FieldType::Choice {
        values: v.iter().map(|s| s.to_string()).collect(),
    };
    Some(match name {
        "email" | "phone" | "first_name" | "last_name" | "company" => FieldType::Text,
        "email_optin" | "sms_optin" => FieldType::Bool,
        "email_status" => choice(&[
            "valid",
            "hard_bounce",
            "bad_syntax",
            "bad_domain",
            "bad_alias",
        ]),
        "sms_status" => choice(&["valid", "hard_bounce", "bad_number"]),
        "created_at" => FieldType::Timestamp,
        _ => return None,
    })
}

/// The recognised event columns and their fixed types.
pub fn recognised_event_field(name: &str) -> Option<FieldType> {
    Some(match name {
        "ts" => FieldType::Timestamp,
        "type" | "operation_id" | "url" | "name" => FieldType::Text,
        "amount" => FieldType::Number { integer: false },
        _ => return None,
    })
}

/// Field names must be usable as column names without quoting surprises.
pub fn check_field_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid column name {name:?}: use 1 to 128 ASCII letters, digits, '_' or '-', not starting with '_'"
        ))
    }
}

/// Columns every events table has, after `_iid` and `contact_id`.
pub fn standard_event_columns() -> Vec<FieldDef> {
    ["ts", "type", "operation_id", "url", "amount", "name"]
        .iter()
        .map(|n| FieldDef {
            name: n.to_string(),
            ty: recognised_event_field(n).expect("standard column"),
        })
        .collect()
}
