//! Contacts as one action: deletion everywhere (the right to be forgotten).

use std::path::Path;

use crate::base::Base;
use crate::base::contacts::delete_contacts;
use crate::base::ids::input_contact_ids;
use crate::base::input::InputTable;
use crate::error::Result;

/// Delete contacts, given by id and by a CSV or Parquet file of
/// `contact_id`s, from contacts, events, imports, every segment's members,
/// entry cohorts and history, in one version. Returns how many of them were
/// contacts of the base.
pub async fn delete(base: &Base, command: &str, ids: &[u64], file: Option<&Path>) -> Result<u64> {
    let mut all = ids.to_vec();
    if let Some(f) = file {
        all.extend(input_contact_ids(&InputTable::read(f)?)?);
    }
    let (n, _) = crate::jobs::change(base, command, async |w| delete_contacts(w, &all)).await?;
    Ok(n)
}
