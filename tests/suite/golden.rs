//! Golden files: outputs whose every change should show in review (the
//! plans of a recompute). `UPDATE_GOLDEN=1 cargo test golden` writes them
//! anew; never edit them by hand.

use std::path::{Path, PathBuf};

use assert_cmd::Command;

const AS_OF: &str = "2026-11-23T12:00:00Z";

fn testdata(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(p)
}

/// Compare `got` with the golden file `name`, or write it with `UPDATE_GOLDEN=1`.
fn golden(name: &str, got: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; write it with UPDATE_GOLDEN=1 cargo test golden",
            path.display()
        )
    });
    assert!(
        got == want,
        "{name} differs from its golden file (after a deliberate change: UPDATE_GOLDEN=1 cargo test golden, then review the diff):\n{got}"
    );
}

/// `recompute --dry-run` on the small base with the example segments: the
/// order of the segments, the shared leaves, and the plans of the scan of
/// contacts and of events.
#[test]
fn recompute_dry_run_matches_its_golden_file() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::cargo_bin("segments")
            .unwrap()
            .env("SEGMENTS_BASE", dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["init", "--time-zone", "Europe/Paris"]);
    for (kind, file) in [
        ("contacts", "small/contacts.csv"),
        ("events", "small/events.csv"),
    ] {
        let file = testdata(file).display().to_string();
        run(&["import", kind, &file, "--as-of", AS_OF]);
    }
    let mut examples: Vec<PathBuf> = std::fs::read_dir(testdata("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    examples.sort();
    for f in examples {
        // Segments on fields the small base lacks are refused: leave them out.
        let _ = Command::cargo_bin("segments")
            .unwrap()
            .env("SEGMENTS_BASE", dir.path())
            .args(["segment", "create"])
            .arg(&f)
            .args(["--as-of", AS_OF])
            .output()
            .unwrap();
    }
    let plan = run(&["recompute", "--dry-run", "--as-of", AS_OF, "--jobs", "2"]);
    assert!(plan.contains("pass 1, one scan of contacts"), "{plan}");
    golden("recompute-dry-run.txt", &plan);
}
