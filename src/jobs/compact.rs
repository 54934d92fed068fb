//! Compaction as one action: the months of events that imports have cut
//! into several files are merged, one file a month, in one version; files
//! of the older layout (by contact) are rewritten by type; a contacts file
//! without its indexes (written by an earlier version, or its index of ids
//! damaged) gets them.

use std::path::Path;

use crate::base::Base;
use crate::base::events::{MonthCompaction, compact_months, months_to_rewrite};
use crate::base::manifest::Manifest;
use crate::base::store::map_checked;
use crate::error::Result;

/// What a compaction rewrote.
#[derive(Debug, Default)]
pub struct Compaction {
    /// The months of events rewritten.
    pub months: Vec<MonthCompaction>,
    /// Whether the indexes of the contacts file were written.
    pub indexed: bool,
}

impl Compaction {
    pub fn is_empty(&self) -> bool {
        self.months.is_empty() && !self.indexed
    }
}

/// Whether the contacts file lacks an index of its own ids (or has one
/// damaged: it is written without waiting for the disk), or has indexes of
/// an earlier contacts file.
fn unindexed(dir: &Path, m: &Manifest) -> bool {
    let Some(contacts) = &m.contacts else {
        return false;
    };
    m.contact_ids
        .as_ref()
        .is_none_or(|i| i.of != contacts.path || map_checked(dir, &i.file).is_err())
        || m.contact_times.iter().any(|t| t.of != contacts.path)
}

/// Merge the files of every month holding more than `max_files` files (one
/// at least) into one, rewrite by type the months with a file of the older
/// layout, and index a contacts file without its indexes; what every query
/// answers is unchanged. With nothing to do, nothing is published.
pub async fn compact(base: &Base, command: &str, max_files: usize) -> Result<Compaction> {
    // A look first, so that a base with nothing to merge is not written;
    // the snapshot is let go before writing, so that its files can be
    // collected once the new version is published.
    let wanted = {
        let snap = base.snapshot()?;
        let m = &snap.manifest;
        !months_to_rewrite(snap.dir(), &m.events, max_files).is_empty() || unindexed(snap.dir(), m)
    };
    if !wanted {
        return Ok(Compaction::default());
    }
    let (done, _) = crate::jobs::change(base, command, async |w| {
        let months = months_to_rewrite(w.dir(), &w.next.events, max_files);
        let months = compact_months(w, &months)?;
        let indexed = unindexed(w.dir(), &w.next);
        if indexed {
            crate::base::times::index_contacts(w)?;
        }
        Ok(Compaction { months, indexed })
    })
    .await?;
    Ok(done)
}
