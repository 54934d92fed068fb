//! The dates and times of the contacts, by value. The contacts file is
//! ordered by internal id: the contacts whose date lies between two
//! instants (those a condition such as `created_at within_last 30d` gains
//! or loses as the clock moves) are spread over all of it. So each time the
//! contacts file is written, its date and timestamp columns are written
//! again, each in a file of its own ordered by value with the internal ids
//! beside: a look-up of the values between two instants reads the few row
//! groups that hold them (the others are skipped by their statistics).
//! Contacts without a value are left out. The same read of the contacts
//! file writes the index of their ids ([`crate::base::id_index`]).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::parquet::basic::{Compression, Encoding, ZstdLevel};
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};

use crate::base::Writer;
use crate::base::manifest::DataFile;
use crate::base::schema::{CONTACT_ID, IID};
use crate::base::table::{read_parquet, write_parquet};
use crate::error::Result;

/// A date or timestamp column of a contacts file, ordered by value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TimeIndex {
    pub column: String,
    /// The contacts file it was written from.
    pub of: String,
    pub file: DataFile,
}

/// Rows per row group: a look-up reads a row group or two more than the
/// values it finds.
const GROUP_ROWS: usize = 64 * 1024;

/// Whether a column's values are indexed by value.
pub fn indexed(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(..)
    )
}

/// Write the indexes of the contacts file the next version holds, in
/// place of those it had: its dates and times by value, and its ids by
/// `contact_id` ([`crate::base::id_index`]).
pub fn index_contacts(w: &mut Writer) -> Result<()> {
    w.next.contact_times.clear();
    w.next.contact_ids = None;
    let Some(contacts) = w.next.contacts.clone() else {
        return Ok(());
    };
    let path = w.dir().join(&contacts.path);
    let schema = crate::base::table::parquet_schema(&path)?;
    let columns: Vec<&str> = schema
        .fields()
        .iter()
        .filter(|f| indexed(f.data_type()))
        .map(|f| f.name().as_str())
        .collect();
    let mut wanted = vec![IID, CONTACT_ID];
    wanted.extend(&columns);
    let (read, batches) = read_parquet(&path, Some(&wanted))?;
    let batch = datafusion::arrow::compute::concat_batches(&read, &batches)?;
    let (iids, cids) = crate::base::ids::id_columns(&batch)?;
    let mut pairs: Vec<(u64, u32)> = cids
        .values()
        .iter()
        .copied()
        .zip(iids.values().iter().copied())
        .collect();
    w.next.contact_ids = Some(crate::base::id_index::write(w, &contacts.path, &mut pairs)?);
    let iids = batch
        .column_by_name(IID)
        .ok_or_else(|| crate::error::Error::Internal("contacts without ids".into()))?;
    let mut out = Vec::with_capacity(columns.len());
    for name in columns {
        let Some(values) = batch.column_by_name(name) else {
            continue;
        };
        let sorted = by_value(name, iids, values)?;
        let sink = w.new_file("contacts", &format!("times-{name}"), "parquet")?;
        let file = write_parquet(sink, sorted.schema(), &[sorted], properties(name))?;
        out.push(TimeIndex {
            column: name.to_string(),
            of: contacts.path.clone(),
            file,
        });
    }
    w.next.contact_times = out;
    Ok(())
}

/// A column's values and their contacts' ids, ordered by value (then id),
/// without the contacts that have none. Both come out of the sorted pairs
/// in order: no gather at random from the columns read.
fn by_value(name: &str, iids: &ArrayRef, values: &ArrayRef) -> Result<RecordBatch> {
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::UInt32Type;
    use rayon::prelude::*;
    let numbers = cast(values, &DataType::Int64)?;
    let numbers = numbers.as_primitive::<Int64Type>();
    let ids = iids.as_primitive::<UInt32Type>();
    let mut order: Vec<(i64, u32)> = (0..numbers.len())
        .filter(|&i| numbers.is_valid(i))
        .map(|i| (numbers.value(i), ids.value(i)))
        .collect();
    order.par_sort_unstable();
    let sorted: ArrayRef = Arc::new(Int64Array::from_iter_values(order.iter().map(|p| p.0)));
    // Days are 32-bit numbers: through Int32 to Date32.
    let sorted = match values.data_type() {
        DataType::Date32 => cast(&cast(&sorted, &DataType::Int32)?, &DataType::Date32)?,
        t => cast(&sorted, t)?,
    };
    let ids: ArrayRef = Arc::new(UInt32Array::from_iter_values(order.iter().map(|p| p.1)));
    let schema = Arc::new(Schema::new(vec![
        Field::new(name, values.data_type().clone(), false),
        Field::new(IID, DataType::UInt32, false),
    ]));
    Ok(RecordBatch::try_new(schema, vec![sorted, ids])?)
}

/// Sorted values delta-encoded and uncompressed (they decode at memory
/// speed), the ids beside them in light zstd.
fn properties(column: &str) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("valid level"),
        ))
        .set_dictionary_enabled(false)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(GROUP_ROWS))
        .set_column_encoding(ColumnPath::from(column), Encoding::DELTA_BINARY_PACKED)
        .set_column_compression(ColumnPath::from(column), Compression::UNCOMPRESSED)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Date32Array, TimestampMicrosecondArray};

    fn ids_and_values(b: &RecordBatch) -> (Vec<u32>, Vec<i64>) {
        let ids = b
            .column(1)
            .as_primitive::<datafusion::arrow::datatypes::UInt32Type>();
        let values = cast(b.column(0), &DataType::Int64).unwrap();
        (
            ids.values().to_vec(),
            values.as_primitive::<Int64Type>().values().to_vec(),
        )
    }

    #[test]
    fn values_are_ordered_with_their_ids_and_empty_ones_left_out() {
        let iids: ArrayRef = Arc::new(UInt32Array::from(vec![3, 5, 8, 9, 12, 20]));
        let times: ArrayRef = Arc::new(
            TimestampMicrosecondArray::from(vec![
                Some(500),
                None,
                Some(-7),
                Some(500),
                Some(40),
                None,
            ])
            .with_timezone("UTC"),
        );
        let b = by_value("created_at", &iids, &times).unwrap();
        assert_eq!(b.schema().field(0).name(), "created_at");
        assert_eq!(b.column(0).data_type(), times.data_type());
        // Equal values in the order of the ids.
        assert_eq!(
            ids_and_values(&b),
            (vec![8, 12, 3, 9], vec![-7, 40, 500, 500])
        );

        let dates: ArrayRef = Arc::new(Date32Array::from(vec![
            Some(20_000),
            Some(19_000),
            None,
            Some(21_000),
            Some(19_000),
            Some(-3),
        ]));
        let b = by_value("birth_date", &iids, &dates).unwrap();
        assert_eq!(b.column(0).data_type(), &DataType::Date32);
        assert_eq!(
            ids_and_values(&b),
            (
                vec![20, 5, 12, 3, 9],
                vec![-3, 19_000, 19_000, 20_000, 21_000]
            )
        );
    }
}
