//! The generated segments of the nightly workload and each workload's run.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use roaring::RoaringBitmap;
use serde_json::{Value, json};

use super::{
    BenchOptions, BenchReport, WorkloadResult, base_dir, bench_as_of, machine, median, time_runs,
    write_json,
};
use crate::base::Base;
use crate::base::members::Members;
use crate::compile::Plan;
use crate::compile::expr::Clock;
use crate::criteria::{Criterion, Definition};
use crate::engine::Session;
use crate::error::{Error, Result};
use crate::jobs::recompute::{Fresh, active_ids, dependency_order, recompute, targets_of};

const PREFIXES: &[&str] = &[
    "par", "lyo", "mar", "tou", "ni", "bor", "lil", "ren", "é", "gr",
];
const INTERESTS: &[&str] = &[
    "running", "cuisine", "voyage", "mode", "jardin", "tech", "vin",
];

/// `n` deterministic segments mixing field, behaviour, nested references and
/// exclusions, in an order where references come first (ids `g-0`...).
pub fn generated_definitions(n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let earlier = |k: usize| format!("g-{}", (i * 7 + k) % i.max(1));
        let criteria = match i % 12 {
            0 => json!({"all": [
                {"field": "city", "op": "starts_with", "value": PREFIXES[i / 12 % PREFIXES.len()]},
                {"field": "score", "op": "gt", "value": (i * 37) % 900}]}),
            1 => {
                json!({"behavior": {"event": "purchase", "within": format!("{}d", 30 + (i * 13) % 300),
                "having": {"agg": "sum", "field": "amount", "op": "gt", "value": (i * 11) % 200}}})
            }
            2 => {
                json!({"behavior": {"event": ["email_open", "email_click"], "within": format!("{}d", 7 + i % 60)}})
            }
            3 if i > 3 => {
                json!({"all": [{"segment": earlier(1)}, {"not": {"segment": "email_bad_addresses"}}]})
            }
            4 if i > 4 => {
                json!({"all": [{"segment": earlier(2)}, {"segment": "email_subscribers"}, {"not": {"segment": earlier(3)}}]})
            }
            5 => {
                json!({"all": [{"field": "loyalty", "op": "in", "value": ["gold", "silver"]}, {"field": "email_optin", "op": "is_true"}]})
            }
            6 => {
                json!({"field": "interests", "op": "contains_any", "value": [INTERESTS[i % INTERESTS.len()]]})
            }
            7 => {
                json!({"behavior": {"event": "web_visit", "where": [{"field": "url", "op": "contains", "value": "/produits"}],
                "within": format!("{}d", 30 + i % 90), "having": {"agg": "count", "op": "gte", "value": 2 + i % 3}}})
            }
            8 => {
                json!({"behavior": {"event": "email_sent", "within": format!("{}d", 7 + i % 21), "having": {"agg": "count", "op": "eq", "value": 0}}})
            }
            9 => {
                json!({"behavior": {"event": "purchase", "having": {"agg": "last", "op": "more_than_ago", "value": format!("{}d", 30 + i % 200)}}})
            }
            10 => json!({"any": [{"field": "country", "op": "eq", "value": "BE"},
                {"field": "city", "op": "in", "value": ["Genève", "Montréal", "Bruxelles"]}]}),
            _ => {
                json!({"all": [{"field": "created_at", "op": "within_last", "value": format!("{}d", 100 + i % 700)},
                {"field": "sms_optin", "op": "is_true"}, {"not": {"segment": "sms_bad_numbers"}}]})
            }
        };
        out.push(
            json!({"id": format!("g-{i}"), "name": format!("Generated {i}"), "criteria": criteria}),
        );
    }
    out
}

/// Create the base if needed and make its generated segments exactly `g-0..g-{n}`.
/// The benchmark base of these options, generated on first use, with its
/// generated segments.
pub fn prepare(opts: &BenchOptions) -> Result<Base> {
    let dir = base_dir(opts);
    if !dir.join("segments.toml").exists() {
        let t0 = Instant::now();
        let stats = crate::synth::generate(
            &dir,
            &crate::synth::GenOptions {
                contacts: opts.contacts,
                events_per_contact: opts.events_per_contact,
                seed: 42,
                as_of: bench_as_of(),
            },
        )?;
        eprintln!(
            "generated {} contacts and {} events in {:.1}s",
            stats.contacts,
            stats.events,
            t0.elapsed().as_secs_f64()
        );
    }
    let base = Base::open(&dir)?;
    let mut w = base.writer("segments bench: segments")?;
    let wanted: Vec<Value> = generated_definitions(opts.segments);
    let wanted_ids: HashSet<String> = wanted
        .iter()
        .map(|d| d["id"].as_str().unwrap_or("").to_string())
        .collect();
    w.next
        .segments
        .retain(|s| !s.id.starts_with("g-") || wanted_ids.contains(&s.id));
    for d in &wanted {
        let def = Definition::parse(d)?;
        if w.next.segment(&def.id).is_none() {
            crate::jobs::segments::check_definition(&w.next, &w.base, &def)?;
            w.next.segments.push(crate::jobs::segments::new_record(
                &def,
                Some(def.criteria_json.clone()),
            ));
        }
    }
    w.commit()?;
    Ok(base)
}

/// Five typical new segments, as a marketer previews them in a builder.
pub fn typical_previews() -> Result<Vec<Value>> {
    Ok(crate::synth::example_definitions()?
        .into_iter()
        .filter(|d| {
            [
                "ouvreurs-recents",
                "gros-acheteurs",
                "parisiens",
                "paniers-abandonnes",
                "clients-dormants",
            ]
            .contains(&d.id.as_str())
        })
        .map(|d| json!({"id": d.id, "name": d.name, "criteria": d.criteria_json}))
        .collect())
}

pub fn run(opts: &BenchOptions) -> Result<BenchReport> {
    let base = prepare(opts)?;
    let dir = base.dir().to_path_buf();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio", e))?;
    let as_of = bench_as_of();
    let snap = base.snapshot()?;
    let contacts = snap.manifest.contact_count;
    let events: u64 = snap.manifest.events.iter().map(|e| e.rows).sum();
    drop(snap);
    let wants = |w: &str| opts.workloads.iter().any(|x| x == w || x == "all");
    let mut results = Vec::new();

    if wants("nightly") {
        let (runs, n) = time_runs(opts.runs, || {
            let mut w = base.writer("segments bench: nightly")?;
            let report = rt.block_on(recompute(&mut w, as_of, Fresh::Full))?;
            w.commit()?;
            Ok(report.segments.len())
        })?;
        let med = median(&mut runs.clone());
        results.push(WorkloadResult::new(
            "nightly",
            runs,
            json!({"contacts_per_s": contacts as f64 / med * 1000.0, "events_per_s": events as f64 / med * 1000.0}),
            format!("{n} segments (11 defaults + {} generated)", opts.segments),
        ));
        write_nightly_files(&base)?;
    }

    if wants("incremental") {
        results.extend(super::incremental::run(&base, &rt, as_of, opts.runs)?);
    }

    // Five typical new segments, previewed (count and sample, nothing saved).
    let previews = typical_previews()?;
    for p in &previews {
        let def = Definition::parse(p)?;
        if wants("preview") || wants(&format!("preview:{}", def.id)) {
            let (runs, count) = time_runs(opts.runs, || {
                let snap = base.snapshot()?;
                Ok(rt
                    .block_on(crate::jobs::segments::preview(&snap, &def, as_of))?
                    .count)
            })?;
            let med = median(&mut runs.clone());
            results.push(WorkloadResult::new(
                &format!("preview:{}", def.id),
                runs,
                json!({"contacts_per_s": contacts as f64 / med * 1000.0}),
                format!("{count} contacts"),
            ));
        }
    }

    // The decoding floor of the nightly and of each preview.
    if wants("floor") {
        results.extend(floor(&base, &rt, as_of, opts.runs, &previews, &results)?);
    }

    // Counts, overlaps and SQL over segments read their last results: a
    // base whose segments were never computed gets them first, untimed.
    let reading: Vec<&str> = ["nested-count", "overlap", "sql"]
        .into_iter()
        .filter(|w| {
            wants(w)
                || opts
                    .workloads
                    .iter()
                    .any(|x| x.starts_with(&format!("{w}:")))
        })
        .collect();
    if !reading.is_empty() {
        let snap = base.snapshot()?;
        let never: Vec<&str> = active_ids(&snap.manifest)
            .into_iter()
            .filter_map(|id| snap.manifest.segment(&id))
            .filter(|rec| rec.members.is_none())
            .map(|rec| rec.id.as_str())
            .collect();
        if !never.is_empty() {
            eprintln!(
                "{} read segment results; {} segment(s) never computed (as {}): computing them first, untimed",
                reading.join(", "),
                never.len(),
                never.iter().take(3).copied().collect::<Vec<_>>().join(", ")
            );
            let mut w = base.writer("segments bench: results read by the workloads")?;
            rt.block_on(recompute(&mut w, as_of, Fresh::Full))?;
            w.commit()?;
        }
    }

    if wants("nested-count") {
        let snap = base.snapshot()?;
        let load = |id: &str| -> Result<RoaringBitmap> {
            let rec = snap
                .manifest
                .segment(id)
                .ok_or_else(|| Error::usage(format!("no segment {id}")))?;
            Ok(Members::load(snap.dir(), rec)?.members)
        };
        let sets = [
            load("email_subscribers")?,
            load("sms_subscribers")?,
            load("active_contacts")?,
            load("email_bad_addresses")?,
            load("all_contacts")?,
        ];
        let (runs, count) = time_runs(opts.runs.max(5) * 20, || {
            let x = (&sets[0] | &sets[1]) & &sets[2];
            let x = x - &sets[3];
            Ok(x.intersection_len(&sets[4]))
        })?;
        results.push(WorkloadResult::new(
            "nested-count",
            runs,
            json!({}),
            format!(
                "((email_subscribers ∪ sms_subscribers) ∩ active − bad addresses) ∩ all = {count}"
            ),
        ));
    }

    // The 20×20 overlap matrix of the first 20 segments.
    let mut overlap = json!({});
    if wants("overlap") {
        let snap = base.snapshot()?;
        let ids: Vec<String> = snap
            .manifest
            .segments
            .iter()
            .take(20)
            .map(|s| s.id.clone())
            .collect();
        let (runs, o) = time_runs(opts.runs.max(5) * 4, || {
            crate::jobs::views::overlap(&snap, &ids, None)
        })?;
        results.push(WorkloadResult::new(
            "overlap",
            runs,
            json!({}),
            format!("{n}×{n} matrix, union {}", o.union, n = ids.len()),
        ));
        overlap = json!({"segments": ids, "matrix": o.matrix});
    }

    let sql_queries = sql_queries();
    for q in &sql_queries {
        let name = q["name"].as_str().unwrap_or("sql");
        if wants("sql") || wants(&format!("sql:{name}")) {
            let text = q["segments"].as_str().unwrap_or("");
            let (runs, rows) = time_runs(opts.runs, || {
                let snap = base.snapshot()?;
                let batches = rt.block_on(crate::sql::run_query(&snap, text))?;
                Ok(batches.iter().map(|b| b.num_rows()).sum::<usize>())
            })?;
            results.push(WorkloadResult::new(
                &format!("sql:{name}"),
                runs,
                json!({}),
                format!("{rows} rows"),
            ));
        }
    }

    let mut import = json!({});
    if wants("import") {
        let csv = dir.join("bench-contacts.csv");
        let pq = dir.join("bench-events.parquet");
        let (rows, event_rows) = write_import_files(&base, &csv, &pq)?;
        let scratch = dir.join("bench-import-scratch");
        let (runs, _) = time_runs(opts.runs, || {
            let _ = std::fs::remove_dir_all(&scratch);
            let b = crate::jobs::init(&scratch, crate::base::config::Config::default())?;
            let mut w = b.writer("segments bench: import")?;
            crate::base::contacts::import_contacts(
                &mut w,
                &csv,
                &crate::base::contacts::ImportOptions {
                    name: None,
                    overwrite_empty: false,
                },
            )?;
            w.commit()?;
            Ok(())
        })?;
        let med = median(&mut runs.clone());
        results.push(WorkloadResult::new(
            "import:contacts-csv",
            runs,
            json!({"rows_per_s": rows as f64 / med * 1000.0}),
            format!("{rows} rows"),
        ));
        let (runs, _) = time_runs(opts.runs, || {
            let b = Base::open(&scratch)?;
            let mut w = b.writer("segments bench: import events")?;
            crate::base::events::import_events(
                &mut w,
                &pq,
                &crate::base::events::EventImportOptions {
                    name: None,
                    skip_unknown: false,
                },
            )?;
            // Keep the scratch base at its contacts-only version for the next run.
            drop(w);
            Ok(())
        })?;
        let med = median(&mut runs.clone());
        results.push(WorkloadResult::new(
            "import:events-parquet",
            runs,
            json!({"rows_per_s": event_rows as f64 / med * 1000.0}),
            format!("{event_rows} rows"),
        ));
        let _ = std::fs::remove_dir_all(&scratch);
        import = json!({"contacts_csv": csv, "contacts_rows": rows, "events_parquet": pq, "events_rows": event_rows});
    }

    let report = BenchReport {
        machine: machine(),
        base: dir.display().to_string(),
        contacts,
        events,
        segments: opts.segments + 11,
        as_of: as_of.to_rfc3339(),
        workloads: results,
        preview_segments: previews,
        sql_queries,
        import,
        overlap,
    };
    write_json(&dir.join("bench-report.json"), &report)?;
    Ok(report)
}

/// What only decoding the columns and row groups the nightly and each
/// preview read costs, with the threads they use (see
/// [`crate::compile::floor`]); each note compares the engine's median, when
/// that workload ran before in the same invocation.
fn floor(
    base: &Base,
    rt: &tokio::runtime::Runtime,
    as_of: chrono::DateTime<chrono::Utc>,
    runs: usize,
    previews: &[Value],
    done: &[WorkloadResult],
) -> Result<Vec<WorkloadResult>> {
    let _runtime = rt.enter();
    let snap = base.snapshot()?;
    let session = Session::new(&snap.base, snap.manifest.clone())?;
    let clock = Clock::new(as_of, snap.base.tz());
    let events: u64 = snap.manifest.events.iter().map(|e| e.rows).sum();
    let threads = session.ctx.copied_config().target_partitions().max(1) as f64;
    let plan_of = |criteria: &[Criterion]| {
        let mut plan = Plan::default();
        for c in criteria {
            plan.add(c);
        }
        plan
    };
    let nightly: Vec<Criterion> = targets_of(&snap.manifest, &active_ids(&snap.manifest))?
        .into_iter()
        .map(|(_, _, c)| c)
        .collect();
    let mut jobs = vec![("nightly".to_string(), plan_of(&nightly))];
    for p in previews {
        let def = Definition::parse(p)?;
        jobs.push((format!("preview:{}", def.id), plan_of(&[def.criteria])));
    }
    let mut out = Vec::new();
    for (workload, plan) in jobs {
        let (runs, f) = time_runs(runs, || session.decode_floor(&plan, &clock))?;
        let med = median(&mut runs.clone());
        let per_event = |ms: f64| ms * 1e6 * threads / events.max(1) as f64;
        let engine = match done.iter().find(|w| w.name == workload) {
            Some(w) => format!(
                "; the engine's {:.1} ms are {:.2}× it ({:.1} against {:.1} ns per event of the base per core)",
                w.median_ms,
                w.median_ms / med,
                per_event(w.median_ms),
                per_event(med)
            ),
            None => String::new(),
        };
        out.push(WorkloadResult::new(
            &format!("floor:{workload}"),
            runs,
            json!({
                "ns_per_event_per_core": per_event(med),
                "events_decoded_per_s": f.event_rows as f64 / med * 1000.0,
                "compressed_mb_per_s": f.bytes as f64 / 1048576.0 / med * 1000.0,
            }),
            format!(
                "decoding only: {} row group(s), {} events and {} contacts, {:.1} MiB compressed{engine}",
                f.row_groups,
                f.event_rows,
                f.contact_rows,
                f.bytes as f64 / 1048576.0
            ),
        ));
    }
    Ok(out)
}

/// The three typical ad-hoc queries, in our dialect and in the standard SQL
/// that DuckDB and ClickHouse both run (where segments are the tables
/// `seg_<id>` the nightly comparison materializes).
fn sql_queries() -> Vec<Value> {
    vec![
        json!({"name": "city-of-segment",
            "segments": "SELECT city, count(*) AS n FROM contacts WHERE in_segment(contact_id, 'g-1') GROUP BY city ORDER BY n DESC, city",
            "peers": "SELECT city, count(*) AS n FROM contacts WHERE contact_id IN (SELECT contact_id FROM {seg:g-1}) GROUP BY city ORDER BY n DESC, city"}),
        json!({"name": "top-operations-by-clicks",
            "segments": "SELECT operation_id, count(*) AS clicks FROM events WHERE type = 'email_click' GROUP BY operation_id ORDER BY clicks DESC, operation_id LIMIT 10",
            "peers": "SELECT operation_id, count(*) AS clicks FROM events WHERE type = 'email_click' GROUP BY operation_id ORDER BY clicks DESC, operation_id LIMIT 10"}),
        json!({"name": "subscribers-not-active-last-purchase",
            "segments": "SELECT c.contact_id, max(e.ts) AS last_purchase FROM contacts c JOIN events e ON e.contact_id = c.contact_id WHERE in_segment(c.contact_id, 'email_subscribers') AND NOT in_segment(c.contact_id, 'active_contacts') AND e.type = 'purchase' GROUP BY c.contact_id",
            "peers": "SELECT c.contact_id, max(e.ts) AS last_purchase FROM contacts c JOIN events e ON e.contact_id = c.contact_id WHERE c.contact_id IN (SELECT contact_id FROM {seg:email_subscribers}) AND c.contact_id NOT IN (SELECT contact_id FROM {seg:active_contacts}) AND e.type = 'purchase' GROUP BY c.contact_id"}),
    ]
}

/// `bench-segments.json` (definitions in dependency order) and
/// `bench-members.parquet` (segment_id, contact_id) for the comparison with the peers.
fn write_nightly_files(base: &Base) -> Result<()> {
    let snap = base.snapshot()?;
    let m = &snap.manifest;
    let ids = active_ids(m);
    let targets = targets_of(m, &ids)?;
    let order = dependency_order(&targets, m);
    let segs: Vec<Value> = order
        .iter()
        .map(|&i| {
            let rec = m.segment(&targets[i].0).expect("target exists");
            json!({"id": rec.id, "name": rec.name, "criteria": rec.criteria})
        })
        .collect();
    super::write_json(
        &snap.dir().join("bench-segments.json"),
        &json!({"as_of": bench_as_of().to_rfc3339(), "time_zone": base.config.time_zone, "segments": segs}),
    )?;
    let map = crate::base::ids::ContactIdMap::load(snap.dir(), m)?;
    let mut by_iid: Vec<u64> = vec![0; m.next_iid as usize];
    for (c, i) in map.iter() {
        by_iid[i as usize] = c;
    }
    // One batch per segment, streamed: the segment id is a one-value
    // dictionary, so memory stays at one segment's members.
    let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    let schema = Arc::new(Schema::new(vec![
        Field::new("segment_id", dict, false),
        Field::new("contact_id", DataType::UInt64, false),
    ]));
    let path = snap.dir().join("bench-members.parquet");
    let file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
    let mut writer = datafusion::parquet::arrow::ArrowWriter::try_new(file, schema.clone(), None)
        .map_err(|e| Error::parquet(&path, e))?;
    for rec in &m.segments {
        let members = Members::load(snap.dir(), rec)?.members;
        let cids: UInt64Array = members.iter().map(|i| by_iid[i as usize]).collect();
        let keys = datafusion::arrow::array::Int32Array::from(vec![0; cids.len()]);
        let ids = datafusion::arrow::array::DictionaryArray::new(
            keys,
            Arc::new(StringArray::from(vec![rec.id.as_str()])),
        );
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(ids), Arc::new(cids)])?;
        writer.write(&batch).map_err(|e| Error::parquet(&path, e))?;
    }
    writer.close().map_err(|e| Error::parquet(&path, e))?;
    Ok(())
}

/// A contacts CSV (as a CRM export would be) and an events Parquet file
/// without internal ids, written once.
fn write_import_files(
    base: &Base,
    csv: &std::path::Path,
    pq: &std::path::Path,
) -> Result<(u64, u64)> {
    let snap = base.snapshot()?;
    let m = &snap.manifest;
    let all = crate::base::contacts::load_contacts(snap.dir(), m)?;
    let keep: Vec<usize> = (1..all.num_columns()).collect(); // drop _iid
    let contacts = all.project(&keep)?;
    if !csv.exists() {
        crate::jobs::export::write_batch(csv, &contacts)?;
    }
    let biggest = m
        .events
        .iter()
        .max_by_key(|e| e.rows)
        .ok_or_else(|| Error::usage("the base has no events"))?;
    let ev = crate::base::table::read_parquet_one(&snap.dir().join(&biggest.file.path), None)?;
    let keep: Vec<usize> = (1..ev.num_columns()).collect();
    let ev = ev.project(&keep)?;
    if !pq.exists() {
        crate::jobs::export::write_batch(pq, &ev)?;
    }
    Ok((contacts.num_rows() as u64, ev.num_rows() as u64))
}
