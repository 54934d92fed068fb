//! Segment lifecycle: create, recompute, entry dates and history, pause,
//! delete, failure isolation, dependency order, audience.

use serde_json::json;

use super::common::{TestBase, at, rt};
use segments::base::members::Members;
use segments::criteria::Definition;
use segments::jobs::recompute::{Fresh, recompute};
use segments::jobs::segments as seg;

fn def(v: serde_json::Value) -> Definition {
    Definition::parse(&v).unwrap()
}

fn base() -> TestBase {
    base_with(200)
}

fn base_with(threshold: usize) -> TestBase {
    let tb = super::common::new_base_with("UTC", threshold);
    tb.import_contacts(
        "c",
        "contact_id,email,phone,email_optin,sms_optin,email_status,score\n\
         1,a@x.fr,+331,true,true,valid,10\n\
         2,b@x.fr,,true,,hard_bounce,20\n\
         3,,+333,,false,,30\n\
         4,d@x.fr,+334,false,true,valid,40\n",
    )
    .unwrap();
    tb.import_events(
        "e",
        "contact_id,ts,type\n1,2026-01-10T00:00:00Z,purchase\n2,2026-01-20T00:00:00Z,purchase\n3,2026-02-01T00:00:00Z,purchase\n",
    )
    .unwrap();
    tb
}

fn members(tb: &TestBase, id: &str) -> Vec<u32> {
    let snap = tb.base.snapshot().unwrap();
    let (_, m) = seg::members_of(&snap, id).unwrap();
    m.members.iter().collect()
}

/// The one number a `SELECT count(*) …` gives.
fn count(snap: &segments::base::Snapshot, sql: &str) -> u64 {
    let batches = rt().block_on(segments::sql::run_query(snap, sql)).unwrap();
    batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<datafusion::arrow::array::Int64Array>()
        .unwrap()
        .value(0) as u64
}

#[test]
fn defaults_are_computed_with_statistics_equal_to_a_recount() {
    let tb = base();
    let snap = tb.base.snapshot().unwrap();
    let rec = snap.manifest.segment("email_subscribers").unwrap();
    let stats = rec.stats.as_ref().expect("computed after the import");
    assert_eq!(stats.contacts, 2);
    assert_eq!(stats.email_optins, 2);
    assert_eq!(stats.sms_optins, 1);
    let n = count(
        &snap,
        "SELECT count(*) AS n FROM contacts WHERE email <> '' AND email_optin",
    );
    assert_eq!(n, stats.contacts);
    assert_eq!(members(&tb, "email_bad_addresses").len(), 1);
    assert_eq!(members(&tb, "sms_unsubscribed").len(), 1);
    assert_eq!(members(&tb, "all_contacts").len(), 4);
}

#[test]
fn entry_dates_over_three_recomputes_stay_exit_and_reenter() {
    let tb = base();
    let rt = rt();
    // Bought within 30 days of as_of.
    let d = def(
        json!({"id": "recent", "name": "Recent buyers", "criteria": {"behavior": {"event": "purchase", "within": "30d"}}}),
    );
    let mut w = tb.base.writer("t").unwrap();
    rt.block_on(seg::create(&mut w, &d, at("2026-02-05T00:00:00Z")))
        .unwrap(); // 1, 2, 3
    w.commit().unwrap();
    let snap = tb.base.snapshot().unwrap();
    let (_, m1) = seg::members_of(&snap, "recent").unwrap();
    assert_eq!(m1.members.len(), 3);
    let entered_1 = m1.entered_at(0).unwrap();
    for (as_of, want) in [
        ("2026-02-15T00:00:00Z", 2u64),
        ("2026-03-05T00:00:00Z", 0),
        ("2026-02-05T00:00:00Z", 3),
    ] {
        let mut w = tb.base.writer("t").unwrap();
        rt.block_on(recompute(&mut w, at(as_of), Fresh::Incremental))
            .unwrap();
        w.commit().unwrap();
        let snap = tb.base.snapshot().unwrap();
        let (rec, m) = seg::members_of(&snap, "recent").unwrap();
        assert_eq!(m.members.len(), want, "as of {as_of}");
        let history = rec.history.points(snap.dir()).unwrap();
        assert_eq!(history.last().unwrap().size, m.members.len());
        if as_of == "2026-02-15T00:00:00Z" {
            // Contact 1 (iid 0) left; 2 and 3 stayed with their first entry date.
            assert!(!m.members.contains(0));
            assert_eq!(m.entered_at(1), m1.entered_at(1));
        }
    }
    let snap = tb.base.snapshot().unwrap();
    let (rec, m) = seg::members_of(&snap, "recent").unwrap();
    // Re-entered: a new entry date.
    assert!(m.entered_at(0).unwrap() > entered_1);
    let history = rec.history.points(snap.dir()).unwrap();
    let sizes: Vec<u64> = history.iter().map(|h| h.size).collect();
    assert_eq!(sizes, vec![3, 2, 0, 3]);
    let entries: Vec<u64> = history.iter().map(|h| h.entries).collect();
    let exits: Vec<u64> = history.iter().map(|h| h.exits).collect();
    assert_eq!(entries, vec![3, 0, 0, 3]);
    assert_eq!(exits, vec![0, 1, 2, 0]);
}

#[test]
fn pause_freezes_members_and_resume_recomputes() {
    let tb = base();
    let rt = rt();
    let d = def(
        json!({"id": "big", "name": "Big", "criteria": {"field": "score", "op": "gte", "value": 20}}),
    );
    let mut w = tb.base.writer("t").unwrap();
    rt.block_on(seg::create(&mut w, &d, chrono::Utc::now()))
        .unwrap();
    seg::set_paused(&mut w, "big", true).unwrap();
    w.commit().unwrap();
    tb.import_contacts("more", "contact_id,score\n9,99\n")
        .unwrap();
    assert_eq!(
        members(&tb, "big").len(),
        3,
        "paused: frozen through the import's recompute"
    );
    let mut w = tb.base.writer("t").unwrap();
    rt.block_on(recompute(&mut w, chrono::Utc::now(), Fresh::Incremental))
        .unwrap();
    w.commit().unwrap();
    assert_eq!(
        members(&tb, "big").len(),
        3,
        "paused: frozen through the nightly job"
    );
    let mut w = tb.base.writer("t").unwrap();
    seg::set_paused(&mut w, "big", false).unwrap();
    rt.block_on(segments::jobs::recompute::compute_into(
        &mut w,
        &["big".to_string()],
        chrono::Utc::now(),
    ))
    .unwrap();
    w.commit().unwrap();
    assert_eq!(members(&tb, "big").len(), 4);
}

#[test]
fn delete_is_refused_while_referenced() {
    let tb = base();
    let rt = rt();
    let mut w = tb.base.writer("t").unwrap();
    rt.block_on(seg::create(
        &mut w,
        &def(
            json!({"id": "a", "name": "A", "criteria": {"field": "score", "op": "gt", "value": 1}}),
        ),
        chrono::Utc::now(),
    ))
    .unwrap();
    rt.block_on(seg::create(
        &mut w,
        &def(json!({"id": "b", "name": "B", "criteria": {"not": {"segment": "A"}}})),
        chrono::Utc::now(),
    ))
    .unwrap();
    let e = seg::delete(&mut w, "a").unwrap_err().to_string();
    assert!(e.contains("used by b"), "{e}");
    seg::delete(&mut w, "b").unwrap();
    seg::delete(&mut w, "a").unwrap();
    let e = seg::delete(&mut w, "active_contacts")
        .unwrap_err()
        .to_string();
    assert!(e.contains("inactive_contacts"), "{e}");
}

#[test]
fn a_failing_segment_and_its_dependants_fail_alone_and_keep_members() {
    let tb = base();
    let rt = rt();
    let mut w = tb.base.writer("t").unwrap();
    rt.block_on(seg::create(&mut w, &def(json!({"id": "ok", "name": "Ok", "criteria": {"field": "score", "op": "gt", "value": 15}})), chrono::Utc::now())).unwrap();
    rt.block_on(seg::create(
        &mut w,
        &def(json!({"id": "flaky", "name": "Flaky", "criteria": {"sql": "score > 15"}})),
        chrono::Utc::now(),
    ))
    .unwrap();
    rt.block_on(seg::create(
        &mut w,
        &def(json!({"id": "child", "name": "Child", "criteria": {"segment": "flaky"}})),
        chrono::Utc::now(),
    ))
    .unwrap();
    // Break the SQL of `flaky` behind validation's back: it now fails at run time.
    w.next.segment_mut("flaky").unwrap().criteria = Some(json!({"sql": "no_such_column > 15"}));
    let report = rt
        .block_on(recompute(&mut w, chrono::Utc::now(), Fresh::Incremental))
        .unwrap();
    w.commit().unwrap();
    let failed: Vec<&str> = report.failures().iter().map(|f| f.id.as_str()).collect();
    assert_eq!(failed, vec!["child", "flaky"]);
    let child = report.segments.iter().find(|s| s.id == "child").unwrap();
    assert!(
        child
            .error
            .as_deref()
            .unwrap()
            .contains("dependency flaky failed")
    );
    let snap = tb.base.snapshot().unwrap();
    let flaky = snap.manifest.segment("flaky").unwrap();
    assert!(flaky.error.as_deref().unwrap().contains("no_such_column"));
    assert_eq!(
        Members::load(snap.dir(), flaky).unwrap().members.len(),
        3,
        "previous members kept"
    );
    assert_eq!(
        snap.manifest
            .segment("ok")
            .unwrap()
            .stats
            .as_ref()
            .unwrap()
            .contacts,
        3
    );
}

#[test]
fn dependency_order_on_a_chain_of_five_and_a_diamond() {
    let tb = base();
    let rt = rt();
    let mut w = tb.base.writer("t").unwrap();
    let now = chrono::Utc::now();
    rt.block_on(seg::create(&mut w, &def(json!({"id": "s1", "name": "s1", "criteria": {"field": "score", "op": "gte", "value": 20}})), now)).unwrap();
    for i in 2..=5 {
        let d = def(
            json!({"id": format!("s{i}"), "name": format!("s{i}"), "criteria": {"segment": format!("s{}", i - 1)}}),
        );
        rt.block_on(seg::create(&mut w, &d, now)).unwrap();
    }
    rt.block_on(seg::create(&mut w, &def(json!({"id": "left", "name": "left", "criteria": {"all": [{"segment": "s1"}, {"field": "score", "op": "lte", "value": 30}]}})), now)).unwrap();
    rt.block_on(seg::create(&mut w, &def(json!({"id": "right", "name": "right", "criteria": {"all": [{"segment": "s1"}, {"field": "score", "op": "gte", "value": 30}]}})), now)).unwrap();
    rt.block_on(seg::create(&mut w, &def(json!({"id": "join", "name": "join", "criteria": {"all": [{"segment": "left"}, {"segment": "right"}]}})), now)).unwrap();
    w.commit().unwrap();
    // Change the data so that every level changes in one run.
    tb.import_contacts("more", "contact_id,score\n7,30\n8,25\n")
        .unwrap();
    assert_eq!(members(&tb, "s5"), members(&tb, "s1"));
    assert_eq!(members(&tb, "s5").len(), 5);
    assert_eq!(members(&tb, "join").len(), 2); // score 30: contact 3 and 7
}

#[test]
fn audience_refreshes_and_applies_the_channel() {
    // Threshold 0: imports only mark segments for refresh.
    let tb = base_with(0);
    let rt = rt();
    let mut w = tb.base.writer("t").unwrap();
    rt.block_on(seg::create(&mut w, &def(json!({"id": "buyers", "name": "Buyers", "criteria": {"behavior": {"event": "purchase"}}})), chrono::Utc::now())).unwrap();
    w.commit().unwrap();
    // New buyer 4 arrives; the audience refreshes `buyers` before resolving.
    tb.import_events(
        "e2",
        "contact_id,ts,type\n4,2026-02-10T00:00:00Z,purchase\n",
    )
    .unwrap();
    assert!(
        tb.base
            .snapshot()
            .unwrap()
            .manifest
            .segment("buyers")
            .unwrap()
            .needs_refresh
    );
    let mut w = tb.base.writer("t").unwrap();
    let email = rt
        .block_on(seg::audience(
            &mut w,
            &["buyers".into()],
            &[],
            seg::Channel::Email,
            chrono::Utc::now(),
        ))
        .unwrap();
    // 1: subscriber, valid; 2: hard bounce; 3: no e-mail; 4: opted out.
    assert_eq!(email.iter().collect::<Vec<_>>(), vec![0]);
    let sms = rt
        .block_on(seg::audience(
            &mut w,
            &["buyers".into()],
            &["email_subscribers".into()],
            seg::Channel::Sms,
            chrono::Utc::now(),
        ))
        .unwrap();
    assert_eq!(sms.iter().collect::<Vec<_>>(), vec![3]);
}

/// What a recompute leaves of every segment: status, statistics, members
/// with their entry times, and history. Clock times not in `known` (the
/// times of the base before the run) read `new`, so that two runs compare.
fn outcome(dir: &std::path::Path, known: &std::collections::HashSet<i64>) -> Vec<String> {
    let snap = segments::base::Base::open(dir).unwrap().snapshot().unwrap();
    let problems = segments::base::check::check(&snap).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    let time = |t: i64| match known.contains(&t) {
        true => t.to_string(),
        false => "new".to_string(),
    };
    let mut out = Vec::new();
    for s in &snap.manifest.segments {
        let m = Members::load(snap.dir(), s).unwrap();
        let stats = s.stats.as_ref().map(|st| {
            format!(
                "{} contacts, {} e-mail, {} SMS, computed {} as of {}",
                st.contacts,
                st.email_optins,
                st.sms_optins,
                time(st.computed_at.timestamp_micros()),
                st.as_of
            )
        });
        out.push(format!("{} {:?} {:?}: {stats:?}", s.id, s.status, s.error));
        let entries: Vec<String> = m
            .members
            .iter()
            .map(|iid| format!("{iid}@{}", time(m.entered_at(iid).unwrap())))
            .collect();
        out.push(format!("  members {}", entries.join(" ")));
        for p in s.history.points(snap.dir()).unwrap().iter() {
            out.push(format!(
                "  history at {} as of {}: {} (+{} -{})",
                time(p.at.timestamp_micros()),
                p.as_of,
                p.size,
                p.entries,
                p.exits
            ));
        }
    }
    out
}

/// Every clock time of a base: computations, entries, history points.
fn clock_times(dir: &std::path::Path) -> std::collections::HashSet<i64> {
    let snap = segments::base::Base::open(dir).unwrap().snapshot().unwrap();
    let mut out = std::collections::HashSet::new();
    for s in &snap.manifest.segments {
        if let Some(st) = &s.stats {
            out.insert(st.computed_at.timestamp_micros());
        }
        let m = Members::load(snap.dir(), s).unwrap();
        out.extend(m.cohorts.iter().map(|(t, _)| *t));
        for p in s.history.points(snap.dir()).unwrap().iter() {
            out.insert(p.at.timestamp_micros());
        }
    }
    out
}

/// SIGKILL `segments recompute` at random points once it holds the lock;
/// the previous results stay readable and consistent, and a rerun gives
/// what a clean run gives: members, statistics, entry dates and history
/// (or, when the killed run had published, what two clean runs give).
#[test]
fn recompute_killed_at_random_points_then_rerun_equals_a_clean_run() {
    let scratch = tempfile::tempdir().unwrap();
    let template = scratch.path().join("template");
    let as_of = "2026-11-23T03:00:00Z";
    segments::synth::generate(
        &template,
        &segments::synth::GenOptions {
            contacts: 30_000,
            events_per_contact: 20,
            seed: 3,
            as_of: at(as_of),
        },
    )
    .unwrap();
    let base = segments::base::Base::open(&template).unwrap();
    rt().block_on(segments::synth::create_examples(&base, at(as_of)))
        .unwrap();
    let bin = assert_cmd::cargo::cargo_bin("segments");
    let recompute = |dir: &std::path::Path| {
        super::common::succeeded(
            std::process::Command::new(&bin)
                .env("SEGMENTS_BASE", dir)
                .args(["recompute", "--as-of", as_of])
                .output()
                .unwrap(),
        )
    };
    let known = clock_times(&template);
    let before = outcome(&template, &known);
    let args = ["recompute", "--as-of", as_of];
    let clean = super::common::Probe::run(&template, &scratch.path().join("clean"), &args);
    let expected = outcome(&clean.dir, &known);
    assert_ne!(before, expected);
    recompute(&clean.dir);
    let expected_twice = outcome(&clean.dir, &known);
    let kills =
        super::common::kill_rounds(&template, scratch.path(), &args, &clean, 20, |k, dir| {
            let now = outcome(dir, &known);
            let (seen, rerun) = if now == before {
                (super::common::Seen::Old, &expected)
            } else if now == expected {
                (super::common::Seen::New, &expected_twice)
            } else {
                panic!("round {k}: results are neither the old nor the new ones");
            };
            recompute(dir);
            assert_eq!(
                &outcome(dir, &known),
                rerun,
                "round {k}: the rerun differs from a clean run"
            );
            seen
        });
    println!(
        "recompute crash test: {} kills at random points while holding the lock ({} old results, {} new), {} runs finished first; killed before and after publishing: old, then new",
        kills.killed, kills.saw_old, kills.saw_new, kills.finished
    );
    assert!(kills.killed >= 20 && kills.saw_old > 0, "{kills:?}");
}

#[test]
fn a_concurrent_recompute_is_refused_by_the_lock() {
    let tb = base();
    let _held = tb.base.writer("segments recompute").unwrap();
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("segments"))
        .env("SEGMENTS_BASE", tb.path())
        .arg("recompute")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("locked by another writer: `segments recompute`"),
        "{err}"
    );
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
}

#[test]
fn auto_refresh_below_and_above_the_threshold() {
    for (threshold, refreshed) in [(200usize, true), (5, false)] {
        let tb = base_with(threshold);
        let before = members(&tb, "all_contacts").len();
        tb.import_contacts("more", "contact_id,score\n50,1\n51,2\n")
            .unwrap();
        let snap = tb.base.snapshot().unwrap();
        let rec = snap.manifest.segment("all_contacts").unwrap();
        if refreshed {
            assert_eq!(members(&tb, "all_contacts").len(), before + 2);
            assert!(!rec.needs_refresh);
        } else {
            assert_eq!(members(&tb, "all_contacts").len(), before);
            assert!(rec.needs_refresh);
        }
    }
}

#[test]
fn late_after_a_missed_nightly_window() {
    use segments::base::status::{effective_status, last_window_start};
    let tb = base();
    let snap = tb.base.snapshot().unwrap();
    let config = &tb.base.config; // window 01:00-06:00 UTC
    let mut rec = snap.manifest.segment("email_contacts").unwrap().clone();
    let computed = rec.stats.as_ref().unwrap().computed_at;
    // Just after computing: up to date; two days later, the windows were missed.
    assert_eq!(
        effective_status(&rec, config, computed, false),
        "up_to_date"
    );
    let later = computed + chrono::Duration::days(2);
    assert!(last_window_start(config, later) > computed);
    rec.created_at = computed - chrono::Duration::days(10);
    assert_eq!(effective_status(&rec, config, later, false), "late");
    rec.paused = true;
    assert_eq!(effective_status(&rec, config, later, false), "paused");
    rec.paused = false;
    rec.status = segments::base::manifest::SegmentStatus::Failed;
    assert_eq!(effective_status(&rec, config, later, false), "failed");
}

#[test]
fn deleting_contacts_keeps_statistics_equal_to_a_recount() {
    let tb = base();
    let mut w = tb.base.writer("t").unwrap();
    segments::base::contacts::delete_contacts(&mut w, &[1]).unwrap();
    w.commit().unwrap();
    let snap = tb.base.snapshot().unwrap();
    let stats = snap
        .manifest
        .segment("email_subscribers")
        .unwrap()
        .stats
        .clone()
        .unwrap();
    // Contact 2 is left: opted in by e-mail, SMS opt-in unknown.
    assert_eq!(
        (stats.contacts, stats.email_optins, stats.sms_optins),
        (1, 1, 0)
    );
    assert!(segments::base::check::check(&snap).unwrap().is_empty());
}

#[test]
fn computing_while_a_recompute_holds_the_base() {
    let tb = base();
    let list = || -> serde_json::Value {
        let out = super::common::succeeded(
            std::process::Command::new(assert_cmd::cargo::cargo_bin("segments"))
                .env("SEGMENTS_BASE", tb.path())
                .args(["segment", "list", "--format", "json"])
                .output()
                .unwrap(),
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let status = |v: &serde_json::Value, id: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(status(&list(), "email_contacts"), "up_to_date");
    let held = tb.base.writer("segments recompute").unwrap();
    assert_eq!(status(&list(), "email_contacts"), "computing");
    drop(held);
    assert_eq!(status(&list(), "email_contacts"), "up_to_date");
}

/// A computation that changes a few members of a large segment writes its
/// entries and exits only: the members read back are the last members file
/// with them applied, entry dates included; past eight of them the members
/// are written whole again. Every read agrees: members, entry dates, SQL,
/// statistics, `check`.
#[test]
fn few_changes_to_a_large_segment_are_kept_as_entries_and_exits() {
    let tb = super::common::new_base_with("UTC", 200);
    let mut csv = String::from("contact_id,score\n");
    for id in 1..=4000 {
        csv += &format!("{id},{id}\n");
    }
    tb.import_contacts("c", &csv).unwrap();
    let rt = rt();
    let d = def(
        json!({"id": "big", "name": "Big", "criteria": {"field": "score", "op": "gte", "value": 100}}),
    );
    let mut w = tb.base.writer("t").unwrap();
    rt.block_on(seg::create(&mut w, &d, chrono::Utc::now()))
        .unwrap();
    w.commit().unwrap();
    let snap = tb.base.snapshot().unwrap();
    let (_, first) = seg::members_of(&snap, "big").unwrap();
    assert_eq!(first.members.len(), 3901);
    // Contact ids 1..=4000 have internal ids 0..=3999.
    let mut want: roaring::RoaringBitmap = (99..4000).collect();
    let mut pending = Vec::new();
    for round in 1..=10u32 {
        // One member leaves; the one that left the round before comes back.
        let (leaves, returns) = (200 + round, 200 + round - 1);
        let mut csv = format!("contact_id,score\n{leaves},1\n");
        if round > 1 {
            csv += &format!("{returns},{returns}\n");
        }
        tb.import_contacts(&format!("round-{round}"), &csv).unwrap();
        want.remove(leaves - 1);
        if round > 1 {
            want.insert(returns - 1);
        }
        let snap = tb.base.snapshot().unwrap();
        let (rec, m) = seg::members_of(&snap, "big").unwrap();
        assert_eq!(m.members, want, "round {round}");
        pending.push(rec.members_since.len());
        // Every member has one entry date; the one that came back, a later one.
        let dated: u64 = m.cohorts.iter().map(|(_, b)| b.len()).sum();
        assert_eq!(dated, want.len(), "round {round}");
        if round > 1 {
            assert!(
                m.entered_at(returns - 1).unwrap() > first.entered_at(returns - 1).unwrap(),
                "round {round}"
            );
        }
        assert_eq!(m.entered_at(3000), first.entered_at(3000), "round {round}");
        assert_eq!(rec.stats.as_ref().unwrap().contacts, want.len());
        assert!(
            segments::base::check::check(&snap).unwrap().is_empty(),
            "round {round}"
        );
        let n = count(
            &snap,
            "SELECT count(*) FROM segment_members WHERE segment_id = 'big'",
        );
        assert_eq!(n, want.len(), "round {round}");
    }
    // Eight computations kept as entries and exits, then written whole.
    assert_eq!(pending, [1, 2, 3, 4, 5, 6, 7, 8, 0, 1]);
}
