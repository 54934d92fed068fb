//! Every operator of every type, each empty-value rule both ways, durations,
//! time zones, behaviour aggregates over no events, 29 February.
//!
//! Contacts 1..5; contact 3 has every field empty. Base time zone Europe/Paris.

use serde_json::{Value, json};

use super::common::{TestBase, at, new_base};

const CONTACTS: &str = "\
contact_id,city,score,spent,birth,last_order,seen,optin,loyalty,interests
1,Paris,10,5.5,1990-02-28,2026-03-02,2026-03-01T23:30:00Z,true,gold,Running;Vin
2,évry,20,100,1992-02-29,2026-01-31,2026-03-02T10:00:00Z,false,silver,voyage
3,,,,,,,,,
4,PARIS,30,250.25,2000-03-05,2026-01-30,2026-02-15T12:00:00Z,true,bronze,RUNNING
5,Lyon,-5,0,1985-11-25,2025-03-02,2025-11-24T08:00:00Z,false,,;
";

const EVENTS: &str = "\
contact_id,ts,type,operation_id,url,amount
1,2026-03-01T10:00:00Z,email_open,NL-1,,
1,2026-02-20T10:00:00Z,purchase,ORD-1,,50
1,2026-03-01T11:00:00Z,purchase,ORD-2,,70
1,2026-03-02T11:00:00Z,web_visit,,/checkout/step1,
2,2026-01-10T10:00:00Z,email_sent,NL-1,,
2,2026-02-28T09:00:00Z,purchase,ORD-3,,
4,2026-03-02T13:00:00Z,email_open,NL-2,,
4,2026-02-25T10:00:00Z,email_sent,NL-2,,
";

fn base() -> TestBase {
    let tb = new_base("Europe/Paris");
    tb.import_contacts("contacts", CONTACTS)
        .expect("contacts import");
    tb.import_events("events", EVENTS).expect("events import");
    tb
}

const AS_OF: &str = "2026-03-02T12:00:00Z";

fn field(f: &str, op: &str, v: Value) -> Value {
    if v.is_null() {
        json!({"field": f, "op": op})
    } else {
        json!({"field": f, "op": op, "value": v})
    }
}

fn check(tb: &TestBase, as_of: &str, cases: &[(Value, &[u64])]) {
    let mut failures = Vec::new();
    for (c, want) in cases {
        match tb.eval(c, at(as_of)) {
            Ok(got) if got == *want => {}
            Ok(got) => failures.push(format!("{c}: expected {want:?}, got {got:?}")),
            Err(e) => failures.push(format!("{c}: error {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn text_operators_and_empty_rules() {
    let tb = base();
    let cs = |op: &str, v: Value| {
        let mut x = field("city", op, v);
        x["case_sensitive"] = json!(true);
        x
    };
    check(
        &tb,
        AS_OF,
        &[
            (field("city", "eq", json!("paris")), &[1, 4]),
            (field("city", "eq", json!("ÉVRY")), &[2]),
            (cs("eq", json!("paris")), &[]),
            (cs("eq", json!("Paris")), &[1]),
            // Rule 3: negative operators match the empty field (contact 3).
            (field("city", "neq", json!("paris")), &[2, 3, 5]),
            (field("city", "in", json!(["lyon", "ÉVRY"])), &[2, 5]),
            (field("city", "not_in", json!(["lyon"])), &[1, 2, 3, 4]),
            (field("city", "starts_with", json!("pa")), &[1, 4]),
            (field("city", "not_starts_with", json!("pa")), &[2, 3, 5]),
            (field("city", "ends_with", json!("RY")), &[2]),
            (field("city", "not_ends_with", json!("ry")), &[1, 3, 4, 5]),
            (field("city", "contains", json!("ar")), &[1, 4]),
            (field("city", "not_contains", json!("ar")), &[2, 3, 5]),
            (cs("contains", json!("AR")), &[4]),
            (field("city", "is_empty", Value::Null), &[3]),
            (field("city", "is_not_empty", Value::Null), &[1, 2, 4, 5]),
        ],
    );
}

#[test]
fn number_operators_and_between_ends() {
    let tb = base();
    check(
        &tb,
        AS_OF,
        &[
            (field("score", "eq", json!(20)), &[2]),
            (field("score", "neq", json!(20)), &[1, 3, 4, 5]),
            (field("score", "lt", json!(20)), &[1, 5]),
            (field("score", "lte", json!(20)), &[1, 2, 5]),
            (field("score", "gt", json!(20)), &[4]),
            (field("score", "gte", json!(20)), &[2, 4]),
            (field("score", "between", json!([10, 20])), &[1, 2]),
            (field("score", "between", json!([-5, -5])), &[5]),
            (field("score", "is_empty", Value::Null), &[3]),
            (field("score", "is_not_empty", Value::Null), &[1, 2, 4, 5]),
            (field("spent", "gt", json!(99.99)), &[2, 4]),
            (field("spent", "eq", json!(0)), &[5]),
            (field("spent", "between", json!([5.5, 100])), &[1, 2]),
        ],
    );
}

#[test]
fn date_operators_and_durations() {
    let tb = base();
    check(
        &tb,
        AS_OF,
        &[
            (field("birth", "eq", json!("1990-02-28")), &[1]),
            (field("birth", "neq", json!("1990-02-28")), &[2, 3, 4, 5]),
            (field("birth", "before", json!("1990-01-01")), &[5]),
            (field("birth", "after", json!("1990-02-28")), &[2, 4]),
            (
                field("birth", "between", json!(["1990-02-28", "1992-02-29"])),
                &[1, 2],
            ),
            // as_of_date - 30 <= value <= as_of_date (2026-01-31 .. 2026-03-02)
            (field("last_order", "within_last", json!("30d")), &[1, 2]),
            (field("last_order", "within_last", json!("1w")), &[1]),
            // value < as_of_date - 30
            (field("last_order", "more_than_ago", json!("30d")), &[4, 5]),
            (field("last_order", "is_empty", Value::Null), &[3]),
            (field("birth", "anniversary_within", json!("7d")), &[4]),
            (field("birth", "anniversary_within", json!("0d")), &[]),
        ],
    );
}

#[test]
fn timestamp_calendar_days_in_the_base_time_zone() {
    let tb = base();
    check(
        &tb,
        AS_OF,
        &[
            // 2026-03-01T23:30Z is 00:30 on 2 March in Paris.
            (field("seen", "eq", json!("2026-03-02")), &[1, 2]),
            (field("seen", "eq", json!("2026-03-01")), &[]),
            (field("seen", "neq", json!("2026-03-02")), &[3, 4, 5]),
            (field("seen", "before", json!("2026-03-02")), &[4, 5]),
            (field("seen", "after", json!("2026-03-01")), &[1, 2]),
            (
                field("seen", "between", json!(["2026-02-15", "2026-03-01"])),
                &[4],
            ),
            (field("seen", "within_last", json!("12h")), &[2]),
            (field("seen", "within_last", json!("13h")), &[1, 2]),
            (field("seen", "within_last", json!("1d")), &[1, 2]),
            (field("seen", "within_last", json!("2w")), &[1, 2]),
            (field("seen", "within_last", json!("3w")), &[1, 2, 4]),
            (field("seen", "more_than_ago", json!("1d")), &[4, 5]),
            (field("seen", "is_empty", Value::Null), &[3]),
        ],
    );
}

#[test]
fn bool_operators_null_is_not_false() {
    let tb = base();
    check(
        &tb,
        AS_OF,
        &[
            (field("optin", "is_true", Value::Null), &[1, 4]),
            (field("optin", "is_false", Value::Null), &[2, 5]),
            (field("optin", "is_empty", Value::Null), &[3]),
            (field("optin", "is_not_empty", Value::Null), &[1, 2, 4, 5]),
            (
                json!({"not": field("optin", "is_true", Value::Null)}),
                &[2, 3, 5],
            ),
        ],
    );
}

#[test]
fn choice_neq_skips_empty_unlike_text() {
    let tb = base();
    check(
        &tb,
        AS_OF,
        &[
            (field("loyalty", "eq", json!("gold")), &[1]),
            (field("loyalty", "neq", json!("gold")), &[2, 4]),
            (field("loyalty", "in", json!(["gold", "silver"])), &[1, 2]),
            (field("loyalty", "not_in", json!(["gold"])), &[2, 4]),
            (field("loyalty", "is_empty", Value::Null), &[3, 5]),
            (field("loyalty", "is_not_empty", Value::Null), &[1, 2, 4]),
        ],
    );
}

#[test]
fn tags_operators_case_and_empty() {
    let tb = base();
    let mut cs = field("interests", "contains_any", json!(["RUNNING"]));
    cs["case_sensitive"] = json!(true);
    check(
        &tb,
        AS_OF,
        &[
            (
                field("interests", "contains_any", json!(["running"])),
                &[1, 4],
            ),
            (
                field("interests", "contains_any", json!(["running", "voyage"])),
                &[1, 2, 4],
            ),
            (cs, &[4]),
            (
                field("interests", "contains_all", json!(["running", "VIN"])),
                &[1],
            ),
            // Rule 5: contains_none matches empty tags (3 is null, 5 is an empty list).
            (
                field("interests", "contains_none", json!(["running"])),
                &[2, 3, 5],
            ),
            (field("interests", "is_empty", Value::Null), &[3, 5]),
            (field("interests", "is_not_empty", Value::Null), &[1, 2, 4]),
        ],
    );
}

#[test]
fn anniversaries_of_29_february() {
    let tb = base();
    // 2027 has no 29 February: it counts as the 28th.
    check(
        &tb,
        "2027-02-28T12:00:00Z",
        &[(field("birth", "anniversary_within", json!("0d")), &[1, 2])],
    );
    // 2028 has one.
    check(
        &tb,
        "2028-02-28T12:00:00Z",
        &[
            (field("birth", "anniversary_within", json!("0d")), &[1]),
            (field("birth", "anniversary_within", json!("1d")), &[1, 2]),
        ],
    );
    check(
        &tb,
        "2026-11-20T12:00:00Z",
        &[(field("birth", "anniversary_within", json!("7d")), &[5])],
    );
}

fn beh(v: Value) -> Value {
    json!({"behavior": v})
}

#[test]
fn behaviour_counts_sums_and_no_events() {
    let tb = base();
    check(
        &tb,
        AS_OF,
        &[
            // The open of contact 4 is after as_of.
            (beh(json!({"event": "email_open"})), &[1]),
            // Not a recipient of NL-1 includes contacts without any event.
            (
                beh(
                    json!({"event": "email_sent", "operation": "NL-1", "having": {"agg": "count", "op": "eq", "value": 0}}),
                ),
                &[1, 3, 4, 5],
            ),
            (
                beh(
                    json!({"event": "purchase", "having": {"agg": "count", "op": "gte", "value": 2}}),
                ),
                &[1],
            ),
            (
                beh(
                    json!({"event": "purchase", "having": {"agg": "sum", "field": "amount", "op": "gt", "value": 100}}),
                ),
                &[1],
            ),
            // Sum over no events, and over events without amounts, is 0.
            (
                beh(json!({"event": "purchase", "having": {"agg": "sum", "op": "eq", "value": 0}})),
                &[2, 3, 4, 5],
            ),
            (
                beh(
                    json!({"event": "purchase", "having": {"agg": "avg", "op": "gt", "value": 10}}),
                ),
                &[1],
            ),
            (
                beh(json!({"event": "purchase", "having": {"agg": "avg", "op": "is_empty"}})),
                &[2, 3, 4, 5],
            ),
            // An empty aggregate matches only is_empty, not a negative operator.
            (
                beh(
                    json!({"event": "purchase", "having": {"agg": "avg", "op": "neq", "value": 60}}),
                ),
                &[],
            ),
            (
                beh(
                    json!({"event": "purchase", "having": {"agg": "min", "op": "lt", "value": 60}}),
                ),
                &[1],
            ),
            (
                beh(
                    json!({"event": "purchase", "having": {"agg": "max", "op": "gte", "value": 70}}),
                ),
                &[1],
            ),
            (
                beh(json!({"event": "purchase", "having": {"agg": "max", "op": "is_empty"}})),
                &[2, 3, 4, 5],
            ),
            (
                beh(
                    json!({"event": "purchase", "having": {"agg": "last", "op": "within_last", "value": "2d"}}),
                ),
                &[1],
            ),
            (
                beh(
                    json!({"event": "purchase", "having": {"agg": "last", "op": "more_than_ago", "value": "2d"}}),
                ),
                &[2],
            ),
            (
                beh(
                    json!({"event": "purchase", "having": {"agg": "first", "op": "eq", "value": "2026-02-20"}}),
                ),
                &[1],
            ),
            (
                beh(json!({"event": "purchase", "having": {"agg": "first", "op": "is_empty"}})),
                &[3, 4, 5],
            ),
        ],
    );
}

#[test]
fn behaviour_windows_where_and_lists() {
    let tb = base();
    check(
        &tb,
        AS_OF,
        &[
            (
                beh(
                    json!({"event": "web_visit", "where": [{"field": "url", "op": "contains", "value": "CHECKOUT"}]}),
                ),
                &[1],
            ),
            (beh(json!({"event": "email_open", "within": "12h"})), &[]),
            (beh(json!({"event": "email_open", "within": "2d"})), &[1]),
            (beh(json!({"event": "email_open", "within": "1w"})), &[1]),
            // A date bound is midnight in the base's time zone (23:00 UTC the day before).
            (
                beh(json!({"event": "purchase", "within": {"after": "2026-03-01"}})),
                &[1],
            ),
            (
                beh(json!({"event": "purchase", "within": {"before": "2026-02-21"}})),
                &[1],
            ),
            (
                beh(json!({"event": "purchase", "within": {"after": "3d"}})),
                &[1, 2],
            ),
            (
                beh(
                    json!({"event": "purchase", "within": {"after": "2026-02-28", "before": "2026-03-01"}}),
                ),
                &[2],
            ),
            (
                beh(json!({"event": ["email_open", "email_sent"], "within": "30d"})),
                &[1, 4],
            ),
            (
                beh(json!({"event": "email_sent", "operation": ["NL-2", "NL-3"]})),
                &[4],
            ),
        ],
    );
}

#[test]
fn boolean_tree_and_references() {
    let tb = base();
    check(
        &tb,
        AS_OF,
        &[
            (json!({"all": []}), &[1, 2, 3, 4, 5]),
            (json!({"any": []}), &[]),
            (json!({"not": {"all": []}}), &[]),
            (
                json!({"not": field("city", "eq", json!("paris"))}),
                &[2, 3, 5],
            ),
            (
                json!({"all": [field("city", "eq", json!("paris")), beh(json!({"event": "purchase"}))]}),
                &[1],
            ),
            (
                json!({"any": [field("score", "gt", json!(25)), beh(json!({"event": "email_sent"}))]}),
                &[2, 4],
            ),
            (json!({"import": "events"}), &[1, 2, 4]),
            (json!({"import": "contacts"}), &[1, 2, 3, 4, 5]),
            (json!({"not": {"import": "events"}}), &[3, 5]),
            (json!({"sql": "score > 15 AND city <> 'Lyon'"}), &[2, 4]),
            (json!({"not": {"sql": "score > 15"}}), &[1, 3, 5]),
            (
                json!({"query": "SELECT contact_id FROM events WHERE type = 'purchase'"}),
                &[1, 2],
            ),
        ],
    );
}
