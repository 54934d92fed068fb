//! Incremental recomputes equal full ones.
//!
//! Each case builds a random base (the differential test's data, default
//! segments, a chain of user segments and random trees of every kind), then
//! takes random steps: contacts imported with updates and new contacts,
//! events imported for some contacts, the clock moved by hours and days
//! (across local midnights and window ends, and back, or to another of the
//! instants the data was drawn around), a definition edited,
//! contacts deleted; an import sometimes refreshes the segments itself.
//! After every step the segments are recomputed from the kept results, and
//! every segment's members must equal a full computation of the same version
//! at the same instant.
//!
//! `FRESH_SEED=<u64>` replays one case; `FRESH_CASES=<n>` runs n drawn cases
//! (12), after the seeds that once failed ([`FOUND`]).

use super::*;

/// Runs that patched kept results, over every case: the incremental path
/// must be taken for the test to mean anything.
static PATCHED_RUNS: AtomicUsize = AtomicUsize::new(0);
static KEPT_CONDITIONS: AtomicUsize = AtomicUsize::new(0);
static PATCHED_CONDITIONS: AtomicUsize = AtomicUsize::new(0);
static NARROW_READS: AtomicUsize = AtomicUsize::new(0);
/// Contacts passes that read the rows imports kept of their contacts.
static KEPT_ROWS: AtomicUsize = AtomicUsize::new(0);
static FROM_LATEST: AtomicUsize = AtomicUsize::new(0);
/// Runs whose kept latest times stood while files were folded in.
static LATEST_STOOD: AtomicUsize = AtomicUsize::new(0);
/// Segments whose trees ran among the contacts changed since alone.
static WITHIN: AtomicUsize = AtomicUsize::new(0);
/// Runs that kept their results as changes from an earlier run's.
static AS_CHANGES: AtomicUsize = AtomicUsize::new(0);

/// The results an incremental run kept for the next one, compared with
/// those a full run of a copy of the base keeps, condition by condition:
/// they are the same bitmaps, however they were written.
fn kept_against_full(
    dir: &Path,
    as_of: DateTime<Utc>,
    step: &str,
    rt: &tokio::runtime::Runtime,
) -> Vec<String> {
    use segments::base::changes::{Earlier, kept};
    let results = |dir: &Path| {
        let base = segments::base::Base::open(dir).expect("open");
        let snap = base.snapshot().expect("snapshot");
        match kept(&base, &snap.manifest).expect("kept results") {
            Earlier::Kept(k) => Some(k.results),
            Earlier::None(_) => None,
        }
    };
    let Some(incremental) = results(dir) else {
        return Vec::new();
    };
    let scratch = tempfile::tempdir().expect("scratch");
    let copy = scratch.path().join("full");
    super::super::common::copy_base(dir, &copy);
    let base = segments::base::Base::open(&copy).expect("open");
    let full = segments::jobs::recompute::Fresh::Full;
    super::super::common::recompute_committed(&base, rt, as_of, full);
    let full = results(&copy).expect("a full run keeps its results");
    let mut failures = Vec::new();
    for (key, want) in &full {
        match incremental.get(key) {
            Some(got) if got == want => {}
            Some(got) => failures.push(format!(
                "after {step}, as of {as_of}: kept result of {key} has extra iids {:?}, misses {:?}",
                (&**got - &**want).iter().collect::<Vec<_>>(),
                (&**want - &**got).iter().collect::<Vec<_>>(),
            )),
            None => {}
        }
    }
    failures
}

/// Members of every active segment computed in full, compared with the
/// members stored by the incremental run.
fn check_against_full(
    dir: &Path,
    as_of: DateTime<Utc>,
    step: &str,
    rt: &tokio::runtime::Runtime,
) -> Vec<String> {
    let base = segments::base::Base::open(dir).expect("open");
    let snap = base.snapshot().expect("snapshot");
    let session =
        segments::engine::Session::new(&snap.base, snap.manifest.clone()).expect("session");
    let clock = segments::compile::expr::Clock::new(as_of, snap.base.tz());
    let ids = segments::jobs::recompute::active_ids(&snap.manifest);
    let targets = segments::jobs::recompute::targets_of(&snap.manifest, &ids).expect("targets");
    let full = rt.block_on(segments::jobs::recompute::compute(
        &session,
        &snap.manifest,
        snap.dir(),
        &clock,
        &targets,
    ));
    // Opt-ins found again from the contacts: a run that kept its own
    // counted the same.
    let opt = rt
        .block_on(segments::jobs::recompute::optins(&session))
        .expect("opt-ins");
    let mut failures = kept_against_full(dir, as_of, step, rt);
    for rec in snap
        .manifest
        .segments
        .iter()
        .filter(|s| ids.contains(&s.id))
    {
        let stored = segments::base::members::Members::load(dir, rec)
            .expect("members")
            .members;
        match full.get(&rec.id) {
            Some(Ok(want)) if *want == stored => {
                let stats = rec.stats.as_ref().expect("statistics");
                let size = rec
                    .history
                    .points(dir)
                    .expect("history")
                    .last()
                    .map(|p| p.size);
                let counted = (stats.contacts, size, stats.email_optins, stats.sms_optins);
                let want = (
                    stored.len(),
                    Some(stored.len()),
                    stored.intersection_len(&opt.email),
                    stored.intersection_len(&opt.sms),
                );
                if counted != want {
                    failures.push(format!(
                        "after {step}, as of {as_of}: segment {} counts (size, last point's size, opt-ins) {counted:?}, not {want:?}",
                        rec.id
                    ));
                }
            }
            Some(Ok(want)) => failures.push(format!(
                "after {step}, as of {as_of}: segment {} has extra iids {:?}, misses {:?}\n  criteria: {}",
                rec.id,
                (&stored - want).iter().collect::<Vec<_>>(),
                (want - &stored).iter().collect::<Vec<_>>(),
                rec.criteria.clone().unwrap_or_default()
            )),
            Some(Err(e)) => assert_eq!(
                rec.status,
                segments::base::manifest::SegmentStatus::Failed,
                "{}: a full computation fails ({e}) where the incremental one did not",
                rec.id
            ),
            None => failures.push(format!("{}: not computed in full", rec.id)),
        }
    }
    failures
}

fn note(report: &segments::jobs::recompute::RunReport) {
    let Some(f) = &report.freshness else {
        return;
    };
    if f.mode == "incremental" {
        PATCHED_RUNS.fetch_add(1, Ordering::Relaxed);
        KEPT_CONDITIONS.fetch_add(f.contacts.kept + f.events.kept, Ordering::Relaxed);
        PATCHED_CONDITIONS.fetch_add(f.contacts.patched + f.events.patched, Ordering::Relaxed);
        FROM_LATEST.fetch_add(f.events.from_latest, Ordering::Relaxed);
        if (f.events.read_share > 0.0 && f.events.read_share < 1.0)
            || (f.contacts.read_share > 0.0 && f.contacts.read_share < 1.0)
        {
            NARROW_READS.fetch_add(1, Ordering::Relaxed);
        }
        WITHIN.fetch_add(f.segments_within, Ordering::Relaxed);
        if f.contacts.changed_rows > 0 {
            KEPT_ROWS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn run_fresh_case(seed: u64, rt: &tokio::runtime::Runtime) -> Vec<String> {
    let mut rng = Rng(seed);
    let data = gen_data(&mut rng);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("base");
    let instants = as_ofs();
    let mut as_of = *rng.pick(&instants);
    let time_zone = zone_of(seed);
    build_base(&dir, &data, &mut rng, time_zone, as_of, rt);
    // Half the cases write the kept latest times again after every fold,
    // half let them stand whenever they may.
    let toml = dir.join("segments.toml");
    let text = std::fs::read_to_string(&toml).expect("configuration");
    let rewrite = if rng.chance(0.5) { 0 } else { 100 };
    let set = text.replace(
        "latest_rewrite_percent = 1\n",
        &format!("latest_rewrite_percent = {rewrite}\n"),
    );
    assert_ne!(set, text, "{text}");
    std::fs::write(&toml, set).expect("configuration");
    let base = segments::base::Base::open(&dir).expect("open");
    let has_events = !data.events.is_empty();

    // Random user segments of every kind, over the data and the segments.
    let mut refs: Vec<&str> = SEGMENTS.to_vec();
    refs.retain(|s| !s.starts_with("All") && *s != "all_contacts");
    for k in 0..16 {
        let id = format!("r{k}");
        for attempt in 0.. {
            let criteria = Gen {
                rng: &mut rng,
                data: &data,
                has_events,
                segments: &refs,
            }
            .tree(3);
            let Ok(def) = segments::criteria::Definition::parse(
                &json!({"id": id, "name": id, "criteria": criteria}),
            ) else {
                continue;
            };
            let mut w = base.writer("test").expect("writer");
            match rt.block_on(segments::jobs::segments::create(&mut w, &def, as_of)) {
                Ok(_) => {
                    w.commit().expect("commit");
                    break;
                }
                Err(e) => assert!(attempt < 50, "no valid segment {id}: {e}"),
            }
        }
    }
    let recompute = |as_of: DateTime<Utc>| {
        let incremental = segments::jobs::recompute::Fresh::Incremental;
        let (report, m) = super::super::common::recompute_committed(&base, rt, as_of, incremental);
        if m.leaves.as_ref().is_some_and(|l| l.changes.is_some()) {
            AS_CHANGES.fetch_add(1, Ordering::Relaxed);
        }
        if m.leaves.is_some_and(|l| !l.latest_imported.is_empty()) {
            LATEST_STOOD.fetch_add(1, Ordering::Relaxed);
        }
        report
    };
    recompute(as_of);

    let mut failures = check_against_full(&dir, as_of, "the first recompute", rt);
    let mut next_id = data.contacts.last().map_or(1, |c| c.id) + 1;
    let files = tmp.path();
    for step in 0..10 {
        let kind = rng.below(7);
        let what = match kind {
            // Contacts: some updated (every field drawn again, empty cells
            // leave values), some new.
            0 => {
                let ids = live_ids(&base);
                let mut contacts = Vec::new();
                for id in &ids {
                    if rng.chance(0.25) {
                        contacts.push(gen_contact(&mut rng, *id, CITIES, &[as_of]));
                    }
                }
                for _ in 0..rng.below(3) {
                    contacts.push(gen_contact(&mut rng, next_id, CITIES, &[as_of]));
                    next_id += rng.range(1, 3);
                }
                if contacts.is_empty() {
                    contacts.push(gen_contact(&mut rng, next_id, CITIES, &[as_of]));
                    next_id += 1;
                }
                let path = files.join(format!("contacts-{step}.parquet"));
                let d = Data {
                    contacts,
                    events: Vec::new(),
                    dates: Vec::new(),
                };
                write_contacts_parquet(&path, &d);
                let file = segments::jobs::import::ImportFile::Contacts {
                    file: path,
                    options: ImportOptions {
                        name: Some(format!("contacts {step}")),
                        overwrite_empty: false,
                    },
                };
                import(&base, &file, &mut rng, as_of, rt);
                format!("a contacts import ({} rows)", d.contacts.len())
            }
            // Events of some contacts, near the current instant (some
            // ahead of it).
            1 | 2 => {
                let ids = live_ids(&base);
                let mut events = Vec::new();
                for id in &ids {
                    if rng.chance(0.3) {
                        for _ in 0..1 + rng.below(3) {
                            events.push(gen_event(&mut rng, *id, &[as_of]));
                        }
                    }
                }
                if events.is_empty() {
                    events.push(gen_event(&mut rng, ids[0], &[as_of]));
                }
                let path = files.join(format!("events-{step}.csv"));
                let d = Data {
                    contacts: Vec::new(),
                    events,
                    dates: Vec::new(),
                };
                write_events_csv(&path, &d);
                let file = segments::jobs::import::ImportFile::Events {
                    file: path,
                    options: EventImportOptions {
                        name: Some(format!("events {step}")),
                        skip_unknown: false,
                    },
                };
                import(&base, &file, &mut rng, as_of, rt);
                format!("an events import ({} rows)", d.events.len())
            }
            // The clock moves: by hours across local midnight, by days
            // across window ends, or back.
            3 | 4 if rng.chance(0.7) => {
                let hours = *rng.pick(&[1i64, 3, 11, 23, 24, 25, 49, 24 * 7, 24 * 31, -2, -30]);
                as_of += ChronoDuration::hours(hours) + ChronoDuration::minutes(rng.range(0, 59));
                format!("the clock moved by {hours} h")
            }
            // ... or to another of the instants the data was drawn around.
            3 | 4 => {
                as_of = *rng.pick(&instants);
                format!("the clock set to {as_of}")
            }
            // A definition edited: the chain's first segment.
            5 => {
                let criteria = Gen {
                    rng: &mut rng,
                    data: &data,
                    has_events,
                    segments: DEFAULT_SEGMENTS,
                }
                .tree(2);
                let def = segments::criteria::Definition::parse(
                    &json!({"id": "u1", "name": "u1", "criteria": criteria}),
                )
                .expect("a definition");
                let mut w = base.writer("test").expect("writer");
                match rt.block_on(segments::jobs::segments::edit(&mut w, "u1", &def, as_of)) {
                    Ok(_) => {
                        w.commit().expect("commit");
                        "an edit of u1".to_string()
                    }
                    Err(_) => "a refused edit".to_string(),
                }
            }
            // Contacts deleted.
            _ => {
                let ids = live_ids(&base);
                let gone: Vec<u64> = ids
                    .iter()
                    .filter(|_| rng.chance(0.15))
                    .map(|&i| i as u64)
                    .collect();
                let mut w = base.writer("test").expect("writer");
                segments::base::contacts::delete_contacts(&mut w, &gone).expect("delete");
                w.commit().expect("commit");
                format!("{} contact(s) deleted", gone.len())
            }
        };
        let report = recompute(as_of);
        note(&report);
        let step = format!("step {step} ({what}; seed {seed}, {time_zone})");
        failures.extend(check_against_full(&dir, as_of, &step, rt));
        if !failures.is_empty() {
            break;
        }
    }
    failures
}

/// Contact ids in the base.
fn live_ids(base: &segments::base::Base) -> Vec<i64> {
    let snap = base.snapshot().expect("snapshot");
    let map = segments::base::ids::ContactIdMap::load(snap.dir(), &snap.manifest).expect("ids");
    let mut ids: Vec<i64> = map.iter().map(|(c, _)| c as i64).collect();
    ids.sort_unstable();
    ids
}

/// Import a file: half the time with the job that refreshes the segments
/// in the same version, otherwise the import alone.
fn import(
    base: &segments::base::Base,
    file: &segments::jobs::import::ImportFile,
    rng: &mut Rng,
    as_of: DateTime<Utc>,
    rt: &tokio::runtime::Runtime,
) {
    if rng.chance(0.5) {
        let (_, refreshed) = rt
            .block_on(segments::jobs::import::import(
                base,
                "test",
                file,
                Some(as_of),
            ))
            .expect("import");
        if let Some(r) = refreshed {
            note(&r);
        }
        return;
    }
    let mut w = base.writer("test").expect("writer");
    match file {
        segments::jobs::import::ImportFile::Contacts { file, options } => {
            import_contacts(&mut w, file, options).expect("import contacts");
        }
        segments::jobs::import::ImportFile::Events { file, options } => {
            import_events(&mut w, file, options).expect("import events");
        }
    }
    w.commit().expect("commit");
}

/// Seeds that once failed, run before the drawn ones.
const FOUND: &[u64] = &[
    // Kept latest times carried into a new file of them without the rows of
    // an import that earlier runs had folded in without writing them; the
    // clock then jumped 15 months: a contact stayed active.
    1796040667538574669,
];

#[test]
fn incremental_equals_full() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let seeds: Vec<u64> = match std::env::var("FRESH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(seed) => vec![seed],
        None => {
            // Every time zone, seeds drawn anew on every run.
            let start: u64 = rand_seed();
            let zones = TIME_ZONES.len() as u64;
            let cases: u64 = std::env::var("FRESH_CASES")
                .ok()
                .map_or(zones * 2 + 2, |s| {
                    s.parse().expect("FRESH_CASES is a number")
                });
            let drawn = (0..cases).map(|k| {
                let s = start.wrapping_add(k.wrapping_mul(1_000_003));
                s - s % zones + k % zones
            });
            FOUND.iter().copied().chain(drawn).collect()
        }
    };
    let mut failures = Vec::new();
    for &seed in &seeds {
        let f = run_fresh_case(seed, &rt);
        if !f.is_empty() {
            failures.push(format!("seed {seed}:\n{}", f.join("\n")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    let (runs, kept, patched, narrow, latest, stood) = (
        PATCHED_RUNS.load(Ordering::Relaxed),
        KEPT_CONDITIONS.load(Ordering::Relaxed),
        PATCHED_CONDITIONS.load(Ordering::Relaxed),
        NARROW_READS.load(Ordering::Relaxed),
        FROM_LATEST.load(Ordering::Relaxed),
        LATEST_STOOD.load(Ordering::Relaxed),
    );
    let kept_rows = KEPT_ROWS.load(Ordering::Relaxed);
    let within = WITHIN.load(Ordering::Relaxed);
    let as_changes = AS_CHANGES.load(Ordering::Relaxed);
    println!(
        "incremental: {} cases, {runs} runs from kept results ({kept} conditions kept, {patched} patched, {latest} answered from latest times, {narrow} passes read part of the ids, {kept_rows} contacts passes read the rows imports kept; {stood} runs left the latest times standing while files were folded in; {within} segments found among the changed contacts alone; {as_changes} runs kept their results as changes), each equal to a full computation",
        seeds.len()
    );
    if seeds.len() > 1 {
        assert!(runs >= seeds.len() * 5, "only {runs} incremental runs");
        assert!(
            kept > 0 && patched > 0 && latest > 0 && stood > 0 && within > 0 && as_changes > 0,
            "{kept} kept, {patched} patched, {latest} from latest times, {stood} left standing, {within} segments among changed contacts, {as_changes} kept as changes"
        );
    }
}

/// A seed from the clock, printed so that a failure can be replayed.
fn rand_seed() -> u64 {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("incremental: seeds from {s} (FRESH_SEED=<seed> replays one)");
    s
}

/// Create segments (JSON definitions) and compute them in full at `start`.
fn create_and_compute(
    tb: &super::super::common::TestBase,
    rt: &tokio::runtime::Runtime,
    definitions: &[Value],
    start: DateTime<Utc>,
) {
    let mut w = tb.base.writer("t").unwrap();
    for d in definitions {
        let d = segments::criteria::Definition::parse(d).unwrap();
        rt.block_on(segments::jobs::segments::create(&mut w, &d, start))
            .unwrap();
    }
    w.commit().unwrap();
    let full = segments::jobs::recompute::Fresh::Full;
    super::super::common::recompute_committed(&tb.base, rt, start, full);
}

/// Segments whose trees ran among the changed contacts, and over every
/// contact.
fn trees_ran(f: &segments::compile::fresh::Freshness) -> (usize, usize) {
    (f.segments_within, f.segments_whole)
}

/// Import contacts (CSV rows under `header`) without refreshing segments.
fn import_rows(
    tb: &super::super::common::TestBase,
    name: &str,
    header: &str,
    rows: &[String],
    overwrite_empty: bool,
) {
    let mut csv = format!("{header}\n");
    for r in rows {
        csv.push_str(r);
        csv.push('\n');
    }
    let f = tb.file(&format!("{name}.csv"), &csv);
    let mut w = tb.base.writer("t").unwrap();
    let options = ImportOptions {
        name: Some(name.into()),
        overwrite_empty,
    };
    import_contacts(&mut w, &f, &options).unwrap();
    w.commit().unwrap();
}

/// An incremental recompute at `as_of`, checked against a full computation;
/// how it used the kept results.
fn incremental_equals_full_at(
    tb: &super::super::common::TestBase,
    rt: &tokio::runtime::Runtime,
    as_of: DateTime<Utc>,
    step: &str,
) -> segments::compile::fresh::Freshness {
    let incremental = segments::jobs::recompute::Fresh::Incremental;
    let (report, _) = super::super::common::recompute_committed(&tb.base, rt, as_of, incremental);
    let failures = check_against_full(tb.path(), as_of, step, rt);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    report.freshness.expect("an incremental run")
}

/// Contact conditions on dates that the clock moves (a birthday week,
/// sign-ups of the last 30 days, of more than 10 days ago): each
/// incremental run finds again the contacts whose dates lie between the
/// days or instants then and now, and no other, and equals a full run.
#[test]
fn moving_dates_are_found_again_for_the_contacts_between_then_and_now() {
    let tb = super::super::common::new_base("Europe/Paris");
    let rt = super::super::common::rt();
    let start = super::super::common::at("2026-11-23T12:00:00Z");
    let mut csv = String::from("contact_id,birth_date,created_at\n");
    for id in 1..=300i64 {
        let born =
            NaiveDate::from_ymd_opt(1990, 1, 1).unwrap() + ChronoDuration::days(id * 37 % 366);
        let created = start - ChronoDuration::hours(id * 7 + id % 3);
        let created = created.to_rfc3339_opts(SecondsFormat::Secs, true);
        // Every tenth contact has no dates, every fifteenth no sign-up
        // instant: empty values answer alike at every instant.
        match (id % 10, id % 15) {
            (0, _) => csv.push_str(&format!("{id},,\n")),
            (_, 0) => csv.push_str(&format!("{id},{born},\n")),
            _ => csv.push_str(&format!("{id},{born},{created}\n")),
        }
    }
    tb.import_contacts("people", &csv).unwrap();
    let definitions = [
        json!({"id": "birthday-week", "name": "Birthday week",
               "criteria": {"field": "birth_date", "op": "anniversary_within", "value": "7d"}}),
        json!({"id": "new-signups", "name": "New sign-ups",
               "criteria": {"field": "created_at", "op": "within_last", "value": "30d"}}),
        json!({"id": "old-signups", "name": "Older sign-ups",
               "criteria": {"field": "created_at", "op": "more_than_ago", "value": "10d"}}),
    ];
    create_and_compute(&tb, &rt, &definitions, start);
    let mut as_of = start;
    // Within the same day, the birthday week stands; the sign-up instants
    // move with every hour.
    for (step, hours, moved) in [
        ("an hour", 1, 2),
        ("a day", 24, 3),
        ("three days", 72, 3),
        ("23 hours", 23, 3),
    ] {
        as_of += ChronoDuration::hours(hours);
        let f = incremental_equals_full_at(&tb, &rt, as_of, step);
        assert_eq!(f.contacts.full, 0, "after {step}: {}", f.describe());
        assert_eq!(f.contacts.patched, moved, "after {step}: {}", f.describe());
        // The contacts found again are those with a date in the bands,
        // not every contact.
        assert!(
            f.contacts.dirty_contacts > 0 && f.contacts.dirty_contacts < 150,
            "after {step}: {}",
            f.describe()
        );
    }
    // A contact updated, and the clock moved by eight hours: each sign-up
    // condition is evaluated again for that contact and found again for
    // the contacts whose sign-up instant the clock swept (some in each
    // band); both change its result.
    import_rows(
        &tb,
        "one-update",
        "contact_id,birth_date",
        &["5,1991-06-01".to_string()],
        false,
    );
    as_of += ChronoDuration::hours(8);
    let f = incremental_equals_full_at(&tb, &rt, as_of, "an update and eight hours");
    assert_eq!(f.contacts.full, 0, "{}", f.describe());
}

/// Sums and averages over a sliding window, with events crossing its start
/// for a few contacts spread over the ids: each incremental run patches
/// the conditions from the rows of the contacts with events in the swept
/// bands or new events alone (no condition in full), and equals a full run.
#[test]
fn sliding_sums_are_patched_from_the_rows_of_the_contacts_that_crossed_a_window() {
    let tb = super::super::common::new_base("Europe/Paris");
    let rt = super::super::common::rt();
    let start = super::super::common::at("2026-11-23T12:00:00Z");
    let mut contacts = String::from("contact_id,email\n");
    let mut events = String::from("contact_id,ts,type,amount\n");
    let ts = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    for id in 1..=400i64 {
        contacts.push_str(&format!("{id},c{id}@example.com\n"));
        // A purchase a contact: for odd contacts in the day after the
        // window's start (which the next steps sweep), for even ones spread
        // over 45 days.
        let t = match id % 2 {
            1 => start - ChronoDuration::days(29) - ChronoDuration::minutes(id * 13 % 96 * 15),
            _ => {
                start - ChronoDuration::days(id * 7 % 45) - ChronoDuration::minutes(id * 37 % 1440)
            }
        };
        events.push_str(&format!("{id},{},purchase,{}\n", ts(t), id % 7 * 20 + 5));
        // A second one: for odd contacts inside the window at every step,
        // so that their answers rest on the rows left once the first one
        // leaves it.
        let (t, amount) = match id % 2 {
            1 => (start - ChronoDuration::days(3), 70),
            _ => (
                start - ChronoDuration::days(id * 11 % 40) - ChronoDuration::hours(5),
                50,
            ),
        };
        events.push_str(&format!("{id},{},purchase,{amount}\n", ts(t)));
    }
    tb.import_contacts("people", &contacts).unwrap();
    tb.import_events("history", &events).unwrap();
    let definitions = [
        json!({"id": "spent", "name": "Spent over 60 in 30 days",
               "criteria": {"behavior": {"event": "purchase", "within": "30d",
                   "having": {"agg": "sum", "field": "amount", "op": "gt", "value": 60}}}}),
        json!({"id": "basket", "name": "Average basket over 40 in 30 days",
               "criteria": {"behavior": {"event": "purchase", "within": "30d",
                   "having": {"agg": "avg", "field": "amount", "op": "gt", "value": 40}}}}),
    ];
    create_and_compute(&tb, &rt, &definitions, start);
    let mut as_of = start;
    for (step, hours, new_events) in [
        ("an hour", 1, &[][..]),
        ("three hours and purchases", 3, &[7i64, 150, 391][..]),
        ("six hours", 6, &[][..]),
    ] {
        as_of += ChronoDuration::hours(hours);
        if !new_events.is_empty() {
            let mut csv = String::from("contact_id,ts,type,amount\n");
            for id in new_events {
                let t = as_of - ChronoDuration::minutes(30);
                csv.push_str(&format!("{id},{},purchase,45\n", ts(t)));
            }
            // Imported without the refresh (which runs at the present
            // instant): the run below refreshes.
            let f = tb.file(&format!("burst-{hours}.csv"), &csv);
            let mut w = tb.base.writer("t").unwrap();
            let options = EventImportOptions {
                name: None,
                skip_unknown: false,
            };
            import_events(&mut w, &f, &options).unwrap();
            w.commit().unwrap();
        }
        let f = incremental_equals_full_at(&tb, &rt, as_of, step);
        assert_eq!(f.events.full, 0, "after {step}: {}", f.describe());
        assert_eq!(f.events.patched, 2, "after {step}: {}", f.describe());
        // The contacts with a purchase in the swept bands, or a new one,
        // spread from the first ids to the last.
        assert!(
            f.events.dirty_contacts > 0 && f.events.dirty_contacts < 100,
            "after {step}: {}",
            f.describe()
        );
    }
}

/// Contacts updated, added and deleted by small imports: the next run reads
/// their rows from the files those imports kept (the newest row of a
/// contact updated twice), not the contacts file, and equals a full run,
/// opt-ins counted included.
/// An import of many contacts keeps none, and the run reads every contact.
#[test]
fn updated_contacts_are_read_from_the_rows_their_imports_kept() {
    let tb = super::super::common::new_base("Europe/Paris");
    let rt = super::super::common::rt();
    let start = super::super::common::at("2026-11-23T12:00:00Z");
    let cities = ["Paris", "Lyon", "", "Nantes"];
    let mut csv = String::from("contact_id,city,score,interests,loyalty,email_optin\n");
    for id in 1..=1000i64 {
        let score = if id % 9 == 0 {
            String::new()
        } else {
            (id * 37 % 101).to_string()
        };
        let interests = ["golf;tennis", "", "golf", "wine"][(id % 4) as usize];
        let loyalty = ["gold", "", "silver", "bronze"][(id % 4) as usize];
        let optin = ["true", "false", ""][(id % 3) as usize];
        csv.push_str(&format!(
            "{id},{},{score},{interests},{loyalty},{optin}\n",
            cities[(id % 4) as usize]
        ));
    }
    tb.import_contacts("people", &csv).unwrap();
    let definitions = [
        json!({"id": "parisians", "name": "Parisians",
               "criteria": {"field": "city", "op": "eq", "value": "paris"}}),
        json!({"id": "no-city", "name": "No city",
               "criteria": {"field": "city", "op": "is_empty"}}),
        json!({"id": "high-score", "name": "High score",
               "criteria": {"field": "score", "op": "gt", "value": 50}}),
        json!({"id": "golfers-not-gold", "name": "Golfers not gold",
               "criteria": {"all": [
                   {"field": "interests", "op": "contains_any", "value": ["golf"]},
                   {"not": {"field": "loyalty", "op": "eq", "value": "gold"}}]}}),
    ];
    create_and_compute(&tb, &rt, &definitions, start);
    let import = |name: &str, rows: &[String], overwrite_empty: bool| {
        let header = "contact_id,city,score,interests,loyalty,email_optin";
        import_rows(&tb, name, header, rows, overwrite_empty);
    };
    // Spread over the ids (the first and last among them), each field
    // changed, and new contacts.
    let spread =
        |n: i64, salt: i64| -> Vec<i64> { (0..n).map(|i| 1 + (i * 997 + salt) % 1000).collect() };
    let rows: Vec<String> = spread(40, 3)
        .into_iter()
        .map(|id| format!("{id},Paris,{},golf,bronze,{}", 90 - id % 50, id % 2 == 0))
        .chain((1001..=1005).map(|id| format!("{id},Lyon,75,golf;wine,,true")))
        .collect();
    import("updates", &rows, false);
    let f = incremental_equals_full_at(&tb, &rt, start, "updates");
    assert_eq!(f.contacts.full, 0, "{}", f.describe());
    assert_eq!(f.contacts.changed_rows, 1, "{}", f.describe());
    assert!(f.contacts.dirty_contacts >= 45, "{}", f.describe());

    // Two imports, the second changing again half the contacts of the
    // first (emptying their city and score: out of every segment they had
    // entered but one), then a deletion.
    let first = spread(30, 11);
    import(
        "first",
        &first
            .iter()
            .map(|id| format!("{id},Paris,80,golf,bronze,true"))
            .collect::<Vec<_>>(),
        false,
    );
    let again: Vec<String> = first
        .iter()
        .step_by(2)
        .map(|id| format!("{id},,,wine,gold,"))
        .chain(
            spread(10, 500)
                .iter()
                .map(|id| format!("{id},Paris,99,,,false")),
        )
        .collect();
    import("again", &again, true);
    let mut w = tb.base.writer("t").unwrap();
    segments::base::contacts::delete_contacts(&mut w, &[first[1] as u64, first[2] as u64, 1003])
        .unwrap();
    w.commit().unwrap();
    let f = incremental_equals_full_at(&tb, &rt, start, "two imports and a deletion");
    assert_eq!(f.contacts.changed_rows, 2, "{}", f.describe());

    // An import of more than an eighth of the contacts keeps no rows.
    let many: Vec<String> = spread(200, 7)
        .iter()
        .map(|id| format!("{id},Lyon,1,,gold,true"))
        .collect();
    import("many", &many, false);
    let f = incremental_equals_full_at(&tb, &rt, start, "many updates");
    assert_eq!(f.contacts.changed_rows, 0, "{}", f.describe());
    assert_eq!(f.contacts.full, 0, "{}", f.describe());
}

/// A segment whose stored members are its tree over the kept results is
/// found again among the contacts changed since alone, from those members:
/// entries, exits, size and opt-ins counted from what changed, a member
/// whose opt-in alone changed included. A segment edited, one that names
/// it, and those that lost members to a deletion are found again over
/// every contact.
#[test]
fn segments_are_found_again_among_the_contacts_changed_since() {
    let tb = super::super::common::new_base("Europe/Paris");
    let rt = super::super::common::rt();
    let start = super::super::common::at("2026-11-23T12:00:00Z");
    let mut csv = String::from("contact_id,city,email_optin,sms_optin\n");
    for id in 1..=2000i64 {
        let city = ["Paris", "Lyon", "", "Nantes"][(id % 4) as usize];
        csv.push_str(&format!("{id},{city},{},{}\n", id % 3 == 0, id % 5 == 0));
    }
    tb.import_contacts("people", &csv).unwrap();
    // No other segment reads the opt-ins.
    let mut w = tb.base.writer("t").unwrap();
    let defaults: Vec<String> = w.next.segments.iter().map(|s| s.id.clone()).collect();
    for id in &defaults {
        segments::jobs::segments::set_paused(&mut w, id, true).unwrap();
    }
    w.commit().unwrap();
    let definitions = [
        json!({"id": "parisians", "name": "Parisians",
               "criteria": {"field": "city", "op": "eq", "value": "paris"}}),
        json!({"id": "elsewhere", "name": "Elsewhere",
               "criteria": {"all": [{"field": "city", "op": "is_not_empty"},
                                    {"not": {"segment": "Parisians"}}]}}),
        json!({"id": "not-in-paris", "name": "Not in Paris",
               "criteria": {"not": {"segment": "parisians"}}}),
        // A query's result is not kept: found over every contact.
        json!({"id": "queried-parisians", "name": "Queried Parisians",
               "criteria": {"all": [{"segment": "parisians"},
                                    {"query": "SELECT contact_id FROM contacts WHERE contact_id % 2 = 0"}]}}),
    ];
    create_and_compute(&tb, &rt, &definitions, start);
    let import = |name: &str, rows: &[String]| {
        import_rows(
            &tb,
            name,
            "contact_id,city,email_optin,sms_optin",
            rows,
            false,
        );
    };
    // Parisians' e-mail or SMS opt-ins flipped, their city as it was.
    let flipped: Vec<String> = (0..20i64)
        .map(|k| 4 * k + 4)
        .map(|id| {
            let flip = id % 8 == 0;
            format!(
                "{id},Paris,{},{}",
                (id % 3 == 0) != flip,
                (id % 5 == 0) == flip
            )
        })
        .collect();
    import("opt-ins", &flipped);
    let f = incremental_equals_full_at(&tb, &rt, start, "opt-ins changed");
    assert_eq!(trees_ran(&f), (3, 1), "{}", f.describe());
    assert!(f.within_contacts >= 20, "{}", f.describe());
    // The results kept as their changes from the first run's, which the
    // next runs read.
    let kept_as_changes = || {
        let snap = tb.base.snapshot().unwrap();
        snap.manifest.leaves.as_ref().unwrap().changes.is_some()
    };
    assert!(kept_as_changes());

    // Contacts moved into Paris and out of it, new ones (with no city: in
    // no condition's result, in the segment of those not in Paris).
    let moved: Vec<String> = (1..=30i64)
        .map(|id| format!("{id},{},,", if id % 4 == 0 { "Lyon" } else { "Paris" }))
        .chain((2001..=2005).map(|id| format!("{id},Paris,true,false")))
        .chain((2006..=2009).map(|id| format!("{id},,,")))
        .collect();
    import("moves", &moved);
    let f = incremental_equals_full_at(&tb, &rt, start, "contacts moved");
    assert_eq!(trees_ran(&f), (3, 1), "{}", f.describe());
    assert!(kept_as_changes());

    // An edit: the segment and the one naming it over every contact.
    let edited = segments::criteria::Definition::parse(&json!({
        "id": "parisians", "name": "Parisians",
        "criteria": {"field": "city", "op": "in", "value": ["paris", "nantes"]}}))
    .unwrap();
    let mut w = tb.base.writer("t").unwrap();
    rt.block_on(segments::jobs::segments::edit(
        &mut w,
        "parisians",
        &edited,
        start,
    ))
    .unwrap();
    w.commit().unwrap();
    let f = incremental_equals_full_at(&tb, &rt, start, "an edit");
    assert_eq!(trees_ran(&f), (0, 4), "{}", f.describe());
    let f = incremental_equals_full_at(&tb, &rt, start, "nothing changed");
    assert_eq!(f.segments_whole, 1, "{}", f.describe());

    // A deletion of Parisians.
    let mut w = tb.base.writer("t").unwrap();
    segments::base::contacts::delete_contacts(&mut w, &[2, 8, 12]).unwrap();
    w.commit().unwrap();
    import("more moves", &["40,Lyon,,".to_string()]);
    let f = incremental_equals_full_at(&tb, &rt, start, "a deletion");
    assert!(f.segments_whole >= 1, "{}", f.describe());

    // More than a twentieth of the contacts changed: every segment over
    // every contact.
    let many: Vec<String> = (101..=400i64)
        .filter(|id| id % 4 != 0)
        .map(|id| format!("{id},Paris,,"))
        .collect();
    import("many", &many);
    let f = incremental_equals_full_at(&tb, &rt, start, "many changes");
    assert_eq!(trees_ran(&f), (0, 4), "{}", f.describe());
}
