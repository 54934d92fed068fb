//! The user-facing verbs over a base: init with the default segments,
//! segment lifecycle, the nightly recompute, audiences.

pub mod compact;
pub mod contacts;
pub mod export;
pub mod import;
pub mod recompute;
pub mod segments;
pub mod views;

use chrono::Utc;
use serde_json::json;

use crate::base::Base;
use crate::base::config::Config;
use crate::base::manifest::{History, Manifest, SegmentRecord, SegmentStatus};
use crate::base::schema::FieldType;
use crate::criteria::validate::Catalog;
use crate::error::Result;

/// The 11 default segments of the SPEC, as (id, name, criteria).
pub fn default_segments(config: &Config) -> Vec<(&'static str, &'static str, serde_json::Value)> {
    let not_empty = |f: &str| json!({"field": f, "op": "is_not_empty"});
    vec![
        ("all_contacts", "All contacts", json!({"all": []})),
        ("active_contacts", "Active contacts", config.activity_json()),
        (
            "inactive_contacts",
            "Inactive contacts",
            json!({"not": {"segment": "active_contacts"}}),
        ),
        ("email_contacts", "E-mail contacts", not_empty("email")),
        (
            "email_subscribers",
            "E-mail subscribers",
            json!({"all": [not_empty("email"), {"field": "email_optin", "op": "is_true"}]}),
        ),
        (
            "email_unsubscribed",
            "E-mail unsubscribed",
            json!({"all": [not_empty("email"), {"field": "email_optin", "op": "is_false"}]}),
        ),
        (
            "email_bad_addresses",
            "E-mail bad addresses",
            json!({"all": [not_empty("email"), {"field": "email_status", "op": "in",
                "value": ["hard_bounce", "bad_syntax", "bad_domain", "bad_alias"]}]}),
        ),
        ("sms_contacts", "SMS contacts", not_empty("phone")),
        (
            "sms_subscribers",
            "SMS subscribers",
            json!({"all": [not_empty("phone"), {"field": "sms_optin", "op": "is_true"}]}),
        ),
        (
            "sms_unsubscribed",
            "SMS unsubscribed",
            json!({"all": [not_empty("phone"), {"field": "sms_optin", "op": "is_false"}]}),
        ),
        (
            "sms_bad_numbers",
            "SMS bad numbers",
            json!({"all": [not_empty("phone"), {"field": "sms_status", "op": "in", "value": ["hard_bounce", "bad_number"]}]}),
        ),
    ]
}

/// One change to a base: take the writer lock as `command` (the name a
/// second writer is told), let `change` work on the next version, publish
/// it. When `change` fails nothing is published, and the files it wrote
/// are removed. Returns what `change` returned and the published manifest.
///
/// While another writer holds the lock, the change waits for it up to
/// `base.lock_wait`, then fails with [`crate::Error::Locked`].
pub async fn change<T>(
    base: &Base,
    command: &str,
    change: impl AsyncFnOnce(&mut crate::base::Writer) -> Result<T>,
) -> Result<(T, Manifest)> {
    let mut w = writer_within(base, command).await?;
    let out = change(&mut w).await?;
    let published = w.commit()?;
    Ok((out, published))
}

/// The writer lock, waited for up to `base.lock_wait`.
async fn writer_within(base: &Base, command: &str) -> Result<crate::base::Writer> {
    let deadline = base.lock_wait.map(|d| std::time::Instant::now() + d);
    loop {
        match base.writer(command) {
            Err(crate::Error::Locked { .. })
                if deadline.is_some_and(|d| std::time::Instant::now() < d) =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// Create a base with its configuration and the default segments.
pub fn init(dir: &std::path::Path, config: Config) -> Result<Base> {
    std::fs::create_dir_all(dir).map_err(|e| crate::error::Error::io(dir, e))?;
    let base = Base::create(dir, config)?;
    let mut w = base.writer("init")?;
    let now = Utc::now();
    for (id, name, criteria) in default_segments(&base.config) {
        w.next.segments.push(SegmentRecord {
            id: id.into(),
            name: name.into(),
            description: Some("default segment".into()),
            criteria: Some(criteria),
            paused: false,
            status: SegmentStatus::UpToDate,
            error: None,
            needs_refresh: true,
            created_at: now,
            updated_at: now,
            stats: None,
            members: None,
            members_since: Vec::new(),
            history: History::default(),
        });
    }
    w.commit()?;
    Ok(base)
}

/// What criteria may refer to in a version of the base. Recognised contact
/// columns are known even before the first import, so that the default
/// segments validate on an empty base.
pub struct ManifestCatalog<'a> {
    pub manifest: &'a Manifest,
    pub config: &'a Config,
}

impl Catalog for ManifestCatalog<'_> {
    fn contact_field(&self, name: &str) -> Option<FieldType> {
        self.manifest.contact_field_type(self.config, name)
    }
    fn event_column(&self, name: &str) -> Option<FieldType> {
        self.manifest
            .event_columns
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.ty.clone())
    }
    fn has_segment(&self, key: &str) -> bool {
        self.manifest.segment(key).is_some()
    }
    fn has_import(&self, key: &str) -> bool {
        self.manifest.import(key).is_some()
    }
}
