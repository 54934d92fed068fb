//! Imports, upserts, bad input, deletion, snapshots.

use serde_json::json;

use super::common::{TestBase, at, new_base};
use segments::base::manifest::list_versions;

fn versions(tb: &TestBase) -> Vec<u64> {
    list_versions(tb.path()).unwrap()
}

fn files(tb: &TestBase) -> Vec<(String, Vec<u8>)> {
    super::common::base_files(tb.path())
}

const AS_OF: &str = "2026-03-02T12:00:00Z";

/// The rows of a query over a snapshot, as a table.
fn sql_table(snap: &segments::base::Snapshot, query: &str) -> String {
    let rows = super::common::rt()
        .block_on(segments::sql::run_query(snap, query))
        .unwrap();
    datafusion::arrow::util::pretty::pretty_format_batches(&rows)
        .unwrap()
        .to_string()
}

/// The one whole number a query gives.
fn sql_number(snap: &segments::base::Snapshot, query: &str) -> i64 {
    let rows = super::common::rt()
        .block_on(segments::sql::run_query(snap, query))
        .unwrap();
    datafusion::arrow::array::AsArray::as_primitive::<datafusion::arrow::datatypes::Int64Type>(
        rows[0].column(0),
    )
    .value(0)
}

#[test]
fn every_field_type_round_trips_through_csv_and_parquet() {
    let tb = new_base("UTC");
    tb.import_contacts(
        "c",
        "contact_id,name,score,ratio,birth,seen,optin,loyalty,interests\n\
         1,Zoé,3,0.5,2001-02-03,2026-01-02T03:04:05Z,true,gold,a;B\n\
         2,,,,,,,,\n",
    )
    .unwrap();
    let snap = tb.base.snapshot().unwrap();
    let types: Vec<(String, &str)> = snap
        .manifest
        .fields
        .iter()
        .map(|f| (f.name.clone(), f.ty.name()))
        .collect();
    assert_eq!(
        types,
        vec![
            ("name".into(), "text"),
            ("score".into(), "number"),
            ("ratio".into(), "number"),
            ("birth".into(), "date"),
            ("seen".into(), "timestamp"),
            ("optin".into(), "bool"),
            ("loyalty".into(), "choice"),
            ("interests".into(), "tags"),
        ]
    );
    // The values are the file's, typed.
    assert_eq!(
        sql_table(
            &snap,
            "SELECT contact_id, name, score, ratio, birth, seen, optin, loyalty, interests \
             FROM contacts ORDER BY contact_id",
        ),
        "\
+------------+------+-------+-------+------------+----------------------+-------+---------+-----------+
| contact_id | name | score | ratio | birth      | seen                 | optin | loyalty | interests |
+------------+------+-------+-------+------------+----------------------+-------+---------+-----------+
| 1          | Zoé  | 3     | 0.5   | 2001-02-03 | 2026-01-02T03:04:05Z | true  | gold    | [a, B]    |
| 2          |      |       |       |            |                      |       |         |           |
+------------+------+-------+-------+------------+----------------------+-------+---------+-----------+"
    );
    // Export to Parquet, import the Parquet file into a second base: same values.
    let (_, members) = (0, segments::base::members::Members::default());
    let all = segments::base::contacts::load_contacts(snap.dir(), &snap.manifest).unwrap();
    let out = tb.path().join("input/export.parquet");
    let ids: roaring::RoaringBitmap = (0..2).collect();
    let batch = segments::jobs::segments::members_batch(
        snap.dir(),
        &snap.manifest,
        &ids,
        Some(&members),
        &[],
    )
    .unwrap();
    let batch = batch
        .project(&(0..batch.num_columns() - 1).collect::<Vec<_>>())
        .unwrap();
    segments::jobs::export::write_batch(&out, &batch).unwrap();
    let tb2 = new_base("UTC");
    let mut w = tb2.base.writer("t").unwrap();
    segments::base::contacts::import_contacts(
        &mut w,
        &out,
        &segments::base::contacts::ImportOptions {
            name: None,
            overwrite_empty: false,
        },
    )
    .unwrap();
    w.commit().unwrap();
    let snap2 = tb2.base.snapshot().unwrap();
    let all2 = segments::base::contacts::load_contacts(snap2.dir(), &snap2.manifest).unwrap();
    assert_eq!(all.num_rows(), all2.num_rows());
    for f in &snap.manifest.fields {
        assert_eq!(
            all.column_by_name(&f.name).unwrap().as_ref(),
            all2.column_by_name(&f.name).unwrap().as_ref(),
            "column {}",
            f.name
        );
    }
}

#[test]
fn upsert_keeps_existing_values_unless_overwrite_empty() {
    let tb = new_base("UTC");
    tb.import_contacts("a", "contact_id,city,score\n1,Paris,1\n2,Lyon,2\n")
        .unwrap();
    // Empty city does not overwrite; a new column becomes a field; 3 is added.
    tb.import_contacts("b", "contact_id,city,score,vip\n1,,5,true\n3,Nice,,false\n")
        .unwrap();
    let as_of = at(AS_OF);
    assert_eq!(
        tb.eval(
            &json!({"field": "city", "op": "eq", "value": "paris"}),
            as_of
        )
        .unwrap(),
        vec![1]
    );
    assert_eq!(
        tb.eval(&json!({"field": "score", "op": "eq", "value": 5}), as_of)
            .unwrap(),
        vec![1]
    );
    assert_eq!(
        tb.eval(&json!({"field": "vip", "op": "is_true"}), as_of)
            .unwrap(),
        vec![1]
    );
    assert_eq!(tb.eval(&json!({"import": "b"}), as_of).unwrap(), vec![1, 3]);
    let f = tb.file("c.csv", "contact_id,city\n1,\n");
    let mut w = tb.base.writer("t").unwrap();
    segments::base::contacts::import_contacts(
        &mut w,
        &f,
        &segments::base::contacts::ImportOptions {
            name: None,
            overwrite_empty: true,
        },
    )
    .unwrap();
    w.commit().unwrap();
    assert_eq!(
        tb.eval(&json!({"field": "city", "op": "is_empty"}), as_of)
            .unwrap(),
        vec![1]
    );
}

#[test]
fn bad_input_names_file_line_column_and_leaves_the_base_unchanged() {
    let tb = new_base("UTC");
    tb.import_contacts("a", "contact_id,score,birth\n1,1,2000-01-01\n")
        .unwrap();
    let before_versions = versions(&tb);
    let before_files = files(&tb);
    let cases = [
        (
            "contact_id,score\n1,2\n1,3\n",
            "line 3",
            "duplicate contact_id",
        ),
        (
            "contact_id,score\n5,2\n,3\n",
            "line 3",
            "contact_id is missing",
        ),
        (
            "contact_id,score\n5,2\n6,abc\n",
            "column \"score\"",
            "not a whole number",
        ),
        (
            "contact_id,birth\n5,2001-13-01\n",
            "line 2, column \"birth\"",
            "not a date",
        ),
        (
            "contact_id,loyalty\n5,platinum\n",
            "column \"loyalty\"",
            "not one of the allowed values",
        ),
        ("score\n1\n", "header", "contact_id"),
        ("contact_id,score\n-4,1\n", "line 2", "non-negative"),
    ];
    for (i, (csv, location, message)) in cases.iter().enumerate() {
        let err = tb
            .import_contacts(&format!("bad{i}"), csv)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("bad{i}.csv")), "{err}");
        assert!(err.contains(location), "expected {location:?} in {err}");
        assert!(err.contains(message), "expected {message:?} in {err}");
        assert_eq!(
            versions(&tb),
            before_versions,
            "a failed import published a version"
        );
        let now = files(&tb);
        assert!(
            now == before_files,
            "a failed import changed the base's files: {:?}",
            now.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
    }
}

#[test]
fn unknown_contact_events_fail_with_count_or_are_skipped() {
    let tb = new_base("UTC");
    tb.import_contacts("a", "contact_id\n1\n").unwrap();
    let (before_versions, before_files) = (versions(&tb), files(&tb));
    let err = tb
        .import_events("e", "contact_id,ts,type\n1,2026-01-01T00:00:00Z,web_visit\n9,2026-01-01T00:00:00Z,web_visit\n8,2026-01-01T00:00:00Z,web_visit\n")
        .unwrap_err()
        .to_string();
    // The file, the first row of an unknown contact and its column, the count.
    assert!(
        err.contains("e.csv: line 3, column \"contact_id\": 2 event(s)")
            && err.contains("contact_id 9"),
        "{err}"
    );
    assert_eq!(versions(&tb), before_versions, "a failed import published");
    assert!(files(&tb) == before_files, "a failed import changed files");
    let f = tb.file(
        "e2.csv",
        "contact_id,ts,type\n1,2026-01-01T00:00:00Z,web_visit\n9,2026-01-01T00:00:00Z,web_visit\n",
    );
    let mut w = tb.base.writer("t").unwrap();
    let r = segments::base::events::import_events(
        &mut w,
        &f,
        &segments::base::events::EventImportOptions {
            name: None,
            skip_unknown: true,
        },
    )
    .unwrap();
    w.commit().unwrap();
    assert_eq!((r.rows_added, r.rows_skipped), (1, 1));
    let snap = tb.base.snapshot().unwrap();
    let text = sql_table(&snap, "SELECT contact_id, type FROM events");
    assert!(
        text.contains("| 1          | web_visit |") && !text.contains("| 9 "),
        "only the known contact's event is kept:\n{text}"
    );
}

#[test]
fn a_few_events_into_a_larger_base_find_their_contacts_alone() {
    // Fewer rows than a sixteenth of the contacts: the import looks up the
    // ids it names, not the whole base's.
    let tb = new_base("UTC");
    let contacts: String = (1000..1100).map(|id| format!("{id}\n")).collect();
    tb.import_contacts("a", &format!("contact_id\n{contacts}"))
        .unwrap();
    let (before_versions, before_files) = (versions(&tb), files(&tb));
    let err = tb
        .import_events(
            "e",
            "contact_id,ts,type\n1090,2026-01-01T00:00:00Z,web_visit\n5,2026-01-01T00:00:00Z,web_visit\n",
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 3, column \"contact_id\": 1 event(s)") && err.contains("contact_id 5"),
        "{err}"
    );
    assert_eq!(versions(&tb), before_versions, "a failed import published");
    assert!(files(&tb) == before_files, "a failed import changed files");
    tb.import_events(
        "e",
        "contact_id,ts,type\n1090,2026-01-01T00:00:00Z,web_visit\n1005,2026-01-02T00:00:00Z,purchase\n1090,2026-01-03T00:00:00Z,purchase\n",
    )
    .unwrap();
    let as_of = at("2026-02-01T00:00:00Z");
    let visited = json!({"behavior": {"event": "web_visit"}});
    let bought = json!({"behavior": {"event": "purchase", "having": {"agg": "count", "op": "gte", "value": 1}}});
    assert_eq!(tb.eval(&visited, as_of).unwrap(), vec![1090]);
    assert_eq!(tb.eval(&bought, as_of).unwrap(), vec![1005, 1090]);
}

/// The contacts file's index of ids: a few events find their contacts in
/// it alone; damaged, it is passed over for the contacts file, named by
/// `check` and written again by `compact`; a base without one (written by
/// an earlier version) gets it from `compact` too.
#[test]
fn the_index_of_ids_finds_a_few_events_contacts_and_is_passed_over_when_damaged() {
    use segments::base::ids::ContactIdMap;
    let tb = new_base("UTC");
    // Three blocks of the index, ids spread apart.
    let ids: Vec<u64> = (0..700).map(|k| 1000 + 7 * k).collect();
    let csv: String = ids.iter().map(|id| format!("{id}\n")).collect();
    tb.import_contacts("a", &format!("contact_id\n{csv}"))
        .unwrap();
    let manifest = || (*tb.base.snapshot().unwrap().manifest).clone();
    let index = manifest().contact_ids.expect("an index of ids");
    assert_eq!(
        Some(&index.of),
        manifest().contacts.as_ref().map(|c| &c.path)
    );
    // Found from the index alone: in a copy of the base without its
    // contacts file, the same ids are found.
    let whole = ContactIdMap::load(tb.path(), &manifest()).unwrap();
    let wanted = [1000, 1007, 1000 + 7 * 300, 1000 + 7 * 699, 5, 1001, 99_999];
    let copy = tempfile::tempdir().unwrap();
    let copied = copy.path().join("base");
    super::common::copy_base(tb.path(), &copied);
    std::fs::remove_file(copied.join(&manifest().contacts.unwrap().path)).unwrap();
    let some = ContactIdMap::load_some(&copied, &manifest(), &wanted).unwrap();
    let mut found: Vec<(u64, u32)> = some.iter().collect();
    found.sort();
    let want: Vec<(u64, u32)> = wanted
        .iter()
        .filter_map(|&c| Some((c, whole.get(c)?)))
        .collect();
    assert_eq!(want.len(), 4);
    assert_eq!(found, want);
    let bought = json!({"behavior": {"event": "purchase", "having": {"agg": "count", "op": "gte", "value": 1}}});
    let as_of = at("2026-02-01T00:00:00Z");
    tb.import_events(
        "e",
        "contact_id,ts,type\n1007,2026-01-01T00:00:00Z,purchase\n5893,2026-01-02T00:00:00Z,purchase\n",
    )
    .unwrap();
    assert_eq!(tb.eval(&bought, as_of).unwrap(), vec![1007, 5893]);

    // A byte of the last block changed: the import reads the contacts file.
    let path = tb.path().join(&index.file.path);
    let mut bytes = std::fs::read(&path).unwrap();
    let at_end = bytes.len() - 3;
    bytes[at_end] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    tb.import_events(
        "f",
        "contact_id,ts,type\n5886,2026-01-03T00:00:00Z,purchase\n",
    )
    .unwrap();
    assert_eq!(tb.eval(&bought, as_of).unwrap(), vec![1007, 5886, 5893]);
    let snap = tb.base.snapshot().unwrap();
    let problems = segments::base::check::check(&snap).unwrap();
    let name = std::path::Path::new(&index.file.path).file_name().unwrap();
    assert!(
        problems.len() == 1 && problems[0].contains(name.to_str().unwrap()),
        "{problems:?}"
    );
    drop(snap);
    // `compact` writes it again.
    let done = super::common::rt()
        .block_on(segments::jobs::compact::compact(&tb.base, "compact", 100))
        .unwrap();
    assert!(done.indexed && done.months.is_empty(), "{done:?}");
    assert_ne!(manifest().contact_ids, Some(index));
    assert_eq!(
        segments::base::check::check(&tb.base.snapshot().unwrap()).unwrap(),
        Vec::<String>::new()
    );

    // As an earlier version wrote the base: no index. `compact` writes it.
    let version = tb.base.latest_version().unwrap();
    let mpath = segments::base::manifest::manifest_path(tb.path(), version);
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m.as_object_mut()
        .unwrap()
        .remove("contact_ids")
        .expect("in the manifest");
    std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    assert!(manifest().contact_ids.is_none());
    tb.import_events(
        "g",
        "contact_id,ts,type\n1000,2026-01-04T00:00:00Z,purchase\n",
    )
    .unwrap();
    assert_eq!(
        tb.eval(&bought, as_of).unwrap(),
        vec![1000, 1007, 5886, 5893]
    );
    let done = super::common::rt()
        .block_on(segments::jobs::compact::compact(&tb.base, "compact", 100))
        .unwrap();
    assert!(done.indexed && done.months.is_empty(), "{done:?}");
    let index = manifest().contact_ids.expect("indexed by compact");
    assert_eq!(
        Some(&index.of),
        manifest().contacts.as_ref().map(|c| &c.path)
    );
    assert_eq!(
        segments::base::check::check(&tb.base.snapshot().unwrap()).unwrap(),
        Vec::<String>::new()
    );
    let again = super::common::rt()
        .block_on(segments::jobs::compact::compact(&tb.base, "compact", 100))
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn ids_are_stable_and_never_reused_after_deletion() {
    let tb = new_base("UTC");
    tb.import_contacts("a", "contact_id,city\n10,A\n20,B\n30,C\n")
        .unwrap();
    tb.import_events(
        "e",
        "contact_id,ts,type\n20,2026-01-01T00:00:00Z,purchase\n30,2026-01-01T00:00:00Z,purchase\n",
    )
    .unwrap();
    // A segment that holds contact 20, with history, before the deletion.
    let def = segments::criteria::Definition::parse(
        &json!({"id": "b-or-c", "name": "B or C", "criteria":
            {"field": "city", "op": "in", "value": ["B", "C"]}}),
    )
    .unwrap();
    {
        let mut w = tb.base.writer("t").unwrap();
        super::common::rt()
            .block_on(segments::jobs::segments::create(&mut w, &def, at(AS_OF)))
            .unwrap();
        w.commit().unwrap();
    }
    let map1 = ids_of(&tb);
    let gone = map1.get(20).unwrap();
    assert!(
        member_everywhere(&tb, gone),
        "contact 20 is in segments and imports before its deletion"
    );
    let mut w = tb.base.writer("t").unwrap();
    assert_eq!(
        segments::base::contacts::delete_contacts(&mut w, &[20, 999]).unwrap(),
        1
    );
    w.commit().unwrap();
    assert!(
        !member_everywhere(&tb, gone),
        "the deleted contact is left nowhere"
    );
    no_trace_of(&tb, gone, 20);
    tb.import_contacts("b", "contact_id,city\n40,D\n20,B\n")
        .unwrap();
    let map2 = ids_of(&tb);
    assert_eq!(map1.get(10).unwrap(), map2.get(10).unwrap());
    assert_eq!(map1.get(30).unwrap(), map2.get(30).unwrap());
    assert!(
        map2.get(20).unwrap() > map1.get(30).unwrap(),
        "a deleted id is never reused"
    );
    assert!(map2.get(40).unwrap() > map1.get(30).unwrap());
    // The deleted contact's events and import membership are gone.
    let as_of = at(AS_OF);
    assert_eq!(
        tb.eval(&json!({"behavior": {"event": "purchase"}}), as_of)
            .unwrap(),
        vec![30]
    );
    assert_eq!(tb.eval(&json!({"import": "e"}), as_of).unwrap(), vec![30]);
    // Ids are no longer consecutive in the contacts file: a text condition
    // still finds each row's contact.
    assert_eq!(
        tb.eval(
            &json!({"field": "city", "op": "in", "value": ["a", "b", "d"]}),
            as_of
        )
        .unwrap(),
        vec![10, 20, 40]
    );
}

/// `contact_id` → internal id in the current version.
fn ids_of(tb: &TestBase) -> segments::base::ids::ContactIdMap {
    let snap = tb.base.snapshot().unwrap();
    segments::base::ids::ContactIdMap::load(snap.dir(), &snap.manifest).unwrap()
}

/// True when an internal id is in any segment's members or cohorts, any
/// import's contacts, or the base's contacts.
fn member_everywhere(tb: &TestBase, iid: u32) -> bool {
    let snap = tb.base.snapshot().unwrap();
    let m = &snap.manifest;
    let all =
        segments::base::bitmaps::read_bitmap(snap.dir(), m.all_contacts.as_ref().unwrap()).unwrap();
    let in_imports = m.imports.iter().any(|i| {
        segments::base::bitmaps::read_bitmap(snap.dir(), &i.contacts)
            .unwrap()
            .contains(iid)
    });
    let in_segments = m.segments.iter().any(|rec| {
        let members = segments::base::members::Members::load(snap.dir(), rec).unwrap();
        members.members.contains(iid) || members.cohorts.iter().any(|(_, b)| b.contains(iid))
    });
    all.contains(iid) && in_imports && in_segments
}

/// After a deletion: no segment, cohort, history delta or import holds the
/// id, and every segment's statistics and last history point are a recount.
fn no_trace_of(tb: &TestBase, iid: u32, contact_id: u64) {
    use segments::base::members::{Members, read_delta};
    let snap = tb.base.snapshot().unwrap();
    let m = &snap.manifest;
    let all =
        segments::base::bitmaps::read_bitmap(snap.dir(), m.all_contacts.as_ref().unwrap()).unwrap();
    assert!(!all.contains(iid));
    assert_eq!(m.contact_count, all.len());
    for i in &m.imports {
        let touched = segments::base::bitmaps::read_bitmap(snap.dir(), &i.contacts).unwrap();
        assert!(!touched.contains(iid), "import {} keeps it", i.name);
    }
    for rec in &m.segments {
        let members = Members::load(snap.dir(), rec).unwrap();
        assert!(
            !members.members.contains(iid),
            "segment {} keeps it",
            rec.id
        );
        for (t, b) in &members.cohorts {
            assert!(!b.contains(iid), "segment {}: cohort {t} keeps it", rec.id);
        }
        let stats = rec.stats.as_ref().unwrap();
        assert_eq!(stats.contacts, members.members.len(), "segment {}", rec.id);
        let points = rec.history.points(snap.dir()).unwrap();
        let mut size = 0u64;
        for p in points.iter() {
            let (entries, exits) = read_delta(snap.dir(), p).unwrap();
            assert!(
                !entries.contains(iid) && !exits.contains(iid),
                "segment {}",
                rec.id
            );
            assert_eq!(
                (p.entries, p.exits),
                (entries.len(), exits.len()),
                "segment {}",
                rec.id
            );
            size = size + p.entries - p.exits;
            assert_eq!(
                p.size, size,
                "segment {}: history replays to its sizes",
                rec.id
            );
        }
        assert_eq!(size, members.members.len(), "segment {}", rec.id);
    }
    let query = format!(
        "SELECT (SELECT count(*) FROM segment_members WHERE contact_id = {contact_id}) + \
                (SELECT count(*) FROM contacts WHERE contact_id = {contact_id}) + \
                (SELECT count(*) FROM events WHERE contact_id = {contact_id}) AS n"
    );
    assert_eq!(
        sql_number(&snap, &query),
        0,
        "SQL still sees contact {contact_id}"
    );
}

/// Everything a reader of a snapshot can see: contacts, events, and the
/// members of every segment.
fn read_all(snap: &segments::base::Snapshot) -> String {
    let contacts = segments::base::contacts::load_contacts(snap.dir(), &snap.manifest).unwrap();
    let mut out = datafusion::arrow::util::pretty::pretty_format_batches(&[contacts])
        .unwrap()
        .to_string();
    out += &sql_table(snap, "SELECT * FROM events ORDER BY contact_id, ts, type");
    for rec in &snap.manifest.segments {
        let m = segments::base::members::Members::load(snap.dir(), rec).unwrap();
        out += &format!("\n{}: {:?}", rec.id, m.members.iter().collect::<Vec<_>>());
    }
    out
}

/// Writers in other processes, collecting superseded files at once
/// (`SEGMENTS_GC_GRACE_SECS=0`), leave the files of a pinned version in
/// place: the reader reads all of its version, contacts, events and
/// members, as it was. Once the pin is gone the next writer collects them.
#[test]
fn a_reader_pinned_before_an_import_keeps_its_snapshot() {
    let tb = new_base("UTC");
    tb.import_contacts("a", "contact_id,city,score\n1,A,1\n2,B,2\n")
        .unwrap();
    tb.import_events(
        "e",
        "contact_id,ts,type\n1,2026-01-01T00:00:00Z,purchase\n2,2026-01-02T00:00:00Z,web_visit\n",
    )
    .unwrap();
    let snap = tb.base.snapshot().unwrap();
    let before = read_all(&snap);
    let pinned: Vec<String> = snap
        .manifest
        .files(snap.dir())
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect();
    let write = |args: &[&str], file: &std::path::Path| {
        super::common::succeeded(
            std::process::Command::new(assert_cmd::cargo::cargo_bin("segments"))
                .env("SEGMENTS_BASE", tb.path())
                .env("SEGMENTS_GC_GRACE_SECS", "0")
                .args(args)
                .arg(file)
                .output()
                .unwrap(),
        );
    };
    for i in 0..3 {
        let c = tb.file(
            &format!("b{i}.csv"),
            &format!("contact_id,city,score\n1,Z{i},{i}0\n{},B,3\n", 100 + i),
        );
        write(&["import", "contacts"], &c);
        let e = tb.file(
            &format!("e{i}.csv"),
            &format!(
                "contact_id,ts,type\n1,2026-02-0{}T00:00:00Z,email_open\n",
                i + 1
            ),
        );
        write(&["import", "events"], &e);
    }
    let now = tb.base.snapshot().unwrap();
    assert_eq!(now.manifest.contact_count, 5);
    let superseded: Vec<&String> = pinned
        .iter()
        .filter(|p| {
            !now.manifest
                .files(now.dir())
                .unwrap()
                .iter()
                .any(|f| &&f.path == p)
        })
        .collect();
    assert!(
        superseded.len() >= 3,
        "the writers replaced the contacts, bitmaps and segments: {superseded:?}"
    );
    drop(now);
    assert_eq!(
        read_all(&snap),
        before,
        "the pinned snapshot reads its own version whole"
    );
    // Without the pin, the next writer collects the superseded files.
    drop(snap);
    let c = tb.file("last.csv", "contact_id,city\n1,Y\n");
    write(&["import", "contacts"], &c);
    for p in superseded {
        assert!(!tb.path().join(p).exists(), "{p} outlived its version");
    }
}

#[test]
fn a_second_writer_is_refused_with_the_holder_named() {
    let tb = new_base("UTC");
    let _w = tb.base.writer("segments recompute").unwrap();
    let err = tb.base.writer("segments import").unwrap_err().to_string();
    assert!(
        err.contains("segments recompute") && err.contains(&std::process::id().to_string()),
        "{err}"
    );
}

/// SIGKILL a child `segments import contacts` at random points once it
/// holds the lock; after each kill the base passes the integrity check and
/// holds exactly the old or the new state (same contacts, same values), and
/// the import completes when run again. Kills held just before and just
/// after the manifest is published see both states.
#[test]
fn import_killed_at_random_points_leaves_old_or_new_state() {
    let template = new_base("UTC");
    let mut csv = String::from("contact_id,city,score\n");
    for i in 0..20_000 {
        csv.push_str(&format!("{i},City{},{}\n", i % 50, i % 1000));
    }
    template.import_contacts("seed", &csv).unwrap();
    let mut csv2 = String::from("contact_id,city,score,extra\n");
    for i in 10_000..40_000 {
        csv2.push_str(&format!("{i},Town{},{},x\n", i % 40, i % 77));
    }
    let f = template.file("big.csv", &csv2);
    let bin = assert_cmd::cargo::cargo_bin("segments");
    let contacts_of = |dir: &std::path::Path| {
        let base = segments::base::Base::open(dir).unwrap();
        let snap = base.snapshot().unwrap();
        let problems = segments::base::check::check(&snap).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        segments::base::contacts::load_contacts(snap.dir(), &snap.manifest).unwrap()
    };
    let old = contacts_of(template.path());
    let scratch = tempfile::tempdir().unwrap();
    let f_arg = f.to_string_lossy().to_string();
    let args = ["import", "contacts", &f_arg];
    // One full run gives the new state, the time to spread kills over, and
    // the steps where the manifest is published.
    let probe = super::common::Probe::run(template.path(), &scratch.path().join("probe"), &args);
    let new = contacts_of(&probe.dir);
    assert_ne!(old, new);
    let kills = super::common::kill_rounds(
        template.path(),
        scratch.path(),
        &args,
        &probe,
        20,
        |k, dir| {
            let now = contacts_of(dir);
            let seen = if now == old {
                super::common::Seen::Old
            } else if now == new {
                super::common::Seen::New
            } else {
                panic!("round {k}: the contacts are neither the old nor the new state");
            };
            // The next writer recovers: the import completes on the killed base.
            super::common::succeeded(
                std::process::Command::new(&bin)
                    .env("SEGMENTS_BASE", dir)
                    .args(["import", "contacts"])
                    .arg(&f)
                    .args(["--name", "again"])
                    .output()
                    .unwrap(),
            );
            assert_eq!(contacts_of(dir), new, "round {k}: after the import again");
            seen
        },
    );
    println!(
        "import crash test: {} kills at random points while holding the lock ({} old state, {} new state), {} runs finished first; killed before and after publishing: old, then new",
        kills.killed, kills.saw_old, kills.saw_new, kills.finished
    );
    assert!(kills.killed >= 20 && kills.saw_old > 0, "{kills:?}");
}

/// Text columns with few distinct values are stored as dictionaries and
/// their conditions tested once per distinct value; the others stay plain.
/// Both give the same answers, and an import that changes the spread of
/// values changes the storage.
#[test]
fn text_columns_of_few_values_are_stored_as_dictionaries_with_the_same_answers() {
    let tb = new_base("UTC");
    let cities = ["Paris", "paris", "Lyon", ""];
    let mut csv = String::from("contact_id,city,email,loyalty\n");
    for i in 1..=40 {
        let city = cities[i % cities.len()];
        let loyalty = ["gold", "silver", ""][i % 3];
        csv.push_str(&format!("{i},{city},c{i}@Exemple.fr,{loyalty}\n"));
    }
    tb.import_contacts("c", &csv).unwrap();
    let mut events = String::from("contact_id,ts,type,url\n");
    for i in 1..=40 {
        let url = ["/Checkout/ÉTÉ", "/home", ""][i % 3];
        events.push_str(&format!("{i},2026-03-01T10:00:00Z,web_visit,{url}\n"));
    }
    tb.import_events("e", &events).unwrap();

    let types = |tb: &TestBase| -> Vec<String> {
        let snap = tb.base.snapshot().unwrap();
        let schema =
            segments::base::contacts::stored_contacts_schema(snap.dir(), &snap.manifest).unwrap();
        ["city", "email", "loyalty"]
            .iter()
            .map(|c| schema.field_with_name(c).unwrap().data_type().to_string())
            .collect()
    };
    let dictionary = "Dictionary(Int32, Utf8)".to_string();
    assert_eq!(
        types(&tb),
        [dictionary.clone(), "Utf8".into(), dictionary.clone()]
    );

    let as_of = at("2026-03-02T00:00:00Z");
    let ids = |pred: &dyn Fn(usize) -> bool| -> Vec<u64> {
        (1..=40).filter(|&i| pred(i)).map(|i| i as u64).collect()
    };
    let check = |tb: &TestBase, city_of: &dyn Fn(usize) -> &'static str| {
        let cases: Vec<(serde_json::Value, Vec<u64>)> = vec![
            (
                json!({"field": "city", "op": "eq", "value": "PARIS"}),
                ids(&|i| city_of(i).eq_ignore_ascii_case("paris")),
            ),
            (
                json!({"field": "city", "op": "is_empty"}),
                ids(&|i| city_of(i).is_empty()),
            ),
            (
                json!({"field": "city", "op": "neq", "value": "lyon"}),
                ids(&|i| !city_of(i).eq_ignore_ascii_case("lyon")),
            ),
            (
                json!({"field": "loyalty", "op": "neq", "value": "gold"}),
                ids(&|i| i % 3 == 1),
            ),
            (
                json!({"field": "email", "op": "ends_with", "value": "0@exemple.FR"}),
                ids(&|i| i % 10 == 0),
            ),
            (
                json!({"behavior": {"event": "web_visit", "where": [
                    {"field": "url", "op": "contains", "value": "été"}]}}),
                ids(&|i| i % 3 == 0),
            ),
            (
                json!({"behavior": {"event": "web_visit", "where": [
                    {"field": "url", "op": "is_empty"}]}}),
                ids(&|i| i % 3 == 2),
            ),
            (
                json!({"behavior": {"event": "web_visit", "where": [
                    {"field": "url", "op": "is_not_empty"},
                    {"field": "url", "op": "not_contains", "value": "home"}]}}),
                ids(&|i| i % 3 == 0),
            ),
        ];
        for (criteria, want) in cases {
            assert_eq!(tb.eval(&criteria, as_of).unwrap(), want, "{criteria}");
        }
    };
    check(&tb, &|i| cities[i % cities.len()]);

    // Forty distinct cities: the column is stored plain, same answers.
    let mut csv = String::from("contact_id,city\n");
    let many: Vec<&'static str> = (1..=40)
        .map(|i| -> &'static str {
            match i % 4 {
                0 => "PARIS",
                _ => Box::leak(format!("Ville {i}").into_boxed_str()),
            }
        })
        .collect();
    for (i, city) in many.iter().enumerate() {
        csv.push_str(&format!("{},{city}\n", i + 1));
    }
    tb.import_contacts("c2", &csv).unwrap();
    assert_eq!(types(&tb)[0], "Utf8");
    check(&tb, &|i| many[i - 1]);

    // Ad-hoc SQL reads the dictionary columns as text.
    let snap = tb.base.snapshot().unwrap();
    let n = sql_number(
        &snap,
        "SELECT count(*) AS n FROM contacts WHERE loyalty = 'gold' AND lower(city) LIKE 'ville%'",
    );
    assert_eq!(
        n,
        (1..=40).filter(|i| i % 3 == 1 && i % 4 != 0).count() as i64
    );
}

#[test]
fn unsigned_contact_ids_from_parquet_find_their_contacts() {
    use datafusion::arrow::array::{
        ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array,
    };
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::parquet::arrow::ArrowWriter;
    use std::sync::Arc;

    let tb = new_base("UTC");
    // Ids past the largest signed 64-bit integer are ids too.
    let big = u64::MAX - 1;
    tb.import_contacts("a", &format!("contact_id\n1\n2\n{big}\n"))
        .unwrap();
    let write = |name: &str, ids: Vec<u64>| {
        let n = ids.len();
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let schema = Arc::new(Schema::new(vec![
            Field::new("contact_id", DataType::UInt64, false),
            Field::new("ts", ts, false),
            Field::new("type", DataType::Utf8, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from(ids)),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    (0..n as i64).map(|i| 1_767_225_600_000_000 + i),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from(vec!["purchase"; n])),
        ];
        let path = tb.path().join(name);
        let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
        let mut w =
            ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        path
    };
    let import = |path: &std::path::Path| {
        let mut w = tb.base.writer("t").unwrap();
        let r = segments::base::events::import_events(
            &mut w,
            path,
            &segments::base::events::EventImportOptions {
                name: None,
                skip_unknown: false,
            },
        );
        r.map(|_| w.commit().unwrap()).map_err(|e| e.to_string())
    };
    let err = import(&write("unknown.parquet", vec![2, 7])).unwrap_err();
    assert!(
        err.contains("1 event(s)") && err.contains("contact_id 7"),
        "{err}"
    );
    import(&write("known.parquet", vec![big, 2, big])).unwrap();
    let bought = json!({"behavior": {"event": "purchase", "having": {"agg": "count", "op": "gte", "value": 2}}});
    assert_eq!(
        tb.eval(&bought, at("2026-02-01T00:00:00Z")).unwrap(),
        vec![big]
    );
}

#[test]
fn events_text_from_parquet_reads_the_same_however_it_was_written() {
    use datafusion::arrow::array::{
        Array, ArrayRef, DictionaryArray, Int64Array, LargeStringArray, RecordBatch, StringArray,
        TimestampMicrosecondArray,
    };
    use datafusion::arrow::datatypes::{DataType, Field, Int8Type, Schema};
    use datafusion::arrow::util::display::array_value_to_string;
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::file::properties::WriterProperties;
    use datafusion::parquet::schema::types::ColumnPath;
    use std::sync::Arc;

    let tb = new_base("UTC");
    tb.import_contacts("a", "contact_id\n1\n2\n3\n").unwrap();
    // Each row group has its own dictionaries, and values recur across
    // groups in another order; `operation_id` is stored without a
    // dictionary, `url` comes from an Arrow dictionary with its own keys.
    let types = [
        "purchase",
        "web_visit",
        "web_visit",
        "purchase",
        "email_open",
        "purchase",
        "web_visit",
    ];
    let operations = [
        Some("NL-1"),
        None,
        Some("NL-2"),
        Some("NL-1"),
        None,
        Some("NL-3"),
        Some("NL-2"),
    ];
    let urls = [
        None,
        Some("/a"),
        Some("/b"),
        None,
        Some("/b"),
        None,
        Some("/a"),
    ];
    let n = types.len();
    let schema = Arc::new(Schema::new(vec![
        Field::new("contact_id", DataType::Int64, false),
        Field::new(
            "ts",
            DataType::Timestamp(
                datafusion::arrow::datatypes::TimeUnit::Microsecond,
                Some("UTC".into()),
            ),
            false,
        ),
        Field::new("type", DataType::Utf8, false),
        Field::new("operation_id", DataType::LargeUtf8, true),
        Field::new(
            "url",
            DataType::Dictionary(Box::new(DataType::Int8), Box::new(DataType::Utf8)),
            true,
        ),
    ]));
    let day = 86_400_000_000i64;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(
            (0..n as i64).map(|i| i % 3 + 1),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                (0..n as i64).map(|i| 1_767_225_600_000_000 + i * day),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from(types.to_vec())),
        Arc::new(LargeStringArray::from(operations.to_vec())),
        Arc::new(urls.iter().copied().collect::<DictionaryArray<Int8Type>>()),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let path = tb.path().join("input/events.parquet");
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(3))
        .set_column_dictionary_enabled(ColumnPath::from("operation_id"), false)
        .build();
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let mut w = tb.base.writer("t").unwrap();
    segments::base::events::import_events(
        &mut w,
        &path,
        &segments::base::events::EventImportOptions {
            name: None,
            skip_unknown: false,
        },
    )
    .unwrap();
    w.commit().unwrap();

    let snap = tb.base.snapshot().unwrap();
    let rows = super::common::rt()
        .block_on(segments::sql::run_query(
            &snap,
            "SELECT type, operation_id, url FROM events ORDER BY ts",
        ))
        .unwrap();
    let mut got = Vec::new();
    for b in &rows {
        for r in 0..b.num_rows() {
            let cell = |c: usize| {
                let a = b.column(c);
                (!a.is_null(r)).then(|| array_value_to_string(a, r).unwrap())
            };
            got.push((cell(0).unwrap(), cell(1), cell(2)));
        }
    }
    let want: Vec<(String, Option<String>, Option<String>)> = (0..n)
        .map(|i| {
            (
                types[i].to_string(),
                operations[i].map(String::from),
                urls[i].map(String::from),
            )
        })
        .collect();
    assert_eq!(got, want);
    // Behaviour conditions see the same values.
    assert_eq!(
        tb.eval(
            &json!({"behavior": {"event": "web_visit", "where": [
                {"field": "url", "op": "eq", "value": "/a"}]}}),
            at(AS_OF)
        )
        .unwrap(),
        vec![1, 2]
    );
}

#[test]
fn a_base_created_again_in_the_same_folder_is_read_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("base");
    let import = |csv: &str| {
        let base = segments::jobs::init(&path, segments::base::config::Config::default()).unwrap();
        let f = dir.path().join("contacts.csv");
        std::fs::write(&f, csv).unwrap();
        let mut w = base.writer("t").unwrap();
        segments::base::contacts::import_contacts(
            &mut w,
            &f,
            &segments::base::contacts::ImportOptions {
                name: None,
                overwrite_empty: false,
            },
        )
        .unwrap();
        w.commit().unwrap();
        // Read twice: the second snapshot may reuse what the first parsed.
        base.snapshot().unwrap();
        let snap = base.snapshot().unwrap();
        let fields: Vec<String> = snap
            .manifest
            .fields
            .iter()
            .map(|f| f.name.clone())
            .collect();
        (snap.manifest.version, fields)
    };
    let (v1, fields1) = import("contact_id,city\n1,Paris\n");
    std::fs::remove_dir_all(&path).unwrap();
    let (v2, fields2) = import("contact_id,score\n1,3\n");
    assert_eq!(v1, v2, "the same version number, another manifest");
    assert_eq!(fields1, vec!["city"]);
    assert_eq!(fields2, vec!["score"]);
}

/// The decoding floor decodes the row groups of the types a plan's
/// conditions read, in the files their windows reach, with the columns
/// they read, and the contacts file for contact conditions.
#[test]
fn the_decoding_floor_reads_what_a_plan_reads() {
    use segments::compile::Plan;
    use segments::compile::expr::Clock;
    use segments::criteria::Criterion;
    let tb = new_base("Europe/Paris");
    tb.import_contacts(
        "c",
        "contact_id,city\n1,Paris\n2,Lyon\n3,Paris\n4,Nice\n5,\n",
    )
    .unwrap();
    tb.import_events(
        "e",
        "contact_id,ts,type,amount\n\
         1,2026-09-03T10:00:00Z,purchase,20\n\
         2,2026-09-04T10:00:00Z,email_open,\n\
         3,2026-09-05T10:00:00Z,email_open,\n\
         1,2026-11-03T10:00:00Z,purchase,5\n\
         4,2026-11-04T10:00:00Z,purchase,7.5\n\
         1,2026-11-05T10:00:00Z,email_open,\n\
         2,2026-11-06T10:00:00Z,email_open,\n\
         5,2026-11-07T10:00:00Z,email_open,\n\
         3,2026-11-08T10:00:00Z,email_click,\n\
         4,2026-11-09T10:00:00Z,email_click,\n",
    )
    .unwrap();
    let rt = super::common::rt();
    let _runtime = rt.enter();
    let snap = tb.base.snapshot().unwrap();
    let session = segments::engine::Session::new(&snap.base, snap.manifest.clone()).unwrap();
    let clock = Clock::new(at("2026-11-20T12:00:00Z"), snap.base.tz());
    let floor = |criteria: &[serde_json::Value]| {
        let mut plan = Plan::default();
        for c in criteria {
            plan.add(&Criterion::parse(c, "criteria").unwrap());
        }
        session.decode_floor(&plan, &clock).unwrap()
    };
    let paris = json!({"field": "city", "op": "eq", "value": "Paris"});
    let f = floor(std::slice::from_ref(&paris));
    assert_eq!((f.contact_rows, f.event_rows), (5, 0), "{f:?}");

    // Every purchase, in both months' files: their row groups only.
    let spent = json!({"behavior": {"event": "purchase",
        "having": {"agg": "sum", "field": "amount", "op": "gt", "value": 10}}});
    let f = floor(std::slice::from_ref(&spent));
    assert_eq!(
        (f.contact_rows, f.event_rows, f.row_groups),
        (0, 3, 2),
        "{f:?}"
    );
    // The same rows, without the amounts, are fewer bytes.
    let bought = json!({"behavior": {"event": "purchase"}});
    let g = floor(std::slice::from_ref(&bought));
    assert_eq!(g.event_rows, 3, "{g:?}");
    assert!(g.bytes < f.bytes, "{g:?} against {f:?}");

    // Opens of the last 30 days: the September file is not reached.
    let opened = json!({"behavior": {"event": "email_open", "within": "30d"}});
    let f = floor(std::slice::from_ref(&opened));
    assert_eq!((f.event_rows, f.row_groups), (3, 1), "{f:?}");

    // Several conditions: their types' row groups, and the contacts.
    let clicked = json!({"behavior": {"event": "email_click"}});
    let f = floor(&[paris, spent, opened.clone(), clicked.clone()]);
    assert_eq!((f.contact_rows, f.event_rows), (5, 3 + 3 + 2), "{f:?}");

    // A window whose start falls inside the November file: the scan reads
    // that file alone, not the whole events table.
    let files_read = |c: &serde_json::Value| {
        let mut plan = Plan::default();
        plan.add(&Criterion::parse(c, "criteria").unwrap());
        let parts: Vec<_> = plan
            .event_leaves
            .iter()
            .map(|b| session.behavior_parts(b, &clock).unwrap())
            .collect();
        let reads = session.events_reads(&parts, &clock).unwrap();
        reads
            .files
            .iter()
            .map(|&(i, _)| snap.manifest.events[i].min_ts)
            .collect::<Vec<i64>>()
    };
    let recent = json!({"behavior": {"event": "email_open", "within": "14d"}});
    let november = at("2026-11-01T00:00:00Z").timestamp_micros();
    let read = files_read(&recent);
    assert!(
        read.len() == 1 && read[0] >= november,
        "files read from: {read:?}"
    );
    assert_eq!(files_read(&opened).len(), 1);
    assert_eq!(files_read(&clicked).len(), 2);
}

/// A base larger than the sample that chooses the storage types: the rows
/// no update touches go to the new file as they were read, the others with
/// their updates, and every value reads back as imported.
#[test]
fn an_upsert_into_a_large_base_keeps_every_row_it_does_not_touch() {
    use datafusion::arrow::array::{Array, AsArray};
    let tb = new_base("UTC");
    // Three row groups of the contacts file (256k rows each at most): the
    // first sets the types, the second has no update, the third has some.
    let n = 600_000u64;
    let city = |i: u64| ["Paris", "Lyon", "Évry", ""][(i % 4) as usize];
    let mut csv = String::from("contact_id,city,email,score\n");
    for i in 0..n {
        csv += &format!("{i},{},c{i}@example.com,{}\n", city(i), i % 1000);
    }
    tb.import_contacts("all", &csv).unwrap();
    // Updates at the end of the file and in its middle, and new contacts.
    let updated = |i: u64| (i < 200_000 && i % 50_000 == 7) || i >= n - 3;
    let mut csv = String::from("contact_id,city,score\n");
    for i in (0..n).filter(|&i| updated(i)) {
        csv += &format!("{i},Nantes,{}\n", i % 1000 + 1);
    }
    for i in n..n + 5 {
        csv += &format!("{i},Nantes,1\n");
    }
    tb.import_contacts("updates", &csv).unwrap();
    let snap = tb.base.snapshot().unwrap();
    let all = segments::base::contacts::load_contacts(snap.dir(), &snap.manifest).unwrap();
    assert_eq!(all.num_rows() as u64, n + 5);
    let column = |name: &str| all.column(all.schema().index_of(name).unwrap()).clone();
    let (ids, cities, emails, scores) = (
        column("contact_id"),
        column("city"),
        column("email"),
        column("score"),
    );
    let cities = cities.as_string::<i32>();
    let emails = emails.as_string::<i32>();
    let scores =
        datafusion::arrow::compute::cast(&scores, &datafusion::arrow::datatypes::DataType::Int64)
            .unwrap();
    let scores = scores.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
    let ids =
        datafusion::arrow::compute::cast(&ids, &datafusion::arrow::datatypes::DataType::Int64)
            .unwrap();
    let ids = ids.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
    for row in 0..all.num_rows() {
        let i = ids.value(row) as u64;
        let (want_city, want_score) = match (i >= n, updated(i)) {
            (true, _) => ("Nantes", 1),
            (false, true) => ("Nantes", i % 1000 + 1),
            (false, false) => (city(i), i % 1000),
        };
        let got_city = if cities.is_null(row) {
            ""
        } else {
            cities.value(row)
        };
        assert_eq!(got_city, want_city, "contact {i}: city");
        assert_eq!(scores.value(row) as u64, want_score, "contact {i}: score");
        if i < n {
            assert_eq!(
                emails.value(row),
                format!("c{i}@example.com"),
                "contact {i}: email"
            );
        } else {
            assert!(emails.is_null(row), "new contact {i}: no e-mail");
        }
    }
    let problems = segments::base::check::check(&snap).unwrap();
    assert!(problems.is_empty(), "the base checks clean: {problems:?}");
}
