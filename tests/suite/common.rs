//! Shared helpers: temporary bases, files, and evaluation shortcuts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use segments::base::Base;
use segments::base::config::Config;
use segments::base::contacts::{ImportOptions, import_contacts};
use segments::base::events::{EventImportOptions, import_events};
use segments::base::schema::FieldType;
use segments::compile::expr::Clock;
use segments::criteria::Criterion;
use segments::engine::Session;
use segments::jobs::recompute::compute;
use segments::jobs::segments::contact_ids_of;

pub struct TestBase {
    pub dir: tempfile::TempDir,
    pub base: Base,
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

pub fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("rfc3339")
        .with_timezone(&Utc)
}

/// A base with a time zone and declared fields (choice `loyalty`, tags `interests`).
pub fn new_base(tz: &str) -> TestBase {
    new_base_with(tz, 200)
}

/// Same, with an auto-refresh threshold.
pub fn new_base_with(tz: &str, threshold: usize) -> TestBase {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fields = BTreeMap::new();
    fields.insert(
        "loyalty".to_string(),
        FieldType::Choice {
            values: vec!["bronze".into(), "silver".into(), "gold".into()],
        },
    );
    fields.insert("interests".to_string(), FieldType::Tags);
    let config = Config {
        time_zone: tz.into(),
        fields,
        auto_refresh_threshold: threshold,
        ..Config::default()
    };
    let base = segments::jobs::init(dir.path(), config).expect("init");
    TestBase { dir, base }
}

impl TestBase {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join("input").join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        p
    }

    pub fn import_contacts(&self, name: &str, csv: &str) -> segments::Result<()> {
        let f = self.file(&format!("{name}.csv"), csv);
        let mut w = self.base.writer("test import contacts")?;
        import_contacts(
            &mut w,
            &f,
            &ImportOptions {
                name: Some(name.into()),
                overwrite_empty: false,
            },
        )?;
        rt().block_on(segments::jobs::recompute::after_import(&mut w, Utc::now()))?;
        w.commit()?;
        Ok(())
    }

    pub fn import_events(&self, name: &str, csv: &str) -> segments::Result<()> {
        let f = self.file(&format!("{name}.csv"), csv);
        let mut w = self.base.writer("test import events")?;
        import_events(
            &mut w,
            &f,
            &EventImportOptions {
                name: Some(name.into()),
                skip_unknown: false,
            },
        )?;
        rt().block_on(segments::jobs::recompute::after_import(&mut w, Utc::now()))?;
        w.commit()?;
        Ok(())
    }

    /// Evaluate criteria (JSON) and return the sorted contact ids.
    pub fn eval(
        &self,
        criteria: &serde_json::Value,
        as_of: DateTime<Utc>,
    ) -> Result<Vec<u64>, String> {
        let c = Criterion::parse(criteria, "criteria").map_err(|e| e.to_string())?;
        let snap = self.base.snapshot().map_err(|e| e.to_string())?;
        let cat = segments::jobs::ManifestCatalog {
            manifest: &snap.manifest,
            config: &snap.base.config,
        };
        segments::criteria::validate::validate(&c, "criteria", &cat).map_err(|e| e.to_string())?;
        let session = Session::new(&snap.base, snap.manifest.clone()).map_err(|e| e.to_string())?;
        let clock = Clock::new(as_of, snap.base.tz());
        let targets = vec![("t".to_string(), "t".to_string(), c)];
        let comp = rt().block_on(compute(
            &session,
            &snap.manifest,
            snap.dir(),
            &clock,
            &targets,
        ));
        let bm = comp["t"].clone().map_err(|e| e.to_string())?;
        let iids: Vec<u32> = bm.iter().collect();
        let mut ids =
            contact_ids_of(snap.dir(), &snap.manifest, &iids).map_err(|e| e.to_string())?;
        ids.sort_unstable();
        Ok(ids)
    }
}

/// Copy a base directory (as it is on disk) to a new path.
/// A recompute of every active segment at `as_of`, committed: its report
/// and the manifest it published.
pub fn recompute_committed(
    base: &Base,
    rt: &tokio::runtime::Runtime,
    as_of: DateTime<Utc>,
    fresh: segments::jobs::recompute::Fresh,
) -> (
    segments::jobs::recompute::RunReport,
    segments::base::manifest::Manifest,
) {
    let mut w = base.writer("test").expect("writer");
    let report = rt
        .block_on(segments::jobs::recompute::recompute(&mut w, as_of, fresh))
        .expect("recompute");
    let m = w.commit().expect("commit");
    (report, m)
}

pub fn copy_base(from: &Path, to: &Path) {
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(ok.success(), "cp -a {} {}", from.display(), to.display());
}

/// One whole run of a writing command on a copy of a base: the state it
/// leaves, how long it took, and its durable steps in order (from
/// `SEGMENTS_STEP_LOG`).
pub struct Probe {
    pub dir: PathBuf,
    pub took: std::time::Duration,
    pub steps: Vec<(u32, String)>,
}

impl Probe {
    /// Run `segments ARGS` to the end on a copy of `template` at `dir`.
    pub fn run(template: &Path, dir: &Path, args: &[&str]) -> Probe {
        copy_base(template, dir);
        let log = dir.with_extension("steps");
        let t0 = std::time::Instant::now();
        succeeded(
            std::process::Command::new(assert_cmd::cargo::cargo_bin("segments"))
                .env("SEGMENTS_BASE", dir)
                .env("SEGMENTS_STEP_LOG", &log)
                .args(args)
                .output()
                .unwrap(),
        );
        let took = t0.elapsed();
        let steps = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| {
                let (n, what) = l.split_once(' ').unwrap();
                (n.parse().unwrap(), what.to_string())
            })
            .collect();
        Probe {
            dir: dir.to_path_buf(),
            took,
            steps,
        }
    }

    /// The step that renames the last manifest into place (the new version
    /// is published there), and the step before it (written, not published).
    pub fn publish_steps(&self) -> (u32, u32) {
        let published = self
            .steps
            .iter()
            .rev()
            .find(|(_, w)| w.starts_with("renamed into") && w.contains("/manifests/"))
            .unwrap_or_else(|| panic!("no manifest published in {:?}", self.steps))
            .0;
        (published - 1, published)
    }
}

/// What a killed writer left: the state before its command or after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Old,
    New,
}

/// What [`kill_rounds`] did.
#[derive(Debug, Default)]
pub struct Kills {
    /// Writers killed by SIGKILL while they held the lock, at random points.
    pub killed: u32,
    /// Writers that finished before their kill came.
    pub finished: u32,
    /// Random kills that left the old state, and the new one.
    pub saw_old: u32,
    pub saw_new: u32,
}

/// Run `segments ARGS` on fresh copies of `template` under `scratch` and
/// SIGKILL it at random points after it took the writer lock (read from
/// `LOCK`), spread over one run's time, until `wanted` kills landed while it
/// ran. Then twice more, held at the steps of [`Probe::publish_steps`]:
/// killed just before its manifest is renamed into place, it must leave
/// the old state; just after, the new one. `check` sees each killed base
/// and says which state it holds (and may run more commands on it); then
/// the copy is removed.
pub fn kill_rounds(
    template: &Path,
    scratch: &Path,
    args: &[&str],
    probe: &Probe,
    wanted: u32,
    mut check: impl FnMut(u32, &Path) -> Seen,
) -> Kills {
    use rand::{Rng, SeedableRng};
    use std::os::unix::process::ExitStatusExt;
    let seed: u64 = std::env::var("KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!(
        "kill rounds of `segments {}`: KILL_SEED={seed}",
        args.join(" ")
    );
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let bin = assert_cmd::cargo::cargo_bin("segments");
    let spawn = |dir: &Path, env: &[(&str, &Path)]| {
        let mut c = std::process::Command::new(&bin);
        c.env("SEGMENTS_BASE", dir)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        c.spawn().unwrap()
    };
    let mut kills = Kills::default();
    let mut k = 0u32;
    while kills.killed < wanted {
        k += 1;
        assert!(
            k <= 4 * wanted,
            "only {} of {k} kills landed in a run",
            kills.killed
        );
        let dir = scratch.join(format!("round-{k}"));
        copy_base(template, &dir);
        let mut child = spawn(&dir, &[]);
        // The claim in LOCK names the writer once it holds the lock.
        let claim = format!("\"pid\":{}", child.id());
        let holds = |dir: &Path| {
            std::fs::read_to_string(dir.join("LOCK")).is_ok_and(|t| t.contains(&claim))
        };
        while !holds(&dir) && child.try_wait().unwrap().is_none() {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        std::thread::sleep(probe.took.mul_f64(rng.random::<f64>()));
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        if status.success() {
            kills.finished += 1;
        } else {
            assert_eq!(
                status.signal(),
                Some(libc::SIGKILL),
                "round {k}: the writer failed by itself ({status})"
            );
            kills.killed += 1;
            match check(k, &dir) {
                Seen::Old => kills.saw_old += 1,
                Seen::New => kills.saw_new += 1,
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let (written, published) = probe.publish_steps();
    for (step, want) in [(written, Seen::Old), (published, Seen::New)] {
        k += 1;
        let dir = scratch.join(format!("round-{k}"));
        copy_base(template, &dir);
        let pause = scratch.join(format!("pause-{k}"));
        let mut child = spawn(
            &dir,
            &[
                ("SEGMENTS_PAUSE_AT", Path::new(&step.to_string())),
                ("SEGMENTS_PAUSE_FILE", &pause),
            ],
        );
        let held = wait_for_pause(&mut child, &pause);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(check(k, &dir), want, "killed while held at step {held}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
    kills
}

/// Wait until a writer started with `SEGMENTS_PAUSE_AT` is held at a step
/// (it wrote `pause`), and return what it said of the step.
pub fn wait_for_pause(child: &mut std::process::Child, pause: &Path) -> String {
    let t0 = std::time::Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(pause) {
            return text;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the writer ended ({status}) before its pause at {}",
                pause.display()
            );
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(300),
            "the writer never reached its pause"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The output of a command that must succeed (failing with its standard
/// error otherwise).
pub fn succeeded(out: std::process::Output) -> std::process::Output {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Start `segments serve ARGS` on a base with a password, and read the
/// port it listens on from the first line it prints (`... on
/// [http://]127.0.0.1:PORT...`). The rest of its standard error is read
/// and dropped, so that the server never writes to a closed pipe.
pub fn serve(base: &Path, password: &str, args: &[&str]) -> (std::process::Child, u16) {
    let (child, ports) = serve_lines(base, password, args, 1);
    (child, ports[0])
}

/// `segments serve` on both protocols (ports chosen by the system), with
/// `more` arguments: the process, its HTTP port and its PostgreSQL port.
pub fn serve_both(base: &Path, password: &str, more: &[&str]) -> (std::process::Child, u16, u16) {
    let mut args = vec!["--http", "127.0.0.1:0", "--pg", "127.0.0.1:0"];
    args.extend_from_slice(more);
    let (child, ports) = serve_lines(base, password, &args, 2);
    (child, ports[0], ports[1])
}

/// Start `segments serve` and read the port of each of its first `lines`
/// lines (HTTP first when there are two).
fn serve_lines(
    base: &Path,
    password: &str,
    args: &[&str],
    lines: usize,
) -> (std::process::Child, Vec<u16>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_segments"))
        .env("SEGMENTS_BASE", base)
        .env("SEGMENTS_PASSWORD", password)
        .env_remove("SEGMENTS_USER")
        .arg("serve")
        .args(args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut found: Vec<(bool, u16)> = Vec::new();
    for _ in 0..lines {
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        let port = line
            .split("127.0.0.1:")
            .nth(1)
            .map(|r| {
                r.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
            })
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        found.push((line.contains("PostgreSQL protocol"), port));
    }
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    found.sort();
    (child, found.into_iter().map(|(_, p)| p).collect())
}

/// Another process's writer holding a base: `segment pause sms_contacts`,
/// held at its first durable step until released.
pub struct HeldWriter {
    child: std::process::Child,
    pause: PathBuf,
    _scratch: tempfile::TempDir,
}

impl HeldWriter {
    pub fn start(base: &Path) -> HeldWriter {
        let scratch = tempfile::tempdir().unwrap();
        let pause = scratch.path().join("pause");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_segments"))
            .env("SEGMENTS_BASE", base)
            .env("SEGMENTS_PAUSE_AT", "1")
            .env("SEGMENTS_PAUSE_FILE", &pause)
            .args(["segment", "pause", "sms_contacts"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_for_pause(&mut child, &pause);
        HeldWriter {
            child,
            pause,
            _scratch: scratch,
        }
    }

    /// Let it go on after `after`; the thread answers its exit status.
    pub fn release_after(
        self,
        after: std::time::Duration,
    ) -> std::thread::JoinHandle<std::process::ExitStatus> {
        let HeldWriter {
            mut child,
            pause,
            _scratch: scratch,
        } = self;
        std::thread::spawn(move || {
            std::thread::sleep(after);
            std::fs::remove_file(&pause).unwrap();
            let status = child.wait().unwrap();
            drop(scratch);
            status
        })
    }
}

/// Every file of a base with its contents, but for the test's own input
/// files and the pins of this process's readers (the lock is empty between
/// writers).
pub fn base_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(p: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(p).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path().to_string_lossy().to_string());
            }
        }
        out
    }
    let mut out = Vec::new();
    for entry in walk(dir) {
        if !entry.contains("/input/") && !entry.contains("/readers/") {
            let bytes = std::fs::read(&entry).unwrap();
            out.push((entry, bytes));
        }
    }
    out.sort();
    out
}

/// Fail unless python3 imports `modules` (`.ci/run` installs them with pip).
pub fn require_python(modules: &str, pip: &str) {
    let ready = std::process::Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ready,
        "python3 with {modules} is needed: python3 -m pip install {pip} (.ci/run does)"
    );
}
