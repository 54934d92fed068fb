//! A dozen realistic example segments (the files of `testdata/segments/`,
//! embedded), created on a demo base.

use chrono::{DateTime, Utc};

use crate::base::Base;
use crate::criteria::Definition;
use crate::error::Result;

const EXAMPLES: &[(&str, &str)] = &[
    (
        "01-acheteurs-actifs-fr.json",
        include_str!("../../testdata/segments/01-acheteurs-actifs-fr.json"),
    ),
    (
        "02-ouvreurs-recents.json",
        include_str!("../../testdata/segments/02-ouvreurs-recents.json"),
    ),
    (
        "03-gros-acheteurs.json",
        include_str!("../../testdata/segments/03-gros-acheteurs.json"),
    ),
    (
        "04-parisiens.json",
        include_str!("../../testdata/segments/04-parisiens.json"),
    ),
    (
        "05-paniers-abandonnes.json",
        include_str!("../../testdata/segments/05-paniers-abandonnes.json"),
    ),
    (
        "06-clients-dormants.json",
        include_str!("../../testdata/segments/06-clients-dormants.json"),
    ),
    (
        "07-anniversaires.json",
        include_str!("../../testdata/segments/07-anniversaires.json"),
    ),
    (
        "08-fideles-or.json",
        include_str!("../../testdata/segments/08-fideles-or.json"),
    ),
    (
        "09-non-destinataires.json",
        include_str!("../../testdata/segments/09-non-destinataires.json"),
    ),
    (
        "10-reactivation.json",
        include_str!("../../testdata/segments/10-reactivation.json"),
    ),
    (
        "11-sms-cliqueurs.json",
        include_str!("../../testdata/segments/11-sms-cliqueurs.json"),
    ),
    (
        "12-score-sql.json",
        include_str!("../../testdata/segments/12-score-sql.json"),
    ),
];

pub fn example_definitions() -> Result<Vec<Definition>> {
    EXAMPLES
        .iter()
        .map(|(name, text)| Definition::parse_str(text, name))
        .collect()
}

/// Save the examples that the base does not have yet (without computing:
/// the nightly recompute that follows computes everything in one run).
pub async fn create_examples(base: &Base, _as_of: DateTime<Utc>) -> Result<usize> {
    let mut w = base.writer("segments demo: example segments")?;
    let mut n = 0;
    for def in example_definitions()? {
        if w.next.segment(&def.id).is_some() {
            continue;
        }
        crate::jobs::segments::check_definition(&w.next, &w.base, &def)?;
        w.next.segments.push(crate::jobs::segments::new_record(
            &def,
            Some(def.criteria_json.clone()),
        ));
        n += 1;
    }
    if n > 0 {
        w.commit()?;
    }
    Ok(n)
}
