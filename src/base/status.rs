//! The status of a segment as users see it: `computing` while a computing
//! writer holds the base, `late` when an active segment missed the last
//! nightly window, else what the manifest says.

use chrono::{DateTime, Utc};

use crate::base::config::Config;
use crate::base::manifest::{SegmentRecord, SegmentStatus};

/// Whether a writer that computes segments (recompute, import, create,
/// edit, refresh, audience) holds the base right now.
pub fn computing_now(dir: &std::path::Path) -> bool {
    crate::base::lock::current_holder(dir).is_some_and(|h| {
        [
            "recompute",
            "import",
            "segment",
            "audience",
            "demo",
            "bench",
        ]
        .iter()
        .any(|verb| h.command.contains(verb))
    })
}

/// The status a user sees: `computing` while a computing writer holds the
/// base, `late` when an active segment has not been computed since the
/// start of the last nightly window.
pub fn effective_status(
    rec: &SegmentRecord,
    config: &Config,
    now: DateTime<Utc>,
    computing: bool,
) -> &'static str {
    if rec.paused {
        return "paused";
    }
    if computing && rec.criteria.is_some() {
        return "computing";
    }
    match rec.status {
        SegmentStatus::Computing => return "computing",
        SegmentStatus::Failed => return "failed",
        _ => {}
    }
    if rec.criteria.is_none() {
        return "up_to_date"; // static segments are never late
    }
    let window_start = last_window_start(config, now);
    match &rec.stats {
        Some(s) if s.computed_at >= window_start => "up_to_date",
        _ if rec.created_at >= window_start && rec.stats.is_some() => "up_to_date",
        _ => "late",
    }
}

/// The most recent start of the nightly window at or before `now`.
pub fn last_window_start(config: &Config, now: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::TimeZone;
    let tz = config.tz().unwrap_or(chrono_tz::UTC);
    let start = config.window_start().unwrap_or_default();
    let local = now.with_timezone(&tz);
    let today = local.date_naive().and_time(start);
    let candidate = tz
        .from_local_datetime(&today)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(now);
    if candidate <= now {
        candidate
    } else {
        candidate - chrono::Duration::days(1)
    }
}
