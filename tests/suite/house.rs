//! The layout of the library: its rooms depend on each other one way only,
//! so that each can be read, tested and changed knowing only those below.

use std::collections::BTreeSet;
use std::path::Path;

/// The rooms of `src/`, bottom first: each may use only itself and those
/// before it (lib.rs's doc says what each holds).
const ROOMS: &[&str] = &[
    "error", "base", "criteria", "engine", "compile", "jobs", "sql", "http", "synth", "bench",
];

fn rank(room: &str) -> Option<usize> {
    ROOMS.iter().position(|r| *r == room)
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The rooms a file names as `crate::ROOM`, comments left out.
fn uses(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            // `crate::{base::X, jobs::Y}` names several rooms.
            let paths: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group.split([',', '}']).map(str::trim).collect(),
                None => vec![rest],
            };
            for path in paths {
                let name: String = path
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if rank(&name).is_some() {
                    out.insert(name);
                }
            }
        }
    }
    out
}

#[test]
fn rooms_depend_on_the_rooms_below_them_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut checked = 0;
    let mut wrong = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let room = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        // The binary's command line is above every room; lib.rs lists them.
        let Some(own) = rank(&room) else {
            continue;
        };
        checked += 1;
        for used in uses(&std::fs::read_to_string(f).unwrap()) {
            if rank(&used).unwrap() > own {
                wrong.push(format!("{} uses crate::{used}", rel.display()));
            }
        }
    }
    assert!(checked > 40, "only {checked} files of the library read");
    assert!(
        wrong.is_empty(),
        "upward dependencies:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn an_upward_dependency_is_seen() {
    assert_eq!(
        uses(
            "use crate::jobs::init; // crate::sql\n/// [`crate::bench`]\nlet x = crate::base::Base::open(d);"
        ),
        ["base", "jobs"].iter().map(|s| s.to_string()).collect()
    );
}
