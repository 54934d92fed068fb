//! Shared helpers: temporary bases, files, and evaluation shortcuts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use segments::base::Base;
use segments::base::config::Config;
use segments::base::contacts::{ImportOptions, import_contacts};
use segments::base::events::{EventImportOptions, import_events};
use segments::base::schema::FieldType;
use segments::compile::Session;
use segments::compile::expr::Clock;
use segments::criteria::Criterion;
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
        let bm = comp.results["t"].clone()?;
        let iids: Vec<u32> = bm.iter().collect();
        let mut ids =
            contact_ids_of(snap.dir(), &snap.manifest, &iids).map_err(|e| e.to_string())?;
        ids.sort_unstable();
        Ok(ids)
    }
}

/// Copy a base directory (as it is on disk) to a new path.
pub fn copy_base(from: &Path, to: &Path) {
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(ok.success(), "cp -a {} {}", from.display(), to.display());
}

/// Run `segments ARGS` on fresh copies of `template` under `scratch` and
/// SIGKILL it at points spread over `full` (one run's time), until at least
/// 20 kills landed inside a run (a loaded machine runs slower). `check` sees
/// each killed base, then the copy is removed. Returns (kills, runs that finished first).
pub fn kill_rounds(
    template: &Path,
    scratch: &Path,
    args: &[&str],
    full: std::time::Duration,
    mut check: impl FnMut(u32, &Path),
) -> (u32, u32) {
    let bin = assert_cmd::cargo::cargo_bin("segments");
    let (mut killed, mut finished, mut k) = (0u32, 0u32, 0u32);
    while killed < 20 && k < 80 {
        k += 1;
        let dir = scratch.join(format!("round-{k}"));
        copy_base(template, &dir);
        let mut child = std::process::Command::new(&bin)
            .env("SEGMENTS_BASE", &dir)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(full.mul_f64((k % 24) as f64 / 24.0));
        let _ = child.kill(); // SIGKILL
        if child.wait().unwrap().success() {
            finished += 1;
        } else {
            killed += 1;
        }
        check(k, &dir);
        std::fs::remove_dir_all(&dir).unwrap();
    }
    (killed, finished)
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
