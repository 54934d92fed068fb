//! Parquet page indexes parsed once per file and process.
//!
//! DataFusion's Parquet opener reads a file's footer without its page
//! index, and reads the page index apart when the scan's predicate can
//! prune pages. Footers are kept for the process (the sessions' shared
//! metadata cache), but a page index read apart is not: every scan of a
//! file parsed its page index again. The scans of our sessions ask for the
//! footer with its page index, which the cache then keeps with it.
//!
//! Also the walk that rewrites the Parquet sources of a plan's scans,
//! which the events scans use to narrow a plan to a shard's ids.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{
    FileScanConfig, FileScanConfigBuilder, ParquetFileReaderFactory, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions;
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures::FutureExt;
use futures::future::BoxFuture;

/// The physical rule: each Parquet scan reads its files' footers with
/// their page indexes.
#[derive(Debug, Default)]
pub struct PageIndexes;

impl PhysicalOptimizerRule for PageIndexes {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        map_parquet_sources(plan, |parquet, _| {
            Ok(match parquet.parquet_file_reader_factory() {
                Some(factory) => parquet
                    .clone()
                    .with_parquet_file_reader_factory(Arc::new(WithPageIndex(factory.clone()))),
                None => parquet.clone(),
            })
        })
    }

    fn name(&self) -> &str {
        "page_indexes"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The plan with the source of each of its Parquet scans replaced by
/// `f(source, scan)`.
pub(crate) fn map_parquet_sources(
    plan: Arc<dyn ExecutionPlan>,
    mut f: impl FnMut(&ParquetSource, &FileScanConfig) -> Result<ParquetSource>,
) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some(exec) = node.downcast_ref::<DataSourceExec>() else {
            return Ok(Transformed::no(node));
        };
        let Some(conf) = exec.data_source().downcast_ref::<FileScanConfig>() else {
            return Ok(Transformed::no(node));
        };
        let Some(parquet) = conf.file_source().downcast_ref::<ParquetSource>() else {
            return Ok(Transformed::no(node));
        };
        let source = f(parquet, conf)?;
        let conf = FileScanConfigBuilder::from(conf.clone())
            .with_source(Arc::new(source))
            .build();
        let scan: Arc<dyn ExecutionPlan> = DataSourceExec::from_data_source(conf);
        Ok(Transformed::yes(scan))
    })
    .map(|t| t.data)
}

/// Readers of another factory that ask for the page index with the footer.
#[derive(Debug)]
struct WithPageIndex(Arc<dyn ParquetFileReaderFactory>);

impl ParquetFileReaderFactory for WithPageIndex {
    fn create_reader(
        &self,
        partition_index: usize,
        partitioned_file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> Result<Box<dyn AsyncFileReader + Send>> {
        Ok(Box::new(Reader(self.0.create_reader(
            partition_index,
            partitioned_file,
            metadata_size_hint,
            metrics,
        )?)))
    }
}

struct Reader(Box<dyn AsyncFileReader + Send>);

type ParquetResult<T> = datafusion::parquet::errors::Result<T>;

impl AsyncFileReader for Reader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, ParquetResult<Bytes>> {
        self.0.get_bytes(range)
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, ParquetResult<Vec<Bytes>>> {
        self.0.get_byte_ranges(ranges)
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, ParquetResult<Arc<ParquetMetaData>>> {
        let options = options
            .cloned()
            .unwrap_or_default()
            .with_page_index_policy(PageIndexPolicy::Optional);
        async move { self.0.get_metadata(Some(&options)).await }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::Schema;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::execution::cache::cache_manager::CacheManagerConfig;
    use datafusion::execution::context::SQLOptions;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::parquet::file::properties::WriterProperties;
    use datafusion::prelude::{ParquetReadOptions, SessionContext};

    /// Whether the metadata a session keeps of the file holds its page index,
    /// after a scan whose predicate prunes pages, twice. As in the engine's
    /// scans, the files' schema is known and their statistics are not
    /// collected: the scans alone read the files' metadata.
    async fn kept_with_page_index(path: &str, schema: &Schema, rule: bool) -> Option<String> {
        let runtime = RuntimeEnvBuilder::new()
            .with_cache_manager(CacheManagerConfig::default())
            .build_arc()
            .unwrap();
        let mut config = datafusion::prelude::SessionConfig::new();
        config.options_mut().execution.collect_statistics = false;
        let mut state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features();
        if rule {
            state = state.with_physical_optimizer_rule(Arc::new(PageIndexes));
        }
        let ctx = SessionContext::new_with_state(state.build());
        ctx.register_parquet("t", path, ParquetReadOptions::default().schema(schema))
            .await
            .unwrap();
        for _ in 0..2 {
            let rows = ctx
                .sql_with_options(
                    "SELECT count(*) AS n FROM t WHERE x >= 7000",
                    SQLOptions::new(),
                )
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            let n = rows[0].column(0).as_any().downcast_ref::<Int64Array>();
            assert_eq!(n.map(|n| n.value(0)), Some(3000));
        }
        let cache = ctx.runtime_env().cache_manager.get_file_metadata_cache();
        let entries = cache.list_entries();
        assert_eq!(entries.len(), 1, "one file's metadata kept");
        let entry = entries.into_values().next()?;
        entry
            .value
            .file_metadata
            .extra_info()
            .get("page_index")
            .cloned()
    }

    #[tokio::test]
    async fn page_indexes_are_kept_with_the_footer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.parquet");
        let props = WriterProperties::builder()
            .set_data_page_row_count_limit(1000)
            .set_write_batch_size(1000)
            .build();
        let schema = crate::engine::write_x_column(&path, 0..10_000, props);
        let path = path.to_str().unwrap();
        // DataFusion alone keeps the footer without the page index, which
        // each scan then parses again.
        assert_eq!(
            kept_with_page_index(path, &schema, false).await.as_deref(),
            Some("false")
        );
        assert_eq!(
            kept_with_page_index(path, &schema, true).await.as_deref(),
            Some("true")
        );
    }
}
