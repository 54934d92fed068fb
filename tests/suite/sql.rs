//! `segments sql` and `segments serve`: read-only SQL in a shell, a script
//! or over the PostgreSQL protocol, saved results, the memory limit.

use serde_json::Value;

use super::cli::{AS_OF, ids_of_csv, json_of, segments, small_base, stdout_of, testdata};

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

/// The rows of `segments sql` as CSV lines, without the header.
fn csv_rows(base: &std::path::Path, query: &str) -> Vec<String> {
    let out = stdout_of(segments(base).args(["sql", query, "--format", "csv"]));
    out.lines().skip(1).map(str::to_string).collect()
}

#[test]
fn sql_tables_agree_with_the_segment_export() {
    let dir = small_base();
    let b = dir.path();
    let sql = |q: &str| csv_rows(b, q);
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

/// `in_segment(contact_id, ...)` filters on `contacts` and `events`, alone,
/// negated and combined, are answered in the scan from the bitmaps, and
/// agree with `segment_members` (read through the contact ids) and with
/// `in_segment` evaluated row by row in a projection.
#[test]
fn in_segment_filters_answer_from_the_bitmaps_in_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path();
    segments(b)
        .args(["gen", "--contacts", "3000", "--events-per-contact", "5"])
        .args(["--as-of", AS_OF])
        .assert()
        .success();
    let list = json_of(segments(b).args(["segment", "list", "--format", "json"]));
    let mut sizes: Vec<(u64, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| Some((s["contacts"].as_u64()?, s["id"].as_str()?.to_string())))
        .filter(|(n, _)| (1..3000).contains(n))
        .collect();
    sizes.sort();
    assert!(sizes.len() >= 2, "{sizes:?}");
    let (small, large) = (&sizes[0].1, &sizes[sizes.len() - 1].1);
    let sql = |q: &str| csv_rows(b, q);
    let members =
        |s: &str| format!("SELECT contact_id FROM segment_members WHERE segment_id = '{s}'");
    for (a, c) in [(large, small), (small, large)] {
        let pushed = sql(&format!(
            "SELECT contact_id FROM contacts WHERE in_segment(contact_id, '{a}') \
             AND NOT in_segment(contact_id, '{c}') ORDER BY contact_id"
        ));
        let through_ids = sql(&format!(
            "SELECT contact_id FROM ({} EXCEPT {}) ORDER BY contact_id",
            members(a),
            members(c)
        ));
        let row_by_row = sql(&format!(
            "SELECT contact_id FROM (SELECT contact_id, in_segment(contact_id, '{a}') AS a, \
             in_segment(contact_id, '{c}') AS c FROM contacts) WHERE a AND NOT c ORDER BY contact_id"
        ));
        assert!(!pushed.is_empty(), "{a} without {c}");
        assert_eq!(pushed, through_ids, "{a} without {c}");
        assert_eq!(pushed, row_by_row, "{a} without {c}");

        let events = sql(&format!(
            "SELECT count(*), count(DISTINCT contact_id) FROM events WHERE in_segment(contact_id, '{a}')"
        ));
        let joined = sql(&format!(
            "SELECT count(*), count(DISTINCT e.contact_id) FROM events e JOIN ({}) s ON s.contact_id = e.contact_id",
            members(a)
        ));
        assert_eq!(events, joined, "events of {a}");

        let outside = sql(&format!(
            "SELECT count(*) FROM contacts WHERE NOT in_segment(contact_id, '{a}')"
        ));
        let all = sql("SELECT count(*) FROM contacts");
        let inside = sql(&format!("SELECT count(*) FROM ({})", members(a)));
        let n = |v: &[String]| v[0].parse::<u64>().unwrap();
        assert_eq!(n(&outside), n(&all) - n(&inside), "outside {a}");
    }
    // A segment and its own negation keep nobody.
    let none = sql(&format!(
        "SELECT count(*) FROM contacts WHERE in_segment(contact_id, '{large}') \
         AND NOT in_segment(contact_id, '{large}')"
    ));
    assert_eq!(none, vec!["0"]);
    // The plan tests internal ids against the bitmaps.
    let plan = sql(&format!(
        "EXPLAIN SELECT count(*) FROM contacts WHERE in_segment(contact_id, '{large}')"
    ))
    .join("\n");
    assert!(plan.contains("id_in_set(_iid"), "{plan}");
    // An unknown segment is named.
    let a = segments(b)
        .args([
            "sql",
            "SELECT count(*) FROM contacts WHERE in_segment(contact_id, 'nope')",
        ])
        .assert()
        .failure();
    let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
    assert!(err.contains("unknown segment \"nope\""), "{err}");
}

/// Filters on the event type alone are answered by the row groups of the
/// files stored by type: the same rows as the test evaluated row by row,
/// in every shape of test, with other filters, `in_segment`, a limit and
/// a join; and the plan filters nothing on `type`.
#[test]
fn filters_on_the_event_type_read_the_row_groups_of_those_types() {
    let dir = generated_base();
    let b = dir.path();
    let sql = |q: &str| csv_rows(b, q);
    let segment = json_of(segments(b).args(["segment", "list", "--format", "json"]))
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| (100..1900).contains(&s["contacts"].as_u64().unwrap_or(0)))
        .map(|s| s["id"].as_str().unwrap().to_string())
        .next()
        .expect("a segment of some contacts");
    // Each test, and the same written so that only rows can answer it.
    let tests = [
        ("type = 'purchase'", "concat(type, '') = 'purchase'"),
        ("'email_open' = type", "'email_open' = concat(type, '')"),
        ("type <> 'email_sent'", "concat(type, '') <> 'email_sent'"),
        (
            "type IN ('email_click', 'purchase', 'web_visit')",
            "concat(type, '') IN ('email_click', 'purchase', 'web_visit')",
        ),
        (
            "type NOT IN ('email_sent', 'email_open')",
            "concat(type, '') NOT IN ('email_sent', 'email_open')",
        ),
        (
            "(type = 'purchase' OR type = 'email_click')",
            "(concat(type, '') = 'purchase' OR concat(type, '') = 'email_click')",
        ),
        (
            "NOT (type = 'email_sent')",
            "NOT (concat(type, '') = 'email_sent')",
        ),
        ("type = 'no such type'", "concat(type, '') = 'no such type'"),
    ];
    let shapes = [
        "SELECT count(*), count(DISTINCT contact_id), min(ts), max(ts) FROM events WHERE {t}".to_string(),
        "SELECT type, count(*), count(amount), max(amount) FROM events WHERE {t} GROUP BY type ORDER BY type".to_string(),
        "SELECT operation_id, count(*) AS n FROM events WHERE {t} AND operation_id IS NOT NULL \
         GROUP BY operation_id ORDER BY n DESC, operation_id LIMIT 5"
            .to_string(),
        "SELECT contact_id, ts, type FROM events WHERE {t} ORDER BY contact_id, ts, type LIMIT 20"
            .to_string(),
        "SELECT count(*) FROM (SELECT contact_id FROM events WHERE {t} LIMIT 7)".to_string(),
        format!(
            "SELECT count(*), min(amount), max(ts) FROM events WHERE {{t}} AND in_segment(contact_id, '{segment}')"
        ),
        format!(
            "SELECT c.city, count(*) AS n FROM contacts c JOIN events e ON e.contact_id = c.contact_id \
             WHERE in_segment(c.contact_id, '{segment}') AND {{t}} GROUP BY c.city ORDER BY n DESC, c.city"
        ),
    ];
    for (pushed, by_rows) in tests {
        for shape in &shapes {
            let got = sql(&shape.replace("{t}", pushed));
            let want = sql(&shape.replace("{t}", by_rows));
            assert_eq!(got, want, "{shape} with {pushed}");
            let none = pushed.contains("no such type");
            assert!(none || !want.is_empty(), "{shape} with {pushed}");
        }
    }
    // Not vacuous: some tests keep rows, some not all.
    let count = |t: &str| sql(&format!("SELECT count(*) FROM events WHERE {t}"))[0].clone();
    let all = count("true");
    let purchases = count("type = 'purchase'");
    assert!(purchases != "0" && purchases != all, "{purchases} of {all}");
    // The plan reads byte ranges of the files and filters nothing.
    let plan = sql("EXPLAIN SELECT count(*) FROM events WHERE type IN ('purchase', 'email_click')")
        .join("\n");
    assert!(!plan.contains("FilterExec"), "{plan}");
    assert!(!plan.contains("predicate="), "{plan}");

    // A base without events answers them too.
    let empty = tempfile::tempdir().unwrap();
    segments(empty.path()).arg("init").assert().success();
    for (pushed, _) in tests {
        let q = format!("SELECT count(*) FROM events WHERE {pushed}");
        assert_eq!(csv_rows(empty.path(), &q), vec!["0"], "{q}");
    }
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

/// A `segments serve` process, stopped when dropped.
struct Server {
    child: std::process::Child,
    port: u16,
}

impl Server {
    fn start(base: &std::path::Path, password: &str) -> Server {
        let (child, port) = super::common::serve(base, password, &["--pg", "127.0.0.1:0"]);
        Server { child, port }
    }

    /// Run psql (unaligned, tuples only, stop on error).
    fn psql(&self, password: &str, sql: &str) -> std::process::Output {
        self.psql_session(password, &[sql])
    }

    /// Run statements in one psql session (unaligned, tuples only), stopping
    /// at the first error, with SQLSTATEs in messages.
    fn psql_session(&self, password: &str, statements: &[&str]) -> std::process::Output {
        let mut cmd = self.psql_command(password);
        for s in statements {
            cmd.args(["-c", s]);
        }
        cmd.output().unwrap()
    }

    /// psql connected to the server (unaligned, tuples only, stop on
    /// error, SQLSTATEs in messages), statements still to give.
    fn psql_command(&self, password: &str) -> std::process::Command {
        let psql = ["/usr/bin/psql", "/usr/local/bin/psql"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("psql not found: install the postgresql-client package (.ci/run does)");
        let mut cmd = std::process::Command::new(psql);
        cmd.args(["-h", "127.0.0.1", "-U", "segments", "-d", "segments"])
            .args(["-p", &self.port.to_string()])
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-v",
                "VERBOSITY=verbose",
            ])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "20");
        cmd
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

/// The standard output of a client program of `tests/clients`: `program`
/// with its options `before`, the client's file, then `args`. The client's
/// standard error is shown when it fails.
fn run_client(program: &str, before: &[&str], client: &str, args: &[&str]) -> Vec<u8> {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(client);
    let out = std::process::Command::new(program)
        .args(before)
        .arg(&file)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is needed for {client} (.ci/run installs it): {e}"));
    assert!(
        out.status.success(),
        "{client}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A BI client built on SQLAlchemy 2 and psycopg 3 (as Superset is) against
/// `segments serve`: it reads the version as PostgreSQL's, lists tables,
/// views and their columns with types, opens and rolls back a savepoint,
/// and reads a query with a bound parameter into pandas, with the rows of
/// `segments sql`.
#[test]
fn sqlalchemy_and_pandas_inspect_and_read_over_the_postgresql_protocol() {
    super::common::require_python(
        "sqlalchemy, psycopg, pandas",
        "sqlalchemy 'psycopg[binary]' pandas",
    );
    let dir = small_base();
    let b = dir.path();
    let server = Server::start(b, "s3cret pass");
    let out = run_client(
        "python3",
        &[],
        "sqlalchemy_client.py",
        &[&server.port.to_string(), "s3cret pass"],
    );
    let seen: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(seen["server_version_info"], serde_json::json!([16, 6]));
    assert!(
        seen["version"]
            .as_str()
            .unwrap()
            .starts_with("PostgreSQL 16.6 (segments "),
        "{seen}"
    );
    assert_eq!(seen["current_user"], "segments");
    assert_eq!(seen["after_savepoint"], 6);
    assert_eq!(
        seen["tables"],
        serde_json::json!([
            "contacts",
            "events",
            "imports",
            "segment_members",
            "segments"
        ])
    );
    assert_eq!(seen["views"], serde_json::json!([]));
    let header = std::fs::read_to_string(testdata("small/contacts.csv")).unwrap();
    let header: Vec<&str> = header.lines().next().unwrap().split(',').collect();
    let columns: Vec<(String, String)> = seen["columns"]["contacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c[0].as_str().unwrap().into(), c[1].as_str().unwrap().into()))
        .collect();
    assert_eq!(
        columns.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
        header
    );
    let type_of = |name: &str| columns.iter().find(|c| c.0 == name).unwrap().1.clone();
    assert_eq!(
        [
            type_of("city"),
            type_of("email_optin"),
            type_of("birth_date")
        ],
        ["TEXT", "BOOLEAN", "DATE"]
    );
    for t in ["events", "segments", "segment_members", "imports"] {
        assert!(!seen["columns"][t].as_array().unwrap().is_empty(), "{t}");
    }
    let expected: Vec<Value> = String::from_utf8(
        segments(b)
            .args([
                "sql",
                "--format",
                "csv",
                "SELECT contact_id, city FROM contacts WHERE score > 100 ORDER BY contact_id",
            ])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone(),
    )
    .unwrap()
    .lines()
    .skip(1)
    .map(|l| {
        let (id, city) = l.split_once(',').unwrap();
        serde_json::json!([id.parse::<u64>().unwrap(), city])
    })
    .collect();
    assert!(expected.len() >= 3, "{expected:?}");
    assert_eq!(seen["rows"], Value::Array(expected));
    assert!(
        seen["timeout"]
            .as_str()
            .unwrap()
            .contains("canceling statement due to statement timeout"),
        "{seen}"
    );
    assert_eq!(seen["after_timeout"], 6);
}

/// A base of 2,000 generated contacts and their segments, computed.
fn generated_base() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    segments(dir.path())
        .args(["gen", "--contacts", "2000", "--events-per-contact", "5"])
        .args(["--as-of", AS_OF])
        .assert()
        .success();
    dir
}

/// Over the PostgreSQL protocol, the rows of an `ORDER BY` come in its
/// order, also when the plan reads several partitions (the node that
/// times statements sits at the root of every plan), in a join of the
/// catalog as JDBC's `getTables` writes it, and `EXPLAIN` answers.
#[test]
fn psql_gets_rows_in_the_order_asked_and_explains() {
    let dir = generated_base();
    let b = dir.path();
    let server = Server::start(b, "pw");
    let lines = |out: std::process::Output| -> Vec<String> {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    };
    for query in [
        "SELECT contact_id FROM contacts ORDER BY contact_id DESC",
        "SELECT contact_id, count(*) AS n FROM events GROUP BY contact_id ORDER BY n DESC, contact_id",
    ] {
        let expected: Vec<String> = stdout_of(segments(b).args(["sql", "--format", "csv", query]))
            .lines()
            .skip(1)
            .map(|l| l.replace(',', "|"))
            .collect();
        assert!(expected.len() > 1000, "{query}");
        assert_eq!(lines(server.psql("pw", query)), expected, "{query}");
    }
    let tables = lines(server.psql(
        "pw",
        "SELECT n.nspname AS TABLE_SCHEM, c.relname AS TABLE_NAME \
         FROM pg_catalog.pg_namespace n, pg_catalog.pg_class c \
         WHERE c.relnamespace = n.oid AND n.nspname = 'public' ORDER BY TABLE_SCHEM, TABLE_NAME",
    ));
    assert_eq!(
        tables,
        [
            "public|contacts",
            "public|events",
            "public|imports",
            "public|segment_members",
            "public|segments"
        ]
    );
    let plan = lines(server.psql("pw", "EXPLAIN SELECT count(*) FROM contacts")).join("\n");
    assert!(plan.contains("physical_plan"), "{plan}");
}

/// JDBC, what DBeaver and Metabase use (Debian's `libpostgresql-jdbc-java`
/// run by the JDK's `java`): product and version, the tables in order and
/// the columns of `contacts` with their types through `DatabaseMetaData`,
/// and prepared statements with bound parameters giving the rows of
/// `segments sql`.
#[test]
fn jdbc_reads_the_catalog_and_binds_parameters() {
    let jar = ["/usr/share/java/postgresql.jar"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect(
            "the PostgreSQL JDBC driver is needed: install libpostgresql-jdbc-java (.ci/run does)",
        );
    let dir = generated_base();
    let b = dir.path();
    let server = Server::start(b, "s3cret pass");
    let out = run_client(
        "java",
        &["-cp", jar],
        "JdbcClient.java",
        &[&server.port.to_string(), "s3cret pass", "email_subscribers"],
    );
    let text = String::from_utf8(out).unwrap();
    let facts = |kind: &str| -> Vec<Vec<String>> {
        text.lines()
            .filter_map(|l| l.strip_prefix(&format!("{kind}\t")))
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect()
    };
    assert_eq!(facts("product"), [["PostgreSQL", "16.6"]]);
    let tables: Vec<String> = facts("table").iter().map(|t| t.join(" ")).collect();
    assert_eq!(
        tables,
        [
            "public contacts TABLE",
            "public events TABLE",
            "public imports TABLE",
            "public segment_members TABLE",
            "public segments TABLE"
        ]
    );
    let columns = facts("column");
    let names: Vec<&str> = columns.iter().map(|c| c[0].as_str()).collect();
    let expected_names: Vec<String> =
        stdout_of(segments(b).args(["sql", "--format", "csv", "SELECT * FROM contacts LIMIT 1"]))
            .lines()
            .next()
            .unwrap()
            .split(',')
            .map(str::to_string)
            .collect();
    assert_eq!(names, expected_names);
    let type_of = |name: &str| {
        let c = columns.iter().find(|c| c[0] == name).unwrap();
        format!("{} {}", c[1], c[2])
    };
    // java.sql.Types: VARCHAR 12, BIT -7, DATE 91, TIMESTAMP 93, BIGINT -5.
    assert_eq!(
        [
            type_of("city"),
            type_of("email_optin"),
            type_of("birth_date"),
            type_of("created_at"),
            type_of("score")
        ],
        ["text 12", "bool -7", "date 91", "timestamptz 93", "int8 -5"]
    );
    let members = stdout_of(segments(b).args([
        "sql",
        "--format",
        "csv",
        "SELECT count(*) FROM contacts WHERE in_segment(contact_id, 'email_subscribers')",
    ]));
    let members = members.lines().nth(1).unwrap().to_string();
    assert_eq!(facts("members"), [[members.clone()]]);
    assert_ne!(members, "0");
    let ids: Vec<String> = facts("id").into_iter().map(|f| f[0].clone()).collect();
    let expected_ids: Vec<String> = stdout_of(segments(b).args([
        "sql",
        "--format",
        "csv",
        "SELECT contact_id FROM contacts WHERE score > 50 ORDER BY contact_id DESC",
    ]))
    .lines()
    .skip(1)
    .map(str::to_string)
    .collect();
    assert!(expected_ids.len() > 100, "{}", expected_ids.len());
    assert_eq!(ids, expected_ids);
}

/// `serve --statement-timeout`: a statement running longer is cancelled
/// with SQLSTATE 57014; `SET statement_timeout` changes it for the
/// connection, 0 turns it off; the connection goes on.
#[test]
fn statements_over_their_timeout_are_cancelled() {
    let dir = small_base();
    let b = dir.path();
    let (child, port) = super::common::serve(
        b,
        "pw",
        &["--pg", "127.0.0.1:0", "--statement-timeout", "1s"],
    );
    let server = Server { child, port };
    let long = "SELECT count(*) FROM generate_series(1, 5000000000)";
    let out = server.psql_session("pw", &[long]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("57014: canceling statement due to statement timeout"),
        "{err}"
    );
    let out = server.psql_session(
        "pw",
        &[
            "SHOW statement_timeout",
            "SET statement_timeout = '200ms'",
            "SHOW statement_timeout",
            "SET statement_timeout = 0",
            "SELECT count(*) FROM generate_series(1, 3000000)",
            "SET statement_timeout = '200ms'",
            long,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["1000ms", "SET", "200ms", "SET", "3000000", "SET"],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("57014"));
}

/// `serve --idle-timeout`: a connection of either protocol left waiting on
/// its client that long is closed, psql being told why (SQLSTATE 57P05);
/// a statement running longer is not waiting (its statement timeout ends
/// it); an HTTP connection that keeps asking stays open.
#[test]
fn idle_connections_are_closed() {
    use std::io::{Read, Write};
    use std::time::Duration;
    let dir = small_base();
    let (child, http, pg) = super::common::serve_both(
        dir.path(),
        "pw",
        &["--idle-timeout", "3s", "--statement-timeout", "6s"],
    );
    let server = Server { child, port: pg };

    let out = server.psql_session(
        "pw",
        &["SELECT count(*) FROM generate_series(1, 5000000000)"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("57014"), "{err}");

    let mut psql = server
        .psql_command("pw")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = psql.stdin.take().unwrap();
    input.write_all(b"SELECT 41 + 1;\n").unwrap();
    std::thread::sleep(Duration::from_millis(6000));
    let _ = input.write_all(b"SELECT 7;\n");
    drop(input);
    let out = psql.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42", "{err}");
    assert!(
        err.contains("57P05: terminating connection due to idle-session timeout"),
        "{err}"
    );

    // HTTP: three requests, each within the idle time of the last answer
    // though the last comes well after it has passed since connecting.
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let request = b"GET /api/segments HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let mut seen = String::new();
    for n in 1..=3 {
        socket.write_all(request).unwrap();
        while seen.matches("HTTP/1.1 401").count() < n || !seen.ends_with('}') {
            let mut chunk = [0u8; 4096];
            let got = socket.read(&mut chunk).unwrap();
            assert!(got > 0, "closed after {} answers: {seen}", n - 1);
            seen.push_str(&String::from_utf8_lossy(&chunk[..got]));
        }
        std::thread::sleep(Duration::from_millis(1200));
    }
    // Then nothing: the server closes it.
    let mut chunk = [0u8; 64];
    assert_eq!(socket.read(&mut chunk).unwrap(), 0);
}

/// `serve --tls-cert --tls-key`: psql connects with `sslmode=verify-full`
/// and curl with the certificate as its authority, the session cookie is
/// `Secure`; plain connections are refused; without a certificate
/// `sslmode=require` is refused; a key that is not one stops the server
/// with the file named.
#[test]
fn serve_speaks_tls_over_both_protocols() {
    let dir = small_base();
    let b = dir.path();
    let keys = tempfile::tempdir().unwrap();
    let (cert, key) = (keys.path().join("cert.pem"), keys.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost", "-addext"])
        .arg("subjectAltName=DNS:localhost,IP:127.0.0.1")
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is needed (.ci/run installs it)");
    assert!(made.status.success(), "{made:?}");
    let (cert_s, key_s) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let tls = ["--tls-cert", cert_s, "--tls-key", key_s];

    let (child, port) =
        super::common::serve(b, "pw", &[&["--pg", "127.0.0.1:0"][..], &tls].concat());
    let server = Server { child, port };
    let psql = |sslmode: &str, sql: &str| {
        std::process::Command::new("psql")
            .arg(format!(
                "host=localhost port={port} user=segments dbname=segments sslmode={sslmode} sslrootcert={cert_s}"
            ))
            .args(["-X", "-A", "-t", "-c", sql])
            .env("PGPASSWORD", "pw")
            .env("PGCONNECT_TIMEOUT", "20")
            .output()
            .unwrap()
    };
    let out = psql("verify-full", "\\conninfo");
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(
        info.contains("SSL connection (protocol: TLSv1."),
        "{info} {out:?}"
    );
    let out = psql("verify-full", "SELECT count(*) FROM contacts");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "6");
    let out = psql("disable", "SELECT 1");
    assert!(!out.status.success(), "a plain connection was served");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("accepts TLS connections only"),
        "{out:?}"
    );
    drop(server);

    let (child, port) =
        super::common::serve(b, "pw", &[&["--http", "127.0.0.1:0"][..], &tls].concat());
    let server = Server { child, port };
    let curl = |url: &str| {
        std::process::Command::new("curl")
            .args(["-s", "-S", "-i", "--cacert", cert_s, "-u", "segments:pw"])
            .args(["-H", "content-type: application/json"])
            .args(["-d", r#"{"user": "segments", "password": "pw"}"#])
            .arg(url)
            .output()
            .expect("curl is needed (.ci/run installs it)")
    };
    let out = curl(&format!("https://localhost:{port}/api/login"));
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer} {out:?}");
    let cookie = answer
        .lines()
        .find(|l| l.to_lowercase().starts_with("set-cookie:"))
        .unwrap_or_default();
    assert!(
        cookie.contains("HttpOnly") && cookie.ends_with("; Secure"),
        "{cookie}"
    );
    let out = curl(&format!("http://localhost:{port}/api/login"));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("200 OK"),
        "plain HTTP was served"
    );
    drop(server);

    // Without a certificate, TLS is refused; a bad key stops the server.
    let plain = Server::start(b, "pw");
    let out = std::process::Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user=segments dbname=segments sslmode=require",
            plain.port
        ))
        .args(["-X", "-c", "SELECT 1"])
        .env("PGPASSWORD", "pw")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not support SSL"),
        "{out:?}"
    );
    let out = segments(b)
        .env("SEGMENTS_PASSWORD", "pw")
        .args([
            "serve",
            "--pg",
            "127.0.0.1:0",
            "--tls-cert",
            cert_s,
            "--tls-key",
            cert_s,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(cert_s) && err.contains("private key"), "{err}");
}

/// A server that ran a large query gives the memory back: its resident
/// size returns near where it was, instead of staying at the query's peak.
#[test]
fn serve_gives_memory_back_after_a_large_query() {
    let dir = small_base();
    let server = Server::start(dir.path(), "pw");
    let status = |field: &str| -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
        text.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap()
            / 1024
    };
    let before = status("VmRSS:");
    // A sort of 3M rows of ~50 bytes.
    let out = server.psql(
        "pw",
        "SELECT count(*) FROM (SELECT value, concat('x', value, repeat('y', 40)) AS s \
         FROM generate_series(1, 3000000) ORDER BY s DESC, value LIMIT 2999999)",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "2999999",
        "{out:?}"
    );
    let peak = status("VmHWM:");
    assert!(
        peak > before + 300,
        "the query peaked at {peak} MiB from {before} MiB"
    );
    let mut now = status("VmRSS:");
    for _ in 0..60 {
        if now < before + 150 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        now = status("VmRSS:");
    }
    assert!(
        now < before + 150,
        "resident {now} MiB after a peak of {peak} MiB, {before} MiB before"
    );
}
