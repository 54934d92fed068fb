//! Files of a base damaged on disk: `check` names each one, the commands
//! that read it fail with one line naming it, the others still work.

use super::cli::{AS_OF, segments, small_base};

/// Files of a base damaged on disk: `check` names each one, and the
/// commands that read it fail with a message naming it, never a panic.
/// What a damage does to one file of a base (given its path), and which
/// commands must then fail naming that file.
struct Damage {
    what: &'static str,
    /// The file damaged: its path in the base, from the current manifest.
    file: fn(&segments::base::Manifest) -> String,
    damage: fn(&std::path::Path),
    /// The commands that read the file and must fail with one line naming it.
    fail: &'static [&'static [&'static str]],
    /// The commands that do not read the file and must still succeed.
    pass: &'static [&'static [&'static str]],
}

/// In full: an incremental recompute with nothing changed reads no data file.
const RECOMPUTE: &[&str] = &["recompute", "--full", "--as-of", AS_OF];
const LIST: &[&str] = &["segment", "list"];
const COUNT_CONTACTS: &[&str] = &["sql", "SELECT count(*) FROM contacts"];
const COUNT_EVENTS: &[&str] = &["sql", "SELECT count(*), sum(amount) FROM events"];
const MEMBERS: &[&str] = &["segment", "members", "all_contacts"];
const SHOW: &[&str] = &["segment", "show", "all_contacts"];
const COUNT_MEMBERS: &[&str] = &[
    "sql",
    "SELECT count(*) FROM segment_members WHERE segment_id = 'all_contacts'",
];

/// Every command but `segment list` and `show` reads the contacts file:
/// events and members name their contacts by `contact_id`, read from it.
const READ_CONTACTS: &[&[&str]] = &[
    RECOMPUTE,
    COUNT_CONTACTS,
    MEMBERS,
    COUNT_EVENTS,
    COUNT_MEMBERS,
];

fn cut_in_half(f: &std::path::Path) {
    let len = std::fs::metadata(f).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(f).unwrap();
    file.set_len(len / 2).unwrap();
}

/// `check` fails on a base with a damaged file (`rel`), naming it, without
/// a panic: the file's name and what `check` printed.
fn check_names(dir: &std::path::Path, rel: &str, what: &str) -> (String, String) {
    let name = std::path::Path::new(rel)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let out = segments(dir).arg("check").output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: check passed: {text}");
    assert!(
        text.contains(&name),
        "{what}: check does not name {name}: {text}"
    );
    assert!(!text.contains("panicked"), "{what}: {text}");
    (name, text)
}

fn contacts_file(m: &segments::base::Manifest) -> String {
    m.contacts.as_ref().unwrap().path.clone()
}

fn events_file(m: &segments::base::Manifest) -> String {
    m.events
        .iter()
        .max_by_key(|e| e.rows)
        .unwrap()
        .file
        .path
        .clone()
}

fn all_contacts_members(m: &segments::base::Manifest) -> String {
    let rec = m.segments.iter().find(|s| s.id == "all_contacts").unwrap();
    rec.members.as_ref().unwrap().path.clone()
}

#[test]
fn damaged_files_are_named_by_check_and_by_the_commands_that_read_them() {
    let pristine = small_base();
    segments(pristine.path())
        .args(["recompute", "--as-of", AS_OF])
        .assert()
        .success();
    segments(pristine.path()).arg("check").assert().success();
    let damages = [
        Damage {
            what: "contacts file cut in half",
            file: contacts_file,
            damage: cut_in_half,
            fail: READ_CONTACTS,
            pass: &[LIST, SHOW],
        },
        Damage {
            what: "contacts file emptied",
            file: contacts_file,
            damage: |f| std::fs::write(f, b"").unwrap(),
            fail: READ_CONTACTS,
            pass: &[LIST, SHOW],
        },
        Damage {
            what: "contacts file removed",
            file: contacts_file,
            damage: |f| std::fs::remove_file(f).unwrap(),
            fail: READ_CONTACTS,
            pass: &[LIST, SHOW],
        },
        Damage {
            what: "events file cut in half",
            file: events_file,
            damage: cut_in_half,
            fail: &[RECOMPUTE, COUNT_EVENTS],
            pass: &[LIST, SHOW, COUNT_CONTACTS, MEMBERS, COUNT_MEMBERS],
        },
        Damage {
            what: "one byte of an events file changed",
            file: events_file,
            damage: |f| {
                let mut bytes = std::fs::read(f).unwrap();
                let at = bytes.len() / 2;
                bytes[at] ^= 0x5a;
                std::fs::write(f, bytes).unwrap();
            },
            // Found by the checksums of `check`, not by every read.
            fail: &[],
            pass: &[LIST, SHOW, COUNT_CONTACTS, MEMBERS, COUNT_MEMBERS],
        },
        Damage {
            what: "a bitmap file removed",
            file: all_contacts_members,
            damage: |f| std::fs::remove_file(f).unwrap(),
            fail: &[MEMBERS, COUNT_MEMBERS, RECOMPUTE],
            pass: &[LIST, SHOW, COUNT_CONTACTS, COUNT_EVENTS],
        },
        Damage {
            what: "a bitmap file overwritten with garbage",
            file: all_contacts_members,
            damage: |f| std::fs::write(f, b"not a bitmap at all").unwrap(),
            fail: &[MEMBERS, COUNT_MEMBERS, RECOMPUTE],
            pass: &[LIST, SHOW, COUNT_CONTACTS, COUNT_EVENTS],
        },
    ];
    let (mut failed, mut passed) = (0, 0);
    for d in &damages {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("base");
        super::common::copy_base(pristine.path(), &dir);
        let rel = {
            let snap = segments::base::Base::open(&dir)
                .unwrap()
                .snapshot()
                .unwrap();
            (d.file)(&snap.manifest)
        };
        (d.damage)(&dir.join(&rel));
        let what = d.what;
        let (name, _) = check_names(&dir, &rel, what);
        for args in d.fail {
            let out = segments(&dir).args(*args).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            assert!(
                !out.status.success(),
                "{what}: {args:?} succeeded on a damaged file"
            );
            // `recompute` reports each failed segment on a line of its own
            // (the others are still published); the rest print one error.
            let report = args[0] == "recompute"
                && err
                    .lines()
                    .next()
                    .is_some_and(|l| l.ends_with("segment(s) failed:"));
            assert!(
                report || (err.starts_with("error: ") && err.lines().count() == 1),
                "{what}: {args:?}: not one error line: {err}"
            );
            assert!(
                err.contains(&name),
                "{what}: {args:?}: {name} not named: {err}"
            );
            failed += 1;
        }
        for args in d.pass {
            let out = segments(&dir).args(*args).output().unwrap();
            assert!(
                out.status.success(),
                "{what}: {args:?} does not read the file, yet: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            passed += 1;
        }
    }
    println!(
        "damaged files: {} kinds of damage; {failed} commands that read the file failed with one line naming it, {passed} that do not read it succeeded",
        damages.len()
    );
}

/// What a damage does to one of the files of kept results: which one (from
/// the manifest's kept results), and how.
type KeptDamage = (
    &'static str,
    fn(&segments::base::manifest::KeptLeaves) -> String,
    fn(&std::path::Path),
);

/// The results a recompute keeps for the next one are written without
/// waiting for the disk: a power cut can leave them damaged under a
/// published manifest. `check` names them; the next recompute computes
/// them again and gives what a full one gives.
#[test]
fn damaged_kept_results_are_computed_again() {
    let pristine = small_base();
    segments(pristine.path())
        .args(["recompute", "--as-of", AS_OF])
        .assert()
        .success();
    const LATER: &str = "2026-11-24T15:00:00Z";
    // The report's text (how kept results served), and each segment's
    // size, entries and exits.
    let run = |dir: &std::path::Path, full: bool| {
        let mut cmd = segments(dir);
        cmd.args(["recompute", "--as-of", LATER]);
        if full {
            cmd.arg("--full");
        }
        let text = super::cli::stdout_of(&mut cmd);
        let runs = super::cli::json_of(segments(dir).args([
            "recompute",
            "--as-of",
            LATER,
            "--format",
            "json",
        ]));
        let segments: Vec<_> = runs
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                assert_eq!(s["status"], "up_to_date", "{s}");
                (s["segment"].clone(), s["size"].clone())
            })
            .collect();
        (text, segments)
    };
    let copy = |to: &std::path::Path| super::common::copy_base(pristine.path(), to);
    let scratch = tempfile::tempdir().unwrap();
    let (full_dir, sound_dir) = (scratch.path().join("full"), scratch.path().join("sound"));
    copy(&full_dir);
    copy(&sound_dir);
    let (_, full) = run(&full_dir, true);
    // Undamaged, some conditions are answered from the latest times kept.
    let (fresh, sound) = run(&sound_dir, false);
    assert_eq!(sound, full);
    assert!(fresh.contains("from the latest times kept"), "{fresh}");
    let damages: [KeptDamage; 3] = [
        (
            "latest times cut in half",
            |l| l.latest.as_ref().unwrap().path.clone(),
            cut_in_half,
        ),
        (
            "condition results emptied",
            |l| l.bitmaps.path.clone(),
            |f| std::fs::write(f, b"").unwrap(),
        ),
        (
            "condition keys removed",
            |l| l.keys.path.clone(),
            |f| std::fs::remove_file(f).unwrap(),
        ),
    ];
    for (what, file, damage) in &damages {
        let dir = scratch.path().join(what.replace(' ', "-"));
        copy(&dir);
        let snap = segments::base::Base::open(&dir)
            .unwrap()
            .snapshot()
            .unwrap();
        let rel = file(snap.manifest.leaves.as_ref().unwrap());
        damage(&dir.join(&rel));
        let (_, text) = check_names(&dir, &rel, what);
        assert!(text.contains("computes them again"), "{what}: {text}");
        let (fresh, damaged) = run(&dir, false);
        assert_eq!(damaged, full, "{what}");
        assert!(
            !fresh.contains("from the latest times kept"),
            "{what}: {fresh}"
        );
        // Computed again, kept again: the base is sound.
        segments(&dir).arg("check").assert().success();
    }
}
