//! Validation of criteria against the base's schema: fields, operators,
//! values, referenced segments and imports. Errors carry the JSON path.

use crate::base::schema::FieldType;
use crate::criteria::operand::operand;
use crate::criteria::{Agg, Behavior, Criterion, FieldCond, Window};
use crate::error::{Error, Result};

/// What the criteria may refer to.
pub trait Catalog {
    fn contact_field(&self, name: &str) -> Option<FieldType>;
    fn event_column(&self, name: &str) -> Option<FieldType>;
    fn has_segment(&self, key: &str) -> bool;
    fn has_import(&self, key: &str) -> bool;
}

pub fn validate(c: &Criterion, path: &str, cat: &dyn Catalog) -> Result<()> {
    c.walk(path, &mut |node, path| match node {
        Criterion::Field(f) => {
            let ty = cat.contact_field(&f.field).ok_or_else(|| {
                Error::definition(
                    format!("{path}.field"),
                    format!("unknown contact field {:?}", f.field),
                )
            })?;
            check_cond(f, &ty, path)
        }
        Criterion::Behavior(b) => validate_behavior(b, &format!("{path}.behavior"), cat),
        Criterion::Segment(s) if !cat.has_segment(s) => Err(Error::definition(
            format!("{path}.segment"),
            format!("unknown segment {s:?}"),
        )),
        Criterion::Import(s) if !cat.has_import(s) => Err(Error::definition(
            format!("{path}.import"),
            format!("unknown import {s:?}"),
        )),
        _ => Ok(()),
    })
}

pub fn check_cond(f: &FieldCond, ty: &FieldType, path: &str) -> Result<()> {
    operand(ty, f.op, &f.value).map(|_| ()).map_err(|m| {
        let at = if m.starts_with("operator") && m.contains("does not apply") {
            "op"
        } else {
            "value"
        };
        Error::definition(
            format!("{path}.{at}"),
            format!("{m} (field {:?} is {})", f.field, ty.name()),
        )
    })
}

fn validate_behavior(b: &Behavior, path: &str, cat: &dyn Catalog) -> Result<()> {
    for (i, w) in b.wheres.iter().enumerate() {
        let p = format!("{path}.where[{i}]");
        if matches!(w.field.as_str(), "contact_id" | "_iid") {
            return Err(Error::definition(
                format!("{p}.field"),
                "filter contacts with field criteria, not in where",
            ));
        }
        let ty = cat.event_column(&w.field).ok_or_else(|| {
            Error::definition(
                format!("{p}.field"),
                format!("unknown event column {:?}", w.field),
            )
        })?;
        check_cond(w, &ty, &p)?;
    }
    if let Some(Window::Last(d)) = &b.within
        && d.n == 0
    {
        return Err(Error::definition(
            format!("{path}.within"),
            "a window of 0 keeps no event",
        ));
    }
    let h = &b.having;
    if matches!(h.agg, Agg::Sum | Agg::Avg | Agg::Min | Agg::Max) {
        let col = h.column.as_deref().unwrap_or("amount");
        match cat.event_column(col) {
            Some(FieldType::Number { .. }) => {}
            Some(t) => {
                return Err(Error::definition(
                    format!("{path}.having.field"),
                    format!(
                        "{} needs a numeric column; {col:?} is {}",
                        h.agg.name(),
                        t.name()
                    ),
                ));
            }
            None => {
                return Err(Error::definition(
                    format!("{path}.having.field"),
                    format!("unknown event column {col:?}"),
                ));
            }
        }
    }
    let ty = h.value_type();
    operand(&ty, h.op, &h.value).map_err(|m| {
        Error::definition(
            format!("{path}.having"),
            format!("{m} ({} is a {})", h.agg.name(), ty.name()),
        )
    })?;
    Ok(())
}
