//! Importing a file into a base as one action: the import, then the
//! segments it changes, published together as one version.

use std::path::PathBuf;

use chrono::{DateTime, Utc};

use crate::base::Base;
use crate::base::contacts::{ImportOptions, import_contacts};
use crate::base::events::{EventImportOptions, compact_months, import_events, months_over};
use crate::base::imports::ImportReport;
use crate::error::Result;
use crate::jobs::recompute::{RunReport, after_import};

/// A file to import, and how.
pub enum ImportFile {
    /// Contacts, upserted by `contact_id`.
    Contacts {
        file: PathBuf,
        options: ImportOptions,
    },
    /// Events, appended.
    Events {
        file: PathBuf,
        options: EventImportOptions,
    },
}

/// Import a file, then recompute the active segments as of `as_of` (None:
/// the moment the file has been read) in the same version (below the base's auto-refresh threshold; above it they
/// are marked for refresh, and the report is None). `command` names the
/// writer to a second one. On any error nothing is published.
pub async fn import(
    base: &Base,
    command: &str,
    what: &ImportFile,
    as_of: Option<DateTime<Utc>>,
) -> Result<(ImportReport, Option<RunReport>)> {
    let (out, _) = crate::jobs::change(base, command, async |w| {
        let report = match what {
            ImportFile::Contacts { file, options } => import_contacts(w, file, options)?,
            ImportFile::Events { file, options } => {
                let report = import_events(w, file, options)?;
                // Months that imports have cut into many files are merged.
                let crowded = months_over(&w.next.events, w.base.config.compact_after_files);
                compact_months(w, &crowded)?;
                report
            }
        };
        let refreshed = after_import(w, as_of.unwrap_or_else(Utc::now)).await?;
        Ok((report, refreshed))
    })
    .await?;
    Ok(out)
}
