//! Imports as the base remembers them: each has a name and id, and the
//! report of what it did.

use std::path::Path;

use chrono::Utc;

use crate::base::manifest::Manifest;
use crate::error::{Error, Result};

/// What an import did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportReport {
    pub id: String,
    pub name: String,
    pub file: String,
    pub rows_added: u64,
    pub rows_updated: u64,
    pub rows_skipped: u64,
    pub new_fields: Vec<String>,
}

/// The id and name of a new import: the given name, or the file's stem and the time.
pub fn import_name(
    m: &Manifest,
    file: &Path,
    name: Option<&str>,
    now: chrono::DateTime<Utc>,
) -> Result<(String, String)> {
    let taken = |n: &str| m.imports.iter().any(|i| i.name == n);
    let name = match name {
        Some(n) if taken(n) => {
            return Err(Error::usage(format!(
                "an import named {n:?} already exists"
            )));
        }
        Some(n) => n.to_string(),
        None => {
            // Two imports of one file within a second get numbered names.
            let stem = format!(
                "{} {}",
                file.file_stem().unwrap_or_default().to_string_lossy(),
                now.format("%Y-%m-%d %H:%M:%S")
            );
            (1..)
                .map(|k| match k {
                    1 => stem.clone(),
                    _ => format!("{stem} ({k})"),
                })
                .find(|n| !taken(n))
                .expect("a free name")
        }
    };
    let mut id = crate::base::manifest::slug(&name);
    if m.imports.iter().any(|i| i.id == id) {
        id = format!("{id}-{}", m.imports.len() + 1);
    }
    Ok((id, name))
}
