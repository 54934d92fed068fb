//! A DataFusion session over one pinned snapshot: `contacts` and `events`
//! registered as Parquet listing tables over exactly the snapshot's files.

use datafusion::execution::cache::cache_manager::{
    CacheManager, CacheManagerConfig, FileMetadataCache, FileStatisticsCache,
};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use roaring::RoaringBitmap;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::catalog::{CatalogProviderList, MemoryCatalogProviderList};
use datafusion::common::DFSchema;
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::{SessionState, SessionStateBuilder, SessionStateDefaults};
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::base::bitmaps::read_all_contacts;
use crate::base::contacts::stored_contacts_schema;
use crate::base::events::events_schema;
use crate::base::manifest::EventFile;
use crate::base::schema::FieldType;
use crate::base::{Base, Manifest};
use crate::engine::udf::{LowerTags, LowerText, MonthDay};
use crate::error::{Error, Result};

/// Internal name of the contacts table (with `_iid`) used by compiled plans.
pub const CONTACTS: &str = "contacts";
pub const EVENTS: &str = "events";

pub struct Session {
    pub ctx: SessionContext,
    pub contacts_schema: SchemaRef,
    pub events_schema: SchemaRef,
    /// Types of the event columns (choice, tags...).
    pub event_types: HashMap<String, FieldType>,
    /// Every live contact of the snapshot.
    pub all_contacts: RoaringBitmap,
    /// The version this session reads.
    pub base: Base,
    pub manifest: Arc<Manifest>,
    /// How the scan of events cuts the contacts (sized by memory budgets
    /// unless set).
    pub scan_layout: ScanLayout,
    /// Files of contacts' rows imports kept, by path, once read (the
    /// contacts pass and the opt-ins read the same ones).
    pub kept_rows: std::sync::Mutex<HashMap<String, datafusion::arrow::array::RecordBatch>>,
}

/// Contacts per shard of the events scan and per block of its kernel; the
/// default sizes them by memory and cache budgets. Setting them exercises
/// the shard and block boundaries on small bases.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanLayout {
    pub shard_contacts: Option<u32>,
    pub block_contacts: Option<u32>,
    /// Contacts of the state of a shard that keeps its rows: the part of
    /// the shard accumulated and turned into bitmaps at a time.
    pub state_contacts: Option<u32>,
    /// Whether the scan reads its rows first and keeps state for the
    /// contacts they name alone (default: when its range holds many more
    /// contacts than rows).
    pub rows_first: Option<bool>,
    /// Whether a pass over the rows of some contacts only has the reader
    /// test their ids before it decodes the other columns (default: when
    /// they are few next to the contacts).
    pub only_in_reader: Option<bool>,
}

impl Session {
    pub fn new(base: &Base, m: Arc<Manifest>) -> Result<Session> {
        let ctx = SessionContext::new_with_state(fresh_state(base)?);
        ctx.register_udf(MonthDay::udf(base.tz()));
        ctx.register_udf(LowerTags::udf());
        ctx.register_udf(LowerText::udf());
        let contacts_schema = stored_contacts_schema(base.dir(), &m)?;
        let events_schema = events_schema(&m.event_columns);
        let contact_files: Vec<String> = m.contacts.iter().map(|f| abs(base, &f.path)).collect();
        let event_files: Vec<String> = m.events.iter().map(|e| abs(base, &e.file.path)).collect();
        register(&ctx, CONTACTS, contacts_schema.clone(), &contact_files)?;
        register(&ctx, EVENTS, events_schema.clone(), &event_files)?;
        let all_contacts = match &m.all_contacts {
            Some(f) => read_all_contacts(base.dir(), f)?,
            None => RoaringBitmap::new(),
        };
        Ok(Session {
            ctx,
            contacts_schema,
            events_schema,
            event_types: m
                .event_columns
                .iter()
                .map(|f| (f.name.clone(), f.ty.clone()))
                .collect(),
            base: base.clone(),
            manifest: m,
            all_contacts,
            scan_layout: ScanLayout::default(),
            kept_rows: Default::default(),
        })
    }
}

impl Session {
    /// A failed read, with the damaged data file of this version named
    /// when there is one ([`crate::base::check::name_damaged_file`]).
    pub fn name_damaged_file(&self, e: Error) -> Error {
        crate::base::check::name_damaged_file(self.base.dir(), &self.manifest, e)
    }

    /// A boolean or value expression ready to evaluate on batches of the
    /// given schema: coerced, simplified (literal folding, `IN` lists,
    /// `LIKE` prefixes), planned.
    pub fn physical_expr(&self, e: Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>> {
        let schema = Arc::new(schema.clone());
        let simplifier = ExprSimplifier::new(
            SimplifyContext::builder()
                .with_schema(schema.clone())
                .build(),
        );
        let e = simplifier.simplify(simplifier.coerce(e, &schema)?)?;
        Ok(self.ctx.create_physical_expr(e, &schema)?)
    }
}

/// A session state with no tables, for the base's threads and memory
/// limit. Building one registers every function, planner and rule of
/// DataFusion, a tenth of a small preview; so one is built per setting and
/// process, and each session takes a copy with a catalog of its own. The
/// copies share the runtime: the memory limit holds for the queries of a
/// process together.
fn fresh_state(base: &Base) -> Result<SessionState> {
    type Key = (usize, usize);
    static TEMPLATES: Mutex<Vec<(Key, SessionState)>> = Mutex::new(Vec::new());
    // The cores available, read once per process (from the scheduler's
    // affinity and the cgroup's quota, a few files each time).
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let threads = base.jobs.unwrap_or_else(|| {
        *CORES.get_or_init(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        })
    });
    // Operators that would hold more than the limit stop the query with a
    // clear error; nothing spills to files outside the base.
    let limit = base
        .memory_limit
        .unwrap_or_else(crate::base::default_memory_limit);
    let key = (threads, limit);
    let templates = || TEMPLATES.lock().unwrap_or_else(|e| e.into_inner());
    let found = templates()
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, s)| s.clone());
    let mut state = match found {
        Some(s) => s,
        None => {
            let config = SessionConfig::new()
                .with_target_partitions(threads)
                .with_batch_size(64 * 1024)
                .with_information_schema(true);
            let runtime = RuntimeEnvBuilder::new()
                .with_memory_limit(limit, 1.0)
                .with_disk_manager_builder(
                    DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
                )
                .with_cache_manager(shared_caches()?)
                .build_arc()?;
            let s = SessionStateBuilder::new()
                .with_config(config)
                .with_runtime_env(runtime)
                .with_default_features()
                .with_query_planner(Arc::new(crate::engine::deadline::Planner))
                .with_physical_optimizer_rule(Arc::new(crate::engine::groups::DictionaryGroups))
                .with_physical_optimizer_rule(Arc::new(crate::engine::page_index::PageIndexes))
                .build();
            templates().push((key, s.clone()));
            s
        }
    };
    let catalogs = MemoryCatalogProviderList::new();
    let config = state.config().clone();
    catalogs.register_catalog(
        config.options().catalog.default_catalog.clone(),
        Arc::new(SessionStateDefaults::default_catalog(
            &config,
            state.table_factories(),
            state.runtime_env(),
        )),
    );
    state.register_catalog_list(Arc::new(catalogs));
    Ok(state)
}

pub(crate) fn abs(base: &Base, rel: &str) -> String {
    base.dir().join(rel).to_string_lossy().to_string()
}

/// Parquet footers and file statistics, shared by every session of the
/// process: a server or a bench that opens a session per query reads each
/// file's metadata once. Files of a base are never rewritten in place (a
/// new version writes new files), and each entry is checked against the
/// file's size and modification time; both caches are bounded LRUs.
fn shared_caches() -> Result<CacheManagerConfig> {
    type Shared = (Arc<FileStatisticsCache>, Arc<FileMetadataCache>);
    static CACHES: OnceLock<Shared> = OnceLock::new();
    let (stats, metadata) = match CACHES.get() {
        Some(c) => c,
        None => {
            let m = CacheManager::try_new(&CacheManagerConfig::default())?;
            let stats = m.get_file_statistic_cache().ok_or_else(|| {
                datafusion::error::DataFusionError::Internal(
                    "the default file statistics cache is disabled".into(),
                )
            })?;
            CACHES.get_or_init(|| (stats, m.get_file_metadata_cache()))
        }
    };
    Ok(CacheManagerConfig::default()
        .with_file_statistics_cache(Some(stats.clone()))
        .with_file_metadata_cache(Some(metadata.clone())))
}

fn register(ctx: &SessionContext, name: &str, schema: SchemaRef, files: &[String]) -> Result<()> {
    ctx.register_table(name, listing_table(ctx, schema, files)?)?;
    Ok(())
}

/// A table over exactly these Parquet files (an empty one without files).
pub(crate) fn listing_table(
    ctx: &SessionContext,
    schema: SchemaRef,
    files: &[String],
) -> Result<Arc<dyn TableProvider>> {
    if files.is_empty() {
        return Ok(Arc::new(MemTable::try_new(schema, vec![vec![]])?));
    }
    let urls = files
        .iter()
        .map(ListingTableUrl::parse)
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    // A base's files are written without Bloom filters: looking for them
    // would only evaluate each scan's pruning predicate once more per row
    // group.
    let format = ParquetFormat::default();
    let mut parquet = format.options().clone();
    parquet.global.bloom_filter_on_read = false;
    let options =
        ListingOptions::new(Arc::new(format.with_options(parquet))).with_file_extension(".parquet");
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .with_schema(schema);
    let stats = ctx.runtime_env().cache_manager.get_file_statistic_cache();
    Ok(Arc::new(ListingTable::try_new(config)?.with_cache(stats)))
}

impl Session {
    /// The events table over some of the snapshot's events files.
    pub fn events_table(&self, files: &[&EventFile]) -> Result<Arc<dyn TableProvider>> {
        let paths: Vec<String> = files
            .iter()
            .map(|e| abs(&self.base, &e.file.path))
            .collect();
        listing_table(&self.ctx, self.events_schema.clone(), &paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::execution::context::SQLOptions;
    use datafusion::parquet::file::properties::WriterProperties;
    use datafusion::physical_plan::display::DisplayableExecutionPlan;
    use datafusion::prelude::ParquetReadOptions;

    /// The Bloom filter metric of a count of `x = 5001`, over the table `t`.
    async fn bloom_metric(ctx: &SessionContext) -> String {
        let df = ctx
            .sql_with_options("SELECT count(*) FROM t WHERE x = 5001", SQLOptions::new())
            .await
            .unwrap();
        let plan = df.create_physical_plan().await.unwrap();
        let rows = datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx())
            .await
            .unwrap();
        let n = rows[0].column(0).as_any().downcast_ref::<Int64Array>();
        assert_eq!(n.map(|n| n.value(0)), Some(0));
        let shown = DisplayableExecutionPlan::with_metrics(plan.as_ref())
            .indent(true)
            .to_string();
        let at = shown
            .find("row_groups_pruned_bloom_filter=")
            .expect("the metric");
        shown[at..].split(',').next().unwrap().to_string()
    }

    #[tokio::test]
    async fn scans_look_for_no_bloom_filters() {
        // A file with a Bloom filter, and a value between its smallest and
        // largest that it does not hold.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.parquet");
        let props = WriterProperties::builder()
            .set_bloom_filter_enabled(true)
            .build();
        let schema = crate::engine::write_x_column(&path, (0..10_000).map(|i| 2 * i), props);
        let path = path.to_string_lossy().to_string();
        // DataFusion's own tables prune the row group by it.
        let own = SessionContext::new();
        own.register_parquet("t", &path, ParquetReadOptions::default())
            .await
            .unwrap();
        assert_eq!(
            bloom_metric(&own).await,
            "row_groups_pruned_bloom_filter=1 total → 0 matched"
        );
        // Ours do not read it.
        let ours = SessionContext::new();
        register(&ours, "t", schema, &[path]).unwrap();
        assert_eq!(
            bloom_metric(&ours).await,
            "row_groups_pruned_bloom_filter=1 total → 1 matched"
        );
    }
}
