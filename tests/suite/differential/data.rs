//! The random bases of the differential test: contacts full of empty
//! values, non-ASCII text, 29 February dates and timestamps near local
//! midnight, their events, and the files they are imported from.

use super::*;

pub(super) struct Contact {
    pub(super) id: i64,
    pub(super) city: Option<String>,
    pub(super) email: Option<String>,
    pub(super) score: Option<i64>,
    pub(super) spent: Option<f64>,
    pub(super) birth_date: Option<NaiveDate>,
    pub(super) created_at: Option<i64>,
    pub(super) email_optin: Option<bool>,
    pub(super) loyalty: Option<String>,
    pub(super) interests: Option<Vec<String>>,
}

pub(super) struct Event {
    pub(super) contact_id: i64,
    pub(super) ts: i64,
    pub(super) ty: String,
    pub(super) operation_id: Option<String>,
    pub(super) url: Option<String>,
    pub(super) amount: Option<f64>,
}

/// The generated data, kept to draw criteria values near it.
pub(super) struct Data {
    pub(super) contacts: Vec<Contact>,
    pub(super) events: Vec<Event>,
    pub(super) dates: Vec<NaiveDate>,
}

pub(super) fn epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()
}

pub(super) fn gen_date(rng: &mut Rng, anchors: &[DateTime<Utc>]) -> NaiveDate {
    let anchor = rng.pick(anchors).date_naive();
    match rng.below(10) {
        0 => NaiveDate::from_ymd_opt(*rng.pick(&[1992, 2000, 2024, 2028]), 2, 29).unwrap(),
        1 => {
            NaiveDate::from_ymd_opt(rng.range(1960, 2027) as i32, *rng.pick(&[2, 3]), 1).unwrap()
                - ChronoDuration::days(rng.range(0, 1))
        }
        2..=5 => {
            let d = anchor + ChronoDuration::days(rng.range(-40, 40));
            let years = if rng.chance(0.4) {
                0
            } else {
                rng.range(1, 40) as i32
            };
            d.with_year_or(d.year_minus(years))
        }
        _ => epoch() + ChronoDuration::days(rng.range(-7300, 14600)),
    }
}

pub(super) trait YearShift {
    fn year_minus(&self, n: i32) -> i32;
    fn with_year_or(&self, y: i32) -> NaiveDate;
}

impl YearShift for NaiveDate {
    fn year_minus(&self, n: i32) -> i32 {
        chrono::Datelike::year(self) - n
    }
    fn with_year_or(&self, y: i32) -> NaiveDate {
        chrono::Datelike::with_year(self, y).unwrap_or(*self - ChronoDuration::days(1))
    }
}

pub(super) const HOUR: i64 = 3_600_000_000;
pub(super) const DAY: i64 = 24 * HOUR;

/// An instant near one of the anchors: on duration boundaries, around local
/// midnight, or anywhere in the year before.
pub(super) fn gen_ts(rng: &mut Rng, anchors: &[DateTime<Utc>]) -> i64 {
    let a = rng.pick(anchors).timestamp_micros();
    match rng.below(10) {
        0..=2 => {
            let d = *rng.pick(&[
                0,
                HOUR,
                12 * HOUR,
                DAY,
                2 * DAY,
                7 * DAY,
                14 * DAY,
                30 * DAY,
                90 * DAY,
                180 * DAY,
            ]);
            a - d + *rng.pick(&[0, 0, -1_000_000, 1_000_000, -1, 1])
        }
        3..=5 => {
            // Around local midnight on a day near the anchor: 21:00 to 23:59
            // UTC is the next day in Paris, or not; 04:00 to 05:59 is
            // midnight in Havana; 18:30 in Kolkata, 11:15 in Chatham.
            let day = a.div_euclid(DAY) + rng.range(-35, 3);
            let minute = 60_000_000;
            day * DAY
                + *rng.pick(&[
                    21 * HOUR,
                    22 * HOUR,
                    23 * HOUR,
                    23 * HOUR + 30 * minute,
                    23 * HOUR + 59 * minute,
                    0,
                    4 * HOUR,
                    4 * HOUR + 59 * minute,
                    5 * HOUR,
                    5 * HOUR + 30 * minute,
                    18 * HOUR + 29 * minute,
                    18 * HOUR + 30 * minute,
                    11 * HOUR + 15 * minute,
                ])
        }
        _ => a + rng.range(-400 * DAY, 5 * DAY),
    }
}

/// A contact drawn with empty values, non-ASCII text and dates near the anchors.
pub(super) fn gen_contact(
    rng: &mut Rng,
    id: i64,
    cities: &[&str],
    anchors: &[DateTime<Utc>],
) -> Contact {
    let empty = |rng: &mut Rng| rng.chance(0.2);
    Contact {
        id,
        city: if empty(rng) {
            None
        } else {
            Some(rng.pick(cities).to_string())
        },
        email: if empty(rng) {
            None
        } else {
            Some(rng.pick(EMAILS).to_string())
        },
        score: if empty(rng) {
            None
        } else {
            Some(*rng.pick(&[-3, 0, 1, 5, 10, 42, 100]) + rng.range(0, 1))
        },
        spent: if empty(rng) {
            None
        } else {
            Some(*rng.pick(AMOUNTS))
        },
        birth_date: if empty(rng) {
            None
        } else {
            Some(gen_date(rng, anchors))
        },
        created_at: if empty(rng) {
            None
        } else {
            Some(gen_ts(rng, anchors))
        },
        email_optin: if empty(rng) {
            None
        } else {
            Some(rng.chance(0.5))
        },
        loyalty: if empty(rng) {
            None
        } else {
            Some(rng.pick(LOYALTY).to_string())
        },
        interests: if empty(rng) {
            None
        } else {
            let k = rng.below(4);
            Some((0..k).map(|_| rng.pick(TAGS).to_string()).collect())
        },
    }
}

/// An event of a contact at a time near the anchors.
pub(super) fn gen_event(rng: &mut Rng, contact_id: i64, anchors: &[DateTime<Utc>]) -> Event {
    Event {
        contact_id,
        ts: gen_ts(rng, anchors),
        ty: rng.pick(EVENT_TYPES).to_string(),
        operation_id: if rng.chance(0.3) {
            None
        } else {
            Some(rng.pick(OPERATIONS).to_string())
        },
        url: if rng.chance(0.3) {
            None
        } else {
            Some(rng.pick(URLS).to_string())
        },
        amount: if rng.chance(0.3) {
            None
        } else {
            Some(*rng.pick(AMOUNTS))
        },
    }
}

pub(super) fn gen_data(rng: &mut Rng) -> Data {
    let anchors = as_ofs();
    let n = rng.range(10, 40) as usize;
    // Half of the bases draw cities from three values only, so that the
    // column is stored dictionary-encoded (few distinct values) in some
    // bases and plain in others.
    let cities: &[&str] = if rng.chance(0.5) {
        let at = rng.below(CITIES.len() - 2);
        &CITIES[at..at + 3]
    } else {
        CITIES
    };
    let mut contacts = Vec::new();
    let mut id = 0i64;
    for _ in 0..n {
        id += rng.range(1, 5);
        contacts.push(gen_contact(rng, id, cities, &anchors));
    }
    let mut events = Vec::new();
    for c in &contacts {
        for _ in 0..rng.below(9) {
            events.push(gen_event(rng, c.id, &anchors));
        }
    }
    let mut dates: Vec<NaiveDate> = contacts.iter().filter_map(|c| c.birth_date).collect();
    let tz: chrono_tz::Tz = "Europe/Paris".parse().unwrap();
    for t in contacts
        .iter()
        .filter_map(|c| c.created_at)
        .chain(events.iter().map(|e| e.ts))
    {
        dates.push(
            DateTime::<Utc>::from_timestamp_micros(t)
                .unwrap()
                .with_timezone(&tz)
                .date_naive(),
        );
    }
    for a in &anchors {
        dates.push(a.with_timezone(&tz).date_naive());
        dates.push(a.date_naive());
    }
    Data {
        contacts,
        events,
        dates,
    }
}

pub(super) fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        schema.clone(),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

pub(super) fn arr<T: datafusion::arrow::array::Array + 'static>(a: T) -> ArrayRef {
    Arc::new(a)
}

pub(super) fn ts_array(v: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
}

pub(super) fn write_contacts_parquet(path: &Path, d: &Data) {
    let cs = &d.contacts;
    let mut tags = ListBuilder::new(StringBuilder::new());
    for c in cs {
        match &c.interests {
            None => tags.append_null(),
            Some(t) => {
                for x in t {
                    tags.values().append_value(x);
                }
                tags.append(true);
            }
        }
    }
    let days = |d: NaiveDate| (d - epoch()).num_days() as i32;
    write_parquet(
        path,
        vec![
            (
                "contact_id",
                arr(Int64Array::from(
                    cs.iter().map(|c| Some(c.id)).collect::<Vec<_>>(),
                )),
            ),
            (
                "city",
                arr(StringArray::from(
                    cs.iter().map(|c| c.city.clone()).collect::<Vec<_>>(),
                )),
            ),
            (
                "email",
                arr(StringArray::from(
                    cs.iter().map(|c| c.email.clone()).collect::<Vec<_>>(),
                )),
            ),
            (
                "score",
                arr(Int64Array::from(
                    cs.iter().map(|c| c.score).collect::<Vec<_>>(),
                )),
            ),
            (
                "spent",
                arr(Float64Array::from(
                    cs.iter().map(|c| c.spent).collect::<Vec<_>>(),
                )),
            ),
            (
                "birth_date",
                arr(Date32Array::from(
                    cs.iter()
                        .map(|c| c.birth_date.map(days))
                        .collect::<Vec<_>>(),
                )),
            ),
            (
                "created_at",
                ts_array(cs.iter().map(|c| c.created_at).collect()),
            ),
            (
                "email_optin",
                arr(BooleanArray::from(
                    cs.iter().map(|c| c.email_optin).collect::<Vec<_>>(),
                )),
            ),
            (
                "loyalty",
                arr(StringArray::from(
                    cs.iter().map(|c| c.loyalty.clone()).collect::<Vec<_>>(),
                )),
            ),
            ("interests", arr(tags.finish())),
        ],
    );
}

pub(super) fn write_events_parquet(path: &Path, d: &Data) {
    let es = &d.events;
    write_parquet(
        path,
        vec![
            (
                "contact_id",
                arr(Int64Array::from(
                    es.iter().map(|e| Some(e.contact_id)).collect::<Vec<_>>(),
                )),
            ),
            ("ts", ts_array(es.iter().map(|e| Some(e.ts)).collect())),
            (
                "type",
                arr(StringArray::from(
                    es.iter().map(|e| Some(e.ty.clone())).collect::<Vec<_>>(),
                )),
            ),
            (
                "operation_id",
                arr(StringArray::from(
                    es.iter()
                        .map(|e| e.operation_id.clone())
                        .collect::<Vec<_>>(),
                )),
            ),
            (
                "url",
                arr(StringArray::from(
                    es.iter().map(|e| e.url.clone()).collect::<Vec<_>>(),
                )),
            ),
            (
                "amount",
                arr(Float64Array::from(
                    es.iter().map(|e| e.amount).collect::<Vec<_>>(),
                )),
            ),
        ],
    );
}

pub(super) fn write_events_csv(path: &Path, d: &Data) {
    let mut w = csv::Writer::from_path(path).unwrap();
    w.write_record(["contact_id", "ts", "type", "operation_id", "url", "amount"])
        .unwrap();
    for e in &d.events {
        let ts = DateTime::<Utc>::from_timestamp_micros(e.ts)
            .unwrap()
            .to_rfc3339_opts(SecondsFormat::Micros, true);
        w.write_record([
            e.contact_id.to_string(),
            ts,
            e.ty.clone(),
            e.operation_id.clone().unwrap_or_default(),
            e.url.clone().unwrap_or_default(),
            e.amount.map(|a| a.to_string()).unwrap_or_default(),
        ])
        .unwrap();
    }
    w.flush().unwrap();
}

/// A second contacts import (CSV) touching some contacts: new cities, empty cells.
pub(super) fn write_update_csv(path: &Path, d: &Data, rng: &mut Rng) {
    let mut w = csv::Writer::from_path(path).unwrap();
    w.write_record(["contact_id", "city", "score"]).unwrap();
    for c in &d.contacts {
        if rng.chance(0.3) {
            let city = if rng.chance(0.3) {
                String::new()
            } else {
                rng.pick(CITIES).to_string()
            };
            let score = if rng.chance(0.5) {
                String::new()
            } else {
                rng.range(-5, 50).to_string()
            };
            w.write_record([c.id.to_string(), city, score]).unwrap();
        }
    }
    // One new contact, so that the import is never empty.
    w.write_record([
        (d.contacts.last().unwrap().id + 100).to_string(),
        "Évry".into(),
        String::new(),
    ])
    .unwrap();
    w.flush().unwrap();
}

pub(super) fn config(time_zone: &str) -> Config {
    let mut fields = BTreeMap::new();
    fields.insert(
        "loyalty".to_string(),
        FieldType::Choice {
            values: LOYALTY.iter().map(|s| s.to_string()).collect(),
        },
    );
    fields.insert("interests".to_string(), FieldType::Tags);
    Config {
        time_zone: time_zone.into(),
        fields,
        ..Config::default()
    }
}

pub(super) fn build_base(
    dir: &Path,
    d: &Data,
    rng: &mut Rng,
    time_zone: &str,
    recompute_at: DateTime<Utc>,
    rt: &tokio::runtime::Runtime,
) {
    let base = segments::jobs::init(dir, config(time_zone)).expect("init");
    let contacts = dir.join("contacts-in.parquet");
    write_contacts_parquet(&contacts, d);
    let update = dir.join("update-in.csv");
    write_update_csv(&update, d, rng);
    let events = if rng.chance(0.5) {
        let p = dir.join("events-in.parquet");
        write_events_parquet(&p, d);
        p
    } else {
        let p = dir.join("events-in.csv");
        write_events_csv(&p, d);
        p
    };
    let mut w = base.writer("test").expect("writer");
    import_contacts(
        &mut w,
        &contacts,
        &ImportOptions {
            name: Some("imp1".into()),
            overwrite_empty: false,
        },
    )
    .expect("import contacts");
    w.commit().expect("commit");
    let mut w = base.writer("test").expect("writer");
    import_contacts(
        &mut w,
        &update,
        &ImportOptions {
            name: Some("imp2".into()),
            overwrite_empty: false,
        },
    )
    .expect("import update");
    w.commit().expect("commit");
    if !d.events.is_empty() {
        let mut w = base.writer("test").expect("writer");
        import_events(
            &mut w,
            &events,
            &EventImportOptions {
                name: Some("ev1".into()),
                skip_unknown: false,
            },
        )
        .expect("import events");
        w.commit().expect("commit");
    }
    // A chain of user segments: u1 on the data and the default segments,
    // "Chain two" on u1, u3 on "Chain two" by its name.
    let has_events = !d.events.is_empty();
    let tree = |rng: &mut Rng| {
        Gen {
            rng,
            data: d,
            has_events,
            segments: DEFAULT_SEGMENTS,
        }
        .tree(2)
    };
    type Wrap = fn(Value) -> Value;
    let chain: [(&str, &str, Wrap); 3] = [
        ("u1", "u1", |t| t),
        (
            "u2",
            "Chain two",
            |t| json!({"all": [{"segment": "u1"}, t]}),
        ),
        (
            "u3",
            "u3",
            |t| json!({"any": [{"not": {"segment": "Chain two"}}, t]}),
        ),
    ];
    for (id, name, wrap) in chain {
        // A random part may be refused (a window of 0 days): draw again.
        for attempt in 0.. {
            let criteria = wrap(tree(rng));
            let def = segments::criteria::Definition::parse(
                &json!({"id": id, "name": name, "criteria": criteria}),
            )
            .expect("a user segment");
            let mut w = base.writer("test").expect("writer");
            match rt.block_on(segments::jobs::segments::create(&mut w, &def, recompute_at)) {
                Ok(_) => {
                    w.commit().expect("commit");
                    break;
                }
                Err(e) => assert!(attempt < 50, "no valid user segment {id}: {e}"),
            }
        }
    }
    let incremental = segments::jobs::recompute::Fresh::Incremental;
    super::super::common::recompute_committed(&base, rt, recompute_at, incremental);
}
