//! Stored results of a segment: members with their entry cohorts (one bitmap
//! per entry time, so each member's entry date is known without a table),
//! and each computation's entries and exits (bitmaps) for the history.

use chrono::{DateTime, Utc};
use roaring::RoaringBitmap;

use crate::base::Writer;
use crate::base::bitmaps::TaggedBitmaps;
use crate::base::manifest::{
    HistoryPoint, MembersChange, SegmentRecord, SegmentStats, SegmentStatus, bound_history,
};
use crate::error::Result;

/// Tag of the member set inside a members file.
const MEMBERS_TAG: i64 = i64::MIN;
const ENTRIES_TAG: i64 = 0;
const EXITS_TAG: i64 = 1;

/// Members of a segment and when each entered.
#[derive(Debug, Clone, Default)]
pub struct Members {
    pub members: RoaringBitmap,
    /// (entry time µs, members who entered then), oldest first.
    pub cohorts: Vec<(i64, RoaringBitmap)>,
}

impl Members {
    /// The members of a segment: its members file with the entries and
    /// exits of the computations since applied.
    pub fn load(dir: &std::path::Path, rec: &SegmentRecord) -> Result<Members> {
        let Some(f) = &rec.members else {
            return Ok(Members::default());
        };
        let t = TaggedBitmaps::read(dir, f)?;
        let mut out = Members::default();
        for (tag, bm) in t.0 {
            if tag == MEMBERS_TAG {
                out.members = bm;
            } else {
                out.cohorts.push((tag, bm));
            }
        }
        for c in &rec.members_since {
            let t = TaggedBitmaps::read(dir, &c.delta)?;
            out.apply(
                &t.get(ENTRIES_TAG),
                &t.get(EXITS_TAG),
                c.at.timestamp_micros(),
            );
        }
        Ok(out)
    }

    /// The members after a computation's entries (entered at `at`, µs) and
    /// exits.
    fn apply(&mut self, entries: &RoaringBitmap, exits: &RoaringBitmap, at: i64) {
        self.members -= exits;
        self.members |= entries;
        for (_, b) in &mut self.cohorts {
            *b -= exits;
        }
        self.cohorts.retain(|(_, b)| !b.is_empty());
        if !entries.is_empty() {
            match self.cohorts.last_mut() {
                Some((t, b)) if *t == at => *b |= entries,
                _ => self.cohorts.push((at, entries.clone())),
            }
        }
    }

    fn encode(&self) -> TaggedBitmaps {
        let mut v = vec![(MEMBERS_TAG, self.members.clone())];
        v.extend(self.cohorts.iter().cloned());
        TaggedBitmaps(v)
    }

    /// Entry time (µs) of a member.
    pub fn entered_at(&self, iid: u32) -> Option<i64> {
        self.cohorts
            .iter()
            .rev()
            .find(|(_, b)| b.contains(iid))
            .map(|(t, _)| *t)
    }
}

/// Bitmaps of e-mail and SMS opt-ins, for statistics by intersection.
#[derive(Debug, Clone, Default)]
pub struct OptIns {
    pub email: RoaringBitmap,
    pub sms: RoaringBitmap,
}

/// The keys of the opt-ins among a recompute's kept results (conditions'
/// keys start with `c:` or `b:`).
const KEPT_EMAIL: &str = "optins:email";
const KEPT_SMS: &str = "optins:sms";

/// The key of the contacts of the base among a recompute's kept results.
pub const KEPT_ALL: &str = "contacts:all";

impl OptIns {
    /// The opt-ins as kept results ([`crate::base::changes::keep`]).
    pub fn as_kept(&self) -> [(String, RoaringBitmap); 2] {
        [
            (KEPT_EMAIL.to_string(), self.email.clone()),
            (KEPT_SMS.to_string(), self.sms.clone()),
        ]
    }

    /// The opt-ins among kept results.
    pub fn kept_in(
        results: &std::collections::HashMap<String, std::sync::Arc<RoaringBitmap>>,
    ) -> Option<OptIns> {
        Some(OptIns {
            email: (**results.get(KEPT_EMAIL)?).clone(),
            sms: (**results.get(KEPT_SMS)?).clone(),
        })
    }

    /// The opt-ins a recompute kept: as they stand when no contact changed
    /// since; else, with the contacts changed since and the files holding
    /// the rows now of those still in the base (`all`), when imports kept
    /// them ([`crate::base::changes::Dirty::rows_of`]).
    pub fn from_kept(kept: &crate::base::changes::Kept, all: &RoaringBitmap) -> Option<KeptOptIns> {
        let opt = OptIns::kept_in(&kept.results)?;
        let changed = &kept.dirty.fields | &kept.dirty.presence;
        if changed.is_empty() {
            return Some(KeptOptIns::Same(opt));
        }
        let rows = kept.dirty.rows_of(&(&changed & all))?.to_vec();
        Some(KeptOptIns::Patch { opt, changed, rows })
    }
}

/// Opt-ins a recompute kept ([`OptIns::from_kept`]).
pub enum KeptOptIns {
    Same(OptIns),
    /// To be found again for `changed` from `rows`.
    Patch {
        opt: OptIns,
        changed: RoaringBitmap,
        rows: Vec<crate::base::manifest::DataFile>,
    },
}

/// A segment's new members.
#[derive(Debug, Clone)]
pub enum NewMembers {
    Whole(RoaringBitmap),
    /// Its members changed only among some contacts
    /// ([`crate::jobs::recompute::Within`]): they are those stored, with
    /// these entries and exits.
    Within {
        entries: RoaringBitmap,
        exits: RoaringBitmap,
        /// E-mail and SMS opt-ins the segment gained (contacts who entered
        /// opted in, or stayed and opted in) and lost (who left opted in
        /// then, or stayed and opted out).
        optins_gained: [u64; 2],
        optins_lost: [u64; 2],
    },
}

/// A computation's entries and exits, and the statistics after them.
struct Moves {
    entries: RoaringBitmap,
    exits: RoaringBitmap,
    contacts: u64,
    email_optins: u64,
    sms_optins: u64,
}

/// What a segment's stored members were computed from and are held in: its
/// criteria, what the segments and imports they name stand for (`names`),
/// its members file and the changes applied to it. Equal prints: the same
/// stored members and statistics, computed from the same definition. None
/// for a segment never computed.
pub fn stored_as(rec: &SegmentRecord, names: &[String]) -> Option<String> {
    use sha2::{Digest, Sha256};
    let (criteria, members) = (rec.criteria.as_ref()?, rec.members.as_ref()?);
    rec.stats.as_ref()?;
    let mut h = Sha256::new();
    h.update(criteria.to_string());
    for n in names {
        h.update([0]);
        h.update(n);
    }
    h.update([1]);
    h.update(&members.path);
    for c in &rec.members_since {
        h.update([0]);
        h.update(&c.delta.path);
    }
    Some(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Record a new computation of a segment: members, cohorts, history,
/// statistics.
pub fn store_result(
    w: &Writer,
    rec: &mut SegmentRecord,
    new: &NewMembers,
    optins: &OptIns,
    at: DateTime<Utc>,
    as_of: DateTime<Utc>,
    duration_ms: u64,
) -> Result<()> {
    let (moves, loaded) = match new {
        NewMembers::Whole(new) => {
            let members = Members::load(w.dir(), rec)?;
            let moves = Moves {
                entries: new - &members.members,
                exits: &members.members - new,
                contacts: new.len(),
                email_optins: new.intersection_len(&optins.email),
                sms_optins: new.intersection_len(&optins.sms),
            };
            (moves, Some(members))
        }
        NewMembers::Within {
            entries,
            exits,
            optins_gained,
            optins_lost,
            ..
        } => {
            let stats = rec.stats.as_ref().ok_or_else(|| {
                crate::error::Error::Internal(format!(
                    "segment {} has no statistics to bring up to date",
                    rec.id
                ))
            })?;
            // Outside the changed contacts, members and opt-ins are as
            // they were counted.
            let count =
                |was: u64, i: usize| (was + optins_gained[i]).saturating_sub(optins_lost[i]);
            let (entries, exits) = (entries.clone(), exits.clone());
            let moves = Moves {
                contacts: (stats.contacts + entries.len()).saturating_sub(exits.len()),
                email_optins: count(stats.email_optins, 0),
                sms_optins: count(stats.sms_optins, 1),
                entries,
                exits,
            };
            (moves, None)
        }
    };
    let Moves { entries, exits, .. } = &moves;
    let delta = if entries.is_empty() && exits.is_empty() {
        None
    } else {
        Some(
            TaggedBitmaps(vec![
                (ENTRIES_TAG, entries.clone()),
                (EXITS_TAG, exits.clone()),
            ])
            .write(w, &format!("delta-{}", rec.id))?,
        )
    };
    match (&rec.members, &delta) {
        (Some(file), Some(delta)) if applied_on_reading(file, &rec.members_since, delta) => {
            rec.members_since.push(MembersChange {
                at,
                delta: delta.clone(),
            });
        }
        (Some(_), None) => {}
        _ => {
            let mut members = match loaded {
                Some(m) => m,
                None => Members::load(w.dir(), rec)?,
            };
            members.apply(entries, exits, at.timestamp_micros());
            rec.members = Some(members.encode().write(w, &format!("seg-{}", rec.id))?);
            rec.members_since.clear();
        }
    }
    let points = rec.history.points_mut(w.dir())?;
    points.push(HistoryPoint {
        at,
        as_of,
        size: moves.contacts,
        entries: entries.len(),
        exits: exits.len(),
        delta,
    });
    bound_history(points, as_of, w.base.config.history_days, w.base.tz());
    rec.stats = Some(SegmentStats {
        contacts: moves.contacts,
        email_optins: moves.email_optins,
        sms_optins: moves.sms_optins,
        computed_at: at,
        as_of,
        duration_ms,
    });
    rec.status = if rec.paused {
        SegmentStatus::Paused
    } else {
        SegmentStatus::UpToDate
    };
    rec.error = None;
    rec.needs_refresh = false;
    Ok(())
}

/// At most this many computations' entries and exits are applied to a
/// members file when it is read.
const CHANGES_APPLIED: usize = 8;

/// Whether the members can stay as their file with entries and exits
/// applied, this delta among them: at most [`CHANGES_APPLIED`] of them,
/// together no more than a quarter of the file's size. Otherwise, the
/// members are written whole again.
fn applied_on_reading(
    file: &crate::base::manifest::DataFile,
    since: &[MembersChange],
    delta: &crate::base::manifest::DataFile,
) -> bool {
    let bytes: u64 = since.iter().map(|c| c.delta.bytes).sum::<u64>() + delta.bytes;
    since.len() < CHANGES_APPLIED && bytes * 4 <= file.bytes
}

/// Read the entries and exits of a history point.
pub fn read_delta(
    dir: &std::path::Path,
    p: &HistoryPoint,
) -> Result<(RoaringBitmap, RoaringBitmap)> {
    match &p.delta {
        None => Ok((RoaringBitmap::new(), RoaringBitmap::new())),
        Some(f) => {
            let t = TaggedBitmaps::read(dir, f)?;
            Ok((t.get(ENTRIES_TAG), t.get(EXITS_TAG)))
        }
    }
}

/// Remove deleted contacts from every segment's members, cohorts and history.
pub fn forget_contacts(w: &mut Writer, gone: &RoaringBitmap, gone_optins: &OptIns) -> Result<()> {
    let dir = w.dir().to_path_buf();
    let mut segments = std::mem::take(&mut w.next.segments);
    for rec in &mut segments {
        let m = Members::load(&dir, rec)?;
        if rec.members.is_some() && !m.members.is_disjoint(gone) {
            let kept = Members {
                members: &m.members - gone,
                cohorts: m
                    .cohorts
                    .into_iter()
                    .map(|(t, b)| (t, b - gone))
                    .filter(|(_, b)| !b.is_empty())
                    .collect(),
            };
            if let Some(s) = &mut rec.stats {
                let left = &m.members & gone;
                s.contacts = kept.members.len();
                s.email_optins -= left.intersection_len(&gone_optins.email);
                s.sms_optins -= left.intersection_len(&gone_optins.sms);
            }
            rec.members = Some(kept.encode().write(w, &format!("seg-{}", rec.id))?);
            rec.members_since.clear();
        }
        // Replay the detailed history to know which deleted contacts were
        // members at each point, from the members before its first point
        // (the current members with its points undone, newest first).
        // Points beyond `history_days` keep the sizes they had.
        let points = rec.history.points_mut(&dir)?;
        let detailed = points.len()
            - points
                .iter()
                .rev()
                .take_while(|p| p.delta.is_some() || p.entries + p.exits == 0)
                .count();
        let mut before = m.members.clone();
        for p in points[detailed..].iter().rev() {
            let (entries, exits) = read_delta(&dir, p)?;
            before = (before - entries) | exits;
        }
        let mut were = before & gone;
        for p in &mut points[detailed..] {
            let (entries, exits) = read_delta(&dir, p)?;
            let (ge, gx) = (&entries & gone, &exits & gone);
            were |= &ge;
            were -= &gx;
            p.size -= were.len().min(p.size);
            if !ge.is_empty() || !gx.is_empty() {
                p.entries -= ge.len();
                p.exits -= gx.len();
                let (e, x) = (entries - gone, exits - gone);
                p.delta = if e.is_empty() && x.is_empty() {
                    None
                } else {
                    Some(
                        TaggedBitmaps(vec![(ENTRIES_TAG, e), (EXITS_TAG, x)])
                            .write(w, &format!("delta-{}", rec.id))?,
                    )
                };
            }
        }
    }
    w.next.segments = segments;
    Ok(())
}
