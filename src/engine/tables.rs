//! The tables of ad-hoc SQL over one snapshot: `contacts` (without internal
//! ids), `events`, `imports`, `segments`, `segment_members` (served from
//! the bitmaps, only the segments a filter asks for), and the
//! `in_segment(contact_id, 'segment')` function (a bitmap lookup).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt64Array,
};
use datafusion::arrow::buffer::{BooleanBuffer, Buffer};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type, UInt64Type};
use datafusion::catalog::Session as CatalogSession;
use datafusion::common::{Result as DFResult, ScalarValue, exec_err};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{MemTable, TableProvider, TableType};
use datafusion::logical_expr::{
    ColumnarValue, Expr, Operator, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    TableProviderFilterPushDown, Volatility, col, lit,
};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::prelude::SessionContext;
use roaring::{RoaringBitmap, RoaringTreemap};

use crate::base::Base;
use crate::base::manifest::Manifest;
use crate::base::members::Members;
use crate::base::schema::{CONTACT_ID, IID, timestamp_type};
use crate::engine::Session;
use crate::engine::by_type::{TypeLayouts, TypeTest, only_types};
use crate::error::Result;

/// Internal id → `contact_id`, for every id ever handed out (0 for deleted).
#[derive(Debug)]
struct IdBook {
    by_iid: Vec<u64>,
}

impl IdBook {
    /// From the two id columns of the contacts file.
    fn load(dir: &std::path::Path, m: &Manifest) -> Result<IdBook> {
        let mut by_iid = vec![0u64; m.next_iid as usize];
        if let Some(f) = &m.contacts {
            let path = dir.join(&f.path);
            let (_, batches) = crate::base::table::read_parquet(&path, Some(&[IID, CONTACT_ID]))?;
            for b in batches {
                let (Some(iids), Some(cids)) = (
                    b.column_by_name(IID).and_then(|a| {
                        a.as_primitive_opt::<datafusion::arrow::datatypes::UInt32Type>()
                    }),
                    b.column_by_name(CONTACT_ID)
                        .and_then(|a| a.as_primitive_opt::<UInt64Type>()),
                ) else {
                    return Err(crate::error::Error::base(
                        dir,
                        format!("{}: the id columns are missing or mistyped", f.path),
                    ));
                };
                for (i, c) in iids.values().iter().zip(cids.values()) {
                    if let Some(slot) = by_iid.get_mut(*i as usize) {
                        *slot = *c;
                    }
                }
            }
        }
        Ok(IdBook { by_iid })
    }
}

/// Segment members of one snapshot, loaded on first use.
#[derive(Debug)]
struct MemberStore {
    dir: PathBuf,
    manifest: Arc<Manifest>,
    /// Read on first use: queries that name no segment never need it.
    ids: std::sync::OnceLock<std::result::Result<IdBook, String>>,
    loaded: Mutex<HashMap<String, Arc<Members>>>,
}

impl MemberStore {
    fn members(&self, key: &str) -> std::result::Result<Arc<Members>, String> {
        let rec = self
            .manifest
            .segment(key)
            .ok_or_else(|| format!("unknown segment {key:?}"))?;
        let mut cache = self.loaded.lock().expect("member cache lock");
        if let Some(m) = cache.get(&rec.id) {
            return Ok(m.clone());
        }
        let m = Arc::new(Members::load(&self.dir, rec).map_err(|e| e.to_string())?);
        cache.insert(rec.id.clone(), m.clone());
        Ok(m)
    }

    fn ids(&self) -> std::result::Result<&IdBook, String> {
        self.ids
            .get_or_init(|| IdBook::load(&self.dir, &self.manifest).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }

    fn contact_ids(&self, members: &RoaringBitmap) -> std::result::Result<RoaringTreemap, String> {
        let ids = self.ids()?;
        let mut cids: Vec<u64> = members.iter().map(|i| ids.by_iid[i as usize]).collect();
        cids.sort_unstable();
        RoaringTreemap::from_sorted_iter(cids).map_err(|e| e.to_string())
    }
}

/// `contacts` or `events` as users know them: the internal id hidden, and
/// `in_segment(contact_id, 'segment')` filters (negated or not) answered
/// in the scan from the segments' bitmaps of internal ids, with row groups
/// outside the members' id range skipped, instead of looking every
/// `contact_id` up in a set of contact ids.
struct UserTable {
    raw: Arc<dyn TableProvider>,
    schema: SchemaRef,
    store: Arc<MemberStore>,
    /// For `events`: the row groups of every file by its location in the
    /// scan, read on first use (None when a file mixes types).
    by_type: Option<std::sync::OnceLock<Option<TypeLayouts>>>,
}

impl fmt::Debug for UserTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UserTable")
    }
}

impl UserTable {
    fn new(raw: Arc<dyn TableProvider>, store: Arc<MemberStore>, events: bool) -> UserTable {
        let visible: Vec<Field> = raw
            .schema()
            .fields()
            .iter()
            .filter(|f| f.name() != IID)
            .map(|f| f.as_ref().clone())
            .collect();
        UserTable {
            raw,
            schema: Arc::new(Schema::new(visible)),
            store,
            by_type: events.then(std::sync::OnceLock::new),
        }
    }

    /// The row groups of every events file, when there are files and each
    /// is stored by type (None for `contacts`).
    fn type_layouts(&self) -> Option<&TypeLayouts> {
        let once = self.by_type.as_ref()?;
        once.get_or_init(|| {
            let store = &self.store;
            if store.manifest.events.is_empty() {
                return None;
            }
            crate::engine::by_type::layouts(&store.dir, &store.manifest.events)
        })
        .as_ref()
    }

    /// The test on the event type a filter is, when the files can answer it.
    fn type_test(&self, e: &Expr) -> Option<TypeTest> {
        self.type_layouts()?;
        TypeTest::of(e)
    }

    /// The raw table's scan, reading only the row groups of the types
    /// that pass `types` (every row when there is none).
    async fn raw_scan(
        &self,
        state: &dyn CatalogSession,
        projection: &[usize],
        filters: &[Expr],
        types: &[TypeTest],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let projection = Some(projection.to_vec());
        if types.is_empty() {
            return self
                .raw
                .scan(state, projection.as_ref(), filters, limit)
                .await;
        }
        let scan = self
            .raw
            .scan(state, projection.as_ref(), filters, None)
            .await?;
        if scan.is::<EmptyExec>() {
            return Ok(scan);
        }
        let test = TypeTest::All(types.to_vec());
        let layouts = self.type_layouts().ok_or_else(|| {
            datafusion::error::DataFusionError::Internal("events files mixing types".into())
        })?;
        let partitions = state.config_options().execution.target_partitions;
        only_types(&scan, &test, layouts, partitions, limit).ok_or_else(|| {
            datafusion::error::DataFusionError::Internal(
                "the events scan is not of whole files stored by type".into(),
            )
        })
    }

    /// The raw table's index of a column.
    fn raw_index(&self, name: &str) -> DFResult<usize> {
        Ok(self.raw.schema().index_of(name)?)
    }
}

/// The segment an `in_segment(contact_id, 'segment')` filter names, and
/// whether it is negated.
fn segment_filter(e: &Expr) -> Option<(String, bool)> {
    let (call, negated) = match e {
        Expr::Not(inner) => (inner.as_ref(), true),
        other => (other, false),
    };
    let Expr::ScalarFunction(f) = call else {
        return None;
    };
    match (f.func.name(), f.args.as_slice()) {
        ("in_segment", [Expr::Column(c), Expr::Literal(key, _)]) if c.name == CONTACT_ID => {
            key.try_as_str().flatten().map(|k| (k.to_string(), negated))
        }
        _ => None,
    }
}

#[async_trait]
impl TableProvider for UserTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DFResult<Vec<TableProviderFilterPushDown>> {
        let ours = |f: &Expr| segment_filter(f).is_some() || self.type_test(f).is_some();
        let others: Vec<&Expr> = filters.iter().copied().filter(|f| !ours(f)).collect();
        let mut raw = self.raw.supports_filters_pushdown(&others)?.into_iter();
        filters
            .iter()
            .map(|f| match ours(f) {
                true => Ok(TableProviderFilterPushDown::Exact),
                false => Ok(raw
                    .next()
                    .unwrap_or(TableProviderFilterPushDown::Unsupported)),
            })
            .collect()
    }

    async fn scan(
        &self,
        state: &dyn CatalogSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let wanted: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let mut raw_projection = wanted
            .iter()
            .map(|&i| self.raw_index(self.schema.field(i).name()))
            .collect::<DFResult<Vec<usize>>>()?;
        let (segments, others): (Vec<&Expr>, Vec<&Expr>) =
            filters.iter().partition(|f| segment_filter(f).is_some());
        let mut types = Vec::new();
        let mut others: Vec<&Expr> = others
            .into_iter()
            .filter(|f| match self.type_test(f) {
                Some(t) => {
                    types.push(t);
                    false
                }
                None => true,
            })
            .collect();
        if segments.is_empty() {
            let others: Vec<Expr> = others.into_iter().cloned().collect();
            return self
                .raw_scan(state, &raw_projection, &others, &types, limit)
                .await;
        }

        // The ids the filters keep: members of every segment named, of none
        // of those negated.
        let mut keep: Option<RoaringBitmap> = None;
        let mut drop = RoaringBitmap::new();
        for (key, negated) in segments.iter().filter_map(|f| segment_filter(f)) {
            let members = self
                .store
                .members(&key)
                .map_err(datafusion::error::DataFusionError::Execution)?;
            if negated {
                drop |= &members.members;
            } else {
                keep = Some(match keep {
                    None => members.members.clone(),
                    Some(k) => k & &members.members,
                });
            }
        }
        let ids = IdSet::new(self.store.manifest.next_iid, keep.as_ref(), &drop);
        let range = keep.as_ref().map(|k| (k.min(), k.max()));
        let bounds: Vec<Expr> = match range {
            Some((Some(lo), Some(hi))) => vec![col(IID).gt_eq(lit(lo)), col(IID).lt_eq(lit(hi))],
            // No member at all: an empty range.
            Some(_) => vec![col(IID).lt(lit(0u32))],
            None => vec![],
        };
        others.extend(bounds.iter());
        let others: Vec<Expr> = others.into_iter().cloned().collect();

        // Read the internal id beside the wanted columns, keep the rows
        // whose id is in the set, drop the id.
        let iid_at = raw_projection.len();
        raw_projection.push(self.raw_index(IID)?);
        let scan = self
            .raw_scan(state, &raw_projection, &others, &types, None)
            .await?;
        let iid = Arc::new(Column::new(IID, iid_at)) as Arc<dyn PhysicalExpr>;
        let test = ScalarFunctionExpr::try_new(
            Arc::new(ScalarUDF::from(ids)),
            vec![iid],
            scan.schema().as_ref(),
            Arc::new(state.config_options().clone()),
        )?;
        let filter = Arc::new(FilterExec::try_new(Arc::new(test), scan)?);
        let columns: Vec<(Arc<dyn PhysicalExpr>, String)> = wanted
            .iter()
            .enumerate()
            .map(|(at, &i)| {
                let name = self.schema.field(i).name().clone();
                (
                    Arc::new(Column::new(&name, at)) as Arc<dyn PhysicalExpr>,
                    name,
                )
            })
            .collect();
        Ok(Arc::new(ProjectionExec::try_new(columns, filter)?))
    }
}

/// `id_in_set(_iid)` for the ids of `ids` below `end`.
pub(crate) fn id_in_set(ids: &RoaringBitmap, end: u32) -> Expr {
    let set = IdSet::new(end, Some(ids), &RoaringBitmap::new());
    ScalarUDF::from(set).call(vec![datafusion::prelude::col(crate::base::schema::IID)])
}

/// `id_in_set(_iid)`: whether an internal id is in a set, one bit per id.
struct IdSet {
    bits: Buffer,
    signature: Signature,
}

impl PartialEq for IdSet {
    fn eq(&self, other: &IdSet) -> bool {
        self.bits.as_slice() == other.bits.as_slice()
    }
}

impl Eq for IdSet {}

impl std::hash::Hash for IdSet {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bits.as_slice().hash(state);
    }
}

impl IdSet {
    /// The ids below `end` in `keep` (every id when `None`) and not in `drop`.
    fn new(end: u32, keep: Option<&RoaringBitmap>, drop: &RoaringBitmap) -> IdSet {
        let words = (end as usize).div_ceil(64);
        let mut bits = match keep {
            Some(_) => vec![0u64; words],
            None => vec![u64::MAX; words],
        };
        let mut set = |i: u32, on: bool| {
            if let Some(w) = bits.get_mut(i as usize / 64) {
                let bit = 1u64 << (i % 64);
                if on { *w |= bit } else { *w &= !bit }
            }
        };
        if let Some(k) = keep {
            k.iter().for_each(|i| set(i, true));
        }
        drop.iter().for_each(|i| set(i, false));
        IdSet {
            bits: Buffer::from_vec(bits),
            signature: Signature::exact(vec![DataType::UInt32], Volatility::Immutable),
        }
    }
}

impl fmt::Debug for IdSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("id_in_set")
    }
}

impl ScalarUDFImpl for IdSet {
    fn name(&self) -> &str {
        "id_in_set"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let ids = args.args[0].to_array(args.number_rows)?;
        let ids = ids.as_primitive::<UInt32Type>();
        let found = self.found(ids.values());
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::new(
            found,
            ids.nulls().cloned(),
        ))))
    }
}

impl IdSet {
    /// Whether each id is in the set.
    fn found(&self, values: &[u32]) -> BooleanBuffer {
        let n = values.len();
        let first = values.first().map_or(0, |&v| v as usize);
        // Ids one after the other (the contacts file, without deletions
        // among them): their answers are the bits of the set from the first.
        let consecutive = values
            .iter()
            .enumerate()
            .fold(true, |on, (r, &v)| on & (v as usize == first + r));
        match consecutive && first + n <= self.bits.len() * 8 {
            true => BooleanBuffer::new(self.bits.clone(), first, n),
            false => {
                let words = self.bits.typed_data::<u64>();
                BooleanBuffer::collect_bool(n, |r| {
                    let i = values[r] as usize;
                    words.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
                })
            }
        }
    }
}

/// The ad-hoc SQL context of a version of the base, built on a session of
/// its own (its internal tables are replaced by the user-facing ones).
pub fn user_context(base: &Base, m: &Arc<Manifest>) -> Result<SessionContext> {
    let session = Session::new(base, m.clone())?;
    // `contacts` and `events` as users know them: without the internal id.
    let user = session.ctx.clone();
    let store = Arc::new(MemberStore {
        dir: base.dir().to_path_buf(),
        manifest: m.clone(),
        ids: std::sync::OnceLock::new(),
        loaded: Mutex::new(HashMap::new()),
    });
    for name in [
        crate::engine::session::CONTACTS,
        crate::engine::session::EVENTS,
    ] {
        let raw = user.deregister_table(name)?.ok_or_else(|| {
            crate::error::Error::Internal(format!("session without table {name}"))
        })?;
        let events = name == crate::engine::session::EVENTS;
        user.register_table(name, Arc::new(UserTable::new(raw, store.clone(), events)))?;
    }
    user.register_table("segments", Arc::new(segments_table(base, m)?))?;
    user.register_table("imports", Arc::new(imports_table(m)?))?;
    user.register_table(
        "segment_members",
        Arc::new(SegmentMembers {
            store: store.clone(),
        }),
    )?;
    user.register_udf(ScalarUDF::from(InSegment {
        store,
        cache: Mutex::new(HashMap::new()),
        signature: Signature::any(2, Volatility::Immutable),
    }));
    Ok(user)
}

fn texts(values: impl Iterator<Item = Option<String>>) -> ArrayRef {
    Arc::new(values.collect::<StringArray>())
}

fn counts(values: impl Iterator<Item = Option<u64>>) -> ArrayRef {
    Arc::new(values.collect::<UInt64Array>())
}

fn instants(values: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(
        values
            .collect::<TimestampMicrosecondArray>()
            .with_timezone("UTC"),
    )
}

fn segments_table(base: &Base, m: &Manifest) -> Result<MemTable> {
    let now = chrono::Utc::now();
    let computing = crate::base::status::computing_now(base.dir());
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("contacts", DataType::UInt64, true),
        Field::new("email_optins", DataType::UInt64, true),
        Field::new("sms_optins", DataType::UInt64, true),
        Field::new("computed_at", timestamp_type(), true),
        Field::new("duration_ms", DataType::UInt64, true),
        Field::new("error", DataType::Utf8, true),
    ]));
    let s = &m.segments;
    let stat = |f: fn(&crate::base::manifest::SegmentStats) -> u64| {
        counts(s.iter().map(move |r| r.stats.as_ref().map(f)))
    };
    let cols: Vec<ArrayRef> = vec![
        texts(s.iter().map(|r| Some(r.id.clone()))),
        texts(s.iter().map(|r| Some(r.name.clone()))),
        texts(s.iter().map(|r| {
            Some(
                if r.criteria.is_some() {
                    "dynamic"
                } else {
                    "static"
                }
                .to_string(),
            )
        })),
        texts(s.iter().map(|r| {
            Some(crate::base::status::effective_status(r, &base.config, now, computing).to_string())
        })),
        stat(|st| st.contacts),
        stat(|st| st.email_optins),
        stat(|st| st.sms_optins),
        instants(
            s.iter()
                .map(|r| r.stats.as_ref().map(|st| st.computed_at.timestamp_micros())),
        ),
        stat(|st| st.duration_ms),
        texts(s.iter().map(|r| r.error.clone())),
    ];
    let batch = RecordBatch::try_new(schema.clone(), cols)?;
    Ok(MemTable::try_new(schema, vec![vec![batch]])?)
}

fn imports_table(m: &Manifest) -> Result<MemTable> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("at", timestamp_type(), false),
        Field::new("file", DataType::Utf8, false),
        Field::new("rows_added", DataType::UInt64, false),
        Field::new("rows_updated", DataType::UInt64, false),
        Field::new("rows_skipped", DataType::UInt64, false),
    ]));
    let i = &m.imports;
    let cols: Vec<ArrayRef> = vec![
        texts(i.iter().map(|r| Some(r.id.clone()))),
        texts(i.iter().map(|r| Some(r.name.clone()))),
        texts(
            i.iter()
                .map(|r| Some(format!("{:?}", r.kind).to_lowercase())),
        ),
        instants(i.iter().map(|r| Some(r.at.timestamp_micros()))),
        texts(i.iter().map(|r| Some(r.file.clone()))),
        counts(i.iter().map(|r| Some(r.rows_added))),
        counts(i.iter().map(|r| Some(r.rows_updated))),
        counts(i.iter().map(|r| Some(r.rows_skipped))),
    ];
    let batch = RecordBatch::try_new(schema.clone(), cols)?;
    Ok(MemTable::try_new(schema, vec![vec![batch]])?)
}

/// `segment_members(segment_id, contact_id, entered_at)`, read from the
/// bitmaps; a filter on `segment_id` (=, IN) limits the segments read.
struct SegmentMembers {
    store: Arc<MemberStore>,
}

impl fmt::Debug for SegmentMembers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SegmentMembers")
    }
}

fn members_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("segment_id", DataType::Utf8, false),
        Field::new(CONTACT_ID, DataType::UInt64, false),
        Field::new("entered_at", timestamp_type(), true),
    ]))
}

/// The segment ids a filter selects (`segment_id = 'x'`, `segment_id IN (...)`).
fn segment_ids_of(e: &Expr) -> Option<Vec<String>> {
    let is_seg = |x: &Expr| matches!(x, Expr::Column(c) if c.name == "segment_id");
    let text = |x: &Expr| match x {
        Expr::Literal(ScalarValue::Utf8(Some(s)), _) => Some(s.clone()),
        _ => None,
    };
    match e {
        Expr::BinaryExpr(b) if b.op == Operator::Eq => {
            if is_seg(&b.left) {
                text(&b.right).map(|s| vec![s])
            } else if is_seg(&b.right) {
                text(&b.left).map(|s| vec![s])
            } else {
                None
            }
        }
        Expr::InList(l) if !l.negated && is_seg(&l.expr) => l.list.iter().map(text).collect(),
        _ => None,
    }
}

#[async_trait]
impl TableProvider for SegmentMembers {
    fn schema(&self) -> SchemaRef {
        members_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DFResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if segment_ids_of(f).is_some() {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn CatalogSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let mut wanted: Option<BTreeSet<String>> = None;
        for f in filters {
            if let Some(ids) = segment_ids_of(f) {
                let ids: BTreeSet<String> = ids.into_iter().collect();
                wanted = Some(match wanted {
                    None => ids,
                    Some(w) => w.intersection(&ids).cloned().collect(),
                });
            }
        }
        let m = &self.store.manifest;
        let ids: Vec<String> = match wanted {
            Some(w) => w
                .into_iter()
                .filter(|k| m.segments.iter().any(|s| &s.id == k))
                .collect(),
            None => m.segments.iter().map(|s| s.id.clone()).collect(),
        };
        let mut batches = Vec::new();
        for id in ids {
            let members = self
                .store
                .members(&id)
                .map_err(datafusion::error::DataFusionError::Execution)?;
            let iids: Vec<u32> = members.members.iter().collect();
            let book = self
                .store
                .ids()
                .map_err(datafusion::error::DataFusionError::Execution)?;
            let cids: UInt64Array = iids
                .iter()
                .map(|i| Some(book.by_iid[*i as usize]))
                .collect();
            let entered: TimestampMicrosecondArray = iids
                .iter()
                .map(|i| members.entered_at(*i))
                .collect::<TimestampMicrosecondArray>()
                .with_timezone("UTC");
            let seg: StringArray = std::iter::repeat_n(Some(id.as_str()), iids.len()).collect();
            batches.push(RecordBatch::try_new(
                members_schema(),
                vec![Arc::new(seg), Arc::new(cids), Arc::new(entered)],
            )?);
        }
        Ok(MemorySourceConfig::try_new_exec(
            &[batches],
            members_schema(),
            projection.cloned(),
        )?)
    }
}

/// `in_segment(contact_id, 'segment')`: membership by bitmap lookup.
struct InSegment {
    store: Arc<MemberStore>,
    cache: Mutex<HashMap<String, Arc<RoaringTreemap>>>,
    signature: Signature,
}

impl fmt::Debug for InSegment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("in_segment")
    }
}

impl PartialEq for InSegment {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.store, &other.store)
    }
}
impl Eq for InSegment {}
impl std::hash::Hash for InSegment {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        "in_segment".hash(state);
    }
}

impl InSegment {
    fn contact_ids(&self, key: &str) -> DFResult<Arc<RoaringTreemap>> {
        let mut cache = self.cache.lock().expect("in_segment cache lock");
        if let Some(t) = cache.get(key) {
            return Ok(t.clone());
        }
        let members = self
            .store
            .members(key)
            .map_err(datafusion::error::DataFusionError::Execution)?;
        let t = Arc::new(
            self.store
                .contact_ids(&members.members)
                .map_err(datafusion::error::DataFusionError::Execution)?,
        );
        cache.insert(key.to_string(), t.clone());
        Ok(t)
    }
}

impl ScalarUDFImpl for InSegment {
    fn name(&self) -> &str {
        "in_segment"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let key = match &args.args[1] {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(s))) => s.clone(),
            _ => {
                return exec_err!(
                    "in_segment(contact_id, 'segment id'): the segment must be a text literal"
                );
            }
        };
        let set = self.contact_ids(&key)?;
        let ids = args.args[0].to_array(args.number_rows)?;
        let ids = datafusion::arrow::compute::cast(&ids, &DataType::UInt64)?;
        let ids = ids.as_primitive::<UInt64Type>();
        let out: BooleanArray = ids.iter().map(|c| c.map(|c| set.contains(c))).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids one after the other (answered from the set's bits in place)
    /// and any others (looked up one by one) answer alike.
    #[test]
    fn ids_in_a_set_are_found_one_after_the_other_or_one_by_one() {
        let end = 1000;
        let keep: RoaringBitmap = (0..end).filter(|i| i % 7 == 0 || i % 11 < 3).collect();
        let drop: RoaringBitmap = (0..end).filter(|i| i % 13 == 0).collect();
        let set = IdSet::new(end, Some(&keep), &drop);
        let expected = |i: u32| i < end && keep.contains(i) && !drop.contains(i);
        let mut cases: Vec<Vec<u32>> = vec![vec![]];
        for start in [0u32, 1, 5, 63, 64, 200, 990] {
            for n in [1u32, 7, 9, 64, 65, 300] {
                let run: Vec<u32> = (start..start + n).collect();
                let mut gap = run.clone();
                gap.retain(|&i| i != start + n / 2 || n < 3);
                let mut back = run.clone();
                back.reverse();
                cases.extend([run, gap, back]);
            }
        }
        cases.push(vec![3, 3, 4]);
        cases.push(vec![998, 999, 1000, 1001]);
        for ids in cases {
            let found = set.found(&ids);
            let want: Vec<bool> = ids.iter().map(|&i| expected(i)).collect();
            assert_eq!(found.iter().collect::<Vec<bool>>(), want, "{ids:?}");
        }
    }
}
