//! Integrity check of a base: the current manifest, every file it names
//! (present, same size and checksum), bitmaps that decode, members within
//! all contacts, statistics equal to cardinalities.

use roaring::RoaringBitmap;

use crate::base::Snapshot;
use crate::base::bitmaps::read_bitmap;
use crate::base::manifest::Manifest;
use crate::base::manifest::history_problems;
use crate::base::store::read_checked;
use crate::error::{Error, Result};

/// Problems found, each naming the file or segment; empty when the base is sound.
pub fn check(snap: &Snapshot) -> Result<Vec<String>> {
    let dir = snap.dir();
    let m = &snap.manifest;
    let mut problems = Vec::new();
    let kept: Vec<String> = m
        .leaves
        .iter()
        .flat_map(|l| {
            [
                Some(&l.bitmaps),
                Some(&l.keys),
                l.changes.as_ref(),
                l.latest.as_ref(),
            ]
        })
        .flatten()
        .map(|f| f.path.clone())
        .collect();
    let ids = m.contact_ids.as_ref().map(|i| &i.file.path);
    for f in m.files(dir)? {
        match read_checked(dir, &f) {
            Err(e) if kept.contains(&f.path) => problems.push(format!(
                "{e} (results kept for the next recompute, written without waiting \
                 for the disk: that run computes them again)"
            )),
            Err(e) if ids == Some(&f.path) => problems.push(format!(
                "{e} (the index of the contacts' ids, written without waiting for the \
                 disk: imports read the contacts file instead; `segments compact` \
                 writes it again)"
            )),
            Err(e) => problems.push(e.to_string()),
            Ok(_) => {}
        }
    }
    if !problems.is_empty() {
        return Ok(problems);
    }
    let all = match &m.all_contacts {
        Some(f) => read_bitmap(dir, f)?,
        None => RoaringBitmap::new(),
    };
    if all.len() != m.contact_count {
        problems.push(format!(
            "all-contacts bitmap has {} ids, manifest says {}",
            all.len(),
            m.contact_count
        ));
    }
    if let Some(f) = &m.contacts {
        match crate::base::ids::ContactIdMap::load(dir, m) {
            Ok(map) => {
                let ids: RoaringBitmap = map.iter().map(|(_, i)| i).collect();
                if ids != all || map.len() as u64 != all.len() {
                    problems.push(format!(
                        "{}: the id map does not match the all-contacts bitmap",
                        f.path
                    ));
                }
                if all.max().is_some_and(|x| x >= m.next_iid) {
                    problems.push("an internal id is at or above next_iid".into());
                }
                if let Some(index) = &m.contact_ids {
                    problems.extend(id_index_problems(dir, index, f, &map));
                }
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    for s in &m.segments {
        if s.members.is_none() {
            continue;
        }
        match crate::base::members::Members::load(dir, s) {
            Ok(m) => {
                let members = m.members;
                if !members.is_subset(&all) {
                    problems.push(format!("segment {}: members outside all contacts", s.id));
                }
                if let Some(st) = &s.stats
                    && st.contacts != members.len()
                {
                    problems.push(format!(
                        "segment {}: statistics say {} contacts, bitmap has {}",
                        s.id,
                        st.contacts,
                        members.len()
                    ));
                }
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    let tz = snap.base.tz();
    for s in &m.segments {
        match s.history.points(dir) {
            Ok(points) => {
                for p in history_problems(&points, snap.base.config.history_days, tz) {
                    problems.push(format!("segment {}: {p}", s.id));
                }
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    for i in &m.imports {
        if let Ok(b) = read_bitmap(dir, &i.contacts)
            && !b.is_subset(&all)
        {
            problems.push(format!("import {}: contacts outside all contacts", i.id));
        }
    }
    Ok(problems)
}

/// A read that failed inside the query engine does not say which file it
/// read. When the error comes from reading data (Parquet, Arrow, the
/// engine), name the first Parquet file of this version that is missing or
/// not the size its manifest says, and keep the engine's words after it;
/// any other error is returned as it is. Costs one `stat` per file, and
/// only on failure.
pub fn name_damaged_file(dir: &std::path::Path, m: &Manifest, e: Error) -> Error {
    if !matches!(
        e,
        Error::Engine(_) | Error::Parquet { .. } | Error::Arrow(_)
    ) {
        return e;
    }
    let files = m.contacts.iter().chain(m.events.iter().map(|f| &f.file));
    for f in files {
        let problem = match std::fs::metadata(dir.join(&f.path)) {
            Err(err) => format!("cannot be read ({err})"),
            Ok(md) if md.len() != f.bytes => {
                format!("has {} bytes where the manifest says {}", md.len(), f.bytes)
            }
            Ok(_) => continue,
        };
        return Error::base(
            dir,
            format!(
                "{} {problem}: the base is damaged (`segments check` names every damaged file); {e}",
                f.path
            ),
        );
    }
    e
}

/// Whether the index of the contacts' ids is of the contacts file and
/// holds its pairs, each once.
fn id_index_problems(
    dir: &std::path::Path,
    index: &crate::base::id_index::IdIndex,
    contacts: &crate::base::manifest::DataFile,
    map: &crate::base::ids::ContactIdMap,
) -> Option<String> {
    if index.of != contacts.path {
        return Some(format!(
            "{}: an index of the ids of {}, not of {}",
            index.file.path, index.of, contacts.path
        ));
    }
    let pairs = match crate::base::id_index::Opened::open(dir, index).and_then(|i| i.pairs()) {
        Ok(pairs) => pairs,
        Err(e) => return Some(e.to_string()),
    };
    let same = pairs.len() == map.len()
        && pairs.windows(2).all(|p| p[0].0 < p[1].0)
        && pairs.iter().all(|&(c, i)| map.get(c) == Some(i));
    (!same).then(|| {
        format!(
            "{}: the index of ids does not match {}",
            index.file.path, contacts.path
        )
    })
}
