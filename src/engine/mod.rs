//! The DataFusion rooms' common ground: the session over one version of a
//! base (tables, caches, memory limit), the functions it registers, the
//! tables of ad-hoc SQL, the read-only guard, the time limit of a query and
//! the grouping of dictionary-encoded text, filters on the event type
//! answered by the layout of the events files, Parquet page indexes parsed
//! once per file. `compile` plans criteria on it;
//! `sql` serves queries from it.

pub mod by_type;
pub mod deadline;
pub mod groups;
pub mod guard;
pub mod page_index;
pub mod session;
pub mod tables;
pub mod udf;

pub use session::Session;

/// A Parquet file of one non-null `Int64` column `x` holding `values`,
/// written with `props`; its schema.
#[cfg(test)]
pub(crate) fn write_x_column(
    path: &std::path::Path,
    values: impl IntoIterator<Item = i64>,
    props: datafusion::parquet::file::properties::WriterProperties,
) -> datafusion::arrow::datatypes::SchemaRef {
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let schema = std::sync::Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
    let file = std::fs::File::create(path).unwrap();
    let mut writer =
        datafusion::parquet::arrow::ArrowWriter::try_new(file, schema.clone(), Some(props))
            .unwrap();
    let x = Int64Array::from_iter_values(values);
    writer
        .write(&RecordBatch::try_new(schema.clone(), vec![std::sync::Arc::new(x)]).unwrap())
        .unwrap();
    writer.close().unwrap();
    schema
}
