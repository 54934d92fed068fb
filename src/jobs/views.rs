//! What users read of segments, as typed results: the list, one segment
//! with its recent history, its history, a page of its members. The
//! command line prints them; the HTTP API serves the same values.

use chrono::{DateTime, Utc};
use datafusion::arrow::array::RecordBatch;
use roaring::RoaringBitmap;
use serde::Serialize;

use crate::base::Snapshot;
use crate::base::config::Config;
use crate::base::manifest::{ImportKind, SegmentRecord};
use crate::base::schema::FieldType;
use crate::base::status::{computing_now, effective_status};
use crate::criteria::Op;
use crate::criteria::operand::op_allowed;
use crate::criteria::validate::Catalog;
use crate::error::Result;
use crate::jobs::segments::{members_batch, members_of};

/// One row of the segments list (`segment list`).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SegmentSummary {
    pub id: String,
    pub name: String,
    /// `dynamic` (criteria) or `static` (a fixed list).
    pub kind: &'static str,
    /// `computing`, `up_to_date`, `late`, `failed` or `paused`.
    pub status: &'static str,
    pub contacts: Option<u64>,
    pub email_optins: Option<u64>,
    pub sms_optins: Option<u64>,
    /// RFC 3339.
    pub computed_at: Option<String>,
    pub duration_ms: Option<u64>,
    pub error: Option<String>,
}

impl SegmentSummary {
    /// The summary of a segment as users see it at `now`.
    pub fn of(rec: &SegmentRecord, config: &Config, now: DateTime<Utc>, computing: bool) -> Self {
        let st = rec.stats.as_ref();
        SegmentSummary {
            id: rec.id.clone(),
            name: rec.name.clone(),
            kind: if rec.criteria.is_some() {
                "dynamic"
            } else {
                "static"
            },
            status: effective_status(rec, config, now, computing),
            contacts: st.map(|s| s.contacts),
            email_optins: st.map(|s| s.email_optins),
            sms_optins: st.map(|s| s.sms_optins),
            computed_at: st.map(|s| s.computed_at.to_rfc3339()),
            duration_ms: st.map(|s| s.duration_ms),
            error: rec.error.clone(),
        }
    }
}

/// The order of the segments list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortKey {
    #[default]
    Name,
    /// Largest first.
    Size,
    /// Most recently computed first.
    Computed,
    Status,
}

/// Every segment of a version, sorted, only those of a status if one is given.
pub fn list(snap: &Snapshot, sort: SortKey, status: Option<&str>) -> Vec<SegmentSummary> {
    let computing = computing_now(snap.dir());
    let now = Utc::now();
    let config = &snap.base.config;
    let mut recs: Vec<&SegmentRecord> = snap.manifest.segments.iter().collect();
    match sort {
        SortKey::Name => recs.sort_by(|a, b| a.name.cmp(&b.name)),
        SortKey::Size => {
            recs.sort_by_key(|r| std::cmp::Reverse(r.stats.as_ref().map(|s| s.contacts)))
        }
        SortKey::Computed => {
            recs.sort_by_key(|r| std::cmp::Reverse(r.stats.as_ref().map(|s| s.computed_at)))
        }
        SortKey::Status => recs.sort_by_key(|r| effective_status(r, config, now, computing)),
    }
    recs.into_iter()
        .map(|r| SegmentSummary::of(r, config, now, computing))
        .filter(|r| status.is_none_or(|s| r.status == s))
        .collect()
}

/// One computation of a segment, for its size over time.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct HistoryRow {
    /// When it ran (RFC 3339).
    pub at: String,
    /// The instant it was computed as of (RFC 3339).
    pub as_of: String,
    pub size: u64,
    pub entries: u64,
    pub exits: u64,
}

/// The history of a segment, oldest first.
pub fn history(snap: &Snapshot, key: &str) -> Result<Vec<HistoryRow>> {
    let rec = snap.manifest.find_segment(key)?;
    Ok(rec
        .history
        .points(snap.dir())?
        .iter()
        .map(|h| HistoryRow {
            at: h.at.to_rfc3339(),
            as_of: h.as_of.to_rfc3339(),
            size: h.size,
            entries: h.entries,
            exits: h.exits,
        })
        .collect())
}

/// A recent computation, as `segment show` lists them.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RecentRun {
    pub at: DateTime<Utc>,
    pub size: u64,
    pub entries: u64,
    pub exits: u64,
}

/// One segment: its summary, definition and last ten computations.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SegmentDetail {
    #[serde(flatten)]
    pub summary: SegmentSummary,
    pub description: Option<String>,
    pub criteria: Option<serde_json::Value>,
    /// Newest first.
    pub history: Vec<RecentRun>,
}

/// One segment, by id or name.
pub fn show(snap: &Snapshot, key: &str) -> Result<SegmentDetail> {
    let rec = snap.manifest.find_segment(key)?;
    let computing = computing_now(snap.dir());
    let history = rec
        .history
        .points(snap.dir())?
        .iter()
        .rev()
        .take(10)
        .map(|h| RecentRun {
            at: h.at,
            size: h.size,
            entries: h.entries,
            exits: h.exits,
        })
        .collect();
    Ok(SegmentDetail {
        summary: SegmentSummary::of(rec, &snap.base.config, Utc::now(), computing),
        description: rec.description.clone(),
        criteria: rec.criteria.clone(),
        history,
    })
}

/// Which members, in what order, which page.
#[derive(Debug, Clone, Default)]
pub struct MembersQuery {
    /// Only members who entered at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// A column to sort by (`contact_id`, `last_name`, `entered_at`...);
    /// a leading `-` sorts descending. None: in internal id order.
    pub sort: Option<String>,
    pub offset: usize,
    pub limit: usize,
}

/// The columns of the profiles of a segment, those the base has.
pub const MEMBER_COLUMNS: &[&str] = &[
    "first_name",
    "last_name",
    "email",
    "entered_at",
    "email_optin",
    "sms_optin",
];

/// A page of a segment's members: `contact_id`, then the columns of
/// [`MEMBER_COLUMNS`] the base has; and how many members the query has in
/// all pages.
pub fn members_page(snap: &Snapshot, key: &str, q: &MembersQuery) -> Result<(RecordBatch, u64)> {
    let (_, members) = members_of(snap, key)?;
    let ids = match q.since {
        None => members.members.clone(),
        Some(t) => {
            let t = t.timestamp_micros();
            members
                .cohorts
                .iter()
                .filter(|(at, _)| *at >= t)
                .fold(RoaringBitmap::new(), |acc, (_, b)| acc | b)
        }
    };
    let total = ids.len();
    let m = &snap.manifest;
    let columns: Vec<String> = MEMBER_COLUMNS
        .iter()
        .filter(|c| **c == "entered_at" || m.fields.iter().any(|f| &f.name == *c))
        .map(|c| c.to_string())
        .collect();
    match &q.sort {
        // In id order, a page needs only its own rows.
        None => {
            let page: RoaringBitmap = ids.iter().skip(q.offset).take(q.limit).collect();
            Ok((
                members_batch(snap.dir(), m, &page, Some(&members), &columns)?,
                total,
            ))
        }
        Some(key) => {
            let all = members_batch(snap.dir(), m, &ids, Some(&members), &columns)?;
            Ok((
                crate::jobs::export::sorted_page(&all, key, q.offset, q.limit)?,
                total,
            ))
        }
    }
}

/// Write every member of a segment to a CSV or Parquet file (from its
/// extension) in one atomic write: `contact_id` first, then `columns` (all
/// fields when empty) and `entered_at`. Returns the rows written.
pub fn export(
    snap: &Snapshot,
    key: &str,
    columns: &[String],
    out: &std::path::Path,
) -> Result<usize> {
    let (_, members) = members_of(snap, key)?;
    let batch = members_batch(
        snap.dir(),
        &snap.manifest,
        &members.members,
        Some(&members),
        columns,
    )?;
    crate::jobs::export::write_batch(out, &batch)?;
    Ok(batch.num_rows())
}

/// What a criteria builder offers: the contact fields with their types,
/// declared choices and operators; the event types seen, with the columns
/// they fill and their operation ids; the imports; the segments.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BaseSchema {
    pub version: u64,
    pub contacts: u64,
    pub fields: Vec<FieldInfo>,
    pub event_columns: Vec<FieldInfo>,
    pub events: Vec<EventTypeInfo>,
    pub imports: Vec<ImportInfo>,
    pub segments: Vec<SegmentRef>,
}

/// A contact field or event column, with the operators its type takes.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FieldInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// Whole numbers only (number fields).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub integer: bool,
    /// The declared values of a choice field.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    pub operators: Vec<&'static str>,
}

impl FieldInfo {
    fn of(name: &str, ty: &FieldType) -> FieldInfo {
        FieldInfo {
            name: name.to_string(),
            ty: ty.name(),
            integer: matches!(ty, FieldType::Number { integer: true }),
            values: match ty {
                FieldType::Choice { values } => values.clone(),
                _ => Vec::new(),
            },
            operators: Op::ALL
                .iter()
                .filter(|op| op_allowed(ty, **op))
                .map(|op| op.name())
                .collect(),
        }
    }
}

/// One event type seen in the base.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventTypeInfo {
    #[serde(rename = "type")]
    pub event_type: String,
    pub events: u64,
    /// The optional columns that some event of this type fills.
    pub columns: Vec<String>,
    /// Operation ids of this type, most recent first (at most
    /// [`OPERATIONS_SHOWN`]).
    pub operations: Vec<String>,
}

/// Operation ids listed per event type.
pub const OPERATIONS_SHOWN: usize = 500;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ImportInfo {
    pub id: String,
    pub name: String,
    pub kind: &'static str,
    pub at: String,
    pub file: String,
    pub rows_added: u64,
    pub rows_updated: u64,
    pub rows_skipped: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SegmentRef {
    pub id: String,
    pub name: String,
    pub kind: &'static str,
}

/// The imports of a version, oldest first.
pub fn imports(snap: &Snapshot) -> Vec<ImportInfo> {
    snap.manifest
        .imports
        .iter()
        .map(|i| ImportInfo {
            id: i.id.clone(),
            name: i.name.clone(),
            kind: match i.kind {
                ImportKind::Contacts => "contacts",
                ImportKind::Events => "events",
            },
            at: i.at.to_rfc3339(),
            file: i.file.clone(),
            rows_added: i.rows_added,
            rows_updated: i.rows_updated,
            rows_skipped: i.rows_skipped,
        })
        .collect()
}

/// The schema of a version of the base (one pass over its events).
pub async fn schema(snap: &Snapshot) -> Result<BaseSchema> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::compute::cast;
    use datafusion::arrow::datatypes::{DataType, Int64Type};

    let m = &snap.manifest;
    let cat = crate::jobs::ManifestCatalog {
        manifest: m,
        config: &snap.base.config,
    };
    let mut fields: Vec<FieldInfo> = m
        .fields
        .iter()
        .map(|f| FieldInfo::of(&f.name, &f.ty))
        .collect();
    // Recognised and declared columns are usable before any contact has them.
    let known = crate::base::schema::RECOGNISED_CONTACT_FIELDS
        .iter()
        .copied()
        .chain(snap.base.config.fields.keys().map(String::as_str));
    for name in known {
        if !fields.iter().any(|f| f.name == name)
            && let Some(ty) = cat.contact_field(name)
        {
            fields.push(FieldInfo::of(name, &ty));
        }
    }
    let event_columns: Vec<FieldInfo> = m
        .event_columns
        .iter()
        .map(|f| FieldInfo::of(&f.name, &f.ty))
        .collect();
    let mut events: Vec<EventTypeInfo> = Vec::new();
    if !m.events.is_empty() {
        let optional: Vec<&str> = m
            .event_columns
            .iter()
            .map(|f| f.name.as_str())
            .filter(|n| !matches!(*n, "ts" | "type"))
            .collect();
        let counts: String = optional
            .iter()
            .map(|c| format!(", count(\"{}\")", c.replace('"', "\"\"")))
            .collect();
        let ctx = crate::engine::tables::user_context(&snap.base, m)?;
        let sql = format!(
            "SELECT \"type\", count(*){counts} FROM events GROUP BY \"type\" ORDER BY \"type\""
        );
        let batches = crate::engine::guard::guarded(&ctx, &sql)
            .await?
            .collect()
            .await?;
        for b in &batches {
            let types = cast(b.column(0), &DataType::Utf8)?;
            let types = types.as_string::<i32>();
            let ns: Vec<_> = (1..b.num_columns())
                .map(|i| cast(b.column(i), &DataType::Int64))
                .collect::<std::result::Result<_, _>>()?;
            for row in 0..b.num_rows() {
                let n = |i: usize| ns[i].as_primitive::<Int64Type>().value(row) as u64;
                events.push(EventTypeInfo {
                    event_type: types.value(row).to_string(),
                    events: n(0),
                    columns: optional
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| n(i + 1) > 0)
                        .map(|(_, c)| c.to_string())
                        .collect(),
                    operations: Vec::new(),
                });
            }
        }
        if optional.contains(&"operation_id") {
            let sql = "SELECT \"type\", operation_id, max(ts) AS last FROM events \
                       WHERE operation_id IS NOT NULL GROUP BY \"type\", operation_id \
                       ORDER BY \"type\", last DESC, operation_id";
            let batches = crate::engine::guard::guarded(&ctx, sql)
                .await?
                .collect()
                .await?;
            for b in &batches {
                let types = cast(b.column(0), &DataType::Utf8)?;
                let ops = cast(b.column(1), &DataType::Utf8)?;
                let (types, ops) = (types.as_string::<i32>(), ops.as_string::<i32>());
                for row in 0..b.num_rows() {
                    if let Some(e) = events.iter_mut().find(|e| e.event_type == types.value(row))
                        && e.operations.len() < OPERATIONS_SHOWN
                    {
                        e.operations.push(ops.value(row).to_string());
                    }
                }
            }
        }
    }
    Ok(BaseSchema {
        version: m.version,
        contacts: m.contact_count,
        fields,
        event_columns,
        events,
        imports: imports(snap),
        segments: m
            .segments
            .iter()
            .map(|s| SegmentRef {
                id: s.id.clone(),
                name: s.name.clone(),
                kind: if s.criteria.is_some() {
                    "dynamic"
                } else {
                    "static"
                },
            })
            .collect(),
    })
}

/// How segments intersect: each one's size, every pairwise intersection,
/// the union and the intersection of all; counted among the contacts
/// reachable on a channel when one is given.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Overlap {
    /// `email`, `sms`, or none (every contact).
    pub only_reachable: Option<&'static str>,
    pub segments: Vec<OverlapSegment>,
    /// `matrix[i][j]`: contacts in segments i and j (the diagonal: in i).
    pub matrix: Vec<Vec<u64>>,
    /// `percent[i][j]`: `matrix[i][j]` as a percentage of segment i's size
    /// (one decimal; none when i is empty).
    pub percent: Vec<Vec<Option<f64>>>,
    /// Contacts in at least one of the segments.
    pub union: u64,
    /// Contacts in all of them.
    pub intersection: u64,
}

/// A segment of an overlap, with the state its members were counted in.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct OverlapSegment {
    pub id: String,
    pub name: String,
    /// As in the segments list: counts of a `failed` or `computing`
    /// segment are those of its last computation, and say so.
    pub status: &'static str,
    pub computed_at: Option<String>,
    pub size: u64,
}

/// The overlap of segments (ids or names) in a version of the base.
pub fn overlap(
    snap: &Snapshot,
    keys: &[String],
    only_reachable: Option<crate::jobs::segments::Channel>,
) -> Result<Overlap> {
    use crate::jobs::segments::Channel;
    if keys.is_empty() {
        return Err(crate::Error::usage("an overlap needs at least one segment"));
    }
    let computing = computing_now(snap.dir());
    let now = Utc::now();
    let reach = match only_reachable {
        None => None,
        Some(channel) => {
            let (yes, no) = match channel {
                Channel::Email => ("email_subscribers", "email_bad_addresses"),
                Channel::Sms => ("sms_subscribers", "sms_bad_numbers"),
            };
            let (_, yes) = members_of(snap, yes)?;
            let (_, no) = members_of(snap, no)?;
            Some(yes.members - no.members)
        }
    };
    let mut segments = Vec::with_capacity(keys.len());
    let mut sets: Vec<RoaringBitmap> = Vec::with_capacity(keys.len());
    for key in keys {
        let (rec, members) = members_of(snap, key)?;
        if segments.iter().any(|s: &OverlapSegment| s.id == rec.id) {
            return Err(crate::Error::usage(format!(
                "segment {} is given twice",
                rec.id
            )));
        }
        let set = match &reach {
            Some(r) => members.members & r,
            None => members.members,
        };
        let summary = SegmentSummary::of(&rec, &snap.base.config, now, computing);
        segments.push(OverlapSegment {
            id: rec.id,
            name: rec.name,
            status: summary.status,
            computed_at: summary.computed_at,
            size: set.len(),
        });
        sets.push(set);
    }
    let n = sets.len();
    let mut matrix = vec![vec![0u64; n]; n];
    for i in 0..n {
        matrix[i][i] = sets[i].len();
        for j in i + 1..n {
            let both = sets[i].intersection_len(&sets[j]);
            matrix[i][j] = both;
            matrix[j][i] = both;
        }
    }
    let percent = matrix
        .iter()
        .enumerate()
        .map(|(i, row)| {
            row.iter()
                .map(|&c| {
                    let size = matrix[i][i];
                    (size > 0).then(|| (c as f64 * 1000.0 / size as f64).round() / 10.0)
                })
                .collect()
        })
        .collect();
    let union = sets
        .iter()
        .fold(RoaringBitmap::new(), |acc, s| acc | s)
        .len();
    let intersection = sets[1..]
        .iter()
        .fold(sets[0].clone(), |acc, s| acc & s)
        .len();
    Ok(Overlap {
        only_reachable: only_reachable.map(|c| match c {
            Channel::Email => "email",
            Channel::Sms => "sms",
        }),
        segments,
        matrix,
        percent,
        union,
        intersection,
    })
}
