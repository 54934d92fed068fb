//! The command line on the small base of testdata/small.

use assert_cmd::Command;
use serde_json::Value;

fn segments(base: &std::path::Path) -> Command {
    let mut c = Command::cargo_bin("segments").unwrap();
    c.env("SEGMENTS_BASE", base);
    c
}

fn testdata(p: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(p)
}

const AS_OF: &str = "2026-11-23T12:00:00Z";

fn small_base() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    segments(dir.path())
        .args(["init", "--time-zone", "Europe/Paris"])
        .assert()
        .success();
    segments(dir.path())
        .args(["import", "contacts"])
        .arg(testdata("small/contacts.csv"))
        .args(["--as-of", AS_OF])
        .assert()
        .success();
    segments(dir.path())
        .args(["import", "events"])
        .arg(testdata("small/events.csv"))
        .args(["--as-of", AS_OF])
        .assert()
        .success();
    dir
}

/// The standard output of a command that must succeed, as text.
fn stdout_of(cmd: &mut Command) -> String {
    String::from_utf8(cmd.assert().success().get_output().stdout.clone()).unwrap()
}

fn json_of(cmd: &mut Command) -> Value {
    let out = cmd.assert().success().get_output().stdout.clone();
    serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out)))
}

#[test]
fn create_list_show_export_and_recompute() {
    let dir = small_base();
    let b = dir.path();
    segments(b)
        .args(["segment", "create"])
        .arg(testdata("segments/02-ouvreurs-recents.json"))
        .args(["--as-of", AS_OF])
        .assert()
        .success();
    let list = json_of(segments(b).args(["segment", "list", "--format", "json"]));
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 12);
    let get = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap().clone();
    assert_eq!(get("ouvreurs-recents")["contacts"], 2);
    assert_eq!(get("all_contacts")["contacts"], 6);
    assert_eq!(get("email_subscribers")["contacts"], 3);
    assert_eq!(get("sms_bad_numbers")["contacts"], 1);
    let show =
        json_of(segments(b).args(["segment", "show", "ouvreurs-recents", "--format", "json"]));
    assert_eq!(show["name"], "Ouvreurs récents");

    let out = b.join("out.csv");
    segments(b)
        .args(["segment", "export", "ouvreurs-recents", "--out"])
        .arg(&out)
        .assert()
        .success();
    let text = std::fs::read_to_string(&out).unwrap();
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("contact_id,"));
    let mut ids: Vec<&str> = lines.map(|l| l.split(',').next().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, vec!["101", "105"]);

    let run = json_of(segments(b).args(["recompute", "--as-of", AS_OF, "--format", "json"]));
    assert_eq!(run.as_array().unwrap().len(), 12);
    // The members, with the columns the README lists, as the CSV gave them.
    let mut members =
        json_of(segments(b).args(["segment", "members", "ouvreurs-recents", "--format", "json"]));
    for m in members.as_array_mut().unwrap() {
        let entered = m.as_object_mut().unwrap().remove("entered_at").unwrap();
        assert!(
            entered.as_str().is_some_and(|t| t.len() >= 20),
            "an entry time: {entered}"
        );
    }
    assert_eq!(
        members,
        serde_json::json!([
            {"contact_id": 101, "first_name": "Camille", "last_name": "Martin",
             "email": "camille@example.fr", "email_optin": true, "sms_optin": true},
            {"contact_id": 105, "first_name": "Inès", "last_name": "Petit",
             "email": "ines@example.fr", "email_optin": true, "sms_optin": true},
        ])
    );
}

#[test]
fn bad_input_is_reported_once_without_a_backtrace() {
    let dir = small_base();
    let assert = segments(dir.path())
        .args(["import", "contacts"])
        .arg(testdata("small/bad-contacts.csv"))
        .assert()
        .failure();
    let err = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert!(
        err.contains("bad-contacts.csv: line 3, column \"score\""),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn sql_reads_and_refuses_writes() {
    let dir = small_base();
    let b = dir.path();
    let out = segments(b)
        .args([
            "sql",
            "SELECT city, count(*) AS n FROM contacts GROUP BY city ORDER BY city",
            "--format",
            "csv",
        ])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(
        String::from_utf8_lossy(&out),
        "city,n\nBruxelles,1\nGenève,1\nLyon,1\nParis,1\nparis,1\nÉvry,1\n"
    );
    // Writes are refused by the read-only guard, and touch no file.
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("x.csv");
    let folder = outside.path().join("table");
    let before = std::fs::read_dir(b).unwrap().count();
    for q in [
        format!("COPY (SELECT 1) TO '{}'", target.display()),
        format!(
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '{}'",
            folder.display()
        ),
        "CREATE TABLE t AS SELECT 1".to_string(),
        "INSERT INTO contacts SELECT * FROM contacts".to_string(),
        "DELETE FROM contacts".to_string(),
        "DROP TABLE contacts".to_string(),
        "SET datafusion.execution.batch_size = 1".to_string(),
    ] {
        let a = segments(b).args(["sql", &q]).assert().failure();
        let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
        assert!(
            err.starts_with("error: refused: ") && err.contains("(SQL over a base is read-only)"),
            "{q}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{q}: {err}");
        assert!(
            std::fs::read_dir(outside.path()).unwrap().next().is_none(),
            "{q} created a file"
        );
        assert_eq!(std::fs::read_dir(b).unwrap().count(), before, "{q}");
    }
    // The contacts are still all there.
    let n = stdout_of(segments(b).args([
        "sql",
        "--format",
        "csv",
        "SELECT count(*) AS n FROM contacts",
    ]));
    assert_eq!(n, "n\n6\n");
    let a = segments(b)
        .args(["sql", "SELEC nonsense"])
        .assert()
        .failure();
    let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
    assert!(
        err.starts_with("error: ") && !err.contains("read-only"),
        "a syntax error is not a refusal: {err}"
    );
}

#[test]
fn audience_writes_reachable_contacts() {
    let dir = small_base();
    let b = dir.path();
    let out = b.join("aud.csv");
    segments(b)
        .args([
            "audience",
            "--include",
            "all_contacts",
            "--exclude",
            "sms_contacts",
            "--channel",
            "email",
            "--as-of",
            AS_OF,
            "--out",
        ])
        .arg(&out)
        .assert()
        .success();
    let text = std::fs::read_to_string(&out).unwrap();
    let ids: Vec<&str> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    // 102 has a hard bounce; 106 has no opt-in; 101, 103, 104, 105 have phones.
    assert_eq!(ids, Vec::<&str>::new());
    let out2 = b.join("aud2.csv");
    segments(b)
        .args([
            "audience",
            "--include",
            "all_contacts",
            "--channel",
            "email",
            "--as-of",
            AS_OF,
            "--out",
        ])
        .arg(&out2)
        .assert()
        .success();
    let text = std::fs::read_to_string(&out2).unwrap();
    let ids: Vec<&str> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(ids, vec!["101", "105"]);
}

fn ids_of_csv(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut ids: Vec<String> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn static_segments_add_remove_replace_and_export() {
    let dir = small_base();
    let b = dir.path();
    let list = b.join("vip.csv");
    std::fs::write(&list, "contact_id\n101\n103\n").unwrap();
    segments(b)
        .args(["segment", "create", "--static", "--name", "VIP", "--from"])
        .arg(&list)
        .assert()
        .success();
    let out = b.join("vip-out.csv");
    let export = |out: &std::path::Path| {
        segments(b)
            .args(["segment", "export", "vip", "--out"])
            .arg(out)
            .assert()
            .success();
    };
    export(&out);
    assert_eq!(ids_of_csv(&out), vec!["101", "103"]);
    std::fs::write(&list, "contact_id\n104\n").unwrap();
    segments(b)
        .args(["segment", "add", "vip", "--from"])
        .arg(&list)
        .assert()
        .success();
    export(&out);
    assert_eq!(ids_of_csv(&out), vec!["101", "103", "104"]);
    std::fs::write(&list, "contact_id\n101\n").unwrap();
    segments(b)
        .args(["segment", "remove", "vip", "--from"])
        .arg(&list)
        .assert()
        .success();
    export(&out);
    assert_eq!(ids_of_csv(&out), vec!["103", "104"]);
    segments(b)
        .args([
            "segment",
            "replace",
            "vip",
            "--from-query",
            "SELECT contact_id FROM contacts WHERE country = 'FR' AND score > 500",
        ])
        .assert()
        .success();
    export(&out);
    assert_eq!(ids_of_csv(&out), vec!["101", "103"]);
    // Unknown ids are refused with their count; the segment is unchanged.
    std::fs::write(&list, "contact_id\n999\n998\n").unwrap();
    let a = segments(b)
        .args(["segment", "add", "vip", "--from"])
        .arg(&list)
        .assert()
        .failure();
    assert!(
        String::from_utf8_lossy(&a.get_output().stderr)
            .contains("2 contact id(s) are not in the base")
    );
    // A dynamic segment can refer to the static one; a static one is never recomputed.
    let def = b.join("d.json");
    std::fs::write(&def, r#"{"id": "vip-fr", "name": "VIP FR", "criteria": {"all": [{"segment": "VIP"}, {"field": "country", "op": "eq", "value": "fr"}]}}"#).unwrap();
    segments(b)
        .args(["segment", "create"])
        .arg(&def)
        .assert()
        .success();
    segments(b).args(["recompute"]).assert().success();
    export(&out);
    assert_eq!(ids_of_csv(&out), vec!["101", "103"]);
    // Parquet export reads back equal to the bitmap.
    let pq = b.join("vip.parquet");
    segments(b)
        .args(["segment", "export", "vip-fr", "--out"])
        .arg(&pq)
        .assert()
        .success();
    let batch = segments::base::table::read_parquet_one(&pq, None).unwrap();
    let ids = batch
        .column(0)
        .as_any()
        .downcast_ref::<datafusion::arrow::array::UInt64Array>()
        .unwrap();
    assert_eq!(batch.schema().field(0).name(), "contact_id");
    assert_eq!(ids.values().to_vec(), vec![101, 103]);
    let history = json_of(segments(b).args(["segment", "history", "vip", "--format", "json"]));
    let sizes: Vec<u64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, vec![2, 3, 2, 2]);
    let members = json_of(segments(b).args(["segment", "members", "vip", "--format", "json"]));
    let m = members.as_array().unwrap();
    assert_eq!(m.len(), 2);
    assert!(m[0]["entered_at"].is_string() && m[0]["email"].is_string());
}

#[test]
fn members_are_paged_and_sorted() {
    let dir = small_base();
    let b = dir.path();
    let page = |args: &[&str]| -> Vec<u64> {
        let v = json_of(
            segments(b)
                .args(["segment", "members", "all_contacts", "--format", "json"])
                .args(args),
        );
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r["contact_id"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(page(&["--limit", "2"]), vec![101, 102]);
    assert_eq!(page(&["--limit", "2", "--offset", "4"]), vec![105, 106]);
    // Last names: Martin, Bernard, Dubois, Thomas, Petit, Durand.
    assert_eq!(
        page(&["--sort", "last_name", "--limit", "3"]),
        vec![102, 103, 106]
    );
    assert_eq!(
        page(&["--sort", "-last_name", "--limit", "2"]),
        vec![104, 105]
    );
    let a = segments(b)
        .args(["segment", "members", "all_contacts", "--sort", "nope"])
        .assert()
        .failure();
    assert!(String::from_utf8_lossy(&a.get_output().stderr).contains("cannot sort by \"nope\""));
}

#[test]
fn sql_tables_agree_with_the_segment_export() {
    let dir = small_base();
    let b = dir.path();
    let sql = |q: &str| -> Vec<String> {
        let out = stdout_of(segments(b).args(["sql", q, "--format", "csv"]));
        out.lines().skip(1).map(str::to_string).collect()
    };
    let out = b.join("subs.csv");
    segments(b)
        .args(["segment", "export", "email_subscribers", "--out"])
        .arg(&out)
        .assert()
        .success();
    let exported = ids_of_csv(&out);
    let mut via_udf =
        sql("SELECT contact_id FROM contacts WHERE in_segment(contact_id, 'email_subscribers')");
    via_udf.sort();
    let mut via_table =
        sql("SELECT contact_id FROM segment_members WHERE segment_id = 'email_subscribers'");
    via_table.sort();
    assert_eq!(via_udf, exported);
    assert_eq!(via_table, exported);
    assert_eq!(sql("SELECT count(*) FROM segments"), vec!["11"]);
    assert_eq!(
        sql("SELECT contacts FROM segments WHERE id = 'email_subscribers'"),
        vec![exported.len().to_string()]
    );
    assert_eq!(sql("SELECT count(*) FROM imports"), vec!["2"]);
    // Internal ids stay internal.
    segments(b)
        .args(["sql", "SELECT _iid FROM contacts"])
        .assert()
        .failure();
    // A query criterion sees the same tables.
    let def = b.join("q.json");
    std::fs::write(&def, r#"{"id": "q", "name": "Q", "criteria": {"query": "SELECT contact_id FROM segment_members WHERE segment_id = 'email_subscribers'"}}"#).unwrap();
    segments(b)
        .args(["segment", "create"])
        .arg(&def)
        .assert()
        .success();
    let q = b.join("q.csv");
    segments(b)
        .args(["segment", "export", "q", "--out"])
        .arg(&q)
        .assert()
        .success();
    assert_eq!(ids_of_csv(&q), exported);
}

#[test]
fn edit_duplicate_refresh_pause_resume_delete() {
    let dir = small_base();
    let b = dir.path();
    let def = b.join("fr.json");
    std::fs::write(&def, r#"{"id": "fr", "name": "France", "criteria": {"field": "country", "op": "eq", "value": "fr"}}"#).unwrap();
    segments(b)
        .args(["segment", "create"])
        .arg(&def)
        .assert()
        .success();
    let show = |id: &str| json_of(segments(b).args(["segment", "show", id, "--format", "json"]));
    assert_eq!(show("fr")["contacts"], 4);
    // Edit: new definition, recomputed at once.
    std::fs::write(&def, r#"{"name": "France haut score", "criteria": {"all": [{"field": "country", "op": "eq", "value": "fr"}, {"field": "score", "op": "gt", "value": 500}]}}"#).unwrap();
    segments(b)
        .args(["segment", "edit", "fr"])
        .arg(&def)
        .assert()
        .success();
    assert_eq!(show("fr")["name"], "France haut score");
    assert_eq!(show("fr")["contacts"], 2);
    // Duplicate: same definition under a new name, computed.
    segments(b)
        .args(["segment", "duplicate", "fr", "--name", "Copie FR"])
        .assert()
        .success();
    assert_eq!(show("copie-fr")["contacts"], 2);
    assert_eq!(show("copie-fr")["criteria"], show("fr")["criteria"]);
    // Pause freezes; refresh and resume compute again.
    segments(b)
        .args(["segment", "pause", "fr"])
        .assert()
        .success();
    assert_eq!(show("fr")["status"], "paused");
    let more = b.join("more.csv");
    std::fs::write(&more, "contact_id,country,score\n200,FR,999\n").unwrap();
    segments(b)
        .args(["import", "contacts"])
        .arg(&more)
        .assert()
        .success();
    assert_eq!(show("fr")["contacts"], 2, "paused: frozen");
    assert_eq!(
        show("copie-fr")["contacts"],
        3,
        "active: recomputed after the import"
    );
    segments(b)
        .args(["segment", "resume", "fr"])
        .assert()
        .success();
    assert_eq!(show("fr")["status"], "up_to_date");
    assert_eq!(show("fr")["contacts"], 3);
    segments(b)
        .args(["segment", "refresh", "copie-fr"])
        .assert()
        .success();
    assert_eq!(show("copie-fr")["history"].as_array().unwrap().len(), 3);
    // Delete: gone from the list, contacts stay.
    segments(b)
        .args(["segment", "delete", "copie-fr"])
        .assert()
        .success();
    segments(b)
        .args(["segment", "show", "copie-fr"])
        .assert()
        .failure();
    assert_eq!(show("all_contacts")["contacts"], 7);
    let out = b.join("cols.csv");
    segments(b)
        .args([
            "segment",
            "export",
            "fr",
            "--columns",
            "email,entered_at",
            "--out",
        ])
        .arg(&out)
        .assert()
        .success();
    let header = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        header.lines().next().unwrap(),
        "contact_id,email,entered_at"
    );
    let failed =
        json_of(segments(b).args(["segment", "list", "--status", "failed", "--format", "json"]));
    assert_eq!(failed.as_array().unwrap().len(), 0);
}

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

const RECOMPUTE: &[&str] = &["recompute", "--as-of", AS_OF];
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
        let name = std::path::Path::new(&rel)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        let out = segments(&dir).arg("check").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: check passed: {text}");
        assert!(
            text.contains(&name),
            "{what}: check does not name {name}: {text}"
        );
        assert!(!text.contains("panicked"), "{what}: {text}");
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

/// `sql --out` writes CSV, JSON lines or Parquet in one atomic write;
/// Parquet is never printed to a terminal.
#[test]
fn sql_results_are_saved_as_csv_json_or_parquet() {
    let base = small_base();
    let out = tempfile::tempdir().unwrap();
    let query = "SELECT contact_id, city FROM contacts ORDER BY contact_id LIMIT 3";
    let printed = segments(base.path())
        .args(["sql", "--format", "csv", query])
        .output()
        .unwrap();
    assert!(printed.status.success());
    let printed = String::from_utf8_lossy(&printed.stdout).to_string();
    assert_eq!(printed.lines().count(), 4, "{printed}");
    for (name, format) in [
        ("rows.csv", None),
        ("rows.txt", Some("csv")),
        ("rows.jsonl", None),
        ("rows.parquet", None),
        ("rows.pq", Some("parquet")),
    ] {
        let path = out.path().join(name);
        let mut cmd = segments(base.path());
        cmd.arg("sql").arg("--out").arg(&path);
        if let Some(f) = format {
            cmd.args(["--format", f]);
        }
        cmd.arg(query).assert().success();
        let bytes = std::fs::read(&path).unwrap();
        match (name, format) {
            (_, Some("csv")) | ("rows.csv", _) => {
                assert_eq!(String::from_utf8_lossy(&bytes), printed, "{name}")
            }
            ("rows.jsonl", _) => {
                let text = String::from_utf8_lossy(&bytes).to_string();
                let rows: Vec<Value> = text
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect();
                assert_eq!(rows.len(), 3, "{text}");
                assert!(rows[0].get("contact_id").is_some(), "{text}");
            }
            _ => {
                assert_eq!(&bytes[..4], b"PAR1", "{name}");
                let read = segments::base::table::read_parquet_one(&path, None).unwrap();
                assert_eq!(read.num_rows(), 3, "{name}");
                assert_eq!(read.schema().field(0).name(), "contact_id");
            }
        }
    }
    // An empty result still makes a typed Parquet file.
    let empty = out.path().join("empty.parquet");
    segments(base.path())
        .args(["sql", "--out"])
        .arg(&empty)
        .arg("SELECT contact_id FROM contacts WHERE false")
        .assert()
        .success();
    let read = segments::base::table::read_parquet_one(&empty, None).unwrap();
    assert_eq!(
        (read.num_rows(), read.schema().field(0).name().as_str()),
        (0, "contact_id")
    );
    let err = segments(base.path())
        .args(["sql", "--format", "parquet", query])
        .assert()
        .failure()
        .get_output()
        .stderr
        .clone();
    assert!(String::from_utf8_lossy(&err).contains("--out"));
}

/// A query whose operators need more memory than the limit is stopped by
/// DataFusion's memory pool with a clear message; nothing spills to disk.
#[test]
fn a_query_over_its_memory_limit_is_stopped_with_a_clear_error() {
    let base = small_base();
    let query = "SELECT count(DISTINCT v) AS n FROM generate_series(1, 2000000) AS t(v)";
    let out = segments(base.path())
        .args(["sql", "--memory-limit", "1MiB", query])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{err}");
    assert!(
        err.starts_with("error: query stopped: it needs more memory than its limit"),
        "{err}"
    );
    assert!(err.contains("--memory-limit"), "{err}");
    // The same limit from the environment; a bad size is refused.
    let out = segments(base.path())
        .env("SEGMENTS_MEMORY_LIMIT", "1MiB")
        .args(["sql", query])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("query stopped"));
    let out = segments(base.path())
        .args(["sql", "--memory-limit", "lots", "SELECT 1"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a size"));
    // With the default limit it runs.
    let out = segments(base.path())
        .args(["sql", "--format", "csv", query])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "n\n2000000\n");
}

/// Readers in other processes while a recompute publishes: each query sees
/// one snapshot whole, the old results or the new ones, never a mix, and
/// statistics agree with the members in the same snapshot.
#[test]
fn readers_in_other_processes_see_one_snapshot_during_a_recompute() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    segments(&base)
        .args(["gen", "--contacts", "100000", "--events-per-contact", "10"])
        .args(["--as-of", AS_OF])
        .assert()
        .success();
    let (old_at, new_at) = ("2026-06-01T00:00:00Z", AS_OF);
    segments(&base)
        .args(["recompute", "--as-of", old_at])
        .assert()
        .success();
    let query = "SELECT s.id, s.contacts, count(m.contact_id) AS members \
                 FROM segments s LEFT JOIN segment_members m ON m.segment_id = s.id \
                 GROUP BY s.id, s.contacts ORDER BY s.id";
    let read_with = |base: &std::path::Path, query: &str| -> String {
        let out = super::common::succeeded(
            segments(base)
                .args(["sql", "--format", "csv", query])
                .output()
                .unwrap(),
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let read = |base: &std::path::Path| read_with(base, query);
    // What readers ask while the recompute runs: every segment's statistics.
    let quick = "SELECT id, contacts, email_optins, sms_optins FROM segments ORDER BY id";
    let old = read(&base);
    // The state the recompute will publish, computed on a copy, with its steps.
    let args = ["recompute", "--as-of", new_at];
    let probe = super::common::Probe::run(&base, &dir.path().join("copy"), &args);
    let copy = probe.dir.clone();
    let new = read(&copy);
    assert_ne!(old, new, "the two instants give different segments");
    for state in [&old, &new] {
        for line in state.lines().skip(1) {
            let cells: Vec<&str> = line.split(',').collect();
            assert_eq!(cells[1], cells[2], "statistics equal members: {line}");
        }
    }

    // Three readers: SQL over the statistics, a segment's members (without
    // their entry times, which the copy's run does not share) and its export.
    let members = |b: &std::path::Path| -> String {
        let out = super::common::succeeded(
            segments(b)
                .args(["segment", "members", "active_contacts", "--format", "json"])
                .args(["--limit", "2000"])
                .output()
                .unwrap(),
        );
        let mut v: Value = serde_json::from_slice(&out.stdout).unwrap();
        for m in v.as_array_mut().unwrap() {
            m.as_object_mut().unwrap().remove("entered_at");
        }
        v.to_string()
    };
    let exported = dir.path().join("export.csv");
    let export = |b: &std::path::Path| -> String {
        segments(b)
            .args([
                "segment",
                "export",
                "active_contacts",
                "--columns",
                "contact_id,email",
            ])
            .arg("--out")
            .arg(&exported)
            .assert()
            .success();
        std::fs::read_to_string(&exported).unwrap()
    };
    let readers = [
        Reader::new(|b| read_with(b, quick), &base, &copy),
        Reader::new(members, &base, &copy),
        Reader::new(export, &base, &copy),
    ];
    for r in &readers[1..] {
        assert_ne!(
            r.old, r.new,
            "active contacts change between the two instants"
        );
    }
    let w = watch_readers(&base, &args, &probe, &readers);
    assert_eq!(read(&base), new);
    println!("concurrent readers (sql, members, export) during a recompute: {w}");
}

/// A reader command, with what it gives before and after the writer.
struct Reader<'a> {
    read: Box<dyn Fn(&std::path::Path) -> String + 'a>,
    old: String,
    new: String,
}

impl<'a> Reader<'a> {
    /// `old` read on the base, `new` on a copy the writer already ran on.
    fn new(
        read: impl Fn(&std::path::Path) -> String + 'a,
        base: &std::path::Path,
        after: &std::path::Path,
    ) -> Self {
        let (old, new) = (read(base), read(after));
        Reader {
            read: Box::new(read),
            old,
            new,
        }
    }
}

/// What readers saw while a writer ran.
struct Watched {
    /// Reads while the writer was held at a step, at least one per reader
    /// at each step.
    held: usize,
    /// Reads started while the writer ran free between its steps.
    during: usize,
    saw_old: usize,
    saw_new: usize,
    steps: Vec<String>,
}

impl std::fmt::Display for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} reads while the writer was held at {} ({}), {} while it ran free; {} saw the old version, {} the new one, none a mix",
            self.held,
            self.steps.len(),
            self.steps.join("; "),
            self.during,
            self.saw_old,
            self.saw_new
        )
    }
}

/// Run `segments ARGS` on `base`, held at three of its durable steps (the
/// first, the last before its manifest is renamed into place, and that
/// rename: `probe` ran the same command on a copy and knows them). At each
/// step every reader reads the base: the old state before the rename, the
/// new one from it, although the writer still runs and holds the lock.
/// Between the steps the readers go on reading while the writer runs free:
/// each answer is the old state or the new one, never a mix.
fn watch_readers(
    base: &std::path::Path,
    args: &[&str],
    probe: &super::common::Probe,
    readers: &[Reader],
) -> Watched {
    let (written, published) = probe.publish_steps();
    let steps = [1, written, published];
    let pause = base.with_extension("pause");
    let mut writer = std::process::Command::new(env!("CARGO_BIN_EXE_segments"))
        .env("SEGMENTS_BASE", base)
        .env("SEGMENTS_PAUSE_AT", steps.map(|s| s.to_string()).join(","))
        .env("SEGMENTS_PAUSE_FILE", &pause)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut w = Watched {
        held: 0,
        during: 0,
        saw_old: 0,
        saw_new: 0,
        steps: Vec::new(),
    };
    let seen = |r: &Reader, w: &mut Watched| -> bool {
        let text = (r.read)(base);
        if text == r.old {
            w.saw_old += 1;
            false
        } else if text == r.new {
            w.saw_new += 1;
            true
        } else {
            let (old, new) = (&r.old, &r.new);
            panic!("a reader saw a mix of two versions:\n{text}\nold:\n{old}\nnew:\n{new}");
        }
    };
    let mut k = 0;
    loop {
        if let Ok(step) = std::fs::read_to_string(&pause) {
            let n: u32 = step.split(' ').next().unwrap().parse().unwrap();
            assert!(writer.try_wait().unwrap().is_none(), "held, yet ended");
            assert!(
                segments::base::lock::current_holder(base).is_some(),
                "the writer holds the lock at {step}"
            );
            for r in readers {
                let new = seen(r, &mut w);
                assert_eq!(
                    new,
                    n >= published,
                    "held at step {step}: a reader saw the {} state",
                    if new { "new" } else { "old" }
                );
                w.held += 1;
            }
            w.steps.push(step);
            std::fs::remove_file(&pause).unwrap();
            continue;
        }
        if writer.try_wait().unwrap().is_some() {
            break;
        }
        seen(&readers[k % readers.len()], &mut w);
        k += 1;
        w.during += 1;
    }
    let out = writer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(w.steps.len(), 3, "held at {:?}", w.steps);
    assert!(w.saw_old >= 2 * readers.len() && w.saw_new >= readers.len());
    w
}

/// A `segments serve` process, stopped when dropped.
struct Server {
    child: std::process::Child,
    port: u16,
}

impl Server {
    fn start(base: &std::path::Path, password: &str) -> Server {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_segments"))
            .env("SEGMENTS_BASE", base)
            .env("SEGMENTS_PASSWORD", password)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        std::io::BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let port = first
            .split(" on 127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no address in {first:?}"));
        Server { child, port }
    }

    /// Run psql (unaligned, tuples only, stop on error).
    fn psql(&self, password: &str, sql: &str) -> std::process::Output {
        let psql = ["/usr/bin/psql", "/usr/local/bin/psql"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("psql not found: install the postgresql-client package (.ci/run does)");
        std::process::Command::new(psql)
            .args(["-h", "127.0.0.1", "-U", "segments", "-d", "segments"])
            .args(["-p", &self.port.to_string()])
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "20")
            .output()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// psql against `segments serve`: a join of contacts and a segment gives the
/// rows of `segments sql`; a wrong password and every write are refused;
/// a statement after an import sees the new version.
#[test]
fn psql_queries_contacts_and_segments_over_the_postgresql_protocol() {
    let dir = small_base();
    let b = dir.path();
    segments(b)
        .args(["recompute", "--as-of", AS_OF])
        .assert()
        .success();
    let server = Server::start(b, "s3cret pass");
    let query = "SELECT c.contact_id, c.city FROM contacts c \
                 JOIN segment_members m ON m.contact_id = c.contact_id \
                 WHERE m.segment_id = 'email_subscribers' ORDER BY c.contact_id";
    let expected: Vec<String> = String::from_utf8(
        segments(b)
            .args(["sql", "--format", "csv", query])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone(),
    )
    .unwrap()
    .lines()
    .skip(1)
    .map(|l| l.replace(',', "|"))
    .collect();
    assert!(expected.len() >= 3, "{expected:?}");
    let out = server.psql("s3cret pass", query);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(got, expected);

    let out = server.psql("wrong", "SELECT 1");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("password authentication failed"), "{err}");

    let target = b.join("copied.csv");
    for write in [
        "CREATE TABLE t (a int)".to_string(),
        "INSERT INTO contacts (contact_id) VALUES (1)".to_string(),
        "DELETE FROM contacts".to_string(),
        format!("COPY (SELECT 1) TO '{}'", target.display()),
        "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc'".to_string(),
        "SET datafusion.execution.batch_size = 1".to_string(),
        "DROP TABLE contacts".to_string(),
        "WITH x AS (SELECT 1) INSERT INTO contacts (contact_id) SELECT 1".to_string(),
    ] {
        let out = server.psql("s3cret pass", &write);
        assert!(!out.status.success(), "{write} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("read-only") || err.contains("not allowed"),
            "{write}: {err}"
        );
    }
    assert!(!target.exists());

    let tables = server.psql("s3cret pass", "\\d");
    let tables = String::from_utf8_lossy(&tables.stdout);
    for t in ["contacts", "events", "segment_members", "segments"] {
        assert!(tables.contains(&format!("|{t}|")), "{t} in {tables}");
    }

    // A new version is seen by the next statement.
    let imports = |s: &Server| {
        String::from_utf8(s.psql("s3cret pass", "SELECT count(*) FROM imports").stdout)
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(imports(&server), "2");
    segments(b)
        .args(["import", "events"])
        .arg(testdata("small/events.csv"))
        .args(["--as-of", AS_OF])
        .assert()
        .success();
    assert_eq!(imports(&server), "3");
}

/// `segments sql` reading statements from standard input: dot commands,
/// statements over several lines, several on a line; the first error stops
/// the script with a non-zero status.
#[test]
fn sql_without_a_query_runs_the_statements_of_its_input() {
    let dir = small_base();
    let b = dir.path();
    let script = ".tables\n.schema imports\n\
                  SELECT city, count(*) AS n\n  FROM contacts -- where they live; by city\n  \
                  GROUP BY city ORDER BY city;\n\
                  .format csv\nSELECT 'a;b' AS s; SELECT 2 AS two\n";
    let out = stdout_of(segments(b).arg("sql").write_stdin(script));
    for expected in [
        "segment_members",
        "rows_added",
        "| Paris",
        "s\na;b\n",
        "two\n2\n",
    ] {
        assert!(out.contains(expected), "{expected:?} in\n{out}");
    }
    let a = segments(b)
        .arg("sql")
        .write_stdin("SELECT 1;\nSELECT nope FROM contacts;\nSELECT 3 AS three;\n")
        .assert()
        .failure();
    let stdout = String::from_utf8_lossy(&a.get_output().stdout).to_string();
    let stderr = String::from_utf8_lossy(&a.get_output().stderr).to_string();
    assert!(stderr.contains("nope"), "{stderr}");
    assert!(!stdout.contains("three"), "{stdout}");
    let a = segments(b)
        .arg("sql")
        .write_stdin(".schema nowhere\n")
        .assert()
        .failure();
    let stderr = String::from_utf8_lossy(&a.get_output().stderr).to_string();
    assert!(stderr.contains("no table \"nowhere\""), "{stderr}");
}

/// The shell on a real terminal (a pseudo-terminal from `script`): a
/// statement over two lines, a dot command, an error that does not end the
/// session, Ctrl-D to leave, and the history saved.
#[test]
fn the_sql_shell_edits_statements_on_a_terminal() {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    let dir = small_base();
    let b = dir.path();
    let home = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new("script")
        .args([
            "-qec",
            &format!("{} sql", env!("CARGO_BIN_EXE_segments")),
            "/dev/null",
        ])
        .env("SEGMENTS_BASE", b)
        .env("HOME", home.path())
        .env("TERM", "xterm")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs the shell on a pseudo-terminal");
    let screen = Arc::new(Mutex::new(String::new()));
    let mut stdout = child.stdout.take().unwrap();
    let reader = {
        let screen = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                screen
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let mut stdin = child.stdin.take().unwrap();
    let mut seen = 0;
    // Wait for text to appear after what was already seen (input is typed
    // only once the shell prompts for it).
    let mut expect = |needle: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let text = screen.lock().unwrap().clone();
            if let Some(p) = text[seen..].find(needle) {
                seen += p + needle.len();
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{needle:?} not shown; the screen:\n{text}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let prompt = "segments> ";
    expect(prompt);
    stdin.write_all(b"SELECT\r  40 + 2 AS answer;\r").unwrap();
    expect("| 42");
    expect(prompt);
    stdin.write_all(b".tables\r").unwrap();
    expect("segment_members");
    expect(prompt);
    stdin.write_all(b"SELECT nope FROM contacts;\r").unwrap();
    expect("error:");
    expect(prompt);
    stdin.write_all(b"\x04").unwrap();
    let status = child.wait().unwrap();
    drop(stdin);
    reader.join().unwrap();
    assert!(status.success());
    let history = std::fs::read_to_string(home.path().join(".segments_history")).unwrap();
    assert!(history.contains("40 + 2 AS answer"), "{history}");
}

/// Readers in other processes while an import of contacts runs: each query
/// sees the contacts before the import or after it, never a mix.
#[test]
fn readers_in_other_processes_see_one_snapshot_during_an_import() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    segments(&base).args(["init"]).assert().success();
    let write_csv = |name: &str, ids: std::ops::Range<u32>, city: &str| {
        let path = dir.path().join(name);
        let mut text = String::from("contact_id,city,score\n");
        for i in ids {
            text.push_str(&format!("{i},{city}{},{}\n", i % 30, i % 997));
        }
        std::fs::write(&path, text).unwrap();
        path
    };
    let first = write_csv("first.csv", 0..150_000, "Ville");
    let second = write_csv("second.csv", 100_000..300_000, "Town");
    segments(&base)
        .args(["import", "contacts"])
        .arg(&first)
        .assert()
        .success();
    let query = "SELECT count(*) AS n, sum(score) AS s, count(*) FILTER (WHERE city LIKE 'Town%') AS towns FROM contacts";
    let read = |base: &std::path::Path| -> String {
        let out = super::common::succeeded(
            segments(base)
                .args(["sql", "--format", "csv", query])
                .output()
                .unwrap(),
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let old = read(&base);
    let second = second.display().to_string();
    let args = ["import", "contacts", &second];
    let probe = super::common::Probe::run(&base, &dir.path().join("copy"), &args);
    let new = read(&probe.dir);
    assert_ne!(old, new);
    let w = watch_readers(
        &base,
        &args,
        &probe,
        &[Reader::new(read, &base, &probe.dir)],
    );
    assert_eq!(read(&base), new);
    println!("`segments sql` during an import: {w}");
}

/// Files read in chunks of a few kilobytes, with updates and new contacts
/// spooled to disk, import exactly what they import read whole: the same
/// contacts (updates merged, empty cells kept, types inferred over the
/// whole file), the same events, the same counts; no spool file is left.
#[test]
fn imports_read_in_small_chunks_give_what_whole_files_give() {
    let files = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        let p = files.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let mut first = String::from("contact_id,email,city,score,joined,note,code\n");
    for i in 0..3000 {
        // `score` reads as integers until the last rows, which make it
        // decimal; `code` until its last row, which makes it text.
        let score = if i > 2990 {
            format!("{i}.5")
        } else {
            i.to_string()
        };
        let code = if i == 2999 {
            "X1".to_string()
        } else {
            format!("{:04}", i % 50)
        };
        let note = match i % 4 {
            0 => format!("\"line one\nline two, {i}\""),
            1 => String::new(),
            _ => format!("n{i}"),
        };
        first += &format!(
            "{id},c{i}@example.com,{city},{score},2025-{m:02}-{d:02},{note},{code}\n",
            id = 10_000 + i * 7,
            city = ["Paris", "Lyon", "Évry", ""][i % 4],
            m = 1 + i % 12,
            d = 1 + i % 28,
        );
    }
    // `visits`, a new whole-number column, comes mostly with updates.
    let mut second = String::from("contact_id,city,note,tier,visits\n");
    for i in (0..3000).step_by(3) {
        let city = if i % 2 == 0 { "" } else { "Nantes" };
        second += &format!("{},{city},u{i},t{},{}\n", 10_000 + i * 7, i % 3, i % 9);
    }
    for i in 0..700 {
        second += &format!("{},Brest,,t{},\n", 90_000 + i, i % 5);
    }
    let mut events = String::from("contact_id,ts,type,amount\n");
    for i in 0..12_000 {
        events += &format!(
            "{},2026-{:02}-{:02}T10:00:00Z,{},{}\n",
            10_000 + (i * 13 % 3000) * 7,
            1 + i % 11,
            1 + i % 28,
            ["purchase", "email_open"][i % 2],
            i % 97
        );
    }
    let first = write("first.csv", first);
    let second = write("second.csv", second);
    let bad_events = write(
        "bad-events.csv",
        events.clone() + "77,2026-01-05T10:00:00Z,purchase,1\n",
    );
    let events = write("events.csv", events);

    let run = |chunk: Option<&str>| {
        let dir = tempfile::tempdir().unwrap();
        let cmd = |args: &[&str]| {
            let mut c = segments(dir.path());
            if let Some(bytes) = chunk {
                c.env("SEGMENTS_IMPORT_CHUNK_BYTES", bytes);
            }
            c.args(args);
            c
        };
        cmd(&["init", "--time-zone", "Europe/Paris"])
            .assert()
            .success();
        let mut said = Vec::new();
        for (what, name, file) in [
            ("contacts", "first", &first),
            ("contacts", "second", &second),
            ("events", "events", &events),
        ] {
            // What the import says, without the recompute's duration.
            let out = stdout_of(cmd(&["import", what, "--as-of", AS_OF, "--name", name]).arg(file));
            said.extend(
                out.lines()
                    .filter(|l| !l.starts_with("recomputed"))
                    .map(String::from),
            );
        }
        let query = |q: &str| stdout_of(&mut cmd(&["sql", "--format", "csv", q]));
        let contacts = query("SELECT * FROM contacts ORDER BY contact_id");
        let events = query("SELECT * FROM events ORDER BY contact_id, ts, type, amount");
        let fields = query(
            "SELECT column_name, data_type FROM information_schema.columns \
             WHERE table_name = 'contacts' ORDER BY ordinal_position",
        );
        let counts = query(
            "SELECT (SELECT count(*) FROM contacts) AS c, (SELECT count(*) FROM events) AS e",
        );
        cmd(&["check"]).assert().success();
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with(".spool-"))
            .collect();
        assert!(left.is_empty(), "spool files left: {left:?}");
        assert!(counts.ends_with("3700,12000\n"), "{counts}");
        // An unknown contact in the last chunk fails the import after the
        // files of the chunks before were written: none is left.
        let files_of = |root: &std::path::Path| -> Vec<String> {
            let mut out = Vec::new();
            let mut stack = vec![root.to_path_buf()];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).unwrap() {
                    let p = e.unwrap().path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if !p.starts_with(root.join("readers")) && !p.ends_with("LOCK") {
                        out.push(p.strip_prefix(root).unwrap().display().to_string());
                    }
                }
            }
            out.sort();
            out
        };
        let before = files_of(dir.path());
        let failed = cmd(&["import", "events", "--as-of", AS_OF])
            .arg(&bad_events)
            .assert()
            .failure()
            .get_output()
            .stderr
            .clone();
        let failed = String::from_utf8(failed).unwrap();
        assert!(
            failed.contains(
                "line 12002, column \"contact_id\": 1 event(s) belong to contacts not in the base \
                 (first: contact_id 77)"
            ),
            "{failed}"
        );
        assert_eq!(files_of(dir.path()), before);
        (said, contacts, events, fields)
    };
    let whole = run(None);
    assert!(whole.3.contains("score,Float64"), "{}", whole.3);
    assert!(whole.3.contains("joined,Date32"), "{}", whole.3);
    assert!(whole.3.contains("visits,Int64"), "{}", whole.3);
    assert!(
        whole.3.contains("code,\"Dictionary(Int32, Utf8)\""),
        "{}",
        whole.3
    );
    // The first contact's code keeps its leading zeros, and the last
    // contact's decimal score is read as it was written.
    assert!(whole.1.contains(",0000,"), "{}", &whole.1[..300]);
    assert!(whole.1.contains(",2999.5,"), "{}", &whole.1[..300]);
    for bytes in ["3000", "20000"] {
        let chunked = run(Some(bytes));
        assert_eq!(chunked.1, whole.1, "contacts, chunks of {bytes} bytes");
        assert_eq!(chunked.2, whole.2, "events, chunks of {bytes} bytes");
        assert_eq!(chunked.3, whole.3, "fields, chunks of {bytes} bytes");
        assert_eq!(chunked.0, whole.0, "reports, chunks of {bytes} bytes");
    }
}

/// A closed pipe (`segments ... | head`) ends a command quietly: no panic,
/// no message.
#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    let b = small_base();
    for args in [
        vec!["segment", "preview", "--as-of", AS_OF],
        vec!["sql", "--format", "csv", "SELECT * FROM contacts"],
    ] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_segments"));
        cmd.env("SEGMENTS_BASE", b.path())
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if args[0] == "segment" {
            cmd.arg(testdata("segments/04-parisiens.json"));
        }
        let mut child = cmd.spawn().unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{args:?}");
    }
}
