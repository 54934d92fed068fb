//! Readers in other processes while a writer runs, held at chosen steps:
//! one snapshot whole, never a mix.

use serde_json::Value;

use super::cli::{AS_OF, segments};

/// The rows of `segments sql QUERY` on a base, as CSV.
fn sql_csv(base: &std::path::Path, query: &str) -> String {
    let out = super::common::succeeded(
        segments(base)
            .args(["sql", "--format", "csv", query])
            .output()
            .unwrap(),
    );
    String::from_utf8_lossy(&out.stdout).to_string()
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
    let read = |base: &std::path::Path| sql_csv(base, query);
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
        Reader::new(|b| sql_csv(b, quick), &base, &copy),
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
    let read = |base: &std::path::Path| sql_csv(base, query);
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
