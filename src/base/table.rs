//! Reading and writing the base's Parquet files with arrow-rs.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt32Array, new_null_array};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};
use datafusion::parquet::arrow::arrow_writer::{
    ArrowColumnWriter, ArrowRowGroupWriterFactory, compute_leaves,
};
use datafusion::parquet::arrow::{ArrowWriter, ProjectionMask};
use datafusion::parquet::basic::{Compression, Encoding, ZstdLevel};
use datafusion::parquet::errors::Result as ParquetResult;
use datafusion::parquet::file::properties::{
    DEFAULT_MAX_ROW_GROUP_ROW_COUNT, EnabledStatistics, WriterProperties, WriterPropertiesBuilder,
};
use datafusion::parquet::file::writer::SerializedFileWriter;
use datafusion::parquet::schema::types::ColumnPath;
use rayon::prelude::*;

use crate::base::manifest::DataFile;
use crate::base::store::SinkFile;
use crate::error::{Error, Result};

/// A Parquet file opened once, read row group by row group.
pub struct ParquetFile {
    path: std::path::PathBuf,
    metadata: ArrowReaderMetadata,
}

impl ParquetFile {
    pub fn open(path: &Path) -> Result<ParquetFile> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let metadata = ArrowReaderMetadata::load(&file, ArrowReaderOptions::default())
            .map_err(|e| Error::parquet(path, e))?;
        Ok(ParquetFile {
            path: path.to_path_buf(),
            metadata,
        })
    }

    pub fn row_groups(&self) -> usize {
        self.metadata.metadata().num_row_groups()
    }

    fn reader(
        &self,
        columns: Option<&[&str]>,
        row_groups: Vec<usize>,
    ) -> Result<ParquetRecordBatchReader> {
        let path = &self.path;
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let builder =
            ParquetRecordBatchReaderBuilder::new_with_metadata(file, self.metadata.clone())
                .with_batch_size(64 * 1024);
        let builder = match columns {
            Some(cols) => {
                let mask = columns_mask(&builder, cols);
                builder.with_projection(mask)
            }
            None => builder,
        };
        builder
            .with_row_groups(row_groups)
            .build()
            .map_err(|e| Error::parquet(path, e))
    }

    /// The schema batches are read with.
    pub fn schema(&self, columns: Option<&[&str]>) -> Result<SchemaRef> {
        Ok(datafusion::arrow::array::RecordBatchReader::schema(
            &self.reader(columns, vec![])?,
        ))
    }

    /// Some row groups, decoded in parallel; batches come in file order.
    pub fn read(&self, columns: Option<&[&str]>, groups: &[usize]) -> Result<Vec<RecordBatch>> {
        let parts: Vec<Result<Vec<RecordBatch>>> = groups
            .par_iter()
            .map(|&g| {
                self.reader(columns, vec![g])?
                    .map(|b| b.map_err(|e| Error::parquet(&self.path, e.into())))
                    .collect()
            })
            .collect();
        let mut batches = Vec::new();
        for part in parts {
            batches.extend(part?);
        }
        Ok(batches)
    }
}

/// Read a whole Parquet file, optionally only some columns (by name). Row
/// groups are decoded in parallel; batches come in file order.
pub fn read_parquet(
    path: &Path,
    columns: Option<&[&str]>,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let file = ParquetFile::open(path)?;
    let groups: Vec<usize> = (0..file.row_groups()).collect();
    Ok((file.schema(columns)?, file.read(columns, &groups)?))
}

/// The Arrow schema a Parquet file is read with (from its footer, kept:
/// see [`kept_metadata`]).
pub fn parquet_schema(path: &Path) -> Result<SchemaRef> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(kept_metadata(path, &file)?.schema().clone())
}

/// The metadata, page indexes included, of a file read again and again:
/// the contacts file, whose schema every query's session takes and whose
/// rows every preview's sample reads by key range. The metadata of the last
/// few files are kept, known by path, size and modification time.
fn kept_metadata(path: &Path, file: &File) -> Result<ArrowReaderMetadata> {
    type Key = (std::path::PathBuf, u64, std::time::SystemTime);
    static KEPT: std::sync::Mutex<Vec<(Key, ArrowReaderMetadata)>> =
        std::sync::Mutex::new(Vec::new());
    let stat = file.metadata().map_err(|e| Error::io(path, e))?;
    let modified = stat.modified().map_err(|e| Error::io(path, e))?;
    let key = (path.to_path_buf(), stat.len(), modified);
    let kept = || KEPT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, m)) = kept().iter().find(|(k, _)| *k == key) {
        return Ok(m.clone());
    }
    let options = ArrowReaderOptions::new()
        .with_page_index_policy(datafusion::parquet::file::metadata::PageIndexPolicy::Optional);
    let m = ArrowReaderMetadata::load(file, options).map_err(|e| Error::parquet(path, e))?;
    let mut kept = kept();
    if kept.len() >= 4 {
        kept.remove(0);
    }
    kept.push((key, m.clone()));
    Ok(m)
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
    // Ids are stored as 32-bit integers: their statistics come back signed.
    read_parquet_where(path, columns, key, |min, max| {
        (min as u32) <= hi && (max as u32) >= lo
    })
}

/// Read some columns of the row groups, and pages within them, of a Parquet
/// file whose integer column `key` (32 or 64 bits; dates and timestamps
/// are) may hold values between `min` and `max` for which `meets(min, max)`,
/// by their statistics; in one batch.
pub fn read_parquet_where(
    path: &Path,
    columns: &[&str],
    key: &str,
    meets: impl Fn(i64, i64) -> bool,
) -> Result<RecordBatch> {
    use datafusion::parquet::arrow::arrow_reader::{RowSelection, RowSelector};
    use datafusion::parquet::file::page_index::column_index::ColumnIndexMetaData;
    use datafusion::parquet::file::statistics::Statistics;
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let metadata = kept_metadata(path, &file)?;
    let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, metadata)
        .with_batch_size(64 * 1024);
    let schema = builder.schema().clone();
    let key_at = schema.index_of(key)?;
    let meta = builder.metadata().clone();
    let groups: Vec<usize> = meta
        .row_groups()
        .iter()
        .enumerate()
        .filter(|(_, rg)| match rg.column(key_at).statistics() {
            Some(Statistics::Int32(st)) => match (st.min_opt(), st.max_opt()) {
                (Some(&min), Some(&max)) => meets(min.into(), max.into()),
                _ => true,
            },
            Some(Statistics::Int64(st)) => match (st.min_opt(), st.max_opt()) {
                (Some(&min), Some(&max)) => meets(min, max),
                _ => true,
            },
            _ => true,
        })
        .map(|(i, _)| i)
        .collect();
    // Within those row groups, only the pages whose keys may be in range.
    let mut selection: Vec<RowSelector> = Vec::new();
    for &g in &groups {
        let rows = meta.row_group(g).num_rows().max(0) as usize;
        let index = meta.column_index().map(|c| &c[g][key_at]);
        let offsets = meta.offset_index().map(|o| &o[g][key_at]);
        let bounds = |p: usize| match index {
            Some(ColumnIndexMetaData::INT32(index)) => index
                .min_value(p)
                .zip(index.max_value(p))
                .map(|(&min, &max)| (min.into(), max.into())),
            Some(ColumnIndexMetaData::INT64(index)) => index
                .min_value(p)
                .zip(index.max_value(p))
                .map(|(&a, &b)| (a, b)),
            _ => None,
        };
        let null_page = |p: usize| match index {
            Some(ColumnIndexMetaData::INT32(index)) => index.is_null_page(p),
            Some(ColumnIndexMetaData::INT64(index)) => index.is_null_page(p),
            _ => false,
        };
        let (Some(ColumnIndexMetaData::INT32(_) | ColumnIndexMetaData::INT64(_)), Some(offsets)) =
            (index, offsets)
        else {
            selection.push(RowSelector::select(rows));
            continue;
        };
        let pages = offsets.page_locations();
        for (p, page) in pages.iter().enumerate() {
            let start = page.first_row_index.max(0) as usize;
            let end = pages
                .get(p + 1)
                .map(|next| next.first_row_index.max(0) as usize)
                .unwrap_or(rows);
            let keep = match bounds(p) {
                Some((min, max)) => meets(min, max),
                None => !null_page(p),
            };
            selection.push(if keep {
                RowSelector::select(end - start)
            } else {
                RowSelector::skip(end - start)
            });
        }
    }
    let mask = columns_mask(&builder, columns);
    let reader = builder
        .with_row_groups(groups)
        .with_row_selection(RowSelection::from(selection))
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

/// Writer settings for contacts: zstd, statistics for pruning; the ids,
/// read by every scan, delta-encoded (the dense internal ids take a few
/// bytes a page and decode at memory speed). Columns whose values are
/// (nearly) one per contact, e-mail addresses, phone numbers and times,
/// are stored without a dictionary: it would hold every value, and reading
/// a few contacts (a preview's sample) would decode all of it.
pub fn contacts_properties(schema: &Schema) -> WriterProperties {
    let mut b = WriterProperties::builder();
    for f in schema.fields() {
        let unique = matches!(f.name().as_str(), "email" | "phone")
            || matches!(f.data_type(), DataType::Timestamp(..));
        if unique {
            b = b.set_column_dictionary_enabled(ColumnPath::from(f.name().as_str()), false);
        }
    }
    let b = b
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("valid level"),
        ))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(256 * 1024))
        // Pages of a few thousand contacts, so that a lookup by id (a
        // sample, a page of members) decodes little.
        .set_data_page_row_count_limit(16 * 1024);
    ids_delta_encoded(b).build()
}

/// The ids of contacts and events, in id order: internal ids
/// delta-encoded and uncompressed, contact ids delta-encoded.
fn ids_delta_encoded(b: WriterPropertiesBuilder) -> WriterPropertiesBuilder {
    b.set_column_dictionary_enabled(ColumnPath::from("_iid"), false)
        .set_column_encoding(ColumnPath::from("_iid"), Encoding::DELTA_BINARY_PACKED)
        .set_column_compression(ColumnPath::from("_iid"), Compression::UNCOMPRESSED)
        .set_column_dictionary_enabled(ColumnPath::from("contact_id"), false)
        .set_column_encoding(
            ColumnPath::from("contact_id"),
            Encoding::DELTA_BINARY_PACKED,
        )
}

/// Writer settings for events: sorted ids and timestamps delta-encoded and
/// left uncompressed (a codec buys little on them and costs on every scan),
/// dictionary encoding for the repetitive text columns, light zstd elsewhere.
pub fn events_properties() -> WriterProperties {
    let b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("valid level"),
        ))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(512 * 1024));
    ids_delta_encoded(b)
        .set_column_dictionary_enabled(ColumnPath::from("ts"), false)
        .set_column_encoding(ColumnPath::from("ts"), Encoding::DELTA_BINARY_PACKED)
        .set_column_compression(ColumnPath::from("ts"), Compression::UNCOMPRESSED)
        .build()
}

/// Write batches to a new data file (see [`ParallelWriter`]).
pub fn write_parquet(
    sink: SinkFile,
    schema: SchemaRef,
    batches: &[RecordBatch],
    props: WriterProperties,
) -> Result<DataFile> {
    let mut w = ParallelWriter::new(sink, schema, props)?;
    for b in batches {
        w.write(b.clone())?;
    }
    w.finish()
}

/// A Parquet writer into a data file that takes batches as they come. Each
/// row group's columns are encoded in parallel, then appended in order; only
/// one row group's batches and encoded pages are held in memory at a time.
pub struct ParallelWriter {
    file: SerializedFileWriter<SinkFile>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    path: std::path::PathBuf,
    group_rows: usize,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    groups: usize,
    pub rows: u64,
}

impl ParallelWriter {
    pub fn new(sink: SinkFile, schema: SchemaRef, props: WriterProperties) -> Result<Self> {
        let path = sink.path().to_path_buf();
        let perr = |e| Error::parquet(&path, e);
        let group_rows = props
            .max_row_group_row_count()
            .unwrap_or(DEFAULT_MAX_ROW_GROUP_ROW_COUNT)
            .max(1);
        let writer = ArrowWriter::try_new(sink, schema.clone(), Some(props)).map_err(perr)?;
        let (file, factory) = writer.into_serialized_writer().map_err(perr)?;
        Ok(ParallelWriter {
            file,
            factory,
            schema,
            path,
            group_rows,
            pending: Vec::new(),
            pending_rows: 0,
            groups: 0,
            rows: 0,
        })
    }

    pub fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        let mut offset = 0;
        while offset < batch.num_rows() {
            let take = (self.group_rows - self.pending_rows).min(batch.num_rows() - offset);
            self.pending.push(batch.slice(offset, take));
            self.pending_rows += take;
            offset += take;
            if self.pending_rows == self.group_rows {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// End the row group being written: the next rows start another.
    pub fn end_row_group(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.flush()
    }

    /// Encode the pending batches as one row group.
    fn flush(&mut self) -> Result<()> {
        let group = std::mem::take(&mut self.pending);
        self.pending_rows = 0;
        self.encode(vec![Group::Batches(group)])
    }

    /// Write the rows `order[range]` of `batch` (all of its rows in order
    /// when `order` is `None`) for each range, each range one row group or
    /// more (split at the row group size). Every column of every group is
    /// gathered and encoded at once, in parallel, then appended in order:
    /// a file of many small groups keeps the cores as busy as one of few
    /// large ones.
    pub fn write_groups(
        &mut self,
        batch: &RecordBatch,
        order: Option<&UInt32Array>,
        ranges: &[std::ops::Range<usize>],
    ) -> Result<()> {
        if !self.pending.is_empty() {
            self.flush()?;
        }
        let mut groups = Vec::new();
        for range in ranges {
            let mut start = range.start;
            while start < range.end {
                let end = range.end.min(start + self.group_rows);
                self.rows += (end - start) as u64;
                groups.push(match order {
                    Some(order) => Group::Taken(batch, order.slice(start, end - start)),
                    None => Group::Batches(vec![batch.slice(start, end - start)]),
                });
                start = end;
            }
        }
        self.encode(groups)
    }

    fn encode(&mut self, groups: Vec<Group<'_>>) -> Result<()> {
        let perr = |e| Error::parquet(&self.path, e);
        // Leaf columns of each field, in schema order.
        let leaves = self
            .schema
            .fields()
            .iter()
            .map(|f| Ok(compute_leaves(f, &new_null_array(f.data_type(), 0))?.len()))
            .collect::<ParquetResult<Vec<usize>>>()
            .map_err(perr)?;
        let mut tasks = Vec::new();
        for g in 0..groups.len() {
            let mut writers = self
                .factory
                .create_column_writers(self.groups + g)
                .map_err(perr)?
                .into_iter();
            for (column, &n) in leaves.iter().enumerate() {
                tasks.push((g, column, writers.by_ref().take(n).collect::<Vec<_>>()));
            }
        }
        let chunks = tasks
            .into_par_iter()
            .map(|(g, column, mut leaf_writers)| {
                let field = self.schema.field(column);
                for array in groups[g].column(column)? {
                    let leaves = compute_leaves(field, &array)?;
                    for (w, leaf) in leaf_writers.iter_mut().zip(&leaves) {
                        w.write(leaf)?;
                    }
                }
                Ok((
                    g,
                    leaf_writers
                        .into_iter()
                        .map(ArrowColumnWriter::close)
                        .collect::<ParquetResult<Vec<_>>>()?,
                ))
            })
            .collect::<ParquetResult<Vec<_>>>()
            .map_err(perr)?;
        let mut chunks = chunks.into_iter().peekable();
        for g in 0..groups.len() {
            let mut row_group = self.file.next_row_group().map_err(perr)?;
            while let Some((_, columns)) = chunks.next_if(|(of, _)| *of == g) {
                for chunk in columns {
                    chunk.append_to_row_group(&mut row_group).map_err(perr)?;
                }
            }
            row_group.close().map_err(perr)?;
        }
        self.groups += groups.len();
        Ok(())
    }

    pub fn finish(mut self) -> Result<DataFile> {
        if !self.pending.is_empty() {
            self.flush()?;
        }
        let path = self.path.clone();
        self.file
            .into_inner()
            .map_err(|e| Error::parquet(&path, e))?
            .finish()
    }
}

/// The rows of one row group: batches as they are, or rows of a batch
/// gathered by index.
enum Group<'a> {
    Batches(Vec<RecordBatch>),
    Taken(&'a RecordBatch, UInt32Array),
}

impl Group<'_> {
    fn column(&self, column: usize) -> ParquetResult<Vec<ArrayRef>> {
        Ok(match self {
            Group::Batches(batches) => batches.iter().map(|b| b.column(column).clone()).collect(),
            Group::Taken(batch, rows) => vec![
                datafusion::arrow::compute::take(batch.column(column), rows, None).map_err(
                    |e| datafusion::parquet::errors::ParquetError::External(Box::new(e)),
                )?,
            ],
        })
    }
}

/// Batches kept in order to be read back later in ranges of rows: in
/// memory up to a budget, then in a temporary Parquet file in the base's
/// folder (removed when the spool is dropped, or by garbage collection
/// after a crash).
pub struct Spool {
    schema: SchemaRef,
    dir: std::path::PathBuf,
    budget: usize,
    memory: Vec<RecordBatch>,
    memory_rows: usize,
    memory_bytes: usize,
    file: Option<(tempfile::NamedTempFile, Option<ArrowWriter<File>>)>,
    rows: usize,
}

/// Name prefix of spool files, for garbage collection.
pub const SPOOL_PREFIX: &str = ".spool-";

impl Spool {
    pub fn new(dir: &Path, schema: SchemaRef, budget: usize) -> Spool {
        Spool {
            schema,
            dir: dir.to_path_buf(),
            budget,
            memory: Vec::new(),
            memory_rows: 0,
            memory_bytes: 0,
            file: None,
            rows: 0,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn push(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.rows += batch.num_rows();
        let bytes = batch.get_array_memory_size();
        if self.file.is_none() && self.memory_bytes + bytes <= self.budget {
            self.memory_rows += batch.num_rows();
            self.memory_bytes += bytes;
            self.memory.push(batch);
            return Ok(());
        }
        if self.file.is_none() {
            let tmp = tempfile::Builder::new()
                .prefix(SPOOL_PREFIX)
                .suffix(".parquet")
                .tempfile_in(&self.dir)
                .map_err(|e| Error::io(&self.dir, e))?;
            // A crash from here leaves the file for the next writer to collect.
            crate::base::store::crash_point(format_args!("created {}", tmp.path().display()));
            let out = tmp.reopen().map_err(|e| Error::io(tmp.path(), e))?;
            let props = WriterProperties::builder()
                .set_max_row_group_row_count(Some(64 * 1024))
                .set_statistics_enabled(EnabledStatistics::None)
                .build();
            let writer = ArrowWriter::try_new(out, self.schema.clone(), Some(props))
                .map_err(|e| Error::parquet(tmp.path(), e))?;
            self.file = Some((tmp, Some(writer)));
        }
        let (tmp, writer) = self.file.as_mut().expect("spool file");
        let writer = writer
            .as_mut()
            .ok_or_else(|| Error::Internal("spool written after it was read".into()))?;
        writer
            .write(&batch)
            .map_err(|e| Error::parquet(tmp.path(), e))
    }

    /// End the writing: nothing can be pushed after.
    pub fn close(&mut self) -> Result<()> {
        if let Some((tmp, writer)) = &mut self.file
            && let Some(w) = writer.take()
        {
            w.close().map_err(|e| Error::parquet(tmp.path(), e))?;
        }
        Ok(())
    }

    /// The rows `[start, start + len)` in batches (after [`Spool::close`]).
    pub fn read(
        &self,
        start: usize,
        len: usize,
    ) -> Result<Box<dyn Iterator<Item = Result<RecordBatch>> + Send + '_>> {
        let end = (start + len).min(self.rows);
        let mut in_memory = Vec::new();
        let mut at = 0;
        for b in &self.memory {
            let (lo, hi) = (at.max(start), (at + b.num_rows()).min(end));
            if lo < hi {
                in_memory.push(Ok(b.slice(lo - at, hi - lo)));
            }
            at += b.num_rows();
        }
        let from_file = match &self.file {
            Some((tmp, _)) if end > self.memory_rows => {
                use datafusion::parquet::arrow::arrow_reader::{RowSelection, RowSelector};
                let skip = start.saturating_sub(self.memory_rows);
                let take = end - self.memory_rows.max(start);
                let path = tmp.path().to_path_buf();
                let f = File::open(&path).map_err(|e| Error::io(&path, e))?;
                let reader = ParquetRecordBatchReaderBuilder::try_new(f)
                    .map_err(|e| Error::parquet(&path, e))?
                    .with_batch_size(64 * 1024)
                    .with_row_selection(RowSelection::from(vec![
                        RowSelector::skip(skip),
                        RowSelector::select(take),
                    ]))
                    .build()
                    .map_err(|e| Error::parquet(&path, e))?;
                Some(reader.map(move |b| b.map_err(|e| Error::parquet(&path, e.into()))))
            }
            _ => None,
        };
        Ok(Box::new(
            in_memory.into_iter().chain(from_file.into_iter().flatten()),
        ))
    }
}

/// Rows taken from a stream of batches a number at a time.
pub struct Taker<'a> {
    batches: Box<dyn Iterator<Item = Result<RecordBatch>> + Send + 'a>,
    schema: SchemaRef,
    rest: Option<RecordBatch>,
}

impl<'a> Taker<'a> {
    pub fn new(
        schema: SchemaRef,
        batches: Box<dyn Iterator<Item = Result<RecordBatch>> + Send + 'a>,
    ) -> Self {
        Taker {
            batches,
            schema,
            rest: None,
        }
    }

    /// The next `n` rows (fewer when the stream ends).
    pub fn take(&mut self, n: usize) -> Result<RecordBatch> {
        let mut parts = Vec::new();
        let mut got = 0;
        while got < n {
            let b = match self.rest.take() {
                Some(b) => b,
                None => match self.batches.next() {
                    Some(b) => b?,
                    None => break,
                },
            };
            let k = (n - got).min(b.num_rows());
            if k < b.num_rows() {
                self.rest = Some(b.slice(k, b.num_rows() - k));
            }
            parts.push(b.slice(0, k));
            got += k;
        }
        match parts.len() {
            1 => Ok(parts.pop().expect("one part")),
            _ => Ok(datafusion::arrow::compute::concat_batches(
                &self.schema,
                &parts,
            )?),
        }
    }
}

pub fn schema_ref(fields: Vec<datafusion::arrow::datatypes::Field>) -> SchemaRef {
    Arc::new(datafusion::arrow::datatypes::Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, AsArray, RecordBatch, UInt32Array, UInt64Array};
    use datafusion::arrow::datatypes::{DataType, Field, UInt32Type};

    use super::*;

    /// Rows gathered by an order are written in that order, each range in
    /// row groups of its own, split at the row group size.
    #[test]
    fn groups_of_gathered_rows_are_written_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let schema = schema_ref(vec![
            Field::new("_iid", DataType::UInt32, false),
            Field::new("name", DataType::Utf8, true),
        ]);
        let n = 1000u32;
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(UInt32Array::from_iter_values(0..n)),
                Arc::new(datafusion::arrow::array::StringArray::from_iter(
                    (0..n).map(|i| (i % 3 != 0).then(|| format!("n{}", i % 17))),
                )),
            ],
        )
        .unwrap();
        // Every third row, backwards, then the rest forwards.
        let mut order: Vec<u32> = (0..n).rev().filter(|i| i % 3 == 0).collect();
        let cut = order.len();
        order.extend((0..n).filter(|i| i % 3 != 0));
        let ranges = [0..cut, cut..order.len()];
        for gathered in [true, false] {
            let sink = SinkFile::create(dir.path(), format!("g{gathered}.parquet")).unwrap();
            let props = WriterProperties::builder()
                .set_max_row_group_row_count(Some(128))
                .build();
            let mut w = ParallelWriter::new(sink, schema.clone(), props).unwrap();
            let indices = UInt32Array::from(order.clone());
            w.write_groups(&batch, gathered.then_some(&indices), &ranges)
                .unwrap();
            assert_eq!(w.rows, u64::from(n));
            w.finish().unwrap();
            let path = dir.path().join(format!("g{gathered}.parquet"));
            let want: Vec<u32> = if gathered {
                order.clone()
            } else {
                (0..n).collect()
            };
            let got = read_parquet_one(&path, None).unwrap();
            let ids = got.column(0).as_primitive::<UInt32Type>().values().to_vec();
            assert_eq!(ids, want);
            let names = got.column(1).as_string::<i32>();
            for (at, id) in want.iter().enumerate() {
                let name = (id % 3 != 0).then(|| format!("n{}", id % 17));
                assert_eq!(
                    names.is_valid(at).then(|| names.value(at).to_string()),
                    name
                );
            }
            let file = File::open(&path).unwrap();
            let meta = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
            let sizes: Vec<i64> = meta
                .metadata()
                .row_groups()
                .iter()
                .map(|g| g.num_rows())
                .collect();
            let (a, b) = (cut as i64, n as i64 - cut as i64);
            let mut expect = Vec::new();
            for len in [a, b] {
                let mut left = len;
                while left > 0 {
                    expect.push(left.min(128));
                    left -= 128;
                }
            }
            assert_eq!(sizes, expect);
        }
    }

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
        let write = |path: &Path, props: WriterProperties| {
            let mut w =
                ArrowWriter::try_new(File::create(path).unwrap(), schema.clone(), Some(props))
                    .unwrap();
            w.write(&batch).unwrap();
            w.close().unwrap();
        };
        write(
            &path,
            WriterProperties::builder()
                .set_max_row_group_row_count(Some(100))
                .build(),
        );
        // The rows read for `lo..=hi` start at `first` and are `rows` long.
        let check = |path: &Path, lo: u32, hi: u32, first: u32, rows: usize| {
            let got =
                read_parquet_key_range(path, &["_iid", "contact_id"], "_iid", lo, hi).unwrap();
            let ids = got.column(0).as_primitive::<UInt32Type>();
            assert_eq!((ids.value(0), got.num_rows()), (first, rows), "{lo}..={hi}");
            let cids = got
                .column(1)
                .as_primitive::<datafusion::arrow::datatypes::UInt64Type>();
            assert_eq!(cids.value(0), u64::from(first) * 7);
        };
        for (lo, hi, first, rows) in [
            (250, 260, 200, 100),
            (95, 105, 0, 200),
            (999, 999, 900, 100),
        ] {
            check(&path, lo, hi, first, rows);
        }
        let none = read_parquet_key_range(&path, &["_iid"], "_iid", 5000, 6000).unwrap();
        assert_eq!(none.num_rows(), 0);

        // With pages of 10 rows and a page index, only the pages in range.
        let paged = dir.path().join("paged.parquet");
        write(
            &paged,
            WriterProperties::builder()
                .set_max_row_group_row_count(Some(100))
                .set_data_page_row_count_limit(10)
                .set_write_batch_size(10)
                .set_statistics_enabled(EnabledStatistics::Page)
                .build(),
        );
        for (lo, hi, first, rows) in [
            (255, 256, 250, 10),
            (95, 105, 90, 20),
            (999, 999, 990, 10),
            (3, 3, 0, 10),
        ] {
            check(&paged, lo, hi, first, rows);
        }
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
