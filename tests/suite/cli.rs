//! The command line on the small base of testdata/small.

use assert_cmd::Command;
use serde_json::Value;

pub(super) fn segments(base: &std::path::Path) -> Command {
    let mut c = Command::cargo_bin("segments").unwrap();
    c.env("SEGMENTS_BASE", base);
    c
}

pub(super) fn testdata(p: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(p)
}

pub(super) const AS_OF: &str = "2026-11-23T12:00:00Z";

pub(super) fn small_base() -> tempfile::TempDir {
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
pub(super) fn stdout_of(cmd: &mut Command) -> String {
    String::from_utf8(cmd.assert().success().get_output().stdout.clone()).unwrap()
}

pub(super) fn json_of(cmd: &mut Command) -> Value {
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

pub(super) fn ids_of_csv(path: &std::path::Path) -> Vec<String> {
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
        // The types SQL shows, then the types the contacts file stores.
        let mut fields = query(
            "SELECT column_name, data_type FROM information_schema.columns \
             WHERE table_name = 'contacts' ORDER BY ordinal_position",
        );
        {
            use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
            let snap = segments::base::Base::open(dir.path())
                .unwrap()
                .snapshot()
                .unwrap();
            let stored = snap.manifest.contacts.as_ref().unwrap();
            let file = std::fs::File::open(dir.path().join(&stored.path)).unwrap();
            let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
            for f in reader.schema().fields() {
                fields.push_str(&format!("stored {}: {}\n", f.name(), f.data_type()));
            }
        }
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
    // Text with few distinct values is stored as a dictionary, as SQL shows.
    assert!(
        whole.3.contains("stored code: Dictionary(Int32, Utf8)"),
        "{}",
        whole.3
    );
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

/// `segment overlap`: every cell equals a SQL count with `in_segment`, the
/// reachable counts equal what `audience` counts, and the JSON has the
/// shape the README documents.
#[test]
fn overlap_counts_equal_sql_and_audience() {
    let dir = small_base();
    let b = dir.path();
    segments(b)
        .args([
            "segment",
            "create",
            "--static",
            "--name",
            "VIP",
            "--from-query",
        ])
        .arg("SELECT contact_id FROM contacts WHERE contact_id IN (101, 102, 104, 106)")
        .assert()
        .success();
    let ids = [
        "email_contacts",
        "sms_contacts",
        "vip",
        "email_bad_addresses",
    ];
    let o = json_of(
        segments(b)
            .args(["segment", "overlap"])
            .args(ids)
            .args(["--format", "json"]),
    );
    let sql_count = |q: String| -> u64 {
        let out = stdout_of(segments(b).args(["sql", "--format", "csv", &q]));
        out.lines().nth(1).unwrap().trim().parse().unwrap()
    };
    for (i, a) in ids.iter().enumerate() {
        assert_eq!(o["segments"][i]["id"], *a);
        assert_eq!(o["segments"][i]["status"], "up_to_date");
        for (j, c) in ids.iter().enumerate() {
            let want = sql_count(format!(
                "SELECT count(*) FROM contacts WHERE in_segment(contact_id, '{a}') AND in_segment(contact_id, '{c}')"
            ));
            assert_eq!(o["matrix"][i][j], want, "{a} ∩ {c}");
            let size = o["matrix"][i][i].as_u64().unwrap();
            let pct = o["percent"][i][j].as_f64();
            if size == 0 {
                assert!(pct.is_none());
            } else {
                let want = (want as f64 * 1000.0 / size as f64).round() / 10.0;
                assert_eq!(pct, Some(want));
            }
        }
    }
    let any = ids
        .iter()
        .map(|a| format!("in_segment(contact_id, '{a}')"))
        .collect::<Vec<_>>();
    assert_eq!(
        o["union"],
        sql_count(format!(
            "SELECT count(*) FROM contacts WHERE {}",
            any.join(" OR ")
        ))
    );
    assert_eq!(
        o["intersection"],
        sql_count(format!(
            "SELECT count(*) FROM contacts WHERE {}",
            any.join(" AND ")
        ))
    );

    // Reachable by e-mail: each size is `audience --include A`; each pair
    // is |A| + |B| − |A ∪ B| of audience counts.
    let reach = json_of(segments(b).args(["segment", "overlap"]).args(ids).args([
        "--only-reachable",
        "email",
        "--format",
        "json",
    ]));
    assert_eq!(reach["only_reachable"], "email");
    let audience = |include: &str| -> u64 {
        let out = stdout_of(segments(b).args([
            "audience",
            "--include",
            include,
            "--channel",
            "email",
            "--as-of",
            AS_OF,
        ]));
        out.split(' ').next().unwrap().parse().unwrap()
    };
    for (i, a) in ids.iter().enumerate() {
        assert_eq!(reach["matrix"][i][i], audience(a), "{a}");
        for (j, c) in ids.iter().enumerate().skip(i + 1) {
            let both = audience(a) + audience(c) - audience(&format!("{a},{c}"));
            assert_eq!(reach["matrix"][i][j], both, "{a} ∩ {c} reachable");
            assert_eq!(reach["matrix"][j][i], both);
        }
    }

    // The table shows percentages; bad input is refused.
    let table = stdout_of(segments(b).args(["segment", "overlap", "email_contacts", "vip"]));
    assert!(table.contains('%') && table.contains("union: "), "{table}");
    segments(b)
        .args(["segment", "overlap", "vip", "nope"])
        .assert()
        .failure();
    segments(b)
        .args(["segment", "overlap", "vip", "VIP"])
        .assert()
        .failure();

    // A failed segment is shown as failed, not silently with its numbers.
    let broken = b.join("broken.json");
    std::fs::write(
        &broken,
        r#"{"name": "Broken", "criteria": {"query": "SELECT CAST(email AS BIGINT) AS contact_id FROM contacts"}}"#,
    )
    .unwrap();
    segments(b)
        .args(["segment", "create"])
        .arg(&broken)
        .assert()
        .code(2);
    let o = json_of(segments(b).args(["segment", "overlap", "broken", "vip", "--format", "json"]));
    assert_eq!(o["segments"][0]["status"], "failed");
    assert_eq!(o["segments"][1]["status"], "up_to_date");
}

/// `--wait`: a writer finds the base held by another, waits for it, then
/// does its work; without it, it fails at once naming the holder.
#[test]
fn a_writer_waits_for_another_with_wait() {
    let dir = small_base();
    let b = dir.path();
    let holder = super::common::HeldWriter::start(b);
    let out = segments(b)
        .args(["segment", "pause", "email_contacts"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("segments segment pause sms_contacts"), "{err}");
    let release = holder.release_after(std::time::Duration::from_millis(500));
    let waited =
        stdout_of(segments(b).args(["--wait", "60s", "segment", "pause", "email_contacts"]));
    assert!(waited.starts_with("paused email_contacts"), "{waited}");
    assert!(release.join().unwrap().success());
    let list = json_of(segments(b).args(["segment", "list", "--format", "json"]));
    let status = |id: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(
        (status("sms_contacts"), status("email_contacts")),
        (Value::from("paused"), Value::from("paused"))
    );
    segments(b)
        .args(["--wait", "soon", "segment", "list"])
        .assert()
        .failure();
}

/// A definition that can never run is refused when it is saved, edited or
/// previewed, with the JSON path of the criterion at fault, and the base
/// is left byte for byte as it was. (What fails only on the data, a cast of
/// a text that is not a number, is still saved, as *failed*: see
/// `overlap_counts_equal_sql_and_audience`.)
#[test]
fn what_cannot_be_planned_is_refused_at_save() {
    let dir = small_base();
    let b = dir.path();
    let inputs = tempfile::tempdir().unwrap();
    let def = inputs.path().join("def.json");
    std::fs::write(
        &def,
        r#"{"id": "fr", "name": "FR", "criteria": {"field": "country", "op": "eq", "value": "fr"}}"#,
    )
    .unwrap();
    segments(b)
        .args(["segment", "create"])
        .arg(&def)
        .assert()
        .success();
    let before = super::common::base_files(b);
    let cases = [
        (
            r#"{"query": "SELECT * FROM '/etc/passwd'"}"#,
            "criteria.query",
            "/etc/passwd",
        ),
        (
            r#"{"all": [{"field": "country", "op": "eq", "value": "fr"}, {"query": "SELECT email FROM contacts"}]}"#,
            "criteria.all[1].query",
            "contact_id",
        ),
        (
            r#"{"any": [{"not": {"sql": "no_such_column > 1"}}]}"#,
            "criteria.any[0].not.sql",
            "no_such_column",
        ),
        (
            r#"{"not": {"query": "DELETE FROM contacts"}}"#,
            "criteria.not.query",
            "read-only",
        ),
        (
            r#"{"sql": "city + 1 > 2"}"#,
            "criteria.sql",
            "Cannot coerce",
        ),
        (
            r#"{"query": "SELECT city + 1 AS contact_id FROM contacts"}"#,
            "criteria.query",
            "Cannot coerce",
        ),
    ];
    for (criteria, path, what) in cases {
        std::fs::write(
            &def,
            format!(r#"{{"name": "Never", "criteria": {criteria}}}"#),
        )
        .unwrap();
        for args in [
            vec!["segment", "create"],
            vec!["segment", "edit", "fr"],
            vec!["segment", "preview"],
        ] {
            let out = segments(b).args(&args).arg(&def).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} {criteria}: accepted");
            assert!(
                err.contains(path) && err.contains(what),
                "{args:?} {criteria}: expected {path:?} and {what:?} in {err}"
            );
            assert_eq!(err.lines().count(), 1, "{err}");
        }
        assert!(
            super::common::base_files(b) == before,
            "{criteria}: the base changed"
        );
    }
}

/// `gen` leaves a base ready: every segment computed as of the generation.
#[test]
fn gen_ends_with_every_segment_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path();
    let out = stdout_of(segments(b).args([
        "gen",
        "--contacts",
        "3000",
        "--events-per-contact",
        "5",
        "--as-of",
        AS_OF,
    ]));
    assert!(out.contains("the base is up to date"), "{out}");
    assert!(assert_stored_by_type(b) > 1);
    let list = json_of(segments(b).args(["segment", "list", "--format", "json"]));
    let list = list.as_array().unwrap();
    assert!(list.len() >= 4, "{list:?}");
    for s in list {
        assert_eq!(s["status"], "up_to_date", "{s}");
        assert!(s["computed_at"].is_string(), "{s}");
    }
    assert!(list.iter().any(|s| s["contacts"].as_u64() > Some(0)));
}

/// `history_days`: computations older than that (counted back from the
/// newest) keep one point a day (the day's last size, its entries and exits
/// summed) and lose their entry and exit bitmaps; `check` verifies it, and
/// reports a base computed under a longer setting until its next
/// computation; deleting a contact afterwards leaves a sound base.
#[test]
fn history_is_bounded_to_its_days() {
    let dir = small_base();
    let b = dir.path();
    let set_days = |days: u32| set_config(b, "history_days", &days.to_string());
    let check = |code: i32| {
        let out = segments(b).arg("check").output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{out:?}");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    for as_of in [
        "2026-11-24T08:00:00Z",
        "2026-11-24T20:00:00Z",
        "2026-11-26T08:00:00Z",
        "2026-11-30T08:00:00Z",
        "2026-12-01T08:00:00Z",
    ] {
        segments(b)
            .args(["recompute", "--as-of", as_of])
            .assert()
            .success();
    }
    check(0);
    // A shorter setting: check names what the next computation bounds.
    set_days(3);
    let report = check(3);
    assert!(
        report.contains("history older than 3 days keeps entry and exit bitmaps"),
        "{report}"
    );
    segments(b)
        .args(["recompute", "--as-of", "2026-12-01T09:00:00Z"])
        .assert()
        .success();
    check(0);
    let history = |id: &str| {
        json_of(segments(b).args(["segment", "history", id, "--format", "json"]))
            .as_array()
            .unwrap()
            .clone()
    };
    let h = history("all_contacts");
    let days: Vec<&str> = h
        .iter()
        .map(|p| &p["as_of"].as_str().unwrap()[..10])
        .collect();
    // Before 2026-11-28T09:00 one point a day (the base's imports computed
    // it twice on 2026-11-23); after, every computation.
    assert_eq!(
        days,
        [
            "2026-11-23",
            "2026-11-24",
            "2026-11-26",
            "2026-11-30",
            "2026-12-01",
            "2026-12-01"
        ],
        "{h:?}"
    );
    // The sizes add up from the entries and exits, merged points included.
    let mut size = 0i64;
    for p in &h {
        size += p["entries"].as_i64().unwrap() - p["exits"].as_i64().unwrap();
        assert_eq!(size, p["size"].as_i64().unwrap(), "{h:?}");
    }
    segments(b)
        .args(["contacts", "delete", "101"])
        .assert()
        .success();
    check(0);
    assert_stored_by_type(b);
    let h = history("all_contacts");
    let sizes: Vec<u64> = h.iter().map(|p| p["size"].as_u64().unwrap()).collect();
    // The points the history can replay lose the deleted contact; the
    // oldest, whose entries lost their bitmap, keeps its size.
    assert_eq!(sizes, [6, 5, 5, 5, 5, 5], "{h:?}");
}

/// Set a top-level key of a base's `segments.toml`.
fn set_config(base: &std::path::Path, key: &str, value: &str) {
    let toml = base.join("segments.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    let prefix = format!("{key} = ");
    assert!(text.contains(&prefix), "{text}");
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with(&prefix) {
                format!("{key} = {value}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&toml, text).unwrap();
}

/// Events files per month of a base's newest version.
pub(super) fn files_per_month(base: &std::path::Path) -> std::collections::BTreeMap<String, usize> {
    let snap = segments::base::Base::open(base)
        .unwrap()
        .snapshot()
        .unwrap();
    let mut out = std::collections::BTreeMap::new();
    for e in &snap.manifest.events {
        *out.entry(e.month.clone()).or_default() += 1;
    }
    out
}

/// Every events file of the base stores its rows as imports write them: a
/// type's rows in row groups of their own, types in order of name, each
/// type's rows by (`_iid`, `ts`). Returns the number of files.
pub fn assert_stored_by_type(base: &std::path::Path) -> usize {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Int32Type, TimestampMicrosecondType, UInt32Type};
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let snap = segments::base::Base::open(base)
        .unwrap()
        .snapshot()
        .unwrap();
    for e in &snap.manifest.events {
        let path = base.join(&e.file.path);
        let file = std::fs::File::open(&path).unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let groups = builder.metadata().num_row_groups();
        let mut last_type: Option<String> = None;
        for g in 0..groups {
            let file = std::fs::File::open(&path).unwrap();
            let batches: Vec<_> = ParquetRecordBatchReaderBuilder::try_new(file)
                .unwrap()
                .with_row_groups(vec![g])
                .build()
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let mut types = std::collections::BTreeSet::new();
            let mut keys: Vec<(u32, i64)> = Vec::new();
            for b in &batches {
                let t = b
                    .column_by_name("type")
                    .unwrap()
                    .as_dictionary::<Int32Type>();
                let names = t.values().as_string::<i32>();
                for k in t.keys().values() {
                    types.insert(names.value(*k as usize).to_string());
                }
                let iid = b
                    .column_by_name("_iid")
                    .unwrap()
                    .as_primitive::<UInt32Type>();
                let ts = b
                    .column_by_name("ts")
                    .unwrap()
                    .as_primitive::<TimestampMicrosecondType>();
                assert_eq!(ts.null_count(), 0);
                keys.extend(
                    iid.values()
                        .iter()
                        .copied()
                        .zip(ts.values().iter().copied()),
                );
            }
            assert_eq!(
                types.len(),
                1,
                "{}: row group {g} holds {types:?}",
                e.file.path
            );
            let ty = types.pop_first().unwrap();
            assert!(
                keys.is_sorted(),
                "{}: row group {g} not by (_iid, ts)",
                e.file.path
            );
            if let Some(prev) = &last_type {
                assert!(
                    *prev <= ty,
                    "{}: type {ty} after {prev} (row group {g})",
                    e.file.path
                );
            }
            last_type = Some(ty);
        }
    }
    snap.manifest.events.len()
}

/// `segments compact` merges each month's files into one; every answer is
/// the same after it (members with their entry times, a recompute, SQL over
/// events); an events import merges a month past `compact_after_files`.
#[test]
fn compaction_merges_months_and_changes_no_answer() {
    let dir = small_base();
    let b = dir.path();
    set_config(b, "compact_after_files", "1000");
    for name in ["second", "third"] {
        segments(b)
            .env("SEGMENTS_IMPORT_CHUNK_BYTES", "40")
            .args(["import", "events"])
            .arg(testdata("small/events.csv"))
            .args(["--name", name, "--as-of", AS_OF])
            .assert()
            .success();
    }
    let before_files = files_per_month(b);
    assert!(before_files.values().all(|&n| n >= 3), "{before_files:?}");
    let answers = |b: &std::path::Path| {
        let list = json_of(segments(b).args(["segment", "list", "--format", "json"]));
        let mut out = Vec::new();
        for s in list.as_array().unwrap() {
            let id = s["id"].as_str().unwrap();
            out.push(stdout_of(
                segments(b).args(["segment", "members", id, "--format", "json"]),
            ));
        }
        out.push(stdout_of(segments(b).args([
            "sql",
            "--format",
            "csv",
            "SELECT contact_id, ts, type, operation_id, url, amount FROM events \
             ORDER BY contact_id, ts, type, operation_id, url, amount",
        ])));
        out
    };
    assert_stored_by_type(b);
    let before = answers(b);
    let out = stdout_of(segments(b).args(["compact"]));
    assert!(out.contains("2026-11: "), "{out}");
    assert_stored_by_type(b);
    let after_files = files_per_month(b);
    assert!(after_files.values().all(|&n| n == 1), "{after_files:?}");
    assert_eq!(
        after_files.keys().collect::<Vec<_>>(),
        before_files.keys().collect::<Vec<_>>()
    );
    assert_eq!(answers(b), before);
    segments(b).arg("check").assert().success();
    // A recompute on the merged files finds the same members.
    segments(b)
        .args(["recompute", "--as-of", AS_OF])
        .assert()
        .success();
    assert_eq!(answers(b), before);
    assert!(stdout_of(segments(b).args(["compact"])).starts_with("nothing to compact"));
    // An import past the setting merges the months it crowds.
    set_config(b, "compact_after_files", "2");
    segments(b)
        .env("SEGMENTS_IMPORT_CHUNK_BYTES", "40")
        .args(["import", "events"])
        .arg(testdata("small/events.csv"))
        .args(["--name", "fourth", "--as-of", AS_OF])
        .assert()
        .success();
    let files = files_per_month(b);
    assert!(files.values().all(|&n| n <= 2), "{files:?}");
    assert_stored_by_type(b);
    segments(b).arg("check").assert().success();
}

/// Events files of the older layout (by contact and time, types mixed in
/// every row group), as bases written before the by-type layout hold them:
/// every answer is the same, and `segments compact` rewrites them by type,
/// months of a single file included.
#[test]
fn files_of_the_older_layout_read_alike_and_compact_rewrites_them() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path();
    segments(b)
        .args([
            "gen",
            "--contacts",
            "3000",
            "--events-per-contact",
            "8",
            "--as-of",
            AS_OF,
        ])
        .assert()
        .success();
    let answers = |b: &std::path::Path| {
        segments(b)
            .args(["recompute", "--full", "--as-of", AS_OF])
            .assert()
            .success();
        [
            "SELECT segment_id, count(*), min(contact_id), max(contact_id) FROM segment_members \
             GROUP BY segment_id ORDER BY segment_id",
            "SELECT type, count(*), round(sum(amount), 6), min(ts), max(ts) FROM events GROUP BY type ORDER BY type",
        ]
        .iter()
        .map(|q| stdout_of(segments(b).args(["sql", "--format", "csv", q])))
        .collect::<Vec<_>>()
    };
    // A sum of purchases' amounts: by type, purchases are read with their
    // amounts, the other types without.
    segments(b)
        .args(["segment", "create"])
        .arg(testdata("segments/03-gros-acheteurs.json"))
        .args(["--as-of", AS_OF])
        .assert()
        .success();
    let event_plans = |b: &std::path::Path| {
        let plan = stdout_of(segments(b).args(["recompute", "--dry-run", "--as-of", AS_OF]));
        let events = plan
            .split("\npass 2")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        events
            .lines()
            .filter(|l| l.starts_with("Projection: events._iid"))
            .count()
    };
    assert!(event_plans(b) >= 2, "one plan per set of types read alike");
    let before = answers(b);
    let months = rewrite_as_older_layout(b);
    assert!(months >= 12, "{months} months");
    let base = segments::base::Base::open(b).unwrap();
    let snap = base.snapshot().unwrap();
    assert!(
        snap.manifest
            .events
            .iter()
            .all(|e| !segments::base::events::stored_by_type(snap.dir(), e)),
        "the rewritten files mix types in their row groups"
    );
    drop(snap);
    segments(b).arg("check").assert().success();
    assert_eq!(answers(b), before, "files of the older layout read alike");
    // Row groups mixing types would be read once per plan: one plan reads them.
    assert_eq!(event_plans(b), 1);
    let out = stdout_of(segments(b).args(["compact"]));
    assert_eq!(
        out.lines().filter(|l| l.contains(": ")).count(),
        months,
        "{out}"
    );
    assert_stored_by_type(b);
    assert!(event_plans(b) >= 2);
    assert_eq!(answers(b), before, "after compact");
    assert!(stdout_of(segments(b).args(["compact"])).starts_with("nothing to compact"));
}

/// Rewrite every events file of the current version sorted by (`_iid`,
/// `ts`) in row groups of 500 rows, flagged as not by type, as older
/// versions wrote them; returns the number of files.
fn rewrite_as_older_layout(b: &std::path::Path) -> usize {
    use datafusion::arrow::compute::{SortColumn, lexsort_to_indices, take_record_batch};
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::file::properties::WriterProperties;
    let base = segments::base::Base::open(b).unwrap();
    let version = base.latest_version().unwrap();
    let path = segments::base::manifest::manifest_path(b, version);
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let files = manifest["events"].as_array_mut().unwrap();
    for e in files.iter_mut() {
        let rel = e["file"]["path"].as_str().unwrap().to_string();
        let batch = segments::base::table::read_parquet_one(&b.join(&rel), None).unwrap();
        let sort: Vec<SortColumn> = ["_iid", "ts"]
            .iter()
            .map(|c| SortColumn {
                values: batch.column_by_name(c).unwrap().clone(),
                options: None,
            })
            .collect();
        let sorted = take_record_batch(&batch, &lexsort_to_indices(&sort, None).unwrap()).unwrap();
        let mut bytes = Vec::new();
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(500))
            .build();
        let mut w = ArrowWriter::try_new(&mut bytes, sorted.schema(), Some(props)).unwrap();
        w.write(&sorted).unwrap();
        w.close().unwrap();
        std::fs::write(b.join(&rel), &bytes).unwrap();
        e["file"]["bytes"] = bytes.len().into();
        e["file"]["crc32"] = crc32fast::hash(&bytes).into();
        e.as_object_mut().unwrap().remove("by_type");
    }
    let n = files.len();
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    n
}

#[test]
fn bench_computes_the_segments_its_counts_and_sql_read_on_a_new_base() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::cargo_bin("segments")
        .unwrap()
        .args(["bench", "--dir"])
        .arg(dir.path())
        .args(["--contacts", "3000", "--segments", "3", "--runs", "1"])
        .args(["--workloads", "sql:city-of-segment,nested-count"])
        .assert()
        .success()
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("never computed") && stderr.contains("computing them first, untimed"),
        "{stderr}"
    );
    let base = dir.path().join("base-3000x30");
    // Every segment the workloads read has results now.
    let list = json_of(segments(&base).args(["segment", "list", "--format", "json"]));
    let rows = list.as_array().expect("a list");
    for id in [
        "g-1",
        "email_subscribers",
        "sms_subscribers",
        "active_contacts",
        "email_bad_addresses",
        "all_contacts",
    ] {
        let row = rows
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("no segment {id} in {list}"));
        assert!(row["computed_at"].is_string(), "{id} not computed: {row}");
    }
    // The timed answers are those of the computed segments.
    let report: Value =
        serde_json::from_slice(&std::fs::read(base.join("bench-report.json")).unwrap()).unwrap();
    let note = |name: &str| -> String {
        report["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == name)
            .unwrap_or_else(|| panic!("no workload {name}"))["note"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let cities = stdout_of(segments(&base).args([
        "sql",
        "--format",
        "csv",
        "SELECT city, count(*) AS n FROM contacts WHERE in_segment(contact_id, 'g-1') GROUP BY city",
    ]));
    assert_eq!(
        note("sql:city-of-segment"),
        format!("{} rows", cities.lines().count() - 1)
    );
    let nested = stdout_of(segments(&base).args([
        "sql",
        "--format",
        "csv",
        "SELECT count(*) AS n FROM contacts WHERE (in_segment(contact_id, 'email_subscribers') \
         OR in_segment(contact_id, 'sms_subscribers')) AND in_segment(contact_id, 'active_contacts') \
         AND NOT in_segment(contact_id, 'email_bad_addresses')",
    ]));
    let n: u64 = nested.lines().nth(1).unwrap().trim().parse().unwrap();
    assert!(n > 0, "no contact in the nested count");
    assert!(
        note("nested-count").ends_with(&format!("= {n}")),
        "{}",
        note("nested-count")
    );
}
