//! The incremental workload. After a full nightly, a day goes by: the events
//! of one day arrive (the same day a year before, moved a year on: about
//! 1/365 of the history, with its mix of types and contacts) and 1% of the
//! contacts are updated. The nightly from the kept results is timed against
//! a full one over the same data and instant (their segments must agree),
//! then the nightly again with nothing changed, an import of 1,000 new
//! contacts refreshed at the nightly's instant, and an import of 10,000
//! events with the refresh of the segments an hour after the nightly. Nothing is published: every run starts from the
//! same manifest in one writer, dropped at the end, so the base stays as
//! generated (but for the full nightly it starts from).

use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use serde_json::json;

use super::{WorkloadResult, median, time_runs};
use crate::base::Base;
use crate::base::contacts::{ImportOptions, import_contacts};
use crate::base::events::{EventImportOptions, import_events};
use crate::error::{Error, Result};
use crate::jobs::recompute::{Fresh, RunReport, after_import, recompute};

/// Events in the burst imported between two nightly runs.
const BURST: usize = 10_000;

pub fn run(
    base: &Base,
    rt: &tokio::runtime::Runtime,
    as_of: DateTime<Utc>,
    runs: usize,
) -> Result<Vec<WorkloadResult>> {
    // The kept results of a full nightly.
    let mut w = base.writer("segments bench: nightly")?;
    rt.block_on(recompute(&mut w, as_of, Fresh::Full))?;
    w.commit()?;

    let scratch = base.dir().join("bench-incremental");
    std::fs::create_dir_all(&scratch).map_err(|e| Error::io(&scratch, e))?;
    let (day, burst, updates) = (
        scratch.join("day-events.parquet"),
        scratch.join("burst-events.parquet"),
        scratch.join("contact-updates.parquet"),
    );
    let signups = scratch.join("new-contacts.parquet");
    let (day_rows, updated, new_contacts) =
        rt.block_on(write_files(base, as_of, &day, &burst, &updates, &signups))?;
    let events_options = |what: &str| EventImportOptions {
        name: Some(format!("bench {what}")),
        skip_unknown: true,
    };

    // A day later.
    let later = as_of + Duration::days(1);
    let mut w = base.writer("segments bench: a day later")?;
    import_events(&mut w, &day, &events_options("day"))?;
    import_contacts(
        &mut w,
        &updates,
        &ImportOptions {
            name: Some("bench updates".into()),
            overwrite_empty: false,
        },
    )?;
    let start = w.next.clone();
    let mut nightly = |fresh: Fresh| -> Result<(Vec<f64>, RunReport)> {
        time_runs(runs, || {
            w.next = start.clone();
            rt.block_on(recompute(&mut w, later, fresh))
        })
    };
    let (incremental, inc) = nightly(Fresh::Incremental)?;
    let (full, all) = nightly(Fresh::Full)?;
    drop(w);
    same_results(&inc, &all)?;
    let ratio = median(&mut incremental.clone()) / median(&mut full.clone());
    let freshness = |r: &RunReport| {
        let p = &r.phases;
        format!(
            "{}; ms: contacts {}, events {}, trees {}, kept {}, stored {}",
            r.freshness
                .as_ref()
                .map(|f| f.describe().replace('\n', ";"))
                .unwrap_or_default(),
            p.contacts_ms,
            p.events_ms,
            p.trees_ms,
            p.keep_ms,
            p.store_ms
        )
    };
    let mut out = vec![
        WorkloadResult::new(
            "incremental:nightly-a-day-later",
            incremental,
            json!({"ratio_to_full": ratio}),
            format!(
                "{day_rows} new events, {updated} contacts updated; {:.3}× the full nightly; {}",
                ratio,
                freshness(&inc)
            ),
        ),
        WorkloadResult::new(
            "incremental:full-nightly-a-day-later",
            full,
            json!({}),
            "the same data and instant, every condition for every contact".to_string(),
        ),
    ];

    // Nothing changed since: the nightly again at the same instant.
    let mut w = base.writer("segments bench: nothing changed")?;
    let start = w.next.clone();
    let (runs_ms, same) = time_runs(runs, || {
        w.next = start.clone();
        rt.block_on(recompute(&mut w, as_of, Fresh::Incremental))
    })?;
    drop(w);
    out.push(WorkloadResult::new(
        "incremental:nothing-changed",
        runs_ms,
        json!({}),
        format!(
            "the nightly again at the same instant; {}",
            freshness(&same)
        ),
    ));

    // New contacts (a sign-up form's day), at the same instant, and the refresh.
    let mut w = base.writer("segments bench: new contacts")?;
    let start = w.next.clone();
    let (runs_ms, refreshed) = time_runs(runs, || {
        w.next = start.clone();
        import_contacts(
            &mut w,
            &signups,
            &ImportOptions {
                name: Some("bench sign-ups".into()),
                overwrite_empty: false,
            },
        )?;
        rt.block_on(after_import(&mut w, as_of))
    })?;
    drop(w);
    out.push(WorkloadResult::new(
        "incremental:import-1000-new-contacts",
        runs_ms,
        json!({}),
        format!(
            "import of {new_contacts} new contacts and the refresh of the segments at the nightly's instant; {}",
            refreshed.as_ref().map(freshness).unwrap_or_default()
        ),
    ));

    // A burst of events an hour after the nightly, and the refresh.
    let mut w = base.writer("segments bench: a burst of events")?;
    let start = w.next.clone();
    let (runs_ms, refreshed) = time_runs(runs, || {
        w.next = start.clone();
        import_events(&mut w, &burst, &events_options("burst"))?;
        rt.block_on(after_import(&mut w, as_of + Duration::hours(1)))
    })?;
    drop(w);
    let refreshed = refreshed.ok_or_else(|| {
        Error::usage("the base has more active segments than auto_refresh_threshold")
    })?;
    out.push(WorkloadResult::new(
        "incremental:import-10000-events",
        runs_ms,
        json!({}),
        format!(
            "import of {BURST} events and the refresh of {} segments; {}",
            refreshed.segments.len(),
            freshness(&refreshed)
        ),
    ));
    Ok(out)
}

/// The two runs computed the same members (same sizes, entries and exits).
fn same_results(a: &RunReport, b: &RunReport) -> Result<()> {
    let key = |r: &RunReport| {
        let mut v: Vec<(String, u64, u64, u64)> = r
            .segments
            .iter()
            .map(|s| (s.id.clone(), s.size, s.entries, s.exits))
            .collect();
        v.sort();
        v
    };
    if key(a) != key(b) {
        return Err(Error::Internal(
            "the incremental nightly differs from the full one".into(),
        ));
    }
    Ok(())
}

/// The day's events (the day a year before `as_of`, a year on), the first
/// events of it as the burst, and 1% of contacts with a new city and score.
async fn write_files(
    base: &Base,
    as_of: DateTime<Utc>,
    day: &Path,
    burst: &Path,
    updates: &Path,
    signups: &Path,
) -> Result<(u64, u64, u64)> {
    let snap = base.snapshot()?;
    let ctx = crate::engine::tables::user_context(&snap.base, &snap.manifest)?;
    let columns: Vec<String> = snap
        .manifest
        .event_columns
        .iter()
        .map(|c| match c.name.as_str() {
            "ts" => "ts + INTERVAL '365 days' AS ts".to_string(),
            name => format!("\"{name}\""),
        })
        .collect();
    let from = (as_of - Duration::days(365)).timestamp_micros();
    let to = from + Duration::days(1).num_microseconds().expect("a day");
    let q = format!(
        "SELECT contact_id, {} FROM events \
         WHERE ts >= to_timestamp_micros({from}) AND ts < to_timestamp_micros({to})",
        columns.join(", ")
    );
    let events = collect(&ctx, &q).await?;
    crate::jobs::export::write_batch(day, &events)?;
    crate::jobs::export::write_batch(burst, &events.slice(0, BURST.min(events.num_rows())))?;
    let q = "SELECT contact_id, \
             CASE WHEN city = 'Paris' THEN 'Lyon' ELSE 'Paris' END AS city, \
             score + 1 AS score FROM contacts WHERE contact_id % 100 = 7";
    let contacts = collect(&ctx, q).await?;
    crate::jobs::export::write_batch(updates, &contacts)?;
    let q = "SELECT contact_id + (SELECT max(contact_id) FROM contacts) AS contact_id, \
             city, score FROM contacts ORDER BY contact_id LIMIT 1000";
    let new = collect(&ctx, q).await?;
    crate::jobs::export::write_batch(signups, &new)?;
    Ok((
        events.num_rows() as u64,
        contacts.num_rows() as u64,
        new.num_rows() as u64,
    ))
}

async fn collect(ctx: &datafusion::prelude::SessionContext, q: &str) -> Result<RecordBatch> {
    let df = crate::engine::guard::guarded(ctx, q).await?;
    let schema = df.schema().inner().clone();
    let batches = df.collect().await?;
    Ok(concat_batches(&schema, &batches)?)
}
