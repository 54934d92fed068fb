//! Reading and writing the base's Parquet files with arrow-rs.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, new_null_array};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};
use datafusion::parquet::arrow::arrow_writer::{ArrowColumnWriter, compute_leaves};
use datafusion::parquet::arrow::{ArrowWriter, ProjectionMask};
use datafusion::parquet::basic::{Compression, Encoding, ZstdLevel};
use datafusion::parquet::errors::Result as ParquetResult;
use datafusion::parquet::file::properties::{
    DEFAULT_MAX_ROW_GROUP_ROW_COUNT, EnabledStatistics, WriterProperties,
};
use datafusion::parquet::schema::types::ColumnPath;
use rayon::prelude::*;

use crate::base::manifest::DataFile;
use crate::base::store::SinkFile;
use crate::error::{Error, Result};

/// Read a whole Parquet file, optionally only some columns (by name). Row
/// groups are decoded in parallel; batches come in file order.
pub fn read_parquet(
    path: &Path,
    columns: Option<&[&str]>,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let metadata = ArrowReaderMetadata::load(&file, ArrowReaderOptions::default())
        .map_err(|e| Error::parquet(path, e))?;
    let reader = |row_groups: Option<Vec<usize>>| -> Result<ParquetRecordBatchReader> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, metadata.clone())
            .with_batch_size(64 * 1024);
        let builder = match columns {
            Some(cols) => {
                let mask = columns_mask(&builder, cols);
                builder.with_projection(mask)
            }
            None => builder,
        };
        let builder = match row_groups {
            Some(groups) => builder.with_row_groups(groups),
            None => builder,
        };
        builder.build().map_err(|e| Error::parquet(path, e))
    };
    let schema = datafusion::arrow::array::RecordBatchReader::schema(&reader(Some(vec![]))?);
    let groups = metadata.metadata().num_row_groups();
    let parts: Vec<Result<Vec<RecordBatch>>> = (0..groups)
        .into_par_iter()
        .map(|g| {
            reader(Some(vec![g]))?
                .map(|b| b.map_err(Error::from))
                .collect()
        })
        .collect();
    let mut batches = Vec::new();
    for part in parts {
        batches.extend(part?);
    }
    Ok((schema, batches))
}

/// The Arrow schema a Parquet file is read with (from its footer).
pub fn parquet_schema(path: &Path) -> Result<SchemaRef> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| Error::parquet(path, e))?;
    Ok(builder.schema().clone())
}

/// Read some columns of the row groups of a Parquet file whose `u32` column
/// `key` may hold values in `lo..=hi` (by the row groups' statistics), in
/// one batch.
pub fn read_parquet_key_range(
    path: &Path,
    columns: &[&str],
    key: &str,
    lo: u32,
    hi: u32,
) -> Result<RecordBatch> {
    use datafusion::parquet::file::statistics::Statistics;
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::parquet(path, e))?
        .with_batch_size(64 * 1024);
    let schema = builder.schema().clone();
    let key_at = schema.index_of(key)?;
    let groups: Vec<usize> = builder
        .metadata()
        .row_groups()
        .iter()
        .enumerate()
        .filter(|(_, rg)| match rg.column(key_at).statistics() {
            Some(Statistics::Int32(st)) => match (st.min_opt(), st.max_opt()) {
                (Some(&min), Some(&max)) => (min as u32) <= hi && (max as u32) >= lo,
                _ => true,
            },
            _ => true,
        })
        .map(|(i, _)| i)
        .collect();
    let mask = columns_mask(&builder, columns);
    let reader = builder
        .with_row_groups(groups)
        .with_projection(mask)
        .build()
        .map_err(|e| Error::parquet(path, e))?;
    let schema = datafusion::arrow::array::RecordBatchReader::schema(&reader);
    let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(datafusion::arrow::compute::concat_batches(
        &schema, &batches,
    )?)
}

/// The projection of a file's columns with these names.
fn columns_mask(builder: &ParquetRecordBatchReaderBuilder<File>, names: &[&str]) -> ProjectionMask {
    let indices: Vec<usize> = builder
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| names.contains(&f.name().as_str()))
        .map(|(i, _)| i)
        .collect();
    ProjectionMask::roots(builder.parquet_schema(), indices)
}

/// Read a whole Parquet file into one batch.
pub fn read_parquet_one(path: &Path, columns: Option<&[&str]>) -> Result<RecordBatch> {
    let (schema, batches) = read_parquet(path, columns)?;
    Ok(datafusion::arrow::compute::concat_batches(
        &schema, &batches,
    )?)
}

/// Writer settings for contacts: zstd, statistics for pruning.
pub fn contacts_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("valid level"),
        ))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(256 * 1024))
        .build()
}

/// Writer settings for events: sorted ids and timestamps delta-encoded and
/// left uncompressed (a codec buys little on them and costs on every scan),
/// dictionary encoding for the repetitive text columns, light zstd elsewhere.
pub fn events_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("valid level"),
        ))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(512 * 1024))
        .set_column_dictionary_enabled(ColumnPath::from("_iid"), false)
        .set_column_encoding(ColumnPath::from("_iid"), Encoding::DELTA_BINARY_PACKED)
        .set_column_compression(ColumnPath::from("_iid"), Compression::UNCOMPRESSED)
        .set_column_dictionary_enabled(ColumnPath::from("contact_id"), false)
        .set_column_encoding(
            ColumnPath::from("contact_id"),
            Encoding::DELTA_BINARY_PACKED,
        )
        .set_column_dictionary_enabled(ColumnPath::from("ts"), false)
        .set_column_encoding(ColumnPath::from("ts"), Encoding::DELTA_BINARY_PACKED)
        .set_column_compression(ColumnPath::from("ts"), Compression::UNCOMPRESSED)
        .build()
}

/// Write batches to a new data file. Each row group's columns are encoded
/// in parallel, then appended in order; only one row group's encoded pages
/// are held in memory at a time.
pub fn write_parquet(
    sink: SinkFile,
    schema: SchemaRef,
    batches: &[RecordBatch],
    props: WriterProperties,
) -> Result<DataFile> {
    let path = sink.path().to_path_buf();
    let perr = |e| Error::parquet(&path, e);
    let group_rows = props
        .max_row_group_row_count()
        .unwrap_or(DEFAULT_MAX_ROW_GROUP_ROW_COUNT)
        .max(1);
    let writer = ArrowWriter::try_new(sink, schema.clone(), Some(props)).map_err(perr)?;
    let (mut file, factory) = writer.into_serialized_writer().map_err(perr)?;
    for (index, group) in row_groups(batches, group_rows).iter().enumerate() {
        let writers = factory.create_column_writers(index).map_err(perr)?;
        // Each field's leaf writers, taken in schema order.
        let mut writers = writers.into_iter();
        let mut tasks = Vec::with_capacity(schema.fields().len());
        for (column, field) in schema.fields().iter().enumerate() {
            let leaves = compute_leaves(field, &new_null_array(field.data_type(), 0))
                .map_err(perr)?
                .len();
            tasks.push((
                column,
                field,
                writers.by_ref().take(leaves).collect::<Vec<_>>(),
            ));
        }
        let chunks = tasks
            .into_par_iter()
            .map(|(column, field, mut leaf_writers)| {
                for batch in group {
                    let leaves = compute_leaves(field, batch.column(column))?;
                    for (w, leaf) in leaf_writers.iter_mut().zip(&leaves) {
                        w.write(leaf)?;
                    }
                }
                leaf_writers
                    .into_iter()
                    .map(ArrowColumnWriter::close)
                    .collect::<ParquetResult<Vec<_>>>()
            })
            .collect::<ParquetResult<Vec<_>>>()
            .map_err(perr)?;
        let mut row_group = file.next_row_group().map_err(perr)?;
        for chunk in chunks.into_iter().flatten() {
            chunk.append_to_row_group(&mut row_group).map_err(perr)?;
        }
        row_group.close().map_err(perr)?;
    }
    file.into_inner().map_err(perr)?.finish()
}

/// The batches cut into row groups of `rows` rows (the last one shorter).
fn row_groups(batches: &[RecordBatch], rows: usize) -> Vec<Vec<RecordBatch>> {
    let mut groups = vec![];
    let mut current: Vec<RecordBatch> = vec![];
    let mut filled = 0;
    for batch in batches {
        let mut offset = 0;
        while offset < batch.num_rows() {
            let take = (rows - filled).min(batch.num_rows() - offset);
            current.push(batch.slice(offset, take));
            offset += take;
            filled += take;
            if filled == rows {
                groups.push(std::mem::take(&mut current));
                filled = 0;
            }
        }
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

/// A streaming Parquet writer into a data file (for generators and large imports).
pub struct StreamWriter {
    writer: ArrowWriter<SinkFile>,
    path: std::path::PathBuf,
    pub rows: u64,
}

impl StreamWriter {
    pub fn new(sink: SinkFile, schema: SchemaRef, props: WriterProperties) -> Result<Self> {
        let path = sink.path().to_path_buf();
        let writer = ArrowWriter::try_new(sink, schema, Some(props))
            .map_err(|e| Error::parquet(&path, e))?;
        Ok(StreamWriter {
            writer,
            path,
            rows: 0,
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        self.writer
            .write(batch)
            .map_err(|e| Error::parquet(&self.path, e))
    }

    pub fn finish(self) -> Result<DataFile> {
        let sink = self
            .writer
            .into_inner()
            .map_err(|e| Error::parquet(&self.path, e))?;
        sink.finish()
    }
}

pub fn schema_ref(fields: Vec<datafusion::arrow::datatypes::Field>) -> SchemaRef {
    Arc::new(datafusion::arrow::datatypes::Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{AsArray, RecordBatch, UInt32Array, UInt64Array};
    use datafusion::arrow::datatypes::{DataType, Field, UInt32Type};

    use super::*;

    /// Only the row groups whose id statistics meet the range are read.
    #[test]
    fn key_ranges_read_the_row_groups_that_may_hold_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.parquet");
        let schema = schema_ref(vec![
            Field::new("_iid", DataType::UInt32, false),
            Field::new("contact_id", DataType::UInt64, false),
        ]);
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(UInt32Array::from_iter_values(0..1000)),
                Arc::new(UInt64Array::from_iter_values((0..1000).map(|i| i * 7))),
            ],
        )
        .unwrap();
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(100))
            .build();
        let mut w =
            ArrowWriter::try_new(File::create(&path).unwrap(), schema, Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        for (lo, hi, first, rows) in [
            (250, 260, 200, 100),
            (95, 105, 0, 200),
            (999, 999, 900, 100),
        ] {
            let got =
                read_parquet_key_range(&path, &["_iid", "contact_id"], "_iid", lo, hi).unwrap();
            let ids = got.column(0).as_primitive::<UInt32Type>();
            assert_eq!((ids.value(0), got.num_rows()), (first, rows), "{lo}..={hi}");
        }
        let none = read_parquet_key_range(&path, &["_iid"], "_iid", 5000, 6000).unwrap();
        assert_eq!(none.num_rows(), 0);
    }

    /// Batches of any sizes are cut into row groups of the configured size,
    /// and a column of every kind reads back as written.
    #[test]
    fn parallel_writes_cut_row_groups_and_keep_every_value() {
        use datafusion::arrow::array::{ArrayRef, ListBuilder, StringArray, StringBuilder};
        let dir = tempfile::tempdir().unwrap();
        let schema = schema_ref(vec![
            Field::new("_iid", DataType::UInt32, false),
            Field::new("city", DataType::Utf8, true),
            Field::new(
                "tags",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                true,
            ),
        ]);
        let batch = |from: u32, n: u32| {
            let mut tags = ListBuilder::new(StringBuilder::new());
            for i in from..from + n {
                if i % 3 == 0 {
                    tags.append_null();
                } else {
                    tags.values().append_value(format!("t{i}"));
                    tags.append(true);
                }
            }
            let cities: StringArray = (from..from + n)
                .map(|i| (i % 4 != 0).then(|| format!("c{}", i % 5)))
                .collect();
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(UInt32Array::from_iter_values(from..from + n)) as ArrayRef,
                    Arc::new(cities),
                    Arc::new(tags.finish()),
                ],
            )
            .unwrap()
        };
        let batches = vec![batch(0, 3), batch(3, 0), batch(3, 9), batch(12, 1)];
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(4))
            .build();
        let sink = SinkFile::create(dir.path(), "t.parquet".into()).unwrap();
        let file = write_parquet(sink, schema.clone(), &batches, props).unwrap();
        let path = dir.path().join(&file.path);
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap();
        let groups: Vec<i64> = reader
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows())
            .collect();
        assert_eq!(groups, vec![4, 4, 4, 1]);
        let expected = datafusion::arrow::compute::concat_batches(&schema, &batches).unwrap();
        assert_eq!(read_parquet_one(&path, None).unwrap(), expected);
    }
}
