//! A deterministic synthetic base for demos, tests and benchmarks, with the
//! shapes of a real CRM: opt-in and bounce rates, Zipf-popular campaigns,
//! power-law activity, purchases with amounts, web visits with URLs and
//! custom events, empty values, tags and a declared choice field.
//!
//! It streams: contacts are written in chunks, and events go straight into
//! one Parquet writer per month, sorted by (internal id, ts) because
//! contacts are generated in id order with their events in time order;
//! each month is then regrouped by event type, as imports store it (one
//! month in memory at a time).

mod examples;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, ListBuilder,
    RecordBatch, StringBuilder, StringDictionaryBuilder, TimestampMicrosecondBuilder,
    UInt32Builder, UInt64Builder,
};
use datafusion::arrow::datatypes::Int32Type;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Pareto, Zipf};
use roaring::RoaringBitmap;

use crate::base::bitmaps::write_bitmap;
use crate::base::config::Config;
use crate::base::contacts::{contacts_schema, for_storage, to_storage};
use crate::base::events::{events_schema, month_of};
use crate::base::manifest::EventFile;
use crate::base::schema::{FieldDef, FieldType};
use crate::base::table::{ParallelWriter, contacts_properties, events_properties};
use crate::error::Result;
pub use examples::{create_examples, example_definitions};

/// ts, type, operation_id, url, amount, name
type GenEvent = (
    i64,
    &'static str,
    Option<String>,
    Option<String>,
    Option<f64>,
    Option<String>,
);

pub struct GenOptions {
    pub contacts: u32,
    pub events_per_contact: u32,
    pub seed: u64,
    /// The newest event is just before this instant; history spans a year.
    pub as_of: DateTime<Utc>,
}

pub struct GenStats {
    pub contacts: u64,
    pub events: u64,
}

const CITIES: &[&str] = &[
    "Paris",
    "Lyon",
    "Marseille",
    "Toulouse",
    "Nice",
    "Nantes",
    "Strasbourg",
    "Montpellier",
    "Bordeaux",
    "Lille",
    "Rennes",
    "Reims",
    "Le Havre",
    "Saint-Étienne",
    "Toulon",
    "Grenoble",
    "Dijon",
    "Angers",
    "Nîmes",
    "Villeurbanne",
    "Bruxelles",
    "Genève",
    "Montréal",
    "Évry",
    "Orléans",
];
const FIRST: &[&str] = &[
    "Camille", "Léa", "Manon", "Chloé", "Emma", "Louis", "Lucas", "Hugo", "Jules", "Élodie",
    "Noah", "Inès", "Zoé", "Théo", "Anaïs",
];
const LAST: &[&str] = &[
    "Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy",
    "Moreau", "Lefèvre", "Garnier", "Faure", "Rousseau",
];
const INTERESTS: &[&str] = &[
    "running", "cuisine", "voyage", "mode", "jardin", "tech", "vin", "lecture", "musique", "cinéma",
];
const PAGES: &[&str] = &[
    "/",
    "/produits",
    "/produits/chaussures",
    "/produits/sacs",
    "/promo",
    "/checkout",
    "/panier",
    "/blog",
    "/contact",
    "/compte",
];
const PRODUCTS: &[&str] = &[
    "chaussures-trail",
    "sac-cuir",
    "veste-pluie",
    "montre",
    "lunettes",
    "casquette",
];

fn declared_fields() -> BTreeMap<String, FieldType> {
    let mut m = BTreeMap::new();
    m.insert(
        "loyalty".to_string(),
        FieldType::Choice {
            values: vec!["bronze".into(), "silver".into(), "gold".into()],
        },
    );
    m.insert("interests".to_string(), FieldType::Tags);
    m
}

fn contact_fields() -> Vec<FieldDef> {
    let f = |n: &str, ty: FieldType| FieldDef { name: n.into(), ty };
    vec![
        f("email", FieldType::Text),
        f("phone", FieldType::Text),
        f("first_name", FieldType::Text),
        f("last_name", FieldType::Text),
        f("email_optin", FieldType::Bool),
        f("sms_optin", FieldType::Bool),
        f(
            "email_status",
            crate::base::schema::recognised_contact_field("email_status").expect("known"),
        ),
        f(
            "sms_status",
            crate::base::schema::recognised_contact_field("sms_status").expect("known"),
        ),
        f("created_at", FieldType::Timestamp),
        f("city", FieldType::Text),
        f("country", FieldType::Text),
        f("birth_date", FieldType::Date),
        f("loyalty", declared_fields()["loyalty"].clone()),
        f("interests", FieldType::Tags),
        f("score", FieldType::Number { integer: true }),
    ]
}

fn pick<'a>(rng: &mut SmallRng, p: &[(&'a str, f64)]) -> Option<&'a str> {
    let mut x: f64 = rng.random();
    for (v, w) in p {
        if x < *w {
            return if v.is_empty() { None } else { Some(v) };
        }
        x -= w;
    }
    None
}

/// Create a base in `dir` and fill it. Deterministic for a seed and `as_of`.
pub fn generate(dir: &Path, opts: &GenOptions) -> Result<GenStats> {
    let config = Config {
        time_zone: "Europe/Paris".into(),
        fields: declared_fields(),
        ..Config::default()
    };
    let base = crate::jobs::init(dir, config)?;
    let mut w = base.writer("segments gen")?;
    let fields = contact_fields();
    let cschema = contacts_schema(&fields);
    let eschema = events_schema(&w.next.event_columns);
    let mut rng = SmallRng::seed_from_u64(opts.seed);
    let campaigns = 60usize;
    let zipf_campaign = Zipf::new(campaigns as f64, 1.1).expect("valid zipf");
    let zipf_city = Zipf::new(CITIES.len() as f64, 1.2).expect("valid zipf");
    let activity = Pareto::new(1.0, 2.0).expect("valid pareto"); // mean 2
    let amount = LogNormal::new(3.8, 0.7).expect("valid lognormal");
    let as_of = opts.as_of.timestamp_micros();
    let year = Duration::days(365).num_microseconds().expect("fits");
    // Campaign send times, spread over the year, newest first by id.
    let campaign_ts: Vec<i64> = (0..campaigns)
        .map(|c| as_of - (c as i64 * year / campaigns as i64) - 3_600_000_000 * 9)
        .collect();
    let campaign_id = |c: usize, ts: i64| format!("NL-{}-{:02}", month_of(ts), c % 100);

    // The storage types of contacts are chosen from the first chunk.
    let mut contacts_writer: Option<(ParallelWriter, datafusion::arrow::datatypes::SchemaRef)> =
        None;
    let mut month_writers: BTreeMap<String, (ParallelWriter, EventRows)> = BTreeMap::new();
    let mut all = RoaringBitmap::new();
    let mut total_events = 0u64;
    let chunk = 65_536u32;
    let mut start = 0u32;
    while start < opts.contacts {
        let end = (start + chunk).min(opts.contacts);
        let mut c = ContactRows::default();
        for iid in start..end {
            all.insert(iid);
            c.push(&mut rng, iid, as_of, year, &zipf_city);
            // Events of this contact, in time order.
            let level: f64 = activity.sample(&mut rng) / 2.0;
            // About a third of a real base has stopped engaging: they still
            // receive e-mails but have not opened, clicked or bought for months.
            let dormant = rng.random_bool(0.35);
            let dormant_since = as_of - year * 200 / 365;
            let n = ((opts.events_per_contact as f64) * level.min(20.0)).round() as usize;
            let mut evs: Vec<GenEvent> = Vec::with_capacity(n);
            while evs.len() < n {
                let c_i = (zipf_campaign.sample(&mut rng) as usize)
                    .saturating_sub(1)
                    .min(campaigns - 1);
                let sent = campaign_ts[c_i] + rng.random_range(0..600_000_000i64);
                let op = campaign_id(c_i, campaign_ts[c_i]);
                evs.push((sent, "email_sent", Some(op.clone()), None, None, None));
                let engaged = !dormant || sent < dormant_since;
                if engaged && rng.random_bool(0.3) {
                    let opened = sent + rng.random_range(60_000_000..3 * 86_400_000_000i64);
                    evs.push((opened, "email_open", Some(op.clone()), None, None, None));
                    if rng.random_bool(0.25) {
                        let url = PAGES[rng.random_range(0..PAGES.len())];
                        evs.push((
                            opened + 30_000_000,
                            "email_click",
                            Some(op.clone()),
                            Some(url.to_string()),
                            None,
                            None,
                        ));
                    }
                } else if rng.random_bool(0.01) {
                    evs.push((
                        sent + 1_000_000,
                        "email_bounce",
                        Some(op.clone()),
                        None,
                        None,
                        None,
                    ));
                }
                let t = if dormant {
                    as_of - rng.random_range(year * 200 / 365..year)
                } else {
                    as_of - rng.random_range(0..year)
                };
                match rng.random_range(0..100) {
                    0..=24 => evs.push((
                        t,
                        "web_visit",
                        None,
                        Some(PAGES[rng.random_range(0..PAGES.len())].into()),
                        None,
                        None,
                    )),
                    25..=29 => evs.push((
                        t,
                        "web_event",
                        None,
                        Some("/produits".into()),
                        None,
                        Some(PRODUCTS[rng.random_range(0..PRODUCTS.len())].into()),
                    )),
                    30..=33 => evs.push((
                        t,
                        "purchase",
                        Some(format!("ORDER-{}", rng.random_range(0..1_000_000))),
                        None,
                        Some((amount.sample(&mut rng) * 100.0f64).round() / 100.0),
                        Some(PRODUCTS[rng.random_range(0..PRODUCTS.len())].into()),
                    )),
                    34..=38 => {
                        let op = format!("SMS-{}", month_of(t));
                        evs.push((t, "sms_sent", Some(op.clone()), None, None, None));
                        if rng.random_bool(0.1) {
                            evs.push((t + 120_000_000, "sms_click", Some(op), None, None, None));
                        }
                    }
                    39..=40 => evs.push((
                        t,
                        "form_submit",
                        Some(format!("FORM-{}", rng.random_range(1..6))),
                        None,
                        None,
                        None,
                    )),
                    41 => evs.push((t, "email_unsubscribe", None, None, None, None)),
                    _ => {}
                }
            }
            evs.retain(|e| e.0 <= as_of);
            evs.sort_by_key(|e| e.0);
            for (ts, ty, op, url, amt, name) in evs {
                let m = month_of(ts);
                if !month_writers.contains_key(&m) {
                    let sink = w.new_file(&format!("events/{m}"), "events", "parquet")?;
                    month_writers.insert(
                        m.clone(),
                        (
                            ParallelWriter::new(sink, eschema.clone(), events_properties())?,
                            EventRows::default(),
                        ),
                    );
                }
                let (writer, rows) = month_writers.get_mut(&m).expect("inserted");
                rows.push(iid, 1_000 + iid as u64 * 3, ts, ty, op, url, amt, name);
                total_events += 1;
                if rows.len >= 65_536 {
                    writer.write(rows.finish(&eschema)?)?;
                }
            }
        }
        let batch = c.finish(&cschema)?;
        let (writer, stored) = match &mut contacts_writer {
            Some(open) => open,
            None => {
                let stored = for_storage(&batch)?.schema();
                let writer = ParallelWriter::new(
                    w.new_file("contacts", "contacts", "parquet")?,
                    stored.clone(),
                    contacts_properties(&stored),
                )?;
                contacts_writer.insert((writer, stored))
            }
        };
        writer.write(to_storage(&batch, stored)?)?;
        start = end;
    }
    let mut files = Vec::new();
    for (month, (mut writer, mut rows)) in month_writers {
        if rows.len > 0 {
            writer.write(rows.finish(&eschema)?)?;
        }
        let n = writer.rows;
        let file = writer.finish()?;
        let (lo, hi) = month_bounds(&month);
        let generated = EventFile {
            file,
            month,
            rows: n,
            min_ts: lo,
            max_ts: hi,
            by_type: false,
        };
        // Stored as an import stores a month: by type, then contact.
        files.push(crate::base::events::sort_by_type(&w, &generated)?);
    }
    w.next.contacts = match contacts_writer {
        Some((writer, _)) => Some(writer.finish()?),
        None => None,
    };
    crate::base::times::index_contacts(&mut w)?;
    w.next.all_contacts = Some(write_bitmap(&w, "all-contacts", &all)?);
    w.next.contact_count = all.len();
    w.next.next_iid = opts.contacts;
    w.next.fields = fields;
    w.next.events = files;
    crate::base::changes::forget(&mut w.next);
    w.commit()?;
    Ok(GenStats {
        contacts: opts.contacts as u64,
        events: total_events,
    })
}

fn month_bounds(month: &str) -> (i64, i64) {
    let start = chrono::NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d")
        .map(|d| {
            d.and_hms_opt(0, 0, 0)
                .expect("midnight")
                .and_utc()
                .timestamp_micros()
        })
        .unwrap_or(0);
    (start, start + 31 * 86_400_000_000)
}

#[derive(Default)]
struct ContactRows {
    iid: UInt32Builder,
    cid: UInt64Builder,
    email: StringBuilder,
    phone: StringBuilder,
    first: StringBuilder,
    last: StringBuilder,
    email_optin: BooleanBuilder,
    sms_optin: BooleanBuilder,
    email_status: StringBuilder,
    sms_status: StringBuilder,
    created_at: TimestampMicrosecondBuilder,
    city: StringBuilder,
    country: StringBuilder,
    birth: Date32Builder,
    loyalty: StringBuilder,
    interests: ListBuilder<StringBuilder>,
    score: Int64Builder,
}

impl ContactRows {
    fn push(&mut self, rng: &mut SmallRng, iid: u32, as_of: i64, year: i64, zipf_city: &Zipf<f64>) {
        self.iid.append_value(iid);
        self.cid.append_value(1_000 + iid as u64 * 3);
        let first = FIRST[rng.random_range(0..FIRST.len())];
        let last = LAST[rng.random_range(0..LAST.len())];
        let has_email = rng.random_bool(0.93);
        self.email.append_option(has_email.then(|| {
            format!(
                "{}.{}{}@example.com",
                first.to_lowercase(),
                last.to_lowercase(),
                iid
            )
        }));
        let has_phone = rng.random_bool(0.6);
        self.phone
            .append_option(has_phone.then(|| format!("+336{:08}", iid)));
        self.first
            .append_option(rng.random_bool(0.95).then_some(first));
        self.last
            .append_option(rng.random_bool(0.95).then_some(last));
        self.email_optin
            .append_option(match rng.random_range(0..100) {
                0..=69 => Some(true),
                70..=84 => Some(false),
                _ => None,
            });
        self.sms_optin
            .append_option(match rng.random_range(0..100) {
                0..=44 => Some(true),
                45..=74 => Some(false),
                _ => None,
            });
        self.email_status.append_option(pick(
            rng,
            &[
                ("valid", 0.88),
                ("hard_bounce", 0.04),
                ("bad_syntax", 0.01),
                ("bad_domain", 0.01),
                ("bad_alias", 0.01),
                ("", 0.05),
            ],
        ));
        self.sms_status.append_option(pick(
            rng,
            &[
                ("valid", 0.85),
                ("hard_bounce", 0.03),
                ("bad_number", 0.02),
                ("", 0.10),
            ],
        ));
        self.created_at
            .append_value(as_of - rng.random_range(0..5 * year));
        let city = CITIES[(zipf_city.sample(rng) as usize)
            .saturating_sub(1)
            .min(CITIES.len() - 1)];
        self.city
            .append_option(rng.random_bool(0.95).then_some(city));
        self.country.append_option(pick(
            rng,
            &[
                ("FR", 0.72),
                ("BE", 0.1),
                ("CH", 0.06),
                ("CA", 0.05),
                ("", 0.07),
            ],
        ));
        self.birth.append_option(
            rng.random_bool(0.8)
                .then(|| rng.random_range(-365 * 30..365 * 35)),
        );
        self.loyalty.append_option(pick(
            rng,
            &[("bronze", 0.5), ("silver", 0.25), ("gold", 0.1), ("", 0.15)],
        ));
        if rng.random_bool(0.7) {
            let n = rng.random_range(0..4);
            for _ in 0..n {
                let t = INTERESTS[rng.random_range(0..INTERESTS.len())];
                self.interests
                    .values()
                    .append_value(if rng.random_bool(0.1) {
                        t.to_uppercase()
                    } else {
                        t.to_string()
                    });
            }
            self.interests.append(true);
        } else {
            self.interests.append_null();
        }
        self.score
            .append_option(rng.random_bool(0.9).then(|| rng.random_range(0..1000)));
    }

    fn finish(&mut self, schema: &datafusion::arrow::datatypes::SchemaRef) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.iid.finish()),
            Arc::new(self.cid.finish()),
            Arc::new(self.email.finish()),
            Arc::new(self.phone.finish()),
            Arc::new(self.first.finish()),
            Arc::new(self.last.finish()),
            Arc::new(self.email_optin.finish()),
            Arc::new(self.sms_optin.finish()),
            Arc::new(self.email_status.finish()),
            Arc::new(self.sms_status.finish()),
            Arc::new(self.created_at.finish().with_timezone("UTC")),
            Arc::new(self.city.finish()),
            Arc::new(self.country.finish()),
            Arc::new(self.birth.finish()),
            Arc::new(self.loyalty.finish()),
            Arc::new(self.interests.finish()),
            Arc::new(self.score.finish()),
        ];
        Ok(RecordBatch::try_new(schema.clone(), cols)?)
    }
}

#[derive(Default)]
struct EventRows {
    len: usize,
    iid: UInt32Builder,
    cid: UInt64Builder,
    ts: TimestampMicrosecondBuilder,
    ty: StringDictionaryBuilder<Int32Type>,
    op: StringDictionaryBuilder<Int32Type>,
    url: StringDictionaryBuilder<Int32Type>,
    amount: Float64Builder,
    name: StringDictionaryBuilder<Int32Type>,
}

impl EventRows {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        iid: u32,
        cid: u64,
        ts: i64,
        ty: &str,
        op: Option<String>,
        url: Option<String>,
        amount: Option<f64>,
        name: Option<String>,
    ) {
        self.len += 1;
        self.iid.append_value(iid);
        self.cid.append_value(cid);
        self.ts.append_value(ts);
        self.ty.append_value(ty);
        match op {
            Some(op) => self.op.append_value(op),
            None => self.op.append_null(),
        };
        self.url.append_option(url);
        self.amount.append_option(amount);
        self.name.append_option(name);
    }

    fn finish(&mut self, schema: &datafusion::arrow::datatypes::SchemaRef) -> Result<RecordBatch> {
        self.len = 0;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.iid.finish()),
            Arc::new(self.cid.finish()),
            Arc::new(self.ts.finish().with_timezone("UTC")),
            Arc::new(self.ty.finish()),
            Arc::new(self.op.finish()),
            Arc::new(self.url.finish()),
            Arc::new(self.amount.finish()),
            Arc::new(self.name.finish()),
        ];
        Ok(RecordBatch::try_new(schema.clone(), cols)?)
    }
}
