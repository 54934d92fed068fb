//! The crash matrix: each command that writes a base is stopped at each of
//! its durable steps in turn (`SEGMENTS_CRASH_AT=N` aborts the process at
//! its N-th step: a data file created or flushed, a manifest written or
//! renamed, a superseded file collected). After each crash the base passes
//! `segments check`, reads as the state before the command or after it, and
//! the next command recovers the lock, completes, and leaves no stray file.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::common::copy_base;

const AS_OF: &str = "2026-11-23T12:00:00Z";
/// A recompute at this instant changes who is active.
const LATER: &str = "2027-09-01T12:00:00Z";

fn testdata(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(p)
}

/// Run the binary on a base; superseded versions are collected at once so
/// that garbage collection is part of every command.
fn run(base: &Path, args: &[String], crash_at: Option<u32>) -> Output {
    run_with(base, args, crash_at, &[])
}

/// Environment variables of a command.
type Env<'a> = &'a [(&'a str, &'a str)];

fn run_with(base: &Path, args: &[String], crash_at: Option<u32>, env: Env) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_segments"));
    c.env("SEGMENTS_BASE", base)
        .env("SEGMENTS_GC_GRACE_SECS", "0")
        .envs(env.iter().copied())
        .args(args);
    if let Some(n) = crash_at {
        c.env("SEGMENTS_CRASH_AT", n.to_string());
    }
    c.output().unwrap()
}

fn ok(base: &Path, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = run(base, &args, None);
    assert!(
        out.status.success(),
        "segments {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What a user can see of a base, in full and in order: every contact with
/// every field, every event, the imports, each segment's statistics, every
/// member with its entry time, and each segment's history; and the number
/// of events files of each month. Times taken from
/// the clock (when an import or a computation ran) are kept when `known`
/// holds them (they come from the state before the command) and read
/// `<new>` otherwise, so that two runs of one command compare equal.
fn state(base: &Path, known: &HashSet<String>) -> String {
    let check = ok(base, &["check"]);
    assert!(!check.contains("problem"), "{check}");
    let mut out: Vec<String> = [
        "SELECT * FROM contacts ORDER BY contact_id",
        "SELECT * FROM events ORDER BY contact_id, ts, type, operation_id, url, amount",
        "SELECT id, name, kind, at, file, rows_added, rows_updated, rows_skipped FROM imports ORDER BY at, id",
        "SELECT id, name, kind, status, contacts, email_optins, sms_optins, computed_at, error FROM segments ORDER BY id",
        "SELECT segment_id, contact_id, entered_at FROM segment_members ORDER BY segment_id, contact_id",
    ]
    .iter()
    .map(|q| ok(base, &["sql", "--format", "csv", q]))
    .collect();
    let snap = segments::base::Base::open(base)
        .unwrap()
        .snapshot()
        .unwrap();
    // How the events are laid out in files (what `compact` changes).
    let per_month = super::cli::files_per_month(base);
    out.push(format!("events files per month: {per_month:?}"));
    for rec in &snap.manifest.segments {
        out.push(format!("history of {}", rec.id));
        for p in rec.history.points(snap.dir()).unwrap().iter() {
            out.push(format!(
                "{},{},{},{},{}",
                p.at.to_rfc3339(),
                p.as_of.to_rfc3339(),
                p.size,
                p.entries,
                p.exits
            ));
        }
    }
    let text = out.join("\n");
    text.lines()
        .map(|line| {
            line.split(',')
                .map(|cell| match is_time(cell) && !known.contains(cell) {
                    true => "<new>",
                    false => cell,
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A cell that holds a point in time (`2026-11-23T12:00:00Z`, `2026-11-23 12:00:00.123`...).
fn is_time(cell: &str) -> bool {
    let b = cell.as_bytes();
    b.len() >= 19 && b[4] == b'-' && b[7] == b'-' && matches!(b[10], b'T' | b' ') && b[13] == b':'
}

/// The times that appear in a state: the clock times of what happened before.
fn times_of(state: &str) -> HashSet<String> {
    state
        .lines()
        .flat_map(|l| l.split(','))
        .filter(|c| is_time(c))
        .map(String::from)
        .collect()
}

/// Every file under the data folders and manifests is named by the
/// current manifest (nothing else is kept once collection has run).
fn stray_files(base: &Path) -> Vec<String> {
    let m = segments::base::Base::open(base)
        .unwrap()
        .snapshot()
        .unwrap();
    let named: std::collections::HashSet<String> = m
        .manifest
        .files(base)
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect();
    let mut stray: Vec<String> = std::fs::read_dir(base)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(".spool-"))
        .collect();
    for folder in ["contacts", "events", "bitmaps", "runs", "manifests"] {
        let mut stack = vec![base.join(folder)];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let rel = p.strip_prefix(base).unwrap().to_string_lossy().to_string();
                let current_manifest = folder == "manifests"
                    && rel.ends_with(&format!("{:020}.json", m.manifest.version));
                if !named.contains(&rel) && !current_manifest {
                    stray.push(rel);
                }
            }
        }
    }
    stray
}

#[test]
fn every_durable_step_of_every_writing_command_survives_a_crash() {
    let scratch = tempfile::tempdir().unwrap();
    let template = scratch.path().join("template");
    ok(&template, &["init", "--time-zone", "Europe/Paris"]);
    let contacts = testdata("small/contacts.csv").display().to_string();
    let events = testdata("small/events.csv").display().to_string();
    ok(
        &template,
        &["import", "contacts", &contacts, "--as-of", AS_OF],
    );
    ok(&template, &["import", "events", &events, "--as-of", AS_OF]);
    // Months cut into several files, for `compact` to merge.
    let config = template.join("segments.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("compact_after_files = 8"), "{text}");
    std::fs::write(
        &config,
        text.replace("compact_after_files = 8", "compact_after_files = 1000"),
    )
    .unwrap();
    let args: Vec<String> = [
        "import", "events", &events, "--name", "chunked", "--as-of", AS_OF,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let out = run_with(
        &template,
        &args,
        None,
        &[("SEGMENTS_IMPORT_CHUNK_BYTES", "40")],
    );
    assert!(out.status.success(), "{out:?}");
    let parisiens = testdata("segments/04-parisiens.json").display().to_string();
    ok(
        &template,
        &["segment", "create", &parisiens, "--as-of", AS_OF],
    );
    let edited = scratch.path().join("edited.json");
    std::fs::write(
        &edited,
        r#"{"id": "parisiens", "name": "Parisiens et Lyonnais", "criteria":
            {"field": "city", "op": "in", "value": ["Paris", "Lyon"]}}"#,
    )
    .unwrap();
    let buyers = testdata("segments/03-gros-acheteurs.json")
        .display()
        .to_string();
    let edited_s = edited.display().to_string();
    let updates = scratch.path().join("updates.csv");
    std::fs::write(
        &updates,
        "contact_id,city,score\n101,Nantes,\n102,,7\n900,Brest,3\n901,Paris,4\n103,Lyon,5\n",
    )
    .unwrap();
    let updates = updates.display().to_string();
    // Imports read in chunks of a few records, spooled to disk.
    let chunked: Env = &[("SEGMENTS_IMPORT_CHUNK_BYTES", "40")];
    // The durable steps of each command on this base, at least.
    let commands: Vec<(&str, Vec<&str>, Env, u32)> = vec![
        (
            "import contacts",
            vec![
                "import", "contacts", &contacts, "--name", "again", "--as-of", AS_OF,
            ],
            &[],
            13,
        ),
        (
            "import contacts in chunks",
            vec![
                "import", "contacts", &updates, "--name", "again", "--as-of", AS_OF,
            ],
            chunked,
            30,
        ),
        (
            "import events",
            vec![
                "import", "events", &events, "--name", "again", "--as-of", AS_OF,
            ],
            &[],
            13,
        ),
        (
            "import events in chunks",
            vec![
                "import", "events", &events, "--name", "again", "--as-of", AS_OF,
            ],
            chunked,
            17,
        ),
        (
            "segment create",
            vec!["segment", "create", &buyers, "--as-of", AS_OF],
            &[],
            7,
        ),
        (
            "segment edit",
            vec!["segment", "edit", "parisiens", &edited_s, "--as-of", AS_OF],
            &[],
            8,
        ),
        (
            "segment delete",
            vec!["segment", "delete", "parisiens"],
            &[],
            5,
        ),
        ("recompute", vec!["recompute", "--as-of", LATER], &[], 15),
        ("compact", vec!["compact"], &[], 15),
        (
            "contacts delete",
            vec!["contacts", "delete", "101", "102"],
            &[],
            73,
        ),
    ];
    let old = state(&template, &HashSet::new());
    let known = times_of(&old);
    assert!(
        old.contains("history of all_contacts\n") && old.contains(",Paris,"),
        "{old}"
    );
    let mut total = 0;
    let mut report = Vec::new();
    for (name, args, env, least) in &commands {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let reference = scratch.path().join("reference");
        copy_base(&template, &reference);
        let out = run_with(&reference, &args, None, env);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let new = state(&reference, &known);
        assert_ne!(new, old, "{name} changes what users see");
        std::fs::remove_dir_all(&reference).unwrap();
        if *name == "recompute" {
            // The template keeps its conditions' results: the recompute
            // patches them, and equals one that evaluates everything.
            let report = ok(&template, &["recompute", "--dry-run", "--as-of", LATER]);
            assert!(report.contains("\nincremental: "), "{report}");
            let full = scratch.path().join("full");
            copy_base(&template, &full);
            let mut args = args.clone();
            args.insert(1, "--full".into());
            let out = run_with(&full, &args, None, env);
            assert!(out.status.success(), "{out:?}");
            assert_eq!(
                state(&full, &known),
                new,
                "an incremental recompute equals a full one"
            );
            std::fs::remove_dir_all(&full).unwrap();
        }
        let (mut points, mut saw_old, mut saw_new) = (0, 0, 0);
        for n in 1.. {
            let dir = scratch.path().join(format!("crash-{n}"));
            copy_base(&template, &dir);
            let out = run_with(&dir, &args, Some(n), env);
            if out.status.success() {
                std::fs::remove_dir_all(&dir).unwrap();
                break;
            }
            points += 1;
            assert!(n < 500, "{name}: no end to the durable steps");
            let now = state(&dir, &known);
            if now == old {
                saw_old += 1;
                // The command runs again on the crashed base and completes.
                let again = run_with(&dir, &args, None, env);
                assert!(
                    again.status.success(),
                    "{name}, crash at step {n}, rerun: {}",
                    String::from_utf8_lossy(&again.stderr)
                );
                assert_eq!(state(&dir, &known), new, "{name}, crash at step {n}: rerun");
            } else {
                assert_eq!(now, new, "{name}, crash at step {n}: neither old nor new");
                saw_new += 1;
                // The next writer collects what the crash left behind.
                ok(&dir, &["recompute", "--as-of", AS_OF]);
            }
            let stray = stray_files(&dir);
            assert!(
                stray.is_empty(),
                "{name}, crash at step {n}: stray files {stray:?}"
            );
            std::fs::remove_dir_all(&dir).unwrap();
        }
        assert!(
            points >= *least,
            "{name}: {points} durable steps, fewer than the {least} it has"
        );
        assert!(
            saw_old > 0 && saw_new > 0,
            "{name}: crashes left only one of the two states ({saw_old} old, {saw_new} new)"
        );
        total += points;
        report.push(format!("{name}: {points} ({saw_old} old, {saw_new} new)"));
    }
    assert!(total >= 200, "{total} durable steps in all");
    println!(
        "crash matrix: {total} crash points over {} commands; {}",
        commands.len(),
        report.join("; ")
    );
}
