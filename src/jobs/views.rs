//! What users read of segments, as typed results: the list, one segment
//! with its recent history, its history, a page of its members. The
//! command line prints them; the HTTP API serves the same values.

use chrono::{DateTime, Utc};
use datafusion::arrow::array::RecordBatch;
use roaring::RoaringBitmap;
use serde::Serialize;

use crate::base::Snapshot;
use crate::base::config::Config;
use crate::base::manifest::SegmentRecord;
use crate::base::status::{computing_now, effective_status};
use crate::error::Result;
use crate::jobs::segments::{members_batch, members_of};

/// One row of the segments list (`segment list`).
#[derive(Debug, Clone, PartialEq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecentRun {
    pub at: DateTime<Utc>,
    pub size: u64,
    pub entries: u64,
    pub exits: u64,
}

/// One segment: its summary, definition and last ten computations.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
/// [`MEMBER_COLUMNS`] the base has.
pub fn members_page(snap: &Snapshot, key: &str, q: &MembersQuery) -> Result<RecordBatch> {
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
            members_batch(snap.dir(), m, &page, Some(&members), &columns)
        }
        Some(key) => {
            let all = members_batch(snap.dir(), m, &ids, Some(&members), &columns)?;
            crate::jobs::export::sorted_page(&all, key, q.offset, q.limit)
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
