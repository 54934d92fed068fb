//! Compaction as one action: the months of events that imports have cut
//! into several files are merged, one file a month, in one version; files
//! of the older layout (by contact) are rewritten by type.

use crate::base::Base;
use crate::base::events::{MonthCompaction, compact_months, months_to_rewrite};
use crate::error::Result;

/// Merge the files of every month holding more than `max_files` files (one
/// at least) into one, and rewrite by type the months with a file of the
/// older layout; what every query answers is unchanged. Returns the months
/// rewritten; with none, nothing is published.
pub async fn compact(base: &Base, command: &str, max_files: usize) -> Result<Vec<MonthCompaction>> {
    // A look first, so that a base with nothing to merge is not written;
    // the snapshot is let go before writing, so that its files can be
    // collected once the new version is published.
    let crowded = {
        let snap = base.snapshot()?;
        !months_to_rewrite(snap.dir(), &snap.manifest.events, max_files).is_empty()
    };
    if !crowded {
        return Ok(Vec::new());
    }
    let (merged, _) = crate::jobs::change(base, command, async |w| {
        let months = months_to_rewrite(w.dir(), &w.next.events, max_files);
        compact_months(w, &months)
    })
    .await?;
    Ok(merged)
}
