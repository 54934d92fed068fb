//! Segment lifecycle: preview, create, edit, duplicate, delete, pause,
//! resume, refresh, members, export, audience.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{
    Array, BooleanArray, RecordBatch, TimestampMicrosecondArray, UInt32Array,
};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{Field, Schema};
use roaring::RoaringBitmap;

use crate::base::contacts::load_contacts;
use crate::base::manifest::{History, Manifest, SegmentRecord, SegmentStatus};
use crate::base::members::Members;
use crate::base::schema::{IID, timestamp_type};
use crate::base::{Base, Snapshot, Writer};
use crate::compile::expr::Clock;
use crate::criteria::graph::{graph_of, resolve_refs};
use crate::criteria::validate::validate;
use crate::criteria::{Criterion, Definition};
use crate::engine::Session;
use crate::error::{Error, Result};
use crate::jobs::ManifestCatalog;
use crate::jobs::recompute::{RunReport, compute, compute_into};

/// Check a definition against a version of the base: schema, references
/// and cycles (a definition replacing a segment of the same id takes its
/// place in the graph). [`check_plans`] then plans what SQL it holds.
pub fn check_definition(m: &Manifest, base: &Base, def: &Definition) -> Result<()> {
    let cat = ManifestCatalog {
        manifest: m,
        config: &base.config,
    };
    // A definition may refer to itself only through a cycle, caught below.
    validate(
        &def.criteria,
        "criteria",
        &SelfAware {
            inner: &cat,
            id: &def.id,
            name: &def.name,
        },
    )?;
    let deps = resolve_refs(m, &def.criteria, &def.id, &def.name);
    if deps.is_empty() {
        // Referring to no segment, it can close no cycle.
        return Ok(());
    }
    let mut g = graph_of(m)?;
    g.add(&def.id, deps);
    if let Some(cycle) = g.cycle_from(&def.id) {
        return Err(Error::definition(
            "criteria",
            format!("reference cycle: {}", cycle.join(" → ")),
        ));
    }
    Ok(())
}

/// Plan every leaf of a definition without reading data: each `sql`
/// predicate against the contacts table, each `query` over the SQL tables
/// (down to its `contact_id`), each behaviour condition and field
/// condition; so that what cannot run is refused at save with its JSON
/// path, rather than saved and failing every night. Only failures that
/// depend on data at run time remain (memory, a referenced segment
/// failing).
pub async fn check_plans(session: &Session, def: &Definition) -> Result<()> {
    let clock = Clock::new(Utc::now(), session.base.tz());
    let contacts = datafusion::common::DFSchema::try_from_qualified_schema(
        crate::engine::session::CONTACTS,
        &session.contacts_schema,
    )?;
    let contacts_plan = |node: &Criterion| {
        let e = crate::compile::contacts_expr(node, session, &clock)?;
        session.physical_expr(e, &contacts).map(|_| ())
    };
    let mut queries = Vec::new();
    def.criteria.walk("criteria", &mut |node, path| {
        let at = |what: &str, e: Error| Error::definition(format!("{path}.{what}"), one_line(e));
        match node {
            Criterion::Sql(_) => contacts_plan(node).map_err(|e| at("sql", e)),
            Criterion::Field(_) => contacts_plan(node).map_err(|e| at("field", e)),
            Criterion::Behavior(b) => session
                .behavior_parts(b, &clock)
                .map(|_| ())
                .map_err(|e| at("behavior", e)),
            Criterion::Query(q) => {
                queries.push((format!("{path}.query"), q.clone()));
                Ok(())
            }
            _ => Ok(()),
        }
    })?;
    for (path, q) in queries {
        let planned = match session.query_plan(&q).await {
            Ok(df) => df
                .create_physical_plan()
                .await
                .map(|_| ())
                .map_err(Error::from),
            Err(e) => Err(e),
        };
        planned.map_err(|e| Error::definition(path, one_line(e)))?;
    }
    Ok(())
}

/// The message of a planning error on one line (DataFusion lists the
/// valid columns on a line of their own), without the internal id column.
fn one_line(e: Error) -> String {
    let message = match e {
        Error::Definition { message, .. } => message,
        e => e.to_string(),
    };
    message
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace("contacts._iid, ", "")
}

struct SelfAware<'a> {
    inner: &'a ManifestCatalog<'a>,
    id: &'a str,
    name: &'a str,
}

impl crate::criteria::validate::Catalog for SelfAware<'_> {
    fn contact_field(&self, n: &str) -> Option<crate::base::schema::FieldType> {
        self.inner.contact_field(n)
    }
    fn event_column(&self, n: &str) -> Option<crate::base::schema::FieldType> {
        self.inner.event_column(n)
    }
    fn has_segment(&self, k: &str) -> bool {
        k == self.id || k == self.name || self.inner.has_segment(k)
    }
    fn has_import(&self, k: &str) -> bool {
        self.inner.has_import(k)
    }
}

/// Count and a sample of a definition, nothing saved.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Preview {
    pub count: u64,
    /// The contact ids of the first ten members.
    pub sample: Vec<u64>,
    pub duration_ms: u64,
    /// With [`preview_with_profiles`]: `contact_id` and the
    /// [`PROFILE_COLUMNS`] of the sample, read in the same pass.
    #[serde(skip)]
    pub profiles: Option<RecordBatch>,
}

pub async fn preview(snap: &Snapshot, def: &Definition, as_of: DateTime<Utc>) -> Result<Preview> {
    preview_reading(snap, def, as_of, false).await
}

/// A preview with the profiles of its sample (as a criteria builder shows it).
pub async fn preview_with_profiles(
    snap: &Snapshot,
    def: &Definition,
    as_of: DateTime<Utc>,
) -> Result<Preview> {
    preview_reading(snap, def, as_of, true).await
}

async fn preview_reading(
    snap: &Snapshot,
    def: &Definition,
    as_of: DateTime<Utc>,
    profiles: bool,
) -> Result<Preview> {
    let t0 = std::time::Instant::now();
    check_definition(&snap.manifest, &snap.base, def)?;
    let session = Session::new(&snap.base, snap.manifest.clone())?;
    check_plans(&session, def).await?;
    let clock = Clock::new(as_of, snap.base.tz());
    let targets = vec![(def.id.clone(), def.name.clone(), def.criteria.clone())];
    let comp = compute(&session, &snap.manifest, snap.dir(), &clock, &targets).await;
    let bm = comp
        .into_values()
        .next()
        .expect("one result")
        .map_err(Error::from)?;
    let sample_iids: Vec<u32> = bm.iter().take(10).collect();
    let m = &snap.manifest;
    let columns: Vec<&str> = PROFILE_COLUMNS
        .iter()
        .copied()
        .filter(|c| profiles && m.fields.iter().any(|f| f.name == *c))
        .collect();
    let rows = contact_rows(snap.dir(), m, &sample_iids, &columns)?;
    Ok(Preview {
        count: bm.len(),
        sample: match &rows {
            Some(batch) => contact_id_values(batch)?,
            None => Vec::new(),
        },
        duration_ms: t0.elapsed().as_millis() as u64,
        profiles: rows.filter(|_| profiles),
    })
}

fn contact_id_values(batch: &RecordBatch) -> Result<Vec<u64>> {
    let cids = batch
        .column_by_name("contact_id")
        .and_then(|a| {
            a.as_any()
                .downcast_ref::<datafusion::arrow::array::UInt64Array>()
        })
        .ok_or_else(|| Error::Internal("contact_id column".into()))?;
    Ok(cids.values().to_vec())
}

/// The user ids of some internal ids, in id order.
pub fn contact_ids_of(dir: &Path, m: &Manifest, iids: &[u32]) -> Result<Vec<u64>> {
    match contact_rows(dir, m, iids, &[])? {
        Some(batch) => contact_id_values(&batch),
        None => Ok(Vec::new()),
    }
}

/// The profile columns a preview shows of its sample, those the base has.
pub const PROFILE_COLUMNS: &[&str] = &[
    "first_name",
    "last_name",
    "email",
    "email_optin",
    "sms_optin",
];

/// `contact_id` and `columns` of the contacts of some internal ids, in id
/// order. Only the row groups that may hold the ids are read (contacts are
/// stored in id order).
fn contact_rows(
    dir: &Path,
    m: &Manifest,
    iids: &[u32],
    columns: &[&str],
) -> Result<Option<RecordBatch>> {
    let Some(f) = &m.contacts else {
        return Ok(None);
    };
    let want: RoaringBitmap = iids.iter().copied().collect();
    let (Some(lo), Some(hi)) = (want.min(), want.max()) else {
        return Ok(None);
    };
    let mut read = vec![IID, "contact_id"];
    read.extend(columns);
    let batch = crate::base::table::read_parquet_key_range(&dir.join(&f.path), &read, IID, lo, hi)?;
    let ids = batch
        .column_by_name(IID)
        .and_then(|a| a.as_any().downcast_ref::<UInt32Array>())
        .ok_or_else(|| Error::Internal("_iid column".into()))?;
    let keep: BooleanArray = ids
        .values()
        .iter()
        .map(|i| Some(want.contains(*i)))
        .collect();
    let batch = datafusion::arrow::compute::filter_record_batch(&batch, &keep)?;
    let without_iid: Vec<usize> = (1..batch.num_columns()).collect();
    Ok(Some(batch.project(&without_iid)?))
}

pub fn new_record(def: &Definition, criteria: Option<serde_json::Value>) -> SegmentRecord {
    let now = Utc::now();
    SegmentRecord {
        id: def.id.clone(),
        name: def.name.clone(),
        description: def.description.clone(),
        criteria,
        paused: false,
        status: SegmentStatus::Computing,
        error: None,
        needs_refresh: false,
        created_at: now,
        updated_at: now,
        stats: None,
        members: None,
        members_since: Vec::new(),
        history: History::default(),
    }
}

fn check_unique(m: &Manifest, id: &str, name: &str, except: Option<&str>) -> Result<()> {
    for s in &m.segments {
        if Some(s.id.as_str()) == except {
            continue;
        }
        if s.id == id {
            return Err(Error::Conflict(format!(
                "a segment with id {id:?} already exists"
            )));
        }
        if s.name == name {
            return Err(Error::Conflict(format!(
                "a segment named {name:?} already exists (id {})",
                s.id
            )));
        }
    }
    Ok(())
}

/// Compute a segment now, and recompute it from now on if it was paused
/// (resume). Returns its id and the run.
pub async fn refresh(
    w: &mut Writer,
    key: &str,
    as_of: DateTime<Utc>,
) -> Result<(String, RunReport)> {
    let id = set_paused(w, key, false)?;
    let report = compute_into(w, std::slice::from_ref(&id), as_of).await?;
    Ok((id, report))
}

/// Copy a dynamic segment's definition and description under a new name,
/// save the copy and compute it. Returns the copy's definition, the id of
/// the segment copied, and the run.
pub async fn duplicate(
    w: &mut Writer,
    key: &str,
    name: &str,
    as_of: DateTime<Utc>,
) -> Result<(Definition, String, RunReport)> {
    let rec = w.next.find_segment(key)?;
    let source = rec.id.clone();
    let criteria = rec
        .criteria
        .clone()
        .ok_or_else(|| Error::usage(format!("{} is a static segment", rec.id)))?;
    let def = Definition::parse(&serde_json::json!({
        "name": name,
        "description": rec.description,
        "criteria": criteria,
    }))?;
    let report = create(w, &def, as_of).await?;
    Ok((def, source, report))
}

/// Validate, save and compute a dynamic segment.
pub async fn create(w: &mut Writer, def: &Definition, as_of: DateTime<Utc>) -> Result<RunReport> {
    check_unique(&w.next, &def.id, &def.name, None)?;
    check_definition(&w.next, &w.base, def)?;
    check_plans(&Session::new(&w.base, Arc::new(w.next.clone()))?, def).await?;
    w.next
        .segments
        .push(new_record(def, Some(def.criteria_json.clone())));
    compute_into(w, std::slice::from_ref(&def.id), as_of).await
}

/// Replace the definition of a segment and recompute it.
pub async fn edit(
    w: &mut Writer,
    id: &str,
    def: &Definition,
    as_of: DateTime<Utc>,
) -> Result<RunReport> {
    let rec = w.next.find_segment(id)?;
    let id = rec.id.clone();
    if rec.criteria.is_none() {
        return Err(Error::usage(format!(
            "{id} is a static segment: change it with segment add/remove/replace"
        )));
    }
    let mut def = def.clone();
    def.id = id.clone();
    check_unique(&w.next, &def.id, &def.name, Some(&id))?;
    check_definition(&w.next, &w.base, &def)?;
    check_plans(&Session::new(&w.base, Arc::new(w.next.clone()))?, &def).await?;
    let rec = w.next.segment_mut(&id).expect("checked");
    rec.name = def.name.clone();
    rec.description = def.description.clone();
    rec.criteria = Some(def.criteria_json.clone());
    rec.updated_at = Utc::now();
    compute_into(w, std::slice::from_ref(&id), as_of).await
}

/// Delete a segment, refused while another segment refers to it.
pub fn delete(w: &mut Writer, id: &str) -> Result<String> {
    let rec = w.next.find_segment(id)?;
    let id = rec.id.clone();
    let g = graph_of(&w.next)?;
    let users: Vec<String> = g.dependants(&id).into_iter().filter(|d| d != &id).collect();
    if !users.is_empty() {
        return Err(Error::Conflict(format!(
            "segment {id} is used by {}; change or delete them first",
            users.join(", ")
        )));
    }
    w.next.segments.retain(|s| s.id != id);
    Ok(id)
}

pub fn set_paused(w: &mut Writer, id: &str, paused: bool) -> Result<String> {
    let rec = w.next.find_segment_mut(id)?;
    rec.paused = paused;
    rec.status = if paused {
        SegmentStatus::Paused
    } else {
        SegmentStatus::UpToDate
    };
    rec.updated_at = Utc::now();
    Ok(rec.id.clone())
}

/// Members of a segment from a snapshot.
pub fn members_of(snap: &Snapshot, id: &str) -> Result<(SegmentRecord, Members)> {
    let rec = snap.manifest.find_segment(id)?.clone();
    let m = Members::load(snap.dir(), &rec)?;
    Ok((rec, m))
}

/// Contact rows of a set of internal ids, with `entered_at` when cohorts are given;
/// `columns` limits the fields (empty = all).
pub fn members_batch(
    dir: &Path,
    m: &Manifest,
    ids: &RoaringBitmap,
    members: Option<&Members>,
    columns: &[String],
) -> Result<RecordBatch> {
    let all = load_contacts(dir, m)?;
    let iids = all
        .column_by_name(IID)
        .and_then(|a| a.as_any().downcast_ref::<UInt32Array>())
        .ok_or_else(|| Error::Internal("contacts without _iid".into()))?;
    let mask: BooleanArray = iids
        .values()
        .iter()
        .map(|i| Some(ids.contains(*i)))
        .collect();
    let picked = filter_record_batch(&all, &mask)?;
    let picked_iids = picked
        .column(0)
        .as_any()
        .downcast_ref::<UInt32Array>()
        .expect("u32")
        .clone();
    let mut fields: Vec<Field> = Vec::new();
    let mut cols: Vec<Arc<dyn Array>> = Vec::new();
    let schema = picked.schema();
    for (i, f) in schema.fields().iter().enumerate() {
        if f.name() == IID {
            continue;
        }
        if f.name() != "contact_id" && !columns.is_empty() && !columns.iter().any(|c| c == f.name())
        {
            continue;
        }
        fields.push(f.as_ref().clone());
        cols.push(picked.column(i).clone());
    }
    for c in columns {
        if c != "contact_id" && c != "entered_at" && schema.field_with_name(c).is_err() {
            return Err(Error::usage(format!("unknown column {c:?}")));
        }
    }
    if let Some(mem) = members
        && (columns.is_empty() || columns.iter().any(|c| c == "entered_at"))
    {
        let entered: TimestampMicrosecondArray = picked_iids
            .values()
            .iter()
            .map(|i| mem.entered_at(*i))
            .collect::<TimestampMicrosecondArray>()
            .with_timezone("UTC");
        fields.push(Field::new("entered_at", timestamp_type(), true));
        cols.push(Arc::new(entered));
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

/// Contacts of A or B, not in C, reachable on a channel.
pub async fn audience(
    w: &mut Writer,
    include: &[String],
    exclude: &[String],
    channel: Channel,
    as_of: DateTime<Utc>,
) -> Result<RoaringBitmap> {
    let mut ids: Vec<String> = Vec::new();
    for k in include.iter().chain(exclude) {
        let rec = w.next.find_segment(k)?;
        ids.push(rec.id.clone());
    }
    let reach = match channel {
        Channel::Email => ["email_subscribers", "email_bad_addresses"],
        Channel::Sms => ["sms_subscribers", "sms_bad_numbers"],
    };
    ids.extend(reach.iter().map(|s| s.to_string()));
    // Refresh the segments involved and their dependencies (active ones only).
    let g = graph_of(&w.next)?;
    let closure: Vec<String> = g
        .closure(&ids)
        .into_iter()
        .filter(|id| {
            w.next
                .segment(id)
                .is_some_and(|s| !s.paused && s.criteria.is_some())
        })
        .collect();
    let report = compute_into(w, &closure, as_of).await?;
    if let Some(f) = report.failures().first() {
        return Err(Error::usage(format!(
            "segment {} failed: {}",
            f.id,
            f.error.clone().unwrap_or_default()
        )));
    }
    let dir = w.dir().to_path_buf();
    let load = |k: &str| -> Result<RoaringBitmap> {
        let rec = w.next.find_segment(k)?;
        Ok(Members::load(&dir, rec)?.members)
    };
    let mut out = RoaringBitmap::new();
    for k in include {
        out |= load(k)?;
    }
    for k in exclude {
        out -= load(k)?;
    }
    out &= load(reach[0])?;
    out -= load(reach[1])?;
    Ok(out)
}

/// Where an audience is sent: reachable contacts have an address or
/// number, opted in, and not a bad one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Email,
    Sms,
}

/// Where the members of a static segment come from.
#[derive(Debug, Clone)]
pub enum StaticSource {
    /// A CSV or Parquet file with a `contact_id` column.
    File(std::path::PathBuf),
    /// A read-only SQL query returning `contact_id`.
    Query(String),
    /// Contact ids given as a list.
    Ids(Vec<u64>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaticChange {
    Add,
    Remove,
    Replace,
}

/// The internal ids of contact ids; unknown ones are refused, the message
/// giving their count and the first of them.
fn known_ids(
    w: &Writer,
    ids: impl IntoIterator<Item = u64>,
    refuse: impl FnOnce(String) -> Error,
) -> Result<RoaringBitmap> {
    let map = crate::base::ids::ContactIdMap::load(w.dir(), &w.next)?;
    let mut out = RoaringBitmap::new();
    let mut unknown = Vec::new();
    for id in ids {
        match map.get(id) {
            Some(i) => {
                out.insert(i);
            }
            None => unknown.push(id),
        }
    }
    match unknown.first() {
        None => Ok(out),
        Some(first) => Err(refuse(format!(
            "{} contact id(s) are not in the base (first: {first})",
            unknown.len()
        ))),
    }
}

/// The internal ids of a source; unknown contact ids are refused with their count.
async fn source_bitmap(w: &Writer, source: &StaticSource) -> Result<RoaringBitmap> {
    match source {
        StaticSource::File(path) => {
            let input = crate::base::input::InputTable::read(path)?;
            let ids = crate::base::ids::input_contact_ids(&input)?;
            known_ids(w, ids, |message| {
                Error::input(
                    path,
                    crate::error::Place::Column("contact_id".into()),
                    message,
                )
            })
        }
        StaticSource::Ids(ids) => known_ids(w, ids.iter().copied(), |message| {
            Error::definition("contact_ids", message)
        }),
        StaticSource::Query(q) => {
            let session = Session::new(&w.base, Arc::new(w.next.clone()))?;
            session.query_bitmap(q).await
        }
    }
}

async fn store_static(w: &mut Writer, id: &str, members: RoaringBitmap) -> Result<u64> {
    let t0 = std::time::Instant::now();
    let session = Session::new(&w.base, Arc::new(w.next.clone()))?;
    let opt = crate::jobs::recompute::optins(&session).await?;
    let mut segments = std::mem::take(&mut w.next.segments);
    let rec = segments
        .iter_mut()
        .find(|s| s.id == id)
        .ok_or_else(|| Error::UnknownSegment {
            key: id.to_string(),
        })?;
    let now = Utc::now();
    let n = members.len();
    let r = crate::base::members::store_result(
        w,
        rec,
        &crate::base::members::NewMembers::Whole(members),
        &opt,
        now,
        now,
        t0.elapsed().as_millis() as u64,
    );
    w.next.segments = segments;
    r.map(|_| n)
}

/// Create a static segment from a file or a query.
pub async fn create_static(
    w: &mut Writer,
    id: Option<&str>,
    name: &str,
    source: &StaticSource,
) -> Result<(String, u64)> {
    let def = Definition::parse(&serde_json::json!({
        "id": id.map(str::to_string).unwrap_or_else(|| crate::base::manifest::slug(name)),
        "name": name,
        "criteria": {"all": []},
    }))?;
    check_unique(&w.next, &def.id, &def.name, None)?;
    let members = source_bitmap(w, source).await?;
    w.next.segments.push(new_record(&def, None));
    let n = store_static(w, &def.id, members).await?;
    Ok((def.id, n))
}

/// Add, remove or replace members of a static segment.
pub async fn change_static(
    w: &mut Writer,
    id: &str,
    change: StaticChange,
    source: &StaticSource,
) -> Result<u64> {
    let rec = w.next.find_segment(id)?;
    if rec.criteria.is_some() {
        return Err(Error::usage(format!(
            "{} is a dynamic segment: change its definition with segment edit",
            rec.id
        )));
    }
    let id = rec.id.clone();
    let current = Members::load(w.dir(), rec)?.members;
    let given = source_bitmap(w, source).await?;
    let next = match change {
        StaticChange::Add => current | given,
        StaticChange::Remove => current - given,
        StaticChange::Replace => given,
    };
    store_static(w, &id, next).await
}
